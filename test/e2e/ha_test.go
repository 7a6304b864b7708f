package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// maxFailover is how long the servers may go without a leader after the
// leader is killed (the bound).
const maxFailover = 5 * time.Second

// Three `berth server` processes on a three-member embedded etcd, one
// agent. The leader is killed with SIGKILL in the middle of a rolling
// update: another server leads within 5s, the update completes, and every
// instance has exactly one running container.
func TestHAKillLeaderMidDeploy(t *testing.T) {
	c := startServers(t, 3)
	leader := c.leader(t, 30*time.Second)
	t.Logf("leader: %s", leader.url())
	for _, s := range c.list {
		var st serverStatus
		s.view(c).getJSON(t, "/v1/status", &st)
		if st.Server != s.url() || st.Leader != (s == leader) {
			t.Errorf("%s: status says server %q, leader %v; want %q, %v", s.addr, st.Server, st.Leader, s.url(), s == leader)
		}
	}
	c.startAgent(t, "n1")

	const replicas = 4
	if r := c.deployCLI(t, demoSpec("ha", imageDemo1, replicas)); r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	// A rolling update to demo:2, one instance at a time; the leader dies
	// once it is under way.
	if r := c.deployCLI(t, demoSpec("ha", imageDemo2, replicas), "--detach"); r.code != 0 {
		t.Fatalf("deploy of revision 2 failed:\n%s", r)
	}
	waitFor(t, 60*time.Second, func() (bool, string) {
		insts := c.api(t).instances(t, "ha")
		newer := 0
		for _, i := range insts {
			if i.Revision == 2 {
				newer++
			}
		}
		return newer >= 1 && newer < replicas, describe(insts)
	})
	killed := time.Now()
	leader.signal(t, syscall.SIGKILL)
	t.Logf("killed the leader %s with SIGKILL mid-update", leader.url())

	// The survivors name a new leader.
	var next string
	var took time.Duration
	ok, msg := pollUntil(maxFailover+5*time.Second, func() (bool, string) {
		var seen []string
		for _, s := range c.list {
			if !s.running() {
				continue
			}
			var st serverStatus
			if err := s.view(c).getJSONErr("/v1/status", &st); err != nil {
				seen = append(seen, err.Error())
				continue
			}
			seen = append(seen, s.addr+": leader "+st.LeaderServer)
			if st.LeaderServer != "" && st.LeaderServer != leader.url() {
				next, took = st.LeaderServer, time.Since(killed)
				return true, ""
			}
		}
		return false, strings.Join(seen, "; ")
	})
	if !ok {
		t.Fatalf("no new leader %s after the kill: %s", maxFailover+5*time.Second, msg)
	}
	t.Logf("new leader %s %s after the kill", next, took.Round(time.Millisecond))
	fmt.Printf("e2e: HA failover: new leader %s after SIGKILL of the leader\n", took.Round(time.Millisecond))
	if took > maxFailover {
		t.Errorf("new leader after %s, want under %s", took.Round(time.Millisecond), maxFailover)
	}

	// The update completes under the new leader.
	var insts []instance
	waitFor(t, 90*time.Second, func() (bool, string) {
		insts = c.api(t).instances(t, "ha")
		if len(insts) != replicas || countRoutable(insts) != replicas {
			return false, describe(insts)
		}
		for _, i := range insts {
			if i.Revision != 2 {
				return false, describe(insts)
			}
		}
		return true, ""
	})
	// The CLI fails over past the dead server too.
	if r := c.cli(t, "ps", "ha"); r.code != 0 || strings.Count(r.stdout, "running") != replicas {
		t.Errorf("berth ps with the first server dead:\n%s", r)
	}

	// No duplicates: exactly one running container per instance, and
	// exactly replicas in all, once retired ones are gone.
	waitFor(t, 30*time.Second, func() (bool, string) {
		byInstance, err := runningContainers(c.cluster, "ha")
		if err != nil {
			return false, err.Error()
		}
		total := 0
		for name, cs := range byInstance {
			total += len(cs)
			if len(cs) > 1 {
				t.Fatalf("instance %s has %d running containers: %s", name, len(cs), describeContainers(cs))
			}
		}
		return total == replicas, fmt.Sprintf("%d running containers, want %d: %v", total, replicas, byInstance)
	})
	for _, i := range insts {
		code, body, err := curl(i.Status.Address, "/")
		if err != nil || code != 200 || !strings.Contains(body, "version=2") {
			t.Errorf("GET %s (%s): %d %q %v", i.Status.Address, i.Name, code, body, err)
		}
	}

	// The new leader settles revision 2, and every server tells the same
	// history.
	var want string
	waitFor(t, 30*time.Second, func() (bool, string) {
		h := c.api(t).history(t, "ha")
		return len(h) == 2 && h[0].Outcome == "rolled out" && h[1].Outcome == "rolled out", describeHistory(h)
	})
	for _, s := range c.list {
		if !s.running() {
			continue
		}
		got := describeHistory(s.view(c).history(t, "ha"))
		if want == "" {
			want = got
		} else if got != want {
			t.Errorf("%s tells another history:\n%s\nthan:\n%s", s.addr, got, want)
		}
	}
}
