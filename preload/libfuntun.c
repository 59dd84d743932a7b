/*
 * libfuntun.c — the library's core: the real libc symbols, the control
 * connections to the funnel and the per-descriptor bookkeeping.
 *
 * Rules that keep it safe inside any program:
 *  - Thread-safe and async-signal-safe where libc's own functions are
 *    (connect, close, sendto...): a small pool of control connections,
 *    each used by one thread at a time, taken with atomics; the
 *    descriptor table under sequence locks, never a mutex.
 *  - Fork-safe: pthread_atfork resets the pool in the child (the parent's
 *    connections are not the child's to use). Nothing on the connect and
 *    close paths allocates with malloc, so a child of a multithreaded
 *    parent may use them before exec.
 *  - Our own descriptors stay out of the program's way: close-on-exec,
 *    moved above the low numbers, and checked by inode before every use
 *    in case the program closed or reused the number.
 */
#include "ft_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

FT_HIDDEN struct ft_real ft_real;

static struct sockaddr_un ctl_addr;
static socklen_t ctl_addrlen; /* 0: no funnel to talk to, everything fails closed */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

#define NEXT(name) ft_real.name = (__typeof__(ft_real.name))dlsym(RTLD_NEXT, #name)

static void ctl_pool_reset_child(void);
static void table_child(void);

static void init_once_fn(void)
{
	NEXT(socket);
	NEXT(connect);
	NEXT(bind);
	NEXT(listen);
	NEXT(accept);
	NEXT(accept4);
	NEXT(getpeername);
	NEXT(getsockname);
	NEXT(close);
	NEXT(dup);
	NEXT(dup2);
	NEXT(dup3);
	NEXT(fcntl);
	NEXT(getaddrinfo);
	NEXT(getnameinfo);
	NEXT(sendto);
	NEXT(sendmsg);
	NEXT(sendmmsg);
	NEXT(recvfrom);
	NEXT(recvmsg);
	NEXT(recvmmsg);

	const char *path = getenv("FUNTUN_SOCKET");
	size_t n = path ? strlen(path) : 0;
	if (n > 0 && n < sizeof ctl_addr.sun_path) {
		ctl_addr.sun_family = AF_UNIX;
		memcpy(ctl_addr.sun_path, path, n);
		if (path[0] == '@') /* abstract namespace */
			ctl_addr.sun_path[0] = '\0';
		ctl_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '@' ? 0 : 1));
	}
	ft_daemon_init();
	if (!path) {
		/* No launcher: a global preload, a link-in program. The per-user
		 * daemon says whether this program is funnelled (ft_hooked). */
		ft_daemon_mode = 1;
		ctl_addrlen = ft_daemon_address(&ctl_addr);
	}
	const char *raw = getenv("FUNTUN_ALLOW_RAW");
	ft_allow_raw = raw && strcmp(raw, "1") == 0;
	const char *pass = getenv("FUNTUN_GUARD_PASS");
	if (pass && strlen(pass) == 16)
		ft_guard_pass = strtoull(pass, NULL, 16);
	pthread_atfork(NULL, NULL, table_child);
}

FT_HIDDEN void ft_init(void)
{
	pthread_once(&init_once, init_once_fn);
}

__attribute__((constructor)) static void ft_constructor(void)
{
	ft_init();
	ft_adopt_fed();
}

FT_HIDDEN uint64_t ft_inode(int fd)
{
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
		return 0;
	return (uint64_t)st.st_ino;
}

/* ---- control connections ---------------------------------------------- */

#define CTL_POOL 8
/* Control descriptors live at or above this number, away from the low
 * numbers programs expect to get from socket() and open(). */
#define CTL_MIN_FD 512

struct ctl_slot {
	atomic_int busy;
	atomic_int fd; /* -1 when closed */
	uint64_t ino;
};
static struct ctl_slot ctl_pool[CTL_POOL] = {
	[0 ... CTL_POOL - 1] = {.busy = 0, .fd = -1, .ino = 0},
};

