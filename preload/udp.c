/*
 * udp.c — datagrams sent with an address (sendto, sendmsg, sendmmsg) on
 * UDP sockets, the way DNS resolvers and most UDP programs send. The first
 * datagram to a destination asks the funnel where it should really go: the
 * destination itself when no piece touches datagrams (a synthetic address
 * resolved), else a loopback relay that carries them through the pieces.
 * The answer is remembered per socket and destination; replies from there
 * are reported by recvfrom/recvmsg/recvmmsg as coming from the destination
 * the program named. On a UDP socket connected through the funnel, every
 * datagram comes from the peer the program connected to.
 *
 * sendto with MSG_FASTOPEN on a TCP socket is a connect in disguise and
 * goes through connect().
 */
#include "ft_internal.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

/* Associations: (socket inode, address the program used) <-> address on
 * the wire. Two open-addressed tables, one per direction; a full probe
 * run overwrites its last slot (the funnel gives the same answer again). */
#define ASSOC_BITS 9
#define ASSOC_SIZE (1 << ASSOC_BITS)
#define ASSOC_PROBE 8

struct assoc {
	uint64_t ino; /* 0: empty */
	socklen_t applen, wirelen;
	struct sockaddr_in6 app, wire;
};

static struct assoc by_app[ASSOC_SIZE], by_wire[ASSOC_SIZE];
/* One sequence lock for both tables: sendto and recvfrom are
 * async-signal-safe, so no mutex here (see ft_seq). */
static ft_seq assoc_seq;

FT_HIDDEN void ft_udp_after_fork(void)
{
	if (atomic_load(&assoc_seq.v) & 1)
		atomic_fetch_add(&assoc_seq.v, 1);
}

/* Only family, port, address (and IPv6 scope) make an address. */
static int addr_eq(const void *a, socklen_t alen, const void *b, socklen_t blen)
{
	const struct sockaddr *x = a, *y = b;
	if (alen < sizeof(sa_family_t) || blen < sizeof(sa_family_t) || x->sa_family != y->sa_family)
		return 0;
	if (x->sa_family == AF_INET) {
		if (alen < sizeof(struct sockaddr_in) || blen < sizeof(struct sockaddr_in))
			return 0;
		const struct sockaddr_in *p = a, *q = b;
		return p->sin_port == q->sin_port && p->sin_addr.s_addr == q->sin_addr.s_addr;
	}
	if (x->sa_family == AF_INET6) {
		if (alen < sizeof(struct sockaddr_in6) || blen < sizeof(struct sockaddr_in6))
			return 0;
		const struct sockaddr_in6 *p = a, *q = b;
		return p->sin6_port == q->sin6_port && p->sin6_scope_id == q->sin6_scope_id &&
		       memcmp(&p->sin6_addr, &q->sin6_addr, 16) == 0;
	}
	return 0;
}

static unsigned addr_hash(uint64_t ino, const void *sa, socklen_t len)
{
	const struct sockaddr *s = sa;
	uint64_t h = ino * 0x9E3779B97F4A7C15ull;
	const uint8_t *b = NULL;
	size_t n = 0;
	uint16_t port = 0;
	if (s->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		b = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
		n = 4;
		port = ((const struct sockaddr_in *)sa)->sin_port;
	} else if (s->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		b = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		n = 16;
		port = ((const struct sockaddr_in6 *)sa)->sin6_port;
	}
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001B3ull;
	h = (h ^ port) * 0x100000001B3ull;
	return (unsigned)(h >> 32);
}

