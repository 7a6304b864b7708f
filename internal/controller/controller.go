// Package controller holds the server's reconcilers: level-triggered loops
// that read the store, compare it with what is wanted and write the
// difference. Any crash and restart converges to the same end.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"time"

	"berth/api"
	"berth/internal/scheduler"
	"berth/internal/store"
)

// Controller converges instances to apps and places them on nodes.
type Controller struct {
	Store   *store.Store
	Log     *slog.Logger
	NodeTTL time.Duration
	// Resync is how often a pass runs with no change seen.
	Resync time.Duration
	// Tasks is the task controller of this process, if one runs: its
	// running tasks hold node resources, and placing holds its lock so
	// that apps and tasks never overbook a node together. Without it,
	// running tasks are read from the store.
	Tasks *Tasks

	started time.Time // of Run: nodes get one NodeTTL to be heard from

	// planned is, per app, what its plan was last made from; an app whose
	// record and instances are as they were, with the nodes in the same
	// states, is not planned again (PlanApp would say the same).
	planned   map[string]planInput
	lastNodes map[string]string   // the node states planned with
	turn      int                 // the apps planned anyway go round (see planAnyway)
	more      bool                // the last pass left new instances for the next
	wrote     bool                // the last pass wrote something
	wakeAt    time.Time           // the earliest end of a replacement backoff left waiting, or recheck; zero: none
	rollouts  map[string]*rollout // per app, its current revision's rollout (rollout.go)

	recheck map[string]time.Time // per app, when to plan it again though nothing changed (Plan.RecheckAt)
}

// Run reconciles on every change of apps, instances or nodes until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	if c.NodeTTL == 0 {
		c.NodeTTL = 10 * time.Second
	}
	if c.Resync == 0 {
		c.Resync = 2 * time.Second
	}
	c.started = time.Now()
	kick := make(chan struct{}, 1)
	trigger := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	go watchKind(ctx, c.Store, store.Apps, trigger)
	go watchKind(ctx, c.Store, store.Instances, trigger)
	go watchKind(ctx, c.Store, store.Nodes, trigger)

	tick := time.NewTicker(c.Resync)
	defer tick.Stop()
	for {
		began := time.Now()
		if err := c.Reconcile(ctx); err != nil && ctx.Err() == nil {
			c.Log.Warn("reconcile", "err", err)
		}
		if c.more {
			continue // a large deploy: on with it
		}
		ended := time.Now()
		var wake <-chan time.Time // an instance's replacement backoff ends: place it
		if !c.wakeAt.IsZero() {
			wake = time.After(time.Until(c.wakeAt))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-tick.C:
		case <-wake:
		}
		// Changes come all the time in a large cluster (a heartbeat, an
		// instance reported healthy): the next pass waits as long as this
		// one took (four times as long after one that wrote nothing), so
		// that passes take at most half the time and each gathers more
		// changes.
		wait := ended.Sub(began)
		if !c.wrote {
			wait *= 4
		}
		if rest := wait - time.Since(ended); rest > 0 {
			sleepCtx(ctx, rest)
		}
	}
}

// watchKind calls trigger on every change of a kind, re-watching after errors.
func watchKind[T any](ctx context.Context, s *store.Store, kind store.Kind[T], trigger func()) {
	for ctx.Err() == nil {
		_, rev, err := kind.List(ctx, s)
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		trigger()                                  // something may have changed while not watching
		events, errc := kind.WatchRaw(ctx, s, rev) // only that it changed: nothing to decode
		for range events {
			trigger()
		}
		select {
		case <-errc:
		default:
		}
	}
}

