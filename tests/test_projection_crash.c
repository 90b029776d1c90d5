/*
 * test_projection_crash.c: SPEC 4's promise for a branch: "applying a segment and advancing
 * the cursor commit together, so a crash never applies an event twice or skips one".
 *
 * A head office log of about 20,000 events is cut into segments of 500 events (each applied in
 * one transaction) and written to a file. A child process opens a branch directory with the
 * default, durable options and imports the file; the parent SIGKILLs it at moments drawn from a
 * fixed-seed PRNG (scaled by how long a durable segment takes here, so most kills land inside
 * an import), at least CRASH_KILLS_MIN times, then lets it run to the end. After every kill:
 *   - the cursor is a segment boundary and never goes backwards;
 *   - the branch equals a reference branch that applied exactly the segments up to that cursor
 *     without interruption (cs_branch_digest: catalog, origin index, mirror, dirty set, cursor);
 *     an event applied twice, or one skipped, would change the digest.
 * At the end the branch equals the reference branch that imported the whole log.
 *
 * Every wait is bounded (CRASH_CHILD_WAIT_MS), every child is reaped, temp dirs are removed.
 * The head office is built with CS_LOG_NOSYNC: its durability is not under test, the branch's
 * is, and the branch uses default options.
 */
#include "projections/projection.h"
#include "tests/harness.h"

#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#define CRASH_EVENTS 20000u        /* head-office events to replay */
#define CRASH_SEGMENT_EVENTS 500u  /* events per segment, one transaction each */
#define CRASH_SEGMENTS_MAX 128u    /* CRASH_EVENTS / CRASH_SEGMENT_EVENTS, with room */
#define CRASH_KILLS_MIN 15u        /* SIGKILLs before the branch may run to the end */
#define CRASH_ROUNDS_MAX 400u      /* bound on restarts, kills included */
#define CRASH_CHILD_WAIT_MS 120000 /* bound on one child's import of the whole file */

_Static_assert(CRASH_EVENTS / CRASH_SEGMENT_EVENTS + 8 <= CRASH_SEGMENTS_MAX, "segments fit");

static const cs_log_options nosync_opts = {.flags = CS_LOG_NOSYNC};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct crash {
    char *head_dir;
    char *ref_dir;
    char *branch_dir;
    char path[512]; /* the segments file */
    uint64_t shop;
    size_t nseg;
    uint8_t *seg[CRASH_SEGMENTS_MAX];
    size_t seg_len[CRASH_SEGMENTS_MAX];
    uint64_t seg_last[CRASH_SEGMENTS_MAX];
    uint64_t ref_digest[CRASH_SEGMENTS_MAX]; /* the reference branch after segment k */
    uint64_t empty_digest;                   /* ... and bound, before any segment */
    uint64_t seg_ns[CRASH_SEGMENTS_MAX];     /* segment k's durable apply time here */
    uint64_t open_ns;                        /* a child's start: fork, open, bind */
    pid_t child;
} crash;

/* ---- the head office's log --------------------------------------------------------------- */

static bool put(cs_engine *e, const char *type, uint64_t id, json_t *f, cs_write_result *out)
{
    cs_err err = f ? cs_engine_put(e, type, id, f, 0, out) : CS_NO_MEMORY;
    json_decref(f);
    if (err != CS_OK)
        fprintf(stderr, "  put %s: %s: %s\n", type, cs_err_name(err), cs_engine_errmsg(e));
    return err == CS_OK;
}

static json_t *svc(unsigned n, uint64_t cat, unsigned price)
{
    return json_pack("{s:o,s:I,s:[{s:s,s:i}]}", "name", json_sprintf("service %u", n), "category",
                     (json_int_t)cat, "price_table", "tier", "standard", "price_cents", (int)price);
}

/* Bulk service creates with updates, deletes, combos, species, sync points, the switch, the
 * synced types and both modes mixed in, until the log holds CRASH_EVENTS events. */
