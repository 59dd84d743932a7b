/*
 * connect.c — outgoing connections. connect() hands the program's own
 * socket to the funnel, which connects it (to the destination itself when
 * the profile leaves the bytes alone, else to a relay of its own); the
 * program keeps a real kernel socket, so non-blocking connect, poll, epoll
 * and SO_ERROR behave as they always do. getpeername() then tells the
 * destination the program asked for. close/dup keep the bookkeeping true.
 */
#include "ft_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <time.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static int is_inet(const struct sockaddr *sa, socklen_t len)
{
	return sa && len >= sizeof(sa_family_t) && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6);
}

/* A second connect() on a socket the funnel already connected: answer what
 * the kernel would, without a new flow (old-style programs poll this way). */
static int reconnect_state(int fd, int *err)
{
	struct tcp_info ti;
	socklen_t l = sizeof ti;
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) != 0)
		return 0;
	switch (ti.tcpi_state) {
	case TCP_SYN_SENT:
	case TCP_SYN_RECV:
		*err = EALREADY;
		return 1;
	case TCP_CLOSE: {
		int soerr = 0;
		l = sizeof soerr;
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &l);
		if (soerr) {
			*err = soerr;
			return 1;
		}
		return 0; /* a fresh attempt */
	}
	default:
		*err = EISCONN;
		return 1;
	}
}

/* Until when (CLOCK_MONOTONIC_COARSE, ns) the funnel's last CONNECT answer
 * said the profile is plain `direct`; 0 = not known to be. Bounded to a
 * second so that a reload that adds pieces takes effect within a second. */
static _Atomic long long plain_direct_until;
/* The funnel's last CONNECT answer asked for reports of the connects made
 * on the fast path (it logs successful flows: debug logging). */
static _Atomic int report_fast;

#define PLAIN_DIRECT_TTL_NS 1000000000LL

static long long coarse_now(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
		return -1;
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* fast_path_ok: the connect may skip the round trip — plain direct is
 * remembered, the address is literal (a synthetic one needs the funnel's
 * table) and not a DNS server's port, and the funnel is still there (if it is gone, the normal path
 * fails closed). */
static int fast_path_ok(int type, int proto, const struct sockaddr *sa, socklen_t len)
{
	long long until = atomic_load_explicit(&plain_direct_until, memory_order_relaxed);
	if (until == 0)
		return 0;
	long long now = coarse_now();
	if (now < 0 || now >= until)
		return 0;
	if (ft_is_synthetic(sa, len))
		return 0;
	/* DNS to the system's resolvers is answered in the funnel, so that
	 * a program's own resolver (c-ares, dig) leaks no query: ask. */
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in) &&
	    ((const struct sockaddr_in *)sa)->sin_port == htons(53))
		return 0;
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6) &&
	    ((const struct sockaddr_in6 *)sa)->sin6_port == htons(53))
		return 0;
	if (type == SOCK_DGRAM) {
		/* Anything but UDP: the funnel says what becomes of it. */
		if (proto != IPPROTO_UDP && proto != IPPROTO_UDPLITE)
			return 0;
	} else if (type != SOCK_STREAM) {
		return 0;
	}
	if (!ft_control_alive()) {
		atomic_store_explicit(&plain_direct_until, 0, memory_order_relaxed);
		return 0;
	}
	return 1;
}

static void remember_out(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct ft_fdinfo info;
	memset(&info, 0, sizeof info);
	info.kind = FT_KIND_OUT;
	info.ino = ft_inode(fd);
	info.peerlen = len < FT_ADDR_MAX ? len : FT_ADDR_MAX;
	memcpy(&info.peer, sa, info.peerlen);
	ft_fd_set(fd, &info);
}

/* connect_plain is connect(2) made by the library on its own account: under
 * the launcher's seccomp guard it carries the pass, so that the guard lets
 * it go on without stopping it (the funnel has said plain direct already). */
