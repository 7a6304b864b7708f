package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"berth/api"
	"berth/internal/store"
	"berth/internal/tasks"
)

// MaxTaskBodyBytes bounds the body of POST /v1/tasks and the agents'
// task endpoints: a 1 MiB payload is 1.4 MiB as base64 in JSON, and a
// batch carries up to api.MaxTaskBatch specs.
const MaxTaskBodyBytes = 8 << 20

// maxScheduleBodyBytes lets a schedule carry a payload of 1 MiB as base64.
const maxScheduleBodyBytes = 2 << 20

// bodyLimit is the most a request's body may hold.
func bodyLimit(r *http.Request) int64 {
	if n, ok := buildBodyLimit(r); ok {
		return n
	}
	switch {
	case (r.Method == http.MethodPost || r.Method == http.MethodPut) && strings.HasPrefix(r.URL.Path, "/v1/tasks"):
		return MaxTaskBodyBytes
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/schedules/"):
		return maxScheduleBodyBytes
	}
	return MaxBodyBytes
}

// submitTasks queues one task (a JSON object) or a batch (a JSON array):
// all of a batch is stored in one transaction, or none of it. Every task
// is in the store before the answer.
func (s *Server) submitTasks(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	batch := bytes.HasPrefix(bytes.TrimLeft(body, " \t\r\n"), []byte("["))
	specs, err := decodeTaskSpecs(body, batch)
	if err != nil {
		writeFieldError(w, err)
		return
	}
	maxMem, err := s.largestNodeMemory(r)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	for i := range specs {
		specs[i].Default()
		if err := specs[i].Validate(specPrefix(batch, i), maxMem); err != nil {
			writeFieldError(w, err)
			return
		}
	}
	out, created, rev, err := s.storeTasks(r.Context(), specs)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	code := http.StatusOK // every one was submitted before under its key
	if slices.Contains(created, true) {
		code = http.StatusCreated
	}
	if batch {
		writeCompactJSON(w, code, api.List[api.Task]{Items: out, Revision: rev})
		return
	}
	writeJSON(w, code, out[0])
}

// writeCompactJSON answers without indentation: for large, frequent
// answers read by programs.
func writeCompactJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func specPrefix(batch bool, i int) string {
	if batch {
		return fmt.Sprintf("tasks[%d].", i)
	}
	return ""
}

// decodeTaskSpecs reads one spec or a batch, strictly; errors name the
// field, in a batch with the spec's index (tasks[3].timeout).
func decodeTaskSpecs(body []byte, batch bool) ([]api.TaskSpec, error) {
	if !batch {
		var spec api.TaskSpec
		if err := api.DecodeStrict(body, &spec); err != nil {
			return nil, err
		}
		return []api.TaskSpec{spec}, nil
	}
	var raws []json.RawMessage
	if err := api.DecodeStrict(body, &raws); err != nil {
		return nil, err
	}
	switch {
	case len(raws) == 0:
		return nil, &api.FieldError{Field: "tasks", Message: "an empty batch"}
	case len(raws) > api.MaxTaskBatch:
		return nil, &api.FieldError{Field: "tasks", Message: fmt.Sprintf("%d tasks is more than %d in one batch", len(raws), api.MaxTaskBatch)}
	}
	specs := make([]api.TaskSpec, len(raws))
	for i, raw := range raws {
		if err := api.DecodeStrict(raw, &specs[i]); err != nil {
			var fe *api.FieldError
			if errors.As(err, &fe) {
				field := fmt.Sprintf("tasks[%d]", i)
				if fe.Field != "" {
					field += "." + fe.Field
				}
				return nil, &api.FieldError{Field: field, Message: fe.Message}
			}
			return nil, err
		}
	}
	return specs, nil
}

// storeTasks writes the tasks of valid specs, their payloads and their
// idempotency keys in one transaction. A spec whose key was used before
// answers with the task first submitted with it (created false).
func (s *Server) storeTasks(ctx context.Context, specs []api.TaskSpec) ([]api.Task, []bool, int64, error) {
	var keys []string
	for _, sp := range specs {
		if sp.IdempotencyKey != "" {
			keys = append(keys, sp.IdempotencyKey)
		}
	}
	for try := 0; ; try++ {
		out, created := make([]api.Task, len(specs)), make([]bool, len(specs))
		// Keys used before, and the tasks they point to.
		known, err := store.TaskKeys.GetMany(ctx, s.Store, keys)
		if err != nil {
			return nil, nil, 0, err
		}
		ids := make([]string, 0, len(known))
		for _, k := range known {
			ids = append(ids, k.Task)
		}
		firsts, err := store.Tasks.GetMany(ctx, s.Store, ids)
		if err != nil {
			return nil, nil, 0, err
		}

		now := time.Now().UTC()
		newIDs := taskIDs(now, len(specs))
		ops := make([]store.Op, 0, 2*len(specs))
		inBatch := map[string]int{} // key -> index of its first spec here
		for i, sp := range specs {
			key := sp.IdempotencyKey
			if k, ok := known[key]; ok {
				if first, ok := firsts[k.Task]; ok {
					out[i] = first
					continue
				}
			}
			if j, ok := inBatch[key]; ok && key != "" {
				out[i] = out[j]
				continue
			}
			id := newIDs[i]
			out[i], created[i] = tasks.New(id, sp, now), true
			ops = append(ops, store.Tasks.Create(id, out[i]))
			if len(sp.Payload) > 0 {
				ops = append(ops, store.Payloads.Create(id, api.TaskPayload{Data: sp.Payload}))
			}
			if key != "" {
				inBatch[key] = i
				if k, ok := known[key]; ok { // its task is gone: the key is free again
					ops = append(ops, store.TaskKeys.Put(key, api.TaskKey{Task: id}, k.Version))
				} else {
					ops = append(ops, store.TaskKeys.Create(key, api.TaskKey{Task: id}))
				}
			}
		}
		if len(ops) == 0 {
			return out, created, 0, nil
		}
		rev, err := s.Store.Txn(ctx, ops...)
		if (errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists)) && try < 10 {
			continue // a key used meanwhile (or an id taken): look again
		}
		if err != nil {
			return nil, nil, 0, err
		}
		for i := range out {
			if created[i] {
				out[i].Version = rev
			} else if j, ok := inBatch[specs[i].IdempotencyKey]; ok && created[j] {
				out[i] = out[j]
			}
		}
		return out, created, rev, nil
	}
}

