package gitserve

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"berth/api"
	"berth/internal/testenv"
)

func testServer(t *testing.T) *Server {
	if err := Available(); err != nil {
		testenv.Missing(t, err.Error())
	}
	return &Server{
		Root: t.TempDir(),
		Authorize: func(_ context.Context, token string) (string, error) {
			return map[string]string{"u": api.RoleUser, "a": api.RoleAgent}[token], nil
		},
		Hook:    []string{"/bin/true"},
		HookEnv: func(app, token string) []string { return nil },
		Log:     slog.New(slog.DiscardHandler),
	}
}

// The edge: paths, methods, the dumb protocol and tokens are checked
// before git runs, and only a push makes a repository.
func TestRefusals(t *testing.T) {
	s := testServer(t)
	for _, c := range []struct {
		method, path, token string
		code                int
		want                string
	}{
		{"GET", "/git/web.git/info/refs?service=git-receive-pack", "", 401, "authentication required"},
		{"GET", "/git/web.git/info/refs?service=git-receive-pack", "x", 401, "wrong or removed"},
		{"GET", "/git/web.git/info/refs?service=git-receive-pack", "a", 403, "a agent token may not"},
		{"GET", "/git/web.git/info/refs", "u", 403, "smart HTTP protocol only"},
		{"GET", "/git/web.git/HEAD", "u", 404, "no such repository path"},
		{"GET", "/git/web.git/objects/info/packs", "u", 404, "no such repository path"},
		{"GET", "/git/../etc.git/info/refs?service=git-upload-pack", "u", 404, ""},
		{"GET", "/git/Web.git/info/refs?service=git-upload-pack", "u", 404, "not a DNS label"},
		{"POST", "/git/web.git/info/refs?service=git-upload-pack", "u", 405, "method not allowed"},
		{"GET", "/git/web.git/git-receive-pack", "u", 405, "method not allowed"},
		{"GET", "/git/web.git/info/refs?service=git-upload-pack", "u", 404, "no git repository yet"},
	} {
		req := httptest.NewRequest(c.method, c.path, nil)
		if c.token != "" {
			req.SetBasicAuth("berth", c.token)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		body, _ := io.ReadAll(w.Body)
		if w.Code != c.code || !strings.Contains(string(body), c.want) {
			t.Errorf("%s %s (token %q): %d %q; want %d with %q", c.method, c.path, c.token, w.Code, body, c.code, c.want)
		}
		if c.code == 401 && w.Header().Get("WWW-Authenticate") != `Basic realm="berth"` {
			t.Errorf("%s %s: a 401 without the Basic challenge git answers", c.method, c.path)
		}
	}
	if entries, _ := os.ReadDir(s.Root); len(entries) != 0 {
		t.Errorf("refused requests left %d entries in the root", len(entries))
	}
}

// The first push's ref advertisement makes the bare repository and the
// hook; git http-backend answers it.
func TestPushAdvertisement(t *testing.T) {
	s := testServer(t)
	req := httptest.NewRequest("GET", "/git/web.git/info/refs?service=git-receive-pack", nil)
	req.SetBasicAuth("berth", "u")
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req)
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/x-git-receive-pack-advertisement" {
		t.Fatalf("receive-pack advertisement: %d %s %q", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
	if !strings.Contains(w.Body.String(), "report-status") || !strings.Contains(w.Body.String(), "push-options") {
		t.Errorf("the advertisement lacks report-status or push-options: %q", w.Body.String())
	}
	if _, err := os.Stat(filepath.Join(s.Root, "web.git", "HEAD")); err != nil {
		t.Errorf("no bare repository: %v", err)
	}
	hook, err := os.ReadFile(filepath.Join(s.Root, "hooks", "pre-receive"))
	if err != nil || !strings.Contains(string(hook), "exec '/bin/true'") {
		t.Errorf("the hook: %q %v", hook, err)
	}
}

// gitCmd runs git in dir with an environment of its own (no user config).
func gitCmd(t *testing.T, ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.org", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.org")
	return cmd
}

// workTree is a repository with one commit and the server as its remote.
func workTree(t *testing.T, url string) string {
	dir := t.TempDir()
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"commit", "-q", "--allow-empty", "-m", "one"}, {"remote", "add", "berth", url}} {
		if out, err := gitCmd(t, context.Background(), dir, args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	return dir
}

// hookScript writes a pre-receive hook that runs body (sh).
func hookScript(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "hook")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// A push through git http-backend: the hook's output reaches the pusher
// as remote: lines, its failure rejects the push and moves no ref, its
// success accepts it, and the pushed branch can be fetched back.
func TestPushThroughTheBackend(t *testing.T) {
	s := testServer(t)
	hs := httptest.NewServer(s)
	defer hs.Close()
	url := strings.Replace(hs.URL, "http://", "http://berth:u@", 1) + "/git/web.git"
	dir := workTree(t, url)

	s.Hook = []string{hookScript(t, `echo "building $(cat | cut -d' ' -f3)"; echo "the build failed" >&2; exit 1`)}
	out, err := gitCmd(t, context.Background(), dir, "push", "berth", "main").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "remote: building refs/heads/main") || !strings.Contains(string(out), "remote: the build failed") {
		t.Fatalf("push with a failing hook: err %v, output:\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(s.Root, "web.git", "refs", "heads", "main")); err == nil {
		t.Fatal("a rejected push moved the branch")
	}

	s.Hook = []string{hookScript(t, `cat >/dev/null; echo deployed`)}
	out, err = gitCmd(t, context.Background(), dir, "push", "berth", "main").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "remote: deployed") {
		t.Fatalf("push with a hook that accepts: err %v, output:\n%s", err, out)
	}
	clone := t.TempDir()
	if out, err := gitCmd(t, context.Background(), clone, "clone", "-q", url, "c").CombinedOutput(); err != nil {
		t.Fatalf("clone back: %v: %s", err, out)
	}
	local, _ := gitCmd(t, context.Background(), dir, "rev-parse", "HEAD").Output()
	cloned, _ := gitCmd(t, context.Background(), filepath.Join(clone, "c"), "rev-parse", "HEAD").Output()
	if string(local) != string(cloned) || len(local) == 0 {
		t.Fatalf("cloned HEAD %q, pushed %q", cloned, local)
	}
}

// A pusher that goes away while the hook works (a long build) takes the
// hook, receive-pack and http-backend with it: nothing is left running.
func TestPushCutShortLeavesNothingRunning(t *testing.T) {
	s := testServer(t)
	hs := httptest.NewServer(s)
	defer hs.Close()
	url := strings.Replace(hs.URL, "http://", "http://berth:u@", 1) + "/git/web.git"
	dir := workTree(t, url)
	pidFile := filepath.Join(t.TempDir(), "pid")
	s.Hook = []string{hookScript(t, `echo $$ > `+pidFile+`.new && mv `+pidFile+`.new `+pidFile+`; echo building; exec sleep 300`)}

	// git push talks HTTP through a git-remote-http child: the pusher
	// going away is the whole process group killed.
	push := gitCmd(t, context.Background(), dir, "push", "berth", "main")
	push.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := push.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	for deadline := time.Now().Add(30 * time.Second); pid == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the hook never started")
		}
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	syscall.Kill(-push.Process.Pid, syscall.SIGKILL)
	push.Wait()
	for deadline := time.Now().Add(20 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the hook (pid %d) still runs 20s after its pusher went away", pid)
		}
	}
	if _, err := os.Stat(filepath.Join(s.Root, "web.git", "refs", "heads", "main")); err == nil {
		t.Fatal("a push cut short moved the branch")
	}
}
