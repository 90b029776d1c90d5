/*
 * test_audit.c: R14 and the audit's contract (projections/projection.h, "audit"), through the
 * library and through the real `chainsync` binary ($CS_BIN):
 *
 *   - tampering with a copy of a head office's directory (one byte of an event changed, an
 *     event removed, two events swapped, the state edited behind the log's back, a checkpoint
 *     damaged) is found by `audit verify`, which names the first bad sequence or the differing
 *     item, and exits 3;
 *   - a history after a series of edits lists each version with its actor, time and changes;
 *   - as-of by sequence and by time returns the states recorded at those moments, from
 *     checkpoints and by full replay alike, and replays no more than the checkpoint interval;
 *   - what a branch should hold follows its sync points; a branch directory edited behind its
 *     projection's back is reported by `audit verify --branch`.
 *
 * Copies of a directory are made by copying data.mdb while nothing has it open (LMDB recreates
 * lock.mdb); tampering goes through the raw LMDB API, as a careless tool or a bad disk would.
 */
#include "projections/projection.h"
#include "tests/harness.h"
#include "tests/run.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

/* A CLI command here replays at most a few hundred events: a minute means it is stuck. */
#define RUN_DEADLINE_MS 60000
/* Checkpoints in these tests: small, so a short log crosses several. */
#define TEST_EVERY 4

/* ---- directories ------------------------------------------------------------------------- */

/* Copies src/data.mdb into a fresh directory (nothing may have src open). Owned by the caller. */
static char *dir_copy(const char *src, const char *tag)
{
    char *dst = cs_test_tmpdir(tag);
    char from[512], to[512];
    if (!dst)
        return NULL;
    snprintf(from, sizeof(from), "%s/data.mdb", src);
    snprintf(to, sizeof(to), "%s/data.mdb", dst);
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    bool ok = in >= 0 && out >= 0;
    char buf[65536];
    ssize_t n;
    while (ok && (n = read(in, buf, sizeof(buf))) > 0)
        ok = write(out, buf, (size_t)n) == n;
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) != 0)
        ok = false;
    if (!ok) {
        cs_test_rmtree(dst);
        free(dst);
        return NULL;
    }
    return dst;
}

static void dir_free(char *dir)
{
    if (dir)
        cs_test_rmtree(dir);
    free(dir);
}

/* ---- raw LMDB tampering ------------------------------------------------------------------ */

typedef struct raw {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
} raw;

static bool raw_open(raw *r, const char *dir, const char *db)
{
    memset(r, 0, sizeof(*r));
    if (mdb_env_create(&r->env) || mdb_env_set_maxdbs(r->env, 32) ||
        mdb_env_set_mapsize(r->env, (size_t)64 << 20) || mdb_env_open(r->env, dir, 0, 0600) ||
        mdb_txn_begin(r->env, NULL, 0, &r->txn) || mdb_dbi_open(r->txn, db, 0, &r->dbi))
        return false;
    return true;
}

static bool raw_close(raw *r, bool commit)
{
    int rc = 0;
    if (r->txn)
        rc = commit ? mdb_txn_commit(r->txn) : (mdb_txn_abort(r->txn), 0);
    if (r->env)
        mdb_env_close(r->env);
    return rc == 0;
}

static void key_u64(uint8_t kb[8], uint64_t v)
{
    cs_be64_put(kb, v);
}

/* Flips one byte in the middle of event seq's msgpack. */
static bool tamper_flip_byte(const char *dir, uint64_t seq)
{
    raw r;
    uint8_t kb[8], buf[4096];
    key_u64(kb, seq);
    MDB_val k = {8, kb}, v;
    bool ok = raw_open(&r, dir, "events") && mdb_get(r.txn, r.dbi, &k, &v) == 0 &&
              v.mv_size <= sizeof(buf) && v.mv_size > 20;
    if (ok) {
        memcpy(buf, v.mv_data, v.mv_size);
        buf[16 + (v.mv_size - 16) / 2] ^= 0x01;
        v.mv_data = buf;
        ok = mdb_put(r.txn, r.dbi, &k, &v, 0) == 0;
    }
    return raw_close(&r, ok) && ok;
}

static bool tamper_remove_event(const char *dir, uint64_t seq)
{
    raw r;
    uint8_t kb[8];
    key_u64(kb, seq);
    MDB_val k = {8, kb};
    bool ok = raw_open(&r, dir, "events") && mdb_del(r.txn, r.dbi, &k, NULL) == 0;
    return raw_close(&r, ok) && ok;
}

static bool tamper_swap_events(const char *dir, uint64_t a, uint64_t b)
{
    raw r;
    uint8_t ka[8], kb[8], va_buf[4096], vb_buf[4096];
    key_u64(ka, a);
    key_u64(kb, b);
    MDB_val k1 = {8, ka}, k2 = {8, kb}, v1, v2;
    bool ok = raw_open(&r, dir, "events") && mdb_get(r.txn, r.dbi, &k1, &v1) == 0 &&
              mdb_get(r.txn, r.dbi, &k2, &v2) == 0 && v1.mv_size <= sizeof(va_buf) &&
              v2.mv_size <= sizeof(vb_buf);
    if (ok) {
        memcpy(va_buf, v1.mv_data, v1.mv_size);
        memcpy(vb_buf, v2.mv_data, v2.mv_size);
        MDB_val n1 = {v2.mv_size, vb_buf}, n2 = {v1.mv_size, va_buf};
        ok = mdb_put(r.txn, r.dbi, &k1, &n1, 0) == 0 && mdb_put(r.txn, r.dbi, &k2, &n2, 0) == 0;
    }
    return raw_close(&r, ok) && ok;
}

/* Replaces the first occurrence of `from` by `to` (same length) in the first record of db that
 * holds it. *key_out (9 bytes for items) gets that record's key when not NULL. */
static bool tamper_replace(const char *dir, const char *db, const char *from, const char *to,
                           uint8_t *key_out, size_t key_len)
{
    raw r;
    size_t n = strlen(from);
    if (n != strlen(to) || !raw_open(&r, dir, db))
        return raw_close(&r, false) && false;
    MDB_cursor *cur;
    MDB_val k, v;
    bool ok = false;
    if (mdb_cursor_open(r.txn, r.dbi, &cur) == 0) {
        while (!ok && mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
            uint8_t *hit = memmem(v.mv_data, v.mv_size, from, n);
            if (!hit || v.mv_size > 4096)
                continue;
            uint8_t buf[4096], kbuf[64];
            memcpy(buf, v.mv_data, v.mv_size);
            memcpy(buf + (hit - (uint8_t *)v.mv_data), to, n);
            if (k.mv_size > sizeof(kbuf))
                break;
            memcpy(kbuf, k.mv_data, k.mv_size);
            if (key_out && k.mv_size == key_len)
                memcpy(key_out, k.mv_data, key_len);
            MDB_val nk = {k.mv_size, kbuf}, nv = {v.mv_size, buf};
            mdb_cursor_close(cur);
            cur = NULL;
            ok = mdb_put(r.txn, r.dbi, &nk, &nv, 0) == 0;
        }
        if (cur)
            mdb_cursor_close(cur);
    }
    return raw_close(&r, ok) && ok;
}

/* ---- the real binary --------------------------------------------------------------------- */

typedef cs_run_result run_result;

static void run_free(run_result *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof(*r));
}

