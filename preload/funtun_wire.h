/*
 * funtun_wire.h — the control protocol between libfuntun.so (in a hooked
 * program) and the funnel (in the launcher, or the per-user daemon). Its Go
 * mirror is hooks/preload/wire.go; change both together and bump
 * FT_WIRE_VERSION.
 *
 * Transport: a Unix SOCK_SEQPACKET socket whose path the launcher puts in
 * FUNTUN_SOCKET, or the per-user daemon's socket
 * ($XDG_RUNTIME_DIR/funtun/daemon.sock, FUNTUN_DAEMON), where every
 * connection begins with FT_OP_HELLO. Each message is one packet, so no
 * framing is needed. The
 * library sends one struct ft_req and reads one struct ft_resp back on the
 * same connection; a connection carries one request at a time. Requests
 * that act on a socket of the program (CONNECT, BIND, LISTEN, UDP_ASSOC)
 * carry that socket as SCM_RIGHTS: the funnel works on the program's own
 * kernel socket, so poll/epoll/SO_ERROR stay native.
 *
 * Integers are in host byte order (both ends run on the same machine);
 * addresses are raw struct sockaddr_in / sockaddr_in6 bytes as the kernel
 * takes them (port and address in network order).
 */
#ifndef FUNTUN_WIRE_H
#define FUNTUN_WIRE_H

#include <stdint.h>

#define FT_WIRE_VERSION 4
#define FT_NAME_MAX 256  /* host names, NUL included */
#define FT_ADDR_MAX 28   /* sizeof(struct sockaddr_in6) */

/* Synthetic addresses: the funnel hands them out for names and maps them
 * back when the program connects to one. 198.18.0.0/15 is the RFC 2544
 * benchmarking range; the IPv6 range is unicast ULA (never multicast, which
 * breaks programs). The same index is used in both: the low 17 bits. */
#define FT_SYNTH4_NET 0xC6120000u /* 198.18.0.0, host order */
#define FT_SYNTH4_MASK 0xFFFE0000u /* /15 */
#define FT_SYNTH6_PREFIX {0xfd, 0xff, 0x00, 0xf7, 0, 0, 0, 0, 0, 0, 0, 0} /* fdff:f7::/96 */

