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
 * arrive in the same sync point as the services it lists: pass 1 gives every new copy its id
 * (in key order, the dirty set's), pass 2 brings each copy to its entry's state with its
 * references remapped through the origin index.
 *
 * The entries live in the transaction's batch (batch.c): the dirty set of earlier transactions
 * is loaded into it at the batch's first sync point. Pass 2 writes the copies of entries the
 * batch did not touch at once, from the mirror; for the others it only notes the state and
 * counts the sync point, and cs__batch_write writes each such copy once, at the end, as of its
 * last sync point: its version moves by the number of sync points that changed it, and a
 * reference to a copy created after that sync point keeps the head-office id, exactly as event
 * by event. That rests on two facts: an item's events carry increasing versions (the head
 * office's engine gives version + 1 to every put and delete), so every sync point that finds
 * an entry changed by an event changes its copy's origin; and apply.c writes the batch before
 * any event that changes the synced types, the head office or the link, so what a copy is
 * remapped through at the end is what it would have been at its sync point.
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

#include <stdlib.h>
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

/* References looked up while copies are written: a combo's services and a service's category
 * repeat across the copies of one sync point. */
#define REMAP_CACHE_SLOTS 64u

typedef struct remap_ctx {
    cs_branch *b;
    MDB_txn *m;
    uint32_t cutoff; /* the sync point of the batch the copy being written is as of */
    struct {
        uint64_t head_id; /* 0: empty (head ids are never 0) */
        uint64_t mapped;
        uint8_t code;
    } cache[REMAP_CACHE_SLOTS];
} remap_ctx;

/* A reference to a catalog item becomes this branch's copy of it; shared records keep their id
 * (they are one record everywhere). A catalog item with no copy here (its type is not synced)
 * keeps the head-office id: docs/design.md explains why that is the least surprising choice.
 * A copy the batch created after the sync point the copy being written is as of did not exist
 * then: the reference keeps the head-office id, as it would have event by event. */
static cs_err remap_ref(const cs_type *target, uint64_t id, uint64_t *mapped, void *ctx)
{
    remap_ctx *rc = ctx;
    *mapped = id;
    if (target->cls != CS_CLASS_SYNCED)
        return CS_OK;
    const cs__batch *bt = &rc->b->batch;
    uint8_t kb[9];
    cs__key9(kb, target->code, id);
    uint32_t i = cs__batch_find(bt, kb);
    if (i != UINT32_MAX && (bt->items[i].flags & CS__BI_ID_KNOWN)) {
        const cs__bitem *t = &bt->items[i];
        if (t->copy_id != 0 && t->id_sync <= rc->cutoff)
            *mapped = t->copy_id;
        return CS_OK;
    }
    /* Not known to the batch: the origin index as the batch found it (every copy id the batch
     * allocates is known to it), so a cached answer stays true for the whole batch. */
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

/* Brings one copy to the state m_it of its head-office item, as of `bumps` sync points that
 * each found it changed (one, or more when a batch noted several). The remapped fields are
 * compared with the copy's as bytes: both come from msgpack-c's packer over the same values. */
static cs_err write_copy(cs_branch *b, cs_log_txn *txn, remap_ctx *rctx, const cs_type *t,
                         uint64_t head_id, const cs_item *m_it, uint64_t copy_id, uint32_t bumps)
{
    cs_assert(t->cls == CS_CLASS_SYNCED); /* only entries of synced types get a copy id */
    cs_assert(copy_id != 0);
    cs_assert(bumps > 0);
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
    return cs__rec_put(b, txn, b->items, kb, (rc == 0 ? old.version : 0) + bumps,
                       m_it->archived /* R4 */, origin, (const uint8_t *)b->flds.data,
                       b->flds.size);
}

cs_err cs__dirty_walk(cs_branch *b, MDB_txn *m, cs__dirty_fn fn, void *ctx)
{
    MDB_cursor *cur;
    if (mdb_cursor_open(m, b->dirty, &cur))
        return CS_IO;
    MDB_val k, v;
    cs_err err = CS_OK;
    int rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && err == CS_OK;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 9) {
            err = cs__branch_fail(b, CS_CORRUPT, "a dirty entry has a key of %zu bytes", k.mv_size);
            break;
        }
        uint8_t key[9]; /* a copy: fn may write in the transaction, and k points into a page */
        memcpy(key, k.mv_data, 9);
        err = fn(key, ctx);
    }
    mdb_cursor_close(cur);
    if (err != CS_OK)
        return err;
    return rc == MDB_NOTFOUND ? CS_OK : CS_IO;
}

