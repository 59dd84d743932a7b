#!/usr/bin/env bash
# What a funnel-only name costs a hooked program against a literal address
# (issue 10): one Python process makes BENCH_REQUESTS HTTP requests, a new
# connection each (http.client), to a small loopback server, alternating
# request by request between the literal address 127.0.0.1 and the name
# demo.test, which exists only in the profile:
#
#   funtun chain='hosts demo.test=127.0.0.1' python3 client.py 127.0.0.1 demo.test
#
# Alternating in one process puts both on the same machine load, which on
# a shared machine moves more than the difference measured. Beside it, in
# the same run: the same client unhooked (literal only: the name does not
# resolve), and under proxychains4 to microsocks (literal and name; the
# name resolved by microsocks, through a private /etc/hosts in a mount
# namespace of its own, made with unshare). Each figure is the median of
# a run's per-request times; the table shows the median over the rounds.
#
# Environment:
#   BENCH_REQUESTS  requests per address per run (default 300)
#   BENCH_ROUNDS    rounds of all runs, interleaved (default 3)
#   FUNTUN_BIN      use this binary instead of building bin/funtun
#   FUNTUN_PRELOAD  use this library instead of building it next to the binary
set -euo pipefail

requests=${BENCH_REQUESTS:-300}
rounds=${BENCH_ROUNDS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
me=names.sh
. "$(dirname "$0")/lib.sh"

need_tools cc python3 proxychains4 microsocks unshare ss
num BENCH_REQUESTS "$requests" 1 100000
num BENCH_ROUNDS "$rounds" 1 20

make_work /tmp/funtun-bench.XXXXXX

funtun_binary "$root/bin/funtun-core"
[[ -d $funtun ]] && funtun=$funtun/funtun # FUNTUN_BIN may name its directory
if [[ -z ${FUNTUN_PRELOAD:-} ]]; then
	# The launcher looks next to its binary; build the library there.
	(cd "$root" && cc -shared -fPIC -O2 -Wall -Wextra -o "$(dirname "$funtun")/libfuntun.so" preload/*.c -ldl -lpthread)
fi

next_port=25400
port_busy=listening
free_port
http_port=$port
free_port
socks_port=$port
lifetime=$((rounds * 3 * 300 + 60))

# The server answers each request with a short body and closes: the
# connection is the client's cost, not the server's.
cat >"$work/server.py" <<'EOF'
import asyncio, sys
RESP = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"
async def handle(r, w):
    try:
        await r.readuntil(b"\r\n\r\n")
        w.write(RESP)
        await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=512)
    async with s:
        await s.serve_forever()
asyncio.run(main())
EOF

# The client alternates its hosts request by request and prints, per
# host, the median and the mean of its per-request times in ms.
cat >"$work/client.py" <<'EOF'
import http.client, statistics, sys, time
port, n, hosts = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def one(host):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", "/")
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or body != b"hello\n":
        raise SystemExit(f"{host}: {r.status} {body!r}")
for h in hosts:
    one(h)  # warm-up: imports, the first lookup of each name
times = {h: [] for h in hosts}
for i in range(n):
    for h in hosts:
        t = time.perf_counter()
        one(h)
        times[h].append(time.perf_counter() - t)
for h in hosts:
    v = times[h]
    print(h, f"{statistics.median(v) * 1000:.4f}", f"{statistics.fmean(v) * 1000:.4f}")
EOF

start server python3 "$work/server.py" "$http_port"
wait_listening "$http_port" 100

# microsocks resolves demo.test through a hosts file of its own: a mount
# namespace (in a user namespace, so no root is needed) with it bound
# over /etc/hosts.
printf '127.0.0.1 localhost\n127.0.0.1 demo.test\n' >"$work/hosts"
start socks unshare -rm sh -c 'mount --bind "$0" /etc/hosts && exec microsocks -i 127.0.0.1 -p "$1"' "$work/hosts" "$socks_port"
wait_listening "$socks_port" 100
proxychains=$(proxychains_conf "$socks_port")
# Names go to the SOCKS server (proxychains4 hands the program a fake
# address for them), as its users run it for names only the far side knows.
sed -i 's/^\[ProxyList\]/proxy_dns\n&/' "$proxychains"

results=$work/results
: >"$results"

# measure MODE ROUND: one run of the client; records ms per request for
# each host it asked.
measure() {
	local mode=$1 round=$2 out pre=() hosts=(127.0.0.1 demo.test)
	case $mode in
	unhooked) hosts=(127.0.0.1) ;;
	funtun) pre=("$funtun" "chain=hosts demo.test=127.0.0.1") ;;
	proxychains) pre=(proxychains4 -q -f "$proxychains") ;;
	esac
	if ! out=$(timeout 300 "${pre[@]}" python3 "$work/client.py" "$http_port" "$requests" "${hosts[@]}" 2>"$work/client.err"); then
		echo "$me: $mode failed:" >&2
		cat "$work/client.err" >&2
		exit 1
	fi
	while read -r host median mean; do
		echo "$mode $host $round $median $mean" >>"$results"
	done <<<"$out"
}

modes=(unhooked funtun proxychains)
echo "$me: $requests requests per address per run, $rounds rounds, $(nproc) CPUs, load $(cut -d' ' -f1-2 /proc/loadavg)" >&2
for ((r = 1; r <= rounds; r++)); do
	rotate "$r" "${modes[@]}"
	for mode in "${order[@]}"; do
		echo "$me: round $r: $mode" >&2
		measure "$mode" "$r"
	done
done

python3 - "$results" "$requests" "$rounds" <<'EOF'
import statistics, sys
path, requests, rounds = sys.argv[1:]
runs = {}
for line in open(path):
    mode, host, rnd, median, mean = line.split()
    runs.setdefault((mode, host), []).append((float(median), float(mean)))
med = {k: statistics.median(m for m, _ in v) for k, v in runs.items()}
names = {"unhooked": "unhooked", "funtun": "funtun chain='hosts demo.test=127.0.0.1'", "proxychains": "proxychains4 + microsocks"}
print(f"HTTP request on a new connection, one Python process, {requests} requests per address per run, {rounds} rounds")
print(f"ms per request: median of the runs' medians (min, max of them; mean of the runs' means)")
for mode in ("unhooked", "funtun", "proxychains"):
    for host in ("127.0.0.1", "demo.test"):
        v = runs.get((mode, host))
        if not v:
            continue
        ms = [m for m, _ in v]
        print(f"  {names[mode]:<42} {host:<10} {med[mode, host]:7.3f}  ({min(ms):.3f} {max(ms):.3f}; mean {statistics.fmean(x for _, x in v):.3f})")
name, lit = med["funtun", "demo.test"], med["funtun", "127.0.0.1"]
ratio = name / lit
print(f"  funtun name / literal: {ratio:.2f}   (target: <= 1.2: {'MET' if ratio <= 1.2 else 'NOT MET'})")
print(f"  funtun literal / unhooked: {lit / med['unhooked', '127.0.0.1']:.2f}")
print(f"  funtun name / proxychains4 name: {name / med['proxychains', 'demo.test']:.2f}")
print(f"  proxychains4 name / literal: {med['proxychains', 'demo.test'] / med['proxychains', '127.0.0.1']:.2f}")
EOF
