/*
 * snapshot.c: retention (`log compact`) and the snapshots that make it safe. It owns the
 * head office's `snapshot` database, the byte layout of a snapshot part (the same bytes on disk
 * and on the wire: docs/storage.md "snapshot"), the compaction (build, store, verify, cut,
 * trim), a branch's bootstrap from a part, and the audit's base when its log was cut.
 *
 * Compaction, in this order (each step only after the one before succeeded):
 *
 *   refuse?   branches linked at S = before - 1 whose cursor is below S (unless --force)
 *   build     the base (the head office's state at S, by the audit's replay), the ANY part
 *             (a scratch branch bound to no shop, fed events 1..S) and one part per branch
 *             behind (a scratch branch bound to it, fed 1..S): the same replays `audit as-of`
 *             runs, so a part is by construction what an uncut replay gives
 *   store     one write transaction replaces the `snapshot` database
 *   verify    a read transaction reads every part back: checksum, record order, digest equal to
 *             the replay's digest taken when it was built
 *   cut       cs_log_txn_cut(before), and the audit's checkpoints and history index (derived,
 *             droppable) are dropped in the same transaction: they would name cut events
 *   trim      cs_log_trim deletes the prefix in short transactions
 *
 * A crash before `cut` leaves the log whole (a snapshot at S >= start - 1 is harmless: any
 * branch at or past start - 1 streams as before); after it, the next compaction resumes the trim.
 * Invariant: when the log is cut, the snapshot's seq is >= start - 1 and its base exists.
 */
#include "projections/audit_int.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* Record database codes of a part (docs/storage.md "snapshot"). */
enum {
    SN_ITEMS = 1,
    SN_NETWORK = 2,
    SN_ORIGIN = 3,
    SN_MIRROR = 4,
    SN_DIRTY = 5,
    SN_BRANCH = 6,
    SN_LOCAL = 7, /* the next_id counter only; not in the digest */
};

#define SN_MAGIC "CSSN"
#define SN_VERSION 1u
#define SN_RECORD_PREFIX 7u /* db u8, key length u16, value length u32 */
#define SN_KEY_BYTES_MAX 511u

/* ---- the bytes of a part ------------------------------------------------------------------ */

typedef struct snap_buf {
    uint8_t *p;
    size_t len, cap;
    uint32_t records;
    XXH3_state_t *st;
} snap_buf;

static cs_err buf_room(snap_buf *b, size_t n)
{
    if (b->len + n > CS_SNAPSHOT_BYTES_MAX)
        return CS_STORAGE_FULL;
    if (b->len + n <= b->cap)
        return CS_OK;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + n)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return CS_NO_MEMORY;
    b->p = p;
    b->cap = cap;
    return CS_OK;
}

static cs_err buf_record(snap_buf *b, uint8_t db, const MDB_val *k, const MDB_val *v)
{
    if (k->mv_size > SN_KEY_BYTES_MAX || v->mv_size > UINT32_MAX)
        return CS_CORRUPT;
    cs_err err = buf_room(b, SN_RECORD_PREFIX + k->mv_size + v->mv_size);
    if (err != CS_OK)
        return err;
    uint8_t *p = b->p + b->len;
    p[0] = db;
    cs_be16_put(p + 1, (uint16_t)k->mv_size);
    cs_be32_put(p + 3, (uint32_t)v->mv_size);
    memcpy(p + SN_RECORD_PREFIX, k->mv_data, k->mv_size);
    memcpy(p + SN_RECORD_PREFIX + k->mv_size, v->mv_data, v->mv_size);
    b->len += SN_RECORD_PREFIX + k->mv_size + v->mv_size;
    b->records++;
    if (db != SN_LOCAL)
        cs_digest_kv(b->st, k, v);
    return CS_OK;
}

/* Appends every record of one database of a scratch state. */
static cs_err buf_db(snap_buf *b, MDB_txn *t, MDB_dbi dbi, uint8_t db)
{
    MDB_cursor *cur;
    if (mdb_cursor_open(t, dbi, &cur))
        return CS_IO;
    MDB_val k, v;
    int rc;
    cs_err err = CS_OK;
    while (err == CS_OK && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0)
        err = buf_record(b, db, &k, &v);
    mdb_cursor_close(cur);
    return err == CS_OK && rc != MDB_NOTFOUND ? CS_IO : err;
}

