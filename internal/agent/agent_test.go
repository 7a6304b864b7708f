package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"berth/api"
	"berth/internal/apiserver"
	"berth/internal/client"
	"berth/internal/controller"
	"berth/internal/runtime/fake"
	"berth/internal/store"
	"berth/internal/tasklog"
)

// cluster is a server (real embedded etcd, API, controller, task
// controller) and one agent on the fake runtime, all in-process.
type cluster struct {
	t          *testing.T
	rt         *fake.Runtime
	client     *client.Client
	agentCl    *client.Client // with an agent token: registers n1 and acts for it
	ctx        context.Context
	stopAg     context.CancelFunc
	payloadDir string
	st         *store.Store
	agent      *Agent        // the running agent
	resync     time.Duration // the agent's Resync; 0: its default
}

func newCluster(t *testing.T) *cluster {
	c := newServer(t)
	c.startAgent()
	return c
}

// newServer is newCluster without starting the agent.
func newServer(t *testing.T) *cluster {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(ctx, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	id, err := st.ClusterID(ctx, func() string { return "c0ffee" })
	if err != nil {
		t.Fatal(err)
	}
	logs, err := tasklog.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := &apiserver.Server{Store: st, Token: "t", Cluster: id, Log: log, TaskLogs: logs}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	tasks := &controller.Tasks{Store: st, Log: log, Cluster: id, Logs: logs}
	ctl := &controller.Controller{Store: st, Log: log, Tasks: tasks}
	go ctl.Run(ctx)
	go tasks.Run(ctx)
	agentToken, err := apiserver.EnsureAgentToken(ctx, st, filepath.Join(t.TempDir(), "agent-token"), "n1")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, rt: fake.New(), client: client.New(hs.URL, "t"), agentCl: client.New(hs.URL, agentToken),
		ctx: ctx, payloadDir: t.TempDir(), st: st}
	return c
}

func (c *cluster) startAgent() {
	actx, stop := context.WithCancel(c.ctx)
	c.stopAg = stop
	ag := &Agent{Client: c.agentCl, Runtime: c.rt, Node: "n1", Address: "127.0.0.1", PayloadDir: c.payloadDir,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Heartbeat: 200 * time.Millisecond, Resync: c.resync}
	c.agent = ag
	done := make(chan struct{})
	go func() { ag.Run(actx); close(done) }()
	c.t.Cleanup(func() { stop(); <-done })
}

func (c *cluster) deploy(spec api.AppSpec) {
	c.t.Helper()
	if _, err := c.client.Deploy(c.ctx, spec); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) instances(app string) []api.Instance {
	l, err := c.client.ListInstances(c.ctx, client.InstanceFilter{App: app})
	if err != nil {
		c.t.Fatal(err)
	}
	return l.Items
}

func (c *cluster) waitFor(what string, cond func() (bool, string)) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("%s: timed out; last: %s", what, last)
}

// healthyCount waits until the app has n healthy instances and n running containers.
func (c *cluster) waitHealthy(app string, n int) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d healthy instances of %s", n, app), func() (bool, string) {
		healthy := 0
		insts := c.instances(app)
		for _, i := range insts {
			if i.Ready() {
				healthy++
			}
		}
		running := len(c.rt.Running())
		return healthy == n && len(insts) == n && running == n, fmt.Sprintf("%d healthy of %d instances, %d containers running", healthy, len(insts), running)
	})
}

func spec(name string, replicas int) api.AppSpec {
	return api.AppSpec{Name: name, Image: "img:1", Replicas: &replicas}
}

