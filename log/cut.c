/*
 * cut.c: retention. A log may be cut at its front once a snapshot of the state before the cut
 * was written and verified (projections/snapshot.c does that; docs/design.md "Retention and
 * snapshots"). This file owns the `start` record of `meta` and the deletion of the prefix.
 *
 * meta "start" (24 bytes, u64 BE each): the first sequence the log still holds, the chain of
 * the event before it, and the log's id (the chain of event 1, which the handshake names and
 * which a cut would otherwise take away). Absent: the log starts at 1 (docs/storage.md).
 *
 * Invariants:
 *   1. start only grows, and 2 <= start <= head once written: at least the last event stays,
 *      so the head record and an appender's tail keep their meaning.
 *   2. Every event from start to head is present; events below start may still be present
 *      while a trim is under way (a crash between two trim transactions) and are ignored by
 *      every reader: a reader never hands out a record below start.
 *   3. The chain continues: chain(start) = cs_log_chain(start's chain_before, checksum(start)).
 *
 * The cut is one small transaction (the `start` record); the deletion runs afterwards in
 * transactions of at most CS_LOG_TRIM_EVENTS_MAX events, each through cs_log_write, so other
 * processes keep writing and reading beside it and a map grown meanwhile is adopted.
 */
#include "log/log_int.h"

#include <string.h>

static cs_err start_read(MDB_txn *txn, MDB_dbi meta, cs_log_start *out)
{
    MDB_val k = {sizeof(CS__META_START_KEY) - 1, CS__META_START_KEY}, v;
    int rc = mdb_get(txn, meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        *out = (cs_log_start){.seq = 1};
        return CS_OK;
    }
    if (rc)
        return cs__mdb_err(rc);
    if (v.mv_size != 24 || cs_be64_get(v.mv_data) < 2)
        return CS_CORRUPT;
    const uint8_t *p = v.mv_data;
    *out = (cs_log_start){.seq = cs_be64_get(p),
                          .chain_before = cs_be64_get(p + 8),
                          .log_id = cs_be64_get(p + 16),
                          .cut = true};
    return CS_OK;
}

cs_err cs__start_get(MDB_txn *txn, cs_log *log, cs_log_start *out)
{
    cs_err err = start_read(txn, log->meta, out);
    if (err == CS_CORRUPT)
        return cs__log_fail(log, CS_CORRUPT, "the log's start record is malformed" CS_CORRUPT_AT);
    if (err != CS_OK || out->cut)
        return err;
    /* Uncut: the log id is event 1's chain, read from the record itself. */
    uint8_t kb[8];
    cs_be64_put(kb, 1);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(txn, log->events, &k, &v);
    if (rc == 0 && v.mv_size >= CS_RECORD_HEADER_BYTES)
        out->log_id = cs_be64_get((const uint8_t *)v.mv_data + 8);
    else if (rc && rc != MDB_NOTFOUND)
        return cs__mdb_err(rc);
    return CS_OK;
}

cs_err cs_log_reader_start(cs_log_reader *r, cs_log_start *out)
{
    *out = r->start;
    return CS_OK;
}

cs_err cs_log_reader_chain_at(cs_log_reader *r, uint64_t seq, uint64_t *chain_out)
{
    if (seq == 0) {
        *chain_out = 0;
        return CS_OK;
    }
    if (seq + 1 == r->start.seq) {
        *chain_out = r->start.chain_before;
        return CS_OK;
    }
    if (seq < r->start.seq)
        return CS_NOT_FOUND;
    cs_log_record rec;
    cs_err err = cs_log_reader_get(r, seq, &rec);
    if (err == CS_OK)
        *chain_out = rec.chain;
    return err;
}