/* Writes the header over the first CS_SNAPSHOT_HEADER_BYTES, the checksum last. */
static void buf_finish(snap_buf *b, const cs_snapshot_info *in)
{
    uint8_t *h = b->p;
    memcpy(h, SN_MAGIC, 4);
    cs_be16_put(h + 4, SN_VERSION);
    cs_be16_put(h + 6, (uint16_t)CS_SCHEMA_VERSION);
    cs_be64_put(h + 8, in->seq);
    cs_be64_put(h + 16, in->chain);
    cs_be64_put(h + 24, in->time_ms);
    cs_be64_put(h + 32, in->shop);
    cs_be32_put(h + 40, b->records);
    cs_be32_put(h + 44, (uint32_t)(b->len - CS_SNAPSHOT_HEADER_BYTES));
    cs_be64_put(h + 48, XXH3_64bits_digest(b->st));
    uint64_t seed = XXH3_64bits(h, 56);
    cs_be64_put(h + 56, XXH3_64bits_withSeed(h + CS_SNAPSHOT_HEADER_BYTES,
                                             b->len - CS_SNAPSHOT_HEADER_BYTES, seed));
}

static cs_err buf_init(snap_buf *b)
{
    *b = (snap_buf){0};
    if (!(b->st = XXH3_createState()))
        return CS_NO_MEMORY;
    XXH3_64bits_reset(b->st);
    cs_err err = buf_room(b, CS_SNAPSHOT_HEADER_BYTES);
    b->len = CS_SNAPSHOT_HEADER_BYTES;
    return err;
}

static void buf_free(snap_buf *b)
{
    free(b->p);
    XXH3_freeState(b->st);
    *b = (snap_buf){0};
}

/* LMDB's default key order: memcmp over the shorter length, then the shorter first. */
static int key_cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

typedef cs_err (*snap_rec_fn)(uint8_t db, const MDB_val *k, const MDB_val *v, void *ctx);

/* Walks the records of a checked part. */
static cs_err snap_walk(const uint8_t *buf, size_t len, snap_rec_fn fn, void *ctx)
{
    size_t pos = CS_SNAPSHOT_HEADER_BYTES;
    cs_err err = CS_OK;
    while (err == CS_OK && pos < len) {
        size_t kl = cs_be16_get(buf + pos + 1), vl = cs_be32_get(buf + pos + 3);
        MDB_val k = {kl, (void *)(buf + pos + SN_RECORD_PREFIX)};
        MDB_val v = {vl, (void *)(buf + pos + SN_RECORD_PREFIX + kl)};
        err = fn(buf[pos], &k, &v, ctx);
        pos += SN_RECORD_PREFIX + kl + vl;
    }
    return err;
}

cs_err cs_snapshot_parse(const uint8_t *buf, size_t len, cs_snapshot_info *out)
{
    if (len < CS_SNAPSHOT_HEADER_BYTES || len > CS_SNAPSHOT_BYTES_MAX ||
        memcmp(buf, SN_MAGIC, 4) != 0)
        return CS_CORRUPT;
    if (cs_be16_get(buf + 4) != SN_VERSION || cs_be16_get(buf + 6) > CS_SCHEMA_VERSION)
        return CS_PROTOCOL_MISMATCH; /* a newer snapshot format or schema than this program's */
    cs_snapshot_info in = {.seq = cs_be64_get(buf + 8),
                           .chain = cs_be64_get(buf + 16),
                           .time_ms = cs_be64_get(buf + 24),
                           .shop = cs_be64_get(buf + 32),
                           .records = cs_be32_get(buf + 40),
                           .digest = cs_be64_get(buf + 48),
                           .schema = cs_be16_get(buf + 6),
                           .bytes = len};
    if (cs_be32_get(buf + 44) != len - CS_SNAPSHOT_HEADER_BYTES || in.seq == 0)
        return CS_CORRUPT;
    uint64_t seed = XXH3_64bits(buf, 56);
    if (XXH3_64bits_withSeed(buf + CS_SNAPSHOT_HEADER_BYTES, len - CS_SNAPSHOT_HEADER_BYTES,
                             seed) != cs_be64_get(buf + 56))
        return CS_CORRUPT;
    XXH3_state_t *st = XXH3_createState();
    if (!st)
        return CS_NO_MEMORY;
    XXH3_64bits_reset(st);
    size_t pos = CS_SNAPSHOT_HEADER_BYTES;
    uint32_t n = 0;
    uint8_t last_db = 0;
    const uint8_t *last_k = NULL;
    size_t last_kl = 0;
    cs_err err = CS_OK;
    while (err == CS_OK && pos < len) {
        if (len - pos < SN_RECORD_PREFIX) {
            err = CS_CORRUPT;
            break;
        }
        uint8_t db = buf[pos];
        size_t kl = cs_be16_get(buf + pos + 1), vl = cs_be32_get(buf + pos + 3);
        const uint8_t *k = buf + pos + SN_RECORD_PREFIX;
        /* Databases in order, keys strictly increasing within one: what lets the branch write
         * them with MDB_APPEND and what makes the digest the state's. */
        if (db < SN_ITEMS || db > SN_LOCAL || db < last_db || kl == 0 || kl > SN_KEY_BYTES_MAX ||
            len - pos - SN_RECORD_PREFIX < kl || len - pos - SN_RECORD_PREFIX - kl < vl ||
            (db == last_db && key_cmp(last_k, last_kl, k, kl) >= 0)) {
            err = CS_CORRUPT;
            break;
        }
        if (db != SN_LOCAL) {
            MDB_val kv = {kl, (void *)k}, vv = {vl, (void *)(k + kl)};
            cs_digest_kv(st, &kv, &vv);
        }
        last_db = db;
        last_k = k;
        last_kl = kl;
        pos += SN_RECORD_PREFIX + kl + vl;
        n++;
    }
    uint64_t digest = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    if (err == CS_OK && (n != in.records || digest != in.digest))
        err = CS_CORRUPT;
    if (err == CS_OK)
        *out = in;
    return err;
}

