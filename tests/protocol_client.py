#!/usr/bin/env python3
"""protocol_client.py: a branch node written from docs/protocol.md alone.

It speaks protocol version 1 with Debian's python3-msgpack, python3-nacl (argon2id) and
python3-xxhash (segment and record checksums, docs/storage.md "Segments" and "Checksum and
chain"), and nothing from the C code. tests/test_protocol.c runs it against a real
`chainsync serve`, so the document and the server cannot drift apart.

    protocol_client.py HOST:PORT --shop ID (--password-stdin | --password P)
        [--cursor N --chain HEX]    START from event N whose chain value is HEX (default 0, 0)
        [--log-id HEX]              the log_id remembered from join: refuse another one
        [--proto LO,HI]             the protocol range HELLO offers (default 1,1)
        [--wrong-password]          derive the keys from a different password
        [--replay]                  capture connection 1's nonce and PROOF, replay them on 2
        [--write-customer NAME]     after CAUGHT_UP, WRITE a customer, then the same WRITE again
        [--report-outbox N]         after CAUGHT_UP, ACK with outbox N+1, PING with outbox N, then a
                                    PING without it (an older branch's), and stay 0.5 s
        [--write-entry JSON]        after CAUGHT_UP, WRITE this outbox entry once (a hostile
                                    branch: any keys, any kind or type; "req" is added) and
                                    report its WRITE_RESULT or the ERROR that closed the link
        [--source IP]               connect from this local address (127.0.0.2: another peer)
        [--client-key HEX]          prove with this 32-byte key instead of one derived from the
                                    password (what someone holding the head office's disk has)
        [--timeout S]               every socket wait (default 20 s)

It prints one JSON object on stdout (u64 values that may pass 2^63, chains and ids, as strings:
chains in 16 hex digits, ids in decimal). "error" is the ERROR frame the head office sent, if any
({"code", "message", "state"}); "violation" is set when the head office broke the document
(then the exit status is 1). Otherwise the exit status is 0, refusals included: the caller
checks the code it expected.
"""
import argparse
import hashlib
import hmac
import json
import os
import select
import socket
import struct
import sys
import time

import msgpack
import nacl.pwhash.argon2id
import xxhash

# docs/protocol.md "Frames"
FRAME_BYTES_MAX = 1048640  # CS_NET_FRAME_BYTES_MAX: what a branch accepts
CONTROL_FRAME_BYTES_MAX = 131072  # CS_NET_CONTROL_FRAME_BYTES_MAX: what the head office accepts
SEGMENT_BYTES_MAX = 1 << 20  # CS_NET_SEGMENT_BYTES_MAX
SEGMENT_EVENTS = 1024  # CS_NET_SEGMENT_EVENTS
DEPTH_MAX = 16
HEARTBEAT_S = 2.0  # CS_NET_HEARTBEAT_MS

HELLO, CHALLENGE, PROOF, WELCOME, START, CAUGHT_UP = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
SEGMENT, ACK, PING, WRITE, WRITE_RESULT, ERROR = 0x10, 0x11, 0x12, 0x20, 0x21, 0x7F
NAMES = {HELLO: "HELLO", CHALLENGE: "CHALLENGE", PROOF: "PROOF", WELCOME: "WELCOME",
         START: "START", CAUGHT_UP: "CAUGHT_UP", SEGMENT: "SEGMENT", ACK: "ACK", PING: "PING",
         WRITE: "WRITE", WRITE_RESULT: "WRITE_RESULT", ERROR: "ERROR"}

# docs/storage.md "Segments" and "The events database"
SEG_MAGIC = b"CSSG"
SEG_HEADER_BYTES = 40
SEG_EVENTS_MAX = 65536
SEG_STORAGE_BYTES_MAX = 8 << 20
RECORD_BYTES_MIN, RECORD_BYTES_MAX = 17, 16 + 262144
EVENT_KEYS = {"seq": int, "time": int, "shop": int, "actor": str, "kind": str, "type": str,
              "id": int, "version": int, "fields": dict}


class Violation(Exception):
    """The head office did something docs/protocol.md does not allow."""