static bool build_head(cs_engine *h, uint64_t shop, cs_test_rng *r)
{
    uint64_t cats[64], svcs[4096], head = 0;
    size_t ncat = 0, nsvc = 0;
    unsigned n = 0;
    bool on = true, continuous = false, all = true;
    const char *some[] = {"service", "combo"}, *every[] = {"service_category", "service", "combo"};
    cs_write_result w;
    while (head < CRASH_EVENTS) {
        unsigned op = ncat < 3 ? 0 : cs_test_rng_below(r, 100);
        bool ok = true;
        if (op < 4 && ncat < 64) {
            ok = put(h, "service_category", 0, json_pack("{s:o}", "name", json_sprintf("c%u", n++)),
                     &w);
            cats[ncat++] = w.id;
        } else if (op < 50 && nsvc + 40 <= 4096) {
            json_t *batch = json_array();
            unsigned k = 10 + cs_test_rng_below(r, 30);
            for (unsigned i = 0; i < k; i++)
                json_array_append_new(batch,
                                      svc(n++, cats[cs_test_rng_below(r, (unsigned)ncat)], i));
            cs_write_result res[40];
            ok = cs_engine_put_many(h, "service", batch, res) == CS_OK;
            json_decref(batch);
            for (unsigned i = 0; ok && i < k; i++)
                svcs[nsvc++] = res[i].id;
        } else if (op < 85 && nsvc > 0) { /* an update; refused (not_found) when deleted */
            size_t i = cs_test_rng_below(r, (unsigned)nsvc);
            json_t *f =
                svc(n++, cats[cs_test_rng_below(r, (unsigned)ncat)], cs_test_rng_below(r, 1000));
            cs_err err = cs_engine_put(h, "service", svcs[i], f, 0, NULL);
            json_decref(f);
            ok = err == CS_OK || err == CS_NOT_FOUND;
        } else if (op < 89 && nsvc > 0) {
            cs_err err =
                cs_engine_del(h, "service", svcs[cs_test_rng_below(r, (unsigned)nsvc)], 0, NULL);
            ok = err == CS_OK || err == CS_NOT_FOUND;
        } else if (op < 92) {
            ok = cs_engine_sync(h, cs_test_rng_below(r, 2) ? 0 : shop, NULL) == CS_OK;
        } else if (op < 94) {
            ok = put(h, "species", 0, json_pack("{s:o}", "name", json_sprintf("s%u", n++)), NULL);
        } else if (op < 96) {
            ok = cs_engine_shop_switch(h, shop, on = !on) == CS_OK;
        } else if (op < 98) {
            continuous = !continuous;
            ok = cs_engine_network_mode(h, continuous ? "continuous" : "on-trigger", NULL) == CS_OK;
        } else {
            all = !all;
            ok = cs_engine_network_types(h, all ? every : some, all ? 3 : 2, NULL) == CS_OK;
        }
        cs_log_reader *rd;
        if (!ok || cs_log_reader_open(cs_engine_log(h), &rd) != CS_OK)
            return false;
        ok = cs_log_reader_head(rd, &head) == CS_OK;
        cs_log_reader_close(rd);
        if (!ok)
            return false;
    }
    /* The end: switch on, a sync point, so the last segments change the catalog too. */
    return (on || cs_engine_shop_switch(h, shop, true) == CS_OK) &&
           cs_engine_sync(h, 0, NULL) == CS_OK;
}

