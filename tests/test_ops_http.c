/*
 * test_ops_http.c: operating a network as its operators meet it (issue 13, "Metrics", "The
 * Managing shops page", "Progress and logs"): a real `serve --http` and `branch follow
 * --metrics` on 127.0.0.1, read with the real tools: promtool checks both /metrics documents,
 * a real Prometheus scrapes serve every second and answers a branch's lag through its HTTP API,
 * headless chromium loads the Managing shops page and shows the lagging branch's row, and the
 * JSON log lines name the events that matter. Every process started here is stopped and reaped
 * by pid (fixture_stop, also after a failed CHECK); every wait is bounded.
 *
 * The fixture: a head office with branches B1 (following) and B2 (joined, then stopped), and
 * LAG events appended after B2 stopped, so B2 lags by exactly LAG events and B1 by none.
 */
#include "harness.h"
#include "net_fixture.h"
#include "run.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define PASSWORD "branch-secret-1"
#define WAIT_MS 20000u
#define CMD_MS 30000u
#define LAG 3u

typedef struct fixture {
    char *root;
    char hq[300], b1[300], b2[300];
    char addr[64], http[64], b1_http[64];
    char serve_log[300], follow_log[300];
    uint64_t shop1, shop2;
    pid_t serve, follow, prom;
} fixture;

static fixture fx;

/* ---- running programs -------------------------------------------------------------------- */

/* Starts argv (from PATH) in the background: stdout to out_log (NULL: /dev/null), stderr
 * appended to err_log. */
static pid_t prog_spawn(const char *const *argv, const char *out_log, const char *err_log)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int in = open("/dev/null", O_RDONLY);
    int out = open(out_log ? out_log : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0600);
    int err = open(err_log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in < 0 || out < 0 || err < 0)
        _exit(127);
    dup2(in, 0), dup2(out, 1), dup2(err, 2);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
}

/* `chainsync args` in the background with its log (stderr) alone in log: stdout (the result
 * line) is dropped, so every line of log is a log line. */
static pid_t chainsync_spawn(const char *const *args, const char *log)
{
    const char *argv[CS_RUN_ARGS_MAX + 2] = {getenv("CS_BIN")};
    for (size_t i = 0; args[i] && i < CS_RUN_ARGS_MAX; i++)
        argv[i + 1] = args[i];
    return argv[0] ? prog_spawn(argv, NULL, log) : -1;
}

/* `chainsync args`: exit code; *out (NULL = dropped) gets stdout. */
static int cmd(const char *input, char **out, const char *const *args)
{
    return cs_run_code(input, args, out, NULL, CMD_MS, true);
}

static uint64_t cmd_id(const char *input, const char *const *args)
{
    return cs_fix_cmd_u64(input, "id", args, CMD_MS);
}

/* A GET (or POST) through Python's urllib: the HTTP status and the body. */
static const char *const HTTP_PY =
    "import sys,urllib.request,urllib.error\n"
    "req=urllib.request.Request(sys.argv[1],method=sys.argv[2],"
    "data=b'x' if sys.argv[2]=='POST' else None)\n"
    "try:\n r=urllib.request.urlopen(req,timeout=5);c=r.status;b=r.read()\n"
    "except urllib.error.HTTPError as e:\n c=e.code;b=e.read()\n"
    "sys.stdout.write('%d\\n'%c);sys.stdout.flush();sys.stdout.buffer.write(b)\n";

static int http(const char *method, const char *url, char **body)
{
    const char *argv[] = {"python3", "-c", HTTP_PY, url, method, NULL};
    cs_run_result r;
    *body = NULL;
    if (!cs_run_prog(&r, NULL, argv, 10000))
        return -1;
    int code = r.exit_code == 0 ? atoi(r.out) : -1;
    char *nl = strchr(r.out, '\n');
    if (code > 0 && nl)
        *body = strdup(nl + 1);
    if (code < 0)
        fprintf(stderr, "  GET %s: %s", url, r.err);
    cs_run_free(&r);
    return code;
}

