package agent

import (
	"sync"
	"time"
)

// workQueue hands out keys to workers. A key is never worked on by two
// workers at once, and a key added while it is being worked on is handed
// out again once that work is done.
type workQueue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	order   []string
	queued  map[string]bool
	active  map[string]bool
	again   map[string]bool
	stopped bool
}

func newWorkQueue() *workQueue {
	q := &workQueue{queued: map[string]bool{}, active: map[string]bool{}, again: map[string]bool{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *workQueue) Add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.stopped || q.queued[key]:
	case q.active[key]:
		q.again[key] = true
	default:
		q.queued[key] = true
		q.order = append(q.order, key)
		q.cond.Signal()
	}
}

// AddAfter adds key once d has passed.
func (q *workQueue) AddAfter(key string, d time.Duration) {
	time.AfterFunc(d, func() { q.Add(key) })
}

// Get blocks until a key is ready or the queue is stopped ("", false).
func (q *workQueue) Get() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) == 0 && !q.stopped {
		q.cond.Wait()
	}
	if q.stopped {
		return "", false
	}
	key := q.order[0]
	q.order = q.order[1:]
	delete(q.queued, key)
	q.active[key] = true
	return key, true
}

// Done marks key's work finished.
func (q *workQueue) Done(key string) {
	q.mu.Lock()
	delete(q.active, key)
	again := q.again[key]
	delete(q.again, key)
	q.mu.Unlock()
	if again {
		q.Add(key)
	}
}

func (q *workQueue) Stop() {
	q.mu.Lock()
	q.stopped = true
	q.mu.Unlock()
	q.cond.Broadcast()
}
