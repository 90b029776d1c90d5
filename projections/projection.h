/*
 * projection.h: the public contract of a branch's projection: the branch's own data directory,
 * kept in step with the head office's log by applying segments from its cursor (SPEC 3, 4).
 *
 * The rules decided here, from the events alone, so that the same log always gives the same
 * branch: R2 mirrored copies with remapped references, R3 local items untouched, R4 deletes
 * archive, R5 sync points, R6 the switch, R7 the synced types, R8 shared records on arrival,
 * R13 unlink. The design is in docs/design.md ("projection"), the databases in
 * docs/storage.md ("branch").
 *
 * A branch directory is also an engine directory (engine/engine.h): its catalog lives in the
 * engine's `items` database, copies beside local items, so `get`, `list`, `put` and `del` work
 * on it through the engine, which refuses writes to copies (R1).
 */
#ifndef CS_PROJECTION_H
#define CS_PROJECTION_H

#include "engine/engine.h"

#include <stdio.h>

typedef struct cs_branch cs_branch;

/* Opens (creating) a branch's data directory. Owned by the caller: cs_branch_close.
 * Errors: as cs_engine_open. */
cs_err cs_branch_open(const char *dir, const cs_log_options *opts, cs_branch **out);
void cs_branch_close(cs_branch *b);               /* accepts NULL */
const char *cs_branch_errmsg(const cs_branch *b); /* borrowed until the next call */
cs_engine *cs_branch_engine(cs_branch *b);        /* borrowed for the branch's lifetime */

/* Makes the directory branch `shop` of a network: a new directory or a single store (R10: its
 * own items stay local items) becomes one; a directory that already is that branch is left as
 * it is. The change is checked now and written in the transaction of the next segment applied,
 * so an import that is refused leaves the directory as it was (SPEC 6). Errors: CS_INVALID_INPUT
 * (it is another branch), CS_FORBIDDEN (it is a head office), CS_NOT_IN_NETWORK (this branch was
 * unlinked: it is a single store now). */
cs_err cs_branch_bind(cs_branch *b, uint64_t shop);

typedef struct cs_branch_state {
    uint64_t shop;     /* this branch's id, 0 before bind */
    uint64_t head;     /* the head office's shop id, 0 before the network event */
    uint64_t cursor;   /* last applied sequence */
    uint64_t chain;    /* the chain value of event `cursor` (0 when cursor is 0) */
    uint64_t sync_seq; /* the last sync point that covered this branch */
    uint64_t dirty;    /* mirror entries changed since the last sync point */
    bool linked;
    bool sync_on;    /* R6 switch */
    bool continuous; /* R5d mode */
    bool unlinked;   /* R13: was a branch, now a single store */
} cs_branch_state;

cs_err cs_branch_state_get(cs_branch *b, cs_branch_state *out);

/* Applies one segment in one transaction with the cursor (a crash never applies an event twice
 * nor skips one). Records at or before the cursor are skipped (a re-import is harmless); the
 * segment must not start after cursor + 1. *applied_out (may be NULL) gets how many events were
 * applied. Errors: CS_CORRUPT (a checksum or the chain does not verify, or the log diverged
 * from the one this branch follows), CS_INVALID_INPUT (a gap before the segment),
 * CS_NOT_IN_NETWORK (not bound), storage errors. Nothing changes on error. */
cs_err cs_branch_apply_segment(cs_branch *b, const uint8_t *seg, size_t len, uint64_t *applied_out);
/* The same for n consecutive segments (1..CS_BRANCH_SEGMENTS_PER_TXN_MAX) in ONE transaction:
 * one durable commit for a catch-up's worth of segments that arrived together (a default
 * catch-up of 100 segments in one: net/node.c's slots). All or nothing. Errors: as above,
 * CS_INVALID_INPUT for n out of range. */
#define CS_BRANCH_SEGMENTS_PER_TXN_MAX 128u
cs_err cs_branch_apply_segments(cs_branch *b, const uint8_t *const *segs, const size_t *lens,
                                size_t n, uint64_t *applied_out);

/* Applies every segment of a file written by cs_export_file, one transaction per segment.
 * *applied_out gets the events applied. Errors: as cs_branch_apply_segment, CS_IO. */
cs_err cs_branch_import_file(cs_branch *b, const char *path, uint64_t *applied_out);
/* The same, reporting the bytes of the file applied so far to p (may be NULL). */
cs_err cs_branch_import_file_progress(cs_branch *b, const char *path, uint64_t *applied_out,
                                      const cs_progress *p);

