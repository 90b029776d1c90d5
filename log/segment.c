/*
 * segment.c: a contiguous range of stored records framed as one checksummed buffer, the unit
 * the server sends and `log export` writes (docs/storage.md, "segments").
 *
 * Layout (all integers big-endian):
 *   0  magic "CSSG"   4  version u16 (1)   6  flags u16 (0)
 *   8  first u64      16 last u64          24 count u32   28 body_bytes u32
 *   32 checksum u64 = XXH3_64bits_withSeed(body, body_bytes, XXH3_64bits(header[0..32)))
 *   40 body: count records, each = value_bytes u32, then the stored value as in `events`
 *      (checksum u64, chain u64, msgpack event).
 * The records keep their own checksums and chain, so a branch verifies each event exactly as
 * the head office stored it, and the segment checksum catches a torn or altered frame first.
 *
 * Invariants (segment_view_invariants_hold, asserted on both sides):
 *   1. first >= 1, last - first + 1 == count, 1 <= count <= CS_SEGMENT_EVENTS_MAX;
 *   2. encode: record i is the reader's seq first + i, and what it writes opens as that range;
 *   3. decode: never more records are handed out than the header counts, each at next_seq.
 * A CS_CORRUPT leaves the failed check in corrupt_at (CS_CORRUPT_AT).
 */
#include "log/log_int.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define SEGMENT_VERSION 1u
static const uint8_t segment_magic[4] = {'C', 'S', 'S', 'G'};

/* The header's fields, by offset (the layout above). */
enum {
    SEG_MAGIC = 0,
    SEG_VERSION = 4,
    SEG_FLAGS = 6,
    SEG_FIRST = 8,
    SEG_LAST = 16,
    SEG_COUNT = 24,
    SEG_BODY_BYTES = 28,
    SEG_CHECKSUM = 32,
};
_Static_assert(SEG_CHECKSUM == CS_SEGMENT_HEADER_SUMMED_BYTES, "the checksum follows what it sums");
_Static_assert(SEG_CHECKSUM + 8 == CS_SEGMENT_HEADER_BYTES, "the checksum ends the header");

/* A first encode buffer that holds a few small events; it doubles from there. */
#define SEGMENT_BUF_BYTES_INITIAL 4096u

static uint64_t segment_checksum(const uint8_t *header, const uint8_t *body, size_t body_len)
{
    return XXH3_64bits_withSeed(body, body_len,
                                XXH3_64bits(header, CS_SEGMENT_HEADER_SUMMED_BYTES));
}

static cs_err grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return CS_OK;
    size_t c = *cap ? *cap : SEGMENT_BUF_BYTES_INITIAL;
    while (c < need)
        c *= 2;
    uint8_t *p = realloc(*buf, c);
    if (!p)
        return CS_NO_MEMORY;
    *buf = p;
    *cap = c;
    return CS_OK;
}

/* Fills in the header of an encoded body of `count` records from `first`. */
static void encode_header(uint8_t *buf, size_t len, uint64_t first, uint32_t count)
{
    memcpy(buf + SEG_MAGIC, segment_magic, sizeof(segment_magic));
    cs_be16_put(buf + SEG_VERSION, SEGMENT_VERSION);
    cs_be16_put(buf + SEG_FLAGS, 0);
    cs_be64_put(buf + SEG_FIRST, first);
    cs_be64_put(buf + SEG_LAST, first + count - 1);
    cs_be32_put(buf + SEG_COUNT, count);
    cs_be32_put(buf + SEG_BODY_BYTES, (uint32_t)(len - CS_SEGMENT_HEADER_BYTES));
    cs_be64_put(buf + SEG_CHECKSUM, segment_checksum(buf, buf + CS_SEGMENT_HEADER_BYTES,
                                                     len - CS_SEGMENT_HEADER_BYTES));
}

cs_err cs_segment_encode(cs_log_reader *r, uint64_t first, uint64_t last_max, size_t bytes_max,
                         uint8_t **out, size_t *out_len, uint64_t *last_out)
{
    if (bytes_max > CS_SEGMENT_BYTES_MAX)
        bytes_max = CS_SEGMENT_BYTES_MAX;
    if (first == 0 || last_max < first || bytes_max < CS_SEGMENT_BYTES_MIN)
        return CS_INVALID_INPUT;
    uint8_t *buf = NULL;
    size_t cap = 0, len = CS_SEGMENT_HEADER_BYTES;
    uint32_t count = 0;
    cs_err err = cs_log_reader_seek(r, first);
    cs_log_record rec;
    while (err == CS_OK && count < CS_SEGMENT_EVENTS_MAX && first + count <= last_max) {
        if ((err = cs_log_reader_next(r, &rec)) != CS_OK)
            break;
        cs_assert(rec.seq == first + count); /* the reader checks the sequence has no gap */
        size_t vlen = CS_RECORD_HEADER_BYTES + rec.event_len;
        size_t rlen = CS_SEGMENT_RECORD_PREFIX_BYTES + vlen;
        if (len + rlen > bytes_max) {
            if (count == 0)
                err = CS_INVALID_INPUT; /* not even one record fits the caller's bound */
            break;
        }
        if ((err = grow(&buf, &cap, len + rlen)) != CS_OK)
            break;
        uint8_t *p = buf + len;
        cs_be32_put(p, (uint32_t)vlen);
        p += CS_SEGMENT_RECORD_PREFIX_BYTES;
        cs_be64_put(p, rec.checksum);
        cs_be64_put(p + 8, rec.chain);
        memcpy(p + CS_RECORD_HEADER_BYTES, rec.event, rec.event_len);
        len += rlen;
        count++;
    }
    if (err == CS_NOT_FOUND && count > 0)
        err = CS_OK; /* reached the head */
    if (err != CS_OK) {
        free(buf);
        return err;
    }
    cs_assert(count >= 1);
    cs_assert(count <= CS_SEGMENT_EVENTS_MAX);
    cs_assert(first + count - 1 <= last_max);
    cs_assert(len <= bytes_max);
    encode_header(buf, len, first, count);
#if CS_ASSERTS
    /* Both sides of the boundary: what was encoded opens as the range the reader gave. */
    cs_segment_view check;
    cs_assert(cs_segment_open(buf, len, &check) == CS_OK);
    cs_assert(check.first == first);
    cs_assert(check.last == first + count - 1);
    cs_assert(check.count == count);
#endif
    *out = buf;
    *out_len = len;
    *last_out = first + count - 1;
    return CS_OK;
}