// taskIDs returns n distinct new ids in ascending order, so that the
// tasks of a batch, created in the same instant, keep the batch's order.
func taskIDs(now time.Time, n int) []string {
	seen := make(map[string]bool, n)
	ids := make([]string, 0, n)
	for len(ids) < n {
		id := api.NewTaskID(now)
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

var taskStates = []string{api.TaskQueued, api.TaskRetrying, api.TaskRunning,
	api.TaskSucceeded, api.TaskFailed, api.TaskTimedOut, api.TaskCancelled}

// GET /v1/tasks?queue=&state=&node=&schedule=&active=true&limit=N
// [&watch=true&revision=N]: newest first.
func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	queue, node, schedule := q.Get("queue"), q.Get("node"), q.Get("schedule")
	if !s.ownNodeFilter(w, r, node, "tasks") {
		return
	}
	match := func(t *api.Task) bool {
		return (queue == "" || t.Spec.Queue == queue) && (node == "" || t.Node == node) &&
			(schedule == "" || t.Schedule == schedule)
	}
	if q.Get("watch") == "true" {
		if rev, ok := watchRevision(w, r); ok {
			// The hub routes by node itself; only queue and schedule need
			// a look inside each record (the agent's watch, by node, never).
			var keep func([]byte) bool
			if queue != "" || schedule != "" {
				keep = matching(func(t *taskFilterView) bool {
					return (queue == "" || t.Spec.Queue == queue) && (schedule == "" || t.Schedule == schedule)
				})
			}
			streamWatch(s, w, r, store.Tasks, rev, watchFilter{Node: node, Match: keep})
		}
		return
	}
	state, active := q.Get("state"), q.Get("active") == "true"
	if state != "" && !slices.Contains(taskStates, state) {
		writeError(w, http.StatusBadRequest, "state", "state: %q is not one of %s", state, strings.Join(taskStates, ", "))
		return
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n == 0 || n < -1 {
			writeError(w, http.StatusBadRequest, "limit", "limit: %q is not a positive number or -1 (all)", v)
			return
		}
		limit = n
	}
	all, rev, err := store.Tasks.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	items := make([]api.Task, 0, min(len(all), max(limit, 0)))
	// Ids sort by creation time, and the store lists them in id order.
	for i := len(all) - 1; i >= 0 && (limit < 0 || len(items) < limit); i-- {
		t := &all[i]
		if match(t) && (state == "" || t.State == state) && (!active || !api.TaskTerminal(t.State)) {
			items = append(items, *t)
		}
	}
	writeJSON(w, http.StatusOK, api.List[api.Task]{Items: items, Revision: rev})
}

// taskFilterView is the part of a task a watch filtered by queue or
// schedule decodes of every task change.
type taskFilterView struct {
	Schedule string `json:"schedule"`
	Spec     struct {
		Queue string `json:"queue"`
	} `json:"spec"`
}

// getTaskOr404 reads a task, answering 404 naming it when there is none.
func (s *Server) getTaskOr404(w http.ResponseWriter, r *http.Request) (api.Task, bool) {
	id := r.PathValue("id")
	if !api.ValidTaskID(id) {
		writeError(w, http.StatusNotFound, "", "task %q not found (not a task id)", id)
		return api.Task{}, false
	}
	t, err := store.Tasks.Get(r.Context(), s.Store, id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "", "task %s not found", id)
		return t, false
	}
	if err != nil {
		s.writeStoreError(w, err)
		return t, false
	}
	return t, true
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) {
	if t, ok := s.getTaskOr404(w, r); ok && s.ownTask(w, r, &t, 0) {
		writeJSON(w, http.StatusOK, t)
	}
}

// GET /v1/tasks/{id}/payload: the raw bytes, empty when it has none.
func (s *Server) taskPayload(w http.ResponseWriter, r *http.Request) {
	t, ok := s.getTaskOr404(w, r)
	if !ok || !s.ownTask(w, r, &t, 0) {
		return
	}
	var data []byte
	if t.PayloadSize > 0 {
		p, err := store.Payloads.Get(r.Context(), s.Store, t.ID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			s.writeStoreError(w, err)
			return
		}
		data = p.Data
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}

// cancelTask ends a queued or retrying task at once; a running one is
// marked, and ends when its agent has stopped the container.
func (s *Server) cancelTask(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, ok := s.getTaskOr404(w, r); !ok {
		return
	}
	ended := ""
	t, err := store.Tasks.Update(r.Context(), s.Store, id, func(t *api.Task) error {
		if t.State == api.TaskRunning && t.CancelRequested {
			return store.ErrSkip // asked already
		}
		if !tasks.Cancel(t, time.Now().UTC()) {
			ended = t.State
			return store.ErrSkip
		}
		return nil
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "", "task %s not found", id)
	case err != nil:
		s.writeStoreError(w, err)
	case ended != "":
		writeError(w, http.StatusConflict, "", "task %s already %s", id, strings.ReplaceAll(ended, "_", " "))
	default:
		writeJSON(w, http.StatusOK, t)
	}
}
