/*
 * apply.c: the apply benchmark of SPEC section 8: how many events per second a branch applies
 * into its catalog while catching up, beside raw LMDB putting the same keys and bytes in the
 * same transaction sizes, measured in the same run. Target: ours/raw >= 0.5.
 *
 * The head office's log is built directly with cs_log_append (much faster than the engine):
 * `network`, the branch's `shop_add`, a few categories, then service puts spread over
 * BENCH_ITEMS items (random item, its next version, a fresh fields map of a service), in two
 * shapes:
 *   (a) one sync point at the end: every put lands in the mirror and the dirty set, and the
 *       final `sync` event writes one copy per item;
 *   (b) a `sync` event every BENCH_SYNC_EVERY events: each sync point writes a copy for every
 *       item put since the last one (remapping its category reference).
 * The log is cut into segments of BENCH_SEGMENT_EVENTS events, encoded once, untimed. Timed:
 * only cs_branch_apply_segment over those segments on a fresh, bound branch directory (each
 * segment one transaction: checksums and chain verified, events decoded and applied, cursor
 * saved, commit).
 *
 * Raw LMDB, the ceiling: one environment, one database, for every put event of the log one
 * mdb_put of the item's 9-byte key (type code, id) and a value of the same bytes the branch
 * received for that event (the stored record: checksum, chain, msgpack event), in transactions
 * of the same event ranges as the segments. Both rates are the log's events over the time
 * taken (raw has no put for a `sync` event: 0.1% fewer in shape b). Both sides pre-size their
 * map (no growth), and run durable (fsync per commit, the default) and then without sync
 * (CS_LOG_NOSYNC / MDB_NOSYNC).
 *
 * Where a branch's time goes (callgrind over the applies of 100,000 events, shape b): before the
 * batch (projections/batch.c) 63,000 instructions per event, a third decoding events with
 * msgpack-c and 56% in sync points (per item and sync point a mirror read and decode, the remap,
 * the old copy's read and the new copy's write); with it 36,000: each item's mirror entry and
 * copy are written once per transaction (about half the events of a 10,000-event segment touch
 * an item already touched), catalog events leave their fields undecoded until the copy is
 * written (cs_event_decode_lazy), and what remains is about 30% event decoding (msgpack-c's
 * unpacker per header key and value, and the bounds and UTF-8 check of the whole event), 35%
 * writing copies (remap, the old copy's header, the put) and 20% mirror puts. Raw LMDB does one
 * put per event.
 *
 * Usage: apply [--quick] [--events N] [--shape end|every]. --quick is the ctest smoke run (20,000
 * events over 1,000 items). Exit status: 0 when every run completed (a MISS is a finding, not a
 * failure), 1 on an error, 2 on bad usage. Temporary directories live under /tmp and are removed.
 */
#include "bench/bench.h"
#include "projections/projection.h"

#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BENCH_EVENTS_DEFAULT 1000000u
#define BENCH_ITEMS_DEFAULT 10000u
#define BENCH_QUICK_EVENTS 20000u
#define BENCH_QUICK_ITEMS 1000u
#define BENCH_EVENTS_MAX 20000000u  /* --events bound: the segments are held in memory */
#define BENCH_SYNC_EVERY 1000u      /* shape (b): a sync point every this many events */
#define BENCH_SEGMENT_EVENTS 10000u /* events per segment = per transaction, both sides */
#define BENCH_CATEGORIES 16u
#define BENCH_HEAD_SHOP 1000u
#define BENCH_BRANCH_SHOP 2000u
/* Per event in a map: the head's log keeps every event (~300 bytes and its indexes); a branch
 * and raw LMDB keep one record per item but churn pages; 1 KiB an event covers both. */
#define BENCH_MAP_BYTES_PER_EVENT 1024u
#define BENCH_MAP_BYTES_MIN ((size_t)256 * 1024 * 1024)
#define TARGET_RATIO_MIN 0.5

_Static_assert(BENCH_SEGMENT_EVENTS <= CS_SEGMENT_EVENTS_MAX, "a segment holds its events");
_Static_assert(BENCH_SEGMENT_EVENTS % BENCH_SYNC_EVERY == 0, "sync points align to segments");

typedef struct shape {
    const char *name;
    bool sync_every; /* (b) */
} shape;

/* A log cut into segments, in memory. */
typedef struct segs {
    size_t n;
    uint8_t **buf;
    size_t *len;
    uint64_t *last;
    uint64_t events;
} segs;

