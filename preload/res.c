/*
 * res.c — the resolver's query functions (res_query, res_search,
 * res_querydomain, their res_n* forms taking a resolver state, and the
 * __res_* names glibc also exports) answered from the funnel. They would
 * send the question to the nameservers of /etc/resolv.conf; here the
 * answer message is built in the library instead, from what the hooked
 * getaddrinfo gives for the name, so nothing reaches the network:
 *
 *   class IN, type A / AAAA: one record with the name's synthetic address
 *     (a connect() to it is a flow to the name, as for getaddrinfo);
 *   any other class or type: no records (NOERROR, h_errno NO_DATA), since
 *     the funnel only hands out addresses;
 *   a name the funnel refuses: NXDOMAIN (HOST_NOT_FOUND); no funnel:
 *     SERVFAIL (TRY_AGAIN), failing closed.
 *
 * The message has what a nameserver's would: the caller's question echoed,
 * QR, RD as the state asks, RA. As glibc does, only an answer with records
 * returns its length; the others return -1 with h_errno set, the message
 * still written to the buffer.
 *
 * res_search does not walk the search list: the funnel resolves the name
 * as given (the profile's pieces decide what it means), as getaddrinfo
 * does under the hook.
 */
#include "ft_internal.h"

#include <arpa/nameser.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <resolv.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

/* The real functions, for programs the funnel leaves alone. Before glibc
 * 2.34 they are libresolv's, some only under their __res_ names. */
typedef int (*nquery_fn)(res_state, const char *, int, int, unsigned char *, int);
typedef int (*nquerydomain_fn)(res_state, const char *, const char *, int, int, unsigned char *, int);
typedef int (*query_fn)(const char *, int, int, unsigned char *, int);
typedef int (*querydomain_fn)(const char *, const char *, int, int, unsigned char *, int);
static struct {
	nquery_fn nquery, nsearch;
	nquerydomain_fn nquerydomain;
	/* Not res_n*(&_res): glibc's state-less forms initialise _res first. */
	query_fn query, search;
	querydomain_fn querydomain;
} real_res;
static pthread_once_t real_res_once = PTHREAD_ONCE_INIT;

static void *next_symbol(const char *name, const char *alias)
{
	void *f = dlsym(RTLD_NEXT, name);
	return f ? f : dlsym(RTLD_NEXT, alias);
}

static void real_res_init(void)
{
	real_res.nquery = (nquery_fn)next_symbol("res_nquery", "__res_nquery");
	real_res.nsearch = (nquery_fn)next_symbol("res_nsearch", "__res_nsearch");
	real_res.nquerydomain = (nquerydomain_fn)next_symbol("res_nquerydomain", "__res_nquerydomain");
	real_res.query = (query_fn)next_symbol("res_query", "__res_query");
	real_res.search = (query_fn)next_symbol("res_search", "__res_search");
	real_res.querydomain = (querydomain_fn)next_symbol("res_querydomain", "__res_querydomain");
}

static int passthrough(void)
{
	ft_init();
	if (ft_hooked())
		return 0;
	pthread_once(&real_res_once, real_res_init);
	return 1;
}

static void set_herrno(res_state statp, int herr)
{
	if (statp)
		statp->res_h_errno = herr;
	h_errno = herr;
}

/* put_name writes name (dotted, one optional trailing dot) in wire form;
 * it returns the bytes written, or -1 for a name DNS cannot carry or a
 * buffer too small. */
static int put_name(unsigned char *out, int room, const char *name)
{
	int n = 0;
	const char *p = name;
	if (strcmp(name, ".") == 0)
		p = "";
	while (*p) {
		const char *dot = strchr(p, '.');
		size_t len = dot ? (size_t)(dot - p) : strlen(p);
		if (len == 0 || len > 63)
			return -1;
		if (n + 1 + (int)len > room || n + 1 + (int)len > NS_MAXCDNAME - 1)
			return -1;
		out[n++] = (unsigned char)len;
		memcpy(out + n, p, len);
		n += (int)len;
		p += len;
		if (*p == '.')
			p++;
	}
	if (n + 1 > room)
		return -1;
	out[n++] = 0;
	return n;
}

static void put16(unsigned char *p, unsigned v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
}

static unsigned query_id(void)
{
	/* Nothing goes on the wire: the id need not be unpredictable, only
	 * differ between queries as a nameserver's answers would. */
	static atomic_uint counter;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((unsigned)ts.tv_nsec ^ atomic_fetch_add(&counter, 0x9e37u)) & 0xffff;
}

