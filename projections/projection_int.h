/*
 * projection_int.h: what the projection's files share: the handle, its databases and the
 * in-memory copy of the branch's state that one apply transaction loads, changes and saves.
 *
 * Databases (beside the engine's, in the branch's environment; docs/storage.md, "branch"):
 *   mirror  type code u8 + head id u64 BE -> item record of the head-office item as of the
 *           cursor (same layout as `items`, origin nil)
 *   origin  type code u8 + head id u64 BE -> this branch's copy id u64 BE
 *   dirty   type code u8 + head id u64 BE -> empty: mirror entries changed since a sync point
 *           last covered them
 *   branch  "state" -> compact JSON of cs__bstate; "chain" -> u64 BE chain at the cursor
 */
#ifndef CS_PROJECTION_INT_H
#define CS_PROJECTION_INT_H

#include "projections/projection.h"

#define CS__BRANCH_ERRMSG_BYTES 320

/* The branch's projection state, kept in `branch` "state" and loaded into b->st by each apply
 * transaction. Invariants (cs__bstate_invariants_hold; asserted before every save and after
 * every event; a stored state that breaks one is reported CS_CORRUPT by cs__state_load):
 *   1. shop == 0 only in a directory never bound, and then nothing has been applied: cursor,
 *      chain and sync_seq are 0 and the branch is neither linked nor unlinked.
 *   2. linked and unlinked are never both set (shop_unlink moves linked -> unlinked, R13).
 *   3. sync_seq <= cursor: a sync point runs at the event being applied, and the cursor moves
 *      to that event in the same transaction. sync_seq != 0 only when linked or unlinked: a
 *      sync point runs only while linked (shop_add links before its own sync point).
 *   4. cursor == 0 implies chain == 0: the chain is the value at the cursor.
 *   5. types_mask holds only codes of synced types (codes < 64: it is a 64-bit mask).
 * The cursor never moves backwards, and after a segment that applied events it equals the
 * segment's last sequence and chain equals that event's chain (apply.c checks both sides). */
typedef struct cs__bstate {
    uint64_t shop;
    uint64_t head;
    uint64_t cursor;
    uint64_t chain;
    uint64_t sync_seq;
    cs_type_set types_mask; /* the network's synced types (R7) */
    bool linked;
    bool sync_on;
    bool continuous;
    bool unlinked;
} cs__bstate;

/* An item's state as one event gave it: the fields' bytes point into a segment being applied
 * (borrowed: the segments outlive the transaction's work, cs_branch_apply_segments). */
typedef struct cs__istate {
    const uint8_t *fields;
    size_t len;
    uint64_t version;
    bool archived;
} cs__istate;

/* Flags of a cs__bitem. */
#define CS__BI_LATEST 0x01u   /* an event of this transaction set `latest` */
#define CS__BI_DIRTY 0x02u    /* waiting for a sync point (on the dirty list) */
#define CS__BI_FROM_DB 0x04u  /* in the `dirty` database when the transaction began */
#define CS__BI_ID_KNOWN 0x08u /* copy_id is what the origin index holds (0: no copy yet) */

/* One catalog item the current apply transaction touched (batch.c). Within one transaction the
 * states between its sync points cannot be seen by anyone, so the mirror gets only the last
 * event's state and the copy only its state at the last sync point that covered it, once;
 * docs/design.md, "Applying a batch", says why the result equals event-by-event application. */
typedef struct cs__bitem {
    uint8_t key[9];     /* type code, head id BE */
    uint8_t flags;      /* CS__BI_* */
    uint32_t slot;      /* its slot in the hash table */
    uint32_t bumps;     /* sync points of this batch that found it changed (its copy's versions) */
    uint32_t last_sync; /* the last of those (1-based, within the batch) */
    uint32_t id_sync;   /* the sync point that gave it its copy id; 0: before this batch */
    uint64_t copy_id;   /* with CS__BI_ID_KNOWN; 0 = no copy */
    cs__istate latest;  /* with CS__BI_LATEST: for the mirror */
    cs__istate synced;  /* with bumps > 0: for the copy */
} cs__bitem;

