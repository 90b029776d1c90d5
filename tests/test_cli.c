/*
 * test_cli.c: drives the real `chainsync` binary (path in $CS_BIN) on temporary data
 * directories and checks SPEC 6 and 7 from the outside: output shapes (--json-out parsed by
 * jansson), the `error: <code>:` line and exit code of every refusal, and that a refused command
 * leaves the log byte-identical (SPEC 6: bad input changes nothing).
 *
 * Every child is bounded: its output is drained with poll() under a deadline and it is killed
 * and reaped when the deadline passes (RUN_DEADLINE_MS), so a hung command fails its test
 * instead of hanging the suite.
 */
#include "log/log.h"
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

/* A CLI command is one short LMDB transaction; a minute means it is stuck. */
#define RUN_DEADLINE_MS 60000

typedef cs_run_result run_result;

/* Runs chainsync with args (NULL-terminated) and input on stdin (NULL = empty). With env_data,
 * CHAINSYNC_DATA is set to data; else it is unset. */
static bool run_env(run_result *r, const char *input, bool env_data, const char *data,
                    const char *const *args)
{
    return cs_run(r, input, env_data ? data : NULL, args, RUN_DEADLINE_MS);
}

static bool run(run_result *r, const char *input, const char *const *args)
{
    return run_env(r, input, false, NULL, args);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* True when stderr starts with `error: <code>: ` and the exit code is want_exit. */
/* A data directory initialised as a single store, or as a head office when head. */
static char *store_new(bool head)
{
    char *dir = cs_test_tmpdir_kept("cli");
    if (!dir)
        return NULL;
    run_result r;
    bool ok = run(&r, NULL, ARGS("init", "--data", dir, "--name", "Pets HQ")) && r.exit_code == 0;
    cs_run_free(&r);
    if (ok && head)
        ok = run(&r, NULL, ARGS("network", "create", "--data", dir, "--name", "Pets Chain")) &&
             r.exit_code == 0;
    if (head)
        cs_run_free(&r);
    if (!ok) {
        cs_test_tmpdir_free(dir);
        return NULL;
    }
    return dir;
}

/* Runs a put/del with --json-out and returns its id (0 on failure); *version_out gets its
 * version when not NULL. */
static uint64_t write_id(const char *input, const char *const *args, uint64_t *version_out)
{
    run_result r;
    uint64_t id = 0;
    if (run(&r, input, args) && r.exit_code == 0) {
        json_t *o = json_loads(r.out, 0, NULL);
        if (json_is_integer(json_object_get(o, "id")) && json_is_integer(json_object_get(o, "seq")))
            id = (uint64_t)json_integer_value(json_object_get(o, "id"));
        if (version_out)
            *version_out = (uint64_t)json_integer_value(json_object_get(o, "version"));
        json_decref(o);
    } else {
        fprintf(stderr, "  write failed: exit %d: %s", r.exit_code, r.err);
    }
    cs_run_free(&r);
    return id;
}

/* A service_category; returns its id as text in buf. */
static bool category_new(const char *dir, char *buf, size_t len)
{
    uint64_t id = write_id(NULL,
                           ARGS("put", "service_category", "--data", dir, "--json-out", "--json",
                                "{\"name\":\"Grooming\"}"),
                           NULL);
    snprintf(buf, len, "%llu", (unsigned long long)id);
    return id != 0;
}

/* A valid service's fields, in buf (SERVICE_JSON_BYTES). */
#define SERVICE_JSON_BYTES 512
static char *service_json(char *buf, const char *category, const char *name)
{
    snprintf(buf, SERVICE_JSON_BYTES,
             "{\"name\":\"%s\",\"category\":%s,\"price_table\":[{\"tier\":\"small\","
             "\"price_cents\":3000}]}",
             name, category);
    return buf;
}

/* The whole `chainsync log` output (owned), or NULL. */
static char *log_text(const char *dir)
{
    run_result r;
    char *text = NULL;
    if (run(&r, NULL, ARGS("log", "--data", dir)) && r.exit_code == 0) {
        text = r.out;
        r.out = NULL;
    }
    cs_run_free(&r);
    return text;
}

/* ---- SPEC 7: init, network create ------------------------------------------------------- */

/* SPEC 7 `init`: a single store; prints its shop id (human and --json-out). */
static void test_spec7_init_prints_shop_id(void)
{
    char *dir = cs_test_tmpdir_kept("cli");
    CHECK(dir);
    run_result r;
    CHECK(run(&r, NULL, ARGS("init", "--data", dir, "--name", "Pets HQ", "--json-out")));
    CHECK(r.exit_code == 0);
    json_t *o = json_loads(r.out, 0, NULL);
    CHECK(o);
    CHECK(json_integer_value(json_object_get(o, "id")) > 0);
    CHECK(strcmp(json_string_value(json_object_get(o, "role")), "single") == 0);
    json_decref(o);
    cs_run_free(&r);
    /* A second init is refused: the store keeps its identity. */
    CHECK(run(&r, NULL, ARGS("init", "--data", dir, "--name", "Other")));
    CHECK(cs_run_refused(&r, "forbidden", 2));
    cs_run_free(&r);
    /* Human output names the id too. */
    char *dir2 = cs_test_tmpdir_kept("cli");
    CHECK(dir2);
    CHECK(run(&r, NULL, ARGS("init", "--data", dir2, "--name", "Second")));
    CHECK(r.exit_code == 0 && strstr(r.out, "shop id "));
    cs_run_free(&r);
    cs_test_tmpdir_free(dir2);
    cs_test_tmpdir_free(dir);
}

/* SPEC 7 `network create` (R10): a single store becomes the head office. */
static void test_spec7_network_create_makes_head_office(void)
{
    char *dir = store_new(false);
    CHECK(dir);
    run_result r;
    CHECK(run(&r, NULL, ARGS("network", "create", "--data", dir, "--name", "Chain", "--json-out")));
    CHECK(r.exit_code == 0);
    json_t *o = json_loads(r.out, 0, NULL);
    CHECK(o && strcmp(json_string_value(json_object_get(o, "role")), "head") == 0);
    json_decref(o);
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("shop", "list", "--data", dir, "--json-out")));
    CHECK(r.exit_code == 0);
    o = json_loads(r.out, JSON_DISABLE_EOF_CHECK, NULL);
    CHECK(o && strcmp(json_string_value(json_object_get(o, "role")), "head") == 0);
    json_decref(o);
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* SPEC 7 `shop list`: one object per shop with id, name, role, switch, cursor, lag, last_seen;
 * --password-stdin reads one line. */
