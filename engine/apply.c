/*
 * apply.c: the engine handle, the event vocabulary and the one state transition (cs__apply),
 * plus the digest and replay that prove state and log agree.
 *
 * Event kinds (the `kind` of a log event, CS_EVENT_KINDS in engine.h; docs/design.md lists
 * their fields):
 *   init, network, put, delete, shop_add, shop_switch, shop_unlink, shop_password,
 *   network_types, network_mode, network_whatsapp, shop_whatsapp, sync.
 * Apply trusts what it reads: commands validated it before it was logged, and the log's
 * checksums and chain guard it since. An event of a newer schema version than this build's is
 * CS_PROTOCOL_MISMATCH (a newer build wrote it: this one must not guess, docs/design.md "Schema
 * versions"); an item written under an older version is read through the change table
 * (cs_schema_upgrade). Any other event apply cannot understand, an unknown kind included, is
 * CS_CORRUPT: every kind a version may write is known to that version's build (the branch
 * projection decides the same).
 */
#include "engine/engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define REPLAY_BATCH_EVENTS 10000u /* events applied per write transaction during replay */

const char *cs_role_name(cs_role role)
{
    static const char *const names[] = {"none", "single", "head", "branch"};
    return (unsigned)role < 4 ? names[role] : "none";
}

cs_err cs_engine_open(const char *dir, const cs_log_options *opts, cs_engine **out)
{
    return cs_engine_open_why(dir, opts, out, NULL, 0);
}

cs_err cs_engine_open_why(const char *dir, const cs_log_options *opts, cs_engine **out, char *why,
                          size_t why_bytes)
{
    if (why_bytes > 0)
        why[0] = '\0';
    cs_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return CS_NO_MEMORY;
    snprintf(e->actor, sizeof(e->actor), "cli");
    if (!msgpack_zone_init(&e->zone, 4096)) {
        free(e);
        return CS_NO_MEMORY;
    }
    cs_err err = cs_log_open_why(dir, opts, &e->log, why, why_bytes);
    if (err == CS_OK)
        err = cs_event_decoder_new(&e->dec);
    if (err == CS_OK)
        err = cs_log_dbi_open(e->log, "items", 0, &e->items);
    if (err == CS_OK)
        err = cs_log_dbi_open(e->log, "network", 0, &e->network);
    if (err == CS_OK)
        err = cs_log_dbi_open(e->log, "local", 0, &e->local);
    if (err == CS_OK)
        err = cs_log_dbi_open(e->log, "secrets", 0, &e->secrets);
    if (err == CS_OK)
        err = cs_log_dbi_open(e->log, "outbox", 0, &e->outbox);
    if (err == CS_OK)
        err = cs_log_dbi_open(e->log, "status", 0, &e->status);
    if (err == CS_OK)
        err = cs_log_dbi_open(e->log, "requests", 0, &e->requests);
    if (err == CS_OK)
        err = cs_log_dbi_open(e->log, "rejected", 0, &e->rejected);
    if (err != CS_OK) {
        if (why_bytes > 0 && e->log)
            snprintf(why, why_bytes, "%s", cs_log_errmsg(e->log));
        cs_engine_close(e);
        return err;
    }
    *out = e;
    return CS_OK;
}

void cs_engine_close(cs_engine *e)
{
    if (!e)
        return;
    cs_event_decoder_free(e->dec);
    cs_log_close(e->log);
    msgpack_zone_destroy(&e->zone);
    free(e);
}

const char *cs_engine_errmsg(const cs_engine *e)
{
    return e->errmsg;
}

cs_log *cs_engine_log(cs_engine *e)
{
    return e->log;
}

MDB_dbi cs_engine_items_dbi(cs_engine *e)
{
    return e->items;
}

MDB_dbi cs_engine_network_dbi(cs_engine *e)
{
    return e->network;
}

void cs_engine_set_actor(cs_engine *e, const char *actor)
{
    snprintf(e->actor, sizeof(e->actor), "%s", actor ? actor : "cli");
}

/* ---- apply ------------------------------------------------------------------------------- */

/* Writes an item record whose fields are the given msgpack bytes (as logged: no decode and
 * pack again). Logged items carry no origin: copies are the projection's. */
static cs_err put_record(cs_engine *e, cs_log_txn *txn, const cs_type *t, uint64_t id,
                         const cs_item *hdr, const uint8_t *fields, size_t fields_len)
{
    cs__pack p;
    cs__pack_init(&p);
    cs_err err = cs__item_pack(&p, hdr, fields, fields_len);
    if (err == CS_OK) {
        uint8_t kb[9];
        cs_item_key(kb, t, id);
        MDB_val k = {9, kb}, v = {p.sb.size, p.sb.data};
        err = cs_log_txn_put(txn, e->items, &k, &v, 0);
    }
    cs__pack_destroy(&p);
    return err;
}

