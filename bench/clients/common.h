/*
 * common.h: what the benchmark clients of bench/clients share: the error
 * tally they report, number and address parsing, the 16- or 64-byte echo
 * that proves a connection relays, and the JSON they print. Each client is
 * one file that includes this after defining PROG (its name, for messages)
 * and _GNU_SOURCE:
 *
 *	#define _GNU_SOURCE
 *	#define PROG "idlec"
 *	#include "common.h"
 */
#ifndef BENCH_CLIENTS_COMMON_H
#define BENCH_CLIENTS_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 8
#define MSG_LEN 160
#define ECHO_MAX 64 /* the longest payload echo_once echoes */

/* The errors counted, and the first few distinct messages with counts. */
struct errors {
	long n;
	int n_samples;
	struct {
		char msg[MSG_LEN];
		long n;
	} samples[MAX_SAMPLES];
};

/* Where add_error counts: the client's own (idlec), a worker's (shortc). */
static struct errors *my_errors;

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* sample adds n to msg's count in e, if e keeps msg or still has room. */
static void sample(struct errors *e, const char *msg, long n)
{
	int i;

	for (i = 0; i < e->n_samples; i++)
		if (strcmp(e->samples[i].msg, msg) == 0)
			break;
	if (i < e->n_samples) {
		e->samples[i].n += n;
	} else if (e->n_samples < MAX_SAMPLES) {
		snprintf(e->samples[i].msg, MSG_LEN, "%s", msg);
		e->samples[i].n = n;
		e->n_samples++;
	}
}

static void add_error(const char *what, const char *why)
{
	char msg[MSG_LEN];

	snprintf(msg, sizeof msg, "%s: %s", what, why);
	my_errors->n++;
	sample(my_errors, msg, 1);
}

static void sys_error(const char *what, int err)
{
	char buf[MSG_LEN];

	add_error(what, strerror_r(err, buf, sizeof buf));
}

/* number parses a command-line number from lo to hi, or exits 2. */
static long number(const char *s, long lo, long hi, const char *name)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, PROG ": %s must be %ld..%ld\n", name, lo, hi);
		exit(2);
	}
	return v;
}

/* parse_addr makes ss the IPv4 or IPv6 address s with port; -1 if s is neither. */
static int parse_addr(const char *s, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof *ss);
	if (inet_pton(AF_INET, s, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		*len = sizeof *in4;
		return 0;
	}
	if (inet_pton(AF_INET6, s, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		*len = sizeof *in6;
		return 0;
	}
	return -1;
}

/* set_timeouts gives fd SO_RCVTIMEO and SO_SNDTIMEO of secs; -1 (counted) on error. */
static int set_timeouts(int fd, double secs)
{
	struct timeval tv;

	tv.tv_sec = (time_t)secs;
	tv.tv_usec = (suseconds_t)((secs - (double)tv.tv_sec) * 1e6);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) {
		sys_error("setsockopt", errno);
		return -1;
	}
	return 0;
}

/*
 * echo_once writes the len (at most ECHO_MAX) bytes of payload and reads
 * them back whole; 0 on success, else -1 with the error counted, its
 * message beginning with when.
 */
static int echo_once(int fd, const char *payload, size_t len, const char *when)
{
	char back[ECHO_MAX], what[64];
	size_t done;
	ssize_t n;

	for (done = 0; done < len; done += (size_t)n) {
		n = write(fd, payload + done, len - done);
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
	for (done = 0; done < len; done += (size_t)n) {
		n = read(fd, back + done, len - done);
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
	if (memcmp(back, payload, len) != 0) {
		snprintf(what, sizeof what, "%secho", when);
		add_error(what, "came back different");
		return -1;
	}
	return 0;
}

/* json_escape prints s as the inside of a JSON string. */
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

/* print_samples prints e's messages as ,"error_samples":["Nx MSG",…], if any. */
static void print_samples(const struct errors *e)
{
	int i;

	if (!e->n_samples)
		return;
	printf(",\"error_samples\":[");
	for (i = 0; i < e->n_samples; i++) {
		printf("%s\"%ldx ", i ? "," : "", e->samples[i].n);
		json_escape(e->samples[i].msg);
		putchar('"');
	}
	putchar(']');
}

#endif
