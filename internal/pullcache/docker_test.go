package pullcache

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"berth/api"
	"berth/internal/registry"
	"berth/internal/testenv"
)

const testImage = "berth/busybox:1" // scripts/build-images.sh builds it

// needDocker stops a test that cannot run without a Docker engine:
// outside CI it skips, under CI=true it fails (test/e2e's rule).
func needDocker(t *testing.T) {
	t.Helper()
	out, err := dockerCLI(10*time.Second, "info", "--format", "{{.ServerVersion}}")
	if err == nil {
		return
	}
	testenv.Missing(t, fmt.Sprintf("no Docker engine answers (`docker info`: %v: %s); start one with scripts/docker-up.sh", err, strings.TrimSpace(out)))
}

func dockerCLI(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	return string(out), err
}

// The real thing: Docker pulls an image that exists only in berth's
// registry through the cache, runs it, and every blob costs the origin
// one request; after the image is removed, a pull by digest is served
// from the cache alone.
func TestDockerPullsThroughCache(t *testing.T) {
	needDocker(t)
	if _, err := dockerCLI(30*time.Second, "image", "inspect", testImage); err != nil {
		t.Fatalf("image %s missing; build it with scripts/build-images.sh --if-missing", testImage)
	}
	nonce := randomHex(t)
	img := imageFromSave(t, testImage, nonce)
	name, tag := "pctest/busybox-"+nonce[:12], "t1"

	reg := startRegistry(t)
	manifestDigest := reg.push(t, name, tag, img)

	cache, err := New(Config{Dir: t.TempDir(), Origins: []string{reg.url}, Token: func() string { return "agent-token" }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := cache.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- cache.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-served
		cache.Close()
	})

	ref := Reference(ln.Addr().String(), name+":"+tag)
	byDigest := Reference(ln.Addr().String(), name+"@"+manifestDigest)
	t.Cleanup(func() { dockerCLI(time.Minute, "rmi", "-f", ref, byDigest) })
	if out, err := dockerCLI(3*time.Minute, "pull", ref); err != nil {
		t.Fatalf("docker pull %s: %v\n%s", ref, err, out)
	}
	out, err := dockerCLI(time.Minute, "run", "--rm", "--network", "none", ref, "cat", "/nonce.txt")
	if err != nil || strings.TrimSpace(out) != nonce {
		t.Fatalf("docker run %s: %v: %q, want the nonce %q", ref, err, out, nonce)
	}

	s := cache.Stats()
	t.Logf("after the pull: %d blob requests to the origin, %d bytes; %d manifest requests", s.OriginBlobRequests, s.OriginBlobBytes, s.OriginManifestRequests)
	for _, b := range img.blobs {
		bs := s.Blobs[b.digest]
		if bs.OriginRequests != 1 || bs.OriginBytes != int64(len(b.data)) {
			t.Errorf("blob %s (%d bytes): origin requests %d, bytes %d; want 1 request of all of it", b.digest, len(b.data), bs.OriginRequests, bs.OriginBytes)
		}
	}
	if s.OriginBlobRequests != int64(len(img.blobs)) {
		t.Errorf("origin blob requests = %d, want %d (one per blob)", s.OriginBlobRequests, len(img.blobs))
	}

	// Gone from Docker, pulled again by digest: from the cache only.
	if out, err := dockerCLI(time.Minute, "rmi", ref); err != nil {
		t.Fatalf("docker rmi: %v\n%s", err, out)
	}
	if out, err := dockerCLI(3*time.Minute, "pull", byDigest); err != nil {
		t.Fatalf("docker pull %s: %v\n%s", byDigest, err, out)
	}
	after := cache.Stats()
	if after.OriginBlobRequests != s.OriginBlobRequests || after.ManifestHits < 1 {
		t.Errorf("pull by digest after rmi: origin blob requests %d -> %d, manifest hits %d; want no new origin request and a hit",
			s.OriginBlobRequests, after.OriginBlobRequests, after.ManifestHits)
	}
	if out, err := dockerCLI(time.Minute, "run", "--rm", "--network", "none", byDigest, "cat", "/nonce.txt"); err != nil || strings.TrimSpace(out) != nonce {
		t.Errorf("docker run %s: %v: %q", byDigest, err, out)
	}
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

type testBlob struct {
	digest, mediaType string
	data              []byte
}

// testImg is a schema2 image: its config blob first, then its layers.
type testImg struct {
	manifest []byte
	blobs    []testBlob
}

// imageFromSave turns `docker save image` into a schema2 image with one
// more layer holding /nonce.txt. The layers are gzipped with the nonce
// in their header, so their digests are new and Docker has to fetch
// every one of them (it skips a layer whose digest it has seen).
func imageFromSave(t *testing.T, image, nonce string) testImg {
	t.Helper()
	out, err := exec.Command("docker", "save", image).Output()
	if err != nil {
		t.Fatalf("docker save %s: %v", image, err)
	}
	files := untar(t, out)
	var saved []struct {
		Config string
		Layers []string
	}
	if err := json.Unmarshal(files["manifest.json"], &saved); err != nil || len(saved) != 1 {
		t.Fatalf("docker save's manifest.json: %v (%d images)", err, len(saved))
	}
	var config map[string]any
	if err := json.Unmarshal(files[saved[0].Config], &config); err != nil {
		t.Fatalf("image config: %v", err)
	}
	var layers [][]byte
	for _, l := range saved[0].Layers {
		layers = append(layers, files[l])
	}
	extra := tarOf(t, "nonce.txt", nonce+"\n")
	layers = append(layers, extra)
	rootfs := config["rootfs"].(map[string]any)
	rootfs["diff_ids"] = append(rootfs["diff_ids"].([]any), digestOf(extra))
	history, _ := config["history"].([]any)
	config["history"] = append(history, map[string]any{"created": time.Now().UTC().Format(time.RFC3339), "created_by": "pullcache test: /nonce.txt"})
	configJSON, _ := json.Marshal(config)

	img := testImg{blobs: []testBlob{{digestOf(configJSON), "application/vnd.docker.container.image.v1+json", configJSON}}}
	for _, l := range layers {
		gz := gzipWithComment(t, l, nonce)
		img.blobs = append(img.blobs, testBlob{digestOf(gz), "application/vnd.docker.image.rootfs.diff.tar.gzip", gz})
	}
	desc := func(b testBlob) map[string]any {
		return map[string]any{"mediaType": b.mediaType, "size": len(b.data), "digest": b.digest}
	}
	var layerDescs []any
	for _, b := range img.blobs[1:] {
		layerDescs = append(layerDescs, desc(b))
	}
	img.manifest, _ = json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": schema2Type, "config": desc(img.blobs[0]), "layers": layerDescs,
	})
	return img
}

