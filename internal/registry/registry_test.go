package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"berth/api"
)

const (
	userToken  = "0123456789ab.user-secret"
	agentToken = "ba9876543210.agent-secret"
)

// tokens is the test's token check: two known tokens.
func tokens(_ context.Context, tok string) (string, error) {
	switch tok {
	case userToken:
		return api.RoleUser, nil
	case agentToken:
		return api.RoleAgent, nil
	}
	return "", nil
}

// serve starts a registry on dir behind an httptest server.
func serve(t *testing.T, dir string, auth Authorize, log *slog.Logger) *httptest.Server {
	t.Helper()
	reg, err := New(Config{Dir: dir, Authorize: auth, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v2/", reg) // as the API server mounts it
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.Close()
		reg.Close()
	})
	return srv
}

// call makes a request; auth is "" (none), "bearer:<tok>" or "basic:<user>:<tok>".
func call(t *testing.T, method, u, auth string, body []byte, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	switch kind, rest, _ := strings.Cut(auth, ":"); kind {
	case "bearer":
		req.Header.Set("Authorization", "Bearer "+rest)
	case "basic":
		user, pass, _ := strings.Cut(rest, ":")
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// specError is the distribution-spec's error body.
type specError struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

func wantError(t *testing.T, resp *http.Response, status int, code, inMessage string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status)
	}
	var e specError
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatalf("error body is not the spec's JSON: %v", err)
	}
	if len(e.Errors) != 1 || e.Errors[0].Code != code || !strings.Contains(e.Errors[0].Message, inMessage) {
		t.Fatalf("errors %+v, want one %s saying %q", e.Errors, code, inMessage)
	}
}

func wantStatus(t *testing.T, resp *http.Response, status int) {
	t.Helper()
	if resp.StatusCode != status {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s: status %d, want %d: %s", resp.Request.Method, resp.Request.URL, resp.StatusCode, status, b)
	}
}

func digestOf(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

// pushBlob uploads a blob in two steps (POST, then PUT with the digest).
func pushBlob(t *testing.T, base, repo, auth string, blob []byte) string {
	t.Helper()
	resp := call(t, "POST", base+"/v2/"+repo+"/blobs/uploads/", auth, nil)
	wantStatus(t, resp, http.StatusAccepted)
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	q.Set("digest", digestOf(blob))
	loc.RawQuery = q.Encode()
	resp = call(t, "PUT", loc.String(), auth, blob, "Content-Type", "application/octet-stream")
	wantStatus(t, resp, http.StatusCreated)
	return digestOf(blob)
}

const manifestType = "application/vnd.oci.image.manifest.v1+json"

// pushImage pushes a one-layer image as repo:tag; it returns the layer's
// and the manifest's digests.
func pushImage(t *testing.T, base, repo, tag, auth string) (layer, manifest string) {
	t.Helper()
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	data := []byte("layer of " + repo + ":" + tag)
	configDigest := pushBlob(t, base, repo, auth, config)
	layer = pushBlob(t, base, repo, auth, data)
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
		manifestType, configDigest, len(config), layer, len(data))
	resp := call(t, "PUT", base+"/v2/"+repo+"/manifests/"+tag, auth, []byte(m), "Content-Type", manifestType)
	wantStatus(t, resp, http.StatusCreated)
	return layer, digestOf([]byte(m))
}

