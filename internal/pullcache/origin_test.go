package pullcache

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeOrigin is a registry of berth's servers for the tests: it serves
// manifests and blobs from memory, counts what it is asked, and can be
// told to misbehave.
type fakeOrigin struct {
	srv *httptest.Server

	mu        sync.Mutex
	token     string                  // the Bearer token it wants ("" any)
	forbidden bool                    // answer 403 to a right token
	blobs     map[string][]byte       // digest -> bytes (which may not match)
	manifests map[string]fakeManifest // "name:ref" -> manifest
	gates     map[string]chan struct{}
	cuts      map[string]int // digest -> how many more GETs to cut halfway
	gets      map[string]int // "GET /v2/..." (Range GETs included) -> count
	accepts   []string       // the Accept headers of manifest requests
	ranges    []string       // the Range headers of blob requests
}

type fakeManifest struct {
	mediaType string
	body      []byte
}

func newFakeOrigin(t *testing.T) *fakeOrigin {
	t.Helper()
	o := &fakeOrigin{
		blobs: map[string][]byte{}, manifests: map[string]fakeManifest{},
		gates: map[string]chan struct{}{}, cuts: map[string]int{}, gets: map[string]int{},
	}
	o.srv = httptest.NewServer(http.HandlerFunc(o.serve))
	t.Cleanup(o.srv.Close)
	return o
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// addBlob stores b under its digest and returns the digest.
func (o *fakeOrigin) addBlob(b []byte) string {
	d := digestOf(b)
	o.mu.Lock()
	o.blobs[d] = b
	o.mu.Unlock()
	return d
}

// addManifest stores body under its digest and, when tag is set, the tag.
func (o *fakeOrigin) addManifest(name, tag, mediaType string, body []byte) string {
	d := digestOf(body)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.manifests[name+":"+d] = fakeManifest{mediaType, body}
	if tag != "" {
		o.manifests[name+":"+tag] = fakeManifest{mediaType, body}
	}
	return d
}

// gate makes GETs of the blob send its first half, then wait until the
// returned func is called.
func (o *fakeOrigin) gate(digest string) (release func()) {
	ch := make(chan struct{})
	o.mu.Lock()
	o.gates[digest] = ch
	o.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (o *fakeOrigin) count(method, path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.gets[method+" "+path]
}

func (o *fakeOrigin) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, v := range o.gets {
		n += v
	}
	return n
}

func (o *fakeOrigin) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.gets[r.Method+" "+r.URL.Path]++
	token, forbidden := o.token, o.forbidden
	o.mu.Unlock()
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
		w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
		originJSON(w, http.StatusUnauthorized, "UNAUTHORIZED", "wrong or removed berth token")
		return
	}
	if forbidden {
		originJSON(w, http.StatusForbidden, "DENIED", "not for you")
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, "/v2/")
	if i := strings.LastIndex(rest, "/blobs/"); i >= 0 {
		o.serveBlob(w, r, rest[i+len("/blobs/"):])
		return
	}
	if i := strings.LastIndex(rest, "/manifests/"); i >= 0 {
		o.serveManifest(w, r, rest[:i], rest[i+len("/manifests/"):])
		return
	}
	originJSON(w, http.StatusNotFound, "NOT_FOUND", "no such thing")
}

func (o *fakeOrigin) serveManifest(w http.ResponseWriter, r *http.Request, name, ref string) {
	o.mu.Lock()
	m, ok := o.manifests[name+":"+ref]
	o.accepts = append(o.accepts, r.Header.Get("Accept"))
	o.mu.Unlock()
	if !ok {
		originJSON(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown to the origin")
		return
	}
	w.Header().Set("Content-Type", m.mediaType)
	w.Header().Set("Docker-Content-Digest", digestOf(m.body))
	w.Header().Set("Content-Length", fmt.Sprint(len(m.body)))
	if r.Method != http.MethodHead {
		w.Write(m.body)
	}
}

func (o *fakeOrigin) serveBlob(w http.ResponseWriter, r *http.Request, digest string) {
	o.mu.Lock()
	b, ok := o.blobs[digest]
	gate := o.gates[digest]
	cut := o.cuts[digest] > 0 && r.Method == http.MethodGet
	if cut {
		o.cuts[digest]--
	}
	o.ranges = append(o.ranges, r.Header.Get("Range"))
	o.mu.Unlock()
	if !ok {
		originJSON(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to the origin")
		return
	}
	if cut && r.Header.Get("Range") != "" {
		panic(http.ErrAbortHandler) // no answer at all
	}
	if r.Header.Get("Range") != "" {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.Header().Set("Docker-Content-Digest", digest)
	if r.Method == http.MethodHead {
		return
	}
	half := len(b) / 2
	w.Write(b[:half])
	w.(http.Flusher).Flush()
	if cut {
		panic(http.ErrAbortHandler)
	}
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	w.Write(b[half:])
}

func originJSON(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

// testCache is a Cache in a temp dir served by an httptest server.
type testCache struct {
	*Cache
	url string
}

func newTestCache(t *testing.T, cfg Config) *testCache {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(func() {
		srv.Close()
		c.Close()
	})
	return &testCache{Cache: c, url: srv.URL}
}

// get does a request to the cache and reads the whole answer.
func (tc *testCache) get(t *testing.T, method, path string, hdr http.Header) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(method, tc.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// errorCode is the first code of a distribution-spec error body.
func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not a registry error body: %q", body)
	}
	return e.Errors[0].Code
}
