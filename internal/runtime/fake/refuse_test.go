package fake

import (
	"context"
	"errors"
	"strings"
	"testing"

	"berth/internal/runtime"
)

// The fake refuses what the engine refuses: a relative bind mount by
// default, and whatever SetRefuse says.
func TestCreateRefusesAsTheEngine(t *testing.T) {
	ctx := context.Background()
	r := New()
	spec := runtime.ContainerSpec{Name: "a", Image: "img", Mounts: []runtime.Mount{{Source: ".berth/p", Target: "/p"}}}
	if _, err := r.Create(ctx, spec); !errors.Is(err, runtime.ErrInvalidSpec) || !strings.Contains(err.Error(), "mount path must be absolute") {
		t.Fatalf("relative mount: %v, want ErrInvalidSpec naming the path", err)
	}
	spec.Mounts[0].Source = "/abs/p"
	if _, err := r.Create(ctx, spec); err != nil {
		t.Fatalf("absolute mount: %v", err)
	}
	r.SetRefuse(func(s runtime.ContainerSpec) error {
		if s.MemoryBytes < 6<<20 {
			return errors.New("Minimum memory limit allowed is 6MB")
		}
		return nil
	})
	if _, err := r.Create(ctx, runtime.ContainerSpec{Name: "b", Image: "img", MemoryBytes: 4 << 20}); !errors.Is(err, runtime.ErrInvalidSpec) {
		t.Fatalf("with SetRefuse: %v, want ErrInvalidSpec", err)
	}
}