/* The items one apply transaction touched, reset at its start and written at its end (or
 * before an event that changes the branch's view of the network). Arrays owned, reused. */
typedef struct cs__batch {
    cs__bitem *items; /* dense, in order of first touch */
    uint32_t n, cap;
    uint32_t *slots; /* open addressing: index + 1 into items, 0 = empty */
    uint32_t nslots; /* a power of two, at least twice n */
    uint32_t *dirty; /* indices of the items with CS__BI_DIRTY */
    uint32_t ndirty, dirty_cap;
    uint32_t *scratch; /* a sync point's new copies, then its kept entries */
    uint32_t scratch_cap;
    uint32_t syncs; /* sync points run in this batch */
    bool db_loaded; /* the `dirty` database's entries are items of the batch */
    /* Fields read from an older schema version (cs_schema_upgrade) that a cs__istate points at
     * instead of the segment: each owned, freed with the batch's reset. Rare (old logs). */
    uint8_t **owned;
    uint32_t nowned, owned_cap;
} cs__batch;

void cs__batch_free(cs__batch *bt);
void cs__batch_reset(cs__batch *bt);
/* The item with this key, added (flags 0) when missing; *idx_out its index. Pointers into
 * bt->items are invalid after a call that added. Errors: CS_NO_MEMORY. */
cs_err cs__batch_get(cs__batch *bt, const uint8_t key[9], uint32_t *idx_out);
/* The index of the item with this key, or UINT32_MAX. */
uint32_t cs__batch_find(const cs__batch *bt, const uint8_t key[9]);
/* Puts the item on the dirty list (once). Errors: CS_NO_MEMORY. */
cs_err cs__batch_mark_dirty(cs__batch *bt, uint32_t idx);
/* Hands p (malloc'd) to the batch, which frees it at its next reset; on CS_NO_MEMORY p is
 * freed at once. */
cs_err cs__batch_own(cs__batch *bt, uint8_t *p);
/* Room for n indices in bt->scratch. Errors: CS_NO_MEMORY. */
cs_err cs__batch_scratch(cs__batch *bt, size_t n);

struct cs_branch {
    cs_engine *engine; /* owned */
    MDB_dbi mirror;
    MDB_dbi origin;
    MDB_dbi dirty;
    MDB_dbi meta;
    MDB_dbi items;         /* the engine's */
    MDB_dbi local;         /* the engine's: its next_id counter, which a bootstrap moves on */
    cs_event_decoder *dec; /* owned */
    msgpack_zone zone;     /* owned: one item's scratch objects */
    msgpack_sbuffer rec;   /* owned: one item record being written, reused (no malloc per item) */
    msgpack_packer rec_pk; /* packs into rec */
    msgpack_sbuffer flds;  /* owned: a copy's remapped fields, reused */
    cs__batch batch;       /* owned: the items the current apply transaction touched */
    cs__bstate st;         /* the state inside the current apply transaction */
    uint64_t bind_shop;    /* cs_branch_bind's shop, written by the next segment applied */
    char errmsg[CS__BRANCH_ERRMSG_BYTES];
};

cs_err cs__branch_fail(cs_branch *b, cs_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Begins a read snapshot of the branch's directory through cs_log_read_begin (which adopts a
 * map another process grew); on failure b->errmsg holds cs_log_errmsg's sentence. End it with
 * cs_log_read_end(cs_engine_log(b->engine), txn). */
cs_err cs__branch_read_begin(cs_branch *b, MDB_txn **txn);

/* Makes the directory branch b->bind_shop inside txn (R10), when cs_branch_bind asked for it. */
cs_err cs__bind_write(cs_branch *b, cs_log_txn *txn);

/* Reads the state (a fresh one when none is stored). Errors: CS_CORRUPT (it does not read back,
 * or breaks an invariant above), CS_IO. */
