/*
 * natsscale.c: the receive-only simulation of docs/scale.md (issue 15, "Scale, by simulation"):
 * how the head office's load moves with the number of branches K when the log travels through
 * NATS JetStream. On one machine: a JetStream server for the head office ("hub"), a leaf node
 * with a JetStream domain of its own (a region's server) holding a mirror of the hub's stream,
 * the head office (a real `chainsync serve --nats HUB`, which publishes each committed segment
 * once; --head sim: bench/nats_sim.h's publisher of the same bytes instead) while a process
 * appends R events/s in C commits/s to its log, and K receive-only branches, each its own NATS
 * connection to the leaf node with its own durable consumer, verifying every checksum and the
 * chain of every segment and acknowledging it.
 *
 * Two placements of the K consumers, each for every K:
 *   mirror  on the leaf's mirror: the hub serves one consumer (the mirror) whatever K is.
 *   hub     on the hub's stream, reached through the leaf node (domain "hub"): the hub keeps K
 *           consumers and sends K copies over the leaf connection.
 * Per row: the head office's CPU seconds and RSS (serve's, or the publisher's) and what it
 * published (serve: the stream's growth in bytes; sim: bytes on the wire); the hub's and the
 * leaf's CPU seconds during the row and RSS after it; the events received by all branches
 * against K x appended; commit-to-received p50/p99 across all branches.
 *
 * Usage: bench/natsscale [--branches K,K,...] [--rate R] [--commits C] [--seconds S] [--procs P]
 *                        [--place mirror|hub|both] [--head serve|sim] [--json FILE] [--quick]
 * Defaults: K 10,100,1000, R 1,000 events/s in C 100 commits/s (each commit one segment), S 5,
 * P 2, both, serve. --quick (ctest's smoke run): K 2, 500 events/s for 1 s. Exit 1 when a branch
 * missed an event or a process failed. Needs nats-server on PATH (tools/setup.sh installs it);
 * exit 77 when it cannot start.
 */
#include "bench/bench_net.h"
#include "bench/nats_sim.h"
#include "tests/net_fixture.h"

#include <getopt.h>

#define KS_MAX 8u

typedef struct opts {
    unsigned ks[KS_MAX], nks, rate, commits, seconds, procs;
    bool mirror, hub, quick, sim; /* sim: nats_sim.h's publisher instead of serve --nats */
    const char *json;
} opts;

typedef struct env {
    opts o;
    char root[256], hq[300];
    cs_ns_srv hub, leaf;
    pid_t serve; /* the head office: chainsync serve --nats (unless --head sim) */
    char stream[64], mirror[64], subject[64]; /* serve's: CS_<network>, cs.<network>.log */
} env;

/* The real head office: `chainsync serve --nats HUB`, which creates the network's stream and
 * publishes every committed segment once; and the region's mirror of that stream on the leaf. */
static bool serve_start(env *v)
{
    char ready[320], log[320], line[64];
    snprintf(ready, sizeof(ready), "%s/serve.ready", v->root);
    snprintf(log, sizeof(log), "%s/serve.log", v->root);
    const char *args[] = {"serve",        "--data", v->hq,    "--listen", "127.0.0.1:0",
                          "--ready-file", ready,    "--nats", v->hub.url, NULL};
    v->serve = cs_run_spawn(args, log);
    uint64_t head = 0, network = 0;
    if (v->serve <= 0 || !cs_run_ready_line(ready, line, sizeof(line), 20000) ||
        !cs_ns_hq_at(v->hq, 1, &head, &network)) {
        fprintf(stderr, "natsscale: serve --nats did not start (see %s)\n", log);
        return false;
    }
    /* net/nats_conn.c's names: the network is the chain value of event 1, 16 hex digits. */
    snprintf(v->stream, sizeof(v->stream), "CS_%016llx", (unsigned long long)network);
    snprintf(v->mirror, sizeof(v->mirror), "CSM_%016llx", (unsigned long long)network);
    snprintf(v->subject, sizeof(v->subject), "cs.%016llx.log", (unsigned long long)network);
    return cs_ns_stream_wait(v->hub.url, v->stream, 1) &&
           cs_ns_stream(v->leaf.url, v->mirror, NULL, v->stream, "hub");
}

typedef struct row {
    unsigned k;
    const char *place;
    cs_ns_pub_result pub;
    double subscribe_s, hub_cpu, leaf_cpu, hub_rss_mib, leaf_rss_mib, p50, p99;
    uint64_t appended, received;
    unsigned failed;
    bool ok;
} row;

