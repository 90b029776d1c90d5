/*
 * syncpoint.c: the sync point (R2, R4, R7) and unlink (R13).
 *
 * A sync point touches only the dirty set: the mirror entries changed since a sync point last
 * covered this branch, so its cost follows what changed, not the catalog's size. Entries of a
 * type outside the synced set stay dirty: when the type is put back, the next sync point brings
 * them up to date (R7). While the switch is off no sync point runs, so the set keeps growing
 * and the first sync point after the switch comes back on catches up (R6).
 *
 * Two passes, because a copy's references must name this branch's copies (R2) and a combo may
 * arrive in the same sync point as the services it lists: pass 1 gives every new copy its id,
 * pass 2 writes each copy with its references remapped through the origin index. Pass 1
 * remembers each entry's copy id (b->ids) for pass 2; then the written entries leave the dirty
 * set, in one mdb_drop when no entry of an unsynced type stays.
 *
 * Invariants after a sync point (tests/test_projection.c checks them against a model):
 *   1. every mirror entry of a synced type has a copy, archived ones included: an item deleted
 *      at the head office before this branch ever had it still gets an archived copy, because a
 *      live item may reference it and R4 promises that nothing referencing it breaks;
 *   2. a reference inside a copy names this branch's copy of its target whenever one exists.
 *      It keeps the head-office id only while the target's type is not synced and no copy of
 *      the target exists. When such a type is put back, cs__mark_referrers makes every item
 *      that may reference it dirty, so the next sync point rewrites those references;
 *   3. a copy is rewritten (and its version bumped) only when its record would change.
 */
#include "projections/projection_int.h"

#include <string.h>

static cs_err origin_get(cs_branch *b, MDB_txn *m, uint8_t code, uint64_t head_id, uint64_t *out)
{
    uint8_t kb[9];
    cs__key9(kb, code, head_id);
    MDB_val k = {9, kb}, v;
    int rc = mdb_get(m, b->origin, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    if (rc || v.mv_size != 8)
        return CS_CORRUPT;
    *out = cs_be64_get(v.mv_data);
    return CS_OK;
}

/* Room for a copy id per dirty entry in b->ids (grown by doubling; never shrunk). */
static cs_err ids_reserve(cs_branch *b, size_t n)
{
    if (n <= b->ids_cap)
        return CS_OK;
    size_t cap = b->ids_cap ? b->ids_cap : 1024;
    while (cap < n)
        cap *= 2;
    uint64_t *p = realloc(b->ids, cap * sizeof(*p));
    if (!p)
        return CS_NO_MEMORY;
    b->ids = p;
    b->ids_cap = cap;
    return CS_OK;
}

/* Pass 1: an id for every mirror entry of a synced type that has no copy yet, archived ones
 * included (invariant 1). b->ids[i] gets the copy id of the i-th dirty entry (0: its type is
 * not synced), so pass 2, which walks the same entries in the same order, looks none up. */
static cs_err assign_ids(cs_branch *b, cs_log_txn *txn, MDB_cursor *cur, size_t *n_out)
{
    MDB_txn *m = cs_log_txn_mdb(txn);
    MDB_val k, v;
    MDB_stat ms;
    size_t i = 0;
    if (mdb_stat(m, b->dirty, &ms))
        return CS_IO;
    cs_err err = ids_reserve(b, ms.ms_entries);
    int rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && err == CS_OK;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT), i++) {
        const uint8_t *kb = k.mv_data;
        uint64_t id = 0;
        if (k.mv_size != 9 || i >= ms.ms_entries)
            return CS_CORRUPT;
        b->ids[i] = 0;
        if (!cs_type_set_has(b->st.types_mask, kb[0]))
            continue;
        if ((err = origin_get(b, m, kb[0], cs_be64_get(kb + 1), &id)) != CS_NOT_FOUND) {
            b->ids[i] = id;
            continue;
        }
        MDB_val mv;
        if (mdb_get(m, b->mirror, &k, &mv))
            return cs__branch_fail(b, CS_CORRUPT, "a dirty entry has no mirror record");
        err = cs_engine_alloc_id(b->engine, txn, b->st.shop, &id);
        uint8_t idb[8];
        for (int j = 7; j >= 0; j--)
            idb[j] = (uint8_t)(id >> (8 * (7 - j)));
        MDB_val ik = {9, k.mv_data}, iv = {8, idb};
        if (err == CS_OK)
            err = cs_log_txn_put(txn, b->origin, &ik, &iv, 0);
        b->ids[i] = id;
    }
    *n_out = i;
    if (err != CS_OK)
        return err;
    /* The walk and mdb_stat read the same transaction: b->ids has one slot per entry. */
    cs_assert(rc != MDB_NOTFOUND || i == ms.ms_entries);
    return rc == MDB_NOTFOUND ? CS_OK : CS_IO;
}

