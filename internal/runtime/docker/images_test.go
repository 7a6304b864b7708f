package docker

import (
	"errors"
	"os/exec"
	"slices"
	"testing"

	"github.com/moby/moby/client"

	"berth/internal/runtime"
)

// An image is listed with the containers that use it; removing its only
// reference removes it, unless a container (a stopped one too) uses it;
// EnsureImage then looks again.
func TestListAndRemoveImage(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	ref := "127.0.0.1:1/berth-test-gc-" + sanitize(runID) + ":1" // a registry nothing answers on
	src, err := e.r.Create(ctx, e.spec("true"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.cli.ContainerCommit(ctx, src, client.ContainerCommitOptions{Reference: ref}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", ref).Run() })
	find := func() (runtime.Image, bool) {
		t.Helper()
		imgs, err := e.r.ListImages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, img := range imgs {
			if slices.Contains(img.Refs, ref) {
				return img, true
			}
		}
		return runtime.Image{}, false
	}
	img, ok := find()
	if !ok || img.Containers != 0 || len(img.Refs) != 1 || img.ID == "" {
		t.Fatalf("committed image listed as %+v (found %v), want only %s and no container", img, ok, ref)
	}
	if err := e.r.EnsureImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
	spec := e.spec("true")
	spec.Image = ref
	user, err := e.r.Create(ctx, spec) // created, never started: it still holds the image
	if err != nil {
		t.Fatal(err)
	}
	if img, _ := find(); img.Containers != 1 {
		t.Errorf("image used by one container listed with %d", img.Containers)
	}
	if err := e.r.RemoveImage(ctx, ref); !errors.Is(err, runtime.ErrImageInUse) {
		t.Fatalf("remove an image a container uses: %v, want ErrImageInUse", err)
	}
	if err := e.r.Remove(ctx, user); err != nil {
		t.Fatal(err)
	}
	if err := e.r.RemoveImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if _, ok := find(); ok {
		t.Fatal("image still listed after its only reference was removed")
	}
	if err := e.r.RemoveImage(ctx, ref); err != nil {
		t.Errorf("remove a missing image: %v", err)
	}
	if err := e.r.EnsureImage(ctx, ref); !errors.Is(err, runtime.ErrImageNotFound) {
		t.Errorf("EnsureImage of the removed image: %v, want ErrImageNotFound (looked again, pull failed)", err)
	}
}
