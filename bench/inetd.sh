#!/usr/bin/env bash
# Connections per second to an echo service that starts /bin/cat for each
# connection (issue 11): `funtun inetd` against tcpserver (ucspi-tcp) and
# xinetd serving the same line, on 127.0.0.1. See bench/README.md and
# bench/inetd.md.
#
# Each connection: connect, write 64 bytes, read the 64-byte echo back,
# close (then cat reads end-of-file and exits); BENCH_CONNS of them,
# BENCH_PARALLEL at a time, by `bench/cmd/socksload short --plain` (the same
# Go client for every server). Reported per server: connections per second,
# latency, errors, and the server's own CPU per connection: utime + stime +
# cutime + cstime from /proc/PID/stat of every process in its process group,
# so the cat children it reaped count as its own (every server reaps its
# children; the script waits a second after each run so that all are).
#
# Every server runs the children as the invoking user, with no DNS or ident
# lookups (tcpserver -H -R -l0), no limit that 16 clients reach (tcpserver
# -c, xinetd instances/cps, funtun --max-children), and no log line per
# connection (funtun --quiet, tcpserver -q, xinetd log_on_success empty).
#
# Environment:
#   BENCH_ROUNDS    rounds, interleaved, order rotated each round; the table
#                   shows the median (default 3)
#   BENCH_CONNS     connections per run (default 5000)
#   BENCH_PARALLEL  connections at a time (default 16)
#   BENCH_PORT      first of the loopback ports used (default: free ones from 25600)
#   FUNTUN_BIN      use this binary instead of building ./cmd/funtun
#   BENCH_CSV       also write the raw results (one line per run) to this file
set -euo pipefail

rounds=${BENCH_ROUNDS:-3}
conns=${BENCH_CONNS:-5000}
parallel=${BENCH_PARALLEL:-16}
root=$(cd "$(dirname "$0")/.." && pwd)
me=inetd.sh
. "$(dirname "$0")/lib.sh"

need_tools tcpserver xinetd python3 ss go
num BENCH_ROUNDS "$rounds" 1 20
num BENCH_CONNS "$conns" 1 200000
num BENCH_PARALLEL "$parallel" 1 200

make_work /tmp/funtun-inetd.XXXXXX
funtun_binary "$work/funtun"
socksload=$work/socksload
go_build "$socksload" ./bench/cmd/socksload

next_port=${BENCH_PORT:-25600}
lifetime=$((rounds * 3 * 260 + 300))
hz=$(getconf CLK_TCK)
me_user=$(id -un)
cat_bin=/bin/cat

modes=(funtun tcpserver xinetd)
declare -A port_of group_of
for mode in "${modes[@]}"; do
	free_port
	p=$port
	case $mode in
	funtun)
		echo "127.0.0.1:$p stream tcp nowait $me_user $cat_bin cat" >"$work/inetd.conf"
		start funtun "$funtun" --quiet inetd --config "$work/inetd.conf" --max-children 10000
		;;
	tcpserver)
		start tcpserver tcpserver -q -H -R -l 0 -c 10000 127.0.0.1 "$p" "$cat_bin"
		;;
	xinetd)
		cat >"$work/xinetd.conf" <<EOF
defaults
{
	instances      = UNLIMITED
	per_source     = UNLIMITED
	cps            = 1000000 1
	log_type       = FILE $work/xinetd-service.log
	log_on_success =
	log_on_failure = HOST
}
service funtun-bench-echo
{
	type        = UNLISTED
	port        = $p
	bind        = 127.0.0.1
	socket_type = stream
	protocol    = tcp
	wait        = no
	user        = $me_user
	server      = $cat_bin
}
EOF
		start xinetd xinetd -dontfork -f "$work/xinetd.conf" -pidfile "$work/xinetd.pid"
		;;
	esac
	group_of[$mode]=$started
	port_of[$mode]=$p
	wait_listening "$p" || { cat "$work/$mode.log" >&2; exit 1; }
done