/* References looked up during one pass 2 (the origin index does not change in it): a combo's
 * services and a service's category repeat across the copies of one sync point. */
#define REMAP_CACHE_SLOTS 64u

typedef struct remap_ctx {
    cs_branch *b;
    MDB_txn *m;
    struct {
        uint64_t head_id; /* 0: empty (head ids are never 0) */
        uint64_t mapped;
        uint8_t code;
    } cache[REMAP_CACHE_SLOTS];
} remap_ctx;

/* A reference to a catalog item becomes this branch's copy of it; shared records keep their id
 * (they are one record everywhere). A catalog item with no copy here (its type is not synced)
 * keeps the head-office id: docs/design.md explains why that is the least surprising choice. */
static cs_err remap_ref(const cs_type *target, uint64_t id, uint64_t *mapped, void *ctx)
{
    remap_ctx *rc = ctx;
    *mapped = id;
    if (target->cls != CS_CLASS_SYNCED)
        return CS_OK;
    unsigned slot = (unsigned)((id ^ (id >> 32) ^ target->code) % REMAP_CACHE_SLOTS);
    if (rc->cache[slot].head_id == id && rc->cache[slot].code == target->code) {
        *mapped = rc->cache[slot].mapped;
        return CS_OK;
    }
    cs_err err = origin_get(rc->b, rc->m, target->code, id, mapped);
    if (err != CS_OK && err != CS_NOT_FOUND)
        return err;
    rc->cache[slot].head_id = id;
    rc->cache[slot].mapped = *mapped;
    rc->cache[slot].code = target->code;
    return CS_OK;
}

/* Brings one copy to its mirror entry's state. The remapped fields are compared with the
 * copy's as bytes: both come from msgpack-c's packer over the same values. */
static cs_err write_copy(cs_branch *b, cs_log_txn *txn, remap_ctx *rctx, const cs_type *t,
                         uint64_t head_id, const cs_item *m_it, uint64_t copy_id)
{
    cs_assert(t->cls == CS_CLASS_SYNCED); /* only entries of synced types get a copy id */
    cs_assert(copy_id != 0);
    MDB_txn *m = cs_log_txn_mdb(txn);
    uint8_t kb[9];
    cs__key9(kb, t->code, copy_id);
    MDB_val k = {9, kb}, v;
    cs_item old = {0};
    int rc = mdb_get(m, b->items, &k, &v);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return CS_IO;
    if (rc == 0 && cs_item_parse_header(&v, &b->zone, &old) != CS_OK)
        return cs__branch_fail(b, CS_CORRUPT, "copy %llu does not read back",
                               (unsigned long long)copy_id);
    const uint64_t origin[3] = {b->st.head, head_id, m_it->version};
    msgpack_sbuffer_clear(&b->flds);
    cs_err err = cs_schema_remap(t, &m_it->fields, remap_ref, rctx, &b->flds);
    if (err != CS_OK)
        return err;
    /* Invariant 3: an entry made dirty only to refresh its references (cs__mark_referrers)
     * whose references were already right keeps its record and its version. */
    bool same = rc == 0 && old.has_origin && !old.has_detached && old.archived == m_it->archived &&
                memcmp(old.origin, origin, sizeof(origin)) == 0 && old.fields_len == b->flds.size &&
                memcmp(old.fields_bytes, b->flds.data, b->flds.size) == 0;
    if (same)
        return CS_OK;
    return cs__rec_put(b, txn, b->items, kb, rc == 0 ? old.version + 1 : 1, m_it->archived /* R4 */,
                       origin, (const uint8_t *)b->flds.data, b->flds.size);
}

/* Pass 2: every dirty entry of a synced type is written. *kept gets how many entries of other
 * types stay dirty (R7). */