static void test_spec7_shop_add_and_list_shapes(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    run_result r;
    CHECK(run(&r, "branch-password\n",
              ARGS("shop", "add", "--data", dir, "--name", "Downtown", "--password-stdin",
                   "--json-out")));
    CHECK(r.exit_code == 0);
    json_t *added = json_loads(r.out, 0, NULL);
    json_int_t branch_id = json_integer_value(json_object_get(added, "id"));
    json_decref(added);
    CHECK(branch_id > 0);
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("shop", "list", "--data", dir, "--json-out")));
    CHECK(r.exit_code == 0);
    int lines = 0, branches = 0;
    static const char *const keys[] = {"id",     "name", "role",     "switch",
                                       "cursor", "lag",  "last_seen"};
    for (char *save = NULL, *line = strtok_r(r.out, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save), lines++) {
        json_t *o = json_loads(line, 0, NULL);
        CHECK(o);
        for (unsigned k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
            CHECK(json_object_get(o, keys[k]));
        if (strcmp(json_string_value(json_object_get(o, "role")), "branch") == 0) {
            branches++;
            CHECK(json_integer_value(json_object_get(o, "id")) == branch_id);
            CHECK(strcmp(json_string_value(json_object_get(o, "name")), "Downtown") == 0);
        }
        json_decref(o);
    }
    CHECK(lines == 2 && branches == 1);
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* SPEC 7 --password-stdin: an empty line is refused, nothing is added. */
static void test_spec7_password_stdin_refuses_empty(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    char *before = log_text(dir);
    CHECK(before);
    run_result r;
    CHECK(run(&r, "\n", ARGS("shop", "add", "--data", dir, "--name", "X", "--password-stdin")));
    CHECK(cs_run_refused(&r, "invalid_input", 2));
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("shop", "add", "--data", dir, "--name", "X", "--password-stdin")));
    CHECK(cs_run_refused(&r, "invalid_input", 2));
    cs_run_free(&r);
    CHECK(run(&r, "pw-long-enough\n", ARGS("shop", "add", "--data", dir, "--name", "X")));
    CHECK(cs_run_refused(&r, "usage", 1));
    cs_run_free(&r);
    char *after = log_text(dir);
    CHECK(after && strcmp(before, after) == 0);
    free(before);
    free(after);
    cs_test_tmpdir_free(dir);
}

