// Package docker implements runtime.Runtime on a Docker engine. It is the
// only package in berth that talks to the Docker API.
package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"berth/internal/runtime"
)

// ErrConflict is runtime.ErrConflict, kept here for callers of this package.
var ErrConflict = runtime.ErrConflict

// imageCacheTTL is how long a successful EnsureImage is remembered.
const imageCacheTTL = 30 * time.Second

// listInspectConcurrency bounds the parallel inspects List makes.
const listInspectConcurrency = 8

var _ runtime.Runtime = (*Runtime)(nil)

// Runtime drives one Docker engine. It is safe for concurrent use.
type Runtime struct {
	cli    *client.Client
	images imageCache
}

// New connects to the engine at host (e.g. "unix:///var/run/docker.sock").
// An empty host means DOCKER_HOST or the default unix socket. The API
// version is negotiated with the engine on first use, so old engines
// (API 1.41) work. New does not contact the engine.
func New(host string) (*Runtime, error) {
	opts := []client.Opt{client.FromEnv}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return &Runtime{cli: cli, images: newImageCache()}, nil
}

// Close releases the client's idle connections.
func (r *Runtime) Close() error { return r.cli.Close() }

// Info describes the engine's host.
func (r *Runtime) Info(ctx context.Context) (runtime.Info, error) {
	res, err := r.cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return runtime.Info{}, fmt.Errorf("engine info: %w", err)
	}
	return runtime.Info{
		CPUs:        res.Info.NCPU,
		MemoryBytes: res.Info.MemTotal,
		Version:     res.Info.ServerVersion,
	}, nil
}

// ---- images ----

// EnsureImage makes ref present locally, pulling it with ctx if needed.
// Successes are cached for imageCacheTTL, and concurrent calls for the same
// ref share one inspect/pull. Every failure wraps runtime.ErrImageNotFound.
func (r *Runtime) EnsureImage(ctx context.Context, ref string) error {
	if r.images.fresh(ref) {
		return nil
	}
	call, leader := r.images.join(ref)
	if leader {
		call.err = r.ensureImage(ctx, ref)
		r.images.finish(ref, call)
		return call.err
	}
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return fmt.Errorf("image %s: waiting for pull: %v: %w", ref, ctx.Err(), runtime.ErrImageNotFound)
	}
}

func (r *Runtime) ensureImage(ctx context.Context, ref string) error {
	_, err := r.cli.ImageInspect(ctx, ref)
	if err == nil {
		return nil
	}
	if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("image %s: inspect failed: %v: %w", ref, err, runtime.ErrImageNotFound)
	}
	if err := r.pull(ctx, ref); err != nil {
		return fmt.Errorf("image %s: not present locally and pull failed: %v: %w", ref, err, runtime.ErrImageNotFound)
	}
	return nil
}

// pull pulls ref and drains the progress stream; errors reported inside the
// stream are returned.
func (r *Runtime) pull(ctx context.Context, ref string) error {
	resp, err := r.cli.ImagePull(ctx, ref, client.ImagePullOptions{})
	if err != nil {
		return err
	}
	defer resp.Close()
	return resp.Wait(ctx)
}

// imageCache remembers refs known to be present and deduplicates
// concurrent EnsureImage calls for one ref.
type imageCache struct {
	mu       sync.Mutex
	present  map[string]time.Time // ref -> expiry
	inflight map[string]*imageCall
}

type imageCall struct {
	done chan struct{}
	err  error
}

func newImageCache() imageCache {
	return imageCache{present: map[string]time.Time{}, inflight: map[string]*imageCall{}}
}

func (c *imageCache) fresh(ref string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Before(c.present[ref])
}

// join returns the in-flight call for ref, or starts one (leader = true).
func (c *imageCache) join(ref string) (call *imageCall, leader bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if call, ok := c.inflight[ref]; ok {
		return call, false
	}
	call = &imageCall{done: make(chan struct{})}
	c.inflight[ref] = call
	return call, true
}

func (c *imageCache) finish(ref string, call *imageCall) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.inflight, ref)
	if call.err == nil {
		c.present[ref] = time.Now().Add(imageCacheTTL)
	}
	close(call.done)
}

// ---- containers ----

