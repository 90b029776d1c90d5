/*
 * cmd_items.c: the item commands put, get, list and del (SPEC 7), over cs_engine_put/get/list/
 * del. Each handler checks its arguments, reads its input, then opens the engine: so a usage
 * error, an unknown type or malformed JSON is refused before anything is opened, and nothing
 * changes (SPEC 6).
 */
#include "tools/cli.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Unknown types are refused before stdin is read or the store opened; the engine checks again. */
static int check_type(const char *type)
{
    if (cs_schema_find(type))
        return CS_CLI_GO;
    return cs_cli_fail(CS_UNKNOWN_TYPE,
                       "no item type '%s' (see `chainsync put --help` for the types)", type);
}

static const char *class_name(cs_type_class c)
{
    switch (c) {
    case CS_CLASS_SYNCED:
        return "synced";
    case CS_CLASS_SHARED:
        return "shared";
    case CS_CLASS_LOCAL:
        return "local";
    }
    return "?";
}

static void print_field_help(const cs_field *f, bool last)
{
    printf("%s%s", f->name, f->required ? "*" : "");
    switch (f->kind) {
    case CS_FIELD_INT:
        printf(" (int)");
        break;
    case CS_FIELD_BOOL:
        printf(" (bool)");
        break;
    case CS_FIELD_REF:
        printf(" -> %s", f->ref_type);
        break;
    case CS_FIELD_REF_LIST:
        printf(" [-> %s]", f->ref_type);
        break;
    case CS_FIELD_STRING_LIST:
        printf(" [string]");
        break;
    case CS_FIELD_INT_LIST:
        printf(" [int]");
        break;
    case CS_FIELD_ENUM:
        for (unsigned i = 0; f->enum_values && f->enum_values[i]; i++)
            printf("%s%s", i ? "|" : " (", f->enum_values[i]);
        printf(")");
        break;
    case CS_FIELD_OBJECT:
    case CS_FIELD_OBJECT_LIST:
        printf(f->kind == CS_FIELD_OBJECT_LIST ? " [{" : " {");
        for (unsigned i = 0; i < f->nsub; i++)
            print_field_help(&f->sub[i], i + 1 == f->nsub);
        printf(f->kind == CS_FIELD_OBJECT_LIST ? "}]" : "}");
        break;
    case CS_FIELD_STRING:
        break;
    }
    if (!last)
        printf(", ");
}

void cs_cli_print_schema_help(void)
{
    unsigned n = 0;
    const cs_type *types = cs_schema_types(&n);
    printf("\nTypes and their fields. * required; plain fields are strings; -> T an id of type T;\n"
           "[...] a list; (a|b) one of those values. synced: written at the head office and\n"
           "copied to branches; shared: one record network-wide; local: never leaves its shop.\n");
    for (unsigned i = 0; i < n; i++) {
        printf("  %s (%s): ", types[i].name, class_name(types[i].cls));
        for (unsigned j = 0; j < types[i].nfields; j++)
            print_field_help(&types[i].fields[j], j + 1 == types[i].nfields);
        printf("\n");
    }
}

static int put_print(const char *type, uint64_t id_given, const cs_write_result *w)
{
    if (cs_cli_g.json_out)
        return cs_cli_print_write_json(w);
    printf("%s %s %" PRIu64 " version %" PRIu64, id_given ? "updated" : "created", type, w->id,
           w->version);
    if (w->seq)
        printf(" at seq %" PRIu64 "\n", w->seq);
    else
        printf(" (shop-local: not in the log)\n");
    return CS_CLI_GO;
}

/* R8: on a branch a shared record goes to the head office; --wait waits for its answer. */
static bool goes_upstream(cs_engine *e, const char *type)
{
    cs_shop_info self;
    const cs_type *t = cs_schema_find(type);
    return t && t->cls == CS_CLASS_SHARED && cs_engine_self(e, &self) == CS_OK &&
           self.role == CS_ROLE_BRANCH;
}

