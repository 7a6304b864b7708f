// Package runtime is the agent's view of a container engine. The Docker
// implementation lives in runtime/docker; runtime/fake serves unit tests.
package runtime

import (
	"context"
	"errors"
	"io"
	"time"
)

// Labels berth puts on every container it makes. They are how the agent
// adopts its containers after a restart and never touches anyone else's.
const (
	LabelCluster  = "berth.cluster"
	LabelNode     = "berth.node"
	LabelApp      = "berth.app"
	LabelInstance = "berth.instance"
	LabelRevision = "berth.revision"
	// A task attempt's container carries its task id and attempt number
	// instead of an instance name.
	LabelTask    = "berth.task"
	LabelAttempt = "berth.attempt"
)

// ErrImageNotFound means the image is not present locally and could not be pulled.
var ErrImageNotFound = errors.New("image not found")

// ErrConflict means a container of that name exists already.
var ErrConflict = errors.New("container name already in use")

// ErrNotFound means the container does not exist (any more).
var ErrNotFound = errors.New("container not found")

// ErrInvalidSpec means the engine refused the container's configuration
// (Docker answers 400, invalid parameter): creating it again cannot work.
var ErrInvalidSpec = errors.New("the engine refused the container's configuration")

// ErrImageInUse means a container (running or stopped) uses the image.
var ErrImageInUse = errors.New("image in use by a container")

// Image is one image on the engine.
type Image struct {
	ID   string
	Refs []string // its repository tags and digests: repo:tag, repo@sha256:...
	Size int64
	// Containers is how many containers, running or stopped, use it.
	Containers int
}

// Info describes the engine's host.
type Info struct {
	CPUs        int   // logical CPUs
	MemoryBytes int64 // total memory
	Version     string
}

// ContainerSpec is everything needed to create one container.
type ContainerSpec struct {
	Name        string            // container name, unique on the engine
	Image       string            //
	Command     []string          // arguments; empty keeps the image's CMD
	Env         map[string]string //
	Hostname    string            // e.g. "hello-1.node1"
	Port        int               // container TCP port published on HostIP:<ephemeral>; 0 = none
	HostIP      string            // address the port is published on (127.0.0.1)
	NanoCPUs    int64             //
	MemoryBytes int64             //
	PidsLimit   int64             //
	Init        bool              // run a tiny init as pid 1
	Labels      map[string]string //
	Mounts      []Mount           // bind mounts of host paths
}

// Mount bind-mounts a host file or directory into the container.
type Mount struct {
	Source   string // host path
	Target   string // path in the container
	ReadOnly bool
}

// Container is the engine's view of one container.
type Container struct {
	ID         string
	Name       string
	Image      string
	Labels     map[string]string
	Running    bool
	ExitCode   int
	Error      string // the engine's error for the last start, if any
	OOMKilled  bool
	StartedAt  time.Time
	FinishedAt time.Time
	HostPort   int // published host port of the spec's Port; 0 when not running/published
	// IP is the container's address on its network, reachable from its
	// host: health checks go there, not through the engine's port proxy,
	// which accepts connections even when nothing listens behind it.
	IP string
}

// Event is a container lifecycle change seen on the engine.
type Event struct {
	ContainerID string
	Action      string // "start", "die", "oom", "destroy"
	Labels      map[string]string
}

// LogOptions are the rarer choices of a Logs call: they let a follow that
// has to open a container's log again (after a restart) go on from the
// last line it passed on.
type LogOptions struct {
	// Since keeps only the lines the engine received at or after it.
	Since time.Time
	// Timestamps starts each line with the engine's time of it
	// (RFC 3339, nanoseconds) and a space.
	Timestamps bool
}

// Runtime drives one container engine. All methods are safe for concurrent use.
type Runtime interface {
	Info(ctx context.Context) (Info, error)
	// EnsureImage makes the image present locally, pulling it if needed.
	// It returns an error wrapping ErrImageNotFound when it cannot.
	EnsureImage(ctx context.Context, ref string) error
	// ListImages returns the engine's images.
	ListImages(ctx context.Context) ([]Image, error)
	// RemoveImage removes one reference of an image, and the image with
	// its last one. An image a container uses stays: the error wraps
	// ErrImageInUse. A missing reference is not an error.
	RemoveImage(ctx context.Context, ref string) error
	// List returns the containers (running or not) carrying all the given labels.
	List(ctx context.Context, labels map[string]string) ([]Container, error)
	Inspect(ctx context.Context, id string) (Container, error)
	Create(ctx context.Context, spec ContainerSpec) (id string, err error)
	Start(ctx context.Context, id string) error
	// Stop sends SIGTERM, then SIGKILL after grace.
	Stop(ctx context.Context, id string, grace time.Duration) error
	// Remove removes the container, killing it if still running. A missing container is not an error.
	Remove(ctx context.Context, id string) error
	// Wait blocks until the container is not running (returning at once
	// if it is not) and returns its final state. It returns an error
	// wrapping ErrNotFound when the container does not exist.
	Wait(ctx context.Context, id string) (Container, error)
	// Exec runs cmd inside the running container and returns its exit code.
	Exec(ctx context.Context, id string, cmd []string) (int, error)
	// Logs streams the container's stdout and stderr, demultiplexed, as lines.
	// tail < 0 means all lines. A follow ends when the container stops.
	// At most one LogOptions is used.
	Logs(ctx context.Context, id string, follow bool, tail int, opts ...LogOptions) (io.ReadCloser, error)
	// Events streams container events for containers carrying the given labels
	// until ctx ends or the engine connection breaks (then errs yields the error).
	Events(ctx context.Context, labels map[string]string) (<-chan Event, <-chan error)
}

// ErrBuildFailed means the build itself failed (the Dockerfile's error,
// a step that exited non-zero): building again cannot help.
var ErrBuildFailed = errors.New("the build failed")

// BuildOptions are the limits and labels of one image build.
type BuildOptions struct {
	MemoryBytes int64             // cap of each step's container (no swap beyond it)
	NanoCPUs    int64             // CPUs each step's container may use
	Labels      map[string]string // added to the image
}

// Builder builds images; runtime/docker and runtime/fake have it.
type Builder interface {
	// Build builds the image of a context tar (a Dockerfile at its root),
	// writing the build's output to log as it comes, and returns the
	// image's id. A failure of the build itself wraps ErrBuildFailed.
	Build(ctx context.Context, buildContext io.Reader, opts BuildOptions, log io.Writer) (imageID string, err error)
	// SaveImage streams the image as `docker save` writes it.
	SaveImage(ctx context.Context, imageID string) (io.ReadCloser, error)
}