/* Cuts the whole log into segments of CRASH_SEGMENT_EVENTS, in memory and into the file. */
static bool encode_segments(crash *c, cs_engine *h)
{
    cs_log_reader *rd;
    uint64_t head = 0;
    if (cs_log_reader_open(cs_engine_log(h), &rd) != CS_OK)
        return false;
    bool ok = cs_log_reader_head(rd, &head) == CS_OK;
    FILE *f = ok ? fopen(c->path, "wb") : NULL;
    ok = f != NULL;
    for (uint64_t s = 1; ok && s <= head; c->nseg++) {
        uint64_t last_max =
            s + CRASH_SEGMENT_EVENTS - 1 < head ? s + CRASH_SEGMENT_EVENTS - 1 : head;
        size_t k = c->nseg;
        ok = k < CRASH_SEGMENTS_MAX &&
             cs_segment_encode(rd, s, last_max, CS_SEGMENT_BYTES_MAX, &c->seg[k], &c->seg_len[k],
                               &c->seg_last[k]) == CS_OK &&
             fwrite(c->seg[k], 1, c->seg_len[k], f) == c->seg_len[k];
        if (ok)
            s = c->seg_last[k] + 1;
    }
    if (f && fclose(f) != 0)
        ok = false;
    cs_log_reader_close(rd);
    return ok;
}

/* The reference: the same segments applied without interruption, durable like the child, the
 * digest after each. Also measures a durable segment's time to aim the kills. */
static bool build_reference(crash *c)
{
    cs_branch *b;
    if (cs_branch_open(c->ref_dir, NULL, &b) != CS_OK)
        return false;
    bool ok = cs_branch_bind(b, c->shop) == CS_OK && cs_branch_digest(b, &c->empty_digest) == CS_OK;
    for (size_t k = 0; ok && k < c->nseg; k++) {
        uint64_t applied = 0;
        uint64_t t0 = now_ns();
        ok = cs_branch_apply_segment(b, c->seg[k], c->seg_len[k], &applied) == CS_OK &&
             applied == c->seg_last[k] - (k ? c->seg_last[k - 1] : 0);
        c->seg_ns[k] = now_ns() - t0;
        ok = ok && cs_branch_digest(b, &c->ref_digest[k]) == CS_OK;
    }
    cs_branch_close(b);
    return ok;
}

/* ---- the child and the kills ------------------------------------------------------------- */

typedef enum child_mode {
    CHILD_SEGMENTS,   /* applies the segments after its cursor, each in one transaction */
    CHILD_WHOLE_FILE, /* imports the whole file (cs_branch_import_file skips what is applied) */
    CHILD_OPEN_ONLY,  /* opens and binds: how long a child takes to start */
} child_mode;

/* The child: opens the branch durably and works as `mode` says. Exits 0 on success. */
static void child_import(const crash *c, child_mode mode)
{
    bool whole_file = mode == CHILD_WHOLE_FILE;
    cs_branch *b = NULL;
    cs_branch_state st = {0};
    uint64_t applied = 0;
    cs_err err = cs_branch_open(c->branch_dir, NULL, &b); /* durable: the default */
    if (err == CS_OK)
        err = cs_branch_bind(b, c->shop);
    if (err == CS_OK && whole_file)
        err = cs_branch_import_file(b, c->path, &applied);
    if (err == CS_OK && !whole_file)
        err = cs_branch_state_get(b, &st);
    for (size_t k = 0; err == CS_OK && mode == CHILD_SEGMENTS && k < c->nseg; k++)
        if (c->seg_last[k] > st.cursor)
            err = cs_branch_apply_segment(b, c->seg[k], c->seg_len[k], &applied);
    if (err != CS_OK)
        fprintf(stderr, "  child: %s: %s\n", cs_err_name(err), b ? cs_branch_errmsg(b) : "");
    cs_branch_close(b);
    _exit(err == CS_OK ? 0 : 1);
}

/* Waits for the child, killing it with SIGKILL after kill_after_ns when that is not 0, and
 * anyway after CRASH_CHILD_WAIT_MS (then false: a child that hangs is a failure). *status gets
 * its wait status. The child is always reaped before this returns. */
