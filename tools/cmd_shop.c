/*
 * cmd_shop.c: the head office's shop commands (R11): add (link a branch, R5a), list (the
 * Managing shops view, SPEC 5), switch (R6), password (R9: the hash stays out of the log),
 * unlink (R13) and whatsapp (R12). SHOP is always a shop id, as `shop list` prints it.
 *
 * Passwords come only from standard input (--password-stdin): a password on the command line
 * would be visible to every user of the machine in the process list. The copy read is wiped
 * once the engine has it.
 */
#include "tools/cli.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints {"shop":id, key:value} (JSON; value is transferred) or the human sentence. */
static int shop_done(uint64_t shop, const char *key, json_t *value, const char *sentence)
{
    int rc = CS_CLI_GO;
    if (cs_cli_g.json_out) {
        json_t *o = json_pack("{s:I,s:o}", "shop", (json_int_t)shop, key, value);
        rc = o ? cs_cli_print_json(o) : cs_cli_fail(CS_NO_MEMORY, NULL);
        json_decref(o);
    } else {
        json_decref(value);
        printf("shop %" PRIu64 ": %s\n", shop, sentence);
    }
    return rc;
}

int cs_cmd_shop_add(const cs_cli_cmd *cmd, int argc, char **argv)
{
    const char *name = NULL;
    bool pw_stdin = false;
    const cs_cli_opt opts[] = {{"name", true, &name, NULL},
                               {"password-stdin", false, NULL, &pw_stdin}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    char pw[CS_CLI_PASSWORD_BYTES_MAX + 1];
    int rc = cs_cli_parse(cmd, argc, argv, opts, 2, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO && !name)
        rc = cs_cli_usage(cmd, "shop add needs --name NAME");
    if (rc == CS_CLI_GO && !pw_stdin)
        rc = cs_cli_usage(cmd, "shop add needs --password-stdin (the branch's password on "
                               "standard input)");
    const char *dir = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    if (rc == CS_CLI_GO)
        rc = cs_cli_read_password(pw, sizeof(pw));
    if (rc != CS_CLI_GO)
        return rc;
    cs_engine *e = NULL;
    rc = cs_cli_open(dir, true, &e);
    uint64_t id = 0;
    if (rc == CS_CLI_GO) {
        cs_err err = cs_engine_shop_add(e, name, pw, &id);
        if (err) {
            rc = cs_cli_fail_engine(err, e, "shop add");
        } else if (cs_cli_g.json_out) {
            json_t *o =
                json_pack("{s:I,s:s,s:s}", "id", (json_int_t)id, "name", name, "role", "branch");
            rc = o ? cs_cli_print_json(o) : cs_cli_fail(CS_NO_MEMORY, NULL);
            json_decref(o);
        } else {
            printf("added branch \"%s\" with shop id %" PRIu64 "\n", name, id);
        }
    }
    explicit_bzero(pw, sizeof(pw));
    cs_engine_close(e);
    return rc;
}

int cs_cmd_shop_list(const cs_cli_cmd *cmd, int argc, char **argv)
{
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    cs_engine *e = NULL;
    int rc = cs_cli_parse(cmd, argc, argv, NULL, 0, 0, 0, pos, &npos);
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, NULL, &e);
    if (rc != CS_CLI_GO)
        return rc;
    json_t *shops = NULL;
    cs_err err = cs_engine_shop_list(e, &shops);
    if (err) {
        rc = cs_cli_fail_engine(err, e, "shop list");
    } else if (cs_cli_g.json_out) {
        size_t i;
        const json_t *s;
        json_array_foreach(shops, i, s)
        {
            if (rc == CS_CLI_GO)
                rc = cs_cli_print_json(s);
        }
    } else {
        rc = cs_cli_print_shops_table(shops);
    }
    json_decref(shops);
    cs_engine_close(e);
    return rc;
}

