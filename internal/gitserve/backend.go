package gitserve

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// backend runs `git http-backend` for one request as a CGI program (RFC
// 3875) in a process group of its own, and kills the group when the
// request ends before it does: the pusher went away or the server is
// shutting down. The group is http-backend, the receive-pack it starts
// and the hook that one starts, which would otherwise wait on a build for
// nobody. net/http/cgi kills only its direct child, and only when a write
// to the client fails, which a hook waiting on a build never causes.
func (s *Server) backend(w http.ResponseWriter, r *http.Request, dir string, env []string) {
	cmd := exec.CommandContext(r.Context(), gitPath(), "http-backend")
	cmd.Dir = dir
	cmd.Env = append(env, cgiEnv(r)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second // for pipes held open by what the group left behind
	if r.ContentLength != 0 {
		cmd.Stdin = r.Body
	}
	// git's own messages go to the pusher; keep a copy in the log.
	cmd.Stderr = logWriter{s.Log.With("path", r.URL.Path)}
	stdout, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, "start git http-backend: %v", err)
		return
	}
	defer cmd.Wait()
	defer stdout.Close()

	body := bufio.NewReaderSize(stdout, 4096)
	code, err := cgiHeader(body, w.Header())
	if err != nil {
		s.Log.Error("git http-backend", "path", r.URL.Path, "err", err)
		httpError(w, http.StatusBadGateway, "git http-backend: %v", err)
		return
	}
	w.WriteHeader(code)
	if _, err := io.Copy(flushWriter{w}, body); err != nil {
		cmd.Cancel() // the pusher went away
	}
}

// cgiHeader reads the CGI response's header into h and returns its status.
func cgiHeader(body *bufio.Reader, h http.Header) (int, error) {
	hdr, err := textproto.NewReader(body).ReadMIMEHeader()
	if err != nil {
		return 0, fmt.Errorf("reading its header: %w", err)
	}
	code := http.StatusOK
	if status := hdr.Get("Status"); status != "" {
		n, err := strconv.Atoi(strings.Fields(status + " ")[0])
		if err != nil || n < 100 || n > 599 {
			return 0, fmt.Errorf("bad status %q", status)
		}
		code = n
		hdr.Del("Status")
	}
	for k, vs := range hdr {
		h[k] = vs
	}
	return code, nil
}

// cgiEnv is the request as CGI meta-variables. The request's headers go
// as HTTP_* (git reads Git-Protocol and Content-Encoding so), except
// Authorization (the token is no business of git's) and Proxy (httpoxy).
func cgiEnv(r *http.Request) []string {
	env := []string{
		"GATEWAY_INTERFACE=CGI/1.1",
		"SERVER_PROTOCOL=" + r.Proto,
		"SERVER_SOFTWARE=berth",
		"REQUEST_METHOD=" + r.Method,
		"QUERY_STRING=" + r.URL.RawQuery,
		"REQUEST_URI=" + r.URL.RequestURI(),
		"SCRIPT_NAME=" + strings.TrimSuffix(Prefix, "/"),
		"PATH_INFO=" + strings.TrimPrefix(r.URL.Path, strings.TrimSuffix(Prefix, "/")),
	}
	if host, port, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		env = append(env, "REMOTE_ADDR="+host, "REMOTE_PORT="+port)
	}
	if r.ContentLength >= 0 {
		env = append(env, "CONTENT_LENGTH="+strconv.FormatInt(r.ContentLength, 10))
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		env = append(env, "CONTENT_TYPE="+ct)
	}
	for k, vs := range r.Header {
		switch k = strings.ToUpper(strings.ReplaceAll(k, "-", "_")); k {
		case "AUTHORIZATION", "PROXY", "CONTENT_TYPE", "CONTENT_LENGTH":
			continue
		}
		env = append(env, "HTTP_"+k+"="+strings.Join(vs, ", "))
	}
	return env
}
