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
)

// OpenEmbedded starts a single-member etcd with its data in dir and returns
// a Store on it. The member listens on free loopback ports: berth talks to
// it in-process, so nothing else needs to find it.
func OpenEmbedded(ctx context.Context, dir string, log *slog.Logger) (*Store, error) {
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
	clientURL, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	peerURL, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s did not become ready in 60s", cfg.Dir)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	s := New(v3client.New(e.Server))
	s.closers = append(s.closers, func() { e.Close() })
	s.dbSize = func() int64 { return e.Server.Backend().Size() }
	return s, nil
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
