#!/usr/bin/env bash
# Runs every benchmark in bench/: each bench/*.sh script (this one and
# lib.sh, the scripts' helpers, aside), then the Go benchmarks of package
# bench. A failing benchmark does not stop the others; the exit status says
# whether any failed.
#
# Environment: whatever the scripts read (BENCH_SECONDS, ...; see
# bench/README.md), and
#   BENCH_SCRIPTS  run only the scripts whose names contain one of these words,
#                  space separated (e.g. "forward socks5d"); default: all
#   BENCH_GO       0: skip the Go benchmarks
#   BENCH_TIMEOUT  seconds each script or the Go benchmarks may take (default 900)
#   FUNTUN_BIN     use this binary; default: build bin/funtun once for all scripts
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
limit=${BENCH_TIMEOUT:-900}
failed=()

if [[ -z ${FUNTUN_BIN:-} ]]; then
	# make builds the front-end (bin/funtun) with the Go core beside it
	# (bin/funtun-core) and the library, which startup.sh needs together.
	timeout 600 make -C "$root" build || exit 1
	export FUNTUN_BIN=$root/bin/funtun
fi

for script in "$here"/*.sh; do
	name=$(basename "$script")
	# This one, and lib.sh, the helpers the scripts source.
	[[ $name == run-all.sh || $name == lib.sh ]] && continue
	if [[ -n ${BENCH_SCRIPTS:-} ]]; then
		wanted=0
		for word in $BENCH_SCRIPTS; do
			[[ $name == *"$word"* ]] && wanted=1
		done
		((wanted)) || continue
	fi
	echo "=== $name"
	# timeout signals the whole process group; --kill-after ends a script that
	# ignores TERM.
	timeout --kill-after=10 "$limit" bash "$script"
	rc=$?
	if [[ $rc -ne 0 ]]; then
		echo "=== $name failed (exit $rc)" >&2
		failed+=("$name")
	fi
	echo
done

if [[ ${BENCH_GO:-1} != 0 ]] && compgen -G "$here/*_test.go" >/dev/null; then
	echo "=== go test -bench ./bench/"
	if ! (cd "$root" && timeout --kill-after=10 "$limit" go test -run XXX -bench . -benchmem ./bench/); then
		echo "=== Go benchmarks failed" >&2
		failed+=("go test -bench")
	fi
fi

if ((${#failed[@]} > 0)); then
	echo "failed: ${failed[*]}" >&2
	exit 1
fi