/* ---- SPEC 7: items ----------------------------------------------------------------------- */

/* Parses `get TYPE ID --json-out`. */
static json_t *get_json(const char *dir, const char *type, const char *id)
{
    run_result r;
    json_t *o = NULL;
    if (run(&r, NULL, ARGS("get", type, id, "--data", dir, "--json-out")) && r.exit_code == 0)
        o = json_loads(r.out, 0, NULL);
    cs_run_free(&r);
    return o;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* SPEC 7 put/get/list/del with --json-out; R4: a deleted item is archived, left out of lists,
 * still resolvable by id. */
static void test_spec7_put_get_list_del_round_trip(void)
{
    char js[SERVICE_JSON_BYTES];
    char *dir = store_new(true);
    CHECK(dir);
    char cat[32], sid[32];
    CHECK(category_new(dir, cat, sizeof(cat)));
    uint64_t v = 0;
    uint64_t id = write_id(service_json(js, cat, "Bath"),
                           ARGS("put", "service", "--data", dir, "--json-out"), &v);
    CHECK(id && v == 1);
    snprintf(sid, sizeof(sid), "%llu", (unsigned long long)id);
    json_t *o = get_json(dir, "service", sid);
    CHECK(o);
    CHECK(strcmp(json_string_value(json_object_get(o, "type")), "service") == 0);
    CHECK((uint64_t)json_integer_value(json_object_get(o, "id")) == id);
    CHECK(strcmp(json_string_value(json_object_get(o, "name")), "Bath") == 0);
    CHECK(json_is_false(json_object_get(o, "archived")));
    CHECK(json_is_null(json_object_get(o, "origin")));
    json_decref(o);
    /* Update with the right expected version. */
    CHECK(
        write_id(service_json(js, cat, "Bath & Brush"),
                 ARGS("put", "service", sid, "--expect-version", "1", "--data", dir, "--json-out"),
                 &v) == id);
    CHECK(v == 2);
    run_result r;
    CHECK(run(&r, NULL, ARGS("list", "service", "--data", dir, "--json-out")));
    CHECK(r.exit_code == 0 && count_lines(r.out) == 1);
    o = json_loads(r.out, 0, NULL);
    CHECK(o && strcmp(json_string_value(json_object_get(o, "name")), "Bath & Brush") == 0);
    json_decref(o);
    cs_run_free(&r);
    CHECK(write_id(NULL, ARGS("del", "service", sid, "--data", dir, "--json-out"), &v) == id);
    CHECK(v == 3);
    CHECK(run(&r, NULL, ARGS("list", "service", "--data", dir, "--json-out")));
    CHECK(r.exit_code == 0 && r.out_len == 0);
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("list", "service", "--archived", "--data", dir, "--json-out")));
    CHECK(r.exit_code == 0 && count_lines(r.out) == 1);
    cs_run_free(&r);
    o = get_json(dir, "service", sid);
    CHECK(o && json_is_true(json_object_get(o, "archived")));
    json_decref(o);
    cs_test_tmpdir_free(dir);
}

/* SPEC 7 human output: put prints "created TYPE ID version V at seq S", get prints field
 * lines with origin and archived, list prints a table with a header. */
static void test_spec7_human_output_shapes(void)
{
    char *dir = store_new(false);
    CHECK(dir);
    run_result r;
    CHECK(run(&r, "{\"name\":\"Dogs\"}", ARGS("put", "species", "--data", dir)));
    CHECK(r.exit_code == 0 && strncmp(r.out, "created species ", 16) == 0);
    CHECK(strstr(r.out, " version 1 at seq "));
    char id[32];
    CHECK(sscanf(r.out, "created species %31s", id) == 1);
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("get", "species", id, "--data", dir)));
    CHECK(r.exit_code == 0 && strstr(r.out, "name:") && strstr(r.out, "Dogs"));
    CHECK(strstr(r.out, "archived:") && strstr(r.out, "origin:"));
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("list", "species", "--data", dir)));
    CHECK(r.exit_code == 0 && strncmp(r.out, "id ", 3) == 0 && strstr(r.out, "Dogs"));
    CHECK(strstr(r.out, "archived") && strstr(r.out, "origin"));
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* ---- SPEC 6: refusals -------------------------------------------------------------------- */

