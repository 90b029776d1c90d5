/*
 * test_net.c: the live network with real processes on 127.0.0.1: `chainsync serve`, branches
 * that `join`, `follow` and `pull`, and commands run in other processes while they do (SPEC 5,
 * R2-R8, R10). Every process a test starts is stopped and reaped by pid; every wait is bounded.
 *
 * What is checked here: three following branches get a change at the sync point and hold what
 * the audit's replay says (R2, R5, R14); a branch or the server killed with SIGKILL mid-stream
 * loses and repeats nothing; shared records written offline at a branch reach the head office
 * exactly once, also when the answer was lost (R8); refused writes are reported and leave the
 * outbox; the handshake's refusals give their codes and a refused join leaves nothing behind.
 */
#include "projections/projection.h"
#include "harness.h"
#include "net_fixture.h"
#include "run.h"

#include <jansson.h>
#include <sys/stat.h>

#define PASSWORD "branch-secret-1"
#define WAIT_MS 15000u
#define CMD_MS 30000u
#define CS_NET_DEAD_MS_FOR_TEST 10000u /* net/net.h CS_NET_DEAD_MS */

typedef struct net {
    char *root;
    char hq[300];
    char addr[64];
    char serve_log[300];
    pid_t serve;
    uint64_t shops[3];
    char dir[3][300];
    pid_t follow[3];
} net;

/* The networks a test has up: a test that fails a CHECK returns early, so main stops what it
 * left running and removes its directories after each test (every process reaped by pid). */
#define LIVE_MAX 4
static net *live[LIVE_MAX];

static void live_add(net *n)
{
    for (int i = 0; i < LIVE_MAX; i++)
        if (!live[i]) {
            live[i] = n;
            return;
        }
}

static void live_del(net *n)
{
    for (int i = 0; i < LIVE_MAX; i++)
        if (live[i] == n)
            live[i] = NULL;
}

/* ---- running commands -------------------------------------------------------------------- */

static int cmd(const char *input, char **out, const char *const *args)
{
    return cs_run_code(input, args, out, NULL, CMD_MS, true);
}

/* Runs a command whose --json-out is one object and returns field `key` as an integer. */
static uint64_t cmd_u64(const char *input, const char *key, const char *const *args)
{
    return cs_fix_cmd_u64(input, key, args, CMD_MS);
}

static int cmd_err(const char *const *args, const char *input, const char *want)
{
    cs_run_result r;
    if (!cs_run(&r, input, NULL, args, CMD_MS))
        return -1;
    int rc = strstr(r.err, want) ? r.exit_code : -2;
    if (rc == -2)
        fprintf(stderr, "  %s %s: exit %d, wanted %s: %s\n", args[0], args[1], r.exit_code, want,
                r.err);
    free(r.out);
    free(r.err);
    return rc;
}

/* Waits until the branch's cursor reaches `seq`. */
static bool wait_cursor(const char *dir, uint64_t seq)
{
    uint64_t deadline = cs_run_now_ms() + WAIT_MS;
    while (cs_run_now_ms() < deadline) {
        if (cs_fix_branch_cursor(dir) >= seq)
            return true;
        cs_run_sleep_ms(50);
    }
    fprintf(stderr, "  %s stayed at %llu, wanted %llu\n", dir,
            (unsigned long long)cs_fix_branch_cursor(dir), (unsigned long long)seq);
    return false;
}

/* The field `field` of item `id` of `type` in dir, as an integer (-1 when absent). */
static long long item_int(const char *dir, const char *type, uint64_t id, const char *field)
{
    char ids[32];
    snprintf(ids, sizeof(ids), "%llu", (unsigned long long)id);
    char *out = NULL;
    long long v = -1;
    const char *args[] = {"get", type, ids, "--data", dir, "--json-out", NULL};
    if (cmd(NULL, &out, args) == 0) {
        json_t *j = json_loads(out, JSON_DISABLE_EOF_CHECK, NULL);
        json_t *f = json_object_get(j, field);
        if (json_is_integer(f))
            v = json_integer_value(f);
        else if (json_is_array(f) && json_is_object(json_array_get(f, 0))) /* price_table */
            v = json_integer_value(json_object_get(json_array_get(f, 0), "price_cents"));
        json_decref(j);
    }
    free(out);
    return v;
}

