/*
 * stream.c: what the server sends a connection: its write queue (cs__conn_send), its closing
 * (cs__conn_close, cs__conn_closed) and the log streamed to it. server.c, above, calls these;
 * this file calls nothing in server.c (the queue's drain resumes the stream, so writing,
 * closing and streaming live together).
 *
 * The data path: when the head moves (a file-watch wake-up, the safety timer, or a shared-record
 * write the server appended itself), one read snapshot is opened and every streaming connection
 * whose next sequence is at or below the head gets the segments it lacks, from the shared cache,
 * until its queue reaches the high-water mark (then it is paused: nothing more is queued until
 * its queue drains below the low-water mark, see write_done).
 *
 * Invariants, per streaming connection c:
 *  1. c->send_next == (the last sequence queued to c) + 1, and segments are queued in order with
 *     no gap and no overlap: each starts exactly at c->send_next.
 *  2. c->queued <= CS_NET_SENDQ_BYTES_HIGH + one segment frame (at most one frame overshoots).
 *  3. c->acked < c->send_next.
 * Memory: the cache holds at most CS_NET_CACHE_BYTES_MAX of unreferenced segments; everything
 * else is referenced by some queue, and each queue is bounded by 2. So the server's memory is at
 * most the cache plus the distinct segments the queues reference, never a copy per branch.
 */
#include "net/nats_int.h"

#include <stdarg.h>
#include <stdlib.h>

void cs__server_logf(cs__server *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs__netlog_v(&s->nl, CS_NET_LOG_INFO, "info", 0, CS_OK, fmt, ap);
    va_end(ap);
}

void cs__server_log(cs__server *s, cs_net_log_level level, const char *event, uint64_t shop,
                    cs_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs__netlog_v(&s->nl, level, event, shop, code, fmt, ap);
    va_end(ap);
}

/* ---- writing ----------------------------------------------------------------------------- */

typedef struct wreq {
    uv_write_t req;
    cs__buf *buf; /* one reference, dropped when the write is done */
    cs__conn *c;
} wreq;

static void write_done(uv_write_t *req, int status)
{
    wreq *w = (wreq *)req;
    cs__conn *c = w->c;
    cs_assert(c->queued >= w->buf->len);
    c->queued -= w->buf->len;
    cs__buf_unref(w->buf);
    free(w);
    if (status < 0) {
        if (c->state != CS__C_CLOSING)
            cs__conn_close(c, CS_OK, uv_strerror(status), true);
        return;
    }
    /* A segment the peer's kernel took is a sign of life too: a branch busy applying a long
     * catch-up may send nothing for a while, yet it keeps reading (docs/protocol.md: dead means
     * nothing moves either way). */
    if (c->state == CS__C_STREAMING)
        c->last_alive_ms = cs__net_now_ms();
    if (c->paused_ms && c->queued < CS_NET_SENDQ_BYTES_LOW) {
        c->paused_ms = 0;
        cs__server_pump_one(c->srv, c);
    } else if (c->paused_ms) {
        /* Stuck means nothing drains: a branch that reads slowly (a long catch-up) moves on. */
        c->paused_ms = cs__net_now_ms();
    }
}

void cs__conn_send(cs__conn *c, cs__buf *b)
{
    if (c->state == CS__C_CLOSING)
        return;
    wreq *w = malloc(sizeof(*w));
    if (!w) {
        cs__conn_close(c, CS_OK, "out of memory", true);
        return;
    }
    cs__buf_ref(b);
    w->buf = b;
    w->c = c;
    uv_buf_t ub = uv_buf_init((char *)b->data, (unsigned)b->len);
    c->queued += b->len;
    c->srv->bytes_sent += b->len;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, write_done);
    if (rc < 0) {
        c->queued -= b->len;
        cs__buf_unref(b);
        free(w);
        cs__conn_close(c, CS_OK, uv_strerror(rc), true);
        return;
    }
    c->last_tx_ms = cs__net_now_ms();
}

