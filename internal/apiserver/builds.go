package apiserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"berth/api"
	"berth/internal/build"
	"berth/internal/imagecopy"
	"berth/internal/store"
	"berth/internal/tasks"
)

// Builds are tasks (api/build.go). A build's context waits on the disk of
// the server that took it, <BuildDir>/<id>.tar, until its build has ended;
// the agent that runs it fetches it there and uploads the image it built,
// which the server pushes into its own registry in process.

// maxImageUpload bounds the `docker save` of a built image an agent uploads.
const maxImageUpload = 64 << 30

// buildBodyLimit is the body a builds route may take (bodyLimit): the
// context (checked against BuildContextMax by the handler) or the image.
func buildBodyLimit(r *http.Request) (int64, bool) {
	if !strings.HasPrefix(r.URL.Path, "/v1/builds") || (r.Method != http.MethodPost && r.Method != http.MethodPut) {
		return 0, false
	}
	return maxImageUpload, true
}

func (s *Server) buildDir() string {
	if s.BuildDir != "" {
		return s.BuildDir
	}
	return filepath.Join(os.TempDir(), "berth-builds-"+s.Cluster)
}

func (s *Server) buildContextMax() int64 {
	if s.BuildContextMax > 0 {
		return s.BuildContextMax
	}
	return api.DefaultBuildContextMax
}

// registry is where built images go: Registry, or Images when it serves
// the registry API too (berth's own registry does).
func (s *Server) registry() http.Handler {
	if s.Registry != nil {
		return s.Registry
	}
	h, _ := s.Images.(http.Handler)
	return h
}

func (s *Server) contextPath(id string) string { return filepath.Join(s.buildDir(), id+".tar") }

// buildRequest is a POST /v1/builds query, checked.
type buildRequest struct {
	spec     api.BuildSpec
	tag      string // given by the caller; "" to name it from the commit or the content
	memory   api.Bytes
	cpu      api.MilliCPU
	timeout  *api.Duration
	priority *int
}

func parseBuildQuery(q map[string][]string) (buildRequest, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	b := buildRequest{spec: api.BuildSpec{App: get("app"), Commit: get("commit"), Dirty: get("dirty") == "true", Deploy: get("deploy") == "true"}, tag: get("tag")}
	b.memory, b.cpu = api.DefaultBuildMemory, api.DefaultBuildCPU
	if v := get("memory"); v != "" {
		m, err := api.ParseBytes(v)
		if err != nil || m < 64<<20 {
			return b, &api.FieldError{Field: "memory", Message: fmt.Sprintf("memory: %q is not a size of at least 64Mi", v)}
		}
		b.memory = m
	}
	if v := get("cpu"); v != "" {
		c, err := api.ParseMilliCPU(v)
		if err != nil || c < 100 {
			return b, &api.FieldError{Field: "cpu", Message: fmt.Sprintf("cpu: %q is not a CPU amount of at least 100m", v)}
		}
		b.cpu = c
	}
	if v := get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return b, &api.FieldError{Field: "timeout", Message: fmt.Sprintf("timeout: %q is not a positive duration", v)}
		}
		b.timeout = ptrTo(api.Duration(d))
	}
	if v := get("priority"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil {
			return b, &api.FieldError{Field: "priority", Message: fmt.Sprintf("priority: %q is not a number", v)}
		}
		b.priority = &p
	}
	// Check all but the tag, which may come from the context's hash.
	probe := b.spec
	probe.Tag, probe.Revision = "t", "r"
	if b.tag != "" {
		probe.Tag = b.tag
	}
	return b, probe.Validate()
}

func ptrTo[T any](v T) *T { return &v }

