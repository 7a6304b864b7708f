package controller

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"berth/api"
)

// Plan is what one app needs done to its instances.
type Plan struct {
	Create    []api.Instance
	Retire    map[string]string // instance name -> reason
	Lost      map[string]string // instance name -> why: its node is down or gone; retired too
	Idle      []string          // instances to stop and keep: the app is scaled to zero
	Resume    []string          // idle instances to start again: the app was woken
	DeleteApp bool              // app is being removed and nothing of it is left
	// RecheckAt: plan again then though nothing changed (a new instance
	// reaches min_healthy, a kept one expires); zero: no need.
	RecheckAt time.Time
	// Kept: of Retire, those stopped and kept until then for a fast
	// rollback (Desired keep), not removed (see kept.go).
	Kept map[string]time.Time
	// Unkeep: kept instances that start again (a rollback to their
	// template); their Desired becomes run.
	Unkeep []string
}

// PlanApp compares an app with its instances and decides, without I/O,
// which instances to create and which to retire. A rolling update follows
// the app's update policy (see policy): at most parallel new instances
// start at once and at most replicas+parallel exist; healthy old ones are
// retired while at least replicas-max_unavailable stay healthy, a new one
// counting once it has been healthy for min_healthy. With the defaults a
// new instance starts, becomes healthy, then an old one is retired.
// Unhealthy and broken old instances are retired at once.
//
// nodes gives the state of each node (ready, down, draining); an
// instance on a node that is down or not in nodes is lost and replaced at
// once, and instances on a draining node move like old ones in a rolling
// update, one at a time. A nil nodes map says nothing: every node is
// taken as ready.
func PlanApp(app api.App, instances []api.Instance, nodes map[string]string, now time.Time) Plan {
	if app.Canary != nil && !app.Deleting {
		return planCanary(app, instances, nodes, now)
	}
	return planApp(app, instances, nodes, now, nil)
}

