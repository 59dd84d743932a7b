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

for tool in cc iperf3 proxychains4 microsocks python3 ss; do
	command -v "$tool" >/dev/null || { echo "preload.sh: needs $tool" >&2; exit 2; }
done
[[ $conns =~ ^[0-9]+$ && $conns -ge 1 && $conns -le 100000 ]] || { echo "preload.sh: BENCH_CONNS must be 1..100000" >&2; exit 2; }
[[ $seconds =~ ^[0-9]+$ && $seconds -ge 1 && $seconds -le 120 ]] || { echo "preload.sh: BENCH_SECONDS must be 1..120" >&2; exit 2; }
[[ $rounds =~ ^[0-9]+$ && $rounds -ge 1 && $rounds -le 20 ]] || { echo "preload.sh: BENCH_ROUNDS must be 1..20" >&2; exit 2; }

work=$(mktemp -d /tmp/funtun-bench.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${FUNTUN_BIN:-} ]]; then
	bin=$FUNTUN_BIN
	[[ -d $bin ]] && bin=$bin/funtun
else
	bin=$root/bin/funtun
	(cd "$root" && timeout 300 go build -o bin/funtun ./cmd/funtun)
fi
if [[ -z ${FUNTUN_PRELOAD:-} ]]; then
	# The launcher looks next to its binary; build the library there.
	(cd "$root" && cc -shared -fPIC -O2 -Wall -Wextra -o "$(dirname "$bin")/libfuntun.so" preload/*.c -ldl -lpthread)
fi
client=$work/ftclient
cc -O2 -Wall -Wextra -o "$client" "$root/preload/test/ftclient.c" -lpthread

listening() { [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]]; }
port=25300
for ((try = 0; try < 50; try++)); do
	if ! listening "$port" && ! listening $((port + 1)) && ! listening $((port + 2)); then
		break
	fi
	port=$((port + 3))
done
echo_port=$port socks_port=$((port + 1)) iperf_port=$((port + 2))

wait_listening() {
	local i
	for ((i = 0; i < 100; i++)); do
		listening "$1" && return 0
		sleep 0.05
	done
	echo "preload.sh: nothing listens on port $1 after 5s" >&2
	return 1
}

lifetime=$((rounds * (4 * 120 + 2 * (seconds + 15)) + 60))
timeout "$lifetime" "$client" serve "$echo_port" >"$work/echo.log" 2>&1 &
pids+=($!)
timeout "$lifetime" microsocks -i 127.0.0.1 -p "$socks_port" >"$work/socks.log" 2>&1 &
pids+=($!)
timeout "$lifetime" iperf3 -s -B 127.0.0.1 -p "$iperf_port" >"$work/iperf.log" 2>&1 &
pids+=($!)
wait_listening "$echo_port"
wait_listening "$socks_port"
wait_listening "$iperf_port"

cat >"$work/proxychains.conf" <<EOF
strict_chain
quiet_mode
tcp_read_time_out 15000
tcp_connect_time_out 8000
[ProxyList]
socks5 127.0.0.1 $socks_port
EOF

# A relay profile, if the binary has a piece that acts on bytes.
relay_chain=""
if "$bin" pieces rewrite >/dev/null 2>&1; then
	relay_chain="rewrite from=never-in-the-data to=x"
fi

results=$work/results
: >"$results"

# conn MODE ROUND: one run of the client; records µs per connection.
conn() {
	local mode=$1 round=$2 out
	case $mode in
	unhooked) out=$(timeout 120 "$client" echo 127.0.0.1 "$echo_port" "$conns") ;;
	funtun) out=$(timeout 120 "$bin" profile=direct "$client" echo 127.0.0.1 "$echo_port" "$conns") ;;
	relay) out=$(timeout 120 "$bin" chain="$relay_chain" "$client" echo 127.0.0.1 "$echo_port" "$conns") ;;
	proxychains) out=$(timeout 120 proxychains4 -q -f "$work/proxychains.conf" "$client" echo 127.0.0.1 "$echo_port" "$conns") ;;
	esac
	set -- $out
	[[ ${1:-} == ok ]] || { echo "preload.sh: $mode: $out" >&2; exit 1; }
	echo "conn $mode $round $3" >>"$results"
}

# bulk MODE ROUND: one iperf3 run; records Gbit/s.
bulk() {
	local mode=$1 round=$2 pre=()
	[[ $mode == funtun ]] && pre=("$bin" profile=direct)
	if ! timeout $((seconds + 15)) "${pre[@]}" iperf3 -c 127.0.0.1 -p "$iperf_port" -t "$seconds" -J >"$work/run.json" 2>"$work/run.err"; then
		echo "preload.sh: iperf3 ($mode) failed:" >&2
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
echo "preload.sh: $conns connections per run, iperf3 ${seconds}s, $rounds rounds, $(nproc) CPUs" >&2
for ((r = 1; r <= rounds; r++)); do
	# Rotate the order each round so no mode always runs first.
	order=("${modes[@]}")
	for ((k = 0; k < (r - 1) % ${#modes[@]}; k++)); do order=("${order[@]:1}" "${order[0]}"); done
	for mode in "${order[@]}"; do
		echo "preload.sh: round $r: $mode, $conns connections" >&2
		conn "$mode" "$r"
	done
	for mode in unhooked funtun; do
		echo "preload.sh: round $r: iperf3 $mode" >&2
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
