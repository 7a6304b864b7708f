package api

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Percent is a share, written "10%", "0.5%" or 10 (percent), kept in
// basis points (hundredths of a percent): 0 to 10000.
type Percent int

// ParsePercent reads "10%", "10" or "0.5%".
func ParsePercent(s string) (Percent, error) {
	t := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "%"))
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%q: want a percentage like 10%% or 0.5%%", s)
	}
	if f < 0 || f > 100 {
		return 0, fmt.Errorf("%s is not between 0%% and 100%%", s)
	}
	return Percent(math.Round(f * 100)), nil
}

func (p Percent) String() string {
	return strings.TrimSuffix(strings.TrimRight(strconv.FormatFloat(float64(p)/100, 'f', 2, 64), "0"), ".") + "%"
}

// Fraction is p as a number from 0 to 1.
func (p Percent) Fraction() float64 { return float64(p) / 10000 }

func (p Percent) MarshalJSON() ([]byte, error) { return json.Marshal(p.String()) }

func (p *Percent) UnmarshalJSON(b []byte) error {
	s, err := stringOrNumber(b)
	if err != nil {
		return ownTypeError(err, p)
	}
	v, err := ParsePercent(s)
	if err != nil {
		return ownTypeError(err, p)
	}
	*p = v
	return nil
}

// Canary, in an app's update policy, makes every deploy that changes the
// instance template start as a canary: a few instances of the new
// template beside the stable ones, given a share of the gateway's traffic,
// promoted after Duration when that traffic was healthy, aborted when not.
type Canary struct {
	Weight    *Percent  `json:"weight,omitempty"`    // share of the gateway's traffic (default 10%)
	Instances *int      `json:"instances,omitempty"` // canary instances, beside the replicas (default 1)
	Duration  *Duration `json:"duration,omitempty"`  // then promoted if healthy (default 5m; 0s: by hand only)
	// MaxErrorRate: 5xx answers and connect failures of the canary's
	// requests, over its window (default 1%).
	MaxErrorRate *Percent `json:"max_error_rate,omitempty"`
	// MaxP99Ratio: the canary's p99 latency over the stable one's
	// (default 1.5; 0: latency is not judged).
	MaxP99Ratio *float64 `json:"max_p99_ratio,omitempty"`
}

// Canary defaults and limits.
const (
	DefaultCanaryWeight   = Percent(1000)
	DefaultCanaryDuration = 5 * time.Minute
	DefaultCanaryErrors   = Percent(100)
	DefaultCanaryP99Ratio = 1.5
	MaxCanaryDuration     = 24 * time.Hour
)

// Default fills in the canary's optional fields.
func (c *Canary) Default() {
	if c.Weight == nil {
		c.Weight = ptr(DefaultCanaryWeight)
	}
	if c.Instances == nil {
		c.Instances = ptr(1)
	}
	if c.Duration == nil {
		c.Duration = ptr(Duration(DefaultCanaryDuration))
	}
	if c.MaxErrorRate == nil {
		c.MaxErrorRate = ptr(DefaultCanaryErrors)
	}
	if c.MaxP99Ratio == nil {
		c.MaxP99Ratio = ptr(DefaultCanaryP99Ratio)
	}
}

// validate checks a defaulted canary of an app of replicas instances.
func (c *Canary) validate(replicas int) error {
	switch {
	case *c.Weight < 0 || *c.Weight > 10000:
		return fieldErr("update.canary.weight", "%s is not between 0%% and 100%%", *c.Weight)
	case *c.Instances < 1:
		return fieldErr("update.canary.instances", "%d: want at least 1", *c.Instances)
	case replicas > 0 && *c.Instances > replicas:
		return fieldErr("update.canary.instances", "%d canary instances for %s: a canary is at most as large as the app", *c.Instances, Count(replicas, "replica"))
	case *c.Duration < 0 || time.Duration(*c.Duration) > MaxCanaryDuration:
		return fieldErr("update.canary.duration", "%s is not between 0s and 24h", time.Duration(*c.Duration))
	case *c.MaxErrorRate < 0 || *c.MaxErrorRate > 10000:
		return fieldErr("update.canary.max_error_rate", "%s is not between 0%% and 100%%", *c.MaxErrorRate)
	case math.IsNaN(*c.MaxP99Ratio) || *c.MaxP99Ratio < 0 || *c.MaxP99Ratio > 1000:
		return fieldErr("update.canary.max_p99_ratio", "%g is not between 0 and 1000", *c.MaxP99Ratio)
	}
	return nil
}

// CanaryOf is the app's canary policy with its defaults, or nil.
func (s *AppSpec) CanaryOf() *Canary {
	if s.Update == nil || s.Update.Canary == nil {
		return nil
	}
	c := *s.Update.Canary
	c.Default()
	return &c
}