static int get(const char *hostport, const char *path, char **body)
{
    char url[256];
    snprintf(url, sizeof(url), "http://%s%s", hostport, path);
    return http("GET", url, body);
}

/* ---- the fixture ------------------------------------------------------------------------- */

static bool join(const char *dir, uint64_t shop)
{
    char s[32];
    snprintf(s, sizeof(s), "%llu", (unsigned long long)shop);
    const char *a[] = {"branch", "join", "--data",           dir, "--head", fx.addr,
                       "--shop", s,      "--password-stdin", NULL};
    return cmd(PASSWORD "\n", NULL, a) == 0;
}

static bool add_category(const char *name)
{
    char json[64];
    snprintf(json, sizeof(json), "{\"name\":\"%s\"}", name);
    const char *a[] = {"put", "service_category", "--data", fx.hq, "--json", json, NULL};
    return cmd(NULL, NULL, a) == 0;
}

static bool serve_start(void)
{
    char ready[320], hready[320];
    snprintf(ready, sizeof(ready), "%s/ready", fx.root);
    snprintf(hready, sizeof(hready), "%s/http-ready", fx.root);
    const char *a[] = {"serve",        "--data",       fx.hq,    "--listen", "127.0.0.1:0",
                       "--ready-file", ready,          "--http", "0",        "--http-ready-file",
                       hready,         "--log-format", "json",   NULL};
    fx.serve = chainsync_spawn(a, fx.serve_log);
    return fx.serve > 0 && cs_run_ready_line(ready, fx.addr, sizeof(fx.addr), WAIT_MS) &&
           cs_run_ready_line(hready, fx.http, sizeof(fx.http), WAIT_MS);
}

static bool follow_start(void)
{
    char hready[320];
    snprintf(hready, sizeof(hready), "%s/b1-http-ready", fx.root);
    const char *a[] = {
        "branch", "follow",       "--data", fx.b1, "--metrics", "127.0.0.1:0", "--http-ready-file",
        hready,   "--log-format", "json",   NULL};
    fx.follow = chainsync_spawn(a, fx.follow_log);
    return fx.follow > 0 && cs_run_ready_line(hready, fx.b1_http, sizeof(fx.b1_http), WAIT_MS);
}

static bool fixture_start(void)
{
    fx.root = cs_test_tmpdir("ops-http");
    if (!fx.root)
        return false;
    snprintf(fx.hq, sizeof(fx.hq), "%s/hq", fx.root);
    snprintf(fx.b1, sizeof(fx.b1), "%s/b1", fx.root);
    snprintf(fx.b2, sizeof(fx.b2), "%s/b2", fx.root);
    snprintf(fx.serve_log, sizeof(fx.serve_log), "%s/serve.log", fx.root);
    snprintf(fx.follow_log, sizeof(fx.follow_log), "%s/follow.log", fx.root);
    const char *init[] = {"init", "--data", fx.hq, "--name", "HQ", NULL};
    const char *create[] = {"network", "create", "--data", fx.hq, "--name", "Pets", NULL};
    const char *add1[] = {
        "shop",       "add", "--data", fx.hq, "--name", "Harbour \"B1\"", "--password-stdin",
        "--json-out", NULL};
    const char *add2[] = {"shop",   "add",         "--data",           fx.hq,
                          "--name", "Hillside B2", "--password-stdin", "--json-out",
                          NULL};
    if (cmd(NULL, NULL, init) != 0 || cmd(NULL, NULL, create) != 0)
        return false;
    fx.shop1 = cmd_id(PASSWORD "\n", add1);
    fx.shop2 = cmd_id(PASSWORD "\n", add2);
    if (!fx.shop1 || !fx.shop2 || !add_category("Grooming") || !serve_start())
        return false;
    if (!join(fx.b1, fx.shop1) || !join(fx.b2, fx.shop2) || !follow_start())
        return false;
    for (unsigned i = 0; i < LAG; i++) { /* B2 is not following: it falls LAG events behind */
        char name[16];
        snprintf(name, sizeof(name), "Extra %u", i);
        if (!add_category(name))
            return false;
    }
    return true;
}

