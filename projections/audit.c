/*
 * audit.c: scratch directories, checkpoints and past states (R14). The handle, read snapshots,
 * the metadata database and log points it stands on are in audit_handle.c.
 *
 * A past state is rebuilt, never stored whole per event: the nearest checkpoint at or before
 * the wanted position is copied into a scratch directory and the events after it are applied
 * with the engine's own apply step (cs_engine_replay_range), so the answer is exactly what the
 * head office held then and the cost follows the distance to that checkpoint, not the log's
 * length. What a branch should have held is rebuilt by a scratch branch fed the log as
 * segments, through the projection itself.
 *
 * Checkpoint life cycle (cs_audit_checkpoint, and cs_audit_state_at before a query):
 *
 *     none --first use--> every stored --extend--> C(every), C(2 every), ..., C(k every)
 *       ^                                              |
 *       +------- rebuild, or another every ------------+   (drops all, and the history index)
 *
 * Extending replays from the last checkpoint (after checking its chain against the log and its
 * content against its digest) and stores a full copy of the state at each new multiple. Why full
 * copies: a query then loads one checkpoint, never a chain of deltas, so its cost is bounded by
 * the state's size plus `every` events. The price is space: one copy of the state per `every`
 * events (docs/design.md, "Audit", weighs it).
 *
 * Transactions: LMDB allows one read transaction per thread per environment, and the map may
 * only grow while this process has none open. So a reader of the audited log is never held
 * while writing to its environment, and scratch directories are other environments. The
 * invariants of the databases are listed in audit_int.h.
 */
#include "projections/audit_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- scratch directories ----------------------------------------------------------------- */

cs_err cs__audit_scratch(cs_audit *a, uint64_t branch_shop, cs_audit_state **out)
{
    cs_audit_state *s = calloc(1, sizeof(*s));
    if (!s)
        return CS_NO_MEMORY;
    const char *root = getenv("TMPDIR");
    if (!root || !*root)
        root = "/tmp";
    int n = snprintf(s->dir, sizeof(s->dir), "%s/chainsync-audit-XXXXXX", root);
    if (n < 0 || (size_t)n >= sizeof(s->dir) || !mkdtemp(s->dir)) {
        free(s);
        return cs__audit_fail(a, CS_IO, "cannot make a scratch directory under %s: %s", root,
                              strerror(errno));
    }
    /* Thrown away afterwards: durability would only cost fsyncs. */
    cs_log_options opts = {.flags = CS_LOG_NOSYNC};
    cs_err err;
    if (branch_shop == 0) {
        err = cs_engine_open(s->dir, &opts, &s->e);
    } else {
        err = cs_branch_open(s->dir, &opts, &s->b);
        if (err == CS_OK)
            err = cs_branch_bind(s->b, branch_shop);
        if (err == CS_OK)
            s->e = cs_branch_engine(s->b);
    }
    if (err != CS_OK) {
        cs_audit_state_free(s);
        return cs__audit_fail(a, err, "cannot open a scratch directory");
    }
    *out = s;
    return CS_OK;
}

void cs_audit_state_free(cs_audit_state *s)
{
    if (!s)
        return;
    if (s->b)
        cs_branch_close(s->b);
    else
        cs_engine_close(s->e);
    char path[sizeof(s->dir) + 16];
    snprintf(path, sizeof(path), "%s/data.mdb", s->dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/lock.mdb", s->dir);
    unlink(path);
    rmdir(s->dir);
    free(s);
}

const cs_audit_state_info *cs_audit_state_info_get(const cs_audit_state *s)
{
    return &s->info;
}

cs_engine *cs_audit_state_engine(cs_audit_state *s)
{
    return s->e;
}

cs_err cs_audit_seq_at_time(cs_audit *a, uint64_t time_ms, uint64_t *seq_out)
{
    a->errmsg[0] = '\0';
    cs_log_reader *r;
    cs_err err = cs_log_reader_open(a->log, &r);
    if (err != CS_OK)
        return err;
    uint64_t head = 0, first_later = 0;
    err = cs_log_reader_head(r, &head);
    /* The state as of T follows every event with time <= T: stop before the first one after T.
     * Times never decrease along the log, so that event splits it in two. */
    if (err == CS_OK && time_ms == UINT64_MAX)
        first_later = head + 1;
    else if (err == CS_OK)
        err = cs_log_reader_seq_at_time(r, time_ms + 1, &first_later);
    if (err == CS_NOT_FOUND) {
        first_later = head + 1;
        err = CS_OK;
    }
    cs_log_reader_close(r);
    if (err != CS_OK)
        return cs__audit_fail(a, err, "cannot read the log's time index");
    if (first_later == 0 || first_later > head + 1)
        return cs__audit_fail(a, CS_CORRUPT, "the time index names event %llu, past the head",
                              (unsigned long long)first_later);
    *seq_out = first_later - 1;
    return CS_OK;
}

/* ---- checkpoint records ------------------------------------------------------------------- */

cs_err cs__ckpt_header_get(MDB_txn *txn, MDB_dbi ckpt, uint64_t seq, cs__ckpt_header *out)
{
    uint8_t kb[9];
    cs_be64_put(kb, seq);
    kb[8] = CS__CKPT_TAG_HEADER;
    MDB_val k = {9, kb}, v;
    int rc = mdb_get(txn, ckpt, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    if (rc)
        return CS_IO;
    if (v.mv_size != CS__CKPT_HEADER_BYTES)
        return CS_CORRUPT;
    const uint8_t *p = v.mv_data;
    *out = (cs__ckpt_header){.seq = seq,
                             .chain = cs_be64_get(p),
                             .digest = cs_be64_get(p + 8),
                             .time_ms = cs_be64_get(p + 16),
                             .records = cs_be64_get(p + 24)};
    return CS_OK;
}

/* Calls fn for every record of checkpoint seq whose key starts with (seq, prefix...). */
typedef cs_err (*ckpt_rec_fn)(uint8_t tag, const MDB_val *state_key, const MDB_val *val, void *ctx);

static cs_err ckpt_range(MDB_txn *txn, MDB_dbi ckpt, const uint8_t *prefix, size_t prefix_len,
                         ckpt_rec_fn fn, void *ctx)
{
    cs_assert(prefix_len >= 9);
    MDB_cursor *cur;
    if (mdb_cursor_open(txn, ckpt, &cur))
        return CS_IO;
    MDB_val k = {prefix_len, (void *)prefix}, v;
    cs_err err = CS_OK;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; rc == 0 && err == CS_OK; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < prefix_len || memcmp(k.mv_data, prefix, prefix_len) != 0)
            break;
        MDB_val sk = {k.mv_size - 9, (uint8_t *)k.mv_data + 9};
        err = fn(((const uint8_t *)k.mv_data)[8], &sk, &v, ctx);
    }
    mdb_cursor_close(cur);
    if (err == CS_OK && rc != 0 && rc != MDB_NOTFOUND)
        err = CS_IO;
    return err;
}

