package client

import (
	"context"
	"net/url"

	"berth/api"
)

// DeployOptions are what a deploy may say besides the spec.
type DeployOptions struct {
	Force  bool   // deploy a template that was reverted as bad
	Canary string // start as a canary: "10%" (weight) or "2" (instances)
}

// RolloutStatus reads an app's rollout: phase, sides, traffic.
func (c *Client) RolloutStatus(ctx context.Context, name string) (api.RolloutStatus, error) {
	var st api.RolloutStatus
	return st, c.do(ctx, "GET", "/v1/apps/"+url.PathEscape(name)+"/rollout", nil, &st)
}

// RolloutAction promotes, aborts, pauses or resumes an app's rollout
// (action: "promote", "abort", "pause", "resume").
func (c *Client) RolloutAction(ctx context.Context, name, action string) (api.App, error) {
	var a api.App
	return a, c.do(ctx, "POST", "/v1/apps/"+url.PathEscape(name)+"/rollout/"+url.PathEscape(action), nil, &a)
}

// ReportTraffic sends a gateway's per-revision counts.
func (c *Client) ReportTraffic(ctx context.Context, t api.GatewayTraffic) error {
	return c.do(ctx, "POST", "/v1/gateway/traffic", t, nil)
}