// POST /v1/builds?app=&commit=&dirty=&tag=&deploy=&memory=&cpu=&timeout=:
// the body is the context, a tar with a Dockerfile at its root. Nothing is
// stored unless all of it is valid.
func (s *Server) submitBuild(w http.ResponseWriter, r *http.Request) {
	req, err := parseBuildQuery(r.URL.Query())
	if err != nil {
		writeFieldError(w, err)
		return
	}
	if s.registry() == nil {
		writeError(w, http.StatusServiceUnavailable, "", "this server has no image registry to push builds into")
		return
	}
	ctx := r.Context()
	if req.spec.Deploy && !s.deployableApp(w, r, req.spec.App) {
		return
	}
	limit := s.buildContextMax()
	if r.ContentLength > limit {
		writeError(w, http.StatusRequestEntityTooLarge, "context", "context: %s is more than the limit of %s (the server's --build-context-max); leave files out with .dockerignore",
			build.Size(r.ContentLength), build.Size(limit))
		return
	}
	now := time.Now().UTC()
	id := api.NewTaskID(now)
	size, hash, ok := s.receiveContext(w, r, id, limit)
	if !ok {
		return
	}
	spec, err := s.buildTaskSpec(r, req, size, hash)
	if err == nil {
		err = s.ensureBuildQueue(ctx)
	}
	if err != nil {
		os.Remove(s.contextPath(id))
		var fe *api.FieldError
		if errors.As(err, &fe) {
			writeFieldError(w, err)
			return
		}
		s.writeStoreError(w, err)
		return
	}
	t := tasks.New(id, spec, now)
	rev, err := s.Store.Txn(ctx, store.Tasks.Create(id, t))
	if err != nil {
		os.Remove(s.contextPath(id))
		s.writeStoreError(w, err)
		return
	}
	t.Version = rev
	s.Log.Info("build queued", "build", id, "image", spec.Image, "context_bytes", size, "deploy", req.spec.Deploy)
	s.sweepContexts(ctx, id)
	b, _ := api.BuildOf(t)
	writeJSON(w, http.StatusCreated, b)
}

// deployableApp checks that a build that deploys has an app to deploy to.
func (s *Server) deployableApp(w http.ResponseWriter, r *http.Request, name string) bool {
	app, err := store.Apps.Get(r.Context(), s.Store, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "app", "app: no app named %s: deploy changes the image of an app that exists (deploy it first with berth deploy -f app.yaml, or build without deploy)", name)
	case err != nil:
		s.writeStoreError(w, err)
	case app.Deleting:
		writeError(w, http.StatusConflict, "app", "app: %s is being removed", name)
	default:
		return true
	}
	return false
}

// receiveContext writes the body to the build's context file, at most
// max bytes, and checks that it is a tar with a Dockerfile. It returns the
// size and SHA-256; on any failure it has answered and removed the file.
func (s *Server) receiveContext(w http.ResponseWriter, r *http.Request, id string, max int64) (int64, string, bool) {
	dir := s.buildDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		writeError(w, http.StatusInternalServerError, "", "build contexts: %v", err)
		return 0, "", false
	}
	final := s.contextPath(id)
	part := final + ".part"
	f, err := os.OpenFile(part, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "", "build context: %v", err)
		return 0, "", false
	}
	// One pass: stored, hashed and read as a tar for its Dockerfile.
	h := sha256.New()
	body := &countReader{r: io.TeeReader(io.LimitReader(r.Body, max+1), io.MultiWriter(f, h))}
	found, terr := build.HasDockerfile(body)
	_, err = io.Copy(io.Discard, body) // past the tar's end, so that n says what was sent
	n := body.n
	if body.err != nil {
		err = body.err // the upload's, not the tar's
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	fail := func(code int, field, format string, args ...any) (int64, string, bool) {
		os.Remove(part)
		writeError(w, code, field, format, args...)
		return 0, "", false
	}
	switch {
	case err != nil:
		return fail(http.StatusBadRequest, "context", "context: read the upload: %v", err)
	case n > max:
		return fail(http.StatusRequestEntityTooLarge, "context", "context: more than the limit of %s (the server's --build-context-max); leave files out with .dockerignore", build.Size(max))
	case n == 0:
		return fail(http.StatusBadRequest, "context", "context: the body is empty; send the build context as a tar")
	}
	switch {
	case terr != nil:
		return fail(http.StatusBadRequest, "context", "context: %v", terr)
	case !found:
		return fail(http.StatusBadRequest, "context", "context: %v", build.ErrNoDockerfile)
	}
	if err := os.Rename(part, final); err != nil {
		return fail(http.StatusInternalServerError, "", "build context: %v", err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), true
}

// buildTaskSpec is the task of a build: queue builds, the build's limits,
// on builder nodes when there are any.
func (s *Server) buildTaskSpec(r *http.Request, req buildRequest, size int64, hash string) (api.TaskSpec, error) {
	b := req.spec
	b.Tag, b.Revision = build.Naming(b.Commit, b.Dirty, hash)
	if req.tag != "" {
		b.Tag = req.tag
	}
	b.ContextSize = size
	if err := b.Validate(); err != nil {
		return api.TaskSpec{}, err
	}
	nodes, _, err := store.Nodes.List(r.Context(), s.Store)
	if err != nil {
		return api.TaskSpec{}, err
	}
	var maxMem api.Bytes
	for _, n := range nodes {
		maxMem = max(maxMem, n.Capacity.Memory)
		b.Builders = b.Builders || n.Labels[api.BuilderLabel] == "true"
	}
	spec := api.TaskSpec{
		Image: b.App + ":" + b.Tag, Queue: api.BuildQueue, Priority: req.priority, Timeout: req.timeout,
		Resources: api.Resources{CPU: req.cpu, Memory: req.memory},
	}
	spec.Default()
	if err := spec.Validate("", maxMem); err != nil {
		var fe *api.FieldError
		if errors.As(err, &fe) { // name the query's field, not the task's
			fe.Field = strings.TrimPrefix(fe.Field, "resources.")
		}
		return api.TaskSpec{}, err
	}
	spec.Build = &b
	return spec, nil
}

// ensureBuildQueue gives the builds queue its default limit the first
// time: 'berth queue set builds' changes it.
func (s *Server) ensureBuildQueue(ctx context.Context) error {
	_, err := s.Store.Txn(ctx, store.Queues.Create(api.BuildQueue, api.Queue{Name: api.BuildQueue, Concurrency: api.BuildConcurrency}))
	if errors.Is(err, store.ErrExists) {
		return nil
	}
	return err
}

// sweepContexts removes the contexts of builds that have ended (or are
// gone), keeping keep's.
func (s *Server) sweepContexts(ctx context.Context, keep string) {
	entries, err := os.ReadDir(s.buildDir())
	if err != nil {
		return
	}
	var ids []string
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".tar")
		if ok && id != keep && api.ValidTaskID(id) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return
	}
	live, err := store.Tasks.GetMany(ctx, s.Store, ids)
	if err != nil {
		return
	}
	for _, id := range ids {
		if t, ok := live[id]; !ok || api.TaskTerminal(t.State) {
			if err := os.Remove(s.contextPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				s.Log.Warn("remove build context", "build", id, "err", err)
			}
		}
	}
}

