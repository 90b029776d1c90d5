/*
 * cli.c: the shared machinery of the `chainsync` program: the common options and getopt_long
 * parsing every command goes through, strict number parsing, the data directory and opening
 * the engine, SPEC 6 error lines, and reading JSON and passwords from standard input.
 *
 * Why arguments are all checked before the engine is opened: a usage error must not create a
 * data directory or touch one, and bad input must change nothing (SPEC 6). Why the engine is
 * opened with must_exist for every command but init: LMDB creates its files on open, so a
 * mistyped --data would otherwise leave an empty store behind.
 */
#include "tools/cli.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

cs_cli_globals cs_cli_g;

/* getopt_long values: common options first, then a command's extras from OPT_EXTRA up. */
enum { OPT_DATA = 0x100, OPT_JSON_OUT, OPT_ACTOR, OPT_HELP, OPT_EXTRA = 0x200 };

#define COMMON_OPTIONS                                                                             \
    {"data", required_argument, NULL, OPT_DATA}, {"json-out", no_argument, NULL, OPT_JSON_OUT},    \
        {"actor", required_argument, NULL, OPT_ACTOR},                                             \
    {                                                                                              \
        "help", no_argument, NULL, OPT_HELP                                                        \
    }
#define COMMON_COUNT 4u

static const char *const default_sentences[CS_ERR_COUNT] = {
    [CS_OK] = "done",
    [CS_INVALID_INPUT] = "the input is not valid",
    [CS_UNKNOWN_TYPE] = "no such item type (see `chainsync put --help`)",
    [CS_NOT_FOUND] = "no such item or shop",
    [CS_DANGLING_REFERENCE] = "a reference points at an item that does not exist",
    [CS_READ_ONLY_COPY] = "this item is a copy of the head office's and is read-only here",
    [CS_FORBIDDEN] = "this shop's role does not allow that",
    [CS_VERSION_CONFLICT] = "the item is at another version than the one expected",
    [CS_NOT_IN_NETWORK] = "this store is not in a network (see `chainsync network create`)",
    [CS_AUTH_FAILED] = "authentication failed",
    [CS_PROTOCOL_MISMATCH] = "the other side speaks another protocol version",
    [CS_STORAGE_FULL] = "the data directory is full",
    [CS_CORRUPT] = "the data directory is damaged (a checksum or record does not verify)",
    [CS_NO_MEMORY] = "out of memory",
    [CS_IO] = "an input/output error occurred",
    [CS_NETWORK] = "a network error occurred",
    [CS_USAGE] = "bad command line",
};

static void print_cmd_name(FILE *f, const cs_cli_cmd *cmd)
{
    if (cmd->subname)
        fprintf(f, "%s %s", cmd->name, cmd->subname);
    else
        fprintf(f, "%s", cmd->name);
}

int cs_cli_usage(const cs_cli_cmd *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("error: usage: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (cmd) {
        fprintf(stderr, "usage: chainsync %s\nsee: chainsync ", cmd->usage);
        print_cmd_name(stderr, cmd);
        fputs(" --help\n", stderr);
    } else {
        fputs("see: chainsync --help\n", stderr);
    }
    return 1;
}

static int fail_sentence(cs_err err, const char *sentence)
{
    cs_assert(err != CS_OK);
    const char *s = sentence;
    if (!s || !*s)
        s = (unsigned)err < CS_ERR_COUNT ? default_sentences[err] : NULL;
    if (!s)
        s = "failed";
    fprintf(stderr, "error: %s: %s\n", cs_err_name(err), s);
    if (err == CS_USAGE)
        fputs("see: chainsync --help\n", stderr);
    return cs_err_exit_code(err);
}

int cs_cli_fail(cs_err err, const char *fmt, ...)
{
    char buf[1024] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        cs_errmsg_vformat(buf, sizeof(buf), err, fmt, ap);
        va_end(ap);
    }
    return fail_sentence(err, buf);
}

int cs_cli_fail_engine(cs_err err, const cs_engine *e, const char *what)
{
    const char *msg = e ? cs_engine_errmsg(e) : NULL;
    if (msg && *msg)
        return fail_sentence(err, msg);
    const char *def = (unsigned)err < CS_ERR_COUNT ? default_sentences[err] : "failed";
    if (what)
        return cs_cli_fail(err, "%s: %s", what, def);
    return fail_sentence(err, NULL);
}