// Reconcile runs one pass: every app whose record, instances or nodes
// changed since it was last planned is planned again, and every instance
// that wants to run and has no node is placed, new ones included (they
// are written with their node). The pass reads the instances from the
// task controller's copy when one runs in this process, else from the
// store (see scanInstances).
func (c *Controller) Reconcile(ctx context.Context) error {
	now := time.Now().UTC()
	c.more, c.wrote = false, false
	apps, _, err := store.Apps.List(ctx, c.Store)
	if err != nil {
		return err
	}
	nodes, _, err := store.Nodes.List(ctx, c.Store)
	if err != nil {
		return err
	}
	for i := range nodes {
		nodes[i].State = nodes[i].StateAt(now, c.NodeTTL)
	}
	states, err := c.nodeStates(ctx, now)
	if err != nil {
		return err
	}
	// Everything is planned again when a node's state changes; and a few
	// apps each pass whatever happens, in turn (see planAnyway).
	if c.planned == nil || !maps.Equal(states, c.lastNodes) {
		c.planned, c.lastNodes = map[string]planInput{}, states
	}
	for i := 0; len(apps) > 0 && i <= len(apps)/planAnyway; i++ {
		c.turn++
		delete(c.planned, apps[c.turn%len(apps)].Spec.Name)
	}
	// An app whose plan waits for a time (Plan.RecheckAt) is planned again then.
	for name, at := range c.recheck {
		if !at.After(now) {
			delete(c.planned, name)
			delete(c.recheck, name)
		}
	}
	s := newScan(apps, nodes, states)
	if err := c.scanInstances(ctx, s); err != nil {
		return err
	}
	var errs []error
	if err := c.trackRollouts(ctx, apps, s, now); err != nil {
		errs = append(errs, err)
	}
	idle := map[string][]api.Instance{}
	for i := range apps {
		if apps[i].Spec.Idle != nil {
			idle[apps[i].Spec.Name] = values(s.apps[apps[i].Spec.Name].insts)
		}
	}
	if err := c.idleApps(ctx, apps, idle, now); err != nil {
		errs = append(errs, err)
	}
	var writes []write
	var created []api.Instance
	plan := func(a *appScan, app api.App) {
		if len(created) >= maxCreates {
			c.more = true // enough new instances for one pass: the next one plans it
			return
		}
		ws, news, err := c.applyPlan(ctx, app, values(a.insts), states, now)
		if err != nil {
			errs = append(errs, fmt.Errorf("app %s: %w", a.name, err))
			delete(c.planned, a.name)
			return
		}
		if a.app != nil {
			c.planned[a.name] = a.in
		}
		writes, created = append(writes, ws...), append(created, news...)
	}
	for i := range apps {
		// idleApps may have changed the record: it is planned with the change.
		if a := s.apps[apps[i].Spec.Name]; a.planning || apps[i].Version != a.in.app {
			plan(a, apps[i])
		}
	}
	// Instances whose app record is gone (e.g. a crash mid-removal) are retired.
	for name, a := range s.apps {
		if a.app == nil {
			plan(a, api.App{Spec: api.AppSpec{Name: name}, Deleting: true})
		}
	}
	if err := c.schedule(ctx, s, nodes, created, writes, now); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// planAnyway: each pass plans one app in this many (at least one) again,
// changed or not, so that anything the summary of an app's input misses
// waits a few passes at most, not forever.
const planAnyway = 100

// nodeStates is the state of every node for PlanApp. For one node TTL
// after this controller started, no node counts as down: the server, not
// the nodes, may have been away, and their heartbeats are on the way.
func (c *Controller) nodeStates(ctx context.Context, now time.Time) (map[string]string, error) {
	nodes, _, err := store.Nodes.List(ctx, c.Store)
	if err != nil {
		return nil, err
	}
	states := make(map[string]string, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		states[n.Name] = n.StateAt(now, c.NodeTTL)
		if states[n.Name] == api.NodeDown && now.Sub(c.started) <= c.NodeTTL {
			states[n.Name] = api.NodeReady
		}
	}
	return states, nil
}

// applyPlan plans an app and returns the writes that carry the plan out,
// but for its new instances, which are returned to be placed first.
func (c *Controller) applyPlan(ctx context.Context, app api.App, insts []api.Instance, nodes map[string]string, now time.Time) ([]write, []api.Instance, error) {
	p := PlanApp(app, insts, nodes, now)
	delete(c.recheck, app.Spec.Name) // the last plan's
	if !p.RecheckAt.IsZero() {
		if c.recheck == nil {
			c.recheck = map[string]time.Time{}
		}
		c.recheck[app.Spec.Name] = p.RecheckAt
	}
	var writes []write
	unkeep := map[string]bool{}
	for _, n := range p.Unkeep {
		unkeep[n] = true
	}
	for _, inst := range insts {
		if desired, ok := idleChange(p, inst.Name); ok {
			inst.Desired = desired
			writes = append(writes, putInstance(inst))
			continue
		}
		if unkeep[inst.Name] {
			// A rollback to its template: the kept container starts again,
			// and must prove its health anew.
			inst.Desired, inst.KeptUntil, inst.StopReason = api.DesiredRun, time.Time{}, ""
			inst.Status.Healthy = false
			w := putInstance(inst)
			ev, err := c.Store.AppendEvent(ctx, api.Event{Kind: "resumed", App: inst.App, Instance: inst.Name, Node: inst.Node,
				Message: fmt.Sprintf("revision %d is current again: its kept container starts again", inst.Revision)})
			if err != nil {
				return nil, nil, err
			}
			w.ops = append(w.ops, ev)
			writes = append(writes, w)
			continue
		}
		reason, ok := p.Retire[inst.Name]
		if !ok {
			continue
		}
		kind := "retired"
		inst.Desired, inst.StopReason, inst.KeptUntil = api.DesiredStop, reason, time.Time{}
		if until, ok := p.Kept[inst.Name]; ok {
			// Stopped, not removed: a rollback may start it again.
			reason += ": kept stopped for a fast rollback until " + until.UTC().Format(time.RFC3339)
			inst.Desired, inst.StopReason, inst.KeptUntil, kind = api.DesiredKeep, reason, until, "kept"
		}
		var w write
		if inst.Node == "" {
			// Never placed: nothing runs, the record can go now.
			w = deleteInstance(inst)
		} else {
			w = putInstance(inst)
		}
		if _, lost := p.Lost[inst.Name]; lost {
			kind = "lost"
			reason += ": replaced"
		}
		ev, err := c.Store.AppendEvent(ctx, api.Event{Kind: kind, App: inst.App, Instance: inst.Name, Node: inst.Node, Message: reason})
		if err != nil {
			return nil, nil, err
		}
		w.ops = append(w.ops, ev)
		writes = append(writes, w)
	}
	if p.DeleteApp && app.Version != 0 {
		ops := []store.Op{store.Apps.Delete(app.Spec.Name, app.Version), store.Access.DeleteAny(app.Spec.Name),
			store.Revisions.DeleteUnder(app.Spec.Name + "/")}
		for _, h := range app.Spec.Routes {
			ops = append(ops, store.Routes.DeleteAny(h))
		}
		ev, err := c.Store.AppendEvent(ctx, api.Event{Kind: "removed", App: app.Spec.Name, Message: "app removed"})
		if err != nil {
			return nil, nil, err
		}
		writes = append(writes, write{ops: append(ops, ev), app: app.Spec.Name})
	}
	if len(p.Create) > 0 || len(p.Retire) > 0 || len(p.Idle) > 0 || len(p.Resume) > 0 || len(p.Unkeep) > 0 {
		c.Log.Info("converge app", "app", app.Spec.Name, "create", len(p.Create), "retire", len(p.Retire)-len(p.Kept), "keep", len(p.Kept),
			"idle", len(p.Idle), "resume", len(p.Resume)+len(p.Unkeep))
	}
	return writes, p.Create, nil
}

// idleChange is the desired state an instance moves to when its app is
// scaled to zero or woken.
func idleChange(p Plan, name string) (string, bool) {
	for _, n := range p.Idle {
		if n == name {
			return api.DesiredIdle, true
		}
	}
	for _, n := range p.Resume {
		if n == name {
			return api.DesiredRun, true
		}
	}
	return "", false
}

// write is one change of a pass: ops that go together or not at all, the
// app whose plan it carries out, and the instance record it leaves (inst;
// nil when it removes instance name, or touches none).
type write struct {
	ops     []store.Op
	app     string
	name    string
	inst    *api.Instance
	version int64 // of instance name the ops expect; 0: that it does not exist
}

func putInstance(inst api.Instance) write {
	return write{ops: []store.Op{store.Instances.Put(inst.Name, inst, inst.Version)}, app: inst.App, name: inst.Name, inst: &inst, version: inst.Version}
}

func createInstance(inst api.Instance) write {
	return write{ops: []store.Op{store.Instances.Create(inst.Name, inst)}, app: inst.App, name: inst.Name, inst: &inst}
}

func deleteInstance(inst api.Instance) write {
	return write{ops: []store.Op{store.Instances.Delete(inst.Name, inst.Version)}, app: inst.App, name: inst.Name, version: inst.Version}
}

// writeInBatches writes in transactions of up to maxTxnOps operations and
// notes what it wrote in the task controller's copy of the instances (the
// caller holds its lock). A write that conflicts means someone changed
// the world meanwhile: it is dropped, its app planned again on the next
// pass, from what is there then.
func (c *Controller) writeInBatches(ctx context.Context, writes []write) error {
	var batch []write
	n := 0
	seen := map[string]bool{}
	for _, w := range writes {
		if w.name != "" && seen[w.name] {
			// Two changes of one record (etcd refuses them in one
			// transaction): the first goes, the app is planned again.
			c.replan([]write{w})
			continue
		}
		seen[w.name] = true
		if n > 0 && n+len(w.ops) > maxTxnOps {
			if err := c.commit(ctx, batch); err != nil {
				return err
			}
			batch, n = nil, 0
		}
		batch, n = append(batch, w), n+len(w.ops)
	}
	return c.commit(ctx, batch)
}

// commit writes a batch in one transaction. When it conflicts, the
// instance records it writes are read again and the writes of those that
// changed are dropped; a batch that still conflicts (or is too large for
// the store) is split in halves, each tried again. One stale write does
// not hold back the others, at the cost of a few transactions.
func (c *Controller) commit(ctx context.Context, batch []write) error {
	if len(batch) == 0 {
		return nil
	}
	var ops []store.Op
	for _, w := range batch {
		ops = append(ops, w.ops...)
	}
	rev, err := c.Store.Txn(ctx, ops...)
	switch {
	case err == nil:
		c.noteWrites(batch, rev)
		return nil
	case !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrExists) && !tooLarge(err):
		c.replan(batch)
		return err
	case len(batch) == 1:
		c.replan(batch)
		if tooLarge(err) {
			return err
		}
		return nil
	}
	if !tooLarge(err) && len(batch) > 8 {
		fresh, stale, err := c.dropStale(ctx, batch)
		if err != nil {
			c.replan(batch)
			return err
		}
		if len(stale) > 0 {
			c.replan(stale)
			return c.commit(ctx, fresh)
		}
	}
	half := len(batch) / 2
	if err := c.commit(ctx, batch[:half]); err != nil {
		c.replan(batch[half:])
		return err
	}
	return c.commit(ctx, batch[half:])
}

