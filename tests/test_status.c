/*
 * test_status.c: `chainsync status` and `chainsync shop list` as a monitoring check meets them
 * (issue 13, "Status"), against a real `serve` and real branch nodes on 127.0.0.1: the head
 * office's view (head, connected of linked, the branch furthest behind) and its exit code (0 in
 * step, 5 lagging past --max-lag), a branch's view (connected, cursor, lag, outbox, the last
 * connection error), and the per-branch figures of `shop list` in its table and JSON lines.
 * Every process started is stopped and reaped by pid; every wait is bounded.
 */
#include "harness.h"
#include "net_fixture.h"
#include "run.h"

#include <jansson.h>

#define PASSWORD "branch-secret-1"
#define WAIT_MS 15000u
#define CMD_MS 30000u
#define EXIT_LAGGING 5 /* tools/cli.h CS_CLI_EXIT_LAGGING, docs/cli.md "status" */

typedef struct net {
    char *root;
    char hq[300], addr[64];
    char dir[2][300];
    uint64_t shops[2];
    pid_t serve, follow[2];
} net;

static net the_net; /* stopped and removed by main after the tests, whatever they did */

/* Exit code; stdout into *out (may be NULL). */
static int cmd(const char *input, char **out, const char *const *args)
{
    return cs_run_code(input, args, out, NULL, CMD_MS, true);
}

static uint64_t cmd_u64(const char *input, const char *key, const char *const *args)
{
    return cs_fix_cmd_u64(input, key, args, CMD_MS);
}

