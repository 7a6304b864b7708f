package agent

import (
	"context"
	"fmt"
	"time"

	"berth/api"
	"berth/internal/client"
	"berth/internal/runtime"
)

// Removing a container is the one thing the agent does that cannot be
// undone. So it removes the container of an instance it does not know only
// once a list of its node's instances, read after it looked, lacks the
// instance too (a watch that missed a change must cost a relist, never a
// container), and every removal is recorded as a "removed" event with its
// reason.

// retire stops and removes the containers of an instance that is not
// wanted here, then tells the server the retired instance is gone.
func (a *Agent) retire(ctx context.Context, name string, inst api.Instance, known bool, containers []runtime.Container) error {
	a.forget(name)
	ours := known && inst.Node == a.Node
	if len(containers) > 0 {
		grace := api.DefaultStopGrace
		if known && inst.Spec.StopGrace != nil {
			grace = inst.Spec.StopGrace.D()
		}
		if ours {
			st := inst.Status
			st.State, st.Healthy, st.HealthySince = api.StateStopping, false, time.Time{}
			if err := a.Client.ReportStatus(ctx, name, st); err != nil && !client.IsStatus(err, 404) {
				return err
			}
			if inst.StopReason != api.StopAppRemoved {
				if err := drain(ctx, inst); err != nil {
					return err
				}
			}
		}
		// A retired instance of ours gets its "removed" event from the
		// server when its record goes (below); any other removal is the
		// agent's own judgement, recorded first.
		if !(ours && inst.Desired == api.DesiredStop) {
			if err := a.recordRemoval(ctx, name, containers[0], removalReason(a.Node, name, inst, known)); err != nil {
				return err
			}
		}
		for _, c := range containers {
			if c.Running {
				if err := a.Runtime.Stop(ctx, c.ID, grace); err != nil {
					return err
				}
			}
			if err := a.Runtime.Remove(ctx, c.ID); err != nil {
				return err
			}
		}
		a.Log.Info("removed", "instance", name, "containers", len(containers))
	}
	if ours && inst.Desired == api.DesiredStop {
		if err := a.Client.DeleteInstance(ctx, name); err != nil && !client.IsStatus(err, 404) {
			return err
		}
	}
	return nil
}

// removalReason says why the container of an instance that is not (or no
// longer) ours is removed.
func removalReason(node, name string, inst api.Instance, known bool) string {
	switch {
	case !known:
		return fmt.Sprintf("container removed: instance %s no longer exists (removed, or lost while node %s was away)", name, node)
	case inst.Node == "":
		return fmt.Sprintf("container removed: instance %s is no longer placed on node %s", name, node)
	case inst.Node != node:
		return fmt.Sprintf("container removed: instance %s is placed on node %s now", name, inst.Node)
	}
	return fmt.Sprintf("container removed: instance %s is %s", name, inst.Desired)
}

// recordRemoval records a removal before it happens, so that none goes
// unrecorded; a removal that then fails is tried and recorded again.
func (a *Agent) recordRemoval(ctx context.Context, instance string, c runtime.Container, why string) error {
	ev := api.Event{Kind: "removed", App: c.Labels[runtime.LabelApp], Instance: instance, Message: why}
	rctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	if err := a.Client.RecordNodeEvents(rctx, a.Node, ev); err != nil {
		return fmt.Errorf("record removal of %s (kept until recorded): %w", c.Name, err)
	}
	return nil
}

// removeStray removes a container labelled as this node's that berth did
// not make (its name is not the one berth gives): it is never adopted.
func (a *Agent) removeStray(ctx context.Context, c runtime.Container) {
	name := c.Labels[runtime.LabelInstance]
	why := fmt.Sprintf("stray container %s removed: labelled as node %s's but not named by berth", c.Name, a.Node)
	if err := a.recordRemoval(ctx, name, c, why); err != nil {
		a.Log.Warn("remove stray container", "container", c.Name, "err", err)
		return
	}
	a.Log.Warn("removing stray container", "container", c.Name, "instance", name)
	if err := a.Runtime.Remove(ctx, c.ID); err != nil {
		a.Log.Warn("remove stray container", "container", c.Name, "err", err)
	}
}

// listed looks an instance up in a list of this node's instances read
// after since. One list serves every lookup that asked before it started.
func (a *Agent) listed(ctx context.Context, name string, since time.Time) (api.Instance, bool, error) {
	a.listMu.Lock()
	defer a.listMu.Unlock()
	if a.listedAt.IsZero() || a.listedAt.Before(since) {
		started := time.Now()
		l, err := a.Client.ListInstances(ctx, client.InstanceFilter{Node: a.Node})
		if err != nil {
			return api.Instance{}, false, fmt.Errorf("list this node's instances before removing a container: %w", err)
		}
		a.listedItems = make(map[string]api.Instance, len(l.Items))
		for _, inst := range l.Items {
			a.listedItems[inst.Name] = inst
		}
		a.listedAt = started
	}
	inst, ok := a.listedItems[name]
	return inst, ok, nil
}

// confirmUnknown is called for a container whose instance the watch does
// not hold. If the server lists the instance after all, the watch missed
// a change: the instance is taken from the list and the watch starts
// over from a new list.
func (a *Agent) confirmUnknown(ctx context.Context, name string, since time.Time) (api.Instance, bool, error) {
	inst, ok, err := a.listed(ctx, name, since)
	if err != nil || !ok {
		return inst, ok, err
	}
	a.Log.Warn("the server lists an instance its watch did not give; listing again", "instance", name)
	a.mu.Lock()
	if _, has := a.insts[name]; !has {
		a.insts[name] = inst
	}
	relist := a.relist
	a.mu.Unlock()
	if relist != nil {
		relist()
	}
	return inst, true, nil
}

// drain gives the gateways a moment to take an instance that served out
// of their tables before its container is stopped: they learn that it is
// retired (or kept, or idled) when the agent does, from the same record,
// so without a pause a request could still be sent to a stopping
// container. (The record's desired state is no longer run here, so "was
// routable" is read from its last status.)
func drain(ctx context.Context, inst api.Instance) error {
	st := inst.Status
	if !st.Healthy || st.State != api.StateRunning || st.Address == "" {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(drainDelay):
		return nil
	}
}
