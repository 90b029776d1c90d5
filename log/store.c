/*
 * store.c: the LMDB environment of a data directory, and the write path: one write transaction
 * per cs_log_write, durable group-committed appends, the hash chain, the time index, and map
 * growth on MDB_MAP_FULL. The record format is record.c's, the map's resizing map.c's.
 *
 * Invariants (checked by cs_log_reader_verify, described in docs/storage.md):
 *   1. `events` holds sequences 1..head with no gap; a value is never changed once committed.
 *   2. value = checksum(8) chain(8) event; checksum and chain as record.c says.
 *   3. event times never decrease; `times` maps each distinct time to its first sequence.
 *   4. a write that fails leaves nothing: the transaction aborts whole (LMDB's atomicity), and a
 *      full map is grown only with no transaction of this process open (LMDB's rule).
 *   5. map_bytes is this process's map size as LMDB has it (mdb_env_info) after every resize:
 *      growing it, or adopting a size another process grew the file to (MDB_MAP_RESIZED), which
 *      cs__map_adopt (map.c) does for the read and the write path alike. Growth starts from
 *      that size, so it never shrinks a map another process made larger (docs/storage.md, "Map
 *      size across processes").
 *   6. a transaction (cs_log_txn) is usable or failed, and a failed one stays failed: every
 *      later call returns its first error and cs_log_write aborts it (LMDB's MDB_TXN_ERROR).
 *      Once its tail is loaded, next_seq - 1 is the log's last sequence in the transaction and
 *      last_chain that sequence's chain; `appended` is set exactly when next_seq moved past the
 *      tail read at load. txn_invariants_hold checks these at each boundary.
 */
#include "log/log_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

/* A write is retried after growth at most this often; doubling 40 times covers any map. */
#define WRITE_ATTEMPTS_MAX 48

/* ---- open / close ------------------------------------------------------------------------ */

static bool format_ours(const MDB_val *v)
{
    return v->mv_size == 4 && cs_be32_get(v->mv_data) == CS__LOG_FORMAT_VERSION;
}

/* Ends the transaction that opened the databases: committed when rc is 0, else aborted; a
 * stored format that is not ours is corrupt. */
static cs_err finish_open(cs_log *log, MDB_txn *txn, int rc, bool foreign, const char *what)
{
    if (foreign) {
        mdb_txn_abort(txn);
        return cs__log_fail(log, CS_CORRUPT,
                            "data directory has an unknown log format" CS_CORRUPT_AT);
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc)
        return cs__log_fail(log, cs__mdb_err(rc), "%s: %s", what, mdb_strerror(rc));
    return CS_OK;
}

/* CS_LOG_READ_ONLY: the log's databases must be there already; a read transaction, committed
 * so that its handles stay open (LMDB), creates and writes nothing. */
static cs_err open_dbis_read_only(cs_log *log)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(log->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return cs__log_fail(log, cs__mdb_err(rc), "begin: %s", mdb_strerror(rc));
    if ((rc = mdb_dbi_open(txn, "events", 0, &log->events)) ||
        (rc = mdb_dbi_open(txn, "times", 0, &log->times)) ||
        (rc = mdb_dbi_open(txn, "meta", 0, &log->meta))) {
        mdb_txn_abort(txn);
        if (rc == MDB_NOTFOUND)
            return cs__log_fail(log, CS_NOT_FOUND, "holds no chainsync log");
        return cs__log_fail(log, cs__mdb_err(rc), "open databases: %s", mdb_strerror(rc));
    }
    MDB_val k = {6, "format"}, v;
    rc = mdb_get(txn, log->meta, &k, &v);
    return finish_open(log, txn, rc, rc == 0 && !format_ours(&v), "read the log's format");
}

