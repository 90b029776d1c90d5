/*
 * cmd_net.c: the network commands (SPEC 7): `serve` at the head office, and on a branch
 * `branch join` (first contact, with the password), `branch follow` (stay connected, apply
 * live) and `branch pull` (catch up, send the outbox, exit); plus what `put --wait` on a branch
 * uses to wait for the head office's answer. The protocol is docs/protocol.md; the code is net/.
 */
#include "net/net.h"
#include "tools/cli.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* SIGINT and SIGTERM wait until the loop handles them (net/ unblocks them then): a stop that
 * comes while the directory is being opened is a clean stop too. */
static void block_stop_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
}

/* What serve and the branch nodes share: the log's level and format, and the HTTP listener
 * (--metrics and --http name the same one: /metrics, and on a head office the page). */
typedef struct net_opts {
    const char *log_level, *log_format, *metrics, *http, *http_ready;
    cs_net_log_level level;
    cs_net_log_format format;
} net_opts;

#define NET_OPTS(no)                                                                               \
    {"log-level", true, &(no).log_level, NULL}, {"log-format", true, &(no).log_format, NULL},      \
        {"metrics", true, &(no).metrics, NULL}, {"http", true, &(no).http, NULL},                  \
    {                                                                                              \
        "http-ready-file", true, &(no).http_ready, NULL                                            \
    }
#define NET_OPTS_COUNT 5u

static int net_opts_check(const cs_cli_cmd *cmd, net_opts *no)
{
    no->level = CS_NET_LOG_DEFAULT;
    no->format = CS_NET_LOG_HUMAN;
    if (no->log_level && cs_net_log_level_parse(no->log_level, &no->level) != CS_OK)
        return cs_cli_usage(cmd, "--log-level is error, warn, info or debug");
    if (no->log_format && cs_net_log_format_parse(no->log_format, &no->format) != CS_OK)
        return cs_cli_usage(cmd, "--log-format is human or json");
    if (no->metrics && no->http && strcmp(no->metrics, no->http) != 0)
        return cs_cli_usage(cmd, "--metrics and --http name one listener: give one address");
    if (!no->http)
        no->http = no->metrics;
    if (no->http_ready && !no->http)
        return cs_cli_usage(cmd, "--http-ready-file needs --metrics or --http");
    return CS_CLI_GO;
}

int cs_cmd_serve(const cs_cli_cmd *cmd, int argc, char **argv)
{
    block_stop_signals();
    const char *listen = NULL, *stuck_s = NULL, *ready = NULL, *dir = NULL, *replicas_s = NULL;
    net_opts no = {0};
    cs_nats_options nats = {0};
    const cs_cli_opt opts[] = {
        {"listen", true, &listen, NULL},           {"stuck-ms", true, &stuck_s, NULL},
        {"ready-file", true, &ready, NULL},        {"nats", true, &nats.url, NULL},
        {"nats-creds", true, &nats.creds, NULL},   {"nats-replicas", true, &replicas_s, NULL},
        {"nats-domain", true, &nats.domain, NULL}, NET_OPTS(no)};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t stuck = 0, replicas = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 7 + NET_OPTS_COUNT, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && (nats.creds || replicas_s || nats.domain) && !nats.url)
        rc =
            cs_cli_usage(cmd, "--nats-creds, --nats-replicas and --nats-domain go with --nats URL");
    if (rc == CS_CLI_GO && replicas_s &&
        (rc = cs_cli_parse_id(cmd, "--nats-replicas", replicas_s, &replicas)) == CS_CLI_GO &&
        replicas > 5)
        rc = cs_cli_usage(cmd, "--nats-replicas is 1 to 5 (JetStream's limit)");
    nats.replicas = (unsigned)replicas;
    if (rc == CS_CLI_GO)
        rc = net_opts_check(cmd, &no);
    if (rc == CS_CLI_GO && !listen)
        rc = cs_cli_usage(cmd, "--listen HOST:PORT is required");
    if (rc == CS_CLI_GO && stuck_s)
        rc = cs_cli_parse_id(cmd, "--stuck-ms", stuck_s, &stuck);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, &dir, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_server_options o = {.listen = listen,
                           .stuck_ms = stuck,
                           .ready_file = ready,
                           .log_level = no.level,
                           .log_format = no.format,
                           .http = no.http,
                           .http_ready_file = no.http_ready,
                           .nats = nats.url ? &nats : NULL};
    char msg[320] = "";
    cs_err err = cs_server_run(e, dir, &o, msg, sizeof(msg));
    cs_engine_close(e);
    return err == CS_OK ? 0 : cs_cli_fail(err, "%s", msg);
}

static bool store_exists(const char *dir)
{
    return !cs_cli_created_before(dir).store;
}

