package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"berth/api"
	"berth/internal/apiserver"
	"berth/internal/client"
	"berth/internal/controller"
	"berth/internal/registry"
	"berth/internal/runtime/fake"
	"berth/internal/store"
	"berth/internal/tasklog"
)

// newBuildCluster is newCluster with berth's registry behind the API, so
// that builds can push.
func newBuildCluster(t *testing.T) (*cluster, *registry.Registry) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(ctx, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	id, err := st.ClusterID(ctx, func() string { return "c0ffee" })
	if err != nil {
		t.Fatal(err)
	}
	logs, err := tasklog.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := &apiserver.Server{Store: st, Token: "t", Cluster: id, Log: log, TaskLogs: logs, BuildDir: t.TempDir()}
	reg, err := registry.New(registry.Config{Dir: t.TempDir(), Authorize: srv.TokenRole, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	srv.Images = reg
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	tasks := &controller.Tasks{Store: st, Log: log, Cluster: id, Logs: logs}
	ctl := &controller.Controller{Store: st, Log: log, Tasks: tasks}
	go ctl.Run(ctx)
	go tasks.Run(ctx)
	agentToken, err := apiserver.EnsureAgentToken(ctx, st, filepath.Join(t.TempDir(), "agent-token"), "n1")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, rt: fake.New(), client: client.New(hs.URL, "t"), agentCl: client.New(hs.URL, agentToken),
		ctx: ctx, payloadDir: t.TempDir(), st: st}
	c.startAgent()
	return c, reg
}

func tarOf(t *testing.T, files map[string]string) *bytes.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		_, _ = tw.Write([]byte(body))
	}
	_ = tw.Close()
	return bytes.NewReader(buf.Bytes())
}

func (c *cluster) submitBuild(req client.BuildRequest, files map[string]string) api.Build {
	c.t.Helper()
	body := tarOf(c.t, files)
	b, err := c.client.SubmitBuild(c.ctx, req, body, body.Size())
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

// registryFile reads a file of the last layer of repo:tag from the
// registry, and the image's labels.
func registryFile(t *testing.T, reg http.Handler, repo, tag, name string) (string, map[string]string) {
	t.Helper()
	get := func(path string, accept string) []byte {
		req := httptest.NewRequest("GET", "/v2/"+repo+path, nil)
		req.Header.Set("Authorization", "Bearer t")
		req.Header.Set("Accept", accept)
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("GET /v2/%s%s: %d %s", repo, path, rec.Code, rec.Body)
		}
		return rec.Body.Bytes()
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(get("/manifests/"+tag, "application/vnd.docker.distribution.manifest.v2+json"), &m); err != nil || len(m.Layers) == 0 {
		t.Fatalf("manifest of %s:%s: %+v %v", repo, tag, m, err)
	}
	var cfg struct {
		Config struct{ Labels map[string]string } `json:"config"`
	}
	_ = json.Unmarshal(get("/blobs/"+m.Config.Digest, "*/*"), &cfg)
	tr := tar.NewReader(bytes.NewReader(get("/blobs/"+m.Layers[len(m.Layers)-1].Digest, "*/*")))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s:%s has no %s in its last layer", repo, tag, name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Name == name {
			b, _ := io.ReadAll(tr)
			return string(b), cfg.Config.Labels
		}
	}
}

// A build runs on the agent's engine: the log streams to the server, the
// image gets the revision as a file and a label, goes into the registry
// and, with deploy, becomes the app's image.
func TestBuildPushesAndDeploys(t *testing.T) {
	c, reg := newBuildCluster(t)
	c.deploy(api.AppSpec{Name: "web", Image: "img:1", Port: 8080})
	sha := strings.Repeat("5e", 20)
	b := c.submitBuild(client.BuildRequest{App: "web", Commit: sha, Deploy: true},
		map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "hello"})
	task := c.waitEnded(b.ID)
	if task.State != api.TaskSucceeded {
		t.Fatalf("build: %s", describeTask(task))
	}
	b, err := c.client.GetBuild(c.ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	digest, err := reg.Resolve(c.ctx, "web", sha)
	if err != nil || b.Digest != digest || b.AppRevision != 2 {
		t.Fatalf("build %+v; registry: %s %v", b, digest, err)
	}
	rev, labels := registryFile(t, reg, "web", sha, "app/REVISION")
	if rev != sha || labels["org.opencontainers.image.revision"] != sha {
		t.Fatalf("REVISION %q, labels %v; want %s in both", rev, labels, sha)
	}
	app, err := c.client.GetApp(c.ctx, "web")
	if err != nil || app.Spec.Image != "web:"+sha || app.ImageDigest != digest || app.Spec.Port != 8080 {
		t.Fatalf("app after the build: %+v %v", app.Spec, err)
	}
	log := c.taskLog(b.ID, 1)
	for _, want := range []string{"berth: building web:" + sha, "Step 1/2 : FROM scratch", "Step 2/2 : COPY a /a",
		"which adds /app/REVISION and the label org.opencontainers.image.revision=" + sha, "berth: pushed web:" + sha + ", digest " + digest, "berth: deployed web:" + sha + " as revision 2"} {
		if !strings.Contains(log, want) {
			t.Errorf("the build log lacks %q:\n%s", want, log)
		}
	}
}

