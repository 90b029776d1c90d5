/*
 * asof.c: the point-in-time benchmark of the audit (R14, docs/design.md "Audit"). It builds a
 * head office's log of 1,000,000 events (puts of 10,000 services, each edited about a hundred
 * times), builds checkpoints every 10,000 events (timed and reported, not part of a query), then
 * measures in the same run:
 *
 *   1. `as-of` at 20 random positions: time per query (mean, max) with the checkpoints;
 *   2. a full replay from event 1 to the first few of those positions, beside them;
 *   3. queries at distance 0, 1/4, 1/2 and every-1 events after one checkpoint: the cost follows
 *      the distance to the nearest checkpoint;
 *   4. the same distance early and late in the log: the cost does not follow the log's length.
 *
 * A query is cs_audit_state_at for the whole catalog (checkpoint loaded and its digest checked,
 * the events after it applied with the engine's apply step, in a scratch directory that is
 * created and removed each time), plus one cs_engine_get on the result, so what is timed is a
 * usable answer. Printing the catalog (JSON of 10,000 items) is not timed: it costs the same
 * with or without checkpoints.
 *
 * The log is written with cs_log_append (no state apply, MDB_NOSYNC) because only the log
 * matters to as-of; times are explicit (one millisecond apart) so they are reproducible. The
 * checkpoints go into the same environment, as `audit checkpoint` would put them. Everything
 * lives in a temporary directory under $TMPDIR (or /tmp), removed at the end. --quick shrinks
 * the counts for the ctest smoke test. Exit status: 0 when every step completed, 1 on an error,
 * 2 on bad usage.
 */
#include "bench/bench.h"
#include "projections/projection.h"

#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Events appended per commit while building the log. */
#define BUILD_BATCH_EVENTS 10000u
/* Bounds on the options: a log this bench can build in minutes and keep in a map. */
#define BENCH_EVENTS_MAX 20000000u
#define BENCH_ITEMS_MAX 1000000u
#define BENCH_QUERIES_MAX 1000u
/* Full replays beside the random queries: each costs a replay of up to the whole log. */
#define FULL_REPLAYS 3u
/* Repetitions of each distance query (the median is printed). */
#define DISTANCE_REPS 3u
/* The first event time: 2023-11-14T22:13:20Z, then one millisecond per event. */
#define BASE_TIME_MS 1700000000000ull
/* Map: events (~200 bytes) and checkpoints (a state of ~120 bytes an item per checkpoint). */
#define BENCH_MAP_BYTES ((size_t)8 << 30)

typedef struct bench_cfg {
    uint64_t events;
    uint64_t items;
    uint64_t every;
    unsigned queries;
    uint64_t seed;
    bool quick;
} bench_cfg;

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s; /* xorshift64*: reproducible positions for a given --seed */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* ---- building the log -------------------------------------------------------------------- */

/* The service event 4 created: every state from event 4 on holds it (set by build_log). */
static uint64_t probe_id;

typedef struct builder {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t *ends;
    cs_event *evs;
    uint64_t *versions; /* per item */
} builder;

static int pack_str(msgpack_packer *pk, const char *s)
{
    return msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* A service's fields in schema order: name, category, duration_min, price_table. Returns 0, or
 * non-zero when the buffer could not grow. One statement per value: the order matters. */
static int pack_service(msgpack_packer *pk, uint64_t item, uint64_t seq, uint64_t category)
{
    char name[48];
    snprintf(name, sizeof(name), "Service %" PRIu64, item);
    int rc = msgpack_pack_map(pk, 4);
    rc |= pack_str(pk, "name");
    rc |= pack_str(pk, name);
    rc |= pack_str(pk, "category");
    rc |= msgpack_pack_uint64(pk, category);
    rc |= pack_str(pk, "duration_min");
    rc |= msgpack_pack_uint64(pk, 15 + seq % 120);
    rc |= pack_str(pk, "price_table");
    rc |= msgpack_pack_array(pk, 1);
    rc |= msgpack_pack_map(pk, 2);
    rc |= pack_str(pk, "tier");
    rc |= pack_str(pk, "small");
    rc |= pack_str(pk, "price_cents");
    rc |= msgpack_pack_uint64(pk, 1000 + seq % 9000);
    return rc;
}

/* Appends events first..first+n-1, each a put of item (seq % items). */
static cs_err build_batch(cs_engine *e, builder *b, const cs_shop_info *self, uint64_t category,
                          uint64_t first, size_t n, uint64_t items)
{
    b->sb.size = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t seq = first + i, item = seq % items;
        if (pack_service(&b->pk, item, seq, category) != 0)
            return CS_NO_MEMORY;
        b->ends[i] = b->sb.size;
        b->evs[i] = (cs_event){.time_ms = BASE_TIME_MS + seq,
                               .shop = self->id,
                               .id = (self->id << 32) | (1000 + item),
                               .version = ++b->versions[item],
                               .actor = CS_STR("bench"),
                               .kind = cs_kind_str(CS_KIND_PUT),
                               .type = CS_STR("service")};
    }
    for (size_t i = 0; i < n; i++) { /* pointers after packing: the buffer may have moved */
        size_t start = i ? b->ends[i - 1] : 0;
        b->evs[i].fields = (const uint8_t *)b->sb.data + start;
        b->evs[i].fields_len = b->ends[i] - start;
    }
    return cs_log_append(cs_engine_log(e), b->evs, n, NULL);
}

