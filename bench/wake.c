/*
 * wake.c: how fast a command committed by another process reaches a following branch (issue
 * target: within 100 ms on an idle machine), through the server's wake-up (a file watch on the
 * head office's data.mdb, with a 1 s safety timer behind it; docs/design.md, "Network").
 *
 * A real `chainsync serve` and one real `chainsync branch follow`; this program is the "CLI in
 * another process": it commits one catalog put at a time to the head office through the library
 * and times from its commit returning to the branch's cursor reaching the event (the branch has
 * applied it durably: one LMDB commit of its own, which is the ceiling printed beside it, timed
 * in the same run on the same disk).
 *
 * Usage: bench/wake [--events N] [--quick]   (N = 200 by default; --quick: 10)
 */
#include "bench/bench_net.h"
#include "projections/projection.h"

#include <getopt.h>

#define EVENTS_DEFAULT 200u
#define EVENT_GAP_MS 20u /* idle between events: the case the target is about */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t cursor_of(const char *dir)
{
    cs_branch *b = NULL;
    cs_branch_state st = {0};
    if (cs_branch_open(dir, NULL, &b) == CS_OK)
        cs_branch_state_get(b, &st);
    cs_branch_close(b);
    return st.cursor;
}

/* The ceiling: one durable LMDB commit of one small put, as the branch must make per event. */
static double durable_commit_ms(const char *root, unsigned n)
{
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/raw", root);
    mkdir(dir, 0700);
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *t;
    double total = 0;
    if (mdb_env_create(&env) || mdb_env_set_mapsize(env, 64u << 20) ||
        mdb_env_open(env, dir, 0, 0600))
        return -1;
    uint8_t val[300] = {0};
    for (unsigned i = 0; i < n; i++) {
        uint64_t key = i;
        MDB_val k = {sizeof(key), &key}, v = {sizeof(val), val};
        double t0 = cs_bench_now_s();
        if (mdb_txn_begin(env, NULL, 0, &t) || mdb_dbi_open(t, NULL, 0, &dbi) ||
            mdb_put(t, dbi, &k, &v, 0) || mdb_txn_commit(t))
            return -1;
        total += cs_bench_now_s() - t0;
    }
    mdb_env_close(env);
    return total * 1000.0 / n;
}

int main(int argc, char **argv)
{
    unsigned n = EVENTS_DEFAULT;
    static const struct option longopts[] = {
        {"events", required_argument, NULL, 'n'}, {"quick", no_argument, NULL, 'q'}, {0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (c == 'n')
            n = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 'q')
            n = 10;
        else
            return 1;
    }
    if (n == 0 || n > 100000)
        return 1;
    cs_bench_set_bin(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    uint64_t shop = 0;
    cs_bench_net r = {.k = 1, .shops = &shop};
    snprintf(r.root, sizeof(r.root), "/tmp/cs-bench-wake-XXXXXX");
    if (!mkdtemp(r.root))
        return 1;
    snprintf(r.hq, sizeof(r.hq), "%s/hq", r.root);
    snprintf(r.log, sizeof(r.log), "%s/serve.log", r.root);
    char bdir[320];
    snprintf(bdir, sizeof(bdir), "%s/b0", r.root);
    double *lat = calloc(n, sizeof(double));
    pid_t follow = -1;
    bool ok = lat && cs_bench_net_make(&r) && cs_bench_net_serve(&r) && cs_bench_net_join(&r);
    if (ok) {
        const char *args[] = {"branch", "follow", "--data", bdir, NULL};
        follow = cs_run_spawn(args, NULL);
        cs_run_sleep_ms(1000);
    }
    cs_engine *e = NULL;
    ok = ok && cs_engine_open(r.hq, NULL, &e) == CS_OK;
    json_t *fields = json_pack("{s:s}", "name", "a category that moves");
    for (unsigned i = 0; ok && i < n; i++) {
        cs_write_result w;
        ok = cs_engine_put(e, "service_category", 0, fields, 0, &w) == CS_OK;
        double t0 = cs_bench_now_s();
        while (ok && cursor_of(bdir) < w.seq && cs_bench_now_s() - t0 < 5.0)
            ;
        lat[i] = (cs_bench_now_s() - t0) * 1000.0;
        cs_run_sleep_ms(EVENT_GAP_MS);
    }
    json_decref(fields);
    cs_engine_close(e);
    if (follow > 0)
        cs_run_stop(follow, SIGTERM, 5000);
    if (r.serve > 0)
        cs_run_stop(r.serve, SIGTERM, 10000);
    double ceil = ok ? durable_commit_ms(r.root, n) : -1;
    cs_bench_rm_tree(r.root);
    if (!ok) {
        fprintf(stderr, "wake: the network did not come up or an event did not arrive\n");
        free(lat);
        return 1;
    }
    qsort(lat, n, sizeof(double), cmp_double);
    printf("wake: %u events committed by another process, one at a time, %u ms apart\n", n,
           EVENT_GAP_MS);
    printf("%-44s %8s %8s %8s %12s\n", "", "p50 ms", "p99 ms", "max ms", "target");
    double p99 = lat[(size_t)((n - 1) * 0.99)];
    printf("%-44s %8.2f %8.2f %8.2f %12s\n", "commit at head office -> applied at branch",
           lat[n / 2], p99, lat[n - 1], p99 < 100 ? "< 100: ok" : "< 100: MISSED");
    printf("%-44s %8.2f %8s %8s\n", "one durable LMDB commit (ceiling, mean)", ceil, "", "");
    free(lat);
    return 0;
}
