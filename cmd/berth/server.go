package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	berthapi "berth/api"
	"berth/internal/apiserver"
	"berth/internal/client"
	"berth/internal/controller"
	"berth/internal/gitserve"
	"berth/internal/registry"
	"berth/internal/store"
	"berth/internal/tasklog"
)

// leaderTTL is how long a dead leader's election key outlives it: the
// longest another server waits to take over (etcd's minimum is 2s).
const leaderTTL = 2 * time.Second

// serverOptions are the flags of `berth server`, which `berth up` shares.
type serverOptions struct {
	buildContextMax string
	registryDir     string // "": <data-dir>/registry
	listen          string
	apiURL          string // this server's URL as others reach it: its name in the election
	logLevel        string
	nodeTTL         time.Duration
	gateway         string
	// taskRetention: ended tasks, their payloads and output are deleted after this.
	taskRetention time.Duration
	imageGC       imageGCOptions
	etcd          etcdOptions
}

// etcdOptions say where the store is: an embedded member of one (the
// default) or of several, or an external cluster.
type etcdOptions struct {
	endpoints string // --etcd: an external cluster
	name      string // --etcd-name: this member, one of --etcd-cluster
	cluster   string // --etcd-cluster: name=peerURL,... of every member
	clientURL string // --etcd-client-url: where etcdctl reaches this member
	join      bool   // --etcd-join: added to a running cluster
}

func (o *serverOptions) addFlags(f *pflag.FlagSet, gatewayDefault string) {
	f.StringVar(&o.listen, "listen", defaultAddr, "address of the API")
	f.StringVar(&o.apiURL, "api-url", "", "this server's API URL as agents and other servers reach it (default: from --listen and the host name)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.buildContextMax, "build-context-max", "500Mi", "the most a build's context (berth build) may hold")
	f.StringVar(&o.registryDir, "registry-dir", "", "where the image registry and build contexts are kept (default <data-dir>/registry); several servers need one directory they all share, e.g. on NFS")
	f.StringVar(&o.gateway, "gateway-addr", gatewayDefault, "address of the gateway (\"\" for none)")
	f.DurationVar(&o.nodeTTL, "node-ttl", 10*time.Second, "a node without a heartbeat for this long is down and its instances are replaced")
	f.DurationVar(&o.taskRetention, "task-retention", 7*24*time.Hour, "how long ended tasks, their payloads and output are kept")
	o.imageGC.addFlags(f)
	f.StringVar(&o.etcd.endpoints, "etcd", "", "client URLs of an external etcd cluster, comma-separated (default: an embedded etcd in --data-dir)")
	f.StringVar(&o.etcd.name, "etcd-name", "", "this server's member name in --etcd-cluster")
	f.StringVar(&o.etcd.cluster, "etcd-cluster", "", "every embedded etcd member as name=http://host:peer-port,... (the same on every server)")
	f.StringVar(&o.etcd.clientURL, "etcd-client-url", "", "where etcd clients (etcdctl) reach this member, http://host:port (default: a free loopback port)")
	f.BoolVar(&o.etcd.join, "etcd-join", false, "this member was added to a running cluster (etcdctl member add) rather than started with it")
}

func serverCmd(g *globals) *cobra.Command {
	o := &serverOptions{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a berth server: API and controllers, without an agent",
		Long: `Run the API (on --listen) and, when this server leads, the controllers. Agents
on the Docker hosts join with 'berth agent'.

The store is an embedded etcd in --data-dir, one member of a cluster of
several with --etcd-name and --etcd-cluster, or an external etcd with --etcd.
Several servers on one etcd elect one leader that runs the controllers; all
serve the API. See docs/operations.md.

On first start it writes an API token to <data-dir>/token. All servers of a
cluster need the same one: copy that file into the other servers' data dirs
before their first start.`,
		Example: `  berth server --listen 0.0.0.0:7070
  berth server --listen 0.0.0.0:7070 --etcd http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379
  berth server --listen 0.0.0.0:7070 --etcd-name s1 \
      --etcd-cluster s1=http://10.0.0.1:2380,s2=http://10.0.0.2:2380,s3=http://10.0.0.3:2380`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runServer(g, o) },
	}
	o.addFlags(cmd.Flags(), "")
	return cmd
}