/* SPEC 6 unknown_type: a type outside the schema is refused with exit 2. */
static void test_spec6_unknown_type(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    run_result r;
    CHECK(run(&r, NULL, ARGS("put", "hamster", "--data", dir, "--json", "{\"name\":\"x\"}")));
    CHECK(cs_run_refused(&r, "unknown_type", 2));
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("list", "hamster", "--data", dir)));
    CHECK(cs_run_refused(&r, "unknown_type", 2));
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* SPEC 6 invalid_input: unknown field, missing required field, wrong kind, malformed JSON,
 * and a non-object. */
static void test_spec6_invalid_input_shapes(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    char cat[32];
    CHECK(category_new(dir, cat, sizeof(cat)));
    char unknown[256], wrong[256], missing[256];
    snprintf(unknown, sizeof(unknown),
             "{\"name\":\"x\",\"colour\":\"red\",\"category\":%s,\"price_table\":"
             "[{\"tier\":\"s\",\"price_cents\":1}]}",
             cat);
    snprintf(wrong, sizeof(wrong),
             "{\"name\":7,\"category\":%s,\"price_table\":[{\"tier\":\"s\",\"price_cents\":1}]}",
             cat);
    snprintf(missing, sizeof(missing), "{\"name\":\"x\",\"category\":%s}", cat);
    const char *inputs[] = {unknown, wrong, missing, "[1,2]", "{\"name\":\"x\",}"};
    run_result r;
    for (unsigned i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        CHECK(run(&r, inputs[i], ARGS("put", "service", "--data", dir)));
        CHECK(cs_run_refused(&r, "invalid_input", 2));
        cs_run_free(&r);
    }
    CHECK(run(&r, "{\"name\":\"x\",}", ARGS("put", "service", "--data", dir)));
    CHECK(strstr(r.err, "malformed JSON at line 1 column "));
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* SPEC 6 invalid_input, limits: a name is 1..120 bytes: 120 is accepted, 121 refused, 0 refused. */
static void test_spec6_oversize_string_is_invalid_input(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    char name[200], json[300];
    run_result r;
    static const size_t sizes[] = {119, 120, 121, 0};
    static const int want[] = {0, 0, 2, 2};
    for (unsigned i = 0; i < 4; i++) {
        memset(name, 'a', sizes[i]);
        name[sizes[i]] = '\0';
        snprintf(json, sizeof(json), "{\"name\":\"%s\"}", name);
        CHECK(run(&r, json, ARGS("put", "petcare_category", "--data", dir)));
        CHECK(r.exit_code == want[i]);
        if (want[i])
            CHECK(cs_run_refused(&r, "invalid_input", 2));
        cs_run_free(&r);
    }
    cs_test_tmpdir_free(dir);
}

/* SPEC 6 dangling_reference: a reference to an item that does not exist. */
static void test_spec6_dangling_reference(void)
{
    char js[SERVICE_JSON_BYTES];
    char *dir = store_new(true);
    CHECK(dir);
    run_result r;
    CHECK(run(&r, service_json(js, "999999", "Bath"), ARGS("put", "service", "--data", dir)));
    CHECK(cs_run_refused(&r, "dangling_reference", 2));
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* SPEC 6 / R8 version_conflict: --expect-version that does not match, on put and del. */
static void test_spec6_expect_version_mismatch_is_version_conflict(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    uint64_t id =
        write_id("{\"name\":\"Dogs\"}", ARGS("put", "species", "--data", dir, "--json-out"), NULL);
    CHECK(id);
    char sid[32];
    snprintf(sid, sizeof(sid), "%llu", (unsigned long long)id);
    run_result r;
    CHECK(run(&r, "{\"name\":\"Cats\"}",
              ARGS("put", "species", sid, "--expect-version", "2", "--data", dir)));
    CHECK(cs_run_refused(&r, "version_conflict", 2));
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("del", "species", sid, "--expect-version", "9", "--data", dir)));
    CHECK(cs_run_refused(&r, "version_conflict", 2));
    cs_run_free(&r);
    json_t *o = get_json(dir, "species", sid);
    CHECK(o && json_integer_value(json_object_get(o, "version")) == 1);
    CHECK(strcmp(json_string_value(json_object_get(o, "name")), "Dogs") == 0);
    json_decref(o);
    cs_test_tmpdir_free(dir);
}

