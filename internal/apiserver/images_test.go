package apiserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"berth/api"
	"berth/internal/store"
)

// fakeImages is a registry holding repository "hello" with tags.
type fakeImages map[string]string // tag -> digest

func (f fakeImages) Resolve(_ context.Context, repo, tag string) (string, error) {
	if repo != "hello" {
		return "", fmt.Errorf("%s: %w", repo, api.ErrNoRepository)
	}
	if d, ok := f[tag]; ok {
		return d, nil
	}
	return "", fmt.Errorf("%s:%s: %w", repo, tag, api.ErrNoTag)
}

// An image of berth's registry is pinned at deploy time; the same tag
// pushed again is a new template (a rolling update); a tag the registry
// lacks is refused naming the image; other images run as written.
func TestPutAppPinsRegistryImages(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(context.Background(), t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	images := fakeImages{"v1": "sha256:aaa"}
	hs := httptest.NewServer((&Server{Store: st, Token: "secret", Log: log, Images: images}).Handler())
	t.Cleanup(hs.Close)
	get := func(name string) api.App {
		t.Helper()
		a, err := store.Apps.Get(t.Context(), st, name)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	put := func(name, image string) (int, api.Error) {
		return call(t, "PUT", hs.URL+"/v1/apps/"+name, "secret", "application/yaml", "name: "+name+"\nimage: "+image+"\n")
	}

	if code, e := put("web", "hello:v1"); code != http.StatusCreated {
		t.Fatalf("deploy hello:v1: %d %+v", code, e)
	}
	if a := get("web"); a.ImageDigest != "sha256:aaa" || a.TemplateRevision != 1 {
		t.Fatalf("after hello:v1: digest %q, template %d", a.ImageDigest, a.TemplateRevision)
	}
	if code, _ := put("web", "hello:v1"); code != http.StatusOK || get("web").Revision != 1 {
		t.Fatalf("the same tag at the same digest made a new revision")
	}
	images["v1"] = "sha256:bbb" // pushed again
	if code, _ := put("web", "hello:v1"); code != http.StatusOK {
		t.Fatal("deploy after a push")
	}
	if a := get("web"); a.ImageDigest != "sha256:bbb" || a.TemplateRevision != 2 {
		t.Fatalf("after hello:v1 pushed again: digest %q, template %d; want sha256:bbb at a new template", a.ImageDigest, a.TemplateRevision)
	}
	if code, e := put("web", "hello:nosuch"); code != http.StatusBadRequest || e.Field != "image" {
		t.Fatalf("a missing tag: %d %+v; want 400 naming image", code, e)
	}
	if a := get("web"); a.Spec.Image != "hello:v1" || a.Revision != 2 {
		t.Fatalf("a refused deploy changed the app: %+v", a)
	}
	for _, local := range []string{"berth/demo:1", "example.org/hello:v1", "hello@sha256:" + sha64hex} {
		if code, e := put("other", local); code != http.StatusOK && code != http.StatusCreated {
			t.Fatalf("deploy %s: %d %+v", local, code, e)
		}
		if a := get("other"); a.ImageDigest != "" {
			t.Errorf("%s pinned to %q; want it run as written", local, a.ImageDigest)
		}
	}
}

const sha64hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