static int node_result(cs_branch *b, cs_err err, const char *msg)
{
    if (err != CS_OK)
        return cs_cli_fail(err, "%s", msg);
    cs_branch_state st;
    if ((err = cs_branch_state_get(b, &st)) != CS_OK)
        return cs_cli_fail(err, "cannot read the branch's state");
    if (cs_cli_g.json_out)
        printf("{\"shop\":%llu,\"cursor\":%llu,\"sync_seq\":%llu,\"linked\":%s}\n",
               (unsigned long long)st.shop, (unsigned long long)st.cursor,
               (unsigned long long)st.sync_seq, st.linked ? "true" : "false");
    else
        printf("branch %llu is at event %llu (last sync point %llu)\n", (unsigned long long)st.shop,
               (unsigned long long)st.cursor, (unsigned long long)st.sync_seq);
    return 0;
}

static int run_node(const char *dir, const cs_node_options *o, const cs_cli_created *fresh,
                    bool print)
{
    cs_branch *b = NULL;
    cs_err err = cs_branch_open(dir, NULL, &b);
    if (err != CS_OK)
        return cs_cli_fail(err, "cannot open the data directory %s", dir);
    if (cs_cli_g.actor)
        cs_engine_set_actor(cs_branch_engine(b), cs_cli_g.actor);
    char msg[320] = "";
    err = cs_node_run(b, dir, o, msg, sizeof(msg));
    cs_branch_state st = {0};
    bool nothing = err != CS_OK && cs_branch_state_get(b, &st) == CS_OK && st.cursor == 0;
    int rc = print || err != CS_OK ? node_result(b, err, msg) : 0;
    cs_branch_close(b);
    if (fresh && nothing)
        cs_cli_created_undo(dir, *fresh);
    return rc;
}

#ifndef CS_SOURCE_DIR
#define CS_SOURCE_DIR "."
#endif

int cs_cmd_demo(const cs_cli_cmd *cmd, int argc, char **argv)
{
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    int rc = cs_cli_parse(cmd, argc, argv, NULL, 0, 0, 0, pos, &npos);
    if (rc != CS_CLI_GO)
        return rc;
    const char *script = CS_SOURCE_DIR "/tools/demo";
    if (access(script, X_OK) != 0)
        return cs_cli_fail(CS_NOT_FOUND,
                           "the demo script %s is not there: it ships with the source", script);
    execl(script, script, (char *)NULL);
    return cs_cli_fail(CS_IO, "cannot run %s", script);
}

