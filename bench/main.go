// Command bench measures berth against plain Docker on this machine, in one
// run: deploy-to-ready of 30 replicas, a rolling update of 10, teardown of
// 30 and the resident memory of `berth up`. bench/run.sh (make bench) sets
// up Docker and the images, builds berth and runs it:
//
//	go run ./bench [-berth path/to/berth] [-out bench/results.txt] [-keep] [-v]
//
// It starts its own `berth up` on a free port with a temporary data dir,
// and removes every container it made (by label) at the end, on failure
// and on SIGINT/SIGTERM.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"berth/bench/internal/measure"
)

const (
	deployReplicas = 30
	rollReplicas   = 10
	floorParallel  = 4
	pollEvery      = 50 * time.Millisecond
	clientEvery    = 10 * time.Millisecond
	settle         = 2 * time.Second // pause between phases, so one phase's cleanup does not run into the next

	swarmPerReplica = 1.9 // s/replica, quoted from an earlier measurement of Docker Swarm on this machine

	deployTarget, deployFail = 0.9, 1.3
	teardownTarget           = 1.3
	memTargetMiB             = 150.0
)

// What the bench reads from the API. Its own types, so that the definitions
// the bench relies on (e.g. "routable") are the brief's, not the product's.
type instance struct {
	Name     string `json:"name"`
	App      string `json:"app"`
	Revision int64  `json:"revision"`
	Desired  string `json:"desired"`
	Status   struct {
		State       string `json:"state"`
		Healthy     bool   `json:"healthy"`
		Address     string `json:"address"`
		ContainerID string `json:"container_id"`
	} `json:"status"`
}

func (i instance) routable() bool {
	return i.Desired == "run" && i.Status.State == "running" && i.Status.Healthy && i.Status.Address != ""
}

type appRecord struct {
	Revision         int64 `json:"revision"`
	TemplateRevision int64 `json:"template_revision"`
	Deleting         bool  `json:"deleting"`
}

type event struct {
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	App      string    `json:"app"`
	Instance string    `json:"instance"`
	Message  string    `json:"message"`
}

type list[T any] struct {
	Items []T `json:"items"`
}

type bench struct {
	repo     string
	berthBin string
	tmp      string
	dataDir  string
	logPath  string
	addr     string
	token    string
	cluster  string
	runID    string // label value of the floor's containers
	verbose  bool

	up     *exec.Cmd
	upAt   time.Time
	upDone chan struct{}

	api   *http.Client // keep-alive, for the berth API
	probe *http.Client // no keep-alive: every GET is a fresh connection, like curl

	notes        []string // anomalies and details, printed and written after the table
	interference []string // per phase: load and other users' containers
}

func main() {
	os.Exit(run())
}

func run() (code int) {
	berthBin := flag.String("berth", "", "berth binary (default: go build ./cmd/berth into a temporary dir)")
	out := flag.String("out", "", "write the results here too (run.sh: bench/results.txt)")
	keep := flag.Bool("keep", false, "keep the temporary dir (berth's log and data) after the run")
	verbose := flag.Bool("v", false, "print every event of every phase")
	flag.Parse()

	wallStart := time.Now()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	repo, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	b := &bench{
		repo: repo, tmp: tmp, berthBin: *berthBin, verbose: *verbose,
		dataDir: filepath.Join(tmp, "data"), logPath: filepath.Join(tmp, "berth.log"),
		runID: fmt.Sprintf("%d-%d", os.Getpid(), time.Now().Unix()),
		api:   &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
		probe: &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	defer func() {
		b.cleanup()
		if *keep || code == 1 || code == 2 {
			fmt.Fprintf(os.Stderr, "bench: kept %s (berth log: %s)\n", tmp, b.logPath)
		} else {
			os.RemoveAll(tmp)
		}
		if r := recover(); r != nil {
			fmt.Fprintln(os.Stderr, "bench: panic:", r)
			code = 2
		}
	}()

	res, err := b.all(ctx)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted; cleaning up")
			return 130
		}
		fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		b.printLogTail(os.Stderr, 30)
		return 1
	}
	res.wall = time.Since(wallStart)
	report := b.render(ctx, res)
	fmt.Print("\n" + report)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Printf("written to %s\n", *out)
	}
	return 0
}

type results struct {
	floorDeploy, berthDeploy, berthDeployCLI time.Duration
	floorRm, berthRm, berthRmCLI             time.Duration
	roll, rollCLI                            time.Duration
	rollTotal, rollFailed                    int
	rollDetail                               string
	idleRSS, busyRSS, hwm                    float64 // MiB
	wall                                     time.Duration
}