class Refused(Exception):
    """The head office sent ERROR."""

    def __init__(self, code, message, state):
        super().__init__(code)
        self.code, self.message, self.state = code, message, state


def depth(v):
    """docs/storage.md "Nesting": a scalar or empty container is 0, else 1 + the deepest."""
    if isinstance(v, (list, tuple)):
        return 1 + max(map(depth, v)) if v else 0
    if isinstance(v, dict):
        return 1 + max(max(depth(k), depth(x)) for k, x in v.items()) if v else 0
    return 0


def unpack_one(body, what):
    """Exactly one msgpack value filling body, nested at most 16 deep."""
    try:
        # unpackb bounds its allocations by the input size and refuses trailing bytes.
        v = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:  # ExtraData, OutOfData, FormatError, UnicodeDecodeError...
        raise Violation(f"{what}: not exactly one msgpack value ({type(e).__name__}: {e})")
    if depth(v) > DEPTH_MAX:
        raise Violation(f"{what}: nested deeper than {DEPTH_MAX}")
    return v


def is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 64)


def need(m, key, kind, what, size=None):
    """A map key of the documented type: uint, str, bin (of exactly size bytes), map, array."""
    if not isinstance(m, dict):
        raise Violation(f"{what}: body is not a map")
    if key not in m:
        raise Violation(f"{what}: key {key!r} missing")
    v = m[key]
    ok = {"uint": is_uint(v), "str": isinstance(v, str), "bin": isinstance(v, bytes),
          "map": isinstance(v, dict), "array": isinstance(v, list)}[kind]
    if not ok or (size is not None and len(v) != size):
        raise Violation(f"{what}: key {key!r} is not a {kind}{' ' + str(size) if size else ''}")
    return v


class Conn:
    source = None  # (ip, 0) from --source

    def __init__(self, hostport, timeout):
        host, port = hostport.rsplit(":", 1)
        self.timeout = timeout
        self.sock = socket.create_connection((host, int(port)), timeout=timeout,
                                             source_address=Conn.source)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.state = "CONNECTED"
        self.last_sent = time.monotonic()
        self.frames_in = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, ftype, value):
        body = msgpack.packb(value, use_bin_type=True)
        length = 1 + len(body)
        # What we send must fit what the head office accepts.
        assert length <= CONTROL_FRAME_BYTES_MAX
        self.sock.sendall(struct.pack(">IB", length, ftype) + body)
        self.last_sent = time.monotonic()

    def _read_exact(self, n, deadline):
        buf = bytearray()
        while len(buf) < n:
            now = time.monotonic()
            if now >= deadline:
                raise Violation(f"timed out in state {self.state} waiting for the head office")
            # Heartbeats: send PING when we have sent nothing for 2 s (only once streaming;
            # before that the handshake's own frames are due).
            wait = min(deadline - now, HEARTBEAT_S / 2)
            r, _, _ = select.select([self.sock], [], [], wait)
            if not r:
                if self.state == "STREAMING" and time.monotonic() - self.last_sent >= HEARTBEAT_S:
                    self.send(PING, {"time": int(time.time() * 1000)})
                continue
            chunk = self.sock.recv(min(n - len(buf), 1 << 16))
            if not chunk:
                raise EOFError(f"the head office closed the connection in state {self.state}")
            buf += chunk
        return bytes(buf)

    def recv(self):
        """One frame: (type, value). ERROR raises Refused; optional unknown types are skipped."""
        deadline = time.monotonic() + self.timeout
        while True:
            (length,) = struct.unpack(">I", self._read_exact(4, deadline))
            # Refused before reading (or allocating) the body.
            if length == 0 or length > FRAME_BYTES_MAX:
                raise Violation(f"frame length {length} outside 1..{FRAME_BYTES_MAX}")
            raw = self._read_exact(length, deadline)
            ftype, body = raw[0], raw[1:]
            self.frames_in += 1
            if ftype not in NAMES:
                if ftype >= 0x80:
                    continue  # optional: skipped
                try:
                    self.send(ERROR, {"code": "protocol_mismatch",
                                      "message": f"unknown mandatory frame type 0x{ftype:02x}"})
                finally:
                    self.close()
                raise Violation(f"unknown mandatory frame type 0x{ftype:02x}")
            value = unpack_one(body, NAMES[ftype])
            if ftype == ERROR:
                code = need(value, "code", "str", "ERROR")
                message = need(value, "message", "str", "ERROR")
                raise Refused(code, message, self.state)
            return ftype, value

    def expect(self, *types):
        ftype, value = self.recv()
        if ftype not in types:
            raise Violation(f"got {NAMES[ftype]} in state {self.state}, expected "
                            + " or ".join(NAMES[t] for t in types))
        return ftype, value


