package fake

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strings"

	"berth/internal/runtime"
)

var _ runtime.Builder = (*Runtime)(nil)

// Build reads the context, writes one "Step i/n : <instruction>" line per
// Dockerfile line to log, and makes an image whose single layer holds the
// context's files. A step "RUN false" fails the build as the engine does,
// a context without a Dockerfile too; "RUN wait" runs until ctx ends. The image id is a hash of the
// context and the labels, so the same build makes the same id.
func (r *Runtime) Build(ctx context.Context, buildContext io.Reader, opts runtime.BuildOptions, log io.Writer) (string, error) {
	data, err := io.ReadAll(buildContext)
	if err != nil {
		return "", fmt.Errorf("build: read the context: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	files, err := contextFiles(data)
	if err != nil {
		return "", fmt.Errorf("%w: %v", runtime.ErrBuildFailed, err)
	}
	df, ok := files["Dockerfile"]
	if !ok {
		fmt.Fprintln(log, "Cannot locate specified Dockerfile: Dockerfile")
		return "", fmt.Errorf("%w: Cannot locate specified Dockerfile: Dockerfile", runtime.ErrBuildFailed)
	}
	var steps []string
	for _, line := range strings.Split(string(df), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			steps = append(steps, line)
		}
	}
	for i, step := range steps {
		fmt.Fprintf(log, "Step %d/%d : %s\n", i+1, len(steps), step)
		if step == "RUN wait" { // until the build is stopped
			<-ctx.Done()
			return "", ctx.Err()
		}
		if step == "RUN false" {
			msg := "The command '/bin/sh -c false' returned a non-zero code: 1"
			fmt.Fprintln(log, msg)
			return "", fmt.Errorf("%w: %s", runtime.ErrBuildFailed, msg)
		}
	}
	save, id, err := saveTar(files, opts.Labels)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(log, "Successfully built %s\n", strings.TrimPrefix(id, "sha256:")[:12])
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.built == nil {
		r.built = map[string][]byte{}
	}
	r.built[id] = save
	return id, nil
}

// SaveImage streams an image Build made, as `docker save` writes it.
func (r *Runtime) SaveImage(ctx context.Context, imageID string) (io.ReadCloser, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	save, ok := r.built[imageID]
	if !ok {
		return nil, fmt.Errorf("image %s: %w", imageID, runtime.ErrImageNotFound)
	}
	return io.NopCloser(bytes.NewReader(save)), nil
}

// BuiltFile returns a file of a built image's layer (what a COPY put
// there), for tests.
func (r *Runtime) BuiltFile(imageID, name string) ([]byte, bool) {
	r.mu.Lock()
	save := r.built[imageID]
	r.mu.Unlock()
	layer, err := contextFiles(save)
	if err != nil {
		return nil, false
	}
	files, err := contextFiles(layer["layer/layer.tar"])
	if err != nil {
		return nil, false
	}
	b, ok := files[name]
	return b, ok
}

// contextFiles reads a tar's regular files by cleaned name.
func contextFiles(data []byte) (map[string][]byte, error) {
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("the build context is not a tar: %w", err)
		}
		if hdr.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, err
			}
			files[path.Clean(hdr.Name)] = b
		}
	}
}

// saveTar makes a `docker save` tar of one image whose layer holds files
// (REVISION as /app/REVISION, as the revision build puts it).
func saveTar(files map[string][]byte, labels map[string]string) ([]byte, string, error) {
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		target := name
		if name == "REVISION" {
			target = "app/REVISION"
		}
		if err := lw.WriteHeader(&tar.Header{Name: target, Mode: 0o644, Size: int64(len(files[name])), Typeflag: tar.TypeReg}); err != nil {
			return nil, "", err
		}
		_, _ = lw.Write(files[name])
	}
	_ = lw.Close()
	layerSum := sha256.Sum256(layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Labels": labels},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(layerSum[:])}},
	})
	configSum := sha256.Sum256(config)
	id := "sha256:" + hex.EncodeToString(configSum[:])
	manifest, _ := json.Marshal([]map[string]any{{
		"Config": hex.EncodeToString(configSum[:]) + ".json", "RepoTags": nil, "Layers": []string{"layer/layer.tar"},
	}})
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for _, f := range []struct {
		name string
		body []byte
	}{{"layer/layer.tar", layer.Bytes()}, {hex.EncodeToString(configSum[:]) + ".json", config}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg}); err != nil {
			return nil, "", err
		}
		_, _ = tw.Write(f.body)
	}
	_ = tw.Close()
	return out.Bytes(), id, nil
}