// CanaryState is an app's canary in progress: the app's current template
// (App.TemplateRevision) runs on Instances instances beside the replicas
// of the stable template and gets Weight of the gateway's traffic.
type CanaryState struct {
	Revision     int64   `json:"revision"` // the app revision being tried
	Stable       int64   `json:"stable"`   // template revision of the stable side
	StableSpec   AppSpec `json:"stable_spec"`
	StableDigest string  `json:"stable_digest,omitempty"`
	Weight       Percent `json:"weight"`
	Instances    int     `json:"instances"`
	// Policy is what judges it (the spec's canary, or the defaults).
	Policy  Canary    `json:"policy"`
	Started time.Time `json:"started"`
	// PromoteAt: promoted then if its traffic was healthy; zero: by hand
	// only. While paused, Left is what remained of it.
	PromoteAt time.Time `json:"promote_at,omitempty"`
	Left      Duration  `json:"left,omitempty"`
}

// CanaryRequest asks a deploy to start as a canary (PUT /v1/apps/{name}
// ?canary=10% or ?canary=2): a weight, or a number of instances; what
// it does not give comes from the spec's canary or the defaults.
type CanaryRequest struct {
	Weight    *Percent
	Instances *int
}

// ParseCanaryFlag reads --canary: "10%" is a weight, "2" instances.
func ParseCanaryFlag(s string) (CanaryRequest, error) {
	s = strings.TrimSpace(s)
	if strings.HasSuffix(s, "%") {
		p, err := ParsePercent(s)
		if err != nil {
			return CanaryRequest{}, fmt.Errorf("--canary %w", err)
		}
		return CanaryRequest{Weight: &p}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return CanaryRequest{}, fmt.Errorf("--canary %q: want a share of traffic like 10%% or a number of instances like 2", s)
	}
	return CanaryRequest{Instances: &n}, nil
}

// Rollout phases, as GET /v1/apps/{name}/rollout tells them.
const (
	PhaseCanary     = "canary"     // canaries beside the stable revision, weighted
	PhasePaused     = "paused"     // a canary or a rolling update held by rollout pause
	PhaseRolling    = "rolling"    // a rolling update under way
	PhaseRolledOut  = "rolled out" // nothing under way
	PhaseFailedStop = "failed"     // the last rollout failed and nothing reverted it
	PhaseIdled      = "idled"      // scaled to zero
)

// RevisionTraffic is what the gateways saw of one revision's requests
// over a window.
type RevisionTraffic struct {
	Revision        int64   `json:"revision"`
	Requests        int64   `json:"requests"`
	Errors          int64   `json:"errors"`           // answers >= 500
	ConnectFailures int64   `json:"connect_failures"` // connects to its instances that failed
	ErrorRate       float64 `json:"error_rate"`       // (errors + connect failures) / requests, 0..1
	P50             float64 `json:"p50_seconds"`
	P99             float64 `json:"p99_seconds"`
	Buckets         []int64 `json:"buckets,omitempty"` // counts per LatencyBuckets (+1 for slower)
}