static cs_err open_dbis(cs_log *log)
{
    if (log->flags & CS_LOG_READ_ONLY)
        return open_dbis_read_only(log);
    MDB_txn *txn;
    int rc = mdb_txn_begin(log->env, NULL, 0, &txn);
    if (rc)
        return cs__log_fail(log, cs__mdb_err(rc), "begin: %s", mdb_strerror(rc));
    /* A directory without our `meta` database is new only if LMDB's main database is empty
     * too: anything else is another program's environment, not ours to take over. */
    MDB_dbi main_dbi;
    MDB_stat ms;
    if ((rc = mdb_dbi_open(txn, "meta", 0, &log->meta)) == MDB_NOTFOUND &&
        (rc = mdb_dbi_open(txn, NULL, 0, &main_dbi)) == 0 &&
        (rc = mdb_stat(txn, main_dbi, &ms)) == 0 && ms.ms_entries > 0) {
        mdb_txn_abort(txn);
        return cs__log_fail(log, CS_CORRUPT,
                            "not a chainsync data directory (another LMDB store)" CS_CORRUPT_AT);
    }
    if ((rc = mdb_dbi_open(txn, "events", MDB_CREATE, &log->events)) ||
        (rc = mdb_dbi_open(txn, "times", MDB_CREATE, &log->times)) ||
        (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &log->meta))) {
        mdb_txn_abort(txn);
        return cs__log_fail(log, cs__mdb_err(rc), "open databases: %s", mdb_strerror(rc));
    }
    MDB_val k = {6, "format"}, v;
    rc = mdb_get(txn, log->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        uint8_t fmt[4];
        cs_be32_put(fmt, CS__LOG_FORMAT_VERSION);
        v.mv_size = 4;
        v.mv_data = fmt;
        rc = mdb_put(txn, log->meta, &k, &v, 0);
        return finish_open(log, txn, rc, false, "initialise");
    }
    return finish_open(log, txn, rc, rc == 0 && !format_ours(&v), "initialise");
}

/* LMDB trusts its file: a data.mdb cut shorter than the pages its meta page says are in use
 * (a truncated copy, a full disk during a copy) maps pages past the end of the file, and the
 * first read of one kills the process with SIGBUS. Refuse it here, before any read. The meta
 * (info) is read before the file's size so that a commit by another process in between only
 * makes the file longer than what the meta asks for (LMDB writes pages before the meta). */
static cs_err file_covers_pages(cs_log *log, const MDB_envinfo *info)
{
    MDB_stat st;
    mdb_filehandle_t fd;
    struct stat fs;
    int rc = mdb_env_stat(log->env, &st);
    if (rc == 0)
        rc = mdb_env_get_fd(log->env, &fd);
    if (rc)
        return cs__log_fail(log, cs__mdb_err(rc), "env stat: %s", mdb_strerror(rc));
    if (fstat(fd, &fs) != 0)
        return cs__log_fail(log, CS_IO, "cannot stat data.mdb: %s", strerror(errno));
    uint64_t need = ((uint64_t)info->me_last_pgno + 1) * st.ms_psize;
    if ((uint64_t)fs.st_size < need)
        return cs__log_fail(log, CS_CORRUPT,
                            "data.mdb is %lld bytes but its meta page says %llu pages of %u "
                            "bytes are in use: the file was cut short" CS_CORRUPT_AT,
                            (long long)fs.st_size, (unsigned long long)info->me_last_pgno + 1,
                            st.ms_psize);
    return CS_OK;
}

