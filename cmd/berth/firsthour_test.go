package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
)

// A second lock on a dir, even from the same process (flock locks are per
// open file), is refused naming the holder's pid; the lock file holds it.
func TestLockDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := lockDir(dir, "data dir"); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(os.Getpid())
	if b, err := os.ReadFile(filepath.Join(dir, lockFile)); err != nil || strings.TrimSpace(string(b)) != pid {
		t.Errorf("lock file: %q %v; want the pid %s", b, err, pid)
	}
	err := lockDir(dir, "data dir")
	if err == nil || !strings.Contains(err.Error(), "data dir "+dir+" is in use by berth (pid "+pid+")") {
		t.Errorf("second lock: %v; want it refused naming pid %s", err, pid)
	}
}

func TestShownPath(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		filepath.Join(wd, ".berth"):  "./.berth",
		filepath.Join(wd, "a", "b"):  "./a/b",
		"/elsewhere/.berth":          "/elsewhere/.berth",
		filepath.Join(wd, "..", "x"): filepath.Join(filepath.Dir(wd), "x"),
	} {
		if got := shownPath(in); got != want {
			t.Errorf("shownPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAbsDataDir(t *testing.T) {
	g := &globals{dataDir: ".berth"}
	if err := g.absDataDir(); err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	if g.dataDir != filepath.Join(wd, ".berth") {
		t.Errorf("data dir %q, want it absolute under %s", g.dataDir, wd)
	}
}

func TestGivenToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(path, []byte("  from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		g          globals
		want, fail string
	}{
		{globals{token: "flag"}, "flag", ""},
		{globals{token: "flag", tokenFile: path}, "from-file", ""},
		{globals{tokenFile: path + ".missing"}, "", "--token-file"},
		{globals{}, "", ""},
	} {
		got, err := tc.g.givenToken()
		if got != tc.want || (err == nil) != (tc.fail == "") || err != nil && !strings.Contains(err.Error(), tc.fail) {
			t.Errorf("%+v: %q %v; want %q (error with %q)", tc.g, got, err, tc.want, tc.fail)
		}
	}
	empty := filepath.Join(t.TempDir(), "empty")
	_ = os.WriteFile(empty, nil, 0o600)
	if _, err := (&globals{tokenFile: empty}).givenToken(); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("an empty token file: %v", err)
	}
}

// Errors name the verb (unless they start with it), the status of an API
// refusal, and berth up when no server answers.
func TestErrorLine(t *testing.T) {
	root := &cobra.Command{Use: "berth"}
	deploy := &cobra.Command{Use: "deploy -f app.yaml"}
	task := &cobra.Command{Use: "task"}
	show := &cobra.Command{Use: "show ID"}
	root.AddCommand(deploy, task)
	task.AddCommand(show)
	refused := &client.Error{Status: 403, Message: "token role agent may not call GET /v1/events"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, unreached := client.New(addr, "x").Status(t.Context())
	for _, tc := range []struct {
		cmd  *cobra.Command
		err  error
		want string
	}{
		{deploy, refused, "berth: deploy: 403 token role agent may not call GET /v1/events"},
		{deploy, fmt.Errorf("deploy hello: %w", refused), "berth: deploy hello: 403 token role agent may not"},
		{show, errors.New("no such task"), "berth: task show: no such task"},
		{root, errors.New(`unknown command "x"`), `berth: unknown command "x"`},
		{deploy, unreached, "berth: deploy: no berth server at http://" + addr + " answers"},
	} {
		if got := errorLine(tc.cmd, root, tc.err); !strings.HasPrefix(got, tc.want) {
			t.Errorf("errorLine(%s, %v) = %q, want it to start with %q", tc.cmd.Name(), tc.err, got, tc.want)
		}
	}
	if got := errorLine(deploy, root, unreached); !strings.Contains(got, "'berth up'") {
		t.Errorf("no server: %q; want a hint to start berth up", got)
	}
}

func TestNeedArgs(t *testing.T) {
	root := &cobra.Command{Use: "berth"}
	sched := &cobra.Command{Use: "schedule"}
	create := &cobra.Command{Use: "create NAME IMAGE"}
	root.AddCommand(sched)
	sched.AddCommand(create)
	check := needArgs("NAME", "IMAGE")
	for n, want := range map[int]string{0: "missing NAME and IMAGE (usage: berth schedule create NAME IMAGE", 1: "missing IMAGE (usage:"} {
		if err := check(create, make([]string, n)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%d args: %v; want %q", n, err, want)
		}
	}
	if err := check(create, []string{"a", "b", "c"}); err != nil {
		t.Errorf("3 args: %v", err)
	}
}

func TestLastRun(t *testing.T) {
	now := time.Now()
	if got := lastRun(api.Schedule{LastRun: now}); got != "never" {
		t.Errorf("a new schedule (last run = its creation, no task): %q, want never", got)
	}
	if got := lastRun(api.Schedule{LastRun: now.Add(-time.Minute), LastTask: "t1"}); !strings.HasSuffix(got, " ago") {
		t.Errorf("a schedule that ran: %q", got)
	}
}

// Every kind fits its column: the messages of placed and unschedulable
// events start at the same column.
func TestEventColumns(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	evs := []api.Event{
		{Time: at, Kind: "placed", App: "web", Instance: "web-1", Node: "n1", Message: "MSG"},
		{Time: at, Kind: "unschedulable", App: "web", Instance: "web-2", Message: "MSG"},
	}
	var buf bytes.Buffer
	w := newEventWriter(&buf, evs)
	for _, e := range evs {
		w.write(e)
	}
	w.write(api.Event{Time: at, Kind: "deployed", App: "web", Message: "MSG"})
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	col := strings.Index(lines[0], "MSG")
	for _, l := range lines {
		if strings.Index(l, "MSG") != col {
			t.Errorf("messages not in one column:\n%s", buf.String())
			break
		}
	}
	if !strings.Contains(lines[1], "unschedulable  -") {
		t.Errorf("unschedulable runs into the node column:\n%s", lines[1])
	}
}
