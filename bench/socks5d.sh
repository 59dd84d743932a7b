#!/usr/bin/env bash
# The SOCKS5 benchmarks of issue 4: `funtun socks5d profile=direct` side by
# side with microsocks and danted (and iperf3 straight to its server), all
# on 127.0.0.1. See bench/socks5d.md for what the figures mean.
#
#   1. TCP throughput: iperf3 made to use each proxy by proxychains4.
#   2. Short connections: handshake, CONNECT, 64-byte echo, close, many
#      times over, by two clients in turn: bench/cmd/socksload, which
#      speaks SOCKS5 itself (the same Go client for every server, with no
#      proxychains overhead: a Go program cannot be hooked by proxychains,
#      which replaces libc's connect), and, as issue 4 words it,
#      bench/clients/shortc.c, a C client that knows no SOCKS5, hooked by
#      proxychains4 (table 2b). A fourth peer here, "floor", is
#      bench/floor/minsocks.c: a minimal epoll proxy in C that shows the
#      least CPU per connection any proxy needs on this machine.
#   3. Idle sessions held open: the server's RSS and descriptors per session.
#
# Environment:
#   BENCH_ONLY       which benchmarks, space separated (default "tput short idle")
#   BENCH_SECONDS    length of each iperf3 run (default 5)
#   BENCH_STREAMS    iperf3 parallel-stream counts to try (default "1")
#   BENCH_REVERSE    1: also measure server-to-client (iperf3 -R)
#   BENCH_ROUNDS     rounds of the throughput and short-connection runs,
#                    interleaved; the table shows the median (default 3)
#   BENCH_CONNS      short connections per run (default 20000)
#   BENCH_PARALLEL   short connections at a time (default 32)
#   BENCH_SESSIONS   idle sessions held (default 5000)
#   BENCH_DANTED     0: leave danted out (default 1)
#   BENCH_GENERAL    0: leave out "funtun-general", funtun with --event-loop=false,
#                    from the short-connection benchmark (default 1)
#   BENCH_FLOOR      0: leave out the floor peer of the short-connection
#                    benchmark, bench/floor/minsocks.c built with gcc (default 1)
#   BENCH_PCSHORT    0: leave out the second short-connection client,
#                    bench/clients/shortc.c built with gcc and hooked by
#                    proxychains4 (table 2b); socksload runs either way (default 1)
#   BENCH_PORT       first of the loopback ports used (default: free ones from 27000)
#   FUNTUN_BIN       use this binary instead of building ./cmd/funtun
#   BENCH_CSV        also write the raw results (one line per run) to this file
set -euo pipefail

only=${BENCH_ONLY:-tput short idle}
seconds=${BENCH_SECONDS:-5}
streams=${BENCH_STREAMS:-1}
reverse=${BENCH_REVERSE:-0}
rounds=${BENCH_ROUNDS:-3}
conns=${BENCH_CONNS:-20000}
parallel=${BENCH_PARALLEL:-32}
sessions=${BENCH_SESSIONS:-5000}
with_danted=${BENCH_DANTED:-1}
with_floor=${BENCH_FLOOR:-1}
with_general=${BENCH_GENERAL:-1}
with_pcshort=${BENCH_PCSHORT:-1}
root=$(cd "$(dirname "$0")/.." && pwd)
me=socks5d.sh
. "$(dirname "$0")/lib.sh"

need_tools iperf3 proxychains4 microsocks python3 ss go
if [[ $with_danted == 1 ]]; then
	command -v danted >/dev/null || die "needs danted (dante-server), or BENCH_DANTED=0"
fi
num BENCH_SECONDS "$seconds" 1 120
num BENCH_ROUNDS "$rounds" 1 20
num BENCH_CONNS "$conns" 1 200000
num BENCH_PARALLEL "$parallel" 1 1000
num BENCH_SESSIONS "$sessions" 1 9000
for b in $only; do
	[[ $b == tput || $b == short || $b == idle ]] || die "BENCH_ONLY: unknown benchmark $b (tput, short, idle)"
done
wants() { [[ " $only " == *" $1 "* ]]; }
[[ $with_floor == 0 || $with_floor == 1 ]] || die "BENCH_FLOOR must be 0 or 1"
[[ $with_general == 0 || $with_general == 1 ]] || die "BENCH_GENERAL must be 0 or 1"
[[ $with_pcshort == 0 || $with_pcshort == 1 ]] || die "BENCH_PCSHORT must be 0 or 1"
wants short || { with_floor=0; with_general=0; with_pcshort=0; }
if [[ $with_floor == 1 ]]; then
	command -v gcc >/dev/null || die "needs gcc for the floor peer, or BENCH_FLOOR=0"