static cs_err load_one(const uint8_t key[9], void *ctx)
{
    cs__batch *bt = ctx;
    uint32_t i;
    cs_err err = cs__batch_get(bt, key, &i);
    if (err == CS_OK) {
        bt->items[i].flags |= CS__BI_FROM_DB;
        err = cs__batch_mark_dirty(bt, i);
    }
    return err;
}

/* The dirty set of earlier transactions joins the batch, once per batch: a sync point covers
 * all of it (R6: what waited while the switch was off; R7: types put back). */
static cs_err load_dirty(cs_branch *b, MDB_txn *m)
{
    cs_err err = cs__dirty_walk(b, m, load_one, &b->batch);
    if (err == CS_OK)
        b->batch.db_loaded = true;
    return err;
}

/* The order LMDB keeps the dirty set in (bytes, as its default comparison), so copy ids go to
 * new items in the same order whatever the batches were. */
static int key_cmp(const void *x, const void *y, void *items)
{
    const cs__bitem *it = items;
    return memcmp(it[*(const uint32_t *)x].key, it[*(const uint32_t *)y].key, 9);
}

/* Pass 1: an id for every dirty entry of a synced type that has no copy yet, archived ones
 * included (invariant 1), in key order. */
static cs_err assign_ids(cs_branch *b, cs_log_txn *txn)
{
    cs__batch *bt = &b->batch;
    MDB_txn *m = cs_log_txn_mdb(txn);
    uint32_t nnew = 0;
    cs_err err = cs__batch_scratch(bt, bt->ndirty);
    for (uint32_t i = 0; i < bt->ndirty && err == CS_OK; i++) {
        cs__bitem *it = &bt->items[bt->dirty[i]];
        if (!cs_type_set_has(b->st.types_mask, it->key[0]))
            continue;
        if (!(it->flags & CS__BI_ID_KNOWN)) {
            uint64_t id = 0;
            err = origin_get(b, m, it->key[0], cs_be64_get(it->key + 1), &id);
            if (err == CS_CORRUPT)
                return cs__branch_fail(b, err, "the origin index does not read back");
            if (err != CS_OK && err != CS_NOT_FOUND)
                return err;
            err = CS_OK;
            it->copy_id = id;
            it->id_sync = 0;
            it->flags |= CS__BI_ID_KNOWN;
        }
        if (it->copy_id == 0)
            bt->scratch[nnew++] = bt->dirty[i];
    }
    if (err != CS_OK)
        return err;
    if (nnew > 1) /* (scratch may still be NULL when there is nothing to sort) */
        qsort_r(bt->scratch, nnew, sizeof(*bt->scratch), key_cmp, bt->items);
    for (uint32_t j = 0; j < nnew && err == CS_OK; j++) {
        cs__bitem *it = &bt->items[bt->scratch[j]];
        uint64_t id;
        uint8_t idb[8];
        if ((err = cs_engine_alloc_id(b->engine, txn, b->st.shop, &id)) != CS_OK)
            break;
        cs_be64_put(idb, id);
        MDB_val k = {9, it->key}, v = {8, idb};
        err = cs_log_txn_put(txn, b->origin, &k, &v, 0);
        it->copy_id = id;
        it->id_sync = bt->syncs;
    }
    return err;
}

/* An entry dirty since an earlier transaction and not touched by this one: its state is the
 * mirror's, and its copy is written now (the batch holds no bytes of it). */
