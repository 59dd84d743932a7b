/*
 * minsocks: a minimal SOCKS5 proxy. A BENCHMARK REFERENCE ONLY.
 *
 *	minsocks PORT        (listens on 127.0.0.1:PORT)
 *
 * bench/socks5d.sh runs it beside funtun socks5d, microsocks and danted in
 * the short-connection benchmark as the "floor" peer: it shows the lowest
 * CPU per connection a proxy can reach on the machine, so that funtun's
 * figures can be read against what the kernel's own TCP work costs (see
 * bench/socks5d.md). It has none of funtun's features: no profiles, no
 * logging, no limits, no timeouts, no authentication, no domain names, no
 * UDP ASSOCIATE, no BIND. Do not use it for anything else.
 *
 * What it does do, and correctly: the "no authentication" method; CONNECT
 * to an IPv4 or IPv6 literal address, with a partial greeting or request
 * waited for and bytes sent before the reply kept; the reply carries the
 * address the outgoing socket is really bound to (getsockname); one
 * thread, level-triggered epoll, nonblocking sockets, TCP_NODELAY on both
 * sockets. The relay read()s into a 16 KiB stack buffer and write()s it
 * out; what a write leaves is kept and written on EPOLLOUT, and the side it
 * came from is not read until then. On EOF from one side the other side's
 * write half is shut down and the first side is not read again; both
 * sockets are closed once both sides have sent EOF, or on any error.
 *
 * Build: gcc -O2 -Wall -Wextra -o minsocks minsocks.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define RELAY_BUF 16384
#define HS_MAX 512 /* a greeting is at most 257 bytes, a request 22 */

enum { CLIENT, UPSTREAM };
enum state { GREET, REQUEST, CONNECTING, RELAY };

struct side {
	int fd;           /* -1: none yet */
	int registered;   /* known to epoll */
	uint32_t events;  /* what epoll was last asked for */
	int eof;          /* read() returned 0: never read again */
	char *out;        /* bytes still to write to fd, at out + off */
	size_t off, len;
};

struct conn {
	struct side s[2];
	enum state state;
	int dead;
	struct conn *next_dead;
	size_t hslen;
	unsigned char hs[HS_MAX];
};

static int ep;
static struct conn *dead; /* finished during this epoll_wait batch */
static const int one = 1;

/* The events side i needs now. */
static uint32_t want(const struct conn *c, int i)
{
	const struct side *me = &c->s[i], *peer = &c->s[!i];
	uint32_t ev = me->len ? EPOLLOUT : 0;

	switch (c->state) {
	case GREET:
	case REQUEST:
		/* Read no further until the reply so far is out. */
		if (i == CLIENT && !me->len)
			ev |= EPOLLIN;
		break;
	case CONNECTING:
		if (i == UPSTREAM)
			ev |= EPOLLOUT;
		break;
	case RELAY:
		/* Read a side only while what it sent before is written. */
		if (!me->eof && !peer->len)
			ev |= EPOLLIN;
		break;
	}
	return ev;
}

/*
 * Tells epoll what side i needs, if that changed. A relaying side paused
 * only because the other side has not taken its last bytes is removed from
 * epoll: its FIN may be in already and its write half shut down, and
 * level-triggered epoll would report that EPOLLHUP over and over. Any other
 * side that needs nothing stays registered with no events, so that an
 * error or a reset on it (EPOLLERR, EPOLLHUP) still ends the connection.
 */
static int sync_side(struct conn *c, int i)
{
	struct side *sd = &c->s[i];
	uint32_t ev = want(c, i);
	struct epoll_event e = { .events = ev };

	if (sd->fd < 0)
		return 0;
	if (ev == 0 && c->state == RELAY && !sd->eof) {
		if (sd->registered && epoll_ctl(ep, EPOLL_CTL_DEL, sd->fd, NULL) < 0)
			return -1;
		sd->registered = 0;
		return 0;
	}
	if (sd->registered && sd->events == ev)
		return 0;
	e.data.u64 = (uintptr_t)c | (uintptr_t)i;
	if (epoll_ctl(ep, sd->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, sd->fd, &e) < 0)
		return -1;
	sd->registered = 1;
	sd->events = ev;
	return 0;
}

static int sync_both(struct conn *c)
{
	return sync_side(c, CLIENT) < 0 || sync_side(c, UPSTREAM) < 0 ? -1 : 0;
}

/* Closes both sockets; the memory goes once the batch of events is done. */
static void finish(struct conn *c)
{
	int i;

	if (c->dead)
		return;
	for (i = 0; i < 2; i++) {
		if (c->s[i].fd >= 0)
			close(c->s[i].fd);
		free(c->s[i].out);
	}
	c->dead = 1;
	c->next_dead = dead;
	dead = c;
}

