package imagecopy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"strings"
	"testing"

	"berth/api"
	"berth/internal/registry"
)

const (
	userToken  = "0123456789ab.user-secret"
	agentToken = "ba9876543210.agent-secret"
)

func tokens(_ context.Context, tok string) (string, error) {
	switch tok {
	case userToken:
		return api.RoleUser, nil
	case agentToken:
		return api.RoleAgent, nil
	}
	return "", nil
}

// newRegistry is berth's registry in process, reached through HandlerClient.
func newRegistry(t *testing.T) Target {
	t.Helper()
	reg, err := registry.New(registry.Config{Dir: t.TempDir(), Authorize: tokens})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	return Target{Base: "http://registry.internal", Token: userToken, Client: HandlerClient(reg)}
}

// image is a save made by the test: files in Docker 20.10's order (layer
// directories, the config, manifest.json last).
type image struct {
	layers [][]byte
	config []byte
	files  map[string][]byte // extra or replacing files
	names  []string          // order of the tar
}

func newImage(seed int64, sizes ...int) *image {
	rnd := rand.New(rand.NewSource(seed))
	img := &image{files: map[string][]byte{}}
	var diffIDs []string
	for _, n := range sizes {
		b := make([]byte, n)
		rnd.Read(b)
		img.layers = append(img.layers, b)
		diffIDs = append(diffIDs, sha256Hex(b))
	}
	cfg := map[string]any{"architecture": "amd64", "os": "linux", "config": map[string]any{"Cmd": []string{"/bin/sh"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}}
	img.config, _ = json.Marshal(cfg)
	return img
}

func (img *image) save() []byte {
	var man saveManifest
	files := map[string][]byte{}
	var order []string
	add := func(name string, b []byte) { files[name] = b; order = append(order, name) }
	for i, l := range img.layers {
		dir := fmt.Sprintf("%064x", i+1)
		add(dir+"/VERSION", []byte("1.0"))
		add(dir+"/json", []byte(`{"id":"`+dir+`"}`))
		add(dir+"/layer.tar", l)
		man.Layers = append(man.Layers, dir+"/layer.tar")
	}
	man.Config = strings.TrimPrefix(sha256Hex(img.config), "sha256:") + ".json"
	man.RepoTags = []string{"my/app:1"}
	add(man.Config, img.config)
	mj, _ := json.Marshal([]saveManifest{man})
	add("manifest.json", mj)
	for name, b := range img.files {
		if _, ok := files[name]; !ok {
			order = append(order, name)
		}
		files[name] = b
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range order {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(files[name])), Typeflag: tar.TypeReg})
		tw.Write(files[name])
	}
	tw.Close()
	return buf.Bytes()
}

// get fetches a path of the registry with the user token.
func get(t *testing.T, tg Target, path string, accept string) ([]byte, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, tg.Base+path, nil)
	req.Header.Set("Authorization", "Bearer "+userToken)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := tg.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b, resp.Header
}

// checkPulled pulls repo:tag back and compares it with img.
func checkPulled(t *testing.T, tg Target, img *image, repo, tag string, res Result) {
	t.Helper()
	body, h := get(t, tg, "/v2/"+repo+"/manifests/"+tag, ManifestType)
	if got := h.Get("Docker-Content-Digest"); got != res.Digest || sha256Hex(body) != res.Digest {
		t.Fatalf("manifest digest: registry %s, body %s, push said %s", got, sha256Hex(body), res.Digest)
	}
	var doc manifestDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.MediaType != ManifestType || doc.Config.MediaType != ConfigType || len(doc.Layers) != len(img.layers) {
		t.Fatalf("manifest: %s", body)
	}
	if cfg, _ := get(t, tg, "/v2/"+repo+"/blobs/"+doc.Config.Digest, ""); !bytes.Equal(cfg, img.config) {
		t.Fatalf("config: got %s", cfg)
	}
	size := int64(len(body)) + doc.Config.Size
	for i, l := range doc.Layers {
		b, _ := get(t, tg, "/v2/"+repo+"/blobs/"+l.Digest, "")
		if l.MediaType == LayerGzipType {
			zr, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			b, _ = io.ReadAll(zr)
		}
		if !bytes.Equal(b, img.layers[i]) {
			t.Fatalf("layer %d: %d bytes back, %d pushed", i+1, len(b), len(img.layers[i]))
		}
		size += l.Size
	}
	if res.Size != size || res.Layers != len(img.layers) {
		t.Fatalf("result %+v, want size %d and %d layers", res, size, len(img.layers))
	}
}

