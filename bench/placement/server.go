package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"berth/internal/apiserver"
	"berth/internal/controller"
	"berth/internal/store"
	"berth/internal/tasklog"

	"berth/bench/internal/measure"
)

// server is the real server of `berth server` in this process: embedded
// etcd, the API on a loopback listener, the app and task controllers
// (wired as `berth up` wires them, without its local agent).
type server struct {
	st     *store.Store
	addr   string
	token  string // the server's own (user) token
	counts *measure.RouteCounts
	logs   *measure.WarnLog
	errc   chan error
	close  func()
}

func startServer(ctx context.Context, dir string, nodeTTL time.Duration) (*server, error) {
	logs := &measure.WarnLog{}
	if *verbose {
		logs.Echo = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := store.OpenEmbedded(ctx, filepath.Join(dir, "data"), log)
	if err != nil {
		return nil, err
	}
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	closers = append(closers, st.Close)
	cluster, err := st.ClusterID(ctx, func() string { return "benchp01" })
	if err != nil {
		closeAll()
		return nil, err
	}
	taskLogs, err := tasklog.Open(filepath.Join(dir, "data", "tasklogs"))
	if err != nil {
		closeAll()
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		closeAll()
		return nil, err
	}
	const token = "bench-placement"
	srv := &apiserver.Server{Store: st, Token: token, Cluster: cluster, NodeTTL: nodeTTL,
		Log: log.With("component", "api"), TaskLogs: taskLogs,
		Logs: func(string) apiserver.LogSource { return nil }}
	counts := measure.NewRouteCounts()
	httpSrv := &http.Server{Handler: counts.Wrap(srv.Handler()), ReadHeaderTimeout: 10 * time.Second,
		ConnState: counts.ConnState}
	go httpSrv.Serve(lis)
	closers = append(closers, func() { httpSrv.Close() })

	s := &server{st: st, addr: "http://" + lis.Addr().String(), token: token, counts: counts, logs: logs,
		errc: make(chan error, 2), close: closeAll}
	tc := &controller.Tasks{Store: st, Cluster: cluster, Logs: taskLogs, Log: log.With("component", "tasks")}
	ctl := &controller.Controller{Store: st, Tasks: tc, NodeTTL: nodeTTL, Log: log.With("component", "controller")}
	go func() { s.errc <- ctl.Run(ctx) }()
	go func() { s.errc <- tc.Run(ctx) }()
	return s, nil
}

// tempDir is where the run keeps its etcd data; removed afterwards.
func tempDir() (string, func(), error) {
	dir, err := os.MkdirTemp("", "berth-placement-bench-")
	if err != nil {
		return "", nil, err
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}
