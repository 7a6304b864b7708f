package controller

import (
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"berth/api"
)

// keptInst is an instance of revision rev that an update replaced and
// kept stopped until until.
func keptInst(index int, rev int64, until time.Time) api.Instance {
	i := inst(index, rev, "idle")
	i.Desired, i.KeptUntil = api.DesiredKeep, until
	return i
}

// keepingFor is app(replicas, templateRev) keeping the replaced instances for keep.
func keepingFor(replicas int, templateRev int64, keep time.Duration) api.App {
	a := app(replicas, templateRev)
	d := api.Duration(keep)
	a.Spec.Update = &api.Update{KeepPrevious: &d}
	return a
}

func resumed(p Plan) []string {
	out := append(append([]string{}, p.Resume...), p.Unkeep...)
	sort.Strings(out)
	return out
}

func keptNames(p Plan) []string {
	var out []string
	for n := range p.Kept {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func TestPlanFastRollback(t *testing.T) {
	later := t0.Add(api.DefaultKeepPrevious)
	v1 := []api.Instance{inst(1, 1, "ok"), inst(2, 1, "ok"), inst(3, 1, "ok")}
	kept1 := []api.Instance{keptInst(1, 1, later), keptInst(2, 1, later), keptInst(3, 1, later)}
	v2 := []api.Instance{inst(4, 2, "ok"), inst(5, 2, "ok"), inst(6, 2, "ok")}
	with := func(lists ...[]api.Instance) []api.Instance {
		var out []api.Instance
		for _, l := range lists {
			out = append(out, l...)
		}
		return out
	}
	deleting := app(3, 2)
	deleting.Deleting = true
	idled := app(3, 2)
	idled.Idled = true
	tests := []struct {
		name        string
		app         api.App
		insts       []api.Instance
		nodes       map[string]string
		now         time.Time
		wantCreate  []string
		wantRetire  []string
		wantKept    []string // of wantRetire, kept until now+keep_previous
		wantResume  []string
		wantRecheck time.Time
		why         map[string]string // retire reasons that matter
	}{
		// Keeping during an update.
		{name: "a healthy old one an update replaces is kept", app: app(3, 2),
			insts: with(v1, []api.Instance{inst(4, 2, "ok")}), now: t0,
			wantCreate: []string{"web-5"}, wantRetire: []string{"web-3"}, wantKept: []string{"web-3"},
			why: map[string]string{"web-3": "replaced by revision 2"}},
		{name: "the last ones are kept too", app: app(2, 2),
			insts: []api.Instance{inst(1, 1, "ok"), keptInst(2, 1, later), inst(3, 2, "ok"), inst(4, 2, "ok")}, now: t0,
			wantRetire: []string{"web-1"}, wantKept: []string{"web-1"}, wantRecheck: later},
		{name: "keep_previous 0s keeps nothing", app: keepingFor(3, 2, 0),
			insts: with(v1, []api.Instance{inst(4, 2, "ok")}), now: t0,
			wantCreate: []string{"web-5"}, wantRetire: []string{"web-3"}},
		{name: "at most replicas are kept", app: app(2, 2),
			insts: []api.Instance{keptInst(1, 1, later), keptInst(2, 1, later), inst(3, 1, "ok"), inst(4, 2, "ok"), inst(5, 2, "ok")}, now: t0,
			wantRetire: []string{"web-3"}, wantRecheck: later},
		{name: "only the template current just before is kept", app: app(2, 3),
			insts: []api.Instance{inst(1, 1, "ok"), inst(2, 2, "ok"), inst(3, 3, "ok"), inst(4, 3, "ok")}, now: t0,
			wantRetire: []string{"web-1", "web-2"}, wantKept: []string{"web-2"}},

		// Not kept when retired for another reason.
		{name: "unhealthy old ones are not kept", app: app(3, 2),
			insts: []api.Instance{inst(1, 1, "ok"), inst(2, 1, "new"), inst(3, 1, "sick")}, now: t0,
			wantCreate: []string{"web-4", "web-5", "web-6"}, wantRetire: []string{"web-2", "web-3"}},
		{name: "scaled down old ones are not kept; the one replaced is", app: app(1, 2),
			insts: with(v1, []api.Instance{inst(4, 2, "ok")}), now: t0,
			wantRetire: []string{"web-1", "web-2", "web-3"}, wantKept: []string{"web-1"},
			why: map[string]string{"web-1": "replaced by revision 2", "web-2": "scaled down", "web-3": "scaled down"}},
		{name: "scaled to zero: nothing kept", app: app(0, 2), insts: v1, now: t0,
			wantRetire: []string{"web-1", "web-2", "web-3"}},
		{name: "lost ones are not kept", app: app(1, 2),
			insts: []api.Instance{on(inst(1, 1, "ok"), "n2"), inst(2, 2, "ok")}, nodes: map[string]string{"n1": api.NodeReady, "n2": api.NodeDown}, now: t0,
			wantRetire: []string{"web-1"}},
		{name: "drained ones are not kept", app: app(1, 1),
			insts: []api.Instance{on(inst(1, 1, "ok"), "n2"), inst(2, 1, "ok")}, nodes: map[string]string{"n1": api.NodeReady, "n2": api.NodeDraining}, now: t0,
			wantRetire: []string{"web-1"}},
		{name: "app removed: kept ones go too", app: deleting, insts: with(kept1, v2), now: t0,
			wantRetire: []string{"web-1", "web-2", "web-3", "web-4", "web-5", "web-6"}},
		{name: "scaled to zero for want of requests: kept ones stay kept", app: idled,
			insts: with(kept1, []api.Instance{inst(4, 2, "idle"), inst(5, 2, "idle"), inst(6, 2, "idle")}), now: t0,
			wantRecheck: later},

		// Kept ones stay while nothing rolls, and go at their time.
		{name: "after the update they wait, and the plan looks again at their time", app: app(3, 2), insts: with(kept1, v2), now: t0,
			wantRecheck: later},
		{name: "expired, they go", app: app(3, 2), insts: with(kept1, v2), now: later,
			wantRetire: []string{"web-1", "web-2", "web-3"},
			why:        map[string]string{"web-1": "kept for a fast rollback until " + later.Format(time.RFC3339) + ": expired"}},
		{name: "on a draining node, they go", app: app(1, 2),
			insts: []api.Instance{on(keptInst(1, 1, later), "n2"), inst(2, 2, "ok")}, nodes: map[string]string{"n1": api.NodeReady, "n2": api.NodeDraining}, now: t0,
			wantRetire: []string{"web-1"}},
		{name: "on a lost node, they go", app: app(1, 2),
			insts: []api.Instance{on(keptInst(1, 1, later), "n2"), inst(2, 2, "ok")}, nodes: map[string]string{"n1": api.NodeReady}, now: t0,
			wantRetire: []string{"web-1"}},
		{name: "the next update retires the older kept ones and keeps the ones it replaces", app: app(3, 3),
			insts: with(kept1, v2, []api.Instance{inst(7, 3, "ok")}), now: t0,
			wantCreate: []string{"web-8"}, wantRetire: []string{"web-1", "web-2", "web-3", "web-6"}, wantKept: []string{"web-6"}},
		{name: "a woken app does not start kept ones of another template", app: app(3, 2),
			insts: with(kept1, []api.Instance{inst(4, 2, "idle"), inst(5, 2, "idle"), inst(6, 2, "idle")}), now: t0,
			wantResume: []string{"web-4", "web-5", "web-6"}, wantRecheck: later},

		// A rollback to the kept template resumes them in place of new ones.
		{name: "a rollback resumes the kept ones, creates nothing, retires nothing yet", app: app(3, 1),
			insts: with(kept1, v2), now: t0, wantResume: []string{"web-1", "web-2", "web-3"}},
		{name: "resumed and healthy, they retire the other template's, which are kept", app: app(3, 1),
			insts: with(v1, v2), now: t0,
			wantRetire: []string{"web-4", "web-5", "web-6"}, wantKept: []string{"web-4", "web-5", "web-6"},
			why: map[string]string{"web-4": "replaced by revision 1"}},
		{name: "no more are resumed than replicas", app: app(2, 1),
			insts: with(kept1, v2[:2]), now: t0, wantResume: []string{"web-1", "web-2"}, wantRecheck: later},
		{name: "fewer kept than replicas: the rest rolls as usual", app: app(3, 1),
			insts: with(kept1[:2], v2), now: t0, wantResume: []string{"web-1", "web-2"}},
		{name: "a rollback to another template rolls as usual", app: app(3, 7),
			insts: with(kept1, v2), now: t0, wantCreate: []string{"web-7"}, wantRetire: []string{"web-1", "web-2", "web-3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := PlanApp(tt.app, tt.insts, tt.nodes, tt.now)
			if got := names(p.Create); !equal(got, tt.wantCreate) {
				t.Errorf("create = %v, want %v", got, tt.wantCreate)
			}
			if got := retired(p); !equal(got, tt.wantRetire) {
				t.Errorf("retire = %v, want %v (%v)", got, tt.wantRetire, p.Retire)
			}
			if got := keptNames(p); !equal(got, tt.wantKept) {
				t.Errorf("kept = %v, want %v", got, tt.wantKept)
			}
			for n, until := range p.Kept {
				if want := tt.now.Add(api.DefaultKeepPrevious); !until.Equal(want) {
					t.Errorf("%s kept until %s, want %s", n, until, want)
				}
			}
			if got := resumed(p); !equal(got, tt.wantResume) {
				t.Errorf("resume = %v, want %v", got, tt.wantResume)
			}
			if !p.RecheckAt.Equal(tt.wantRecheck) {
				t.Errorf("recheck at %s, want %s", p.RecheckAt, tt.wantRecheck)
			}
			for n, want := range tt.why {
				if p.Retire[n] != want {
					t.Errorf("%s retired: %q, want %q", n, p.Retire[n], want)
				}
			}
			if len(p.Idle) != 0 {
				t.Errorf("idle = %v, want none", p.Idle)
			}
		})
	}
}

// An update then a rollback, driven step by step as the controller and the
// agent carry plans out: the rollback starts the very instances the update
// kept, never has fewer than replicas healthy, and ends with the update's
// instances kept in turn.
func TestFastRollbackSteps(t *testing.T) {
	const replicas = 3
	var insts []api.Instance
	for i := 1; i <= replicas; i++ {
		insts = append(insts, inst(i, 1, "ok"))
	}
	run := func(a api.App, now time.Time) {
		t.Helper()
		for step := 0; step < 50; step++ {
			p := PlanApp(a, insts, nil, now)
			var next []api.Instance
			for _, i := range insts {
				if until, ok := p.Kept[i.Name]; ok {
					i.Desired, i.KeptUntil, i.Status = api.DesiredKeep, until, api.Status{State: api.StateIdle}
				} else if _, gone := p.Retire[i.Name]; gone {
					continue
				}
				for _, r := range p.Unkeep {
					if r == i.Name {
						i.Desired, i.KeptUntil, i.Status = api.DesiredRun, time.Time{}, api.Status{State: api.StateStarting}
					}
				}
				if i.Status.State == api.StateStarting && !slices.Contains(p.Unkeep, i.Name) {
					i.Status = api.Status{State: api.StateRunning, Healthy: true, Address: "a"}
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
				if i.Ready() {
					healthy++
					if i.Revision != a.TemplateRevision {
						old++
					}
				}
			}
			if healthy < replicas {
				t.Fatalf("revision %d step %d: %d healthy, want >= %d", a.TemplateRevision, step, healthy, replicas)
			}
			if len(p.Create) == 0 && len(p.Retire) == 0 && len(p.Unkeep) == 0 && old == 0 && healthy == replicas {
				return
			}
		}
		t.Fatalf("revision %d did not converge: %v", a.TemplateRevision, insts)
	}
	state := func() (ready, kept []string) {
		for _, i := range insts {
			switch {
			case i.Ready():
				ready = append(ready, fmt.Sprintf("%s@%d", i.Name, i.Revision))
			case i.Desired == api.DesiredKeep:
				kept = append(kept, fmt.Sprintf("%s@%d", i.Name, i.Revision))
			}
		}
		sort.Strings(ready)
		sort.Strings(kept)
		return ready, kept
	}
	run(app(replicas, 2), t0)
	ready, kept := state()
	if !equal(ready, []string{"web-4@2", "web-5@2", "web-6@2"}) || !equal(kept, []string{"web-1@1", "web-2@1", "web-3@1"}) {
		t.Fatalf("after the update: ready %v, kept %v; want the new ones ready, the old ones kept", ready, kept)
	}
	run(app(replicas, 1), t0.Add(time.Minute)) // the rollback: template 1 current again
	ready, kept = state()
	if !equal(ready, []string{"web-1@1", "web-2@1", "web-3@1"}) || !equal(kept, []string{"web-4@2", "web-5@2", "web-6@2"}) {
		t.Fatalf("after the rollback: ready %v, kept %v; want the kept ones back, the update's kept", ready, kept)
	}
	for _, i := range insts {
		if i.Index > 6 {
			t.Errorf("the rollback created %s", i.Name)
		}
	}
}

// Kept instances hold no room for tasks either: a build asking for most
// of a node starts beside the stopped instances a rollout kept.
func TestKeptInstancesHoldNoRoomForTasks(t *testing.T) {
	node := api.Node{Name: "n1", State: api.NodeReady, Capacity: api.Capacity{CPU: 2000, Memory: 8 << 30}}
	var insts []*api.Instance
	for i := 1; i <= 6; i++ {
		in := inst(i, 2, "ok")
		if i <= 3 {
			in = keptInst(i, 1, t0.Add(time.Hour))
		}
		in.Node, in.Spec.Resources = "n1", api.Resources{CPU: 250, Memory: 64 << 20}
		insts = append(insts, &in)
	}
	free := freeOnReadyNodes([]api.Node{node}, placed(insts, nil))
	if want := (api.Capacity{CPU: 1250, Memory: 8<<30 - 3*64<<20}); len(free) != 1 || free[0] != want {
		t.Fatalf("free = %v, want %v (the 3 running instances held, the 3 kept ones not)", free, want)
	}
	if !fitsSomewhere(api.Capacity{CPU: 1000, Memory: 2 << 30}, free) {
		t.Fatal("a task of cpu 1 does not fit beside 3 running instances of 250m")
	}
}
