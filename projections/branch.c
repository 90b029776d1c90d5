/*
 * branch.c: the branch handle: opening its directory, binding it to a network (R10), writing
 * item records for apply.c and syncpoint.c (cs__rec_put), and loading and saving its projection
 * state. The state is small (five numbers, four flags and the synced set) and kept as compact
 * JSON with sorted keys so equal states have equal bytes; its invariants are listed with
 * cs__bstate in projection_int.h and checked here on every load and save.
 */
#include "projections/projection_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cs_err cs__branch_fail(cs_branch *b, cs_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs_errmsg_vformat(b->errmsg, sizeof(b->errmsg), err, fmt, ap);
    va_end(ap);
    return err;
}

cs_err cs__branch_read_begin(cs_branch *b, MDB_txn **txn)
{
    cs_log *log = cs_engine_log(b->engine);
    cs_err err = cs_log_read_begin(log, txn);
    return err == CS_OK ? CS_OK : cs__branch_fail(b, err, "%s", cs_log_errmsg(log));
}

cs_err cs_branch_open(const char *dir, const cs_log_options *opts, cs_branch **out)
{
    cs_branch *b = calloc(1, sizeof(*b));
    if (!b)
        return CS_NO_MEMORY;
    if (!msgpack_zone_init(&b->zone, 4096)) {
        free(b);
        return CS_NO_MEMORY;
    }
    msgpack_sbuffer_init(&b->rec);
    msgpack_sbuffer_init(&b->flds);
    msgpack_packer_init(&b->rec_pk, &b->rec, msgpack_sbuffer_write);
    cs_err err = cs_engine_open(dir, opts, &b->engine);
    if (err == CS_OK)
        err = cs_event_decoder_new(&b->dec);
    cs_log *log = b->engine ? cs_engine_log(b->engine) : NULL;
    if (err == CS_OK)
        err = cs_log_dbi_open(log, "mirror", 0, &b->mirror);
    if (err == CS_OK)
        err = cs_log_dbi_open(log, "origin", 0, &b->origin);
    if (err == CS_OK)
        err = cs_log_dbi_open(log, "dirty", 0, &b->dirty);
    if (err == CS_OK)
        err = cs_log_dbi_open(log, "branch", 0, &b->meta);
    if (err == CS_OK)
        err = cs_log_dbi_open(log, "local", 0, &b->local);
    if (err != CS_OK) {
        cs_branch_close(b);
        return err;
    }
    b->items = cs_engine_items_dbi(b->engine);
    *out = b;
    return CS_OK;
}

void cs_branch_close(cs_branch *b)
{
    if (!b)
        return;
    cs_event_decoder_free(b->dec);
    cs_engine_close(b->engine);
    msgpack_zone_destroy(&b->zone);
    msgpack_sbuffer_destroy(&b->rec);
    msgpack_sbuffer_destroy(&b->flds);
    cs__batch_free(&b->batch);
    free(b);
}

const char *cs_branch_errmsg(const cs_branch *b)
{
    return b->errmsg;
}

cs_engine *cs_branch_engine(cs_branch *b)
{
    return b->engine;
}

/* ---- item records ------------------------------------------------------------------------ */

cs_err cs__rec_put(cs_branch *b, cs_log_txn *txn, MDB_dbi dbi, const uint8_t key[9],
                   uint64_t version, bool archived, const uint64_t *origin, const uint8_t *fields,
                   size_t fields_len)
{
    msgpack_packer *pk = &b->rec_pk;
    msgpack_sbuffer_clear(&b->rec);
    /* The same encoding cs_item_write gives: msgpack-c's packer for the header, then the
     * fields' bytes, which msgpack-c packed at the head office (or in cs_schema_remap). */
    int rc = msgpack_pack_array(pk, 5) | msgpack_pack_uint64(pk, version) |
             (archived ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
    if (origin) {
        rc |= msgpack_pack_array(pk, 3);
        for (int i = 0; i < 3; i++)
            rc |= msgpack_pack_uint64(pk, origin[i]);
    } else {
        rc |= msgpack_pack_nil(pk);
    }
    rc |= msgpack_pack_nil(pk) | msgpack_sbuffer_write(&b->rec, (const char *)fields, fields_len);
    if (rc != 0)
        return CS_NO_MEMORY;
    MDB_val k = {9, (void *)key}, v = {b->rec.size, b->rec.data};
    return cs_log_txn_put(txn, dbi, &k, &v, 0);
}

/* ---- state ------------------------------------------------------------------------------- */

static cs_type_set types_from_json(const json_t *arr)
{
    cs_type_set set = {0};
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const cs_type *t = cs_schema_find(json_string_value(json_array_get(arr, i)));
        if (t && t->cls == CS_CLASS_SYNCED)
            cs_type_set_add(&set, t->code);
    }
    return set;
}