// A save is pushed (a spooled layer, a small one, an empty one) and pulled
// back byte for byte; the second push uploads nothing.
func TestPushAndPullBack(t *testing.T) {
	for _, gz := range []bool{false, true} {
		t.Run(fmt.Sprintf("gzip=%v", gz), func(t *testing.T) {
			defer func(old bool) { gzipLayers = old }(gzipLayers)
			gzipLayers = gz
			tg := newRegistry(t)
			img := newImage(1, 3<<20+17, 5000, 0)
			var events []Event
			res, err := PushProgress(context.Background(), bytes.NewReader(img.save()), tg, "my/app", "1", func(e Event) { events = append(events, e) })
			if err != nil {
				t.Fatal(err)
			}
			checkPulled(t, tg, img, "my/app", "1", res)
			if res.Uploaded != 4 || len(events) != 4 {
				t.Fatalf("uploaded %d blobs with %d events, want 4 (3 layers and the config)", res.Uploaded, len(events))
			}
			for _, e := range events {
				if !e.Uploaded || e.Read == 0 {
					t.Fatalf("event %+v", e)
				}
			}
			again, err := Push(context.Background(), bytes.NewReader(img.save()), tg, "my/app", "2")
			if err != nil {
				t.Fatal(err)
			}
			if again.Uploaded != 0 || again.Digest != res.Digest {
				t.Fatalf("second push %+v, first %+v: want nothing uploaded and the same digest", again, res)
			}
		})
	}
}

// Two layers with the same bytes are one blob, uploaded once.
func TestSameLayerTwice(t *testing.T) {
	tg := newRegistry(t)
	img := newImage(2, 2<<20, 100)
	img.layers = append(img.layers, img.layers[0])
	var cfg map[string]any
	json.Unmarshal(img.config, &cfg)
	rootfs := cfg["rootfs"].(map[string]any)
	ids := rootfs["diff_ids"].([]any)
	rootfs["diff_ids"] = append(ids, ids[0])
	img.config, _ = json.Marshal(cfg)
	res, err := Push(context.Background(), bytes.NewReader(img.save()), tg, "dup", "x")
	if err != nil {
		t.Fatal(err)
	}
	checkPulled(t, tg, img, "dup", "x", res)
	if res.Uploaded != 3 {
		t.Fatalf("uploaded %d, want 3 (two distinct layers, the config)", res.Uploaded)
	}
}

// An agent token may not push: the error says the registry's refusal and
// names the blob.
func TestPushRefused(t *testing.T) {
	tg := newRegistry(t)
	tg.Token = agentToken
	_, err := Push(context.Background(), bytes.NewReader(newImage(3, 2<<20).save()), tg, "my/app", "1")
	var re *RegistryError
	if !errors.As(err, &re) || re.Status != http.StatusForbidden || re.Code != "DENIED" {
		t.Fatalf("err = %v, want a 403 DENIED", err)
	}
	// The uploads run at once: whichever fails first is named, a file of
	// the save (the config) or a layer.
	namesBlob := strings.Contains(err.Error(), "of the save (sha256:") || strings.Contains(err.Error(), "layer 1 of 1 (")
	if !namesBlob || !strings.Contains(err.Error(), "my/app:1") || !strings.Contains(err.Error(), "may only pull") {
		t.Fatalf("err %q does not name the blob, the image and why", err)
	}
	tg.Token = "nope"
	_, err = Push(context.Background(), bytes.NewReader(newImage(3, 100).save()), tg, "my/app", "1")
	if !errors.As(err, &re) || re.Status != http.StatusUnauthorized {
		t.Fatalf("err = %v, want a 401", err)
	}
}