func TestNoTokenIs401WithChallenge(t *testing.T) {
	srv := serve(t, t.TempDir(), tokens, nil)
	for _, path := range []string{"/v2/", "/v2/hello/manifests/1", "/v2/hello/blobs/uploads/"} {
		resp := call(t, "GET", srv.URL+path, "", nil)
		if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="berth"` {
			t.Errorf("GET %s: WWW-Authenticate %q", path, got)
		}
		if got := resp.Header.Get("Docker-Distribution-API-Version"); got != "registry/2.0" {
			t.Errorf("GET %s: Docker-Distribution-API-Version %q", path, got)
		}
		wantError(t, resp, http.StatusUnauthorized, "UNAUTHORIZED", "docker login -u berth -p TOKEN")
	}
}

func TestWrongTokenIs401(t *testing.T) {
	srv := serve(t, t.TempDir(), tokens, nil)
	for _, auth := range []string{"bearer:" + userToken + "x", "basic:berth:nope", "basic:" + userToken + ":", "bearer:"} {
		resp := call(t, "GET", srv.URL+"/v2/", auth, nil)
		if resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: no challenge", auth)
		}
		wantError(t, resp, http.StatusUnauthorized, "UNAUTHORIZED", "")
	}
}

func TestBasicAndBearerBothWork(t *testing.T) {
	srv := serve(t, t.TempDir(), tokens, nil)
	for _, auth := range []string{"bearer:" + userToken, "basic:berth:" + userToken, "basic:anyone:" + userToken, "basic:berth:" + agentToken} {
		resp := call(t, "GET", srv.URL+"/v2/", auth, nil)
		wantStatus(t, resp, http.StatusOK)
	}
	// Pushed with Basic, pulled with Bearer.
	_, manifest := pushImage(t, srv.URL, "hello", "1", "basic:berth:"+userToken)
	resp := call(t, "GET", srv.URL+"/v2/hello/manifests/1", "bearer:"+userToken, nil, "Accept", manifestType)
	wantStatus(t, resp, http.StatusOK)
	if got := resp.Header.Get("Docker-Content-Digest"); got != manifest {
		t.Errorf("pulled digest %s, pushed %s", got, manifest)
	}
}

func TestAgentPullsButDoesNotPush(t *testing.T) {
	srv := serve(t, t.TempDir(), tokens, nil)
	layer, manifest := pushImage(t, srv.URL, "team/app", "v1", "bearer:"+userToken)
	agent := "basic:berth:" + agentToken
	wantStatus(t, call(t, "GET", srv.URL+"/v2/team/app/manifests/v1", agent, nil, "Accept", manifestType), http.StatusOK)
	wantStatus(t, call(t, "HEAD", srv.URL+"/v2/team/app/manifests/"+manifest, agent, nil, "Accept", manifestType), http.StatusOK)
	wantStatus(t, call(t, "GET", srv.URL+"/v2/team/app/blobs/"+layer, agent, nil), http.StatusOK)
	wantStatus(t, call(t, "GET", srv.URL+"/v2/team/app/tags/list", agent, nil), http.StatusOK)

	for _, w := range []struct{ method, path string }{
		{"POST", "/v2/team/app/blobs/uploads/"},
		{"PUT", "/v2/team/app/manifests/v2"},
		{"PATCH", "/v2/team/app/blobs/uploads/some-upload"},
		{"DELETE", "/v2/team/app/manifests/" + manifest},
		{"DELETE", "/v2/team/app/blobs/" + layer},
	} {
		resp := call(t, w.method, srv.URL+w.path, agent, []byte("{}"))
		wantError(t, resp, http.StatusForbidden, "DENIED", w.method+" "+w.path+" changes the registry and needs a user token; this agent token may only pull")
	}
	// Nothing was deleted.
	wantStatus(t, call(t, "GET", srv.URL+"/v2/team/app/manifests/v1", agent, nil, "Accept", manifestType), http.StatusOK)
	wantStatus(t, call(t, "GET", srv.URL+"/v2/team/app/blobs/"+layer, agent, nil), http.StatusOK)
}

func TestStorageIsUnderDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "registry") // created by New
	srv := serve(t, dir, tokens, nil)
	layer, _ := pushImage(t, srv.URL, "hello", "1", "bearer:"+userToken)
	root := filepath.Join(dir, "docker", "registry", "v2")
	hex := strings.TrimPrefix(layer, "sha256:")
	for _, p := range []string{
		filepath.Join(root, "blobs", "sha256", hex[:2], hex, "data"),
		filepath.Join(root, "repositories", "hello", "_manifests", "tags", "1", "current", "link"),
	} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("registry content not under the given dir: %v", err)
		}
	}
}

func TestTwoRegistriesInOneProcess(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	a := serve(t, dirA, tokens, nil)
	b := serve(t, dirB, tokens, nil)
	pushImage(t, a.URL, "only-a", "1", "bearer:"+userToken)
	pushImage(t, b.URL, "only-b", "1", "bearer:"+userToken)
	wantStatus(t, call(t, "GET", b.URL+"/v2/only-a/manifests/1", "bearer:"+userToken, nil, "Accept", manifestType), http.StatusNotFound)
	// A third on A's storage serves what A stored.
	c := serve(t, dirA, tokens, nil)
	wantStatus(t, call(t, "GET", c.URL+"/v2/only-a/manifests/1", "bearer:"+userToken, nil, "Accept", manifestType), http.StatusOK)
}

func TestBadConfigurationIsAnError(t *testing.T) {
	c := appConfig(t.TempDir(), "secret")
	c.Storage["inmemory"] = nil // two storage drivers: NewApp panics
	if _, err := newApp(context.Background(), c); err == nil || !strings.Contains(err.Error(), "bad configuration") {
		t.Fatalf("newApp with two storage drivers: %v, want a bad configuration error", err)
	}
	if _, err := New(Config{Authorize: tokens}); err == nil {
		t.Error("New without a directory: no error")
	}
	if _, err := New(Config{Dir: t.TempDir()}); err == nil {
		t.Error("New without Authorize: no error")
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := New(Config{Dir: filepath.Join(file, "registry"), Authorize: tokens}); err == nil {
		t.Error("New with a directory under a file: no error")
	}
}

func TestTokenCheckFailureIs503(t *testing.T) {
	down := func(context.Context, string) (string, error) { return "", errors.New("store unavailable") }
	srv := serve(t, t.TempDir(), down, nil)
	wantError(t, call(t, "GET", srv.URL+"/v2/", "bearer:"+userToken, nil), http.StatusServiceUnavailable, "UNAVAILABLE", "store unavailable")
}

func TestReferrersPath(t *testing.T) {
	for _, c := range []struct{ path, name, dgst string }{
		{"/v2/hello/referrers/sha256:abc", "hello", "sha256:abc"},
		{"/v2/team/app/referrers/sha256:abc", "team/app", "sha256:abc"},
		{"/v2/referrers/referrers/sha256:abc", "referrers", "sha256:abc"},
		{"/v2/hello/manifests/referrers", "", ""},
		{"/v2/referrers/sha256:abc", "", ""},
		{"/v2/a/referrers/b/manifests/1", "", ""},
	} {
		name, dgst, ok := referrersPath(c.path)
		if ok != (c.name != "") || name != c.name || dgst != c.dgst {
			t.Errorf("referrersPath(%q) = %q, %q, %v; want %q, %q", c.path, name, dgst, ok, c.name, c.dgst)
		}
	}
}
