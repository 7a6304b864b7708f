// Package agent is the node agent: it registers its node, watches the
// instances placed on it through the API, drives the local container
// engine to match, checks health and reports status. It is the only part
// of berth that touches containers.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"berth/api"
	"berth/internal/client"
	"berth/internal/runtime"
)

// Agent runs one node.
type Agent struct {
	Client  *client.Client
	Runtime runtime.Runtime
	Node    string
	// Address is where this node's published ports answer (and are published).
	Address string
	// Labels are the node's, for placement constraints and spread.
	Labels map[string]string
	// Reserve is held back from the engine's CPUs and memory for the host
	// and the agent itself; the rest is the node's capacity.
	Reserve api.Capacity
	Log     *slog.Logger
	// Workers bounds how many containers are created or stopped at once.
	Workers int
	// Heartbeat is how often the node reports it is alive.
	Heartbeat time.Duration
	// PullCache is host:port of this node's pull-through cache of berth's
	// registry (internal/pullcache), through which the engine pulls the
	// images that deploys pinned there; "" when there is none.
	PullCache string
	// ImageRetention: an image pulled through PullCache that no container
	// on the node has used for this long is removed (images.go); 0: never.
	ImageRetention time.Duration
	// Resync is how often every instance and container is checked again
	// (default 10s), whatever the watch and the engine's events said.
	Resync time.Duration
	// PayloadDir is where task payloads are written for their containers
	// to mount (default: <tmp>/berth-task-payloads/<cluster>-<node>). The
	// agent removes whatever it holds that no attempt uses.
	PayloadDir string

	cluster string
	queue   *workQueue
	tasks   *taskRunner
	images  imageUse

	mu     sync.Mutex
	insts  map[string]api.Instance // instances placed on this node, as the server has them
	synced bool                    // insts holds a full list
	locals map[string]*local
	relist context.CancelFunc // ends the follow's watch: it lists again

	listMu      sync.Mutex // one fresh list at a time (see listed)
	listedAt    time.Time  // when the last fresh list was asked for
	listedItems map[string]api.Instance
}

// local is what the agent knows of one instance beyond the server's record.
type local struct {
	mu          sync.Mutex // orders status reports
	status      api.Status // last status reported
	crashes     int        // consecutive short-lived runs, for the restart backoff
	nextStart   time.Time  // not restarted before
	countedExit time.Time  // FinishedAt of the last exit already counted
	probeCancel context.CancelFunc
	probeFor    string // container the prober checks
}

// Restart backoff: 1s doubling to 1m; a run of a minute forgets past crashes.
const (
	backoffMin    = time.Second
	backoffMax    = time.Minute
	stableRun     = time.Minute
	imageTimeout  = 2 * time.Minute
	drainDelay    = 300 * time.Millisecond
	resyncEvery   = 10 * time.Second
	reportTimeout = 10 * time.Second
)

// Run registers the node and converges its containers until ctx ends.
// Containers keep running when it returns.
func (a *Agent) Run(ctx context.Context) error {
	if a.Workers == 0 {
		a.Workers = 8
	}
	if a.Heartbeat == 0 {
		a.Heartbeat = 3 * time.Second
	}
	if a.Resync == 0 {
		a.Resync = resyncEvery
	}
	a.queue = newWorkQueue()
	a.insts = map[string]api.Instance{}
	a.locals = map[string]*local{}

	if err := a.register(ctx); err != nil {
		return err
	}
	a.Log.Info("agent ready", "node", a.Node, "cluster", a.cluster)

	var wg sync.WaitGroup
	run := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	run(a.heartbeat)
	run(a.follow)
	run(a.watchEngine)
	run(a.resync)
	run(a.cleanImages)
	a.tasks = a.newTaskRunner()
	run(a.tasks.run)
	for range a.Workers {
		run(a.work)
	}
	<-ctx.Done()
	a.queue.Stop()
	wg.Wait()
	return nil
}

