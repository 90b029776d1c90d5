/*
 * test_protocol.c: docs/protocol.md against the real server. A head office is made with the
 * real binary and served by `chainsync serve`; tests/protocol_client.py, a branch node written
 * from docs/protocol.md alone (python3-msgpack, python3-nacl, python3-xxhash), connects to it
 * and its JSON summary is compared with what `chainsync log` and tests/storage_reader.py say
 * about the same directory, and with a branch that joined for real. So the document and the
 * code cannot drift apart.
 *
 * Needs /usr/bin/python3 with Debian's python3-msgpack, python3-nacl, python3-xxhash and
 * python3-lmdb (tools/setup.sh installs them). The scripts are found through $CS_SRC (the
 * source directory, set by tests/CMakeLists.txt).
 */
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>

#include "harness.h"
#include "run.h"

#define PYTHON "/usr/bin/python3"
#define PASSWORD "s3cret-pass-long"
#define CMD_MS 60000u
#define CLIENT_MS 90000u
#define READY_MS 15000u

static char *hq;             /* the head office's directory */
static char *branch_dir;     /* a branch that joins for real */
static char ready_file[512]; /* serve's HOST:PORT */
static char hostport[128];
static char shop_id[32]; /* the branch's shop id, decimal */
static pid_t serve_pid = -1;
static char client_py[1024], reader_py[1024];

/* `chainsync args...` on the head office (args after the command words get --data DIR). */
static bool cs(cs_run_result *r, const char *input, const char *const *args)
{
    bool ok = cs_run(r, input, NULL, args, CMD_MS);
    if (ok && r->exit_code != 0)
        fprintf(stderr, "  chainsync %s exited %d: %s", args[0], r->exit_code, r->err);
    return ok && r->exit_code == 0;
}

/* Runs the doc client with extra arguments; returns its parsed summary (NULL on failure). */
static json_t *client(const char *const *extra, int *exit_code)
{
    const char *argv[32] = {PYTHON, client_py, hostport, "--shop", shop_id, "--password-stdin"};
    size_t n = 6;
    for (size_t i = 0; extra && extra[i] && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    cs_run_result r;
    if (!cs_run_prog(&r, PASSWORD "\n", argv, CLIENT_MS))
        return NULL;
    if (exit_code)
        *exit_code = r.exit_code;
    json_error_t je;
    json_t *o = json_loads(r.out, 0, &je);
    if (!o || r.exit_code != 0)
        fprintf(stderr, "  protocol_client.py exited %d: %s%s", r.exit_code, r.out, r.err);
    cs_run_free(&r);
    return o;
}

static json_int_t jint(const json_t *o, const char *path1, const char *path2)
{
    const json_t *v = json_object_get(o, path1);
    if (path2)
        v = json_object_get(v, path2);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

static const char *jstr(const json_t *o, const char *path1, const char *path2)
{
    const json_t *v = json_object_get(o, path1);
    if (path2)
        v = json_object_get(v, path2);
    return json_is_string(v) ? json_string_value(v) : "";
}

/* What the head office's own tools say: the event count and last seq (`chainsync log`), the
 * chain of event `at` and of the last event (storage_reader.py --json), as 16 hex digits. */
typedef struct log_view {
    long events;
    long last_seq;
    char chain_at[17];
    char last_chain[17];
    long customer_puts; /* put events of type customer whose id is `id` */
} log_view;

static bool read_log(log_view *v, long at, const char *id)
{
    memset(v, 0, sizeof(*v));
    cs_run_result r;
    const char *args[] = {"log", "--data", hq, NULL};
    if (!cs(&r, NULL, args)) {
        cs_run_free(&r);
        return false;
    }
    char needle[96];
    snprintf(needle, sizeof(needle), "\"kind\":\"put\",\"type\":\"customer\",\"id\":%s,",
             id ? id : "none");
    for (char *line = r.out; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        long seq = 0;
        if (sscanf(line, "{\"seq\":%ld", &seq) == 1) {
            v->events++;
            v->last_seq = seq;
        }
        if (id && strstr(line, needle))
            v->customer_puts++;
        line = nl ? nl + 1 : NULL;
    }
    cs_run_free(&r);
    const char *argv[] = {PYTHON, reader_py, "--json", hq, NULL};
    if (!cs_run_prog(&r, NULL, argv, CMD_MS) || r.exit_code != 0) {
        fprintf(stderr, "  storage_reader.py exited %d: %s", r.exit_code, r.err);
        cs_run_free(&r);
        return false;
    }
    long n = 0;
    for (char *line = r.out; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        char *c = strstr(line, "\"chain\":\"");
        for (char *c2 = c; c2; c2 = strstr(c2 + 1, "\"chain\":\""))
            c = c2; /* the last one: the record's own, after its fields */
        if (c) {
            n++;
            if (n == at)
                snprintf(v->chain_at, sizeof(v->chain_at), "%.16s", c + 9);
            snprintf(v->last_chain, sizeof(v->last_chain), "%.16s", c + 9);
        }
        line = nl ? nl + 1 : NULL;
    }
    cs_run_free(&r);
    return n == v->events;
}

/* Prints a summary on stderr (json_dumps allocates). */
static void show(const char *what, const json_t *o)
{
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    fprintf(stderr, "  %s: %s\n", what, t ? t : "(none)");
    free(t);
}

/* ---- the head office and its server ---- */

static bool start_serve(void)
{
    unlink(ready_file);
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        char log[600];
        snprintf(log, sizeof(log), "%s/serve.log", hq);
        int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(devnull, 0), dup2(devnull, 1), dup2(logfd >= 0 ? logfd : devnull, 2);
        const char *bin = getenv("CS_BIN");
        execl(bin, bin, "serve", "--data", hq, "--listen", "127.0.0.1:0", "--ready-file",
              ready_file, (char *)NULL);
        _exit(127);
    }
    serve_pid = pid;
    uint64_t deadline = cs_run_now_ms() + READY_MS;
    while (cs_run_now_ms() < deadline) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            serve_pid = -1;
            fprintf(stderr, "  serve exited early\n");
            return false;
        }
        FILE *f = fopen(ready_file, "r");
        if (f) {
            char buf[128] = "";
            bool got = fgets(buf, sizeof(buf), f) && strchr(buf, '\n') && strchr(buf, ':');
            fclose(f);
            if (got) {
                buf[strcspn(buf, "\r\n")] = '\0';
                snprintf(hostport, sizeof(hostport), "%s", buf);
                return true;
            }
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "  serve wrote no ready file within %u ms\n", READY_MS);
    return false;
}

