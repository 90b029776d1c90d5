/*
 * test_faultproxy.c: issue 12 "Network faults" with real processes on 127.0.0.1 and a fault
 * proxy of our own between the branches and `chainsync serve`.
 *
 * The proxy (proxy_main, a libuv loop in a forked child) accepts a branch's connection, opens
 * one to the server and copies bytes both ways; each connection gets a fault from a fixed-seed
 * schedule: cut after a random number of bytes (the last chunk forwarded only in part, so the
 * cut lands inside a frame and, downstream, inside a segment), stall for a while after a random
 * number of bytes, or go silent for good with both sockets left open (a half-open connection
 * that only heartbeats can find), or nothing. TCP does not drop, duplicate or reorder, so the
 * proxy does not either. SIGUSR1 turns faults off for new connections; SIGTERM stops it. It logs
 * one line per fault, which the test counts so that a schedule that stopped faulting is noticed.
 *
 * Through it, three followers stay connected while the head office writes (large customers,
 * so segments span many reads, catalog items and sync points), the branches write customers
 * into their outboxes, and `serve` is killed with SIGKILL and restarted; a fourth branch pulls
 * straight from the server throughout and must be answered each time. Then faults stop and:
 *   - every branch's cursor reaches the head and `audit verify --branch` passes (its digest is
 *     what the audit replays for it);
 *   - every outbox write acknowledged at a branch is in the head office's log exactly once.
 *
 * Bounds: every child is remembered by pid, stopped and reaped; every wait has a deadline; the
 * temporary directory is removed. CS_LONG=1 writes for longer (LONG_WRITE_MS).
 */
#include "tests/harness.h"
#include "tests/net_fixture.h"
#include "tests/run.h"

#include "projections/projection.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <uv.h>

#define BRANCHES 3u
#define PASSWORD "proxy-branch-password"
#define WAIT_MS 45000u
#define QUICK_WRITE_MS 5000u
#define ROUNDS_MIN 12u /* however slow the machine (ASan), enough bytes for the faults to hit */
#define LONG_WRITE_MS 120000u
#define SEED 0xfa17ull
#define CHUNK_BYTES 65536u
#define QUEUE_HIGH (4u * 1024u * 1024u) /* a side's unwritten bytes before the other stops */
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ---- the fault proxy (in the child) ------------------------------------------------------ */

typedef enum fault { F_NONE, F_CUT, F_STALL, F_SILENT } fault;

typedef struct pconn {
    uv_tcp_t side[2]; /* 0 = the branch, 1 = the server */
    uv_connect_t creq;
    uv_timer_t timer;
    unsigned id, open_handles;
    fault f;
    uint64_t bytes, at; /* bytes forwarded (both ways); the fault's position */
    unsigned stall_ms;
    bool closing, paused, stalled, connected; /* paused: backpressure; stalled: the fault */
    struct proxy *p;
} pconn;

typedef struct proxy {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_signal_t usr1, term;
    struct sockaddr_storage upstream;
    uint64_t rng;
    unsigned next_id;
    bool faults_off;
    FILE *log;
} proxy;

