package controller

import (
	"sort"
	"testing"
	"time"

	"berth/api"
)

func app(replicas int, templateRev int64) api.App {
	return api.App{Spec: api.AppSpec{Name: "web", Image: "berth/demo:1", Replicas: &replicas}, Revision: templateRev, TemplateRevision: templateRev}
}

// inst makes an instance of revision rev; state "ok" is placed and healthy,
// "new" is placed and starting, "pending" is not placed.
func inst(index int, rev int64, state string) api.Instance {
	i := NewInstance(app(1, rev), index, time.Time{})
	switch state {
	case "ok":
		i.Node, i.Status = "n1", api.Status{State: api.StateRunning, Healthy: true, Address: "127.0.0.1:1"}
	case "new":
		i.Node, i.Status = "n1", api.Status{State: api.StateStarting}
	case "sick":
		i.Node, i.Status = "n1", api.Status{State: api.StateUnhealthy, Replace: true}
	case "pending":
	case "retired":
		i.Node, i.Desired = "n1", api.DesiredStop
	case "idle":
		i.Node, i.Desired, i.Status = "n1", api.DesiredIdle, api.Status{State: api.StateIdle}
	}
	return i
}

func names(insts []api.Instance) []string {
	var out []string
	for _, i := range insts {
		out = append(out, i.Name)
	}
	return out
}

func retired(p Plan) []string {
	var out []string
	for n := range p.Retire {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func TestPlanApp(t *testing.T) {
	tests := []struct {
		name       string
		app        api.App
		insts      []api.Instance
		wantCreate []string
		wantRetire []string
		wantDelete bool
	}{
		{"fresh app creates all replicas", app(3, 1), nil,
			[]string{"web-1", "web-2", "web-3"}, nil, false},
		{"converged does nothing", app(2, 1), []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok")},
			nil, nil, false},
		{"scale up fills the lowest free indexes", app(4, 1), []api.Instance{inst(1, 1, "ok"), inst(3, 1, "ok")},
			[]string{"web-2", "web-4"}, nil, false},
		{"retiring instances keep their index", app(2, 1), []api.Instance{inst(1, 1, "retired"), inst(2, 1, "ok")},
			[]string{"web-3"}, nil, false},
		{"scale down retires unplaced, then unhealthy, then highest", app(1, 1),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "new"), inst(3, 1, "ok"), inst(4, 1, "pending")},
			nil, []string{"web-2", "web-3", "web-4"}, false},
		{"scale to zero retires all", app(0, 1), []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok")},
			nil, []string{"web-1", "web-2"}, false},
		{"rolling update starts by surging one", app(3, 2),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok")},
			[]string{"web-4"}, nil, false},
		{"rolling update waits for the new one to be healthy", app(3, 2),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok"), inst(4, 2, "new")},
			nil, nil, false},
		{"healthy new one retires one old and surges the next", app(3, 2),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok"), inst(4, 2, "ok")},
			[]string{"web-5"}, []string{"web-3"}, false},
		{"broken old instances go at once", app(3, 2),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "new"), inst(3, 1, "new")},
			[]string{"web-4", "web-5", "web-6"}, []string{"web-2", "web-3"}, false},
		{"last old one goes when the new set is healthy", app(2, 2),
			[]api.Instance{inst(1, 1, "ok"), inst(3, 2, "ok"), inst(4, 2, "ok")},
			nil, []string{"web-1"}, false},
		{"unhealthy past retries is replaced", app(2, 1),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "sick")},
			[]string{"web-3"}, []string{"web-2"}, false},
		{"deleting retires everything", func() api.App { a := app(2, 1); a.Deleting = true; return a }(),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok")},
			nil, []string{"web-1", "web-2"}, false},
		{"deleting with nothing left deletes the app", func() api.App { a := app(2, 1); a.Deleting = true; return a }(),
			nil, nil, nil, true},
		{"deleting waits for retiring instances", func() api.App { a := app(2, 1); a.Deleting = true; return a }(),
			[]api.Instance{inst(1, 1, "retired")}, nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := PlanApp(tt.app, tt.insts, nil, time.Time{})
			if got := names(p.Create); !equal(got, tt.wantCreate) {
				t.Errorf("create = %v, want %v", got, tt.wantCreate)
			}
			if got := retired(p); !equal(got, tt.wantRetire) {
				t.Errorf("retire = %v, want %v", got, tt.wantRetire)
			}
			if p.DeleteApp != tt.wantDelete {
				t.Errorf("delete app = %v, want %v", p.DeleteApp, tt.wantDelete)
			}
			for _, c := range p.Create {
				if c.Revision != tt.app.TemplateRevision || c.Desired != api.DesiredRun || c.Node != "" || c.Spec.Replicas != nil {
					t.Errorf("created %s = %+v: want the current template, unplaced, desired run", c.Name, c)
				}
			}
		})
	}
}

