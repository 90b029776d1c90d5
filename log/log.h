/*
 * log.h: the public contract of chainsync's bottom layer, the append-only event log.
 *
 * It owns: the error codes every layer returns (cs_err), the msgpack event encoding, the LMDB
 * environment of a data directory (the log lives in it beside whatever the engine or a branch
 * projection stores there), durable group-committed appends with XXH3 checksums and a hash
 * chain, readers, and the segment framing the server sends. The byte layouts are in
 * docs/storage.md; keep the two in step.
 *
 * Memory: every function says whether what it hands out is *borrowed* (valid until a named
 * event), *owned by the caller* (freed with the named function), or *transferred*.
 * Threads: a cs_log and everything opened from it are used from one thread at a time.
 */
#ifndef CS_LOG_H
#define CS_LOG_H

#include <lmdb.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <xxhash.h>

/* ---- errors ------------------------------------------------------------------------------ */

/* Every code with its stable product name (SPEC section 6). Names never change once released;
 * add new codes at the end. */
#define CS_ERRORS(X)                                                                               \
    X(CS_OK, "ok")                                                                                 \
    X(CS_INVALID_INPUT, "invalid_input")                                                           \
    X(CS_UNKNOWN_TYPE, "unknown_type")                                                             \
    X(CS_NOT_FOUND, "not_found")                                                                   \
    X(CS_DANGLING_REFERENCE, "dangling_reference")                                                 \
    X(CS_READ_ONLY_COPY, "read_only_copy")                                                         \
    X(CS_FORBIDDEN, "forbidden")                                                                   \
    X(CS_VERSION_CONFLICT, "version_conflict")                                                     \
    X(CS_NOT_IN_NETWORK, "not_in_network")                                                         \
    X(CS_AUTH_FAILED, "auth_failed")                                                               \
    X(CS_PROTOCOL_MISMATCH, "protocol_mismatch")                                                   \
    X(CS_STORAGE_FULL, "storage_full")                                                             \
    X(CS_CORRUPT, "corrupt")                                                                       \
    X(CS_NO_MEMORY, "out_of_memory")                                                               \
    X(CS_IO, "io_error")                                                                           \
    X(CS_NETWORK, "network_error")                                                                 \
    X(CS_USAGE, "usage")

typedef enum cs_err {
#define CS_ERR_ENUM(code, name) code,
    CS_ERRORS(CS_ERR_ENUM)
#undef CS_ERR_ENUM
        CS_ERR_COUNT
} cs_err;

/* The stable name of a code ("corrupt"); "unknown" for a value outside the list. Static. */
const char *cs_err_name(cs_err err);

/* The code whose stable name is name[0..len) (a code read from the wire); CS_ERR_COUNT when
 * there is none. */
cs_err cs_err_from_name(const char *name, size_t len);

/* SPEC section 6 exit codes: 1 usage, 2 refused by a rule or validation, 3 storage, 4 network. */
int cs_err_exit_code(cs_err err);

/* Our own mistakes abort with a message; the world's get a cs_err (STYLE). */
#if CS_ASSERTS
#define cs_assert(cond) ((cond) ? (void)0 : cs__assert_fail(#cond, __FILE__, __LINE__))
#else
#define cs_assert(cond) ((void)0)
#endif
void cs__assert_fail(const char *cond, const char *file, int line) __attribute__((noreturn));

/* Formats a failure's sentence into buf[0..len) (cut to fit; NUL-terminated when len > 0) and
 * returns err: the one body of every module's `*_fail` helper, which passes its own errmsg
 * buffer. */
