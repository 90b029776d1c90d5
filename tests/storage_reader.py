#!/usr/bin/python3
"""storage_reader.py: an independent reader of a chainsync data directory, written only from
docs/storage.md (not from the C), to prove that document is enough to read and verify the log.

Uses Debian's python3-lmdb, python3-msgpack and python3-xxhash; run it with the system Python
(/usr/bin/python3), where those packages live.

    storage_reader.py [--json] [--times] [--no-lock] DIR

Walks the "events" database from sequence 1 and checks, in this order for each record: the key
is the next sequence (no gap), the value has a 16-byte header and an event of 1 to
CS_EVENT_BYTES_MAX bytes, the checksum, the chain, and that the event is one well-formed
event map (docs/storage.md, "The event") whose "seq" equals the key.

Prints "ok N events" and exits 0, or "corrupt at SEQ (reason)" and exits 3 (SPEC section 6:
storage error). With --json every verified event is printed first as one JSON object per line
(docs/storage.md, "JSON view"), and the status line goes to stderr so stdout stays JSON lines.
--times also checks the time index ("times") against the events' times, which the C
`cs_log_reader_verify` does not do. --no-lock opens the environment without LMDB's lock file
(for a copy on read-only media; never while a writer is running). Exit 1: usage or a missing
Python module; exit 3: the directory cannot be opened or is not a chainsync data directory.
"""

import base64
import json
import math
import sys

try:
    import lmdb
    import msgpack
    import xxhash
except ImportError as e:  # the test must fail loudly, not skip
    sys.stderr.write(
        "storage_reader: %s; install python3-lmdb python3-msgpack python3-xxhash and run "
        "/usr/bin/python3\n" % e
    )
    sys.exit(1)

FORMAT_VERSION = 1
RECORD_HEADER_BYTES = 16
EVENT_BYTES_MAX = 256 * 1024
EVENT_STR_BYTES_MAX = 255
MSGPACK_DEPTH_MAX = 16
U64_KEYS = ("seq", "time", "shop", "id", "version")
STR_KEYS = ("actor", "kind", "type")
EXIT_USAGE, EXIT_STORAGE = 1, 3


class Corrupt(Exception):
    pass


class Map(list):
    """A msgpack map as its list of (key, value) pairs: keeps order, duplicates and keys that
    Python cannot hash (a map used as a key)."""


def u64_be(b):
    return int.from_bytes(b, "big")


def be_u64(v):
    return v.to_bytes(8, "big")


def checksum(event, seq):
    return xxhash.xxh3_64_intdigest(event, seed=seq)


def chain(prev_chain, checksum_):
    return xxhash.xxh3_64_intdigest(be_u64(prev_chain) + be_u64(checksum_))


def depth(obj):
    """Nesting of non-empty containers, the way the writer's bound counts it."""
    if isinstance(obj, Map) and obj:
        return 1 + max(max(depth(k), depth(v)) for k, v in obj)
    if isinstance(obj, list) and obj:
        return 1 + max(depth(v) for v in obj)
    return 0


def decode_event(raw):
    """The event's map as a dict of its known keys, or raises Corrupt."""
    try:
        obj = msgpack.unpackb(
            raw,
            raw=False,
            unicode_errors="surrogateescape",  # a str that is not UTF-8 is still readable
            strict_map_key=False,
            object_pairs_hook=Map,
            use_list=True,
            timestamp=0,
        )
    except Exception as e:  # not msgpack, truncated, trailing bytes, bad timestamp ext
        raise Corrupt("not one msgpack value: %s" % e)
    if not isinstance(obj, Map):
        raise Corrupt("the event is not a map")
    if depth(obj) > MSGPACK_DEPTH_MAX:
        raise Corrupt("nested deeper than %d" % MSGPACK_DEPTH_MAX)
    ev = {}
    for k, v in obj:  # a repeated key: the last one counts; unknown keys are ignored
        if type(k) is not str:
            continue
        if k in U64_KEYS:
            if type(v) is not int or v < 0:
                raise Corrupt("%s is not an unsigned integer" % k)
        elif k in STR_KEYS:
            if type(v) is not str:
                raise Corrupt("%s is not a string" % k)
        elif k == "fields":
            if not isinstance(v, Map):
                raise Corrupt("fields is not a map")
        else:
            continue
        ev[k] = v
    missing = [k for k in U64_KEYS + STR_KEYS + ("fields",) if k not in ev]
    if missing:
        raise Corrupt("missing key %s" % ", ".join(missing))
    return ev


def to_json(obj):
    """docs/storage.md, "JSON view": msgpack values that JSON lacks become tagged objects."""
    if isinstance(obj, Map):
        if all(type(k) is str and not k.startswith("$") for k, _ in obj) and len(
            {k for k, _ in obj}
        ) == len(obj):
            return {k: to_json(v) for k, v in obj}
        return {"$map": [[to_json(k), to_json(v)] for k, v in obj]}
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:  # surrogate-escaped bytes that were not UTF-8
            raw = obj.encode("utf-8", "surrogateescape")
            return {"$str": base64.b64encode(raw).decode()}
    if isinstance(obj, bytes):
        return {"$bin": base64.b64encode(obj).decode()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, msgpack.ExtType):
        return {"$ext": obj.code, "data": base64.b64encode(obj.data).decode()}
    if isinstance(obj, msgpack.Timestamp):
        return {"$timestamp": [obj.seconds, obj.nanoseconds]}
    return obj  # None, bool, int, float