enum ft_op {
	/* fd attached. addr = destination, arg = SOCK_STREAM or SOCK_DGRAM.
	 * The funnel connects the fd (to the destination itself, or to its own
	 * loopback relay when pieces act) and answers err = 0, EINPROGRESS
	 * (non-blocking socket) or the errno connect() must fail with. flags:
	 * FT_CONNECT_PLAIN_DIRECT when the profile in force is exactly `direct`
	 * with no parameters: for up to a second the library may then connect
	 * literal (non-synthetic) addresses itself, with no round trip — but
	 * under the daemon only while its reload count (struct ft_gen_page)
	 * has not moved since the request was sent;
	 * FT_CONNECT_LOG_FAST when the funnel logs successful flows too (debug
	 * logging): the library then reports the connects it makes itself
	 * (FT_OP_CONNECTED_FAST). */
	FT_OP_CONNECT = 1,
	/* name = host name, arg = AF_INET or AF_INET6. Answer: addr = a
	 * synthetic sockaddr of that family (port 0) that maps to the name;
	 * err = 0 or an EAI_* code. */
	FT_OP_RESOLVE = 2,
	/* addr = a synthetic address. Answer: name, or err = EAI_NONAME. */
	FT_OP_REVERSE = 3,
	/* (4 is not used.) */
	/* fd attached: the program's socket, bound (or not) and about to
	 * listen; arg = backlog; addr = the address of a loopback listener the
	 * library made to stand in for it (its "hidden" listener). Answer: flags
	 * FT_LISTEN_NATIVE (incoming flows need no pieces: listen yourself) or
	 * FT_LISTEN_TAKEN (the funnel now listens on the program's socket and
	 * relays each connection, through the pieces, to the hidden listener,
	 * which the library puts in the socket's place), addr2 = the public
	 * address for getsockname. */
	FT_OP_LISTEN = 5,
	/* addr = the peer of a connection accept() gave on a hidden port (a
	 * loopback socket of the funnel). Answer: addr = the real client,
	 * addr2 = the public local address it reached. */
	FT_OP_ACCEPTED = 6,
	/* fd attached (a UDP socket), addr = where the program sends a
	 * datagram with sendto/sendmsg. Answer: addr = where to send it
	 * instead: the destination itself (a synthetic address resolved) when
	 * no piece touches datagrams, else a loopback relay of the funnel for
	 * this socket and destination. Datagrams that come back from there are
	 * reported as coming from the destination. */
	FT_OP_UDP_ASSOC = 7,
	/* (8 is not used.) */
	/* No fd: the program closed a hidden listener (addr = its address),
	 * or a bind() failed with EADDRINUSE (addr = the address asked for,
	 * arg = 1). The funnel stops listening on a public address once no
	 * socket listens on its hidden one any more (a forked child may, and
	 * a child that exits closes its copy unseen). Answer: err = 0 when a
	 * public address was given up, ENOENT when none was. */
	FT_OP_UNLISTEN = 9,
	/* One-way: no fd, and the funnel sends NO answer. A connect() the
	 * library made itself on the plain-direct fast path failed: addr = the
	 * destination, arg = SOCK_STREAM or SOCK_DGRAM, flags = the errno. The
	 * funnel logs it as a failed flow. */
	FT_OP_CONNECT_FAILED = 10,
	/* One-way, like CONNECT_FAILED: a connect() the library made itself
	 * on the plain-direct fast path started (EINPROGRESS) or succeeded:
	 * addr = the destination, arg = SOCK_STREAM or SOCK_DGRAM. Sent only
	 * while the last CONNECT answer had FT_CONNECT_LOG_FAST. The funnel
	 * logs it as a flow the library connected itself (no byte counts: the
	 * bytes never pass the funnel). */
	FT_OP_CONNECTED_FAST = 11,
	/* One-way: the library refused a socket that nothing in the funnel
	 * carries — raw IP, packet (AF_PACKET, SOCK_PACKET, AF_XDP), ICMP echo
	 * ("ping") sockets — with EACCES, because the launcher was not given
	 * --allow-raw. arg = the family, flags = the type | protocol << 16,
	 * name = the call refused ("socket", "connect", "sendto", "sendmsg",
	 * "sendmmsg", "bind"), addr = its address, if it had an inet one. For
	 * the funnel's log only. */
	FT_OP_REFUSED = 12,
	/* No fd: at the program's start, for each of its LISTEN_FDS when the
	 * launcher was itself socket-activated and feeds those sockets
	 * (FUNTUN_LISTEN_FED=1): addr = the listener's address. Answer, when
	 * the funnel feeds it as a hidden listener (as after LISTEN with
	 * FT_LISTEN_TAKEN): addr2 = the public address for getsockname; else
	 * err = ENOENT. */
	FT_OP_FED = 13,
	/* The first request on a connection to the per-user daemon (never sent
	 * to the launcher): it says which funnel the connection's requests go
	 * to. name = the template (a profile name, or "chain=…") when arg has
	 * FT_HELLO_TEMPLATE (the C API, FUNTUN_TEMPLATE); else "" and the
	 * daemon picks the profile by the program (its programs file). Answer:
	 * err = 0, with a descriptor attached (SCM_RIGHTS): a read-only page
	 * whose first 8 bytes (struct ft_gen_page) count the daemon's reloads,
	 * and name = the template it chose ("profile=NAME", "chain=…"; empty
	 * when it does not fit), which the library names in the HELLOs of its
	 * later connections, so that a program keeps one funnel — and the
	 * synthetic addresses it was given — for life, whatever later edits
	 * of the programs file say; flags FT_HELLO_UNTOUCHED: no entry for this program, leave it alone
	 * (every call goes straight to libc) — the daemon then hangs up;
	 * err = ENOENT: no such template; EPROTO: another protocol version. On
	 * an error name holds a sentence that says why. */
	FT_OP_HELLO = 14,
	/* fd attached: a UDP socket the program just bound to all of its
	 * host's addresses on a port of its choosing (not 0); addr = the
	 * address it bound. Answer: flags FT_UDP_LISTENED when the profile
	 * receives datagrams for it elsewhere too (a user-space stack on its
	 * tunnel address): they then come to the socket from loopback relays
	 * of the funnel, one per peer, which UDP_PEER names. Else flags 0. A
	 * funnel of an older library answers ENOSYS: the socket then receives
	 * natively only. */
	FT_OP_UDP_BIND = 15,
	/* addr = where a datagram on a socket that UDP_BIND marked came from
	 * (a loopback address the library does not know). Answer: addr = the
	 * peer the funnel relays for from there, as the socket's family says
	 * it, or err = ENOENT when it is no relay of the funnel's. */
	FT_OP_UDP_PEER = 16,
};

enum ft_udp_bind_flags {
	FT_UDP_LISTENED = 1,
};

enum ft_hello_flags {
	FT_HELLO_TEMPLATE = 1,  /* request arg: name is a template */
	FT_HELLO_UNTOUCHED = 1, /* response flags: not this program */
};

/* The page FT_OP_HELLO hands over. generation starts at 1 and grows by
 * one after every reload of the daemon's profiles, once the new ones are
 * in force: a
 * permission a CONNECT answer gave (FT_CONNECT_PLAIN_DIRECT) holds only
 * while generation is what it was before that CONNECT was sent. */
struct ft_gen_page {
	uint64_t generation;
};
#define FT_GEN_PAGE_SIZE 4096

enum ft_connect_flags {
	FT_CONNECT_PLAIN_DIRECT = 1,
	FT_CONNECT_LOG_FAST = 2,
};

enum ft_listen_flags {
	FT_LISTEN_NATIVE = 1,
	FT_LISTEN_TAKEN = 2,
};

struct ft_req {
	uint32_t version;        /* FT_WIRE_VERSION */
	uint32_t op;             /* enum ft_op */
	int32_t arg;             /* per op */
	uint32_t flags;          /* per op, else 0 */
	uint32_t addrlen;        /* bytes used in addr */
	uint8_t addr[FT_ADDR_MAX];
	char name[FT_NAME_MAX];  /* NUL-terminated */
};

struct ft_resp {
	int32_t err;             /* errno (or EAI_* for RESOLVE/REVERSE), 0 = ok */
	uint32_t flags;          /* per op */
	uint32_t addrlen;
	uint8_t addr[FT_ADDR_MAX];
	uint32_t addr2len;
	uint8_t addr2[FT_ADDR_MAX];
	char name[FT_NAME_MAX];
};

/* The Go side checks these sizes and offsets (wire_test.go). */
#define FT_REQ_SIZE 304
#define FT_RESP_SIZE 328

#endif
