#!/usr/bin/env bash
# The cost of IPv6 through 6bed4 in user space (issue 14): TCP throughput
# and connection setup time from a client namespace to a server namespace
# over one veth pair, the same path both ways:
#
#   ipv4    the client's iperf3 (or connection loop) straight to the server
#           over IPv4, kernel to kernel
#   6bed4   the same program under `funtun profile=6bed4` to an IPv6 address
#           that `funtun 6bed4router` (in the server namespace, rootless
#           mode) exposes and forwards to the same server: the client's
#           netstack piece (gVisor), the 6bed4 tunnel in UDP over IPv4, the
#           router's own user-space stack, and its forward to the server
#
# Same setup, same run, interleaved; prints medians and the ratio. Needs
# root for the namespaces; nothing leaves the two it makes.
#
# Environment:
#   BENCH_SECONDS   length of each iperf3 run (default 5)
#   BENCH_CONNS     connections per setup-time run (default 300)
#   BENCH_ROUNDS    rounds of all runs, interleaved (default 3)
#   FUNTUN_BIN      use this binary (or the directory holding it) instead of building bin/funtun
#   FUNTUN_PRELOAD  use this library instead of building libfuntun.so next to the binary
set -euo pipefail

seconds=${BENCH_SECONDS:-5}
conns=${BENCH_CONNS:-300}
rounds=${BENCH_ROUNDS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
me=6bed4.sh
. "$(dirname "$0")/lib.sh"

need_tools ip iperf3 python3 cc
num BENCH_SECONDS "$seconds" 1 120
num BENCH_CONNS "$conns" 10 100000
num BENCH_ROUNDS "$rounds" 1 20
[[ $(id -u) == 0 ]] || die "needs root: it makes network namespaces"

funtun_binary "$root/bin/funtun-core"
[[ -d $funtun ]] && funtun=$funtun/funtun # FUNTUN_BIN may name its directory
if [[ -z ${FUNTUN_PRELOAD:-} && ! -e "$(dirname "$funtun")/libfuntun.so" ]]; then
	# The launcher looks next to its binary; build the library there.
	(cd "$root" && cc -shared -fPIC -O2 -Wall -Wextra -o "$(dirname "$funtun")/libfuntun.so" preload/*.c -ldl -lpthread)
fi
make_work /tmp/funtun-bench.XXXXXX

ns=f6b$$
c=${ns}c s=${ns}s
del_netns() {
	local n p
	for n in "$c" "$s"; do
		for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
		ip netns del "$n" 2>/dev/null || true
	done
}
trap 'cleanup; del_netns' EXIT

# client 10.77.0.2 ── 10.77.0.1 server; the client has no IPv6 on the
# veth (only ::1 on loopback, which the launcher needs).
for n in "$c" "$s"; do
	ip netns add "$n"
	ip -n "$n" link set lo up
done
ip -n "$c" link add eth0 type veth peer name eth0 netns "$s"
ip netns exec "$c" sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1
ip -n "$c" addr add 10.77.0.2/24 dev eth0
ip -n "$s" addr add 10.77.0.1/24 dev eth0
ip -n "$c" link set eth0 up
ip -n "$s" link set eth0 up

service=2001:db8:80::1
lifetime=$((rounds * 2 * (seconds + 15 + conns / 10) + 120))
start iperf3 ip netns exec "$s" iperf3 -s -p 5201
cat >"$work/echo.py" <<'EOF'
import socket, threading
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 7007)); l.listen(512)
def serve(c):
    with c:
        while (b := c.recv(64)):
            c.sendall(b)
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
start echo ip netns exec "$s" python3 "$work/echo.py"
start router ip netns exec "$s" "$funtun" 6bed4router --listen 10.77.0.1:25790 --prefix 2001:db8:6bed:4::/64 \
	--expose "[$service]:5201=127.0.0.1:5201" --expose "[$service]:7007=127.0.0.1:7007"
mkdir -p "$work/profiles"
echo "netstack ipv4=direct | 6bed4 router=10.77.0.1:25790" >"$work/profiles/6bed4-tunnel.profile"

# wait_in NS PROTO PORT: waits until something listens on PORT (t: TCP,
# u: UDP) inside NS.
wait_in() {
	local i
	for ((i = 0; i < 200; i++)); do
		[[ -n $(ip netns exec "$1" ss -l"$2"nH "sport = :$3") ]] && return 0
		sleep 0.05
	done
	echo "$me: nothing listens on port $3 in $1" >&2
	for f in "$work"/*.log; do echo "== $f" >&2; cat "$f" >&2; done
	return 1
}
wait_in "$s" t 5201
wait_in "$s" t 7007
wait_in "$s" u 25790

# The connection loop: connect, one byte there and back, close; prints
# the median and 90th percentile in milliseconds.
cat >"$work/setup.py" <<'EOF'
import socket, statistics, sys, time
host, n = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(n):
    t0 = time.perf_counter()
    s = socket.create_connection((host, 7007), timeout=10)
    s.sendall(b"x")
    if s.recv(1) != b"x":
        sys.exit("echo failed")
    times.append((time.perf_counter() - t0) * 1000)
    s.close()
times.sort()
print(f"{statistics.median(times):.3f} {times[int(len(times) * 0.9)]:.3f}")
EOF

results=$work/results
: >"$results"
# client MODE CMD...: runs CMD in the client namespace, under the launcher
# with profile=6bed4 for mode 6bed4.
client() {
	local mode=$1
	shift
	if [[ $mode == 6bed4 ]]; then
		ip netns exec "$c" env FUNTUN_PROFILE_PATH="$work/profiles" ${FUNTUN_PRELOAD:+FUNTUN_PRELOAD=$FUNTUN_PRELOAD} "$funtun" profile=6bed4 "$@"
	else
		ip netns exec "$c" "$@"
	fi
}
target() { [[ $1 == 6bed4 ]] && echo "$service" || echo 10.77.0.1; }

read -r load1 load5 _ </proc/loadavg
echo "$me: iperf3 ${seconds}s and $conns connections per run, rounds: $rounds" >&2
header="$(nproc) CPUs, load $load1 $load5, $(uname -r)"
for ((r = 1; r <= rounds; r++)); do
	rotate "$r" ipv4 6bed4
	for mode in "${order[@]}"; do
		echo "$me: round $r: $mode" >&2
		client "$mode" iperf3 -c "$(target "$mode")" -p 5201 -t "$seconds" -J >"$work/run.json" 2>"$work/run.err" || {
			echo "$me: iperf3 through $mode failed:" >&2
			cat "$work/run.err" "$work/run.json" >&2
			exit 1
		}
		gbps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9)' "$work/run.json")
		setup=$(client "$mode" python3 "$work/setup.py" "$(target "$mode")" "$conns" 2>"$work/setup.err") || {
			echo "$me: the connection loop through $mode failed:" >&2
			cat "$work/setup.err" >&2
			exit 1
		}
		echo "$mode $r $gbps $setup" >>"$results"
	done
done

# The 6bed4 runs went through the router: its stack forwarded them.
grep -q 'hook=forward .*dst=127.0.0.1:5201' "$work/router.log" || {
	echo "$me: the router logged no forwarded flow:" >&2
	cat "$work/router.log" >&2
	exit 1
}

echo "$header"
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
print(f"{'path':>6} {'Gbit/s':>8} {'setup ms (median)':>18} {'setup ms (p90)':>15}")
for mode in ("ipv4", "6bed4"):
    g = [r for r in rows if r[0] == mode]
    med[mode] = [statistics.median(float(r[i]) for r in g) for i in (2, 3, 4)]
    print(f"{mode:>6} {med[mode][0]:>8.2f} {med[mode][1]:>18.3f} {med[mode][2]:>15.3f}")
print(f"6bed4/ipv4: throughput {med['6bed4'][0] / med['ipv4'][0]:.2f}, setup time {med['6bed4'][1] / med['ipv4'][1]:.1f}x")
EOF