static void stop_serve(void)
{
    if (serve_pid <= 0)
        return;
    kill(serve_pid, SIGTERM);
    if (cs_run_reap(serve_pid, cs_run_now_ms() + 10000) != 0)
        fprintf(stderr, "  serve did not stop cleanly on SIGTERM\n");
    serve_pid = -1;
}

static bool make_head_office(void)
{
    hq = cs_test_tmpdir("proto-hq");
    branch_dir = cs_test_tmpdir("proto-b");
    if (!hq || !branch_dir)
        return false;
    snprintf(ready_file, sizeof(ready_file), "%s.ready", hq);
    cs_run_result r;
    const char *init[] = {"init", "--data", hq, "--name", "HQ", NULL};
    const char *net[] = {"network", "create", "--data", hq, "--name", "N", NULL};
    const char *add[] = {"shop",       "add", "--data", hq, "--name", "B1", "--password-stdin",
                         "--json-out", NULL};
    bool ok = cs(&r, NULL, init);
    cs_run_free(&r);
    ok = ok && cs(&r, NULL, net);
    cs_run_free(&r);
    if (!ok)
        return false;
    if (!cs(&r, PASSWORD "\n", add)) {
        cs_run_free(&r);
        return false;
    }
    json_error_t je;
    json_t *o = json_loads(r.out, 0, &je);
    cs_run_free(&r);
    if (!json_is_integer(json_object_get(o, "id"))) {
        json_decref(o);
        return false;
    }
    snprintf(shop_id, sizeof(shop_id), "%lld", (long long)jint(o, "id", NULL));
    json_decref(o);
    const char *names[] = {"Grooming", "Clinic", "Hotel"};
    for (size_t i = 0; i < 3 && ok; i++) {
        char js[64];
        snprintf(js, sizeof(js), "{\"name\":\"%s\"}", names[i]);
        const char *put[] = {"put", "service_category", "--data", hq, "--json", js, NULL};
        ok = cs(&r, NULL, put);
        cs_run_free(&r);
    }
    const char *sync[] = {"sync", "--data", hq, NULL};
    ok = ok && cs(&r, NULL, sync);
    cs_run_free(&r);
    return ok && start_serve();
}

