#!/usr/bin/env bash
# TCP throughput through `funtun forward profile=direct`, side by side with
# iperf3 straight to the server and with socat doing the same forwarding job.
# Everything runs on 127.0.0.1; see bench/README.md for what the figures mean.
#
# Environment:
#   BENCH_SECONDS   length of each iperf3 run (default 5)
#   BENCH_STREAMS   parallel-stream counts to try, space separated (default "1 4")
#   BENCH_ROUNDS    rounds of all runs, interleaved; the table shows the median (default 3)
#   BENCH_REVERSE   1: also measure server-to-client (iperf3 -R), the relay's other direction
#   BENCH_CC        TCP congestion control iperf3 asks for at both ends (-C), e.g. reno;
#                   default: the system's (net.ipv4.tcp_congestion_control)
#   BENCH_NICE      run servers, forwarders and clients under `nice -n BENCH_NICE`
#                   (e.g. -10 as root, to stand out from other load on a shared machine)
#   BENCH_PORT      first of the three loopback ports used (default: a free one near 25200)
#   FUNTUN_BIN      use this binary instead of building bin/funtun
#   BENCH_CSV       also write the raw results (one line per run) to this file
set -euo pipefail

seconds=${BENCH_SECONDS:-5}
streams=${BENCH_STREAMS:-1 4}
rounds=${BENCH_ROUNDS:-3}
reverse=${BENCH_REVERSE:-0}
cc=${BENCH_CC:-}
nice_prefix=()
[[ -n ${BENCH_NICE:-} ]] && nice_prefix=(nice -n "$BENCH_NICE")
root=$(cd "$(dirname "$0")/.." && pwd)
me=forward.sh
. "$(dirname "$0")/lib.sh"

need_tools iperf3 socat python3 ss
num BENCH_SECONDS "$seconds" 1 120
num BENCH_ROUNDS "$rounds" 1 20

funtun_binary "$root/bin/funtun-core"

make_work /tmp/funtun-bench.XXXXXX

# Three consecutive ports no socket uses: server, funtun, socat. The default
# lies below the usual ephemeral range so outgoing connections rarely hold it.
port=${BENCH_PORT:-25200}
for ((try = 0; try < 50; try++)); do
	if ! in_use "$port" && ! in_use $((port + 1)) && ! in_use $((port + 2)); then
		break
	fi
	[[ -n ${BENCH_PORT:-} ]] && die "ports $port..$((port + 2)) are busy"
	port=$((port + 3))
done
server_port=$port funtun_port=$((port + 1)) socat_port=$((port + 2))

# Longest any helper process may live: every run plus generous slack.
nmodes=3
nstreams=$(wc -w <<<"$streams")
ndirs=$((reverse == 1 ? 2 : 1))
lifetime=$((rounds * nmodes * nstreams * ndirs * (seconds + 15) + 60))

"${nice_prefix[@]}" timeout "$lifetime" iperf3 -s -B 127.0.0.1 -p "$server_port" >"$work/server.log" 2>&1 &
pids+=($!)
"${nice_prefix[@]}" timeout "$lifetime" "$funtun" forward --listen "127.0.0.1:$funtun_port" --to "127.0.0.1:$server_port" profile=direct >"$work/funtun.log" 2>&1 &
pids+=($!)
funtun_timeout=$!
"${nice_prefix[@]}" timeout "$lifetime" socat "TCP-LISTEN:$socat_port,bind=127.0.0.1,fork,reuseaddr" "TCP:127.0.0.1:$server_port" 2>"$work/socat.log" &
pids+=($!)
socat_timeout=$!
wait_listening "$server_port" || { cat "$work/server.log" >&2; exit 1; }
wait_listening "$funtun_port" || { cat "$work/funtun.log" >&2; exit 1; }
wait_listening "$socat_port" || { cat "$work/socat.log" >&2; exit 1; }

# timeout(1) is the parent we know (nice execs it); the forwarder is its
# only child, there already since it listens: one look each.
funtun_pid=$(child_of "$funtun_timeout" 1 2>/dev/null) || true
socat_pid=$(child_of "$socat_timeout" 1 2>/dev/null) || true
[[ -n $funtun_pid && -n $socat_pid ]] || { echo "$me: cannot find the forwarder processes" >&2; exit 1; }

# The forwarders' CPU: cpu_ticks counts a process's threads and its reaped
# children: socat forks one child per connection and funtun runs one
# goroutine pair per flow.
hz=$(getconf CLK_TCK)

results=$work/results
: >"$results"

