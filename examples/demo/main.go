// Command demo is a tiny HTTP server used by berth's tests and demos.
//
// Endpoints:
//
//	GET /          "hello from <hostname> (GREETING=<$GREETING>)", plus " version=<$DEMO_VERSION>" when set;
//	               with the status $ROOT_STATUS when set (say 500: a bad release whose health check passes)
//	GET /healthz   200 "ok", or 500 "sick" once /sick was called
//	GET /sick      switches the process into sick mode (POST works too)
//	GET /crash     answers, then exits with code 3 about 50ms later
//	GET /slow?ms=N sleeps N milliseconds, then answers
//	GET /events    server-sent events: "data: 1" .. "data: n" (?n=5), every ?ms=100
//	GET /ws        WebSocket echo
//
// It listens on :$PORT (default 8080), shuts down gracefully on SIGTERM or
// SIGINT (exit code 0) and, when EXIT_AFTER (or -exit-after) is set to a
// duration, exits with code 1 after that long.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// demo holds the state shared by the handlers.
type demo struct {
	hostname string
	greeting string
	version  string
	status   int // of GET / (ROOT_STATUS; 0: 200), for canaries that fail
	sick     atomic.Bool
	exit     func(code int) // os.Exit, replaced in tests
}

func (d *demo) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		line := fmt.Sprintf("hello from %s (GREETING=%s)", d.hostname, d.greeting)
		if d.version != "" {
			line += " version=" + d.version
		}
		if d.status != 0 {
			w.WriteHeader(d.status)
		}
		fmt.Fprintln(w, line)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if d.sick.Load() {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	sick := func(w http.ResponseWriter, r *http.Request) {
		d.sick.Store(true)
		fmt.Fprintln(w, "now sick")
	}
	mux.HandleFunc("GET /sick", sick)
	mux.HandleFunc("POST /sick", sick)
	mux.HandleFunc("GET /crash", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "crashing")
		fmt.Println("crash requested, exiting with code 3")
		time.AfterFunc(50*time.Millisecond, func() { d.exit(3) })
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 {
			http.Error(w, "ms must be a non-negative integer", http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			fmt.Fprintf(w, "slept %dms\n", ms)
		case <-r.Context().Done(): // client went away
		}
	})
	mux.HandleFunc("GET /events", serverSentEvents)
	mux.HandleFunc("GET /ws", echoWebSocket)
	return mux
}

// serverSentEvents streams `data: <i>` n times (default 5), every ms
// milliseconds (default 100), flushing each event as it is written.
func serverSentEvents(w http.ResponseWriter, r *http.Request) {
	n, ms := queryInt(r, "n", 5), queryInt(r, "ms", 100)
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(w, "data: %d\n\n", i)
		flusher.Flush()
		if i == n {
			break
		}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
	}
}

// echoWebSocket sends every message back as it came.
func echoWebSocket(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer c.CloseNow()
	for {
		typ, msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, msg); err != nil {
			return
		}
	}
}

func queryInt(r *http.Request, key string, def int) int {
	if n, err := strconv.Atoi(r.URL.Query().Get(key)); err == nil && n >= 0 {
		return n
	}
	return def
}

func main() {
	var exitAfter time.Duration
	if v := os.Getenv("EXIT_AFTER"); v != "" {
		var err error
		if exitAfter, err = time.ParseDuration(v); err != nil {
			fmt.Fprintf(os.Stderr, "demo: bad EXIT_AFTER %q: %v\n", v, err)
			os.Exit(2)
		}
	}
	flag.DurationVar(&exitAfter, "exit-after", exitAfter, "exit with code 1 after this long (0: never; env EXIT_AFTER)")
	flag.Parse()

	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	hostname, _ := os.Hostname()
	d := &demo{
		hostname: hostname,
		greeting: os.Getenv("GREETING"),
		version:  os.Getenv("DEMO_VERSION"),
		status:   rootStatus(),
		exit:     os.Exit,
	}

	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: d.routes(), ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("listening on :%s\n", port)

	if exitAfter > 0 {
		time.AfterFunc(exitAfter, func() {
			fmt.Printf("EXIT_AFTER %s elapsed, exiting with code 1\n", exitAfter)
			os.Exit(1)
		})
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	case <-ctx.Done():
	}

	fmt.Println("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "demo: shutdown: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("stopped")
}

// rootStatus is ROOT_STATUS as a status code, or 0.
func rootStatus() int {
	n, err := strconv.Atoi(os.Getenv("ROOT_STATUS"))
	if err != nil || n < 100 || n > 599 {
		return 0
	}
	return n
}
