// Package store keeps berth's records in etcd: typed get, list, watch and
// compare-and-swap. It is the only package that imports etcd.
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	json "github.com/goccy/go-json"
	"strconv"
	"sync"
	"time"

	"berth/api"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const root = "/berth/"

var (
	ErrNotFound  = errors.New("not found")
	ErrExists    = errors.New("already exists")
	ErrConflict  = errors.New("changed concurrently")
	ErrCompacted = errors.New("revision compacted")
	// ErrSkip, returned by an Update function, leaves the record as it is.
	ErrSkip = errors.New("no change")
)

// Store is a typed view of etcd.
type Store struct {
	cli     *clientv3.Client
	closers []func()
	dbSize  func() int64 // of the embedded member; nil for a remote cluster
	// guard, when set, is added to every transaction (see Guarded).
	guard    *guard
	campaign campaign

	mu         sync.Mutex
	eventLease clientv3.LeaseID
	leaseUntil time.Time
	eventSeq   uint64
}

// New wraps an etcd client.
func New(cli *clientv3.Client) *Store { return &Store{cli: cli} }

func (s *Store) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// Client exposes the etcd client for leader election and status.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Kind is one type of record stored under one prefix.
type Kind[T any] struct {
	prefix  string
	version func(*T) *int64 // the record's Version field
	noun    string          // how an error names one: "app named" (+ the name)
}

var (
	Apps      = Kind[api.App]{"apps/", func(a *api.App) *int64 { return &a.Version }, "app named"}
	Instances = Kind[api.Instance]{"instances/", func(i *api.Instance) *int64 { return &i.Version }, "instance named"}
	Nodes     = Kind[api.Node]{"nodes/", func(n *api.Node) *int64 { return &n.Version }, "node named"}
	Events    = Kind[api.Event]{"events/", func(e *api.Event) *int64 { return &e.Version }, "event"}
	Access    = Kind[api.Access]{"access/", func(a *api.Access) *int64 { return &a.Version }, "access record of app"}
	Routes    = Kind[api.RouteClaim]{"routes/", func(r *api.RouteClaim) *int64 { return &r.Version }, "route for host"}
	Tasks     = Kind[api.Task]{"tasks/", func(t *api.Task) *int64 { return &t.Version }, "task with id"}
	Payloads  = Kind[api.TaskPayload]{"payloads/", func(p *api.TaskPayload) *int64 { return &p.Version }, "payload of task"}
	TaskKeys  = Kind[api.TaskKey]{"taskkeys/", func(k *api.TaskKey) *int64 { return &k.Version }, "task with idempotency key"}
	Queues    = Kind[api.Queue]{"queues/", func(q *api.Queue) *int64 { return &q.Version }, "queue named"}
	Schedules = Kind[api.Schedule]{"schedules/", func(s *api.Schedule) *int64 { return &s.Version }, "schedule named"}
	Tokens    = Kind[api.Token]{"tokens/", func(t *api.Token) *int64 { return &t.Version }, "token"}
	// Revisions are named api.RevisionKey(app, n): an app's history, in order.
	Revisions = Kind[api.Revision]{"revisions/", func(r *api.Revision) *int64 { return &r.Version }, "revision"}
	// Traffic is what each gateway counted, named by the gateway's id.
	Traffic = Kind[api.GatewayTraffic]{"traffic/", func(t *api.GatewayTraffic) *int64 { return &t.Version }, "traffic report of gateway"}
)

// notFound is ErrNotFound for one record, worded for the people who
// asked for it ("no app named web"), not as a key.
type notFound struct{ noun, name string }

func (e notFound) Error() string        { return "no " + e.noun + " " + e.name }
func (e notFound) Is(target error) bool { return target == ErrNotFound }

func (k Kind[T]) key(name string) string { return root + k.prefix + name }

// encode is the record as stored: without its version, which is the
// key's revision and would be stale the moment it is written.
func (k Kind[T]) encode(v T) string {
	*k.version(&v) = 0
	return mustJSON(v)
}

func (k Kind[T]) decode(value []byte, modRev int64) (T, error) {
	var v T
	if err := json.Unmarshal(value, &v); err != nil {
		return v, fmt.Errorf("decode %s record: %w", k.prefix, err)
	}
	*k.version(&v) = modRev
	return v, nil
}

