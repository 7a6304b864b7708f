package imagecopy

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"regexp"
)

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// streamable reports whether the registry has none of the layers, asked
// by HEAD: then every layer is sent, and may be sent as it is read. Any
// doubt (no layers given, a layer there, an error) says no: the layers are
// spooled and asked about one by one, as without Options.Layers.
func (p *pusher) streamable(ctx context.Context, layers []string) bool {
	if len(layers) == 0 || p.gzip {
		return false
	}
	for _, d := range layers {
		if !digestRE.MatchString(d) {
			return false
		}
		resp, err := p.do(ctx, http.MethodHead, p.base+"/v2/"+p.repo+"/blobs/"+d, nil, -1, "")
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			return false
		}
	}
	return true
}

// streamBlob sends one file of the save into the registry as it is read
// (POST, a PATCH with the bytes, then the PUT that names the digest they
// turned out to have) and records it as uploaded.
func (p *pusher) streamBlob(ctx context.Context, name string, size int64, r io.Reader) (*file, error) {
	wrap := func(err error) error { return fmt.Errorf("%s of the save (%s): %w", name, sizeText(size), err) }
	resp, err := p.do(ctx, http.MethodPost, p.base+"/v2/"+p.repo+"/blobs/uploads/", nil, 0, "")
	if err != nil {
		return nil, wrap(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return nil, wrap(registryError("start the upload", resp))
	}
	loc, err := location(resp)
	if err != nil {
		return nil, wrap(err)
	}
	sum := sha256.New()
	body := io.TeeReader(r, sum)
	resp, err = p.do(ctx, http.MethodPatch, loc.String(), body, size, "application/octet-stream")
	if err != nil {
		return nil, wrap(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return nil, wrap(registryError("upload", resp))
	}
	f := &file{name: name, size: size, digest: digestOf(sum)}
	f.diffID = f.digest
	if loc, err = location(resp); err != nil {
		return nil, wrap(err)
	}
	resp, err = p.do(ctx, http.MethodPut, withDigest(loc, f.digest), nil, 0, "")
	if err != nil {
		return nil, wrap(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return nil, wrap(registryError("finish the upload", resp))
	}
	p.mu.Lock()
	if _, ok := p.blobs[f.digest]; !ok {
		u := &upload{f: f, done: make(chan struct{}), uploaded: true}
		close(u.done)
		p.blobs[f.digest] = u
		p.order = append(p.order, u)
	}
	p.mu.Unlock()
	p.report(Event{Blob: f.digest, Size: f.size, Uploaded: true})
	return f, nil
}