/* The records of checkpoint seq: all of them, or (code >= 0) that type's items and the
 * network. In key order, which is the order cs_engine_digest hashes the state in. */
static cs_err ckpt_walk(MDB_txn *txn, MDB_dbi ckpt, uint64_t seq, int code, ckpt_rec_fn fn,
                        void *ctx)
{
    uint8_t p[10];
    cs_be64_put(p, seq);
    p[8] = CS__CKPT_TAG_ITEMS;
    p[9] = (uint8_t)code;
    cs_err err = ckpt_range(txn, ckpt, p, code >= 0 ? 10 : 9, fn, ctx);
    p[8] = CS__CKPT_TAG_NETWORK;
    return err == CS_OK ? ckpt_range(txn, ckpt, p, 9, fn, ctx) : err;
}

/* Hashes one record exactly as cs_digest_dbs does: both lengths, the key, the value. */
static void digest_record(XXH3_state_t *st, const MDB_val *k, const MDB_val *v)
{
    cs_digest_kv(st, k, v);
}

typedef struct digest_ctx {
    XXH3_state_t *st;
    uint64_t records;
} digest_ctx;

static cs_err digest_fn(uint8_t tag, const MDB_val *k, const MDB_val *v, void *ctx)
{
    (void)tag;
    digest_ctx *d = ctx;
    digest_record(d->st, k, v);
    d->records++;
    return CS_OK;
}

/* The digest and the number of the records checkpoint seq stores. */
static cs_err ckpt_content(MDB_txn *txn, MDB_dbi ckpt, uint64_t seq, uint64_t *digest,
                           uint64_t *records)
{
    digest_ctx d = {.st = XXH3_createState()};
    if (!d.st)
        return CS_NO_MEMORY;
    XXH3_64bits_reset(d.st);
    cs_err err = ckpt_walk(txn, ckpt, seq, -1, digest_fn, &d);
    if (err == CS_OK) {
        *digest = XXH3_64bits_digest(d.st);
        *records = d.records;
    }
    XXH3_freeState(d.st);
    return err;
}

cs_err cs__ckpt_content_digest(MDB_txn *txn, MDB_dbi ckpt, uint64_t seq, uint64_t *out)
{
    uint64_t records;
    return ckpt_content(txn, ckpt, seq, out, &records);
}

/* What holds of any header this file builds (invariant 1 of audit_int.h, the part a header can
 * say about itself): it follows an event, and a state with no records has the digest of
 * nothing. The rest (chain, digest against the content, the multiple of `every`) is checked
 * where the header is written. */
static bool ckpt_header_invariants_hold(const cs__ckpt_header *h)
{
    return h->seq > 0 && (h->records != 0 || h->digest == XXH3_64bits("", 0));
}

/* Invariant 1, read back inside the transaction that wrote checkpoint h->seq: the header is
 * the one written and the records under it are exactly the state it describes. */
static bool ckpt_written(MDB_txn *txn, MDB_dbi ckpt, const cs__ckpt_header *h)
{
    cs__ckpt_header back;
    uint64_t digest, records;
    if (cs__ckpt_header_get(txn, ckpt, h->seq, &back) != CS_OK ||
        ckpt_content(txn, ckpt, h->seq, &digest, &records) != CS_OK)
        return false;
    return back.chain == h->chain && back.digest == h->digest && back.time_ms == h->time_ms &&
           back.records == h->records && digest == h->digest && records == h->records;
}

/* ---- writing a checkpoint ----------------------------------------------------------------- */

typedef struct ckpt_write_ctx {
    cs_audit *a;
    cs_audit_state *s; /* the scratch state as of h.seq */
    cs__ckpt_header h;
} ckpt_write_ctx;

/* Copies one database of the scratch state under (seq, tag). Keys grow: MDB_APPEND holds as long
 * as every checkpoint is written after the ones before it (invariant 2). */