/* ---- the `snapshot` database -------------------------------------------------------------- */

static void shop_key(uint8_t kb[8], uint64_t shop)
{
    cs_be64_put(kb, shop);
}

cs_err cs_snapshot_get(cs_log *log, uint64_t shop, uint8_t **out, size_t *len)
{
    MDB_dbi dbi;
    cs_err err = cs_log_dbi_find(log, "snapshot", &dbi);
    if (err != CS_OK)
        return err;
    MDB_txn *t;
    if ((err = cs_log_read_begin(log, &t)) != CS_OK)
        return err;
    uint8_t kb[8];
    shop_key(kb, shop);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(t, dbi, &k, &v);
    if (rc == MDB_NOTFOUND && shop != CS_SNAPSHOT_SHOP_BASE) {
        shop_key(kb, CS_SNAPSHOT_SHOP_ANY);
        rc = mdb_get(t, dbi, &k, &v);
    }
    uint8_t *copy = NULL;
    if (rc == 0 && (copy = malloc(v.mv_size ? v.mv_size : 1)) != NULL)
        memcpy(copy, v.mv_data, v.mv_size);
    size_t n = v.mv_size;
    cs_log_read_end(log, t);
    if (rc)
        return rc == MDB_NOTFOUND ? CS_NOT_FOUND : CS_IO;
    if (!copy)
        return CS_NO_MEMORY;
    *out = copy;
    *len = n;
    return CS_OK;
}

/* ---- a branch's bootstrap ----------------------------------------------------------------- */

typedef struct boot_ctx {
    cs_branch *b;
    const uint8_t *buf;
    size_t len;
    cs_snapshot_info in;
    cs_log_txn *txn;
    uint64_t next_id; /* the part's counter, 0 when it has none */
    bool skipped;
} boot_ctx;

/* A record of the part: written to its database. An item may overwrite a copy or a shared
 * record, never a local item of a catalog type (R3). */
