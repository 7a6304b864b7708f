package controller

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"berth/api"
	"berth/internal/scheduler"
	"berth/internal/store"
)

// A deploy that lowers the replicas while it changes the template (say,
// after `berth scale web 5`, a spec of 3) retires the surplus as scaled
// down, and only the rest as replaced by the new revision.
func TestPlanFewerReplicasDuringUpdateAreScaledDown(t *testing.T) {
	a := app(3, 2)
	var insts []api.Instance
	for i := 1; i <= 5; i++ {
		insts = append(insts, inst(i, 1, "ok"))
	}
	reasons := map[string]string{}
	for step := 0; step < 30; step++ {
		p := PlanApp(a, insts, nil, time.Time{})
		var next []api.Instance
		for _, i := range insts {
			if why, gone := p.Retire[i.Name]; gone {
				reasons[i.Name] = why
				continue
			}
			if i.Status.State == api.StateStarting {
				i.Status = api.Status{State: api.StateRunning, Healthy: true, EverHealthy: true, Address: "a"}
			}
			next = append(next, i)
		}
		for _, c := range p.Create {
			c.Node, c.Status = "n1", api.Status{State: api.StateStarting}
			next = append(next, c)
		}
		insts = next
		if len(p.Create) == 0 && len(p.Retire) == 0 && len(insts) == 3 && insts[0].Revision == 2 {
			break
		}
	}
	want := map[string]string{
		"web-5": "scaled down", "web-4": "scaled down",
		"web-3": "replaced by revision 2", "web-2": "replaced by revision 2", "web-1": "replaced by revision 2",
	}
	if fmt.Sprint(reasons) != fmt.Sprint(want) {
		t.Errorf("retire reasons %v, want %v", reasons, want)
	}
	if len(insts) != 3 {
		t.Errorf("ended with %d instances, want 3", len(insts))
	}
}

// sick is an instance of the current template unhealthy past its retries:
// never healthy unless ever is set.
func sick(index int, rev int64, attempt int, ever bool) api.Instance {
	i := inst(index, rev, "sick")
	i.Attempt, i.Status.EverHealthy = attempt, ever
	return i
}

// The replacement of an instance that never became healthy waits a
// backoff that doubles with each one in a row; one that was healthy once,
// or is of an old template, is replaced at once.
func TestPlanNeverHealthyReplacementBacksOff(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name        string
		app         api.App
		sick        api.Instance
		wantAttempt int
		wantWait    time.Duration
		wantReason  string
	}{
		{"first never-healthy one", app(1, 1), sick(1, 1, 0, false), 2, time.Second, "never became healthy: replaced by web-2 in 1s (attempt 2)"},
		{"third in a row", app(1, 1), sick(1, 1, 3, false), 4, 4 * time.Second, "never became healthy: replaced by web-2 in 4s (attempt 4)"},
		{"a long streak waits a minute", app(1, 1), sick(1, 1, 30, false), 31, time.Minute, "(attempt 31)"},
		{"healthy once: at once, the streak ends", app(1, 1), sick(1, 1, 5, true), 0, 0, "unhealthy past its retries: replaced"},
		{"of an old template: at once", app(1, 2), sick(1, 1, 5, false), 0, 0, "unhealthy past its retries: replaced"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := PlanApp(tt.app, []api.Instance{tt.sick}, nil, now)
			if len(p.Create) != 1 {
				t.Fatalf("create = %v, want one replacement", names(p.Create))
			}
			c := p.Create[0]
			if c.Attempt != tt.wantAttempt {
				t.Errorf("attempt = %d, want %d", c.Attempt, tt.wantAttempt)
			}
			if tt.wantWait == 0 && !c.NotBefore.IsZero() || tt.wantWait != 0 && !c.NotBefore.Equal(now.Add(tt.wantWait)) {
				t.Errorf("not before %s, want now + %s", c.NotBefore, tt.wantWait)
			}
			if why := p.Retire["web-1"]; !strings.Contains(why, tt.wantReason) {
				t.Errorf("retire reason %q, want %q", why, tt.wantReason)
			}
			if tt.wantWait != 0 && !strings.Contains(c.Reason, "web-1, which never became healthy") {
				t.Errorf("reason of the waiting replacement: %q", c.Reason)
			}
		})
	}
}

func TestReplaceBackoff(t *testing.T) {
	for attempt, want := range map[int]time.Duration{0: 0, 1: 0, 2: time.Second, 3: 2 * time.Second, 7: 32 * time.Second, 8: time.Minute, 100: time.Minute} {
		if got := ReplaceBackoff(attempt); got != want {
			t.Errorf("ReplaceBackoff(%d) = %s, want %s", attempt, got, want)
		}
	}
}