/* `status --json-out` of dir with --max-lag max: the object (or NULL) and the exit code. */
static json_t *status(const char *dir, const char *max, int *rc)
{
    const char *args[] = {"status", "--data", dir, "--json-out", "--max-lag", max, NULL};
    char *out = NULL;
    *rc = cmd(NULL, &out, args);
    json_t *j = out ? json_loads(out, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
    free(out);
    return j;
}

static uint64_t ju(const json_t *o, const char *key)
{
    return (uint64_t)json_integer_value(json_object_get(o, key));
}

static uint64_t put_customer(const char *dir)
{
    const char *a[] = {"put",    "customer",           "--data",     dir,
                       "--json", "{\"name\":\"Ana\"}", "--json-out", NULL};
    return cmd_u64(NULL, "id", a);
}

static uint64_t put_category(const char *dir, const char *name)
{
    char json[64];
    snprintf(json, sizeof(json), "{\"name\":\"%s\"}", name);
    const char *a[] = {"put", "service_category", "--data", dir, "--json",
                       json,  "--json-out",       NULL};
    return cmd_u64(NULL, "seq", a);
}

static bool serve_start(net *n)
{
    char ready[300], log[300];
    snprintf(ready, sizeof(ready), "%s/ready", n->root);
    snprintf(log, sizeof(log), "%s/serve.log", n->root);
    return cs_fix_serve_start(&n->serve, n->hq, NULL, ready, log, n->addr, sizeof(n->addr),
                              WAIT_MS);
}

/* A head office with two branches, both joined; serve running. */
static bool net_make(net *n)
{
    memset(n, 0, sizeof(*n));
    if (!(n->root = cs_test_tmpdir("status")))
        return false;
    snprintf(n->hq, sizeof(n->hq), "%s/hq", n->root);
    const char *init[] = {"init", "--data", n->hq, "--name", "HQ", NULL};
    const char *create[] = {"network", "create", "--data", n->hq, "--name", "Pets", NULL};
    if (cmd(NULL, NULL, init) != 0 || cmd(NULL, NULL, create) != 0 || !put_category(n->hq, "G"))
        return false;
    if (!cs_fix_shops_add(n->hq, 2, PASSWORD, n->shops, CMD_MS))
        return false;
    for (unsigned i = 0; i < 2; i++)
        snprintf(n->dir[i], sizeof(n->dir[i]), "%s/b%u", n->root, i + 1);
    if (!serve_start(n))
        return false;
    for (unsigned i = 0; i < 2; i++) {
        char shop[32];
        snprintf(shop, sizeof(shop), "%llu", (unsigned long long)n->shops[i]);
        const char *join[] = {"branch", "join",   "--data", n->dir[i],          "--head",
                              n->addr,  "--shop", shop,     "--password-stdin", NULL};
        if (cmd(PASSWORD "\n", NULL, join) != 0)
            return false;
    }
    return true;
}

static void follow_start(net *n, unsigned i)
{
    char log[300];
    snprintf(log, sizeof(log), "%s/follow%u.log", n->root, i + 1);
    const char *args[] = {"branch", "follow", "--data", n->dir[i], "--head", n->addr, NULL};
    n->follow[i] = cs_run_spawn(args, log);
}

static void net_free(net *n)
{
    for (unsigned i = 0; i < 2; i++)
        if (n->follow[i] > 0)
            cs_run_stop(n->follow[i], SIGTERM, 5000);
    if (n->serve > 0)
        cs_run_stop(n->serve, SIGTERM, 5000);
    cs_test_tmpdir_free(n->root);
    memset(n, 0, sizeof(*n));
}

/* Polls the head office's status until `pred` holds (serve records once a second). */
static json_t *wait_head(const char *hq, const char *max, bool (*pred)(const json_t *, int),
                         int *rc)
{
    for (uint64_t deadline = cs_run_now_ms() + WAIT_MS; cs_run_now_ms() < deadline;
         cs_run_sleep_ms(100)) {
        json_t *j = status(hq, max, rc);
        if (j && pred(j, *rc))
            return j;
        json_decref(j);
    }
    return status(hq, max, rc);
}

static bool one_connected(const json_t *j, int rc)
{
    (void)rc;
    return ju(j, "connected") == 1;
}

static uint64_t in_step_shop; /* the branch b1_in_step waits for */

/* The following branch's record has caught up: the one behind is the other. */
static bool b1_in_step(const json_t *j, int rc)
{
    (void)rc;
    return ju(json_object_get(j, "most_lagging"), "id") != in_step_shop;
}

/* Issue 13 Status: with B1 following and B2 joined but stopped, the head office reports 1 of 2
 * connected, B2 as the branch furthest behind by exactly the events it lacks, exit 5 past
 * --max-lag and 0 within it. */
static void test_status_head_lagging_exit_code(void)
{
    net *n = &the_net;
    CHECK(net_make(n));
    follow_start(n, 0);
    CHECK(n->follow[0] > 0);
    int rc = -1;
    json_t *j = wait_head(n->hq, "0", one_connected, &rc);
    CHECK(j && ju(j, "connected") == 1 && ju(j, "branches") == 2);
    CHECK(json_is_true(json_object_get(j, "serving")));
    json_decref(j);
    /* Three events B2 does not get; B1 does. */
    uint64_t seq = 0;
    for (int i = 0; i < 3; i++)
        seq = put_category(n->hq, "more");
    CHECK(seq > 0);
    in_step_shop = n->shops[0];
    j = wait_head(n->hq, "0", b1_in_step, &rc);
    CHECK(j);
    CHECK(rc == EXIT_LAGGING);
    CHECK(ju(j, "head_seq") == seq);
    const json_t *w = json_object_get(j, "most_lagging");
    CHECK(ju(w, "id") == n->shops[1]);
    uint64_t b2_cursor = 0;
    {
        json_t *b = status(n->dir[1], "0", &rc);
        b2_cursor = ju(b, "cursor");
        json_decref(b);
    }
    CHECK(b2_cursor > 0 && ju(w, "lag") == seq - b2_cursor);
    CHECK(json_is_false(json_object_get(j, "in_step")));
    json_decref(j);
    char big[32];
    snprintf(big, sizeof(big), "%llu", (unsigned long long)(seq - b2_cursor));
    j = status(n->hq, big, &rc);
    CHECK(j && rc == 0 && json_is_true(json_object_get(j, "in_step")));
    json_decref(j);
    /* The human form says the same. */
    const char *human[] = {"status", "--data", n->hq, NULL};
    char *out = NULL;
    CHECK(cmd(NULL, &out, human) == EXIT_LAGGING);
    bool says =
        out && strstr(out, "1 of 2 connected") && strstr(out, "\"B2\"") && strstr(out, "LAGGING");
    if (!says)
        fprintf(stderr, "  status printed:\n%s", out ? out : "");
    free(out);
    CHECK(says);
}

/* Issue 13 Status (a branch): a following branch is connected, at the head, lag 0, exit 0; a
 * stopped one with a shared record written offline shows it in its outbox, and after a pull
 * that cannot reach the head office, the connection error. */
static void test_status_branch_view(void)
{
    net *n = &the_net;
    CHECK(n->serve > 0 && n->follow[0] > 0);
    uint64_t seq = put_category(n->hq, "live");
    CHECK(seq > 0);
    int rc = -1;
    json_t *j = NULL;
    for (uint64_t deadline = cs_run_now_ms() + WAIT_MS; cs_run_now_ms() < deadline;
         cs_run_sleep_ms(100)) {
        json_decref(j);
        j = status(n->dir[0], "0", &rc);
        if (j && ju(j, "cursor") >= seq && json_is_true(json_object_get(j, "connected")))
            break;
    }
    CHECK(j && rc == 0);
    CHECK(json_is_true(json_object_get(j, "connected")) && ju(j, "cursor") == seq);
    CHECK(ju(j, "lag") == 0 && ju(j, "shop") == n->shops[0]);
    CHECK(strcmp(json_string_value(json_object_get(j, "head")), n->addr) == 0);
    json_decref(j);

    CHECK(put_customer(n->dir[1]) > 0); /* B2 offline: the write waits in its outbox (R8) */
    j = status(n->dir[1], "0", &rc);
    CHECK(j && rc == 0);
    CHECK(json_is_false(json_object_get(j, "connected")) && ju(j, "outbox") == 1);
    CHECK(json_is_false(json_object_get(j, "node_running")));
    json_decref(j);

    cs_run_stop(n->serve, SIGTERM, 5000);
    n->serve = 0;
    const char *pull[] = {"branch", "pull", "--data", n->dir[1], NULL};
    CHECK(cmd(NULL, NULL, pull) == 4);
    j = status(n->dir[1], "0", &rc);
    CHECK(j);
    const char *err = json_string_value(json_object_get(j, "last_error"));
    CHECK(err && strstr(err, "network_error") && ju(j, "outbox") == 1);
    json_decref(j);
}

/* Issue 13 Status: `shop list` shows each branch's cursor, lag and last contact, in the table and
 * in JSON lines, agreeing with status. */
static void test_shop_list_figures(void)
{
    net *n = &the_net;
    const char *js[] = {"shop", "list", "--data", n->hq, "--json-out", NULL};
    char *out = NULL;
    CHECK(cmd(NULL, &out, js) == 0 && out);
    int branches = 0;
    bool figures = true;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *row = json_loads(line, 0, NULL);
        const char *role = json_string_value(json_object_get(row, "role"));
        if (role && strcmp(role, "branch") == 0) {
            branches++;
            figures = figures && json_is_integer(json_object_get(row, "cursor")) &&
                      json_is_integer(json_object_get(row, "lag")) &&
                      json_is_string(json_object_get(row, "last_seen"));
        }
        json_decref(row);
    }
    free(out);
    CHECK(branches == 2 && figures);
    const char *table[] = {"shop", "list", "--data", n->hq, NULL};
    out = NULL;
    CHECK(cmd(NULL, &out, table) == 0 && out);
    bool ok = strstr(out, "cursor") && strstr(out, "lag") && strstr(out, "last_seen") &&
              strstr(out, "B1") && strstr(out, "B2");
    free(out);
    CHECK(ok);
}

