#!/usr/bin/env bash
# The cost of mode=seccomp (issue 16), and of the seccomp guard that the
# default mode (mode=auto) keeps under the library, against the library
# alone (mode=preload) and against no hook, per connection, on 127.0.0.1:
#
#   one small C client (preload/test/ftclient.c, dynamically linked, so
#   that the library can hook it too) makes BENCH_CONNS sequential short
#   connections to a local echo server (connect, "ping", read it back,
#   close) and times its own loop (program start-up is not counted):
#
#   unhooked          the client alone
#   preload/direct    funtun mode=preload profile=direct: the library
#                     connects literal addresses itself after the first
#                     answer (fast path)
#   auto/direct       funtun profile=direct (the default mode): the library
#                     and the seccomp guard under it, which stops each of
#                     the library's fast-path connects and lets it go on
#   seccomp/direct    funtun mode=seccomp profile=direct: every connect
#                     stops in the kernel and the supervisor carries it out
#   preload/handoff   a profile that is not plain direct (hosts with a name
#                     nobody asks for): every connect asks the funnel, which
#                     connects the program's own socket (handoff, no relay)
#   auto/handoff      the same with the guard: the library's request to the
#                     funnel (a sendmsg on its Unix socket) stops and goes on
#   seccomp/handoff   the same profile under the supervisor
#   preload/relay     a profile whose pieces act (rewrite): a relay
#   auto/relay        the same with the guard
#   seccomp/relay     the same under the supervisor
#
# Those rows run funtun-core, the launcher in-process (its funnel and
# supervisor in the launch's own process tree, as before the per-user
# daemon). The same nine launches are also made through the front-end
# (funtun) with a per-user daemon (funtun-core daemon) that this run
# starts and keeps for the whole run, which prepares each launch: the
# front-end execs the program itself and the daemon's funnel (and, under
# mode=seccomp and the guard, its supervisor) serves it. Those rows are
# named MODE/PROFILE [daemon]; one the daemon does not serve (the program's
# parent is then funtun-core, checked once before measuring) is named
# MODE/PROFILE [fallback] and said so on stderr.
#
# and, for what the guard costs a program that talks over Unix sockets
# (a desktop program's IPC), BENCH_IPC sendmsg+recvmsg round trips on a
# socketpair in python3 (its own loop timed, start-up not counted),
# in-process:
#
#   ipc: unhooked, preload, auto (each sendmsg and recvmsg stops), seccomp
#
# It also reports funtun's CPU per connection, from a run of BENCH_CONNS
# connections less a run of one (start-up), divided by BENCH_CONNS-1:
#
#   launch   bash's time around funtun (funtun and all it reaped) minus
#            bash's time around the client inside it: the in-process
#            launcher's funnel; for a daemon row only the front-end and
#            bash's own start, which the one-connection run takes away
#   daemon   the daemon's utime+stime (its reaped children included) from
#            /proc/PID/stat, read before the run and after it (0.1 s after
#            the launch exits, so that the daemon has finished with it),
#            in ticks of getconf CLK_TCK (10 ms: 5 µs per connection at
#            2000 connections)
#   total    the two added: what funtun spent, wherever it ran
#
# The direct profile is profile=direct; handoff and relay are profile
# files (bench-handoff, bench-relay) in the run's own XDG_CONFIG_HOME. The
# daemon and every funtun run share the run's own XDG_RUNTIME_DIR and
# XDG_CONFIG_HOME (the daemon serves only a launcher that reads the
# profiles it reads); FUNTUN_PROFILE_PATH, FUNTUN_DAEMON and
# FUNTUN_NO_DAEMON of the caller are unset, so no daemon of the user's
# session serves, and in-process rows set FUNTUN_NO_DAEMON=1.
#
# Environment:
#   BENCH_CONNS     connections per run (default 2000)
#   BENCH_IPC       Unix-socket round trips per IPC run (default 5000)
#   BENCH_ROUNDS    rounds of all runs, interleaved; the table shows the median (default 5)
#   FUNTUN_BIN      the front-end (or the directory holding it), with funtun-core and
#                   libfuntun.so beside it (make build's bin/); default: all three built
#                   from the tree into the scratch directory (the tree's bin/ is left alone)
#   FUNTUN_PRELOAD  use this library instead of the one beside funtun-core
set -euo pipefail

