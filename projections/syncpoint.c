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
 * pass 2 writes each copy with its references remapped through the origin index.
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

static bool synced_code(const cs__bstate *st, uint8_t code)
{
    return code < 64 && (st->types_mask & ((uint64_t)1 << code));
}

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
    *out = cs__u64_be(v.mv_data);
    return CS_OK;
}

/* Pass 1: an id for every mirror entry of a synced type that has no copy yet, archived ones
 * included (invariant 1). */
static cs_err assign_ids(cs_branch *b, cs_log_txn *txn, MDB_cursor *cur)
{
    MDB_txn *m = cs_log_txn_mdb(txn);
    MDB_val k, v;
    int rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const uint8_t *kb = k.mv_data;
        uint64_t id;
        if (k.mv_size != 9)
            return CS_CORRUPT;
        if (!synced_code(&b->st, kb[0]) ||
            origin_get(b, m, kb[0], cs__u64_be(kb + 1), &id) == CS_OK)
            continue;
        MDB_val mv;
        if (mdb_get(m, b->mirror, &k, &mv))
            return cs__branch_fail(b, CS_CORRUPT, "a dirty entry has no mirror record");
        cs_err err = cs_engine_alloc_id(b->engine, txn, &id);
        uint8_t idb[8];
        for (int i = 7; i >= 0; i--)
            idb[i] = (uint8_t)(id >> (8 * (7 - i)));
        MDB_val ik = {9, k.mv_data}, iv = {8, idb};
        if (err == CS_OK)
            err = cs_log_txn_put(txn, b->origin, &ik, &iv, 0);
        if (err != CS_OK)
            return err;
    }
    return rc == MDB_NOTFOUND ? CS_OK : CS_IO;
}

typedef struct remap_ctx {
    cs_branch *b;
    MDB_txn *m;
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
    cs_err err = origin_get(rc->b, rc->m, target->code, id, mapped);
    return err == CS_NOT_FOUND ? CS_OK : err;
}

/* Brings one copy to its mirror entry's state. */
static cs_err write_copy(cs_branch *b, cs_log_txn *txn, const cs_type *t, uint64_t head_id,
                         const cs_item *m_it, uint64_t copy_id)
{
    MDB_txn *m = cs_log_txn_mdb(txn);
    cs_item old,
        it = {.version = 1, .has_origin = true, .origin = {b->st.head, head_id, m_it->version}};
    cs_err err = cs_item_read(m, b->items, t, copy_id, &b->zone, &old);
    if (err == CS_OK)
        it.version = old.version + 1;
    else if (err != CS_NOT_FOUND)
        return err;
    bool had_copy = err == CS_OK;
    it.archived = m_it->archived; /* R4 */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    remap_ctx rc = {b, m};
    err = cs_schema_remap(t, &m_it->fields, remap_ref, &rc, &sb);
    size_t off = 0;
    if (err == CS_OK &&
        msgpack_unpack(sb.data, sb.size, &off, &b->zone, &it.fields) != MSGPACK_UNPACK_SUCCESS)
        err = CS_NO_MEMORY;
    /* Invariant 3: an entry made dirty only to refresh its references (cs__mark_referrers)
     * whose references were already right keeps its record and its version. */
    bool same = had_copy && old.has_origin && old.origin[2] == m_it->version &&
                old.archived == it.archived && !old.has_detached;
    if (err == CS_OK && !(same && msgpack_object_equal(old.fields, it.fields)))
        err = cs_item_write(txn, b->items, t, copy_id, &it);
    msgpack_sbuffer_destroy(&sb);
    return err;
}

/* Pass 2: every dirty entry of a synced type is written and leaves the dirty set. */
static cs_err write_copies(cs_branch *b, cs_log_txn *txn, MDB_cursor *cur)
{
    MDB_txn *m = cs_log_txn_mdb(txn);
    MDB_val k, v;
    int rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const uint8_t *kb = k.mv_data;
        if (!synced_code(&b->st, kb[0]))
            continue;
        const cs_type *t = cs_schema_by_code(kb[0]);
        uint64_t head_id = cs__u64_be(kb + 1), copy_id;
        MDB_val mv;
        cs_item it;
        msgpack_zone_clear(&b->zone);
        if (!t || mdb_get(m, b->mirror, &k, &mv) || cs_item_parse(&mv, &b->zone, &it) != CS_OK)
            return cs__branch_fail(b, CS_CORRUPT, "a dirty entry has no mirror record");
        cs_err err = origin_get(b, m, kb[0], head_id, &copy_id);
        if (err == CS_OK)
            err = write_copy(b, txn, t, head_id, &it, copy_id);
        else if (err == CS_NOT_FOUND) /* pass 1 gave every synced entry a copy */
            err = cs__branch_fail(b, CS_CORRUPT, "a dirty entry has no copy after pass 1");
        if (err == CS_OK && mdb_cursor_del(cur, 0))
            err = CS_IO;
        if (err != CS_OK)
            return err;
    }
    return rc == MDB_NOTFOUND ? CS_OK : CS_IO;
}

cs_err cs__sync_point(cs_branch *b, cs_log_txn *txn, uint64_t seq)
{
    MDB_cursor *cur;
    if (mdb_cursor_open(cs_log_txn_mdb(txn), b->dirty, &cur))
        return CS_IO;
    cs_err err = assign_ids(b, txn, cur);
    if (err == CS_OK)
        err = write_copies(b, txn, cur);
    mdb_cursor_close(cur);
    if (err == CS_OK)
        b->st.sync_seq = seq;
    return err;
}

/* The synced types that fields of `fs` reference, sub-fields included. */
static uint64_t fields_ref_mask(const cs_field *fs, unsigned n)
{
    uint64_t mask = 0;
    for (unsigned i = 0; i < n; i++) {
        const cs_field *f = &fs[i];
        if (f->kind == CS_FIELD_REF || f->kind == CS_FIELD_REF_LIST) {
            const cs_type *target = cs_schema_find(f->ref_type);
            if (target && target->cls == CS_CLASS_SYNCED && target->code < 64)
                mask |= (uint64_t)1 << target->code;
        } else if (f->kind == CS_FIELD_OBJECT || f->kind == CS_FIELD_OBJECT_LIST) {
            mask |= fields_ref_mask(f->sub, f->nsub);
        }
    }
    return mask;
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

cs_err cs__mark_referrers(cs_branch *b, cs_log_txn *txn, uint64_t gained)
{
    unsigned n;
    const cs_type *types = cs_schema_types(&n);
    MDB_cursor *cur;
    if (mdb_cursor_open(cs_log_txn_mdb(txn), b->mirror, &cur))
        return CS_IO;
    cs_err err = CS_OK;
    for (unsigned i = 0; i < n && err == CS_OK; i++) {
        const cs_type *t = &types[i];
        if (t->cls == CS_CLASS_SYNCED && (fields_ref_mask(t->fields, t->nfields) & gained))
            err = mark_type_dirty(b, txn, cur, t->code);
    }
    mdb_cursor_close(cur);
    return err;
}

cs_err cs__unlink(cs_branch *b, cs_log_txn *txn)
{
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
        err = cs_item_write(txn, b->items, t, cs__u64_be((uint8_t *)k.mv_data + 1), &it);
    }
    mdb_cursor_close(cur);
    if (err != CS_OK)
        return err;
    b->st.linked = false;
    b->st.unlinked = true;
    return cs_engine_set_self(b->engine, txn, b->st.shop, NULL, CS_ROLE_SINGLE);
}