/* The id of this branch's copy of head-office item `head_id` (0 when it has none). */
static uint64_t copy_of(const char *dir, const char *type, uint64_t head_id)
{
    char *out = NULL;
    uint64_t id = 0;
    const char *args[] = {"list", type, "--data", dir, "--json-out", NULL};
    if (cmd(NULL, &out, args) == 0) {
        for (char *line = strtok(out, "\n"); line && !id; line = strtok(NULL, "\n")) {
            json_t *j = json_loads(line, 0, NULL);
            json_t *o = json_object_get(j, "origin");
            if (o && (uint64_t)json_integer_value(json_object_get(o, "id")) == head_id)
                id = (uint64_t)json_integer_value(json_object_get(j, "id"));
            json_decref(j);
        }
    }
    free(out);
    return id;
}

/* Events of `kind` and `type` with item id `id` (0 = any) in dir's log. */
static int count_events(const char *dir, const char *kind, const char *type, uint64_t id)
{
    char *out = NULL;
    int n = -1;
    const char *args[] = {"log", "--data", dir, NULL};
    if (cmd(NULL, &out, args) == 0) {
        n = 0;
        for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
            json_t *j = json_loads(line, 0, NULL);
            const char *k = json_string_value(json_object_get(j, "kind"));
            const char *t = json_string_value(json_object_get(j, "type"));
            uint64_t i = (uint64_t)json_integer_value(json_object_get(j, "id"));
            n += k && t && strcmp(k, kind) == 0 && strcmp(t, type) == 0 && (!id || i == id);
            json_decref(j);
        }
    }
    free(out);
    return n;
}

/* ---- a network --------------------------------------------------------------------------- */

static uint64_t put_json(const char *dir, const char *type, const char *id, const char *json)
{
    const char *a[] = {"put", type, "--data", dir, "--json", json, "--json-out", NULL};
    const char *b[] = {"put", type, id, "--data", dir, "--json", json, "--json-out", NULL};
    return cmd_u64(NULL, "id", id ? b : a);
}

static bool sync_all(const char *hq)
{
    const char *a[] = {"sync", "--data", hq, NULL};
    return cmd(NULL, NULL, a) == 0;
}

/* A head office with n branches, a category and a service; paths under a fresh root. */
static bool net_make(net *n, unsigned nbranches, uint64_t *service)
{
    memset(n, 0, sizeof(*n));
    n->root = cs_test_tmpdir("net");
    if (!n->root)
        return false;
    live_add(n);
    snprintf(n->hq, sizeof(n->hq), "%s/hq", n->root);
    snprintf(n->serve_log, sizeof(n->serve_log), "%s/serve.log", n->root);
    const char *init[] = {"init", "--data", n->hq, "--name", "HQ", NULL};
    const char *create[] = {"network", "create", "--data", n->hq, "--name", "Pets", NULL};
    if (cmd(NULL, NULL, init) != 0 || cmd(NULL, NULL, create) != 0)
        return false;
    if (!cs_fix_shops_add(n->hq, nbranches, PASSWORD, n->shops, CMD_MS))
        return false;
    for (unsigned i = 0; i < nbranches; i++)
        snprintf(n->dir[i], sizeof(n->dir[i]), "%s/b%u", n->root, i + 1);
    char json[256];
    uint64_t cat = put_json(n->hq, "service_category", NULL, "{\"name\":\"Grooming\"}");
    snprintf(json, sizeof(json),
             "{\"name\":\"Bath\",\"category\":%llu,\"price_table\":[{\"tier\":\"small\","
             "\"price_cents\":3000}]}",
             (unsigned long long)cat);
    *service = put_json(n->hq, "service", NULL, json);
    return cat && *service && sync_all(n->hq);
}

static bool serve_start(net *n, const char *port)
{
    char ready[300];
    snprintf(ready, sizeof(ready), "%s/ready", n->root);
    return cs_fix_serve_start(&n->serve, n->hq, port, ready, n->serve_log, n->addr, sizeof(n->addr),
                              WAIT_MS);
}

/* `branch join` for branch i: its exit code, or with want (a code's name) the exit code only
 * when standard error names it (-2 otherwise). */
static int join_with(net *n, unsigned i, const char *password, const char *want)
{
    char shop[32];
    snprintf(shop, sizeof(shop), "%llu", (unsigned long long)n->shops[i]);
    const char *args[] = {"branch", "join",   "--data", n->dir[i],          "--head",
                          n->addr,  "--shop", shop,     "--password-stdin", NULL};
    char input[128];
    snprintf(input, sizeof(input), "%s\n", password);
    return want ? cmd_err(args, input, want) : cmd(input, NULL, args);
}

static int join(net *n, unsigned i, const char *password)
{
    return join_with(n, i, password, NULL);
}

static int join_err(net *n, unsigned i, const char *password, const char *want)
{
    return join_with(n, i, password, want);
}

static int pull(net *n, unsigned i)
{
    const char *args[] = {"branch", "pull", "--data", n->dir[i], NULL};
    return cmd(NULL, NULL, args);
}

