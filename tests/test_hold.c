/*
 * test_hold.c: issue 14 "A branch that never crash-loops" (docs/design.md, same title) with the
 * real binary: `serve` and `branch follow` on 127.0.0.1, the branch's directory on a small
 * filesystem of its own (an 8 MiB ext4 image loop-mounted, else a tmpfs of 8 MiB), filled by a
 * ballast file until a few hundred KiB remain.
 *
 * The injected event: a real cause, no test switch. The head office (on the ordinary disk)
 * commits customers of ~4 KiB each; the branch applies them live until its filesystem is full,
 * and the event that does not fit fails in the apply path with storage_full (SPEC 6). That is
 * the resource-limit case the issue names; the mechanism is the same for any error of the apply
 * path (net/node.c node_hold does not look at the code). Checked, each against what a user
 * depends on:
 *   - the follow process stays up, keeps its connection and its reads (`list` on its directory),
 *     does not spin (CPU over a few seconds bounded, tries bounded by the backoff) and applies
 *     nothing past the held event (its cursor stays put: the event is cursor + 1);
 *   - the head office shows the held event: `shop list` (JSON: held {seq,code,...}; the table's
 *     held column), `status` on the head office and on the branch exit 6 (HELD), serve's and the
 *     follower's /metrics say chainsync_branch_held 1;
 *   - it resumes (1) by itself once space is freed (the backoff's next try), (2) on `branch
 *     retry` before the backoff's next try is due, (3) at once after a restart of the follower;
 *   - afterwards the branch is at the head and equals the audit's replay for it (`audit verify
 *     --branch`: its digest), every customer once: nothing skipped, nothing applied twice.
 *
 * Needs root (mount); without it prints "skipped". Everything started is stopped by pid, the
 * filesystem unmounted and removed.
 */
#include "net/net.h"
#include "tests/harness.h"
#include "tests/loopfs.h"
#include "tests/net_fixture.h"
#include "tests/run.h"

#include <signal.h>
#include <sys/wait.h>

#define LEFT_BYTES (192u * 1024u) /* what the ballast leaves: fewer than PUTS customers fit */
#define PUTS 90u
#define WAIT_MS 30000u
#define PASSWORD "hold-password"
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static char root[256];
static cs_loopfs fs; /* the branch's small filesystem, under root */

/* ---- commands, HTTP, processes ----------------------------------------------------------- */

static int cs(const char *input, const char *const *args, char **out)
{
    return cs_run_code(input, args, out, NULL, WAIT_MS, false);
}

static bool put_customer(const char *dir, unsigned i)
{
    static char js[4200];
    int k = snprintf(js, sizeof(js), "{\"name\":\"held-%u\",\"notes\":\"", i);
    memset(js + k, 'n', 3900);
    snprintf(js + k + 3900, sizeof(js) - (size_t)k - 3900, "\"}");
    return cs_run_code(NULL, ARGS("put", "customer", "--data", dir, "--json", js), NULL, NULL,
                       WAIT_MS, true) == 0;
}

/* GET http://hostport/path with a plain socket (HTTP/1.0: the server closes when done). */
static char *http_get(const char *hostport, const char *path)
{
    char host[64];
    snprintf(host, sizeof(host), "%s", hostport);
    char *colon = strrchr(host, ':');
    if (!colon)
        return NULL;
    *colon = '\0';
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || inet_pton(AF_INET, host, &a.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, hostport);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t got = buf && write(fd, req, (size_t)n) == n ? 1 : -1;
    while (got > 0 && len + 1 < cap)
        if ((got = read(fd, buf + len, cap - len - 1)) > 0)
            len += (size_t)got;
    close(fd);
    if (!buf)
        return NULL;
    buf[len] = '\0';
    return buf;
}

/* The value of the first sample line that starts with `prefix` (a name and its first labels)
 * in a metrics document; -1 if none. */
static double metric(const char *doc, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = doc; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        const char *end = strstr(p, "} ");
        if (strncmp(p, prefix, n) == 0 && end)
            return atof(end + 2);
    }
    return -1;
}

/* CPU time (user + system) of pid, in ms (UINT64_MAX when it cannot be read). */
static uint64_t cpu_ms(pid_t pid)
{
    uint64_t ticks = 0;
    if (!cs_run_cpu_ticks(pid, &ticks))
        return UINT64_MAX;
    return ticks * 1000ull / (uint64_t)sysconf(_SC_CLK_TCK);
}

