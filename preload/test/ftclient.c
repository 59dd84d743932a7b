/*
 * ftclient — a small client that exercises the socket API the way real
 * programs do, for libfuntun.so's tests (the Go tests in hooks/preload) and the
 * per-connection benchmark (bench/). Each mode prints plain lines that the
 * tests compare; errors print "error NAME" with the errno's name.
 *
 *   ftclient echo HOST PORT N        N sequential connections: connect,
 *                                    send "ping\n", read it back, close;
 *                                    prints "ok N USEC" (µs per connection)
 *   ftclient serve PORT              an iterative echo server on
 *                                    127.0.0.1:PORT for sequential clients"
 *   ftclient nonblock HOST PORT      non-blocking connect, poll, SO_ERROR;
 *                                    prints "connected PEER" or "error E"
 *   ftclient connect HOST PORT       blocking connect; "connected PEER"
 *   ftclient fds HOST PORT           connect, then dup/dup2/dup3/fcntl,
 *                                    fork and threads each read the peer
 *   ftclient threads HOST PORT N     N threads resolve and connect at once
 *   ftclient hostent NAME            gethostbyname, gethostbyname2,
 *                                    gethostbyname_r, getnameinfo
 *   ftclient resolve NAME            getaddrinfo; prints each address
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *errname(int e)
{
	switch (e) {
	case ECONNREFUSED: return "ECONNREFUSED";
	case EACCES: return "EACCES";
	case EHOSTUNREACH: return "EHOSTUNREACH";
	case ENETUNREACH: return "ENETUNREACH";
	case ETIMEDOUT: return "ETIMEDOUT";
	case EINPROGRESS: return "EINPROGRESS";
	case EALREADY: return "EALREADY";
	case EISCONN: return "EISCONN";
	case ENOTCONN: return "ENOTCONN";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case EIO: return "EIO";
	}
	return strerror(e);
}

static const char *gainame(int r)
{
	switch (r) {
	case EAI_AGAIN: return "EAI_AGAIN";
	case EAI_FAIL: return "EAI_FAIL";
	case EAI_NONAME: return "EAI_NONAME";
	}
	return gai_strerror(r);
}

static void addrtext(const struct sockaddr *sa, char *out, size_t n)
{
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof host);
		port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
		snprintf(out, n, "%s:%d", host, port);
	} else if (sa->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof host);
		port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
		snprintf(out, n, "[%s]:%d", host, port);
	} else {
		snprintf(out, n, "family%d", sa->sa_family);
	}
}

static int resolve(const char *host, const char *port, struct addrinfo **res)
{
	struct addrinfo hints;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int r = getaddrinfo(host, port, &hints, res);
	if (r != 0) {
		printf("error %s\n", gainame(r));
		return -1;
	}
	return 0;
}

static int peer_text(int fd, char *out, size_t n)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof ss;
	if (getpeername(fd, (struct sockaddr *)&ss, &l) != 0) {
		snprintf(out, n, "error %s", errname(errno));
		return -1;
	}
	addrtext((struct sockaddr *)&ss, out, n);
	return 0;
}

static int echo_once(const struct addrinfo *ai)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	static const char msg[] = "ping\n";
	if (write(fd, msg, sizeof msg - 1) != (ssize_t)(sizeof msg - 1)) {
		int e = errno;
		close(fd);
		return -e;
	}
	char buf[16];
	size_t got = 0;
	while (got < sizeof msg - 1) {
		ssize_t k = read(fd, buf + got, sizeof buf - got);
		if (k <= 0) {
			close(fd);
			return k == 0 ? -ECONNRESET : -errno;
		}
		got += (size_t)k;
	}
	close(fd);
	return memcmp(buf, msg, sizeof msg - 1) == 0 ? 0 : -EIO;
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int mode_echo(const char *host, const char *port, int n)
{
	struct addrinfo *res;
	if (resolve(host, port, &res) != 0)
		return 1;
	double start = now_us();
	for (int i = 0; i < n; i++) {
		int r = echo_once(res);
		if (r != 0) {
			printf("error %s after %d\n", errname(-r), i);
			return 1;
		}
	}
	double per = n > 0 ? (now_us() - start) / n : 0;
	freeaddrinfo(res);
	printf("ok %d %.1f\n", n, per);
	return 0;
}

/* One connection at a time: the benchmark's clients are sequential, and a
 * server without threads or polling costs the same under every client. */
