package scheduler

import (
	"cmp"
	"slices"

	"berth/api"
)

// cluster is the scheduler's view of the nodes during one Schedule call.
// Nodes are sorted by name and named by their index from here on.
type cluster struct {
	nodes  []nodeState
	byName map[string]int32
	labels map[string]*labelIndex // node labels that some rule uses, indexed on first use
	apps   map[string]*appState   // the apps with pending instances

	// onNode holds, per node, the instances of the loaded app (see load).
	onNode       []int32
	loaded       *appState
	loadedSpread *labelIndex

	// placements counts decisions that put an instance on a node: while it
	// does not change, an unplaceable instance gets the reason of the last.
	placements int
}

type nodeState struct {
	node  *api.Node
	ready bool
	free  api.Capacity
}

// labelIndex numbers the values of one node label: value[n] is the id of
// node n's value, 0 when the node lacks the label (or has it empty).
type labelIndex struct {
	value []int32
	ids   map[string]int32
	count []int32 // per value id: instances of the loaded app (see load)
}

// appState is one app with pending instances.
type appState struct {
	name    string
	pending int // instances in this call
	// nodes holds the node of every instance of the app: placed before the
	// call, or during it. One entry per instance.
	nodes []int32

	rules rules
	from  *api.Placement // what rules were compiled from
	ready bool           // rules compiled

	// The reason given to the last unplaceable instance, and what it held for.
	reason           string
	reasonNeed       api.Capacity
	reasonPlacements int
}

func newCluster(pending []api.Instance, nodes []api.Node, placed []api.Instance) *cluster {
	c := &cluster{
		byName: make(map[string]int32, len(nodes)),
		labels: map[string]*labelIndex{},
		apps:   map[string]*appState{},
	}
	seen := make(map[string]bool, len(nodes))
	ordered := make([]*api.Node, 0, len(nodes))
	for i := range nodes {
		if seen[nodes[i].Name] {
			continue // a duplicate would be counted twice; keep the first
		}
		seen[nodes[i].Name] = true
		ordered = append(ordered, &nodes[i])
	}
	// Name order, so that reasons and ties come out the same whatever
	// order the nodes came in.
	slices.SortFunc(ordered, func(a, b *api.Node) int { return cmp.Compare(a.Name, b.Name) })
	c.nodes = make([]nodeState, len(ordered))
	for i, n := range ordered {
		c.nodes[i] = nodeState{node: n, ready: n.State == api.NodeReady, free: n.Capacity}
		c.byName[n.Name] = int32(i)
	}
	c.onNode = make([]int32, len(c.nodes))

	for i := range pending {
		a := c.apps[pending[i].App]
		if a == nil {
			a = &appState{name: pending[i].App}
			c.apps[a.name] = a
		}
		a.pending++
	}
	for _, a := range c.apps {
		a.nodes = make([]int32, 0, a.pending)
	}
	// Instances come listed by name, so mostly app by app: look the app up
	// once per run of it. Apps with nothing pending are not counted.
	var app *appState
	lastApp, looked := "", false
	for i := range placed {
		p := &placed[i]
		if !p.HoldsRoom() {
			continue
		}
		n, ok := c.byName[p.Node]
		if !ok {
			continue
		}
		c.nodes[n].free.CPU -= p.Spec.Resources.CPU
		c.nodes[n].free.Memory -= p.Spec.Resources.Memory
		if !looked || p.App != lastApp {
			app, lastApp, looked = c.apps[p.App], p.App, true
		}
		if app != nil {
			app.nodes = append(app.nodes, n)
		}
	}
	return c
}

// label returns the index of a node label, building it on first use.
func (c *cluster) label(key string) *labelIndex {
	if l := c.labels[key]; l != nil {
		return l
	}
	l := &labelIndex{value: make([]int32, len(c.nodes)), ids: map[string]int32{"": 0}}
	for i := range c.nodes {
		v := c.nodes[i].node.Labels[key]
		id, ok := l.ids[v]
		if !ok {
			id = int32(len(l.ids))
			l.ids[v] = id
		}
		l.value[i] = id
	}
	l.count = make([]int32, len(l.ids))
	c.labels[key] = l
	return l
}

// load makes onNode (and spread's count, when spreading over a label) hold
// the instances of app. Pending instances mostly come app by app, so this
// is usually a no-op; switching costs one step per instance of the two apps.
func (c *cluster) load(app *appState, spread *labelIndex) {
	if c.loaded == app && c.loadedSpread == spread {
		return
	}
	if old := c.loaded; old != nil {
		for _, n := range old.nodes {
			c.onNode[n] = 0
			if s := c.loadedSpread; s != nil {
				s.count[s.value[n]] = 0
			}
		}
	}
	for _, n := range app.nodes {
		c.onNode[n]++
		if spread != nil {
			spread.count[spread.value[n]]++
		}
	}
	c.loaded, c.loadedSpread = app, spread
}

// place puts one instance of the loaded app on node n.
func (c *cluster) place(app *appState, r *rules, n int32, need api.Capacity) {
	c.nodes[n].free.CPU -= need.CPU
	c.nodes[n].free.Memory -= need.Memory
	app.nodes = append(app.nodes, n)
	c.onNode[n]++
	if s := r.spread; s != nil {
		s.count[s.value[n]]++
	}
	c.placements++
}