static bool alive(pid_t pid)
{
    int status;
    return pid > 0 && waitpid(pid, &status, WNOHANG) == 0;
}

/* How often `needle` occurs in the file at path. */
static unsigned count_in(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[2048];
    unsigned n = 0;
    while (f && fgets(line, sizeof(line), f))
        n += strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return n;
}

/* The last lines of a log, to say why a check failed. */
static void dump_tail(const char *path)
{
    FILE *f = fopen(path, "r");
    char lines[12][1024];
    unsigned n = 0;
    while (f && fgets(lines[n % 12], sizeof(lines[0]), f))
        n++;
    if (f)
        fclose(f);
    for (unsigned i = n > 12 ? n - 12 : 0; i < n; i++)
        fprintf(stderr, "  | %s", lines[i % 12]);
}

/* ---- the network ------------------------------------------------------------------------- */

typedef struct net {
    char hq[300], br[400], addr[128], hq_http[128], br_http[128], shop[32];
    char follow_log[320], tag[8];
    uint64_t id;
    pid_t serve, follow;
    unsigned puts;
} net;

static bool follow_start(net *x)
{
    char ready[320];
    snprintf(ready, sizeof(ready), "%s/%s-follow-http", root, x->tag);
    unlink(ready);
    x->follow = cs_run_spawn(ARGS("branch", "follow", "--data", x->br, "--metrics", "127.0.0.1:0",
                                  "--http-ready-file", ready, "--log-format", "json"),
                             x->follow_log);
    return x->follow > 0 && cs_run_ready_line(ready, x->br_http, sizeof(x->br_http), WAIT_MS);
}

/* A head office in root/TAG-hq with serve (and its HTTP listener), branch B1 joined in
 * br_parent/TAG-b1 and following. */
static bool net_start(net *x, const char *tag, const char *br_parent)
{
    snprintf(x->tag, sizeof(x->tag), "%s", tag);
    snprintf(x->hq, sizeof(x->hq), "%s/%s-hq", root, tag); /* the head office has room */
    snprintf(x->br, sizeof(x->br), "%s/%s-b1", br_parent, tag);
    snprintf(x->follow_log, sizeof(x->follow_log), "%s/%s-follow.log", root, tag);
    char ready[320], hready[320], log[320];
    snprintf(ready, sizeof(ready), "%s/%s-ready", root, tag);
    snprintf(hready, sizeof(hready), "%s/%s-http-ready", root, tag);
    snprintf(log, sizeof(log), "%s/%s-serve.log", root, tag);
    if (cs(NULL, ARGS("init", "--data", x->hq, "--name", "HQ"), NULL) != 0 ||
        cs(NULL, ARGS("network", "create", "--data", x->hq, "--name", "N"), NULL) != 0 ||
        !cs_fix_shops_add(x->hq, 1, PASSWORD, &x->id, WAIT_MS))
        return false;
    snprintf(x->shop, sizeof(x->shop), "%llu", (unsigned long long)x->id);
    x->serve =
        cs_run_spawn(ARGS("serve", "--data", x->hq, "--listen", "127.0.0.1:0", "--ready-file",
                          ready, "--http", "127.0.0.1:0", "--http-ready-file", hready),
                     log);
    if (x->serve <= 0 || !cs_run_ready_line(ready, x->addr, sizeof(x->addr), WAIT_MS) ||
        !cs_run_ready_line(hready, x->hq_http, sizeof(x->hq_http), WAIT_MS))
        return false;
    return cs(PASSWORD "\n",
              ARGS("branch", "join", "--data", x->br, "--head", x->addr, "--shop", x->shop,
                   "--password-stdin"),
              NULL) == 0 &&
           follow_start(x);
}

static bool in_step(const net *x, uint64_t wait_ms)
{
    for (uint64_t end = cs_run_now_ms() + wait_ms; cs_run_now_ms() < end; cs_run_sleep_ms(50))
        if (cs_fix_branch_cursor(x->br) == cs_fix_head_seq(x->hq))
            return true;
    fprintf(stderr, "  branch at %llu, head %llu\n",
            (unsigned long long)cs_fix_branch_cursor(x->br),
            (unsigned long long)cs_fix_head_seq(x->hq));
    return false;
}

