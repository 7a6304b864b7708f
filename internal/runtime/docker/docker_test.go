package docker

// Integration tests against the local Docker engine. They are skipped when
// `docker info` does not answer, unless CI=true (then a missing engine is a
// failure). They need no registry: they use the local image berth/busybox:1
// (scripts/build-images.sh) or build berth-test/busybox:1 from the host's
// /bin/busybox (Debian package busybox-static).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"berth/internal/runtime"
	"berth/internal/testenv"
)

const (
	labelTestRun  = "berth.test.run"  // unique per `go test` run
	labelTestName = "berth.test.name" // unique per test within a run
	fallbackImage = "berth-test/busybox:1"
)

var runID = fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())

// engineUp reports whether `docker info` answers.
var engineUp = sync.OnceValue(func() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "docker", "info").Run() == nil
})

// env is one test's runtime, labels and image.
type env struct {
	t      *testing.T
	r      *Runtime
	labels map[string]string // on every container this test creates
	image  string
	seq    int
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if !engineUp() {
		testenv.Missing(t, "Docker engine does not answer `docker info`")
	}
	r, err := New("")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		t:      t,
		r:      r,
		labels: map[string]string{labelTestRun: runID, labelTestName: t.Name()},
		image:  testImage(t),
	}
	t.Cleanup(e.cleanup)
	return e
}

// cleanup removes every container carrying the test's labels, without
// relying on the code under test.
func (e *env) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	filters := client.Filters{}
	for k, v := range e.labels {
		filters.Add("label", k+"="+v)
	}
	res, err := e.r.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: filters})
	if err != nil {
		e.t.Errorf("cleanup: list: %v", err)
	}
	for _, c := range res.Items {
		if _, err := e.r.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			e.t.Errorf("cleanup: remove %s: %v", c.ID, err)
		}
	}
	e.r.Close()
}

// spec returns a spec with a unique name, the test image and labels.
func (e *env) spec(cmd ...string) runtime.ContainerSpec {
	e.seq++
	return runtime.ContainerSpec{
		Name:    fmt.Sprintf("berth-test-%s-%s-%d", runID, sanitize(e.t.Name()), e.seq),
		Image:   e.image,
		Command: cmd,
		Labels:  clone(e.labels),
	}
}