// register learns the cluster's identity and reports the node's capacity.
func (a *Agent) register(ctx context.Context) error {
	refused := 0
	for backoff := time.Second; ; backoff = min(backoff*2, 30*time.Second) {
		err := a.registerOnce(ctx)
		if err == nil {
			return nil
		}
		// A token bound to another node, or without the agent role, stays
		// so, and one refused three times running is not just new to a
		// server's cache: retrying would only hide the mistake.
		if refused = refused + 1; !client.IsStatus(err, 401) {
			refused = 0
		}
		if client.IsStatus(err, 403) || refused >= 3 {
			return fmt.Errorf("register node %s: %w", a.Node, err)
		}
		a.Log.Warn("register node", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
	}
}

func (a *Agent) registerOnce(ctx context.Context) error {
	st, err := a.Client.Status(ctx)
	if err != nil {
		return err
	}
	if st.Cluster == "" {
		return errors.New("server reports no cluster id")
	}
	a.cluster = st.Cluster
	return a.putNode(ctx)
}

func (a *Agent) putNode(ctx context.Context) error {
	info, err := a.Runtime.Info(ctx)
	if err != nil {
		return fmt.Errorf("container engine: %w", err)
	}
	capacity := api.Capacity{CPU: api.MilliCPU(info.CPUs*1000) - a.Reserve.CPU, Memory: api.Bytes(info.MemoryBytes) - a.Reserve.Memory}
	if capacity.CPU <= 0 || capacity.Memory <= 0 {
		return fmt.Errorf("the reserve (cpu %s, memory %s) leaves nothing of the engine's %d CPUs and %s",
			a.Reserve.CPU, a.Reserve.Memory, info.CPUs, api.Bytes(info.MemoryBytes))
	}
	_, err = a.Client.PutNode(ctx, api.Node{
		Name:     a.Node,
		Address:  a.Address,
		Capacity: capacity,
		Labels:   a.Labels,
		Engine:   info.Version,
	})
	return err
}

func (a *Agent) heartbeat(ctx context.Context) {
	t := time.NewTicker(a.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c, cancel := context.WithTimeout(ctx, a.Heartbeat)
			if err := a.putNode(c); err != nil && ctx.Err() == nil {
				a.Log.Warn("heartbeat", "err", err)
			}
			cancel()
		}
	}
}

// follow keeps insts equal to the server's instances on this node; a call
// of relist makes it list again.
func (a *Agent) follow(ctx context.Context) {
	for ctx.Err() == nil {
		fctx, cancel := context.WithCancel(ctx)
		a.mu.Lock()
		a.relist = cancel
		a.mu.Unlock()
		a.followOnce(ctx, fctx)
		cancel()
	}
}

// followOnce follows until fctx ends; ctx is the agent's.
func (a *Agent) followOnce(ctx, fctx context.Context) {
	a.Client.FollowInstances(fctx, client.InstanceFilter{Node: a.Node}, func(all map[string]api.Instance, changed []string) {
		a.mu.Lock()
		prev := a.insts
		a.insts = make(map[string]api.Instance, len(all))
		for k, v := range all {
			a.insts[k] = v
		}
		first := !a.synced
		a.synced = true
		a.mu.Unlock()
		for _, name := range changed {
			// Most changes are the echo of our own status reports; they
			// need no work, and skipping them spares the engine a lookup.
			old, had := prev[name]
			cur, has := all[name]
			if first || had != has || !sameIntent(old, cur) {
				a.queue.Add(name)
			}
		}
		if first {
			a.sweep(ctx) // adopt or clean up what the engine already runs
		}
	})
}

// sameIntent reports whether two versions of an instance ask the same of
// the agent: only its status, which the agent itself reports, differs.
func sameIntent(a, b api.Instance) bool {
	return a.Node == b.Node && a.Desired == b.Desired && a.Revision == b.Revision && a.StopReason == b.StopReason
}

