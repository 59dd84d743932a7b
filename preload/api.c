/*
 * api.c — the C API (include/funtun.h): sockets of a named template. Each
 * call opens a control connection of its own to the per-user daemon, says
 * the template in its HELLO, and then uses the same requests as the
 * hooks (RESOLVE, CONNECT, LISTEN) on a socket made here: the daemon
 * connects or listens on the program's own socket, which the program
 * keeps — an ordinary descriptor for its own poll/epoll loop.
 */
#include "ft_internal.h"
#include "include/funtun.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FT_API __attribute__((visibility("default")))

static __thread int last_err;
static __thread char last_why[FT_NAME_MAX + 256];

__attribute__((format(printf, 2, 3))) static int fail(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_why, sizeof last_why, fmt, ap);
	va_end(ap);
	last_err = err;
	errno = err;
	return -1;
}

FT_API const char *funtun_strerror(int err)
{
	if (err != 0 && err == last_err && last_why[0])
		return last_why;
	return strerror(err);
}

static const char *shown(const struct sockaddr_un *a)
{
	return a->sun_path[0] ? a->sun_path : "(abstract socket)";
}

/* open_template: a control connection to the daemon for tmpl, or -1. */
static int open_template(const char *tmpl)
{
	ft_init();
	struct sockaddr_un a;
	socklen_t al = ft_daemon_address(&a);
	if (!al)
		return fail(ENAMETOOLONG, "funtun: the daemon's socket path (FUNTUN_DAEMON or XDG_RUNTIME_DIR) is too long");
	int cfd = ft_real.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (cfd < 0)
		return fail(errno, "funtun: socket: %s", strerror(errno));
	int r;
	do
		r = ft_real.connect(cfd, (const struct sockaddr *)&a, al);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		int e = errno;
		ft_real.close(cfd);
		if (e == ENOENT || e == ECONNREFUSED)
			return fail(ECONNREFUSED,
				    "funtun: the daemon is not running: nothing listens on %s (start it with `funtun daemon`, "
				    "or `systemctl --user start funtun-daemon.socket`)",
				    shown(&a));
		if (e == EACCES || e == EPERM) {
			/* The nearest directory on the way that we may look at says
			 * whose it is. */
			char dir[sizeof a.sun_path];
			snprintf(dir, sizeof dir, "%s", a.sun_path);
			char *d = dirname(dir);
			struct stat st;
			int seen = 0;
			while (!(seen = stat(d, &st) == 0) && strcmp(d, "/") != 0 && strcmp(d, ".") != 0)
				d = dirname(d);
			if (seen && st.st_uid != geteuid())
				return fail(EACCES,
					    "funtun: cannot reach the daemon at %s: permission denied (%s belongs to uid %u and "
					    "you are uid %u: every user runs a daemon of their own)",
					    shown(&a), d, (unsigned)st.st_uid, (unsigned)geteuid());
			return fail(EACCES, "funtun: cannot reach the daemon at %s: permission denied", shown(&a));
		}
		return fail(e, "funtun: cannot reach the daemon at %s: %s", shown(&a), strerror(e));
	}
	char why[sizeof last_why];
	int h = ft_daemon_hello(cfd, tmpl ? tmpl : "", why, sizeof why);
	if (h != 1) {
		ft_real.close(cfd);
		return fail(h < 0 ? -h : EPROTO, "%s", why);
	}
	return cfd;
}

static int parse_port(const char *port, int type, uint16_t *out)
{
	if (!port || !*port)
		return fail(EINVAL, "funtun: no port given");
	char *end;
	long v = strtol(port, &end, 10);
	if (*end == '\0') {
		if (v < 0 || v > 65535)
			return fail(EINVAL, "funtun: port %s is out of range", port);
		*out = (uint16_t)v;
		return 0;
	}
	struct servent se, *res = NULL;
	char buf[1024];
	if (getservbyname_r(port, (type & 0xff) == SOCK_DGRAM ? "udp" : "tcp", &se, buf, sizeof buf, &res) == 0 && res) {
		*out = ntohs((uint16_t)res->s_port);
		return 0;
	}
	return fail(EINVAL, "funtun: unknown service \"%s\"", port);
}

/* literal fills ss from a literal address of family (AF_INET6 takes IPv4
 * ones in the mapped form); 0 if host is not one. */
