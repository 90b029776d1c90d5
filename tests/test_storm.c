/*
 * test_storm.c: issue 12 "a reconnect storm of 1,000 branches at once: all end caught up; the
 * server keeps answering the others throughout", with the real `chainsync serve` on 127.0.0.1
 * and real branch nodes (net/'s cs_node, the real protocol with authentication, each applying
 * into its own LMDB directory). As bench/fanout.c does, the K branches share WORKERS processes,
 * one libuv loop each, many cs_node_start on one loop.
 *
 * K branches follow the head office; it appends; `serve` is killed with SIGKILL, the head office
 * appends more while it is down, and `serve` restarts on the same port: every branch reconnects
 * at once (with its jittered backoff). Meanwhile one more branch, outside the storm, pulls from
 * the server again and again: each pull must be answered. Then every branch's cursor must reach
 * the head, and a sample of branches must equal the audit's replay (`audit verify --branch`).
 *
 * K is STORM_QUICK in the suite (the storm with fewer branches and events) and STORM_LONG (1,000)
 * with CS_LONG=1 (README, "Tests"); provisioning costs argon2id twice per branch (shop add, join),
 * which is what keeps the quick K small. Every child is reaped; waits are bounded.
 */
#include "tests/harness.h"
#include "tests/net_fixture.h"
#include "tests/run.h"

#include "engine/engine.h"
#include "net/net.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define STORM_QUICK 20u
#define STORM_LONG 1000u
#define WORKERS 2u
/* Joins derive keys with argon2id on the loop, one after another: a wave must fit the 10 s
 * handshake limit, under ASan on a busy machine too. */
#define JOIN_WAVE 4u
#define PASSWORD "storm-branch-password"
#define WAIT_MS 60000u
#define LONG_WAIT_MS 600000u
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

typedef struct storm {
    char *root;
    char hq[300], ready[300], serve_log[300], ctl[300];
    char addr[64], port[16];
    unsigned k;
    char (*dirs)[320];
    uint64_t *shops;
    pid_t serve, workers[WORKERS];
} storm;

/* ---- a worker: many nodes on one loop ------------------------------------------------------ */

typedef struct wnode {
    cs_branch *b;
    cs_node *n;
    cs_node_options o;
    cs_err result;
    struct wloop *w;
} wnode;

typedef struct wloop {
    uv_loop_t loop;
    uv_signal_t term;
    wnode *nodes;
    unsigned n, left;
} wloop;

static void node_done(cs_node *n, cs_err result, void *arg)
{
    wnode *wn = arg;
    wn->result = result;
    cs_node_free(n);
    wn->n = NULL;
    if (--wn->w->left == 0)
        uv_close((uv_handle_t *)&wn->w->term, NULL);
}

static void on_term(uv_signal_t *s, int sig)
{
    (void)sig;
    wloop *w = s->data;
    for (unsigned i = 0; i < w->n; i++)
        if (w->nodes[i].n)
            cs_node_stop(w->nodes[i].n);
}

/* Runs nodes for dirs [from, to) in `mode` until they are done (a join) or SIGTERM (a follow).
 * Exit status 0 when every node ended with CS_OK. */
static int worker_main(storm *s, unsigned from, unsigned to, cs_node_mode mode)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    FILE *devnull = fopen("/dev/null", "w");
    unsigned wave = mode == CS_NODE_JOIN ? JOIN_WAVE : to - from;
    int status = 0;
    for (unsigned w0 = from; w0 < to && status == 0; w0 += wave) {
        unsigned w1 = to - w0 < wave ? to : w0 + wave;
        wloop *w = calloc(1, sizeof(*w));
        if (!w || uv_loop_init(&w->loop) != 0)
            return 2;
        w->n = w1 - w0;
        w->nodes = calloc(w->n, sizeof(wnode));
        uv_signal_init(&w->loop, &w->term);
        w->term.data = w;
        uv_signal_start(&w->term, on_term, SIGTERM);
        for (unsigned i = 0; i < w->n; i++) {
            wnode *wn = &w->nodes[i];
            char msg[320];
            wn->w = w;
            wn->o = (cs_node_options){.mode = mode,
                                      .head = mode == CS_NODE_JOIN ? s->addr : NULL,
                                      .shop = s->shops[w0 + i],
                                      .password = mode == CS_NODE_JOIN ? PASSWORD : NULL,
                                      .log = devnull,
                                      .no_watch = true};
            if (cs_branch_open(s->dirs[w0 + i], NULL, &wn->b) != CS_OK ||
                cs_node_start(&w->loop, wn->b, s->dirs[w0 + i], &wn->o, node_done, wn, &wn->n, msg,
                              sizeof(msg)) != CS_OK) {
                fprintf(stderr, "  cannot start a node on %s: %s\n", s->dirs[w0 + i], msg);
                return 2;
            }
            w->left++;
        }
        uv_run(&w->loop, UV_RUN_DEFAULT);
        for (unsigned i = 0; i < w->n; i++) {
            if (w->nodes[i].result != CS_OK) {
                fprintf(stderr, "  node %s: %s\n", s->dirs[w0 + i],
                        cs_err_name(w->nodes[i].result));
                status = 1;
            }
            cs_branch_close(w->nodes[i].b);
        }
        uv_loop_close(&w->loop);
        free(w->nodes);
        free(w);
    }
    if (devnull)
        fclose(devnull);
    return status;
}

