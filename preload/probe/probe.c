/*
 * funtun-probe — the calls `funtun doctor` makes under the hook, one per
 * run: each asks for the network the way some real program does (a plain
 * connect, a name lookup through each of glibc's entry points, a DNS query
 * of its own, io_uring, a child that lost LD_PRELOAD, a static child, a
 * raw system call). The doctor watches from outside what actually left;
 * this program only says what it got back: one line on stdout, "ok ..." or
 * "failed ...", and exit status 0 or 1.
 *
 * Built twice: dynamically (bin/funtun-probe), so that libfuntun.so hooks
 * what it hooks in any program, and statically (bin/funtun-probe-static,
 * -DFUNTUN_PROBE_STATIC, address probes only), which LD_PRELOAD cannot
 * reach.
 *
 * io_uring is driven with its raw system calls rather than liburing, so
 * that the probe needs no library the system may not have.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>
#ifndef FUNTUN_PROBE_STATIC
#include <arpa/nameser.h>
#include <resolv.h>
#endif

/* Every wait is bounded: a probe that hangs would hold up the report. */
#define WAIT_SECONDS 3

static const char *probe_name = "probe";

static int fail(const char *what, int err)
{
	printf("failed %s: %s\n", what, strerror(err));
	return 1;
}

static int failmsg(const char *msg)
{
	printf("failed %s\n", msg);
	return 1;
}

static void bound_waits(int fd)
{
	struct timeval tv = { .tv_sec = WAIT_SECONDS };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* parse_addr reads IP and PORT into a sockaddr of the right family. */
static int parse_addr(const char *ip, const char *port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	memset(ss, 0, sizeof *ss);
	int p = atoi(port);
	if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(p);
		*len = sizeof *in4;
		return 0;
	}
	if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(p);
		*len = sizeof *in6;
		return 0;
	}
	return -1;
}

/* exchange says who we are over a connected stream and waits for the
 * responder's "ok": a connect alone could have been answered by anyone. */
static int exchange(int fd, const char *how)
{
	char line[128];
	int n = snprintf(line, sizeof line, "funtun-probe %s\n", probe_name);
	if (write(fd, line, n) != n)
		return fail("write", errno);
	ssize_t got = read(fd, line, sizeof line - 1);
	if (got < 0)
		return fail("read", errno);
	line[got] = 0;
	if (strncmp(line, "ok", 2) != 0)
		return failmsg("the responder did not answer");
	printf("ok %s\n", how);
	return 0;
}

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);

static int raw_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	return syscall(SYS_connect, fd, sa, len);
}

static int tcp_with(const char *ip, const char *port, connect_fn how, const char *what)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (parse_addr(ip, port, &ss, &len) < 0)
		return failmsg("bad address");
	int fd = socket(ss.ss_family, SOCK_STREAM, 0);
	if (fd < 0)
		return fail("socket", errno);
	bound_waits(fd);
	if (how(fd, (struct sockaddr *)&ss, len) < 0)
		return fail(what, errno);
	return exchange(fd, what);
}

static int tcp_addr(const char *ip, const char *port)
{
	return tcp_with(ip, port, connect, "connect");
}

/* io_uring: one IORING_OP_CONNECT on a ring of our own. Where io_uring is
 * missing (ENOSYS: an old kernel, or funtun's filter) the probe does what
 * liburing users do and connects the ordinary way. */