fi
if [[ $with_pcshort == 1 ]]; then
	command -v gcc >/dev/null || die "needs gcc for the proxychains short-connection client, or BENCH_PCSHORT=0"
fi

# Each idle session costs the client, the proxy and the echo server one or
# two descriptors each.
if wants idle; then
	ulimit -n 20000 2>/dev/null || die "cannot raise the open-files limit to 20000 (ulimit -n); idle sessions need it"
fi

# Every helper runs under timeout(1) in a process group of its own (start):
# a server's CPU is its group's (group_ticks), danted's forked children
# included, and stopping the group stops those too.
make_work /tmp/funtun-socks5d-bench.XXXXXX

funtun_binary "$work/funtun"
socksload=$work/socksload
go_build "$socksload" ./bench/cmd/socksload
if [[ $with_floor == 1 ]]; then
	minsocks=$work/minsocks
	timeout 300 gcc -O2 -Wall -Wextra -o "$minsocks" "$root/bench/floor/minsocks.c"
fi
if [[ $with_pcshort == 1 ]]; then
	shortc=$work/shortc
	timeout 300 gcc -O2 -Wall -Wextra -o "$shortc" "$root/bench/clients/shortc.c"
fi

next_port=${BENCH_PORT:-27000}
port_busy=listening # free_port: ports nobody listens on

# The longest any helper may live: the whole run with slack.
lifetime=$((rounds * 4 * ($(wc -w <<<"$streams") * (reverse + 1) * (seconds + 20) + 300) + 900))

# start_server MODE PORT: sets server_group and server_pid.
start_server() {
	local mode=$1 port=$2
	case $mode in
	funtun)
		# --quiet: the one line per flow would be most of the work in
		# the short-connection run, and no peer logs that much.
		start "funtun-$port" "$funtun" --quiet socks5d --listen "127.0.0.1:$port" --max-conns 20000 profile=direct
		;;
	funtun-general)
		# The same server with its event loops off: every client on the
		# general path, a goroutine each (what profiles with pieces get).
		start "funtun-general-$port" "$funtun" --quiet socks5d --listen "127.0.0.1:$port" --max-conns 20000 --event-loop=false profile=direct
		;;
	microsocks)
		start "microsocks-$port" microsocks -i 127.0.0.1 -p "$port"
		;;
	floor)
		start "floor-$port" "$minsocks" "$port"
		;;
	danted)
		cat >"$work/danted-$port.conf" <<EOF
logoutput: stderr
internal: 127.0.0.1 port = $port
external: lo
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {
	from: 127.0.0.1/32 to: 0.0.0.0/0
}
socks pass {
	from: 0.0.0.0/0 to: 0.0.0.0/0
	command: connect
}
EOF
		start "danted-$port" danted -f "$work/danted-$port.conf"
		;;
	esac
	server_group=$started
	wait_listening "$port" || { cat "$work/$mode-$port.log" >&2; exit 1; }
	server_pid=$(child_of "$server_group") # the server itself: timeout's only child
}

# CPU ticks: group_ticks (danted forks helpers; funtun, microsocks and
# minsocks are one process).
hz=$(getconf CLK_TCK)

results=$work/results
: >"$results"
modes=(funtun microsocks)
[[ $with_danted == 1 ]] && modes+=(danted)
# The floor is a reference for the short connections only: it has none of
# a real proxy's work to do, and throughput and idle sessions need no floor.
short_modes=("${modes[@]}")
peers=${modes[*]}
if [[ $with_general == 1 ]]; then
	short_modes=(funtun funtun-general "${modes[@]:1}")
	peers+=", funtun-general (short connections only)"
fi
if [[ $with_floor == 1 ]]; then
	short_modes+=(floor)
	peers+=", floor (short connections only)"
fi
echo "$me: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), peers: $peers" >&2

