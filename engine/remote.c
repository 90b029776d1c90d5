/*
 * remote.c: the head office's side of R8: a shared record written on a branch arrives as the
 * branch's outbox entry {kind, type, id, version, expect, fields, req} and is applied exactly
 * once, however often the branch sends it.
 *
 * Invariants:
 *   1. (shop, req) gets one answer, ever: the first one is stored in `requests` and every later
 *      arrival returns it, writing nothing.
 *   2. An accepted write's event, its new state and its answer commit in one transaction
 *      (remote_fn): a crash leaves either all three or none, so a resend after a crash either
 *      finds the answer or applies for the first time.
 *   3. A refusal changes no state: its transaction is aborted and the refusal remembered in a
 *      second, small one (refusal_fn), so a resend gets the same refusal even if the record has
 *      changed in between.
 *   4. The write goes through items.c's one write path (cs__write_item): the same existence,
 *      version and reference checks as a local put, with the event's shop = the branch.
 * Layouts: docs/storage.md, "requests"; the protocol that carries entries: docs/protocol.md.
 */
#include "engine/engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQUEST_KEY_BYTES (8u + CS_REQUEST_ID_BYTES)

typedef struct remote_ctx {
    cs_engine *e;
    uint64_t shop;
    uint8_t key[REQUEST_KEY_BYTES]; /* shop u64 BE + req */
    cs__write w;
    char actor[32];
    cs_remote_answer ans;
} remote_ctx;

/* An outbox entry as parsed; borrowed from the zone it was unpacked into. */
typedef struct entry_view {
    bool del;
    cs_str type;
    uint64_t id, expect;
    const msgpack_object *fields;
    const uint8_t *req;
} entry_view;

static cs_err entry_parse(const uint8_t *entry, size_t len, msgpack_zone *z, entry_view *out)
{
    msgpack_object o;
    cs_str kind;
    uint64_t version;
    if (cs__unpack(entry, len, z, &o) != CS_OK || o.type != MSGPACK_OBJECT_MAP)
        return CS_CORRUPT;
    out->fields = cs__map_get(&o, "fields");
    if (!cs__map_str(&o, "kind", &kind) || !cs__map_str(&o, "type", &out->type) ||
        !cs__map_u64(&o, "id", &out->id) || !cs__map_u64(&o, "version", &version) ||
        !cs__map_u64(&o, "expect", &out->expect) || !out->fields ||
        out->fields->type != MSGPACK_OBJECT_MAP ||
        !cs__map_bin(&o, "req", CS_REQUEST_ID_BYTES, &out->req, NULL))
        return CS_CORRUPT;
    cs_kind k = cs_kind_parse(kind);
    if (!cs_kind_is_item(k)) /* an outbox holds only writes of shared records */
        return CS_CORRUPT;
    out->del = k == CS_KIND_DELETE;
    return CS_OK;
}

static cs_err request_get(cs_engine *e, MDB_txn *m, const uint8_t key[REQUEST_KEY_BYTES],
                          cs_remote_answer *out)
{
    msgpack_zone z;
    msgpack_object o;
    cs_str msg;
    cs_remote_answer a = {0};
    if (!msgpack_zone_init(&z, 256))
        return CS_NO_MEMORY;
    cs_err err = cs__record_get(m, e->requests, key, REQUEST_KEY_BYTES, &z, &o);
    if (err == CS_OK && !(cs__map_code(&o, &a.code, &msg) && cs__map_u64(&o, "id", &a.id) &&
                          cs__map_u64(&o, "version", &a.version) && cs__map_u64(&o, "seq", &a.seq)))
        err = CS_CORRUPT;
    if (err == CS_OK) {
        snprintf(a.message, sizeof(a.message), "%.*s", (int)msg.len, msg.ptr);
        *out = a;
    }
    msgpack_zone_destroy(&z);
    return err;
}

static cs_err request_put(cs_log_txn *txn, cs_engine *e, const uint8_t key[REQUEST_KEY_BYTES],
                          const cs_remote_answer *a)
{
    cs__pack p;
    cs__pack_init(&p);
    msgpack_pack_map(&p.pk, 5);
    cs__pack_code(&p.pk, a->code, a->message);
    msgpack_pack_str_with_body(&p.pk, "id", 2);
    msgpack_pack_uint64(&p.pk, a->id);
    msgpack_pack_str_with_body(&p.pk, "version", 7);
    msgpack_pack_uint64(&p.pk, a->version);
    msgpack_pack_str_with_body(&p.pk, "seq", 3);
    msgpack_pack_uint64(&p.pk, a->seq);
    MDB_val k = {REQUEST_KEY_BYTES, (void *)key}, v = {p.sb.size, p.sb.data};
    cs_err err = p.failed ? CS_NO_MEMORY : cs_log_txn_put(txn, e->requests, &k, &v, 0);
    cs__pack_destroy(&p);
    return err;
}

