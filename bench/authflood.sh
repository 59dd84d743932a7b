#!/usr/bin/env bash
# The auth-flood benchmark of issue 9 (item 2): `funtun socks5d --users FILE`
# under a flood of wrong RFC 1929 passwords, and a real user's login
# latency with the flood off and on. See bench/authflood.md for the figures.
#
# For each scenario, a fresh socks5d on a free loopback port, with a users
# file made by `funtun socks5d adduser` (bcrypt's default cost), and
# bench/cmd/authflood against it:
#   one   BENCH_CONNS connections at a time from 127.0.0.1, each sending one
#         wrong password and starting over when answered, for BENCH_SECONDS;
#         the real user logs in from the same address (a NAT, or the
#         attacker's neighbour on one host).
#   many  the same flood spread over BENCH_CONNS addresses 127.1.x.y (one per
#         connection: many hosts); the real user logs in from 127.0.0.2.
# In both, BENCH_LOGINS logins of the real user with the flood off, then as
# many during the flood; five other users log in for the first time during
# the flood (from 127.0.0.3); then the attackers leave at once and the
# server's CPU is watched until it goes idle.
#
# Environment:
#   BENCH_SCENARIOS  which scenarios, space separated (default "one many")
#   BENCH_CONNS      attacking connections at a time (default 700)
#   BENCH_SECONDS    length of the flood (default 10)
#   BENCH_LOGINS     the real user's logins per phase (default 100)
#   BENCH_PORT       first loopback port tried (default: free ones from 27400)
#   FUNTUN_BIN       use this binary instead of building ./cmd/funtun
#   BENCH_JSON       directory to keep each scenario's results in as JSON
set -euo pipefail

scenarios=${BENCH_SCENARIOS:-one many}
conns=${BENCH_CONNS:-700}
seconds=${BENCH_SECONDS:-10}
logins=${BENCH_LOGINS:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
me=authflood.sh
. "$(dirname "$0")/lib.sh"

need_tools ss go timeout
num BENCH_CONNS "$conns" 1 5000
num BENCH_SECONDS "$seconds" 1 120
num BENCH_LOGINS "$logins" 1 2000
for s in $scenarios; do
	[[ $s == one || $s == many ]] || die "BENCH_SCENARIOS: unknown scenario $s (one, many)"
done
# The flood holds BENCH_CONNS sockets in the client and as many in the
# server.
want_fds=$((2 * conns + 512))
if (($(ulimit -n) < want_fds)); then
	ulimit -n "$want_fds" 2>/dev/null || die "cannot raise the open-files limit to $want_fds (ulimit -n)"
fi

make_work /tmp/funtun-authflood-bench.XXXXXX

funtun_binary "$work/funtun"
[[ -d $funtun ]] && funtun=$funtun/funtun # FUNTUN_BIN may name its directory
authflood=$work/authflood
go_build "$authflood" ./bench/cmd/authflood

next_port=${BENCH_PORT:-27400}
port_busy=listening # free_port: ports nobody listens on

# The users file: the real user, and five who log in first during the
# flood. adduser hashes at bcrypt's default cost, as a real file would be.
users=$work/users
add() { echo "$2" | "$funtun" socks5d adduser "$users" "$1" 2>/dev/null; }
add alice 'correct horse'
cold=()
for i in 1 2 3 4 5; do
	add "new$i" "first-$i"
	cold+=("new$i:first-$i")
done
cold_list=$(IFS=,; echo "${cold[*]}")
cost=$(cut -d'$' -f3 <"$users" | head -1)

lifetime=$((3 * seconds + 120))
echo "$me: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), GOMAXPROCS ${GOMAXPROCS:-default}, bcrypt cost $cost, $($funtun --version 2>/dev/null || echo funtun)" >&2
echo "$me: each scenario: $logins logins with the flood off, then $conns attacking connections for ${seconds}s with $logins more logins" >&2
for scenario in $scenarios; do
	free_port
	p=$port
	log=$work/socks5d-$scenario.log
	start "socks5d-$scenario" "$funtun" socks5d --listen "127.0.0.1:$p" --users "$users" --max-conns 20000 profile=direct
	g=$started
	wait_listening "$p" || { cat "$log" >&2; exit 1; }
	pid=$(child_of "$g") # the server itself: timeout's only child
	case $scenario in
	one) flags=(--attack-from 127.0.0.1 --valid-from 127.0.0.1) ;;
	many) flags=(--attack-sources "$conns" --valid-from 127.0.0.2) ;;
	esac
	json=()
	[[ -n ${BENCH_JSON:-} ]] && json=(--json "$BENCH_JSON/authflood-$scenario.json")
	echo "$me: scenario $scenario" >&2
	timeout $((3 * seconds + 100)) "$authflood" --proxy "127.0.0.1:$p" --server-pid "$pid" \
		--user alice --pass 'correct horse' --cold "$cold_list" --cold-from 127.0.0.3 \
		--conns "$conns" --seconds "${seconds}s" --logins "$logins" --label "$scenario" \
		"${flags[@]}" "${json[@]}" || die "authflood against scenario $scenario failed"
	# socks5d sums up suppressed warnings at the end of each 10s period:
	# let the last one end before counting the log.
	sleep 11
	stop_group "$g"
	lines=$(wc -l <"$log")
	warns=$(grep -c 'level=WARN' "$log" || true)
	echo "  the server logged $lines lines in all, $warns of them warnings"
	echo
done
