package imagecopy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"sync"
	"time"
)

var (
	repoRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// uploads is how many blobs go up at once.
const uploads = 2

// pusher is one Push.
type pusher struct {
	t      Target
	base   string
	repo   string
	client httpDoer
	opts   Options
	gzip   bool
	stream bool // layers go into the registry as they are read (streamable)
	read   *counter

	mu      sync.Mutex         // progress calls, blobs
	blobs   map[string]*upload // by digest: each uploaded once
	order   []*upload          // as started
	sem     chan struct{}
	cancel  context.CancelFunc
	started time.Time
}

// upload is one blob's way into the registry.
type upload struct {
	f        *file
	done     chan struct{}
	uploaded bool
	err      error
}

func (p *pusher) run(ctx context.Context, save io.Reader, tag string) (Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.cancel, p.started = cancel, time.Now()
	p.blobs, p.sem = map[string]*upload{}, make(chan struct{}, uploads)
	p.read = &counter{r: save}
	dir, err := os.MkdirTemp("", "berth-imagecopy-")
	if err != nil {
		return Result{}, fmt.Errorf("push %s:%s: spool directory: %w", p.repo, tag, err)
	}
	defer os.RemoveAll(dir)
	var spooled []*file
	defer func() { // spooled files are closed once every upload has ended
		p.waitAll()
		for _, f := range spooled {
			f.tmp.Close()
		}
	}()
	p.stream = p.streamable(ctx, p.opts.Layers)
	manifestJSON, files, err := readSave(ctx, p.read, func(name string, size int64, r io.Reader) (*file, error) {
		if p.stream && path.Base(name) == "layer.tar" {
			return p.streamBlob(ctx, name, size, r)
		}
		f, err := spool(r, dir, name, p.gzip)
		if err != nil {
			return nil, err
		}
		spooled = append(spooled, f)
		p.start(ctx, f)
		return f, nil
	})
	if err != nil {
		if cerr := p.firstError(); cerr != nil {
			err = cerr // the read stopped because an upload failed
		}
		return Result{}, fmt.Errorf("push %s:%s: %w", p.repo, tag, err)
	}
	res, err := p.finish(ctx, manifestJSON, files, tag)
	if errors.Is(err, context.Canceled) {
		if cerr := p.firstError(); cerr != nil {
			err = cerr // an upload failed, and stopped the others
		}
	}
	if err != nil {
		return Result{}, fmt.Errorf("push %s:%s: %w", p.repo, tag, err)
	}
	return res, nil
}

// finish checks the save's image, uploads what is still missing and puts
// the manifest.
func (p *pusher) finish(ctx context.Context, manifestJSON []byte, files map[string]*file, tag string) (Result, error) {
	sm, err := parseSaveManifest(manifestJSON)
	if err != nil {
		return Result{}, err
	}
	cf, ok := files[sm.Config]
	if !ok {
		return Result{}, fmt.Errorf("the save lacks the config %s that its manifest.json names", sm.Config)
	}
	rawConfig, err := cf.raw(maxManifestLen)
	if err != nil {
		return Result{}, fmt.Errorf("read the config %s: %w", sm.Config, err)
	}
	var cfg imageConfig
	if err := json.Unmarshal(rawConfig, &cfg); err != nil {
		return Result{}, fmt.Errorf("the image config %s: %w", sm.Config, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(sm.Layers) {
		return Result{}, fmt.Errorf("the image config lists %d layers, the save's manifest.json %d", len(cfg.RootFS.DiffIDs), len(sm.Layers))
	}
	layers := make([]*upload, len(sm.Layers))
	for i, name := range sm.Layers {
		f, ok := files[name]
		if !ok {
			return Result{}, fmt.Errorf("the save lacks layer %d of %d (%s) that its manifest.json names", i+1, len(sm.Layers), name)
		}
		f.asLayer(p.gzip)
		if f.diffID != cfg.RootFS.DiffIDs[i] {
			return Result{}, fmt.Errorf("layer %d of %d (%s) is %s, the image config says %s: the save is damaged", i+1, len(sm.Layers), name, f.diffID, cfg.RootFS.DiffIDs[i])
		}
		layers[i] = p.start(ctx, f)
	}
	if add := p.opts.Add; add != nil {
		f, err := add.layer()
		if err != nil {
			return Result{}, err
		}
		f.asLayer(p.gzip)
		if rawConfig, err = add.config(rawConfig, f.diffID); err != nil {
			return Result{}, err
		}
		layers = append(layers, p.start(ctx, f))
		sm.Layers = append(sm.Layers, f.name)
	}
	config := p.start(ctx, cf.asConfig(rawConfig))
	doc := manifestDoc{SchemaVersion: 2, MediaType: ManifestType,
		Config: descriptor{MediaType: ConfigType, Size: config.f.size, Digest: config.f.digest}}
	res := Result{Layers: len(layers), Size: config.f.size}
	for i, u := range layers {
		if err := u.wait(ctx); err != nil {
			return Result{}, fmt.Errorf("layer %d of %d (%s, %s): %w", i+1, len(layers), sm.Layers[i], sizeText(u.f.size), err)
		}
		doc.Layers = append(doc.Layers, descriptor{MediaType: p.layerType(), Size: u.f.size, Digest: u.f.digest})
		res.Size += u.f.size
	}
	if err := config.wait(ctx); err != nil {
		return Result{}, fmt.Errorf("the image config (%s): %w", config.f.digest, err)
	}
	res.Uploaded = p.uploadedCount()
	body, _ := json.MarshalIndent(doc, "", "   ")
	if res.Digest, err = p.putManifest(ctx, tag, body); err != nil {
		return Result{}, err
	}
	res.Size += int64(len(body))
	return res, nil
}

func (p *pusher) layerType() string {
	if p.gzip {
		return LayerGzipType
	}
	return LayerType
}

// start begins a blob's upload (once per digest) and returns it.
func (p *pusher) start(ctx context.Context, f *file) *upload {
	p.mu.Lock()
	defer p.mu.Unlock()
	if u, ok := p.blobs[f.digest]; ok {
		return u
	}
	u := &upload{f: f, done: make(chan struct{})}
	p.blobs[f.digest] = u
	p.order = append(p.order, u)
	go func() {
		defer close(u.done)
		select {
		case p.sem <- struct{}{}:
			defer func() { <-p.sem }()
		case <-ctx.Done():
			u.err = ctx.Err()
			return
		}
		u.uploaded, u.err = p.pushBlob(ctx, f)
		if u.err != nil {
			p.cancel() // stop reading the save and the other uploads
			return
		}
		p.report(Event{Blob: f.digest, Size: f.size, Uploaded: u.uploaded})
	}()
	return u
}

func (u *upload) wait(ctx context.Context) error {
	select {
	case <-u.done:
		return u.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *pusher) waitAll() {
	p.mu.Lock()
	us := append([]*upload(nil), p.order...)
	p.mu.Unlock()
	for _, u := range us {
		<-u.done
	}
}

// firstError is the error of a failed upload other than a cancellation,
// naming the file of the save it was.
func (p *pusher) firstError() error {
	p.waitAll()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range p.order {
		if u.err != nil && !errors.Is(u.err, context.Canceled) {
			return fmt.Errorf("%s of the save (%s, %s): %w", u.f.name, u.f.digest, sizeText(u.f.size), u.err)
		}
	}
	return nil
}

func (p *pusher) uploadedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, u := range p.blobs {
		if u.uploaded {
			n++
		}
	}
	return n
}

func (p *pusher) report(e Event) {
	if p.opts.Progress == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e.Read = p.read.n.Load()
	p.opts.Progress(e)
}

// sizeText is a size in human units (MiB with one decimal from 1 MiB).
func sizeText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
