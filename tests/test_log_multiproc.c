/*
 * test_log_multiproc.c: SPEC 5, "Several processes use one data directory at once (serve, CLI
 * commands, a follower and readers of its catalog); each survives another growing the LMDB map."
 *
 * A process that opened a directory maps it at the size it had then. When another process
 * appends enough to grow the map, LMDB refuses the first process's next transaction with
 * MDB_MAP_RESIZED until it adopts the new size (mdb_env_set_mapsize(env, 0)), which is legal
 * only while it has no transaction of its own open (docs/storage.md, "Map size across processes").
 *
 * The grower is this program executed again (`test_log_multiproc grow DIR MODE MB`): a real,
 * separate process that opens the directory itself and appends MB megabytes of large events, so
 * its map doubles several times from GROW_MAP_BYTES. The readers are forked before anything of
 * the directory is open in the parent (LMDB handles never cross a fork) and open it themselves.
 *
 * Bounds: every child is reaped by pid before a deadline and killed past it; children die with
 * the parent (PR_SET_PDEATHSIG) and by alarm() on their own; a reader waits for its go signal
 * at most CHILD_WAIT_MS.
 */
#include "engine/engine.h"
#include "log/log.h"
#include "projections/projection.h"
#include "tests/harness.h"
#include "tests/run.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <msgpack.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

/* Every process opens with this small initial map, so 150 MB make the grower's map double six
 * times (4 -> 256 MiB) and each reader's map is far below what the grower leaves. */
#define GROW_MAP_BYTES ((size_t)4 * 1024 * 1024)
#define GROW_EVENT_BYTES (200u * 1024u) /* one large event; below CS_EVENT_BYTES_MAX */
#define GROW_BATCH_EVENTS 25u           /* about 5 MB per commit */
#define GROW_MB_READERS 150u            /* the size */
#define GROW_MB_OWN_READER 24u          /* enough to outgrow a 4 MiB map several times */
/* The grower's events in the readers' test. */
#define GROW_EVENTS_READERS ((uint64_t)GROW_MB_READERS * 1024u * 1024u / GROW_EVENT_BYTES)
#define CHILD_DEADLINE_MS 60000u /* far above the few seconds a child needs */
#define CHILD_WAIT_MS 60000
#define CHILD_LIFETIME_S 90

_Static_assert(GROW_EVENT_BYTES + 1024 <= CS_EVENT_BYTES_MAX, "a grower's event fits");

static const cs_log_options grow_opts = {.map_bytes = GROW_MAP_BYTES};

/* In a child: die with the parent, and on our own after a while, whatever happens to it. */
static void child_bounds(void)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        _exit(100);
    alarm(CHILD_LIFETIME_S);
}

/* ---- the grower (a separate program run) ------------------------------------------------- */

/* Appends mb megabytes of GROW_EVENT_BYTES events to log, GROW_BATCH_EVENTS per commit. */
static int grow_append(cs_log *log, unsigned mb)
{
    static const char blob_key[] = "blob";
    size_t n = (size_t)mb * 1024u * 1024u / GROW_EVENT_BYTES;
    char *blob = malloc(GROW_EVENT_BYTES);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (!blob || msgpack_pack_map(&pk, 1) ||
        msgpack_pack_str_with_body(&pk, blob_key, sizeof(blob_key) - 1))
        return 21;
    memset(blob, 'g', GROW_EVENT_BYTES);
    if (msgpack_pack_str_with_body(&pk, blob, GROW_EVENT_BYTES))
        return 21;
    cs_event evs[GROW_BATCH_EVENTS];
    for (size_t i = 0; i < GROW_BATCH_EVENTS; i++)
        evs[i] = (cs_event){.shop = 1,
                            .actor = CS_STR("grower"),
                            .kind = CS_STR("note"),
                            .type = CS_STR("test"),
                            .fields = (const uint8_t *)sb.data,
                            .fields_len = sb.size};
    for (size_t done = 0; done < n; done += GROW_BATCH_EVENTS) {
        size_t k = n - done < GROW_BATCH_EVENTS ? n - done : GROW_BATCH_EVENTS;
        if (cs_log_append(log, evs, k, NULL) != CS_OK) {
            fprintf(stderr, "  grower: append: %s\n", cs_log_errmsg(log));
            return 22;
        }
    }
    msgpack_sbuffer_destroy(&sb);
    free(blob);
    return 0;
}

