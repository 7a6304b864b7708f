// Command gateway benchmarks berth's gateway in one run on this machine:
// throughput and p99 with wrk at 64 connections, in rounds (medians),
// against two instances of berth/demo:1 directly, through berth's gateway
// and through nginx with keep-alive upstreams to the same addresses; and the cold wake of an idled
// app against the floor of `docker start` of a stopped container until its
// first HTTP 200.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

var (
	berthBin = flag.String("berth", "", "berth binary")
	out      = flag.String("out", "", "write the results here too")
	duration = flag.Duration("d", 5*time.Second, "wrk duration per target and round")
	rounds   = flag.Int("rounds", 5, "rounds of direct, gateway and nginx")
	wakes    = flag.Int("wakes", 10, "cold wakes to time")
)

type bench struct {
	tmp, api, gw, token, cluster string
	up                           *exec.Cmd
	http                         *http.Client
}

func main() {
	flag.Parse()
	b := &bench{http: &http.Client{Timeout: 60 * time.Second}}
	code := 0
	if err := b.run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench gateway: FAILED:", err)
		code = 1
	}
	b.cleanup()
	os.Exit(code)
}

func (b *bench) run() error {
	var err error
	if b.tmp, err = os.MkdirTemp("", "berth-gw-bench-"); err != nil {
		return err
	}
	b.api, b.gw = freeAddr(), freeAddr()
	log, _ := os.Create(filepath.Join(b.tmp, "berth.log"))
	b.up = exec.Command(*berthBin, "up", "--listen", b.api, "--gateway-addr", b.gw, "--data-dir", filepath.Join(b.tmp, "data"))
	b.up.Stdout, b.up.Stderr = log, log
	if err := b.up.Start(); err != nil {
		return err
	}
	if err := waitFor(30*time.Second, func() bool { return get200(b.http, "http://"+b.api+"/healthz", "") }); err != nil {
		return fmt.Errorf("berth up did not answer: %w", err)
	}
	tok, err := os.ReadFile(filepath.Join(b.tmp, "data", "token"))
	if err != nil {
		return err
	}
	b.token = strings.TrimSpace(string(tok))
	var st struct{ Cluster string }
	if err := b.getJSON("/v1/status", &st); err != nil {
		return err
	}
	b.cluster = st.Cluster

	// Throughput: two instances, each allowed most of a core.
	if err := b.deploy("gw", "replicas: 2\nresources: {cpu: 900m, memory: 64Mi}\nroutes: [gw.bench]\n"); err != nil {
		return err
	}
	addrs, err := b.containerAddresses("gw")
	if err != nil {
		return err
	}
	nginxAddr, stopNginx, err := startNginx(b.tmp, addrs)
	if err != nil {
		return err
	}
	defer stopNginx()
	// Rounds alternate which proxy goes first, so that neither always runs
	// on the warmer (or noisier) side of the machine; the ratio is the
	// median of the rounds' ratios.
	var direct, gateway, nginx []wrkResult
	var ratios []float64
	for r := 0; r < *rounds; r++ {
		d := wrk("http://"+addrs[0]+"/", "gw.bench")
		var g, n wrkResult
		if r%2 == 0 {
			g = wrk("http://"+b.gw+"/", "gw.bench")
			n = wrk("http://"+nginxAddr+"/", "gw.bench")
		} else {
			n = wrk("http://"+nginxAddr+"/", "gw.bench")
			g = wrk("http://"+b.gw+"/", "gw.bench")
		}
		for _, res := range []wrkResult{d, g, n} {
			if res.err != nil {
				return res.err
			}
		}
		direct, gateway, nginx = append(direct, d), append(gateway, g), append(nginx, n)
		ratios = append(ratios, g.rps/n.rps)
		fmt.Fprintf(os.Stderr, "round %d: direct %.0f, gateway %.0f, nginx %.0f req/s: ratio %.2f\n", r+1, d.rps, g.rps, n.rps, g.rps/n.rps)
	}
	if _, err := b.cli("rm", "gw"); err != nil {
		return err
	}

	// Cold wake against docker start of a stopped container.
	floor, err := floorWakes(*wakes)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	if err := b.deploy("wake", "replicas: 1\nresources: {cpu: 500m, memory: 32Mi}\nroutes: [wake.bench]\nidle: {stop_after: 1s, wake_timeout: 30s}\n"); err != nil {
		return err
	}
	var cold []time.Duration
	for i := 0; i < *wakes; i++ {
		if err := waitFor(60*time.Second, func() bool { return b.idle("wake") }); err != nil {
			return fmt.Errorf("app did not idle: %w", err)
		}
		t0 := time.Now()
		if !get200(b.http, "http://"+b.gw+"/", "wake.bench") {
			return fmt.Errorf("wake %d: request through the gateway failed", i+1)
		}
		cold = append(cold, time.Since(t0))
	}

	report := fmt.Sprintf(`berth gateway bench  %s  nproc %d  (one run: %d rounds of wrk -t2 -c64 -d%s --latency each; medians)

throughput, 2 instances of berth/demo:1 (cpu 900m each)
  direct (one instance)   %8.0f req/s   p99 %s
  berth gateway           %8.0f req/s   p99 %s
  nginx (keepalive 64)    %8.0f req/s   p99 %s
  ratio gateway/nginx     %8.2f         (rounds: %s; target >= 1.0; not done below 0.8)

cold wake, p50 of %d
  berth: request to an idled app until its response   %s   (all: %s)
  floor: docker start of a stopped container until HTTP 200   %s   (all: %s)
  ratio berth/floor   %.2f   (target <= 1.2)
`, time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), *rounds, *duration,
		medianRPS(direct), medianP99(direct), medianRPS(gateway), medianP99(gateway), medianRPS(nginx), medianP99(nginx),
		median(ratios), listRatios(ratios),
		*wakes, p50(cold), list(cold), p50(floor), list(floor), p50(cold).Seconds()/p50(floor).Seconds())
	fmt.Print("\n" + report)
	if *out != "" {
		return os.WriteFile(*out, []byte(report), 0o644)
	}
	return nil
}

