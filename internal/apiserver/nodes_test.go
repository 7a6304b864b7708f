package apiserver

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"berth/api"
	"berth/internal/store"
)

func getNodes(t *testing.T, base string) map[string]api.Node {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/nodes", nil)
	req.Header.Set("Authorization", "Bearer secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var l api.List[api.Node]
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		t.Fatal(err)
	}
	out := map[string]api.Node{}
	for _, n := range l.Items {
		out[n.Name] = n
	}
	return out
}

// The node list says what instances and running tasks hold on each node;
// drain and activate change the state, and the next heartbeat keeps it.
func TestNodesAllocatedAndDrain(t *testing.T) {
	ctx := context.Background()
	hs, st := newServer(t)
	now := time.Now().UTC()
	res := api.Resources{CPU: 250, Memory: 64 << 20}
	ops := []store.Op{
		store.Nodes.Create("n1", api.Node{Name: "n1", Address: "10.0.0.1", Heartbeat: now,
			Capacity: api.Capacity{CPU: 2000, Memory: 1 << 30}, Labels: map[string]string{"zone": "a"}}),
		store.Instances.Create("web-1", api.Instance{Name: "web-1", App: "web", Node: "n1", Spec: api.AppSpec{Resources: res}}),
		store.Instances.Create("web-2", api.Instance{Name: "web-2", App: "web", Node: "n1", Spec: api.AppSpec{Resources: res}}),
		store.Instances.Create("web-3", api.Instance{Name: "web-3", App: "web", Spec: api.AppSpec{Resources: res}}), // pending
		store.Tasks.Create("0000000000000001", api.Task{ID: "0000000000000001", State: api.TaskRunning, Node: "n1",
			Spec: api.TaskSpec{Resources: api.Resources{CPU: 100, Memory: 16 << 20}}}),
		store.Tasks.Create("0000000000000002", api.Task{ID: "0000000000000002", State: api.TaskSucceeded, Node: "n1",
			Spec: api.TaskSpec{Resources: api.Resources{CPU: 100, Memory: 16 << 20}}}),
	}
	if _, err := st.Txn(ctx, ops...); err != nil {
		t.Fatal(err)
	}
	n := getNodes(t, hs.URL)["n1"]
	if n.State != api.NodeReady || n.Instances != 2 || n.Tasks != 1 || n.Allocated == nil ||
		n.Allocated.CPU != 600 || n.Allocated.Memory != 144<<20 || n.Labels["zone"] != "a" {
		t.Fatalf("n1 = %+v (allocated %+v), want ready, 2 instances, 1 task, 600m and 144Mi allocated", n, n.Allocated)
	}

	if code, e := call(t, http.MethodPost, hs.URL+"/v1/nodes/n1/drain", "secret", "", ""); code != http.StatusOK {
		t.Fatalf("drain: %d %s", code, e.Error)
	}
	if n := getNodes(t, hs.URL)["n1"]; n.State != api.NodeDraining || !n.Draining {
		t.Fatalf("after drain: %+v, want draining", n)
	}
	// The agent's heartbeat rewrites the node; the drain stays.
	if _, err := store.Nodes.Update(ctx, st, "n1", func(n *api.Node) error {
		*n = api.Node{Name: "n1", Address: "10.0.0.1", Heartbeat: time.Now().UTC(), Capacity: n.Capacity, Draining: n.Draining}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if code, e := call(t, http.MethodPost, hs.URL+"/v1/nodes/n1/activate", "secret", "", ""); code != http.StatusOK {
		t.Fatalf("activate: %d %s", code, e.Error)
	}
	if n := getNodes(t, hs.URL)["n1"]; n.State != api.NodeReady || n.Draining {
		t.Fatalf("after activate: %+v, want ready", n)
	}
	if code, _ := call(t, http.MethodPost, hs.URL+"/v1/nodes/nope/drain", "secret", "", ""); code != http.StatusNotFound {
		t.Fatalf("drain of an unknown node: %d, want 404", code)
	}
	events, _, err := store.Events.List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	kinds := 0
	for _, e := range events {
		if e.Kind == "node" && e.Node == "n1" {
			kinds++
		}
	}
	if kinds != 2 {
		t.Errorf("%d node events for n1, want 2 (drained, activated)", kinds)
	}
}
