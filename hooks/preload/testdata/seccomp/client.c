/*
 * client: the static test program of mode=seccomp (built with gcc -static,
 * which LD_PRELOAD cannot hook). It makes its calls the plain way, no
 * getaddrinfo (static glibc would load NSS modules for it):
 *
 *   client get IP PORT PATH        blocking connect, HTTP GET, body on stdout
 *   client nbget IP PORT PATH      non-blocking connect, poll, SO_ERROR, GET
 *   client resolve NAME [sendto]   an A query to the first nameserver of
 *                                  /etc/resolv.conf over UDP (connect+send,
 *                                  or sendto+recvfrom), the answer on stdout
 *   client nameget NAME PORT PATH  resolve as above, then get
 *   client fork N IP PORT PATH     N children, each a get; prints how many
 *                                  bodies contained "Y"
 *   client exec-empty PROG ARG…    execve PROG with an empty environment
 *   client get32 IP PORT PATH      get, its connect made through the 32-bit
 *                                  entry (int 0x80), as connect (362)
 *   client getsc IP PORT PATH      the same through socketcall (102)
 *   client rawget IP PORT PATH     get, its connect a raw syscall(SYS_connect),
 *                                  which no LD_PRELOAD library sees
 *   client rawresolve NAME         resolve with sendto and recvfrom, both
 *                                  raw system calls
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "client: %s: %s\n", what, strerror(errno));
	exit(1);
}

static struct sockaddr_in addr_of(const char *ip, const char *port)
{
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)atoi(port));
	if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
		fprintf(stderr, "client: bad address %s\n", ip);
		exit(2);
	}
	return sa;
}

/* get sends a GET on a connected socket and copies the body to out. */
static void get(int fd, const char *path, FILE *out)
{
	char req[512];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: test\r\n\r\n", path);
	if (write(fd, req, (size_t)n) != n)
		die("write");
	char buf[65536];
	size_t have = 0;
	for (;;) {
		ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
		if (r < 0)
			die("read");
		if (r == 0 || have + (size_t)r >= sizeof buf - 1) {
			have += (size_t)(r > 0 ? r : 0);
			break;
		}
		have += (size_t)r;
	}
	buf[have] = 0;
	char *body = strstr(buf, "\r\n\r\n");
	fputs(body ? body + 4 : buf, out);
	fflush(out);
}

static int connect_blocking(const char *ip, const char *port)
{
	struct sockaddr_in sa = addr_of(ip, port);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
		die("connect");
	return fd;
}

/* The socket call itself, past the C library and whatever preloads it. */
static int connect_raw(const char *ip, const char *port)
{
	struct sockaddr_in sa = addr_of(ip, port);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	if (syscall(SYS_connect, fd, (struct sockaddr *)&sa, sizeof sa) < 0)
		die("syscall(SYS_connect)");
	return fd;
}

static int raw_calls;

static ssize_t sendto_maybe_raw(int fd, const void *buf, size_t n, const struct sockaddr *to, socklen_t tolen)
{
	if (raw_calls)
		return syscall(SYS_sendto, fd, buf, n, 0, to, tolen);
	return sendto(fd, buf, n, 0, to, tolen);
}

static ssize_t recvfrom_maybe_raw(int fd, void *buf, size_t n, struct sockaddr *from, socklen_t *fromlen)
{
	if (raw_calls)
		return syscall(SYS_recvfrom, fd, buf, n, 0, from, fromlen);
	return recvfrom(fd, buf, n, 0, from, fromlen);
}

static int connect_nonblocking(const char *ip, const char *port)
{
	struct sockaddr_in sa = addr_of(ip, port);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (fd < 0)
		die("socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
		fprintf(stderr, "client: non-blocking connect completed at once\n");
	} else {
		if (errno != EINPROGRESS)
			die("connect (non-blocking)");
		fprintf(stderr, "client: connect: EINPROGRESS\n");
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		if (poll(&p, 1, 20000) != 1)
			die("poll");
		int soerr = 0;
		socklen_t len = sizeof soerr;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
			die("getsockopt");
		if (soerr != 0) {
			errno = soerr;
			die("SO_ERROR");
		}
	}
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	return fd;
}

