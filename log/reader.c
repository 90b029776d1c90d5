/*
 * reader.c: read snapshots of the log. Every record handed out has had its checksum verified;
 * iteration also checks that sequences do not jump and that each record chains onto the one
 * before it, so a reader walking the log notices a changed, lost or reordered event at the
 * first record it touches (docs/storage.md, "verifying"). The record's format and the head
 * check are record.c's, shared with the write path; a map another process grew is adopted
 * through map.c. Every CS_CORRUPT sentence ends with CS_CORRUPT_AT, naming its check.
 */
#include "log/log_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static cs_err reader_fail(cs_log_reader *r, cs_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static cs_err reader_fail(cs_log_reader *r, cs_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs_errmsg_vformat(r->errmsg, sizeof(r->errmsg), err, fmt, ap);
    va_end(ap);
    return err;
}

/* Read transactions another process's map growth can refuse before this one adopts it: one
 * adoption is enough unless the other process keeps growing between our two calls. */
#define READ_BEGIN_ATTEMPTS_MAX 8

/* LMDB (mdb_txn_renew0) refuses a read with MDB_MAP_RESIZED exactly when the snapshot's last
 * page lies beyond this process's map, so a snapshot that began never touches a page outside
 * it: nothing here can fault on a map another process grew. Adopting the new size remaps the
 * environment, hence cs__map_adopt's rule (no transaction of ours open). */
cs_err cs_log_read_begin(cs_log *log, MDB_txn **out)
{
    cs_err err = cs__map_check(log);
    int rc = 0;
    for (int attempt = 0; err == CS_OK && attempt < READ_BEGIN_ATTEMPTS_MAX; attempt++) {
        rc = mdb_txn_begin(log->env, NULL, MDB_RDONLY, out);
        if (rc != MDB_MAP_RESIZED)
            break;
        err = cs__map_adopt(log); /* then begin again */
    }
    if (err != CS_OK)
        return err;
    if (rc)
        return cs__log_fail(log, rc == ENOMEM ? CS_NO_MEMORY : CS_IO,
                            "cannot begin a read of the data directory: %s", mdb_strerror(rc));
    log->readers_open++;
    return CS_OK;
}

void cs_log_read_end(cs_log *log, MDB_txn *txn)
{
    if (!txn)
        return;
    mdb_txn_abort(txn);
    cs_assert(log->readers_open > 0);
    log->readers_open--;
}

cs_err cs_log_reader_open(cs_log *log, cs_log_reader **out)
{
    cs_log_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return CS_NO_MEMORY;
    r->log = log;
    cs_err err = cs_log_read_begin(log, &r->txn);
    if (err != CS_OK) {
        free(r);
        return err;
    }
    int rc = mdb_cursor_open(r->txn, log->events, &r->cur);
    if (rc) {
        cs_log_read_end(log, r->txn);
        free(r);
        return cs__mdb_err(rc);
    }
    r->from = 1;
    if ((err = cs__start_get(r->txn, log, &r->start)) != CS_OK) {
        cs_log_reader_close(r);
        return err;
    }
    *out = r;
    return CS_OK;
}

void cs_log_reader_close(cs_log_reader *r)
{
    if (!r)
        return;
    mdb_cursor_close(r->cur);
    cs_log_read_end(r->log, r->txn);
    free(r);
}

const char *cs_log_reader_errmsg(const cs_log_reader *r)
{
    return r->errmsg;
}

cs_err cs_log_reader_head(cs_log_reader *r, uint64_t *seq_out)
{
    /* A cursor of its own: moving r->cur would make the next `next` restart at r->from and
     * report the records it already returned as a jump in the sequence. */
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(r->txn, r->log->events, &cur);
    if (rc)
        return reader_fail(r, cs__mdb_err(rc), "head: %s", mdb_strerror(rc));
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND) {
        *seq_out = 0;
        return CS_OK;
    }
    if (rc)
        return reader_fail(r, cs__mdb_err(rc), "head: %s", mdb_strerror(rc));
    if (k.mv_size != 8)
        return reader_fail(r, CS_CORRUPT,
                           "the last key of the log is not a sequence number" CS_CORRUPT_AT);
    *seq_out = cs_be64_get(k.mv_data);
    return CS_OK;
}

cs_err cs_log_reader_get(cs_log_reader *r, uint64_t seq, cs_log_record *out)
{
    if (seq < r->start.seq)
        return reader_fail(r, CS_NOT_FOUND,
                           "event %llu was cut from the log (it starts at %llu: log compact)",
                           (unsigned long long)seq, (unsigned long long)r->start.seq);
    uint8_t kb[8];
    cs_be64_put(kb, seq);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(r->txn, r->log->events, &k, &v);
    if (rc == MDB_NOTFOUND)
        return reader_fail(r, CS_NOT_FOUND, "event %llu is not in the log",
                           (unsigned long long)seq);
    if (rc)
        return reader_fail(r, cs__mdb_err(rc), "read %llu: %s", (unsigned long long)seq,
                           mdb_strerror(rc));
    const char *why;
    if (cs__record_parse(seq, v.mv_data, v.mv_size, out, &why) != CS_OK)
        return reader_fail(r, CS_CORRUPT, "event %llu: checksum mismatch%s",
                           (unsigned long long)seq, why);
    return CS_OK;
}

