package api

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// TaskSpec is one unit of work: a container that runs to completion.
type TaskSpec struct {
	Image     string            `json:"image"`
	Command   []string          `json:"command,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Queue     string            `json:"queue,omitempty"`    // default "default"
	Priority  *int              `json:"priority,omitempty"` // 0..2, higher runs first; default 1
	Retries   int               `json:"retries,omitempty"`  // further attempts after a failure of the task's own code
	Timeout   *Duration         `json:"timeout,omitempty"`  // per attempt; default 1h; 0s: none
	StopGrace *Duration         `json:"stop_grace,omitempty"`
	Resources Resources         `json:"resources"`
	// Payload is mounted read-only at /task/payload (up to 1 MiB). It is
	// kept apart from the task record; on a read, PayloadSize says it exists.
	Payload        []byte `json:"payload,omitempty"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// Build makes the task a build (api/build.go); only POST /v1/builds sets it.
	Build *BuildSpec `json:"build,omitempty"`
}

// Task states. Queued, retrying and running are active; the rest are
// terminal and never change again.
const (
	TaskQueued    = "queued"
	TaskRunning   = "running"
	TaskRetrying  = "retrying" // waiting out the backoff before the next attempt
	TaskSucceeded = "succeeded"
	TaskFailed    = "failed"
	TaskTimedOut  = "timed_out"
	TaskCancelled = "cancelled"
)

// TaskTerminal reports whether a task in state s is done for good.
func TaskTerminal(s string) bool {
	switch s {
	case TaskSucceeded, TaskFailed, TaskTimedOut, TaskCancelled:
		return true
	}
	return false
}

// Task is a TaskSpec as the server keeps it.
type Task struct {
	ID    string   `json:"id"`
	Spec  TaskSpec `json:"spec"` // Payload is not kept here
	State string   `json:"state"`
	// Node runs the current attempt while the task is running.
	Node     string    `json:"node,omitempty"`
	Attempts []Attempt `json:"attempts,omitempty"`
	// UserFailures counts attempts that failed by the task's own doing
	// (non-zero exit, timeout); they use up Spec.Retries.
	UserFailures int `json:"user_failures,omitempty"`
	// PlatformFailures counts attempts lost to the platform (engine error,
	// node lost, agent restarted mid-run); they are retried on their own.
	PlatformFailures int       `json:"platform_failures,omitempty"`
	NotBefore        time.Time `json:"not_before,omitzero"` // retrying: the next attempt not before
	CancelRequested  bool      `json:"cancel_requested,omitempty"`
	ExitCode         *int      `json:"exit_code,omitempty"` // of the last attempt that exited
	Error            string    `json:"error,omitempty"`     // why it failed, for a terminal state other than succeeded
	Schedule         string    `json:"schedule,omitempty"`  // the schedule that made it, if any
	PayloadSize      int       `json:"payload_size,omitempty"`
	Created          time.Time `json:"created"`
	Updated          time.Time `json:"updated"`
	Ended            time.Time `json:"ended,omitzero"`
	Version          int64     `json:"version,omitempty"`
	// Built is a build's image, once pushed into berth's registry.
	Built *BuildResult `json:"built,omitempty"`
}

// Attempt is one run of a task in one container.
type Attempt struct {
	N           int       `json:"n"` // from 1
	Node        string    `json:"node"`
	Container   string    `json:"container"` // container name, unique per attempt
	ContainerID string    `json:"container_id,omitempty"`
	State       string    `json:"state"` // starting, running, succeeded, failed, timed_out, cancelled, lost
	Created     time.Time `json:"created"`
	Started     time.Time `json:"started,omitzero"`
	Ended       time.Time `json:"ended,omitzero"`
	ExitCode    *int      `json:"exit_code,omitempty"`
	Error       string    `json:"error,omitempty"`
	// Platform: the attempt ended by the platform's fault, not the task's;
	// it did not use up a retry.
	Platform     bool  `json:"platform,omitempty"`
	LogBytes     int64 `json:"log_bytes,omitempty"`
	LogTruncated bool  `json:"log_truncated,omitempty"`
}

// Attempt states beyond the task states.
const (
	AttemptStarting = "starting"
	AttemptLost     = "lost"
)

// Current is the latest attempt, or nil.
func (t *Task) Current() *Attempt {
	if len(t.Attempts) == 0 {
		return nil
	}
	return &t.Attempts[len(t.Attempts)-1]
}

