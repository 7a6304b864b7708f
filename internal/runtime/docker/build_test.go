package docker

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/moby/moby/client"

	"berth/internal/runtime"
)

func buildContext(t *testing.T, dockerfile string) io.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	_, _ = tw.Write([]byte(dockerfile))
	_ = tw.Close()
	return &buf
}

// The engine builds a streamed context with each step capped at the
// memory asked for; the log is the build's output; the image is saved.
func TestBuildStepsAreCapped(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	df := "FROM " + e.image + "\nRUN echo step-output-" + runID + " && (cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)\n"
	var log bytes.Buffer
	id, err := e.r.Build(ctx, buildContext(t, df), runtime.BuildOptions{MemoryBytes: 96 << 20, NanoCPUs: 500_000_000,
		Labels: map[string]string{"berth.test.label": "yes"}}, &log)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, log.String())
	}
	t.Cleanup(func() {
		_, _ = e.r.cli.ImageRemove(t.Context(), id, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	})
	for _, want := range []string{"Step 1/3 : FROM " + e.image, "step-output-" + runID, "100663296", "Successfully built"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the build's log lacks %q:\n%s", want, log.String())
		}
	}
	img, err := e.r.cli.ImageInspect(ctx, id)
	if err != nil || img.Config == nil || img.Config.Labels["berth.test.label"] != "yes" {
		t.Fatalf("the built image: %+v %v", img.Config, err)
	}
	rc, err := e.r.SaveImage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil || n == 0 {
		t.Fatalf("save: %d bytes, %v", n, err)
	}
}

// A step that fails is the build's failure, in the engine's words.
func TestBuildFailureIsTheBuilds(t *testing.T) {
	e := newEnv(t)
	var log bytes.Buffer
	_, err := e.r.Build(t.Context(), buildContext(t, "FROM "+e.image+"\nRUN exit 3\n"), runtime.BuildOptions{MemoryBytes: 64 << 20}, &log)
	if !errors.Is(err, runtime.ErrBuildFailed) || !strings.Contains(err.Error(), "returned a non-zero code: 3") {
		t.Fatalf("build: %v; want ErrBuildFailed with the step's exit code", err)
	}
	if !strings.Contains(log.String(), "returned a non-zero code: 3") {
		t.Errorf("the log lacks the error:\n%s", log.String())
	}
	_, err = e.r.Build(t.Context(), buildContext(t, "FORM scratch\n"), runtime.BuildOptions{}, io.Discard)
	if !errors.Is(err, runtime.ErrBuildFailed) || !strings.Contains(err.Error(), "unknown instruction") {
		t.Fatalf("a Dockerfile that does not parse: %v", err)
	}
}

func TestReadBuildStream(t *testing.T) {
	var log bytes.Buffer
	id, err := readBuildStream(strings.NewReader(`{"stream":"Step 1/1 : FROM x\n"}
{"status":"Pulling from library/x","id":"1"}
{"status":"Downloading","progressDetail":{"current":10,"total":100},"id":"abc"}
{"aux":{"ID":"sha256:0123"}}
{"stream":"Successfully built 0123\n"}
`), &log)
	if err != nil || id != "sha256:0123" || log.String() != "Step 1/1 : FROM x\n1: Pulling from library/x\nSuccessfully built 0123\n" {
		t.Fatalf("id %q, err %v, log %q", id, err, log.String())
	}
	_, err = readBuildStream(strings.NewReader(`{"stream":"Step 1/1 : RUN false\n"}`+"\n"+`{"errorDetail":{"code":1,"message":"The command '/bin/sh -c false' returned a non-zero code: 1"},"error":"The command '/bin/sh -c false' returned a non-zero code: 1"}`), io.Discard)
	if !errors.Is(err, runtime.ErrBuildFailed) {
		t.Fatalf("an error in the stream: %v", err)
	}
	if _, err := readBuildStream(strings.NewReader(`{"stream":"x\n"}`), io.Discard); err == nil || errors.Is(err, runtime.ErrBuildFailed) {
		t.Fatalf("a stream without an id: %v; want the engine's failure", err)
	}
}
