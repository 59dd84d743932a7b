/*
 * httpget.c — an ordinary program that knows nothing of funtun: an
 * HTTP/1.0 GET with getaddrinfo() and connect(), printing the response
 * body. Built in link-in mode it goes through the funnel all the same:
 *
 *   cc -o httpget httpget.c $(pkg-config --cflags --libs funtun-linkin)
 *
 * The program's getaddrinfo() and connect() then reach libfuntun's hooks
 * (GNU ld's --wrap), which ask the per-user daemon, as a preloaded
 * program's would: its programs file (or FUNTUN_TEMPLATE) says the
 * profile.
 *
 *   httpget HOST PORT [PATH]
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: httpget HOST PORT [PATH]\n");
		return 2;
	}
	const char *host = argv[1], *port = argv[2], *path = argc == 4 ? argv[3] : "/";
	struct addrinfo hints, *res, *ai;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int r = getaddrinfo(host, port, &hints, &res);
	if (r != 0) {
		fprintf(stderr, "httpget: %s: %s\n", host, gai_strerror(r));
		return 1;
	}
	int fd = -1, err = 0;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		fprintf(stderr, "httpget: connect to %s port %s: %s\n", host, port, strerror(err));
		return 1;
	}
	char req[1024];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
	if (n < 0 || (size_t)n >= sizeof req || write(fd, req, (size_t)n) != n) {
		fprintf(stderr, "httpget: write: %s\n", strerror(errno));
		return 1;
	}
	/* Print the body: everything after the first blank line. */
	char buf[4096];
	int state = 0; /* how much of "\r\n\r\n" has been seen */
	ssize_t got;
	while ((got = read(fd, buf, sizeof buf)) > 0) {
		for (ssize_t i = 0; i < got; i++) {
			if (state == 4) {
				fwrite(buf + i, 1, (size_t)(got - i), stdout);
				break;
			}
			char want = "\r\n\r\n"[state];
			state = buf[i] == want ? state + 1 : (buf[i] == '\r' ? 1 : 0);
		}
	}
	if (got < 0) {
		fprintf(stderr, "httpget: read: %s\n", strerror(errno));
		return 1;
	}
	close(fd);
	return state == 4 ? 0 : 1;
}