static bool workers_start(storm *s, cs_node_mode mode)
{
    fflush(NULL);
    for (unsigned i = 0; i < WORKERS; i++) {
        s->workers[i] = fork();
        if (s->workers[i] == 0)
            _exit(worker_main(s, s->k * i / WORKERS, s->k * (i + 1) / WORKERS, mode));
        if (s->workers[i] < 0)
            return false;
    }
    return true;
}

/* Waits for the workers (after SIGTERM when `stop`); true when all exited 0. */
static bool workers_end(storm *s, bool stop, uint64_t deadline_ms)
{
    bool ok = true;
    for (unsigned i = 0; i < WORKERS; i++) {
        if (s->workers[i] <= 0)
            continue;
        if (stop)
            kill(s->workers[i], SIGTERM);
        ok = cs_run_reap(s->workers[i], cs_run_now_ms() + deadline_ms) == 0 && ok;
        s->workers[i] = 0;
    }
    return ok;
}

/* ---- the head office ----------------------------------------------------------------------- */

static int cs(const char *input, const char *const *args)
{
    return cs_run_code(input, args, NULL, NULL, WAIT_MS, true);
}

static bool serve_start(storm *s)
{
    if (!cs_fix_serve_start(&s->serve, s->hq, s->port, s->ready, s->serve_log, s->addr,
                            sizeof(s->addr), WAIT_MS))
        return false;
    cs_fix_port_of(s->addr, s->port, sizeof(s->port)); /* a restart listens there again */
    return true;
}

/* Appends n catalog items and a sync point at the head office (so every branch applies). */
static bool hq_write(storm *s, unsigned round, unsigned n)
{
    bool ok = true;
    for (unsigned i = 0; ok && i < n; i++) {
        char js[64];
        snprintf(js, sizeof(js), "{\"name\":\"storm-%u-%u\"}", round, i);
        ok = cs(NULL, ARGS("put", "service_category", "--data", s->hq, "--json", js)) == 0;
    }
    return ok && cs(NULL, ARGS("sync", "--data", s->hq)) == 0;
}

static bool storm_make(storm *s)
{
    s->root = cs_test_tmpdir("storm");
    if (!s->root)
        return false;
    snprintf(s->hq, sizeof(s->hq), "%s/hq", s->root);
    snprintf(s->ready, sizeof(s->ready), "%s/ready", s->root);
    snprintf(s->serve_log, sizeof(s->serve_log), "%s/serve.log", s->root);
    snprintf(s->ctl, sizeof(s->ctl), "%s/control", s->root);
    s->dirs = calloc(s->k + 1, sizeof(*s->dirs));
    s->shops = calloc(s->k + 1, sizeof(*s->shops));
    if (!s->dirs || !s->shops)
        return false;
    cs_engine *e = NULL;
    uint64_t self = 0;
    bool ok = cs_engine_open(s->hq, NULL, &e) == CS_OK && cs_engine_init(e, "HQ", &self) == CS_OK &&
              cs_engine_network_create(e, "Storm") == CS_OK;
    for (unsigned i = 0; ok && i <= s->k; i++) { /* shop k is the control branch */
        char name[32];
        snprintf(name, sizeof(name), "storm-%u", i);
        snprintf(s->dirs[i], sizeof(s->dirs[i]), "%s/b%u", s->root, i);
        ok = cs_engine_shop_add(e, name, PASSWORD, &s->shops[i]) == CS_OK;
    }
    cs_engine_close(e);
    if (!ok || !serve_start(s) || !workers_start(s, CS_NODE_JOIN) ||
        !workers_end(s, false, s->k > STORM_QUICK ? LONG_WAIT_MS : WAIT_MS))
        return false;
    char shop[32];
    snprintf(shop, sizeof(shop), "%llu", (unsigned long long)s->shops[s->k]);
    return cs(PASSWORD "\n", ARGS("branch", "join", "--data", s->ctl, "--head", s->addr, "--shop",
                                  shop, "--password-stdin")) == 0;
}