/* R10/R11 not_in_network: a single store may only create a network. */
static void test_r10_network_command_on_single_store_is_not_in_network(void)
{
    char *dir = store_new(false);
    CHECK(dir);
    run_result r;
    CHECK(run(&r, NULL, ARGS("network", "mode", "continuous", "--data", dir)));
    CHECK(cs_run_refused(&r, "not_in_network", 2));
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("sync", "--data", dir)));
    CHECK(cs_run_refused(&r, "not_in_network", 2));
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("network", "types", "--data", dir)));
    CHECK(cs_run_refused(&r, "not_in_network", 2));
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* SPEC 7 --data: missing both --data and $CHAINSYNC_DATA is a usage error (exit 1); the
 * environment variable alone is enough. */
static void test_spec7_missing_data_is_usage_error(void)
{
    run_result r;
    CHECK(run(&r, NULL, ARGS("list", "service")));
    CHECK(cs_run_refused(&r, "usage", 1));
    CHECK(strstr(r.err, "--help"));
    cs_run_free(&r);
    char *dir = store_new(false);
    CHECK(dir);
    CHECK(run_env(&r, NULL, true, dir, ARGS("list", "service")));
    CHECK(r.exit_code == 0);
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* SPEC 6 exit 1: unknown command, missing argument, bad option, garbage numbers. */
static void test_spec6_usage_errors_exit_1(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    const char *const *cases[] = {
        ARGS("frobnicate", "--data", dir),
        ARGS("network", "--data", dir),
        ARGS("network", "frob", "--data", dir),
        ARGS("get", "service", "--data", dir),
        ARGS("get", "service", "12x", "--data", dir),
        ARGS("get", "service", "0", "--data", dir),
        ARGS("get", "service", "18446744073709551616", "--data", dir),
        ARGS("list", "service", "--bogus", "--data", dir),
        ARGS("log", "--from", "--data", dir),
        ARGS("log", "--limit", "ten", "--data", dir),
        ARGS("shop", "switch", "1", "maybe", "--data", dir),
        ARGS("network", "mode", "sometimes", "--data", dir),
        ARGS("put", "species", "--expect-version", "1", "--data", dir),
        ARGS("log", "export", "--data", dir),
        ARGS("serve", "--data", dir),
    };
    run_result r;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CHECK(run(&r, NULL, cases[i]));
        CHECK(cs_run_refused(&r, "usage", 1));
        CHECK(strstr(r.err, "--help"));
        CHECK(r.out_len == 0); /* usage text goes to stderr: stdout carries only results */
        cs_run_free(&r);
    }
    cs_test_tmpdir_free(dir);
}

/* SPEC 7: a command on a directory that holds no store is refused and creates nothing. */
static void test_spec7_command_on_missing_store_creates_nothing(void)
{
    char *dir = cs_test_tmpdir_kept("cli");
    CHECK(dir);
    char sub[512];
    snprintf(sub, sizeof(sub), "%s/none", dir);
    run_result r;
    CHECK(run(&r, NULL, ARGS("list", "service", "--data", sub)));
    CHECK(cs_run_refused(&r, "not_found", 2));
    cs_run_free(&r);
    struct stat st;
    CHECK(stat(sub, &st) != 0);
    cs_test_tmpdir_free(dir);
}

/* SPEC 6 "Bad input changes nothing": every refused command leaves `chainsync log` output
 * byte-identical. */
