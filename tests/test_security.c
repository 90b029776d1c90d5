/*
 * test_security.c: issue 12 "Security" against the real binary: a head office made with
 * `chainsync`, served by `chainsync serve` on 127.0.0.1, attacked by tests/protocol_client.py
 * (a branch written from docs/protocol.md alone) acting as a hostile branch: it logs in with its
 * own password and then sends WRITE frames the real node never would. Checked here:
 *   - repeated failed logins from one address are slowed (net/server.c), other addresses not;
 *   - passwords come only from standard input: no argument, no environment variable, and the
 *     password appears in no file of either directory and no log (R9);
 *   - what the head office stores (StoredKey, ServerKey) cannot log in by itself;
 *   - through the protocol a branch cannot write catalog items (R1), cannot change a password
 *     (R11), cannot act as another shop, and cannot make the head office append what the CLI
 *     would refuse (the same code, nothing appended).
 * A replayed PROOF is test_protocol.c's test_protocol_handshake_replayed_proof_is_auth_failed.
 *
 * Needs /usr/bin/python3 with python3-msgpack, python3-nacl, python3-xxhash (tools/setup.sh).
 */
#include "tests/harness.h"
#include "tests/net_fixture.h"
#include "tests/run.h"

#include "engine/engine.h"

#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>

#define PYTHON "/usr/bin/python3"
#define PASSWORD "sec-branch-password-1"
#define PASSWORD2 "sec-branch-password-2"
#define CMD_MS 60000u
#define READY_MS 15000u
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static char *hq, *bdir;
static char ready_file[512], serve_log[512], follow_log[512], hostport[128];
static char b1[32], b2[32]; /* the branches' shop ids */
static unsigned long long b1_id, b2_id, cat_id;
static pid_t serve_pid = -1;
static char client_py[1024];

/* ---- processes ---------------------------------------------------------------------------- */

/* `chainsync args` with input; the exit code (-1 when it could not run). */
static int cs(const char *input, const char *const *args, char **out, char **err)
{
    return cs_run_code(input, args, out, err, CMD_MS, false);
}

static bool start_serve(void)
{
    return cs_fix_serve_start(&serve_pid, hq, NULL, ready_file, serve_log, hostport,
                              sizeof(hostport), READY_MS);
}

