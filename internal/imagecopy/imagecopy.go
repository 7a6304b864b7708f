// Package imagecopy copies an image, as `docker save` writes it (a tar:
// manifest.json, the config, the layers), into a registry over the
// distribution API.
//
// The save is read once, as a stream. Docker (20.10) writes manifest.json
// last, so which file is a layer is only known at the end, and a layer's
// digest only once it has been read. Two ways, chosen per push:
//
//   - When the caller gives the layers' digests (Options.Layers, from the
//     engine's inspect) and the registry has none of them (a new image, or
//     the first push to a repository), every layer goes into the registry
//     as it is read: POST, a PATCH streaming its bytes, a PUT naming the
//     digest they had. Nothing waits for a whole layer.
//   - Otherwise every file over smallFile bytes is spooled to a temporary
//     file while its digest is computed (a layer is never held in memory),
//     then asked about by HEAD and uploaded only when the registry lacks
//     it, while the rest of the save is still being read.
//
// Small files are kept in memory. When the save ends, the config's
// diff_ids are checked against the layers, the blobs still missing are
// uploaded, then the config and the manifest (Docker's schema2).
//
// Layers go up as they are saved: uncompressed tars
// (application/vnd.docker.image.rootfs.diff.tar), which every Docker
// engine pulls. Measured on the 2-core machine berth is developed on,
// push then `docker pull` of a 100 MiB image over loopback took 1.9 s with
// uncompressed layers and 2.1 s with gzip (fastest level): gzip costs CPU on
// both ends and saves nothing on random bytes. Over a slow network to a
// compressible image gzip would win; that is not berth's case (the
// registry is on the servers, the pulls go through each node's cache).
package imagecopy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Media types of what Push writes.
const (
	ManifestType   = "application/vnd.docker.distribution.manifest.v2+json"
	ConfigType     = "application/vnd.docker.container.image.v1+json"
	LayerType      = "application/vnd.docker.image.rootfs.diff.tar"
	LayerGzipType  = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	maxManifestLen = 4 << 20 // manifest.json of a save, and the pushed manifest
)

// Target is the registry an image is pushed to.
type Target struct {
	Base   string       // registry base URL, e.g. http://127.0.0.1:7070 (the /v2/ API is under it)
	Token  string       // sent as Authorization: Bearer
	Client *http.Client // nil: a default client; HandlerClient serves requests in process
}

// Result says what a push did.
type Result struct {
	Digest   string // the manifest's digest
	Size     int64  // manifest + config + layers, as stored
	Layers   int
	Uploaded int // blobs (config and layers) the registry did not have already
}

// Event reports progress: every event carries the bytes of the save read
// so far; one with a Blob says that blob (a layer or the config) is in
// the registry now, uploaded or found there already.
type Event struct {
	Read     int64
	Blob     string // digest
	Size     int64  // of the blob as stored
	Uploaded bool   // false: the registry had it
}

// Push reads one image from save and pushes it as repo:tag (blobs that the
// registry has already are skipped by HEAD).
func Push(ctx context.Context, save io.Reader, t Target, repo, tag string) (Result, error) {
	return PushProgress(ctx, save, t, repo, tag, nil)
}

// PushProgress is Push that reports progress to progress (nil: none),
// called from one goroutine at a time.
func PushProgress(ctx context.Context, save io.Reader, t Target, repo, tag string, progress func(Event)) (Result, error) {
	return PushWith(ctx, save, t, repo, tag, Options{Progress: progress})
}

// Options are what PushWith may be told besides the image.
type Options struct {
	// Progress gets progress reports (nil: none), from one goroutine at a
	// time.
	Progress func(Event)
	// Layers are the image's layer digests (diff_ids) as the engine lists
	// them (docker image inspect's RootFS.Layers), when the caller knows
	// them. When the registry has none of them, the layers are streamed
	// into it as the save is read instead of spooled first (the digest of
	// a layer is known only at its end, too late to ask whether the
	// registry has it): faster, and still nothing is sent that the
	// registry had.
	Layers []string
	// Add is added on top of the saved image (nil: nothing).
	Add *Addition
}

// PushWith is Push with options.
func PushWith(ctx context.Context, save io.Reader, t Target, repo, tag string, o Options) (Result, error) {
	if err := checkName(repo, tag); err != nil {
		return Result{}, err
	}
	p := &pusher{t: t, repo: repo, client: defaultClient, opts: o, gzip: gzipLayers}
	if t.Client != nil {
		p.client = t.Client
	}
	p.base = strings.TrimRight(t.Base, "/")
	return p.run(ctx, save, tag)
}

// gzipLayers compresses layers before upload (see the package comment for
// why it is off; a test pushes both ways).
var gzipLayers = false

var defaultClient = &http.Client{Timeout: 0, Transport: &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	MaxIdleConnsPerHost:   8,
	ResponseHeaderTimeout: 5 * time.Minute,
}}

// checkName refuses a repository or tag the distribution-spec does not
// allow, before anything is read or sent.
func checkName(repo, tag string) error {
	if !repoRE.MatchString(repo) {
		return fmt.Errorf("repository %q: lower-case letters, digits and separators (. _ - /) only, like my/app", repo)
	}
	if !tagRE.MatchString(tag) {
		return fmt.Errorf("tag %q: up to 128 letters, digits, _ . or -, not starting with . or -", tag)
	}
	return nil
}

// saveManifest is one entry of a save's manifest.json.
type saveManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// imageConfig is the part of an image config Push checks.
type imageConfig struct {
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// parseSaveManifest reads manifest.json: exactly one image.
func parseSaveManifest(b []byte) (saveManifest, error) {
	var ms []saveManifest
	if err := json.Unmarshal(b, &ms); err != nil {
		return saveManifest{}, fmt.Errorf("the save's manifest.json: %w", err)
	}
	switch {
	case len(ms) == 0:
		return saveManifest{}, errors.New("the save holds no image (manifest.json is empty)")
	case len(ms) > 1:
		return saveManifest{}, fmt.Errorf("the save holds %d images; push one at a time", len(ms))
	case ms[0].Config == "":
		return saveManifest{}, errors.New("the save's manifest.json names no config")
	}
	return ms[0], nil
}

// descriptor is a blob as a manifest names it.
type descriptor struct {
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
	Digest    string `json:"digest"`
}

// manifestDoc is the schema2 manifest pushed.
type manifestDoc struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}