func runServer(g *globals, o *serverOptions) error {
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	if err := g.takeDataDir(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := startServer(ctx, g, o, serverExtras{}, log)
	if err != nil {
		return err
	}
	return srv.wait(ctx, stop)
}

// takeDataDir makes --data-dir absolute and locks it for this process:
// a second server on it fails at once instead of waiting on etcd's lock.
func (g *globals) takeDataDir() error {
	if err := g.absDataDir(); err != nil {
		return err
	}
	return lockDir(g.dataDir, "data dir")
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// serverExtras is what `berth up` adds to a server.
type serverExtras struct {
	logs      func(node string) apiserver.LogSource // logs of its local node
	localNode string                                // the gateway reaches this node's instances directly
}

// server is a running `berth server`: the parts `berth up` builds on.
type server struct {
	store    *store.Store
	registry *registry.Registry
	addr     string // host:port the API listens on
	token    string // the bootstrap user token
	cluster  string
	log      *slog.Logger
	errc     chan error // a part that stopped

	http   *http.Server
	leader sync.WaitGroup // the election: done once resigned
}

// startServer opens the store, serves the API and campaigns to run the
// controllers, until ctx ends.
func startServer(ctx context.Context, g *globals, o *serverOptions, x serverExtras, log *slog.Logger) (*server, error) {
	if o.taskRetention <= 0 {
		return nil, fmt.Errorf("--task-retention: %s is not a positive duration", o.taskRetention)
	}
	if o.nodeTTL <= 0 {
		return nil, fmt.Errorf("--node-ttl: %s is not a positive duration", o.nodeTTL)
	}
	if err := o.imageGC.check(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(g.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	token, err := loadOrCreateToken(filepath.Join(g.dataDir, tokenFile))
	if err != nil {
		return nil, err
	}
	started := time.Now()
	st, err := openStore(ctx, g.dataDir, o.etcd, log)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			st.Close()
		}
	}()
	cluster, err := st.ClusterID(ctx, randomHex)
	if err != nil {
		return nil, err
	}
	// A lone embedded member has no other server to agree with (and its
	// token may be replaced by deleting the file).
	if o.etcd.shared() {
		if err := agreeOnToken(ctx, st, token, g.dataDir); err != nil {
			return nil, err
		}
	}
	log.Info("store ready", "data_dir", g.dataDir, "took", time.Since(started).Round(time.Millisecond))

	taskLogs, err := tasklog.Open(filepath.Join(g.dataDir, "task-logs"))
	if err != nil {
		return nil, fmt.Errorf("task logs: %w", err)
	}
	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return nil, fmt.Errorf("API listen: %w", err)
	}
	s := &server{store: st, addr: lis.Addr().String(), token: token, cluster: cluster, log: log, errc: make(chan error, 8)}
	name := o.apiURL
	if name == "" {
		name = apiURL(s.addr)
	}

	maxContext, err := berthapi.ParseBytes(o.buildContextMax)
	if err != nil || maxContext <= 0 {
		lis.Close()
		return nil, fmt.Errorf("--build-context-max: %q is not a size", o.buildContextMax)
	}
	regDir, err := registryDir(ctx, st, o, g.dataDir)
	if err != nil {
		lis.Close()
		return nil, err
	}
	api := &apiserver.Server{
		Store: st, Token: token, Version: version, Cluster: cluster, NodeTTL: o.nodeTTL,
		TaskLogs: taskLogs, Logs: x.logs,
		BuildDir: filepath.Join(regDir, "build-contexts"), BuildContextMax: int64(maxContext),
		Log: log.With("component", "api"),
	}
	handler := api.Handler()
	// The image registry shares the API's listener, under /v2/.
	reg, err := registry.New(registry.Config{
		Dir:       regDir,
		Authorize: api.TokenRole,
		Secret:    registrySecret(token),
		Log:       log.With("component", "registry"),
	})
	if err != nil {
		lis.Close()
		return nil, err
	}
	s.registry = reg
	api.Images, api.Registry = reg, reg
	withRegistry := http.NewServeMux()
	withRegistry.Handle("/v2/", registry.ForwardGuarded(reg, func(ctx context.Context) (string, error) {
		l, err := st.Leadership(ctx)
		if err != nil || l.Leading || l.Leader == "" {
			return "", err
		}
		return l.Leader, nil
	}))
	withRegistry.Handle(gitserve.Prefix, gitServer(g.dataDir, s.addr, api, 4*int64(maxContext), log))
	withRegistry.Handle("/", handler)
	handler = withRegistry
	if o.gateway != "" {
		p, gerrc, err := startGateway(ctx, client.New(s.addr, token), o.gateway, x.localNode, prometheus.NewRegistry(), log.With("component", "gateway"))
		if err != nil {
			lis.Close()
			reg.Close()
			return nil, err
		}
		go func() { s.errc <- <-gerrc }()
		// The gateway's metrics are served beside the API, without a token.
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", p.MetricsHandler())
		mux.Handle("/", handler)
		handler = mux
	}
	s.http = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() { s.errc <- s.http.Serve(lis) }()
	log.Info("API listening", "addr", "http://"+s.addr, "server", name, "token_file", filepath.Join(g.dataDir, tokenFile))

	// Every server campaigns; the leader runs the controllers on a store
	// whose writes fail once it is deposed.
	el := &store.Election{Store: st, Name: name, TTL: leaderTTL, Log: log.With("component", "election")}
	s.leader.Go(func() {
		el.Run(ctx, func(ctx context.Context, st *store.Store) error {
			// The leader collects the registry's garbage: the storage is
			// one for all servers, and so is the collection.
			o.imageGC.start(ctx, reg, st, name, log)
			return runControllers(ctx, st, cluster, o, taskLogs, log)
		})
	})
	ok = true
	return s, nil
}

// runControllers runs the app and task controllers until ctx ends or one
// of them fails.
func runControllers(ctx context.Context, st *store.Store, cluster string, o *serverOptions, taskLogs *tasklog.Store, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tasks := &controller.Tasks{Store: st, Log: log.With("component", "tasks"), Cluster: cluster,
		Retention: o.taskRetention, Logs: taskLogs, NodeTTL: o.nodeTTL}
	// The app controller places instances around running tasks.
	ctl := &controller.Controller{Store: st, Log: log.With("component", "controller"), Tasks: tasks, NodeTTL: o.nodeTTL}
	errc := make(chan error, 2)
	go func() { errc <- ctl.Run(ctx) }()
	go func() { errc <- tasks.Run(ctx) }()
	err := <-errc
	cancel()
	<-errc
	return err
}

// wait runs until ctx ends or a part stops, then resigns, stops the API
// and closes the store.
func (s *server) wait(ctx context.Context, stop func()) error {
	var err error
	select {
	case <-ctx.Done():
		s.log.Info("stopping; app containers keep running")
	case err = <-s.errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("stopped", "err", err)
		}
	}
	s.close(stop)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// close stops the server: stop ends its context; then it resigns, stops
// the API and closes the store.
func (s *server) close(stop func()) {
	stop()
	s.leader.Wait() // resigned: another server may lead at once
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.http.Shutdown(shutdown)
	s.registry.Close()
	s.store.Close()
}

// registryDir is the registry's storage, checked: with several servers
// it must be the one directory they all share, which each finds out from
// the storage id the first of them wrote there and into the store.
func registryDir(ctx context.Context, st *store.Store, o *serverOptions, dataDir string) (string, error) {
	dir := o.registryDir
	if dir == "" {
		dir = filepath.Join(dataDir, "registry")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("--registry-dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("--registry-dir: %w", err)
	}
	if !o.etcd.shared() {
		return dir, nil
	}
	id, err := storageID(filepath.Join(dir, "storage-id"))
	if err != nil {
		return "", fmt.Errorf("--registry-dir: %w", err)
	}
	agreed, err := st.Agree(ctx, "registry-storage-id", id)
	if err != nil {
		return "", err
	}
	if agreed != id {
		return "", fmt.Errorf("--registry-dir %s is not the image registry storage of this cluster's other servers (its storage-id is %s, theirs %s): "+
			"every server needs the same shared directory (NFS or the like) as --registry-dir, see docs/operations.md", dir, id, agreed)
	}
	return dir, nil
}

// storageID reads the id of a registry storage, writing a new one when
// there is none (O_EXCL: two servers starting on one new share agree).
func storageID(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		id := randomHex()
		_, err = f.WriteString(id + "\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return "", err
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrExist) {
		return "", err
	}
	for range 50 { // the other writer may not have written it yet
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", fmt.Errorf("%s is empty", path)
}

// gitServer serves the apps' git repositories under /git/, or says why
// it cannot. Its hook (berth git-hook) talks to this server on loopback
// with the pusher's token.
func gitServer(dataDir, addr string, api *apiserver.Server, maxPush int64, log *slog.Logger) http.Handler {
	log = log.With("component", "git")
	self, err := os.Executable()
	if err == nil {
		err = gitserve.Available()
	}
	if err != nil {
		log.Warn("git push is off", "err", err)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "git push to this server is off: "+err.Error(), http.StatusServiceUnavailable)
		})
	}
	loopback := addr
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			loopback = net.JoinHostPort("127.0.0.1", port)
		}
	}
	// The hook's temporary files (a push's build context) stay under the
	// data dir, and it watches the server's pid (see runGitHook).
	tmp := filepath.Join(dataDir, "git", "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		log.Warn("git push: temporary directory", "dir", tmp, "err", err)
		tmp = os.TempDir()
	}
	env := []string{"BERTH_ADDR=" + loopback, "TMPDIR=" + tmp, fmt.Sprintf("%s=%d", hookServerPIDEnv, os.Getpid())}
	return &gitserve.Server{
		Root: filepath.Join(dataDir, "git"), Authorize: api.TokenRole, MaxPush: maxPush, Log: log,
		Hook: []string{self, "git-hook"},
		HookEnv: func(app, token string) []string {
			return append(slices.Clone(env), "BERTH_TOKEN="+token, hookAppEnv+"="+app)
		},
	}
}