static void follow_start(net *n, unsigned i)
{
    char log[300];
    snprintf(log, sizeof(log), "%s/follow%u.log", n->root, i + 1);
    const char *args[] = {"branch", "follow", "--data", n->dir[i], NULL};
    n->follow[i] = cs_run_spawn(args, log);
}

static void net_free(net *n)
{
    live_del(n);
    for (unsigned i = 0; i < 3; i++)
        if (n->follow[i] > 0)
            cs_run_stop(n->follow[i], SIGTERM, 5000);
    if (n->serve > 0) {
        kill(n->serve, SIGCONT); /* a test may have frozen it */
        cs_run_stop(n->serve, SIGTERM, 5000);
    }
    cs_test_tmpdir_free(n->root);
    memset(n, 0, sizeof(*n));
}

/* A head office with one branch that joined, and its server running. */
static bool net_up_one(net *n)
{
    uint64_t service = 0;
    return net_make(n, 1, &service) && serve_start(n, NULL) && join(n, 0, PASSWORD) == 0;
}

static bool audit_branch_ok(net *n, unsigned i)
{
    const char *args[] = {"audit", "verify", "--data", n->hq, "--branch", n->dir[i], NULL};
    return cmd(NULL, NULL, args) == 0;
}

/* ---- tests ------------------------------------------------------------------------------- */

static bool wait_item(const char *dir, const char *type, uint64_t id, const char *field,
                      long long want)
{
    uint64_t deadline = cs_run_now_ms() + WAIT_MS;
    while (cs_run_now_ms() < deadline) {
        if (item_int(dir, type, id, field) == want)
            return true;
        cs_run_sleep_ms(50);
    }
    return false;
}

/* R2, R3, R5, R6, R8 over the live network, and R14: each branch holds what the audit's replay
 * of the head office's log says it should. */
static void test_r5_three_followers_change_at_sync_point_and_equal_audit_replay(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    uint64_t service = 0;
    CHECK(net_make(&n, 3, &service));
    CHECK(serve_start(&n, NULL));
    for (unsigned i = 0; i < 3; i++) {
        CHECK(join(&n, i, PASSWORD) == 0); /* R5a: the whole catalog at once */
        CHECK(copy_of(n.dir[i], "service", service) != 0);
        follow_start(&n, i);
    }
    uint64_t local = put_json(n.dir[0], "service_category", NULL, "{\"name\":\"Local only\"}");
    CHECK(local != 0); /* R3 */
    char b3[32];
    snprintf(b3, sizeof(b3), "%llu", (unsigned long long)n.shops[2]);
    const char *off[] = {"shop", "switch", b3, "off", "--data", n.hq, NULL};
    CHECK(cmd(NULL, NULL, off) == 0); /* R6 */
    char sid[32], json[256];
    snprintf(sid, sizeof(sid), "%llu", (unsigned long long)service);
    snprintf(json, sizeof(json),
             "{\"name\":\"Bath\",\"category\":%llu,\"price_table\":[{\"tier\":"
             "\"small\",\"price_cents\":4500}]}",
             (unsigned long long)(service - 1));
    CHECK(put_json(n.hq, "service", sid, json) == service);
    uint64_t head = cs_fix_head_seq(n.hq);
    for (unsigned i = 0; i < 2; i++) { /* the event arrived, the copy waits for the sync point */
        CHECK(wait_cursor(n.dir[i], head));
        CHECK(item_int(n.dir[i], "service", copy_of(n.dir[i], "service", service), "price_table") ==
              3000);
    }
    CHECK(sync_all(n.hq));
    head = cs_fix_head_seq(n.hq);
    for (unsigned i = 0; i < 3; i++)
        CHECK(wait_cursor(n.dir[i], head));
    for (unsigned i = 0; i < 2; i++)
        CHECK(item_int(n.dir[i], "service", copy_of(n.dir[i], "service", service), "price_table") ==
              4500);
    CHECK(item_int(n.dir[2], "service", copy_of(n.dir[2], "service", service), "price_table") ==
          3000); /* R6: switched off, keeps the old price */
    uint64_t ana = put_json(n.dir[1], "customer", NULL, "{\"name\":\"Ana\"}"); /* R8 */
    CHECK(ana != 0);
    CHECK(wait_item(n.hq, "customer", ana, "version", 1));
    CHECK(wait_item(n.dir[0], "customer", ana, "version", 1));
    CHECK(wait_item(n.dir[2], "customer", ana, "version", 1));
    CHECK(item_int(n.dir[0], "service_category", local, "version") == 1); /* R3: untouched */
    head = cs_fix_head_seq(n.hq);
    for (unsigned i = 0; i < 3; i++) {
        CHECK(wait_cursor(n.dir[i], head));
        CHECK(cs_run_stop(n.follow[i], SIGTERM, 5000) == 0); /* a clean stop exits 0 */
        n.follow[i] = 0;
        CHECK(audit_branch_ok(&n, i));
    }
    net_free(&n);
}