/* ---- the tests ---- */

/* protocol.md "Handshake" + "Streaming", storage.md "Segments": a client built from the
 * documents alone logs in, verifies WELCOME's signature, every frame, segment, record checksum
 * and the chain, and ends at CAUGHT_UP with the log's count, last seq and last chain. */
static void test_protocol_doc_client_reads_whole_log_with_valid_chain(void)
{
    log_view v;
    CHECK(read_log(&v, 1, NULL));
    CHECK(v.events >= 7);
    json_t *o = client(NULL, NULL);
    CHECK(o);
    bool ok = !json_object_get(o, "violation") && !json_object_get(o, "error") &&
              jint(o, "events", NULL) == v.events && jint(o, "last_seq", NULL) == v.last_seq &&
              strcmp(jstr(o, "last_chain", NULL), v.last_chain) == 0 &&
              jint(o, "caught_up", NULL) == v.last_seq &&
              jint(o, "welcome", "head_seq") == v.last_seq &&
              /* log_id: the chain value of event 1 */
              strcmp(jstr(o, "challenge", "log_id"), v.chain_at) == 0 &&
              jint(o, "challenge", "proto") == 1 &&
              jint(json_object_get(o, "kinds"), "put/service_category", NULL) == 3 &&
              jint(json_object_get(o, "kinds"), "init", NULL) == 1;
    if (!ok)
        fprintf(stderr, "  log: %ld events, last %ld chain %s\n", v.events, v.last_seq,
                v.last_chain),
            show("client", o);
    json_decref(o);
    CHECK(ok);
}

/* protocol.md "Streaming": START from (cursor, chain) sends cursor + 1 onward, continuing the
 * chain the branch holds for cursor; START at the head sends nothing but CAUGHT_UP. */
static void test_protocol_start_from_cursor_continues_its_chain(void)
{
    log_view v;
    CHECK(read_log(&v, 3, NULL));
    const char *args[] = {"--cursor", "3", "--chain", v.chain_at, NULL};
    json_t *o = client(args, NULL);
    CHECK(o);
    bool ok = !json_object_get(o, "violation") && !json_object_get(o, "error") &&
              jint(o, "events", NULL) == v.events - 3 && jint(o, "last_seq", NULL) == v.last_seq &&
              strcmp(jstr(o, "last_chain", NULL), v.last_chain) == 0;
    json_decref(o);
    CHECK(ok);
    char head[32];
    snprintf(head, sizeof(head), "%ld", v.last_seq);
    const char *at_head[] = {"--cursor", head, "--chain", v.last_chain, NULL};
    o = client(at_head, NULL);
    CHECK(o);
    ok = !json_object_get(o, "violation") && jint(o, "events", NULL) == 0 &&
         jint(o, "caught_up", NULL) == v.last_seq;
    json_decref(o);
    CHECK(ok);
}

/* Runs the client with args and checks it was refused with code (the ERROR frame). */
static bool refused_with(const char *const *args, const char *code, const char *state)
{
    int rc = -1;
    json_t *o = client(args, &rc);
    if (!o)
        return false;
    bool ok = rc == 0 && !json_object_get(o, "violation") &&
              strcmp(jstr(o, "error", "code"), code) == 0 &&
              (!state || strcmp(jstr(o, "error", "state"), state) == 0);
    if (!ok)
        fprintf(stderr, "  expected %s in %s\n", code, state ? state : "any state"),
            show("client", o);
    json_decref(o);
    return ok;
}

/* protocol.md "Refusals": a wrong password is auth_failed, after the PROOF. */
static void test_protocol_refusal_wrong_password_is_auth_failed(void)
{
    const char *args[] = {"--wrong-password", NULL};
    CHECK(refused_with(args, "auth_failed", "AWAIT_WELCOME"));
}

/* protocol.md "Version": a range without 1 is protocol_mismatch, answering HELLO. */
static void test_protocol_refusal_range_2_3_is_protocol_mismatch(void)
{
    const char *args[] = {"--proto", "2,3", NULL};
    CHECK(refused_with(args, "protocol_mismatch", "AWAIT_CHALLENGE"));
}

