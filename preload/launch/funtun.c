//go:build ignore

/* The line above is for Go: it keeps this directory, whose tests
 * (front_test.go) are Go, from taking this file for cgo source. */

/*
 * funtun.c — the `funtun` users run: a small C front-end to the Go
 * binary (funtun-core), so that launching a program costs about what
 * proxychains4 does rather than a Go runtime's start (issue 16).
 *
 * For `funtun [profile=NAME | chain=CHAIN] [mode=M] [io_uring=allow] [--]
 * PROGRAM …` it
 * asks the per-user daemon (funtun daemon) to prepare the launch, installs
 * what the daemon answers (environment, LD_PRELOAD, a seccomp filter whose
 * listener the daemon takes) and execs PROGRAM itself: the program keeps
 * this process's pid, terminal, process group, signals and exit status.
 * Everything else — every subcommand, every other launcher word, no
 * daemon, a daemon that says so — is handed to funtun-core by execv with
 * the same argv, and the core does exactly what `funtun` always did.
 *
 * The protocol (one SOCK_SEQPACKET connection, one packet each way):
 *
 *   request:  FUNTUN-LAUNCH 1\n program=/abs\n ino=DEV:INO\n
 *             [profile=NAME\n | chain=CHAIN\n] [mode=M\n] [io_uring=allow\n]
 *             [env.KEY=VALUE\n for FUNTUN_PROFILE_PATH, XDG_CONFIG_HOME,
 *              HOME, FUNTUN_PRELOAD when set]
 *   reply:    FUNTUN-LAUNCH 1\n then key=value lines (action=exec|fallback|
 *             exit, code=N, say=TEXT…, preload=PATH, unset=KEY…,
 *             set=KEY=VALUE…, filter=N, listener=0|1), then, after an empty
 *             line, N struct sock_filter in native byte order.
 *   listener: with listener=1, this side writes "listener=FD\n" once the
 *             filter is in, and the daemon answers "ok\n" once it holds a
 *             duplicate of FD (pidfd_getfd).
 *
 * Anything unexpected before something was installed means: hand to the
 * core, which is always correct, only slower. Plain libc only, no locale,
 * no stdio beyond messages on (unbuffered) stderr: every system call here
 * is part of every launch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* Older headers lack these; the values are the kernel's ABI. */
#ifndef SECCOMP_SET_MODE_FILTER
#define SECCOMP_SET_MODE_FILTER 1
#endif
#ifndef SECCOMP_FILTER_FLAG_NEW_LISTENER
#define SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#endif
#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
#ifndef BPF_MAXINSNS
#define BPF_MAXINSNS 4096
#endif

#define PROTO_LINE "FUNTUN-LAUNCH 1"
/* The request must fit one packet the daemon reads whole. */
#define REQUEST_MAX 8192
#define REPLY_MAX 65536
/* A daemon slower than this is treated as absent (before anything was
 * installed) or as failed (after): no launch may hang on it. */
#define DAEMON_TIMEOUT_SEC 3
/* Bounds of the repeated reply lines; a reply beyond them goes to the core. */
#define LINES_MAX 256

/* The subcommands of funtun-core: a first word among these is a command,
 * not a program, and goes to the core. front_test.go compares this list
 * with `funtun-core help`, so a new subcommand cannot silently become a
 * program here. */
static const char *const funtun_commands[] = {
	"6bed4router", "activate", "daemon", "desktop", "doctor", "firewall", "forward",
	"help", "inetd", "pieces", "profiles", "redirect", "socks5d", "version",
};

/* The environment the daemon needs to resolve the profile as the core
 * would for this user, sent only when set (even if empty). */
static const char *const forwarded_env[] = {
	"FUNTUN_PROFILE_PATH", "XDG_CONFIG_HOME", "HOME", "FUNTUN_PRELOAD",
};

static char self_path[PATH_MAX];
static char core_path[PATH_MAX];
static char program_path[PATH_MAX];
static char request[REQUEST_MAX];
/* +1: room for a terminating NUL after the text; MSG_TRUNC tells a longer
 * packet apart. */
static char reply[REPLY_MAX + 1];
static struct sock_filter filter[BPF_MAXINSNS];

struct launch_reply {
	enum { ACT_NONE, ACT_EXEC, ACT_FALLBACK, ACT_EXIT } action;
	int code, has_code;
	const char *preload;
	const char *says[LINES_MAX];
	int nsays;
	const char *unsets[LINES_MAX];
	int nunsets;
	char *sets[LINES_MAX]; /* KEY=VALUE, in the reply buffer */
	int nsets;
	long nfilter; /* -1: no filter= line */
	int listener;
};