// getBuildOr404 reads a build's task; a task that is not a build is 404.
func (s *Server) getBuildOr404(w http.ResponseWriter, r *http.Request) (api.Task, bool) {
	t, ok := s.getTaskOr404(w, r)
	if ok && t.Spec.Build == nil {
		writeError(w, http.StatusNotFound, "", "build %s not found (task %s is not a build)", t.ID, t.ID)
		return t, false
	}
	return t, ok
}

// GET /v1/builds?app=&limit=N: newest first.
func (s *Server) listBuilds(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	app := q.Get("app")
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n == 0 || n < -1 {
			writeError(w, http.StatusBadRequest, "limit", "limit: %q is not a positive number or -1 (all)", v)
			return
		}
		limit = n
	}
	all, rev, err := store.Tasks.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	items := []api.Build{}
	for i := len(all) - 1; i >= 0 && (limit < 0 || len(items) < limit); i-- {
		if b, ok := api.BuildOf(all[i]); ok && (app == "" || b.App == app) {
			items = append(items, b)
		}
	}
	writeJSON(w, http.StatusOK, api.List[api.Build]{Items: items, Revision: rev})
}

func (s *Server) getBuild(w http.ResponseWriter, r *http.Request) {
	if t, ok := s.getBuildOr404(w, r); ok {
		b, _ := api.BuildOf(t)
		writeJSON(w, http.StatusOK, b)
	}
}

// GET /v1/builds/{id}/logs?follow=true: the build log, as a task's.
func (s *Server) buildLogs(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.getBuildOr404(w, r); ok {
		s.taskLogs(w, r)
	}
}

// currentAttempt checks that the request is about the build's current
// attempt (?attempt=N) and, for an agent, that it runs on its node.
func (s *Server) currentAttempt(w http.ResponseWriter, r *http.Request, t *api.Task) bool {
	n, err := strconv.Atoi(r.URL.Query().Get("attempt"))
	if err != nil || n < 1 {
		writeError(w, http.StatusBadRequest, "attempt", "attempt: %q is not an attempt number", r.URL.Query().Get("attempt"))
		return false
	}
	if !s.ownTask(w, r, t, n) {
		return false
	}
	if cur := t.Current(); t.State != api.TaskRunning || cur == nil || cur.N != n {
		writeError(w, http.StatusConflict, "attempt", "attempt %d of build %s is not running (the build is %s)", n, t.ID, t.State)
		return false
	}
	return true
}