cs_err cs_segment_size(const uint8_t *header, size_t len, size_t *size_out)
{
    if (len < CS_SEGMENT_HEADER_BYTES ||
        memcmp(header + SEG_MAGIC, segment_magic, sizeof(segment_magic)) != 0)
        return CS_CORRUPT;
    if (cs_be16_get(header + SEG_VERSION) != SEGMENT_VERSION)
        return CS_PROTOCOL_MISMATCH;
    /* No flag is defined: one set means a newer writer whose meaning we cannot know. */
    if (cs_be16_get(header + SEG_FLAGS) != 0)
        return CS_PROTOCOL_MISMATCH;
    uint32_t body = cs_be32_get(header + SEG_BODY_BYTES);
    if (body > CS_SEGMENT_BYTES_MAX - CS_SEGMENT_HEADER_BYTES)
        return CS_CORRUPT;
    *size_out = CS_SEGMENT_HEADER_BYTES + body;
    return CS_OK;
}

/* The view's header fields, as open decodes them; its range and count agree. */
static bool segment_view_invariants_hold(const cs_segment_view *v)
{
    /* next_seq - first counts the records read; unsigned, so a range ending at UINT64_MAX
     * (hostile, but not a bug of ours) wraps consistently. */
    return v->first >= 1 && v->last >= v->first && v->count >= 1 &&
           v->count <= CS_SEGMENT_EVENTS_MAX && v->last - v->first + 1 == v->count &&
           v->pos <= v->body_len && v->next_seq - v->first <= v->count;
}

/* The one exception to "out untouched on failure": a CS_CORRUPT sets out->corrupt_at alone. */
static cs_err segment_corrupt(cs_segment_view *out, const char *at)
{
    out->corrupt_at = at;
    return CS_CORRUPT;
}

cs_err cs_segment_open(const uint8_t *buf, size_t len, cs_segment_view *out)
{
    size_t size;
    cs_err err = cs_segment_size(buf, len, &size);
    if (err == CS_CORRUPT)
        return segment_corrupt(out, "magic or body size" CS_CORRUPT_AT);
    if (err != CS_OK)
        return err;
    if (size != len)
        return segment_corrupt(out, "size" CS_CORRUPT_AT);
    cs_segment_view v = {
        .first = cs_be64_get(buf + SEG_FIRST),
        .last = cs_be64_get(buf + SEG_LAST),
        .count = cs_be32_get(buf + SEG_COUNT),
        .body = buf + CS_SEGMENT_HEADER_BYTES,
        .body_len = len - CS_SEGMENT_HEADER_BYTES,
        .corrupt_at = "",
    };
    if (v.first == 0 || v.last < v.first || v.count == 0 || v.count > CS_SEGMENT_EVENTS_MAX ||
        v.last - v.first + 1 != v.count)
        return segment_corrupt(out, "range" CS_CORRUPT_AT);
    if (segment_checksum(buf, v.body, v.body_len) != cs_be64_get(buf + SEG_CHECKSUM))
        return segment_corrupt(out, "checksum" CS_CORRUPT_AT);
    v.next_seq = v.first;
    cs_assert(segment_view_invariants_hold(&v));
    *out = v;
    return CS_OK;
}

cs_err cs_segment_next(cs_segment_view *v, cs_log_record *out)
{
    cs_assert(segment_view_invariants_hold(v));
    if (v->pos == v->body_len) {
        if (v->next_seq == v->last + 1)
            return CS_NOT_FOUND;
        return segment_corrupt(v, "fewer records than its count" CS_CORRUPT_AT);
    }
    if (v->next_seq > v->last)
        return segment_corrupt(v, "more records than its count" CS_CORRUPT_AT);
    if (v->body_len - v->pos < CS_SEGMENT_RECORD_PREFIX_BYTES)
        return segment_corrupt(v, "record size cut" CS_CORRUPT_AT);
    const uint8_t *p = v->body + v->pos;
    uint32_t vlen = cs_be32_get(p);
    if (vlen > v->body_len - v->pos - CS_SEGMENT_RECORD_PREFIX_BYTES)
        return segment_corrupt(v, "record past the body" CS_CORRUPT_AT);
    cs_log_record rec;
    const char *why;
    if (cs__record_parse(v->next_seq, p + CS_SEGMENT_RECORD_PREFIX_BYTES, vlen, &rec, &why) !=
        CS_OK)
        return segment_corrupt(v, why);
    if (v->prev_chain_known && cs_log_chain(v->prev_chain, rec.checksum) != rec.chain)
        return segment_corrupt(v, "hash chain" CS_CORRUPT_AT);
    cs_assert(rec.seq == v->next_seq);
    v->pos += CS_SEGMENT_RECORD_PREFIX_BYTES + (size_t)vlen;
    v->next_seq++;
    v->prev_chain = rec.chain;
    v->prev_chain_known = true;
    cs_assert(segment_view_invariants_hold(v)); /* never more records than the count */
    *out = rec;
    return CS_OK;
}
