/*
 * engine.c: the engine write benchmark. It measures commands per second through the whole
 * engine write path (cs_engine_put_many: JSON -> canonical msgpack with schema validation,
 * reference check against the state, id allocation, event append, apply to the `items` state,
 * one LMDB transaction per call), and beside it, in the same run, its ceiling: cs_log_append of
 * events whose fields are byte for byte the ones the engine logs (cs_schema_from_json of the
 * same JSON), in the same batch size and sync mode, in a separate fresh directory. The ratio
 * engine/raw says what the engine adds over the bare log.
 *
 * The items are `service`s of about 200 bytes of encoded fields, each naming one
 * service_category created before the timed loop. Batches are 1, 100, 1000 and 10000 items per
 * call, durable (fsync per commit, the default) and CS_LOG_NOSYNC. The JSON of a batch is
 * built once, outside the timed loop, and sent again on every call (each call creates new
 * items: validation, references, ids, log and state do all their work each time); building
 * JSON is the caller's cost, not the engine's.
 *
 * Each run gets a fresh directory under /tmp (the same file system a data directory would be
 * on), removed after it; maps are pre-sized so no run pays for growth. Counts are bounded per
 * row so the whole bench takes well under a minute on the 2-core development machine; --quick
 * shrinks them for the ctest smoke test. Exit status: 0 when every run completed, 1 on an
 * error, 2 on bad usage. The table's figures are findings; no threshold fails the run.
 */
#include "bench/bench.h"
#include "engine/engine.h"
#include "log/log.h"

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

/* Per item in the map: a log record (~330 B) with its time index entry, and the item record
 * (~230 B), each in B-tree leaves with page slack; 2 KiB is generous. */
#define BENCH_MAP_BYTES_PER_ITEM 2048u
#define BENCH_MAP_BYTES_MIN ((size_t)64 * 1024 * 1024)
/* Median of this many runs per side in a full run (fsync latency makes single runs noisy). */
#define BENCH_REPS 3u
#define BENCH_BATCHES 4u
/* A dozen distinct services per batch pattern is plenty: the engine cannot tell. */
#define BENCH_NAMES 16u

static const size_t batches[BENCH_BATCHES] = {1, 100, 1000, 10000};

typedef struct row {
    size_t batch;
    bool nosync;
    size_t items; /* a multiple of batch */
} row;

typedef struct run_result {
    double secs;
    size_t items;
} run_result;

/* ---- the items --------------------------------------------------------------------------- */

/* The i-th service's fields naming `category`: about 200 bytes once encoded. New reference. */
static json_t *service_json(uint64_t category, size_t i)
{
    char name[48];
    snprintf(name, sizeof(name), "Bath and brush %07zu", i % BENCH_NAMES);
    return json_pack("{s:s,s:I,s:s,s:I,s:[{s:s,s:I},{s:s,s:I}],s:b}", "name", name, "category",
                     (json_int_t)category, "description",
                     "Shampoo, conditioner, blow dry and a full brush-out; nails on request",
                     "duration_min", (json_int_t)(30 + (i % 4) * 15), "price_table", "tier",
                     "small", "price_cents", (json_int_t)(4500 + i % 1000), "tier", "large",
                     "price_cents", (json_int_t)(7500 + i % 1000), "active", (int)(i % 10 != 0));
}