static uint64_t prng(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void pconn_handle_closed(uv_handle_t *h)
{
    pconn *c = h->data;
    if (--c->open_handles == 0)
        free(c);
}

static void pconn_close(pconn *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    if (why)
        fprintf(c->p->log, "conn %u: %s after %llu bytes\n", c->id, why,
                (unsigned long long)c->bytes);
    for (int i = 0; i < 2; i++)
        uv_close((uv_handle_t *)&c->side[i], pconn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, pconn_handle_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h, (void)suggested;
    char *b = malloc(CHUNK_BYTES);
    *buf = uv_buf_init(b, b ? CHUNK_BYTES : 0);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void reading(pconn *c, bool on)
{
    for (int i = 0; i < 2 && !c->closing; i++)
        if (on)
            uv_read_start((uv_stream_t *)&c->side[i], on_alloc, on_read);
        else
            uv_read_stop((uv_stream_t *)&c->side[i]);
}

typedef struct wreq {
    uv_write_t w;
    pconn *c;
    char *buf;
    bool close_after; /* the cut: close once the partial chunk is written */
} wreq;

static void on_written(uv_write_t *w, int status)
{
    wreq *r = (wreq *)w;
    pconn *c = r->c;
    free(r->buf);
    if (!c->closing && (status < 0 || r->close_after))
        pconn_close(c, r->close_after ? "cut" : NULL);
    else if (!c->closing && c->paused && !c->stalled &&
             uv_stream_get_write_queue_size((uv_stream_t *)&c->side[0]) < QUEUE_HIGH / 4 &&
             uv_stream_get_write_queue_size((uv_stream_t *)&c->side[1]) < QUEUE_HIGH / 4) {
        c->paused = false;
        reading(c, true);
    }
    free(r);
}

static void on_stall_end(uv_timer_t *t)
{
    pconn *c = t->data;
    c->paused = c->stalled = false;
    /* A connection that survived a stall meets its next fault further on. */
    uint64_t r = prng(&c->p->rng);
    c->f = c->p->faults_off ? F_NONE : r % 3 == 0 ? F_STALL : F_CUT;
    c->at = c->bytes + 200 + (r >> 8) % 120000;
    reading(c, true);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    pconn *c = s->data;
    if (n <= 0 || c->closing) {
        free(buf->base);
        if (n < 0)
            pconn_close(c, NULL);
        return;
    }
    int to = (uv_tcp_t *)s == &c->side[0] ? 1 : 0;
    size_t len = (size_t)n;
    bool hit = c->f != F_NONE && c->bytes + len >= c->at;
    if (hit && c->f == F_CUT)
        len = (size_t)(c->at - c->bytes); /* the rest of the chunk never arrives */
    c->bytes += len;
    wreq *r = malloc(sizeof(*r));
    if (!r) {
        free(buf->base);
        pconn_close(c, NULL);
        return;
    }
    *r = (wreq){.c = c, .buf = buf->base, .close_after = hit && c->f == F_CUT};
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)len);
    if (uv_write(&r->w, (uv_stream_t *)&c->side[to], &b, 1, on_written) != 0) {
        free(r->buf);
        free(r);
        pconn_close(c, NULL);
        return;
    }
    if (hit && c->f != F_CUT) {
        reading(c, false);
        c->stalled = true;
        fprintf(c->p->log, "conn %u: %s after %llu bytes\n", c->id,
                c->f == F_STALL ? "stall" : "silent", (unsigned long long)c->bytes);
        if (c->f == F_STALL)
            uv_timer_start(&c->timer, on_stall_end, c->stall_ms, 0);
    } else if (uv_stream_get_write_queue_size((uv_stream_t *)&c->side[to]) > QUEUE_HIGH) {
        reading(c, false); /* backpressure: the slow side must drain first */
        c->paused = true;
    }
}

static void on_upstream(uv_connect_t *req, int status)
{
    pconn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) { /* the server is down: the branch sees a closed connection */
        pconn_close(c, NULL);
        return;
    }
    c->connected = true;
    reading(c, true);
}

/* The fault of connection `id`: the first ones are forced so that every kind happens in the
 * quick run; then the seeded draw. */
static void pick_fault(proxy *p, pconn *c)
{
    uint64_t r = prng(&p->rng);
    static const fault forced[] = {F_NONE, F_NONE, F_NONE, F_SILENT, F_CUT, F_STALL, F_CUT};
    if (p->faults_off)
        c->f = F_NONE;
    else if (c->id < sizeof(forced) / sizeof(forced[0]))
        c->f = forced[c->id];
    else
        c->f = (fault)(r % 10 < 5 ? F_CUT : r % 10 < 8 ? F_STALL : r % 10 < 9 ? F_SILENT : F_NONE);
    c->at = 200 + prng(&p->rng) % 120000; /* inside the handshake or the catch-up, mid-stream */
    c->stall_ms = 200 + (unsigned)(prng(&p->rng) % 1800);
}

static void on_accept(uv_stream_t *l, int status)
{
    proxy *p = l->data;
    if (status < 0)
        return;
    pconn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->p = p;
    c->id = p->next_id++;
    pick_fault(p, c);
    uv_tcp_init(&p->loop, &c->side[0]);
    uv_tcp_init(&p->loop, &c->side[1]);
    uv_timer_init(&p->loop, &c->timer);
    c->side[0].data = c->side[1].data = c->timer.data = c->creq.data = c;
    c->open_handles = 3;
    if (uv_accept(l, (uv_stream_t *)&c->side[0]) != 0 ||
        uv_tcp_connect(&c->creq, &c->side[1], (struct sockaddr *)&p->upstream, on_upstream) != 0)
        pconn_close(c, NULL);
}