/* init, network, one category (events 1-3 through the engine), then puts up to cfg->events. */
static cs_err build_log(cs_engine *e, const bench_cfg *cfg)
{
    cs_shop_info self;
    cs_write_result cat;
    json_t *f = json_pack("{s:s}", "name", "Grooming");
    cs_err err = f ? CS_OK : CS_NO_MEMORY;
    if (err == CS_OK)
        err = cs_engine_init(e, "Bench HQ", NULL);
    if (err == CS_OK)
        err = cs_engine_network_create(e, "Bench Chain");
    if (err == CS_OK)
        err = cs_engine_put(e, "service_category", 0, f, 0, &cat);
    if (err == CS_OK)
        err = cs_engine_self(e, &self);
    probe_id = (self.id << 32) | (1000 + 4 % cfg->items);
    json_decref(f);
    builder b = {.ends = calloc(BUILD_BATCH_EVENTS, sizeof(size_t)),
                 .evs = calloc(BUILD_BATCH_EVENTS, sizeof(cs_event)),
                 .versions = calloc(cfg->items, sizeof(uint64_t))};
    msgpack_sbuffer_init(&b.sb);
    msgpack_packer_init(&b.pk, &b.sb, msgpack_sbuffer_write);
    if (err == CS_OK && (!b.ends || !b.evs || !b.versions))
        err = CS_NO_MEMORY;
    for (uint64_t seq = 4; err == CS_OK && seq <= cfg->events;) {
        size_t n = cfg->events - seq + 1 < BUILD_BATCH_EVENTS ? (size_t)(cfg->events - seq + 1)
                                                              : BUILD_BATCH_EVENTS;
        err = build_batch(e, &b, &self, cat.id, seq, n, cfg->items);
        seq += n;
    }
    msgpack_sbuffer_destroy(&b.sb);
    free(b.ends);
    free(b.evs);
    free(b.versions);
    return err;
}

/* ---- queries ----------------------------------------------------------------------------- */

/* One as-of query: the state at seq and a read of one item from it. *ms gets the time. */
static cs_err query(cs_audit *a, uint64_t seq, unsigned flags, double *ms, uint64_t *replayed)
{
    cs_audit_state *s = NULL;
    json_t *item = NULL;
    double t0 = cs_bench_now_s();
    cs_err err = cs_audit_state_at(a, seq, NULL, flags | CS_AUDIT_NO_EXTEND, &s);
    if (err == CS_OK && seq >= 4) /* proves the answer is usable */
        err = cs_engine_get(cs_audit_state_engine(s), "service", probe_id, &item);
    double t1 = cs_bench_now_s();
    if (err == CS_OK && replayed)
        *replayed = cs_audit_state_info_get(s)->replayed;
    json_decref(item);
    cs_audit_state_free(s);
    *ms = (t1 - t0) * 1e3;
    if (err != CS_OK)
        fprintf(stderr, "asof: query at %" PRIu64 " failed: %s: %s\n", seq, cs_err_name(err),
                cs_audit_errmsg(a));
    return err;
}