// watchEngine turns container events into work, reconnecting with backoff
// when the engine goes away.
func (a *Agent) watchEngine(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		events, errc := a.Runtime.Events(ctx, a.ownLabels())
		for ev := range events {
			backoff = time.Second
			if name := ev.Labels[runtime.LabelInstance]; name != "" {
				a.queue.Add(name)
			}
		}
		select {
		case err := <-errc:
			if ctx.Err() == nil {
				a.Log.Warn("engine events", "err", err, "retry_in", backoff)
			}
		default:
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
			backoff = min(backoff*2, 30*time.Second)
			a.sweep(ctx) // events may have been missed
		}
	}
}

// resync re-checks everything now and then: level-triggered, so a missed
// event only delays convergence.
func (a *Agent) resync(ctx context.Context) {
	t := time.NewTicker(a.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.sweep(ctx)
		}
	}
}

// sweep queues every instance the server places here and every container
// of this node the engine has, so strays get removed.
func (a *Agent) sweep(ctx context.Context) {
	a.mu.Lock()
	if !a.synced {
		a.mu.Unlock()
		return // never judge containers before the full list arrived
	}
	for name := range a.insts {
		a.queue.Add(name)
	}
	a.mu.Unlock()
	containers, err := a.Runtime.List(ctx, a.ownLabels())
	if err != nil {
		if ctx.Err() == nil {
			a.Log.Warn("list containers", "err", err)
		}
		return
	}
	for _, c := range containers {
		if c.Labels[runtime.LabelTask] != "" {
			continue // the task runner's
		}
		name := c.Labels[runtime.LabelInstance]
		if c.Name != containerName(a.cluster, name, a.Node) {
			a.removeStray(ctx, c)
			continue
		}
		a.queue.Add(name)
	}
}

func (a *Agent) work(ctx context.Context) {
	for {
		name, ok := a.queue.Get()
		if !ok {
			return
		}
		if err := a.reconcile(ctx, name); err != nil && ctx.Err() == nil {
			a.Log.Warn("reconcile instance", "instance", name, "err", err)
			a.queue.AddAfter(name, 2*time.Second)
		}
		a.queue.Done(name)
	}
}

func (a *Agent) ownLabels() map[string]string {
	return map[string]string{runtime.LabelCluster: a.cluster, runtime.LabelNode: a.Node}
}

func (a *Agent) localFor(name string, inst api.Instance, known bool) *local {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.locals[name]
	if l == nil {
		l = &local{}
		if known {
			l.status = inst.Status
		}
		a.locals[name] = l
	}
	return l
}

func (a *Agent) forget(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if l := a.locals[name]; l != nil {
		l.stopProbe()
		delete(a.locals, name)
	}
}

// reconcile makes the engine match one instance. The instance's container
// is found by its name, which the engine keeps unique: there is never a
// second container of a wanted instance to look for.
func (a *Agent) reconcile(ctx context.Context, name string) error {
	asked := time.Now()
	a.mu.Lock()
	inst, known := a.insts[name]
	a.mu.Unlock()
	var own *runtime.Container
	c, err := a.Runtime.Inspect(ctx, containerName(a.cluster, name, a.Node))
	switch {
	case err == nil:
		own = &c
	case !errors.Is(err, runtime.ErrNotFound):
		return fmt.Errorf("inspect container: %w", err)
	}
	if !known && own != nil {
		if inst, known, err = a.confirmUnknown(ctx, name, asked); err != nil {
			return err
		}
	}
	ours := known && inst.Node == a.Node
	if ours && (inst.Desired == api.DesiredIdle || inst.Desired == api.DesiredKeep) { // stopped, the container kept
		return a.idle(ctx, inst, a.localFor(name, inst, known), own)
	}
	wanted := ours && inst.Desired == api.DesiredRun
	if !wanted {
		var containers []runtime.Container
		if own != nil {
			containers = append(containers, *own)
		}
		return a.retire(ctx, name, inst, known, containers)
	}
	l := a.localFor(name, inst, known)
	switch {
	case own == nil:
		return a.create(ctx, inst, l)
	case own.Running:
		return a.adopt(ctx, inst, l, *own)
	default:
		return a.restart(ctx, inst, l, *own)
	}
}