static int literal(const char *host, int family, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof *ss);
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, host, &a4) == 1) {
		if (family == AF_INET6) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
			s6->sin6_family = AF_INET6;
			s6->sin6_port = htons(port);
			s6->sin6_addr.s6_addr[10] = s6->sin6_addr.s6_addr[11] = 0xff;
			memcpy(&s6->sin6_addr.s6_addr[12], &a4, 4);
			*len = sizeof *s6;
			return 1;
		}
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		s4->sin_addr = a4;
		*len = sizeof *s4;
		return 1;
	}
	if (inet_pton(AF_INET6, host, &a6) == 1) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		s6->sin6_addr = a6;
		*len = sizeof *s6;
		return 1;
	}
	return 0;
}

/* destination: host as the address to hand the daemon — a name becomes
 * the synthetic address the template's funnel gives it, so that its
 * pieces resolve it. */
static int destination(int cfd, const char *host, int family, uint16_t port, struct sockaddr_storage *ss,
		       socklen_t *len)
{
	if (!host || !*host)
		return fail(EINVAL, "funtun: no host given");
	if (literal(host, family, port, ss, len))
		return 0;
	size_t n = strlen(host);
	if (n >= FT_NAME_MAX)
		return fail(ENAMETOOLONG, "funtun: host name too long");
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_RESOLVE;
	req.arg = family;
	memcpy(req.name, host, n);
	int r = ft_call_on(cfd, &req, -1, &resp);
	if (r < 0)
		return fail(-r, "funtun: the daemon hung up while resolving %s", host);
	if (resp.err)
		return fail(EHOSTUNREACH, "funtun: the funnel has no address for %s: %s", host, gai_strerror(resp.err));
	if (resp.addrlen < sizeof(sa_family_t) || resp.addrlen > sizeof *ss)
		return fail(EPROTO, "funtun: a malformed answer for %s", host);
	memset(ss, 0, sizeof *ss);
	memcpy(ss, resp.addr, resp.addrlen);
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
	*len = resp.addrlen;
	return 0;
}

static int sock_family_type(int fd, int *family, int *type)
{
	socklen_t l = sizeof *family;
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, family, &l) != 0)
		return fail(errno, "funtun: descriptor %d: %s", fd, strerror(errno));
	l = sizeof *type;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, type, &l) != 0)
		return fail(errno, "funtun: descriptor %d: %s", fd, strerror(errno));
	if (*family != AF_INET && *family != AF_INET6)
		return fail(EAFNOSUPPORT, "funtun: descriptor %d is not an AF_INET or AF_INET6 socket", fd);
	return 0;
}

static int connect_on(const char *tmpl, int fd, const char *host, const char *port)
{
	int family, type;
	uint16_t p;
	if (sock_family_type(fd, &family, &type) < 0 || parse_port(port, type, &p) < 0)
		return -1;
	int cfd = open_template(tmpl);
	if (cfd < 0)
		return -1;
	struct sockaddr_storage ss;
	socklen_t len;
	if (destination(cfd, host, family, p, &ss, &len) < 0) {
		int e = errno;
		ft_real.close(cfd);
		errno = e;
		return -1;
	}
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_CONNECT;
	req.arg = type;
	req.addrlen = len < FT_ADDR_MAX ? len : FT_ADDR_MAX;
	memcpy(req.addr, &ss, req.addrlen);
	int r = ft_call_on(cfd, &req, fd, &resp);
	ft_real.close(cfd);
	if (r < 0)
		return fail(-r, "funtun: the daemon hung up while connecting to %s port %s", host, port);
	if (resp.err == EINPROGRESS) {
		errno = EINPROGRESS;
		return 0;
	}
	if (resp.err)
		return fail(resp.err, "funtun: connecting to %s port %s through template \"%s\": %s%s", host, port,
			    tmpl ? tmpl : "", strerror(resp.err),
			    resp.err == EACCES ? " (the profile refused it; the daemon's log says why)" : "");
	return 0;
}

/* ---- sockets made by funtun_socket ----------------------------------- */

#define MAX_TAGS 256

struct tag {
	int fd;
	uint64_t ino;
	char tmpl[FT_NAME_MAX];
};
static struct tag tags[MAX_TAGS];
static pthread_mutex_t tags_mu = PTHREAD_MUTEX_INITIALIZER;