static json_t *types_to_json(cs_type_set set)
{
    unsigned n;
    const cs_type *t = cs_schema_types(&n);
    json_t *arr = json_array();
    for (unsigned i = 0; arr && i < n; i++)
        if (cs_type_set_has(set, t[i].code))
            if (json_array_append_new(arr, json_string(t[i].name))) {
                json_decref(arr);
                return NULL; /* the caller's json_pack fails on NULL: out of memory */
            }
    return arr;
}

/* Before a network event names them, every catalog type is synced (R7's default). */
static cs_type_set all_synced_types(void)
{
    unsigned n;
    const cs_type *t = cs_schema_types(&n);
    cs_type_set set = {0};
    for (unsigned i = 0; i < n; i++)
        if (t[i].cls == CS_CLASS_SYNCED)
            cs_type_set_add(&set, t[i].code);
    return set;
}

bool cs__bstate_invariants_hold(const cs__bstate *st)
{
    bool fresh =
        st->cursor == 0 && st->chain == 0 && st->sync_seq == 0 && !st->linked && !st->unlinked;
    return (st->shop != 0 || fresh) &&                            /* 1 */
           !(st->linked && st->unlinked) &&                       /* 2 */
           st->sync_seq <= st->cursor &&                          /* 3 */
           (st->sync_seq == 0 || st->linked || st->unlinked) &&   /* 3 */
           (st->cursor != 0 || st->chain == 0) &&                 /* 4 */
           (st->types_mask.bits & ~all_synced_types().bits) == 0; /* 5 */
}

cs_err cs__state_load(cs_branch *b, MDB_txn *txn, cs__bstate *out)
{
    cs__bstate st = {.types_mask = all_synced_types(), .sync_on = true};
    MDB_val k = {5, "state"}, v;
    int rc = mdb_get(txn, b->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        *out = st;
        return CS_OK;
    }
    if (rc)
        return CS_IO;
    json_t *j = json_loadb(v.mv_data, v.mv_size, 0, NULL);
    if (!j)
        return cs__branch_fail(b, CS_CORRUPT, "the branch state does not read back");
    st.shop = (uint64_t)json_integer_value(json_object_get(j, "shop"));
    st.head = (uint64_t)json_integer_value(json_object_get(j, "head"));
    st.cursor = (uint64_t)json_integer_value(json_object_get(j, "cursor"));
    st.sync_seq = (uint64_t)json_integer_value(json_object_get(j, "sync_seq"));
    st.types_mask = types_from_json(json_object_get(j, "types"));
    st.linked = json_is_true(json_object_get(j, "linked"));
    st.sync_on = json_is_true(json_object_get(j, "switch"));
    st.continuous = json_is_true(json_object_get(j, "continuous"));
    st.unlinked = json_is_true(json_object_get(j, "unlinked"));
    json_decref(j);
    k = (MDB_val){5, "chain"};
    if ((rc = mdb_get(txn, b->meta, &k, &v)) == 0 && v.mv_size == 8)
        st.chain = cs_be64_get(v.mv_data);
    else if (rc != MDB_NOTFOUND)
        return cs__branch_fail(b, CS_CORRUPT, "the branch's chain value does not read back");
    /* Read from disk: a state that breaks an invariant is damage, never an assertion. */
    if (!cs__bstate_invariants_hold(&st))
        return cs__branch_fail(b, CS_CORRUPT,
                               "the branch state is inconsistent (shop %llu, cursor %llu, sync "
                               "point %llu, linked %d, unlinked %d)",
                               (unsigned long long)st.shop, (unsigned long long)st.cursor,
                               (unsigned long long)st.sync_seq, st.linked, st.unlinked);
    *out = st;
    return CS_OK;
}

cs_err cs__state_save(cs_branch *b, cs_log_txn *txn, const cs__bstate *st)
{
    cs_assert(cs__bstate_invariants_hold(st));
    json_t *j = json_pack("{s:I,s:I,s:I,s:I,s:o,s:b,s:b,s:b,s:b}", "shop", (json_int_t)st->shop,
                          "head", (json_int_t)st->head, "cursor", (json_int_t)st->cursor,
                          "sync_seq", (json_int_t)st->sync_seq, "types",
                          types_to_json(st->types_mask), "linked", st->linked, "switch",
                          st->sync_on, "continuous", st->continuous, "unlinked", st->unlinked);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (!s)
        return CS_NO_MEMORY;
    MDB_val k = {5, "state"}, v = {strlen(s), s};
    cs_err err = cs_log_txn_put(txn, b->meta, &k, &v, 0);
    free(s);
    uint8_t cb[8];
    cs_be64_put(cb, st->chain);
    k = (MDB_val){5, "chain"};
    v = (MDB_val){8, cb};
    if (err == CS_OK)
        err = cs_log_txn_put(txn, b->meta, &k, &v, 0);
    return err;
}

