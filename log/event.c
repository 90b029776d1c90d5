/*
 * event.c: the msgpack form of an event (docs/storage.md, "event") and the bounds check that
 * every decoder of untrusted msgpack runs first.
 *
 * Why the check exists: msgpack-c's unpacker allocates a container's elements from the length
 * it reads, before it knows the input holds them, so six bytes can ask for ~128 GiB. We walk
 * the bytes first and refuse any container that claims more elements than bytes remain, or
 * that nests deeper than the caller allows; after that msgpack-c's allocation is bounded by a
 * small multiple of the input's size.
 *
 * Encoding writes into a buffer the caller owns and we grow, so the hot append path allocates
 * only when an event is larger than any before it.
 */
#include "log/log_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- strings and timestamps -------------------------------------------------------------- */

size_t cs_utf8_prefix(const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        /* Field text is mostly ASCII: eight bytes at a time while no high bit is set. */
        while (len - i >= 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i == len)
            break;
        uint8_t b = p[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t n;                     /* continuation bytes */
        uint8_t lo = 0x80, hi = 0xbf; /* the first one's range shuts out overlongs, surrogates */
        if (b >= 0xc2 && b <= 0xdf) {
            n = 1;
        } else if (b >= 0xe0 && b <= 0xef) {
            n = 2;
            lo = b == 0xe0 ? 0xa0 : 0x80;
            hi = b == 0xed ? 0x9f : 0xbf;
        } else if (b >= 0xf0 && b <= 0xf4) {
            n = 3;
            lo = b == 0xf0 ? 0x90 : 0x80;
            hi = b == 0xf4 ? 0x8f : 0xbf;
        } else {
            return i;
        }
        if (n > len - i - 1 || p[i + 1] < lo || p[i + 1] > hi)
            return i;
        for (size_t j = 2; j <= n; j++)
            if ((p[i + j] & 0xc0) != 0x80)
                return i;
        i += n + 1;
    }
    return i;
}

/* True when s is well-formed UTF-8 (no overlongs, no surrogates, at most U+10FFFF): msgpack's
 * str holds UTF-8, and strict readers (and JSON output) refuse anything else. Every str of
 * every event goes through here, mostly short ASCII keys: one OR over the bytes decides those
 * without a call, and only a string with a high bit set is walked character by character. */
__attribute__((always_inline)) static inline bool utf8_valid(const uint8_t *p, size_t len)
{
    /* Overlapping loads cover any length without a byte-by-byte tail (and read nothing outside
     * p[0..len)): words from the start and one ending at len; 4-byte halves below 8; the
     * first, middle and last byte below 4. */
    uint64_t acc = 0;
    if (len >= 8) {
        uint64_t w;
        for (size_t i = 0; i + 8 < len; i += 8) {
            memcpy(&w, p + i, 8);
            acc |= w;
        }
        memcpy(&w, p + len - 8, 8);
        acc |= w;
    } else if (len >= 4) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + len - 4, 4);
        acc = a | b;
    } else if (len > 0) {
        acc = (uint64_t)(p[0] | p[len / 2] | p[len - 1]);
    }
    if (!(acc & 0x8080808080808080ull))
        return true;
    return cs_utf8_prefix((const char *)p, len) == len;
}

/* The msgpack spec's timestamp, ext type -1: 4 bytes of seconds; 8 bytes of nanoseconds (30
 * bits) and seconds (34 bits); or 12 bytes, nanoseconds u32 then seconds i64. Nanoseconds are
 * below 10^9. Any other ext -1 is one strict readers (python-msgpack) refuse to decode. */
static bool timestamp_valid(const uint8_t *data, size_t len)
{
    if (len == 4)
        return true;
    if (len == 8)
        return (cs_be64_get(data) >> 34) < 1000000000u;
    if (len == 12)
        return cs_be32_get(data) < 1000000000u;
    return false;
}

/* The payload rules for a str (UTF-8) or an ext (type -1 is a timestamp) at p, whose header is
 * hdr bytes and payload `payload` bytes (an ext's type byte included); both fit the input. */
