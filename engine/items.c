/*
 * items.c: the item commands of a head office or single store: put, del, put_many (an import),
 * the id allocation they share, and cs__write_item, the one write path remote.c's shared-record
 * writes go through too. Reads (get, list) are query.c's; `init` is network.c's.
 *
 * A write runs inside cs_log_write: it reads the current state, refuses with a code and a
 * sentence when a rule or the schema says no (nothing is written then), else emits its event,
 * which appends it and applies it in the same transaction. Shop-local types (staff, shop_info)
 * are written to `local` without an event: they never enter the log (R9).
 *
 * Decisions (docs/design.md): a delete archives (R4 at the head office too), so references
 * to the item keep resolving; a new reference to an archived item is a dangling_reference.
 * Ids are (shop id << 32) | a per-shop counter: unique in the network without coordination,
 * because shop ids are unique 31-bit numbers and each shop counts its own.
 */
#include "engine/engine_int.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHOP_NAME_MAX_BYTES 120
#define ID_COUNTER_MAX 0xffffffffu

typedef cs__write write_ctx; /* engine_int.h: remote.c writes branches' records through it */

static cs_err alloc_id(cs_engine *e, cs_log_txn *txn, uint64_t self, uint64_t *out);

/* The references the item being updated holds already (target type code, id). */
typedef struct ref_set {
    uint64_t (*refs)[2];
    size_t n, cap;
} ref_set;

typedef struct ref_ctx {
    cs_engine *e;
    MDB_txn *txn;
    msgpack_zone zone;
    const ref_set *kept;
} ref_ctx;

static cs_err ref_collect(const cs_type *target, uint64_t id, const char *path, void *ctx)
{
    (void)path;
    ref_set *s = ctx;
    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 16;
        void *p = realloc(s->refs, ncap * sizeof(s->refs[0]));
        if (!p)
            return CS_NO_MEMORY;
        s->refs = p;
        s->cap = ncap;
    }
    s->refs[s->n][0] = target->code;
    s->refs[s->n][1] = id;
    s->n++;
    return CS_OK;
}

static bool ref_kept(const ref_set *s, const cs_type *target, uint64_t id)
{
    for (size_t i = 0; s && i < s->n; i++)
        if (s->refs[i][0] == target->code && s->refs[i][1] == id)
            return true;
    return false;
}

/* Decision (docs/design.md, "Deletes archive"): only a *new* reference must name a live item.
 * One the item holds already is kept whatever became of its target (archived at the head
 * office, or, on a store after unlink, a head-office id of a type that was never synced), so a
 * service whose category was deleted can still be renamed. */
static cs_err check_ref(const cs_type *target, uint64_t id, const char *path, void *ctx)
{
    ref_ctx *rc = ctx;
    cs_item it;
    msgpack_zone_clear(&rc->zone);
    cs_err err = cs_item_read(rc->txn, rc->e->items, target, id, &rc->zone, &it);
    if ((err == CS_NOT_FOUND || (err == CS_OK && it.archived)) && ref_kept(rc->kept, target, id))
        return CS_OK;
    if (err == CS_NOT_FOUND)
        return cs__fail(rc->e, CS_DANGLING_REFERENCE, "field '%s': %s %llu does not exist", path,
                        target->name, (unsigned long long)id);
    if (err == CS_OK && it.archived)
        return cs__fail(rc->e, CS_DANGLING_REFERENCE, "field '%s': %s %llu was deleted", path,
                        target->name, (unsigned long long)id);
    return err;
}

/* The references of the stored version of w's item, when w updates one. */
static cs_err kept_refs(cs_engine *e, MDB_txn *txn, const write_ctx *w, ref_set *out)
{
    if (!w->id || w->create)
        return CS_OK;
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 1024))
        return CS_NO_MEMORY;
    cs_item old;
    MDB_dbi dbi = w->t->cls == CS_CLASS_LOCAL ? e->local : e->items;
    cs_err err = cs_item_read(txn, dbi, w->t, w->id, &z, &old);
    if (err == CS_OK)
        err = cs_schema_refs(w->t, &old.fields, ref_collect, out);
    else if (err == CS_NOT_FOUND)
        err = CS_OK; /* check_existing has refused it already */
    msgpack_zone_destroy(&z);
    return err;
}