// planApp is PlanApp of one template; new instances take indexes not in
// used (nil: those of instances), which it marks.
func planApp(app api.App, instances []api.Instance, nodes map[string]string, now time.Time, used map[int]bool) Plan {
	p := Plan{Retire: map[string]string{}, Lost: map[string]string{}, Kept: map[string]time.Time{}}
	var active, kept []api.Instance
	draining := map[string]bool{}
	for _, inst := range instances {
		if inst.Desired == api.DesiredStop {
			continue
		}
		lost := ""
		switch state, known := nodes[inst.Node]; {
		case nodes == nil || inst.Node == "" || state == api.NodeReady:
		case !known:
			lost = fmt.Sprintf("lost: node %s is gone", inst.Node)
		case state == api.NodeDown:
			lost = fmt.Sprintf("lost: node %s is down", inst.Node)
		case state == api.NodeDraining:
			draining[inst.Name] = true
		}
		switch {
		case inst.Desired == api.DesiredKeep && lost != "":
			p.Retire[inst.Name] = keptFor(inst) + ": " + lost // nothing to replace
		case inst.Desired == api.DesiredKeep:
			kept = append(kept, inst)
		case lost != "":
			p.Lost[inst.Name] = lost
		default:
			active = append(active, inst)
		}
	}
	for name, why := range p.Lost {
		p.Retire[name] = why
	}
	if app.Deleting {
		for _, inst := range append(active, kept...) {
			p.Retire[inst.Name] = api.StopAppRemoved
		}
		p.DeleteApp = len(instances) == 0
		return p
	}
	kept = p.expireKept(kept, draining, now)
	// Scaled to zero: every instance stops and keeps its container, and
	// nothing else changes until the app is woken.
	if app.Idled {
		for _, inst := range active {
			if inst.Desired == api.DesiredRun {
				p.Idle = append(p.Idle, inst.Name)
			}
		}
		p.recheckKept(kept)
		return p
	}
	for i, inst := range active {
		if inst.Desired == api.DesiredIdle {
			p.Resume = append(p.Resume, inst.Name)
			active[i].Desired = api.DesiredRun
		}
	}

	// Instances that stayed unhealthy past their retries are replaced;
	// those of the current template that never became healthy are
	// replaced after a backoff (see replaceSick), so that a template
	// that cannot get healthy is not replaced in a tight loop.
	staying := active[:0:0]
	var sick []api.Instance
	for _, inst := range active {
		switch {
		case !inst.Status.Replace:
			staying = append(staying, inst)
		case inst.Revision == app.TemplateRevision && !inst.Status.EverHealthy:
			sick = append(sick, inst)
			p.Retire[inst.Name] = "never became healthy past its retries" // replaceSick says by what
		default:
			p.Retire[inst.Name] = "unhealthy past its retries: replaced"
		}
	}
	active = staying

	var cur, old []api.Instance
	for _, inst := range active {
		if inst.Revision == app.TemplateRevision && !draining[inst.Name] {
			cur = append(cur, inst)
		} else {
			old = append(old, inst)
		}
	}
	want := app.Spec.ReplicaCount()
	r := newPolicy(app, now)
	k := keptPlan(&p, app, kept, old)
	cur = k.unkeep(&p, cur, want)
	p.recheckKept(k.stay)
	healthy := 0 // old ones healthy and new ones past min_healthy
	for _, inst := range old {
		if isHealthy(inst) {
			healthy++
		}
	}
	for _, inst := range cur {
		if r.counts(inst) {
			healthy++
		}
	}
	if len(old) > 0 {
		p.RecheckAt = earliest(p.RecheckAt, r.recheck(cur))
	}

	// Old instances: broken ones go at once; healthy ones while more than
	// replicas-max_unavailable stay healthy. Those beyond the replicas
	// (the spec lowered them) are not replaced but scaled down: the
	// surplus is what exceeds the replicas and the new instances a
	// rolling update adds while it runs.
	surplus := len(old) + len(cur) - want
	if len(old) > 0 {
		// The new ones that replace old ones: up to parallel, or as many
		// as the old ones when more came at once (a rollback starts its
		// kept instances at once).
		surplus -= min(len(cur), max(r.parallel, len(old)))
	}
	starting := r.starting(cur)
	oldLeft := len(old)
	sortForRetirement(old)
	for _, inst := range old {
		why := fmt.Sprintf("replaced by revision %d", app.TemplateRevision)
		if draining[inst.Name] {
			why = fmt.Sprintf("moved off node %s: draining", inst.Node)
		}
		retire, keep := false, false
		switch {
		case want == 0:
			p.Retire[inst.Name] = "scaled to zero"
			oldLeft--
		case !isHealthy(inst):
			retire = true
		case healthy > want-r.unavailable && !r.keepLast(oldLeft, healthy, want, len(cur), starting):
			retire, keep = true, !draining[inst.Name]
			healthy--
		}
		if retire {
			oldLeft--
			if surplus > 0 {
				why, keep = "scaled down", false
				surplus--
			}
			p.Retire[inst.Name] = why
			if keep {
				k.keep(&p, inst, want, r)
			}
		}
	}
	remainingOld := oldLeft

	// Current instances: scale down the surplus, least useful first.
	if len(cur) > want {
		sortForRetirement(cur)
		for _, inst := range cur[:len(cur)-want] {
			p.Retire[inst.Name] = "scaled down"
		}
		cur = cur[len(cur)-want:]
	}

	// Create what is missing; during a rolling update, parallel beyond
	// the replicas at most, and parallel starting at once but for the
	// places that lack a healthy instance beyond max_unavailable (broken
	// old ones, more replicas): those are filled at once.
	missing := want - len(cur)
	if remainingOld > 0 {
		room := want + r.parallel - len(cur) - remainingOld
		surge := max(r.parallel+r.unavailable-r.starting(cur), 0) + max(want-r.unavailable-healthy, 0)
		missing = min(missing, room, surge)
	}
	if app.Paused && remainingOld > 0 {
		missing = holdPaused(p, old, want, len(cur), remainingOld, missing)
	}
	if missing > 0 {
		if used == nil {
			used = map[int]bool{}
			for _, inst := range instances {
				used[inst.Index] = true
			}
		}
		next := 1
		for range missing {
			for used[next] {
				next++
			}
			used[next] = true
			p.Create = append(p.Create, NewInstance(app, next, now))
		}
	}
	replaceSick(p, sick, now)
	return p
}

// holdPaused keeps a paused rolling update where it is: no healthy old
// instance is retired for a new one, and new ones are created only for
// places left empty (a broken or lost instance). It returns how many to
// create.
func holdPaused(p Plan, old []api.Instance, want, cur, oldLeft, missing int) int {
	for _, inst := range old {
		if why, ok := p.Retire[inst.Name]; ok && isHealthy(inst) && strings.HasPrefix(why, "replaced by") {
			delete(p.Retire, inst.Name)
			oldLeft++
		}
	}
	return min(missing, max(want-cur-oldLeft, 0))
}