static int mode_serve(const char *port)
{
	int l = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)atoi(port));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 128) != 0) {
		printf("error %s\n", errname(errno));
		return 1;
	}
	for (;;) {
		int c = accept(l, NULL, NULL);
		if (c < 0)
			continue;
		char buf[4096];
		ssize_t k;
		while ((k = read(c, buf, sizeof buf)) > 0)
			if (write(c, buf, (size_t)k) != k)
				break;
		close(c);
	}
}

static int mode_connect(const char *host, const char *port, int nonblock)
{
	struct addrinfo *res;
	if (resolve(host, port, &res) != 0)
		return 1;
	int fd = socket(res->ai_family, res->ai_socktype | (nonblock ? SOCK_NONBLOCK : 0), 0);
	int r = connect(fd, res->ai_addr, res->ai_addrlen);
	if (r != 0 && !(nonblock && errno == EINPROGRESS)) {
		printf("error %s\n", errname(errno));
		return 1;
	}
	if (r != 0) {
		/* A second connect() while connecting is EALREADY, as natively;
		 * on loopback the handshake may already be over (EISCONN). */
		if (connect(fd, res->ai_addr, res->ai_addrlen) == 0 || (errno != EALREADY && errno != EISCONN && errno != ECONNREFUSED)) {
			printf("error second connect: %s\n", errname(errno));
			return 1;
		}
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		if (poll(&p, 1, 10000) != 1) {
			printf("error poll\n");
			return 1;
		}
		int soerr = 0;
		socklen_t l = sizeof soerr;
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &l);
		if (soerr) {
			printf("error %s\n", errname(soerr));
			return 1;
		}
	}
	char peer[128];
	peer_text(fd, peer, sizeof peer);
	printf("connected %s\n", peer);
	return 0;
}

struct thread_arg {
	const char *host, *port;
	int ok;
};

static void *thread_main(void *p)
{
	struct thread_arg *a = p;
	struct addrinfo *res;
	struct addrinfo hints;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(a->host, a->port, &hints, &res) != 0)
		return NULL;
	for (int i = 0; i < 20; i++)
		if (echo_once(res) != 0) {
			freeaddrinfo(res);
			return NULL;
		}
	freeaddrinfo(res);
	a->ok = 1;
	return NULL;
}

static int mode_threads(const char *host, const char *port, int n)
{
	pthread_t th[64];
	struct thread_arg args[64];
	if (n > 64)
		n = 64;
	for (int i = 0; i < n; i++) {
		args[i] = (struct thread_arg){host, port, 0};
		pthread_create(&th[i], NULL, thread_main, &args[i]);
	}
	int ok = 0;
	for (int i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
		ok += args[i].ok;
	}
	printf("threads ok %d of %d\n", ok, n);
	return ok == n ? 0 : 1;
}

