/*
 * test_compact.c: retention that never strands a branch (issue 14), with real processes on
 * 127.0.0.1: `chainsync serve`, `branch join` and `branch pull`, and `log compact` run beside
 * the server from another process. Every process a test starts is stopped and reaped by pid;
 * every wait is bounded.
 *
 * What is checked: a cut past a linked branch's cursor is refused (forbidden) naming each
 * branch behind, and changes nothing; with --force the log starts at the cut, `chainsync log`
 * and `audit verify` still pass (the chain continues from the snapshot), an audit question
 * before the start is refused (not_found) saying the events were cut, and one from the
 * snapshot on is answered; a branch behind the cut, a linked branch that never connected and a
 * branch added after the cut are all bootstrapped over the protocol and then follow, and each
 * one's digest equals that of a branch that replayed the uncut log (the export of the log taken
 * before the cut, then the events after it); a second cut (the snapshot of a cut log) does too.
 */
#include "harness.h"
#include "net_fixture.h"
#include "projections/projection.h"
#include "run.h"

#include <jansson.h>
#include <signal.h>

#define PASSWORD "branch-secret-1"
#define WAIT_MS 15000u
#define CMD_MS 30000u

typedef struct net {
    char *root;
    char hq[300];
    char addr[64];
    char ready[300];
    char serve_log[300];
    pid_t serve;
    uint64_t shops[3];
    char dir[3][300];
    uint64_t category;
} net;

static net *live; /* what a failed CHECK left up: main stops and removes it */

static void net_free(net *n)
{
    if (n->serve > 0)
        cs_run_stop(n->serve, SIGTERM, 5000);
    cs_test_tmpdir_free(n->root);
    memset(n, 0, sizeof(*n));
    live = NULL;
}

static int cmd(const char *input, char **out, const char *const *args)
{
    return cs_run_code(input, args, out, NULL, CMD_MS, true);
}

/* The command must exit want_exit with `error: code: ` and its stderr must hold every word. */
static bool refused(const char *const *args, const char *code, int want_exit,
                    const char *const *words)
{
    cs_run_result r;
    if (!cs_run(&r, NULL, NULL, args, CMD_MS))
        return false;
    bool ok = cs_run_refused(&r, code, want_exit);
    for (size_t i = 0; ok && words && words[i]; i++)
        if (!strstr(r.err, words[i])) {
            fprintf(stderr, "  stderr lacks '%s': %s", words[i], r.err);
            ok = false;
        }
    cs_run_free(&r);
    return ok;
}

static uint64_t put_service(net *n, unsigned i, unsigned price)
{
    char json[200];
    snprintf(json, sizeof(json),
             "{\"name\":\"S%u\",\"category\":%llu,\"price_table\":[{\"tier\":\"a\",\"price_cents\":"
             "%u}]}",
             i, (unsigned long long)n->category, price);
    const char *args[] = {"put", "--data", n->hq, "service", "--json", json, "--json-out", NULL};
    return cs_fix_cmd_u64(NULL, "id", args, CMD_MS);
}

static bool update_service(net *n, uint64_t id, unsigned i, unsigned price)
{
    char json[200], ids[32];
    snprintf(json, sizeof(json),
             "{\"name\":\"S%u\",\"category\":%llu,\"price_table\":[{\"tier\":\"a\",\"price_cents\":"
             "%u}]}",
             i, (unsigned long long)n->category, price);
    snprintf(ids, sizeof(ids), "%llu", (unsigned long long)id);
    const char *args[] = {"put", "--data", n->hq, "service", ids, "--json", json, NULL};
    return cmd(NULL, NULL, args) == 0;
}

static bool sync_all(net *n)
{
    const char *args[] = {"sync", "--data", n->hq, NULL};
    return cmd(NULL, NULL, args) == 0;
}

