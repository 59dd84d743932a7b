#!/usr/bin/env bash
# Idle flows held open through funtun (issue 8): the funtun process's memory
# and descriptors per idle flow, all on 127.0.0.1. See bench/README.md and
# bench/engine.md.
#
#   forward   `funtun forward --listen P --to ECHO profile=direct`, the flows
#             opened by bench/clients/idlec.c.
#   preload   the LD_PRELOAD hook's relay path: idlec run under the launcher,
#             `funtun chain='socks5 server=127.0.0.1:M' idlec ECHO …`, M a
#             microsocks (or a second funtun socks5d, BENCH_UPSTREAM). With a
#             socks5 piece the funnel does not hand the program's socket
#             off: it connects it to a loopback hub of its own and relays
#             the flow from there through the piece to M. The launcher's
#             process (the funnel) is measured; M is not.
#   socks5d   `funtun socks5d profile=direct`, for comparison, the flows
#             opened by bench/cmd/socksload idle (CONNECT, then the same echo).
#
# Each flow proves it relays with one 16-byte echo and then carries nothing.
# The funtun process is fresh; VmRSS, its descriptors (sockets and pipes
# apart) and threads are read before the flows open and again 2 s after the
# last one opened; then every flow is checked to still relay ("alive").
#
# Environment:
#   BENCH_IDLE_ONLY which cases, space separated (default "forward preload socks5d")
#   BENCH_FLOWS     idle flows held (default 5000)
#   BENCH_UPSTREAM  the SOCKS5 server behind the preload case: microsocks or
#                   socks5d (a second `funtun socks5d`) (default microsocks)
#   BENCH_SETTLE    seconds between the last flow opening and the reading (default 2)
#   BENCH_PORT      first of the loopback ports used (default: free ones from 25600)
#   FUNTUN_BIN      use this binary instead of building ./cmd/funtun
#   FUNTUN_PRELOAD  use this libfuntun.so; default: the one beside a FUNTUN_BIN
#                   from outside this tree, else one built from preload/*.c
#   BENCH_CSV       also write the raw results (one line per case) to this file
#   BENCH_PROFILE   a directory: each funtun process serves --pprof, and once
#                   its flows are held (after the reading) its heap profile
#                   (CASE.heap.pb.gz, after a forced collection) and the
#                   runtime's memory statistics (CASE.heap.txt) are saved
#                   there; with GODEBUG=memprofilerate=1 in the environment
#                   the profile counts every allocation
set -euo pipefail