cs_err cs_log_txn_cut(cs_log_txn *txn, uint64_t before)
{
    cs_log *log = txn->log;
    MDB_txn *m = txn->txn;
    cs_log_start st;
    cs_err err = cs__start_get(m, log, &st);
    if (err != CS_OK)
        return err;
    uint8_t kb[8];
    cs_be64_put(kb, before);
    MDB_val k = {8, kb}, v;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(m, log->events, &cur);
    if (rc)
        return cs__mdb_err(rc);
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    uint64_t head = rc == 0 && k.mv_size == 8 ? cs_be64_get(k.mv_data) : 0;
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return cs__mdb_err(rc);
    if (before < 2 || before > head)
        return cs__log_fail(log, CS_INVALID_INPUT,
                            "a cut before event %llu: it must be between 2 and the head (%llu), "
                            "so that at least the last event stays",
                            (unsigned long long)before, (unsigned long long)head);
    if (before < st.seq)
        return cs__log_fail(log, CS_INVALID_INPUT,
                            "the log already starts at event %llu: a cut never moves back",
                            (unsigned long long)st.seq);
    if (before == st.seq)
        return CS_OK;
    cs_be64_put(kb, before - 1);
    k = (MDB_val){8, kb};
    if ((rc = mdb_get(m, log->events, &k, &v)) != 0)
        return rc == MDB_NOTFOUND
                   ? cs__log_fail(log, CS_CORRUPT, "event %llu is missing" CS_CORRUPT_AT,
                                  (unsigned long long)(before - 1))
                   : cs__mdb_err(rc);
    cs_log_record rec;
    const char *why;
    if (cs__record_parse(before - 1, v.mv_data, v.mv_size, &rec, &why) != CS_OK)
        return cs__log_fail(log, CS_CORRUPT, "event %llu: checksum mismatch%s",
                            (unsigned long long)(before - 1), why);
    uint8_t sb[24];
    cs_be64_put(sb, before);
    cs_be64_put(sb + 8, rec.chain);
    cs_be64_put(sb + 16, st.log_id);
    MDB_val sk = {sizeof(CS__META_START_KEY) - 1, CS__META_START_KEY}, sv = {24, sb};
    return cs_log_txn_put(txn, log->meta, &sk, &sv, 0);
}

typedef struct trim_ctx {
    uint64_t deleted; /* this transaction's */
    bool more;
} trim_ctx;

/* Deletes up to CS_LOG_TRIM_EVENTS_MAX events below start and the time entries that only
 * point below it; keeps the time index answering for start itself. */
static cs_err trim_fn(cs_log_txn *txn, void *ctx)
{
    trim_ctx *c = ctx;
    cs_log *log = txn->log;
    c->deleted = 0;
    c->more = false;
    cs_log_start st;
    cs_err err = cs__start_get(txn->txn, log, &st);
    if (err != CS_OK || !st.cut)
        return err;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn->txn, log->events, &cur);
    if (rc)
        return cs__mdb_err(rc);
    MDB_val k, v;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0 && k.mv_size == 8 &&
           cs_be64_get(k.mv_data) < st.seq) {
        if (c->deleted == CS_LOG_TRIM_EVENTS_MAX) {
            c->more = true;
            break;
        }
        if ((rc = mdb_cursor_del(cur, 0)) != 0)
            break;
        c->deleted++;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return cs__mdb_err(rc);
    if ((rc = mdb_cursor_open(txn->txn, log->times, &cur)) != 0)
        return cs__mdb_err(rc);
    /* Time entries name the first event of each time. One naming an event below start stands
     * for every event up to the next entry, start included when start shares its time: it is
     * replaced by an entry for start (the first event still there with that time). */
    uint64_t last_time = 0;
    bool dropped = false;
    unsigned n = 0;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0 && v.mv_size == 8 && k.mv_size == 8 &&
           cs_be64_get(v.mv_data) < st.seq && n < CS_LOG_TRIM_EVENTS_MAX) {
        last_time = cs_be64_get(k.mv_data);
        dropped = true;
        n++;
        if ((rc = mdb_cursor_del(cur, 0)) != 0)
            break;
    }
    bool next_is_start = rc == 0 && v.mv_size == 8 && cs_be64_get(v.mv_data) == st.seq;
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return cs__mdb_err(rc);
    if (n == CS_LOG_TRIM_EVENTS_MAX)
        c->more = true;
    if (dropped && !next_is_start && !c->more) {
        uint8_t tk[8], tv[8];
        cs_be64_put(tk, last_time);
        cs_be64_put(tv, st.seq);
        MDB_val kk = {8, tk}, vv = {8, tv};
        err = cs_log_txn_put(txn, log->times, &kk, &vv, 0);
    }
    return err;
}

cs_err cs_log_trim(cs_log *log, uint64_t *deleted_out)
{
    uint64_t total = 0;
    trim_ctx c = {0};
    cs_err err;
    do {
        err = cs_log_write(log, trim_fn, &c);
        total += err == CS_OK ? c.deleted : 0;
    } while (err == CS_OK && c.more);
    if (deleted_out)
        *deleted_out = total;
    return err;
}
