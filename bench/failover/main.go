// Command failover measures how long berth's servers take to replace a
// killed leader: three `berth server` processes on a three-member embedded
// etcd; each run kills the leader with SIGKILL, deploys an app through the
// survivors and measures the time until a survivor reports a new leader and
// until the new leader's controller acts (creates the app's instances).
// The killed server is started again before the next run.
//
// Then node loss: one server and three agents on this machine's Docker
// engine; each run freezes one agent (SIGSTOP) and measures the time until
// a replacement of its instance answers (see nodeloss.go).
//
//	go run ./bench/failover [-berth bin/berth] [-runs 5] [-out file]
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"berth/internal/client"
)

func main() {
	bin := flag.String("berth", "", "berth binary (default: build ./cmd/berth)")
	runs := flag.Int("runs", 5, "leader kills, and node losses")
	out := flag.String("out", "", "also write the results to this file")
	keep := flag.Bool("keep", false, "keep the data dirs and logs")
	flag.Parse()
	if err := run(*bin, *runs, *out, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

// server is one `berth server` of the bench.
type server struct {
	bin, dataDir, logPath string
	args                  []string
	url                   string
	cmd                   *exec.Cmd
	done                  chan struct{}
}

func (s *server) start() error {
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); logFile.Close(); close(s.done) }()
	return nil
}

func (s *server) kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

func (s *server) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		s.kill()
	}
}

func run(bin string, runs int, outPath string, keep bool) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "berth-bench-failover-")
	if err != nil {
		return err
	}
	if keep {
		logf("data dirs and logs in %s", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	if bin == "" {
		bin = filepath.Join(tmp, "berth")
		logf("building berth")
		build := exec.Command("go", "build", "-o", bin, "./cmd/berth")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/berth (run from the repository root): %w", err)
		}
	}

	token := randomHex()
	names := []string{"s1", "s2", "s3"}
	var members []string
	for _, name := range names {
		members = append(members, name+"=http://"+freeAddr())
	}
	cluster := strings.Join(members, ",")
	servers := make([]*server, len(names))
	var urls []string
	for i, name := range names {
		s := &server{bin: bin, dataDir: filepath.Join(tmp, name), logPath: filepath.Join(tmp, name+".log")}
		addr := freeAddr()
		s.url = "http://" + addr
		s.args = []string{"server", "--data-dir", s.dataDir, "--listen", addr, "--etcd-name", name, "--etcd-cluster", cluster,
			"--registry-dir", filepath.Join(tmp, "registry")} // one storage for all, as several servers need
		if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(s.dataDir, "token"), []byte(token+"\n"), 0o600); err != nil {
			return err
		}
		servers[i] = s
		urls = append(urls, s.url)
	}
	for _, s := range servers {
		if err := s.start(); err != nil {
			return err
		}
		defer s.stop()
	}
	byURL := map[string]*server{}
	for _, s := range servers {
		byURL[s.url] = s
	}
	all := client.New(strings.Join(urls, ","), token)
	leader, err := waitLeader(ctx, servers, token, "", 60*time.Second)
	if err != nil {
		return err
	}
	logf("3 servers on a 3-member embedded etcd; %s leads", leader)

	var toLeader, toActing []time.Duration
	results := &strings.Builder{}
	for i := 1; i <= runs; i++ {
		old := byURL[leader]
		app := fmt.Sprintf("failover-%d", i)
		killed := time.Now()
		old.kill()
		// The survivors take the deploy; only a leader's controller makes instances.
		var survivors []string
		for _, s := range servers {
			if s != old {
				survivors = append(survivors, s.url)
			}
		}
		cl := client.New(strings.Join(survivors, ","), token)
		leaderc := make(chan result, 1)
		go func() {
			l, err := waitLeader(ctx, without(servers, old), token, old.url, 30*time.Second)
			leaderc <- result{l, time.Since(killed), err}
		}()
		spec := fmt.Sprintf("name: %s\nimage: berth/demo:1\nreplicas: 1\nresources: {cpu: 10m, memory: 8Mi}\n", app)
		if _, err := cl.DeployYAML(ctx, app, []byte(spec), client.DeployOptions{}); err != nil {
			return fmt.Errorf("run %d: deploy: %w", i, err)
		}
		acting, err := waitInstances(ctx, cl, app, killed, 30*time.Second)
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		lr := <-leaderc
		if lr.err != nil {
			return fmt.Errorf("run %d: %w", i, lr.err)
		}
		toLeader, toActing = append(toLeader, lr.took), append(toActing, acting)
		line := fmt.Sprintf("run %d: killed %s; new leader %s after %s; its controller acted after %s",
			i, old.url, lr.leader, lr.took.Round(time.Millisecond), acting.Round(time.Millisecond))
		logf("%s", line)
		fmt.Fprintln(results, line)
		leader = lr.leader

		// Back to three members before the next kill.
		if err := old.start(); err != nil {
			return err
		}
		if err := waitHealthy(ctx, old, token, 60*time.Second); err != nil {
			return err
		}
		_, _ = all.DeleteApp(ctx, app)
		time.Sleep(2 * time.Second) // the restarted member catches up
	}
	for _, s := range servers {
		s.stop()
	}
	lost, lossLines, err := nodeLoss(ctx, bin, tmp, runs)
	if err != nil {
		return fmt.Errorf("node loss: %w", err)
	}
	results.WriteString(lossLines)
	summary := fmt.Sprintf("leader kill -> new leader: median %s over %d runs\nleader kill -> new leader acting (instance created): median %s over %d runs\nnode loss (agent frozen, node TTL 10s) -> replacement answering: median %s over %d runs",
		median(toLeader).Round(time.Millisecond), runs, median(toActing).Round(time.Millisecond), runs, median(lost).Round(time.Millisecond), len(lost))
	fmt.Fprintln(results, summary)
	fmt.Print(results.String())
	if outPath != "" {
		header := fmt.Sprintf("# bench/failover, %s: leader kills: 3 berth servers, 3-member embedded etcd (election timeout 500ms, leader TTL 2s); node loss: 1 server, 3 agents, node TTL 10s; this machine\n", time.Now().UTC().Format(time.RFC3339))
		return os.WriteFile(outPath, []byte(header+results.String()), 0o644)
	}
	return nil
}

