package scheduler

import (
	"reflect"
	"strings"
	"testing"

	"berth/api"
)

// labelled gives n labels written "key=value".
func labelled(n api.Node, kv ...string) api.Node {
	n.Labels = map[string]string{}
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		n.Labels[k] = v
	}
	return n
}

func withState(n api.Node, state string) api.Node { n.State = state; return n }

// placing gives every instance the placement p, defaulted as the server
// stores it.
func placing(p api.Placement, insts ...api.Instance) []api.Instance {
	p.Default()
	for i := range insts {
		pp := p // each instance its own copy, as when read from the store
		insts[i].Spec.Placement = &pp
	}
	return insts
}

// zones is the cluster of the tests: n1 in zone a, n2 and n3 in b.
func zones() []api.Node {
	return []api.Node{
		labelled(node("n1", 4000, 4096*Mi), "zone=a"),
		labelled(node("n2", 4000, 4096*Mi), "zone=b"),
		labelled(node("n3", 4000, 4096*Mi), "zone=b"),
	}
}

// perNode counts the placed decisions per node.
func perNode(ds []Decision) map[string]int {
	out := map[string]int{}
	for _, d := range ds {
		if d.Node != "" {
			out[d.Node]++
		}
	}
	return out
}

func TestPlacementRules(t *testing.T) {
	tests := []struct {
		name    string
		pending []api.Instance
		nodes   []api.Node
		placed  []api.Instance
		want    map[string]int // placed per node
		reasons []string       // of the unplaced decisions, in order
	}{
		{
			name:    "spread per node by default",
			pending: many("web", 6, 100, 64*Mi),
			nodes:   zones(),
			want:    map[string]int{"n1": 2, "n2": 2, "n3": 2},
		},
		{
			name:    "spread per node, written out",
			pending: placing(api.Placement{Spread: "node"}, many("web", 6, 100, 64*Mi)...),
			nodes:   zones(),
			want:    map[string]int{"n1": 2, "n2": 2, "n3": 2},
		},
		{
			name:    "spread over zone: half in a, half in b",
			pending: placing(api.Placement{Spread: "zone"}, many("web", 6, 100, 64*Mi)...),
			nodes:   zones(),
			want:    map[string]int{"n1": 3, "n2": 2, "n3": 1},
		},
		{
			name:    "a node without the spread label counts as the value \"\"",
			pending: placing(api.Placement{Spread: "zone"}, many("web", 4, 100, 64*Mi)...),
			nodes:   []api.Node{labelled(node("n1", 4000, 4096*Mi), "zone=a"), node("n2", 4000, 4096*Mi), node("n3", 4000, 4096*Mi)},
			want:    map[string]int{"n1": 2, "n2": 1, "n3": 1},
		},
		{
			name:    "spread counts the instances already placed",
			pending: placing(api.Placement{Spread: "zone"}, inst("web", 2, 100, 64*Mi), inst("web", 3, 100, 64*Mi)),
			nodes:   zones(),
			placed:  []api.Instance{on(inst("web", 0, 100, 64*Mi), "n1"), on(inst("web", 1, 100, 64*Mi), "n1")},
			want:    map[string]int{"n2": 1, "n3": 1},
		},
		{
			name:    "spread counts only the same app",
			pending: placing(api.Placement{Spread: "zone"}, inst("web", 0, 100, 64*Mi)),
			nodes:   zones(),
			placed:  []api.Instance{on(inst("db", 0, 100, 0), "n1"), on(inst("db", 1, 100, 0), "n1")}, // no memory: a tie but for counts
			want:    map[string]int{"n1": 1},
		},
		{
			name:    "constraint == puts all on the matching node",
			pending: placing(api.Placement{Constraints: []string{"zone == a"}}, many("web", 6, 100, 64*Mi)...),
			nodes:   zones(),
			want:    map[string]int{"n1": 6},
		},
		{
			name:    "constraint != holds on a node without the label",
			pending: placing(api.Placement{Constraints: []string{"disk!=hdd"}}, many("web", 2, 100, 64*Mi)...),
			nodes:   []api.Node{labelled(node("n1", 4000, 4096*Mi), "disk=hdd"), node("n2", 4000, 4096*Mi), labelled(node("n3", 4000, 4096*Mi), "disk=ssd")},
			want:    map[string]int{"n2": 1, "n3": 1},
		},
		{
			name:    "constraint == fails on a node without the label",
			pending: placing(api.Placement{Constraints: []string{"disk == ssd"}}, inst("web", 0, 100, 64*Mi)),
			nodes:   []api.Node{node("n1", 4000, 4096*Mi), labelled(node("n2", 4000, 4096*Mi), "disk=hdd")},
			reasons: []string{"n1: constraint disk == ssd not met; n2: constraint disk == ssd not met"},
		},
		{
			name:    "unsatisfiable constraint: the first broken one, canonical, per node",
			pending: placing(api.Placement{Constraints: []string{"zone!=b", "zone==c"}}, many("web", 2, 100, 64*Mi)...),
			nodes:   zones(),
			reasons: []string{
				"n1: constraint zone == c not met; n2: constraint zone != b not met; n3: constraint zone != b not met",
				"n1: constraint zone == c not met; n2: constraint zone != b not met; n3: constraint zone != b not met",
			},
		},
		{
			name:    "the issue's example: memory, then constraint",
			pending: placing(api.Placement{Constraints: []string{"zone == a"}}, inst("web", 0, 100, 64*Mi)),
			nodes:   []api.Node{labelled(node("n1", 4000, 1024*Mi), "zone=a"), labelled(node("n2", 4000, 4096*Mi), "zone=b")},
			placed:  []api.Instance{on(inst("db", 0, 100, 1012*Mi), "n1")},
			reasons: []string{"n1: insufficient memory: need 64Mi, free 12Mi; n2: constraint zone == a not met"},
		},
		{
			name:    "filter order: ready, cpu, memory, constraints, max_per_node",
			pending: placing(api.Placement{Constraints: []string{"zone == a"}, MaxPerNode: 1}, inst("web", 1, 500, 512*Mi)),
			nodes: []api.Node{
				withState(labelled(node("n1", 100, 100*Mi), "zone=b"), api.NodeDown),
				labelled(node("n2", 100, 100*Mi), "zone=b"),
				labelled(node("n3", 1000, 100*Mi), "zone=b"),
				labelled(node("n4", 1000, 1024*Mi), "zone=b"),
				labelled(node("n5", 1000, 1024*Mi), "zone=a"),
			},
			placed: []api.Instance{on(inst("web", 0, 100, 64*Mi), "n5")},
			reasons: []string{"n1: node down; n2: insufficient cpu: need 500m, free 100m; n3: insufficient memory: need 512Mi, free 100Mi; " +
				"n4: constraint zone == a not met; n5: max_per_node 1 reached"},
		},
		{
			name:    "max_per_node caps the app on each node",
			pending: placing(api.Placement{MaxPerNode: 1}, many("web", 3, 100, 64*Mi)...),
			nodes:   []api.Node{node("n1", 4000, 4096*Mi), node("n2", 4000, 4096*Mi)},
			want:    map[string]int{"n1": 1, "n2": 1},
			reasons: []string{"n1: max_per_node 1 reached; n2: max_per_node 1 reached"},
		},
		{
			name:    "max_per_node counts placed instances and only the app's own",
			pending: placing(api.Placement{MaxPerNode: 2, Strategy: "binpack"}, many("web", 3, 100, 64*Mi)...),
			nodes:   []api.Node{node("n1", 4000, 1024*Mi), node("n2", 4000, 4096*Mi)},
			placed:  []api.Instance{on(inst("web", 9, 100, 64*Mi), "n1"), on(inst("db", 0, 100, 64*Mi), "n2"), on(inst("db", 1, 100, 64*Mi), "n2")},
			want:    map[string]int{"n1": 1, "n2": 2},
		},
		{
			name:    "binpack fills the fullest node first",
			pending: placing(api.Placement{Strategy: "binpack"}, many("web", 3, 100, 512*Mi)...),
			nodes:   []api.Node{node("n1", 4000, 4096*Mi), node("n2", 4000, 1024*Mi), node("n3", 4000, 2048*Mi)},
			want:    map[string]int{"n2": 2, "n3": 1},
		},
		{
			name:    "binpack: least free cpu on equal memory, then name",
			pending: placing(api.Placement{Strategy: "binpack"}, inst("web", 0, 100, 64*Mi), inst("web", 1, 100, 64*Mi)),
			nodes:   []api.Node{node("n1", 4000, 1024*Mi), node("n2", 2000, 1024*Mi)},
			want:    map[string]int{"n2": 2},
		},
		{
			name:    "binpack honours constraints",
			pending: placing(api.Placement{Strategy: "binpack", Constraints: []string{"zone == b"}}, many("web", 2, 100, 64*Mi)...),
			nodes:   []api.Node{labelled(node("n1", 4000, 128*Mi), "zone=a"), labelled(node("n2", 4000, 4096*Mi), "zone=b"), labelled(node("n3", 4000, 2048*Mi), "zone=b")},
			want:    map[string]int{"n3": 2},
		},
		{
			name:    "draining and down nodes take nothing",
			pending: many("web", 2, 100, 64*Mi),
			nodes:   []api.Node{withState(node("n1", 8000, 8192*Mi), api.NodeDraining), down(node("n2", 8000, 8192*Mi)), node("n3", 1000, 1024*Mi)},
			want:    map[string]int{"n3": 2},
		},
		{
			name:    "every node draining, down or not ready",
			pending: many("web", 1, 100, 64*Mi),
			nodes:   []api.Node{withState(node("n1", 8000, 8192*Mi), api.NodeDraining), down(node("n2", 8000, 8192*Mi)), withState(node("n3", 8000, 8192*Mi), "")},
			reasons: []string{"n1: node draining; n2: node down; n3: node not ready"},
		},
		{
			name:    "a placement that does not validate places nothing and says why",
			pending: placing(api.Placement{Strategy: "pack"}, inst("web", 0, 100, 64*Mi)),
			nodes:   zones(),
			reasons: []string{`placement.strategy: "pack" is not spread or binpack`},
		},
		{
			name: "tasks (no placement) next to an app with constraints",
			pending: append(placing(api.Placement{Constraints: []string{"zone == a"}}, many("web", 2, 100, 64*Mi)...),
				api.Instance{Name: "task/1", App: "task/q", Spec: api.AppSpec{Resources: api.Resources{CPU: 100, Memory: 64 * Mi}}},
				api.Instance{Name: "task/2", App: "task/q", Spec: api.AppSpec{Resources: api.Resources{CPU: 100, Memory: 64 * Mi}}}),
			nodes: zones(),
			want:  map[string]int{"n1": 2, "n2": 1, "n3": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds := Schedule(tt.pending, tt.nodes, tt.placed)
			if got := perNode(ds); !reflect.DeepEqual(got, nonNil(tt.want)) {
				t.Errorf("placed per node = %v, want %v\n%+v", got, tt.want, ds)
			}
			var reasons []string
			for _, d := range ds {
				if d.Node == "" {
					reasons = append(reasons, d.Reason)
				}
			}
			if !reflect.DeepEqual(reasons, tt.reasons) {
				t.Errorf("reasons =\n%q\nwant\n%q", reasons, tt.reasons)
			}
		})
	}
}

