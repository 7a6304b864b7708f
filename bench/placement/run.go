package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"berth/api"
	"berth/internal/client"

	"berth/bench/internal/measure"
)

// result is one run, as the child process reports it.
type result struct {
	config
	Setup          time.Duration       // tokens, registrations and watches of the nodes
	Deploy         time.Duration       // the PUT /v1/apps requests, 8 at a time
	Placed         time.Duration       // first deploy request to the last placement committed
	Acked          time.Duration       // first deploy request to the last instance reported running
	Quarters       [3][4]time.Duration // per stage (created, placed, acknowledged): when 25, 50, 75, 100% were there
	CPUPlaced      time.Duration       // user + system time of the process until the last placement
	CPU            time.Duration       // until the last acknowledgement
	PeakRSSMiB     float64             // getrusage of the process itself
	ChildMaxRSSMiB float64             // the parent's account of it
	HeapMiB        float64             // Go heap in use at the end
	DBMiB          float64             // etcd's database at the end
	EtcdPlaced     map[string]float64
	Etcd           map[string]float64 // etcd's counters over the whole run
	Fsync          string
	Requests       map[string]int
	Conns          int
	Created        int // instance records seen: more than Instances when some were replaced
	Reported       int64
	Heartbeats     int64
	WatchEnds      int64
	Failed         int64
	LastErr        string
	Load           string
	Warnings       string
	Profile        string
}

