/*
 * test_disk_full.c: issue 12 "Disk full and map full during append and apply" (SPEC 4, SPEC 6
 * storage_full) with the real binary on a small filesystem of its own: an 8 MiB ext4 image
 * loop-mounted (or, when loop devices are unavailable, a tmpfs with size=8m), filled up to a
 * few hundred KiB by a ballast file, so that the log fills the rest within a few commands.
 *   - append: `put` at a head office on the full filesystem fails with storage_full (exit 3),
 *     every earlier acknowledged put is in the log, the log verifies, a retry still fails and
 *     changes nothing; once the ballast is removed the next put succeeds and verify passes.
 *   - apply: a branch on the full filesystem pulls a catch-up larger than the space left:
 *     `branch pull` fails with storage_full, the branch still equals what the audit replays
 *     for it at its cursor; once space returns, pull catches up and verifies.
 *   - map growth at the filesystem's limit: a log opened with a 512 KiB map grows it (log/map.c,
 *     doubling) while it fills the filesystem; the append that finds no room is storage_full,
 *     the map's growth never gets ahead of the disk in a harmful way (no SIGBUS: the map is
 *     never written through), the log reopens and verifies with every acknowledged event, and
 *     appends resume once space returns.
 * The map itself is virtual (log/map.c doubles it up to 1 TiB without using disk), so at the
 * filesystem's limit it is the disk that fills; LMDB reports the short write as EIO, which
 * log/store.c turns into storage_full when the filesystem has no space left.
 *
 * Needs root (mount). Without it, or when neither mount works, it prints "skipped: needs root"
 * (or why) and passes nothing. The filesystem is unmounted and removed at the end, every child
 * is reaped.
 */
#include "log/log.h"
#include "tests/harness.h"
#include "tests/loopfs.h"
#include "tests/net_fixture.h"
#include "tests/run.h"

#include <msgpack.h>

#include <fcntl.h>
#include <signal.h>

#define LEFT_APPEND_BYTES (384u * 1024u) /* what the ballast leaves for the append test */
#define LEFT_APPLY_BYTES (160u * 1024u)
#define PUTS_MAX 400u
#define CATCH_UP_PUTS 120u
#define WAIT_MS 60000u
#define PASSWORD "disk-full-password"
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static char root[256];
static cs_loopfs fs; /* the small filesystem, under root */

/* Makes root and mounts the small filesystem under it. NULL when done, else why not. */
static const char *fs_mount(void)
{
    if (geteuid() != 0)
        return "needs root";
    char *r = cs_test_tmpdir("diskfull");
    if (!r)
        return "no temporary directory";
    snprintf(root, sizeof(root), "%s", r);
    free(r);
    return cs_loopfs_mount(&fs, root, WAIT_MS);
}

static void fs_unmount(void)
{
    cs_loopfs_unmount(&fs);
    if (root[0])
        cs_test_rmtree(root);
}

static int cs(const char *input, const char *const *args, char **out, char **err)
{
    return cs_run_code(input, args, out, err, WAIT_MS, false);
}

static long log_count(const char *dir, const char *needle)
{
    char *out = NULL;
    long n = -1;
    if (cs(NULL, ARGS("log", "--data", dir), &out, NULL) == 0)
        for (const char *p = (n = 0, out); (p = strstr(p, needle)); p++)
            n++;
    free(out);
    return n;
}

static bool put_customer(const char *dir, unsigned i, char **err)
{
    static char js[4200];
    int k = snprintf(js, sizeof(js), "{\"name\":\"full-%u\",\"notes\":\"", i);
    memset(js + k, 'n', 3900);
    snprintf(js + k + 3900, sizeof(js) - (size_t)k - 3900, "\"}");
    return cs(NULL, ARGS("put", "customer", "--data", dir, "--json", js), NULL, err) == 0;
}

static bool storage_full(int code, const char *err)
{
    /* The error line is the last one (a node logs its connection first). */
    bool ok =
        code == 3 && err &&
        (strncmp(err, "error: storage_full:", 20) == 0 || strstr(err, "\nerror: storage_full:"));
    if (!ok)
        fprintf(stderr, "  expected storage_full, exit 3; got exit %d: %s", code, err ? err : "");
    return ok;
}

/* SPEC 4/6, issue 12: append on a full disk: storage_full, nothing acknowledged lost, a valid
 * log, nothing changed by a retry, and recovery once space returns. */