# --- 1. TCP throughput -----------------------------------------------------
if wants tput; then
	free_port
	iperf_port=$port
	start iperf3 iperf3 -s -B 127.0.0.1 -p "$iperf_port"
	wait_listening "$iperf_port"
	declare -A tput_group tput_conf
	for mode in "${modes[@]}"; do
		free_port
		p=$port
		start_server "$mode" "$p"
		tput_group[$mode]=$server_group
		tput_conf[$mode]=$(proxychains_conf "$p")
	done
	dirs=up
	[[ $reverse == 1 ]] && dirs="up down"
	echo "$me: throughput: iperf3 ${seconds}s per run, streams: $streams, rounds: $rounds" >&2
	for ((r = 1; r <= rounds; r++)); do
		rotate "$r" direct "${modes[@]}"
		for n in $streams; do
			for d in $dirs; do
				for mode in "${order[@]}"; do
					flags=(-c 127.0.0.1 -p "$iperf_port" -t "$seconds" -P "$n" -J)
					[[ $d == down ]] && flags+=(-R)
					hook=()
					before=0
					if [[ $mode != direct ]]; then
						hook=(proxychains4 -q -f "${tput_conf[$mode]}")
						before=$(group_ticks "${tput_group[$mode]}")
					fi
					echo "$me: round $r: throughput $mode -P $n $d" >&2
					if ! timeout $((seconds + 20)) "${hook[@]}" iperf3 "${flags[@]}" >"$work/run.json" 2>"$work/run.err"; then
						echo "$me: iperf3 through $mode failed:" >&2
						cat "$work/run.err" "$work/run.json" >&2
						exit 1
					fi
					after=$before
					if [[ $mode != direct ]]; then
						sleep 0.3 # let danted reap its per-session children
						after=$(group_ticks "${tput_group[$mode]}")
					fi
					python3 - "$work/run.json" "$mode" "$n" "$d" "$r" $((after - before)) "$hz" >>"$results" <<'EOF'
import json, sys
path, mode, n, d, rnd, ticks, hz = sys.argv[1:]
end = json.load(open(path))["end"]
gbps = end["sum_received"]["bits_per_second"] / 1e9
gbytes = end["sum_received"]["bytes"] / 1e9
cpu = int(ticks) / int(hz)
print(f"tput {mode} {n} {d} {rnd} {gbps:.3f} {cpu:.2f} {gbytes:.3f}")
EOF
				done
			done
		done
	done
	for mode in "${modes[@]}"; do stop_group "${tput_group[$mode]}"; done
fi