int cs_cmd_put(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *json_text = NULL, *ev_text = NULL, *dir = NULL, *timeout_s = NULL;
    bool wait = false;
    const cs_cli_opt opts[] = {{"json", true, &json_text, NULL},
                               {"expect-version", true, &ev_text, NULL},
                               {"wait", false, NULL, &wait},
                               {"timeout-ms", true, &timeout_s, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t id = 0, expect = 0, timeout = 30000;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 4, 1, 2, pos, &npos);
    if (rc == CS_CLI_GO && timeout_s)
        rc = cs_cli_parse_id(cmd, "--timeout-ms", timeout_s, &timeout);
    if (rc == CS_CLI_GO && npos == 2)
        rc = cs_cli_parse_id(cmd, "ID", pos[1], &id);
    if (rc == CS_CLI_GO && ev_text)
        rc = cs_cli_parse_id(cmd, "--expect-version", ev_text, &expect);
    if (rc == CS_CLI_GO && expect && !id)
        rc = cs_cli_usage(cmd, "--expect-version guards an update: give the item's ID too");
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    if (rc == CS_CLI_GO)
        rc = check_type(pos[0]);
    if (rc != CS_CLI_GO)
        return rc;
    json_t *fields = NULL;
    rc = cs_cli_read_json_object(json_text, &fields);
    if (rc != CS_CLI_GO)
        return rc;
    cs_engine *e = NULL;
    rc = cs_cli_open(dir, true, &e);
    cs_write_result w;
    bool delivered = false;
    if (rc == CS_CLI_GO) {
        cs_err err = cs_engine_put(e, pos[0], id, fields, expect, &w);
        rc = err ? cs_cli_fail_engine(err, e, "put") : CS_CLI_GO;
        delivered = rc == CS_CLI_GO && wait && goes_upstream(e, pos[0]);
    }
    json_decref(fields);
    cs_engine_close(e); /* before --wait runs a node on the same directory (one env per process) */
    if (rc == CS_CLI_GO && delivered)
        rc = cs_cli_put_wait(dir, &w, timeout > 600000 ? 600000 : (unsigned)timeout);
    if (rc == CS_CLI_GO)
        rc = put_print(pos[0], id, &w);
    return rc;
}

int cs_cmd_get(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *dir = NULL;
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t id = 0;
    int rc = cs_cli_parse(cmd, argc, argv, NULL, 0, 2, 2, pos, &npos);
    if (rc == CS_CLI_GO)
        rc = cs_cli_parse_id(cmd, "ID", pos[1], &id);
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    if (rc == CS_CLI_GO)
        rc = check_type(pos[0]);
    if (rc != CS_CLI_GO)
        return rc;
    cs_engine *e = NULL;
    rc = cs_cli_open(dir, true, &e);
    if (rc != CS_CLI_GO)
        return rc;
    json_t *item = NULL;
    cs_err err = cs_engine_get(e, pos[0], id, &item);
    if (err)
        rc = cs_cli_fail_engine(err, e, "get");
    else
        rc = cs_cli_g.json_out ? cs_cli_print_json(item) : cs_cli_print_item_human(item);
    json_decref(item);
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}

static int list_print(const char *type, bool archived, const json_t *items)
{
    if (cs_cli_g.json_out) {
        size_t i;
        const json_t *item;
        json_array_foreach((json_t *)items, i, item)
        {
            int rc = cs_cli_print_json(item);
            if (rc != CS_CLI_GO)
                return rc;
        }
        return CS_CLI_GO;
    }
    if (json_array_size(items) == 0) {
        printf("no %s%s items\n", archived ? "archived " : "", type);
        return CS_CLI_GO;
    }
    return cs_cli_print_items_table(type, items);
}

int cs_cmd_list(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *dir = NULL;
    bool archived = false;
    const cs_cli_opt opts[] = {{"archived", false, NULL, &archived}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 1, 1, pos, &npos);
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    if (rc == CS_CLI_GO)
        rc = check_type(pos[0]);
    if (rc != CS_CLI_GO)
        return rc;
    cs_engine *e = NULL;
    rc = cs_cli_open(dir, true, &e);
    if (rc != CS_CLI_GO)
        return rc;
    json_t *items = NULL;
    cs_err err = cs_engine_list(e, pos[0], archived, &items);
    rc = err ? cs_cli_fail_engine(err, e, "list") : list_print(pos[0], archived, items);
    json_decref(items);
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}

int cs_cmd_del(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *dir = NULL, *ev_text = NULL;
    const cs_cli_opt opts[] = {{"expect-version", true, &ev_text, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t id = 0, expect = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 2, 2, pos, &npos);
    if (rc == CS_CLI_GO)
        rc = cs_cli_parse_id(cmd, "ID", pos[1], &id);
    if (rc == CS_CLI_GO && ev_text)
        rc = cs_cli_parse_id(cmd, "--expect-version", ev_text, &expect);
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    if (rc == CS_CLI_GO)
        rc = check_type(pos[0]);
    if (rc != CS_CLI_GO)
        return rc;
    cs_engine *e = NULL;
    rc = cs_cli_open(dir, true, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_write_result w;
    cs_err err = cs_engine_del(e, pos[0], id, expect, &w);
    if (err) {
        rc = cs_cli_fail_engine(err, e, "del");
    } else if (cs_cli_g.json_out) {
        rc = cs_cli_print_write_json(&w);
    } else {
        printf("archived %s %" PRIu64 " version %" PRIu64, pos[0], w.id, w.version);
        if (w.seq)
            printf(" at seq %" PRIu64 "\n", w.seq);
        else
            printf(" (shop-local: not in the log)\n");
    }
    cs_engine_close(e);
    return rc == CS_CLI_GO ? 0 : rc;
}
