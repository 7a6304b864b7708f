package store

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
)

// Limits of the embedded etcd; a remote cluster needs at least these
// (--max-txn-ops, --max-request-bytes) for batches of tasks.
const (
	MaxTxnOps       = 4096
	MaxRequestBytes = 10 << 20 // etcd's recommended maximum
	// ElectionMs is the raft election timeout of embedded members.
	ElectionMs = 500
)

// OpenEmbedded starts a single-member etcd with its data in dir and returns
// a Store on it. The member listens on free loopback ports: berth talks to
// it in-process, so nothing else needs to find it.
func OpenEmbedded(ctx context.Context, dir string, log *slog.Logger) (*Store, error) {
	return OpenMember(ctx, dir, Member{}, log)
}

// Member is this process's place in an embedded etcd cluster of several
// members, one per berth server. The zero Member is a cluster of one.
type Member struct {
	Name string // unique in the cluster
	// PeerURL is where the other members reach this one (http://host:port);
	// it is listened on as given.
	PeerURL string
	// ClientURL is where etcd clients (etcdctl, for backups) reach this
	// member; default: a free loopback port.
	ClientURL string
	// InitialCluster lists every member as name=peerURL,... (this one
	// too). Used on the first start only; later the data dir knows.
	InitialCluster string
	// Join: the cluster runs already and this member was added to it
	// (etcdctl member add), rather than all members starting afresh.
	Join bool
}

// OpenMember starts an embedded etcd member with its data in dir and
// returns a Store on it. A member of several waits (until ctx ends) for
// enough of the others to form a quorum.
func OpenMember(ctx context.Context, dir string, m Member, log *slog.Logger) (*Store, error) {
	cfg := embed.NewConfig()
	cfg.Name = "berth"
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdLogger(log))
	// Small snapshots and a revision-based compaction keep memory flat.
	cfg.SnapshotCount = 10000
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "10000"
	cfg.QuotaBackendBytes = 2 << 30
	// A batch of tasks is one transaction: up to api.MaxTaskBatch tasks,
	// their payloads and idempotency keys, in one request body of at most
	// 8 MiB. etcd's defaults (128 ops, 1.5 MiB) would refuse it.
	cfg.MaxTxnOps = MaxTxnOps
	cfg.MaxRequestBytes = MaxRequestBytes
	if err := m.configure(cfg); err != nil {
		return nil, err
	}

	e, err := startEtcd(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	// One member is ready at once; one of several waits for a quorum.
	limit := time.After(60 * time.Second)
	if m.Name != "" {
		limit = nil
	}
	waiting := time.NewTicker(10 * time.Second)
	defer waiting.Stop()
	for ready := false; !ready; {
		select {
		case <-e.Server.ReadyNotify():
			ready = true
		case err := <-e.Err():
			e.Close()
			return nil, fmt.Errorf("embedded etcd: %w", err)
		case <-limit:
			e.Close()
			return nil, fmt.Errorf("embedded etcd in %s did not become ready in 60s", cfg.Dir)
		case <-waiting.C:
			log.Info("etcd member waiting for a quorum of its cluster", "member", m.Name, "cluster", m.InitialCluster)
		case <-ctx.Done():
			e.Close()
			return nil, ctx.Err()
		}
	}
	s := New(v3client.New(e.Server))
	s.closers = append(s.closers, func() { e.Close() })
	s.dbSize = func() int64 { return e.Server.Backend().Size() }
	return s, nil
}

// startEtcd starts etcd, giving up when ctx ends: etcd waits without end
// for the lock on its database, which another process may hold.
func startEtcd(ctx context.Context, cfg *embed.Config, log *slog.Logger) (*embed.Etcd, error) {
	type result struct {
		e   *embed.Etcd
		err error
	}
	done := make(chan result, 1)
	go func() {
		e, err := embed.StartEtcd(cfg)
		done <- result{e, err}
	}()
	slow := time.NewTimer(5 * time.Second)
	defer slow.Stop()
	for {
		select {
		case r := <-done:
			return r.e, r.err
		case <-slow.C:
			log.Warn("etcd is still opening its database after 5s: a large one, or another process holds it", "dir", cfg.Dir)
		case <-ctx.Done():
			go func() { // close it if it ever starts
				if r := <-done; r.e != nil {
					r.e.Close()
				}
			}()
			return nil, ctx.Err()
		}
	}
}

// configure sets the member's name, URLs and cluster.
func (m Member) configure(cfg *embed.Config) error {
	if m.Name == "" {
		clientURL, err := freeLoopbackURL()
		if err != nil {
			return err
		}
		peerURL, err := freeLoopbackURL()
		if err != nil {
			return err
		}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		return nil
	}
	cfg.Name = m.Name
	peer, err := memberURL("peer", m.PeerURL)
	if err != nil {
		return err
	}
	client, err := freeLoopbackURL()
	if m.ClientURL != "" {
		client, err = memberURL("client", m.ClientURL)
	}
	if err != nil {
		return err
	}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.InitialCluster = m.InitialCluster
	// A dead member is noticed after ElectionMs; berth's leader election
	// waits that long and its own lease TTL on top, so it is kept at
	// half etcd's default (fine on a LAN; etcd wants 5 heartbeats).
	cfg.TickMs, cfg.ElectionMs = 100, ElectionMs
	// The cluster's token keeps members of different clusters apart; all
	// members of one cluster are given the same member list.
	cfg.InitialClusterToken = "berth"
	if m.Join {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	return nil
}

func memberURL(what, s string) (url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || u.Port() == "" || u.Path != "" && u.Path != "/" {
		return url.URL{}, fmt.Errorf("etcd %s URL %q: want http://host:port (members talk without TLS)", what, s)
	}
	u.Path = ""
	return *u, nil
}

// OpenRemote connects to an external etcd cluster.
func OpenRemote(endpoints []string) (*Store, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	s := New(cli)
	s.closers = append(s.closers, func() { cli.Close() })
	return s, nil
}

func freeLoopbackURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, fmt.Errorf("find a free port for etcd: %w", err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}
