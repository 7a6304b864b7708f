package gateway

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	"berth/api"
	"berth/internal/client"
)

// Follower feeds a Proxy from the API: it follows apps and instances and
// swaps in a new table on every change, wakes idled apps on the proxy's
// behalf, and reports when apps were last used, batched.
type Follower struct {
	Client *client.Client
	Proxy  *Proxy
	Log    *slog.Logger
	// LocalNode, when the gateway runs on a node, makes it reach that
	// node's instances at their container address, skipping the engine's
	// userland port proxy.
	LocalNode string
	// AccessEvery is how often last-access times are sent: at most one
	// write per app per period, however many requests.
	AccessEvery time.Duration

	mu      sync.Mutex
	apps    map[string]api.App
	insts   map[string]api.Instance
	access  map[string]time.Time
	id      string // in traffic reports (follow_traffic.go)
	started time.Time
	bases   map[string]*splitBase
}

// Wake implements Waker through the API.
func (f *Follower) Wake(ctx context.Context, app string) error { return f.Client.Wake(ctx, app) }

// Touch records a request for app; Run sends it with the next batch.
func (f *Follower) Touch(app string) {
	now := time.Now().UTC()
	f.mu.Lock()
	if f.access == nil {
		f.access = map[string]time.Time{}
	}
	f.access[app] = now
	f.mu.Unlock()
}

// Run follows the API until ctx ends.
func (f *Follower) Run(ctx context.Context) {
	if f.AccessEvery == 0 {
		f.AccessEvery = 2 * time.Second
	}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		f.Client.FollowApps(ctx, func(all map[string]api.App, _ []string) {
			f.mu.Lock()
			f.apps = copyMap(all)
			f.mu.Unlock()
			f.rebuild()
		})
	}()
	go func() {
		defer wg.Done()
		f.Client.FollowInstances(ctx, client.InstanceFilter{}, func(all map[string]api.Instance, _ []string) {
			f.mu.Lock()
			f.insts = copyMap(all)
			f.mu.Unlock()
			f.rebuild()
		})
	}()
	go func() {
		defer wg.Done()
		f.reportAccess(ctx)
	}()
	wg.Wait()
}

func (f *Follower) rebuild() {
	f.mu.Lock()
	t := NewTable(BuildRoutes(f.apps, f.insts, f.LocalNode))
	// A new split's window starts before its first request.
	f.noteSplits(time.Now().UTC())
	f.mu.Unlock()
	f.Proxy.SetTable(t)
}

// BuildRoutes turns apps and their instances into the gateway's view:
// each routed app with the addresses of its routable instances.
func BuildRoutes(apps map[string]api.App, insts map[string]api.Instance, localNode string) []AppRoutes {
	upstreams := map[string][]string{}
	byRev := map[string]map[int64][]string{}
	for _, i := range insts {
		if !i.Routable() {
			continue
		}
		addr := i.Status.Address
		if i.Node == localNode && i.Status.ContainerAddress != "" {
			addr = i.Status.ContainerAddress
		}
		upstreams[i.App] = append(upstreams[i.App], addr)
		if byRev[i.App] == nil {
			byRev[i.App] = map[int64][]string{}
		}
		byRev[i.App][i.Revision] = append(byRev[i.App][i.Revision], addr)
	}
	var out []AppRoutes
	for _, a := range apps {
		if len(a.Spec.Routes) == 0 || a.Deleting {
			continue
		}
		r := AppRoutes{App: a.Spec.Name, Hosts: a.Spec.Routes, Upstreams: upstreams[a.Spec.Name], Idle: a.Idled}
		sort.Strings(r.Upstreams)
		for rev, ups := range byRev[a.Spec.Name] {
			sort.Strings(ups)
			r.Revisions = append(r.Revisions, RevisionRoutes{Revision: rev, Upstreams: ups})
		}
		sort.Slice(r.Revisions, func(i, j int) bool { return r.Revisions[i].Revision < r.Revisions[j].Revision })
		if c := a.Canary; c != nil {
			r.Split = &Split{Stable: c.Stable, Canary: a.TemplateRevision, Weight: int(c.Weight)}
		}
		if a.Spec.Idle != nil {
			r.IdleEnabled = true
			if a.Spec.Idle.WakeTimeout != nil {
				r.WakeTimeout = a.Spec.Idle.WakeTimeout.D()
			}
		}
		if a.Spec.RequestTimeout != nil {
			r.Timeout = a.Spec.RequestTimeout.D()
			if r.Timeout == 0 {
				r.Timeout = -1 // the spec's 0s means no timeout; the table's 0 means its default
			}
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].App < out[j].App })
	return out
}

// reportAccess sends the batched last-access times every AccessEvery,
// and the traffic of canaries.
func (f *Follower) reportAccess(ctx context.Context) {
	t := time.NewTicker(f.AccessEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f.reportTraffic(ctx)
		f.mu.Lock()
		batch := f.access
		f.access = nil
		f.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := f.Client.ReportAccess(rctx, batch); err != nil && ctx.Err() == nil {
			f.Log.Warn("report access", "err", err)
			f.mu.Lock() // keep the times for the next try, unless newer ones came
			for app, at := range batch {
				if f.access == nil {
					f.access = map[string]time.Time{}
				}
				if at.After(f.access[app]) {
					f.access[app] = at
				}
			}
			f.mu.Unlock()
		}
		cancel()
	}
}

func copyMap[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
