package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
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

// ---- the berth process ----

// berth is one `berth up` started by a test, with its own data dir.
type berth struct {
	addr    string // 127.0.0.1:<port> of the API
	gwAddr  string // 127.0.0.1:<port> of the gateway
	dataDir string
	logPath string // berth's stdout and stderr, across restarts
	token   string
	cluster string // id on every container's berth.cluster label
	node    string // the agent's node name

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	starts int
}

// startBerth starts berth on a fresh data dir and a free port, waits for it
// to answer and for its node to register, and cleans up after the test:
// berth is stopped and every container of its cluster is removed, whether
// the test passed or not.
func startBerth(t *testing.T) *berth {
	t.Helper()
	needDocker(t)
	b := &berth{
		addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))),
		gwAddr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))),
		dataDir: t.TempDir(),
	}
	b.logPath = filepath.Join(t.TempDir(), "berth.log")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- tail of berth's log (%s) ----\n%s", b.logPath, tailFile(b.logPath, 80))
		}
		b.stop(t)
		if b.cluster != "" {
			removeClusterContainers(t, b.cluster)
		}
	})
	b.launch(t)
	return b
}

// launch starts the berth process and waits until it is usable.
func (b *berth) launch(t *testing.T) {
	t.Helper()
	// The port was free when picked, but something (a container's published
	// port, another berth's etcd) may take it before berth listens: then
	// berth is started again on another port.
	for attempt := 1; ; attempt++ {
		err := b.startProcess(t)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "address already in use") || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("%v; trying another port", err)
		b.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
		b.gwAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	}

	tok, err := os.ReadFile(filepath.Join(b.dataDir, "token"))
	if err != nil {
		t.Fatalf("read the API token: %v", err)
	}
	token := strings.TrimSpace(string(tok))
	if token == "" {
		t.Fatalf("%s/token is empty", b.dataDir)
	}
	if b.token != "" && b.token != token {
		t.Errorf("the API token changed across a restart: %q, then %q", b.token, token)
	}
	b.token = token

	var st struct {
		Cluster string `json:"cluster"`
	}
	b.getJSON(t, "/v1/status", &st)
	if st.Cluster == "" {
		t.Fatalf("GET /v1/status: no cluster id")
	}
	if b.cluster != "" && b.cluster != st.Cluster {
		t.Errorf("the cluster id changed across a restart: %q, then %q", b.cluster, st.Cluster)
	}
	b.cluster = st.Cluster

	// The agent registered its node (the API checks memory against it and
	// the scheduler needs it).
	waitFor(t, 30*time.Second, func() (bool, string) {
		var nodes list[node]
		if err := b.getJSONErr("/v1/nodes", &nodes); err != nil {
			return false, err.Error()
		}
		for _, n := range nodes.Items {
			if n.State == "ready" {
				b.node = n.Name
				return true, ""
			}
		}
		return false, fmt.Sprintf("no ready node yet: %+v", nodes.Items)
	})
	t.Logf("berth up (start %d): addr %s, cluster %s, node %s, data dir %s", b.starts, b.addr, b.cluster, b.node, b.dataDir)
}

// startProcess starts berth and waits until its API answers.
func (b *berth) startProcess(t *testing.T) error {
	t.Helper()
	logf, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	b.mu.Lock()
	b.starts++
	// --data-dir is a persistent flag: put it before the verb on the first
	// start and after it on restarts, so that both spellings are exercised.
	args := []string{"--data-dir", b.dataDir, "up", "--listen", b.addr, "--gateway-addr", b.gwAddr}
	if b.starts > 1 {
		args = []string{"up", "--listen", b.addr, "--gateway-addr", b.gwAddr, "--data-dir", b.dataDir}
	}
	fmt.Fprintf(logf, "==== e2e: start %d: berth %s\n", b.starts, strings.Join(args, " "))
	b.mu.Unlock()
	cmd := exec.Command(berthBin, args...)
	cmd.Env = cleanEnv()
	return b.run(t, cmd, logf)
}