static int assoc_find(struct assoc *table, int by_wire_side, uint64_t ino, const void *sa, socklen_t len,
		      struct assoc *out)
{
	unsigned h = addr_hash(ino, sa, len);
	for (int tries = 0; tries < 1000; tries++) {
		unsigned v = ft_seq_read_begin(&assoc_seq);
		if (v & 1)
			continue;
		int found = 0;
		for (int i = 0; i < ASSOC_PROBE; i++) {
			struct assoc *a = &table[(h + (unsigned)i) & (ASSOC_SIZE - 1)];
			if (a->ino == 0)
				break;
			if (a->ino == ino && (by_wire_side ? addr_eq(&a->wire, a->wirelen, sa, len) : addr_eq(&a->app, a->applen, sa, len))) {
				*out = *a;
				found = 1;
				break;
			}
		}
		if (!ft_seq_read_retry(&assoc_seq, v))
			return found;
	}
	return 0;
}

static void assoc_put_one(struct assoc *table, unsigned h, const struct assoc *in, int by_wire_side)
{
	struct assoc *slot = NULL;
	for (int i = 0; i < ASSOC_PROBE; i++) {
		slot = &table[(h + (unsigned)i) & (ASSOC_SIZE - 1)];
		if (slot->ino == 0 || (slot->ino == in->ino && (by_wire_side ? addr_eq(&slot->wire, slot->wirelen, &in->wire, in->wirelen)
										: addr_eq(&slot->app, slot->applen, &in->app, in->applen))))
			break;
	}
	*slot = *in;
}

static void assoc_put(const struct assoc *in)
{
	if (!ft_seq_write_begin(&assoc_seq))
		return; /* the funnel answers again next time */
	assoc_put_one(by_app, addr_hash(in->ino, &in->app, in->applen), in, 0);
	assoc_put_one(by_wire, addr_hash(in->ino, &in->wire, in->wirelen), in, 1);
	ft_seq_write_end(&assoc_seq);
}

static int is_inet(const struct sockaddr *sa, socklen_t len)
{
	return sa && len >= sizeof(sa_family_t) && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6);
}

/* refuse_uncarried: fd is a socket of a kind nothing in the funnel
 * carries (raw.c): -1 with EACCES, or 0 (the kernel may have the datagram
 * as it is) under --allow-raw. */
static int refuse_uncarried(const char *call, int fd, const struct sockaddr *dest, socklen_t dlen)
{
	if (ft_allow_raw)
		return 0;
	int family = 0, type = 0, proto = 0;
	ft_fd_uncarried(fd, &family, &type, &proto);
	return ft_refuse(call, family, type, proto, dest, dlen);
}

/* wire_for finds where a datagram from fd to dest goes: 1 with *wire set,
 * 0 when the kernel may have it unchanged (a TCP socket, say), -1 with
 * errno set when the funnel refuses or is gone, or when nothing in the
 * funnel carries the socket's kind. */
static int wire_for(const char *call, int fd, const struct sockaddr *dest, socklen_t dlen, struct sockaddr_in6 *wire,
		    socklen_t *wirelen)
{
	int type = 0, proto = 0;
	socklen_t l = sizeof type;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0)
		return 0;
	if (type == SOCK_RAW || type == SOCK_PACKET) {
		/* A raw socket that got past socket(): the kernel would send
		 * the packet to dest past every piece. */
		if (ft_fd_uncarried(fd, NULL, NULL, NULL))
			return refuse_uncarried(call, fd, dest, dlen);
		return 0;
	}
	if (type == SOCK_SEQPACKET) {
		/* SCTP, the only inet SOCK_SEQPACKET: a datagram with an
		 * address sets up an association, which the funnel cannot carry
		 * (its connect() is refused too). */
		errno = EACCES;
		return -1;
	}
	if (type != SOCK_DGRAM)
		return 0;
	l = sizeof proto;
	getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l);
	if (proto != IPPROTO_UDP && proto != IPPROTO_UDPLITE) {
		/* ICMP echo: nothing carries it either. */
		if (ft_fd_uncarried(fd, NULL, NULL, NULL))
			return refuse_uncarried(call, fd, dest, dlen);
		errno = EACCES;
		return -1;
	}
	struct ft_fdinfo info;
	int known = ft_fd_get(fd, &info);
	if (known && info.kind == FT_KIND_OUT && addr_eq(&info.peer, info.peerlen, dest, dlen)) {
		*wirelen = 0; /* the connected peer: send without an address */
		return 1;
	}
	uint64_t ino = known ? info.ino : ft_inode(fd);
	struct assoc a;
	if (assoc_find(by_app, 0, ino, dest, dlen, &a)) {
		*wire = a.wire;
		*wirelen = a.wirelen;
		return 1;
	}
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_UDP_ASSOC;
	req.addrlen = dlen < FT_ADDR_MAX ? dlen : FT_ADDR_MAX;
	memcpy(req.addr, dest, req.addrlen);
	int r = ft_call(&req, fd, &resp, FT_WAIT_RETRY);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	if (resp.err) {
		errno = resp.err;
		return -1;
	}
	memset(&a, 0, sizeof a);
	a.ino = ino;
	a.applen = req.addrlen;
	memcpy(&a.app, dest, req.addrlen);
	a.wirelen = resp.addrlen < sizeof a.wire ? resp.addrlen : sizeof a.wire;
	memcpy(&a.wire, resp.addr, a.wirelen);
	assoc_put(&a);
	if (!known) {
		memset(&info, 0, sizeof info);
		info.ino = ino;
	}
	if (!(info.udp & FT_UDP_ASSOC)) {
		info.udp |= FT_UDP_ASSOC;
		ft_fd_set(fd, &info);
	}
	*wire = a.wire;
	*wirelen = a.wirelen;
	return 1;
}

