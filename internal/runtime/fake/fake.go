// Package fake is an in-memory runtime.Runtime for unit tests of the code
// that drives containers. Containers do nothing: they run from Start until
// Stop, Remove or Kill (which simulates a crash), unless SetRun makes them
// exit by themselves. All methods are safe for concurrent use.
package fake

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"berth/internal/runtime"
)

// ErrConflict is runtime.ErrConflict, kept here for callers of this package.
var ErrConflict = runtime.ErrConflict

// FirstHostPort is the host port the first started container with a Port
// gets; each start takes the next one.
const FirstHostPort = 40000

// StopExitCode is the exit code Stop and Remove leave (128 + SIGTERM).
const StopExitCode = 143

var _ runtime.Runtime = (*Runtime)(nil)

// Runtime is the in-memory engine. The zero value is not usable; use New.
type Runtime struct {
	mu         sync.Mutex
	containers map[string]*entry // by ID
	byName     map[string]*entry
	seq        int
	nextPort   int
	images     map[string]bool // nil: every image exists
	listed     []runtime.Image // what ListImages shows (images.go); nil: none
	exec       func(id string, cmd []string) int
	run        RunFunc
	refuse     func(runtime.ContainerSpec) error
	info       runtime.Info
	subs       map[*subscriber]struct{}
	built      map[string][]byte // image id -> its `docker save` tar (build.go)
}

type entry struct {
	c    runtime.Container
	spec runtime.ContainerSpec
	seq  int
	logs []string
	runs int           // starts so far: a scheduled exit applies to its own run only
	done chan struct{} // closed when the current run ends (Wait)
}

// RunFunc decides what a started container does: it writes logs at once
// and, with ok, exits with exitCode after the given time; without ok, it
// runs until stopped. It is called at every start, without the fake's lock
// held.
type RunFunc func(spec runtime.ContainerSpec) (exitCode int, after time.Duration, logs []string, ok bool)

// New returns an empty engine on which every image exists and every exec
// exits 0.
func New() *Runtime {
	return &Runtime{
		containers: map[string]*entry{},
		byName:     map[string]*entry{},
		nextPort:   FirstHostPort,
		info:       runtime.Info{CPUs: 8, MemoryBytes: 16 << 30, Version: "fake"},
		subs:       map[*subscriber]struct{}{},
	}
}

// ---- test helpers ----

// SetImages makes only refs exist: EnsureImage and Create fail with
// runtime.ErrImageNotFound for any other image.
func (r *Runtime) SetImages(refs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.images = map[string]bool{}
	for _, ref := range refs {
		r.images[ref] = true
	}
}

// SetExec sets what Exec returns; f runs without the fake's lock held.
func (r *Runtime) SetExec(f func(id string, cmd []string) int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.exec = f
}

// SetRun makes started containers run as f says (nil: until stopped).
func (r *Runtime) SetRun(f RunFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.run = f
}

// SetRefuse makes Create refuse the specs f returns an error for, as the
// engine refuses a configuration it cannot run (the error wraps
// runtime.ErrInvalidSpec). By default only relative bind mounts are refused.
func (r *Runtime) SetRefuse(f func(spec runtime.ContainerSpec) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refuse = f
}

// SetInfo sets what Info returns.
func (r *Runtime) SetInfo(info runtime.Info) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.info = info
}

// Kill simulates a crash of a running container: it stops with exitCode
// and a die event is emitted. Unknown or stopped containers are ignored.
func (r *Runtime) Kill(id string, exitCode int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.lookup(id); e != nil && e.c.Running {
		r.exit(e, exitCode)
	}
}

// Log appends lines to the container's log (what Logs returns).
func (r *Runtime) Log(id string, lines ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.lookup(id); e != nil {
		e.logs = append(e.logs, lines...)
	}
}

// Running returns the running containers in creation order.
func (r *Runtime) Running() []runtime.Container {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []runtime.Container
	for _, e := range r.sorted() {
		if e.c.Running {
			out = append(out, copyContainer(e.c))
		}
	}
	return out
}

// Spec returns the spec a container was created from.
func (r *Runtime) Spec(id string) (runtime.ContainerSpec, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.lookup(id); e != nil {
		return e.spec, true
	}
	return runtime.ContainerSpec{}, false
}

