package pullcache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

const (
	schema2Type = "application/vnd.docker.distribution.manifest.v2+json"
	indexType   = "application/vnd.oci.image.index.v1+json"
)

// Twenty pulls of the same missing blob at once make one origin fetch,
// and all of them stream it while it is fetched: each has a quarter of
// the blob before the origin sends its second half (the origin waits for
// that).
func TestConcurrentPullsMergeIntoOneFetch(t *testing.T) {
	o := newFakeOrigin(t)
	blob := randomBytes(t, 4<<20)
	d := o.addBlob(blob)
	release := o.gate(d)
	defer release()
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})

	const n = 20
	var halves, all sync.WaitGroup
	halves.Add(n)
	all.Add(n)
	errs := make([]error, n)
	for i := range n {
		go func() {
			defer all.Done()
			errs[i] = pullHalvesThenRest(tc.url+"/v2/app/blobs/"+d, blob, halves.Done)
		}()
	}
	halves.Wait() // every client has a quarter: the fetch is still open
	release()
	all.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("pull %d: %v", i, err)
		}
	}
	if got := o.count("GET", "/v2/app/blobs/"+d); got != 1 {
		t.Errorf("origin GETs of the blob = %d, want 1", got)
	}
	s := tc.Stats()
	if s.OriginBlobRequests != 1 || s.OriginBlobBytes != int64(len(blob)) || s.BlobMisses != 1 || s.BlobJoins != n-1 {
		t.Errorf("stats = %+v, want 1 origin request of %d bytes, 1 miss, %d joins", s, len(blob), n-1)
	}
	if b := s.Blobs[d]; b.Requests != n || b.ServedBytes != n*int64(len(blob)) {
		t.Errorf("blob stats = %+v, want %d requests, %d bytes served", b, n, n*len(blob))
	}

	// Stored: the next pull is a hit and costs the origin nothing.
	resp, body, err := tc.get(t, "GET", "/v2/other/repo/blobs/"+d, nil)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, blob) {
		t.Fatalf("pull after the fetch: %v, %v", resp.Status, err)
	}
	if resp.Header.Get("Docker-Content-Digest") != d {
		t.Errorf("Docker-Content-Digest = %q", resp.Header.Get("Docker-Content-Digest"))
	}
	if got := o.count("GET", "/v2/app/blobs/"+d) + o.count("GET", "/v2/other/repo/blobs/"+d); got != 1 {
		t.Errorf("origin GETs after a hit = %d, want 1", got)
	}
	if s := tc.Stats(); s.BlobHits != 1 {
		t.Errorf("hits = %d, want 1", s.BlobHits)
	}
}

// pullHalvesThenRest reads the first quarter of the blob, calls half,
// then reads the rest and checks it all.
func pullHalvesThenRest(url string, want []byte, half func()) error {
	resp, err := http.Get(url)
	if err != nil {
		half()
		return err
	}
	defer resp.Body.Close()
	got := make([]byte, len(want))
	_, err = io.ReadFull(resp.Body, got[:len(want)/4])
	half()
	if err != nil {
		return err
	}
	if _, err := io.ReadFull(resp.Body, got[len(want)/4:]); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New("wrong bytes")
	}
	if n, _ := resp.Body.Read(make([]byte, 1)); n != 0 {
		return errors.New("more bytes than the blob")
	}
	return nil
}

// A blob whose bytes do not match its digest fails the pull, and nothing
// is kept: the next pull asks the origin again.
func TestDigestMismatchStoresNothing(t *testing.T) {
	o := newFakeOrigin(t)
	good := randomBytes(t, 1<<20)
	d := digestOf(good)
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	o.mu.Lock()
	o.blobs[d] = bad
	o.mu.Unlock()
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})

	// The stream is cut, or, when the fetch failed before the request
	// could start reading, the answer is an error.
	resp, body, err := tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	if err == nil && resp.StatusCode == 200 {
		t.Fatalf("pull of a corrupt blob succeeded: %s, %d bytes", resp.Status, len(body))
	}
	if err == nil && (resp.StatusCode != http.StatusBadGateway || errorCode(t, body) != "DIGEST_INVALID") {
		t.Errorf("pull of a corrupt blob: %s %s, want 502 DIGEST_INVALID", resp.Status, body)
	}
	if err != nil && len(body) >= len(bad) {
		t.Errorf("the client got %d bytes of %d: the last one must wait for the digest check", len(body), len(bad))
	}
	waitNoFetch(t, tc.Cache, d)
	assertNotStored(t, tc.Cache, d)
	if s := tc.Stats(); s.DigestMismatches != 1 || s.BlobFailures != 1 {
		t.Errorf("stats = %+v, want 1 mismatch, 1 failure", s)
	}
	tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	if got := o.count("GET", "/v2/app/blobs/"+d); got != 2 {
		t.Errorf("origin GETs = %d, want 2 (nothing was cached)", got)
	}
}

