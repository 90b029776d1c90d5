/*
 * ceilings.c: runs the ceilings and the peer of SPEC section 8 on their own, so that each is
 * checked apart from the benchmarks that print their figures beside them (bench/fanout):
 *   - raw LMDB puts of the same bytes one branch writes (bench/ceil_lmdb.h): MDB_APPEND of u64
 *     big-endian keys, durable in batches of 1,000 and 10,000 and no-sync in batches of 10,000;
 *   - raw libuv fan-out of the same bytes to K plain loopback sockets (bench/ceil_fanout.h): one
 *     server loop in a child, K receivers spread over 2 child processes, chainsync's
 *     backpressure rule, one shared buffer of 1,024 events per write;
 *   - the peer, Redis replication of the same N writes to R replicas (bench/peer_redis.h),
 *     installed with apt-get when missing and we are root (not under --quick).
 *
 * Usage: bench/ceilings [--events N] [--branches K] [--replicas R] [--bytes B] [--quick]
 *   defaults N = 100,000, K = 100, R = 16, B = 200; --quick: N = 2,000, K = 4, R = 2 (the ctest
 *   smoke test: figures not meaningful; Redis is used only if already installed).
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
#define BYTES_MAX (64u * 1024u)

typedef struct args {
    uint64_t n;
    unsigned k, r;
    size_t b;
    bool quick;
} args;

static int usage(const char *argv0, int status)
{
    fprintf(status ? stderr : stdout,
            "usage: %s [--events N] [--branches K] [--replicas R] [--bytes B] [--quick]\n"
            "  --events N    events per branch / writes to Redis (default 100000)\n"
            "  --branches K  sockets of the fan-out ceiling, 1..%u (default 100)\n"
            "  --replicas R  Redis replicas, 1..%u (default 16)\n"
            "  --bytes B     bytes per event (default 200)\n"
            "  --quick       N=2000 K=4 R=2, no installing (ctest smoke; figures not meaningful)\n",
            argv0, CS_CEIL_FANOUT_K_MAX, CS_PEER_REDIS_REPLICAS_MAX);
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
    static const struct option opts[] = {{"events", required_argument, NULL, 'n'},
                                         {"branches", required_argument, NULL, 'k'},
                                         {"replicas", required_argument, NULL, 'r'},
                                         {"bytes", required_argument, NULL, 'b'},
                                         {"quick", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    uint64_t n = 0, k = 0, r = 0, b = 0;
    int c;
    while ((c = getopt_long(argc, argv, "n:k:r:b:qh", opts, NULL)) != -1) {
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
    return 0;
}

static void print_row(const char *what, const char *setting, double eps, double mbps, double secs)
{
    printf("%-34s %-30s %14.0f %9.1f %8.3f\n", what, setting, eps, mbps, secs);
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
    printf("%-34s %-30s %14s %9s %8s\n", "ceiling / peer", "setting", "events/s", "MB/s", "secs");

    static const struct {
        unsigned batch;
        bool durable;
    } lmdb_rows[] = {{1000, true}, {10000, true}, {10000, false}};
    for (unsigned i = 0; i < sizeof(lmdb_rows) / sizeof(lmdb_rows[0]); i++) {
        char dir[128], what[64], setting[64];
        snprintf(dir, sizeof(dir), "%s/lmdb-%u", base, i);
        double rate = cs_ceil_lmdb_puts(dir, a.n, a.b, lmdb_rows[i].batch, lmdb_rows[i].durable);
        if (rate < 0)
            goto done;
        snprintf(what, sizeof(what), "raw LMDB MDB_APPEND, %s",
                 lmdb_rows[i].durable ? "durable" : "no-sync");
        snprintf(setting, sizeof(setting), "batch %u", lmdb_rows[i].batch);
        print_row(what, setting, rate, rate * (double)a.b / 1e6, (double)a.n / rate);
    }

    cs_ceil_fanout_opts fo = {.k = a.k, .n = a.n, .event_bytes = a.b};
    cs_ceil_fanout_result fr;
    if (!cs_ceil_fanout(&fo, &fr))
        goto done;
    char setting[64];
    snprintf(setting, sizeof(setting), "%u sockets, %u recv procs", a.k,
             a.k < CS_CEIL_FANOUT_PROCS ? a.k : CS_CEIL_FANOUT_PROCS);
    print_row("raw libuv fan-out (aggregate)", setting, fr.events_per_s, fr.mb_per_s, fr.secs);

    char why[128];
    if (!cs_peer_redis_ensure(!a.quick, why, sizeof(why))) {
        printf("peer: %s\n", why);
    } else {
        cs_peer_redis_opts po = {.replicas = a.r, .n = a.n, .value_bytes = a.b};
        cs_peer_redis_result pr;
        if (!cs_peer_redis(&po, &pr))
            goto done;
        char what[96];
        snprintf(what, sizeof(what), "peer: Redis %s (aggregate)", pr.version);
        snprintf(setting, sizeof(setting), "%u replicas, WAIT %u", a.r, a.r);
        print_row(what, setting, pr.events_per_s, pr.events_per_s * (double)a.b / 1e6, pr.secs);
        printf("  Redis: %.0f writes/s to the master; %" PRIu64 " RESP bytes written, "
               "replication offset %" PRIu64 "\n",
               pr.writes_per_s, pr.stream_bytes, pr.repl_offset);
    }
    ret = 0;
done:
    cs_bench_rm_tree(base);
    return ret;
}
