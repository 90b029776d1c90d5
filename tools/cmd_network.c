/*
 * cmd_network.c: the commands that shape a store and its network: init (R10), network create,
 * types, mode and whatsapp (R7, R11, R12), whatsapp resolve (R12) and sync (R5b, R5c; its
 * --dry-run preview is in cmd_preview.c). The
 * shop commands are in cmd_shop.c. Role rules (a single store may only create a network, a
 * branch may run none of these) are the engine's: the program only reports its refusals.
 */
#include "tools/cli.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Types one --set may name: the whole schema, with room for duplicates to reach the engine. */
#define TYPES_SET_MAX 64u

/* init and network create: a required --name, no positionals, then the engine (which must
 * exist unless must_exist is false). */
static int parse_named(const cs_cli_cmd *cmd, int argc, char **argv, bool must_exist,
                       const char **name, cs_engine **e)
{
    const cs_cli_opt opts[] = {{"name", true, name, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && !*name)
        rc = cs_cli_usage(cmd, "%s needs --name NAME", cmd->subname ? "network create" : "init");
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, must_exist, NULL, e);
    return rc;
}

int cs_cmd_init(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *name = NULL;
    cs_engine *e = NULL;
    int rc = parse_named(cmd, argc, argv, false, &name, &e);
    if (rc != CS_CLI_GO)
        return rc;
    uint64_t id = 0;
    cs_err err = cs_engine_init(e, name, &id);
    if (err) {
        rc = cs_cli_fail_engine(err, e, "init");
    } else if (cs_cli_g.json_out) {
        json_t *o =
            json_pack("{s:I,s:s,s:s}", "id", (json_int_t)id, "name", name, "role", "single");
        rc = o ? cs_cli_print_json(o) : cs_cli_fail(CS_NO_MEMORY, NULL);
        json_decref(o);
    } else {
        printf("initialised single store \"%s\" with shop id %" PRIu64 "\n", name, id);
    }
    cs_engine_close(e);
    return rc;
}

int cs_cmd_network_create(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *name = NULL;
    cs_engine *e = NULL;
    int rc = parse_named(cmd, argc, argv, true, &name, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_shop_info self;
    cs_err err = cs_engine_network_create(e, name);
    if (!err)
        err = cs_engine_self(e, &self);
    if (err) {
        rc = cs_cli_fail_engine(err, e, "network create");
    } else if (cs_cli_g.json_out) {
        json_t *o = json_pack("{s:s,s:I,s:s}", "network", name, "shop", (json_int_t)self.id, "role",
                              cs_role_name(self.role));
        rc = o ? cs_cli_print_json(o) : cs_cli_fail(CS_NO_MEMORY, NULL);
        json_decref(o);
    } else {
        printf("created network \"%s\": this shop (id %" PRIu64 ") is its head office\n", name,
               self.id);
    }
    cs_engine_close(e);
    return rc;
}

/* Splits "a,b,c" in place into names[]; "all" = every synced type, "none" = the empty set. */
static int types_split(const cs_cli_cmd *cmd, char *list, const char **names, size_t *n)
{
    *n = 0;
    if (strcmp(list, "none") == 0)
        return CS_CLI_GO;
    if (strcmp(list, "all") == 0) {
        unsigned count = 0;
        const cs_type *types = cs_schema_types(&count);
        for (unsigned i = 0; i < count && *n < TYPES_SET_MAX; i++)
            if (types[i].cls == CS_CLASS_SYNCED)
                names[(*n)++] = types[i].name;
        return CS_CLI_GO;
    }
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == TYPES_SET_MAX)
            return cs_cli_usage(cmd, "--set names more than %u types", TYPES_SET_MAX);
        names[(*n)++] = tok;
    }
    if (*n == 0)
        return cs_cli_usage(cmd, "--set needs types (T,T,...), all or none");
    return CS_CLI_GO;
}

static int types_print(const json_t *types)
{
    if (cs_cli_g.json_out) {
        json_t *o = json_pack("{s:O}", "types", types);
        int rc = o ? cs_cli_print_json(o) : cs_cli_fail(CS_NO_MEMORY, NULL);
        json_decref(o);
        return rc;
    }
    printf("synced types (%zu):\n", json_array_size(types));
    size_t i;
    const json_t *t;
    json_array_foreach((json_t *)types, i, t) printf("  %s\n", json_string_value(t) ?: "?");
    return CS_CLI_GO;
}

int cs_cmd_network_types(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *set = NULL;
    const cs_cli_opt opts[] = {{"set", true, &set, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    const char *names[TYPES_SET_MAX];
    size_t n = 0;
    char *copy = NULL;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && set && !(copy = strdup(set)))
        rc = cs_cli_fail(CS_NO_MEMORY, NULL);
    if (rc == CS_CLI_GO && set)
        rc = types_split(cmd, copy, names, &n);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, NULL, &e);
    if (rc == CS_CLI_GO) {
        json_t *out = NULL;
        cs_err err = cs_engine_network_types(e, set ? names : NULL, n, &out);
        rc = err ? cs_cli_fail_engine(err, e, "network types") : types_print(out);
        json_decref(out);
    }
    cs_engine_close(e);
    free(copy);
    return rc;
}

