package api

import (
	"strings"
	"testing"
	"time"
)

func TestNewTaskID(t *testing.T) {
	now := time.Date(2026, 11, 27, 15, 0, 0, 0, time.UTC)
	a, b := NewTaskID(now), NewTaskID(now.Add(time.Millisecond))
	if !ValidTaskID(a) || !ValidTaskID(b) {
		t.Fatalf("ids %q %q do not look like task ids", a, b)
	}
	if a >= b {
		t.Errorf("id %q of a later task does not sort after %q", b, a)
	}
	if NewTaskID(now) == NewTaskID(now) {
		t.Error("two ids in the same millisecond are equal")
	}
}

func TestTaskSpecValidate(t *testing.T) {
	neg, big := Duration(-time.Second), Duration(8*24*time.Hour)
	bad := []struct {
		spec  TaskSpec
		field string
	}{
		{TaskSpec{}, "image"},
		{TaskSpec{Image: "Not An Image"}, "image"},
		{TaskSpec{Image: "berth/busybox:1", Timeout: &neg}, "timeout"},
		{TaskSpec{Image: "berth/busybox:1", Timeout: &big}, "timeout"},
		{TaskSpec{Image: "berth/busybox:1", Retries: -1}, "retries"},
		{TaskSpec{Image: "berth/busybox:1", Priority: ptr(3)}, "priority"},
		{TaskSpec{Image: "berth/busybox:1", Queue: "Media!"}, "queue"},
		{TaskSpec{Image: "berth/busybox:1", Payload: make([]byte, MaxPayload+1)}, "payload"},
		{TaskSpec{Image: "berth/busybox:1", Env: map[string]string{"BERTH_TASK_ID": "x"}}, "env.BERTH_TASK_ID"},
		{TaskSpec{Image: "berth/busybox:1", IdempotencyKey: "has space"}, "idempotency_key"},
	}
	for _, tt := range bad {
		s := tt.spec
		s.Default()
		err := s.Validate("", 0)
		fe, ok := err.(*FieldError)
		if !ok || fe.Field != tt.field {
			t.Errorf("%+v: error %v, want one naming %s", tt.spec, err, tt.field)
		}
	}
	ok := TaskSpec{Image: "berth/busybox:1", Command: []string{"sh", "-c", "exit 3"}, Payload: make([]byte, MaxPayload)}
	ok.Default()
	if err := ok.Validate("", 0); err != nil {
		t.Errorf("valid spec: %v", err)
	}
	if ok.Queue != DefaultQueue || *ok.Priority != DefaultPriority || ok.Timeout.D() != DefaultTaskTimeout {
		t.Errorf("defaults not applied: %+v", ok)
	}
}

func TestScheduleValidate(t *testing.T) {
	for _, c := range []string{"@every 2s", "0 3 * * *", "@hourly", "*/5 * * * 1-5"} {
		s := Schedule{Name: "nightly", Cron: c, Task: TaskSpec{Image: "berth/busybox:1"}}
		s.Default()
		if err := s.Validate(0); err != nil {
			t.Errorf("cron %q: %v", c, err)
		}
	}
	for _, c := range []string{"", "61 * * * *", "every day", "@every -1s", "* * * *"} {
		s := Schedule{Name: "nightly", Cron: c, Task: TaskSpec{Image: "berth/busybox:1"}}
		s.Default()
		err := s.Validate(0)
		if err == nil || !strings.Contains(err.Error(), "cron") {
			t.Errorf("cron %q: error %v, want one naming cron", c, err)
		}
	}
}
