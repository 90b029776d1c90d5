/*
 * status.c: what the head office's server records about each branch (SPEC 5, the Managing
 * shops view): the cursor it last acknowledged, when a frame from it last arrived, whether it
 * is connected, and its outbox depth as it last reported (optional: older branches never send
 * it, and records written before the key existed lack it). The `status` database is observation,
 * not state: it is not logged, not in any digest, and a replay does not rebuild it. serve batches
 * it (one transaction per second of changes), so a lost batch costs a second of display, never
 * correctness: the branch's cursor of record is the branch's own. Layout: docs/storage.md,
 * "status". It also keeps the event a branch holds at, when it reported one (it cannot apply
 * it: docs/design.md, "A branch that never crash-loops"): a connection that has not said yet
 * keeps the record's figure, so a branch retrying (reconnecting) does not flicker to "applying".
 */
#include "engine/engine_int.h"

#include <stdio.h>
#include <string.h>

typedef struct status_batch {
    cs_engine *e;
    const cs_shop_status *st;
    size_t n;
} status_batch;

static void held_copy(cs_shop_status *to, const cs_shop_status *from)
{
    to->held_seq = from->held_seq;
    to->held_code = from->held_code;
    to->held_since_ms = from->held_since_ms;
    memcpy(to->held_message, from->held_message, sizeof(to->held_message));
}

static cs_err status_put(cs_log_txn *txn, cs_engine *e, const cs_shop_status *s)
{
    char key[13];
    json_t *shop;
    cs__shop_key(key, s->shop);
    cs_err err = cs__net_get(cs_log_txn_mdb(txn), e->network, key, 13, &shop);
    if (err == CS_NOT_FOUND)
        return cs__fail(e, CS_INVALID_INPUT, "shop %llu is not a branch of this network",
                        (unsigned long long)s->shop);
    if (err != CS_OK)
        return err;
    json_decref(shop);
    cs_shop_status kept = *s;
    if (!s->held_known) { /* this connection has not said: the record's figure stands */
        cs_shop_status old;
        kept.held_seq = 0;
        err = cs__status_read(e, cs_log_txn_mdb(txn), s->shop, &old);
        if (err == CS_OK)
            held_copy(&kept, &old);
        else if (err != CS_NOT_FOUND)
            return err;
    }
    s = &kept;
    cs__pack p;
    cs__pack_init(&p);
    /* `outbox` only when the branch reported it: a record without it (also every record
     * written before the key existed) reads as unknown. The held keys only while it holds. */
    msgpack_pack_map(&p.pk, (s->outbox_known ? 4u : 3u) + (s->held_seq ? 4u : 0u));
    msgpack_pack_str_with_body(&p.pk, "cursor", 6);
    msgpack_pack_uint64(&p.pk, s->cursor);
    msgpack_pack_str_with_body(&p.pk, "last_seen", 9);
    msgpack_pack_uint64(&p.pk, s->last_seen_ms);
    msgpack_pack_str_with_body(&p.pk, "connected", 9);
    if (s->connected)
        msgpack_pack_true(&p.pk);
    else
        msgpack_pack_false(&p.pk);
    if (s->outbox_known) {
        msgpack_pack_str_with_body(&p.pk, "outbox", 6);
        msgpack_pack_uint64(&p.pk, s->outbox);
    }
    if (s->held_seq) {
        const char *code = cs_err_name(s->held_code);
        msgpack_pack_str_with_body(&p.pk, "held", 4);
        msgpack_pack_uint64(&p.pk, s->held_seq);
        msgpack_pack_str_with_body(&p.pk, "held_code", 9);
        msgpack_pack_str_with_body(&p.pk, code, strlen(code));
        msgpack_pack_str_with_body(&p.pk, "held_since", 10);
        msgpack_pack_uint64(&p.pk, s->held_since_ms);
        msgpack_pack_str_with_body(&p.pk, "held_message", 12);
        msgpack_pack_str_with_body(&p.pk, s->held_message, strlen(s->held_message));
    }
    uint8_t kb[8];
    cs_be64_put(kb, s->shop);
    MDB_val k = {8, kb}, v = {p.sb.size, p.sb.data};
    err = p.failed ? CS_NO_MEMORY : cs_log_txn_put(txn, e->status, &k, &v, 0);
    cs__pack_destroy(&p);
    return err;
}

