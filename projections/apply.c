/*
 * apply.c: applying the head office's events to a branch, up to 64 segments per transaction.
 *
 * Per event (docs/design.md, "projection"):
 *   put/delete of a catalog type   -> the mirror, and the entry is marked dirty; in continuous
 *                                     mode also a sync point (R5d)
 *   put/delete of a shared record  -> straight into the catalog, same id (R8: not gated)
 *   network, network_types, _mode  -> the branch's view of the network (R7); types put back
 *                                     make their referrers dirty (syncpoint.c, invariant 2)
 *   shop_add of this branch        -> linked, switch on, and a sync point (R5a)
 *   shop_switch of this branch     -> the switch (R6)
 *   sync for all or this branch    -> a sync point, when linked and switched on (R5b, R5c, R6)
 *   shop_unlink of this branch     -> copies detached, the branch a single store (R13)
 *   any other kind the engine has  -> nothing but the cursor
 * An event of a newer schema version than this build's stops the apply with protocol_mismatch
 * naming the version it needs, and an unknown kind in an event of a version this build knows
 * is corrupt, as at the head office (engine/apply.c): nothing is skipped silently and nothing
 * of the transaction is written (docs/design.md, "Schema versions"). Items written under an
 * older version are read through the schema's change table (cs_schema_upgrade).
 * The cursor and the chain value at the cursor are saved in the same transaction.
 */
#include "projections/projection_int.h"

#include <stdlib.h>
#include <string.h>

/* The fields of an item event as this build's schema reads them (cs_schema_upgrade): the
 * event's own bytes, or (an old event that a change of the table rewrites) new bytes that the
 * batch owns until its reset. */
static cs_err current_fields(cs_branch *b, const cs_event_view *ev, const cs_type *t,
                             const uint8_t **fields, size_t *len)
{
    *fields = ev->fields_bytes;
    *len = ev->fields_len;
    if (ev->schema >= CS_SCHEMA_VERSION)
        return CS_OK;
    uint8_t *up;
    size_t up_len;
    char why[160];
    cs_err err = cs_schema_upgrade(t, ev->schema, ev->fields_bytes, ev->fields_len, &up, &up_len,
                                   why, sizeof(why));
    if (err == CS_NO_MEMORY)
        return err;
    if (err != CS_OK)
        return cs__branch_fail(b, CS_CORRUPT,
                               "event %llu: its %s of schema version %llu does not read under "
                               "version %u: %s",
                               (unsigned long long)ev->seq, t->name, (unsigned long long)ev->schema,
                               CS_SCHEMA_VERSION, why);
    if (!up)
        return CS_OK;
    if ((err = cs__batch_own(&b->batch, up)) != CS_OK)
        return err;
    *fields = up;
    *len = up_len;
    return CS_OK;
}

/* The item joins the batch with this event's state (the mirror is written once, at the end
 * of the transaction: cs__batch_write) and waits for a sync point. */
static cs_err apply_catalog(cs_branch *b, cs_log_txn *txn, const cs_event_view *ev,
                            const cs_type *t, bool del)
{
    uint8_t kb[9];
    cs__key9(kb, t->code, ev->id);
    cs__batch *bt = &b->batch;
    uint32_t i;
    cs_assert(ev->fields_bytes != NULL); /* every decode sets them */
    const uint8_t *fields;
    size_t len;
    cs_err err = current_fields(b, ev, t, &fields, &len);
    if (err == CS_OK)
        err = cs__batch_get(bt, kb, &i);
    if (err != CS_OK)
        return err;
    cs__bitem *it = &bt->items[i];
    it->latest =
        (cs__istate){.fields = fields, .len = len, .version = ev->version, .archived = del};
    it->flags |= CS__BI_LATEST;
    if ((err = cs__batch_mark_dirty(bt, i)) == CS_OK && b->st.linked && b->st.sync_on &&
        b->st.continuous && cs_type_set_has(b->st.types_mask, t->code))
        err = cs__sync_point(b, txn, ev->seq);
    return err;
}