func (b *bench) all(ctx context.Context) (*results, error) {
	r := &results{}
	if err := b.startBerth(ctx); err != nil {
		return nil, err
	}
	// 1. idle memory, 5 s after start, no apps.
	if err := sleep(ctx, time.Until(b.upAt.Add(5*time.Second))); err != nil {
		return nil, err
	}
	rss, _, err := b.rss()
	if err != nil {
		return nil, err
	}
	r.idleRSS = rss
	logf("idle VmRSS of berth up: %.1f MiB", rss)

	// 2. floor: docker run -P4, then docker rm -f in one command.
	logf("floor: %d x docker run -d -p 127.0.0.1::8080 --cpus 0.05 -m 32m berth/demo:1, %d in parallel", deployReplicas, floorParallel)
	var ids []string
	err = b.phase(ctx, "deploy floor", func() (err error) {
		ids, r.floorDeploy, err = b.floorDeploy(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("floor deploy: %w", err)
	}
	logf("floor: all %d answer 200 after %.2fs", deployReplicas, r.floorDeploy.Seconds())
	if err := sleep(ctx, settle); err != nil {
		return nil, err
	}
	logf("floor: docker rm -f of %d containers", len(ids))
	err = b.phase(ctx, "teardown floor", func() (err error) {
		r.floorRm, err = b.floorTeardown(ctx, ids)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("floor teardown: %w", err)
	}
	logf("floor: docker rm -f took %.2fs", r.floorRm.Seconds())
	if err := sleep(ctx, settle); err != nil {
		return nil, err
	}

	// 3. berth: deploy 30, memory with 30, berth rm.
	app := "bench30"
	logf("berth: deploy --detach of %d replicas", deployReplicas)
	t0 := time.Now()
	err = b.phase(ctx, "deploy berth", func() (err error) {
		r.berthDeploy, r.berthDeployCLI, err = b.berthDeploy(ctx, app)
		return err
	})
	if err != nil {
		b.dumpEvents(ctx, app, t0)
		return nil, fmt.Errorf("berth deploy: %w", err)
	}
	logf("berth: all %d answer 200 after %.2fs (CLI returned after %.2fs)", deployReplicas, r.berthDeploy.Seconds(), r.berthDeployCLI.Seconds())
	if err := b.waitRoutable(ctx, app, deployReplicas, 30*time.Second); err != nil {
		return nil, err
	}
	b.eventSummary(ctx, "deploy-to-ready", app, t0, r.berthDeploy, "placed", "started", "healthy", "unhealthy", "exited", "restarted", "failed")
	if err := sleep(ctx, settle); err != nil {
		return nil, err
	}
	if r.busyRSS, r.hwm, err = b.rss(); err != nil {
		return nil, err
	}
	logf("VmRSS of berth up with %d instances running: %.1f MiB (VmHWM %.1f MiB)", deployReplicas, r.busyRSS, r.hwm)

	logf("berth: rm %s", app)
	t0 = time.Now()
	err = b.phase(ctx, "teardown berth", func() (err error) {
		r.berthRm, r.berthRmCLI, err = b.berthTeardown(ctx, app)
		return err
	})
	if err != nil {
		b.dumpEvents(ctx, app, t0)
		return nil, fmt.Errorf("berth rm: %w", err)
	}
	logf("berth: no container of the cluster left after %.2fs (CLI returned after %.2fs)", r.berthRm.Seconds(), r.berthRmCLI.Seconds())
	b.eventSummary(ctx, "teardown", app, t0, r.berthRm, "retired", "stopping", "removed")
	if err := sleep(ctx, settle); err != nil {
		return nil, err
	}

	// 4. rolling update of 10 from demo:1 to demo:2 under traffic.
	if err := b.rolling(ctx, r); err != nil {
		return nil, fmt.Errorf("rolling update: %w", err)
	}
	return r, nil
}

// ---- berth process ----

func (b *bench) startBerth(ctx context.Context) error {
	if b.berthBin == "" {
		b.berthBin = filepath.Join(b.tmp, "berth")
		logf("building berth")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b.berthBin, "./cmd/berth")
		cmd.Dir, cmd.Stdout, cmd.Stderr = b.repo, os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/berth: %w", err)
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	b.addr = fmt.Sprintf("127.0.0.1:%d", port)
	logFile, err := os.Create(b.logPath)
	if err != nil {
		return err
	}
	gwPort, err := freePort()
	if err != nil {
		return err
	}
	b.up = exec.Command(b.berthBin, "up", "--listen", b.addr, "--data-dir", b.dataDir, "--gateway-addr", fmt.Sprintf("127.0.0.1:%d", gwPort))
	b.up.Stdout, b.up.Stderr = logFile, logFile
	// Own process group: Ctrl-C reaches the bench, which stops berth before
	// removing the containers (else the agent would make them again).
	b.up.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := b.up.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("berth up: %w", err)
	}
	b.upAt = time.Now()
	b.upDone = make(chan struct{})
	go func() { b.up.Wait(); logFile.Close(); close(b.upDone) }()
	logf("berth up (pid %d) on %s, data dir %s", b.up.Process.Pid, b.addr, b.dataDir)

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-b.upDone:
			return fmt.Errorf("berth up exited: %v", b.up.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("berth up: no node ready within 60s")
		}
		if b.token == "" {
			t, err := os.ReadFile(filepath.Join(b.dataDir, "token"))
			if err != nil || strings.TrimSpace(string(t)) == "" {
				continue
			}
			b.token = strings.TrimSpace(string(t))
		}
		if b.cluster == "" {
			var st struct {
				Cluster string `json:"cluster"`
			}
			if err := b.get(ctx, "/v1/status", &st); err != nil || st.Cluster == "" {
				continue
			}
			b.cluster = st.Cluster
		}
		var nodes list[struct {
			Name  string `json:"name"`
			State string `json:"state"`
		}]
		if err := b.get(ctx, "/v1/nodes", &nodes); err != nil {
			continue
		}
		for _, n := range nodes.Items {
			if n.State == "ready" {
				logf("berth ready: cluster %s, node %s", b.cluster, n.Name)
				return nil
			}
		}
	}
}

// rss reads VmRSS and VmHWM of berth up, in MiB.
func (b *bench) rss() (rss, hwm float64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.up.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc/<pid>/status")
	}
	return rss, hwm, nil
}