static int ctl_open(uint64_t *ino)
{
	if (ctl_addrlen == 0 || (ft_daemon_mode && ft_daemon_untouched()))
		return -1;
	int fd = ft_real.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int r;
	do
		r = ft_real.connect(fd, (const struct sockaddr *)&ctl_addr, ctl_addrlen);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		int e = errno;
		ft_real.close(fd);
		errno = e;
		return -1;
	}
	if (ft_daemon_mode) {
		/* Every connection to the daemon says first whose it is. */
		int h = ft_daemon_hello(fd, NULL, NULL, 0);
		if (h >= 0)
			ft_daemon_decided(h);
		if (h != 1) {
			ft_real.close(fd);
			errno = ECONNREFUSED;
			return -1;
		}
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > CTL_MIN_FD + 64) {
		int high = ft_real.fcntl(fd, F_DUPFD_CLOEXEC, CTL_MIN_FD);
		if (high >= 0) {
			ft_real.close(fd);
			fd = high;
		}
	}
	*ino = ft_inode(fd);
	return fd;
}

static struct ctl_slot *ctl_acquire(void)
{
	for (int i = 0; i < CTL_POOL; i++) {
		int expect = 0;
		if (atomic_compare_exchange_strong(&ctl_pool[i].busy, &expect, 1))
			return &ctl_pool[i];
	}
	return NULL; /* all busy: the caller uses a connection of its own */
}

static void ctl_release(struct ctl_slot *s)
{
	if (s)
		atomic_store(&s->busy, 0);
}

/* The child of a fork must not speak on its parent's connections: answers
 * would go to whichever process reads first. Its copies are closed here and
 * it opens its own on first use. */
static void ctl_pool_reset_child(void)
{
	for (int i = 0; i < CTL_POOL; i++) {
		int fd = atomic_exchange(&ctl_pool[i].fd, -1);
		if (fd >= 0)
			ft_real.close(fd);
		atomic_store(&ctl_pool[i].busy, 0);
	}
}

FT_HIDDEN int ft_is_control_fd(int fd)
{
	if (fd < 0)
		return 0;
	for (int i = 0; i < CTL_POOL; i++)
		if (atomic_load(&ctl_pool[i].fd) == fd)
			return 1;
	return 0;
}

/* The program is closing or replacing one of our descriptors (a daemon
 * closing everything, say): let it, and open a fresh connection next time. */
FT_HIDDEN void ft_forget_control_fd(int fd)
{
	for (int i = 0; i < CTL_POOL; i++) {
		int expect = fd;
		atomic_compare_exchange_strong(&ctl_pool[i].fd, &expect, -1);
	}
}

static void ctl_drop(struct ctl_slot *s, int fd)
{
	if (s) {
		int expect = fd;
		atomic_compare_exchange_strong(&s->fd, &expect, -1);
	}
	if (fd >= 0)
		ft_real.close(fd);
}

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Where a blocking connect() the funnel works on has got to. */
enum conn_state { CONN_NOT_YET, CONN_CONNECTING, CONN_DONE };

static enum conn_state conn_state(int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof ti;
	if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) != 0)
		return CONN_NOT_YET; /* not TCP (MPTCP, SCTP): never interrupted */
	switch (ti.tcpi_state) {
	case TCP_CLOSE:
		/* Not started, or failed already: the answer will say which. */
		return CONN_NOT_YET;
	case TCP_SYN_SENT:
	case TCP_SYN_RECV:
		return CONN_CONNECTING;
	default:
		return CONN_DONE;
	}
}

/* wait_answer reads the funnel's answer on cfd into resp: the number of
 * bytes read, or -errno (-ECONNREFUSED when the funnel hung up or the read
 * failed, -ETIMEDOUT, -EINTR; see enum ft_wait). */