# --- 2. Short connections --------------------------------------------------
# danted_oop: how often danted's log has said so far that it ran out of
# ephemeral ports (see the note under tables 2 and 2b).
danted_oop() {
	grep -c "run out of free ports" "$work/danted-${short_port[danted]}.log" || true
}
# short_result FILE TAG MODE ROUND TICKS: the result line of one run.
short_result() {
	python3 - "$@" "$hz" >>"$results" <<'PY'
import json, sys
path, tag, mode, rnd, ticks, hz = sys.argv[1:]
j = json.load(open(path))
who = mode if tag == "short" else f"{mode} (proxychains4 + shortc)"
for s in j.get("error_samples") or []:
    print(f"{who}: {s}", file=sys.stderr)
if j.get("timed_out"):
    print(f"{who}: stopped starting connections at the time limit", file=sys.stderr)
print(f"{tag} {mode} {rnd} {j['cps']:.1f} {j['p50_ms']:.3f} {j['p99_ms']:.3f} {j['errors']} {j['ok']} {int(ticks)/int(hz):.2f}")
PY
}
if wants short; then
	declare -A short_port short_target short_group pc_target pc_conf oop
	for mode in "${short_modes[@]}"; do
		# One echo server per peer: each run leaves its connections to the
		# echo port in TIME_WAIT, and the peers must not share that.
		start_echo "echo-$mode"
		short_target[$mode]=$echo_target
		free_port
		p=$port
		start_server "$mode" "$p"
		short_port[$mode]=$p short_group[$mode]=$server_group
		if [[ $with_pcshort == 1 ]]; then
			# And one more per peer for the proxychains client, so that
			# the proxy->echo side of its connections (the proxy's own
			# sockets, TIME_WAIT on the proxy's side) does not meet
			# socksload's. The client->proxy side cannot be kept apart
			# the same way: a bind() to another source address (say
			# 127.0.0.2) before connect() is lost under proxychains4,
			# which connects a socket of its own to the proxy and
			# dup2()s it over the caller's; both clients reach the
			# proxy from 127.0.0.1, and connect() reuses loopback
			# TIME_WAIT ports (tcp_tw_reuse) where it must.
			start_echo "echo-pc-$mode"
			pc_target[$mode]=$echo_target
			pc_conf[$mode]=$(proxychains_conf "$p")
		fi
	done
	clients="socksload"
	[[ $with_pcshort == 1 ]] && clients+=", then shortc under proxychains4"
	echo "$me: short connections: $conns per run, $parallel at a time, rounds: $rounds, clients: $clients" >&2
	for ((r = 1; r <= rounds; r++)); do
		rotate "$r" "${short_modes[@]}"
		for mode in "${order[@]}"; do
			echo "$me: round $r: short connections $mode" >&2
			before=$(group_ticks "${short_group[$mode]}")
			timeout 300 "$socksload" short --proxy "127.0.0.1:${short_port[$mode]}" --target "${short_target[$mode]}" \
				--conns "$conns" --parallel "$parallel" --payload 64 --max-time 240s >"$work/short.json" ||
				die "socksload short against $mode failed"
			after=$(group_ticks "${short_group[$mode]}")
			short_result "$work/short.json" short "$mode" "$r" $((after - before))
			# Let the TIME_WAIT and the servers' close-downs of this run
			# settle before the next run.
			sleep 1
			if [[ $mode == danted ]]; then
				n=$(danted_oop)
				oop[short]=$((${oop[short]:-0} + n - ${oop[seen]:-0})) oop[seen]=$n
			fi
			[[ $with_pcshort == 1 ]] || continue
			# The same load through proxychains4: shortc's connect() is
			# proxychains' connection to the peer's server, greeting and
			# CONNECT. shortc's workers are processes: proxychains' state
			# is not safe for threads (see bench/clients/shortc.c).
			echo "$me: round $r: short connections $mode, proxychains4 + shortc" >&2
			before=$(group_ticks "${short_group[$mode]}")
			timeout 300 proxychains4 -q -f "${pc_conf[$mode]}" "$shortc" -m 180 -t 10 \
				"${pc_target[$mode]%:*}" "${pc_target[$mode]##*:}" "$conns" "$parallel" >"$work/pcshort.json" ||
				die "proxychains4 shortc against $mode failed"
			after=$(group_ticks "${short_group[$mode]}")
			short_result "$work/pcshort.json" pcshort "$mode" "$r" $((after - before))
			sleep 1
			if [[ $mode == danted ]]; then
				n=$(danted_oop)
				oop[pcshort]=$((${oop[pcshort]:-0} + n - ${oop[seen]:-0})) oop[seen]=$n
			fi
		done
	done
	for mode in "${short_modes[@]}"; do stop_group "${short_group[$mode]}"; done
	if [[ $with_danted == 1 ]]; then
		# danted binds every outgoing socket to its external address before
		# connecting, so it cannot share ports with TIME_WAIT sockets the
		# way connect() does: it runs out of ephemeral ports and answers 3.
		# Counted per client, from the log lines each client's runs added.
		echo "note danted_out_of_ports short ${oop[short]:-0}" >>"$results"
		[[ $with_pcshort == 1 ]] && echo "note danted_out_of_ports pcshort ${oop[pcshort]:-0}" >>"$results"
	fi
fi

# --- 3. Idle sessions ------------------------------------------------------
if wants idle; then
	# danted spreads sessions over forked processes that share pages, so
	# one process's RSS says little; the issue compares funtun and microsocks.
	for mode in funtun microsocks; do
		start_echo "echo-idle-$mode"
		free_port
		p=$port
		start_server "$mode" "$p" # a fresh process: nothing left over from earlier runs
		sleep 1
		rss0=$(vmrss_kib "$server_pid") fd0=$(fd_kinds "$server_pid") th0=$(threads "$server_pid")
		echo "$me: idle sessions: $mode holds $sessions" >&2
		rm -f "$work/ready"
		start "idle-$mode" "$socksload" idle --proxy "127.0.0.1:$p" --target "$echo_target" \
			--sessions "$sessions" --ready "$work/ready" --hold 240s
		idle_group=$started
		idle_pid=$(child_of "$idle_group")
		wait_ready "$work/ready" "$idle_pid" 1800 || { cat "$work/idle-$mode.log" >&2; die "$mode: the sessions did not open within 180s"; }
		read -r opened _ <"$work/ready"
		# Settle: the last sessions' first bytes are still being relayed.
		sleep 2
		rss1=$(vmrss_kib "$server_pid") fd1=$(fd_kinds "$server_pid") th1=$(threads "$server_pid")
		kill -USR1 "$idle_pid"
		wait_gone "$idle_pid" 600
		wait "$idle_group" 2>/dev/null || true
		python3 - "$work/idle-$mode.log" "$mode" "$sessions" "$opened" "$rss0" "$rss1" "$fd0" "$fd1" "$th0" "$th1" >>"$results" <<'EOF'
