#!/usr/bin/env python3
"""Peers for the redirect tests, run inside the test's network namespaces.

tcp-server ADDR PORT   accept connections; for each, read one line, print
                       "got LINE from PEER" and answer "reply:LINE".
dns-server ADDR PORT   answer every DNS query with an A record 192.0.2.7
                       and print "query NAME from PEER".
"""
import socket
import struct
import sys


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def unmap(host):
    """An IPv4 peer of a [::] socket, as IPv4."""
    return host[7:] if host.startswith("::ffff:") else host


def tcp_server(addr, port):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    print("listening", flush=True)
    while True:
        c, peer = s.accept()
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        line = data.decode(errors="replace").strip()
        print("got %s from %s" % (line, unmap(peer[0])), flush=True)
        c.sendall(b"reply:" + line.encode() + b"\n")
        c.close()


def dns_server(addr, port):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    s.bind((addr, port))
    print("listening", flush=True)
    while True:
        q, peer = s.recvfrom(4096)
        if len(q) < 12:
            continue
        qid, _, qd = struct.unpack("!HHH", q[:6])
        i, labels = 12, []
        while i < len(q) and q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode())
            i += 1 + q[i]
        question = q[12:i + 5]
        print("query %s from %s" % (".".join(labels), unmap(peer[0])), flush=True)
        header = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 7])
        s.sendto(header + question + answer, peer)


if __name__ == "__main__":
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"tcp-server": tcp_server, "dns-server": dns_server}[mode](addr, port)
