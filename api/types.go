// Package api holds berth's resource types, their defaults and their
// validation: the contract between the CLI, the server and the agents.
// It does no I/O.
package api

import "time"

// AppSpec is what a user writes in an app's YAML file.
type AppSpec struct {
	Name      string            `json:"name"`
	Image     string            `json:"image"`
	Command   []string          `json:"command,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Port      int               `json:"port,omitempty"`
	Replicas  *int              `json:"replicas,omitempty"`
	Resources Resources         `json:"resources"`
	Health    *Health           `json:"health,omitempty"`
	StopGrace *Duration         `json:"stop_grace,omitempty"`
	Init      *bool             `json:"init,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`

	// Routes are the Host names the gateway sends to this app: exact
	// ("hello.example") or one leading wildcard label ("*.hello.example").
	Routes []string `json:"routes,omitempty"`
	// RequestTimeout bounds one proxied request (default 60s; 0s: none).
	RequestTimeout *Duration `json:"request_timeout,omitempty"`
	// Idle, when set, scales the app to zero after StopAfter without a
	// request; the gateway wakes it on the next one.
	Idle *Idle `json:"idle,omitempty"`
	// Placement: which nodes the instances may go to and how they spread.
	Placement *Placement `json:"placement,omitempty"`
	// Update: how a rolling update goes (api/rollout.go); HistoryLimit:
	// how many revisions are kept (default 20).
	Update       *Update `json:"update,omitempty"`
	HistoryLimit *int    `json:"history_limit,omitempty"`
}

// Idle is an app's scale-to-zero policy.
type Idle struct {
	StopAfter   Duration  `json:"stop_after"`
	WakeTimeout *Duration `json:"wake_timeout,omitempty"` // how long a request waits for a wake; default 30s
}

// Resources are enforced by the engine and reserved by the scheduler.
type Resources struct {
	CPU    MilliCPU `json:"cpu,omitempty"`
	Memory Bytes    `json:"memory,omitempty"`
	Pids   int64    `json:"pids,omitempty"`
}

// Health is the check that decides whether an instance is healthy. Exactly
// one of HTTP, TCP and Exec is set once defaults are applied.
type Health struct {
	HTTP        string    `json:"http,omitempty"` // path, GET on the published port, 2xx/3xx is healthy
	TCP         bool      `json:"tcp,omitempty"`  // connect to the published port
	Exec        []string  `json:"exec,omitempty"` // command in the container, exit 0 is healthy
	Interval    *Duration `json:"interval,omitempty"`
	Timeout     *Duration `json:"timeout,omitempty"`
	Retries     int       `json:"retries,omitempty"`
	StartPeriod *Duration `json:"start_period,omitempty"`
}

