#!/usr/bin/env bash
# Short connections through `funtun forward profile=direct` (issue 8), side
# by side with the same load through `socat TCP-LISTEN:P,fork`, through
# systemd-socket-proxyd started by systemd-socket-activate, and straight to
# the echo server, all on 127.0.0.1. See bench/README.md and bench/engine.md.
#
# Each connection: connect, write 64 bytes, read the 64-byte echo back,
# close; BENCH_CONNS of them, BENCH_PARALLEL at a time, by
# `bench/cmd/socksload short --plain` (the same Go client for every peer).
# Reported per peer: connections per second, latency, errors, and the
# forwarder's own CPU per connection (user + system time of its process
# group from /proc/PID/stat: all of funtun's threads; socat's parent and
# its forked per-connection children, live or reaped; the proxyd process,
# which systemd-socket-activate exec()s into on the first connection).
#
# Environment:
#   BENCH_ROUNDS      rounds, interleaved, order rotated each round; the table
#                     shows the median (default 3)
#   BENCH_CONNS       connections per run (default 20000)
#   BENCH_PARALLEL    connections at a time (default 32)
#   BENCH_SOCAT_CONNS connections per socat run (default 2000): socat forks a
#                     process per connection and makes about 100-150 a second
#                     on a 2-CPU VM, so 20,000 would take three minutes a run;
#                     conn/s and CPU per connection are rates either way
#   BENCH_SOCAT_BACKLOG  listen backlog socat asks for (backlog=N); default:
#                     socat's own (5), as `TCP-LISTEN:P,fork` runs it
#   BENCH_PORT        first of the loopback ports used (default: free ones from 25400)
#   FUNTUN_BIN        use this binary instead of building ./cmd/funtun
#   BENCH_CSV         also write the raw results (one line per run) to this file
set -euo pipefail

rounds=${BENCH_ROUNDS:-3}
conns=${BENCH_CONNS:-20000}
parallel=${BENCH_PARALLEL:-32}
socat_conns=${BENCH_SOCAT_CONNS:-2000}
socat_backlog=${BENCH_SOCAT_BACKLOG:-}
root=$(cd "$(dirname "$0")/.." && pwd)
me=forward-short.sh
. "$(dirname "$0")/lib.sh"

need_tools socat systemd-socket-activate python3 ss go
proxyd=""
for p in /lib/systemd/systemd-socket-proxyd /usr/lib/systemd/systemd-socket-proxyd; do
	[[ -x $p ]] && { proxyd=$p; break; }
done
[[ -n $proxyd ]] || die "needs systemd-socket-proxyd (Debian package systemd)"
num BENCH_ROUNDS "$rounds" 1 20
num BENCH_CONNS "$conns" 1 200000
num BENCH_PARALLEL "$parallel" 1 200
num BENCH_SOCAT_CONNS "$socat_conns" 1 200000
[[ -z $socat_backlog ]] || num BENCH_SOCAT_BACKLOG "$socat_backlog" 1 65535

# Every helper runs under timeout(1) in a process group of its own (start):
# the forwarder's CPU is its group's (group_ticks), socat's per-connection
# children included, and stopping the group stops those too.
make_work /tmp/funtun-forward-short.XXXXXX

funtun_binary "$work/funtun"
socksload=$work/socksload
go_build "$socksload" ./bench/cmd/socksload

next_port=${BENCH_PORT:-25400} # free_port: ports no socket uses

# The longest any helper may live: every run at its time limit, with slack.
lifetime=$((rounds * 4 * 260 + 300))

hz=$(getconf CLK_TCK)

modes=(direct funtun socat proxyd)
declare -A port_of group_of
for mode in "${modes[@]}"; do
	# One echo server per peer: each run leaves its connections to the echo
	# port in TIME_WAIT, and the peers must not share that.
	start_echo "echo-$mode"
	if [[ $mode == direct ]]; then
		port_of[$mode]=$echo_port
		continue
	fi
	free_port
	p=$port
	case $mode in
	funtun)
		# --quiet: no peer logs a line per connection.
		start funtun "$funtun" --quiet forward --listen "127.0.0.1:$p" --to "127.0.0.1:$echo_port" profile=direct
		;;
	socat)
		start socat socat "TCP-LISTEN:$p,bind=127.0.0.1,fork,reuseaddr${socat_backlog:+,backlog=$socat_backlog}" "TCP:127.0.0.1:$echo_port"
		;;
	proxyd)
		# systemd-socket-activate listens, and on the first connection
		# exec()s proxyd in its own process with the listener as fd 3.
		start proxyd systemd-socket-activate -l "127.0.0.1:$p" "$proxyd" "127.0.0.1:$echo_port"
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

# A short warm-up of every peer, not counted: proxyd is exec()ed by the
# first connection, and every peer's first connections pay one-off costs.
for mode in "${modes[@]}"; do
	short "$mode" 200
done
sleep 1

read -r load1 load5 _ </proc/loadavg
header="$(nproc) CPUs, load $load1 $load5, $(uname -r), $conns connections per run (socat: $socat_conns), $parallel at a time, $rounds rounds"
echo "$me: $header" >&2
for ((r = 1; r <= rounds; r++)); do
	rotate "$r" "${modes[@]}"
	for mode in "${order[@]}"; do
		echo "$me: round $r: $mode" >&2
		before=0 after=0
		[[ $mode != direct ]] && before=$(group_ticks "${group_of[$mode]}")
		n=$conns
		[[ $mode == socat ]] && n=$socat_conns
		short "$mode" "$n"
		# Let socat's last children exit and be reaped, and the close-downs
		# of this run settle before the next.
		sleep 1
		[[ $mode != direct ]] && after=$(group_ticks "${group_of[$mode]}")
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
print("Short connections: connect, 64-byte echo, close (median of rounds; errors summed)")
print(f"{'peer':>8} {'conn/s':>8} {'min':>8} {'max':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'CPU µs/conn':>11}")
cps, cpu, errs = {}, {}, {}
for mode in ("direct", "funtun", "socat", "proxyd"):
    if mode not in runs:
        continue
    xs = runs[mode]
    c = [x[0] for x in xs]
    cps[mode] = med(c)
    errs[mode] = sum(x[3] for x in xs)
    per = "-"
    if mode != "direct":
        cpu[mode] = med([1e6 * x[5] / x[4] for x in xs if x[4]])
        per = f"{cpu[mode]:.0f}"
    print(f"{mode:>8} {cps[mode]:>8.0f} {min(c):>8.0f} {max(c):>8.0f} {med([x[1] for x in xs]):>7.2f} {med([x[2] for x in xs]):>7.2f} {errs[mode]:>6} {per:>11}")
f = "funtun"
print(f"{'':>8} conn/s: funtun/socat {ratio(cps[f], cps['socat']):.2f}  funtun/proxyd {ratio(cps[f], cps['proxyd']):.2f}  funtun/direct {ratio(cps[f], cps['direct']):.2f}"
      f"  (target: ahead of both with zero errors: {verdict(cps[f] > cps['socat'] and cps[f] > cps['proxyd'] and errs[f] == 0)})")
print(f"{'':>8} CPU/conn: funtun/socat {ratio(cpu[f], cpu['socat']):.2f}  funtun/proxyd {ratio(cpu[f], cpu['proxyd']):.2f}"
      f"  (target: funtun/proxyd <= 1: {verdict(cpu[f] <= cpu['proxyd'])})")
EOF