// dropStale reads the instance records a batch writes and splits it into
// the writes that still hold and those whose record changed since it was
// read (or, for a new one, exists already).
func (c *Controller) dropStale(ctx context.Context, batch []write) (fresh, stale []write, err error) {
	var names []string
	for _, w := range batch {
		if w.name != "" {
			names = append(names, w.name)
		}
	}
	now, err := store.Instances.GetMany(ctx, c.Store, names)
	if err != nil {
		return nil, nil, err
	}
	for _, w := range batch {
		cur, exists := now[w.name]
		if w.name != "" && (exists != (w.version != 0) || exists && cur.Version != w.version) {
			stale = append(stale, w)
		} else {
			fresh = append(fresh, w)
		}
	}
	return fresh, stale, nil
}

// tooLarge: the store refused a transaction for its size or number of
// operations (a remote etcd may allow fewer than the embedded one). The
// errors come from etcd's server as text.
func tooLarge(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "request is too large") || strings.Contains(msg, "too many operations in txn request")
}

// replan makes the apps of writes that did not happen be planned again.
func (c *Controller) replan(batch []write) {
	for _, w := range batch {
		delete(c.planned, w.app)
	}
}

// noteWrites notes written instance records in the task controller's
// copy, so that the next pass sees them even before the watch brings them.
func (c *Controller) noteWrites(batch []write, rev int64) {
	c.wrote = true
	if c.Tasks == nil || c.Tasks.instances == nil || !c.Tasks.instances.loaded {
		return
	}
	m := c.Tasks.instances
	for _, w := range batch {
		switch {
		case w.name == "":
		case w.inst != nil:
			m.wrote(w.name, *w.inst, rev)
		case rev > m.known(w.name):
			m.set(w.name, nil)
			m.gone[w.name] = rev
		}
	}
	m.forget()
}