// Saves that are not one good image are refused before the manifest is put.
func TestBadSaves(t *testing.T) {
	tg := newRegistry(t)
	damaged := newImage(4, 2<<20, 10)
	damaged.layers[1] = []byte("0123456789") // not what the config says
	noConfig := newImage(5, 10)
	noConfig.config = []byte(`{"rootfs":{"diff_ids":["sha256:00","sha256:01"]}}`)
	two := newImage(6, 10)
	mj, _ := json.Marshal([]saveManifest{{Config: "a.json"}, {Config: "b.json"}})
	two.files["manifest.json"] = mj
	for name, tc := range map[string]struct {
		save []byte
		want string
	}{
		"damaged":     {damaged.save(), "layer 2 of 2"},
		"layer count": {noConfig.save(), "lists 2 layers"},
		"two images":  {two.save(), "holds 2 images"},
		"not a tar":   {[]byte(strings.Repeat("x", 2000)), "docker save"},
		"no manifest": {tarOf("a.json", "{}"), "no manifest.json"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Push(context.Background(), bytes.NewReader(tc.save), tg, "bad", "1")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
			if _, _, code := head(tg, "/v2/bad/manifests/1"); code != http.StatusNotFound {
				t.Fatalf("a manifest was stored (%d)", code)
			}
		})
	}
}

func TestBadNames(t *testing.T) {
	for _, rt := range [][2]string{{"My/App", "1"}, {"app", "-x"}, {"", "1"}, {"a//b", "1"}} {
		_, err := Push(context.Background(), strings.NewReader(""), Target{Base: "http://x"}, rt[0], rt[1])
		if err == nil {
			t.Fatalf("%s:%s accepted", rt[0], rt[1])
		}
	}
}

func tarOf(name, content string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
	tw.Write([]byte(content))
	tw.Close()
	return buf.Bytes()
}

func head(tg Target, path string) (http.Header, int64, int) {
	req, _ := http.NewRequest(http.MethodHead, tg.Base+path, nil)
	req.Header.Set("Authorization", "Bearer "+userToken)
	req.Header.Set("Accept", ManifestType)
	resp, err := tg.Client.Do(req)
	if err != nil {
		return nil, 0, 0
	}
	resp.Body.Close()
	return resp.Header, resp.ContentLength, resp.StatusCode
}

// HandlerClient streams a response as the handler writes it.
func TestHandlerClientStreams(t *testing.T) {
	wrote := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Path", r.URL.Path)
		w.WriteHeader(http.StatusTeapot)
		w.Write([]byte("first"))
		<-wrote
		w.Write([]byte(" second"))
	})
	resp, err := HandlerClient(h).Get("http://in.process/a/b?c=d")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot || resp.Header.Get("X-Path") != "/a/b" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
		t.Fatalf("read %q, %v", buf, err)
	}
	close(wrote)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != " second" {
		t.Fatalf("rest %q", rest)
	}
}

// With the layers' digests given and none of them in the registry, the
// layers are streamed in as they are read; with one there already, they
// are spooled and the one there is not sent again.
func TestPushStreamsNewLayers(t *testing.T) {
	tg := newRegistry(t)
	img := newImage(7, 3<<20, 2<<20, 10)
	var cfg imageConfig
	json.Unmarshal(img.config, &cfg)
	p := &pusher{t: tg, base: tg.Base, repo: "stream", client: tg.Client}
	if !p.streamable(context.Background(), cfg.RootFS.DiffIDs) {
		t.Fatal("nothing is in the registry, yet the layers are not streamable")
	}
	var sent []string
	res, err := PushWith(context.Background(), bytes.NewReader(img.save()), tg, "stream", "1", Options{
		Layers:   cfg.RootFS.DiffIDs,
		Progress: func(e Event) { sent = append(sent, e.Blob) },
	})
	if err != nil {
		t.Fatal(err)
	}
	checkPulled(t, tg, img, "stream", "1", res)
	if res.Uploaded != 4 || len(sent) != 4 {
		t.Fatalf("uploaded %d, events %d; want 4", res.Uploaded, len(sent))
	}
	if p.streamable(context.Background(), cfg.RootFS.DiffIDs) {
		t.Fatal("the layers are in the registry now, yet streamable")
	}
	// A new top layer on the same base: only it (and the config) go up.
	top := newImage(8, 1<<20+5)
	img.layers = append(img.layers, top.layers[0])
	cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, sha256Hex(top.layers[0]))
	img.config, _ = json.Marshal(map[string]any{"rootfs": map[string]any{"type": "layers", "diff_ids": cfg.RootFS.DiffIDs}})
	res, err = PushWith(context.Background(), bytes.NewReader(img.save()), tg, "stream", "2", Options{Layers: cfg.RootFS.DiffIDs})
	if err != nil {
		t.Fatal(err)
	}
	checkPulled(t, tg, img, "stream", "2", res)
	if res.Uploaded != 2 {
		t.Fatalf("uploaded %d blobs; want 2 (the new layer, the config)", res.Uploaded)
	}
}