/* protocol.md "Refusals": an unknown shop id gets a CHALLENGE like any other, and
 * not_in_network only after its PROOF. */
static void test_protocol_refusal_unknown_shop_is_not_in_network_after_proof(void)
{
    char other[32];
    snprintf(other, sizeof(other), "%llu", strtoull(shop_id, NULL, 10) + 7777u);
    const char *argv[] = {PYTHON, client_py, hostport, "--shop", other, "--password-stdin", NULL};
    cs_run_result r;
    CHECK(cs_run_prog(&r, PASSWORD "\n", argv, CLIENT_MS));
    json_error_t je;
    json_t *o = json_loads(r.out, 0, &je);
    bool ok = r.exit_code == 0 && o && json_object_get(o, "challenge") &&
              strcmp(jstr(o, "error", "code"), "not_in_network") == 0 &&
              strcmp(jstr(o, "error", "state"), "AWAIT_WELCOME") == 0;
    if (!ok)
        fprintf(stderr, "  %s%s", r.out, r.err);
    json_decref(o);
    cs_run_free(&r);
    CHECK(ok);
}

/* protocol.md "Refusals": START past the head, or with another chain at cursor, is corrupt. */
static void test_protocol_refusal_start_diverged_or_past_head_is_corrupt(void)
{
    const char *wrong_chain[] = {"--cursor", "2", "--chain", "00000000deadbeef", NULL};
    CHECK(refused_with(wrong_chain, "corrupt", "STREAMING"));
    const char *past[] = {"--cursor", "100000", "--chain", "00000000deadbeef", NULL};
    CHECK(refused_with(past, "corrupt", "STREAMING"));
}

/* protocol.md "Handshake": a recorded PROOF is worthless on another connection, even with the
 * same client nonce: the head office's nonce is fresh. */
static void test_protocol_handshake_replayed_proof_is_auth_failed(void)
{
    const char *args[] = {"--replay", NULL};
    json_t *o = client(args, NULL);
    CHECK(o);
    bool ok = !json_object_get(o, "violation") && strcmp(jstr(o, "first", NULL), "welcome") == 0 &&
              json_is_true(json_object_get(o, "fresh_snonce")) &&
              json_is_true(json_object_get(o, "same_salt")) &&
              strcmp(jstr(o, "error", "code"), "auth_failed") == 0;
    if (!ok)
        show("client", o);
    json_decref(o);
    CHECK(ok);
}

/* protocol.md "Shared-record writes (R8)": a WRITE is answered ok and its event streams back
 * to the writer; the same WRITE again gets the same answer and appends nothing. */
static void test_protocol_r8_resent_write_answered_identically_appended_once(void)
{
    log_view before;
    CHECK(read_log(&before, 1, NULL));
    const char *args[] = {"--write-customer", "Ana Doc", NULL};
    json_t *o = client(args, NULL);
    CHECK(o);
    const json_t *w = json_object_get(o, "write");
    char id[32];
    snprintf(id, sizeof(id), "%s", jstr(w, "id", NULL));
    bool ok = !json_object_get(o, "violation") && w &&
              strcmp(jstr(w, "first", "code"), "ok") == 0 &&
              json_is_true(json_object_get(w, "same")) && jint(w, "events_in_stream", NULL) == 1 &&
              jint(json_object_get(w, "first"), "seq", NULL) == before.last_seq + 1;
    if (!ok)
        show("client", o);
    json_decref(o);
    CHECK(ok);
    log_view after;
    CHECK(read_log(&after, 1, id));
    CHECK(after.customer_puts == 1);
    CHECK(after.events == before.events + 1);
}

/* The row of `shop list --json-out` whose id is shop_id (NULL when none). */
static json_t *shop_row(void)
{
    cs_run_result r;
    const char *list[] = {"shop", "list", "--data", hq, "--json-out", NULL};
    json_t *row = NULL;
    if (cs(&r, NULL, list))
        for (char *line = strtok(r.out, "\n"); line && !row; line = strtok(NULL, "\n")) {
            json_t *o = json_loads(line, 0, NULL);
            if (jint(o, "id", NULL) == strtoll(shop_id, NULL, 10))
                row = o;
            else
                json_decref(o);
        }
    cs_run_free(&r);
    return row;
}