#if defined(__x86_64__)
/* The 32-bit entry from a 64-bit program: the kernel reads 32-bit
 * registers, so the address must lie below 4 GiB — a global of this
 * static, non-PIE program does. */
static struct sockaddr_in sa32;
static unsigned int sc_args[3];

static long int80(long nr, long a, long b, long c)
{
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
	return ret;
}

static int connect_int80(const char *ip, const char *port, int socketcall)
{
	sa32 = addr_of(ip, port);
	if ((unsigned long)&sa32 > 0xffffffffUL) {
		fprintf(stderr, "client: the address lies above 4 GiB (a PIE build?)\n");
		exit(2);
	}
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	long r;
	if (socketcall) {
		sc_args[0] = (unsigned int)fd;
		sc_args[1] = (unsigned int)(unsigned long)&sa32;
		sc_args[2] = sizeof sa32;
		r = int80(102, 3 /* SYS_CONNECT */, (long)(unsigned long)sc_args, 0);
	} else {
		r = int80(362, fd, (long)(unsigned long)&sa32, sizeof sa32);
	}
	if (r < 0) {
		errno = (int)-r;
		die(socketcall ? "socketcall(connect)" : "connect (int 0x80)");
	}
	return fd;
}
#endif

static int first_nameserver(struct sockaddr_in *sa)
{
	FILE *f = fopen("/etc/resolv.conf", "r");
	if (!f)
		die("/etc/resolv.conf");
	char line[256], ip[64];
	while (fgets(line, sizeof line, f)) {
		if (sscanf(line, "nameserver %63s", ip) == 1 && strchr(ip, '.')) {
			fclose(f);
			*sa = addr_of(ip, "53");
			return 0;
		}
	}
	fprintf(stderr, "client: no IPv4 nameserver in /etc/resolv.conf\n");
	exit(1);
}

/* resolve asks for NAME's A record; the answer's address goes into ip. */
static void resolve(const char *name, int use_sendto, char *ip, size_t iplen)
{
	unsigned char q[512], a[1500];
	size_t n = 0;
	q[n++] = 0x12, q[n++] = 0x34; /* id */
	q[n++] = 0x01, q[n++] = 0x00; /* recursion desired */
	q[n++] = 0, q[n++] = 1, q[n++] = 0, q[n++] = 0, q[n++] = 0, q[n++] = 0, q[n++] = 0, q[n++] = 0;
	const char *p = name;
	while (*p) {
		const char *dot = strchr(p, '.');
		size_t l = dot ? (size_t)(dot - p) : strlen(p);
		q[n++] = (unsigned char)l;
		memcpy(q + n, p, l);
		n += l;
		p += l;
		if (*p == '.')
			p++;
	}
	q[n++] = 0;
	q[n++] = 0, q[n++] = 1, q[n++] = 0, q[n++] = 1; /* A, IN */

	struct sockaddr_in ns;
	first_nameserver(&ns);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	ssize_t r;
	if (use_sendto) {
		if (sendto_maybe_raw(fd, q, n, (struct sockaddr *)&ns, sizeof ns) != (ssize_t)n)
			die("sendto");
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		r = recvfrom_maybe_raw(fd, a, sizeof a, (struct sockaddr *)&from, &fl);
		if (r >= 0 && (from.sin_addr.s_addr != ns.sin_addr.s_addr || from.sin_port != ns.sin_port)) {
			/* What glibc's and musl's resolvers check before they take an answer. */
			fprintf(stderr, "client: the answer came from %s:%d, not the nameserver\n", inet_ntoa(from.sin_addr), ntohs(from.sin_port));
			exit(1);
		}
	} else {
		if (connect(fd, (struct sockaddr *)&ns, sizeof ns) < 0)
			die("connect (udp)");
		if (send(fd, q, n, 0) != (ssize_t)n)
			die("send");
		r = recv(fd, a, sizeof a, 0);
	}
	if (r < 0)
		die("recv (dns)");
	close(fd);
	if (r < (ssize_t)n + 16 || a[0] != 0x12 || a[1] != 0x34 || a[7] == 0) {
		fprintf(stderr, "client: no answer for %s (%zd bytes, rcode %d)\n", name, r, r > 3 ? a[3] & 15 : -1);
		exit(1);
	}
	/* The answer follows the question; its name is a pointer (2 bytes). */
	size_t off = n;
	if ((a[off] & 0xc0) != 0xc0 || a[off + 3] != 1 || a[off + 11] != 4) {
		fprintf(stderr, "client: unexpected answer for %s\n", name);
		exit(1);
	}
	inet_ntop(AF_INET, a + off + 12, ip, (socklen_t)iplen);
}