static int uring_connect(int fd, const struct sockaddr *sa, socklen_t len, int *fellback)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	int ring = syscall(__NR_io_uring_setup, 4, &p);
	if (ring < 0) {
		if (errno != ENOSYS)
			return -1;
		*fellback = 1;
		return connect(fd, sa, len);
	}
	size_t sqsz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cqsz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	int single = p.features & IORING_FEAT_SINGLE_MMAP;
	if (single && cqsz > sqsz)
		sqsz = cqsz;
	char *sq = mmap(NULL, sqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
	if (sq == MAP_FAILED)
		return -1;
	char *cq = sq;
	if (!single) {
		cq = mmap(NULL, cqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
		if (cq == MAP_FAILED)
			return -1;
	}
	struct io_uring_sqe *sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
					 MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
	if (sqes == MAP_FAILED)
		return -1;
	unsigned *tail = (unsigned *)(sq + p.sq_off.tail);
	unsigned mask = *(unsigned *)(sq + p.sq_off.ring_mask);
	unsigned *array = (unsigned *)(sq + p.sq_off.array);
	unsigned t = *tail, idx = t & mask;
	struct io_uring_sqe *sqe = &sqes[idx];
	memset(sqe, 0, sizeof *sqe);
	sqe->opcode = IORING_OP_CONNECT;
	sqe->fd = fd;
	sqe->addr = (uint64_t)(uintptr_t)sa;
	sqe->off = len;
	array[idx] = idx;
	__atomic_store_n(tail, t + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return -1;
	unsigned head = __atomic_load_n((unsigned *)(cq + p.cq_off.head), __ATOMIC_ACQUIRE);
	unsigned cmask = *(unsigned *)(cq + p.cq_off.ring_mask);
	struct io_uring_cqe *cqe = &((struct io_uring_cqe *)(cq + p.cq_off.cqes))[head & cmask];
	int res = cqe->res;
	__atomic_store_n((unsigned *)(cq + p.cq_off.head), head + 1, __ATOMIC_RELEASE);
	close(ring);
	if (res < 0) {
		errno = -res;
		return -1;
	}
	return 0;
}

static int io_uring(const char *ip, const char *port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (parse_addr(ip, port, &ss, &len) < 0)
		return failmsg("bad address");
	int fd = socket(ss.ss_family, SOCK_STREAM, 0);
	if (fd < 0)
		return fail("socket", errno);
	bound_waits(fd);
	int fellback = 0;
	if (uring_connect(fd, (struct sockaddr *)&ss, len, &fellback) < 0)
		return fail(fellback ? "connect (after io_uring_setup: ENOSYS)" : "io_uring connect", errno);
	return exchange(fd, fellback ? "io_uring_setup: ENOSYS, fell back to connect()" : "IORING_OP_CONNECT");
}

static int udp_sendto(const char *ip, const char *port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (parse_addr(ip, port, &ss, &len) < 0)
		return failmsg("bad address");
	int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
	if (fd < 0)
		return fail("socket", errno);
	bound_waits(fd);
	char msg[128];
	int n = snprintf(msg, sizeof msg, "funtun-probe %s\n", probe_name);
	if (sendto(fd, msg, n, 0, (struct sockaddr *)&ss, len) != n)
		return fail("sendto", errno);
	ssize_t got = recvfrom(fd, msg, sizeof msg - 1, 0, NULL, NULL);
	if (got < 0)
		return fail("recvfrom", errno);
	printf("ok sendto, %zd bytes back\n", got);
	return 0;
}

/* run_child runs argv with envp, waits, and passes its status on. */
static int run_child(const char *path, char *const argv[], char *const envp[])
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return fail("fork", errno);
	if (pid == 0) {
		execve(path, argv, envp);
		printf("failed execve %s: %s\n", path, strerror(errno));
		_exit(1);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return fail("waitpid", errno);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

#ifndef FUNTUN_PROBE_STATIC
/* first_address prints what a lookup gave, for the report. */
static int first_address(const char *how, struct addrinfo *ai)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (ai)
		getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof host, NULL, 0, NI_NUMERICHOST);
	printf("ok %s: %s\n", how, host);
	return 0;
}

static int tcp_name(const char *name, const char *port)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	int r = getaddrinfo(name, port, &hints, &ai);
	if (r != 0) {
		printf("failed getaddrinfo: %s\n", gai_strerror(r));
		return 1;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM, 0);
	if (fd < 0)
		return fail("socket", errno);
	bound_waits(fd);
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0)
		return fail("connect", errno);
	return exchange(fd, "getaddrinfo and connect");
}