static cs_err check_refs(cs_engine *e, MDB_txn *txn, const write_ctx *w)
{
    size_t off = 0;
    msgpack_object fields;
    if (msgpack_unpack((const char *)w->fields, w->fields_len, &off, &e->zone, &fields) !=
        MSGPACK_UNPACK_SUCCESS)
        return CS_NO_MEMORY; /* we packed these bytes ourselves */
    ref_set kept = {0};
    cs_err err = kept_refs(e, txn, w, &kept);
    ref_ctx rc = {.e = e, .txn = txn, .kept = &kept};
    if (err == CS_OK && !msgpack_zone_init(&rc.zone, 1024))
        err = CS_NO_MEMORY;
    else if (err == CS_OK) {
        err = cs_schema_refs(w->t, &fields, check_ref, &rc);
        msgpack_zone_destroy(&rc.zone);
    }
    free(kept.refs);
    return err;
}

cs_err cs_engine_alloc_id(cs_engine *e, cs_log_txn *txn, uint64_t shop, uint64_t *out)
{
    cs_role role = CS_ROLE_NONE;
    if (shop == 0) {
        cs_err err = cs__role_get(cs_log_txn_mdb(txn), e, &role, &shop);
        if (err != CS_OK)
            return err;
        if (role == CS_ROLE_NONE)
            return cs__fail(e, CS_NOT_FOUND, "this directory is not initialised");
    }
    return alloc_id(e, txn, shop, out);
}

static cs_err alloc_id(cs_engine *e, cs_log_txn *txn, uint64_t self, uint64_t *out)
{
    MDB_val k = {7, "next_id"}, v;
    uint64_t next = 1;
    int rc = mdb_get(cs_log_txn_mdb(txn), e->local, &k, &v);
    if (rc == 0 && v.mv_size == sizeof(next))
        memcpy(&next, v.mv_data, sizeof(next));
    else if (rc != MDB_NOTFOUND)
        return CS_CORRUPT;
    if (next > ID_COUNTER_MAX)
        return cs__fail(e, CS_STORAGE_FULL, "this shop has used all of its item ids");
    *out = (self << 32) | next;
    next++;
    v.mv_size = sizeof(next);
    v.mv_data = &next;
    return cs_log_txn_put(txn, e->local, &k, &v, 0);
}

/* Reads the item being updated and checks it may be: exists, not archived, expected version. */
static cs_err check_existing(cs_engine *e, MDB_txn *m, MDB_dbi dbi, write_ctx *w)
{
    cs_item old;
    cs_err err = cs_item_read(m, dbi, w->t, w->id, &e->zone, &old);
    if (err == CS_NOT_FOUND)
        return cs__fail(e, err, "%s %llu does not exist", w->t->name, (unsigned long long)w->id);
    if (err != CS_OK)
        return cs__fail(e, err, "%s %llu cannot be read", w->t->name, (unsigned long long)w->id);
    if (old.archived)
        return cs__fail(e, CS_NOT_FOUND, "%s %llu was deleted", w->t->name,
                        (unsigned long long)w->id);
    if (w->expect && w->expect != old.version)
        return cs__fail(e, CS_VERSION_CONFLICT, "%s %llu is at version %llu, not %llu", w->t->name,
                        (unsigned long long)w->id, (unsigned long long)old.version,
                        (unsigned long long)w->expect);
    w->res.version = old.version + 1;
    if (w->del) { /* a delete keeps the fields: the archived item stays readable (R4) */
        cs__pack p;
        cs__pack_init(&p);
        msgpack_pack_object(&p.pk, old.fields);
        if (p.failed) {
            cs__pack_destroy(&p);
            return CS_NO_MEMORY;
        }
        w->fields = (const uint8_t *)msgpack_zone_malloc(&e->zone, p.sb.size);
        if (w->fields)
            memcpy((void *)w->fields, p.sb.data, p.sb.size);
        w->fields_len = p.sb.size;
        cs__pack_destroy(&p);
        if (!w->fields)
            return CS_NO_MEMORY;
    }
    return CS_OK;
}

