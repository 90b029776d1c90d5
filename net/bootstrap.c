/*
 * bootstrap.c: a branch whose next event was cut from the head office's log (`log compact`),
 * a new branch included, is sent its snapshot part and then follows from the part's position
 * (docs/protocol.md "Bootstrap", docs/design.md "Retention and snapshots").
 *
 * Server side, per connection (c->boot):
 *
 *   START with cursor + 1 < start --cs__boot_start--> SNAPSHOT queued, part in memory
 *     --cs__boot_pump (from the stream's pump, while the send queue is below its high-water
 *       mark)--> SNAPSHOT_CHUNK ... --> SNAPSHOT_END queued, part freed, segments from seq + 1
 *
 * Branch side (cs__boot_rx): SNAPSHOT allocates the announced size (bounded), each chunk is
 * checked against its checksum and its place, END checks the part whole (cs_snapshot_parse)
 * and applies it in one transaction: a connection lost or a process killed before END leaves
 * the branch as it was, and it starts over on the next connection.
 */
#include "net/net_int.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

typedef struct cs__boot_tx {
    uint8_t *buf; /* the part, owned */
    size_t len, off;
    uint32_t index; /* the next chunk */
    uint64_t seq;
} cs__boot_tx;

void cs__boot_free(cs__conn *c)
{
    if (!c->boot)
        return;
    free(c->boot->buf);
    free(c->boot);
    c->boot = NULL;
}

static bool boot_send(cs__conn *c, cs__pk *p, unsigned type)
{
    cs__buf *b = cs__pk_frame(p, type);
    cs__pk_destroy(p);
    if (!b) {
        cs__conn_close(c, CS_NO_MEMORY, "out of memory", true);
        return false;
    }
    cs__conn_send(c, b);
    cs__buf_unref(b);
    return c->state != CS__C_CLOSING;
}

cs_err cs__boot_start(cs__conn *c, uint64_t cursor, bool *needed, uint64_t *seq_out, char *m,
                      size_t mlen)
{
    cs_log_reader *r;
    cs_log_start st = {.seq = 1};
    cs_err err = cs_log_reader_open(c->srv->log, &r);
    if (err == CS_OK)
        err = cs_log_reader_start(r, &st);
    cs_log_reader_close(r);
    *needed = err == CS_OK && cursor + 1 < st.seq;
    if (err != CS_OK || !*needed) {
        if (err != CS_OK)
            snprintf(m, mlen, "the head office cannot read its log (%s)", cs_err_name(err));
        return err;
    }
    cs__boot_tx *t = calloc(1, sizeof(*t));
    if (!t)
        return CS_NO_MEMORY;
    err = cs_snapshot_get(c->srv->log, c->shop, &t->buf, &t->len);
    cs_snapshot_info in = {0};
    if (err == CS_OK)
        err = cs_snapshot_parse(t->buf, t->len, &in);
    if (err == CS_OK && in.seq + 1 < st.seq)
        err = CS_CORRUPT;
    if (err == CS_OK && !c->linked && in.shop == CS_SNAPSHOT_SHOP_ANY) {
        /* Unlinked before the cut and offline since: its unlink event is gone, and the part
         * for new branches would make it a branch again. It stays as it is (R13 by hand). */
        snprintf(m, mlen,
                 "shop %llu was unlinked before the log was cut at event %llu: it cannot "
                 "receive its unlink any more; its copies stay as they are",
                 (unsigned long long)c->shop, (unsigned long long)st.seq);
        free(t->buf);
        free(t);
        return CS_NOT_IN_NETWORK;
    }
    if (err != CS_OK) {
        snprintf(m, mlen,
                 "the branch is at event %llu but the log starts at %llu and its snapshot %s",
                 (unsigned long long)cursor, (unsigned long long)st.seq,
                 err == CS_NOT_FOUND ? "is missing" : "does not verify");
        free(t->buf);
        free(t);
        return err == CS_NOT_FOUND ? CS_CORRUPT : err;
    }
    t->seq = in.seq;
    c->boot = t;
    cs__pk p;
    cs__pk_init(&p, 5);
    cs__pk_uint(&p, "seq", in.seq);
    cs__pk_uint(&p, "chain", in.chain);
    cs__pk_uint(&p, "shop", in.shop);
    cs__pk_uint(&p, "bytes", t->len);
    cs__pk_uint(&p, "chunks", (t->len + CS__SNAPSHOT_CHUNK_BYTES - 1) / CS__SNAPSHOT_CHUNK_BYTES);
    cs__server_log(c->srv, CS_NET_LOG_INFO, "bootstrap", c->shop, CS_OK,
                   "shop %llu from %s: at event %llu, the log starts at %llu: sending its "
                   "snapshot at event %llu (%zu bytes)",
                   (unsigned long long)c->shop, c->peer, (unsigned long long)cursor,
                   (unsigned long long)st.seq, (unsigned long long)in.seq, t->len);
    boot_send(c, &p, CS__F_SNAPSHOT);
    *seq_out = in.seq;
    return CS_OK;
}

