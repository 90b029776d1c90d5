/*
 * cmd_audit.c: `chainsync audit history|as-of|verify|checkpoint` (SPEC 7, R14) over the audit
 * API of projections/projection.h. The design (checkpoints, the history index, what verify
 * compares) is in docs/design.md, "Audit"; the databases in docs/storage.md, "audit".
 *
 * Times print as ISO 8601 UTC with milliseconds in human output and as integer milliseconds
 * since the Unix epoch in JSON (the log's own unit). `--time` takes ISO 8601 (a date, or a date
 * and time with an optional zone; none means UTC) or integer milliseconds.
 *
 * verify prints its report on standard output whatever it finds; when something does not hold
 * it also prints `error: corrupt: <the first problem>` on standard error and exits 3 (SPEC 6:
 * a damaged store is a storage error), so scripts can rely on the exit code alone.
 */
#include "projections/projection.h"
#include "tools/cli.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- times ------------------------------------------------------------------------------- */

/* ms since the epoch as "2024-03-03T10:15:02.123Z" (buf of at least 32 bytes). */
static const char *iso_time(uint64_t ms, char *buf, size_t len)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    char base[24];
    if (!gmtime_r(&secs, &tm) || !strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm))
        snprintf(buf, len, "%" PRIu64 " ms", ms);
    else
        snprintf(buf, len, "%s.%03uZ", base, (unsigned)(ms % 1000));
    return buf;
}

/* Reads exactly n digits at *p into *out. */
static bool digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (!isdigit((unsigned char)**p))
            return false;
        v = v * 10 + (**p - '0');
    }
    *out = v;
    return true;
}

/* The zone suffix: "", "Z", "+hh:mm", "+hhmm", "-hh:mm", "-hhmm" -> seconds east of UTC. */
static bool zone_offset(const char *p, long *east)
{
    int h, m;
    *east = 0;
    if (*p == '\0' || (p[0] == 'Z' && p[1] == '\0'))
        return true;
    if (*p != '+' && *p != '-')
        return false;
    int sign = *p++ == '-' ? -1 : 1;
    if (!digits(&p, 2, &h) || (*p == ':' && !++p) || !digits(&p, 2, &m) || *p || h > 23 || m > 59)
        return false;
    *east = sign * (h * 3600L + m * 60L);
    return true;
}

/* ISO 8601 (YYYY-MM-DD[THH:MM[:SS[.fff]]][zone]) or integer ms -> ms since the epoch. */
static bool parse_time_ms(const char *s, uint64_t *out)
{
    const char *p = s;
    bool all_digits = *p != '\0';
    for (const char *q = s; *q; q++)
        all_digits = all_digits && isdigit((unsigned char)*q);
    if (all_digits)
        return cs_cli_parse_u64(s, out);
    struct tm tm = {0};
    int y, mo, d, h = 0, mi = 0, sec = 0, ms = 0;
    if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
        !digits(&p, 2, &d))
        return false;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi))
            return false;
        if (*p == ':' && (p++, !digits(&p, 2, &sec)))
            return false;
        if (*p == '.') {
            p++;
            int n = 0;
            for (; isdigit((unsigned char)*p); p++, n++)
                if (n < 3)
                    ms = ms * 10 + (*p - '0');
            for (; n > 0 && n < 3; n++)
                ms *= 10;
            if (n == 0)
                return false;
        }
    }
    long east;
    if (!zone_offset(p, &east) || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 ||
        mi > 59 || sec > 60)
        return false;
    tm.tm_year = y - 1900, tm.tm_mon = mo - 1, tm.tm_mday = d;
    tm.tm_hour = h, tm.tm_min = mi, tm.tm_sec = sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || tm.tm_mday != d) /* timegm normalised an impossible date */
        return false;
    long long secs = (long long)t - east;
    if (secs < 0)
        return false;
    *out = (uint64_t)secs * 1000u + (uint64_t)ms;
    return true;
}

/* ---- opening ----------------------------------------------------------------------------- */