static uint64_t rng_next(uint64_t *s) /* xorshift64*: the same log every run */
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* ---- the head office's log --------------------------------------------------------------- */

#define PACK_LIT(pk, lit) msgpack_pack_str_with_body((pk), (lit), sizeof(lit) - 1)

static uint64_t item_id(uint64_t n)
{
    return ((uint64_t)BENCH_HEAD_SHOP << 32) | n;
}

/* A service's fields in schema order: name, category, description, duration_min,
 * price_table (two tiers), active. About 150 bytes, like a real service. */
static int pack_service(msgpack_packer *pk, uint64_t item, uint64_t version)
{
    char name[48];
    int len = snprintf(name, sizeof(name), "Bath and brush %" PRIu64 " v%" PRIu64, item, version);
    int rc = msgpack_pack_map(pk, 6);
    rc |= PACK_LIT(pk, "name");
    rc |= msgpack_pack_str_with_body(pk, name, (size_t)len);
    rc |= PACK_LIT(pk, "category");
    rc |= msgpack_pack_uint64(pk, item_id(1 + item % BENCH_CATEGORIES));
    rc |= PACK_LIT(pk, "description");
    rc |= PACK_LIT(pk, "Shampoo, conditioner, dry and brush; nails on request");
    rc |= PACK_LIT(pk, "duration_min");
    rc |= msgpack_pack_uint64(pk, 30 + (version % 4) * 15);
    rc |= PACK_LIT(pk, "price_table");
    rc |= msgpack_pack_array(pk, 2);
    for (int t = 0; t < 2; t++) {
        rc |= msgpack_pack_map(pk, 2);
        rc |= PACK_LIT(pk, "tier");
        rc |= t ? PACK_LIT(pk, "large") : PACK_LIT(pk, "small");
        rc |= PACK_LIT(pk, "price_cents");
        rc |= msgpack_pack_uint64(pk, 4500 + (uint64_t)t * 3000 + version % 1000);
    }
    rc |= PACK_LIT(pk, "active");
    rc |= version % 10 ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    return rc;
}

/* One event's fields packed into sb; the event's strings are literals. */
static int head_event(msgpack_packer *pk, msgpack_sbuffer *sb, cs_event *ev, cs_kind kind,
                      const char *type, uint64_t id, uint64_t version)
{
    msgpack_sbuffer_clear(sb);
    int rc;
    if (kind == CS_KIND_NETWORK) {
        rc = msgpack_pack_map(pk, 3);
        rc |= PACK_LIT(pk, "name") | PACK_LIT(pk, "Pet chain");
        rc |= PACK_LIT(pk, "mode") | PACK_LIT(pk, "on-trigger");
        rc |= PACK_LIT(pk, "types") | msgpack_pack_array(pk, 3);
        rc |= PACK_LIT(pk, "service_category") | PACK_LIT(pk, "service") | PACK_LIT(pk, "combo");
    } else if (kind == CS_KIND_SHOP_ADD) {
        rc = msgpack_pack_map(pk, 2);
        rc |= PACK_LIT(pk, "name") | PACK_LIT(pk, "Downtown");
        rc |= PACK_LIT(pk, "role") | PACK_LIT(pk, "branch");
    } else if (kind == CS_KIND_SYNC) {
        rc = msgpack_pack_map(pk, 0);
    } else if (strcmp(type, "service_category") == 0) {
        rc = msgpack_pack_map(pk, 1);
        rc |= PACK_LIT(pk, "name") | PACK_LIT(pk, "Grooming");
    } else {
        rc = pack_service(pk, id & 0xffffffffu, version);
        id = item_id(id);
    }
    *ev = (cs_event){.shop = BENCH_HEAD_SHOP,
                     .id = id,
                     .version = version,
                     .actor = CS_STR("admin"),
                     .kind = cs_kind_str(kind),
                     .type = {type, strlen(type)},
                     .fields = (const uint8_t *)sb->data,
                     .fields_len = sb->size};
    return rc;
}

/* Appends events one call per event is too slow for a million: they are gathered into
 * batches whose fields live in one buffer (pointers set once the buffer stops moving). */
typedef struct batch {
    msgpack_sbuffer one; /* one event's fields */
    msgpack_packer pk;
    msgpack_sbuffer all; /* the batch's fields, back to back */
    cs_event ev[BENCH_SEGMENT_EVENTS];
    size_t end[BENCH_SEGMENT_EVENTS];
    size_t n;
} batch;

