/*
 * cmd_transfer.c: offline transfer of the log (SPEC 7): `log export` at the head office writes
 * segments to a file, `branch import` applies them to a branch directory, creating it on first
 * use or turning a single store into a branch (R10). The network layer will reuse the same
 * apply code (projections/).
 */
#include "projections/projection.h"
#include "tools/cli.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* True when dir or one of its ancestors is a data directory (holds data.mdb). */
static bool inside_store(const char *real)
{
    char d[PATH_MAX], probe[PATH_MAX + 16];
    snprintf(d, sizeof(d), "%s", real);
    for (unsigned depth = 0; depth < PATH_MAX / 2; depth++) { /* each step drops a component */
        snprintf(probe, sizeof(probe), "%s/data.mdb", d[0] ? d : "/");
        if (access(probe, F_OK) == 0)
            return true;
        char *slash = strrchr(d, '/');
        if (!slash || d[0] == '\0')
            return false;
        *slash = '\0';
    }
    return false;
}

/* --out must be a new path or a regular file, outside every data directory: an export over
 * HQ/data.mdb replaced the head office's store, one over /dev/full the device node (issue 12).
 * Checked before anything is opened. CS_CLI_GO, or the exit code after printing. */
static int export_target_check(const char *out, const char *data_dir)
{
    struct stat st;
    if (lstat(out, &st) == 0 && !S_ISREG(st.st_mode))
        return cs_cli_fail(CS_INVALID_INPUT,
                           "--out %s exists and is not a regular file: give a new path or a file "
                           "to replace",
                           out);
    char parent[PATH_MAX], real[PATH_MAX], data_real[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s", out);
    char *slash = strrchr(parent, '/');
    if (!slash)
        snprintf(parent, sizeof(parent), ".");
    else if (slash == parent)
        parent[1] = '\0';
    else
        *slash = '\0';
    if (!realpath(parent, real))
        return cs_cli_fail(CS_INVALID_INPUT, "--out %s: its directory %s does not exist", out,
                           parent);
    bool in_data = realpath(data_dir, data_real) && strcmp(real, data_real) == 0;
    if (in_data || inside_store(real))
        return cs_cli_fail(CS_INVALID_INPUT,
                           "--out %s is inside a data directory (%s): an export is written "
                           "elsewhere, never beside a store",
                           out, real);
    return CS_CLI_GO;
}

int cs_cmd_log_export(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *from_s = NULL, *out = NULL, *dir = NULL;
    const cs_cli_opt opts[] = {{"from", true, &from_s, NULL}, {"out", true, &out, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t from = 1;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 2, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && from_s)
        rc = cs_cli_parse_id(cmd, "--from", from_s, &from);
    if (rc == CS_CLI_GO && !out)
        rc = cs_cli_usage(cmd, "--out FILE is required");
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    if (rc == CS_CLI_GO)
        rc = export_target_check(out, dir);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open(dir, true, &e);
    if (rc != CS_CLI_GO)
        return rc;
    uint64_t events = 0;
    cs_cli_progress pr;
    cs_progress p = cs_cli_progress_start(&pr, "exported", "events", false);
    cs_err err = cs_export_file_progress(cs_engine_log(e), from, out, &events, &p);
    if (err == CS_NOT_FOUND)
        rc = cs_cli_fail(err, "the log has no event %llu to export from", (unsigned long long)from);
    else if (err == CS_INVALID_INPUT)
        rc =
            cs_cli_fail(err, "cannot export to %s: it (or %s.tmp) is not a regular file", out, out);
    else if (err != CS_OK)
        rc = cs_cli_fail(err, "cannot export to %s", out);
    else if (cs_cli_g.json_out)
        rc = cs_cli_print_json_new(json_pack("{s:I,s:I,s:s}", "from", (json_int_t)from, "events",
                                             (json_int_t)events, "out", out));
    else
        printf("exported events %llu to %llu (%llu events) to %s\n", (unsigned long long)from,
               (unsigned long long)(from + events - 1), (unsigned long long)events, out);
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}

/* A head office is refused before cs_branch_open, which would create the projection's
 * databases (branch, dirty, mirror, origin) in it: a refused command changes nothing (SPEC 6,
 * issue 12). Read-only, so the check itself writes nothing. CS_CLI_GO to go on. */
static int refuse_head_office(const char *dir)
{
    const cs_log_options ro = {.flags = CS_LOG_READ_ONLY};
    cs_engine *e = NULL;
    char why[256];
    cs_err err = cs_engine_open_why(dir, &ro, &e, why, sizeof(why));
    cs_cli_fault_watch(e);
    if (err == CS_NOT_FOUND)
        return CS_CLI_GO; /* no chainsync databases yet: cs_branch_open makes them */
    if (err != CS_OK)
        return cs_cli_fail(err, "cannot open the data directory %s%s%s", dir, why[0] ? ": " : "",
                           why);
    cs_shop_info self;
    err = cs_engine_self(e, &self);
    int rc = CS_CLI_GO;
    if (err == CS_OK && self.role == CS_ROLE_HEAD)
        rc = cs_cli_fail(CS_FORBIDDEN, "this directory is a head office");
    else if (err != CS_OK && err != CS_NOT_FOUND)
        rc = cs_cli_fail_engine(err, e, "reading this shop's identity");
    cs_engine_close(e);
    return rc;
}

static int import_into(const char *dir, uint64_t shop, const char *file)
{
    cs_cli_created fresh = cs_cli_created_before(dir);
    if (!fresh.store) {
        int hrc = refuse_head_office(dir);
        if (hrc != CS_CLI_GO)
            return hrc;
    }
    cs_branch *b = NULL;
    cs_err err = cs_branch_open(dir, NULL, &b);
    if (err != CS_OK)
        return cs_cli_fail(err, "cannot open the data directory %s", dir);
    cs_cli_fault_watch(cs_branch_engine(b));
    if (cs_cli_g.actor)
        cs_engine_set_actor(cs_branch_engine(b), cs_cli_g.actor);
    uint64_t applied = 0;
    err = cs_branch_bind(b, shop);
    cs_cli_progress pr;
    cs_progress p = cs_cli_progress_start(&pr, "imported", "", true);
    if (err == CS_OK)
        err = cs_branch_import_file_progress(b, file, &applied, &p);
    cs_branch_state st = {0};
    if (err == CS_OK)
        err = cs_branch_state_get(b, &st);
    /* A directory this command made must end as a branch of the network in the file: when
     * --shop is no branch there, it would be neither initialised nor linked (issue 12). */
    bool not_branch = err == CS_OK && fresh.store && !st.linked && !st.unlinked;
    int rc = 0;
    if (not_branch)
        rc = cs_cli_fail(CS_NOT_IN_NETWORK,
                         "shop %llu is not a branch of the network in %s: check --shop (the id "
                         "`shop add` printed) and that the file was exported after it",
                         (unsigned long long)shop, file);
    else if (err != CS_OK)
        rc = cs_cli_fail(err, "%s", cs_branch_errmsg(b));
    else if (cs_cli_g.json_out)
        rc = cs_cli_print_json_new(json_pack("{s:I,s:I,s:I,s:b}", "applied", (json_int_t)applied,
                                             "cursor", (json_int_t)st.cursor, "sync_seq",
                                             (json_int_t)st.sync_seq, "linked", st.linked));
    else
        printf("applied %llu events; branch %llu is at event %llu (last sync point %llu)%s\n",
               (unsigned long long)applied, (unsigned long long)shop, (unsigned long long)st.cursor,
               (unsigned long long)st.sync_seq,
               st.unlinked ? "; it was unlinked and is a single store now" : "");
    cs_branch_state now;
    bool undo =
        not_branch || (err != CS_OK && cs_branch_state_get(b, &now) == CS_OK && now.cursor == 0);
    /* refused before anything of the file was applied (or, not_branch, all of it undone) */
    cs_branch_close(b);
    if (undo)
        cs_cli_created_undo(dir, fresh);
    return rc == CS_CLI_GO ? 0 : rc;
}

int cs_cmd_branch_import(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *shop_s = NULL, *dir = NULL;
    const cs_cli_opt opts[] = {{"shop", true, &shop_s, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t shop = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 1, 1, pos, &npos);
    if (rc == CS_CLI_GO && !shop_s)
        rc = cs_cli_usage(cmd, "--shop ID is required (the id `shop add` printed)");
    if (rc == CS_CLI_GO)
        rc = cs_cli_parse_id(cmd, "--shop", shop_s, &shop);
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    return rc == CS_CLI_GO ? import_into(dir, shop, pos[0]) : rc;
}