cs_err cs_branch_state_get(cs_branch *b, cs_branch_state *out)
{
    MDB_txn *txn;
    cs_err err = cs__branch_read_begin(b, &txn);
    if (err != CS_OK)
        return err;
    cs__bstate st;
    err = cs__state_load(b, txn, &st);
    MDB_stat ms;
    if (err == CS_OK && mdb_stat(txn, b->dirty, &ms))
        err = CS_IO;
    cs_log_read_end(cs_engine_log(b->engine), txn);
    if (err != CS_OK)
        return err;
    *out = (cs_branch_state){.shop = st.shop,
                             .head = st.head,
                             .cursor = st.cursor,
                             .chain = st.chain,
                             .sync_seq = st.sync_seq,
                             .dirty = ms.ms_entries,
                             .linked = st.linked,
                             .sync_on = st.sync_on,
                             .continuous = st.continuous,
                             .unlinked = st.unlinked};
    return CS_OK;
}

cs_err cs_branch_digest(cs_branch *b, uint64_t *out)
{
    MDB_txn *txn;
    cs_err err = cs__branch_read_begin(b, &txn);
    if (err != CS_OK)
        return err;
    MDB_dbi dbis[5] = {b->items, b->origin, b->mirror, b->dirty, b->meta};
    err = cs_digest_dbs(txn, dbis, 5, out);
    cs_log_read_end(cs_engine_log(b->engine), txn);
    return err;
}

/* ---- bind -------------------------------------------------------------------------------- */

/* Whether the directory may become (or already is) branch `shop`; *needed is set when it is
 * not that branch yet. Reads only. */
static cs_err bind_check(cs_branch *b, MDB_txn *m, uint64_t shop, bool *needed)
{
    cs__bstate st;
    cs_err err = cs__state_load(b, m, &st);
    if (err != CS_OK)
        return err;
    *needed = false;
    if (st.unlinked && st.shop == shop)
        return cs__branch_fail(b, CS_NOT_IN_NETWORK,
                               "shop %llu was unlinked from its network: it is a single store now",
                               (unsigned long long)shop);
    if (st.shop == shop)
        return CS_OK;
    if (st.shop != 0 && !st.unlinked)
        return cs__branch_fail(b, CS_INVALID_INPUT, "this directory is branch %llu, not %llu",
                               (unsigned long long)st.shop, (unsigned long long)shop);
    cs_shop_info self;
    if (cs_engine_self_txn(b->engine, m, &self) == CS_OK && self.role == CS_ROLE_HEAD)
        return cs__branch_fail(b, CS_FORBIDDEN, "this directory is a head office");
    *needed = true;
    return CS_OK;
}

cs_err cs__bind_write(cs_branch *b, cs_log_txn *txn)
{
    cs_assert(b->bind_shop != 0); /* cs_branch_bind refuses shop 0 */
    MDB_txn *m = cs_log_txn_mdb(txn);
    bool needed;
    cs_err err = bind_check(b, m, b->bind_shop, &needed);
    if (err != CS_OK || !needed)
        return err;
    cs__bstate st;
    if ((err = cs__state_load(b, m, &st)) != CS_OK)
        return err;
    char name[32];
    snprintf(name, sizeof(name), "branch %llu", (unsigned long long)b->bind_shop);
    cs_shop_info self;
    bool named = cs_engine_self_txn(b->engine, m, &self) == CS_OK;
    /* A single store keeps its name and its items, which stay local items (R10). */
    err = cs_engine_set_self(b->engine, txn, b->bind_shop, named ? NULL : name, CS_ROLE_BRANCH);
    cs__bstate fresh = {.shop = b->bind_shop, .types_mask = st.types_mask, .sync_on = true};
    return err == CS_OK ? cs__state_save(b, txn, &fresh) : err;
}

cs_err cs_branch_bind(cs_branch *b, uint64_t shop)
{
    b->errmsg[0] = '\0';
    if (shop == 0)
        return cs__branch_fail(b, CS_INVALID_INPUT, "a branch needs its shop id (--shop)");
    MDB_txn *m;
    cs_err err = cs__branch_read_begin(b, &m);
    if (err != CS_OK)
        return err;
    bool needed = false;
    err = bind_check(b, m, shop, &needed);
    cs_log_read_end(cs_engine_log(b->engine), m);
    /* Written with the first segment that applies: a refused import changes nothing. */
    if (err == CS_OK)
        b->bind_shop = needed ? shop : 0;
    return err;
}
