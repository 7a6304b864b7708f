package apiserver

import (
	"context"
	"crypto/subtle"

	"berth/api"
)

// TokenRole checks a token as /v1 does (the server's own token, then the
// cache of stored tokens) and returns its role; "" for no such token or a
// wrong one. The image registry under /v2/ authenticates with it.
func (s *Server) TokenRole(ctx context.Context, token string) (string, error) {
	if s.Token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.Token)) == 1 {
		return api.RoleUser, nil
	}
	p, err := s.tokens.lookup(ctx, s.Store, "Bearer "+token)
	if err != nil || p == nil {
		return "", err
	}
	return p.role, nil
}