static cs_err apply_item_fields(cs_engine *e, cs_log_txn *txn, const cs_type *t,
                                const cs_event_view *ev, bool del, cs_item *hdr_in,
                                const uint8_t *fields, size_t fields_len);

static cs_err apply_item(cs_engine *e, cs_log_txn *txn, const cs_event_view *ev, bool del)
{
    const cs_type *t = cs_schema_find_str(ev->type);
    if (!t || t->cls == CS_CLASS_LOCAL)
        return cs__fail(e, CS_CORRUPT, "event %llu: an item of an unknown or local type",
                        (unsigned long long)ev->seq);
    cs_assert(ev->fields_bytes != NULL); /* cs_event_decode and cs__emit both set them */
    cs_item hdr = {.version = ev->version};
    const uint8_t *fields = ev->fields_bytes;
    size_t fields_len = ev->fields_len;
    uint8_t *upgraded = NULL; /* owned: the fields read under this build's schema, when needed */
    if (!del && ev->schema < CS_SCHEMA_VERSION) {
        char why[CS__ERRMSG_BYTES];
        size_t upgraded_len;
        cs_err err = cs_schema_upgrade(t, ev->schema, fields, fields_len, &upgraded, &upgraded_len,
                                       why, sizeof(why));
        if (err != CS_OK)
            return cs__fail(e, err == CS_NO_MEMORY ? err : CS_CORRUPT,
                            "event %llu: its %s of schema version %llu does not read under "
                            "version %u: %s",
                            (unsigned long long)ev->seq, t->name, (unsigned long long)ev->schema,
                            CS_SCHEMA_VERSION, why);
        if (upgraded) {
            fields = upgraded;
            fields_len = upgraded_len;
        }
    }
    cs_err err = apply_item_fields(e, txn, t, ev, del, &hdr, fields, fields_len);
    free(upgraded);
    return err;
}

/* apply_item with the fields as this build reads them. */
static cs_err apply_item_fields(cs_engine *e, cs_log_txn *txn, const cs_type *t,
                                const cs_event_view *ev, bool del, cs_item *hdr_in,
                                const uint8_t *fields, size_t fields_len)
{
    cs_item hdr = *hdr_in;
    if (!del && ev->version <= 1)
        return put_record(e, txn, t, ev->id, &hdr, fields, fields_len);
    cs_item old;
    uint8_t kb[9];
    cs_item_key(kb, t, ev->id);
    MDB_val k = {9, kb}, v;
    int rc = mdb_get(cs_log_txn_mdb(txn), e->items, &k, &v);
    cs_err err = rc == 0              ? cs_item_parse_header(&v, &e->zone, &old)
                 : rc == MDB_NOTFOUND ? CS_NOT_FOUND
                                      : CS_IO;
    if (err != CS_OK)
        return cs__fail(e, err == CS_NOT_FOUND ? CS_CORRUPT : err,
                        "event %llu: %s of an item that does not exist",
                        (unsigned long long)ev->seq, del ? "delete" : "update");
    /* R13: a former copy edited after its branch was unlinked still remembers its origin. */
    hdr.has_detached = old.has_detached;
    memcpy(hdr.detached, old.detached, sizeof(hdr.detached));
    hdr.archived = del;
    return del ? put_record(e, txn, t, ev->id, &hdr, old.fields_bytes, old.fields_len)
               : put_record(e, txn, t, ev->id, &hdr, fields, fields_len);
}

