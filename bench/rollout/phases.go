package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"berth/api"
)

// Where the time goes, from three clocks on this machine: berth's events
// (placed, started, healthy, retired, removed: written by the controller
// and by the API when the agent reports), the engine's container events
// (create, start, kill, die, destroy) and the probe's first answer.

// step is one kind of interval, over every replica of every round.
type step struct {
	name string
	ds   []time.Duration
}

type steps struct {
	order []string
	by    map[string]*step
}

func newSteps() *steps { return &steps{by: map[string]*step{}} }

func (s *steps) add(name string, a, b time.Time) {
	if a.IsZero() || b.IsZero() {
		return
	}
	st := s.by[name]
	if st == nil {
		st = &step{name: name}
		s.by[name] = st
		s.order = append(s.order, name)
	}
	st.ds = append(st.ds, b.Sub(a))
}

func (s *steps) median(name string) time.Duration {
	if st := s.by[name]; st != nil {
		return quantile(st.ds, 0.5)
	}
	return 0
}

func (s *steps) render(w *strings.Builder, indent string) {
	for _, name := range s.order {
		ds := s.by[name].ds
		fmt.Fprintf(w, "%s%-58s median %7s   p90 %7s   max %7s   (n=%d)\n", indent, name, ms(quantile(ds, 0.5)), ms(quantile(ds, 0.9)), ms(quantile(ds, 1)), len(ds))
	}
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s)-1) + 0.5)
	return s[min(i, len(s)-1)]
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond))
}

// life is what happened to one instance (berth) or task slot's container
// (Swarm, the floor) in a phase.
type life struct {
	name, version                     string
	resumed                           bool // a kept instance started again (fast rollback), not placed
	containers                        []string
	placed, started, healthy          time.Time // berth's events
	retired, removed                  time.Time
	create, start, kill, die, destroy time.Time // the engine's, of its container in the phase
	answered                          time.Time // the probe's
}

// lives gathers the engine's events of a phase by key (berth: the
// instance, Swarm: the task slot, floor: the container), and the answers.
func lives(evs []dockerEvent, key func(dockerEvent) string, ans answers) map[string]*life {
	out := map[string]*life{}
	byID := map[string]*life{}
	for _, ev := range evs {
		k := key(ev)
		if k == "" {
			continue
		}
		l := out[k]
		if l == nil {
			l = &life{name: k}
			out[k] = l
		}
		if byID[ev.ID] == nil {
			byID[ev.ID] = l
			l.containers = append(l.containers, ev.ID)
		}
		if v := ev.Attrs["berth.demo.version"]; v != "" {
			l.version = v
		}
		first := func(t *time.Time) {
			if t.IsZero() {
				*t = ev.At
			}
		}
		switch ev.Action {
		case "create":
			first(&l.create)
		case "start":
			first(&l.start)
		case "kill":
			first(&l.kill)
		case "die":
			first(&l.die)
		case "destroy":
			first(&l.destroy)
		}
	}
	for id, at := range ans {
		if l := byID[id]; l != nil && (l.answered.IsZero() || at.Before(l.answered)) {
			l.answered = at
		}
	}
	return out
}

// berthLives is lives with berth's events of the phase added.
func (b *bench) berthLives(m *measurement) map[string]*life {
	evs := b.eng.between(m.t0, m.t1, func(ev dockerEvent) bool {
		return ev.Attrs["berth.cluster"] == m.side.cluster && ev.Attrs["berth.app"] == berthApp
	})
	ls := lives(evs, func(ev dockerEvent) string { return ev.Attrs["berth.instance"] }, m.answers)
	get := func(name string) *life {
		l := ls[name]
		if l == nil {
			l = &life{name: name}
			ls[name] = l
		}
		return l
	}
	for _, e := range m.berthEvents {
		if e.Instance == "" {
			continue
		}
		l := get(e.Instance)
		set := func(t *time.Time) {
			if t.IsZero() {
				*t = e.Time
			}
		}
		switch e.Kind {
		case "placed":
			set(&l.placed)
		case "resumed":
			set(&l.placed)
			l.resumed = true
		case "started", "restarted":
			set(&l.started)
		case "healthy":
			set(&l.healthy)
		case "retired", "kept":
			set(&l.retired)
		case "removed":
			set(&l.removed)
		}
	}
	return ls
}

func sortedBy(ls map[string]*life, pick func(*life) time.Time) []*life {
	var out []*life
	for _, l := range ls {
		if !pick(l).IsZero() {
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return pick(out[i]).Before(pick(out[j])) })
	return out
}

// latestBefore is the latest of ts at or before t (zero: none).
func latestBefore(ts []time.Time, t time.Time) time.Time {
	var best time.Time
	for _, x := range ts {
		if !x.After(t) && x.After(best) {
			best = x
		}
	}
	return best
}