func (b *bench) berth(ctx context.Context, args ...string) *exec.Cmd {
	args = append([]string{"--addr", b.addr, "--data-dir", b.dataDir}, args...)
	return exec.CommandContext(ctx, b.berthBin, args...)
}

func (b *bench) get(ctx context.Context, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+b.addr+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+b.token)
	resp, err := b.api.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return &httpError{code: resp.StatusCode, body: strings.TrimSpace(string(body))}
	}
	return json.Unmarshal(body, v)
}

type httpError struct {
	code int
	body string
}

func (e *httpError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.body) }

func (b *bench) instances(ctx context.Context, app string) ([]instance, error) {
	var l list[instance]
	err := b.get(ctx, "/v1/instances?app="+app, &l)
	return l.Items, err
}

func (b *bench) writeSpec(name, image string, replicas int) (string, error) {
	spec := fmt.Sprintf(`name: %s
image: %s
port: 8080
replicas: %d
resources: {cpu: 50m, memory: 32Mi}
health: {http: /healthz, interval: 2s}
`, name, image, replicas)
	path := filepath.Join(b.tmp, fmt.Sprintf("%s-%s.yaml", name, strings.NewReplacer("/", "_", ":", "_").Replace(image)))
	return path, os.WriteFile(path, []byte(spec), 0o644)
}

// ---- deploy-to-ready ----

// waitAnswering polls addrs every 50ms and GETs / on each address whose key
// has not answered 200 yet (one probe in flight per key) until n keys have.
// It returns the time of the n-th answer.
func (b *bench) waitAnswering(ctx context.Context, n int, timeout time.Duration, addrs func(context.Context) (map[string]string, error)) ([]time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var mu sync.Mutex
	answered := map[string]time.Time{}
	inflight := map[string]bool{}
	done := make(chan struct{})
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			mu.Lock()
			got := len(answered)
			mu.Unlock()
			return nil, fmt.Errorf("%d of %d answered within %s: %w", got, n, timeout, ctx.Err())
		case <-done:
			mu.Lock()
			defer mu.Unlock()
			times := make([]time.Time, 0, len(answered))
			for _, t := range answered {
				times = append(times, t)
			}
			sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
			return times[:n], nil
		case <-tick.C:
		}
		m, err := addrs(ctx)
		if err != nil {
			continue
		}
		mu.Lock()
		for key, addr := range m {
			if addr == "" || inflight[key] || !answered[key].IsZero() {
				continue
			}
			inflight[key] = true
			go func() {
				ok := b.get200(ctx, addr)
				at := time.Now()
				mu.Lock()
				defer mu.Unlock()
				inflight[key] = false
				if ok && answered[key].IsZero() {
					answered[key] = at
					if len(answered) == n {
						close(done)
					}
				}
			}()
		}
		mu.Unlock()
	}
}

func (b *bench) get200(ctx context.Context, addr string) bool {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	if err != nil {
		return false
	}
	resp, err := b.probe.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200
}