/* A head office with shops B1 and B2 (n->shops[0..1]), a category and `services` services. */
static bool net_make(net *n, unsigned services, uint64_t *first_service)
{
    live = n;
    if (!(n->root = cs_test_tmpdir("compact")))
        return false;
    snprintf(n->hq, sizeof(n->hq), "%s/hq", n->root);
    snprintf(n->ready, sizeof(n->ready), "%s/ready", n->root);
    snprintf(n->serve_log, sizeof(n->serve_log), "%s/serve.log", n->root);
    for (unsigned i = 0; i < 3; i++)
        snprintf(n->dir[i], sizeof(n->dir[i]), "%s/b%u", n->root, i + 1);
    const char *init[] = {"init", "--data", n->hq, "--name", "HQ", NULL};
    const char *net_create[] = {"network", "create", "--data", n->hq, "--name", "Net", NULL};
    const char *cat[] = {
        "put",        "--data", n->hq, "service_category", "--json", "{\"name\":\"Cat\"}",
        "--json-out", NULL};
    if (cmd(NULL, NULL, init) || cmd(NULL, NULL, net_create) ||
        !cs_fix_shops_add(n->hq, 2, PASSWORD, n->shops, CMD_MS) ||
        !(n->category = cs_fix_cmd_u64(NULL, "id", cat, CMD_MS)))
        return false;
    for (unsigned i = 0; i < services; i++) {
        uint64_t id = put_service(n, i + 1, 100 + i);
        if (!id)
            return false;
        if (i == 0 && first_service)
            *first_service = id;
    }
    return cs_fix_serve_start(&n->serve, n->hq, NULL, n->ready, n->serve_log, n->addr,
                              sizeof(n->addr), WAIT_MS);
}

static int branch_run(net *n, unsigned i, const char *what)
{
    char shop[32];
    snprintf(shop, sizeof(shop), "%llu", (unsigned long long)n->shops[i]);
    if (strcmp(what, "join") == 0) {
        const char *args[] = {"branch", "join",   "--data", n->dir[i],          "--head",
                              n->addr,  "--shop", shop,     "--password-stdin", NULL};
        return cmd(PASSWORD "\n", NULL, args);
    }
    const char *args[] = {"branch", "pull", "--data", n->dir[i], "--head", n->addr, NULL};
    return cmd(NULL, NULL, args);
}

/* Waits until serve has recorded a cursor for shop i (it flushes statuses once a second). */
static bool wait_cursor_recorded(net *n, unsigned i)
{
    const char *args[] = {"shop", "list", "--data", n->hq, "--json-out", NULL};
    uint64_t deadline = cs_run_now_ms() + WAIT_MS;
    while (cs_run_now_ms() < deadline) {
        char *out = NULL;
        bool seen = false;
        if (cmd(NULL, &out, args) == 0) {
            for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
                json_t *j = json_loads(line, 0, NULL);
                if ((uint64_t)json_integer_value(json_object_get(j, "id")) == n->shops[i] &&
                    json_is_integer(json_object_get(j, "cursor")))
                    seen = true;
                json_decref(j);
            }
        }
        free(out);
        if (seen)
            return true;
        cs_run_sleep_ms(100);
    }
    return false;
}

static bool log_export(const char *hq, uint64_t from, const char *path)
{
    char f[32];
    snprintf(f, sizeof(f), "%llu", (unsigned long long)from);
    const char *args[] = {"log", "export", "--data", hq, "--from", f, "--out", path, NULL};
    return cmd(NULL, NULL, args) == 0;
}

static bool compact(net *n, uint64_t before, bool force)
{
    char b[32];
    snprintf(b, sizeof(b), "%llu", (unsigned long long)before);
    const char *args[] = {
        "log", "compact", "--data", n->hq, "--before", b, force ? "--force" : NULL, NULL};
    return cmd(NULL, NULL, args) == 0;
}

/* The first sequence `chainsync log` prints (every record verified as it is read). */
static uint64_t log_first(const char *hq)
{
    const char *args[] = {"log", "--data", hq, "--limit", "1", NULL};
    char *out = NULL;
    uint64_t seq = 0;
    if (cmd(NULL, &out, args) == 0) {
        json_t *j = json_loads(out, JSON_DISABLE_EOF_CHECK, NULL);
        seq = (uint64_t)json_integer_value(json_object_get(j, "seq"));
        json_decref(j);
    }
    free(out);
    return seq;
}

static bool audit_verify(net *n, const char *branch_dir)
{
    const char *args[] = {"audit", "verify", "--data", n->hq, "--branch", branch_dir, NULL};
    if (!branch_dir)
        args[4] = NULL;
    return cmd(NULL, NULL, args) == 0;
}

/* tests/storage_reader.py (written from docs/storage.md alone) verifies the cut log from its
 * start, the time index included, and says where it starts. */