// idleApps scales to zero the apps with an idle policy whose last request
// (or deploy, or wake) is older than their stop_after. The instances follow
// on the next pass. An app whose rollout has not settled is left alone: a
// slow first start must not count as idle time.
func (c *Controller) idleApps(ctx context.Context, apps []api.App, byApp map[string][]api.Instance, now time.Time) error {
	access, _, err := store.Access.List(ctx, c.Store)
	if err != nil {
		return err
	}
	last := map[string]time.Time{}
	for _, a := range access {
		last[a.App] = a.Last
	}
	for i, app := range apps {
		if app.Spec.Idle == nil || app.Idled || app.Deleting || !settled(app, byApp[app.Spec.Name]) {
			continue
		}
		since := latest(last[app.Spec.Name], app.Updated, app.WokenAt, lastHealthyStart(byApp[app.Spec.Name]))
		if now.Sub(since) < app.Spec.Idle.StopAfter.D() {
			continue
		}
		app.Idled, app.IdledAt = true, now
		ev, err := c.Store.AppendEvent(ctx, api.Event{Kind: "idled", App: app.Spec.Name,
			Message: fmt.Sprintf("no request for %s: scaled to zero", now.Sub(since).Round(time.Second))})
		if err != nil {
			return err
		}
		rev, err := c.Store.Txn(ctx, store.Apps.Put(app.Spec.Name, app, app.Version), ev)
		if errors.Is(err, store.ErrConflict) {
			continue // changed meanwhile: judged again on the next pass
		}
		if err != nil {
			return err
		}
		app.Version = rev
		apps[i] = app
	}
	return nil
}

