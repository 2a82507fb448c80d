package syncer

import (
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestSenderBacklogBounded: a standby that stops reading holds the
// primary's Send once maxBacklog bytes wait for the writer (what waits is
// bounded, as TCP's backpressure bounded it when Send wrote itself), and
// Close releases a Send that waits.
func TestSenderBacklogBounded(t *testing.T) {
	c1, c2 := net.Pipe() // nobody reads c2: the writer's first write never ends
	defer c2.Close()
	s := newSender(tls.Client(c1, &tls.Config{InsecureSkipVerify: true}), 1<<30)
	close(s.done) // no ack reader in this test
	go s.write()
	d := Delta{Map: 1, Op: OpUpsert, Key: make([]byte, 4), Value: make([]byte, 32)}
	frame := len(AppendDelta(nil, d))
	want := 2 * maxBacklog / frame // twice what may wait
	var sent atomic.Int64
	done := make(chan error, 1)
	go func() {
		for i := range want {
			d.Seq = uint64(i + 1)
			if err := s.Send(d); err != nil {
				done <- err
				return
			}
			sent.Add(1)
		}
		done <- nil
	}()
	// Wait until the bound is reached (or, without one, every Send is done).
	for {
		s.mu.Lock()
		over := s.backlog > maxBacklog
		s.mu.Unlock()
		if over || sent.Load() == int64(want) {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Send failed after %d deltas: %v", sent.Load(), err)
		default:
			time.Sleep(time.Millisecond)
		}
	}
	s.Close()
	<-done // Close released it (with an error or not)
	if n := sent.Load(); int(n)*frame > maxBacklog+frame {
		t.Fatalf("%d deltas (%d bytes) queued for a peer that reads nothing; want at most %d bytes", n, int(n)*frame, maxBacklog+frame)
	}
}
