package vip

import "fmt"

// Self is what the local host knows about itself when it decides.
type Self struct {
	Name       string
	Priority   uint8
	Generation uint64
	Owner      bool // holds the VIPs now
	Healthy    bool
	CaughtUp   bool
	Yielding   bool // handing the VIPs over (planned)
}

// Peer is the other host as last heard.
type Peer struct {
	Advert
	Alive bool // an advert arrived within the dead interval
}

// Decide says whether self should own the VIPs, and why. It is the whole
// election, free of clocks and sockets:
//
//   - an unhealthy host, or one handing over, never owns;
//   - a silent or unhealthy peer leaves the VIPs to self (the caller first
//     probes that nobody answers for them);
//   - a peer that hands over gives them to self;
//   - both owning (split brain, after a partition heals): the better of
//     the two keeps them, by priority, then generation (the later
//     primary), then name;
//   - an owner keeps them (no preemption here: a standby with preemption
//     asks, and the owner hands over without loss);
//   - nobody owning: a caught-up host before one still catching up, then
//     the better one.
func Decide(self Self, peer Peer) (own bool, why string) {
	switch {
	case !self.Healthy:
		return false, "unhealthy"
	case self.Yielding:
		return false, "handing over to " + peer.Name
	case !peer.Alive:
		return true, "peer silent"
	case !peer.Healthy:
		return true, fmt.Sprintf("peer %s unhealthy", peer.Name)
	case peer.Yield:
		return true, fmt.Sprintf("peer %s hands over", peer.Name)
	case self.Owner && peer.Owner:
		if better(self, peer.Advert) {
			return true, fmt.Sprintf("both owned: %s wins by %s", self.Name, rank(self, peer.Advert))
		}
		return false, fmt.Sprintf("both owned: %s wins by %s", peer.Name, rank(self, peer.Advert))
	case self.Owner:
		return true, "owner"
	case peer.Owner:
		return false, fmt.Sprintf("peer %s owns", peer.Name)
	case self.CaughtUp != peer.CaughtUp:
		if self.CaughtUp {
			return true, fmt.Sprintf("nobody owned; peer %s is catching up", peer.Name)
		}
		return false, "nobody owned; catching up"
	case better(self, peer.Advert):
		return true, fmt.Sprintf("nobody owned; better by %s", rank(self, peer.Advert))
	}
	return false, fmt.Sprintf("nobody owned; peer %s better by %s", peer.Name, rank(self, peer.Advert))
}

// better orders two hosts: priority, then generation, then name.
func better(self Self, peer Advert) bool {
	if self.Priority != peer.Priority {
		return self.Priority > peer.Priority
	}
	if self.Generation != peer.Generation {
		return self.Generation > peer.Generation
	}
	return self.Name > peer.Name
}

func rank(self Self, peer Advert) string {
	switch {
	case self.Priority != peer.Priority:
		return fmt.Sprintf("priority (%d vs %d)", self.Priority, peer.Priority)
	case self.Generation != peer.Generation:
		return fmt.Sprintf("generation (%d vs %d)", self.Generation, peer.Generation)
	}
	return "name"
}
