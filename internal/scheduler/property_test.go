package scheduler

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"berth/api"
	"pgregory.net/rapid"
)

// Property tests of the placement rules on random clusters: random nodes
// with labels, capacities and states; apps with random placements;
// instances already placed under other rules.

var (
	zoneValues  = []string{"a", "b", "c", ""} // "": no zone label
	diskValues  = []string{"ssd", "hdd", ""}
	constraints = []string{"zone == a", "zone != b", "zone==c", "disk == ssd", "disk!=hdd"}
)

func genLabelledNodes(t *rapid.T, minNodes int, states []string) []api.Node {
	n := rapid.IntRange(minNodes, 7).Draw(t, "nodes")
	var nodes []api.Node
	for i := range n {
		nd := node(fmt.Sprintf("n%d", i),
			api.MilliCPU(rapid.Int64Range(0, 8000).Draw(t, "cpu")),
			api.Bytes(rapid.Int64Range(0, 8192).Draw(t, "mem"))*Mi)
		nd.State = rapid.SampledFrom(states).Draw(t, "state")
		nd.Labels = map[string]string{}
		if z := rapid.SampledFrom(zoneValues).Draw(t, "zone"); z != "" {
			nd.Labels["zone"] = z
		}
		if d := rapid.SampledFrom(diskValues).Draw(t, "disk"); d != "" {
			nd.Labels["disk"] = d
		}
		nodes = append(nodes, nd)
	}
	return nodes
}

var anyState = []string{api.NodeReady, api.NodeReady, api.NodeReady, api.NodeDown, api.NodeDraining, ""}

// genPlacement returns nil (no rules) or random rules; strategy "" lets
// the caller's choice stand.
func genPlacement(t *rapid.T, strategies []string) *api.Placement {
	if rapid.IntRange(0, 3).Draw(t, "nil placement") == 0 {
		return nil
	}
	p := &api.Placement{
		Constraints: rapid.SliceOfNDistinct(rapid.SampledFrom(constraints), 0, 2, rapid.ID[string]).Draw(t, "constraints"),
		Spread:      rapid.SampledFrom([]string{"node", "zone", "disk"}).Draw(t, "spread"),
		Strategy:    rapid.SampledFrom(strategies).Draw(t, "strategy"),
		MaxPerNode:  rapid.IntRange(0, 3).Draw(t, "max_per_node"),
	}
	p.Default()
	return p
}

// genApps gives each app one placement for its pending instances.
func genApps(t *rapid.T, strategies []string) map[string]*api.Placement {
	out := map[string]*api.Placement{}
	for _, a := range apps {
		out[a] = genPlacement(t, strategies)
	}
	return out
}

// withRules sets each instance's placement to its app's, a copy each, as
// instances read from the store carry.
func withRules(insts []api.Instance, rules map[string]*api.Placement) []api.Instance {
	for i := range insts {
		if p := rules[insts[i].App]; p != nil {
			pp := *p
			insts[i].Spec.Placement = &pp
		} else {
			insts[i].Spec.Placement = nil
		}
	}
	return insts
}

type placementWorld struct {
	nodes   []api.Node
	placed  []api.Instance
	pending []api.Instance
}

func genPlacementWorld(t *rapid.T) placementWorld {
	w := placementWorld{nodes: genLabelledNodes(t, 0, anyState)}
	// Already placed under rules that may since have changed, so some may
	// break today's rules; they stay within capacity as the scheduler keeps them.
	old := withRules(genInstances(t, "placed"), genApps(t, []string{"spread", "binpack"}))
	for i, d := range Schedule(old, w.nodes, nil) {
		if d.Node != "" {
			w.placed = append(w.placed, on(old[i], d.Node))
		}
	}
	// One on a node that is gone: ignored.
	w.placed = append(w.placed, on(inst("web", 99, 1, Mi), "gone"))
	w.pending = withRules(genInstances(t, "pending"), genApps(t, []string{"spread", "binpack"}))
	return w
}