// GET /v1/builds/{id}/context?attempt=N: the context, for the agent that
// runs attempt N.
func (s *Server) buildContext(w http.ResponseWriter, r *http.Request) {
	t, ok := s.getBuildOr404(w, r)
	if !ok || !s.currentAttempt(w, r, &t) {
		return
	}
	f, err := os.Open(s.contextPath(t.ID))
	if errors.Is(err, os.ErrNotExist) {
		writeError(w, http.StatusNotFound, "", "the context of build %s is not on this server (a server keeps the contexts it took until their builds end)", t.ID)
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "", "build context: %v", err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "", "build context: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, f)
}

// PUT /v1/builds/{id}/image?attempt=N: the agent that ran attempt N sends
// the image it built (`docker save`); the server pushes it into its
// registry as <app>:<tag> with its own token, the revision added on top
// (build.RevisionAddition), records the digest and, for
// a build that deploys, deploys the app with it.
func (s *Server) putBuildImage(w http.ResponseWriter, r *http.Request) {
	t, ok := s.getBuildOr404(w, r)
	if !ok || !s.currentAttempt(w, r, &t) {
		return
	}
	reg := s.registry()
	if reg == nil {
		writeError(w, http.StatusServiceUnavailable, "", "this server has no image registry to push builds into")
		return
	}
	b := t.Spec.Build
	n := t.Current().N
	target := imagecopy.Target{Base: "http://berth-registry", Token: s.Token, Client: imagecopy.HandlerClient(reg)}
	res, err := imagecopy.PushWith(r.Context(), r.Body, target, b.App, b.Tag, imagecopy.Options{Add: build.RevisionAddition(b.Revision)})
	if err != nil {
		s.Log.Warn("push built image", "build", t.ID, "image", t.Spec.Image, "err", err)
		writeError(w, http.StatusBadRequest, "", "push %s into berth's registry: %v", t.Spec.Image, err)
		return
	}
	out := api.BuildImageResult{BuildResult: api.BuildResult{Image: t.Spec.Image, Digest: res.Digest, Size: res.Size},
		Layers: res.Layers, Uploaded: res.Uploaded}
	if b.Deploy {
		rev, err := s.deployBuilt(r.Context(), t.ID, b, res.Digest)
		if err != nil {
			out.DeployError = err.Error()
		}
		out.AppRevision = rev
	}
	_, err = store.Tasks.Update(r.Context(), s.Store, t.ID, func(cur *api.Task) error {
		if a := cur.Current(); cur.State != api.TaskRunning || a == nil || a.N != n {
			return store.ErrSkip // ended or moved on meanwhile; the image is in the registry all the same
		}
		built := out.BuildResult
		cur.Built = &built
		return nil
	})
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	s.Log.Info("build pushed", "build", t.ID, "image", t.Spec.Image, "digest", res.Digest, "bytes", res.Size,
		"uploaded", res.Uploaded, "app_revision", out.AppRevision, "deploy_error", out.DeployError)
	s.sweepContexts(r.Context(), t.ID)
	writeJSON(w, http.StatusOK, out)
}

// deployBuilt deploys a build's app with its image: the image changes,
// the rest of the spec stays. It returns the app's revision (unchanged
// when the app runs that image already).
func (s *Server) deployBuilt(ctx context.Context, id string, b *api.BuildSpec, digest string) (int64, error) {
	image := b.App + ":" + b.Tag
	for {
		old, err := store.Apps.Get(ctx, s.Store, b.App)
		if errors.Is(err, store.ErrNotFound) {
			return 0, fmt.Errorf("no app named %s to deploy (it was removed while %s built)", b.App, image)
		}
		if err != nil {
			return 0, err
		}
		if old.Deleting {
			return 0, fmt.Errorf("app %s is being removed", b.App)
		}
		if old.Spec.Image == image && old.ImageDigest == digest {
			return old.Revision, nil
		}
		app := old
		app.Spec.Image, app.ImageDigest = image, digest
		app.Revision++
		app.TemplateRevision = app.Revision
		app.Updated = time.Now().UTC()
		ev, err := s.Store.AppendEvent(ctx, api.Event{Kind: "deployed", App: b.App,
			Message: fmt.Sprintf("revision %d: %s (build %s), rolling update", app.Revision, image, id)})
		if err != nil {
			return 0, err
		}
		rec := revisionOf(app, api.ChangeSummary(old.Spec, app.Spec, old.ImageDigest, digest)+" (build "+id+")", "build "+id, 0)
		_, err = s.Store.Txn(ctx, store.Apps.Put(b.App, app, old.Version), ev, createRevision(rec))
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			return 0, err
		}
		return app.Revision, nil
	}
}

// countReader counts the bytes read through it, and keeps the first read
// error other than the end.
type countReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}
