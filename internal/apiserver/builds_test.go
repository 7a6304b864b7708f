package apiserver

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"berth/api"
	"berth/internal/client"
	"berth/internal/imagecopy"
	"berth/internal/registry"
	"berth/internal/runtime"
	"berth/internal/runtime/fake"
	"berth/internal/store"
	"berth/internal/tasklog"
)

type buildEnv struct {
	url  string
	st   *store.Store
	dir  string // BuildDir
	reg  *registry.Registry
	cl   *client.Client
	logs *tasklog.Store
}

// newBuildServer serves the API with berth's registry and a build
// context limit of max bytes.
func newBuildServer(t *testing.T, max int64) buildEnv {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(context.Background(), t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	logs, err := tasklog.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Store: st, Token: "secret", Log: log, TaskLogs: logs, BuildDir: t.TempDir(), BuildContextMax: max}
	reg, err := registry.New(registry.Config{Dir: t.TempDir(), Authorize: srv.TokenRole, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	srv.Images = reg
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return buildEnv{hs.URL, st, srv.BuildDir, reg, client.New(hs.URL, "secret"), logs}
}

// contextTar is a build context of the given files.
func contextTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write([]byte(body))
	}
	_ = tw.Close()
	return buf.Bytes()
}

// post sends a build's context; chunked leaves the length out.
func (e buildEnv) post(t *testing.T, query string, body []byte, chunked bool) (int, []byte) {
	t.Helper()
	var rd io.Reader = bytes.NewReader(body)
	if chunked {
		rd = io.MultiReader(rd) // not a type NewRequest knows the length of
	}
	req, _ := http.NewRequest("POST", e.url+"/v1/builds?"+query, rd)
	req.Header.Set("Authorization", "Bearer secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (e buildEnv) files(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}

const sha1 = "0123456789abcdef0123456789abcdef01234567"

// Bad input to POST /v1/builds is refused naming what is wrong, and
// leaves nothing behind: no task, no context file.
func TestSubmitBuildBadInputStoresNothing(t *testing.T) {
	e := newBuildServer(t, 64<<10)
	good := contextTar(t, map[string]string{"Dockerfile": "FROM scratch\n"})
	for _, c := range []struct {
		what, query string
		body        []byte
		chunked     bool
		code        int
		msg         string
	}{
		{"app not a DNS label", "app=Bad_Name", good, false, 400, `app: "Bad_Name" is not a DNS label`},
		{"no app", "", good, false, 400, "app: required"},
		{"commit not an id", "app=web&commit=abc", good, false, 400, `commit: "abc" is not a full git commit id`},
		{"dirty without a commit", "app=web&dirty=true", good, false, 400, "dirty: a dirty build needs the commit"},
		{"bad tag", "app=web&tag=-x", good, false, 400, `tag: "-x" is not an image tag`},
		{"memory too small", "app=web&memory=1Mi", good, false, 400, "memory:"},
		{"deploy to no app", "app=web&deploy=true", good, false, 404, "no app named web"},
		{"no Dockerfile", "app=web", contextTar(t, map[string]string{"main.go": "package main"}), false, 400, "no Dockerfile at the root"},
		{"not a tar", "app=web", bytes.Repeat([]byte("not a tar "), 100), false, 400, "not a tar archive"},
		{"empty", "app=web", nil, false, 400, "the body is empty"},
		{"over the limit, length given", "app=web", bytes.Repeat([]byte{0}, 100<<10), false, 413, "is more than the limit of 64 KiB"},
		{"over the limit, chunked", "app=web", bytes.Repeat([]byte{0}, 100<<10), true, 413, "more than the limit of 64 KiB"},
	} {
		code, body := e.post(t, c.query, c.body, c.chunked)
		var ae api.Error
		_ = json.Unmarshal(body, &ae)
		if code != c.code || !strings.Contains(ae.Error, c.msg) {
			t.Errorf("%s: %d %s; want %d saying %q", c.what, code, body, c.code, c.msg)
		}
	}
	if n := count(t, e.st, store.Tasks); n != 0 {
		t.Errorf("%d tasks stored", n)
	}
	if f := e.files(t); len(f) != 0 {
		t.Errorf("files left in the build dir: %v", f)
	}
	// A build cannot be slipped in as a task.
	code, ae := call(t, "POST", e.url+"/v1/tasks", "secret", "application/json", `{"image":"x:1","build":{"app":"web","tag":"t","revision":"r"}}`)
	want(t, "a task with a build", code, ae, 400, "build: builds are submitted with POST /v1/builds")

	// The CLI's client learns of the limit from the 413, not from a broken pipe.
	big := bytes.NewReader(bytes.Repeat([]byte{1}, 8<<20))
	_, err := e.cl.SubmitBuild(context.Background(), client.BuildRequest{App: "web"}, big, big.Size())
	if !client.IsStatus(err, 413) || !strings.Contains(err.Error(), "--build-context-max") {
		t.Errorf("client, 8 MiB over a limit of 64 KiB: %v", err)
	}
}

// A build goes to the builds queue (limit 1 unless set), on builder nodes
// when there are any; its agent fetches the context and uploads the
// image, which the server pushes into its registry and deploys.
func TestBuildSubmitContextImageDeploy(t *testing.T) {
	e := newBuildServer(t, 0)
	ctx := context.Background()
	agent := newToken(t, e.url, api.RoleAgent).Secret
	other := newToken(t, e.url, api.RoleAgent).Secret
	node := `{"name":"n1","address":"127.0.0.1","capacity":{"cpu":"2","memory":"4Gi"},"labels":{"builder":"true"}}`
	if code, ae := call(t, "PUT", e.url+"/v1/nodes/n1", agent, "application/json", node); code != 200 {
		t.Fatalf("register n1: %d %+v", code, ae)
	}
	if code, ae := call(t, "PUT", e.url+"/v1/nodes/n2", other, "application/json", nodeBody("n2")); code != 200 {
		t.Fatalf("register n2: %d %+v", code, ae)
	}
	if code, ae := call(t, "PUT", e.url+"/v1/apps/web", "secret", "application/yaml", "image: berth/demo:1\nport: 8080\nresources: {cpu: 100m, memory: 32Mi}\n"); code != 201 {
		t.Fatalf("deploy web: %d %+v", code, ae)
	}

	tarball := contextTar(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "hello"})
	code, body := e.post(t, "app=web&commit="+sha1+"&deploy=true&memory=1Gi", tarball, false)
	var b api.Build
	if code != 201 || json.Unmarshal(body, &b) != nil {
		t.Fatalf("submit: %d %s", code, body)
	}
	if b.Image != "web:"+sha1 || b.Revision != sha1 || b.State != api.TaskQueued || b.ContextSize != int64(len(tarball)) {
		t.Fatalf("build %+v", b)
	}
	task, err := store.Tasks.Get(ctx, e.st, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if task.Spec.Queue != api.BuildQueue || task.Spec.Resources.Memory != 1<<30 || !task.Spec.Build.Builders ||
		task.Spec.Build.Placement().Constraints[0] != "builder == true" {
		t.Fatalf("task spec %+v, build %+v", task.Spec, task.Spec.Build)
	}
	q, err := store.Queues.Get(ctx, e.st, api.BuildQueue)
	if err != nil || q.Concurrency != 1 {
		t.Fatalf("queue builds: %+v %v", q, err)
	}
	l, err := e.cl.ListBuilds(ctx, "web", 0)
	if err != nil || len(l.Items) != 1 || l.Items[0].ID != b.ID {
		t.Fatalf("list builds of web: %+v %v", l.Items, err)
	}
	if l, _ := e.cl.ListBuilds(ctx, "other", 0); len(l.Items) != 0 {
		t.Fatalf("builds of app other: %+v", l.Items)
	}

	// Not running yet: no agent may fetch it.
	code, ae := call(t, "GET", e.url+"/v1/builds/"+b.ID+"/context?attempt=1", agent, "", "")
	want(t, "context before the attempt", code, ae, 403, "attempt 1 of task")
	assign(t, e.st, b.ID, "n1")
	code, ae = call(t, "GET", e.url+"/v1/builds/"+b.ID+"/context?attempt=1", other, "", "")
	want(t, "context by another node's agent", code, ae, 403, "token is bound to node n2")
	agentCl := client.New(e.url, agent)
	rc, err := agentCl.BuildContext(ctx, b.ID, 1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, tarball) {
		t.Fatalf("the context came back as %d bytes; sent %d", len(got), len(tarball))
	}

	// The agent builds (here: the fake engine) and uploads the image.
	save := fakeImage(t, tarball)
	code, ae = call(t, "PUT", e.url+"/v1/builds/"+b.ID+"/image?attempt=1", "secret", "application/x-tar", string(save))
	want(t, "a user uploads the image", code, ae, 403, "needs an agent token")
	res, err := agentCl.PutBuildImage(ctx, b.ID, 1, io.NopCloser(bytes.NewReader(save)))
	if err != nil {
		t.Fatal(err)
	}
	digest, err := e.reg.Resolve(ctx, "web", sha1)
	if err != nil || res.Digest != digest || res.AppRevision != 2 || res.DeployError != "" {
		t.Fatalf("upload answered %+v; registry has web:%s at %s (%v)", res, sha1, digest, err)
	}
	// The server added the revision on top: a layer more, and the label.
	var man struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	var cfg struct {
		Config struct{ Labels map[string]string }
	}
	json.Unmarshal(regGet(t, e.reg, "/v2/web/manifests/"+sha1), &man)
	json.Unmarshal(regGet(t, e.reg, "/v2/web/blobs/"+man.Config.Digest), &cfg)
	if got := cfg.Config.Labels[api.RevisionLabel]; got != sha1 || len(man.Layers) < 2 {
		t.Fatalf("pushed image: label %q, %d layers; want the revision %s and its layer on top", got, len(man.Layers), sha1)
	}
	app, err := store.Apps.Get(ctx, e.st, "web")
	if err != nil || app.Spec.Image != "web:"+sha1 || app.ImageDigest != digest || app.Revision != 2 || app.TemplateRevision != 2 || app.Spec.Port != 8080 {
		t.Fatalf("app after the build's deploy: %+v %v", app, err)
	}
	if b, err = e.cl.GetBuild(ctx, b.ID); err != nil || b.Digest != digest || b.AppRevision != 2 || b.State != api.TaskRunning {
		t.Fatalf("build after the upload: %+v %v", b, err)
	}

	// The log is the task's; the context goes once the build has ended.
	if err := agentCl.PutTaskLog(ctx, b.ID, 1, 0, []byte("Step 1/2 : FROM scratch\n"), true); err != nil {
		t.Fatal(err)
	}
	rc, err = e.cl.BuildLogs(ctx, b.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	logText, _ := io.ReadAll(rc)
	rc.Close()
	if string(logText) != "Step 1/2 : FROM scratch\n" {
		t.Fatalf("build log %q", logText)
	}
	if _, err := agentCl.ReportTasks(ctx, []api.TaskReport{{ID: b.ID, Attempt: 1, State: api.TaskSucceeded, LogBytes: int64(len(logText))}}); err != nil {
		t.Fatal(err)
	}
	code, body = e.post(t, "app=web", tarball, false)
	if code != 201 {
		t.Fatalf("second build: %d %s", code, body)
	}
	var second api.Build
	_ = json.Unmarshal(body, &second)
	if f := e.files(t); len(f) != 1 || f[0] != second.ID+".tar" || !strings.HasPrefix(second.Image, "web:ctx-") || len(second.Image) != len("web:ctx-")+12 {
		t.Fatalf("build dir after the first build ended: %v (second %+v)", f, second)
	}
	code, ae = call(t, "GET", e.url+"/v1/builds/0000000000000000", "secret", "", "")
	want(t, "a build that does not exist", code, ae, 404, "not found")
}

// fakeImage is what the agent uploads for a context: the fake engine's
// build of it, saved.
func fakeImage(t *testing.T, tarball []byte) []byte {
	t.Helper()
	ctx := context.Background()
	rt := fake.New()
	id, err := rt.Build(ctx, bytes.NewReader(tarball), runtime.BuildOptions{}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := rt.SaveImage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return b
}

// regGet fetches a path of berth's registry.
func regGet(t *testing.T, reg http.Handler, path string) []byte {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://registry"+path, nil)
	req.Header.Set("Authorization", "Bearer secret")
	req.Header.Set("Accept", imagecopy.ManifestType)
	resp, err := imagecopy.HandlerClient(reg).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}
