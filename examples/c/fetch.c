/*
 * fetch.c — the C API: ask the funnel for a connection of a named
 * template, then talk on it with the program's own poll() loop.
 *
 *   fetch TEMPLATE HOST PORT [MESSAGE]
 *
 * connects to HOST:PORT through TEMPLATE (a profile of `funtun daemon`'s
 * user), sends MESSAGE (default "hello") and a newline, and prints every
 * byte that comes back until the server closes. HOST may be a name only
 * the template knows (a hosts piece): it is resolved inside the funnel.
 *
 * Build:  cc -o fetch fetch.c $(pkg-config --cflags --libs funtun)
 * Run:    funtun daemon &   fetch shout demo.test 8000
 */
#include <funtun.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: fetch TEMPLATE HOST PORT [MESSAGE]\n");
		return 2;
	}
	const char *message = argc == 5 ? argv[4] : "hello";
	int fd = funtun_connect(argv[1], argv[2], argv[3], SOCK_STREAM);
	if (fd < 0) {
		fprintf(stderr, "fetch: %s\n", funtun_strerror(errno));
		return 1;
	}
	char line[1024];
	int n = snprintf(line, sizeof line, "%s\n", message);
	if (n < 0 || (size_t)n >= sizeof line || write(fd, line, (size_t)n) != n) {
		fprintf(stderr, "fetch: write: %s\n", strerror(errno));
		return 1;
	}
	/* An ordinary descriptor: the program's own event loop waits on it. */
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 30000) <= 0) {
			fprintf(stderr, "fetch: no answer within 30 s\n");
			return 1;
		}
		char buf[4096];
		ssize_t got = read(fd, buf, sizeof buf);
		if (got < 0) {
			fprintf(stderr, "fetch: read: %s\n", strerror(errno));
			return 1;
		}
		if (got == 0)
			break;
		fwrite(buf, 1, (size_t)got, stdout);
	}
	close(fd);
	return 0;
}
