/*
 * test_crash_net.c: issue 12 "Crash and durability" with the real binary ($CS_BIN) and a live
 * network on 127.0.0.1: a head office served by `chainsync serve`, one branch running
 * `branch follow`. Each round starts a burst of CLI writers at once (customers put at the head
 * office, and customers put at the branch, which go into its durable outbox and upstream), then
 * SIGKILLs whatever is still running after a pseudo-random few milliseconds; some rounds also
 * SIGKILL the follower (mid-apply or mid-send) and restart it, others SIGKILL `serve` and restart
 * it on the same port. Afterwards:
 *   - every write whose command exited 0 (acknowledged) is in the head office's log exactly
 *     once, and no write is there twice (an outbox entry resent after a crash is appended once,
 *     R8);
 *   - `audit verify` passes at the head office (checksums, chain, state = replay: nothing
 *     half-written) and, after the branch caught up, `audit verify --branch` passes for the
 *     branch (its digest equals what the audit replays for it).
 *
 * Quick by default (ROUNDS_QUICK rounds, a few seconds); CS_LONG=1 runs ROUNDS_LONG rounds
 * (README, "Tests"). Fixed seed: the same kill times on every run. Every child is reaped; waits
 * are bounded; the temporary directory is removed.
 */
#include "tests/harness.h"
#include "tests/net_fixture.h"
#include "tests/run.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#define ROUNDS_QUICK 24u
#define ROUNDS_LONG 1000u
#define WRITERS_HQ 2u
#define WRITERS_BRANCH 2u
#define KILL_MS_MAX 40u
#define WAIT_MS 30000u
#define PASSWORD "crash-branch-password"
#define SEED 0xc4a5e12ull
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

typedef struct cnet {
    char *root;
    char hq[600], br[600], ready[600], serve_log[600], follow_log[600];
    char addr[128], port[16], shop[32];
    pid_t serve, follow;
} cnet;

typedef struct write_rec {
    char name[40];
    bool acked;
    bool at_branch;
} write_rec;

static uint64_t rng_state = SEED;
static uint64_t rng(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int cs(const char *input, const char *const *args, char **out)
{
    return cs_run_code(input, args, out, NULL, WAIT_MS, true);
}

static bool serve_start(cnet *n)
{
    if (!cs_fix_serve_start(&n->serve, n->hq, n->port, n->ready, n->serve_log, n->addr,
                            sizeof(n->addr), WAIT_MS))
        return false;
    cs_fix_port_of(n->addr, n->port, sizeof(n->port)); /* a restart listens there again */
    return true;
}

static void follow_start(cnet *n)
{
    n->follow = cs_run_spawn(ARGS("branch", "follow", "--data", n->br), n->follow_log);
}

static bool cnet_make(cnet *n)
{
    memset(n, 0, sizeof(*n));
    n->root = cs_test_tmpdir("crashnet");
    if (!n->root)
        return false;
    snprintf(n->hq, sizeof(n->hq), "%s/hq", n->root);
    snprintf(n->br, sizeof(n->br), "%s/b1", n->root);
    snprintf(n->ready, sizeof(n->ready), "%s/ready", n->root);
    snprintf(n->serve_log, sizeof(n->serve_log), "%s/serve.log", n->root);
    snprintf(n->follow_log, sizeof(n->follow_log), "%s/follow.log", n->root);
    char *out = NULL;
    bool ok =
        cs(NULL, ARGS("init", "--data", n->hq, "--name", "HQ"), NULL) == 0 &&
        cs(NULL, ARGS("network", "create", "--data", n->hq, "--name", "N"), NULL) == 0 &&
        cs(PASSWORD "\n",
           ARGS("shop", "add", "--data", n->hq, "--name", "B1", "--password-stdin", "--json-out"),
           &out) == 0;
    unsigned long long id = 0;
    ok = ok && sscanf(out, "{\"id\":%llu", &id) == 1;
    free(out);
    snprintf(n->shop, sizeof(n->shop), "%llu", id);
    ok = ok && serve_start(n) &&
         cs(PASSWORD "\n",
            ARGS("branch", "join", "--data", n->br, "--head", n->addr, "--shop", n->shop,
                 "--password-stdin"),
            NULL) == 0;
    if (ok)
        follow_start(n);
    return ok && n->follow > 0;
}

static void cnet_free(cnet *n)
{
    cs_run_stop(n->follow, SIGTERM, 10000);
    cs_run_stop(n->serve, SIGTERM, 10000);
    n->follow = n->serve = 0;
    cs_test_tmpdir_free(n->root);
    n->root = NULL;
}

/* A writer: `chainsync put customer` with stdout on a pipe (read after it is reaped). */
typedef struct writer {
    pid_t pid;
    int out;
    write_rec *rec;
} writer;

static bool writer_start(writer *w, const char *dir, write_rec *rec)
{
    int p[2];
    if (pipe(p))
        return false;
    char js[80];
    snprintf(js, sizeof(js), "{\"name\":\"%s\"}", rec->name);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        int in = open("/dev/null", O_RDWR);
        cs_run_child(ARGS("put", "customer", "--data", dir, "--json", js, "--json-out"), in, p[1],
                     in, NULL);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return false;
    }
    *w = (writer){.pid = pid, .out = p[0], .rec = rec};
    return true;
}

