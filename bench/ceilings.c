/*
 * ceilings.c: runs the ceilings and the peer of SPEC section 8 on their own, so that each is
 * checked apart from the benchmarks that print their figures beside them (bench/fanout):
 *   - raw LMDB puts of the same bytes one branch writes (bench/ceil_lmdb.h): MDB_APPEND of u64
 *     big-endian keys, durable in batches of 1,000 and 10,000 and no-sync in batches of 10,000;
 *   - raw libuv fan-out of the same bytes to K plain loopback sockets (bench/ceil_fanout.h): one
 *     server loop in a child, K receivers spread over 2 child processes, chainsync's
 *     backpressure rule, one shared buffer of 1,024 events per write;
 *   - the peer, Redis replication of the same N writes to R replicas (bench/peer_redis.h),
 *     timed until every replica has applied up to the master's offset; installed with apt-get
 *     when missing and we are root (not under --quick).
 *
 * Usage: bench/ceilings [--events N] [--branches K] [--replicas R] [--bytes B] [--reps M]
 *                       [--quick]
 *   defaults N = 100,000, K = 100, R = 16, B = 200, each part run M = 3 times and the median
 *   printed (the machine is shared: single runs are noisy); --quick: N = 2,000, K = 4, R = 2,
 *   M = 1 (the ctest smoke test: figures not meaningful; Redis used only if already installed).
 * SPEC 8 reference, 2-core machine: raw libuv fan-out of 100,000 x 200 B to 1,000 sockets about
 * 15-19 M events/s aggregate; Redis 7 to 16 replicas about 1.2 M events/s aggregate.
 * Exit status: 0 when every part ran (an unavailable peer is not a failure), 1 on an error,
 * 2 on bad usage.
 */
#include "bench/bench.h"
#include "bench/ceil_fanout.h"
#include "bench/ceil_lmdb.h"
#include "bench/peer_redis.h"

#include <getopt.h>
#include <inttypes.h>

#define EVENTS_MAX 100000000ull
#define REPS_MAX 9u
#define BYTES_MAX (64u * 1024u)

typedef struct args {
    uint64_t n;
    unsigned k, r, reps;
    size_t b;
    bool quick;
} args;

static int usage(const char *argv0, int status)
{
    fprintf(status ? stderr : stdout,
            "usage: %s [--events N] [--branches K] [--replicas R] [--bytes B] [--reps M] "
            "[--quick]\n"
            "  --events N    events per branch / writes to Redis (default 100000)\n"
            "  --branches K  sockets of the fan-out ceiling, 1..%u (default 100)\n"
            "  --replicas R  Redis replicas, 1..%u (default 16)\n"
            "  --bytes B     bytes per event (default 200)\n"
            "  --reps M      runs of each part, the median printed, 1..%u (default 3)\n"
            "  --quick       N=2000 K=4 R=2, no installing (ctest smoke; figures not meaningful)\n",
            argv0, CS_CEIL_FANOUT_K_MAX, CS_PEER_REDIS_REPLICAS_MAX, REPS_MAX);
    return status;
}