/* XXH3 of the branch's catalog and projection state (items, origin index, mirror, dirty set,
 * cursor): equal digests mean byte-identical branches. */
cs_err cs_branch_digest(cs_branch *b, uint64_t *out);

/* Writes the log's events from `from` to the head as segments into `path` (replaced
 * atomically, fsynced). *events_out gets how many. Errors: CS_NOT_FOUND (from is past the head),
 * CS_IO, log read errors. */
cs_err cs_export_file(cs_log *log, uint64_t from, const char *path, uint64_t *events_out);
/* The same, reporting the events written so far to p (may be NULL). */
cs_err cs_export_file_progress(cs_log *log, uint64_t from, const char *path, uint64_t *events_out,
                               const cs_progress *p);

/* Segments in an export file are at most this large: big enough to amortise a transaction,
 * small enough that an import holds one in memory at a time. */
#define CS_EXPORT_SEGMENT_BYTES (4u * 1024u * 1024u)
_Static_assert(CS_EXPORT_SEGMENT_BYTES <= CS_SEGMENT_BYTES_MAX, "export segments are segments");

/* ==== audit (projections/audit*.c; docs/design.md "Audit", docs/storage.md "audit") ========= */
/*
 * R14: the log is the network's memory. The audit rebuilds the state of a data directory at
 * any log position or time from periodic checkpoints, what a branch should hold at any position
 * from a replay of the projection, and every version of an item from a history index; and it
 * verifies a directory (checksums, hash chain, state equal to a replay) and a branch against the
 * head office. Checkpoints and the history index are kept lazily in the audited directory's own
 * environment, derived from its log: they cost nothing on the write path.
 *
 * On a head office or single store, "the state" is the catalog and network its log produces. On
 * a branch directory the log holds only the branch's own writes (its local items, and shared
 * records written there): copies come from the head office's log, so ask the head office about
 * them (cs_audit_branch_at, cs_audit_verify with branch_dir).
 */

/* Events between two checkpoints when none is configured: a point-in-time query replays at most
 * this many events after loading the nearest checkpoint. */
#define CS_AUDIT_EVERY_DEFAULT 10000u
/* Checkpoints are full copies of the state: fewer than one per event is never useful, and more
 * than 2^32 events between them is no checkpointing at all. */
#define CS_AUDIT_EVERY_MAX ((uint64_t)1 << 32)
/* Differences one verification lists (it counts them all): bounds the report's memory when a
 * directory is badly damaged. */
#define CS_AUDIT_DIFFS_MAX 10000u
/* Versions one history lists: bounds memory for an item edited millions of times. */
#define CS_AUDIT_HISTORY_VERSIONS_MAX 1000000u

typedef struct cs_audit cs_audit;

/* Opens the audit of the directory e has open (borrowed: e must outlive the audit), creating
 * the audit's databases in it when needed. Owned by the caller: cs_audit_close. Errors:
 * CS_IO, CS_STORAGE_FULL, CS_NO_MEMORY. */
cs_err cs_audit_open(cs_engine *e, cs_audit **out);
/* Flags of cs_audit_open_flags. CS_AUDIT_READ_ONLY: the audit writes nothing in the audited
 * directory (not even its own databases, which it opens only when they exist): for
 * cs_audit_verify, which must never change the store it checks, and the sync preview. Only
 * cs_audit_verify, cs_audit_branch_at and cs_audit_sync_preview may be called on such a
 * handle. */
#define CS_AUDIT_READ_ONLY 0x1u
cs_err cs_audit_open_flags(cs_engine *e, unsigned flags, cs_audit **out);
void cs_audit_close(cs_audit *a); /* accepts NULL */
/* The sentence of the last failure or, after cs_audit_verify, of the first problem found.
 * Borrowed until the next call on the audit. */
const char *cs_audit_errmsg(const cs_audit *a);
/* Reports the events replayed of the log's head as checkpoints are built (cs_audit_checkpoint,
 * and every call that extends them) and as cs_audit_verify replays, at each checkpoint. p is
 * copied; NULL stops reporting. */
void cs_audit_set_progress(cs_audit *a, const cs_progress *p);

typedef struct cs_audit_ckpt_info {
    uint64_t every; /* events between checkpoints */
    uint64_t last;  /* the greatest checkpointed sequence, 0 when none */
    uint64_t count; /* checkpoints kept */
    uint64_t built; /* checkpoints this call added */
    uint64_t head;  /* the log's head when the call looked */
} cs_audit_ckpt_info;