static int batch_add(batch *b, cs_kind kind, const char *type, uint64_t id, uint64_t version)
{
    if (head_event(&b->pk, &b->one, &b->ev[b->n], kind, type, id, version) != 0 ||
        msgpack_sbuffer_write(&b->all, b->one.data, b->one.size) != 0)
        return -1;
    b->end[b->n++] = b->all.size;
    return 0;
}

static int batch_flush(batch *b, cs_log *log)
{
    for (size_t i = 0, start = 0; i < b->n; start = b->end[i++]) {
        b->ev[i].fields = (const uint8_t *)b->all.data + start;
        b->ev[i].fields_len = b->end[i] - start;
    }
    cs_err err = b->n ? cs_log_append(log, b->ev, b->n, NULL) : CS_OK;
    if (err != CS_OK)
        fprintf(stderr, "apply: cs_log_append: %s: %s\n", cs_err_name(err), cs_log_errmsg(log));
    b->n = 0;
    msgpack_sbuffer_clear(&b->all);
    return err == CS_OK ? 0 : -1;
}

/* The head's log of `events` events (header included) in the given shape. */
static int build_log(cs_log *log, uint64_t events, uint64_t items, const shape *sh)
{
    batch *b = calloc(1, sizeof(*b));
    uint64_t *versions = calloc(items + 1, sizeof(uint64_t)), rs = 0x2545f4914f6cdd1dull;
    if (!b || !versions) {
        free(b);
        free(versions);
        return -1;
    }
    msgpack_sbuffer_init(&b->one);
    msgpack_sbuffer_init(&b->all);
    msgpack_packer_init(&b->pk, &b->one, msgpack_sbuffer_write);
    int rc = batch_add(b, CS_KIND_NETWORK, "", 0, 0) |
             batch_add(b, CS_KIND_SHOP_ADD, "", BENCH_BRANCH_SHOP, 0);
    for (uint64_t c = 1; c <= BENCH_CATEGORIES; c++)
        rc |= batch_add(b, CS_KIND_PUT, "service_category", item_id(c), 1);
    for (uint64_t seq = 2 + BENCH_CATEGORIES + 1; rc == 0 && seq <= events; seq++) {
        bool sync = seq == events || (sh->sync_every && seq % BENCH_SYNC_EVERY == 0);
        if (sync) {
            rc = batch_add(b, CS_KIND_SYNC, "", 0, 0);
        } else {
            uint64_t item = BENCH_CATEGORIES + 1 + rng_next(&rs) % items;
            rc = batch_add(b, CS_KIND_PUT, "service", item, ++versions[item - BENCH_CATEGORIES]);
        }
        if (rc == 0 && b->n == BENCH_SEGMENT_EVENTS)
            rc = batch_flush(b, log);
    }
    if (rc == 0)
        rc = batch_flush(b, log);
    msgpack_sbuffer_destroy(&b->one);
    msgpack_sbuffer_destroy(&b->all);
    free(b);
    free(versions);
    return rc;
}

static void segs_free(segs *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->buf[i]);
    free(s->buf);
    free(s->len);
    free(s->last);
    memset(s, 0, sizeof(*s));
}

/* Cuts the log into segments of BENCH_SEGMENT_EVENTS events. */
static int encode_segments(cs_log *log, segs *s)
{
    cs_log_reader *r;
    uint64_t head = 0;
    if (cs_log_reader_open(log, &r) != CS_OK || cs_log_reader_head(r, &head) != CS_OK)
        return -1;
    size_t cap = (size_t)(head / BENCH_SEGMENT_EVENTS + 2);
    s->buf = calloc(cap, sizeof(*s->buf));
    s->len = calloc(cap, sizeof(*s->len));
    s->last = calloc(cap, sizeof(*s->last));
    int rc = s->buf && s->len && s->last ? 0 : -1;
    for (uint64_t first = 1; rc == 0 && first <= head; s->n++) {
        uint64_t last_max = first + BENCH_SEGMENT_EVENTS - 1;
        cs_err err = s->n < cap ? cs_segment_encode(r, first, last_max < head ? last_max : head,
                                                    CS_SEGMENT_BYTES_MAX, &s->buf[s->n],
                                                    &s->len[s->n], &s->last[s->n])
                                : CS_NO_MEMORY;
        if (err != CS_OK || s->last[s->n] != (last_max < head ? last_max : head)) {
            fprintf(stderr, "apply: segment at %" PRIu64 ": %s\n", first, cs_err_name(err));
            rc = -1;
            break;
        }
        first = s->last[s->n] + 1;
    }
    s->events = head;
    cs_log_reader_close(r);
    return rc;
}

