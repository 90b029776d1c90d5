/*
 * audit_int.h: what the audit's files share. Each file calls only the files below it (so the
 * module reads top-down; audit_handle.c draws the layers):
 *   audit_verify.c   verification of a directory and of a branch against the head office
 *   audit.c          scratch directories, checkpoints and past states
 *   audit_history.c  the history index and item histories
 *   audit_handle.c   the handle, read snapshots, the metadata database, log points
 *
 * Databases the audit keeps in the audited directory's environment (docs/storage.md, "audit").
 * All are derived from the log, lazily, and may be dropped at any time: nothing else reads them.
 *   ckpt     seq u64 BE + tag u8 [+ state key] ->
 *              tag 0 (header):  chain u64 BE, digest u64 BE, time_ms u64 BE, records u64 BE
 *              tag 1 (items):   the `items` record under that key, as of seq
 *              tag 2 (network): the `network` record under that key, as of seq
 *   history  type code u8 + id u64 BE + seq u64 BE -> empty: the item has a version at seq
 *   audit    "every" | "ckpt_last" | "history_seq" | "history_chain" -> u64 BE
 *
 * Invariants:
 *   1. A checkpoint at S holds exactly the engine's state (items, network) after event S; its
 *      header's digest equals cs_engine_digest of that state and its chain the log's chain at S.
 *   2. Checkpoints are at multiples of `every`; ckpt_last is the greatest, 0 when none.
 *   3. `history` holds one key per put/delete event of seqs 1..history_seq, and history_chain
 *      is the log's chain at history_seq, so a log changed under the index is noticed.
 */
#ifndef CS_AUDIT_INT_H
#define CS_AUDIT_INT_H

#include "projections/projection_int.h"

#define CS__AUDIT_ERRMSG_BYTES 512

/* ckpt key tags: the header sorts first, then the items, then the network, as digested. */
#define CS__CKPT_TAG_HEADER 0u
#define CS__CKPT_TAG_ITEMS 1u
#define CS__CKPT_TAG_NETWORK 2u
#define CS__CKPT_HEADER_BYTES 32u
/* A ckpt key: seq, tag, then a state key (items keys are 9 bytes, network keys at most 13). */
#define CS__CKPT_KEY_BYTES_MAX 64u

struct cs_audit {
    cs_engine *e; /* borrowed: the audited directory */
    cs_log *log;  /* borrowed: e's */
    MDB_dbi ckpt;
    MDB_dbi history;
    MDB_dbi meta;
    bool branch_dir; /* the directory is (or was) a branch: its own log holds only local writes */
    cs_progress progress; /* events replayed by checkpoint builds and verification */
    bool read_only;  /* CS_AUDIT_READ_ONLY: nothing is written; absent databases are 0 */
    char errmsg[CS__AUDIT_ERRMSG_BYTES];
};

/* A checkpoint's header (the tag 0 value). */
typedef struct cs__ckpt_header {
    uint64_t seq;
    uint64_t chain;
    uint64_t digest;
    uint64_t time_ms;
    uint64_t records;
} cs__ckpt_header;

/* A rebuilt past state: a scratch directory (removed when freed) holding either an engine (the
 * audited directory's own state) or a branch (what a branch should hold). */
struct cs_audit_state {
    char dir[256];
    cs_engine *e; /* owned when the state is an engine's; else b's */
    cs_branch *b; /* owned when the state is a branch's */
    const cs_type *only;
    cs_audit_state_info info;
};

/* ---- audit_handle.c ---------------------------------------------------------------------- */

cs_err cs__audit_fail(cs_audit *a, cs_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Begins a read snapshot of log's environment (the audited directory's or a scratch state's)
 * through cs_log_read_begin, which adopts a map another process grew; on failure a->errmsg
 * holds cs_log_errmsg's sentence. End it with cs_log_read_end(log, txn). */
cs_err cs__audit_read_begin(cs_audit *a, cs_log *log, MDB_txn **txn);

uint64_t cs__audit_meta_get(MDB_txn *txn, MDB_dbi meta, const char *key);
cs_err cs__audit_meta_put(cs_log_txn *txn, MDB_dbi meta, const char *key, uint64_t v);

/* The head of the log and, when seq != 0, the chain and time of event seq (one short reader,
 * closed before returning so the caller may open LMDB transactions on the same environment). */
cs_err cs__audit_log_point(cs_audit *a, uint64_t seq, uint64_t *head, uint64_t *chain,
                           uint64_t *time_ms);

/* A type's name for reports: "service", or "type 77" for an unknown code (static buffer-free:
 * writes into buf). */
const char *cs__audit_type_name(uint8_t code, char *buf, size_t len);

/* ---- audit.c ----------------------------------------------------------------------------- */

/* Makes an empty scratch directory and opens an engine (branch_shop == 0) or a branch bound to
 * branch_shop in it, without fsync (it is thrown away). Free with cs_audit_state_free. */
cs_err cs__audit_scratch(cs_audit *a, uint64_t branch_shop, cs_audit_state **out);

/* Packs a branch item's fields with every reference to one of the branch's copies translated
 * back to the head-office id of its origin (copies are compared and shown by origin). */
cs_err cs__audit_unmap_fields(MDB_txn *t, MDB_dbi items, const cs_type *type,
                              const msgpack_object *fields, msgpack_sbuffer *out);

/* Reads checkpoint header `seq`; CS_NOT_FOUND when there is none. */
cs_err cs__ckpt_header_get(MDB_txn *txn, MDB_dbi ckpt, uint64_t seq, cs__ckpt_header *out);
/* The digest cs_engine_digest would give of the state a checkpoint stores, recomputed from its
 * records (so a damaged checkpoint is noticed). */
cs_err cs__ckpt_content_digest(MDB_txn *txn, MDB_dbi ckpt, uint64_t seq, uint64_t *out);

/* ---- audit_history.c --------------------------------------------------------------------- */

/* Brings the history index up to the log's head (a scan of the events it has not seen).
 * Errors: CS_CORRUPT (the log no longer matches the index), storage errors. */
cs_err cs__history_extend(cs_audit *a);

/* Appends to `changes` one {"field","op","old"?,"new"?} object per field of t (schema order)
 * that differs between old and new (JSON objects of fields; old may be NULL: all added).
 * op is "added", "changed" or "removed". Errors: CS_NO_MEMORY. */
cs_err cs__audit_diff(const cs_type *t, const json_t *old, const json_t *new, json_t *changes);

/* ---- snapshot.c: the base a cut log is replayed from -------------------------------------- */

typedef struct cs__audit_base_info {
    uint64_t start;   /* the log's first event; 0 when it was never cut */
    uint64_t seq;     /* the snapshot's position (>= start - 1); 0 when never cut */
    uint64_t chain;   /* the log's chain at seq */
    uint64_t time_ms; /* event seq's time */
} cs__audit_base_info;

/* Where replays of this log begin: nothing (all zero) for a log never cut, else its snapshot.
 * Errors: CS_CORRUPT (a cut log without a snapshot that verifies), storage errors. */
cs_err cs__audit_base(cs_audit *a, cs__audit_base_info *out);
/* Loads the snapshot into an empty scratch state: the head office's state for an engine
 * scratch, the part of `shop` (or the ANY part) for a branch scratch. */
cs_err cs__audit_base_load(cs_audit *a, cs_audit_state *s, uint64_t shop);
/* Feeds the log to a scratch branch up to seq: from its snapshot part when the log was cut. */
cs_err cs__audit_branch_feed(cs_audit *a, cs_audit_state *s, uint64_t shop, uint64_t seq);

#endif