static int tag_set(int fd, const char *tmpl)
{
	uint64_t ino = ft_inode(fd);
	pthread_mutex_lock(&tags_mu);
	int free_i = -1;
	for (int i = 0; i < MAX_TAGS; i++) {
		if (tags[i].ino && tags[i].fd == fd)
			free_i = i; /* a stale entry for the same number */
		else if (free_i < 0 && (!tags[i].ino || ft_inode(tags[i].fd) != tags[i].ino))
			free_i = i;
	}
	if (free_i >= 0) {
		tags[free_i].fd = fd;
		tags[free_i].ino = ino;
		snprintf(tags[free_i].tmpl, sizeof tags[free_i].tmpl, "%s", tmpl ? tmpl : "");
	}
	pthread_mutex_unlock(&tags_mu);
	return free_i >= 0 ? 0 : fail(EMFILE, "funtun: more than %d sockets from funtun_socket wait to connect or listen", MAX_TAGS);
}

/* tag_take finds (and forgets) the template of fd. */
static int tag_take(int fd, char *tmpl)
{
	uint64_t ino = ft_inode(fd);
	int found = 0;
	pthread_mutex_lock(&tags_mu);
	for (int i = 0; i < MAX_TAGS && !found; i++) {
		if (tags[i].ino && tags[i].fd == fd && tags[i].ino == ino) {
			memcpy(tmpl, tags[i].tmpl, FT_NAME_MAX);
			tags[i].ino = 0;
			found = 1;
		}
	}
	pthread_mutex_unlock(&tags_mu);
	return found ? 0 : fail(EBADF, "funtun: descriptor %d is not a socket funtun_socket made (or it was used already)", fd);
}

FT_API int funtun_socket(const char *tmpl, int domain, int type)
{
	if (domain != AF_INET && domain != AF_INET6)
		return fail(EAFNOSUPPORT, "funtun: funtun_socket makes AF_INET and AF_INET6 sockets");
	int cfd = open_template(tmpl); /* says at once when there is no such template */
	if (cfd < 0)
		return -1;
	ft_real.close(cfd);
	int fd = ft_real.socket(domain, type, 0);
	if (fd < 0)
		return fail(errno, "funtun: socket: %s", strerror(errno));
	if (tag_set(fd, tmpl) < 0) {
		ft_real.close(fd);
		errno = EMFILE;
		return -1;
	}
	return fd;
}

FT_API int funtun_connect_socket(int fd, const char *host, const char *port)
{
	char tmpl[FT_NAME_MAX];
	if (tag_take(fd, tmpl) < 0)
		return -1;
	return connect_on(tmpl, fd, host, port);
}