static cs_err write_copies(cs_branch *b, cs_log_txn *txn, MDB_cursor *cur, size_t n, size_t *kept)
{
    MDB_txn *m = cs_log_txn_mdb(txn);
    MDB_val k, v;
    remap_ctx *rctx = calloc(1, sizeof(*rctx));
    if (!rctx)
        return CS_NO_MEMORY;
    *rctx = (remap_ctx){.b = b, .m = m};
    cs_err err = CS_OK;
    size_t i = 0;
    int rc;
    *kept = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && err == CS_OK;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT), i++) {
        const uint8_t *kb = k.mv_data;
        cs_assert(i < n); /* pass 1 saw the same entries */
        if (b->ids[i] == 0) {
            (*kept)++;
            continue;
        }
        const cs_type *t = cs_schema_by_code(kb[0]);
        /* Pass 1 gave an id only to a synced code, and types_mask holds only synced types
         * (cs__bstate invariant 5), so the code names a type. */
        cs_assert(t != NULL);
        MDB_val mv;
        cs_item it;
        msgpack_zone_clear(&b->zone);
        if (mdb_get(m, b->mirror, &k, &mv) || cs_item_parse(&mv, &b->zone, &it) != CS_OK)
            err = cs__branch_fail(b, CS_CORRUPT, "a dirty entry has no mirror record");
        else
            err = write_copy(b, txn, rctx, t, cs_be64_get(kb + 1), &it, b->ids[i]);
    }
    free(rctx);
    if (err != CS_OK)
        return err;
    return rc == MDB_NOTFOUND && i == n ? CS_OK : CS_IO;
}

/* The written entries leave the dirty set: all at once when no other type stays dirty. */
static cs_err clear_dirty(cs_branch *b, cs_log_txn *txn, MDB_cursor *cur, size_t kept)
{
    MDB_txn *m = cs_log_txn_mdb(txn);
    if (kept == 0) {
        int rc = mdb_drop(m, b->dirty, 0);
        return rc == MDB_MAP_FULL ? CS_STORAGE_FULL : rc ? CS_IO : CS_OK;
    }
    MDB_val k, v;
    size_t i = 0;
    int rc;
    /* After mdb_cursor_del the cursor stands on the next entry and MDB_NEXT does not skip it. */
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        if (b->ids[i++] != 0 && mdb_cursor_del(cur, 0))
            return CS_IO;
    return rc == MDB_NOTFOUND ? CS_OK : CS_IO;
}

/* After a sync point only entries of types outside the synced set stay dirty (R7): `kept` of
 * them, and none of a synced type. Walks what stays, which is empty in the common case. */
static bool sync_point_done(cs_branch *b, MDB_txn *m, size_t kept)
{
    MDB_stat ms;
    MDB_cursor *cur;
    if (mdb_stat(m, b->dirty, &ms) || mdb_cursor_open(m, b->dirty, &cur))
        return true; /* a storage failure here is not ours to assert on */
    bool ok = ms.ms_entries == kept;
    MDB_val k, v;
    int rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); ok && rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        ok = k.mv_size == 9 && !cs_type_set_has(b->st.types_mask, ((const uint8_t *)k.mv_data)[0]);
    mdb_cursor_close(cur);
    return ok;
}

cs_err cs__sync_point(cs_branch *b, cs_log_txn *txn, uint64_t seq)
{
    /* Callers (apply.c): shop_add of this branch, a sync covering it, or a catalog event in
     * continuous mode; all only while linked and switched on, at the event being applied. */
    cs_assert(b->st.linked);
    cs_assert(b->st.sync_on);
    cs_assert(!b->st.unlinked);
    cs_assert(seq == b->st.cursor + 1);
    cs_assert(seq > b->st.sync_seq);
    MDB_cursor *cur;
    size_t n = 0, kept = 0;
    if (mdb_cursor_open(cs_log_txn_mdb(txn), b->dirty, &cur))
        return CS_IO;
    cs_err err = assign_ids(b, txn, cur, &n);
    if (err == CS_OK)
        err = write_copies(b, txn, cur, n, &kept);
    if (err == CS_OK)
        err = clear_dirty(b, txn, cur, kept);
    mdb_cursor_close(cur);
    if (err == CS_OK) {
        cs_assert(kept <= n);
        cs_assert(sync_point_done(b, cs_log_txn_mdb(txn), kept));
        b->st.sync_seq = seq;
    }
    return err;
}