// A rolling update driven step by step never has fewer healthy instances
// than replicas and ends with only new ones.
func TestRollingUpdateKeepsCapacity(t *testing.T) {
	const replicas = 4
	a := app(replicas, 2)
	var insts []api.Instance
	for i := 1; i <= replicas; i++ {
		insts = append(insts, inst(i, 1, "ok"))
	}
	for step := 0; step < 50; step++ {
		p := PlanApp(a, insts, nil, time.Time{})
		var next []api.Instance
		for _, i := range insts {
			if _, gone := p.Retire[i.Name]; gone {
				continue // the agent removes it
			}
			if i.Status.State == api.StateStarting {
				i.Status = api.Status{State: api.StateRunning, Healthy: true, Address: "a"} // became healthy
			}
			next = append(next, i)
		}
		for _, c := range p.Create {
			c.Node, c.Status = "n1", api.Status{State: api.StateStarting}
			next = append(next, c)
		}
		insts = next
		healthy, old := 0, 0
		for _, i := range insts {
			if isHealthy(i) {
				healthy++
			}
			if i.Revision != a.TemplateRevision {
				old++
			}
		}
		if healthy < replicas && old > 0 {
			t.Fatalf("step %d: %d healthy, want >= %d during the update", step, healthy, replicas)
		}
		if len(insts) > replicas+1 {
			t.Fatalf("step %d: %d instances, want at most %d", step, len(insts), replicas+1)
		}
		if old == 0 && len(p.Create) == 0 && len(p.Retire) == 0 {
			if len(insts) != replicas {
				t.Fatalf("converged with %d instances, want %d", len(insts), replicas)
			}
			return
		}
	}
	t.Fatal("rolling update did not converge in 50 steps")
}

