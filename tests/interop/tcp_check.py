"""A TCP integrity probe run on both ends of a tunnel (plain script, no project imports).

    python tcp_check.py serve ADDR PORT       accept one connection, read to EOF, answer SHA-256
    python tcp_check.py send ADDR PORT SRC N  send N random bytes from SRC, check the answer

`send` retries connecting for a few seconds (the server may still be starting) and exits 0
only if the server's digest matches what was sent."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time


def serve(addr: str, port: int) -> int:
    with socket.create_server((addr, port)) as srv:
        srv.settimeout(60)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(60)
            digest = hashlib.sha256()
            while chunk := conn.recv(65536):
                digest.update(chunk)
            conn.sendall(digest.hexdigest().encode())
    return 0


def send(addr: str, port: int, src: str, size: int) -> int:
    data = os.urandom(size)
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=5, source_address=(src, 0))
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with conn:
        conn.settimeout(60)
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(1024):
            answer += chunk
    ok = answer.decode() == hashlib.sha256(data).hexdigest()
    print(f"sent {size} bytes, digest {'matches' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "serve":
        sys.exit(serve(rest[0], int(rest[1])))
    sys.exit(send(rest[0], int(rest[1]), rest[2], int(rest[3])))