static cs_err open_env(cs_log *log, const char *dir)
{
    if (!(log->flags & CS_LOG_READ_ONLY) && mkdir(dir, 0700) != 0 && errno != EEXIST)
        return cs__log_fail(log, CS_IO, "cannot create %s: %s", dir, strerror(errno));
    int rc = mdb_env_create(&log->env);
    if (rc)
        return cs__log_fail(log, cs__mdb_err(rc), "mdb_env_create: %s", mdb_strerror(rc));
    /* The engine and projections keep their own databases beside the log's. */
    if ((rc = mdb_env_set_maxdbs(log->env, CS_LOG_DBS_MAX)) ||
        (rc = mdb_env_set_mapsize(log->env, log->map_bytes)))
        return cs__log_fail(log, cs__mdb_err(rc), "configure: %s", mdb_strerror(rc));
    /* Never MDB_WRITEMAP: a full disk would then kill us with SIGBUS (SPEC 4). */
    unsigned flags = (log->flags & CS_LOG_NOSYNC) ? MDB_NOSYNC : 0;
    if (log->flags & CS_LOG_READ_ONLY)
        flags |= MDB_RDONLY; /* LMDB itself then refuses every write transaction */
    rc = mdb_env_open(log->env, dir, flags, 0600);
    if (rc)
        return cs__log_fail(log, cs__mdb_err(rc), "cannot open %s: %s", dir, mdb_strerror(rc));
    MDB_envinfo info;
    if ((rc = mdb_env_info(log->env, &info)))
        return cs__log_fail(log, cs__mdb_err(rc), "env info: %s", mdb_strerror(rc));
    log->map_bytes = info.me_mapsize; /* an existing, larger map wins */
    cs_err err = file_covers_pages(log, &info);
    return err != CS_OK ? err : open_dbis(log);
}

cs_err cs_log_open(const char *dir, const cs_log_options *opts, cs_log **out)
{
    return cs_log_open_why(dir, opts, out, NULL, 0);
}

cs_err cs_log_open_why(const char *dir, const cs_log_options *opts, cs_log **out, char *why,
                       size_t why_bytes)
{
    if (why_bytes > 0)
        why[0] = '\0';
    cs_log *log = calloc(1, sizeof(*log));
    if (!log)
        return CS_NO_MEMORY;
    log->map_bytes = opts && opts->map_bytes ? opts->map_bytes : CS_LOG_MAP_BYTES_DEFAULT;
    log->map_bytes_max =
        opts && opts->map_bytes_max ? opts->map_bytes_max : CS_LOG_MAP_BYTES_MAX_DEFAULT;
    log->flags = opts ? opts->flags : 0;
    if (log->map_bytes_max < log->map_bytes)
        log->map_bytes_max = log->map_bytes;
    cs_err err = open_env(log, dir);
    if (err != CS_OK) {
        if (why_bytes > 0)
            snprintf(why, why_bytes, "%s", log->errmsg);
        cs_log_close(log);
        return err;
    }
    *out = log;
    return CS_OK;
}

void cs_log_close(cs_log *log)
{
    if (!log)
        return;
    cs_assert(log->readers_open == 0);
    cs_assert(!log->in_write);
    if (log->env)
        mdb_env_close(log->env);
    free(log->scratch);
    free(log);
}

const char *cs_log_errmsg(const cs_log *log)
{
    return log->errmsg;
}

MDB_env *cs_log_env(cs_log *log)
{
    return log->env;
}

typedef struct dbi_open_ctx {
    const char *name;
    unsigned flags;
    MDB_dbi dbi;
} dbi_open_ctx;

/* Free bytes below which a failed commit is blamed on a full filesystem. */
#define FS_FULL_BYTES ((uint64_t)1024 * 1024)

/* The code of a failed commit. Why not cs__mdb_err alone: when the filesystem fills up, the
 * kernel writes what fits and returns a short count, which LMDB reports as EIO, not ENOSPC. So
 * an EIO with (almost) no free space left on the data file's filesystem is storage_full (SPEC 6:
 * the user frees space and retries), a real I/O error elsewhere stays io_error. Space reserved
 * for root counts for root, as the kernel lets it use that space. */
static cs_err commit_err(cs_log *log, int rc)
{
    if (rc != EIO)
        return cs__mdb_err(rc);
    mdb_filehandle_t fd;
    struct statvfs sv;
    if (mdb_env_get_fd(log->env, &fd) != 0 || fstatvfs(fd, &sv) != 0)
        return CS_IO;
    uint64_t blocks = geteuid() == 0 ? sv.f_bfree : sv.f_bavail;
    return blocks * (uint64_t)sv.f_frsize < FS_FULL_BYTES ? CS_STORAGE_FULL : CS_IO;
}

static cs_err txn_fail(cs_log_txn *t, int rc, const char *what);