/* The doc client as shop `shop` with `password` on stdin and extra arguments; its summary. */
static json_t *client(const char *shop, const char *password, const char *const *extra,
                      uint64_t *took_ms)
{
    const char *argv[32] = {PYTHON, client_py, hostport, "--shop", shop, "--password-stdin"};
    size_t n = 6;
    for (size_t i = 0; extra && extra[i] && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    char in[128];
    snprintf(in, sizeof(in), "%s\n", password);
    cs_run_result r;
    uint64_t t0 = cs_run_now_ms();
    bool ok = cs_run_prog(&r, in, argv, CMD_MS);
    if (took_ms)
        *took_ms = cs_run_now_ms() - t0;
    json_error_t je;
    json_t *o = ok ? json_loads(r.out, 0, &je) : NULL;
    if (!o || r.exit_code != 0)
        fprintf(stderr, "  protocol_client.py exited %d: %s%s", r.exit_code, r.out, r.err);
    cs_run_free(&r);
    return o;
}

static const char *jpath(const json_t *o, const char *a, const char *b, const char *c)
{
    const json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    if (c)
        v = json_object_get(v, c);
    return json_is_string(v) ? json_string_value(v) : "";
}

/* The number of events in the head office's log (`chainsync log`), -1 on failure. */
static long log_events(char **text)
{
    char *out = NULL;
    if (cs(NULL, ARGS("log", "--data", hq), &out, NULL) != 0) {
        free(out);
        return -1;
    }
    long n = 0;
    for (const char *p = out; (p = strstr(p, "{\"seq\":")); p++)
        n++;
    if (text)
        *text = out;
    else
        free(out);
    return n;
}

/* ---- setup -------------------------------------------------------------------------------- */

static bool add_shop(const char *name, const char *pw, char *id_out, unsigned long long *id)
{
    char in[128], *out = NULL;
    snprintf(in, sizeof(in), "%s\n", pw);
    bool ok =
        cs(in, ARGS("shop", "add", "--data", hq, "--name", name, "--password-stdin", "--json-out"),
           &out, NULL) == 0 &&
        sscanf(out, "{\"id\":%llu", id) == 1;
    free(out);
    snprintf(id_out, 32, "%llu", *id);
    return ok;
}

static bool setup(void)
{
    const char *src = getenv("CS_SRC");
    snprintf(client_py, sizeof(client_py), "%s/tests/protocol_client.py", src ? src : "../..");
    hq = cs_test_tmpdir("sec-hq");
    bdir = cs_test_tmpdir("sec-b");
    if (!hq || !bdir || access(client_py, R_OK) != 0)
        return false;
    snprintf(ready_file, sizeof(ready_file), "%s.ready", hq);
    snprintf(serve_log, sizeof(serve_log), "%s.serve.log", hq);
    snprintf(follow_log, sizeof(follow_log), "%s.follow.log", bdir);
    char *out = NULL;
    bool ok = cs(NULL, ARGS("init", "--data", hq, "--name", "HQ"), NULL, NULL) == 0 &&
              cs(NULL, ARGS("network", "create", "--data", hq, "--name", "N"), NULL, NULL) == 0 &&
              add_shop("B1", PASSWORD, b1, &b1_id) && add_shop("B2", PASSWORD2, b2, &b2_id) &&
              cs(NULL,
                 ARGS("put", "service_category", "--data", hq, "--json", "{\"name\":\"Groom\"}",
                      "--json-out"),
                 &out, NULL) == 0 &&
              sscanf(out, "{\"id\":%llu", &cat_id) == 1;
    free(out);
    ok = ok && cs(NULL, ARGS("sync", "--data", hq), NULL, NULL) == 0;
    return ok && start_serve();
}

/* ---- slowing failed logins ---------------------------------------------------------------- */

static json_int_t challenge_wait(const json_t *o)
{
    const json_t *v = json_object_get(json_object_get(o, "challenge"), "wait_ms");
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

/* One login as shop with password (wrong: --wrong-password) from source; the time between
 * HELLO and CHALLENGE, and whether it was welcomed (-1 on a failure of the client). */
static json_int_t login_wait(const char *shop, const char *pw, bool wrong, const char *source,
                             bool *welcomed)
{
    json_t *o = client(
        shop, pw, wrong ? ARGS("--wrong-password", "--source", source) : ARGS("--source", source),
        NULL);
    json_int_t w = o ? challenge_wait(o) : -1;
    *welcomed = o && json_object_get(o, "welcome") != NULL;
    if (o && wrong && strcmp(jpath(o, "error", "code", NULL), "auth_failed") != 0)
        w = -1;
    json_decref(o);
    return w;
}

/* issue 12 "Security": repeated failed logins from one address are slowed: each wrong proof
 * holds the next CHALLENGE to that address back longer (0.5 s, 1 s, 2 s ...), measured by the
 * client between its HELLO and the CHALLENGE; another address is served at once meanwhile; a
 * right password still gets in, and clears the address. */
static void test_sec_failed_logins_from_one_address_slowed(void)
{
    json_int_t t[3];
    bool welcomed;
    for (int i = 0; i < 3; i++) {
        t[i] = login_wait(b1, PASSWORD, true, "127.0.0.1", &welcomed);
        CHECK(t[i] >= 0 && !welcomed);
    }
    json_int_t other = login_wait(b2, PASSWORD2, false, "127.0.0.2", &welcomed);
    CHECK(welcomed);
    json_int_t right = login_wait(b1, PASSWORD, false, "127.0.0.1", &welcomed);
    CHECK(welcomed);
    json_int_t after = login_wait(b1, PASSWORD, false, "127.0.0.1", &welcomed);
    CHECK(welcomed);
    fprintf(stderr,
            "  CHALLENGE waits: wrong logins %lld, %lld, %lld ms; another address %lld ms; the "
            "right password %lld ms, then %lld ms\n",
            (long long)t[0], (long long)t[1], (long long)t[2], (long long)other, (long long)right,
            (long long)after);
    CHECK(t[1] >= 500 && t[2] >= 1000 && right >= 2000); /* held: 0.5 s, 1 s, 2 s */
    CHECK(t[0] < 500 && other < 500 && after < 500);     /* not held: no failure, or cleared */
    FILE *f = fopen(serve_log, "r");
    CHECK(f);
    char *text = calloc(1, 1 << 20);
    size_t n = text ? fread(text, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    bool logged = n > 0 && strstr(text, "failed logins: CHALLENGE held");
    free(text);
    CHECK(logged);
}

/* ---- passwords ---------------------------------------------------------------------------- */

/* True when `needle` occurs in any regular file under dir (or in the file dir itself). */
static bool file_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t nl = strlen(needle), have = 0;
    char buf[65536 + 128];
    bool found = false;
    for (size_t k; !found && (k = fread(buf + have, 1, 65536, f)) > 0;) {
        have += k;
        found = memmem(buf, have, needle, nl) != NULL;
        size_t keep = have < nl ? have : nl - 1;
        memmove(buf, buf + have - keep, keep);
        have = keep;
    }
    fclose(f);
    return found;
}

static bool tree_has(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    if (!d)
        return file_has(dir, needle);
    bool found = false;
    for (struct dirent *de; !found && (de = readdir(d));) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || de->d_name[1] == '.'))
            continue;
        char p[1024];
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        found = tree_has(p, needle);
    }
    closedir(d);
    return found;
}

