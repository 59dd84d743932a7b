/*
 * ft_internal.h — shared inside libfuntun.so only: the real libc symbols, the
 * control connection to the funnel, and the per-descriptor bookkeeping.
 */
#ifndef FT_INTERNAL_H
#define FT_INTERNAL_H

#define _GNU_SOURCE
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "funtun_wire.h"

#define FT_HIDDEN __attribute__((visibility("hidden")))

/* The next definitions of the symbols we overrule (normally libc's). */
struct ft_real {
	int (*socket)(int, int, int);
	int (*connect)(int, const struct sockaddr *, socklen_t);
	int (*bind)(int, const struct sockaddr *, socklen_t);
	int (*listen)(int, int);
	int (*accept)(int, struct sockaddr *, socklen_t *);
	int (*accept4)(int, struct sockaddr *, socklen_t *, int);
	int (*getpeername)(int, struct sockaddr *, socklen_t *);
	int (*getsockname)(int, struct sockaddr *, socklen_t *);
	int (*close)(int);
	int (*dup)(int);
	int (*dup2)(int, int);
	int (*dup3)(int, int, int);
	int (*fcntl)(int, int, ...);
	int (*getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
	int (*getnameinfo)(const struct sockaddr *, socklen_t, char *, socklen_t, char *, socklen_t, int);
	ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
	ssize_t (*sendmsg)(int, const struct msghdr *, int);
	int (*sendmmsg)(int, struct mmsghdr *, unsigned int, int);
	ssize_t (*recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
	ssize_t (*recvmsg)(int, struct msghdr *, int);
	int (*recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
};
FT_HIDDEN extern struct ft_real ft_real;
FT_HIDDEN void ft_init(void);

/* How ft_call waits for the funnel's answer. */
enum ft_wait {
	/* Signals do not end the wait, whatever the program's handlers say:
	 * the answer is read however often the wait is interrupted, for up to
	 * FT_ANSWER_TIMEOUT_MS in all (a funnel that exits hangs up, and the
	 * call fails at once). What a non-blocking connect() and every call
	 * that is not connect() need: the kernel never gives them EINTR. */
	FT_WAIT_RETRY = 0,
	/* A blocking connect() of a stream socket fd, which the kernel may end
	 * with EINTR: a handler with SA_RESTART lets the wait go on (the kernel
	 * restarts the read, as it restarts connect), one without ends it with
	 * -EINTR — but only once the funnel is connecting fd itself, so that
	 * the connection goes on in the background as the kernel's does. Until
	 * then, and once fd is connected, the wait goes on. No time limit: the
	 * kernel's own connect timeout bounds the funnel's answer. */
	FT_WAIT_CONNECT_BLOCKING = 1,
};
/* A funnel that keeps its control connection open but does not answer
 * (stopped, wedged) fails the call with ETIMEDOUT after this long. It is
 * far above the pieces' own dial timeouts (10 s each by default). */
#define FT_ANSWER_TIMEOUT_MS 120000

/* ft_call sends req (with fd as SCM_RIGHTS when fd >= 0) and reads the
 * answer. It returns 0, or -errno when the funnel cannot be reached or
 * answered nothing (the caller fails closed), or -EINTR (see ft_wait). */
FT_HIDDEN int ft_call(struct ft_req *req, int fd, struct ft_resp *resp, enum ft_wait wait);
/* ft_control_alive: this thread's pooled control connection exists and
 * the funnel has not hung up on it (a poll with timeout 0, no round trip).
 * 0 when in doubt: the caller then takes the path that asks the funnel. */
FT_HIDDEN int ft_control_alive(void);
/* ft_send_oneway sends req without an fd and without waiting, on a pooled
 * connection that is free (opened if need be); dropped if none is, or the
 * socket is full. For operations the funnel does not answer. */
FT_HIDDEN void ft_send_oneway(struct ft_req *req);
FT_HIDDEN int ft_is_control_fd(int fd);
FT_HIDDEN void ft_forget_control_fd(int fd);

/* What the library remembers about one of the program's descriptors. */
enum ft_kind {
	FT_KIND_NONE = 0,
	FT_KIND_OUT = 1,      /* connected through the funnel: peer = intended destination */
	FT_KIND_LISTEN = 2,   /* bound to a hidden port: local = public address */
	FT_KIND_ACCEPTED = 3, /* accepted through the funnel: peer = real client, local = public */
	FT_KIND_UDP = 4,      /* unconnected UDP with datagram associations */
};

struct ft_fdinfo {
	uint32_t kind;
	uint32_t udp; /* FT_UDP_ASSOC | FT_UDP_FROM_RELAYS (udp.c) */
	uint64_t ino; /* the socket's inode: a stale entry (fd closed behind our back) never matches */
	socklen_t peerlen, locallen;
	struct sockaddr_in6 peer;  /* large enough for sockaddr_in too */
	struct sockaddr_in6 local;
};

/* ft_fdinfo.udp bits. */
enum {
	FT_UDP_ASSOC = 1,      /* datagrams sent with an address went through the funnel */
	FT_UDP_FROM_RELAYS = 2, /* the funnel relays datagrams to it from loopback (FT_OP_UDP_BIND) */
};

/* ft_udp_bound tells the funnel that fd, a UDP socket, was bound to sa. */
FT_HIDDEN void ft_udp_bound(int fd, const struct sockaddr *sa, socklen_t len);

FT_HIDDEN uint64_t ft_inode(int fd);
/* ft_fd_get copies the entry for fd when it is current; 0 if none. */
FT_HIDDEN int ft_fd_get(int fd, struct ft_fdinfo *out);
FT_HIDDEN void ft_fd_set(int fd, const struct ft_fdinfo *in);
FT_HIDDEN void ft_fd_clear(int fd);
FT_HIDDEN void ft_fd_copy(int from, int to);

/* ft_adopt_fed learns which LISTEN_FDS the funnel feeds (FT_OP_FED). */
FT_HIDDEN void ft_adopt_fed(void);

/* ft_unlisten tells the funnel a hidden listener was closed. */
FT_HIDDEN void ft_unlisten(const struct ft_fdinfo *info);

/* A sequence lock: readers never wait on a writer (a signal handler may
 * read while the code it interrupted writes); writers take turns, and one
 * that cannot get its turn gives up rather than deadlock. */
typedef struct {
	atomic_uint v;
} ft_seq;

static inline int ft_seq_write_begin(ft_seq *s)
{
	for (int i = 0; i < 10000; i++) {
		unsigned v = atomic_load_explicit(&s->v, memory_order_relaxed);
		if (!(v & 1) && atomic_compare_exchange_weak_explicit(&s->v, &v, v + 1, memory_order_acquire,
								      memory_order_relaxed)) {
			atomic_thread_fence(memory_order_release);
			return 1;
		}
	}
	return 0;
}

static inline void ft_seq_write_end(ft_seq *s)
{
	atomic_fetch_add_explicit(&s->v, 1, memory_order_release);
}

static inline unsigned ft_seq_read_begin(ft_seq *s)
{
	return atomic_load_explicit(&s->v, memory_order_acquire);
}

/* ft_seq_read_retry: did a writer change what was read since begin? */
static inline int ft_seq_read_retry(ft_seq *s, unsigned v)
{
	atomic_thread_fence(memory_order_acquire);
	return atomic_load_explicit(&s->v, memory_order_relaxed) != v;
}

FT_HIDDEN void ft_udp_after_fork(void);

/* Sockets nothing in the funnel carries (raw.c): raw IP, packet and ICMP
 * echo sockets. Refused with EACCES unless the launcher was given
 * --allow-raw (FUNTUN_ALLOW_RAW=1 in the environment). */
FT_HIDDEN extern int ft_allow_raw;
/* The launcher's seccomp guard lets a connect through without a round trip
 * when its unused fourth and fifth arguments carry this pass (0: no guard;
 * hooks/preload/seccomp_supervisor_filter.go). */
FT_HIDDEN extern uint64_t ft_guard_pass;
/* ft_uncarried names the kind of such a socket ("raw", "packet", "icmp"),
 * or NULL for one the funnel carries (or that never leaves the host). */
FT_HIDDEN const char *ft_uncarried(int family, int type, int protocol);
/* ft_fd_uncarried asks the kernel what fd is, then as ft_uncarried. */
FT_HIDDEN const char *ft_fd_uncarried(int fd, int *family, int *type, int *protocol);
/* ft_refuse reports a refused call to the funnel's log, sets errno to
 * EACCES and returns -1. sa, when an inet address, goes in the report. */
FT_HIDDEN int ft_refuse(const char *call, int family, int type, int protocol, const struct sockaddr *sa,
			socklen_t len);

/* Synthetic addresses. */
FT_HIDDEN int ft_is_synthetic(const struct sockaddr *sa, socklen_t len);

FT_HIDDEN socklen_t ft_copy_addr(struct sockaddr *dst, socklen_t *dstlen, const void *src, socklen_t srclen);

#include "ft_daemon.h"

#endif
