package apiserver

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"berth/api"
	"berth/internal/store"
)

// principal is who a request comes from: its token's role and, for an
// agent token, the node the token is bound to ("" until it registers one).
type principal struct {
	role  string
	token string // the token's id; "bootstrap" for the server's own token
	desc  string // the token's description, for the revisions it makes
	node  string
	key   [32]byte // SHA-256 of the token: its key in the cache
}

type principalKey struct{}

// principalOf is the request's principal. Every /v1 request has one; a
// handler called some other way (a test) acts as a user.
func principalOf(ctx context.Context) *principal {
	if p, ok := ctx.Value(principalKey{}).(*principal); ok {
		return p
	}
	return &principal{role: api.RoleUser}
}

// access says which tokens may call a route: a set of roles.
type access uint8

const (
	roleUser access = 1 << iota
	roleAgent
	roleGateway
)

// The access rules of routes (0, unset, makes Handler refuse to start).
const (
	userOnly           = roleUser             // user tokens
	agentOnly          = roleAgent            // agent tokens (registering a node)
	userOrAgent        = roleUser | roleAgent // both; handlers keep an agent to its own node
	userOrGateway      = roleUser | roleGateway
	userAgentOrGateway = roleUser | roleAgent | roleGateway
)

// roleBits are the roles in the order docs/api.md names them.
var roleBits = []struct {
	bit  access
	name string
}{{roleUser, api.RoleUser}, {roleAgent, api.RoleAgent}, {roleGateway, api.RoleGateway}}

