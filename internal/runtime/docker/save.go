package docker

import (
	"context"
	"fmt"
	"io"
	"slices"

	cerrdefs "github.com/containerd/errdefs"

	"berth/internal/runtime"
)

// SaveImage streams one image of the engine as `docker save` writes it (a
// tar: manifest.json, the config, the layers). An image the engine lacks
// is an error wrapping runtime.ErrImageNotFound, before anything is read.
func (r *Runtime) SaveImage(ctx context.Context, ref string) (io.ReadCloser, error) {
	if _, err := r.ImageLayers(ctx, ref); err != nil {
		return nil, err
	}
	rc, err := r.cli.ImageSave(ctx, []string{ref})
	if err != nil {
		return nil, fmt.Errorf("image %s: docker save: %w", ref, notFound(err))
	}
	return rc, nil
}

// ImageLayers lists the layer digests (diff_ids, bottom first) of an
// image of the engine; an image it lacks wraps runtime.ErrImageNotFound.
func (r *Runtime) ImageLayers(ctx context.Context, ref string) ([]string, error) {
	res, err := r.cli.ImageInspect(ctx, ref)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil, notInEngine(ref)
		}
		return nil, fmt.Errorf("image %s: ask the Docker engine: %w", ref, err)
	}
	return slices.Clone(res.RootFS.Layers), nil
}

// notInEngine is an image the engine lacks: runtime.ErrImageNotFound, in
// words of its own.
type notInEngine string

func (e notInEngine) Error() string {
	return "image " + string(e) + " is not in the local Docker engine (docker images lists what it has)"
}

func (e notInEngine) Unwrap() error { return runtime.ErrImageNotFound }