func untar(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatalf("reading docker save's tar: %v", err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
}

func tarOf(t *testing.T, name, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
	tw.Write([]byte(content))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipWithComment(t *testing.T, data []byte, comment string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Comment = comment
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// testRegistry is berth's own registry (internal/registry) on loopback:
// "user-token" may push, "agent-token" only pull.
type testRegistry struct {
	url string
}

func startRegistry(t *testing.T) *testRegistry {
	t.Helper()
	reg, err := registry.New(registry.Config{
		Dir: t.TempDir(),
		Authorize: func(_ context.Context, token string) (string, error) {
			switch token {
			case "user-token":
				return api.RoleUser, nil
			case "agent-token":
				return api.RoleAgent, nil
			}
			return "", nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(reg)
	t.Cleanup(func() {
		srv.Close()
		reg.Close()
	})
	return &testRegistry{url: srv.URL}
}

// push uploads the image's blobs (monolithic POST then PUT) and its
// manifest under tag; it returns the manifest's digest.
func (r *testRegistry) push(t *testing.T, name, tag string, img testImg) string {
	t.Helper()
	for _, b := range img.blobs {
		resp := r.do(t, "POST", r.url+"/v2/"+name+"/blobs/uploads/", "", nil, http.StatusAccepted)
		loc, err := url.Parse(r.url)
		if err == nil {
			loc, err = loc.Parse(resp.Header.Get("Location"))
		}
		if err != nil {
			t.Fatalf("upload location %q: %v", resp.Header.Get("Location"), err)
		}
		q := loc.Query()
		q.Set("digest", b.digest)
		loc.RawQuery = q.Encode()
		r.do(t, "PUT", loc.String(), "application/octet-stream", b.data, http.StatusCreated)
	}
	r.do(t, "PUT", r.url+"/v2/"+name+"/manifests/"+tag, schema2Type, img.manifest, http.StatusCreated)
	return digestOf(img.manifest)
}

func (r *testRegistry) do(t *testing.T, method, u, contentType string, body []byte, want int) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer user-token")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s %s, want %d", method, u, resp.Status, msg, want)
	}
	return resp
}
