/*
 * ft_linkin.h — link-in mode. The library's hook code is compiled a second
 * time with this header forced in first (cc -include preload/ft_linkin.h),
 * which renames every call it overrides to the name GNU ld's --wrap gives
 * it: a program linked with libfuntun-api and
 * -Wl,--wrap=connect,--wrap=getaddrinfo,… (pkg-config --libs funtun-linkin)
 * then reaches the hooks from its own socket calls, with no LD_PRELOAD.
 * The same source serves both builds; nothing is copied. The renaming
 * reaches the hooks' definitions, their declarations in the system headers
 * and the members of struct ft_real alike, so the code reads the same;
 * the real functions are still found by name with dlsym(RTLD_NEXT), which
 * from the program's own image is the C library's.
 *
 * FT_WRAPPED lists the names, for the Makefile and funtun-linkin.pc.
 */
#ifndef FT_LINKIN_H
#define FT_LINKIN_H

#define FT_LINKIN 1

#define __res_nquery __wrap___res_nquery
#define __res_nquerydomain __wrap___res_nquerydomain
#define __res_nsearch __wrap___res_nsearch
#define __res_query __wrap___res_query
#define __res_querydomain __wrap___res_querydomain
#define __res_search __wrap___res_search
#define accept __wrap_accept
#define accept4 __wrap_accept4
#define bind __wrap_bind
#define close __wrap_close
#define connect __wrap_connect
#define dup __wrap_dup
#define dup2 __wrap_dup2
#define dup3 __wrap_dup3
#define fcntl __wrap_fcntl
#define fcntl64 __wrap_fcntl64
#define gai_cancel __wrap_gai_cancel
#define gai_error __wrap_gai_error
#define gai_suspend __wrap_gai_suspend
#define getaddrinfo __wrap_getaddrinfo
#define getaddrinfo_a __wrap_getaddrinfo_a
#define gethostbyaddr __wrap_gethostbyaddr
#define gethostbyaddr_r __wrap_gethostbyaddr_r
#define gethostbyname __wrap_gethostbyname
#define gethostbyname2 __wrap_gethostbyname2
#define gethostbyname2_r __wrap_gethostbyname2_r
#define gethostbyname_r __wrap_gethostbyname_r
#define getnameinfo __wrap_getnameinfo
#define getpeername __wrap_getpeername
#define getsockname __wrap_getsockname
#define listen __wrap_listen
#define recvfrom __wrap_recvfrom
#define recvmmsg __wrap_recvmmsg
#define recvmsg __wrap_recvmsg
#define res_nquery __wrap_res_nquery
#define res_nquerydomain __wrap_res_nquerydomain
#define res_nsearch __wrap_res_nsearch
#define res_query __wrap_res_query
#define res_querydomain __wrap_res_querydomain
#define res_search __wrap_res_search
#define sendmmsg __wrap_sendmmsg
#define sendmsg __wrap_sendmsg
#define sendto __wrap_sendto
#define socket __wrap_socket

#endif
