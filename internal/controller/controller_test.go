package controller

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"berth/api"
	"berth/internal/scheduler"
	"berth/internal/store"
)

func (e *taskEnv) deploy(name string, replicas int) {
	e.t.Helper()
	spec := api.AppSpec{Name: name, Image: "berth/demo:1", Replicas: &replicas, Resources: api.Resources{CPU: 10, Memory: api.MinMemory}}
	spec.Default()
	e.txn(store.Apps.PutAny(name, api.App{Spec: spec, Revision: 1, TemplateRevision: 1, Created: time.Now().UTC()}))
}

func (e *taskEnv) instances() []api.Instance {
	e.t.Helper()
	insts, _, err := store.Instances.List(e.ctx, e.st)
	if err != nil {
		e.t.Fatal(err)
	}
	return insts
}

func (e *taskEnv) events(kind string) []api.Event {
	e.t.Helper()
	evs, _, err := store.Events.List(e.ctx, e.st)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []api.Event
	for _, ev := range evs {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

func (e *taskEnv) revision() int64 {
	e.t.Helper()
	rev, _, err := e.st.Status(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return rev
}

// New instances are written once, with their node; a few placements are
// one event each, many are one event for the app.
func TestReconcileCreatesPlacedInstances(t *testing.T) {
	e := newTaskEnv(t)
	e.node("n1", 16000, 64<<30)
	e.node("n2", 16000, 64<<30)
	c := &Controller{Store: e.st, Log: e.log, NodeTTL: time.Hour}
	e.deploy("small", 3)
	e.deploy("big", eventsPerApp+5)
	if err := c.Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	insts := e.instances()
	if len(insts) != 3+eventsPerApp+5 {
		t.Fatalf("%d instances after one pass, want %d", len(insts), 3+eventsPerApp+5)
	}
	for _, inst := range insts {
		if inst.Node == "" {
			t.Errorf("%s has no node after the pass that made it", inst.Name)
		}
	}
	var small, big []string
	for _, ev := range e.events("placed") {
		switch ev.App {
		case "small":
			small = append(small, ev.Instance)
		case "big":
			big = append(big, ev.Message)
		}
	}
	slices.Sort(small)
	if !slices.Equal(small, []string{"small-1", "small-2", "small-3"}) {
		t.Errorf("placed events of small: %v, want one per instance", small)
	}
	want := fmt.Sprintf("%d instances on 2 nodes", eventsPerApp+5)
	if len(big) != 1 || !strings.HasPrefix(big[0], want) {
		t.Errorf("placed events of big: %q, want one saying %q", big, want)
	}
}

// A pass with nothing changed writes nothing; a change of the app, or of
// a node's state, is planned.
func TestReconcileUnchangedWritesNothing(t *testing.T) {
	e := newTaskEnv(t)
	e.txn(store.Nodes.PutAny("n1", api.Node{Name: "n1", Capacity: api.Capacity{CPU: 16000, Memory: 64 << 30}, Heartbeat: time.Now().UTC()}))
	c := &Controller{Store: e.st, Log: e.log, NodeTTL: time.Hour}
	e.deploy("web", 4)
	if err := c.Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	rev := e.revision()
	if err := c.Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	if now := e.revision(); now != rev {
		t.Errorf("a pass with nothing changed wrote: revision %d -> %d", rev, now)
	}
	// A change of the app is planned.
	e.deploy("web", 6)
	if err := c.Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.instances()); n != 6 {
		t.Errorf("%d instances after scaling to 6", n)
	}
	// n1 goes down, n2 comes: the app's instances are lost and replaced.
	e.txn(store.Nodes.PutAny("n1", api.Node{Name: "n1", Capacity: api.Capacity{CPU: 16000, Memory: 64 << 30}, Heartbeat: time.Now().Add(-2 * time.Hour).UTC()}),
		store.Nodes.PutAny("n2", api.Node{Name: "n2", Capacity: api.Capacity{CPU: 16000, Memory: 64 << 30}, Heartbeat: time.Now().UTC()}))
	if err := c.Reconcile(e.ctx); err != nil {
		t.Fatal(err)
	}
	on := map[string]int{}
	for _, inst := range e.instances() {
		on[inst.Node+" "+inst.Desired]++
	}
	if on["n1 stop"] != 6 || on["n2 run"] != 6 {
		t.Errorf("after n1 went down: %v, want its 6 retired and 6 new on n2", on)
	}
}

// A write that conflicts is dropped and its app planned again; the other
// writes of its transaction are made.
func TestWritesDropOnlyTheStale(t *testing.T) {
	e := newTaskEnv(t)
	c := &Controller{Store: e.st, Log: e.log, planned: map[string]planInput{}}
	var read []api.Instance
	for i := range 30 {
		inst := api.Instance{Name: fmt.Sprintf("a%d-1", i), App: fmt.Sprintf("a%d", i), Desired: api.DesiredRun}
		inst.Version = e.txn(store.Instances.Create(inst.Name, inst))
		read = append(read, inst)
		c.planned[inst.App] = planInput{app: 1}
	}
	// Changed by someone else after the controller read it; made meanwhile.
	e.txn(store.Instances.PutAny("a7-1", api.Instance{Name: "a7-1", App: "a7", Desired: api.DesiredRun, Reason: "theirs"}))
	e.txn(store.Instances.Create("x-1", api.Instance{Name: "x-1", App: "x", Reason: "theirs"}))
	c.planned["x"] = planInput{app: 1}
	var writes []write
	for _, inst := range read {
		inst.Node = "n1"
		writes = append(writes, putInstance(inst))
	}
	writes = append(writes, createInstance(api.Instance{Name: "x-1", App: "x", Node: "n1"}))
	writes = append(writes, createInstance(api.Instance{Name: "a3-1", App: "a3", Node: "n2"})) // twice in one pass
	writes = append(writes, createInstance(api.Instance{Name: "new-1", App: "new", Node: "n1"}))
	if err := c.writeInBatches(e.ctx, writes); err != nil {
		t.Fatal(err)
	}
	for _, inst := range e.instances() {
		switch {
		case inst.Name == "a7-1" || inst.Name == "x-1":
			if inst.Node != "" || inst.Reason != "theirs" {
				t.Errorf("%s overwritten: %+v", inst.Name, inst)
			}
		case inst.Node != "n1":
			t.Errorf("%s not written", inst.Name)
		}
	}
	for _, app := range []string{"a7", "x", "a3"} {
		if _, ok := c.planned[app]; ok {
			t.Errorf("app %s of a dropped write is not planned again", app)
		}
	}
	if _, ok := c.planned["a5"]; !ok {
		t.Errorf("app a5, written, is planned again")
	}
}

// The instances of apps with nothing pending are summed per node for the
// scheduler: it decides as with each one given.
func TestHoldingDecidesAsEachInstance(t *testing.T) {
	var nodes []api.Node
	for i := range 6 {
		nodes = append(nodes, api.Node{Name: fmt.Sprintf("n%d", i), State: api.NodeReady,
			Capacity: api.Capacity{CPU: 1000, Memory: 1 << 30}, Labels: map[string]string{"zone": fmt.Sprint(i % 2)}})
	}
	mk := func(app string, i int, node string, cpu api.MilliCPU) api.Instance {
		return api.Instance{Name: fmt.Sprintf("%s-%d", app, i), App: app, Node: node, Desired: api.DesiredRun,
			Spec: api.AppSpec{Resources: api.Resources{CPU: cpu, Memory: 64 << 20}, Placement: &api.Placement{Spread: "zone"}}}
	}
	var all []*api.Instance
	for i := range 40 {
		other := mk("other", i, fmt.Sprintf("n%d", i*7%5), 50) // n5 stays empty of it
		web := mk("web", i, fmt.Sprintf("n%d", i%3), 20)
		all = append(all, &other, &web)
	}
	down := map[string]bool{"n4": true}
	var pending []api.Instance
	for i := range 30 {
		pending = append(pending, mk("web", 100+i, "", 100)) // more than the room left: some fit nowhere
	}
	var each []api.Instance
	for _, inst := range all {
		if !down[inst.Node] {
			each = append(each, *inst)
		}
	}
	nodes[4].State = api.NodeDown
	states := map[string]string{}
	for _, n := range nodes {
		states[n.Name] = n.State
	}
	sc := newScan(nil, nodes, states)
	for _, inst := range all {
		sc.add(inst)
	}
	for _, inst := range all { // the pending app's, as a pass lists them
		if inst.App == "web" {
			sc.apps["web"].insts = append(sc.apps["web"].insts, inst)
		}
	}
	want := scheduler.Schedule(pending, nodes, each)
	held := sc.holding(pending)
	got := scheduler.Schedule(pending, nodes, held)
	unplaced := 0
	for _, d := range want {
		if d.Node == "" {
			unplaced++
		}
	}
	if unplaced == 0 || unplaced == len(want) {
		t.Fatalf("%d of %d unplaced: the case does not test the room", unplaced, len(want))
	}
	if !slices.Equal(got, want) {
		t.Errorf("with holding:\n%v\nwith each instance:\n%v", got, want)
	}
	if n := len(held); n >= len(each) {
		t.Errorf("holding gave %d entries for %d instances: nothing summed", n, len(each))
	}
}

// An instance that gets healthy plans its app again only when PlanApp
// reads health: during a rolling update, not once the app is steady.
func TestScanCountsHealthOnlyWhenItMatters(t *testing.T) {
	nodes := []api.Node{{Name: "n1", State: api.NodeReady}}
	states := map[string]string{"n1": api.NodeReady}
	plans := func(app api.App, insts []api.Instance, planned map[string]planInput) (bool, planInput) {
		s := newScan([]api.App{app}, nodes, states)
		for i := range insts {
			s.add(&insts[i])
		}
		s.want(planned)
		a := s.apps[app.Spec.Name]
		return a.planning, a.in
	}
	steady := app(2, 1)
	steady.Version = 7
	insts := []api.Instance{inst(1, 1, "new"), inst(2, 1, "new")}
	planned := map[string]planInput{}
	again, in := plans(steady, insts, planned)
	if !again {
		t.Fatal("an app never planned is not planned")
	}
	planned["web"] = in
	insts[0] = inst(1, 1, "ok") // reported healthy
	if again, _ := plans(steady, insts, planned); again {
		t.Error("a steady app is planned again for an instance's health")
	}
	insts[1].Node = "" // moved: that counts
	if again, _ := plans(steady, insts, planned); !again {
		t.Error("an instance's node changed and its app is not planned again")
	}

	rolling := app(2, 2) // instance 1 is of the old template
	rolling.Version = 8
	insts = []api.Instance{inst(1, 1, "ok"), inst(3, 2, "new")}
	_, in = plans(rolling, insts, planned)
	planned["web"] = in
	insts[1] = inst(3, 2, "ok") // the new one is healthy: the old one may go
	if again, _ := plans(rolling, insts, planned); !again {
		t.Error("during a rolling update, an instance got healthy and its app is not planned again")
	}
}