int cs_cmd_branch_join(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *head = NULL, *shop_s = NULL, *dir = NULL;
    bool pw_stdin = false;
    cs_nats_options nats = {0};
    const cs_cli_opt opts[] = {{"head", true, &head, NULL},
                               {"shop", true, &shop_s, NULL},
                               {"password-stdin", false, NULL, &pw_stdin},
                               {"nats", true, &nats.url, NULL},
                               {"nats-creds", true, &nats.creds, NULL},
                               {"nats-domain", true, &nats.domain, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t shop = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 6, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && !head == !nats.url)
        rc = cs_cli_usage(cmd, "give --head HOST:PORT (TCP) or --nats URL (JetStream)");
    if (rc == CS_CLI_GO && nats.url && !nats.creds)
        rc = cs_cli_usage(cmd, "--nats needs --nats-creds FILE (from shop nats-credentials)");
    if (rc == CS_CLI_GO && (nats.creds || nats.domain) && !nats.url)
        rc = cs_cli_usage(cmd, "--nats-creds and --nats-domain go with --nats URL");
    if (rc == CS_CLI_GO && !shop_s)
        rc = cs_cli_usage(cmd, "--shop ID is required (the id `shop add` printed)");
    if (rc == CS_CLI_GO)
        rc = cs_cli_parse_id(cmd, "--shop", shop_s, &shop);
    if (rc == CS_CLI_GO && head && !pw_stdin)
        rc = cs_cli_usage(cmd, "--password-stdin is required: the password is read from stdin");
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    char password[CS_CLI_PASSWORD_BYTES_MAX + 2] = "";
    if (rc == CS_CLI_GO && head) /* over NATS the credentials file authenticates */
        rc = cs_cli_read_password(password, sizeof(password));
    if (rc != CS_CLI_GO)
        return rc;
    cs_cli_progress pr;
    cs_node_options o = {.mode = CS_NODE_JOIN,
                         .head = head,
                         .shop = shop,
                         .password = password,
                         .progress = cs_cli_progress_start(&pr, "applied", "events", false),
                         .record_state = true,
                         .nats = nats.url ? &nats : NULL};
    cs_cli_created fresh = cs_cli_created_before(dir);
    rc = run_node(dir, &o, &fresh, true);
    memset(password, 0, sizeof(password));
    return rc;
}

static int follow_or_pull(const cs_cli_cmd *cmd, int argc, char **argv, cs_node_mode mode)
{
    block_stop_signals();
    const char *head = NULL, *dir = NULL;
    net_opts no = {0};
    cs_nats_options nats = {0};
    const cs_cli_opt opts[] = {{"head", true, &head, NULL},
                               {"nats", true, &nats.url, NULL},
                               {"nats-creds", true, &nats.creds, NULL},
                               {"nats-domain", true, &nats.domain, NULL},
                               NET_OPTS(no)};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    /* pull exits once in step: logs yes, a metrics listener no */
    unsigned nopts = mode == CS_NODE_FOLLOW ? 4 + NET_OPTS_COUNT : 6;
    int rc = cs_cli_parse(cmd, argc, argv, opts, nopts, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO)
        rc = net_opts_check(cmd, &no);
    if (rc == CS_CLI_GO && head && (nats.url || nats.creds || nats.domain))
        rc = cs_cli_usage(cmd, "--head (TCP) and --nats (JetStream) exclude each other");
    if (rc == CS_CLI_GO && (nats.creds || nats.domain) && !nats.url)
        rc = cs_cli_usage(cmd, "--nats-creds and --nats-domain go with --nats URL");
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    if (rc != CS_CLI_GO)
        return rc;
    if (!store_exists(dir))
        return cs_cli_fail(CS_NOT_FOUND, "%s holds no branch: run chainsync branch join", dir);
    cs_cli_progress pr;
    cs_node_options o = {.mode = mode,
                         .head = head,
                         .progress = cs_cli_progress_start(&pr, "applied", "events", false),
                         .record_state = true,
                         .log_level = no.level,
                         .log_format = no.format,
                         .http = no.http,
                         .http_ready_file = no.http_ready,
                         .nats = nats.url ? &nats : NULL};
    return run_node(dir, &o, NULL, true);
}

int cs_cmd_branch_follow(const cs_cli_cmd *cmd, int argc, char **argv)
{
    return follow_or_pull(cmd, argc, argv, CS_NODE_FOLLOW);
}

int cs_cmd_branch_pull(const cs_cli_cmd *cmd, int argc, char **argv)
{
    return follow_or_pull(cmd, argc, argv, CS_NODE_PULL);
}

/* ---- put --wait on a branch -------------------------------------------------------------- */

/* Where the write stands: still in the outbox (1), refused (2, *ans set), or answered (0). */
static int outbox_state(cs_engine *e, const cs_write_result *w, cs_remote_answer *ans)
{
    json_t *ob = NULL, *rej = NULL, *v;
    size_t i;
    int st = 0;
    if (cs_engine_outbox(e, &ob) != CS_OK || cs_engine_rejected(e, &rej) != CS_OK)
        st = -1;
    json_array_foreach(ob, i, v)
    {
        if ((uint64_t)json_integer_value(json_object_get(v, "id")) == w->id &&
            (uint64_t)json_integer_value(json_object_get(v, "version")) == w->version)
            st = 1;
    }
    json_array_foreach(rej, i, v)
    {
        if (st == 0 && (uint64_t)json_integer_value(json_object_get(v, "id")) == w->id &&
            (uint64_t)json_integer_value(json_object_get(v, "version")) == w->version) {
            const char *code = json_string_value(json_object_get(v, "code"));
            const char *msg = json_string_value(json_object_get(v, "message"));
            ans->code = code ? cs_err_from_name(code, strlen(code)) : CS_INVALID_INPUT;
            snprintf(ans->message, sizeof(ans->message), "%s", msg ? msg : "");
            st = 2;
        }
    }
    json_decref(ob);
    json_decref(rej);
    return st;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int cs_cli_put_wait(const char *dir, const cs_write_result *w, unsigned timeout_ms)
{
    if (!cs_node_running(dir)) { /* nobody will deliver it: do it ourselves */
        cs_node_options o = {.mode = CS_NODE_PULL, .record_state = true};
        int rc = run_node(dir, &o, NULL, false);
        if (rc != 0)
            return rc;
    }
    cs_remote_answer ans = {0};
    for (unsigned waited = 0;; waited += 50) {
        cs_engine *e = NULL;
        if (cs_engine_open(dir, NULL, &e) != CS_OK)
            return cs_cli_fail(CS_IO, "cannot open %s", dir);
        int st = outbox_state(e, w, &ans);
        cs_engine_close(e);
        if (st == 0)
            return CS_CLI_GO;
        if (st == 2)
            return cs_cli_fail(ans.code, "the head office refused the write: %s", ans.message);
        if (st < 0)
            return cs_cli_fail(CS_IO, "cannot read the outbox of %s", dir);
        if (waited >= timeout_ms)
            return cs_cli_fail(CS_NETWORK, "no answer from the head office within %u ms",
                               timeout_ms);
        sleep_ms(50);
    }
}

/* `branch retry`: asks the node following on this directory (in another process) to try the
 * held event again now; one durable write the node sees through its watch or its next tick
 * (net/hold.c). Without a running node, the next follow tries at once anyway. */
int cs_cmd_branch_retry(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *dir = NULL;
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    int rc = cs_cli_parse(cmd, argc, argv, NULL, 0, 0, 0, pos, &npos);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, &dir, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_shop_info self;
    cs_err err = cs_engine_self(e, &self);
    cs_engine_close(e); /* the branch is opened as one, with its projection */
    if (err != CS_OK)
        return cs_cli_fail(err, "cannot read what %s is", dir);
    if (self.role != CS_ROLE_BRANCH)
        return cs_cli_fail(CS_FORBIDDEN, "%s is not a branch: only a branch holds events", dir);
    cs_branch *b = NULL;
    err = cs_branch_open(dir, NULL, &b);
    if (err != CS_OK)
        return cs_cli_fail(err, "cannot open the data directory %s", dir);
    cs_branch_state st;
    cs_branch_hold h;
    uint64_t asked = 0;
    bool running = cs_node_running(dir);
    if ((err = cs_branch_state_get(b, &st)) == CS_OK && (err = cs_branch_hold_get(b, &h)) == CS_OK)
        err = cs_branch_retry_ask(b, &asked);
    cs_branch_close(b);
    if (err != CS_OK)
        return cs_cli_fail(err, "cannot ask %s to try again", dir);
    if (cs_cli_g.json_out) {
        printf("{\"shop\":%llu,\"asked\":%llu,\"held\":%s,\"seq\":%llu,\"node_running\":%s}\n",
               (unsigned long long)st.shop, (unsigned long long)asked, h.held ? "true" : "false",
               (unsigned long long)h.seq, running ? "true" : "false");
        return 0;
    }
    if (h.held)
        printf("branch %llu holds at event %llu (%s: %s): retry asked\n",
               (unsigned long long)st.shop, (unsigned long long)h.seq, cs_err_name(h.code),
               h.message);
    else
        printf("branch %llu holds no event as recorded: retry asked all the same\n",
               (unsigned long long)st.shop);
    printf("%s\n", running ? "branch follow runs on this directory: it tries within a second"
                           : "no branch follow runs on this directory: the next one tries at once");
    return 0;
}

/* ---- shop nats-credentials (the NATS transport's per-branch users) ------------------------ */

int cs_cmd_shop_nats_credentials(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *out = NULL, *dir = NULL;
    const cs_cli_opt opts[] = {{"out", true, &out, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t shop = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 1, 1, pos, &npos);
    if (rc == CS_CLI_GO)
        rc = cs_cli_parse_id(cmd, "SHOP", pos[0], &shop);
    if (rc == CS_CLI_GO && !out)
        rc = cs_cli_usage(cmd, "--out FILE is required (the credentials file for the shop)");
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, &dir, &e);
    if (rc != CS_CLI_GO)
        return rc;
    char *creds = NULL, *conf = NULL, msg[320] = "";
    cs_err err = cs_nats_credentials(e, shop, &creds, &conf, msg, sizeof(msg));
    cs_engine_close(e);
    if (err != CS_OK)
        return cs_cli_fail(err, "%s", msg);
    /* Written beside, then renamed: readable by its owner only, like any password file. */
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", out);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    size_t len = strlen(creds);
    bool ok = fd >= 0 && write(fd, creds, len) == (ssize_t)len && write(fd, "\n", 1) == 1 &&
              fsync(fd) == 0;
    ok = fd >= 0 && close(fd) == 0 && ok && rename(tmp, out) == 0;
    if (!ok)
        unlink(tmp);
    explicit_bzero(creds, len);
    free(creds);
    if (!ok) {
        explicit_bzero(conf, strlen(conf));
        free(conf);
        return cs_cli_fail(CS_IO, "cannot write %s", out);
    }
    if (cs_cli_g.json_out) {
        json_t *o =
            json_pack("{s:I,s:s,s:s}", "shop", (json_int_t)shop, "creds", out, "server_conf", conf);
        rc = o ? cs_cli_print_json(o) : cs_cli_fail(CS_NO_MEMORY, NULL);
        json_decref(o);
    } else {
        fputs(conf, stdout);
    }
    explicit_bzero(conf, strlen(conf));
    free(conf);
    return rc;
}