static int gai(const char *name)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	int r = getaddrinfo(name, NULL, &hints, &ai);
	if (r != 0) {
		printf("failed getaddrinfo: %s\n", gai_strerror(r));
		return 1;
	}
	return first_address("getaddrinfo", ai);
}

static int gai_a(const char *name)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
	struct gaicb cb = { .ar_name = name, .ar_request = &hints };
	struct gaicb *list[] = { &cb };
	int r = getaddrinfo_a(GAI_WAIT, list, 1, NULL);
	if (r == 0)
		r = gai_error(&cb);
	if (r != 0) {
		printf("failed getaddrinfo_a: %s\n", gai_strerror(r));
		return 1;
	}
	return first_address("getaddrinfo_a", cb.ar_result);
}

/* answer_a prints the first A record of a DNS answer. */
static int answer_a(const char *how, const unsigned char *msg, int len)
{
	ns_msg m;
	if (ns_initparse(msg, len, &m) < 0)
		return failmsg("unparseable DNS answer");
	if (ns_msg_getflag(m, ns_f_rcode) != ns_r_noerror) {
		printf("failed %s: DNS rcode %d\n", how, ns_msg_getflag(m, ns_f_rcode));
		return 1;
	}
	for (int i = 0; i < ns_msg_count(m, ns_s_an); i++) {
		ns_rr rr;
		if (ns_parserr(&m, ns_s_an, i, &rr) == 0 && ns_rr_type(rr) == ns_t_a && ns_rr_rdlen(rr) == 4) {
			char a[INET_ADDRSTRLEN];
			inet_ntop(AF_INET, ns_rr_rdata(rr), a, sizeof a);
			printf("ok %s: %s\n", how, a);
			return 0;
		}
	}
	printf("failed %s: no A record in the answer\n", how);
	return 1;
}

static int res_query_probe(const char *name)
{
	unsigned char ans[1024];
	int n = res_query(name, ns_c_in, ns_t_a, ans, sizeof ans);
	if (n < 0) {
		printf("failed res_query: %s\n", hstrerror(h_errno));
		return 1;
	}
	return answer_a("res_query", ans, n);
}

/* resolver reads the first nameserver of /etc/resolv.conf, as c-ares and
 * Chromium's own DNS client do. */
static int resolver(struct sockaddr_storage *ss, socklen_t *len)
{
	FILE *f = fopen("/etc/resolv.conf", "r");
	if (!f)
		return -1;
	char line[256], ip[INET6_ADDRSTRLEN + 1];
	int found = -1;
	while (found < 0 && fgets(line, sizeof line, f))
		if (sscanf(line, " nameserver %46s", ip) == 1)
			found = parse_addr(ip, "53", ss, len);
	fclose(f);
	return found;
}