// addBerthUpdate adds a berth rolling update's (or rollback's) intervals
// to s: the new instances' path from placed to healthy, the controller's
// reaction to a healthy one, and the old instances' path from retired to
// gone.
func (b *bench) addBerthUpdate(s *steps, m *measurement, version string) {
	ls := b.berthLives(m)
	news := sortedBy(ls, func(l *life) time.Time {
		if l.version != version {
			return time.Time{}
		}
		return l.start
	})
	var healthy []time.Time
	for _, l := range news {
		healthy = append(healthy, l.healthy)
	}
	if placed := sortedBy(ls, func(l *life) time.Time { return l.placed }); len(placed) > 0 {
		s.add("command issued -> first instance placed/resumed (CLI, API, controller)", m.t0, placed[0].placed)
	}
	for _, l := range news {
		if l.resumed {
			s.add("kept one: resumed -> started again (watch, agent, engine start)", l.placed, l.start)
		} else {
			s.add("new: placed -> container created (watch, agent, create)", l.placed, l.create)
			s.add("new: created -> started (engine)", l.create, l.start)
		}
		s.add("new: started -> 'started' reported (agent's report)", l.start, l.started)
		s.add("new: started -> 'healthy' reported (app up, probe, report)", l.start, l.healthy)
		s.add("new: started -> answers the outside probe", l.start, l.answered)
		if h := latestBefore(healthy, l.placed); !h.IsZero() {
			s.add("controller: a new one healthy -> next one placed/resumed", h, l.placed)
		}
	}
	for _, l := range sortedBy(ls, func(l *life) time.Time { return l.retired }) {
		if h := latestBefore(healthy, l.retired); !h.IsZero() {
			s.add("controller: a new one healthy -> an old one retired/kept", h, l.retired)
		}
		s.add("old: retired/kept -> SIGTERM (agent: stopping report, then stop)", l.retired, l.kill)
		s.add("old: SIGTERM -> exited", l.kill, l.die)
		s.add("old: exited -> container removed (not when kept)", l.die, l.destroy)
		s.add("old: container removed -> record gone ('removed')", l.destroy, l.removed)
	}
	if len(news) > 1 {
		// The rhythm: from one new container's start to the next one's.
		for i := 1; i < len(news); i++ {
			s.add("rhythm: one new container started -> the next started", news[i-1].start, news[i].start)
		}
	}
}

// addDeploy adds a deploy from nothing's intervals to s, from t0 (the
// command) and per container.
func (b *bench) addDeploy(s *steps, ls map[string]*life, t0 time.Time) {
	for _, l := range ls {
		s.add("command -> placed", t0, l.placed)
		s.add("command -> container created", t0, l.create)
		s.add("command -> started", t0, l.start)
		s.add("command -> answers the outside probe", t0, l.answered)
		s.add("per container: placed -> created", l.placed, l.create)
		s.add("per container: created -> started", l.create, l.start)
		s.add("per container: started -> 'healthy' reported", l.start, l.healthy)
		s.add("per container: started -> answers the outside probe", l.start, l.answered)
	}
}

// swarmSlot keys a Swarm task's container by its slot ("svc.3.taskid" -> "3").
func swarmSlot(ev dockerEvent) string {
	name := ev.Attrs["com.docker.swarm.task.name"]
	parts := strings.Split(name, ".")
	if len(parts) < 3 {
		return ""
	}
	return parts[len(parts)-2]
}

// addSwarmUpdate adds Swarm's update intervals: per slot, the old task's
// stop, the new one's create and start, and Swarm's pacing from one new
// task running to the next old one stopped.
func (b *bench) addSwarmUpdate(s *steps, m *measurement) {
	evs := b.eng.between(m.t0, m.t1, func(ev dockerEvent) bool {
		return ev.Attrs["com.docker.swarm.service.name"] == b.service
	})
	var oldEvs, newEvs []dockerEvent
	for _, ev := range evs {
		if ev.Attrs["berth.demo.version"] == "2" {
			newEvs = append(newEvs, ev)
		} else {
			oldEvs = append(oldEvs, ev)
		}
	}
	olds := lives(oldEvs, swarmSlot, nil)
	news := lives(newEvs, swarmSlot, m.answers)
	var starts []time.Time
	for _, n := range news {
		starts = append(starts, n.start)
	}
	killed := sortedBy(olds, func(l *life) time.Time { return l.kill })
	if len(killed) > 0 {
		s.add("command issued -> first old task SIGTERM", m.t0, killed[0].kill)
	}
	for _, o := range killed {
		if st := latestBefore(starts, o.kill); !st.IsZero() {
			s.add("swarm: a new task started -> next old one SIGTERM", st, o.kill)
		}
		s.add("old: SIGTERM -> exited", o.kill, o.die)
		if n := news[o.name]; n != nil {
			s.add("slot: new container created (Swarm prepares it first) -> old SIGTERM", n.create, o.kill)
			s.add("slot: old exited -> new container started", o.die, n.start)
			s.add("new: created -> started (engine)", n.create, n.start)
			s.add("new: started -> answers the outside probe", n.start, n.answered)
		}
	}
	ns := sortedBy(news, func(l *life) time.Time { return l.start })
	for i := 1; i < len(ns); i++ {
		s.add("rhythm: one new container started -> the next started", ns[i-1].start, ns[i].start)
	}
}

func (b *bench) sideLives(m *measurement, match func(dockerEvent) bool, key func(dockerEvent) string) map[string]*life {
	return lives(b.eng.between(m.t0, m.t1, match), key, m.answers)
}

func containerKey(ev dockerEvent) string { return ev.ID }

// berthEventsText is every berth event of a phase, for -v.
func berthEventsText(evs []api.Event, t0 time.Time) string {
	var w strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&w, "    %+7.2fs  %-12s %-10s %s\n", e.Time.Sub(t0).Seconds(), e.Instance, e.Kind, e.Message)
	}
	return w.String()
}