static cs_err copy_from_mirror(cs_branch *b, cs_log_txn *txn, remap_ctx *rctx, const cs__bitem *it)
{
    const cs_type *t = cs_schema_by_code(it->key[0]);
    cs_assert(t != NULL); /* a synced code (types_mask, cs__bstate invariant 5) */
    MDB_val k = {9, (void *)it->key}, mv;
    cs_item m_it;
    msgpack_zone_clear(&b->zone);
    if (mdb_get(cs_log_txn_mdb(txn), b->mirror, &k, &mv) ||
        cs_item_parse(&mv, &b->zone, &m_it) != CS_OK)
        return cs__branch_fail(b, CS_CORRUPT, "a dirty entry has no mirror record");
    rctx->cutoff = b->batch.syncs;
    return write_copy(b, txn, rctx, t, cs_be64_get(it->key + 1), &m_it, it->copy_id, 1);
}

/* Pass 2: every dirty entry of a synced type leaves the dirty list; those the batch touched
 * are noted (their state now is the one their copy gets), the others written. What stays is
 * the entries of unsynced types (R7). */
static cs_err note_copies(cs_branch *b, cs_log_txn *txn)
{
    cs__batch *bt = &b->batch;
    uint32_t nkept = 0;
    cs_err err = cs__batch_scratch(bt, bt->ndirty);
    remap_ctx *rctx = NULL;
    for (uint32_t i = 0; i < bt->ndirty && err == CS_OK; i++) {
        uint32_t idx = bt->dirty[i];
        cs__bitem *it = &bt->items[idx];
        if (!cs_type_set_has(b->st.types_mask, it->key[0])) {
            bt->scratch[nkept++] = idx;
            continue;
        }
        cs_assert(it->copy_id != 0); /* pass 1 */
        it->flags &= (uint8_t)~CS__BI_DIRTY;
        if (it->flags & CS__BI_LATEST) {
            it->synced = it->latest;
            it->bumps++;
            it->last_sync = bt->syncs;
            continue;
        }
        cs_assert(it->flags & CS__BI_FROM_DB); /* dirty and untouched: from the database */
        if (!rctx && !(rctx = calloc(1, sizeof(*rctx))))
            err = CS_NO_MEMORY;
        if (err == CS_OK) {
            rctx->b = b;
            rctx->m = cs_log_txn_mdb(txn);
            err = copy_from_mirror(b, txn, rctx, it);
        }
    }
    free(rctx);
    if (err != CS_OK)
        return err;
    if (nkept)
        memcpy(bt->dirty, bt->scratch, nkept * sizeof(*bt->dirty));
    bt->ndirty = nkept;
    return CS_OK;
}

/* After a sync point only entries of types outside the synced set stay dirty (R7). */
static bool sync_point_done(const cs_branch *b)
{
    const cs__batch *bt = &b->batch;
    for (uint32_t i = 0; i < bt->ndirty; i++)
        if (cs_type_set_has(b->st.types_mask, bt->items[bt->dirty[i]].key[0]))
            return false;
    return bt->db_loaded;
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
    cs__batch *bt = &b->batch;
    cs_err err = CS_OK;
    if (bt->syncs == UINT32_MAX) /* 4 billion sync points in one batch: write it first */
        err = cs__batch_write(b, txn);
    if (err == CS_OK && !bt->db_loaded)
        err = load_dirty(b, cs_log_txn_mdb(txn));
    if (err != CS_OK)
        return err;
    bt->syncs++;
    if ((err = assign_ids(b, txn)) == CS_OK)
        err = note_copies(b, txn);
    if (err == CS_OK) {
        cs_assert(sync_point_done(b));
        b->st.sync_seq = seq;
    }
    return err;
}

cs_err cs__sync_event(cs_branch *b, cs_log_txn *txn, uint64_t target, uint64_t seq,
                      cs__sync_cover *cover)
{
    const cs__bstate *st = &b->st;
    cs__sync_cover c = target != 0 && target != st->shop ? CS__SYNC_OTHER_SHOP
                       : !st->linked || st->unlinked     ? CS__SYNC_NOT_LINKED
                       : !st->sync_on                    ? CS__SYNC_SWITCH_OFF
                                                         : CS__SYNC_COVERED;
    if (cover)
        *cover = c;
    return c == CS__SYNC_COVERED ? cs__sync_point(b, txn, seq) : CS_OK;
}

/* The dirty set after the batch: an entry still waiting is put, one that came from the
 * database and was written is deleted (all at once when none waits). */