static bool doc_reader_ok(const char *hq, uint64_t start)
{
    const char *src = getenv("CS_SRC");
    char script[400], want[64];
    snprintf(script, sizeof(script), "%s/tests/storage_reader.py", src ? src : "..");
    snprintf(want, sizeof(want), "(cut before %llu)", (unsigned long long)start);
    const char *argv[] = {"/usr/bin/python3", script, "--times", hq, NULL};
    cs_run_result r;
    if (!cs_run_prog(&r, NULL, argv, CMD_MS))
        return false;
    bool ok = r.exit_code == 0 && strncmp(r.out, "ok ", 3) == 0 && strstr(r.out, want);
    if (!ok)
        fprintf(stderr, "  storage_reader.py: exit %d: %s%s", r.exit_code, r.out, r.err);
    cs_run_free(&r);
    return ok;
}

static uint64_t branch_digest(const char *dir)
{
    cs_branch *b = NULL;
    uint64_t d = 0;
    if (cs_branch_open(dir, NULL, &b) == CS_OK && cs_branch_digest(b, &d) != CS_OK)
        d = 0;
    cs_branch_close(b);
    return d;
}

/* Appends file `from` to the open file `to`. */
static bool file_append(FILE *to, const char *from)
{
    FILE *f = fopen(from, "rb");
    if (!f)
        return false;
    char buf[65536];
    size_t n;
    bool ok = true;
    while (ok && (n = fread(buf, 1, sizeof(buf), f)) > 0)
        ok = fwrite(buf, 1, n, to) == n;
    fclose(f);
    return ok;
}

/* A branch of shop i that replayed the uncut log: the files exported before the cut and after
 * it, one after the other in one file (records it already has are skipped, the chain checked at
 * the seam), imported into a new directory. */
static uint64_t uncut_digest(net *n, unsigned i, const char *const *files, unsigned nfiles)
{
    char dir[340], shop[32], all[340];
    snprintf(dir, sizeof(dir), "%s/ref%u", n->root, i + 1);
    snprintf(all, sizeof(all), "%s/uncut-all.seg", n->root);
    snprintf(shop, sizeof(shop), "%llu", (unsigned long long)n->shops[i]);
    FILE *out = fopen(all, "wb");
    bool ok = out != NULL;
    for (unsigned f = 0; ok && f < nfiles; f++)
        ok = file_append(out, files[f]);
    if (out && fclose(out) != 0)
        ok = false;
    const char *args[] = {"branch", "import", all, "--data", dir, "--shop", shop, NULL};
    if (!ok || cmd(NULL, NULL, args) != 0)
        return 1; /* never a real branch's digest by accident; 0 is the other failure value */
    uint64_t d = branch_digest(dir);
    cs_test_rmtree(dir);
    unlink(all);
    return d;
}

/* Issue 14: the head office refuses to cut past a linked branch's cursor, naming the branches
 * that would need a snapshot, and changes nothing; --force then cuts. Branches behind, never
 * connected, and added after the cut are bootstrapped over the protocol and equal an uncut
 * replay; `log`, `audit verify` and the audit from the snapshot on still work, before it they
 * refuse clearly. */