# run MODE PORT STREAMS DIR ROUND
run() {
	local mode=$1 p=$2 n=$3 dir=$4 round=$5 pid="" before=0 after=0 flags=()
	case $mode in
	funtun) pid=$funtun_pid ;;
	socat) pid=$socat_pid ;;
	esac
	[[ $dir == down ]] && flags+=(-R)
	[[ -n $cc ]] && flags+=(-C "$cc")
	[[ -n $pid ]] && before=$(cpu_ticks "$pid")
	# One retry: an iperf3 server still tidying up the previous test
	# refuses the next one ("the server is busy").
	local attempt
	for attempt in 1 2; do
		if "${nice_prefix[@]}" timeout $((seconds + 15)) iperf3 -c 127.0.0.1 -p "$p" -t "$seconds" -P "$n" "${flags[@]}" -J >"$work/run.json" 2>"$work/run.err"; then
			break
		fi
		echo "$me: iperf3 through $mode (-P $n $dir) failed (attempt $attempt):" >&2
		cat "$work/run.err" >&2
		python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error", ""))' "$work/run.json" >&2 2>/dev/null || true
		[[ $attempt == 2 ]] && exit 1
		sleep 1
		[[ -n $pid ]] && before=$(cpu_ticks "$pid")
	done
	if [[ -n $pid ]]; then
		# Let socat's per-connection child exit and be reaped so its CPU
		# lands in the parent's cutime/cstime.
		sleep 0.5
		after=$(cpu_ticks "$pid")
	fi
	python3 - "$work/run.json" "$mode" "$n" "$dir" "$round" "$pid" $((after - before)) "$hz" >>"$results" <<'EOF'
import json, sys
path, mode, n, d, rnd, pid, ticks, hz = sys.argv[1:]
end = json.load(open(path))["end"]
gbps = end["sum_received"]["bits_per_second"] / 1e9
gbytes = end["sum_received"]["bytes"] / 1e9
cpu = int(ticks) / int(hz) if pid else float("nan")
print(f"{mode} {n} {d} {rnd} {gbps:.3f} {cpu:.2f} {gbytes:.3f}")
EOF
}

dirs=up
[[ $reverse == 1 ]] && dirs="up down"
sys_cc=$(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo unknown)
read -r load1 load5 _ </proc/loadavg
echo "$me: iperf3 ${seconds}s per run, streams: $streams, rounds: $rounds, ports $server_port/$funtun_port/$socat_port" >&2
header="$(nproc) CPUs, load $load1 $load5, congestion control: ${cc:-$sys_cc}${cc:+ (iperf3 -C; system: $sys_cc)}, $(uname -r)"
for ((r = 1; r <= rounds; r++)); do
	for n in $streams; do
		for d in $dirs; do
			rotate "$r" direct funtun socat
			for mode in "${order[@]}"; do
				case $mode in
				direct) p=$server_port ;;
				funtun) p=$funtun_port ;;
				socat) p=$socat_port ;;
				esac
				echo "$me: round $r: $mode -P $n $d" >&2
				run "$mode" "$p" "$n" "$d" "$r"
			done
		done
	done
done

[[ -n ${BENCH_CSV:-} ]] && cp "$results" "$BENCH_CSV"

echo "$header"
python3 - "$results" <<'EOF'
import math, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
groups = {}
for mode, n, d, rnd, gbps, cpu, gbytes in rows:
    groups.setdefault((int(n), d), {}).setdefault(mode, []).append((float(gbps), float(cpu), float(gbytes)))

def med(xs):
    return statistics.median(xs) if xs else float("nan")

print(f"{'streams':>7} {'dir':>4} {'mode':>7} {'Gbit/s':>8} {'min':>7} {'max':>7} {'fwd CPU s':>9} {'CPU s/GB':>8}")
for (n, d), modes in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "up")):
    gb = {}
    for mode in ("direct", "funtun", "socat"):
        rs = modes.get(mode, [])
        g = [r[0] for r in rs]
        cpu = [r[1] for r in rs]
        per_gb = [r[1] / r[2] for r in rs if r[2] > 0 and not math.isnan(r[1])]
        gb[mode] = med(g)
        cpu_s = "-" if mode == "direct" else f"{med(cpu):.2f}"
        per = "-" if mode == "direct" else f"{med(per_gb):.3f}"
        print(f"{n:>7} {d:>4} {mode:>7} {med(g):>8.2f} {min(g):>7.2f} {max(g):>7.2f} {cpu_s:>9} {per:>8}")
    print(f"{'':>7} {'':>4} funtun/direct {gb['funtun'] / gb['direct']:.2f}  funtun/socat {gb['funtun'] / gb['socat']:.2f}  (target: >= 0.85, > 1)")
EOF