cs_err cs_errmsg_vformat(char *buf, size_t len, cs_err err, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
cs_err cs_errmsg_format(char *buf, size_t len, cs_err err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Ends a CS_CORRUPT's sentence with the check that failed, " [reader.c:187]", as SQLite's
 * SQLITE_CORRUPT_BKPT names its line: a field report then leads to the one check that refused
 * the bytes. A string literal, for concatenation with the format:
 *     return reader_fail(r, CS_CORRUPT, "event %llu: checksum mismatch" CS_CORRUPT_AT, seq);
 * Sentences keep their words before it; tests and tools match on those. */
#define CS__STR2(x) #x
#define CS__STR(x) CS__STR2(x)
#ifdef __FILE_NAME__
#define CS_CORRUPT_AT " [" __FILE_NAME__ ":" CS__STR(__LINE__) "]"
#else
#define CS_CORRUPT_AT " [" __FILE__ ":" CS__STR(__LINE__) "]"
#endif

/* ---- big-endian integers ----------------------------------------------------------------- */

/* Every key and integer chainsync stores or sends is big-endian, so LMDB's byte order is the
 * numeric order (docs/storage.md). The one set of helpers every layer uses; p holds at least 8
 * (or 4) bytes. */
static inline void cs_be64_put(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static inline uint64_t cs_be64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static inline void cs_be32_put(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t cs_be32_get(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void cs_be16_put(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline uint16_t cs_be16_get(const uint8_t *p)
{
    return (uint16_t)(((unsigned)p[0] << 8) | p[1]);
}

/* ---- limits ------------------------------------------------------------------------------ */

/* One event, encoded. A catalog item is a few hundred bytes; 256 KiB leaves room for long
 * notification bodies while bounding what one bad event can make a reader allocate. */
#define CS_EVENT_BYTES_MAX (256u * 1024u)
/* actor, kind and type strings: names, not payloads. */
#define CS_EVENT_STR_BYTES_MAX 255u
/* msgpack nesting accepted from disk or the wire: items are a map of lists of maps at most. */
#define CS_MSGPACK_DEPTH_MAX 16u
/* Events in one append call: a group commit larger than this only adds latency. */
#define CS_LOG_BATCH_EVENTS_MAX 65536u
/* A segment is the unit written to a branch socket and kept in the server's send queue. */
#define CS_SEGMENT_BYTES_MAX (8u * 1024u * 1024u)
#define CS_SEGMENT_EVENTS_MAX 65536u
#define CS_SEGMENT_HEADER_BYTES 40u
/* The header bytes the segment checksum covers: all of them before the checksum itself. */
#define CS_SEGMENT_HEADER_SUMMED_BYTES 32u
/* Each record of a segment body is prefixed by its value's size, a u32. */
#define CS_SEGMENT_RECORD_PREFIX_BYTES 4u
/* Stored value = 8-byte checksum + 8-byte chain + the msgpack event. */
#define CS_RECORD_HEADER_BYTES 16u
/* The smallest stored value: the header and a one-byte msgpack event. */
#define CS_RECORD_BYTES_MIN (CS_RECORD_HEADER_BYTES + 1u)
/* The smallest segment: a header and one record, the least cs_segment_encode accepts. */
#define CS_SEGMENT_BYTES_MIN                                                                       \
    (CS_SEGMENT_HEADER_BYTES + CS_SEGMENT_RECORD_PREFIX_BYTES + CS_RECORD_BYTES_MIN)
/* Named LMDB databases in one data directory (mdb_env_set_maxdbs): the log's three (events,
 * times, meta) and those the engine and a branch projection keep beside them, with room for
 * the modules to add some without a format change. */
#define CS_LOG_DBS_MAX 32u
/* The map starts small and doubles on MDB_MAP_FULL up to the maximum (then storage_full). */
#define CS_LOG_MAP_BYTES_DEFAULT ((size_t)64 * 1024 * 1024)
#define CS_LOG_MAP_BYTES_MAX_DEFAULT ((size_t)1 << 40)

_Static_assert(CS_EVENT_BYTES_MAX + CS_RECORD_HEADER_BYTES + CS_SEGMENT_RECORD_PREFIX_BYTES <=
                   CS_SEGMENT_BYTES_MAX - CS_SEGMENT_HEADER_BYTES,
               "a segment must hold at least one event of the largest size");
_Static_assert(CS_SEGMENT_HEADER_SUMMED_BYTES + 8u == CS_SEGMENT_HEADER_BYTES,
               "the segment checksum (u64) ends the header and covers everything before it");
_Static_assert(CS_SEGMENT_BYTES_MIN <= CS_SEGMENT_BYTES_MAX, "one record fits a segment");
_Static_assert(CS_EVENT_BYTES_MAX <= UINT32_MAX - CS_RECORD_HEADER_BYTES,
               "a record's size fits its u32 prefix");
_Static_assert(CS_LOG_DBS_MAX > 3u, "room beside the log's own events, times and meta");
_Static_assert(CS_LOG_BATCH_EVENTS_MAX <= CS_SEGMENT_EVENTS_MAX, "batch fits the segment count");

/* ---- events ------------------------------------------------------------------------------ */

/* A byte string that is not NUL-terminated unless said otherwise. Borrowed. */
typedef struct cs_str {
    const char *ptr;
    size_t len;
} cs_str;

#define CS_STR(lit) ((cs_str){(lit), sizeof(lit) - 1})

/* What a caller appends. Everything is borrowed for the duration of the append call. */
typedef struct cs_event {
    uint64_t time_ms; /* ms since the Unix epoch; 0 = now. Clamped to >= the previous event's. */
    uint64_t shop;    /* the shop whose command caused the event */
    uint64_t id;      /* the item (or shop) the event is about; 0 when none */
    uint64_t version; /* the item's version after the event; 0 when none */
    cs_str actor;     /* who: a user or process name, <= CS_EVENT_STR_BYTES_MAX */
    cs_str kind;      /* what happened: "put", "delete", "link", ... (engine's vocabulary) */
    cs_str type;      /* the item's type name, or empty */
    const uint8_t *fields; /* one msgpack map (the item's full fields); NULL = empty map */
    size_t fields_len;
    /* The version of the engine's schema the event was written with (issue 14; the log only
     * carries it): 0 and 1 both mean version 1, which is left out of the bytes. */
    uint32_t schema;
} cs_event;

/* A decoded event. Strings point into the bytes given to cs_event_decode; `fields` lives in
 * the decoder's zone. Borrowed: valid until the next decode on the same decoder, its free, or
 * the end of the bytes' own lifetime, whichever comes first. */
typedef struct cs_event_view {
    uint64_t seq;
    uint64_t time_ms;
    uint64_t shop;
    uint64_t id;
    uint64_t version;
    cs_str actor;
    cs_str kind;
    cs_str type;
    msgpack_object fields;       /* MSGPACK_OBJECT_MAP */
    const uint8_t *fields_bytes; /* the same map as it is encoded in the event: borrowed */
    size_t fields_len;
    uint64_t schema; /* the schema version it was written with, >= 1: 1 when the key is absent */
} cs_event_view;

typedef struct cs_event_decoder cs_event_decoder;

/* Owned by the caller; free with cs_event_decoder_free. Errors: CS_NO_MEMORY. */
cs_err cs_event_decoder_new(cs_event_decoder **out);
void cs_event_decoder_free(cs_event_decoder *dec); /* accepts NULL */

/* Decodes one event. Errors: CS_CORRUPT (not msgpack, a container longer than the input,
 * too deep, a missing or wrongly-typed key, a `schema` that is not a positive integer, trailing
 * bytes), CS_NO_MEMORY. A schema version newer than the reader knows is not the log's concern:
 * the engine and the projection refuse it (protocol_mismatch). */
cs_err cs_event_decode(cs_event_decoder *dec, const uint8_t *buf, size_t len, cs_event_view *out);
/* The same checks, but `fields` is left undecoded: out->fields is an empty map (nil when the
 * value is not a map, which cs_event_decode refuses: so is it here) and only fields_bytes /
 * fields_len hold it. For a branch applying catalog events, which stores those bytes as they
 * are and decodes them only at a sync point, once per item and transaction. */
cs_err cs_event_decode_lazy(cs_event_decoder *dec, const uint8_t *buf, size_t len,
                            cs_event_view *out);
/* After cs_event_decode returned CS_CORRUPT: the check that refused the bytes (CS_CORRUPT_AT,
 * static), for the caller's sentence; "" when the last decode did not fail so. */
const char *cs_event_decoder_corrupt_at(const cs_event_decoder *dec);

/* Checks that buf starts with one well-formed msgpack value whose every container length fits
 * the remaining input and whose nesting is <= depth_max, before msgpack-c is allowed to
 * allocate for it (SPEC 4: its unpacker trusts lengths), whose every str is well-formed UTF-8
 * and whose every ext of type -1 is a valid timestamp (the msgpack spec's rules, which strict
 * readers enforce). Sets *value_len to the value's size. Errors: CS_CORRUPT. */
cs_err cs_msgpack_check(const uint8_t *buf, size_t len, unsigned depth_max, size_t *value_len);
/* The length of the longest prefix of s[0..len) that is well-formed UTF-8 (no overlongs, no
 * surrogates, at most U+10FFFF): where to cut a message so that it stays a msgpack str. */
size_t cs_utf8_prefix(const char *s, size_t len);
/* Where to cut s[0..len), a text cut at len by a fixed-size buffer, so that it does not end
 * inside a character: len, or the start of a last character that len cut. */
size_t cs_utf8_cut(const char *s, size_t len);

/* ---- the log ----------------------------------------------------------------------------- */

typedef struct cs_log cs_log;
typedef struct cs_log_txn cs_log_txn;
typedef struct cs_log_reader cs_log_reader;

/* Flags for cs_log_options.flags. */
#define CS_LOG_NOSYNC 0x1u /* MDB_NOSYNC: benchmarks only; may lose commits on power loss */
/* MDB_RDONLY: nothing is created or written (every write fails with CS_IO, cs_log_dbi_open
 * only finds existing databases): `audit verify` reads the store it checks this way. */
#define CS_LOG_READ_ONLY 0x2u

typedef struct cs_log_options {
    size_t map_bytes;     /* initial map size; 0 = CS_LOG_MAP_BYTES_DEFAULT */
    size_t map_bytes_max; /* growth stops here, then storage_full; 0 = default */
    unsigned flags;
} cs_log_options;

/* Opens (creating if needed) the data directory `dir` as an LMDB environment. A process must
 * open a given directory once (LMDB's rule). opts may be NULL. Owned by the caller: close with
 * cs_log_close. Errors: CS_IO (cannot create or open), CS_CORRUPT (not a chainsync directory
 * or a newer format), CS_NO_MEMORY. */
cs_err cs_log_open(const char *dir, const cs_log_options *opts, cs_log **out);
/* As cs_log_open; on failure why[0..why_bytes) gets the sentence (no handle is left to ask). */
cs_err cs_log_open_why(const char *dir, const cs_log_options *opts, cs_log **out, char *why,
                       size_t why_bytes);
void cs_log_close(cs_log *log); /* accepts NULL; all readers must be closed first */

/* The last error's sentence for this handle ("event 17: checksum mismatch"). Borrowed until
 * the next call on the handle. Empty when there is nothing to add to the code's name. */
const char *cs_log_errmsg(const cs_log *log);

/* The LMDB environment, for modules above that keep their own databases in the same data
 * directory and commit them with log events (SPEC 4: a command and its events commit in one
 * transaction). Borrowed for the log's lifetime. Do not resize it or open WRITEMAP. */
MDB_env *cs_log_env(cs_log *log);

/* Opens (creating) a named database in the environment for a module above. Must not run
 * inside a transaction. With CS_LOG_READ_ONLY, as cs_log_dbi_find (CS_NOT_FOUND when it is not
 * there). Errors: CS_IO, CS_STORAGE_FULL. */
cs_err cs_log_dbi_open(cs_log *log, const char *name, unsigned mdb_flags, MDB_dbi *out);
/* Opens an existing named database without writing anything (a read transaction): for a
 * reader that must not change the directory it reads (`audit verify`). Must not run inside a
 * transaction. Errors: CS_NOT_FOUND (no such database), CS_IO, CS_CORRUPT. */
cs_err cs_log_dbi_find(cs_log *log, const char *name, MDB_dbi *out);

/* Runs fn inside one write transaction and commits it durably when fn returns CS_OK; any
 * other code aborts the transaction and is returned. When LMDB's map fills, the transaction is
 * aborted, the map doubled, and fn run again from the start: fn must therefore touch nothing
 * outside the transaction, or undo it, before it returns. Fails with CS_STORAGE_FULL once the
 * maximum map size is reached, with nothing written. Errors: whatever fn returns, CS_IO,
 * CS_STORAGE_FULL, CS_CORRUPT (the log's tail does not verify). */
typedef cs_err (*cs_log_write_fn)(cs_log_txn *txn, void *ctx);
cs_err cs_log_write(cs_log *log, cs_log_write_fn fn, void *ctx);

/* Inside cs_log_write: appends n events in order, assigning sequence numbers (from 1, no gaps)
 * and times; *first_seq_out (may be NULL) gets the first one assigned. Errors:
 * CS_INVALID_INPUT (an event over a limit or fields that are not one msgpack map; nothing of
 * the batch is appended), CS_STORAGE_FULL, CS_IO. After any error the transaction is failed:
 * every later call on it returns the same error and cs_log_write aborts it. */
cs_err cs_log_txn_append(cs_log_txn *txn, const cs_event *events, size_t n,
                         uint64_t *first_seq_out);

/* Inside cs_log_write: the LMDB transaction, borrowed until fn returns, for the caller's own
 * databases. Put through cs_log_txn_put so a full map is recognised and retried. */
MDB_txn *cs_log_txn_mdb(cs_log_txn *txn);
cs_err cs_log_txn_put(cs_log_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *val, unsigned flags);
cs_err cs_log_txn_del(cs_log_txn *txn, MDB_dbi dbi, MDB_val *key);
/* The sequence the next appended event will get (head + 1 before any append in this txn). */
uint64_t cs_log_txn_next_seq(cs_log_txn *txn);

/* ---- retention (cut.c; docs/design.md "Retention and snapshots") ---------------------- */

/* Where the log starts. A log that was never cut starts at 1; after a cut it starts at `seq`
 * and the events before it are gone, but the chain continues from `chain_before` (the chain of
 * event seq - 1) and `log_id` (the chain of event 1, the log's name in the handshake) is kept. */
typedef struct cs_log_start {
    uint64_t seq;          /* the first sequence the log holds */
    uint64_t chain_before; /* the chain of event seq - 1 (0 when seq is 1) */
    uint64_t log_id;       /* the chain of event 1; 0 for an empty log */
    bool cut;              /* a cut was recorded (seq >= 2) */
} cs_log_start;

/* Events deleted per transaction by cs_log_trim: small enough that another process's write
 * waits for one such transaction only briefly, large enough to amortise the commit. */
#define CS_LOG_TRIM_EVENTS_MAX 10000u

/* Inside cs_log_write: records that the log now starts at `before` (the caller has made sure a
 * snapshot of the state at before - 1 exists). Nothing is deleted yet: cs_log_trim does that,
 * afterwards. A cut at the current start changes nothing. Errors: CS_INVALID_INPUT (before < 2,
 * past the head, or below the current start), CS_CORRUPT, CS_IO. */
cs_err cs_log_txn_cut(cs_log_txn *txn, uint64_t before);
/* Deletes the events below the start (and time-index entries naming only them), in
 * transactions of at most CS_LOG_TRIM_EVENTS_MAX events, each through cs_log_write so that
 * other processes read and write beside it. Resumes a trim a crash interrupted. *deleted_out
 * (may be NULL) gets the events deleted. Errors: as cs_log_write. */
cs_err cs_log_trim(cs_log *log, uint64_t *deleted_out);

/* Convenience: one cs_log_write that appends the batch. *first_seq_out may be NULL. */
cs_err cs_log_append(cs_log *log, const cs_event *events, size_t n, uint64_t *first_seq_out);

/* ---- reading ----------------------------------------------------------------------------- */

/* Begins an LMDB read transaction on the log's environment: the one place every layer starts a
 * read. When another process's data has outgrown this process's map (MDB_MAP_RESIZED) the new
 * size is adopted (mdb_env_set_mapsize(env, 0)) and the begin retried; that is legal only while
 * this process has no transaction open, so with one open the begin fails with CS_IO instead.
 * While it is open the map cannot grow or be adopted in this process, so keep it short in a
 * process that also writes. End it with cs_log_read_end (never with mdb_txn_abort). *out is
 * borrowed until then and untouched on failure. Errors: CS_IO, CS_NO_MEMORY, each with
 * cs_log_errmsg saying why. */
cs_err cs_log_read_begin(cs_log *log, MDB_txn **out);
void cs_log_read_end(cs_log *log, MDB_txn *txn); /* accepts NULL */

/* One stored event. `event` points into LMDB's map: borrowed until the next call on the
 * reader or its close. The checksum was verified before the record was handed out. */
typedef struct cs_log_record {
    uint64_t seq;
    uint64_t checksum; /* XXH3_64bits_withSeed(event, event_len, seq) */
    uint64_t chain;    /* cs_log_chain(previous record's chain, checksum); 0 before seq 1 */
    const uint8_t *event;
    size_t event_len;
} cs_log_record;

/* A reader is a consistent snapshot (an LMDB read transaction) of the log. Owned by the
 * caller; close with cs_log_reader_close. While any reader is open the map cannot grow, so
 * keep readers short in a process that also writes. Begins through cs_log_read_begin. Errors:
 * CS_IO, CS_NO_MEMORY; there is no reader then, and cs_log_errmsg(log) says why. */
cs_err cs_log_reader_open(cs_log *log, cs_log_reader **out);
void cs_log_reader_close(cs_log_reader *r); /* accepts NULL */
const char *cs_log_reader_errmsg(const cs_log_reader *r);

/* The last sequence in the snapshot, 0 when the log is empty. Errors: CS_CORRUPT, CS_IO. */
cs_err cs_log_reader_head(cs_log_reader *r, uint64_t *seq_out);
/* Errors: CS_NOT_FOUND, CS_CORRUPT (bad checksum or record shape; errmsg names seq), CS_IO. */
cs_err cs_log_reader_get(cs_log_reader *r, uint64_t seq, cs_log_record *out);
/* Positions the reader so that the next cs_log_reader_next returns the first seq >= from
 * (and >= the log's start: a cut log never hands out a record below it). */
cs_err cs_log_reader_seek(cs_log_reader *r, uint64_t from);
/* The next record; CS_NOT_FOUND past the end. Also CS_CORRUPT when a record does not verify
 * or the sequence jumps (a lost event). */
cs_err cs_log_reader_next(cs_log_reader *r, cs_log_record *out);
/* The first sequence whose time is >= time_ms; CS_NOT_FOUND when every event is older. */
cs_err cs_log_reader_seq_at_time(cs_log_reader *r, uint64_t time_ms, uint64_t *seq_out);
/* Where the log starts, as of the reader's snapshot (never fails today; a cs_err for later). */
cs_err cs_log_reader_start(cs_log_reader *r, cs_log_start *out);
/* The chain value at seq: 0 for 0, the start's chain_before for start - 1, the record's chain
 * otherwise. Errors: CS_NOT_FOUND (cut away, or past the head), CS_CORRUPT, CS_IO. */
cs_err cs_log_reader_chain_at(cs_log_reader *r, uint64_t seq, uint64_t *chain_out);
/* Walks the whole log: sequences from its start without gaps, every checksum, the whole chain, and each
 * event's own seq field. CS_OK, or CS_CORRUPT with *bad_seq_out = the first bad sequence. */
cs_err cs_log_reader_verify(cs_log_reader *r, uint64_t *bad_seq_out);

/* The chain step: XXH3_64bits of (prev_chain, checksum), both as 8 big-endian bytes. */
uint64_t cs_log_chain(uint64_t prev_chain, uint64_t checksum);
/* Adds one key/value pair to a digest of LMDB databases: the key's and the value's lengths as
 * 8 big-endian bytes each, then the key, then the value (docs/storage.md). Every state digest
 * (engine, branch, audit checkpoints) is built from these, so digests compare across hosts. */
void cs_digest_kv(XXH3_state_t *st, const MDB_val *k, const MDB_val *v);

/* The stored checksum of an event's bytes at a sequence. */
uint64_t cs_log_checksum(const uint8_t *event, size_t len, uint64_t seq);

/* ---- segments ---------------------------------------------------------------------------- */

/* Encodes the records from `first` up to `last_max` (inclusive) into one segment, stopping
 * early so that it stays under bytes_max (but always holding at least one record). *out is
 * owned by the caller (free()); *last_out gets the last sequence included. Errors:
 * CS_NOT_FOUND (first is past the head), CS_INVALID_INPUT (bytes_max too small), CS_CORRUPT,
 * CS_NO_MEMORY, CS_IO. */
cs_err cs_segment_encode(cs_log_reader *r, uint64_t first, uint64_t last_max, size_t bytes_max,
                         uint8_t **out, size_t *out_len, uint64_t *last_out);

/* A decoded segment; borrows the bytes given to cs_segment_open. */
typedef struct cs_segment_view {
    uint64_t first;
    uint64_t last;
    uint32_t count;
    const uint8_t *body;
    size_t body_len;
    size_t pos;            /* iteration state: next record's offset in body */
    uint64_t next_seq;     /* iteration state */
    uint64_t prev_chain;   /* chain of the record before `next_seq` ... */
    bool prev_chain_known; /* ... when set: the caller may set both after cs_segment_open */
    /* After CS_CORRUPT from cs_segment_open or cs_segment_next: the check that refused the
     * bytes (a check name and CS_CORRUPT_AT, static), for the caller's sentence. "" otherwise.
     * The one field cs_segment_open sets when it fails. */
    const char *corrupt_at;
} cs_segment_view;

/* Verifies a segment's header and whole-segment checksum. len must be exactly the segment's
 * size. Errors: CS_CORRUPT (bad magic, version, lengths or checksum), CS_PROTOCOL_MISMATCH
 * (a newer segment format). */
cs_err cs_segment_open(const uint8_t *buf, size_t len, cs_segment_view *out);
/* The next record; CS_NOT_FOUND after the last. Each record's checksum is verified, and its
 * chain against the previous record's (and against prev_chain for the first, when the caller
 * set prev_chain_known after cs_segment_open). Errors: CS_CORRUPT. */
cs_err cs_segment_next(cs_segment_view *v, cs_log_record *out);
/* The size of a segment from its header's first CS_SEGMENT_HEADER_BYTES bytes, for framing.
 * Errors: CS_CORRUPT, CS_PROTOCOL_MISMATCH. */
cs_err cs_segment_size(const uint8_t *header, size_t len, size_t *size_out);

#endif