/* SPEC 4/5: a branch killed mid-stream applies each event exactly once after a restart. */
static void test_net_branch_killed_mid_stream_resumes_without_gap_or_repeat(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    uint64_t service = 0;
    CHECK(net_make(&n, 1, &service));
    cs_engine *e = NULL;
    CHECK_OK(cs_engine_open(n.hq, NULL, &e));
    json_t *many = json_array();
    for (int i = 0; i < 20000; i++)
        json_array_append_new(many, json_pack("{s:s}", "name", "category with a long enough name"));
    cs_err err = cs_engine_put_many(e, "service_category", many, NULL);
    json_decref(many);
    cs_engine_close(e);
    CHECK_OK(err);
    CHECK(sync_all(n.hq));
    uint64_t head = cs_fix_head_seq(n.hq);
    CHECK(serve_start(&n, NULL));
    CHECK(join(&n, 0, PASSWORD) == 0);
    /* join took everything; add more so that follow has a stream to be killed in */
    CHECK_OK(cs_engine_open(n.hq, NULL, &e));
    /* Long enough for kills to land inside it: a branch applies up to 16 segments of 1,024
     * events per transaction (net/node.c), so 80,000 events are five transactions or more. */
    for (int part = 0; err == CS_OK && part < 4; part++) {
        many = json_array();
        for (int i = 0; i < 20000; i++)
            json_array_append_new(many, json_pack("{s:s}", "name", "a second batch of categories"));
        err = cs_engine_put_many(e, "service_category", many, NULL);
        json_decref(many);
    }
    cs_engine_close(e);
    CHECK_OK(err);
    uint64_t total = cs_fix_head_seq(n.hq);
    int mid_stream = 0; /* kills that landed with part of the stream applied */
    uint64_t prev = head;
    for (int round = 0; round < 3; round++) {
        follow_start(&n, 0);
        uint64_t deadline = cs_run_now_ms() + WAIT_MS, at;
        while ((at = cs_fix_branch_cursor(n.dir[0])) <= prev && cs_run_now_ms() < deadline)
            cs_run_sleep_ms(1); /* killed as soon as a transaction more has landed */
        cs_run_stop(n.follow[0], SIGKILL, 5000);
        n.follow[0] = 0;
        at = cs_fix_branch_cursor(n.dir[0]);
        mid_stream += at > head && at < total;
        prev = at;
    }
    CHECK(mid_stream > 0);
    CHECK(sync_all(n.hq));
    head = cs_fix_head_seq(n.hq);
    follow_start(&n, 0);
    CHECK(wait_cursor(n.dir[0], head));
    CHECK(cs_run_stop(n.follow[0], SIGTERM, 5000) == 0);
    n.follow[0] = 0;
    CHECK(audit_branch_ok(&n, 0));
    json_t *cats = NULL;
    CHECK_OK(cs_engine_open(n.dir[0], NULL, &e));
    err = cs_engine_list(e, "service_category", false, &cats);
    cs_engine_close(e);
    CHECK_OK(err);
    size_t ncats = json_array_size(cats);
    json_decref(cats);
    CHECK(ncats == 100001); /* every category once: none skipped, none twice */
    net_free(&n);
}

/* SPEC 5: the server killed with SIGKILL and started again: branches reconnect and catch up. */
static void test_net_server_killed_branches_reconnect_and_catch_up(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    uint64_t service = 0;
    CHECK(net_make(&n, 2, &service));
    CHECK(serve_start(&n, NULL));
    for (unsigned i = 0; i < 2; i++) {
        CHECK(join(&n, i, PASSWORD) == 0);
        follow_start(&n, i);
    }
    char port[16];
    snprintf(port, sizeof(port), "%s", strrchr(n.addr, ':') + 1);
    cs_run_stop(n.serve, SIGKILL, 5000);
    n.serve = 0;
    uint64_t cat = put_json(n.hq, "service_category", NULL, "{\"name\":\"While down\"}");
    CHECK(cat != 0);
    CHECK(sync_all(n.hq));
    CHECK(serve_start(&n, port));
    uint64_t head = cs_fix_head_seq(n.hq);
    for (unsigned i = 0; i < 2; i++) {
        CHECK(wait_cursor(n.dir[i], head));
        CHECK(copy_of(n.dir[i], "service_category", cat) != 0);
    }
    net_free(&n);
}

