/*
 * shortc: the short-connection load client of bench/socks5d.sh that
 * proxychains4 hooks. A BENCHMARK CLIENT ONLY.
 *
 *	proxychains4 -q -f CONF shortc [-m MAXSEC] [-t SOCKSEC] \
 *		TARGET_IP TARGET_PORT CONNS PARALLEL
 *
 * It knows nothing of SOCKS5: PARALLEL workers each repeat, until CONNS
 * connections have been made in all (a shared atomic counter), socket(),
 * connect() to TARGET (which proxychains4 replaces with its own connection
 * to the proxy, the SOCKS5 greeting and the CONNECT to TARGET), one
 * 64-byte write, reads until the 64 bytes are back (compared with what
 * was sent), close(). So every server under test faces the same client,
 * and the client is literally "proxychains4 as the client-side hook", as
 * issue 4 asks.
 *
 * The workers are processes, not threads: proxychains-ng (4.16) keeps the
 * state of its proxy list (each proxy "free", "busy" or "down") in globals
 * that its connect() changes without a lock. With threads in one process,
 * a strict_chain connect() then now and again finds the only proxy marked
 * busy by another thread and fails without trying (ECONNREFUSED, about one
 * in 3000 with 32 threads: errors that would be blamed on the server), or,
 * once connected, finds it free again and chains the proxy to itself (a
 * second hop through the server). Each forked worker has its own copy of
 * that state; the counter, the latencies and the errors live in shared
 * memory, and the workers die with the parent (PR_SET_PDEATHSIG).
 *
 * There is no source-address option: a bind() before connect() does not
 * reach the proxy connection under proxychains4 (4.16), whose connect()
 * makes a socket of its own, connects that to the proxy and dup2()s it
 * over the caller's (strace: socket 3, bind 3 to 127.0.0.2, socket 4,
 * connect 4, dup2(4, 3)); the proxy then sees 127.0.0.1 as the source.
 *
 * Latency is per connection, from before connect() to the echo's return
 * (CLOCK_MONOTONIC); a failed connection counts as an error and has no
 * latency. At the end one JSON line, like bench/cmd/socksload's:
 *
 *	{"conns":N,"done":D,"ok":K,"errors":E,"seconds":S,"cps":C,
 *	 "p50_ms":X,"p99_ms":Y,"error_samples":["3x connect: ...", ...]}
 *
 * Bounded in time: no connection is started after MAXSEC seconds (default
 * 180; "timed_out":true then), and every socket has SO_RCVTIMEO and
 * SO_SNDTIMEO of SOCKSEC seconds (default 10), set after connect() because
 * proxychains replaces the socket there (its own connect and handshake
 * are bounded by its tcp_connect_time_out and tcp_read_time_out).
 *
 * Build: gcc -O2 -Wall -Wextra -o shortc shortc.c (with common.h beside it)
 */
#define _GNU_SOURCE
#define PROG "shortc"
#include "common.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define PAYLOAD 64

static struct sockaddr_storage target;
static socklen_t target_len;
static long conns;
static double max_time = 180, sock_timeout = 10;
static int64_t start_ns, stop_at_ns;

/* In memory shared by all workers. */
static struct shared {
	atomic_long next_conn;
	atomic_bool timed_out;
} *sh;
static struct errors *worker_errors; /* one per worker, written by it alone */
static int64_t *lat_ns;              /* per connection index; -1: failed or not made */
/* my_errors (common.h): this worker's, one of worker_errors. */

/* one makes one connection; returns its latency, or -1 on error. */
static int64_t one(const char *payload)
{
	int64_t t0;
	int fd;

	fd = socket(target.ss_family, SOCK_STREAM, 0);
	if (fd < 0) {
		sys_error("socket", errno);
		return -1;
	}
	t0 = now_ns();
	if (connect(fd, (struct sockaddr *)&target, target_len) < 0) {
		sys_error("connect", errno);
		goto fail;
	}
	/* After connect: proxychains has put another socket on fd. */
	if (set_timeouts(fd, sock_timeout) < 0 || echo_once(fd, payload, PAYLOAD, "") < 0)
		goto fail;
	t0 = now_ns() - t0;
	close(fd);
	return t0;
fail:
	close(fd);
	return -1;
}