/* Runs chainsync with args (NULL-terminated), bounded by RUN_DEADLINE_MS. */
static bool run(run_result *r, const char *const *args)
{
    return cs_run(r, NULL, NULL, args, RUN_DEADLINE_MS);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Runs `audit verify --data dir [--branch b]`; true when exit code and stderr are as wanted. */
static bool cli_verify(const char *dir, const char *branch, int want_exit, const char *needle)
{
    run_result r;
    bool ok = branch ? run(&r, ARGS("audit", "verify", "--data", dir, "--branch", branch))
                     : run(&r, ARGS("audit", "verify", "--data", dir));
    ok = ok && r.exit_code == want_exit;
    if (ok && want_exit == 3)
        ok = strncmp(r.err, "error: corrupt: ", 16) == 0 && strstr(r.out, "verify: FAILED");
    if (ok && want_exit == 0)
        ok = strstr(r.out, "verify: ok") != NULL;
    if (ok && needle)
        ok = strstr(r.err, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  exit %d\n  stdout: %s\n  stderr: %s\n", r.exit_code, r.out, r.err);
    run_free(&r);
    return ok;
}

/* ---- a head office ---------------------------------------------------------------------- */

typedef struct head {
    char *dir;
    cs_engine *e;
    uint64_t shop;
    uint64_t category;
    uint64_t service; /* "Bath", edited by ana and bob */
    uint64_t branch;  /* a branch added after the first services */
} head;

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

static cs_err put_text(cs_engine *e, const char *type, uint64_t id, const char *text,
                       uint64_t *id_out)
{
    json_t *j = json_loads(text, 0, NULL);
    cs_write_result w;
    cs_err err = j ? cs_engine_put(e, type, id, j, 0, &w) : CS_INVALID_INPUT;
    json_decref(j);
    if (err == CS_OK && id_out)
        *id_out = w.id;
    return err;
}

static cs_err put_service(head *h, uint64_t id, const char *name, int cents, const char *desc,
                          uint64_t *id_out)
{
    char text[512];
    snprintf(text, sizeof(text),
             "{\"name\":\"%s\",\"category\":%llu,%s%s%s\"price_table\":[{\"tier\":\"small\","
             "\"price_cents\":%d}]}",
             name, (unsigned long long)h->category, desc ? "\"description\":\"" : "",
             desc ? desc : "", desc ? "\"," : "", cents);
    return put_text(h->e, "service", id, text, id_out);
}

/* init, network, a category and the Bath service at version 1 (events 1..4). */
static bool head_open(head *h, const char *tag)
{
    memset(h, 0, sizeof(*h));
    h->dir = cs_test_tmpdir(tag);
    return h->dir && cs_engine_open(h->dir, NULL, &h->e) == CS_OK &&
           cs_engine_init(h->e, "Pets HQ", &h->shop) == CS_OK &&
           cs_engine_network_create(h->e, "Pets Chain") == CS_OK &&
           put_text(h->e, "service_category", 0, "{\"name\":\"Grooming\"}", &h->category) ==
               CS_OK &&
           (cs_engine_set_actor(h->e, "ana"), put_service(h, 0, "Bath", 3000, NULL, &h->service)) ==
               CS_OK;
}

/* Closes the engine (so the directory may be copied) and keeps the directory. */
static void head_close_engine(head *h)
{
    cs_engine_close(h->e);
    h->e = NULL;
}

static void head_free(head *h)
{
    cs_engine_close(h->e);
    dir_free(h->dir);
    memset(h, 0, sizeof(*h));
}

/* A small, varied log: edits by two actors, a branch, a sync point, a delete (about 14 events). */
static bool head_history(head *h)
{
    uint64_t other = 0;
    cs_engine_set_actor(h->e, "bob");
    bool ok = put_service(h, h->service, "Bath", 3500, "with brush", NULL) == CS_OK &&
              put_service(h, 0, "Haircut", 5000, NULL, &other) == CS_OK &&
              cs_engine_shop_add(h->e, "Downtown", "branch-password", &h->branch) == CS_OK;
    cs_engine_set_actor(h->e, "ana");
    ok = ok && put_service(h, h->service, "Bath & Dry", 3500, NULL, NULL) == CS_OK &&
         cs_engine_sync(h->e, 0, NULL) == CS_OK &&
         put_text(h->e, "species", 0, "{\"name\":\"Dog\"}", NULL) == CS_OK &&
         cs_engine_del(h->e, "service", other, 0, NULL) == CS_OK &&
         put_service(h, h->service, "Bath & Dry", 3900, NULL, NULL) == CS_OK;
    return ok;
}

static uint64_t log_head_of(cs_engine *e)
{
    cs_log_reader *r;
    uint64_t head = 0;
    if (cs_log_reader_open(cs_engine_log(e), &r) != CS_OK)
        return 0;
    cs_log_reader_head(r, &head);
    cs_log_reader_close(r);
    return head;
}

/* A head office with history, closed, ready to copy. */
static bool head_ready(head *h, const char *tag)
{
    if (!head_open(h, tag) || !head_history(h))
        return false;
    head_close_engine(h);
    return true;
}

/* Verifies dir through the library; *report owned by the caller. */
static cs_err lib_verify(const char *dir, const char *branch, json_t **report, char *msg,
                         size_t msg_len)
{
    cs_engine *e = NULL;
    cs_audit *a = NULL;
    *report = NULL;
    cs_err err = cs_engine_open(dir, NULL, &e);
    if (err == CS_OK)
        err = cs_audit_open(e, &a);
    if (err == CS_OK)
        err = cs_audit_verify(a, branch, report);
    if (a && msg)
        snprintf(msg, msg_len, "%s", cs_audit_errmsg(a));
    cs_audit_close(a);
    cs_engine_close(e);
    return err;
}

static json_t *part_diff0(const json_t *report, const char *part)
{
    return json_array_get(json_object_get(json_object_get(report, part), "differences"), 0);
}

/* ---- tampering is found ------------------------------------------------------------------ */

/* R14, SPEC 4: an untouched head office verifies, through the library and the binary. */
static void test_r14_verify_passes_on_an_untampered_head_office(void)
{
    head h;
    CHECK(head_ready(&h, "audit-ok"));
    json_t *rep;
    CHECK_OK(lib_verify(h.dir, NULL, &rep, NULL, 0));
    CHECK(json_is_true(json_object_get(rep, "ok")));
    CHECK(json_integer_value(json_object_get(json_object_get(rep, "log"), "events")) >= 12);
    json_decref(rep);
    CHECK(cli_verify(h.dir, NULL, 0, NULL));
    head_free(&h);
}

/* SPEC 4: one changed byte in an event is found and its sequence named. */
static void test_r14_verify_names_the_event_with_a_changed_byte(void)
{
    head h;
    CHECK(head_ready(&h, "audit-byte"));
    char *copy = dir_copy(h.dir, "audit-byte-copy");
    CHECK(copy);
    CHECK(tamper_flip_byte(copy, 7));
    json_t *rep;
    char msg[512];
    CHECK(lib_verify(copy, NULL, &rep, msg, sizeof(msg)) == CS_CORRUPT);
    CHECK(json_integer_value(json_object_get(json_object_get(rep, "log"), "bad_seq")) == 7);
    CHECK(strstr(msg, "event 7"));
    json_decref(rep);
    CHECK(cli_verify(copy, NULL, 3, "event 7"));
    CHECK(cli_verify(h.dir, NULL, 0, NULL)); /* the original is untouched */
    dir_free(copy);
    head_free(&h);
}

/* SPEC 4: a removed event is found: the first missing sequence is named. */
static void test_r14_verify_names_a_removed_event(void)
{
    head h;
    CHECK(head_ready(&h, "audit-del"));
    char *copy = dir_copy(h.dir, "audit-del-copy");
    CHECK(copy);
    CHECK(tamper_remove_event(copy, 5));
    json_t *rep;
    CHECK(lib_verify(copy, NULL, &rep, NULL, 0) == CS_CORRUPT);
    CHECK(json_integer_value(json_object_get(json_object_get(rep, "log"), "bad_seq")) == 5);
    json_decref(rep);
    CHECK(cli_verify(copy, NULL, 3, "event 5"));
    dir_free(copy);
    head_free(&h);
}

/* SPEC 4: two events swapped are found at the first of them. */
static void test_r14_verify_names_swapped_events(void)
{
    head h;
    CHECK(head_ready(&h, "audit-swap"));
    char *copy = dir_copy(h.dir, "audit-swap-copy");
    CHECK(copy);
    CHECK(tamper_swap_events(copy, 6, 9));
    json_t *rep;
    CHECK(lib_verify(copy, NULL, &rep, NULL, 0) == CS_CORRUPT);
    CHECK(json_integer_value(json_object_get(json_object_get(rep, "log"), "bad_seq")) == 6);
    json_decref(rep);
    CHECK(cli_verify(copy, NULL, 3, "event 6"));
    dir_free(copy);
    head_free(&h);
}

/* SPEC 4: the state edited behind the log's back differs from a replay; the item and the field
 * are named. */
static void test_r14_verify_names_an_item_edited_behind_the_logs_back(void)
{
    head h;
    CHECK(head_ready(&h, "audit-state"));
    char *copy = dir_copy(h.dir, "audit-state-copy");
    CHECK(copy);
    uint8_t key[9] = {0};
    CHECK(tamper_replace(copy, "items", "Haircut", "Hairkut", key, 9));
    json_t *rep;
    char msg[512], want[64];
    CHECK(lib_verify(copy, NULL, &rep, msg, sizeof(msg)) == CS_CORRUPT);
    json_t *log = json_object_get(rep, "log"), *d = part_diff0(rep, "state");
    CHECK(json_is_true(json_object_get(log, "ok")));
    CHECK(d && strcmp(json_string_value(json_object_get(d, "type")), "service") == 0);
    uint64_t id = cs_be64_get(key + 1);
    CHECK((uint64_t)json_integer_value(json_object_get(d, "id")) == id);
    json_t *c = json_array_get(json_object_get(d, "changes"), 0);
    CHECK(c && strcmp(json_string_value(json_object_get(c, "field")), "name") == 0);
    CHECK(strcmp(json_string_value(json_object_get(c, "new")), "Hairkut") == 0);
    CHECK(strcmp(json_string_value(json_object_get(c, "old")), "Haircut") == 0);
    /* the sentence names what differs, and only that: version and flags are the replay's */
    const char *what = json_string_value(json_object_get(d, "what"));
    CHECK(what && strstr(what, "fields differ: name"));
    CHECK(!strstr(what, "version") && !strstr(what, "archived") && !strstr(what, "origin"));
    json_decref(rep);
    snprintf(want, sizeof(want), "service %llu", (unsigned long long)id);
    CHECK(strstr(msg, want));
    CHECK(cli_verify(copy, NULL, 3, want));
    dir_free(copy);
    head_free(&h);
}

/* Checkpoints are derived data queries trust: a damaged one is found by verify and refused by
 * as-of, and a rebuild repairs it. */
static void test_r14_verify_finds_a_damaged_checkpoint_and_rebuild_repairs_it(void)
{
    head h;
    CHECK(head_open(&h, "audit-ckpt"));
    CHECK(head_history(&h));
    cs_audit *a;
    cs_audit_ckpt_info info;
    CHECK_OK(cs_audit_open(h.e, &a));
    CHECK_OK(cs_audit_checkpoint(a, TEST_EVERY, false, &info));
    CHECK(info.every == TEST_EVERY && info.count >= 2 && info.last == info.count * TEST_EVERY);
    cs_audit_close(a);
    head_close_engine(&h);
    char *copy = dir_copy(h.dir, "audit-ckpt-copy");
    CHECK(copy);
    CHECK(tamper_replace(copy, "ckpt", "Bath", "Bash", NULL, 0));
    json_t *rep;
    CHECK(lib_verify(copy, NULL, &rep, NULL, 0) == CS_CORRUPT);
    json_t *d = part_diff0(rep, "checkpoints");
    CHECK(d && strcmp(json_string_value(json_object_get(d, "type")), "checkpoint") == 0);
    uint64_t bad = (uint64_t)json_integer_value(json_object_get(d, "id"));
    CHECK(bad > 0 && bad % TEST_EVERY == 0);
    CHECK(strstr(json_string_value(json_object_get(d, "what")), "damaged"));
    json_decref(rep);
    CHECK(cli_verify(copy, NULL, 3, "checkpoint"));
    /* as-of refuses the damaged checkpoint rather than answer from it */
    cs_engine *e;
    cs_audit_state *s = NULL;
    CHECK_OK(cs_engine_open(copy, NULL, &e));
    CHECK_OK(cs_audit_open(e, &a));
    CHECK(cs_audit_state_at(a, bad, NULL, 0, &s) == CS_CORRUPT);
    CHECK(strstr(cs_audit_errmsg(a), "damaged"));
    CHECK_OK(cs_audit_checkpoint(a, 0, true, &info));
    cs_audit_close(a);
    cs_engine_close(e);
    CHECK_OK(lib_verify(copy, NULL, &rep, NULL, 0));
    json_decref(rep);
    dir_free(copy);
    head_free(&h);
}

/* Puts one u64 of the `audit` database (its checkpoint records) behind the audit's back. */
static bool tamper_audit_meta(const char *dir, const char *key, uint64_t val)
{
    raw r;
    uint8_t vb[8];
    key_u64(vb, val);
    MDB_val k = {strlen(key), (void *)key}, v = {8, vb};
    bool ok = raw_open(&r, dir, "audit") && mdb_put(r.txn, r.dbi, &k, &v, 0) == 0;
    return raw_close(&r, ok) && ok;
}

/* audit_int.h invariant 2 (checkpoints at multiples of `every`) is read from disk: a last
 * checkpoint off the interval is reported corrupt, never trusted (nor asserted on), and a
 * rebuild repairs it. */
static void test_r14_checkpoint_records_off_their_interval_are_corrupt(void)
{
    head h;
    CHECK(head_open(&h, "audit-meta"));
    CHECK(head_history(&h));
    cs_audit *a;
    cs_audit_ckpt_info info;
    CHECK_OK(cs_audit_open(h.e, &a));
    CHECK_OK(cs_audit_checkpoint(a, TEST_EVERY, false, &info));
    CHECK(info.head >= 2 * TEST_EVERY);
    cs_audit_close(a);
    head_close_engine(&h);
    CHECK(tamper_audit_meta(h.dir, "ckpt_last", 1));
    cs_audit_state *s = NULL;
    CHECK_OK(cs_engine_open(h.dir, NULL, &h.e));
    CHECK_OK(cs_audit_open(h.e, &a));
    CHECK(cs_audit_checkpoint(a, 0, false, &info) == CS_CORRUPT);
    CHECK(strstr(cs_audit_errmsg(a), "inconsistent"));
    CHECK(cs_audit_state_at(a, info.head, NULL, 0, &s) == CS_CORRUPT);
    CHECK_OK(cs_audit_checkpoint(a, 0, true, &info));
    CHECK(info.every == TEST_EVERY && info.last % TEST_EVERY == 0 && info.count >= 2);
    cs_audit_close(a);
    head_free(&h);
}

/* A log that verifies but holds an event the engine cannot apply (written around the engine):
 * the replay stops there and verify says so, naming the event, instead of failing to run. */
static void test_r14_verify_reports_an_event_the_engine_cannot_apply(void)
{
    head h;
    CHECK(head_open(&h, "audit-bogus"));
    cs_event ev = {.shop = h.shop, .actor = CS_STR("tool"), .kind = CS_STR("bogus")};
    uint64_t seq = 0;
    CHECK_OK(cs_log_append(cs_engine_log(h.e), &ev, 1, &seq));
    head_close_engine(&h);
    json_t *rep;
    char msg[512], want[32];
    CHECK(lib_verify(h.dir, NULL, &rep, msg, sizeof(msg)) == CS_CORRUPT);
    CHECK(json_is_true(json_object_get(json_object_get(rep, "log"), "ok")));
    json_t *d = part_diff0(rep, "state");
    CHECK(d && strcmp(json_string_value(json_object_get(d, "type")), "replay") == 0);
    snprintf(want, sizeof(want), "event %llu", (unsigned long long)seq);
    CHECK(strstr(json_string_value(json_object_get(d, "what")), want));
    json_decref(rep);
    CHECK(cli_verify(h.dir, NULL, 3, want));
    head_free(&h);
}

/* ---- history ----------------------------------------------------------------------------- */

/* The time of event seq, from the log. */
static uint64_t event_time(cs_engine *e, uint64_t seq)
{
    cs_log_reader *r;
    cs_event_decoder *dec;
    cs_log_record rec;
    cs_event_view ev;
    uint64_t t = 0;
    if (cs_log_reader_open(cs_engine_log(e), &r) != CS_OK)
        return 0;
    if (cs_event_decoder_new(&dec) == CS_OK) {
        if (cs_log_reader_get(r, seq, &rec) == CS_OK &&
            cs_event_decode(dec, rec.event, rec.event_len, &ev) == CS_OK)
            t = ev.time_ms;
        cs_event_decoder_free(dec);
    }
    cs_log_reader_close(r);
    return t;
}

static bool change_is(const json_t *v, size_t i, const char *field, const char *op)
{
    json_t *c = json_array_get(json_object_get(v, "changes"), i);
    return c && strcmp(json_string_value(json_object_get(c, "field")), field) == 0 &&
           strcmp(json_string_value(json_object_get(c, "op")), op) == 0;
}

/* R14: every version of an item, oldest first, with its actor, time, kind of change and the
 * fields that changed. */
static void test_r14_history_lists_each_version_with_actor_time_and_changes(void)
{
    head h;
    CHECK(head_open(&h, "audit-hist"));
    CHECK(head_history(&h));
    cs_audit *a;
    json_t *v = NULL;
    CHECK_OK(cs_audit_open(h.e, &a));
    CHECK_OK(cs_audit_history(a, "service", h.service, &v));
    CHECK(json_array_size(v) == 4);
    static const char *const actors[] = {"ana", "bob", "ana", "ana"};
    static const char *const changes[] = {"created", "updated", "updated", "updated"};
    uint64_t prev_seq = 0;
    for (size_t i = 0; i < 4; i++) {
        json_t *x = json_array_get(v, i);
        uint64_t seq = (uint64_t)json_integer_value(json_object_get(x, "seq"));
        CHECK(seq > prev_seq);
        prev_seq = seq;
        CHECK(strcmp(json_string_value(json_object_get(x, "actor")), actors[i]) == 0);
        CHECK(strcmp(json_string_value(json_object_get(x, "change")), changes[i]) == 0);
        CHECK((uint64_t)json_integer_value(json_object_get(x, "version")) == i + 1);
        CHECK((uint64_t)json_integer_value(json_object_get(x, "time")) == event_time(h.e, seq));
        CHECK((uint64_t)json_integer_value(json_object_get(x, "shop")) == h.shop);
    }
    /* v2 (bob): description added, price changed; v3: name changed, description removed */
    json_t *v2 = json_array_get(v, 1), *v3 = json_array_get(v, 2), *v4 = json_array_get(v, 3);
    CHECK(json_array_size(json_object_get(v2, "changes")) == 2);
    CHECK(change_is(v2, 0, "description", "added") && change_is(v2, 1, "price_table", "changed"));
    CHECK(change_is(v3, 0, "name", "changed") && change_is(v3, 1, "description", "removed"));
    json_t *c = json_array_get(json_object_get(v3, "changes"), 0);
    CHECK(strcmp(json_string_value(json_object_get(c, "old")), "Bath") == 0);
    CHECK(strcmp(json_string_value(json_object_get(c, "new")), "Bath & Dry") == 0);
    CHECK(json_array_size(json_object_get(v4, "changes")) == 1);
    json_decref(v);
    /* a delete is a version too; the index follows new writes */
    CHECK_OK(cs_engine_del(h.e, "service", h.service, 0, NULL));
    CHECK_OK(cs_audit_history(a, "service", h.service, &v));
    CHECK(json_array_size(v) == 5);
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(v, 4), "change")), "deleted") ==
          0);
    json_decref(v);
    /* refusals */
    CHECK(cs_audit_history(a, "nope", 1, &v) == CS_UNKNOWN_TYPE);
    CHECK(cs_audit_history(a, "staff", 1, &v) == CS_INVALID_INPUT);
    CHECK(cs_audit_history(a, "service", 12345, &v) == CS_NOT_FOUND);
    cs_audit_close(a);
    head_free(&h);
}