int cs_cmd_shop_switch(const cs_cli_cmd *cmd, int argc, char **argv)
{
    char *pos[CS_CLI_POS_MAX];
    uint64_t shop = 0;
    int rc = cs_cli_parse_shop_args(cmd, argc, argv, 2, pos, &shop);
    bool on = rc == CS_CLI_GO && strcmp(pos[1], "on") == 0;
    if (rc == CS_CLI_GO && !on && strcmp(pos[1], "off") != 0)
        rc = cs_cli_usage(cmd, "the switch is on or off, not '%s'", pos[1]);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, NULL, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_err err = cs_engine_shop_switch(e, shop, on);
    if (err)
        rc = cs_cli_fail_engine(err, e, "shop switch");
    else
        rc = shop_done(shop, "switch", json_boolean(on),
                       on ? "sync switch on (the next sync point brings it up to date)"
                          : "sync switch off (its copies stay as they are)");
    cs_engine_close(e);
    return rc;
}

int cs_cmd_shop_password(const cs_cli_cmd *cmd, int argc, char **argv)
{
    bool pw_stdin = false;
    const cs_cli_opt opts[] = {{"password-stdin", false, NULL, &pw_stdin}};
    char *pos[CS_CLI_POS_MAX];
    unsigned npos = 0;
    uint64_t shop = 0;
    const char *dir = NULL;
    char pw[CS_CLI_PASSWORD_BYTES_MAX + 1];
    int rc = cs_cli_parse(cmd, argc, argv, opts, 1, 1, 1, pos, &npos);
    if (rc == CS_CLI_GO)
        rc = cs_cli_parse_id(cmd, "SHOP", pos[0], &shop);
    if (rc == CS_CLI_GO && !pw_stdin)
        rc = cs_cli_usage(cmd, "shop password needs --password-stdin (the new password on "
                               "standard input)");
    if (rc == CS_CLI_GO)
        rc = cs_cli_data_dir(cmd, &dir);
    if (rc == CS_CLI_GO)
        rc = cs_cli_read_password(pw, sizeof(pw));
    if (rc != CS_CLI_GO)
        return rc;
    cs_engine *e = NULL;
    rc = cs_cli_open(dir, true, &e);
    if (rc == CS_CLI_GO) {
        cs_err err = cs_engine_shop_password(e, shop, pw);
        if (err)
            rc = cs_cli_fail_engine(err, e, "shop password");
        else
            rc = shop_done(shop, "password", json_string("changed"), "password changed");
    }
    explicit_bzero(pw, sizeof(pw));
    cs_engine_close(e);
    return rc;
}

int cs_cmd_shop_unlink(const cs_cli_cmd *cmd, int argc, char **argv)
{
    char *pos[CS_CLI_POS_MAX];
    uint64_t shop = 0;
    int rc = cs_cli_parse_shop_args(cmd, argc, argv, 1, pos, &shop);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, NULL, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_err err = cs_engine_shop_unlink(e, shop);
    if (err)
        rc = cs_cli_fail_engine(err, e, "shop unlink");
    else
        rc = shop_done(shop, "unlinked", json_true(),
                       "unlinked: it is now a single store and keeps its copies as local items");
    cs_engine_close(e);
    return rc;
}

int cs_cmd_shop_whatsapp(const cs_cli_cmd *cmd, int argc, char **argv)
{
    char *pos[CS_CLI_POS_MAX];
    uint64_t shop = 0;
    int rc = cs_cli_parse_shop_args(cmd, argc, argv, 2, pos, &shop);
    cs_engine *e = NULL;
    if (rc == CS_CLI_GO)
        rc = cs_cli_open_data(cmd, true, NULL, &e);
    if (rc != CS_CLI_GO)
        return rc;
    cs_err err = cs_engine_shop_whatsapp(e, shop, pos[1]);
    if (err) {
        rc = cs_cli_fail_engine(err, e, "shop whatsapp");
    } else {
        char sentence[256];
        snprintf(sentence, sizeof(sentence), "WhatsApp number set to %s", pos[1]);
        rc = shop_done(shop, "number", json_string(pos[1]), sentence);
    }
    cs_engine_close(e);
    return rc;
}
