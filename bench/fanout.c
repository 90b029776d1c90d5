/*
 * fanout.c: sync throughput across many branches (SPEC 8, issue 11): a real `chainsync serve`
 * head office with a log of N catalog events over M items, and K real branch nodes (net/'s
 * cs_node, the real protocol with authentication) each applying into its own LMDB environment.
 * The K nodes share P worker processes, one libuv loop each (cs_node_start on a shared loop), so
 * that 1,000 branches fit on 2 cores.
 *
 * Modes, each for every K of the list:
 *   catch-up      all K branches start at once from a directory that only joined (cursor at the
 *                 shop additions, before the N events) and pull to the head; the time until the
 *                 last is at the head, aggregate events/s applied, MB/s on the wire, per-branch
 *                 p50/p99 catch-up time, the server's peak RSS and per-branch memory, disk per
 *                 branch.
 *   receive-only  the same with the nodes verifying every checksum and the chain and applying
 *                 nothing: what receiving costs.
 *   live          K followers in step, continuous mode, the head office appending at R events/s
 *                 for S seconds: p50/p99/max from commit (the event's time) to received and to
 *                 applied, across all branches; and the server's memory per idle connected branch
 *                 before the appends start.
 * Ceilings in the same run (bench/ceil_*.h): raw LMDB puts of the same bytes (one branch), raw
 * libuv fan-out of the same bytes to K plain sockets; the peer: Redis replicating N writes of the
 * same size to 16 replicas (bench/peer_redis.h). Each figure is printed with its ratio.
 *
 * Usage: bench/fanout [--events N] [--items M] [--branches K,K,...] [--procs P] [--rate R]
 *                     [--seconds S] [--json FILE] [--quick] [--via tcp|nats]
 *                     [--modes receive-only,catch-up,live]
 * Defaults: N 100,000, M 10,000, K 1,10,100,1000, P 2, R 10,000, S 5. --quick: ctest's smoke run.
 * --via nats adds, under each TCP row, the same run through NATS JetStream: serve --nats to a
 * JetStream hub, the nodes with their NATS option through a leaf node (bench/fanout_nats.h; exit
 * 77 when nats-server cannot start). --via tcp, the default, prints only the TCP rows.
 * --modes runs only those modes (live runs the catch-up first: it follows from the head).
 * CS_BENCH_KEEP=1 keeps the scratch directory (serve.log, every branch) and names it.
 */
#include "bench/bench_net.h"
#include "bench/ceil_fanout.h"
#include "bench/ceil_lmdb.h"
#include "bench/fanout_nats.h"
#include "bench/peer_redis.h"
#include "net/net.h"

#include <getopt.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define KS_MAX 8u
#define PROCS_MAX 16u
#define PASSWORD "idle-bench-pw" /* bench_net.h's */

typedef struct opts {
    uint64_t events, items;
    unsigned ks[KS_MAX], nks, kmax;
    unsigned procs, rate, seconds;
    const char *json;
    bool quick, via_nats; /* --via nats: bench/fanout_nats.h's rows under each TCP row */
    unsigned modes;       /* --modes: MODE_* bits, all by default */
} opts;

#define MODE_RECEIVE 1u
#define MODE_CATCH_UP 2u
#define MODE_LIVE 4u

/* ---- workers: many nodes on one loop ---------------------------------------------------- */

typedef struct wnode {
    cs_branch *b;
    cs_node *n;
    char dir[320];
    uint64_t done_ms;
    uint64_t bytes, reconnects;
    cs_err result;
    struct worker *w;
} wnode;

typedef struct worker {
    uv_loop_t loop;
    cs_node_options o;
    wnode *nodes;
    unsigned n, left;
    uint64_t hist_recv[CS_BENCH_HIST_MS + 1], hist_applied[CS_BENCH_HIST_MS + 1];
    msgpack_zone zone;
    cs_event_decoder *dec;
    uv_timer_t stop_timer;
    /* catch-up: the nodes follow (they reconnect after a drop, as `branch follow` does) and
     * at_head stops each once its cursor reaches target */
    uint64_t target;
    uv_timer_t at_head;
    /* how late the loop comes back to a 100 ms timer: the longest gap, and how many over 1 s */
    uv_timer_t lag;
    uint64_t lag_last_ms, lag_max_ms, lag_over_1s;
} worker;

static void node_done(cs_node *n, cs_err result, void *arg)
{
    wnode *wn = arg;
    cs_node_counters c;
    cs_node_counters_get(n, &c);
    wn->reconnects = c.reconnects;
    if (!wn->done_ms) /* at_head set it when the cursor reached the head */
        wn->done_ms = cs_run_wall_ms();
    uint64_t cur = 0;
    if (result == CS_OK && wn->w->target &&
        (cs_node_cursor(n, &cur) != CS_OK || cur < wn->w->target)) {
        fprintf(stderr, "fanout: %s: stopped at event %llu of %llu (the mode's time limit)\n",
                wn->dir, (unsigned long long)cur, (unsigned long long)wn->w->target);
        result = CS_NETWORK;
    }
    wn->result = result;
    if (result != CS_OK)
        fprintf(stderr, "fanout: %s: %s: %s\n", wn->dir, cs_err_name(result), cs_node_errmsg(n));
    cs_node_free(n);
    wn->n = NULL;
    /* As `branch pull` exits once at the head: its environment's memory (LMDB keeps the pages
     * of its largest transaction for the next one) goes back before the others are done. */
    cs_branch_close(wn->b);
    wn->b = NULL;
    wn->w->left--;
}

/* The hook: bytes on the wire, and for the live mode each event's commit-to-received and
 * commit-to-applied time (its time is the head office's clock at append). */
