package controller

import (
	"testing"
	"time"

	"berth/api"
	"berth/internal/store"
)

// markHealthy reports every instance of the app running and healthy, as
// its agent would.
func (e *taskEnv) markHealthy(app string) {
	e.t.Helper()
	for _, inst := range e.instances() {
		if inst.App != app || inst.Desired == api.DesiredStop {
			continue
		}
		inst.Status = api.Status{State: api.StateRunning, Healthy: true, EverHealthy: true, Address: "127.0.0.1:1"}
		e.txn(store.Instances.Put(inst.Name, inst, inst.Version))
	}
}

func (e *taskEnv) revisionRecord(app string, n int64) api.Revision {
	e.t.Helper()
	r, err := store.Revisions.Get(e.ctx, e.st, api.RevisionKey(app, n))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// A revision whose instances all turn healthy rolls out; one whose new
// instances make no progress within its deadline is reverted: the app
// gets a new revision copied from the last good one, the failed one is
// marked bad with the reason.
func TestRolloutOutcomeAndRevert(t *testing.T) {
	e := newTaskEnv(t)
	e.node("n1", 16000, 64<<30)
	c := &Controller{Store: e.st, Log: e.log, NodeTTL: time.Hour}
	pass := func() {
		t.Helper()
		if err := c.Reconcile(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
	two := 2
	spec := api.AppSpec{Name: "web", Image: "berth/demo:1", Replicas: &two, Resources: api.Resources{CPU: 10, Memory: api.MinMemory}}
	spec.Default()
	app := api.App{Spec: spec, Revision: 1, TemplateRevision: 1, Created: time.Now().UTC(), Updated: time.Now().UTC()}
	e.txn(store.Apps.PutAny("web", app), store.Revisions.PutAny(api.RevisionKey("web", 1),
		api.Revision{App: "web", Revision: 1, Spec: spec, Template: 1, Outcome: api.OutcomeRollingOut, Created: app.Created}))
	pass() // places the instances
	if got := e.revisionRecord("web", 1).Outcome; got != api.OutcomeRollingOut {
		t.Fatalf("revision 1 before its instances are healthy: %s", got)
	}
	e.markHealthy("web")
	pass()
	if got := e.revisionRecord("web", 1).Outcome; got != api.OutcomeRolledOut {
		t.Fatalf("revision 1 with every instance healthy: %s, want rolled out", got)
	}

	// Revision 2 never gets healthy.
	cur, err := store.Apps.Get(e.ctx, e.st, "web")
	if err != nil {
		t.Fatal(err)
	}
	bad := cur
	bad.Spec.Image = "berth/demo:broken"
	bad.Revision, bad.TemplateRevision, bad.Updated = 2, 2, time.Now().UTC()
	e.txn(store.Apps.Put("web", bad, cur.Version), store.Revisions.Create(api.RevisionKey("web", 2),
		api.Revision{App: "web", Revision: 2, Spec: bad.Spec, Template: 2, Outcome: api.OutcomeRollingOut, Created: bad.Updated}))
	pass()
	pass()
	if r := c.rollouts["web"]; r == nil || r.rev.Revision != 2 {
		t.Fatalf("the tracker does not follow revision 2: %+v", r)
	}
	c.rollouts["web"].progressAt = time.Now().Add(-api.DefaultProgressDeadline - time.Second) // the deadline passed
	pass()
	r2 := e.revisionRecord("web", 2)
	if r2.Outcome != api.OutcomeReverted || !r2.Bad || r2.Reason == "" {
		t.Errorf("revision 2 after its deadline: %+v; want reverted, bad, with a reason", r2)
	}
	now, err := store.Apps.Get(e.ctx, e.st, "web")
	if err != nil {
		t.Fatal(err)
	}
	r3 := e.revisionRecord("web", 3)
	// Template 1 again: its instances still running are current, not replaced.
	if now.Revision != 3 || now.Spec.Image != "berth/demo:1" || now.TemplateRevision != 1 ||
		r3.RollbackOf != 1 || r3.By != autoRevertBy || r3.Outcome != api.OutcomeRollingOut {
		t.Errorf("after the revert: app revision %d image %s template %d (want 3, demo:1, 1); revision 3 %+v", now.Revision, now.Spec.Image, now.TemplateRevision, r3)
	}
}

// A revision replaced before it rolled out is superseded; history beyond
// history_limit is dropped, the current revision kept.
func TestRolloutSupersededAndPruned(t *testing.T) {
	e := newTaskEnv(t)
	c := &Controller{Store: e.st, Log: e.log, NodeTTL: time.Hour}
	one, limit := 1, 2
	spec := api.AppSpec{Name: "web", Image: "berth/demo:1", Replicas: &one, HistoryLimit: &limit, Resources: api.Resources{CPU: 10, Memory: api.MinMemory}}
	spec.Default()
	for n := int64(1); n <= 4; n++ {
		app := api.App{Spec: spec, Revision: n, TemplateRevision: n, Created: time.Now().UTC(), Updated: time.Now().UTC()}
		ops := []store.Op{store.Apps.PutAny("web", app), store.Revisions.Create(api.RevisionKey("web", n),
			api.Revision{App: "web", Revision: n, Spec: spec, Template: n, Outcome: api.OutcomeRollingOut})}
		e.txn(ops...)
		if err := c.Reconcile(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
	h, err := store.Revisions.ListUnder(e.ctx, e.st, "web/")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].Revision != 3 || h[1].Revision != 4 {
		t.Fatalf("history with history_limit 2: %+v", h)
	}
	if h[0].Outcome != api.OutcomeSuperseded || h[1].Outcome != api.OutcomeRollingOut {
		t.Errorf("outcomes: 3 %s, 4 %s; want superseded, rolling out", h[0].Outcome, h[1].Outcome)
	}
}