/* worker makes connections until CONNS have been made or time is up. */
static void worker(const char *payload)
{
	long i;

	while ((i = atomic_fetch_add(&sh->next_conn, 1)) < conns) {
		if (now_ns() >= stop_at_ns) {
			atomic_store(&sh->timed_out, true);
			break;
		}
		lat_ns[i] = one(payload);
	}
}

/* shared_alloc maps n bytes of zeroed memory that forked workers share. */
static void *shared_alloc(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("shortc: mmap");
		exit(1);
	}
	return p;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* quantile as socksload computes it: nearest rank, in ms to the µs. */
static double quantile(const int64_t *sorted, long n, double q)
{
	long i = (long)(q * (double)(n - 1) + 0.5);

	return (double)(sorted[i] / 1000) / 1000;
}

static void usage(void)
{
	fprintf(stderr, "usage: shortc [-m MAXSEC] [-t SOCKSEC] TARGET_IP TARGET_PORT CONNS PARALLEL\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static char payload[PAYLOAD];
	struct errors all = {0};
	int64_t *ok_lat;
	long parallel, ok = 0, i, w, started = 0;
	pid_t parent, pid;
	double seconds;
	int c, port, status, failed = 0;

	while ((c = getopt(argc, argv, "m:t:")) != -1) {
		switch (c) {
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
	conns = number(argv[2], 1, 10000000, "CONNS");
	parallel = number(argv[3], 1, 1000, "PARALLEL");
	if (parse_addr(argv[0], port, &target, &target_len) < 0) {
		fprintf(stderr, "shortc: TARGET_IP %s is not an IP address\n", argv[0]);
		return 2;
	}

	signal(SIGPIPE, SIG_IGN);
	for (i = 0; i < PAYLOAD; i++)
		payload[i] = (char)('a' + i % 26);
	sh = shared_alloc(sizeof *sh);
	worker_errors = shared_alloc((size_t)parallel * sizeof *worker_errors);
	lat_ns = shared_alloc((size_t)conns * sizeof *lat_ns);
	ok_lat = malloc((size_t)conns * sizeof *ok_lat);
	if (!ok_lat) {
		fprintf(stderr, "shortc: out of memory\n");
		return 1;
	}
	for (i = 0; i < conns; i++)
		lat_ns[i] = -1;

	fflush(NULL);
	parent = getpid();
	start_ns = now_ns();
	stop_at_ns = start_ns + (int64_t)(max_time * 1e9);
	for (w = 0; w < parallel; w++) {
		pid = fork();
		if (pid < 0) {
			perror("shortc: fork");
			/* Stop the workers already started, then report. */
			atomic_store(&sh->next_conn, conns);
			failed = 1;
			break;
		}
		if (pid == 0) {
			/* A worker must not outlive the parent (timeout(1) kills it). */
			if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
				_exit(1);
			my_errors = &worker_errors[w];
			worker(payload);
			_exit(0);
		}
		started++;
	}
	for (; started > 0; started--) {
		if (wait(&status) < 0) {
			perror("shortc: wait");
			return 1;
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "shortc: a worker failed (status %#x)\n", (unsigned)status);
			failed = 1;
		}
	}
	seconds = (double)(now_ns() - start_ns) / 1e9;
	if (failed)
		return 1;

	for (i = 0; i < conns; i++)
		if (lat_ns[i] >= 0)
			ok_lat[ok++] = lat_ns[i];
	qsort(ok_lat, (size_t)ok, sizeof *ok_lat, cmp_i64);
	for (w = 0; w < parallel; w++) {
		all.n += worker_errors[w].n;
		for (i = 0; i < worker_errors[w].n_samples; i++)
			sample(&all, worker_errors[w].samples[i].msg, worker_errors[w].samples[i].n);
	}

	printf("{\"conns\":%ld,\"done\":%ld,\"ok\":%ld,\"errors\":%ld,\"seconds\":%.6f,\"cps\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f",
	       conns, ok + all.n, ok, all.n, seconds,
	       seconds > 0 ? (double)ok / seconds : 0.0,
	       ok ? quantile(ok_lat, ok, 0.50) : 0.0, ok ? quantile(ok_lat, ok, 0.99) : 0.0);
	print_samples(&all);
	if (atomic_load(&sh->timed_out))
		printf(",\"timed_out\":true");
	printf("}\n");
	free(ok_lat);
	return 0;
}
