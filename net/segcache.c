/*
 * segcache.c: the server's cache of encoded SEGMENT frames, keyed by first sequence, so that a
 * segment is read from LMDB and encoded once and the same bytes are queued to every branch that
 * streams past it (SPEC 5; Redis's shared replication buffer is the model).
 *
 * Why sharing works: every connection asks for "the segment starting at my next sequence", and a
 * segment starting at `first` ends at the same place for everyone (the next multiple of
 * CS_NET_SEGMENT_EVENTS, the size limit, or the head when it was built). So branches catching up
 * from the same place walk the same chain of segments, and live branches share each new one.
 *
 * Invariants:
 *  1. Every entry's buf holds one reference owned by the cache; connections hold their own.
 *  2. bytes == the sum of the entries' buf->len.
 *  3. At most CS_NET_CACHE_ENTRIES_MAX entries; past CS_NET_CACHE_BYTES_MAX the oldest entries
 *     no connection references (refs == 1) are evicted first.
 */
#include "net/net_int.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry {
    cs__buf *buf;
    uint64_t used; /* the cache's clock when it was last handed out */
} entry;

struct cs__segcache {
    entry e[CS_NET_CACHE_ENTRIES_MAX];
    unsigned n;
    size_t bytes;
    uint64_t clock;
};

/* Invariants 1 and 2, and what every entry is: a segment frame of a non-empty range, handed
 * out no later than the cache's clock. */
static bool segcache_invariants_hold(const cs__segcache *c)
{
    size_t sum = 0;
    for (unsigned i = 0; i < c->n; i++) {
        const entry *e = &c->e[i];
        if (e->buf->refs < 1 || e->buf->first < 1 || e->buf->last < e->buf->first ||
            e->used > c->clock)
            return false;
        sum += e->buf->len;
    }
    return c->n <= CS_NET_CACHE_ENTRIES_MAX && sum == c->bytes;
}

cs_err cs__segcache_new(cs__segcache **out)
{
    cs__segcache *c = calloc(1, sizeof(*c));
    if (!c)
        return CS_NO_MEMORY;
    *out = c;
    return CS_OK;
}

void cs__segcache_free(cs__segcache *c)
{
    if (!c)
        return;
    for (unsigned i = 0; i < c->n; i++)
        cs__buf_unref(c->e[i].buf);
    free(c);
}

size_t cs__segcache_bytes(const cs__segcache *c)
{
    return c->bytes;
}

static void drop(cs__segcache *c, unsigned i)
{
    c->bytes -= c->e[i].buf->len;
    cs__buf_unref(c->e[i].buf);
    c->e[i] = c->e[--c->n];
}

/* Evicts least recently used entries nobody else holds until `need` more bytes and one more
 * entry fit. Entries still referenced stay: their memory is counted by the connections' send
 * queues, which are bounded on their own. */
static void make_room(cs__segcache *c, size_t need)
{
    while (c->n > 0 &&
           (c->n >= CS_NET_CACHE_ENTRIES_MAX || c->bytes + need > CS_NET_CACHE_BYTES_MAX)) {
        int victim = -1;
        for (unsigned i = 0; i < c->n; i++)
            if (c->e[i].buf->refs == 1 && (victim < 0 || c->e[i].used < c->e[victim].used))
                victim = (int)i;
        if (victim < 0)
            break;
        drop(c, (unsigned)victim);
    }
}

/* Encodes [first, last_max] as a SEGMENT frame: frame header, bin32 header, the segment. */
static cs_err encode(cs_log_reader *r, uint64_t first, uint64_t last_max, cs__buf **out)
{
    uint8_t *seg = NULL;
    size_t seg_len = 0;
    uint64_t last = 0;
    cs_err err =
        cs_segment_encode(r, first, last_max, CS_NET_SEGMENT_BYTES_MAX, &seg, &seg_len, &last);
    if (err != CS_OK)
        return err;
    cs_assert(last >= first);
    cs_assert(last <= last_max);
    cs__buf *b = cs__buf_new(CS_NET_FRAME_HEADER_BYTES + 5 + seg_len);
    if (!b) {
        free(seg);
        return CS_NO_MEMORY;
    }
    uint32_t flen = (uint32_t)(1 + 5 + seg_len);
    uint8_t *p = b->data;
    cs_be32_put(p, flen);
    p[4] = CS__F_SEGMENT;
    p[5] = 0xc6; /* msgpack bin 32 */
    cs_be32_put(p + 6, (uint32_t)seg_len);
    memcpy(p + 10, seg, seg_len);
    free(seg);
    b->first = first;
    b->last = last;
    *out = b;
    return CS_OK;
}

cs_err cs__segcache_get(cs__segcache *c, cs_log_reader *r, uint64_t first, uint64_t head,
                        cs__buf **out)
{
    cs_assert(first >= 1);
    cs_assert(first <= head);
    c->clock++;
    for (unsigned i = 0; i < c->n; i++) {
        if (c->e[i].buf->first == first) {
            /* Built when the head was at most today's (the head only grows): it ends in range. */
            cs_assert(c->e[i].buf->last <= head);
            c->e[i].used = c->clock;
            cs__buf_ref(c->e[i].buf);
            *out = c->e[i].buf;
            return CS_OK;
        }
    }
    uint64_t boundary = ((first - 1) / CS_NET_SEGMENT_EVENTS + 1) * CS_NET_SEGMENT_EVENTS;
    cs__buf *b;
    cs_err err = encode(r, first, boundary < head ? boundary : head, &b);
    if (err != CS_OK)
        return err;
    make_room(c, b->len);
    if (c->n < CS_NET_CACHE_ENTRIES_MAX) {
        c->e[c->n++] = (entry){.buf = b, .used = c->clock};
        c->bytes += b->len;
        cs__buf_ref(b); /* one for the cache, one for the caller */
    }
    cs_assert(segcache_invariants_hold(c));
    *out = b;
    return CS_OK;
}