// A replacement in its backoff is written unplaced, with its reason, and
// placed by the first pass after its backoff.
func TestReconcileHoldsBackoffReplacement(t *testing.T) {
	e := newTaskEnv(t)
	e.node("n1", 16000, 64<<30)
	c := &Controller{Store: e.st, Log: e.log, NodeTTL: time.Hour}
	e.deploy("web", 1)
	if err := c.Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	first := e.instances()[0]
	first.Status = api.Status{State: api.StateUnhealthy, Replace: true, Error: "health check failed 6 times"}
	e.txn(store.Instances.Put(first.Name, first, first.Version))
	if err := c.Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	var repl api.Instance
	for _, i := range e.instances() {
		if i.Name != first.Name {
			repl = i
		}
	}
	if repl.Name == "" || repl.Node != "" || repl.NotBefore.IsZero() || repl.Attempt != 2 || !strings.Contains(repl.Reason, "never became healthy") {
		t.Fatalf("replacement %+v: want it unplaced in its backoff, attempt 2, with its reason", repl)
	}
	if c.wakeAt.IsZero() || !c.wakeAt.Equal(repl.NotBefore) {
		t.Errorf("the controller wakes at %s, want the backoff's end %s", c.wakeAt, repl.NotBefore)
	}
	if err := c.Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.instance(repl.Name); got.Node != "" {
		t.Fatalf("placed during its backoff: %+v", got)
	}
	// The backoff is over (moved back rather than waited for).
	repl = e.instance(repl.Name)
	repl.NotBefore = time.Now().Add(-time.Millisecond).UTC()
	e.txn(store.Instances.Put(repl.Name, repl, repl.Version))
	if err := c.Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.instance(repl.Name); got.Node != "n1" || got.Reason != "" || !got.NotBefore.IsZero() || got.Attempt != 2 {
		t.Fatalf("after its backoff: %+v, want it placed on n1, attempt kept", got)
	}
}

func (e *taskEnv) instance(name string) api.Instance {
	e.t.Helper()
	i, err := store.Instances.Get(e.ctx, e.st, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return i
}

// A rolling update spreads the new instances as if the old ones were gone:
// instances that all ran in one zone (its peer was down when they were
// placed) end spread evenly over both.
func TestRollingUpdateSpreadsAgain(t *testing.T) {
	nodes := []api.Node{
		{Name: "a1", State: api.NodeReady, Capacity: api.Capacity{CPU: 4000, Memory: 8 << 30}, Labels: map[string]string{"zone": "a"}},
		{Name: "b1", State: api.NodeReady, Capacity: api.Capacity{CPU: 4000, Memory: 8 << 30}, Labels: map[string]string{"zone": "b"}},
	}
	states := map[string]string{"a1": api.NodeReady, "b1": api.NodeReady}
	a := app(4, 2)
	a.Spec.Placement = &api.Placement{Spread: "zone"}
	a.Spec.Resources = api.Resources{CPU: 100, Memory: 64 << 20}
	var insts []api.Instance
	for i := 1; i <= 4; i++ {
		old := NewInstance(app(4, 1), i, time.Time{})
		old.Spec = a.Spec
		old.Node, old.Status = "a1", api.Status{State: api.StateRunning, Healthy: true, EverHealthy: true, Address: "x"}
		insts = append(insts, old)
	}
	for step := 0; step < 40; step++ {
		p := PlanApp(a, insts, states, time.Time{})
		var next []api.Instance
		for _, i := range insts {
			switch {
			case i.Desired == api.DesiredStop:
				continue // its container is gone now
			case p.Retire[i.Name] != "":
				i.Desired = api.DesiredStop // stopping for one step: it still holds its place
			case i.Status.State == api.StateStarting:
				i.Status = api.Status{State: api.StateRunning, Healthy: true, EverHealthy: true, Address: "x"}
			}
			next = append(next, i)
		}
		if len(p.Create) > 0 {
			s := newScan([]api.App{a}, nodes, states)
			for i := range next {
				s.add(&next[i])
				s.apps["web"].insts = append(s.apps["web"].insts, &next[i])
			}
			for i, d := range scheduler.Schedule(p.Create, nodes, s.holding(p.Create)) {
				c := p.Create[i]
				c.Node, c.Status = d.Node, api.Status{State: api.StateStarting}
				next = append(next, c)
			}
		}
		insts = next
		if len(p.Create) == 0 && len(p.Retire) == 0 && len(insts) == 4 {
			break
		}
	}
	per := map[string]int{}
	for _, i := range insts {
		if i.Revision != 2 || !isHealthy(i) {
			t.Fatalf("not rolled: %+v", i)
		}
		per[i.Node]++
	}
	if len(insts) != 4 || per["a1"] != 2 || per["b1"] != 2 {
		t.Errorf("after the rolling update: %v over %d instances, want 2 on a1 and 2 on b1", per, len(insts))
	}
}
