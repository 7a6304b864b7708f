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