static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s || s[0] == '-' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, args *a)
{
    static const struct option opts[] = {
        {"events", required_argument, NULL, 'n'},   {"branches", required_argument, NULL, 'k'},
        {"replicas", required_argument, NULL, 'r'}, {"bytes", required_argument, NULL, 'b'},
        {"reps", required_argument, NULL, 'm'},     {"quick", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
    uint64_t n = 0, k = 0, r = 0, b = 0, m = 0;
    int c;
    while ((c = getopt_long(argc, argv, "n:k:r:b:m:qh", opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'n':
            ok = parse_u64(optarg, 1, EVENTS_MAX, &n);
            break;
        case 'k':
            ok = parse_u64(optarg, 1, CS_CEIL_FANOUT_K_MAX, &k);
            break;
        case 'r':
            ok = parse_u64(optarg, 1, CS_PEER_REDIS_REPLICAS_MAX, &r);
            break;
        case 'b':
            ok = parse_u64(optarg, 1, BYTES_MAX, &b);
            break;
        case 'm':
            ok = parse_u64(optarg, 1, REPS_MAX, &m);
            break;
        case 'q':
            a->quick = true;
            break;
        case 'h':
            exit(usage(argv[0], 0));
        default:
            ok = false;
        }
        if (!ok)
            return usage(argv[0], 2);
    }
    if (optind != argc)
        return usage(argv[0], 2);
    a->n = n ? n : a->quick ? 2000 : 100000;
    a->k = k ? (unsigned)k : a->quick ? 4 : 100;
    a->r = r ? (unsigned)r : a->quick ? 2 : CS_PEER_REDIS_REPLICAS;
    a->b = b ? (size_t)b : 200;
    a->reps = m ? (unsigned)m : a->quick ? 1 : 3;
    return 0;
}

/* Events/s of up to REPS_MAX runs of one part: the median is printed, with the spread. */
typedef struct runs {
    double eps[REPS_MAX];
    unsigned n;
} runs;

static int by_value(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static double median(runs *r)
{
    qsort(r->eps, r->n, sizeof(r->eps[0]), by_value);
    return r->eps[r->n / 2];
}

static void print_row(const char *what, const char *setting, runs *r, size_t bytes_per_event,
                      uint64_t events)
{
    double eps = median(r);
    char spread[48];
    snprintf(spread, sizeof(spread), "%.2f-%.2f", r->eps[0] / 1e6, r->eps[r->n - 1] / 1e6);
    printf("%-34s %-28s %12.0f %8.1f %7.3f  %s\n", what, setting, eps,
           eps * (double)bytes_per_event / 1e6, (double)events / eps, spread);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    args a = {0};
    if (parse_args(argc, argv, &a) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    char base[] = "/tmp/cs-bench-ceilings-XXXXXX";
    if (!mkdtemp(base)) {
        fprintf(stderr, "ceilings: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    int ret = 1;
    printf("chainsync ceilings and peer (SPEC 8)%s\n",
           a.quick ? " --quick (small counts: figures are not meaningful)" : "");
    printf("  N = %" PRIu64 " events of B = %zu bytes; fan-out to K = %u sockets; Redis to R = %u "
           "replicas\n",
           a.n, a.b, a.k, a.r);
    printf("  events/s: LMDB puts/s of one writer; fan-out and Redis: aggregate (K*N or R*N over "
           "the wall\n"
           "  time); MB/s = 10^6 value bytes per second the same way\n\n");
    printf("  each part run %u time(s): the median printed, and the min-max of events/s in "
           "millions\n\n",
           a.reps);
    printf("%-34s %-28s %12s %8s %7s  %s\n", "ceiling / peer", "setting", "events/s", "MB/s",
           "secs", "M ev/s runs");

    static const struct {
        unsigned batch;
        bool durable;
    } lmdb_rows[] = {{1000, true}, {10000, true}, {10000, false}};
    for (unsigned i = 0; i < sizeof(lmdb_rows) / sizeof(lmdb_rows[0]); i++) {
        char dir[128], what[64], setting[64];
        runs r = {.n = a.reps};
        for (unsigned j = 0; j < a.reps; j++) {
            snprintf(dir, sizeof(dir), "%s/lmdb-%u-%u", base, i, j);
            r.eps[j] = cs_ceil_lmdb_puts(dir, a.n, a.b, lmdb_rows[i].batch, lmdb_rows[i].durable);
            if (r.eps[j] < 0)
                goto done;
        }
        snprintf(what, sizeof(what), "raw LMDB MDB_APPEND, %s",
                 lmdb_rows[i].durable ? "durable" : "no-sync");
        snprintf(setting, sizeof(setting), "batch %u", lmdb_rows[i].batch);
        print_row(what, setting, &r, a.b, a.n);
    }

    cs_ceil_fanout_opts fo = {.k = a.k, .n = a.n, .event_bytes = a.b};
    runs fr = {.n = a.reps};
    for (unsigned j = 0; j < a.reps; j++) {
        cs_ceil_fanout_result res;
        if (!cs_ceil_fanout(&fo, &res))
            goto done;
        fr.eps[j] = res.events_per_s;
    }
    char setting[64];
    snprintf(setting, sizeof(setting), "%u sockets, %u recv procs", a.k,
             a.k < CS_CEIL_FANOUT_PROCS ? a.k : CS_CEIL_FANOUT_PROCS);
    print_row("raw libuv fan-out (aggregate)", setting, &fr, a.b, (uint64_t)a.k * a.n);

    char why[128];
    if (!cs_peer_redis_ensure(!a.quick, why, sizeof(why))) {
        printf("peer: %s\n", why);
    } else {
        cs_peer_redis_opts po = {.replicas = a.r, .n = a.n, .value_bytes = a.b};
        cs_peer_redis_result pr;
        runs rr = {.n = a.reps};
        for (unsigned j = 0; j < a.reps; j++) {
            if (!cs_peer_redis(&po, &pr))
                goto done;
            rr.eps[j] = pr.events_per_s;
        }
        char what[96];
        snprintf(what, sizeof(what), "peer: Redis %s (aggregate)", pr.version);
        snprintf(setting, sizeof(setting), "%u replicas", a.r);
        print_row(what, setting, &rr, a.b, (uint64_t)a.r * a.n);
        printf("  Redis, last run: master answered all writes after %.3f s, replicas at its offset "
               "after\n  %.3f s; %" PRIu64 " RESP bytes written, replication offset %" PRIu64 "\n",
               pr.master_secs, pr.secs, pr.stream_bytes, pr.repl_offset);
    }
    ret = 0;
done:
    cs_bench_rm_tree(base);
    return ret;
}
