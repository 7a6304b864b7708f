package main

import (
	"strings"
	"testing"
)

func TestEtcdMemberFlags(t *testing.T) {
	cluster := "s1=http://10.0.0.1:2380,s2=http://10.0.0.2:2380,s3=http://10.0.0.3:2380"
	m, err := etcdOptions{name: "s2", cluster: cluster}.member()
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "s2" || m.PeerURL != "http://10.0.0.2:2380" || m.InitialCluster != cluster {
		t.Errorf("member = %+v", m)
	}
	for _, tc := range []struct {
		o    etcdOptions
		want string
	}{
		{etcdOptions{name: "s4", cluster: cluster}, `--etcd-name "s4" is not one of --etcd-cluster`},
		{etcdOptions{name: "s1"}, "go together"},
		{etcdOptions{cluster: cluster}, "go together"},
		{etcdOptions{name: "s1", cluster: "s1=http://a:1,s1=http://b:1"}, "listed twice"},
		{etcdOptions{name: "s1", cluster: "s1"}, "not name=http://host:port"},
	} {
		if _, err := tc.o.member(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error with %q", tc.o, err, tc.want)
		}
	}
}

func TestEtcdFlagsExclusive(t *testing.T) {
	_, err := openStore(t.Context(), t.TempDir(), etcdOptions{endpoints: "http://a:2379", name: "s1"}, nil)
	if err == nil || !strings.Contains(err.Error(), "exclude each other") {
		t.Errorf("--etcd with --etcd-name: %v", err)
	}
}

func TestAPIURL(t *testing.T) {
	if got := apiURL("127.0.0.1:7070"); got != "http://127.0.0.1:7070" {
		t.Errorf("apiURL(127.0.0.1:7070) = %q", got)
	}
	if got := apiURL("[::]:7070"); strings.Contains(got, "::") || !strings.HasSuffix(got, ":7070") {
		t.Errorf("apiURL([::]:7070) = %q, want the host name", got)
	}
}

func TestAgentReserveAndLabels(t *testing.T) {
	r, err := (&agentOptions{reserveCPU: "500m", reserveMemory: "256Mi"}).reserve()
	if err != nil || r.CPU != 500 || r.Memory != 256<<20 {
		t.Errorf("reserve = %+v, %v", r, err)
	}
	if err := validLabels(map[string]string{"zone": "a", "disk": "ssd"}); err != nil {
		t.Error(err)
	}
	for _, bad := range []map[string]string{{"zone": ""}, {"": "a"}, {"zone": "a b"}, {"zo=ne": "a"}} {
		if err := validLabels(bad); err == nil {
			t.Errorf("labels %v accepted", bad)
		}
	}
}