static int connect_plain(int fd, const struct sockaddr *sa, socklen_t len)
{
#if defined(SYS_connect) && (defined(__x86_64__) && !defined(__ILP32__) || defined(__aarch64__) || (defined(__riscv) && __riscv_xlen == 64))
	uint64_t pass = ft_guard_pass;
	if (pass)
		return (int)syscall(SYS_connect, fd, sa, len, (unsigned long)(uint32_t)pass, (unsigned long)(uint32_t)(pass >> 32), 0UL);
#endif
	return ft_real.connect(fd, sa, len);
}

/* connect_fast connects the socket itself, as the funnel would have for
 * plain direct, and reports a failure for the funnel's log (and, when the
 * funnel asked, a success too). */
static int connect_fast(int fd, int type, const struct sockaddr *sa, socklen_t len)
{
	int r = connect_plain(fd, sa, len);
	/* The kernel never gives EINTR for a non-blocking connect; under the
	 * launcher's seccomp guard a signal that comes before funtun has taken
	 * the stopped call does, and the call never ran: make it again. */
	int fl;
	while (r < 0 && errno == EINTR && (fl = ft_real.fcntl(fd, F_GETFL)) >= 0 && (fl & O_NONBLOCK))
		r = connect_plain(fd, sa, len);
	int e = errno;
	int op = 0;
	if (r == 0 || e == EINPROGRESS) {
		remember_out(fd, sa, len);
		if (atomic_load_explicit(&report_fast, memory_order_relaxed))
			op = FT_OP_CONNECTED_FAST;
	} else if (e != EINTR && e != EALREADY && e != EISCONN) {
		/* EINTR: the kernel goes on connecting, as natively. */
		op = FT_OP_CONNECT_FAILED;
	}
	if (op) {
		struct ft_req req;
		memset(&req, 0, sizeof req);
		req.op = (uint32_t)op;
		req.arg = type;
		req.flags = op == FT_OP_CONNECT_FAILED ? (uint32_t)e : 0;
		req.addrlen = len < FT_ADDR_MAX ? len : FT_ADDR_MAX;
		memcpy(req.addr, sa, req.addrlen);
		ft_send_oneway(&req);
	}
	errno = e;
	return r;
}

