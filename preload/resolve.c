/*
 * resolve.c — names resolve inside the funnel. A host name never becomes a
 * DNS query from the program: the funnel answers with a synthetic address
 * that maps back to the name, and a connect() to it becomes a flow whose
 * destination is the name, resolved the way the profile says (a hosts
 * piece, the system resolver in direct, or a SOCKS5 server far away).
 * Numeric addresses and "localhost" are answered here, without a lookup;
 * reverse lookups of real addresses answer numerically.
 *
 * Fail closed: when the funnel cannot be reached, lookups fail with
 * EAI_AGAIN / TRY_AGAIN; nothing falls back to the system resolver.
 */
#include "ft_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int is_localhost(const char *name)
{
	size_t n = strlen(name);
	if (n > 0 && name[n - 1] == '.')
		n--;
	if (n == 9 && strncasecmp(name, "localhost", 9) == 0)
		return 1;
	return n > 10 && strncasecmp(name + n - 10, ".localhost", 10) == 0;
}

/* is_numeric: glibc would answer it from the text alone, no lookup. */
static int is_numeric(const char *name)
{
	unsigned char b[16];
	struct in_addr a4;
	return inet_pton(AF_INET6, name, b) == 1 || inet_aton(name, &a4) != 0;
}

/* ask_funnel resolves name to a synthetic address of family af into resp;
 * it returns 0 or an EAI_* code. */
static int ask_funnel(const char *name, int af, struct ft_resp *resp)
{
	struct ft_req req;
	memset(&req, 0, sizeof req);
	size_t n = strlen(name);
	if (n == 0 || n >= FT_NAME_MAX)
		return EAI_NONAME;
	req.op = FT_OP_RESOLVE;
	req.arg = af;
	memcpy(req.name, name, n);
	if (ft_call(&req, -1, resp, FT_WAIT_RETRY) < 0)
		return EAI_AGAIN; /* no funnel: fail closed, never ask DNS */
	if (resp->err)
		return resp->err;
	if (resp->addrlen < sizeof(sa_family_t) || ((struct sockaddr *)resp->addr)->sa_family != af)
		return EAI_FAIL;
	return 0;
}

static const void *addr_bytes(const struct ft_resp *resp)
{
	const struct sockaddr *sa = (const struct sockaddr *)resp->addr;
	if (sa->sa_family == AF_INET)
		return &((const struct sockaddr_in *)resp->addr)->sin_addr;
	return &((const struct sockaddr_in6 *)resp->addr)->sin6_addr;
}

static void append(struct addrinfo **list, struct addrinfo *more)
{
	while (*list)
		list = &(*list)->ai_next;
	*list = more;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
	ft_init();
	if (!node || !ft_hooked())
		return ft_real.getaddrinfo(node, service, hints, res); /* wildcard or loopback: no lookup */
	struct addrinfo h;
	if (hints)
		h = *hints;
	else {
		memset(&h, 0, sizeof h);
		h.ai_family = AF_UNSPEC;
		h.ai_flags = AI_V4MAPPED | AI_ADDRCONFIG;
	}
	if (h.ai_family != AF_UNSPEC && h.ai_family != AF_INET && h.ai_family != AF_INET6)
		return ft_real.getaddrinfo(node, service, hints, res);

	/* Numeric hosts, bad flags, unknown services: glibc's own answer,
	 * with AI_NUMERICHOST so that it never looks anything up. */
	struct addrinfo nh = h;
	nh.ai_flags |= AI_NUMERICHOST;
	int r = ft_real.getaddrinfo(node, service, &nh, res);
	if (r != EAI_NONAME || (h.ai_flags & AI_NUMERICHOST) || is_numeric(node))
		return r;

	nh.ai_flags &= ~(AI_ADDRCONFIG | AI_V4MAPPED | AI_ALL);
	if (is_localhost(node)) {
		*res = NULL;
		r = EAI_NONAME;
		if (h.ai_family != AF_INET6) {
			nh.ai_family = AF_INET;
			r = ft_real.getaddrinfo("127.0.0.1", service, &nh, res);
		}
		if (h.ai_family != AF_INET) {
			struct addrinfo *six = NULL;
			nh.ai_family = AF_INET6;
			int r6 = ft_real.getaddrinfo("::1", service, &nh, &six);
			if (r6 == 0) {
				append(res, six);
				r = 0;
			} else if (r != 0)
				r = r6;
		}
		return r;
	}

	/* Programs that ask for any family get IPv4: the synthetic address
	 * only names the destination, and the funnel reaches it over either
	 * family whatever the program's socket is. */
	int af = h.ai_family == AF_INET6 ? AF_INET6 : AF_INET;
	struct ft_resp resp;
	r = ask_funnel(node, af, &resp);
	if (r != 0)
		return r;
	char text[INET6_ADDRSTRLEN];
	if (!inet_ntop(af, addr_bytes(&resp), text, sizeof text))
		return EAI_FAIL;
	nh.ai_family = af;
	r = ft_real.getaddrinfo(text, service, &nh, res);
	if (r == 0 && (h.ai_flags & AI_CANONNAME) && *res) {
		char *canon = strdup(resp.name[0] ? resp.name : node);
		if (canon) {
			free((*res)->ai_canonname);
			(*res)->ai_canonname = canon;
		}
	}
	return r;
}

int getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host, socklen_t hostlen, char *serv,
		socklen_t servlen, int flags)
{
	ft_init();
	if (!sa || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) || !ft_hooked())
		return ft_real.getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
	/* The service part and the numeric form come from glibc; only the host
	 * name is ours to give. */
	int r = ft_real.getnameinfo(sa, salen, host, hostlen, serv, servlen, (flags | NI_NUMERICHOST) & ~NI_NAMEREQD);
	if (r != 0 || !host || hostlen == 0 || (flags & NI_NUMERICHOST))
		return r;
	if (ft_is_synthetic(sa, salen)) {
		struct ft_req req;
		struct ft_resp resp;
		memset(&req, 0, sizeof req);
		req.op = FT_OP_REVERSE;
		req.addrlen = salen < FT_ADDR_MAX ? salen : FT_ADDR_MAX;
		memcpy(req.addr, sa, req.addrlen);
		if (ft_call(&req, -1, &resp, FT_WAIT_RETRY) < 0)
			return EAI_AGAIN;
		if (resp.err == 0 && resp.name[0]) {
			size_t n = strnlen(resp.name, FT_NAME_MAX - 1);
			if (n + 1 > hostlen)
				return EAI_OVERFLOW;
			memcpy(host, resp.name, n);
			host[n] = '\0';
			return 0;
		}
	}
	/* A real address: a reverse DNS lookup would leave the program, so the
	 * answer stays numeric. */
	if (flags & NI_NAMEREQD)
		return EAI_NONAME;
	return 0;
}

/* ---- the older gethostbyname family ------------------------------------ */

struct host_storage {
	char *aliases[1];
	char *addrs[2];
	unsigned char addr[16];
	char name[FT_NAME_MAX];
};

/* set_hostent points he at st, whose addr is already filled in. */
static void set_hostent(struct hostent *he, struct host_storage *st, int af, const char *name)
{
	size_t n = strnlen(name, FT_NAME_MAX - 1);
	memcpy(st->name, name, n);
	st->name[n] = '\0';
	st->aliases[0] = NULL;
	st->addrs[0] = (char *)st->addr;
	st->addrs[1] = NULL;
	he->h_name = st->name;
	he->h_aliases = st->aliases;
	he->h_addrtype = af;
	he->h_length = af == AF_INET ? 4 : 16;
	he->h_addr_list = st->addrs;
}

/* fill_host answers name for family af into he, using storage; it returns
 * 0, or a netdb h_errno value. */
static int fill_host(const char *name, int af, struct hostent *he, struct host_storage *st)
{
	struct ft_resp resp;
	int r;
	if (is_localhost(name)) {
		memset(&resp, 0, sizeof resp);
		if (af == AF_INET) {
			struct sockaddr_in *s = (struct sockaddr_in *)resp.addr;
			s->sin_family = AF_INET;
			s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		} else {
			struct sockaddr_in6 *s = (struct sockaddr_in6 *)resp.addr;
			s->sin6_family = AF_INET6;
			s->sin6_addr = in6addr_loopback;
		}
		r = 0;
	} else {
		r = ask_funnel(name, af, &resp);
	}
	if (r == EAI_AGAIN)
		return TRY_AGAIN;
	if (r != 0)
		return r == EAI_NONAME ? HOST_NOT_FOUND : NO_RECOVERY;
	memcpy(st->addr, addr_bytes(&resp), af == AF_INET ? 4 : 16);
	set_hostent(he, st, af, resp.name[0] ? resp.name : name);
	return 0;
}

static int numeric_host(const char *name, int af, struct hostent *he, struct host_storage *st)
{
	if (af == AF_INET) {
		struct in_addr a;
		if (!inet_aton(name, &a))
			return 0;
		memcpy(st->addr, &a, 4);
	} else if (inet_pton(AF_INET6, name, st->addr) != 1) {
		return 0;
	}
	set_hostent(he, st, af, name);
	return 1;
}

static __thread struct hostent tls_he;
static __thread struct host_storage tls_st;