static void test_spec6_refused_command_leaves_log_unchanged(void)
{
    char js[SERVICE_JSON_BYTES], js2[SERVICE_JSON_BYTES];
    char *dir = store_new(true);
    CHECK(dir);
    char cat[32];
    CHECK(category_new(dir, cat, sizeof(cat)));
    uint64_t id = write_id(service_json(js, cat, "Bath"),
                           ARGS("put", "service", "--data", dir, "--json-out"), NULL);
    CHECK(id);
    char sid[32];
    snprintf(sid, sizeof(sid), "%llu", (unsigned long long)id);
    char *before = log_text(dir);
    CHECK(before && count_lines(before) >= 4);
    struct {
        const char *input;
        const char *const *args;
    } cases[] = {
        {"{\"name\":\"x\"}", ARGS("put", "hamster", "--data", dir)},
        {"{\"name\":\"x\",\"bogus\":1}", ARGS("put", "service_category", "--data", dir)},
        {"{\"name\":", ARGS("put", "service_category", "--data", dir)},
        {service_json(js, "424242", "x"), ARGS("put", "service", "--data", dir)},
        {service_json(js2, cat, "x"),
         ARGS("put", "service", sid, "--expect-version", "7", "--data", dir)},
        {NULL, ARGS("del", "service", sid, "--expect-version", "7", "--data", dir)},
        {NULL, ARGS("del", "service", "77", "--data", dir)},
        {NULL, ARGS("network", "create", "--name", "Again", "--data", dir)},
        {NULL, ARGS("network", "types", "--set", "hamster", "--data", dir)},
        {NULL, ARGS("shop", "switch", "12345", "off", "--data", dir)},
        {NULL, ARGS("frobnicate", "--data", dir)},
    };
    run_result r;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CHECK(run(&r, cases[i].input, cases[i].args));
        if (r.exit_code != 1 && r.exit_code != 2)
            fprintf(stderr, "  case %u accepted\n", i);
        CHECK(r.exit_code == 1 || r.exit_code == 2);
        CHECK(strncmp(r.err, "error: ", 7) == 0);
        cs_run_free(&r);
        char *after = log_text(dir);
        CHECK(after);
        bool same = strcmp(before, after) == 0;
        free(after);
        CHECK(same);
    }
    free(before);
    cs_test_tmpdir_free(dir);
}

/* Issue 12 (hostile input), SPEC 6: JSON to `put` nested far deeper than any item (100,000
 * levels), bytes that are not UTF-8 in a value or a key, an escaped NUL or lone surrogate, an
 * integer beyond 64 bits, values outside their field's range, a list longer than its field
 * allows; and a shop or network name that is not UTF-8. Each is refused with invalid_input
 * (exit 2) and a sentence that names the point, and the log is unchanged. */
static void test_issue12_hostile_input_refused_and_log_unchanged(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    char *before = log_text(dir);
    CHECK(before);
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 16);
    CHECK(deep);
    memcpy(deep, "{\"name\":", 8);
    memset(deep + 8, '[', depth);
    memset(deep + 8 + depth, ']', depth);
    strcpy(deep + 8 + 2 * depth, "}");
    char long_list[2048] = "{\"name\":\"x\",\"items\":[";
    for (int i = 0; i < 201; i++)
        strcat(long_list, i ? ",\"a\"" : "\"a\"");
    strcat(long_list, "]}");
    struct {
        const char *type, *input, *says;
    } cases[] = {
        {"customer", deep, "maximum parsing depth"},
        {"customer", "{\"name\":\"a\xff\"}", "unable to decode byte 0xff"},
        {"customer", "{\"na\xc0\xafme\":\"a\"}", "unable to decode byte 0xc0"},
        {"customer", "{\"name\":\"a\\u0000b\"}", "\\u0000 is not allowed"},
        {"customer", "{\"name\":\"a\\ud800\"}", "invalid Unicode"},
        {"service_category",
         "{\"name\":\"x\",\"price_table\":[{\"tier\":\"s\",\"price_cents\":9223372036854775808}]}",
         "too big integer"},
        {"service_category",
         "{\"name\":\"x\",\"price_table\":[{\"tier\":\"s\",\"price_cents\":-1}]}",
         "'price_table[0].price_cents': must be from 0 to"},
        {"service_category",
         "{\"name\":\"x\",\"price_table\":[{\"tier\":\"s\",\"price_cents\":1e300}]}",
         "'price_table[0].price_cents': expected an integer"},
        {"checklist", long_list, "'items': holds at most 200 entries"},
    };
    run_result r;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CHECK(run(&r, cases[i].input, ARGS("put", cases[i].type, "--data", dir)));
        if (!strstr(r.err, cases[i].says))
            fprintf(stderr, "  case %u: %s", i, r.err);
        CHECK(cs_run_refused(&r, "invalid_input", 2) && strstr(r.err, cases[i].says));
        cs_run_free(&r);
    }
    free(deep);
    CHECK(run(&r, "password123\n",
              ARGS("shop", "add", "--data", dir, "--name", "Caf\xc3", "--password-stdin")));
    CHECK(cs_run_refused(&r, "invalid_input", 2) && strstr(r.err, "must be UTF-8"));
    cs_run_free(&r);
    char *after = log_text(dir);
    CHECK(after);
    bool same = strcmp(before, after) == 0;
    free(after);
    free(before);
    CHECK(same);
    cs_test_tmpdir_free(dir);
}

