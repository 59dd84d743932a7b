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
 * Build: gcc -O2 -Wall -Wextra -o idlec idlec.c (with common.h beside it)
 */
#define _GNU_SOURCE
#define PROG "idlec"
#include "common.h"

#include <signal.h>
#include <sys/stat.h>

#define PAYLOAD 16

static const char payload[PAYLOAD] = "idle-session-ok!";
static double sock_timeout = 10;

static struct errors errs;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	got_signal = sig;
}

static double now_s(void)
{
	return (double)now_ns() / 1e9;
}

/* open_one opens one flow and proves it relays; returns its fd or -1. */
static int open_one(const struct sockaddr *sa, socklen_t len)
{
	int fd;

	fd = socket(sa->sa_family, SOCK_STREAM, 0);
	if (fd < 0) {
		sys_error("socket", errno);
		return -1;
	}
	if (set_timeouts(fd, sock_timeout) < 0) {
		close(fd);
		return -1;
	}
	if (connect(fd, sa, len) < 0) {
		sys_error("connect", errno);
		close(fd);
		return -1;
	}
	if (echo_once(fd, payload, PAYLOAD, "") < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void usage(void)
{
	fprintf(stderr, "usage: idlec [-g GOFILE] [-H HOLDSEC] [-m MAXSEC] [-t SOCKSEC] TARGET_IP TARGET_PORT FLOWS READYFILE\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct sockaddr_storage ss;
	struct sigaction sa;
	struct stat st;
	socklen_t len;
	const char *gofile = NULL, *ready;
	double max_time = 180, hold = 240, t0, open_s, held_s;
	long flows, i, opened = 0, alive = 0;
	int c, port, *fds, check = 0;
	char tmp[4096];
	FILE *f;

	my_errors = &errs;
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
	if (parse_addr(argv[0], port, &ss, &len) < 0) {
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
			if (fds[i] >= 0 && echo_once(fds[i], payload, PAYLOAD, "after holding: ") == 0)
				alive++;
	}
	for (i = 0; i < flows; i++)
		if (fds[i] >= 0)
			close(fds[i]);

	printf("{\"sessions\":%ld,\"opened\":%ld,\"errors\":%ld,\"open_seconds\":%.3f,\"alive_after_hold\":%ld,\"held_seconds\":%.3f",
	       flows, opened, errs.n, open_s, alive, held_s);
	if (!check)
		printf(",\"cancelled\":true");
	print_samples(&errs);
	printf("}\n");
	return 0;
}