/* is_link: a link-layer address (struct sockaddr_ll), which only a packet
 * socket takes: sending to one sends a frame past the funnel. */
static int is_link(const void *sa, socklen_t len)
{
	return sa && len >= sizeof(sa_family_t) && ((const struct sockaddr *)sa)->sa_family == AF_PACKET &&
	       !ft_allow_raw;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *dest, socklen_t dlen)
{
	ft_init();
	if ((is_link(dest, dlen) || is_inet(dest, dlen)) && !ft_hooked())
		return ft_real.sendto(fd, buf, len, flags, dest, dlen);
	if (is_link(dest, dlen))
		return refuse_uncarried("sendto", fd, dest, dlen);
	if (!is_inet(dest, dlen))
		return ft_real.sendto(fd, buf, len, flags, dest, dlen);
	if (flags & MSG_FASTOPEN) {
		/* TCP Fast Open: connect through the funnel, then send. */
		int type = 0;
		socklen_t l = sizeof type;
		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) == 0 && type == SOCK_STREAM) {
			if (connect(fd, dest, dlen) != 0)
				return -1; /* EINPROGRESS: nothing sent, as native TFO without a cookie */
			return ft_real.sendto(fd, buf, len, flags & ~MSG_FASTOPEN, NULL, 0);
		}
	}
	struct sockaddr_in6 wire;
	socklen_t wirelen;
	int r = wire_for("sendto", fd, dest, dlen, &wire, &wirelen);
	if (r < 0)
		return -1;
	if (r == 0)
		return ft_real.sendto(fd, buf, len, flags, dest, dlen);
	return ft_real.sendto(fd, buf, len, flags, wirelen ? (struct sockaddr *)&wire : NULL, wirelen);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	ft_init();
	if (msg && (is_link(msg->msg_name, msg->msg_namelen) || is_inet(msg->msg_name, msg->msg_namelen)) &&
	    !ft_hooked())
		return ft_real.sendmsg(fd, msg, flags);
	if (msg && is_link(msg->msg_name, msg->msg_namelen))
		return refuse_uncarried("sendmsg", fd, NULL, 0);
	if (!msg || !is_inet(msg->msg_name, msg->msg_namelen))
		return ft_real.sendmsg(fd, msg, flags);
	struct sockaddr_in6 wire;
	socklen_t wirelen;
	int r = wire_for("sendmsg", fd, msg->msg_name, msg->msg_namelen, &wire, &wirelen);
	if (r < 0)
		return -1;
	if (r == 0)
		return ft_real.sendmsg(fd, msg, flags);
	struct msghdr m = *msg;
	m.msg_name = wirelen ? &wire : NULL;
	m.msg_namelen = wirelen;
	return ft_real.sendmsg(fd, &m, flags);
}

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
	ft_init();
	if (!ft_hooked())
		return ft_real.sendmmsg(fd, vec, vlen, flags);
	enum { BATCH = 64 };
	struct mmsghdr copy[BATCH];
	struct sockaddr_in6 wires[BATCH];
	unsigned int n = vlen < BATCH ? vlen : BATCH; /* a short count is allowed */
	int any = 0;
	for (unsigned int i = 0; i < n; i++) {
		copy[i] = vec[i];
		struct msghdr *m = &copy[i].msg_hdr;
		if (is_link(m->msg_name, m->msg_namelen)) {
			if (i == 0)
				return refuse_uncarried("sendmmsg", fd, NULL, 0);
			n = i; /* send what came before the refused one */
			break;
		}
		if (!is_inet(m->msg_name, m->msg_namelen))
			continue;
		socklen_t wl;
		int r = wire_for("sendmmsg", fd, m->msg_name, m->msg_namelen, &wires[i], &wl);
		if (r < 0) {
			if (i == 0)
				return -1;
			n = i; /* send what came before the refused one */
			break;
		}
		if (r == 1) {
			m->msg_name = wl ? &wires[i] : NULL;
			m->msg_namelen = wl;
			any = 1;
		}
	}
	if (!any)
		return ft_real.sendmmsg(fd, vec, vlen, flags);
	int sent = ft_real.sendmmsg(fd, copy, n, flags);
	for (int i = 0; i < sent; i++)
		vec[i].msg_len = copy[i].msg_len;
	return sent;
}

