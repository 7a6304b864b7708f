package pullcache

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A client that goes away mid-stream (the only one waiting) does not
// stop the fetch nor poison the cache: the blob is stored whole and the
// next pull gets it without asking the origin again.
func TestClientCancelDoesNotPoisonCache(t *testing.T) {
	o := newFakeOrigin(t)
	blob := randomBytes(t, 2<<20)
	d := o.addBlob(blob)
	release := o.gate(d)
	defer release()
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", tc.url+"/v2/app/blobs/"+d, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	release()
	waitNoFetch(t, tc.Cache, d)
	stored, err := os.ReadFile(tc.blobPath(d))
	if err != nil || !bytes.Equal(stored, blob) {
		t.Fatalf("blob after the client went away: %v (%d bytes)", err, len(stored))
	}
	resp2, body, err := tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	if err != nil || resp2.StatusCode != 200 || !bytes.Equal(body, blob) {
		t.Fatalf("next pull: %v %v", resp2.Status, err)
	}
	if got := o.count("GET", "/v2/app/blobs/"+d); got != 1 {
		t.Errorf("origin GETs = %d, want 1", got)
	}
}

// Close abandons a fetch cleanly: the waiting client's stream is cut,
// nothing is stored, no temp file stays.
func TestCloseAbandonsFetch(t *testing.T) {
	o := newFakeOrigin(t)
	blob := randomBytes(t, 1<<20)
	d := o.addBlob(blob)
	release := o.gate(d)
	defer release()
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})
	resp, err := http.Get(tc.url + "/v2/app/blobs/" + d)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	tc.Close()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the stream of an abandoned fetch ended as if whole")
	}
	assertNotStored(t, tc.Cache, d)
	if rec := serveDirect(tc.Cache, "GET", "/v2/app/blobs/"+d, ""); rec.Code != 503 {
		t.Errorf("GET after Close: %d, want 503", rec.Code)
	}
}

// Prune removes what was not used for the given time, except what keep
// keeps and what is being fetched; a tag whose manifest went goes too.
func TestPrune(t *testing.T) {
	o := newFakeOrigin(t)
	oldBlob, keptBlob, newBlob := randomBytes(t, 100), randomBytes(t, 200), randomBytes(t, 300)
	dOld, dKept, dNew := o.addBlob(oldBlob), o.addBlob(keptBlob), o.addBlob(newBlob)
	m := []byte(`{"schemaVersion":2}`)
	dm := o.addManifest("app", "v1", schema2Type, m)
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})
	for _, d := range []string{dOld, dKept, dNew} {
		tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
		waitNoFetch(t, tc.Cache, d)
	}
	tc.get(t, "GET", "/v2/app/manifests/v1", nil)
	// A file of someone else's in the tree is not touched.
	stranger := filepath.Join(tc.dir, "blobs", "sha256", "zz")
	os.MkdirAll(stranger, 0o700)
	os.WriteFile(filepath.Join(stranger, "notes"), []byte("x"), 0o600)

	long := time.Now().Add(-48 * time.Hour)
	for _, p := range []string{tc.blobPath(dOld), tc.blobPath(dKept), tc.manifestPath(dm), filepath.Join(stranger, "notes")} {
		if err := os.Chtimes(p, long, long); err != nil {
			t.Fatal(err)
		}
	}
	// Being fetched: not pruned.
	busy := o.addBlob(randomBytes(t, 1<<20))
	release := o.gate(busy)
	go func() {
		if resp, err := http.Get(tc.url + "/v2/app/blobs/" + busy); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	waitFetch(t, tc.Cache, busy)

	res, err := tc.Prune(24*time.Hour, func(d string) bool { return d == dKept })
	if err != nil {
		t.Fatal(err)
	}
	release()
	wantBytes := int64(100 + len(schema2Type) + 1 + len(m)) // a manifest's file starts with its type
	if res.Blobs != 1 || res.Manifests != 1 || res.Tags != 1 || res.Bytes != wantBytes {
		t.Errorf("prune = %+v, want 1 blob, 1 manifest, 1 tag, %d bytes", res, wantBytes)
	}
	for d, want := range map[string]bool{dOld: false, dKept: true, dNew: true} {
		if _, err := os.Stat(tc.blobPath(d)); (err == nil) != want {
			t.Errorf("blob %s kept = %v, want %v", d[:15], err == nil, want)
		}
	}
	if _, err := os.Stat(filepath.Join(stranger, "notes")); err != nil {
		t.Errorf("prune removed a file it did not make: %v", err)
	}
	// Pruned: the next pull fetches again.
	resp, body, _ := tc.get(t, "GET", "/v2/app/blobs/"+dOld, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, oldBlob) || o.count("GET", "/v2/app/blobs/"+dOld) != 2 {
		t.Errorf("pull of a pruned blob: %s, origin asked %d times", resp.Status, o.count("GET", "/v2/app/blobs/"+dOld))
	}
}

func waitFetch(t *testing.T, c *Cache, digest string) {
	t.Helper()
	for range 1000 {
		c.mu.Lock()
		f := c.fetches[digest]
		c.mu.Unlock()
		if f != nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the fetch never started")
}

// Access times are recorded in the file's mtime, so they survive a
// restart.
func TestAccessTouchesMtime(t *testing.T) {
	o := newFakeOrigin(t)
	d := o.addBlob(randomBytes(t, 100))
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})
	tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	waitNoFetch(t, tc.Cache, d)
	long := time.Now().Add(-time.Hour)
	os.Chtimes(tc.blobPath(d), long, long)
	tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	fi, err := os.Stat(tc.blobPath(d))
	if err != nil || !fi.ModTime().After(long.Add(30*time.Minute)) {
		t.Errorf("mtime after a hit = %v (%v), want now", fi.ModTime(), err)
	}
}

// Listen takes loopback only, and a port-0 listener gets the port of
// the last run back.
func TestListen(t *testing.T) {
	c, err := New(Config{Dir: t.TempDir(), Origins: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, a := range []string{"0.0.0.0:0", "10.1.2.3:5000", "[::1]:0", "localhost:0", "127.0.0.1"} {
		if ln, err := c.Listen(a); err == nil {
			ln.Close()
			t.Errorf("Listen(%q) succeeded", a)
		}
	}
	ln, err := c.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	first := ln.Addr().String()
	ln.Close()
	ln, err = c.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != first {
		t.Errorf("second Listen got %s, want the first's %s", ln.Addr(), first)
	}
	// Taken by someone else: another port, remembered.
	ln2, err := c.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	kept, _ := os.ReadFile(filepath.Join(c.dir, addrFile))
	if ln2.Addr().String() == first || strings.TrimSpace(string(kept)) != ln2.Addr().String() {
		t.Errorf("with the old port taken: got %s, kept %q", ln2.Addr(), kept)
	}
}

// Serve answers until its context ends.
func TestServe(t *testing.T) {
	c, err := New(Config{Dir: t.TempDir(), Origins: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ln, err := c.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, ln) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/v2/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /v2/: %v", err)
	}
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("still listening after Serve returned")
	}
	if got := Reference(ln.Addr().String(), "hello@"+zeros); got != ln.Addr().String()+"/hello@"+zeros {
		t.Errorf("Reference = %q", got)
	}
}
