#!/usr/bin/env bash
# TCP throughput across a gateway: iperf3 from a client namespace to a server
# namespace through a gateway namespace that forwards the packets (direct),
# redirects them to `funtun redirect profile=direct` (nftables redirect,
# SO_ORIGINAL_DST, splice), redirects them to redsocks with microsocks as
# its SOCKS5 server — the usual way to do the same job —, or redirects them
# to bench/floor/minredir.c, the least a user-space relay can cost (the
# floor). Same setup, same run, interleaved; prints the median Gbit/s of
# each, CPU per GB and the ratios.
# Needs root (network namespaces and nftables); nothing leaves the three
# namespaces it makes, and they go at exit.
#
# Environment:
#   BENCH_SECONDS   length of each iperf3 run (default 5)
#   BENCH_STREAMS   parallel-stream counts to try, space separated (default "1")
#   BENCH_ROUNDS    rounds of all runs, interleaved; the table shows the median (default 3)
#   BENCH_CC        TCP congestion control of all three namespaces, e.g. cubic
#                   (default: what new namespaces get, the system's)
#   BENCH_CHAIN     funtun redirect's chain (default "direct"); e.g.
#                   "direct congestion=reno" so that its upstream socket does
#                   not pace again what the client already paces
#   FUNTUN_BIN      use this binary instead of building bin/funtun
#   BENCH_CSV       also write the raw results (one line per run) to this file
set -euo pipefail

seconds=${BENCH_SECONDS:-5}
streams=${BENCH_STREAMS:-1}
rounds=${BENCH_ROUNDS:-3}
cc=${BENCH_CC:-}
chain=${BENCH_CHAIN:-direct}
root=$(cd "$(dirname "$0")/.." && pwd)
me=redirect.sh
. "$(dirname "$0")/lib.sh"

need_tools ip nft iperf3 redsocks microsocks python3 gcc
num BENCH_SECONDS "$seconds" 1 120
num BENCH_ROUNDS "$rounds" 1 20
[[ $(id -u) == 0 ]] || die "needs root: it makes network namespaces and nftables rules"

funtun_binary "$root/bin/funtun-core"
make_work /tmp/funtun-bench.XXXXXX

ns=frb$$
c=${ns}c g=${ns}g s=${ns}s
del_netns() {
	local n p
	for n in "$c" "$g" "$s"; do
		for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
		ip netns del "$n" 2>/dev/null || true
	done
}
trap 'cleanup; del_netns' EXIT

# client 10.200.1.2 ─ 10.200.1.1 gateway 10.200.2.1 ─ 10.200.2.2 server
for n in "$c" "$g" "$s"; do
	ip netns add "$n"
	ip -n "$n" link set lo up
done
ip -n "$c" link add eth0 type veth peer name lan0 netns "$g"
ip -n "$g" link add wan0 type veth peer name eth0 netns "$s"
ip -n "$c" addr add 10.200.1.2/24 dev eth0
ip -n "$g" addr add 10.200.1.1/24 dev lan0
ip -n "$g" addr add 10.200.2.1/24 dev wan0
ip -n "$s" addr add 10.200.2.2/24 dev eth0
ip -n "$c" link set eth0 up
ip -n "$g" link set lan0 up
ip -n "$g" link set wan0 up
ip -n "$s" link set eth0 up
ip -n "$c" route add default via 10.200.1.1
ip -n "$s" route add default via 10.200.2.1
ip netns exec "$g" sysctl -qw net.ipv4.ip_forward=1
if [[ -n $cc ]]; then
	for n in "$c" "$g" "$s"; do ip netns exec "$n" sysctl -qw net.ipv4.tcp_congestion_control="$cc"; done
fi

# One iperf3 server per way in, so the rules tell them apart by port.
direct_port=5201 funtun_port=5202 redsocks_port=5203 floor_port=5204
ip netns exec "$g" nft -f - <<EOF
table ip bench {
	chain pre {
		type nat hook prerouting priority dstnat;
		ip daddr 10.200.2.2 tcp dport $funtun_port redirect to :7474
		ip daddr 10.200.2.2 tcp dport $redsocks_port redirect to :12345
		ip daddr 10.200.2.2 tcp dport $floor_port redirect to :7575
	}
}
EOF