/* Updates the shop the event names (its id), or for a sync with id 0 every linked shop. */
static cs_err update_shops(cs_engine *e, cs_log_txn *txn, const cs_event_view *ev, cs_kind kind,
                           json_t *fields)
{
    MDB_txn *m = cs_log_txn_mdb(txn);
    char key[13];
    cs_err err = CS_OK;
    MDB_cursor *cur;
    if (mdb_cursor_open(m, e->network, &cur))
        return CS_IO;
    MDB_val k = {5, "shop:"}, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; rc == 0 && err == CS_OK; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 13 || memcmp(k.mv_data, "shop:", 5) != 0)
            break;
        memcpy(key, k.mv_data, 13);
        json_t *shop = json_loadb(v.mv_data, v.mv_size, 0, NULL);
        if (!shop) {
            err = CS_CORRUPT;
            break;
        }
        uint64_t id = (uint64_t)json_integer_value(json_object_get(shop, "id"));
        int jrc = 0;
        if ((ev->id == 0 || id == ev->id) && kind == CS_KIND_SYNC) {
            /* R6: a sync point does not cover a branch whose switch is off. */
            if (json_is_true(json_object_get(shop, "linked")) &&
                json_is_true(json_object_get(shop, "switch")))
                jrc = json_object_set_new(shop, "sync_seq", json_integer((json_int_t)ev->seq));
        } else if (id == ev->id) {
            jrc = json_object_update(shop, fields);
        } else {
            json_decref(shop);
            continue;
        }
        err = jrc ? CS_NO_MEMORY : cs__net_put(txn, e->network, key, 13, shop);
        json_decref(shop);
    }
    mdb_cursor_close(cur);
    /* A walk that stopped on a storage error did not reach every shop: never ok (issue 12). */
    if (err == CS_OK && rc != 0 && rc != MDB_NOTFOUND)
        err = cs__fail(e, rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND ? CS_CORRUPT : CS_IO,
                       "walking the shops: %s", mdb_strerror(rc));
    if (err == CS_CORRUPT && !e->errmsg[0])
        cs__fail(e, err, "a shop record is not JSON: the store is damaged");
    return err;
}

static cs_err apply_network(cs_engine *e, cs_log_txn *txn, const cs_event_view *ev, cs_kind kind,
                            json_t *f)
{
    MDB_txn *m = cs_log_txn_mdb(txn);
    json_t *self = NULL, *net = NULL;
    cs_err err = CS_OK;
    if (kind == CS_KIND_INIT) {
        self = json_pack("{s:I,s:O,s:s}", "id", (json_int_t)ev->shop, "name",
                         json_object_get(f, "name"), "role", "single");
        return self ? (err = cs__net_put(txn, e->network, "self", 4, self), json_decref(self), err)
                    : CS_NO_MEMORY;
    }
    if ((err = cs__net_get(m, e->network, "self", 4, &self)) != CS_OK)
        return err;
    if (kind == CS_KIND_NETWORK) {
        err = json_object_set_new(self, "role", json_string("head")) ? CS_NO_MEMORY : CS_OK;
        if (err == CS_OK)
            err = cs__net_put(txn, e->network, "self", 4, self);
        if (err == CS_OK)
            err = cs__net_put(txn, e->network, "net", 3, f);
    } else if ((err = cs__net_get(m, e->network, "net", 3, &net)) == CS_OK) {
        err =
            json_object_update(net, f) ? CS_NO_MEMORY : cs__net_put(txn, e->network, "net", 3, net);
    }
    json_decref(self);
    json_decref(net);
    return err;
}

static cs_err apply_shop_add(cs_engine *e, cs_log_txn *txn, const cs_event_view *ev, cs_kind kind,
                             json_t *f)
{
    (void)kind; /* the table's signature: always CS_KIND_SHOP_ADD */
    cs_assert(kind == CS_KIND_SHOP_ADD);
    char key[13];
    cs__shop_key(key, ev->id);
    int jrc = json_object_set_new(f, "id", json_integer((json_int_t)ev->id)) |
              json_object_set_new(f, "linked", json_true()) |
              json_object_set_new(f, "switch", json_true()) |
              json_object_set_new(f, "sync_seq", json_integer((json_int_t)ev->seq));
    return jrc ? CS_NO_MEMORY : cs__net_put(txn, e->network, key, 13, f);
}

/* The network's events change small JSON records: fn gets the event's fields as JSON. */
typedef cs_err (*apply_json_fn)(cs_engine *e, cs_log_txn *txn, const cs_event_view *ev,
                                cs_kind kind, json_t *f);

static cs_err apply_json(cs_engine *e, cs_log_txn *txn, const cs_event_view *ev, cs_kind kind,
                         apply_json_fn fn)
{
    json_t *f = cs__json_from_msgpack(&ev->fields);
    if (!f)
        return CS_NO_MEMORY;
    cs_err err = fn(e, txn, ev, kind, f);
    json_decref(f);
    return err;
}