// create makes and starts the instance's container.
func (a *Agent) create(ctx context.Context, inst api.Instance, l *local) error {
	if wait := time.Until(l.nextStart); wait > 0 {
		a.queue.AddAfter(inst.Name, wait)
		return nil
	}
	image, err := a.image(inst)
	if err != nil {
		return a.fail(ctx, inst, l, err.Error())
	}
	a.useImage(image) // before it is pulled: a clean-up spares it
	ictx, cancel := context.WithTimeout(ctx, imageTimeout)
	err = a.Runtime.EnsureImage(ictx, image)
	cancel()
	if err != nil {
		return a.fail(ctx, inst, l, err.Error())
	}
	spec := inst.Spec
	id, err := a.Runtime.Create(ctx, runtime.ContainerSpec{
		Name:        containerName(a.cluster, inst.Name, a.Node),
		Image:       image,
		Command:     spec.Command,
		Env:         spec.Env,
		Hostname:    inst.Name + "." + a.Node,
		Port:        spec.Port,
		HostIP:      a.Address,
		NanoCPUs:    int64(spec.Resources.CPU) * 1_000_000,
		MemoryBytes: int64(spec.Resources.Memory),
		PidsLimit:   spec.Resources.Pids,
		Init:        spec.Init == nil || *spec.Init,
		Labels:      a.containerLabels(inst),
	})
	if errors.Is(err, runtime.ErrConflict) {
		// The container exists after all (made by a worker before a crash);
		// the next pass adopts it.
		a.queue.AddAfter(inst.Name, 100*time.Millisecond)
		return nil
	}
	if err != nil {
		return a.fail(ctx, inst, l, fmt.Sprintf("create container: %v", err))
	}
	return a.start(ctx, inst, l, id)
}

// image is the reference the engine runs an instance's image by: as
// written, or, for an image that its deploy pinned in berth's registry, at
// its digest through this node's pull cache.
func (a *Agent) image(inst api.Instance) (string, error) {
	if inst.ImageDigest == "" {
		return inst.Spec.Image, nil
	}
	if a.PullCache == "" {
		return "", fmt.Errorf("image %s is in berth's registry, and this agent runs no pull cache to pull it through (--pull-cache off)", inst.Spec.Image)
	}
	return api.PinnedImage(a.PullCache, inst.Spec.Image, inst.ImageDigest), nil
}

// containerName is unique per instance and node, so the engine itself
// refuses a second container for one instance.
func containerName(cluster, instance, node string) string {
	if len(cluster) > 8 {
		cluster = cluster[:8]
	}
	return "berth-" + cluster + "-" + instance + "." + node
}

func (a *Agent) containerLabels(inst api.Instance) map[string]string {
	labels := map[string]string{}
	for k, v := range inst.Spec.Labels {
		labels[k] = v
	}
	labels[runtime.LabelCluster] = a.cluster
	labels[runtime.LabelNode] = a.Node
	labels[runtime.LabelApp] = inst.App
	labels[runtime.LabelInstance] = inst.Name
	labels[runtime.LabelRevision] = strconv.FormatInt(inst.Revision, 10)
	return labels
}

