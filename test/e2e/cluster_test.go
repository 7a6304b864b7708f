package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// clusterTTL is the node TTL the cluster tests' servers run with
// (startServers passes --node-ttl 5s).
const clusterTTL = 5 * time.Second

// threeNodes is a server and the three agents: n1 in zone a, n2
// and n3 in zone b.
func threeNodes(t *testing.T) (*servers, map[string]*bagent) {
	t.Helper()
	c := startServers(t, 1)
	agents := map[string]*bagent{
		"n1": c.startAgent(t, "n1", "zone=a"),
		"n2": c.startAgent(t, "n2", "zone=b"),
		"n3": c.startAgent(t, "n3", "zone=b"),
	}
	return c, agents
}

// perNode counts an app's wanted instances per node ("" for unplaced).
func perNode(insts []instance) map[string]int {
	out := map[string]int{}
	for _, i := range insts {
		if i.Desired == "run" {
			out[i.Node]++
		}
	}
	return out
}

// placedSpec is the demo app with a placement block.
func placedSpec(name string, replicas int, placement string) string {
	return demoSpec(name, imageDemo1, replicas) + "placement: " + placement + "\n"
}

// Six replicas spread 2/2/2; a constraint on zone a puts all on n1; a
// constraint no node meets leaves the instance pending, and `berth ps`
// says why for every node.
func TestClusterPlacement(t *testing.T) {
	c, _ := threeNodes(t)
	api := c.api(t)

	if r := c.deployCLI(t, demoSpec("spread", imageDemo1, 6)); r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	var insts []instance
	waitFor(t, 90*time.Second, func() (bool, string) {
		insts = api.instances(t, "spread")
		return len(insts) == 6 && countRoutable(insts) == 6, describe(insts)
	})
	if got := perNode(insts); got["n1"] != 2 || got["n2"] != 2 || got["n3"] != 2 {
		t.Errorf("6 replicas on 3 nodes: %v, want 2/2/2: %s", got, describe(insts))
	}

	if r := c.deployCLI(t, placedSpec("zonea", 3, `{constraints: ["zone == a"]}`)); r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	waitFor(t, 90*time.Second, func() (bool, string) {
		insts = api.instances(t, "zonea")
		return len(insts) == 3 && countRoutable(insts) == 3, describe(insts)
	})
	if got := perNode(insts); got["n1"] != 3 {
		t.Errorf("constraint zone == a: %v, want all 3 on n1: %s", got, describe(insts))
	}

	// The deploy of an app that fits nowhere does not succeed: it waits
	// for health, and says why nothing runs.
	r := c.deployCLI(t, placedSpec("nowhere", 1, `{constraints: ["zone == c"]}`), "--timeout", "5s")
	if r.code == 0 {
		t.Errorf("deploy of an app no node can take succeeded:\n%s", r)
	}
	want := []string{"n1: constraint zone == c not met", "n2: constraint zone == c not met", "n3: constraint zone == c not met"}
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts = api.instances(t, "nowhere")
		return len(insts) == 1 && insts[0].Node == "" && strings.Contains(insts[0].Reason, want[2]), describe(insts)
	})
	rows := api.ps(t, "nowhere")
	if len(rows) != 1 || rows[0].State != "pending" {
		t.Fatalf("berth ps nowhere: %+v, want one pending instance", rows)
	}
	for _, w := range want {
		if !strings.Contains(rows[0].Line, w) {
			t.Errorf("berth ps nowhere: %q does not say %q", rows[0].Line, w)
		}
	}
	unschedulable := false
	for _, e := range api.events(t, "nowhere") {
		if e.Kind == "unschedulable" && strings.Contains(e.Message, want[0]) && strings.Contains(e.Message, want[2]) {
			unschedulable = true
		}
	}
	if !unschedulable {
		t.Errorf("no unschedulable event naming every node: %+v", api.events(t, "nowhere"))
	}
}