/* SPEC 7 `log`: events as JSON lines in sequence order; --from and --limit select a range. */
static void test_spec7_log_prints_json_lines(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    char cat[32];
    CHECK(category_new(dir, cat, sizeof(cat)));
    run_result r;
    CHECK(run(&r, NULL, ARGS("log", "--data", dir)));
    CHECK(r.exit_code == 0);
    int n = 0;
    for (char *save = NULL, *line = strtok_r(r.out, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        json_t *o = json_loads(line, 0, NULL);
        CHECK(o);
        n++;
        CHECK(json_integer_value(json_object_get(o, "seq")) == n);
        CHECK(json_is_string(json_object_get(o, "kind")));
        CHECK(json_is_object(json_object_get(o, "fields")));
        json_decref(o);
    }
    CHECK(n >= 3);
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("log", "--from", "2", "--limit", "1", "--data", dir)));
    CHECK(r.exit_code == 0 && count_lines(r.out) == 1);
    json_t *o = json_loads(r.out, 0, NULL);
    CHECK(o && json_integer_value(json_object_get(o, "seq")) == 2);
    json_decref(o);
    cs_run_free(&r);
    CHECK(run(&r, NULL, ARGS("log", "--from", "1000", "--data", dir)));
    CHECK(r.exit_code == 0 && r.out_len == 0);
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* SPEC 7 `log export --json-out`: one JSON object whose "out" is the path exactly as given, even
 * when it holds a quote and a backslash (it was once printed into the JSON unescaped). */
static void test_spec7_log_export_json_out_escapes_the_path(void)
{
    char *dir = store_new(true),
         *odir = cs_test_tmpdir_kept("cli"); /* never inside the data directory */
    CHECK(dir && odir);
    char out[512];
    snprintf(out, sizeof(out), "%s/exp\"ort\\1.seg", odir);
    run_result r;
    CHECK(run(&r, NULL, ARGS("log", "export", "--data", dir, "--out", out, "--json-out")));
    CHECK(r.exit_code == 0 && count_lines(r.out) == 1);
    json_t *o = json_loads(r.out, 0, NULL);
    cs_run_free(&r);
    CHECK(o);
    bool same = json_is_string(json_object_get(o, "out")) &&
                strcmp(json_string_value(json_object_get(o, "out")), out) == 0;
    bool counts = json_integer_value(json_object_get(o, "from")) == 1 &&
                  json_integer_value(json_object_get(o, "events")) >= 2;
    json_decref(o);
    CHECK(same && counts);
    CHECK(access(out, R_OK) == 0);
    cs_test_tmpdir_free(dir);
    cs_test_tmpdir_free(odir);
}

/* SPEC 7 --actor: recorded in the events the command causes. */
static void test_spec7_actor_is_recorded(void)
{
    char *dir = store_new(false);
    CHECK(dir);
    CHECK(write_id("{\"name\":\"Dogs\"}",
                   ARGS("put", "species", "--data", dir, "--json-out", "--actor", "ana"), NULL));
    run_result r;
    CHECK(run(&r, NULL, ARGS("log", "--from", "2", "--data", dir)));
    CHECK(r.exit_code == 0);
    json_t *o = json_loads(r.out, JSON_DISABLE_EOF_CHECK, NULL);
    CHECK(o && strcmp(json_string_value(json_object_get(o, "actor")), "ana") == 0);
    json_decref(o);
    cs_run_free(&r);
    cs_test_tmpdir_free(dir);
}

/* SPEC 7: `chainsync --help` lists every command; each command's --help has an example. */
static void test_spec7_help_lists_every_command(void)
{
    static const char *const cmds[][2] = {
        {"init", NULL},      {"network", "create"},   {"network", "types"},
        {"network", "mode"}, {"network", "whatsapp"}, {"shop", "add"},
        {"shop", "list"},    {"shop", "switch"},      {"shop", "password"},
        {"shop", "unlink"},  {"shop", "whatsapp"},    {"whatsapp", "resolve"},
        {"put", NULL},       {"get", NULL},           {"list", NULL},
        {"del", NULL},       {"sync", NULL},          {"log", NULL},
    };
    run_result r;
    CHECK(run(&r, NULL, ARGS("--help")));
    CHECK(r.exit_code == 0);
    char *overview = r.out;
    r.out = NULL;
    cs_run_free(&r);
    for (unsigned i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        char want[64];
        snprintf(want, sizeof(want), "  %s%s%s", cmds[i][0], cmds[i][1] ? " " : "",
                 cmds[i][1] ? cmds[i][1] : "");
        bool listed = strstr(overview, want) != NULL;
        if (!listed)
            free(overview);
        CHECK(listed);
        bool ok = cmds[i][1] ? run(&r, NULL, ARGS(cmds[i][0], cmds[i][1], "--help"))
                             : run(&r, NULL, ARGS(cmds[i][0], "--help"));
        ok = ok && r.exit_code == 0 && strstr(r.out, "Example") && strstr(r.out, "usage: ");
        cs_run_free(&r);
        if (!ok)
            free(overview);
        CHECK(ok);
    }
    free(overview);
}

