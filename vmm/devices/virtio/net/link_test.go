package net

import (
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// TestPacketFileReadErrors: ReadPacket's raw reads keep os.File.Read's
// errors: a packet reads whole; a passed deadline says
// os.ErrDeadlineExceeded; a closed peer says io.EOF instead of reading
// nothing again and again; Close ends a blocked read with os.ErrClosed.
func TestPacketFileReadErrors(t *testing.T) {
	buf := make([]byte, maxPacket)
	tests := []struct {
		name string
		act  func(t *testing.T, a, b *packetFile) // before the read of b
		want error                                // nil: the packet "hi" arrives
	}{
		{"packet", func(t *testing.T, a, _ *packetFile) {
			if err := a.WritePacket([][]byte{[]byte("h"), []byte("i")}); err != nil {
				t.Fatal(err)
			}
		}, nil},
		{"deadline", func(t *testing.T, _, b *packetFile) {
			b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		}, os.ErrDeadlineExceeded},
		{"peer closed", func(t *testing.T, a, _ *packetFile) { a.Close() }, io.EOF},
		{"closed while blocked", func(t *testing.T, _, b *packetFile) {
			time.AfterFunc(20*time.Millisecond, func() { b.Close() })
		}, os.ErrClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := socketPair(t)
			tc.act(t, a, b)
			done := make(chan struct{})
			var n int
			var err error
			go func() { n, err = b.ReadPacket(buf); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("ReadPacket did not return")
			}
			switch {
			case tc.want == nil && (err != nil || string(buf[:n]) != "hi"):
				t.Errorf("ReadPacket = %q, %v; want \"hi\"", buf[:n], err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("ReadPacket = %d, %v; want %v", n, err, tc.want)
			}
		})
	}
}