// SIGSTOP of n2's agent: n2 turns down and its instances are replaced on
// n1 and n3 within the TTL and 5 s. SIGCONT: n2's agent removes its stale
// containers, and exactly the replicas run.
func TestClusterNodeLoss(t *testing.T) {
	c, agents := threeNodes(t)
	api := c.api(t)
	if r := c.deployCLI(t, demoSpec("loss", imageDemo1, 6)); r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	var insts []instance
	waitFor(t, 90*time.Second, func() (bool, string) {
		insts = api.instances(t, "loss")
		return len(insts) == 6 && countRoutable(insts) == 6 && perNode(insts)["n2"] == 2, describe(insts)
	})
	lost := map[string]bool{}
	for _, i := range insts {
		if i.Node == "n2" {
			lost[i.Name] = true
		}
	}

	agents["n2"].signal(t, syscall.SIGSTOP)
	stopped := time.Now()
	// (The harness's stop sends SIGCONT too, should the test end here.)

	// Replaced: 6 wanted instances running on n1 and n3, none of them on n2.
	waitFor(t, clusterTTL+30*time.Second, func() (bool, string) {
		insts = api.instances(t, "loss")
		running := 0
		for _, i := range insts {
			if i.Desired == "run" && i.Node != "n2" && i.Node != "" && i.Status.State == "running" {
				running++
			}
		}
		return running == 6 && perNode(insts)["n2"] == 0, describe(insts)
	})
	replaced := time.Since(stopped)
	t.Logf("node loss: n2's instances replaced and running %s after its agent stopped (TTL %s)", replaced.Round(100*time.Millisecond), clusterTTL)
	if replaced > clusterTTL+5*time.Second {
		t.Errorf("replacements running %s after the agent stopped, want within TTL + 5s = %s", replaced, clusterTTL+5*time.Second)
	}
	var nodes list[node]
	api.getJSON(t, "/v1/nodes", &nodes)
	for _, n := range nodes.Items {
		if n.Name == "n2" && n.State != "down" {
			t.Errorf("n2 is %s while its agent is stopped, want down", n.State)
		}
	}
	lostEvents := 0
	for _, e := range api.events(t, "loss") {
		if e.Kind == "lost" && lost[e.Instance] && strings.Contains(e.Message, "node n2 is down") {
			lostEvents++
		}
	}
	if lostEvents != 2 {
		t.Errorf("%d lost events for n2's instances, want 2 saying node n2 is down: %+v", lostEvents, api.events(t, "loss"))
	}
	// The old containers still run on n2: nobody could stop them.
	if cs := containers(t, c.cluster, "berth.app=loss", "berth.node=n2"); len(cs) != 2 {
		t.Logf("n2 while stopped: %s", describeContainers(cs))
	}

	agents["n2"].signal(t, syscall.SIGCONT)
	waitFor(t, 60*time.Second, func() (bool, string) {
		byInst, err := runningContainers(c.cluster, "loss")
		if err != nil {
			return false, err.Error()
		}
		onN2 := containers(t, c.cluster, "berth.app=loss", "berth.node=n2")
		insts = api.instances(t, "loss")
		total := 0
		for _, cs := range byInst {
			total += len(cs)
		}
		return len(onN2) == 0 && total == 6 && len(byInst) == 6 && len(insts) == 6 && countRoutable(insts) == 6,
			fmt.Sprintf("n2: %s; running: %d containers for %d instances; %s", describeContainers(onN2), total, len(byInst), describe(insts))
	})
	c.waitNodeReady(t, "n2")
}