FT_API int funtun_connect(const char *tmpl, const char *host, const char *port, int type)
{
	int family = AF_INET;
	struct in6_addr a6;
	if (host && inet_pton(AF_INET6, host, &a6) == 1)
		family = AF_INET6;
	int fd = ft_real.socket(family, type | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(errno, "funtun: socket: %s", strerror(errno));
	if (connect_on(tmpl, fd, host, port) < 0) {
		int e = errno;
		ft_real.close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* ---- listening ---------------------------------------------------------- */

/* hidden_listener: the loopback listener the funnel feeds when the
 * template acts on incoming connections (as listen.c's, for the hooks). */
static int hidden_listener(int family, int backlog, struct sockaddr_storage *ss, socklen_t *len)
{
	int fd = ft_real.socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	memset(ss, 0, sizeof *ss);
	if (family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_addr = in6addr_loopback;
		*len = sizeof *s6;
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
		s4->sin_family = AF_INET;
		s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		*len = sizeof *s4;
	}
	if (ft_real.bind(fd, (struct sockaddr *)ss, *len) != 0 || ft_real.listen(fd, backlog) != 0 ||
	    ft_real.getsockname(fd, (struct sockaddr *)ss, len) != 0) {
		int e = errno;
		ft_real.close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* unlistened: the funnel still held the port for a listener of an earlier
 * funtun_listen that has gone (nothing tells it when a program closes
 * one); it gives the port up when no one listens behind it any more. */
static int unlistened(int cfd, const struct sockaddr_storage *ss, socklen_t len)
{
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_UNLISTEN;
	req.arg = 1;
	req.addrlen = len < FT_ADDR_MAX ? len : FT_ADDR_MAX;
	memcpy(req.addr, ss, req.addrlen);
	return ft_call_on(cfd, &req, -1, &resp) == 0 && resp.err == 0;
}

static int listen_on(const char *tmpl, int fd, const char *host, const char *port, int backlog)
{
	int family, type;
	uint16_t p;
	if (sock_family_type(fd, &family, &type) < 0 || parse_port(port, type, &p) < 0)
		return -1;
	if ((type & 0xff) != SOCK_STREAM)
		return fail(EOPNOTSUPP, "funtun: funtun_listen needs a SOCK_STREAM socket");
	struct sockaddr_storage ss;
	socklen_t len;
	if (!host || !*host)
		host = family == AF_INET6 ? "::" : "0.0.0.0";
	if (!literal(host, family, p, &ss, &len))
		return fail(EINVAL, "funtun: listen on an address, not a name (\"%s\")", host);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	int cfd = open_template(tmpl);
	if (cfd < 0)
		return -1;
	if (ft_real.bind(fd, (struct sockaddr *)&ss, len) != 0) {
		int e = errno;
		if (e == EADDRINUSE && unlistened(cfd, &ss, len))
			e = ft_real.bind(fd, (struct sockaddr *)&ss, len) == 0 ? 0 : errno;
		if (e) {
			ft_real.close(cfd);
			return fail(e, "funtun: bind %s port %s: %s", host, port, strerror(e));
		}
	}
	struct sockaddr_storage hs;
	socklen_t hl;
	int hidden = hidden_listener(family, backlog, &hs, &hl);
	if (hidden < 0 && family == AF_INET6)
		hidden = hidden_listener(AF_INET, backlog, &hs, &hl);
	if (hidden < 0) {
		int e = errno;
		ft_real.close(cfd);
		return fail(e, "funtun: a loopback listener: %s", strerror(e));
	}
	/* Read before the funnel has the socket: taking it over makes the
	 * file description it shares with ours non-blocking. */
	int fdflags = ft_real.fcntl(fd, F_GETFD);
	int flflags = ft_real.fcntl(fd, F_GETFL);
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_LISTEN;
	req.arg = backlog;
	req.addrlen = hl < FT_ADDR_MAX ? hl : FT_ADDR_MAX;
	memcpy(req.addr, &hs, req.addrlen);
	int r = ft_call_on(cfd, &req, fd, &resp);
	ft_real.close(cfd);
	if (r < 0 || resp.err) {
		ft_real.close(hidden);
		int e = r < 0 ? -r : resp.err;
		return fail(e, "funtun: listening on %s port %s through template \"%s\": %s", host, port, tmpl ? tmpl : "",
			    strerror(e));
	}
	if (resp.flags & FT_LISTEN_TAKEN) {
		/* The funnel listens on the socket now: the program gets the
		 * hidden listener in its place, under the same number. */
		if (ft_real.dup3(hidden, fd, fdflags >= 0 && (fdflags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
			int e = errno;
			ft_real.close(hidden);
			return fail(e, "funtun: dup3: %s", strerror(e));
		}
		ft_real.close(hidden);
		if (flflags >= 0 && (flflags & O_NONBLOCK))
			ft_real.fcntl(fd, F_SETFL, ft_real.fcntl(fd, F_GETFL) | O_NONBLOCK);
		return 0;
	}
	ft_real.close(hidden);
	if (ft_real.listen(fd, backlog) != 0)
		return fail(errno, "funtun: listen %s port %s: %s", host, port, strerror(errno));
	return 0;
}

FT_API int funtun_listen_socket(int fd, const char *host, const char *port, int backlog)
{
	char tmpl[FT_NAME_MAX];
	if (tag_take(fd, tmpl) < 0)
		return -1;
	return listen_on(tmpl, fd, host, port, backlog);
}

FT_API int funtun_listen(const char *tmpl, const char *host, const char *port, int backlog)
{
	int family = AF_INET;
	struct in6_addr a6;
	if (host && inet_pton(AF_INET6, host, &a6) == 1)
		family = AF_INET6;
	int fd = ft_real.socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(errno, "funtun: socket: %s", strerror(errno));
	if (listen_on(tmpl, fd, host, port, backlog) < 0) {
		int e = errno;
		ft_real.close(fd);
		errno = e;
		return -1;
	}
	return fd;
}
