/*
 * cmd_status.c: `chainsync status`, the network at a glance for a person or a monitoring check.
 * At a head office: the head of the log, how many linked branches are connected, the branch
 * furthest behind, the outbox backlog (writes the branches have queued, as they last reported:
 * the total and the branch with the most), whether serve runs (the figures are what serve records
 * once a second, the same as `shop list`). At a branch: its head office and address, whether a node
 * is connected, its cursor, last sync point, lag behind the head office's head as the node last saw
 * it, outbox depth and the last connection failure (what the node records, net/link.c).
 *
 * The exit code is the check: 0 in step, CS_CLI_EXIT_LAGGING (5) when a branch (or this
 * branch) is more than --max-lag events behind, CS_CLI_EXIT_HELD (6) when one holds at an
 * event it cannot apply (docs/design.md, "A branch that never crash-loops"; it outranks 5:
 * waiting will not fix it), the usual codes (1-4) when status itself fails. It only reads: it
 * never creates nor changes a directory.
 */
#include "net/net.h"
#include "tools/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* "2026-12-02T01:02:03Z", or "never" for 0. */
static void iso_ms(uint64_t ms, char *buf, size_t len)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    if (ms == 0 || !gmtime_r(&secs, &tm) || !strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(buf, len, "never");
}

static uint64_t row_u64(const json_t *row, const char *key)
{
    return (uint64_t)json_integer_value(json_object_get(row, key));
}

/* What the head office knows of its linked branches. A branch serve has never seen counts as
 * behind by the whole log: a check must not pass on a branch that never connected. */
typedef struct head_view {
    uint64_t head_seq;
    unsigned branches, connected, seen;
    const json_t *worst; /* the linked branch furthest behind, NULL when none */
    uint64_t worst_lag;
    /* The outbox backlog seen: shared-record writes (R8) the branches still have queued, as
     * each last reported (a branch that never reported, e.g. an older one, is not counted). */
    unsigned outbox_reported;
    uint64_t outbox_total, outbox_max;
    const json_t *outbox_largest; /* the reporting branch with the most queued, NULL when none */
    json_t *held; /* [{id,name,seq,code,message,since}] of the branches that hold (owned) */
} head_view;

static head_view head_look(const json_t *shops, uint64_t head_seq)
{
    head_view v = {.head_seq = head_seq, .held = json_array()};
    size_t i;
    const json_t *row;
    json_array_foreach(shops, i, row)
    {
        const char *role = json_string_value(json_object_get(row, "role"));
        if (!role || strcmp(role, "branch") != 0 || !json_is_true(json_object_get(row, "linked")))
            continue;
        v.branches++;
        v.connected += json_is_true(json_object_get(row, "connected"));
        const json_t *lag = json_object_get(row, "lag");
        v.seen += json_is_integer(lag);
        uint64_t l = json_is_integer(lag) ? (uint64_t)json_integer_value(lag) : head_seq;
        if (!v.worst || l > v.worst_lag) {
            v.worst = row;
            v.worst_lag = l;
        }
        const json_t *h = json_object_get(row, "held");
        if (json_is_object(h) && v.held) {
            json_t *one = json_deep_copy(h);
            if (one && json_object_set(one, "id", json_object_get(row, "id")) == 0 &&
                json_object_set(one, "name", json_object_get(row, "name")) == 0)
                json_array_append(v.held, one);
            json_decref(one);
        }
        const json_t *ob = json_object_get(row, "outbox");
        if (json_is_integer(ob)) {
            uint64_t n = (uint64_t)json_integer_value(ob);
            v.outbox_reported++;
            v.outbox_total += n;
            if (!v.outbox_largest || n > v.outbox_max) {
                v.outbox_largest = row;
                v.outbox_max = n;
            }
        }
    }
    return v;
}