# docs/protocol.md "Handshake"
def derive_keys(password, salt, ops, mem):
    salted = nacl.pwhash.argon2id.kdf(32, password, salt, opslimit=ops, memlimit=mem)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return client_key, server_key


def auth_message(shop, cnonce, snonce, log_id, proto):
    m = b"chainsync-auth-1" + struct.pack(">Q", shop) + cnonce + snonce
    m += struct.pack(">QI", log_id, proto)
    assert len(m) == 100
    return m


def client_proof(client_key, am):
    stored_key = hashlib.sha256(client_key).digest()
    sig = hmac.new(stored_key, am, hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(client_key, sig))


def read_challenge(conn):
    _, ch = conn.expect(CHALLENGE)
    proto = need(ch, "proto", "uint", "CHALLENGE")
    snonce = need(ch, "nonce", "bin", "CHALLENGE", 32)
    salt = need(ch, "salt", "bin", "CHALLENGE", 16)
    ops = need(ch, "ops", "uint", "CHALLENGE")
    mem = need(ch, "mem", "uint", "CHALLENGE")
    log_id = need(ch, "log_id", "uint", "CHALLENGE")
    return {"proto": proto, "nonce": snonce, "salt": salt, "ops": ops, "mem": mem,
            "log_id": log_id}


def hello(conn, shop, proto_range, cnonce, mode):
    conn.send(HELLO, {"proto": list(proto_range), "shop": shop, "nonce": cnonce, "mode": mode})
    conn.state = "AWAIT_CHALLENGE"
    t0 = time.monotonic()
    ch = read_challenge(conn)
    ch["wait_ms"] = int((time.monotonic() - t0) * 1000)  # the failed-login slow-down shows here
    if not proto_range[0] <= ch["proto"] <= proto_range[1]:
        raise Violation(f"CHALLENGE chose protocol {ch['proto']} outside the offered range")
    return ch


def handshake(conn, args, password, summary, cnonce=None, proof=None):
    """HELLO .. WELCOME. Returns (challenge, proof sent, welcome)."""
    cnonce = cnonce or os.urandom(32)
    ch = hello(conn, args.shop, args.proto, cnonce, "pull")
    summary["challenge"] = {"proto": ch["proto"], "ops": ch["ops"], "mem": ch["mem"],
                            "wait_ms": ch["wait_ms"],
                            "salt": ch["salt"].hex(), "log_id": f"{ch['log_id']:016x}"}
    if args.log_id is not None and ch["log_id"] != args.log_id:
        conn.send(ERROR, {"code": "not_in_network",
                          "message": "this head office keeps another network's log"})
        conn.close()
        raise Refused("not_in_network", "log_id differs (refused by the branch)", "client")
    client_key, server_key = derive_keys(password, ch["salt"], ch["ops"], ch["mem"])
    if args.client_key is not None:
        client_key = args.client_key
    am = auth_message(args.shop, cnonce, ch["nonce"], ch["log_id"], ch["proto"])
    if proof is None:
        proof = client_proof(client_key, am)
    conn.send(PROOF, {"proof": proof})
    conn.state = "AWAIT_WELCOME"
    _, w = conn.expect(WELCOME)
    sig = need(w, "signature", "bin", "WELCOME", 32)
    head = need(w, "head", "uint", "WELCOME")
    head_seq = need(w, "head_seq", "uint", "WELCOME")
    expected = hmac.new(server_key, am, hashlib.sha256).digest()
    if not hmac.compare_digest(sig, expected):
        conn.send(ERROR, {"code": "auth_failed",
                          "message": "the head office could not prove it holds this branch's secret"})
        conn.close()
        raise Violation("WELCOME's signature is not ServerSignature")
    summary["welcome"] = {"head": head, "head_seq": head_seq}
    return ch, cnonce, proof, w