static cs_err ckpt_copy_db(cs_log_txn *txn, MDB_dbi ckpt, MDB_txn *src, MDB_dbi dbi, uint64_t seq,
                           uint8_t tag)
{
    MDB_cursor *cur;
    if (mdb_cursor_open(src, dbi, &cur))
        return CS_IO;
    uint8_t kb[CS__CKPT_KEY_BYTES_MAX];
    cs_be64_put(kb, seq);
    kb[8] = tag;
    MDB_val k, v;
    int rc;
    cs_err err = CS_OK;
    while (err == CS_OK && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        if (k.mv_size > sizeof(kb) - 9) {
            err = CS_CORRUPT;
            break;
        }
        memcpy(kb + 9, k.mv_data, k.mv_size);
        MDB_val ck = {9 + k.mv_size, kb};
        err = cs_log_txn_put(txn, ckpt, &ck, &v, MDB_APPEND);
    }
    mdb_cursor_close(cur);
    if (err == CS_INVALID_INPUT) /* MDB_KEYEXIST from APPEND: a later checkpoint exists */
        err = CS_CORRUPT;
    if (err == CS_OK && rc != MDB_NOTFOUND)
        err = CS_IO;
    return err;
}

static cs_err ckpt_write_fn(cs_log_txn *txn, void *ctx)
{
    ckpt_write_ctx *c = ctx;
    cs_assert(ckpt_header_invariants_hold(&c->h));
    uint8_t kb[9], hb[CS__CKPT_HEADER_BYTES];
    cs_be64_put(kb, c->h.seq);
    kb[8] = CS__CKPT_TAG_HEADER;
    cs_be64_put(hb, c->h.chain);
    cs_be64_put(hb + 8, c->h.digest);
    cs_be64_put(hb + 16, c->h.time_ms);
    cs_be64_put(hb + 24, c->h.records);
    MDB_val k = {9, kb}, v = {sizeof(hb), hb};
    cs_err err = cs_log_txn_put(txn, c->a->ckpt, &k, &v, MDB_APPEND);
    if (err == CS_INVALID_INPUT)
        return cs__audit_fail(c->a, CS_CORRUPT, "a checkpoint after %llu already exists",
                              (unsigned long long)c->h.seq);
    MDB_txn *src;
    cs_log *src_log = cs_engine_log(c->s->e);
    if (err == CS_OK && (err = cs__audit_read_begin(c->a, src_log, &src)) == CS_OK) {
        err = ckpt_copy_db(txn, c->a->ckpt, src, cs_engine_items_dbi(c->s->e), c->h.seq,
                           CS__CKPT_TAG_ITEMS);
        if (err == CS_OK)
            err = ckpt_copy_db(txn, c->a->ckpt, src, cs_engine_network_dbi(c->s->e), c->h.seq,
                               CS__CKPT_TAG_NETWORK);
        cs_log_read_end(src_log, src);
    }
    if (err == CS_OK)
        err = cs__audit_meta_put(txn, c->a->meta, "ckpt_last", c->h.seq);
    cs_assert(err != CS_OK || ckpt_written(cs_log_txn_mdb(txn), c->a->ckpt, &c->h));
    return err;
}

/* Stores the scratch state (as of seq) as a checkpoint. */
static cs_err ckpt_store(cs_audit *a, cs_audit_state *s, uint64_t seq, uint64_t chain,
                         uint64_t time_ms)
{
    ckpt_write_ctx c = {.a = a, .s = s, .h = {.seq = seq, .chain = chain, .time_ms = time_ms}};
    cs_err err = cs_engine_digest(s->e, &c.h.digest);
    MDB_txn *t;
    MDB_stat si, sn;
    if (err == CS_OK && (err = cs__audit_read_begin(a, cs_engine_log(s->e), &t)) == CS_OK) {
        if (mdb_stat(t, cs_engine_items_dbi(s->e), &si) ||
            mdb_stat(t, cs_engine_network_dbi(s->e), &sn))
            err = CS_IO;
        cs_log_read_end(cs_engine_log(s->e), t);
        c.h.records = si.ms_entries + sn.ms_entries;
    }
    if (err == CS_OK)
        err = cs_log_write(a->log, ckpt_write_fn, &c);
    if (err != CS_OK && !a->errmsg[0])
        cs__audit_fail(a, err, "cannot store the checkpoint at event %llu: %s",
                       (unsigned long long)seq, cs_log_errmsg(a->log));
    return err;
}

/* ---- loading a checkpoint ----------------------------------------------------------------- */

typedef struct ckpt_load_ctx {
    cs_audit *a;
    cs_audit_state *s;
    cs_log_txn *txn; /* the scratch's write transaction */
    uint64_t seq;
    int code; /* -1: everything */
    XXH3_state_t *st;
} ckpt_load_ctx;

static cs_err load_put(uint8_t tag, const MDB_val *k, const MDB_val *v, void *ctx)
{
    ckpt_load_ctx *c = ctx;
    MDB_dbi dbi =
        tag == CS__CKPT_TAG_ITEMS ? cs_engine_items_dbi(c->s->e) : cs_engine_network_dbi(c->s->e);
    if (c->st)
        digest_record(c->st, k, v);
    MDB_val kk = *k, vv = *v;
    return cs_log_txn_put(c->txn, dbi, &kk, &vv, MDB_APPEND);
}

