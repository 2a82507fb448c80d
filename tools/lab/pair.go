package lab

// GatewayPair is the failover topology the tests, the demo and the
// benchmarks share: a client segment (bridge "front" in host sw) with the
// client and both gateways, a backend segment (bridge "back") with both
// gateways and two backends, and a direct link between the gateways for
// the state sync (sync0, 10.79.9.1-2). Addresses: client 10.79.1.10,
// gateways 10.79.1.2-3 and 10.79.2.2-3, backends 10.79.2.11-12, and the
// same under fd79:1::/64 and fd79:2::/64. The backends route through
// 10.79.2.1 and fd79:2::1, addresses only the owner holds; the service
// VIPs 10.79.1.100 and fd79:1::100 are on the client's segment. The switch's ports
// to the gateways are af, bf (front) and ab, bb (back).
func GatewayPair() Spec {
	end := func(host, iface string, addrs ...string) End {
		return End{Host: host, Iface: iface, Addrs: addrs}
	}
	link := func(a, b End) LinkSpec { return LinkSpec{A: a, B: b, TxOff: true} }
	return Spec{
		Hosts: []HostSpec{
			{Name: "sw"},
			{Name: "client"},
			{Name: "gwa", Forward: true}, {Name: "gwb", Forward: true},
			{Name: "be1", Routes: []string{"default via 10.79.2.1", "::/0 via fd79:2::1"}},
			{Name: "be2", Routes: []string{"default via 10.79.2.1", "::/0 via fd79:2::1"}},
		},
		Links: []LinkSpec{
			link(end("client", "eth0", "10.79.1.10/24", "fd79:1::10/64"), end("sw", "client")),
			link(end("gwa", "eth0", "10.79.1.2/24", "fd79:1::2/64"), end("sw", "af")),
			link(end("gwb", "eth0", "10.79.1.3/24", "fd79:1::3/64"), end("sw", "bf")),
			link(end("gwa", "eth1", "10.79.2.2/24", "fd79:2::2/64"), end("sw", "ab")),
			link(end("gwb", "eth1", "10.79.2.3/24", "fd79:2::3/64"), end("sw", "bb")),
			link(end("be1", "eth0", "10.79.2.11/24", "fd79:2::11/64"), end("sw", "be1")),
			link(end("be2", "eth0", "10.79.2.12/24", "fd79:2::12/64"), end("sw", "be2")),
			{A: end("gwa", "sync0", "10.79.9.1/24"), B: end("gwb", "sync0", "10.79.9.2/24")},
		},
		Bridges: []BridgeSpec{
			{Host: "sw", Name: "front", Ports: []string{"client", "af", "bf"}},
			{Host: "sw", Name: "back", Ports: []string{"ab", "bb", "be1", "be2"}},
		},
	}
}