static cs_err boot_put(uint8_t db, const MDB_val *k, const MDB_val *v, void *ctx)
{
    boot_ctx *c = ctx;
    cs_branch *b = c->b;
    MDB_txn *m = cs_log_txn_mdb(c->txn);
    MDB_val kk = *k, vv = *v, old;
    switch (db) {
    case SN_ITEMS: {
        const cs_type *t =
            k->mv_size == 9 ? cs_schema_by_code(((const uint8_t *)k->mv_data)[0]) : NULL;
        if (t && t->cls == CS_CLASS_SYNCED && mdb_get(m, b->items, &kk, &old) == 0) {
            cs_item it;
            msgpack_zone_clear(&b->zone);
            if (cs_item_parse_header(&old, &b->zone, &it) == CS_OK && !it.has_origin)
                return cs__branch_fail(
                    b, CS_INVALID_INPUT,
                    "local %s %llu holds an id the snapshot gives a copy: "
                    "unlink this branch and join it again",
                    t->name, (unsigned long long)cs_be64_get((const uint8_t *)k->mv_data + 1));
        }
        return cs_log_txn_put(c->txn, b->items, &kk, &vv, 0);
    }
    case SN_ORIGIN:
        return cs_log_txn_put(c->txn, b->origin, &kk, &vv, MDB_APPEND);
    case SN_MIRROR:
        return cs_log_txn_put(c->txn, b->mirror, &kk, &vv, MDB_APPEND);
    case SN_DIRTY:
        return cs_log_txn_put(c->txn, b->dirty, &kk, &vv, MDB_APPEND);
    case SN_BRANCH:
        return cs_log_txn_put(c->txn, b->meta, &kk, &vv, 0);
    case SN_LOCAL:
        if (k->mv_size == 7 && memcmp(k->mv_data, "next_id", 7) == 0 && v->mv_size == 8)
            memcpy(&c->next_id, v->mv_data, 8); /* host order, as the engine keeps it */
        return CS_OK;
    default: /* SN_NETWORK: the head office's records, never a branch's */
        return cs__branch_fail(b, CS_INVALID_INPUT, "a head office's snapshot is no branch's");
    }
}

/* The counter moves to the greater of the branch's and the part's: ids stay unique. */
static cs_err boot_next_id(boot_ctx *c)
{
    MDB_txn *m = cs_log_txn_mdb(c->txn);
    MDB_val k = {7, "next_id"}, v;
    uint64_t have = 1;
    int rc = mdb_get(m, c->b->local, &k, &v);
    if (rc == 0 && v.mv_size == 8)
        memcpy(&have, v.mv_data, 8);
    else if (rc != MDB_NOTFOUND)
        return CS_CORRUPT;
    if (c->next_id <= have)
        return CS_OK;
    v = (MDB_val){8, &c->next_id};
    return cs_log_txn_put(c->txn, c->b->local, &k, &v, 0);
}

static cs_err boot_fn(cs_log_txn *txn, void *ctx)
{
    boot_ctx *c = ctx;
    cs_branch *b = c->b;
    MDB_txn *m = cs_log_txn_mdb(txn);
    c->txn = txn;
    c->next_id = 0;
    c->skipped = false;
    cs_err err = b->bind_shop ? cs__bind_write(b, txn) : CS_OK;
    cs__bstate st;
    if (err == CS_OK)
        err = cs__state_load(b, m, &st);
    if (err != CS_OK)
        return err;
    if (st.shop == 0)
        return cs__branch_fail(b, CS_NOT_IN_NETWORK, "this directory is not a branch yet");
    if (c->in.shop != CS_SNAPSHOT_SHOP_ANY && c->in.shop != st.shop)
        return cs__branch_fail(b, CS_INVALID_INPUT, "the snapshot is branch %llu's, not %llu's",
                               (unsigned long long)c->in.shop, (unsigned long long)st.shop);
    if (st.cursor >= c->in.seq) {
        c->skipped = true; /* it holds that position already: segments continue from it */
        return CS_OK;
    }
    if (mdb_drop(m, b->origin, 0) || mdb_drop(m, b->mirror, 0) || mdb_drop(m, b->dirty, 0))
        return CS_IO;
    if ((err = snap_walk(c->buf, c->len, boot_put, c)) == CS_OK)
        err = boot_next_id(c);
    cs__bstate now;
    if (err == CS_OK)
        err = cs__state_load(b, m, &now);
    if (err == CS_OK && (now.cursor != c->in.seq || now.chain != c->in.chain))
        return cs__branch_fail(b, CS_CORRUPT, "the snapshot's state is not at its own position");
    if (err == CS_OK && now.shop != st.shop) { /* the ANY part: this branch's id */
        now.shop = st.shop;
        err = cs__state_save(b, txn, &now);
    }
    return err;
}

cs_err cs_branch_bootstrap(cs_branch *b, const uint8_t *buf, size_t len, uint64_t *seq_out)
{
    b->errmsg[0] = '\0';
    boot_ctx c = {.b = b, .buf = buf, .len = len};
    cs_err err = cs_snapshot_parse(buf, len, &c.in);
    if (err == CS_PROTOCOL_MISMATCH)
        return cs__branch_fail(b, err,
                               "the snapshot was written by a newer chainsync (format %u, schema "
                               "%u; this one reads 1 and %u): upgrade this branch",
                               (unsigned)cs_be16_get(buf + 4), (unsigned)cs_be16_get(buf + 6),
                               (unsigned)CS_SCHEMA_VERSION);
    if (err != CS_OK)
        return cs__branch_fail(b, err, "the snapshot does not verify (checksum or records)");
    if (c.in.shop == CS_SNAPSHOT_SHOP_BASE)
        return cs__branch_fail(b, CS_INVALID_INPUT, "a head office's snapshot is no branch's");
    err = cs_log_write(cs_engine_log(b->engine), boot_fn, &c);
    if (err == CS_OK)
        b->bind_shop = 0;
    if (err == CS_OK && seq_out)
        *seq_out = c.in.seq;
    return err;
}