static ssize_t wait_answer(int cfd, struct ft_resp *resp, enum ft_wait wait, int fd)
{
	long long deadline = mono_ms() + FT_ANSWER_TIMEOUT_MS;
	if (wait == FT_WAIT_CONNECT_BLOCKING) {
		/* A plain blocking read: the kernel restarts it after a handler
		 * with SA_RESTART, exactly when it would restart connect(). */
		for (;;) {
			ssize_t n = recv(cfd, resp, sizeof *resp, 0);
			if (n >= 0)
				return n;
			if (errno != EINTR)
				return -ECONNREFUSED;
			enum conn_state st = conn_state(fd);
			if (st == CONN_CONNECTING)
				return -EINTR;
			if (st == CONN_NOT_YET)
				break; /* owe the program its EINTR; see below */
			/* Connected already: its answer is on its way. */
		}
		/* The funnel has not begun to connect fd (a SOCKS5 handshake, a
		 * name to resolve come first). An EINTR now would leave fd
		 * unconnected, and the connection would start behind the program's
		 * back: give the EINTR once fd is connecting, as the kernel would
		 * have, unless the answer comes first. */
		for (;;) {
			struct pollfd p = {.fd = cfd, .events = POLLIN};
			int r = poll(&p, 1, 10);
			if (r > 0)
				break;
			if (r < 0 && errno != EINTR)
				return -ECONNREFUSED;
			enum conn_state st = conn_state(fd);
			if (st == CONN_CONNECTING)
				return -EINTR;
			if (st == CONN_DONE)
				break;
			if (mono_ms() >= deadline)
				return -ETIMEDOUT;
		}
	}
	for (;;) {
		long long left = deadline - mono_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = {.fd = cfd, .events = POLLIN};
		int r = poll(&p, 1, left > 1000000000 ? 1000000000 : (int)left);
		if (r < 0 && errno != EINTR)
			return -ECONNREFUSED;
		if (r <= 0)
			continue; /* a signal, whatever its handler's flags: wait on */
		ssize_t n = recv(cfd, resp, sizeof *resp, MSG_DONTWAIT);
		if (n >= 0)
			return n;
		if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
			return -ECONNREFUSED;
	}
}

FT_HIDDEN int ft_call(struct ft_req *req, int fd, struct ft_resp *resp, enum ft_wait wait)
{
	ft_init();
	if (ctl_addrlen == 0)
		return -ECONNREFUSED;
	req->version = FT_WIRE_VERSION;
	uint64_t sent_gen = ft_gen_now();

	struct ctl_slot *slot = ctl_acquire();
	int cfd = -1;
	uint64_t ino = 0;
	if (slot) {
		cfd = atomic_load(&slot->fd);
		/* The program may have closed our descriptor and reused its number. */
		if (cfd >= 0 && ft_inode(cfd) != slot->ino) {
			int expect = cfd;
			atomic_compare_exchange_strong(&slot->fd, &expect, -1);
			cfd = -1;
		}
	}

	char cbuf[CMSG_SPACE(sizeof(int))];
	ssize_t n = -1;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (cfd < 0) {
			cfd = ctl_open(&ino);
			if (cfd < 0) {
				ctl_release(slot);
				return -ECONNREFUSED;
			}
			if (slot) {
				slot->ino = ino;
				atomic_store(&slot->fd, cfd);
			}
		}
		struct iovec iov = {.iov_base = req, .iov_len = sizeof *req};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
		if (fd >= 0) {
			memset(cbuf, 0, sizeof cbuf);
			mh.msg_control = cbuf;
			mh.msg_controllen = sizeof cbuf;
			struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &fd, sizeof(int));
		}
		do
			n = ft_real.sendmsg(cfd, &mh, MSG_NOSIGNAL);
		while (n < 0 && errno == EINTR);
		if (n == (ssize_t)sizeof *req)
			break;
		/* A connection that went stale: the request was not taken, so one
		 * retry on a fresh connection is safe. */
		ctl_drop(slot, cfd);
		cfd = -1;
	}
	if (n != (ssize_t)sizeof *req) {
		ctl_release(slot);
		return -ECONNREFUSED;
	}
	n = wait_answer(cfd, resp, wait, fd);
	if (n != (ssize_t)sizeof *resp) {
		/* No answer, or one still to come (-EINTR, -ETIMEDOUT): nobody
		 * must read it as the answer to another request, so this
		 * connection goes. */
		ctl_drop(slot, cfd);
		ctl_release(slot);
		return n < 0 ? (int)n : -ECONNREFUSED;
	}
	if (!slot)
		ft_real.close(cfd);
	ctl_release(slot);
	if (req->op == FT_OP_CONNECT)
		ft_gen_connect_answered(sent_gen, resp);
	return 0;
}