__attribute__((always_inline)) static inline bool payload_valid(const uint8_t *p, size_t hdr,
                                                                size_t payload)
{
    uint8_t b = p[0];
    if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb))
        return utf8_valid(p + hdr, payload);
    bool ext = (b >= 0xd4 && b <= 0xd8) || (b >= 0xc7 && b <= 0xc9);
    if (!ext || p[hdr] != 0xff)
        return true;
    return timestamp_valid(p + hdr + 1, payload - 1);
}

/* ---- bounds check ------------------------------------------------------------------------ */

/* Reads the header of the value at buf[0..len): its total header+payload size for scalars and
 * strings, or its header size and child count for containers. */
static cs_err check_header(const uint8_t *p, size_t len, size_t *hdr, uint64_t *payload,
                           uint64_t *children)
{
    uint8_t b = p[0];
    *payload = 0;
    *children = 0;
    *hdr = 1;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return CS_OK;
    if ((b & 0xf0) == 0x80) {
        *children = 2u * (b & 0x0f);
        return CS_OK;
    }
    if ((b & 0xf0) == 0x90) {
        *children = b & 0x0f;
        return CS_OK;
    }
    if ((b & 0xe0) == 0xa0) {
        *payload = b & 0x1f;
        return CS_OK;
    }
    /* Fixed-size scalars: the payload length follows from the type byte. */
    static const uint8_t fixed[32] = {
        [0x0a] = 4, [0x0b] = 8,                                     /* float 32/64 */
        [0x0c] = 1, [0x0d] = 2, [0x0e] = 4, [0x0f] = 8,             /* uint 8..64 */
        [0x10] = 1, [0x11] = 2, [0x12] = 4, [0x13] = 8,             /* int 8..64 */
        [0x14] = 2, [0x15] = 3, [0x16] = 5, [0x17] = 9, [0x18] = 17 /* fixext 1..16 */
    };
    uint8_t f = b - 0xc0;
    if (f < 32 && fixed[f]) {
        *payload = fixed[f];
        return CS_OK;
    }
    /* Variable sizes: n bytes of big-endian length after the type byte. */
    unsigned n;
    unsigned extra = 0; /* ext carries a type byte after its length */
    int kind;           /* 0 bytes payload, 1 array, 2 map */
    switch (b) {
    case 0xc4:
    case 0xd9:
        n = 1;
        kind = 0;
        break;
    case 0xc5:
    case 0xda:
        n = 2;
        kind = 0;
        break;
    case 0xc6:
    case 0xdb:
        n = 4;
        kind = 0;
        break;
    case 0xc7:
        n = 1;
        extra = 1;
        kind = 0;
        break;
    case 0xc8:
        n = 2;
        extra = 1;
        kind = 0;
        break;
    case 0xc9:
        n = 4;
        extra = 1;
        kind = 0;
        break;
    case 0xdc:
        n = 2;
        kind = 1;
        break;
    case 0xdd:
        n = 4;
        kind = 1;
        break;
    case 0xde:
        n = 2;
        kind = 2;
        break;
    case 0xdf:
        n = 4;
        kind = 2;
        break;
    default:
        return CS_CORRUPT; /* 0xc1 is never used */
    }
    if (len < 1 + n)
        return CS_CORRUPT;
    uint64_t v = n == 1 ? p[1] : n == 2 ? cs_be16_get(p + 1) : cs_be32_get(p + 1);
    *hdr = 1 + n;
    if (kind == 0)
        *payload = v + extra;
    else
        *children = kind == 2 ? 2 * v : v;
    return CS_OK;
}

/* Flags beside a size in scalar_bytes: the value's payload has rules of its own (SPEC 4). */
#define SB_STR 0x40u  /* fixstr: UTF-8 */
#define SB_EXT 0x80u  /* fixext: type -1 is a timestamp */
#define SB_SIZE 0x3fu /* the size itself */

/* The whole size in bytes of a value that the first byte alone determines (positive and negative
 * fixint, nil, bool, fixstr, fixed-width numbers, fixext); 0 for containers, variable-length
 * values and the unused 0xc1, which check_header handles. Must agree with check_header. */