// App is an AppSpec as the server keeps it.
type App struct {
	Spec AppSpec `json:"spec"`
	// Revision counts accepted changes of the spec, from 1.
	Revision int64 `json:"revision"`
	// TemplateRevision is the revision at which the instance template (all
	// of the spec but replicas) last changed; instances made from an older
	// template are replaced by a rolling update.
	TemplateRevision int64 `json:"template_revision"`
	// ImageDigest is the digest the spec's image resolved to in berth's
	// registry at the template's revision (empty: a local or external
	// image, run as written). Every instance of the template runs it.
	ImageDigest string `json:"image_digest,omitempty"`
	Deleting    bool   `json:"deleting,omitempty"`
	// Idled: scaled to zero for want of requests; its containers are
	// stopped, not removed, so that a wake is a start.
	Idled   bool      `json:"idled,omitempty"`
	IdledAt time.Time `json:"idled_at,omitempty"`
	WokenAt time.Time `json:"woken_at,omitempty"`
	// Canary: a canary of the current template is under way.
	Canary *CanaryState `json:"canary,omitempty"`
	// Paused: the rollout (canary clock, rolling update) is held by
	// `berth rollout pause`.
	Paused  bool      `json:"paused,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// Version is the store revision of this record, for compare-and-swap.
	Version int64 `json:"version,omitempty"`
}

// Instance states, as reported by the agent.
const (
	StatePending   = "pending"   // not placed or not yet created on its node
	StateStarting  = "starting"  // container started, not yet healthy
	StateRunning   = "running"   // healthy
	StateUnhealthy = "unhealthy" // failing its health check
	StateStopping  = "stopping"  // being stopped (retired or removed)
	StateExited    = "exited"    // exited; will be restarted after a backoff
	StateFailed    = "failed"    // cannot run (e.g. missing image); retried slowly
	StateIdle      = "idle"      // stopped while its app is scaled to zero
)

// Instance desired states, set by the server.
const (
	DesiredRun  = "run"
	DesiredIdle = "idle" // keep the container, stopped
	// DesiredKeep: replaced by a rolling update, the container stopped and
	// kept until KeptUntil, so that a rollback starts it again.
	DesiredKeep = "keep"
	DesiredStop = "stop"
)

// StopAppRemoved is the stop reason of the instances of a removed app:
// nothing routes to the app any more, so they need no draining.
const StopAppRemoved = "app removed"

// Instance is one container's worth of an app: the server decides its
// template and node; the agent of that node reports its status.
type Instance struct {
	Name     string  `json:"name"` // <app>-<n>
	App      string  `json:"app"`
	Index    int     `json:"index"`
	Revision int64   `json:"revision"` // the app's template revision it was made from
	Spec     AppSpec `json:"spec"`     // the template, defaults applied
	// ImageDigest pins Spec.Image to a manifest of berth's registry (see
	// App.ImageDigest); empty for a local or external image.
	ImageDigest string `json:"image_digest,omitempty"`
	Node        string `json:"node,omitempty"`
	// Reason says why the instance is not placed yet.
	Reason     string    `json:"reason,omitempty"`
	Desired    string    `json:"desired"`
	StopReason string    `json:"stop_reason,omitempty"`
	Created    time.Time `json:"created"`
	Status     Status    `json:"status"`
	Version    int64     `json:"version,omitempty"`

	// Attempt counts the instances in a row that held this one's place
	// and were replaced without ever becoming healthy, this one included
	// (0 or 1: the first). NotBefore holds its placement back meanwhile:
	// the replacement backoff.
	Attempt   int       `json:"attempt,omitempty"`
	NotBefore time.Time `json:"not_before,omitempty"`

	// KeptUntil: with Desired keep, when the kept instance is retired
	// unless a rollback to its template starts it again first.
	KeptUntil time.Time `json:"kept_until,omitempty"`
}

// Status is what the agent reports about an instance.
type Status struct {
	State       string `json:"state"`
	Healthy     bool   `json:"healthy,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	Address     string `json:"address,omitempty"` // node address:published port, where the instance answers
	// ContainerAddress is the container's own IP:port, reachable from its
	// node only; a gateway on that node uses it and skips the engine's
	// userland port proxy.
	ContainerAddress string    `json:"container_address,omitempty"`
	Restarts         int       `json:"restarts,omitempty"`
	ExitCode         *int      `json:"exit_code,omitempty"` // of the last exit
	Error            string    `json:"error,omitempty"`     // last error
	Replace          bool      `json:"replace,omitempty"`   // unhealthy past its retries: the server replaces it
	StartedAt        time.Time `json:"started_at,omitempty"`
	Updated          time.Time `json:"updated,omitempty"`

	// EverHealthy: the instance has been healthy at least once.
	EverHealthy bool `json:"ever_healthy,omitempty"`
	// HealthySince: when it last turned healthy (the agent's clock); zero
	// while it is not healthy. A rollout's min_healthy counts from it.
	HealthySince time.Time `json:"healthy_since,omitempty"`
}

// Ready reports whether the instance is wanted, running and healthy.
func (i *Instance) Ready() bool {
	return i.Desired == DesiredRun && i.Status.Healthy && i.Status.State == StateRunning
}

// HoldsRoom reports whether the instance holds its resources on a node:
// placed there, and not kept stopped for a fast rollback (a kept one gives
// way to anything placed; a rollback starts it again where it is).
func (i *Instance) HoldsRoom() bool {
	return i.Node != "" && i.Desired != DesiredKeep
}

// Routable reports whether traffic may be sent to the instance.
func (i *Instance) Routable() bool {
	return i.Ready() && i.Status.Address != ""
}

