package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/build"
	"github.com/moby/moby/client"

	"berth/internal/runtime"
)

var _ runtime.Builder = (*Runtime)(nil)

// cpuPeriod is the CFS period the build's CPU quota is counted in (the
// kernel's default, 100 ms).
const cpuPeriod = 100_000

// Build runs the engine's classic builder (POST /build) on the context
// as it streams in, with each step's container capped at the options'
// memory (and no swap beyond it) and CPUs. Intermediate containers are
// removed, even after a failed step. The build's output (its "stream"
// lines, and pull statuses without their progress bars) goes to log; the
// image is not tagged: the id is what the caller pushes.
func (r *Runtime) Build(ctx context.Context, buildContext io.Reader, opts runtime.BuildOptions, log io.Writer) (string, error) {
	o := client.ImageBuildOptions{
		Remove: true, ForceRemove: true,
		Memory: opts.MemoryBytes, MemorySwap: opts.MemoryBytes,
		Labels:  opts.Labels,
		Version: build.BuilderV1,
	}
	if opts.NanoCPUs > 0 {
		o.CPUPeriod, o.CPUQuota = cpuPeriod, opts.NanoCPUs*cpuPeriod/1e9
	}
	res, err := r.cli.ImageBuild(ctx, buildContext, o)
	switch {
	case err == nil:
	case cerrdefs.IsInvalidArgument(err):
		return "", fmt.Errorf("%w: %s", runtime.ErrBuildFailed, strings.TrimPrefix(err.Error(), "Error response from daemon: "))
	default:
		return "", fmt.Errorf("build: %w", err)
	}
	defer res.Body.Close()
	stop := context.AfterFunc(ctx, func() { res.Body.Close() })
	defer stop()
	id, err := readBuildStream(res.Body, log)
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	return id, err
}

// buildMessage is one line of the build's JSON stream.
type buildMessage struct {
	Stream   string `json:"stream"`
	Status   string `json:"status"`
	ID       string `json:"id"`
	Progress *struct {
		Current int64 `json:"current"`
		Total   int64 `json:"total"`
	} `json:"progressDetail"`
	Error       string `json:"error"`
	ErrorDetail *struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
	Aux json.RawMessage `json:"aux"`
}

// readBuildStream copies the build's output to log and returns the id of
// the image it made. An error message in the stream is the build's own
// failure (runtime.ErrBuildFailed); a stream that breaks is the engine's.
func readBuildStream(body io.Reader, log io.Writer) (string, error) {
	dec := json.NewDecoder(body)
	id := ""
	for {
		var m buildMessage
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("read the build's output: %w", err)
		}
		switch {
		case m.ErrorDetail != nil || m.Error != "":
			msg := m.Error
			if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
				msg = m.ErrorDetail.Message
			}
			fmt.Fprintf(log, "%s\n", strings.TrimRight(msg, "\n"))
			return "", fmt.Errorf("%w: %s", runtime.ErrBuildFailed, strings.TrimSpace(msg))
		case m.Stream != "":
			_, _ = io.WriteString(log, m.Stream)
		case m.Status != "" && (m.Progress == nil || m.Progress.Total == 0 && m.Progress.Current == 0):
			line := m.Status
			if m.ID != "" {
				line = m.ID + ": " + line
			}
			fmt.Fprintln(log, line)
		}
		if len(m.Aux) > 0 {
			var aux struct{ ID string }
			if json.Unmarshal(m.Aux, &aux) == nil && aux.ID != "" {
				id = aux.ID
			}
		}
	}
	if id == "" {
		return "", errors.New("the engine's build ended without an image id")
	}
	return id, nil
}