nstreams=$(wc -w <<<"$streams")
lifetime=$((rounds * 4 * nstreams * (seconds + 15) + 60))
for p in $direct_port $funtun_port $redsocks_port $floor_port; do
	start "iperf3-$p" ip netns exec "$s" iperf3 -s -B 10.200.2.2 -p "$p"
done
start funtun ip netns exec "$g" "$funtun" redirect --listen 10.200.1.1:7474 "chain=$chain"
funtun_pid=$(child_of "$started")
start microsocks ip netns exec "$g" microsocks -i 127.0.0.1 -p 1080
microsocks_pid=$(child_of "$started")
cat >"$work/redsocks.conf" <<EOF
base { log_debug = off; log_info = off; log = stderr; daemon = off; redirector = iptables; }
redsocks { local_ip = 10.200.1.1; local_port = 12345; ip = 127.0.0.1; port = 1080; type = socks5; }
EOF
start redsocks ip netns exec "$g" redsocks -c "$work/redsocks.conf"
redsocks_pid=$(child_of "$started")
timeout 120 gcc -O2 -Wall -Wextra -pthread -o "$work/minredir" "$root/bench/floor/minredir.c"
start minredir ip netns exec "$g" "$work/minredir" 10.200.1.1 7575
minredir_pid=$(child_of "$started")

