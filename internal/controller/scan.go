package controller

import (
	"context"
	"hash/maphash"
	"iter"
	"maps"
	"slices"

	"berth/api"
	"berth/internal/store"
)

// scan is what a pass reads of the instances, in one go over them all (a
// million in a large cluster): what each app's plan is made from, the
// instances waiting for a node, and what the placed ones hold per node.
// Only the apps that are planned, or have instances waiting, get their
// instances listed: a pass costs a look at each instance, and a copy of
// those that matter.
type scan struct {
	apps    map[string]*appScan
	nodes   map[string]*nodeScan
	waiting []*api.Instance // want to run and have no node
}

// nodeScan is a node as a pass sees it: one lookup per instance.
type nodeScan struct {
	state string       // as PlanApp sees it (see nodeStates)
	down  bool         // its instances are lost: they hold nothing
	held  api.Capacity // what its instances hold
}

func newScan(apps []api.App, nodes []api.Node, states map[string]string) *scan {
	s := &scan{apps: make(map[string]*appScan, len(apps)), nodes: make(map[string]*nodeScan, len(nodes))}
	for i := range apps {
		a := &apps[i]
		s.apps[a.Spec.Name] = &appScan{name: a.Spec.Name, app: a, in: planInput{app: a.Version}}
	}
	for i := range nodes {
		s.nodes[nodes[i].Name] = &nodeScan{state: states[nodes[i].Name], down: nodes[i].State == api.NodeDown}
	}
	return s
}

// appScan is one app's instances, summed up.
type appScan struct {
	name     string
	app      *api.App // nil: instances whose app record is gone
	in       planInput
	health   uint64 // sum over the healthy instances, for in.shape when health counts
	current  int    // instances that run the current template on a node in use
	healthy  int    // those of them that are healthy (the rollout tracker's progress)
	problem  string // what the last unhealthy one of them says, for a failed rollout
	old      bool   // an instance of an older template or on a draining node
	waiting  bool
	insts    []*api.Instance // when wanted
	wanted   bool
	planning bool
}

// planInput sums up what an app's plan is made from: its record's version,
// the number of its instances and a sum of a hash of each of what PlanApp
// reads of it (name, index, node, desired state, template revision, and
// replace), with its health when that counts: during a rolling update or a
// drain, or with more current instances than replicas. Otherwise PlanApp
// does not read health, and an instance reported healthy (a thousand a
// second during a large deploy) plans nothing again.
type planInput struct {
	app       int64
	instances int
	shape     uint64
}

// instanceShape is the part of an instance a plan is made from, but health.
type instanceShape struct {
	name, node, desired string
	revision            int64
	index               int
	replace             bool
}

var shapeSeed = maphash.MakeSeed()

// scanInstances reads every instance into s.
func (c *Controller) scanInstances(ctx context.Context, s *scan) error {
	return c.eachInstance(ctx, func(all iter.Seq[*api.Instance]) {
		for inst := range all {
			s.add(inst)
		}
		if !s.want(c.planned) {
			return
		}
		for inst := range all {
			if a := s.apps[inst.App]; a.wanted {
				a.insts = append(a.insts, inst)
			}
		}
	})
}

func (s *scan) add(inst *api.Instance) {
	a := s.apps[inst.App]
	if a == nil {
		a = &appScan{name: inst.App}
		s.apps[inst.App] = a
	}
	a.in.instances++
	a.in.shape += maphash.Comparable(shapeSeed, instanceShape{inst.Name, inst.Node, inst.Desired, inst.Revision, inst.Index, inst.Status.Replace})
	if isHealthy(*inst) {
		a.health += maphash.Comparable(shapeSeed, inst.Name)
	}
	n := s.nodes[inst.Node] // nil: no node, or one that is gone
	state := ""
	if n != nil {
		state = n.state
	}
	// A kept instance (stopped for a fast rollback) is neither old nor
	// current, and holds no room (api.Instance.HoldsRoom).
	kept := inst.Desired == api.DesiredKeep
	if a.app != nil && !kept && inst.Desired != api.DesiredStop && (inst.Node == "" || state == api.NodeReady || state == api.NodeDraining) {
		if inst.Revision == a.app.TemplateRevision && state != api.NodeDraining {
			a.current++
			if isHealthy(*inst) {
				a.healthy++
			} else {
				a.problem = instanceProblem(inst)
			}
		} else {
			a.old = true
		}
	}
	switch {
	case inst.Node == "" && inst.Desired == api.DesiredRun:
		s.waiting = append(s.waiting, inst)
		a.waiting = true
	case n != nil && !n.down && inst.HoldsRoom():
		n.held.CPU += inst.Spec.Resources.CPU
		n.held.Memory += inst.Spec.Resources.Memory
	}
}