/* Extends the checkpoints up to the head: replays from the last one into a scratch directory
 * and stores a copy of the state at every multiple of `every`. every == 0 keeps the stored
 * interval (CS_AUDIT_EVERY_DEFAULT before any); a different one, or rebuild, drops every
 * checkpoint and the history index first (they are rebuilt from the log). Also brings the
 * history index up to the head. info may be NULL. Errors: CS_INVALID_INPUT (every above
 * CS_AUDIT_EVERY_MAX), CS_CORRUPT (the log does not verify, or no longer matches the
 * checkpoints: errmsg says which; run cs_audit_verify), storage errors. */
cs_err cs_audit_checkpoint(cs_audit *a, uint64_t every, bool rebuild, cs_audit_ckpt_info *info);

/* The position "as of" a time: the last event whose time is <= time_ms (times never go back in
 * the log), 0 when every event is later. Errors: CS_IO, CS_CORRUPT. */
cs_err cs_audit_seq_at_time(cs_audit *a, uint64_t time_ms, uint64_t *seq_out);

typedef struct cs_audit_state cs_audit_state;

typedef struct cs_audit_state_info {
    uint64_t seq;             /* the state is as of (after) this event; 0 = before the first */
    uint64_t time_ms;         /* event seq's time, 0 when seq is 0 */
    uint64_t from_checkpoint; /* where the replay started from (0: the beginning) */
    uint64_t replayed;        /* events applied after the checkpoint */
    uint64_t shop;            /* the branch, for cs_audit_branch_at; 0 otherwise */
} cs_audit_state_info;

/* Flags of cs_audit_state_at. */
#define CS_AUDIT_FULL_REPLAY 0x1u /* ignore checkpoints, replay from event 1 (benchmarks) */
#define CS_AUDIT_NO_EXTEND 0x2u   /* use the checkpoints there are; do not build new ones */

/* The directory's state as of event seq (0..head), rebuilt in a scratch directory: the nearest
 * checkpoint <= seq is loaded and the events after it applied with the engine's own apply step,
 * so the cost follows the distance to that checkpoint, not the log's length. Checkpoints are
 * first extended to the head (unless CS_AUDIT_NO_EXTEND). With type != NULL only that type's
 * items (and the network records) are rebuilt. Owned by the caller: cs_audit_state_free.
 * Errors: CS_UNKNOWN_TYPE, CS_NOT_FOUND (seq past the head), CS_CORRUPT, storage errors. */
cs_err cs_audit_state_at(cs_audit *a, uint64_t seq, const char *type, unsigned flags,
                         cs_audit_state **out);

/* What branch `shop` should have held as of event seq of this head office's log: a scratch
 * branch bound to shop replays the log from event 1 to seq through the projection (sync points,
 * switch, synced types, unlink). Costs a replay of seq events. Errors: CS_NOT_FOUND (seq past
 * the head, or shop is no branch of this network), CS_FORBIDDEN (this directory is a branch:
 * ask its head office), CS_CORRUPT, storage errors. */
cs_err cs_audit_branch_at(cs_audit *a, uint64_t seq, uint64_t shop, cs_audit_state **out);

void cs_audit_state_free(cs_audit_state *s); /* accepts NULL; removes the scratch directory */
const cs_audit_state_info *cs_audit_state_info_get(const cs_audit_state *s);
/* The rebuilt engine, to query with cs_engine_get/list (for a branch state: the branch's,
 * whose copy ids are the scratch branch's own). Borrowed until cs_audit_state_free. */
cs_engine *cs_audit_state_engine(cs_audit_state *s);

/* The state as one JSON object, new reference owned by the caller:
 *   {"seq","time","from_checkpoint","replayed",
 *    "network": {"self","net","shops":[...]}            (an engine's state)
 *    "branch": {"shop","cursor","sync_seq","linked","switch","continuous","unlinked","types"}
 *                                                       (a branch's state)
 *    "items": [item objects (SPEC 7 shape), archived ones included, by type then id]}
 * A branch's copies are shown under the head office's ids (their origin's), with references
 * translated back to head-office ids: a branch's own copy ids depend on its local writes and
 * are not the log's to decide. type (may be NULL) keeps one type's items. Errors:
 * CS_UNKNOWN_TYPE, CS_CORRUPT, CS_NO_MEMORY. */
