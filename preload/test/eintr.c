/*
 * eintr — does a signal make connect() fail where the kernel's would not?
 * The probe for libfuntun.so's wait on the funnel (hooks/preload's
 * eintr_test.go runs it under the launcher).
 *
 *   eintr [-b] HOST PORT N
 *
 * A SIGCHLD handler is installed WITHOUT SA_RESTART, and a second thread
 * forks children that exit at once, all the time, so that the signal keeps
 * interrupting whatever the main thread waits in. The main thread makes N
 * connections to HOST:PORT (an echo server), one after the other, and
 * echoes one byte on each.
 *
 * Non-blocking (the default): the kernel never gives EINTR for a
 * non-blocking connect(); each one must answer 0 or EINPROGRESS.
 * -b, blocking: the kernel may give EINTR (a signal interrupted the wait),
 * and the connection then completes in the background: the probe waits for
 * it with poll() and SO_ERROR, as a program must, and echoes on it.
 *
 * Prints one line: "eintr E/N ok K/N signals S" — E connects that failed
 * with EINTR, K connections that echoed, S SIGCHLDs handled. The first
 * few other failures are printed before it as "fail I CALL ERRNO".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static atomic_int signals;
static atomic_int done;

static void on_chld(int sig)
{
	(void)sig;
	int e = errno;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	atomic_fetch_add(&signals, 1);
	errno = e;
}

/* forker makes children that exit at once. It blocks SIGCHLD itself, so
 * that the signal goes to the main thread, which connects. */
static void *forker(void *arg)
{
	(void)arg;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	struct timespec pause = {0, 300 * 1000};
	while (!atomic_load(&done)) {
		pid_t pid = fork();
		if (pid == 0)
			_exit(0);
		nanosleep(&pause, NULL);
	}
	return NULL;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* wait_for polls fd for events across signals, up to 10 s in all. */
static int wait_for(int fd, short events)
{
	long long deadline = now_ms() + 10000;
	for (;;) {
		long long left = deadline - now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = {.fd = fd, .events = events};
		int r = poll(&p, 1, (int)left);
		if (r > 0)
			return p.revents;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

static int fails;

static void fail(int i, const char *call, int e)
{
	if (fails++ < 5)
		printf("fail %d %s %s\n", i, call, strerror(e));
}

int main(int argc, char **argv)
{
	int blocking = 0;
	if (argc > 1 && strcmp(argv[1], "-b") == 0) {
		blocking = 1;
		argv++;
		argc--;
	}
	if (argc != 4) {
		fprintf(stderr, "usage: eintr [-b] HOST PORT N\n");
		return 2;
	}
	int n = atoi(argv[3]);
	struct addrinfo hints, *ai;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int g = getaddrinfo(argv[1], argv[2], &hints, &ai);
	if (g != 0) {
		fprintf(stderr, "eintr: %s: %s\n", argv[1], gai_strerror(g));
		return 1;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_chld;
	sa.sa_flags = 0; /* no SA_RESTART: interrupted calls fail with EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGCHLD, &sa, NULL);
	pthread_t th;
	pthread_create(&th, NULL, forker, NULL);

	int eintr = 0, ok = 0;
	for (int i = 0; i < n; i++) {
		int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | (blocking ? 0 : SOCK_NONBLOCK), 0);
		if (fd < 0) {
			fail(i, "socket", errno);
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
			int e = errno;
			if (e == EINTR) {
				eintr++;
			} else if (e != EINPROGRESS) {
				fail(i, "connect", e);
				close(fd);
				continue;
			}
			/* In progress (or interrupted: the kernel goes on connecting). */
			int ev = wait_for(fd, POLLOUT);
			if (ev < 0) {
				fail(i, "poll", -ev);
				close(fd);
				continue;
			}
			int soerr = 0;
			socklen_t l = sizeof soerr;
			getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &l);
			if (soerr) {
				fail(i, "SO_ERROR", soerr);
				close(fd);
				continue;
			}
		}
		char c = (char)('a' + i % 26), back = 0;
		ssize_t w;
		do
			w = send(fd, &c, 1, MSG_NOSIGNAL);
		while (w < 0 && errno == EINTR);
		if (w != 1) {
			fail(i, "send", w < 0 ? errno : EIO);
			close(fd);
			continue;
		}
		int ev = wait_for(fd, POLLIN);
		ssize_t r = -1;
		if (ev > 0) {
			do
				r = recv(fd, &back, 1, MSG_DONTWAIT);
			while (r < 0 && errno == EINTR);
		}
		if (r != 1 || back != c) {
			fail(i, "recv", ev < 0 ? -ev : r < 0 ? errno : EIO);
			close(fd);
			continue;
		}
		close(fd);
		ok++;
	}
	atomic_store(&done, 1);
	pthread_join(th, NULL);
	printf("eintr %d/%d ok %d/%d signals %d\n", eintr, n, ok, n, atomic_load(&signals));
	return 0;
}
