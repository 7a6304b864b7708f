// Package berthup runs a `berth up` of a bench's own: free ports on
// loopback, a data dir in the bench's temporary dir, stopped with SIGTERM.
package berthup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"berth/internal/client"
)

// Up is a running `berth up`.
type Up struct {
	Bin, DataDir, LogPath string
	Addr, GatewayAddr     string // the API's (and registry's) and the gateway's, 127.0.0.1:port
	Token                 string // the admin token it wrote to <data dir>/token
	cmd                   *exec.Cmd
	done                  chan struct{}
	logf                  func(format string, args ...any)
}

// Start runs `bin up --listen <free> --data-dir <tmp>/data --gateway-addr
// <free>` and the extra flags, its output in <tmp>/berth.log, and waits
// until it answers with the token it wrote. logf gets what a bench says
// about it. On an error the returned Up (when not nil) is to be stopped.
func Start(ctx context.Context, bin, tmp string, logf func(format string, args ...any), extra ...string) (*Up, error) {
	return StartEnv(ctx, bin, tmp, nil, logf, extra...)
}

// StartEnv is Start with env as berth up's environment (nil: the bench's
// own); what berth up runs (git's hooks) inherits it.
func StartEnv(ctx context.Context, bin, tmp string, env []string, logf func(format string, args ...any), extra ...string) (*Up, error) {
	b := &Up{Bin: bin, DataDir: filepath.Join(tmp, "data"), LogPath: filepath.Join(tmp, "berth.log"),
		Addr: FreeAddr(), GatewayAddr: FreeAddr(), logf: logf}
	logFile, err := os.Create(b.LogPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"up", "--listen", b.Addr, "--data-dir", b.DataDir, "--gateway-addr", b.GatewayAddr}, extra...)
	b.cmd = exec.Command(b.Bin, args...)
	b.cmd.Stdout, b.cmd.Stderr = logFile, logFile
	b.cmd.Env = env
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := b.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("berth up: %w", err)
	}
	b.done = make(chan struct{})
	go func() { b.cmd.Wait(); logFile.Close(); close(b.done) }()
	logf("berth up (pid %d) on %s, data dir %s", b.cmd.Process.Pid, b.Addr, b.DataDir)
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-b.done:
			return b, fmt.Errorf("berth up exited: %v (log: %s)", b.cmd.ProcessState, b.LogPath)
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return b, errors.New("berth up: not answering within 60s")
		}
		t, err := os.ReadFile(filepath.Join(b.DataDir, "token"))
		if err != nil || strings.TrimSpace(string(t)) == "" {
			continue
		}
		b.Token = strings.TrimSpace(string(t))
		if _, err := client.New(b.Addr, b.Token).Status(ctx); err == nil {
			return b, nil
		}
	}
}

// Client is an API client of this server with the admin token.
func (b *Up) Client() *client.Client { return client.New(b.Addr, b.Token) }

// CLI runs a berth verb against this server; it returns stdout, and
// stderr in the error.
func (b *Up) CLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, b.Bin, append([]string{"--addr", b.Addr, "--data-dir", b.DataDir}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("berth %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// Command is the berth verb against this server, not started.
func (b *Up) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, b.Bin, append([]string{"--addr", b.Addr, "--data-dir", b.DataDir}, args...)...)
}

// Stop ends berth up with SIGTERM (SIGKILL after 15s); a nil Up or one
// that has ended already is fine. App containers stay, as berth leaves
// them on SIGTERM.
func (b *Up) Stop() {
	if b == nil || b.cmd == nil || b.cmd.Process == nil {
		return
	}
	select {
	case <-b.done:
		return
	default:
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(15 * time.Second):
		b.logf("berth up did not stop within 15s of SIGTERM; killing it")
		b.cmd.Process.Kill()
		<-b.done
	}
}

// FreeAddr is a free TCP port on 127.0.0.1 (free when asked).
func FreeAddr() string {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}