cs_err cs__state_load(cs_branch *b, MDB_txn *txn, cs__bstate *out);
/* Asserts the invariants above, then writes st. Errors: storage errors, CS_NO_MEMORY. */
cs_err cs__state_save(cs_branch *b, cs_log_txn *txn, const cs__bstate *st);
/* The invariants of cs__bstate above; for cs_assert, and for cs__state_load's check of what it
 * read from disk. */
bool cs__bstate_invariants_hold(const cs__bstate *st);

/* Writes the item record (docs/storage.md, "engine") key -> [version, archived, origin or nil,
 * nil, fields bytes] into dbi through b->rec; origin NULL = nil. The fields stay bytes, never
 * msgpack-c's object tree: the apply path writes one record per event and the sync point one
 * per copy, and packing objects was a fifth of a branch's time (cs_item_parse_header reads them
 * back the same way). Errors: storage errors, CS_NO_MEMORY. */
cs_err cs__rec_put(cs_branch *b, cs_log_txn *txn, MDB_dbi dbi, const uint8_t key[9],
                   uint64_t version, bool archived, const uint64_t *origin, const uint8_t *fields,
                   size_t fields_len);

/* One event, in the apply transaction (apply.c). */
cs_err cs__branch_apply_event(cs_branch *b, cs_log_txn *txn, const cs_event_view *ev);

/* A sync point covering this branch (syncpoint.c): brings every dirty entry of a synced type
 * to the mirror's state (R2, R4, R7). Entries the batch touched are only noted (their copy is
 * written by cs__batch_write); the others, dirty since an earlier transaction, are written. */
cs_err cs__sync_point(cs_branch *b, cs_log_txn *txn, uint64_t seq);

/* Whether a `sync` event covers this branch, and why not (R5b, R5c, R6). */
typedef enum cs__sync_cover {
    CS__SYNC_COVERED,    /* a sync point runs */
    CS__SYNC_OTHER_SHOP, /* a sync for another branch alone (R5c) */
    CS__SYNC_NOT_LINKED, /* not (or no longer) linked: no sync point covers it */
    CS__SYNC_SWITCH_OFF, /* linked, but its switch is off (R6): its copies stay as they are */
} cs__sync_cover;
/* A `sync` event for `target` (0: every branch) at seq, in the apply transaction: decides
 * whether it covers this branch and, when it does, runs the sync point. apply.c calls it for
 * every sync event of the log and the sync preview (preview.c) for the sync point that has not
 * been made yet, so the preview and the sync agree by construction. *cover (may be NULL) gets
 * the decision. Errors: as cs__sync_point. */
cs_err cs__sync_event(cs_branch *b, cs_log_txn *txn, uint64_t target, uint64_t seq,
                      cs__sync_cover *cover);
/* Calls fn with every key of the `dirty` database in key order (the key is a copy, valid
 * during the call), stopping at fn's first error. Errors: CS_CORRUPT (a key that is not 9
 * bytes), CS_IO, fn's. */
typedef cs_err (*cs__dirty_fn)(const uint8_t key[9], void *ctx);
cs_err cs__dirty_walk(cs_branch *b, MDB_txn *m, cs__dirty_fn fn, void *ctx);
/* Writes what the batch holds: each touched item's mirror entry, each copy its sync points
 * changed, the dirty set; then resets the batch (syncpoint.c). */
cs_err cs__batch_write(cs_branch *b, cs_log_txn *txn);
/* R2, R7: `gained` types were put back into the synced set; marks dirty every mirror entry of
 * a type that references one of them, so the next sync point names this branch's copies of the
 * items of those types instead of the head-office ids kept while they were out (syncpoint.c). */
cs_err cs__mark_referrers(cs_branch *b, cs_log_txn *txn, cs_type_set gained);
/* R13: copies become local items that remember their origin; the branch a single store. */
cs_err cs__unlink(cs_branch *b, cs_log_txn *txn);

static inline void cs__key9(uint8_t key[9], uint8_t code, uint64_t id)
{
    key[0] = code;
    cs_be64_put(key + 1, id);
}

#endif
