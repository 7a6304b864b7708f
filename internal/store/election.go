package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// election is the name of the servers' election: under election + "/" is
// one key per server campaigning to lead; the oldest (lowest create
// revision) leads.
const election = root + "leader"

// ErrNotLeader is the answer to a write through a leader's guarded store
// once its leadership has ended: a deposed leader never overwrites state
// that a newer leader may have changed.
var ErrNotLeader = errors.New("no longer the leader")

// guard is the condition added to every transaction of a leader's store:
// its election key still exists, created at the revision it won with.
type guard struct {
	key string
	rev int64
}

func (g *guard) cmp() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(g.key), "=", g.rev)
}

// read is the else branch of a guarded transaction: it tells a lost
// leadership apart from an ordinary conflict.
func (g *guard) read() clientv3.Op { return clientv3.OpGet(g.key) }

// lost reports whether a failed guarded transaction failed on the guard.
func (g *guard) lost(resp *clientv3.TxnResponse) bool {
	if g == nil || resp.Succeeded || len(resp.Responses) == 0 {
		return false
	}
	kvs := resp.Responses[len(resp.Responses)-1].GetResponseRange().GetKvs()
	return len(kvs) == 0 || kvs[0].CreateRevision != g.rev
}

// Guarded returns a view of the store whose every transaction also
// requires key to exist with create revision rev, and fails with
// ErrNotLeader otherwise. Reads and watches are unchanged.
func (s *Store) Guarded(key string, rev int64) *Store {
	return &Store{cli: s.cli, dbSize: s.dbSize, guard: &guard{key: key, rev: rev}}
}

// campaign is what a Store knows of the election its process runs in.
type campaign struct {
	mu      sync.Mutex
	name    string // this server's name in the election; "" when it runs none
	leading bool
}

func (c *campaign) set(name string, leading bool) {
	c.mu.Lock()
	c.name, c.leading = name, leading
	c.mu.Unlock()
}

// Leadership says which server leads.
type Leadership struct {
	Server  string // this process's name in the election ("" when it runs none)
	Leading bool   // this process leads now
	Leader  string // the leading server's name ("" when none leads)
}

// Leadership reads who leads now.
func (s *Store) Leadership(ctx context.Context) (Leadership, error) {
	s.campaign.mu.Lock()
	l := Leadership{Server: s.campaign.name, Leading: s.campaign.leading}
	s.campaign.mu.Unlock()
	resp, err := s.cli.Get(ctx, election+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return l, fmt.Errorf("read the leader: %w", err)
	}
	if len(resp.Kvs) > 0 {
		l.Leader = string(resp.Kvs[0].Value)
	}
	return l, nil
}

// Election campaigns for one server to lead among those on one etcd.
type Election struct {
	Store *Store
	// Name is this server's, as others see it (its API URL).
	Name string
	// TTL of the session: how long a dead leader's key outlives it. etcd
	// rounds it up to whole seconds and to its own minimum (2s by default).
	TTL time.Duration
	Log *slog.Logger
}

// Run campaigns until ctx ends. Each time this server wins, lead runs with
// a context that ends as soon as the leadership is lost and a store whose
// writes fail once it is lost; when lead returns, the server resigns and
// campaigns again. Run returns when ctx ends, having resigned.
func (e *Election) Run(ctx context.Context, lead func(ctx context.Context, st *Store) error) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := e.term(ctx, lead)
		if ctx.Err() != nil {
			return
		}
		if err == nil { // the leadership was lost: campaign again at once
			backoff = 100 * time.Millisecond
			continue
		}
		e.Log.Warn("leader election", "err", err, "retry_in", backoff)
		sleepCtx(ctx, backoff)
		backoff = min(backoff*2, 5*time.Second)
	}
}

// term is one session: a campaign and, if it is won, one term as leader.
// It returns nil when a term ended because the leadership was lost.
func (e *Election) term(ctx context.Context, lead func(ctx context.Context, st *Store) error) error {
	ttl := max(int((e.TTL+time.Second-1)/time.Second), 1)
	session, err := concurrency.NewSession(e.Store.cli, concurrency.WithTTL(ttl))
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	// Close revokes the lease: on a clean stop the next leader need not
	// wait for the TTL.
	defer session.Close()
	e.Store.campaign.set(e.Name, false)

	// The term ends with ctx or the session, whichever ends first.
	termCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(session.Ctx(), cancel)
	defer stop()

	el := concurrency.NewElection(session, election)
	if err := el.Campaign(termCtx, e.Name); err != nil {
		if termCtx.Err() != nil && ctx.Err() == nil {
			return errors.New("session lost while campaigning")
		}
		return fmt.Errorf("campaign: %w", err)
	}
	e.Log.Info("leading", "server", e.Name, "key", el.Key())
	go endWhenDeleted(termCtx, e.Store.cli, el.Key(), el.Rev(), cancel)
	e.Store.campaign.set(e.Name, true)
	err = lead(termCtx, e.Store.Guarded(el.Key(), el.Rev()))
	e.Store.campaign.set(e.Name, false)
	switch {
	case ctx.Err() != nil:
		e.Log.Info("stepping down: stopping")
	case termCtx.Err() != nil:
		e.Log.Warn("leadership lost: controllers stopped; campaigning again")
		err = nil
	default:
		err = fmt.Errorf("controllers ended: %w", err)
	}
	resignCtx, cancelResign := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancelResign()
	_ = el.Resign(resignCtx)
	return err
}

// endWhenDeleted calls end when key is deleted (its lease expired or
// revoked, or someone removed it) or the watch breaks.
func endWhenDeleted(ctx context.Context, cli *clientv3.Client, key string, rev int64, end func()) {
	defer end()
	for resp := range cli.Watch(ctx, key, clientv3.WithRev(rev)) {
		if resp.Err() != nil {
			return
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				return
			}
		}
	}
}

// Agree stores value under name unless a value is there already, and
// returns the stored one: how servers started apart settle on one value.
func (s *Store) Agree(ctx context.Context, name, value string) (string, error) {
	key := root + "agreed/" + name
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, value)).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return "", fmt.Errorf("agree on %s: %w", name, err)
	}
	if resp.Succeeded {
		return value, nil
	}
	return string(resp.Responses[0].GetResponseRange().Kvs[0].Value), nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