/* clang-format off */
static const uint8_t scalar_bytes[256] = {
    [0x00 ... 0x7f] = 1,                                            /* positive fixint */
    /* fixstr: 1 + 0..31 */
    [0xa0] = 1 | SB_STR,  [0xa1] = 2 | SB_STR,  [0xa2] = 3 | SB_STR,  [0xa3] = 4 | SB_STR,
    [0xa4] = 5 | SB_STR,  [0xa5] = 6 | SB_STR,  [0xa6] = 7 | SB_STR,  [0xa7] = 8 | SB_STR,
    [0xa8] = 9 | SB_STR,  [0xa9] = 10 | SB_STR, [0xaa] = 11 | SB_STR, [0xab] = 12 | SB_STR,
    [0xac] = 13 | SB_STR, [0xad] = 14 | SB_STR, [0xae] = 15 | SB_STR, [0xaf] = 16 | SB_STR,
    [0xb0] = 17 | SB_STR, [0xb1] = 18 | SB_STR, [0xb2] = 19 | SB_STR, [0xb3] = 20 | SB_STR,
    [0xb4] = 21 | SB_STR, [0xb5] = 22 | SB_STR, [0xb6] = 23 | SB_STR, [0xb7] = 24 | SB_STR,
    [0xb8] = 25 | SB_STR, [0xb9] = 26 | SB_STR, [0xba] = 27 | SB_STR, [0xbb] = 28 | SB_STR,
    [0xbc] = 29 | SB_STR, [0xbd] = 30 | SB_STR, [0xbe] = 31 | SB_STR, [0xbf] = 32 | SB_STR,
    [0xc0] = 1,  [0xc2] = 1,  [0xc3] = 1,                           /* nil, false, true */
    [0xca] = 5,  [0xcb] = 9,                                        /* float 32, 64 */
    [0xcc] = 2,  [0xcd] = 3,  [0xce] = 5,  [0xcf] = 9,              /* uint 8..64 */
    [0xd0] = 2,  [0xd1] = 3,  [0xd2] = 5,  [0xd3] = 9,              /* int 8..64 */
    /* fixext 1..16 */
    [0xd4] = 3 | SB_EXT, [0xd5] = 4 | SB_EXT, [0xd6] = 6 | SB_EXT, [0xd7] = 10 | SB_EXT,
    [0xd8] = 18 | SB_EXT,
    [0xe0 ... 0xff] = 1,                                            /* negative fixint */
};
/* clang-format on */

cs_err cs_msgpack_check(const uint8_t *buf, size_t len, unsigned depth_max, size_t *value_len)
{
    /* `left` counts the values still to read in the innermost open container (1 for the top
     * value); `outer[d]` holds that count for the container enclosing depth d + 1, so the
     * innermost one stays in a register on the hot path. */
    uint64_t outer[CS_MSGPACK_DEPTH_MAX];
    uint64_t left = 1;
    unsigned depth = 0;
    size_t pos = 0;
    if (depth_max > CS_MSGPACK_DEPTH_MAX)
        depth_max = CS_MSGPACK_DEPTH_MAX;
    for (;;) {
        if (left == 0) {
            if (depth == 0) {
                *value_len = pos;
                return CS_OK;
            }
            left = outer[--depth];
            continue;
        }
        left--;
        if (pos >= len)
            return CS_CORRUPT;
        /* The fast path, for what catalog fields are mostly made of: a value whose size the
         * first byte gives. One table load instead of a branch per kind keeps the walk cheap. */
        unsigned t = scalar_bytes[buf[pos]];
        if (t != 0) {
            size_t sz = t & SB_SIZE;
            if (sz > len - pos)
                return CS_CORRUPT;
            /* One flag test keeps numbers, nil and bools on the path they had before. */
            if (t & SB_STR) {
                if (!utf8_valid(buf + pos + 1, sz - 1))
                    return CS_CORRUPT;
            } else if ((t & SB_EXT) && buf[pos + 1] == 0xff &&
                       !timestamp_valid(buf + pos + 2, sz - 2)) {
                return CS_CORRUPT;
            }
            pos += sz;
            continue;
        }
        size_t hdr;
        uint64_t payload, children;
        if (check_header(buf + pos, len - pos, &hdr, &payload, &children) != CS_OK)
            return CS_CORRUPT;
        if (payload > len - pos - hdr)
            return CS_CORRUPT;
        if (payload > 0 && !payload_valid(buf + pos, hdr, (size_t)payload))
            return CS_CORRUPT;
        pos += hdr + (size_t)payload;
        if (children == 0)
            continue;
        /* Each element needs at least one byte: a claim beyond the input is a lie. */
        if (children > len - pos || depth + 1 > depth_max)
            return CS_CORRUPT;
        outer[depth++] = left;
        left = children;
    }
}

