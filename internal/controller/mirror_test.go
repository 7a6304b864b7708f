package controller

import (
	"strings"
	"testing"

	"berth/api"
	"berth/internal/store"
)

func queueMirror() *mirror[api.Queue] {
	return newMirror(func(q *api.Queue) string { return q.Name }, func(q *api.Queue) *int64 { return &q.Version })
}

func queueAt(name string, concurrency int, version int64) api.Queue {
	return api.Queue{Name: name, Concurrency: concurrency, Version: version}
}

func concurrency(m *mirror[api.Queue], name string) int {
	if q := m.items[name]; q != nil {
		return q.Concurrency
	}
	return -1
}

// The mirror never goes back in time: not for an event older than what it
// holds, not for a list older than its own writes, not for an event in
// flight from before the last list.
func TestMirrorKeepsTheNewest(t *testing.T) {
	m := queueMirror()
	m.reset([]api.Queue{queueAt("a", 1, 5)}, 10)

	m.event(store.Event[api.Queue]{Name: "a", Object: queueAt("a", 9, 4), Revision: 4})
	if concurrency(m, "a") != 1 {
		t.Errorf("an event from before the list applied")
	}
	m.wrote("a", queueAt("a", 2, 0), 12)
	m.event(store.Event[api.Queue]{Name: "a", Object: queueAt("a", 1, 11), Revision: 11})
	if concurrency(m, "a") != 2 {
		t.Errorf("an event older than our write applied")
	}
	m.event(store.Event[api.Queue]{Name: "a", Object: queueAt("a", 3, 13), Revision: 13})
	if concurrency(m, "a") != 3 {
		t.Errorf("a newer event did not apply")
	}
	m.wrote("b", queueAt("b", 4, 0), 20)
	m.reset([]api.Queue{queueAt("a", 3, 13)}, 15) // listed before our write of b
	if concurrency(m, "b") != 4 || concurrency(m, "a") != 3 {
		t.Errorf("a list older than our write lost it: a %d, b %d", concurrency(m, "a"), concurrency(m, "b"))
	}
	m.reset(nil, 21)
	if len(m.items) != 0 {
		t.Errorf("records deleted before the list are kept: %v", m.items)
	}
}

// A record the mirror does not keep (an ended task) after our own write is
// not brought back by an older event still on its way.
func TestMirrorForgetsForGood(t *testing.T) {
	m := queueMirror()
	m.keep = func(q *api.Queue) bool { return q.Concurrency > 0 }
	var changes []string
	m.changed = func(name string, old, new *api.Queue) {
		switch {
		case old == nil:
			changes = append(changes, "+"+name)
		case new == nil:
			changes = append(changes, "-"+name)
		default:
			changes = append(changes, "~"+name)
		}
	}
	m.reset(nil, 1)
	m.wrote("a", queueAt("a", 1, 0), 5)
	m.wrote("a", queueAt("a", 0, 0), 6) // no longer kept
	m.event(store.Event[api.Queue]{Name: "a", Object: queueAt("a", 1, 5), Revision: 5})
	if _, ok := m.items["a"]; ok {
		t.Fatal("an event older than our write brought a forgotten record back")
	}
	m.forget()
	if m.gone["a"] != 6 {
		t.Fatal("forgot the version before the watch passed it")
	}
	m.event(store.Event[api.Queue]{Name: "a", Object: queueAt("a", 0, 6), Revision: 6})
	m.forget()
	if len(m.gone) != 0 {
		t.Errorf("still remembers %v after the watch passed it", m.gone)
	}
	if got := strings.Join(changes, " "); got != "+a -a" {
		t.Errorf("changes %s, want +a -a", got)
	}
}
