// Package scheduler decides which node each pending instance runs on.
//
// It is a pure function of its input (no I/O, no clock) so that the server
// can call it under its leader lock and tests can call it with plain values.
// A placement is a pipeline: filters drop nodes an instance cannot go to
// (node ready, cpu, memory, the app's constraints, max_per_node), each with
// a reason for the user; a score orders the nodes that are left (spread
// over a label, or binpack). The app's placement rules come from
// Spec.Placement; nil means: anywhere, spread per node.
//
// The hot path (one instance checked against one node) does no allocation
// and no string work: labels are turned into small integers once per call,
// and reasons are only written when an instance fits nowhere.
package scheduler

import "berth/api"

// Decision is where one instance goes, or why it cannot go anywhere.
type Decision struct {
	Instance string // instance name
	Node     string // "" when it fits nowhere
	Reason   string // when Node == "": why, per node, e.g. "n1: insufficient memory: need 64Mi, free 0; n2: node down"
}

// Schedule places pending instances (Node == "") on nodes. placed are all
// instances that already hold resources on a node (any instance with
// Node != ""); placed instances on nodes that are not in nodes are ignored.
// Decisions are made in order and each one counts against the next (so 30
// pending instances never overbook a node, and the spread of an app counts
// the instances placed a moment before). Deterministic for the same input.
func Schedule(pending []api.Instance, nodes []api.Node, placed []api.Instance) []Decision {
	c := newCluster(pending, nodes, placed)
	decisions := make([]Decision, len(pending))
	var app *appState
	for i := range pending {
		inst := &pending[i]
		decisions[i].Instance = inst.Name
		if app == nil || app.name != inst.App {
			app = c.apps[inst.App]
		}
		r := app.rulesFor(c, inst.Spec.Placement)
		need := api.Capacity{CPU: inst.Spec.Resources.CPU, Memory: inst.Spec.Resources.Memory}
		if r.invalid != "" {
			decisions[i].Reason = r.invalid
			continue
		}
		c.load(app, r.spread)
		if best := c.pick(need, r); best >= 0 {
			decisions[i].Node = c.nodes[best].node.Name
			c.place(app, r, best, need)
		} else {
			decisions[i].Reason = c.unplaced(app, need, r)
		}
	}
	return decisions
}

// Allocated sums the resources (spec.resources.cpu / memory) of placed
// instances per node: those that hold room (api.Instance.HoldsRoom).
func Allocated(placed []api.Instance) map[string]api.Capacity {
	alloc := make(map[string]api.Capacity)
	for i := range placed {
		inst := &placed[i]
		if !inst.HoldsRoom() {
			continue
		}
		c := alloc[inst.Node]
		c.CPU += inst.Spec.Resources.CPU
		c.Memory += inst.Spec.Resources.Memory
		alloc[inst.Node] = c
	}
	return alloc
}
