package apiserver

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"berth/api"
	"berth/internal/store"
)

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) {
	nodes, rev, err := store.Nodes.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	insts, _, err := store.Instances.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	tasks, _, err := store.Tasks.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	alloc, counts, running := map[string]api.Capacity{}, map[string]int{}, map[string]int{}
	hold := func(node string, res api.Resources) {
		a := alloc[node]
		a.CPU += res.CPU
		a.Memory += res.Memory
		alloc[node] = a
	}
	for i := range insts {
		if insts[i].HoldsRoom() { // as the scheduler counts
			hold(insts[i].Node, insts[i].Spec.Resources)
			counts[insts[i].Node]++
		}
	}
	for i := range tasks {
		if t := &tasks[i]; t.State == api.TaskRunning && t.Node != "" {
			hold(t.Node, t.Spec.Resources)
			running[t.Node]++
		}
	}
	now := time.Now()
	for i := range nodes {
		n := &nodes[i]
		n.State = n.StateAt(now, s.NodeTTL)
		a := alloc[n.Name]
		n.Allocated, n.Instances, n.Tasks = &a, counts[n.Name], running[n.Name]
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	writeJSON(w, http.StatusOK, api.List[api.Node]{Items: nodes, Revision: rev})
}

// putNode registers a node or renews its heartbeat; the server stamps the time.
func (s *Server) putNode(w http.ResponseWriter, r *http.Request) {
	var n api.Node
	if !decodeJSON(w, r, &n) {
		return
	}
	name := r.PathValue("name")
	if n.Name != name {
		writeError(w, http.StatusBadRequest, "name", "name: %q does not match the URL's %q", n.Name, name)
		return
	}
	if n.Capacity.CPU <= 0 || n.Capacity.Memory <= 0 {
		writeError(w, http.StatusBadRequest, "capacity", "capacity: cpu and memory must be positive")
		return
	}
	if !s.bindNode(w, r, name) { // an agent token acts for one node only
		return
	}
	n.Heartbeat = time.Now().UTC()
	n.State, n.Allocated, n.Instances, n.Tasks = "", nil, 0, 0 // derived, never stored
	ctx := r.Context()
	for {
		old, err := store.Nodes.Get(ctx, s.Store, name)
		var op store.Op
		switch {
		case errors.Is(err, store.ErrNotFound):
			op = store.Nodes.Create(name, n)
		case err != nil:
			s.writeStoreError(w, err)
			return
		default:
			n.Draining = old.Draining // the user's, not the agent's
			op = store.Nodes.Put(name, n, old.Version)
		}
		rev, err := s.Store.Txn(ctx, op)
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		n.Version = rev
		n.State = n.StateAt(n.Heartbeat, s.NodeTTL)
		writeJSON(w, http.StatusOK, n)
		return
	}
}

// POST /v1/nodes/{name}/drain: nothing new goes to the node and its
// instances move to other nodes, one at a time.
func (s *Server) drainNode(w http.ResponseWriter, r *http.Request) { s.setDraining(w, r, true) }

// POST /v1/nodes/{name}/activate undoes a drain.
func (s *Server) activateNode(w http.ResponseWriter, r *http.Request) { s.setDraining(w, r, false) }

func (s *Server) setDraining(w http.ResponseWriter, r *http.Request, draining bool) {
	ctx, name := r.Context(), r.PathValue("name")
	msg := "activated: placements allowed again"
	if draining {
		msg = "draining: no new placements; its instances move away"
	}
	ev, err := s.Store.AppendEvent(ctx, api.Event{Kind: "node", Node: name, Message: msg})
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	n, err := store.Nodes.Update(ctx, s.Store, name, func(n *api.Node) error {
		if n.Draining == draining {
			return store.ErrSkip // already so: no event either
		}
		n.Draining = draining
		return nil
	}, ev)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "", "node %s not found", name)
		return
	}
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	n.State = n.StateAt(time.Now(), s.NodeTTL)
	writeJSON(w, http.StatusOK, n)
}

// nodeEventKinds are the events an agent may record of its own node: what
// it did on its own judgement, which no other part of berth sees happen.
var nodeEventKinds = map[string]bool{"removed": true}

// maxNodeEvents bounds one request of postNodeEvents.
const maxNodeEvents = 100

// POST /v1/nodes/{name}/events: an agent records what it did on its node,
// such as removing a container, and why.
func (s *Server) postNodeEvents(w http.ResponseWriter, r *http.Request) {
	var events []api.Event
	if !decodeJSON(w, r, &events) {
		return
	}
	name := r.PathValue("name")
	if !s.ownNode(w, r, name, "node "+name) {
		return
	}
	if len(events) == 0 || len(events) > maxNodeEvents {
		writeError(w, http.StatusBadRequest, "", "send 1 to %d events, not %d", maxNodeEvents, len(events))
		return
	}
	ctx := r.Context()
	ops := make([]store.Op, 0, len(events))
	for i, e := range events {
		field := func(f string) string { return fmt.Sprintf("[%d].%s", i, f) }
		switch {
		case !nodeEventKinds[e.Kind]:
			writeError(w, http.StatusBadRequest, field("kind"), "%s: %q is not an event an agent records (removed)", field("kind"), e.Kind)
			return
		case e.Message == "" || len(e.Message) > 1024:
			writeError(w, http.StatusBadRequest, field("message"), "%s: 1 to 1024 bytes", field("message"))
			return
		case len(e.App) > 256 || len(e.Instance) > 256:
			writeError(w, http.StatusBadRequest, field("instance"), "%s: app and instance names are at most 256 bytes", field("instance"))
			return
		}
		e.Node, e.Time, e.Version = name, time.Time{}, 0 // the server's word for where and when
		op, err := s.Store.AppendEvent(ctx, e)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		ops = append(ops, op)
	}
	if _, err := s.Store.Txn(ctx, ops...); err != nil {
		s.writeStoreError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
