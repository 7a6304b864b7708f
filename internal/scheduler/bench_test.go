package scheduler

import (
	"fmt"
	"runtime"
	"testing"

	"berth/api"
)

// benchCluster makes n ready nodes of 16 CPUs and 64Gi in 10 zones, every
// third one on hdd.
func benchCluster(n int) []api.Node {
	nodes := make([]api.Node, n)
	for i := range nodes {
		nodes[i] = node(fmt.Sprintf("node-%05d", i), 16000, 65536*Mi)
		disk := "ssd"
		if i%3 == 0 {
			disk = "hdd"
		}
		nodes[i].Labels = map[string]string{"zone": fmt.Sprintf("z%d", i%10), "disk": disk}
	}
	return nodes
}

// benchInstances makes perApp instances of each of apps apps, app by app as
// the controller hands them over (oldest first), each with its own copy of p.
func benchInstances(prefix string, apps, perApp int, p *api.Placement) []api.Instance {
	out := make([]api.Instance, 0, apps*perApp)
	for a := range apps {
		app := fmt.Sprintf("%s%03d", prefix, a)
		for i := range perApp {
			in := inst(app, i, 100, 64*Mi)
			if p != nil {
				pp := *p
				in.Spec.Placement = &pp
			}
			out = append(out, in)
		}
	}
	return out
}

// BenchmarkSchedule reports the cost of one placement (ns/placement) and
// the allocations of a whole call, amortised per placement.
func BenchmarkSchedule(b *testing.B) {
	rules := &api.Placement{Constraints: []string{"disk != hdd"}, Spread: "zone", Strategy: "spread"}
	packed := &api.Placement{Spread: "node", Strategy: "binpack", MaxPerNode: 5}
	cases := []struct {
		name    string
		nodes   int
		pending []api.Instance
		placed  []api.Instance
	}{
		{"nodes=1000/pending=10000/apps=100/no-rules", 1000, benchInstances("app", 100, 100, nil), nil},
		{"nodes=1000/pending=10000/apps=100/constraint+spread=zone", 1000, benchInstances("app", 100, 100, rules), nil},
		{"nodes=1000/pending=10000/apps=100/binpack+max_per_node", 1000, benchInstances("app", 100, 100, packed), nil},
		// Midway through a million: 2,000 pending per call against 200,000
		// placed (of other apps, and of the same ones) on 5,000 nodes.
		{"nodes=5000/pending=2000/apps=20/placed=200000/constraint+spread=zone", 5000,
			benchInstances("app", 20, 100, rules), placeAll(benchInstances("app", 200, 1000, rules), 5000)},
	}
	for _, tc := range cases {
		nodes := benchCluster(tc.nodes)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for b.Loop() {
				ds := Schedule(tc.pending, nodes, tc.placed)
				if ds[len(ds)-1].Node == "" {
					b.Fatalf("not placed: %s", ds[len(ds)-1].Reason)
				}
			}
			runtime.ReadMemStats(&after)
			placements := float64(b.N) * float64(len(tc.pending))
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/placements, "ns/placement")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/placements, "allocs/placement")
		})
	}
}

// placeAll puts the instances on the nodes round robin, as placed.
func placeAll(insts []api.Instance, nodes int) []api.Instance {
	for i := range insts {
		insts[i].Node = fmt.Sprintf("node-%05d", i%nodes)
	}
	return insts
}

// The hot path allocates nothing: ten times the instances, with constraints
// and a spread label, cost no more allocations than the per-call setup.
func TestScheduleAllocationsDoNotGrowWithInstances(t *testing.T) {
	nodes := benchCluster(100)
	rules := &api.Placement{Constraints: []string{"disk != hdd"}, Spread: "zone", Strategy: "spread", MaxPerNode: 100}
	allocs := func(perApp int) float64 {
		pending := benchInstances("app", 5, perApp, rules)
		return testing.AllocsPerRun(5, func() { Schedule(pending, nodes, nil) })
	}
	few, lots := allocs(20), allocs(200)
	if lots > few+2 {
		t.Errorf("1,000 placements: %.0f allocations, 100: %.0f; the hot path allocates", lots, few)
	}
}