// A build that fails keeps its log, stores no image and deploys nothing.
func TestBuildFailureStoresNothing(t *testing.T) {
	c, reg := newBuildCluster(t)
	c.deploy(api.AppSpec{Name: "web", Image: "img:1"})
	b := c.submitBuild(client.BuildRequest{App: "web", Tag: "broken", Deploy: true},
		map[string]string{"Dockerfile": "FROM scratch\nRUN false\n"})
	task := c.waitEnded(b.ID)
	if task.State != api.TaskFailed || len(task.Attempts) != 1 || !strings.Contains(task.Error, "returned a non-zero code: 1") ||
		strings.Contains(task.Error, "the build failed") {
		t.Fatalf("build: %s", describeTask(task))
	}
	log := c.taskLog(b.ID, 1)
	if !strings.Contains(log, "Step 2/2 : RUN false") || !strings.Contains(log, "berth: build failed: The command '/bin/sh -c false' returned a non-zero code: 1") {
		t.Fatalf("the failed build's log:\n%s", log)
	}
	if _, err := reg.Resolve(c.ctx, "web", "broken"); !errors.Is(err, api.ErrNoRepository) {
		t.Fatalf("the registry has something of web: %v", err)
	}
	if app, _ := c.client.GetApp(c.ctx, "web"); app.Revision != 1 || app.Spec.Image != "img:1" {
		t.Fatalf("the failed build changed the app: %+v", app)
	}
}

// A build is stopped on its timeout, and on a cancel.
func TestBuildTimeoutAndCancel(t *testing.T) {
	c, _ := newBuildCluster(t)
	slow := map[string]string{"Dockerfile": "FROM scratch\nRUN wait\n"}
	b := c.submitBuild(client.BuildRequest{App: "web", Tag: "slow", Timeout: time.Second}, slow)
	task := c.waitEnded(b.ID)
	if task.State != api.TaskTimedOut || task.Error != "timed out after 1s" || !strings.Contains(c.taskLog(b.ID, 1), "berth: build failed: timed out after 1s") {
		t.Fatalf("build with a timeout: %s\n%s", describeTask(task), c.taskLog(b.ID, 1))
	}
	b = c.submitBuild(client.BuildRequest{App: "web", Tag: "slow"}, slow)
	c.waitTask(b.ID, "build running", func(t api.Task) bool { return t.Current() != nil && t.Current().State == api.TaskRunning })
	if _, err := c.client.CancelTask(c.ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	task = c.waitEnded(b.ID)
	if task.State != api.TaskCancelled || !strings.Contains(c.taskLog(b.ID, 1), "berth: build cancelled") {
		t.Fatalf("cancelled build: %s\n%s", describeTask(task), c.taskLog(b.ID, 1))
	}
}

// The build log keeps room for how the build ended, however much it
// printed.
func TestBuildLogKeepsTheEnd(t *testing.T) {
	var l buildLog
	line := strings.Repeat("x", 1023) + "\n"
	for range 2 * api.MaxTaskLog / len(line) {
		_, _ = l.Write([]byte(line))
	}
	l.final("berth: build failed: the end\n")
	data, cut := l.all()
	if !cut || len(data) > api.MaxTaskLog || !bytes.HasSuffix(data, []byte(cutNote+"berth: build failed: the end\n")) {
		t.Fatalf("cut %v, %d bytes, ending %q", cut, len(data), data[max(0, len(data)-80):])
	}
}
