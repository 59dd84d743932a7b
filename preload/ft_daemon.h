/*
 * ft_daemon.h — inside libfuntun only: the library without the launcher.
 * With no FUNTUN_SOCKET (a global preload, a link-in program, the C API)
 * the library talks to the per-user daemon, which says once per program
 * whether it is to be funnelled at all; a program it leaves alone gets
 * libc's own calls, unchanged.
 */
#ifndef FT_DAEMON_H
#define FT_DAEMON_H

#include <netdb.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "funtun_wire.h"

#ifndef FT_HIDDEN
#define FT_HIDDEN __attribute__((visibility("hidden")))
#endif

/* ft_daemon_mode: no launcher (FUNTUN_SOCKET unset): the control
 * connections go to the daemon and begin with FT_OP_HELLO. */
FT_HIDDEN extern int ft_daemon_mode;

/* ft_daemon_address fills in the daemon's socket: FUNTUN_DAEMON, else
 * $XDG_RUNTIME_DIR/funtun/daemon.sock, else /run/user/UID/funtun/daemon.sock.
 * Called once, from the library's initialisation. */
FT_HIDDEN void ft_daemon_init(void);
FT_HIDDEN socklen_t ft_daemon_address(struct sockaddr_un *addr);

/* ft_hooked: does this program go through the funnel? Always under the
 * launcher. Without it the daemon is asked once, at the first call that
 * needs to know; no daemon, or no entry for the program, means no: every
 * call then goes straight to libc (failing closed would break the whole
 * session under a global preload). FUNTUN_TEMPLATE=NAME asks for that
 * template whatever the programs file says, and then fails closed. */
FT_HIDDEN int ft_hooked(void);

/* ft_daemon_hello sends HELLO on cfd (a connection to the daemon, just
 * made) and reads the answer: 1 = use this connection, 0 = the program is
 * not funnelled (untouched), -errno with why filled in otherwise. The uid
 * of the process on the other end must be ours. template NULL: the
 * program's own (FUNTUN_TEMPLATE, or the daemon's programs file). */
FT_HIDDEN int ft_daemon_hello(int cfd, const char *template, char *why, size_t whylen);
/* ft_daemon_decided records the first HELLO's outcome (1 hooked, 0 not);
 * later ones do not change it. */
FT_HIDDEN void ft_daemon_decided(int hooked);
FT_HIDDEN int ft_daemon_untouched(void);

/* The daemon's reload count (struct ft_gen_page), and the standing
 * permission of the plain-direct fast path: a CONNECT answer grants it
 * only when no reload happened while it was asked, and it lasts only
 * while the count stays where it was. Without a daemon page (under the
 * launcher, which does not reload) the count is always 0. */
FT_HIDDEN uint64_t ft_gen_now(void);
FT_HIDDEN void ft_gen_connect_answered(uint64_t sent, struct ft_resp *resp);
FT_HIDDEN int ft_gen_permits(void);

/* ft_ctl_warm opens a pooled control connection if none is open (which,
 * without the launcher, asks the daemon the HELLO question). */
FT_HIDDEN void ft_ctl_warm(void);

/* ft_call_on: one request and its answer on cfd, a connection of the
 * caller's own (the C API's, per template). 0 or -errno. */
FT_HIDDEN int ft_call_on(int cfd, struct ft_req *req, int fd, struct ft_resp *resp);

/* libc's own name lookups, for programs the funnel leaves alone. */
FT_HIDDEN struct hostent *ft_pass_gethostbyname2(const char *name, int af);
FT_HIDDEN int ft_pass_gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf, size_t buflen,
				       struct hostent **result, int *h_errnop);
FT_HIDDEN struct hostent *ft_pass_gethostbyaddr(const void *addr, socklen_t len, int type);
FT_HIDDEN int ft_pass_gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *ret, char *buf,
				      size_t buflen, struct hostent **result, int *h_errnop);

#endif
