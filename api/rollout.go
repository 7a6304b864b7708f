package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Update says how a rolling update replaces an app's instances. The
// defaults keep it safe: one new instance at a time, no old one stopped
// before its replacement is healthy.
type Update struct {
	// Parallel is how many new instances start at once (the surge).
	Parallel *int `json:"parallel,omitempty"`
	// MaxUnavailable is how many old instances may stop before their
	// replacements are healthy.
	MaxUnavailable *int `json:"max_unavailable,omitempty"`
	// MinHealthy: a new instance counts as healthy only after being so
	// this long.
	MinHealthy *Duration `json:"min_healthy,omitempty"`
	// ProgressDeadline: no new healthy instance for this long and the
	// rollout fails.
	ProgressDeadline *Duration `json:"progress_deadline,omitempty"`
	// AutoRevert: a failed rollout goes back to the last revision that
	// rolled out.
	AutoRevert *bool `json:"auto_revert,omitempty"`
	// KeepPrevious: the healthy instances an update replaces (of the
	// template current just before it) are stopped and kept this long,
	// not removed, so that a rollback to them starts the same containers
	// again; 0s keeps nothing.
	KeepPrevious *Duration `json:"keep_previous,omitempty"`
	// Canary: every deploy that changes the template starts as a canary.
	Canary *Canary `json:"canary,omitempty"`
}

// Defaults and limits of updates and history.
const (
	DefaultParallel         = 1
	DefaultProgressDeadline = 5 * time.Minute
	DefaultKeepPrevious     = 10 * time.Minute
	MaxKeepPrevious         = 24 * time.Hour
	DefaultHistoryLimit     = 20
	MaxHistoryLimit         = 1000
)

// Default fills in the update's optional fields.
func (u *Update) Default() {
	if u.Parallel == nil {
		u.Parallel = ptr(DefaultParallel)
	}
	if u.MaxUnavailable == nil {
		u.MaxUnavailable = ptr(0)
	}
	if u.MinHealthy == nil {
		u.MinHealthy = ptr(Duration(0))
	}
	if u.ProgressDeadline == nil {
		u.ProgressDeadline = ptr(Duration(DefaultProgressDeadline))
	}
	if u.AutoRevert == nil {
		u.AutoRevert = ptr(true)
	}
	if u.KeepPrevious == nil {
		u.KeepPrevious = ptr(Duration(DefaultKeepPrevious))
	}
}

func (u *Update) validate() error {
	switch {
	case *u.Parallel < 1 || *u.Parallel > MaxReplicas:
		return fieldErr("update.parallel", "%d is not between 1 and %d", *u.Parallel, MaxReplicas)
	case *u.MaxUnavailable < 0 || *u.MaxUnavailable > MaxReplicas:
		return fieldErr("update.max_unavailable", "%d is not between 0 and %d", *u.MaxUnavailable, MaxReplicas)
	case *u.MinHealthy < 0 || time.Duration(*u.MinHealthy) > time.Hour:
		return fieldErr("update.min_healthy", "%s is not between 0s and 1h", time.Duration(*u.MinHealthy))
	case time.Duration(*u.ProgressDeadline) < 5*time.Second || time.Duration(*u.ProgressDeadline) > 24*time.Hour:
		return fieldErr("update.progress_deadline", "%s is not between 5s and 24h", time.Duration(*u.ProgressDeadline))
	case *u.KeepPrevious < 0 || time.Duration(*u.KeepPrevious) > MaxKeepPrevious:
		return fieldErr("update.keep_previous", "%s is not between 0s and 24h", time.Duration(*u.KeepPrevious))
	}
	return nil
}

// UpdateOf is the app's update policy with its defaults.
func (s *AppSpec) UpdateOf() Update {
	var u Update
	if s.Update != nil {
		u = *s.Update
	}
	u.Default()
	return u
}

// HistoryLimitOf is the number of revisions kept.
func (s *AppSpec) HistoryLimitOf() int {
	if s.HistoryLimit == nil {
		return DefaultHistoryLimit
	}
	return *s.HistoryLimit
}

func (s *AppSpec) validateRollout() error {
	if s.Update != nil {
		if err := s.Update.validate(); err != nil {
			return err
		}
	}
	if c := s.CanaryOf(); c != nil {
		if err := c.validate(s.ReplicaCount()); err != nil {
			return err
		}
	}
	if h := s.HistoryLimit; h != nil && (*h < 1 || *h > MaxHistoryLimit) {
		return fieldErr("history_limit", "%d is not between 1 and %d", *h, MaxHistoryLimit)
	}
	return nil
}

