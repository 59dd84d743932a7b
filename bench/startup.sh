#!/usr/bin/env bash
# Start-up cost of the launcher (issue 16), side by side with its peer:
# a program that does nothing (/bin/true) started BENCH_RUNS times each
#
#   unhooked              /bin/true
#   proxychains4          proxychains4 -q -f CONF /bin/true
#   go-floor              an empty Go program (what any Go launcher pays: the
#                         Go runtime's own start and exit), when go is on PATH
#   funtun-binary         `funtun-core version`: the Go binary's own start and
#                         exit (runtime, package initialisation), no launch
#   front-end fallback    `funtun version` with FUNTUN_NO_DAEMON=1: the C
#                         front-end handing over to funtun-core; against
#                         funtun-binary, what the front-end adds before that
#   funtun MODE           funtun WORDS /bin/true through the front-end, served
#                         by a per-user daemon (funtun daemon) that this run
#                         starts: no Go process in the launch (the fast path)
#   funtun MODE [no daemon]
#                         the same words with FUNTUN_NO_DAEMON=1: the
#                         front-end execs funtun-core, which launches
#                         in-process (the Go launcher)
#
# one pair of funtun rows per mode in BENCH_MODES, interleaved (each round
# starts every row once, in an order rotated from round to round), after
# BENCH_WARMUP runs of each. Every start is timed from posix_spawn to wait4
# and charged the CPU time (user + system) wait4 reports for it, which
# includes the program's. The table shows medians, the time each row adds
# to the unhooked start, and that time over proxychains4's (issue 16's
# target: at most 1.0 in every mode).
#
# The daemon's work is not in a daemon row's CPU (it is not the launch's
# child), though the row's wall time includes waiting for it. So the
# daemon's own CPU (utime + stime from /proc/PID/stat, its reaped children
# included; ticks of getconf CLK_TCK) is read after the warm-up and after
# the last start: that over the daemon-served starts in between is the
# "daemon CPU per served launch" line. It is also read before every start,
# and what it used from a daemon row's start to the next start is that
# row's: CPU+d is the row's median CPU plus that mean, per start (with
# ticks of 10 ms, good to about 0.3 ms at 200 starts a row, 1 ms at 20).
# A daemon row whose launch the daemon turns down (the front-end then
# runs funtun-core: the mode check finds out) is measured as it is, named
# funtun MODE [fallback], and not counted as served.
#
# Every funtun row, and the daemon, run with XDG_RUNTIME_DIR and
# XDG_CONFIG_HOME in the scratch directory: the daemon serves only a
# launcher that reads the profiles it reads. proxychains4 only reads its
# configuration here: /bin/true connects nowhere, so no SOCKS server is
# started.
#
# Environment:
#   BENCH_RUNS      starts per row (default 200)
#   BENCH_WARMUP    unmeasured starts per row first (default 10)
#   BENCH_MODES     funtun modes, space separated (default "direct chain seccomp auto"):
#                     direct         profile=direct
#                     chain          profile=startup-chain: a profile file
#                                    holding one piece ('hosts startup.invalid=127.0.0.1');
#                                    a file, as a chain='…' word is not on the
#                                    fast path (the front-end hands it to funtun-core)
#                     seccomp        mode=seccomp profile=direct
#                     seccomp-chain  mode=seccomp profile=startup-chain
#                     auto           mode=auto profile=direct
#                   a mode this funtun refuses is reported and left out
#   BENCH_PROGRAM   the program started (default /bin/true; must exit 0)
#   FUNTUN_BIN      the front-end (or the directory holding it), with funtun-core
#                   beside it (make build's bin/); default: both built from
#                   the tree into the scratch directory
#   BENCH_OTHER_BIN a second funtun (or its directory) measured in the same run,
#                   its rows marked [BENCH_OTHER_NAME] (default "other"): a
#                   before/after or a build-option comparison. A front-end with
#                   funtun-core beside it gets every row above, with a daemon
#                   of its own; a lone Go funtun (before the front-end) gets
#                   funtun-binary and its launch rows, no daemon.
#   FUNTUN_PRELOAD  use this library; default: libfuntun.so beside funtun-core,
#                   else one built from preload/ into the scratch directory
set -euo pipefail

