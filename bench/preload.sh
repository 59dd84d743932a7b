#!/usr/bin/env bash
# The LD_PRELOAD hook's cost, side by side with its peers, on 127.0.0.1:
#
#  1. Per connection: one small C client (preload/test/ftclient.c) makes
#     BENCH_CONNS sequential short connections to a local echo server
#     (connect, "ping", read it back, close), unhooked, under
#     `funtun profile=direct` (the socket is handed back connected: no
#     relay), under proxychains4 to microsocks, and — for scale — under a
#     funtun profile whose pieces act (a relay). The client times its own
#     loop, so program start-up is not counted.
#  2. Bulk: iperf3 unhooked and under `funtun profile=direct`.
#
# Environment:
#   BENCH_CONNS     connections per run (default 2000)
#   BENCH_SECONDS   length of each iperf3 run (default 5)
#   BENCH_ROUNDS    rounds of all runs, interleaved; the table shows the median (default 3)
#   FUNTUN_BIN      use this binary instead of building bin/funtun
#   FUNTUN_PRELOAD  use this library instead of building bin/libfuntun.so
set -euo pipefail

conns=${BENCH_CONNS:-2000}
seconds=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
me=preload.sh
. "$(dirname "$0")/lib.sh"

need_tools cc iperf3 proxychains4 microsocks python3 ss
num BENCH_CONNS "$conns" 1 100000
num BENCH_SECONDS "$seconds" 1 120
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

port=25300
for ((try = 0; try < 50; try++)); do
	if ! listening "$port" && ! listening $((port + 1)) && ! listening $((port + 2)); then
		break
	fi
	port=$((port + 3))
done
echo_port=$port socks_port=$((port + 1)) iperf_port=$((port + 2))

lifetime=$((rounds * (4 * 120 + 2 * (seconds + 15)) + 60))
timeout "$lifetime" "$client" serve "$echo_port" >"$work/echo.log" 2>&1 &
pids+=($!)
timeout "$lifetime" microsocks -i 127.0.0.1 -p "$socks_port" >"$work/socks.log" 2>&1 &
pids+=($!)
timeout "$lifetime" iperf3 -s -B 127.0.0.1 -p "$iperf_port" >"$work/iperf.log" 2>&1 &
pids+=($!)
wait_listening "$echo_port" 100
wait_listening "$socks_port" 100
wait_listening "$iperf_port" 100

proxychains=$(proxychains_conf "$socks_port")

# A relay profile, if the binary has a piece that acts on bytes.
relay_chain=""
if "$funtun" pieces rewrite >/dev/null 2>&1; then
	relay_chain="rewrite from=never-in-the-data to=x"
fi

results=$work/results
: >"$results"

# conn MODE ROUND: one run of the client; records µs per connection.
conn() {
	local mode=$1 round=$2 out
	case $mode in
	unhooked) out=$(timeout 120 "$client" echo 127.0.0.1 "$echo_port" "$conns") ;;
	funtun) out=$(timeout 120 "$funtun" profile=direct "$client" echo 127.0.0.1 "$echo_port" "$conns") ;;
	relay) out=$(timeout 120 "$funtun" chain="$relay_chain" "$client" echo 127.0.0.1 "$echo_port" "$conns") ;;
	proxychains) out=$(timeout 120 proxychains4 -q -f "$proxychains" "$client" echo 127.0.0.1 "$echo_port" "$conns") ;;
	esac
	set -- $out
	[[ ${1:-} == ok ]] || { echo "$me: $mode: $out" >&2; exit 1; }
	echo "conn $mode $round $3" >>"$results"
}

# bulk MODE ROUND: one iperf3 run; records Gbit/s.
bulk() {
	local mode=$1 round=$2 pre=()
	[[ $mode == funtun ]] && pre=("$funtun" profile=direct)
	if ! timeout $((seconds + 15)) "${pre[@]}" iperf3 -c 127.0.0.1 -p "$iperf_port" -t "$seconds" -J >"$work/run.json" 2>"$work/run.err"; then
		echo "$me: iperf3 ($mode) failed:" >&2
		cat "$work/run.err" "$work/run.json" >&2
		exit 1
	fi
	python3 - "$work/run.json" "$mode" "$round" >>"$results" <<'EOF'
import json, sys
path, mode, rnd = sys.argv[1:]
end = json.load(open(path))["end"]
print(f"bulk {mode} {rnd} {end['sum_received']['bits_per_second'] / 1e9:.3f}")
EOF
}

modes=(unhooked funtun proxychains)
[[ -n $relay_chain ]] && modes+=(relay)
echo "$me: $conns connections per run, iperf3 ${seconds}s, $rounds rounds, $(nproc) CPUs" >&2
for ((r = 1; r <= rounds; r++)); do
	rotate "$r" "${modes[@]}"
	for mode in "${order[@]}"; do
		echo "$me: round $r: $mode, $conns connections" >&2
		conn "$mode" "$r"
	done
	for mode in unhooked funtun; do
		echo "$me: round $r: iperf3 $mode" >&2
		bulk "$mode" "$r"
	done
done

python3 - "$results" "$conns" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
conns = sys.argv[2]
conn, bulk = {}, {}
for kind, mode, rnd, v in rows:
    (conn if kind == "conn" else bulk).setdefault(mode, []).append(float(v))
med = {m: statistics.median(v) for m, v in conn.items()}
print(f"per connection ({conns} sequential connections, µs each; median, min, max):")
names = {"unhooked": "unhooked", "funtun": "funtun profile=direct", "proxychains": "proxychains4 + microsocks", "relay": "funtun, pieces acting (relay)"}
for m in ("unhooked", "funtun", "proxychains", "relay"):
    if m in conn:
        v = conn[m]
        print(f"  {names[m]:<32} {med[m]:8.1f} {min(v):8.1f} {max(v):8.1f}")
print(f"  funtun - unhooked: {med['funtun'] - med['unhooked']:+.1f} µs per connection   (target: <= +100)")
print(f"  funtun / proxychains4: {med['funtun'] / med['proxychains']:.2f}   (target: <= 1.0)")
bmed = {m: statistics.median(v) for m, v in bulk.items()}
print("bulk (iperf3, Gbit/s; median, min, max):")
for m in ("unhooked", "funtun"):
    v = bulk[m]
    print(f"  {names[m]:<32} {bmed[m]:8.2f} {min(v):8.2f} {max(v):8.2f}")
print(f"  funtun / unhooked: {bmed['funtun'] / bmed['unhooked']:.2f}   (target: >= 0.95)")
EOF
