package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"berth/internal/agent"
	"berth/internal/apiserver"
	"berth/internal/client"
	"berth/internal/runtime/docker"
)

type upOptions struct {
	server    serverOptions
	node      string
	dockerURL string
	advertise string
	workers   int
	pullCache string
	imageTTL  time.Duration
}

func upCmd(g *globals) *cobra.Command {
	o := &upOptions{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run berth on this machine: API, controllers, embedded etcd and the local agent",
		Long: `Run everything in one foreground process: embedded etcd (data in --data-dir),
the API (on --listen), the controllers (apps, tasks, schedules), the gateway
(on --gateway-addr) and the agent for the local Docker engine. Task output
is kept in <data-dir>/task-logs for --task-retention. It is 'berth server'
and 'berth agent' in one process; more agents may join it.

On first start it writes an API token to <data-dir>/token; the CLI reads it
from there. SIGTERM or Ctrl-C stops berth and leaves app containers running;
the next 'berth up' adopts them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runUp(g, o) },
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	o.server.addFlags(f, "127.0.0.1:8080")
	f.StringVar(&o.node, "node", host, "name of this node")
	f.StringVar(&o.dockerURL, "docker", "", "Docker engine address (default: DOCKER_HOST or the local socket)")
	f.StringVar(&o.advertise, "advertise", "127.0.0.1", "address where instances' published ports answer")
	f.IntVar(&o.workers, "workers", 32, "containers the agent creates or stops at once")
	f.StringVar(&o.pullCache, "pull-cache", "127.0.0.1:0", pullCacheHelp)
	addImageRetentionFlag(f, &o.imageTTL)
	return cmd
}

func runUp(g *globals, o *upOptions) error {
	log, err := newLogger(o.server.logLevel)
	if err != nil {
		return err
	}
	if err := g.takeDataDir(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rt, err := docker.New(o.dockerURL)
	if err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	if _, err := rt.Info(ctx); err != nil {
		return fmt.Errorf("no Docker engine answers (run scripts/docker-up.sh or 'make up'): %w", err)
	}
	// The agent exists before the API so that the API can reach its logs;
	// it gets its client once the API listens.
	ag := &agent.Agent{
		Runtime:        rt,
		Node:           o.node,
		Address:        o.advertise,
		Workers:        o.workers,
		PayloadDir:     filepath.Join(g.dataDir, "task-payloads"),
		Log:            log.With("component", "agent"),
		ImageRetention: o.imageTTL,
	}
	logs := func(node string) apiserver.LogSource {
		if node == o.node {
			return ag
		}
		return nil // a remote agent's engine is not reachable from here
	}
	srv, err := startServer(ctx, g, &o.server, serverExtras{logs: logs, localNode: o.node}, log)
	if err != nil {
		return err
	}
	// The local agent has an agent token of its own, kept beside the user's.
	token, err := apiserver.EnsureAgentToken(ctx, srv.store, filepath.Join(g.dataDir, agentTokenFile), o.node)
	if err != nil {
		srv.close(stop)
		return err
	}
	ag.Client = client.New(srv.addr, token)
	if ag.PullCache, err = startPullCache(ctx, o.pullCache, g.dataDir, []string{srv.addr}, token, log.With("component", "pullcache")); err != nil {
		srv.close(stop)
		return err
	}
	go func() { srv.errc <- ag.Run(ctx) }()
	return srv.wait(ctx, stop)
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