// settled: the app's rollout is over: it has its replicas at the current
// template, each past its start (healthy or not: one that cannot get
// healthy may be idled too), and nothing else is left.
func settled(app api.App, insts []api.Instance) bool {
	n := 0
	for _, inst := range insts {
		if inst.Desired == api.DesiredKeep {
			continue // stopped for a fast rollback: not part of the app's rollout
		}
		if inst.Desired != api.DesiredRun || inst.Revision != app.TemplateRevision {
			return false
		}
		switch inst.Status.State {
		case "", api.StatePending, api.StateStarting, api.StateIdle: // idle: woken, not started yet
			return false
		}
		n++
	}
	return n == app.Spec.ReplicaCount()
}

// lastHealthyStart is when the newest of the healthy instances started: a
// wake that took a while (a leader elected meanwhile, a slow engine) gets
// its full stop_after once the app is back, not from the wake request.
func lastHealthyStart(insts []api.Instance) time.Time {
	var l time.Time
	for _, inst := range insts {
		if inst.Ready() && inst.Status.StartedAt.After(l) {
			l = inst.Status.StartedAt
		}
	}
	return l
}

func latest(ts ...time.Time) time.Time {
	var l time.Time
	for _, t := range ts {
		if t.After(l) {
			l = t
		}
	}
	return l
}

// maxCreates is about how many new instances a pass places and creates,
// so that a pass over a large deploy commits and ends soon: once a pass
// has planned this many, it plans no more apps, and the apps of those
// left out are planned again on the next pass.
const maxCreates = 25000

// eventsPerApp is how many instances of one app a pass names in events
// one by one ("placed", "unschedulable"); beyond, one event sums them up,
// so that a deploy of a thousand replicas is not a thousand events.
const eventsPerApp = 50

// schedule places every instance that wants to run and has no node (the
// waiting ones of s, and the new ones of this pass, created) on nodes,
// and writes them together with the pass's other writes.
func (c *Controller) schedule(ctx context.Context, s *scan, nodes []api.Node, created []api.Instance, writes []write, now time.Time) error {
	// What is not written is planned again on the next pass.
	fail := func(err error) error {
		c.replan(writes)
		for _, inst := range created {
			delete(c.planned, inst.App)
		}
		return err
	}
	touched := map[string]bool{} // by the plans: retired, idled
	for _, w := range writes {
		touched[w.name] = true
	}
	// An instance in its replacement backoff waits unplaced; a new one is
	// written so, with its reason.
	c.wakeAt = time.Time{}
	for _, at := range c.recheck { // a plan that waits for time to pass, too
		if c.wakeAt.IsZero() || at.Before(c.wakeAt) {
			c.wakeAt = at
		}
	}
	backoff := func(inst *api.Instance) bool {
		if !inst.NotBefore.After(now) {
			return false
		}
		if c.wakeAt.IsZero() || inst.NotBefore.Before(c.wakeAt) {
			c.wakeAt = inst.NotBefore
		}
		return true
	}
	var waiting []*api.Instance
	for _, inst := range s.waiting {
		if !touched[inst.Name] && !backoff(inst) {
			waiting = append(waiting, inst)
		}
	}
	ready := created[:0:0]
	for i := range created {
		if backoff(&created[i]) {
			writes = append(writes, createInstance(created[i]))
		} else {
			ready = append(ready, created[i])
		}
	}
	created = ready
	sort.Slice(waiting, func(a, b int) bool {
		if !waiting[a].Created.Equal(waiting[b].Created) {
			return waiting[a].Created.Before(waiting[b].Created)
		}
		return waiting[a].Name < waiting[b].Name
	})
	if len(created) > maxCreates {
		c.more = true
		for _, inst := range created[maxCreates:] {
			delete(c.planned, inst.App)
		}
		created = created[:maxCreates]
	}
	pending := append(values(waiting), created...) // the new ones are the newest
	isNew := len(waiting)
	running, release, err := c.runningTasks(ctx)
	if err != nil {
		return fail(err)
	}
	defer release()
	if len(pending) > 0 {
		placed := append(s.holding(pending), running...)
		sw, err := c.placements(ctx, pending, isNew, scheduler.Schedule(pending, nodes, placed))
		if err != nil {
			return fail(err)
		}
		writes = append(writes, sw...)
	}
	return c.writeInBatches(ctx, writes)
}

