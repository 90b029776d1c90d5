/*
 * audit_handle.c: what every file of the audit stands on: the handle (open, close, its error
 * message), read snapshots, the `audit` metadata database and points of the log (head, and the
 * chain and time of one event). It calls no other file of the audit; every other one calls it.
 * The module reads top-down, each file calling only files below it:
 *
 *     audit_verify.c   verification (calls all three below)
 *     audit.c          scratch directories, checkpoints, past states (calls the two below)
 *     audit_history.c  the history index and the diff
 *     audit_handle.c   this file
 *
 * The databases and their invariants are listed in audit_int.h.
 */
#include "projections/audit_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cs_err cs__audit_fail(cs_audit *a, cs_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs_errmsg_vformat(a->errmsg, sizeof(a->errmsg), err, fmt, ap);
    va_end(ap);
    return err;
}

cs_err cs__audit_read_begin(cs_audit *a, cs_log *log, MDB_txn **txn)
{
    cs_err err = cs_log_read_begin(log, txn);
    return err == CS_OK ? CS_OK : cs__audit_fail(a, err, "%s", cs_log_errmsg(log));
}

const char *cs__audit_type_name(uint8_t code, char *buf, size_t len)
{
    const cs_type *t = cs_schema_by_code(code);
    if (t)
        return t->name;
    snprintf(buf, len, "type %u", code);
    return buf;
}
/* ---- the handle -------------------------------------------------------------------------- */

/* A directory that is or was a branch has the projection's `branch` database. Its own log then
 * holds only its local writes. Opened read-only, so auditing never creates it. */
static bool dir_is_branch(cs_audit *a)
{
    MDB_txn *t;
    MDB_dbi d;
    if (cs_log_read_begin(a->log, &t) != CS_OK)
        return false;
    int rc = mdb_dbi_open(t, "branch", 0, &d);
    cs_log_read_end(a->log, t);
    cs_shop_info self;
    return rc == 0 || (cs_engine_self(a->e, &self) == CS_OK && self.role == CS_ROLE_BRANCH);
}

/* Read-only: a database that is not there stays 0 (LMDB's free-page database, never valid
 * for a read of ours: mdb_get returns EINVAL, which the readers take as "none"). */
static cs_err dbi_get(cs_audit *a, const char *name, MDB_dbi *out)
{
    if (!a->read_only)
        return cs_log_dbi_open(a->log, name, 0, out);
    cs_err err = cs_log_dbi_find(a->log, name, out);
    if (err == CS_NOT_FOUND) {
        *out = 0;
        return CS_OK;
    }
    return err;
}

cs_err cs_audit_open(cs_engine *e, cs_audit **out)
{
    return cs_audit_open_flags(e, 0, out);
}

cs_err cs_audit_open_flags(cs_engine *e, unsigned flags, cs_audit **out)
{
    cs_audit *a = calloc(1, sizeof(*a));
    if (!a)
        return CS_NO_MEMORY;
    a->e = e;
    a->log = cs_engine_log(e);
    a->read_only = (flags & CS_AUDIT_READ_ONLY) != 0;
    cs_err err = dbi_get(a, "ckpt", &a->ckpt);
    if (err == CS_OK)
        err = dbi_get(a, "history", &a->history);
    if (err == CS_OK)
        err = dbi_get(a, "audit", &a->meta);
    if (err != CS_OK) {
        free(a);
        return err;
    }
    a->branch_dir = dir_is_branch(a);
    *out = a;
    return CS_OK;
}

void cs_audit_close(cs_audit *a)
{
    free(a);
}

const char *cs_audit_errmsg(const cs_audit *a)
{
    return a->errmsg;
}

uint64_t cs__audit_meta_get(MDB_txn *txn, MDB_dbi meta, const char *key)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    if (mdb_get(txn, meta, &k, &v) != 0 || v.mv_size != 8)
        return 0;
    return cs_be64_get(v.mv_data);
}

cs_err cs__audit_meta_put(cs_log_txn *txn, MDB_dbi meta, const char *key, uint64_t val)
{
    uint8_t b[8];
    cs_be64_put(b, val);
    MDB_val k = {strlen(key), (void *)key}, v = {8, b};
    return cs_log_txn_put(txn, meta, &k, &v, 0);
}

/* ---- log points --------------------------------------------------------------------------- */

cs_err cs__audit_log_point(cs_audit *a, uint64_t seq, uint64_t *head, uint64_t *chain,
                           uint64_t *time_ms)
{
    cs_log_reader *r = NULL;
    cs_event_decoder *dec = NULL;
    cs_err err = cs_log_reader_open(a->log, &r);
    if (err == CS_OK)
        err = cs_log_reader_head(r, head);
    if (err == CS_OK && seq > *head)
        err = cs__audit_fail(a, CS_NOT_FOUND, "the log has %llu events, there is no event %llu",
                             (unsigned long long)*head, (unsigned long long)seq);
    cs_log_start start = {.seq = 1};
    if (err == CS_OK)
        err = cs_log_reader_start(r, &start);
    bool at_base = err == CS_OK && seq > 0 && seq + 1 == start.seq;
    if (err == CS_OK && seq > 0 && seq + 1 < start.seq)
        err = cs__audit_fail(a, CS_NOT_FOUND,
                             "events before %llu were cut from this log (log compact): event "
                             "%llu, and every state and version before event %llu, can no "
                             "longer be shown; the audit answers from event %llu on",
                             (unsigned long long)start.seq, (unsigned long long)seq,
                             (unsigned long long)start.seq - 1, (unsigned long long)start.seq - 1);
    cs_log_record rec;
    cs_event_view ev;
    if (at_base) { /* the snapshot's position: its chain is the log's, its time the snapshot's */
        cs_log_reader_close(r);
        r = NULL;
        cs__audit_base_info base;
        if ((err = cs__audit_base(a, &base)) == CS_OK) {
            if (chain)
                *chain = start.chain_before;
            if (time_ms)
                *time_ms = base.seq == seq ? base.time_ms : 0;
        }
    } else if (err == CS_OK && seq > 0) {
        err = cs_log_reader_get(r, seq, &rec);
        if (err == CS_OK)
            err = cs_event_decoder_new(&dec);
        if (err == CS_OK && cs_event_decode(dec, rec.event, rec.event_len, &ev) != CS_OK)
            err = cs__audit_fail(a, CS_CORRUPT, "event %llu does not decode",
                                 (unsigned long long)seq);
        if (err == CS_OK) {
            if (chain)
                *chain = rec.chain;
            if (time_ms)
                *time_ms = ev.time_ms;
        } else if (!a->errmsg[0]) {
            cs__audit_fail(a, err, "%s", cs_log_reader_errmsg(r));
        }
    }
    cs_event_decoder_free(dec);
    cs_log_reader_close(r);
    return err;
}