static int is_loopback(const void *sa, socklen_t len)
{
	const struct sockaddr *s = sa;
	if (s->sa_family == AF_INET && len >= sizeof(struct sockaddr_in))
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (s->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return 0;
}

static int is_unspecified(const void *sa, socklen_t len)
{
	const struct sockaddr *s = sa;
	if (s->sa_family == AF_INET && len >= sizeof(struct sockaddr_in))
		return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_ANY);
	if (s->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
		return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)sa)->sin6_addr);
	return 0;
}

static uint16_t port_of(const void *sa)
{
	const struct sockaddr *s = sa;
	return s->sa_family == AF_INET ? ((const struct sockaddr_in *)sa)->sin_port
				       : ((const struct sockaddr_in6 *)sa)->sin6_port;
}

/* ft_udp_bound: a UDP socket bound to all addresses on a chosen port is
 * a server's (a SIP phone's 5060): the profile may receive for it
 * elsewhere too (a tunnel address), and then relays each peer's datagrams
 * to it from a loopback socket of the funnel, which from_for names. A
 * funnel that cannot (or is gone) leaves the socket as the kernel bound
 * it. */
FT_HIDDEN void ft_udp_bound(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (!is_unspecified(sa, len) || port_of(sa) == 0)
		return;
	int type = 0, proto = 0;
	socklen_t l = sizeof type;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0 || type != SOCK_DGRAM)
		return;
	l = sizeof proto;
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) != 0 || proto != IPPROTO_UDP)
		return;
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_UDP_BIND;
	req.addrlen = len < FT_ADDR_MAX ? len : FT_ADDR_MAX;
	memcpy(req.addr, sa, req.addrlen);
	if (ft_call(&req, fd, &resp, FT_WAIT_RETRY) != 0 || resp.err || !(resp.flags & FT_UDP_LISTENED))
		return;
	struct ft_fdinfo info;
	if (!ft_fd_get(fd, &info)) {
		memset(&info, 0, sizeof info);
		info.ino = ft_inode(fd);
	}
	info.udp |= FT_UDP_FROM_RELAYS;
	ft_fd_set(fd, &info);
}