static void __attribute__((noreturn, format(printf, 2, 3))) die(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	exit(code);
}

static int is_executable_file(const char *path, struct stat *st)
{
	return stat(path, st) == 0 && S_ISREG(st->st_mode) && faccessat(AT_FDCWD, path, X_OK, AT_EACCESS) == 0;
}

/* find_core fills core_path: $FUNTUN_CORE, else funtun-core beside this
 * binary (the build tree's bin/), else ../lib/funtun/funtun-core (the
 * installed layout, where the core sits beside libfuntun.so and the
 * probes it finds next to itself). */
static void find_core(void)
{
	struct stat st;
	const char *env = getenv("FUNTUN_CORE");
	if (env && *env) {
		if (strlen(env) < sizeof core_path && is_executable_file(env, &st)) {
			strcpy(core_path, env);
			return;
		}
		die(127, "funtun: cannot find funtun-core (looked in %s, from FUNTUN_CORE); reinstall funtun, or set FUNTUN_CORE=/path/to/funtun-core\n", env);
	}
	char beside[PATH_MAX], lib[PATH_MAX];
	const char *slash = strrchr(self_path, '/');
	if (!slash)
		die(127, "funtun: cannot find funtun-core (this program's own path is unknown: /proc/self/exe); set FUNTUN_CORE=/path/to/funtun-core\n");
	int dirlen = (int)(slash - self_path);
	int n1 = snprintf(beside, sizeof beside, "%.*s/funtun-core", dirlen, self_path);
	int n2 = snprintf(lib, sizeof lib, "%.*s/../lib/funtun/funtun-core", dirlen, self_path);
	if (n1 > 0 && (size_t)n1 < sizeof beside && is_executable_file(beside, &st)) {
		strcpy(core_path, beside);
		return;
	}
	if (n2 > 0 && (size_t)n2 < sizeof lib && is_executable_file(lib, &st)) {
		strcpy(core_path, lib);
		return;
	}
	die(127, "funtun: cannot find funtun-core (looked in %s and %s); reinstall funtun, or set FUNTUN_CORE=/path/to/funtun-core\n", beside, lib);
}

/* to_core hands the whole command line to the Go binary, unchanged. */
static void __attribute__((noreturn)) to_core(char **argv)
{
	/* Found only now: a launch the daemon serves never needs the core,
	 * and every system call before the exec is part of every launch. */
	ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
	self_path[n > 0 ? n : 0] = '\0';
	find_core();
	struct stat core_st, self_st;
	/* FUNTUN_CORE naming this front-end would exec itself for ever. */
	if (stat(core_path, &core_st) == 0 && stat("/proc/self/exe", &self_st) == 0 &&
	    core_st.st_dev == self_st.st_dev && core_st.st_ino == self_st.st_ino)
		die(127, "funtun: %s is this front-end, not funtun-core; set FUNTUN_CORE=/path/to/funtun-core\n", core_path);
	/* The core names the front-end (e.g. in desktop entries), not itself:
	 * the front-end is what users run. */
	if (self_path[0])
		setenv("FUNTUN_FRONT", self_path, 1);
	execv(core_path, argv);
	int err = errno;
	fprintf(stderr, "funtun: cannot start funtun-core %s: %s\n", core_path, strerror(err));
	exit(err == ENOENT ? 127 : 126);
}

static int is_command(const char *word)
{
	for (size_t i = 0; i < sizeof funtun_commands / sizeof funtun_commands[0]; i++)
		if (strcmp(word, funtun_commands[i]) == 0)
			return 1;
	return 0;
}

static int valid_profile_name(const char *s)
{
	if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
		return 0;
	for (s++; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
		      *s == '.' || *s == '_' || *s == '-'))
			return 0;
	return 1;
}

struct launch_words {
	const char *profile, *chain, *mode;
	int io_uring_allow;
	int program; /* index in argv; 0 = none */
};

/* parse_words reads the launcher's words before the program; 0 means the
 * command line is not one the fast path covers. Any word it does not know
 * (guard=, global options, --allow-…) is the core's: the core
 * checks and explains them, and this list stays short. */