# docs/storage.md "Segments", "Checksum and chain", "The event"
def check_event(ev, seq):
    if not isinstance(ev, dict):
        raise Violation(f"event {seq}: not a map")
    for key, kind in EVENT_KEYS.items():
        if key not in ev:
            raise Violation(f"event {seq}: key {key!r} missing")
        v = ev[key]
        if kind is int:
            if not is_uint(v):
                raise Violation(f"event {seq}: {key!r} is not an unsigned integer")
        elif not isinstance(v, kind):
            raise Violation(f"event {seq}: {key!r} is not a {kind.__name__}")
    if ev["seq"] != seq:
        raise Violation(f"event {seq}: its seq says {ev['seq']}")
    for key in ("actor", "kind", "type"):
        if len(ev[key].encode()) > 255:
            raise Violation(f"event {seq}: {key!r} longer than 255 bytes")


def parse_segment(seg, prev_seq, prev_chain):
    """Verifies one segment continuing (prev_seq, prev_chain); returns [(seq, chain, event)]."""
    if len(seg) < SEG_HEADER_BYTES:
        raise Violation(f"segment of {len(seg)} bytes: shorter than its header")
    if len(seg) > SEGMENT_BYTES_MAX:
        raise Violation(f"segment of {len(seg)} bytes: over CS_NET_SEGMENT_BYTES_MAX")
    hdr = seg[:SEG_HEADER_BYTES]
    magic, version, flags, first, last, count, body_bytes, checksum = struct.unpack(
        ">4sHHQQIIQ", hdr)
    if magic != SEG_MAGIC:
        raise Violation(f"segment magic {magic!r}")
    if version != 1:
        raise Violation(f"segment version {version} (protocol_mismatch)")
    if flags != 0:
        raise Violation(f"segment flags {flags} (protocol_mismatch)")
    if SEG_HEADER_BYTES + body_bytes > SEG_STORAGE_BYTES_MAX or \
            body_bytes != len(seg) - SEG_HEADER_BYTES:
        raise Violation(f"segment body_bytes {body_bytes} but {len(seg) - 40} bytes present")
    if first < 1 or last < first or count != last - first + 1 or not 1 <= count <= SEG_EVENTS_MAX:
        raise Violation(f"segment header first {first} last {last} count {count}")
    body = seg[SEG_HEADER_BYTES:]
    seed = xxhash.xxh3_64_intdigest(hdr[:32])
    if xxhash.xxh3_64_intdigest(body, seed=seed) != checksum:
        raise Violation(f"segment {first}..{last}: checksum differs")
    # Streaming: cursor + 1 onward, without gaps or overlaps.
    if first != prev_seq + 1:
        raise Violation(f"segment starts at {first}, expected {prev_seq + 1}")
    # Deterministic boundaries: never across a multiple of CS_NET_SEGMENT_EVENTS.
    if (first - 1) // SEGMENT_EVENTS != (last - 1) // SEGMENT_EVENTS:
        raise Violation(f"segment {first}..{last} crosses a multiple of {SEGMENT_EVENTS}")
    out, off, chain = [], 0, prev_chain
    for seq in range(first, last + 1):
        if off + 4 > len(body):
            raise Violation(f"segment {first}..{last}: record {seq} truncated")
        (n,) = struct.unpack_from(">I", body, off)
        off += 4
        if not RECORD_BYTES_MIN <= n <= RECORD_BYTES_MAX or off + n > len(body):
            raise Violation(f"record {seq}: length {n}")
        value = body[off:off + n]
        off += n
        rec_checksum, rec_chain = struct.unpack_from(">QQ", value, 0)
        event = value[16:]
        if xxhash.xxh3_64_intdigest(event, seed=seq) != rec_checksum:
            raise Violation(f"record {seq}: checksum differs (corrupt)")
        want = xxhash.xxh3_64_intdigest(struct.pack(">QQ", chain, rec_checksum))
        if want != rec_chain:
            raise Violation(f"record {seq}: chain does not continue event {seq - 1} (corrupt)")
        ev = unpack_one(event, f"event {seq}")
        check_event(ev, seq)
        out.append((seq, rec_chain, ev))
        chain = rec_chain
    if off != len(body):
        raise Violation(f"segment {first}..{last}: {len(body) - off} bytes after its records")
    return out