cs_err cs_audit_state_json(cs_audit_state *s, const char *type, json_t **out);

/* Every version of item `id` of `type` in this directory's log, oldest first, as a JSON array of
 * {"seq","time","actor","shop","kind","change","type","id","version","changes","fields"}:
 * change is "created", "updated" or "deleted"; changes lists each field that differs from the
 * previous version as {"field","op","old","new"} (op "added", "changed", "removed"). The
 * history index is first brought up to the head (a scan of the events it has not seen).
 * Errors: CS_UNKNOWN_TYPE, CS_INVALID_INPUT (a shop-local type: never logged, R9),
 * CS_NOT_FOUND (no version in this log; the errmsg says when the item is a copy whose history
 * is the head office's), CS_CORRUPT, storage errors. */
cs_err cs_audit_history(cs_audit *a, const char *type, uint64_t id, json_t **out);

/* ==== sync preview (projections/preview.c; docs/design.md "Sync preview") ================== */

/* Called once per branch with its preview (borrowed until fn returns); an error stops the
 * preview and is returned. */
typedef cs_err (*cs_sync_preview_fn)(const json_t *branch, void *ctx);

/* Issue 14: what the next sync point (`sync`, or `sync --shop SHOP` when shop != 0) would do to
 * each linked branch, as of the log's head (*seq_out, may be NULL), without writing anything in
 * the audited directory (a CS_AUDIT_READ_ONLY handle will do). Each branch is rebuilt by the
 * replay of cs_audit_branch_at and the sync point is run on that scratch branch by the code that
 * applies a `sync` event, in a transaction that is aborted: the preview is what the sync then
 * does, when nothing else is written in between. Costs one replay of the log per branch. fn gets
 * one object per branch, in shop-list order:
 *   {"shop","name","seq","covered","skip","waiting","create","update","archive",
 *    "skipped_types","unchanged"}
 * skip: null, or "switch_off" (R6: nothing of the branch changes); waiting: its mirror entries
 * changed since its last sync point; create: [{"type","id","version","origin_version",
 * "archived","item"}]; update and archive: [{"type","id","version":{"old","new"},
 * "origin_version":{"old","new"},"archived"?:{"old","new"},"changes":[{"field","op","old"?,
 * "new"?} or {"field","op":"relinked","value"}]}]; skipped_types: [{"type","items","reason":
 * "type_not_synced"}] (R7: they wait for the type to be synced again); unchanged: entries whose
 * copy would stay as it is. Items under head-office ids, references translated back to them.
 * Errors: CS_FORBIDDEN (a branch directory), CS_NOT_IN_NETWORK (a single store; shop is not a
 * linked branch), CS_CORRUPT, storage errors, fn's errors. */
cs_err cs_audit_sync_preview(cs_audit *a, uint64_t shop, cs_sync_preview_fn fn, void *ctx,
                             uint64_t *seq_out);

/* Verifies the directory: every checksum and the whole hash chain (naming the first bad
 * sequence), that its state equals a replay of its log (naming each differing item), that its
 * checkpoints and history index match the log; and, when branch_dir is not NULL, that the branch
 * directory there holds what a replay of this log says it should at its cursor (copies compared
 * by origin, with references translated back to head-office ids; shared records by id; local
 * items counted, not checked). *report (new reference, owned by the caller) is set whenever the
 * checks ran: {"ok", "log", "state", "checkpoints", "history", "branch"?}, each part with its
 * own "ok" and a "differences" list ({"type","id","what",...}, at most CS_AUDIT_DIFFS_MAX).
 * Returns CS_OK when everything holds and CS_CORRUPT when anything does not (errmsg names the
 * first problem); other errors (CS_IO, CS_NOT_FOUND for a missing branch_dir, CS_INVALID_INPUT
 * for a branch_dir that is no branch, or this directory itself) when the checks could not run. */
cs_err cs_audit_verify(cs_audit *a, const char *branch_dir, json_t **report);

/* ==== retention and snapshots (projections/snapshot.c; docs/design.md "Retention and
 * snapshots", docs/storage.md "snapshot") ================================================== */
