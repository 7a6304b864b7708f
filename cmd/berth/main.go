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
	addr, token, tokenFile string
	dataDir                string // absolute once absDataDir ran
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
	pf.StringVar(&g.token, "token", os.Getenv("BERTH_TOKEN"), "API token (env BERTH_TOKEN; default: read from <data-dir>/token); it shows in ps: prefer --token-file")
	pf.StringVar(&g.tokenFile, "token-file", os.Getenv("BERTH_TOKEN_FILE"), "file holding the API token (env BERTH_TOKEN_FILE)")
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
	root.AddCommand(buildCmds(g)...)
	root.AddCommand(historyCmds(g)...)
	root.AddCommand(rolloutCmd(g))
	root.AddCommand(imageCmd(g), gitHookCmd(g))
	if cmd, err := root.ExecuteC(); err != nil {
		if ex := exitCode(0); errors.As(err, &ex) {
			os.Exit(int(ex)) // the verb has said why
		}
		fmt.Fprintln(os.Stderr, errorLine(cmd, root, err))
		os.Exit(1)
	}
}

// errorLine is how a failed verb is reported: "berth: deploy: 403 ...",
// naming the verb the user ran (unless the error already starts with
// it), the status of an API refusal, and what to do when no server answers.
func errorLine(cmd, root *cobra.Command, err error) string {
	msg := err.Error()
	var ae *client.Error
	// A refusal shows its status (403: the token's role); a missing thing
	// says so in words ("no app named x") and needs no number.
	if errors.As(err, &ae) && ae.Message != "" && ae.Status != 404 {
		msg = strings.Replace(msg, ae.Message, fmt.Sprintf("%d %s", ae.Status, ae.Message), 1)
	}
	if client.Unreached(err) {
		msg += " (is berth running? start it with 'berth up', or point --addr or BERTH_ADDR at it)"
	}
	if cmd != nil && cmd != root {
		verb := strings.TrimPrefix(cmd.CommandPath(), root.Name()+" ")
		if !strings.HasPrefix(msg, cmd.Name()+" ") {
			msg = verb + ": " + msg
		}
	}
	return "berth: " + msg
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
	token, err := g.givenToken()
	if err != nil {
		return nil, err
	}
	if token == "" {
		b, err := os.ReadFile(filepath.Join(g.dataDir, tokenFile))
		if err != nil {
			return nil, fmt.Errorf("no API token: pass --token-file, --token or BERTH_TOKEN, or run where %s exists ('berth up' writes it there): %w",
				filepath.Join(g.dataDir, tokenFile), err)
		}
		token = strings.TrimSpace(string(b))
	}
	return client.New(g.addr, token), nil
}

// givenToken is the token from --token-file, else --token (or
// BERTH_TOKEN); "" when neither is given.
func (g *globals) givenToken() (string, error) {
	if g.tokenFile == "" {
		return g.token, nil
	}
	b, err := os.ReadFile(g.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("--token-file: %s is empty", g.tokenFile)
	}
	return t, nil
}

// absDataDir makes --data-dir absolute, once, before anything uses it:
// paths under it reach Docker (bind mounts) and must not depend on the
// working directory.
func (g *globals) absDataDir() error {
	abs, err := filepath.Abs(g.dataDir)
	if err != nil {
		return fmt.Errorf("--data-dir %s: %w", g.dataDir, err)
	}
	g.dataDir = abs
	return nil
}

// shownPath is how messages name a path under the data dir: under the
// working directory as ./rel, else absolute.
func shownPath(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	rel, err := filepath.Rel(wd, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return path
	}
	return "./" + rel
}
