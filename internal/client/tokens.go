package client

import (
	"context"
	"net/url"

	"berth/api"
)

// CreateToken makes a token of a role; the answer holds the token, which
// no later answer shows.
func (c *Client) CreateToken(ctx context.Context, req api.TokenRequest) (api.NewToken, error) {
	var nt api.NewToken
	return nt, c.do(ctx, "POST", "/v1/tokens", req, &nt)
}

// ListTokens lists the tokens made through the API (never the tokens themselves).
func (c *Client) ListTokens(ctx context.Context) (api.List[api.Token], error) {
	var l api.List[api.Token]
	return l, c.do(ctx, "GET", "/v1/tokens", nil, &l)
}

// DeleteToken removes a token by id.
func (c *Client) DeleteToken(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/tokens/"+url.PathEscape(id), nil, nil)
}
