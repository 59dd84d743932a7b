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
# and, for what the guard costs a program that talks over Unix sockets
# (a desktop program's IPC), BENCH_IPC sendmsg+recvmsg round trips on a
# socketpair in python3 (its own loop timed, start-up not counted):
#
#   ipc: unhooked, preload, auto (each sendmsg and recvmsg stops), seccomp
#
# It also reports the funtun process's CPU per connection: bash's time
# around funtun (funtun and all it reaped) minus bash's time around the
# client inside it, over a run of BENCH_CONNS connections less a run of
# one (start-up), divided by BENCH_CONNS-1.
#
# Environment:
#   BENCH_CONNS     connections per run (default 2000)
#   BENCH_IPC       Unix-socket round trips per IPC run (default 5000)
#   BENCH_ROUNDS    rounds of all runs, interleaved; the table shows the median (default 5)
#   FUNTUN_BIN      use this binary (or its directory) instead of building bin/funtun
#   FUNTUN_PRELOAD  use this library instead of building libfuntun.so next to the binary
set -euo pipefail

conns=${BENCH_CONNS:-2000}
ipc=${BENCH_IPC:-5000}
rounds=${BENCH_ROUNDS:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
me=seccomp.sh
. "$(dirname "$0")/lib.sh"

need_tools cc python3 ss
num BENCH_CONNS "$conns" 2 100000
num BENCH_IPC "$ipc" 1 1000000
num BENCH_ROUNDS "$rounds" 1 20

make_work /tmp/funtun-bench.XXXXXX

funtun_binary "$root/bin/funtun-core"
[[ -d $funtun ]] && funtun=$funtun/funtun # FUNTUN_BIN may name its directory
if [[ -z ${FUNTUN_PRELOAD:-} ]]; then
	# The launcher looks next to its binary; build the library there.
	(cd "$root" && cc -shared -fPIC -O2 -Wall -Wextra -o "$(dirname "$funtun")/libfuntun.so" preload/*.c -ldl -lpthread)
fi
client=$work/ftclient
cc -O2 -Wall -Wextra -o "$client" "$root/preload/test/ftclient.c" -lpthread

next_port=25400
port_busy=listening
free_port
echo_port=$port

lifetime=$((rounds * 14 * 2 * 130 + 60))
start echo "$client" serve "$echo_port"
wait_listening "$echo_port" 100

results=$work/results
: >"$results"

# run MODE N: one run of N connections; prints "µs-per-connection funtun-cpu-seconds".
run() {
	local mode=$1 n=$2 hook profile pre=()
	hook=${mode%%/*} profile=${mode#*/}
	case $profile in
	direct) profile=(profile=direct) ;;
	handoff) profile=("chain=hosts nobody-asks.test=127.0.0.1") ;;
	relay) profile=("chain=rewrite from=never-in-the-data to=x") ;;
	esac
	if [[ $hook == unhooked ]]; then
		out=$(timeout 120 "$client" echo 127.0.0.1 "$echo_port" "$n")
		set -- $out
		[[ ${1:-} == ok ]] || { echo "$me: $mode: $out" >&2; exit 1; }
		echo "$3 0"
		return
	fi
	# bash's time: the CPU of what the timed command ran and reaped, to
	# the millisecond. The inner one times the client alone.
	local TIMEFORMAT='%3U %3S'
	out=$({ time timeout 120 "$funtun" mode="$hook" "${profile[@]}" \
		bash -c 'TIMEFORMAT="%3U %3S"; { time "$@" 2>&3; } 3>&2 2>"$0"' "$work/inner" \
		"$client" echo 127.0.0.1 "$echo_port" "$n" 2>"$work/funtun.err"; } 2>"$work/outer")
	set -- $out
	[[ ${1:-} == ok ]] || { echo "$me: $mode: $out" >&2; cat "$work/funtun.err" >&2; exit 1; }
	local per=$3
	read -r ou os <"$work/outer"
	read -r iu is <"$work/inner"
	echo "$per $(python3 -c "print($ou + $os - $iu - $is)")"
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
		out=$(timeout 120 "$funtun" mode="$hook" profile=direct python3 -c "$ipc_script" "$ipc" 2>"$work/funtun.err") ||
			{ echo "$me: ipc/$hook failed" >&2; cat "$work/funtun.err" >&2; exit 1; }
	fi
	echo "$out"
}

modes=(unhooked/- preload/direct auto/direct seccomp/direct preload/handoff auto/handoff seccomp/handoff preload/relay auto/relay seccomp/relay
	ipc/unhooked ipc/preload ipc/auto ipc/seccomp)
echo "$me: $conns connections per run, $rounds rounds, $(nproc) CPUs" >&2
for ((r = 1; r <= rounds; r++)); do
	rotate "$r" "${modes[@]}"
	for mode in "${order[@]}"; do
		echo "$me: round $r: $mode" >&2
		if [[ $mode == ipc/* ]]; then
			echo "$mode $r $(ipc_run "${mode#ipc/}") 0 0" >>"$results"
			continue
		fi
		read -r per cpu < <(run "$mode" "$conns")
		read -r _ cpu1 < <(run "$mode" 1)
		echo "$mode $r $per $cpu $cpu1" >>"$results"
	done
done

python3 - "$results" "$conns" "$ipc" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
n = int(sys.argv[2])
ipc = int(sys.argv[3])
per, cpu = {}, {}
for mode, rnd, p, c, c1 in rows:
    per.setdefault(mode, []).append(float(p))
    cpu.setdefault(mode, []).append((float(c) - float(c1)) / (n - 1) * 1e6)
med = {m: statistics.median(v) for m, v in per.items()}
cmed = {m: statistics.median(v) for m, v in cpu.items()}
print(f"per connection ({n} sequential connections; µs each, median, min, max; funtun's CPU µs per connection, median):")
order = ["unhooked/-", "preload/direct", "auto/direct", "seccomp/direct", "preload/handoff", "auto/handoff", "seccomp/handoff", "preload/relay", "auto/relay", "seccomp/relay"]
for m in order:
    v = per[m]
    c = "" if m == "unhooked/-" else f"{cmed[m]:8.1f}"
    print(f"  {m:<18} {med[m]:8.1f} {min(v):8.1f} {max(v):8.1f}   {c}")
u = med["unhooked/-"]
for p in ("direct", "handoff", "relay"):
    s, l = med["seccomp/" + p], med["preload/" + p]
    over = f"{(s - u) / (l - u):.2f}" if l > u else "-"
    cl = cmed["preload/" + p]
    cr = f"{cmed['seccomp/' + p] / cl:.2f}" if cl > 0 else "-"
    print(f"  {p:<8} seccomp / preload: {s / l:.2f} per connection, {over} in time over unhooked, {cr} in funtun CPU   (target: <= 2)")
for p in ("direct", "handoff", "relay"):
    a, l = med["auto/" + p], med["preload/" + p]
    ca, cl = cmed["auto/" + p], cmed["preload/" + p]
    print(f"  {p:<8} auto (the guard) / preload: {a / l:.2f} per connection, +{a - l:.1f} µs, +{ca - cl:.1f} µs of funtun CPU")
print(f"unix-socket IPC (python3, {ipc} sendmsg+recvmsg round trips on a socketpair; µs each, median, min, max):")
for m in ("ipc/unhooked", "ipc/preload", "ipc/auto", "ipc/seccomp"):
    v = per[m]
    print(f"  {m:<18} {med[m]:8.1f} {min(v):8.1f} {max(v):8.1f}")
print(f"  auto / preload: {med['ipc/auto'] / med['ipc/preload']:.2f}")
EOF