/* ---- the audit's base after a cut --------------------------------------------------------- */

cs_err cs__audit_base(cs_audit *a, cs__audit_base_info *out)
{
    *out = (cs__audit_base_info){0};
    cs_log_reader *r;
    cs_err err = cs_log_reader_open(a->log, &r);
    if (err != CS_OK)
        return cs__audit_fail(a, err, "cannot read the log: %s", cs_log_errmsg(a->log));
    cs_log_start st;
    err = cs_log_reader_start(r, &st);
    cs_log_reader_close(r);
    if (err != CS_OK || !st.cut)
        return err;
    out->start = st.seq;
    uint8_t *buf = NULL;
    size_t len = 0;
    cs_snapshot_info in;
    err = cs_snapshot_get(a->log, CS_SNAPSHOT_SHOP_BASE, &buf, &len);
    if (err == CS_OK)
        err = cs_snapshot_parse(buf, len, &in);
    free(buf);
    if (err == CS_NOT_FOUND)
        return cs__audit_fail(a, CS_CORRUPT,
                              "the log starts at event %llu but its snapshot is missing",
                              (unsigned long long)st.seq);
    if (err != CS_OK)
        return cs__audit_fail(a, err == CS_PROTOCOL_MISMATCH ? err : CS_CORRUPT,
                              "the log's snapshot does not verify");
    if (in.seq + 1 < st.seq)
        return cs__audit_fail(a, CS_CORRUPT,
                              "the snapshot is at event %llu but the log starts at %llu",
                              (unsigned long long)in.seq, (unsigned long long)st.seq);
    out->seq = in.seq;
    out->chain = in.chain;
    out->time_ms = in.time_ms;
    return CS_OK;
}

typedef struct base_load_ctx {
    cs_audit_state *s;
    const uint8_t *buf;
    size_t len;
    cs_log_txn *txn;
} base_load_ctx;

static cs_err base_put(uint8_t db, const MDB_val *k, const MDB_val *v, void *ctx)
{
    base_load_ctx *c = ctx;
    MDB_dbi dbi = db == SN_ITEMS ? cs_engine_items_dbi(c->s->e) : cs_engine_network_dbi(c->s->e);
    if (db != SN_ITEMS && db != SN_NETWORK)
        return CS_CORRUPT;
    MDB_val kk = *k, vv = *v;
    return cs_log_txn_put(c->txn, dbi, &kk, &vv, MDB_APPEND);
}

static cs_err base_load_fn(cs_log_txn *txn, void *ctx)
{
    base_load_ctx *c = ctx;
    c->txn = txn;
    return snap_walk(c->buf, c->len, base_put, c);
}

cs_err cs__audit_base_load(cs_audit *a, cs_audit_state *s, uint64_t shop)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    cs_snapshot_info in;
    uint64_t want = s->b ? shop : CS_SNAPSHOT_SHOP_BASE;
    cs_err err = cs_snapshot_get(a->log, want, &buf, &len);
    if (err == CS_OK)
        err = cs_snapshot_parse(buf, len, &in);
    if (err == CS_OK && s->b) {
        if ((err = cs_branch_bootstrap(s->b, buf, len, NULL)) != CS_OK)
            cs__audit_fail(a, err, "cannot load the snapshot: %s", cs_branch_errmsg(s->b));
    } else if (err == CS_OK) {
        base_load_ctx c = {.s = s, .buf = buf, .len = len};
        err = cs_log_write(cs_engine_log(s->e), base_load_fn, &c);
    }
    free(buf);
    if (err != CS_OK && !a->errmsg[0])
        cs__audit_fail(a, err, "cannot load the log's snapshot");
    return err;
}

/* ---- compaction --------------------------------------------------------------------------- */

#define COMPACT_PARTS_MAX 4096u /* base, ANY and one per linked branch */