cs_err cs__apply(cs_engine *e, cs_log_txn *txn, const cs_event_view *ev)
{
    char why[CS__ERRMSG_BYTES];
    if (cs_schema_check_version(ev->seq, ev->schema, why, sizeof(why)) != CS_OK)
        return cs__fail(e, CS_PROTOCOL_MISMATCH, "%s", why);
    cs_kind kind = cs_kind_parse(ev->kind);
    switch (kind) {
    case CS_KIND_PUT:
    case CS_KIND_DELETE:
        return apply_item(e, txn, ev, kind == CS_KIND_DELETE);
    case CS_KIND_INIT:
    case CS_KIND_NETWORK:
    case CS_KIND_NETWORK_TYPES:
    case CS_KIND_NETWORK_MODE:
    case CS_KIND_NETWORK_WHATSAPP:
        return apply_json(e, txn, ev, kind, apply_network);
    case CS_KIND_SHOP_ADD:
        return apply_json(e, txn, ev, kind, apply_shop_add);
    case CS_KIND_SHOP_SWITCH:
    case CS_KIND_SHOP_UNLINK:
    case CS_KIND_SHOP_WHATSAPP:
    case CS_KIND_SYNC:
        return apply_json(e, txn, ev, kind, update_shops);
    case CS_KIND_SHOP_PASSWORD:
        return CS_OK; /* R9: a password change leaves no state */
    case CS_KIND_UNKNOWN:
        break;
    }
    return cs__fail(e, CS_CORRUPT,
                    "event %llu: unknown kind '%.*s' in an event of schema version %llu, which "
                    "defines no such kind",
                    (unsigned long long)ev->seq, (int)ev->kind.len, ev->kind.ptr,
                    (unsigned long long)ev->schema);
}

cs_err cs__emit(cs_engine *e, cs_log_txn *txn, const cs_event *evs, size_t n, uint64_t *last_seq)
{
    uint64_t first;
    cs_err err = cs_log_txn_append(txn, evs, n, &first);
    if (err != CS_OK)
        return cs__fail(e, err, "%s", cs_log_errmsg(e->log));
    static const uint8_t empty_map = 0x80;
    for (size_t i = 0; i < n; i++) {
        cs_event_view v = {.seq = first + i,
                           .shop = evs[i].shop,
                           .id = evs[i].id,
                           .version = evs[i].version,
                           .actor = evs[i].actor,
                           .kind = evs[i].kind,
                           .type = evs[i].type,
                           .schema = evs[i].schema ? evs[i].schema : 1};
        cs_assert(v.schema == CS_SCHEMA_VERSION); /* the engine writes only its own version */
        const uint8_t *f = evs[i].fields ? evs[i].fields : &empty_map;
        size_t flen = evs[i].fields ? evs[i].fields_len : 1, off = 0;
        v.fields_bytes = f;
        v.fields_len = flen;
        /* Items are applied from their bytes; only the network's small events need objects. */
        bool item = cs_kind_is_item(cs_kind_parse(v.kind));
        if (!item && msgpack_unpack((const char *)f, flen, &off, &e->zone, &v.fields) !=
                         MSGPACK_UNPACK_SUCCESS)
            return CS_NO_MEMORY; /* the bytes were checked by the append: only memory fails */
        if ((err = cs__apply(e, txn, &v)) != CS_OK)
            return err;
    }
    if (last_seq)
        *last_seq = first + n - 1;
    return CS_OK;
}

/* ---- digest and replay ------------------------------------------------------------------- */

static cs_err digest_db(MDB_txn *txn, MDB_dbi dbi, XXH3_state_t *st)
{
    MDB_cursor *cur;
    MDB_val k, v;
    if (mdb_cursor_open(txn, dbi, &cur))
        return CS_IO;
    int rc;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        cs_digest_kv(st, &k, &v);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? CS_OK : CS_IO;
}

cs_err cs_digest_dbs(MDB_txn *txn, const MDB_dbi *dbis, size_t n, uint64_t *out)
{
    XXH3_state_t *st = XXH3_createState();
    if (!st)
        return CS_NO_MEMORY;
    XXH3_64bits_reset(st);
    cs_err err = CS_OK;
    for (size_t i = 0; i < n && err == CS_OK; i++)
        err = digest_db(txn, dbis[i], st);
    if (err == CS_OK)
        *out = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return err;
}

cs_err cs_engine_digest(cs_engine *e, uint64_t *out)
{
    MDB_txn *txn;
    cs_err err = cs__read_begin(e, &txn);
    if (err != CS_OK)
        return err;
    MDB_dbi dbis[2] = {e->items, e->network};
    err = cs_digest_dbs(txn, dbis, 2, out);
    cs_log_read_end(e->log, txn);
    return err;
}

