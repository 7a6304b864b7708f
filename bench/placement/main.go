// Command placement benchmarks placement at scale: the real server pieces
// in one process (embedded etcd, the API on a loopback listener, the app
// and task controllers, wired as `berth up` wires them) and simulated
// nodes without Docker that register, heartbeat, watch their instances
// through the API and report them running (see fleet.go for why they are
// not agent.Agent). Apps are deployed through the API (PUT /v1/apps/{name})
// until their replicas make -instances; the bench follows the instances in
// the store and prints how fast they were placed and committed (their node
// written in the store) and, separately, acknowledged by their nodes.
//
//	go run ./bench/placement [-instances 100000 -nodes 1000 -apps 100] [-c1m]
//	    [-out bench/placement-results.txt] [-cpuprofile f] [-heartbeat 3s -node-ttl 10s]
//
// -c1m adds a second run after the first: 1,000,000 instances on 5,000
// nodes (1,000 apps), the size of Nomad's C1M, with heartbeats every 10s
// and a node TTL of 30s (-c1m-heartbeat, -c1m-node-ttl; see there why).
// Each run is a child process of its own (this program with -child), so
// that its peak RSS is its own: the server, its embedded etcd and the
// simulated nodes together. -cpuprofile records each run from the deploy
// to the last report.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

var (
	nInstances = flag.Int("instances", 100000, "instances to place: the replicas of all apps")
	nNodes     = flag.Int("nodes", 1000, "simulated nodes")
	nApps      = flag.Int("apps", 100, "apps the instances belong to (at most 1,000 replicas each)")
	zones      = flag.Int("zones", 3, "values of the nodes' zone label")
	c1m        = flag.Bool("c1m", false, "then a second run: 1,000,000 instances on 5,000 nodes, 1,000 apps")
	heartbeat  = flag.Duration("heartbeat", 3*time.Second, "how often each simulated node heartbeats (agent.Agent's default: 3s)")
	nodeTTL    = flag.Duration("node-ttl", 10*time.Second, "the server's node TTL (raise it with -heartbeat)")
	c1mBeat    = flag.Duration("c1m-heartbeat", 10*time.Second, "-heartbeat of the -c1m run: 5,000 nodes every 3s are more writes than the server keeps up with while it places")
	c1mTTL     = flag.Duration("c1m-node-ttl", 30*time.Second, "-node-ttl of the -c1m run")
	workers    = flag.Int("report-workers", 64, "workers sending the simulated nodes' reports, all nodes together")
	timeout    = flag.Duration("timeout", 30*time.Minute, "give up when placing, or acknowledging, takes longer")
	out        = flag.String("out", "", "write the results here too (run.sh: bench/placement-results.txt)")
	cpuProfile = flag.String("cpuprofile", "", "write a CPU profile of each run here (of the -c1m run: with .c1m added)")
	verbose    = flag.Bool("v", false, "print the server's warnings and errors as they come")
	debugAddr  = flag.String("debug-addr", "", "serve net/http/pprof of the run here (e.g. 127.0.0.1:6060)")
	asChild    = flag.Bool("child", false, "internal: run once and print the result as JSON on stdout")
)

// target is Nomad's C1M: 1,000,000 containers on 5,000 hosts in under 5
// minutes is about 3,750 a second.
const target = 3750.0