static cs_err status_fn(cs_log_txn *txn, void *ctx)
{
    status_batch *b = ctx;
    if (cs__role(cs_log_txn_mdb(txn), b->e, NULL) != CS_ROLE_HEAD)
        return cs__fail(b->e, CS_FORBIDDEN, "only a network's head office records branches");
    cs_err err = CS_OK;
    for (size_t i = 0; i < b->n && err == CS_OK; i++)
        err = status_put(txn, b->e, &b->st[i]);
    return err;
}

cs_err cs_engine_shop_status_save(cs_engine *e, const cs_shop_status *st, size_t n)
{
    e->errmsg[0] = '\0';
    if (n == 0)
        return CS_OK;
    cs_assert(st != NULL);
    status_batch b = {.e = e, .st = st, .n = n};
    return cs_log_write(e->log, status_fn, &b);
}

/* The held keys of a status record (present together, docs/storage.md "status"). */
static cs_err held_read(const msgpack_object *o, cs_shop_status *s)
{
    cs_str code, msg;
    if (!cs__map_u64(o, "held", &s->held_seq) || !cs__map_str(o, "held_code", &code) ||
        !cs__map_u64(o, "held_since", &s->held_since_ms) || !cs__map_str(o, "held_message", &msg))
        return CS_CORRUPT;
    s->held_code = cs_err_from_name(code.ptr, code.len);
    if (s->held_code == CS_ERR_COUNT)
        s->held_code = CS_IO; /* a code this version does not know: still held */
    snprintf(s->held_message, sizeof(s->held_message), "%.*s", (int)msg.len, msg.ptr);
    s->held_known = true;
    return CS_OK;
}

cs_err cs__status_read(cs_engine *e, MDB_txn *m, uint64_t shop, cs_shop_status *out)
{
    uint8_t kb[8];
    cs_be64_put(kb, shop);
    msgpack_zone z;
    msgpack_object o;
    if (!msgpack_zone_init(&z, 128))
        return CS_NO_MEMORY;
    cs_shop_status s = {.shop = shop};
    cs_err err = cs__record_get(m, e->status, kb, sizeof(kb), &z, &o);
    const msgpack_object *c = err == CS_OK ? cs__map_get(&o, "connected") : NULL;
    const msgpack_object *ob = err == CS_OK ? cs__map_get(&o, "outbox") : NULL;
    if (err == CS_OK &&
        (!cs__map_u64(&o, "cursor", &s.cursor) || !cs__map_u64(&o, "last_seen", &s.last_seen_ms) ||
         !c || c->type != MSGPACK_OBJECT_BOOLEAN ||
         (ob && !(s.outbox_known = cs__map_u64(&o, "outbox", &s.outbox)))))
        err = CS_CORRUPT;
    if (err == CS_OK && cs__map_get(&o, "held"))
        err = held_read(&o, &s);
    if (err == CS_OK) {
        s.connected = c->via.boolean;
        *out = s;
    }
    msgpack_zone_destroy(&z);
    return err;
}

cs_err cs_engine_shop_status_get(cs_engine *e, uint64_t shop, cs_shop_status *out)
{
    e->errmsg[0] = '\0';
    MDB_txn *m;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    err = cs__status_read(e, m, shop, out);
    cs_log_read_end(e->log, m);
    if (err == CS_NOT_FOUND)
        cs__fail(e, err, "shop %llu has not been seen by the server", (unsigned long long)shop);
    return err;
}
