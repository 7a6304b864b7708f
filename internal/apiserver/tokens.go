package apiserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"berth/api"
	"berth/internal/store"
)

// POST /v1/tokens: a new token, shown once in the answer.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req api.TokenRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if err := req.Validate(); err != nil {
		writeFieldError(w, err)
		return
	}
	nt, err := CreateToken(r.Context(), s.Store, req)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, nt)
}

// CreateToken makes a random token of the request's role and stores its
// record: the token's hash, never the token.
func CreateToken(ctx context.Context, st *store.Store, req api.TokenRequest) (api.NewToken, error) {
	if err := req.Validate(); err != nil {
		return api.NewToken{}, err
	}
	for try := 0; ; try++ {
		tok := randomHex(tokenIDBytes) + "." + randomHex(tokenSecretBytes)
		id, _, _ := strings.Cut(tok, ".")
		t := api.Token{ID: id, Role: req.Role, Description: req.Description,
			Created: time.Now().UTC(), Hash: hashToken(tok)}
		rev, err := st.Txn(ctx, store.Tokens.Create(id, t))
		if errors.Is(err, store.ErrExists) && try < 3 {
			continue // the id is taken (48 random bits: hardly ever)
		}
		if err != nil {
			return api.NewToken{}, err
		}
		t.Version, t.Hash = rev, ""
		return api.NewToken{Token: t, Secret: tok}, nil
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b)
}

// GET /v1/tokens: every token made through the API, oldest first,
// without hashes. The server's own token (<data-dir>/token) is not one.
func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	tokens, rev, err := store.Tokens.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	for i := range tokens {
		tokens[i].Hash = ""
	}
	sort.Slice(tokens, func(i, j int) bool { return tokens[i].Created.Before(tokens[j].Created) })
	writeJSON(w, http.StatusOK, api.List[api.Token]{Items: tokens, Revision: rev})
}

// DELETE /v1/tokens/{id}: the token stops working at once on this
// server, and within tokenCacheTTL on the others.
func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var t api.Token
	err := store.ErrNotFound
	if validTokenID(id) {
		t, err = store.Tokens.Get(r.Context(), s.Store, id)
	}
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "", "token %s not found", id)
		return
	}
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	if _, err := s.Store.Txn(r.Context(), store.Tokens.Delete(id, t.Version)); err != nil {
		s.writeStoreError(w, err)
		return
	}
	s.tokens.forget(id)
	w.WriteHeader(http.StatusNoContent)
}

// errBound says an agent token is bound to another node.
type errBound struct{ node string }

func (e errBound) Error() string { return "token is bound to node " + e.node }

// bindNode lets an agent token register the node name: the first node it
// registers binds it (a compare-and-swap on its record), and it may
// register no other. It answers 403 and returns false otherwise.
func (s *Server) bindNode(w http.ResponseWriter, r *http.Request, name string) bool {
	p := principalOf(r.Context())
	if p.role != api.RoleAgent || p.node == name {
		return true
	}
	if p.node != "" {
		writeError(w, http.StatusForbidden, "", "token is bound to node %s; it may not register node %s", p.node, name)
		return false
	}
	t, err := store.Tokens.Update(r.Context(), s.Store, p.token, func(t *api.Token) error {
		switch t.Node {
		case "":
			t.Node = name
			return nil
		case name:
			return store.ErrSkip // bound through another server meanwhile
		}
		return errBound{t.Node}
	})
	var bound errBound
	switch {
	case errors.As(err, &bound):
		writeError(w, http.StatusForbidden, "", "%v; it may not register node %s", err, name)
		return false
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusUnauthorized, "", "the token was removed")
		return false
	case err != nil:
		s.writeStoreError(w, err)
		return false
	}
	s.tokens.put(p.key, &principal{role: p.role, token: p.token, desc: p.desc, node: t.Node, key: p.key})
	return true
}

// EnsureAgentToken returns the agent token kept in the file at path, if
// it is still valid for node; else it creates one (role agent) and
// writes it there, readable by the owner only. berth up gives it to its
// local agent.
func EnsureAgentToken(ctx context.Context, st *store.Store, path, node string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(b))
		t, err := readToken(ctx, st, tok)
		if err != nil {
			return "", fmt.Errorf("agent token: %w", err)
		}
		if t != nil && t.Role == api.RoleAgent && (t.Node == "" || t.Node == node) {
			return tok, nil
		}
	}
	nt, err := CreateToken(ctx, st, api.TokenRequest{Role: api.RoleAgent, Description: "local agent of node " + node})
	if err != nil {
		return "", fmt.Errorf("agent token: %w", err)
	}
	if err := writeFileAtomic(path, []byte(nt.Secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("agent token: %w", err)
	}
	return nt.Secret, nil
}

// writeFileAtomic writes a file whole or not at all.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename there is none
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