static int mode_fds(const char *host, const char *port)
{
	struct addrinfo *res;
	if (resolve(host, port, &res) != 0)
		return 1;
	int fd = socket(res->ai_family, res->ai_socktype, 0);
	if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
		printf("error %s\n", errname(errno));
		return 1;
	}
	char p[128];
	peer_text(fd, p, sizeof p);
	printf("fd %s\n", p);
	int d1 = dup(fd);
	peer_text(d1, p, sizeof p);
	printf("dup %s\n", p);
	int d2 = dup2(fd, 100);
	peer_text(d2, p, sizeof p);
	printf("dup2 %s\n", p);
	int d3 = dup3(fd, 101, O_CLOEXEC);
	peer_text(d3, p, sizeof p);
	printf("dup3 %s\n", p);
	int d4 = fcntl(fd, F_DUPFD_CLOEXEC, 200);
	peer_text(d4, p, sizeof p);
	printf("fcntl %s\n", p);
	close(fd);
	peer_text(d1, p, sizeof p);
	printf("after close %s\n", p);
	/* A number reused for another socket must not inherit the old entry. */
	close(d2);
	int other = socket(AF_INET, SOCK_STREAM, 0);
	dup2(other, 100);
	peer_text(100, p, sizeof p);
	printf("reused %s\n", p);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		peer_text(d1, p, sizeof p);
		printf("child %s\n", p);
		/* The child has its own control connection: a lookup works. */
		struct addrinfo *r2;
		printf("child resolve %s\n", resolve(host, port, &r2) == 0 ? "ok" : "failed");
		fflush(stdout);
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	return 0;
}

static int mode_hostent(const char *name)
{
	struct hostent *he = gethostbyname(name);
	char t[INET6_ADDRSTRLEN];
	if (!he) {
		printf("gethostbyname error %d\n", h_errno);
	} else {
		inet_ntop(he->h_addrtype, he->h_addr_list[0], t, sizeof t);
		printf("gethostbyname %s %s\n", he->h_name, t);
	}
	he = gethostbyname2(name, AF_INET6);
	if (he) {
		inet_ntop(he->h_addrtype, he->h_addr_list[0], t, sizeof t);
		printf("gethostbyname2 %s %s\n", he->h_name, t);
	}
	struct hostent ret, *result = NULL;
	char buf[1024];
	int herr = 0;
	int r = gethostbyname_r(name, &ret, buf, sizeof buf, &result, &herr);
	if (r == 0 && result) {
		inet_ntop(result->h_addrtype, result->h_addr_list[0], t, sizeof t);
		printf("gethostbyname_r %s %s\n", result->h_name, t);
		struct sockaddr_in sin;
		memset(&sin, 0, sizeof sin);
		sin.sin_family = AF_INET;
		sin.sin_port = htons(80);
		memcpy(&sin.sin_addr, result->h_addr_list[0], 4);
		char host[256], serv[32];
		int g = getnameinfo((struct sockaddr *)&sin, sizeof sin, host, sizeof host, serv, sizeof serv, NI_NUMERICSERV);
		printf("getnameinfo %s %s\n", g == 0 ? host : gainame(g), g == 0 ? serv : "");
	} else {
		printf("gethostbyname_r error %d\n", herr);
	}
	return 0;
}

static int mode_resolve(const char *name)
{
	struct addrinfo *res, *ai;
	if (resolve(name, "80", &res) != 0)
		return 1;
	for (ai = res; ai; ai = ai->ai_next) {
		char t[128];
		addrtext(ai->ai_addr, t, sizeof t);
		printf("addr %s\n", t);
	}
	freeaddrinfo(res);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 5 && strcmp(argv[1], "echo") == 0)
		return mode_echo(argv[2], argv[3], atoi(argv[4]));
	if (argc >= 3 && strcmp(argv[1], "serve") == 0)
		return mode_serve(argv[2]);
	if (argc >= 4 && strcmp(argv[1], "nonblock") == 0)
		return mode_connect(argv[2], argv[3], 1);
	if (argc >= 4 && strcmp(argv[1], "connect") == 0)
		return mode_connect(argv[2], argv[3], 0);
	if (argc >= 4 && strcmp(argv[1], "fds") == 0)
		return mode_fds(argv[2], argv[3]);
	if (argc >= 5 && strcmp(argv[1], "threads") == 0)
		return mode_threads(argv[2], argv[3], atoi(argv[4]));
	if (argc >= 3 && strcmp(argv[1], "hostent") == 0)
		return mode_hostent(argv[2]);
	if (argc >= 3 && strcmp(argv[1], "resolve") == 0)
		return mode_resolve(argv[2]);
	fprintf(stderr, "usage: ftclient echo|serve|nonblock|connect|fds|threads|hostent|resolve ...\n");
	return 2;
}