func nonNil(m map[string]int) map[string]int {
	if m == nil {
		return map[string]int{}
	}
	return m
}

// The decisions of the zone example, one by one: zone first, then
// the fewest on the node, then the most free memory, then the name.
func TestSpreadOverZoneOrder(t *testing.T) {
	ds := Schedule(placing(api.Placement{Spread: "zone"}, many("web", 6, 100, 64*Mi)...), zones(), nil)
	var got []string
	for _, d := range ds {
		got = append(got, d.Node)
	}
	want := []string{"n1", "n2", "n3", "n1", "n2", "n1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("nodes = %v, want %v", got, want)
	}
}

// Two apps whose pending instances alternate: each keeps its own counts
// (the scheduler swaps the loaded app's counts in and out).
func TestInterleavedApps(t *testing.T) {
	var pending []api.Instance
	web := placing(api.Placement{Spread: "zone"}, many("web", 4, 100, 64*Mi)...)
	db := placing(api.Placement{MaxPerNode: 1}, many("db", 4, 100, 64*Mi)...)
	for i := range 4 {
		pending = append(pending, web[i], db[i])
	}
	ds := Schedule(pending, zones(), nil)
	count := map[string]map[string]int{"web": {}, "db": {}}
	zone := map[string]string{"n1": "a", "n2": "b", "n3": "b"}
	for i, d := range ds {
		if pending[i].App == "web" {
			count["web"][zone[d.Node]]++
		} else {
			count["db"][d.Node]++
		}
	}
	if want := map[string]int{"a": 2, "b": 2}; !reflect.DeepEqual(count["web"], want) {
		t.Errorf("web per zone = %v, want %v", count["web"], want)
	}
	if want := map[string]int{"n1": 1, "n2": 1, "n3": 1, "": 1}; !reflect.DeepEqual(count["db"], want) {
		t.Errorf("db per node = %v, want %v (one unplaced)", count["db"], want)
	}
}