// TestPropertyPlacement: never over capacity, only on ready nodes, the
// constraints hold for every placement, max_per_node is never exceeded,
// every unplaced instance says why per node, and the result does not
// depend on the order of the nodes.
func TestPropertyPlacement(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		w := genPlacementWorld(t)
		ds := Schedule(w.pending, w.nodes, w.placed)
		if len(ds) != len(w.pending) {
			t.Fatalf("%d decisions for %d pending", len(ds), len(w.pending))
		}
		byName := map[string]api.Node{}
		for _, n := range w.nodes {
			byName[n.Name] = n
		}
		type appNode struct{ app, node string }
		before, after := map[appNode]int{}, map[appNode]int{}
		for _, p := range w.placed {
			before[appNode{p.App, p.Node}]++
		}
		for k, v := range before {
			after[k] = v
		}
		for i, d := range ds {
			p := w.pending[i].Spec.Placement
			if d.Node == "" {
				if d.Reason == "" {
					t.Fatalf("unplaced %s has no reason", d.Instance)
				}
				continue
			}
			n, ok := byName[d.Node]
			if !ok || n.State != api.NodeReady {
				t.Fatalf("%s placed on %q which is not a ready node (%+v)", d.Instance, d.Node, n)
			}
			cs, err := p.Parsed()
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cs {
				if !c.Holds(n.Labels) {
					t.Fatalf("%s placed on %s (labels %v) against its constraint %s", d.Instance, n.Name, n.Labels, c)
				}
			}
			after[appNode{w.pending[i].App, d.Node}]++
		}
		for i, d := range ds {
			p := w.pending[i].Spec.Placement
			if d.Node == "" || p == nil || p.MaxPerNode == 0 {
				continue
			}
			if got := after[appNode{w.pending[i].App, d.Node}]; got > p.MaxPerNode {
				t.Fatalf("%s placed on %s, which now holds %d of %s, more than max_per_node %d",
					d.Instance, d.Node, got, w.pending[i].App, p.MaxPerNode)
			}
		}
		for name, a := range Allocated(apply(w.placed, w.pending, ds)) {
			n, ok := byName[name]
			if ok && (a.CPU > n.Capacity.CPU || a.Memory > n.Capacity.Memory) {
				t.Fatalf("node %s over capacity: allocated %+v, capacity %+v", name, a, n.Capacity)
			}
		}
		// The same answer as the plain reading of the rules below,
		// reasons included, and whatever the order of the nodes.
		if want := reference(w.pending, w.nodes, w.placed); !reflect.DeepEqual(ds, want) {
			t.Fatalf("Schedule =\n%+v\nreference =\n%+v", ds, want)
		}
		shuffled := rapid.Permutation(w.nodes).Draw(t, "node order")
		if again := Schedule(w.pending, shuffled, w.placed); !reflect.DeepEqual(again, ds) {
			t.Fatalf("another node order, another answer:\n%+v\n%+v", ds, again)
		}
	})
}

// TestPropertySpreadOverLabel: with room for everything on every node and
// no max_per_node, each app's instances spread evenly over the values of
// its spread label among the nodes it may go to. With instances already
// placed (unevenly, under other rules), a value only gets a new instance
// while it has the fewest: any value that got one ends at most one above
// every value it could have gone to instead.
func TestPropertySpreadOverLabel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nodes := genLabelledNodes(t, 1, anyState)
		pending := genInstances(t, "pending")
		rules := genApps(t, []string{"spread"})
		for _, p := range rules {
			if p != nil {
				p.MaxPerNode = 0
			}
		}
		withRules(pending, rules)
		var placed []api.Instance
		if rapid.Bool().Draw(t, "some placed") {
			for i, p := range genInstances(t, "placed") {
				placed = append(placed, on(p, nodes[rapid.IntRange(0, len(nodes)-1).Draw(t, fmt.Sprint("node of placed ", i))].Name))
			}
		}
		var sum api.Capacity
		for _, p := range append(slices.Clone(pending), placed...) {
			sum.CPU += p.Spec.Resources.CPU
			sum.Memory += p.Spec.Resources.Memory
		}
		for i := range nodes {
			nodes[i].Capacity = sum
		}
		ds := Schedule(pending, nodes, placed)

		for _, app := range apps {
			p := rules[app]
			spread := api.SpreadNode
			if p != nil {
				spread = p.Spread
			}
			group := func(n api.Node) string {
				if spread == api.SpreadNode {
					return n.Name
				}
				return n.Labels[spread]
			}
			cs, _ := p.Parsed()
			eligible := map[string]bool{} // group -> has a node the app may go to
			for _, n := range nodes {
				ok := n.State == api.NodeReady
				for _, c := range cs {
					ok = ok && c.Holds(n.Labels)
				}
				if ok {
					eligible[group(n)] = true
				}
			}
			final, got := map[string]int{}, map[string]int{}
			for _, pl := range placed {
				if pl.App == app {
					final[group(byNodeName(nodes, pl.Node))]++
				}
			}
			for i, d := range ds {
				if pending[i].App != app {
					continue
				}
				if d.Node == "" {
					if len(eligible) > 0 {
						t.Fatalf("%s not placed though there is room: %s", d.Instance, d.Reason)
					}
					continue
				}
				g := group(byNodeName(nodes, d.Node))
				final[g]++
				got[g]++
			}
			for g := range got {
				for h := range eligible {
					if final[g] > final[h]+1 {
						t.Fatalf("app %s (spread %s): %q got an instance and holds %d, %q could have and holds %d; all: %v",
							app, spread, g, final[g], h, final[h], final)
					}
				}
			}
			if len(placed) == 0 {
				lo, hi := len(pending), 0
				for h := range eligible {
					lo, hi = min(lo, final[h]), max(hi, final[h])
				}
				if len(got) > 0 && hi-lo > 1 {
					t.Fatalf("app %s (spread %s) uneven over %v: %v", app, spread, eligible, final)
				}
			}
		}
	})
}