/* Issue 13 Status, "the outbox backlog seen"; protocol.md "Frames": a branch's PING and ACK may
 * carry `outbox`, its outbox depth, and a PING without it (an older branch's) is accepted and
 * changes nothing. The head office keeps the last figure: shop list shows it for the branch and
 * status counts it in the backlog, naming the branch with the most. */
static void test_protocol_outbox_in_ping_and_ack_is_the_backlog_at_head(void)
{
    const char *args[] = {"--report-outbox", "5", NULL};
    json_t *o = client(args, NULL);
    CHECK(o);
    bool ok = !json_object_get(o, "violation") && !json_object_get(o, "error") &&
              jint(o, "outbox_reported", NULL) == 5;
    if (!ok)
        show("client", o);
    json_decref(o);
    CHECK(ok);
    /* serve writes a closed connection's status at its next flush (within a second). */
    json_int_t seen = -1;
    for (uint64_t deadline = cs_run_now_ms() + READY_MS; cs_run_now_ms() < deadline && seen != 5;
         cs_run_sleep_ms(100)) {
        json_t *row = shop_row();
        seen = jint(row, "outbox", NULL);
        json_decref(row);
    }
    if (seen != 5)
        fprintf(stderr, "  shop list's outbox: %lld, the client reported 5\n", (long long)seen);
    CHECK(seen == 5);
    cs_run_result r;
    const char *st[] = {"status", "--data", hq, "--json-out", "--max-lag", "1000000", NULL};
    CHECK(cs(&r, NULL, st));
    json_t *j = json_loads(r.out, 0, NULL);
    cs_run_free(&r);
    const json_t *ob = json_object_get(j, "outbox");
    ok = jint(ob, "total", NULL) == 5 && jint(ob, "reported", NULL) == 1 &&
         jint(json_object_get(ob, "largest"), "id", NULL) == strtoll(shop_id, NULL, 10) &&
         jint(json_object_get(ob, "largest"), "outbox", NULL) == 5;
    if (!ok)
        show("status", j);
    json_decref(j);
    CHECK(ok);
}

/* protocol.md "Frames", "Connection states", "Handshake", "Heartbeats": the receiver's rules
 * seen from the head office: length limits, one msgpack value, depth 16, mandatory and
 * optional types, unknown keys, missing and mistyped keys, frames out of state, an unknown
 * id's CHALLENGE, and a second connection replacing the first. */
static void test_protocol_frame_rules_as_documented(void)
{
    const char *args[] = {"--probe", NULL};
    json_t *o = client(args, NULL);
    CHECK(o);
    const json_t *p = json_object_get(o, "probe");
    static const struct {
        const char *probe, *want;
    } cases[] = {
        {"length_zero", "invalid_input"},
        {"length_over_control_max", "invalid_input"},
        {"hello_at_control_max", "CHALLENGE"},
        {"trailing_bytes", "invalid_input"},
        {"truncated_value", "invalid_input"},
        {"container_longer_than_body", "invalid_input"},
        {"hello_nested_16_deep", "CHALLENGE"},
        {"hello_nested_17_deep", "invalid_input"},
        {"unknown_mandatory_type", "protocol_mismatch"},
        {"unknown_optional_type_then_hello", "CHALLENGE"},
        {"unknown_key_ignored", "CHALLENGE"},
        {"missing_key_shop", "invalid_input"},
        {"missing_key_mode", "CHALLENGE"}, /* mode is informative and optional */
        {"mode_not_a_str", "CHALLENGE"},
        {"wrong_type_nonce_str", "invalid_input"},
        {"nonce_31_bytes", "invalid_input"},
        {"body_not_a_map", "invalid_input"},
        {"proto_not_two", "invalid_input"},
        {"proto_range_2_2", "protocol_mismatch"},
        {"proto_range_0_5", "CHALLENGE"},
        {"start_before_hello", "invalid_input"},
        {"start_instead_of_proof", "invalid_input"},
        {"proof_31_bytes", "invalid_input"},
        {"ack_instead_of_start", "invalid_input"},
        {"hello_while_streaming", "invalid_input"},
        {"ping_outbox_not_uint", "invalid_input"},
        {"second_connection_replaces_first", "network_error"},
    };
    bool ok = !json_object_get(o, "violation") && p;
    for (size_t i = 0; ok && i < sizeof(cases) / sizeof(cases[0]); i++)
        if (strcmp(jstr(p, cases[i].probe, NULL), cases[i].want) != 0) {
            fprintf(stderr, "  probe %s: got \"%s\", the document says %s\n", cases[i].probe,
                    jstr(p, cases[i].probe, NULL), cases[i].want);
            ok = false;
        }
    ok = ok && json_is_true(json_object_get(p, "unknown_id_salt_stable")) &&
         json_is_true(json_object_get(p, "unknown_id_params_equal"));
    if (!ok)
        show("client", o);
    json_decref(o);
    CHECK(ok);
}