static void print_help(const cs_cli_cmd *cmd)
{
    printf("usage: chainsync %s\n\n%s\n", cmd->usage, cmd->help);
    printf("Common options (every command):\n"
           "  --data DIR     the data directory (default: $CHAINSYNC_DATA)\n"
           "  --json-out     print JSON (one object per line) instead of a table\n"
           "  --actor NAME   who is acting, recorded in every event (default: cli)\n"
           "  --help         this text\n"
           "Exit codes: 0 ok, 1 usage error, 2 refused (the code is printed), 3 storage error,\n"
           "4 network error. Errors go to standard error as `error: <code>: <sentence>`.\n");
    if (cmd->help_more)
        cmd->help_more();
}

/* Applies a common option; false when c is not one. */
static bool common_opt(int c, const char *arg)
{
    switch (c) {
    case OPT_DATA:
        cs_cli_g.data = arg;
        return true;
    case OPT_JSON_OUT:
        cs_cli_g.json_out = true;
        return true;
    case OPT_ACTOR:
        cs_cli_g.actor = arg;
        return true;
    default:
        return false;
    }
}

/* The usage error for getopt's '?' or ':' result. */
static int bad_option(const cs_cli_cmd *cmd, int c, char **argv)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (c == ':')
        return cs_cli_usage(cmd, "option %s needs a value", arg);
    if (optopt)
        return cs_cli_usage(cmd, "unknown option -%c", optopt);
    return cs_cli_usage(cmd, "unknown option %s", arg);
}

static int check_globals(const cs_cli_cmd *cmd)
{
    if (cs_cli_g.actor) {
        size_t n = strlen(cs_cli_g.actor);
        if (n == 0 || n > CS_EVENT_STR_BYTES_MAX)
            return cs_cli_usage(cmd, "--actor needs a name of 1 to %u bytes",
                                CS_EVENT_STR_BYTES_MAX);
    }
    if (cs_cli_g.data && !*cs_cli_g.data)
        return cs_cli_usage(cmd, "--data needs a directory");
    return CS_CLI_GO;
}

int cs_cli_parse(const cs_cli_cmd *cmd, int argc, char **argv, const cs_cli_opt *opts,
                 unsigned nopts, unsigned pos_min, unsigned pos_max, char **pos, unsigned *npos)
{
    cs_assert(nopts <= CS_CLI_OPTS_MAX);
    cs_assert(pos_max <= CS_CLI_POS_MAX);
    cs_assert(pos_min <= pos_max);
    struct option lo[CS_CLI_OPTS_MAX + COMMON_COUNT + 1] = {COMMON_OPTIONS};
    for (unsigned i = 0; i < nopts; i++) {
        cs_assert(opts[i].has_arg ? opts[i].value != NULL : opts[i].flag != NULL);
        lo[COMMON_COUNT + i] =
            (struct option){opts[i].name, opts[i].has_arg ? required_argument : no_argument, NULL,
                            OPT_EXTRA + (int)i};
    }
    optind = 0; /* glibc: a full reset, so each parse starts fresh */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        if (c == 'h' || c == OPT_HELP) {
            print_help(cmd);
            return 0;
        }
        if (c == '?' || c == ':')
            return bad_option(cmd, c, argv);
        if (common_opt(c, optarg))
            continue;
        cs_assert(c >= OPT_EXTRA && c < OPT_EXTRA + (int)nopts);
        const cs_cli_opt *o = &opts[c - OPT_EXTRA];
        if (o->has_arg)
            *o->value = optarg;
        else
            *o->flag = true;
    }
    unsigned n = (unsigned)(argc - optind);
    if (n < pos_min)
        return cs_cli_usage(cmd, "missing argument");
    if (n > pos_max)
        return cs_cli_usage(cmd, "unexpected argument '%s'", argv[optind + pos_max]);
    for (unsigned i = 0; i < n; i++)
        pos[i] = argv[optind + (int)i];
    *npos = n;
    return check_globals(cmd);
}

int cs_cli_parse_globals(int argc, char **argv, int *cmd_index, bool *help_out)
{
    static const struct option lo[] = {COMMON_OPTIONS, {NULL, 0, NULL, 0}};
    optind = 0;
    opterr = 0;
    int c;
    *help_out = false;
    /* "+": stop at the command word; what follows is the command's to parse. */
    while ((c = getopt_long(argc, argv, "+:h", lo, NULL)) != -1) {
        if (c == 'h' || c == OPT_HELP) {
            *help_out = true;
            continue;
        }
        if (c == '?' || c == ':')
            return bad_option(NULL, c, argv);
        if (!common_opt(c, optarg))
            return cs_cli_usage(NULL, "unexpected option");
    }
    *cmd_index = optind;
    return check_globals(NULL);
}