/* issue 12 "Security", R9: a password is never an argument or an environment variable (each
 * refused as usage, exit 1, changing nothing), and after add, join, follow and a password change
 * it is in no file of either directory, no log and no output. */
static void test_sec_r9_passwords_only_from_stdin_never_stored_or_logged(void)
{
    long before = log_events(NULL);
    CHECK(before > 0);
    CHECK(cs(NULL, ARGS("shop", "add", "--data", hq, "--name", "X", "--password", "arg-pass-1"),
             NULL, NULL) == 1);
    CHECK(cs(NULL, ARGS("shop", "add", "--data", hq, "--name", "X", "--password=arg-pass-1"), NULL,
             NULL) == 1);
    CHECK(cs(NULL, ARGS("shop", "password", b1, "--data", hq, "arg-pass-1"), NULL, NULL) == 1);
    setenv("CHAINSYNC_PASSWORD", "env-pass-123", 1);
    int env_add = cs(NULL, ARGS("shop", "add", "--data", hq, "--name", "X"), NULL, NULL);
    int env_join = cs(
        NULL, ARGS("branch", "join", "--data", bdir, "--head", hostport, "--shop", b1), NULL, NULL);
    unsetenv("CHAINSYNC_PASSWORD");
    CHECK(env_add == 1 && env_join == 1);
    CHECK(cs(NULL,
             ARGS("branch", "join", "--data", bdir, "--head", hostport, "--shop", b1, "--password",
                  PASSWORD),
             NULL, NULL) == 1);
    CHECK(log_events(NULL) == before);
    char *out = NULL, *err = NULL;
    CHECK(cs(PASSWORD "\n",
             ARGS("branch", "join", "--data", bdir, "--head", hostport, "--shop", b1,
                  "--password-stdin"),
             &out, &err) == 0);
    bool shown = strstr(out, PASSWORD) || strstr(err, PASSWORD);
    free(out), free(err);
    CHECK(!shown);
    pid_t f = cs_run_spawn(ARGS("branch", "follow", "--data", bdir), follow_log);
    CHECK(f > 0);
    cs_run_sleep_ms(500);
    int pw = cs("a-new-password-3\n",
                ARGS("shop", "password", b2, "--data", hq, "--password-stdin"), NULL, NULL);
    cs_run_stop(f, SIGTERM, 10000);
    CHECK(pw == 0);
    const char *secrets[] = {PASSWORD, PASSWORD2, "a-new-password-3"};
    for (size_t i = 0; i < 3; i++) {
        CHECK(!tree_has(hq, secrets[i]));
        CHECK(!tree_has(bdir, secrets[i]));
        CHECK(!file_has(serve_log, secrets[i]));
        CHECK(!file_has(follow_log, secrets[i]));
    }
}