func main() {
	flag.Parse()
	os.Exit(run())
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := config{Instances: *nInstances, Nodes: *nNodes, Apps: *nApps, Zones: *zones,
		Heartbeat: *heartbeat, NodeTTL: *nodeTTL, Workers: *workers}
	if err := cfg.check(); err != nil {
		fmt.Fprintln(os.Stderr, "bench placement:", err)
		return 2
	}
	if *asChild {
		if *debugAddr != "" {
			go http.ListenAndServe(*debugAddr, nil)
		}
		res, err := runOnce(ctx, cfg, *cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench placement:", err)
			return 1
		}
		json.NewEncoder(os.Stdout).Encode(res)
		return 0
	}

	wallStart := time.Now()
	runs := []config{cfg}
	if *c1m {
		big := cfg
		big.Instances, big.Nodes, big.Apps, big.Heartbeat, big.NodeTTL = 1000000, 5000, 1000, *c1mBeat, *c1mTTL
		if err := big.check(); err != nil {
			fmt.Fprintln(os.Stderr, "bench placement: -c1m:", err)
			return 2
		}
		runs = append(runs, big)
	}
	var results []*result
	var failures []string
	for i, c := range runs {
		profile := *cpuProfile
		if profile != "" && i > 0 {
			profile += ".c1m"
		}
		res, err := inChild(ctx, c, profile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench placement: FAILED: %d instances on %d nodes: %v\n", c.Instances, c.Nodes, err)
			failures = append(failures, fmt.Sprintf("%d instances on %d nodes: FAILED: %v", c.Instances, c.Nodes, err))
			continue
		}
		results = append(results, res)
	}
	text := render(results, failures, time.Since(wallStart))
	fmt.Print("\n" + text)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench placement:", err)
			return 1
		}
		fmt.Printf("written to %s\n", *out)
	}
	if len(failures) > 0 {
		return 1
	}
	return 0
}

type config struct {
	Instances, Nodes, Apps, Zones int
	Heartbeat, NodeTTL            time.Duration
	Workers                       int
}

func (c config) check() error {
	switch {
	case c.Instances < 1 || c.Nodes < 1 || c.Apps < 1 || c.Zones < 1 || c.Zones > 26 || c.Workers < 1:
		return fmt.Errorf("-instances, -nodes, -apps, -report-workers and -zones (at most 26) must be positive")
	case c.Apps > c.Instances:
		return fmt.Errorf("-apps %d: more apps than -instances %d", c.Apps, c.Instances)
	case (c.Instances+c.Apps-1)/c.Apps > 1000:
		return fmt.Errorf("-instances %d over -apps %d is more than 1,000 replicas per app (the API's limit): use more apps", c.Instances, c.Apps)
	case int64(c.Instances)*instanceCPU > int64(c.Nodes)*nodeCPU/2:
		// A quarter of the apps keep off a third of the nodes; binpack fills nodes up.
		return fmt.Errorf("-instances %d need more than half of what -nodes %d offer: use more nodes", c.Instances, c.Nodes)
	case c.NodeTTL <= c.Heartbeat:
		return fmt.Errorf("-node-ttl %s must be longer than -heartbeat %s", c.NodeTTL, c.Heartbeat)
	}
	return nil
}

// inChild runs one configuration in a child process and reads its result.
func inChild(ctx context.Context, c config, profile string) (*result, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"-child", "-instances", fmt.Sprint(c.Instances), "-nodes", fmt.Sprint(c.Nodes),
		"-apps", fmt.Sprint(c.Apps), "-zones", fmt.Sprint(c.Zones), "-heartbeat", c.Heartbeat.String(),
		"-node-ttl", c.NodeTTL.String(), "-report-workers", fmt.Sprint(c.Workers), "-timeout", timeout.String()}
	if profile != "" {
		args = append(args, "-cpuprofile", profile)
	}
	if *verbose {
		args = append(args, "-v")
	}
	if *debugAddr != "" {
		args = append(args, "-debug-addr", *debugAddr)
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", self, strings.Join(args, " "), err)
	}
	var res result
	if err := json.Unmarshal(stdout, &res); err != nil {
		return nil, fmt.Errorf("its result: %w: %q", err, stdout)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.ChildMaxRSSMiB = float64(ru.Maxrss) / 1024
	}
	return &res, nil
}

var benchStart = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(benchStart).Seconds(), fmt.Sprintf(format, args...))
}

func loadavg() string {
	load, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(load)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
