package registry

import (
	"net/http"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"berth/api"
)

// challenge is the WWW-Authenticate of a 401. Basic, because then Docker
// (and every OCI client) sends the credentials of `docker login` as they
// are, with no token server: the password is the berth token.
const challenge = `Basic realm="berth"`

// allowed checks the request's token and role, and answers it when they
// do not do: 401 (no token, a wrong one), 403 (an agent token writing),
// 503 (the token could not be checked). Errors are the distribution-spec's
// JSON ({"errors":[{"code":"UNAUTHORIZED",...}]}).
func (g *Registry) allowed(w http.ResponseWriter, r *http.Request) bool {
	// Clients look for this header even on a 401 to know a v2 registry.
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	tok := credential(r)
	if tok == "" {
		w.Header().Set("WWW-Authenticate", challenge)
		serveError(w, errcode.ErrorCodeUnauthorized.WithMessage(
			"authentication required: send a berth token as the password (docker login -u berth -p TOKEN) or as a Bearer token"))
		return false
	}
	role, err := g.authorize(r.Context(), tok)
	switch {
	case err != nil:
		g.logger.WithError(err).Error("checking a registry token")
		serveError(w, errcode.ErrorCodeUnavailable.WithMessage("checking the token: "+err.Error()))
	case role == "":
		w.Header().Set("WWW-Authenticate", challenge)
		serveError(w, errcode.ErrorCodeUnauthorized.WithMessage("wrong or removed berth token"))
	case role == api.RoleUser:
		return true
	case role == api.RoleAgent && readOnly(r.Method):
		return true
	case role == api.RoleAgent:
		serveError(w, errcode.ErrorCodeDenied.WithMessage(
			r.Method+" "+r.URL.Path+" changes the registry and needs a user token; this agent token may only pull"))
	default:
		serveError(w, errcode.ErrorCodeDenied.WithMessage("a token with role "+role+" may not use the registry"))
	}
	return false
}

// credential is the token a request carries: a Bearer token, or the
// password of Basic auth (the user name is not looked at).
func credential(r *http.Request) string {
	h := r.Header.Get("Authorization")
	scheme, rest, _ := strings.Cut(h, " ")
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		return strings.TrimSpace(rest)
	case strings.EqualFold(scheme, "Basic"):
		_, pass, _ := r.BasicAuth()
		return pass
	}
	return ""
}

// readOnly reports whether a method only reads: all an agent may do.
func readOnly(method string) bool {
	return method == http.MethodGet || method == http.MethodHead
}

func serveError(w http.ResponseWriter, err error) {
	_ = errcode.ServeJSON(w, err)
}
