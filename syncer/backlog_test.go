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
	defer func(d time.Duration) { writeTimeout = d }(writeTimeout)
	writeTimeout = time.Hour // the writer waits for good here (a slow machine fills the backlog slowly)
	c1, c2 := net.Pipe()     // nobody reads c2: the writer's first write never ends
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

// TestSenderWriteTimeout: a standby that takes nothing ends the session
// after writeTimeout, and Send says so, instead of the primary waiting in
// it for good once the backlog is full.
func TestSenderWriteTimeout(t *testing.T) {
	defer func(d time.Duration) { writeTimeout = d }(writeTimeout)
	writeTimeout = 50 * time.Millisecond
	c1, c2 := net.Pipe() // nobody reads c2
	defer c2.Close()
	s := newSender(tls.Client(c1, &tls.Config{InsecureSkipVerify: true}), 1<<30)
	close(s.done)
	go s.write()
	defer s.Close()
	d := Delta{Seq: 1, Map: 1, Op: OpUpsert, Key: make([]byte, 4), Value: make([]byte, 32)}
	if err := s.Send(d); err != nil {
		t.Fatalf("first Send: %v", err)
	}
	s.Flush()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		d.Seq++
		if err := s.Send(d); err != nil {
			if s.Err() == nil {
				t.Fatalf("Send failed (%v) but Err is nil", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Send still succeeds 20 s after the writer's first write blocked: no write timeout")
		}
	}
}