/* The binary's history: one JSON object per version; the human form names actors and changes. */
static void test_r14_cli_history_prints_versions(void)
{
    head h;
    CHECK(head_ready(&h, "audit-clihist"));
    char id[32];
    snprintf(id, sizeof(id), "%llu", (unsigned long long)h.service);
    run_result r;
    CHECK(run(&r, ARGS("audit", "history", "service", id, "--data", h.dir, "--json-out")));
    CHECK(r.exit_code == 0);
    int lines = 0;
    for (char *save = NULL, *l = strtok_r(r.out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *o = json_loads(l, 0, NULL);
        CHECK(o && json_is_integer(json_object_get(o, "time")) &&
              json_is_array(json_object_get(o, "changes")));
        json_decref(o);
        lines++;
    }
    CHECK(lines == 4);
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "history", "service", id, "--data", h.dir)));
    CHECK(r.exit_code == 0 && strstr(r.out, "by bob") && strstr(r.out, "-> \"Bath & Dry\"") &&
          strstr(r.out, "Z  created"));
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "history", "service", "77", "--data", h.dir)));
    CHECK(r.exit_code == 2 && strncmp(r.err, "error: not_found: ", 18) == 0);
    run_free(&r);
    head_free(&h);
}

/* ---- as-of ------------------------------------------------------------------------------- */