static int parse_words(int argc, char **argv, struct launch_words *w)
{
	memset(w, 0, sizeof *w);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0) {
			if (i + 1 >= argc)
				return 0;
			w->program = i + 1;
			return 1;
		}
		if (strncmp(a, "profile=", 8) == 0) {
			if (w->profile || w->chain || !valid_profile_name(a + 8))
				return 0;
			w->profile = a + 8;
		} else if (strncmp(a, "chain=", 6) == 0) {
			/* The daemon compiles it (and says what is wrong with it). */
			if (w->profile || w->chain || !a[6])
				return 0;
			w->chain = a + 6;
		} else if (strncmp(a, "mode=", 5) == 0) {
			const char *m = a + 5;
			if (w->mode || !(strcmp(m, "auto") == 0 || strcmp(m, "preload") == 0 || strcmp(m, "seccomp") == 0))
				return 0;
			w->mode = m;
		} else if (strcmp(a, "io_uring=allow") == 0) {
			if (w->io_uring_allow)
				return 0;
			w->io_uring_allow = 1;
		} else if (a[0] == '-' || strchr(a, '=')) {
			return 0;
		} else {
			/* Without --, a subcommand's name is the subcommand. */
			if (is_command(a))
				return 0;
			w->program = i;
			return 1;
		}
	}
	return 0;
}

/* ptrace_restricted: under Yama 1+ the daemon, which is not the program's
 * ancestor, could not take the program's sockets (pidfd_getfd is a ptrace
 * check): such launches stay with the core, whose supervisor is the
 * parent. Only the library's mode=preload needs no such access. */
static int ptrace_restricted(void)
{
	int fd = open("/proc/sys/kernel/yama/ptrace_scope", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno != ENOENT;
	char c = 0;
	ssize_t n = read(fd, &c, 1);
	close(fd);
	return n != 1 || c != '0';
}

/* resolve_program finds PROGRAM as the core does (Go's exec.LookPath), so
 * that a launch ends the same whether a daemon runs or not: a name with a
 * '/' is taken as it is; any other is searched in $PATH, where files that
 * are not executable are passed over and the first executable one must
 * not be relative (Go's ErrDot: "." or an empty entry does not run
 * programs from the current directory). It fills program_path with an
 * absolute path and st with its stat, and exits 127/126 with the core's
 * own messages when there is nothing to run. */
static void resolve_program(const char *name, struct stat *st)
{
	char found[PATH_MAX];
	if (strchr(name, '/')) {
		int found_it = stat(name, st) == 0;
		if (!found_it && errno == EACCES)
			die(126, "funtun: %s: permission denied\n", name);
		if (!found_it || S_ISDIR(st->st_mode) || strlen(name) >= sizeof found)
			die(127, "funtun: %s: command not found\n", name);
		if (faccessat(AT_FDCWD, name, X_OK, AT_EACCESS) != 0)
			die(126, "funtun: %s: permission denied\n", name);
		strcpy(found, name);
	} else {
		const char *p = getenv("PATH");
		/* Unset or empty, Go's PATH has no directory at all. */
		if (!p || !*p)
			die(127, "funtun: %s: command not found\n", name);
		int ok = 0;
		size_t namelen = strlen(name);
		for (;;) {
			const char *end = strchrnul(p, ':');
			size_t dirlen = (size_t)(end - p);
			/* An empty element is the current directory. */
			const char *dir = dirlen ? p : ".";
			if (!dirlen)
				dirlen = 1;
			if (dirlen + 1 + namelen < sizeof found) {
				memcpy(found, dir, dirlen);
				found[dirlen] = '/';
				memcpy(found + dirlen + 1, name, namelen + 1);
				if (stat(found, st) == 0 && !S_ISDIR(st->st_mode) && faccessat(AT_FDCWD, found, X_OK, AT_EACCESS) == 0) {
					if (found[0] != '/')
						die(127, "funtun: %s: command not found\n", name);
					ok = 1;
					break;
				}
			}
			if (!*end)
				break;
			p = end + 1;
		}
		if (!ok)
			die(127, "funtun: %s: command not found\n", name);
	}
	const char *rel = found;
	while (rel[0] == '.' && rel[1] == '/')
		for (rel += 2; *rel == '/'; rel++)
			;
	if (rel[0] == '/') {
		strcpy(program_path, rel);
		return;
	}
	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof cwd) ||
	    (size_t)snprintf(program_path, sizeof program_path, "%s/%s", strcmp(cwd, "/") ? cwd : "", rel) >= sizeof program_path)
		program_path[0] = '\0';
}

/* Appends "KEY=VALUE\n" to the request; 0 when it does not fit or VALUE
 * holds a newline, which the line protocol cannot carry. */
