package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/agent"
	"berth/internal/client"
	"berth/internal/runtime/docker"
)

// agentTokenFile is where an agent's token may be kept in its data dir.
const agentTokenFile = "agent-token"

type agentOptions struct {
	servers       string
	node          string
	labels        map[string]string
	dockerURL     string
	advertise     string
	reserveCPU    string
	reserveMemory string
	workers       int
	logLevel      string
	pullCache     string
	imageTTL      time.Duration
}

func agentCmd(g *globals) *cobra.Command {
	o := &agentOptions{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent of one Docker host: register it as a node and run what is placed on it",
		Long: `Run the node agent for a Docker engine: it registers the node with the servers
(capacity from the engine minus --reserve-cpu/--reserve-memory, its labels and
advertise address), keeps its heartbeat, and starts, checks and stops the
containers of the instances and tasks placed on it. It talks only to the API,
failing over between the servers given.

It needs an agent token ('berth token create --role agent' on a server), from
--token-file, BERTH_TOKEN, --token (visible in ps) or <data-dir>/agent-token.
It keeps task payloads in <data-dir>/agent-<node>, which one agent uses at a
time. Containers keep running when the agent stops; a restarted agent adopts
them. Several agents may share one Docker engine under different --node
names: each touches only its own node's containers.`,
		Example: `  berth agent --server http://10.0.0.1:7070,http://10.0.0.2:7070 --token-file /etc/berth/agent-token \
      --node n2 --labels zone=a,disk=ssd --advertise 10.0.0.12`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(g, o) },
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&o.servers, "server", "", "berth server URL(s), comma-separated (default: --addr)")
	f.StringVar(&o.node, "node", host, "name of this node")
	f.StringToStringVar(&o.labels, "labels", nil, "node labels for placement constraints and spread, as key=value,...")
	f.StringVar(&o.dockerURL, "docker", "", "Docker engine address (default: DOCKER_HOST or the local socket)")
	f.StringVar(&o.advertise, "advertise", "127.0.0.1", "address of this host where instances' published ports answer")
	f.StringVar(&o.reserveCPU, "reserve-cpu", "0", "CPU held back from the engine's for the host, e.g. 500m or 1")
	f.StringVar(&o.reserveMemory, "reserve-memory", "0", "memory held back from the engine's for the host, e.g. 256Mi")
	f.IntVar(&o.workers, "workers", 32, "containers created or stopped at once")
	f.StringVar(&o.pullCache, "pull-cache", "127.0.0.1:0", pullCacheHelp)
	addImageRetentionFlag(f, &o.imageTTL)
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func runAgent(g *globals, o *agentOptions) error {
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	reserve, err := o.reserve()
	if err != nil {
		return err
	}
	if err := validNodeName(o.node); err != nil {
		return err
	}
	if err := validLabels(o.labels); err != nil {
		return err
	}
	if err := g.absDataDir(); err != nil {
		return err
	}
	// Agents of several nodes may share a data dir; each has a dir of its own.
	agentDir := filepath.Join(g.dataDir, "agent-"+o.node)
	if err := lockDir(agentDir, "agent dir"); err != nil {
		return err
	}
	if net.ParseIP(o.advertise) == nil {
		return fmt.Errorf("--advertise %q: want an IP address of this host", o.advertise)
	}
	if o.workers < 1 {
		return fmt.Errorf("--workers %d: want at least 1", o.workers)
	}
	token, err := agentToken(g)
	if err != nil {
		return err
	}
	servers := o.servers
	if servers == "" {
		servers = g.addr
	}
	rt, err := docker.New(o.dockerURL)
	if err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := rt.Info(ctx); err != nil {
		return fmt.Errorf("no Docker engine answers at %s: %w", orDefault(o.dockerURL, "the default socket"), err)
	}
	pullCache, err := startPullCache(ctx, o.pullCache, agentDir, strings.Split(servers, ","), token, log.With("component", "pullcache"))
	if err != nil {
		return err
	}
	ag := &agent.Agent{
		PullCache:      pullCache,
		ImageRetention: o.imageTTL,
		Client:         client.New(servers, token),
		Runtime:        rt,
		Node:           o.node,
		Address:        o.advertise,
		Labels:         o.labels,
		Reserve:        reserve,
		Workers:        o.workers,
		PayloadDir:     filepath.Join(agentDir, "task-payloads"),
		Log:            log.With("component", "agent"), // the agent names its node where it matters
	}
	log.Info("agent starting", "node", o.node, "servers", servers, "labels", o.labels, "advertise", o.advertise)
	err = ag.Run(ctx)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	log.Info("agent stopped; containers keep running")
	return err
}

func (o *agentOptions) reserve() (api.Capacity, error) {
	cpu, err := api.ParseMilliCPU(o.reserveCPU)
	if err != nil || cpu < 0 {
		return api.Capacity{}, fmt.Errorf("--reserve-cpu %q: want millicores like 500m or cores like 1", o.reserveCPU)
	}
	mem, err := api.ParseBytes(o.reserveMemory)
	if err != nil || mem < 0 {
		return api.Capacity{}, fmt.Errorf("--reserve-memory %q: want a size like 256Mi or 1Gi", o.reserveMemory)
	}
	return api.Capacity{CPU: cpu, Memory: mem}, nil
}

// nodeName: node names appear in container names and host names.
var nodeName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

func validNodeName(name string) error {
	if !nodeName.MatchString(name) {
		return fmt.Errorf("--node %q: letters, digits, '.', '_' and '-' only (at most 63), starting and ending with a letter or digit", name)
	}
	return nil
}

// validLabels accepts labels that a placement constraint can name: a
// label that no constraint can match would be of no use.
func validLabels(labels map[string]string) error {
	for k, v := range labels {
		if _, err := api.ParseConstraint(k + " == " + v); err != nil {
			return fmt.Errorf("--labels %s=%s: letters, digits, '.', '_', '/' and '-' only, starting and ending with a letter or digit", k, v)
		}
	}
	return nil
}

// agentToken is --token-file, else --token (or BERTH_TOKEN), else
// <data-dir>/agent-token.
func agentToken(g *globals) (string, error) {
	if t, err := g.givenToken(); t != "" || err != nil {
		return t, err
	}
	path := filepath.Join(g.dataDir, agentTokenFile)
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b)), nil
	}
	return "", fmt.Errorf("no agent token: pass --token-file (or BERTH_TOKEN; --token shows in ps) with a token from 'berth token create --role agent' on a server, or put it in %s", path)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
