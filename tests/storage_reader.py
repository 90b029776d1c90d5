#!/usr/bin/python3
"""storage_reader.py: an independent reader of a chainsync data directory, written only from
docs/storage.md (not from the C), to prove that document is enough to read and verify the log.

Uses Debian's python3-lmdb, python3-msgpack and python3-xxhash; run it with the system Python
(/usr/bin/python3), where those packages live.

    storage_reader.py [--json] [--times] [--state] [--types] [--no-lock]
                      [--secrets [--password PW] [--shop ID]] DIR

Walks the "events" database from sequence 1 and checks, in this order for each record: the key
is the next sequence (no gap), the value has a 16-byte header and an event of 1 to
CS_EVENT_BYTES_MAX bytes, the checksum, the chain, and that the event is one well-formed
event map (docs/storage.md, "The event") whose "seq" equals the key.

Prints "ok N events" and exits 0, or "corrupt at SEQ (reason)" and exits 3 (SPEC section 6:
storage error). With --json every verified event is printed first as one JSON object per line
(docs/storage.md, "JSON view"), and the status line goes to stderr so stdout stays JSON lines.
--times also checks the time index ("times") against the events' times, which the C
`cs_log_reader_verify` does not do. --state then reads the layers' databases (docs/storage.md,
"Databases of the layers above"): it prints one JSON object with the shop's identity, its items
and local items, the engine and branch digests, and at a head office its network and shops, on
a branch its sync state, copies (through the origin index and the mirror) and dirty set; it
checks the branch invariants 1 to 4 and reports a broken one as corrupt. --types prints the
type table (name, code, class) this reader knows, as JSON, and exits. --no-lock opens the
environment without LMDB's lock file (for a copy on read-only media; never while a writer is
running).

--secrets reads the records that are not derived from a log (docs/storage.md, "Engine records
outside the state" and "The branch node's records"): `secrets` (password keys and the decoy),
`status`, `requests`, `outbox`, `rejected`, `netlink` (with the node's `state`) and the
`node.lock` file; checks each
against its documented layout and prints them as one JSON object (salts and costs, never a
key). It checks R9 as the document states it: no database of the directory holds an argon2
hash string (`$argon2`), and each secret (salts, StoredKey, ServerKey, ClientKey, the decoy)
appears in no database but its own record, the log's `events` least of all. With --password PW
it recomputes SaltedPassword, ClientKey, StoredKey and ServerKey by the document's construction
(python3-nacl's argon2id) and compares them with the branch's `netlink` (whose shop must then
be --shop, when given) or, at a head office, with the `secrets` record of shop --shop ID; it
also checks that the password's bytes are in no database and no file of the directory. Keys
that do not match: "auth_failed: ..." on stderr, exit 2.

Exit 1: usage or a missing Python module; exit 2: --password gives other keys; exit 3: the
directory cannot be opened, is not a chainsync data directory, or holds a corrupt record.
"""

import base64
import fcntl
import hashlib
import hmac
import os
import stat
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
EXIT_USAGE, EXIT_REFUSED, EXIT_STORAGE = 1, 2, 3


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
        elif k == "schema":  # optional: absent is schema version 1
            if type(v) is not int or v < 1:
                raise Corrupt("schema is not a positive integer")
        else:
            continue
        ev[k] = v
    missing = [k for k in U64_KEYS + STR_KEYS + ("fields",) if k not in ev]
    if missing:
        raise Corrupt("missing key %s" % ", ".join(missing))
    ev.setdefault("schema", 1)
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


def log_start(txn, meta):
    """meta "start" (seq, chain of seq - 1, log id; u64 BE each), written by a cut (`log
    compact`): where the log starts and the chain it continues. Absent: 1 and 0."""
    v = txn.get(b"start", db=meta)
    if v is None:
        return 1, 0
    if len(v) != 24 or u64_be(v[:8]) < 2:
        e = Corrupt("the start record is malformed")
        e.seq = 1
        raise e
    return u64_be(v[:8]), u64_be(v[8:16])


