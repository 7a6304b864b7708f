package controller

import (
	"fmt"
	"sort"
	"time"

	"berth/api"
)

// Fast rollback: the healthy instances a rolling update replaces, of the
// template current just before it, are stopped and kept (Desired keep,
// KeptUntil) for the app's update.keep_previous, at most replicas of
// them, instead of being removed. They count for nothing (neither old nor
// current, holding no room on their node) until a rollback or revert
// makes their template current again: then they start again in place of
// new instances, as new ones that must prove their health, and the
// rolling update retires the others against them as usual. They are
// retired when their time is up, their node drains or is lost, or an
// update keeps the instances of another template.

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
// current template start again; while an update runs, those of the
// template it replaces stay and more of it are kept, and those of any
// other go.
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

// unkeep starts the kept instances of the current template again, lowest
// index first, in place of new ones while fewer than want are current.
// They count as new ones starting: not healthy until the agent says so.
func (k *keeping) unkeep(p *Plan, cur []api.Instance, want int) []api.Instance {
	sort.SliceStable(k.resumable, func(a, b int) bool { return k.resumable[a].Index < k.resumable[b].Index })
	for _, inst := range k.resumable {
		if len(cur) >= want {
			k.stay = append(k.stay, inst)
			k.n++
			continue
		}
		p.Unkeep = append(p.Unkeep, inst.Name)
		inst.Desired, inst.KeptUntil = api.DesiredRun, time.Time{}
		inst.Status.Healthy, inst.Status.State = false, api.StateStarting
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