/* The branch's row of `shop list --json-out` (JSON lines) at the head office (owned), NULL when
 * absent. */
static json_t *shop_row(const net *x)
{
    char *out = NULL;
    json_t *row = NULL;
    if (cs(NULL, ARGS("shop", "list", "--data", x->hq, "--json-out"), &out) == 0)
        for (char *line = strtok(out, "\n"); line && !row; line = strtok(NULL, "\n")) {
            json_t *r = json_loads(line, 0, NULL);
            if ((uint64_t)json_integer_value(json_object_get(r, "id")) == x->id)
                row = json_incref(r);
            json_decref(r);
        }
    free(out);
    return row;
}

/* Waits until the head office's shop list shows the branch held (want) or not; the row's held
 * seq into *seq. */
static bool hq_shows_held(const net *x, bool want, uint64_t *seq, const char *want_code)
{
    for (uint64_t end = cs_run_now_ms() + WAIT_MS; cs_run_now_ms() < end; cs_run_sleep_ms(100)) {
        json_t *row = shop_row(x);
        const json_t *h = json_object_get(row, "held");
        bool held = json_is_object(h);
        if (held && seq)
            *seq = (uint64_t)json_integer_value(json_object_get(h, "seq"));
        const char *code = json_string_value(json_object_get(h, "code"));
        bool code_ok = !held || (code && strcmp(code, want_code) == 0);
        json_decref(row);
        if (held == want && code_ok)
            return true;
    }
    return false;
}

static cs_branch_hold hold_of(const char *dir)
{
    cs_branch *b = NULL;
    cs_branch_hold h = {0};
    if (cs_branch_open(dir, NULL, &b) == CS_OK && cs_branch_hold_get(b, &h) != CS_OK)
        memset(&h, 0, sizeof(h));
    cs_branch_close(b);
    return h;
}

/* Fills the branch's filesystem and commits PUTS customers at the head office: the branch
 * holds at the first that does not fit. */
static bool make_hold(net *x, uint64_t *seq)
{
    bool ok = cs_loopfs_fill(&fs, LEFT_BYTES);
    for (unsigned i = 0; ok && i < PUTS; i++)
        ok = put_customer(x->hq, x->puts++);
    if (!ok)
        fprintf(stderr, "  the ballast or the head office's puts failed\n");
    ok = ok && hq_shows_held(x, true, seq, "storage_full");
    if (!ok) {
        char serve_log[320];
        snprintf(serve_log, sizeof(serve_log), "%s/%s-serve.log", root, x->tag);
        fprintf(stderr, "  no hold shown; the follower's log ends:\n");
        dump_tail(x->follow_log);
        fprintf(stderr, "  serve's:\n");
        dump_tail(serve_log);
    }
    return ok;
}

/* ---- the test ---------------------------------------------------------------------------- */

/* While held: up, not spinning, reading, nothing applied past the event, shown everywhere. */
/* On a filesystem at its limit a later try may still fit a little (the filesystem gives back
 * what a failed write took): the branch then moves on and holds further. Waits (bounded) until
 * the hold is quiet: the backoff's next try at least gap_ms away, and the branch's record, its
 * cursor and the head office agree (the event held is the first not applied). */
static bool wait_quiet(const net *x, uint64_t gap_ms, cs_branch_hold *h, uint64_t *cursor)
{
    uint64_t hq_seq = 0;
    bool quiet = false;
    for (uint64_t end = cs_run_now_ms() + WAIT_MS; !quiet && cs_run_now_ms() < end;
         cs_run_sleep_ms(100)) {
        *h = hold_of(x->br);
        *cursor = cs_fix_branch_cursor(x->br);
        json_t *row = shop_row(x);
        hq_seq = (uint64_t)json_integer_value(json_object_get(json_object_get(row, "held"), "seq"));
        json_decref(row);
        quiet = h->held && h->next_ms > cs_run_wall_ms() + gap_ms && h->seq == *cursor + 1 &&
                hq_seq == h->seq;
    }
    if (!quiet)
        fprintf(stderr, "  no quiet hold: record %llu, cursor %llu, head office %llu\n",
                (unsigned long long)h->seq, (unsigned long long)*cursor,
                (unsigned long long)hq_seq);
    return quiet;
}