/* ---- the two sides ----------------------------------------------------------------------- */

static size_t map_bytes(uint64_t events)
{
    size_t m = (size_t)events * BENCH_MAP_BYTES_PER_EVENT;
    return m < BENCH_MAP_BYTES_MIN ? BENCH_MAP_BYTES_MIN : m;
}

/* Ours: a fresh branch directory, bound, then every segment applied; only the applies timed. */
static int run_ours(const char *dir, const segs *s, bool nosync, double *secs, uint64_t *copies)
{
    cs_log_options opts = {.map_bytes = map_bytes(s->events), .flags = nosync ? CS_LOG_NOSYNC : 0};
    cs_branch *b;
    cs_err err = cs_branch_open(dir, &opts, &b);
    if (err == CS_OK)
        err = cs_branch_bind(b, BENCH_BRANCH_SHOP);
    uint64_t total = 0;
    double t0 = cs_bench_now_s();
    for (size_t i = 0; err == CS_OK && i < s->n; i++) {
        uint64_t applied = 0;
        err = cs_branch_apply_segment(b, s->buf[i], s->len[i], &applied);
        total += applied;
    }
    *secs = cs_bench_now_s() - t0;
    json_t *l = NULL;
    if (err == CS_OK && total != s->events)
        err = CS_CORRUPT;
    if (err == CS_OK) /* the catalog is really there: one copy per item */
        err = cs_engine_list(cs_branch_engine(b), "service", false, &l);
    *copies = json_array_size(l);
    json_decref(l);
    if (err != CS_OK)
        fprintf(stderr, "apply: branch: %s: %s\n", cs_err_name(err), b ? cs_branch_errmsg(b) : "");
    cs_branch_close(b);
    return err == CS_OK ? 0 : -1;
}

static int mdb_fail(const char *what, int rc)
{
    fprintf(stderr, "apply: raw LMDB %s: %s\n", what, mdb_strerror(rc));
    return -1;
}

/* Raw's workload, prepared untimed: per segment, the puts it contained, each as the item's key
 * (type code, id) and the bytes the branch received for it (checksum, chain, msgpack event). */
typedef struct raw_seg {
    size_t n;
    uint8_t (*key)[9];
    size_t *off;
    size_t *len;
    msgpack_sbuffer arena; /* the values back to back */
} raw_seg;

typedef struct raw_work {
    size_t n;
    raw_seg *seg;
    uint64_t puts;
    uint64_t bytes;
} raw_work;

static void raw_free(raw_work *w)
{
    for (size_t i = 0; w->seg && i < w->n; i++) {
        free(w->seg[i].key);
        free(w->seg[i].off);
        free(w->seg[i].len);
        msgpack_sbuffer_destroy(&w->seg[i].arena);
    }
    free(w->seg);
    memset(w, 0, sizeof(*w));
}

static int raw_prepare_segment(cs_event_decoder *dec, const uint8_t *buf, size_t len, raw_seg *rs,
                               raw_work *w)
{
    cs_segment_view v;
    cs_log_record rec;
    cs_event_view ev;
    msgpack_sbuffer_init(&rs->arena);
    if (cs_segment_open(buf, len, &v) != CS_OK)
        return -1;
    rs->key = malloc(v.count * sizeof(*rs->key));
    rs->off = malloc(v.count * sizeof(*rs->off));
    rs->len = malloc(v.count * sizeof(*rs->len));
    if (!rs->key || !rs->off || !rs->len)
        return -1;
    while (cs_segment_next(&v, &rec) == CS_OK) {
        if (cs_event_decode(dec, rec.event, rec.event_len, &ev) != CS_OK)
            return -1;
        const cs_type *t = cs_schema_find_str(ev.type);
        if (cs_kind_parse(ev.kind) != CS_KIND_PUT)
            continue;
        if (!t)
            return -1;
        uint8_t hdr[CS_RECORD_HEADER_BYTES];
        memcpy(hdr, &rec.checksum, 8);
        memcpy(hdr + 8, &rec.chain, 8);
        rs->key[rs->n][0] = t->code;
        for (int i = 8; i >= 1; i--)
            rs->key[rs->n][i] = (uint8_t)(ev.id >> (8 * (8 - i)));
        rs->off[rs->n] = rs->arena.size;
        rs->len[rs->n] = sizeof(hdr) + rec.event_len;
        if (msgpack_sbuffer_write(&rs->arena, (const char *)hdr, sizeof(hdr)) ||
            msgpack_sbuffer_write(&rs->arena, (const char *)rec.event, rec.event_len))
            return -1;
        w->bytes += rs->len[rs->n];
        rs->n++;
        w->puts++;
    }
    return 0;
}