// run creates and starts spec.
func (e *env) run(spec runtime.ContainerSpec) string {
	e.t.Helper()
	ctx := e.t.Context()
	id, err := e.r.Create(ctx, spec)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.r.Start(ctx, id); err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) inspect(id string) runtime.Container {
	e.t.Helper()
	c, err := e.r.Inspect(e.t.Context(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// waitExited polls until the container is no longer running.
func (e *env) waitExited(id string) runtime.Container {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := e.inspect(id)
		if !c.Running {
			return c
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s still running", c.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	imageOnce sync.Once
	imageRef  string
	imageErr  error
)

// testImage returns berth/busybox:1 when present, else builds (once)
// berth-test/busybox:1 from the host's /bin/busybox on scratch.
func testImage(t *testing.T) string {
	t.Helper()
	imageOnce.Do(func() { imageRef, imageErr = findOrBuildImage() })
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return imageRef
}

func findOrBuildImage() (string, error) {
	for _, ref := range []string{"berth/busybox:1", fallbackImage} {
		if exec.Command("docker", "image", "inspect", ref).Run() == nil {
			return ref, nil
		}
	}
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("no test image (berth/busybox:1 or %s) and cannot build one: %v "+
			"(run scripts/build-images.sh or apt-get install busybox-static)", fallbackImage, err)
	}
	dir, err := os.MkdirTemp("", "berth-test-image")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	const dockerfile = `FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p -m 1777 /tmp && /bin/busybox --install -s /bin"]
CMD ["sh"]
`
	if err := os.WriteFile(filepath.Join(dir, "busybox"), bin, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return "", err
	}
	out, err := exec.Command("docker", "build", "-q", "-t", fallbackImage, dir).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", fallbackImage, err, out)
	}
	return fallbackImage, nil
}

func TestInfo(t *testing.T) {
	e := newEnv(t)
	info, err := e.r.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.CPUs <= 0 || info.MemoryBytes <= 0 || info.Version == "" {
		t.Fatalf("implausible info %+v", info)
	}
}

func TestServiceLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	spec := e.spec("nc", "-ll", "-p", "8080", "-e", "echo", "hi")
	spec.Hostname = "hello-1.node"
	spec.Port = 8080
	spec.HostIP = "127.0.0.1"
	spec.Env = map[string]string{"GREETING": "hello world", "A": "1"}
	spec.Init = true
	spec.NanoCPUs = 500_000_000
	spec.MemoryBytes = 64 << 20
	spec.PidsLimit = 64
	id := e.run(spec)

	c := e.inspect(id)
	if !c.Running || c.HostPort == 0 || c.StartedAt.IsZero() || c.Name != spec.Name || c.Image != e.image {
		t.Fatalf("after start: %+v", c)
	}
	if got := dialRead(t, c.HostPort); got != "hi" {
		t.Fatalf("read %q from 127.0.0.1:%d, want hi", got, c.HostPort)
	}

	checks := map[string]int{
		`test "$(hostname)" = hello-1.node`: 0,
		`test "$GREETING" = "hello world"`:  0,
		`exit 7`:                            7,
	}
	for script, want := range checks {
		code, err := e.r.Exec(ctx, id, []string{"sh", "-c", script})
		if err != nil || code != want {
			t.Errorf("exec %q = %d, %v; want %d", script, code, err, want)
		}
	}

	listed, err := e.r.List(ctx, e.labels)
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || listed[0].ID != id || listed[0].HostPort != c.HostPort ||
		listed[0].Labels[labelTestName] != t.Name() || listed[0].Labels[labelTestRun] != runID {
		t.Fatalf("List(%v) = %+v", e.labels, listed)
	}
	if other, err := e.r.List(ctx, map[string]string{labelTestRun: "no-such-run"}); err != nil || len(other) != 0 {
		t.Fatalf("List(other run) = %v, %v", other, err)
	}

	start := time.Now()
	if err := e.r.Stop(ctx, id, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("stop of a TERM-handling process (nc under init) took %v", time.Since(start))
	if c := e.inspect(id); c.Running || c.HostPort != 0 || c.FinishedAt.IsZero() {
		t.Fatalf("after stop: %+v", c)
	}
	if err := e.r.Stop(ctx, id, time.Second); err != nil {
		t.Fatalf("second stop: %v", err)
	}

	for range 2 {
		if err := e.r.Remove(ctx, id); err != nil {
			t.Fatalf("remove: %v", err)
		}
	}
	if _, err := e.r.Inspect(ctx, id); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("inspect after remove: %v, want ErrNotFound", err)
	}
	if err := e.r.Stop(ctx, id, time.Second); err != nil {
		t.Fatalf("stop after remove: %v", err)
	}
}

// dialRead connects to 127.0.0.1:port and returns the first line, retrying
// while the server comes up.
func dialRead(t *testing.T, port int) string {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var lastErr error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			lastErr = err
			continue
		}
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err == nil {
			return strings.TrimSpace(line)
		}
		lastErr = err
	}
	t.Fatalf("no answer on %s: %v", addr, lastErr)
	return ""
}

func TestExitCodeLogsAndEvents(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	evCtx, stopEvents := context.WithCancel(ctx)
	evs, errs := e.r.Events(evCtx, e.labels)

	id := e.run(e.spec("sh", "-c", "echo out-1; echo err-1 >&2; sleep 0.2; echo out-2; exit 3"))
	waitEvent(t, evs, id, "start")
	die := waitEvent(t, evs, id, "die")
	if die.Labels[labelTestName] != t.Name() || die.Labels["name"] != "" {
		t.Errorf("die event labels = %v", die.Labels)
	}

	// (for such short runs the engine may report FinishedAt slightly before StartedAt)
	c := e.waitExited(id)
	if c.ExitCode != 3 || c.OOMKilled || c.FinishedAt.IsZero() || c.StartedAt.IsZero() {
		t.Fatalf("after exit: %+v", c)
	}
	listed, err := e.r.List(ctx, e.labels)
	if err != nil || len(listed) != 1 || listed[0].Running || listed[0].ExitCode != 3 {
		t.Fatalf("List = %+v, %v", listed, err)
	}

	if got := readLogs(t, e.r, id, -1); !sameLines(got, "out-1", "err-1", "out-2") {
		t.Errorf("logs = %q", got)
	}
	if got := readLogs(t, e.r, id, 1); !sameLines(got, "out-2") {
		t.Errorf("logs tail 1 = %q", got)
	}

	if err := e.r.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, evs, id, "destroy")

	stopEvents()
	for range evs {
	}
	if err, ok := <-errs; ok {
		t.Errorf("errs yielded %v after ctx end, want closed", err)
	}
}