func TestPlanIdle(t *testing.T) {
	idled := app(2, 1)
	idled.Idled = true
	p := PlanApp(idled, []api.Instance{inst(1, 1, "ok"), inst(2, 1, "idle")}, nil, time.Time{})
	if !equal(p.Idle, []string{"web-1"}) || len(p.Create) != 0 || len(p.Retire) != 0 || len(p.Resume) != 0 {
		t.Fatalf("idled app: %+v, want web-1 idled and nothing else", p)
	}
	// Woken: idle instances resume and count as the replicas.
	p = PlanApp(app(2, 1), []api.Instance{inst(1, 1, "idle"), inst(2, 1, "idle")}, nil, time.Time{})
	if !equal(p.Resume, []string{"web-1", "web-2"}) || len(p.Create) != 0 || len(p.Retire) != 0 {
		t.Fatalf("woken app: %+v, want both resumed, none created", p)
	}
	// Removed while idle: the kept containers go too.
	gone := app(2, 1)
	gone.Idled, gone.Deleting = true, true
	p = PlanApp(gone, []api.Instance{inst(1, 1, "idle")}, nil, time.Time{})
	if _, ok := p.Retire["web-1"]; !ok {
		t.Fatalf("removed idle app: %+v, want web-1 retired", p)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSettled(t *testing.T) {
	tests := []struct {
		name  string
		app   api.App
		insts []api.Instance
		want  bool
	}{
		{"all healthy", app(2, 1), []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok")}, true},
		{"one still starting", app(2, 1), []api.Instance{inst(1, 1, "ok"), inst(2, 1, "new")}, false},
		{"not placed yet", app(1, 1), []api.Instance{inst(1, 1, "pending")}, false},
		{"old revision left", app(1, 2), []api.Instance{inst(1, 2, "ok"), inst(2, 1, "ok")}, false},
		{"one stopping", app(1, 1), []api.Instance{inst(1, 1, "ok"), inst(2, 1, "retired")}, false},
		{"too few", app(2, 1), []api.Instance{inst(1, 1, "ok")}, false},
		{"started, unhealthy", app(1, 1), []api.Instance{inst(1, 1, "sick")}, true},
	}
	for _, tt := range tests {
		if got := settled(tt.app, tt.insts); got != tt.want {
			t.Errorf("%s: settled = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func on(i api.Instance, node string) api.Instance {
	i.Node = node
	return i
}

// Instances on a node that is down or gone are lost: retired and replaced
// at once, whatever their health.
func TestPlanLostNodes(t *testing.T) {
	nodes := map[string]string{"n1": api.NodeReady, "n2": api.NodeDown}
	insts := []api.Instance{on(inst(1, 1, "ok"), "n1"), on(inst(2, 1, "ok"), "n2"), on(inst(3, 1, "ok"), "n3")}
	p := PlanApp(app(3, 1), insts, nodes, time.Time{})
	if got := retired(p); !equal(got, []string{"web-2", "web-3"}) {
		t.Fatalf("retire = %v, want web-2 (node down) and web-3 (node gone)", got)
	}
	if p.Lost["web-2"] != "lost: node n2 is down" || p.Lost["web-3"] != "lost: node n3 is gone" {
		t.Errorf("lost = %v", p.Lost)
	}
	if got := names(p.Create); !equal(got, []string{"web-4", "web-5"}) {
		t.Errorf("create = %v, want two replacements with new indexes", got)
	}
	// A nil map says nothing about nodes: nothing is lost.
	if p := PlanApp(app(3, 1), insts, nil, time.Time{}); len(p.Retire) != 0 || len(p.Create) != 0 {
		t.Errorf("without node states: %+v, want no change", p)
	}
}

// Draining moves instances one at a time: a replacement first, the old
// one only once the replacement is healthy.
func TestPlanDrainOneAtATime(t *testing.T) {
	nodes := map[string]string{"n1": api.NodeReady, "n3": api.NodeDraining}
	a := app(3, 1)
	insts := []api.Instance{on(inst(1, 1, "ok"), "n1"), on(inst(2, 1, "ok"), "n3"), on(inst(3, 1, "ok"), "n3")}
	for step := 0; step < 20; step++ {
		p := PlanApp(a, insts, nodes, time.Time{})
		if len(p.Lost) != 0 {
			t.Fatalf("step %d: lost %v on a draining node", step, p.Lost)
		}
		var next []api.Instance
		for _, i := range insts {
			if why, gone := p.Retire[i.Name]; gone {
				if i.Node != "n3" || why != "moved off node n3: draining" {
					t.Fatalf("step %d: retired %s on %s: %q", step, i.Name, i.Node, why)
				}
				continue
			}
			if i.Status.State == api.StateStarting {
				i.Status = api.Status{State: api.StateRunning, Healthy: true, Address: "a"}
			}
			next = append(next, i)
		}
		if len(p.Create) > 1 {
			t.Fatalf("step %d: %d created at once, want one at a time", step, len(p.Create))
		}
		for _, c := range p.Create {
			c.Node, c.Status = "n1", api.Status{State: api.StateStarting}
			next = append(next, c)
		}
		insts = next
		healthy, onDrained := 0, 0
		for _, i := range insts {
			if isHealthy(i) {
				healthy++
			}
			if i.Node == "n3" {
				onDrained++
			}
		}
		if healthy < 3 {
			t.Fatalf("step %d: %d healthy, want >= 3 while draining", step, healthy)
		}
		if onDrained == 0 && len(p.Create) == 0 && len(p.Retire) == 0 {
			if len(insts) != 3 {
				t.Fatalf("drained with %d instances, want 3", len(insts))
			}
			return
		}
	}
	t.Fatal("drain did not converge in 20 steps")
}

// rolling is app(replicas, templateRev) with an update policy; m is min_healthy.
func rolling(replicas int, templateRev int64, parallel, unavailable int, m time.Duration) api.App {
	a := app(replicas, templateRev)
	d := api.Duration(m)
	a.Spec.Update = &api.Update{Parallel: &parallel, MaxUnavailable: &unavailable, MinHealthy: &d}
	return a
}

// since makes a healthy instance healthy since t.
func since(i api.Instance, t time.Time) api.Instance {
	i.Status.HealthySince = t
	return i
}

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func TestPlanUpdatePolicy(t *testing.T) {
	old3 := []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok")}
	old4 := append([]api.Instance{inst(4, 1, "ok")}, old3...)
	with := func(insts []api.Instance, more ...api.Instance) []api.Instance {
		return append(append([]api.Instance{}, insts...), more...)
	}
	tests := []struct {
		name        string
		app         api.App
		insts       []api.Instance
		now         time.Time
		wantCreate  []string
		wantRetire  []string
		wantRecheck time.Time
	}{
		// parallel: the surge.
		{"parallel 3 starts three at once", rolling(3, 2, 3, 0, 0), old3, t0,
			[]string{"web-4", "web-5", "web-6"}, nil, time.Time{}},
		{"parallel 3 waits while they start", rolling(3, 2, 3, 0, 0),
			with(old3, inst(4, 2, "new"), inst(5, 2, "new"), inst(6, 2, "new")), t0, nil, nil, time.Time{}},
		{"parallel 3: two healthy retire two old", rolling(3, 2, 3, 0, 0),
			with(old3, inst(4, 2, "ok"), inst(5, 2, "ok"), inst(6, 2, "new")), t0, nil, []string{"web-2", "web-3"}, time.Time{}},
		{"parallel 2: as new ones are healthy, old ones go and more start", rolling(4, 2, 2, 0, 0),
			with(old4, inst(5, 2, "ok"), inst(6, 2, "ok")), t0, []string{"web-7", "web-8"}, []string{"web-3", "web-4"}, time.Time{}},
		{"parallel beyond the replicas starts the replicas", rolling(3, 2, 5, 0, 0), old3, t0,
			[]string{"web-4", "web-5", "web-6"}, nil, time.Time{}},
		// max_unavailable: old ones go before their replacements are healthy.
		{"max_unavailable 1 retires one old before any new is healthy, and starts parallel+1", rolling(3, 2, 1, 1, 0), old3, t0,
			[]string{"web-4", "web-5"}, []string{"web-3"}, time.Time{}},
		{"max_unavailable 1 starts a second new one while the first starts", rolling(3, 2, 1, 1, 0),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(4, 2, "new")}, t0, []string{"web-3"}, nil, time.Time{}},
		{"max_unavailable 1 waits while two new ones start", rolling(3, 2, 1, 1, 0),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(4, 2, "new"), inst(5, 2, "new")}, t0, nil, nil, time.Time{}},
		{"max_unavailable 1: a healthy new one retires the next old", rolling(3, 2, 1, 1, 0),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(4, 2, "ok")}, t0, []string{"web-3", "web-5"}, []string{"web-2"}, time.Time{}},
		{"max_unavailable: the last old one goes when the rest fits in parallel+max_unavailable", rolling(3, 2, 1, 2, 0),
			[]api.Instance{inst(1, 1, "ok"), inst(4, 2, "ok")}, t0, []string{"web-2", "web-3"}, []string{"web-1"}, time.Time{}},
		{"max_unavailable keeps the last old one below replicas-max_unavailable healthy, and fills up to replicas+parallel", rolling(5, 2, 1, 1, 0),
			[]api.Instance{inst(1, 1, "ok"), inst(6, 2, "ok"), inst(7, 2, "ok")}, t0, []string{"web-2", "web-3", "web-4"}, nil, time.Time{}},
		{"max_unavailable: the last old one goes when the rest fits in parallel", rolling(3, 2, 1, 2, 0),
			[]api.Instance{inst(1, 1, "ok"), inst(4, 2, "ok"), inst(5, 2, "ok")}, t0, []string{"web-2"}, []string{"web-1"}, time.Time{}},
		{"max_unavailable: broken old ones go at once, their places beyond it are filled at once", rolling(3, 2, 1, 1, 0),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "new"), inst(3, 1, "new")}, t0, []string{"web-4", "web-5", "web-6"}, []string{"web-2", "web-3"}, time.Time{}},
		// Both.
		{"parallel 2 and max_unavailable 2 start four at once", rolling(4, 2, 2, 2, 0), old4, t0,
			[]string{"web-5", "web-6", "web-7", "web-8"}, []string{"web-3", "web-4"}, time.Time{}},
		{"parallel 2 and max_unavailable 2 start two more while two start", rolling(4, 2, 2, 2, 0),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(5, 2, "new"), inst(6, 2, "new")}, t0, []string{"web-3", "web-4"}, nil, time.Time{}},
		{"parallel 2 and max_unavailable 2: two healthy swap the last two", rolling(4, 2, 2, 2, 0),
			[]api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(5, 2, "ok"), inst(6, 2, "ok")}, t0,
			[]string{"web-3", "web-4"}, []string{"web-1", "web-2"}, time.Time{}},
		// min_healthy: a new one counts once healthy that long; the plan says when to look again.
		{"min_healthy: a new one healthy for less does not count yet", rolling(3, 2, 1, 0, 10*time.Second),
			with(old3, since(inst(4, 2, "ok"), t0)), t0.Add(5 * time.Second), nil, nil, t0.Add(10 * time.Second)},
		{"min_healthy: it counts once healthy that long", rolling(3, 2, 1, 0, 10*time.Second),
			with(old3, since(inst(4, 2, "ok"), t0)), t0.Add(10 * time.Second), []string{"web-5"}, []string{"web-3"}, time.Time{}},
		{"min_healthy: one without a healthy_since counts at once", rolling(3, 2, 1, 0, 10*time.Second),
			with(old3, inst(4, 2, "ok")), t0, []string{"web-5"}, []string{"web-3"}, time.Time{}},
		{"min_healthy: a young one holds its surge place", rolling(3, 2, 2, 0, 10*time.Second),
			with(old3, since(inst(4, 2, "ok"), t0), since(inst(5, 2, "ok"), t0.Add(8*time.Second))), t0.Add(12 * time.Second),
			[]string{"web-6"}, []string{"web-3"}, t0.Add(18 * time.Second)},
		{"min_healthy: no recheck once no old one is left", rolling(2, 2, 1, 0, 10*time.Second),
			[]api.Instance{since(inst(3, 2, "ok"), t0), since(inst(4, 2, "ok"), t0)}, t0, nil, nil, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := PlanApp(tt.app, tt.insts, nil, tt.now)
			if got := names(p.Create); !equal(got, tt.wantCreate) {
				t.Errorf("create = %v, want %v", got, tt.wantCreate)
			}
			if got := retired(p); !equal(got, tt.wantRetire) {
				t.Errorf("retire = %v, want %v", got, tt.wantRetire)
			}
			if !p.RecheckAt.Equal(tt.wantRecheck) {
				t.Errorf("recheck at %s, want %s", p.RecheckAt, tt.wantRecheck)
			}
			for name, why := range p.Retire {
				if why != "replaced by revision 2" {
					t.Errorf("%s retired: %q, want replaced", name, why)
				}
			}
		})
	}
}