func (b *bench) floorDeploy(ctx context.Context) ([]string, time.Duration, error) {
	var mu sync.Mutex
	addrs := map[string]string{}
	var ids []string
	var runTimes []time.Time
	var firstErr error
	jobs := make(chan int)
	var wg sync.WaitGroup
	ctx, abort := context.WithCancel(ctx)
	defer abort()
	t0 := time.Now()
	for range floorParallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				id, err := docker(ctx, "run", "-d", "-p", "127.0.0.1::8080", "--cpus", "0.05", "-m", "32m",
					"--label", "berth-bench.run="+b.runID, "berth/demo:1")
				ranAt := time.Now()
				var port string
				if err == nil {
					port, err = docker(ctx, "port", id, "8080")
				}
				mu.Lock()
				if id != "" {
					ids = append(ids, id)
					runTimes = append(runTimes, ranAt)
				}
				if err != nil && firstErr == nil {
					firstErr = err
					abort()
				}
				addrs[strconv.Itoa(i)] = firstLine(port)
				mu.Unlock()
			}
		}()
	}
	go func() {
		for i := range deployReplicas {
			select {
			case jobs <- i:
			case <-ctx.Done():
			}
		}
		close(jobs)
	}()
	answered, err := b.waitAnswering(ctx, deployReplicas, 90*time.Second, func(context.Context) (map[string]string, error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr != nil {
			return nil, firstErr
		}
		m := make(map[string]string, len(addrs))
		for k, v := range addrs {
			m[k] = v
		}
		return m, nil
	})
	wg.Wait()
	if firstErr != nil {
		err = firstErr
	}
	if err != nil {
		return ids, 0, err
	}
	sort.Slice(runTimes, func(i, j int) bool { return runTimes[i].Before(runTimes[j]) })
	b.note("deploy-to-ready floor: docker run returned %s; answered %s", spread(runTimes, t0), spread(answered, t0))
	return ids, answered[len(answered)-1].Sub(t0), nil
}

func (b *bench) berthDeploy(ctx context.Context, app string) (ready, cli time.Duration, err error) {
	spec, err := b.writeSpec(app, "berth/demo:1", deployReplicas)
	if err != nil {
		return 0, 0, err
	}
	wctx, abort := context.WithCancel(ctx)
	defer abort()
	t0 := time.Now()
	cliDone := make(chan error, 1)
	go func() {
		out, err := b.berth(ctx, "deploy", "--detach", "-f", spec).CombinedOutput()
		cli = time.Since(t0)
		if err != nil {
			err = fmt.Errorf("berth deploy --detach: %v: %s", err, bytes.TrimSpace(out))
			abort()
		}
		cliDone <- err
	}()
	answered, err := b.waitAnswering(wctx, deployReplicas, 90*time.Second, func(ctx context.Context) (map[string]string, error) {
		insts, err := b.instances(ctx, app)
		if err != nil {
			return nil, err
		}
		m := map[string]string{}
		for _, in := range insts {
			if in.Desired == "run" {
				m[in.Name] = in.Status.Address
			}
		}
		return m, nil
	})
	if cerr := <-cliDone; cerr != nil {
		return 0, 0, cerr
	}
	if err != nil {
		return 0, 0, err
	}
	b.note("deploy-to-ready berth: answered %s", spread(answered, t0))
	return answered[len(answered)-1].Sub(t0), cli, nil
}

// waitRoutable waits until the API shows n routable instances of app.
func (b *bench) waitRoutable(ctx context.Context, app string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		insts, err := b.instances(ctx, app)
		if err == nil {
			c := 0
			for _, in := range insts {
				if in.routable() {
					c++
				}
			}
			if c == n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not %d routable instances within %s", app, n, timeout)
		}
		if err := sleep(ctx, pollEvery); err != nil {
			return err
		}
	}
}

// ---- teardown ----

func (b *bench) floorTeardown(ctx context.Context, ids []string) (time.Duration, error) {
	t0 := time.Now()
	if _, err := docker(ctx, append([]string{"rm", "-f"}, ids...)...); err != nil {
		return 0, err
	}
	d := time.Since(t0)
	left, err := docker(ctx, "ps", "-aq", "--filter", "label=berth-bench.run="+b.runID)
	if err != nil {
		return 0, err
	}
	if left != "" {
		return 0, fmt.Errorf("containers left after docker rm -f: %s", left)
	}
	return d, nil
}

func (b *bench) berthTeardown(ctx context.Context, app string) (gone, cli time.Duration, err error) {
	t0 := time.Now()
	cliDone := make(chan error, 1)
	go func() {
		out, err := b.berth(ctx, "rm", app).CombinedOutput()
		cli = time.Since(t0)
		if err != nil {
			err = fmt.Errorf("berth rm: %v: %s", err, bytes.TrimSpace(out))
		}
		cliDone <- err
	}()
	gone, err = b.waitNoContainers(ctx, t0, 90*time.Second, "label=berth.cluster="+b.cluster)
	if cerr := <-cliDone; cerr != nil {
		return 0, 0, cerr
	}
	return gone, cli, err
}

// waitNoContainers polls docker ps every 50ms until no container matches the filters.
func (b *bench) waitNoContainers(ctx context.Context, t0 time.Time, timeout time.Duration, filters ...string) (time.Duration, error) {
	args := []string{"ps", "-aq"}
	for _, f := range filters {
		args = append(args, "--filter", f)
	}
	deadline := time.Now().Add(timeout)
	for {
		out, err := docker(ctx, args...)
		at := time.Now()
		if err == nil && out == "" {
			return at.Sub(t0), nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("containers still there after %s: %d", timeout, len(strings.Fields(out)))
		}
		time.Sleep(pollEvery)
	}
}