static int dbl_cmp(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static cs_err bench_random(cs_audit *a, const bench_cfg *cfg)
{
    uint64_t rng = cfg->seed ? cfg->seed : 1;
    uint64_t seqs[BENCH_QUERIES_MAX];
    double ms[BENCH_QUERIES_MAX], sum = 0, max = 0;
    uint64_t dist_sum = 0;
    cs_err err = CS_OK;
    for (unsigned i = 0; i < cfg->queries && err == CS_OK; i++) {
        uint64_t replayed = 0;
        seqs[i] = 1 + rng_next(&rng) % cfg->events;
        err = query(a, seqs[i], 0, &ms[i], &replayed);
        sum += ms[i];
        max = ms[i] > max ? ms[i] : max;
        dist_sum += replayed;
    }
    if (err != CS_OK)
        return err;
    printf("\n1. as-of at %u random positions, checkpoints every %" PRIu64 " events:\n"
           "   mean %.1f ms, max %.1f ms per query; mean distance to the checkpoint used: %" PRIu64
           " events\n",
           cfg->queries, cfg->every, sum / cfg->queries, max, dist_sum / cfg->queries);
    printf("\n2. the same positions by a full replay from event 1 (same run, first %u):\n"
           "   %12s %14s %18s %8s\n",
           FULL_REPLAYS, "position", "as-of ms", "full replay ms", "ratio");
    for (unsigned i = 0; i < FULL_REPLAYS && i < cfg->queries && err == CS_OK; i++) {
        double full = 0;
        err = query(a, seqs[i], CS_AUDIT_FULL_REPLAY, &full, NULL);
        printf("   %12" PRIu64 " %14.1f %18.1f %7.0fx\n", seqs[i], ms[i], full,
               ms[i] > 0 ? full / ms[i] : 0.0);
    }
    return err;
}

/* The median of DISTANCE_REPS queries at seq. */
static cs_err median_query(cs_audit *a, uint64_t seq, double *out, uint64_t *rep)
{
    double t[DISTANCE_REPS];
    cs_err err = CS_OK;
    for (unsigned r = 0; r < DISTANCE_REPS && err == CS_OK; r++)
        err = query(a, seq, 0, &t[r], rep);
    qsort(t, DISTANCE_REPS, sizeof(double), dbl_cmp);
    *out = t[DISTANCE_REPS / 2];
    return err;
}

static cs_err bench_distance(cs_audit *a, const bench_cfg *cfg)
{
    uint64_t cp = cfg->events / 2 / cfg->every * cfg->every;
    if (cp == 0)
        cp = cfg->every;
    const uint64_t dist[] = {0, cfg->every / 4, cfg->every / 2, cfg->every - 1};
    printf("\n3. by distance to the nearest checkpoint (the one at event %" PRIu64
           "), median of %u:\n   %10s %10s %10s\n",
           cp, DISTANCE_REPS, "distance", "replayed", "ms");
    cs_err err = CS_OK;
    for (unsigned i = 0; i < 4 && err == CS_OK; i++) {
        double ms = 0;
        uint64_t rep = 0;
        if (cp + dist[i] > cfg->events)
            continue;
        err = median_query(a, cp + dist[i], &ms, &rep);
        printf("   %10" PRIu64 " %10" PRIu64 " %10.1f\n", dist[i], rep, ms);
    }
    uint64_t d = cfg->every / 2, early = cfg->every + d;
    uint64_t late = (cfg->events - d) / cfg->every * cfg->every + d;
    if (late > cfg->events)
        late -= cfg->every;
    printf("\n4. the same distance (%" PRIu64 " events) early and late in the log, median of %u:\n"
           "   %12s %10s\n",
           d, DISTANCE_REPS, "position", "ms");
    for (unsigned i = 0; i < 2 && err == CS_OK; i++) {
        double ms = 0;
        uint64_t at = i ? late : early;
        err = median_query(a, at, &ms, NULL);
        printf("   %12" PRIu64 " %10.1f\n", at, ms);
    }
    return err;
}

/* ---- main -------------------------------------------------------------------------------- */

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--quick] [--events N] [--items N] [--every N] [--queries N] [--seed S]\n"
            "  --quick      small counts (the ctest smoke test); figures are not meaningful\n"
            "  --events N   events in the log (default 1000000)\n"
            "  --items N    distinct services edited over and over (default 10000)\n"
            "  --every N    events between checkpoints (default 10000)\n"
            "  --queries N  random as-of positions (default 20)\n"
            "  --seed S     random positions' seed (default 1)\n",
            argv0);
    return 2;
}