/* Adds to *set the synced types that fields of `fs` reference, sub-fields included. */
static void fields_ref_types(const cs_field *fs, unsigned n, cs_type_set *set)
{
    for (unsigned i = 0; i < n; i++) {
        const cs_field *f = &fs[i];
        if (f->kind == CS_FIELD_REF || f->kind == CS_FIELD_REF_LIST) {
            const cs_type *target = cs_schema_find(f->ref_type);
            if (target && target->cls == CS_CLASS_SYNCED)
                cs_type_set_add(set, target->code);
        } else if (f->kind == CS_FIELD_OBJECT || f->kind == CS_FIELD_OBJECT_LIST) {
            fields_ref_types(f->sub, f->nsub, set);
        }
    }
}

/* Marks dirty every mirror entry of one type (a key prefix of the mirror). */
static cs_err mark_type_dirty(cs_branch *b, cs_log_txn *txn, MDB_cursor *cur, uint8_t code)
{
    uint8_t kb[9];
    cs__key9(kb, code, 0);
    MDB_val k = {9, kb}, v, e = {0, ""};
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 9 || ((const uint8_t *)k.mv_data)[0] != code)
            return CS_OK;
        MDB_val dk = k; /* a copy: k points into a mirror page, not ours to hand to a put */
        uint8_t dkb[9];
        memcpy(dkb, k.mv_data, 9);
        dk.mv_data = dkb;
        cs_err err = cs_log_txn_put(txn, b->dirty, &dk, &e, 0);
        if (err != CS_OK)
            return err;
    }
    return rc == MDB_NOTFOUND ? CS_OK : CS_IO;
}

cs_err cs__mark_referrers(cs_branch *b, cs_log_txn *txn, cs_type_set gained)
{
    cs_assert(gained.bits != 0);
    cs_assert((gained.bits & ~b->st.types_mask.bits) == 0); /* put back: now in the synced set */
    unsigned n;
    const cs_type *types = cs_schema_types(&n);
    MDB_cursor *cur;
    if (mdb_cursor_open(cs_log_txn_mdb(txn), b->mirror, &cur))
        return CS_IO;
    cs_err err = CS_OK;
    for (unsigned i = 0; i < n && err == CS_OK; i++) {
        const cs_type *t = &types[i];
        cs_type_set refs = {0};
        fields_ref_types(t->fields, t->nfields, &refs);
        if (t->cls == CS_CLASS_SYNCED && (refs.bits & gained.bits))
            err = mark_type_dirty(b, txn, cur, t->code);
    }
    mdb_cursor_close(cur);
    return err;
}

cs_err cs__unlink(cs_branch *b, cs_log_txn *txn)
{
    cs_assert(!b->st.unlinked); /* apply.c ignores every event once unlinked */
    cs_assert(b->st.shop != 0);
    MDB_txn *m = cs_log_txn_mdb(txn);
    MDB_cursor *cur;
    if (mdb_cursor_open(m, b->items, &cur))
        return CS_IO;
    MDB_val k, v;
    int rc;
    cs_err err = CS_OK;
    while (err == CS_OK && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        cs_item it;
        const cs_type *t = k.mv_size == 9 ? cs_schema_by_code(((uint8_t *)k.mv_data)[0]) : NULL;
        msgpack_zone_clear(&b->zone);
        if (!t || cs_item_parse(&v, &b->zone, &it) != CS_OK) {
            err = CS_CORRUPT;
            break;
        }
        if (!it.has_origin)
            continue;
        it.has_detached = true; /* nothing is lost: the copy remembers where it came from */
        memcpy(it.detached, it.origin, sizeof(it.detached));
        it.has_origin = false;
        err = cs_item_write(txn, b->items, t, cs_be64_get((uint8_t *)k.mv_data + 1), &it);
    }
    mdb_cursor_close(cur);
    if (err != CS_OK)
        return err;
    b->st.linked = false;
    b->st.unlinked = true; /* cs__bstate invariant 2: never both */
    return cs_engine_set_self(b->engine, txn, b->st.shop, NULL, CS_ROLE_SINGLE);
}