conns=${BENCH_CONNS:-2000}
ipc=${BENCH_IPC:-5000}
rounds=${BENCH_ROUNDS:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
me=seccomp.sh
. "$(dirname "$0")/lib.sh"

need_tools cc python3 ss getconf
num BENCH_CONNS "$conns" 2 100000
num BENCH_IPC "$ipc" 1 1000000
num BENCH_ROUNDS "$rounds" 1 20

make_work /tmp/funtun-bench.XXXXXX

# The run's own daemon and profiles: a daemon or profile of the user's
# session must not serve (or shadow) what is measured.
unset FUNTUN_DAEMON FUNTUN_NO_DAEMON FUNTUN_CORE FUNTUN_PROFILE_PATH LISTEN_FDS
export XDG_RUNTIME_DIR=$work/run XDG_CONFIG_HOME=$work/cfg
mkdir -m 700 "$XDG_RUNTIME_DIR"
mkdir -p "$XDG_CONFIG_HOME/funtun/profiles"
printf '%s\n' "hosts nobody-asks.test=127.0.0.1" >"$XDG_CONFIG_HOME/funtun/profiles/bench-handoff.profile"
printf '%s\n' "rewrite from=never-in-the-data to=x" >"$XDG_CONFIG_HOME/funtun/profiles/bench-relay.profile"

if [[ -n ${FUNTUN_BIN:-} ]]; then
	front=$FUNTUN_BIN
	[[ -d $front ]] && front=$front/funtun # FUNTUN_BIN may name its directory
	[[ -x $front ]] || die "FUNTUN_BIN $front is not an executable file"
	front=$(cd "$(dirname "$front")" && pwd)/$(basename "$front")
	core=$(dirname "$front")/funtun-core
	[[ -x $core ]] || die "FUNTUN_BIN has no funtun-core beside funtun: build with make build"
	[[ -n ${FUNTUN_PRELOAD:-} || -s $(dirname "$core")/libfuntun.so ]] ||
		die "FUNTUN_BIN has no libfuntun.so beside funtun-core: build with make build, or set FUNTUN_PRELOAD"
else
	# The Makefile's recipes, into the scratch directory: a benchmark
	# leaves the tree's bin/ alone. The launcher finds the library beside
	# funtun-core.
	core=$work/funtun-core front=$work/funtun
	go_build "$core" ./cmd/funtun
	(cd "$root" && { cc -static -O2 -Wall -Wextra -o "$front" preload/launch/funtun.c 2>/dev/null ||
		cc -O2 -Wall -Wextra -o "$front" preload/launch/funtun.c; })
	[[ -n ${FUNTUN_PRELOAD:-} ]] ||
		(cd "$root" && cc -shared -fPIC -O2 -Wall -Wextra -o "$work/libfuntun.so" preload/*.c -ldl -lpthread)
fi
client=$work/ftclient
cc -O2 -Wall -Wextra -o "$client" "$root/preload/test/ftclient.c" -lpthread

next_port=25400
port_busy=listening
free_port
echo_port=$port

# 19 rows of two runs (each well under 130 s) and 4 IPC runs a round.
lifetime=$((rounds * 23 * 2 * 130 + 60))
start echo "$client" serve "$echo_port"
wait_listening "$echo_port" 100

# The per-user daemon, for the whole run: under timeout(1) in a group of
# its own (cleanup stops it); its pid is timeout's child. --quiet: a log
# line per launch would be daemon CPU charged to the rows.
start daemon "$core" --quiet daemon
daemon_group=$started
daemon=$(child_of "$daemon_group") || die "the daemon did not start: $(tail -3 "$work/daemon.log" | paste -sd ' ')"
for ((i = 0; i < 100; i++)); do
	[[ -S $XDG_RUNTIME_DIR/funtun/daemon.sock ]] && break
	kill -0 "$daemon" 2>/dev/null || break
	sleep 0.1
done
[[ -S $XDG_RUNTIME_DIR/funtun/daemon.sock ]] ||
	die "the daemon ($core daemon) made no socket $XDG_RUNTIME_DIR/funtun/daemon.sock in 10 s: $(tail -3 "$work/daemon.log" | paste -sd ' ')"
hz=$(getconf CLK_TCK)

# daemon_ticks: the daemon's CPU ticks (all its threads, and children it
# reaped); dies when it is gone, since its rows would go on through
# funtun-core unnoticed.
daemon_ticks() {
	local stat
	{ stat=$(<"/proc/$daemon/stat"); } 2>/dev/null || stat=
	stat=${stat##*) }
	# After ") ": the state is the 1st word; utime..cstime are 12..15.
	read -r state _ _ _ _ _ _ _ _ _ _ ut st cut cst _ <<<"$stat"
	if [[ -z $stat || $state == [ZX] ]]; then
		echo "$me: the daemon exited during the run; its log ends:" >&2
		tail -5 "$work/daemon.log" >&2
		exit 1
	fi
	echo $((ut + st + cut + cst))
}

results=$work/results
: >"$results"

# launch_words PROFILE: sets profile to the launcher's profile words.
launch_words() {
	case $1 in
	direct) profile=(profile=direct) ;;
	handoff) profile=(profile=bench-handoff) ;;
	relay) profile=(profile=bench-relay) ;;
	esac
}

# run MODE N: one run of N connections; prints "µs-per-connection
# launch-cpu-seconds daemon-cpu-seconds". MODE is HOOK/PROFILE (in-process:
# funtun-core) or HOOK/PROFILE/daemon (the front-end, served by the daemon).
run() {
	local mode=$1 n=$2 hook rest via=inprocess before=0 after=0 launcher
	local -a profile env_words
	hook=${mode%%/*} rest=${mode#*/}
	[[ $rest == */daemon ]] && via=daemon rest=${rest%/daemon}
	launch_words "$rest"
	if [[ $hook == unhooked ]]; then
		out=$(timeout 120 "$client" echo 127.0.0.1 "$echo_port" "$n")
		set -- $out
		[[ ${1:-} == ok ]] || { echo "$me: $mode: $out" >&2; exit 1; }
		echo "$3 0 0"
		return
	fi
	if [[ $via == daemon ]]; then
		launcher=$front env_words=()
		before=$(daemon_ticks)
	else
		launcher=$core env_words=(FUNTUN_NO_DAEMON=1)
	fi
	# bash's time: the CPU of what the timed command ran and reaped, to
	# the millisecond. The inner one times the client alone.
	local TIMEFORMAT='%3U %3S'
	out=$({ time env ${env_words[@]+"${env_words[@]}"} timeout 120 "$launcher" mode="$hook" "${profile[@]}" \
		bash -c 'TIMEFORMAT="%3U %3S"; { time "$@" 2>&3; } 3>&2 2>"$0"' "$work/inner" \
		"$client" echo 127.0.0.1 "$echo_port" "$n" 2>"$work/funtun.err"; } 2>"$work/outer")
	set -- $out
	[[ ${1:-} == ok ]] || { echo "$me: $mode: $out" >&2; cat "$work/funtun.err" >&2; exit 1; }
	local per=$3
	if [[ $via == daemon ]]; then
		# The supervisor notices the program's end after bash does.
		sleep 0.1
		after=$(daemon_ticks)
	fi
	read -r ou os <"$work/outer"
	read -r iu is <"$work/inner"
	echo "$per $(python3 -c "print($ou + $os - $iu - $is, ($after - $before) / $hz)")"
}

