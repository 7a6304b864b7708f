// Package scheduler decides which node each pending instance runs on.
//
// It is a pure function of its input (no I/O, no clock) so that the server
// can call it under its leader lock and tests can call it with plain values.
// A placement is a pipeline: filters drop nodes an instance cannot go to,
// each with a reason for the user; score orders the nodes that are left.
package scheduler

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"berth/api"
)

// Decision is where one instance goes, or why it cannot go anywhere.
type Decision struct {
	Instance string // instance name
	Node     string // "" when it fits nowhere
	Reason   string // when Node == "": why, per node, e.g. "n1: insufficient memory: need 64Mi, free 0; n2: node down"
}

// nodeState is a node as the scheduler sees it during one Schedule call:
// what is still free and how many instances of each app it holds.
type nodeState struct {
	node *api.Node
	free api.Capacity
	apps map[string]int // app name -> instances on this node
}

// place reserves inst's resources on the node so that the next decision
// sees them.
func (n *nodeState) place(inst *api.Instance) {
	n.free.CPU -= inst.Spec.Resources.CPU
	n.free.Memory -= inst.Spec.Resources.Memory
	n.apps[inst.App]++
}

// A filter returns why inst cannot go on n, or "" when it can.
type filter func(inst *api.Instance, n *nodeState) string

// filters run in this order; the first failing one gives the node's reason,
// so that a down node says "node down" rather than a capacity message.
var filters = []filter{nodeReady, fitsCPU, fitsMemory}

func nodeReady(_ *api.Instance, n *nodeState) string {
	switch n.node.State {
	case api.NodeReady:
		return ""
	case api.NodeDown:
		return "node down"
	case "":
		return "node not ready"
	}
	return "node " + n.node.State
}

func fitsCPU(inst *api.Instance, n *nodeState) string {
	if need := inst.Spec.Resources.CPU; need > n.free.CPU {
		return fmt.Sprintf("insufficient cpu: need %s, free %s", need, n.free.CPU)
	}
	return ""
}

func fitsMemory(inst *api.Instance, n *nodeState) string {
	if need := inst.Spec.Resources.Memory; need > n.free.Memory {
		return fmt.Sprintf("insufficient memory: need %s, free %s", need, n.free.Memory)
	}
	return ""
}

// better reports whether node a is a better home for inst than node b.
// Spreading an app's instances comes first so that losing one node loses
// as few replicas of an app as possible; then the node with the most free
// memory, to keep load even; then the name, so the result is deterministic.
func better(inst *api.Instance, a, b *nodeState) bool {
	if c := cmp.Compare(a.apps[inst.App], b.apps[inst.App]); c != 0 {
		return c < 0
	}
	if c := cmp.Compare(a.free.Memory, b.free.Memory); c != 0 {
		return c > 0
	}
	return a.node.Name < b.node.Name
}

// Schedule places pending instances (Node == "") on nodes. placed are all
// instances that already hold resources on a node (any instance with
// Node != ""); placed instances on nodes that are not in nodes are ignored.
// Decisions are made in order and each one counts against the next (so 30
// pending instances never overbook a node). Deterministic for the same input.
func Schedule(pending []api.Instance, nodes []api.Node, placed []api.Instance) []Decision {
	states := newStates(nodes, placed)
	decisions := make([]Decision, 0, len(pending))
	for i := range pending {
		inst := &pending[i]
		d := Decision{Instance: inst.Name}
		if best, reasons := pick(inst, states); best != nil {
			d.Node = best.node.Name
			best.place(inst)
		} else {
			d.Reason = reasons
		}
		decisions = append(decisions, d)
	}
	return decisions
}

// pick returns the best node for inst, or nil and the reasons why no node
// fits, per node in name order.
func pick(inst *api.Instance, states []*nodeState) (*nodeState, string) {
	if len(states) == 0 {
		return nil, "no nodes registered"
	}
	var best *nodeState
	var reasons []string
	for _, n := range states {
		if why := check(inst, n); why != "" {
			reasons = append(reasons, n.node.Name+": "+why)
			continue
		}
		if best == nil || better(inst, n, best) {
			best = n
		}
	}
	if best == nil {
		return nil, strings.Join(reasons, "; ")
	}
	return best, ""
}

// check returns the first failing filter's reason, or "".
func check(inst *api.Instance, n *nodeState) string {
	for _, f := range filters {
		if why := f(inst, n); why != "" {
			return why
		}
	}
	return ""
}

// newStates builds the per-node view, sorted by node name so that reasons
// and ties come out in the same order whatever order the nodes came in.
func newStates(nodes []api.Node, placed []api.Instance) []*nodeState {
	alloc := Allocated(placed)
	byName := make(map[string]*nodeState, len(nodes))
	states := make([]*nodeState, 0, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		if byName[n.Name] != nil {
			continue // a duplicate would be counted twice; keep the first
		}
		a := alloc[n.Name]
		s := &nodeState{
			node: n,
			free: api.Capacity{CPU: n.Capacity.CPU - a.CPU, Memory: n.Capacity.Memory - a.Memory},
			apps: map[string]int{},
		}
		byName[n.Name] = s
		states = append(states, s)
	}
	for i := range placed {
		if s := byName[placed[i].Node]; s != nil {
			s.apps[placed[i].App]++
		}
	}
	slices.SortFunc(states, func(a, b *nodeState) int { return cmp.Compare(a.node.Name, b.node.Name) })
	return states
}

// Allocated sums the resources (spec.resources.cpu / memory) of placed
// instances per node. Instances without a node hold nothing.
func Allocated(placed []api.Instance) map[string]api.Capacity {
	alloc := make(map[string]api.Capacity)
	for i := range placed {
		inst := &placed[i]
		if inst.Node == "" {
			continue
		}
		c := alloc[inst.Node]
		c.CPU += inst.Spec.Resources.CPU
		c.Memory += inst.Spec.Resources.Memory
		alloc[inst.Node] = c
	}
	return alloc
}