runs=${BENCH_RUNS:-200}
warmup=${BENCH_WARMUP:-10}
modes=${BENCH_MODES:-direct chain seccomp auto}
program=${BENCH_PROGRAM:-/bin/true}
root=$(cd "$(dirname "$0")/.." && pwd)
me=startup.sh
. "$(dirname "$0")/lib.sh"

need_tools proxychains4 python3 cc getconf
num BENCH_RUNS "$runs" 5 100000
num BENCH_WARMUP "$warmup" 0 1000
[[ -x $program ]] || die "BENCH_PROGRAM $program is not an executable file"
for mode in $modes; do
	case $mode in
	direct | chain | seccomp | seccomp-chain | auto) ;;
	*) die "unknown mode $mode in BENCH_MODES (direct chain seccomp seccomp-chain auto)" ;;
	esac
done

make_work /tmp/funtun-bench.XXXXXX

# The run's own daemon and profiles: a daemon or profile of the user's
# session must not serve (or shadow) what is measured.
unset FUNTUN_DAEMON FUNTUN_NO_DAEMON FUNTUN_CORE FUNTUN_PROFILE_PATH LISTEN_FDS
export XDG_RUNTIME_DIR=$work/run XDG_CONFIG_HOME=$work/cfg
mkdir -m 700 "$XDG_RUNTIME_DIR"
mkdir -p "$XDG_CONFIG_HOME/funtun/profiles"
hosts_piece="hosts startup.invalid=127.0.0.1"
printf '%s\n' "$hosts_piece" >"$XDG_CONFIG_HOME/funtun/profiles/startup-chain.profile"

# split_bin PATH: sets front to PATH (or PATH/funtun when it is a
# directory) and core to the funtun-core beside it (or, installed, in
# ../lib/funtun/, where the front-end looks too), empty when there is none.
split_bin() {
	local dir
	front=$1
	[[ -d $front ]] && front=$front/funtun
	dir=$(dirname "$front")
	for core in "$dir/funtun-core" "$dir/../lib/funtun/funtun-core" ""; do
		[[ -z $core || -x $core ]] && break
	done
}
# has_library BINARY: whether BINARY finds a libfuntun.so of its own (it
# looks beside itself, then in ../lib/funtun/).
has_library() {
	local dir
	dir=$(dirname "$1")
	[[ -s $dir/libfuntun.so || -s $dir/../lib/funtun/libfuntun.so ]]
}
# core_marker CORE: makes $work/core-marker, a stand-in for funtun-core
# (FUNTUN_CORE) that leaves the file marker and runs CORE: a launch that
# leaves it went through funtun-core.
marker=$work/core-ran
core_marker() {
	printf '#!/bin/sh\n: >%q\nexec %q "$@"\n' "$marker" "$1" >"$work/core-marker"
	chmod +x "$work/core-marker"
}
# is_front_end FRONT CORE: whether FRONT is the front-end, which hands
# `funtun version` to its core; a Go funtun (bin/funtun built with go
# build, as before the front-end) prints it itself.
is_front_end() {
	core_marker "$2"
	rm -f "$marker"
	FUNTUN_CORE=$work/core-marker "$1" version >/dev/null 2>&1 && [[ -e $marker ]]
}
if [[ -n ${FUNTUN_BIN:-} ]]; then
	split_bin "$FUNTUN_BIN"
	[[ -x $front ]] || die "FUNTUN_BIN $front is not an executable file"
	[[ -n $core ]] || die "FUNTUN_BIN has no funtun-core beside funtun: build with make"
	is_front_end "$front" "$core" ||
		die "FUNTUN_BIN $front is not the front-end (it does not hand \`funtun version\` to $core): a Go funtun? build with make"
else
	# The Makefile's recipes, into the scratch directory: a benchmark
	# leaves the tree's bin/ alone.
	go_build "$work/funtun-core" ./cmd/funtun
	(cd "$root" && { cc -static -O2 -Wall -Wextra -o "$work/funtun" preload/launch/funtun.c 2>/dev/null ||
		cc -O2 -Wall -Wextra -o "$work/funtun" preload/launch/funtun.c; })
	split_bin "$work/funtun"
