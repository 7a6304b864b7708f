package controller

import (
	"testing"
	"time"

	"berth/api"
)

// canaryApp is web at revision 2 trying a canary of n instances beside
// the replicas of revision 1.
func canaryApp(replicas, n int) api.App {
	a := app(replicas, 2)
	stable := app(replicas, 1)
	a.Spec.Image = "berth/demo:2"
	a.Canary = &api.CanaryState{Revision: 2, Stable: 1, StableSpec: stable.Spec, Instances: n, Weight: 1000}
	return a
}

// A canary adds its instances beside the stable ones and retires none of
// them; a stable instance that breaks is replaced from the stable
// template; new instances never take an index in use.
func TestPlanCanary(t *testing.T) {
	a := canaryApp(3, 1)
	p := PlanApp(a, []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok")}, nil, time.Now())
	if len(p.Create) != 1 || p.Create[0].Revision != 2 || p.Create[0].Name != "web-4" || p.Create[0].Spec.Image != "berth/demo:2" || len(p.Retire) != 0 {
		t.Fatalf("start of a canary: create %v (%+v), retire %v; want web-4 of revision 2 and nothing retired", names(p.Create), p.Create, retired(p))
	}
	p = PlanApp(a, []api.Instance{inst(1, 1, "ok"), inst(2, 1, "sick"), inst(3, 1, "ok"), inst(4, 2, "ok")}, nil, time.Now())
	if len(p.Create) != 1 || p.Create[0].Revision != 1 || p.Create[0].Spec.Image != "berth/demo:1" || p.Create[0].Name != "web-5" {
		t.Fatalf("a broken stable instance: create %+v; want web-5 of the stable revision 1", p.Create)
	}
	if !equal(retired(p), []string{"web-2"}) {
		t.Fatalf("a broken stable instance: retire %v, want web-2", retired(p))
	}
	// Settled: nothing to do.
	p = PlanApp(a, []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok"), inst(4, 2, "ok")}, nil, time.Now())
	if len(p.Create) != 0 || len(p.Retire) != 0 {
		t.Fatalf("a running canary: create %v, retire %v; want nothing", names(p.Create), retired(p))
	}
	// Promoted (no canary any more): a rolling update; aborted (back to
	// the stable template): the canary is retired.
	promoted := a
	promoted.Canary = nil
	p = PlanApp(promoted, []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok"), inst(4, 2, "ok")}, nil, time.Now())
	if len(p.Create) != 1 || p.Create[0].Revision != 2 || len(p.Retire) != 1 {
		t.Fatalf("promoted: create %v, retire %v; want one new and one old retired", names(p.Create), retired(p))
	}
	aborted := api.AfterCanaryAbort(a, time.Now())
	p = PlanApp(aborted, []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok"), inst(4, 2, "ok")}, nil, time.Now())
	if len(p.Create) != 0 || !equal(retired(p), []string{"web-4"}) || aborted.TemplateRevision != 1 || aborted.Revision != 3 {
		t.Fatalf("aborted (revision %d, template %d): create %v, retire %v; want the canary web-4 retired and nothing new",
			aborted.Revision, aborted.TemplateRevision, names(p.Create), retired(p))
	}
}

// A paused rolling update retires no healthy old instance and starts new
// ones only for empty places.
func TestPlanPaused(t *testing.T) {
	a := app(3, 2)
	a.Paused = true
	p := PlanApp(a, []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 2, "ok")}, nil, time.Now())
	if len(p.Create) != 0 || len(p.Retire) != 0 {
		t.Fatalf("paused with a healthy new one: create %v, retire %v; want nothing", names(p.Create), retired(p))
	}
	p = PlanApp(a, []api.Instance{inst(1, 1, "ok"), inst(3, 2, "ok")}, nil, time.Now())
	if len(p.Create) != 1 || len(p.Retire) != 0 {
		t.Fatalf("paused with a place empty: create %v, retire %v; want one new, nothing retired", names(p.Create), retired(p))
	}
}

// Traffic is summed over gateways for the split asked about only, and
// stale reports are left out.
func TestTrafficOf(t *testing.T) {
	now := time.Now()
	b := func(fast, slow int64) []int64 {
		out := make([]int64, len(api.LatencyBuckets)+1)
		out[0], out[9] = fast, slow // <= 1ms, <= 1s
		return out
	}
	reports := []api.GatewayTraffic{
		{Gateway: "g1", Updated: now, Apps: []api.AppTraffic{{App: "web", Stable: 1, Canary: 2, Revisions: []api.RevisionTraffic{
			{Revision: 1, Requests: 90, Buckets: b(90, 0)}, {Revision: 2, Requests: 10, Errors: 1, Buckets: b(5, 5)}}}}},
		{Gateway: "g2", Updated: now, Apps: []api.AppTraffic{{App: "web", Stable: 1, Canary: 2, Revisions: []api.RevisionTraffic{
			{Revision: 2, Requests: 10, ConnectFailures: 1, Buckets: b(10, 0)}}}}},
		{Gateway: "old", Updated: now.Add(-time.Hour), Apps: []api.AppTraffic{{App: "web", Stable: 1, Canary: 2, Revisions: []api.RevisionTraffic{
			{Revision: 2, Requests: 1000, Errors: 1000}}}}},
		{Gateway: "g3", Updated: now, Apps: []api.AppTraffic{{App: "web", Stable: 1, Canary: 5, Revisions: []api.RevisionTraffic{
			{Revision: 1, Requests: 7}}}}},
	}
	got := api.TrafficOf("web", 1, 2, reports, now, time.Minute)
	c, s := got[2], got[1]
	if c == nil || s == nil || c.Requests != 20 || c.Errors != 1 || c.ConnectFailures != 1 || c.ErrorRate != 0.1 || s.Requests != 90 {
		t.Fatalf("canary %+v, stable %+v", c, s)
	}
	if c.P99 <= 0.5 || c.P99 > 1 || s.P99 > 0.001 {
		t.Fatalf("p99: canary %g (want in (0.5s, 1s]), stable %g (want <= 1ms)", c.P99, s.P99)
	}
}