static cs_err dbi_open_fn(cs_log_txn *t, void *ctx)
{
    dbi_open_ctx *c = ctx;
    int rc = mdb_dbi_open(t->txn, c->name, c->flags | MDB_CREATE, &c->dbi);
    if (rc == 0)
        return CS_OK;
    char what[96];
    snprintf(what, sizeof(what), "open database %s", c->name);
    return txn_fail(t, rc, what);
}

/* Through cs_log_write, so that a map another process grew, or a full one, is handled as for
 * any write: a module above may open its databases long after the directory was opened. */
cs_err cs_log_dbi_open(cs_log *log, const char *name, unsigned mdb_flags, MDB_dbi *out)
{
    cs_assert(!log->in_write);
    if (log->flags & CS_LOG_READ_ONLY)
        return cs_log_dbi_find(log, name, out);
    dbi_open_ctx c = {.name = name, .flags = mdb_flags};
    cs_err err = cs_log_write(log, dbi_open_fn, &c);
    if (err == CS_OK)
        *out = c.dbi;
    return err;
}

cs_err cs_log_dbi_find(cs_log *log, const char *name, MDB_dbi *out)
{
    cs_assert(!log->in_write);
    MDB_txn *txn;
    cs_err err = cs_log_read_begin(log, &txn);
    if (err != CS_OK)
        return err;
    MDB_dbi dbi;
    int rc = mdb_dbi_open(txn, name, 0, &dbi);
    if (rc) {
        cs_log_read_end(log, txn);
        if (rc == MDB_NOTFOUND)
            return CS_NOT_FOUND;
        return cs__log_fail(log, cs__mdb_err(rc), "open database %s: %s", name, mdb_strerror(rc));
    }
    /* Committing (not aborting) a read transaction keeps the handle it opened (LMDB). */
    rc = mdb_txn_commit(txn);
    cs_assert(log->readers_open > 0);
    log->readers_open--;
    if (rc)
        return cs__log_fail(log, cs__mdb_err(rc), "open database %s: %s", name, mdb_strerror(rc));
    *out = dbi;
    return CS_OK;
}

/* ---- the write transaction --------------------------------------------------------------- */

/* Invariant 6, for cs_assert only. */
static bool txn_invariants_hold(const cs_log_txn *t)
{
    if (t->log == NULL || t->txn == NULL || !t->log->in_write)
        return false;
    if (t->map_full && t->failed == CS_OK)
        return false; /* a full map is the cause of a failure, never a state of its own */
    if (!t->tail_loaded)
        return !t->appended; /* nothing is appended before the tail is read */
    if (t->next_seq <= t->tail_seq)
        return false; /* sequences only move forward in a transaction */
    if (t->appended != (t->next_seq > t->tail_seq + 1))
        return false;
    if (t->next_seq == 1 && t->last_chain != 0)
        return false; /* chain(0) = 0 */
    return true;
}

static cs_err txn_fail(cs_log_txn *t, int rc, const char *what)
{
    if (rc == MDB_MAP_FULL)
        t->map_full = true;
    cs_err err = commit_err(t->log, rc); /* a page spilled mid-transaction can hit a full disk */
    cs__log_fail(t->log, err, "%s: %s", what, mdb_strerror(rc));
    if (t->failed == CS_OK)
        t->failed = err;
    return t->failed;
}

/* Records the head (last sequence, its chain) in `meta` in the appending transaction. */
static cs_err put_head(cs_log_txn *t)
{
    uint8_t hb[16];
    cs_be64_put(hb, t->next_seq - 1);
    cs_be64_put(hb + 8, t->last_chain);
    MDB_val k = {sizeof(CS__META_HEAD_KEY) - 1, CS__META_HEAD_KEY}, v = {16, hb};
    int rc = mdb_put(t->txn, t->log->meta, &k, &v, 0);
    return rc ? txn_fail(t, rc, "record the head") : CS_OK;
}

/* Doubles the map from the size LMDB has now (map_bytes, kept equal to mdb_env_info's by
 * every resize), which may be one another process grew the file to and this one adopted: a
 * doubling from the size this process last chose itself could shrink the map. */