static int add_line(size_t *len, const char *key, const char *value)
{
	if (strchr(value, '\n'))
		return 0;
	int n = snprintf(request + *len, sizeof request - *len, "%s=%s\n", key, value);
	if (n < 0 || (size_t)n >= sizeof request - *len)
		return 0;
	*len += (size_t)n;
	return 1;
}

static size_t build_request(const struct launch_words *w, const struct stat *st)
{
	size_t len = 0;
	char ino[64], key[64];
	snprintf(ino, sizeof ino, "%llu:%llu", (unsigned long long)st->st_dev, (unsigned long long)st->st_ino);
	memcpy(request, PROTO_LINE "\n", sizeof PROTO_LINE);
	len = sizeof PROTO_LINE;
	if (!add_line(&len, "program", program_path) || !add_line(&len, "ino", ino))
		return 0;
	if (w->profile && !add_line(&len, "profile", w->profile))
		return 0;
	if (w->chain && !add_line(&len, "chain", w->chain))
		return 0;
	if (w->mode && !add_line(&len, "mode", w->mode))
		return 0;
	if (w->io_uring_allow && !add_line(&len, "io_uring", "allow"))
		return 0;
	for (size_t i = 0; i < sizeof forwarded_env / sizeof forwarded_env[0]; i++) {
		const char *v = getenv(forwarded_env[i]);
		if (!v)
			continue;
		snprintf(key, sizeof key, "env.%s", forwarded_env[i]);
		if (!add_line(&len, key, v))
			return 0;
	}
	return len;
}

/* connect_daemon: the daemon's socket as preload/daemon.c finds it, or -1
 * (no daemon is the normal case, said nowhere). */
static int connect_daemon(void)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	char path[sizeof addr.sun_path + 64];
	const char *p = getenv("FUNTUN_DAEMON");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	if (p && *p)
		snprintf(path, sizeof path, "%s", p);
	else if (xdg && *xdg == '/')
		snprintf(path, sizeof path, "%s/funtun/daemon.sock", xdg);
	else
		snprintf(path, sizeof path, "/run/user/%u/funtun/daemon.sock", (unsigned)geteuid());
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof addr.sun_path)
		return -1;
	memcpy(addr.sun_path, path, n);
	int abstract = path[0] == '@';
	if (abstract)
		addr.sun_path[0] = '\0';
	socklen_t addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + !abstract);

	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd >= 0 && fd <= 2) {
		/* Started with stdin, stdout or stderr closed: our messages on
		 * stderr must not become packets to the daemon. */
		int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		close(fd);
		fd = moved;
	}
	if (fd < 0)
		return -1;
	/* Set before connect: a daemon whose backlog is full blocks connect
	 * too, and SO_SNDTIMEO bounds that on AF_UNIX. */
	struct timeval tv = {.tv_sec = DAEMON_TIMEOUT_SEC};
	struct ucred cred;
	socklen_t credlen = sizeof cred;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
	    connect(fd, (struct sockaddr *)&addr, addrlen) != 0 ||
	    /* Only our own daemon may decide what this process installs: an
	     * abstract name, or a stale path, can be anyone's. */
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) != 0 || cred.uid != geteuid()) {
		close(fd);
		return -1;
	}
	return fd;
}

static int parse_int(const char *s, long lo, long hi, long *out)
{
	char *end;
	if (!*s || *s == '+' || *s == '-' || *s == ' ')
		return 0;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return 0;
	*out = v;
	return 1;
}

/* parse_reply splits the reply in place; 0 when it is not one this
 * front-end fully understands (unknown keys included: a daemon newer than
 * this front-end may ask for something it cannot do, and the core can). */
