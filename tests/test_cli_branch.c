/*
 * test_cli_branch.c: the sync rules of SPEC 3 (R1-R8, R10, R13) end to end through the real
 * `chainsync` binary (path in $CS_BIN), on real directories: a head office directory writes its
 * catalog with `put`, branches are added with `shop add --password-stdin`, the log is carried to
 * them with `log export` and `branch import` (the offline transfer of docs/cli.md), and the
 * branch directories are read back with `get`/`list --json-out` (JSON lines, parsed by jansson).
 * Each test builds its own small network in its own temporary directory.
 *
 * Every child is bounded: its output is drained with poll() under a deadline and it is killed
 * and reaped when the deadline passes (RUN_DEADLINE_MS), so a hung command fails its test
 * instead of hanging the suite. Whatever a test allocated (outputs, JSON, directories) is
 * released after it, whether it passed or stopped at a failed CHECK.
 */
#include "tests/harness.h"
#include "tests/damage.h"
#include "tests/run.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

/* A CLI command is one short LMDB transaction; 30 s means it is stuck. */
#define RUN_DEADLINE_MS 30000
#define ID_BYTES 24
#define PATH_BYTES 512
#define JSON_BYTES 512
#define BRANCHES_MAX 2

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ---- per-test resources: released after every test -------------------------------------- */

#define POOL_MAX 4096
static void *pool_mem[POOL_MAX];
static unsigned pool_nmem;
static json_t *pool_json[POOL_MAX];
static unsigned pool_njson;

/* Keeps p until the end of the test; returns it (NULL when p is NULL or the pool is full). */
static void *keep(void *p)
{
    if (!p)
        return NULL;
    if (pool_nmem >= POOL_MAX) {
        free(p);
        return NULL;
    }
    pool_mem[pool_nmem++] = p;
    return p;
}

/* Keeps a JSON value (one reference) until the end of the test; returns it. */
static json_t *keep_json(json_t *o)
{
    if (!o)
        return NULL;
    if (pool_njson >= POOL_MAX) {
        json_decref(o);
        return NULL;
    }
    pool_json[pool_njson++] = o;
    return o;
}

static void pool_release(void)
{
    for (unsigned i = 0; i < pool_nmem; i++)
        free(pool_mem[i]);
    pool_nmem = 0;
    for (unsigned i = 0; i < pool_njson; i++)
        json_decref(pool_json[i]);
    pool_njson = 0;
    cs_test_tmpdirs_cleanup();
}

/* Runs one test and releases what it left behind. */
#define TEST(fn)                                                                                   \
    do {                                                                                           \
        RUN(fn);                                                                                   \
        pool_release();                                                                            \
    } while (0)

/* ---- running the binary ------------------------------------------------------------------ */

typedef cs_run_result run_result; /* out and err kept until the end of the test */

/* Runs chainsync with args (NULL-terminated) and input on stdin (NULL = empty); every command
 * names its --data, so CHAINSYNC_DATA is unset. False when the child could not be started or fed.
 */
static bool run(run_result *r, const char *input, const char *const *args)
{
    bool started = cs_run(r, input, NULL, args, RUN_DEADLINE_MS);
    r->out = keep(r->out);
    r->err = keep(r->err);
    return started && r->out && r->err;
}

/* Runs a command that must succeed; says why when it does not. r may be NULL. */
static bool ok(run_result *r, const char *input, const char *const *args)
{
    run_result tmp;
    if (!r)
        r = &tmp;
    if (run(r, input, args) && r->exit_code == 0)
        return true;
    fprintf(stderr, "  `%s %s ...` exited %d: %s", args[0], args[1] ? args[1] : "", r->exit_code,
            r->err);
    return false;
}

/* ---- JSON -------------------------------------------------------------------------------- */

static json_int_t jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

