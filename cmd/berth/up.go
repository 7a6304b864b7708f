package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"berth/internal/agent"
	"berth/internal/apiserver"
	"berth/internal/client"
	"berth/internal/controller"
	"berth/internal/runtime/docker"
	"berth/internal/store"
	"berth/internal/tasklog"
)

type upOptions struct {
	listen    string
	node      string
	dockerURL string
	advertise string
	logLevel  string
	workers   int
	gateway   string
	// taskRetention: ended tasks, their payloads and output are deleted after this.
	taskRetention time.Duration
}

func upCmd(g *globals) *cobra.Command {
	o := &upOptions{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run berth on this machine: API, controllers, embedded etcd and the local agent",
		Long: `Run everything in one foreground process: embedded etcd (data in --data-dir),
the API (on --listen), the controllers (apps, tasks, schedules), the gateway
(on --gateway-addr) and the agent for the local Docker engine. Task output
is kept in <data-dir>/task-logs for --task-retention.

On first start it writes an API token to <data-dir>/token; the CLI reads it
from there. SIGTERM or Ctrl-C stops berth and leaves app containers running;
the next 'berth up' adopts them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runUp(cmd.Context(), g, o) },
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", defaultAddr, "address of the API")
	f.StringVar(&o.node, "node", host, "name of this node")
	f.StringVar(&o.dockerURL, "docker", "", "Docker engine address (default: DOCKER_HOST or the local socket)")
	f.StringVar(&o.advertise, "advertise", "127.0.0.1", "address where instances' published ports answer")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.gateway, "gateway-addr", "127.0.0.1:8080", "address of the gateway (\"\" for none)")
	f.IntVar(&o.workers, "workers", 32, "containers the agent creates or stops at once")
	f.DurationVar(&o.taskRetention, "task-retention", 7*24*time.Hour, "how long ended tasks, their payloads and output are kept")
	return cmd
}

func runUp(parent context.Context, g *globals, o *upOptions) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := os.MkdirAll(g.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	token, err := loadOrCreateToken(filepath.Join(g.dataDir, tokenFile))
	if err != nil {
		return err
	}
	rt, err := docker.New(o.dockerURL)
	if err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	if _, err := rt.Info(ctx); err != nil {
		return fmt.Errorf("no Docker engine answers (run scripts/docker-up.sh or 'make up'): %w", err)
	}

	started := time.Now()
	st, err := store.OpenEmbedded(ctx, g.dataDir, log)
	if err != nil {
		return err
	}
	defer st.Close()
	cluster, err := st.ClusterID(ctx, randomHex)
	if err != nil {
		return err
	}
	log.Info("store ready", "data_dir", g.dataDir, "took", time.Since(started).Round(time.Millisecond))

	if o.taskRetention <= 0 {
		return fmt.Errorf("--task-retention: %s is not a positive duration", o.taskRetention)
	}
	taskLogs, err := tasklog.Open(filepath.Join(g.dataDir, "task-logs"))
	if err != nil {
		return fmt.Errorf("task logs: %w", err)
	}

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("API listen: %w", err)
	}
	ag := &agent.Agent{
		Client:     client.New(lis.Addr().String(), token),
		Runtime:    rt,
		Node:       o.node,
		Address:    o.advertise,
		Workers:    o.workers,
		PayloadDir: filepath.Join(g.dataDir, "task-payloads"),
		Log:        log.With("component", "agent"),
	}
	srv := &apiserver.Server{
		Store: st, Token: token, Version: version, Cluster: cluster,
		TaskLogs: taskLogs,
		Log:      log.With("component", "api"),
		Logs: func(node string) apiserver.LogSource {
			if node == o.node {
				return ag
			}
			return nil
		},
	}
	errc := make(chan error, 8)
	apiHandler := srv.Handler()
	if o.gateway != "" {
		p, gerrc, err := startGateway(ctx, client.New(lis.Addr().String(), token), o.gateway, o.node, prometheus.NewRegistry(), log.With("component", "gateway"))
		if err != nil {
			return err
		}
		go func() { errc <- <-gerrc }()
		// The gateway's metrics are served beside the API, without a token.
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", p.MetricsHandler())
		mux.Handle("/", apiHandler)
		apiHandler = mux
	}
	httpSrv := &http.Server{Handler: apiHandler, ReadHeaderTimeout: 10 * time.Second}
	go func() { errc <- httpSrv.Serve(lis) }()
	log.Info("API listening", "addr", "http://"+lis.Addr().String(), "token_file", filepath.Join(g.dataDir, tokenFile))

	tasks := &controller.Tasks{Store: st, Log: log.With("component", "tasks"), Cluster: cluster,
		Retention: o.taskRetention, Logs: taskLogs}
	// The app controller places instances around running tasks.
	ctl := &controller.Controller{Store: st, Log: log.With("component", "controller"), Tasks: tasks}
	go func() { errc <- ctl.Run(ctx) }()
	go func() { errc <- tasks.Run(ctx) }()
	go func() { errc <- ag.Run(ctx) }()

	select {
	case <-ctx.Done():
		log.Info("stopping; app containers keep running")
	case err = <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("stopped", "err", err)
		}
	}
	stop()
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(shutdown)
	return err
}

func loadOrCreateToken(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, nil
		}
	}
	t := randomHex()
	if err := os.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write API token: %w", err)
	}
	return t, nil
}

func randomHex() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