int cs_cli_data_dir(const cs_cli_cmd *cmd, const char **dir_out)
{
    const char *d = cs_cli_g.data;
    if (!d)
        d = getenv("CHAINSYNC_DATA");
    if (!d || !*d)
        return cs_cli_usage(cmd, "no data directory: give --data DIR or set CHAINSYNC_DATA");
    *dir_out = d;
    return CS_CLI_GO;
}

/* True when dir looks like a chainsync store (LMDB's data file is there). */
static bool store_exists(const char *dir)
{
    char path[PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s/data.mdb", dir);
    if (n < 0 || (size_t)n >= sizeof(path))
        return false;
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int cli_open(const char *dir, bool must_exist, const cs_log_options *opts, cs_engine **out);

int cs_cli_open(const char *dir, bool must_exist, cs_engine **out)
{
    return cli_open(dir, must_exist, NULL, out);
}

int cs_cli_open_data(const cs_cli_cmd *cmd, bool must_exist, const char **dir_out, cs_engine **out)
{
    const char *dir = NULL;
    int rc = cs_cli_data_dir(cmd, &dir);
    if (rc != CS_CLI_GO)
        return rc;
    if (dir_out)
        *dir_out = dir;
    return cs_cli_open(dir, must_exist, out);
}

int cs_cli_open_read_only(const char *dir, cs_engine **out)
{
    const cs_log_options opts = {.flags = CS_LOG_READ_ONLY};
    return cli_open(dir, true, &opts, out);
}

static int cli_open(const char *dir, bool must_exist, const cs_log_options *opts, cs_engine **out)
{
    if (must_exist && !store_exists(dir))
        return cs_cli_fail(
            CS_NOT_FOUND,
            "%s holds no chainsync store: run `chainsync init --data %s --name NAME` "
            "first",
            dir, dir);
    cs_engine *e = NULL;
    char why[256];
    cs_err err = cs_engine_open_why(dir, opts, &e, why, sizeof(why));
    /* Read-only, a database that is not there (data.mdb exists: checked above) means the
     * store lost it: damage, not a directory that was never initialised. */
    if (err == CS_NOT_FOUND && opts && (opts->flags & CS_LOG_READ_ONLY))
        err = CS_CORRUPT;
    if (err != CS_OK)
        return cs_cli_fail(err, "cannot open the data directory %s%s%s", dir, why[0] ? ": " : "",
                           why);
    cs_cli_fault_watch(e);
    if (cs_cli_g.actor)
        cs_engine_set_actor(e, cs_cli_g.actor);
    if (must_exist) {
        cs_shop_info self;
        err = cs_engine_self(e, &self);
        if (err == CS_NOT_FOUND) {
            cs_engine_close(e);
            return cs_cli_fail(CS_NOT_FOUND,
                               "%s is not initialised: run `chainsync init --data %s --name NAME` "
                               "first",
                               dir, dir);
        }
        if (err != CS_OK) {
            int rc = cs_cli_fail_engine(err, e, "reading this shop's identity");
            cs_engine_close(e);
            return rc;
        }
    }
    *out = e;
    return CS_CLI_GO;
}

int cs_cli_parse_shop_args(const cs_cli_cmd *cmd, int argc, char **argv, unsigned npos, char **pos,
                           uint64_t *shop)
{
    unsigned got = 0;
    int rc = cs_cli_parse(cmd, argc, argv, NULL, 0, npos, npos, pos, &got);
    if (rc == CS_CLI_GO)
        rc = cs_cli_parse_id(cmd, "SHOP", pos[0], shop);
    return rc;
}

bool cs_cli_parse_u64(const char *s, uint64_t *out)
{
    /* strtoull alone accepts " 12", "+12", "-1" (as 2^64-1) and "12abc": refuse them all. */
    if (!s || !isdigit((unsigned char)s[0]))
        return false;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE || !end || *end != '\0')
        return false;
    *out = (uint64_t)v;
    return true;
}

int cs_cli_parse_id(const cs_cli_cmd *cmd, const char *what, const char *s, uint64_t *out)
{
    uint64_t v;
    if (!cs_cli_parse_u64(s, &v) || v == 0)
        return cs_cli_usage(cmd, "%s must be a positive decimal integer, not '%s'", what, s);
    *out = v;
    return CS_CLI_GO;
}

int cs_cli_read_password(char *buf, size_t buf_len)
{
    cs_assert(buf_len > CS_CLI_PASSWORD_BYTES_MAX);
    char line[CS_CLI_PASSWORD_BYTES_MAX + 3]; /* room for CR, LF and the NUL */
    if (!fgets(line, sizeof(line), stdin)) {
        if (ferror(stdin))
            return cs_cli_fail(CS_IO, "cannot read the password from standard input");
        return cs_cli_fail(CS_INVALID_INPUT, "no password on standard input (give one line)");
    }
    size_t n = strlen(line);
    bool whole = n > 0 && line[n - 1] == '\n';
    if (!whole && !feof(stdin)) {
        explicit_bzero(line, sizeof(line));
        return cs_cli_fail(CS_INVALID_INPUT, "the password is longer than %u bytes",
                           CS_CLI_PASSWORD_BYTES_MAX);
    }
    if (n > 0 && line[n - 1] == '\n')
        line[--n] = '\0';
    if (n > 0 && line[n - 1] == '\r')
        line[--n] = '\0';
    int rc = CS_CLI_GO;
    if (n == 0)
        rc = cs_cli_fail(CS_INVALID_INPUT, "the password read from standard input is empty");
    else if (n > CS_CLI_PASSWORD_BYTES_MAX)
        rc = cs_cli_fail(CS_INVALID_INPUT, "the password is longer than %u bytes",
                         CS_CLI_PASSWORD_BYTES_MAX);
    else
        memcpy(buf, line, n + 1);
    explicit_bzero(line, sizeof(line));
    return rc;
}

/* All of stdin, bounded. *out owned by the caller (free()). */
static int read_stdin_all(char **out, size_t *len_out)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return cs_cli_fail(CS_NO_MEMORY, NULL);
    for (;;) {
        if (len == cap) {
            if (cap >= CS_CLI_INPUT_BYTES_MAX + 1)
                break;
            size_t ncap =
                cap * 2 > CS_CLI_INPUT_BYTES_MAX + 1 ? CS_CLI_INPUT_BYTES_MAX + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                return cs_cli_fail(CS_NO_MEMORY, NULL);
            }
            buf = nb, cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len, stdin);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(stdin)) {
        free(buf);
        return cs_cli_fail(CS_IO, "cannot read standard input");
    }
    if (len > CS_CLI_INPUT_BYTES_MAX) {
        free(buf);
        return cs_cli_fail(CS_INVALID_INPUT, "the JSON input is longer than %u bytes",
                           CS_CLI_INPUT_BYTES_MAX);
    }
    *out = buf;
    *len_out = len;
    return CS_CLI_GO;
}

