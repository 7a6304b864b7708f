package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"berth/api"
	"berth/internal/client"
)

// nodeLoss measures node loss to replacement answering: one `berth
// server` with the default node TTL and three `berth agent`s on this
// machine's Docker engine; an app of 3 replicas, spread over the nodes.
// Each run freezes one node's agent (SIGSTOP: its heartbeats stop, its container
// keeps running) and measures the time until a replacement instance is
// healthy and answers HTTP at its address. The agent is then let go
// (SIGCONT) and the app converges back to 3 before the next run.
func nodeLoss(ctx context.Context, bin, tmp string, runs int) ([]time.Duration, string, error) {
	token := randomHex()
	srv := &server{bin: bin, dataDir: filepath.Join(tmp, "nodeloss"), logPath: filepath.Join(tmp, "nodeloss-server.log")}
	addr := freeAddr()
	srv.url = "http://" + addr
	srv.args = []string{"server", "--data-dir", srv.dataDir, "--listen", addr, "--gateway-addr", ""}
	if err := os.MkdirAll(srv.dataDir, 0o700); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(filepath.Join(srv.dataDir, "token"), []byte(token+"\n"), 0o600); err != nil {
		return nil, "", err
	}
	if err := srv.start(); err != nil {
		return nil, "", err
	}
	defer srv.stop()
	if err := waitHealthy(ctx, srv, token, 60*time.Second); err != nil {
		return nil, "", err
	}
	cl := client.New(srv.url, token)
	// Registered before the agents' stops, so it runs after them: a
	// running agent would make its containers again.
	var cluster string
	if st, err := cl.Status(ctx); err == nil {
		cluster = st.Cluster
	}
	defer removeContainers(cluster)

	agents := map[string]*server{}
	for _, node := range []string{"n1", "n2", "n3"} {
		nt, err := cl.CreateToken(ctx, api.TokenRequest{Role: api.RoleAgent, Description: "bench " + node})
		if err != nil {
			return nil, "", err
		}
		a := &server{bin: bin, logPath: filepath.Join(tmp, "nodeloss-agent-"+node+".log"),
			args: []string{"agent", "--server", srv.url, "--token", nt.Secret, "--node", node, "--data-dir", filepath.Join(tmp, "agent-"+node)}}
		if err := a.start(); err != nil {
			return nil, "", err
		}
		defer a.stop()
		defer a.cmd.Process.Signal(syscall.SIGCONT) // before stop, should a run fail while frozen
		agents[node] = a
	}
	const app = "nodeloss"
	spec := "name: " + app + `
image: berth/demo:1
port: 8080
replicas: 3
resources: {cpu: 100m, memory: 32Mi}
health: {http: /healthz, interval: 500ms, timeout: 500ms, retries: 2, start_period: 5s}
stop_grace: 2s
`
	if _, err := cl.DeployYAML(ctx, app, []byte(spec), client.DeployOptions{}); err != nil {
		return nil, "", fmt.Errorf("deploy: %w", err)
	}
	if _, err := waitApp(ctx, cl, app, 3, "", 120*time.Second); err != nil {
		return nil, "", err
	}
	logf("node loss: 1 server (node TTL 10s, the default), 3 agents, %s with 3 replicas", app)

	var took []time.Duration
	results := &strings.Builder{}
	for i := range runs {
		node, err := busiestNode(ctx, cl, app)
		if err != nil {
			return nil, "", err
		}
		a := agents[node]
		if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			return nil, "", err
		}
		frozen := time.Now()
		answered, err := waitApp(ctx, cl, app, 3, node, 60*time.Second)
		if err != nil {
			_ = a.cmd.Process.Signal(syscall.SIGCONT)
			return nil, "", fmt.Errorf("run %d: %w", i+1, err)
		}
		d := answered.Sub(frozen)
		took = append(took, d)
		line := fmt.Sprintf("run %d: froze the agent of %s; replacements answered after %s", i+1, node, d.Round(time.Millisecond))
		logf("%s", line)
		fmt.Fprintln(results, line)
		if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			return nil, "", err
		}
		if err := waitConverged(ctx, cl, app, node, 120*time.Second); err != nil {
			return nil, "", fmt.Errorf("run %d: after the node came back: %w", i+1, err)
		}
	}
	return took, results.String(), nil
}

// waitApp waits until the app has n healthy instances, none on node
// avoid, each answering GET / at its address, and says when.
func waitApp(ctx context.Context, cl *client.Client, app string, n int, avoid string, timeout time.Duration) (time.Time, error) {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		l, err := cl.ListInstances(ctx, client.InstanceFilter{App: app})
		if err != nil {
			last = err.Error()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		answering := 0
		var seen []string
		for _, inst := range l.Items {
			if inst.Desired != api.DesiredRun || inst.Node == avoid || !inst.Status.Healthy || inst.Status.Address == "" {
				continue
			}
			resp, err := hc.Get("http://" + inst.Status.Address + "/")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					answering++
				}
			}
			seen = append(seen, inst.Name+"@"+inst.Node)
		}
		if answering == n {
			return time.Now(), nil
		}
		last = fmt.Sprintf("%d of %d answering: %v", answering, n, seen)
		time.Sleep(50 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("%s: %s after %s", app, last, timeout)
}

// waitConverged waits until the node is ready again, the app is back to
// its replicas with nothing retired left (the returned agent removed its
// stale containers), and exactly 3 healthy instances answer.
func waitConverged(ctx context.Context, cl *client.Client, app, node string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		nodes, err := cl.ListNodes(ctx)
		ready := false
		for _, n := range nodes.Items {
			ready = ready || (n.Name == node && n.State == api.NodeReady)
		}
		l, err2 := cl.ListInstances(ctx, client.InstanceFilter{App: app})
		if err == nil && err2 == nil && ready && len(l.Items) == 3 {
			if _, err := waitApp(ctx, cl, app, 3, "", 5*time.Second); err == nil {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s did not converge back to 3 instances with %s ready within %s", app, node, timeout)
}

// busiestNode is the node holding the most instances of the app: the
// one to lose, so that every run has something to replace.
func busiestNode(ctx context.Context, cl *client.Client, app string) (string, error) {
	l, err := cl.ListInstances(ctx, client.InstanceFilter{App: app})
	if err != nil {
		return "", err
	}
	count := map[string]int{}
	best := ""
	for _, inst := range l.Items {
		if inst.Desired != api.DesiredRun || inst.Node == "" {
			continue
		}
		count[inst.Node]++
		if c := count[inst.Node]; best == "" || c > count[best] || c == count[best] && inst.Node < best {
			best = inst.Node
		}
	}
	if best == "" {
		return "", fmt.Errorf("%s has no placed instance", app)
	}
	return best, nil
}

// removeContainers removes the bench cluster's containers from the engine.
func removeContainers(cluster string) {
	if cluster == "" {
		return
	}
	out, err := execOutput("docker", "ps", "-aq", "--filter", "label=berth.cluster="+cluster)
	if err != nil || strings.TrimSpace(out) == "" {
		return
	}
	_, _ = execOutput("docker", append([]string{"rm", "-f"}, strings.Fields(out)...)...)
}

func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