static void check_while_held(net *x, uint64_t seq)
{
    cs_branch_hold h = {0};
    uint64_t cursor = 0;
    bool quiet = wait_quiet(x, 3500, &h, &cursor);
    fprintf(stderr, "  first held at %llu, quiet at %llu\n", (unsigned long long)seq,
            (unsigned long long)h.seq);
    CHECK(quiet);
    seq = h.seq;
    CHECK(cursor < cs_fix_head_seq(x->hq));
    /* tries bounded by the backoff: try k comes 2^(k-1) - 1 s after the first, at the earliest */
    uint64_t held_s = (cs_run_wall_ms() - h.since_ms) / 1000 + 1;
    CHECK(h.attempts >= 1 && h.attempts < 40 && (1ull << (h.attempts - 1)) - 1 <= held_s + 1);
    /* no spin, no crash-loop: over 3 s with no try due the follower stays up, uses little CPU,
     * tries nothing and applies nothing */
    unsigned tries0 = count_in(x->follow_log, "\"event\":\"held\"");
    uint64_t cpu0 = cpu_ms(x->follow);
    cs_run_sleep_ms(3000);
    uint64_t cpu1 = cpu_ms(x->follow), tries1 = count_in(x->follow_log, "\"event\":\"held\"");
    fprintf(stderr, "  held at %llu: %llu ms of CPU and %llu tries in 3 s\n",
            (unsigned long long)seq, (unsigned long long)(cpu1 - cpu0),
            (unsigned long long)(tries1 - tries0));
    CHECK(alive(x->follow));
    CHECK(cpu1 != UINT64_MAX && cpu1 - cpu0 < 1000);
    CHECK(tries1 == tries0);
    CHECK(cs_fix_branch_cursor(x->br) == cursor);
    /* the table too */
    char *out = NULL;
    CHECK(cs(NULL, ARGS("shop", "list", "--data", x->hq), &out) == 0);
    char cell[64];
    snprintf(cell, sizeof(cell), "%llu storage_full", (unsigned long long)seq);
    CHECK(out && strstr(out, cell));
    free(out);
    out = NULL;
    /* status: exit 6 (HELD) at both ends, naming the event */
    CHECK(cs(NULL, ARGS("status", "--data", x->hq, "--max-lag", "1000000"), &out) == 6);
    CHECK(out && strstr(out, "HELD") && strstr(out, "storage_full"));
    free(out);
    out = NULL;
    CHECK(cs(NULL, ARGS("status", "--data", x->br, "--json-out"), &out) == 6);
    json_t *j = out ? json_loads(out, 0, NULL) : NULL;
    const json_t *jh = json_object_get(j, "held");
    CHECK((uint64_t)json_integer_value(json_object_get(jh, "seq")) >= seq); /* a later try may
                                                                             * have moved on */
    CHECK(json_is_true(json_object_get(j, "node_running")));
    json_decref(j);
    free(out);
    out = NULL;
    /* metrics at the head office and at the follower */
    char series[160];
    snprintf(series, sizeof(series), "chainsync_branch_held{shop=\"%s\",", x->shop);
    bool hq_metric = false;
    for (uint64_t end = cs_run_now_ms() + 5000; !hq_metric && cs_run_now_ms() < end;
         cs_run_sleep_ms(200)) {
        char *doc = http_get(x->hq_http, "/metrics");
        hq_metric = doc && metric(doc, series) == 1;
        free(doc);
    }
    CHECK(hq_metric);
    bool br_metric = false;
    for (uint64_t end = cs_run_now_ms() + 5000; !br_metric && cs_run_now_ms() < end;
         cs_run_sleep_ms(200)) {
        char *doc = http_get(x->br_http, "/metrics");
        char held_seq[160];
        snprintf(held_seq, sizeof(held_seq), "chainsync_branch_held_sequence{shop=\"%s\",",
                 x->shop);
        br_metric = doc && metric(doc, series) == 1 && metric(doc, held_seq) >= (double)seq;
        if (!br_metric && cs_run_now_ms() + 200 >= end)
            fprintf(stderr, "  the follower's /metrics:\n%s", doc ? doc : "(none)\n");
        free(doc);
    }
    CHECK(br_metric);
    /* reads of its catalog go on */
    CHECK(cs(NULL, ARGS("list", "customer", "--data", x->br), NULL) == 0);
}

