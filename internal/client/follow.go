package client

import (
	"context"
	"net/url"
	"time"

	"berth/api"
)

// FollowInstances keeps calling onChange with the current set of matching
// instances (by name) whenever it changes. See follow.
func (c *Client) FollowInstances(ctx context.Context, f InstanceFilter, onChange func(all map[string]api.Instance, changed []string)) {
	follow(ctx,
		func() (api.List[api.Instance], error) { return c.ListInstances(ctx, f) },
		func(rev int64) (<-chan api.WatchEvent[api.Instance], <-chan error) {
			return c.WatchInstances(ctx, f, rev)
		},
		func(i api.Instance) string { return i.Name }, onChange)
}

// FollowApps keeps calling onChange with all apps (by name) whenever they change.
func (c *Client) FollowApps(ctx context.Context, onChange func(all map[string]api.App, changed []string)) {
	follow(ctx,
		func() (api.List[api.App], error) { return c.ListApps(ctx) },
		func(rev int64) (<-chan api.WatchEvent[api.App], <-chan error) {
			return watch[api.App](ctx, c, "/v1/apps", url.Values{}, rev)
		},
		func(a api.App) string { return a.Spec.Name }, onChange)
}

// follow is a list, then a watch from the list's revision, and a fresh
// list whenever the watch breaks, until ctx ends. onChange receives the
// whole current set and the names that changed since the last call (all of
// them after a list); it must not keep the map.
func follow[T any](ctx context.Context, list func() (api.List[T], error),
	watchFrom func(rev int64) (<-chan api.WatchEvent[T], <-chan error),
	key func(T) string, onChange func(all map[string]T, changed []string)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		l, err := list()
		if err != nil {
			sleep(ctx, backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		all := make(map[string]T, len(l.Items))
		changed := make([]string, 0, len(l.Items))
		for _, item := range l.Items {
			all[key(item)] = item
			changed = append(changed, key(item))
		}
		onChange(all, changed)
		events, errc := watchFrom(l.Revision)
		apply := func(ev api.WatchEvent[T]) {
			if ev.Type == "bookmark" {
				return
			}
			k := key(ev.Object)
			if ev.Type == "delete" {
				delete(all, k)
			} else {
				all[k] = ev.Object
			}
			changed = append(changed, k)
		}
		for ev := range events {
			changed = changed[:0]
			apply(ev)
			for len(events) > 0 { // take everything already queued before calling back
				apply(<-events)
			}
			if len(changed) > 0 {
				onChange(all, changed)
			}
		}
		select {
		case <-errc:
		default:
		}
		sleep(ctx, backoff)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