/* R8: writes made while the head office is down wait in the durable outbox and arrive exactly
 * once when the branch reconnects. */
static void test_r8_offline_writes_arrive_once_after_reconnect(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    CHECK(net_up_one(&n));
    cs_run_stop(n.serve, SIGTERM, 5000);
    n.serve = 0;
    uint64_t ids[3];
    for (int i = 0; i < 3; i++) {
        ids[i] = put_json(n.dir[0], "customer", NULL, "{\"name\":\"Offline\"}");
        CHECK(ids[i] != 0);
    }
    CHECK(pull(&n, 0) == 4); /* SPEC 6: the head office cannot be reached */
    CHECK(serve_start(&n, NULL));
    const char *args[] = {"branch", "pull", "--data", n.dir[0], "--head", n.addr, NULL};
    CHECK(cmd(NULL, NULL, args) == 0);
    for (int i = 0; i < 3; i++) {
        CHECK(count_events(n.hq, "put", "customer", ids[i]) == 1);
        CHECK(item_int(n.hq, "customer", ids[i], "version") == 1);
    }
    CHECK(cmd(NULL, NULL, args) == 0); /* again: nothing is sent twice */
    CHECK(count_events(n.hq, "put", "customer", 0) == 3);
    net_free(&n);
}

static bool copy_dir(const char *from, const char *to)
{
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    mkdir(to, 0700);
    for (int i = 0; i < 2; i++) {
        char a[400], b[400], buf[65536];
        snprintf(a, sizeof(a), "%s/%s", from, files[i]);
        snprintf(b, sizeof(b), "%s/%s", to, files[i]);
        FILE *in = fopen(a, "rb"), *out = fopen(b, "wb");
        size_t k;
        bool ok = in && out;
        while (ok && (k = fread(buf, 1, sizeof(buf), in)) > 0)
            ok = fwrite(buf, 1, k, out) == k;
        if (in)
            fclose(in);
        if (out && fclose(out) != 0)
            ok = false;
        if (!ok)
            return false;
    }
    return true;
}

/* R8: the connection dropped after the head office appended a write but before the branch saw
 * the answer (made exactly so: the branch directory is put back to what it was before the
 * answer arrived). The resend gets the remembered answer; nothing is appended twice. */
static void test_r8_resend_after_lost_answer_appends_nothing(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    CHECK(net_up_one(&n));
    uint64_t id = put_json(n.dir[0], "customer", NULL, "{\"name\":\"Once\"}");
    CHECK(id != 0);
    char saved[400];
    snprintf(saved, sizeof(saved), "%s/saved", n.root);
    CHECK(copy_dir(n.dir[0], saved)); /* the outbox still holds the write here */
    CHECK(pull(&n, 0) == 0);
    CHECK(count_events(n.hq, "put", "customer", id) == 1);
    cs_test_rmtree(n.dir[0]);
    CHECK(rename(saved, n.dir[0]) == 0); /* as if the answer never came */
    CHECK(pull(&n, 0) == 0);
    CHECK(count_events(n.hq, "put", "customer", id) == 1);
    CHECK(item_int(n.dir[0], "customer", id, "version") == 1);
    net_free(&n);
}

/* R8: a write the head office refuses (version_conflict) is reported by put --wait and leaves
 * the outbox; it is not retried. */
static void test_r8_refused_write_is_reported_and_leaves_outbox(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    CHECK(net_up_one(&n));
    char idtxt[32];
    const char *put1[] = {"put",    "customer",          "--data", n.dir[0],
                          "--json", "{\"name\":\"V1\"}", "--wait", NULL};
    CHECK(cmd(NULL, NULL, put1) == 0);
    uint64_t id = 0;
    {
        char *out = NULL;
        const char *list[] = {"list", "customer", "--data", n.hq, "--json-out", NULL};
        CHECK(cmd(NULL, &out, list) == 0);
        json_t *j = json_loads(out, JSON_DISABLE_EOF_CHECK, NULL);
        id = (uint64_t)json_integer_value(json_object_get(j, "id"));
        json_decref(j);
        free(out);
    }
    CHECK(id != 0);
    snprintf(idtxt, sizeof(idtxt), "%llu", (unsigned long long)id);
    CHECK(put_json(n.hq, "customer", idtxt, "{\"name\":\"HQ edit\"}") == id); /* now v2 */
    const char *put2[] = {"put",    "customer", idtxt,
                          "--data", n.dir[0],   "--expect-version",
                          "1",      "--json",   "{\"name\":\"late\"}",
                          "--wait", NULL};
    cs_run_result r;
    CHECK(cs_run(&r, NULL, NULL, put2, CMD_MS));
    bool conflict = r.exit_code == 2 && strstr(r.err, "version_conflict") != NULL;
    free(r.out);
    free(r.err);
    CHECK(conflict);
    char *out = NULL;
    const char *pl[] = {"branch", "pull", "--data", n.dir[0], NULL};
    CHECK(cmd(NULL, &out, pl) == 0); /* nothing left to send: not retried */
    free(out);
    CHECK(item_int(n.hq, "customer", id, "version") == 2);
    CHECK(count_events(n.hq, "put", "customer", id) == 2);
    net_free(&n);
}