FT_HIDDEN int ft_call_on(int cfd, struct ft_req *req, int fd, struct ft_resp *resp)
{
	req->version = FT_WIRE_VERSION;
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {.iov_base = req, .iov_len = sizeof *req};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (fd >= 0) {
		memset(cbuf, 0, sizeof cbuf);
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof cbuf;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	ssize_t n;
	do
		n = ft_real.sendmsg(cfd, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof *req)
		return -ECONNREFUSED;
	n = wait_answer(cfd, resp, FT_WAIT_RETRY, fd);
	if (n < 0)
		return (int)n;
	return n == (ssize_t)sizeof *resp ? 0 : -EPROTO;
}

static int pooled_fd(struct ctl_slot *s);

FT_HIDDEN void ft_ctl_warm(void)
{
	ft_init();
	struct ctl_slot *slot = ctl_acquire();
	if (slot && pooled_fd(slot) >= 0) {
		ctl_release(slot);
		return;
	}
	uint64_t ino;
	int cfd = ctl_open(&ino);
	if (cfd >= 0) {
		if (slot) {
			slot->ino = ino;
			atomic_store(&slot->fd, cfd);
		} else {
			ft_real.close(cfd);
		}
	}
	ctl_release(slot);
}

/* pooled_fd: the slot's connection when it is open and still ours. */
static int pooled_fd(struct ctl_slot *s)
{
	int cfd = atomic_load(&s->fd);
	if (cfd < 0)
		return -1;
	if (ft_inode(cfd) != s->ino) {
		int expect = cfd;
		atomic_compare_exchange_strong(&s->fd, &expect, -1);
		return -1;
	}
	return cfd;
}

FT_HIDDEN int ft_control_alive(void)
{
	ft_init();
	/* A reload since the funnel last said "plain direct" withdraws that. */
	if (!ft_gen_permits())
		return 0;
	struct ctl_slot *slot = ctl_acquire();
	if (!slot)
		return 0;
	int alive = 0;
	int cfd = pooled_fd(slot);
	if (cfd >= 0) {
		struct pollfd p = {.fd = cfd, .events = POLLRDHUP};
		int r = poll(&p, 1, 0);
		alive = r == 0 || (r == 1 && !(p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)));
		if (r == 1 && !alive)
			ctl_drop(slot, cfd);
	}
	ctl_release(slot);
	return alive;
}

FT_HIDDEN void ft_send_oneway(struct ft_req *req)
{
	ft_init();
	req->version = FT_WIRE_VERSION;
	struct ctl_slot *slot = ctl_acquire();
	if (!slot)
		return;
	int e = errno;
	int cfd = pooled_fd(slot);
	if (cfd < 0) {
		uint64_t ino;
		cfd = ctl_open(&ino);
		if (cfd >= 0) {
			slot->ino = ino;
			atomic_store(&slot->fd, cfd);
		}
	}
	if (cfd >= 0) {
		/* A report never blocks the program: lost when the socket is full. */
		ft_real.sendto(cfd, req, sizeof *req, MSG_DONTWAIT | MSG_NOSIGNAL, NULL, 0);
	}
	errno = e;
	ctl_release(slot);
}

/* ---- descriptor table -------------------------------------------------- */

/* Two levels, chunks mapped on first use (mmap, not malloc: safe after
 * fork). Descriptors beyond FT_MAX_FD are served but not remembered.
 * Each entry has a sequence lock, not a mutex: close() is
 * async-signal-safe, and a signal handler that closes a socket while the
 * code it interrupted updates the table must not deadlock. */
#define CHUNK_BITS 10
#define CHUNK_SIZE (1 << CHUNK_BITS)
#define NCHUNKS 1024
#define FT_MAX_FD (CHUNK_SIZE * NCHUNKS)

struct fd_slot {
	ft_seq seq;
	struct ft_fdinfo info;
};

static _Atomic(struct fd_slot *) chunks[NCHUNKS];

/* A thread of the parent may have been half-way through an update when
 * another forked: in the child nobody will finish it. */
static void table_child(void)
{
	for (int c = 0; c < NCHUNKS; c++) {
		struct fd_slot *chunk = atomic_load(&chunks[c]);
		if (!chunk)
			continue;
		for (int i = 0; i < CHUNK_SIZE; i++) {
			if (atomic_load(&chunk[i].seq.v) & 1) {
				chunk[i].info.kind = FT_KIND_NONE;
				chunk[i].info.udp = 0;
				atomic_fetch_add(&chunk[i].seq.v, 1);
			}
		}
	}
	ft_udp_after_fork();
	ctl_pool_reset_child();
}