static cs_err read_only_copy(cs_engine *e, const cs_type *t, uint64_t id)
{
    return cs__fail(e, CS_READ_ONLY_COPY,
                    "%s %llu is a copy of a head-office item: change it at the head office",
                    t->name, (unsigned long long)id);
}

/* True when item id is a copy on this branch (read in its own snapshot). */
static bool is_copy(cs_engine *e, const cs_type *t, uint64_t id)
{
    MDB_txn *m;
    if (t->cls == CS_CLASS_LOCAL || cs_log_read_begin(e->log, &m) != CS_OK)
        return false;
    cs_item it;
    msgpack_zone_clear(&e->zone);
    bool copy = cs_item_read(m, e->items, t, id, &e->zone, &it) == CS_OK && it.has_origin;
    cs_log_read_end(e->log, m);
    return copy;
}

/* R1, R11 on a branch: copies are read-only, advanced settings belong to the head office. */
static cs_err branch_rules(cs_engine *e, MDB_txn *m, write_ctx *w)
{
    /* The copy check comes first (R1: a copy is read-only, whatever its type): a copied
     * advanced_setting is `read_only_copy`, only a branch's own write of one is R11's. */
    if (w->id && w->t->cls != CS_CLASS_LOCAL) {
        cs_item it;
        cs_err err = cs_item_read(m, e->items, w->t, w->id, &e->zone, &it);
        if (err != CS_OK && err != CS_NOT_FOUND)
            return cs__fail(e, err, "%s %llu cannot be read", w->t->name,
                            (unsigned long long)w->id);
        if (err == CS_OK && it.has_origin)
            return cs__fail(e, CS_READ_ONLY_COPY,
                            "%s %llu is a copy of head-office item %llu: change it at the head "
                            "office",
                            w->t->name, (unsigned long long)w->id,
                            (unsigned long long)it.origin[1]);
    }
    if (strcmp(w->t->name, "advanced_setting") == 0)
        return cs__fail(e, CS_FORBIDDEN, "only the head office edits advanced settings");
    return CS_OK;
}

/* R8: a shared record written on a branch waits in the durable outbox until the head office
 * has it. Key: u64 BE, one more than the last; value: msgpack
 * {kind, type, id, version, expect, fields, req}. req, 16 random bytes, names the request: the
 * head office answers each (branch, req) once however often it arrives (remote.c). */
static cs_err outbox_put(cs_engine *e, cs_log_txn *txn, const write_ctx *w)
{
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t next = 1;
    if (mdb_cursor_open(cs_log_txn_mdb(txn), e->outbox, &cur))
        return CS_IO;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == 0 && k.mv_size == 8)
        next = cs_be64_get(k.mv_data);
    if (rc == 0)
        next++;
    uint8_t kb[8];
    cs_be64_put(kb, next);
    cs__pack p;
    cs__pack_init(&p);
    msgpack_pack_map(&p.pk, 7);
    cs_str kind = cs_kind_str(w->del ? CS_KIND_DELETE : CS_KIND_PUT);
    msgpack_pack_str_with_body(&p.pk, "kind", 4);
    msgpack_pack_str_with_body(&p.pk, kind.ptr, kind.len);
    msgpack_pack_str_with_body(&p.pk, "type", 4);
    msgpack_pack_str_with_body(&p.pk, w->t->name, strlen(w->t->name));
    msgpack_pack_str_with_body(&p.pk, "id", 2);
    msgpack_pack_uint64(&p.pk, w->res.id);
    msgpack_pack_str_with_body(&p.pk, "version", 7);
    msgpack_pack_uint64(&p.pk, w->res.version);
    msgpack_pack_str_with_body(&p.pk, "expect", 6);
    msgpack_pack_uint64(&p.pk, w->expect);
    msgpack_pack_str_with_body(&p.pk, "fields", 6);
    if (msgpack_sbuffer_write(&p.sb, (const char *)w->fields, w->fields_len))
        p.failed = true;
    uint8_t req[CS_REQUEST_ID_BYTES];
    if (sodium_init() < 0)
        p.failed = true;
    else
        randombytes_buf(req, sizeof(req));
    msgpack_pack_str_with_body(&p.pk, "req", 3);
    msgpack_pack_bin_with_body(&p.pk, req, sizeof(req));
    cs_err err = CS_NO_MEMORY;
    if (!p.failed) {
        k = (MDB_val){8, kb};
        v = (MDB_val){p.sb.size, p.sb.data};
        err = cs_log_txn_put(txn, e->outbox, &k, &v, MDB_APPEND);
    }
    cs__pack_destroy(&p);
    return err;
}

