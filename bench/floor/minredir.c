/*
 * minredir: a minimal transparent TCP relay for REDIRECT. A BENCHMARK
 * REFERENCE ONLY.
 *
 *	minredir ADDR PORT      (listens on the IPv4 address ADDR:PORT)
 *
 * bench/redirect.sh runs it beside funtun redirect and redsocks as the
 * "floor" peer: the least a user-space relay on the gateway can cost, so
 * that funtun's throughput can be read against what terminating and
 * re-originating every TCP connection costs the machine at all, apart
 * from any relay's design (see bench/redirect.md). It has none of
 * funtun's features: no profiles, no logging, no IPv6, no limits, no
 * timeouts. Do not use it for anything else.
 *
 * What it does: accept, getsockopt(SO_ORIGINAL_DST), a blocking connect
 * to that destination, then one thread per direction moving the bytes
 * with splice(2) through a pipe of its own (the kernel's zero-copy path,
 * the same one funtun's engine takes for kernel sockets). On EOF the
 * other side's write half is shut down; the sockets are closed once both
 * directions are done.
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o minredir minredir.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
	int fd[2];        /* client, server */
	atomic_int left;  /* directions still running */
};

struct dir {
	struct conn *c;
	int from, to;
};

static void done(struct conn *c)
{
	if (atomic_fetch_sub(&c->left, 1) == 1) {
		close(c->fd[0]);
		close(c->fd[1]);
		free(c);
	}
}

static void *pump(void *arg)
{
	struct dir *d = arg;
	int p[2];
	if (pipe2(p, O_CLOEXEC) == 0) {
		fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
		for (;;) {
			ssize_t n = splice(d->from, NULL, p[1], NULL, 1 << 20, SPLICE_F_MOVE);
			if (n <= 0)
				break;
			while (n > 0) {
				ssize_t m = splice(p[0], NULL, d->to, NULL, n, SPLICE_F_MOVE);
				if (m <= 0)
					goto out;
				n -= m;
			}
		}
	out:
		close(p[0]);
		close(p[1]);
	}
	shutdown(d->to, SHUT_WR);
	struct conn *c = d->c;
	free(d);
	done(c);
	return NULL;
}

static void *serve(void *arg)
{
	int cfd = (int)(long)arg;
	struct sockaddr_in dst;
	socklen_t len = sizeof dst;
	if (getsockopt(cfd, SOL_IP, SO_ORIGINAL_DST, &dst, &len) < 0) {
		close(cfd);
		return NULL;
	}
	int sfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sfd < 0 || connect(sfd, (struct sockaddr *)&dst, sizeof dst) < 0) {
		if (sfd >= 0)
			close(sfd);
		close(cfd);
		return NULL;
	}
	struct conn *c = calloc(1, sizeof *c);
	struct dir *up = calloc(1, sizeof *up), *down = calloc(1, sizeof *down);
	if (!c || !up || !down)
		abort();
	c->fd[0] = cfd;
	c->fd[1] = sfd;
	atomic_init(&c->left, 2);
	*up = (struct dir){c, cfd, sfd};
	*down = (struct dir){c, sfd, cfd};
	pthread_t t;
	if (pthread_create(&t, NULL, pump, down) != 0)
		abort();
	pthread_detach(t);
	pump(up);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: minredir ADDR PORT\n");
		return 2;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
		fprintf(stderr, "minredir: bad address %s\n", argv[1]);
		return 2;
	}
	/* A write to a connection whose peer has gone must fail, not end
	 * every other connection with the process. */
	signal(SIGPIPE, SIG_IGN);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 128) < 0) {
		perror("minredir");
		return 1;
	}
	for (;;) {
		int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("minredir: accept");
			return 1;
		}
		pthread_t t;
		if (pthread_create(&t, NULL, serve, (void *)(long)c) != 0) {
			close(c);
			continue;
		}
		pthread_detach(t);
	}
}