static void on_seg(void *arg, const uint8_t *seg, size_t len, uint64_t recv_ms)
{
    wnode *wn = arg;
    worker *w = wn->w;
    wn->bytes += len;
    if (!w->dec)
        return;
    uint64_t now = cs_run_wall_ms();
    cs_segment_view v;
    cs_log_record rec;
    cs_event_view ev;
    if (cs_segment_open(seg, len, &v) != CS_OK)
        return;
    while (cs_segment_next(&v, &rec) == CS_OK) {
        if (cs_event_decode(w->dec, rec.event, rec.event_len, &ev) != CS_OK)
            continue;
        uint64_t r = recv_ms > ev.time_ms ? recv_ms - ev.time_ms : 0;
        uint64_t a = now > ev.time_ms ? now - ev.time_ms : 0;
        w->hist_recv[r < CS_BENCH_HIST_MS ? r : CS_BENCH_HIST_MS]++;
        w->hist_applied[a < CS_BENCH_HIST_MS ? a : CS_BENCH_HIST_MS]++;
    }
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void stop_all_nodes(uv_timer_t *t)
{
    worker *w = t->data;
    for (unsigned i = 0; i < w->n; i++)
        if (w->nodes[i].n)
            cs_node_stop(w->nodes[i].n);
}

/* Every 10 ms: a node whose cursor reached the head is done (the time is taken here, so a
 * catch-up's figures are within one loop iteration of the commit that reached it). */
static void at_head(uv_timer_t *t)
{
    worker *w = t->data;
    uint64_t now = cs_run_wall_ms(), cur = 0;
    for (unsigned i = 0; i < w->n; i++) {
        wnode *wn = &w->nodes[i];
        if (wn->n && !wn->done_ms && cs_node_cursor(wn->n, &cur) == CS_OK && cur >= w->target) {
            wn->done_ms = now;
            cs_node_stop(wn->n);
        }
    }
    if (!w->left)
        uv_timer_stop(t);
}

static void loop_lag(uv_timer_t *t)
{
    worker *w = t->data;
    uint64_t now = cs_run_now_ms(), gap = now - w->lag_last_ms;
    w->lag_last_ms = now;
    if (gap > w->lag_max_ms)
        w->lag_max_ms = gap;
    w->lag_over_1s += gap > 1000;
}

/* Runs nodes [from, to) of dirs in this process until they are done (or, for follow, until
 * stop_after_ms), then writes one line per node ("done_ms bytes result") and, for follow, the
 * two histograms, to fd. */
/* Joins run in waves: each node derives its keys with argon2id on the loop's thread, and a
 * wave must finish its handshakes within the server's 10 s limit, also on a loaded machine. */
#define JOIN_WAVE 8u
#define TURN_BUDGET_MS 25u

/* Joins dirs [from, to) as shops[from..to) in this process, JOIN_WAVE at a time. */
static int worker_join(char dirs[][320], const uint64_t *shops, unsigned from, unsigned to,
                       const char *addr)
{
    raise_fd_limit();
    for (unsigned w0 = from; w0 < to; w0 += JOIN_WAVE) {
        unsigned w1 = to - w0 < JOIN_WAVE ? to : w0 + JOIN_WAVE, left = 0;
        uv_loop_t loop;
        uv_loop_init(&loop);
        cs_branch *bs[JOIN_WAVE] = {0};
        cs_node_options os[JOIN_WAVE];
        wnode wn[JOIN_WAVE];
        worker w = {.left = 0};
        FILE *devnull = fopen("/dev/null", "w");
        for (unsigned i = w0; i < w1; i++) {
            unsigned j = i - w0;
            char msg[320];
            os[j] = (cs_node_options){.mode = CS_NODE_JOIN,
                                      .head = addr,
                                      .shop = shops[i],
                                      .password = PASSWORD,
                                      .log = devnull,
                                      .no_watch = true};
            wn[j] = (wnode){.w = &w};
            snprintf(wn[j].dir, sizeof(wn[j].dir), "%s", dirs[i]);
            if (cs_branch_open(dirs[i], NULL, &bs[j]) != CS_OK ||
                cs_node_start(&loop, bs[j], dirs[i], &os[j], node_done, &wn[j], &wn[j].n, msg,
                              sizeof(msg)) != CS_OK) {
                fprintf(stderr, "fanout: cannot join %s: %s\n", dirs[i], msg);
                return 1;
            }
            left++;
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        if (devnull)
            fclose(devnull);
        for (unsigned j = 0; j < w1 - w0; j++) {
            cs_branch_close(bs[j]);
            if (wn[j].result != CS_OK)
                return 1;
        }
        (void)left;
    }
    return 0;
}

static int worker_run(char dirs[][320], unsigned from, unsigned to, const cs_node_options *o,
                      uint64_t stop_after_ms, uint64_t target, bool latencies, int fd)
{
    raise_fd_limit();
    worker *w = calloc(1, sizeof(*w));
    if (!w || uv_loop_init(&w->loop) != 0)
        return 1;
    w->o = *o;
    w->n = to - from;
    /* The nodes of this loop share TURN_BUDGET_MS of applying per iteration (net.h). */
    cs_node_turns *turns = NULL;
    if (cs_node_turns_new(TURN_BUDGET_MS, &turns) != CS_OK)
        return 1;
    w->nodes = calloc(w->n, sizeof(wnode));
    /* Live only: on_seg decodes every event for its time, which a catch-up row must not pay
     * (in follow mode it cost receive-only two thirds of its rate). */
    if (latencies && cs_event_decoder_new(&w->dec) != CS_OK)
        return 1;
    for (unsigned i = 0; i < w->n; i++) {
        wnode *wn = &w->nodes[i];
        wn->w = w;
        snprintf(wn->dir, sizeof(wn->dir), "%s", dirs[from + i]);
        char msg[320];
        cs_node_options *no = malloc(sizeof(*no));
        if (!no)
            return 1;
        *no = *o;
        no->hook_arg = wn;
        no->turns = turns;
        if (o->nats) { /* --via nats: each branch its own credentials, <creds>/<dir's name>.json */
            cs_nats_options *nn = malloc(sizeof(*nn));
            char *path = malloc(400);
            if (!nn || !path)
                return 1;
            *nn = *o->nats;
            snprintf(path, 400, "%s/%s.json", o->nats->creds, strrchr(wn->dir, '/') + 1);
            nn->creds = path, no->nats = nn;
        }
        if (cs_branch_open(wn->dir, NULL, &wn->b) != CS_OK ||
            cs_node_start(&w->loop, wn->b, wn->dir, no, node_done, wn, &wn->n, msg, sizeof(msg)) !=
                CS_OK) {
            fprintf(stderr, "fanout: cannot start a node on %s: %s\n", wn->dir, msg);
            return 1;
        }
        w->left++;
    }
    w->target = target;
    if (target) {
        uv_timer_init(&w->loop, &w->at_head);
        w->at_head.data = w;
        uv_timer_start(&w->at_head, at_head, 10, 10);
        uv_unref((uv_handle_t *)&w->at_head);
    }
    uv_timer_init(&w->loop, &w->lag);
    w->lag.data = w;
    w->lag_last_ms = cs_run_now_ms();
    uv_timer_start(&w->lag, loop_lag, 100, 100);
    uv_unref((uv_handle_t *)&w->lag);
    if (stop_after_ms) {
        uv_timer_init(&w->loop, &w->stop_timer);
        w->stop_timer.data = w;
        uv_timer_start(&w->stop_timer, stop_all_nodes, stop_after_ms, 0);
        uv_unref((uv_handle_t *)&w->stop_timer);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    FILE *out = fdopen(fd, "w");
    for (unsigned i = 0; i < w->n; i++)
        fprintf(out, "%llu %llu %d %llu\n", (unsigned long long)w->nodes[i].done_ms,
                (unsigned long long)w->nodes[i].bytes, (int)w->nodes[i].result,
                (unsigned long long)w->nodes[i].reconnects);
    fprintf(out, "w %llu %llu\n", (unsigned long long)w->lag_max_ms,
            (unsigned long long)w->lag_over_1s);
    if (w->dec)
        for (unsigned i = 0; i <= CS_BENCH_HIST_MS; i++)
            fprintf(out, "h %u %llu %llu\n", i, (unsigned long long)w->hist_recv[i],
                    (unsigned long long)w->hist_applied[i]);
    fclose(out);
    for (unsigned i = 0; i < w->n; i++)
        cs_branch_close(w->nodes[i].b);
    cs_node_turns_free(turns);
    return 0;
}

/* ---- the parent: spread K nodes over P workers, gather what they say --------------------- */

typedef struct result {
    unsigned k;
    uint64_t start_ms, last_ms;
    double *catchup_ms; /* per node */
    uint64_t bytes, reconnects;
    unsigned failed;
    uint64_t lag_max_ms, lag_over_1s; /* of the worker loops (loop_lag) */
    uint64_t hist_recv[CS_BENCH_HIST_MS + 1], hist_applied[CS_BENCH_HIST_MS + 1];
} result;

static bool gather(FILE *in, result *r, unsigned *idx)
{
    char line[128];
    while (fgets(line, sizeof(line), in)) {
        unsigned long long a, b, c, d;
        unsigned h;
        int code;
        if (sscanf(line, "h %u %llu %llu", &h, &b, &c) == 3 && h <= CS_BENCH_HIST_MS) {
            r->hist_recv[h] += b;
            r->hist_applied[h] += c;
        } else if (sscanf(line, "w %llu %llu", &b, &c) == 2) {
            r->lag_max_ms = b > r->lag_max_ms ? b : r->lag_max_ms;
            r->lag_over_1s += c;
        } else if (sscanf(line, "%llu %llu %d %llu", &a, &b, &code, &d) == 4) {
            r->reconnects += d;
            r->catchup_ms[(*idx)++] = a > r->start_ms ? (double)(a - r->start_ms) : 0;
            if (a > r->last_ms)
                r->last_ms = a;
            r->bytes += b;
            r->failed += code != 0;
        }
    }
    return true;
}

static bool run_nodes(char dirs[][320], unsigned k, unsigned procs, const cs_node_options *o,
                      uint64_t stop_after_ms, uint64_t target, bool latencies, result *r)
{
    pid_t pids[PROCS_MAX];
    FILE *ins[PROCS_MAX];
    unsigned p = procs < k ? procs : k, idx = 0;
    r->k = k;
    r->catchup_ms = calloc(k, sizeof(double));
    r->start_ms = cs_run_wall_ms();
    for (unsigned i = 0; i < p; i++) {
        int fds[2];
        if (pipe(fds) != 0)
            return false;
        unsigned from = k * i / p, to = k * (i + 1) / p;
        pids[i] = fork();
        if (pids[i] == 0) {
            close(fds[0]);
            _exit(worker_run(dirs, from, to, o, stop_after_ms, target, latencies, fds[1]));
        }
        close(fds[1]);
        ins[i] = fdopen(fds[0], "r");
    }
    bool ok = true;
    for (unsigned i = 0; i < p; i++) {
        gather(ins[i], r, &idx);
        fclose(ins[i]);
        int st = 0;
        waitpid(pids[i], &st, 0);
        ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    return ok && idx == k && r->failed == 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, unsigned n, double q)
{
    qsort(v, n, sizeof(double), cmp_double);
    return v[(size_t)((n - 1) * q)];
}

/* ---- the head office and the branch directories ----------------------------------------- */

typedef struct bench {
    opts o;
    cs_bench_net net;  /* root, hq, serve, addr, the K_max shops */
    char (*tmpl)[320]; /* a joined directory per shop, at the cursor of the shop additions */
    char (*run)[320];  /* where a measurement copies them */
    uint64_t start_cursor, head;
    double event_bytes; /* mean stored event size of the N events */
    struct cs_fn *fn;   /* --via nats, while its rows run: serve publishes to the hub, and ... */
    const cs_nats_options *nats; /* ... the nodes consume through the leaf node; else NULL */
} bench;

static void stop_serve(bench *b)
{
    if (b->net.serve > 0)
        cs_run_stop(b->net.serve, SIGTERM, 20000);
    b->net.serve = 0;
}

/* K_max branches join while the log holds only the shop additions: the templates. Joins run P
 * at a time (each derives its keys with argon2id once). */
static bool provision(bench *b)
{
    unsigned k = b->o.kmax, p = b->o.procs;
    if (!cs_bench_net_make(&b->net) || !cs_bench_net_serve(&b->net)) {
        fprintf(stderr, "fanout: cannot make the head office or start serve\n");
        return false;
    }
    for (unsigned i = 0; i < k; i++)
        snprintf(b->tmpl[i], sizeof(b->tmpl[0]), "%.280s/t%u", b->net.root, i);
    pid_t pids[PROCS_MAX];
    unsigned np = p < k ? p : k;
    for (unsigned i = 0; i < np; i++) {
        pids[i] = fork();
        if (pids[i] == 0)
            _exit(worker_join(b->tmpl, b->net.shops, k * i / np, k * (i + 1) / np, b->net.addr));
    }
    bool ok = true;
    for (unsigned i = 0; i < np; i++) {
        int st = 0;
        waitpid(pids[i], &st, 0);
        ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    if (!ok) {
        fprintf(stderr, "fanout: a branch could not join\n");
        stop_serve(b);
        return false;
    }
    stop_serve(b);
    return true;
}

/* The N events: M items created, then edits of random items, a sync point every 1,000 events,
 * as a head office makes them. Written without fsync (building the fixture is not measured). */
static bool build_log(bench *b)
{
    cs_log_options lo = {.flags = CS_LOG_NOSYNC};
    cs_engine *e = NULL;
    if (cs_engine_open(b->net.hq, &lo, &e) != CS_OK)
        return false;
    cs_log_reader *r0 = NULL; /* where the templates stand: the catch-up starts there */
    if (cs_log_reader_open(cs_engine_log(e), &r0) == CS_OK)
        cs_log_reader_head(r0, &b->start_cursor);
    cs_log_reader_close(r0);
    uint64_t m = b->o.items < b->o.events ? b->o.items : b->o.events, made = 0;
    uint64_t *ids = calloc(m, sizeof(uint64_t));
    bool ok = ids != NULL;
    cs_write_result *res = calloc(1000, sizeof(*res));
    for (uint64_t i = 0; ok && i < m; i += 1000) {
        json_t *arr = json_array();
        unsigned n = m - i < 1000 ? (unsigned)(m - i) : 1000;
        for (unsigned j = 0; j < n; j++)
            json_array_append_new(
                arr, json_pack("{s:s,s:s}", "name", "Bath and grooming, large dogs", "description",
                               "Full bath with hypoallergenic shampoo, drying, brushing, nail "
                               "clipping and ear cleaning; about 90 minutes."));
        ok = cs_engine_put_many(e, "service_category", arr, res) == CS_OK;
        for (unsigned j = 0; ok && j < n; j++)
            ids[made++] = res[j].id;
        json_decref(arr);
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (uint64_t i = m; ok && i < b->o.events; i++) {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        json_t *f = json_pack("{s:s,s:s}", "name", "Bath and grooming, large dogs", "description",
                              i % 2 ? "Full bath with hypoallergenic shampoo, drying, brushing, "
                                      "nail clipping and ear cleaning; about 90 minutes."
                                    : "Full bath with hypoallergenic shampoo, drying, brushing "
                                      "and nail clipping; about 80 minutes, now cheaper.");
        ok = cs_engine_put(e, "service_category", ids[seed % m], f, 0, NULL) == CS_OK;
        json_decref(f);
        if (ok && (i + 1) % 1000 == 0)
            ok = cs_engine_sync(e, 0, NULL) == CS_OK;
    }
    cs_log_reader *r = NULL;
    if (ok && cs_log_reader_open(cs_engine_log(e), &r) == CS_OK) {
        cs_log_reader_head(r, &b->head);
        cs_log_record rec;
        uint64_t bytes = 0, n = 0;
        cs_log_reader_seek(r, b->start_cursor + 1);
        while (cs_log_reader_next(r, &rec) == CS_OK)
            bytes += rec.event_len + CS_RECORD_HEADER_BYTES, n++;
        b->event_bytes = n ? (double)bytes / (double)n : 0;
    }
    cs_log_reader_close(r);
    free(ids);
    free(res);
    cs_engine_close(e);
    sync(); /* NOSYNC above: the fixture reaches the disk before anything is measured */
    return ok;
}

static bool copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    bool ok = in && out;
    while (ok && (n = fread(buf, 1, sizeof(buf), in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        ok = false;
    return ok;
}

/* Fresh copies of the first k templates (their data.mdb; LMDB makes a new lock file). */
static bool copy_templates(bench *b, unsigned k)
{
    char dir[280];
    snprintf(dir, sizeof(dir), "%s/run", b->net.root);
    cs_bench_rm_tree(dir);
    mkdir(dir, 0700);
    for (unsigned i = 0; i < k; i++) {
        char from[400], to[400];
        snprintf(b->run[i], sizeof(b->run[0]), "%s/b%u", dir, i);
        mkdir(b->run[i], 0700);
        snprintf(from, sizeof(from), "%s/data.mdb", b->tmpl[i]);
        snprintf(to, sizeof(to), "%s/data.mdb", b->run[i]);
        if (!copy_file(from, to))
            return false;
    }
    return true;
}

static double disk_kib(bench *b, unsigned k)
{
    double total = 0;
    for (unsigned i = 0; i < k; i++) {
        char path[400];
        struct stat st;
        snprintf(path, sizeof(path), "%s/data.mdb", b->run[i]);
        if (stat(path, &st) == 0)
            total += (double)st.st_blocks * 512.0 / 1024.0;
    }
    return total / k;
}

/* ---- the modes --------------------------------------------------------------------------- */

typedef struct row {
    unsigned k;
    const char *mode;
    double secs, agg_eps, mbps, p50_ms, p99_ms, peak_mib, per_branch_kib, disk_kib;
    double recv_p50, recv_p99, recv_max, appl_p50, appl_p99, appl_max, idle_kib;
    uint64_t reconnects, lag_max_ms, lag_over_1s; /* result's */
    uint64_t missing; /* live: deliveries that did not come within the run */
    bool ok;
} row;

/* A catch-up whose branches are not all at the head by then has failed. */
#define CATCH_UP_LIMIT_MS (20u * 60u * 1000u)

/* catch-up (receive_only false) or receive-only, for k branches from the templates. */
static row catch_up(bench *b, unsigned k, bool receive_only)
{
    row w = {.k = k, .mode = receive_only ? "receive-only" : "catch-up"};
    if (!copy_templates(b, k) || !cs_bench_net_serve(&b->net))
        return w;
    if (b->fn && !cs_fn_published(b->fn, b->head)) { /* the whole log in the stream first */
        stop_serve(b);
        return w;
    }
    long base = cs_run_proc_kib(b->net.serve, "RssAnon");
    /* Over TCP the nodes follow, so that one the head office drops (SPEC 5: a slow branch is
     * "dropped and left to reconnect") reconnects and resumes from its cursor as a deployed
     * branch does, and at_head ends each at the head; the row counts the reconnections. A NATS
     * pull already ends when its consumer has nothing pending. Receive-only nodes pull: their
     * cursor lives in memory, so a reconnect could not resume. */
    cs_node_options o = {.mode = b->nats || receive_only ? CS_NODE_PULL : CS_NODE_FOLLOW,
                         .head = b->net.addr,
                         .nats = b->nats,
                         .log = fopen("/dev/null", "w"),
                         .no_watch = true,
                         .receive_only = receive_only,
                         .on_segment = on_seg};
    result r = {0};
    w.ok = run_nodes(b->run, k, b->o.procs, &o, b->nats ? 0 : CATCH_UP_LIMIT_MS,
                     b->nats ? 0 : b->head, false, &r);
    w.reconnects = r.reconnects, w.lag_max_ms = r.lag_max_ms, w.lag_over_1s = r.lag_over_1s;
    long peak = cs_run_proc_kib(b->net.serve, "VmHWM"),
         anon = cs_run_proc_kib(b->net.serve, "RssAnon");
    stop_serve(b);
    fclose(o.log);
    uint64_t events = b->head - b->start_cursor;
    w.secs = (double)(r.last_ms - r.start_ms) / 1000.0;
    w.agg_eps = w.secs > 0 ? (double)events * k / w.secs : 0;
    w.mbps = w.secs > 0 ? (double)r.bytes / 1e6 / w.secs : 0;
    w.p50_ms = pct(r.catchup_ms, k, 0.5);
    w.p99_ms = pct(r.catchup_ms, k, 0.99);
    w.peak_mib = peak / 1024.0;
    w.per_branch_kib = (double)(anon - base) / k;
    w.disk_kib = receive_only ? 0 : disk_kib(b, k);
    free(r.catchup_ms);
    return w;
}

#define LIVE_DRAIN_MS 30000u

static unsigned live_per_tick(unsigned rate) /* events appended every 10 ms */
{
    return rate / 100 ? rate / 100 : 1;
}

/* The appender of the live mode, in a child process: it waits for the followers to settle,
 * reports the server's idle memory, then appends at `rate` for `secs` in batches every 10 ms. */
static void appender(bench *b, unsigned rate, unsigned secs, long base_kib, unsigned k, int fd)
{
    cs_run_sleep_ms(2500);
    long idle = cs_run_proc_kib(b->net.serve, "RssAnon");
    cs_engine *e = NULL;
    if (cs_engine_open(b->net.hq, NULL, &e) != CS_OK)
        _exit(1);
    unsigned per = live_per_tick(rate);
    json_t *arr = json_array();
    for (unsigned i = 0; i < per; i++)
        json_array_append_new(arr, json_pack("{s:s}", "name", "A category created live"));
    uint64_t t0 = cs_run_wall_ms(), sent = 0;
    for (unsigned tick = 0; tick < secs * 100; tick++) {
        if (cs_engine_put_many(e, "service_category", arr, NULL) != CS_OK)
            _exit(1);
        sent += per;
        uint64_t due = t0 + (tick + 1) * 10, now = cs_run_wall_ms();
        if (due > now)
            cs_run_sleep_ms((unsigned)(due - now));
    }
    json_decref(arr);
    cs_engine_close(e);
    FILE *out = fdopen(fd, "w");
    fprintf(out, "%f %llu\n", (double)(idle - base_kib) / k, (unsigned long long)sent);
    fclose(out);
    _exit(0);
}

/* live: k followers in step (after catch_up), continuous mode, appends at the rate. Branches
 * apply when k <= 100 (SPEC 8: 100 applying branches), else receive only (1,000 receiving). */
static row live(bench *b, unsigned k)
{
    row w = {.k = k, .mode = k <= 100 ? "live, applying" : "live, receive-only"};
    cs_engine *e = NULL;
    cs_log_reader *lr = NULL;
    uint64_t mode_head = 0;
    if (cs_engine_open(b->net.hq, NULL, &e) != CS_OK ||
        cs_engine_network_mode(e, "continuous", NULL) != CS_OK ||
        cs_log_reader_open(cs_engine_log(e), &lr) != CS_OK ||
        cs_log_reader_head(lr, &mode_head) != CS_OK) {
        cs_log_reader_close(lr);
        cs_engine_close(e);
        return w;
    }
    cs_log_reader_close(lr);
    cs_engine_close(e);
    if (!cs_bench_net_serve(&b->net))
        return w;
    /* Where the appender's events end (one event per category, LIVE_PER_TICK a tick): each
     * branch runs until it holds them all, or LIVE_DRAIN_MS after the last, so that a branch
     * that falls behind counts its late events (as 10 s or more) rather than dropping them. */
    uint64_t target = mode_head + (uint64_t)live_per_tick(b->o.rate) * b->o.seconds * 100;
    long base = cs_run_proc_kib(b->net.serve, "RssAnon");
    int fds[2];
    if (pipe(fds) != 0)
        return w;
    pid_t ap = fork();
    if (ap == 0) {
        close(fds[0]);
        appender(b, b->o.rate, b->o.seconds, base, k, fds[1]);
    }
    close(fds[1]);
    cs_node_options o = {.mode = CS_NODE_FOLLOW,
                         .head = b->net.addr,
                         .nats = b->nats,
                         .log = fopen("/dev/null", "w"),
                         .no_watch = true,
                         .receive_only = k > 100,
                         .on_segment = on_seg};
    result r = {0};
    run_nodes(b->run, k, b->o.procs, &o, 2500 + b->o.seconds * 1000 + LIVE_DRAIN_MS, target, true,
              &r);
    /* Deliveries that never came within the run: 10 s or more late (the bucket's meaning). */
    uint64_t expected = (target - b->head) * k, got = cs_bench_hist_count(r.hist_recv);
    w.missing = expected > got ? expected - got : 0;
    r.hist_recv[CS_BENCH_HIST_MS] += w.missing;
    got = cs_bench_hist_count(r.hist_applied);
    r.hist_applied[CS_BENCH_HIST_MS] += expected > got ? expected - got : 0;
    w.reconnects = r.reconnects, w.lag_max_ms = r.lag_max_ms, w.lag_over_1s = r.lag_over_1s;
    FILE *in = fdopen(fds[0], "r");
    w.ok = in && fscanf(in, "%lf", &w.idle_kib) == 1;
    if (in)
        fclose(in);
    cs_run_reap(ap, cs_run_now_ms() + 10000);
    stop_serve(b);
    fclose(o.log);
    w.recv_p50 = cs_bench_hist_pct(r.hist_recv, 0.5),
    w.recv_p99 = cs_bench_hist_pct(r.hist_recv, 0.99);
    w.recv_max = cs_bench_hist_max(r.hist_recv);
    w.appl_p50 = cs_bench_hist_pct(r.hist_applied, 0.5),
    w.appl_p99 = cs_bench_hist_pct(r.hist_applied, 0.99);
    w.appl_max = cs_bench_hist_max(r.hist_applied);
    free(r.catchup_ms);
    return w;
}

/* ---- output ------------------------------------------------------------------------------ */

/* Under a row: what a reader needs to trust it (a dropped branch that reconnected, a worker
 * loop that went long without serving its branches). */
static void print_loops(const row *w)
{
    printf("%6s  %-20s  reconnections %llu; worker loops: longest gap %llu ms, %llu over 1 s\n", "",
           "", (unsigned long long)w->reconnects, (unsigned long long)w->lag_max_ms,
           (unsigned long long)w->lag_over_1s);
}

static void print_row(const row *w, FILE *json)
{
    if (!w->ok) {
        printf("%6u  %-20s  failed (see stderr)\n", w->k, w->mode);
        print_loops(w);
        return;
    }
    if (w->recv_p99 > 0 || w->idle_kib != 0) {
        printf("%6u  %-20s  received p50/p99/max %.0f/%.0f/%.0f ms", w->k, w->mode, w->recv_p50,
               w->recv_p99, w->recv_max);
        if (w->k <= 100)
            printf("  applied %.0f/%.0f/%.0f ms", w->appl_p50, w->appl_p99, w->appl_max);
        printf("  idle %.1f KiB/branch\n", w->idle_kib);
        if (w->missing)
            printf("%6s  %-20s  %llu deliveries not made within %u s of the last append: counted "
                   "as 10 s or more\n",
                   "", "", (unsigned long long)w->missing, LIVE_DRAIN_MS / 1000);
    } else {
        printf("%6u  %-20s  %8.2f s %12.0f ev/s %8.1f MB/s  p50/p99 %.0f/%.0f ms  serve peak "
               "%.0f MiB, %.1f KiB/branch  disk %.0f KiB/branch\n",
               w->k, w->mode, w->secs, w->agg_eps, w->mbps, w->p50_ms, w->p99_ms, w->peak_mib,
               w->per_branch_kib, w->disk_kib);
    }
    print_loops(w);
    if (json)
        fprintf(json,
                "{\"k\":%u,\"mode\":\"%s\",\"secs\":%.3f,\"events_per_s\":%.0f,\"mb_per_s\":%.2f,"
                "\"p50_ms\":%.1f,\"p99_ms\":%.1f,\"serve_peak_mib\":%.1f,\"kib_per_branch\":%.2f,"
                "\"disk_kib_per_branch\":%.0f,\"recv_p50_ms\":%.0f,\"recv_p99_ms\":%.0f,"
                "\"recv_max_ms\":%.0f,\"applied_p50_ms\":%.0f,\"applied_p99_ms\":%.0f,"
                "\"applied_max_ms\":%.0f,\"idle_kib_per_branch\":%.2f,\"reconnects\":%llu,"
                "\"loop_gap_max_ms\":%llu,\"loop_gaps_over_1s\":%llu,\"live_missing\":%llu}\n",
                w->k, w->mode, w->secs, w->agg_eps, w->mbps, w->p50_ms, w->p99_ms, w->peak_mib,
                w->per_branch_kib, w->disk_kib, w->recv_p50, w->recv_p99, w->recv_max, w->appl_p50,
                w->appl_p99, w->appl_max, w->idle_kib, (unsigned long long)w->reconnects,
                (unsigned long long)w->lag_max_ms, (unsigned long long)w->lag_over_1s,
                (unsigned long long)w->missing);
}

static bool parse_ks(const char *s, opts *o)
{
    o->nks = 0;
    o->kmax = 0;
    for (char *end; *s && o->nks < KS_MAX; s = *end == ',' ? end + 1 : end) {
        unsigned long k = strtoul(s, &end, 10);
        if (end == s || k == 0 || k > 2000)
            return false;
        o->ks[o->nks++] = (unsigned)k;
        if (k > o->kmax)
            o->kmax = (unsigned)k;
        if (!*end)
            break;
    }
    return o->nks > 0;
}

/* "receive-only,catch-up,live" or a part of it (live needs catch-up: it follows from there). */
static bool parse_modes(const char *s, opts *o)
{
    o->modes = 0;
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", s);
    for (char *save = NULL, *m = strtok_r(buf, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
        if (strcmp(m, "receive-only") == 0)
            o->modes |= MODE_RECEIVE;
        else if (strcmp(m, "catch-up") == 0)
            o->modes |= MODE_CATCH_UP;
        else if (strcmp(m, "live") == 0)
            o->modes |= MODE_LIVE | MODE_CATCH_UP;
        else
            return false;
    }
    return o->modes != 0;
}

static bool parse(int argc, char **argv, opts *o)
{
    *o = (opts){.events = 100000,
                .items = 10000,
                .procs = 2,
                .rate = 10000,
                .seconds = 5,
                .modes = MODE_RECEIVE | MODE_CATCH_UP | MODE_LIVE};
    parse_ks("1,10,100,1000", o);
    static const struct option lo[] = {{"events", required_argument, NULL, 'n'},
                                       {"items", required_argument, NULL, 'm'},
                                       {"branches", required_argument, NULL, 'k'},
                                       {"procs", required_argument, NULL, 'p'},
                                       {"rate", required_argument, NULL, 'r'},
                                       {"seconds", required_argument, NULL, 's'},
                                       {"json", required_argument, NULL, 'j'},
                                       {"quick", no_argument, NULL, 'q'},
                                       {"via", required_argument, NULL, 'v'},
                                       {"modes", required_argument, NULL, 'o'},
                                       {0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'n')
            o->events = strtoull(optarg, NULL, 10);
        else if (c == 'm')
            o->items = strtoull(optarg, NULL, 10);
        else if (c == 'k' && !parse_ks(optarg, o))
            return false;
        else if (c == 'p')
            o->procs = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 'r')
            o->rate = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 's')
            o->seconds = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 'j')
            o->json = optarg;
        else if (c == 'o' && !parse_modes(optarg, o))
            return false;
        else if (c == 'v' && (strcmp(optarg, "tcp") == 0 || strcmp(optarg, "nats") == 0))
            o->via_nats = strcmp(optarg, "nats") == 0;
        else if (c == 'q') {
            o->quick = true;
            o->events = 3000, o->items = 300, o->rate = 1000, o->seconds = 1, o->procs = 1;
            parse_ks("1,4", o); /* 4 on one loop: two catch up, two wait for a slot */
        } else if (c != 'k' && c != 'o')
            return false;
    }
    return o->events > 0 && o->items > 0 && o->procs >= 1 && o->procs <= PROCS_MAX && o->rate > 0 &&
           o->seconds > 0;
}

/* live() appends to the head office; the next K's catch-up must see the same N events, so the
 * head office's file is put back afterwards (no process has it open then). */
static bool hq_save(bench *b, bool restore)
{
    char a[400], c[400];
    snprintf(a, sizeof(a), "%s/data.mdb", b->net.hq);
    snprintf(c, sizeof(c), "%s/hq-data.mdb.saved", b->net.root);
    if (!restore)
        return copy_file(a, c);
    char lock[400];
    snprintf(lock, sizeof(lock), "%s/lock.mdb", b->net.hq);
    unlink(lock);
    return copy_file(c, a);
}

static void ratio_line(const char *what, double ours, double ceil, const char *target)
{
    if (ours <= 0)
        return; /* the row failed: nothing to compare */
    if (ceil > 0)
        printf("        %-44s %12.0f vs %12.0f  ratio %5.2f  %s\n", what, ours, ceil, ours / ceil,
               target);
    else
        printf("        %-44s %12.0f vs   (unavailable)  %s\n", what, ours, target);
}

/* --via nats: the same three runs for k through JetStream (bench/fanout_nats.h): serve with
 * --nats to a fresh JetStream hub, the nodes through a leaf node; each row under the TCP one, with
 * what nats-server spent and the ratio. The consumers are dropped after the receive-only run (the
 * catch-up starts from the stream's first segment) but kept for the live run, whose branches
 * are the catch-up's, at the head. */
static bool via_nats(bench *b, unsigned k, const row *t1, const row *t2, const row *t3, FILE *json)
{
    cs_fn fn;
    char why[512];
    if (!cs_fn_begin(&fn, b->net.root, b->net.hq, b->net.shops, k, why, sizeof(why))) {
        fprintf(stderr, "fanout: --via nats: %s\n", why);
        cs_fn_end(&fn);
        return false;
    }
    b->fn = &fn, b->nats = &fn.branch, b->net.nats = fn.head.url;
    cs_fn_row_begin(&fn);
    row n1 = catch_up(b, k, true);
    n1.mode = "receive-only, nats";
    print_row(&n1, json);
    cs_fn_row_end(&fn, n1.ok, "nats / tcp (ev/s)", n1.agg_eps, t1->ok ? t1->agg_eps : 0, k, n1.mode,
                  json);
    cs_fn_consumers_drop(&fn, b->net.shops, k);
    cs_fn_row_begin(&fn);
    row n2 = catch_up(b, k, false);
    n2.mode = "catch-up, nats";
    unsigned at_head = n2.ok ? cs_fn_at_head(b->run, k, b->head) : 0;
    if (n2.ok && at_head != k) {
        fprintf(stderr, "fanout: --via nats: %u of %u branches short of the head\n", k - at_head,
                k);
        n2.ok = false;
    }
    print_row(&n2, json);
    cs_fn_row_end(&fn, n2.ok, "nats / tcp (ev/s)", n2.agg_eps, t2->ok ? t2->agg_eps : 0, k, n2.mode,
                  json);
    cs_fn_row_begin(&fn);
    row n3 = n2.ok ? live(b, k) : (row){.k = k};
    n3.mode = k <= 100 ? "live, applying, nats" : "live, receive-only, nats";
    print_row(&n3, json);
    cs_fn_row_end(&fn, n3.ok, "nats / tcp (received p99, ms)", n3.recv_p99,
                  t3->ok ? t3->recv_p99 : 0, k, n3.mode, json);
    b->fn = NULL, b->nats = NULL, b->net.nats = NULL;
    cs_fn_end(&fn);
    return hq_save(b, true);
}

int main(int argc, char **argv)
{
    opts o;
    if (!parse(argc, argv, &o)) {
        fprintf(stderr, "usage: fanout [--events N] [--items M] [--branches K,K,...] [--procs P] "
                        "[--rate R] [--seconds S] [--json FILE] [--quick] [--via tcp|nats]\n"
                        "              [--modes receive-only,catch-up,live]\n");
        return 1;
    }
    cs_bench_set_bin(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    bench b = {.o = o};
    b.net.k = o.kmax;
    b.net.shops = calloc(o.kmax, sizeof(uint64_t));
    b.tmpl = calloc(o.kmax, sizeof(*b.tmpl));
    b.run = calloc(o.kmax, sizeof(*b.run));
    snprintf(b.net.root, sizeof(b.net.root), "/tmp/cs-bench-fanout-XXXXXX");
    if (!b.net.shops || !b.tmpl || !b.run || !mkdtemp(b.net.root))
        return 1;
    snprintf(b.net.hq, sizeof(b.net.hq), "%s/hq", b.net.root);
    snprintf(b.net.log, sizeof(b.net.log), "%s/serve.log", b.net.root);
    FILE *json = o.json ? fopen(o.json, "w") : NULL;
    double t0 = cs_bench_now_s();
    if (!provision(&b) || !build_log(&b)) {
        fprintf(stderr, "fanout: the network could not be set up\n");
        stop_serve(&b);
        cs_bench_rm_tree(b.net.root);
        return 1;
    }
    uint64_t n = b.head - b.start_cursor;
    printf("fanout: %llu events over %llu items (%.0f bytes each, stored), %u worker processes; "
           "set up in %.0f s\n",
           (unsigned long long)n, (unsigned long long)o.items, b.event_bytes, o.procs,
           cs_bench_now_s() - t0);
    if (o.via_nats) { /* nats-server must start, or there is nothing to compare: a skip */
        cs_fn probe;
        char why[512];
        bool up = cs_fn_begin(&probe, b.net.root, b.net.hq, b.net.shops, 0, why, sizeof(why));
        cs_fn_end(&probe);
        if (!up) {
            fprintf(stderr, "fanout: --via nats: skipped: %s\n", why);
            cs_bench_rm_tree(b.net.root);
            return 77;
        }
    }
    char raw[400];
    snprintf(raw, sizeof(raw), "%s/raw-lmdb", b.net.root);
    mkdir(raw, 0700);
    double lmdb = cs_ceil_lmdb_puts(raw, n, (size_t)b.event_bytes, CS_NET_SEGMENT_EVENTS, true);
    cs_bench_rm_tree(raw);
    char why[256] = "";
    cs_peer_redis_result redis = {0};
    cs_peer_redis_opts ro = {.replicas = 16, .n = n, .value_bytes = (size_t)b.event_bytes};
    bool have_redis =
        cs_peer_redis_ensure(!o.quick, why, sizeof(why)) && cs_peer_redis(&ro, &redis);
    printf(
        "ceilings: raw LMDB puts of the same bytes, one writer, durable, batch %u: %.0f puts/s\n",
        CS_NET_SEGMENT_EVENTS, lmdb);
    if (have_redis)
        printf("peer: Redis %s replicating %llu writes of %zu B to 16 replicas: %.0f events/s "
               "aggregate (%.2f s)\n",
               redis.version, (unsigned long long)n, ro.value_bytes, redis.events_per_s,
               redis.secs);
    else
        printf("peer: Redis unavailable (%s)\n", why);
    printf("%6s  %-20s\n", "K", "mode");
    unsigned failed = 0; /* rows: the exit status says a run did not complete */
    for (unsigned i = 0; i < o.nks; i++) {
        unsigned k = o.ks[i];
        cs_ceil_fanout_opts fo = {
            .k = k, .n = n, .event_bytes = (size_t)b.event_bytes, .procs = o.procs};
        cs_ceil_fanout_result fr = {0};
        bool have_fan = cs_ceil_fanout(&fo, &fr);
        if (json && have_fan)
            fprintf(json, "{\"k\":%u,\"mode\":\"raw-fanout\",\"events_per_s\":%.0f}\n", k,
                    fr.events_per_s);
        if (json && have_redis)
            fprintf(json, "{\"k\":%u,\"mode\":\"redis-16\",\"events_per_s\":%.0f}\n", k,
                    redis.events_per_s);
        row r1 = {.k = k, .mode = "receive-only"}, r2 = {.k = k, .mode = "catch-up"},
            r3 = {.k = k, .mode = "live"};
        if (o.modes & MODE_RECEIVE) {
            r1 = catch_up(&b, k, true);
            print_row(&r1, json);
            failed += !r1.ok;
        }
        r1.agg_eps = r1.ok ? r1.agg_eps : 0;
        if (o.modes & MODE_RECEIVE)
            ratio_line("receive-only / raw libuv fan-out (ev/s)", r1.agg_eps,
                       have_fan ? fr.events_per_s : 0, "SPEC 8: >= 0.5");
        if (o.modes & MODE_CATCH_UP) {
            r2 = catch_up(&b, k, false);
            print_row(&r2, json);
            failed += !r2.ok;
            r2.agg_eps = r2.ok ? r2.agg_eps : 0;
            r2.p50_ms = r2.ok ? r2.p50_ms : 0;
            ratio_line("catch-up / Redis to 16 replicas (ev/s)", r2.agg_eps,
                       have_redis ? redis.events_per_s : 0, "SPEC 8: >= 2");
            ratio_line("catch-up, all branches / raw LMDB, one writer", r2.agg_eps, lmdb,
                       "apply: >= 0.5 (SPEC 8)");
        }
        if (o.modes & MODE_LIVE) {
            if (!hq_save(&b, false))
                return 1;
            if (r2.ok)
                r3 = live(&b, k);
            print_row(&r3, json);
            failed += !r3.ok;
            if (!hq_save(&b, true))
                return 1;
        }
        fflush(stdout); /* a run of many minutes shows each K as it ends, also into a file */
        if (o.via_nats && !via_nats(&b, k, &r1, &r2, &r3, json))
            return 1;
    }
    if (json)
        fclose(json);
    if (getenv("CS_BENCH_KEEP")) /* for looking into a failed run: serve.log, the branches */
        fprintf(stderr, "fanout: kept %s\n", b.net.root);
    else
        cs_bench_rm_tree(b.net.root);
    free(b.net.shops);
    free(b.tmpl);
    free(b.run);
    if (failed)
        fprintf(stderr, "fanout: %u rows failed\n", failed);
    return failed ? 1 : 0;
}