// LatencyBuckets are the upper bounds, in seconds, of the gateways'
// latency counts (RevisionTraffic.Buckets has one more, for slower).
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Quantile estimates the q-quantile (0..1) of a latency distribution from
// its bucket counts, interpolating inside the bucket; 0 without counts.
func Quantile(buckets []int64, q float64) float64 {
	var total int64
	for _, n := range buckets {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var seen int64
	for i, n := range buckets {
		if n == 0 || float64(seen+n) < rank {
			seen += n
			continue
		}
		lo := 0.0
		if i > 0 {
			lo = LatencyBuckets[i-1]
		}
		if i >= len(LatencyBuckets) {
			return lo // slower than the last bound: say the bound
		}
		hi := LatencyBuckets[i]
		return lo + (hi-lo)*(rank-float64(seen))/float64(n)
	}
	return LatencyBuckets[len(LatencyBuckets)-1]
}

// Finish computes the rate and quantiles from the counts.
func (t *RevisionTraffic) Finish() {
	if t.Requests > 0 {
		t.ErrorRate = float64(t.Errors+t.ConnectFailures) / float64(t.Requests)
	}
	t.P50, t.P99 = Quantile(t.Buckets, .5), Quantile(t.Buckets, .99)
}

// RolloutRevision is one side of a rollout.
type RolloutRevision struct {
	Revision int64            `json:"revision"` // template revision
	Role     string           `json:"role"`     // "stable", "canary", "new" or "old"
	Image    string           `json:"image,omitempty"`
	Weight   *Percent         `json:"weight,omitempty"`
	Healthy  int              `json:"healthy"`
	Total    int              `json:"total"`
	Traffic  *RevisionTraffic `json:"traffic,omitempty"`
}

// RolloutStatus is GET /v1/apps/{name}/rollout.
type RolloutStatus struct {
	App       string            `json:"app"`
	Revision  int64             `json:"revision"`
	Phase     string            `json:"phase"`
	Outcome   string            `json:"outcome,omitempty"` // of the current revision
	Paused    bool              `json:"paused,omitempty"`
	Revisions []RolloutRevision `json:"revisions"`
	// Deadline: when the phase ends by itself (promotion, the progress
	// deadline); Next says what happens then.
	Deadline time.Time `json:"deadline,omitempty"`
	Next     string    `json:"next,omitempty"`
	Canary   *Canary   `json:"canary,omitempty"` // the policy judging the canary
	Since    time.Time `json:"since,omitempty"`  // the window of the traffic figures
}

// GatewayTraffic is what a gateway reports (POST /v1/gateway/traffic):
// its cumulative counts since it started, per app and revision.
type GatewayTraffic struct {
	Gateway string       `json:"gateway"` // an id of the gateway process
	Started time.Time    `json:"started"` // when its counts began
	Apps    []AppTraffic `json:"apps"`
	Updated time.Time    `json:"updated,omitempty"` // set by the server
	Version int64        `json:"version,omitempty"`
}

// AppTraffic is one app's revisions in a gateway's report, counted from
// when the gateway first routed the split it names.
type AppTraffic struct {
	App       string            `json:"app"`
	Stable    int64             `json:"stable"`
	Canary    int64             `json:"canary"`
	Since     time.Time         `json:"since"`
	Revisions []RevisionTraffic `json:"revisions"`
}

// TrafficStale: a gateway's report older than this is left out of the
// traffic figures (the gateway is gone); gateways report every 2s.
const TrafficStale = 30 * time.Second

// CanaryAbort is what an abort of the app's canary writes besides the
// tried revision's mark (MarkCanaryAborted): the app back on the stable
// template as a new revision (AfterCanaryAbort), that revision's record,
// and a line saying what changed.
func CanaryAbort(app App, now time.Time, by string) (next App, rec Revision, change string) {
	c, tried := app.Canary, app.Revision
	next = AfterCanaryAbort(app, now)
	change = fmt.Sprintf("canary of revision %d aborted: back to revision %d", tried, c.Stable)
	rec = Revision{App: next.Spec.Name, Revision: next.Revision, Spec: next.Spec, ImageDigest: next.ImageDigest, Created: now,
		Change: change, By: by, Template: next.TemplateRevision, RollbackOf: c.Stable, Outcome: OutcomeRollingOut}
	return next, rec, change
}

// MarkCanaryAborted is the tried revision's outcome after an abort: by a
// user, aborted; by the server (bad), reverted and bad.
func MarkCanaryAborted(r *Revision, now time.Time, bad bool, reason string) {
	r.Outcome, r.Settled, r.Reason, r.Bad = OutcomeAborted, now, reason, bad
	if bad {
		r.Outcome = OutcomeReverted
	}
}

// AfterCanaryAbort is the app once its canary is aborted: back to the
// stable template, as a new revision, so that the stable instances are
// current again and stay, and the canaries are retired.
func AfterCanaryAbort(app App, now time.Time) App {
	c := app.Canary
	next := app
	next.Spec = c.StableSpec
	next.Spec.Replicas = app.Spec.Replicas // a scale meanwhile holds
	next.ImageDigest = c.StableDigest
	next.TemplateRevision = c.Stable
	next.Revision++
	next.Updated = now
	next.Canary, next.Paused = nil, false
	return next
}

// TrafficOf sums, over the gateways' reports, an app's traffic per
// revision counted under one split (its stable and canary revisions):
// each gateway counts from when it first routed that split. Reports older
// than stale are left out (a gateway that is gone).
func TrafficOf(app string, stable, canary int64, reports []GatewayTraffic, now time.Time, stale time.Duration) map[int64]*RevisionTraffic {
	out := map[int64]*RevisionTraffic{}
	for _, g := range reports {
		if stale > 0 && now.Sub(g.Updated) > stale {
			continue
		}
		for _, a := range g.Apps {
			if a.App != app || a.Stable != stable || a.Canary != canary {
				continue
			}
			for _, r := range a.Revisions {
				t := out[r.Revision]
				if t == nil {
					t = &RevisionTraffic{Revision: r.Revision, Buckets: make([]int64, len(LatencyBuckets)+1)}
					out[r.Revision] = t
				}
				t.Requests += r.Requests
				t.Errors += r.Errors
				t.ConnectFailures += r.ConnectFailures
				for i := range min(len(r.Buckets), len(t.Buckets)) {
					t.Buckets[i] += r.Buckets[i]
				}
			}
		}
	}
	for _, t := range out {
		t.Finish()
	}
	return out
}
