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

die() { echo "$me: $*" >&2; exit 2; }
for tool in ss go timeout; do
	command -v "$tool" >/dev/null || die "needs $tool"
done
num() { [[ $2 =~ ^[0-9]+$ && $2 -ge $3 && $2 -le $4 ]] || die "$1 must be $3..$4"; }
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

work=$(mktemp -d /tmp/funtun-authflood-bench.XXXXXX)
groups=()
cleanup() {
	local g
	for g in "${groups[@]}"; do
		kill -TERM -- "-$g" 2>/dev/null || true
	done
	for g in "${groups[@]}"; do
		wait "$g" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${FUNTUN_BIN:-} ]]; then
	funtun=$FUNTUN_BIN
	[[ -d $funtun ]] && funtun=$funtun/funtun
else
	funtun=$work/funtun
	(cd "$root" && timeout 300 go build -o "$funtun" ./cmd/funtun)
fi
authflood=$work/authflood
(cd "$root" && timeout 300 go build -o "$authflood" ./bench/cmd/authflood)

listening() { [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]]; }
next_port=${BENCH_PORT:-27400}
free_port() {
	local try
	for ((try = 0; try < 200; try++)); do
		port=$next_port
		next_port=$((next_port + 1))
		listening "$port" || return 0
	done
	die "no free port near $next_port"
}
wait_listening() {
	local i
	for ((i = 0; i < 200; i++)); do
		listening "$1" && return 0
		sleep 0.05
	done
	echo "$me: nothing listens on port $1 after 10s" >&2
	return 1
}
# The server itself: timeout's only child.
child_of() {
	local i c
	for ((i = 0; i < 100; i++)); do
		c=$(cat "/proc/$1/task/$1/children" 2>/dev/null || true)
		c=${c%% *}
		[[ -n $c ]] && { echo "$c"; return 0; }
		sleep 0.02
	done
	echo "$me: process $1 has no child" >&2
	return 1
}

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
	timeout "$lifetime" "$funtun" socks5d --listen "127.0.0.1:$p" --users "$users" --max-conns 20000 profile=direct >"$log" 2>&1 &
	g=$!
	groups+=("$g")
	wait_listening "$p" || { cat "$log" >&2; exit 1; }
	pid=$(child_of "$g")
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
	kill -TERM -- "-$g" 2>/dev/null || true
	wait "$g" 2>/dev/null || true
	lines=$(wc -l <"$log")
	warns=$(grep -c 'level=WARN' "$log" || true)
	echo "  the server logged $lines lines in all, $warns of them warnings"
	echo
done