/* ---- encoding ---------------------------------------------------------------------------- */

/* The envelope goes through msgpack-c's packer (its smallest form for every integer and string
 * length, as docs/storage.md says). What made it cost more than LMDB's put was the writer, not
 * the packer: a capacity check and a possible realloc for each of its ~20 tokens. So the buffer
 * is reserved once per event from an upper bound, and the writer is a bare memcpy. */

/* The envelope without its strings and fields: map header, the nine keys with their fixstr
 * headers (48 bytes), five uint64 at most 9 bytes each, three string headers at most 2 bytes
 * each (the strings are <= CS_EVENT_STR_BYTES_MAX, so str 8 at most), and the optional
 * `schema` key (7 bytes) with its uint32 (5 bytes at most). */
#define ENVELOPE_BYTES_MAX (1u + 48u + 5u * 9u + 3u * 2u + 7u + 5u)
_Static_assert(CS_EVENT_STR_BYTES_MAX <= 255, "event strings fit a str8 header");

typedef struct enc_buf {
    uint8_t *p; /* borrowed: reserved by cs__event_encode */
    size_t len;
    size_t cap;
} enc_buf;

static int enc_write(void *data, const char *src, size_t n)
{
    enc_buf *b = data;
    cs_assert(b->len + n <= b->cap); /* the reservation is an upper bound */
    uint8_t *dst = b->p + b->len;
    b->len += n;
    if (n > 16) {
        memcpy(dst, src, n);
        return 0;
    }
    /* Most tokens are 1 to 9 bytes: a short loop beats a call into memcpy for each. */
    for (size_t i = 0; i < n; i++)
        dst[i] = (uint8_t)src[i];
    return 0;
}

/* Makes buf hold at least `need` bytes, keeping its contents. */
static cs_err enc_reserve(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return CS_OK;
    size_t next = *cap ? *cap : 1024;
    while (next < need)
        next *= 2;
    uint8_t *p = realloc(*buf, next);
    if (!p)
        return CS_NO_MEMORY;
    *buf = p;
    *cap = next;
    return CS_OK;
}

#define PACK_KEY(pk, lit) msgpack_pack_str_with_body((pk), (lit), sizeof(lit) - 1)

/* The keys in their documented order (docs/storage.md), ending with the key `fields`: its value,
 * already msgpack, is copied after the envelope by the caller (store.c, straight into LMDB).
 * msgpack-c's pack calls cannot fail here: enc_write never does. */
static void encode_envelope(msgpack_packer *pk, const cs_event *ev, uint64_t seq, uint64_t time_ms)
{
    /* Version 1 is the absence of `schema`: every event written before the key existed reads
     * as what it is, and a version-1 event costs no byte more than it did. */
    bool schema = ev->schema > 1;
    msgpack_pack_map(pk, schema ? 10 : 9);
    PACK_KEY(pk, "seq");
    msgpack_pack_uint64(pk, seq);
    PACK_KEY(pk, "time");
    msgpack_pack_uint64(pk, time_ms);
    PACK_KEY(pk, "shop");
    msgpack_pack_uint64(pk, ev->shop);
    PACK_KEY(pk, "actor");
    msgpack_pack_str_with_body(pk, ev->actor.len ? ev->actor.ptr : "", ev->actor.len);
    PACK_KEY(pk, "kind");
    msgpack_pack_str_with_body(pk, ev->kind.ptr, ev->kind.len);
    PACK_KEY(pk, "type");
    msgpack_pack_str_with_body(pk, ev->type.len ? ev->type.ptr : "", ev->type.len);
    PACK_KEY(pk, "id");
    msgpack_pack_uint64(pk, ev->id);
    PACK_KEY(pk, "version");
    msgpack_pack_uint64(pk, ev->version);
    if (schema) {
        PACK_KEY(pk, "schema");
        msgpack_pack_uint32(pk, ev->schema);
    }
    PACK_KEY(pk, "fields");
}