static int head_print(const cs_shop_info *self, const head_view *v, bool serving, uint64_t max_lag,
                      bool ok)
{
    const json_t *w = v->worst;
    if (cs_cli_g.json_out) {
        json_t *worst = json_null();
        if (w)
            worst = json_pack("{s:O,s:O,s:I,s:O,s:O,s:O}", "id", json_object_get(w, "id"), "name",
                              json_object_get(w, "name"), "lag", (json_int_t)v->worst_lag, "lag_ms",
                              json_object_get(w, "lag_ms"), "connected",
                              json_object_get(w, "connected"), "last_seen",
                              json_object_get(w, "last_seen"));
        const json_t *ol = v->outbox_largest;
        json_t *largest = json_null();
        if (ol)
            largest = json_pack("{s:O,s:O,s:I}", "id", json_object_get(ol, "id"), "name",
                                json_object_get(ol, "name"), "outbox", (json_int_t)v->outbox_max);
        return cs_cli_print_json_new(json_pack(
            "{s:s,s:I,s:s,s:I,s:b,s:I,s:I,s:I,s:o*,s:{s:I,s:I,s:o*},s:I,s:b,s:O*}", "role", "head",
            "shop", (json_int_t)self->id, "name", self->name, "head_seq", (json_int_t)v->head_seq,
            "serving", serving, "branches", (json_int_t)v->branches, "connected",
            (json_int_t)v->connected, "seen", (json_int_t)v->seen, "most_lagging", worst, "outbox",
            "total", (json_int_t)v->outbox_total, "reported", (json_int_t)v->outbox_reported,
            "largest", largest, "max_lag", (json_int_t)max_lag, "in_step", ok, "held", v->held));
    }
    printf("head office \"%s\" (shop %llu)\n", self->name, (unsigned long long)self->id);
    printf("  head:        event %llu\n", (unsigned long long)v->head_seq);
    printf("  serve:       %s\n", serving ? "running" : "not running");
    printf("  branches:    %u of %u connected (%u never seen)\n", v->connected, v->branches,
           v->branches - v->seen);
    if (w) {
        const json_t *lag_ms = json_object_get(w, "lag_ms");
        const char *seen = json_string_value(json_object_get(w, "last_seen"));
        printf("  most behind: \"%s\" (shop %llu): %llu events",
               json_string_value(json_object_get(w, "name")), (unsigned long long)row_u64(w, "id"),
               (unsigned long long)v->worst_lag);
        if (json_is_integer(lag_ms))
            printf(", %.1f s", (double)json_integer_value(lag_ms) / 1000.0);
        printf(", %s, last seen %s\n",
               json_is_true(json_object_get(w, "connected")) ? "connected" : "not connected",
               seen ? seen : "never");
    }
    printf("  outbox:      %llu writes queued at branches (%u of %u reported)",
           (unsigned long long)v->outbox_total, v->outbox_reported, v->branches);
    if (v->outbox_largest && v->outbox_max > 0)
        printf(", most at \"%s\" (shop %llu): %llu",
               json_string_value(json_object_get(v->outbox_largest, "name")),
               (unsigned long long)row_u64(v->outbox_largest, "id"),
               (unsigned long long)v->outbox_max);
    printf("\n");
    size_t i;
    const json_t *h;
    printf("  held:        %zu branches hold at an event they cannot apply\n",
           json_array_size(v->held));
    json_array_foreach(v->held, i, h) printf(
        "               \"%s\" (shop %llu) at event %llu since %s: %s: %s\n",
        json_string_value(json_object_get(h, "name")), (unsigned long long)row_u64(h, "id"),
        (unsigned long long)row_u64(h, "seq"), json_string_value(json_object_get(h, "since")),
        json_string_value(json_object_get(h, "code")),
        json_string_value(json_object_get(h, "message")));
    printf("  state:       %s (--max-lag %llu)\n",
           json_array_size(v->held) ? "HELD"
           : ok                     ? "in step"
                                    : "LAGGING",
           (unsigned long long)max_lag);
    return CS_CLI_GO;
}

static int status_head(cs_engine *e, const char *dir, const cs_shop_info *self, uint64_t max_lag)
{
    json_t *shops = NULL;
    cs_log_reader *r = NULL;
    uint64_t head_seq = 0;
    cs_err err = cs_engine_shop_list(e, &shops);
    if (err != CS_OK)
        return cs_cli_fail_engine(err, e, "status");
    if ((err = cs_log_reader_open(cs_engine_log(e), &r)) == CS_OK)
        err = cs_log_reader_head(r, &head_seq);
    cs_log_reader_close(r);
    if (err != CS_OK) {
        json_decref(shops);
        return cs_cli_fail(err, "cannot read the head of the log");
    }
    head_view v = head_look(shops, head_seq);
    bool ok = v.worst_lag <= max_lag;
    int rc = head_print(self, &v, cs_server_running(dir), max_lag, ok);
    bool held = json_array_size(v.held) > 0;
    json_decref(v.held);
    json_decref(shops);
    return rc != CS_CLI_GO ? rc : held ? CS_CLI_EXIT_HELD : ok ? 0 : CS_CLI_EXIT_LAGGING;
}

/* ---- a branch ---------------------------------------------------------------------------- */

typedef struct branch_view {
    cs_branch_state st;
    cs_branch_link_status link;
    cs_branch_hold hold;
    bool running;
    size_t outbox, rejected;
    uint64_t lag;
} branch_view;

