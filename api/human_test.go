package api

import "testing"

func TestBytesHuman(t *testing.T) {
	for in, want := range map[Bytes]string{0: "0", 512: "512", 1536: "1.5Ki", 64 << 20: "64Mi", 24684092 << 10: "23.5Gi", 3 << 40: "3Ti"} {
		if got := in.Human(); got != want {
			t.Errorf("Bytes(%d).Human() = %q, want %q", int64(in), got, want)
		}
	}
}