import json, sys
path, mode, sessions, opened, rss0, rss1, fd0, fd1, th0, th1 = sys.argv[1:]
j = json.loads([l for l in open(path) if l.startswith("{")][-1])
for s in j.get("error_samples") or []:
    print(f"{mode}: {s}", file=sys.stderr)
n = max(int(opened), 1)
s0, p0, o0 = map(int, fd0.split())
s1, p1, o1 = map(int, fd1.split())
fds = (s1 + p1 + o1 - s0 - p0 - o0) / n
print(f"idle {mode} {sessions} {opened} {j['alive_after_hold']} {rss0} {rss1} {(int(rss1)-int(rss0))/n:.2f} {fds:.3f} {(s1-s0)/n:.3f} {p1-p0} {o1-o0} {th0} {th1}")
EOF
		stop_group "$server_group"
		stop_group "$echo_group"
	done
fi

[[ -n ${BENCH_CSV:-} ]] && cp "$results" "$BENCH_CSV"

python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = lambda xs: statistics.median(xs) if xs else float("nan")
def ratio(a, b):
    return a / b if b else float("nan")
def verdict(ok):
    return "MET" if ok else "MISSED"

tput = {}
for _, mode, n, d, rnd, gbps, cpu, gbytes in (r for r in rows if r[0] == "tput"):
    tput.setdefault((int(n), d), {}).setdefault(mode, []).append((float(gbps), float(cpu), float(gbytes)))
if tput:
    print("\n1. TCP throughput: iperf3 through proxychains4 (median of rounds)")
    print(f"{'streams':>7} {'dir':>4} {'peer':>10} {'Gbit/s':>7} {'min':>6} {'max':>6} {'proxy CPU s/GB':>14} {'x direct':>8}")
    for (n, d), m in sorted(tput.items()):
        direct = med([x[0] for x in m.get("direct", [])])
        for mode in ("direct", "funtun", "microsocks", "danted"):
            if mode not in m:
                continue
            g = [x[0] for x in m[mode]]
            per = "-" if mode == "direct" else f"{med([x[1] / x[2] for x in m[mode] if x[2] > 0]):.3f}"
            print(f"{n:>7} {d:>4} {mode:>10} {med(g):>7.2f} {min(g):>6.2f} {max(g):>6.2f} {per:>14} {ratio(med(g), direct):>8.2f}")
        f = med([x[0] for x in m.get("funtun", [])])
        line = f"{'':>12} funtun/direct {ratio(f, direct):.2f} (target >= 0.85: {verdict(ratio(f, direct) >= 0.85)})"
        for peer in ("microsocks", "danted"):
            if peer in m:
                line += f"  funtun/{peer} {ratio(f, med([x[0] for x in m[peer]])):.2f}"
        print(line)

