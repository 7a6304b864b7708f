package pullcache

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

var zeros = "sha256:" + strings.Repeat("0", 64)

// Bad names, tags and digests are 400 before anything is asked of the
// origin or looked up on disk; paths never reach the file system.
func TestBadNamesAndDigests(t *testing.T) {
	o := newFakeOrigin(t)
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})
	cases := []struct{ path, code string }{
		{"/v2/App/manifests/latest", "NAME_INVALID"},
		{"/v2/a/../b/manifests/latest", "NAME_INVALID"},
		{"/v2/../../etc/blobs/" + zeros, "NAME_INVALID"},
		{"/v2/a//b/blobs/" + zeros, "NAME_INVALID"},
		{"/v2/-a/manifests/latest", "NAME_INVALID"},
		{"/v2/a./manifests/latest", "NAME_INVALID"},
		{"/v2//blobs/" + zeros, "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a", 256) + "/manifests/latest", "NAME_INVALID"},
		{"/v2/a/blobs/sha256:abc", "DIGEST_INVALID"},
		{"/v2/a/blobs/sha256:" + strings.Repeat("A", 64), "DIGEST_INVALID"},
		{"/v2/a/blobs/sha512:" + strings.Repeat("0", 128), "DIGEST_INVALID"},
		{"/v2/a/blobs/latest", "DIGEST_INVALID"},
		{"/v2/a/blobs/..", "DIGEST_INVALID"},
		{"/v2/a/manifests/sha256:zz", "DIGEST_INVALID"},
		{"/v2/a/manifests/-bad", "TAG_INVALID"},
		{"/v2/a/manifests/..", "TAG_INVALID"},
		{"/v2/a/manifests/" + strings.Repeat("t", 129), "TAG_INVALID"},
	}
	for _, tt := range cases {
		rec := serveDirect(tc.Cache, "GET", tt.path, "")
		if rec.Code != 400 || errorCode(t, rec.Body.Bytes()) != tt.code {
			t.Errorf("GET %s: %d %s, want 400 %s", tt.path, rec.Code, rec.Body, tt.code)
		}
	}
	// A percent-encoded slash is refused rather than decoded into a name.
	rec := serveDirect(tc.Cache, "GET", "/v2/a/b/manifests/x", "/v2/a%2Fb/manifests/x")
	if rec.Code != 400 {
		t.Errorf("encoded path: %d, want 400", rec.Code)
	}
	for _, p := range []string{"/v2/a/tags/list", "/v2/_catalog", "/v2/a/referrers/" + zeros} {
		if rec := serveDirect(tc.Cache, "GET", p, ""); rec.Code != 404 || errorCode(t, rec.Body.Bytes()) != "UNSUPPORTED" {
			t.Errorf("GET %s: %d %s, want 404 UNSUPPORTED", p, rec.Code, rec.Body)
		}
	}
	if n := o.total(); n != 0 {
		t.Errorf("the origin was asked %d times for bad requests", n)
	}
}

// serveDirect calls the handler with a path as given (no client
// cleaning); rawPath, when set, is the escaped form.
func serveDirect(c *Cache, method, path, rawPath string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "/v2/", nil)
	r.URL = &url.URL{Path: path, RawPath: rawPath}
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, r)
	return rec
}

// The cache is read-only: every write is 405, and nothing reaches the
// origin.
func TestWritesRefused(t *testing.T) {
	o := newFakeOrigin(t)
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})
	for _, m := range []string{"PUT", "POST", "PATCH", "DELETE"} {
		for _, p := range []string{"/v2/a/blobs/uploads/", "/v2/a/manifests/latest", "/v2/a/blobs/" + zeros, "/v2/", "/debug/pullcache"} {
			resp, body, err := tc.get(t, m, p, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" || errorCode(t, body) != "UNSUPPORTED" {
				t.Errorf("%s %s: %s %s", m, p, resp.Status, body)
			}
		}
	}
	if n := o.total(); n != 0 {
		t.Errorf("the origin was asked %d times for writes", n)
	}
	resp, body, _ := tc.get(t, "GET", "/v2/", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("GET /v2/: %s %q", resp.Status, body)
	}
	if resp, _, _ := tc.get(t, "HEAD", "/v2/", nil); resp.StatusCode != 200 {
		t.Errorf("HEAD /v2/: %s", resp.Status)
	}
}

// The agent's token goes to the origin as a Bearer token, read on every
// request; a 401 or 403 comes back as such, saying what was refused.
func TestOriginAuth(t *testing.T) {
	o := newFakeOrigin(t)
	o.token = "right"
	blob := randomBytes(t, 1000)
	d := o.addBlob(blob)
	token := "wrong"
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}, Token: func() string { return token }})

	resp, body, _ := tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	if resp.StatusCode != 401 || errorCode(t, body) != "UNAUTHORIZED" || !strings.Contains(string(body), "agent's token") {
		t.Errorf("wrong token: %s %s", resp.Status, body)
	}
	if resp.Header.Get("WWW-Authenticate") != "" {
		t.Errorf("the cache sent a challenge (%q): Docker would try to log in to it", resp.Header.Get("WWW-Authenticate"))
	}
	if resp, _, _ := tc.get(t, "GET", "/v2/app/manifests/v1", nil); resp.StatusCode != 401 {
		t.Errorf("manifest with a wrong token: %s", resp.Status)
	}
	assertNotStored(t, tc.Cache, d)

	token = "right"
	resp, body, _ = tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, blob) {
		t.Errorf("after the token changed: %s", resp.Status)
	}
	o.mu.Lock()
	o.forbidden = true
	o.mu.Unlock()
	resp, body, _ = tc.get(t, "GET", "/v2/app/manifests/v1", nil)
	if resp.StatusCode != 403 || errorCode(t, body) != "DENIED" {
		t.Errorf("403 from the origin: %s %s", resp.Status, body)
	}
}