/* Writes n bytes to side i after what is already waiting for it; keeps
 * what the socket does not take for EPOLLOUT. */
static int send_to(struct conn *c, int i, const void *data, size_t n)
{
	struct side *sd = &c->s[i];
	const char *p = data;
	char *grown;

	if (sd->len == 0) {
		ssize_t w = write(sd->fd, p, n);

		if (w < 0) {
			if (errno != EAGAIN && errno != EINTR)
				return -1;
			w = 0;
		}
		p += w;
		n -= (size_t)w;
		if (n == 0)
			return 0;
	}
	if (sd->off) {
		memmove(sd->out, sd->out + sd->off, sd->len);
		sd->off = 0;
	}
	grown = realloc(sd->out, sd->len + n);
	if (!grown)
		return -1;
	memcpy(grown + sd->len, p, n);
	sd->out = grown;
	sd->len += n;
	return 0;
}

/* Writes what is waiting for side i (on EPOLLOUT). */
static int flush(struct conn *c, int i)
{
	struct side *sd = &c->s[i];
	ssize_t w = write(sd->fd, sd->out + sd->off, sd->len);

	if (w < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	sd->off += (size_t)w;
	sd->len -= (size_t)w;
	if (sd->len == 0) {
		free(sd->out);
		sd->out = NULL;
		sd->off = 0;
	}
	return 0;
}

/* Relays one read from side i to the other side. Returns nonzero when the
 * connection is over: an error, or both sides have sent EOF. */
static int pump(struct conn *c, int i)
{
	char buf[RELAY_BUF];
	struct side *from = &c->s[i], *to = &c->s[!i];
	ssize_t n = read(from->fd, buf, sizeof buf);

	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	if (n == 0) {
		from->eof = 1;
		if (to->eof)
			return 1;
		/* Nothing from this side waits (it would not have been read). */
		shutdown(to->fd, SHUT_WR);
		return 0;
	}
	return send_to(c, !i, buf, (size_t)n);
}

/* The reply code for a failed connect. */
static int reply_code(int err)
{
	switch (err) {
	case ENETUNREACH:
		return 3;
	case EHOSTUNREACH:
	case ETIMEDOUT:
		return 4;
	case ECONNREFUSED:
		return 5;
	default:
		return 1;
	}
}

/* Best effort: the connection is closed right after. */
static void fail(struct conn *c, int code)
{
	unsigned char r[10] = { 5, (unsigned char)code, 0, 1 };

	send_to(c, CLIENT, r, sizeof r);
}

static void consume(struct conn *c, size_t n)
{
	c->hslen -= n;
	memmove(c->hs, c->hs + n, c->hslen);
}

/* Starts the outgoing connection the request asks for. */
static int start_connect(struct conn *c, int atyp)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
	socklen_t len;
	int fd;

	memset(&ss, 0, sizeof ss);
	if (atyp == 1) {
		a4->sin_family = AF_INET;
		memcpy(&a4->sin_addr, c->hs + 4, 4);
		memcpy(&a4->sin_port, c->hs + 8, 2);
		len = sizeof *a4;
	} else {
		a6->sin6_family = AF_INET6;
		memcpy(&a6->sin6_addr, c->hs + 4, 16);
		memcpy(&a6->sin6_port, c->hs + 20, 2);
		len = sizeof *a6;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fail(c, 1);
		return -1;
	}
	c->s[UPSTREAM].fd = fd;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	/* Even an immediate success waits for EPOLLOUT, which comes at once. */
	if (connect(fd, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS) {
		fail(c, reply_code(errno));
		return -1;
	}
	c->state = CONNECTING;
	return 0;
}

/* Parses what the client has sent so far: greeting, then request. */
static int handshake(struct conn *c)
{
	size_t need;
	int atyp;

	if (c->state == GREET) {
		if (c->hslen < 2)
			return 0;
		if (c->hs[0] != 5)
			return -1;
		need = 2 + (size_t)c->hs[1];
		if (c->hslen < need)
			return 0;
		if (!memchr(c->hs + 2, 0, c->hs[1])) {
			send_to(c, CLIENT, "\5\377", 2);
			return -1;
		}
		consume(c, need);
		if (send_to(c, CLIENT, "\5\0", 2) < 0)
			return -1;
		c->state = REQUEST;
	}
	if (c->state == REQUEST) {
		if (c->hslen < 4)
			return 0;
		if (c->hs[0] != 5)
			return -1;
		if (c->hs[1] != 1) { /* CONNECT only */
			fail(c, 7);
			return -1;
		}
		atyp = c->hs[3];
		if (atyp != 1 && atyp != 4) { /* IPv4 and IPv6 literals only */
			fail(c, 8);
			return -1;
		}
		need = atyp == 1 ? 4 + 4 + 2 : 4 + 16 + 2;
		if (c->hslen < need)
			return 0;
		if (start_connect(c, atyp) < 0)
			return -1;
		consume(c, need);
		/* Bytes the client sent before the reply go out once connected. */
		if (c->hslen) {
			c->s[UPSTREAM].out = malloc(c->hslen);
			if (!c->s[UPSTREAM].out)
				return -1;
			memcpy(c->s[UPSTREAM].out, c->hs, c->hslen);
			c->s[UPSTREAM].len = c->hslen;
			c->hslen = 0;
		}
	}
	return 0;
}

/* The outgoing connection is made or has failed: reply either way. */
static int connected(struct conn *c, uint32_t ev)
{
	int fd = c->s[UPSTREAM].fd, err = 0;
	socklen_t len = sizeof err;
	struct sockaddr_storage ss;
	unsigned char r[22] = { 5, 0, 0 };
	size_t n;

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (!err && !(ev & EPOLLOUT))
		err = ECONNABORTED;
	len = sizeof ss;
	if (!err && getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		err = errno;
	if (err) {
		fail(c, reply_code(err));
		return -1;
	}
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;

		r[3] = 4;
		memcpy(r + 4, &a6->sin6_addr, 16);
		memcpy(r + 20, &a6->sin6_port, 2);
		n = 22;
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;

		r[3] = 1;
		memcpy(r + 4, &a4->sin_addr, 4);
		memcpy(r + 8, &a4->sin_port, 2);
		n = 10;
	}
	c->state = RELAY;
	return send_to(c, CLIENT, r, n);
}

/* One epoll event on side i. Nonzero: the connection is over. */
static int handle(struct conn *c, int i, uint32_t ev)
{
	struct side *sd = &c->s[i];
	uint32_t w;
	ssize_t n;

	if (c->state == CONNECTING && i == UPSTREAM)
		return connected(c, ev) || sync_both(c);
	if (ev & EPOLLERR)
		return -1;
	w = want(c, i);
	/* A hang-up on a side not being read: a reset, or a peer gone. */
	if ((ev & EPOLLHUP) && !(w & EPOLLIN))
		return -1;
	if ((ev & w & EPOLLOUT) && flush(c, i) < 0)
		return -1;
	if ((ev & (EPOLLIN | EPOLLHUP)) && (w & EPOLLIN)) {
		if (c->state == RELAY) {
			if (pump(c, i))
				return -1;
		} else {
			n = read(sd->fd, c->hs + c->hslen, sizeof c->hs - c->hslen);
			if (n == 0)
				return -1;
			if (n < 0) {
				if (errno != EAGAIN && errno != EINTR)
					return -1;
			} else {
				c->hslen += (size_t)n;
				if (handshake(c) < 0)
					return -1;
			}
		}
	}
	return sync_both(c);
}

static void accept_all(int l)
{
	for (;;) {
		int fd = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct conn *c;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			/* EAGAIN; or out of descriptors or memory, when the
			 * listener stays ready and is tried again at once. */
			return;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		c = calloc(1, sizeof *c);
		if (!c) {
			close(fd);
			continue;
		}
		c->s[CLIENT].fd = fd;
		c->s[UPSTREAM].fd = -1;
		c->state = GREET;
		if (sync_side(c, CLIENT) < 0)
			finish(c);
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct epoll_event e = { .events = EPOLLIN }, evs[256];
	struct rlimit rl;
	char *end;
	long port;
	int l, n, k;

	if (argc != 2) {
		fprintf(stderr, "usage: minsocks PORT (listens on 127.0.0.1)\n");
		return 2;
	}
	port = strtol(argv[1], &end, 10);
	if (*argv[1] == '\0' || *end != '\0' || port < 1 || port > 65535) {
		fprintf(stderr, "minsocks: bad port %s\n", argv[1]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l < 0) {
		perror("minsocks: socket");
		return 1;
	}
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 4096) < 0) {
		perror("minsocks: listen");
		return 1;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) {
		perror("minsocks: epoll_create1");
		return 1;
	}
	e.data.u64 = 0; /* no connection is at address 0 */
	if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &e) < 0) {
		perror("minsocks: epoll_ctl");
		return 1;
	}

	for (;;) {
		n = epoll_wait(ep, evs, (int)(sizeof evs / sizeof evs[0]), -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("minsocks: epoll_wait");
			return 1;
		}
		for (k = 0; k < n; k++) {
			uint64_t d = evs[k].data.u64;
			struct conn *c = (struct conn *)(uintptr_t)(d & ~(uint64_t)1);

			if (d == 0) {
				accept_all(l);
				continue;
			}
			/* Ended by an earlier event of this batch. */
			if (c->dead)
				continue;
			if (handle(c, (int)(d & 1), evs[k].events))
				finish(c);
		}
		while (dead) {
			struct conn *c = dead;

			dead = c->next_dead;
			free(c);
		}
	}
}