static cs_err write_local(cs_engine *e, cs_log_txn *txn, write_ctx *w)
{
    cs_item hdr = {.version = w->res.version, .archived = w->del};
    cs__pack p;
    cs__pack_init(&p);
    cs_err err = cs__item_pack(&p, &hdr, w->fields, w->fields_len);
    if (err == CS_OK) {
        uint8_t kb[9];
        cs_item_key(kb, w->t, w->res.id);
        MDB_val k = {9, kb}, v = {p.sb.size, p.sb.data};
        err = cs_log_txn_put(txn, e->local, &k, &v, 0);
    }
    cs__pack_destroy(&p);
    return err;
}

/* One item's checks and write, given this shop's role and id as read in the same txn. */
static cs_err write_one(cs_log_txn *txn, write_ctx *w, cs_role role, uint64_t self)
{
    cs_engine *e = w->e;
    msgpack_zone_clear(&e->zone);
    if (role == CS_ROLE_NONE)
        return cs__fail(e, CS_NOT_FOUND, "this directory is not initialised: run chainsync init");
    /* R1 before anything else: a copy is read-only whatever its state (archived too). */
    cs_err err = role == CS_ROLE_BRANCH ? branch_rules(e, cs_log_txn_mdb(txn), w) : CS_OK;
    if (err != CS_OK)
        return err;
    w->shop = self;
    w->actor = e->actor;
    err = cs__write_item(txn, w);
    if (err == CS_OK && role == CS_ROLE_BRANCH && w->t->cls == CS_CLASS_SHARED)
        err = outbox_put(e, txn, w);
    return err;
}

cs_err cs__write_item(cs_log_txn *txn, write_ctx *w)
{
    cs_engine *e = w->e;
    MDB_txn *m = cs_log_txn_mdb(txn);
    MDB_dbi dbi = w->t->cls == CS_CLASS_LOCAL ? e->local : e->items;
    cs_err err = CS_OK;
    cs_assert(w->actor != NULL);
    cs_assert(!w->create || w->id != 0);
    w->res.id = w->id;
    w->res.version = 1;
    if (w->id && !w->create)
        err = check_existing(e, m, dbi, w);
    else if (w->expect)
        err = cs__fail(e, CS_VERSION_CONFLICT, "a new %s has no version to expect", w->t->name);
    else if (!w->id)
        err = alloc_id(e, txn, w->shop, &w->res.id);
    if (err == CS_OK && !w->del)
        err = check_refs(e, m, w);
    if (err != CS_OK)
        return err;
    if (w->t->cls == CS_CLASS_LOCAL) {
        w->res.seq = 0; /* R9: never logged */
        return write_local(e, txn, w);
    }
    cs_event ev = {.shop = w->shop,
                   .id = w->res.id,
                   .version = w->res.version,
                   .actor = {w->actor, strlen(w->actor)},
                   .kind = cs_kind_str(w->del ? CS_KIND_DELETE : CS_KIND_PUT),
                   .type = {w->t->name, strlen(w->t->name)},
                   .fields = w->fields,
                   .fields_len = w->fields_len,
                   .schema = CS_SCHEMA_VERSION};
    return cs__emit(e, txn, &ev, 1, &w->res.seq);
}

static cs_err write_fn(cs_log_txn *txn, void *ctx)
{
    write_ctx *w = ctx;
    uint64_t self = 0;
    cs_role role = CS_ROLE_NONE;
    cs_err err = cs__role_get(cs_log_txn_mdb(txn), w->e, &role, &self);
    return err != CS_OK ? err : write_one(txn, w, role, self);
}

static cs_err find_type(cs_engine *e, const char *type, const cs_type **out)
{
    e->errmsg[0] = '\0';
    *out = type ? cs_schema_find(type) : NULL;
    if (!*out)
        return cs__fail(e, CS_UNKNOWN_TYPE, "'%s' is not a type (see chainsync put --help)",
                        type ? type : "");
    return CS_OK;
}

