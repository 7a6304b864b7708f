package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

func entry(repo, d string, age time.Duration, refs manifestRefs) manifestEntry {
	return manifestEntry{Repo: repo, Digest: d, Pushed: t0.Add(-age), Refs: refs}
}

func names(ms []manifestEntry) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Repo+"@"+m.Digest)
	}
	slices.Sort(out)
	return out
}

// What goes: old and unused. What stays: in use, young, an index's
// children and the referrers of what stays, in their own repository.
func TestCollectable(t *testing.T) {
	cutoff := t0.Add(-time.Hour)
	ms := []manifestEntry{
		entry("a", "used", 48*time.Hour, manifestRefs{}),
		entry("a", "old", 2*time.Hour, manifestRefs{}),
		entry("a", "young", 10*time.Minute, manifestRefs{}),
		entry("a", "at-cutoff", time.Hour, manifestRefs{}),
		entry("b", "used", 48*time.Hour, manifestRefs{}), // in use by digest: in every repository
		// An index in use keeps its children; a child's own child too.
		entry("c", "index", 48*time.Hour, manifestRefs{Children: []string{"child1", "child2"}}),
		entry("c", "child1", 48*time.Hour, manifestRefs{}),
		entry("c", "child2", 48*time.Hour, manifestRefs{Children: []string{"grandchild"}}),
		entry("c", "grandchild", 48*time.Hour, manifestRefs{}),
		entry("d", "child1", 48*time.Hour, manifestRefs{}), // the same digest elsewhere: not a child there
		// A signature of a kept image stays; of a deleted one, goes.
		entry("c", "sig-of-child", 48*time.Hour, manifestRefs{Subject: "child1"}),
		entry("c", "sig-of-sig", 48*time.Hour, manifestRefs{Subject: "sig-of-child"}),
		entry("a", "sig-of-old", 48*time.Hour, manifestRefs{Subject: "old"}),
		// A young index keeps its old children.
		entry("e", "young-index", time.Minute, manifestRefs{Children: []string{"e-child"}}),
		entry("e", "e-child", 48*time.Hour, manifestRefs{}),
	}
	del, kept := collectable(ms, map[string]bool{"used": true, "index": true}, cutoff)
	wantDel := []string{"a@old", "a@sig-of-old", "d@child1"}
	if got := names(del); !slices.Equal(got, wantDel) {
		t.Errorf("deleted %v, want %v", got, wantDel)
	}
	if len(del)+len(kept) != len(ms) {
		t.Errorf("%d deleted + %d kept of %d", len(del), len(kept), len(ms))
	}
	// Nothing in use and everything old: everything goes.
	del, kept = collectable(ms, nil, t0.Add(time.Hour))
	if len(del) != len(ms) || len(kept) != 0 {
		t.Errorf("everything old and unused: %d deleted, %d kept", len(del), len(kept))
	}
}

func TestMarkAndSweepable(t *testing.T) {
	kept := []manifestEntry{
		entry("a", "m1", 0, manifestRefs{Blobs: []string{"config", "layer1"}}),
		entry("a", "idx", 0, manifestRefs{Children: []string{"m1"}}),
	}
	marked := mark(kept)
	for _, d := range []string{"m1", "config", "layer1", "idx"} {
		if !marked[d] {
			t.Errorf("%s not marked", d)
		}
	}
	cutoff := t0.Add(-time.Hour)
	blobs := []blobEntry{
		{Digest: "layer1", Written: t0.Add(-48 * time.Hour)},
		{Digest: "old", Written: t0.Add(-2 * time.Hour)},
		{Digest: "young", Written: t0.Add(-time.Minute)}, // a push under way
		{Digest: "at-cutoff", Written: cutoff},
	}
	got := sweepable(blobs, marked, cutoff)
	if len(got) != 1 || got[0].Digest != "old" {
		t.Errorf("sweepable = %+v, want only old", got)
	}
}

func TestGuarded(t *testing.T) {
	for _, c := range []struct {
		method, target string
		want           bool
	}{
		{"GET", "/v2/a/manifests/1", false},
		{"HEAD", "/v2/a/blobs/sha256:ab", false},
		{"PUT", "/v2/a/manifests/1", true},
		{"PUT", "/v2/team/a/manifests/sha256:ab", true},
		{"DELETE", "/v2/a/manifests/1", true},
		{"DELETE", "/v2/a/blobs/sha256:ab", true},
		{"POST", "/v2/a/blobs/uploads/?mount=sha256:ab&from=b", true},
		{"POST", "/v2/a/blobs/uploads/", false},
		{"PATCH", "/v2/a/blobs/uploads/u1", false},
		{"PUT", "/v2/a/blobs/uploads/u1?digest=sha256:ab", false},
		// A repository called x/manifests/y: its uploads are uploads.
		{"PUT", "/v2/x/manifests/y/blobs/uploads/u1?digest=sha256:ab", false},
	} {
		r := httptest.NewRequest(c.method, c.target, nil)
		if got := guarded(r); got != c.want {
			t.Errorf("guarded(%s %s) = %v, want %v", c.method, c.target, got, c.want)
		}
	}
}

