/*
 * test_damage.c: issue 12, "found when tried as a hostile user would": a damaged data.mdb, a
 * damaged `self` record and hostile `log export --out` targets, through the real `chainsync`
 * binary ($CS_BIN). Every command on a damaged store must end cleanly: exit 0 with correct
 * output, or `error: <code>:` with exit 2 or 3 (corrupt or another storage error), never a
 * signal (cs_run reports a child killed by one as exit -1). A refused command changes nothing.
 *
 * The damage is deterministic (fixed offsets and a fixed generator), so a failure reproduces.
 * Every child is bounded by RUN_DEADLINE_MS and killed past it.
 */
#include "tests/damage.h"
#include "tests/harness.h"
#include "tests/run.h"

#include <jansson.h>
#include <signal.h>

#define RUN_DEADLINE_MS 30000
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define SERVICES 40 /* enough for a store of more than 64 KiB with a branch B-tree of events */
#define PAGE_BYTES 4096
#define SCRIBBLE_ROUNDS 12 /* damaged copies per store; each runs every command below */

#define TEST(fn)                                                                                   \
    do {                                                                                           \
        RUN(fn);                                                                                   \
        cs_test_tmpdirs_cleanup();                                                                 \
    } while (0)

typedef cs_run_result run_result;

static bool run(run_result *r, const char *input, const char *const *args)
{
    return cs_run(r, input, NULL, args, RUN_DEADLINE_MS);
}

static bool ok(const char *input, const char *const *args, char *out, size_t out_len)
{
    run_result r;
    bool good = run(&r, input, args) && r.exit_code == 0;
    if (!good)
        fprintf(stderr, "  `%s %s` exited %d: %s", args[0], args[1], r.exit_code, r.err);
    if (good && out)
        snprintf(out, out_len, "%s", r.out);
    cs_run_free(&r);
    return good;
}

/* A clean end of a command on a damaged store: 0, or 2/3 with an `error: ` line. That line is
 * the first one, except when LMDB failed one of its asserts: LMDB prints its own line to
 * stderr whatever callback is set (mdb_assert_fail), so ours is the second. */
static bool ended_cleanly(const run_result *r)
{
    if (r->exit_code == 0)
        return true;
    if (r->exit_code != 2 && r->exit_code != 3)
        return false;
    if (strncmp(r->err, "error: ", 7) == 0)
        return true;
    const char *nl = strchr(r->err, '\n');
    const char *assertion = strstr(r->err, "Assertion '");
    return nl && assertion && assertion < nl && strncmp(nl + 1, "error: corrupt: ", 16) == 0;
}

/* The "id" of a --json-out result, as text. */
static bool id_of(const char *json, char *out, size_t len)
{
    json_t *o = json_loads(json, 0, NULL);
    bool good = json_is_integer(json_object_get(o, "id"));
    if (good)
        snprintf(out, len, "%lld", (long long)json_integer_value(json_object_get(o, "id")));
    json_decref(o);
    return good;
}

typedef struct fixture {
    char *root;
    char hq[512], branch[512], seg[512], shop[32], cat[32];
} fixture;

/* A head office with a category and SERVICES services, one branch that imported it all. */
static bool fixture_open(fixture *f)
{
    memset(f, 0, sizeof(*f));
    if (!(f->root = cs_test_tmpdir_kept("damage")))
        return false;
    snprintf(f->hq, sizeof(f->hq), "%s/hq", f->root);
    snprintf(f->branch, sizeof(f->branch), "%s/b", f->root);
    snprintf(f->seg, sizeof(f->seg), "%s/hq.seg", f->root);
    char out[4096];
    if (!ok(NULL, ARGS("init", "--data", f->hq, "--name", "HQ"), NULL, 0) ||
        !ok(NULL, ARGS("network", "create", "--data", f->hq, "--name", "Net"), NULL, 0) ||
        !ok(NULL,
            ARGS("put", "service_category", "--data", f->hq, "--json-out", "--json",
                 "{\"name\":\"Grooming\"}"),
            out, sizeof(out)) ||
        !id_of(out, f->cat, sizeof(f->cat)))
        return false;
    for (int i = 0; i < SERVICES; i++) {
        char js[256];
        snprintf(js, sizeof(js),
                 "{\"name\":\"Service %d\",\"category\":%s,\"price_table\":[{\"tier\":\"small\","
                 "\"price_cents\":%d}]}",
                 i, f->cat, 1000 + i);
        if (!ok(NULL, ARGS("put", "service", "--data", f->hq, "--json", js), NULL, 0))
            return false;
    }
    return ok("branch-password-1\n",
              ARGS("shop", "add", "--data", f->hq, "--name", "B", "--password-stdin", "--json-out"),
              out, sizeof(out)) &&
           id_of(out, f->shop, sizeof(f->shop)) &&
           ok(NULL, ARGS("log", "export", "--data", f->hq, "--from", "1", "--out", f->seg), NULL,
              0) &&
           ok(NULL, ARGS("branch", "import", f->seg, "--data", f->branch, "--shop", f->shop), NULL,
              0);
}

