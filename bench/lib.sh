# Shell helpers of the benchmark scripts in bench/. Not a benchmark: each
# script sources it (run-all.sh passes it over), after setting
#
#	root   the tree, $(cd "$(dirname "$0")/.." && pwd)
#	me     the script's name, which begins its messages
#
# and sets, before calling the helpers that use them: work (make_work),
# lifetime (start), next_port (free_port), socksload (start_echo), results
# and hz where the script's own code reads them. Sourcing it defines
# functions and the empty arrays pids and groups, and runs nothing else.

# die MSG...: says MSG on stderr as the script's and exits 2.
die() { echo "$me: $*" >&2; exit 2; }

# need_tools TOOL...: dies unless every TOOL is on PATH.
need_tools() {
	local tool
	for tool; do
		command -v "$tool" >/dev/null || die "needs $tool"
	done
}

# num NAME VALUE LO HI: dies unless VALUE is a whole number from LO to HI.
num() { [[ $2 =~ ^[0-9]+$ && $2 -ge $3 && $2 -le $4 ]] || die "$1 must be $3..$4"; }

# --- helper processes and the scratch directory ---------------------------

pids=()   # helpers stopped at exit by their pid (kill PID)
groups=() # helpers stopped at exit by their process group (kill -- -PGID)

# make_work TEMPLATE: makes the scratch directory work (mktemp -d TEMPLATE)
# and sets traps so that on exit every helper in pids and groups is stopped
# and work removed; INT and TERM exit 130.
make_work() {
	work=$(mktemp -d "$1")
	trap cleanup EXIT
	trap 'exit 130' INT TERM
}
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	# Every helper in groups runs under timeout(1), which leads a process
	# group of its own: killing the group reaches the children its
	# command forks too (socat's and danted's, the launcher's program).
	for p in "${groups[@]}"; do
		kill -TERM -- "-$p" 2>/dev/null || true
	done
	for p in "${pids[@]}" "${groups[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$work"
}