// TaskReport is what an agent says about one attempt it runs.
type TaskReport struct {
	ID          string    `json:"id"`
	Attempt     int       `json:"attempt"`
	State       string    `json:"state"` // running, or an end: succeeded, failed, timed_out, cancelled, lost
	ContainerID string    `json:"container_id,omitempty"`
	Started     time.Time `json:"started,omitzero"`
	Ended       time.Time `json:"ended,omitzero"`
	ExitCode    *int      `json:"exit_code,omitempty"`
	Error       string    `json:"error,omitempty"`
	// Platform marks a failure that is not the task's: the engine failed,
	// the container vanished. Such attempts are retried without using up
	// the task's retries. A missing image is not one: it fails the task.
	Platform     bool `json:"platform,omitempty"`
	ImageMissing bool `json:"image_missing,omitempty"`
	// ConfigError: the engine refused the container's configuration, which
	// no retry can change; the task fails at once with Error.
	ConfigError  bool  `json:"config_error,omitempty"`
	LogBytes     int64 `json:"log_bytes,omitempty"`
	LogTruncated bool  `json:"log_truncated,omitempty"`
}

// TaskReportResult answers one report: whether it was applied, and the
// task as it is now (so that an agent learns of a cancel or a reassignment).
type TaskReportResult struct {
	ID      string `json:"id"`
	Applied bool   `json:"applied"`
	Error   string `json:"error,omitempty"`
	Task    *Task  `json:"task,omitempty"`
}

// Queue settings. Queues exist implicitly; a record only sets a limit.
type Queue struct {
	Name        string `json:"name"`
	Concurrency int    `json:"concurrency"` // at most this many running at once; 0: no limit
	Version     int64  `json:"version,omitempty"`
}

// Overlap policies of a schedule.
const (
	OverlapSkip  = "skip"  // no new run while the last one is active
	OverlapAllow = "allow" // runs may overlap
)

// Schedule makes a task from Task each time Cron fires.
type Schedule struct {
	Name     string    `json:"name"`
	Cron     string    `json:"cron"`              // 5 fields, or @every 5s, @hourly, ...
	Overlap  string    `json:"overlap,omitempty"` // skip (default) or allow
	Task     TaskSpec  `json:"task"`
	LastRun  time.Time `json:"last_run,omitzero"` // when it last fired (or was due and skipped)
	LastTask string    `json:"last_task,omitempty"`
	Created  time.Time `json:"created"`
	Version  int64     `json:"version,omitempty"`
}

// Task limits and defaults.
const (
	DefaultQueue       = "default"
	DefaultPriority    = 1
	MaxPriority        = 2
	DefaultTaskTimeout = time.Hour
	MaxTaskTimeout     = 7 * 24 * time.Hour
	MaxTaskRetries     = 100
	MaxPayload         = 1 << 20
	MaxTaskLog         = 1 << 20 // bytes of output kept per attempt
	MaxTaskBatch       = 1000    // tasks in one POST /v1/tasks
	DefaultTaskCPU     = MilliCPU(100)
	DefaultTaskMemory  = Bytes(128 << 20)
)

// Default fills in the optional fields.
func (s *TaskSpec) Default() {
	if s.Queue == "" {
		s.Queue = DefaultQueue
	}
	if s.Priority == nil {
		s.Priority = ptr(DefaultPriority)
	}
	if s.Timeout == nil {
		s.Timeout = ptr(Duration(DefaultTaskTimeout))
	}
	if s.StopGrace == nil {
		s.StopGrace = ptr(Duration(DefaultStopGrace))
	}
	if s.Resources.CPU == 0 {
		s.Resources.CPU = DefaultTaskCPU
	}
	if s.Resources.Memory == 0 {
		s.Resources.Memory = DefaultTaskMemory
	}
	if s.Resources.Pids == 0 {
		s.Resources.Pids = DefaultPids
	}
}

var idemKey = regexp.MustCompile(`^[A-Za-z0-9._:/-]{1,200}$`)