/* An event the branch's projection refuses, put into the head office's log through the log API
 * (so its checksum and chain are right: the stream verifies it): a `put` of a type this version
 * does not know, as a newer head office would send. cs_log_append runs in this process while
 * serve has the directory open, as any other writer would. */
static uint64_t append_unknown_type(const char *hq, uint64_t shop)
{
    cs_log *log = NULL;
    uint64_t seq = 0;
    uint8_t fields[] = {0x81, 0xa4, 'n', 'a', 'm', 'e', 0xa1, 'x'}; /* {"name":"x"} */
    cs_event ev = {.shop = shop,
                   .id = 4242,
                   .version = 1,
                   .actor = {"test_hold", 9},
                   .kind = {"put", 3},
                   .type = {"loyalty_card", 12},
                   .fields = fields,
                   .fields_len = sizeof(fields)};
    if (cs_log_open(hq, NULL, &log) != CS_OK || cs_log_append(log, &ev, 1, &seq) != CS_OK)
        seq = 0;
    cs_log_close(log);
    return seq;
}

/* Issue 14, the generic path: whatever the apply path refuses (here `corrupt`: "an item of an
 * unknown or local type") holds the branch at exactly that event, with nothing after it
 * applied, the follower up and idle; `branch retry` with the cause still there tries once more
 * and holds again (since kept, tries counted), it never skips the event. */
static void test_hold_refused_event_exact_seq_nothing_after_retry_holds_again(void)
{
    net x = {0};
    bool up = net_start(&x, "bad", root);
    CHECK(up);
    for (unsigned i = 0; up && i < 2; i++)
        up = put_customer(x.hq, x.puts++);
    CHECK(up && in_step(&x, WAIT_MS));
    uint64_t hq_id = 0;
    cs_engine *e = NULL;
    cs_shop_info self;
    if (cs_engine_open(x.hq, NULL, &e) == CS_OK && cs_engine_self(e, &self) == CS_OK)
        hq_id = self.id;
    cs_engine_close(e);
    uint64_t bad = up ? append_unknown_type(x.hq, hq_id) : 0;
    CHECK(bad > 0);
    CHECK(up && put_customer(x.hq, x.puts++)); /* an event after it: must not be applied */
    uint64_t seq = 0;
    bool held = bad && hq_shows_held(&x, true, &seq, "corrupt");
    CHECK(held);
    CHECK(seq == bad);
    CHECK(cs_fix_branch_cursor(x.br) == bad - 1);
    CHECK(cs_fix_head_seq(x.hq) == bad + 1);
    cs_branch_hold h = hold_of(x.br);
    CHECK(h.held && h.seq == bad && h.code == CS_CORRUPT && strstr(h.message, "unknown"));
    char *out = NULL;
    CHECK(cs(NULL, ARGS("status", "--data", x.hq, "--max-lag", "1000000"), &out) == 6);
    CHECK(out && strstr(out, "unknown or local type"));
    free(out);
    out = NULL;
    CHECK(cs(NULL, ARGS("list", "customer", "--data", x.br), &out) == 0);
    unsigned lines = 0;
    for (const char *p = out; p && (p = strstr(p, "held-")); p++)
        lines++;
    CHECK(lines == 2); /* the customer after the held event is not there */
    free(out);
    /* `branch retry` with the cause still there: one more try, held again, since kept */
    unsigned tries = count_in(x.follow_log, "\"event\":\"held\"");
    CHECK(cs(NULL, ARGS("branch", "retry", "--data", x.br), NULL) == 0);
    bool again = false;
    for (uint64_t end = cs_run_now_ms() + 5000; !again && cs_run_now_ms() < end;
         cs_run_sleep_ms(50))
        again = count_in(x.follow_log, "\"event\":\"held\"") > tries &&
                count_in(x.follow_log, "(branch retry)") == 1;
    CHECK(again);
    cs_branch_hold h2 = hold_of(x.br);
    CHECK(h2.held && h2.seq == bad && h2.since_ms == h.since_ms && h2.attempts > h.attempts);
    CHECK(alive(x.follow));
    CHECK(cs_fix_branch_cursor(x.br) == bad - 1);
    cs_run_stop(x.follow, SIGTERM, WAIT_MS);
    cs_run_stop(x.serve, SIGTERM, WAIT_MS);
}

/* Issue 14 "A branch that never crash-loops": held on storage_full, shown upstream, resumed by
 * backoff, by `branch retry` and by a restart; nothing skipped or applied twice. */