// placements turns the scheduler's decisions into writes: each instance
// with its node (or why it has none) and the events that say so. Pending
// instances from isNew on are new: they are created with their node.
func (c *Controller) placements(ctx context.Context, pending []api.Instance, isNew int, decisions []scheduler.Decision) ([]write, error) {
	type tally struct {
		placed, unplaced []int // indexes into pending
		nodes            map[string]bool
	}
	byApp := map[string]*tally{}
	var order []string
	var writes []write
	for i, d := range decisions {
		inst := &pending[i]
		if d.Node == "" && inst.Reason == d.Reason && i < isNew {
			continue // already said
		}
		t := byApp[inst.App]
		if t == nil {
			t = &tally{nodes: map[string]bool{}}
			byApp[inst.App] = t
			order = append(order, inst.App)
		}
		inst.NotBefore = time.Time{} // its backoff, if it had one, is over
		if d.Node != "" {
			inst.Node, inst.Reason = d.Node, ""
			t.placed = append(t.placed, i)
			t.nodes[d.Node] = true
		} else {
			inst.Reason = d.Reason
			t.unplaced = append(t.unplaced, i)
		}
	}
	event := func(w *write, e api.Event) error {
		op, err := c.Store.AppendEvent(ctx, e)
		w.ops = append(w.ops, op)
		return err
	}
	for _, app := range order {
		t := byApp[app]
		for _, group := range [][]int{t.placed, t.unplaced} {
			for _, i := range group {
				inst := pending[i]
				w := putInstance(inst)
				if i >= isNew {
					w = createInstance(inst)
				}
				if len(group) <= eventsPerApp {
					e := api.Event{Kind: "placed", App: app, Instance: inst.Name, Node: inst.Node,
						Message: fmt.Sprintf("cpu %s, memory %s", inst.Spec.Resources.CPU, inst.Spec.Resources.Memory)}
					if inst.Node == "" {
						e = api.Event{Kind: "unschedulable", App: app, Instance: inst.Name, Message: inst.Reason}
					}
					if err := event(&w, e); err != nil {
						return nil, err
					}
				}
				writes = append(writes, w)
			}
		}
		// Many at once: one event each for the placed and the unplaced.
		if n := len(t.placed); n > eventsPerApp {
			res := pending[t.placed[0]].Spec.Resources
			w := write{app: app}
			if err := event(&w, api.Event{Kind: "placed", App: app, Message: fmt.Sprintf("%d instances on %d nodes (cpu %s, memory %s each)",
				n, len(t.nodes), res.CPU, res.Memory)}); err != nil {
				return nil, err
			}
			writes = append(writes, w)
		}
		if n := len(t.unplaced); n > eventsPerApp {
			w := write{app: app}
			if err := event(&w, api.Event{Kind: "unschedulable", App: app, Message: fmt.Sprintf("%d instances: %s",
				n, pending[t.unplaced[0]].Reason)}); err != nil {
				return nil, err
			}
			writes = append(writes, w)
		}
	}
	return writes, nil
}

// runningTasks returns the running tasks as instances that hold their
// resources. With a task controller in this process, its lock is held
// until release, so that it places no task meanwhile.
func (c *Controller) runningTasks(ctx context.Context) ([]api.Instance, func(), error) {
	release := func() {}
	if t := c.Tasks; t != nil {
		t.mu.Lock()
		release = t.mu.Unlock
		if t.tasks != nil && t.tasks.loaded {
			return t.runningInstances(), release, nil
		}
	}
	all, _, err := store.Tasks.List(ctx, c.Store)
	if err != nil {
		release()
		return nil, nil, err
	}
	var running []api.Instance
	for i := range all {
		if all[i].State == api.TaskRunning && all[i].Node != "" {
			running = append(running, taskInstance(&all[i]))
		}
	}
	return running, release, nil
}
