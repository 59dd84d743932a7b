#!/usr/bin/env bash
# Installs the real programs the test suite talks to. Safe to run again: it
# installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail
# Debian package -> a program it provides (to see whether it is there).
pkgs=(
  "curl:curl" "wget:wget" "socat:socat" "iperf3:iperf3" "tshark:tshark"
  "ncat:ncat" "tinyproxy:tinyproxy" "dante-server:danted" "dante-client:socksify"
  "microsocks:microsocks" "proxychains4:proxychains4" "tsocks:tsocks"
  "dnsutils:dig" "nodejs:node" "python3-socks:/usr/lib/python3/dist-packages/socks.py"
  "openssl:openssl" "iproute2:ip" "gcc:cc" "make:make" "systemd:systemd-socket-activate"
  "nftables:nft" "iptables:iptables-nft" "strace:strace" "haproxy:haproxy" "iputils-ping:ping"
  "ucspi-tcp:tcpserver" "xinetd:xinetd" "redsocks:redsocks" "wget2:wget2" "liburing-dev:/usr/include/liburing.h"
  "chromium:chromium" "desktop-file-utils:desktop-file-validate" "aria2:aria2c" "libglib2.0-bin:gio"
  "dnsmasq-base:dnsmasq" "musl-tools:musl-gcc" "libc6-dev:/usr/lib/x86_64-linux-gnu/libc.a"
)
missing=()
for p in "${pkgs[@]}"; do
  pkg=${p%%:*} prog=${p#*:}
  if [[ $prog == /* ]]; then [[ -e $prog ]] && continue
  else command -v "$prog" >/dev/null 2>&1 || [[ -x /usr/sbin/$prog ]] && continue
  fi
  missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  echo "test-deps: all test tools present"
  exit 0
fi
echo "test-deps: installing ${missing[*]}"
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# Package installs may start daemons we only want as test peers. Stop only
# what this install started: services that were not running before, and
# processes whose PIDs are new — never another user's danted.
daemons=(danted tinyproxy haproxy xinetd redsocks)
declare -A was_active before
for svc in "${daemons[@]}"; do
  systemctl is-active --quiet "$svc" 2>/dev/null && was_active[$svc]=1
  before[$svc]=" $(pgrep -x "$svc" | tr "\n" " " || true) "
done
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for svc in "${daemons[@]}"; do
  if [[ -z ${was_active[$svc]:-} ]] && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
  fi
  for pid in $(pgrep -x "$svc"); do
    [[ ${before[$svc]} == *" $pid "* ]] || $SUDO kill "$pid" 2>/dev/null || true
  done
done
echo "test-deps: done"