static void on_usr1(uv_signal_t *s, int sig)
{
    (void)sig;
    proxy *p = s->data;
    p->faults_off = true;
    fprintf(p->log, "faults off\n");
}

static void on_term(uv_signal_t *s, int sig)
{
    (void)sig;
    uv_stop(s->loop);
}

/* The proxy's process: listens on 127.0.0.1:0, writes its port to ready_fd, runs until
 * SIGTERM. */
static void proxy_main(const char *upstream, int ready_fd, const char *log_path)
    __attribute__((noreturn));
static void proxy_main(const char *upstream, int ready_fd, const char *log_path)
{
    static proxy p;
    p.rng = SEED;
    p.log = fopen(log_path, "a");
    if (!p.log)
        _exit(2);
    setvbuf(p.log, NULL, _IOLBF, 0);
    char host[64];
    int port = 0;
    if (sscanf(upstream, "%63[^:]:%d", host, &port) != 2 ||
        uv_ip4_addr(host, port, (struct sockaddr_in *)&p.upstream) != 0 || uv_loop_init(&p.loop))
        _exit(2);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&p.loop, &p.listener);
    p.listener.data = &p;
    if (uv_tcp_bind(&p.listener, (struct sockaddr *)&a, 0) != 0 ||
        uv_listen((uv_stream_t *)&p.listener, 1024, on_accept) != 0)
        _exit(2);
    int len = sizeof(a);
    uv_tcp_getsockname(&p.listener, (struct sockaddr *)&a, &len);
    uv_signal_init(&p.loop, &p.usr1);
    uv_signal_init(&p.loop, &p.term);
    p.usr1.data = p.term.data = &p;
    uv_signal_start(&p.usr1, on_usr1, SIGUSR1);
    uv_signal_start(&p.term, on_term, SIGTERM);
    dprintf(ready_fd, "%d\n", ntohs(a.sin_port));
    close(ready_fd);
    uv_run(&p.loop, UV_RUN_DEFAULT);
    fclose(p.log);
    _exit(0); /* the kernel closes every socket */
}

/* ---- the test's side --------------------------------------------------------------------- */

typedef struct fnet {
    char *root;
    char hq[400], dir[BRANCHES + 1][400], shops[BRANCHES + 1][32];
    char ready[400], serve_log[400], proxy_log[400], follow_log[400];
    char addr[64], port[16], proxy_addr[64];
    pid_t serve, proxy, follow[BRANCHES];
} fnet;

static int cs(const char *input, const char *const *args, char **out)
{
    return cs_run_code(input, args, out, NULL, WAIT_MS, false);
}

static bool serve_start(fnet *n)
{
    if (!cs_fix_serve_start(&n->serve, n->hq, n->port, n->ready, n->serve_log, n->addr,
                            sizeof(n->addr), WAIT_MS))
        return false;
    cs_fix_port_of(n->addr, n->port, sizeof(n->port)); /* a restart listens there again */
    return true;
}

static bool proxy_start(fnet *n)
{
    int p[2];
    if (pipe(p))
        return false;
    fflush(NULL);
    n->proxy = fork();
    if (n->proxy == 0) {
        close(p[0]);
        proxy_main(n->addr, p[1], n->proxy_log);
    }
    close(p[1]);
    char buf[32] = "";
    struct pollfd pf = {p[0], POLLIN, 0};
    bool ok = n->proxy > 0 && poll(&pf, 1, (int)WAIT_MS) == 1 && read(p[0], buf, 31) > 0;
    close(p[0]);
    snprintf(n->proxy_addr, sizeof(n->proxy_addr), "127.0.0.1:%d", atoi(buf));
    return ok && atoi(buf) > 0;
}

static uint64_t head_seq(const char *dir)
{
    char *out = NULL;
    uint64_t head = 0;
    if (cs(NULL, ARGS("log", "--data", dir, "--from", "1"), &out) == 0)
        for (const char *p = out; (p = strstr(p, "{\"seq\":")); p++)
            head = strtoull(p + 7, NULL, 10);
    free(out);
    return head;
}

