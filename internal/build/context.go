// Package build is the pure part of berth's image builds: the build
// context as a tar (a directory honouring .dockerignore, or a git commit's
// tree), the tag and revision of a build, and what the server adds on top
// of the built image to hold the revision.
package build

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// Dockerfile and DockerIgnore are the files at the context's root that a
// build reads; both are always sent, even when .dockerignore names them
// (Docker's rule).
const (
	Dockerfile   = "Dockerfile"
	DockerIgnore = ".dockerignore"
)

// ErrNoDockerfile: the context has no Dockerfile at its root.
var ErrNoDockerfile = errors.New("no Dockerfile at the root of the build context")

// ErrTooLarge: the context is over the size it may have.
var ErrTooLarge = errors.New("the build context is larger than the limit")

// mtime is every entry's modification time: the tar, and so the content
// hash of a directory's context, depends only on names, modes and bytes.
var mtime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Info describes a context written as a tar.
type Info struct {
	Size  int64  // bytes of the tar
	Hash  string // hex SHA-256 of the tar
	Files int    // entries other than directories
}

// contextWriter writes normalized tar entries, counting and hashing the
// bytes, and stops at max bytes (0: no limit).
type contextWriter struct {
	tw     *tar.Writer
	count  *countWriter
	hash   hash.Hash
	files  int
	dfSeen bool
}

type countWriter struct {
	w   io.Writer
	n   int64
	max int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.max > 0 && c.n+int64(len(p)) > c.max {
		return 0, fmt.Errorf("%w of %s", ErrTooLarge, Size(c.max))
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func newContextWriter(w io.Writer, max int64) *contextWriter {
	h := sha256.New()
	c := &countWriter{w: io.MultiWriter(w, h), max: max}
	return &contextWriter{tw: tar.NewWriter(c), count: c, hash: h}
}

// add writes one entry; name is slash-separated and relative to the root.
func (c *contextWriter) add(name string, mode fs.FileMode, size int64, link string, body io.Reader) error {
	hdr := &tar.Header{Name: name, Mode: int64(mode.Perm()), ModTime: mtime, Size: size, Format: tar.FormatPAX}
	switch {
	case mode.IsDir():
		hdr.Typeflag, hdr.Name, hdr.Size = tar.TypeDir, name+"/", 0
	case mode&fs.ModeSymlink != 0:
		hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeSymlink, link, 0
	case mode.IsRegular():
		hdr.Typeflag = tar.TypeReg
	default:
		return nil // sockets, devices, pipes: nothing a build can copy
	}
	if mode&fs.ModeSetuid != 0 {
		hdr.Mode |= 0o4000
	}
	if mode&fs.ModeSetgid != 0 {
		hdr.Mode |= 0o2000
	}
	if err := c.tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		return nil
	}
	c.files++
	if name == Dockerfile && hdr.Typeflag != tar.TypeDir {
		c.dfSeen = true
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	n, err := io.Copy(c.tw, body)
	if err == nil && n != size {
		err = fmt.Errorf("%s changed while it was read (%d bytes, then %d)", name, size, n)
	}
	return err
}

func (c *contextWriter) close() (Info, error) {
	if err := c.tw.Close(); err != nil {
		return Info{}, err
	}
	if !c.dfSeen {
		return Info{}, ErrNoDockerfile
	}
	return Info{Size: c.count.n, Hash: hex.EncodeToString(c.hash.Sum(nil)), Files: c.files}, nil
}

// WriteDir writes the directory dir as a build context to w: every file
// but those its .dockerignore excludes, in name order, with normalized
// headers (owner root, one fixed time), so that the same files make the
// same tar. It fails with ErrNoDockerfile when dir has no Dockerfile, and
// with ErrTooLarge past max bytes (0: no limit).
func WriteDir(w io.Writer, dir string, max int64) (Info, error) {
	if st, err := os.Stat(filepath.Join(dir, Dockerfile)); err != nil || st.IsDir() {
		return Info{}, fmt.Errorf("%s: %w", dir, ErrNoDockerfile)
	}
	ign, err := readIgnoreFile(filepath.Join(dir, DockerIgnore))
	if err != nil {
		return Info{}, err
	}
	c := newContextWriter(w, max)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		name := filepath.ToSlash(rel)
		if ign.excluded(name) {
			if d.IsDir() && !ign.hasExceptions() {
				return filepath.SkipDir
			}
			return nil
		}
		return addFile(c, p, name, d)
	})
	if err != nil {
		return Info{}, fmt.Errorf("build context of %s: %w", dir, err)
	}
	return c.close()
}

func addFile(c *contextWriter, p, name string, d fs.DirEntry) error {
	info, err := d.Info()
	if err != nil {
		return err
	}
	mode := info.Mode()
	switch {
	case mode&fs.ModeSymlink != 0:
		link, err := os.Readlink(p)
		if err != nil {
			return err
		}
		return c.add(name, mode, 0, link, nil)
	case mode.IsRegular():
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return c.add(name, mode, info.Size(), "", f)
	}
	return c.add(name, mode, 0, "", nil)
}

// FilterTar copies the tar r to w as a build context: only the entries
// under prefix (a slash-separated directory, "" for all), renamed to
// be relative to it, and not excluded by ignore (the .dockerignore's
// patterns, nil for none); headers are normalized as WriteDir does.
func FilterTar(w io.Writer, r io.Reader, prefix string, ignore []string, max int64) (Info, error) {
	ign, err := newIgnore(ignore)
	if err != nil {
		return Info{}, err
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	c := newContextWriter(w, max)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Info{}, fmt.Errorf("read the archive: %w", err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name := path.Clean(hdr.Name)
		if !strings.HasPrefix(name+"/", prefix) || name+"/" == prefix || name == "." {
			continue // outside the context's directory, or the directory itself
		}
		name = strings.TrimPrefix(name, prefix)
		if ign.excluded(name) {
			continue
		}
		if err := c.add(name, hdr.FileInfo().Mode(), hdr.Size, hdr.Linkname, tr); err != nil {
			return Info{}, err
		}
	}
	return c.close()
}

// HasDockerfile reads a context tar to its end and reports whether it has
// a Dockerfile at its root; an error is a tar that is not one.
func HasDockerfile(r io.Reader) (bool, error) {
	tr := tar.NewReader(r)
	found := false
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			_, err = io.Copy(io.Discard, r) // the end's padding
			return found, err
		}
		if err != nil {
			return false, fmt.Errorf("the build context is not a tar archive: %w", err)
		}
		if path.Clean(hdr.Name) == Dockerfile && hdr.Typeflag != tar.TypeDir {
			found = true
		}
	}
}

// Size renders a byte count as the CLI shows sizes ("500 MiB", "1.2 KiB").
func Size(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return trimUnit(float64(n)/(1<<10), "KiB")
	case n < 1<<30:
		return trimUnit(float64(n)/(1<<20), "MiB")
	}
	return trimUnit(float64(n)/(1<<30), "GiB")
}

func trimUnit(v float64, unit string) string {
	s := fmt.Sprintf("%.1f", v)
	return strings.TrimSuffix(s, ".0") + " " + unit
}
