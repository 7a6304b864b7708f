package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"berth/api"
)

// live drops the instances kept stopped for a fast rollback.
func live(insts []api.Instance) []api.Instance {
	var out []api.Instance
	for _, i := range insts {
		if !kept(i) {
			out = append(out, i)
		}
	}
	return out
}

func kept(i api.Instance) bool { return i.Desired == api.DesiredKeep && !i.KeptUntil.IsZero() }

// An update keeps the containers it replaces stopped; a rollback to their
// revision starts those same containers, and keeps the update's in turn.
func TestFastRollbackStartsTheKeptContainers(t *testing.T) {
	c := newCluster(t)
	c.deploy(spec("web", 3))
	c.waitHealthy("web", 3)
	v1 := map[string]string{} // instance -> container
	for _, i := range c.instances("web") {
		v1[i.Name] = i.Status.ContainerID
	}
	s := spec("web", 3)
	s.Env = map[string]string{"V": "2"}
	c.deploy(s)
	c.waitFor("rolled, revision 1 kept", func() (bool, string) {
		insts := c.instances("web")
		ready, stopped := 0, 0
		for _, i := range insts {
			switch {
			case i.Revision == 2 && i.Ready():
				ready++
			case i.Revision == 1 && kept(i) && i.Status.State == api.StateIdle && v1[i.Name] == i.Status.ContainerID:
				stopped++
			}
		}
		all, _ := c.rt.List(c.ctx, nil)
		return ready == 3 && stopped == 3 && len(insts) == 6 && len(c.rt.Running()) == 3 && len(all) == 6,
			fmt.Sprintf("%d ready at revision 2, %d of revision 1 kept; %d instances, %d containers, %d running", ready, stopped, len(insts), len(all), len(c.rt.Running()))
	})

	if _, err := c.client.Rollback(c.ctx, "web", 1); err != nil {
		t.Fatal(err)
	}
	c.waitFor("rolled back onto the kept containers", func() (bool, string) {
		insts := c.instances("web")
		same, stopped := 0, 0
		for _, i := range insts {
			switch {
			case i.Revision == 1 && i.Ready() && v1[i.Name] == i.Status.ContainerID:
				same++
			case i.Revision == 2 && kept(i) && i.Status.State == api.StateIdle:
				stopped++
			}
		}
		all, _ := c.rt.List(c.ctx, nil)
		return same == 3 && stopped == 3 && len(insts) == 6 && len(c.rt.Running()) == 3 && len(all) == 6,
			fmt.Sprintf("%d ready in their old containers, %d of revision 2 kept; %d instances, %d containers", same, stopped, len(insts), len(all))
	})
	for _, i := range c.instances("web") {
		if i.Revision == 1 && (i.Status.Restarts != 0 || !i.KeptUntil.IsZero() || i.StopReason != "") {
			t.Errorf("%s after the rollback: %d restarts, kept until %s, stop reason %q; want none", i.Name, i.Status.Restarts, i.KeptUntil, i.StopReason)
		}
	}
	events, err := c.client.ListEvents(c.ctx, "web", 1000)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range events.Items {
		kinds[e.Kind]++
	}
	if kinds["kept"] != 6 || kinds["resumed"] != 3 {
		t.Errorf("events: %d kept, %d resumed; want 6 and 3", kinds["kept"], kinds["resumed"])
	}
}

// After keep_previous the kept containers are removed, though nothing
// else happens.
func TestKeptContainersGoAfterKeepPrevious(t *testing.T) {
	c := newCluster(t)
	keep := api.Duration(time.Second)
	s := spec("web", 2)
	s.Update = &api.Update{KeepPrevious: &keep}
	c.deploy(s)
	c.waitHealthy("web", 2)
	s.Env = map[string]string{"V": "2"}
	c.deploy(s)
	c.waitFor("kept", func() (bool, string) {
		n := 0
		for _, i := range c.instances("web") {
			if kept(i) {
				n++
			}
		}
		return n == 2, fmt.Sprintf("%d kept", n)
	})
	c.waitHealthy("web", 2) // the kept ones gone, their containers too
	for _, i := range c.instances("web") {
		if i.Revision != 2 {
			t.Errorf("%s of revision %d left", i.Name, i.Revision)
		}
	}
	if all, _ := c.rt.List(c.ctx, nil); len(all) != 2 {
		t.Errorf("%d containers left, want the 2 running", len(all))
	}
	events, err := c.client.ListEvents(c.ctx, "web", 1000)
	if err != nil {
		t.Fatal(err)
	}
	expired := 0
	for _, e := range events.Items {
		if e.Kind == "retired" && strings.HasSuffix(e.Message, ": expired") {
			expired++
		}
	}
	if expired != 2 {
		t.Errorf("%d retired events saying expired, want 2", expired)
	}
}