static cs_err apply_item_event(cs_branch *b, cs_log_txn *txn, const cs_event_view *ev, bool del)
{
    const cs_type *t = cs_schema_find_str(ev->type);
    if (!t || t->cls == CS_CLASS_LOCAL)
        return cs__branch_fail(b, CS_CORRUPT, "event %llu: an item of an unknown or local type",
                               (unsigned long long)ev->seq);
    if (t->cls == CS_CLASS_SYNCED)
        return apply_catalog(b, txn, ev, t, del);
    /* R8: shared records are the same record everywhere, applied on arrival. */
    cs_item it = {.version = ev->version, .archived = del, .fields = ev->fields};
    const uint8_t *fields;
    size_t len, off = 0;
    cs_err err = current_fields(b, ev, t, &fields, &len);
    if (err != CS_OK)
        return err;
    if (fields != ev->fields_bytes) { /* read under this build's schema: its object instead */
        msgpack_zone_clear(&b->zone);
        if (msgpack_unpack((const char *)fields, len, &off, &b->zone, &it.fields) !=
            MSGPACK_UNPACK_SUCCESS)
            return CS_NO_MEMORY; /* cs_schema_upgrade packed it: only memory fails */
    }
    return cs_item_write(txn, b->items, t, ev->id, &it);
}

static const msgpack_object *field(const cs_event_view *ev, const char *name)
{
    size_t n = strlen(name);
    for (uint32_t i = 0; i < ev->fields.via.map.size; i++) {
        const msgpack_object *k = &ev->fields.via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, name, n) == 0)
            return &ev->fields.via.map.ptr[i].val;
    }
    return NULL;
}

static void apply_network_fields(cs__bstate *st, const cs_event_view *ev)
{
    const msgpack_object *types = field(ev, "types");
    if (types && types->type == MSGPACK_OBJECT_ARRAY) {
        cs_type_set set = {0};
        for (uint32_t i = 0; i < types->via.array.size; i++) {
            const msgpack_object *o = &types->via.array.ptr[i];
            const cs_type *t = o->type == MSGPACK_OBJECT_STR
                                   ? cs_schema_find_str((cs_str){o->via.str.ptr, o->via.str.size})
                                   : NULL;
            if (t && t->cls == CS_CLASS_SYNCED)
                cs_type_set_add(&set, t->code);
        }
        st->types_mask = set;
    }
    const msgpack_object *mode = field(ev, "mode");
    if (mode && mode->type == MSGPACK_OBJECT_STR)
        st->continuous =
            mode->via.str.size == 10 && memcmp(mode->via.str.ptr, "continuous", 10) == 0;
}

/* network, network_types, network_mode: the branch's view of the network (R7). */
static cs_err apply_network_event(cs_branch *b, cs_log_txn *txn, const cs_event_view *ev,
                                  cs_kind kind)
{
    cs__bstate *st = &b->st;
    cs_type_set before = st->types_mask;
    /* What the batch noted was remapped under the old view: written before it changes. */
    cs_err err = cs__batch_write(b, txn);
    if (err != CS_OK)
        return err;
    if (kind == CS_KIND_NETWORK)
        st->head = ev->shop;
    apply_network_fields(st, ev);
    cs_type_set gained = {st->types_mask.bits & ~before.bits};
    return gained.bits ? cs__mark_referrers(b, txn, gained) : CS_OK;
}

cs_err cs__branch_apply_event(cs_branch *b, cs_log_txn *txn, const cs_event_view *ev)
{
    cs__bstate *st = &b->st;
    bool mine = ev->id == st->shop;
    if (st->unlinked)
        return CS_OK; /* a single store now: the network's events are no longer ours */
    cs_kind kind = cs_kind_parse(ev->kind);
    switch (kind) {
    case CS_KIND_PUT:
    case CS_KIND_DELETE:
        return apply_item_event(b, txn, ev, kind == CS_KIND_DELETE);
    case CS_KIND_NETWORK:
    case CS_KIND_NETWORK_TYPES:
    case CS_KIND_NETWORK_MODE:
        return apply_network_event(b, txn, ev, kind);
    case CS_KIND_SHOP_ADD:
        if (!mine)
            return CS_OK;
        st->linked = true;
        st->sync_on = true;
        return cs__sync_point(b, txn, ev->seq);
    case CS_KIND_SHOP_SWITCH:
        if (mine) {
            const msgpack_object *on = field(ev, "switch");
            st->sync_on = on && on->type == MSGPACK_OBJECT_BOOLEAN && on->via.boolean;
        }
        return CS_OK;
    case CS_KIND_SYNC:
        return cs__sync_event(b, txn, ev->id, ev->seq, NULL);
    case CS_KIND_SHOP_UNLINK: {
        if (!mine)
            return CS_OK;
        cs_err err = cs__batch_write(b, txn); /* unlink walks the catalog as it stands */
        return err == CS_OK ? cs__unlink(b, txn) : err;
    }
    case CS_KIND_INIT:
    case CS_KIND_SHOP_PASSWORD:
    case CS_KIND_SHOP_WHATSAPP:
    case CS_KIND_NETWORK_WHATSAPP: /* the head office's state: a branch keeps none of it */
        return CS_OK;
    case CS_KIND_UNKNOWN: /* apply_record checked the version: this build knows every kind */
        break;
    }
    return cs__branch_fail(b, CS_CORRUPT,
                           "event %llu: unknown kind '%.*s' in an event of schema version %llu, "
                           "which defines no such kind",
                           (unsigned long long)ev->seq, (int)ev->kind.len, ev->kind.ptr,
                           (unsigned long long)ev->schema);
}