typedef struct replay_ctx {
    cs_engine *dst;
    cs_log_reader *r;
    cs_event_decoder *dec;
    uint64_t next;       /* first sequence of the batch */
    uint64_t reached;    /* first sequence after the batch, once it applied */
    uint64_t to;         /* the last sequence to apply (UINT64_MAX: the head) */
    const cs_type *only; /* NULL, or: skip put/delete events of every other type */
    bool at_end;
    bool done;
} replay_ctx;

/* True when the event changes nothing a replay restricted to `only` keeps: an item of another
 * type. Network events are always applied (they are small and every state has them). */
static bool replay_skips(const replay_ctx *rc, const cs_event_view *ev)
{
    if (!rc->only || !cs_kind_is_item(cs_kind_parse(ev->kind)))
        return false;
    return cs_schema_find_str(ev->type) != rc->only;
}

/* One batch. It seeks to its own start each time because cs_log_write may run it again after
 * growing the map, and the reader has moved on by then. */
static cs_err replay_batch(cs_log_txn *txn, void *ctx)
{
    replay_ctx *rc = ctx;
    cs_log_record rec;
    cs_event_view ev;
    cs_err err = cs_log_reader_seek(rc->r, rc->next);
    if (err != CS_OK)
        return err;
    rc->reached = rc->next;
    rc->at_end = false;
    for (unsigned i = 0; i < REPLAY_BATCH_EVENTS; i++, rc->reached++) {
        if (rc->reached > rc->to) {
            rc->at_end = true;
            return CS_OK;
        }
        err = cs_log_reader_next(rc->r, &rec);
        if (err == CS_NOT_FOUND) {
            rc->at_end = true;
            return CS_OK;
        }
        if (err == CS_OK)
            err = cs_event_decode(rc->dec, rec.event, rec.event_len, &ev);
        if (err == CS_OK && ev.seq != rec.seq)
            err = cs__fail(rc->dst, CS_CORRUPT, "event %llu: its seq field says %llu",
                           (unsigned long long)rec.seq, (unsigned long long)ev.seq);
        /* cs__apply's scratch objects (an update's old header) live in the engine's zone and
         * die with the event: without the clear, a replay grows it by one header per update. */
        msgpack_zone_clear(&rc->dst->zone);
        if (err == CS_OK && !replay_skips(rc, &ev))
            err = cs__apply(rc->dst, txn, &ev);
        if (err != CS_OK)
            return err;
    }
    return CS_OK;
}

cs_err cs_engine_replay_range(cs_engine *dst, cs_log_reader *r, uint64_t from, uint64_t to,
                              const cs_type *only)
{
    cs_assert(from >= 1);
    dst->errmsg[0] = '\0';
    replay_ctx rc = {.dst = dst, .r = r, .next = from, .to = to, .only = only};
    cs_err err = cs_event_decoder_new(&rc.dec);
    while (err == CS_OK && !rc.done && rc.next <= to) {
        err = cs_log_write(dst->log, replay_batch, &rc);
        rc.next = rc.reached;
        rc.done = rc.at_end;
    }
    cs_event_decoder_free(rc.dec);
    if (err != CS_OK && !dst->errmsg[0])
        cs__fail(dst, err, "replay stopped: %s", cs_log_reader_errmsg(r));
    return err;
}

cs_err cs_engine_replay_digest(cs_engine *e, const char *scratch_dir, uint64_t *out)
{
    replay_ctx rc = {0};
    cs_err err = cs_engine_open(scratch_dir, NULL, &rc.dst);
    if (err != CS_OK)
        return cs__fail(e, err, "cannot create the scratch directory %s", scratch_dir);
    err = cs_log_reader_open(e->log, &rc.r);
    if (err == CS_OK)
        err = cs_event_decoder_new(&rc.dec);
    rc.next = 1;
    rc.to = UINT64_MAX;
    while (err == CS_OK && !rc.done) {
        err = cs_log_write(rc.dst->log, replay_batch, &rc);
        rc.next = rc.reached;
        rc.done = rc.at_end;
    }
    if (err == CS_OK)
        err = cs_engine_digest(rc.dst, out);
    else /* the scratch engine's sentence first: it names the event apply refused */
        cs__fail(e, err, "replay stopped: %s",
                 rc.dst->errmsg[0] ? rc.dst->errmsg
                 : rc.r            ? cs_log_reader_errmsg(rc.r)
                                   : cs_log_errmsg(e->log));
    cs_event_decoder_free(rc.dec);
    cs_log_reader_close(rc.r);
    cs_engine_close(rc.dst);
    char path[4096];
    snprintf(path, sizeof(path), "%s/data.mdb", scratch_dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/lock.mdb", scratch_dir);
    unlink(path);
    rmdir(scratch_dir);
    return err;
}