// registrySecret signs the registry's upload state. It comes from the
// token, which every server of a cluster shares, so that an upload begun
// on one server may go on through another.
func registrySecret(token string) string {
	h := sha256.Sum256([]byte("berth registry uploads\x00" + token))
	return hex.EncodeToString(h[:])
}

// shared reports whether other servers may use the same store.
func (o etcdOptions) shared() bool { return o.endpoints != "" || o.members() }

// members reports whether a flag of embedded members is set.
func (o etcdOptions) members() bool {
	return o.name != "" || o.cluster != "" || o.clientURL != "" || o.join
}

// openStore opens the store the flags name.
func openStore(ctx context.Context, dataDir string, o etcdOptions, log *slog.Logger) (*store.Store, error) {
	embedded := o.members()
	switch {
	case o.endpoints != "" && embedded:
		return nil, errors.New("--etcd (an external cluster) and --etcd-name/--etcd-cluster/--etcd-client-url/--etcd-join (embedded members) exclude each other")
	case o.endpoints != "":
		var eps []string
		for _, ep := range strings.Split(o.endpoints, ",") {
			if ep = strings.TrimSpace(ep); ep != "" {
				eps = append(eps, ep)
			}
		}
		st, err := store.OpenRemote(eps)
		if err != nil {
			return nil, fmt.Errorf("--etcd: %w", err)
		}
		return st, nil
	case !embedded:
		return store.OpenEmbedded(ctx, dataDir, log)
	}
	m, err := o.member()
	if err != nil {
		return nil, err
	}
	log.Info("starting etcd member", "member", m.Name, "peer_url", m.PeerURL, "cluster", m.InitialCluster)
	return store.OpenMember(ctx, dataDir, m, log)
}