/*
 * `log compact --before SEQ` cuts the head office's log below SEQ once a snapshot of the state
 * at SEQ - 1 was written and verified. A snapshot is a set of parts, each one checksummed blob
 * (the same bytes on disk and on the wire): the head office's own state (shop
 * CS_SNAPSHOT_SHOP_BASE: `items` and `network`, what the audit replays from), what a branch
 * that was not linked at SEQ - 1 holds then (CS_SNAPSHOT_SHOP_ANY: mirror, dirty set, shared
 * records, sync state), and, for each branch linked then whose cursor was behind, what that
 * branch holds at SEQ - 1 (its copies, origin index, mirror, dirty set and sync state, as an
 * uncut replay builds them). A branch bootstrapped from its part then follows from SEQ.
 */

#define CS_SNAPSHOT_HEADER_BYTES 64u
/* A part a branch accepts: it is held in memory until its one transaction applies it. */
#define CS_SNAPSHOT_BYTES_MAX (256u * 1024u * 1024u)
#define CS_SNAPSHOT_SHOP_BASE 0u
#define CS_SNAPSHOT_SHOP_ANY UINT64_MAX

/* A part's header, as cs_snapshot_parse read and checked it. */
typedef struct cs_snapshot_info {
    uint64_t seq;     /* the state after this event */
    uint64_t chain;   /* the log's chain at seq */
    uint64_t time_ms; /* event seq's time */
    uint64_t shop;    /* CS_SNAPSHOT_SHOP_BASE, CS_SNAPSHOT_SHOP_ANY or a branch */
    uint64_t digest;  /* of its records, as cs_engine_digest / cs_branch_digest hash them */
    uint32_t records;
    uint16_t schema; /* CS_SCHEMA_VERSION of the writer */
    size_t bytes;    /* the whole part, header included */
} cs_snapshot_info;

/* Checks a part: magic, version, schema (a newer one is CS_PROTOCOL_MISMATCH), lengths, the
 * checksum, every record's shape and order, and the digest over the records. Errors:
 * CS_CORRUPT (errmsg-free: the sentence is the caller's), CS_PROTOCOL_MISMATCH. */
cs_err cs_snapshot_parse(const uint8_t *buf, size_t len, cs_snapshot_info *out);
/* The stored part for `shop` (the CS_SNAPSHOT_SHOP_ANY part when the shop has none of its
 * own), copied: *out owned by the caller (free()). Must not run inside a transaction. Errors:
 * CS_NOT_FOUND (no snapshot), CS_CORRUPT, CS_IO, CS_NO_MEMORY. */
cs_err cs_snapshot_get(cs_log *log, uint64_t shop, uint8_t **out, size_t *len);

/* Replaces the branch's projection state by a part (one transaction: all or nothing): the
 * origin index, mirror, dirty set and sync state become the part's, its copies and shared
 * records are written, local items stay, and the cursor moves to the part's seq, from where
 * segments continue. A part of shop ANY takes this branch's shop id. Nothing happens when the
 * branch is already at or past the part's seq. Errors: CS_CORRUPT, CS_PROTOCOL_MISMATCH
 * (cs_snapshot_parse), CS_INVALID_INPUT (another shop's part, or a local item holds an id the
 * part gives a copy), CS_NOT_IN_NETWORK (not bound), storage errors. */
cs_err cs_branch_bootstrap(cs_branch *b, const uint8_t *buf, size_t len, uint64_t *seq_out);

/* What cs_audit_compact did or would refuse. */
typedef struct cs_compact_result {
    uint64_t before;  /* the log now starts here */
    uint64_t seq;     /* the snapshot's position: before - 1 */
    uint64_t deleted; /* events deleted now (a resumed trim included) */
    uint64_t parts;   /* parts written: base, ANY and one per branch behind */
    uint64_t bytes;   /* their size */
    json_t *stranded; /* [{"shop","name","cursor"}] branches behind the cut; owned by the caller */
} cs_compact_result;

/* Compacts the log of the audited head office (or single store): builds the snapshot at
 * before - 1 by replay, stores it, reads it back and checks every part's checksum and digest
 * against the replay's, then records the cut and deletes the prefix in short transactions
 * (other processes keep working beside it). Refuses, before writing anything, when a branch
 * linked at before - 1 has a cursor below it, unless force (they are then bootstrapped from
 * their parts). out->stranded is set in both cases. Errors: CS_FORBIDDEN (branches behind, the
 * sentence names them; or a branch directory), CS_INVALID_INPUT (before out of range),
 * CS_NOT_FOUND (events before it were already cut: it must be >= the log's start), CS_CORRUPT,
 * storage errors. */
cs_err cs_audit_compact(cs_audit *a, uint64_t before, bool force, cs_compact_result *out);

#endif
