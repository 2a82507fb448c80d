package xfrm_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
	"github.com/tandem-net/tandem/xfrm"
)

// TestConnEmptyNamespace runs the requests against the real kernel in a
// namespace without SAs (ESP itself is not needed): the dump is accepted
// and empty, GETAE and NEWAE name the missing SA, and Follow starts,
// lists nothing and stops with its context.
func TestConnEmptyNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	l, err := lab.New(lab.Spec{Hosts: []lab.HostSpec{{Name: "x"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fd, err := unix.Open("/run/netns/"+l.Host("x").NS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c, err := xfrm.Dial(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sas, err := c.List(nil)
	if err != nil || len(sas) != 0 {
		t.Fatalf("List: %v, %v", sas, err)
	}
	id := xfrm.SAID{Dst: netip.MustParseAddr("10.1.1.1"), SPI: 0x100, Proto: 50}
	if _, err := c.GetAE(id); !errors.Is(err, xfrm.ErrNoSA) {
		t.Fatalf("GetAE of a missing SA: %v, want ErrNoSA", err)
	}
	if err := c.SetReplay(id, xfrm.Replay{Seq: 5, Window: 128, Bitmap: make([]uint32, 4)}); !errors.Is(err, xfrm.ErrNoSA) {
		t.Fatalf("SetReplay of a missing SA: %v, want ErrNoSA", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	puts := 0
	go func() {
		done <- xfrm.Follow(ctx, fd, nil, true, xfrm.Handler{Put: func(xfrm.SA) { puts++ }, Delete: func(xfrm.SAID) {}})
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil || puts != 0 {
			t.Fatalf("Follow: %v, %d puts", err, puts)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Follow did not stop with its context")
	}
}