// run starts berth's process cmd with its output to logf and waits until
// its API answers; it fails when the process exits first.
func (b *berth) run(t *testing.T, cmd *exec.Cmd, logf *os.File) error {
	t.Helper()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start berth: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	b.mu.Lock()
	b.cmd, b.exited = cmd, exited
	b.mu.Unlock()

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			b.mu.Lock()
			b.cmd = nil
			b.mu.Unlock()
			return fmt.Errorf("berth exited while starting (%s); log:\n%s", cmd.ProcessState, tailFile(b.logPath, 40))
		default:
		}
		if code, _, err := b.rawRequest("GET", "/healthz", nil, "", ""); err == nil && code == 200 {
			return nil
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth did not answer GET /healthz on %s within 60s; log:\n%s", b.addr, tailFile(b.logPath, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits; berth that does not stop within 20s is killed.
func (b *berth) stop(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return
	case <-time.After(20 * time.Second):
	}
	t.Errorf("berth did not stop within 20s of SIGTERM; killing it")
	_ = cmd.Process.Kill()
	<-exited
}

// kill9 kills berth with SIGKILL, as a crash would.
func (b *berth) kill9(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		t.Fatal("kill9: berth is not running")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatalf("kill -9 berth: %v", err)
	}
	<-exited
	t.Logf("berth killed with SIGKILL")
}

// restart stops berth with SIGTERM and starts it again on the same data dir and address.
func (b *berth) restart(t *testing.T) {
	t.Helper()
	b.stop(t)
	b.launch(t)
}

// relaunch starts berth again after kill9.
func (b *berth) relaunch(t *testing.T) {
	t.Helper()
	b.launch(t)
}

// running reports whether the berth process is alive.
func (b *berth) running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return false
	}
	select {
	case <-b.exited:
		return false
	default:
		return true
	}
}

// log returns berth's output so far.
func (b *berth) log() string {
	data, _ := os.ReadFile(b.logPath)
	return string(data)
}

// freePort picks a free port below Linux's ephemeral range (32768-), where
// Docker publishes the containers' ports and etcd picks its own.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port found")
	return 0
}

// cleanEnv is the test's environment without BERTH_ variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") {
			env = append(env, kv)
		}
	}
	return env
}

func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---- the CLI ----

type cliResult struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("berth %s: exit %d\n-- stdout:\n%s-- stderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// cli runs a berth verb as a user would, with BERTH_ADDR and BERTH_TOKEN set.
func (b *berth) cli(t *testing.T, args ...string) cliResult {
	t.Helper()
	return b.cliEnv(t, []string{"BERTH_ADDR=" + b.addr, "BERTH_TOKEN=" + b.token}, args...)
}

func (b *berth) cliEnv(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, berthBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.Dir = t.TempDir() // no .berth/token to fall back on
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run berth %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("berth %v did not finish within 3 minutes\n%s", args, r)
	}
	t.Logf("(%s) %s", time.Since(start).Round(time.Millisecond), r)
	return r
}

// deploy writes spec to a file and runs `berth deploy -f <file> args...`.
func (b *berth) deploy(t *testing.T, spec string, args ...string) cliResult {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return b.cli(t, append([]string{"deploy", "-f", path}, args...)...)
}

// mustDeploy deploys and requires exit 0.
func (b *berth) mustDeploy(t *testing.T, spec string, args ...string) cliResult {
	t.Helper()
	r := b.deploy(t, spec, args...)
	if r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	return r
}

// psRow is one line of `berth ps`.
type psRow struct {
	Instance, State, Node, Address, Rev, Age, Restarts, LastExit, Info string
	Line                                                               string
}

// ps runs `berth ps [app]` and parses its table.
func (b *berth) ps(t *testing.T, app string) []psRow {
	t.Helper()
	args := []string{"ps"}
	if app != "" {
		args = append(args, app)
	}
	r := b.cli(t, args...)
	if r.code != 0 {
		t.Fatalf("berth ps failed:\n%s", r)
	}
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "INSTANCE") {
		t.Fatalf("berth ps: no header line:\n%s", r.stdout)
	}
	var rows []psRow
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			t.Fatalf("berth ps: short line %q", line)
		}
		rows = append(rows, psRow{
			Instance: f[0], State: f[1], Node: f[2], Address: f[3], Rev: f[4], Age: f[5],
			Restarts: f[6], LastExit: f[7], Info: strings.Join(f[8:], " "), Line: line,
		})
	}
	return rows
}

// ---- the API ----

type list[T any] struct {
	Items    []T   `json:"items"`
	Revision int64 `json:"revision"`
}

// instance is what the tests read of GET /v1/instances.
type instance struct {
	Name       string         `json:"name"`
	App        string         `json:"app"`
	Index      int            `json:"index"`
	Revision   int64          `json:"revision"`
	Node       string         `json:"node"`
	Reason     string         `json:"reason"`
	Desired    string         `json:"desired"`
	StopReason string         `json:"stop_reason"`
	KeptUntil  time.Time      `json:"kept_until"`
	Status     instanceStatus `json:"status"`
}

