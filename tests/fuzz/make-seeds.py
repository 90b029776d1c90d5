#!/usr/bin/python3
# make-seeds.py: writes the seed corpora of tests/fuzz/<target>/corpus from real data: an
# export of a small network made with the CLI (run tests/fuzz/make-seeds.sh, which makes it
# and calls this with its directory), cut into events, segments and frames as each target
# takes them. Kept so the seeds can be made again when the formats change.
import json, os, struct, sys
import msgpack

S = sys.argv[1]
base = os.path.dirname(os.path.abspath(__file__)) + '/'

def segs(path):
    d = open(path, 'rb').read(); out = []; off = 0
    while off < len(d):
        body = struct.unpack('>I', d[off + 28:off + 32])[0]
        out.append(d[off:off + 40 + body]); off += 40 + body
    return d, out

def records(seg):
    b = seg[40:]; pos = 0; r = []
    while pos < len(b):
        v = struct.unpack('>I', b[pos:pos + 4])[0]; r.append(b[pos + 4 + 16:pos + 4 + v]); pos += 4 + v
    return r

def put(target, name, data):
    open(base + target + '/corpus/' + name, 'wb').write(data)

full, ss = segs(S + '/hq2.seg')
for i, e in enumerate(records(ss[0])):
    put('event', 'event-%02d' % (i + 1), e)
hq, _ = segs(S + '/hq.seg')
tail, _ = segs(S + '/tail.seg')
# segment: mode byte (bit 0 fix checksums, bit 1 import), shop id u64 BE, the file
shop = int(open(S + '/branch-id').read())
head = int(open(S + '/head-id').read())
b, h = struct.pack('>Q', shop), struct.pack('>Q', head)
put('segment', 'import-fixed-hq2', b'\x03' + b + full)
put('segment', 'import-raw-hq', b'\x02' + b + hq)
put('segment', 'import-head-shop', b'\x02' + h + hq)
put('segment', 'import-gap-tail', b'\x02' + b + tail)
put('segment', 'decode-only-hq2', b'\x00' + b + full)
put('segment', 'import-cut', b'\x02' + b + full[:-7])

def frame(t, body):
    return struct.pack('>I', 1 + len(body)) + bytes([t]) + body

hello = frame(1, msgpack.packb({'proto': [1, 1], 'shop': shop, 'nonce': b'\x01' * 32, 'mode': 'follow'}))
chal = frame(2, msgpack.packb({'proto': 1, 'nonce': b'\x02' * 32, 'salt': b'\x03' * 16, 'ops': 2,
                               'mem': 65536 * 1024, 'log_id': 123}))
proof = frame(3, msgpack.packb({'proof': b'\x04' * 32}))
start = frame(5, msgpack.packb({'cursor': 0, 'chain': 0}))
ack = frame(0x11, msgpack.packb({'cursor': 3}))
ping = frame(0x12, msgpack.packb({}))
err = frame(0x7f, msgpack.packb({'code': 'auth_failed', 'message': 'wrong password'}))
segf = frame(0x10, b'\xc6' + struct.pack('>I', len(ss[0])) + ss[0])
# frame: read-size seed, limit selector, then the stream
put('frame', 'handshake', b'\x07\x00' + hello + chal + proof + start)
put('frame', 'streaming', b'\x21\x01' + segf + ack + ping + err)
put('frame', 'over-limit', b'\x05\x02' + hello)
# handshake: mode (0 raw, 1 after WELCOME, 2 after START) + the bytes
put('handshake', 'hello-proof', b'\x00' + hello + proof)
put('handshake', 'after-welcome-start', b'\x01' + start + ack)
put('handshake', 'streaming', b'\x02' + ack + ping + err)
wr = msgpack.packb({'req': b'\x05' * 16, 'op': 'put', 'type': 'customer', 'id': 0,
                    'fields': {'name': 'Bia'}})
put('handshake', 'write', b'\x02' + frame(0x20, wr))
put('handshake', 'unknown-type', b'\x00' + frame(0x55, b'\x80'))
# put: type index (the schema table's order) + the JSON the CLI reads
types = [l.split()[0] for l in open(S + '/types').read().splitlines()]
for name, js in json.load(open(S + '/puts.json')):
    put('put', 'put-' + name, bytes([types.index(name)]) + json.dumps(js, ensure_ascii=False).encode())
