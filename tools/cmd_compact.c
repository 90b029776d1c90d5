/*
 * cmd_compact.c: `chainsync log compact`, retention of the head office's log (docs/design.md
 * "Retention and snapshots"). The work is projections/snapshot.c's (cs_audit_compact); this
 * file parses the options, turns --keep N into a position, and prints the result.
 *
 * Retention is a command, not a stored setting: `--keep N` keeps the last N events, and a
 * timer (cron, a systemd timer) that runs it is the retention policy. A stored setting would
 * need a process to act on it, and serve is not always running; the command also refuses to
 * strand a branch, which a silent background cut could not tell anyone.
 */
#include "projections/projection.h"
#include "tools/cli.h"

#include <inttypes.h>
#include <stdio.h>

static int compact_print(const cs_compact_result *r)
{
    if (cs_cli_g.json_out) {
        json_t *o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:O}", "before", (json_int_t)r->before,
                              "snapshot_seq", (json_int_t)r->seq, "deleted", (json_int_t)r->deleted,
                              "parts", (json_int_t)r->parts, "bytes", (json_int_t)r->bytes,
                              "stranded", r->stranded ? r->stranded : json_array());
        return cs_cli_print_json_new(o);
    }
    if (r->parts == 0) { /* cut already: only the deletion was (re)run */
        printf("the log already starts at event %" PRIu64 "; %" PRIu64
               " events below it deleted now\n",
               r->before, r->deleted);
        return 0;
    }
    printf("the log now starts at event %" PRIu64 "; snapshot at event %" PRIu64 " (%" PRIu64
           " parts, %" PRIu64 " bytes); %" PRIu64 " events deleted\n",
           r->before, r->seq, r->parts, r->bytes, r->deleted);
    size_t n = r->stranded ? json_array_size(r->stranded) : 0;
    if (n)
        printf("%zu branch%s behind the cut will be bootstrapped from the snapshot\n", n,
               n == 1 ? "" : "es");
    return 0;
}

int cs_cmd_log_compact(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *before_s = NULL, *keep_s = NULL;
    bool force = false;
    const cs_cli_opt opts[] = {{"before", true, &before_s, NULL},
                               {"keep", true, &keep_s, NULL},
                               {"force", false, NULL, &force}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t before = 0, keep = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 3, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && !before_s == !keep_s)
        rc = cs_cli_usage(cmd, "give one of --before SEQ or --keep N");
    if (rc == CS_CLI_GO && before_s)
        rc = cs_cli_parse_id(cmd, "--before", before_s, &before);
    if (rc == CS_CLI_GO && keep_s)
        rc = cs_cli_parse_id(cmd, "--keep", keep_s, &keep);
    const char *dir = NULL;
    cs_engine *e = NULL;
    cs_audit *a = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, &dir, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_err err = cs_audit_open(e, &a);
    if (err != CS_OK) {
        cs_engine_close(e);
        return cs_cli_fail(err, "cannot open the audit's databases in %s", dir);
    }
    if (keep_s) { /* keep the last N events: cut before head - N + 1 */
        cs_log_reader *r = NULL;
        uint64_t head = 0;
        if ((err = cs_log_reader_open(cs_engine_log(e), &r)) == CS_OK)
            err = cs_log_reader_head(r, &head);
        cs_log_reader_close(r);
        before = err == CS_OK && head > keep ? head - keep + 1 : 0;
        if (err == CS_OK && before < 2) {
            printf("the log has %" PRIu64 " events: nothing to cut to keep %" PRIu64 "\n", head,
                   keep);
            cs_audit_close(a);
            cs_engine_close(e);
            return 0;
        }
    }
    cs_compact_result res = {0};
    if (err == CS_OK)
        err = cs_audit_compact(a, before, force, &res);
    if (err != CS_OK) {
        const char *msg = cs_audit_errmsg(a);
        rc = msg[0] ? cs_cli_fail(err, "%s", msg) : cs_cli_fail(err, "cannot compact the log");
    } else {
        rc = compact_print(&res);
    }
    json_decref(res.stranded);
    cs_audit_close(a);
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}
