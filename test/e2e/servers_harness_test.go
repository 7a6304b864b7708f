package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ---- `berth server` and `berth agent` processes ----

// proc is one berth process (a server or an agent) started by a test.
type proc struct {
	name    string
	bin     string // default: the berth binary under test
	args    []string
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	bin := p.bin
	if bin == "" {
		bin = berthBin
	}
	fmt.Fprintf(logf, "==== e2e: %s %s\n", filepath.Base(bin), strings.Join(p.args, " "))
	cmd := exec.Command(bin, p.args...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// signal sends sig; SIGKILL also waits for the exit.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		t.Fatalf("%s is not running", p.name)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s to %s: %v", sig, p.name, err)
	}
	if sig == syscall.SIGKILL {
		<-exited
		p.mu.Lock()
		p.cmd = nil
		p.mu.Unlock()
	}
}

// stop sends SIGTERM (and SIGCONT, in case it was stopped) and waits; a
// process that does not stop within 20s is killed.
func (p *proc) stop(t *testing.T) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-exited:
		return
	case <-time.After(20 * time.Second):
	}
	t.Errorf("%s did not stop within 20s of SIGTERM; killing it", p.name)
	_ = cmd.Process.Kill()
	<-exited
}

// bserver is one `berth server`.
type bserver struct {
	proc
	addr    string // 127.0.0.1:<port> of its API
	dataDir string
}

// url is the server's name in the election and in /v1/status.
func (s *bserver) url() string { return "http://" + s.addr }

// bagent is one `berth agent`.
type bagent struct {
	proc
	node string
}

// servers is a cluster of `berth server` processes and their agents.
type servers struct {
	list    []*bserver
	agents  []*bagent
	token   string // the bootstrap user token, the same on every server
	cluster string
	logDir  string // the servers' and agents' logs
	// registryDir is the image registry's storage, one directory for all
	// servers, as several servers need (on hosts of their own: NFS).
	registryDir string
}

// startServers starts n servers: one on its own embedded etcd, or several
// on an embedded etcd of one member each. The cluster is stopped and every
// container of it removed after the test.
func startServers(t *testing.T, n int) *servers {
	t.Helper()
	needDocker(t)
	// The logs' dir is made before the cleanup below is registered, so that
	// it is removed after that cleanup has shown their tails.
	c := &servers{token: randomToken(t), logDir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range c.procs() {
				t.Logf("---- tail of %s's log (%s) ----\n%s", p.name, p.logPath, tailFile(p.logPath, 60))
			}
		}
		for _, a := range c.agents {
			a.stop(t)
		}
		for _, s := range c.list {
			s.stop(t)
		}
		if c.cluster != "" {
			removeClusterContainers(t, c.cluster)
		}
	})
	// A port picked free may be taken before the server listens: then the
	// whole cluster starts again on other ports.
	for attempt := 1; ; attempt++ {
		err := c.launch(t, n)
		if err == nil {
			break
		}
		for _, s := range c.list {
			s.stop(t)
		}
		if !strings.Contains(err.Error(), "address already in use") || attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("%v; trying other ports", err)
	}
	st := c.status(t)
	c.cluster = st.Cluster
	t.Logf("%d berth servers up: %s; cluster %s", n, c.addrs(), c.cluster)
	return c
}