type instanceStatus struct {
	State       string    `json:"state"`
	Healthy     bool      `json:"healthy"`
	ContainerID string    `json:"container_id"`
	Address     string    `json:"address"`
	Restarts    int       `json:"restarts"`
	ExitCode    *int      `json:"exit_code"`
	Error       string    `json:"error"`
	Replace     bool      `json:"replace"`
	StartedAt   time.Time `json:"started_at"`
}

// routable is what a router may send traffic to.
func (i instance) routable() bool {
	return i.Desired == "run" && i.Status.State == "running" && i.Status.Healthy && i.Status.Address != ""
}

func (i instance) String() string {
	code := "-"
	if i.Status.ExitCode != nil {
		code = strconv.Itoa(*i.Status.ExitCode)
	}
	s := fmt.Sprintf("%s[desired=%s state=%s healthy=%v addr=%s restarts=%d exit=%s node=%s", i.Name, i.Desired,
		i.Status.State, i.Status.Healthy, i.Status.Address, i.Status.Restarts, code, i.Node)
	if i.Reason != "" {
		s += " reason=" + strconv.Quote(i.Reason)
	}
	if i.Status.Error != "" {
		s += " error=" + strconv.Quote(i.Status.Error)
	}
	return s + "]"
}

type node struct {
	Name  string `json:"name"`
	State string `json:"state"`
}

type event struct {
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	App      string    `json:"app"`
	Instance string    `json:"instance"`
	Node     string    `json:"node"`
	Message  string    `json:"message"`
}