static cs_err ckpt_load_fn(cs_log_txn *txn, void *ctx)
{
    ckpt_load_ctx *c = ctx;
    c->txn = txn;
    if (c->st)
        XXH3_64bits_reset(c->st);
    MDB_txn *src;
    cs_err err = cs__audit_read_begin(c->a, c->a->log, &src);
    if (err != CS_OK)
        return err;
    cs__ckpt_header h;
    err = cs__ckpt_header_get(src, c->a->ckpt, c->seq, &h);
    if (err == CS_OK)
        err = ckpt_walk(src, c->a->ckpt, c->seq, c->code, load_put, c);
    cs_log_read_end(c->a->log, src);
    if (err == CS_INVALID_INPUT) /* MDB_KEYEXIST: the checkpoint's keys are out of order */
        err = CS_CORRUPT;
    if (err == CS_OK && c->st && XXH3_64bits_digest(c->st) != h.digest)
        err = cs__audit_fail(c->a, CS_CORRUPT,
                             "checkpoint %llu does not match its digest: it was damaged "
                             "(`chainsync audit checkpoint --rebuild` rebuilds it from the log)",
                             (unsigned long long)c->seq);
    return err;
}

/* Loads checkpoint seq into an empty scratch state, after checking it still belongs to this
 * log: its chain must be the log's chain at seq, or the log was changed after it was taken. */
static cs_err ckpt_load(cs_audit *a, cs_audit_state *s, uint64_t seq, const cs_type *only)
{
    uint64_t head, chain = 0;
    cs_err err = cs__audit_log_point(a, seq, &head, &chain, NULL);
    MDB_txn *t;
    cs__ckpt_header h = {0};
    if (err == CS_OK && (err = cs__audit_read_begin(a, a->log, &t)) == CS_OK) {
        err = cs__ckpt_header_get(t, a->ckpt, seq, &h);
        cs_log_read_end(a->log, t);
    }
    if (err == CS_OK && h.chain != chain)
        return cs__audit_fail(a, CS_CORRUPT,
                              "checkpoint %llu does not match the log's event %llu: the log "
                              "changed after it was taken (run `chainsync audit verify`)",
                              (unsigned long long)seq, (unsigned long long)seq);
    if (err != CS_OK)
        return a->errmsg[0]
                   ? err
                   : cs__audit_fail(a, err, "cannot read checkpoint %llu", (unsigned long long)seq);
    ckpt_load_ctx c = {.a = a, .s = s, .seq = seq, .code = only ? only->code : -1};
    if (!only && !(c.st = XXH3_createState()))
        return CS_NO_MEMORY;
    err = cs_log_write(cs_engine_log(s->e), ckpt_load_fn, &c);
    XXH3_freeState(c.st);
    if (err != CS_OK && !a->errmsg[0])
        cs__audit_fail(a, err, "cannot load checkpoint %llu", (unsigned long long)seq);
    return err;
}

/* The greatest checkpoint <= seq, 0 when none. */
static cs_err ckpt_nearest(cs_audit *a, uint64_t seq, uint64_t *out)
{
    MDB_txn *t;
    MDB_cursor *cur;
    cs_err err = cs__audit_read_begin(a, a->log, &t);
    if (err != CS_OK)
        return err;
    if (mdb_cursor_open(t, a->ckpt, &cur)) {
        cs_log_read_end(a->log, t);
        return CS_IO;
    }
    uint8_t kb[9];
    cs_be64_put(kb, seq + 1);
    kb[8] = CS__CKPT_TAG_HEADER;
    MDB_val k = {9, kb}, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    rc = mdb_cursor_get(cur, &k, &v, rc == 0 ? MDB_PREV : MDB_LAST);
    uint64_t cp = 0;
    if (rc == 0 && k.mv_size >= 9) {
        cs__ckpt_header h;
        cp = cs_be64_get(k.mv_data); /* < seq + 1: every key of a checkpoint starts with it */
        err = cs__ckpt_header_get(t, a->ckpt, cp, &h);
        if (err == CS_NOT_FOUND)
            err = cs__audit_fail(a, CS_CORRUPT, "checkpoint %llu has no header",
                                 (unsigned long long)cp);
    } else if (rc != 0 && rc != MDB_NOTFOUND) {
        err = CS_IO;
    }
    mdb_cursor_close(cur);
    cs_log_read_end(a->log, t);
    if (err == CS_OK)
        *out = cp;
    return err;
}

/* ---- extending -------------------------------------------------------------------------- */

typedef struct reset_ctx {
    cs_audit *a;
    uint64_t every;
    bool drop;
} reset_ctx;

/* Stores the interval; with drop, empties the checkpoints and the history index too. */
static cs_err reset_fn(cs_log_txn *txn, void *ctx)
{
    reset_ctx *c = ctx;
    MDB_txn *m = cs_log_txn_mdb(txn);
    if (c->drop && (mdb_drop(m, c->a->ckpt, 0) || mdb_drop(m, c->a->history, 0)))
        return CS_IO;
    cs_err err = cs__audit_meta_put(txn, c->a->meta, "every", c->every);
    if (err == CS_OK && c->drop)
        err = cs__audit_meta_put(txn, c->a->meta, "ckpt_last", 0);
    if (err == CS_OK && c->drop)
        err = cs__audit_meta_put(txn, c->a->meta, "history_seq", 0);
    if (err == CS_OK && c->drop)
        err = cs__audit_meta_put(txn, c->a->meta, "history_chain", 0);
    return err;
}

static cs_err meta_read(cs_audit *a, uint64_t *every, uint64_t *last)
{
    MDB_txn *t;
    cs_err err = cs_log_read_begin(a->log, &t);
    if (err != CS_OK)
        return cs__audit_fail(a, err, "cannot read the audit's state: %s", cs_log_errmsg(a->log));
    *every = cs__audit_meta_get(t, a->meta, "every");
    *last = cs__audit_meta_get(t, a->meta, "ckpt_last");
    cs_log_read_end(a->log, t);
    return CS_OK;
}