static bool child_wait(crash *c, uint64_t kill_after_ns, int *status)
{
    uint64_t start = now_ns();
    bool killed = false, hung = false;
    for (;;) {
        pid_t p = waitpid(c->child, status, WNOHANG);
        if (p == c->child) {
            c->child = 0;
            return !hung;
        }
        if (p < 0 && errno != EINTR) {
            c->child = 0;
            return false;
        }
        uint64_t el = now_ns() - start;
        hung = el >= (uint64_t)CRASH_CHILD_WAIT_MS * 1000000u;
        if (!killed && ((kill_after_ns && el >= kill_after_ns) || hung)) {
            if (hung)
                fprintf(stderr, "  the child did not finish in %d ms\n", CRASH_CHILD_WAIT_MS);
            kill(c->child, SIGKILL);
            killed = true;
        }
        struct timespec ts = {0, kill_after_ns && !killed ? 200000 : 2000000};
        nanosleep(&ts, NULL);
    }
}

/* Opens the crashed branch in this process and checks it against the reference. */
static bool check_after_crash(const crash *c, uint64_t *cursor)
{
    cs_branch *b;
    cs_branch_state st;
    uint64_t d = 0;
    if (cs_branch_open(c->branch_dir, NULL, &b) != CS_OK)
        return false;
    bool ok = cs_branch_state_get(b, &st) == CS_OK && cs_branch_digest(b, &d) == CS_OK;
    cs_branch_close(b);
    if (!ok)
        return false;
    if (st.cursor < *cursor) {
        fprintf(stderr, "  the cursor went back from %llu to %llu\n", (unsigned long long)*cursor,
                (unsigned long long)st.cursor);
        return false;
    }
    *cursor = st.cursor;
    if (st.shop == 0) /* killed before its bind committed: nothing applied either */
        return st.cursor == 0;
    if (st.cursor == 0)
        return d == c->empty_digest;
    for (size_t k = 0; k < c->nseg; k++)
        if (c->seg_last[k] == st.cursor) {
            if (d != c->ref_digest[k])
                fprintf(stderr, "  at cursor %llu the branch differs from the reference\n",
                        (unsigned long long)st.cursor);
            return d == c->ref_digest[k];
        }
    fprintf(stderr, "  cursor %llu is not a segment boundary: a segment applied in part\n",
            (unsigned long long)st.cursor);
    return false;
}

/* A first child creates and binds the branch directory, unkilled (an environment whose
 * creation is cut short is not a crash this test is about), and shows how long a child takes
 * to start, to aim the kills. */
