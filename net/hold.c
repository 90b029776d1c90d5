/*
 * hold.c: an event a following branch cannot apply (docs/design.md, "A branch that never
 * crash-loops"). Whatever the apply path refuses (storage_full, a schema version it does not
 * know, a bug's error), the node does not exit and does not skip it: it holds there, with its
 * cursor before it, keeps its connection and its reads, and tries again. This file owns what
 * that takes beside the node's loop: the durable record of the held event (netlink key "hold":
 * seq, code, message, since, attempts, next try), the `branch retry` request (netlink key
 * "retry": a counter the node watches), the bounded backoff between tries, and the PING/ACK
 * keys that carry the held event upstream and the head office's side of them
 * (docs/protocol.md, "held"; docs/storage.md, "netlink").
 */
#include "net/net_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOLD_KEY "hold"
#define RETRY_KEY "retry"

/* A record read out of its transaction: the body's strings point into copy. */
typedef struct got {
    cs__body body;
    uint8_t *copy;
    size_t len;
} got;

static void got_free(got *g)
{
    cs__body_free(&g->body);
    free(g->copy);
    g->copy = NULL;
}

/* The bytes are copied first: a msgpack string points into what it was unpacked from, and the
 * map's pages are not the reader's once the transaction ends. */
static cs_err copy_fn(const MDB_val *v, void *arg)
{
    got *g = arg;
    if (!(g->copy = malloc(v->mv_size ? v->mv_size : 1)))
        return CS_NO_MEMORY;
    memcpy(g->copy, v->mv_data, v->mv_size);
    g->len = v->mv_size;
    return CS_OK;
}

/* Reads netlink[key] into g (CS_NOT_FOUND when absent); on CS_OK the caller frees it. */
static cs_err get_record(cs_branch *b, const char *key, got *g)
{
    cs_err err = cs__netlink_read(b, key, copy_fn, g);
    if (err == CS_OK && (err = cs__body_parse(&g->body, g->copy, g->len)) != CS_OK)
        got_free(g);
    return err == CS_INVALID_INPUT ? CS_CORRUPT : err;
}

static cs_err put_body(cs_branch *b, const char *key, const cs__pk *p)
{
    return cs__netlink_write(b, key, p ? &p->sb : NULL);
}

/* The `branch retry` counter (0 before any request). */
static cs_err retry_counter(cs_branch *b, uint64_t *out)
{
    got g = {0};
    cs_err err = get_record(b, RETRY_KEY, &g);
    *out = 0;
    if (err == CS_NOT_FOUND)
        return CS_OK;
    if (err != CS_OK)
        return err;
    if (!cs__body_uint(&g.body, "asked", out))
        err = CS_CORRUPT;
    got_free(&g);
    return err;
}

static cs_err hold_save(cs_branch *b, const cs__hold *h)
{
    cs__pk p;
    cs__pk_init(&p, 6);
    cs__pk_uint(&p, "seq", h->seq);
    cs__pk_str(&p, "code", cs_err_name(h->code));
    cs__pk_str(&p, "message", h->message);
    cs__pk_uint(&p, "since", h->since_ms);
    cs__pk_uint(&p, "attempts", h->attempts);
    cs__pk_uint(&p, "next", h->next_ms);
    cs_err err = put_body(b, HOLD_KEY, &p);
    cs__pk_destroy(&p);
    return err;
}

static uint64_t backoff_ms(uint64_t attempts)
{
    uint64_t d = CS__HOLD_BACKOFF_FIRST_MS;
    for (uint64_t i = 1; i < attempts && d < CS__HOLD_BACKOFF_MAX_MS; i++)
        d *= 2;
    return d < CS__HOLD_BACKOFF_MAX_MS ? d : CS__HOLD_BACKOFF_MAX_MS;
}

cs_err cs__hold_enter(cs_branch *b, cs__hold *h, uint64_t seq, cs_err code, const char *message,
                      uint64_t now_ms)
{
    if (!h->on || h->seq != seq) { /* a new event held (a first hold, or a later one) */
        h->since_ms = now_ms;
        h->attempts = 0;
    }
    h->on = true;
    h->trying = false;
    h->seq = seq;
    h->code = code;
    snprintf(h->message, sizeof(h->message), "%s", message && message[0] ? message : "");
    h->attempts++;
    h->next_ms = now_ms + backoff_ms(h->attempts);
    /* A request made before this try is spent: only a later `branch retry` cuts the wait. */
    uint64_t asked;
    if (retry_counter(b, &asked) == CS_OK)
        h->retry_seen = asked;
    return hold_save(b, h);
}

cs_err cs__hold_leave(cs_branch *b, cs__hold *h)
{
    uint64_t seen = h->retry_seen;
    memset(h, 0, sizeof(*h));
    h->retry_seen = seen;
    return put_body(b, HOLD_KEY, NULL);
}