/* Copies src/data.mdb to dst/ (a fresh directory). */
static bool store_copy(const char *src, const char *dst)
{
    size_t len = 0;
    uint8_t *bytes = cs_damage_file(src, &len);
    char path[1024];
    snprintf(path, sizeof(path), "%s/data.mdb", dst);
    int fd = bytes && mkdir(dst, 0700) == 0 ? open(path, O_WRONLY | O_CREAT | O_EXCL, 0600) : -1;
    bool good = fd >= 0 && write(fd, bytes, len) == (ssize_t)len;
    if (fd >= 0)
        close(fd);
    free(bytes);
    return good;
}

/* Every command below ends cleanly on dir: exit 0, or exit 2/3 with `error: <code>: `, never
 * a signal. `what` names the damage in the failure message. */
static bool commands_end_cleanly(const char *dir, const char *what, unsigned *refusals)
{
    static const char *const cmds[][3] = {
        {"log", NULL, NULL},        {"audit", "verify", NULL}, {"list", "service", NULL},
        {"shop", "list", NULL},     {"get", "service", "1"},   {"list", "species", NULL},
        {"network", "types", NULL},
    };
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        const char *args[8];
        size_t n = 0;
        for (size_t j = 0; j < 3 && cmds[i][j]; j++)
            args[n++] = cmds[i][j];
        args[n++] = "--data";
        args[n++] = dir;
        args[n] = NULL;
        run_result r;
        if (!run(&r, NULL, args))
            return false;
        bool clean = ended_cleanly(&r);
        if (!clean)
            fprintf(stderr, "  %s: `%s %s` ended with exit %d (-1: a signal): %.300s\n", what,
                    cmds[i][0], cmds[i][1] ? cmds[i][1] : "", r.exit_code, r.err);
        if (r.exit_code != 0)
            (*refusals)++;
        cs_run_free(&r);
        if (!clean)
            return false;
    }
    return true;
}

/* Issue 12: a data.mdb cut to 64 KiB (shorter than the pages its meta page says are in use)
 * is refused at open with `corrupt` (exit 3) by every command; it crashed them with SIGBUS. */
static void test_issue12_truncated_store_is_corrupt(void)
{
    fixture f;
    CHECK(fixture_open(&f));
    size_t len = 0;
    uint8_t *bytes = cs_damage_file(f.hq, &len);
    free(bytes);
    CHECK(len > 64 * 1024); /* else the cut would not cut */
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/cut", f.root);
    CHECK(store_copy(f.hq, dir));
    CHECK(cs_damage_truncate(dir, 64 * 1024));
    static const char *const cmds[][2] = {
        {"log", NULL}, {"audit", "verify"}, {"list", "service"}, {"shop", "list"}};
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        run_result r;
        CHECK(cmds[i][1] ? run(&r, NULL, ARGS(cmds[i][0], cmds[i][1], "--data", dir))
                         : run(&r, NULL, ARGS(cmds[i][0], "--data", dir)));
        bool good = cs_run_refused(&r, "corrupt", 3) && strstr(r.err, "cut short");
        cs_run_free(&r);
        CHECK(good);
    }
    /* init must not take such a directory over either. */
    run_result r;
    CHECK(run(&r, NULL, ARGS("init", "--data", dir, "--name", "Again")));
    bool good = cs_run_refused(&r, "corrupt", 3);
    cs_run_free(&r);
    CHECK(good);
}

/* Issue 12: random bytes written over pages of a head office's and a branch's data.mdb (the
 * page headers included) never end a command with a signal: SIGBUS/SIGSEGV in LMDB's cursor
 * walks and LMDB's own abort on IS_LEAF are reported as `error: corrupt:` (exit 3). */