// The defaults, written out, plan as no policy does, in every state the
// other tests use.
func TestPlanDefaultPolicyAsBefore(t *testing.T) {
	states := [][]api.Instance{
		nil,
		{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok")},
		{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok"), inst(4, 2, "new")},
		{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok"), inst(4, 2, "ok")},
		{inst(1, 1, "ok"), inst(2, 1, "new"), inst(3, 1, "new")},
		{inst(1, 1, "ok"), inst(2, 1, "new"), inst(4, 2, "new")},
		{inst(1, 1, "ok"), inst(3, 2, "ok"), inst(4, 2, "ok"), inst(5, 2, "sick")},
		{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 2, "ok"), inst(4, 2, "new"), inst(5, 2, "pending")},
		{since(inst(1, 1, "ok"), t0), since(inst(2, 2, "ok"), t0), inst(3, 1, "retired")},
	}
	for _, replicas := range []int{0, 1, 2, 3, 5} {
		for i, insts := range states {
			plain := PlanApp(app(replicas, 2), insts, nil, t0)
			explicit := PlanApp(rolling(replicas, 2, 1, 0, 0), insts, nil, t0)
			if !equal(names(plain.Create), names(explicit.Create)) || !equal(retired(plain), retired(explicit)) || !explicit.RecheckAt.IsZero() {
				t.Errorf("replicas %d, state %d: defaults plan %+v, no policy %+v", replicas, i, explicit, plain)
			}
			for n, why := range plain.Retire {
				if explicit.Retire[n] != why {
					t.Errorf("replicas %d, state %d: %s retired %q, want %q", replicas, i, n, explicit.Retire[n], why)
				}
			}
		}
	}
}

// A rolling update driven step by step (a second each) under a policy
// never has fewer than replicas-max_unavailable healthy (new ones
// counting after min_healthy), more than replicas+parallel instances or
// more than parallel new ones not yet counting; it never waits with
// nothing to wait for, and ends with only new ones.
func TestRollingUpdatePolicies(t *testing.T) {
	tests := []struct {
		replicas, parallel, unavailable int
		minHealthy                      time.Duration
	}{
		{4, 1, 0, 0}, {4, 2, 0, 0}, {5, 3, 0, 0}, {3, 5, 0, 0},
		{4, 1, 1, 0}, {3, 1, 2, 0}, {3, 1, 3, 0}, {5, 2, 1, 0},
		{6, 2, 2, 0}, {4, 3, 4, 0}, {1, 1, 1, 0},
		{4, 1, 0, 3 * time.Second}, {5, 2, 1, 2 * time.Second}, {3, 1, 2, 4 * time.Second},
	}
	for _, tt := range tests {
		a := rolling(tt.replicas, 2, tt.parallel, tt.unavailable, tt.minHealthy)
		counts := func(i api.Instance, now time.Time) bool {
			return isHealthy(i) && (i.Revision != a.TemplateRevision || now.Sub(i.Status.HealthySince) >= tt.minHealthy)
		}
		var insts []api.Instance
		for i := 1; i <= tt.replicas; i++ {
			insts = append(insts, since(inst(i, 1, "ok"), t0))
		}
		converged := false
		for step := 0; step < 100 && !converged; step++ {
			now := t0.Add(time.Duration(step) * time.Second)
			p := PlanApp(a, insts, nil, now)
			var next []api.Instance
			for _, i := range insts {
				if _, gone := p.Retire[i.Name]; gone {
					continue // the agent removes it
				}
				if i.Status.State == api.StateStarting {
					i.Status = api.Status{State: api.StateRunning, Healthy: true, Address: "a", HealthySince: now} // became healthy
				}
				next = append(next, i)
			}
			for _, c := range p.Create {
				c.Node, c.Status = "n1", api.Status{State: api.StateStarting}
				next = append(next, c)
			}
			starting := false
			for _, i := range insts {
				starting = starting || i.Status.State == api.StateStarting
			}
			insts = next
			healthy, old, young := 0, 0, 0
			for _, i := range insts {
				if counts(i, now) {
					healthy++
				}
				if i.Revision != a.TemplateRevision {
					old++
				} else if !counts(i, now) {
					young++
				}
			}
			if old > 0 && healthy < tt.replicas-tt.unavailable {
				t.Fatalf("%+v step %d: %d healthy, want >= %d during the update", tt, step, healthy, tt.replicas-tt.unavailable)
			}
			if len(insts) > tt.replicas+tt.parallel {
				t.Fatalf("%+v step %d: %d instances, want at most %d", tt, step, len(insts), tt.replicas+tt.parallel)
			}
			if young > tt.parallel+tt.unavailable {
				t.Fatalf("%+v step %d: %d new ones not yet healthy, want at most %d", tt, step, young, tt.parallel+tt.unavailable)
			}
			idle := len(p.Create) == 0 && len(p.Retire) == 0
			if idle && old > 0 && !starting && p.RecheckAt.IsZero() {
				t.Fatalf("%+v step %d: nothing planned, nothing starting, no recheck, %d old left", tt, step, old)
			}
			converged = idle && old == 0 && !starting
		}
		if !converged || len(insts) != tt.replicas {
			t.Fatalf("%+v: converged %v with %d instances, want %d", tt, converged, len(insts), tt.replicas)
		}
	}
}