func (a *Agent) start(ctx context.Context, inst api.Instance, l *local, id string) error {
	if err := a.Runtime.Start(ctx, id); err != nil {
		return a.fail(ctx, inst, l, fmt.Sprintf("start container: %v", err))
	}
	c, err := a.Runtime.Inspect(ctx, id)
	if err != nil {
		return err
	}
	if !c.Running {
		a.queue.Add(inst.Name) // already gone again: count the exit
		return nil
	}
	st := l.current()
	st.State, st.Healthy, st.Replace = api.StateStarting, false, false
	st.ContainerID, st.Address, st.StartedAt = c.ID, a.address(c), c.StartedAt
	st.ContainerAddress = containerAddress(c, inst.Spec.Port)
	if err := a.report(ctx, inst.Name, l, st); err != nil {
		return err
	}
	a.startProbe(ctx, inst, l, c.ID, probeAddress(c, inst.Spec.Port, st.Address), false)
	return nil
}

// adopt takes over a running container: after an agent restart it keeps
// running and keeps its health; only the prober is started again.
func (a *Agent) adopt(ctx context.Context, inst api.Instance, l *local, c runtime.Container) error {
	if l.probing(c.ID) {
		return nil
	}
	st := l.current()
	wasHealthy := st.ContainerID == c.ID && st.Healthy
	if st.ContainerID != c.ID || st.Address != a.address(c) || st.ContainerAddress != containerAddress(c, inst.Spec.Port) {
		st.ContainerID, st.Address, st.StartedAt = c.ID, a.address(c), c.StartedAt
		st.ContainerAddress = containerAddress(c, inst.Spec.Port)
		st.State, st.Healthy = api.StateStarting, false
		if err := a.report(ctx, inst.Name, l, st); err != nil {
			return err
		}
	}
	a.Log.Info("adopted", "instance", inst.Name, "container", c.ID[:12], "healthy", wasHealthy)
	a.startProbe(ctx, inst, l, c.ID, probeAddress(c, inst.Spec.Port, st.Address), wasHealthy)
	return nil
}

// restart handles a stopped container: count the exit once, wait out the
// backoff, then start the same container again.
func (a *Agent) restart(ctx context.Context, inst api.Instance, l *local, c runtime.Container) error {
	l.stopProbe()
	st := l.current()
	if st.State == api.StateIdle && st.ContainerID == c.ID {
		// Woken: the stop was ours, not a crash; start at once.
		l.countedExit, l.nextStart = c.FinishedAt, time.Time{}
		return a.start(ctx, inst, l, c.ID)
	}
	exited := !c.FinishedAt.IsZero()
	alreadyCounted := !c.FinishedAt.After(l.countedExit) ||
		(l.countedExit.IsZero() && st.State == api.StateExited && st.ContainerID == c.ID)
	if exited && !alreadyCounted {
		l.countedExit = c.FinishedAt
		if c.FinishedAt.Sub(c.StartedAt) >= stableRun {
			l.crashes = 0
		}
		l.crashes++
		backoff := min(backoffMin<<(l.crashes-1), backoffMax)
		if l.crashes > 7 {
			backoff = backoffMax
		}
		l.nextStart = time.Now().Add(backoff)
		code := c.ExitCode
		st.State, st.Healthy, st.Address, st.ContainerAddress = api.StateExited, false, "", ""
		st.ExitCode, st.Restarts = &code, st.Restarts+1
		st.Error = fmt.Sprintf("exited with code %d; restarting in %s", code, backoff)
		if c.OOMKilled {
			st.Error = fmt.Sprintf("killed: out of memory (limit %s); restarting in %s", inst.Spec.Resources.Memory, backoff)
		} else if c.Error != "" {
			st.Error = c.Error
		}
		a.Log.Info("exited", "instance", inst.Name, "code", code, "restart_in", backoff)
		if err := a.report(ctx, inst.Name, l, st); err != nil {
			return err
		}
	}
	if wait := time.Until(l.nextStart); wait > 0 {
		a.queue.AddAfter(inst.Name, wait)
		return nil
	}
	return a.start(ctx, inst, l, c.ID)
}