// Get reads one record.
func (k Kind[T]) Get(ctx context.Context, s *Store, name string) (T, error) {
	var zero T
	resp, err := s.cli.Get(ctx, k.key(name))
	if err != nil {
		return zero, fmt.Errorf("get %s%s: %w", k.prefix, name, err)
	}
	if len(resp.Kvs) == 0 {
		return zero, notFound{k.noun, name}
	}
	return k.decode(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
}

// List reads all records of the kind and the store revision they were read at.
func (k Kind[T]) List(ctx context.Context, s *Store) ([]T, int64, error) {
	resp, err := s.cli.Get(ctx, root+k.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", k.prefix, err)
	}
	items := make([]T, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, err := k.decode(kv.Value, kv.ModRevision)
		if err != nil {
			return nil, 0, err
		}
		items = append(items, v)
	}
	return items, resp.Header.Revision, nil
}

// ListUnder reads the records whose names start with prefix, in order.
func (k Kind[T]) ListUnder(ctx context.Context, s *Store, prefix string) ([]T, error) {
	resp, err := s.cli.Get(ctx, k.key(prefix), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list %s%s: %w", k.prefix, prefix, err)
	}
	items := make([]T, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, err := k.decode(kv.Value, kv.ModRevision)
		if err != nil {
			return nil, err
		}
		items = append(items, v)
	}
	return items, nil
}

// DeleteUnder removes every record whose name starts with prefix.
func (k Kind[T]) DeleteUnder(prefix string) Op {
	return Op{op: clientv3.OpDelete(k.key(prefix), clientv3.WithPrefix()), desc: "delete " + k.prefix + prefix + "*"}
}

// Op is one write of a transaction: a condition and the change.
type Op struct {
	cmp    *clientv3.Cmp
	op     clientv3.Op
	desc   string
	create bool
}

// Create writes a new record; the transaction fails if it exists.
func (k Kind[T]) Create(name string, v T) Op {
	key := k.key(name)
	cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	return Op{&cmp, clientv3.OpPut(key, k.encode(v)), "create " + k.prefix + name, true}
}

// Put replaces a record read at version; the transaction fails if it changed since.
func (k Kind[T]) Put(name string, v T, version int64) Op {
	key := k.key(name)
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", version)
	return Op{&cmp, clientv3.OpPut(key, k.encode(v)), "update " + k.prefix + name, false}
}

// Delete removes a record read at version; the transaction fails if it changed since.
func (k Kind[T]) Delete(name string, version int64) Op {
	key := k.key(name)
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", version)
	return Op{&cmp, clientv3.OpDelete(key), "delete " + k.prefix + name, false}
}

// PutAny writes a record whatever is there.
func (k Kind[T]) PutAny(name string, v T) Op {
	return Op{op: clientv3.OpPut(k.key(name), k.encode(v)), desc: "put " + k.prefix + name}
}

// DeleteAny removes a record whatever its version.
func (k Kind[T]) DeleteAny(name string) Op {
	return Op{op: clientv3.OpDelete(k.key(name)), desc: "delete " + k.prefix + name}
}

// Txn applies all ops or none. A failed condition returns ErrConflict
// (or ErrExists for a Create of an existing record).
func (s *Store) Txn(ctx context.Context, ops ...Op) (int64, error) {
	if len(ops) == 0 {
		return 0, nil
	}
	cmps := make([]clientv3.Cmp, 0, len(ops))
	thens := make([]clientv3.Op, 0, len(ops))
	for _, o := range ops {
		if o.cmp != nil {
			cmps = append(cmps, *o.cmp)
		}
		thens = append(thens, o.op)
	}
	if s.guard != nil {
		cmps = append(cmps, s.guard.cmp())
	}
	txn := s.cli.Txn(ctx).If(cmps...).Then(thens...)
	if s.guard != nil {
		txn = txn.Else(s.guard.read())
	}
	resp, err := txn.Commit()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", ops[0].desc, err)
	}
	if s.guard.lost(resp) {
		return 0, fmt.Errorf("%s: %w", ops[0].desc, ErrNotLeader)
	}
	if !resp.Succeeded {
		if len(ops) == 1 && ops[0].create {
			return 0, fmt.Errorf("%s: %w", ops[0].desc, ErrExists)
		}
		return 0, fmt.Errorf("%s: %w", ops[0].desc, ErrConflict)
	}
	return resp.Header.Revision, nil
}