func (b *bench) cli(args ...string) (string, error) {
	cmd := exec.Command(*berthBin, args...)
	cmd.Env = append(os.Environ(), "BERTH_ADDR="+b.api, "BERTH_TOKEN="+b.token)
	outb, err := cmd.CombinedOutput()
	if err != nil {
		return string(outb), fmt.Errorf("berth %s: %v: %s", strings.Join(args, " "), err, outb)
	}
	return string(outb), nil
}

func (b *bench) deploy(name, extra string) error {
	spec := fmt.Sprintf("name: %s\nimage: berth/demo:1\nport: 8080\nhealth: {http: /healthz, interval: 1s, timeout: 1s, retries: 3, start_period: 10s}\n%s", name, extra)
	path := filepath.Join(b.tmp, name+".yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		return err
	}
	_, err := b.cli("deploy", "-f", path)
	return err
}

type instance struct {
	Desired string `json:"desired"`
	Status  struct {
		State            string `json:"state"`
		ContainerAddress string `json:"container_address"`
	} `json:"status"`
}

func (b *bench) getJSON(path string, v any) error {
	req, _ := http.NewRequest("GET", "http://"+b.api+path, nil)
	req.Header.Set("Authorization", "Bearer "+b.token)
	resp, err := b.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func (b *bench) instances(app string) ([]instance, error) {
	var l struct{ Items []instance }
	return l.Items, b.getJSON("/v1/instances?app="+app, &l)
}

// containerAddresses are the upstreams berth's gateway uses on its own node;
// nginx gets the same ones.
func (b *bench) containerAddresses(app string) ([]string, error) {
	insts, err := b.instances(app)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, i := range insts {
		if i.Desired == "run" && i.Status.ContainerAddress != "" {
			addrs = append(addrs, i.Status.ContainerAddress)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("no instance of %s has an address", app)
	}
	return addrs, nil
}

func (b *bench) idle(app string) bool {
	insts, err := b.instances(app)
	if err != nil || len(insts) == 0 {
		return false
	}
	for _, i := range insts {
		if i.Status.State != "idle" {
			return false
		}
	}
	return true
}

func (b *bench) cleanup() {
	if b.up != nil && b.up.Process != nil {
		_ = b.up.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = b.up.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = b.up.Process.Kill()
		}
	}
	// Every container this run made: berth's (by the data dir's cluster) and the floor's.
	ids, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=berth-gw-bench=1").Output()
	if b.cluster != "" {
		more, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=berth.cluster="+b.cluster).Output()
		ids = append(ids, more...)
	}
	if f := strings.Fields(string(ids)); len(f) > 0 {
		_ = exec.Command("docker", append([]string{"rm", "-f"}, f...)...).Run()
	}
	if b.tmp != "" {
		os.RemoveAll(b.tmp)
	}
}

type wrkResult struct {
	rps float64
	p99 time.Duration
	err error
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianRPS(rs []wrkResult) float64 {
	var xs []float64
	for _, r := range rs {
		xs = append(xs, r.rps)
	}
	return median(xs)
}

func medianP99(rs []wrkResult) time.Duration {
	var xs []float64
	for _, r := range rs {
		xs = append(xs, float64(r.p99))
	}
	return time.Duration(median(xs)).Round(10 * time.Microsecond)
}

func listRatios(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(parts, " ")
}

var (
	rpsLine = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	p99Line = regexp.MustCompile(`99%\s+(\S+)`)
	errLine = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: .*`)
)

func wrk(url, host string) wrkResult {
	outb, err := exec.Command("wrk", "-t2", "-c64", "-d"+duration.String(), "--latency", "-H", "Host: "+host, url).CombinedOutput()
	if err != nil {
		return wrkResult{err: fmt.Errorf("wrk %s: %v: %s", url, err, outb)}
	}
	s := string(outb)
	if m := errLine.FindString(s); m != "" {
		return wrkResult{err: fmt.Errorf("wrk %s: %s", url, m)}
	}
	m, p := rpsLine.FindStringSubmatch(s), p99Line.FindStringSubmatch(s)
	if m == nil || p == nil {
		return wrkResult{err: fmt.Errorf("wrk %s: unexpected output: %s", url, s)}
	}
	var r wrkResult
	fmt.Sscan(m[1], &r.rps)
	if r.p99, err = time.ParseDuration(p[1]); err != nil {
		return wrkResult{err: fmt.Errorf("wrk %s: p99 %q: %v", url, p[1], err)}
	}
	return r
}

func startNginx(dir string, upstreams []string) (string, func(), error) {
	if _, err := exec.LookPath("nginx"); err != nil {
		return "", nil, fmt.Errorf("nginx not installed (apt-get install nginx)")
	}
	addr := freeAddr()
	var servers strings.Builder
	for _, u := range upstreams {
		fmt.Fprintf(&servers, "server %s;\n", u)
	}
	conf := fmt.Sprintf(`worker_processes auto;
error_log %[1]s/nginx-error.log;
pid %[1]s/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { %[2]s keepalive 64; }
  server {
    listen %[3]s;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; }
  }
}
`, dir, servers.String(), addr)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	cmd := exec.Command("nginx", "-c", path, "-p", dir, "-g", "daemon off;")
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	// TERM to the master stops its workers too (a KILL would orphan them).
	stop := func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }
	if err := waitFor(10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		stop()
		return "", nil, fmt.Errorf("nginx did not listen: %w", err)
	}
	return addr, stop, nil
}

// floorWakes times `docker start` of a stopped demo container until its
// first HTTP 200 on its published port, polled every 5ms from outside.
func floorWakes(n int) ([]time.Duration, error) {
	ctx := context.Background()
	idb, err := exec.CommandContext(ctx, "docker", "run", "-d", "--label", "berth-gw-bench=1", "--init", "-p", "127.0.0.1::8080", "--cpus", "0.5", "-m", "32m", "berth/demo:1").Output()
	if err != nil {
		return nil, err
	}
	id := strings.TrimSpace(string(idb))
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var times []time.Duration
	for i := 0; i < n; i++ {
		if err := exec.Command("docker", "stop", id).Run(); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if err := exec.Command("docker", "start", id).Run(); err != nil {
			return nil, err
		}
		port, err := exec.Command("docker", "port", id, "8080/tcp").Output()
		if err != nil {
			return nil, err
		}
		url := "http://" + strings.TrimSpace(strings.Split(string(port), "\n")[0]) + "/"
		if err := waitFor(30*time.Second, func() bool { return get200(client, url, "") }); err != nil {
			return nil, err
		}
		times = append(times, time.Since(t0))
	}
	return times, nil
}

func get200(c *http.Client, url, host string) bool {
	req, _ := http.NewRequest("GET", url, nil)
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("not within %s", timeout)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func p50(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2].Round(time.Millisecond)
}

func list(ds []time.Duration) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, d.Round(time.Millisecond).String())
	}
	return strings.Join(parts, " ")
}