/* One K in one placement: fresh streams, K subscribed, then R events/s for S seconds. */
static row run_k(env *v, unsigned k, bool on_mirror, unsigned idx)
{
    row w = {.k = k, .place = on_mirror ? "mirror" : "hub"};
    char stream[64], mirror[64], subject[64], durable[32];
    snprintf(stream, sizeof(stream), "CS_%u", idx);
    snprintf(mirror, sizeof(mirror), "CSM_%u", idx);
    snprintf(subject, sizeof(subject), "cs.bench.%u", idx);
    snprintf(durable, sizeof(durable), "b%u", idx);
    if (!v->o.sim) { /* one stream for every row: serve's; the branches take what is new */
        snprintf(stream, sizeof(stream), "%s", v->stream);
        snprintf(mirror, sizeof(mirror), "%s", v->mirror);
        snprintf(subject, sizeof(subject), "%s", v->subject);
    } else if (!cs_ns_stream(v->hub.url, stream, subject, NULL, NULL) ||
               (on_mirror && !cs_ns_stream(v->leaf.url, mirror, NULL, stream, "hub")))
        return w;
    uint64_t head = cs_fix_head_seq(v->hq);
    uint64_t run_ms = (uint64_t)v->o.seconds * 1000u;
    cs_ns_sub_opts so = {.url = v->leaf.url,
                         .stream = on_mirror ? mirror : stream,
                         .subject = subject,
                         .domain = on_mirror ? NULL : "hub",
                         .durable = durable,
                         .deliver_new = !v->o.sim,
                         .want_last = UINT64_MAX,
                         .stop_ms = 0};
    /* The workers stop when the stop file appears, 1.5 s after the last segment is published;
     * stop_ms only bounds a run that went wrong. */
    char stop_file[320];
    snprintf(stop_file, sizeof(stop_file), "%s/stop", v->root);
    unlink(stop_file);
    so.stop_file = stop_file;
    so.stop_ms = cs_run_wall_ms() + 600000u;
    cs_ns_subs ss;
    cs_ns_subs_result r;
    if (!cs_ns_subs_start(&ss, &so, k, v->o.procs, &r)) {
        fprintf(stderr, "natsscale: K=%u: the branches could not subscribe\n", k);
        cs_ns_subs_wait(&ss, &r);
        free(r.catchup_ms);
        return w;
    }
    double subscribe_s = (double)(r.ready_ms - r.start_ms) / 1000.0;
    double hub0 = cs_ns_cpu_s(v->hub.pid), leaf0 = cs_ns_cpu_s(v->leaf.pid);
    double serve0 = v->serve > 0 ? cs_ns_cpu_s(v->serve) : 0;
    uint64_t seq0 = 0, bytes0 = 0, seq1 = 0, bytes1 = 0;
    if (!v->o.sim)
        cs_ns_stream_state(v->hub.url, stream, &seq0, &bytes0);
    int afd[2], pfd = -1;
    if (pipe(afd) != 0)
        return w;
    pid_t ap = fork();
    if (ap == 0) {
        close(afd[0]);
        cs_ns_appender(v->hq, v->o.rate, v->o.commits, v->o.seconds, afd[1]);
    }
    close(afd[1]);
    pid_t pp = v->o.sim ? cs_ns_publisher_start(v->hub.url, v->hq, subject, head + 1,
                                                cs_run_wall_ms() + run_ms + 500u, &pfd)
                        : 0;
    FILE *in = fdopen(afd[0], "r");
    unsigned long long sent = 0;
    bool ok = in && fscanf(in, "%llu", &sent) == 1;
    if (in)
        fclose(in);
    ok = cs_run_reap(ap, cs_run_now_ms() + run_ms + 30000u) == 0 && ok;
    if (v->o.sim)
        ok = cs_ns_publisher_wait(pp, pfd, run_ms + 30000u, &w.pub) && ok;
    cs_run_sleep_ms(1500);
    if (!v->o.sim) { /* serve's share: its CPU and memory, what its stream grew by */
        ok = cs_ns_stream_state(v->hub.url, stream, &seq1, &bytes1) && ok;
        w.pub.cpu_s = cs_ns_cpu_s(v->serve) - serve0;
        w.pub.maxrss_kib = cs_run_proc_kib(v->serve, "VmRSS");
        w.pub.segments = seq1 - seq0, w.pub.out_bytes = bytes1 - bytes0;
    }
    cs_ns_subs_stop(stop_file);
    cs_ns_subs_wait(&ss, &r);
    w.subscribe_s = subscribe_s;
    w.hub_cpu = cs_ns_cpu_s(v->hub.pid) - hub0, w.leaf_cpu = cs_ns_cpu_s(v->leaf.pid) - leaf0;
    w.hub_rss_mib = cs_run_proc_kib(v->hub.pid, "VmRSS") / 1024.0;
    w.leaf_rss_mib = cs_run_proc_kib(v->leaf.pid, "VmRSS") / 1024.0;
    w.appended = sent;
    w.received = cs_bench_hist_count(r.hist);
    w.failed = r.failed;
    w.p50 = cs_bench_hist_pct(r.hist, 0.5), w.p99 = cs_bench_hist_pct(r.hist, 0.99);
    w.ok = ok;
    free(r.catchup_ms);
    cs_ns_consumers_delete(on_mirror ? v->leaf.url : v->hub.url, on_mirror ? mirror : stream,
                           durable, k);
    return w;
}