int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	ft_init();
	if (!is_inet(sa, len) || !ft_hooked())
		return ft_real.connect(fd, sa, len);
	int type = 0;
	socklen_t tl = sizeof type;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0)
		return ft_real.connect(fd, sa, len); /* not a socket: let the kernel say so */
	type &= 0xff;

	struct ft_fdinfo info;
	if (type == SOCK_STREAM && ft_fd_get(fd, &info) && info.kind == FT_KIND_OUT) {
		int err;
		if (reconnect_state(fd, &err)) {
			if (err != EALREADY && err != EISCONN)
				ft_fd_clear(fd);
			errno = err;
			return -1;
		}
	}

	int proto = -1;
	if (type == SOCK_DGRAM) {
		socklen_t pl = sizeof proto;
		if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &pl) != 0)
			proto = -1;
	}
	if (type == SOCK_RAW || type == SOCK_PACKET ||
	    (type == SOCK_DGRAM && proto != IPPROTO_UDP && proto != IPPROTO_UDPLITE)) {
		/* A raw or ICMP echo socket that got past socket() (raw.c). */
		int family = 0, p = 0;
		if (ft_fd_uncarried(fd, &family, NULL, &p)) {
			if (ft_allow_raw)
				return ft_real.connect(fd, sa, len);
			return ft_refuse("connect", family, type, p, sa, len);
		}
	}

	if (fast_path_ok(type, proto, sa, len))
		return connect_fast(fd, type, sa, len);

	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_CONNECT;
	req.arg = type;
	req.addrlen = len < FT_ADDR_MAX ? len : FT_ADDR_MAX;
	memcpy(req.addr, sa, req.addrlen);
	/* Only a blocking stream connect() may end with EINTR, as natively;
	 * the kernel never gives it for a non-blocking or a datagram one. */
	enum ft_wait wait = FT_WAIT_RETRY;
	if (type == SOCK_STREAM) {
		int fl = ft_real.fcntl(fd, F_GETFL);
		if (fl >= 0 && !(fl & O_NONBLOCK))
			wait = FT_WAIT_CONNECT_BLOCKING;
	}
	int r = ft_call(&req, fd, &resp, wait);
	if (r == -EINTR) {
		/* The funnel is connecting the socket and goes on, as the kernel
		 * does after a signal: a second connect() says EALREADY, then
		 * EISCONN, and poll() tells when it is done. */
		remember_out(fd, sa, req.addrlen);
		errno = EINTR;
		return -1;
	}
	if (r < 0) {
		errno = -r;
		return -1;
	}
	long long now = coarse_now();
	atomic_store_explicit(&plain_direct_until,
			      (resp.flags & FT_CONNECT_PLAIN_DIRECT) && now >= 0 ? now + PLAIN_DIRECT_TTL_NS : 0,
			      memory_order_relaxed);
	atomic_store_explicit(&report_fast, (resp.flags & FT_CONNECT_LOG_FAST) != 0, memory_order_relaxed);
	if (resp.err == 0 || resp.err == EINPROGRESS)
		remember_out(fd, sa, req.addrlen);
	if (resp.err != 0) {
		errno = resp.err;
		return -1;
	}
	return 0;
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	ft_init();
	struct sockaddr_storage real;
	socklen_t reallen = sizeof real;
	if (ft_real.getpeername(fd, (struct sockaddr *)&real, &reallen) != 0)
		return -1; /* ENOTCONN while connecting, as always */
	struct ft_fdinfo info;
	if (ft_fd_get(fd, &info) && (info.kind == FT_KIND_OUT || info.kind == FT_KIND_ACCEPTED) && info.peerlen) {
		ft_copy_addr(addr, len, &info.peer, info.peerlen);
		return 0;
	}
	ft_copy_addr(addr, len, &real, reallen);
	return 0;
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	ft_init();
	struct ft_fdinfo info;
	if (ft_fd_get(fd, &info) && (info.kind == FT_KIND_LISTEN || info.kind == FT_KIND_ACCEPTED) && info.locallen) {
		ft_copy_addr(addr, len, &info.local, info.locallen);
		return 0;
	}
	return ft_real.getsockname(fd, addr, len);
}

int close(int fd)
{
	ft_init();
	if (ft_is_control_fd(fd))
		ft_forget_control_fd(fd);
	struct ft_fdinfo info;
	int listening = ft_fd_get(fd, &info) && info.kind == FT_KIND_LISTEN;
	ft_fd_clear(fd);
	int r = ft_real.close(fd);
	if (listening) {
		int e = errno;
		ft_unlisten(&info); /* after the close: the funnel probes the port */
		errno = e;
	}
	return r;
}

int dup(int fd)
{
	ft_init();
	int r = ft_real.dup(fd);
	if (r >= 0)
		ft_fd_copy(fd, r);
	return r;
}

int dup2(int fd, int to)
{
	ft_init();
	if (fd != to && ft_is_control_fd(to))
		ft_forget_control_fd(to);
	int r = ft_real.dup2(fd, to);
	if (r >= 0 && fd != to)
		ft_fd_copy(fd, to);
	return r;
}

int dup3(int fd, int to, int flags)
{
	ft_init();
	if (fd != to && ft_is_control_fd(to))
		ft_forget_control_fd(to);
	int r = ft_real.dup3(fd, to, flags);
	if (r >= 0)
		ft_fd_copy(fd, to);
	return r;
}

/* fcntl's third argument is read as a pointer, as glibc itself does: every
 * command's argument (int, long or pointer) travels in one register. */
static int fcntl_common(int fd, int cmd, void *arg)
{
	ft_init();
	int r = ft_real.fcntl(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		ft_fd_copy(fd, r);
	return r;
}

int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fcntl_common(fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fcntl_common(fd, cmd, arg);
}
