"""Run inside a Mininet host: tiny TCP/UDP echo server and client.

    python sock.py serve tcp|udp PORT SECONDS      echo everything back until SECONDS pass
    python sock.py send tcp|udp IP PORT MESSAGE    prints 'reply:<echo>' or 'fail:<reason>'
"""

import socket
import sys
import threading
import time


def serve(proto: str, port: int, seconds: float) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
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
    s = socket.socket(socket.AF_INET, kind)
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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        print(send(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