/* ---- segments ---------------------------------------------------------------------------- */

#define SEGMENTS_PER_TXN_MAX CS_BRANCH_SEGMENTS_PER_TXN_MAX

typedef struct seg_ctx {
    cs_branch *b;
    cs_segment_view views[SEGMENTS_PER_TXN_MAX]; /* as opened: each attempt iterates copies */
    size_t n;
    uint64_t applied;
} seg_ctx;

static cs_err check_start(cs_branch *b, const cs_segment_view *v)
{
    const cs__bstate *st = &b->st;
    if (st->shop == 0)
        return cs__branch_fail(b, CS_NOT_IN_NETWORK,
                               "this directory is not a branch yet (branch import --shop ID)");
    if (v->first > st->cursor + 1)
        return cs__branch_fail(b, CS_INVALID_INPUT,
                               "the segment starts at event %llu but this branch is at %llu: "
                               "events %llu to %llu are missing",
                               (unsigned long long)v->first, (unsigned long long)st->cursor,
                               (unsigned long long)st->cursor + 1,
                               (unsigned long long)v->first - 1);
    return CS_OK;
}

/* The synced type of a put or delete (*del says which), what apply_catalog takes as bytes;
 * NULL for any other event. */
static const cs_type *catalog_type(const cs_event_view *ev, bool *del)
{
    cs_kind kind = cs_kind_parse(ev->kind);
    const cs_type *t =
        kind == CS_KIND_PUT || kind == CS_KIND_DELETE ? cs_schema_find_str(ev->type) : NULL;
    *del = kind == CS_KIND_DELETE;
    return t && t->cls == CS_CLASS_SYNCED ? t : NULL;
}

static cs_err apply_record(cs_branch *b, cs_log_txn *txn, const cs_log_record *rec)
{
    /* One event at a time, in order: segment_fn skips what the cursor covers and
     * cs_segment_next yields consecutive sequences from a first <= cursor + 1 (check_start). */
    cs_assert(rec->seq == b->st.cursor + 1);
    cs_event_view ev;
    /* Fields stay bytes for catalog puts and deletes (nearly every event); anything else reads
     * its fields, so it is decoded again, whole. */
    bool del = false;
    const cs_type *t = NULL;
    cs_err err = cs_event_decode_lazy(b->dec, rec->event, rec->event_len, &ev);
    if (err == CS_OK && !(t = catalog_type(&ev, &del)))
        err = cs_event_decode(b->dec, rec->event, rec->event_len, &ev);
    if (err == CS_NO_MEMORY)
        return err;
    if (err != CS_OK || ev.seq != rec->seq)
        return cs__branch_fail(b, CS_CORRUPT, "event %llu does not decode",
                               (unsigned long long)rec->seq);
    /* Before anything reads it: a newer version's event may mean what this build cannot tell,
     * so the branch stops here (the transaction, cursor included, is not written). */
    char why[CS__BRANCH_ERRMSG_BYTES];
    if (cs_schema_check_version(ev.seq, ev.schema, why, sizeof(why)) != CS_OK)
        return cs__branch_fail(b, CS_PROTOCOL_MISMATCH, "%s", why);
    /* A catalog event goes straight to apply_catalog: its kind and type are parsed once (what
     * cs__branch_apply_event would do with it, a single store ignoring it included). */
    if (t)
        err = b->st.unlinked ? CS_OK : apply_catalog(b, txn, &ev, t, del);
    else
        err = cs__branch_apply_event(b, txn, &ev);
    b->st.cursor = rec->seq;
    b->st.chain = rec->chain;
    cs_assert(err != CS_OK || cs__bstate_invariants_hold(&b->st));
    return err;
}

/* What a segment that verified to its end did to the state: the cursor never moved back, and
 * when it applied anything the cursor is the segment's last event, the chain that event's, and
 * every event after the old cursor was applied once. */