results=$work/results
: >"$results"

# short MODE CONNS: one run of the load; leaves its JSON in $work/short.json.
short() {
	timeout 300 "$socksload" short --plain --target "127.0.0.1:${port_of[$1]}" \
		--conns "$2" --parallel "$parallel" --payload 64 --max-time 240s >"$work/short.json" ||
		die "socksload short against $1 failed"
}

# Warm-up, not counted: first connections pay one-off costs (page cache,
# the servers' first allocations).
for mode in "${modes[@]}"; do
	short "$mode" 200
done
sleep 1

read -r load1 load5 _ </proc/loadavg
header="$(nproc) CPUs, load $load1 $load5, $(uname -r), $conns connections per run, $parallel at a time, $rounds rounds, child $cat_bin"
echo "$me: $header" >&2
for ((r = 1; r <= rounds; r++)); do
	rotate "$r" "${modes[@]}"
	for mode in "${order[@]}"; do
		echo "$me: round $r: $mode" >&2
		before=$(group_ticks "${group_of[$mode]}")
		short "$mode" "$conns"
		# Let the last children exit and be reaped (their CPU then
		# shows in the server's cutime and cstime).
		sleep 1
		after=$(group_ticks "${group_of[$mode]}")
		python3 - "$work/short.json" "$mode" "$r" $((after - before)) "$hz" >>"$results" <<'PY'
import json, sys
path, mode, rnd, ticks, hz = sys.argv[1:]
j = json.load(open(path))
for s in j.get("error_samples") or []:
    print(f"{mode}: {s}", file=sys.stderr)
if j.get("timed_out"):
    print(f"{mode}: stopped starting connections at the time limit", file=sys.stderr)
print(f"short {mode} {rnd} {j['cps']:.1f} {j['p50_ms']:.3f} {j['p99_ms']:.3f} {j['errors']} {j['ok']} {int(ticks)/int(hz):.2f}")
PY
	done
done

[[ -n ${BENCH_CSV:-} ]] && cp "$results" "$BENCH_CSV"

echo "$header"
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = lambda xs: statistics.median(xs) if xs else float("nan")
ratio = lambda a, b: a / b if b else float("nan")
verdict = lambda ok: "MET" if ok else "MISSED"
runs = {}
for _, mode, rnd, cps, p50, p99, errs, ok, cpu in rows:
    runs.setdefault(mode, []).append((float(cps), float(p50), float(p99), int(errs), int(ok), float(cpu)))
print("A program per connection: connect, 64-byte echo through /bin/cat, close (median of rounds; errors summed)")
print(f"{'server':>10} {'conn/s':>8} {'min':>8} {'max':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'CPU µs/conn':>11}")
cps, cpu, errs = {}, {}, {}
for mode in ("funtun", "tcpserver", "xinetd"):
    xs = runs[mode]
    c = [x[0] for x in xs]
    cps[mode] = med(c)
    errs[mode] = sum(x[3] for x in xs)
    cpu[mode] = med([1e6 * x[5] / x[4] for x in xs if x[4]])
    print(f"{mode:>10} {cps[mode]:>8.0f} {min(c):>8.0f} {max(c):>8.0f} {med([x[1] for x in xs]):>7.2f} {med([x[2] for x in xs]):>7.2f} {errs[mode]:>6} {cpu[mode]:>11.0f}")
f = "funtun"
print(f"{'':>10} conn/s: funtun/tcpserver {ratio(cps[f], cps['tcpserver']):.2f}  funtun/xinetd {ratio(cps[f], cps['xinetd']):.2f}"
      f"  (target: funtun/tcpserver >= 1.0 with zero errors: {verdict(cps[f] >= cps['tcpserver'] and errs[f] == 0)})")
print(f"{'':>10} CPU/conn (children included): funtun/tcpserver {ratio(cpu[f], cpu['tcpserver']):.2f}  funtun/xinetd {ratio(cpu[f], cpu['xinetd']):.2f}")
EOF