// ---- rolling update ----

func (b *bench) rolling(ctx context.Context, r *results) error {
	app := "roll"
	v1, err := b.writeSpec(app, "berth/demo:1", rollReplicas)
	if err != nil {
		return err
	}
	v2, err := b.writeSpec(app, "berth/demo:2", rollReplicas)
	if err != nil {
		return err
	}
	logf("rolling: deploying %d replicas of berth/demo:1", rollReplicas)
	if out, err := b.berth(ctx, "deploy", "-f", v1).CombinedOutput(); err != nil {
		return fmt.Errorf("deploy v1: %v: %s", err, bytes.TrimSpace(out))
	}
	if err := b.waitRoutable(ctx, app, rollReplicas, 30*time.Second); err != nil {
		return err
	}
	var old appRecord
	if err := b.get(ctx, "/v1/apps/"+app, &old); err != nil {
		return err
	}

	cctx, stopClient := context.WithCancel(ctx)
	cl := &rollClient{b: b, app: app}
	clientDone := make(chan struct{})
	go func() { cl.run(cctx); close(clientDone) }()
	if err := sleep(ctx, time.Second); err != nil { // traffic before the update, as a baseline
		stopClient()
		return err
	}

	logf("rolling: berth deploy -f (berth/demo:2)")
	t0 := time.Now()
	cliDone := make(chan error, 1)
	go func() {
		out, err := b.berth(ctx, "deploy", "-f", v2).CombinedOutput()
		r.rollCLI = time.Since(t0)
		if err != nil {
			err = fmt.Errorf("berth deploy (v2): %v: %s", err, bytes.TrimSpace(out))
		}
		cliDone <- err
	}()
	var converged time.Duration
	var cliErr error
	err = b.phase(ctx, "rolling update berth", func() (err error) {
		converged, err = b.waitRolled(ctx, app, old.TemplateRevision, t0, 150*time.Second)
		cliErr = <-cliDone
		return err
	})
	sleep(ctx, 500*time.Millisecond) // traffic after the update
	stopClient()
	<-clientDone
	if err != nil {
		b.dumpEvents(ctx, app, t0)
		return err
	}
	if cliErr != nil {
		return cliErr
	}
	r.roll = converged
	r.rollTotal, r.rollFailed = cl.total, cl.failed()
	r.rollDetail = cl.detail()
	logf("rolling: converged after %.2fs by polling, CLI returned after %.2fs; client: %s", converged.Seconds(), r.rollCLI.Seconds(), r.rollDetail)
	if r.rollCLI < converged-200*time.Millisecond {
		b.note("rolling update: berth deploy returned %.2fs before the bench saw the update converged (%.2fs)", r.rollCLI.Seconds(), converged.Seconds())
	}
	for _, f := range cl.failures {
		b.note("rolling update: failed request at +%.2fs: %s", f.at.Sub(t0).Seconds(), f.msg)
	}
	b.eventSummary(ctx, "rolling update", app, t0, converged, "placed", "started", "healthy", "retired", "stopping", "removed", "unhealthy", "exited", "restarted", "failed")
	b.rollTimeline(ctx, app, t0)

	logf("rolling: berth rm %s", app)
	if out, err := b.berth(ctx, "rm", app).CombinedOutput(); err != nil {
		return fmt.Errorf("berth rm %s: %v: %s", app, err, bytes.TrimSpace(out))
	}
	_, err = b.waitNoContainers(ctx, time.Now(), 60*time.Second, "label=berth.cluster="+b.cluster)
	return err
}

// waitRolled polls until the app has exactly rollReplicas instances, all at
// a template revision newer than oldRev and routable, and Docker has exactly
// rollReplicas containers of the app (the old ones removed).
func (b *bench) waitRolled(ctx context.Context, app string, oldRev int64, t0 time.Time, timeout time.Duration) (time.Duration, error) {
	deadline := t0.Add(timeout)
	last := ""
	for {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("not rolled out within %s (%s)", timeout, last)
		}
		if err := sleep(ctx, pollEvery); err != nil {
			return 0, err
		}
		var a appRecord
		if err := b.get(ctx, "/v1/apps/"+app, &a); err != nil || a.TemplateRevision <= oldRev {
			continue
		}
		insts, err := b.instances(ctx, app)
		if err != nil {
			continue
		}
		ok := 0
		for _, in := range insts {
			if in.Revision == a.TemplateRevision && in.routable() {
				ok++
			}
		}
		last = fmt.Sprintf("%d instances, %d routable at revision %d", len(insts), ok, a.TemplateRevision)
		if len(insts) != rollReplicas || ok != rollReplicas {
			continue
		}
		at := time.Now()
		out, err := docker(ctx, "ps", "-aq", "--filter", "label=berth.cluster="+b.cluster, "--filter", "label=berth.app="+app)
		if err != nil || len(strings.Fields(out)) != rollReplicas {
			last += fmt.Sprintf(", %d containers", len(strings.Fields(out)))
			continue
		}
		return at.Sub(t0), nil
	}
}