static void test_hold_storage_full_reported_resumes_no_crash_loop(void)
{
    net x = {0};
    bool up = net_start(&x, "full", fs.mnt);
    CHECK(up);
    for (unsigned i = 0; up && i < 3; i++)
        up = put_customer(x.hq, x.puts++);
    CHECK(up && in_step(&x, WAIT_MS));
    uint64_t seq = 0;

    /* 1: held; the cause goes away; the backoff's next try resumes it by itself */
    bool held = up && make_hold(&x, &seq);
    CHECK(held);
    if (held)
        check_while_held(&x, seq);
    CHECK(held && unlink(fs.ballast) == 0);
    CHECK(held && in_step(&x, 70000)); /* the backoff is at most 60 s */
    CHECK(held && hq_shows_held(&x, false, NULL, ""));
    CHECK(!hold_of(x.br).held);

    /* 2: held again; space freed while the backoff's next try is still seconds away; `branch
     * retry` resumes it before that try is due */
    held = held && make_hold(&x, &seq);
    CHECK(held);
    cs_branch_hold h = {0};
    uint64_t cursor = 0;
    CHECK(held && wait_quiet(&x, 3000, &h, &cursor));
    CHECK(held && unlink(fs.ballast) == 0);
    char *out = NULL;
    CHECK(cs(NULL, ARGS("branch", "retry", "--data", x.br), &out) == 0);
    CHECK(out && strstr(out, "retry asked"));
    free(out);
    uint64_t left = h.next_ms > cs_run_wall_ms() ? h.next_ms - cs_run_wall_ms() : 0;
    CHECK(held && in_step(&x, left));
    CHECK(held && count_in(x.follow_log, "branch retry") >= 1);

    /* 3: held, the follower stopped (cleanly) and started again: it tries at once */
    held = held && make_hold(&x, &seq);
    CHECK(held && wait_quiet(&x, 1500, &h, &cursor));
    CHECK(cs_run_stop(x.follow, SIGTERM, WAIT_MS) == 0); /* a clean stop, exit 0, while held */
    x.follow = 0;
    cs_branch_hold kept = hold_of(x.br);
    CHECK(kept.held && kept.seq == cs_fix_branch_cursor(x.br) + 1 && kept.since_ms == h.since_ms);
    /* durable: the record outlives the process, and the next one starts from it */
    CHECK(held && unlink(fs.ballast) == 0);
    CHECK(follow_start(&x));
    CHECK(in_step(&x, 10000));
    CHECK(!hold_of(x.br).held);
    CHECK(hq_shows_held(&x, false, NULL, ""));

    /* nothing skipped, nothing applied twice: the branch is what the audit replays for it */
    CHECK(cs(NULL, ARGS("audit", "verify", "--data", x.hq, "--branch", x.br), NULL) == 0);
    out = NULL;
    CHECK(cs(NULL, ARGS("list", "customer", "--data", x.br, "--json-out"), &out) == 0);
    unsigned lines = 0; /* one JSON line per customer */
    for (const char *p = out; p && (p = strstr(p, "\"type\":\"customer\"")); p++)
        lines++;
    fprintf(stderr, "  %u customers put, %u on the branch\n", x.puts, lines);
    CHECK(lines == x.puts);
    free(out);
    CHECK(cs(NULL, ARGS("status", "--data", x.hq, "--max-lag", "1000000"), NULL) == 0);

    cs_run_stop(x.follow, SIGTERM, WAIT_MS);
    cs_run_stop(x.serve, SIGTERM, WAIT_MS);
    unlink(fs.ballast);
    cs_test_rmtree(x.br);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    char *r = cs_test_tmpdir("hold");
    if (!r) {
        printf("FAIL: no temporary directory\n");
        return 1;
    }
    snprintf(root, sizeof(root), "%s", r);
    free(r);
    RUN(test_hold_refused_event_exact_seq_nothing_after_retry_holds_again);
    const char *why = cs_loopfs_mount(&fs, root, WAIT_MS);
    if (why)
        printf("skipped: %s (the storage_full part mounts a small filesystem)\n", why);
    else
        RUN(test_hold_storage_full_reported_resumes_no_crash_loop);
    cs_loopfs_unmount(&fs);
    cs_test_rmtree(root);
    return cs_test_finish();
}
