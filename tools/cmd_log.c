/*
 * cmd_log.c: `chainsync log`, the event log as JSON lines (SPEC 7): one
 * {seq,time,actor,shop,kind,type,id,version,fields} object per event, in sequence order, always
 * JSON (it is a stream for programs; --json-out changes nothing).
 *
 * Every record is checksum- and chain-verified by the reader before it is printed, so a damaged
 * log stops the listing with `error: corrupt: ...` (exit 3) at the first bad event rather than
 * printing bytes it cannot vouch for. The reader is one LMDB read snapshot: a listing is
 * consistent even while another process appends.
 */
#include "tools/cli.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct log_args {
    uint64_t from;  /* first sequence, >= 1 */
    uint64_t limit; /* events at most; 0 = all */
} log_args;

static int log_parse(const cs_cli_cmd *cmd, int argc, char **argv, log_args *a, const char **dir)
{
    const char *from = NULL, *limit = NULL;
    const cs_cli_opt opts[] = {{"from", true, &from, NULL}, {"limit", true, &limit, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 2, 0, 0, pos, &npos);
    a->from = 1;
    a->limit = 0;
    if (rc == CS_CLI_GO && from)
        rc = cs_cli_parse_id(cmd, "--from", from, &a->from);
    if (rc == CS_CLI_GO && limit)
        rc = cs_cli_parse_id(cmd, "--limit", limit, &a->limit);
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, dir);
    return rc;
}

/* Prints one record as a JSON line. */
static int log_print_record(cs_event_decoder *dec, const cs_log_record *rec)
{
    cs_event_view ev;
    cs_err err = cs_event_decode(dec, rec->event, rec->event_len, &ev);
    if (err)
        return cs_cli_fail(err, "event %llu: cannot be decoded", (unsigned long long)rec->seq);
    json_t *o = NULL;
    err = cs_engine_event_json(&ev, &o);
    if (err)
        return cs_cli_fail(err, "event %llu: cannot be shown as JSON",
                           (unsigned long long)rec->seq);
    int rc = cs_cli_print_json(o);
    json_decref(o);
    return rc;
}

static int log_stream(cs_log *log, const log_args *a)
{
    cs_log_reader *r = NULL;
    cs_event_decoder *dec = NULL;
    cs_err err = cs_log_reader_open(log, &r);
    if (!err)
        err = cs_event_decoder_new(&dec);
    if (!err)
        err = cs_log_reader_seek(r, a->from);
    int rc = CS_CLI_GO;
    if (err)
        rc = cs_cli_fail(err, "%s", r ? cs_log_reader_errmsg(r) : "cannot read the log");
    /* Bounded by the log's length in this snapshot, and by --limit. */
    for (uint64_t n = 0; rc == CS_CLI_GO && (a->limit == 0 || n < a->limit); n++) {
        cs_log_record rec;
        err = cs_log_reader_next(r, &rec);
        if (err == CS_NOT_FOUND)
            break;
        if (err)
            rc = cs_cli_fail(err, "%s", cs_log_reader_errmsg(r));
        else
            rc = log_print_record(dec, &rec);
    }
    cs_event_decoder_free(dec);
    cs_log_reader_close(r);
    return rc;
}

int cs_cmd_log(const cs_cli_cmd *cmd, int argc, char **argv)
{
    log_args a;
    const char *dir = NULL;
    int rc = log_parse(cmd, argc, argv, &a, &dir);
    if (rc != CS_CLI_GO)
        return rc;
    cs_engine *e = NULL;
    rc = cs_cli_open(dir, true, &e);
    if (rc != CS_CLI_GO)
        return rc;
    rc = log_stream(cs_engine_log(e), &a);
    cs_engine_close(e);
    return rc;
}