typedef struct part {
    uint64_t shop;
    snap_buf buf;
    uint64_t digest; /* the replay's own digest of the state encoded */
} part;

typedef struct compact_ctx {
    cs_audit *a;
    uint64_t seq, chain, time_ms, before;
    part *parts;
    size_t n;
    MDB_dbi snap;
} compact_ctx;

/* Encodes a scratch state (as of c->seq) as the part of `shop`. */
static cs_err part_encode(compact_ctx *c, cs_audit_state *s, uint64_t shop)
{
    part *p = &c->parts[c->n];
    *p = (part){.shop = shop};
    cs_err err = buf_init(&p->buf);
    cs_log *log = cs_engine_log(s->e);
    MDB_txn *t;
    if (err == CS_OK)
        err = s->b ? cs_branch_digest(s->b, &p->digest) : cs_engine_digest(s->e, &p->digest);
    if (err != CS_OK || (err = cs_log_read_begin(log, &t)) != CS_OK) {
        buf_free(&p->buf);
        return err;
    }
    if (!s->b) {
        err = buf_db(&p->buf, t, cs_engine_items_dbi(s->e), SN_ITEMS);
        if (err == CS_OK)
            err = buf_db(&p->buf, t, cs_engine_network_dbi(s->e), SN_NETWORK);
    } else {
        cs_branch *b = s->b;
        const MDB_dbi dbis[5] = {b->items, b->origin, b->mirror, b->dirty, b->meta};
        const uint8_t codes[5] = {SN_ITEMS, SN_ORIGIN, SN_MIRROR, SN_DIRTY, SN_BRANCH};
        for (size_t i = 0; err == CS_OK && i < 5; i++)
            err = buf_db(&p->buf, t, dbis[i], codes[i]);
        MDB_val k = {7, "next_id"}, v;
        if (err == CS_OK && mdb_get(t, b->local, &k, &v) == 0)
            err = buf_record(&p->buf, SN_LOCAL, &k, &v);
    }
    cs_log_read_end(log, t);
    if (err == CS_OK) {
        buf_finish(&p->buf,
                   &(cs_snapshot_info){
                       .seq = c->seq, .chain = c->chain, .time_ms = c->time_ms, .shop = shop});
        c->n++;
    } else {
        buf_free(&p->buf);
    }
    if (err == CS_STORAGE_FULL)
        cs__audit_fail(c->a, err, "the snapshot of shop %llu is over %u MiB",
                       (unsigned long long)shop, CS_SNAPSHOT_BYTES_MAX >> 20);
    return err;
}

static cs_err store_fn(cs_log_txn *txn, void *ctx)
{
    compact_ctx *c = ctx;
    if (mdb_drop(cs_log_txn_mdb(txn), c->snap, 0))
        return CS_IO;
    cs_err err = CS_OK;
    for (size_t i = 0; err == CS_OK && i < c->n; i++) {
        uint8_t kb[8];
        shop_key(kb, c->parts[i].shop);
        MDB_val k = {8, kb}, v = {c->parts[i].buf.len, c->parts[i].buf.p};
        err = cs_log_txn_put(txn, c->snap, &k, &v, 0);
    }
    return err;
}

/* Reads every part back from disk and checks it against the replay it was encoded from. */
static cs_err compact_verify(compact_ctx *c)
{
    for (size_t i = 0; i < c->n; i++) {
        uint8_t *buf = NULL;
        size_t len = 0;
        cs_snapshot_info in;
        cs_err err = cs_snapshot_get(c->a->log, c->parts[i].shop, &buf, &len);
        if (err == CS_OK && (err = cs_snapshot_parse(buf, len, &in)) == CS_OK &&
            (in.digest != c->parts[i].digest || in.seq != c->seq || in.chain != c->chain ||
             in.shop != c->parts[i].shop || len != c->parts[i].buf.len))
            err = CS_CORRUPT;
        free(buf);
        if (err != CS_OK)
            return cs__audit_fail(c->a, err == CS_NOT_FOUND ? CS_CORRUPT : err,
                                  "the snapshot of shop %llu does not read back as written: "
                                  "nothing was cut",
                                  (unsigned long long)c->parts[i].shop);
    }
    return CS_OK;
}

