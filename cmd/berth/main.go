// Command berth is the whole of berth in one binary: `berth up` runs a
// server and an agent; every other verb is a client of the API.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"berth/internal/client"
)

var version = "dev"

// Defaults shared by the server and the CLI.
const (
	defaultAddr    = "127.0.0.1:7070"
	defaultDataDir = ".berth"
	tokenFile      = "token"
)

type globals struct {
	addr, token, dataDir string
}

func main() {
	g := &globals{}
	root := &cobra.Command{
		Use:   "berth",
		Short: "berth: a small self-hosted container platform on Docker",
		Long: `berth places, starts, health-checks, scales, updates and cleans up
containers from app specs written in YAML.

Start it with 'berth up' (server, embedded etcd and an agent for the local
Docker engine in one process), then use the other verbs as its client.
On several hosts, run 'berth server' (one or three) and 'berth agent' on
each Docker host (see docs/operations.md).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.addr, "addr", envOr("BERTH_ADDR", defaultAddr), "berth server address, or several comma-separated to fail over between (env BERTH_ADDR)")
	pf.StringVar(&g.token, "token", os.Getenv("BERTH_TOKEN"), "API token (env BERTH_TOKEN; default: read from <data-dir>/token)")
	pf.StringVar(&g.dataDir, "data-dir", envOr("BERTH_DATA_DIR", defaultDataDir), "data directory (env BERTH_DATA_DIR)")

	root.AddCommand(
		upCmd(g), serverCmd(g), agentCmd(g),
		deployCmd(g), psCmd(g), logsCmd(g), scaleCmd(g), rmCmd(g),
		appsCmd(g), eventsCmd(g), nodesCmd(g), nodeCmd(g), statusCmd(g),
		routesCmd(g), gatewayCmd(g),
	)
	root.AddCommand(
		runCmd(g), tasksCmd(g), taskCmd(g), queueCmd(g), scheduleCmd(g),
		tokenCmd(g),
	)
	if err := root.Execute(); err != nil {
		if ex := exitCode(0); errors.As(err, &ex) {
			os.Exit(int(ex)) // the verb has said why
		}
		fmt.Fprintln(os.Stderr, "berth:", err)
		var ex exitCode
		if errors.As(err, &ex) {
			os.Exit(int(ex))
		}
		os.Exit(1)
	}
}

// exitCode makes the process exit with a specific code.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// client builds an API client from flags, environment and the data dir's token.
func (g *globals) client() (*client.Client, error) {
	token := g.token
	if token == "" {
		b, err := os.ReadFile(filepath.Join(g.dataDir, tokenFile))
		if err != nil {
			return nil, fmt.Errorf("no API token: pass --token or BERTH_TOKEN, or run where %s/%s exists (%v)", g.dataDir, tokenFile, err)
		}
		token = strings.TrimSpace(string(b))
	}
	return client.New(g.addr, token), nil
}