static void fixture_stop(void)
{
    cs_run_stop(fx.prom, SIGTERM, 10000);
    cs_run_stop(fx.follow, SIGTERM, 10000);
    cs_run_stop(fx.serve, SIGTERM, 10000);
    fx.prom = fx.follow = fx.serve = 0;
    if (fx.root && !getenv("CS_KEEP"))
        cs_test_rmtree(fx.root);
    free(fx.root);
    fx.root = NULL;
}

/* The value of the sample `name{shop="ID",...}` in a Prometheus text document (-1: none). */
static double sample(const char *doc, const char *name, uint64_t shop)
{
    char key[160];
    snprintf(key, sizeof(key), "\n%s{shop=\"%llu\"", name, (unsigned long long)shop);
    const char *p = doc ? strstr(doc, key) : NULL;
    const char *end = p ? strchr(p + 1, '\n') : NULL;
    const char *sp = p ? memrchr(p, ' ', (size_t)(end ? end - p : (long)strlen(p))) : NULL;
    return sp ? atof(sp + 1) : -1;
}

/* Waits until serve's /metrics shows both branches where the fixture put them. */
static char *metrics_settled(void)
{
    for (uint64_t end = cs_run_now_ms() + WAIT_MS; cs_run_now_ms() < end; cs_run_sleep_ms(200)) {
        char *doc = NULL;
        if (get(fx.http, "/metrics", &doc) == 200 &&
            sample(doc, "chainsync_branch_lag_events", fx.shop2) == LAG &&
            sample(doc, "chainsync_branch_lag_events", fx.shop1) == 0 &&
            sample(doc, "chainsync_branch_connected", fx.shop1) == 1)
            return doc;
        free(doc);
    }
    return NULL;
}

/* ---- the tests --------------------------------------------------------------------------- */

static bool promtool_accepts(const char *doc)
{
    const char *argv[] = {"promtool", "check", "metrics", NULL};
    cs_run_result r;
    bool ok = cs_run_prog(&r, doc, argv, 20000) && r.exit_code == 0;
    if (!ok)
        fprintf(stderr, "  promtool check metrics: %s%s", r.out, r.err);
    cs_run_free(&r);
    return ok;
}

/* Issue 13 "Metrics": serve's and a follower's /metrics pass `promtool check metrics` and say
 * what the network is: the lagging branch's lag, the follower's cursor, connection and counters,
 * and (issue 13 Status, the backlog) the outbox depth the follower reported to the head office. */
static void metrics_pass_promtool_and_tell_the_lag(void)
{
    char *hq = metrics_settled(), *b1 = NULL;
    CHECK(hq != NULL);
    bool ok = promtool_accepts(hq) && strstr(hq, "# TYPE chainsync_segments_sent_total counter") &&
              sample(hq, "chainsync_branch_cursor", fx.shop2) >= 1 &&
              sample(hq, "chainsync_branch_lag_seconds", fx.shop2) > 0 &&
              strstr(hq, "# TYPE chainsync_branch_outbox_entries gauge") &&
              sample(hq, "chainsync_branch_outbox_entries", fx.shop1) == 0 && /* reported */
              strstr(hq, "name=\"Harbour \\\"B1\\\"\"") != NULL;
    free(hq);
    CHECK(ok);
    /* The follower renders its page once a second: wait (bounded) for the figures to arrive. */
    ok = false;
    for (uint64_t end = cs_run_now_ms() + WAIT_MS; !ok && cs_run_now_ms() < end;
         cs_run_sleep_ms(200)) {
        free(b1);
        b1 = NULL;
        ok = get(fx.b1_http, "/metrics", &b1) == 200 &&
             sample(b1, "chainsync_branch_connected", fx.shop1) == 1 &&
             sample(b1, "chainsync_branch_cursor", fx.shop1) >= 1 + LAG &&
             sample(b1, "chainsync_outbox_entries", fx.shop1) == 0 &&
             strstr(b1, "\nchainsync_events_applied_total ") != NULL;
    }
    ok = ok && promtool_accepts(b1);
    free(b1);
    CHECK(ok);
    char *none = NULL;
    CHECK(get(fx.b1_http, "/api/shops", &none) == 404); /* the page is the head office's */
    free(none);
}

