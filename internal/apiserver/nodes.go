package apiserver

import (
	"errors"
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
	now := time.Now()
	for i := range nodes {
		nodes[i].State = nodes[i].StateAt(now, s.NodeTTL)
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
	n.Heartbeat = time.Now().UTC()
	n.State = ""
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
		n.State = api.NodeReady
		writeJSON(w, http.StatusOK, n)
		return
	}
}
