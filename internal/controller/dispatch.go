package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"berth/api"
	"berth/internal/scheduler"
	"berth/internal/store"
	"berth/internal/tasks"
)

// dispatch gives up the attempts of nodes that went away and starts ready
// tasks where they fit. It returns when the next retrying task is due.
func (t *Tasks) dispatch(ctx context.Context, now time.Time) (time.Time, error) {
	next := t.index.promote(now)
	nodes := make([]api.Node, 0, len(t.nodes.items))
	for _, n := range t.nodes.items {
		node := *n
		node.State = node.StateAt(now, t.NodeTTL)
		nodes = append(nodes, node)
	}
	errLost := t.loseAttempts(ctx, now)
	errStart := t.startReady(ctx, nodes, now)
	return next, errors.Join(errLost, errStart)
}

// loseAttempts ends, as lost to the platform, the attempts running on
// nodes that are down or gone, so that they are retried elsewhere without
// using up a retry. (An agent that restarts handles its own attempts.)
func (t *Tasks) loseAttempts(ctx context.Context, now time.Time) error {
	var lost []api.Task
	for _, r := range t.index.running {
		why := t.nodeAway(r.Node, now)
		if why == "" {
			continue
		}
		task := *r
		task.Attempts = slices.Clone(task.Attempts) // Lose changes the current one
		if tasks.Lose(&task, why, now) == nil {
			lost = append(lost, task)
		}
	}
	if len(lost) == 0 {
		return nil
	}
	written, err := t.writeTasks(ctx, lost)
	for _, w := range written {
		a := w.Attempts[len(w.Attempts)-1]
		t.Log.Info("task attempt lost", "task", w.ID, "attempt", a.N, "node", a.Node, "why", a.Error, "state", w.State)
	}
	return err
}

// nodeAway says why a running task's node cannot be running it any more,
// or "". Right after start, nodes get one NodeTTL to send a heartbeat:
// the server, not the node, may have been away.
func (t *Tasks) nodeAway(name string, now time.Time) string {
	n, ok := t.nodes.items[name]
	if !ok {
		return fmt.Sprintf("node %s is gone", name)
	}
	if now.Sub(latest(n.Heartbeat, t.started)) > t.NodeTTL {
		return fmt.Sprintf("node %s is down: no heartbeat for %s", name, now.Sub(n.Heartbeat).Round(time.Second))
	}
	return ""
}

// startReady assigns ready tasks, in dispatch order and within their
// queues' limits, to the nodes they fit on, and writes the assignments.
// A task that fits nowhere stays queued.
func (t *Tasks) startReady(ctx context.Context, nodes []api.Node, now time.Time) error {
	if len(t.index.queues) == 0 {
		return nil
	}
	// A first cut with the instances as last seen: whether anything can
	// start at all, and which tasks to consider.
	running := t.runningInstances() // once a pass: there may be thousands
	free := freeOnReadyNodes(nodes, placed(slices.Collect(maps.Values(t.instances.items)), running))
	if len(free) == 0 {
		return nil
	}
	limits := map[string]int{}
	for _, q := range t.queues.items {
		limits[q.Name] = q.Concurrency
	}
	candidates := t.candidates(now, free, limits)
	if len(candidates) == 0 {
		return nil
	}
	order := tasks.Order(candidates, t.index.runningByQueue, limits)

	// Place against the instances as the store has them now: the app
	// controller places under the same lock, so nothing moves meanwhile.
	insts, _, err := store.Instances.List(ctx, t.Store)
	if err != nil {
		return err
	}
	pending := make([]api.Instance, len(order))
	for i := range order {
		pending[i] = taskInstance(&order[i])
	}
	var assigned []api.Task
	for i, d := range scheduler.Schedule(pending, nodes, placed(ptrs(insts), running)) {
		if d.Node == "" {
			continue
		}
		task := order[i]
		task.Attempts = slices.Clip(task.Attempts) // Assign appends
		tasks.Assign(&task, t.Cluster, d.Node, now)
		assigned = append(assigned, task)
	}
	written, err := t.writeTasks(ctx, assigned)
	if len(written) > 0 {
		t.Log.Debug("tasks started", "count", len(written), "ready", len(candidates))
	}
	return err
}

// candidates picks, per queue, the ready tasks in dispatch order that may
// start now: no more than the queue's limit allows, each fitting on some
// node's free room, and no more than the free room of all nodes could
// hold, so that a pass costs what can start, not what waits.
func (t *Tasks) candidates(now time.Time, free []api.Capacity, limits map[string]int) []api.Task {
	var total api.Capacity
	for _, f := range free {
		total.CPU += f.CPU
		total.Memory += f.Memory
	}
	var out []api.Task
	for name, q := range t.index.queues {
		room := len(q.ready)
		if l := limits[name]; l > 0 {
			room = min(room, l-t.index.runningByQueue[name])
		}
		if room <= 0 || !fitsSomewhere(q.smallest(), free) {
			continue
		}
		var want api.Capacity
		for _, task := range q.ready {
			need := api.Capacity{CPU: task.Spec.Resources.CPU, Memory: task.Spec.Resources.Memory}
			if !tasks.Ready(task, now) || !fitsSomewhere(need, free) {
				continue
			}
			out = append(out, *task)
			want.CPU += need.CPU
			want.Memory += need.Memory
			if room--; room == 0 || want.CPU >= total.CPU || want.Memory >= total.Memory {
				break
			}
		}
	}
	return out
}

// placed is what holds resources on nodes: the instances that hold room
// and the running tasks.
func placed(insts []*api.Instance, running []api.Instance) []api.Instance {
	out := make([]api.Instance, 0, len(insts)+len(running))
	for _, inst := range insts {
		if inst.HoldsRoom() {
			out = append(out, *inst)
		}
	}
	return append(out, running...)
}

// runningInstances are the running tasks as the scheduler sees them.
func (t *Tasks) runningInstances() []api.Instance {
	out := make([]api.Instance, 0, len(t.index.running))
	for _, r := range t.index.running {
		if r.Node != "" {
			out = append(out, taskInstance(r))
		}
	}
	return out
}

// taskInstance is a task as the scheduler sees it: an instance that holds
// the task's resources on its node while it runs. Apps and tasks are
// placed against each other through it, so that together they never
// overbook a node.
func taskInstance(t *api.Task) api.Instance {
	node := ""
	if t.State == api.TaskRunning {
		node = t.Node
	}
	return api.Instance{
		Name: "task/" + t.ID, App: "task/" + t.Spec.Queue, Node: node, Desired: api.DesiredRun,
		Spec:    api.AppSpec{Resources: t.Spec.Resources, Placement: t.Spec.Build.Placement()}, // builds: maybe on builder nodes only
		Created: t.Created,
	}
}

// freeOnReadyNodes is the room left on each ready node.
func freeOnReadyNodes(nodes []api.Node, placed []api.Instance) []api.Capacity {
	alloc := scheduler.Allocated(placed)
	var free []api.Capacity
	for _, n := range nodes {
		if n.State != api.NodeReady {
			continue
		}
		a := alloc[n.Name]
		free = append(free, api.Capacity{CPU: n.Capacity.CPU - a.CPU, Memory: n.Capacity.Memory - a.Memory})
	}
	return free
}

func fitsSomewhere(need api.Capacity, free []api.Capacity) bool {
	for _, f := range free {
		if need.CPU <= f.CPU && need.Memory <= f.Memory {
			return true
		}
	}
	return false
}

func ptrs[T any](s []T) []*T {
	out := make([]*T, len(s))
	for i := range s {
		out[i] = &s[i]
	}
	return out
}
