// Package controller holds the server's reconcilers: level-triggered loops
// that read the store, compare it with what is wanted and write the
// difference. Any crash and restart converges to the same end.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
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
		if err := c.Reconcile(ctx); err != nil && ctx.Err() == nil {
			c.Log.Warn("reconcile", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-tick.C:
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
		trigger() // something may have changed while not watching
		events, errc := kind.Watch(ctx, s, rev)
		for range events {
			trigger()
		}
		select {
		case <-errc:
		default:
		}
	}
}

// Reconcile runs one pass over everything.
func (c *Controller) Reconcile(ctx context.Context) error {
	now := time.Now().UTC()
	apps, _, err := store.Apps.List(ctx, c.Store)
	if err != nil {
		return err
	}
	instances, _, err := store.Instances.List(ctx, c.Store)
	if err != nil {
		return err
	}
	byApp := map[string][]api.Instance{}
	for _, inst := range instances {
		byApp[inst.App] = append(byApp[inst.App], inst)
	}
	nodes, err := c.nodeStates(ctx, now)
	if err != nil {
		return err
	}
	var errs []error
	if err := c.idleApps(ctx, apps, byApp, now); err != nil {
		errs = append(errs, err)
	}
	for _, app := range apps {
		if err := c.applyPlan(ctx, app, byApp[app.Spec.Name], nodes, now); err != nil {
			errs = append(errs, fmt.Errorf("app %s: %w", app.Spec.Name, err))
		}
		delete(byApp, app.Spec.Name)
	}
	// Instances whose app record is gone (e.g. a crash mid-removal) are retired.
	for name, insts := range byApp {
		if err := c.applyPlan(ctx, api.App{Spec: api.AppSpec{Name: name}, Deleting: true}, insts, nodes, now); err != nil {
			errs = append(errs, fmt.Errorf("orphaned instances of %s: %w", name, err))
		}
	}
	if err := c.schedule(ctx, now); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

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

func (c *Controller) applyPlan(ctx context.Context, app api.App, insts []api.Instance, nodes map[string]string, now time.Time) error {
	p := PlanApp(app, insts, nodes, now)
	var ops []store.Op
	for _, inst := range p.Create {
		ops = append(ops, store.Instances.Create(inst.Name, inst))
	}
	for _, inst := range insts {
		if desired, ok := idleChange(p, inst.Name); ok {
			inst.Desired = desired
			ops = append(ops, store.Instances.Put(inst.Name, inst, inst.Version))
			continue
		}
		reason, ok := p.Retire[inst.Name]
		if !ok {
			continue
		}
		inst.Desired, inst.StopReason = api.DesiredStop, reason
		if inst.Node == "" {
			// Never placed: nothing runs, the record can go now.
			ops = append(ops, store.Instances.Delete(inst.Name, inst.Version))
		} else {
			ops = append(ops, store.Instances.Put(inst.Name, inst, inst.Version))
		}
		kind := "retired"
		if _, lost := p.Lost[inst.Name]; lost {
			kind = "lost"
			reason += ": replaced"
		}
		ev, err := c.Store.AppendEvent(ctx, api.Event{Kind: kind, App: inst.App, Instance: inst.Name, Node: inst.Node, Message: reason})
		if err != nil {
			return err
		}
		ops = append(ops, ev)
	}
	if p.DeleteApp && app.Version != 0 {
		ops = append(ops, store.Apps.Delete(app.Spec.Name, app.Version), store.Access.DeleteAny(app.Spec.Name))
		for _, h := range app.Spec.Routes {
			ops = append(ops, store.Routes.DeleteAny(h))
		}
		ev, err := c.Store.AppendEvent(ctx, api.Event{Kind: "removed", App: app.Spec.Name, Message: "app removed"})
		if err != nil {
			return err
		}
		ops = append(ops, ev)
	}
	if len(ops) == 0 {
		return nil
	}
	if len(p.Create) > 0 || len(p.Retire) > 0 || len(p.Idle) > 0 || len(p.Resume) > 0 {
		c.Log.Info("converge app", "app", app.Spec.Name, "create", len(p.Create), "retire", len(p.Retire), "idle", len(p.Idle), "resume", len(p.Resume))
	}
	return c.writeInBatches(ctx, ops)
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

// writeInBatches writes ops in transactions of bounded size. A batch that
// conflicts means someone changed the world meanwhile: it is dropped, and
// the next pass plans again from what is there.
func (c *Controller) writeInBatches(ctx context.Context, ops []store.Op) error {
	const batch = 100 // etcd's default limit is 128 operations per transaction
	for len(ops) > 0 {
		n := min(len(ops), batch)
		if _, err := c.Store.Txn(ctx, ops[:n]...); err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrExists) {
			return err
		}
		ops = ops[n:]
	}
	return nil
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
		since := latest(last[app.Spec.Name], app.Updated, app.WokenAt)
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
		if inst.Desired != api.DesiredRun || inst.Revision != app.TemplateRevision {
			return false
		}
		switch inst.Status.State {
		case "", api.StatePending, api.StateStarting:
			return false
		}
		n++
	}
	return n == app.Spec.ReplicaCount()
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

// schedule places every instance that wants to run and has no node.
func (c *Controller) schedule(ctx context.Context, now time.Time) error {
	instances, _, err := store.Instances.List(ctx, c.Store)
	if err != nil {
		return err
	}
	var pending, placed []api.Instance
	byName := map[string]api.Instance{}
	nodes, _, err := store.Nodes.List(ctx, c.Store)
	if err != nil {
		return err
	}
	down := map[string]bool{}
	for i := range nodes {
		nodes[i].State = nodes[i].StateAt(now, c.NodeTTL)
		down[nodes[i].Name] = nodes[i].State == api.NodeDown
	}
	for _, inst := range instances {
		switch {
		case down[inst.Node]:
			// Lost with its node: it counts neither against the node's
			// room nor in its app's spread, which its replacement restores.
		case inst.Node != "":
			placed = append(placed, inst)
		case inst.Desired == api.DesiredRun:
			pending = append(pending, inst)
			byName[inst.Name] = inst
		}
	}
	if len(pending) == 0 {
		return nil
	}
	running, release, err := c.runningTasks(ctx)
	if err != nil {
		return err
	}
	defer release()
	placed = append(placed, running...)
	sort.Slice(pending, func(a, b int) bool {
		if !pending[a].Created.Equal(pending[b].Created) {
			return pending[a].Created.Before(pending[b].Created)
		}
		return pending[a].Name < pending[b].Name
	})
	var ops []store.Op
	for _, d := range scheduler.Schedule(pending, nodes, placed) {
		inst := byName[d.Instance]
		var ev api.Event
		if d.Node != "" {
			inst.Node, inst.Reason = d.Node, ""
			ev = api.Event{Kind: "placed", App: inst.App, Instance: inst.Name, Node: d.Node, Message: fmt.Sprintf("cpu %s, memory %s", inst.Spec.Resources.CPU, inst.Spec.Resources.Memory)}
		} else {
			if inst.Reason == d.Reason {
				continue // already said
			}
			inst.Reason = d.Reason
			ev = api.Event{Kind: "unschedulable", App: inst.App, Instance: inst.Name, Message: d.Reason}
		}
		evOp, err := c.Store.AppendEvent(ctx, ev)
		if err != nil {
			return err
		}
		ops = append(ops, store.Instances.Put(inst.Name, inst, inst.Version), evOp)
	}
	return c.writeInBatches(ctx, ops)
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
