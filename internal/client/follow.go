package client

import (
	"context"
	"time"

	"berth/api"
)

// FollowInstances keeps calling onChange with the current set of matching
// instances (by name) whenever it changes: a list, then a watch from the
// list's revision, and a fresh list whenever the watch breaks. It returns
// when ctx ends. onChange receives the names that changed since the last
// call (all of them after a list) and must not keep the map.
func (c *Client) FollowInstances(ctx context.Context, f InstanceFilter, onChange func(all map[string]api.Instance, changed []string)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		list, err := c.ListInstances(ctx, f)
		if err != nil {
			sleep(ctx, backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		all := make(map[string]api.Instance, len(list.Items))
		changed := make([]string, 0, len(list.Items))
		for _, inst := range list.Items {
			all[inst.Name] = inst
			changed = append(changed, inst.Name)
		}
		onChange(all, changed)
		events, errc := c.WatchInstances(ctx, f, list.Revision)
		apply := func(ev api.WatchEvent[api.Instance]) {
			if ev.Type == "bookmark" {
				return
			}
			if ev.Type == "delete" {
				delete(all, ev.Object.Name)
			} else {
				all[ev.Object.Name] = ev.Object
			}
			changed = append(changed, ev.Object.Name)
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