# served HOOK/PROFILE: whether the daemon serves the launch: the
# program's parent is then the caller (this shell), not funtun-core.
served() {
	local hook=${1%%/*} parent
	local -a profile
	launch_words "${1#*/}"
	parent=$("$front" mode="$hook" "${profile[@]}" sh -c 'cat /proc/$PPID/comm' 2>"$work/funtun.err") ||
		{ echo "$me: $1 [daemon]: the launch failed:" >&2; cat "$work/funtun.err" >&2; exit 1; }
	[[ $parent != funtun-core ]]
}

# ipc MODE: µs per sendmsg+recvmsg round trip on a socketpair.
ipc_script='import socket, sys, time
a, b = socket.socketpair()
n = int(sys.argv[1])
t = time.perf_counter()
for _ in range(n):
    a.sendmsg([b"x" * 64])
    b.recvmsg(64)
print((time.perf_counter() - t) / n * 1e6)'
ipc_run() {
	local hook=$1 out
	if [[ $hook == unhooked ]]; then
		out=$(timeout 120 python3 -c "$ipc_script" "$ipc")
	else
		out=$(FUNTUN_NO_DAEMON=1 timeout 120 "$core" mode="$hook" profile=direct python3 -c "$ipc_script" "$ipc" 2>"$work/funtun.err") ||
			{ echo "$me: ipc/$hook failed" >&2; cat "$work/funtun.err" >&2; exit 1; }
	fi
	echo "$out"
}

launches=(preload/direct auto/direct seccomp/direct preload/handoff auto/handoff seccomp/handoff preload/relay auto/relay seccomp/relay)
modes=(unhooked/- "${launches[@]}")
: >"$work/fallback"
for l in "${launches[@]}"; do
	modes+=("$l/daemon")
	if ! served "$l"; then
		echo "$me: $l [daemon]: the daemon does not serve this launch (the program's parent is funtun-core): its row is marked [fallback]" >&2
		echo "$l/daemon" >>"$work/fallback"
	fi
