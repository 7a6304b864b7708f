package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"berth/internal/client"
	"berth/internal/gateway"
)

// startGateway runs the proxy on addr, fed from the API through cl, until
// ctx ends. It returns the proxy (for its metrics) once it listens.
func startGateway(ctx context.Context, cl *client.Client, addr, localNode string, reg prometheus.Registerer, log *slog.Logger) (*gateway.Proxy, <-chan error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway listen: %w", err)
	}
	f := &gateway.Follower{Client: cl, Log: log, LocalNode: localNode}
	p := gateway.NewProxy(f, reg, log)
	p.OnAccess(f.Touch)
	f.Proxy = p
	errc := make(chan error, 2)
	go f.Run(ctx)
	go func() { errc <- p.Serve(ln) }()
	go func() { <-ctx.Done(); _ = p.Shutdown() }()
	log.Info("gateway listening", "addr", "http://"+ln.Addr().String())
	return p, errc, nil
}

func gatewayCmd(g *globals) *cobra.Command {
	var listen, metricsAddr, servers, localNode string
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run a standalone gateway: route requests by Host to apps' healthy instances",
		Long: `Run the gateway alone, for another machine: it follows apps and instances
through the API of the server given by --server, routes requests by their
Host header to healthy instances, wakes idled apps on their next request and
reports when apps were last used. 'berth up' runs one already.

Give it a gateway token, which may do only that: 'berth token create --role
gateway' on a server, in a file named by --token-file (or in BERTH_TOKEN).`,
		Example: "  berth token create --role gateway > gateway-token\n  berth gateway --server http://10.0.0.2:7070 --token-file gateway-token --listen 0.0.0.0:8080",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if servers != "" {
				g.addr = servers // the client fails over between them
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if _, err := cl.Status(ctx); err != nil {
				return fmt.Errorf("server: %w", err)
			}
			reg := prometheus.NewRegistry()
			p, errc, err := startGateway(ctx, cl, listen, localNode, reg, log)
			if err != nil {
				return err
			}
			ms := &http.Server{Addr: metricsAddr, Handler: metricsMux(p), ReadHeaderTimeout: 10 * time.Second}
			merrc := make(chan error, 1)
			go func() {
				if err := ms.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
					merrc <- fmt.Errorf("metrics: %w", err)
				}
			}()
			log.Info("metrics listening", "addr", "http://"+metricsAddr+"/metrics")
			select {
			case <-ctx.Done():
			case err = <-errc:
			case err = <-merrc:
			}
			_ = ms.Close()
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&servers, "server", "", "berth server URL(s), comma-separated (default: --addr)")
	f.StringVar(&listen, "listen", "127.0.0.1:8080", "address the gateway serves on")
	f.StringVar(&metricsAddr, "metrics-addr", "127.0.0.1:9180", "address of /metrics")
	f.StringVar(&localNode, "node", "", "the node this gateway runs on, if any: its instances are reached at their container address")
	return cmd
}

func metricsMux(p *gateway.Proxy) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", p.MetricsHandler())
	return mux
}

func routesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "routes",
		Short: "List routes: host, app, healthy instances, idle state, last access",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			routes, err := cl.ListRoutes(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HOST\tAPP\tINSTANCES\tIDLE\tLAST ACCESS")
			for _, r := range routes.Items {
				idle := "-"
				switch {
				case r.Idle:
					idle = "idle"
				case r.IdleAfter != "":
					idle = "after " + r.IdleAfter
				}
				last := "-"
				if !r.LastAccess.IsZero() {
					last = age(r.LastAccess) + " ago"
				}
				insts := strings.Join(r.Instances, ",")
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Host, r.App, orDash(insts), idle, last)
			}
			return tw.Flush()
		},
	}
}
