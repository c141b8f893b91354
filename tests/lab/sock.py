"""Run inside a Mininet host: tiny TCP/UDP echo server and client.

    python sock.py serve tcp|udp PORT SECONDS      echo everything back until SECONDS pass
    python sock.py send tcp|udp IP PORT MESSAGE    prints 'reply:<echo>' or 'fail:<reason>'
    python sock.py stream IP PORT SECONDS           one TCP connection, a message every 20 ms
                                                    both ways; prints 'ok=N late=M broken=0|1'
"""

import socket
import sys
import threading
import time


def _listener(kind: int, port: int) -> socket.socket:
    """IPv4 and IPv6 on one socket where the host has IPv6, else IPv4 alone."""
    try:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        return s
    except OSError:
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        return s


def serve(proto: str, port: int, seconds: float) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = _listener(kind, port)
    s.settimeout(0.2)
    end = time.monotonic() + seconds
    if proto == "tcp":
        s.listen(16)

    def echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(max(0.1, end - time.monotonic()))
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    while time.monotonic() < end:
        try:
            if proto == "tcp":
                conn, _ = s.accept()
                threading.Thread(target=echo, args=(conn,), daemon=True).start()
            else:
                data, addr = s.recvfrom(65536)
                s.sendto(data, addr)
        except OSError:
            continue


def send(proto: str, ip: str, port: int, msg: str, timeout: float = 1.5) -> str:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind)
    s.settimeout(timeout)
    try:
        if proto == "tcp":
            s.connect((ip, port))
            s.sendall(msg.encode())
        else:
            s.sendto(msg.encode(), (ip, port))
        return "reply:" + s.recv(65536).decode()
    except OSError as e:
        return f"fail:{type(e).__name__}"
    finally:
        s.close()


def stream(ip: str, port: int, seconds: float) -> str:
    """A long-lived connection with data both ways. A message whose echo takes more than
    a second is 'late'; the connection breaking (reset, 10 s silence) is 'broken'."""
    s = socket.create_connection((ip, port), timeout=3)
    s.settimeout(10)
    ok = late = 0
    end = time.monotonic() + seconds
    i = 0
    try:
        while time.monotonic() < end:
            msg = f"<{i}>".encode()
            t0 = time.monotonic()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    raise OSError("closed")
                got += chunk
            if got != msg:
                raise OSError("corrupt")
            ok += time.monotonic() - t0 <= 1
            late += time.monotonic() - t0 > 1
            i += 1
            time.sleep(0.02)
    except OSError:
        return f"ok={ok} late={late} broken=1"
    finally:
        s.close()
    return f"ok={ok} late={late} broken=0"


if __name__ == "__main__":
    if sys.argv[1] == "stream":
        print(stream(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    elif sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        print(send(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