/* issue 12 "Security": the head office stores StoredKey and ServerKey; neither proves anything
 * when used as the client's key, and a proof from the password itself still works (control). */
static void test_sec_head_office_keys_cannot_log_in(void)
{
    cs_engine *e;
    CHECK_OK(cs_engine_open(hq, NULL, &e));
    cs_auth_keys k;
    bool known, linked;
    cs_err err = cs_engine_shop_keys(e, b2_id, &k, &known, &linked);
    cs_engine_close(e);
    CHECK_OK(err);
    CHECK(known && linked);
    const uint8_t *keys[] = {k.stored_key, k.server_key};
    for (int i = 0; i < 2; i++) {
        char hex[2 * CS_AUTH_KEY_BYTES + 1];
        for (unsigned j = 0; j < CS_AUTH_KEY_BYTES; j++)
            snprintf(hex + 2 * j, 3, "%02x", keys[i][j]);
        json_t *o = client(b2, "a-new-password-3",
                           ARGS("--client-key", hex, "--source", "127.0.0.3"), NULL);
        CHECK(o);
        bool refused = strcmp(jpath(o, "error", "code", NULL), "auth_failed") == 0;
        json_decref(o);
        CHECK(refused);
    }
    json_t *o = client(b2, "a-new-password-3", ARGS("--source", "127.0.0.4"), NULL);
    CHECK(o);
    bool welcomed = json_object_get(o, "welcome") != NULL;
    json_decref(o);
    CHECK(welcomed);
}

/* ---- a hostile branch's writes ------------------------------------------------------------ */

/* Logs in as B1 (from its own address), sends `entry` as a WRITE, and returns the answer's code
 * (or the ERROR's code when the head office closed the link); the log must not grow. */
static bool hostile_write(const char *entry, const char *source, char *code, size_t code_len)
{
    long before = log_events(NULL);
    json_t *o = client(b1, PASSWORD, ARGS("--write-entry", entry, "--source", source), NULL);
    if (!o)
        return false;
    const char *c = jpath(o, "write_entry", "result", "code");
    if (!*c)
        c = jpath(o, "error", "code", NULL);
    snprintf(code, code_len, "%s", c);
    json_decref(o);
    long after = log_events(NULL);
    if (after != before)
        fprintf(stderr, "  %s: the log went from %ld to %ld events\n", entry, before, after);
    return before > 0 && after == before;
}

/* R1 at the head office too: through the protocol a branch cannot create, change or delete a
 * catalog item (forbidden), advanced settings included; nothing is appended. */
static void test_sec_r1_branch_cannot_write_catalog_through_protocol(void)
{
    char e[512], code[64];
    snprintf(e, sizeof(e),
             "{\"kind\":\"put\",\"type\":\"service_category\",\"id\":%llu,\"version\":1,"
             "\"expect\":0,\"fields\":{\"name\":\"Evil\"}}",
             (b1_id << 32) | 7);
    CHECK(hostile_write(e, "127.0.0.5", code, sizeof(code)));
    CHECK(strcmp(code, "forbidden") == 0);
    snprintf(e, sizeof(e),
             "{\"kind\":\"put\",\"type\":\"service_category\",\"id\":%llu,\"version\":1,"
             "\"expect\":0,\"fields\":{\"name\":\"Renamed\"}}",
             cat_id);
    CHECK(hostile_write(e, "127.0.0.5", code, sizeof(code)));
    CHECK(strcmp(code, "forbidden") == 0);
    snprintf(e, sizeof(e),
             "{\"kind\":\"delete\",\"type\":\"service_category\",\"id\":%llu,\"version\":1,"
             "\"expect\":0,\"fields\":{}}",
             cat_id);
    CHECK(hostile_write(e, "127.0.0.5", code, sizeof(code)));
    CHECK(strcmp(code, "forbidden") == 0);
    snprintf(e, sizeof(e),
             "{\"kind\":\"put\",\"type\":\"advanced_setting\",\"id\":%llu,\"version\":1,"
             "\"expect\":0,\"fields\":{\"key\":\"k\",\"value\":\"v\"}}",
             (b1_id << 32) | 8);
    CHECK(hostile_write(e, "127.0.0.5", code, sizeof(code)));
    CHECK(strcmp(code, "forbidden") == 0);
}

