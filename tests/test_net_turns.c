/*
 * test_net_turns.c: many branch nodes sharing one libuv loop (cs_node_turns: docs/design.md,
 * "Taking turns"), each with its own LMDB environment, against a real `chainsync serve` on
 * 127.0.0.1, as the fan-out benchmark and any host of many branches runs them.
 *
 * What is checked: six branches starting at once, two catch-up slots between them, all reach the
 * head office's head and each holds what the audit's replay says it should (R2, R5, R14); none
 * is dropped or reconnects while it waits its turn (SPEC 5: a slow branch is paused and
 * resumed); a branch catches up in at most two transactions (a catch-up of 13 segments, applied
 * as they came, was 5 or more), which is what keeps what 1,000 branches write bounded.
 */
#include "net/net.h"
#include "projections/projection.h"
#include "harness.h"
#include "net_fixture.h"
#include "run.h"

#include <jansson.h>

#define PASSWORD "turns-secret-1"
#define BRANCHES 6u
#define ITEMS 6000u
#define DESC_BYTES 2000u
#define CMD_MS 30000u
#define RUN_MS 120000u

typedef struct tnode {
    cs_branch *b;
    cs_node *n;
    cs_node_options o;
    char dir[300];
    uint64_t batches, last_recv_ms, segments, reconnects;
    cs_err result;
    bool done, stopping;
} tnode;

static unsigned left;
static pid_t serve; /* stopped by main whatever the test's CHECKs did */
static char *root;

/* Every segment applied, with the time its transaction began: one value per transaction. */
static void on_segment(void *arg, const uint8_t *seg, size_t len, uint64_t recv_ms)
{
    tnode *t = arg;
    (void)seg, (void)len;
    t->segments++;
    if (recv_ms != t->last_recv_ms || t->batches == 0)
        t->batches++;
    t->last_recv_ms = recv_ms;
}

static void on_done(cs_node *n, cs_err result, void *arg)
{
    tnode *t = arg;
    cs_node_counters c;
    cs_node_counters_get(n, &c);
    t->reconnects = c.reconnects;
    t->result = result;
    t->done = true;
    if (result != CS_OK)
        fprintf(stderr, "  %s: %s: %s\n", t->dir, cs_err_name(result), cs_node_errmsg(n));
    cs_node_free(n);
    t->n = NULL;
    left--;
}

static void on_deadline(uv_timer_t *timer)
{
    tnode *ts = timer->data;
    for (unsigned i = 0; i < BRANCHES; i++)
        if (ts[i].n)
            cs_node_stop(ts[i].n);
}

/* ITEMS service categories with DESC_BYTES of description each: 13 segments of about 1 MiB. */
static bool bulk_put(const char *dir, uint64_t *head)
{
    cs_engine *e = NULL;
    if (cs_engine_open(dir, NULL, &e) != CS_OK)
        return false;
    bool good = true;
    char *desc = malloc(DESC_BYTES + 1);
    cs_write_result *res = malloc(500 * sizeof(*res));
    good = desc && res;
    for (unsigned done = 0; good && done < ITEMS; done += 500) {
        json_t *arr = json_array();
        for (unsigned i = 0; i < 500; i++) {
            char name[32];
            snprintf(name, sizeof(name), "cat-%u", done + i);
            for (size_t j = 0; j < DESC_BYTES; j++)
                desc[j] = (char)('a' + (j * 7 + done + i) % 26);
            desc[DESC_BYTES] = '\0';
            json_array_append_new(arr, json_pack("{s:s, s:s}", "name", name, "description", desc));
        }
        good = cs_engine_put_many(e, "service_category", arr, res) == CS_OK;
        json_decref(arr);
        if (good)
            *head = res[499].seq;
    }
    free(res);
    free(desc);
    cs_engine_close(e);
    return good;
}

