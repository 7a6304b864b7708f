package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestRestartsLoseNothing restarts berth up 20 times, by SIGTERM and by
// SIGKILL, down from 0 to 10 s, with a routed app, an app that scales to
// zero and is idle at some of the restarts, and instance names reused (a
// scale to 0 and back before the restarts, so that the store's history
// holds deletes of names that exist again). After every restart: the same
// containers, one per instance, every instance healthy (or idle), no
// container removed, and every routed app answering 200 through the
// gateway soon after berth answers.
func TestRestartsLoseNothing(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.mustDeploy(t, routedSpec("web", 2, []string{"web.test"}))
	b.mustDeploy(t, demoSpec("hello", imageDemo1, 3))
	if r := b.deploy(t, routedSpec("lazy", 1, []string{"lazy.test"}, "idle: {stop_after: 2s}\n"), "--detach"); r.code != 0 {
		t.Fatalf("deploy lazy:\n%s", r)
	}
	for _, app := range []string{"web", "hello"} {
		for _, n := range []string{"0", map[string]string{"web": "2", "hello": "3"}[app]} {
			if r := b.cli(t, "scale", app, n); r.code != 0 {
				t.Fatalf("berth scale %s %s:\n%s", app, n, r)
			}
		}
	}
	want := map[string]int{"web": 2, "hello": 3, "lazy": 1}
	baseline := b.waitSettled(t, want)
	t.Logf("containers: %s", describeContainers(baseline))
	removed := countEvents(b.events(t, ""), "removed") // by the scales to 0

	downs := []time.Duration{0, 9 * time.Second, 2 * time.Second, 10 * time.Second, 5 * time.Second}
	var slowest time.Duration
	// 15 rounds: every pause of downs with both signals (5 x 3 rounds).
	for round := 1; round <= 15; round++ {
		down := downs[round%len(downs)]
		if round%2 == 1 {
			time.Sleep(2500 * time.Millisecond) // lazy idles before this restart
		}
		how := "SIGTERM"
		if round%3 == 0 {
			how = "SIGKILL"
			b.kill9(t)
		} else {
			b.stop(t)
		}
		time.Sleep(down)
		b.launch(t)
		routed := b.waitGateway(t, "web.test", 10*time.Second)
		slowest = max(slowest, routed)
		t.Logf("round %d: %s, down %s: web answers through the gateway %s after berth", round, how, down, routed.Round(10*time.Millisecond))

		if r, err := b.gwGet("lazy.test", "/"); err != nil || r.code != 200 {
			t.Fatalf("round %d: lazy.test through the gateway: %v %d %q", round, err, r.code, r.body)
		}
		got := b.waitSettled(t, want)
		if !sameIDs(got, baseline) {
			t.Fatalf("round %d (%s, down %s): containers changed:\nbefore %s\nnow    %s", round, how, down, describeContainers(baseline), describeContainers(got))
		}
		if evs := b.events(t, ""); countEvents(evs, "removed") != removed {
			t.Fatalf("round %d: %d removed events since the restarts began: %s", round, countEvents(evs, "removed")-removed, describeEvents(evs))
		}
	}
	t.Logf("slowest route after a restart: %s", slowest.Round(10*time.Millisecond))

	// A container removed behind berth's back while it was down: its
	// instance, still recorded as running, gets a new container.
	b.kill9(t)
	var gone container
	for _, c := range baseline {
		if c.Instance == "hello-2" {
			gone = c
		}
	}
	if out, err := dockerCLI(30*time.Second, "rm", "-f", gone.ID); err != nil {
		t.Fatalf("docker rm -f %s: %v: %s", gone.ID, err, out)
	}
	b.launch(t)
	got := b.waitSettled(t, want)
	for _, c := range got {
		if c.Instance == "hello-2" && c.ID == gone.ID {
			t.Fatalf("hello-2 still names the removed container")
		}
	}
}

// waitGateway waits until host answers 200 through the gateway five times
// in a row and returns how long that took.
func (b *berth) waitGateway(t *testing.T, host string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ok := 0
	var last string
	for time.Since(start) < within {
		r, err := b.gwGet(host, "/")
		if err == nil && r.code == 200 {
			if ok++; ok == 5 {
				return time.Since(start)
			}
			continue
		}
		ok, last = 0, fmt.Sprintf("%d %q %v", r.code, strings.TrimSpace(r.body), err)
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s through the gateway: no 5 answers of 200 in a row within %s; last: %s", host, within, last)
	return 0
}

// waitSettled waits until every app has its count of instances, each with
// exactly one container that its record names, running and routable (an
// idle app's instance: idle, its container kept), and returns the
// containers.
func (b *berth) waitSettled(t *testing.T, want map[string]int) []container {
	t.Helper()
	var cs []container
	waitFor(t, 30*time.Second, func() (bool, string) {
		cs = containers(t, b.cluster)
		perInst := map[string][]container{}
		for _, c := range cs {
			perInst[c.Instance] = append(perInst[c.Instance], c)
		}
		total := 0
		apps := make([]string, 0, len(want))
		for app := range want {
			apps = append(apps, app)
		}
		sort.Strings(apps)
		for _, app := range apps {
			insts := b.instances(t, app)
			total += len(insts)
			if len(insts) != want[app] {
				return false, fmt.Sprintf("%s: %d instances, want %d: %s", app, len(insts), want[app], describe(insts))
			}
			for _, i := range insts {
				list := perInst[i.Name]
				if len(list) != 1 || list[0].ID != i.Status.ContainerID {
					return false, fmt.Sprintf("%s: want one container, the record's: %s; %s", i.Name, describe(insts), describeContainers(cs))
				}
				idle := i.Status.State == "idle" && list[0].State == "exited"
				if !idle && !(i.routable() && list[0].State == "running") {
					return false, fmt.Sprintf("%s: neither routable nor idle: %s", i.Name, describe(insts))
				}
			}
		}
		if len(cs) != total {
			return false, fmt.Sprintf("%d containers for %d instances: %s", len(cs), total, describeContainers(cs))
		}
		return true, ""
	})
	return cs
}