static int raw_prepare(const segs *s, raw_work *w)
{
    cs_event_decoder *dec;
    if (cs_event_decoder_new(&dec) != CS_OK)
        return -1;
    w->seg = calloc(s->n, sizeof(*w->seg));
    int rc = w->seg ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < s->n; i++, w->n++)
        rc = raw_prepare_segment(dec, s->buf[i], s->len[i], &w->seg[i], w);
    cs_event_decoder_free(dec);
    return rc;
}

/* Raw: one environment, one database, one transaction per segment. Only the puts and commits
 * are timed. */
static int run_raw(const char *dir, const raw_work *w, uint64_t events, bool nosync, double *secs)
{
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *txn;
    if (mkdir(dir, 0700) != 0) {
        fprintf(stderr, "apply: mkdir %s: %s\n", dir, strerror(errno));
        return -1;
    }
    int rc = mdb_env_create(&env);
    if (rc)
        return mdb_fail("env_create", rc);
    if ((rc = mdb_env_set_mapsize(env, map_bytes(events))) ||
        (rc = mdb_env_open(env, dir, nosync ? MDB_NOSYNC : 0, 0600)) ||
        (rc = mdb_txn_begin(env, NULL, 0, &txn)))
        goto fail;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &dbi)) || (rc = mdb_txn_commit(txn)))
        goto fail;
    double t0 = cs_bench_now_s();
    for (size_t i = 0; i < w->n; i++) {
        const raw_seg *rs = &w->seg[i];
        if ((rc = mdb_txn_begin(env, NULL, 0, &txn)))
            goto fail;
        for (size_t j = 0; j < rs->n && rc == 0; j++) {
            MDB_val k = {9, (void *)rs->key[j]};
            MDB_val v = {rs->len[j], rs->arena.data + rs->off[j]};
            rc = mdb_put(txn, dbi, &k, &v, 0);
        }
        if (rc) {
            mdb_txn_abort(txn);
            goto fail;
        }
        if ((rc = mdb_txn_commit(txn)))
            goto fail;
    }
    *secs = cs_bench_now_s() - t0;
    mdb_env_close(env);
    return 0;
fail:
    mdb_env_close(env);
    return mdb_fail("run", rc);
}

/* ---- the bench --------------------------------------------------------------------------- */

typedef struct result {
    double ours_s;
    double raw_s;
    uint64_t copies;
} result;

static void print_row(const char *mode, const shape *sh, const segs *s, const result *r,
                      unsigned *misses)
{
    double ours = (double)s->events / r->ours_s, raw = (double)s->events / r->raw_s;
    double ratio = ours / raw;
    bool ok = ratio >= TARGET_RATIO_MIN;
    *misses += !ok;
    printf("%-8s %-18s %9" PRIu64 " %8" PRIu64 " %11.0f %11.0f %7.2f  %s\n", mode, sh->name,
           s->events, r->copies, ours, raw, ratio, ok ? "ok" : "MISS (target >= 0.50)");
}

/* One shape: its log built and cut into segments, then ours and raw, durable and no-sync. */
static int bench_shape(const char *base, const shape *sh, uint64_t events, uint64_t items,
                       unsigned *misses)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/head-%d", base, sh->sync_every);
    cs_log_options hopts = {.map_bytes = map_bytes(events) * 2, .flags = CS_LOG_NOSYNC};
    cs_log *log = NULL;
    segs s = {0};
    raw_work w = {0};
    int rc = cs_log_open(dir, &hopts, &log) == CS_OK ? 0 : -1;
    if (rc == 0)
        rc = build_log(log, events, items, sh);
    if (rc == 0)
        rc = encode_segments(log, &s);
    cs_log_close(log);
    cs_bench_rm_tree(dir); /* the segments are all the branch needs */
    if (rc == 0)
        rc = raw_prepare(&s, &w);
    for (int nosync = 0; rc == 0 && nosync <= 1; nosync++) {
        result r = {0};
        char odir[512], rdir[512];
        snprintf(odir, sizeof(odir), "%s/ours-%d-%d", base, sh->sync_every, nosync);
        snprintf(rdir, sizeof(rdir), "%s/raw-%d-%d", base, sh->sync_every, nosync);
        rc = run_ours(odir, &s, nosync, &r.ours_s, &r.copies);
        if (rc == 0)
            rc = run_raw(rdir, &w, s.events, nosync, &r.raw_s);
        cs_bench_rm_tree(odir);
        cs_bench_rm_tree(rdir);
        if (rc == 0)
            print_row(nosync ? "no-sync" : "durable", sh, &s, &r, misses);
        fflush(stdout);
    }
    if (rc == 0 && !sh->sync_every)
        printf("  (raw: %" PRIu64 " puts of %.0f B mean into %" PRIu64 " keys, %zu transactions)\n",
               w.puts, (double)w.bytes / (double)w.puts, items + BENCH_CATEGORIES, w.n);
    raw_free(&w);
    segs_free(&s);
    return rc;
}