/* Issue 12 (rule bug 2, docs/design.md "Deletes archive"): an update that keeps a reference to
 * an archived item is accepted (a service whose category was deleted can be renamed); a new
 * reference to it, from a new item or newly in an update, is dangling_reference. */
static void test_issue12_kept_reference_to_archived_item_accepted(void)
{
    char *dir = store_new(true);
    CHECK(dir);
    char cat[32], other[32], js[SERVICE_JSON_BYTES];
    CHECK(category_new(dir, cat, sizeof(cat)) && category_new(dir, other, sizeof(other)));
    uint64_t sid = write_id(service_json(js, cat, "Bath"),
                            ARGS("put", "service", "--data", dir, "--json-out"), NULL);
    uint64_t oid = write_id(service_json(js, other, "Trim"),
                            ARGS("put", "service", "--data", dir, "--json-out"), NULL);
    CHECK(sid && oid);
    run_result r;
    CHECK(run(&r, NULL, ARGS("del", "service_category", cat, "--data", dir)) && r.exit_code == 0);
    cs_run_free(&r);
    char id[32], id2[32];
    snprintf(id, sizeof(id), "%llu", (unsigned long long)sid);
    snprintf(id2, sizeof(id2), "%llu", (unsigned long long)oid);
    CHECK(write_id(service_json(js, cat, "Bath, renamed"),
                   ARGS("put", "service", id, "--data", dir, "--json-out"), NULL) == sid);
    char *before = log_text(dir);
    CHECK(before);
    CHECK(run(&r, service_json(js, cat, "New"), ARGS("put", "service", "--data", dir)));
    bool new_refused = cs_run_refused(&r, "dangling_reference", 2);
    cs_run_free(&r);
    CHECK(run(&r, service_json(js, cat, "Trim"), ARGS("put", "service", id2, "--data", dir)));
    bool moved_refused = cs_run_refused(&r, "dangling_reference", 2);
    cs_run_free(&r);
    char *after = log_text(dir);
    bool same = after && strcmp(before, after) == 0;
    free(before);
    free(after);
    CHECK(new_refused && moved_refused && same);
    cs_test_tmpdir_free(dir);
}

int main(void)
{
    if (!getenv("CS_BIN")) {
        fprintf(stderr, "CS_BIN is not set: run through ctest\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN); /* a child that exits early must not kill the test */
    RUN(test_spec7_init_prints_shop_id);
    RUN(test_spec7_network_create_makes_head_office);
    RUN(test_spec7_shop_add_and_list_shapes);
    RUN(test_spec7_password_stdin_refuses_empty);
    RUN(test_spec7_put_get_list_del_round_trip);
    RUN(test_spec7_human_output_shapes);
    RUN(test_spec6_unknown_type);
    RUN(test_spec6_invalid_input_shapes);
    RUN(test_spec6_oversize_string_is_invalid_input);
    RUN(test_spec6_dangling_reference);
    RUN(test_spec6_expect_version_mismatch_is_version_conflict);
    RUN(test_r10_network_command_on_single_store_is_not_in_network);
    RUN(test_spec7_missing_data_is_usage_error);
    RUN(test_spec6_usage_errors_exit_1);
    RUN(test_spec7_command_on_missing_store_creates_nothing);
    RUN(test_spec6_refused_command_leaves_log_unchanged);
    RUN(test_issue12_hostile_input_refused_and_log_unchanged);
    RUN(test_spec7_log_prints_json_lines);
    RUN(test_spec7_log_export_json_out_escapes_the_path);
    RUN(test_spec7_actor_is_recorded);
    RUN(test_spec7_help_lists_every_command);
    RUN(test_issue12_kept_reference_to_archived_item_accepted);
    cs_test_tmpdirs_cleanup();
    return cs_test_finish();
}