/* SPEC 5, 6: the handshake's refusals, each with its code; a refused join into a new directory
 * leaves no directory behind (bad input changes nothing). */
static void test_net_join_refusals_have_codes_and_leave_nothing(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    uint64_t service = 0;
    CHECK(net_make(&n, 3, &service));
    CHECK(serve_start(&n, NULL));
    CHECK(join_err(&n, 0, "wrong-password", "auth_failed") == 4); /* docs/cli.md exit codes */
    CHECK(access(n.dir[0], F_OK) != 0);
    n.shops[1] = 12345; /* no such shop */
    CHECK(join_err(&n, 1, PASSWORD, "not_in_network") == 2);
    CHECK(access(n.dir[1], F_OK) != 0);
    char b3[32];
    snprintf(b3, sizeof(b3), "%llu", (unsigned long long)n.shops[2]);
    const char *unlink_cmd[] = {"shop", "unlink", b3, "--data", n.hq, NULL};
    CHECK(cmd(NULL, NULL, unlink_cmd) == 0);
    CHECK(join_err(&n, 2, PASSWORD, "not_in_network") == 2); /* same answer as unknown */
    cs_run_stop(n.serve, SIGTERM, 5000);
    n.serve = 0;
    CHECK(join_err(&n, 0, PASSWORD, "network_error") == 4);
    CHECK(access(n.dir[0], F_OK) != 0);
    net_free(&n);
}

/* SPEC 5: a branch refuses a head office that keeps another log (log id), before it proves
 * anything or applies anything. */
static void test_net_branch_refuses_another_networks_head_office(void)
{
    static net a, b;
    uint64_t s1 = 0, s2 = 0;
    CHECK(net_make(&a, 1, &s1));
    CHECK(net_make(&b, 1, &s2));
    CHECK(serve_start(&a, NULL));
    CHECK(serve_start(&b, NULL));
    CHECK(join(&a, 0, PASSWORD) == 0);
    uint64_t before = cs_fix_branch_cursor(a.dir[0]);
    const char *args[] = {"branch", "pull", "--data", a.dir[0], "--head", b.addr, NULL};
    cs_run_result r;
    CHECK(cs_run(&r, NULL, NULL, args, CMD_MS));
    bool refused = r.exit_code == 2 && strstr(r.err, "not_in_network") != NULL;
    free(r.out);
    free(r.err);
    CHECK(refused);
    CHECK(cs_fix_branch_cursor(a.dir[0]) == before);
    net_free(&a);
    net_free(&b);
}

static bool log_has(const char *path, const char *needle);

/* Starts tests/optional_frame_proxy.py between a branch and n's server; its address in addr. */
static pid_t proxy_start(net *n, char *addr, size_t addr_len, const char *log_path)
{
    char script[600], ready[300];
    const char *src = getenv("CS_SRC");
    snprintf(script, sizeof(script), "%s/tests/optional_frame_proxy.py", src ? src : ".");
    snprintf(ready, sizeof(ready), "%s/proxy.ready", n->root);
    unlink(ready);
    pid_t pid = fork();
    if (pid == 0) {
        int out = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (out >= 0) {
            dup2(out, 1);
            dup2(out, 2);
        }
        execlp("python3", "python3", script, n->addr, ready, (char *)NULL);
        _exit(127);
    }
    uint64_t deadline = cs_run_now_ms() + WAIT_MS;
    while (pid > 0 && cs_run_now_ms() < deadline) {
        FILE *f = fopen(ready, "r");
        if (f) {
            bool ok = fgets(addr, (int)addr_len, f) != NULL;
            fclose(f);
            addr[strcspn(addr, "\n")] = '\0';
            return ok ? pid : (cs_run_stop(pid, SIGKILL, 5000), -1);
        }
        cs_run_sleep_ms(20);
    }
    if (pid > 0)
        cs_run_stop(pid, SIGKILL, 5000);
    return -1;
}

