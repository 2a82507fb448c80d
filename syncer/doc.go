// Package syncer will replicate the datapath's state to the peer host:
// drain the per-CPU dirty rings on a timer, send deltas over mutual TLS,
// resync after a reconnect, and move VIP ownership. It is the work of the
// state-sync and failover issues; nothing here runs yet.
package syncer