/* lookup asks the hooked getaddrinfo for name's address of family af into
 * addr (4 or 16 bytes); 0, or the h_errno value the answer means. */
static int lookup(const char *name, int af, unsigned char *addr)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = af;
	hints.ai_socktype = SOCK_STREAM;
	int r = getaddrinfo(name, NULL, &hints, &res);
	switch (r) {
	case 0:
		break;
	case EAI_NONAME:
		return HOST_NOT_FOUND;
	case EAI_AGAIN:
		return TRY_AGAIN;
	case EAI_NODATA:
	case EAI_ADDRFAMILY:
		return NO_DATA;
	default:
		return NO_RECOVERY;
	}
	int herr = NO_DATA;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		if (ai->ai_family != af)
			continue;
		if (af == AF_INET)
			memcpy(addr, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, 4);
		else
			memcpy(addr, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, 16);
		herr = 0;
		break;
	}
	freeaddrinfo(res);
	return herr;
}

/* answer builds the funnel's reply to (name, class, type) in answer. */
static int answer_query(res_state statp, const char *name, int class, int type, unsigned char *answer, int anslen)
{
	if (!name || !answer || anslen < NS_HFIXEDSZ) {
		errno = EINVAL;
		set_herrno(statp, NETDB_INTERNAL);
		return -1;
	}
	int qlen = put_name(answer + NS_HFIXEDSZ, anslen - NS_HFIXEDSZ - NS_QFIXEDSZ, name);
	if (qlen < 0) {
		errno = EMSGSIZE;
		set_herrno(statp, NO_RECOVERY);
		return -1;
	}
	unsigned char *q = answer + NS_HFIXEDSZ + qlen;
	put16(q, (unsigned)type);
	put16(q + 2, (unsigned)class);
	int len = NS_HFIXEDSZ + qlen + NS_QFIXEDSZ;

	int herr = NO_DATA;
	unsigned char addr[16];
	int addrlen = 0;
	if (class == ns_c_in && (type == ns_t_a || type == ns_t_aaaa)) {
		int af = type == ns_t_a ? AF_INET : AF_INET6;
		herr = lookup(name, af, addr);
		addrlen = af == AF_INET ? 4 : 16;
	} else {
		/* The name must still be one the funnel takes: NXDOMAIN or
		 * SERVFAIL as for an address query, NODATA otherwise. */
		herr = lookup(name, AF_INET, addr);
		if (herr == 0)
			herr = NO_DATA;
	}

	int rcode = ns_r_noerror, ancount = 0, truncated = 0;
	if (herr == HOST_NOT_FOUND)
		rcode = ns_r_nxdomain;
	else if (herr == TRY_AGAIN || herr == NO_RECOVERY)
		rcode = ns_r_servfail;
	if (herr == 0) {
		int rrlen = 2 + NS_RRFIXEDSZ + addrlen;
		if (len + rrlen > anslen) {
			truncated = 1;
		} else {
			unsigned char *rr = answer + len;
			put16(rr, 0xc000 | NS_HFIXEDSZ); /* the question's name */
			put16(rr + 2, (unsigned)type);
			put16(rr + 4, ns_c_in);
			/* The synthetic address stands for the name as long as the
			 * funnel runs; a short TTL keeps caches from outliving it. */
			put16(rr + 6, 0);
			put16(rr + 8, 60);
			put16(rr + 10, (unsigned)addrlen);
			memcpy(rr + 12, addr, (size_t)addrlen);
			len += rrlen;
			ancount = 1;
		}
	}

	int rd = !statp || !(statp->options & RES_INIT) || (statp->options & RES_RECURSE);
	put16(answer, query_id());
	answer[2] = (unsigned char)(0x80 | (truncated ? 0x02 : 0) | (rd ? 0x01 : 0)); /* QR, opcode QUERY */
	answer[3] = (unsigned char)(0x80 | rcode);                                     /* RA */
	put16(answer + 4, 1);
	put16(answer + 6, (unsigned)ancount);
	put16(answer + 8, 0);
	put16(answer + 10, 0);

	if (ancount == 0 && !truncated) {
		set_herrno(statp, herr ? herr : NO_DATA);
		return -1;
	}
	set_herrno(statp, 0);
	return len;
}

