/*
 * listen.c — incoming connections. When the profile acts on incoming
 * flows (a TLS server, a rewrite), listen() gives the program's socket to
 * the funnel, which listens on it — same address, same options — and puts
 * every connection through the pieces before it reaches the program. The
 * program gets a "hidden" loopback listener in its socket's place (same
 * descriptor number); accept() on it reports the real client, and
 * getsockname() the public address. Connections to the hidden port that
 * did not come through the funnel are turned away.
 */
#include "ft_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int hidden_listener(int family, int backlog)
{
	int fd = ft_real.socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	/* Lets the funnel tell, with a probe bind, whether anyone still
	 * listens here once the program closes it (see FT_OP_UNLISTEN). */
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	socklen_t len;
	if (family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_addr = in6addr_loopback;
		len = sizeof *s6;
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof *s4;
	}
	if (ft_real.bind(fd, (struct sockaddr *)&ss, len) != 0 || ft_real.listen(fd, backlog) != 0) {
		int e = errno;
		ft_real.close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static void copy_int_opt(int from, int to, int level, int name)
{
	int v = 0;
	socklen_t l = sizeof v;
	if (getsockopt(from, level, name, &v, &l) == 0 && v)
		setsockopt(to, level, name, &v, sizeof v);
}

int listen(int fd, int backlog)
{
	ft_init();
	if (!ft_hooked())
		return ft_real.listen(fd, backlog);
	struct ft_fdinfo info;
	if (ft_fd_get(fd, &info) && info.kind == FT_KIND_LISTEN)
		return ft_real.listen(fd, backlog); /* the hidden listener: a new backlog */
	int type = 0, family = 0;
	socklen_t l = sizeof type;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0 || type != SOCK_STREAM)
		return ft_real.listen(fd, backlog);
	l = sizeof family;
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &l) != 0 || (family != AF_INET && family != AF_INET6))
		return ft_real.listen(fd, backlog);

	int hidden = hidden_listener(family, backlog);
	if (hidden < 0 && family == AF_INET6)
		hidden = hidden_listener(AF_INET, backlog); /* no IPv6 on loopback */
	if (hidden < 0)
		return -1;
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_LISTEN;
	req.arg = backlog;
	struct sockaddr_storage hs;
	socklen_t hl = sizeof hs;
	ft_real.getsockname(hidden, (struct sockaddr *)&hs, &hl);
	req.addrlen = hl < FT_ADDR_MAX ? hl : FT_ADDR_MAX;
	memcpy(req.addr, &hs, req.addrlen);
	/* Read before the funnel has the socket: it makes its copy
	 * non-blocking, and the flag belongs to the socket, not the copy. */
	int fl = ft_real.fcntl(fd, F_GETFL);
	int fdfl = ft_real.fcntl(fd, F_GETFD);
	int r = ft_call(&req, fd, &resp, FT_WAIT_RETRY);
	if (r < 0 || resp.err) {
		ft_real.close(hidden);
		/* No funnel: listening natively would let connections in past
		 * the profile's pieces. */
		errno = r < 0 ? EACCES : resp.err;
		return -1;
	}
	if (resp.flags != FT_LISTEN_TAKEN) {
		ft_real.close(hidden);
		return ft_real.listen(fd, backlog);
	}
	/* The funnel listens on the program's socket now; the hidden listener
	 * takes its descriptor number, with its flags and the options that
	 * accepted sockets inherit. */
	if (fl >= 0 && (fl & O_NONBLOCK))
		ft_real.fcntl(hidden, F_SETFL, ft_real.fcntl(hidden, F_GETFL) | O_NONBLOCK);
	copy_int_opt(fd, hidden, IPPROTO_TCP, TCP_NODELAY);
	copy_int_opt(fd, hidden, SOL_SOCKET, SO_KEEPALIVE);
	if (ft_real.dup3(hidden, fd, (fdfl >= 0 && (fdfl & FD_CLOEXEC)) ? O_CLOEXEC : 0) < 0) {
		int e = errno;
		ft_real.close(hidden);
		errno = e;
		return -1;
	}
	ft_real.close(hidden);
	memset(&info, 0, sizeof info);
	info.kind = FT_KIND_LISTEN;
	info.ino = ft_inode(fd);
	info.locallen = resp.addr2len < sizeof info.local ? resp.addr2len : sizeof info.local;
	memcpy(&info.local, resp.addr2, info.locallen);
	info.peerlen = req.addrlen; /* the hidden address, for FT_OP_UNLISTEN */
	memcpy(&info.peer, req.addr, req.addrlen);
	ft_fd_set(fd, &info);
	return 0;
}

/* bind: a port the funnel holds for a program's listener that is gone (a
 * child that held it exited) is given back when the program binds it
 * again. Only the failure path asks, and a UDP socket bound to all
 * addresses is reported (udp.c). A packet socket that got past
 * socket() (raw.c) is refused its interface: bound, it sends frames with
 * no address at all. */