static const char *jstr(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* An id as the decimal text the CLI takes. */
static void id_text(json_int_t id, char out[ID_BYTES])
{
    snprintf(out, ID_BYTES, "%" PRIu64, (uint64_t)id);
}

static json_int_t id_num(const char *text)
{
    return (json_int_t)strtoull(text, NULL, 10);
}

/* One JSON object printed by a command (kept), or NULL. */
static json_t *parse_one(const char *text)
{
    json_error_t je;
    json_t *o = keep_json(json_loads(text, 0, &je));
    if (!json_is_object(o)) {
        fprintf(stderr, "  not one JSON object (%s): %s\n", je.text, text);
        return NULL;
    }
    return o;
}

/* `list TYPE [--archived] --json-out` on dir as an array of objects (kept), or NULL. */
static json_t *list_json(const char *dir, const char *type, bool archived)
{
    run_result r;
    bool done = archived
                    ? ok(&r, NULL, ARGS("list", type, "--archived", "--data", dir, "--json-out"))
                    : ok(&r, NULL, ARGS("list", type, "--data", dir, "--json-out"));
    if (!done)
        return NULL;
    json_t *arr = keep_json(json_array());
    for (char *save = NULL, *line = strtok_r(r.out, "\n", &save); arr && line;
         line = strtok_r(NULL, "\n", &save)) {
        json_t *o = json_loads(line, 0, NULL);
        if (!json_is_object(o)) {
            fprintf(stderr, "  list line is not a JSON object: %s\n", line);
            json_decref(o);
            return NULL;
        }
        json_array_append_new(arr, o);
    }
    return arr;
}

/* `get TYPE ID --json-out` on dir (kept), or NULL. */
static json_t *get_json(const char *dir, const char *type, const char *id)
{
    run_result r;
    if (!ok(&r, NULL, ARGS("get", type, id, "--data", dir, "--json-out")))
        return NULL;
    return parse_one(r.out);
}

/* The item of `list` (archived or not) on dir whose origin names head id; NULL if none. */
static json_t *copy_of(const char *dir, const char *type, const char *head_id)
{
    for (int archived = 0; archived < 2; archived++) {
        json_t *arr = list_json(dir, type, archived);
        size_t i;
        json_t *o;
        json_array_foreach(arr, i, o)
        {
            if (jint(json_object_get(o, "origin"), "id") == id_num(head_id))
                return o;
        }
    }
    fprintf(stderr, "  %s has no %s copy of head item %s\n", dir, type, head_id);
    return NULL;
}

/* The first price of a service's price_table, or -1. */
static json_int_t price_of(const json_t *service)
{
    return jint(json_array_get(json_object_get(service, "price_table"), 0), "price_cents");
}

/* The price of dir's copy of head service head_id, or -1. */
static json_int_t copy_price(const char *dir, const char *head_id)
{
    json_t *c = copy_of(dir, "service", head_id);
    return c ? price_of(c) : -1;
}

/* ---- a small network --------------------------------------------------------------------- */

typedef struct net {
    char *dir; /* this test's temporary directory: hq/, b0/, b1/, hq.seg */
    char hq[PATH_BYTES];
    char seg[PATH_BYTES];
    char head_shop[ID_BYTES];
    /* the head office's catalog */
    char cat[ID_BYTES];   /* service_category Grooming */
    char bath[ID_BYTES];  /* service Bath, 3000 */
    char trim[ID_BYTES];  /* service Trim, 2000 */
    char combo[ID_BYTES]; /* combo Spa day: [bath, trim] */
    unsigned nbranches;
    char shop[BRANCHES_MAX][ID_BYTES];
    char bdir[BRANCHES_MAX][PATH_BYTES]; /* not created until the first import */
} net;

/* `put TYPE [ID] --json JSON --json-out` on dir; the item's id in id_out (may be NULL). */
static bool put_item(const char *dir, const char *type, const char *id, const char *json,
                     char *id_out)
{
    run_result r;
    bool done =
        id ? ok(&r, NULL, ARGS("put", type, id, "--data", dir, "--json", json, "--json-out"))
           : ok(&r, NULL, ARGS("put", type, "--data", dir, "--json", json, "--json-out"));
    json_t *o = done ? parse_one(r.out) : NULL;
    if (!o || jint(o, "id") <= 0 || jint(o, "version") <= 0 || jint(o, "seq") < 0)
        return false;
    if (id_out)
        id_text(jint(o, "id"), id_out);
    return true;
}

/* Creates (id NULL) or replaces a service on dir with one price. */
static bool service_put(const char *dir, const char *id, const char *cat, const char *name,
                        int price, char *id_out)
{
    char js[JSON_BYTES];
    snprintf(js, sizeof(js),
             "{\"name\":\"%s\",\"category\":%s,\"price_table\":[{\"tier\":\"small\","
             "\"price_cents\":%d}]}",
             name, cat, price);
    return put_item(dir, "service", id, js, id_out);
}

/* Updates the head office's Bath to a new price. */
static bool bath_price(net *n, int price)
{
    return service_put(n->hq, n->bath, n->cat, "Bath", price, NULL);
}

/* Adds and links a branch (R5a: a sync point for it); its id in id_out. */
static bool branch_add(net *n, const char *name, char *id_out)
{
    char pw[64];
    snprintf(pw, sizeof(pw), "%s-password-1\n", name);
    run_result r;
    if (!ok(&r, pw,
            ARGS("shop", "add", "--data", n->hq, "--name", name, "--password-stdin", "--json-out")))
        return false;
    json_t *o = parse_one(r.out);
    if (!o || jint(o, "id") <= 0 || strcmp(jstr(o, "role"), "branch") != 0)
        return false;
    id_text(jint(o, "id"), id_out);
    return true;
}

/* A head office with a catalog (a category, two services, a combo of both) and nbranches
 * linked branches that have not imported anything yet. */
static bool net_open(net *n, unsigned nbranches)
{
    memset(n, 0, sizeof(*n));
    n->dir = cs_test_tmpdir_kept("cli-branch");
    if (!n->dir || nbranches > BRANCHES_MAX)
        return false;
    snprintf(n->hq, sizeof(n->hq), "%s/hq", n->dir);
    snprintf(n->seg, sizeof(n->seg), "%s/hq.seg", n->dir);
    run_result r;
    if (!ok(&r, NULL, ARGS("init", "--data", n->hq, "--name", "Pets HQ", "--json-out")))
        return false;
    json_t *o = parse_one(r.out);
    if (!o || jint(o, "id") <= 0)
        return false;
    id_text(jint(o, "id"), n->head_shop);
    if (!ok(NULL, NULL, ARGS("network", "create", "--data", n->hq, "--name", "Pets Chain")))
        return false;
    char js[JSON_BYTES];
    if (!put_item(n->hq, "service_category", NULL, "{\"name\":\"Grooming\"}", n->cat) ||
        !service_put(n->hq, NULL, n->cat, "Bath", 3000, n->bath) ||
        !service_put(n->hq, NULL, n->cat, "Trim", 2000, n->trim))
        return false;
    snprintf(js, sizeof(js), "{\"name\":\"Spa day\",\"services\":[%s,%s],\"price_cents\":4500}",
             n->bath, n->trim);
    if (!put_item(n->hq, "combo", NULL, js, n->combo))
        return false;
    for (unsigned b = 0; b < nbranches; b++) {
        char name[32];
        snprintf(name, sizeof(name), "branch%u", b);
        if (!branch_add(n, name, n->shop[b]))
            return false;
        snprintf(n->bdir[b], sizeof(n->bdir[b]), "%s/b%u", n->dir, b);
        n->nbranches++;
    }
    return true;
}

/* `log export --from 1` at the head office into n->seg. */
static bool export_all(net *n)
{
    return ok(NULL, NULL, ARGS("log", "export", "--data", n->hq, "--from", "1", "--out", n->seg));
}

/* `branch import` of n->seg into branch b; the command's result in r. */
static bool import_run(net *n, unsigned b, run_result *r)
{
    return run(
        r, NULL,
        ARGS("branch", "import", n->seg, "--data", n->bdir[b], "--shop", n->shop[b], "--json-out"));
}

/* Carries the whole log to branch b (export, then import), which must succeed. */
static bool carry(net *n, unsigned b)
{
    run_result r;
    if (!export_all(n))
        return false;
    if (!import_run(n, b, &r) || r.exit_code != 0) {
        fprintf(stderr, "  import into branch %u exited %d: %s", b, r.exit_code, r.err);
        return false;
    }
    return true;
}

static bool carry_all(net *n)
{
    for (unsigned b = 0; b < n->nbranches; b++)
        if (!carry(n, b))
            return false;
    return true;
}

static bool sync_all(net *n)
{
    return ok(NULL, NULL, ARGS("sync", "--data", n->hq));
}

/* ---- the rules --------------------------------------------------------------------------- */

/* R2 Mirrored copies: own ids, origin links, references remapped to the branch's copies, and an
 * update at the head reaches the copy at the next sync point. */
static void test_r2_copies_have_own_ids_origin_and_remapped_references(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(carry(&n, 0)); /* shop add was the branch's first sync point (R5a) */
    const char *b = n.bdir[0];
    json_t *cat = copy_of(b, "service_category", n.cat);
    json_t *bath = copy_of(b, "service", n.bath);
    json_t *trim = copy_of(b, "service", n.trim);
    json_t *combo = copy_of(b, "combo", n.combo);
    CHECK(cat && bath && trim && combo);
    /* Own ids, and an origin {shop, id, version} naming the head office's item. */
    CHECK(jint(bath, "id") > 0 && jint(bath, "id") != id_num(n.bath));
    CHECK(jint(cat, "id") != id_num(n.cat) && jint(combo, "id") != id_num(n.combo));
    json_t *origin = json_object_get(bath, "origin");
    CHECK(json_is_object(origin) && json_object_size(origin) == 3);
    CHECK(jint(origin, "shop") == id_num(n.head_shop));
    CHECK(jint(origin, "id") == id_num(n.bath));
    CHECK(jint(origin, "version") == 1);
    CHECK(json_is_false(json_object_get(bath, "archived")));
    CHECK(strcmp(jstr(bath, "name"), "Bath") == 0 && price_of(bath) == 3000);
    /* References point at the branch's copies, not at the head office's items. */
    CHECK(jint(bath, "category") == jint(cat, "id"));
    json_t *services = json_object_get(combo, "services");
    CHECK(json_array_size(services) == 2);
    CHECK(json_integer_value(json_array_get(services, 0)) == jint(bath, "id"));
    CHECK(json_integer_value(json_array_get(services, 1)) == jint(trim, "id"));
    CHECK(json_integer_value(json_array_get(services, 0)) != id_num(n.bath));
    /* The copy resolves by its own id on the branch. */
    char bath_copy[ID_BYTES];
    id_text(jint(bath, "id"), bath_copy);
    json_t *got = get_json(b, "service", bath_copy);
    CHECK(got && json_equal(got, bath));
    /* An update at the head, a sync point, the transfer: the same copy now equals version 2. */
    CHECK(bath_price(&n, 3500));
    CHECK(sync_all(&n));
    CHECK(carry(&n, 0));
    got = get_json(b, "service", bath_copy);
    CHECK(got && price_of(got) == 3500);
    CHECK(jint(json_object_get(got, "origin"), "version") == 2);
    CHECK(jint(json_object_get(got, "origin"), "id") == id_num(n.bath));
    CHECK(jint(got, "category") == jint(cat, "id"));
}

/* R3 Local items are preserved: a branch's own service survives a head update and sync. */
static void test_r3_local_item_survives_sync(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    json_t *cat = copy_of(b, "service_category", n.cat);
    CHECK(cat);
    char bcat[ID_BYTES], local[ID_BYTES];
    id_text(jint(cat, "id"), bcat);
    CHECK(service_put(b, NULL, bcat, "Express bath", 1800, local));
    json_t *before = get_json(b, "service", local);
    CHECK(before && json_is_null(json_object_get(before, "origin")));
    CHECK(jint(before, "category") == jint(cat, "id"));
    /* The head office changes its catalog (the category the local item uses included). */
    CHECK(bath_price(&n, 3600));
    CHECK(put_item(n.hq, "service_category", n.cat, "{\"name\":\"Grooming & spa\"}", NULL));
    CHECK(sync_all(&n));
    CHECK(carry(&n, 0));
    CHECK(copy_price(b, n.bath) == 3600); /* the sync point did happen */
    json_t *after = get_json(b, "service", local);
    CHECK(after && json_equal(before, after));
    /* Still listed among the branch's services. */
    json_t *list = list_json(b, "service", false);
    size_t i;
    json_t *o;
    bool listed = false;
    json_array_foreach(list, i, o) listed |= json_equal(o, before);
    CHECK(listed);
}

/* R4 Deletes: a head delete archives the copy at the next sync point; it stays resolvable. */
static void test_r4_head_delete_archives_copy(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    json_t *trim = copy_of(b, "service", n.trim);
    CHECK(trim);
    char trim_copy[ID_BYTES];
    id_text(jint(trim, "id"), trim_copy);
    CHECK(ok(NULL, NULL, ARGS("del", "service", n.trim, "--data", n.hq)));
    CHECK(sync_all(&n));
    CHECK(carry(&n, 0));
    /* Left out of the normal listing... */
    json_t *live = list_json(b, "service", false);
    CHECK(live && json_array_size(live) == 1);
    CHECK(jint(json_object_get(json_array_get(live, 0), "origin"), "id") == id_num(n.bath));
    /* ...listed with --archived, marked archived... */
    json_t *archived = list_json(b, "service", true);
    CHECK(archived && json_array_size(archived) == 1);
    json_t *a = json_array_get(archived, 0);
    CHECK(jint(a, "id") == jint(trim, "id"));
    CHECK(json_is_true(json_object_get(a, "archived")));
    /* ...and still resolvable by id, with its fields, as is the combo that references it. */
    json_t *got = get_json(b, "service", trim_copy);
    CHECK(got && json_is_true(json_object_get(got, "archived")));
    CHECK(strcmp(jstr(got, "name"), "Trim") == 0 && price_of(got) == 2000);
    CHECK(jint(json_object_get(got, "origin"), "id") == id_num(n.trim));
    json_t *combo = copy_of(b, "combo", n.combo);
    CHECK(combo && json_integer_value(json_array_get(json_object_get(combo, "services"), 1)) ==
                       jint(trim, "id"));
}

/* R5 Sync points: on-trigger by default, a sync for one branch, a sync for all at its own log
 * position, and continuous mode. */
static void test_r5_sync_points(void)
{
    net n;
    CHECK(net_open(&n, 2));
    CHECK(carry_all(&n));
    const char *b0 = n.bdir[0], *b1 = n.bdir[1];
    CHECK(copy_price(b0, n.bath) == 3000 && copy_price(b1, n.bath) == 3000);
    run_result r;
    CHECK(ok(&r, NULL, ARGS("network", "mode", "--data", n.hq, "--json-out")));
    json_t *mode = parse_one(r.out);
    CHECK(mode && strcmp(jstr(mode, "mode"), "on-trigger") == 0);
    /* (on-trigger) An update with no sync point: copies do not change. */
    CHECK(bath_price(&n, 3100));
    CHECK(carry_all(&n));
    CHECK(copy_price(b0, n.bath) == 3000 && copy_price(b1, n.bath) == 3000);
    /* (c) A sync point for branch 0 alone. */
    CHECK(ok(NULL, NULL, ARGS("sync", "--shop", n.shop[0], "--data", n.hq)));
    CHECK(carry_all(&n));
    CHECK(copy_price(b0, n.bath) == 3100);
    CHECK(copy_price(b1, n.bath) == 3000);
    /* (b) A sync point for every branch covers state as of its own position: the edit made after
     * it waits for the next one. */
    CHECK(sync_all(&n));
    CHECK(bath_price(&n, 3150));
    CHECK(carry_all(&n));
    CHECK(copy_price(b0, n.bath) == 3100 && copy_price(b1, n.bath) == 3100);
    /* (d) continuous: every catalog event is a sync point, no sync needed. */
    CHECK(ok(NULL, NULL, ARGS("network", "mode", "continuous", "--data", n.hq)));
    CHECK(bath_price(&n, 3200));
    CHECK(carry_all(&n));
    CHECK(copy_price(b0, n.bath) == 3200 && copy_price(b1, n.bath) == 3200);
}

/* R6 Sync switch: a branch switched off keeps its copies; switched on, it catches up. */
static void test_r6_switch_off_keeps_copies_on_catches_up(void)
{
    net n;
    CHECK(net_open(&n, 2));
    CHECK(carry_all(&n));
    const char *b0 = n.bdir[0], *b1 = n.bdir[1];
    run_result r;
    CHECK(ok(&r, NULL, ARGS("shop", "switch", n.shop[1], "off", "--data", n.hq, "--json-out")));
    json_t *sw = parse_one(r.out);
    CHECK(sw && json_is_false(json_object_get(sw, "switch")));
    CHECK(bath_price(&n, 3300));
    CHECK(sync_all(&n));
    CHECK(carry_all(&n));
    CHECK(copy_price(b0, n.bath) == 3300);
    CHECK(copy_price(b1, n.bath) == 3000);
    CHECK(jint(json_object_get(copy_of(b1, "service", n.bath), "origin"), "version") == 1);
    CHECK(ok(NULL, NULL, ARGS("shop", "switch", n.shop[1], "on", "--data", n.hq)));
    CHECK(sync_all(&n));
    CHECK(carry_all(&n));
    CHECK(copy_price(b1, n.bath) == 3300);
    CHECK(jint(json_object_get(copy_of(b1, "service", n.bath), "origin"), "version") == 2);
    CHECK(copy_price(b0, n.bath) == 3300);
}

/* R7 Synced types: a type taken out stops changing on branches; put back, it is brought up to
 * date at the next sync point. */
static void test_r7_type_taken_out_then_put_back(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    run_result r;
    CHECK(ok(
        &r, NULL,
        ARGS("network", "types", "--set", "service_category,combo", "--data", n.hq, "--json-out")));
    json_t *types = parse_one(r.out);
    json_t *set = json_object_get(types, "types");
    CHECK(json_array_size(set) == 2);
    CHECK(strcmp(json_string_value(json_array_get(set, 0)), "service_category") == 0);
    CHECK(strcmp(json_string_value(json_array_get(set, 1)), "combo") == 0);
    json_t *before = copy_of(b, "service", n.bath);
    CHECK(before);
    CHECK(service_put(n.hq, n.bath, n.cat, "Bath deluxe", 3400, NULL));
    CHECK(put_item(n.hq, "service_category", n.cat, "{\"name\":\"Grooming & spa\"}", NULL));
    CHECK(sync_all(&n));
    CHECK(carry(&n, 0));
    /* The category (still synced) changed at that sync point; the service copy did not. */
    json_t *cat = copy_of(b, "service_category", n.cat);
    CHECK(cat && strcmp(jstr(cat, "name"), "Grooming & spa") == 0);
    json_t *kept = copy_of(b, "service", n.bath);
    CHECK(kept && json_equal(before, kept));
    /* Put back: the next sync point brings it up to date. */
    CHECK(ok(NULL, NULL, ARGS("network", "types", "--set", "all", "--data", n.hq)));
    CHECK(sync_all(&n));
    CHECK(carry(&n, 0));
    json_t *after = copy_of(b, "service", n.bath);
    CHECK(after && jint(after, "id") == jint(before, "id"));
    CHECK(strcmp(jstr(after, "name"), "Bath deluxe") == 0 && price_of(after) == 3400);
    CHECK(jint(json_object_get(after, "origin"), "version") == 2);
}

/* R8 Shared records: a branch may write a species; the head's species arrive on import
 * whatever the switch says, with no sync point. */
static void test_r8_shared_records_written_anywhere_and_not_gated(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    char dog[ID_BYTES];
    CHECK(put_item(b, "species", NULL, "{\"name\":\"Dog\"}", dog));
    json_t *got = get_json(b, "species", dog);
    CHECK(got && strcmp(jstr(got, "name"), "Dog") == 0);
    /* Switch off, a species at the head office, no sync: it arrives anyway, with its id. */
    CHECK(ok(NULL, NULL, ARGS("shop", "switch", n.shop[0], "off", "--data", n.hq)));
    char parrot[ID_BYTES];
    CHECK(put_item(n.hq, "species", NULL, "{\"name\":\"Parrot\"}", parrot));
    CHECK(bath_price(&n, 3700)); /* a catalog change in the same transfer stays out (R6) */
    CHECK(carry(&n, 0));
    got = get_json(b, "species", parrot);
    CHECK(got && strcmp(jstr(got, "name"), "Parrot") == 0);
    CHECK(jint(got, "id") == id_num(parrot));
    CHECK(copy_price(b, n.bath) == 3000);
}

/* R1 One direction (and R11): a branch cannot write or delete a copy, edit advanced settings or
 * change its own password; nothing changes. */
static void test_r1_branch_cannot_write_copies(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    json_t *bath = copy_of(b, "service", n.bath);
    json_t *cat = copy_of(b, "service_category", n.cat);
    CHECK(bath && cat);
    char bath_copy[ID_BYTES], bcat[ID_BYTES], js[JSON_BYTES];
    id_text(jint(bath, "id"), bath_copy);
    id_text(jint(cat, "id"), bcat);
    snprintf(js, sizeof(js),
             "{\"name\":\"Cheap bath\",\"category\":%s,\"price_table\":[{\"tier\":\"small\","
             "\"price_cents\":100}]}",
             bcat);
    run_result r;
    CHECK(run(&r, NULL, ARGS("put", "service", bath_copy, "--data", b, "--json", js)));
    CHECK(cs_run_refused(&r, "read_only_copy", 2));
    CHECK(run(&r, NULL, ARGS("del", "service", bath_copy, "--data", b)));
    CHECK(cs_run_refused(&r, "read_only_copy", 2));
    json_t *after = get_json(b, "service", bath_copy);
    CHECK(after && json_equal(bath, after));
    CHECK(run(&r, NULL,
              ARGS("put", "advanced_setting", "--data", b, "--json",
                   "{\"key\":\"max_discount\",\"value\":\"10\"}")));
    CHECK(cs_run_refused(&r, "forbidden", 2));
    CHECK(run(&r, "a-new-password-1\n",
              ARGS("shop", "password", n.shop[0], "--data", b, "--password-stdin")));
    CHECK(cs_run_refused(&r, "forbidden", 2));
    json_t *settings = list_json(b, "advanced_setting", false);
    CHECK(settings && json_array_size(settings) == 0);
}

/* R13 Unlink: the branch becomes a single store; its copies become local items that remember
 * where they came from; further imports are refused. */
static void test_r13_unlink_detaches_copies(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    json_t *bath = copy_of(b, "service", n.bath);
    CHECK(bath);
    char bath_copy[ID_BYTES];
    id_text(jint(bath, "id"), bath_copy);
    run_result r;
    CHECK(ok(&r, NULL, ARGS("shop", "unlink", n.shop[0], "--data", n.hq, "--json-out")));
    json_t *un = parse_one(r.out);
    CHECK(un && json_is_true(json_object_get(un, "unlinked")));
    CHECK(export_all(&n));
    CHECK(import_run(&n, 0, &r) && r.exit_code == 0);
    json_t *imp = parse_one(r.out);
    CHECK(imp && json_is_false(json_object_get(imp, "linked")));
    json_t *got = get_json(b, "service", bath_copy);
    CHECK(got && json_is_null(json_object_get(got, "origin")));
    json_t *from = json_object_get(got, "detached_from");
    CHECK(json_is_object(from) && json_object_size(from) == 3);
    CHECK(jint(from, "shop") == id_num(n.head_shop));
    CHECK(jint(from, "id") == id_num(n.bath));
    CHECK(jint(from, "version") == 1);
    CHECK(strcmp(jstr(got, "name"), "Bath") == 0 && price_of(got) == 3000);
    /* Nothing more comes from the network. */
    CHECK(import_run(&n, 0, &r));
    CHECK(cs_run_refused(&r, "not_in_network", 2));
    /* A local item now: the former branch may change it. */
    char bcat[ID_BYTES];
    id_text(jint(got, "category"), bcat);
    CHECK(service_put(b, bath_copy, bcat, "Corner bath", 2500, NULL));
    got = get_json(b, "service", bath_copy);
    CHECK(got && price_of(got) == 2500 && json_is_null(json_object_get(got, "origin")));
    CHECK(jint(json_object_get(got, "detached_from"), "id") == id_num(n.bath));
}

/* R10 Single store: a single store that joins as a branch keeps its own items as local items
 * and gets the head office's catalog as copies. */
static void test_r10_single_store_joins_as_branch(void)
{
    net n;
    CHECK(net_open(&n, 1));
    const char *s = n.bdir[0];
    CHECK(ok(NULL, NULL, ARGS("init", "--data", s, "--name", "Corner shop")));
    char mine[ID_BYTES];
    CHECK(put_item(s, "service_category", NULL, "{\"name\":\"Corner grooming\"}", mine));
    json_t *before = get_json(s, "service_category", mine);
    CHECK(before && json_is_null(json_object_get(before, "origin")));
    CHECK(carry(&n, 0));
    json_t *after = get_json(s, "service_category", mine);
    CHECK(after && json_equal(before, after));
    json_t *cat = copy_of(s, "service_category", n.cat);
    CHECK(cat && jint(cat, "id") != id_num(n.cat) && jint(cat, "id") != id_num(mine));
    CHECK(strcmp(jstr(cat, "name"), "Grooming") == 0);
    json_t *bath = copy_of(s, "service", n.bath);
    CHECK(bath && jint(bath, "category") == jint(cat, "id"));
    json_t *cats = list_json(s, "service_category", false);
    CHECK(cats && json_array_size(cats) == 2);
}

/* ---- import refusals --------------------------------------------------------------------- */

/* Everything `list` shows of the synced types used here, on dir, exit codes and stderr
 * included (kept). */
static char *catalog_text(const char *dir)
{
    static const char *const types[] = {"service_category", "service", "combo", "species"};
    size_t cap = 64 * 1024, len = 0;
    char *text = keep(calloc(1, cap));
    for (unsigned t = 0; text && t < sizeof(types) / sizeof(types[0]); t++) {
        for (int archived = 0; archived < 2; archived++) {
            run_result r;
            bool started =
                archived ? run(&r, NULL,
                               ARGS("list", types[t], "--archived", "--data", dir, "--json-out"))
                         : run(&r, NULL, ARGS("list", types[t], "--data", dir, "--json-out"));
            if (!started)
                return NULL;
            int n = snprintf(text + len, cap - len, "%s%s: exit %d\n%s%s", types[t],
                             archived ? " --archived" : "", r.exit_code, r.out, r.err);
            if (n < 0 || (size_t)n >= cap - len)
                return NULL;
            len += (size_t)n;
        }
    }
    return text;
}

/* A branch import refuses a file that starts after cursor + 1 (invalid_input) on a branch that
 * has applied events already, and changes nothing; the whole log then applies. */
static void test_import_refuses_gap_after_cursor(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    run_result r;
    CHECK(ok(&r, NULL, ARGS("log", "--data", n.hq)));
    int head = 0;
    for (const char *p = r.out; *p; p++)
        head += *p == '\n';
    CHECK(head >= 5);
    /* Events head+1 .. head+4 at the head office; a file from head+3 leaves a gap of two. */
    CHECK(bath_price(&n, 3800));
    CHECK(sync_all(&n));
    CHECK(bath_price(&n, 3900));
    CHECK(sync_all(&n));
    char from[ID_BYTES];
    id_text(head + 3, from);
    CHECK(ok(NULL, NULL, ARGS("log", "export", "--data", n.hq, "--from", from, "--out", n.seg)));
    char *before = catalog_text(b);
    CHECK(before);
    CHECK(import_run(&n, 0, &r));
    CHECK(cs_run_refused(&r, "invalid_input", 2));
    char *after = catalog_text(b);
    CHECK(after && strcmp(before, after) == 0);
    CHECK(copy_price(b, n.bath) == 3000);
    /* The refusal left the branch able to take the whole log. */
    CHECK(carry(&n, 0));
    CHECK(copy_price(b, n.bath) == 3900);
}

/* A branch import into a fresh branch of a file exported from event 5 is refused
 * (invalid_input, exit 2) and changes nothing: `list` shows the same before and after. */
static void test_import_refuses_gap_on_fresh_branch(void)
{
    net n;
    CHECK(net_open(&n, 1));
    const char *b = n.bdir[0];
    CHECK(ok(NULL, NULL, ARGS("log", "export", "--data", n.hq, "--from", "5", "--out", n.seg)));
    char *before = catalog_text(b);
    CHECK(before);
    run_result r;
    CHECK(import_run(&n, 0, &r));
    CHECK(cs_run_refused(&r, "invalid_input", 2));
    char *after = catalog_text(b);
    CHECK(after);
    /* A refused import must not leave a bound (or any) store behind: the directory would then
     * refuse `init` (forbidden) and an import under another --shop. */
    if (strcmp(before, after) != 0)
        fprintf(stderr, "  list before the import: %.120s\n  list after it: %.60s\n", before,
                after);
    CHECK(strcmp(before, after) == 0);
}

/* A file with one byte flipped in the middle is refused as corrupt (exit 3); nothing applied. */
static void test_import_refuses_corrupt_file(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    CHECK(bath_price(&n, 4100));
    CHECK(sync_all(&n));
    CHECK(export_all(&n));
    /* Flip one byte in the middle of the file. */
    int fd = open(n.seg, O_RDWR);
    CHECK(fd >= 0);
    struct stat st;
    bool flipped = fstat(fd, &st) == 0 && st.st_size > 64;
    unsigned char byte = 0;
    off_t mid = st.st_size / 2;
    flipped = flipped && pread(fd, &byte, 1, mid) == 1;
    byte ^= 0xFF;
    flipped = flipped && pwrite(fd, &byte, 1, mid) == 1;
    close(fd);
    CHECK(flipped);
    char *before = catalog_text(b);
    CHECK(before);
    run_result r;
    CHECK(import_run(&n, 0, &r));
    CHECK(cs_run_refused(&r, "corrupt", 3));
    char *after = catalog_text(b);
    CHECK(after && strcmp(before, after) == 0);
    CHECK(copy_price(b, n.bath) == 3000);
    /* An intact file still applies. */
    CHECK(carry(&n, 0));
    CHECK(copy_price(b, n.bath) == 4100);
}

/* ---- issue 12: import edge cases and refusals that change nothing ----------------------- */

/* Issue 12 (import edge cases): an empty file is refused (invalid_input) and a fresh directory
 * is left as it was: not there. */
static void test_issue12_import_empty_file_refused_nothing_left(void)
{
    net n;
    CHECK(net_open(&n, 1));
    int fd = open(n.seg, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    close(fd);
    run_result r;
    CHECK(import_run(&n, 0, &r));
    CHECK(cs_run_refused(&r, "invalid_input", 2));
    CHECK(access(n.bdir[0], F_OK) != 0);
}

/* Issue 12: the right magic followed by garbage is `corrupt` (exit 3): no network was involved,
 * so never protocol_mismatch (exit 4); nothing is left behind. */
static void test_issue12_import_magic_then_garbage_is_corrupt(void)
{
    net n;
    CHECK(net_open(&n, 1));
    uint8_t junk[2048];
    memcpy(junk, "CSSG", 4);
    for (size_t i = 4; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 131u + 7u); /* fixed, not a valid version or length */
    int fd = open(n.seg, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    bool written = write(fd, junk, sizeof(junk)) == (ssize_t)sizeof(junk);
    close(fd);
    CHECK(written);
    run_result r;
    CHECK(import_run(&n, 0, &r));
    CHECK(cs_run_refused(&r, "corrupt", 3));
    CHECK(access(n.bdir[0], F_OK) != 0);
}

/* Issue 12: a fresh directory importing a network's log under a --shop that is no branch of
 * that network is refused (not_in_network) and nothing is left behind. */
static void test_issue12_import_shop_not_a_branch_refused(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(export_all(&n));
    run_result r;
    CHECK(run(&r, NULL, ARGS("branch", "import", n.seg, "--data", n.bdir[0], "--shop", "12345")));
    CHECK(cs_run_refused(&r, "not_in_network", 2));
    CHECK(access(n.bdir[0], F_OK) != 0);
    /* The head office's own id is no branch either. */
    CHECK(
        run(&r, NULL, ARGS("branch", "import", n.seg, "--data", n.bdir[0], "--shop", n.head_shop)));
    CHECK(cs_run_refused(&r, "not_in_network", 2));
    CHECK(access(n.bdir[0], F_OK) != 0);
    /* The right shop still imports. */
    CHECK(carry(&n, 0));
}

/* Issue 12 (refused commands change nothing): `branch import` into a head office is refused
 * (forbidden) and its store keeps the same databases and the same bytes; `audit verify
 * --branch DIR` with DIR the audited directory is refused and creates no audit database. */
static void test_issue12_refused_import_and_verify_change_nothing(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(export_all(&n));
    char *dbs = keep(cs_damage_dbs(n.hq));
    size_t len = 0;
    uint8_t *bytes = keep(cs_damage_file(n.hq, &len));
    CHECK(dbs && bytes && strstr(dbs, "events") && !strstr(dbs, "branch"));
    run_result r;
    CHECK(run(&r, NULL, ARGS("branch", "import", n.seg, "--data", n.hq, "--shop", n.shop[0])));
    CHECK(cs_run_refused(&r, "forbidden", 2));
    char *dbs2 = keep(cs_damage_dbs(n.hq));
    CHECK(dbs2 && strcmp(dbs, dbs2) == 0);
    CHECK(cs_damage_file_same(n.hq, bytes, len));
    CHECK(run(&r, NULL, ARGS("audit", "verify", "--data", n.hq, "--branch", n.hq)));
    CHECK(cs_run_refused(&r, "invalid_input", 2));
    dbs2 = keep(cs_damage_dbs(n.hq));
    CHECK(dbs2 && strcmp(dbs, dbs2) == 0 && !strstr(dbs2, "ckpt"));
    CHECK(cs_damage_file_same(n.hq, bytes, len));
    /* A verify that runs writes nothing in the store it checks, nor in the branch it
     * compares (issue 12: it opened a write transaction there). */
    CHECK(carry(&n, 0));
    uint8_t *hq_bytes = keep(cs_damage_file(n.hq, &len));
    size_t blen = 0;
    uint8_t *b_bytes = keep(cs_damage_file(n.bdir[0], &blen));
    CHECK(hq_bytes && b_bytes);
    CHECK(ok(&r, NULL, ARGS("audit", "verify", "--data", n.hq, "--branch", n.bdir[0])));
    CHECK(cs_damage_file_same(n.hq, hq_bytes, len));
    CHECK(cs_damage_file_same(n.bdir[0], b_bytes, blen));
    dbs2 = keep(cs_damage_dbs(n.hq));
    CHECK(dbs2 && strcmp(dbs, dbs2) == 0);
}

/* R1 before R11 (issue 12): on a branch, `put` and `del` of a *copied* advanced_setting are
 * read_only_copy; a new one written there is forbidden (only the head office edits them). */
static void test_r1_copied_advanced_setting_is_read_only_copy(void)
{
    net n;
    CHECK(net_open(&n, 1));
    char head_set[ID_BYTES];
    CHECK(put_item(n.hq, "advanced_setting", NULL, "{\"key\":\"max_discount\",\"value\":\"10\"}",
                   head_set));
    CHECK(carry(&n, 0));
    CHECK(sync_all(&n));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    json_t *copy = copy_of(b, "advanced_setting", head_set);
    CHECK(copy);
    char cid[ID_BYTES];
    id_text(jint(copy, "id"), cid);
    run_result r;
    CHECK(run(&r, NULL,
              ARGS("put", "advanced_setting", cid, "--data", b, "--json",
                   "{\"key\":\"max_discount\",\"value\":\"90\"}")));
    CHECK(cs_run_refused(&r, "read_only_copy", 2));
    CHECK(run(&r, NULL, ARGS("del", "advanced_setting", cid, "--data", b)));
    CHECK(cs_run_refused(&r, "read_only_copy", 2));
    CHECK(run(&r, NULL,
              ARGS("put", "advanced_setting", "--data", b, "--json",
                   "{\"key\":\"other\",\"value\":\"1\"}")));
    CHECK(cs_run_refused(&r, "forbidden", 2));
    json_t *after = get_json(b, "advanced_setting", cid);
    CHECK(after && json_equal(copy, after));
}

/* Kept references (issue 12, docs/design.md "Deletes archive"), on a store after unlink: a
 * detached service whose category type was never synced keeps the head office's category id,
 * which does not exist there; renaming the service keeps that reference and is accepted, while
 * a new service naming that id is a dangling_reference. */
static void test_issue12_detached_item_keeps_unsynced_reference(void)
{
    net n;
    CHECK(net_open(&n, 0));
    /* Before the branch is added: its first sync point (R5a) then carries no category. */
    CHECK(ok(NULL, NULL, ARGS("network", "types", "--data", n.hq, "--set", "service,combo")));
    CHECK(branch_add(&n, "branch0", n.shop[0]));
    snprintf(n.bdir[0], sizeof(n.bdir[0]), "%s/b0", n.dir);
    n.nbranches = 1;
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    json_t *bath = copy_of(b, "service", n.bath);
    CHECK(bath && jint(bath, "category") == id_num(n.cat)); /* not remapped: no copy there */
    char bath_copy[ID_BYTES];
    id_text(jint(bath, "id"), bath_copy);
    CHECK(ok(NULL, NULL, ARGS("shop", "unlink", n.shop[0], "--data", n.hq)));
    CHECK(carry(&n, 0));
    CHECK(service_put(b, bath_copy, n.cat, "Corner bath", 2500, NULL));
    json_t *got = get_json(b, "service", bath_copy);
    CHECK(got && strcmp(jstr(got, "name"), "Corner bath") == 0);
    char js[JSON_BYTES];
    snprintf(js, sizeof(js),
             "{\"name\":\"New\",\"category\":%s,\"price_table\":[{\"tier\":\"small\","
             "\"price_cents\":100}]}",
             n.cat);
    run_result r;
    CHECK(run(&r, NULL, ARGS("put", "service", "--data", b, "--json", js)));
    CHECK(cs_run_refused(&r, "dangling_reference", 2));
}

/* R10 (a directory is one shop): `branch import --shop OTHER` into a directory that is already
 * branch X is refused (invalid_input, exit 2) and changes nothing: the directory stays branch X
 * (an import as X still applies; as OTHER it is refused again). */
static void test_import_refuses_rebinding_a_branch_directory(void)
{
    net n;
    CHECK(net_open(&n, 2));
    CHECK(carry(&n, 0));
    const char *b = n.bdir[0];
    CHECK(bath_price(&n, 3300));
    CHECK(sync_all(&n));
    CHECK(export_all(&n));
    char *before = catalog_text(b);
    CHECK(before);
    run_result r;
    for (int round = 0; round < 2; round++) {
        CHECK(run(&r, NULL,
                  ARGS("branch", "import", n.seg, "--data", b, "--shop", n.shop[1], "--json-out")));
        CHECK(cs_run_refused(&r, "invalid_input", 2));
        CHECK(strstr(r.err, n.shop[0]) != NULL); /* names what the directory is */
        char *after = catalog_text(b);
        CHECK(after && strcmp(before, after) == 0);
    }
    CHECK(import_run(&n, 0, &r) && r.exit_code == 0);
    json_t *o = parse_one(r.out);
    CHECK(o && jint(o, "applied") >= 2);
    CHECK(copy_price(b, n.bath) == 3300);
}

/* R11 (the head office is not a branch): `branch import` into the head office's directory is
 * refused (forbidden, exit 2), and its log and catalog are unchanged. */
static void test_import_into_head_office_is_forbidden(void)
{
    net n;
    CHECK(net_open(&n, 1));
    CHECK(export_all(&n));
    run_result r;
    CHECK(ok(&r, NULL, ARGS("log", "--data", n.hq)));
    char *log_before = keep(strdup(r.out));
    char *before = catalog_text(n.hq);
    CHECK(log_before && before);
    CHECK(run(&r, NULL,
              ARGS("branch", "import", n.seg, "--data", n.hq, "--shop", n.shop[0], "--json-out")));
    CHECK(cs_run_refused(&r, "forbidden", 2));
    char *after = catalog_text(n.hq);
    CHECK(after && strcmp(before, after) == 0);
    CHECK(ok(&r, NULL, ARGS("log", "--data", n.hq)));
    CHECK(strcmp(log_before, r.out) == 0);
}

int main(void)
{
    if (!getenv("CS_BIN")) {
        fprintf(stderr, "CS_BIN is not set: run through ctest\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN); /* a child that exits early must not kill the test */
    TEST(test_r2_copies_have_own_ids_origin_and_remapped_references);
    TEST(test_r3_local_item_survives_sync);
    TEST(test_r4_head_delete_archives_copy);
    TEST(test_r5_sync_points);
    TEST(test_r6_switch_off_keeps_copies_on_catches_up);
    TEST(test_r7_type_taken_out_then_put_back);
    TEST(test_r8_shared_records_written_anywhere_and_not_gated);
    TEST(test_r1_branch_cannot_write_copies);
    TEST(test_r13_unlink_detaches_copies);
    TEST(test_r10_single_store_joins_as_branch);
    TEST(test_import_refuses_gap_after_cursor);
    TEST(test_import_refuses_gap_on_fresh_branch);
    TEST(test_import_refuses_corrupt_file);
    TEST(test_issue12_import_empty_file_refused_nothing_left);
    TEST(test_issue12_import_magic_then_garbage_is_corrupt);
    TEST(test_issue12_import_shop_not_a_branch_refused);
    TEST(test_issue12_refused_import_and_verify_change_nothing);
    TEST(test_r1_copied_advanced_setting_is_read_only_copy);
    TEST(test_issue12_detached_item_keeps_unsynced_reference);
    TEST(test_import_refuses_rebinding_a_branch_directory);
    TEST(test_import_into_head_office_is_forbidden);
    return cs_test_finish();
}
