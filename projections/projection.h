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
 * it is. Errors: CS_INVALID_INPUT (it is another branch), CS_FORBIDDEN (it is a head office),
 * CS_NOT_IN_NETWORK (this branch was unlinked: it is a single store now). */
cs_err cs_branch_bind(cs_branch *b, uint64_t shop);

typedef struct cs_branch_state {
    uint64_t shop;     /* this branch's id, 0 before bind */
    uint64_t head;     /* the head office's shop id, 0 before the network event */
    uint64_t cursor;   /* last applied sequence */
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

/* Applies every segment of a file written by cs_export_file, one transaction per segment.
 * *applied_out gets the events applied. Errors: as cs_branch_apply_segment, CS_IO. */
cs_err cs_branch_import_file(cs_branch *b, const char *path, uint64_t *applied_out);

/* XXH3 of the branch's catalog and projection state (items, origin index, mirror, dirty set,
 * cursor): equal digests mean byte-identical branches. */
cs_err cs_branch_digest(cs_branch *b, uint64_t *out);

/* Writes the log's events from `from` to the head as segments into `path` (replaced
 * atomically, fsynced). *events_out gets how many. Errors: CS_NOT_FOUND (from is past the head),
 * CS_IO, log read errors. */
cs_err cs_export_file(cs_log *log, uint64_t from, const char *path, uint64_t *events_out);

/* Segments in an export file are at most this large: big enough to amortise a transaction,
 * small enough that an import holds one in memory at a time. */
#define CS_EXPORT_SEGMENT_BYTES (4u * 1024u * 1024u)
_Static_assert(CS_EXPORT_SEGMENT_BYTES <= CS_SEGMENT_BYTES_MAX, "export segments are segments");

#endif