type failure struct {
	at  time.Time
	msg string
}

// rollClient sends GET / every ~10ms to a routable instance taken from a
// fresh API list each time.
type rollClient struct {
	b   *bench
	app string

	total, errs, non200, noRoute, v2, apiErrs int
	failures                                  []failure // the first few
}

func (c *rollClient) failed() int { return c.errs + c.non200 + c.noRoute }

func (c *rollClient) fail(msg string) {
	if len(c.failures) < 10 {
		c.failures = append(c.failures, failure{time.Now(), msg})
	}
}

func (c *rollClient) detail() string {
	return fmt.Sprintf("%d requests, %d failed (%d connection errors, %d non-200, %d with no routable instance), %d answered version=2; %d API list errors (not counted)",
		c.total, c.failed(), c.errs, c.non200, c.noRoute, c.v2, c.apiErrs)
}

func (c *rollClient) run(ctx context.Context) {
	tick := time.NewTicker(clientEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		insts, err := c.b.instances(ctx, c.app)
		if err != nil {
			if ctx.Err() == nil {
				c.apiErrs++
			}
			continue
		}
		var routable []instance
		for _, in := range insts {
			if in.routable() {
				routable = append(routable, in)
			}
		}
		c.total++
		if len(routable) == 0 {
			c.noRoute++
			c.fail("no routable instance")
			continue
		}
		in := routable[rand.IntN(len(routable))]
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+in.Status.Address+"/", nil)
		resp, err := c.b.probe.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				c.total--
				return
			}
			c.errs++
			c.fail(fmt.Sprintf("%s (%s, revision %d): %v", in.Name, in.Status.Address, in.Revision, err))
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			c.non200++
			c.fail(fmt.Sprintf("%s (%s): HTTP %d", in.Name, in.Status.Address, resp.StatusCode))
			continue
		}
		if bytes.Contains(body, []byte("version=2")) {
			c.v2++
		}
	}
}

// ---- events: where berth's time goes ----

func (b *bench) events(ctx context.Context, app string, since time.Time) ([]event, error) {
	var l list[event]
	if err := b.get(ctx, "/v1/events?limit=10000&app="+app, &l); err != nil {
		return nil, err
	}
	var out []event
	for _, e := range l.Items {
		if !e.Time.Before(since.Add(-time.Second)) {
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// eventSummary notes, per kind of event, how many there were and when
// (first, median, last, relative to the start of the phase).
func (b *bench) eventSummary(ctx context.Context, phase, app string, t0 time.Time, measured time.Duration, kinds ...string) {
	evs, err := b.events(ctx, app, t0)
	if err != nil {
		b.note("%s: events: %v", phase, err)
		return
	}
	byKind := map[string][]float64{}
	for _, e := range evs {
		if e.Instance != "" { // app-level events (deployed, deleted, removed) are not counted
			byKind[e.Kind] = append(byKind[e.Kind], e.Time.Sub(t0).Seconds())
		}
	}
	var parts []string
	for _, k := range kinds {
		ts := byKind[k]
		if len(ts) == 0 {
			continue
		}
		sort.Float64s(ts)
		parts = append(parts, fmt.Sprintf("%s %d %s", k, len(ts), spreadSecs(ts)))
	}
	b.note("%s events of %s, measured %.2fs: %s", phase, app, measured.Seconds(), strings.Join(parts, "; "))
	if b.verbose {
		for _, e := range evs {
			fmt.Printf("    %+7.2fs  %-12s %-10s %s\n", e.Time.Sub(t0).Seconds(), e.Instance, e.Kind, e.Message)
		}
	}
}

// rollTimeline notes the per-replica rhythm of a rolling update: the gaps
// between successive "healthy" events of new instances.
func (b *bench) rollTimeline(ctx context.Context, app string, t0 time.Time) {
	evs, err := b.events(ctx, app, t0)
	if err != nil {
		return
	}
	placed := map[string]time.Time{}
	var steps []string
	for _, e := range evs {
		if e.Time.Before(t0) {
			continue
		}
		switch e.Kind {
		case "placed":
			placed[e.Instance] = e.Time
		case "healthy":
			if p, ok := placed[e.Instance]; ok {
				steps = append(steps, fmt.Sprintf("%s +%.2f (%.2fs after placed)", e.Instance, e.Time.Sub(t0).Seconds(), e.Time.Sub(p).Seconds()))
			}
		}
	}
	b.note("rolling update: new instances healthy at: %s", strings.Join(steps, ", "))
}

func (b *bench) dumpEvents(ctx context.Context, app string, t0 time.Time) {
	evs, err := b.events(context.WithoutCancel(ctx), app, t0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: events:", err)
		return
	}
	fmt.Fprintf(os.Stderr, "bench: events of %s:\n", app)
	for _, e := range evs {
		fmt.Fprintf(os.Stderr, "    %+7.2fs  %-12s %-10s %s\n", e.Time.Sub(t0).Seconds(), e.Instance, e.Kind, e.Message)
	}
}

func (b *bench) printLogTail(w io.Writer, n int) {
	data, err := os.ReadFile(b.logPath)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(w, "bench: last lines of %s:\n", b.logPath)
	for _, l := range lines {
		fmt.Fprintln(w, "    "+l)
	}
}

// logProblems notes berth's warnings and errors, counted by message.
func (b *bench) logProblems() {
	f, err := os.Open(b.logPath)
	if err != nil {
		return
	}
	defer f.Close()
	count := map[string]int{}
	var order []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, "level=WARN") && !strings.Contains(l, "level=ERROR") {
			continue
		}
		key := measure.LogKey(l)
		if c := strings.Index(l, "component="); c >= 0 {
			comp, _, _ := strings.Cut(l[c:], " ")
			key += " " + comp
		}
		if count[key] == 0 {
			order = append(order, key)
		}
		count[key]++
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%dx %s", count[k], k))
	}
	if len(parts) > 0 {
		b.note("berth log warnings/errors: %s", strings.Join(parts, "; "))
	}
}

func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.notes = append(b.notes, s)
	logf("note: %s", s)
}