// Drain n3 while requests flow through a gateway: its instances move away
// one at a time and no request fails. Activate lets it take new ones.
func TestClusterDrainNoFailedRequest(t *testing.T) {
	c, _ := threeNodes(t)
	api := c.api(t)
	gw := c.startGateway(t)
	const host = "drain.e2e.test"
	spec := demoSpec("drain", imageDemo1, 6) + "routes: [" + host + "]\n"
	if r := c.deployCLI(t, spec); r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	var insts []instance
	waitFor(t, 90*time.Second, func() (bool, string) {
		insts = api.instances(t, "drain")
		return len(insts) == 6 && countRoutable(insts) == 6 && perNode(insts)["n3"] == 2, describe(insts)
	})
	waitFor(t, 30*time.Second, func() (bool, string) {
		r, err := gw.gwGet(host, "/")
		return err == nil && r.code == 200, fmt.Sprintf("%d %v", r.code, err)
	})

	var ok, failed atomic.Int64
	var failures sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := gw.gwGet(host, "/")
				if err != nil || r.code != 200 {
					failed.Add(1)
					failures.Store(fmt.Sprintf("%d %v %q", r.code, err, r.body), true)
					continue
				}
				ok.Add(1)
			}
		})
	}
	r := c.cli(t, "node", "drain", "n3")
	if r.code != 0 || !strings.Contains(r.stdout, "n3: draining") {
		t.Fatalf("berth node drain n3:\n%s", r)
	}
	waitFor(t, 120*time.Second, func() (bool, string) {
		insts = api.instances(t, "drain")
		onN3 := containers(t, c.cluster, "berth.app=drain", "berth.node=n3")
		return len(insts) == 6 && countRoutable(insts) == 6 && perNode(insts)["n3"] == 0 && len(onN3) == 0,
			fmt.Sprintf("n3: %s; %s", describeContainers(onN3), describe(insts))
	})
	time.Sleep(time.Second) // requests after the last move
	close(stop)
	wg.Wait()
	t.Logf("drain: %d requests answered 200 during the drain, %d failed", ok.Load(), failed.Load())
	if failed.Load() > 0 {
		var fs []string
		failures.Range(func(k, _ any) bool { fs = append(fs, k.(string)); return true })
		t.Errorf("%d requests failed during the drain: %s", failed.Load(), strings.Join(fs, "; "))
	}
	if ok.Load() < 50 {
		t.Errorf("only %d requests during the drain: the test did not exercise it", ok.Load())
	}
	moved := 0
	for _, e := range api.events(t, "drain") {
		if e.Kind == "retired" && e.Node == "n3" && strings.Contains(e.Message, "moved off node n3: draining") {
			moved++
		}
	}
	if moved != 2 {
		t.Errorf("%d retired events moving instances off n3, want 2", moved)
	}
	nodesOut := c.cli(t, "nodes")
	if !regexp.MustCompile(`(?m)^n3\s+draining\s`).MatchString(nodesOut.stdout) {
		t.Errorf("berth nodes does not show n3 draining:\n%s", nodesOut.stdout)
	}

	if r := c.cli(t, "node", "activate", "n3"); r.code != 0 || !strings.Contains(r.stdout, "n3: ready") {
		t.Fatalf("berth node activate n3:\n%s", r)
	}
	if r := c.cli(t, "scale", "drain", "9"); r.code != 0 {
		t.Fatalf("scale failed:\n%s", r)
	}
	waitFor(t, 90*time.Second, func() (bool, string) {
		insts = api.instances(t, "drain")
		return countRoutable(insts) == 9 && perNode(insts)["n3"] > 0, describe(insts)
	})
}

// An agent restarted (SIGTERM, start) adopts its containers: the same
// container ids, no restart.
func TestClusterAgentRestartAdopts(t *testing.T) {
	c := startServers(t, 1)
	a := c.startAgent(t, "n1")
	api := c.api(t)
	if r := c.deployCLI(t, demoSpec("adopt", imageDemo1, 2)); r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	var before []instance
	waitFor(t, 90*time.Second, func() (bool, string) {
		before = api.instances(t, "adopt")
		return len(before) == 2 && countRoutable(before) == 2, describe(before)
	})
	ids := func() []string {
		var out []string
		for _, cs := range containers(t, c.cluster, "berth.app=adopt") {
			out = append(out, cs.ID+"/"+cs.State)
		}
		sort.Strings(out)
		return out
	}
	was := ids()
	a.stop(t)
	a.start(t)
	c.waitNodeReady(t, "n1")
	// Past a resync of the agent, so it has looked at every container.
	time.Sleep(12 * time.Second)
	after := api.instances(t, "adopt")
	if now := ids(); strings.Join(now, " ") != strings.Join(was, " ") {
		t.Errorf("containers changed across an agent restart: %v, then %v", was, now)
	}
	if countRoutable(after) != 2 {
		t.Errorf("after the agent restart: %s, want 2 healthy", describe(after))
	}
	for _, i := range after {
		if i.Status.Restarts != 0 {
			t.Errorf("%s restarted across an agent restart: %s", i.Name, i)
		}
	}
}

// startGateway starts `berth gateway` against the cluster's servers.
func (c *servers) startGateway(t *testing.T) *berth {
	t.Helper()
	gw := &berth{gwAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))}
	p := &proc{name: "gateway", logPath: filepath.Join(t.TempDir(), "gateway.log"),
		args: []string{"gateway", "--server", c.addrs(), "--token", c.token, "--listen", gw.gwAddr,
			"--metrics-addr", net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))}}
	p.start(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- tail of the gateway's log ----\n%s", tailFile(p.logPath, 40))
		}
		p.stop(t)
	})
	waitFor(t, 30*time.Second, func() (bool, string) {
		conn, err := net.DialTimeout("tcp", gw.gwAddr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	})
	return gw
}
