package fake

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"berth/internal/runtime"
)

// SetImageList makes ListImages show imgs, and every image EnsureImage
// makes present from then on (as if pulled, with an ID of its own).
func (r *Runtime) SetImageList(imgs ...runtime.Image) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.listed = []runtime.Image{}
	for _, img := range imgs {
		img.Refs = slices.Clone(img.Refs)
		r.listed = append(r.listed, img)
	}
}

// pulled lists ref as an image of its own once SetImageList was called.
// The caller holds r.mu.
func (r *Runtime) pulled(ref string) {
	if r.listed == nil || r.imageIndex(ref) >= 0 {
		return
	}
	sum := sha256.Sum256([]byte(ref))
	r.listed = append(r.listed, runtime.Image{ID: "sha256:" + hex.EncodeToString(sum[:]), Refs: []string{ref}})
}

// imageIndex is the listed image with ID or reference ref, or -1.
func (r *Runtime) imageIndex(ref string) int {
	return slices.IndexFunc(r.listed, func(img runtime.Image) bool {
		return img.ID == ref || slices.Contains(img.Refs, ref)
	})
}

// ListImages returns the listed images; a container whose image is one
// of an image's references or its ID uses it.
func (r *Runtime) ListImages(ctx context.Context) ([]runtime.Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]runtime.Image, 0, len(r.listed))
	for i, img := range r.listed {
		img.Refs = slices.Clone(img.Refs)
		img.Containers = r.users(i)
		out = append(out, img)
	}
	return out, nil
}

func (r *Runtime) users(i int) int {
	n := 0
	for _, e := range r.containers {
		if r.imageIndex(e.spec.Image) == i {
			n++
		}
	}
	return n
}

// RemoveImage removes a reference, and the image with its last one,
// unless a container uses the image.
func (r *Runtime) RemoveImage(ctx context.Context, ref string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	i := r.imageIndex(ref)
	if i < 0 {
		return nil
	}
	if n := r.users(i); n > 0 {
		return fmt.Errorf("remove image %s: %w (%d containers)", ref, runtime.ErrImageInUse, n)
	}
	img := &r.listed[i]
	img.Refs = slices.DeleteFunc(img.Refs, func(s string) bool { return s == ref || ref == img.ID })
	if len(img.Refs) == 0 {
		r.listed = slices.Delete(r.listed, i, i+1)
	}
	if r.images != nil {
		delete(r.images, ref)
	}
	return nil
}
