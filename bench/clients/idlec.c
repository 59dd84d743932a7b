/*
 * idlec: the idle-flow client of bench/idle.sh. A BENCHMARK CLIENT ONLY.
 *
 *	idlec [-g GOFILE] [-H HOLDSEC] [-m MAXSEC] [-t SOCKSEC] \
 *		TARGET_IP TARGET_PORT FLOWS READYFILE
 *
 * Opens FLOWS TCP connections to TARGET (an echo server, or a forwarder in
 * front of one), one after the other, proves each relays with one 16-byte
 * echo, and keeps them all open without traffic. It is C so that the
 * LD_PRELOAD hook can carry it (`funtun chain=… idlec …`): a Go program
 * makes its system calls itself and would not be hooked.
 *
 * With -g it first waits for GOFILE to exist (at most MAXSEC), so that the
 * caller can measure the process under test before any flow opens (under
 * the launcher, the funnel and this client start together).
 *
 * Once every flow has been tried it writes "OPENED ERRORS\n" to READYFILE
 * (through a temporary file and rename(2), so the caller never reads half
 * a line). Then it waits: on SIGUSR1 it checks that every open flow still
 * relays (one more echo each) and reports how many did ("alive"); on
 * SIGTERM, SIGINT or after HOLDSEC (default 240) it reports without the
 * check. It closes every flow and prints one JSON line like
 * bench/cmd/socksload idle's:
 *
 *	{"sessions":N,"opened":K,"errors":E,"open_seconds":S,
 *	 "alive_after_hold":A,"held_seconds":H,"error_samples":[…]}
 *
 * Bounded: no flow is started after MAXSEC seconds (default 180), and every
 * socket has SO_RCVTIMEO and SO_SNDTIMEO of SOCKSEC seconds (default 10),
 * set before connect(), so a blocking connect() is bounded too.
 *
 * Build: gcc -O2 -Wall -Wextra -o idlec idlec.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 16
#define MAX_SAMPLES 8
#define MSG_LEN 160

static const char payload[PAYLOAD] = "idle-session-ok!";
static double sock_timeout = 10;

static struct {
	long n;
	int n_samples;
	struct {
		char msg[MSG_LEN];
		long n;
	} samples[MAX_SAMPLES];
} errs;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	got_signal = sig;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void add_error(const char *what, const char *why)
{
	char msg[MSG_LEN];
	int i;

	snprintf(msg, sizeof msg, "%s: %s", what, why);
	errs.n++;
	for (i = 0; i < errs.n_samples; i++)
		if (strcmp(errs.samples[i].msg, msg) == 0)
			break;
	if (i < errs.n_samples) {
		errs.samples[i].n++;
	} else if (errs.n_samples < MAX_SAMPLES) {
		snprintf(errs.samples[i].msg, MSG_LEN, "%s", msg);
		errs.samples[i].n = 1;
		errs.n_samples++;
	}
}

static void sys_error(const char *what, int err)
{
	char buf[MSG_LEN];

	add_error(what, strerror_r(err, buf, sizeof buf));
}

/* echo_once sends the payload and reads it back whole; 0 on success. */
static int echo_once(int fd, const char *when)
{
	char back[PAYLOAD], what[64];
	size_t done;
	ssize_t n;

	for (done = 0; done < PAYLOAD; done += (size_t)n) {
		n = write(fd, payload + done, PAYLOAD - done);
		if (n < 0 && errno == EINTR) {
			n = 0;
			continue;
		}
		if (n <= 0) {
			snprintf(what, sizeof what, "%secho write", when);
			sys_error(what, n < 0 ? errno : EIO);
			return -1;
		}
	}
	for (done = 0; done < PAYLOAD; done += (size_t)n) {
		n = read(fd, back + done, PAYLOAD - done);
		if (n < 0 && errno == EINTR) {
			n = 0;
			continue;
		}
		if (n <= 0) {
			snprintf(what, sizeof what, "%secho read", when);
			if (n < 0)
				sys_error(what, errno);
			else
				add_error(what, "EOF");
			return -1;
		}
	}
	if (memcmp(back, payload, PAYLOAD) != 0) {
		snprintf(what, sizeof what, "%secho", when);
		add_error(what, "came back different");
		return -1;
	}
	return 0;
}

/* open_one opens one flow and proves it relays; returns its fd or -1. */
static int open_one(const struct sockaddr *sa, socklen_t len)
{
	struct timeval tv;
	int fd;

	fd = socket(sa->sa_family, SOCK_STREAM, 0);
	if (fd < 0) {
		sys_error("socket", errno);
		return -1;
	}
	tv.tv_sec = (time_t)sock_timeout;
	tv.tv_usec = (suseconds_t)((sock_timeout - (double)tv.tv_sec) * 1e6);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) {
		sys_error("setsockopt", errno);
		close(fd);
		return -1;
	}
	if (connect(fd, sa, len) < 0) {
		sys_error("connect", errno);
		close(fd);
		return -1;
	}
	if (echo_once(fd, "") < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static long number(const char *s, long lo, long hi, const char *name)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "idlec: %s must be %ld..%ld\n", name, lo, hi);
		exit(2);
	}
	return v;
}