// waitNoFetch waits until no fetch of digest is running (the fetch ends
// just after its readers are told).
func waitNoFetch(t *testing.T, c *Cache, digest string) {
	t.Helper()
	for range 1000 {
		c.mu.Lock()
		f := c.fetches[digest]
		c.mu.Unlock()
		if f == nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the fetch never ended")
}

func assertNotStored(t *testing.T, c *Cache, digest string) {
	t.Helper()
	if _, err := os.Stat(c.blobPath(digest)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("blob file after a failed fetch: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(c.dir, "tmp")); len(ents) != 0 {
		t.Errorf("temp files left: %v", ents)
	}
}

// A stream the origin cuts is resumed with a Range request; one that is
// cut every time fails after a few tries and stores nothing.
func TestCutStreamIsResumedOrStoresNothing(t *testing.T) {
	o := newFakeOrigin(t)
	blob := randomBytes(t, 1<<20)
	d := o.addBlob(blob)
	o.mu.Lock()
	o.cuts[d] = 1
	o.mu.Unlock()
	tc := newTestCache(t, Config{Origins: []string{o.srv.URL}})
	resp, body, err := tc.get(t, "GET", "/v2/app/blobs/"+d, nil)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, blob) {
		t.Fatalf("pull with one cut: %v (%d bytes)", err, len(body))
	}
	if got := o.count("GET", "/v2/app/blobs/"+d); got != 2 {
		t.Errorf("origin GETs = %d, want 2 (the cut one and the resumption)", got)
	}
	o.mu.Lock()
	lastRange := o.ranges[len(o.ranges)-1]
	o.mu.Unlock()
	if want := "bytes=" + strconv.Itoa(len(blob)/2) + "-"; lastRange != want {
		t.Errorf("resumption's Range = %q, want %q", lastRange, want)
	}

	d2 := o.addBlob(randomBytes(t, 1<<20))
	o.mu.Lock()
	o.cuts[d2] = 100
	o.mu.Unlock()
	if resp, body, err := tc.get(t, "GET", "/v2/app/blobs/"+d2, nil); err == nil && resp.StatusCode == 200 {
		t.Fatalf("pull of a blob the origin always cuts succeeded (%d bytes)", len(body))
	}
	waitNoFetch(t, tc.Cache, d2)
	assertNotStored(t, tc.Cache, d2)
	if got := o.count("GET", "/v2/app/blobs/"+d2); got != 1+maxResumes {
		t.Errorf("origin GETs = %d, want %d (one and %d resumptions)", got, 1+maxResumes, maxResumes)
	}
}

// A reader of a fetch sends all but the last byte until the digest is
// checked: a client never holds a whole body that turns out wrong.
func TestLastByteWaitsForDigestCheck(t *testing.T) {
	c := newTestCache(t, Config{Origins: []string{"127.0.0.1:1"}}).Cache
	data := randomBytes(t, 1000)
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	// Every byte is written, the check is not done.
	f := &blobFetch{digest: digestOf(data), ready: make(chan struct{}), size: int64(len(data)),
		path: path, written: int64(len(data)), wake: make(chan struct{})}
	w := &signalWriter{ResponseRecorder: httptest.NewRecorder(), at: len(data) - 1, reached: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- c.followFetch(w, context.Background(), f, file, 0, f.size) }()
	<-w.reached
	f.changed(func() { f.done, f.err = true, errors.New("digest mismatch") })
	if err := <-done; err == nil {
		t.Error("followFetch of a failed fetch returned no error")
	}
	if got := w.Body.Len(); got != len(data)-1 {
		t.Errorf("sent %d bytes of %d before the check failed, want all but the last", got, len(data))
	}
}

// signalWriter closes reached once at least at bytes were written.
type signalWriter struct {
	*httptest.ResponseRecorder
	at      int
	reached chan struct{}
	once    sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseRecorder.Write(p)
	if w.Body.Len() >= w.at {
		w.once.Do(func() { close(w.reached) })
	}
	return n, err
}
