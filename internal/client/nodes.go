package client

import (
	"context"
	"net/http"
	"net/url"

	"berth/api"
)

// DrainNode stops placements on a node and moves its instances away.
func (c *Client) DrainNode(ctx context.Context, name string) (api.Node, error) {
	var n api.Node
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/drain", nil, &n)
	return n, err
}

// ActivateNode undoes a drain.
func (c *Client) ActivateNode(ctx context.Context, name string) (api.Node, error) {
	var n api.Node
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/activate", nil, &n)
	return n, err
}