class Stream:
    """The STREAMING side of a connection: applies segments, remembers what it saw."""

    def __init__(self, conn, cursor, chain, summary):
        self.conn, self.seq, self.chain, self.s = conn, cursor, chain, summary
        self.caught_up = None
        self.events = 0
        self.kinds = {}
        self.seen = {}  # (kind, type, id) -> number of events
        self.writes = []  # WRITE_RESULTs in arrival order
        self.segments = 0

    def on_frame(self, ftype, v):
        if ftype == SEGMENT:
            if not isinstance(v, bytes):
                raise Violation("SEGMENT body is not a bin")
            recs = parse_segment(v, self.seq, self.chain)
            for seq, chain, ev in recs:
                self.events += 1
                key = f"{ev['kind']}/{ev['type']}" if ev["type"] else ev["kind"]
                self.kinds[key] = self.kinds.get(key, 0) + 1
                k = (ev["kind"], ev["type"], ev["id"])
                self.seen[k] = self.seen.get(k, 0) + 1
                self.seq, self.chain = seq, chain
            self.segments += 1
            self.conn.send(ACK, {"cursor": self.seq})
        elif ftype == CAUGHT_UP:
            seq = need(v, "seq", "uint", "CAUGHT_UP")
            if self.caught_up is not None:
                raise Violation("CAUGHT_UP sent twice")
            if seq != self.seq:
                # "every event up to seq has been sent on this connection", and seq is the
                # head as of START, so nothing past it can have come before it.
                raise Violation(f"CAUGHT_UP {seq} but the branch has received up to {self.seq}")
            self.caught_up = seq
        elif ftype == PING:
            need(v, "time", "uint", "PING")
            need(v, "head_seq", "uint", "PING")
        elif ftype == WRITE_RESULT:
            r = {"req": need(v, "req", "bin", "WRITE_RESULT", 16).hex(),
                 "code": need(v, "code", "str", "WRITE_RESULT"),
                 "message": need(v, "message", "str", "WRITE_RESULT"),
                 "id": str(need(v, "id", "uint", "WRITE_RESULT")),
                 "version": need(v, "version", "uint", "WRITE_RESULT"),
                 "seq": need(v, "seq", "uint", "WRITE_RESULT")}
            self.writes.append(r)
        else:
            raise Violation(f"{NAMES[ftype]} in state STREAMING")

    def until(self, done):
        while not done():
            self.on_frame(*self.conn.recv())

    def frames_until(self, deadline):
        """Handles every frame that arrives before time.monotonic() reaches deadline (the
        head office must not close the connection meanwhile)."""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.conn.sock], [], [], deadline - time.monotonic())
            if r:
                self.on_frame(*self.conn.recv())


def run_stream(args, password, summary):
    conn = Conn(args.hostport, args.timeout)
    try:
        handshake(conn, args, password, summary)
        conn.send(START, {"cursor": args.cursor, "chain": args.chain})
        conn.state = "STREAMING"
        st = Stream(conn, args.cursor, args.chain, summary)
        try:
            st.until(lambda: st.caught_up is not None)
            if args.write_customer is not None:
                run_writes(args, st, summary)
            if args.report_outbox is not None:
                run_report_outbox(args, st, summary)
            if args.write_entry is not None:
                run_write_entry(args, st, summary)
        finally:
            summary.update({"events": st.events, "last_seq": st.seq,
                            "last_chain": f"{st.chain:016x}", "caught_up": st.caught_up,
                            "segments": st.segments, "kinds": st.kinds})
    finally:
        conn.close()