func TestDeployScaleRemove(t *testing.T) {
	c := newCluster(t)
	c.deploy(spec("web", 3))
	c.waitHealthy("web", 3)
	for _, ct := range c.rt.Running() {
		if ct.Labels["berth.cluster"] != "c0ffee" || ct.Labels["berth.node"] != "n1" || ct.Labels["berth.app"] != "web" {
			t.Errorf("container %s labels = %v", ct.Name, ct.Labels)
		}
	}
	if _, err := c.client.Scale(c.ctx, "web", 5); err != nil {
		t.Fatal(err)
	}
	c.waitHealthy("web", 5)
	if _, err := c.client.Scale(c.ctx, "web", 1); err != nil {
		t.Fatal(err)
	}
	c.waitHealthy("web", 1)
	if _, err := c.client.DeleteApp(c.ctx, "web"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("app removed", func() (bool, string) {
		list, _ := c.rt.List(c.ctx, nil)
		_, err := c.client.GetApp(c.ctx, "web")
		return len(list) == 0 && client.IsStatus(err, 404), fmt.Sprintf("%d containers, get app: %v", len(list), err)
	})
}

func TestCrashedContainerIsRestartedWithCount(t *testing.T) {
	c := newCluster(t)
	c.deploy(spec("web", 1))
	c.waitHealthy("web", 1)
	first := c.rt.Running()[0]
	c.rt.Kill(first.ID, 3)
	c.waitFor("restart", func() (bool, string) {
		i := c.instances("web")[0]
		ok := i.Status.Restarts == 1 && i.Ready() && i.Status.ExitCode != nil && *i.Status.ExitCode == 3
		return ok, fmt.Sprintf("%+v", i.Status)
	})
	if got := c.rt.Running(); len(got) != 1 || got[0].ID != first.ID {
		t.Fatalf("running = %+v, want the same container started again", got)
	}
}

func TestMissingImageFailsWithBackoff(t *testing.T) {
	c := newCluster(t)
	c.rt.SetImages("img:1")
	s := spec("web", 1)
	s.Image = "img:404"
	c.deploy(s)
	c.waitFor("failed", func() (bool, string) {
		i := c.instances("web")
		return len(i) == 1 && i[0].Status.State == api.StateFailed, fmt.Sprintf("%+v", i)
	})
	time.Sleep(2 * time.Second)
	events, err := c.client.ListEvents(c.ctx, "web", 1000)
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, e := range events.Items {
		if e.Kind == "failed" {
			failed++
		}
	}
	// 1s, 2s backoff: at most a few attempts in two seconds, not hundreds.
	if failed == 0 || failed > 3 {
		t.Fatalf("%d failed events in 2s, want 1-3", failed)
	}
}

func TestAgentRestartAdoptsContainers(t *testing.T) {
	c := newCluster(t)
	c.deploy(spec("web", 2))
	c.waitHealthy("web", 2)
	before := c.rt.Running()
	c.stopAg()
	c.startAgent()
	time.Sleep(time.Second) // let the new agent sweep
	c.waitHealthy("web", 2)
	after := c.rt.Running()
	if len(after) != 2 || after[0].ID != before[0].ID || after[1].ID != before[1].ID ||
		!after[0].StartedAt.Equal(before[0].StartedAt) {
		t.Fatalf("containers changed across an agent restart: before %v, after %v", before, after)
	}
}

func TestRollingUpdateReplacesAll(t *testing.T) {
	c := newCluster(t)
	c.deploy(spec("web", 3))
	c.waitHealthy("web", 3)
	s := spec("web", 3)
	s.Env = map[string]string{"V": "2"}
	c.deploy(s)
	c.waitFor("rolled", func() (bool, string) {
		insts := live(c.instances("web"))
		n := 0
		for _, i := range insts {
			if i.Revision == 2 && i.Ready() {
				n++
			}
		}
		return n == 3 && len(insts) == 3 && len(c.rt.Running()) == 3, fmt.Sprintf("%d of %d at revision 2", n, len(insts))
	})
	for _, ct := range c.rt.Running() {
		if sp, _ := c.rt.Spec(ct.ID); sp.Env["V"] != "2" {
			t.Errorf("container %s env = %v", ct.Name, sp.Env)
		}
	}
}

func TestIdleKeepsContainersAndWakeStartsThem(t *testing.T) {
	c := newCluster(t)
	c.rt.SetExec(func(string, []string) int { return 0 })
	s := spec("web", 2)
	s.Port = 8080
	s.Routes = []string{"web.test"}
	s.Health = &api.Health{Exec: []string{"true"}}
	s.Idle = &api.Idle{StopAfter: api.Duration(2 * time.Second)}
	c.deploy(s)
	c.waitHealthy("web", 2)
	before := c.rt.Running()

	c.waitFor("idled", func() (bool, string) {
		insts := c.instances("web")
		idle := 0
		for _, i := range insts {
			if i.Status.State == api.StateIdle {
				idle++
			}
		}
		all, _ := c.rt.List(c.ctx, nil)
		return idle == 2 && len(c.rt.Running()) == 0 && len(all) == 2, fmt.Sprintf("%d idle, %d running, %d containers", idle, len(c.rt.Running()), len(all))
	})
	if err := c.client.Wake(c.ctx, "web"); err != nil {
		t.Fatal(err)
	}
	c.waitHealthy("web", 2)
	after := c.rt.Running()
	ids := map[string]bool{before[0].ID: true, before[1].ID: true}
	if !ids[after[0].ID] || !ids[after[1].ID] {
		t.Fatalf("wake made new containers: before %v, after %v", before, after)
	}
	for _, i := range c.instances("web") {
		if i.Status.Restarts != 0 {
			t.Errorf("%s counted %d restarts: an idle stop is not a crash", i.Name, i.Status.Restarts)
		}
	}
}
