package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"berth/api"
)

// ListImages lists every tag with its digest and size (manifest, config,
// layer), across pages of the catalog and the tags list.
func TestListImages(t *testing.T) {
	reg, err := New(Config{Dir: t.TempDir(), Authorize: tokens})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	mux := http.NewServeMux()
	mux.Handle("/v2/", reg)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	auth := "bearer:" + userToken
	if err := reg.ListImages(context.Background(), "", func(repo, tag, _ string, _ int64) { t.Errorf("empty registry lists %s:%s", repo, tag) }); err != nil {
		t.Fatalf("an empty registry: %v", err)
	}
	want := map[string]string{}
	for _, rt := range [][2]string{{"team/hello", "1"}, {"team/hello", "2"}, {"web", "latest"}} {
		_, d := pushImage(t, srv.URL, rt[0], rt[1], auth)
		want[rt[0]+":"+rt[1]] = d
	}
	// Another tag of the same manifest.
	resp := call(t, "GET", srv.URL+"/v2/web/manifests/latest", auth, nil, "Accept", manifestType)
	var body strings.Builder
	fmt.Fprint(&body, readAll(t, resp))
	wantStatus(t, call(t, "PUT", srv.URL+"/v2/web/manifests/v1", auth, []byte(body.String()), "Content-Type", manifestType), http.StatusCreated)
	want["web:v1"] = want["web:latest"]

	defer func(n int) { listPageSize = n }(listPageSize)
	listPageSize = 1 // every repository and tag on a page of its own

	var got []string
	err = reg.ListImages(context.Background(), "", func(repo, tag, digest string, size int64) {
		got = append(got, repo+":"+tag)
		if digest != want[repo+":"+tag] {
			t.Errorf("%s:%s: digest %s, want %s", repo, tag, digest, want[repo+":"+tag])
		}
		config, layer := len(`{"architecture":"amd64","os":"linux"}`), len("layer of "+repo+":"+tag)
		if tag == "v1" {
			layer = len("layer of web:latest")
		}
		if min := int64(config + layer + 200); size < min || size > min+300 {
			t.Errorf("%s:%s: size %d, want the manifest's (~300) + %d", repo, tag, size, config+layer)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "team/hello:1 team/hello:2 web:latest web:v1" {
		t.Fatalf("listed %v", got)
	}
	got = nil
	if err := reg.ListImages(context.Background(), "web", func(repo, tag, _ string, _ int64) { got = append(got, repo+":"+tag) }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "web:latest web:v1" {
		t.Fatalf("listed %v for web", got)
	}
	if err := reg.ListImages(context.Background(), "nosuch", func(string, string, string, int64) {}); !errors.Is(err, api.ErrNoRepository) {
		t.Fatalf("a missing repository: %v", err)
	}
	size, ok, err := reg.ImageSize(context.Background(), "web", want["web:latest"])
	if err != nil || !ok || size == 0 {
		t.Fatalf("ImageSize: %d %v %v", size, ok, err)
	}
	if _, ok, err := reg.ImageSize(context.Background(), "web", "sha256:"+strings.Repeat("0", 64)); ok || err != nil {
		t.Fatalf("ImageSize of a missing manifest: %v %v", ok, err)
	}
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