def run_writes(args, st, summary):
    """R8: one WRITE, its WRITE_RESULT, the same WRITE again: the same answer, one event."""
    counter = int.from_bytes(os.urandom(4), "big") | 1
    rid = (args.shop << 32) | counter
    req = os.urandom(16)
    entry = {"kind": "put", "type": "customer", "id": rid, "version": 1, "expect": 0,
             "fields": {"name": args.write_customer}, "req": req}
    results = []
    for _ in range(2):
        n = len(st.writes)
        st.conn.send(WRITE, entry)
        st.until(lambda: len(st.writes) > n)
        r = st.writes[n]
        if r["req"] != req.hex():
            raise Violation("WRITE_RESULT answers another req")
        results.append(r)
    summary["write"] = {"id": str(rid), "req": req.hex(), "first": results[0], "second": results[1],
                        "same": results[0] == results[1]}
    if results[0]["code"] == "ok":
        if results[0]["id"] != str(rid) or results[0]["seq"] == 0:
            raise Violation("WRITE_RESULT ok without the record's id and event seq")
        # The record reaches the writer too, as an ordinary event of the stream.
        st.until(lambda: st.seq >= results[0]["seq"])
        # Give a (wrong) second append the time to arrive: a PING round.
        deadline = time.monotonic() + 0.5
        st.conn.send(PING, {"time": int(time.time() * 1000)})
        st.frames_until(deadline)
        summary["write"]["events_in_stream"] = st.seen.get(("put", "customer", rid), 0)


def run_report_outbox(args, st, summary):
    """docs/protocol.md "Frames": PING and ACK may carry `outbox`, the branch's outbox depth;
    a PING without it (an older branch's) is accepted too. ACK with the depth, PING with it, PING
    without it, then half a second in which the head office must not close the connection."""
    st.conn.send(ACK, {"cursor": st.seq, "outbox": args.report_outbox + 1})
    st.conn.send(PING, {"time": int(time.time() * 1000), "outbox": args.report_outbox})
    st.conn.send(PING, {"time": int(time.time() * 1000)})
    deadline = time.monotonic() + 0.5
    st.frames_until(deadline)
    summary["outbox_reported"] = args.report_outbox


def run_write_entry(args, st, summary):
    """A hostile branch's one WRITE: whatever the entry holds, then the answer and what followed
    in the stream within a PING round (an event the head office appended reaches us too)."""
    entry = json.loads(args.write_entry)
    entry.setdefault("req", os.urandom(16))
    before = st.seq
    st.conn.send(WRITE, entry)
    summary["write_entry"] = {"seq_before": before}
    st.until(lambda: len(st.writes) > 0)
    summary["write_entry"]["result"] = st.writes[0]
    deadline = time.monotonic() + 0.5
    st.conn.send(PING, {"time": int(time.time() * 1000)})
    st.frames_until(deadline)
    summary["write_entry"]["seq_after"] = st.seq


def run_replay(args, password, summary):
    """Connection 1 logs in; connection 2 replays its client nonce and PROOF."""
    c1 = Conn(args.hostport, args.timeout)
    try:
        s1 = {}
        ch1, cnonce, proof, _ = handshake(c1, args, password, s1)
        summary["first"] = "welcome"
    finally:
        c1.close()
    c2 = Conn(args.hostport, args.timeout)
    try:
        ch2 = hello(c2, args.shop, args.proto, cnonce, "pull")
        summary["fresh_snonce"] = ch2["nonce"] != ch1["nonce"]
        summary["same_salt"] = ch2["salt"] == ch1["salt"]
        c2.send(PROOF, {"proof": proof})
        c2.state = "AWAIT_WELCOME"
        c2.expect(WELCOME)
        raise Violation("a replayed PROOF was welcomed")
    finally:
        c2.close()


def raw_frame(ftype, body):
    return struct.pack(">IB", 1 + len(body), ftype) + body


def probe_one(args, frames, read_challenge_first=False):
    """Sends raw bytes (after a valid HELLO when asked) and returns what came back: the ERROR
    code, the name of the frame, or "closed"/"silent"."""
    conn = Conn(args.hostport, min(args.timeout, 3.0))
    try:
        if read_challenge_first:
            hello(conn, args.shop, args.proto, os.urandom(32), "pull")
        for f in frames:
            conn.sock.sendall(f)
        try:
            ftype, _ = conn.recv()
            return NAMES[ftype]
        except Refused as e:
            return f"{e.code}: {e.message}" if args.messages else e.code
        except EOFError:
            return "closed"
        except Violation as e:
            return "silent" if "timed out" in str(e) else f"violation: {e}"
    finally:
        conn.close()