/* Settles the interval: the stored one, else every_req or the default; a change drops all. */
static cs_err ckpt_settle(cs_audit *a, uint64_t every_req, bool rebuild, uint64_t *every,
                          uint64_t *last)
{
    cs_err err = meta_read(a, every, last);
    if (err != CS_OK)
        return err;
    uint64_t want = every_req ? every_req : (*every ? *every : CS_AUDIT_EVERY_DEFAULT);
    /* Read from disk: invariant 2 (checkpoints at multiples of `every`) is checked, not
     * assumed, since ckpt_build relies on it. */
    bool inconsistent = *every > CS_AUDIT_EVERY_MAX || (*every == 0 ? *last != 0 : *last % *every);
    if (!rebuild && want == *every && inconsistent)
        return cs__audit_fail(a, CS_CORRUPT,
                              "the audit's checkpoint records are inconsistent (last %llu, every "
                              "%llu): `chainsync audit checkpoint --rebuild` rebuilds them",
                              (unsigned long long)*last, (unsigned long long)*every);
    if (!rebuild && want == *every)
        return CS_OK;
    reset_ctx c = {.a = a, .every = want, .drop = rebuild || *every != 0 || *last != 0};
    err = cs_log_write(a->log, reset_fn, &c);
    if (err != CS_OK)
        return cs__audit_fail(a, err, "cannot reset the checkpoints: %s", cs_log_errmsg(a->log));
    *every = want;
    if (c.drop)
        *last = 0;
    return CS_OK;
}

/* Replays from checkpoint `last` (0: from the start) to the head, storing one checkpoint per
 * multiple of every. *built gets how many were stored. */
static cs_err ckpt_build(cs_audit *a, uint64_t every, uint64_t last, uint64_t head, uint64_t *built)
{
    cs_assert(every > 0);
    cs_assert(every <= CS_AUDIT_EVERY_MAX);
    cs_assert(last % every == 0); /* invariant 2: ckpt_settle checked it or dropped them all */
    cs_assert(head - last >= every);
    cs_audit_state *s = NULL;
    cs__audit_base_info base;
    cs_err err = cs__audit_base(a, &base);
    if (err == CS_OK)
        err = cs__audit_scratch(a, 0, &s);
    uint64_t cur = last;
    if (err == CS_OK && last > 0 && last >= base.seq) {
        err = ckpt_load(a, s, last, NULL);
    } else if (err == CS_OK && base.seq > 0) { /* a cut log: from its snapshot (invariant 2 */
        cur = base.seq;                        /* holds from the first multiple after it) */
        err = cs__audit_base_load(a, s, 0);
    }
    for (; err == CS_OK && head >= (cur / every + 1) * every; cur = (cur / every + 1) * every) {
        cs_log_reader *r = NULL;
        uint64_t target = (cur / every + 1) * every, chain = 0, time_ms = 0, h2;
        err = cs_log_reader_open(a->log, &r);
        if (err == CS_OK)
            err = cs_engine_replay_range(s->e, r, cur + 1, target, NULL);
        if (err != CS_OK)
            cs__audit_fail(a, err, "cannot replay events %llu to %llu: %s",
                           (unsigned long long)cur + 1, (unsigned long long)target,
                           cs_engine_errmsg(s->e));
        cs_log_reader_close(r);
        if (err == CS_OK)
            err = cs__audit_log_point(a, target, &h2, &chain, &time_ms);
        cs_assert(err != CS_OK || target % every == 0); /* invariant 2 */
        if (err == CS_OK)
            err = ckpt_store(a, s, target, chain, time_ms);
        if (err == CS_OK)
            (*built)++;
        cs_progress_report(&a->progress, target, head, false);
    }
    cs_audit_state_free(s);
    return err;
}

static cs_err ckpt_extend(cs_audit *a, uint64_t every_req, bool rebuild, cs_audit_ckpt_info *info)
{
    uint64_t every = 0, last = 0, head = 0;
    cs_err err = ckpt_settle(a, every_req, rebuild, &every, &last);
    if (err == CS_OK)
        err = cs__audit_log_point(a, 0, &head, NULL, NULL);
    if (err != CS_OK)
        return err;
    if (last > head)
        return cs__audit_fail(a, CS_CORRUPT,
                              "checkpoint %llu is past the log's head %llu: the log lost events "
                              "(run `chainsync audit verify`)",
                              (unsigned long long)last, (unsigned long long)head);
    uint64_t built = 0;
    if (head - last >= every)
        err = ckpt_build(a, every, last, head, &built);
    uint64_t now_last = err == CS_OK && built ? head / every * every : last;
    cs__audit_base_info base = {0};
    if (info && err == CS_OK)
        err = cs__audit_base(a, &base);
    if (info) /* after a cut the first checkpoints (up to the snapshot) do not exist */
        *info = (cs_audit_ckpt_info){
            .every = every,
            .last = now_last,
            .count = now_last > base.seq ? now_last / every - base.seq / every : 0,
            .built = built,
            .head = head};
    return err;
}

void cs_audit_set_progress(cs_audit *a, const cs_progress *p)
{
    a->progress = p ? *p : (cs_progress){0};
}

