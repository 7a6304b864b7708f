package pullcache

import (
	"bytes"
	"net/http"
	"strconv"
	"testing"
)

const clientAccept = schema2Type + ", " + indexType

// A tag is asked of the origin every time, with the client's Accept,
// and follows the origin when it moves.
func TestTagResolvesThroughOrigin(t *testing.T) {
	o := newFakeOrigin(t)
	m1 := []byte(`{"schemaVersion":2,"mediaType":"` + schema2Type + `","n":1}`)
	m2 := []byte(`{"schemaVersion":2,"mediaType":"` + indexType + `","n":2}`)
	d1 := o.addManifest("team/app", "v1", schema2Type, m1)
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})

	hdr := http.Header{"Accept": {clientAccept}}
	resp, body, err := tc.get(t, "GET", "/v2/team/app/manifests/v1", hdr)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, m1) {
		t.Fatalf("GET by tag: %v %v %q", resp.Status, err, body)
	}
	checkManifestHeaders(t, resp, schema2Type, d1, len(m1))
	o.mu.Lock()
	asked := o.accepts[len(o.accepts)-1]
	o.mu.Unlock()
	if asked != clientAccept {
		t.Errorf("the origin was asked with Accept %q, want the client's %q", asked, clientAccept)
	}

	d2 := o.addManifest("team/app", "v1", indexType, m2) // the tag moves
	resp, body, _ = tc.get(t, "GET", "/v2/team/app/manifests/v1", hdr)
	if !bytes.Equal(body, m2) {
		t.Fatalf("after the tag moved: %q, want the new manifest", body)
	}
	checkManifestHeaders(t, resp, indexType, d2, len(m2))
	resp, body, _ = tc.get(t, "HEAD", "/v2/team/app/manifests/v1", hdr)
	if resp.StatusCode != 200 || len(body) != 0 {
		t.Errorf("HEAD by tag: %s with %d bytes of body", resp.Status, len(body))
	}
	checkManifestHeaders(t, resp, indexType, d2, len(m2))
	if got := o.count("GET", "/v2/team/app/manifests/v1"); got != 3 {
		t.Errorf("origin GETs of the tag = %d, want 3 (one per request)", got)
	}

	// By digest it is a hit: resolving the tag stored it.
	resp, body, _ = tc.get(t, "GET", "/v2/team/app/manifests/"+d2, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, m2) || o.count("GET", "/v2/team/app/manifests/"+d2) != 0 {
		t.Errorf("GET by the tag's digest: %s, origin asked %d times", resp.Status, o.count("GET", "/v2/team/app/manifests/"+d2))
	}
	resp, body, _ = tc.get(t, "GET", "/v2/team/app/manifests/nope", nil)
	if resp.StatusCode != 404 || errorCode(t, body) != "MANIFEST_UNKNOWN" {
		t.Errorf("unknown tag: %s %s", resp.Status, body)
	}
}

func checkManifestHeaders(t *testing.T, resp *http.Response, mediaType, digest string, size int) {
	t.Helper()
	if got := resp.Header.Get("Content-Type"); got != mediaType {
		t.Errorf("Content-Type = %q, want %q", got, mediaType)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != digest {
		t.Errorf("Docker-Content-Digest = %q, want %q", got, digest)
	}
	if got := resp.Header.Get("Content-Length"); got != strconv.Itoa(size) {
		t.Errorf("Content-Length = %q, want %d", got, size)
	}
}

// With the origin down, manifests by digest come from the disk, a tag
// resolved before is served marked stale, and an unknown tag is 503.
func TestManifestsWithOriginDown(t *testing.T) {
	o := newFakeOrigin(t)
	m := []byte(`{"schemaVersion":2,"mediaType":"` + schema2Type + `"}`)
	d := o.addManifest("app", "v1", schema2Type, m)
	other := o.addManifest("app", "", schema2Type, []byte(`{"schemaVersion":2,"x":1}`))
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})
	hdr := http.Header{"Accept": {clientAccept}}
	if resp, _, _ := tc.get(t, "GET", "/v2/app/manifests/"+other, hdr); resp.StatusCode != 200 {
		t.Fatalf("GET by digest: %s", resp.Status)
	}
	if resp, _, _ := tc.get(t, "GET", "/v2/app/manifests/v1", hdr); resp.StatusCode != 200 || resp.Header.Get(StaleHeader) != "" {
		t.Fatalf("GET by tag: %s, stale %q", resp.Status, resp.Header.Get(StaleHeader))
	}
	o.srv.Close()

	resp, body, _ := tc.get(t, "GET", "/v2/app/manifests/"+other, hdr)
	if resp.StatusCode != 200 || digestOf(body) != other {
		t.Errorf("GET by digest, origin down: %s", resp.Status)
	}
	resp, body, _ = tc.get(t, "GET", "/v2/app/manifests/v1", hdr)
	if resp.StatusCode != 200 || !bytes.Equal(body, m) || resp.Header.Get(StaleHeader) == "" {
		t.Errorf("GET by tag, origin down: %s, stale %q", resp.Status, resp.Header.Get(StaleHeader))
	}
	checkManifestHeaders(t, resp, schema2Type, d, len(m))
	if s := tc.Stats(); s.StaleTags != 1 || s.ManifestHits != 1 {
		t.Errorf("stats = %+v, want 1 stale tag, 1 manifest hit", s)
	}
	// A client that does not take the stored type gets no stale answer.
	resp, _, _ = tc.get(t, "GET", "/v2/app/manifests/v1", http.Header{"Accept": {indexType}})
	if resp.StatusCode != 503 {
		t.Errorf("stale tag of a type the client refuses: %s, want 503", resp.Status)
	}
	resp, body, _ = tc.get(t, "GET", "/v2/app/manifests/never", hdr)
	if resp.StatusCode != 503 || errorCode(t, body) != "UNAVAILABLE" {
		t.Errorf("unknown tag, origin down: %s %s", resp.Status, body)
	}
}

// A manifest whose bytes are not its digest is refused and not stored.
func TestManifestDigestMismatch(t *testing.T) {
	o := newFakeOrigin(t)
	real := []byte(`{"schemaVersion":2}`)
	d := digestOf(real)
	o.manifests["app:"+d] = fakeManifest{schema2Type, []byte(`{"schemaVersion":2,"evil":1}`)}
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})
	resp, body, _ := tc.get(t, "GET", "/v2/app/manifests/"+d, nil)
	if resp.StatusCode != http.StatusBadGateway || errorCode(t, body) != "DIGEST_INVALID" {
		t.Errorf("mismatched manifest: %s %s", resp.Status, body)
	}
	if _, err := tc.readManifest(d); err == nil {
		t.Error("the mismatched manifest was stored")
	}
}
