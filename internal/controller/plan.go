package controller

import (
	"fmt"
	"sort"
	"time"

	"berth/api"
)

// Plan is what one app needs done to its instances.
type Plan struct {
	Create    []api.Instance
	Retire    map[string]string // instance name -> reason
	Lost      map[string]string // instance name -> why: its node is down or gone; retired too
	Idle      []string          // instances to stop and keep: the app is scaled to zero
	Resume    []string          // idle or kept instances to start again: the app was woken, or rolled back to them
	DeleteApp bool              // app is being removed and nothing of it is left
	// RecheckAt: plan again then though nothing changed (a new instance
	// reaches min_healthy, a kept one expires); zero: no need.
	RecheckAt time.Time

	// Kept: of Retire, those stopped and kept until then for a fast
	// rollback (Desired idle, KeptUntil), not removed.
	Kept map[string]time.Time
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
//
// Fast rollback: the healthy instances an update replaces, of the template
// current just before it, are kept (stopped, see keptPlan) for the app's
// update.keep_previous, at most replicas of them. They count for nothing
// here until a rollback makes their template current again: then they
// start again in place of new instances.
func PlanApp(app api.App, instances []api.Instance, nodes map[string]string, now time.Time) Plan {
	p := Plan{Retire: map[string]string{}, Lost: map[string]string{}, Kept: map[string]time.Time{}}
	var active, keptInsts []api.Instance
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
		case isKept(inst) && lost != "":
			p.Retire[inst.Name] = keptFor(inst) + ": " + lost // nothing to replace
		case isKept(inst):
			keptInsts = append(keptInsts, inst)
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
		for _, inst := range append(active, keptInsts...) {
			p.Retire[inst.Name] = api.StopAppRemoved
		}
		p.DeleteApp = len(instances) == 0
		return p
	}
	keptInsts = p.expireKept(keptInsts, draining, now)
	// Scaled to zero: every instance stops and keeps its container, and
	// nothing else changes until the app is woken.
	if app.Idled {
		for _, inst := range active {
			if inst.Desired == api.DesiredRun {
				p.Idle = append(p.Idle, inst.Name)
			}
		}
		p.recheckKept(keptInsts)
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
	kept := active[:0:0]
	var sick []api.Instance
	for _, inst := range active {
		switch {
		case !inst.Status.Replace:
			kept = append(kept, inst)
		case inst.Revision == app.TemplateRevision && !inst.Status.EverHealthy:
			sick = append(sick, inst)
			p.Retire[inst.Name] = "never became healthy past its retries" // replaceSick says by what
		default:
			p.Retire[inst.Name] = "unhealthy past its retries: replaced"
		}
	}
	active = kept

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
	k := keptPlan(&p, app, keptInsts, old)
	cur = k.resume(&p, cur, want)
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
	// surplus is what exceeds the replicas and the new instances (up to
	// parallel, or as many as the old ones when more came at once: a
	// rollback resumes its kept instances at once) that replace them.
	surplus := len(old) + len(cur) - want
	if len(old) > 0 {
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
	if missing > 0 {
		used := map[int]bool{}
		for _, inst := range instances {
			used[inst.Index] = true
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

// isKept: an instance a rolling update replaced, stopped and kept for a
// fast rollback.
func isKept(inst api.Instance) bool {
	return inst.Desired == api.DesiredIdle && !inst.KeptUntil.IsZero()
}

// keptFor starts the reasons of a kept instance.
func keptFor(inst api.Instance) string {
	return "kept for a fast rollback until " + inst.KeptUntil.UTC().Format(time.RFC3339)
}

// expireKept retires the kept instances whose time is up, or whose node
// drains (they would start there), and returns the others.
func (p *Plan) expireKept(kept []api.Instance, draining map[string]bool, now time.Time) []api.Instance {
	var left []api.Instance
	for _, inst := range kept {
		switch {
		case !now.Before(inst.KeptUntil):
			p.Retire[inst.Name] = keptFor(inst) + ": expired"
		case draining[inst.Name]:
			p.Retire[inst.Name] = keptFor(inst) + ": node " + inst.Node + " is draining"
		default:
			left = append(left, inst)
		}
	}
	return left
}

// recheckKept: the plan is made again when the first of the instances
// that stay kept is up.
func (p *Plan) recheckKept(kept []api.Instance) {
	for _, inst := range kept {
		p.RecheckAt = earliest(p.RecheckAt, inst.KeptUntil)
	}
}

// keeping is what a plan does with the kept instances: those of the
// current template (after a rollback) resume; while an update runs, those
// of the template it replaces stay and more of it are kept, and those of
// any other go.
type keeping struct {
	template  int64 // the template whose instances the update keeps: the newest of the old ones; 0: none
	resumable []api.Instance
	stay      []api.Instance // kept ones that stay so
	n         int            // kept once the plan is carried out
}

func keptPlan(p *Plan, app api.App, kept, old []api.Instance) *keeping {
	k := &keeping{}
	for _, inst := range old {
		if inst.Revision != app.TemplateRevision { // not just on a draining node
			k.template = max(k.template, inst.Revision)
		}
	}
	for _, inst := range kept {
		switch {
		case inst.Revision == app.TemplateRevision:
			k.resumable = append(k.resumable, inst)
			continue
		case k.template != 0 && inst.Revision != k.template:
			p.Retire[inst.Name] = fmt.Sprintf("%s: superseded, the update to revision %d keeps revision %d's instead", keptFor(inst), app.TemplateRevision, k.template)
			continue
		}
		k.stay = append(k.stay, inst)
		k.n++
	}
	return k
}

// resume starts the kept instances of the current template again, lowest
// index first, in place of new ones while fewer than want are current;
// they count as new ones starting.
func (k *keeping) resume(p *Plan, cur []api.Instance, want int) []api.Instance {
	sort.SliceStable(k.resumable, func(a, b int) bool { return k.resumable[a].Index < k.resumable[b].Index })
	for _, inst := range k.resumable {
		if len(cur) >= want {
			k.stay = append(k.stay, inst)
			k.n++
			continue
		}
		p.Resume = append(p.Resume, inst.Name)
		inst.Desired, inst.KeptUntil = api.DesiredRun, time.Time{}
		cur = append(cur, inst)
	}
	return cur
}

// keep keeps a healthy old instance the update retires as replaced, if it
// is of the template kept and fewer than want are kept.
func (k *keeping) keep(p *Plan, inst api.Instance, want int, r policy) {
	if r.keep > 0 && inst.Node != "" && inst.Revision == k.template && k.n < want {
		p.Kept[inst.Name] = r.now.Add(r.keep)
		k.n++
	}
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