// idle stops the instance's container and keeps it, so that a wake is a
// start and not a create.
func (a *Agent) idle(ctx context.Context, inst api.Instance, l *local, c *runtime.Container) error {
	l.stopProbe()
	st := l.current()
	if c != nil && c.Running {
		was := inst
		st.State, st.Healthy = api.StateStopping, false
		if err := a.report(ctx, inst.Name, l, st); err != nil {
			return err
		}
		if err := drain(ctx, was); err != nil {
			return err
		}
		if err := a.Runtime.Stop(ctx, c.ID, inst.Spec.StopGrace.D()); err != nil {
			return err
		}
	}
	st.State, st.Healthy, st.Address, st.ContainerAddress, st.Error = api.StateIdle, false, "", "", ""
	if c != nil {
		st.ContainerID = c.ID
	}
	return a.report(ctx, inst.Name, l, st)
}

// fail reports an instance that cannot run and retries it after a backoff.
func (a *Agent) fail(ctx context.Context, inst api.Instance, l *local, msg string) error {
	l.crashes++
	backoff := min(backoffMin<<min(l.crashes-1, 6), backoffMax)
	l.nextStart = time.Now().Add(backoff)
	st := l.current()
	st.State, st.Healthy, st.Error = api.StateFailed, false, msg
	a.Log.Warn("instance failed", "instance", inst.Name, "err", msg, "retry_in", backoff)
	a.queue.AddAfter(inst.Name, backoff)
	return a.report(ctx, inst.Name, l, st)
}

func (a *Agent) address(c runtime.Container) string {
	if c.HostPort == 0 {
		return ""
	}
	return net.JoinHostPort(a.Address, strconv.Itoa(c.HostPort))
}

// probeAddress is where health checks connect: the container itself when
// its address is known, since the engine's port proxy accepts connections
// even when nothing listens behind it.
func probeAddress(c runtime.Container, port int, published string) string {
	if addr := containerAddress(c, port); addr != "" {
		return addr
	}
	return published
}

func containerAddress(c runtime.Container, port int) string {
	if c.IP == "" || port == 0 {
		return ""
	}
	return net.JoinHostPort(c.IP, strconv.Itoa(port))
}

func (l *local) current() api.Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.status
}

// report sends a status unless it is what was last sent.
func (a *Agent) report(ctx context.Context, name string, l *local, st api.Status) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return a.reportLocked(ctx, name, l, st)
}

func (a *Agent) reportLocked(ctx context.Context, name string, l *local, st api.Status) error {
	st.Updated = l.status.Updated
	st.HealthySince = healthySince(l.status, st, time.Now().UTC())
	if statusEqual(st, l.status) {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	if err := a.Client.ReportStatus(rctx, name, st); err != nil {
		if client.IsStatus(err, 404) {
			return nil // the instance is gone; the watch will tell
		}
		return fmt.Errorf("report status of %s: %w", name, err)
	}
	l.status = st
	return nil
}

// healthySince is the HealthySince of status next, after prev: set when
// it turns healthy, kept while it stays so, cleared when it stops.
func healthySince(prev, next api.Status, now time.Time) time.Time {
	switch {
	case !next.Healthy:
		return time.Time{}
	case prev.Healthy && !prev.HealthySince.IsZero():
		return prev.HealthySince
	}
	return now
}

func statusEqual(a, b api.Status) bool {
	codeEq := (a.ExitCode == nil) == (b.ExitCode == nil) && (a.ExitCode == nil || *a.ExitCode == *b.ExitCode)
	a.ExitCode, b.ExitCode = nil, nil
	return codeEq && a.State == b.State && a.Healthy == b.Healthy && a.ContainerID == b.ContainerID &&
		a.Address == b.Address && a.ContainerAddress == b.ContainerAddress && a.Restarts == b.Restarts && a.Error == b.Error && a.Replace == b.Replace && a.EverHealthy == b.EverHealthy &&
		a.StartedAt.Equal(b.StartedAt) && a.HealthySince.Equal(b.HealthySince)
}