/* Every item of a type, archived ones included, by id: what as-of lists. */
static json_t *state_of(cs_engine *e, const char *type)
{
    json_t *live = NULL, *arch = NULL, *all = json_array();
    if (cs_engine_list(e, type, false, &live) != CS_OK ||
        cs_engine_list(e, type, true, &arch) != CS_OK || !all) {
        json_decref(live), json_decref(arch), json_decref(all);
        return NULL;
    }
    size_t i = 0, j = 0;
    while (i < json_array_size(live) || j < json_array_size(arch)) {
        json_t *x = json_array_get(live, i), *y = json_array_get(arch, j);
        bool take_x = x && (!y || json_integer_value(json_object_get(x, "id")) <
                                      json_integer_value(json_object_get(y, "id")));
        json_array_append(all, take_x ? x : y);
        take_x ? i++ : j++;
    }
    json_decref(live);
    json_decref(arch);
    return all;
}

#define MOMENTS_MAX 64

typedef struct moment {
    uint64_t seq;
    uint64_t time_ms;
    json_t *services;
    json_t *categories;
} moment;

static void moments_free(moment *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_decref(m[i].services), json_decref(m[i].categories);
}

/* A log of n_writes put/delete events, recording the state after each. */
static bool record_moments(head *h, moment *m, size_t n_writes, size_t *n_out)
{
    uint64_t ids[8] = {0};
    size_t n = 0;
    for (size_t i = 0; i < n_writes && n < MOMENTS_MAX; i++) {
        char name[32];
        snprintf(name, sizeof(name), "Service %zu", i);
        size_t slot = i % 8;
        cs_err err;
        if (ids[slot] && i % 5 == 4) {
            err = cs_engine_del(h->e, "service", ids[slot], 0, NULL);
            ids[slot] = 0;
        } else {
            err = put_service(h, ids[slot], name, 1000 + (int)i, NULL, &ids[slot]);
        }
        if (err != CS_OK)
            return false;
        sleep_ms(3); /* distinct times, so as-of by time can tell each moment apart */
        m[n].seq = log_head_of(h->e);
        m[n].time_ms = event_time(h->e, m[n].seq);
        m[n].services = state_of(h->e, "service");
        m[n].categories = state_of(h->e, "service_category");
        if (!m[n].services || !m[n].categories)
            return false;
        n++;
    }
    *n_out = n;
    return true;
}