static void print_row(const row *w, FILE *json)
{
    double exp = (double)w->appended * w->k;
    printf("%6u  %-6s  head office cpu %6.2f s rss %5.1f MiB %8.2f MB out  hub cpu %6.2f s rss "
           "%6.1f MiB  leaf cpu %6.2f s rss %6.1f MiB  received %5.1f %%  p50/p99 %.0f/%.0f ms  "
           "subscribed in %.1f s%s\n",
           w->k, w->place, w->pub.cpu_s, w->pub.maxrss_kib / 1024.0, w->pub.out_bytes / 1e6,
           w->hub_cpu, w->hub_rss_mib, w->leaf_cpu, w->leaf_rss_mib,
           exp > 0 ? 100.0 * (double)w->received / exp : 0, w->p50, w->p99, w->subscribe_s,
           w->ok && !w->failed ? "" : "  (failed branches or processes: see stderr)");
    if (json)
        fprintf(
            json,
            "{\"k\":%u,\"place\":\"%s\",\"appended\":%llu,\"segments\":%llu,"
            "\"publisher_cpu_s\":%.3f,\"publisher_maxrss_kib\":%ld,\"publisher_out_bytes\":%llu,"
            "\"hub_cpu_s\":%.3f,\"hub_rss_mib\":%.1f,\"leaf_cpu_s\":%.3f,\"leaf_rss_mib\":%.1f,"
            "\"received_events\":%llu,\"expected_events\":%.0f,\"failed_branches\":%u,"
            "\"recv_p50_ms\":%.0f,\"recv_p99_ms\":%.0f,\"subscribe_s\":%.2f,\"ok\":%s}\n",
            w->k, w->place, (unsigned long long)w->appended, (unsigned long long)w->pub.segments,
            w->pub.cpu_s, w->pub.maxrss_kib, (unsigned long long)w->pub.out_bytes, w->hub_cpu,
            w->hub_rss_mib, w->leaf_cpu, w->leaf_rss_mib, (unsigned long long)w->received, exp,
            w->failed, w->p50, w->p99, w->subscribe_s, w->ok && !w->failed ? "true" : "false");
}

static bool parse_ks(const char *s, opts *o)
{
    o->nks = 0;
    for (char *end; *s && o->nks < KS_MAX; s = *end == ',' ? end + 1 : end) {
        unsigned long k = strtoul(s, &end, 10);
        if (end == s || k == 0 || k > 20000)
            return false;
        o->ks[o->nks++] = (unsigned)k;
        if (!*end)
            break;
    }
    return o->nks > 0;
}