// Create creates (but does not start) the container. A name already in use
// returns an error wrapping ErrConflict; a missing image one wrapping
// runtime.ErrImageNotFound; a configuration the engine refuses (400) one
// wrapping runtime.ErrInvalidSpec.
func (r *Runtime) Create(ctx context.Context, spec runtime.ContainerSpec) (string, error) {
	opts, err := createOptions(spec)
	if err != nil {
		return "", fmt.Errorf("create %s: %w: %w", spec.Name, runtime.ErrInvalidSpec, err)
	}
	res, err := r.cli.ContainerCreate(ctx, opts)
	switch {
	case err == nil:
		return res.ID, nil
	case cerrdefs.IsConflict(err):
		return "", fmt.Errorf("create %s: %w: %w", spec.Name, ErrConflict, err)
	case cerrdefs.IsNotFound(err):
		return "", fmt.Errorf("create %s: image %s: %w: %w", spec.Name, spec.Image, runtime.ErrImageNotFound, err)
	case cerrdefs.IsInvalidArgument(err):
		return "", fmt.Errorf("create %s: %w: %w", spec.Name, runtime.ErrInvalidSpec, err)
	default:
		return "", fmt.Errorf("create %s: %w", spec.Name, err)
	}
}

func createOptions(spec runtime.ContainerSpec) (client.ContainerCreateOptions, error) {
	cfg := &container.Config{
		Image:    spec.Image,
		Hostname: spec.Hostname,
		Env:      envList(spec.Env),
		Labels:   spec.Labels,
	}
	if len(spec.Command) > 0 {
		cfg.Cmd = spec.Command
	}
	useInit := spec.Init
	host := &container.HostConfig{
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
		Init:          &useInit,
		Resources:     resources(spec),
		Mounts:        mounts(spec.Mounts),
	}
	if spec.Port != 0 {
		port, binding, err := publish(spec.Port, spec.HostIP)
		if err != nil {
			return client.ContainerCreateOptions{}, err
		}
		cfg.ExposedPorts = network.PortSet{port: {}}
		host.PortBindings = network.PortMap{port: {binding}}
	}
	return client.ContainerCreateOptions{Name: spec.Name, Config: cfg, HostConfig: host}, nil
}

// envList renders env as sorted KEY=VALUE strings.
func envList(env map[string]string) []string {
	list := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		list = append(list, k+"="+env[k])
	}
	return list
}

func mounts(in []runtime.Mount) []mount.Mount {
	var out []mount.Mount
	for _, m := range in {
		out = append(out, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	return out
}

func resources(spec runtime.ContainerSpec) container.Resources {
	var res container.Resources
	if spec.NanoCPUs > 0 {
		res.NanoCPUs = spec.NanoCPUs
	}
	if spec.MemoryBytes > 0 {
		res.Memory = spec.MemoryBytes
	}
	if spec.PidsLimit > 0 {
		limit := spec.PidsLimit
		res.PidsLimit = &limit
	}
	return res
}

// publish returns the exposed port and its binding to an ephemeral host
// port on hostIP ("" = all addresses).
func publish(port int, hostIP string) (network.Port, network.PortBinding, error) {
	if port < 1 || port > math.MaxUint16 {
		return network.Port{}, network.PortBinding{}, fmt.Errorf("invalid port %d", port)
	}
	p, _ := network.PortFrom(uint16(port), network.TCP)
	var binding network.PortBinding
	if hostIP != "" {
		addr, err := netip.ParseAddr(hostIP)
		if err != nil {
			return network.Port{}, network.PortBinding{}, fmt.Errorf("invalid host IP %q: %w", hostIP, err)
		}
		binding.HostIP = addr
	}
	return p, binding, nil
}

// Start starts a created or stopped container.
func (r *Runtime) Start(ctx context.Context, id string) error {
	if _, err := r.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", short(id), notFound(err))
	}
	return nil
}

// Stop sends the stop signal (SIGTERM unless the image says otherwise) and
// SIGKILL after grace, rounded up to whole seconds. A missing or already
// stopped container is not an error.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) error {
	secs := max(0, int(math.Ceil(grace.Seconds())))
	_, err := r.cli.ContainerStop(ctx, id, client.ContainerStopOptions{Timeout: &secs})
	if err != nil && !cerrdefs.IsNotFound(err) && !cerrdefs.IsNotModified(err) {
		return fmt.Errorf("stop %s: %w", short(id), err)
	}
	return nil
}

// Remove force-removes the container with its anonymous volumes. A missing
// container is not an error.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	_, err := r.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove %s: %w", short(id), err)
	}
	return nil
}

// Inspect returns the container's current state. A missing container
// returns an error wrapping runtime.ErrNotFound.
func (r *Runtime) Inspect(ctx context.Context, id string) (runtime.Container, error) {
	res, err := r.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return runtime.Container{}, fmt.Errorf("inspect %s: %w", short(id), notFound(err))
	}
	return fromInspect(res.Container), nil
}

// Wait blocks until the container is not running and returns its final
// state. A missing container returns an error wrapping runtime.ErrNotFound.
func (r *Runtime) Wait(ctx context.Context, id string) (runtime.Container, error) {
	res := r.cli.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case <-res.Result:
	case err := <-res.Error:
		return runtime.Container{}, fmt.Errorf("wait for %s: %w", short(id), notFound(err))
	}
	return r.Inspect(ctx, id)
}