/* R11: no frame or entry changes a password: a WRITE naming a shop, or a `password` kind, is
 * refused with nothing appended, and both branches' passwords still work as before. */
static void test_sec_r11_branch_cannot_change_a_password_through_protocol(void)
{
    char e[512], code[64];
    const unsigned long long targets[] = {b1_id, b2_id};
    for (int i = 0; i < 2; i++) {
        snprintf(e, sizeof(e),
                 "{\"kind\":\"put\",\"type\":\"shop\",\"id\":%llu,\"version\":1,\"expect\":0,"
                 "\"fields\":{\"password\":\"owned-password\"}}",
                 targets[i]);
        CHECK(hostile_write(e, "127.0.0.6", code, sizeof(code)));
        CHECK(strcmp(code, "unknown_type") == 0);
        snprintf(e, sizeof(e),
                 "{\"kind\":\"password\",\"type\":\"customer\",\"id\":%llu,\"version\":1,"
                 "\"expect\":0,\"fields\":{\"password\":\"owned-password\"}}",
                 targets[i]);
        CHECK(hostile_write(e, "127.0.0.6", code, sizeof(code)));
        if (strcmp(code, "invalid_input") != 0)
            fprintf(stderr, "  a password kind: %s\n", code);
        CHECK(strcmp(code, "invalid_input") == 0); /* not an outbox entry: the link is closed */
    }
    json_t *o = client(b1, "owned-password", ARGS("--source", "127.0.0.7"), NULL);
    CHECK(o);
    bool refused = strcmp(jpath(o, "error", "code", NULL), "auth_failed") == 0;
    json_decref(o);
    CHECK(refused);
    o = client(b1, PASSWORD, ARGS("--source", "127.0.0.8"), NULL);
    CHECK(o);
    bool welcomed = json_object_get(o, "welcome") != NULL;
    json_decref(o);
    CHECK(welcomed);
}

/* issue 12: a branch cannot act as another shop: its password does not open B2's login, a new
 * record with an id from B2's range is refused, and keys naming another shop or actor in the
 * entry are ignored: the event is B1's, by `branch:B1`. */
static void test_sec_branch_cannot_act_as_another_shop(void)
{
    json_t *o = client(b2, PASSWORD, ARGS("--source", "127.0.0.9"), NULL);
    CHECK(o);
    bool refused = strcmp(jpath(o, "error", "code", NULL), "auth_failed") == 0;
    json_decref(o);
    CHECK(refused);
    char e[512], code[64];
    snprintf(e, sizeof(e),
             "{\"kind\":\"put\",\"type\":\"customer\",\"id\":%llu,\"version\":1,\"expect\":0,"
             "\"fields\":{\"name\":\"Mallory\"}}",
             (b2_id << 32) | 99);
    CHECK(hostile_write(e, "127.0.0.10", code, sizeof(code)));
    CHECK(strcmp(code, "invalid_input") == 0);
    long before = log_events(NULL);
    snprintf(e, sizeof(e),
             "{\"kind\":\"put\",\"type\":\"customer\",\"id\":%llu,\"version\":1,\"expect\":0,"
             "\"fields\":{\"name\":\"Eve\"},\"shop\":%llu,\"actor\":\"head\"}",
             (b1_id << 32) | 77, b2_id);
    o = client(b1, PASSWORD, ARGS("--write-entry", e, "--source", "127.0.0.10"), NULL);
    CHECK(o);
    bool ok = strcmp(jpath(o, "write_entry", "result", "code"), "ok") == 0;
    json_decref(o);
    char *text = NULL;
    long after = log_events(&text);
    CHECK(ok && after == before + 1);
    char want[128];
    snprintf(want, sizeof(want), "\"actor\":\"branch:%llu\",\"shop\":%llu,", b1_id, b1_id);
    const char *last = text;
    for (const char *p = text; (p = strstr(p, "{\"seq\":")); p++)
        last = p;
    bool mine = strstr(last, want) && strstr(last, "\"Eve\"") && !strstr(last, "\"head\"");
    if (!mine)
        fprintf(stderr, "  last event: %.300s\n", last);
    free(text);
    CHECK(mine);
}