// want marks the apps to plan (their input changed since they were last
// planned, or they have no record) and those whose instances the pass
// needs besides (waiting ones, an idle policy); it reports whether any.
func (s *scan) want(planned map[string]planInput) bool {
	any := false
	for _, a := range s.apps {
		if a.app != nil && a.healthCounts() {
			a.in.shape += a.health
		}
		prev, ok := planned[a.name]
		a.planning = a.app == nil || !ok || prev != a.in
		a.wanted = a.planning || a.waiting || a.app != nil && a.app.Spec.Idle != nil
		any = any || a.wanted
	}
	return any
}

// healthCounts: PlanApp reads the instances' health when some of them
// are to be replaced one at a time (a rolling update, a drain) or some
// are too many.
func (a *appScan) healthCounts() bool {
	return !a.app.Deleting && !a.app.Idled && (a.old || a.current > a.app.Spec.ReplicaCount())
}

// eachInstance calls fn with every instance record. With a task
// controller in this process, its copy (kept by a watch, and by this
// controller's own writes) spares a read of them all; fn runs under its
// lock then. The records are never changed in place, so they may be read
// after fn returns.
func (c *Controller) eachInstance(ctx context.Context, fn func(iter.Seq[*api.Instance])) error {
	if t := c.Tasks; t != nil {
		t.mu.Lock()
		if m := t.instances; m != nil && m.loaded {
			defer t.mu.Unlock()
			fn(maps.Values(m.items))
			return nil
		}
		t.mu.Unlock()
	}
	list, _, err := store.Instances.List(ctx, c.Store)
	if err != nil {
		return err
	}
	fn(slices.Values(ptrs(list)))
	return nil
}

// holding is what holds resources on nodes for the scheduler: the
// instances on nodes that are not down (those on a node that is down are
// lost with it: they count neither against its room nor in their app's
// spread, which their replacements restore), and running tasks. Only the
// instances of apps with pending ones are given one by one (the scheduler
// counts them per node), and of those only the ones that stay (see
// staying); the others are summed up per node, which holds the same room.
func (s *scan) holding(pending []api.Instance) []api.Instance {
	held := make(map[string]api.Capacity, len(s.nodes))
	for name, n := range s.nodes {
		if !n.down {
			held[name] = n.held
		}
	}
	var out []api.Instance
	seen := map[string]bool{}
	for i := range pending {
		app := pending[i].App
		if seen[app] {
			continue
		}
		seen[app] = true
		a := s.apps[app]
		if a == nil {
			continue // a new app: nothing placed yet
		}
		for _, inst := range a.insts {
			if n := s.nodes[inst.Node]; n == nil || n.down || !inst.HoldsRoom() || !s.staying(a, inst) {
				continue
			}
			out = append(out, *inst)
			h := held[inst.Node]
			h.CPU -= inst.Spec.Resources.CPU
			h.Memory -= inst.Spec.Resources.Memory
			held[inst.Node] = h
		}
	}
	for node, h := range held {
		if h.CPU != 0 || h.Memory != 0 {
			out = append(out, api.Instance{Node: node, Spec: api.AppSpec{Resources: api.Resources{CPU: h.CPU, Memory: h.Memory}}}) // of no app
		}
	}
	return out
}

// staying: an instance counts in its app's spread when it is to stay:
// wanted, of the current template and not on a draining node. Those a
// rolling update, a drain or a scale-down is retiring do not, so that
// their replacements are spread as if they were gone already: a rolling
// update ends spread evenly over the nodes now ready, wherever the old
// instances ran (say, all on one node while another was down). With
// max_per_node all count: the cap holds for every instance of the app.
func (s *scan) staying(a *appScan, inst *api.Instance) bool {
	if a.app == nil || a.app.Spec.Placement != nil && a.app.Spec.Placement.MaxPerNode > 0 {
		return true
	}
	n := s.nodes[inst.Node]
	return inst.Desired != api.DesiredStop && inst.Revision == a.app.TemplateRevision && (n == nil || n.state != api.NodeDraining)
}

func values(insts []*api.Instance) []api.Instance {
	out := make([]api.Instance, len(insts))
	for i, inst := range insts {
		out[i] = *inst
	}
	return out
}