// List returns the containers (running or not) carrying all the given
// labels, newest first. The engine's list summary lacks the state details
// (exit code, OOM, times, error), so each container is also inspected and
// every field is filled as by Inspect. Containers removed meanwhile are
// left out.
func (r *Runtime) List(ctx context.Context, labels map[string]string) ([]runtime.Container, error) {
	filters := client.Filters{}
	for k, v := range labels {
		filters.Add("label", k+"="+v)
	}
	res, err := r.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: filters})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	return r.inspectAll(ctx, res.Items)
}

// inspectAll inspects the summaries' containers in parallel, keeping order
// and dropping the ones that no longer exist.
func (r *Runtime) inspectAll(ctx context.Context, items []container.Summary) ([]runtime.Container, error) {
	found := make([]runtime.Container, len(items))
	exists := make([]bool, len(items))
	errs := make([]error, len(items))
	sem := make(chan struct{}, listInspectConcurrency)
	var wg sync.WaitGroup
	for i, item := range items {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := r.Inspect(ctx, item.ID)
			switch {
			case err == nil:
				found[i], exists[i] = c, true
			case !errors.Is(err, runtime.ErrNotFound):
				errs[i] = err
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]runtime.Container, 0, len(items))
	for i := range found {
		if exists[i] {
			out = append(out, found[i])
		}
	}
	return out, nil
}

func fromInspect(in container.InspectResponse) runtime.Container {
	c := runtime.Container{
		ID:   in.ID,
		Name: strings.TrimPrefix(in.Name, "/"),
	}
	if in.Config != nil {
		c.Image = in.Config.Image
		c.Labels = maps.Clone(in.Config.Labels)
	}
	if c.Image == "" {
		c.Image = in.Image
	}
	if s := in.State; s != nil {
		c.Running = s.Running
		c.ExitCode = s.ExitCode
		c.Error = s.Error
		c.OOMKilled = s.OOMKilled
		c.StartedAt = parseTime(s.StartedAt)
		c.FinishedAt = parseTime(s.FinishedAt)
	}
	if c.Running && in.NetworkSettings != nil {
		c.HostPort = hostPort(in.NetworkSettings.Ports)
		for _, n := range in.NetworkSettings.Networks {
			if n != nil && n.IPAddress.IsValid() {
				c.IP = n.IPAddress.String()
				break
			}
		}
	}
	return c
}

// hostPort returns the first published host port of a TCP port (berth
// publishes at most one), or 0.
func hostPort(ports network.PortMap) int {
	keys := slices.SortedFunc(maps.Keys(ports), func(a, b network.Port) int { return int(a.Num()) - int(b.Num()) })
	for _, p := range keys {
		if p.Proto() != network.TCP {
			continue
		}
		for _, b := range ports[p] {
			if n, err := strconv.Atoi(b.HostPort); err == nil && n > 0 {
				return n
			}
		}
	}
	return 0
}

// parseTime parses the engine's RFC 3339 times; the engine's "never"
// (0001-01-01T00:00:00Z) and garbage become the zero time.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() <= 1 {
		return time.Time{}
	}
	return t
}

// ---- exec and logs ----

// Exec runs cmd in the running container, discarding its output, and
// returns its exit code. When ctx ends first, Exec returns ctx's error; the
// engine has no way to kill an exec'd process, so it may keep running.
func (r *Runtime) Exec(ctx context.Context, id string, cmd []string) (int, error) {
	created, err := r.cli.ExecCreate(ctx, id, client.ExecCreateOptions{
		Cmd: cmd, AttachStdout: true, AttachStderr: true,
	})
	if err != nil {
		return -1, fmt.Errorf("exec in %s: create: %w", short(id), notFound(err))
	}
	if err := r.runExec(ctx, created.ID); err != nil {
		return -1, fmt.Errorf("exec in %s: %w", short(id), err)
	}
	code, err := r.execExitCode(ctx, created.ID)
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", short(id), err)
	}
	return code, nil
}

// runExec starts the exec attached and waits for its output to end.
func (r *Runtime) runExec(ctx context.Context, execID string) error {
	att, err := r.cli.ExecAttach(ctx, execID, client.ExecAttachOptions{})
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	defer att.Close()
	stop := context.AfterFunc(ctx, att.Close)
	defer stop()
	_, err = io.Copy(io.Discard, att.Reader)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("read output: %w", err)
	}
	return nil
}

