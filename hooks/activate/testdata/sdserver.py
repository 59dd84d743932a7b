# A socket-activated server, as sd_listen_fds(3) wants one: it takes the
# sockets in LISTEN_FDS only when LISTEN_PID is its own pid, and serves
# HTTP on every stream socket (one thread each) and echoes on every
# datagram socket. Each HTTP answer is a JSON object saying what the
# server saw: its pid, the socket's name and address, the client's address.
import json, os, socket, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("sdserver: LISTEN_PID=%r is not my pid %d" % (os.environ.get("LISTEN_PID"), os.getpid()))
count = int(os.environ["LISTEN_FDS"])
names = os.environ.get("LISTEN_FDNAMES", "").split(":")


def addr(a):
    return a if isinstance(a, str) else "%s:%d" % (a[0], a[1])


def serve_http(fd, name):
    sock = socket.socket(fileno=fd)

    class Handler(BaseHTTPRequestHandler):
        def setup(self):
            super().setup()
            # SDSERVER_PROXY=1: each connection starts with a PROXY
            # protocol v1 line that names the real client.
            if os.environ.get("SDSERVER_PROXY") == "1":
                f = self.rfile.readline().decode().split()
                if len(f) == 6 and f[0] == "PROXY":
                    self.client_address = (f[2], int(f[4]))
                else:
                    self.client_address = ("no-proxy-header:" + " ".join(f), 0)

        def do_GET(self):
            body = json.dumps({
                "pid": os.getpid(), "name": name, "names": names, "fds": count,
                "sock": addr(self.connection.getsockname()),
                "peer": addr(self.client_address) if self.client_address else "",
                "path": self.path,
            }).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.serve_forever()


def serve_udp(fd, name):
    sock = socket.socket(fileno=fd)
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(("%s %s " % (name, addr(peer))).encode() + data, peer)


threads = []
for i in range(count):
    fd = 3 + i
    probe = socket.socket(fileno=os.dup(fd))
    kind = probe.type
    probe.close()
    target = serve_udp if kind == socket.SOCK_DGRAM else serve_http
    threads.append(threading.Thread(target=target, args=(fd, names[i] if i < len(names) else ""), daemon=True))
for t in threads:
    t.start()
print("sdserver: serving %d sockets" % count, flush=True)
for t in threads:
    t.join()