func TestGCResultString(t *testing.T) {
	r := GCResult{Manifests: 3, Blobs: 12, Bytes: 85 << 20, Took: 240 * time.Millisecond, ReadOnly: 180 * time.Millisecond}
	if got, want := r.String(), "3 manifests, 12 blobs, 85 MiB freed in 240ms (read-only 180ms)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	r = GCResult{Manifests: 1, Blobs: 1, Bytes: 512, Took: 2 * time.Millisecond, ReadOnly: time.Millisecond}
	if got, want := r.String(), "1 manifest, 1 blob, 512 B freed in 2ms (read-only 1ms)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// gcRegistry is a registry on dir behind a test server, for collections.
func gcRegistry(t *testing.T, dir string) (*Registry, string) {
	t.Helper()
	reg, err := New(Config{Dir: dir, Authorize: tokens})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v2/", reg)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.Close()
		reg.Close()
	})
	return reg, srv.URL
}

// age makes everything stored so far look written d ago.
func age(t *testing.T, dir string, d time.Duration) {
	t.Helper()
	then := time.Now().Add(-d)
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		return os.Chtimes(p, then, then)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func blobFile(dir, d string) string {
	hex := strings.TrimPrefix(d, "sha256:")
	return filepath.Join(dir, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
}

func pullStatus(t *testing.T, base, repo, ref string) int {
	t.Helper()
	return call(t, "GET", base+"/v2/"+repo+"/manifests/"+ref, "bearer:"+userToken, nil, "Accept", manifestType).StatusCode
}

// An old image nothing uses goes, with its tag and the blobs only it had;
// an image in use, a young one and the blobs they share stay and pull.
func TestCollectGarbage(t *testing.T) {
	dir := t.TempDir()
	reg, base := gcRegistry(t, dir)
	usedLayer, used := pushImage(t, base, "team/app", "1", "bearer:"+userToken)
	oldLayer, old := pushImage(t, base, "team/app", "2", "bearer:"+userToken)
	_, other := pushImage(t, base, "other", "x", "bearer:"+userToken)
	age(t, dir, 2*time.Hour)
	youngLayer, young := pushImage(t, base, "team/app", "3", "bearer:"+userToken)

	res, err := reg.CollectGarbage(context.Background(), map[string]bool{used: true}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("collection: %s", res)
	if res.Manifests != 2 || res.Tags != 2 {
		t.Errorf("deleted %d manifests and %d tags (%v), want 2 and 2 (team/app:2, other:x)", res.Manifests, res.Tags, res.Deleted)
	}
	// Blobs: the two manifests and their two layers; the config is shared.
	if res.Blobs != 4 || res.Bytes <= 0 {
		t.Errorf("deleted %d blobs (%d bytes), want 4", res.Blobs, res.Bytes)
	}
	for _, ref := range []string{"2", old} {
		if s := pullStatus(t, base, "team/app", ref); s != http.StatusNotFound {
			t.Errorf("team/app:%s after the collection: %d, want 404", ref, s)
		}
	}
	if s := pullStatus(t, base, "other", other); s != http.StatusNotFound {
		t.Errorf("other@%s after the collection: %d, want 404", other, s)
	}
	if _, err := os.Stat(blobFile(dir, oldLayer)); !os.IsNotExist(err) {
		t.Errorf("the deleted image's layer is still stored: %v", err)
	}
	wantStatus(t, call(t, "GET", base+"/v2/team/app/blobs/"+oldLayer, "bearer:"+userToken, nil), http.StatusNotFound)
	for ref, layer := range map[string]string{"1": usedLayer, used: usedLayer, "3": youngLayer, young: youngLayer} {
		if s := pullStatus(t, base, "team/app", ref); s != http.StatusOK {
			t.Errorf("team/app:%s after the collection: %d, want 200", ref, s)
		}
		wantStatus(t, call(t, "GET", base+"/v2/team/app/blobs/"+layer, "bearer:"+userToken, nil), http.StatusOK)
	}
	resp := call(t, "GET", base+"/v2/team/app/tags/list", "bearer:"+userToken, nil)
	var tags struct{ Tags []string }
	decodeJSON(t, resp, &tags)
	if slices.Sort(tags.Tags); !slices.Equal(tags.Tags, []string{"1", "3"}) {
		t.Errorf("tags after the collection: %v, want [1 3]", tags.Tags)
	}

	// A second collection finds nothing more.
	if res, err := reg.CollectGarbage(context.Background(), map[string]bool{used: true}, time.Hour); err != nil || res.Manifests+res.Blobs != 0 {
		t.Errorf("second collection: %s, %v; want nothing deleted", res, err)
	}
}

// An old tag pushed again is young; a digest a deploy just resolved is
// kept though nothing uses it yet; blobs of a push under way (no
// manifest yet) stay.
func TestCollectGarbageSparesWhatIsUnderWay(t *testing.T) {
	dir := t.TempDir()
	reg, base := gcRegistry(t, dir)
	_, repushed := pushImage(t, base, "app", "1", "bearer:"+userToken)
	_, resolved := pushImage(t, base, "app", "2", "bearer:"+userToken)
	age(t, dir, 2*time.Hour)
	_, again := pushImage(t, base, "app", "1", "bearer:"+userToken) // same content, pushed again
	if again != repushed {
		t.Fatal("the same image pushed twice has two digests")
	}
	if d, err := reg.Resolve(context.Background(), "app", "2"); err != nil || d != resolved {
		t.Fatalf("Resolve(app:2) = %s, %v", d, err)
	}
	pending := pushBlob(t, base, "app", "bearer:"+userToken, []byte("a layer whose manifest is still to come"))

	res, err := reg.CollectGarbage(context.Background(), nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifests != 0 || res.Blobs != 0 {
		t.Errorf("collection deleted %s (%v), want nothing", res, res.Deleted)
	}
	for _, tag := range []string{"1", "2"} {
		if s := pullStatus(t, base, "app", tag); s != http.StatusOK {
			t.Errorf("app:%s: %d, want 200", tag, s)
		}
	}
	wantStatus(t, call(t, "GET", base+"/v2/app/blobs/"+pending, "bearer:"+userToken, nil), http.StatusOK)
}

// An index in use keeps its platform manifests, and a signature of an
// image in use (a referrer) stays.
func TestCollectGarbageKeepsChildrenAndReferrers(t *testing.T) {
	dir := t.TempDir()
	reg, base := gcRegistry(t, dir)
	_, child := pushImage(t, base, "multi", "amd64", "bearer:"+userToken)
	index := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+
		`{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":"amd64","os":"linux"}}]}`,
		manifestType, child, manifestSize(t, base, "multi", child))
	wantStatus(t, call(t, "PUT", base+"/v2/multi/manifests/latest", "bearer:"+userToken, []byte(index),
		"Content-Type", "application/vnd.oci.image.index.v1+json"), http.StatusCreated)
	indexDigest := digestOf([]byte(index))
	config := pushBlob(t, base, "multi", "bearer:"+userToken, []byte("{}"))
	sig := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"artifactType":"application/example.signature",`+
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},"layers":[],`+
		`"subject":{"mediaType":"application/vnd.oci.image.index.v1+json","digest":%q,"size":%d}}`,
		manifestType, config, indexDigest, len(index))
	wantStatus(t, call(t, "PUT", base+"/v2/multi/manifests/"+digestOf([]byte(sig)), "bearer:"+userToken, []byte(sig),
		"Content-Type", manifestType), http.StatusCreated)
	age(t, dir, 2*time.Hour)

	// The child is old and only the index is in use: it stays as the index's.
	res, err := reg.CollectGarbage(context.Background(), map[string]bool{indexDigest: true}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifests != 0 || res.Blobs != 0 {
		t.Errorf("collection deleted %s (%v), want nothing", res, res.Deleted)
	}
	for _, ref := range []string{child, indexDigest, digestOf([]byte(sig))} {
		resp := call(t, "GET", base+"/v2/multi/manifests/"+ref, "bearer:"+userToken, nil,
			"Accept", manifestType+", application/vnd.oci.image.index.v1+json")
		wantStatus(t, resp, http.StatusOK)
	}
	// Once the index is not in use, all three go.
	res, err = reg.CollectGarbage(context.Background(), nil, time.Hour)
	if err != nil || res.Manifests != 3 {
		t.Errorf("collection with nothing in use: %s (%v), %v; want 3 manifests", res, res.Deleted, err)
	}
}

func manifestSize(t *testing.T, base, repo, d string) int {
	t.Helper()
	resp := call(t, "HEAD", base+"/v2/"+repo+"/manifests/"+d, "bearer:"+userToken, nil, "Accept", manifestType)
	wantStatus(t, resp, http.StatusOK)
	return int(resp.ContentLength)
}

// While a collection sweeps, manifest pushes and deletes get 503 with
// Retry-After; pulls and layer uploads go on.
func TestPushDuringCollectionIs503(t *testing.T) {
	dir := t.TempDir()
	reg, base := gcRegistry(t, dir)
	layer, kept := pushImage(t, base, "app", "1", "bearer:"+userToken)
	pushImage(t, base, "app", "2", "bearer:"+userToken)
	age(t, dir, 2*time.Hour)
	ran := false
	reg.gc.whileShut = func() {
		ran = true
		m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":1},"layers":[]}`,
			manifestType, layer)
		resp := call(t, "PUT", base+"/v2/app/manifests/3", "bearer:"+userToken, []byte(m), "Content-Type", manifestType)
		if got := resp.Header.Get("Retry-After"); got != "1" {
			t.Errorf("Retry-After %q, want 1", got)
		}
		wantError(t, resp, http.StatusServiceUnavailable, "UNAVAILABLE", "berth's registry is collecting garbage")
		wantError(t, call(t, "DELETE", base+"/v2/app/manifests/"+kept, "bearer:"+userToken, nil),
			http.StatusServiceUnavailable, "UNAVAILABLE", "retry")
		wantStatus(t, call(t, "GET", base+"/v2/app/manifests/1", "bearer:"+userToken, nil, "Accept", manifestType), http.StatusOK)
		wantStatus(t, call(t, "GET", base+"/v2/app/blobs/"+layer, "bearer:"+userToken, nil), http.StatusOK)
		pushBlob(t, base, "app", "bearer:"+userToken, []byte("a layer uploaded during the sweep"))
	}
	res, err := reg.CollectGarbage(context.Background(), map[string]bool{kept: true}, time.Hour)
	if err != nil || !ran {
		t.Fatalf("collection: %v (hook ran: %v)", err, ran)
	}
	if res.Manifests != 1 {
		t.Errorf("deleted %d manifests, want 1 (app:2)", res.Manifests)
	}
	reg.gc.whileShut = nil
	// Open again: the push goes through.
	pushImage(t, base, "app", "3", "bearer:"+userToken)
}

// A manifest write in flight when a collection starts is waited for.
func TestShutWaitsForWritesInFlight(t *testing.T) {
	var g gcGate
	r := httptest.NewRequest("PUT", "/v2/a/manifests/1", nil)
	release, ok := g.admit(httptest.NewRecorder(), r)
	if !ok {
		t.Fatal("refused while open")
	}
	shut := make(chan error, 1)
	go func() { shut <- g.shut(context.Background(), time.Minute) }()
	select {
	case err := <-shut:
		t.Fatalf("shut returned (%v) with a write in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	if _, ok := g.admit(rec, r); ok || rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("admitted while shut: %v, %d", ok, rec.Code)
	}
	g.open()
	if _, ok := g.admit(httptest.NewRecorder(), r); !ok {
		t.Fatal("refused once open again")
	}
	// A write that never ends: the collection gives up, the gate opens.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.shut(ctx, time.Minute); err == nil {
		t.Fatal("shut with a write in flight and a cancelled context: no error")
	}
	if _, ok := g.admit(httptest.NewRecorder(), r); !ok {
		t.Fatal("refused after a shut that gave up")
	}
}

// The read-only window on a registry of 200 images in 20 repositories,
// half of them in use: logged (measured speed is in the benchmark).
func TestReadOnlyWindowIsShort(t *testing.T) {
	dir := t.TempDir()
	reg, base := gcRegistry(t, dir)
	inUse := map[string]bool{}
	for i := range 200 {
		_, d := pushImage(t, base, fmt.Sprintf("repo%d", i%20), fmt.Sprint(i), "bearer:"+userToken)
		if i%2 == 0 {
			inUse[d] = true
		}
	}
	age(t, dir, 2*time.Hour)
	res, err := reg.CollectGarbage(context.Background(), inUse, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifests != 100 || res.Blobs != 200 {
		t.Errorf("deleted %d manifests and %d blobs, want 100 and 200", res.Manifests, res.Blobs)
	}
	t.Logf("200 images, 100 deleted: %s", res)
}

func decodeJSON(t *testing.T, resp *http.Response, v any) {
	t.Helper()
	wantStatus(t, resp, http.StatusOK)
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}