func byNodeName(nodes []api.Node, name string) api.Node {
	for _, n := range nodes {
		if n.Name == name {
			return n
		}
	}
	panic("no node " + name)
}

// reference is the placement rules read plainly, with no care for speed:
// maps, strings and a full rescan for every count.
func reference(pending []api.Instance, nodes []api.Node, placed []api.Instance) []Decision {
	var sorted []api.Node
	for _, n := range nodes {
		if !slices.ContainsFunc(sorted, func(m api.Node) bool { return m.Name == n.Name }) {
			sorted = append(sorted, n)
		}
	}
	slices.SortFunc(sorted, func(a, b api.Node) int { return cmp.Compare(a.Name, b.Name) })
	free := map[string]api.Capacity{}
	for _, n := range sorted {
		free[n.Name] = n.Capacity
	}
	var all []api.Instance // every instance on a known node
	for _, p := range placed {
		if f, ok := free[p.Node]; ok {
			f.CPU -= p.Spec.Resources.CPU
			f.Memory -= p.Spec.Resources.Memory
			free[p.Node] = f
			all = append(all, p)
		}
	}
	count := func(app string, in func(api.Node) bool) int {
		c := 0
		for _, p := range all {
			if p.App == app && in(byNodeName(sorted, p.Node)) {
				c++
			}
		}
		return c
	}
	out := make([]Decision, 0, len(pending))
	for _, inst := range pending {
		d := Decision{Instance: inst.Name}
		p := inst.Spec.Placement
		if p != nil {
			if err := p.Validate(); err != nil {
				d.Reason = err.Error()
				out = append(out, d)
				continue
			}
		}
		cs, _ := p.Parsed()
		spread, binpack, maxPer := "node", false, 0
		if p != nil {
			spread, binpack, maxPer = p.Spread, p.Strategy == "binpack", p.MaxPerNode
		}
		need := inst.Spec.Resources
		var reasons []string
		var best *api.Node
		var bestKey []int
		for _, n := range sorted {
			onNode := count(inst.App, func(m api.Node) bool { return m.Name == n.Name })
			f := free[n.Name]
			why := ""
			switch {
			case n.State != api.NodeReady:
				why = map[string]string{"": "node not ready", "down": "node down", "draining": "node draining"}[n.State]
			case need.CPU > f.CPU:
				why = fmt.Sprintf("insufficient cpu: need %s, free %s", need.CPU, f.CPU)
			case need.Memory > f.Memory:
				why = fmt.Sprintf("insufficient memory: need %s, free %s", need.Memory, f.Memory)
			}
			for _, c := range cs {
				if why == "" && !c.Holds(n.Labels) {
					why = "constraint " + c.String() + " not met"
				}
			}
			if why == "" && maxPer > 0 && onNode >= maxPer {
				why = fmt.Sprintf("max_per_node %d reached", maxPer)
			}
			if why != "" {
				reasons = append(reasons, n.Name+": "+why)
				continue
			}
			// Lower is better; the name decides a tie (first wins).
			key := []int{int(f.Memory), int(f.CPU)}
			if !binpack {
				inGroup := func(m api.Node) bool { return m.Name == n.Name }
				if spread != "node" {
					inGroup = func(m api.Node) bool { return m.Labels[spread] == n.Labels[spread] }
				}
				key = []int{count(inst.App, inGroup), onNode, -int(f.Memory)}
			}
			if best == nil || slices.Compare(key, bestKey) < 0 {
				best, bestKey = &n, key
			}
		}
		if best == nil {
			d.Reason = strings.Join(reasons, "; ")
			if len(sorted) == 0 {
				d.Reason = "no nodes registered"
			}
		} else {
			d.Node = best.Name
			f := free[best.Name]
			f.CPU -= need.CPU
			f.Memory -= need.Memory
			free[best.Name] = f
			placedNow := inst
			placedNow.Node = best.Name
			all = append(all, placedNow)
		}
		out = append(out, d)
	}
	return out
}