/* join makes name.domain as res_querydomain does, in out. */
static const char *join(const char *name, const char *domain, char *out, size_t outlen)
{
	if (!name)
		return NULL;
	size_t n = strlen(name);
	if (!domain) {
		/* glibc: the name alone, without its trailing dot */
		if (n > 0 && name[n - 1] == '.')
			n--;
		if (n + 1 > outlen)
			return NULL;
		memcpy(out, name, n);
		out[n] = '\0';
		return out;
	}
	size_t d = strlen(domain);
	if (n + 1 + d + 1 > outlen)
		return NULL;
	memcpy(out, name, n);
	out[n] = '.';
	memcpy(out + n + 1, domain, d + 1);
	return out;
}

int res_nquery(res_state statp, const char *dname, int class, int type, unsigned char *answer, int anslen)
{
	if (passthrough()) {
		if (!real_res.nquery) {
			set_herrno(statp, NO_RECOVERY);
			return -1;
		}
		return real_res.nquery(statp, dname, class, type, answer, anslen);
	}
	return answer_query(statp, dname, class, type, answer, anslen);
}

int res_nsearch(res_state statp, const char *dname, int class, int type, unsigned char *answer, int anslen)
{
	if (passthrough()) {
		if (!real_res.nsearch) {
			set_herrno(statp, NO_RECOVERY);
			return -1;
		}
		return real_res.nsearch(statp, dname, class, type, answer, anslen);
	}
	return answer_query(statp, dname, class, type, answer, anslen);
}

int res_nquerydomain(res_state statp, const char *name, const char *domain, int class, int type,
		     unsigned char *answer, int anslen)
{
	if (passthrough()) {
		if (!real_res.nquerydomain) {
			set_herrno(statp, NO_RECOVERY);
			return -1;
		}
		return real_res.nquerydomain(statp, name, domain, class, type, answer, anslen);
	}
	char full[NS_MAXDNAME + 2];
	const char *q = join(name, domain, full, sizeof full);
	if (!q) {
		errno = EMSGSIZE;
		set_herrno(statp, NO_RECOVERY);
		return -1;
	}
	return answer_query(statp, q, class, type, answer, anslen);
}

/* The state-less forms use the thread's resolver state, as glibc's do. */
int res_query(const char *dname, int class, int type, unsigned char *answer, int anslen)
{
	if (passthrough()) {
		if (!real_res.query) {
			set_herrno(NULL, NO_RECOVERY);
			return -1;
		}
		return real_res.query(dname, class, type, answer, anslen);
	}
	return answer_query(&_res, dname, class, type, answer, anslen);
}

int res_search(const char *dname, int class, int type, unsigned char *answer, int anslen)
{
	if (passthrough()) {
		if (!real_res.search) {
			set_herrno(NULL, NO_RECOVERY);
			return -1;
		}
		return real_res.search(dname, class, type, answer, anslen);
	}
	return answer_query(&_res, dname, class, type, answer, anslen);
}

int res_querydomain(const char *name, const char *domain, int class, int type, unsigned char *answer, int anslen)
{
	if (passthrough()) {
		if (!real_res.querydomain) {
			set_herrno(NULL, NO_RECOVERY);
			return -1;
		}
		return real_res.querydomain(name, domain, class, type, answer, anslen);
	}
	return res_nquerydomain(&_res, name, domain, class, type, answer, anslen);
}

/* The __res_ names: what programs built against glibc before 2.34 call. */
int __res_nquery(res_state statp, const char *dname, int class, int type, unsigned char *answer, int anslen)
{
	return res_nquery(statp, dname, class, type, answer, anslen);
}

int __res_nsearch(res_state statp, const char *dname, int class, int type, unsigned char *answer, int anslen)
{
	return res_nsearch(statp, dname, class, type, answer, anslen);
}

int __res_nquerydomain(res_state statp, const char *name, const char *domain, int class, int type,
		       unsigned char *answer, int anslen)
{
	return res_nquerydomain(statp, name, domain, class, type, answer, anslen);
}

int __res_query(const char *dname, int class, int type, unsigned char *answer, int anslen)
{
	return res_query(dname, class, type, answer, anslen);
}

int __res_search(const char *dname, int class, int type, unsigned char *answer, int anslen)
{
	return res_search(dname, class, type, answer, anslen);
}

int __res_querydomain(const char *name, const char *domain, int class, int type, unsigned char *answer,
		      int anslen)
{
	return res_querydomain(name, domain, class, type, answer, anslen);
}
