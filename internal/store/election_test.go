package store

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"berth/api"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// A guarded write succeeds while the election key stands and fails with
// ErrNotLeader once the leader resigned; a plain conflict stays a conflict.
func TestGuardedWritesFailAfterResign(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := openTest(t)
	session, err := concurrency.NewSession(st.cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	el := concurrency.NewElection(session, election)
	if err := el.Campaign(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	guarded := st.Guarded(el.Key(), el.Rev())

	rev, err := guarded.Txn(ctx, Queues.Create("q", api.Queue{Name: "q", Concurrency: 1}))
	if err != nil {
		t.Fatalf("guarded write while leading: %v", err)
	}
	if _, err := guarded.Txn(ctx, Queues.Put("q", api.Queue{Name: "q", Concurrency: 2}, rev-1)); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale guarded write while leading: %v, want ErrConflict", err)
	}
	if _, err := Queues.Update(ctx, guarded, "q", func(q *api.Queue) error { q.Concurrency = 3; return nil }); err != nil {
		t.Fatalf("guarded update while leading: %v", err)
	}

	if err := el.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	q, err := Queues.Get(ctx, st, "q")
	if err != nil {
		t.Fatal(err)
	}
	for name, op := range map[string]Op{
		"put":        Queues.Put("q", api.Queue{Name: "q", Concurrency: 9}, q.Version),
		"put any":    Queues.PutAny("q", api.Queue{Name: "q", Concurrency: 9}),
		"create":     Queues.Create("other", api.Queue{Name: "other"}),
		"delete any": Queues.DeleteAny("q"),
	} {
		if _, err := guarded.Txn(ctx, op); !errors.Is(err, ErrNotLeader) {
			t.Errorf("guarded %s after resign: %v, want ErrNotLeader", name, err)
		}
	}
	// Update must not retry forever on a lost guard.
	if _, err := Queues.Update(ctx, guarded, "q", func(q *api.Queue) error { q.Concurrency = 9; return nil }); !errors.Is(err, ErrNotLeader) {
		t.Errorf("guarded update after resign: %v, want ErrNotLeader", err)
	}
	after, err := Queues.Get(ctx, st, "q")
	if err != nil || after.Concurrency != 3 {
		t.Errorf("queue after deposed writes: %+v, %v; want concurrency 3", after, err)
	}
	// The unguarded store writes as ever.
	if _, err := st.Txn(ctx, Queues.Put("q", api.Queue{Name: "q", Concurrency: 4}, after.Version)); err != nil {
		t.Errorf("unguarded write: %v", err)
	}
}

// A guard taken from an older leader fails even when a new leader holds a
// key under the same prefix.
func TestGuardOfOldTermFailsUnderNewLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := openTest(t)
	s1, err := concurrency.NewSession(st.cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	e1 := concurrency.NewElection(s1, election)
	if err := e1.Campaign(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	old := st.Guarded(e1.Key(), e1.Rev())
	s1.Close() // revokes the lease: s1's key goes

	s2, err := concurrency.NewSession(st.cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	e2 := concurrency.NewElection(s2, election)
	if err := e2.Campaign(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Txn(ctx, Queues.PutAny("q", api.Queue{Name: "q"})); !errors.Is(err, ErrNotLeader) {
		t.Errorf("write with the old leader's guard: %v, want ErrNotLeader", err)
	}
	if _, err := st.Guarded(e2.Key(), e2.Rev()).Txn(ctx, Queues.PutAny("q", api.Queue{Name: "q"})); err != nil {
		t.Errorf("write with the new leader's guard: %v", err)
	}
}

// term is what a lead function saw of one term.
type term struct {
	name string
	st   *Store
	done chan struct{} // closed when the term's context ended
}

func startCandidate(ctx context.Context, st *Store, name string, terms chan<- term) {
	e := &Election{Store: st, Name: name, TTL: 2 * time.Second, Log: quiet}
	go e.Run(ctx, func(ctx context.Context, g *Store) error {
		tm := term{name: name, st: g, done: make(chan struct{})}
		terms <- tm
		<-ctx.Done()
		close(tm.done)
		return nil
	})
}

func nextTerm(t *testing.T, terms <-chan term) term {
	t.Helper()
	select {
	case tm := <-terms:
		return tm
	case <-time.After(30 * time.Second):
		t.Fatal("nobody leads")
		return term{}
	}
}

// Of two candidates one leads; when it stops, the other leads, and the
// first one's store no longer writes.
func TestElectionHandsOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st := openTest(t)
	terms := make(chan term, 4)
	ctxA, stopA := context.WithCancel(ctx)
	ctxB, stopB := context.WithCancel(ctx)
	defer stopB()
	startCandidate(ctxA, st, "a", terms)
	first := nextTerm(t, terms)
	if first.name != "a" {
		t.Fatalf("first leader %q, want a (the only candidate)", first.name)
	}
	startCandidate(ctxB, st, "b", terms)

	l, err := st.Leadership(ctx)
	if err != nil || l.Leader != "a" {
		t.Fatalf("leadership %+v, %v; want leader a", l, err)
	}
	if _, err := first.st.Txn(ctx, Queues.PutAny("q", api.Queue{Name: "q"})); err != nil {
		t.Fatalf("leader's write: %v", err)
	}
	select {
	case tm := <-terms:
		t.Fatalf("%s leads beside a", tm.name)
	case <-time.After(500 * time.Millisecond):
	}

	stopA()
	second := nextTerm(t, terms)
	if second.name != "b" {
		t.Fatalf("second leader %q, want b", second.name)
	}
	<-first.done
	if _, err := first.st.Txn(ctx, Queues.PutAny("q", api.Queue{Name: "q"})); !errors.Is(err, ErrNotLeader) {
		t.Errorf("old leader's write: %v, want ErrNotLeader", err)
	}
	if _, err := second.st.Txn(ctx, Queues.PutAny("q", api.Queue{Name: "q"})); err != nil {
		t.Errorf("new leader's write: %v", err)
	}
	if l, err := st.Leadership(ctx); err != nil || l.Leader != "b" {
		t.Errorf("leadership %+v, %v; want leader b", l, err)
	}
}

// A leader whose key disappears (its lease revoked, as when its session
// expires) stops at once and campaigns again.
func TestLeaderStopsWhenItsKeyGoes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st := openTest(t)
	terms := make(chan term, 4)
	startCandidate(ctx, st, "a", terms)
	first := nextTerm(t, terms)

	resp, err := st.cli.Get(ctx, election+"/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("election keys: %v, %v", resp, err)
	}
	if _, err := st.cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the term did not end when its lease was revoked")
	}
	if _, err := first.st.Txn(ctx, Queues.PutAny("q", api.Queue{Name: "q"})); !errors.Is(err, ErrNotLeader) {
		t.Errorf("write of the ended term: %v, want ErrNotLeader", err)
	}
	second := nextTerm(t, terms)
	if _, err := second.st.Txn(ctx, Queues.PutAny("q", api.Queue{Name: "q"})); err != nil {
		t.Errorf("write of the new term: %v", err)
	}
}

func TestAgree(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := openTest(t)
	for _, try := range []string{"first", "second"} {
		got, err := st.Agree(ctx, "token-hash", try)
		if err != nil || got != "first" {
			t.Errorf("Agree(%q) = %q, %v; want first", try, got, err)
		}
	}
}

// Three embedded members form one cluster: a write through one is read
// through the others, and one election spans them.
func TestThreeMembers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	names := []string{"s1", "s2", "s3"}
	peers := make([]string, len(names))
	cluster := ""
	for i, name := range names {
		u, err := freeLoopbackURL()
		if err != nil {
			t.Fatal(err)
		}
		peers[i] = u.String()
		if i > 0 {
			cluster += ","
		}
		cluster += name + "=" + peers[i]
	}
	stores := make([]*Store, len(names))
	errs := make(chan error, len(names))
	for i, name := range names {
		go func() {
			var err error
			stores[i], err = OpenMember(ctx, t.TempDir(), Member{Name: name, PeerURL: peers[i], InitialCluster: cluster}, quiet)
			errs <- err
		}()
	}
	for range names {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, st := range stores {
		t.Cleanup(st.Close)
	}
	if _, err := stores[0].Txn(ctx, Queues.Create("q", api.Queue{Name: "q", Concurrency: 7})); err != nil {
		t.Fatal(err)
	}
	for i, st := range stores {
		if q, err := Queues.Get(ctx, st, "q"); err != nil || q.Concurrency != 7 {
			t.Errorf("member %s: %+v, %v", names[i], q, err)
		}
	}
	terms := make(chan term, 8)
	for i, st := range stores {
		startCandidate(ctx, st, names[i], terms)
	}
	leader := nextTerm(t, terms)
	for i, st := range stores {
		l, err := st.Leadership(ctx)
		if err != nil || l.Leader != leader.name || l.Leading != (names[i] == leader.name) {
			t.Errorf("member %s: leadership %+v, %v; want leader %s", names[i], l, err, leader.name)
		}
	}
}

func TestMemberURLs(t *testing.T) {
	for _, bad := range []string{"127.0.0.1:2380", "https://h:2380", "http://h", "http://h:2380/x"} {
		if _, err := OpenMember(context.Background(), t.TempDir(), Member{Name: "s1", PeerURL: bad, InitialCluster: "s1=" + bad}, quiet); err == nil {
			t.Errorf("peer URL %q accepted", bad)
		}
	}
}