static bool fnet_make(fnet *n)
{
    memset(n, 0, sizeof(*n));
    n->root = cs_test_tmpdir("fproxy");
    if (!n->root)
        return false;
    snprintf(n->hq, sizeof(n->hq), "%s/hq", n->root);
    snprintf(n->ready, sizeof(n->ready), "%s/ready", n->root);
    snprintf(n->serve_log, sizeof(n->serve_log), "%s/serve.log", n->root);
    snprintf(n->proxy_log, sizeof(n->proxy_log), "%s/proxy.log", n->root);
    snprintf(n->follow_log, sizeof(n->follow_log), "%s/follow.log", n->root);
    bool ok = cs(NULL, ARGS("init", "--data", n->hq, "--name", "HQ"), NULL) == 0 &&
              cs(NULL, ARGS("network", "create", "--data", n->hq, "--name", "N"), NULL) == 0;
    for (unsigned i = 0; ok && i <= BRANCHES; i++) {
        char name[16], *out = NULL;
        snprintf(name, sizeof(name), "B%u", i);
        snprintf(n->dir[i], sizeof(n->dir[i]), "%s/b%u", n->root, i);
        ok = cs(PASSWORD "\n",
                ARGS("shop", "add", "--data", n->hq, "--name", name, "--password-stdin",
                     "--json-out"),
                &out) == 0;
        unsigned long long id = 0;
        ok = ok && sscanf(out, "{\"id\":%llu", &id) == 1;
        free(out);
        snprintf(n->shops[i], sizeof(n->shops[i]), "%llu", id);
    }
    ok = ok && serve_start(n) && proxy_start(n);
    /* Branches 0..2 join through the proxy (a join cut by a fault is tried again), so their
     * stored head is the proxy; branch 3 joins the server itself. */
    for (unsigned i = 0; ok && i <= BRANCHES; i++) {
        int rc = -1;
        for (int attempt = 0; attempt < 12 && rc != 0; attempt++) {
            cs_test_rmtree(n->dir[i]);
            rc = cs(PASSWORD "\n",
                    ARGS("branch", "join", "--data", n->dir[i], "--head",
                         i < BRANCHES ? n->proxy_addr : n->addr, "--shop", n->shops[i],
                         "--password-stdin"),
                    NULL);
        }
        ok = rc == 0;
    }
    for (unsigned i = 0; ok && i < BRANCHES; i++)
        ok = (n->follow[i] =
                  cs_run_spawn(ARGS("branch", "follow", "--data", n->dir[i]), n->follow_log)) > 0;
    return ok;
}

static void fnet_free(fnet *n)
{
    for (unsigned i = 0; i < BRANCHES; i++)
        cs_run_stop(n->follow[i], SIGTERM, 10000);
    cs_run_stop(n->proxy, SIGTERM, 10000);
    cs_run_stop(n->serve, SIGTERM, 10000);
    cs_test_tmpdir_free(n->root);
    n->root = NULL;
}

static unsigned count_lines(const char *path, const char *what)
{
    FILE *f = fopen(path, "r");
    unsigned c = 0;
    char line[256];
    while (f && fgets(line, sizeof(line), f))
        c += strstr(line, what) != NULL;
    if (f)
        fclose(f);
    return c;
}

static bool put_big_customer(const char *dir, const char *name)
{
    static char js[4200];
    int k = snprintf(js, sizeof(js), "{\"name\":\"%s\",\"notes\":\"", name);
    memset(js + k, 'p', 3800);
    snprintf(js + k + 3800, sizeof(js) - (size_t)k - 3800, "\"}");
    return cs(NULL, ARGS("put", "customer", "--data", dir, "--json", js), NULL) == 0;
}

/* issue 12 "Network faults": cuts mid-frame and mid-segment, stalls, a half-open connection,
 * a server restart; every branch ends caught up with the digest the audit replays for it, every
 * acknowledged outbox write is at the head office once, and the server answered a branch that
 * pulled straight from it throughout. */