static void turns_six_branches_share_a_loop_and_all_catch_up(void)
{
    root = cs_test_tmpdir("turns");
    CHECK(root);
    char hq[300], ready[300], slog[300], addr[64];
    snprintf(hq, sizeof(hq), "%s/hq", root);
    snprintf(ready, sizeof(ready), "%s/ready", root);
    snprintf(slog, sizeof(slog), "%s/serve.log", root);
    uint64_t shops[BRANCHES], head = 0;
    tnode ts[BRANCHES];
    memset(ts, 0, sizeof(ts));
    const char *init[] = {"init", "--data", hq, "--name", "HQ", NULL};
    const char *create[] = {"network", "create", "--data", hq, "--name", "Pets", NULL};
    bool up = cs_run_code(NULL, init, NULL, NULL, CMD_MS, true) == 0 &&
              cs_run_code(NULL, create, NULL, NULL, CMD_MS, true) == 0 &&
              cs_fix_shops_add(hq, BRANCHES, PASSWORD, shops, CMD_MS) &&
              cs_fix_serve_start(&serve, hq, NULL, ready, slog, addr, sizeof(addr), 15000);
    for (unsigned i = 0; up && i < BRANCHES; i++) {
        snprintf(ts[i].dir, sizeof(ts[i].dir), "%s/b%u", root, i + 1);
        char shop[32];
        snprintf(shop, sizeof(shop), "%llu", (unsigned long long)shops[i]);
        const char *join[] = {"branch", "join",   "--data", ts[i].dir,          "--head",
                              addr,     "--shop", shop,     "--password-stdin", NULL};
        up = cs_run_code(PASSWORD "\n", join, NULL, NULL, CMD_MS, true) == 0;
    }
    up = up && bulk_put(hq, &head);
    CHECK(up);

    /* All six on one loop, starting at once, as a host of many branches runs them. */
    uv_loop_t loop;
    CHECK(uv_loop_init(&loop) == 0);
    cs_node_turns *turns = NULL;
    CHECK_OK(cs_node_turns_new(25, &turns));
    FILE *devnull = fopen("/dev/null", "w");
    left = 0;
    for (unsigned i = 0; i < BRANCHES; i++) {
        char msg[320];
        ts[i].o = (cs_node_options){.mode = CS_NODE_FOLLOW,
                                    .head = addr,
                                    .log = devnull,
                                    .no_watch = true,
                                    .turns = turns,
                                    .on_segment = on_segment,
                                    .hook_arg = &ts[i]};
        CHECK_OK(cs_branch_open(ts[i].dir, NULL, &ts[i].b));
        CHECK_OK(cs_node_start(&loop, ts[i].b, ts[i].dir, &ts[i].o, on_done, &ts[i], &ts[i].n, msg,
                               sizeof(msg)));
        left++;
    }
    /* Followers run until stopped: each is stopped once its cursor is at the head. */
    uv_timer_t deadline;
    uv_timer_init(&loop, &deadline);
    deadline.data = ts;
    uv_timer_start(&deadline, on_deadline, RUN_MS, 0);
    uint64_t t0 = cs_run_now_ms();
    while (left && cs_run_now_ms() - t0 < RUN_MS + 10000) {
        uv_run(&loop, UV_RUN_ONCE);
        for (unsigned i = 0; i < BRANCHES; i++) {
            uint64_t cur = 0;
            if (ts[i].n && !ts[i].stopping && cs_node_cursor(ts[i].n, &cur) == CS_OK &&
                cur >= head) {
                ts[i].stopping = true;
                cs_node_stop(ts[i].n);
            }
        }
    }
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
    cs_node_turns_free(turns);
    if (devnull)
        fclose(devnull);
    printf("  %u branches at event %llu in %llu ms\n", BRANCHES, (unsigned long long)head,
           (unsigned long long)(cs_run_now_ms() - t0));
    for (unsigned i = 0; i < BRANCHES; i++) {
        cs_branch_close(ts[i].b);
        printf("  %s: %llu segments in %llu transactions, %llu reconnections\n",
               strrchr(ts[i].dir, '/') + 1, (unsigned long long)ts[i].segments,
               (unsigned long long)ts[i].batches, (unsigned long long)ts[i].reconnects);
        CHECK(ts[i].done && ts[i].result == CS_OK);
        CHECK(cs_fix_branch_cursor(ts[i].dir) == head);
        CHECK(ts[i].reconnects == 0);
        CHECK(ts[i].segments >= 10);
        CHECK(ts[i].batches <= 2);
        const char *verify[] = {"audit", "verify", "--data", hq, "--branch", ts[i].dir, NULL};
        CHECK(cs_run_code(NULL, verify, NULL, NULL, CMD_MS, true) == 0);
    }
}

int main(void)
{
    if (!getenv("CS_BIN")) {
        fprintf(stderr, "CS_BIN is not set (run through ctest)\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    RUN(turns_six_branches_share_a_loop_and_all_catch_up);
    if (serve > 0)
        cs_run_stop(serve, SIGTERM, 5000);
    cs_test_tmpdir_free(root);
    return cs_test_finish();
}