static void test_issue12_scribbled_pages_never_crash(void)
{
    fixture f;
    CHECK(fixture_open(&f));
    const char *srcs[] = {f.hq, f.branch};
    unsigned refusals = 0, rounds = 0;
    for (size_t s = 0; s < 2; s++) {
        size_t len = 0;
        uint8_t *bytes = cs_damage_file(srcs[s], &len);
        free(bytes);
        CHECK(len >= 4 * PAGE_BYTES);
        size_t pages = len / PAGE_BYTES;
        for (uint32_t round = 0; round < SCRIBBLE_ROUNDS; round++) {
            char dir[600], what[700];
            snprintf(dir, sizeof(dir), "%s/s%zu-%u", f.root, s, round);
            CHECK(store_copy(srcs[s], dir));
            /* Pages 0 and 1 are LMDB's meta pages (checked by LMDB itself): damage the rest.
             * Odd rounds hit two bytes of a page header (flags, counts), even rounds 64 bytes
             * inside a page: both crashed commands before. */
            uint32_t seed = 2654435761u * (round + 1) + (uint32_t)s;
            size_t page = 2 + seed % (pages - 2);
            off_t off = (off_t)(page * PAGE_BYTES);
            bool header = round % 2 == 1;
            CHECK(cs_damage_scribble(
                dir, header ? off + 10 + (off_t)(seed % 6) : off + 16 + (off_t)(seed % 3000),
                header ? 2 : 64, seed));
            snprintf(what, sizeof(what), "%s page %zu (%s)", s ? "branch" : "head office", page,
                     header ? "header bytes" : "64 bytes");
            CHECK(commands_end_cleanly(dir, what, &refusals));
            rounds++;
            cs_test_rmtree(dir);
        }
    }
    printf("  %u damaged stores, %u commands refused cleanly\n", rounds, refusals);
    CHECK(refusals > 0); /* the damage reached live pages: the test saw what it is about */
}

/* Issue 12: `audit verify` of a branch store whose page headers are damaged, with the head
 * office (--branch), ends cleanly, and leaves the head office's bytes as they were (it opened
 * a write transaction in it, where a damaged page once overflowed a heap read of ~4 GB). */
static void test_issue12_verify_with_damaged_branch_ends_cleanly(void)
{
    fixture f;
    CHECK(fixture_open(&f));
    size_t hq_len = 0, blen = 0;
    uint8_t *hq_bytes = cs_damage_file(f.hq, &hq_len);
    uint8_t *b = cs_damage_file(f.branch, &blen);
    free(b);
    CHECK(hq_bytes && blen >= 4 * PAGE_BYTES);
    bool good = true;
    for (size_t page = 2; good && page < blen / PAGE_BYTES; page++) {
        char dir[600];
        snprintf(dir, sizeof(dir), "%s/bh%zu", f.root, page);
        good = store_copy(f.branch, dir) &&
               cs_damage_scribble(dir, (off_t)(page * PAGE_BYTES) + 10, 2, (uint32_t)page);
        run_result r;
        good = good && run(&r, NULL, ARGS("audit", "verify", "--data", f.hq, "--branch", dir));
        if (good && !ended_cleanly(&r)) {
            fprintf(stderr, "  branch page %zu: exit %d: %.300s\n", page, r.exit_code, r.err);
            good = false;
        }
        if (good)
            cs_run_free(&r);
        cs_test_rmtree(dir);
    }
    bool same = cs_damage_file_same(f.hq, hq_bytes, hq_len);
    free(hq_bytes);
    CHECK(good && same);
}

/* Issue 12: a damaged `self` record (not JSON, no valid role, or gone while the store holds
 * data) is `corrupt` (exit 3), never "not initialised"; `init` on such a directory is refused
 * and appends nothing (it appended a second init event). */
static void test_issue12_damaged_self_is_corrupt(void)
{
    fixture f;
    CHECK(fixture_open(&f));
    static const char *const damage[] = {"{\"id\":", "{\"id\":5,\"name\":\"HQ\",\"role\":\"hXad\"}",
                                         "{\"name\":\"HQ\",\"role\":\"head\"}", NULL};
    for (size_t i = 0; i < sizeof(damage) / sizeof(damage[0]); i++) {
        char dir[600];
        snprintf(dir, sizeof(dir), "%s/self%zu", f.root, i);
        CHECK(store_copy(f.hq, dir));
        CHECK(cs_damage_record(dir, "network", "self", damage[i]));
        size_t len = 0;
        uint8_t *bytes = cs_damage_file(dir, &len);
        CHECK(bytes);
        run_result r;
        bool good =
            run(&r, NULL, ARGS("shop", "list", "--data", dir)) && cs_run_refused(&r, "corrupt", 3);
        cs_run_free(&r);
        good = good && run(&r, NULL, ARGS("list", "service", "--data", dir)) &&
               cs_run_refused(&r, "corrupt", 3);
        cs_run_free(&r);
        good = good && run(&r, NULL, ARGS("init", "--data", dir, "--name", "Again")) &&
               cs_run_refused(&r, "corrupt", 3);
        cs_run_free(&r);
        good = good && cs_damage_file_same(dir, bytes, len);
        free(bytes);
        if (!good)
            fprintf(stderr, "  self damage %zu: %s\n", i, damage[i] ? damage[i] : "(deleted)");
        CHECK(good);
    }
}

/* Issue 12: a damaged network record (`net`, not JSON) is `corrupt` (exit 3) for the commands
 * that read it, never not_found or a success that ignores it (`shop switch` reads the mode to
 * know whether to add a sync point). */