func (c *servers) launch(t *testing.T, n int) error {
	t.Helper()
	c.list = nil
	c.registryDir = t.TempDir()
	var members []string
	for i := range n {
		members = append(members, fmt.Sprintf("s%d=http://127.0.0.1:%d", i+1, freePort(t)))
	}
	for i := range n {
		s := &bserver{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))), dataDir: t.TempDir()}
		s.name = fmt.Sprintf("server s%d", i+1)
		s.logPath = filepath.Join(c.logDir, fmt.Sprintf("server-s%d.log", i+1))
		// Every server of a cluster needs the same token file.
		if err := os.WriteFile(filepath.Join(s.dataDir, "token"), []byte(c.token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s.args = []string{"server", "--data-dir", s.dataDir, "--listen", s.addr, "--node-ttl", "5s", "--registry-dir", c.registryDir}
		if n > 1 {
			s.args = append(s.args, "--etcd-name", fmt.Sprintf("s%d", i+1), "--etcd-cluster", strings.Join(members, ","))
		}
		c.list = append(c.list, s)
	}
	// Members start together: each waits for a quorum before it serves.
	for _, s := range c.list {
		s.start(t)
	}
	deadline := time.Now().Add(90 * time.Second)
	for _, s := range c.list {
		for {
			if !s.running() {
				return fmt.Errorf("%s exited while starting; log:\n%s", s.name, tailFile(s.logPath, 40))
			}
			if code, _, err := s.view(c).rawRequest("GET", "/healthz", nil, "", ""); err == nil && code == 200 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s did not answer GET /healthz on %s within 90s; log:\n%s", s.name, s.addr, tailFile(s.logPath, 40))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func (c *servers) procs() []*proc {
	var ps []*proc
	for _, s := range c.list {
		ps = append(ps, &s.proc)
	}
	for _, a := range c.agents {
		ps = append(ps, &a.proc)
	}
	return ps
}

// addrs is every server's address, comma-separated, as the CLI and agents take them.
func (c *servers) addrs() string {
	var as []string
	for _, s := range c.list {
		as = append(as, s.addr)
	}
	return strings.Join(as, ",")
}

// view is a berth handle on one server, for the harness's API helpers.
func (s *bserver) view(c *servers) *berth {
	return &berth{addr: s.addr, token: c.token, cluster: c.cluster, dataDir: s.dataDir, logPath: s.logPath}
}

// api is a handle on a running server.
func (c *servers) api(t *testing.T) *berth {
	t.Helper()
	for _, s := range c.list {
		if s.running() {
			return s.view(c)
		}
	}
	t.Fatal("no berth server is running")
	return nil
}

// cli runs a berth verb with every server's address in BERTH_ADDR: the CLI
// fails over between them.
func (c *servers) cli(t *testing.T, args ...string) cliResult {
	t.Helper()
	return (&berth{}).cliEnv(t, []string{"BERTH_ADDR=" + c.addrs(), "BERTH_TOKEN=" + c.token}, args...)
}

// serverStatus is what the tests read of GET /v1/status.
type serverStatus struct {
	Cluster      string `json:"cluster"`
	Leader       bool   `json:"leader"`
	Server       string `json:"server"`
	LeaderServer string `json:"leader_server"`
	Store        string `json:"store"`
}

func (c *servers) status(t *testing.T) serverStatus {
	t.Helper()
	var st serverStatus
	c.api(t).getJSON(t, "/v1/status", &st)
	return st
}

// leader waits until the running servers agree on a leader and returns it.
func (c *servers) leader(t *testing.T, timeout time.Duration) *bserver {
	t.Helper()
	var leader *bserver
	waitFor(t, timeout, func() (bool, string) {
		leader = nil
		var seen []string
		for _, s := range c.list {
			if !s.running() {
				continue
			}
			var st serverStatus
			if err := s.view(c).getJSONErr("/v1/status", &st); err != nil {
				return false, err.Error()
			}
			seen = append(seen, fmt.Sprintf("%s: leader %q (self %v)", s.addr, st.LeaderServer, st.Leader))
			if st.LeaderServer == "" || (leader != nil && leader.url() != st.LeaderServer) {
				return false, strings.Join(seen, "; ")
			}
			if st.Leader != (st.LeaderServer == s.url()) {
				return false, strings.Join(seen, "; ")
			}
			for _, l := range c.list {
				if l.url() == st.LeaderServer {
					leader = l
				}
			}
		}
		return leader != nil && leader.running(), strings.Join(seen, "; ")
	})
	return leader
}

// agentToken makes a token an agent registers its node with: `berth token
// create --role agent` where the command exists, else the user token.
func (c *servers) agentToken(t *testing.T) string {
	t.Helper()
	r := c.cli(t, "token", "create", "--role", "agent", "--description", "e2e agent")
	if r.code != 0 {
		if strings.Contains(r.stderr, "unknown command") {
			return c.token
		}
		t.Fatalf("berth token create failed:\n%s", r)
	}
	return strings.TrimSpace(r.stdout)
}

// startAgent starts `berth agent` for node with the given labels
// ("zone=a"), with every server's address, and waits for its node to be ready.
func (c *servers) startAgent(t *testing.T, name string, labels ...string) *bagent {
	t.Helper()
	return c.startAgentWith(t, name, nil, labels...)
}

// startAgentWith is startAgent with more flags for `berth agent`.
func (c *servers) startAgentWith(t *testing.T, name string, extra []string, labels ...string) *bagent {
	t.Helper()
	a := &bagent{node: name}
	a.name = "agent " + name
	a.logPath = filepath.Join(c.logDir, "agent-"+name+".log")
	a.args = []string{"agent", "--data-dir", t.TempDir(), "--server", c.addrs(), "--token", c.agentToken(t),
		"--node", name, "--workers", "8"}
	if len(labels) > 0 {
		a.args = append(a.args, "--labels", strings.Join(labels, ","))
	}
	a.args = append(a.args, extra...)
	a.start(t)
	c.agents = append(c.agents, a)
	c.waitNodeReady(t, name)
	return a
}

func (c *servers) waitNodeReady(t *testing.T, name string) {
	t.Helper()
	waitFor(t, 30*time.Second, func() (bool, string) {
		var nodes list[node]
		if err := c.api(t).getJSONErr("/v1/nodes", &nodes); err != nil {
			return false, err.Error()
		}
		for _, n := range nodes.Items {
			if n.Name == name && n.State == "ready" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("node %s not ready: %+v", name, nodes.Items)
	})
}

func randomToken(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// runningContainers lists the running containers of an app, by instance.
func runningContainers(cluster, app string) (map[string][]container, error) {
	cs, err := containersErr(cluster, "berth.app="+app)
	if err != nil {
		return nil, err
	}
	byInstance := map[string][]container{}
	for _, c := range cs {
		if c.State == "running" {
			byInstance[c.Instance] = append(byInstance[c.Instance], c)
		}
	}
	return byInstance, nil
}
