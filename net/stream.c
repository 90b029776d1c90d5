/*
 * stream.c: the server's data path. When the head moves (a file-watch wake-up, the safety timer,
 * or a shared-record write the server appended itself), one read snapshot is opened and every
 * streaming connection whose next sequence is at or below the head gets the segments it lacks,
 * from the shared cache, until its queue reaches the high-water mark (then it is paused: nothing
 * more is queued until its queue drains below the low-water mark, see server.c's write_done).
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
#include "net/net_int.h"

static bool conn_stream_invariants_hold(const cs__conn *c)
{
    return c->state == CS__C_STREAMING && c->acked < c->send_next &&
           c->queued <= CS_NET_SENDQ_BYTES_HIGH + CS_NET_FRAME_BYTES_MAX;
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
        cs__server_logf(s, "cannot read the log: %s %s", cs_err_name(err), cs_log_errmsg(s->log));
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