// Outcomes of a revision.
const (
	OutcomeRollingOut = "rolling out" // its rollout is under way
	OutcomeRolledOut  = "rolled out"  // every instance of it was healthy
	OutcomeFailed     = "failed"      // its rollout made no progress within the deadline
	OutcomeReverted   = "reverted"    // it failed and the app went back by itself: bad
	OutcomeRolledBack = "rolled back" // a user rolled the app back from it
	OutcomeSuperseded = "superseded"  // a newer revision came before it rolled out
	OutcomeScaled     = "scaled"      // a change of replicas or routing only: nothing rolled
	OutcomeAborted    = "aborted"     // its canary was aborted by a user
)

// Revision is one accepted change of an app, kept in its history.
type Revision struct {
	App      string `json:"app"`
	Revision int64  `json:"revision"`
	// Spec is the whole spec as deployed; ImageDigest what its image
	// resolved to ("" for a local image).
	Spec        AppSpec   `json:"spec"`
	ImageDigest string    `json:"image_digest,omitempty"`
	Created     time.Time `json:"created"`
	// Change is a one-line summary; By the description of the token
	// that made it.
	Change string `json:"change"`
	By     string `json:"by,omitempty"`
	// Template is the revision whose instance template this one runs
	// (itself unless only replicas or routing changed).
	Template int64 `json:"template"`
	// RollbackOf is the revision a rollback or a revert copied.
	RollbackOf int64  `json:"rollback_of,omitempty"`
	Outcome    string `json:"outcome"`
	// Bad: reverted automatically; deploying its spec again needs force.
	Bad     bool      `json:"bad,omitempty"`
	Settled time.Time `json:"settled,omitempty"` // when the outcome was decided
	Reason  string    `json:"reason,omitempty"`  // why it failed
	Version int64     `json:"version,omitempty"`
}

// RevisionKey is the store key of an app's revision: ordered by number.
func RevisionKey(app string, rev int64) string { return fmt.Sprintf("%s/%010d", app, rev) }

// RollbackRequest is the body of POST /v1/apps/{name}/rollback.
type RollbackRequest struct {
	// Revision to return to; 0: the last one that rolled out before the
	// current one.
	Revision int64 `json:"revision,omitempty"`
}

// LastGood is the newest revision before current that rolled out and is
// not bad: where a rollback goes by default, and a revert. history is
// oldest first.
func LastGood(history []Revision, current int64) *Revision {
	for i := len(history) - 1; i >= 0; i-- {
		if h := &history[i]; h.Revision < current && h.Outcome == OutcomeRolledOut && !h.Bad {
			return h
		}
	}
	return nil
}

// ChangeSummary says in a line what changed from one spec to the next:
// the image and replicas with their values, other fields by name.
func ChangeSummary(old, cur AppSpec, oldDigest, curDigest string) string {
	var parts []string
	if old.Image != cur.Image {
		parts = append(parts, fmt.Sprintf("image %s -> %s", old.Image, cur.Image))
	} else if oldDigest != curDigest {
		parts = append(parts, fmt.Sprintf("image %s pushed again (%s)", cur.Image, shortDigest(curDigest)))
	}
	if old.ReplicaCount() != cur.ReplicaCount() {
		parts = append(parts, fmt.Sprintf("replicas %d -> %d", old.ReplicaCount(), cur.ReplicaCount()))
	}
	a, b := specFields(old), specFields(cur)
	for _, k := range sortedKeys(mergeKeys(a, b)) {
		if k == "image" || k == "replicas" || a[k] == b[k] {
			continue
		}
		parts = append(parts, k)
	}
	if len(parts) == 0 {
		return "no change"
	}
	return strings.Join(parts, ", ")
}

// specFields is each top-level field of a spec as JSON.
func specFields(s AppSpec) map[string]string {
	var m map[string]json.RawMessage
	b, _ := json.Marshal(s)
	_ = json.Unmarshal(b, &m)
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}

func mergeKeys(a, b map[string]string) map[string]string {
	out := make(map[string]string, len(a)+len(b))
	for k := range a {
		out[k] = ""
	}
	for k := range b {
		out[k] = ""
	}
	return out
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

// TemplateAfterRollback is the template revision of an app going back to
// revision to (as new revision next): to's own template, so that the
// instances still running it are current again and stay, rather than
// being replaced by identical ones; the app's when nothing changes.
func TemplateAfterRollback(app App, to Revision, next int64) int64 {
	switch {
	case SameTemplate(app.Spec, to.Spec) && app.ImageDigest == to.ImageDigest:
		return app.TemplateRevision
	case to.Template > 0:
		return to.Template
	}
	return next
}