func waitEvent(t *testing.T, evs <-chan runtime.Event, id, action string) runtime.Event {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-evs:
			if !ok {
				t.Fatalf("event stream closed waiting for %s", action)
			}
			if ev.ContainerID == id && ev.Action == action {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event for %s", action, id)
		}
	}
}

func readLogs(t *testing.T, r *Runtime, id string, tail int) string {
	t.Helper()
	rc, err := r.Logs(t.Context(), id, false, tail)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sameLines compares the lines of text with want, ignoring order (stdout
// and stderr interleave freely).
func sameLines(text string, want ...string) bool {
	got := strings.Fields(text)
	slices.Sort(got)
	want = slices.Clone(want)
	slices.Sort(want)
	return slices.Equal(got, want)
}

func TestLogsFollow(t *testing.T) {
	e := newEnv(t)
	id := e.run(e.spec("sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.1; done"))
	rc, err := e.r.Logs(t.Context(), id, true, -1)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(rc)
	for i := range 5 {
		if !sc.Scan() {
			t.Fatalf("stream ended: %v", sc.Err())
		}
		if want := fmt.Sprintf("line-%d", i); sc.Text() != want {
			t.Fatalf("line %d = %q, want %q", i, sc.Text(), want)
		}
	}
	done := make(chan struct{})
	go func() {
		for sc.Scan() {
		}
		close(done)
	}()
	rc.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("closing the log stream did not end it")
	}
}

func TestStopGrace(t *testing.T) {
	e := newEnv(t)
	// sh as pid 1 without a TERM handler ignores SIGTERM: only SIGKILL ends it.
	id := e.run(e.spec("sh", "-c", "while true; do sleep 0.1; done"))
	start := time.Now()
	if err := e.r.Stop(t.Context(), id, 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	c := e.inspect(id)
	if c.Running || c.ExitCode != 137 {
		t.Fatalf("after stop: %+v", c)
	}
	// grace 1.5 s is rounded up to 2 s
	if took < 2*time.Second || took > 30*time.Second { // generous: the engine may be busy
		t.Fatalf("stop took %v, want about 2s", took)
	}
}

func TestExecTimeout(t *testing.T) {
	e := newEnv(t)
	id := e.run(e.spec("sleep", "60"))
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := e.r.Exec(ctx, id, []string{"sleep", "10"})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("exec = %v after %v, want deadline exceeded soon", err, time.Since(start))
	}
	if _, err := e.r.Exec(t.Context(), "berth-test-no-such-container", []string{"true"}); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("exec in missing container: %v, want ErrNotFound", err)
	}
}

func TestNameConflict(t *testing.T) {
	e := newEnv(t)
	spec := e.spec("true")
	if _, err := e.r.Create(t.Context(), spec); err != nil {
		t.Fatal(err)
	}
	_, err := e.r.Create(t.Context(), spec)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	t.Logf("conflict error: %v", err)
}