def run_probe(args, password, summary):
    """docs/protocol.md "Frames": the receiver's rules, as seen from the head office."""
    pk = lambda v: msgpack.packb(v, use_bin_type=True)
    good = {"proto": [1, 1], "shop": args.shop, "nonce": os.urandom(32), "mode": "pull"}
    r = {}
    r["length_zero"] = probe_one(args, [struct.pack(">I", 0)])
    r["length_over_control_max"] = probe_one(args, [struct.pack(">I", CONTROL_FRAME_BYTES_MAX + 1)])
    # A HELLO of exactly the limit (padded with an unknown key) is accepted.
    base = len(pk(dict(good, pad=b""))) + 1
    pad = CONTROL_FRAME_BYTES_MAX - base
    while 1 + len(pk(dict(good, pad=b"p" * pad))) > CONTROL_FRAME_BYTES_MAX:
        pad -= 1
    at_max = raw_frame(HELLO, pk(dict(good, pad=b"p" * pad)))
    assert len(at_max) - 4 == CONTROL_FRAME_BYTES_MAX, len(at_max)
    r["hello_at_control_max"] = probe_one(args, [at_max])
    r["trailing_bytes"] = probe_one(args, [raw_frame(HELLO, pk(good) + b"\x00")])
    r["truncated_value"] = probe_one(args, [raw_frame(HELLO, pk(good)[:-3])])
    r["container_longer_than_body"] = probe_one(args, [raw_frame(HELLO, b"\xdf\xff\xff\xff\xff")])
    # Depth as docs/storage.md "Nesting" counts it: the HELLO map is level 1.
    nest = lambda n: [nest(n - 1)] if n else 0
    r["hello_nested_16_deep"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, x=nest(15))))])
    r["hello_nested_17_deep"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, x=nest(16))))])
    # 0x7e: no frame type has it (0x30-0x32 are the snapshot frames since issue 14)
    r["unknown_mandatory_type"] = probe_one(args, [raw_frame(0x7e, pk({}))])
    r["unknown_optional_type_then_hello"] = probe_one(
        args, [raw_frame(0x90, pk({"x": 1})), raw_frame(HELLO, pk(good))])
    r["unknown_key_ignored"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, later=1)))])
    r["missing_key_shop"] = probe_one(args, [raw_frame(HELLO, pk({k: v for k, v in good.items() if k != "shop"}))])
    r["mode_not_a_str"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, mode=7)))])
    r["mode_unknown_word"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, mode="dance")))])
    r["proto_not_two"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, proto=[1])))])
    r["proto_reversed_1_0"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, proto=[1, 0])))])
    r["missing_key_mode"] = probe_one(args, [raw_frame(HELLO, pk({k: v for k, v in good.items() if k != "mode"}))])
    r["wrong_type_nonce_str"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, nonce="x" * 32)))])
    r["nonce_31_bytes"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, nonce=os.urandom(31))))])
    r["body_not_a_map"] = probe_one(args, [raw_frame(HELLO, pk([1, 2]))])
    r["start_before_hello"] = probe_one(args, [raw_frame(START, pk({"cursor": 0, "chain": 0}))])
    r["start_instead_of_proof"] = probe_one(args, [raw_frame(START, pk({"cursor": 0, "chain": 0}))], True)
    r["proof_31_bytes"] = probe_one(args, [raw_frame(PROOF, pk({"proof": os.urandom(31)}))], True)
    r["proto_range_2_2"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, proto=[2, 2])))])
    r["proto_range_0_5"] = probe_one(args, [raw_frame(HELLO, pk(dict(good, proto=[0, 5])))])
    # After the handshake: the wrong frame in AWAIT_START and in STREAMING.
    for name, frames, start in (("ack_instead_of_start", [(ACK, {"cursor": 0})], False),
                                ("hello_while_streaming", [(HELLO, good)], True),
                                ("ping_outbox_not_uint", [(PING, {"time": 1, "outbox": "many"})],
                                 True)):
        c = Conn(args.hostport, min(args.timeout, 3.0))
        try:
            handshake(c, args, password, {})
            if start:
                c.send(START, {"cursor": 0, "chain": 0})
                c.state = "STREAMING"
            for t, v in frames:
                c.send(t, v)
            end = time.monotonic() + 5
            while time.monotonic() < end:
                t, _ = c.recv()
                if t not in (SEGMENT, CAUGHT_UP, PING):
                    r[name] = NAMES[t]
                    break
        except Refused as e:
            r[name] = f"{e.code}: {e.message}" if args.messages else e.code
        except (EOFError, Violation) as e:
            r[name] = f"closed: {e}"
        finally:
            c.close()
    # An unknown id's CHALLENGE: a stable salt, the real parameters.
    def challenge_of(shop):
        c = Conn(args.hostport, args.timeout)
        try:
            return hello(c, shop, args.proto, os.urandom(32), "pull")
        finally:
            c.close()
    real = challenge_of(args.shop)
    other = (args.shop ^ 0x5A5A5A5A) or 1
    u1, u2 = challenge_of(other), challenge_of(other)
    r["unknown_id_salt_stable"] = u1["salt"] == u2["salt"]
    r["unknown_id_params_equal"] = (u1["ops"], u1["mem"], u1["log_id"]) == \
        (real["ops"], real["mem"], real["log_id"])
    # A second connection of the same shop that reaches STREAMING replaces the first.
    c1 = Conn(args.hostport, args.timeout)
    c2 = Conn(args.hostport, args.timeout)
    try:
        handshake(c1, args, password, {})
        c1.send(START, {"cursor": 0, "chain": 0})
        c1.state = "STREAMING"
        handshake(c2, args, password, {})
        c2.send(START, {"cursor": 0, "chain": 0})
        r["second_connection_replaces_first"] = "not replaced within 5 s"
        try:
            end = time.monotonic() + 5
            while time.monotonic() < end:
                c1.recv()
        except Refused as e:
            r["second_connection_replaces_first"] = \
                f"{e.code}: {e.message}" if args.messages else e.code
        except (EOFError, Violation) as e:
            r["second_connection_replaces_first"] = f"closed: {e}"
    finally:
        c1.close()
        c2.close()
    summary["probe"] = r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("hostport")
    p.add_argument("--shop", type=int, required=True)
    p.add_argument("--password")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--wrong-password", action="store_true")
    p.add_argument("--cursor", type=int, default=0)
    p.add_argument("--chain", type=lambda x: int(x, 16), default=0, help="16 hex digits")
    p.add_argument("--log-id", type=lambda x: int(x, 16), default=None, help="16 hex digits")
    p.add_argument("--proto", default="1,1")
    p.add_argument("--replay", action="store_true")
    p.add_argument("--write-customer")
    p.add_argument("--report-outbox", type=int, help="after catching up: report this outbox depth")
    p.add_argument("--write-entry")
    p.add_argument("--source")
    p.add_argument("--client-key", type=bytes.fromhex, default=None, help="64 hex digits")
    p.add_argument("--probe", action="store_true")
    p.add_argument("--messages", action="store_true", help="--probe: the ERROR messages too")
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()
    args.proto = tuple(int(x) for x in args.proto.split(","))
    if args.source:
        Conn.source = (args.source, 0)
    if args.password_stdin:
        args.password = sys.stdin.readline().rstrip("\n").rstrip("\r")
    if args.password is None:
        p.error("--password or --password-stdin")
    password = args.password.encode()
    if args.wrong_password:
        password += b"-not-it"
    summary = {"shop": args.shop}
    status = 0
    try:
        if args.probe:
            run_probe(args, password, summary)
        elif args.replay:
            run_replay(args, password, summary)
        else:
            run_stream(args, password, summary)
    except Refused as e:
        summary["error"] = {"code": e.code, "message": e.message, "state": e.state}
    except (Violation, EOFError, OSError) as e:
        summary["violation"] = f"{type(e).__name__}: {e}"
        status = 1
    print(json.dumps(summary, sort_keys=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