done
modes+=(ipc/unhooked ipc/preload ipc/auto ipc/seccomp)
echo "$me: $conns connections per run, $rounds rounds, $(nproc) CPUs; $front with a daemon, $core in-process" >&2
for ((r = 1; r <= rounds; r++)); do
	rotate "$r" "${modes[@]}"
	for mode in "${order[@]}"; do
		echo "$me: round $r: $mode" >&2
		if [[ $mode == ipc/* ]]; then
			echo "$mode $r $(ipc_run "${mode#ipc/}") 0 0 0 0" >>"$results"
			continue
		fi
		read -r per cpu dcpu < <(run "$mode" "$conns")
		read -r _ cpu1 dcpu1 < <(run "$mode" 1)
		echo "$mode $r $per $cpu $cpu1 $dcpu $dcpu1" >>"$results"
	done
done

python3 - "$results" "$conns" "$ipc" "$work/fallback" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
n = int(sys.argv[2])
ipc = int(sys.argv[3])
fallback = {l.strip() for l in open(sys.argv[4]) if l.strip()}
per, cpu, dcpu = {}, {}, {}
for mode, rnd, p, c, c1, d, d1 in rows:
    per.setdefault(mode, []).append(float(p))
    cpu.setdefault(mode, []).append((float(c) - float(c1)) / (n - 1) * 1e6)
    dcpu.setdefault(mode, []).append((float(d) - float(d1)) / (n - 1) * 1e6)
med = {m: statistics.median(v) for m, v in per.items()}
cmed = {m: statistics.median(v) for m, v in cpu.items()}
dmed = {m: statistics.median(v) for m, v in dcpu.items()}
# total: per round, then the median (the launch's and the daemon's CPU of one run belong together)
tmed = {m: statistics.median(a + b for a, b in zip(cpu[m], dcpu[m])) for m in cpu}

def name(m):
    if m.endswith("/daemon"):
        base = m[: -len("/daemon")]
        return base + (" [fallback]" if m in fallback else " [daemon]")
    return m

print(f"per connection ({n} sequential connections; µs each, median, min, max; funtun's CPU µs per connection, median: launch, daemon, total):")
launches = ["preload/direct", "auto/direct", "seccomp/direct", "preload/handoff", "auto/handoff", "seccomp/handoff", "preload/relay", "auto/relay", "seccomp/relay"]
order = ["unhooked/-"] + launches + [l + "/daemon" for l in launches]
for m in order:
    v = per[m]
    c = ""
    if m != "unhooked/-":
        d = f"{dmed[m]:8.1f}" if m.endswith("/daemon") else f"{'':>8}"
        c = f"{cmed[m]:8.1f} {d} {tmed[m]:8.1f}"
    print(f"  {name(m):<26} {med[m]:8.1f} {min(v):8.1f} {max(v):8.1f}   {c}")
u = med["unhooked/-"]

def ratios(tag, sfx):
    for p in ("direct", "handoff", "relay"):
        s, l = med["seccomp/" + p + sfx], med["preload/" + p + sfx]
        over = f"{(s - u) / (l - u):.2f}" if l > u else "-"
        cl = tmed["preload/" + p + sfx]
        cr = f"{tmed['seccomp/' + p + sfx] / cl:.2f}" if cl > 0 else "-"
        print(f"  {p:<8} seccomp / preload{tag}: {s / l:.2f} per connection, {over} in time over unhooked, {cr} in funtun CPU   (target: <= 2)")
    for p in ("direct", "handoff", "relay"):
        a, l = med["auto/" + p + sfx], med["preload/" + p + sfx]
        ca, cl = tmed["auto/" + p + sfx], tmed["preload/" + p + sfx]
        print(f"  {p:<8} auto (the guard) / preload{tag}: {a / l:.2f} per connection, {a - l:+.1f} µs, {ca - cl:+.1f} µs of funtun CPU")

print("in-process (funtun-core):")
ratios("", "")
print("served by the daemon (the front-end):")
ratios(" [daemon]", "/daemon")
for p in ("direct", "handoff", "relay"):
    s, l = med["seccomp/" + p + "/daemon"], med["preload/" + p]
    print(f"  {p:<8} seccomp [daemon] / preload [in-process]: {s / l:.2f} per connection   (target: <= 2)")
print("the daemon against in-process, the same launch:")
for m in launches:
    d = m + "/daemon"
    print(f"  {m:<18} {med[d] / med[m]:.2f} per connection, {med[d] - med[m]:+7.1f} µs, {tmed[d] - tmed[m]:+7.1f} µs of funtun CPU")
if fallback:
    print("  [fallback]: the daemon did not serve the launch; the front-end ran funtun-core")
print(f"unix-socket IPC (python3, {ipc} sendmsg+recvmsg round trips on a socketpair, in-process; µs each, median, min, max):")
for m in ("ipc/unhooked", "ipc/preload", "ipc/auto", "ipc/seccomp"):
    v = per[m]
    print(f"  {m:<18} {med[m]:8.1f} {min(v):8.1f} {max(v):8.1f}")
print(f"  auto / preload: {med['ipc/auto'] / med['ipc/preload']:.2f}")
EOF