static void test_retention_cut_refused_then_forced_and_every_branch_equals_uncut_replay(void)
{
    static net n;
    uint64_t s1 = 0;
    CHECK(net_make(&n, 3, &s1));
    CHECK(branch_run(&n, 0, "join") == 0); /* B1 at the head as of now */
    CHECK(wait_cursor_recorded(&n, 0));
    CHECK(update_service(&n, s1, 1, 250)); /* then behind: a change, a sync point, more */
    CHECK(sync_all(&n));
    uint64_t s4 = put_service(&n, 4, 400);
    CHECK(s4 != 0);
    uint64_t head = cs_fix_head_seq(n.hq), before = head - 1;
    CHECK(cs_fix_branch_cursor(n.dir[0]) < before - 1);

    char f1[340], f2[340], f3[340];
    snprintf(f1, sizeof(f1), "%s/uncut1.seg", n.root);
    CHECK(log_export(n.hq, 1, f1));

    /* Refused: B1 (behind) and B2 (never connected) are named; nothing was cut. */
    char b1[32], b2[32], bs[32];
    snprintf(b1, sizeof(b1), "%llu (cursor", (unsigned long long)n.shops[0]);
    snprintf(b2, sizeof(b2), "%llu (never connected)", (unsigned long long)n.shops[1]);
    snprintf(bs, sizeof(bs), "%llu", (unsigned long long)before);
    const char *cut[] = {"log", "compact", "--data", n.hq, "--before", bs, NULL};
    const char *names[] = {b1, b2, "--force", NULL};
    CHECK(refused(cut, "forbidden", 2, names));
    CHECK(log_first(n.hq) == 1);

    /* Forced, while serve runs on the same directory. */
    CHECK(compact(&n, before, true));
    CHECK(log_first(n.hq) == before);
    CHECK(cs_fix_head_seq(n.hq) == head);
    CHECK(audit_verify(&n, NULL));
    CHECK(doc_reader_ok(n.hq, before));

    /* The audit before the start: refused, saying so; from the snapshot on: answered. */
    const char *asof_old[] = {"audit", "as-of", "--data", n.hq, "--seq", "2", NULL};
    const char *cut_words[] = {"were cut", NULL};
    CHECK(refused(asof_old, "not_found", 2, cut_words));
    char at[32], s1s[32];
    snprintf(at, sizeof(at), "%llu", (unsigned long long)(before - 1));
    const char *asof_snap[] = {"audit", "as-of", "--data", n.hq, "--seq", at, "service", NULL};
    CHECK(cmd(NULL, NULL, asof_snap) == 0);
    snprintf(s1s, sizeof(s1s), "%llu", (unsigned long long)s1);
    const char *hist[] = {"audit", "history", "--data", n.hq, "service", s1s, NULL};
    CHECK(refused(hist, "not_found", 2, cut_words));

    /* B1 behind the cut and B2 that never connected: bootstrapped, then they follow. */
    CHECK(branch_run(&n, 0, "pull") == 0);
    CHECK(branch_run(&n, 1, "join") == 0);
    CHECK(cs_fix_branch_cursor(n.dir[0]) == head);
    CHECK(cs_fix_branch_cursor(n.dir[1]) == head);

    /* B3, added after the cut, joins from the snapshot's part for any new branch. */
    uint64_t b3 = 0;
    {
        const char *add[] = {
            "shop", "add", "--data", n.hq, "--name", "B3", "--password-stdin", "--json-out", NULL};
        CHECK((b3 = cs_fix_cmd_u64(PASSWORD "\n", "id", add, CMD_MS)) != 0);
        n.shops[2] = b3;
    }
    CHECK(update_service(&n, s4, 4, 450));
    CHECK(sync_all(&n));
    CHECK(branch_run(&n, 2, "join") == 0);
    CHECK(branch_run(&n, 0, "pull") == 0);
    CHECK(branch_run(&n, 1, "pull") == 0);
    head = cs_fix_head_seq(n.hq);
    for (unsigned i = 0; i < 3; i++) {
        CHECK(cs_fix_branch_cursor(n.dir[i]) == head);
        CHECK(audit_verify(&n, n.dir[i]));
    }

    /* Each equals a branch that replayed the uncut log. */
    snprintf(f2, sizeof(f2), "%s/after.seg", n.root);
    CHECK(log_export(n.hq, before, f2));
    const char *files[] = {f1, f2};
    for (unsigned i = 0; i < 3; i++) {
        uint64_t got = branch_digest(n.dir[i]), want = uncut_digest(&n, i, files, 2);
        if (got != want)
            fprintf(stderr, "  branch %u: digest %016llx, uncut replay %016llx\n", i + 1,
                    (unsigned long long)got, (unsigned long long)want);
        CHECK(got != 0);
        CHECK(got == want);
    }

    /* A second cut (its snapshot built from the first one's) with B1 left behind again. */
    CHECK(update_service(&n, s4, 4, 475));
    CHECK(sync_all(&n));
    CHECK(put_service(&n, 5, 500) != 0);
    uint64_t head2 = cs_fix_head_seq(n.hq);
    CHECK(branch_run(&n, 1, "pull") == 0);
    CHECK(branch_run(&n, 2, "pull") == 0);
    snprintf(f3, sizeof(f3), "%s/after2.seg", n.root);
    CHECK(log_export(n.hq, before, f3)); /* the log between the two cuts */
    CHECK(compact(&n, head2, true));
    CHECK(log_first(n.hq) == head2);
    CHECK(audit_verify(&n, NULL));
    CHECK(branch_run(&n, 0, "pull") == 0);
    CHECK(cs_fix_branch_cursor(n.dir[0]) == head2);
    const char *files2[] = {f1, f3};
    for (unsigned i = 0; i < 3; i++) {
        uint64_t got = branch_digest(n.dir[i]), want = uncut_digest(&n, i, files2, 2);
        CHECK(got == want);
        CHECK(audit_verify(&n, n.dir[i]));
    }
    net_free(&n);
}