cs_err cs__event_check(const cs_event *ev, const char **why)
{
    *why = "a string is over its limit or kind is empty";
    if (ev->actor.len > CS_EVENT_STR_BYTES_MAX || ev->kind.len > CS_EVENT_STR_BYTES_MAX ||
        ev->type.len > CS_EVENT_STR_BYTES_MAX || ev->kind.len == 0)
        return CS_INVALID_INPUT;
    *why = "actor, kind or type is not UTF-8";
    if (!utf8_valid((const uint8_t *)ev->actor.ptr, ev->actor.len) ||
        !utf8_valid((const uint8_t *)ev->kind.ptr, ev->kind.len) ||
        !utf8_valid((const uint8_t *)ev->type.ptr, ev->type.len))
        return CS_INVALID_INPUT;
    *why = "";
    if (ev->fields == NULL)
        return CS_OK;
    size_t vlen;
    *why = "its fields are empty or larger than an event";
    if (ev->fields_len == 0 || ev->fields_len > CS_EVENT_BYTES_MAX)
        return CS_INVALID_INPUT;
    /* The event map around the fields adds a level, and readers bound the whole event at
     * CS_MSGPACK_DEPTH_MAX: deeper fields would be stored as an event that verify calls corrupt
     * (docs/storage.md, "Nesting"). */
    *why = "its fields are not one msgpack value (a length past the end, nesting deeper than 15, "
           "a str that is not UTF-8 or an ext -1 that is not a timestamp)";
    if (cs_msgpack_check(ev->fields, ev->fields_len, CS_MSGPACK_DEPTH_MAX - 1, &vlen) != CS_OK ||
        vlen != ev->fields_len)
        return CS_INVALID_INPUT;
    uint8_t b = ev->fields[0];
    *why = "its fields are not a map";
    if ((b & 0xf0) != 0x80 && b != 0xde && b != 0xdf)
        return CS_INVALID_INPUT;
    *why = "";
    return CS_OK;
}

cs_err cs__event_encode_envelope(const cs_event *ev, uint64_t seq, uint64_t time_ms, uint8_t **buf,
                                 size_t *cap, size_t *len_out)
{
    /* cs__event_check ran first: the strings fit their headers. */
    cs_assert(ev->actor.len <= CS_EVENT_STR_BYTES_MAX);
    cs_assert(ev->kind.len <= CS_EVENT_STR_BYTES_MAX);
    cs_assert(ev->type.len <= CS_EVENT_STR_BYTES_MAX);
    size_t need = ENVELOPE_BYTES_MAX + ev->actor.len + ev->kind.len + ev->type.len;
    if (enc_reserve(buf, cap, need) != CS_OK)
        return CS_NO_MEMORY;
    enc_buf b = {*buf, 0, need};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, enc_write);
    encode_envelope(&pk, ev, seq, time_ms);
    *len_out = b.len;
    return CS_OK;
}

/* ---- decoding ---------------------------------------------------------------------------- */

struct cs_event_decoder {
    msgpack_zone zone;      /* owned: holds the objects of the last decode */
    const char *corrupt_at; /* static: the check that refused the last decode, or "" */
};

const char *cs_event_decoder_corrupt_at(const cs_event_decoder *dec)
{
    return dec->corrupt_at;
}

/* Returns CS_CORRUPT, noting which check said so (CS_CORRUPT_AT). */
static cs_err decode_corrupt(cs_event_decoder *dec, const char *at)
{
    dec->corrupt_at = at;
    return CS_CORRUPT;
}