int cs_cmd_network_mode(const cs_cli_cmd *cmd, int argc, char **argv)
{
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    int rc = cs_cli_parse(cmd, argc, argv, NULL, 0, 0, 1, pos, &npos);
    if (rc == CS_CLI_GO && npos == 1 && strcmp(pos[0], "on-trigger") != 0 &&
        strcmp(pos[0], "continuous") != 0)
        rc = cs_cli_usage(cmd, "the mode is on-trigger or continuous, not '%s'", pos[0]);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, NULL, &e);
    if (rc != CS_CLI_GO)
        return rc;
    const char *mode = NULL;
    cs_err err = cs_engine_network_mode(e, npos ? pos[0] : NULL, &mode);
    if (err) {
        rc = cs_cli_fail_engine(err, e, "network mode");
    } else if (cs_cli_g.json_out) {
        json_t *o = json_pack("{s:s}", "mode", mode ? mode : "");
        rc = o ? cs_cli_print_json(o) : cs_cli_fail(CS_NO_MEMORY, NULL);
        json_decref(o);
    } else {
        printf("sync mode: %s\n", mode ? mode : "?");
    }
    cs_engine_close(e);
    return rc;
}

static int whatsapp_print(const json_t *o)
{
    if (cs_cli_g.json_out)
        return cs_cli_print_json(o);
    const json_t *num = json_object_get(o, "number");
    printf("whatsapp mode: %s\n", json_string_value(json_object_get(o, "mode")) ?: "?");
    printf("head office number: %s\n", json_is_string(num) ? json_string_value(num) : "(none)");
    return CS_CLI_GO;
}

int cs_cmd_network_whatsapp(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *number = NULL;
    const cs_cli_opt opts[] = {{"number", true, &number, NULL}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 0, 1, pos, &npos);
    if (rc == CS_CLI_GO && npos == 1 && strcmp(pos[0], "shared") != 0 &&
        strcmp(pos[0], "individual") != 0)
        rc = cs_cli_usage(cmd, "the whatsapp mode is shared or individual, not '%s'", pos[0]);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, NULL, &e);
    if (rc != CS_CLI_GO)
        return rc;
    json_t *out = NULL;
    cs_err err = cs_engine_network_whatsapp(e, npos ? pos[0] : NULL, number, &out);
    rc = err ? cs_cli_fail_engine(err, e, "network whatsapp") : whatsapp_print(out);
    json_decref(out);
    cs_engine_close(e);
    return rc;
}

int cs_cmd_whatsapp_resolve(const cs_cli_cmd *cmd, int argc, char **argv)
{
    char *pos[CS_CLI_POS_MAX];
    uint64_t shop = 0;
    int rc = cs_cli_parse_shop_args(cmd, argc, argv, 1, pos, &shop);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, NULL, &e);
    if (rc != CS_CLI_GO)
        return rc;
    char *number = NULL;
    cs_err err = cs_engine_whatsapp_resolve(e, shop, &number);
    if (err) {
        rc = cs_cli_fail_engine(err, e, "whatsapp resolve");
    } else if (cs_cli_g.json_out) {
        json_t *o = json_pack("{s:I,s:s}", "shop", (json_int_t)shop, "number", number);
        rc = o ? cs_cli_print_json(o) : cs_cli_fail(CS_NO_MEMORY, NULL);
        json_decref(o);
    } else {
        printf("%s\n", number);
    }
    free(number);
    cs_engine_close(e);
    return rc;
}

int cs_cmd_sync(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *shop_text = NULL;
    bool dry_run = false;
    const cs_cli_opt opts[] = {{"shop", true, &shop_text, NULL},
                               {"dry-run", false, NULL, &dry_run}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t shop = 0, seq = 0;
    int rc = cs_cli_parse(cmd, argc, argv, opts, 2, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && shop_text)
        rc = cs_cli_parse_id(cmd, "--shop", shop_text, &shop);
    if (rc == CS_CLI_GO && dry_run) { /* issue 14: the preview writes nothing (cmd_preview.c) */
        const char *dir = NULL;
        rc = cs_cli_data_dir(cmd, &dir);
        return rc == CS_CLI_GO ? cs_cmd_sync_preview(dir, shop) : rc;
    }
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, NULL, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_err err = cs_engine_sync(e, shop, &seq);
    if (err) {
        rc = cs_cli_fail_engine(err, e, "sync");
    } else if (cs_cli_g.json_out) {
        json_t *o = shop ? json_pack("{s:I,s:I}", "shop", (json_int_t)shop, "seq", (json_int_t)seq)
                         : json_pack("{s:n,s:I}", "shop", "seq", (json_int_t)seq);
        rc = o ? cs_cli_print_json(o) : cs_cli_fail(CS_NO_MEMORY, NULL);
        json_decref(o);
    } else if (shop) {
        printf("sync point for shop %" PRIu64 " at seq %" PRIu64 "\n", shop, seq);
    } else {
        printf("sync point for every branch at seq %" PRIu64 "\n", seq);
    }
    cs_engine_close(e);
    return rc;
}
