// Package bpf holds tandem's kernel programs and their bpf2go output.
//
// The C sources are the truth; the Go types for structs shared with the
// kernel are generated from their BTF (-type), never written by hand.
// `make generate` reruns these lines with Debian's clang; CI checks that
// doing so changes nothing. (Sync names only sync_op: bpf2go emits the
// types of its *_layout variables by itself and refuses them named twice.)
package bpf

//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type vip_key -type vip_entry -type vip_counters -type stat_reason Vipgate vipgate.c
//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type chain_ctx -type chain_stat -type chain_info Chain chain.c
//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel Csumtest csumtest.c
//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type sync_op Sync sync.c
//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type sync_hdr -type synctest_val -type sync_op -type synctest_op Synctest synctest.c
//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type svc_key -type svc_val -type backend_key -type backend -type rev_val -type svc_counters -type conn_key -type conn_val -type cookie_keys -type expire_args -type backend_cfg -type backend_counters -type health_key -type health_val -type health_cmd Synproxy synproxy.c
//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type sa_key -type sa_val -type sa_put Esp esp.c
//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel Chainbench chainbench.c
//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type mig_key -type mig_loc -type ep_val -type mig_val -type sync_hdr Migrate migrate.c
//go:generate go tool bpf2go -go-package bpf -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type sa_key -type sa_val Esptrace esptrace.c
