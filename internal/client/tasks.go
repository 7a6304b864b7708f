package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/url"

	"berth/api"
)

// TaskFilter selects tasks ("" and zero: any). A list with Active returns
// only queued, retrying and running tasks; a watch ignores State and
// Active, so that a watcher also sees tasks end.
type TaskFilter struct {
	Queue, State, Node, Schedule string
	Active                       bool
	Limit                        int // newest first; 0: the server's default (100); -1: all
}

func (f TaskFilter) query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"queue": f.Queue, "state": f.State, "node": f.Node, "schedule": f.Schedule} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.Active {
		q.Set("active", "true")
	}
	if f.Limit != 0 {
		q.Set("limit", fmt.Sprint(f.Limit))
	}
	return q
}

// SubmitTask queues one task. With an idempotency key already used, the
// server answers with the first task (200 instead of 201).
func (c *Client) SubmitTask(ctx context.Context, spec api.TaskSpec) (api.Task, error) {
	var t api.Task
	return t, c.do(ctx, "POST", "/v1/tasks", spec, &t)
}

// SubmitTasks queues many tasks in one request (at most api.MaxTaskBatch):
// all are stored, or none.
func (c *Client) SubmitTasks(ctx context.Context, specs []api.TaskSpec) (api.List[api.Task], error) {
	var l api.List[api.Task]
	return l, c.do(ctx, "POST", "/v1/tasks", specs, &l)
}

func (c *Client) ListTasks(ctx context.Context, f TaskFilter) (api.List[api.Task], error) {
	var l api.List[api.Task]
	return l, c.do(ctx, "GET", "/v1/tasks?"+f.query().Encode(), nil, &l)
}

func (c *Client) WatchTasks(ctx context.Context, f TaskFilter, rev int64) (<-chan api.WatchEvent[api.Task], <-chan error) {
	q := f.query()
	q.Del("state")
	q.Del("active")
	q.Del("limit")
	return watch[api.Task](ctx, c, "/v1/tasks", q, rev)
}

func (c *Client) GetTask(ctx context.Context, id string) (api.Task, error) {
	var t api.Task
	return t, c.do(ctx, "GET", "/v1/tasks/"+url.PathEscape(id), nil, &t)
}

// TaskPayload reads a task's payload (empty when it has none).
func (c *Client) TaskPayload(ctx context.Context, id string) ([]byte, error) {
	resp, err := c.request(ctx, "GET", "/v1/tasks/"+url.PathEscape(id)+"/payload", nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, api.MaxPayload+1))
}

// CancelTask ends a queued or retrying task at once; a running one ends
// when its agent has stopped its container. A task that has ended: 409.
func (c *Client) CancelTask(ctx context.Context, id string) (api.Task, error) {
	var t api.Task
	return t, c.do(ctx, "POST", "/v1/tasks/"+url.PathEscape(id)+"/cancel", nil, &t)
}

// TaskLogs streams an attempt's output (attempt 0: the latest). With
// follow, the stream goes on until the attempt has ended and its log is
// complete.
func (c *Client) TaskLogs(ctx context.Context, id string, attempt int, follow bool) (io.ReadCloser, error) {
	q := url.Values{}
	if attempt > 0 {
		q.Set("attempt", fmt.Sprint(attempt))
	}
	if follow {
		q.Set("follow", "true")
	}
	resp, err := c.request(ctx, "GET", "/v1/tasks/"+url.PathEscape(id)+"/logs?"+q.Encode(), nil, "")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// PutTaskLog (agent) writes an attempt's output from byte offset on: the
// server keeps what it has before offset and replaces the rest with data,
// so that a retried upload is harmless. final marks the log complete.
func (c *Client) PutTaskLog(ctx context.Context, id string, attempt int, offset int64, data []byte, final bool) error {
	q := url.Values{"offset": {fmt.Sprint(offset)}}
	if final {
		q.Set("final", "true")
	}
	resp, err := c.request(ctx, "PUT", fmt.Sprintf("/v1/tasks/%s/attempts/%d/log?%s", url.PathEscape(id), attempt, q.Encode()),
		bytes.NewReader(data), "application/octet-stream")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// ReportTasks (agent) sends reports on attempts; the answers come in the
// same order. A report on an attempt that is no longer current is not
// applied (Applied false) and its answer carries the task as it is.
func (c *Client) ReportTasks(ctx context.Context, reports []api.TaskReport) ([]api.TaskReportResult, error) {
	var out api.List[api.TaskReportResult]
	return out.Items, c.do(ctx, "POST", "/v1/tasks/reports", reports, &out)
}

// ListQueues lists every queue that has a limit set or any task active,
// with its counts.
func (c *Client) ListQueues(ctx context.Context) (api.List[api.QueueStatus], error) {
	var l api.List[api.QueueStatus]
	return l, c.do(ctx, "GET", "/v1/queues", nil, &l)
}

func (c *Client) PutQueue(ctx context.Context, q api.Queue) (api.Queue, error) {
	var out api.Queue
	return out, c.do(ctx, "PUT", "/v1/queues/"+url.PathEscape(q.Name), q, &out)
}

func (c *Client) ListSchedules(ctx context.Context) (api.List[api.Schedule], error) {
	var l api.List[api.Schedule]
	return l, c.do(ctx, "GET", "/v1/schedules", nil, &l)
}

func (c *Client) GetSchedule(ctx context.Context, name string) (api.Schedule, error) {
	var s api.Schedule
	return s, c.do(ctx, "GET", "/v1/schedules/"+url.PathEscape(name), nil, &s)
}

// PutSchedule creates or replaces a schedule; a replaced one keeps its
// last run.
func (c *Client) PutSchedule(ctx context.Context, s api.Schedule) (api.Schedule, error) {
	var out api.Schedule
	return out, c.do(ctx, "PUT", "/v1/schedules/"+url.PathEscape(s.Name), s, &out)
}

func (c *Client) DeleteSchedule(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/schedules/"+url.PathEscape(name), nil, nil)
}
