/*
 * idle.c: what an idle connected branch costs the head office's server in memory (SPEC 8:
 * under 16 KiB per idle connected branch), beside its ceiling measured in the same run: a plain
 * libuv server holding the same number of idle TCP connections (one uv_tcp_t and nothing else
 * each), which is what any libuv server pays at least.
 *
 * The head office is a real `chainsync serve` process; the branches are real `chainsync branch
 * follow` processes, authenticated and streaming, then idle. The figure is the growth of the
 * server's anonymous resident memory (RssAnon: heap and stacks; LMDB's map is file-backed and
 * shared with every process that reads it) from before the first branch connected to after the
 * last one settled, divided by the number of branches.
 *
 * Usage: bench/idle [--branches K] [--quick]   (K = 100 by default; --quick: 5, for ctest)
 * The chainsync binary is $CS_BIN, else build/tools/chainsync next to this program.
 */
#include "bench/bench.h"
#include "engine/engine.h"
#include "bench/bench_net.h"

#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <uv.h>

#define BRANCHES_DEFAULT 100u
#define BRANCHES_MAX 2000u
#define SETTLE_MS 2500u

/* ---- the ceiling: a plain libuv server with K idle connections ------------------------- */

static uv_loop_t ceil_loop;
static uv_tcp_t ceil_listener;
static unsigned ceil_accepted;

static void ceil_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    static char buf[65536]; /* one buffer for every read, as chainsync's server does */
    (void)h, (void)s;
    *b = uv_buf_init(buf, sizeof(buf));
}

static void ceil_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    if (n < 0)
        uv_close((uv_handle_t *)s, (uv_close_cb)free);
}

static void ceil_conn(uv_stream_t *l, int status)
{
    uv_tcp_t *c = malloc(sizeof(*c));
    if (status < 0 || !c || uv_tcp_init(&ceil_loop, c) != 0 || uv_accept(l, (uv_stream_t *)c) != 0)
        abort(); /* a bench that cannot accept measures nothing */
    uv_read_start((uv_stream_t *)c, ceil_alloc, ceil_read);
    ceil_accepted++;
}

/* Runs in a child: listens, writes its port to fd, serves until killed. */
static void ceil_serve(int fd)
{
    struct sockaddr_in a;
    uv_loop_init(&ceil_loop);
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&ceil_loop, &ceil_listener);
    if (uv_tcp_bind(&ceil_listener, (struct sockaddr *)&a, 0) ||
        uv_listen((uv_stream_t *)&ceil_listener, 4096, ceil_conn))
        _exit(1);
    int len = sizeof(a);
    uv_tcp_getsockname(&ceil_listener, (struct sockaddr *)&a, &len);
    int port = ntohs(a.sin_port);
    if (write(fd, &port, sizeof(port)) != sizeof(port))
        _exit(1);
    close(fd);
    uv_run(&ceil_loop, UV_RUN_DEFAULT);
    _exit(0);
}

static double ceiling_kib(unsigned k)
{
    int p[2];
    if (pipe(p))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        ceil_serve(p[1]);
    }
    close(p[1]);
    int port = 0;
    if (read(p[0], &port, sizeof(port)) != sizeof(port))
        return -1;
    close(p[0]);
    cs_run_sleep_ms(300);
    long before = cs_run_proc_kib(pid, "RssAnon");
    int *fds = calloc(k, sizeof(int));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    for (unsigned i = 0; i < k; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof(a)) != 0)
            abort();
    }
    cs_run_sleep_ms(SETTLE_MS);
    long after = cs_run_proc_kib(pid, "RssAnon");
    for (unsigned i = 0; i < k; i++)
        close(fds[i]);
    free(fds);
    cs_run_stop(pid, SIGKILL, 5000);
    return (double)(after - before) / k;
}

/* ---- chainsync: a head office with K idle followers ------------------------------------- */

/* Connected branches, as the server's log says (one "authenticated" line per connection). */
static unsigned authenticated(const cs_bench_net *r)
{
    FILE *f = fopen(r->log, "r");
    char line[512];
    unsigned n = 0;
    while (f && fgets(line, sizeof(line), f))
        n += strstr(line, ": authenticated,") != NULL;
    if (f)
        fclose(f);
    return n;
}

static double chainsync_kib(cs_bench_net *r, long *before_out, long *after_out)
{
    long before = cs_run_proc_kib(r->serve, "RssAnon");
    unsigned joined = authenticated(r);
    for (unsigned i = 0; i < r->k; i++) {
        char dir[320];
        snprintf(dir, sizeof(dir), "%s/b%u", r->root, i);
        const char *args[] = {"branch", "follow", "--data", dir, NULL};
        r->follow[i] = cs_run_spawn(args, NULL);
    }
    for (int i = 0; i < 3000 && authenticated(r) < joined + r->k; i++)
        cs_run_sleep_ms(10);
    if (authenticated(r) < joined + r->k)
        return -1;
    cs_run_sleep_ms(SETTLE_MS); /* heartbeats and a status flush have run: idle state */
    long after = cs_run_proc_kib(r->serve, "RssAnon");
    *before_out = before;
    *after_out = after;
    return (double)(after - before) / r->k;
}

int main(int argc, char **argv)
{
    unsigned k = BRANCHES_DEFAULT;
    static const struct option longopts[] = {
        {"branches", required_argument, NULL, 'k'}, {"quick", no_argument, NULL, 'q'}, {0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (c == 'k')
            k = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 'q')
            k = 5;
        else
            return 1;
    }
    if (k == 0 || k > BRANCHES_MAX) {
        fprintf(stderr, "idle: --branches wants 1..%u\n", BRANCHES_MAX);
        return 1;
    }
    cs_bench_set_bin(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    cs_bench_net r = {
        .k = k, .shops = calloc(k, sizeof(uint64_t)), .follow = calloc(k, sizeof(pid_t))};
    snprintf(r.root, sizeof(r.root), "/tmp/cs-bench-idle-XXXXXX");
    if (!r.shops || !r.follow || !mkdtemp(r.root))
        return 1;
    snprintf(r.hq, sizeof(r.hq), "%s/hq", r.root);
    snprintf(r.log, sizeof(r.log), "%s/serve.log", r.root);
    printf("idle: %u idle connected branches, server memory per branch (RssAnon growth)\n", k);
    long before = 0, after = 0;
    double ours = -1;
    if (cs_bench_net_make(&r) && cs_bench_net_serve(&r) && cs_bench_net_join(&r))
        ours = chainsync_kib(&r, &before, &after);
    for (unsigned i = 0; i < k; i++)
        if (r.follow[i] > 0)
            cs_run_stop(r.follow[i], SIGTERM, 5000);
    if (r.serve > 0)
        cs_run_stop(r.serve, SIGTERM, 10000);
    double ceil = ceiling_kib(k);
    cs_bench_rm_tree(r.root);
    free(r.shops);
    free(r.follow);
    if (ours < 0) {
        fprintf(stderr, "idle: the network did not come up\n");
        return 1;
    }
    printf("%-34s %10s %12s\n", "", "KiB/branch", "SPEC 8");
    printf("%-34s %10.1f %12s\n", "chainsync serve (RssAnon growth)", ours,
           ours < 16.0 ? "< 16: ok" : "< 16: MISSED");
    printf("%-34s %10.1f %12s\n", "raw libuv, idle TCP (ceiling)", ceil, "");
    printf("server RssAnon %ld KiB before the followers, %ld KiB after; ours/ceiling %.2f\n",
           before, after, ceil > 0 ? ours / ceil : 0.0);
    return 0;
}