static void usage(void)
{
	fprintf(stderr, "usage: idlec [-g GOFILE] [-H HOLDSEC] [-m MAXSEC] [-t SOCKSEC] TARGET_IP TARGET_PORT FLOWS READYFILE\n");
	exit(2);
}

static void json_escape(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	struct sigaction sa;
	struct stat st;
	socklen_t len;
	const char *gofile = NULL, *ready;
	double max_time = 180, hold = 240, t0, open_s, held_s;
	long flows, i, opened = 0, alive = 0;
	int c, port, *fds, check = 0;
	char tmp[4096];
	FILE *f;

	while ((c = getopt(argc, argv, "g:H:m:t:")) != -1) {
		switch (c) {
		case 'g':
			gofile = optarg;
			break;
		case 'H':
			hold = (double)number(optarg, 1, 86400, "-H");
			break;
		case 'm':
			max_time = (double)number(optarg, 1, 86400, "-m");
			break;
		case 't':
			sock_timeout = (double)number(optarg, 1, 3600, "-t");
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc != 4)
		usage();
	port = (int)number(argv[1], 1, 65535, "TARGET_PORT");
	flows = number(argv[2], 1, 1000000, "FLOWS");
	ready = argv[3];
	memset(&ss, 0, sizeof ss);
	if (inet_pton(AF_INET, argv[0], &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		len = sizeof *in4;
	} else if (inet_pton(AF_INET6, argv[0], &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		len = sizeof *in6;
	} else {
		fprintf(stderr, "idlec: TARGET_IP %s is not an IP address\n", argv[0]);
		return 2;
	}
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", ready) >= sizeof tmp) {
		fprintf(stderr, "idlec: READYFILE name too long\n");
		return 2;
	}
	fds = malloc((size_t)flows * sizeof *fds);
	if (!fds) {
		fprintf(stderr, "idlec: out of memory\n");
		return 1;
	}

	/* Signals first: the caller may signal once the ready file exists. */
	signal(SIGPIPE, SIG_IGN);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal; /* no SA_RESTART: pause() must return */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);

	t0 = now_s();
	if (gofile) {
		while (stat(gofile, &st) < 0) {
			if (got_signal || now_s() - t0 > max_time) {
				fprintf(stderr, "idlec: %s did not appear\n", gofile);
				return 1;
			}
			usleep(20000);
		}
	}

	t0 = now_s();
	for (i = 0; i < flows; i++) {
		fds[i] = -1;
		if (got_signal == SIGTERM || got_signal == SIGINT)
			continue;
		if (now_s() - t0 > max_time) {
			add_error("open", "out of time");
			continue;
		}
		fds[i] = open_one((struct sockaddr *)&ss, len);
		if (fds[i] >= 0)
			opened++;
	}
	open_s = now_s() - t0;

	f = fopen(tmp, "w");
	if (!f || fprintf(f, "%ld %ld\n", opened, errs.n) < 0 || fclose(f) != 0 || rename(tmp, ready) < 0) {
		perror("idlec: ready file");
		return 1;
	}

	t0 = now_s();
	alarm((unsigned)hold);
	while (got_signal != SIGUSR1 && got_signal != SIGTERM && got_signal != SIGINT && got_signal != SIGALRM)
		pause();
	alarm(0);
	held_s = now_s() - t0;
	check = got_signal == SIGUSR1;
	if (check) {
		for (i = 0; i < flows; i++)
			if (fds[i] >= 0 && echo_once(fds[i], "after holding: ") == 0)
				alive++;
	}
	for (i = 0; i < flows; i++)
		if (fds[i] >= 0)
			close(fds[i]);

	printf("{\"sessions\":%ld,\"opened\":%ld,\"errors\":%ld,\"open_seconds\":%.3f,\"alive_after_hold\":%ld,\"held_seconds\":%.3f",
	       flows, opened, errs.n, open_s, alive, held_s);
	if (!check)
		printf(",\"cancelled\":true");
	if (errs.n_samples) {
		printf(",\"error_samples\":[");
		for (i = 0; i < errs.n_samples; i++) {
			printf("%s\"%ldx ", i ? "," : "", errs.samples[i].n);
			json_escape(errs.samples[i].msg);
			printf("\"");
		}
		printf("]");
	}
	printf("}\n");
	return 0;
}
