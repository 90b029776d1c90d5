/*
 * log_int.h: what the files of the log module share and nobody else may use: the handle
 * structs and the helpers of record.c (the record format), map.c (the map size) and err.c
 * (failure sentences). The byte layouts are in docs/storage.md, "events"; the big-endian
 * helpers are public (log.h), for every layer.
 *
 * Files, each calling only those below it:
 *   err.c, event.c  <  record.c, map.c  <  reader.c, store.c  <  segment.c
 */
#ifndef CS_LOG_INT_H
#define CS_LOG_INT_H

#include "log/log.h"

#include <stdio.h>

#define CS__LOG_FORMAT_VERSION 1u
#define CS__ERRMSG_BYTES 256

struct cs_log {
    MDB_env *env;
    MDB_dbi events;   /* seq (u64 BE) -> checksum u64 BE, chain u64 BE, msgpack event */
    MDB_dbi times;    /* time_ms (u64 BE) -> first seq (u64 BE) with that time */
    MDB_dbi meta;     /* "format" -> u32 BE */
    size_t map_bytes; /* this process's map size: LMDB's me_mapsize after every resize */
    size_t map_bytes_max;
    unsigned flags;
    unsigned readers_open; /* the map may grow or be adopted only while this is 0 */
    bool in_write;
    bool map_lost;    /* a resize unmapped the old map and could not map the new: refuse all */
    uint8_t *scratch; /* owned: reused encode buffer for appends */
    size_t scratch_cap;
    char errmsg[CS__ERRMSG_BYTES];
};

struct cs_log_txn {
    cs_log *log;
    MDB_txn *txn;
    cs_err failed; /* CS_OK while usable; the first error otherwise */
    bool map_full; /* the failure was MDB_MAP_FULL: cs_log_write grows and retries */
    bool tail_loaded;
    bool appended;     /* events were appended: the commit records the new head in `meta` */
    uint64_t tail_seq; /* the log's last sequence when the tail was loaded, 0 when empty */
    uint64_t next_seq;
    uint64_t last_chain;
    uint64_t last_time_ms;
};

struct cs_log_reader {
    cs_log *log;
    MDB_txn *txn;
    MDB_cursor *cur;
    bool positioned;     /* the cursor sits on the record last returned */
    uint64_t from;       /* where the next un-positioned call starts */
    uint64_t expect_seq; /* the sequence the next record must have, 0 = any */
    uint64_t prev_chain;
    bool prev_chain_known;
    uint64_t bad_seq; /* the sequence the last CS_CORRUPT was about */
    cs_log_start start; /* where the log starts in this snapshot (cut.c) */
    char errmsg[CS__ERRMSG_BYTES];
};

/* meta "head": the last sequence and its chain as of the last commit, 16 bytes BE; what makes
 * a lost tail visible (docs/storage.md, "the meta database"). */
#define CS__META_HEAD_KEY "head"
/* meta "start": where a cut log starts (cut.c, docs/storage.md "the meta database"). */
#define CS__META_START_KEY "start"

/* The log's start as of txn (cut.c): {1, 0, chain of event 1, false} for a log never cut.
 * Errors: CS_CORRUPT (a malformed record, with errmsg), CS_IO. */
cs_err cs__start_get(MDB_txn *txn, cs_log *log, cs_log_start *out);

/* Compares the log's last sequence and chain with the recorded head. CS_OK when they agree or
 * no head was recorded; CS_CORRUPT with *bad_seq (the first missing or differing sequence) and
 * a sentence in msg otherwise; CS_IO when `meta` cannot be read. */
cs_err cs__head_check(MDB_txn *txn, MDB_dbi meta, uint64_t last_seq, uint64_t last_chain,
                      uint64_t *bad_seq, char *msg, size_t msg_len);

/* Sets log->errmsg (cs_errmsg_format) and returns err. */
cs_err cs__log_fail(cs_log *log, cs_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* CS_OK while the environment is mapped; CS_IO with a sentence once a resize lost the map. */
cs_err cs__map_check(cs_log *log);

/* Adopts the map size another process grew the environment to, after LMDB refused a begin
 * with MDB_MAP_RESIZED (mdb_env_set_mapsize(env, 0)). Legal only with no transaction of this
 * process open: LMDB checks only for a write transaction, and unmapping under one of our read
 * snapshots would leave its pages dangling, so an open reader makes this CS_IO with a
 * sentence. Updates map_bytes. Errors: CS_IO, CS_NO_MEMORY (the map is then lost). */
cs_err cs__map_adopt(cs_log *log);

/* Resizes the map to `bytes` (0 = the size the file has now) and refreshes map_bytes. Legal
 * only with no transaction of this process open (asserted). A failure loses the map (every
 * later call is CS_IO): err, or CS_NO_MEMORY, with `what` and LMDB's reason in errmsg. */
cs_err cs__map_resize(cs_log *log, size_t bytes, cs_err err, const char *what);

/* Maps an LMDB return code to ours. */
cs_err cs__mdb_err(int rc);

/* Splits a stored value into a record and verifies its size and checksum. CS_OK, or
 * CS_CORRUPT with *why_out = the failed check's CS_CORRUPT_AT (static) and *out untouched. */
cs_err cs__record_parse(uint64_t seq, const uint8_t *val, size_t len, cs_log_record *out,
                        const char **why_out);

/* Encodes an event's envelope (with its seq and final time) as msgpack into buf (grown), up to
 * and including the key `fields`: the stored event is these bytes followed by the fields' own
 * msgpack bytes (an empty map when there are none). */
cs_err cs__event_encode_envelope(const cs_event *ev, uint64_t seq, uint64_t time_ms, uint8_t **buf,
                                 size_t *cap, size_t *len_out);

/* Validates an event's caller-supplied parts against the limits and msgpack's rules; *why gets
 * the sentence of a refusal (static). */
cs_err cs__event_check(const cs_event *ev, const char **why);

#endif