/* The branch row of `shop list --json-out` at the head office whose id is shop (NULL if none). */
static json_t *shop_row(const net *n, uint64_t shop)
{
    const char *js[] = {"shop", "list", "--data", n->hq, "--json-out", NULL};
    char *out = NULL;
    json_t *row = NULL;
    if (cmd(NULL, &out, js) == 0 && out)
        for (char *line = strtok(out, "\n"); line && !row; line = strtok(NULL, "\n")) {
            json_t *o = json_loads(line, 0, NULL);
            if (ju(o, "id") == shop)
                row = o;
            else
                json_decref(o);
        }
    free(out);
    return row;
}

static uint64_t drained_shop; /* the branch b2_drained waits for */

/* The head office has heard from the branch since serve came back: connected, outbox 0. */
static bool b2_drained(const json_t *j, int rc)
{
    (void)j;
    (void)rc;
    json_t *row = shop_row(&the_net, drained_shop);
    bool ok = json_is_true(json_object_get(row, "connected")) &&
              json_is_integer(json_object_get(row, "outbox")) && ju(row, "outbox") == 0;
    json_decref(row);
    return ok;
}

/* Issue 13 Status, "the outbox backlog seen": the head office shows each branch's outbox depth
 * as the branch last reported it (PING and ACK carry it). With serve stopped, B2's writes wait
 * in its outbox and the head office cannot see them: its figure for B2 stays what B2 said
 * before (0), not 3. With serve back and B2 following, the outbox drains (R8: each write
 * answered, the head office's log has them) and the head office shows 0 for a connected B2, in
 * shop list (table and JSON lines), status and its --json-out. The non-zero figure at the head
 * office is checked with the protocol's own client (test_protocol), which reports a depth and
 * keeps it. */