static cs_err grow_map(cs_log *log)
{
    if (log->readers_open > 0)
        return cs__log_fail(log, CS_STORAGE_FULL, "map full while a reader is open");
    size_t cur = log->map_bytes;
    if (cur >= log->map_bytes_max)
        return cs__log_fail(log, CS_STORAGE_FULL,
                            "data directory reached its maximum size (%zu bytes)",
                            log->map_bytes_max);
    size_t next = cur * 2;
    if (next < cur || next > log->map_bytes_max)
        next = log->map_bytes_max;
    cs_err err = cs__map_resize(log, next, CS_STORAGE_FULL, "cannot grow the map");
    cs_assert(err != CS_OK || log->map_bytes >= next);
    return err;
}

cs_err cs_log_write(cs_log *log, cs_log_write_fn fn, void *ctx)
{
    cs_assert(!log->in_write);
    log->errmsg[0] = '\0';
    if (log->flags & CS_LOG_READ_ONLY)
        return cs__log_fail(log, CS_IO, "the data directory was opened read-only");
    cs_err merr = cs__map_check(log);
    if (merr != CS_OK)
        return merr;
    for (int attempt = 0; attempt < WRITE_ATTEMPTS_MAX; attempt++) {
        cs_log_txn t = {.log = log};
        int rc = mdb_txn_begin(log->env, NULL, 0, &t.txn);
        if (rc == MDB_MAP_RESIZED) { /* another process's data outgrew our map: adopt its size */
            cs_err aerr = cs__map_adopt(log);
            if (aerr != CS_OK)
                return aerr;
            continue;
        }
        if (rc)
            return cs__log_fail(log, cs__mdb_err(rc), "begin write: %s", mdb_strerror(rc));
        log->in_write = true;
        cs_assert(txn_invariants_hold(&t));
        cs_err err = fn(&t, ctx);
        cs_assert(txn_invariants_hold(&t));
        if (err == CS_OK && t.failed != CS_OK)
            err = t.failed; /* fn ignored a failure: never commit half-done work */
        if (err == CS_OK && t.appended)
            err = put_head(&t);
        if (err == CS_OK) {
            rc = mdb_txn_commit(t.txn); /* frees the txn whatever it returns */
            log->in_write = false;
            if (rc == 0)
                return CS_OK;
            if (rc != MDB_MAP_FULL && commit_err(log, rc) == CS_STORAGE_FULL)
                return cs__log_fail(log, CS_STORAGE_FULL,
                                    "commit: the filesystem of the data directory is full (%s)",
                                    mdb_strerror(rc));
            if (rc != MDB_MAP_FULL)
                return cs__log_fail(log, cs__mdb_err(rc), "commit: %s", mdb_strerror(rc));
            t.map_full = true;
        } else {
            mdb_txn_abort(t.txn);
            log->in_write = false;
        }
        if (!t.map_full)
            return err;
        cs_err gerr = grow_map(log);
        if (gerr != CS_OK)
            return gerr;
    }
    return cs__log_fail(log, CS_STORAGE_FULL, "map kept filling after %d growths",
                        WRITE_ATTEMPTS_MAX);
}

MDB_txn *cs_log_txn_mdb(cs_log_txn *txn)
{
    return txn->txn;
}

cs_err cs_log_txn_put(cs_log_txn *t, MDB_dbi dbi, MDB_val *key, MDB_val *val, unsigned flags)
{
    if (t->failed != CS_OK)
        return t->failed;
    int rc = mdb_put(t->txn, dbi, key, val, flags);
    if (rc == MDB_KEYEXIST)
        return CS_INVALID_INPUT; /* the caller asked for NOOVERWRITE: its answer, not a failure */
    return rc ? txn_fail(t, rc, "put") : CS_OK;
}

cs_err cs_log_txn_del(cs_log_txn *t, MDB_dbi dbi, MDB_val *key)
{
    if (t->failed != CS_OK)
        return t->failed;
    int rc = mdb_del(t->txn, dbi, key, NULL);
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    return rc ? txn_fail(t, rc, "del") : CS_OK;
}