/* Prometheus' answer to `query` over its HTTP API: the first result's value (-1: none). */
static double prom_query(int port, const char *query)
{
    char url[512], *body = NULL;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/v1/query?query=%s", port, query);
    double v = -1;
    if (http("GET", url, &body) == 200) {
        json_t *o = json_loads(body, 0, NULL);
        json_t *res = json_object_get(json_object_get(o, "data"), "result");
        const char *val =
            json_string_value(json_array_get(json_object_get(json_array_get(res, 0), "value"), 1));
        if (val)
            v = atof(val);
        json_decref(o);
    }
    free(body);
    return v;
}

/* Issue 13 "Metrics": a real Prometheus scraping serve every second finds the branch's lag. */
static void prometheus_scrapes_the_branch_lag(void)
{
    char *doc = metrics_settled();
    CHECK(doc != NULL);
    free(doc);
    char cfg[320], data[320], log[320], listen[64], conf[512];
    snprintf(cfg, sizeof(cfg), "%s/prometheus.yml", fx.root);
    snprintf(data, sizeof(data), "%s/prometheus-data", fx.root);
    snprintf(log, sizeof(log), "%s/prometheus.log", fx.root);
    snprintf(conf, sizeof(conf),
             "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
             "scrape_configs:\n  - job_name: chainsync\n    static_configs:\n"
             "      - targets: ['%s']\n",
             fx.http);
    FILE *f = fopen(cfg, "w");
    CHECK(f && fputs(conf, f) >= 0 && fclose(f) == 0);
    int port = (int)cs_fix_free_port(); /* Prometheus cannot report a port 0 listener */
    CHECK(port > 0);
    snprintf(listen, sizeof(listen), "--web.listen-address=127.0.0.1:%d", port);
    char cfg_opt[400], data_opt[400];
    snprintf(cfg_opt, sizeof(cfg_opt), "--config.file=%s", cfg);
    snprintf(data_opt, sizeof(data_opt), "--storage.tsdb.path=%s", data);
    const char *argv[] = {"prometheus", cfg_opt, data_opt, listen, "--log.level=warn", NULL};
    fx.prom = prog_spawn(argv, log, log);
    CHECK(fx.prom > 0);
    char q[128];
    snprintf(q, sizeof(q), "chainsync_branch_lag_events%%7Bshop%%3D%%22%llu%%22%%7D",
             (unsigned long long)fx.shop2);
    double lag = -1;
    for (uint64_t end = cs_run_now_ms() + 40000; lag != LAG && cs_run_now_ms() < end;
         cs_run_sleep_ms(500))
        lag = prom_query(port, q);
    if (lag != LAG)
        fprintf(stderr, "  prometheus answered %g for %s (log: %s)\n", lag, q, log);
    CHECK(lag == LAG);
    CHECK(cs_run_stop(fx.prom, SIGTERM, 15000) == 0);
    fx.prom = 0;
}

/* Issue 13 "The Managing shops page": headless chromium loads the page against the running
 * network; B2's row shows its lag (LAG events), B1's shows 0; the page reads no secret. */