// Update reads a record, applies fn and writes it back, together with the
// extra ops, if nothing changed in between; it retries on conflict, so fn
// may be called several times.
func (k Kind[T]) Update(ctx context.Context, s *Store, name string, fn func(*T) error, extra ...Op) (T, error) {
	for {
		v, err := k.Get(ctx, s, name)
		if err != nil {
			return v, err
		}
		version := *k.version(&v)
		if err := fn(&v); err != nil {
			if errors.Is(err, ErrSkip) {
				return v, nil
			}
			return v, err
		}
		rev, err := s.Txn(ctx, append([]Op{k.Put(name, v, version)}, extra...)...)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return v, err
		}
		*k.version(&v) = rev
		return v, nil
	}
}

// Event is one change seen by Watch.
type Event[T any] struct {
	Deleted  bool
	Name     string
	Object   T // the previous value for a delete, when known
	Revision int64
}

// Watch streams changes of the kind after revision rev. The channel closes
// when ctx ends or the watch fails; errc then says why (ErrCompacted when
// rev is too old: list again).
func (k Kind[T]) Watch(ctx context.Context, s *Store, rev int64) (<-chan Event[T], <-chan error) {
	raw, rawErrc := k.WatchRaw(ctx, s, rev)
	out := make(chan Event[T], 64)
	errc := make(chan error, 1)
	go func() {
		defer close(out)
		for re := range raw {
			e := Event[T]{Name: re.Name, Revision: re.Revision, Deleted: re.Deleted}
			if re.Value != nil {
				var err error
				if e.Object, err = k.decode(re.Value, re.ModRevision); err != nil {
					errc <- err
					return
				}
			}
			select {
			case out <- e:
			case <-ctx.Done():
				return
			}
		}
		// WatchRaw says why before it closes its channel, if it was not ctx.
		select {
		case err := <-rawErrc:
			errc <- err
		default:
		}
	}()
	return out, errc
}

// RawEvent is one change of a record, undecoded: for those that pass
// records on without looking inside (the API's watch streams).
type RawEvent struct {
	Deleted     bool
	Name        string
	Value       []byte // the record as stored; the previous value for a delete, when known (else nil)
	ModRevision int64  // the revision Value was written at: the record's version
	Revision    int64  // of the change
}

// JSON returns the record with its version, as Get would give it after
// a decode and encode. Records are stored without their version (it is
// the key's revision), so it is added as the object's last member.
func (e RawEvent) JSON() []byte {
	v := bytes.TrimSpace(e.Value)
	if len(v) < 2 || v[len(v)-1] != '}' {
		return e.Value
	}
	out := make([]byte, 0, len(v)+32)
	out = append(out, v[:len(v)-1]...)
	if len(bytes.TrimSpace(v[1:len(v)-1])) > 0 {
		out = append(out, ',')
	}
	out = append(out, `"version":`...)
	out = strconv.AppendInt(out, e.ModRevision, 10)
	return append(out, '}')
}

// WatchRaw is Watch without decoding.
func (k Kind[T]) WatchRaw(ctx context.Context, s *Store, rev int64) (<-chan RawEvent, <-chan error) {
	out := make(chan RawEvent, 64)
	errc := make(chan error, 1)
	prefix := root + k.prefix
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.CompactRevision != 0 {
				errc <- fmt.Errorf("watch %s from %d: %w", k.prefix, rev, ErrCompacted)
				return
			}
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					err = ErrCompacted
				}
				errc <- fmt.Errorf("watch %s: %w", k.prefix, err)
				return
			}
			for _, ev := range resp.Events {
				// A change's revision is the one it was made at: for a delete
				// too, etcd gives the tombstone the revision of the delete.
				// (The response header's revision is the store's newest, which
				// would make a replayed old delete look newer than any list.)
				e := RawEvent{Name: string(ev.Kv.Key[len(prefix):]), Revision: ev.Kv.ModRevision,
					Value: ev.Kv.Value, ModRevision: ev.Kv.ModRevision}
				if ev.Type == clientv3.EventTypeDelete {
					e.Deleted, e.Value, e.ModRevision = true, nil, 0
					if ev.PrevKv != nil {
						e.Value, e.ModRevision = ev.PrevKv.Value, ev.PrevKv.ModRevision
					}
				}
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
		}
		if ctx.Err() == nil {
			errc <- fmt.Errorf("watch %s: closed", k.prefix)
		}
	}()
	return out, errc
}

