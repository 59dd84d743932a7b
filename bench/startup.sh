#!/usr/bin/env bash
# Start-up cost of the launcher (issue 16), side by side with its peer:
# a program that does nothing (/bin/true) started BENCH_RUNS times each
#
#   unhooked        /bin/true
#   proxychains4    proxychains4 -q -f CONF /bin/true
#   go-floor        an empty Go program (what any Go launcher pays: the
#                   Go runtime's own start and exit), when go is on PATH
#   funtun-binary   `funtun version`: funtun's own start and exit (runtime,
#                   package initialisation), no launch
#   funtun MODE     funtun WORDS /bin/true, one row per mode in BENCH_MODES
#
# interleaved (each round starts every row once, in an order rotated from
# round to round), after BENCH_WARMUP runs of each. Every start is timed
# from posix_spawn to wait4 and charged the CPU time (user + system) wait4
# reports for it, which includes the program's. The table shows medians,
# the time each row adds to the unhooked start, and that time over
# proxychains4's (issue 16's target: at most 1.0 in every mode).
# proxychains4 only reads its configuration here: /bin/true connects
# nowhere, so no SOCKS server is started.
#
# Environment:
#   BENCH_RUNS      starts per row (default 200)
#   BENCH_WARMUP    unmeasured starts per row first (default 10)
#   BENCH_MODES     funtun modes, space separated (default "direct chain seccomp auto"):
#                     direct         profile=direct
#                     chain          chain='hosts startup.invalid=127.0.0.1' (a piece in the profile)
#                     seccomp        mode=seccomp profile=direct
#                     seccomp-chain  mode=seccomp chain='hosts …'
#                     auto           mode=auto profile=direct
#                   a mode this funtun does not know is reported and left out
#   BENCH_PROGRAM   the program started (default /bin/true; must exit 0)
#   FUNTUN_BIN      use this binary (or the directory holding it) instead of building one
#   BENCH_OTHER_BIN a second funtun binary (or its directory) measured in the same
#                   run, its rows marked [BENCH_OTHER_NAME] (default "other"): a
#                   before/after or a build-option comparison
#   FUNTUN_PRELOAD  use this library; default: libfuntun.so next to the binary,
#                   else one built from preload/ into the scratch directory
set -euo pipefail

runs=${BENCH_RUNS:-200}
warmup=${BENCH_WARMUP:-10}
modes=${BENCH_MODES:-direct chain seccomp auto}
program=${BENCH_PROGRAM:-/bin/true}
root=$(cd "$(dirname "$0")/.." && pwd)
me=startup.sh
. "$(dirname "$0")/lib.sh"

need_tools proxychains4 python3 cc
num BENCH_RUNS "$runs" 5 100000
num BENCH_WARMUP "$warmup" 0 1000
[[ -x $program ]] || die "BENCH_PROGRAM $program is not an executable file"

make_work /tmp/funtun-bench.XXXXXX