static void test_disk_full_append_storage_full_valid_log_recovers(void)
{
    char hq[400];
    snprintf(hq, sizeof(hq), "%s/hq", fs.mnt);
    CHECK(cs(NULL, ARGS("init", "--data", hq, "--name", "HQ"), NULL, NULL) == 0);
    CHECK(cs_loopfs_fill(&fs, LEFT_APPEND_BYTES));
    unsigned acked = 0;
    char *err = NULL;
    while (acked < PUTS_MAX && put_customer(hq, acked, &err)) {
        free(err);
        err = NULL;
        acked++;
    }
    fprintf(stderr, "  %u puts acknowledged before the disk was full\n", acked);
    CHECK(acked > 0 && acked < PUTS_MAX);
    CHECK(storage_full(3, err));
    free(err);
    err = NULL;
    CHECK(log_count(hq, "\"type\":\"customer\"") == (long)acked);
    int rc = put_customer(hq, 9999, &err) ? 0 : 3;
    bool still = storage_full(rc, err);
    free(err);
    err = NULL;
    CHECK(still);
    CHECK(log_count(hq, "\"type\":\"customer\"") == (long)acked);
    char *out = NULL;
    rc = cs(NULL, ARGS("audit", "verify", "--data", hq), &out, &err);
    if (rc != 0)
        fprintf(stderr, "  verify on the full disk: exit %d: %s%s", rc, out, err);
    free(out), free(err);
    err = NULL;
    CHECK(rc == 0);
    CHECK(unlink(fs.ballast) == 0);
    CHECK(put_customer(hq, 10000, NULL));
    CHECK(log_count(hq, "\"type\":\"customer\"") == (long)acked + 1);
    CHECK(cs(NULL, ARGS("audit", "verify", "--data", hq), NULL, NULL) == 0);
    cs_test_rmtree(hq);
}

/* SPEC 4/6, issue 12: a branch applying a catch-up on a full disk: storage_full, the branch
 * still equals the audit's replay at its cursor, and it catches up once space returns. */
static void test_disk_full_apply_storage_full_branch_valid_recovers(void)
{
    char hq[300], br[400], ready[300], addr[128] = "";
    snprintf(hq, sizeof(hq), "%s/hq", root); /* the head office has room */
    snprintf(br, sizeof(br), "%s/b1", fs.mnt);
    snprintf(ready, sizeof(ready), "%s/ready", root);
    char *out = NULL;
    CHECK(cs(NULL, ARGS("init", "--data", hq, "--name", "HQ"), NULL, NULL) == 0);
    CHECK(cs(NULL, ARGS("network", "create", "--data", hq, "--name", "N"), NULL, NULL) == 0);
    CHECK(cs(PASSWORD "\n",
             ARGS("shop", "add", "--data", hq, "--name", "B1", "--password-stdin", "--json-out"),
             &out, NULL) == 0);
    unsigned long long id = 0;
    bool got = sscanf(out, "{\"id\":%llu", &id) == 1;
    free(out);
    out = NULL;
    CHECK(got);
    char shop[32];
    snprintf(shop, sizeof(shop), "%llu", id);
    pid_t serve = 0;
    bool ok =
        cs_fix_serve_start(&serve, hq, NULL, ready, NULL, addr, sizeof(addr), WAIT_MS) &&
        cs(PASSWORD "\n",
           ARGS("branch", "join", "--data", br, "--head", addr, "--shop", shop, "--password-stdin"),
           NULL, NULL) == 0;
    if (!ok)
        fprintf(stderr, "  serve or join failed\n");
    for (unsigned i = 0; ok && i < CATCH_UP_PUTS; i++) {
        char *perr = NULL;
        ok = put_customer(hq, i, &perr);
        if (!ok)
            fprintf(stderr, "  put %u at the head office: %s", i, perr ? perr : "");
        free(perr);
    }
    ok = ok && cs_loopfs_fill(&fs, LEFT_APPLY_BYTES);
    if (!ok)
        fprintf(stderr, "  the head office's puts or the ballast failed\n");
    char *err = NULL;
    int rc = ok ? cs(NULL, ARGS("branch", "pull", "--data", br), NULL, &err) : -1;
    bool full = ok && storage_full(rc, err);
    free(err);
    err = NULL;
    int verify_full =
        ok ? cs(NULL, ARGS("audit", "verify", "--data", hq, "--branch", br), &out, &err) : -1;
    if (verify_full != 0)
        fprintf(stderr, "  verify --branch on the full disk: exit %d: %s%s", verify_full,
                out ? out : "", err ? err : "");
    free(out), free(err);
    out = err = NULL;
    bool freed = ok && unlink(fs.ballast) == 0;
    int pull = freed ? cs(NULL, ARGS("branch", "pull", "--data", br), NULL, NULL) : -1;
    int verify = pull == 0
                     ? cs(NULL, ARGS("audit", "verify", "--data", hq, "--branch", br), NULL, NULL)
                     : -1;
    cs_run_stop(serve, SIGTERM, 10000);
    unlink(ready);
    cs_test_rmtree(hq);
    cs_test_rmtree(br);
    CHECK(ok);
    CHECK(full);
    CHECK(verify_full == 0);
    CHECK(pull == 0 && verify == 0);
}