// member checks the member flags: this member's peer URL is its entry in
// --etcd-cluster.
func (o etcdOptions) member() (store.Member, error) {
	if o.name == "" || o.cluster == "" {
		return store.Member{}, errors.New("--etcd-name and --etcd-cluster go together: name this server's member and list every member")
	}
	m := store.Member{Name: o.name, InitialCluster: o.cluster, ClientURL: o.clientURL, Join: o.join}
	seen := map[string]bool{}
	for _, entry := range strings.Split(o.cluster, ",") {
		name, peer, ok := strings.Cut(strings.TrimSpace(entry), "=")
		if !ok || name == "" || peer == "" {
			return store.Member{}, fmt.Errorf("--etcd-cluster: %q is not name=http://host:port", entry)
		}
		if seen[name] {
			return store.Member{}, fmt.Errorf("--etcd-cluster: member %q is listed twice", name)
		}
		seen[name] = true
		if name == o.name {
			m.PeerURL = peer
		}
	}
	if m.PeerURL == "" {
		return store.Member{}, fmt.Errorf("--etcd-name %q is not one of --etcd-cluster", o.name)
	}
	return m, nil
}

// agreeOnToken makes sure every server of a cluster accepts the same
// bootstrap token: the first records its hash, the others compare.
func agreeOnToken(ctx context.Context, st *store.Store, token, dataDir string) error {
	sum := sha256.Sum256([]byte(token))
	mine := hex.EncodeToString(sum[:])
	agreed, err := st.Agree(ctx, "token-sha256", mine)
	if err != nil {
		return err
	}
	if agreed != mine {
		return fmt.Errorf("%s/%s is not the token of this cluster's other servers: copy the token file of a running server there", dataDir, tokenFile)
	}
	return nil
}

// apiURL names a listening address as others reach it: a wildcard host
// becomes the host name.
func apiURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	p, _ := strconv.Atoi(port)
	return fmt.Sprintf("http://%s", net.JoinHostPort(host, strconv.Itoa(p)))
}