cs_err cs_log_reader_seek(cs_log_reader *r, uint64_t from)
{
    r->positioned = false;
    r->from = from > r->start.seq ? from : r->start.seq;
    r->expect_seq = 0;
    r->prev_chain_known = false;
    if (r->from == r->start.seq) { /* from the start: chained onto what the cut recorded */
        r->prev_chain = r->start.chain_before;
        r->prev_chain_known = true;
        r->expect_seq = r->from;
        return CS_OK;
    }
    /* Chain the first record onto its predecessor, so a range read verifies from its start. */
    cs_log_record prev;
    cs_err err = cs_log_reader_get(r, r->from - 1, &prev);
    if (err == CS_NOT_FOUND)
        return CS_OK; /* past the head: `next` will say so */
    if (err != CS_OK)
        return err;
    r->prev_chain = prev.chain;
    r->prev_chain_known = true;
    r->expect_seq = r->from;
    return CS_OK;
}

cs_err cs_log_reader_next(cs_log_reader *r, cs_log_record *out)
{
    MDB_val k, v;
    int rc;
    if (r->positioned) {
        rc = mdb_cursor_get(r->cur, &k, &v, MDB_NEXT);
    } else {
        uint8_t kb[8];
        cs_be64_put(kb, r->from);
        k.mv_size = 8;
        k.mv_data = kb;
        rc = mdb_cursor_get(r->cur, &k, &v, MDB_SET_RANGE);
    }
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    if (rc) {
        /* LMDB failed on the record after the last good one: that is the bad one. */
        r->bad_seq = r->expect_seq ? r->expect_seq : r->from;
        return reader_fail(r, cs__mdb_err(rc), "next: %s", mdb_strerror(rc));
    }
    r->positioned = true;
    if (k.mv_size != 8)
        return reader_fail(r, CS_CORRUPT,
                           "a key of the log is not a sequence number" CS_CORRUPT_AT);
    uint64_t seq = cs_be64_get(k.mv_data);
    r->bad_seq = r->expect_seq ? r->expect_seq : seq;
    if (r->expect_seq && seq != r->expect_seq)
        return reader_fail(r, CS_CORRUPT,
                           "event %llu: missing (the log jumps to %llu)" CS_CORRUPT_AT,
                           (unsigned long long)r->expect_seq, (unsigned long long)seq);
    cs_log_record rec;
    const char *why;
    if (cs__record_parse(seq, v.mv_data, v.mv_size, &rec, &why) != CS_OK)
        return reader_fail(r, CS_CORRUPT, "event %llu: checksum mismatch%s",
                           (unsigned long long)seq, why);
    if (r->prev_chain_known && cs_log_chain(r->prev_chain, rec.checksum) != rec.chain)
        return reader_fail(r, CS_CORRUPT, "event %llu: hash chain broken" CS_CORRUPT_AT,
                           (unsigned long long)seq);
    r->bad_seq = seq;
    r->expect_seq = seq + 1;
    r->prev_chain = rec.chain;
    r->prev_chain_known = true;
    *out = rec;
    return CS_OK;
}

cs_err cs_log_reader_seq_at_time(cs_log_reader *r, uint64_t time_ms, uint64_t *seq_out)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(r->txn, r->log->times, &cur);
    if (rc)
        return cs__mdb_err(rc);
    uint8_t kb[8];
    cs_be64_put(kb, time_ms);
    MDB_val k = {8, kb}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    if (rc)
        return cs__mdb_err(rc);
    if (v.mv_size != 8)
        return reader_fail(r, CS_CORRUPT, "time index entry is malformed" CS_CORRUPT_AT);
    /* After a cut an entry may still name an event below the start (a trim under way): every
     * event from it on has a time >= time_ms, so the first one still there is the start. */
    uint64_t seq = cs_be64_get(v.mv_data);
    *seq_out = seq < r->start.seq ? r->start.seq : seq;
    return CS_OK;
}

cs_err cs_log_reader_verify(cs_log_reader *r, uint64_t *bad_seq_out)
{
    cs_event_decoder *dec;
    cs_err err = cs_event_decoder_new(&dec);
    if (err != CS_OK)
        return err;
    cs_log_reader_seek(r, r->start.seq);
    cs_log_record rec;
    uint64_t seq = r->start.seq - 1;
    while ((err = cs_log_reader_next(r, &rec)) == CS_OK) {
        seq = rec.seq;
        cs_event_view ev;
        const char *why = NULL;
        if (cs_event_decode(dec, rec.event, rec.event_len, &ev) != CS_OK)
            why = cs_event_decoder_corrupt_at(dec);
        else if (ev.seq != rec.seq)
            why = CS_CORRUPT_AT;
        if (why) {
            r->bad_seq = seq;
            err = reader_fail(r, CS_CORRUPT, "event %llu: malformed or misplaced event%s",
                              (unsigned long long)seq, why);
            break;
        }
    }
    cs_event_decoder_free(dec);
    if (err == CS_NOT_FOUND) /* the walk reached the end: is it where the log last ended? */
        err = cs__head_check(r->txn, r->log->meta, seq, seq ? r->prev_chain : 0, &r->bad_seq,
                             r->errmsg, sizeof(r->errmsg));
    if (err == CS_CORRUPT)
        *bad_seq_out = r->bad_seq;
    return err;
}