static int parse_reply(char *buf, size_t len, struct launch_reply *r)
{
	memset(r, 0, sizeof *r);
	r->nfilter = -1;
	char *p = buf, *end = buf + len;
	char *nl = memchr(p, '\n', len);
	size_t first = nl ? (size_t)(nl - p) : len;
	if (first != strlen(PROTO_LINE) || memcmp(p, PROTO_LINE, first) != 0)
		return 0;
	p = nl ? nl + 1 : end;
	char *binary = end;
	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		char *eol = nl ? nl : end;
		if (eol == p) { /* the empty line: what follows is the filter */
			binary = p + 1;
			break;
		}
		if (memchr(p, '\0', (size_t)(eol - p)))
			return 0;
		*eol = '\0';
		char *eq = strchr(p, '=');
		if (!eq)
			return 0;
		*eq = '\0';
		const char *key = p;
		char *val = eq + 1;
		long v;
		if (strcmp(key, "action") == 0) {
			if (r->action != ACT_NONE)
				return 0;
			if (strcmp(val, "exec") == 0)
				r->action = ACT_EXEC;
			else if (strcmp(val, "fallback") == 0)
				r->action = ACT_FALLBACK;
			else if (strcmp(val, "exit") == 0)
				r->action = ACT_EXIT;
			else
				return 0;
		} else if (strcmp(key, "code") == 0) {
			if (r->has_code || !parse_int(val, 0, 255, &v))
				return 0;
			r->code = (int)v, r->has_code = 1;
		} else if (strcmp(key, "say") == 0) {
			if (r->nsays == LINES_MAX)
				return 0;
			r->says[r->nsays++] = val;
		} else if (strcmp(key, "preload") == 0) {
			if (r->preload || !*val)
				return 0;
			r->preload = val;
		} else if (strcmp(key, "unset") == 0) {
			if (r->nunsets == LINES_MAX || !*val || strchr(val, '='))
				return 0;
			r->unsets[r->nunsets++] = val;
		} else if (strcmp(key, "set") == 0) {
			if (r->nsets == LINES_MAX || val[0] == '=' || !strchr(val, '='))
				return 0;
			r->sets[r->nsets++] = val;
		} else if (strcmp(key, "filter") == 0) {
			if (r->nfilter >= 0 || !parse_int(val, 1, BPF_MAXINSNS, &v))
				return 0;
			r->nfilter = v;
		} else if (strcmp(key, "listener") == 0) {
			if (strcmp(val, "0") && strcmp(val, "1"))
				return 0;
			r->listener = val[0] == '1';
		} else {
			return 0;
		}
		p = eol + 1;
	}
	size_t nbinary = binary < end ? (size_t)(end - binary) : 0;
	if (r->action == ACT_NONE || (r->action == ACT_EXIT && !r->has_code))
		return 0;
	if (r->nfilter < 0) {
		if (nbinary || r->listener)
			return 0;
		return 1;
	}
	if (nbinary != (size_t)r->nfilter * sizeof(struct sock_filter))
		return 0;
	memcpy(filter, binary, nbinary);
	return 1;
}

/* install_filter puts the daemon's filter on this process (and so on the
 * program it becomes); 0 when nothing was installed. With listener=1,
 * *listener is the filter's listener fd. */
static int install_filter(const struct launch_reply *r, int *listener)
{
	struct sock_fprog prog = {.len = (unsigned short)r->nfilter, .filter = filter};
	/* An unprivileged filter needs no_new_privs; it stays set even if the
	 * filter is refused (the core's own filters set it too). */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return 0;
	unsigned long flags = r->listener ? SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV : 0;
	long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
	if (fd < 0 && errno == EINVAL && r->listener) {
		/* Before Linux 5.19: the listener without the killable wait. */
		flags &= ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
		fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
	}
	if (fd < 0)
		return 0;
	*listener = (int)fd;
	return 1;
}

/* hand_listener gives the daemon the filter's listener. The filter is in
 * and cannot be removed, and it traps this process's socket calls
 * (sendmsg, recv…) for a supervisor that does not have the listener yet:
 * only write() and read() here. Failing, the program must not run. */
static void hand_listener(int sock, int listener)
{
	char msg[64], answer[256];
	int n = snprintf(msg, sizeof msg, "listener=%d\n", listener);
	if (write(sock, msg, (size_t)n) != n)
		die(126, "funtun: the daemon did not take the seccomp listener: %s\n", strerror(errno));
	ssize_t got = read(sock, answer, sizeof answer - 1);
	if (got == 2 && memcmp(answer, "ok", 2) == 0)
		got = 3, answer[2] = '\n';
	if (got == 3 && memcmp(answer, "ok\n", 3) == 0) {
		close(listener);
		return;
	}
	if (got < 0)
		die(126, "funtun: the daemon did not take the seccomp listener: %s\n",
		    errno == EAGAIN ? "no answer in time" : strerror(errno));
	if (got == 0)
		die(126, "funtun: the daemon did not take the seccomp listener: it closed the connection\n");
	answer[got] = '\0';
	answer[strcspn(answer, "\n")] = '\0';
	die(126, "funtun: the daemon did not take the seccomp listener: %s\n", answer);
}

/* has_key: does the environment entry kv ("KEY=VALUE") have the key
 * that key (either "KEY" or "KEY=VALUE") has? */
static int has_key(const char *kv, const char *key)
{
	size_t n = strcspn(key, "=");
	return strncmp(kv, key, n) == 0 && kv[n] == '=';
}