static bool view_applied(const cs__bstate *st, uint64_t last, const cs_segment_view *end,
                         uint64_t cursor_before, uint64_t applied)
{
    if (st->cursor < cursor_before || end->next_seq != last + 1)
        return false;
    if (last <= cursor_before)
        return applied == 0 && st->cursor == cursor_before;
    return applied == last - cursor_before && st->cursor == last && st->chain == end->prev_chain &&
           cs__bstate_invariants_hold(st);
}

/* One segment inside the transaction, after the state was loaded. */
static cs_err apply_view(cs_branch *b, cs_log_txn *txn, cs_segment_view v, uint64_t *applied)
{
    cs_err err = check_start(b, &v);
    if (err != CS_OK)
        return err;
    cs_assert(b->st.shop != 0); /* check_start */
    cs_assert(v.first <= b->st.cursor + 1);
    uint64_t cursor_before = b->st.cursor, applied_before = *applied;
    if (v.first == b->st.cursor + 1 && b->st.cursor > 0) {
        v.prev_chain = b->st.chain; /* the segment must continue the chain we hold */
        v.prev_chain_known = true;
    }
    uint64_t first = v.first, last = v.last;
    cs_log_record rec;
    while ((err = cs_segment_next(&v, &rec)) == CS_OK) {
        if (rec.seq < b->st.cursor)
            continue;
        if (rec.seq == b->st.cursor) {
            if (rec.chain != b->st.chain)
                return cs__branch_fail(b, CS_CORRUPT,
                                       "event %llu differs from the one this branch applied: "
                                       "the log diverged",
                                       (unsigned long long)rec.seq);
            continue;
        }
        if ((err = apply_record(b, txn, &rec)) != CS_OK)
            return err;
        (*applied)++;
    }
    if (err != CS_NOT_FOUND)
        return cs__branch_fail(b, CS_CORRUPT, "segment %llu-%llu: event %llu does not verify",
                               (unsigned long long)first, (unsigned long long)last,
                               (unsigned long long)v.next_seq);
    cs_assert(view_applied(&b->st, last, &v, cursor_before, *applied - applied_before));
    return CS_OK;
}

static cs_err segment_fn(cs_log_txn *txn, void *ctx)
{
    seg_ctx *c = ctx;
    cs_branch *b = c->b;
    c->applied = 0;
    cs__batch_reset(&b->batch); /* a retry (the map grew) starts again from nothing */
    cs_err err = b->bind_shop ? cs__bind_write(b, txn) : CS_OK;
    if (err == CS_OK)
        err = cs__state_load(b, cs_log_txn_mdb(txn), &b->st);
    uint64_t before = b->st.cursor;
    for (size_t i = 0; err == CS_OK && i < c->n; i++)
        err = apply_view(b, txn, c->views[i], &c->applied);
    if (err != CS_OK)
        return err;
    cs_assert(b->st.cursor >= before); /* the cursor never moves back */
    if ((err = cs__batch_write(b, txn)) != CS_OK)
        return err;
    return c->applied ? cs__state_save(b, txn, &b->st) : CS_OK;
}

cs_err cs_branch_apply_segments(cs_branch *b, const uint8_t *const *segs, const size_t *lens,
                                size_t n, uint64_t *applied_out)
{
    b->errmsg[0] = '\0';
    if (n == 0 || n > SEGMENTS_PER_TXN_MAX)
        return cs__branch_fail(b, CS_INVALID_INPUT, "1 to %u segments per call, not %zu",
                               SEGMENTS_PER_TXN_MAX, n);
    seg_ctx *c = malloc(sizeof(*c));
    if (!c)
        return CS_NO_MEMORY;
    c->b = b;
    c->n = n;
    cs_err err = CS_OK;
    for (size_t i = 0; err == CS_OK && i < n; i++)
        if ((err = cs_segment_open(segs[i], lens[i], &c->views[i])) != CS_OK)
            cs__branch_fail(b, err, "the segment does not verify (bad header or checksum)");
    if (err == CS_OK)
        err = cs_log_write(cs_engine_log(b->engine), segment_fn, c);
    if (err == CS_OK)
        b->bind_shop = 0; /* written with these segments */
    if (err == CS_OK && applied_out)
        *applied_out = c->applied;
    free(c);
    return err;
}

cs_err cs_branch_apply_segment(cs_branch *b, const uint8_t *seg, size_t len, uint64_t *applied_out)
{
    return cs_branch_apply_segments(b, &seg, &len, 1, applied_out);
}