/* ---- closing ----------------------------------------------------------------------------- */

static void remember_gone(cs__server *s, const cs__conn *c)
{
    if (s->ngone == s->gone_cap) {
        size_t cap = s->gone_cap ? s->gone_cap * 2 : 16;
        cs_shop_status *g = realloc(s->gone, cap * sizeof(*g));
        if (!g)
            return; /* the status is observation only: losing one costs a stale "connected" */
        s->gone = g;
        s->gone_cap = cap;
    }
    s->gone[s->ngone++] = (cs_shop_status){.shop = c->shop,
                                           .cursor = c->acked,
                                           .last_seen_ms = c->last_rx_ms,
                                           .connected = false,
                                           .outbox = c->outbox,
                                           .outbox_known = c->outbox_known};
}

void cs__conn_closed(uv_handle_t *h)
{
    cs__conn *c = (cs__conn *)h;
    cs__server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    cs__rx_free(&c->rx);
    free(c);
}

static void shutdown_done(uv_shutdown_t *req, int status)
{
    (void)status;
    cs__conn *c = req->data;
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, cs__conn_closed);
}

void cs__conn_close(cs__conn *c, cs_err code, const char *message, bool now)
{
    if (c->state == CS__C_CLOSING) {
        if (now && !uv_is_closing((uv_handle_t *)&c->tcp))
            uv_close((uv_handle_t *)&c->tcp, cs__conn_closed);
        return;
    }
    cs__server *s = c->srv;
    bool was_streaming = c->state == CS__C_STREAMING;
    if (code != CS_OK && !now) {
        cs__buf *b = cs__frame_error(code, message);
        if (b) {
            cs__conn_send(c, b);
            cs__buf_unref(b);
        }
    }
    if (was_streaming)
        s->drops[code]++;
    else if (code != CS_OK)
        s->refusals[code]++;
    if (c->shop && was_streaming && code != CS_OK)
        cs__server_log(s, CS_NET_LOG_WARN, "drop", c->shop, code,
                       "shop %llu from %s: dropped: %s: %s", (unsigned long long)c->shop, c->peer,
                       cs_err_name(code), message);
    else if (c->shop && was_streaming)
        cs__server_log(s, CS_NET_LOG_INFO, "drop", c->shop, CS_OK,
                       "shop %llu from %s: disconnected: %s", (unsigned long long)c->shop, c->peer,
                       message);
    else if (code != CS_OK && c->state != CS__C_STREAMING)
        cs__server_log(s, CS_NET_LOG_WARN, "refused", c->shop, code,
                       "connection from %s: refused: %s: %s", c->peer, cs_err_name(code), message);
    else
        cs__server_log(s, CS_NET_LOG_DEBUG, "closed", c->shop, CS_OK,
                       "connection from %s: closed: %s", c->peer, message);
    if (was_streaming)
        remember_gone(s, c);
    c->state = CS__C_CLOSING;
    c->closing_ms = cs__net_now_ms();
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->shutdown.data = c;
    /* shutdown waits for the ERROR frame to be written; the tick closes it anyway after a
     * grace period, since a peer that stopped reading would hold it forever. */
    if (now || uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, shutdown_done) != 0)
        uv_close((uv_handle_t *)&c->tcp, cs__conn_closed);
}

/* ---- streaming --------------------------------------------------------------------------- */

/* Invariants 1 (in part: nothing queued past the head), 2 and 3, and what START and the pause
 * set up: the caught-up point is a position of the log, and a paused connection holds at least
 * the low-water mark in flight, so a write_done still comes to resume it (a paused empty queue
 * would never be pumped again). */
static bool conn_stream_invariants_hold(const cs__conn *c)
{
    return c->state == CS__C_STREAMING && c->acked < c->send_next &&
           c->send_next <= c->srv->head + 1 && c->caught_up_seq <= c->srv->head &&
           c->queued <= CS_NET_SENDQ_BYTES_HIGH + CS_NET_FRAME_BYTES_MAX &&
           (c->paused_ms == 0 || c->queued >= CS_NET_SENDQ_BYTES_LOW);
}