# start NAME CMD...: runs CMD under timeout(1) for at most lifetime seconds,
# in its own process group, its output in $work/NAME.log; sets started to
# the group (timeout's pid) and adds it to groups.
start() {
	local name=$1
	shift
	timeout "$lifetime" "$@" >"$work/$name.log" 2>&1 &
	started=$!
	groups+=("$started")
}
# stop_group PGID: stops a group that start started, and waits for it.
stop_group() {
	kill -TERM -- "-$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# child_of PID [TRIES]: the process's only (first) child, such as the
# command under a timeout(1), waiting up to TRIES times 20 ms (default 100)
# for it to appear. Every thread's: a Go process forks from whichever thread.
child_of() {
	local i c
	for ((i = 0; i < ${2:-100}; i++)); do
		c=$(cat /proc/"$1"/task/*/children 2>/dev/null || true)
		c=${c%% *}
		[[ -n $c ]] && { echo "$c"; return 0; }
		sleep 0.02
	done
	echo "$me: process $1 has no child" >&2
	return 1
}

# wait_ready FILE PID TRIES: waits, checking TRIES times 0.1 s apart, until
# FILE has something in it (a client's "all open" file) or process PID is
# gone; fails if FILE is still empty.
wait_ready() {
	local i
	for ((i = 0; i < $3; i++)); do
		[[ -s $1 ]] && break
		kill -0 "$2" 2>/dev/null || break
		sleep 0.1
	done
	[[ -s $1 ]]
}
# wait_gone PID TRIES: waits, checking TRIES times 0.1 s apart, until
# process PID is gone.
wait_gone() {
	local i
	for ((i = 0; i < $2; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
}

# --- loopback ports --------------------------------------------------------

listening() { [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]]; }
# A port held by any socket, even in TIME-WAIT, may refuse a listener.
in_use() { [[ -n $(ss -tanH "sport = :$1" 2>/dev/null) ]]; }

# free_port sets port to the first port from next_port on that the test
# port_busy (in_use, or listening where only listeners matter) passes over,
# and moves next_port past it, so no port is handed out twice (a $(…)
# subshell would lose next_port).
port_busy=in_use
free_port() {
	local try
	for ((try = 0; try < 200; try++)); do
		port=$next_port
		next_port=$((next_port + 1))
		"$port_busy" "$port" || return 0
	done
	die "no free port near $next_port"
}

# wait_listening PORT [TRIES]: waits until something listens on PORT,
# checking TRIES times 50 ms apart (default 200: 10 s); else says so and
# fails.
wait_listening() {
	local i tries=${2:-200}
	for ((i = 0; i < tries; i++)); do
		listening "$1" && return 0
		sleep 0.05
	done
	echo "$me: nothing listens on port $1 after $((tries / 20))s" >&2
	return 1
}

# --- what is measured ------------------------------------------------------

# go_build OUT PACKAGE: builds PACKAGE of the tree (./cmd/funtun,
# ./bench/cmd/socksload, …) into OUT.
go_build() { (cd "$root" && timeout 300 go build -o "$1" "$2"); }

# funtun_binary OUT: sets funtun to FUNTUN_BIN if that is set, else builds
# ./cmd/funtun into OUT and sets funtun to that.
funtun_binary() {
	if [[ -n ${FUNTUN_BIN:-} ]]; then
		funtun=$FUNTUN_BIN
	else
		funtun=$1
		go_build "$funtun" ./cmd/funtun
	fi
}

# start_echo NAME: a socksload echo server on a free loopback port, started
# as helper NAME; sets echo_target (its IP:PORT), echo_port and echo_group.
start_echo() {
	local i
	start "$1" "$socksload" echo --listen 127.0.0.1:0
	echo_group=$started
	for ((i = 0; i < 100; i++)); do
		[[ -s $work/$1.log ]] && break
		sleep 0.05
	done
	echo_target=$(head -1 "$work/$1.log")
	[[ $echo_target == 127.0.0.1:* ]] || die "the echo server $1 did not start"
	echo_port=${echo_target##*:}
}

# proxychains_conf PORT: writes a proxychains4 configuration for the SOCKS5
# server on 127.0.0.1:PORT, and prints its path.
proxychains_conf() {
	cat >"$work/proxychains-$1.conf" <<EOF
strict_chain
quiet_mode
tcp_read_time_out 15000
tcp_connect_time_out 8000
[ProxyList]
socks5 127.0.0.1 $1
EOF
	echo "$work/proxychains-$1.conf"
}

# rotate ROUND ITEM...: sets order to the ITEMs turned left ROUND-1 times,
# so that over the rounds no mode always runs first.
rotate() {
	local round=$1 k
	shift
	order=("$@")
	for ((k = 0; k < (round - 1) % $#; k++)); do order=("${order[@]:1}" "${order[0]}"); done
}

# --- reading a process from /proc ------------------------------------------

# cpu_ticks PID: CPU ticks of a process, its threads, and its children
# already reaped (socat forks one child per connection).
cpu_ticks() {
	local stat
	stat=$(cat "/proc/$1/stat")
	stat=${stat##*) }
	# After the ") ", field 3 of stat is the 1st word; utime..cstime are 14..17.
	awk '{print $12 + $13 + $14 + $15}' <<<"$stat"
}

# group_ticks PGID: CPU ticks used by a process group: its live members
# (all their threads) and the children they reaped.
group_ticks() {
	local g=$1 f stat total=0
	for f in /proc/[0-9]*/stat; do
		{ stat=$(<"$f"); } 2>/dev/null || continue
		stat=${stat##*) }
		# After ") ": pgrp is the 3rd word; utime..cstime are 12..15.
		read -r _ _ pgrp _ _ _ _ _ _ _ _ ut st cut cst _ <<<"$stat"
		[[ $pgrp == "$g" ]] && total=$((total + ut + st + cut + cst))
	done
	echo "$total"
}

vmrss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
# fd_kinds PID: "sockets pipes other" among a process's descriptors (one
# find(1) for all of them: a readlink per descriptor takes minutes on a
# busy machine, longer than a client holds its flows).
fd_kinds() {
	find "/proc/$1/fd" -mindepth 1 -maxdepth 1 -printf '%l\n' 2>/dev/null |
		awk '/^socket:/ {s++; next} /^pipe:/ {p++; next} {o++} END {print s + 0, p + 0, o + 0}'
}