/* `grow DIR engine MB`: appends through an engine's log, then puts a service_category named
 * "from-grower" (so readers of the catalog see something new too). `grow DIR log MB`: the log
 * alone. */
static int grow_main(const char *dir, const char *mode, unsigned mb)
{
    child_bounds();
    if (strcmp(mode, "log") == 0) {
        cs_log *log;
        if (cs_log_open(dir, &grow_opts, &log) != CS_OK)
            return 20;
        int rc = grow_append(log, mb);
        cs_log_close(log);
        return rc;
    }
    cs_engine *e;
    if (cs_engine_open(dir, &grow_opts, &e) != CS_OK)
        return 20;
    int rc = grow_append(cs_engine_log(e), mb);
    json_t *f = json_pack("{s:s}", "name", "from-grower");
    if (rc == 0 && (!f || cs_engine_put(e, "service_category", 0, f, 0, NULL) != CS_OK)) {
        fprintf(stderr, "  grower: put: %s\n", cs_engine_errmsg(e));
        rc = 23;
    }
    json_decref(f);
    cs_engine_close(e);
    return rc;
}

/* Runs the grower and reaps it. Its exit code, -1 when it could not run or was killed. */
static int run_grower(const char *dir, const char *mode, unsigned mb)
{
    char mbs[16];
    snprintf(mbs, sizeof(mbs), "%u", mb);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        char *argv[] = {"test_log_multiproc", "grow", (char *)dir, (char *)mode, mbs, NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    return cs_run_reap(pid, cs_run_now_ms() + CHILD_DEADLINE_MS);
}

/* ---- the readers (forked before the directory is open in the parent) --------------------- */

/* Which read a reader makes first after the growth: the one that meets MDB_MAP_RESIZED. */
typedef enum first_read {
    FIRST_ENGINE_GET,
    FIRST_ENGINE_LIST,
    FIRST_BRANCH_STATE,
    FIRST_LOG_READER,
    FIRST_COUNT
} first_read;

static const char *const first_names[FIRST_COUNT] = {"cs_engine_get", "cs_engine_list",
                                                     "cs_branch_state_get", "cs_log_reader_open"};

/* The catalog has an item named name. */
static bool list_has(cs_engine *e, const char *name, size_t *n_out)
{
    json_t *arr;
    if (cs_engine_list(e, "service_category", false, &arr) != CS_OK)
        return false;
    bool found = false;
    size_t i;
    json_t *it;
    json_array_foreach(arr, i, it)
    {
        const char *nm =
            json_string_value(json_object_get(it, "name")); /* fields sit beside type, id */
        found = found || (nm && strcmp(nm, name) == 0);
    }
    *n_out = json_array_size(arr);
    json_decref(arr);
    return found;
}

static int say(const char *what, const char *why)
{
    fprintf(stderr, "  %s: %s\n", what, why);
    return 1;
}

/* The log's head is past the grower's events, and its last one (the readers write after it)
 * is large and verifies (cs_log_reader_get checks its checksum). */
static int read_log(cs_log *log, uint64_t head_before, uint64_t *head)
{
    cs_log_reader *r;
    if (cs_log_reader_open(log, &r) != CS_OK) {
        fprintf(stderr, "  reader: open: %s\n", cs_log_errmsg(log));
        return 1;
    }
    cs_log_record rec;
    int rc = 0;
    uint64_t last_grown = head_before + GROW_EVENTS_READERS;
    if (cs_log_reader_head(r, head) != CS_OK || *head <= last_grown)
        rc = 2;
    else if (cs_log_reader_get(r, last_grown, &rec) != CS_OK || rec.event_len < GROW_EVENT_BYTES)
        rc = 3;
    if (rc)
        fprintf(stderr, "  reader: log step %d: %s\n", rc, cs_log_reader_errmsg(r));
    cs_log_reader_close(r);
    return rc;
}

/* One read of kind k in the reader's process; 0 when it saw the grower's data. */
static int read_one(cs_branch *b, first_read k, uint64_t x_id, uint64_t head_before)
{
    cs_engine *e = cs_branch_engine(b);
    json_t *j = NULL;
    cs_branch_state st;
    size_t n = 0;
    uint64_t head = 0;
    switch (k) {
    case FIRST_ENGINE_GET:
        if (cs_engine_get(e, "service_category", x_id, &j) != CS_OK)
            return say("get", cs_engine_errmsg(e));
        json_decref(j);
        return 0;
    case FIRST_ENGINE_LIST: /* "before", "from-grower", and what readers wrote since */
        if (!list_has(e, "from-grower", &n) || n < 2)
            return say("list", cs_engine_errmsg(e));
        return 0;
    case FIRST_BRANCH_STATE:
        if (cs_branch_state_get(b, &st) != CS_OK)
            return say("branch state", cs_branch_errmsg(b));
        return 0;
    case FIRST_LOG_READER:
        return read_log(cs_engine_log(e), head_before, &head);
    case FIRST_COUNT:
        break;
    }
    return 1;
}

/* Blocks until the parent writes a byte on fd (or closes it: then false). */
static bool wait_go(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int rc;
    while ((rc = poll(&p, 1, CHILD_WAIT_MS)) < 0 && errno == EINTR)
        ;
    char c;
    return rc == 1 && read(fd, &c, 1) == 1;
}

/* A reader: opens the directory, reads, says ready, waits for go (the grower is done by then),
 * makes its first read, then every other, then writes. Exit 0, or 10 + the failed step. */
static int reader_main(const char *dir, first_read k, uint64_t x_id, int ready_fd, int go_fd)
{
    child_bounds();
    cs_branch *b;
    if (cs_branch_open(dir, &grow_opts, &b) != CS_OK)
        return 10;
    cs_engine *e = cs_branch_engine(b);
    uint64_t head_before = 0;
    cs_log_reader *r;
    json_t *j = NULL;
    int rc = 0;
    if (cs_engine_get(e, "service_category", x_id, &j) != CS_OK ||
        cs_log_reader_open(cs_engine_log(e), &r) != CS_OK)
        rc = 11;
    json_decref(j);
    if (rc == 0) {
        if (cs_log_reader_head(r, &head_before) != CS_OK)
            rc = 11;
        cs_log_reader_close(r);
    }
    if (rc == 0 && (write(ready_fd, "r", 1) != 1 || !wait_go(go_fd)))
        rc = 12;
    if (rc == 0 && read_one(b, k, x_id, head_before) != 0)
        rc = 13; /* the read that meets the grown map */
    for (int i = 0; rc == 0 && i < FIRST_COUNT; i++)
        if (read_one(b, (first_read)i, x_id, head_before) != 0)
            rc = 14;
    char name[32];
    snprintf(name, sizeof(name), "from-reader-%d", (int)k);
    json_t *f = json_pack("{s:s}", "name", name);
    size_t n = 0;
    if (rc == 0 && (!f || cs_engine_put(e, "service_category", 0, f, 0, NULL) != CS_OK)) {
        fprintf(stderr, "  put: %s\n", cs_engine_errmsg(e));
        rc = 15;
    }
    if (rc == 0 && !list_has(e, name, &n))
        rc = 16;
    json_decref(f);
    cs_branch_close(b);
    return rc;
}

typedef struct reader_proc {
    pid_t pid;
    int ready_fd; /* parent's read end */
    int go_fd;    /* parent's write end */
} reader_proc;

static bool reader_start(reader_proc *rp, const char *dir, first_read k, uint64_t x_id)
{
    int ready[2], go[2];
    if (pipe2(ready, O_CLOEXEC) != 0)
        return false;
    if (pipe2(go, O_CLOEXEC) != 0) {
        close(ready[0]), close(ready[1]);
        return false;
    }
    fflush(stdout);
    fflush(stderr);
    rp->pid = fork();
    if (rp->pid == 0) {
        close(ready[0]), close(go[1]);
        _exit(reader_main(dir, k, x_id, ready[1], go[0]));
    }
    close(ready[1]), close(go[0]);
    rp->ready_fd = ready[0];
    rp->go_fd = go[1];
    if (rp->pid < 0) {
        close(ready[0]), close(go[1]);
        return false;
    }
    return true;
}

/* Makes dir a single store with one service_category; closes it again before any fork. */
static bool dir_prepare(const char *dir, uint64_t *x_id)
{
    cs_branch *b;
    if (cs_branch_open(dir, &grow_opts, &b) != CS_OK)
        return false;
    cs_engine *e = cs_branch_engine(b);
    cs_write_result res = {0};
    json_t *f = json_pack("{s:s}", "name", "before");
    bool ok = f && cs_engine_init(e, "shop", NULL) == CS_OK &&
              cs_engine_put(e, "service_category", 0, f, 0, &res) == CS_OK;
    json_decref(f);
    cs_branch_close(b);
    *x_id = res.id;
    return ok;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* SPEC 5: readers that opened the directory before another process appended 150 MB (growing
 * the map from 4 MiB to 256 MiB) read the new head, events and catalog without writing first,
 * whichever read meets the grown map, and then write. */
static void test_spec5_reads_survive_another_process_growing_the_map(void)
{
    char *dir = cs_test_tmpdir("mp-read");
    CHECK(dir);
    uint64_t x_id = 0;
    bool prepared = dir_prepare(dir, &x_id);
    reader_proc rp[FIRST_COUNT];
    int started = 0;
    bool ready = prepared;
    for (; ready && started < FIRST_COUNT; started++)
        if (!reader_start(&rp[started], dir, (first_read)started, x_id))
            break;
    ready = ready && started == FIRST_COUNT;
    for (int i = 0; ready && i < started; i++) {
        struct pollfd p = {.fd = rp[i].ready_fd, .events = POLLIN};
        char c;
        ready = poll(&p, 1, CHILD_WAIT_MS) == 1 && read(rp[i].ready_fd, &c, 1) == 1;
    }
    int grower = ready ? run_grower(dir, "engine", GROW_MB_READERS) : -1;
    for (int i = 0; i < started; i++) {
        if (grower == 0 && write(rp[i].go_fd, "g", 1) != 1)
            grower = -1;
        close(rp[i].go_fd); /* without a go byte: the reader stops */
    }
    int codes[FIRST_COUNT];
    uint64_t deadline = cs_run_now_ms() + CHILD_DEADLINE_MS;
    for (int i = 0; i < started; i++) {
        codes[i] = cs_run_reap(rp[i].pid, deadline);
        close(rp[i].ready_fd);
        if (codes[i] != 0)
            fprintf(stderr, "  reader whose first read is %s exited %d\n", first_names[i],
                    codes[i]);
    }
    cs_test_rmtree(dir);
    free(dir);
    CHECK(prepared);
    CHECK(started == FIRST_COUNT);
    CHECK(ready);
    CHECK(grower == 0);
    for (int i = 0; i < FIRST_COUNT; i++)
        CHECK(codes[i] == 0);
}

/* SPEC 5 with LMDB's rule: a process may adopt a map another process grew only with no
 * transaction of its own open. A write while this process still holds a read snapshot is
 * refused with a sentence (adopting would unmap the snapshot's pages under it); the snapshot
 * stays readable; once it ends, the write adopts the new size and succeeds. */
static void test_spec5_write_under_own_reader_waits_to_adopt_a_grown_map(void)
{
    char *dir = cs_test_tmpdir("mp-own");
    CHECK(dir);
    cs_log *log = NULL;
    cs_log_reader *r = NULL;
    cs_event ev = {.shop = 1, .actor = CS_STR("t"), .kind = CS_STR("note"), .type = CS_STR("t")};
    uint64_t head = 0, after = 0;
    cs_log_record rec;
    bool opened = cs_log_open(dir, &grow_opts, &log) == CS_OK;
    bool setup = opened && cs_log_append(log, &ev, 1, NULL) == CS_OK &&
                 cs_log_append(log, &ev, 1, NULL) == CS_OK && cs_log_reader_open(log, &r) == CS_OK;
    int grower = setup ? run_grower(dir, "log", GROW_MB_OWN_READER) : -1;
    cs_err refused = grower == 0 ? cs_log_append(log, &ev, 1, NULL) : CS_OK;
    bool said_why = refused != CS_OK && strstr(cs_log_errmsg(log), "another process grew");
    bool snapshot_reads = setup && cs_log_reader_head(r, &head) == CS_OK && head == 2 &&
                          cs_log_reader_get(r, 2, &rec) == CS_OK;
    cs_log_reader_close(r);
    r = NULL;
    bool wrote = grower == 0 && cs_log_append(log, &ev, 1, &after) == CS_OK;
    cs_log_close(log);
    cs_test_rmtree(dir);
    free(dir);
    CHECK(setup);
    CHECK(grower == 0);
    CHECK(refused == CS_IO);
    CHECK(said_why);
    CHECK(snapshot_reads);
    CHECK(wrote);
    CHECK(after > 2 + GROW_MB_OWN_READER * 4u); /* the grower's events came before it */
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "grow") == 0)
        return grow_main(argv[2], argv[3], (unsigned)strtoul(argv[4], NULL, 10));
    RUN(test_spec5_reads_survive_another_process_growing_the_map);
    RUN(test_spec5_write_under_own_reader_waits_to_adopt_a_grown_map);
    return cs_test_finish();
}
