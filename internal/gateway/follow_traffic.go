package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"berth/api"
)

// Traffic reports: while an app has a canary, the follower sends the
// server what this gateway counted of each of its revisions since it
// first routed that split (api.AppTraffic), with the other reports of
// the tick. The controller judges the canary on the sum over gateways.

// splitBase is an app's counts when this gateway first saw its split.
type splitBase struct {
	stable, canary int64
	since          time.Time
	at             map[int64]RevisionStats
}

// gatewayID names this gateway process in its reports.
func gatewayID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "gw-" + hex.EncodeToString(b)
}

// canaries are the apps with a canary, by name, with the canary's
// template revision in Revision. f.mu is held.
func (f *Follower) canaries() map[string]*api.CanaryState {
	splits := map[string]*api.CanaryState{}
	for name, a := range f.apps {
		if a.Canary != nil && !a.Deleting {
			c := *a.Canary
			c.Revision = a.TemplateRevision // the canary's side, as instances name it
			splits[name] = &c
		}
	}
	return splits
}

// statsOf is the proxy's counts of the apps in splits. f.mu is held.
func (f *Follower) statsOf(splits map[string]*api.CanaryState) map[string]map[int64]RevisionStats {
	byApp := map[string]map[int64]RevisionStats{}
	for _, st := range f.Proxy.RevisionStats() {
		if splits[st.App] != nil {
			if byApp[st.App] == nil {
				byApp[st.App] = map[int64]RevisionStats{}
			}
			byApp[st.App][st.Revision] = st
		}
	}
	return byApp
}

// noteSplits snapshots the counts of each split this gateway routes for
// the first time (its window starts now) and forgets ended ones; it
// returns the splits, and their counts when it read them (nil when no
// split was new). f.mu is held.
func (f *Follower) noteSplits(now time.Time) (map[string]*api.CanaryState, map[string]map[int64]RevisionStats) {
	if f.id == "" {
		f.id, f.started = gatewayID(), now
	}
	splits := f.canaries()
	for name := range f.bases {
		if splits[name] == nil {
			delete(f.bases, name)
		}
	}
	if len(splits) == 0 {
		return nil, nil
	}
	var byApp map[string]map[int64]RevisionStats // read only when needed: rebuilds come often
	if f.bases == nil {
		f.bases = map[string]*splitBase{}
	}
	for name, c := range splits {
		if b := f.bases[name]; b == nil || b.stable != c.Stable || b.canary != c.Revision {
			if byApp == nil {
				byApp = f.statsOf(splits)
			}
			f.bases[name] = &splitBase{stable: c.Stable, canary: c.Revision, since: now, at: byApp[name]}
		}
	}
	return splits, byApp
}

// trafficReport is what to send now, nil when no app has a canary.
func (f *Follower) trafficReport(now time.Time) *api.GatewayTraffic {
	f.mu.Lock()
	defer f.mu.Unlock()
	splits, byApp := f.noteSplits(now)
	if len(splits) == 0 {
		return nil
	}
	if byApp == nil {
		byApp = f.statsOf(splits)
	}
	rep := &api.GatewayTraffic{Gateway: f.id, Started: f.started}
	for name, c := range splits {
		b := f.bases[name]
		at := api.AppTraffic{App: name, Stable: c.Stable, Canary: c.Revision, Since: b.since}
		for _, rev := range []int64{c.Stable, c.Revision} {
			cur, was := byApp[name][rev], b.at[rev]
			t := api.RevisionTraffic{Revision: rev, Requests: cur.Requests - was.Requests, Errors: cur.Errors - was.Errors,
				ConnectFailures: cur.ConnectFailures - was.ConnectFailures, Buckets: make([]int64, len(LatencyBuckets)+1)}
			for i := range t.Buckets {
				if i < len(cur.Buckets) {
					t.Buckets[i] = cur.Buckets[i]
				}
				if i < len(was.Buckets) {
					t.Buckets[i] -= was.Buckets[i]
				}
			}
			at.Revisions = append(at.Revisions, t)
		}
		rep.Apps = append(rep.Apps, at)
	}
	return rep
}

// reportTraffic sends the traffic report, if there is one.
func (f *Follower) reportTraffic(ctx context.Context) {
	rep := f.trafficReport(time.Now().UTC())
	if rep == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := f.Client.ReportTraffic(rctx, *rep); err != nil && ctx.Err() == nil {
		f.Log.Warn("report traffic", "err", err)
	}
}