// Node is a Docker host with an agent.
type Node struct {
	Name      string            `json:"name"`
	Address   string            `json:"address"` // where published ports answer
	Capacity  Capacity          `json:"capacity"`
	Labels    map[string]string `json:"labels,omitempty"`
	Engine    string            `json:"engine,omitempty"` // Docker version
	Heartbeat time.Time         `json:"heartbeat"`
	// Draining is set by `berth node drain` and cleared by `activate`:
	// nothing new is placed on the node and its instances move away.
	Draining bool `json:"draining,omitempty"`
	// State is derived by the server: down without a heartbeat for the
	// node TTL, else draining or ready.
	State string `json:"state,omitempty"`
	// Allocated, Instances and Tasks are derived by the server when it
	// lists nodes: what the instances and running tasks placed on the node
	// reserve, and how many there are.
	Allocated *Capacity `json:"allocated,omitempty"`
	Instances int       `json:"instances,omitempty"`
	Tasks     int       `json:"tasks,omitempty"`
	Version   int64     `json:"version,omitempty"`
}

// Capacity is what a node offers, or what is allocated on it.
type Capacity struct {
	CPU    MilliCPU `json:"cpu"`
	Memory Bytes    `json:"memory"`
}

const (
	NodeReady    = "ready"
	NodeDown     = "down"
	NodeDraining = "draining" // no new placements; its instances move away
)

// StateAt derives a node's state from its last heartbeat.
func (n *Node) StateAt(now time.Time, ttl time.Duration) string {
	switch {
	case now.Sub(n.Heartbeat) > ttl:
		return NodeDown
	case n.Draining:
		return NodeDraining
	}
	return NodeReady
}

// Event is one thing that happened, for `berth events`.
type Event struct {
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"` // placed, started, healthy, unhealthy, exited, restarted, failed, stopping, removed, unschedulable, deployed, scaled, deleted
	App      string    `json:"app,omitempty"`
	Instance string    `json:"instance,omitempty"`
	Node     string    `json:"node,omitempty"`
	Message  string    `json:"message,omitempty"`
	Version  int64     `json:"version,omitempty"`
}

// WatchEvent is one line of a watch stream (NDJSON).
type WatchEvent[T any] struct {
	Type     string `json:"type"` // put, delete
	Object   T      `json:"object"`
	Revision int64  `json:"revision"`
}

// List is a list answer; Revision is where a watch continues from.
type List[T any] struct {
	Items    []T   `json:"items"`
	Revision int64 `json:"revision"`
}

// Error is the body of every error answer.
type Error struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

// Access is when an app last got a request through a gateway.
type Access struct {
	App     string    `json:"app"`
	Last    time.Time `json:"last"`
	Version int64     `json:"version,omitempty"`
}

// AccessReport is the body of POST /v1/access: the latest request time
// per app seen by one gateway since its last report.
type AccessReport struct {
	Apps map[string]time.Time `json:"apps"`
}

// RouteClaim records which app owns a host, so that two apps can never
// claim one host.
type RouteClaim struct {
	Host    string `json:"host"`
	App     string `json:"app"`
	Version int64  `json:"version,omitempty"`
}

// Route is one row of GET /v1/routes.
type Route struct {
	Host       string    `json:"host"`
	App        string    `json:"app"`
	Instances  []string  `json:"instances"` // addresses of routable instances
	Idle       bool      `json:"idle"`      // scaled to zero now
	IdleAfter  string    `json:"idle_after,omitempty"`
	LastAccess time.Time `json:"last_access,omitempty"`
}

// ScaleRequest is the body of POST /v1/apps/{name}/scale.
type ScaleRequest struct {
	Replicas int `json:"replicas"`
}

// Status of the server, for `berth status`.
type ServerStatus struct {
	Version    string `json:"version"`
	Cluster    string `json:"cluster"` // id of this berth cluster, on every container label`
	Leader     bool   `json:"leader"`  // this server runs the controllers
	Store      string `json:"store"`   // ok or the error
	StoreRev   int64  `json:"store_revision"`
	StoreBytes int64  `json:"store_bytes"`
	Apps       int    `json:"apps"`
	Instances  int    `json:"instances"`
	Nodes      int    `json:"nodes"`
	Uptime     string `json:"uptime"`
	// Server is this server's name among several (its API URL);
	// LeaderServer names the one that leads ("" while none does).
	Server       string `json:"server,omitempty"`
	LeaderServer string `json:"leader_server,omitempty"`
}