def walk(txn, events, emit, start=(1, 0)):
    """Verifies the log from its start; returns (last seq, [(seq, time)], last chain) or raises
    Corrupt with .seq set."""
    expect, prev_chain, times = start[0], start[1], []
    cur = txn.cursor(db=events)
    cur.set_range(expect.to_bytes(8, "big"))  # events below a cut's start are being deleted
    cursor = cur.iternext()
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
                                               "id", "version", "schema", "fields")}
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


# ---- the layers' databases (docs/storage.md, "Databases of the layers above") --------------

# "Type codes": (name, code, class). Never renumbered.
TYPES = (
    ("service_category", 1, "synced"),
    ("service", 2, "synced"),
    ("combo", 3, "synced"),
    ("plan", 4, "synced"),
    ("payment_method", 5, "synced"),
    ("checklist", 6, "synced"),
    ("notification_template", 7, "synced"),
    ("petcare_category", 8, "synced"),
    ("document_template", 9, "synced"),
    ("vaccine", 10, "synced"),
    ("segment", 11, "synced"),
    ("advanced_setting", 12, "synced"),
    ("species", 32, "shared"),
    ("breed", 33, "shared"),
    ("customer", 34, "shared"),
    ("pet", 35, "shared"),
    ("breeding_animal", 36, "shared"),
    ("custom_field", 37, "shared"),
    ("staff", 64, "local"),
    ("shop_info", 65, "local"),
)
BY_CODE = {code: (name, cls) for name, code, cls in TYPES}
ENGINE_DBS = ("items", "network", "local", "secrets", "outbox", "status", "requests", "rejected")
BRANCH_DBS = ("mirror", "origin", "dirty", "branch", "netlink")
ITEM_FIELDS_NEST_MAX = MSGPACK_DEPTH_MAX - 1


def corrupt(msg, seq=0):
    e = Corrupt(msg)
    e.seq = seq
    return e


def open_layer_dbs(env, txn):
    """The layers' databases that exist in this environment (a head office has no mirror)."""
    dbs = {}
    for name in ENGINE_DBS + BRANCH_DBS:
        try:
            dbs[name] = env.open_db(name.encode(), txn=txn, create=False)
        except lmdb.NotFoundError:
            pass
    return dbs


def records(txn, dbs, name):
    """(key, value) pairs of one database in key order; none when it does not exist."""
    if name not in dbs:
        return []
    return list(txn.cursor(db=dbs[name]))


def digest(txn, dbs, names):
    """"Digests": XXH3 over each record's key and value lengths (u64 BE), key and value."""
    h = xxhash.xxh3_64()
    for name in names:
        for k, v in records(txn, dbs, name):
            h.update(be_u64(len(k)) + be_u64(len(v)) + k + v)
    return "%016x" % h.intdigest()


def item_key(k, where):
    """A 9-byte item key: (code, id), the code one of the table's."""
    if len(k) != 9 or k[0] not in BY_CODE:
        raise corrupt("%s: key %s is not a type code and an id" % (where, k.hex()))
    return k[0], u64_be(k[1:])


def link(v, where):
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 3 or any(type(x) is not int or x < 0 for x in v):
        raise corrupt("%s: a link is not nil or [shop, id, version]" % where)
    return v


def item_record(v, where):
    """"Item records": fixarray 95 of version, archived, origin, detached_from, fields."""
    if len(v) < 1 or v[0] != 0x95:
        raise corrupt("%s: an item record does not start with 95" % where)
    try:
        obj = msgpack.unpackb(v, raw=False, strict_map_key=False, object_pairs_hook=Map,
                              use_list=True, timestamp=0)
    except Exception as e:
        raise corrupt("%s: not one msgpack value: %s" % (where, e))
    version, archived, origin, detached, fields = obj
    if type(version) is not int or version < 0 or type(archived) is not bool:
        raise corrupt("%s: bad version or archived" % where)
    if not isinstance(fields, Map) or depth(fields) > ITEM_FIELDS_NEST_MAX:
        raise corrupt("%s: the fields are not a map of at most %d levels"
                      % (where, ITEM_FIELDS_NEST_MAX))
    return {"version": version, "archived": archived, "origin": link(origin, where),
            "detached_from": link(detached, where), "fields": fields}