static void shops_page_shows_the_lag_in_chromium(void)
{
    char *doc = metrics_settled();
    CHECK(doc != NULL);
    free(doc);
    char url[128], profile[320], shot[400], shot_opt[420];
    snprintf(url, sizeof(url), "http://%s/", fx.http);
    snprintf(profile, sizeof(profile), "--user-data-dir=%s/chromium", fx.root);
    snprintf(shot, sizeof(shot), "%s/shops-page.png", fx.root);
    snprintf(shot_opt, sizeof(shot_opt), "--screenshot=%s", shot);
    const char *dump[] = {"chromium",      "--headless", "--no-sandbox",
                          "--disable-gpu", profile,      "--virtual-time-budget=4000",
                          "--dump-dom",    url,          NULL};
    cs_run_result r;
    CHECK(cs_run_prog(&r, NULL, dump, 60000));
    char row2[64], want2[64], row1[64];
    snprintf(row2, sizeof(row2), "<tr id=\"shop-%llu\"", (unsigned long long)fx.shop2);
    snprintf(row1, sizeof(row1), "<tr id=\"shop-%llu\"", (unsigned long long)fx.shop1);
    snprintf(want2, sizeof(want2), "<td class=\"num lag\">%u</td>", LAG);
    const char *p2 = strstr(r.out, row2), *p1 = strstr(r.out, row1);
    const char *end2 = p2 ? strstr(p2, "</tr>") : NULL, *lag2 = p2 ? strstr(p2, want2) : NULL;
    const char *end1 = p1 ? strstr(p1, "</tr>") : NULL;
    const char *lag1 = p1 ? strstr(p1, "<td class=\"num lag\">0</td>") : NULL;
    bool ok = r.exit_code == 0 && lag2 && lag2 < end2 && lag1 && lag1 < end1 &&
              strstr(r.out, "Hillside B2") && strstr(r.out, "<canvas");
    if (!ok)
        fprintf(stderr, "  chromium exited %d; DOM: %.2000s\n", r.exit_code, r.out);
    cs_run_free(&r);
    CHECK(ok);
    const char *snap[] = {"chromium",
                          "--headless",
                          "--no-sandbox",
                          "--disable-gpu",
                          profile,
                          "--hide-scrollbars",
                          "--window-size=1000,640",
                          "--virtual-time-budget=4000",
                          shot_opt,
                          url,
                          NULL};
    CHECK(cs_run_prog(&r, NULL, snap, 60000) && r.exit_code == 0);
    cs_run_free(&r);
    struct stat st;
    CHECK(stat(shot, &st) == 0 && st.st_size > 1000);
    char *shops = NULL;
    CHECK(get(fx.http, "/api/shops", &shops) == 200);
    ok = strstr(shops, "key") == NULL && strstr(shops, "salt") == NULL &&
         strstr(shops, "password") == NULL && strstr(shops, "\"lag\":3") != NULL;
    free(shops);
    CHECK(ok);
}

/* Issue 13 "The Managing shops page": the listener changes nothing (only GET) and binds to
 * loopback when given a bare port. */
static void http_is_read_only_on_loopback(void)
{
    char url[128], *body = NULL;
    snprintf(url, sizeof(url), "http://%s/api/shops", fx.http);
    CHECK(http("POST", url, &body) == 405);
    free(body);
    CHECK(strncmp(fx.http, "127.0.0.1:", 10) == 0); /* started with `--http 0` */
    CHECK(get(fx.http, "/nothing", &body) == 404);
    free(body);
}

/* The JSON log lines in file: every one parses, and the events seen (with shop and code). */
static bool log_has(const char *file, const char *event, uint64_t shop, const char *code)
{
    FILE *f = fopen(file, "r");
    char line[2048];
    bool found = false, all_json = true;
    while (f && fgets(line, sizeof(line), f)) {
        json_t *o = json_loads(line, 0, NULL);
        if (!o || !json_is_string(json_object_get(o, "time")) ||
            !json_is_string(json_object_get(o, "level")) ||
            !json_is_string(json_object_get(o, "msg")))
            all_json = false;
        const char *ev = json_string_value(json_object_get(o, "event"));
        const char *c = json_string_value(json_object_get(o, "code"));
        json_int_t s = json_integer_value(json_object_get(o, "shop"));
        if (ev && strcmp(ev, event) == 0 && (!shop || (uint64_t)s == shop) &&
            (!code || (c && strcmp(c, code) == 0)))
            found = true;
        json_decref(o);
    }
    if (f)
        fclose(f);
    if (!all_json)
        fprintf(stderr, "  %s holds a line that is not a JSON log line\n", file);
    return found && all_json;
}

