/*
 * serve.c — the C API on the listening side: a one-line echo server whose
 * incoming connections pass through a template's pieces before accept()
 * returns them.
 *
 *   serve TEMPLATE PORT [COUNT]
 *
 * listens on 127.0.0.1:PORT through TEMPLATE, prints "listening" when it
 * does, and answers COUNT connections (default 1): each gets back
 * "you said: LINE" for the first line it sends.
 */
#include <funtun.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: serve TEMPLATE PORT [COUNT]\n");
		return 2;
	}
	int count = argc == 4 ? atoi(argv[3]) : 1;
	int l = funtun_listen(argv[1], "127.0.0.1", argv[2], 16);
	if (l < 0) {
		fprintf(stderr, "serve: %s\n", funtun_strerror(errno));
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	for (int i = 0; i < count; i++) {
		int c = accept(l, NULL, NULL);
		if (c < 0) {
			fprintf(stderr, "serve: accept: %s\n", strerror(errno));
			return 1;
		}
		char line[1024];
		size_t n = 0;
		while (n < sizeof line - 1) {
			ssize_t got = read(c, line + n, 1);
			if (got <= 0 || line[n] == '\n')
				break;
			n++;
		}
		line[n] = '\0';
		char out[1100];
		int m = snprintf(out, sizeof out, "you said: %s\n", line);
		if (write(c, out, (size_t)m) != m)
			fprintf(stderr, "serve: write: %s\n", strerror(errno));
		close(c);
	}
	close(l);
	return 0;
}