def short_table(tag, title):
    short = {}
    for _, mode, rnd, cps, p50, p99, errs, ok, cpu in (r for r in rows if r[0] == tag):
        short.setdefault(mode, []).append((float(cps), float(p50), float(p99), int(errs), int(ok), float(cpu)))
    if not short:
        return
    print(f"\n{title} (median of rounds; errors summed)")
    print(f"{'peer':>14} {'conn/s':>8} {'min':>8} {'max':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'CPU ms/1k conn':>14}")
    for mode in ("funtun", "funtun-general", "microsocks", "danted", "floor"):
        if mode not in short:
            continue
        xs = short[mode]
        cps = [x[0] for x in xs]
        cpu_per = med([1000 * x[5] / x[4] * 1000 for x in xs if x[4]])
        print(f"{mode:>14} {med(cps):>8.0f} {min(cps):>8.0f} {max(cps):>8.0f} {med([x[1] for x in xs]):>7.2f} {med([x[2] for x in xs]):>7.2f} {sum(x[3] for x in xs):>6} {cpu_per:>14.0f}")
    if "funtun" in short and "microsocks" in short:
        f = med([x[0] for x in short["funtun"]])
        ferr = sum(x[3] for x in short["funtun"])
        r = ratio(f, med([x[0] for x in short["microsocks"]]))
        line = f"{'':>10} funtun/microsocks {r:.2f} (target >= 1.2 with zero errors: {verdict(r >= 1.2 and ferr == 0)})"
        if "danted" in short:
            line += f"  funtun/danted {ratio(f, med([x[0] for x in short['danted']])):.2f}"
        print(line)
    if "funtun-general" in short and "microsocks" in short:
        g = med([x[0] for x in short["funtun-general"]])
        print(f"{'':>10} funtun-general/microsocks {ratio(g, med([x[0] for x in short['microsocks']])):.2f} (the general path, for comparison: no target)")
    if "floor" in short:
        # Informational: what the same work costs a minimal epoll proxy in C.
        fl = med([x[0] for x in short["floor"]])
        parts = []
        if "funtun" in short:
            parts.append(f"funtun/floor {ratio(med([x[0] for x in short['funtun']]), fl):.2f}")
        if "microsocks" in short:
            parts.append(f"floor/microsocks {ratio(fl, med([x[0] for x in short['microsocks']])):.2f}")
        if parts:
            print(f"{'':>10} {'  '.join(parts)} (floor: bench/floor/minsocks.c, a reference, no target)")
    # Issue 8's targets for socks5d: the server's own CPU per connection,
    # at most 0.75x microsocks's and within 10 % of the floor's.
    cpu = {m: med([x[5] / x[4] for x in short[m] if x[4]]) for m in short}
    if "funtun" in cpu and ("microsocks" in cpu or "floor" in cpu):
        parts = []
        if "microsocks" in cpu:
            r = ratio(cpu["funtun"], cpu["microsocks"])
            parts.append(f"funtun/microsocks {r:.2f} (target <= 0.75: {verdict(r <= 0.75)})")
        if "floor" in cpu:
            r = ratio(cpu["funtun"], cpu["floor"])
            parts.append(f"funtun/floor {r:.2f} (target <= 1.10: {verdict(r <= 1.10)})")
        print(f"{'':>10} CPU per connection: {'  '.join(parts)}")
    for r in rows:
        if r[0] == "note" and r[1] == "danted_out_of_ports" and r[2] == tag and int(r[3]) > 0:
            print(f"{'':>10} danted's errors: its log says {r[3]} times that it could not bind a source port (out of ephemeral ports):")
            print(f"{'':>10} it binds before connect, so ports held by TIME_WAIT sockets are lost to it")

short_table("short", "2. Short connections: handshake, CONNECT, 64-byte echo, close")
short_table("pcshort", "2b. Short connections with proxychains4 as the client's hook (bench/clients/shortc.c)")

idle = {r[1]: r for r in rows if r[0] == "idle"}
if idle:
    print("\n3. Idle sessions held open (growth from before the sessions to while they are held)")
    print(f"{'peer':>10} {'sessions':>8} {'alive':>6} {'RSS before':>10} {'RSS after':>10} {'KiB/session':>11} {'fds/session':>11} {'sockets/s.':>10} {'pipe fds':>8} {'threads':>9}")
    for mode in ("funtun", "microsocks"):
        if mode not in idle:
            continue
        _, _, sessions, opened, alive, rss0, rss1, kib, fds, socks, pipes, other, th0, th1 = idle[mode]
        print(f"{mode:>10} {opened:>8} {alive:>6} {rss0 + ' KiB':>10} {rss1 + ' KiB':>10} {float(kib):>11.2f} {float(fds):>11.3f} {float(socks):>10.3f} {pipes:>8} {th0 + '->' + th1:>9}")
    if "funtun" in idle:
        f = idle["funtun"]
        kib, fds, socks, pipes = float(f[7]), float(f[8]), float(f[9]), int(f[10])
        ok = f[3] == f[2] and f[4] == f[3]
        # The relays' shared free list (the event loops' and the general
        # path's) keeps at most 64 empty pipes whatever the number of
        # sessions: a constant, not a per-session cost.
        pool_fds = 2 * 64
        line = (f"{'':>10} funtun: RSS {kib:.2f} KiB/session (target <= 13: {verdict(kib <= 13)}), "
                f"{socks:.2f} sockets/session + {pipes} pooled pipe fds (target: 2 per session, pool bounded by {pool_fds}: {verdict(socks <= 2 and pipes <= pool_fds)}), "
                f"all sessions open and alive: {'yes' if ok else 'NO'}")
        if "microsocks" in idle and float(idle["microsocks"][7]) > 0:
            line += f"; RSS/session vs microsocks {kib / float(idle['microsocks'][7]):.2f}"
        print(line)
EOF