// execExitCode waits for the exec to be reported finished and returns its
// exit code (the output stream may end slightly before).
func (r *Runtime) execExitCode(ctx context.Context, execID string) (int, error) {
	for {
		res, err := r.cli.ExecInspect(ctx, execID, client.ExecInspectOptions{})
		if err != nil {
			return -1, fmt.Errorf("inspect exec: %w", err)
		}
		if !res.Running {
			return res.ExitCode, nil
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Logs streams stdout and stderr as plain text. Closing the reader (or
// ending ctx) stops the stream.
func (r *Runtime) Logs(ctx context.Context, id string, follow bool, tail int, opts ...runtime.LogOptions) (io.ReadCloser, error) {
	var o runtime.LogOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	tailArg := "all"
	if tail >= 0 {
		tailArg = strconv.Itoa(tail)
	}
	since := ""
	if !o.Since.IsZero() {
		since = fmt.Sprintf("%d.%09d", o.Since.Unix(), o.Since.Nanosecond())
	}
	raw, err := r.cli.ContainerLogs(ctx, id, client.ContainerLogsOptions{
		ShowStdout: true, ShowStderr: true, Follow: follow, Tail: tailArg,
		Since: since, Timestamps: o.Timestamps,
	})
	if err != nil {
		return nil, fmt.Errorf("logs %s: %w", short(id), notFound(err))
	}
	pr, pw := io.Pipe()
	go func() {
		var stdout, stderr io.Writer = pw, pw
		if o.Timestamps {
			stdout, stderr = &pieceStamps{w: pw}, &pieceStamps{w: pw}
		}
		_, err := stdcopy.StdCopy(stdout, stderr, raw)
		pw.CloseWithError(err) // nil: readers see io.EOF
	}()
	return &logStream{PipeReader: pr, raw: raw}, nil
}

// pieceStamps keeps one timestamp per line. The engine cuts lines longer
// than 16 KiB into pieces and stamps each piece: the stamps of a line's
// later pieces are dropped. StdCopy writes each piece (one frame) with one
// Write.
type pieceStamps struct {
	w       io.Writer
	midLine bool // the last piece did not end its line
}

func (p *pieceStamps) Write(b []byte) (int, error) {
	piece := b
	if p.midLine {
		if _, rest, ok := bytes.Cut(piece, []byte(" ")); ok {
			piece = rest
		}
	}
	p.midLine = len(b) > 0 && b[len(b)-1] != '\n'
	if _, err := p.w.Write(piece); err != nil {
		return 0, err
	}
	return len(b), nil
}

// logStream is the demultiplexed side of a log stream.
type logStream struct {
	*io.PipeReader
	raw io.Closer
}

func (l *logStream) Close() error {
	l.PipeReader.Close()
	return l.raw.Close()
}

// ---- events ----

// eventActions are the container actions Events reports.
var eventActions = []string{
	string(events.ActionStart), string(events.ActionDie),
	string(events.ActionOOM), string(events.ActionDestroy),
}

// engineAttributes are event attributes the engine adds next to the labels.
var engineAttributes = []string{"name", "image", "exitCode", "signal", "execDuration"}

// Events streams start/die/oom/destroy events of containers carrying all the
// given labels. Both channels are closed when ctx ends; if the engine
// connection breaks first, errs yields the error before closing.
func (r *Runtime) Events(ctx context.Context, labels map[string]string) (<-chan runtime.Event, <-chan error) {
	filters := client.Filters{}
	filters.Add("type", string(events.ContainerEventType))
	filters.Add("event", eventActions...)
	for k, v := range labels {
		filters.Add("label", k+"="+v)
	}
	stream := r.cli.Events(ctx, client.EventsListOptions{Filters: filters})

	out := make(chan runtime.Event)
	errs := make(chan error, 1)
	go func() {
		defer close(errs)
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case msg := <-stream.Messages:
				select {
				case out <- toEvent(msg):
				case <-ctx.Done():
					return
				}
			case err := <-stream.Err:
				if ctx.Err() != nil {
					return
				}
				if err == nil || errors.Is(err, io.EOF) {
					err = errors.New("engine closed the stream")
				}
				errs <- fmt.Errorf("docker events: %w", err)
				return
			}
		}
	}()
	return out, errs
}

func toEvent(msg events.Message) runtime.Event {
	labels := maps.Clone(msg.Actor.Attributes)
	for _, k := range engineAttributes {
		delete(labels, k)
	}
	return runtime.Event{ContainerID: msg.Actor.ID, Action: string(msg.Action), Labels: labels}
}

// ---- helpers ----

// notFound adds runtime.ErrNotFound to the engine's 404 errors.
func notFound(err error) error {
	if cerrdefs.IsNotFound(err) {
		return fmt.Errorf("%w: %w", runtime.ErrNotFound, err)
	}
	return err
}

// short abbreviates full container IDs for error messages.
func short(id string) string {
	if len(id) == 64 {
		return id[:12]
	}
	return id
}