cs_err cs_audit_checkpoint(cs_audit *a, uint64_t every, bool rebuild, cs_audit_ckpt_info *info)
{
    a->errmsg[0] = '\0';
    if (every > CS_AUDIT_EVERY_MAX)
        return cs__audit_fail(a, CS_INVALID_INPUT, "checkpoints every %llu events: at most %llu",
                              (unsigned long long)every, (unsigned long long)CS_AUDIT_EVERY_MAX);
    cs_err err = ckpt_extend(a, every, rebuild, info);
    if (err == CS_OK)
        err = cs__history_extend(a);
    return err;
}

/* ---- past states ------------------------------------------------------------------------- */

cs_err cs_audit_state_at(cs_audit *a, uint64_t seq, const char *type, unsigned flags,
                         cs_audit_state **out)
{
    a->errmsg[0] = '\0';
    const cs_type *only = NULL;
    if (type && !(only = cs_schema_find(type)))
        return cs__audit_fail(a, CS_UNKNOWN_TYPE, "'%s' is not a type", type);
    if (only && only->cls == CS_CLASS_LOCAL)
        return cs__audit_fail(a, CS_INVALID_INPUT, "%s is shop-local: it is never logged (R9)",
                              only->name);
    cs_err err = CS_OK;
    if (!(flags & (CS_AUDIT_FULL_REPLAY | CS_AUDIT_NO_EXTEND)))
        err = ckpt_extend(a, 0, false, NULL);
    uint64_t head, time_ms = 0, cp = 0;
    if (err == CS_OK)
        err = cs__audit_log_point(a, seq, &head, NULL, &time_ms);
    if (err == CS_OK && seq > 0 && !(flags & CS_AUDIT_FULL_REPLAY))
        err = ckpt_nearest(a, seq, &cp);
    cs_assert(cp <= seq);
    cs__audit_base_info base = {0};
    if (err == CS_OK)
        err = cs__audit_base(a, &base);
    if (err == CS_OK && base.seq > seq)
        err = cs__audit_fail(a, CS_NOT_FOUND,
                             "events before %llu were cut from this log (log compact): the state "
                             "as of event %llu can no longer be rebuilt; it can from event %llu on",
                             (unsigned long long)base.start, (unsigned long long)seq,
                             (unsigned long long)base.seq);
    cs_audit_state *s = NULL;
    if (err == CS_OK)
        err = cs__audit_scratch(a, 0, &s);
    if (err == CS_OK && cp > 0 && cp >= base.seq) {
        err = ckpt_load(a, s, cp, only);
    } else if (err == CS_OK && base.seq > 0) { /* no checkpoint since the cut: the snapshot */
        cp = base.seq;
        err = cs__audit_base_load(a, s, 0);
    }
    cs_log_reader *r = NULL;
    if (err == CS_OK && seq > cp && (err = cs_log_reader_open(a->log, &r)) == CS_OK) {
        err = cs_engine_replay_range(s->e, r, cp + 1, seq, only);
        if (err != CS_OK)
            cs__audit_fail(a, err, "%s", cs_engine_errmsg(s->e));
        cs_log_reader_close(r);
    }
    if (err != CS_OK) {
        cs_audit_state_free(s);
        return err;
    }
    s->only = only;
    s->info = (cs_audit_state_info){
        .seq = seq, .time_ms = time_ms, .from_checkpoint = cp, .replayed = seq - cp};
    *out = s;
    return CS_OK;
}

/* True when the network has (or had) a shop record for `shop`. */
static bool shop_known(cs_audit *a, uint64_t shop)
{
    MDB_txn *t;
    if (cs_log_read_begin(a->log, &t) != CS_OK)
        return false;
    uint8_t kb[13];
    memcpy(kb, "shop:", 5);
    cs_be64_put(kb + 5, shop);
    MDB_val k = {13, kb}, v;
    bool known = mdb_get(t, cs_engine_network_dbi(a->e), &k, &v) == 0;
    cs_log_read_end(a->log, t);
    return known;
}

/* Feeds events 1..seq to the scratch branch as export-sized segments; after a cut, from the
 * snapshot's part for this shop (loaded first) on. */
cs_err cs__audit_branch_feed(cs_audit *a, cs_audit_state *s, uint64_t shop, uint64_t seq)
{
    cs__audit_base_info base;
    cs_err err = cs__audit_base(a, &base);
    if (err == CS_OK && base.seq > seq)
        return cs__audit_fail(a, CS_NOT_FOUND,
                              "events before %llu were cut from this log (log compact): what a "
                              "branch held at event %llu can no longer be rebuilt; it can from "
                              "event %llu on",
                              (unsigned long long)base.start, (unsigned long long)seq,
                              (unsigned long long)base.seq);
    if (err == CS_OK && base.seq > 0)
        err = cs__audit_base_load(a, s, shop);
    cs_log_reader *r = NULL;
    if (err == CS_OK)
        err = cs_log_reader_open(a->log, &r);
    for (uint64_t from = base.seq + 1; err == CS_OK && from <= seq;) {
        uint8_t *seg = NULL;
        size_t len;
        uint64_t last;
        err = cs_segment_encode(r, from, seq, CS_EXPORT_SEGMENT_BYTES, &seg, &len, &last);
        if (err != CS_OK)
            cs__audit_fail(a, err, "%s", cs_log_reader_errmsg(r));
        if (err == CS_OK && (err = cs_branch_apply_segment(s->b, seg, len, NULL)) != CS_OK)
            cs__audit_fail(a, err, "replaying the branch: %s", cs_branch_errmsg(s->b));
        free(seg);
        from = last + 1;
    }
    cs_log_reader_close(r);
    return err;
}