# wait_in NS PORT: waits until something listens on PORT inside NS.
wait_in() {
	local i
	for ((i = 0; i < 200; i++)); do
		[[ -n $(ip netns exec "$1" ss -ltnH "sport = :$2") ]] && return 0
		sleep 0.05
	done
	echo "$me: nothing listens on port $2 in $1" >&2
	for f in "$work"/*.log; do echo "== $f" >&2; cat "$f" >&2; done
	return 1
}
for p in $direct_port $funtun_port $redsocks_port $floor_port; do wait_in "$s" "$p"; done
wait_in "$g" 7474
wait_in "$g" 1080
wait_in "$g" 12345
wait_in "$g" 7575

results=$work/results
: >"$results"

# The machine's busy CPU time (all CPUs, softirq included: that is where
# forwarding and most of TCP's work happen) and a process's own, in clock
# ticks. On two CPUs the load generator, the server and the gateway share
# the cores, so the ratio of throughputs alone says little: the table
# also gives CPU seconds per GB moved, for the whole machine and for the
# relay process itself.
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8; exit}' /proc/stat; }
total_ticks() { awk '/^cpu /{s=0; for(i=2;i<=NF;i++) s+=$i; print s; exit}' /proc/stat; }
proc_ticks() {
	local t=0 pid
	for pid in "$@"; do
		[[ -r /proc/$pid/stat ]] || continue
		t=$((t + $(awk '{sub(/.*\) /, ""); print $12+$13}' "/proc/$pid/stat")))
	done
	echo "$t"
}

# run MODE PORT STREAMS ROUND
run() {
	local mode=$1 p=$2 n=$3 round=$4 attempt b0 t0 p0 b1 t1 p1 pids
	case $mode in
	funtun) pids="$funtun_pid" ;;
	redsocks) pids="$redsocks_pid $microsocks_pid" ;;
	floor) pids="$minredir_pid" ;;
	*) pids="" ;;
	esac
	for attempt in 1 2; do
		b0=$(busy_ticks) t0=$(total_ticks) p0=$(proc_ticks $pids)
		# One retry: an iperf3 server still tidying up the previous test
		# refuses the next one ("the server is busy").
		if timeout $((seconds + 15)) ip netns exec "$c" iperf3 -c 10.200.2.2 -p "$p" -t "$seconds" -P "$n" -J >"$work/run.json" 2>"$work/run.err"; then
			b1=$(busy_ticks) t1=$(total_ticks) p1=$(proc_ticks $pids)
			break
		fi
		echo "$me: iperf3 through $mode (-P $n) failed (attempt $attempt):" >&2
		cat "$work/run.err" >&2
		python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error", ""))' "$work/run.json" >&2 2>/dev/null || true
		[[ $attempt == 2 ]] && exit 1
		sleep 1
	done
	python3 - "$work/run.json" "$mode" "$n" "$round" $((b1 - b0)) $((t1 - t0)) $((p1 - p0)) "$(getconf CLK_TCK)" >>"$results" <<'EOF'
import json, sys
path, mode, n, rnd, busy, total, own, hz = sys.argv[1:]
end = json.load(open(path))["end"]
gb = end["sum_received"]["bytes"] / 1e9
if gb == 0:
    sys.exit(f"redirect.sh: iperf3 through {mode} (-P {n}) moved no bytes")
busy, total, own, hz = int(busy), int(total), int(own), int(hz)
# busy share of all CPUs; machine and relay CPU seconds per GB received
print(f"{mode} {n} {rnd} {end['sum_received']['bits_per_second'] / 1e9:.3f} "
      f"{busy / max(total, 1):.3f} {busy / hz / gb:.3f} {own / hz / gb:.3f}")
EOF
}

read -r load1 load5 _ </proc/loadavg
echo "$me: iperf3 ${seconds}s per run, streams: $streams, rounds: $rounds, across a gateway namespace" >&2
header="$(nproc) CPUs, load $load1 $load5, congestion control: $(ip netns exec "$g" cat /proc/sys/net/ipv4/tcp_congestion_control), funtun chain='$chain', $(uname -r)"
for ((r = 1; r <= rounds; r++)); do
	for n in $streams; do
		rotate "$r" direct funtun redsocks floor
		for mode in "${order[@]}"; do
			case $mode in
			direct) p=$direct_port ;;
			funtun) p=$funtun_port ;;
			redsocks) p=$redsocks_port ;;
			floor) p=$floor_port ;;
			esac
			echo "$me: round $r: $mode -P $n" >&2
			run "$mode" "$p" "$n" "$r"
		done
	done
done

# The flows went through funtun, not around it: its log has one line per
# iperf3 connection, to the server's real address.
grep -q 'hook=redirect .*dst=10.200.2.2:'"$funtun_port" "$work/funtun.log" || {
	echo "$me: funtun logged no redirected flow:" >&2
	cat "$work/funtun.log" >&2
	exit 1
}

[[ -n ${BENCH_CSV:-} ]] && cp "$results" "$BENCH_CSV"

echo "$header"
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
groups = {}
for mode, n, rnd, gbps, busy, cpu_gb, own_gb in rows:
    groups.setdefault(int(n), {}).setdefault(mode, []).append((float(gbps), float(busy), float(cpu_gb), float(own_gb)))
print(f"{'streams':>7} {'mode':>9} {'Gbit/s':>8} {'min':>7} {'max':>7} {'CPU busy':>9} {'CPU s/GB':>9} {'relay s/GB':>11}")
for n, modes in sorted(groups.items()):
    med, cpu = {}, {}
    for mode in ("direct", "funtun", "redsocks", "floor"):
        g = modes.get(mode, [])
        rate = [x[0] for x in g]
        med[mode] = statistics.median(rate)
        cpu[mode] = statistics.median(x[2] for x in g)
        own = "-" if mode == "direct" else f"{statistics.median(x[3] for x in g):.3f}"
        print(f"{n:>7} {mode:>9} {med[mode]:>8.2f} {min(rate):>7.2f} {max(rate):>7.2f} "
              f"{statistics.median(x[1] for x in g):>8.0%} {cpu[mode]:>9.3f} {own:>11}")
    print(f"{'':>7} machine CPU per GB: funtun/direct {cpu['funtun'] / cpu['direct']:.2f}  floor/direct {cpu['floor'] / cpu['direct']:.2f}  funtun/floor {cpu['funtun'] / cpu['floor']:.2f}  redsocks/direct {cpu['redsocks'] / cpu['direct']:.2f}")
    print(f"{'':>7} throughput: floor/direct {med['floor'] / med['direct']:.2f}  funtun/floor {med['funtun'] / med['floor']:.2f}")
    print(f"{'':>7} funtun/direct {med['funtun'] / med['direct']:.2f}  redsocks/direct {med['redsocks'] / med['direct']:.2f}  funtun/redsocks {med['funtun'] / med['redsocks']:.1f}  (target: funtun >= 0.85 x direct, ahead of redsocks)")
EOF