/* A JSON array of n services naming `category`. New reference; NULL when out of memory. */
static json_t *batch_json(uint64_t category, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        if (json_array_append_new(arr, service_json(category, i)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    return arr;
}

static cs_log_options row_options(const row *rw)
{
    return (cs_log_options){.map_bytes =
                                BENCH_MAP_BYTES_MIN + rw->items * (size_t)BENCH_MAP_BYTES_PER_ITEM,
                            .flags = rw->nosync ? CS_LOG_NOSYNC : 0};
}

/* ---- the engine -------------------------------------------------------------------------- */

static int engine_fail(cs_engine *e, const char *what, cs_err err)
{
    fprintf(stderr, "engine: %s: %s (%s)\n", what, cs_err_name(err), e ? cs_engine_errmsg(e) : "");
    return -1;
}

static cs_err log_head(cs_log *log, uint64_t *head)
{
    cs_log_reader *r;
    cs_err err = cs_log_reader_open(log, &r);
    if (err != CS_OK)
        return err;
    err = cs_log_reader_head(r, head);
    cs_log_reader_close(r);
    return err;
}

/* Opens a fresh engine directory as a single store with one service_category; *batch_out gets
 * a batch of services naming it (owned by the caller). */
static int engine_setup(const char *dir, const row *rw, cs_engine **e, json_t **batch_out)
{
    cs_log_options opts = row_options(rw);
    cs_err err = cs_engine_open(dir, &opts, e);
    if (err != CS_OK)
        return engine_fail(NULL, "cs_engine_open", err);
    uint64_t shop;
    if ((err = cs_engine_init(*e, "Bench shop", &shop)) != CS_OK)
        return engine_fail(*e, "cs_engine_init", err);
    json_t *cat = json_pack("{s:s,s:s}", "name", "Grooming", "description", "Baths and trims");
    cs_write_result res;
    err = cat ? cs_engine_put(*e, "service_category", 0, cat, 0, &res) : CS_NO_MEMORY;
    json_decref(cat);
    if (err != CS_OK)
        return engine_fail(*e, "put service_category", err);
    if (!(*batch_out = batch_json(res.id, rw->batch)))
        return engine_fail(*e, "building the batch", CS_NO_MEMORY);
    return 0;
}

/* Times rw->items / rw->batch calls of cs_engine_put_many, then checks (untimed) that every
 * item reached the log. *sample_out (may be NULL) keeps the batch for the raw side. */
static int run_engine(const char *dir, const row *rw, run_result *out, json_t **sample_out)
{
    cs_engine *e = NULL;
    json_t *batch = NULL;
    int ret = -1;
    if (engine_setup(dir, rw, &e, &batch) != 0)
        goto done;
    uint64_t head0, head1;
    cs_err err = log_head(cs_engine_log(e), &head0);
    if (err != CS_OK) {
        engine_fail(e, "log head", err);
        goto done;
    }
    double t0 = cs_bench_now_s();
    for (size_t done = 0; done < rw->items; done += rw->batch) {
        if ((err = cs_engine_put_many(e, "service", batch, NULL)) != CS_OK) {
            engine_fail(e, "cs_engine_put_many", err);
            goto done;
        }
    }
    double secs = cs_bench_now_s() - t0;
    if ((err = log_head(cs_engine_log(e), &head1)) != CS_OK || head1 - head0 != rw->items) {
        fprintf(stderr, "engine: the log holds %" PRIu64 " new events, not %zu (%s)\n",
                head1 - head0, rw->items, cs_err_name(err));
        goto done;
    }
    *out = (run_result){.secs = secs, .items = rw->items};
    if (sample_out) {
        *sample_out = batch;
        batch = NULL;
    }
    ret = 0;
done:
    json_decref(batch);
    cs_engine_close(e);
    return ret;
}

/* ---- the ceiling: cs_log_append of the same events --------------------------------------- */

/* The events the engine logs for one batch: same kind, type, actor, id sizes and fields bytes.
 * fields[i] are owned by the caller (free()). */
static int raw_events(const json_t *batch, cs_event *evs, uint8_t **fields, size_t *fields_bytes)
{
    const cs_type *t = cs_schema_find("service");
    char msg[256];
    uint64_t shop =
        (uint64_t)json_integer_value(json_object_get(json_array_get(batch, 0), "category")) >> 32;
    *fields_bytes = 0;
    for (size_t i = 0; i < json_array_size(batch); i++) {
        size_t len;
        cs_err err =
            cs_schema_from_json(t, json_array_get(batch, i), &fields[i], &len, msg, sizeof(msg));
        if (err != CS_OK) {
            fprintf(stderr, "engine: the bench's own service does not validate: %s\n", msg);
            return -1;
        }
        *fields_bytes += len;
        evs[i] = (cs_event){.shop = shop,
                            .id = (shop << 32) | (i + 2), /* as the engine's ids */
                            .version = 1,
                            .actor = CS_STR("cli"),
                            .kind = cs_kind_str(CS_KIND_PUT),
                            .type = CS_STR("service"),
                            .fields = fields[i],
                            .fields_len = len};
    }
    return 0;
}

static int run_raw(const char *dir, const row *rw, const json_t *batch, run_result *out,
                   double *fields_mean_bytes)
{
    cs_event *evs = calloc(rw->batch, sizeof(*evs));
    uint8_t **fields = calloc(rw->batch, sizeof(*fields));
    cs_log *log = NULL;
    size_t fields_bytes = 0;
    int ret = -1;
    if (!evs || !fields) {
        fprintf(stderr, "engine: out of memory for a batch of %zu\n", rw->batch);
        goto done;
    }
    if (raw_events(batch, evs, fields, &fields_bytes) != 0)
        goto done;
    cs_log_options opts = row_options(rw);
    cs_err err = cs_log_open(dir, &opts, &log);
    if (err != CS_OK) {
        fprintf(stderr, "engine: cs_log_open %s: %s\n", dir, cs_err_name(err));
        goto done;
    }
    double t0 = cs_bench_now_s();
    for (size_t done = 0; done < rw->items; done += rw->batch) {
        if ((err = cs_log_append(log, evs, rw->batch, NULL)) != CS_OK) {
            fprintf(stderr, "engine: cs_log_append: %s (%s)\n", cs_err_name(err),
                    cs_log_errmsg(log));
            goto done;
        }
    }
    *out = (run_result){.secs = cs_bench_now_s() - t0, .items = rw->items};
    *fields_mean_bytes = (double)fields_bytes / (double)rw->batch;
    ret = 0;
done:
    cs_log_close(log);
    for (size_t i = 0; fields && i < rw->batch; i++)
        free(fields[i]);
    free(fields);
    free(evs);
    return ret;
}

/* ---- the part that is validation --------------------------------------------------------- */

/* ns per item of cs_schema_from_json alone (JSON -> canonical msgpack with validation): the
 * part of the engine's cost that needs no storage at all. */
static int measure_convert(const json_t *batch, size_t items, double *ns_out)
{
    const cs_type *t = cs_schema_find("service");
    size_t n = json_array_size(batch), done = 0;
    char msg[256];
    double t0 = cs_bench_now_s();
    while (done < items) {
        for (size_t i = 0; i < n && done < items; i++, done++) {
            uint8_t *out;
            size_t len;
            if (cs_schema_from_json(t, json_array_get(batch, i), &out, &len, msg, sizeof(msg)) !=
                CS_OK) {
                fprintf(stderr, "engine: the bench's own service does not validate: %s\n", msg);
                return -1;
            }
            free(out);
        }
    }
    *ns_out = (cs_bench_now_s() - t0) * 1e9 / (double)items;
    return 0;
}

/* ---- the table --------------------------------------------------------------------------- */

static size_t row_items(size_t batch, bool nosync, bool quick)
{
    /* Sized for well under a minute in all (3 runs a side) on the 2-core development machine.
     * Durable batch 1 pays one fsync per command: a few hundred commands show the rate. */
    static const size_t full[2][BENCH_BATCHES] = {{300, 20000, 100000, 200000},
                                                  {20000, 100000, 200000, 200000}};
    static const size_t small[2][BENCH_BATCHES] = {{20, 200, 2000, 10000},
                                                   {200, 1000, 2000, 10000}};
    for (unsigned i = 0; i < BENCH_BATCHES; i++)
        if (batches[i] == batch) {
            size_t n = quick ? small[nosync][i] : full[nosync][i];
            return (n + batch - 1) / batch * batch; /* whole batches only */
        }
    cs_assert(!"a batch size outside the table");
    return 0;
}

static int by_secs(const void *a, const void *b)
{
    double x = ((const run_result *)a)->secs, y = ((const run_result *)b)->secs;
    return (x > y) - (x < y);
}

static void print_row(const row *rw, const run_result *eng, const run_result *raw)
{
    double eng_cps = (double)eng->items / eng->secs;
    double raw_eps = (double)raw->items / raw->secs;
    printf("%-8s %6zu %8zu %12.0f %9.2f %12.0f %9.2f %8.2f\n", rw->nosync ? "no-sync" : "durable",
           rw->batch, rw->items, eng_cps, 1e6 / eng_cps, raw_eps, 1e6 / raw_eps, eng_cps / raw_eps);
    fflush(stdout);
}

/* Runs engine then raw, reps times alternately, each in a fresh directory under base, and
 * prints the row with the median run of each side. *sample_out keeps one engine batch. */
static int bench_row(const char *base, const row *rw, unsigned reps, json_t **sample_out,
                     double *fields_mean_bytes)
{
    char eng_dir[512], raw_dir[512];
    snprintf(eng_dir, sizeof(eng_dir), "%s/engine-%zu-%d", base, rw->batch, rw->nosync);
    snprintf(raw_dir, sizeof(raw_dir), "%s/raw-%zu-%d", base, rw->batch, rw->nosync);
    run_result eng_runs[BENCH_REPS], raw_runs[BENCH_REPS];
    int ret = -1;
    cs_assert(reps >= 1 && reps <= BENCH_REPS);
    for (unsigned i = 0; i < reps; i++) {
        json_t *batch = NULL;
        if (run_engine(eng_dir, rw, &eng_runs[i], &batch) != 0)
            goto done;
        cs_bench_rm_tree(eng_dir);
        int rc = run_raw(raw_dir, rw, batch, &raw_runs[i], fields_mean_bytes);
        cs_bench_rm_tree(raw_dir);
        if (rc == 0 && i == 0 && sample_out) {
            json_decref(*sample_out);
            *sample_out = json_incref(batch);
        }
        json_decref(batch);
        if (rc != 0)
            goto done;
    }
    qsort(eng_runs, reps, sizeof(eng_runs[0]), by_secs);
    qsort(raw_runs, reps, sizeof(raw_runs[0]), by_secs);
    print_row(rw, &eng_runs[reps / 2], &raw_runs[reps / 2]);
    ret = 0;
done:
    cs_bench_rm_tree(eng_dir);
    cs_bench_rm_tree(raw_dir);
    return ret;
}

static void print_header(bool quick, unsigned reps)
{
    printf("chainsync engine bench%s\n",
           quick ? " --quick (small counts, one run each: figures are not meaningful)" : "");
    printf("  engine: cs_engine_put_many of `batch` new service items per call, one transaction "
           "each:\n"
           "    JSON -> msgpack with schema validation, reference check, id, event append, apply "
           "to state\n"
           "  raw: cs_log_append of the same events (same fields bytes, kind, type, actor), same "
           "batch,\n"
           "    same sync mode, in its own fresh directory: the log alone, the engine's ceiling\n"
           "  fresh directory per run, maps pre-sized; median of %u run(s) per side, "
           "alternating;\n"
           "  cmd/s = items created per second; us/cmd = microseconds per item\n\n",
           reps);
    printf("%-8s %6s %8s %12s %9s %12s %9s %8s\n", "mode", "batch", "items", "engine cmd/s",
           "us/cmd", "raw ev/s", "us/ev", "eng/raw");
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--quick]\n"
            "  --quick     small counts, one run (the ctest smoke test); figures not meaningful\n",
            argv0);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"quick", no_argument, NULL, 'q'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    bool quick = false;
    int c;
    while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        if (c != 'q') {
            usage(argv[0]);
            return c == 'h' ? 0 : 2;
        }
        quick = true;
    }
    if (optind != argc) {
        usage(argv[0]);
        return 2;
    }
    char base[] = "/tmp/cs-bench-engine-XXXXXX";
    if (!mkdtemp(base)) {
        fprintf(stderr, "engine: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    unsigned reps = quick ? 1 : BENCH_REPS;
    json_t *sample = NULL;
    double fields_mean = 0, convert_ns = 0;
    int ret = 0;
    print_header(quick, reps);
    for (int nosync = 0; nosync < 2 && ret == 0; nosync++)
        for (unsigned i = 0; i < BENCH_BATCHES && ret == 0; i++) {
            row rw = {.batch = batches[i], .nosync = nosync};
            rw.items = row_items(rw.batch, rw.nosync, quick);
            if (bench_row(base, &rw, reps, rw.batch == 100 ? &sample : NULL, &fields_mean) != 0)
                ret = 1;
        }
    if (ret == 0 && measure_convert(sample, quick ? 10000 : 200000, &convert_ns) != 0)
        ret = 1;
    if (ret == 0)
        printf("\nfields %.0f B encoded per item; of the engine's time per item, JSON -> msgpack "
               "with\nvalidation (cs_schema_from_json) alone takes %.2f us\n",
               fields_mean, convert_ns / 1e3);
    json_decref(sample);
    cs_bench_rm_tree(base);
    return ret;
}