static cs_err write_dirty(cs_branch *b, cs_log_txn *txn, const cs__bitem *it, bool dropped)
{
    MDB_val k = {9, (void *)it->key}, v = {0, ""};
    bool dirty = it->flags & CS__BI_DIRTY, from_db = it->flags & CS__BI_FROM_DB;
    if (dirty && !from_db) {
        cs_err err = cs_log_txn_put(txn, b->dirty, &k, &v, MDB_NOOVERWRITE);
        return err == CS_INVALID_INPUT ? CS_OK : err; /* already dirty from an earlier batch */
    }
    if (dirty || !from_db || dropped)
        return CS_OK;
    int rc = mdb_del(cs_log_txn_mdb(txn), b->dirty, &k, NULL);
    return rc == 0 || rc == MDB_NOTFOUND ? CS_OK : CS_IO;
}

/* A copy its batch's sync points changed, as of the last of them. */
static cs_err write_noted_copy(cs_branch *b, cs_log_txn *txn, remap_ctx *rctx, const cs__bitem *it)
{
    const cs_type *t = cs_schema_by_code(it->key[0]);
    cs_assert(t != NULL && t->cls == CS_CLASS_SYNCED); /* noted only while synced */
    msgpack_zone_clear(&b->zone);
    msgpack_object fields;
    size_t off = 0;
    /* The bytes passed the event's bounds check (cs_event_decode_lazy) before they were noted. */
    msgpack_unpack_return ur =
        msgpack_unpack((const char *)it->synced.fields, it->synced.len, &off, &b->zone, &fields);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        return CS_NO_MEMORY;
    if (ur != MSGPACK_UNPACK_SUCCESS || fields.type != MSGPACK_OBJECT_MAP)
        return cs__branch_fail(b, CS_CORRUPT, "the fields of %s %llu do not decode", t->name,
                               (unsigned long long)cs_be64_get(it->key + 1));
    cs_item m_it = {
        .version = it->synced.version, .archived = it->synced.archived, .fields = fields};
    rctx->cutoff = it->last_sync;
    return write_copy(b, txn, rctx, t, cs_be64_get(it->key + 1), &m_it, it->copy_id, it->bumps);
}

cs_err cs__batch_write(cs_branch *b, cs_log_txn *txn)
{
    cs__batch *bt = &b->batch;
    if (bt->n == 0) { /* nothing to write; but a dirty set loaded empty is no longer known */
        cs__batch_reset(bt);
        return CS_OK;
    }
    remap_ctx *rctx = calloc(1, sizeof(*rctx));
    if (!rctx)
        return CS_NO_MEMORY;
    *rctx = (remap_ctx){.b = b, .m = cs_log_txn_mdb(txn)};
    bool drop = bt->db_loaded && bt->ndirty == 0; /* every entry it had was written */
    cs_err err = cs__batch_scratch(bt, bt->n);
    /* In key order: LMDB's pages are then filled one after another, not revisited at random
     * (copy ids, given in key order, follow the same order). */
    for (uint32_t i = 0; err == CS_OK && i < bt->n; i++)
        bt->scratch[i] = i;
    if (err == CS_OK && bt->n > 1)
        qsort_r(bt->scratch, bt->n, sizeof(*bt->scratch), key_cmp, bt->items);
    for (uint32_t i = 0; i < bt->n && err == CS_OK; i++) {
        const cs__bitem *it = &bt->items[bt->scratch[i]];
        if (it->flags & CS__BI_LATEST)
            err = cs__rec_put(b, txn, b->mirror, it->key, it->latest.version, it->latest.archived,
                              NULL, it->latest.fields, it->latest.len);
        if (err == CS_OK && it->bumps)
            err = write_noted_copy(b, txn, rctx, it);
        if (err == CS_OK)
            err = write_dirty(b, txn, it, drop);
    }
    free(rctx);
    if (err == CS_OK && drop) {
        int rc = mdb_drop(cs_log_txn_mdb(txn), b->dirty, 0);
        err = rc == MDB_MAP_FULL ? CS_STORAGE_FULL : rc ? CS_IO : CS_OK;
    }
    if (err == CS_OK)
        cs__batch_reset(bt);
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