static cs_err cut_fn(cs_log_txn *txn, void *ctx)
{
    compact_ctx *c = ctx;
    cs_audit *a = c->a;
    cs_err err = cs_log_txn_cut(txn, c->before);
    MDB_txn *m = cs_log_txn_mdb(txn);
    /* Derived data naming cut events: rebuilt from the snapshot by the next audit command. */
    if (err == CS_OK && (mdb_drop(m, a->ckpt, 0) || mdb_drop(m, a->history, 0)))
        err = CS_IO;
    if (err == CS_OK)
        err = cs__audit_meta_put(txn, a->meta, "ckpt_last", 0);
    if (err == CS_OK)
        err = cs__audit_meta_put(txn, a->meta, "history_seq", 0);
    if (err == CS_OK)
        err = cs__audit_meta_put(txn, a->meta, "history_chain", 0);
    return err;
}

/* The branches linked at the snapshot's position (its `network` records) into `linked`, and
 * into `out` those whose cursor as the server last recorded it (`status`; none: never
 * connected) is below seq: the branches behind the cut. */
static cs_err compact_stranded(compact_ctx *c, cs_audit_state *base, json_t *linked, json_t *out)
{
    cs_log *log = cs_engine_log(base->e);
    MDB_txn *t;
    MDB_cursor *cur;
    cs_err err = cs_log_read_begin(log, &t);
    if (err != CS_OK)
        return err;
    if (mdb_cursor_open(t, cs_engine_network_dbi(base->e), &cur)) {
        cs_log_read_end(log, t);
        return CS_IO;
    }
    MDB_val k = {5, "shop:"}, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; err == CS_OK && rc == 0 && k.mv_size == 13 && memcmp(k.mv_data, "shop:", 5) == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        json_t *j = json_loadb(v.mv_data, v.mv_size, 0, NULL);
        uint64_t shop = cs_be64_get((const uint8_t *)k.mv_data + 5);
        if (j && json_is_true(json_object_get(j, "linked"))) {
            json_array_append_new(linked, json_integer((json_int_t)shop));
            cs_shop_status st;
            cs_err e2 = cs_engine_shop_status_get(c->a->e, shop, &st);
            bool seen = e2 == CS_OK;
            if (e2 != CS_OK && e2 != CS_NOT_FOUND)
                err = e2;
            else if (!seen || st.cursor < c->seq)
                json_array_append_new(
                    out,
                    json_pack("{s:I,s:O,s:o}", "shop", (json_int_t)shop, "name",
                              json_object_get(j, "name") ? json_object_get(j, "name") : json_null(),
                              "cursor", seen ? json_integer((json_int_t)st.cursor) : json_null()));
        }
        json_decref(j);
    }
    mdb_cursor_close(cur);
    cs_log_read_end(log, t);
    return err;
}

/* "2 (cursor 50), 3 (never connected)" */
static void stranded_names(const json_t *arr, char *buf, size_t len)
{
    size_t n = 0, i;
    json_t *x;
    buf[0] = '\0';
    json_array_foreach(arr, i, x)
    {
        json_t *cur = json_object_get(x, "cursor");
        int w = cur && json_is_integer(cur)
                    ? snprintf(buf + n, len - n, "%s%lld (cursor %lld)", i ? ", " : "",
                               (long long)json_integer_value(json_object_get(x, "shop")),
                               (long long)json_integer_value(cur))
                    : snprintf(buf + n, len - n, "%s%lld (never connected)", i ? ", " : "",
                               (long long)json_integer_value(json_object_get(x, "shop")));
        if (w < 0 || (size_t)w >= len - n)
            break;
        n += (size_t)w;
    }
}

/* Builds every part: the base, ANY, and one per branch linked at the snapshot's position
 * (not only those behind: a branch that loses its directory later joins again from its own
 * part, since the ANY part does not know it was linked). */
static cs_err compact_build(compact_ctx *c, cs_audit_state *base, const json_t *linked)
{
    cs_err err = part_encode(c, base, CS_SNAPSHOT_SHOP_BASE);
    cs_audit_state *s = NULL;
    if (err == CS_OK)
        err = cs__audit_scratch(c->a, CS_SNAPSHOT_SHOP_ANY, &s);
    if (err == CS_OK)
        err = cs__audit_branch_feed(c->a, s, CS_SNAPSHOT_SHOP_ANY, c->seq);
    if (err == CS_OK)
        err = part_encode(c, s, CS_SNAPSHOT_SHOP_ANY);
    cs_audit_state_free(s);
    size_t i;
    json_t *x;
    json_array_foreach(linked, i, x)
    {
        if (err != CS_OK)
            break;
        uint64_t shop = (uint64_t)json_integer_value(x);
        s = NULL;
        if ((err = cs_audit_branch_at(c->a, c->seq, shop, &s)) == CS_OK)
            err = part_encode(c, s, shop);
        cs_audit_state_free(s);
    }
    return err;
}