/* docs/protocol.md (Types: 0x80-0xff are optional, a receiver that does not know one skips it):
 * a branch pulling through a relay that puts a frame of type 0x80 before every frame of the head
 * office skips them all and catches up as it would without them. */
static void test_net_branch_skips_optional_frames(void)
{
    static net n;
    uint64_t svc = 0;
    CHECK(net_make(&n, 1, &svc));
    CHECK(serve_start(&n, NULL));
    CHECK(join(&n, 0, PASSWORD) == 0);
    CHECK(put_json(n.hq, "service_category", NULL, "{\"name\":\"Clinic\"}") != 0);
    CHECK(sync_all(n.hq));
    char addr[64] = "", log_path[300];
    snprintf(log_path, sizeof(log_path), "%s/proxy.log", n.root);
    pid_t proxy = proxy_start(&n, addr, sizeof(addr), log_path);
    CHECK(proxy > 0);
    const char *args[] = {"branch", "pull", "--data", n.dir[0], "--head", addr, NULL};
    cs_run_result r;
    bool ran = cs_run(&r, NULL, NULL, args, CMD_MS);
    int code = ran ? r.exit_code : -1;
    if (ran && code != 0)
        fprintf(stderr, "  pull through the relay exited %d: %s", code, r.err);
    if (ran) {
        free(r.out);
        free(r.err);
    }
    int proxy_code = cs_run_reap(proxy, cs_run_now_ms() + WAIT_MS); /* ends with the connection */
    CHECK(code == 0);
    CHECK(proxy_code == 0);
    CHECK(cs_fix_branch_cursor(n.dir[0]) == cs_fix_head_seq(n.hq));
    CHECK(log_has(log_path, "injected ") && !log_has(log_path, "injected 0\n"));
    net_free(&n);
}

static bool branch_unlinked(const char *dir)
{
    return cs_fix_branch_state(dir).unlinked;
}

/* R13 over the network: a branch that was offline when the head office unlinked it learns of
 * it at its next connection (it proves itself and streams up to its unlink), becomes a single
 * store with its copies kept, and does not connect again. */
static void test_r13_branch_offline_at_unlink_becomes_single_store_at_next_pull(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    CHECK(net_up_one(&n));
    char b1[32];
    snprintf(b1, sizeof(b1), "%llu", (unsigned long long)n.shops[0]);
    const char *unlink_cmd[] = {"shop", "unlink", b1, "--data", n.hq, NULL};
    CHECK(cmd(NULL, NULL, unlink_cmd) == 0);
    const char *pl[] = {"branch", "pull", "--data", n.dir[0], NULL};
    CHECK(cmd_err(pl, NULL, "unlinked this branch") == 2);
    CHECK(branch_unlinked(n.dir[0]));
    char *out = NULL;
    const char *list[] = {"list", "service", "--data", n.dir[0], "--json-out", NULL};
    CHECK(cmd(NULL, &out, list) == 0);
    bool kept = strstr(out, "\"detached_from\":{") != NULL; /* R13: nothing is lost */
    free(out);
    CHECK(kept);
    CHECK(cmd_err(pl, NULL, "single store") == 2); /* and it does not connect again */
    net_free(&n);
}

/* SPEC 5: a password changed at the head office makes the branch's stored keys useless; the
 * branch says so (join again) and a join with the new password works. */
static void test_net_password_changed_at_head_office_needs_join_again(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    CHECK(net_up_one(&n));
    char b1[32];
    snprintf(b1, sizeof(b1), "%llu", (unsigned long long)n.shops[0]);
    const char *pw[] = {"shop", "password", b1, "--data", n.hq, "--password-stdin", NULL};
    CHECK(cmd("another-secret-2\n", NULL, pw) == 0);
    const char *pl[] = {"branch", "pull", "--data", n.dir[0], NULL};
    CHECK(cmd_err(pl, NULL, "join again") == 4); /* auth_failed: docs/cli.md exit codes */
    CHECK(join(&n, 0, PASSWORD) == 4);
    CHECK(join(&n, 0, "another-secret-2") == 0);
    CHECK(pull(&n, 0) == 0);
    net_free(&n);
}

/* R10 over the network: a single store that joins keeps its own items as local items, and the
 * head office's catalog arrives beside them as copies. */