cs_err cs_engine_put(cs_engine *e, const char *type, uint64_t id, const json_t *fields,
                     uint64_t expect_version, cs_write_result *out)
{
    write_ctx w = {.e = e, .id = id, .expect = expect_version};
    cs_err err = find_type(e, type, &w.t);
    if (err != CS_OK)
        return err;
    char msg[256];
    uint8_t *packed = NULL;
    err = cs_schema_from_json(w.t, fields, &packed, &w.fields_len, msg, sizeof(msg));
    if (err != CS_OK && id && is_copy(e, w.t, id))
        return read_only_copy(e, w.t, id); /* R1 first: no fields make a copy writable */
    if (err != CS_OK)
        return cs__fail(e, err, "%s: %s", type, msg);
    w.fields = packed;
    err = cs_log_write(e->log, write_fn, &w);
    free(packed);
    if (err == CS_OK && out)
        *out = w.res;
    return err;
}

cs_err cs_engine_del(cs_engine *e, const char *type, uint64_t id, uint64_t expect_version,
                     cs_write_result *out)
{
    write_ctx w = {.e = e, .id = id, .expect = expect_version, .del = true};
    cs_err err = find_type(e, type, &w.t);
    if (err != CS_OK)
        return err;
    if (id == 0)
        return cs__fail(e, CS_INVALID_INPUT, "del needs the id of the %s to delete", type);
    err = cs_log_write(e->log, write_fn, &w);
    if (err == CS_OK && out)
        *out = w.res;
    return err;
}

typedef struct many_ctx {
    write_ctx *w; /* one per element; fields owned here */
    size_t n;
} many_ctx;

static cs_err many_fn(cs_log_txn *txn, void *ctx)
{
    many_ctx *m = ctx;
    /* The role is read once per batch, not per element: it is a JSON parse of the `self`
     * record (read per element it was a fifth of put_many's instructions, bench/engine.c),
     * and no item write changes `self`, so every element would read the same answer. */
    uint64_t self = 0;
    cs_role role = CS_ROLE_NONE;
    cs_err rerr = cs__role_get(cs_log_txn_mdb(txn), m->w[0].e, &role, &self);
    if (rerr != CS_OK)
        return rerr;
    for (size_t i = 0; i < m->n; i++) {
        cs_err err = write_one(txn, &m->w[i], role, self);
        if (err != CS_OK) {
            char why[CS__ERRMSG_BYTES];
            snprintf(why, sizeof(why), "%s", m->w[i].e->errmsg);
            return cs__fail(m->w[i].e, err, "element %zu: %s", i, why);
        }
    }
    return CS_OK;
}

cs_err cs_engine_put_many(cs_engine *e, const char *type, const json_t *fields_array,
                          cs_write_result *results)
{
    const cs_type *t;
    cs_err err = find_type(e, type, &t);
    if (err != CS_OK)
        return err;
    size_t n = json_array_size(fields_array);
    if (!json_is_array(fields_array) || n == 0 || n > CS_LOG_BATCH_EVENTS_MAX)
        return cs__fail(e, CS_INVALID_INPUT, "expected a list of 1 to %u items",
                        CS_LOG_BATCH_EVENTS_MAX);
    many_ctx m = {.w = calloc(n, sizeof(write_ctx)), .n = n};
    if (!m.w)
        return CS_NO_MEMORY;
    char msg[256];
    for (size_t i = 0; i < n && err == CS_OK; i++) {
        uint8_t *packed = NULL;
        m.w[i] = (write_ctx){.e = e, .t = t};
        err = cs_schema_from_json(t, json_array_get(fields_array, i), &packed, &m.w[i].fields_len,
                                  msg, sizeof(msg));
        if (err != CS_OK)
            cs__fail(e, err, "%s, element %zu: %s", type, i, msg);
        m.w[i].fields = packed;
    }
    if (err == CS_OK)
        err = cs_log_write(e->log, many_fn, &m);
    for (size_t i = 0; i < n; i++) {
        if (err == CS_OK && results)
            results[i] = m.w[i].res;
        free((void *)m.w[i].fields);
    }
    free(m.w);
    return err;
}