/* Opens the directory and its audit. Returns CS_CLI_GO or the exit code after printing. */
static int audit_open_flags(const cs_cli_cmd *cmd, unsigned flags, cs_engine **e, cs_audit **a)
{
    const char *dir = NULL;
    int rc = cs_cli_data_dir(cmd, &dir);
    if (rc == CS_CLI_GO)
        rc = (flags & CS_AUDIT_READ_ONLY) ? cs_cli_open_read_only(dir, e)
                                          : cs_cli_open(dir, true, e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_err err = cs_audit_open_flags(*e, flags, a);
    if (err != CS_OK) {
        cs_engine_close(*e);
        return cs_cli_fail(err, "cannot open the audit's databases in %s", dir);
    }
    return CS_CLI_GO;
}

static int audit_open(const cs_cli_cmd *cmd, cs_engine **e, cs_audit **a)
{
    return audit_open_flags(cmd, 0, e, a);
}

static int audit_fail(cs_err err, const cs_audit *a, const char *what)
{
    const char *msg = cs_audit_errmsg(a);
    return msg[0] ? cs_cli_fail(err, "%s", msg) : cs_cli_fail(err, "%s", what);
}

/* A JSON value as compact text for a human line (owned by the caller). */
static char *value_text(const json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* ---- history ----------------------------------------------------------------------------- */

static void print_change(const json_t *c)
{
    const char *op = json_string_value(json_object_get(c, "op"));
    const char *field = json_string_value(json_object_get(c, "field"));
    char *o = value_text(json_object_get(c, "old")), *n = value_text(json_object_get(c, "new"));
    if (op && strcmp(op, "added") == 0)
        printf("    + %s: %s\n", field, n ? n : "?");
    else if (op && strcmp(op, "removed") == 0)
        printf("    - %s: %s\n", field, o ? o : "?");
    else
        printf("    %s: %s -> %s\n", field, o ? o : "?", n ? n : "?");
    free(o);
    free(n);
}

static void print_history(const char *type, uint64_t id, const json_t *versions)
{
    size_t i;
    const json_t *v;
    printf("%s %" PRIu64 ": %zu version%s, oldest first\n", type, id, json_array_size(versions),
           json_array_size(versions) == 1 ? "" : "s");
    json_array_foreach((json_t *)versions, i, v)
    {
        char when[48];
        iso_time((uint64_t)json_integer_value(json_object_get(v, "time")), when, sizeof(when));
        printf("seq %-8" PRIu64 " %s  %-8s v%-4" PRIu64 " by %s (shop %" PRIu64 ")\n",
               (uint64_t)json_integer_value(json_object_get(v, "seq")), when,
               json_string_value(json_object_get(v, "change")),
               (uint64_t)json_integer_value(json_object_get(v, "version")),
               json_string_value(json_object_get(v, "actor")),
               (uint64_t)json_integer_value(json_object_get(v, "shop")));
        size_t j;
        const json_t *c;
        json_array_foreach(json_object_get(v, "changes"), j, c)
        {
            print_change(c);
        }
        if (json_array_size(json_object_get(v, "changes")) == 0)
            printf("    (no field changed)\n");
    }
}

int cs_cmd_audit_history(const cs_cli_cmd *cmd, int argc, char **argv)
{
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t id = 0;
    int rc = cs_cli_parse(cmd, argc, argv, NULL, 0, 2, 2, pos, &npos);
    if (rc == CS_CLI_GO)
        rc = cs_cli_parse_id(cmd, "ID", pos[1], &id);
    if (rc == CS_CLI_GO && !cs_schema_find(pos[0]))
        rc = cs_cli_fail(CS_UNKNOWN_TYPE, "'%s' is not a type (see chainsync put --help)", pos[0]);
    cs_engine *e = NULL;
    cs_audit *a = NULL;
    if (rc == CS_CLI_GO)
        rc = audit_open(cmd, &e, &a);
    if (rc != CS_CLI_GO)
        return rc;
    json_t *versions = NULL;
    cs_err err = cs_audit_history(a, pos[0], id, &versions);
    if (err != CS_OK) {
        rc = audit_fail(err, a, "cannot read the item's history");
    } else if (cs_cli_g.json_out) {
        size_t i;
        json_t *v;
        json_array_foreach(versions, i, v)
        {
            if (rc == CS_CLI_GO)
                rc = cs_cli_print_json(v);
        }
    } else {
        print_history(pos[0], id, versions);
    }
    json_decref(versions);
    cs_audit_close(a);
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}

/* ---- as-of ------------------------------------------------------------------------------- */

typedef struct asof_args {
    bool by_time;
    uint64_t seq;
    uint64_t time_ms;
    const char *type;
    uint64_t branch; /* 0: the directory's own state */
    uint64_t every;  /* 0: the stored interval */
} asof_args;

static int asof_parse(const cs_cli_cmd *cmd, int argc, char **argv, asof_args *x)
{
    const char *seq = NULL, *when = NULL, *branch = NULL, *every = NULL;
    const cs_cli_opt opts[] = {{"seq", true, &seq, NULL},
                               {"time", true, &when, NULL},
                               {"branch", true, &branch, NULL},
                               {"every", true, &every, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    memset(x, 0, sizeof(*x));
    int rc = cs_cli_parse(cmd, argc, argv, opts, 4, 0, 1, pos, &npos);
    if (rc != CS_CLI_GO)
        return rc;
    if (!seq == !when)
        return cs_cli_usage(cmd, "give exactly one of --seq N and --time ISO8601");
    if (seq && !cs_cli_parse_u64(seq, &x->seq))
        return cs_cli_usage(cmd,
                            "--seq must be a decimal integer (0 = before the first event), "
                            "not '%s'",
                            seq);
    if (when && !parse_time_ms(when, &x->time_ms))
        return cs_cli_usage(cmd,
                            "--time must be ISO 8601 (2024-03-03, 2024-03-03T10:15:00Z, "
                            "2024-03-03T10:15:00.250-03:00) or milliseconds, not '%s'",
                            when);
    x->by_time = when != NULL;
    if (branch && (rc = cs_cli_parse_id(cmd, "--branch", branch, &x->branch)) != CS_CLI_GO)
        return rc;
    if (every && (rc = cs_cli_parse_id(cmd, "--every", every, &x->every)) != CS_CLI_GO)
        return rc;
    x->type = npos ? pos[0] : NULL;
    if (x->type && !cs_schema_find(x->type))
        return cs_cli_fail(CS_UNKNOWN_TYPE, "'%s' is not a type (see chainsync put --help)",
                           x->type);
    return CS_CLI_GO;
}

/* Prints the items of a state grouped by type, one table per type present (or the one asked
 * for, even empty). */
static int print_items_by_type(const json_t *items, const char *only)
{
    unsigned n;
    const cs_type *types = cs_schema_types(&n);
    int rc = CS_CLI_GO;
    for (unsigned t = 0; t < n && rc == CS_CLI_GO; t++) {
        if (only && strcmp(only, types[t].name) != 0)
            continue;
        json_t *of = json_array();
        size_t i;
        json_t *it;
        if (!of)
            return cs_cli_fail(CS_NO_MEMORY, NULL);
        json_array_foreach((json_t *)items, i, it)
        {
            const char *ty = json_string_value(json_object_get(it, "type"));
            if (ty && strcmp(ty, types[t].name) == 0)
                json_array_append(of, it);
        }
        if (json_array_size(of) > 0) {
            printf("\n%s\n", types[t].name);
            rc = cs_cli_print_items_table(types[t].name, of);
        } else if (only) {
            printf("\nno %s items\n", only);
        }
        json_decref(of);
    }
    return rc;
}

static void print_asof_header(const json_t *st, const asof_args *x, bool branch_dir)
{
    char when[48];
    uint64_t seq = (uint64_t)json_integer_value(json_object_get(st, "seq"));
    const json_t *tm = json_object_get(st, "time");
    const json_t *b = json_object_get(st, "branch");
    if (b)
        printf("what branch %" PRIu64 " should hold as of event %" PRIu64, x->branch, seq);
    else
        printf("catalog as of event %" PRIu64, seq);
    if (json_is_integer(tm))
        printf(" (%s)", iso_time((uint64_t)json_integer_value(tm), when, sizeof(when)));
    if (x->by_time)
        printf(", the last event at or before %s", iso_time(x->time_ms, when, sizeof(when)));
    printf("\n");
    if (b) {
        char types[1024] = "";
        size_t i, n = 0;
        const json_t *ty;
        json_array_foreach(json_object_get(b, "types"), i, ty)
        {
            if (n < sizeof(types))
                n += (size_t)snprintf(types + n, sizeof(types) - n, "%s%s", i ? ", " : "",
                                      json_string_value(ty));
        }
        printf("linked: %s, switch: %s, mode: %s, last sync point: event %" PRIu64
               ", synced types: %s\n",
               json_is_true(json_object_get(b, "linked")) ? "yes" : "no",
               json_is_true(json_object_get(b, "switch")) ? "on" : "off",
               json_is_true(json_object_get(b, "continuous")) ? "continuous" : "on-trigger",
               (uint64_t)json_integer_value(json_object_get(b, "sync_seq")), n ? types : "none");
        printf("(replayed events 1 to %" PRIu64 " through the projection; copies are shown "
               "under the head office's ids)\n",
               seq);
    } else {
        uint64_t cp = (uint64_t)json_integer_value(json_object_get(st, "from_checkpoint"));
        uint64_t n = (uint64_t)json_integer_value(json_object_get(st, "replayed"));
        if (cp)
            printf("(rebuilt from the checkpoint at event %" PRIu64 ", then %" PRIu64
                   " event%s replayed)\n",
                   cp, n, n == 1 ? "" : "s");
        else
            printf("(no checkpoint at or before it: replayed events 1 to %" PRIu64 ")\n", seq);
        if (branch_dir)
            printf("(a branch's own log holds only its local writes: what it should hold from "
                   "the head office is asked there, with --branch)\n");
    }
}

static cs_err asof_state(cs_audit *a, asof_args *x, cs_audit_state **s)
{
    cs_err err = CS_OK;
    if (x->every)
        err = cs_audit_checkpoint(a, x->every, false, NULL);
    if (err == CS_OK && x->by_time)
        err = cs_audit_seq_at_time(a, x->time_ms, &x->seq);
    if (err == CS_OK && x->branch)
        err = cs_audit_branch_at(a, x->seq, x->branch, s);
    else if (err == CS_OK)
        err = cs_audit_state_at(a, x->seq, x->type, 0, s);
    return err;
}

int cs_cmd_audit_as_of(const cs_cli_cmd *cmd, int argc, char **argv)
{
    asof_args x;
    int rc = asof_parse(cmd, argc, argv, &x);
    cs_engine *e = NULL;
    cs_audit *a = NULL;
    if (rc == CS_CLI_GO)
        rc = audit_open(cmd, &e, &a);
    if (rc != CS_CLI_GO)
        return rc;
    cs_audit_state *s = NULL;
    json_t *st = NULL;
    cs_err err = asof_state(a, &x, &s);
    if (err == CS_OK)
        err = cs_audit_state_json(s, x.type, &st);
    if (err != CS_OK) {
        rc = audit_fail(err, a, "cannot rebuild the state");
    } else if (cs_cli_g.json_out) {
        rc = cs_cli_print_json(st);
    } else {
        cs_shop_info self;
        print_asof_header(st, &x, cs_engine_self(e, &self) == CS_OK && self.role == CS_ROLE_BRANCH);
        rc = print_items_by_type(json_object_get(st, "items"), x.type);
    }
    json_decref(st);
    cs_audit_state_free(s);
    cs_audit_close(a);
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}

/* ---- verify ------------------------------------------------------------------------------ */

static void print_differences(const json_t *part)
{
    size_t i;
    const json_t *d;
    json_array_foreach(json_object_get(part, "differences"), i, d)
    {
        const char *type = json_string_value(json_object_get(d, "type"));
        const json_t *id = json_object_get(d, "id");
        const char *key = json_string_value(json_object_get(d, "key"));
        printf("  - %s", type ? type : "?");
        if (json_is_integer(id))
            printf(" %" PRIu64, (uint64_t)json_integer_value(id));
        if (key)
            printf(" %s", key);
        printf(" %s\n", json_string_value(json_object_get(d, "what")) ?: "");
        size_t j;
        const json_t *c;
        json_array_foreach(json_object_get(d, "changes"), j, c)
        {
            print_change(c);
        }
    }
    json_int_t count = json_integer_value(json_object_get(part, "count"));
    if ((size_t)count > json_array_size(json_object_get(part, "differences")))
        printf(
            "  ... and %lld more\n",
            (long long)(count - (json_int_t)json_array_size(json_object_get(part, "differences"))));
}

/* "ok" / "SKIPPED" / "FAILED (n differences)" and the part's own summary. */
static void print_part(const json_t *report, const char *name, const char *summary)
{
    const json_t *p = json_object_get(report, name);
    if (!p)
        return;
    const json_t *ok = json_object_get(p, "ok");
    if (json_is_null(ok))
        printf("%-12s skipped: %s\n", name, json_string_value(json_object_get(p, "skipped")) ?: "");
    else if (json_is_true(ok))
        printf("%-12s ok: %s\n", name, summary);
    else
        printf("%-12s FAILED: %" PRIu64 " problem%s\n", name,
               (uint64_t)json_integer_value(json_object_get(p, "count")),
               json_integer_value(json_object_get(p, "count")) == 1 ? "" : "s");
    print_differences(p);
}

static uint64_t jget(const json_t *report, const char *part, const char *key)
{
    return (uint64_t)json_integer_value(json_object_get(json_object_get(report, part), key));
}

static void print_verify(const json_t *r)
{
    char s[512];
    uint64_t events = jget(r, "log", "events");
    snprintf(s, sizeof(s), "%" PRIu64 " event%s, every checksum and the hash chain verify", events,
             events == 1 ? "" : "s");
    print_part(r, "log", s);
    const json_t *st = json_object_get(r, "state");
    snprintf(s, sizeof(s), "%s a replay of the log (digest %s)",
             strcmp(json_string_value(json_object_get(st, "checked")) ?: "", "all") == 0
                 ? "equals"
                 : "its local items equal",
             json_string_value(json_object_get(st, "digest")) ?: "-");
    print_part(r, "state", s);
    snprintf(s, sizeof(s), "%" PRIu64 " checked against the replay",
             jget(r, "checkpoints", "checked"));
    print_part(r, "checkpoints", s);
    snprintf(s, sizeof(s), "indexed up to event %" PRIu64, jget(r, "history", "indexed"));
    print_part(r, "history", s);
    snprintf(s, sizeof(s),
             "branch %" PRIu64 " at event %" PRIu64 ": %" PRIu64 " copies and %" PRIu64
             " shared records equal a replay; %" PRIu64 " local items and %" PRIu64
             " pending shared writes not checked",
             jget(r, "branch", "shop"), jget(r, "branch", "cursor"),
             jget(r, "branch", "copies_checked"), jget(r, "branch", "shared_checked"),
             jget(r, "branch", "local_not_checked"), jget(r, "branch", "pending_not_checked"));
    print_part(r, "branch", s);
    printf("verify: %s\n", json_is_true(json_object_get(r, "ok")) ? "ok" : "FAILED");
}

int cs_cmd_audit_verify(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *branch = NULL;
    const cs_cli_opt opts[] = {{"branch", true, &branch, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && branch && !*branch)
        rc = cs_cli_usage(cmd, "--branch needs a directory");
    cs_engine *e = NULL;
    cs_audit *a = NULL;
    /* Read-only: verify never writes in the store it checks (issue 12), so a damaged store is
     * not made worse and a verify can run beside anything. */
    if (rc == CS_CLI_GO)
        rc = audit_open_flags(cmd, CS_AUDIT_READ_ONLY, &e, &a);
    if (rc != CS_CLI_GO)
        return rc;
    json_t *report = NULL;
    cs_cli_progress pr;
    cs_progress p = cs_cli_progress_start(&pr, "replayed", "events", false);
    cs_audit_set_progress(a, &p);
    cs_err err = cs_audit_verify(a, branch, &report);
    cs_cli_progress_end(&pr);
    if (report && cs_cli_g.json_out)
        rc = cs_cli_print_json(report);
    else if (report)
        print_verify(report);
    if (err != CS_OK && rc == CS_CLI_GO) {
        fflush(stdout); /* the report first, then the one-line verdict */
        rc = audit_fail(err, a, "verification could not run");
    }
    json_decref(report);
    cs_audit_close(a);
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}

/* ---- checkpoint -------------------------------------------------------------------------- */

int cs_cmd_audit_checkpoint(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *every_s = NULL;
    bool rebuild = false;
    const cs_cli_opt opts[] = {{"every", true, &every_s, NULL}, {"rebuild", false, NULL, &rebuild}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t every = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 2, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && every_s)
        rc = cs_cli_parse_id(cmd, "--every", every_s, &every);
    if (rc == CS_CLI_GO && every > CS_AUDIT_EVERY_MAX)
        rc = cs_cli_usage(cmd, "--every is at most %" PRIu64, (uint64_t)CS_AUDIT_EVERY_MAX);
    cs_engine *e = NULL;
    cs_audit *a = NULL;
    if (rc == CS_CLI_GO)
        rc = audit_open(cmd, &e, &a);
    if (rc != CS_CLI_GO)
        return rc;
    cs_audit_ckpt_info info = {0};
    cs_cli_progress pr;
    cs_progress p = cs_cli_progress_start(&pr, "replayed", "events", false);
    cs_audit_set_progress(a, &p);
    cs_err err = cs_audit_checkpoint(a, every, rebuild, &info);
    cs_cli_progress_end(&pr);
    if (err != CS_OK)
        rc = audit_fail(err, a, "cannot build the checkpoints");
    else if (cs_cli_g.json_out)
        printf("{\"every\":%" PRIu64 ",\"last\":%" PRIu64 ",\"count\":%" PRIu64
               ",\"built\":%" PRIu64 ",\"head\":%" PRIu64 "}\n",
               info.every, info.last, info.count, info.built, info.head);
    else
        printf("checkpoints every %" PRIu64 " events: %" PRIu64 " kept, the last at event %" PRIu64
               " (%" PRIu64 " built now); the log has %" PRIu64 " events\n",
               info.every, info.count, info.last, info.built, info.head);
    cs_audit_close(a);
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}