func TestEnsureImage(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	for range 2 { // the second call is answered from the cache
		if err := e.r.EnsureImage(ctx, e.image); err != nil {
			t.Fatal(err)
		}
	}

	missing := "berth-test/missing-" + runID + ":1"
	pullCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	start := time.Now()
	err := e.r.EnsureImage(pullCtx, missing)
	took := time.Since(start)
	t.Logf("failed pull of %s took %v: %v", missing, took, err)
	if !errors.Is(err, runtime.ErrImageNotFound) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("EnsureImage(%s) = %v, want ErrImageNotFound naming the image", missing, err)
	}
	if took > 60*time.Second {
		t.Errorf("failed pull took %v", took)
	}

	spec := e.spec("true")
	spec.Image = missing
	if _, err := e.r.Create(ctx, spec); !errors.Is(err, runtime.ErrImageNotFound) {
		t.Fatalf("create with missing image: %v, want ErrImageNotFound", err)
	}
}

func TestEnsureImageConcurrent(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for range 30 {
		wg.Go(func() { errs <- e.r.EnsureImage(t.Context(), e.image) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, s)
}

func clone(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// TestEventsStreamBreaks uses a stand-in engine (no Docker needed) whose
// event stream sends one event and then ends.
func TestEventsStreamBreaks(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Api-Version", "1.41")
		if !strings.HasSuffix(req.URL.Path, "/events") {
			return // _ping
		}
		if f := req.URL.Query().Get("filters"); !strings.Contains(f, `"label":{"berth.app=hello":true}`) {
			t.Errorf("events filters = %s", f)
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintln(w, `{"Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"berth.app":"hello","exitCode":"3","name":"x","image":"i"}}}`)
	}))
	defer srv.Close()

	r, err := New("tcp://" + srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	evs, errs := r.Events(t.Context(), map[string]string{"berth.app": "hello"})
	ev := <-evs
	if ev.ContainerID != "abc" || ev.Action != "die" || len(ev.Labels) != 1 || ev.Labels["berth.app"] != "hello" {
		t.Fatalf("event = %+v", ev)
	}
	select {
	case err := <-errs:
		if err == nil {
			t.Fatal("errs closed without an error")
		}
		t.Logf("stream error: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no error after the stream ended")
	}
	if _, ok := <-evs; ok {
		t.Fatal("events channel not closed")
	}
}

func TestWait(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	id := e.run(e.spec("sh", "-c", "sleep 0.5; exit 4"))
	c, err := e.r.Wait(ctx, id)
	if err != nil || c.Running || c.ExitCode != 4 || c.FinishedAt.IsZero() || c.ID != id {
		t.Fatalf("wait = %+v, %v", c, err)
	}
	if c, err := e.r.Wait(ctx, id); err != nil || c.ExitCode != 4 { // exited: at once
		t.Fatalf("second wait = %+v, %v", c, err)
	}
	if _, err := e.r.Wait(ctx, "berth-test-no-such-container"); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("wait for missing container: %v, want ErrNotFound", err)
	}

	// A running container: Wait ends with its ctx, or when it is stopped.
	id = e.run(e.spec("sleep", "60"))
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := e.r.Wait(short, id); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with ended ctx: %v", err)
	}
	waited := make(chan error, 1)
	go func() {
		c, err := e.r.Wait(ctx, id)
		if err == nil && (c.Running || c.ExitCode != 137) {
			err = fmt.Errorf("after stop: %+v", c)
		}
		waited <- err
	}()
	if err := e.r.Stop(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
}

func TestReadOnlyBindMount(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "payload")
	if err := os.WriteFile(file, []byte("data-42"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := e.spec("sh", "-c", `cat /task/payload; echo; if echo x > /task/payload; then echo writable; else echo read-only; fi`)
	spec.Mounts = []runtime.Mount{{Source: file, Target: "/task/payload", ReadOnly: true}}
	id := e.run(spec)
	if c, err := e.r.Wait(t.Context(), id); err != nil || c.ExitCode != 0 {
		t.Fatalf("wait = %+v, %v", c, err)
	}
	got := readLogs(t, e.r, id, -1)
	if !strings.Contains(got, "data-42") || !strings.Contains(got, "read-only") || strings.Contains(got, "writable") {
		t.Fatalf("logs = %q, want the payload and read-only", got)
	}
	if b, _ := os.ReadFile(file); string(b) != "data-42" {
		t.Fatalf("host file changed: %q", b)
	}
}