cs_err cs_audit_compact(cs_audit *a, uint64_t before, bool force, cs_compact_result *out)
{
    a->errmsg[0] = '\0';
    *out = (cs_compact_result){.before = before, .seq = before ? before - 1 : 0};
    if (a->branch_dir || a->read_only)
        return cs__audit_fail(a, CS_FORBIDDEN,
                              "only a head office or single store compacts its log; a branch's "
                              "own log holds only its writes");
    cs__audit_base_info base;
    uint64_t head = 0;
    cs_err err = cs__audit_base(a, &base);
    if (err == CS_OK)
        err = cs__audit_log_point(a, 0, &head, NULL, NULL);
    if (err != CS_OK)
        return err;
    if (base.start && before == base.start) /* cut already: finish a trim a crash interrupted */
        return cs_log_trim(a->log, &out->deleted);
    if (base.start && before < base.start)
        return cs__audit_fail(a, CS_NOT_FOUND,
                              "the log already starts at event %llu: events before %llu are gone",
                              (unsigned long long)base.start, (unsigned long long)before);
    if (before < 2 || before > head)
        return cs__audit_fail(a, CS_INVALID_INPUT,
                              "--before %llu: it must be between 2 and the head (%llu), so that "
                              "at least the last event stays",
                              (unsigned long long)before, (unsigned long long)head);
    compact_ctx c = {.a = a, .seq = before - 1, .before = before};
    if ((err = cs__audit_log_point(a, c.seq, &head, &c.chain, &c.time_ms)) != CS_OK)
        return err;
    cs_audit_state *bs = NULL;
    json_t *linked = json_array();
    out->stranded = json_array();
    if (!out->stranded || !linked) {
        json_decref(linked);
        return CS_NO_MEMORY;
    }
    if ((err = cs_audit_state_at(a, c.seq, NULL, CS_AUDIT_NO_EXTEND, &bs)) == CS_OK)
        err = compact_stranded(&c, bs, linked, out->stranded);
    size_t ns = json_array_size(out->stranded), nl = json_array_size(linked);
    if (err == CS_OK && nl + 2 > COMPACT_PARTS_MAX)
        err = cs__audit_fail(a, CS_INVALID_INPUT, "%zu linked branches: at most %u", nl,
                             COMPACT_PARTS_MAX - 2);
    if (err == CS_OK && ns > 0 && !force) {
        char names[400];
        stranded_names(out->stranded, names, sizeof(names));
        err = cs__audit_fail(a, CS_FORBIDDEN,
                             "cutting before event %llu would strand %zu linked branch%s behind "
                             "it, which would then need a snapshot: %s; --force cuts anyway and "
                             "bootstraps them from the snapshot",
                             (unsigned long long)before, ns, ns == 1 ? "" : "es", names);
    }
    if (err == CS_OK && !(c.parts = calloc(nl + 2, sizeof(*c.parts))))
        err = CS_NO_MEMORY;
    if (err == CS_OK)
        err = compact_build(&c, bs, linked);
    cs_audit_state_free(bs);
    json_decref(linked);
    if (err == CS_OK && (err = cs_log_dbi_open(a->log, "snapshot", 0, &c.snap)) == CS_OK &&
        (err = cs_log_write(a->log, store_fn, &c)) != CS_OK)
        cs__audit_fail(a, err, "cannot store the snapshot: %s", cs_log_errmsg(a->log));
    if (err == CS_OK)
        err = compact_verify(&c);
    if (err == CS_OK && (err = cs_log_write(a->log, cut_fn, &c)) != CS_OK && !a->errmsg[0])
        cs__audit_fail(a, err, "cannot record the cut: %s", cs_log_errmsg(a->log));
    if (err == CS_OK && (err = cs_log_trim(a->log, &out->deleted)) != CS_OK)
        cs__audit_fail(a, err,
                       "the cut is recorded; deleting the events before it stopped (run "
                       "the same log compact again to finish): %s",
                       cs_log_errmsg(a->log));
    for (size_t i = 0; i < c.n; i++) {
        out->bytes += c.parts[i].buf.len;
        buf_free(&c.parts[i].buf);
    }
    out->parts = c.n;
    free(c.parts);
    return err;
}
