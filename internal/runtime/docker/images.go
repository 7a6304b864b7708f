package docker

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"berth/internal/runtime"
)

// ListImages returns the engine's images, each with the number of
// containers (running or stopped) made from it. The engine's own count
// is not filled in by a plain list, so containers are listed too.
func (r *Runtime) ListImages(ctx context.Context) ([]runtime.Image, error) {
	imgs, err := r.cli.ImageList(ctx, client.ImageListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	cs, err := r.cli.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list images: their containers: %w", err)
	}
	uses := map[string]int{}
	for _, c := range cs.Items {
		uses[c.ImageID]++
	}
	out := make([]runtime.Image, 0, len(imgs.Items))
	for _, s := range imgs.Items {
		img := runtime.Image{ID: s.ID, Size: s.Size, Containers: uses[s.ID]}
		for _, ref := range append(s.RepoTags, s.RepoDigests...) {
			if ref != "<none>:<none>" && ref != "<none>@<none>" {
				img.Refs = append(img.Refs, ref)
			}
		}
		out = append(out, img)
	}
	return out, nil
}

// RemoveImage removes the reference ref (docker rmi without force): the
// image goes with its last reference, never while a container uses it.
func (r *Runtime) RemoveImage(ctx context.Context, ref string) error {
	_, err := r.cli.ImageRemove(ctx, ref, client.ImageRemoveOptions{PruneChildren: true})
	r.images.forget(ref) // EnsureImage must look again
	switch {
	case err == nil, cerrdefs.IsNotFound(err):
		return nil
	case cerrdefs.IsConflict(err):
		return fmt.Errorf("remove image %s: %w: %v", ref, runtime.ErrImageInUse, err)
	}
	return fmt.Errorf("remove image %s: %w", ref, err)
}

// forget drops what EnsureImage remembers of ref.
func (c *imageCache) forget(ref string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.present, ref)
}