/* SPEC 4/6, issue 12 "map full": the map doubles past what the filesystem holds, but it is the
 * disk that fills first; the failing append is storage_full, nothing acknowledged is lost, the
 * log verifies after a reopen, and appends resume when space returns. */
static void test_disk_full_map_grows_to_filesystem_limit_storage_full(void)
{
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/maplog", fs.mnt);
    int fd = open(fs.ballast, O_WRONLY | O_CREAT | O_TRUNC, 0600); /* 1 MiB to give back later */
    CHECK(fd >= 0);
    bool held = posix_fallocate(fd, 0, 1024 * 1024) == 0;
    close(fd);
    CHECK(held);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    static char note[3000];
    memset(note, 'm', sizeof(note));
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "note", 4);
    msgpack_pack_str_with_body(&pk, note, sizeof(note));
    cs_event evs[16];
    for (unsigned i = 0; i < 16; i++)
        evs[i] = (cs_event){.shop = 1,
                            .id = i + 1,
                            .version = 1,
                            .actor = CS_STR("disk"),
                            .kind = CS_STR("put"),
                            .type = CS_STR("note"),
                            .fields = (const uint8_t *)sb.data,
                            .fields_len = sb.size};
    cs_log_options o = {.map_bytes = 512 * 1024};
    cs_log *log = NULL;
    cs_err err = cs_log_open(dir, &o, &log);
    uint64_t acked = 0, first = 0;
    for (unsigned b = 0; err == CS_OK && b < 4000; b++)
        if ((err = cs_log_append(log, evs, 16, &first)) == CS_OK)
            acked = first + 15;
    if (err != CS_STORAGE_FULL)
        fprintf(stderr, "  append ended with %s: %s\n", cs_err_name(err), cs_log_errmsg(log));
    cs_log_close(log);
    struct stat st;
    char mdb[450];
    snprintf(mdb, sizeof(mdb), "%s/data.mdb", dir);
    bool grew = stat(mdb, &st) == 0 && st.st_size > 2 * 512 * 1024;
    fprintf(stderr, "  %llu events acknowledged, data.mdb %lld bytes, then %s\n",
            (unsigned long long)acked, (long long)st.st_size, cs_err_name(err));
    log = NULL;
    cs_log_reader *r = NULL;
    uint64_t head = 0, bad = 0;
    cs_err verr = cs_log_open(dir, NULL, &log);
    if (verr == CS_OK && (verr = cs_log_reader_open(log, &r)) == CS_OK &&
        (verr = cs_log_reader_head(r, &head)) == CS_OK)
        verr = cs_log_reader_verify(r, &bad);
    cs_log_reader_close(r);
    bool resumed = unlink(fs.ballast) == 0 && verr == CS_OK &&
                   cs_log_append(log, evs, 16, &first) == CS_OK && first == head + 1;
    cs_log_close(log);
    msgpack_sbuffer_destroy(&sb);
    cs_test_rmtree(dir);
    CHECK(err == CS_STORAGE_FULL);
    CHECK(grew && acked > 0);
    CHECK(verr == CS_OK && head == acked);
    CHECK(resumed);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const char *why = fs_mount();
    if (why) {
        printf("skipped: %s (test_disk_full mounts a small filesystem)\n", why);
        fs_unmount();
        return cs_test_finish();
    }
    RUN(test_disk_full_append_storage_full_valid_log_recovers);
    RUN(test_disk_full_apply_storage_full_branch_valid_recovers);
    RUN(test_disk_full_map_grows_to_filesystem_limit_storage_full);
    fs_unmount();
    return cs_test_finish();
}