/* from_for rewrites a datagram's source, got (as the kernel gave it, now
 * also in src), as the program expects to see it. It returns the length of
 * the address in src. */
static socklen_t from_for(int fd, void *src, socklen_t room, const struct sockaddr_storage *got, socklen_t gotlen)
{
	struct ft_fdinfo info;
	if (gotlen == 0 || !ft_fd_get(fd, &info))
		return gotlen;
	if (info.kind == FT_KIND_OUT && info.peerlen) {
		ft_copy_addr(src, &room, &info.peer, info.peerlen);
		return room;
	}
	struct assoc a;
	if (info.udp && assoc_find(by_wire, 1, info.ino, got, gotlen, &a)) {
		ft_copy_addr(src, &room, &a.app, a.applen);
		return room;
	}
	if ((info.udp & FT_UDP_FROM_RELAYS) && is_loopback(got, gotlen)) {
		/* A peer's first datagram through a relay of the funnel: ask
		 * whose it is once, and remember it both ways, so that the
		 * program's answer (sendto the peer) goes back through the
		 * same relay with no question asked. */
		struct ft_req req;
		struct ft_resp resp;
		memset(&req, 0, sizeof req);
		req.op = FT_OP_UDP_PEER;
		req.addrlen = gotlen < FT_ADDR_MAX ? gotlen : FT_ADDR_MAX;
		memcpy(req.addr, got, req.addrlen);
		if (ft_call(&req, -1, &resp, FT_WAIT_RETRY) == 0 && resp.err == 0 && resp.addrlen > 0) {
			memset(&a, 0, sizeof a);
			a.ino = info.ino;
			a.applen = resp.addrlen < sizeof a.app ? resp.addrlen : sizeof a.app;
			memcpy(&a.app, resp.addr, a.applen);
			a.wirelen = req.addrlen;
			memcpy(&a.wire, got, a.wirelen);
			assoc_put(&a);
			ft_copy_addr(src, &room, &a.app, a.applen);
			return room;
		}
	}
	return gotlen;
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *src, socklen_t *srclen)
{
	ft_init();
	if (!src || !srclen)
		return ft_real.recvfrom(fd, buf, len, flags, src, srclen);
	socklen_t room = *srclen;
	ssize_t n = ft_real.recvfrom(fd, buf, len, flags, src, srclen);
	if (n >= 0 && *srclen > 0 && *srclen <= room) {
		struct sockaddr_storage got;
		socklen_t gotlen = *srclen < sizeof got ? *srclen : sizeof got;
		memcpy(&got, src, gotlen);
		*srclen = from_for(fd, src, room, &got, gotlen);
	}
	return n;
}

static void fix_msg_from(int fd, struct msghdr *msg, socklen_t room)
{
	if (!msg->msg_name || msg->msg_namelen == 0 || msg->msg_namelen > room)
		return;
	struct sockaddr_storage got;
	socklen_t gotlen = msg->msg_namelen < sizeof got ? msg->msg_namelen : sizeof got;
	memcpy(&got, msg->msg_name, gotlen);
	msg->msg_namelen = from_for(fd, msg->msg_name, room, &got, gotlen);
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	ft_init();
	socklen_t room = msg ? msg->msg_namelen : 0;
	ssize_t n = ft_real.recvmsg(fd, msg, flags);
	if (n >= 0 && msg)
		fix_msg_from(fd, msg, room);
	return n;
}

int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *timeout)
{
	ft_init();
	enum { BATCH = 64 };
	socklen_t rooms[BATCH];
	if (vlen > BATCH)
		vlen = BATCH; /* a short count is allowed */
	for (unsigned int i = 0; i < vlen; i++)
		rooms[i] = vec[i].msg_hdr.msg_namelen;
	int n = ft_real.recvmmsg(fd, vec, vlen, flags, timeout);
	for (int i = 0; i < n; i++)
		fix_msg_from(fd, &vec[i].msg_hdr, rooms[i]);
	return n;
}