def link_json(v):
    return None if v is None else {"shop": v[0], "id": v[1], "version": v[2]}


def item_json(code, id_, rec):
    """The item as `get` shows it (SPEC 7): type, id, version, its fields, archived, origin and,
    when set, detached_from."""
    out = {"type": BY_CODE[code][0], "id": id_, "version": rec["version"]}
    out.update(to_json(rec["fields"]))
    out["archived"] = rec["archived"]
    out["origin"] = link_json(rec["origin"])
    if rec["detached_from"] is not None:
        out["detached_from"] = link_json(rec["detached_from"])
    return out


def compact_json(v, where):
    """A "network" or "branch" value: compact JSON with sorted keys, byte for byte."""
    try:
        obj = json.loads(v.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise corrupt("%s: not JSON: %s" % (where, e))
    again = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if again.encode("utf-8") != v:
        raise corrupt("%s: not compact JSON with sorted keys" % where)
    return obj


def read_network(txn, dbs):
    self_, net, shops = None, None, []
    for k, v in records(txn, dbs, "network"):
        if k == b"self":
            self_ = compact_json(v, "network self")
        elif k == b"net":
            net = compact_json(v, "network net")
        elif len(k) == 13 and k[:5] == b"shop:":
            shop = compact_json(v, "network shop")
            if shop.get("id") != u64_be(k[5:]):
                raise corrupt("network: shop record %d says it is %r" % (u64_be(k[5:]),
                                                                          shop.get("id")))
            shops.append(shop)
        else:
            raise corrupt("network: unknown key %s" % k.hex())
    return self_, net, shops


def read_items(txn, dbs, name, classes):
    """(code, id) -> record of one database of item records, each of a class in classes."""
    out = {}
    for k, v in records(txn, dbs, name):
        if name == "local" and k == b"next_id":
            continue
        code, id_ = item_key(k, name)
        if BY_CODE[code][1] not in classes:
            raise corrupt("%s: an item of %s type %s" % (name, BY_CODE[code][1],
                                                       BY_CODE[code][0]))
        out[(code, id_)] = item_record(v, "%s %s %d" % (name, BY_CODE[code][0], id_))
    return out


def read_next_id(txn, dbs):
    """"local": next_id, a u64 in the writer's (this host's) byte order; absent means 1."""
    if "local" not in dbs:
        return 1
    v = txn.get(b"next_id", db=dbs["local"])
    if v is None:
        return 1
    if len(v) != 8:
        raise corrupt("local: next_id is %d bytes" % len(v))
    return int.from_bytes(v, sys.byteorder)


def read_branch_state(txn, dbs):
    v = txn.get(b"state", db=dbs["branch"])
    if v is None:
        return None
    st = compact_json(v, "branch state")
    keys = {"continuous", "cursor", "head", "linked", "shop", "switch", "sync_seq", "types",
            "unlinked"}
    if set(st) != keys:
        raise corrupt("branch state has keys %s" % sorted(st))
    c = txn.get(b"chain", db=dbs["branch"])
    if c is None or len(c) != 8:
        raise corrupt("branch chain is missing or not 8 bytes")
    st["chain"] = "%016x" % u64_be(c)
    return st


def read_copies(txn, dbs, st, items):
    """Branch invariants 1 to 4; returns the copies as JSON, in origin-index order."""
    mirror, dirty, origin = {}, set(), {}
    for k, v in records(txn, dbs, "mirror"):
        code, h = item_key(k, "mirror")
        rec = item_record(v, "mirror %s %d" % (BY_CODE[code][0], h))
        if BY_CODE[code][1] != "synced" or rec["origin"] or rec["detached_from"]:
            raise corrupt("mirror %s %d: not a head-office catalog record" % (BY_CODE[code][0], h))
        mirror[(code, h)] = rec
    for k, v in records(txn, dbs, "dirty"):
        key = item_key(k, "dirty")
        if v != b"" or key not in mirror:
            raise corrupt("dirty %s %d: not empty, or not a mirror entry" % (BY_CODE[key[0]][0],
                                                                            key[1]))
        dirty.add(key)
    for k, v in records(txn, dbs, "origin"):
        code, h = item_key(k, "origin")
        if len(v) != 8 or (code, h) not in mirror:
            raise corrupt("origin %s %d: not 8 bytes, or not a mirror entry"
                          % (BY_CODE[code][0], h))
        origin[(code, h)] = u64_be(v)
    if len(set(origin.values())) != len(origin):
        raise corrupt("origin: two head-office items share a copy")
    inverse = {(code, c): h for (code, h), c in origin.items()}
    for (code, id_), rec in items.items():
        if rec["origin"] is not None and (rec["origin"][0] != st["head"] or
                                          inverse.get((code, id_)) != rec["origin"][1]):
            raise corrupt("items %s %d: a copy the origin index does not name"
                          % (BY_CODE[code][0], id_))
    copies = []
    for (code, h), c in origin.items():
        name = BY_CODE[code][0]
        rec = items.get((code, c))
        lk = rec and (rec["detached_from"] if st["unlinked"] else rec["origin"])
        if lk is None or lk[0] != st["head"] or lk[1] != h:
            raise corrupt("origin %s %d -> %d: the copy does not link back" % (name, h, c))
        m = mirror[(code, h)]
        if (code, h) not in dirty and (rec["archived"] != m["archived"] or lk[2] != m["version"]):
            raise corrupt("copy %s %d: behind its mirror entry, which is not dirty" % (name, c))
        copies.append({"type": name, "id": c, "head_id": h, "version": rec["version"],
                       "archived": rec["archived"], "origin": link_json(lk),
                       "mirror_version": m["version"]})
    for key in mirror:
        if key not in dirty and key not in origin:
            raise corrupt("mirror %s %d: neither dirty nor copied" % (BY_CODE[key[0]][0], key[1]))
    dirty_json = [{"type": BY_CODE[c][0], "head_id": h} for c, h in sorted(dirty)]
    return copies, dirty_json, len(mirror)


def read_state(txn, dbs):
    """--state: the object docs/storage.md, "Reading a branch from another program" describes."""
    self_, net, shops = read_network(txn, dbs)
    items = read_items(txn, dbs, "items", ("synced", "shared"))
    local = read_items(txn, dbs, "local", ("local",))
    out = {"self": self_, "engine_digest": digest(txn, dbs, ("items", "network")),
           "next_id": read_next_id(txn, dbs)}
    if net is not None or shops:
        out["net"], out["shops"] = net, shops
    st = read_branch_state(txn, dbs) if "branch" in dbs else None
    if st is not None:
        out["branch"] = st
        out["branch_digest"] = digest(txn, dbs, ("items", "origin", "mirror", "dirty", "branch"))
        out["copies"], out["dirty"], out["mirror"] = read_copies(txn, dbs, st, items)
    out["items"] = [item_json(c, i, r) for (c, i), r in sorted(items.items())]
    out["local"] = [item_json(c, i, r) for (c, i), r in sorted(local.items())]
    return out


# ---- records outside the state (docs/storage.md, "Engine records outside the state", "The
# branch node's records") ----------------------------------------------------------------------

SALT_BYTES, KEY_BYTES, DECOY_BYTES = 16, 32, 32
SECRET_BYTES_MAX, REQ_BYTES, MESSAGE_BYTES_MAX, HEAD_BYTES_MAX = 192, 16, 255, 255
CODES = ("ok", "version_conflict", "invalid_input", "forbidden", "not_found",
         "dangling_reference", "unknown_type", "not_in_network")
SHARED = {name for name, _, cls in TYPES if cls == "shared"}
ARGON2_MARK = b"$argon2"  # every argon2 hash string (crypto_pwhash_str) starts with it


class Refused(Exception):
    pass


def small_map(v, where, size_max=None):
    """One msgpack map, nothing after it; its str keys (the first of a repeated one), others
    ignored."""
    if size_max is not None and len(v) > size_max:
        raise corrupt("%s: %d bytes, over %d" % (where, len(v), size_max))
    try:
        obj = msgpack.unpackb(v, raw=False, strict_map_key=False, object_pairs_hook=Map,
                              use_list=True, timestamp=0)
    except Exception as e:
        raise corrupt("%s: not one msgpack value: %s" % (where, e))
    if not isinstance(obj, Map):
        raise corrupt("%s: not a map" % where)
    out = {}
    for k, x in obj:
        if type(k) is str and k not in out:
            out[k] = x
    return out


def want(rec, key, kind, where, size=None):
    """rec[key] of a documented kind: "uint", "str", "bool", "bin" (of size bytes), "map"."""
    if key not in rec:
        raise corrupt("%s: no %s" % (where, key))
    x = rec[key]
    ok = {"uint": type(x) is int and x >= 0, "str": type(x) is str, "bool": type(x) is bool,
          "bin": type(x) is bytes and (size is None or len(x) == size),
          "map": isinstance(x, Map)}[kind]
    if not ok:
        raise corrupt("%s: %s is not %s%s" % (where, key, kind,
                                             "" if size is None else " of %d bytes" % size))
    return x


def keys_from_password(password, salt, ops, mem):
    """docs/storage.md "secrets": SaltedPassword = argon2id13(password, salt, ops, mem, 32
    bytes); ClientKey = HMAC-SHA-256(SaltedPassword, "Client Key"), StoredKey =
    SHA-256(ClientKey), ServerKey = HMAC-SHA-256(SaltedPassword, "Server Key")."""
    try:
        import nacl.pwhash
    except ImportError as e:
        sys.stderr.write("storage_reader: %s; install python3-nacl\n" % e)
        sys.exit(EXIT_USAGE)
    sp = nacl.pwhash.argon2id.kdf(32, password, salt, opslimit=ops, memlimit=mem)
    ck = hmac.new(sp, b"Client Key", hashlib.sha256).digest()
    return {"client_key": ck, "stored_key": hashlib.sha256(ck).digest(),
            "server_key": hmac.new(sp, b"Server Key", hashlib.sha256).digest()}


def read_secrets(txn, dbs):
    """`secrets`: shop u64 BE -> the 6-key record (layout v 1); `decoy` -> 32 raw bytes."""
    recs, decoy = {}, None
    for k, v in records(txn, dbs, "secrets"):
        if k == b"decoy":
            if len(v) != DECOY_BYTES:
                raise corrupt("secrets: the decoy is %d bytes" % len(v))
            decoy = v
            continue
        if len(k) != 8:
            raise corrupt("secrets: key %s is neither a shop id nor decoy" % k.hex())
        shop, where = u64_be(k), "secrets %d" % u64_be(k)
        r = small_map(v, where, SECRET_BYTES_MAX)
        if want(r, "v", "uint", where) != 1:
            raise corrupt("%s: layout %d (this reader knows 1)" % (where, r["v"]))
        recs[shop] = {"salt": want(r, "salt", "bin", where, SALT_BYTES),
                      "ops": want(r, "ops", "uint", where), "mem": want(r, "mem", "uint", where),
                      "stored_key": want(r, "stored_key", "bin", where, KEY_BYTES),
                      "server_key": want(r, "server_key", "bin", where, KEY_BYTES)}
    return recs, decoy


def read_status(txn, dbs, shops):
    """`status`: shop u64 BE -> {cursor, last_seen, connected, outbox}, only for shops in
    `network`; `outbox` is optional (a branch that never reported it, or a record written before
    the key existed) and None when absent."""
    out = []
    for k, v in records(txn, dbs, "status"):
        if len(k) != 8:
            raise corrupt("status: key %s is not a shop id" % k.hex())
        shop, where = u64_be(k), "status %d" % u64_be(k)
        if shop not in shops:
            raise corrupt("%s: no shop: record in network" % where)
        r = small_map(v, where)
        out.append({"shop": shop, "cursor": want(r, "cursor", "uint", where),
                    "last_seen": want(r, "last_seen", "uint", where),
                    "connected": want(r, "connected", "bool", where),
                    "outbox": want(r, "outbox", "uint", where) if "outbox" in r else None})
    return out


def answer(r, where):
    """The code and message of a `requests` or `rejected` value."""
    code, msg = want(r, "code", "str", where), want(r, "message", "str", where)
    if code not in CODES or len(msg.encode("utf-8", "surrogateescape")) > MESSAGE_BYTES_MAX:
        raise corrupt("%s: code %r, or a message over %d bytes" % (where, code,
                                                                  MESSAGE_BYTES_MAX))
    return code, msg


def read_requests(txn, dbs):
    """`requests`: branch u64 BE + req (24 bytes) -> {code, message, id, version, seq}."""
    out = []
    for k, v in records(txn, dbs, "requests"):
        if len(k) != 8 + REQ_BYTES:
            raise corrupt("requests: key %s is not 24 bytes" % k.hex())
        where = "requests %d/%s" % (u64_be(k[:8]), k[8:].hex())
        r = small_map(v, where)
        code, msg = answer(r, where)
        a = {"branch": u64_be(k[:8]), "req": k[8:].hex(), "code": code, "message": msg,
             "id": want(r, "id", "uint", where), "version": want(r, "version", "uint", where),
             "seq": want(r, "seq", "uint", where)}
        if (code == "ok") != (a["version"] > 0 and a["seq"] > 0) or (code == "ok" and msg):
            raise corrupt("%s: an answer %s with version %d, seq %d and message %r"
                          % (where, code, a["version"], a["seq"], msg))
        out.append(a)
    return out


def outbox_entry(v, where):
    """An `outbox` value: {kind, type, id, version, expect, fields, req bin16 (or none)}."""
    r = small_map(v, where)
    kind, type_ = want(r, "kind", "str", where), want(r, "type", "str", where)
    if kind not in ("put", "delete") or type_ not in SHARED:
        raise corrupt("%s: a %r of %r, not a put or delete of a shared type"
                      % (where, kind, type_))
    req = want(r, "req", "bin", where, REQ_BYTES).hex() if "req" in r else None
    return {"kind": kind, "type": type_, "id": want(r, "id", "uint", where),
            "version": want(r, "version", "uint", where),
            "expect": want(r, "expect", "uint", where),
            "fields": to_json(want(r, "fields", "map", where)), "req": req}


def read_outbox(txn, dbs):
    out = []
    for k, v in records(txn, dbs, "outbox"):
        if len(k) != 8:
            raise corrupt("outbox: key %s is not a counter" % k.hex())
        e = outbox_entry(v, "outbox %d" % u64_be(k))
        e["key"] = u64_be(k)
        out.append(e)
    return out


def read_rejected(txn, dbs):
    """`rejected`: counter u64 BE -> {code, message, entry: an outbox value as bin}."""
    out = []
    for k, v in records(txn, dbs, "rejected"):
        if len(k) != 8:
            raise corrupt("rejected: key %s is not a counter" % k.hex())
        where = "rejected %d" % u64_be(k)
        r = small_map(v, where)
        code, msg = answer(r, where)
        if code == "ok":
            raise corrupt("%s: a refusal with code ok" % where)
        out.append({"key": u64_be(k), "code": code, "message": msg,
                    "entry": outbox_entry(want(r, "entry", "bin", where), where + " entry")})
    return out


def read_netlink(txn, dbs):
    """`netlink`: `link` -> {head, shop, log_id, salt, ops, mem, client_key, server_key}, and
    `state` (what the node saw, for `chainsync status`) -> {connected, head_seq, contact_ms,
    last_error}, kept under the link's "state" (None when absent)."""
    out, state = None, None
    for k, v in records(txn, dbs, "netlink"):
        if k == b"state":
            r = small_map(v, "netlink state")
            state = {"connected": want(r, "connected", "uint", "netlink state"),
                     "head_seq": want(r, "head_seq", "uint", "netlink state"),
                     "contact_ms": want(r, "contact_ms", "uint", "netlink state"),
                     "last_error": want(r, "last_error", "str", "netlink state")}
            if state["connected"] > 1 or len(state["last_error"].encode()) > HEAD_BYTES_MAX:
                raise corrupt("netlink state: connected is 0 or 1, last_error under 256 bytes")
            continue
        if k != b"link":
            raise corrupt("netlink: unknown key %s" % k.hex())
        r = small_map(v, "netlink")
        head = want(r, "head", "str", "netlink")
        if len(head.encode("utf-8", "surrogateescape")) > HEAD_BYTES_MAX:
            raise corrupt("netlink: head is over %d bytes" % HEAD_BYTES_MAX)
        out = {"head": head, "shop": want(r, "shop", "uint", "netlink"),
               "log_id": want(r, "log_id", "uint", "netlink"),
               "salt": want(r, "salt", "bin", "netlink", SALT_BYTES),
               "ops": want(r, "ops", "uint", "netlink"), "mem": want(r, "mem", "uint", "netlink"),
               "client_key": want(r, "client_key", "bin", "netlink", KEY_BYTES),
               "server_key": want(r, "server_key", "bin", "netlink", KEY_BYTES)}
    if state is not None and out is None:
        raise corrupt("netlink: a node state without a link")
    if out is not None:
        out["state"] = state
    return out


def read_node_lock(path):
    """`node.lock`: an empty file, flock'ed while a branch node runs. Probed with a shared lock
    released at once; never created."""
    p = os.path.join(path, "node.lock")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
            raise corrupt("node.lock: not an empty file")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            held = False
        except BlockingIOError:
            held = True
        return {"bytes": st.st_size, "mode": "%04o" % stat.S_IMODE(st.st_mode), "held": held}
    finally:
        os.close(fd)


def all_records(env, txn):
    """(database name, key, value) of every record of every named database, and the main
    database's own records (the names, with "" as their database)."""
    out = []
    for name, _ in list(txn.cursor()):
        out.append(("", name, b""))
        try:
            db = env.open_db(name, txn=txn, create=False)
        except lmdb.Error:
            continue
        for k, v in txn.cursor(db=db):
            out.append((name.decode("utf-8", "replace"), k, v))
    return out


def check_r9(env, txn, path, secret_bytes, password):
    """R9: no argon2 hash string in any database; each secret in its own record only (never in
    `events`); the password in no database and in no file of the directory (free pages too)."""
    recs = all_records(env, txn)
    for db, k, v in recs:
        where = db or "the main database"
        if ARGON2_MARK in k or ARGON2_MARK in v:
            raise corrupt("R9: %s holds an argon2 hash string" % where)
        if password and (password in k or password in v):
            raise corrupt("R9: %s holds the password" % where)
        for what, home, key, b in secret_bytes:
            if (db, k) != (home, key) and (b in k or b in v):
                raise corrupt("R9: %s (of %s) appears in %s" % (what, home, where))
    files = []
    if password:
        for name in sorted(os.listdir(path)):
            p = os.path.join(path, name)
            if not os.path.isfile(p):
                continue
            with open(p, "rb") as f:
                if password in f.read():
                    raise corrupt("R9: the file %s holds the password" % name)
            files.append(name)
    return {"records": len(recs), "files": files}


def read_secrets_view(env, txn, dbs, path, password, shop):
    """--secrets: the object the module's docstring describes; Refused on a wrong password."""
    _, _, shop_recs = read_network(txn, dbs)
    recs, decoy = read_secrets(txn, dbs)
    link_ = read_netlink(txn, dbs)
    st = read_branch_state(txn, dbs) if "branch" in dbs else None
    if link_ is not None and st is not None and link_["shop"] != st["shop"]:
        raise corrupt("netlink: shop %d, but the branch is shop %d" % (link_["shop"], st["shop"]))
    out = {"secrets": [{"shop": s, "v": 1, "salt": r["salt"].hex(), "ops": r["ops"],
                        "mem": r["mem"]} for s, r in sorted(recs.items())],
           "decoy": decoy is not None,
           "status": read_status(txn, dbs, {s["id"] for s in shop_recs}),
           "requests": read_requests(txn, dbs),
           "outbox": read_outbox(txn, dbs),
           "rejected": read_rejected(txn, dbs),
           "netlink": None if link_ is None else {
               "head": link_["head"], "shop": link_["shop"], "log_id": "%016x" % link_["log_id"],
               "salt": link_["salt"].hex(), "ops": link_["ops"], "mem": link_["mem"],
               "state": link_["state"]},
           "node_lock": read_node_lock(path)}
    secret_bytes = [("the decoy", "secrets", b"decoy", decoy)] if decoy else []
    for s, r in recs.items():
        for f in ("salt", "stored_key", "server_key"):
            secret_bytes.append(("shop %d's %s" % (s, f), "secrets", be_u64(s), r[f]))
    if link_ is not None:
        for f in ("salt", "client_key", "server_key"):
            secret_bytes.append(("the link's %s" % f, "netlink", b"link", link_[f]))
    if password is not None:
        if link_ is not None and (shop is None or shop == link_["shop"]):
            who, whose, r = "netlink", link_["shop"], link_
            fields = ("client_key", "server_key")
        elif shop is not None and shop in recs:
            who, whose, r = "secrets", shop, recs[shop]
            fields = ("stored_key", "server_key")
        else:
            raise Refused("no password keys of shop %s in %s" % (shop, path))
        k = keys_from_password(password, r["salt"], r["ops"], r["mem"])
        bad = [f for f in fields if not hmac.compare_digest(k[f], r[f])]
        if bad:
            raise Refused("%s of shop %d: the password does not give its %s"
                          % (who, whose, " and ".join(bad)))
        out["password"] = {"record": who, "shop": whose, "checked": list(fields)}
    out["r9"] = check_r9(env, txn, path, secret_bytes, password)
    return out


USAGE = ("usage: storage_reader.py [--json] [--times] [--state] [--types] [--no-lock]\n"
         "                         [--secrets [--password PW] [--shop ID]] DIR\n")


def main(argv):
    args, flags, opts, i = [], set(), {}, 0
    while i < len(argv):
        a = argv[i]
        if a in ("--password", "--shop"):
            if i + 1 == len(argv):
                sys.stderr.write(USAGE)
                return EXIT_USAGE
            opts[a] = argv[i + 1]
            i += 2
            continue
        if a.startswith("--"):
            flags.add(a)
        else:
            args.append(a)
        i += 1
    if "--types" in flags:
        print(json.dumps([{"name": n, "code": c, "class": k} for n, c, k in TYPES]))
        return 0
    shop = opts.get("--shop")
    if (len(args) != 1 or flags - {"--json", "--times", "--state", "--no-lock", "--secrets"} or
            (opts and "--secrets" not in flags) or (shop is not None and not shop.isdigit())):
        sys.stderr.write(USAGE)
        return EXIT_USAGE
    password = opts["--password"].encode("utf-8") if "--password" in opts else None
    shop = int(shop) if shop is not None else None
    sys.stdout.reconfigure(encoding="utf-8")
    as_json = "--json" in flags
    status = sys.stderr if as_json or flags & {"--state", "--secrets"} else sys.stdout
    try:
        env, dbs = open_env(args[0], lock="--no-lock" not in flags)
    except OSError as e:
        sys.stderr.write("storage_reader: %s\n" % e)
        return EXIT_STORAGE
    try:
        with env.begin(buffers=False) as txn:  # one snapshot for the whole walk
            check_format(txn, dbs["meta"])
            start = log_start(txn, dbs["meta"])
            n, times, last_chain = walk(txn, dbs["events"], as_json, start)
            check_head(txn, dbs["meta"], n, last_chain)
            if "--times" in flags:
                check_times(txn, dbs["times"], times)
            if "--state" in flags:
                state = read_state(txn, open_layer_dbs(env, txn))
                sys.stdout.write(json.dumps(state, separators=(",", ":"), ensure_ascii=False,
                                            allow_nan=False) + "\n")
            if "--secrets" in flags:
                view = read_secrets_view(env, txn, open_layer_dbs(env, txn), args[0], password,
                                         shop)
                sys.stdout.write(json.dumps(view, separators=(",", ":"), ensure_ascii=False,
                                            allow_nan=False) + "\n")
    except Refused as e:
        sys.stdout.flush()
        sys.stderr.write("auth_failed: %s\n" % e)
        return EXIT_REFUSED
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
    if start[0] > 1:
        status.write("ok %d events, %d to %d (cut before %d)\n" % (n - start[0] + 1, start[0], n,
                                                                    start[0]))
    else:
        status.write("ok %d events\n" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
