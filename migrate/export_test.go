package migrate

// SetAfterAdoptDrain sets the hook adopt runs right after draining the
// ring (nil: none).
func SetAfterAdoptDrain(f func()) { afterAdoptDrain = f }

// SendFull is how many times the flush's sendmmsg found the egress full.
func (l *Local) SendFull() uint64 { return l.sendFull }
