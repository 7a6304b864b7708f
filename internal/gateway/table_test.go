package gateway

import (
	"testing"
)

func TestTableLookup(t *testing.T) {
	tab := NewTable([]AppRoutes{
		{App: "hello", Hosts: []string{"hello.localtest.me", "*.hello.test"}},
		{App: "deep", Hosts: []string{"*.api.hello.test"}},
		{App: "exact", Hosts: []string{"www.hello.test", "Mixed.Example."}},
		{App: "dup", Hosts: []string{"hello.localtest.me"}}, // taken by hello
		{App: "v6", Hosts: []string{"[::1]"}},
	})
	cases := []struct {
		host, app string
	}{
		{"hello.localtest.me", "hello"},
		{"HELLO.LocalTest.ME", "hello"},
		{"hello.localtest.me:8080", "hello"},
		{"hello.localtest.me.", "hello"},
		{"hello.localtest.me.:80", "hello"},
		{"a.hello.test", "hello"},
		{"a.b.hello.test:1234", "hello"},
		{"x.api.hello.test", "deep"}, // the longest wildcard suffix wins
		{"X.API.HELLO.TEST", "deep"}, // case-insensitive
		{"www.hello.test", "exact"},  // exact before wildcard
		{"mixed.example", "exact"},   // table hosts are normalized too
		{"[::1]:8080", "v6"},         // IPv6 literal, port stripped
		{"hello.test", ""},           // a wildcard does not match its own suffix
		{"api.hello.test", "hello"},  // "*.api.hello.test" needs a label before
		{"nothello.test", ""},        // suffix match is on a label boundary
		{"other.localtest.me", ""},
		{"", ""},
		{":8080", ""},
		{"hello.localtest.mee", ""},
		{"xhello.localtest.me", ""},
		{"a..hello.test", "hello"}, // odd but still under hello.test
		{"localtest.me", ""},
		{"[::1", ""},
		{"hello.localtest.me:", "hello"},
	}
	for _, c := range cases {
		a, ok := tab.Lookup(c.host)
		got := ""
		if ok {
			got = a.App
		}
		if got != c.app {
			t.Errorf("Lookup(%q) = %q, want %q", c.host, got, c.app)
		}
	}
	if apps := tab.Apps(); len(apps) != 5 || apps[0].App != "hello" || apps[4].App != "v6" {
		t.Fatalf("Apps() = %+v", apps)
	}
	// Apps is a copy; the table does not alias the caller's slices.
	apps := tab.Apps()
	apps[0].App = "changed"
	if a, _ := tab.Lookup("hello.localtest.me"); a.App != "hello" {
		t.Fatal("Apps() aliases the table")
	}
	in := []AppRoutes{{App: "a", Hosts: []string{"a.test"}, Upstreams: []string{"127.0.0.1:1"}}}
	tab = NewTable(in)
	in[0].Upstreams[0] = "changed"
	if a, _ := tab.Lookup("a.test"); a.Upstreams[0] != "127.0.0.1:1" {
		t.Fatal("NewTable aliases the caller's slices")
	}
}

func TestTableEmpty(t *testing.T) {
	for _, tab := range []*Table{nil, NewTable(nil), {}} {
		if _, ok := tab.Lookup("a.test"); ok {
			t.Fatal("empty table routes")
		}
		if len(tab.Apps()) != 0 {
			t.Fatal("empty table has apps")
		}
	}
}

func TestTableLookupAllocs(t *testing.T) {
	tab := NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.localtest.me", "*.hello.test"}}})
	hosts := [][]byte{[]byte("hello.localtest.me"), []byte("A.B.Hello.Test:8080"), []byte("nope.example")}
	n := testing.AllocsPerRun(100, func() {
		for _, h := range hosts {
			tab.index(h)
		}
	})
	if n != 0 {
		t.Fatalf("lookup allocates %v times", n)
	}
}

func FuzzTableLookup(f *testing.F) {
	tab := NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.localtest.me", "*.hello.test"}}})
	for _, s := range []string{"hello.localtest.me", "A.hello.test:80", "[::1]:80", "", ":", "."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		a, ok := tab.Lookup(host)
		if ok && a.App != "hello" {
			t.Fatal(a.App)
		}
	})
}