static void test_r10_single_store_joins_and_keeps_its_items(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    uint64_t service = 0;
    CHECK(net_make(&n, 1, &service));
    CHECK(serve_start(&n, NULL));
    const char *init[] = {"init", "--data", n.dir[0], "--name", "Corner shop", NULL};
    CHECK(cmd(NULL, NULL, init) == 0);
    uint64_t own = put_json(n.dir[0], "service_category", NULL, "{\"name\":\"Our own\"}");
    CHECK(own != 0);
    CHECK(join(&n, 0, PASSWORD) == 0);
    CHECK(item_int(n.dir[0], "service_category", own, "version") == 1);
    CHECK(copy_of(n.dir[0], "service", service) != 0);
    char *out = NULL;
    char ids[32];
    snprintf(ids, sizeof(ids), "%llu", (unsigned long long)own);
    const char *get[] = {"get", "service_category", ids, "--data", n.dir[0], "--json-out", NULL};
    CHECK(cmd(NULL, &out, get) == 0);
    bool local = strstr(out, "\"origin\":null") != NULL;
    free(out);
    CHECK(local);
    net_free(&n);
}

/* SPEC 5: one serve process per network: a second one on the same directory is refused and the
 * first keeps serving. */
static void test_net_second_serve_on_one_directory_is_refused(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    CHECK(net_up_one(&n));
    const char *again[] = {"serve", "--data", n.hq, "--listen", "127.0.0.1:0", NULL};
    CHECK(cmd_err(again, NULL, "another chainsync serve runs") == 2);
    CHECK(pull(&n, 0) == 0);
    net_free(&n);
}

static bool log_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    bool found = false;
    while (f && !found && fgets(line, sizeof(line), f))
        found = strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return found;
}

/* SPEC 5: heartbeats find a head office that stopped answering (a half-open connection: the
 * process is frozen, the socket still open); the follower drops it, and once the head office
 * answers again it reconnects and receives what was committed meanwhile. */
static void test_net_follower_detects_frozen_head_office_and_recovers(void)
{
    static net n; /* static: main frees what a failed CHECK left up (live_free_all) */
    CHECK(net_up_one(&n));
    follow_start(&n, 0);
    char flog[300];
    snprintf(flog, sizeof(flog), "%s/follow1.log", n.root);
    uint64_t until = cs_run_now_ms() + WAIT_MS; /* streaming first: then freeze the head office */
    while (!log_has(flog, "authenticated as shop") && cs_run_now_ms() < until)
        cs_run_sleep_ms(20);
    CHECK(log_has(flog, "authenticated as shop"));
    kill(n.serve, SIGSTOP);
    uint64_t deadline = cs_run_now_ms() + CS_NET_DEAD_MS_FOR_TEST + 5000;
    while (!log_has(flog, "nothing from the head office") && cs_run_now_ms() < deadline)
        cs_run_sleep_ms(100);
    bool detected = log_has(flog, "nothing from the head office");
    uint64_t cat = put_json(n.hq, "service_category", NULL, "{\"name\":\"While frozen\"}");
    kill(n.serve, SIGCONT);
    CHECK(detected);
    CHECK(cat != 0);
    CHECK(sync_all(n.hq));
    CHECK(wait_cursor(n.dir[0], cs_fix_head_seq(n.hq)));
    net_free(&n);
}

/* After each test: whatever a failed CHECK left up. */
static void live_free_all(void)
{
    for (int i = 0; i < LIVE_MAX; i++)
        if (live[i])
            net_free(live[i]);
}

#define RUN_NET(fn)                                                                                \
    do {                                                                                           \
        RUN(fn);                                                                                   \
        live_free_all();                                                                           \
    } while (0)

int main(void)
{
    if (!getenv("CS_BIN")) {
        fprintf(stderr, "CS_BIN is not set (run through ctest)\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    RUN_NET(test_r5_three_followers_change_at_sync_point_and_equal_audit_replay);
    RUN_NET(test_net_branch_killed_mid_stream_resumes_without_gap_or_repeat);
    RUN_NET(test_net_server_killed_branches_reconnect_and_catch_up);
    RUN_NET(test_r8_offline_writes_arrive_once_after_reconnect);
    RUN_NET(test_r8_resend_after_lost_answer_appends_nothing);
    RUN_NET(test_r8_refused_write_is_reported_and_leaves_outbox);
    RUN_NET(test_net_join_refusals_have_codes_and_leave_nothing);
    RUN_NET(test_net_branch_refuses_another_networks_head_office);
    RUN_NET(test_net_branch_skips_optional_frames);
    RUN_NET(test_r13_branch_offline_at_unlink_becomes_single_store_at_next_pull);
    RUN_NET(test_net_password_changed_at_head_office_needs_join_again);
    RUN_NET(test_r10_single_store_joins_and_keeps_its_items);
    RUN_NET(test_net_second_serve_on_one_directory_is_refused);
    RUN_NET(test_net_follower_detects_frozen_head_office_and_recovers);
    return cs_test_finish();
}
