/*
 * gai NAME PORT: getaddrinfo, connect, "GET /", the reply on stdout. Built
 * with musl-gcc -static, it is a static program whose resolver sends its
 * query with sendto to the nameserver of /etc/resolv.conf and drops any
 * answer whose source is not that nameserver.
 */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: gai NAME PORT\n");
		return 2;
	}
	struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
	int r = getaddrinfo(argv[1], argv[2], &hints, &res);
	if (r != 0) {
		fprintf(stderr, "gai: %s: %s\n", argv[1], gai_strerror(r));
		return 1;
	}
	int fd = socket(res->ai_family, res->ai_socktype, 0);
	if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
		perror("gai: connect");
		return 1;
	}
	const char *q = "GET / HTTP/1.0\r\nHost: test\r\n\r\n";
	if (write(fd, q, strlen(q)) != (ssize_t)strlen(q)) {
		perror("gai: write");
		return 1;
	}
	char buf[4096];
	size_t have = 0;
	ssize_t n;
	while (have < sizeof buf - 1 && (n = read(fd, buf + have, sizeof buf - 1 - have)) > 0)
		have += (size_t)n;
	buf[have] = 0;
	char *body = strstr(buf, "\r\n\r\n");
	fputs(body ? body + 4 : buf, stdout);
	return 0;
}