static void send_caught_up(cs__conn *c)
{
    cs__pk p;
    cs__pk_init(&p, 1);
    cs__pk_uint(&p, "seq", c->caught_up_seq);
    cs__buf *b = cs__pk_frame(&p, CS__F_CAUGHT_UP);
    cs__pk_destroy(&p);
    if (!b) {
        cs__conn_close(c, CS_NO_MEMORY, "out of memory", true);
        return;
    }
    c->caught_up_due = false;
    cs__server_log(c->srv, CS_NET_LOG_INFO, "caught_up", c->shop, CS_OK,
                   "shop %llu from %s: sent up to event %llu, the head when it started",
                   (unsigned long long)c->shop, c->peer, (unsigned long long)c->caught_up_seq);
    cs__conn_send(c, b);
    cs__buf_unref(b);
}

static void pump(cs__server *s, cs_log_reader *r, cs__conn *c)
{
    cs_assert(conn_stream_invariants_hold(c));
    while (c->state == CS__C_STREAMING && c->send_next <= s->head &&
           c->queued < CS_NET_SENDQ_BYTES_HIGH) {
        uint64_t first = c->send_next;
        cs__buf *b;
        cs_err err = cs__segcache_get(s->cache, r, first, s->head, &b);
        if (err != CS_OK) {
            char m[160];
            snprintf(m, sizeof(m), "the head office cannot read its log at event %llu (%s)",
                     (unsigned long long)first, cs_err_name(err));
            cs__conn_close(c, err == CS_NO_MEMORY ? err : CS_CORRUPT, m, false);
            return;
        }
        cs_assert(b->first == first);
        cs_assert(b->last >= first && b->last <= s->head);
        c->send_next = b->last + 1;
        s->segments_sent++;
        cs__conn_send(c, b);
        cs__buf_unref(b);
    }
    if (c->state != CS__C_STREAMING)
        return;
    if (c->caught_up_due && c->send_next > c->caught_up_seq)
        send_caught_up(c);
    if (c->queued >= CS_NET_SENDQ_BYTES_HIGH && !c->paused_ms)
        c->paused_ms = cs__net_now_ms();
    cs_assert(c->state != CS__C_STREAMING || conn_stream_invariants_hold(c));
}

/* Reads the head into s->head. The reader stays open for the pumps that follow. */
static cs_err read_head(cs__server *s, cs_log_reader **r)
{
    cs_err err = cs_log_reader_open(s->log, r);
    uint64_t head = 0;
    if (err == CS_OK && (err = cs_log_reader_head(*r, &head)) != CS_OK) {
        cs_log_reader_close(*r);
        *r = NULL;
    }
    if (err != CS_OK) {
        cs__server_log(s, CS_NET_LOG_ERROR, "log", 0, err, "cannot read the log: %s %s",
                       cs_err_name(err), cs_log_errmsg(s->log));
        return err;
    }
    cs_assert(head >= s->head); /* the log only grows */
    s->head = head;
    return CS_OK;
}

void cs__server_pump_all(cs__server *s)
{
    cs_log_reader *r;
    if (s->stopping || read_head(s, &r) != CS_OK)
        return;
    for (cs__conn *c = s->conns, *next; c; c = next) {
        next = c->next; /* pump may close c (it stays in the list until its close callback) */
        if (c->state == CS__C_STREAMING && !c->paused_ms)
            pump(s, r, c);
    }
    cs__natspub_pump(s, s->nats, r); /* serve --nats: the same segments to JetStream */
    cs_log_reader_close(r);
}

void cs__server_pump_one(cs__server *s, cs__conn *c)
{
    cs_log_reader *r;
    if (s->stopping || c->state != CS__C_STREAMING || read_head(s, &r) != CS_OK)
        return;
    pump(s, r, c);
    cs_log_reader_close(r);
}
