package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// keptInstance is an instance with what says it is kept for a fast rollback.
type keptInstance struct {
	instance
	KeptUntil time.Time `json:"kept_until"`
}

func (i keptInstance) kept() bool { return i.Desired == "keep" && !i.KeptUntil.IsZero() }

func (b *berth) keptInstances(t *testing.T, app string) []keptInstance {
	t.Helper()
	var l list[keptInstance]
	b.getJSON(t, "/v1/instances?app="+app, &l)
	return l.Items
}

// byContainer: instance name -> container id, of the instances that match.
func byContainer(insts []keptInstance, match func(keptInstance) bool) map[string]string {
	m := map[string]string{}
	for _, i := range insts {
		if match(i) {
			m[i.Name] = i.Status.ContainerID
		}
	}
	return m
}

func describeKept(insts []keptInstance) string {
	parts := make([]string, len(insts))
	for i, inst := range insts {
		parts[i] = fmt.Sprintf("%s@%d[desired=%s state=%s healthy=%v container=%.12s kept_until=%s]", inst.Name, inst.Revision,
			inst.Desired, inst.Status.State, inst.Status.Healthy, inst.Status.ContainerID, inst.KeptUntil.Format("15:04:05"))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// An update keeps the containers it replaces, stopped; `berth rollback`
// starts those same containers again (no new ones) within a few seconds,
// and not one request through the gateway fails meanwhile. With a short
// update.keep_previous the kept containers are removed once it is over.
func TestFastRollback(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	const host = "fast.e2e.test"
	v1 := routedSpec("fast", 3, []string{host})
	v2 := strings.Replace(v1, imageDemo1, imageDemo2, 1)
	b.mustDeploy(t, v1)
	b.waitRouted(t, host, "fast")
	first := byContainer(b.keptInstances(t, "fast"), func(i keptInstance) bool { return i.routable() })
	if len(first) != 3 {
		t.Fatalf("revision 1: %d routable instances, want 3", len(first))
	}
	rolledOut := func(app string) {
		t.Helper()
		waitFor(t, 10*time.Second, func() (bool, string) { // a rollback goes back to a revision that rolled out
			h := b.history(t, app)
			return len(h) > 0 && h[0].Outcome == "rolled out", describeHistory(h)
		})
	}
	rolledOut("fast")
	l := b.startLoad(host, 10*time.Millisecond)

	// The update: revision 1's containers stop and stay.
	b.mustDeploy(t, v2)
	var insts []keptInstance
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts = b.keptInstances(t, "fast")
		kept := byContainer(insts, func(i keptInstance) bool { return i.kept() && i.Revision == 1 && i.Status.State == "idle" })
		return fmt.Sprint(kept) == fmt.Sprint(first), "want revision 1's instances kept in their containers: " + describeKept(insts)
	})
	for name, id := range first {
		if state := dockerInspect(t, id, "{{.State.Status}}"); state != "exited" {
			t.Errorf("kept %s: container %.12s is %s, want exited (stopped, not removed)", name, id, state)
		}
	}
	rows := 0
	for _, r := range b.ps(t, "fast") {
		if _, ok := first[r.Instance]; ok {
			rows++
			if r.State != "kept" || r.Rev != "1" || !strings.Contains(r.Info, "stopped, kept for a fast rollback to revision 1 until") {
				t.Errorf("berth ps row of kept %s: %q", r.Instance, r.Line)
			}
		}
	}
	if rows != 3 {
		t.Errorf("berth ps shows %d of the 3 kept instances", rows)
	}

	// The rollback: the same containers start again.
	start := time.Now()
	r := b.cli(t, "rollback", "fast")
	took := time.Since(start)
	if r.code != 0 || !strings.Contains(r.stdout, "3/3 healthy at revision 3") {
		t.Fatalf("berth rollback fast:\n%s", r)
	}
	waitFor(t, 10*time.Second, func() (bool, string) {
		seen, fails := b.sample(host, 12)
		return fmt.Sprint(keys(seen)) == fmt.Sprint(keys(first)) && len(fails) == 0,
			fmt.Sprintf("12 GETs answered by %v (failures %v); want all of and only %v", seen, fails, keys(first))
	})
	served := time.Since(start)
	t.Logf("rollback: berth rollback returned after %s, the gateway answered only from the resumed instances after %s", took.Round(10*time.Millisecond), served.Round(10*time.Millisecond))
	if served > 10*time.Second {
		t.Errorf("the rollback took %s, want a few seconds", served.Round(10*time.Millisecond))
	}
	insts = b.keptInstances(t, "fast")
	if now := byContainer(insts, func(i keptInstance) bool { return i.routable() }); fmt.Sprint(now) != fmt.Sprint(first) {
		t.Errorf("after the rollback the routable instances run in %v, want revision 1's very containers %v: %s", now, first, describeKept(insts))
	}
	for _, id := range first {
		if img := dockerInspect(t, id, "{{.Config.Image}} {{.State.Status}}"); img != imageDemo1+" running" {
			t.Errorf("container %.12s after the rollback: %s, want %s running", id, img, imageDemo1)
		}
	}
	for i := 0; i < 6; i++ {
		if resp, err := b.gwGet(host, "/"); err != nil || resp.code != 200 || strings.Contains(resp.body, "version=2") {
			t.Errorf("the gateway after the rollback: %+v %v; want demo:1 answering", resp, err)
		}
	}
	// Revision 2's containers are kept in turn.
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts = b.keptInstances(t, "fast")
		kept := byContainer(insts, func(i keptInstance) bool { return i.kept() && i.Revision == 2 && i.Status.State == "idle" })
		return len(kept) == 3 && len(insts) == 6, "want revision 2's instances kept: " + describeKept(insts)
	})
	sent, fails, slowest := l.end()
	if len(fails) > 0 {
		t.Errorf("%d of %d requests through the gateway failed during the update and the rollback: %v", len(fails), sent, fails[:min(len(fails), 5)])
	}
	t.Logf("%d requests through the gateway, %d failed, slowest %s", sent, len(fails), slowest.Round(time.Millisecond))
	evs := b.events(t, "fast")
	if n, m := countEvents(evs, "kept"), countEvents(evs, "resumed"); n != 6 || m != 3 {
		t.Errorf("%d kept and %d resumed events, want 6 and 3:\n%s", n, m, describeEvents(evs))
	}

	// A short keep: the kept containers go once it is over.
	const short = "short.e2e.test"
	s1 := routedSpec("short", 2, []string{short}, "update: {keep_previous: 5s}\n")
	b.mustDeploy(t, s1)
	b.mustDeploy(t, strings.Replace(s1, imageDemo1, imageDemo2, 1))
	deployed := time.Now()
	if n := len(containers(t, b.cluster, "berth.app=short")); n != 4 {
		t.Logf("right after the update: %d containers of short (2 kept, stopped, expected)", n)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		cs := containers(t, b.cluster, "berth.app=short")
		insts := b.keptInstances(t, "short")
		running := 0
		for _, c := range cs {
			if c.State == "running" {
				running++
			}
		}
		return len(cs) == 2 && running == 2 && len(insts) == 2, describeContainers(cs) + "; " + describeKept(insts)
	})
	t.Logf("keep_previous 5s: the kept containers were gone %s after the update", time.Since(deployed).Round(100*time.Millisecond))
	if gone := time.Since(deployed); gone < 4*time.Second {
		t.Errorf("the kept containers went after %s, before keep_previous (5s)", gone)
	}
	expired := 0
	for _, e := range b.events(t, "short") {
		if e.Kind == "retired" && strings.HasSuffix(e.Message, ": expired") {
			expired++
		}
	}
	if expired != 2 {
		t.Errorf("%d retired events saying expired, want 2", expired)
	}
}