static bool parse(int argc, char **argv, opts *o)
{
    *o =
        (opts){.rate = 1000, .commits = 100, .seconds = 5, .procs = 2, .mirror = true, .hub = true};
    parse_ks("10,100,1000", o);
    static const struct option lo[] = {
        {"branches", required_argument, NULL, 'k'}, {"rate", required_argument, NULL, 'r'},
        {"seconds", required_argument, NULL, 's'},  {"commits", required_argument, NULL, 'c'},
        {"procs", required_argument, NULL, 'p'},    {"place", required_argument, NULL, 'l'},
        {"head", required_argument, NULL, 'h'},     {"json", required_argument, NULL, 'j'},
        {"quick", no_argument, NULL, 'q'},          {0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'k' && !parse_ks(optarg, o))
            return false;
        else if (c == 'r')
            o->rate = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 's')
            o->seconds = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 'c')
            o->commits = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 'p')
            o->procs = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 'l') {
            o->mirror = !strcmp(optarg, "mirror") || !strcmp(optarg, "both");
            o->hub = !strcmp(optarg, "hub") || !strcmp(optarg, "both");
            if (!o->mirror && !o->hub)
                return false;
        } else if (c == 'h' && (!strcmp(optarg, "serve") || !strcmp(optarg, "sim")))
            o->sim = !strcmp(optarg, "sim");
        else if (c == 'j')
            o->json = optarg;
        else if (c == 'q') {
            o->quick = true, o->rate = 500, o->seconds = 1;
            parse_ks("2", o);
        } else if (c != 'k')
            return false;
    }
    return o->rate > 0 && o->commits >= 1 && o->commits <= 1000 && o->seconds > 0 &&
           o->procs >= 1 && o->procs <= 16;
}

int main(int argc, char **argv)
{
    env v = {0};
    if (!parse(argc, argv, &v.o)) {
        fprintf(stderr,
                "usage: natsscale [--branches K,K,...] [--rate R] [--commits C] [--seconds S] "
                "[--procs P] [--place mirror|hub|both] [--head serve|sim] [--json FILE] "
                "[--quick]\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0); /* a long run shows each row as it ends */
    cs_bench_set_bin(argv[0]);
    snprintf(v.root, sizeof(v.root), "/tmp/cs-bench-natsscale-XXXXXX");
    if (!mkdtemp(v.root))
        return 1;
    snprintf(v.hq, sizeof(v.hq), "%s/hq", v.root);
    char why[512] = "";
    cs_engine *e = NULL;
    uint64_t self = 0;
    bool ok = cs_engine_open(v.hq, NULL, &e) == CS_OK && cs_engine_init(e, "HQ", &self) == CS_OK &&
              cs_engine_network_create(e, "Bench") == CS_OK;
    cs_engine_close(e);
    if (!ok || !cs_ns_start(&v.hub, v.root, "hub", 0, CS_NS_JS_DOMAIN, why, sizeof(why)) ||
        !cs_ns_start(&v.leaf, v.root, "leaf1", v.hub.leaf_port, CS_NS_JS_DOMAIN, why,
                     sizeof(why))) {
        fprintf(stderr, "natsscale: %s%s\n", ok ? "skipped: " : "",
                ok ? why : "cannot make the head office");
        cs_ns_stop(&v.leaf);
        cs_ns_stop(&v.hub);
        cs_bench_rm_tree(v.root);
        return ok ? 77 : 1; /* 77: ctest's skip, when nats-server cannot start */
    }
    if (!v.o.sim && !serve_start(&v)) {
        cs_run_stop(v.serve, SIGTERM, 10000);
        cs_ns_stop(&v.leaf);
        cs_ns_stop(&v.hub);
        return 1;
    }
    printf("natsscale: head office %s; nats-server hub %s (JetStream domain hub), leaf node %s "
           "(domain leaf1, a mirror of the hub's stream); %u events/s in %u commits/s for %u s; "
           "branches receive only, one "
           "connection and one durable consumer each, over %u processes\n",
           v.o.sim ? "bench/nats_sim.h's publisher" : "chainsync serve --nats", v.hub.url,
           v.leaf.url, v.o.rate, v.o.commits, v.o.seconds, v.o.procs);
    FILE *json = v.o.json ? fopen(v.o.json, "w") : NULL;
    unsigned idx = 0, bad = 0;
    for (unsigned i = 0; i < v.o.nks; i++)
        for (int place = 0; place < 2; place++) {
            if ((place == 0 && !v.o.mirror) || (place == 1 && !v.o.hub))
                continue;
            row w = run_k(&v, v.o.ks[i], place == 0, idx++);
            print_row(&w, json);
            bad += !w.ok || w.failed || w.received != w.appended * w.k;
        }
    if (json)
        fclose(json);
    if (v.serve > 0)
        cs_run_stop(v.serve, SIGTERM, 10000);
    cs_ns_stop(&v.leaf);
    cs_ns_stop(&v.hub);
    if (getenv("CS_BENCH_KEEP"))
        fprintf(stderr, "natsscale: kept %s\n", v.root);
    else
        cs_bench_rm_tree(v.root);
    return bad ? 1 : 0;
}
