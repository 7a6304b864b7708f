package imagecopy

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// Addition is what a push adds on top of the saved image, as a COPY and a
// LABEL at the end of its Dockerfile would, without running a build: one
// layer of small files and labels in the config. A build's revision
// (/app/REVISION and its label) is added this way; a second build on the
// engine cost seconds for a file of 40 bytes.
type Addition struct {
	Files     map[string]string // absolute path in the image -> content
	Labels    map[string]string
	CreatedBy string // the history entry of the added layer
}

// additionTime is the modification time of the added files, fixed so that
// the same addition is the same layer, stored once.
var additionTime = time.Unix(0, 0).UTC()

// layer is the added files as a layer tar. Their parent directories are
// not in it: an engine applying a layer creates the ones missing (0755)
// and leaves the ones there alone, as a COPY does.
func (a *Addition) layer() (*file, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	paths := make([]string, 0, len(a.Files))
	for p := range a.Files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		name := strings.TrimPrefix(path.Clean(p), "/")
		if !path.IsAbs(p) || name == "" || path.Clean(p) != p {
			return nil, fmt.Errorf("added file %q: want a clean absolute path", p)
		}
		body := a.Files[p]
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: additionTime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &file{name: "berth-addition/layer.tar", data: buf.Bytes()}, nil
}

// config returns the image config with the layer (by its diff id) and the
// labels added; every other field is kept as it was.
func (a *Addition) config(raw []byte, diffID string) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, fmt.Errorf("the image config: %w", err)
	}
	cc := map[string]json.RawMessage{}
	if err := unmarshalOptional(top["config"], &cc); err != nil {
		return nil, fmt.Errorf("the image config's config: %w", err)
	}
	labels := map[string]string{}
	if err := unmarshalOptional(cc["Labels"], &labels); err != nil {
		return nil, fmt.Errorf("the image config's labels: %w", err)
	}
	for k, v := range a.Labels {
		labels[k] = v
	}
	var rootfs struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	}
	if err := unmarshalOptional(top["rootfs"], &rootfs); err != nil {
		return nil, fmt.Errorf("the image config's rootfs: %w", err)
	}
	rootfs.DiffIDs = append(rootfs.DiffIDs, diffID)
	var history []json.RawMessage
	if err := unmarshalOptional(top["history"], &history); err != nil {
		return nil, fmt.Errorf("the image config's history: %w", err)
	}
	entry, _ := json.Marshal(map[string]string{"created_by": a.CreatedBy})
	history = append(history, entry)

	cc["Labels"] = mustJSON(labels)
	top["config"] = mustJSON(cc)
	top["rootfs"] = mustJSON(rootfs)
	top["history"] = mustJSON(history)
	return json.Marshal(top)
}

func unmarshalOptional(b json.RawMessage, v any) error {
	if len(b) == 0 || string(b) == "null" {
		return nil
	}
	return json.Unmarshal(b, v)
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of strings and raw messages always marshal
	}
	return b
}