static bool items_match(cs_audit_state *s, const char *type, const json_t *want)
{
    json_t *st = NULL;
    bool ok = cs_audit_state_json(s, type, &st) == CS_OK &&
              json_equal(json_object_get(st, "items"), (json_t *)want);
    if (!ok)
        fprintf(stderr, "  as-of %s differs from the recorded state\n", type);
    json_decref(st);
    return ok;
}

/* R14: the catalog as of a sequence is the one recorded then, rebuilt from the nearest
 * checkpoint (replaying fewer events than the interval) and by full replay alike. */
static void test_r14_as_of_seq_returns_the_states_recorded_then(void)
{
    head h;
    moment m[MOMENTS_MAX];
    size_t n = 0;
    CHECK(head_open(&h, "audit-asof"));
    CHECK(record_moments(&h, m, 30, &n));
    cs_audit *a;
    cs_audit_ckpt_info info;
    CHECK_OK(cs_audit_open(h.e, &a));
    CHECK_OK(cs_audit_checkpoint(a, TEST_EVERY, false, &info));
    for (size_t i = 0; i < n; i++) {
        cs_audit_state *s = NULL, *full = NULL;
        CHECK_OK(cs_audit_state_at(a, m[i].seq, NULL, 0, &s));
        const cs_audit_state_info *si = cs_audit_state_info_get(s);
        CHECK(si->seq == m[i].seq && si->time_ms == m[i].time_ms);
        CHECK(si->from_checkpoint == m[i].seq / TEST_EVERY * TEST_EVERY);
        CHECK(si->replayed < TEST_EVERY);
        CHECK(items_match(s, "service", m[i].services));
        CHECK(items_match(s, "service_category", m[i].categories));
        cs_audit_state_free(s);
        CHECK_OK(cs_audit_state_at(a, m[i].seq, "service", 0, &s)); /* one type only */
        CHECK(items_match(s, "service", m[i].services));
        CHECK(cs_audit_state_json(s, "combo", &(json_t *){NULL}) == CS_INVALID_INPUT);
        cs_audit_state_free(s);
        CHECK_OK(cs_audit_state_at(a, m[i].seq, NULL, CS_AUDIT_FULL_REPLAY, &full));
        CHECK(cs_audit_state_info_get(full)->from_checkpoint == 0);
        CHECK(items_match(full, "service", m[i].services));
        cs_audit_state_free(full);
    }
    /* before the first event: nothing; past the head: not_found */
    cs_audit_state *s = NULL;
    json_t *none = json_array();
    CHECK_OK(cs_audit_state_at(a, 0, NULL, 0, &s));
    bool empty = items_match(s, "service", none);
    json_decref(none);
    cs_audit_state_free(s);
    CHECK(empty);
    CHECK(cs_audit_state_at(a, log_head_of(h.e) + 1, NULL, 0, &s) == CS_NOT_FOUND);
    CHECK(cs_audit_state_at(a, 1, "nope", 0, &s) == CS_UNKNOWN_TYPE);
    cs_audit_close(a);
    moments_free(m, n);
    head_free(&h);
}

/* R14: the catalog as of a time is the state after the last event at or before it. */
static void test_r14_as_of_time_returns_the_states_recorded_then(void)
{
    head h;
    moment m[MOMENTS_MAX];
    size_t n = 0;
    CHECK(head_open(&h, "audit-time"));
    CHECK(record_moments(&h, m, 12, &n));
    cs_audit *a;
    CHECK_OK(cs_audit_open(h.e, &a));
    CHECK_OK(cs_audit_checkpoint(a, TEST_EVERY, false, NULL));
    for (size_t i = 1; i < n; i++) {
        uint64_t seq;
        CHECK_OK(cs_audit_seq_at_time(a, m[i].time_ms, &seq)); /* exactly at the event */
        CHECK(seq == m[i].seq);
        CHECK_OK(cs_audit_seq_at_time(a, m[i].time_ms - 1, &seq)); /* just before it */
        CHECK(seq == m[i - 1].seq);
        cs_audit_state *s;
        CHECK_OK(cs_audit_state_at(a, seq, "service", 0, &s));
        CHECK(items_match(s, "service", m[i - 1].services));
        cs_audit_state_free(s);
    }
    uint64_t seq;
    CHECK_OK(cs_audit_seq_at_time(a, 1, &seq)); /* 1970: before everything */
    CHECK(seq == 0);
    CHECK_OK(cs_audit_seq_at_time(a, m[n - 1].time_ms + 3600000, &seq)); /* later: the head */
    CHECK(seq == log_head_of(h.e));
    cs_audit_close(a);
    head_close_engine(&h);
    /* the binary, with ISO 8601 and milliseconds */
    char ms[32];
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)m[3].time_ms);
    run_result r;
    CHECK(run(&r, ARGS("audit", "as-of", "--time", ms, "service", "--data", h.dir, "--json-out")));
    CHECK(r.exit_code == 0);
    json_t *o = json_loads(r.out, 0, NULL);
    CHECK(o && (uint64_t)json_integer_value(json_object_get(o, "seq")) == m[3].seq);
    CHECK(json_equal(json_object_get(o, "items"), m[3].services));
    json_decref(o);
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "as-of", "--time", "2001-02-03T04:05:06.789+02:00", "--data", h.dir,
                       "--json-out")));
    CHECK(r.exit_code == 0 && (o = json_loads(r.out, 0, NULL)));
    CHECK(json_integer_value(json_object_get(o, "seq")) == 0);
    json_decref(o);
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "as-of", "--time", "2099-12-31", "--data", h.dir)));
    CHECK(r.exit_code == 0 && strstr(r.out, "catalog as of event"));
    run_free(&r);
    moments_free(m, n);
    head_free(&h);
}

/* The command line refuses what it cannot mean, before opening anything. */
static void test_r14_cli_as_of_usage_errors(void)
{
    head h;
    CHECK(head_ready(&h, "audit-usage"));
    run_result r;
    CHECK(run(&r, ARGS("audit", "as-of", "--data", h.dir)));
    CHECK(r.exit_code == 1 && strstr(r.err, "exactly one of"));
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "as-of", "--seq", "1", "--time", "2020-01-01", "--data", h.dir)));
    CHECK(r.exit_code == 1);
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "as-of", "--time", "2020-02-30", "--data", h.dir)));
    CHECK(r.exit_code == 1);
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "as-of", "--seq", "1", "nope", "--data", h.dir)));
    CHECK(r.exit_code == 2 && strncmp(r.err, "error: unknown_type: ", 21) == 0);
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "as-of", "--seq", "100000", "--data", h.dir)));
    CHECK(r.exit_code == 2 && strncmp(r.err, "error: not_found: ", 18) == 0);
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "checkpoint", "--every", "3", "--data", h.dir, "--json-out")));
    CHECK(r.exit_code == 0 && strstr(r.out, "\"every\":3"));
    run_free(&r);
    CHECK(run(&r, ARGS("audit", "--help")));
    CHECK(r.exit_code == 0 && strstr(r.out, "audit verify") && strstr(r.out, "audit as-of"));
    run_free(&r);
    head_free(&h);
}

/* ---- branches ---------------------------------------------------------------------------- */

static bool item_named(const json_t *items, const char *type, uint64_t id, const char *name)
{
    size_t i;
    const json_t *it;
    json_array_foreach((json_t *)items, i, it)
    {
        if (strcmp(json_string_value(json_object_get(it, "type")), type) == 0 &&
            (uint64_t)json_integer_value(json_object_get(it, "id")) == id)
            return strcmp(json_string_value(json_object_get(it, "name")), name) == 0;
    }
    return false;
}