// replaceSick gives the new instances the places of the sick ones (never
// healthy, of the current template) with the next attempt's backoff, and
// says so in the sick ones' retire reasons. The longest streaks go first.
func replaceSick(p Plan, sick []api.Instance, now time.Time) {
	sort.SliceStable(sick, func(a, b int) bool { return sick[a].Attempt > sick[b].Attempt })
	for i := range min(len(sick), len(p.Create)) {
		s, n := sick[i], &p.Create[i]
		n.Attempt = max(s.Attempt, 1) + 1
		wait := ReplaceBackoff(n.Attempt)
		n.NotBefore = now.Add(wait)
		n.Reason = fmt.Sprintf("replaces %s, which never became healthy: placed after a backoff of %s (attempt %d)", s.Name, wait, n.Attempt)
		p.Retire[s.Name] = fmt.Sprintf("never became healthy: replaced by %s in %s (attempt %d)", n.Name, wait, n.Attempt)
	}
}

// ReplaceBackoff is how long the attempt-th instance in a row that
// replaces never-healthy ones waits before it is placed: 1s for the
// second, doubling to 1m, like the restarts of a crashing container.
func ReplaceBackoff(attempt int) time.Duration {
	if attempt < 2 {
		return 0
	}
	return min(time.Second<<min(attempt-2, 6), time.Minute)
}

// NewInstance is the record of a new instance of the app's current template.
func NewInstance(app api.App, index int, now time.Time) api.Instance {
	spec := app.Spec
	spec.Replicas = nil // the template; replicas belong to the app
	return api.Instance{
		Name:        fmt.Sprintf("%s-%d", app.Spec.Name, index),
		App:         app.Spec.Name,
		Index:       index,
		Revision:    app.TemplateRevision,
		Spec:        spec,
		ImageDigest: app.ImageDigest,
		Desired:     api.DesiredRun,
		Created:     now,
		Status:      api.Status{State: api.StatePending},
	}
}

// policy is an app's update policy as PlanApp applies it at now.
type policy struct {
	parallel, unavailable int
	minHealthy, keep      time.Duration
	now                   time.Time
}

func newPolicy(app api.App, now time.Time) policy {
	u := app.Spec.UpdateOf()
	return policy{parallel: *u.Parallel, unavailable: *u.MaxUnavailable, minHealthy: u.MinHealthy.D(), keep: u.KeepPrevious.D(), now: now}
}

// counts: a new instance counts as healthy for the rollout once it has
// been so for min_healthy. One without HealthySince (reported by an older
// agent) counts at once, as before min_healthy was.
func (r policy) counts(inst api.Instance) bool {
	since := inst.Status.HealthySince
	return isHealthy(inst) && (r.minHealthy <= 0 || since.IsZero() || !r.now.Before(since.Add(r.minHealthy)))
}

// starting is how many new instances do not count as healthy yet.
func (r policy) starting(cur []api.Instance) int {
	n := 0
	for _, inst := range cur {
		if !r.counts(inst) {
			n++
		}
	}
	return n
}

// recheck is when the first healthy new instance that does not count yet
// reaches min_healthy; zero: none.
func (r policy) recheck(cur []api.Instance) time.Time {
	var at time.Time
	for _, inst := range cur {
		if isHealthy(inst) && !r.counts(inst) {
			if t := inst.Status.HealthySince.Add(r.minHealthy); at.IsZero() || t.Before(at) {
				at = t
			}
		}
	}
	return at
}

// keepLast: the last old instance stays while retiring it early (below
// the replicas healthy, as max_unavailable allows) would end the update
// with more left to create than parallel allows to start: once no old
// one is left, what is missing is created at once.
func (r policy) keepLast(oldLeft, healthy, want, cur, starting int) bool {
	return oldLeft == 1 && healthy <= want && want-cur > max(r.parallel+r.unavailable-starting, 0)
}

func isHealthy(inst api.Instance) bool {
	return inst.Status.Healthy && inst.Status.State == api.StateRunning
}

// sortForRetirement orders instances so that the ones to retire first come
// first: not placed, then not healthy, then the highest index.
func sortForRetirement(insts []api.Instance) {
	rank := func(i api.Instance) int {
		switch {
		case i.Node == "":
			return 0
		case !isHealthy(i):
			return 1
		}
		return 2
	}
	sort.SliceStable(insts, func(a, b int) bool {
		ra, rb := rank(insts[a]), rank(insts[b])
		if ra != rb {
			return ra < rb
		}
		return insts[a].Index > insts[b].Index
	})
}