static bool child_start(crash *c)
{
    uint64_t t0 = now_ns();
    int status = 0;
    fflush(NULL);
    if ((c->child = fork()) < 0)
        return false;
    if (c->child == 0)
        child_import(c, CHILD_OPEN_ONLY);
    if (!child_wait(c, 0, &status) || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return false;
    c->open_ns = now_ns() - t0;
    return true;
}

/* When to kill the next child: within its startup or the next two segments it will apply
 * (their durable time as the reference measured it), so most kills land inside a segment's
 * transaction, some inside its commit, some before anything happens. */
static uint64_t kill_time(const crash *c, cs_test_rng *r, uint64_t cursor)
{
    size_t k = 0;
    while (k < c->nseg && c->seg_last[k] <= cursor)
        k++;
    uint64_t span = c->open_ns;
    for (size_t j = k; j < k + 2 && j < c->nseg; j++)
        span += 2 * c->seg_ns[j]; /* a child runs slower than the warm reference did */
    return 1 + cs_test_rng_next(r) % span;
}

static bool crash_rounds(crash *c, cs_test_rng *r)
{
    unsigned kills = 0, rounds = 0, mid = 0;
    uint64_t cursor = 0, last = c->seg_last[c->nseg - 1];
    int status = 0;
    if (!child_start(c))
        return false;
    while (rounds++ < CRASH_ROUNDS_MAX) {
        bool aim = kills < CRASH_KILLS_MIN;
        uint64_t after = aim ? kill_time(c, r, cursor) : 0;
        fflush(NULL);
        c->child = fork();
        if (c->child < 0)
            return false;
        if (c->child == 0)
            child_import(c, aim ? CHILD_SEGMENTS : CHILD_WHOLE_FILE);
        if (!child_wait(c, after, &status))
            return false;
        bool was_killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        if (!was_killed && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            return false;
        kills += was_killed;
        uint64_t before = cursor;
        if (!check_after_crash(c, &cursor))
            return false;
        mid += was_killed && cursor > before && cursor < last; /* killed while importing */
        if (cursor == last && kills >= CRASH_KILLS_MIN) {
            printf("  %u rounds, %u kills (%u after the import had made progress), a child "
                   "starts in %.1f ms\n",
                   rounds, kills, mid, (double)c->open_ns / 1e6);
            return true;
        }
        if (cursor == last) { /* done too early: start again from an empty branch */
            cs_test_rmtree(c->branch_dir);
            if (mkdir(c->branch_dir, 0700) != 0 || !child_start(c))
                return false;
            cursor = 0;
        }
    }
    return false;
}

static bool crash_setup(crash *c, cs_test_rng *r)
{
    c->head_dir = cs_test_tmpdir("proj-crash-h");
    c->ref_dir = cs_test_tmpdir("proj-crash-r");
    c->branch_dir = cs_test_tmpdir("proj-crash-b");
    if (!c->head_dir || !c->ref_dir || !c->branch_dir)
        return false;
    snprintf(c->path, sizeof(c->path), "%s/segments.cslog", c->head_dir);
    cs_engine *h;
    uint64_t self;
    if (cs_engine_open(c->head_dir, &nosync_opts, &h) != CS_OK)
        return false;
    bool ok = cs_engine_init(h, "Head office", &self) == CS_OK &&
              cs_engine_network_create(h, "Pet chain") == CS_OK &&
              cs_engine_shop_add(h, "Downtown", "branch-password", &c->shop) == CS_OK &&
              build_head(h, c->shop, r) && encode_segments(c, h);
    cs_engine_close(h); /* before any fork: the child must not inherit an open environment */
    return ok && build_reference(c);
}

static void crash_free(crash *c)
{
    if (c->child > 0) {
        int status;
        kill(c->child, SIGKILL);
        waitpid(c->child, &status, 0);
    }
    for (size_t k = 0; k < c->nseg; k++)
        free(c->seg[k]);
    char *dirs[3] = {c->head_dir, c->ref_dir, c->branch_dir};
    for (int i = 0; i < 3; i++) {
        if (dirs[i])
            cs_test_rmtree(dirs[i]);
        free(dirs[i]);
    }
}

/* SPEC 4: a branch killed at any moment of an import resumes from its cursor; no event is
 * applied twice or skipped, and the end result equals an uninterrupted import. */
static void test_projection_apply_survives_kill_9(void)
{
    crash *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    cs_test_rng r = {20240611};
    bool ok = crash_setup(c, &r);
    uint64_t total_ns = 0;
    for (size_t k = 0; k < c->nseg; k++)
        total_ns += c->seg_ns[k];
    printf("  seed %llu: %zu segments, a durable import takes %.0f ms here\n",
           (unsigned long long)20240611, c->nseg, (double)total_ns / 1e6);
    ok = ok && crash_rounds(c, &r);
    uint64_t d = 0; /* the end: equal to the uninterrupted reference */
    cs_branch *b = NULL;
    if (ok && cs_branch_open(c->branch_dir, NULL, &b) == CS_OK)
        ok = cs_branch_digest(b, &d) == CS_OK && d == c->ref_digest[c->nseg - 1];
    else
        ok = false;
    cs_branch_close(b);
    crash_free(c);
    free(c);
    CHECK(ok);
}

int main(void)
{
    RUN(test_projection_apply_survives_kill_9);
    return cs_test_finish();
}
