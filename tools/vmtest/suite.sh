#!/bin/sh
# suite.sh LIST: run the test binaries listed by build-tests.sh, each in its
# package directory, like go test does; print go test's verdict lines; exit
# non-zero when any failed.
set -u
fail=0
while read -r dir bin; do
	pkg=$(basename "$bin" .test)
	start=$(date +%s)
	if (cd "$dir" && "$bin" -test.v -test.count=1 -test.timeout=25m); then
		echo "ok  	$pkg	$(( $(date +%s) - start ))s (kernel $(uname -r))"
	else
		echo "FAIL	$pkg	(kernel $(uname -r))"
		fail=1
	fi
done <"$1"
exit $fail