bool cs__boot_pump(cs__conn *c)
{
    cs__boot_tx *t = c->boot;
    while (t && c->state == CS__C_STREAMING && c->queued < CS_NET_SENDQ_BYTES_HIGH &&
           t->off < t->len) {
        size_t n =
            t->len - t->off < CS__SNAPSHOT_CHUNK_BYTES ? t->len - t->off : CS__SNAPSHOT_CHUNK_BYTES;
        cs__pk p;
        cs__pk_init(&p, 3);
        cs__pk_uint(&p, "index", t->index);
        cs__pk_bin(&p, "data", t->buf + t->off, n);
        cs__pk_uint(&p, "checksum", XXH3_64bits_withSeed(t->buf + t->off, n, t->index));
        t->off += n;
        t->index++;
        if (!boot_send(c, &p, CS__F_SNAPSHOT_CHUNK))
            return false;
    }
    if (!t || c->state != CS__C_STREAMING || t->off < t->len)
        return false;
    cs__pk p;
    cs__pk_init(&p, 1);
    cs__pk_uint(&p, "seq", t->seq);
    cs__boot_free(c);
    return boot_send(c, &p, CS__F_SNAPSHOT_END);
}

/* ---- the branch's side --------------------------------------------------------------------- */

void cs__boot_rx_free(cs__boot_rx *rx)
{
    free(rx->buf);
    *rx = (cs__boot_rx){0};
}

static cs_err rx_begin(cs__boot_rx *rx, const cs__body *b, char *m, size_t mlen)
{
    uint64_t seq, bytes, chunks;
    cs__boot_rx_free(rx);
    if (!cs__body_uint(b, "seq", &seq) || !cs__body_uint(b, "bytes", &bytes) ||
        !cs__body_uint(b, "chunks", &chunks)) {
        snprintf(m, mlen, "SNAPSHOT lacks seq, bytes or chunks");
        return CS_INVALID_INPUT;
    }
    if (bytes < CS_SNAPSHOT_HEADER_BYTES || bytes > CS_SNAPSHOT_BYTES_MAX ||
        chunks != (bytes + CS__SNAPSHOT_CHUNK_BYTES - 1) / CS__SNAPSHOT_CHUNK_BYTES) {
        snprintf(m, mlen, "SNAPSHOT of %llu bytes in %llu chunks: at most %u MiB, in chunks of %u",
                 (unsigned long long)bytes, (unsigned long long)chunks, CS_SNAPSHOT_BYTES_MAX >> 20,
                 CS__SNAPSHOT_CHUNK_BYTES);
        return CS_INVALID_INPUT;
    }
    if (!(rx->buf = malloc(bytes)))
        return CS_NO_MEMORY;
    rx->bytes = bytes;
    rx->seq = seq;
    rx->chunks = (uint32_t)chunks;
    rx->active = true;
    return CS_OK;
}

static cs_err rx_chunk(cs__boot_rx *rx, const cs__body *b, char *m, size_t mlen)
{
    uint64_t index, sum;
    const msgpack_object *d = cs__body_get(b, "data");
    if (!rx->active || !cs__body_uint(b, "index", &index) || !cs__body_uint(b, "checksum", &sum) ||
        !d || d->type != MSGPACK_OBJECT_BIN) {
        snprintf(m, mlen, "SNAPSHOT_CHUNK without SNAPSHOT, or lacking index, data or checksum");
        return CS_INVALID_INPUT;
    }
    size_t n = d->via.bin.size;
    if (index != rx->next || n == 0 || n > CS__SNAPSHOT_CHUNK_BYTES || n > rx->bytes - rx->len ||
        (index + 1 < rx->chunks && n != CS__SNAPSHOT_CHUNK_BYTES)) {
        snprintf(m, mlen, "SNAPSHOT_CHUNK %llu out of place (expected %u) or of a wrong size",
                 (unsigned long long)index, rx->next);
        return CS_INVALID_INPUT;
    }
    if (XXH3_64bits_withSeed(d->via.bin.ptr, n, index) != sum) {
        snprintf(m, mlen, "SNAPSHOT_CHUNK %llu does not match its checksum",
                 (unsigned long long)index);
        return CS_CORRUPT;
    }
    memcpy(rx->buf + rx->len, d->via.bin.ptr, n);
    rx->len += n;
    rx->next++;
    return CS_OK;
}

cs_err cs__boot_rx_frame(cs__boot_rx *rx, unsigned type, const cs__body *b, cs_branch *br,
                         bool *applied, char *m, size_t mlen)
{
    *applied = false;
    if (type == CS__F_SNAPSHOT)
        return rx_begin(rx, b, m, mlen);
    if (type == CS__F_SNAPSHOT_CHUNK)
        return rx_chunk(rx, b, m, mlen);
    uint64_t seq;
    if (!rx->active || !cs__body_uint(b, "seq", &seq) || seq != rx->seq || rx->len != rx->bytes ||
        rx->next != rx->chunks) {
        snprintf(m, mlen, "SNAPSHOT_END before the whole snapshot arrived");
        cs__boot_rx_free(rx);
        return CS_INVALID_INPUT;
    }
    uint64_t at = 0;
    cs_err err = cs_branch_bootstrap(br, rx->buf, rx->len, &at);
    if (err == CS_OK && at != seq)
        err = CS_CORRUPT;
    if (err != CS_OK)
        snprintf(m, mlen, "%s",
                 cs_branch_errmsg(br)[0] ? cs_branch_errmsg(br)
                                         : "the snapshot is not at its position");
    cs__boot_rx_free(rx);
    *applied = err == CS_OK;
    return err;
}
