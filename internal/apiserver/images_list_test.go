package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"berth/api"
	"berth/internal/store"
)

// fakeRegistry lists repository hello with tags 1 and 2, and also has
// the manifest d0 that no tag names.
type fakeRegistry struct{ fakeImages }

func (fakeRegistry) ListImages(_ context.Context, repo string, each func(repo, tag, digest string, size int64)) error {
	if repo != "" && repo != "hello" {
		return fmt.Errorf("%s: %w", repo, api.ErrNoRepository)
	}
	each("hello", "1", "sha256:d1", 100)
	each("hello", "2", "sha256:d2", 200)
	return nil
}

func (fakeRegistry) ImageSize(_ context.Context, repo, digest string) (int64, bool, error) {
	if repo == "hello" && digest == "sha256:d0" {
		return 50, true, nil
	}
	return 0, false, nil
}

// GET /v1/images: a row per tag with the app revisions and instances
// that run its digest, an untagged digest still in use, the repo filter.
func TestListImages(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(context.Background(), t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	hs := httptest.NewServer((&Server{Store: st, Token: "secret", Log: log, Images: fakeRegistry{}}).Handler())
	t.Cleanup(hs.Close)
	app := func(name, image, digest string, rev int64) store.Op {
		return store.Apps.Create(name, api.App{Spec: api.AppSpec{Name: name, Image: image}, ImageDigest: digest, TemplateRevision: rev})
	}
	inst := func(name, app, image, digest string) store.Op {
		return store.Instances.Create(name, api.Instance{Name: name, App: app, Node: "n1", Spec: api.AppSpec{Name: app, Image: image}, ImageDigest: digest})
	}
	if _, err := st.Txn(t.Context(),
		app("web", "hello:2", "sha256:d2", 3), app("old", "hello:1", "sha256:d0", 1), app("local", "berth/demo:1", "", 1),
		inst("web-1", "web", "hello:2", "sha256:d2"), inst("web-2", "web", "hello:1", "sha256:d1"),
		inst("old-1", "old", "hello:1", "sha256:d0"), inst("local-1", "local", "berth/demo:1", ""),
	); err != nil {
		t.Fatal(err)
	}
	list := func(query string) (int, []imageEntry) {
		req, _ := http.NewRequest("GET", hs.URL+"/v1/images"+query, nil)
		req.Header.Set("Authorization", "Bearer secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var l struct{ Items []imageEntry }
		json.NewDecoder(resp.Body).Decode(&l)
		return resp.StatusCode, l.Items
	}
	code, rows := list("")
	got, _ := json.Marshal(rows)
	want := `[{"repository":"hello","tag":"1","digest":"sha256:d1","size":100,"revisions":[],"instances":[{"name":"web-2","app":"web","node":"n1"}]},` +
		`{"repository":"hello","tag":"2","digest":"sha256:d2","size":200,"revisions":[{"app":"web","revision":3}],"instances":[{"name":"web-1","app":"web","node":"n1"}]},` +
		`{"repository":"hello","digest":"sha256:d0","size":50,"revisions":[{"app":"old","revision":1}],"instances":[{"name":"old-1","app":"old","node":"n1"}]}]`
	if code != http.StatusOK || string(got) != want {
		t.Fatalf("GET /v1/images: %d\n got %s\nwant %s", code, got, want)
	}
	if code, rows := list("?repo=hello"); code != http.StatusOK || len(rows) != 3 {
		t.Fatalf("?repo=hello: %d, %d rows", code, len(rows))
	}
	if code, _ := list("?repo=nosuch"); code != http.StatusNotFound {
		t.Fatalf("?repo=nosuch: %d, want 404", code)
	}
	if code, _ := list("?repo=hello:1"); code != http.StatusBadRequest {
		t.Fatalf("?repo=hello:1: %d, want 400", code)
	}
}