int main(int argc, char **argv)
{
	if (argc >= 5 && strcmp(argv[1], "get") == 0) {
		get(connect_blocking(argv[2], argv[3]), argv[4], stdout);
		return 0;
	}
	if (argc >= 5 && strcmp(argv[1], "nbget") == 0) {
		get(connect_nonblocking(argv[2], argv[3]), argv[4], stdout);
		return 0;
	}
	if (argc >= 5 && strcmp(argv[1], "rawget") == 0) {
		get(connect_raw(argv[2], argv[3]), argv[4], stdout);
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "rawresolve") == 0) {
		char ip[64];
		raw_calls = 1;
		resolve(argv[2], 1, ip, sizeof ip);
		printf("%s\n", ip);
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "resolve") == 0) {
		char ip[64];
		resolve(argv[2], argc > 3 && strcmp(argv[3], "sendto") == 0, ip, sizeof ip);
		printf("%s\n", ip);
		return 0;
	}
	if (argc >= 5 && strcmp(argv[1], "nameget") == 0) {
		char ip[64];
		resolve(argv[2], 0, ip, sizeof ip);
		fprintf(stderr, "client: %s is %s\n", argv[2], ip);
		get(connect_blocking(ip, argv[3]), argv[4], stdout);
		return 0;
	}
	if (argc >= 6 && strcmp(argv[1], "fork") == 0) {
		int n = atoi(argv[2]);
		int fds[2];
		if (pipe(fds) < 0)
			die("pipe");
		for (int i = 0; i < n; i++) {
			pid_t pid = fork();
			if (pid < 0)
				die("fork");
			if (pid == 0) {
				close(fds[0]);
				FILE *out = fdopen(fds[1], "w");
				char body[4096];
				FILE *mem = fmemopen(body, sizeof body, "w");
				get(connect_blocking(argv[3], argv[4]), argv[5], mem);
				fclose(mem);
				/* One byte per child, written at once: the pipe keeps them whole. */
				fputc(strchr(body, 'Y') ? 'Y' : 'n', out);
				fclose(out);
				_exit(0);
			}
		}
		close(fds[1]);
		int ys = 0, c;
		FILE *in = fdopen(fds[0], "r");
		while ((c = fgetc(in)) != EOF)
			ys += c == 'Y';
		while (wait(NULL) > 0)
			;
		printf("%d\n", ys);
		return 0;
	}
#if defined(__x86_64__)
	if (argc >= 5 && (strcmp(argv[1], "get32") == 0 || strcmp(argv[1], "getsc") == 0)) {
		get(connect_int80(argv[2], argv[3], strcmp(argv[1], "getsc") == 0), argv[4], stdout);
		return 0;
	}
#endif
	if (argc >= 3 && strcmp(argv[1], "exec-empty") == 0) {
		char *envp[] = {NULL};
		execve(argv[2], argv + 2, envp);
		die("execve");
	}
	fprintf(stderr, "usage: see the comment at the top of client.c\n");
	return 2;
}
