package scheduler

import (
	"fmt"
	"reflect"
	"slices"
	"testing"

	"berth/api"
	"pgregory.net/rapid"
)

const Mi = api.Bytes(1 << 20)

func node(name string, cpu api.MilliCPU, mem api.Bytes) api.Node {
	return api.Node{Name: name, State: api.NodeReady, Capacity: api.Capacity{CPU: cpu, Memory: mem}}
}

func down(n api.Node) api.Node { n.State = api.NodeDown; return n }

func inst(app string, i int, cpu api.MilliCPU, mem api.Bytes) api.Instance {
	return api.Instance{
		Name: fmt.Sprintf("%s-%d", app, i), App: app, Index: i,
		Spec: api.AppSpec{Name: app, Resources: api.Resources{CPU: cpu, Memory: mem}},
	}
}

func on(i api.Instance, node string) api.Instance { i.Node = node; return i }

// many makes n instances of app, each asking for cpu and mem.
func many(app string, n int, cpu api.MilliCPU, mem api.Bytes) []api.Instance {
	var out []api.Instance
	for i := range n {
		out = append(out, inst(app, i, cpu, mem))
	}
	return out
}

func TestSchedule(t *testing.T) {
	tests := []struct {
		name    string
		pending []api.Instance
		nodes   []api.Node
		placed  []api.Instance
		want    []Decision
	}{
		{
			name:    "fits",
			pending: []api.Instance{inst("web", 0, 250, 64*Mi)},
			nodes:   []api.Node{node("n1", 1000, 1024*Mi)},
			want:    []Decision{{Instance: "web-0", Node: "n1"}},
		},
		{
			name:    "exact fit",
			pending: []api.Instance{inst("web", 0, 250, 64*Mi)},
			nodes:   []api.Node{node("n1", 1000, 128*Mi)},
			placed:  []api.Instance{on(inst("db", 0, 750, 64*Mi), "n1")},
			want:    []Decision{{Instance: "web-0", Node: "n1"}},
		},
		{
			name:    "insufficient cpu",
			pending: []api.Instance{inst("web", 0, 250, 64*Mi)},
			nodes:   []api.Node{node("n1", 1000, 1024*Mi)},
			placed:  []api.Instance{on(inst("db", 0, 900, 64*Mi), "n1")},
			want:    []Decision{{Instance: "web-0", Reason: "n1: insufficient cpu: need 250m, free 100m"}},
		},
		{
			name:    "insufficient memory",
			pending: []api.Instance{inst("web", 0, 250, 64*Mi)},
			nodes:   []api.Node{node("n2", 4000, 512*Mi), node("n1", 4000, 512*Mi)},
			placed:  []api.Instance{on(inst("db", 0, 100, 512*Mi), "n1"), on(inst("db", 1, 100, 480*Mi), "n2")},
			want:    []Decision{{Instance: "web-0", Reason: "n1: insufficient memory: need 64Mi, free 0; n2: insufficient memory: need 64Mi, free 32Mi"}},
		},
		{
			name:    "node down",
			pending: []api.Instance{inst("web", 0, 250, 64*Mi)},
			nodes:   []api.Node{down(node("n1", 1000, 1024*Mi)), {Name: "n2", State: "draining", Capacity: api.Capacity{CPU: 1000, Memory: 1024 * Mi}}},
			want:    []Decision{{Instance: "web-0", Reason: "n1: node down; n2: node draining"}},
		},
		{
			name:    "down node skipped for a ready one",
			pending: []api.Instance{inst("web", 0, 250, 64*Mi)},
			nodes:   []api.Node{down(node("n1", 8000, 8192*Mi)), node("n2", 1000, 1024*Mi)},
			want:    []Decision{{Instance: "web-0", Node: "n2"}},
		},
		{
			name:    "no nodes",
			pending: []api.Instance{inst("web", 0, 250, 64*Mi)},
			want:    []Decision{{Instance: "web-0", Reason: "no nodes registered"}},
		},
		{
			name:    "placed on unknown nodes do not count",
			pending: []api.Instance{inst("web", 0, 1000, 1024*Mi)},
			nodes:   []api.Node{node("n1", 1000, 1024*Mi)},
			placed:  []api.Instance{on(inst("db", 0, 1000, 1024*Mi), "gone")},
			want:    []Decision{{Instance: "web-0", Node: "n1"}},
		},
		{
			name:    "spread before free memory",
			pending: []api.Instance{inst("web", 1, 100, 64*Mi)},
			nodes:   []api.Node{node("big", 8000, 8192*Mi), node("small", 1000, 512*Mi)},
			placed:  []api.Instance{on(inst("web", 0, 100, 64*Mi), "big")},
			want:    []Decision{{Instance: "web-1", Node: "small"}},
		},
		{
			name:    "most free memory, then name",
			pending: many("web", 3, 100, 64*Mi),
			nodes:   []api.Node{node("c", 1000, 1024*Mi), node("b", 1000, 1024*Mi), node("a", 1000, 512*Mi)},
			want: []Decision{
				{Instance: "web-0", Node: "b"}, // b and c tie on memory: name
				{Instance: "web-1", Node: "c"}, // spread
				{Instance: "web-2", Node: "a"},
			},
		},
		{
			name:    "spread across 3 nodes",
			pending: many("web", 6, 100, 64*Mi),
			nodes:   []api.Node{node("n1", 4000, 4096*Mi), node("n2", 4000, 4096*Mi), node("n3", 4000, 4096*Mi)},
			want: []Decision{
				{Instance: "web-0", Node: "n1"}, {Instance: "web-1", Node: "n2"}, {Instance: "web-2", Node: "n3"},
				{Instance: "web-3", Node: "n1"}, {Instance: "web-4", Node: "n2"}, {Instance: "web-5", Node: "n3"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Schedule(tt.pending, tt.nodes, tt.placed)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Schedule =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// 30 instances onto a node that fits 20: the decisions count against each
// other, so exactly 20 are placed and the other 10 say why not.
func TestScheduleDoesNotOverbook(t *testing.T) {
	pending := many("web", 30, 100, 64*Mi)
	nodes := []api.Node{node("n1", 2000, 4096*Mi)} // cpu for 20, memory for 64
	got := Schedule(pending, nodes, nil)
	if len(got) != 30 {
		t.Fatalf("got %d decisions, want 30", len(got))
	}
	for i, d := range got {
		if i < 20 && d.Node != "n1" {
			t.Errorf("decision %d = %+v, want n1", i, d)
		}
		if i >= 20 && (d.Node != "" || d.Reason != "n1: insufficient cpu: need 100m, free 0") {
			t.Errorf("decision %d = %+v, want unplaced for cpu", i, d)
		}
	}
}

func TestScheduleDeterministic(t *testing.T) {
	nodes := []api.Node{node("n1", 2000, 2048*Mi), node("n2", 2000, 2048*Mi), down(node("n3", 2000, 2048*Mi)), node("n4", 1000, 4096*Mi)}
	pending := append(many("web", 10, 300, 200*Mi), many("api", 10, 200, 300*Mi)...)
	placed := []api.Instance{on(inst("db", 0, 500, 512*Mi), "n2")}
	want := Schedule(pending, nodes, placed)
	n := slices.Clone(nodes)
	for range 20 {
		// The order of the nodes must not matter.
		reorder(n)
		if got := Schedule(pending, n, placed); !reflect.DeepEqual(got, want) {
			t.Fatalf("Schedule with nodes %v =\n%+v\nwant\n%+v", names(n), got, want)
		}
	}
}

// reorder swaps the ends and reverses the middle: a cheap deterministic
// permutation whose repeats go through several orders.
func reorder(n []api.Node) {
	if len(n) > 1 {
		n[0], n[len(n)-1] = n[len(n)-1], n[0]
		slices.Reverse(n[1:])
	}
}

func names(nodes []api.Node) []string {
	var s []string
	for _, n := range nodes {
		s = append(s, n.Name)
	}
	return s
}

func TestAllocated(t *testing.T) {
	got := Allocated([]api.Instance{
		on(inst("a", 0, 250, 64*Mi), "n1"),
		on(inst("a", 1, 250, 64*Mi), "n1"),
		on(inst("b", 0, 1000, 1024*Mi), "n2"),
		inst("c", 0, 500, 512*Mi), // not placed: holds nothing
	})
	want := map[string]api.Capacity{
		"n1": {CPU: 500, Memory: 128 * Mi},
		"n2": {CPU: 1000, Memory: 1024 * Mi},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Allocated = %v, want %v", got, want)
	}
}

// Property tests.

type world struct {
	nodes   []api.Node
	placed  []api.Instance
	pending []api.Instance
}

var apps = []string{"web", "api", "db", "worker"}

// genNodes makes up to 6 nodes of random size, most of them ready.
func genNodes(t *rapid.T) []api.Node {
	n := rapid.IntRange(0, 6).Draw(t, "nodes")
	var nodes []api.Node
	for i := range n {
		nd := node(fmt.Sprintf("n%d", i),
			api.MilliCPU(rapid.Int64Range(0, 8000).Draw(t, "cpu")),
			api.Bytes(rapid.Int64Range(0, 8192).Draw(t, "mem"))*Mi)
		nd.State = rapid.SampledFrom([]string{api.NodeReady, api.NodeReady, api.NodeDown, ""}).Draw(t, "state")
		nodes = append(nodes, nd)
	}
	return nodes
}

// genInstances makes up to 40 instances of a few apps; label keeps the names
// of different sets apart.
func genInstances(t *rapid.T, label string) []api.Instance {
	n := rapid.IntRange(0, 40).Draw(t, label)
	var out []api.Instance
	for i := range n {
		app := rapid.SampledFrom(apps).Draw(t, "app")
		cpu := api.MilliCPU(rapid.Int64Range(0, 2000).Draw(t, "icpu"))
		mem := api.Bytes(rapid.Int64Range(0, 2048).Draw(t, "imem")) * Mi
		out = append(out, inst(app, i, cpu, mem))
		out[i].Name = fmt.Sprintf("%s-%s-%d", label, app, i)
	}
	return out
}

func genWorld(t *rapid.T) world {
	w := world{nodes: genNodes(t)}
	// Already placed instances, kept within capacity as the scheduler would.
	placed := genInstances(t, "placed")
	for i, d := range Schedule(placed, w.nodes, nil) {
		if d.Node != "" {
			w.placed = append(w.placed, on(placed[i], d.Node))
		}
	}
	w.pending = genInstances(t, "pending")
	return w
}

// apply returns placed plus the instances that decisions put on a node.
func apply(placed, pending []api.Instance, ds []Decision) []api.Instance {
	all := slices.Clone(placed)
	for i, d := range ds {
		if d.Node != "" {
			all = append(all, on(pending[i], d.Node))
		}
	}
	return all
}

func TestPropertyScheduling(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		w := genWorld(t)
		ds := Schedule(w.pending, w.nodes, w.placed)
		if len(ds) != len(w.pending) {
			t.Fatalf("%d decisions for %d pending", len(ds), len(w.pending))
		}
		byName := map[string]api.Node{}
		for _, n := range w.nodes {
			byName[n.Name] = n
		}
		for i, d := range ds {
			if d.Instance != w.pending[i].Name {
				t.Fatalf("decision %d is for %q, want %q", i, d.Instance, w.pending[i].Name)
			}
			if d.Node == "" {
				if d.Reason == "" {
					t.Fatalf("unplaced %s has no reason", d.Instance)
				}
				continue
			}
			if d.Reason != "" {
				t.Fatalf("placed %s has reason %q", d.Instance, d.Reason)
			}
			n, ok := byName[d.Node]
			if !ok || n.State != api.NodeReady {
				t.Fatalf("%s placed on %q which is not a ready node (%+v)", d.Instance, d.Node, n)
			}
		}
		for name, a := range Allocated(apply(w.placed, w.pending, ds)) {
			c := byName[name].Capacity
			if a.CPU > c.CPU || a.Memory > c.Memory {
				t.Fatalf("node %s overbooked: allocated %+v, capacity %+v", name, a, c)
			}
		}
		// Same input, same answer.
		if again := Schedule(w.pending, w.nodes, w.placed); !reflect.DeepEqual(again, ds) {
			t.Fatalf("not deterministic:\n%+v\n%+v", ds, again)
		}
	})
}

func TestPropertySpread(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 6).Draw(t, "nodes")
		pending := genInstances(t, "pending")
		// Identical ready nodes, each big enough for all pending instances.
		var sum api.Capacity
		for _, p := range pending {
			sum.CPU += p.Spec.Resources.CPU
			sum.Memory += p.Spec.Resources.Memory
		}
		var nodes []api.Node
		for i := range n {
			nodes = append(nodes, node(fmt.Sprintf("n%d", i), sum.CPU, sum.Memory))
		}
		ds := Schedule(pending, nodes, nil)
		count := map[string]map[string]int{} // app -> node -> instances
		for i, d := range ds {
			if d.Node == "" {
				t.Fatalf("%s not placed with enough capacity: %s", d.Instance, d.Reason)
			}
			app := pending[i].App
			if count[app] == nil {
				count[app] = map[string]int{}
			}
			count[app][d.Node]++
		}
		for app, perNode := range count {
			lo, hi := len(pending), 0
			for _, nd := range nodes {
				lo, hi = min(lo, perNode[nd.Name]), max(hi, perNode[nd.Name])
			}
			if hi-lo > 1 {
				t.Fatalf("app %s spread unevenly: %v", app, perNode)
			}
		}
	})
}
