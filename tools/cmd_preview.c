/*
 * cmd_preview.c: `chainsync sync --dry-run [--shop SHOP]` (issue 14, "Sync preview"): per
 * branch, what the next sync point would do, as a readable summary or, with --json-out, one
 * JSON object per branch (docs/cli.md). The preview itself is the projection's
 * (cs_audit_sync_preview, projections/preview.c); this file opens the store read-only, so
 * nothing in the data directory is written, and prints.
 */
#include "projections/projection.h"
#include "tools/cli.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A JSON value as compact JSON text (strings quoted, so "a" -> "b" reads as a change). */
static void print_value(const json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    fputs(s ? s : "(none)", stdout);
    free(s);
}

static uint64_t u64_of(const json_t *o, const char *key)
{
    return (uint64_t)json_integer_value(json_object_get(o, key));
}

/* "service 128807168718667779 "Bath"": the item's type, head-office id and name (or key). */
static void print_item_head(const char *verb, const json_t *c, const json_t *item)
{
    printf("  %-8s%s %" PRIu64, verb, json_string_value(json_object_get(c, "type")) ?: "?",
           u64_of(c, "id"));
    const json_t *name = json_object_get(item, "name");
    if (!name)
        name = json_object_get(item, "key");
    if (json_is_string(name)) {
        putchar(' ');
        print_value(name);
    }
}

static void print_create(const json_t *c)
{
    print_item_head("create", c, json_object_get(c, "item"));
    printf(" (copy version %" PRIu64 " of head-office version %" PRIu64 "%s)\n",
           u64_of(c, "version"), u64_of(c, "origin_version"),
           json_is_true(json_object_get(c, "archived")) ? ", archived" : "");
}

static void print_change(const char *verb, const json_t *c)
{
    const json_t *v = json_object_get(c, "version"), *ov = json_object_get(c, "origin_version");
    print_item_head(verb, c, NULL);
    printf(": copy version %" PRIu64 " -> %" PRIu64 " (head-office version %" PRIu64 " -> %" PRIu64
           ")\n",
           u64_of(v, "old"), u64_of(v, "new"), u64_of(ov, "old"), u64_of(ov, "new"));
    const json_t *arch = json_object_get(c, "archived");
    if (arch)
        printf("            archived: %s -> %s\n",
               json_is_true(json_object_get(arch, "old")) ? "yes" : "no",
               json_is_true(json_object_get(arch, "new")) ? "yes" : "no");
    size_t i;
    const json_t *ch;
    json_array_foreach(json_object_get(c, "changes"), i, ch)
    {
        const char *op = json_string_value(json_object_get(ch, "op")) ?: "?";
        printf("            %s: ", json_string_value(json_object_get(ch, "field")) ?: "?");
        if (strcmp(op, "relinked") == 0) {
            print_value(json_object_get(ch, "value"));
            fputs(" (now names this branch's copies)", stdout);
        } else {
            print_value(json_object_get(ch, "old"));
            fputs(" -> ", stdout);
            print_value(json_object_get(ch, "new"));
        }
        putchar('\n');
    }
    if (i == 0 && !arch)
        puts("            (no field changes: the head-office item has a new version)");
}

static void print_branch(const json_t *p)
{
    printf("branch \"%s\" (shop %" PRIu64 "): ",
           json_string_value(json_object_get(p, "name")) ?: "", u64_of(p, "shop"));
    if (!json_is_true(json_object_get(p, "covered"))) {
        const char *why = json_string_value(json_object_get(p, "skip")) ?: "?";
        printf("skipped: %s (%" PRIu64 " changed items wait for a sync point)\n",
               strcmp(why, "switch_off") == 0 ? "its sync switch is off" : why,
               u64_of(p, "waiting"));
        return;
    }
    const json_t *cr = json_object_get(p, "create"), *up = json_object_get(p, "update"),
                 *ar = json_object_get(p, "archive");
    printf("%zu to create, %zu to update, %zu to archive, %" PRIu64 " unchanged\n",
           json_array_size(cr), json_array_size(up), json_array_size(ar), u64_of(p, "unchanged"));
    size_t i;
    const json_t *c;
    json_array_foreach(cr, i, c) print_create(c);
    json_array_foreach(up, i, c) print_change("update", c);
    json_array_foreach(ar, i, c) print_change("archive", c);
    json_array_foreach(json_object_get(p, "skipped_types"), i, c)
    {
        printf("  skip    %s: %" PRIu64 " changed items wait (type not synced)\n",
               json_string_value(json_object_get(c, "type")) ?: "?", u64_of(c, "items"));
    }
}

typedef struct print_ctx {
    uint64_t branches;
    bool header_done;
    uint64_t seq;
} print_ctx;

static cs_err print_fn(const json_t *p, void *ctx)
{
    print_ctx *pc = ctx;
    pc->branches++;
    if (cs_cli_g.json_out) { /* one line per branch; the one error line is printed after */
        char *s = json_dumps(p, JSON_COMPACT);
        if (!s)
            return CS_NO_MEMORY;
        puts(s);
        free(s);
        return ferror(stdout) ? CS_IO : CS_OK;
    }
    if (!pc->header_done) {
        printf("sync preview as of event %" PRIu64
               ": what a sync point made now would do (nothing is written)\n",
               u64_of(p, "seq"));
        pc->header_done = true;
    }
    print_branch(p);
    return ferror(stdout) ? CS_IO : CS_OK;
}

int cs_cmd_sync_preview(const char *dir, uint64_t shop)
{
    cs_engine *e = NULL;
    int rc = cs_cli_open_read_only(dir, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_audit *a = NULL;
    cs_err err = cs_audit_open_flags(e, CS_AUDIT_READ_ONLY, &a);
    if (err != CS_OK) {
        cs_engine_close(e);
        return cs_cli_fail(err, "cannot open the audit of %s", dir);
    }
    print_ctx pc = {0};
    err = cs_audit_sync_preview(a, shop, print_fn, &pc, &pc.seq);
    if (err != CS_OK) {
        fflush(stdout);
        const char *msg = cs_audit_errmsg(a);
        rc = msg[0] ? cs_cli_fail(err, "%s", msg) : cs_cli_fail(err, "cannot preview the sync");
    } else {
        if (!cs_cli_g.json_out && pc.branches == 0)
            printf("sync preview as of event %" PRIu64 ": the network has no linked branch\n",
                   pc.seq);
        rc = fflush(stdout) == 0 ? 0 : cs_cli_fail(CS_IO, "cannot write the preview");
    }
    cs_audit_close(a);
    cs_engine_close(e);
    return rc;
}