static int dns_query(const char *name, int tcp)
{
	unsigned char q[512], ans[1024];
	int qlen = res_mkquery(ns_o_query, name, ns_c_in, ns_t_a, NULL, 0, NULL, q, sizeof q);
	if (qlen < 0)
		return failmsg("res_mkquery");
	struct sockaddr_storage ss;
	socklen_t len;
	if (resolver(&ss, &len) < 0)
		return failmsg("no nameserver in /etc/resolv.conf");
	int fd = socket(ss.ss_family, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
	if (fd < 0)
		return fail("socket", errno);
	bound_waits(fd);
	if (!tcp) {
		if (sendto(fd, q, qlen, 0, (struct sockaddr *)&ss, len) != qlen)
			return fail("sendto", errno);
		ssize_t n = recvfrom(fd, ans, sizeof ans, 0, NULL, NULL);
		if (n < 0)
			return fail("recvfrom", errno);
		return answer_a("UDP query to the resolv.conf nameserver", ans, n);
	}
	if (connect(fd, (struct sockaddr *)&ss, len) < 0)
		return fail("connect", errno);
	unsigned char pre[2] = { qlen >> 8, qlen & 0xff };
	if (write(fd, pre, 2) != 2 || write(fd, q, qlen) != qlen)
		return fail("write", errno);
	size_t got = 0;
	while (got < 2) {
		ssize_t n = read(fd, pre + got, 2 - got);
		if (n <= 0)
			return n < 0 ? fail("read", errno) : failmsg("the resolver closed the connection");
		got += n;
	}
	size_t want = (pre[0] << 8) | pre[1];
	if (want > sizeof ans)
		return failmsg("DNS answer too long");
	for (got = 0; got < want;) {
		ssize_t n = read(fd, ans + got, want - got);
		if (n <= 0)
			return n < 0 ? fail("read", errno) : failmsg("the resolver closed the connection");
		got += n;
	}
	return answer_a("TCP query to the resolv.conf nameserver", ans, want);
}
#endif

static int usage(void)
{
	fprintf(stderr,
		"usage: funtun-probe PROBE ARGS…   (run by `funtun doctor`, see docs/hooks/doctor.md)\n"
		"  tcp-addr IP PORT        connect(2) to an address (IPv4 or IPv6)\n"
		"  udp-sendto IP PORT      an unconnected UDP sendto(2), waiting for the echo\n"
		"  io-uring IP PORT        IORING_OP_CONNECT; connect(2) where io_uring is missing\n"
		"  raw-syscall IP PORT     syscall(SYS_connect, …), past any libc hook\n"
		"  scrubbed-child IP PORT  a child with an empty environment runs tcp-addr\n"
		"  static-child PATH IP PORT  the static probe at PATH runs tcp-addr\n"
#ifndef FUNTUN_PROBE_STATIC
		"  tcp-name NAME PORT      getaddrinfo(3), then connect(2)\n"
		"  gai NAME                getaddrinfo(3) alone\n"
		"  gai-a NAME              getaddrinfo_a(3)\n"
		"  res-query NAME          res_query(3) for an A record\n"
		"  dns-udp NAME            a DNS query of its own over UDP to the resolv.conf nameserver\n"
		"  dns-tcp NAME            the same over TCP\n"
#endif
	);
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return usage();
	const char *p = argv[1];
	probe_name = p;
	/* A probe must end even if a peer never answers. */
	alarm(4 * WAIT_SECONDS);
	if (argc == 4 && strcmp(p, "tcp-addr") == 0)
		return tcp_addr(argv[2], argv[3]);
	if (argc == 4 && strcmp(p, "udp-sendto") == 0)
		return udp_sendto(argv[2], argv[3]);
	if (argc == 4 && strcmp(p, "io-uring") == 0)
		return io_uring(argv[2], argv[3]);
	if (argc == 4 && strcmp(p, "raw-syscall") == 0)
		return tcp_with(argv[2], argv[3], raw_connect, "syscall(SYS_connect)");
	if (argc == 4 && strcmp(p, "scrubbed-child") == 0) {
		char *args[] = { "funtun-probe", "tcp-addr", argv[2], argv[3], NULL };
		char *none[] = { NULL };
		return run_child("/proc/self/exe", args, none);
	}
	if (argc == 5 && strcmp(p, "static-child") == 0) {
		char *args[] = { argv[2], "tcp-addr", argv[3], argv[4], NULL };
		extern char **environ;
		return run_child(argv[2], args, environ);
	}
#ifndef FUNTUN_PROBE_STATIC
	if (argc == 4 && strcmp(p, "tcp-name") == 0)
		return tcp_name(argv[2], argv[3]);
	if (argc == 3 && strcmp(p, "gai") == 0)
		return gai(argv[2]);
	if (argc == 3 && strcmp(p, "gai-a") == 0)
		return gai_a(argv[2]);
	if (argc == 3 && strcmp(p, "res-query") == 0)
		return res_query_probe(argv[2]);
	if (argc == 3 && strcmp(p, "dns-udp") == 0)
		return dns_query(argv[2], 0);
	if (argc == 3 && strcmp(p, "dns-tcp") == 0)
		return dns_query(argv[2], 1);
#endif
	return usage();
}