/* R14, R5, R6: what a branch should hold as of a position follows its sync points: an edit made
 * after the last sync point is not there yet; while its switch is off, a sync does not cover it. */
static void test_r14_as_of_branch_follows_its_sync_points(void)
{
    head h;
    CHECK(head_open(&h, "audit-bat"));
    CHECK_OK(cs_engine_shop_add(h.e, "Downtown", "branch-password", &h.branch)); /* R5a */
    uint64_t linked = log_head_of(h.e);
    CHECK_OK(put_service(&h, h.service, "Bath v2", 3100, NULL, NULL));
    uint64_t edited = log_head_of(h.e);
    uint64_t synced;
    CHECK_OK(cs_engine_sync(h.e, 0, &synced));
    CHECK_OK(cs_engine_shop_switch(h.e, h.branch, false));
    CHECK_OK(put_service(&h, h.service, "Bath v3", 3200, NULL, NULL));
    uint64_t off_sync;
    CHECK_OK(cs_engine_sync(h.e, 0, &off_sync));
    cs_audit *a;
    CHECK_OK(cs_audit_open(h.e, &a));
    const uint64_t at[] = {linked, edited, synced, off_sync};
    const uint64_t sync_at[] = {linked, linked, synced, synced};
    static const char *const names[] = {"Bath", "Bath", "Bath v2", "Bath v2"};
    for (unsigned i = 0; i < 4; i++) {
        cs_audit_state *s;
        json_t *st;
        CHECK_OK(cs_audit_branch_at(a, at[i], h.branch, &s));
        CHECK_OK(cs_audit_state_json(s, NULL, &st));
        json_t *b = json_object_get(st, "branch");
        CHECK((uint64_t)json_integer_value(json_object_get(b, "sync_seq")) == sync_at[i]);
        CHECK(json_is_true(json_object_get(b, "switch")) == (i < 3));
        CHECK(item_named(json_object_get(st, "items"), "service", h.service, names[i]));
        json_decref(st);
        cs_audit_state_free(s);
    }
    cs_audit_state *s;
    CHECK(cs_audit_branch_at(a, linked, 424242, &s) == CS_NOT_FOUND);
    cs_audit_close(a);
    head_free(&h);
}

/* A branch directory fed the head office's log through an export file. */
static bool branch_make(head *h, const char *tag, char **dir_out)
{
    char path[512];
    char *dir = cs_test_tmpdir(tag);
    if (!dir)
        return false;
    snprintf(path, sizeof(path), "%s.seg", dir);
    cs_branch *b = NULL;
    bool ok = cs_export_file(cs_engine_log(h->e), 1, path, NULL) == CS_OK &&
              cs_branch_open(dir, NULL, &b) == CS_OK && cs_branch_bind(b, h->branch) == CS_OK &&
              cs_branch_import_file(b, path, NULL) == CS_OK;
    /* a local item of the branch's own: counted, never compared */
    ok = ok && put_text(cs_branch_engine(b), "payment_method", 0,
                        "{\"name\":\"Branch cash\",\"kind\":\"cash\"}", NULL) == CS_OK;
    cs_branch_close(b);
    unlink(path);
    if (!ok) {
        dir_free(dir);
        return false;
    }
    *dir_out = dir;
    return true;
}

/* R14: a branch that holds what the log says verifies; an edited copy of it is reported with
 * the item's type and head-office id, through the library and the binary. */
static void test_r14_verify_branch_reports_a_tampered_copy(void)
{
    head h;
    char *bdir = NULL, *bcopy = NULL;
    CHECK(head_open(&h, "audit-vb"));
    CHECK(head_history(&h));
    CHECK(branch_make(&h, "audit-vb-branch", &bdir));
    head_close_engine(&h);
    json_t *rep;
    CHECK_OK(lib_verify(h.dir, bdir, &rep, NULL, 0));
    json_t *b = json_object_get(rep, "branch");
    CHECK(json_is_true(json_object_get(b, "ok")));
    CHECK(json_integer_value(json_object_get(b, "copies_checked")) >= 2);
    CHECK(json_integer_value(json_object_get(b, "shared_checked")) == 1);
    CHECK(json_integer_value(json_object_get(b, "local_not_checked")) == 1);
    json_decref(rep);
    CHECK(cli_verify(h.dir, bdir, 0, NULL));
    /* the branch's own directory verifies on its own too (its log: the local item) */
    CHECK(cli_verify(bdir, NULL, 0, NULL));
    bcopy = dir_copy(bdir, "audit-vb-copy");
    CHECK(bcopy);
    CHECK(tamper_replace(bcopy, "items", "Bath & Dry", "Bath & Fry", NULL, 0));
    char msg[512], want[64];
    CHECK(lib_verify(h.dir, bcopy, &rep, msg, sizeof(msg)) == CS_CORRUPT);
    json_t *d = part_diff0(rep, "branch");
    CHECK(d && strcmp(json_string_value(json_object_get(d, "type")), "service") == 0);
    CHECK((uint64_t)json_integer_value(json_object_get(d, "id")) == h.service);
    json_t *c = json_array_get(json_object_get(d, "changes"), 0);
    CHECK(c && strcmp(json_string_value(json_object_get(c, "field")), "name") == 0);
    CHECK(json_is_true(json_object_get(json_object_get(rep, "state"), "ok")));
    json_decref(rep);
    snprintf(want, sizeof(want), "service %llu", (unsigned long long)h.service);
    CHECK(strstr(msg, want));
    CHECK(cli_verify(h.dir, bcopy, 3, want));
    /* a branch directory cannot answer for the head office's log */
    run_result r;
    CHECK(run(&r, ARGS("audit", "verify", "--data", h.dir, "--branch", h.dir)));
    CHECK(r.exit_code == 2 && strncmp(r.err, "error: invalid_input: ", 22) == 0);
    run_free(&r);
    dir_free(bcopy);
    dir_free(bdir);
    head_free(&h);
}

/* R14 (history): the history of the item whose versions end the history index (the walk meets
 * the end of the index, not another item's key) lists its versions like any other. */
static void test_r14_history_of_the_last_indexed_item(void)
{
    head h;
    CHECK(head_open(&h, "audit-hlast")); /* a category, then the service Bath: Bath is last */
    cs_audit *a;
    json_t *v = NULL;
    CHECK_OK(cs_audit_open(h.e, &a));
    cs_err err = cs_audit_history(a, "service", h.service, &v);
    cs_audit_close(a);
    CHECK_OK(err);
    CHECK(json_array_size(v) == 1);
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(v, 0), "change")), "created") ==
          0);
    json_decref(v);
    head_free(&h);
}

/* Sets one field of a branch directory's state (`branch` database, key "state", a JSON object)
 * behind the projection's back; takes val's reference. */
static bool tamper_branch_state_json(const char *dir, const char *field, json_t *val)
{
    raw r;
    MDB_val k = {5, "state"}, v;
    bool ok = raw_open(&r, dir, "branch") && mdb_get(r.txn, r.dbi, &k, &v) == 0;
    json_t *j = ok ? json_loadb(v.mv_data, v.mv_size, 0, NULL) : NULL;
    char *text = NULL;
    ok = j && json_object_set_new(j, field, val) == 0 &&
         (text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS)) != NULL;
    if (ok) {
        MDB_val nv = {strlen(text), text};
        ok = mdb_put(r.txn, r.dbi, &k, &nv, 0) == 0;
    }
    free(text);
    json_decref(j);
    return raw_close(&r, ok) && ok;
}

static bool tamper_branch_state(const char *dir, const char *field, json_int_t val)
{
    return tamper_branch_state_json(dir, field, json_integer(val));
}

