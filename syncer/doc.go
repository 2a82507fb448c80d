// Package syncer replicates the datapath's state to the peer host. The
// Engine drains the per-CPU dirty rings on a timer, coalesces by entry,
// un-queues what it drained with one epoch advance, and turns each changed
// entry into a delta (a whole map when its ring overflowed); the Applier
// applies deltas on the peer in order, never moving an entry to an older
// version. Transport, resync and VIP ownership are the work of the
// state-sync and failover issues still open.
package syncer