static bool opt_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, bench_cfg *c)
{
    static const struct option opts[] = {{"quick", no_argument, NULL, 'q'},
                                         {"events", required_argument, NULL, 'e'},
                                         {"items", required_argument, NULL, 'i'},
                                         {"every", required_argument, NULL, 'v'},
                                         {"queries", required_argument, NULL, 'n'},
                                         {"seed", required_argument, NULL, 's'},
                                         {NULL, 0, NULL, 0}};
    *c = (bench_cfg){.events = 1000000, .items = 10000, .every = 10000, .queries = 20, .seed = 1};
    uint64_t v = 0;
    int o;
    bool quick = false;
    for (int i = 1; i < argc; i++)
        quick = quick || strcmp(argv[i], "--quick") == 0;
    if (quick)
        *c = (bench_cfg){
            .events = 20000, .items = 500, .every = 1000, .queries = 5, .seed = 1, .quick = true};
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'q')
            continue;
        if (o == '?' || !optarg)
            return usage(argv[0]);
        bool ok = o == 'e'   ? opt_u64(optarg, 100, BENCH_EVENTS_MAX, &c->events)
                  : o == 'i' ? opt_u64(optarg, 1, BENCH_ITEMS_MAX, &c->items)
                  : o == 'v' ? opt_u64(optarg, 4, CS_AUDIT_EVERY_MAX, &c->every)
                  : o == 'n' ? (opt_u64(optarg, 1, BENCH_QUERIES_MAX, &v) &&
                                (c->queries = (unsigned)v, true))
                             : opt_u64(optarg, 1, UINT64_MAX, &c->seed);
        if (!ok)
            return usage(argv[0]);
    }
    if (optind < argc || c->every > c->events)
        return usage(argv[0]);
    return 0;
}

static int run(const bench_cfg *cfg, const char *dir)
{
    cs_log_options opts = {.map_bytes = BENCH_MAP_BYTES, .flags = CS_LOG_NOSYNC};
    cs_engine *e = NULL;
    cs_audit *a = NULL;
    cs_audit_ckpt_info info = {0};
    double t0 = cs_bench_now_s();
    cs_err err = cs_engine_open(dir, &opts, &e);
    if (err == CS_OK)
        err = build_log(e, cfg);
    double t1 = cs_bench_now_s();
    if (err == CS_OK)
        printf("log: %" PRIu64 " events built in %.1f s (cs_log_append, batches of %u, no fsync)\n",
               cfg->events, t1 - t0, BUILD_BATCH_EVENTS);
    if (err == CS_OK)
        err = cs_audit_open(e, &a);
    if (err == CS_OK)
        err = cs_audit_checkpoint(a, cfg->every, false, &info);
    double t2 = cs_bench_now_s();
    if (err == CS_OK)
        printf("checkpoints: %" PRIu64 " built in %.1f s (one replay of the log, a copy of the "
               "state every %" PRIu64 " events); not part of any query below\n",
               info.count, t2 - t1, info.every);
    if (err == CS_OK)
        err = bench_random(a, cfg);
    if (err == CS_OK)
        err = bench_distance(a, cfg);
    if (err != CS_OK)
        fprintf(stderr, "asof: %s: %s\n", cs_err_name(err),
                a && cs_audit_errmsg(a)[0] ? cs_audit_errmsg(a)
                : e                        ? cs_engine_errmsg(e)
                                           : "");
    cs_audit_close(a);
    cs_engine_close(e);
    return err == CS_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    bench_cfg cfg;
    int rc = parse_args(argc, argv, &cfg);
    if (rc != 0)
        return rc;
    const char *root = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/cs-bench-asof-XXXXXX", root && *root ? root : "/tmp");
    if (!mkdtemp(dir)) {
        perror("asof: mkdtemp");
        return 1;
    }
    printf("as-of benchmark%s: %" PRIu64 " events over %" PRIu64
           " services, checkpoints every %" PRIu64 " events\n",
           cfg.quick ? " --quick (small counts: figures are not meaningful)" : "", cfg.events,
           cfg.items, cfg.every);
    rc = run(&cfg, dir);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
