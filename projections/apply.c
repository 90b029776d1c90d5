/*
 * apply.c: applying the head office's events to a branch, one segment per transaction.
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
 *   anything else                  -> nothing but the cursor
 * The cursor and the chain value at the cursor are saved in the same transaction.
 */
#include "projections/projection_int.h"

#include <string.h>

static bool kind_is(const cs_event_view *ev, const char *k)
{
    return ev->kind.len == strlen(k) && memcmp(ev->kind.ptr, k, ev->kind.len) == 0;
}

static bool type_synced(const cs__bstate *st, const cs_type *t)
{
    return t->code < 64 && (st->types_mask & ((uint64_t)1 << t->code));
}

static cs_err apply_catalog(cs_branch *b, cs_log_txn *txn, const cs_event_view *ev,
                            const cs_type *t)
{
    uint8_t kb[9];
    cs__key9(kb, t->code, ev->id);
    cs_err err;
    if (ev->fields_bytes) { /* stored as they were logged: no decode and pack again */
        err = cs__rec_put(b, txn, b->mirror, kb, ev->version, kind_is(ev, "delete"), NULL,
                          ev->fields_bytes, ev->fields_len);
    } else {
        cs_item it = {
            .version = ev->version, .archived = kind_is(ev, "delete"), .fields = ev->fields};
        err = cs_item_write(txn, b->mirror, t, ev->id, &it);
    }
    /* Already dirty is the common case while catching up: NOOVERWRITE stops at the search. */
    MDB_val k = {9, kb}, v = {0, ""};
    if (err == CS_OK && (err = cs_log_txn_put(txn, b->dirty, &k, &v, MDB_NOOVERWRITE)) ==
                            CS_INVALID_INPUT) /* cs_log_txn_put's answer for an existing key */
        err = CS_OK;
    if (err == CS_OK && b->st.linked && b->st.sync_on && b->st.continuous && type_synced(&b->st, t))
        err = cs__sync_point(b, txn, ev->seq);
    return err;
}

static cs_err apply_item_event(cs_branch *b, cs_log_txn *txn, const cs_event_view *ev)
{
    const cs_type *t = NULL;
    char name[64];
    if (ev->type.len < sizeof(name)) {
        memcpy(name, ev->type.ptr, ev->type.len);
        name[ev->type.len] = '\0';
        t = cs_schema_find(name);
    }
    if (!t || t->cls == CS_CLASS_LOCAL)
        return cs__branch_fail(b, CS_CORRUPT, "event %llu: an item of an unknown or local type",
                               (unsigned long long)ev->seq);
    if (t->cls == CS_CLASS_SYNCED)
        return apply_catalog(b, txn, ev, t);
    /* R8: shared records are the same record everywhere, applied on arrival. */
    cs_item it = {.version = ev->version, .archived = kind_is(ev, "delete"), .fields = ev->fields};
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
        uint64_t mask = 0;
        for (uint32_t i = 0; i < types->via.array.size; i++) {
            const msgpack_object *o = &types->via.array.ptr[i];
            char name[64];
            if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= sizeof(name))
                continue;
            memcpy(name, o->via.str.ptr, o->via.str.size);
            name[o->via.str.size] = '\0';
            const cs_type *t = cs_schema_find(name);
            if (t && t->cls == CS_CLASS_SYNCED && t->code < 64)
                mask |= (uint64_t)1 << t->code;
        }
        st->types_mask = mask;
    }
    const msgpack_object *mode = field(ev, "mode");
    if (mode && mode->type == MSGPACK_OBJECT_STR)
        st->continuous =
            mode->via.str.size == 10 && memcmp(mode->via.str.ptr, "continuous", 10) == 0;
}

cs_err cs__branch_apply_event(cs_branch *b, cs_log_txn *txn, const cs_event_view *ev)
{
    cs__bstate *st = &b->st;
    bool mine = ev->id == st->shop;
    if (st->unlinked)
        return CS_OK; /* a single store now: the network's events are no longer ours */
    if (kind_is(ev, "put") || kind_is(ev, "delete"))
        return apply_item_event(b, txn, ev);
    if (kind_is(ev, "network") || kind_is(ev, "network_types") || kind_is(ev, "network_mode")) {
        uint64_t before = st->types_mask;
        if (kind_is(ev, "network"))
            st->head = ev->shop;
        apply_network_fields(st, ev);
        uint64_t gained = st->types_mask & ~before;
        if (gained)
            return cs__mark_referrers(b, txn, gained);
    } else if (kind_is(ev, "shop_add") && mine) {
        st->linked = true;
        st->sync_on = true;
        return cs__sync_point(b, txn, ev->seq);
    } else if (kind_is(ev, "shop_switch") && mine) {
        const msgpack_object *on = field(ev, "switch");
        st->sync_on = on && on->type == MSGPACK_OBJECT_BOOLEAN && on->via.boolean;
    } else if (kind_is(ev, "sync") && (ev->id == 0 || mine)) {
        if (st->linked && st->sync_on)
            return cs__sync_point(b, txn, ev->seq);
    } else if (kind_is(ev, "shop_unlink") && mine) {
        return cs__unlink(b, txn);
    }
    return CS_OK;
}