static int usage(const char *argv0, int code)
{
    fprintf(code ? stderr : stdout,
            "usage: %s [--quick] [--events N] [--shape end|every]\n"
            "  --quick     smoke run: %u events over %u items\n"
            "  --events N  events per shape (default %u over %u items), at most %u\n"
            "  --shape S   only (a) one sync point at the end, or (b) one every 1000 events\n",
            argv0, BENCH_QUICK_EVENTS, BENCH_QUICK_ITEMS, BENCH_EVENTS_DEFAULT, BENCH_ITEMS_DEFAULT,
            BENCH_EVENTS_MAX);
    return code;
}

static int parse_args(int argc, char **argv, bool *quick, uint64_t *events, int *only)
{
    static const struct option opts[] = {{"quick", no_argument, NULL, 'q'},
                                         {"events", required_argument, NULL, 'n'},
                                         {"shape", required_argument, NULL, 's'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "qn:s:h", opts, NULL)) != -1) {
        char *end;
        unsigned long long n;
        switch (c) {
        case 'q':
            *quick = true;
            break;
        case 'n':
            errno = 0;
            n = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-' || n < 2 * BENCH_SYNC_EVERY ||
                n > BENCH_EVENTS_MAX)
                return usage(argv[0], 2);
            *events = n;
            break;
        case 's':
            if (strcmp(optarg, "end") != 0 && strcmp(optarg, "every") != 0)
                return usage(argv[0], 2);
            *only = strcmp(optarg, "end") == 0 ? 0 : 1;
            break;
        case 'h':
            exit(usage(argv[0], 0));
        default:
            return usage(argv[0], 2);
        }
    }
    return optind == argc ? 0 : usage(argv[0], 2);
}

int main(int argc, char **argv)
{
    bool quick = false;
    uint64_t events = 0;
    int only = -1;
    if (parse_args(argc, argv, &quick, &events, &only) != 0)
        return 2;
    uint64_t items = quick ? BENCH_QUICK_ITEMS : BENCH_ITEMS_DEFAULT;
    if (!events)
        events = quick ? BENCH_QUICK_EVENTS : BENCH_EVENTS_DEFAULT;
    char base[] = "/tmp/cs-bench-apply-XXXXXX";
    if (!mkdtemp(base)) {
        fprintf(stderr, "apply: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    printf("chainsync apply bench%s: a branch catching up %" PRIu64 " events (service puts over "
           "%" PRIu64 " items), segments of %u events = one transaction each\n",
           quick ? " (--quick)" : "", events, items, BENCH_SEGMENT_EVENTS);
    printf("  ours: cs_branch_apply_segment (verify, decode, mirror + dirty set, sync points "
           "writing copies, cursor, commit)\n");
    printf("  raw:  mdb_put of the same keys and value bytes, same transactions, same sync mode\n");
    printf("  copies = live service copies on the branch at the end (one per item)\n");
    printf("%-8s %-18s %9s %8s %11s %11s %7s  %s\n", "mode", "sync points", "events", "copies",
           "ours ev/s", "raw ev/s", "ratio", "SPEC 8");
    static const shape shapes[2] = {{"one at the end", false}, {"every 1000 events", true}};
    unsigned misses = 0, rows = 0;
    int rc = 0;
    for (int i = 0; rc == 0 && i < 2; i++)
        if (only < 0 || only == i) {
            rc = bench_shape(base, &shapes[i], events, items, &misses);
            rows += 2;
        }
    if (rc == 0)
        printf("\n%u of %u rows missed the target\n", misses, rows);
    cs_bench_rm_tree(base);
    return rc == 0 ? 0 : 1;
}