/* protocol.md as a whole: the real branch node (`branch join`, `branch pull`) reaches the
 * cursor the document's client reaches. */
static void test_protocol_real_branch_cursor_equals_doc_client_last_seq(void)
{
    cs_run_result r;
    const char *join[] = {"branch", "join",   "--data", branch_dir,         "--head",
                          hostport, "--shop", shop_id,  "--password-stdin", NULL};
    bool ok = cs(&r, PASSWORD "\n", join);
    cs_run_free(&r);
    CHECK(ok);
    const char *pull[] = {"branch", "pull", "--data", branch_dir, "--json-out", NULL};
    CHECK(cs(&r, NULL, pull));
    json_error_t je;
    json_t *b = json_loads(r.out, 0, &je);
    if (!b)
        fprintf(stderr, "  branch pull printed: %s\n", r.out);
    cs_run_free(&r);
    CHECK(b);
    json_int_t cursor = jint(b, "cursor", NULL);
    json_decref(b);
    json_t *o = client(NULL, NULL);
    CHECK(o);
    json_int_t last = jint(o, "last_seq", NULL);
    json_decref(o);
    if (cursor != last)
        fprintf(stderr, "  branch cursor %lld, doc client last seq %lld\n", (long long)cursor,
                (long long)last);
    CHECK(cursor > 0 && cursor == last);
}

static bool find_scripts(void)
{
    const char *src = getenv("CS_SRC");
    if (!src)
        src = "../.."; /* ctest's working directory is the build's tests/ */
    snprintf(client_py, sizeof(client_py), "%s/tests/protocol_client.py", src);
    snprintf(reader_py, sizeof(reader_py), "%s/tests/storage_reader.py", src);
    if (access(client_py, R_OK) || access(reader_py, R_OK)) {
        fprintf(stderr, "  %s not found (set CS_SRC to the source directory)\n", client_py);
        return false;
    }
    cs_run_result r;
    const char *argv[] = {PYTHON, "-c", "import msgpack, nacl.pwhash, xxhash, lmdb", NULL};
    bool ok = cs_run_prog(&r, NULL, argv, CMD_MS) && r.exit_code == 0;
    if (!ok)
        fprintf(stderr,
                "  %s cannot import msgpack, nacl, xxhash and lmdb (%s): install python3-msgpack "
                "python3-nacl python3-xxhash python3-lmdb (tools/setup.sh does)\n",
                PYTHON, r.err ? r.err : "");
    cs_run_free(&r);
    return ok;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (!find_scripts() || !make_head_office()) {
        printf("FAIL test_protocol_setup\n");
        stop_serve();
        cs_test_st.failed++;
    } else {
        RUN(test_protocol_doc_client_reads_whole_log_with_valid_chain);
        RUN(test_protocol_start_from_cursor_continues_its_chain);
        RUN(test_protocol_refusal_wrong_password_is_auth_failed);
        RUN(test_protocol_refusal_range_2_3_is_protocol_mismatch);
        RUN(test_protocol_refusal_unknown_shop_is_not_in_network_after_proof);
        RUN(test_protocol_refusal_start_diverged_or_past_head_is_corrupt);
        RUN(test_protocol_handshake_replayed_proof_is_auth_failed);
        RUN(test_protocol_r8_resent_write_answered_identically_appended_once);
        RUN(test_protocol_outbox_in_ping_and_ack_is_the_backlog_at_head);
        RUN(test_protocol_frame_rules_as_documented);
        RUN(test_protocol_real_branch_cursor_equals_doc_client_last_seq);
        stop_serve();
    }
    if (hq) {
        unlink(ready_file);
        cs_test_rmtree(hq);
    }
    if (branch_dir)
        cs_test_rmtree(branch_dir);
    free(hq);
    free(branch_dir);
    return cs_test_finish();
}