/* issue 12: whatever the CLI refuses at the head office, a WRITE of the same record is refused
 * with the same code and appends nothing. */
static void test_sec_protocol_refuses_what_the_cli_refuses(void)
{
    static const char *const bad[] = {
        "{\"name\":5}",                   /* a field of the wrong type */
        "{\"phone\":\"1\"}",              /* a required field missing */
        "{\"name\":\"x\",\"bogus\":1}",   /* a field the schema does not know */
        "{\"name\":\"\\u00e9\\u0000x\"}", /* a NUL inside a string */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *err = NULL;
        int rc = cs(NULL, ARGS("put", "customer", "--data", hq, "--json", bad[i]), NULL, &err);
        char cli_code[64] = "";
        sscanf(err ? err : "", "error: %63[a-z_]", cli_code);
        free(err);
        CHECK(rc == 2 && *cli_code);
        char e[512], code[64];
        snprintf(e, sizeof(e),
                 "{\"kind\":\"put\",\"type\":\"customer\",\"id\":%llu,\"version\":1,"
                 "\"expect\":0,\"fields\":%s}",
                 (b1_id << 32) | (200 + i), bad[i]);
        CHECK(hostile_write(e, "127.0.0.11", code, sizeof(code)));
        if (strcmp(code, cli_code) != 0)
            fprintf(stderr, "  %s: cli %s, protocol %s\n", bad[i], cli_code, code);
        CHECK(strcmp(code, cli_code) == 0);
    }
    /* A pet of a customer that does not exist; an update expecting a version it does not
     * have; a delete of nothing. */
    char e[512], code[64];
    snprintf(e, sizeof(e),
             "{\"kind\":\"put\",\"type\":\"pet\",\"id\":%llu,\"version\":1,\"expect\":0,"
             "\"fields\":{\"name\":\"Rex\",\"customer\":%llu,\"species\":%llu}}",
             (b1_id << 32) | 300, (b1_id << 32) | 301, (b1_id << 32) | 302);
    CHECK(hostile_write(e, "127.0.0.11", code, sizeof(code)));
    CHECK(strcmp(code, "dangling_reference") == 0);
    snprintf(e, sizeof(e),
             "{\"kind\":\"delete\",\"type\":\"customer\",\"id\":%llu,\"version\":1,\"expect\":0,"
             "\"fields\":{}}",
             (b1_id << 32) | 303);
    CHECK(hostile_write(e, "127.0.0.11", code, sizeof(code)));
    CHECK(strcmp(code, "not_found") == 0);
    CHECK(cs(NULL, ARGS("audit", "verify", "--data", hq), NULL, NULL) == 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (!setup()) {
        printf("FAIL test_sec_setup\n");
        cs_test_st.failed++;
    } else {
        RUN(test_sec_failed_logins_from_one_address_slowed);
        RUN(test_sec_r9_passwords_only_from_stdin_never_stored_or_logged);
        RUN(test_sec_head_office_keys_cannot_log_in);
        RUN(test_sec_r1_branch_cannot_write_catalog_through_protocol);
        RUN(test_sec_r11_branch_cannot_change_a_password_through_protocol);
        RUN(test_sec_branch_cannot_act_as_another_shop);
        RUN(test_sec_protocol_refuses_what_the_cli_refuses);
    }
    cs_run_stop(serve_pid, SIGTERM, 10000);
    if (hq) {
        unlink(ready_file);
        unlink(serve_log);
        cs_test_rmtree(hq);
    }
    if (bdir) {
        unlink(follow_log);
        cs_test_rmtree(bdir);
    }
    free(hq);
    free(bdir);
    return cs_test_finish();
}