// An addition is one more layer holding its files, and labels in the
// config; the rest of the config is kept, and the same addition on the
// same image gives the same digest.
func TestPushWithAddition(t *testing.T) {
	tg := newRegistry(t)
	img := newImage(5, 4000, 100)
	var cfg map[string]any
	json.Unmarshal(img.config, &cfg)
	cfg["config"].(map[string]any)["Labels"] = map[string]string{"keep": "me", "org.opencontainers.image.revision": "user's"}
	cfg["history"] = []map[string]any{{"created_by": "COPY a"}, {"created_by": "COPY b"}}
	img.config, _ = json.Marshal(cfg)
	add := &Addition{Files: map[string]string{"/app/REVISION": "abc123"}, Labels: map[string]string{"org.opencontainers.image.revision": "abc123"}, CreatedBy: "berth: revision abc123"}
	res, err := PushWith(context.Background(), bytes.NewReader(img.save()), tg, "my/app", "abc123", Options{Add: add})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := get(t, tg, "/v2/my/app/manifests/abc123", ManifestType)
	var doc manifestDoc
	json.Unmarshal(body, &doc)
	if len(doc.Layers) != 3 || res.Layers != 3 {
		t.Fatalf("manifest has %d layers (result %d), want the image's 2 and the addition: %s", len(doc.Layers), res.Layers, body)
	}
	layer, _ := get(t, tg, "/v2/my/app/blobs/"+doc.Layers[2].Digest, "")
	tr := tar.NewReader(bytes.NewReader(layer))
	hdr, err := tr.Next()
	if err != nil || hdr.Name != "app/REVISION" || hdr.Mode != 0o644 {
		t.Fatalf("added layer: first entry %+v, err %v; want app/REVISION", hdr, err)
	}
	if b, _ := io.ReadAll(tr); string(b) != "abc123" {
		t.Fatalf("app/REVISION holds %q", b)
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("added layer: more than one entry (%v)", err)
	}
	raw, _ := get(t, tg, "/v2/my/app/blobs/"+doc.Config.Digest, "")
	var got struct {
		Architecture string
		Config       struct {
			Cmd    []string
			Labels map[string]string
		}
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
		History []struct {
			CreatedBy string `json:"created_by"`
		}
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	want := []string{sha256Hex(img.layers[0]), sha256Hex(img.layers[1]), sha256Hex(layer)}
	if fmt.Sprint(got.RootFS.DiffIDs) != fmt.Sprint(want) {
		t.Errorf("diff_ids %v, want %v", got.RootFS.DiffIDs, want)
	}
	if got.Config.Labels["keep"] != "me" || got.Config.Labels["org.opencontainers.image.revision"] != "abc123" {
		t.Errorf("labels %v: want the image's kept and the revision's set", got.Config.Labels)
	}
	if got.Architecture != "amd64" || len(got.Config.Cmd) != 1 || len(got.History) != 3 || got.History[2].CreatedBy != "berth: revision abc123" {
		t.Errorf("config not kept or history not extended: %s", raw)
	}
	again, err := PushWith(context.Background(), bytes.NewReader(img.save()), tg, "my/app", "again", Options{Add: add})
	if err != nil || again.Digest != res.Digest || again.Uploaded != 0 {
		t.Fatalf("the same push again: %+v, %v; want digest %s and nothing uploaded", again, err, res.Digest)
	}
	if _, err := PushWith(context.Background(), bytes.NewReader(img.save()), tg, "my/app", "bad", Options{Add: &Addition{Files: map[string]string{"../x": ""}}}); err == nil {
		t.Fatal("an added file outside the image: pushed")
	}
}