fi
if [[ -z ${FUNTUN_PRELOAD:-} ]] && ! has_library "$core"; then
	(cd "$root" && cc -shared -fPIC -O2 -Wall -Wextra -o "$work/libfuntun.so" preload/*.c -ldl -lpthread)
	export FUNTUN_PRELOAD=$work/libfuntun.so
fi
# A BENCH_OTHER_BIN without a library of its own runs this one (with
# FUNTUN_PRELOAD exported, every build runs that).
main_library=$(dirname "$core")/libfuntun.so
[[ -s $main_library ]] || main_library=$(dirname "$core")/../lib/funtun/libfuntun.so
proxychains=$(proxychains_conf 9)

# start_daemon CORE LABEL RUNDIR TITLE: starts CORE's daemon (with
# build_env) on RUNDIR/funtun/daemon.sock, logging to $work/daemon-LABEL.log,
# and waits (10 s at most) for its socket; adds it to the daemons file for
# the Python driver, which calls it TITLE.
daemons=$work/daemons
: >"$daemons"
start_daemon() {
	local core=$1 label=$2 run=$3 log=$work/daemon-$2.log pid i
	[[ -d $run ]] || mkdir -m 700 "$run"
	# --quiet: a log line per launch would be daemon CPU charged to it.
	env ${build_env[@]+"${build_env[@]}"} XDG_RUNTIME_DIR="$run" "$core" --quiet daemon >"$log" 2>&1 &
	pid=$!
	pids+=("$pid")
	for ((i = 0; i < 100; i++)); do
		[[ -S $run/funtun/daemon.sock ]] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	[[ -S $run/funtun/daemon.sock ]] ||
		die "the daemon ($core daemon) made no socket $run/funtun/daemon.sock in 10 s: $(tail -3 "$log" | paste -sd ' ')"
	printf '%s\t%s\t%s\t%s\n' "$label" "$pid" "$4" "$log" >>"$daemons"
}

rows=(unhooked proxychains4)
if command -v go >/dev/null; then
	printf 'package main\n\nfunc main() {}\n' >"$work/floor.go"
	(cd "$work" && timeout 300 go build -o "$work/go-floor" floor.go) && rows+=(go-floor)
fi

# mode_words MODE: prints the launcher's words for MODE, one a line.
mode_words() {
	case $1 in
	direct) printf '%s\n' profile=direct ;;
	chain) printf '%s\n' profile=startup-chain ;;
	seccomp) printf '%s\n' mode=seccomp profile=direct ;;
	seccomp-chain) printf '%s\n' mode=seccomp profile=startup-chain ;;
	auto) printf '%s\n' mode=auto profile=direct ;;
	esac
}

# A row for the Python driver is one line: NAME, the label of the daemon
# that serves its launches (empty: none), its environment on top of this
# script's (KEY=VALUE words) and its command, tab-separated, the words of
# each separated by the unit separator (no shell quoting between here and
# posix_spawn). add_row NAME DAEMON writes one from the arrays row_env and
# words.
us=$'\037'
specs=$work/rows
: >"$specs"
add_row() { (IFS=$us && printf '%s\t%s\t%s\t%s\n' "$1" "$2" "${row_env[*]}" "${words[*]}") >>"$specs"; }

row_env=()
for row in "${rows[@]}"; do
	case $row in
	unhooked) words=("$program") ;;
	proxychains4) words=(proxychains4 -q -f "$proxychains" "$program") ;;
	go-floor) words=("$work/go-floor") ;;
	esac
	add_row "$row" ""
done

# check NAME CORE: runs words with row_env once, with FUNTUN_CORE=CORE when
# CORE is set; fails, with the reason on stderr, when the launch does. A
# mode this build refuses (a kernel without seccomp user notification, a
# binary from before a mode) is then left out.
check() {
	local name=$1 core_env=()
	[[ -n $2 ]] && core_env=(FUNTUN_CORE="$2")
	if ! env ${row_env[@]+"${row_env[@]}"} ${core_env[@]+"${core_env[@]}"} "${words[@]}" >"$work/check.out" 2>&1; then
		echo "$me: $name left out: $(head -3 "$work/check.out" | paste -sd ' ')" >&2
		return 1
	fi
}

# funtun_rows LABEL TAG FRONT CORE RUNDIR: the rows of one funtun build,
# their names ending in TAG ("" or " [NAME]"), their environment starting
# with build_env: with CORE, the front-end's rows and a daemon (labelled
# LABEL) on RUNDIR; without it, FRONT is a Go funtun from before the
# front-end, whose launches are measured as they were.
funtun_rows() {
	local label=$1 tag=$2 front=$3 core=$4 run=$5 mode
	local -a mode_args
	if [[ -z $core ]]; then
		row_env=(${build_env[@]+"${build_env[@]}"})
		words=("$front" version)
		add_row "funtun-binary$tag" ""
		for mode in $modes; do
			mapfile -t mode_args < <(mode_words "$mode")
			words=("$front" "${mode_args[@]}" "$program")
			check "funtun $mode$tag" "" && add_row "funtun $mode$tag" ""
		done
		return 0
	fi
	start_daemon "$core" "$label" "$run" "daemon$tag"
	core_marker "$core"

	row_env=(${build_env[@]+"${build_env[@]}"})
	words=("$core" version)
	add_row "funtun-binary$tag" ""
	row_env=(${build_env[@]+"${build_env[@]}"} FUNTUN_NO_DAEMON=1)
	words=("$front" version)
	add_row "front-end fallback$tag" ""
	for mode in $modes; do
		mapfile -t mode_args < <(mode_words "$mode")
		words=("$front" "${mode_args[@]}" "$program")
		row_env=(${build_env[@]+"${build_env[@]}"} XDG_RUNTIME_DIR="$run")
		rm -f "$marker"
		if check "funtun $mode$tag" "$work/core-marker"; then
			if [[ -e $marker ]]; then
				echo "$me: funtun $mode$tag: the daemon does not serve this launch, so the front-end runs funtun-core: its row is marked [fallback]" >&2
				add_row "funtun $mode [fallback]$tag" ""
			else
				add_row "funtun $mode$tag" "$label"
			fi
		fi
		row_env+=(FUNTUN_NO_DAEMON=1)
		check "funtun $mode [no daemon]$tag" "" && add_row "funtun $mode [no daemon]$tag" ""
	done
}
build_env=()
funtun_rows main "" "$front" "$core" "$XDG_RUNTIME_DIR"
if [[ -n ${BENCH_OTHER_BIN:-} ]]; then
	split_bin "$BENCH_OTHER_BIN"
	[[ -x $front ]] || die "BENCH_OTHER_BIN $front is not an executable file"
	if [[ -n $core ]] && ! is_front_end "$front" "$core"; then
		echo "$me: BENCH_OTHER_BIN $front is a Go funtun, not the front-end: its $core is not measured" >&2
		core=
	fi
	if [[ -z ${FUNTUN_PRELOAD:-} ]] && ! has_library "${core:-$front}"; then
		build_env=(FUNTUN_PRELOAD="$main_library")
	fi
	funtun_rows other " [${BENCH_OTHER_NAME:-other}]" "$front" "$core" "$work/run-other"
fi

echo "$me: $runs starts per row after $warmup of warm-up, interleaved, $(nproc) CPUs; $program" >&2
python3 - "$specs" "$daemons" "$runs" "$warmup" "$work/stderr.log" "$(getconf CLK_TCK)" <<'EOF'
import os, shutil, statistics, sys, time

specs, daemons_file, runs, warmup, errlog, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
rows = []  # (name, daemon label or "", argv, environment)
for line in open(specs):
    name, daemon, env_words, words = line.rstrip("\n").split("\t")
    argv = words.split("\x1f")
    argv[0] = shutil.which(argv[0]) or argv[0]
    env = dict(os.environ)
    for kv in filter(None, env_words.split("\x1f")):
        k, v = kv.split("=", 1)
        env[k] = v
    rows.append((name, daemon, argv, env))
daemons, title, daemon_log = {}, {}, {}
for line in open(daemons_file):
    label, pid, title[label], daemon_log[label] = line.rstrip("\n").split("\t")
    daemons[label] = int(pid)

def daemon_ticks(label):
    """CPU ticks of the daemon: all its threads, and children it reaped."""
    try:
        stat = open(f"/proc/{daemons[label]}/stat").read()
        # After the ") " that ends the name, the state is the 1st word,
        # utime..cstime the 12th..15th.
        f = stat.rsplit(") ", 1)[1].split()
        if f[0] in "ZX":
            raise OSError
    except OSError:
        # Its rows would go on, through funtun-core, unnoticed.
        sys.stderr.write(f"startup.sh: the {title[label]} exited during the run; its log ends:\n")
        sys.stderr.write("".join(open(daemon_log[label]).readlines()[-5:]))
        sys.exit(1)
    return sum(int(x) for x in f[11:15])

# stdout to /dev/null, stderr to a log: a start that fails shows why.
actions = [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
           (os.POSIX_SPAWN_OPEN, 2, errlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)]
wall = {name: [] for name, *_ in rows}
cpu = {name: [] for name, *_ in rows}
served = {label: 0 for label in daemons}
# The daemon's CPU, in the interval from one start to the next, charged to
# the row started in it: its work for that launch, including what it does
# after the launch ends (a seccomp supervisor notices the end after wait4
# does). What falls in the intervals of rows it does not serve is its
# idle cost, or a launch's spill-over, and counts in the total only.
dcpu = {name: 0 for name, *_ in rows}
last, ticks = None, {}

def daemon_interval(next_row):
    global last
    for label in daemons:
        t = daemon_ticks(label)
        if last is not None and last[1] == label:
            dcpu[last[0]] += t - ticks[label]
        ticks[label] = t
    last = next_row

def once(name, daemon, argv, env, keep):
    if keep:
        daemon_interval((name, daemon))
    t = time.monotonic_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    _, status, ru = os.wait4(pid, 0)
    took = (time.monotonic_ns() - t) / 1e6
    if status != 0:
        sys.stderr.write(f"startup.sh: {name} failed (wait status {status}):\n")
        sys.stderr.write("".join(open(errlog).readlines()[-5:]))
        sys.exit(1)
    if keep:
        wall[name].append(took)
        # wait4 reports the process and the children it waited for: for a
        # daemon row, not the daemon.
        cpu[name].append((ru.ru_utime + ru.ru_stime) * 1e3)
        if daemon:
            served[daemon] += 1

ticks0 = {}
for r in range(warmup + runs):
    if r == warmup:
        ticks0 = {label: daemon_ticks(label) for label in daemons}
        ticks = dict(ticks0)
    k = r % len(rows)
    for name, daemon, argv, env in rows[k:] + rows[:k]:
        once(name, daemon, argv, env, r >= warmup)
# Let the daemon finish the last launch before the last reading.
time.sleep(0.2)
daemon_interval(None)
tick_ms = 1e3 / hz
total = {label: (ticks[label] - ticks0[label]) * tick_ms for label in daemons}

med = {n: statistics.median(v) for n, v in wall.items()}
base = med["unhooked"]
pc_added = med["proxychains4"] - base
print(f"start-up of {rows[0][2][0]}, {runs} starts per row (ms; median wall, its 10th-90th percentiles, median CPU user+sys):")
w = max(len(n) for n, *_ in rows)
print(f"  {'':<{w}} {'wall':>7} {'p10':>7} {'p90':>7} {'added':>7} {'added/pc4':>9} {'CPU':>7} {'CPU+d':>7}")
for name, daemon, *_ in rows:
    v = sorted(wall[name])
    p10, p90 = v[len(v) // 10], v[(len(v) * 9) // 10]
    added = med[name] - base
    ratio = f"{added / pc_added:9.2f}" if name != "unhooked" and pc_added > 0 else f"{'':>9}"
    c = statistics.median(cpu[name])
    cd = f"{c + dcpu[name] * tick_ms / len(v):7.2f}" if daemon else f"{'':>7}"
    print(f"  {name:<{w}} {med[name]:7.2f} {p10:7.2f} {p90:7.2f} {added:+7.2f} {ratio} {c:7.2f} {cd}")
print("  added/pc4: the time a row adds to the unhooked start over the time proxychains4 adds (target for funtun: <= 1.0)")
for label in daemons:
    name = title[label]
    if not served[label]:
        print(f"  {name}: served no measured launch")
        continue
    print(f"  {name} CPU per served launch: {total[label] / served[label]:.2f} ms ({served[label]} launches; "
          f"{total[label]:.0f} ms in all, in ticks of {tick_ms:.0f} ms)")
if daemons:
    print("  CPU: the row's processes, from wait4. A daemon row's wall time includes waiting for the daemon;")
    print("  its CPU leaves out the daemon's work, which CPU+d adds: the daemon's CPU from this row's starts to the next ones, per start")
EOF