// BreakEvents ends every open event stream with err, as a lost engine
// connection would.
func (r *Runtime) BreakEvents(err error) {
	if err == nil {
		err = errors.New("fake: event stream broken")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for s := range r.subs {
		s.brk(err)
		delete(r.subs, s)
	}
}

// ---- runtime.Runtime ----

func (r *Runtime) Info(ctx context.Context) (runtime.Info, error) {
	if err := ctx.Err(); err != nil {
		return runtime.Info{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.info, nil
}

func (r *Runtime) EnsureImage(ctx context.Context, ref string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("image %s: %v: %w", ref, err, runtime.ErrImageNotFound)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkImage(ref); err != nil {
		return err
	}
	r.pulled(ref)
	return nil
}

func (r *Runtime) checkImage(ref string) error {
	if r.images != nil && !r.images[ref] {
		return fmt.Errorf("image %s: not present locally and pull failed: %w", ref, runtime.ErrImageNotFound)
	}
	return nil
}

// checkSpec refuses a bind mount of a relative path, as the Docker engine
// does (with 400, in these words).
func checkSpec(spec runtime.ContainerSpec) error {
	for _, m := range spec.Mounts {
		if !strings.HasPrefix(m.Source, "/") {
			return fmt.Errorf("invalid mount config for type \"bind\": invalid mount path: '%s' mount path must be absolute", m.Source)
		}
	}
	return nil
}

// List returns the containers carrying all labels, newest first (as Docker).
func (r *Runtime) List(ctx context.Context, labels map[string]string) ([]runtime.Container, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []runtime.Container
	for _, e := range slices.Backward(r.sorted()) {
		if hasLabels(e.c.Labels, labels) {
			out = append(out, copyContainer(e.c))
		}
	}
	return out, nil
}

func (r *Runtime) Inspect(ctx context.Context, id string) (runtime.Container, error) {
	if err := ctx.Err(); err != nil {
		return runtime.Container{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.lookup(id)
	if e == nil {
		return runtime.Container{}, fmt.Errorf("inspect %s: %w", id, runtime.ErrNotFound)
	}
	return copyContainer(e.c), nil
}

func (r *Runtime) Create(ctx context.Context, spec runtime.ContainerSpec) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkImage(spec.Image); err != nil {
		return "", fmt.Errorf("create %s: %w", spec.Name, err)
	}
	refuse := r.refuse
	if refuse == nil {
		refuse = checkSpec
	}
	if err := refuse(spec); err != nil {
		return "", fmt.Errorf("create %s: %w: %w", spec.Name, runtime.ErrInvalidSpec, err)
	}
	r.seq++
	id := newID(r.seq)
	if spec.Name == "" {
		spec.Name = "fake-" + id[:12]
	}
	if r.lookup(spec.Name) != nil {
		return "", fmt.Errorf("create %s: %w", spec.Name, ErrConflict)
	}
	spec.Labels = maps.Clone(spec.Labels)
	spec.Mounts = slices.Clone(spec.Mounts)
	e := &entry{
		c:    runtime.Container{ID: id, Name: spec.Name, Image: spec.Image, Labels: spec.Labels},
		spec: spec,
		seq:  r.seq,
	}
	r.containers[id] = e
	r.byName[spec.Name] = e
	return id, nil
}

// Start starts the container; starting a running one does nothing. With
// SetRun, the run may end by itself.
func (r *Runtime) Start(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	e := r.lookup(id)
	if e == nil {
		r.mu.Unlock()
		return fmt.Errorf("start %s: %w", id, runtime.ErrNotFound)
	}
	if e.c.Running {
		r.mu.Unlock()
		return nil
	}
	e.c.Running = true
	e.c.ExitCode, e.c.Error, e.c.OOMKilled = 0, "", false
	e.c.StartedAt, e.c.FinishedAt = time.Now(), time.Time{}
	e.runs++
	e.done = make(chan struct{})
	if e.spec.Port != 0 {
		e.c.HostPort = r.nextPort
		r.nextPort++
	}
	r.emit(e, "start")
	run, spec, runs := r.run, e.spec, e.runs
	r.mu.Unlock()
	if run == nil {
		return nil
	}
	code, after, logs, ok := run(spec)
	r.mu.Lock()
	if e.runs == runs && e.c.Running {
		e.logs = append(e.logs, logs...)
	}
	r.mu.Unlock()
	if !ok {
		return nil
	}
	time.AfterFunc(after, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if e.runs == runs && e.c.Running && r.containers[e.c.ID] == e {
			r.exit(e, code)
		}
	})
	return nil
}

// Stop stops a running container with StopExitCode at once (grace is not
// waited for). Missing or stopped containers are not an error.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.lookup(id); e != nil && e.c.Running {
		r.exit(e, StopExitCode)
	}
	return nil
}

// Remove kills (die event) and removes (destroy event) the container.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.lookup(id)
	if e == nil {
		return nil
	}
	if e.c.Running {
		r.exit(e, StopExitCode)
	}
	delete(r.containers, e.c.ID)
	delete(r.byName, e.c.Name)
	r.emit(e, "destroy")
	return nil
}

// Exec returns what the SetExec function returns (0 by default).
func (r *Runtime) Exec(ctx context.Context, id string, cmd []string) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	r.mu.Lock()
	e := r.lookup(id)
	running := e != nil && e.c.Running
	f := r.exec
	r.mu.Unlock()
	switch {
	case e == nil:
		return -1, fmt.Errorf("exec in %s: %w", id, runtime.ErrNotFound)
	case !running:
		return -1, fmt.Errorf("exec in %s: container is not running", id)
	case f == nil:
		return 0, nil
	}
	return f(e.c.ID, slices.Clone(cmd)), nil
}