static struct fd_slot *slot_for(int fd, int create)
{
	if (fd < 0 || fd >= FT_MAX_FD)
		return NULL;
	int ci = fd >> CHUNK_BITS;
	struct fd_slot *c = atomic_load(&chunks[ci]);
	if (!c && create) {
		void *m = mmap(NULL, sizeof(struct fd_slot) * CHUNK_SIZE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			return NULL;
		struct fd_slot *expect = NULL;
		if (atomic_compare_exchange_strong(&chunks[ci], &expect, (struct fd_slot *)m))
			c = m;
		else {
			munmap(m, sizeof(struct fd_slot) * CHUNK_SIZE);
			c = expect;
		}
	}
	return c ? &c[fd & (CHUNK_SIZE - 1)] : NULL;
}

static int slot_read(struct fd_slot *e, struct ft_fdinfo *out)
{
	for (int tries = 0; tries < 1000; tries++) {
		unsigned v = ft_seq_read_begin(&e->seq);
		if (v & 1)
			continue;
		*out = e->info;
		if (!ft_seq_read_retry(&e->seq, v))
			return 1;
	}
	return 0; /* a writer we interrupted: as if there were no entry */
}

static void slot_write(struct fd_slot *e, const struct ft_fdinfo *in, int clear)
{
	if (!ft_seq_write_begin(&e->seq))
		return;
	if (clear) {
		e->info.kind = FT_KIND_NONE;
		e->info.udp = 0;
	} else {
		e->info = *in;
	}
	ft_seq_write_end(&e->seq);
}

FT_HIDDEN int ft_fd_get(int fd, struct ft_fdinfo *out)
{
	struct fd_slot *e = slot_for(fd, 0);
	if (!e || !slot_read(e, out))
		return 0;
	if (out->kind == FT_KIND_NONE && !out->udp)
		return 0;
	if (ft_inode(fd) != out->ino) {
		/* Closed behind our back (close_range, a raw syscall) and reused. */
		slot_write(e, NULL, 1);
		return 0;
	}
	return 1;
}

FT_HIDDEN void ft_fd_set(int fd, const struct ft_fdinfo *in)
{
	struct fd_slot *e = slot_for(fd, 1);
	if (e)
		slot_write(e, in, 0);
}

FT_HIDDEN void ft_fd_clear(int fd)
{
	struct fd_slot *e = slot_for(fd, 0);
	if (e)
		slot_write(e, NULL, 1);
}

FT_HIDDEN void ft_fd_copy(int from, int to)
{
	struct fd_slot *src = slot_for(from, 0);
	struct ft_fdinfo info;
	if (!src || !slot_read(src, &info) || (info.kind == FT_KIND_NONE && !info.udp)) {
		ft_fd_clear(to);
		return;
	}
	ft_fd_set(to, &info);
}

/* ---- helpers ------------------------------------------------------------ */

FT_HIDDEN int ft_is_synthetic(const struct sockaddr *sa, socklen_t len)
{
	static const uint8_t prefix6[12] = FT_SYNTH6_PREFIX;
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
		return (a & FT_SYNTH4_MASK) == FT_SYNTH4_NET;
	}
	if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
		if (memcmp(b, prefix6, 12) == 0)
			return 1;
		static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		if (memcmp(b, mapped, 12) == 0) {
			uint32_t a = ((uint32_t)b[12] << 24) | ((uint32_t)b[13] << 16) | ((uint32_t)b[14] << 8) | b[15];
			return (a & FT_SYNTH4_MASK) == FT_SYNTH4_NET;
		}
	}
	return 0;
}

/* ft_copy_addr fills a caller's (sockaddr, length) pair the way the kernel
 * does: truncate to the room given, report the full length. */
FT_HIDDEN socklen_t ft_copy_addr(struct sockaddr *dst, socklen_t *dstlen, const void *src, socklen_t srclen)
{
	if (dst && dstlen) {
		socklen_t n = *dstlen < srclen ? *dstlen : srclen;
		memcpy(dst, src, n);
	}
	if (dstlen)
		*dstlen = srclen;
	return srclen;
}