type result struct {
	leader string
	took   time.Duration
	err    error
}

func without(servers []*server, s *server) []*server {
	return slices.DeleteFunc(slices.Clone(servers), func(x *server) bool { return x == s })
}

// waitLeader polls the servers' status until one names a leader other than old.
func waitLeader(ctx context.Context, servers []*server, token, old string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	clients := make([]*client.Client, len(servers))
	for i, s := range servers {
		clients[i] = client.New(s.url, token)
	}
	for time.Now().Before(deadline) {
		for _, cl := range clients {
			c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			st, err := cl.Status(c)
			cancel()
			if err == nil && st.LeaderServer != "" && st.LeaderServer != old {
				return st.LeaderServer, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", fmt.Errorf("no new leader within %s", timeout)
}

func waitInstances(ctx context.Context, cl *client.Client, app string, since time.Time, timeout time.Duration) (time.Duration, error) {
	deadline := since.Add(timeout)
	for time.Now().Before(deadline) {
		c, cancel := context.WithTimeout(ctx, time.Second)
		l, err := cl.ListInstances(c, client.InstanceFilter{App: app})
		cancel()
		if err == nil && len(l.Items) > 0 {
			return time.Since(since), nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("no instance of %s within %s: no leader acted", app, timeout)
}

func waitHealthy(ctx context.Context, s *server, token string, timeout time.Duration) error {
	cl := client.New(s.url, token)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("%s exited; log:\n%s", s.url, tail(s.logPath))
		default:
		}
		c, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cl.Status(c)
		cancel()
		if err == nil && st.Store == "ok" {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New(s.url + " did not come back")
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randomHex() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}