// Wait returns once the container is not running, with its state then.
func (r *Runtime) Wait(ctx context.Context, id string) (runtime.Container, error) {
	if err := ctx.Err(); err != nil {
		return runtime.Container{}, err
	}
	r.mu.Lock()
	e := r.lookup(id)
	if e == nil {
		r.mu.Unlock()
		return runtime.Container{}, fmt.Errorf("wait for %s: %w", id, runtime.ErrNotFound)
	}
	done := e.done
	running := e.c.Running
	r.mu.Unlock()
	if running {
		select {
		case <-done:
		case <-ctx.Done():
			return runtime.Container{}, ctx.Err()
		}
	}
	return r.Inspect(ctx, id) // as the engine: a container removed meanwhile is not found
}

// Logs returns the lines given to Log (the last tail ones when tail >= 0).
// follow is ignored: the stream ends after the lines present now; so are
// opts (the fake keeps no times of lines).
func (r *Runtime) Logs(ctx context.Context, id string, follow bool, tail int, opts ...runtime.LogOptions) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.lookup(id)
	if e == nil {
		return nil, fmt.Errorf("logs %s: %w", id, runtime.ErrNotFound)
	}
	lines := e.logs
	if tail >= 0 && tail < len(lines) {
		lines = lines[len(lines)-tail:]
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return io.NopCloser(strings.NewReader(b.String())), nil
}

// Events streams start/die/destroy events of containers carrying all labels.
// Events are never dropped: each stream has an unbounded queue.
func (r *Runtime) Events(ctx context.Context, labels map[string]string) (<-chan runtime.Event, <-chan error) {
	s := &subscriber{labels: maps.Clone(labels), wake: make(chan struct{}, 1), broken: make(chan error, 1)}
	out := make(chan runtime.Event)
	errs := make(chan error, 1)
	r.mu.Lock()
	r.subs[s] = struct{}{}
	r.mu.Unlock()
	go func() {
		s.run(ctx, out, errs)
		r.mu.Lock()
		delete(r.subs, s)
		r.mu.Unlock()
	}()
	return out, errs
}

// ---- internals (r.mu held) ----

func (r *Runtime) lookup(idOrName string) *entry {
	if e, ok := r.containers[idOrName]; ok {
		return e
	}
	return r.byName[idOrName]
}

func (r *Runtime) sorted() []*entry {
	all := slices.Collect(maps.Values(r.containers))
	slices.SortFunc(all, func(a, b *entry) int { return a.seq - b.seq })
	return all
}

func (r *Runtime) exit(e *entry, code int) {
	e.c.Running = false
	e.c.ExitCode = code
	e.c.FinishedAt = time.Now()
	e.c.HostPort = 0
	close(e.done)
	r.emit(e, "die")
}

func (r *Runtime) emit(e *entry, action string) {
	ev := runtime.Event{ContainerID: e.c.ID, Action: action}
	for s := range r.subs {
		if hasLabels(e.c.Labels, s.labels) {
			ev.Labels = maps.Clone(e.c.Labels)
			s.push(ev)
		}
	}
}

// subscriber is one Events stream.
type subscriber struct {
	labels map[string]string
	mu     sync.Mutex
	queue  []runtime.Event
	wake   chan struct{} // cap 1: queue grew
	broken chan error    // cap 1: BreakEvents
}

func (s *subscriber) push(ev runtime.Event) {
	s.mu.Lock()
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) brk(err error) {
	select {
	case s.broken <- err:
	default:
	}
}

// run delivers queued events until ctx ends or the stream is broken, then
// closes both channels.
func (s *subscriber) run(ctx context.Context, out chan<- runtime.Event, errs chan<- error) {
	defer close(errs)
	defer close(out)
	var brokenErr error
	for {
		s.mu.Lock()
		queue := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, ev := range queue {
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
		if brokenErr != nil { // events emitted before the break are delivered first
			errs <- brokenErr
			return
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return
		case brokenErr = <-s.broken:
		}
	}
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func copyContainer(c runtime.Container) runtime.Container {
	c.Labels = maps.Clone(c.Labels)
	return c
}

// newID returns a Docker-like 64 hex digit ID whose 12-digit prefixes differ.
func newID(seq int) string {
	sum := sha256.Sum256([]byte("fake-container-" + strconv.Itoa(seq)))
	return hex.EncodeToString(sum[:])
}

// Vanish removes a container without any event, as a change the agent
// missed (an engine restarted, an event stream broken) would look to it.
func (r *Runtime) Vanish(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.lookup(id); e != nil {
		delete(r.containers, e.c.ID)
		delete(r.byName, e.c.Name)
	}
}