// An unplaceable instance reuses the reason of the one before only while
// nothing changed: another size, or a placement in between, gets its own.
func TestReasonsFollowChanges(t *testing.T) {
	nodes := []api.Node{node("n1", 1000, 256*Mi)}
	pending := []api.Instance{
		inst("web", 0, 100, 512*Mi), // too big
		inst("web", 1, 100, 1024*Mi),
		inst("web", 2, 100, 128*Mi), // fits
		inst("web", 3, 100, 512*Mi), // too big, and less is free now
	}
	ds := Schedule(pending, nodes, nil)
	want := []Decision{
		{Instance: "web-0", Reason: "n1: insufficient memory: need 512Mi, free 256Mi"},
		{Instance: "web-1", Reason: "n1: insufficient memory: need 1Gi, free 256Mi"},
		{Instance: "web-2", Node: "n1"},
		{Instance: "web-3", Reason: "n1: insufficient memory: need 512Mi, free 128Mi"},
	}
	if !reflect.DeepEqual(ds, want) {
		t.Errorf("Schedule =\n%+v\nwant\n%+v", ds, want)
	}
}

// Instances of one app from two templates may carry different rules.
func TestPlacementPerInstance(t *testing.T) {
	pending := append(placing(api.Placement{Constraints: []string{"zone == a"}}, inst("web", 0, 100, 64*Mi)),
		placing(api.Placement{Constraints: []string{"zone == b"}}, inst("web", 1, 100, 64*Mi))...)
	ds := Schedule(pending, zones(), nil)
	if ds[0].Node != "n1" || (ds[1].Node != "n2" && ds[1].Node != "n3") {
		t.Errorf("decisions %+v: want web-0 in zone a, web-1 in zone b", ds)
	}
}
