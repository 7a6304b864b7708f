package e2e

// The first hour of a new user (issue 17): berth up with its default,
// relative data dir; a second berth on a data dir in use; agent and
// gateway tokens kept off the command line; the gateway's own role; the
// example deployed only when absent; clear errors for the usual slips.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runIn runs berth in dir with env added, killed after limit; it returns
// the result and how long it took.
func runIn(t *testing.T, dir string, env []string, limit time.Duration, args ...string) (cliResult, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, berthBin, args...)
	cmd.Dir, cmd.Env = dir, append(cleanEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	r := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run berth %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Errorf("berth %v was still running after %s; killed\n%s", args, limit, r)
	}
	return r, took
}

// fhApp is what these tests read of GET /v1/apps/{name}.
type fhApp struct {
	Revision int64 `json:"revision"`
	Spec     struct {
		Env map[string]string `json:"env"`
	} `json:"spec"`
}

// TestFirstHourDataDir: berth up with the default relative data dir runs
// a task with a payload (its bind mount needs an absolute path); a second
// berth up, or berth server, on the data dir in use fails at once naming
// the pid of the first and changes nothing; an agent's dir is locked the
// same way, and its token comes from a file, not the command line; a clean
// stop logs no etcd warning.
func TestFirstHourDataDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := startBerthAsMakeUp(t, dir)
	env := []string{"BERTH_ADDR=" + b.addr}

	job := filepath.Join(t.TempDir(), "job.json")
	if err := os.WriteFile(job, []byte(`{"file": "a.png"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	r, _ := runIn(t, dir, env, 2*time.Minute, "run", "--wait", "--payload", "@"+job, imageBusybox, "--",
		"sh", "-c", `cat "$BERTH_PAYLOAD"; echo " attempt $BERTH_ATTEMPT"`)
	if r.code != 0 || !strings.Contains(r.stdout, `{"file": "a.png"} attempt 1`) {
		t.Errorf("a task with a payload under the relative data dir: want exit 0 and the payload in the output:\n%s", r)
	}

	// Something to leave untouched: an app, the token files, the lock.
	spec := filepath.Join(t.TempDir(), "keep.yaml")
	if err := os.WriteFile(spec, []byte(demoSpec("keep", imageDemo1, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if r, _ := runIn(t, dir, env, 2*time.Minute, "deploy", "-f", spec); r.code != 0 {
		t.Fatalf("deploy keep:\n%s", r)
	}
	snapshot := func() string {
		var a fhApp
		b.getJSON(t, "/v1/apps/keep", &a)
		s := fmt.Sprintf("app keep revision %d", a.Revision)
		for _, f := range []string{"token", "agent-token", "lock"} {
			data, err := os.ReadFile(filepath.Join(b.dataDir, f))
			s += fmt.Sprintf("; %s %q %v", f, data, err)
		}
		return s
	}
	before := snapshot()
	pid := strconv.Itoa(b.cmd.Process.Pid)
	inUse := "data dir ./.berth is in use by berth (pid " + pid + ")"
	for _, args := range [][]string{
		{"up", "--listen", addrFree(t), "--gateway-addr", addrFree(t)},
		{"server", "--listen", addrFree(t)},
		{"--data-dir", ".berth", "up", "--listen", addrFree(t), "--gateway-addr", ""},
	} {
		r, took := runIn(t, dir, nil, 20*time.Second, args...)
		if r.code == 0 || !strings.Contains(r.stderr, inUse) {
			t.Errorf("a second berth on the data dir in use: want a non-zero exit saying %q:\n%s", inUse, r)
		}
		if took > 5*time.Second {
			t.Errorf("berth %s took %s to fail; want it at once", strings.Join(args, " "), took.Round(time.Millisecond))
		}
	}
	if after := snapshot(); after != before {
		t.Errorf("the refused berths changed the data dir or the app:\nbefore: %s\nafter:  %s", before, after)
	}
	if code, _, err := b.rawRequest("GET", "/healthz", nil, "", ""); err != nil || code != 200 {
		t.Errorf("the first berth after the refused ones: %d %v", code, err)
	}

	// An agent of a second node, its token in a file; a second agent on
	// the same agent dir is refused the same way.
	tr, _ := runIn(t, dir, env, time.Minute, "token", "create", "--role", "agent")
	agentTok := strings.TrimSpace(tr.stdout)
	tokFile := filepath.Join(t.TempDir(), "agent-token")
	if err := os.WriteFile(tokFile, []byte(agentTok+"\n"), 0o600); err != nil || tr.code != 0 {
		t.Fatalf("token create --role agent: %v\n%s", err, tr)
	}
	agentDir := t.TempDir()
	agentArgs := []string{"agent", "--data-dir", agentDir, "--server", b.addr, "--token-file", tokFile, "--node", "fh2", "--workers", "2"}
	a := &proc{name: "agent fh2", logPath: filepath.Join(t.TempDir(), "agent.log"), args: agentArgs}
	a.start(t)
	t.Cleanup(func() { a.stop(t) })
	waitFor(t, 30*time.Second, func() (bool, string) {
		var nodes list[node]
		if err := b.getJSONErr("/v1/nodes", &nodes); err != nil {
			return false, err.Error()
		}
		for _, n := range nodes.Items {
			if n.Name == "fh2" && n.State == "ready" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("node fh2 not ready: %+v; agent log:\n%s", nodes.Items, tailFile(a.logPath, 10))
	})
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", a.cmd.Process.Pid)); err != nil || bytes.Contains(cmdline, []byte(agentTok)) {
		t.Errorf("the agent's command line holds its token (or cannot be read: %v): %q", err, cmdline)
	}
	r, took := runIn(t, dir, nil, 20*time.Second, agentArgs...)
	want := fmt.Sprintf("agent dir %s is in use by berth (pid %d)", filepath.Join(agentDir, "agent-fh2"), a.cmd.Process.Pid)
	if r.code == 0 || !strings.Contains(r.stderr, want) || took > 5*time.Second {
		t.Errorf("a second agent on the same agent dir: want a non-zero exit at once (took %s) saying %q:\n%s", took.Round(time.Millisecond), want, r)
	}
	a.stop(t)

	// A clean stop: no warning from etcd.
	b.stop(t)
	log := b.log()
	if i := strings.LastIndex(log, "stopping; app containers keep running"); i < 0 {
		t.Errorf("berth did not log its stop:\n%s", tailFile(b.logPath, 20))
	} else if tail := log[i:]; strings.Contains(tail, "component=etcd") {
		t.Errorf("etcd logged on a clean stop:\n%s", tail)
	}
}

// addrFree is a loopback address on a port free when picked.
func addrFree(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
}

// TestFirstHourDeployExample: scripts/deploy-example.sh (what make up runs
// beside berth up) deploys the example when its app does not exist, and
// leaves the user's own update of it alone on the next start; it does
// nothing once the berth up it was started for has exited.
func TestFirstHourDeployExample(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	script := filepath.Join(repoRoot, "scripts", "deploy-example.sh")
	spec := filepath.Join(t.TempDir(), "ex.yaml")
	if err := os.WriteFile(spec, []byte(demoSpec("ex", imageDemo1, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) cliResult {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, script, append([]string{berthBin}, args...)...)
		cmd.Dir, cmd.Env = t.TempDir(), append(cleanEnv(), "BERTH_ADDR="+b.addr, "BERTH_TOKEN="+b.token)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		r := cliResult{args: append([]string{"(deploy-example.sh)"}, args...), stdout: stdout.String(), stderr: stderr.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", script, err)
		}
		return r
	}
	app := func(name string) (fhApp, int) {
		var a fhApp
		code, _ := b.request(t, "GET", "/v1/apps/"+name, nil, "")
		if code == 200 {
			b.getJSON(t, "/v1/apps/"+name, &a)
		}
		return a, code
	}

	if r := run(spec); r.code != 0 || !strings.Contains(r.stdout, "revision 1") {
		t.Fatalf("first start: want the example deployed:\n%s", r)
	}
	// The user's own update, then a restart of make up.
	mine := strings.Replace(demoSpec("ex", imageDemo1, 1), "hi from e2e", "mine", 1)
	b.mustDeploy(t, mine)
	r := run(spec)
	a, _ := app("ex")
	if r.code != 0 || !strings.Contains(r.stdout, "ex exists already") || a.Revision != 2 || a.Spec.Env["GREETING"] != "mine" {
		t.Errorf("second start: want the user's revision 2 kept (GREETING mine), got revision %d, GREETING %q:\n%s", a.Revision, a.Spec.Env["GREETING"], r)
	}

	// For a berth up that has already exited (say, its data dir was in
	// use): nothing, even when the app is absent.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "ex2.yaml")
	if err := os.WriteFile(other, []byte(demoSpec("ex2", imageDemo1, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := run(other, strconv.Itoa(dead.Process.Pid)); r.code != 0 {
		t.Errorf("for an exited berth up: want exit 0:\n%s", r)
	}
	if _, code := app("ex2"); code != 404 {
		t.Errorf("for an exited berth up: GET /v1/apps/ex2 %d; want 404 (nothing deployed)", code)
	}
}

// TestFirstHourGatewayRoleAndErrors: a gateway token (from a file) routes
// but cannot deploy; errors name the verb the user ran and what is
// missing; ps and events of a missing app fail; schedule ls says never.
func TestFirstHourGatewayRoleAndErrors(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	const host = "fh.e2e.test"
	b.mustDeploy(t, demoSpec("fh", imageDemo1, 1)+"routes: ["+host+"]\n")
	b.waitRoutable(t, "fh", 1)

	r := b.cli(t, "token", "create", "--role", "gateway", "--description", "e2e gateway")
	gwTok := strings.TrimSpace(r.stdout)
	tokFile := filepath.Join(t.TempDir(), "gateway-token")
	if err := os.WriteFile(tokFile, []byte(gwTok+"\n"), 0o600); err != nil || r.code != 0 {
		t.Fatalf("token create --role gateway: %v\n%s", err, r)
	}
	gw := &berth{gwAddr: addrFree(t)}
	p := &proc{name: "gateway", logPath: filepath.Join(t.TempDir(), "gateway.log"),
		args: []string{"gateway", "--server", b.addr, "--token-file", tokFile, "--listen", gw.gwAddr, "--metrics-addr", addrFree(t)}}
	p.start(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- gateway log ----\n%s", tailFile(p.logPath, 30))
		}
		p.stop(t)
	})
	waitFor(t, 30*time.Second, func() (bool, string) {
		resp, err := gw.gwGet(host, "/")
		return err == nil && resp.code == 200 && strings.Contains(resp.body, "hi from e2e"), fmt.Sprintf("%d %q %v", resp.code, resp.body, err)
	})

	// The gateway token cannot deploy, scale or remove; nothing changes.
	changed := filepath.Join(t.TempDir(), "fh.yaml")
	if err := os.WriteFile(changed, []byte(demoSpec("fh", imageDemo2, 1)+"routes: ["+host+"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	asGateway := []string{"BERTH_ADDR=" + b.addr, "BERTH_TOKEN_FILE=" + tokFile}
	for _, args := range [][]string{{"deploy", "-f", changed}, {"scale", "fh", "3"}, {"rm", "fh"}} {
		r := b.cliEnv(t, asGateway, args...)
		if r.code == 0 || !strings.HasPrefix(r.stderr, "berth: "+args[0]) || !strings.Contains(r.stderr, "403 token role gateway may not") {
			t.Errorf("berth %s with a gateway token: want a non-zero exit, naming the verb and the role:\n%s", args[0], r)
		}
	}
	var a fhApp
	b.getJSON(t, "/v1/apps/fh", &a)
	if a.Revision != 1 {
		t.Errorf("app fh at revision %d after the gateway token's refused calls; want 1", a.Revision)
	}

	// An agent token's deploy names the deploy, not the call that failed.
	r = b.cli(t, "token", "create", "--role", "agent")
	r = b.cliEnv(t, []string{"BERTH_ADDR=" + b.addr, "BERTH_TOKEN=" + strings.TrimSpace(r.stdout)}, "deploy", "-f", changed)
	if r.code == 0 || !strings.HasPrefix(r.stderr, "berth: deploy") || !strings.Contains(r.stderr, "token role agent may not") {
		t.Errorf("berth deploy with an agent token: want the error to start with the verb:\n%s", r)
	}

	// A missing app, a missing image, no server.
	for _, args := range [][]string{{"ps", "nosuch"}, {"events", "nosuch"}} {
		r := b.cli(t, args...)
		if r.code == 0 || !strings.Contains(r.stderr, "no app named nosuch") || strings.Contains(r.stdout, "INSTANCE") {
			t.Errorf("berth %s: want a non-zero exit saying there is no app named nosuch:\n%s", strings.Join(args, " "), r)
		}
	}
	if r := b.cli(t, "events", "fh"); r.code != 0 || !strings.Contains(r.stdout, "deployed") {
		t.Errorf("berth events fh:\n%s", r)
	}
	r = b.cli(t, "run")
	if r.code == 0 || !strings.Contains(r.stderr, "missing IMAGE") || !strings.Contains(r.stderr, "usage: berth run [flags] IMAGE") {
		t.Errorf("berth run without an image: want what is missing and the usage:\n%s", r)
	}
	r = b.cliEnv(t, []string{"BERTH_ADDR=" + addrFree(t), "BERTH_TOKEN=x"}, "ps")
	if r.code == 0 || !strings.Contains(r.stderr, "no berth server at") || !strings.Contains(r.stderr, "berth up") {
		t.Errorf("berth ps with no server: want the address tried and a hint to run berth up:\n%s", r)
	}

	// A schedule that has not run yet.
	if r := b.cli(t, "schedule", "create", "fhtick", "--cron", "@daily", imageBusybox, "--", "true"); r.code != 0 {
		t.Fatalf("schedule create:\n%s", r)
	}
	r = b.cli(t, "schedule", "ls")
	if r.code != 0 || !strings.Contains(r.stdout, "never") || strings.Contains(r.stdout, "0s ago") {
		t.Errorf("schedule ls before any run: want LAST RUN never:\n%s", r)
	}
}