// runOnce is one run in this process.
func runOnce(ctx context.Context, cfg config, profile string) (*result, error) {
	raiseFileLimit()
	dir, cleanup, err := tempDir()
	if err != nil {
		return nil, err
	}
	defer cleanup()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	srv, err := startServer(ctx, dir, cfg.NodeTTL)
	if err != nil {
		return nil, err
	}
	defer srv.close()
	res := &result{config: cfg, Profile: profile}
	capacity := api.Capacity{CPU: nodeCPU, Memory: 64 << 30}
	f := newFleet(srv.addr, cfg.Nodes, cfg.Zones, cfg.Heartbeat, capacity, cfg.Instances)
	t0 := time.Now()
	if err := f.tokens(ctx, srv.token); err != nil {
		return nil, fmt.Errorf("agent tokens: %w", err)
	}
	if err := f.register(ctx); err != nil {
		return nil, fmt.Errorf("register nodes: %w", err)
	}
	f.run(ctx, cfg.Workers)
	if err := waitWatches(ctx, srv, cfg.Nodes); err != nil {
		return nil, err
	}
	res.Setup = time.Since(t0)
	logf("%d nodes registered and watching after %.1fs", cfg.Nodes, res.Setup.Seconds())
	sleepCtx(ctx, 2*time.Second) // let the controller's passes of the registrations settle

	prog, err := watchProgress(ctx, srv.st, cfg.Instances)
	if err != nil {
		return nil, err
	}
	if profile != "" {
		pf, err := os.Create(profile)
		if err != nil {
			return nil, err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	etcd0, fsync0 := measure.EtcdCounters(), measure.EtcdLatencies()
	srv.counts.Reset()
	f.heartbeats.Store(0)
	l0, cpu0 := loadavg(), measure.CPUTime()
	logf("deploying %d apps, %d instances on %d nodes (load %s)", cfg.Apps, cfg.Instances, cfg.Nodes, l0)
	start := time.Now()
	user := client.New(srv.addr, srv.token)
	err = parallel(ctx, 8, cfg.Apps, func(i int) error {
		_, err := user.Deploy(ctx, appSpec(i, replicasOf(cfg, i), cfg.Nodes))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	res.Deploy = time.Since(start)
	logf("deployed after %.1fs", res.Deploy.Seconds())
	tick := func(c [3]int) {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		logf("created %d, placed %d (%.0f/s), acknowledged %d; heap %.0f MiB; load %s",
			c[created], c[placed], float64(c[placed])/time.Since(start).Seconds(), c[acked], float64(m.HeapInuse)/(1<<20), loadavg())
	}
	last, err := prog.wait(ctx, placed, *timeout, srv.errc, tick)
	if err != nil {
		return nil, err
	}
	res.Placed, res.CPUPlaced, res.EtcdPlaced = last.Sub(start), measure.CPUTime()-cpu0, measure.EtcdDelta(etcd0, measure.EtcdCounters())
	logf("all %d placed after %.1fs: %.0f/s", cfg.Instances, res.Placed.Seconds(), float64(cfg.Instances)/res.Placed.Seconds())
	last, err = prog.wait(ctx, acked, *timeout, srv.errc, tick)
	if err != nil {
		return nil, err
	}
	pprof.StopCPUProfile()
	res.Acked, res.CPU = last.Sub(start), measure.CPUTime()-cpu0
	logf("all %d acknowledged after %.1fs", cfg.Instances, res.Acked.Seconds())

	prog.mu.Lock()
	res.Created = prog.count[created]
	for stage := range res.Quarters {
		for q, at := range prog.at[stage] {
			if !at.IsZero() {
				res.Quarters[stage][q] = at.Sub(start)
			}
		}
	}
	prog.mu.Unlock()
	res.Etcd, res.Fsync = measure.EtcdDelta(etcd0, measure.EtcdCounters()), measure.LatencyDelta(fsync0, measure.EtcdLatencies())
	res.Requests, res.Conns = srv.counts.Snapshot()
	res.Reported, res.Heartbeats, res.WatchEnds, res.Failed = f.reported.Load(), f.heartbeats.Load(), f.watchEnds.Load(), f.failed.Load()
	f.mu.Lock()
	res.LastErr = f.lastErr
	f.mu.Unlock()
	res.Load = fmt.Sprintf("load %s -> %s", l0, loadavg())
	if _, db, err := srv.st.Status(ctx); err == nil {
		res.DBMiB = float64(db) / (1 << 20)
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	res.HeapMiB = float64(m.HeapInuse) / (1 << 20)
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		res.PeakRSSMiB = float64(ru.Maxrss) / 1024
	}
	res.Warnings = srv.logs.Summary()
	return res, nil
}

// Every node offers nodeCPU; every instance asks instanceCPU (and 4Mi).
const (
	nodeCPU     = 16000
	instanceCPU = 10
)

// replicasOf spreads the instances over the apps, the first ones taking
// one more when they do not divide evenly.
func replicasOf(cfg config, i int) int {
	n := cfg.Instances / cfg.Apps
	if i < cfg.Instances%cfg.Apps {
		n++
	}
	return n
}

// appSpec is app i: small, so that capacity is not the limit, and of four
// kinds: a constraint with spread over the zones, spread over the zones,
// the default (spread per node), and binpack with max_per_node (10, or
// enough for the replicas on half the nodes).
func appSpec(i, replicas, nodes int) api.AppSpec {
	spec := api.AppSpec{Name: fmt.Sprintf("app-%04d", i), Image: "berth/demo:1", Port: 8080, Replicas: &replicas,
		Resources: api.Resources{CPU: instanceCPU, Memory: api.MinMemory}}
	switch i % 4 {
	case 0:
		spec.Placement = &api.Placement{Constraints: []string{"zone != c"}, Spread: "zone"}
	case 1:
		spec.Placement = &api.Placement{Spread: "zone"}
	case 3:
		spec.Placement = &api.Placement{Strategy: api.StrategyBinpack, MaxPerNode: max(10, 2*replicas/nodes+1)}
	}
	return spec
}

// waitWatches waits until every node's instance watch reached the API.
func waitWatches(ctx context.Context, srv *server, nodes int) error {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		reqs, _ := srv.counts.Snapshot()
		if reqs["GET /v1/instances (watch)"] >= nodes {
			return nil
		}
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
	return fmt.Errorf("the nodes' watches did not all reach the API within 5 minutes")
}

// raiseFileLimit: every node's watch is a connection, both of whose ends
// are in this process.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < 1<<20 {
		want := l
		want.Cur, want.Max = max(l.Max, 1<<20), max(l.Max, 1<<20)
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) != nil {
			want.Cur, want.Max = l.Max, l.Max
			_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
		}
	}
}