static void test_issue12_damaged_net_record_is_corrupt(void)
{
    fixture f;
    CHECK(fixture_open(&f));
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/net", f.root);
    CHECK(store_copy(f.hq, dir));
    CHECK(cs_damage_record(dir, "network", "net", "{\"name\":"));
    static const char *const cmds[][2] = {
        {"network", "types"}, {"network", "mode"}, {"network", "whatsapp"}, {"shop", "switch"}};
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        run_result r;
        CHECK(strcmp(cmds[i][0], "shop") == 0
                  ? run(&r, NULL, ARGS("shop", "switch", f.shop, "on", "--data", dir))
                  : run(&r, NULL, ARGS(cmds[i][0], cmds[i][1], "--data", dir)));
        bool good = cs_run_refused(&r, "corrupt", 3);
        if (!good)
            fprintf(stderr, "  `%s %s`\n", cmds[i][0], cmds[i][1] ? cmds[i][1] : "");
        cs_run_free(&r);
        CHECK(good);
    }
}

/* Issue 12 (`log export --out` overwrote anything): the store itself, a path inside a data
 * directory (the head office's or a branch's), a directory, a FIFO and a symbolic link are
 * refused (invalid_input) and left as they were; a new path and a regular file are written. */
static void test_issue12_export_refuses_unsafe_targets(void)
{
    fixture f;
    CHECK(fixture_open(&f));
    size_t len = 0;
    uint8_t *bytes = cs_damage_file(f.hq, &len);
    CHECK(bytes);
    char store[600], beside[600], in_branch[600], fifo[600], link[600], fresh[600];
    snprintf(store, sizeof(store), "%s/data.mdb", f.hq);
    snprintf(beside, sizeof(beside), "%s/export.seg", f.hq);
    snprintf(in_branch, sizeof(in_branch), "%s/export.seg", f.branch);
    snprintf(fifo, sizeof(fifo), "%s/fifo", f.root);
    snprintf(link, sizeof(link), "%s/link.seg", f.root);
    snprintf(fresh, sizeof(fresh), "%s/new.seg", f.root);
    bool made = mkfifo(fifo, 0600) == 0 && symlink(f.seg, link) == 0;
    const char *bad[] = {store, beside, in_branch, f.hq, f.root, fifo, link};
    bool good = made;
    for (size_t i = 0; good && i < sizeof(bad) / sizeof(bad[0]); i++) {
        run_result r;
        good = run(&r, NULL, ARGS("log", "export", "--data", f.hq, "--from", "1", "--out", bad[i]));
        good = good && cs_run_refused(&r, "invalid_input", 2);
        if (!good)
            fprintf(stderr, "  --out %s\n", bad[i]);
        cs_run_free(&r);
    }
    struct stat st;
    good = good && cs_damage_file_same(f.hq, bytes, len) && access(beside, F_OK) != 0 &&
           access(in_branch, F_OK) != 0 && lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode) &&
           lstat(link, &st) == 0 && S_ISLNK(st.st_mode);
    free(bytes);
    CHECK(good);
    CHECK(ok(NULL, ARGS("log", "export", "--data", f.hq, "--from", "1", "--out", fresh), NULL, 0));
    CHECK(ok(NULL, ARGS("log", "export", "--data", f.hq, "--from", "1", "--out", f.seg), NULL, 0));
    CHECK(ok(NULL, ARGS("log", "--data", f.hq), NULL, 0));
}

/* Under AddressSanitizer the CLI keeps ASan's own fault reports (tools/main.c installs no
 * fault handler there) and ASan's memcpy interceptor reports LMDB's overreads of a damaged page
 * as errors of their own: the scribble tests are about the shipped build, so they skip. */
#if defined(__SANITIZE_ADDRESS__)
#define CS_DAMAGE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CS_DAMAGE_ASAN 1
#endif
#endif
#ifndef CS_DAMAGE_ASAN
#define CS_DAMAGE_ASAN 0
#endif

int main(void)
{
    if (!getenv("CS_BIN")) {
        fprintf(stderr, "CS_BIN is not set: run through ctest\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    TEST(test_issue12_truncated_store_is_corrupt);
    if (!CS_DAMAGE_ASAN) {
        TEST(test_issue12_scribbled_pages_never_crash);
        TEST(test_issue12_verify_with_damaged_branch_ends_cleanly);
    } else {
        printf("SKIP test_issue12_scribbled_pages_never_crash (AddressSanitizer build)\n");
        printf("SKIP test_issue12_verify_with_damaged_branch_ends_cleanly (AddressSanitizer)\n");
    }
    TEST(test_issue12_damaged_self_is_corrupt);
    TEST(test_issue12_damaged_net_record_is_corrupt);
    TEST(test_issue12_export_refuses_unsafe_targets);
    return cs_test_finish();
}