static void storm_free(storm *s)
{
    workers_end(s, true, 30000);
    cs_run_stop(s->serve, SIGTERM, 20000);
    if (s->root)
        cs_test_rmtree(s->root);
    free(s->root);
    free(s->dirs);
    free(s->shops);
    memset(s, 0, sizeof(*s));
}

/* issue 12 "Network faults": a reconnect storm of K branches at once after a server crash: all
 * end caught up and equal to the audit's replay, and a branch outside the storm is answered
 * throughout. */
static storm the_storm; /* file scope: main cleans up after a failed CHECK */

static void test_storm_all_reconnect_at_once_catch_up_server_answers_others(void)
{
    const char *lv = getenv("CS_LONG");
    the_storm.k = lv && *lv && strcmp(lv, "0") != 0 ? STORM_LONG : STORM_QUICK;
    uint64_t t0 = cs_run_now_ms();
    bool made = storm_make(&the_storm);
    fprintf(stderr, "  %u branches joined in %llu ms\n", the_storm.k,
            (unsigned long long)(cs_run_now_ms() - t0));
    CHECK(made);
    CHECK(workers_start(&the_storm, CS_NODE_FOLLOW));
    CHECK(hq_write(&the_storm, 0, 5));
    cs_run_stop(the_storm.serve, SIGKILL, 5000); /* the crash: every branch loses its connection */
    the_storm.serve = 0;
    CHECK(hq_write(&the_storm, 1, 5));
    CHECK(serve_start(&the_storm)); /* the storm: all reconnect */
    uint64_t storm_t0 = cs_run_now_ms();
    unsigned pulls = 0, answered = 0;
    uint64_t worst_pull = 0;
    bool caught_up = false;
    uint64_t deadline = cs_run_now_ms() + (the_storm.k > STORM_QUICK ? LONG_WAIT_MS : WAIT_MS);
    for (unsigned round = 2; !caught_up && cs_run_now_ms() < deadline; round++) {
        uint64_t p0 = cs_run_now_ms();
        pulls++;
        answered += cs(NULL, ARGS("branch", "pull", "--data", the_storm.ctl)) == 0;
        if (cs_run_now_ms() - p0 > worst_pull)
            worst_pull = cs_run_now_ms() - p0;
        if (round < 4)
            CHECK(hq_write(&the_storm, round, 2)); /* the log grows during the storm too */
        uint64_t head = cs_fix_head_seq(the_storm.hq);
        caught_up = head > 0;
        for (unsigned i = 0; i < the_storm.k && caught_up; i++)
            caught_up = cs_fix_branch_cursor(the_storm.dirs[i]) >= head;
    }
    fprintf(stderr,
            "  all %u caught up %llu ms after the restart; %u of %u pulls outside the storm "
            "answered, the slowest in %llu ms\n",
            the_storm.k, (unsigned long long)(cs_run_now_ms() - storm_t0), answered, pulls,
            (unsigned long long)worst_pull);
    bool stopped = workers_end(&the_storm, true, 30000);
    unsigned verified = 0, sample = the_storm.k < 8 ? the_storm.k : 8;
    for (unsigned j = 0; j < sample; j++)
        verified += cs(NULL, ARGS("audit", "verify", "--data", the_storm.hq, "--branch",
                                  the_storm.dirs[j * the_storm.k / sample])) == 0;
    storm_free(&the_storm);
    CHECK(caught_up);
    CHECK(answered == pulls);
    CHECK(stopped);
    CHECK(verified == sample);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    RUN(test_storm_all_reconnect_at_once_catch_up_server_answers_others);
    storm_free(&the_storm);
    return cs_test_finish();
}
