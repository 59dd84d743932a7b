/*
 * funtun.h — the C API of the Funnel Tunnel (funtun): sockets of a named
 * template. Installed as include/funtun.h; link with libfuntun-api
 * (pkg-config --cflags --libs funtun). See docs/c-api.md.
 *
 * A template is the name of a funtun profile ("shout", "work"), or an
 * inline chain written as on the command line ("chain=tls sni=example.org |
 * socks5 server=127.0.0.1:9050"); NULL or "" is the default profile
 * (direct). The per-user daemon (funtun daemon) does the work, with the
 * user's profiles: each call below asks it, and every descriptor you get
 * back is an ordinary kernel socket — poll, epoll, select, read, write,
 * close and non-blocking mode work on it as on any other.
 *
 * Host names are resolved inside the funnel, the way the template says (a
 * hosts piece, a SOCKS5 server far away): the program never asks DNS.
 *
 * Errors: -1 with errno set (ECONNREFUSED: the daemon is not running;
 * EACCES: its socket belongs to another user, or the profile refused the
 * connection; ENOENT: no such template; EPROTO: library and daemon come
 * from different builds; otherwise what connect(2), bind(2) or listen(2)
 * say), and funtun_strerror(errno) names the cause in a sentence.
 *
 * The functions are thread-safe; they are not async-signal-safe.
 */
#ifndef FUNTUN_API_H
#define FUNTUN_API_H

#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FUNTUN_API_VERSION 1

/* funtun_connect: a socket of type (SOCK_STREAM or SOCK_DGRAM, optionally
 * | SOCK_NONBLOCK | SOCK_CLOEXEC) connected to host:port through the
 * template. host is a name or a literal IPv4/IPv6 address; port a number
 * or a service name ("https"). A blocking socket comes back connected; a
 * SOCK_NONBLOCK one may come back still connecting (connect(2)'s
 * EINPROGRESS): wait until it is writable and read SO_ERROR. Returns the
 * descriptor, or -1. */
int funtun_connect(const char *tmpl, const char *host, const char *port, int type);

/* funtun_listen: a listening TCP socket on host:port (host NULL or "" for
 * every IPv4 address, "::" for every address of both families) whose
 * incoming connections pass through the template's pieces before
 * accept(2) returns them. When the template acts on incoming bytes (a TLS
 * server, a rewrite) the funnel listens on host:port and the descriptor is
 * a loopback listener it feeds: accept(2) then reports the funnel's
 * loopback address as the peer. Returns the descriptor, or -1. */
int funtun_listen(const char *tmpl, const char *host, const char *port, int backlog);

/* funtun_socket: a socket(2) of domain (AF_INET, AF_INET6) and type for
 * the template, which funtun_connect_socket and funtun_listen_socket then
 * use: for a program that sets socket options before it connects or
 * listens. The template is checked at once (ENOENT when there is none). */
int funtun_socket(const char *tmpl, int domain, int type);
int funtun_connect_socket(int fd, const char *host, const char *port);
int funtun_listen_socket(int fd, const char *host, const char *port, int backlog);

/* funtun_strerror describes err, an errno value: when it is the error of
 * this thread's last failed funtun_* call, a sentence naming its cause
 * ("unknown template \"x\": …", "the daemon is not running: nothing listens
 * on …"); otherwise strerror's text. The string stays valid until the
 * thread's next funtun_* call. */
const char *funtun_strerror(int err);

#ifdef __cplusplus
}
#endif

#endif