// eventTTL is how long events are kept.
const eventTTL = 24 * time.Hour

// AppendEvent returns an op that records an event; events expire after a day.
// Events share one lease per hour so that expiry costs one lease, not one per event.
func (s *Store) AppendEvent(ctx context.Context, e api.Event) (Op, error) {
	lease, seq, err := s.eventLeaseAndSeq(ctx)
	if err != nil {
		return Op{}, err
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	// Keys sort by time; the sequence number keeps events of one instant apart.
	key := Events.key(fmt.Sprintf("%020d-%06d", e.Time.UnixNano(), seq%1000000))
	return Op{op: clientv3.OpPut(key, mustJSON(e), clientv3.WithLease(lease)), desc: "append event"}, nil
}

// RecordEvents writes events on their own.
func (s *Store) RecordEvents(ctx context.Context, events ...api.Event) error {
	ops := make([]Op, 0, len(events))
	for _, e := range events {
		op, err := s.AppendEvent(ctx, e)
		if err != nil {
			return err
		}
		ops = append(ops, op)
	}
	_, err := s.Txn(ctx, ops...)
	return err
}

func (s *Store) eventLeaseAndSeq(ctx context.Context) (clientv3.LeaseID, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eventSeq++
	if s.eventLease != 0 && time.Now().Before(s.leaseUntil) {
		return s.eventLease, s.eventSeq, nil
	}
	resp, err := s.cli.Grant(ctx, int64((eventTTL + time.Hour).Seconds()))
	if err != nil {
		return 0, 0, fmt.Errorf("grant event lease: %w", err)
	}
	s.eventLease, s.leaseUntil = resp.ID, time.Now().Add(time.Hour)
	return s.eventLease, s.eventSeq, nil
}

// Status reports the store's health: its revision and database size.
func (s *Store) Status(ctx context.Context) (rev int64, dbBytes int64, err error) {
	resp, err := s.cli.Get(ctx, root+"cluster", clientv3.WithCountOnly())
	if err != nil {
		return 0, 0, fmt.Errorf("store: %w", err)
	}
	if s.dbSize != nil {
		return resp.Header.Revision, s.dbSize(), nil
	}
	for _, ep := range s.cli.Endpoints() {
		st, err := s.cli.Status(ctx, ep)
		if err != nil {
			return 0, 0, fmt.Errorf("store %s: %w", ep, err)
		}
		return resp.Header.Revision, st.DbSize, nil
	}
	return resp.Header.Revision, 0, nil
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic("store: marshal record: " + err.Error())
	}
	return string(b)
}

// ClusterID returns this cluster's id, creating it on first use. Every
// container berth makes carries it, so that two clusters sharing one
// engine never touch each other's containers.
func (s *Store) ClusterID(ctx context.Context, newID func() string) (string, error) {
	key := root + "cluster"
	id := newID()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, id)).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return "", fmt.Errorf("cluster id: %w", err)
	}
	if resp.Succeeded {
		return id, nil
	}
	return string(resp.Responses[0].GetResponseRange().Kvs[0].Value), nil
}

// getBatch is how many keys GetMany reads per round trip: etcd's default
// limit of operations in one transaction.
const getBatch = 128

// GetMany reads records by name in few round trips (transactions of
// reads, each at one revision). A name without a record is absent from
// the map.
func (k Kind[T]) GetMany(ctx context.Context, s *Store, names []string) (map[string]T, error) {
	out := make(map[string]T, len(names))
	for start := 0; start < len(names); start += getBatch {
		chunk := names[start:min(start+getBatch, len(names))]
		ops := make([]clientv3.Op, len(chunk))
		for i, name := range chunk {
			ops[i] = clientv3.OpGet(k.key(name))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("get %s%s and %d more: %w", k.prefix, chunk[0], len(chunk)-1, err)
		}
		for i, r := range resp.Responses {
			kvs := r.GetResponseRange().Kvs
			if len(kvs) == 0 {
				continue
			}
			v, err := k.decode(kvs[0].Value, kvs[0].ModRevision)
			if err != nil {
				return nil, err
			}
			out[chunk[i]] = v
		}
	}
	return out, nil
}
