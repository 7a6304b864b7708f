package scheduler

import (
	"slices"

	"berth/api"
)

// rules are an app's placement compiled against the cluster's label
// indexes, so that checking a node compares integers.
type rules struct {
	constraints []constraint
	spread      *labelIndex // nil: spread per node
	binpack     bool
	maxPerNode  int32  // 0: no cap
	invalid     string // the placement does not validate: the instance fits nowhere, for this reason
}

type constraint struct {
	api.Constraint
	value []int32 // the label's value id per node
	want  int32   // id of Constraint.Value; -1 when no node has it
}

// rulesFor returns the compiled rules for p. Instances of one app normally
// share one placement, so compiling happens once per app and call; it is
// redone only if an instance of another template brings other rules.
func (a *appState) rulesFor(c *cluster, p *api.Placement) *rules {
	if !a.ready || (a.from != p && !samePlacement(a.from, p)) {
		a.rules, a.from, a.ready = compile(c, p), p, true
		a.reason = "" // it was for other rules
	}
	return &a.rules
}

func compile(c *cluster, p *api.Placement) rules {
	if p == nil {
		return rules{}
	}
	if err := p.Validate(); err != nil {
		return rules{invalid: err.Error()}
	}
	parsed, _ := p.Parsed() // validated above
	r := rules{binpack: p.Strategy == api.StrategyBinpack, maxPerNode: int32(min(p.MaxPerNode, 1<<30))}
	for _, pc := range parsed {
		l := c.label(pc.Label)
		want, ok := l.ids[pc.Value]
		if !ok {
			want = -1
		}
		r.constraints = append(r.constraints, constraint{Constraint: pc, value: l.value, want: want})
	}
	if p.Spread != "" && p.Spread != api.SpreadNode {
		r.spread = c.label(p.Spread)
	}
	return r
}

func samePlacement(a, b *api.Placement) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Spread == b.Spread && a.Strategy == b.Strategy && a.MaxPerNode == b.MaxPerNode &&
		slices.Equal(a.Constraints, b.Constraints)
}

// failedConstraint returns the first constraint node n breaks, or nil.
func (r *rules) failedConstraint(n int32) *constraint {
	for i := range r.constraints {
		k := &r.constraints[i]
		if (k.value[n] == k.want) != k.Equal {
			return k
		}
	}
	return nil
}

// pick returns the best node for an instance of the loaded app that needs
// need under rules r, or -1 when none passes the filters.
//
// The best node so far is kept as its score, and a node that cannot beat
// it is dropped before its constraints are looked at: the answer is the
// same as filtering first, for less work. This loop is the scheduler's hot
// path (nodes x instances); it allocates nothing.
func (c *cluster) pick(need api.Capacity, r *rules) int32 {
	if r.binpack {
		return c.pickBinpack(need, r)
	}
	return c.pickSpread(need, r)
}

// pickSpread prefers the fewest instances of the app on the node's value of
// the spread label (losing one zone then loses as few replicas as
// possible), then the fewest on the node itself, then the most free memory
// to keep load even, then the name (nodes come in name order, so a full tie
// keeps the earlier one).
func (c *cluster) pickSpread(need api.Capacity, r *rules) int32 {
	var groupOf, perGroup []int32 // nil: each node its own group
	if s := r.spread; s != nil {
		groupOf, perGroup = s.value, s.count
	}
	best, bestGroup, bestOn, bestFree := int32(-1), int32(0), int32(0), api.Bytes(0)
	for i := range c.nodes {
		s := &c.nodes[i]
		if !s.ready || need.CPU > s.free.CPU || need.Memory > s.free.Memory {
			continue
		}
		on := c.onNode[i]
		group := on
		if groupOf != nil {
			group = perGroup[groupOf[i]]
		}
		if best >= 0 && (group > bestGroup || group == bestGroup && (on > bestOn || on == bestOn && s.free.Memory <= bestFree)) {
			continue
		}
		if !c.allowed(int32(i), on, r) {
			continue
		}
		best, bestGroup, bestOn, bestFree = int32(i), group, on, s.free.Memory
	}
	return best
}

// pickBinpack prefers the least free memory, then the least free cpu, then
// the name: instances fill nodes up, and whole nodes stay free for big ones.
func (c *cluster) pickBinpack(need api.Capacity, r *rules) int32 {
	best, bestFree := int32(-1), api.Capacity{}
	for i := range c.nodes {
		s := &c.nodes[i]
		if !s.ready || need.CPU > s.free.CPU || need.Memory > s.free.Memory {
			continue
		}
		if best >= 0 && (s.free.Memory > bestFree.Memory || s.free.Memory == bestFree.Memory && s.free.CPU >= bestFree.CPU) {
			continue
		}
		if !c.allowed(int32(i), c.onNode[i], r) {
			continue
		}
		best, bestFree = int32(i), s.free
	}
	return best
}

// allowed runs the filters after capacity: constraints, then max_per_node;
// on is the app's instances on node n.
func (c *cluster) allowed(n, on int32, r *rules) bool {
	return (len(r.constraints) == 0 || r.failedConstraint(n) == nil) && (r.maxPerNode == 0 || on < r.maxPerNode)
}
