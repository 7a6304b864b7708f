package scheduler

import (
	"fmt"
	"strings"

	"berth/api"
)

// unplaced says why an instance of the loaded app fits nowhere: every
// node's first failing filter, in name order. Instances that follow one
// another with the same needs and rules get the same string while no
// placement changed the cluster, so a long queue of them costs one scan each.
func (c *cluster) unplaced(app *appState, need api.Capacity, r *rules) string {
	if app.reason != "" && app.reasonNeed == need && app.reasonPlacements == c.placements {
		return app.reason
	}
	var b strings.Builder
	if len(c.nodes) == 0 {
		b.WriteString("no nodes registered")
	}
	for i := range c.nodes {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(c.nodes[i].node.Name)
		b.WriteString(": ")
		b.WriteString(c.why(int32(i), need, r))
	}
	app.reason, app.reasonNeed, app.reasonPlacements = b.String(), need, c.placements
	return app.reason
}

// why is the first filter node n fails, in the order of pick.
func (c *cluster) why(n int32, need api.Capacity, r *rules) string {
	s := &c.nodes[n]
	switch {
	case !s.ready:
		return notReady(s.node.State)
	case need.CPU > s.free.CPU:
		return fmt.Sprintf("insufficient cpu: need %s, free %s", need.CPU, s.free.CPU)
	case need.Memory > s.free.Memory:
		return fmt.Sprintf("insufficient memory: need %s, free %s", need.Memory, s.free.Memory)
	}
	if k := r.failedConstraint(n); k != nil {
		return "constraint " + k.String() + " not met"
	}
	if r.maxPerNode > 0 && c.onNode[n] >= r.maxPerNode {
		return fmt.Sprintf("max_per_node %d reached", r.maxPerNode)
	}
	return "fits" // not reached: pick would have chosen it
}

func notReady(state string) string {
	switch state {
	case "":
		return "node not ready"
	case api.NodeDown:
		return "node down"
	case api.NodeDraining:
		return "node draining"
	}
	return "node " + state
}