cs_err cs_audit_branch_at(cs_audit *a, uint64_t seq, uint64_t shop, cs_audit_state **out)
{
    a->errmsg[0] = '\0';
    if (a->branch_dir)
        return cs__audit_fail(a, CS_FORBIDDEN,
                              "this directory is a branch: its log holds only its own writes; "
                              "ask the head office (--data HEAD --branch %llu)",
                              (unsigned long long)shop);
    if (!shop_known(a, shop))
        return cs__audit_fail(a, CS_NOT_FOUND, "shop %llu is no branch of this network",
                              (unsigned long long)shop);
    uint64_t head, time_ms = 0;
    cs_err err = cs__audit_log_point(a, seq, &head, NULL, &time_ms);
    cs_audit_state *s = NULL;
    if (err == CS_OK)
        err = cs__audit_scratch(a, shop, &s);
    if (err == CS_OK)
        err = cs__audit_branch_feed(a, s, shop, seq);
    if (err != CS_OK) {
        cs_audit_state_free(s);
        return err;
    }
    s->info = (cs_audit_state_info){.seq = seq, .time_ms = time_ms, .replayed = seq, .shop = shop};
    *out = s;
    return CS_OK;
}

/* ---- a state as JSON ---------------------------------------------------------------------- */

typedef struct unmap_ctx {
    MDB_txn *t;
    MDB_dbi items;
    msgpack_zone z;
} unmap_ctx;

/* A reference to a branch's copy becomes the head-office id of its origin; anything else (a
 * shared record, a catalog item the branch has no copy of) already is a head-office id. */
static cs_err unmap_ref(const cs_type *target, uint64_t id, uint64_t *mapped, void *ctx)
{
    unmap_ctx *u = ctx;
    *mapped = id;
    if (target->cls != CS_CLASS_SYNCED)
        return CS_OK;
    cs_item it;
    msgpack_zone_clear(&u->z);
    cs_err err = cs_item_read(u->t, u->items, target, id, &u->z, &it);
    if (err == CS_NOT_FOUND)
        return CS_OK;
    if (err != CS_OK)
        return err;
    if (it.has_origin)
        *mapped = it.origin[1];
    else if (it.has_detached)
        *mapped = it.detached[1];
    return CS_OK;
}

cs_err cs__audit_unmap_fields(MDB_txn *t, MDB_dbi items, const cs_type *type,
                              const msgpack_object *fields, msgpack_sbuffer *out)
{
    unmap_ctx u = {.t = t, .items = items};
    if (!msgpack_zone_init(&u.z, 1024))
        return CS_NO_MEMORY;
    cs_err err = cs_schema_remap(type, fields, unmap_ref, &u, out);
    msgpack_zone_destroy(&u.z);
    return err;
}

static json_t *ju64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

/* Appends v to arr, taking the reference; false when out of memory. */
static bool append_new(json_t *arr, json_t *v)
{
    return v && json_array_append_new(arr, v) == 0;
}

/* {"self","net","shops":[...]} from a state's network database. */
static cs_err network_json(MDB_txn *t, MDB_dbi dbi, json_t **out)
{
    json_t *o = json_pack("{s:n,s:n,s:[]}", "self", "net", "shops");
    MDB_cursor *cur;
    if (!o)
        return CS_NO_MEMORY;
    if (mdb_cursor_open(t, dbi, &cur)) {
        json_decref(o);
        return CS_IO;
    }
    MDB_val k, v;
    int rc;
    cs_err err = CS_OK;
    while (err == CS_OK && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        json_t *j = json_loadb(v.mv_data, v.mv_size, 0, NULL);
        if (!j) {
            err = CS_CORRUPT;
        } else if (k.mv_size == 13 && memcmp(k.mv_data, "shop:", 5) == 0) {
            err = append_new(json_object_get(o, "shops"), j) ? CS_OK : CS_NO_MEMORY;
        } else if ((k.mv_size == 4 && memcmp(k.mv_data, "self", 4) == 0) ||
                   (k.mv_size == 3 && memcmp(k.mv_data, "net", 3) == 0)) {
            char key[5] = {0};
            memcpy(key, k.mv_data, k.mv_size);
            err = json_object_set_new(o, key, j) ? CS_NO_MEMORY : CS_OK;
        } else {
            json_decref(j); /* a record this version does not know: not part of the answer */
        }
    }
    mdb_cursor_close(cur);
    if (err == CS_OK && rc != MDB_NOTFOUND)
        err = CS_IO;
    if (err != CS_OK) {
        json_decref(o);
        return err;
    }
    *out = o;
    return CS_OK;
}

/* One listed item: sorted by type code, then the id it is shown under. */
typedef struct listed {
    uint8_t code;
    uint64_t id;
    json_t *j;
} listed;

static int listed_cmp(const void *x, const void *y)
{
    const listed *a = x, *b = y;
    if (a->code != b->code)
        return a->code < b->code ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

typedef struct list_ctx {
    listed *v;
    size_t n, cap;
    msgpack_zone z;
} list_ctx;

static cs_err list_push(list_ctx *l, uint8_t code, uint64_t id, json_t *j)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        listed *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            json_decref(j);
            return CS_NO_MEMORY;
        }
        l->v = v, l->cap = cap;
    }
    l->v[l->n++] = (listed){code, id, j};
    return CS_OK;
}

/* The JSON of one record; a branch's copy is shown under its origin's id with its references
 * translated back (branch == true). */