cs_err cs_event_decoder_new(cs_event_decoder **out)
{
    cs_event_decoder *d = malloc(sizeof(*d));
    if (!d)
        return CS_NO_MEMORY;
    if (!msgpack_zone_init(&d->zone, 4096)) {
        free(d);
        return CS_NO_MEMORY;
    }
    d->corrupt_at = "";
    *out = d;
    return CS_OK;
}

void cs_event_decoder_free(cs_event_decoder *dec)
{
    if (!dec)
        return;
    msgpack_zone_destroy(&dec->zone);
    free(dec);
}

/* Which of the event's ten keys k is: its bit in the "seen" mask (0..9), or -1. By length
 * first: this runs for every key of every event a branch applies. */
static int key_index(const msgpack_object *k)
{
    if (k->type != MSGPACK_OBJECT_STR)
        return -1;
    const char *p = k->via.str.ptr;
    switch (k->via.str.size) {
    case 2:
        return memcmp(p, "id", 2) == 0 ? 3 : -1;
    case 3:
        return memcmp(p, "seq", 3) == 0 ? 0 : -1;
    case 4:
        return memcmp(p, "time", 4) == 0   ? 1
               : memcmp(p, "shop", 4) == 0 ? 2
               : memcmp(p, "kind", 4) == 0 ? 6
               : memcmp(p, "type", 4) == 0 ? 7
                                           : -1;
    case 5:
        return memcmp(p, "actor", 5) == 0 ? 5 : -1;
    case 6:
        return memcmp(p, "fields", 6) == 0 ? 8 : memcmp(p, "schema", 6) == 0 ? 9 : -1;
    case 7:
        return memcmp(p, "version", 7) == 0 ? 4 : -1;
    }
    return -1;
}

#define KEY_FIELDS 8
#define KEY_SCHEMA 9 /* optional: absent means schema version 1 */
#define KEYS_REQUIRED 0x1ffu

