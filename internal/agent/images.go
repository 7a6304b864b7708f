package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"berth/internal/runtime"
)

// The agent removes the images it pulled through its pull cache once no
// container on the node has used them for ImageRetention. Its images are
// those whose every reference starts with the cache's address
// (127.0.0.1:<port>/...), which only berth's pinned pulls make: an image
// that also has a name of its own (berth/demo:1, a docker tag) is never
// touched, and neither is anything else on the engine. Docker keeps no
// time of last use, so the agent keeps its own, in memory: an image is in
// use while any container, running or stopped, is made from it (an idle
// instance's stopped container keeps its image), and when the agent
// creates a container from it; an image first seen counts as used then,
// so after an agent restart the clock starts again (removal only comes
// later, never sooner). Docker itself refuses to remove an image a
// container uses, which covers a container created meanwhile by anyone.

// imageUse is when the agent last saw each image used.
type imageUse struct {
	mu   sync.Mutex           // held by a clean-up from its decision to its last removal
	last map[string]time.Time // image ID or reference -> last seen used
}

// useImage records that a container is about to be created from ref: a
// clean-up that has not yet decided spares it.
func (a *Agent) useImage(ref string) {
	u := &a.images
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.last == nil {
		u.last = map[string]time.Time{}
	}
	u.last[ref] = time.Now()
}

// cleanImages removes stale images now and then until ctx ends.
func (a *Agent) cleanImages(ctx context.Context) {
	if a.ImageRetention <= 0 || a.PullCache == "" {
		return
	}
	// Often enough that an image goes soon after its retention ends.
	t := time.NewTicker(min(max(a.ImageRetention/10, time.Second), 10*time.Minute))
	defer t.Stop()
	for {
		if err := a.cleanImagesOnce(ctx, time.Now()); err != nil && ctx.Err() == nil {
			a.Log.Warn("remove unused images", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// cleanImagesOnce removes the images staleImages picks, each reference
// in turn (the image goes with its last one).
func (a *Agent) cleanImagesOnce(ctx context.Context, now time.Time) error {
	imgs, err := a.Runtime.ListImages(ctx)
	if err != nil {
		return err
	}
	u := &a.images
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.last == nil {
		u.last = map[string]time.Time{}
	}
	var errs []error
	for _, img := range staleImages(imgs, a.PullCache+"/", u.last, now, a.ImageRetention) {
		removed := true
		for _, ref := range img.Refs {
			if err := a.Runtime.RemoveImage(ctx, ref); err != nil {
				if !errors.Is(err, runtime.ErrImageInUse) {
					errs = append(errs, err)
				}
				removed = false
				break
			}
		}
		if !removed {
			continue
		}
		a.Log.Info("removed unused image", "image", img.Refs[0], "id", shortID(strings.TrimPrefix(img.ID, "sha256:")),
			"size", img.Size, "unused_for", now.Sub(img.lastUse(u.last, now)).Round(time.Second))
		for _, k := range append(img.Refs, img.ID) {
			delete(u.last, k)
		}
	}
	return errors.Join(errs...)
}

// staleImages returns the images to remove: pulled through the cache
// (every reference starts with prefix), used by no container, and last
// used before now-keep. It updates last: images in use, and images seen
// for the first time, are used now; entries of images gone and older
// than keep are forgotten.
func staleImages(imgs []runtime.Image, prefix string, last map[string]time.Time, now time.Time, keep time.Duration) []staleImage {
	present := map[string]bool{}
	var out []staleImage
	for _, img := range imgs {
		present[img.ID] = true
		for _, r := range img.Refs {
			present[r] = true
		}
		if !pulledThrough(img, prefix) {
			continue
		}
		s := staleImage{img}
		if _, seen := last[img.ID]; img.Containers > 0 || !seen {
			last[img.ID] = now
		}
		if now.Sub(s.lastUse(last, now)) > keep {
			out = append(out, s)
		}
	}
	for k, at := range last {
		if !present[k] && now.Sub(at) > keep {
			delete(last, k)
		}
	}
	return out
}

// staleImage is an image picked for removal.
type staleImage struct{ runtime.Image }

// lastUse is the latest use of the image, by ID or any reference.
func (s staleImage) lastUse(last map[string]time.Time, now time.Time) time.Time {
	at, ok := last[s.ID]
	if !ok {
		at = now
	}
	for _, r := range s.Refs {
		if t, ok := last[r]; ok && t.After(at) {
			at = t
		}
	}
	return at
}

// pulledThrough reports whether every reference of img is the cache's.
func pulledThrough(img runtime.Image, prefix string) bool {
	if len(img.Refs) == 0 {
		return false
	}
	for _, r := range img.Refs {
		if !strings.HasPrefix(r, prefix) {
			return false
		}
	}
	return true
}