/* Retention keeps the last N events (--keep); a log shorter than that is left alone. */
static void test_retention_keep_n_cuts_all_but_the_last_n(void)
{
    static net n;
    CHECK(net_make(&n, 2, NULL));
    CHECK(branch_run(&n, 0, "join") == 0);
    CHECK(branch_run(&n, 1, "join") == 0);
    uint64_t head = cs_fix_head_seq(n.hq);
    const char *keep_all[] = {"log", "compact", "--data", n.hq, "--keep", "1000", NULL};
    CHECK(cmd(NULL, NULL, keep_all) == 0);
    CHECK(log_first(n.hq) == 1);
    /* Every branch is at the head: keeping 2 strands nobody, so no --force is needed. Wait for
     * serve to record their cursors (it flushes once a second). */
    const char *keep2[] = {"log", "compact", "--data", n.hq, "--keep", "2", NULL};
    uint64_t deadline = cs_run_now_ms() + WAIT_MS;
    int rc = -1;
    while (cs_run_now_ms() < deadline &&
           (rc = cs_run_code(NULL, keep2, NULL, NULL, CMD_MS, false)) != 0)
        cs_run_sleep_ms(200);
    CHECK(rc == 0);
    CHECK(log_first(n.hq) == head - 1);
    CHECK(audit_verify(&n, NULL));
    CHECK(branch_run(&n, 0, "pull") == 0);
    CHECK(audit_verify(&n, n.dir[0]));
    net_free(&n);
}

static bool copy_file(const char *from, const char *to)
{
    FILE *out = fopen(to, "wb");
    bool ok = out && file_append(out, from);
    if (out && fclose(out) != 0)
        ok = false;
    return ok;
}

/* Issue 14: a branch killed (SIGKILL) at any moment of its bootstrap holds either nothing of
 * the snapshot or all of it: its cursor is where it was or at least the snapshot's, and in the
 * second case it holds what a replay says. Each round restores the branch as it was before and
 * kills `branch pull` a little later than the round before. */
static void test_retention_branch_killed_during_bootstrap_is_consistent(void)
{
    static net n;
    uint64_t s1 = 0;
    CHECK(net_make(&n, 4, &s1));
    CHECK(branch_run(&n, 0, "join") == 0);
    CHECK(update_service(&n, s1, 1, 300));
    CHECK(sync_all(&n));
    CHECK(put_service(&n, 9, 900) != 0);
    uint64_t old = cs_fix_branch_cursor(n.dir[0]), head = cs_fix_head_seq(n.hq);
    CHECK(compact(&n, head, true));
    char db[340], saved[340], lock[340];
    snprintf(db, sizeof(db), "%s/data.mdb", n.dir[0]);
    snprintf(lock, sizeof(lock), "%s/lock.mdb", n.dir[0]);
    snprintf(saved, sizeof(saved), "%s/b1-before.mdb", n.root);
    CHECK(copy_file(db, saved)); /* no process has the branch open now */
    unsigned whole = 0, none = 0;
    for (unsigned round = 0; round < 8; round++) {
        unlink(lock);
        CHECK(copy_file(saved, db));
        const char *args[] = {"branch", "pull", "--data", n.dir[0], "--head", n.addr, NULL};
        pid_t pid = cs_run_spawn(args, NULL);
        CHECK(pid > 0);
        cs_run_sleep_ms(5 + round * 12);
        cs_run_stop(pid, SIGKILL, 5000);
        uint64_t at = cs_fix_branch_cursor(n.dir[0]);
        CHECK(at == old || at >= head - 1);
        if (at == old) {
            none++;
            continue;
        }
        whole++;
        CHECK(audit_verify(&n, n.dir[0]));
    }
    fprintf(stderr, "  killed 8 times: %u before the snapshot's commit, %u after\n", none, whole);
    net_free(&n);
}

int main(void)
{
    if (!getenv("CS_BIN")) {
        fprintf(stderr, "CS_BIN is not set (run through ctest)\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    RUN(test_retention_cut_refused_then_forced_and_every_branch_equals_uncut_replay);
    if (live)
        net_free(live);
    RUN(test_retention_keep_n_cuts_all_but_the_last_n);
    if (live)
        net_free(live);
    RUN(test_retention_branch_killed_during_bootstrap_is_consistent);
    if (live)
        net_free(live);
    return cs_test_finish();
}