def open_env(path, lock):
    try:
        env = lmdb.open(
            path, readonly=True, max_dbs=32, lock=lock, subdir=True, create=False
        )
    except lmdb.Error as e:
        raise OSError("cannot open %s: %s" % (path, e))
    try:
        dbs = {}
        for name in ("events", "times", "meta"):
            dbs[name] = env.open_db(name.encode(), create=False)
    except lmdb.Error as e:
        env.close()
        raise OSError("%s is not a chainsync data directory: %s" % (path, e))
    return env, dbs


def check_format(txn, meta):
    v = txn.get(b"format", db=meta)
    if v is None or len(v) != 4 or u64_be(v) != FORMAT_VERSION:
        raise OSError("unknown log format %r (this reader knows %d)" % (v, FORMAT_VERSION))


# LMDB's own errors that mean a damaged file rather than a failure to read it.
LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError)


def walk(txn, events, emit):
    """Verifies the log; returns (count, [(seq, time)]) or raises Corrupt with .seq set."""
    expect, prev_chain, times = 1, 0, []
    cursor = iter(txn.cursor(db=events))
    while True:
        try:
            key, val = next(cursor)
        except StopIteration:
            break
        except LMDB_DAMAGE as e:
            err = Corrupt("LMDB: %s" % e)
            err.seq = expect
            raise err
        seq = expect
        try:
            if len(key) != 8:
                raise Corrupt("a key is not 8 bytes")
            if u64_be(key) != expect:
                raise Corrupt("missing (the log jumps to %d)" % u64_be(key))
            if len(val) <= RECORD_HEADER_BYTES or len(val) > RECORD_HEADER_BYTES + EVENT_BYTES_MAX:
                raise Corrupt("record of %d bytes" % len(val))
            sum_, chain_, raw = u64_be(val[:8]), u64_be(val[8:16]), val[16:]
            if checksum(raw, seq) != sum_:
                raise Corrupt("checksum mismatch")
            if chain(prev_chain, sum_) != chain_:
                raise Corrupt("hash chain broken")
            ev = decode_event(raw)
            if ev["seq"] != seq:
                raise Corrupt("the event says it is %d" % ev["seq"])
        except Corrupt as e:
            e.seq = seq
            raise
        if emit:
            out = {k: to_json(ev[k]) for k in ("seq", "time", "shop", "actor", "kind", "type",
                                               "id", "version", "fields")}
            out["checksum"] = "%016x" % sum_
            out["chain"] = "%016x" % chain_
            sys.stdout.write(json.dumps(out, separators=(",", ":"), ensure_ascii=False,
                                        allow_nan=False) + "\n")
        times.append((seq, ev["time"]))
        prev_chain = chain_
        expect += 1
    return expect - 1, times, prev_chain


def check_head(txn, meta, n, last_chain):
    """meta "head" (last seq u64 BE, its chain u64 BE), written with every commit that appended,
    must name where the walk ended: a shorter log lost its tail."""
    v = txn.get(b"head", db=meta)
    if v is None:
        return  # nothing appended yet
    hs, hc = (u64_be(v[:8]), u64_be(v[8:16])) if len(v) == 16 else (0, 0)
    if len(v) == 16 and hs == n and hc == last_chain:
        return
    if n < hs:
        e = Corrupt("missing (the log ends at %d, its head was %d)" % (n, hs))
        e.seq = n + 1
    else:
        e = Corrupt("the log's end differs from its recorded head")
        e.seq = hs + 1 if n > hs else hs
    raise e


def check_times(txn, times_db, times):
    """The time index holds, for every time that is higher than the one before (and for seq 1),
    that time -> the sequence of its first event; nothing else. Times never decrease."""
    want, last = [], None
    for seq, t in times:
        if last is not None and t < last:
            e = Corrupt("time goes back (%d after %d)" % (t, last))
            e.seq = seq
            raise e
        if last is None or t > last:
            want.append((t, seq))
        last = t
    have = []
    for k, v in txn.cursor(db=times_db):
        if len(k) != 8 or len(v) != 8:
            e = Corrupt("time index entry of %d/%d bytes" % (len(k), len(v)))
            e.seq = u64_be(v) if len(v) == 8 else 0
            raise e
        have.append((u64_be(k), u64_be(v)))
    for i in range(max(len(want), len(have))):
        w = want[i] if i < len(want) else None
        h = have[i] if i < len(have) else None
        if w != h:
            e = Corrupt("time index has %r, the events say %r" % (h, w))
            e.seq = min(x[1] for x in (w, h) if x is not None)
            raise e


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = set(a for a in argv if a.startswith("--"))
    if len(args) != 1 or flags - {"--json", "--times", "--no-lock"}:
        sys.stderr.write("usage: storage_reader.py [--json] [--times] [--no-lock] DIR\n")
        return EXIT_USAGE
    sys.stdout.reconfigure(encoding="utf-8")
    as_json = "--json" in flags
    status = sys.stderr if as_json else sys.stdout
    try:
        env, dbs = open_env(args[0], lock="--no-lock" not in flags)
    except OSError as e:
        sys.stderr.write("storage_reader: %s\n" % e)
        return EXIT_STORAGE
    try:
        with env.begin(buffers=False) as txn:  # one snapshot for the whole walk
            check_format(txn, dbs["meta"])
            n, times, last_chain = walk(txn, dbs["events"], as_json)
            check_head(txn, dbs["meta"], n, last_chain)
            if "--times" in flags:
                check_times(txn, dbs["times"], times)
    except (OSError, lmdb.Error) as e:
        sys.stderr.write("storage_reader: %s\n" % e)
        return EXIT_STORAGE
    except Corrupt as e:
        sys.stdout.flush()
        status.write("corrupt at %d (%s)\n" % (e.seq, e))
        return EXIT_STORAGE
    finally:
        env.close()
    sys.stdout.flush()
    status.write("ok %d events\n" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