// A server that does not answer, or answers 5xx, is skipped for the
// next; a 404 from the first is believed.
func TestOriginFailover(t *testing.T) {
	dead := newFakeOrigin(t)
	dead.srv.Close()
	var sickAsked atomic.Int32
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sickAsked.Add(1)
		originJSON(w, 503, "UNAVAILABLE", "sick")
	}))
	defer sick.Close()
	good := newFakeOrigin(t)
	blob := randomBytes(t, 5000)
	d := good.addBlob(blob)
	tc := newTestCache(t, Config{Origins: []string{dead.srv.URL, sick.URL, good.srv.URL}})
	resp, body, _ := tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, blob) {
		t.Fatalf("failover: %s", resp.Status)
	}
	// The good one answered last: it is asked first now.
	resp, body, _ = tc.get(t, "GET", "/v2/app/blobs/"+zeros, nil)
	if resp.StatusCode != 404 || errorCode(t, body) != "BLOB_UNKNOWN" {
		t.Errorf("unknown blob: %s %s", resp.Status, body)
	}
	if sickAsked.Load() != 1 {
		t.Errorf("the sick server was asked again after the good one answered")
	}
}

// A blob over the size limit is refused and not stored.
func TestBlobSizeLimit(t *testing.T) {
	o := newFakeOrigin(t)
	d := o.addBlob(randomBytes(t, 100))
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}, MaxBlobSize: 99})
	resp, body, _ := tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	if resp.StatusCode != http.StatusBadGateway || errorCode(t, body) != "SIZE_INVALID" {
		t.Errorf("blob over the limit: %s %s", resp.Status, body)
	}
	waitNoFetch(t, tc.Cache, d)
	assertNotStored(t, tc.Cache, d)
}

// Ranges are served from a stored blob and from one being fetched; HEAD
// of a missing blob asks the origin without fetching it.
func TestRangesAndHead(t *testing.T) {
	o := newFakeOrigin(t)
	blob := randomBytes(t, 1<<20)
	d := o.addBlob(blob)
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})

	resp, body, _ := tc.get(t, "HEAD", "/v2/app/blobs/"+d, nil)
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(blob)) || len(body) != 0 {
		t.Errorf("HEAD of a missing blob: %s, length %d", resp.Status, resp.ContentLength)
	}
	if o.count("GET", "/v2/app/blobs/"+d) != 0 {
		t.Error("a HEAD started a fetch")
	}
	if resp, _, _ := tc.get(t, "HEAD", "/v2/app/blobs/"+zeros, nil); resp.StatusCode != 404 {
		t.Errorf("HEAD of an unknown blob: %s", resp.Status)
	}

	release := o.gate(d)
	rng := http.Header{"Range": {"bytes=10-19"}}
	resp, body, err := tc.get(t, "GET", "/v2/app/blobs/"+d, rng) // the first half is there
	if err != nil || resp.StatusCode != 206 || !bytes.Equal(body, blob[10:20]) || resp.Header.Get("Content-Range") != "bytes 10-19/1048576" {
		t.Errorf("range while fetching: %v %v %q", resp.Status, err, resp.Header.Get("Content-Range"))
	}
	release()
	waitNoFetch(t, tc.Cache, d)
	resp, body, _ = tc.get(t, "GET", "/v2/app/blobs/"+d, http.Header{"Range": {"bytes=-5"}})
	if resp.StatusCode != 206 || !bytes.Equal(body, blob[len(blob)-5:]) {
		t.Errorf("range of a stored blob: %s", resp.Status)
	}
	resp, _, _ = tc.get(t, "HEAD", "/v2/app/blobs/"+d, nil)
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(blob)) || resp.Header.Get("Docker-Content-Digest") != d {
		t.Errorf("HEAD of a stored blob: %s %d", resp.Status, resp.ContentLength)
	}
	if got := o.count("GET", "/v2/app/blobs/"+d); got != 1 {
		t.Errorf("origin GETs = %d, want 1", got)
	}
}

// /debug/pullcache shows Stats as JSON.
func TestStatsEndpoint(t *testing.T) {
	o := newFakeOrigin(t)
	d := o.addBlob(randomBytes(t, 300))
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})
	tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	waitNoFetch(t, tc.Cache, d)
	resp, body, _ := tc.get(t, "GET", "/debug/pullcache", nil)
	var s Stats
	if err := json.Unmarshal(body, &s); err != nil || resp.StatusCode != 200 {
		t.Fatalf("stats: %s %v", resp.Status, err)
	}
	if s.OriginBlobRequests != 1 || s.Blobs[d].OriginBytes != 300 {
		t.Errorf("stats = %+v", s)
	}
}

// New refuses what cannot work, and clears temp files of a past run.
func TestNew(t *testing.T) {
	if _, err := New(Config{Dir: t.TempDir()}); err == nil {
		t.Error("New without origins succeeded")
	}
	if _, err := New(Config{Dir: t.TempDir(), Origins: []string{"ftp://x"}}); err == nil {
		t.Error("New with an ftp origin succeeded")
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o700)
	os.WriteFile(filepath.Join(dir, "tmp", "abc-123"), []byte("half"), 0o600)
	c, err := New(Config{Dir: dir, Origins: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("temp files of a past run kept: %v", ents)
	}
}