static void test_faults_cuts_stalls_half_open_restart_all_catch_up(void)
{
    static fnet n;
    CHECK(fnet_make(&n));
    const char *lv = getenv("CS_LONG");
    uint64_t write_ms = lv && *lv && strcmp(lv, "0") != 0 ? LONG_WRITE_MS : QUICK_WRITE_MS;
    uint64_t t0 = cs_run_now_ms();
    unsigned round = 0, pulls = 0, pulls_ok = 0, outbox_acked = 0;
    bool restarted = false, ok = true;
    char names[512][24];
    while (ok && (cs_run_now_ms() - t0 < write_ms || round < ROUNDS_MIN) &&
           round < 512 / BRANCHES) {
        char nm[24];
        for (unsigned k = 0; ok && k < 8; k++) {
            snprintf(nm, sizeof(nm), "hq-%u-%u", round, k);
            ok = put_big_customer(n.hq, nm);
        }
        char js[64];
        snprintf(js, sizeof(js), "{\"name\":\"cat-%u\"}", round);
        ok = ok &&
             cs(NULL, ARGS("put", "service_category", "--data", n.hq, "--json", js), NULL) == 0 &&
             cs(NULL, ARGS("sync", "--data", n.hq), NULL) == 0;
        for (unsigned i = 0; ok && i < BRANCHES; i++) {
            snprintf(names[outbox_acked], sizeof(names[0]), "ob-%u-%u", round, i);
            outbox_acked += put_big_customer(n.dir[i], names[outbox_acked]);
        }
        if (round % 2 == 0) { /* the server answers a branch that is not behind the proxy */
            pulls++;
            pulls_ok += cs(NULL, ARGS("branch", "pull", "--data", n.dir[BRANCHES]), NULL) == 0;
        }
        if (!restarted && round >= ROUNDS_MIN / 2 && cs_run_now_ms() - t0 > write_ms / 2) {
            cs_run_stop(n.serve, SIGKILL, 5000);
            n.serve = 0;
            ok = serve_start(&n);
            restarted = true;
        }
        round++;
    }
    kill(n.proxy, SIGUSR1); /* new connections are clean from now on */
    uint64_t head = head_seq(n.hq);
    uint64_t deadline = cs_run_now_ms() + WAIT_MS;
    bool caught_up = false;
    while (ok && !caught_up && cs_run_now_ms() < deadline) {
        caught_up = true;
        for (unsigned i = 0; i < BRANCHES && caught_up; i++)
            caught_up = cs_fix_branch_cursor(n.dir[i]) >= head_seq(n.hq);
        if (!caught_up)
            cs_run_sleep_ms(100);
    }
    fprintf(stderr,
            "  %u rounds, head %llu, %u outbox writes, %u of %u direct pulls answered; proxy: "
            "%u cuts, %u stalls, %u silent; caught up after %llu ms\n",
            round, (unsigned long long)head, outbox_acked, pulls_ok, pulls,
            count_lines(n.proxy_log, ": cut"), count_lines(n.proxy_log, ": stall"),
            count_lines(n.proxy_log, ": silent"), (unsigned long long)(cs_run_now_ms() - t0));
    /* The outbox may still hold writes sent after the cursor reached the head: a pull through
     * the (now clean) proxy delivers them, and would deliver a duplicate just as well. */
    unsigned pulled = 0;
    for (unsigned i = 0; i < BRANCHES; i++) {
        cs_run_stop(n.follow[i], SIGTERM, 10000);
        n.follow[i] = 0;
        pulled += cs(NULL, ARGS("branch", "pull", "--data", n.dir[i]), NULL) == 0;
    }
    char *log = NULL;
    ok = ok && cs(NULL, ARGS("log", "--data", n.hq), &log) == 0;
    unsigned once = 0;
    for (unsigned i = 0; ok && i < outbox_acked; i++) {
        char needle[64];
        snprintf(needle, sizeof(needle), "\"fields\":{\"name\":\"%.23s\",", names[i]);
        unsigned c = 0;
        for (const char *p = log; (p = strstr(p, needle)); p++)
            c++;
        once += c == 1;
        if (c != 1)
            fprintf(stderr, "  outbox write %s is in the log %u times\n", names[i], c);
    }
    free(log);
    unsigned verified = 0;
    for (unsigned i = 0; ok && i <= BRANCHES; i++)
        verified +=
            cs(NULL, ARGS("audit", "verify", "--data", n.hq, "--branch", n.dir[i]), NULL) == 0;
    unsigned cuts = count_lines(n.proxy_log, ": cut"), stalls = count_lines(n.proxy_log, ": stall"),
             silent = count_lines(n.proxy_log, ": silent");
    fnet_free(&n);
    CHECK(ok);
    CHECK(restarted && caught_up && pulled == BRANCHES);
    CHECK(cuts >= 2 && stalls >= 1 && silent >= 1); /* the faults did happen */
    CHECK(outbox_acked > 0 && once == outbox_acked);
    CHECK(pulls > 0 && pulls_ok == pulls);
    CHECK(verified == BRANCHES + 1);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    RUN(test_faults_cuts_stalls_half_open_restart_all_catch_up);
    return cs_test_finish();
}