cs_err cs__hold_start(cs_branch *b, cs__hold *h)
{
    memset(h, 0, sizeof(*h));
    cs_err err = retry_counter(b, &h->retry_seen);
    cs_branch_hold st;
    if (err == CS_OK)
        err = cs_branch_hold_get(b, &st);
    if (err != CS_OK || !st.held)
        return err;
    /* Held when the last run stopped (an upgrade, a restart): try at once, and keep since. */
    h->on = true;
    h->trying = true;
    h->seq = st.seq;
    h->code = st.code;
    memcpy(h->message, st.message, sizeof(h->message));
    h->since_ms = st.since_ms;
    h->attempts = st.attempts;
    return CS_OK;
}

bool cs__hold_due(cs_branch *b, cs__hold *h, uint64_t now_ms, bool *asked)
{
    *asked = false;
    if (!h->on || h->trying)
        return false;
    uint64_t counter;
    if (retry_counter(b, &counter) == CS_OK && counter != h->retry_seen) {
        h->retry_seen = counter;
        *asked = true;
        return true;
    }
    return now_ms >= h->next_ms;
}

unsigned cs__hold_keys(const cs__hold *h)
{
    return h->on ? 4u : 1u;
}

void cs__hold_pack(cs__pk *p, const cs__hold *h)
{
    cs__pk_uint(p, "held", h->on ? h->seq : 0);
    if (!h->on)
        return;
    cs__pk_str(p, "held_code", cs_err_name(h->code));
    cs__pk_str(p, "held_message", h->message);
    cs__pk_uint(p, "held_since", h->since_ms);
}

/* ---- the head office's side ------------------------------------------------------------ */

bool cs__hold_take(cs__conn *c, const cs__body *b, bool *changed, const char **why)
{
    *changed = false;
    const msgpack_object *o = cs__body_get(b, "held");
    if (!o)
        return true; /* an older branch: unknown, the record's figure stands */
    cs_shop_status h = {.held_known = true};
    cs_str code = {"", 0}, msg = {"", 0};
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *why = "held is not a uint";
        return false;
    }
    h.held_seq = o->via.u64;
    if (h.held_seq && (!cs__body_str(b, "held_code", &code) ||
                       !cs__body_uint(b, "held_since", &h.held_since_ms))) {
        *why = "held without held_code and held_since";
        return false;
    }
    if (h.held_seq) {
        cs__body_str(b, "held_message", &msg); /* optional */
        h.held_code = cs_err_from_name(code.ptr, code.len);
        if (h.held_code == CS_ERR_COUNT || h.held_code == CS_OK)
            h.held_code = CS_IO; /* a code this version does not know: still held */
        snprintf(h.held_message, sizeof(h.held_message), "%.*s", (int)msg.len, msg.ptr);
    }
    const cs_shop_status *was = &c->held;
    *changed = !was->held_known || was->held_seq != h.held_seq || was->held_code != h.held_code ||
               was->held_since_ms != h.held_since_ms ||
               strcmp(was->held_message, h.held_message) != 0;
    c->held = h;
    return true;
}

void cs__hold_status(const cs__conn *c, cs_shop_status *st)
{
    st->held_known = c->held.held_known;
    st->held_seq = c->held.held_seq;
    st->held_code = c->held.held_code;
    st->held_since_ms = c->held.held_since_ms;
    memcpy(st->held_message, c->held.held_message, sizeof(st->held_message));
}

/* ---- public: status and `branch retry` ------------------------------------------------- */

cs_err cs_branch_hold_get(cs_branch *b, cs_branch_hold *out)
{
    got g = {0};
    cs_branch_hold h = {0};
    cs_err err = get_record(b, HOLD_KEY, &g);
    if (err == CS_NOT_FOUND) {
        *out = h;
        return CS_OK;
    }
    if (err != CS_OK)
        return err;
    cs_str code, msg;
    const cs__body *body = &g.body;
    if (!(cs__body_uint(body, "seq", &h.seq) && cs__body_str(body, "code", &code) &&
          cs__body_str(body, "message", &msg) && cs__body_uint(body, "since", &h.since_ms) &&
          cs__body_uint(body, "attempts", &h.attempts) &&
          cs__body_uint(body, "next", &h.next_ms))) {
        got_free(&g);
        return CS_CORRUPT;
    }
    h.held = true;
    h.code = cs_err_from_name(code.ptr, code.len);
    if (h.code == CS_ERR_COUNT || h.code == CS_OK)
        h.code = CS_IO;
    snprintf(h.message, sizeof(h.message), "%.*s", (int)msg.len, msg.ptr);
    got_free(&g);
    *out = h;
    return CS_OK;
}

cs_err cs_branch_retry_ask(cs_branch *b, uint64_t *asked_out)
{
    uint64_t asked;
    cs_err err = retry_counter(b, &asked);
    if (err != CS_OK)
        return err;
    /* read then write: two `branch retry` at once may write one number; either wakes the node */
    asked++;
    cs__pk p;
    cs__pk_init(&p, 2);
    cs__pk_uint(&p, "asked", asked);
    cs__pk_uint(&p, "asked_ms", cs__net_now_ms());
    err = put_body(b, RETRY_KEY, &p);
    cs__pk_destroy(&p);
    if (err == CS_OK && asked_out)
        *asked_out = asked;
    return err;
}
