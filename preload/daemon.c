/*
 * daemon.c — the library without the launcher: it asks the per-user daemon
 * (funtun daemon) whether this program is to be funnelled, and keeps the
 * page through which the daemon withdraws the plain-direct fast path's
 * standing permission at every reload.
 */
#include "ft_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

FT_HIDDEN int ft_daemon_mode;

static struct sockaddr_un daemon_addr;
static socklen_t daemon_addrlen;
/* FUNTUN_TEMPLATE: the program asks for a template itself. */
static char env_template[FT_NAME_MAX];
static int env_template_set;

/* Why the program's own last HELLO failed, for the one message below. */
static char own_why[FT_NAME_MAX + 128];

/* The template the daemon chose for this program at its first HELLO. */
static char pinned[FT_NAME_MAX];
static atomic_int pinned_state; /* 0 none, 1 being written, 2 set */

/* 0 = not asked yet, 1 = funnelled, 2 = left alone. */
static atomic_int decision;

static _Atomic(const struct ft_gen_page *) gen_page;
static _Atomic uint64_t granted_gen;

/* A daemon that takes this long over HELLO is treated as absent: every
 * process of a session asks it, and none may hang on it. */
#define HELLO_TIMEOUT_MS 5000

FT_HIDDEN void ft_daemon_init(void)
{
	char path[sizeof daemon_addr.sun_path + 64];
	const char *p = getenv("FUNTUN_DAEMON");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	if (p && *p)
		snprintf(path, sizeof path, "%s", p);
	else if (xdg && *xdg == '/')
		snprintf(path, sizeof path, "%s/funtun/daemon.sock", xdg);
	else
		snprintf(path, sizeof path, "/run/user/%u/funtun/daemon.sock", (unsigned)geteuid());
	size_t n = strlen(path);
	if (n > 0 && n < sizeof daemon_addr.sun_path) {
		daemon_addr.sun_family = AF_UNIX;
		memcpy(daemon_addr.sun_path, path, n);
		if (path[0] == '@')
			daemon_addr.sun_path[0] = '\0';
		daemon_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '@' ? 0 : 1));
	}
	const char *t = getenv("FUNTUN_TEMPLATE");
	if (t && *t && strlen(t) < sizeof env_template) {
		strcpy(env_template, t);
		env_template_set = 1;
	}
}

FT_HIDDEN socklen_t ft_daemon_address(struct sockaddr_un *addr)
{
	*addr = daemon_addr;
	return daemon_addrlen;
}

FT_HIDDEN void ft_daemon_decided(int hooked)
{
	int expect = 0;
	atomic_compare_exchange_strong(&decision, &expect, hooked ? 1 : 2);
}

FT_HIDDEN int ft_daemon_untouched(void)
{
	return atomic_load(&decision) == 2;
}

FT_HIDDEN int ft_hooked(void)
{
	ft_init();
	if (!ft_daemon_mode)
		return 1;
	int d = atomic_load(&decision);
	if (d == 0) {
		ft_ctl_warm();
		d = atomic_load(&decision);
		if (d == 0) {
			/* Nobody could be asked (no daemon, another user's socket): the
			 * program is left alone — unless it named a template itself,
			 * which is asking for the funnel: then it fails closed, and
			 * says so once, since nothing else will. */
			ft_daemon_decided(env_template_set);
			d = atomic_load(&decision);
			if (d == 1 && env_template_set) {
				char msg[sizeof own_why + 160];
				int n = snprintf(msg, sizeof msg, "%s\nfuntun: FUNTUN_TEMPLATE=%s: its connections fail until the daemon serves it\n",
						 own_why[0] ? own_why : "funtun: no daemon answers on its socket", env_template);
				if (n > 0 && write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1) < 0)
					n = 0;
			}
		}
	}
	return d == 1;
}

static void say(char *why, size_t whylen, const char *fmt, const char *a, long b, long c)
{
	if (!why) {
		why = own_why;
		whylen = sizeof own_why;
	}
	snprintf(why, whylen, fmt, a, b, c);
}