/* Stores one known key's value; returns the bit it sets in the "seen" mask, 0 when unknown. */
static unsigned decode_key(const msgpack_object_kv *kv, int idx, cs_event_view *ev, bool *bad)
{
    uint64_t *u64_dst[] = {&ev->seq, &ev->time_ms, &ev->shop, &ev->id, &ev->version};
    cs_str *str_dst[] = {&ev->actor, &ev->kind, &ev->type};
    if (idx < 0)
        return 0; /* unknown keys are ignored: a later format-1 writer may add some */
    if (idx < 5) {
        if (kv->val.type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            *bad = true;
        *u64_dst[idx] = kv->val.via.u64;
    } else if (idx == KEY_SCHEMA) {
        /* A positive integer: 0 names no version (version 1 is written by leaving it out). */
        if (kv->val.type != MSGPACK_OBJECT_POSITIVE_INTEGER || kv->val.via.u64 == 0)
            *bad = true;
        ev->schema = kv->val.via.u64;
    } else if (idx < KEY_FIELDS) {
        if (kv->val.type != MSGPACK_OBJECT_STR)
            *bad = true;
        /* msgpack-c may leave an empty string's pointer NULL: callers get "" instead. */
        str_dst[idx - 5]->ptr = kv->val.via.str.size ? kv->val.via.str.ptr : "";
        str_dst[idx - 5]->len = kv->val.via.str.size;
    } else {
        if (kv->val.type != MSGPACK_OBJECT_MAP)
            *bad = true;
        ev->fields = kv->val;
    }
    return 1u << idx;
}

/* One object of buf at *off through msgpack-c (which stops at its end and says EXTRA_BYTES when
 * more follows: that is expected inside the event's map). */
static cs_err unpack_at(cs_event_decoder *dec, const uint8_t *buf, size_t len, size_t *off,
                        msgpack_object *out)
{
    msgpack_unpack_return rc = msgpack_unpack((const char *)buf, len, off, &dec->zone, out);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
        return CS_NO_MEMORY;
    if (rc == MSGPACK_UNPACK_SUCCESS || rc == MSGPACK_UNPACK_EXTRA_BYTES)
        return CS_OK;
    return decode_corrupt(dec, CS_CORRUPT_AT); /* msgpack-c refused what the check passed */
}

/* The value of `fields` left as bytes: skipped over by the bounds check that already walked
 * it, and its map header checked, so that msgpack-c never builds objects nobody reads. */
static cs_err skip_fields(cs_event_decoder *dec, const uint8_t *buf, size_t len, size_t *off,
                          bool last, msgpack_object *out)
{
    size_t vlen = len - *off;
    /* The last value of the map ends where the event does (the whole-event check walked it;
     * cs_event_encode writes `fields` last); any other is walked again for its size. */
    if (!last && cs_msgpack_check(buf + *off, len - *off, CS_MSGPACK_DEPTH_MAX, &vlen) != CS_OK)
        return decode_corrupt(dec, CS_CORRUPT_AT); /* the whole-event check passed it */
    uint8_t b = buf[*off];
    out->type =
        (b & 0xf0) == 0x80 || b == 0xde || b == 0xdf ? MSGPACK_OBJECT_MAP : MSGPACK_OBJECT_NIL;
    out->via.map.size = 0;
    out->via.map.ptr = NULL;
    *off += vlen;
    return CS_OK;
}

static cs_err decode(cs_event_decoder *dec, const uint8_t *buf, size_t len, bool lazy,
                     cs_event_view *out)
{
    size_t vlen, hdr;
    uint64_t payload, children;
    dec->corrupt_at = "";
    if (len == 0 || len > CS_EVENT_BYTES_MAX)
        return decode_corrupt(dec, CS_CORRUPT_AT); /* the size an event can have */
    /* Lengths and nesting first (SPEC 4), then the map's header for its pair count. */
    if (cs_msgpack_check(buf, len, CS_MSGPACK_DEPTH_MAX, &vlen) != CS_OK || vlen != len ||
        check_header(buf, len, &hdr, &payload, &children) != CS_OK)
        return decode_corrupt(dec, CS_CORRUPT_AT); /* one bounded msgpack value */
    if ((buf[0] & 0xf0) != 0x80 && buf[0] != 0xde && buf[0] != 0xdf)
        return decode_corrupt(dec, CS_CORRUPT_AT); /* an event is a map */
    msgpack_zone_clear(&dec->zone);
    cs_event_view ev;
    memset(&ev, 0, sizeof(ev));
    ev.schema = 1;
    unsigned seen = 0;
    bool bad = false;
    size_t off = hdr;
    /* Pair by pair, so the byte range of `fields` is known: a branch stores those bytes as they
     * are instead of packing the decoded object again. */
    for (uint64_t i = 0; i < children / 2; i++) {
        msgpack_object_kv kv;
        cs_err err = unpack_at(dec, buf, len, &off, &kv.key);
        size_t start = off;
        int idx = err == CS_OK ? key_index(&kv.key) : -1;
        if (err == CS_OK)
            err = lazy && idx == KEY_FIELDS
                      ? skip_fields(dec, buf, len, &off, i + 1 == children / 2, &kv.val)
                      : unpack_at(dec, buf, len, &off, &kv.val);
        if (err != CS_OK)
            return err;
        unsigned bit = decode_key(&kv, idx, &ev, &bad);
        if (bit == 1u << KEY_FIELDS) {
            ev.fields_bytes = buf + start;
            ev.fields_len = off - start;
        }
        seen |= bit;
    }
    if (bad)
        return decode_corrupt(dec, CS_CORRUPT_AT); /* a known key of the wrong type */
    if ((seen & KEYS_REQUIRED) != KEYS_REQUIRED)
        return decode_corrupt(dec, CS_CORRUPT_AT); /* a key missing */
    if (off != len)
        return decode_corrupt(dec, CS_CORRUPT_AT); /* bytes after the map */
    *out = ev;
    return CS_OK;
}

cs_err cs_event_decode(cs_event_decoder *dec, const uint8_t *buf, size_t len, cs_event_view *out)
{
    return decode(dec, buf, len, false, out);
}

cs_err cs_event_decode_lazy(cs_event_decoder *dec, const uint8_t *buf, size_t len,
                            cs_event_view *out)
{
    return decode(dec, buf, len, true, out);
}
