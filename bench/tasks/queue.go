package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"syscall"
	"time"

	"berth/api"
	"berth/internal/agent"
	"berth/internal/apiserver"
	"berth/internal/client"
	"berth/internal/controller"
	"berth/internal/runtime"
	"berth/internal/runtime/fake"
	"berth/internal/store"
	"berth/internal/tasklog"

	"berth/bench/internal/measure"
)

// queueResult is the in-process run: the queue's own overhead, without
// containers.
type queueResult struct {
	N, Batch       int
	Enqueue        time.Duration // the submit requests, one after the other
	Total          time.Duration // first submit to the last task succeeded
	Succeeded      int
	States         map[string]int
	Attempts       int
	PeakRSSMiB     float64         // getrusage of the process itself
	ChildMaxRSSMiB float64         // the parent's account of it, when run as a child
	Reference      time.Duration   // a fixed piece of CPU work just before the run: how fast the machine was
	Rounds         []float64       // tasks/s of every run, when several ran
	References     []time.Duration // the reference of every run
	MaxPeakRSSMiB  float64         // the highest of all runs
	CPU            time.Duration   // user + system time of the process during the run
	Etcd           map[string]float64
	Fsync          string           // etcd's WAL fsync and backend commit latencies over the run
	Quarters       [4]time.Duration // when 25, 50, 75 and 100% had ended
	Stages         []string
	Requests       map[string]int // API requests by route
	Conns          int            // TCP connections the API accepted during the run
	Load           string
	Profile        string
	Warnings       string
}

func (q *queueResult) rate() float64 { return float64(q.N) / q.Total.Seconds() }

// runQueue wires the real pieces in this process: embedded etcd, the API
// on a loopback listener, the app and task controllers, and one agent on
// the fake runtime whose containers exit 0 at once. Placement is not the
// limit: the node has plenty of CPUs and memory, each task asks for little.
func runQueue(ctx context.Context, n, batch int, profile string) (*queueResult, error) {
	dir, err := os.MkdirTemp("", "berth-queue-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logs := &measure.WarnLog{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))

	st, err := store.OpenEmbedded(ctx, filepath.Join(dir, "data"), log)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	cluster, err := st.ClusterID(ctx, func() string { return "benchq01" })
	if err != nil {
		return nil, err
	}
	taskLogs, err := tasklog.Open(filepath.Join(dir, "data", "tasklogs"))
	if err != nil {
		return nil, err
	}

	rt := fake.New()
	rt.SetInfo(runtime.Info{CPUs: 100000, MemoryBytes: 1 << 50, Version: "fake"})
	rt.SetRun(func(runtime.ContainerSpec) (int, time.Duration, []string, bool) { return 0, 0, nil, true })

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	const token = "bench"
	c := client.New(lis.Addr().String(), token)
	agentToken, err := apiserver.CreateToken(ctx, st, api.TokenRequest{Role: api.RoleAgent})
	if err != nil {
		return nil, err
	}
	ag := &agent.Agent{Client: client.New(lis.Addr().String(), agentToken.Secret), Runtime: rt, Node: "bench", Address: "127.0.0.1", Workers: 32,
		PayloadDir: filepath.Join(dir, "payloads"), Log: log.With("component", "agent")}
	srv := &apiserver.Server{Store: st, Token: token, Cluster: cluster, Log: log.With("component", "api"),
		TaskLogs: taskLogs,
		Logs:     func(string) apiserver.LogSource { return ag }}
	counts := measure.NewRouteCounts()
	httpSrv := &http.Server{Handler: counts.Wrap(srv.Handler()), ReadHeaderTimeout: 10 * time.Second,
		ConnState: counts.ConnState}
	go httpSrv.Serve(lis)
	defer httpSrv.Close()

	errc := make(chan error, 3)
	tc := &controller.Tasks{Store: st, Cluster: cluster, Logs: taskLogs, Log: log.With("component", "tasks")}
	ctl := &controller.Controller{Store: st, Tasks: tc, Log: log.With("component", "controller")}
	go func() { errc <- ctl.Run(ctx) }()
	go func() { errc <- tc.Run(ctx) }()
	go func() { errc <- ag.Run(ctx) }()
	if err := waitNodeReady(ctx, c, errc); err != nil {
		return nil, err
	}

	specs := make([]api.TaskSpec, n)
	for i := range specs {
		specs[i] = api.TaskSpec{Image: benchImage, Command: []string{"true"},
			Resources: api.Resources{CPU: 1, Memory: api.MinMemory}}
	}
	ends, err := watchEnds(ctx, st)
	if err != nil {
		return nil, err
	}
	etcd0, fsync0 := measure.EtcdCounters(), measure.EtcdLatencies()
	counts.Reset()
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
	}
	if *traceOut != "" {
		f, err := os.Create(*traceOut)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return nil, err
		}
		defer trace.Stop()
	}
	logf("queue: %d tasks in batches of %d through the API; fake containers exit 0 at once", n, batch)
	res := &queueResult{N: n, Batch: batch, Reference: cpuReference()}
	l0, cpu0 := loadavg(), measure.CPUTime()
	t0 := time.Now()
	for i := 0; i < n; i += batch {
		if _, err := c.SubmitTasks(ctx, specs[i:min(i+batch, n)]); err != nil {
			pprof.StopCPUProfile()
			return nil, fmt.Errorf("submit tasks %d-%d: %w", i, min(i+batch, n)-1, err)
		}
	}
	res.Enqueue = time.Since(t0)
	logf("queue: %d enqueued after %.2fs", n, res.Enqueue.Seconds())
	last, err := ends.wait(ctx, n, 5*time.Minute, errc)
	pprof.StopCPUProfile()
	if err != nil {
		return nil, err
	}
	res.CPU = measure.CPUTime() - cpu0
	res.Total = last.Sub(t0)
	res.Load = fmt.Sprintf("load %s -> %s", l0, loadavg())
	logf("queue: %d ended after %.2fs: %.0f tasks/s", n, res.Total.Seconds(), res.rate())

	res.Etcd = measure.EtcdDelta(etcd0, measure.EtcdCounters())
	res.Fsync = measure.LatencyDelta(fsync0, measure.EtcdLatencies())
	res.Quarters, res.Stages = ends.timeline(t0)
	res.Requests, res.Conns = counts.Snapshot()
	res.States, res.Attempts = ends.summary()
	res.Succeeded = res.States[api.TaskSucceeded]
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		res.PeakRSSMiB = float64(ru.Maxrss) / 1024
	}
	res.Profile = profile
	res.Warnings = logs.Summary()
	return res, nil
}

func waitNodeReady(ctx context.Context, c *client.Client, errc <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-errc:
			return fmt.Errorf("stopped before the node was ready: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		nodes, err := c.ListNodes(ctx)
		if err != nil {
			continue
		}
		for _, nd := range nodes.Items {
			if nd.State == "ready" {
				return nil
			}
		}
	}
	return errors.New("no node ready within 30s")
}