static int branch_print(const cs_shop_info *self, const branch_view *v, uint64_t max_lag, bool ok)
{
    bool connected = v->running && v->link.connected;
    char when[32], since[32], next[32];
    iso_ms(v->link.contact_ms, when, sizeof(when));
    iso_ms(v->hold.since_ms, since, sizeof(since));
    iso_ms(v->hold.next_ms, next, sizeof(next));
    const cs_branch_hold *h = &v->hold;
    if (cs_cli_g.json_out)
        return cs_cli_print_json_new(json_pack(
            "{s:s,s:I,s:s,s:I,s:s,s:b,s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:s,s:I,s:b,s:o}", "role",
            "branch", "shop", (json_int_t)v->st.shop, "name", self->name, "head_office",
            (json_int_t)v->st.head, "head", v->link.head, "node_running", v->running, "connected",
            connected, "cursor", (json_int_t)v->st.cursor, "sync_seq", (json_int_t)v->st.sync_seq,
            "head_seq", (json_int_t)v->link.head_seq, "lag", (json_int_t)v->lag, "outbox",
            (json_int_t)v->outbox, "rejected", (json_int_t)v->rejected, "last_contact", when,
            "last_error", v->link.last_error, "max_lag", (json_int_t)max_lag, "in_step", ok, "held",
            h->held ? json_pack("{s:I,s:s,s:s,s:s,s:I,s:s}", "seq", (json_int_t)h->seq, "code",
                                cs_err_name(h->code), "message", h->message, "since", since,
                                "attempts", (json_int_t)h->attempts, "next_try", next)
                    : json_null()));
    printf("branch \"%s\" (shop %llu)\n", self->name, (unsigned long long)v->st.shop);
    printf("  head office: shop %llu at %s\n", (unsigned long long)v->st.head,
           v->link.joined ? v->link.head : "(no stored address: imported only)");
    printf("  node:        %s, last contact %s\n",
           connected    ? "connected"
           : v->running ? "running, not connected"
                        : "not running",
           when);
    printf("  cursor:      event %llu (last sync point %llu)\n", (unsigned long long)v->st.cursor,
           (unsigned long long)v->st.sync_seq);
    printf("  lag:         %llu events behind the head office's head as last seen (%llu)\n",
           (unsigned long long)v->lag, (unsigned long long)v->link.head_seq);
    printf("  outbox:      %zu waiting, %zu refused\n", v->outbox, v->rejected);
    printf("  last error:  %s\n", v->link.last_error[0] ? v->link.last_error : "none");
    if (h->held)
        printf("  held:        at event %llu since %s (%llu tries, next %s or on branch retry): "
               "%s: %s\n",
               (unsigned long long)h->seq, since, (unsigned long long)h->attempts, next,
               cs_err_name(h->code), h->message);
    else
        printf("  held:        none\n");
    printf("  state:       %s (--max-lag %llu)\n",
           h->held ? "HELD"
           : ok    ? "in step"
                   : "LAGGING",
           (unsigned long long)max_lag);
    return CS_CLI_GO;
}

static int status_branch(const char *dir, const cs_shop_info *self, uint64_t max_lag)
{
    cs_branch *b = NULL;
    cs_err err = cs_branch_open(dir, NULL, &b);
    if (err != CS_OK)
        return cs_cli_fail(err, "cannot open the data directory %s", dir);
    branch_view v = {.running = cs_node_running(dir)};
    json_t *ob = NULL, *rej = NULL;
    if ((err = cs_branch_state_get(b, &v.st)) == CS_OK &&
        (err = cs_branch_link_status_get(b, &v.link)) == CS_OK &&
        (err = cs_branch_hold_get(b, &v.hold)) == CS_OK &&
        (err = cs_engine_outbox(cs_branch_engine(b), &ob)) == CS_OK)
        err = cs_engine_rejected(cs_branch_engine(b), &rej);
    int rc = CS_CLI_GO;
    if (err != CS_OK) {
        rc = cs_cli_fail(err, "cannot read the branch's state: %s", cs_branch_errmsg(b));
    } else {
        v.outbox = json_array_size(ob);
        v.rejected = json_array_size(rej);
        v.lag = v.link.head_seq > v.st.cursor ? v.link.head_seq - v.st.cursor : 0;
        bool ok = v.lag <= max_lag;
        rc = branch_print(self, &v, max_lag, ok);
        if (rc == CS_CLI_GO && v.hold.held)
            rc = CS_CLI_EXIT_HELD;
        else if (rc == CS_CLI_GO && !ok)
            rc = CS_CLI_EXIT_LAGGING;
    }
    json_decref(ob);
    json_decref(rej);
    cs_branch_close(b);
    return rc == CS_CLI_GO ? 0 : rc;
}

int cs_cmd_status(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *max_s = NULL, *dir = NULL;
    const cs_cli_opt opts[] = {{"max-lag", true, &max_s, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t max_lag = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && max_s && !cs_cli_parse_u64(max_s, &max_lag))
        rc = cs_cli_usage(cmd, "--max-lag wants a number of events, not '%s'", max_s);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, &dir, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_shop_info self;
    cs_err err = cs_engine_self(e, &self);
    if (err != CS_OK) {
        rc = cs_cli_fail_engine(err, e, "status");
    } else if (self.role == CS_ROLE_HEAD) {
        rc = status_head(e, dir, &self, max_lag);
    } else if (self.role == CS_ROLE_BRANCH) {
        cs_engine_close(e); /* the branch is opened as one, with its projection */
        e = NULL;
        rc = status_branch(dir, &self, max_lag);
    } else if (cs_cli_g.json_out) {
        rc = cs_cli_print_json_new(json_pack("{s:s,s:I,s:s,s:b}", "role", "single", "shop",
                                             (json_int_t)self.id, "name", self.name, "in_step", 1));
    } else {
        printf("single store \"%s\" (shop %llu): no network, nothing to be in step with\n",
               self.name, (unsigned long long)self.id);
    }
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}