static void test_status_head_outbox_backlog(void)
{
    net *n = &the_net;
    CHECK(n->serve == 0 && n->follow[1] == 0); /* left so by test_status_branch_view */
    if (n->follow[0] > 0)
        cs_run_stop(n->follow[0], SIGTERM, 5000);
    n->follow[0] = 0;
    CHECK(put_customer(n->dir[1]) > 0 && put_customer(n->dir[1]) > 0);
    int rc = -1;
    json_t *j = status(n->dir[1], "1000000", &rc);
    CHECK(j && ju(j, "outbox") == 3);
    json_decref(j);
    json_t *row = shop_row(n, n->shops[1]);
    CHECK(row && json_is_integer(json_object_get(row, "outbox")) && ju(row, "outbox") == 0);
    json_decref(row);
    j = status(n->hq, "1000000", &rc);
    const json_t *ob = json_object_get(j, "outbox");
    CHECK(j && ju(ob, "total") == 0 && ju(ob, "reported") == 2);
    json_decref(j);
    uint64_t head_before = 0;
    {
        j = status(n->hq, "1000000", &rc);
        head_before = ju(j, "head_seq");
        json_decref(j);
    }

    CHECK(serve_start(n));
    follow_start(n, 1);
    CHECK(n->follow[1] > 0);
    for (uint64_t deadline = cs_run_now_ms() + WAIT_MS; cs_run_now_ms() < deadline;
         cs_run_sleep_ms(100)) {
        j = status(n->dir[1], "1000000", &rc);
        bool drained = j && ju(j, "outbox") == 0;
        json_decref(j);
        if (drained)
            break;
    }
    j = status(n->dir[1], "1000000", &rc);
    CHECK(j && ju(j, "outbox") == 0 && ju(j, "rejected") == 0); /* all three answered ok */
    json_decref(j);
    drained_shop = n->shops[1];
    j = wait_head(n->hq, "1000000", b2_drained, &rc);
    CHECK(j && b2_drained(j, rc));
    ob = json_object_get(j, "outbox");
    CHECK(ju(ob, "total") == 0 && ju(ob, "reported") == 2);
    CHECK(ju(j, "head_seq") >= head_before + 3); /* the three writes are in the head's log */
    json_decref(j);
    const char *human[] = {"status", "--data", n->hq, "--max-lag", "1000000", NULL};
    char *out = NULL;
    CHECK(cmd(NULL, &out, human) == 0);
    bool says = out && strstr(out, "outbox:      0 writes queued at branches (2 of 2 reported)");
    if (!says)
        fprintf(stderr, "  status printed:\n%s", out ? out : "");
    free(out);
    CHECK(says);
    const char *table[] = {"shop", "list", "--data", n->hq, NULL};
    out = NULL;
    CHECK(cmd(NULL, &out, table) == 0 && out && strstr(out, "outbox"));
    free(out);
}

/* status on a directory that holds no store refuses (not_found) and creates nothing. */
static void test_status_no_store(void)
{
    char *d = cs_test_tmpdir("status-none");
    CHECK(d);
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/nothing", d);
    const char *args[] = {"status", "--data", sub, NULL};
    int rc = cmd(NULL, NULL, args);
    bool absent = access(sub, F_OK) != 0;
    cs_test_rmtree(d);
    free(d);
    CHECK(rc == 2 && absent);
}

int main(void)
{
    RUN(test_status_head_lagging_exit_code);
    RUN(test_status_branch_view);
    RUN(test_shop_list_figures);
    RUN(test_status_head_outbox_backlog);
    net_free(&the_net);
    RUN(test_status_no_store);
    return cs_test_finish();
}