/* The first record of db whose key is key_len bytes and starts with byte `first`: its key in
 * key_out, a malloc'd copy of its value in *val. */
static bool raw_first_with(raw *r, uint8_t first, size_t key_len, uint8_t *key_out, uint8_t **val,
                           size_t *val_len)
{
    MDB_cursor *cur;
    MDB_val k, v;
    bool found = false;
    if (mdb_cursor_open(r->txn, r->dbi, &cur))
        return false;
    while (!found && mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
        if (k.mv_size != key_len || ((const uint8_t *)k.mv_data)[0] != first)
            continue;
        memcpy(key_out, k.mv_data, key_len);
        found = (*val = malloc(v.mv_size)) != NULL;
        if (found) {
            memcpy(*val, v.mv_data, v.mv_size);
            *val_len = v.mv_size;
        }
    }
    mdb_cursor_close(cur);
    return found;
}

/* The branch's origin-index key (type code, head id) of head item head_id. */
static bool origin_key_of(const char *bdir, uint64_t head_id, uint8_t key[9])
{
    raw r;
    MDB_cursor *cur;
    MDB_val k, v;
    bool found = false;
    if (!raw_open(&r, bdir, "origin") || mdb_cursor_open(r.txn, r.dbi, &cur)) {
        raw_close(&r, false);
        return false;
    }
    while (!found && mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0)
        if (k.mv_size == 9 && cs_be64_get((const uint8_t *)k.mv_data + 1) == head_id) {
            memcpy(key, k.mv_data, 9);
            found = true;
        }
    mdb_cursor_close(cur);
    raw_close(&r, false);
    return found;
}

/* Stores a second copy of the branch's copy of head item head_id under an unused item id: a
 * copy the origin index does not name. */
static bool tamper_duplicate_copy(const char *bdir, uint64_t head_id)
{
    uint8_t ok9[9], key[9];
    if (!origin_key_of(bdir, head_id, ok9))
        return false;
    raw r;
    uint8_t *val = NULL;
    size_t len = 0;
    bool ok = raw_open(&r, bdir, "items") && raw_first_with(&r, ok9[0], 9, key, &val, &len);
    if (ok) {
        cs_be64_put(key + 1, cs_be64_get(key + 1) + 100000); /* far past any id the branch used */
        MDB_val k = {9, key}, v = {len, val};
        ok = mdb_put(r.txn, r.dbi, &k, &v, MDB_NOOVERWRITE) == 0;
    }
    free(val);
    return raw_close(&r, ok) && ok;
}

/* Deletes the origin-index entry of head item head_id on the branch. */
static bool tamper_drop_origin(const char *bdir, uint64_t head_id)
{
    uint8_t ok9[9];
    if (!origin_key_of(bdir, head_id, ok9))
        return false;
    raw r;
    MDB_val k = {9, ok9};
    bool ok = raw_open(&r, bdir, "origin") && mdb_del(r.txn, r.dbi, &k, NULL) == 0;
    return raw_close(&r, ok) && ok;
}

/* The `what` of the first difference of report part `part`, or "". */
static const char *diff_what(const json_t *rep, const char *part)
{
    const char *w = json_string_value(json_object_get(part_diff0(rep, part), "what"));
    return w ? w : "";
}

/* R14 (verify step 3): a history index whose recorded chain is not the log's at the event it
 * has seen was built from another log: verify reports it in its history part. */
static void test_r14_verify_finds_a_history_index_of_another_log(void)
{
    head h;
    CHECK(head_open(&h, "audit-hist"));
    CHECK(head_history(&h));
    cs_audit *a;
    cs_audit_ckpt_info info;
    CHECK_OK(cs_audit_open(h.e, &a));
    CHECK_OK(cs_audit_checkpoint(a, TEST_EVERY, false, &info)); /* extends the history index */
    cs_audit_close(a);
    head_close_engine(&h);
    json_t *rep;
    CHECK_OK(lib_verify(h.dir, NULL, &rep, NULL, 0));
    CHECK(json_integer_value(json_object_get(json_object_get(rep, "history"), "indexed")) > 0);
    json_decref(rep);
    CHECK(tamper_audit_meta(h.dir, "history_chain", 0x1234567890abcdefull));
    CHECK(lib_verify(h.dir, NULL, &rep, NULL, 0) == CS_CORRUPT);
    json_t *d = part_diff0(rep, "history");
    CHECK(d && strcmp(json_string_value(json_object_get(d, "type")), "history index") == 0);
    CHECK(strstr(diff_what(rep, "history"), "another log"));
    json_decref(rep);
    CHECK(cli_verify(h.dir, NULL, 3, NULL));
    head_free(&h);
}

/* R14 (verify step 4 compares the projection's own state): a branch whose last sync point
 * (sync_seq), or whose linked flag, was changed behind its back is reported under that key,
 * though every item still matches. */
static void test_r14_verify_branch_reports_a_changed_sync_seq(void)
{
    head h;
    char *bdir = NULL;
    CHECK(head_open(&h, "audit-vbs"));
    CHECK(head_history(&h));
    CHECK(branch_make(&h, "audit-vbs-branch", &bdir));
    head_close_engine(&h);
    cs_branch *b = NULL;
    cs_branch_state st;
    CHECK_OK(cs_branch_open(bdir, NULL, &b));
    cs_err err = cs_branch_state_get(b, &st);
    cs_branch_close(b);
    CHECK_OK(err);
    CHECK(st.sync_seq >= 2 && st.sync_seq <= st.cursor);
    CHECK(tamper_branch_state(bdir, "sync_seq", (json_int_t)st.sync_seq - 1));
    json_t *rep;
    CHECK(lib_verify(h.dir, bdir, &rep, NULL, 0) == CS_CORRUPT);
    json_t *d = part_diff0(rep, "branch");
    CHECK(d && strcmp(json_string_value(json_object_get(d, "key")), "sync_seq") == 0);
    json_decref(rep);
    CHECK(cli_verify(h.dir, bdir, 3, "sync_seq"));
    /* linked: a branch that says it was unlinked, which the log does not say (each field is
     * compared: the first difference named is the first field that differs) */
    CHECK(tamper_branch_state(bdir, "sync_seq", (json_int_t)st.sync_seq));
    CHECK(tamper_branch_state_json(bdir, "linked", json_false()));
    CHECK(tamper_branch_state_json(bdir, "unlinked", json_true()));
    CHECK(lib_verify(h.dir, bdir, &rep, NULL, 0) == CS_CORRUPT);
    d = part_diff0(rep, "branch");
    bool linked_first = d && strcmp(json_string_value(json_object_get(d, "key")), "linked") == 0;
    json_decref(rep);
    CHECK(linked_first);
    dir_free(bdir);
    head_free(&h);
}

/* R14, R2 (a branch's origin index names its one copy of each head item): a second copy of a
 * head item the index does not name, and an index entry removed, are each reported with the
 * item's type and head-office id. */
static void test_r14_verify_branch_checks_the_origin_index(void)
{
    head h;
    char *bdir = NULL, *bcopy = NULL;
    CHECK(head_open(&h, "audit-vbo"));
    CHECK(head_history(&h));
    CHECK(branch_make(&h, "audit-vbo-branch", &bdir));
    head_close_engine(&h);
    json_t *rep;
    char want[64];
    snprintf(want, sizeof(want), "%llu", (unsigned long long)h.service);
    CHECK(bcopy = dir_copy(bdir, "audit-vbo-dup"));
    CHECK(tamper_duplicate_copy(bcopy, h.service));
    CHECK(lib_verify(h.dir, bcopy, &rep, NULL, 0) == CS_CORRUPT);
    CHECK((uint64_t)json_integer_value(json_object_get(part_diff0(rep, "branch"), "id")) ==
          h.service);
    CHECK(strstr(diff_what(rep, "branch"), "origin index does not name"));
    json_decref(rep);
    CHECK(cli_verify(h.dir, bcopy, 3, want));
    dir_free(bcopy);
    CHECK(bcopy = dir_copy(bdir, "audit-vbo-drop"));
    CHECK(tamper_drop_origin(bcopy, h.service));
    CHECK(lib_verify(h.dir, bcopy, &rep, NULL, 0) == CS_CORRUPT);
    CHECK((uint64_t)json_integer_value(json_object_get(part_diff0(rep, "branch"), "id")) ==
          h.service);
    CHECK(strstr(diff_what(rep, "branch"), "no copy on the branch"));
    json_decref(rep);
    dir_free(bcopy);
    CHECK_OK(lib_verify(h.dir, bdir, &rep, NULL, 0)); /* the control: the untouched branch */
    json_decref(rep);
    dir_free(bdir);
    head_free(&h);
}