int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	ft_init();
	if (sa && len >= sizeof(sa_family_t) && sa->sa_family == AF_PACKET && !ft_allow_raw && ft_hooked()) {
		int family = 0, type = 0, proto = 0;
		if (ft_fd_uncarried(fd, &family, &type, &proto))
			return ft_refuse("bind", family, type, proto, NULL, 0);
	}
	int r = ft_real.bind(fd, sa, len);
	if (r == 0 && sa && len >= sizeof(sa_family_t) && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) &&
	    ft_hooked()) {
		int e = errno;
		ft_udp_bound(fd, sa, len);
		errno = e;
		return 0;
	}
	if (r == 0 || errno != EADDRINUSE || !sa || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
	    !ft_hooked())
		return r;
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_UNLISTEN;
	req.arg = 1;
	req.addrlen = len < FT_ADDR_MAX ? len : FT_ADDR_MAX;
	memcpy(req.addr, sa, req.addrlen);
	if (ft_call(&req, -1, &resp, FT_WAIT_RETRY) == 0 && resp.err == 0)
		return ft_real.bind(fd, sa, len);
	errno = EADDRINUSE;
	return -1;
}

/* ft_adopt_fed: when the launcher was socket-activated, the program's
 * LISTEN_FDS are hidden listeners the funnel feeds from the real sockets
 * (the same as after listen() with FT_LISTEN_TAKEN), made before the
 * program started. Only the process LISTEN_PID names owns them; it marks
 * them as its hidden listeners so that accept() reports the real client
 * and getsockname() the public address. Runs once, at the start. */
FT_HIDDEN void ft_adopt_fed(void)
{
	const char *fed = getenv("FUNTUN_LISTEN_FED");
	const char *pid = getenv("LISTEN_PID");
	const char *fds = getenv("LISTEN_FDS");
	if (!fed || strcmp(fed, "1") != 0 || !pid || !fds)
		return;
	char *end;
	long owner = strtol(pid, &end, 10);
	if (*end || owner != (long)getpid())
		return;
	long n = strtol(fds, &end, 10);
	if (*end || n <= 0 || n > 4096)
		return;
	for (int fd = 3; fd < 3 + n; fd++) {
		struct sockaddr_storage hs;
		socklen_t hl = sizeof hs;
		if (ft_real.getsockname(fd, (struct sockaddr *)&hs, &hl) != 0 ||
		    (hs.ss_family != AF_INET && hs.ss_family != AF_INET6))
			continue;
		struct ft_req req;
		struct ft_resp resp;
		memset(&req, 0, sizeof req);
		req.op = FT_OP_FED;
		req.addrlen = hl < FT_ADDR_MAX ? hl : FT_ADDR_MAX;
		memcpy(req.addr, &hs, req.addrlen);
		if (ft_call(&req, -1, &resp, FT_WAIT_RETRY) != 0 || resp.err)
			continue;
		struct ft_fdinfo info;
		memset(&info, 0, sizeof info);
		info.kind = FT_KIND_LISTEN;
		info.ino = ft_inode(fd);
		info.locallen = resp.addr2len < sizeof info.local ? resp.addr2len : sizeof info.local;
		memcpy(&info.local, resp.addr2, info.locallen);
		info.peerlen = req.addrlen; /* the hidden address, for FT_OP_UNLISTEN */
		memcpy(&info.peer, req.addr, req.addrlen);
		ft_fd_set(fd, &info);
	}
}

/* ft_unlisten tells the funnel that a hidden listener was closed. */
FT_HIDDEN void ft_unlisten(const struct ft_fdinfo *info)
{
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_UNLISTEN;
	req.addrlen = info->peerlen;
	memcpy(req.addr, &info->peer, info->peerlen);
	ft_call(&req, -1, &resp, FT_WAIT_RETRY);
}

static int accept_common(int fd, struct sockaddr *addr, socklen_t *len, int flags, int four)
{
	ft_init();
	struct ft_fdinfo info;
	if (!ft_fd_get(fd, &info) || info.kind != FT_KIND_LISTEN)
		return four ? ft_real.accept4(fd, addr, len, flags) : ft_real.accept(fd, addr, len);
	for (;;) {
		struct sockaddr_storage from;
		socklen_t fromlen = sizeof from;
		int c = four ? ft_real.accept4(fd, (struct sockaddr *)&from, &fromlen, flags)
			     : ft_real.accept(fd, (struct sockaddr *)&from, &fromlen);
		if (c < 0)
			return -1;
		struct ft_req req;
		struct ft_resp resp;
		memset(&req, 0, sizeof req);
		req.op = FT_OP_ACCEPTED;
		req.addrlen = fromlen < FT_ADDR_MAX ? fromlen : FT_ADDR_MAX;
		memcpy(req.addr, &from, req.addrlen);
		int r = ft_call(&req, -1, &resp, FT_WAIT_RETRY);
		if (r < 0) {
			ft_real.close(c);
			errno = ECONNABORTED;
			return -1;
		}
		if (resp.err) {
			/* Not from the funnel: someone found the hidden port and
			 * would pass around the pieces. */
			ft_real.close(c);
			continue;
		}
		struct ft_fdinfo ci;
		memset(&ci, 0, sizeof ci);
		ci.kind = FT_KIND_ACCEPTED;
		ci.ino = ft_inode(c);
		ci.peerlen = resp.addrlen < sizeof ci.peer ? resp.addrlen : sizeof ci.peer;
		memcpy(&ci.peer, resp.addr, ci.peerlen);
		ci.locallen = resp.addr2len < sizeof ci.local ? resp.addr2len : sizeof ci.local;
		memcpy(&ci.local, resp.addr2, ci.locallen);
		ft_fd_set(c, &ci);
		ft_copy_addr(addr, len, &ci.peer, ci.peerlen);
		return c;
	}
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	return accept_common(fd, addr, len, 0, 0);
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	return accept_common(fd, addr, len, flags, 1);
}
