package agent

import (
	"context"
	"errors"
	"io"

	"berth/api"
)

// InstanceLogs streams an instance's container output (apiserver.LogSource).
func (a *Agent) InstanceLogs(ctx context.Context, inst api.Instance, follow bool, tail int) (io.ReadCloser, error) {
	if inst.Status.ContainerID == "" {
		return nil, errors.New("no container yet")
	}
	return a.Runtime.Logs(ctx, inst.Status.ContainerID, follow, tail)
}