/* The checks that need the state: the sender is a linked branch, and the record exists at the
 * head office, or is a new one with an id the branch allocated (items.c: (shop << 32) | n). */
static cs_err remote_check(remote_ctx *rc, MDB_txn *m)
{
    cs_engine *e = rc->e;
    cs__write *w = &rc->w;
    json_t *s;
    char key[13];
    cs__shop_key(key, rc->shop);
    cs_err err = cs__net_get(m, e->network, key, 13, &s);
    if (err == CS_OK) {
        err = json_is_true(json_object_get(s, "linked")) ? CS_OK : CS_NOT_FOUND;
        json_decref(s);
    }
    if (err == CS_NOT_FOUND)
        return cs__fail(e, CS_NOT_IN_NETWORK, "shop %llu is not a linked branch of this network",
                        (unsigned long long)rc->shop);
    if (err != CS_OK)
        return err;
    cs_item it;
    err = cs_item_read(m, e->items, w->t, w->id, &e->zone, &it);
    w->create = err == CS_NOT_FOUND;
    if (err != CS_NOT_FOUND)
        return err; /* CS_OK: an update or delete, checked by cs__write_item */
    if (w->del)
        return cs__fail(e, CS_NOT_FOUND, "%s %llu does not exist", w->t->name,
                        (unsigned long long)w->id);
    if (w->id >> 32 != rc->shop)
        return cs__fail(e, CS_INVALID_INPUT,
                        "%s %llu: a new record's id must be one shop %llu allocated", w->t->name,
                        (unsigned long long)w->id, (unsigned long long)rc->shop);
    return CS_OK;
}

static cs_err remote_fn(cs_log_txn *txn, void *ctx)
{
    remote_ctx *rc = ctx;
    MDB_txn *m = cs_log_txn_mdb(txn);
    msgpack_zone_clear(&rc->e->zone);
    cs_err err = request_get(rc->e, m, rc->key, &rc->ans);
    if (err != CS_NOT_FOUND)
        return err; /* CS_OK: answered while we were preparing (invariant 1) */
    err = remote_check(rc, m);
    if (err == CS_OK)
        err = cs__write_item(txn, &rc->w);
    if (err != CS_OK)
        return err;
    rc->ans = (cs_remote_answer){
        .code = CS_OK, .id = rc->w.res.id, .version = rc->w.res.version, .seq = rc->w.res.seq};
    return request_put(txn, rc->e, rc->key, &rc->ans);
}

static cs_err refusal_fn(cs_log_txn *txn, void *ctx)
{
    remote_ctx *rc = ctx;
    cs_remote_answer first;
    cs_err err = request_get(rc->e, cs_log_txn_mdb(txn), rc->key, &first);
    if (err == CS_OK)
        rc->ans = first;
    return err == CS_NOT_FOUND ? request_put(txn, rc->e, rc->key, &rc->ans) : err;
}

/* Whether a WRITE's fields are something the CLI could have given: the CLI reads JSON with
 * jansson, which refuses invalid UTF-8 and NUL inside strings, and JSON has no bin, ext or
 * non-string keys. The conversion to JSON below (cs__json_from_msgpack) trusts its input (it
 * reads the head office's own events) and would pass such values on, so a branch could make the
 * head office append what it refuses from the CLI. jansson's checking json_stringn is the UTF-8
 * validator. */
static bool remote_value_ok(const msgpack_object *o, unsigned depth, const char **why)
{
    if (depth > CS_MSGPACK_DEPTH_MAX)
        return *why = "nested too deeply", false;
    switch (o->type) {
    case MSGPACK_OBJECT_STR: {
        if (memchr(o->via.str.ptr, '\0', o->via.str.size))
            return *why = "a string holds a NUL character", false;
        json_t *j = json_stringn(o->via.str.ptr, o->via.str.size);
        json_decref(j);
        return j ? true : (*why = "a string is not valid UTF-8", false);
    }
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if (!remote_value_ok(&o->via.array.ptr[i], depth + 1, why))
                return false;
        return true;
    case MSGPACK_OBJECT_MAP:
        for (uint32_t i = 0; i < o->via.map.size; i++)
            if (o->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR)
                return *why = "a map key is not a string", false;
            else if (!remote_value_ok(&o->via.map.ptr[i].key, depth + 1, why) ||
                     !remote_value_ok(&o->via.map.ptr[i].val, depth + 1, why))
                return false;
        return true;
    case MSGPACK_OBJECT_BIN:
    case MSGPACK_OBJECT_EXT:
        return *why = "a value is binary, which JSON cannot hold", false;
    default:
        return true;
    }
}

