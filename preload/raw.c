/*
 * raw.c — sockets that nothing in the funnel carries: raw IP sockets
 * (SOCK_RAW in AF_INET/AF_INET6), packet sockets (AF_PACKET, SOCK_PACKET,
 * AF_XDP) and ICMP echo ("ping") sockets (SOCK_DGRAM with IPPROTO_ICMP or
 * IPPROTO_ICMPV6). The funnel works on streams and datagrams; a socket that
 * sends whole IP packets or link-layer frames would pass around every piece
 * of the profile, a `deny` included. So socket() refuses them with EACCES,
 * and so do connect, sendto, sendmsg, sendmmsg and bind on one that slipped
 * through (made with a raw system call, inherited, received over a Unix
 * socket) — unless the launcher was given --allow-raw, which puts
 * FUNTUN_ALLOW_RAW=1 in the environment: then they reach the kernel as they
 * are, outside the funnel.
 *
 * Raw sockets of other families stay untouched: AF_NETLINK sockets are
 * SOCK_RAW too, and the C library's own getaddrinfo uses them.
 */
#include "ft_internal.h"

#include <errno.h>
#include <string.h>

#ifndef AF_XDP
#define AF_XDP 44
#endif

FT_HIDDEN int ft_allow_raw;
FT_HIDDEN uint64_t ft_guard_pass;

FT_HIDDEN const char *ft_uncarried(int family, int type, int protocol)
{
	type &= ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (family == AF_PACKET || family == AF_XDP || type == SOCK_PACKET)
		return "packet";
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	if (type == SOCK_RAW)
		return "raw";
	if (type == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6))
		return "icmp";
	return NULL;
}

FT_HIDDEN const char *ft_fd_uncarried(int fd, int *family, int *type, int *protocol)
{
	int f = 0, t = 0, p = 0;
	socklen_t l = sizeof f;
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &f, &l) != 0)
		return NULL; /* not a socket: the kernel will say so */
	l = sizeof t;
	getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &l);
	l = sizeof p;
	getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &p, &l);
	if (family)
		*family = f;
	if (type)
		*type = t;
	if (protocol)
		*protocol = p;
	return ft_uncarried(f, t, p);
}

FT_HIDDEN int ft_refuse(const char *call, int family, int type, int protocol, const struct sockaddr *sa,
			socklen_t len)
{
	struct ft_req req;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_REFUSED;
	req.arg = family;
	req.flags = (uint32_t)(type & 0xffff) | ((uint32_t)(protocol & 0xffff) << 16);
	size_t n = strlen(call);
	memcpy(req.name, call, n < FT_NAME_MAX ? n : FT_NAME_MAX - 1);
	if (sa && len >= sizeof(sa_family_t) && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)) {
		req.addrlen = len < FT_ADDR_MAX ? len : FT_ADDR_MAX;
		memcpy(req.addr, sa, req.addrlen);
	}
	ft_send_oneway(&req);
	errno = EACCES;
	return -1;
}

int socket(int family, int type, int protocol)
{
	ft_init();
	if (!ft_allow_raw && ft_uncarried(family, type, protocol) && ft_hooked())
		return ft_refuse("socket", family, type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC), protocol, NULL, 0);
	return ft_real.socket(family, type, protocol);
}