/* recv_answer reads one answer and the descriptor that may come with it. */
static ssize_t recv_answer(int cfd, struct ft_resp *resp, int *passed)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	*passed = -1;
	for (;;) {
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long left = HELLO_TIMEOUT_MS - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = {.fd = cfd, .events = POLLIN};
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			continue;
		struct iovec iov = {.iov_base = resp, .iov_len = sizeof *resp};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
		ssize_t n = ft_real.recvmsg(cfd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return -errno;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
			    c->cmsg_len >= CMSG_LEN(sizeof(int))) {
				int fd;
				memcpy(&fd, CMSG_DATA(c), sizeof fd);
				if (*passed < 0)
					*passed = fd;
				else
					ft_real.close(fd);
			}
		}
		return n;
	}
}

/* The page of the daemon we last spoke to, known by its inode: a daemon
 * that restarted hands over a page of its own. */
static _Atomic uint64_t gen_page_ino;

static void keep_page(int pfd)
{
	if (pfd < 0)
		return;
	struct stat st;
	if (fstat(pfd, &st) == 0 && (uint64_t)st.st_ino != atomic_load(&gen_page_ino)) {
		void *m = mmap(NULL, FT_GEN_PAGE_SIZE, PROT_READ, MAP_SHARED, pfd, 0);
		if (m != MAP_FAILED) {
			/* The old page stays mapped (another thread may be reading
			 * it); a permission granted under the old daemon is void. */
			atomic_store(&gen_page_ino, (uint64_t)st.st_ino);
			atomic_store(&granted_gen, 0);
			atomic_store(&gen_page, (const struct ft_gen_page *)m);
		}
	}
	ft_real.close(pfd);
}

FT_HIDDEN int ft_daemon_hello(int cfd, const char *template, char *why, size_t whylen)
{
	struct ucred cred;
	socklen_t cl = sizeof cred;
	if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0) {
		say(why, whylen, "funtun: cannot tell who serves the daemon socket %s", daemon_addr.sun_path, 0, 0);
		return -EACCES;
	}
	if (cred.uid != geteuid()) {
		/* Another user's daemon would see, and could steer, our traffic. */
		say(why, whylen, "funtun: the daemon at %s runs as uid %ld, not as you (uid %ld); not using it",
		    daemon_addr.sun_path, (long)cred.uid, (long)geteuid());
		return -EACCES;
	}
	/* The program's own connections keep the reload page; the C API's
	 * (a template named in the call) have no fast path to withdraw. */
	int own = !template;
	struct ft_req req;
	memset(&req, 0, sizeof req);
	req.version = FT_WIRE_VERSION;
	req.op = FT_OP_HELLO;
	if (!template && env_template_set)
		template = env_template;
	if (!template && atomic_load(&pinned_state) == 2)
		template = pinned;
	if (template) {
		size_t n = strlen(template);
		if (n >= FT_NAME_MAX) {
			say(why, whylen, "funtun: the template \"%.40s…\" is longer than %ld bytes", template, FT_NAME_MAX - 1, 0);
			return -ENAMETOOLONG;
		}
		memcpy(req.name, template, n);
		req.arg = FT_HELLO_TEMPLATE;
	}
	ssize_t n;
	do
		n = ft_real.sendto(cfd, &req, sizeof req, MSG_NOSIGNAL, NULL, 0);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof req) {
		say(why, whylen, "funtun: the daemon at %s hung up (it serves processes of its own user only; see its log)",
		    daemon_addr.sun_path, 0, 0);
		return -EACCES;
	}
	struct ft_resp resp;
	int pfd;
	n = recv_answer(cfd, &resp, &pfd);
	if (n != (ssize_t)sizeof resp) {
		if (pfd >= 0)
			ft_real.close(pfd);
		if (n == -ETIMEDOUT) {
			say(why, whylen, "funtun: the daemon at %s did not answer within %ld ms", daemon_addr.sun_path,
			    HELLO_TIMEOUT_MS, 0);
			return -ETIMEDOUT;
		}
		say(why, whylen, "funtun: the daemon at %s hung up without answering (it serves processes of its own user only; see its log)",
		    daemon_addr.sun_path, 0, 0);
		return -EACCES;
	}
	resp.name[FT_NAME_MAX - 1] = '\0';
	if (resp.err) {
		if (pfd >= 0)
			ft_real.close(pfd);
		say(why, whylen, "funtun: %s", resp.name[0] ? resp.name : strerror(resp.err), 0, 0);
		return -resp.err;
	}
	if (resp.flags & FT_HELLO_UNTOUCHED) {
		if (pfd >= 0)
			ft_real.close(pfd);
		say(why, whylen, "funtun: the daemon has no entry for this program in its programs file", NULL, 0, 0);
		return 0;
	}
	if (own && !template && resp.name[0]) {
		int expect = 0;
		if (atomic_compare_exchange_strong(&pinned_state, &expect, 1)) {
			memcpy(pinned, resp.name, FT_NAME_MAX);
			atomic_store(&pinned_state, 2);
		}
	}
	if (own)
		keep_page(pfd);
	else if (pfd >= 0)
		ft_real.close(pfd);
	return 1;
}

