package activate

const usage = `funtun activate [--listen ADDR [--fdname NAME]]… [profile=NAME | chain='…'] PROGRAM [ARGS…]
funtun activate [options] [profile=NAME | chain='…'] -- PROGRAM [ARGS…]

Keeps a service's real listening sockets — the ones systemd (or
systemd-socket-activate) passed to funtun, or its own with --listen — and
starts PROGRAM with sockets of its own in LISTEN_FDS, LISTEN_FDNAMES and
LISTEN_PID (its own pid), as sd_listen_fds(3) expects. Every connection to
a real socket is an incoming flow through the profile: a tls piece
terminates TLS, a rewrite piece rewrites, and the plaintext reaches
PROGRAM on its own socket, an ordinary kernel listening socket of the same
family and type (a TCP listener on a loopback port, a Unix socket in a
private directory), so its poll/epoll/accept work unchanged.

When no piece of the profile acts on incoming streams (profile=direct),
PROGRAM gets the real sockets themselves: no relay, and it sees its
clients' own addresses. Otherwise it sees the funnel's loopback address
as every client's; the flow log (--debug) has the real one, and
--proxy-protocol 1|2 sends it to PROGRAM in a PROXY protocol header (for
servers that read one: nginx's proxy_protocol, HAProxy's accept-proxy).

Datagram sockets are handed over unchanged when the profile leaves
incoming flows alone, and refused otherwise.

Without --listen, every passed socket is used, in order, with its name.
--listen fd:NAME (or fd:N) picks passed sockets; any other address is
opened by funtun: HOST:PORT or tcp:HOST:PORT, unix:PATH, udp:HOST:PORT.
--fdname NAME gives the --listen before it its LISTEN_FDNAMES name.

SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed to
PROGRAM (SIGHUP also reloads the profiles); funtun exits when PROGRAM does,
with its status (128+N when signal N ended it): 127 when PROGRAM is not
found, 1 when the profile or a socket is wrong.

Examples:
  systemd-socket-activate -l 127.0.0.1:8443 \
    funtun activate chain='tls cert=c.pem key=k.pem' python3 server.py
  funtun activate --listen 127.0.0.1:8443 --fdname web chain='tls cert=c.pem key=k.pem' python3 server.py`