/* Reads the last sequence, chain and time once per transaction. */
static cs_err txn_load_tail(cs_log_txn *t)
{
    if (t->tail_loaded)
        return CS_OK;
    cs_log *log = t->log;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(t->txn, log->events, &cur);
    if (rc)
        return txn_fail(t, rc, "cursor");
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    cs_assert(!t->appended);
    t->next_seq = 1;
    t->tail_seq = 0;
    t->last_chain = 0;
    t->last_time_ms = 0;
    if (rc == 0) {
        uint64_t seq = k.mv_size == 8 ? cs_be64_get(k.mv_data) : 0;
        cs_log_record rec;
        const char *why = CS_CORRUPT_AT; /* the key is not a sequence */
        if (seq == 0 || cs__record_parse(seq, v.mv_data, v.mv_size, &rec, &why) != CS_OK) {
            t->failed =
                cs__log_fail(log, CS_CORRUPT, "event %llu: the log's last event does not verify%s",
                             (unsigned long long)seq, why);
            return t->failed;
        }
        t->next_seq = seq + 1;
        t->tail_seq = seq;
        t->last_chain = rec.chain;
    } else if (rc != MDB_NOTFOUND) {
        return txn_fail(t, rc, "read tail");
    }
    /* Never extend a log that lost its tail: the new events would chain onto the wrong one. */
    uint64_t bad;
    cs_err herr = cs__head_check(t->txn, log->meta, t->next_seq - 1, t->last_chain, &bad,
                                 log->errmsg, sizeof(log->errmsg));
    if (herr != CS_OK)
        return t->failed = herr;
    if ((rc = mdb_cursor_open(t->txn, log->times, &cur)))
        return txn_fail(t, rc, "cursor");
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == 0 && k.mv_size == 8)
        t->last_time_ms = cs_be64_get(k.mv_data);
    else if (rc != 0 && rc != MDB_NOTFOUND)
        return txn_fail(t, rc, "read time index");
    t->tail_loaded = true;
    cs_assert(txn_invariants_hold(t));
    return CS_OK;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Encodes, checksums, chains and puts one event at t->next_seq. */
static cs_err append_one(cs_log_txn *t, const cs_event *ev, uint64_t now)
{
    cs_log *log = t->log;
    cs_assert(t->tail_loaded);
    cs_assert(t->failed == CS_OK);
    uint64_t seq = t->next_seq;
    uint64_t time_ms = ev->time_ms ? ev->time_ms : now;
    if (time_ms < t->last_time_ms)
        time_ms = t->last_time_ms; /* times never go back: as-of by time relies on it */
    cs_assert(time_ms >= t->last_time_ms);
    size_t env_len;
    cs_err err =
        cs__event_encode_envelope(ev, seq, time_ms, &log->scratch, &log->scratch_cap, &env_len);
    if (err != CS_OK)
        return t->failed = err;
    static const uint8_t empty_map = 0x80;
    const uint8_t *fields = ev->fields ? ev->fields : &empty_map;
    size_t fields_len = ev->fields ? ev->fields_len : 1;
    size_t len = env_len + fields_len;
    if (len > CS_EVENT_BYTES_MAX) /* SPEC 6: a refusal says why, not just its code */
        return t->failed = cs__log_fail(log, CS_INVALID_INPUT,
                                        "an event of the batch is over %u bytes encoded",
                                        CS_EVENT_BYTES_MAX);
    uint8_t kb[8];
    cs_be64_put(kb, seq);
    /* MDB_RESERVE: the record is assembled in LMDB's own dirty page, so the fields are copied
     * once (caller -> page) instead of twice (caller -> scratch -> page). Not WRITEMAP: the page
     * is process memory until the commit writes it. */
    MDB_val k = {8, kb}, v = {CS_RECORD_HEADER_BYTES + len, NULL};
    int rc = mdb_put(t->txn, log->events, &k, &v, MDB_APPEND | MDB_RESERVE);
    if (rc)
        return txn_fail(t, rc, "append");
    uint8_t *val = v.mv_data;
    memcpy(val + CS_RECORD_HEADER_BYTES, log->scratch, env_len);
    memcpy(val + CS_RECORD_HEADER_BYTES + env_len, fields, fields_len);
    uint64_t sum = cs_log_checksum(val + CS_RECORD_HEADER_BYTES, len, seq);
    uint64_t chain = cs_log_chain(t->last_chain, sum);
    cs_be64_put(val, sum);
    cs_be64_put(val + 8, chain);
    if (time_ms > t->last_time_ms || seq == 1) {
        uint8_t tb[8];
        cs_be64_put(tb, time_ms);
        MDB_val tk = {8, tb}, tv = {8, kb};
        if ((rc = mdb_put(t->txn, log->times, &tk, &tv, MDB_APPEND)))
            return txn_fail(t, rc, "time index");
    }
    t->next_seq = seq + 1;
    t->last_chain = chain;
    t->last_time_ms = time_ms;
    t->appended = true;
    /* The header as record.c will read it back (the read side checks the checksum itself). */
    cs_assert(cs_be64_get(val) == sum);
    cs_assert(cs_be64_get(val + 8) == chain);
    return CS_OK;
}