type apiError struct {
	Error string `json:"error"`
	Field string `json:"field"`
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// rawRequest sends one request to berth's API; auth is the whole
// Authorization header ("" for none).
func (b *berth) rawRequest(method, path string, body []byte, contentType, auth string) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+b.addr+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// request sends an authenticated request.
func (b *berth) request(t *testing.T, method, path string, body []byte, contentType string) (int, []byte) {
	t.Helper()
	code, data, err := b.rawRequest(method, path, body, contentType, "Bearer "+b.token)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return code, data
}

func (b *berth) getJSONErr(path string, out any) error {
	code, data, err := b.rawRequest("GET", path, nil, "", "Bearer "+b.token)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	if code != 200 {
		return fmt.Errorf("GET %s: %d %s", path, code, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("GET %s: %w: %s", path, err, data)
	}
	return nil
}

func (b *berth) getJSON(t *testing.T, path string, out any) {
	t.Helper()
	if err := b.getJSONErr(path, out); err != nil {
		t.Fatal(err)
	}
}

// instances lists the app's instances but those kept stopped for a fast
// rollback after an update (fast_rollback_test.go looks at those): what
// the tests count is the instances that make up the app.
func (b *berth) instances(t *testing.T, app string) []instance {
	t.Helper()
	insts, err := b.instancesErr(app)
	if err != nil {
		t.Fatal(err)
	}
	return insts
}

func (b *berth) instancesErr(app string) ([]instance, error) {
	var l list[instance]
	err := b.getJSONErr("/v1/instances?app="+app, &l)
	active := l.Items[:0]
	for _, i := range l.Items {
		if i.KeptUntil.IsZero() {
			active = append(active, i)
		}
	}
	return active, err
}

func (b *berth) events(t *testing.T, app string) []event {
	t.Helper()
	var l list[event]
	b.getJSON(t, "/v1/events?limit=100000&app="+app, &l)
	return l.Items
}

// byName indexes instances by name.
func byName(insts []instance) map[string]instance {
	m := make(map[string]instance, len(insts))
	for _, i := range insts {
		m[i.Name] = i
	}
	return m
}

func countRoutable(insts []instance) int {
	n := 0
	for _, i := range insts {
		if i.routable() {
			n++
		}
	}
	return n
}

func describe(insts []instance) string {
	parts := make([]string, len(insts))
	for i, inst := range insts {
		parts[i] = inst.String()
	}
	return fmt.Sprintf("%d instances: %s", len(insts), strings.Join(parts, " "))
}

// ---- the instances themselves ----

// appClient talks to instances with a fresh connection per request, as a
// new client would: no idle connection to a stopped container is reused.
var appClient = &http.Client{
	Timeout:   3 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// curl GETs http://addr/path and returns the status and body.
func curl(addr, path string) (int, string, error) {
	resp, err := appClient.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), err
}

// ---- docker ----

// container is one line of `docker ps -a` for a berth container.
type container struct {
	ID, Name, State, Instance, App string
}

// containers lists the cluster's containers (running or not), with more
// label filters if given ("berth.instance=x").
func containers(t *testing.T, cluster string, labels ...string) []container {
	t.Helper()
	cs, err := containersErr(cluster, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func containersErr(cluster string, labels ...string) ([]container, error) {
	args := []string{"ps", "-a", "--no-trunc", "--filter", "label=berth.cluster=" + cluster}
	for _, l := range labels {
		args = append(args, "--filter", "label="+l)
	}
	args = append(args, "--format", `{{.ID}}\t{{.Names}}\t{{.State}}\t{{.Label "berth.instance"}}\t{{.Label "berth.app"}}`)
	out, err := dockerCLI(30*time.Second, args...)
	if err != nil {
		return nil, fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	var cs []container
	for _, line := range strings.Split(strings.TrimRight(out, "\r\n"), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 5 {
			return nil, fmt.Errorf("docker ps: unexpected line %q", line)
		}
		cs = append(cs, container{ID: f[0], Name: f[1], State: f[2], Instance: f[3], App: f[4]})
	}
	return cs, nil
}

func describeContainers(cs []container) string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = fmt.Sprintf("%s(%s %s)", c.Instance, c.ID[:12], c.State)
	}
	return fmt.Sprintf("%d containers: %s", len(cs), strings.Join(parts, " "))
}

// dockerInspect returns `docker inspect -f format id`.
func dockerInspect(t *testing.T, id, format string) string {
	t.Helper()
	out, err := dockerCLI(30*time.Second, "inspect", "-f", format, id)
	if err != nil {
		t.Fatalf("docker inspect %s: %v: %s", id, err, out)
	}
	return strings.TrimSpace(out)
}

// removeClusterContainers removes every container of a cluster: the
// cleanup that runs after every test, pass or fail.
func removeClusterContainers(t *testing.T, cluster string) {
	removeClusterContainersOnce(t, cluster)
	// A create that berth sent just before it stopped may still complete
	// in the engine after the first look.
	time.Sleep(time.Second)
	removeClusterContainersOnce(t, cluster)
}

func removeClusterContainersOnce(t *testing.T, cluster string) {
	out, err := dockerCLI(30*time.Second, "ps", "-aq", "--filter", "label=berth.cluster="+cluster)
	if err != nil {
		t.Errorf("cleanup: list containers of cluster %s: %v: %s", cluster, err, out)
		return
	}
	ids := strings.Fields(out)
	if len(ids) == 0 {
		return
	}
	if out, err := dockerCLI(2*time.Minute, append([]string{"rm", "-f"}, ids...)...); err != nil {
		t.Errorf("cleanup: docker rm -f %v: %v: %s", ids, err, out)
	}
}

// ---- waiting ----

// waitFor polls cond until it holds; on timeout the test fails with the
// condition's last message.
func waitFor(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	if ok, msg := pollUntil(timeout, cond); !ok {
		t.Fatalf("condition not met within %s: %s", timeout, msg)
	}
}

// pollUntil polls cond until it holds or timeout passes, and returns the
// last result.
func pollUntil(timeout time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok || time.Now().After(deadline) {
			return ok, msg
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ---- specs ----

// healthSpec checks /healthz often, so that tests are fast.
const healthSpec = `{http: /healthz, interval: 500ms, timeout: 500ms, retries: 2, start_period: 5s}`

// demoSpec is a small app of the demo image.
func demoSpec(name, image string, replicas int) string {
	return fmt.Sprintf(`name: %s
image: %s
env: {GREETING: "hi from e2e"}
port: 8080
replicas: %d
resources: {cpu: 100m, memory: 32Mi}
health: %s
stop_grace: 5s
`, name, image, replicas, healthSpec)
}

// deployHealthy deploys a demo app and waits until all of it is routable.
func (b *berth) deployHealthy(t *testing.T, name string, replicas int) []instance {
	t.Helper()
	b.mustDeploy(t, demoSpec(name, imageDemo1, replicas))
	var insts []instance
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts = b.instances(t, name)
		return len(insts) == replicas && countRoutable(insts) == replicas, describe(insts)
	})
	return insts
}