/* SIGKILLs the writer if it still runs, reaps it, and marks the write acknowledged when the
 * command exited 0 having printed its id (what a user would have seen). */
static void writer_end(writer *w)
{
    kill(w->pid, SIGKILL);
    int st = 0;
    waitpid(w->pid, &st, 0);
    char buf[512];
    ssize_t k = read(w->out, buf, sizeof(buf) - 1);
    buf[k > 0 ? k : 0] = '\0';
    close(w->out);
    w->rec->acked = WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(buf, "{\"id\":");
}

/* How many events of the head office's log carry this customer name. */
static unsigned count_name(const char *log, const char *name)
{
    char needle[64];
    snprintf(needle, sizeof(needle), "\"fields\":{\"name\":\"%s\"}", name);
    unsigned c = 0;
    for (const char *p = log; (p = strstr(p, needle)); p++)
        c++;
    return c;
}

/* One burst: writers at both ends, killed after a random delay; sometimes the follower or the
 * server too. */
static bool round_run(cnet *n, unsigned round, write_rec *recs, size_t *nrecs)
{
    writer w[WRITERS_HQ + WRITERS_BRANCH];
    unsigned nw = 0;
    bool ok = true;
    for (unsigned i = 0; i < WRITERS_HQ + WRITERS_BRANCH && ok; i++) {
        write_rec *r = &recs[(*nrecs)++];
        r->at_branch = i >= WRITERS_HQ;
        snprintf(r->name, sizeof(r->name), "%s-%u-%u", r->at_branch ? "b" : "h", round, i);
        ok = writer_start(&w[nw], r->at_branch ? n->br : n->hq, r);
        nw += ok;
    }
    unsigned wait = (unsigned)(rng() % KILL_MS_MAX);
    bool kill_follow = rng() % 4 == 0, kill_serve = rng() % 6 == 0;
    cs_run_sleep_ms(wait);
    if (kill_follow) {
        cs_run_stop(n->follow, SIGKILL, 5000);
        n->follow = 0;
    }
    if (kill_serve) {
        cs_run_stop(n->serve, SIGKILL, 5000);
        n->serve = 0;
    }
    cs_run_sleep_ms(wait / 2); /* writers that outlive a killed peer still finish or die */
    for (unsigned i = 0; i < nw; i++)
        writer_end(&w[i]);
    if (kill_serve)
        ok = ok && serve_start(n);
    if (kill_follow)
        follow_start(n);
    return ok && n->follow > 0;
}

/* issue 12 "Crash and durability" (SPEC 4, R8): kill -9 of CLI writers, of the follower during
 * apply and outbox sends, and of the server, round after round: every acknowledged write is in
 * the log once, none twice, the head office verifies and the branch equals its replay. */
static void test_crash_kill9_hq_writers_serve_and_branch_nothing_acknowledged_lost(void)
{
    const char *lv = getenv("CS_LONG");
    unsigned rounds = lv && *lv && strcmp(lv, "0") != 0 ? ROUNDS_LONG : ROUNDS_QUICK;
    static cnet n;
    write_rec *recs = calloc(rounds * (WRITERS_HQ + WRITERS_BRANCH), sizeof(*recs));
    CHECK(recs);
    size_t nrecs = 0;
    bool ok = cnet_make(&n);
    for (unsigned r = 0; ok && r < rounds; r++)
        ok = round_run(&n, r, recs, &nrecs);
    if (ok) { /* a last crash of the server, then the branch catches up and drains its outbox */
        cs_run_stop(n.serve, SIGKILL, 5000);
        ok = serve_start(&n);
        cs_run_stop(n.follow, SIGTERM, 10000);
        n.follow = 0;
        ok = ok && cs(NULL, ARGS("branch", "pull", "--data", n.br), NULL) == 0;
    }
    char *log = NULL;
    ok = ok && cs(NULL, ARGS("log", "--data", n.hq), &log) == 0;
    unsigned acked = 0, lost = 0, twice = 0;
    for (size_t i = 0; ok && i < nrecs; i++) {
        unsigned c = count_name(log, recs[i].name);
        acked += recs[i].acked;
        if (recs[i].acked && c == 0) {
            fprintf(stderr, "  acknowledged %s is not in the log\n", recs[i].name);
            lost++;
        }
        if (c > 1) {
            fprintf(stderr, "  %s is in the log %u times\n", recs[i].name, c);
            twice++;
        }
    }
    fprintf(stderr, "  %u rounds, %zu writes, %u acknowledged\n", rounds, nrecs, acked);
    free(log);
    bool verified = ok && cs(NULL, ARGS("audit", "verify", "--data", n.hq), NULL) == 0 &&
                    cs(NULL, ARGS("audit", "verify", "--data", n.hq, "--branch", n.br), NULL) == 0;
    cnet_free(&n);
    free(recs);
    CHECK(ok);
    CHECK(lost == 0 && twice == 0);
    CHECK(acked > 0 && acked < nrecs); /* some writes were cut, some acknowledged */
    CHECK(verified);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    RUN(test_crash_kill9_hq_writers_serve_and_branch_nothing_acknowledged_lost);
    return cs_test_finish();
}