static bool all_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i]))
            return false;
    return true;
}

int cs_cli_read_json_object(const char *text, json_t **out)
{
    char *buf = NULL;
    size_t len = 0;
    if (!text) {
        if (isatty(STDIN_FILENO))
            fputs("reading the item's JSON fields from standard input (end with Ctrl-D)\n", stderr);
        int rc = read_stdin_all(&buf, &len);
        if (rc != CS_CLI_GO)
            return rc;
    } else {
        len = strlen(text);
    }
    const char *src = text ? text : buf;
    if (all_space(src, len)) {
        free(buf);
        return cs_cli_fail(CS_INVALID_INPUT, "no JSON fields given: pass an object like "
                                             "{\"name\":\"Bath\"} on standard input or with "
                                             "--json");
    }
    json_error_t jerr;
    json_t *v = json_loadb(src, len, JSON_REJECT_DUPLICATES, &jerr);
    free(buf);
    if (!v)
        return cs_cli_fail(CS_INVALID_INPUT, "malformed JSON at line %d column %d: %s", jerr.line,
                           jerr.column, jerr.text);
    if (!json_is_object(v)) {
        json_decref(v);
        return cs_cli_fail(CS_INVALID_INPUT,
                           "the fields must be one JSON object, like {\"name\":\"Bath\"}");
    }
    *out = v;
    return CS_CLI_GO;
}

cs_cli_created cs_cli_created_before(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    cs_cli_created c = {.dir = access(dir, F_OK) != 0, .store = access(path, F_OK) != 0};
    return c;
}

void cs_cli_created_undo(const char *dir, cs_cli_created c)
{
    static const char *const files[] = {"data.mdb", "lock.mdb", "node.lock", "serve.lock"};
    char path[4096];
    if (!c.store)
        return;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    if (c.dir)
        rmdir(dir);
}
