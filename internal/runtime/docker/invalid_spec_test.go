package docker

import (
	"errors"
	"strings"
	"testing"

	"berth/internal/runtime"
)

// What the engine refuses as configured (400, invalid parameter) wraps
// ErrInvalidSpec and keeps the engine's message: the agent fails a task on
// it at once instead of retrying.
func TestCreateRefusedConfigIsInvalidSpec(t *testing.T) {
	e := newEnv(t)
	lowMemory := e.spec("true")
	lowMemory.MemoryBytes = 4 << 20
	relativeMount := e.spec("true")
	relativeMount.Mounts = []runtime.Mount{{Source: ".berth/task-payloads/x", Target: "/task/payload", ReadOnly: true}}
	for _, c := range []struct {
		name string
		spec runtime.ContainerSpec
		want string
	}{
		{"memory below the engine's minimum", lowMemory, "Minimum memory limit"},
		{"relative mount path", relativeMount, "must be absolute"},
	} {
		id, err := e.r.Create(t.Context(), c.spec)
		if !errors.Is(err, runtime.ErrInvalidSpec) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Create = %q, %v; want an error wrapping ErrInvalidSpec naming %q", c.name, id, err, c.want)
		}
	}
}