/* The sequence and time postconditions of cs_log_txn_append, for cs_assert only: the batch
 * took the n sequences after the old tail, and time did not go back. */
static bool append_postconditions_hold(const cs_log_txn *t, uint64_t first, size_t n,
                                       uint64_t time_before_ms)
{
    return t->failed == CS_OK && first >= 1 && t->next_seq == first + n &&
           t->last_time_ms >= time_before_ms && txn_invariants_hold(t);
}

cs_err cs_log_txn_append(cs_log_txn *t, const cs_event *events, size_t n, uint64_t *first_seq_out)
{
    cs_assert(txn_invariants_hold(t));
    if (t->failed != CS_OK)
        return t->failed;
    if (n == 0 || n > CS_LOG_BATCH_EVENTS_MAX)
        return t->failed = cs__log_fail(t->log, CS_INVALID_INPUT, "a batch holds 1 to %u events",
                                        CS_LOG_BATCH_EVENTS_MAX);
    const char *why;
    for (size_t i = 0; i < n; i++) /* refuse the whole batch before writing any of it */
        if (cs__event_check(&events[i], &why) != CS_OK)
            return t->failed =
                       cs__log_fail(t->log, CS_INVALID_INPUT, "event %zu of the batch: %s", i, why);
    cs_err err = txn_load_tail(t);
    if (err != CS_OK) {
        cs_assert(t->failed == err); /* a failed transaction stays failed */
        return err;
    }
    uint64_t first = t->next_seq;
    uint64_t time_before_ms = t->last_time_ms;
    uint64_t now = now_ms();
    for (size_t i = 0; i < n; i++) {
        if ((err = append_one(t, &events[i], now)) != CS_OK) {
            cs_assert(t->failed == err);
            return err;
        }
    }
    cs_assert(append_postconditions_hold(t, first, n, time_before_ms));
    (void)time_before_ms;
    if (first_seq_out)
        *first_seq_out = first;
    return CS_OK;
}

uint64_t cs_log_txn_next_seq(cs_log_txn *t)
{
    if (txn_load_tail(t) != CS_OK)
        return 0;
    return t->next_seq;
}

typedef struct append_ctx {
    const cs_event *events;
    size_t n;
    uint64_t first;
} append_ctx;

static cs_err append_fn(cs_log_txn *txn, void *ctx)
{
    append_ctx *a = ctx;
    return cs_log_txn_append(txn, a->events, a->n, &a->first);
}

cs_err cs_log_append(cs_log *log, const cs_event *events, size_t n, uint64_t *first_seq_out)
{
    append_ctx a = {events, n, 0};
    cs_err err = cs_log_write(log, append_fn, &a);
    if (err == CS_OK && first_seq_out)
        *first_seq_out = a.first;
    return err;
}
