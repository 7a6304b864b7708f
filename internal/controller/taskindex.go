package controller

import (
	"slices"
	"strings"
	"time"

	"berth/api"
)

// taskIndex sorts the active tasks for dispatch. It changes with each task
// change, so that a pass reads what it needs without going over every
// queued task.
type taskIndex struct {
	queues         map[string]*queueIndex // ready to start: queued, or retrying with the backoff over
	waiting        map[string]*api.Task   // retrying, backoff not over
	running        map[string]*api.Task
	runningByQueue map[string]int
	bySchedule     map[string]int // active tasks per schedule
}

// queueIndex holds one queue's ready tasks in dispatch order (higher
// priority, then older, first) and the resources they ask for, so that a
// pass can tell at once that none of them fits anywhere.
type queueIndex struct {
	ready []*api.Task
	cpu   map[api.MilliCPU]int
	mem   map[api.Bytes]int
}

func newTaskIndex() *taskIndex {
	return &taskIndex{queues: map[string]*queueIndex{}, waiting: map[string]*api.Task{},
		running: map[string]*api.Task{}, runningByQueue: map[string]int{}, bySchedule: map[string]int{}}
}

// change is the mirror's hook: old and new are the task before and after
// (nil when it appears or goes).
func (x *taskIndex) change(_ string, old, new *api.Task) {
	if old != nil {
		x.remove(old)
	}
	if new != nil {
		x.add(new)
	}
}

func activeTask(t *api.Task) bool { return !api.TaskTerminal(t.State) }

func (x *taskIndex) add(t *api.Task) {
	if t.Schedule != "" {
		x.bySchedule[t.Schedule]++
	}
	switch t.State {
	case api.TaskRunning:
		x.running[t.ID] = t
		x.runningByQueue[t.Spec.Queue]++
	case api.TaskRetrying:
		x.waiting[t.ID] = t
	case api.TaskQueued:
		x.queue(t.Spec.Queue).insert(t)
	}
}

func (x *taskIndex) remove(t *api.Task) {
	if t.Schedule != "" {
		if x.bySchedule[t.Schedule]--; x.bySchedule[t.Schedule] <= 0 {
			delete(x.bySchedule, t.Schedule)
		}
	}
	switch t.State {
	case api.TaskRunning:
		delete(x.running, t.ID)
		if x.runningByQueue[t.Spec.Queue]--; x.runningByQueue[t.Spec.Queue] <= 0 {
			delete(x.runningByQueue, t.Spec.Queue)
		}
		return
	case api.TaskRetrying:
		if _, ok := x.waiting[t.ID]; ok {
			delete(x.waiting, t.ID)
			return
		}
	}
	if q := x.queues[t.Spec.Queue]; q != nil {
		q.delete(t)
		if len(q.ready) == 0 {
			delete(x.queues, t.Spec.Queue)
		}
	}
}

func (x *taskIndex) queue(name string) *queueIndex {
	q := x.queues[name]
	if q == nil {
		q = &queueIndex{cpu: map[api.MilliCPU]int{}, mem: map[api.Bytes]int{}}
		x.queues[name] = q
	}
	return q
}

// promote makes the retrying tasks whose backoff is over ready, and
// returns when the next one will be (zero: none waits).
func (x *taskIndex) promote(now time.Time) time.Time {
	var next time.Time
	for id, t := range x.waiting {
		if !now.Before(t.NotBefore) {
			delete(x.waiting, id)
			x.queue(t.Spec.Queue).insert(t)
		} else if next.IsZero() || t.NotBefore.Before(next) {
			next = t.NotBefore
		}
	}
	return next
}

func (q *queueIndex) insert(t *api.Task) {
	i, _ := slices.BinarySearchFunc(q.ready, t, dispatchOrder)
	q.ready = slices.Insert(q.ready, i, t)
	q.cpu[t.Spec.Resources.CPU]++
	q.mem[t.Spec.Resources.Memory]++
}

func (q *queueIndex) delete(t *api.Task) {
	i, found := slices.BinarySearchFunc(q.ready, t, dispatchOrder)
	if !found || q.ready[i].ID != t.ID {
		return
	}
	if i == 0 { // the usual case: the first in line starts
		q.ready[0] = nil
		q.ready = q.ready[1:]
	} else {
		q.ready = slices.Delete(q.ready, i, i+1)
	}
	decr(q.cpu, t.Spec.Resources.CPU)
	decr(q.mem, t.Spec.Resources.Memory)
}

// smallest is the least cpu and the least memory any ready task of the
// queue asks for (not always of one task: a bound, not a task).
func (q *queueIndex) smallest() api.Capacity {
	c := api.Capacity{CPU: -1, Memory: -1}
	for cpu := range q.cpu {
		if c.CPU < 0 || cpu < c.CPU {
			c.CPU = cpu
		}
	}
	for mem := range q.mem {
		if c.Memory < 0 || mem < c.Memory {
			c.Memory = mem
		}
	}
	return c
}

func decr[K comparable](m map[K]int, k K) {
	if m[k]--; m[k] <= 0 {
		delete(m, k)
	}
}

// dispatchOrder is tasks.Order's order within a queue: higher priority,
// then older, then by id.
func dispatchOrder(a, b *api.Task) int {
	if pa, pb := taskPriority(a), taskPriority(b); pa != pb {
		return pb - pa
	}
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

func taskPriority(t *api.Task) int {
	if t.Spec.Priority == nil {
		return api.DefaultPriority
	}
	return *t.Spec.Priority
}
