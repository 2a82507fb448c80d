#!/bin/sh
# build-tests.sh OUTDIR: compile every package's tests on the host (go test -c)
# and write OUTDIR/list, one "PACKAGE_DIR BINARY" line per package, for
# suite.sh to run inside a VM.
set -eu
out=$(realpath -m "$1")
rm -rf "$out" && mkdir -p "$out"
go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}' ./... | while read -r pkg dir; do
	[ -n "$pkg" ] || continue
	bin="$out/$(echo "$pkg" | tr / _).test"
	go test -c -o "$bin" "$pkg"
	echo "$dir $bin" >>"$out/list"
done
echo "built $(wc -l <"$out/list") test binaries into $out"