funtun_binary "$work/funtun"
[[ -d $funtun ]] && funtun=$funtun/funtun # FUNTUN_BIN may name its directory
if [[ -z ${FUNTUN_PRELOAD:-} && ! -s $(dirname "$funtun")/libfuntun.so ]]; then
	(cd "$root" && cc -shared -fPIC -O2 -Wall -Wextra -o "$work/libfuntun.so" preload/*.c -ldl -lpthread)
	export FUNTUN_PRELOAD=$work/libfuntun.so
fi
proxychains=$(proxychains_conf 9)

rows=(unhooked proxychains4)
if command -v go >/dev/null; then
	printf 'package main\n\nfunc main() {}\n' >"$work/floor.go"
	(cd "$work" && timeout 300 go build -o "$work/go-floor" floor.go) && rows+=(go-floor)
fi
rows+=(funtun-binary)

hosts_piece="hosts startup.invalid=127.0.0.1"
# cmdline ROW: prints the row's command, one word a line.
cmdline() {
	case $1 in
	unhooked) printf '%s\n' "$program" ;;
	proxychains4) printf '%s\n' proxychains4 -q -f "$proxychains" "$program" ;;
	go-floor) printf '%s\n' "$work/go-floor" ;;
	funtun-binary) printf '%s\n' "$funtun" version ;;
	direct) printf '%s\n' "$funtun" profile=direct "$program" ;;
	chain) printf '%s\n' "$funtun" chain="$hosts_piece" "$program" ;;
	seccomp) printf '%s\n' "$funtun" mode=seccomp profile=direct "$program" ;;
	seccomp-chain) printf '%s\n' "$funtun" mode=seccomp chain="$hosts_piece" "$program" ;;
	auto) printf '%s\n' "$funtun" mode=auto profile=direct "$program" ;;
	*) return 1 ;;
	esac
}

# spec NAME WORD...: a row for the Python driver, the words separated by
# the unit separator (no shell quoting between here and posix_spawn).
us=$'\037'
spec() {
	local name=$1
	shift
	(IFS=$us && printf '%s\t%s\n' "$name" "$*")
}
specs=$work/rows
: >"$specs"
for row in "${rows[@]}"; do
	mapfile -t words < <(cmdline "$row")
	spec "$row" "${words[@]}" >>"$specs"
done
# funtun_rows SUFFIX: the rows of every mode for the binary in funtun.
funtun_rows() {
	local mode
	for mode in $modes; do
		mapfile -t words < <(cmdline "$mode")
		((${#words[@]})) || die "unknown mode $mode in BENCH_MODES (direct chain seccomp seccomp-chain auto)"
		# A mode this build refuses (no mode=seccomp yet, a kernel without
		# seccomp user notification) is left out, and the reason shown.
		if ! "${words[@]}" >"$work/check.out" 2>&1; then
			echo "$me: funtun $mode$1 left out: $(head -3 "$work/check.out" | paste -sd ' ')" >&2
			continue
		fi
		spec "funtun $mode$1" "${words[@]}" >>"$specs"
	done
}
funtun_rows ""
if [[ -n ${BENCH_OTHER_BIN:-} ]]; then
	funtun=$BENCH_OTHER_BIN
	[[ -d $funtun ]] && funtun=$funtun/funtun
	[[ -x $funtun ]] || die "BENCH_OTHER_BIN $funtun is not an executable file"
	spec "funtun-binary [${BENCH_OTHER_NAME:-other}]" "$funtun" version >>"$specs"
	funtun_rows " [${BENCH_OTHER_NAME:-other}]"
fi

echo "$me: $runs starts per row after $warmup of warm-up, interleaved, $(nproc) CPUs; $program" >&2
python3 - "$specs" "$runs" "$warmup" "$work/stderr.log" <<'EOF'
import os, shutil, statistics, sys, time

specs, runs, warmup, errlog = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = []
for line in open(specs):
    name, words = line.rstrip("\n").split("\t")
    argv = words.split("\x1f")
    argv[0] = shutil.which(argv[0]) or argv[0]
    rows.append((name, argv))
# stdout to /dev/null, stderr to a log: a start that fails shows why.
actions = [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
           (os.POSIX_SPAWN_OPEN, 2, errlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)]
wall = {name: [] for name, _ in rows}
cpu = {name: [] for name, _ in rows}

def once(name, argv, keep):
    t = time.monotonic_ns()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    _, status, ru = os.wait4(pid, 0)
    took = (time.monotonic_ns() - t) / 1e6
    if status != 0:
        sys.stderr.write(f"startup.sh: {name} failed (wait status {status}):\n")
        sys.stderr.write("".join(open(errlog).readlines()[-5:]))
        sys.exit(1)
    if keep:
        wall[name].append(took)
        # wait4 reports the process and the children it waited for.
        cpu[name].append((ru.ru_utime + ru.ru_stime) * 1e3)

for r in range(warmup + runs):
    k = r % len(rows)
    for name, argv in rows[k:] + rows[:k]:
        once(name, argv, r >= warmup)

med = {n: statistics.median(v) for n, v in wall.items()}
base = med["unhooked"]
pc_added = med["proxychains4"] - base
print(f"start-up of {rows[0][1][0]}, {runs} starts per row (ms; median wall, its 10th-90th percentiles, median CPU user+sys):")
w = max(len(n) for n, _ in rows)
print(f"  {'':<{w}} {'wall':>7} {'p10':>7} {'p90':>7} {'added':>7} {'added/pc4':>9} {'CPU':>7}")
for name, _ in rows:
    v = sorted(wall[name])
    p10, p90 = v[len(v) // 10], v[(len(v) * 9) // 10]
    added = med[name] - base
    ratio = f"{added / pc_added:9.2f}" if name != "unhooked" and pc_added > 0 else f"{'':>9}"
    print(f"  {name:<{w}} {med[name]:7.2f} {p10:7.2f} {p90:7.2f} {added:+7.2f} {ratio} {statistics.median(cpu[name]):7.2f}")
print("  added/pc4: the time a row adds to the unhooked start over the time proxychains4 adds (target for funtun: <= 1.0)")
EOF