/* Issue 13 "Progress and logs": serve and follow log the events that matter as JSON lines with
 * --log-format json (start, listen, connect, accepted, refused with its code, caught up, drop,
 * stop), and --log-level filters them. */
static void logs_name_the_events_that_matter(void)
{
    char s[32];
    snprintf(s, sizeof(s), "%llu", (unsigned long long)fx.shop2);
    const char *bad[] = {"branch", "join", "--data",           fx.b2, "--head", fx.addr,
                         "--shop", s,      "--password-stdin", NULL};
    cs_run_result r;
    CHECK(cs_run(&r, "wrong-password-9\n", NULL, bad, CMD_MS));
    cs_run_free(&r);
    /* a pull at --log-level error says nothing on standard error when all goes well */
    const char *quiet[] = {"branch", "pull", "--data", fx.b2, "--log-level", "error", NULL};
    CHECK(cs_run(&r, NULL, NULL, quiet, CMD_MS));
    bool quiet_ok = r.exit_code == 0 && r.err[0] == '\0';
    cs_run_free(&r);
    CHECK(quiet_ok);
    const char *worse[] = {"branch", "follow", "--data", fx.b2, "--log-level", "chatty", NULL};
    CHECK(cs_run(&r, NULL, NULL, worse, CMD_MS));
    bool usage = r.exit_code == 1 && strstr(r.err, "--log-level") != NULL;
    cs_run_free(&r);
    CHECK(usage);
    uint64_t end = cs_run_now_ms() + WAIT_MS;
    while (!log_has(fx.serve_log, "drop", fx.shop2, NULL) && cs_run_now_ms() < end)
        cs_run_sleep_ms(50);
    CHECK(log_has(fx.serve_log, "start", 0, NULL));
    CHECK(log_has(fx.serve_log, "listen", 0, NULL));
    CHECK(log_has(fx.serve_log, "connect", 0, NULL));
    CHECK(log_has(fx.serve_log, "accepted", fx.shop1, NULL));
    CHECK(log_has(fx.serve_log, "caught_up", fx.shop1, NULL));
    CHECK(log_has(fx.serve_log, "refused", fx.shop2, "auth_failed"));
    CHECK(log_has(fx.serve_log, "drop", fx.shop2, NULL));
    CHECK(log_has(fx.follow_log, "start", fx.shop1, NULL));
    CHECK(log_has(fx.follow_log, "accepted", fx.shop1, NULL));
    CHECK(log_has(fx.follow_log, "caught_up", fx.shop1, NULL));
    CHECK(cs_run_stop(fx.follow, SIGTERM, 10000) == 0);
    fx.follow = 0;
    CHECK(log_has(fx.follow_log, "stop", fx.shop1, NULL));
    CHECK(cs_run_stop(fx.serve, SIGTERM, 10000) == 0);
    fx.serve = 0;
    CHECK(log_has(fx.serve_log, "stop", 0, NULL));
}

static void fixture_starts(void)
{
    CHECK(fixture_start());
}

int main(void)
{
    RUN(fixture_starts);
    if (cs_test_st.failed == 0) {
        RUN(metrics_pass_promtool_and_tell_the_lag);
        RUN(prometheus_scrapes_the_branch_lag);
        RUN(shops_page_shows_the_lag_in_chromium);
        RUN(http_is_read_only_on_loopback);
        RUN(logs_name_the_events_that_matter);
    }
    fixture_stop();
    return cs_test_finish();
}
