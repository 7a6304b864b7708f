package controller

import (
	"context"
	"fmt"

	"berth/api"
	"berth/internal/store"
)

// ImagesInUse returns what a server's registry garbage collection must
// keep: the manifest digests the apps and their instances are pinned to
// (image_digest), and those of the revisions their history keeps, so that
// a rollback runs the same bytes. A failed read is an error, never a smaller set: the
// collection then deletes nothing.
func ImagesInUse(st *store.Store) func(context.Context) (map[string]bool, error) {
	return func(ctx context.Context) (map[string]bool, error) {
		apps, _, err := store.Apps.List(ctx, st)
		if err != nil {
			return nil, err
		}
		insts, _, err := store.Instances.List(ctx, st)
		if err != nil {
			return nil, err
		}
		revs, _, err := store.Revisions.List(ctx, st)
		if err != nil {
			return nil, err
		}
		in := digestsInUse(apps, insts)
		for _, r := range revs {
			if r.ImageDigest != "" {
				in[r.ImageDigest] = true
			}
		}
		return in, nil
	}
}

// digestsInUse is the set of image digests apps and instances name.
func digestsInUse(apps []api.App, insts []api.Instance) map[string]bool {
	in := map[string]bool{}
	for _, a := range apps {
		if a.ImageDigest != "" {
			in[a.ImageDigest] = true
		}
	}
	for _, i := range insts {
		if i.ImageDigest != "" {
			in[i.ImageDigest] = true
		}
	}
	return in
}

// ImageGCEvent records a collection that deleted something as an
// image-gc event naming the server whose registry it was:
// "3 manifests, 12 blobs, 85 MiB freed in 240ms (read-only 180ms) on http://s1:7070".
func ImageGCEvent[R fmt.Stringer](st *store.Store, server string) func(context.Context, R) error {
	return func(ctx context.Context, res R) error {
		return st.RecordEvents(ctx, api.Event{Kind: "image-gc", Message: res.String() + " on " + server})
	}
}
