#!/usr/bin/env python3
# tests/optional_frame_proxy.py: a TCP relay for test_net.c between one branch and the head office
# that puts an optional frame (docs/protocol.md, "Types": 0x80..0xff, skipped by a receiver that
# does not know it) of type 0x80, the first optional type, before every frame the head office
# sends. A branch that follows the protocol skips them and ends where it would without the relay.
#
#   optional_frame_proxy.py HEAD_HOST:PORT READY_FILE
# Listens on 127.0.0.1:0, writes "127.0.0.1:PORT" to READY_FILE, relays one connection, and on
# exit prints "injected N" (the frames put in). Bounded: gives up after 60 s.
import os
import select
import socket
import struct
import sys
import time

OPTIONAL = struct.pack(">IB", 2, 0x80) + b"\xc0"  # length 2: type 0x80, body msgpack nil


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "w") as f:
        f.write("127.0.0.1:%d\n" % lsock.getsockname()[1])
    os.rename(tmp, sys.argv[2])
    deadline = time.time() + 60
    lsock.settimeout(60)
    branch, _ = lsock.accept()
    head = socket.create_connection((host, int(port)), timeout=10)
    injected, pending = 0, b""
    open_ends = {branch, head}
    while open_ends and time.time() < deadline:
        ready, _, _ = select.select(list(open_ends), [], [], 1.0)
        for s in ready:
            data = s.recv(65536)
            if not data:
                open_ends.discard(s)
                try:
                    (head if s is branch else branch).shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            if s is branch:
                head.sendall(data)
                continue
            pending += data
            while len(pending) >= 4:
                n = struct.unpack(">I", pending[:4])[0]
                if len(pending) < 4 + n:
                    break
                branch.sendall(OPTIONAL + pending[: 4 + n])
                injected += 1
                pending = pending[4 + n:]
    print("injected %d" % injected, flush=True)


if __name__ == "__main__":
    main()
