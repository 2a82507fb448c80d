package migrate

// SetAfterAdoptDrain sets the hook adopt runs right after draining the
// ring (nil: none).
func SetAfterAdoptDrain(f func()) { afterAdoptDrain = f }