/* The program's environment, built here rather than by setenv: setenv
 * allocates, and a static program's first allocation maps its heap, which
 * costs a launch as much as a round trip to the daemon. */
#define ENV_MAX 8192
static char *program_env[ENV_MAX];
static char preload_entry[sizeof "LD_PRELOAD=" + REPLY_MAX + PATH_MAX];

/* program_environ applies the daemon's unset=, set= and preload= to this
 * process's environment; NULL when it has more entries than fit. */
static char **program_environ(const struct launch_reply *r)
{
	extern char **environ;
	const char *old = NULL;
	int n = 0;
	for (char **e = environ; *e; e++) {
		int drop = 0;
		for (int i = 0; i < r->nunsets && !drop; i++)
			drop = has_key(*e, r->unsets[i]);
		for (int i = 0; i < r->nsets && !drop; i++)
			drop = has_key(*e, r->sets[i]);
		if (r->preload && has_key(*e, "LD_PRELOAD")) {
			/* The value after the daemon's own changes: unset= or set=
			 * of LD_PRELOAD replace the user's. */
			if (!drop && !old)
				old = *e + sizeof "LD_PRELOAD=" - 1;
			drop = 1;
		}
		if (drop)
			continue;
		if (n >= ENV_MAX - LINES_MAX - 2)
			return NULL;
		program_env[n++] = *e;
	}
	for (int i = 0; i < r->nsets; i++) {
		if (r->preload && has_key(r->sets[i], "LD_PRELOAD")) {
			old = r->sets[i] + sizeof "LD_PRELOAD=" - 1;
			continue;
		}
		program_env[n++] = (char *)r->sets[i];
	}
	if (r->preload) {
		/* The user's libraries first, ours last, as funtun-core does. */
		if (!old)
			old = "";
		while (*old == ' ' || *old == '\t' || *old == ':')
			old++;
		size_t oldlen = strlen(old);
		while (oldlen && (old[oldlen - 1] == ' ' || old[oldlen - 1] == '\t' || old[oldlen - 1] == ':'))
			oldlen--;
		if (oldlen + 1 + strlen(r->preload) + sizeof "LD_PRELOAD=" >= sizeof preload_entry)
			oldlen = 0;
		snprintf(preload_entry, sizeof preload_entry, "LD_PRELOAD=%.*s%s%s", (int)oldlen, old, oldlen ? " " : "", r->preload);
		program_env[n++] = preload_entry;
	}
	program_env[n] = NULL;
	return program_env;
}

int main(int argc, char **argv)
{
	struct launch_words w;
	const char *no_daemon = getenv("FUNTUN_NO_DAEMON");
	/* LISTEN_FDS: sockets from a service manager, which the core feeds. */
	if (!parse_words(argc, argv, &w) || (no_daemon && *no_daemon) || getenv("LISTEN_FDS"))
		to_core(argv);
	if (!(w.mode && strcmp(w.mode, "preload") == 0) && ptrace_restricted())
		to_core(argv);

	struct stat st;
	resolve_program(argv[w.program], &st);
	if (!program_path[0])
		to_core(argv);
	size_t reqlen = build_request(&w, &st);
	if (!reqlen)
		to_core(argv);

	int sock = connect_daemon();
	if (sock < 0)
		to_core(argv);
	if (send(sock, request, reqlen, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)reqlen)
		to_core(argv);
	ssize_t got = recv(sock, reply, REPLY_MAX, MSG_TRUNC);
	struct launch_reply r;
	if (got <= 0 || got > REPLY_MAX || !parse_reply(reply, (size_t)got, &r))
		to_core(argv);

	for (int i = 0; i < r.nsays; i++)
		fprintf(stderr, "%s\n", r.says[i]);
	if (r.action == ACT_FALLBACK)
		to_core(argv);
	if (r.action == ACT_EXIT)
		exit(r.code);

	if (r.nfilter > 0) {
		int listener = -1;
		if (!install_filter(&r, &listener))
			to_core(argv);
		if (r.listener)
			hand_listener(sock, listener);
	}
	close(sock);
	char **env = program_environ(&r);
	if (!env)
		die(126, "funtun: the environment has more than %d entries\n", ENV_MAX - LINES_MAX - 2);
	execve(program_path, argv + w.program, env);
	int err = errno;
	fprintf(stderr, "funtun: cannot start %s: %s\n", program_path, strerror(err));
	return err == ENOENT ? 127 : 126;
}