/* R14 (as-of trusts a checkpoint only for the log it was taken from): a checkpoint whose chain
 * is not the log's at its event is refused (corrupt) by as-of, not answered from. */
static void test_r14_as_of_refuses_a_checkpoint_of_another_chain(void)
{
    head h;
    CHECK(head_open(&h, "audit-ckch"));
    CHECK(head_history(&h));
    cs_audit *a;
    cs_audit_ckpt_info info;
    CHECK_OK(cs_audit_open(h.e, &a));
    CHECK_OK(cs_audit_checkpoint(a, TEST_EVERY, false, &info));
    CHECK(info.count >= 2);
    cs_audit_close(a);
    head_close_engine(&h);
    raw r;
    uint8_t kb[9];
    key_u64(kb, TEST_EVERY);
    kb[8] = 0; /* the checkpoint's header (CS__CKPT_TAG_HEADER): chain(8) digest(8) ... */
    MDB_val k = {9, kb}, v;
    uint8_t hb[64];
    bool ok = raw_open(&r, h.dir, "ckpt") && mdb_get(r.txn, r.dbi, &k, &v) == 0 &&
              v.mv_size <= sizeof(hb) && v.mv_size >= 8;
    if (ok) {
        memcpy(hb, v.mv_data, v.mv_size);
        hb[3] ^= 0x10;
        MDB_val nv = {v.mv_size, hb};
        ok = mdb_put(r.txn, r.dbi, &k, &nv, 0) == 0;
    }
    CHECK(raw_close(&r, ok) && ok);
    cs_audit_state *s = NULL;
    CHECK_OK(cs_engine_open(h.dir, NULL, &h.e));
    CHECK_OK(cs_audit_open(h.e, &a));
    cs_err err = cs_audit_state_at(a, TEST_EVERY + 1, NULL, 0, &s);
    bool named = strstr(cs_audit_errmsg(a), "does not match the log") != NULL;
    cs_audit_state_free(s);
    cs_audit_close(a);
    CHECK(err == CS_CORRUPT);
    CHECK(named);
    head_free(&h);
}

/* audit_int.h invariant 2: a checkpoint is stored at every multiple of `every` the log has
 * reached, the head included when it is one exactly. */
static void test_r14_checkpoint_at_an_exact_multiple_of_every(void)
{
    head h;
    CHECK(head_open(&h, "audit-exact"));
    CHECK(log_head_of(h.e) == TEST_EVERY); /* head_open: events 1..4 */
    cs_audit *a;
    cs_audit_ckpt_info info;
    CHECK_OK(cs_audit_open(h.e, &a));
    CHECK_OK(cs_audit_checkpoint(a, TEST_EVERY, false, &info));
    CHECK(info.head == TEST_EVERY && info.last == TEST_EVERY && info.count == 1);
    for (int i = 0; i < TEST_EVERY - 1; i++)
        CHECK_OK(put_service(&h, h.service, "Bath", 3100 + i, NULL, NULL));
    CHECK_OK(cs_audit_checkpoint(a, 0, false, &info));
    CHECK(info.last == TEST_EVERY && info.built == 0); /* 7 events: not yet */
    CHECK_OK(put_service(&h, h.service, "Bath", 3200, NULL, NULL));
    CHECK_OK(cs_audit_checkpoint(a, 0, false, &info));
    CHECK(info.head == 2 * TEST_EVERY && info.last == 2 * TEST_EVERY && info.built == 1);
    cs_audit_close(a);
    head_free(&h);
}

/* R13, R14: a branch unlinked from its network is a single store whose catalog holds detached
 * copies its own log never wrote: `audit verify` of its own directory checks its local items
 * and passes. */
static void test_r14_verify_of_an_unlinked_branch_own_directory_passes(void)
{
    head h;
    char *bdir = NULL, path[512];
    CHECK(head_open(&h, "audit-unl"));
    CHECK(head_history(&h));
    CHECK(branch_make(&h, "audit-unl-branch", &bdir));
    CHECK_OK(cs_engine_shop_unlink(h.e, h.branch));
    snprintf(path, sizeof(path), "%s.seg", bdir);
    cs_branch *b = NULL;
    bool ok = cs_export_file(cs_engine_log(h.e), 1, path, NULL) == CS_OK &&
              cs_branch_open(bdir, NULL, &b) == CS_OK &&
              cs_branch_import_file(b, path, NULL) == CS_OK;
    cs_branch_state st = {0};
    ok = ok && cs_branch_state_get(b, &st) == CS_OK;
    cs_branch_close(b);
    unlink(path);
    CHECK(ok && st.unlinked);
    json_t *rep;
    char msg[512];
    cs_err err = lib_verify(bdir, NULL, &rep, msg, sizeof(msg));
    if (err != CS_OK)
        fprintf(stderr, "  verify of the unlinked branch: %s: %s\n", cs_err_name(err), msg);
    CHECK_OK(err);
    json_t *state = json_object_get(rep, "state");
    bool local = strcmp(json_string_value(json_object_get(state, "checked")), "local items") == 0;
    json_decref(rep);
    CHECK(local);
    CHECK(cli_verify(bdir, NULL, 0, NULL));
    dir_free(bdir);
    head_free(&h);
}

int main(void)
{
    if (!getenv("CS_BIN")) {
        fprintf(stderr, "CS_BIN is not set: run through ctest\n");
        return 2;
    }
    RUN(test_r14_verify_passes_on_an_untampered_head_office);
    RUN(test_r14_verify_names_the_event_with_a_changed_byte);
    RUN(test_r14_verify_names_a_removed_event);
    RUN(test_r14_verify_names_swapped_events);
    RUN(test_r14_verify_names_an_item_edited_behind_the_logs_back);
    RUN(test_r14_verify_finds_a_damaged_checkpoint_and_rebuild_repairs_it);
    RUN(test_r14_checkpoint_records_off_their_interval_are_corrupt);
    RUN(test_r14_verify_reports_an_event_the_engine_cannot_apply);
    RUN(test_r14_history_lists_each_version_with_actor_time_and_changes);
    RUN(test_r14_cli_history_prints_versions);
    RUN(test_r14_as_of_seq_returns_the_states_recorded_then);
    RUN(test_r14_as_of_time_returns_the_states_recorded_then);
    RUN(test_r14_cli_as_of_usage_errors);
    RUN(test_r14_as_of_branch_follows_its_sync_points);
    RUN(test_r14_verify_branch_reports_a_tampered_copy);
    RUN(test_r14_verify_finds_a_history_index_of_another_log);
    RUN(test_r14_history_of_the_last_indexed_item);
    RUN(test_r14_verify_branch_reports_a_changed_sync_seq);
    RUN(test_r14_verify_branch_checks_the_origin_index);
    RUN(test_r14_as_of_refuses_a_checkpoint_of_another_chain);
    RUN(test_r14_checkpoint_at_an_exact_multiple_of_every);
    RUN(test_r14_verify_of_an_unlinked_branch_own_directory_passes);
    return cs_test_finish();
}
