package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"berth/internal/client"
)

// queueLimit is how long a build may stay queued: berth starts one within
// a second when a node has room for it; one that does not start in this
// long is stuck, and the bench says why rather than wait for the timeout.
const queueLimit = 2 * time.Minute

// queueWatch follows a command's output for its build's "queued" line
// and the node's first line ("berth: building"), and stops the command
// (cancel) when the build stays queued for queueLimit.
type queueWatch struct {
	b      *bench
	cancel context.CancelFunc

	mu       sync.Mutex
	id       string
	queuedAt time.Time
	building bool
	stuck    string // why the command was stopped
}

func (w *queueWatch) line(l stampedLine) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if m := queuedLine.FindStringSubmatch(l.text); m != nil && w.id == "" {
		w.id, w.queuedAt = m[1], time.Now()
	}
	if strings.Contains(l.text, "berth: building ") {
		w.building = true
	}
}

// run checks every second until ctx ends.
func (w *queueWatch) run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		w.mu.Lock()
		id, late := w.id, w.id != "" && !w.building && time.Since(w.queuedAt) > queueLimit
		w.mu.Unlock()
		if !late {
			continue
		}
		why := w.b.stuckBuild(ctx, id)
		w.mu.Lock()
		w.stuck = why
		w.mu.Unlock()
		w.cancel()
		return
	}
}

// err is the error of a command the watch stopped (nil: it did not).
func (w *queueWatch) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stuck == "" {
		return nil
	}
	return fmt.Errorf("stopped by the bench: %s", w.stuck)
}

// stuckBuild says what the server says of a build that does not start:
// its state and what it asks, and what the nodes have allocated.
func (b *bench) stuckBuild(ctx context.Context, id string) string {
	cl := b.berth.Client()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	why := fmt.Sprintf("build %s not started after %s in the queue", id, queueLimit)
	t, err := cl.GetTask(ctx, id)
	if err != nil {
		return why + fmt.Sprintf(" (the task: %v)", err)
	}
	why += fmt.Sprintf(": task state %s, asking cpu %s, memory %s", t.State, t.Spec.Resources.CPU, t.Spec.Resources.Memory)
	nodes, err := cl.ListNodes(ctx)
	if err != nil {
		return why + fmt.Sprintf(" (nodes: %v)", err)
	}
	for _, n := range nodes.Items {
		alloc := "nothing"
		if n.Allocated != nil {
			alloc = fmt.Sprintf("cpu %s, memory %s", n.Allocated.CPU, n.Allocated.Memory)
		}
		why += fmt.Sprintf("; node %s (%s): capacity cpu %s, memory %s; allocated %s to %d instances and %d tasks",
			n.Name, n.State, n.Capacity.CPU, n.Capacity.Memory, alloc, n.Instances, n.Tasks)
	}
	if insts, err := cl.ListInstances(ctx, client.InstanceFilter{}); err == nil {
		var parts []string
		for _, in := range insts.Items {
			parts = append(parts, fmt.Sprintf("%s %s/%s cpu %s", in.Name, in.Desired, in.Status.State, in.Spec.Resources.CPU))
		}
		why += "; instances: " + strings.Join(parts, ", ")
	}
	return why
}