// String is how docs/api.md says it ("Token: user or agent", "Token:
// user, agent or gateway").
func (a access) String() string {
	var names []string
	for _, r := range roleBits {
		if a&r.bit != 0 {
			names = append(names, r.name)
		}
	}
	switch len(names) {
	case 0:
		return "unset"
	case 1:
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// allows reports whether a token of role may call the route.
func (a access) allows(role string) bool {
	for _, r := range roleBits {
		if r.name == role {
			return a&r.bit != 0
		}
	}
	return false
}

// roleLimits says what a token of each role may do, for a refusal.
var roleLimits = map[string]string{
	api.RoleUser:    "which may call everything but node registration",
	api.RoleAgent:   "which may only register its node and report for it",
	api.RoleGateway: "which may only follow apps, instances and routes, wake apps and report access",
}

// allow wraps a route's handler with its access rule.
func allow(a access, pattern string, h http.HandlerFunc) http.HandlerFunc {
	if a == 0 {
		panic("apiserver: route " + pattern + " has no access rule")
	}
	return func(w http.ResponseWriter, r *http.Request) {
		role := principalOf(r.Context()).role
		if a.allows(role) {
			h(w, r)
			return
		}
		writeError(w, http.StatusForbidden, "", "%s", refusal(a, pattern, role))
	}
}

// refusal says why a token of role may not call a route, naming the role
// and the token the route needs: "token role agent may not call GET
// /v1/events (needs a user token; this is an agent token, which ...)".
func refusal(a access, pattern, role string) string {
	if a == agentOnly {
		what := pattern + " is for agents and"
		if pattern == "PUT /v1/nodes/{name}" {
			what = "registering a node"
		}
		return fmt.Sprintf("%s needs an agent token (berth token create --role agent); this is a %s token", what, role)
	}
	article := "a"
	if strings.HasPrefix(role, "a") {
		article = "an"
	}
	return fmt.Sprintf("token role %s may not call %s (needs a %s token; this is %s %s token, %s)", role, pattern, a, article, role, roleLimits[role])
}

func (s *Server) authenticate(next http.Handler) http.Handler {
	static := []byte("Bearer " + s.Token)
	bootstrap := &principal{role: api.RoleUser, token: "bootstrap", desc: "bootstrap token"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		header := r.Header.Get("Authorization")
		p := bootstrap
		if s.Token == "" || subtle.ConstantTimeCompare([]byte(header), static) != 1 {
			var err error
			if p, err = s.tokens.lookup(r.Context(), s.Store, header); err != nil {
				s.writeStoreError(w, err)
				return
			}
		}
		if p == nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="berth"`)
			writeError(w, http.StatusUnauthorized, "", "missing or wrong API token")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// ownNode lets a user act on anything, and an agent only for the node its
// token is bound to; otherwise it answers 403 and returns false. what
// names the object for the message ("instance web-1").
func (s *Server) ownNode(w http.ResponseWriter, r *http.Request, node, what string) bool {
	p := principalOf(r.Context())
	if p.role != api.RoleAgent {
		return true
	}
	own, err := s.agentNode(r.Context(), p)
	if err != nil {
		s.writeStoreError(w, err)
		return false
	}
	if own == node && own != "" {
		return true
	}
	writeError(w, http.StatusForbidden, "", "%s", notOwnNode(own, what, node))
	return false
}

func notOwnNode(own, what, node string) string {
	if own == "" {
		return "this agent token has no node yet: register one first (PUT /v1/nodes/{name})"
	}
	if node == "" {
		return fmt.Sprintf("token is bound to node %s; %s is on no node", own, what)
	}
	return fmt.Sprintf("token is bound to node %s; %s is on node %s", own, what, node)
}

// agentNode is the node an agent token is bound to. A token seen unbound
// is read again: it may have registered through another server meanwhile.
func (s *Server) agentNode(ctx context.Context, p *principal) (string, error) {
	if p.node != "" {
		return p.node, nil
	}
	t, err := store.Tokens.Get(ctx, s.Store, p.token)
	if err != nil {
		return "", err
	}
	if t.Node != "" {
		s.tokens.put(p.key, &principal{role: p.role, token: p.token, desc: p.desc, node: t.Node, key: p.key})
	}
	return t.Node, nil
}

// tokenCacheTTL is how long a token's check is trusted: a token removed
// through another server stops working within it (a variable for tests).
var tokenCacheTTL = 2 * time.Second

// maxCachedTokens bounds the cache against floods of made-up tokens.
const maxCachedTokens = 10000

// tokenCache remembers checked tokens, so that a request costs a map
// lookup, not a store read: agents send thousands of task reports a
// second. Unknown tokens are remembered too (as nil).
type tokenCache struct {
	m sync.Map // [32]byte -> *cacheEntry
	n atomic.Int64
}

type cacheEntry struct {
	mu  sync.Mutex // held by the one reading the store for it
	cur atomic.Pointer[checked]
}

type checked struct {
	p  *principal // nil: no such token
	at time.Time
}

// lookup returns the principal of an Authorization header, nil for none.
func (c *tokenCache) lookup(ctx context.Context, st *store.Store, header string) (*principal, error) {
	tok, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || !wellFormedToken(tok) {
		return nil, nil // never worth a store read
	}
	key := sha256.Sum256([]byte(tok))
	e := c.entry(key)
	if v := e.cur.Load(); v != nil && time.Since(v.at) < tokenCacheTTL {
		return v.p, nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if v := e.cur.Load(); v != nil && time.Since(v.at) < tokenCacheTTL {
		return v.p, nil // another request just read it
	}
	t, err := readToken(ctx, st, tok)
	if err != nil {
		return nil, err
	}
	var p *principal
	if t != nil {
		p = &principal{role: t.Role, token: t.ID, desc: t.Description, node: t.Node, key: key}
	}
	e.cur.Store(&checked{p: p, at: time.Now()})
	return p, nil
}

func (c *tokenCache) entry(key [32]byte) *cacheEntry {
	if e, ok := c.m.Load(key); ok {
		return e.(*cacheEntry)
	}
	if c.n.Load() >= maxCachedTokens {
		c.sweep()
		if c.n.Load() >= maxCachedTokens {
			return &cacheEntry{} // full of fresh entries: checked, not kept
		}
	}
	e, loaded := c.m.LoadOrStore(key, &cacheEntry{})
	if !loaded {
		c.n.Add(1)
	}
	return e.(*cacheEntry)
}

// sweep drops the entries that are out of date.
func (c *tokenCache) sweep() {
	c.m.Range(func(k, v any) bool {
		if cur := v.(*cacheEntry).cur.Load(); cur == nil || time.Since(cur.at) >= tokenCacheTTL {
			c.drop(k)
		}
		return true
	})
}

func (c *tokenCache) drop(key any) {
	if _, ok := c.m.LoadAndDelete(key); ok {
		c.n.Add(-1)
	}
}

// put replaces a token's principal (its node is bound now).
func (c *tokenCache) put(key [32]byte, p *principal) {
	c.entry(key).cur.Store(&checked{p: p, at: time.Now()})
}

// forget makes this server stop accepting a removed token at once.
func (c *tokenCache) forget(id string) {
	c.m.Range(func(k, v any) bool {
		if cur := v.(*cacheEntry).cur.Load(); cur != nil && cur.p != nil && cur.p.token == id {
			c.drop(k)
		}
		return true
	})
}

// tokenIDBytes and tokenSecretBytes size a token: "<id>.<secret>" in hex.
const (
	tokenIDBytes     = 6
	tokenSecretBytes = 32
)

func wellFormedToken(tok string) bool {
	id, secret, ok := strings.Cut(tok, ".")
	return ok && validTokenID(id) && len(secret) == 2*tokenSecretBytes
}

func validTokenID(id string) bool {
	if len(id) != 2*tokenIDBytes {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// readToken reads a token's record from the store: nil when there is no
// such token, or the secret is wrong.
func readToken(ctx context.Context, st *store.Store, tok string) (*api.Token, error) {
	if !wellFormedToken(tok) {
		return nil, nil
	}
	id, _, _ := strings.Cut(tok, ".")
	t, err := store.Tokens.Get(ctx, st, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(t.Hash), []byte(hashToken(tok))) != 1 {
		return nil, nil
	}
	return &t, nil
}

// ownNodeFilter keeps an agent's lists and watches of things (instances,
// tasks) to its own node: it must ask with node=<its node>.
func (s *Server) ownNodeFilter(w http.ResponseWriter, r *http.Request, node, things string) bool {
	p := principalOf(r.Context())
	if p.role != api.RoleAgent {
		return true
	}
	own, err := s.agentNode(r.Context(), p)
	switch {
	case err != nil:
		s.writeStoreError(w, err)
	case own == "":
		writeError(w, http.StatusForbidden, "", "%s", notOwnNode("", "", ""))
	case node != own:
		writeError(w, http.StatusForbidden, "", "token is bound to node %s: it may list only that node's %s (node=%s)", own, things, own)
	default:
		return true
	}
	return false
}

// ownTask lets an agent read a task only when one of its attempts is, or
// was, on the agent's node (an agent rechecks the tasks it ran, which may
// have moved on since), and write for attempt n (>0) only when that
// attempt is on its node.
func (s *Server) ownTask(w http.ResponseWriter, r *http.Request, t *api.Task, n int) bool {
	p := principalOf(r.Context())
	if p.role != api.RoleAgent {
		return true
	}
	own, err := s.agentNode(r.Context(), p)
	if err != nil {
		s.writeStoreError(w, err)
		return false
	}
	if own == "" {
		writeError(w, http.StatusForbidden, "", "%s", notOwnNode("", "", ""))
		return false
	}
	if n > 0 {
		if n <= len(t.Attempts) && t.Attempts[n-1].Node == own {
			return true
		}
		writeError(w, http.StatusForbidden, "", "token is bound to node %s; attempt %d of task %s is not on it", own, n, t.ID)
		return false
	}
	if t.Node == own || slices.ContainsFunc(t.Attempts, func(a api.Attempt) bool { return a.Node == own }) {
		return true
	}
	writeError(w, http.StatusForbidden, "", "token is bound to node %s; task %s has not run there", own, t.ID)
	return false
}

// errForbidden is a request its token may not make: 403.
type errForbidden struct{ msg string }

func (e errForbidden) Error() string { return e.msg }

// reportsOnOwnNode checks that an agent reports only on attempts placed
// on its node. One report on another node's attempt refuses the whole
// request (errForbidden): a working agent never sends one.
func (s *Server) reportsOnOwnNode(ctx context.Context, reports []api.TaskReport, tasks map[string]api.Task) error {
	p := principalOf(ctx)
	if p.role != api.RoleAgent {
		return nil
	}
	own, err := s.agentNode(ctx, p)
	if err != nil {
		return err
	}
	if own == "" {
		return errForbidden{notOwnNode("", "", "")}
	}
	for _, rep := range reports {
		t, ok := tasks[rep.ID]
		if !ok || checkReport(rep) != "" {
			continue // answered one by one: no such task, or a bad report
		}
		if rep.Attempt > len(t.Attempts) || t.Attempts[rep.Attempt-1].Node != own {
			return errForbidden{fmt.Sprintf("token is bound to node %s; attempt %d of task %s is not on it (no report of this request was applied)", own, rep.Attempt, rep.ID)}
		}
	}
	return nil
}