/* ---- segments ---------------------------------------------------------------------------- */

typedef struct seg_ctx {
    cs_branch *b;
    cs_segment_view view; /* as opened: each attempt iterates its own copy */
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

static cs_err apply_record(cs_branch *b, cs_log_txn *txn, const cs_log_record *rec)
{
    /* One event at a time, in order: segment_fn skips what the cursor covers and
     * cs_segment_next yields consecutive sequences from a first <= cursor + 1 (check_start). */
    cs_assert(rec->seq == b->st.cursor + 1);
    cs_event_view ev;
    if (cs_event_decode(b->dec, rec->event, rec->event_len, &ev) != CS_OK || ev.seq != rec->seq)
        return cs__branch_fail(b, CS_CORRUPT, "event %llu does not decode",
                               (unsigned long long)rec->seq);
    cs_err err = cs__branch_apply_event(b, txn, &ev);
    b->st.cursor = rec->seq;
    b->st.chain = rec->chain;
    cs_assert(err != CS_OK || cs__bstate_invariants_hold(&b->st));
    return err;
}

/* What a segment that verified to its end did to the state: the cursor never moved back, and
 * when it applied anything the cursor is the segment's last event, the chain that event's, and
 * every event after the old cursor was applied once. */
static bool segment_applied(const seg_ctx *c, const cs_segment_view *end, uint64_t cursor_before)
{
    const cs__bstate *st = &c->b->st;
    uint64_t last = c->view.last;
    if (st->cursor < cursor_before || end->next_seq != last + 1)
        return false;
    if (last <= cursor_before)
        return c->applied == 0 && st->cursor == cursor_before;
    return c->applied == last - cursor_before && st->cursor == last &&
           st->chain == end->prev_chain && cs__bstate_invariants_hold(st);
}

static cs_err segment_fn(cs_log_txn *txn, void *ctx)
{
    seg_ctx *c = ctx;
    cs_branch *b = c->b;
    cs_segment_view v = c->view;
    c->applied = 0;
    cs_err err = b->bind_shop ? cs__bind_write(b, txn) : CS_OK;
    if (err == CS_OK)
        err = cs__state_load(b, cs_log_txn_mdb(txn), &b->st);
    if (err == CS_OK)
        err = check_start(b, &v);
    if (err != CS_OK)
        return err;
    cs_assert(b->st.shop != 0); /* check_start */
    cs_assert(v.first <= b->st.cursor + 1);
    uint64_t cursor_before = b->st.cursor;
    if (v.first == b->st.cursor + 1 && b->st.cursor > 0) {
        v.prev_chain = b->st.chain; /* the segment must continue the chain we hold */
        v.prev_chain_known = true;
    }
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
        c->applied++;
    }
    if (err != CS_NOT_FOUND)
        return cs__branch_fail(b, CS_CORRUPT, "segment %llu-%llu: event %llu does not verify",
                               (unsigned long long)c->view.first, (unsigned long long)c->view.last,
                               (unsigned long long)v.next_seq);
    cs_assert(segment_applied(c, &v, cursor_before));
    return c->applied ? cs__state_save(b, txn, &b->st) : CS_OK;
}

cs_err cs_branch_apply_segment(cs_branch *b, const uint8_t *seg, size_t len, uint64_t *applied_out)
{
    b->errmsg[0] = '\0';
    seg_ctx c = {.b = b};
    cs_err err = cs_segment_open(seg, len, &c.view);
    if (err != CS_OK)
        return cs__branch_fail(b, err, "the segment does not verify (bad header or checksum)");
    err = cs_log_write(cs_engine_log(b->engine), segment_fn, &c);
    if (err == CS_OK)
        b->bind_shop = 0; /* written with this segment */
    if (err == CS_OK && applied_out)
        *applied_out = c.applied;
    return err;
}