/* The checks that need no state: a shared type, fields the schema accepts. *packed (owned by
 * the caller) gets the canonical fields of a put. */
static cs_err remote_prepare(remote_ctx *rc, const entry_view *ev, uint8_t **packed)
{
    cs_engine *e = rc->e;
    cs__write *w = &rc->w;
    w->t = cs_schema_find_str(ev->type);
    if (!w->t)
        return cs__fail(e, CS_UNKNOWN_TYPE, "'%.*s' is not a type", (int)ev->type.len,
                        ev->type.ptr);
    if (w->t->cls != CS_CLASS_SHARED)
        return cs__fail(e, CS_FORBIDDEN, "%s is not a shared record: a branch cannot write it",
                        w->t->name);
    if (ev->id == 0)
        return cs__fail(e, CS_INVALID_INPUT, "%s: a branch's write names its record's id",
                        w->t->name);
    if (ev->del)
        return CS_OK; /* a delete archives the head office's own fields (items.c) */
    const char *why = NULL;
    if (!remote_value_ok(ev->fields, 0, &why))
        return cs__fail(e, CS_INVALID_INPUT, "%s %llu: %s", w->t->name, (unsigned long long)ev->id,
                        why);
    json_t *j = cs__json_from_msgpack(ev->fields);
    char msg[256];
    cs_err err =
        j ? cs_schema_from_json(w->t, j, packed, &w->fields_len, msg, sizeof(msg)) : CS_NO_MEMORY;
    json_decref(j);
    if (err == CS_INVALID_INPUT)
        return cs__fail(e, err, "%s %llu: %s", w->t->name, (unsigned long long)ev->id, msg);
    w->fields = *packed;
    return err;
}

/* Asks once, in a read snapshot, whether this request was answered: the common case of a
 * resend after a reconnect costs no write transaction. */
static cs_err answered_before(remote_ctx *rc, bool *found)
{
    MDB_txn *m;
    cs_err err = cs__read_begin(rc->e, &m);
    if (err != CS_OK)
        return err;
    if (cs__role(m, rc->e, NULL) != CS_ROLE_HEAD)
        err = cs__fail(rc->e, CS_FORBIDDEN, "only the head office applies branches' writes");
    if (err == CS_OK)
        err = request_get(rc->e, m, rc->key, &rc->ans);
    cs_log_read_end(rc->e->log, m);
    *found = err == CS_OK;
    return err == CS_NOT_FOUND ? CS_OK : err;
}

cs_err cs_engine_remote_write(cs_engine *e, uint64_t shop, const uint8_t *entry, size_t len,
                              cs_remote_answer *out)
{
    e->errmsg[0] = '\0';
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 1024))
        return CS_NO_MEMORY;
    entry_view ev;
    remote_ctx rc = {.e = e, .shop = shop};
    uint8_t *packed = NULL;
    bool found = false;
    cs_err err = entry_parse(entry, len, &z, &ev);
    if (err != CS_OK) {
        cs__fail(e, err, "shop %llu sent a write that is not an outbox entry",
                 (unsigned long long)shop);
        goto done;
    }
    cs_be64_put(rc.key, shop);
    memcpy(rc.key + 8, ev.req, CS_REQUEST_ID_BYTES);
    snprintf(rc.actor, sizeof(rc.actor), "branch:%llu", (unsigned long long)shop);
    rc.w = (cs__write){
        .e = e, .id = ev.id, .expect = ev.expect, .del = ev.del, .shop = shop, .actor = rc.actor};
    err = answered_before(&rc, &found);
    if (err != CS_OK || found)
        goto done;
    err = remote_prepare(&rc, &ev, &packed);
    if (err == CS_OK)
        err = cs_log_write(e->log, remote_fn, &rc);
    if (err != CS_OK && cs_err_exit_code(err) == 2) { /* refused by a rule: remember it */
        rc.ans = (cs_remote_answer){.code = err, .id = ev.id};
        snprintf(rc.ans.message, sizeof(rc.ans.message), "%.*s", (int)sizeof(rc.ans.message) - 1,
                 e->errmsg);
        err = cs_log_write(e->log, refusal_fn, &rc);
    }
done:
    if (err == CS_OK)
        *out = rc.ans;
    free(packed);
    msgpack_zone_destroy(&z);
    return err;
}