// Validate checks a defaulted task spec; field names are prefixed with
// prefix (e.g. "task." inside a schedule, "tasks[3]." in a batch).
func (s *TaskSpec) Validate(prefix string, maxMemory Bytes) error {
	f := func(field, format string, args ...any) error { return fieldErr(prefix+field, format, args...) }
	switch {
	case s.Image == "":
		return f("image", "required")
	case !imageRef.MatchString(s.Image):
		return f("image", "%q is not a valid image reference", s.Image)
	case len(s.Queue) > MaxNameLen || !dnsLabel.MatchString(s.Queue):
		return f("queue", "%q is not a DNS label of at most %d characters", s.Queue, MaxNameLen)
	case s.Priority != nil && (*s.Priority < 0 || *s.Priority > MaxPriority):
		return f("priority", "%d is out of range 0-%d", *s.Priority, MaxPriority)
	case s.Retries < 0 || s.Retries > MaxTaskRetries:
		return f("retries", "%d is out of range 0-%d", s.Retries, MaxTaskRetries)
	case s.Timeout != nil && (*s.Timeout < 0 || s.Timeout.D() > MaxTaskTimeout):
		return f("timeout", "%s is out of range 0s-%s (0s: none)", s.Timeout, Duration(MaxTaskTimeout))
	case s.StopGrace != nil && (*s.StopGrace < 0 || s.StopGrace.D() > time.Hour):
		return f("stop_grace", "%s is out of range 0s-1h", s.StopGrace)
	case s.Resources.CPU < 1 || s.Resources.CPU > 1024*1000:
		return f("resources.cpu", "%s is out of range 1m-1024", s.Resources.CPU)
	case s.Resources.Memory < MinMemory:
		return f("resources.memory", "%s is below the minimum of %s", s.Resources.Memory, Bytes(MinMemory))
	case maxMemory > 0 && s.Resources.Memory > maxMemory:
		return f("resources.memory", "%s is more than any node has (largest: %s)", s.Resources.Memory, maxMemory)
	case s.Resources.Pids < 1 || s.Resources.Pids > 1<<22:
		return f("resources.pids", "%d is out of range 1-%d", s.Resources.Pids, 1<<22)
	case len(s.Payload) > MaxPayload:
		return f("payload", "%d bytes is more than the limit of %d (1 MiB)", len(s.Payload), MaxPayload)
	case s.IdempotencyKey != "" && !idemKey.MatchString(s.IdempotencyKey):
		return f("idempotency_key", "%q: use 1-200 of A-Z a-z 0-9 . _ : / -", s.IdempotencyKey)
	case s.Build != nil:
		return f("build", "builds are submitted with POST /v1/builds (berth build), not as tasks")
	}
	for i, a := range s.Command {
		if err := plainText(fmt.Sprintf("%scommand[%d]", prefix, i), a); err != nil {
			return err
		}
	}
	for _, k := range sortedKeys(s.Env) {
		if !envName.MatchString(k) || strings.HasPrefix(k, "BERTH_") {
			return f("env."+k, "%q is not a valid environment variable name (the BERTH_ prefix is reserved)", k)
		}
		if err := plainText(prefix+"env."+k, s.Env[k]); err != nil {
			return err
		}
	}
	return nil
}

// CronParser reads a schedule's cron: five fields, or a descriptor such
// as @hourly or @every 5s.
var CronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Default fills in the optional fields.
func (s *Schedule) Default() {
	if s.Overlap == "" {
		s.Overlap = OverlapSkip
	}
	s.Task.Default()
}

// Validate checks a defaulted schedule.
func (s *Schedule) Validate(maxMemory Bytes) error {
	switch {
	case s.Name == "":
		return fieldErr("name", "required")
	case len(s.Name) > MaxNameLen || !dnsLabel.MatchString(s.Name):
		return fieldErr("name", "%q is not a DNS label of at most %d characters (a-z, 0-9, '-', not at either end)", s.Name, MaxNameLen)
	case s.Cron == "":
		return fieldErr("cron", "required")
	case s.Overlap != OverlapSkip && s.Overlap != OverlapAllow:
		return fieldErr("overlap", "%q is not skip or allow", s.Overlap)
	case s.Task.IdempotencyKey != "":
		return fieldErr("task.idempotency_key", "a schedule's runs cannot share one key")
	}
	if _, err := CronParser.Parse(s.Cron); err != nil {
		return fieldErr("cron", "%q: %v", s.Cron, err)
	}
	if d, ok := strings.CutPrefix(s.Cron, "@every "); ok {
		if every, err := time.ParseDuration(d); err != nil || every < time.Second {
			return fieldErr("cron", "%q: @every needs a duration of at least 1s", s.Cron)
		}
	}
	return s.Task.Validate("task.", maxMemory)
}

// Validate checks a queue's settings.
func (q *Queue) Validate() error {
	switch {
	case len(q.Name) > MaxNameLen || !dnsLabel.MatchString(q.Name):
		return fieldErr("name", "%q is not a DNS label of at most %d characters", q.Name, MaxNameLen)
	case q.Concurrency < 0 || q.Concurrency > 100000:
		return fieldErr("concurrency", "%d is out of range 0-100000 (0: no limit)", q.Concurrency)
	}
	return nil
}

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// NewTaskID returns a new task id: 16 characters that sort by creation
// time (48 bits of milliseconds), then 32 random bits.
func NewTaskID(now time.Time) string {
	var b [10]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	_, _ = rand.Read(b[6:])
	return idEncoding.EncodeToString(b[:])
}

// ValidTaskID reports whether s has the shape of a task id.
func ValidTaskID(s string) bool { return taskID.MatchString(s) }

var taskID = regexp.MustCompile(`^[0-9a-hjkmnp-tv-z]{16}$`)

// TaskPayload is a task's payload as stored, apart from the task.
type TaskPayload struct {
	Data    []byte `json:"data"`
	Version int64  `json:"version,omitempty"`
}

// TaskKey maps an idempotency key to the task first submitted with it.
type TaskKey struct {
	Task    string `json:"task"`
	Version int64  `json:"version,omitempty"`
}

// QueueStatus is one row of GET /v1/queues.
type QueueStatus struct {
	Name        string `json:"name"`
	Concurrency int    `json:"concurrency"` // 0: no limit
	Queued      int    `json:"queued"`      // queued and retrying
	Running     int    `json:"running"`
}
