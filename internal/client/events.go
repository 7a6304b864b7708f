package client

import (
	"context"
	"net/url"

	"berth/api"
)

// RecordNodeEvents records events of what an agent did on its node.
func (c *Client) RecordNodeEvents(ctx context.Context, node string, events ...api.Event) error {
	return c.do(ctx, "POST", "/v1/nodes/"+url.PathEscape(node)+"/events", events, nil)
}
