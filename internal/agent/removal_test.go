package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"berth/api"
	"berth/internal/runtime"
)

func (c *cluster) removedEvents() []api.Event {
	c.t.Helper()
	l, err := c.client.ListEvents(c.ctx, "", 1000)
	if err != nil {
		c.t.Fatal(err)
	}
	var out []api.Event
	for _, e := range l.Items {
		if e.Kind == "removed" {
			out = append(out, e)
		}
	}
	return out
}

// A watch that lost an instance (as one fed stale deletes did) must cost a
// list, never the container: the agent keeps it, takes the instance from a
// fresh list and follows again.
func TestContainerOfListedInstanceIsKeptWhenTheWatchLacksIt(t *testing.T) {
	c := newCluster(t)
	c.deploy(spec("web", 2))
	c.waitHealthy("web", 2)
	before := c.rt.Running()

	c.agent.mu.Lock()
	delete(c.agent.insts, "web-1") // the watch's view loses it
	c.agent.mu.Unlock()
	c.agent.queue.Add("web-1")

	c.waitFor("web-1 back in the agent's view", func() (bool, string) {
		c.agent.mu.Lock()
		defer c.agent.mu.Unlock()
		_, ok := c.agent.insts["web-1"]
		return ok, "not yet"
	})
	time.Sleep(500 * time.Millisecond) // a removal, had one been decided, would be under way
	after := c.rt.Running()
	if len(after) != 2 || after[0].ID != before[0].ID || after[1].ID != before[1].ID {
		t.Fatalf("containers changed: before %v, after %v", before, after)
	}
	if ev := c.removedEvents(); len(ev) != 0 {
		t.Fatalf("removed events: %+v", ev)
	}
	c.waitHealthy("web", 2)
}

// A container whose instance the server no longer has is removed, and the
// removal is an event that says why.
func TestContainerOfUnknownInstanceIsRemovedWithAnEvent(t *testing.T) {
	c := newCluster(t)
	c.deploy(spec("web", 1))
	c.waitHealthy("web", 1)
	// A container of an instance this cluster never had, named as berth names them.
	id, err := c.rt.Create(c.ctx, runtime.ContainerSpec{Name: containerName("c0ffee", "web-9", "n1"), Image: "img:1",
		Labels: map[string]string{runtime.LabelCluster: "c0ffee", runtime.LabelNode: "n1", runtime.LabelApp: "web", runtime.LabelInstance: "web-9"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.rt.Start(c.ctx, id); err != nil {
		t.Fatal(err)
	}
	c.waitFor("web-9's container removed", func() (bool, string) {
		_, err := c.rt.Inspect(c.ctx, id)
		return err != nil, "still there"
	})
	ev := c.removedEvents()
	if len(ev) != 1 || ev[0].Instance != "web-9" || ev[0].App != "web" || ev[0].Node != "n1" ||
		!strings.Contains(ev[0].Message, "no longer exists") {
		t.Fatalf("removed events = %+v, want one for web-9 saying it no longer exists", ev)
	}
	c.waitHealthy("web", 1)
}

// A stray container (labelled as this node's, not named by berth) is removed
// with an event too.
func TestStrayContainerIsRemovedWithAnEvent(t *testing.T) {
	c := newCluster(t)
	c.deploy(spec("web", 1))
	c.waitHealthy("web", 1)
	id, err := c.rt.Create(c.ctx, runtime.ContainerSpec{Name: "someone-elses", Image: "img:1",
		Labels: map[string]string{runtime.LabelCluster: "c0ffee", runtime.LabelNode: "n1", runtime.LabelInstance: "web-1"}})
	if err != nil {
		t.Fatal(err)
	}
	c.waitFor("stray removed", func() (bool, string) {
		_, err := c.rt.Inspect(c.ctx, id)
		return err != nil, "still there"
	})
	ev := c.removedEvents()
	if len(ev) != 1 || !strings.Contains(ev[0].Message, "stray container someone-elses") {
		t.Fatalf("removed events = %+v, want one for the stray", ev)
	}
	c.waitHealthy("web", 1) // web-1's own container untouched
}

// An instance reported running whose container went without an event (the
// agent missed it) is repaired by the resync: a new container, healthy.
func TestResyncRecreatesAVanishedContainer(t *testing.T) {
	c := newServer(t)
	c.resync = 300 * time.Millisecond
	c.startAgent()
	c.deploy(spec("web", 1))
	c.waitHealthy("web", 1)
	gone := c.rt.Running()[0]
	c.rt.Vanish(gone.ID)
	c.waitFor("a new container for web-1", func() (bool, string) {
		run := c.rt.Running()
		insts := c.instances("web")
		ok := len(run) == 1 && run[0].ID != gone.ID && len(insts) == 1 && insts[0].Ready() && insts[0].Status.ContainerID == run[0].ID
		return ok, fmt.Sprintf("running %v, instances %+v", run, insts)
	})
}

// An agent whose token is bound to another node stops with that error
// instead of retrying for ever.
func TestAgentWithTokenOfAnotherNodeStops(t *testing.T) {
	c := newCluster(t)
	c.waitFor("n1 registered", func() (bool, string) {
		nodes, err := c.client.ListNodes(c.ctx)
		return err == nil && len(nodes.Items) == 1, fmt.Sprint(nodes, err)
	})
	other := &Agent{Client: c.agentCl, Runtime: c.rt, Node: "n2", Address: "127.0.0.1", PayloadDir: t.TempDir(), Log: c.agent.Log}
	done := make(chan error, 1)
	go func() { done <- other.Run(c.ctx) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "token is bound to node n1") {
			t.Fatalf("Run = %v, want the bound-token error", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the agent for n2 is still retrying with n1's token")
	}
}
