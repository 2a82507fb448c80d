#!/bin/sh
# deploy/deb/build.sh VERSION OUTDIR: build tandem_VERSION_amd64.deb with
# dpkg-deb from this tree (make deb runs it). The package: the binary in
# /usr/sbin, the systemd unit, /etc/tandem/tandem.toml (a conffile: an
# upgrade never overwrites the operator's), /var/lib/tandem, and man
# pages generated from the CLI's help.
set -eu
version=$1
out=$2
cd "$(dirname "$0")/../.."
: "${GO:=go}"
date=$(git log -1 --format=%cd --date=format:%Y-%m-%d 2>/dev/null || date -u +%Y-%m-%d)
rfcdate=$(git log -1 --format=%cd --date=rfc2822 2>/dev/null || date -u -R)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"

install -d -m 755 "$root/DEBIAN" "$root/usr/sbin" "$root/lib/systemd/system" "$root/etc/tandem" \
	"$root/usr/share/man/man8" "$root/usr/share/doc/tandem"
install -d -m 700 "$root/var/lib/tandem"
# Static (no cgo): the package then depends on nothing but the kernel.
# PIE, as Debian's hardening wants (lintian's overrides say what it then
# mistakes the binary for).
CGO_ENABLED=0 $GO build -trimpath -buildmode=pie -ldflags "-s -w -X github.com/tandem-net/tandem/loader/cli.Version=$version" \
	-o "$root/usr/sbin/tandem" ./loader/cmd/tandem
chmod 755 "$root/usr/sbin/tandem"
install -m 644 deploy/tandem.service "$root/lib/systemd/system/tandem.service"
install -m 644 deploy/tandem.toml "$root/etc/tandem/tandem.toml"
$GO run ./tools/mangen -out "$root/usr/share/man/man8" -date "$date" -version "$version"
gzip -9n "$root"/usr/share/man/man8/*.8
chmod 644 "$root"/usr/share/man/man8/*
install -m 644 deploy/deb/copyright "$root/usr/share/doc/tandem/copyright"
install -d -m 755 "$root/usr/share/lintian/overrides"
install -m 644 deploy/deb/lintian-overrides "$root/usr/share/lintian/overrides/tandem"
printf 'tandem (%s) unstable; urgency=medium\n\n  * Built from the tandem tree (make deb).\n\n -- tandem maintainers <tandem@tandem-net.invalid>  %s\n' \
	"$version" "$rfcdate" | gzip -9n >"$root/usr/share/doc/tandem/changelog.gz"
chmod 644 "$root/usr/share/doc/tandem/changelog.gz"

echo /etc/tandem/tandem.toml >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: tandem
Version: $version
Architecture: amd64
Maintainer: tandem maintainers <tandem@tandem-net.invalid>
Installed-Size: $size
Section: net
Priority: optional
Description: eBPF/XDP datapath and daemon for a pair of gateway hosts
 tandem loads XDP and TC programs (a VIP gate, a zero-window SYN proxy,
 migration redirects, an ESP anti-replay filter) on a gateway host, pins
 them so they outlive the daemon, replicates the state they change to the
 peer host over mutual TLS, and moves the virtual IP between the hosts.
 .
 Needs Linux 6.1 or later. The service reads /etc/tandem/tandem.toml;
 tandem probe checks the kernel.
CONTROL
# No maintainer scripts: nothing is enabled or started at install, since
# the config names this host's interfaces and addresses first (README.md,
# "Install as a service": systemctl enable --now tandem after the edit).
mkdir -p "$out"
deb="$out/tandem_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
