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
 */
#include "log/log_int.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define SEGMENT_VERSION 1u
static const uint8_t segment_magic[4] = {'C', 'S', 'S', 'G'};

static uint64_t segment_checksum(const uint8_t *header, const uint8_t *body, size_t body_len)
{
    return XXH3_64bits_withSeed(body, body_len, XXH3_64bits(header, 32));
}

static cs_err grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return CS_OK;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    uint8_t *p = realloc(*buf, c);
    if (!p)
        return CS_NO_MEMORY;
    *buf = p;
    *cap = c;
    return CS_OK;
}

cs_err cs_segment_encode(cs_log_reader *r, uint64_t first, uint64_t last_max, size_t bytes_max,
                         uint8_t **out, size_t *out_len, uint64_t *last_out)
{
    if (bytes_max > CS_SEGMENT_BYTES_MAX)
        bytes_max = CS_SEGMENT_BYTES_MAX;
    if (first == 0 || last_max < first || bytes_max < CS_SEGMENT_HEADER_BYTES + 4 + 17)
        return CS_INVALID_INPUT;
    uint8_t *buf = NULL;
    size_t cap = 0, len = CS_SEGMENT_HEADER_BYTES;
    uint32_t count = 0;
    cs_err err = cs_log_reader_seek(r, first);
    cs_log_record rec;
    while (err == CS_OK && count < CS_SEGMENT_EVENTS_MAX && first + count <= last_max) {
        if ((err = cs_log_reader_next(r, &rec)) != CS_OK)
            break;
        size_t vlen = CS_RECORD_HEADER_BYTES + rec.event_len;
        if (len + 4 + vlen > bytes_max) {
            if (count == 0)
                err = CS_INVALID_INPUT; /* not even one record fits the caller's bound */
            break;
        }
        if ((err = grow(&buf, &cap, len + 4 + vlen)) != CS_OK)
            break;
        cs__put_u32(buf + len, (uint32_t)vlen);
        cs__put_u64(buf + len + 4, rec.checksum);
        cs__put_u64(buf + len + 12, rec.chain);
        memcpy(buf + len + 4 + CS_RECORD_HEADER_BYTES, rec.event, rec.event_len);
        len += 4 + vlen;
        count++;
    }
    if (err == CS_NOT_FOUND && count > 0)
        err = CS_OK; /* reached the head */
    if (err != CS_OK) {
        free(buf);
        return err;
    }
    memcpy(buf, segment_magic, 4);
    buf[4] = 0, buf[5] = SEGMENT_VERSION, buf[6] = 0, buf[7] = 0;
    cs__put_u64(buf + 8, first);
    cs__put_u64(buf + 16, first + count - 1);
    cs__put_u32(buf + 24, count);
    cs__put_u32(buf + 28, (uint32_t)(len - CS_SEGMENT_HEADER_BYTES));
    cs__put_u64(buf + 32, segment_checksum(buf, buf + CS_SEGMENT_HEADER_BYTES,
                                           len - CS_SEGMENT_HEADER_BYTES));
    *out = buf;
    *out_len = len;
    *last_out = first + count - 1;
    return CS_OK;
}

cs_err cs_segment_size(const uint8_t *header, size_t len, size_t *size_out)
{
    if (len < CS_SEGMENT_HEADER_BYTES || memcmp(header, segment_magic, 4) != 0)
        return CS_CORRUPT;
    if (((uint32_t)header[4] << 8 | header[5]) != SEGMENT_VERSION)
        return CS_PROTOCOL_MISMATCH;
    /* No flag is defined: one set means a newer writer whose meaning we cannot know. */
    if (header[6] != 0 || header[7] != 0)
        return CS_PROTOCOL_MISMATCH;
    uint32_t body = cs__get_u32(header + 28);
    if (body > CS_SEGMENT_BYTES_MAX - CS_SEGMENT_HEADER_BYTES)
        return CS_CORRUPT;
    *size_out = CS_SEGMENT_HEADER_BYTES + body;
    return CS_OK;
}

cs_err cs_segment_open(const uint8_t *buf, size_t len, cs_segment_view *out)
{
    size_t size;
    cs_err err = cs_segment_size(buf, len, &size);
    if (err != CS_OK)
        return err;
    if (size != len)
        return CS_CORRUPT;
    cs_segment_view v = {
        .first = cs__get_u64(buf + 8),
        .last = cs__get_u64(buf + 16),
        .count = cs__get_u32(buf + 24),
        .body = buf + CS_SEGMENT_HEADER_BYTES,
        .body_len = len - CS_SEGMENT_HEADER_BYTES,
    };
    if (v.first == 0 || v.last < v.first || v.count == 0 || v.count > CS_SEGMENT_EVENTS_MAX ||
        v.last - v.first + 1 != v.count)
        return CS_CORRUPT;
    if (segment_checksum(buf, v.body, v.body_len) != cs__get_u64(buf + 32))
        return CS_CORRUPT;
    v.next_seq = v.first;
    *out = v;
    return CS_OK;
}

cs_err cs_segment_next(cs_segment_view *v, cs_log_record *out)
{
    if (v->pos == v->body_len)
        return v->next_seq == v->last + 1 ? CS_NOT_FOUND : CS_CORRUPT;
    if (v->next_seq > v->last || v->body_len - v->pos < 4)
        return CS_CORRUPT;
    uint32_t vlen = cs__get_u32(v->body + v->pos);
    if (vlen > v->body_len - v->pos - 4)
        return CS_CORRUPT;
    cs_log_record rec;
    if (cs__record_parse(v->next_seq, v->body + v->pos + 4, vlen, &rec) != CS_OK)
        return CS_CORRUPT;
    if (v->prev_chain_known && cs_log_chain(v->prev_chain, rec.checksum) != rec.chain)
        return CS_CORRUPT;
    v->pos += 4 + (size_t)vlen;
    v->next_seq++;
    v->prev_chain = rec.chain;
    v->prev_chain_known = true;
    *out = rec;
    return CS_OK;
}