static cs_err item_json(list_ctx *l, MDB_txn *t, MDB_dbi items, const MDB_val *k, const MDB_val *v,
                        bool branch)
{
    const uint8_t *kb = k->mv_data;
    const cs_type *type = k->mv_size == 9 ? cs_schema_by_code(kb[0]) : NULL;
    cs_item it;
    msgpack_zone_clear(&l->z);
    if (!type || cs_item_parse(v, &l->z, &it) != CS_OK)
        return CS_CORRUPT;
    uint64_t id = cs_be64_get(kb + 1);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    cs_err err = CS_OK;
    if (branch && (it.has_origin || it.has_detached)) {
        id = it.has_origin ? it.origin[1] : it.detached[1];
        err = cs__audit_unmap_fields(t, items, type, &it.fields, &sb);
        size_t off = 0;
        if (err == CS_OK &&
            msgpack_unpack(sb.data, sb.size, &off, &l->z, &it.fields) != MSGPACK_UNPACK_SUCCESS)
            err = CS_NO_MEMORY;
    }
    json_t *j = NULL;
    if (err == CS_OK)
        err = cs_item_json(type, id, &it, &j);
    msgpack_sbuffer_destroy(&sb);
    return err == CS_OK ? list_push(l, kb[0], id, j) : err;
}

static cs_err items_json(MDB_txn *t, MDB_dbi items, const cs_type *only, bool branch, json_t *arr)
{
    list_ctx l = {0};
    MDB_cursor *cur;
    if (!msgpack_zone_init(&l.z, 4096))
        return CS_NO_MEMORY;
    if (mdb_cursor_open(t, items, &cur)) {
        msgpack_zone_destroy(&l.z);
        return CS_IO;
    }
    uint8_t kb[9] = {only ? only->code : 0};
    MDB_val k = {9, kb}, v;
    cs_err err = CS_OK;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; rc == 0 && err == CS_OK; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (only && (k.mv_size < 1 || ((const uint8_t *)k.mv_data)[0] != only->code))
            break;
        err = item_json(&l, t, items, &k, &v, branch);
    }
    mdb_cursor_close(cur);
    if (err == CS_OK && rc != 0 && rc != MDB_NOTFOUND)
        err = CS_IO;
    if (err == CS_OK && l.n > 1)
        qsort(l.v, l.n, sizeof(*l.v), listed_cmp);
    for (size_t i = 0; i < l.n; i++) { /* the array takes every reference, even after a failure */
        if (err == CS_OK && json_array_append_new(arr, l.v[i].j))
            err = CS_NO_MEMORY;
        else if (err != CS_OK)
            json_decref(l.v[i].j);
    }
    free(l.v);
    msgpack_zone_destroy(&l.z);
    return err;
}

static json_t *types_json(cs_type_set set)
{
    unsigned n;
    const cs_type *t = cs_schema_types(&n);
    json_t *arr = json_array();
    for (unsigned i = 0; arr && i < n; i++)
        if (cs_type_set_has(set, t[i].code) && !append_new(arr, json_string(t[i].name))) {
            json_decref(arr);
            return NULL;
        }
    return arr;
}

static cs_err branch_json(cs_audit_state *s, MDB_txn *t, json_t **out)
{
    cs__bstate st;
    cs_err err = cs__state_load(s->b, t, &st);
    if (err != CS_OK)
        return err;
    json_t *o = json_pack("{s:o,s:o,s:o,s:o,s:b,s:b,s:b,s:b,s:o}", "shop", ju64(st.shop), "head",
                          ju64(st.head), "cursor", ju64(st.cursor), "sync_seq", ju64(st.sync_seq),
                          "linked", st.linked, "switch", st.sync_on, "continuous", st.continuous,
                          "unlinked", st.unlinked, "types", types_json(st.types_mask));
    if (!o)
        return CS_NO_MEMORY;
    *out = o;
    return CS_OK;
}

cs_err cs_audit_state_json(cs_audit_state *s, const char *type, json_t **out)
{
    const cs_type *only = NULL;
    if (type && !(only = cs_schema_find(type)))
        return CS_UNKNOWN_TYPE;
    if (s->only && only != s->only)
        return CS_INVALID_INPUT; /* this state holds only s->only's items */
    if (!only)
        only = s->only;
    json_t *o = json_pack("{s:o,s:o,s:o,s:o}", "seq", ju64(s->info.seq), "time",
                          s->info.seq ? ju64(s->info.time_ms) : json_null(), "from_checkpoint",
                          ju64(s->info.from_checkpoint), "replayed", ju64(s->info.replayed));
    if (!o)
        return CS_NO_MEMORY;
    MDB_txn *t;
    cs_err err = cs_log_read_begin(cs_engine_log(s->e), &t);
    if (err != CS_OK) {
        json_decref(o);
        return err;
    }
    json_t *part = NULL;
    err = s->b ? branch_json(s, t, &part) : network_json(t, cs_engine_network_dbi(s->e), &part);
    if (err == CS_OK && json_object_set_new(o, s->b ? "branch" : "network", part))
        err = CS_NO_MEMORY;
    json_t *items = json_array();
    if (err == CS_OK && (!items || json_object_set(o, "items", items)))
        err = CS_NO_MEMORY;
    if (err == CS_OK)
        err = items_json(t, cs_engine_items_dbi(s->e), only, s->b != NULL, items);
    json_decref(items);
    cs_log_read_end(cs_engine_log(s->e), t);
    if (err != CS_OK) {
        json_decref(o);
        return err;
    }
    *out = o;
    return CS_OK;
}