struct hostent *gethostbyname2(const char *name, int af)
{
	ft_init();
	if (!ft_hooked())
		return ft_pass_gethostbyname2(name, af);
	if (!name || (af != AF_INET && af != AF_INET6)) {
		h_errno = NO_RECOVERY;
		errno = EAFNOSUPPORT;
		return NULL;
	}
	if (numeric_host(name, af, &tls_he, &tls_st))
		return &tls_he;
	int herr = fill_host(name, af, &tls_he, &tls_st);
	if (herr) {
		h_errno = herr;
		return NULL;
	}
	return &tls_he;
}

struct hostent *gethostbyname(const char *name)
{
	return gethostbyname2(name, AF_INET);
}

int gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf, size_t buflen,
		     struct hostent **result, int *h_errnop)
{
	ft_init();
	if (!ft_hooked())
		return ft_pass_gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop);
	*result = NULL;
	if (!name || (af != AF_INET && af != AF_INET6)) {
		if (h_errnop)
			*h_errnop = NO_RECOVERY;
		return EAFNOSUPPORT;
	}
	/* The answer lives in the caller's buffer, aligned for its pointers. */
	uintptr_t p = ((uintptr_t)buf + sizeof(void *) - 1) & ~(uintptr_t)(sizeof(void *) - 1);
	if (!buf || p + sizeof(struct host_storage) > (uintptr_t)buf + buflen) {
		if (h_errnop)
			*h_errnop = NETDB_INTERNAL;
		return ERANGE;
	}
	struct host_storage *st = (struct host_storage *)p;
	if (numeric_host(name, af, ret, st)) {
		*result = ret;
		return 0;
	}
	int herr = fill_host(name, af, ret, st);
	if (herr) {
		if (h_errnop)
			*h_errnop = herr;
		return herr == TRY_AGAIN ? EAGAIN : ENOENT;
	}
	*result = ret;
	return 0;
}

int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t buflen, struct hostent **result,
		    int *h_errnop)
{
	return gethostbyname2_r(name, AF_INET, ret, buf, buflen, result, h_errnop);
}

/* gethostbyaddr: a synthetic address gives its name back; a real one has
 * no name here (a PTR query would leave the program). */
static int fill_reverse(const void *addr, socklen_t len, int type, struct hostent *he, struct host_storage *st)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	socklen_t salen;
	if (type == AF_INET && len == 4) {
		struct sockaddr_in *s = (struct sockaddr_in *)&ss;
		s->sin_family = AF_INET;
		memcpy(&s->sin_addr, addr, 4);
		salen = sizeof *s;
	} else if (type == AF_INET6 && len == 16) {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
		s->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, addr, 16);
		salen = sizeof *s;
	} else {
		return NO_RECOVERY;
	}
	if (!ft_is_synthetic((struct sockaddr *)&ss, salen))
		return HOST_NOT_FOUND;
	struct ft_req req;
	struct ft_resp resp;
	memset(&req, 0, sizeof req);
	req.op = FT_OP_REVERSE;
	req.addrlen = salen;
	memcpy(req.addr, &ss, salen);
	if (ft_call(&req, -1, &resp, FT_WAIT_RETRY) < 0)
		return TRY_AGAIN;
	if (resp.err || !resp.name[0])
		return HOST_NOT_FOUND;
	size_t n = strnlen(resp.name, FT_NAME_MAX - 1);
	memcpy(st->name, resp.name, n);
	st->name[n] = '\0';
	memcpy(st->addr, addr, (size_t)len);
	st->aliases[0] = NULL;
	st->addrs[0] = (char *)st->addr;
	st->addrs[1] = NULL;
	he->h_name = st->name;
	he->h_aliases = st->aliases;
	he->h_addrtype = type;
	he->h_length = (int)len;
	he->h_addr_list = st->addrs;
	return 0;
}

struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type)
{
	ft_init();
	if (!ft_hooked())
		return ft_pass_gethostbyaddr(addr, len, type);
	int herr = fill_reverse(addr, len, type, &tls_he, &tls_st);
	if (herr) {
		h_errno = herr;
		return NULL;
	}
	return &tls_he;
}

int gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *ret, char *buf, size_t buflen,
		    struct hostent **result, int *h_errnop)
{
	ft_init();
	if (!ft_hooked())
		return ft_pass_gethostbyaddr_r(addr, len, type, ret, buf, buflen, result, h_errnop);
	*result = NULL;
	uintptr_t p = ((uintptr_t)buf + sizeof(void *) - 1) & ~(uintptr_t)(sizeof(void *) - 1);
	if (!buf || p + sizeof(struct host_storage) > (uintptr_t)buf + buflen) {
		if (h_errnop)
			*h_errnop = NETDB_INTERNAL;
		return ERANGE;
	}
	int herr = fill_reverse(addr, len, type, ret, (struct host_storage *)p);
	if (herr) {
		if (h_errnop)
			*h_errnop = herr;
		return herr == TRY_AGAIN ? EAGAIN : ENOENT;
	}
	*result = ret;
	return 0;
}