only=${BENCH_IDLE_ONLY:-forward preload socks5d}
flows=${BENCH_FLOWS:-5000}
upstream=${BENCH_UPSTREAM:-microsocks}
settle=${BENCH_SETTLE:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
me=idle.sh
. "$(dirname "$0")/lib.sh"

num BENCH_FLOWS "$flows" 1 20000
num BENCH_SETTLE "$settle" 0 60
for c in $only; do
	[[ $c == forward || $c == preload || $c == socks5d ]] || die "BENCH_IDLE_ONLY: unknown case $c (forward, preload, socks5d)"
done
wants() { [[ " $only " == *" $1 "* ]]; }
[[ $upstream == microsocks || $upstream == socks5d ]] || die "BENCH_UPSTREAM must be microsocks or socks5d"
tools=(gcc python3 ss go)
wants preload && [[ $upstream == microsocks ]] && tools+=(microsocks)
need_tools "${tools[@]}"

# Each flow costs the client one descriptor, funtun two, the echo server
# one, and the preload case's upstream two.
need=$((2 * flows + 256))
hard=$(ulimit -Hn)
want=65536
[[ $hard != unlimited && $hard -lt $want ]] && want=$hard
((want >= need)) || die "$flows flows need an open-files limit of $need, the hard limit is $hard (lower BENCH_FLOWS)"
ulimit -n "$want" || die "cannot raise the open-files limit to $want"

# Every helper runs under timeout(1) in a process group of its own (start):
# stopping the group stops the launcher's program too.
make_work /tmp/funtun-idle-bench.XXXXXX

funtun_binary "$work/funtun"
if wants preload && [[ -z ${FUNTUN_PRELOAD:-} ]]; then
	# The library must match the binary's control protocol: a binary built
	# elsewhere brings the one beside it, if there is one (where the
	# launcher looks first); one built from this tree (run-all.sh's
	# bin/funtun, whose bin/libfuntun.so may be older) gets a fresh build.
	bindir=""
	[[ -n ${FUNTUN_BIN:-} ]] && bindir=$(cd "$(dirname "$FUNTUN_BIN")" && pwd)
	if [[ -n $bindir && $bindir != "$root"/* && -f $bindir/libfuntun.so ]]; then
		FUNTUN_PRELOAD=$bindir/libfuntun.so
	else
		[[ -n $bindir && $bindir != "$root"/* ]] && echo "$me: no libfuntun.so beside $FUNTUN_BIN: building one from $root/preload (set FUNTUN_PRELOAD if that is not the binary's)" >&2
		FUNTUN_PRELOAD=$work/libfuntun.so
		(cd "$root" && timeout 300 cc -shared -fPIC -O2 -Wall -Wextra -o "$FUNTUN_PRELOAD" preload/*.c -ldl -lpthread)
	fi
	export FUNTUN_PRELOAD
fi
socksload=$work/socksload
go_build "$socksload" ./bench/cmd/socksload
idlec=$work/idlec
timeout 300 gcc -O2 -Wall -Wextra -o "$idlec" "$root/bench/clients/idlec.c"

next_port=${BENCH_PORT:-25600} # free_port: ports no socket uses

# The longest any helper may live: every case opening, holding and checking
# its flows at their time limits, with slack.
lifetime=$((3 * (180 + 240 + 120) + 300))

# Here child_of waits up to 5 s (250 tries) for a child to appear.
# snapshot PID: "RSS threads sockets pipes other" of a process.
snapshot() { echo "$(vmrss_kib "$1") $(threads "$1") $(fd_kinds "$1")"; }

results=$work/results
: >"$results"

# pprof_args CASE: the options that make a case's funtun serve --pprof when
# BENCH_PROFILE asks for profiles (sets pprof_port), else none.
profile_dir=${BENCH_PROFILE:-}
if [[ -n $profile_dir ]]; then
	mkdir -p "$profile_dir" || die "BENCH_PROFILE: cannot make $profile_dir"
fi
pprof_args=()
pprof_for() {
	pprof_args=()
	[[ -n $profile_dir ]] || return 0
	free_port
	pprof_port=$port
	pprof_args=(--pprof "127.0.0.1:$pprof_port")
}
# save_profile CASE: the heap profile and memory statistics of the case's
# funtun (BENCH_PROFILE).
save_profile() {
	[[ -n $profile_dir ]] || return 0
	local url=http://127.0.0.1:$pprof_port/debug/pprof/heap
	python3 - "$url" "$profile_dir/$1" <<'PY' || echo "$me: $1: no heap profile from $url" >&2
import sys, urllib.request
url, out = sys.argv[1:]
for query, suffix in (("?gc=1", ".heap.pb.gz"), ("?debug=1", ".heap.txt")):
    with urllib.request.urlopen(url + query, timeout=60) as r, open(out + suffix, "wb") as f:
        f.write(r.read())
PY
}

# hold CASE FUNTUN_PID CLIENT_PID CLIENT_LOG BEFORE [GOFILE]: lets the
# client open its flows (touching GOFILE first, if it waits for one), reads
# the funtun process once they are open (BEFORE is its snapshot from before
# them), has the client check its flows, and records the result line.
hold() {
	local mode=$1 pid=$2 client=$3 log=$4 before=$5 go=${6:-} opened after
	[[ -n $go ]] && touch "$go"
	wait_ready "$work/ready" "$client" 1900 || { cat "$log" >&2; die "$mode: the flows did not open within 190s"; }
	read -r opened _ <"$work/ready"
	# Settle: the last flows' first bytes may still be on their way.
	sleep "$settle"
	kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "$mode: the funtun process is gone"; }
	after=$(snapshot "$pid")
	save_profile "$mode"
	kill -USR1 "$client" 2>/dev/null || { cat "$log" >&2; die "$mode: the client is gone"; }
	wait_gone "$client" 1200
	python3 - "$log" "$mode" "$flows" "$opened" "$before" "$after" >>"$results" <<'EOF'
import json, sys
path, mode, flows, opened, before, after = sys.argv[1:]
lines = [l for l in open(path, errors="replace") if l.startswith("{")]
if not lines:
    sys.exit(f"idle.sh: {mode}: the client reported nothing; its log: {open(path, errors='replace').read()[-2000:]}")
j = json.loads(lines[-1])
for s in j.get("error_samples") or []:
    print(f"{mode}: {s}", file=sys.stderr)
n = max(int(opened), 1)
rss0, th0, s0, p0, o0 = map(int, before.split())
rss1, th1, s1, p1, o1 = map(int, after.split())
print(f"idle {mode} {flows} {opened} {j['alive_after_hold']} {rss0} {rss1} {(rss1 - rss0) / n:.3f} "
      f"{(s1 + p1 + o1 - s0 - p0 - o0) / n:.3f} {(s1 - s0) / n:.3f} {p0} {p1} {o1 - o0} {th0} {th1}")
EOF
}

read -r load1 load5 _ </proc/loadavg
header="$(nproc) CPUs, load $load1 $load5, $(uname -r), $flows idle flows per case"
echo "$me: $header" >&2

if wants forward; then
	start_echo echo-forward
	free_port
	p=$port
	pprof_for forward
	start forward "$funtun" --quiet forward "${pprof_args[@]}" --listen "127.0.0.1:$p" --to "127.0.0.1:$echo_port" profile=direct
	fwd_group=$started
	wait_listening "$p" || { cat "$work/forward.log" >&2; exit 1; }
	fwd_pid=$(child_of "$fwd_group" 250)
	rm -f "$work/ready" "$work/go"
	start idlec-forward "$idlec" -g "$work/go" -H 240 127.0.0.1 "$p" "$flows" "$work/ready"
	client_pid=$(child_of "$started" 250)
	sleep 1 # a settled process, before any flow
	echo "$me: forward: opening $flows idle flows" >&2
	hold forward "$fwd_pid" "$client_pid" "$work/idlec-forward.log" "$(snapshot "$fwd_pid")" "$work/go"
	stop_group "$fwd_group"
	stop_group "$echo_group"
fi

if wants preload; then
	start_echo echo-preload
	free_port
	m=$port
	case $upstream in
	microsocks) start upstream microsocks -i 127.0.0.1 -p "$m" ;;
	socks5d) start upstream "$funtun" --quiet socks5d --listen "127.0.0.1:$m" --max-conns 20000 profile=direct ;;
	esac
	up_group=$started
	wait_listening "$m" || { cat "$work/upstream.log" >&2; exit 1; }
	rm -f "$work/ready" "$work/go"
	# The launcher runs the funnel in its own process and the program as
	# its child: timeout -> funtun (measured) -> idlec.
	pprof_for preload
	start idlec-preload "$funtun" --quiet "${pprof_args[@]}" chain="socks5 server=127.0.0.1:$m" \
		"$idlec" -g "$work/go" -H 240 127.0.0.1 "$echo_port" "$flows" "$work/ready"
	launcher_group=$started
	launcher_pid=$(child_of "$launcher_group" 250)
	client_pid=$(child_of "$launcher_pid" 250)
	sleep 1
	echo "$me: preload: opening $flows idle flows" >&2
	hold preload "$launcher_pid" "$client_pid" "$work/idlec-preload.log" "$(snapshot "$launcher_pid")" "$work/go"
	if [[ $upstream == microsocks ]]; then
		# Proof that the flows went through the socks5 piece: microsocks
		# logs a line per CONNECT.
		echo "note upstream_connects $(grep -c "connected to 127.0.0.1:$echo_port" "$work/upstream.log" || true)" >>"$results"
	fi
	stop_group "$launcher_group"
	stop_group "$up_group"
	stop_group "$echo_group"
fi

if wants socks5d; then
	start_echo echo-socks5d
	free_port
	p=$port
	pprof_for socks5d
	start socks5d "$funtun" --quiet socks5d "${pprof_args[@]}" --listen "127.0.0.1:$p" --max-conns 20000 profile=direct
	s5_group=$started
	wait_listening "$p" || { cat "$work/socks5d.log" >&2; exit 1; }
	s5_pid=$(child_of "$s5_group" 250)
	rm -f "$work/ready"
	# socksload opens its sessions at once: snapshot first, then start it.
	sleep 1
	before=$(snapshot "$s5_pid")
	echo "$me: socks5d: opening $flows idle flows" >&2
	start socksload-idle "$socksload" idle --proxy "127.0.0.1:$p" --target "127.0.0.1:$echo_port" \
		--sessions "$flows" --ready "$work/ready" --hold 240s
	client_pid=$(child_of "$started" 250)
	hold socks5d "$s5_pid" "$client_pid" "$work/socksload-idle.log" "$before"
	stop_group "$s5_group"
	stop_group "$echo_group"
fi

[[ -n ${BENCH_CSV:-} ]] && cp "$results" "$BENCH_CSV"

echo "$header"
python3 - "$results" "$upstream" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
upstream = sys.argv[2]
verdict = lambda ok: "MET" if ok else "MISSED"
idle = {r[1]: r for r in rows if r[0] == "idle"}
notes = {r[1]: r[2:] for r in rows if r[0] == "note"}
names = {"forward": "forward", "preload": "preload relay", "socks5d": "socks5d"}
print("Idle flows held open: growth of the funtun process from before the flows to while they are held")
print(f"{'case':>13} {'flows':>6} {'alive':>6} {'RSS before':>11} {'RSS after':>11} {'KiB/flow':>8} {'fds/flow':>8} {'sockets/flow':>12} {'pipe fds':>8} {'threads':>9}")
for mode in ("forward", "preload", "socks5d"):
    if mode not in idle:
        continue
    _, _, flows, opened, alive, rss0, rss1, kib, fds, socks, p0, p1, other, th0, th1 = idle[mode]
    print(f"{names[mode]:>13} {opened:>6} {alive:>6} {rss0 + ' KiB':>11} {rss1 + ' KiB':>11} {float(kib):>8.2f} {float(fds):>8.3f} {float(socks):>12.3f} {p0 + '->' + p1:>8} {th0 + '->' + th1:>9}")
for mode in ("forward", "preload"):
    if mode not in idle:
        continue
    r = idle[mode]
    kib, socks, pipes = float(r[7]), float(r[9]), int(r[11]) - int(r[10])
    ok = r[3] == r[2] and r[4] == r[3]
    # A few sockets of the process's own (a launcher's control connection,
    # a hub's listener) are not a per-flow cost: allow 8 beyond 2 per flow.
    # The relays' shared free list keeps at most 64 empty pipes, whatever
    # the number of flows: a constant, not a per-flow cost either.
    n = max(int(r[3]), 1)
    socks_ok = socks * n <= 2 * n + 8
    print(f"{'':>13} {names[mode]}: {kib:.2f} KiB/flow (target <= 1.5: {verdict(kib <= 1.5)}), "
          f"{socks:.2f} sockets/flow + {pipes} more pipe fds (target: 2 per flow, pipes pooled (<= 128): {verdict(socks_ok and pipes <= 128)}), "
          f"all flows open and alive: {'yes' if ok else 'NO'}")
bad = [names[m] for m, r in idle.items() if not (r[3] == r[2] and r[4] == r[3])]
if "preload" in idle:
    line = f"{'':>13} preload relay: upstream {upstream} (not measured)"
    if "upstream_connects" in notes:
        line += f", which logged {notes['upstream_connects'][0]} CONNECTs to the echo server (the flows went through the socks5 piece)"
    print(line)
if bad:
    sys.exit(f"idle.sh: not every flow opened and stayed alive: {', '.join(bad)}")
EOF