// foreign counts the containers other users of the Docker engine created
// between t0 and now: the bench shares the engine and the CPUs with them.
func (b *bench) foreign(ctx context.Context, t0 time.Time) int {
	out, err := docker(ctx, "events", "--since", unixArg(t0), "--until", unixArg(time.Now()),
		"--filter", "type=container", "--filter", "event=create",
		"--format", `{{index .Actor.Attributes "berth.cluster"}}|{{index .Actor.Attributes "berth-bench.run"}}`)
	if err != nil {
		return -1
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if l == "" {
			continue
		}
		cluster, run, _ := strings.Cut(l, "|")
		if cluster != b.cluster && run != b.runID {
			n++
		}
	}
	return n
}

func unixArg(t time.Time) string { return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond()) }

func loadavg() string {
	load, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(load)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// phase runs f and notes how busy the machine was meanwhile.
func (b *bench) phase(ctx context.Context, name string, f func() error) error {
	l0, t0 := loadavg(), time.Now()
	err := f()
	if ctx.Err() == nil {
		b.interference = append(b.interference, fmt.Sprintf("%s: load %s -> %s, %d containers created by others", name, l0, loadavg(), b.foreign(ctx, t0)))
	}
	return err
}

// ---- output ----

func (b *bench) render(ctx context.Context, r *results) string {
	b.logProblems()
	var w strings.Builder
	engine, _ := docker(ctx, "version", "--format", "{{.Server.Version}}")
	nproc, _ := exec.CommandContext(ctx, "nproc").Output()
	rev, _ := exec.CommandContext(ctx, "git", "-C", b.repo, "describe", "--always", "--dirty").Output()
	fmt.Fprintf(&w, "berth bench  %s  docker %s  nproc %s  berth %s  (one run; wall time %.0fs)\n\n",
		time.Now().Format(time.RFC3339), engine, strings.TrimSpace(string(nproc)), strings.TrimSpace(string(rev)), r.wall.Seconds())

	dr := r.berthDeploy.Seconds() / r.floorDeploy.Seconds()
	fmt.Fprintf(&w, "%-22s berth %6.2fs   %-16s %6.2fs   ratio %.2f (target <= %.1f)  %s\n",
		fmt.Sprintf("deploy-to-ready %d", deployReplicas), r.berthDeploy.Seconds(), "docker run -P4", r.floorDeploy.Seconds(), dr, deployTarget, mark(dr, deployTarget, deployFail))
	per := r.roll.Seconds() / rollReplicas
	fr := 0.0
	if r.rollTotal > 0 {
		fr = float64(r.rollFailed) / float64(r.rollTotal)
	}
	fmt.Fprintf(&w, "%-22s berth %6.2fs   %.2f s/replica   failed requests %d/%d (%.2f%%)   ratio to swarm %.2f\n",
		fmt.Sprintf("rolling update %d", rollReplicas), r.roll.Seconds(), per, r.rollFailed, r.rollTotal, 100*fr, per/swarmPerReplica)
	fmt.Fprintf(&w, "%-22s (docker swarm: %.1f s/replica, quoted from an earlier measurement, not measured in this run)\n", "", swarmPerReplica)
	tr := r.berthRm.Seconds() / r.floorRm.Seconds()
	fmt.Fprintf(&w, "%-22s berth %6.2fs   %-16s %6.2fs   ratio %.2f (target <= %.1f)  %s\n",
		fmt.Sprintf("teardown %d", deployReplicas), r.berthRm.Seconds(), "docker rm -f", r.floorRm.Seconds(), tr, teardownTarget, mark(tr, teardownTarget, teardownTarget))
	memMark := "ok"
	if r.busyRSS >= memTargetMiB || r.idleRSS >= memTargetMiB {
		memMark = "FAIL"
	}
	fmt.Fprintf(&w, "%-22s idle %6.1f MiB   %d instances %6.1f MiB   (target < %.0f MiB)  %s\n",
		"berth up VmRSS", r.idleRSS, deployReplicas, r.busyRSS, memTargetMiB, memMark)

	fmt.Fprintf(&w, "\ndetails:\n")
	fmt.Fprintf(&w, "- deploy-to-ready: berth deploy --detach returned after %.2fs; readiness = every instance answered GET / with 200 from outside, polled every %s\n", r.berthDeployCLI.Seconds(), pollEvery)
	fmt.Fprintf(&w, "- rolling update: berth deploy (following) returned after %.2fs, polling saw it converged after %.2fs; client: %s\n", r.rollCLI.Seconds(), r.roll.Seconds(), r.rollDetail)
	fmt.Fprintf(&w, "- teardown: berth rm returned after %.2fs; the last container of the cluster was gone after %.2fs (docker ps polled every %s)\n", r.berthRmCLI.Seconds(), r.berthRm.Seconds(), pollEvery)
	fmt.Fprintf(&w, "- memory: VmHWM (peak RSS) of berth up %.1f MiB\n", r.hwm)
	fmt.Fprintf(&w, "- machine during the phases (this Docker engine and CPUs are shared): %s\n", strings.Join(b.interference, "; "))
	for _, n := range b.notes {
		fmt.Fprintf(&w, "- %s\n", n)
	}
	return w.String()
}

func mark(ratio, target, fail float64) string {
	switch {
	case ratio > fail:
		return "FAIL"
	case ratio > target:
		return "above target"
	}
	return "ok"
}

// ---- cleanup ----

// cleanup stops berth (so that its agent makes no containers again), then
// removes every container of its cluster and of the floor.
func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if b.up != nil && b.up.Process != nil {
		select {
		case <-b.upDone:
		default:
			b.up.Process.Signal(syscall.SIGTERM)
			select {
			case <-b.upDone:
			case <-time.After(15 * time.Second):
				fmt.Fprintln(os.Stderr, "bench: berth up did not stop within 15s of SIGTERM; killing it")
				b.up.Process.Kill()
				<-b.upDone
			}
		}
	}
	labels := []string{"berth-bench.run=" + b.runID}
	if b.cluster != "" {
		labels = append(labels, "berth.cluster="+b.cluster)
	}
	for _, l := range labels {
		// Retry: an interrupted docker rm leaves removals in progress that a
		// second rm refuses ("already in progress").
		for attempt := 0; ; attempt++ {
			out, err := docker(ctx, "ps", "-aq", "--filter", "label="+l)
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench: cleanup:", err)
				break
			}
			ids := strings.Fields(out)
			if len(ids) == 0 {
				break
			}
			if attempt == 10 {
				fmt.Fprintf(os.Stderr, "bench: cleanup: %d containers labelled %s are left: %s\n", len(ids), l, strings.Join(ids, " "))
				break
			}
			if attempt == 0 {
				fmt.Fprintf(os.Stderr, "bench: cleanup: removing %d containers labelled %s\n", len(ids), l)
			}
			docker(ctx, append([]string{"rm", "-f"}, ids...)...)
			sleep(ctx, time.Second)
		}
	}
}

// ---- helpers ----

func docker(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("docker %s: %v: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "127.0.0.1:") {
			return l
		}
	}
	return ""
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "cmd", "berth")); err == nil {
				return d, nil
			}
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("run from inside the berth repository (no go.mod with cmd/berth above %s)", dir)
		}
	}
}

// spread describes when things happened relative to t0 (times sorted).
func spread(times []time.Time, t0 time.Time) string {
	ts := make([]float64, len(times))
	for i, t := range times {
		ts[i] = t.Sub(t0).Seconds()
	}
	return fmt.Sprintf("%d %s", len(ts), spreadSecs(ts))
}

func spreadSecs(ts []float64) string {
	if len(ts) == 0 {
		return "(none)"
	}
	return fmt.Sprintf("(first +%.2fs, median +%.2fs, last +%.2fs)", ts[0], ts[len(ts)/2], ts[len(ts)-1])
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

var benchStart = time.Now()

func logf(format string, args ...any) {
	fmt.Printf("[%6.1fs] %s\n", time.Since(benchStart).Seconds(), fmt.Sprintf(format, args...))
}
