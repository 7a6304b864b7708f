package imagecopy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strings"
	"sync/atomic"
)

// smallFile is the size up to which a file of the save is kept in memory
// (configs, VERSION and json files, empty layers); larger ones are spooled.
const smallFile = 1 << 20

// file is one regular file of the save, in memory or spooled.
type file struct {
	name   string
	data   []byte   // a small file, as read
	tmp    *os.File // a spooled file, as it is stored (compressed when gz)
	gz     bool     // tmp holds the file gzip-compressed
	size   int64    // bytes as stored
	digest string   // of the bytes as stored
	diffID string   // sha256 of the bytes as read
}

// stored returns a reader of the file's bytes as they are uploaded.
func (f *file) stored() io.Reader {
	if f.tmp != nil {
		return io.NewSectionReader(f.tmp, 0, f.size)
	}
	return bytes.NewReader(f.data)
}

// raw returns the file's bytes as read from the save (a config is parsed
// from them), at most max of them.
func (f *file) raw(max int64) ([]byte, error) {
	if f.tmp == nil {
		return f.data, nil
	}
	var r io.Reader = io.NewSectionReader(f.tmp, 0, f.size)
	if f.gz {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		r = zr
	}
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("larger than %d bytes", max)
	}
	return b, err
}

// counter counts the bytes read through it.
type counter struct {
	r io.Reader
	n atomic.Int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// readSave reads the save's files: manifest.json's bytes, and each other
// regular file by its name. big takes each file over smallFile bytes from
// the save (it spools it, or streams it into the registry).
func readSave(ctx context.Context, r io.Reader, big func(name string, size int64, r io.Reader) (*file, error)) ([]byte, map[string]*file, error) {
	tr := tar.NewReader(r)
	files := map[string]*file{}
	var manifest []byte
	for {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read the image from the save (is it a docker save tar?): %w", err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		switch {
		case name == "manifest.json":
			if manifest, err = readSmall(tr, maxManifestLen); err != nil {
				return nil, nil, fmt.Errorf("read the save's manifest.json: %w", err)
			}
		case hdr.Size <= smallFile:
			f := &file{name: name}
			if f.data, err = readSmall(tr, smallFile); err != nil {
				return nil, nil, fmt.Errorf("read %s from the save: %w", name, err)
			}
			files[name] = f
		default:
			f, err := big(name, hdr.Size, tr)
			if err != nil {
				return nil, nil, err
			}
			files[name] = f
		}
	}
	if manifest == nil {
		return nil, nil, errors.New("the save has no manifest.json (is it a docker save tar?)")
	}
	return manifest, files, nil
}

func readSmall(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("larger than %d bytes", max)
	}
	return b, err
}

// spool copies one file of the save to a temporary file in dir, computing
// the digests of its bytes as read and as stored (gzip-compressed when gz).
func spool(r io.Reader, dir, name string, gz bool) (*file, error) {
	tmp, err := os.CreateTemp(dir, "blob-*")
	if err != nil {
		return nil, fmt.Errorf("spool %s of the save: %w", name, err)
	}
	f := &file{name: name, tmp: tmp, gz: gz}
	rawSum, storedSum := sha256.New(), sha256.New()
	out := &countWriter{w: io.MultiWriter(tmp, storedSum)}
	if gz {
		zw, _ := gzip.NewWriterLevel(out, gzip.BestSpeed)
		_, err = io.Copy(io.MultiWriter(zw, rawSum), r)
		if err == nil {
			err = zw.Close()
		}
	} else {
		storedSum = rawSum // the same bytes: hashed once
		out.w = tmp
		_, err = io.Copy(io.MultiWriter(out, rawSum), r)
	}
	if err != nil {
		tmp.Close()
		return nil, fmt.Errorf("spool %s of the save: %w", name, err)
	}
	f.size = out.n
	f.diffID = digestOf(rawSum)
	f.digest = digestOf(storedSum)
	return f, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

// asLayer makes a small file ready to upload as a layer: digests computed,
// compressed when gz.
func (f *file) asLayer(gz bool) {
	if f.tmp != nil || f.digest != "" {
		return
	}
	f.diffID = sha256Hex(f.data)
	if gz {
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
		zw.Write(f.data)
		zw.Close()
		f.data, f.gz = b.Bytes(), true
	}
	f.size, f.digest = int64(len(f.data)), sha256Hex(f.data)
}

// asConfig makes a file ready to upload as the config: never compressed.
func (f *file) asConfig(raw []byte) *file {
	return &file{name: f.name, data: raw, size: int64(len(raw)), digest: sha256Hex(raw), diffID: sha256Hex(raw)}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}