FT_HIDDEN uint64_t ft_gen_now(void)
{
	const struct ft_gen_page *p = atomic_load(&gen_page);
	return p ? __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) : 0;
}

/* A grant is kept only when the count did not move while the CONNECT was
 * under way, so its answer surely came from the profiles of that count;
 * and the grant only ever moves forward, so an old answer read late by
 * another thread cannot bring back a permission a reload withdrew. */
FT_HIDDEN void ft_gen_connect_answered(uint64_t sent, struct ft_resp *resp)
{
	if (!atomic_load(&gen_page) || !(resp->flags & FT_CONNECT_PLAIN_DIRECT))
		return;
	if (ft_gen_now() != sent) {
		resp->flags &= ~(uint32_t)FT_CONNECT_PLAIN_DIRECT;
		return;
	}
	uint64_t g = atomic_load(&granted_gen);
	while (g < sent && !atomic_compare_exchange_weak(&granted_gen, &g, sent))
		;
}

FT_HIDDEN int ft_gen_permits(void)
{
	if (!atomic_load(&gen_page))
		return 1;
	return ft_gen_now() == atomic_load(&granted_gen);
}

/* ---- libc's own name lookups, for programs left alone --------------------- */

FT_HIDDEN struct hostent *ft_pass_gethostbyname2(const char *name, int af)
{
	struct hostent *(*f)(const char *, int) = (struct hostent * (*)(const char *, int)) dlsym(RTLD_NEXT, "gethostbyname2");
	if (!f) {
		h_errno = NO_RECOVERY;
		return NULL;
	}
	return f(name, af);
}

FT_HIDDEN int ft_pass_gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf, size_t buflen,
				       struct hostent **result, int *h_errnop)
{
	int (*f)(const char *, int, struct hostent *, char *, size_t, struct hostent **, int *) =
		(int (*)(const char *, int, struct hostent *, char *, size_t, struct hostent **, int *))dlsym(
			RTLD_NEXT, "gethostbyname2_r");
	if (!f)
		return ENOSYS;
	return f(name, af, ret, buf, buflen, result, h_errnop);
}

FT_HIDDEN struct hostent *ft_pass_gethostbyaddr(const void *addr, socklen_t len, int type)
{
	struct hostent *(*f)(const void *, socklen_t, int) =
		(struct hostent * (*)(const void *, socklen_t, int)) dlsym(RTLD_NEXT, "gethostbyaddr");
	if (!f) {
		h_errno = NO_RECOVERY;
		return NULL;
	}
	return f(addr, len, type);
}

FT_HIDDEN int ft_pass_gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *ret, char *buf,
				      size_t buflen, struct hostent **result, int *h_errnop)
{
	int (*f)(const void *, socklen_t, int, struct hostent *, char *, size_t, struct hostent **, int *) =
		(int (*)(const void *, socklen_t, int, struct hostent *, char *, size_t, struct hostent **, int *))dlsym(
			RTLD_NEXT, "gethostbyaddr_r");
	if (!f)
		return ENOSYS;
	return f(addr, len, type, ret, buf, buflen, result, h_errnop);
}
