/*
 * cli.h: what the files of the `chainsync` program share: the command table's entry type, the
 * common options (--data, --json-out, --actor, --help) and their parsing, opening the engine,
 * reporting errors in the SPEC 6 shape, reading JSON and passwords from standard input, and the
 * human table / JSON line output.
 *
 * Conventions every command keeps (docs/cli.md):
 *  1. A handler returns the process exit code: 0 ok, 1 usage, 2 refused, 3 storage, 4 network
 *     (cs_err_exit_code).
 *  2. Every failure prints exactly one line to stderr, `error: <code>: <sentence>`, and a usage
 *     error also prints a hint pointing at --help.
 *  3. Arguments and input are checked before the engine is opened, so bad input changes nothing
 *     (SPEC 6) and a usage error never creates a data directory.
 *  4. Standard output carries only the result: a human table by default, JSON with --json-out.
 *
 * Global mutable state: only cs_cli_g (the common options), set while parsing argv.
 */
#ifndef CS_CLI_H
#define CS_CLI_H

#include "engine/engine.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* `chainsync status`: a branch is more than --max-lag events behind (docs/cli.md). Beyond SPEC
 * 6's 0-4 so that a monitoring check tells "lagging" from "status itself failed". */
#define CS_CLI_EXIT_LAGGING 5
/* `chainsync status`: a branch holds at an event it cannot apply (docs/design.md, "A branch
 * that never crash-loops"): waiting does not fix it, so it outranks LAGGING. */
#define CS_CLI_EXIT_HELD 6
/* A handler's "keep going" value from cs_cli_parse: every exit code is >= 0. */
#define CS_CLI_GO (-1)
/* Extra options one command may declare (put has the most: --json, --expect-version). */
#define CS_CLI_OPTS_MAX 12u
/* Positional arguments one command may take (put TYPE ID). */
#define CS_CLI_POS_MAX 4u
/* What --password-stdin accepts: a passphrase, not a file. */
#define CS_CLI_PASSWORD_BYTES_MAX 1024u
/* JSON read for one item: the largest event plus room for whitespace and escapes. */
#define CS_CLI_INPUT_BYTES_MAX (4u * CS_EVENT_BYTES_MAX)

typedef struct cs_cli_cmd cs_cli_cmd;
/* argv[0] is the command's last word ("put", "create"); returns the exit code. */
typedef int (*cs_cli_handler)(const cs_cli_cmd *cmd, int argc, char **argv);

struct cs_cli_cmd {
    const char *name;    /* "put", "network" */
    const char *subname; /* "create", or NULL for a one-word command */
    cs_cli_handler handler;
    const char *summary;     /* one line for `chainsync --help` */
    const char *usage;       /* the synopsis after "chainsync " */
    const char *help;        /* the body of `chainsync CMD --help`: what, options, example */
    void (*help_more)(void); /* prints generated help after `help` (put: the schema); or NULL */
};

/* The common options, shared by every command. */
typedef struct cs_cli_globals {
    const char *data;  /* --data DIR, else $CHAINSYNC_DATA */
    const char *actor; /* --actor NAME, recorded in events; NULL = engine default ("cli") */
    bool json_out;     /* --json-out */
} cs_cli_globals;

extern cs_cli_globals cs_cli_g;

/* One extra option of a command: when given, *value gets its argument (has_arg) or *flag is
 * set. The last occurrence wins. */
typedef struct cs_cli_opt {
    const char *name;
    bool has_arg;
    const char **value;
    bool *flag;
} cs_cli_opt;

/* ---- cli.c: parsing, engine, errors, input ---------------------------------------------- */

/* Parses argv (argv[0] = the command word) with the common options plus opts[0..nopts).
 * Positionals go to pos[0..*npos) (pos_min..pos_max of them). Prints help and returns 0 on
 * --help; prints a usage error and returns 1 on a bad option or count; else CS_CLI_GO. */
int cs_cli_parse(const cs_cli_cmd *cmd, int argc, char **argv, const cs_cli_opt *opts,
                 unsigned nopts, unsigned pos_min, unsigned pos_max, char **pos, unsigned *npos);

/* Parses the common options that come before the command word (`chainsync --data D put ...`).
 * Sets *cmd_index to the index of the command word. Same returns as cs_cli_parse; *help_out
 * is set when --help was given (the caller prints the overview). */
int cs_cli_parse_globals(int argc, char **argv, int *cmd_index, bool *help_out);

/* Prints `error: usage: <sentence>` and the --help hint for cmd (NULL = the program). Returns 1.
 */
int cs_cli_usage(const cs_cli_cmd *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints `error: <code>: <sentence>`; the sentence is fmt, or a default for the code when fmt
 * is NULL or formats to nothing. Returns cs_err_exit_code(err). */
int cs_cli_fail(cs_err err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, taking the sentence from the engine (cs_engine_errmsg), `what` when that is empty. */
int cs_cli_fail_engine(cs_err err, const cs_engine *e, const char *what);

/* The data directory (--data, else $CHAINSYNC_DATA) or a usage error (returns 1). */
int cs_cli_data_dir(const cs_cli_cmd *cmd, const char **dir_out);
/* Opens the engine on dir and sets the actor. When must_exist, refuses (not_found) a directory
 * that holds no chainsync store or an uninitialised one, without creating anything. Returns
 * CS_CLI_GO with *out set (close with cs_engine_close), or the exit code after printing. */
int cs_cli_open(const char *dir, bool must_exist, cs_engine **out);
/* The data directory (cs_cli_data_dir), then the engine on it (cs_cli_open): how most commands
 * begin. *dir_out (NULL = not wanted) gets the directory. Same returns as cs_cli_open. */
int cs_cli_open_data(const cs_cli_cmd *cmd, bool must_exist, const char **dir_out, cs_engine **out);
/* As cs_cli_open with must_exist, but read-only (CS_LOG_READ_ONLY): nothing in dir is created
 * or written, which `audit verify` needs of the store it checks. */
int cs_cli_open_read_only(const char *dir, cs_engine **out);
/* main.c: LMDB's assertion on a damaged page (it then aborts) becomes part of the one
 * `error: corrupt:` line main's fault handler prints, exit 3. cs_cli_open calls it; a command
 * opening an engine another way calls it too. Accepts NULL. */
void cs_cli_fault_watch(cs_engine *e);

/* For commands whose arguments are exactly `npos` positionals, the first a SHOP id (shop
 * switch, unlink, whatsapp; whatsapp resolve): parses them into pos[] and *shop. Same returns
 * as cs_cli_parse. */
int cs_cli_parse_shop_args(const cs_cli_cmd *cmd, int argc, char **argv, unsigned npos, char **pos,
                           uint64_t *shop);

/* What a command that may create a data directory found there before it ran (`branch import`,
 * `branch join`), so that a refused command removes what it made: bad input changes nothing
 * (SPEC 6). */
typedef struct cs_cli_created {
    bool dir;   /* the directory itself did not exist */
    bool store; /* it held no data.mdb */
} cs_cli_created;
cs_cli_created cs_cli_created_before(const char *dir);
/* Removes the store files (and the directory, when it was made) that c says were not there. */
void cs_cli_created_undo(const char *dir, cs_cli_created c);

/* Strict decimal u64: digits only, whole string, no overflow. False on anything else. */
bool cs_cli_parse_u64(const char *s, uint64_t *out);
/* The same for an option or argument named `what`, >= 1; prints the usage error (returns 1). */
int cs_cli_parse_id(const cs_cli_cmd *cmd, const char *what, const char *s, uint64_t *out);

/* Reads one line from stdin into buf (newline stripped). Refuses an empty or over-long line
 * (invalid_input). Returns CS_CLI_GO or the exit code after printing. */
int cs_cli_read_password(char *buf, size_t buf_len);
/* Parses text (from --json) or, when text is NULL, all of stdin as one JSON object. *out is a
 * new reference. Malformed input -> invalid_input naming line and column. */
int cs_cli_read_json_object(const char *text, json_t **out);

/* ---- cli_out.c: output ---------------------------------------------------------------- */

/* One JSON value on one line of stdout (compact). Returns CS_CLI_GO or exit code. */
int cs_cli_print_json(const json_t *v);
/* The same for a new value (transferred: freed here), as json_pack returns it; NULL (out of
 * memory) is refused with no_memory. Strings go through jansson, so a quote in a path stays
 * inside its JSON string. */
int cs_cli_print_json_new(json_t *v);
/* {"id","version","seq"} of a write. */
int cs_cli_print_write_json(const cs_write_result *w);
/* An item as `field: value` lines, schema fields in schema order (SPEC 7 get). */
int cs_cli_print_item_human(const json_t *item);
/* Items as a table: id, version, name (or key), archived, origin (SPEC 7 list). */
int cs_cli_print_items_table(const char *type, const json_t *items);
/* shop list as a table. */
int cs_cli_print_shops_table(const json_t *shops);
/* A value as text for a table cell: strings raw, the rest as compact JSON. Owned by the caller
 * (free()); NULL when out of memory. */
char *cs_cli_value_text(const json_t *v);

/* A table of text cells; widths computed at print time. */
typedef struct cs_cli_table cs_cli_table;
cs_cli_table *cs_cli_table_new(unsigned ncols, const char *const *headers);
/* Copies the cells (ncols of them). False when out of memory. */
bool cs_cli_table_add(cs_cli_table *t, const char *const *cells);
void cs_cli_table_print(const cs_cli_table *t);
void cs_cli_table_free(cs_cli_table *t); /* accepts NULL */

/* ---- progress.c: the progress line on a terminal ---------------------------------------- */

typedef struct cs_cli_progress {
    const char *verb; /* "applied", "exported" */
    const char *unit; /* "events", "" */
    bool bytes;       /* done and total are bytes (shown in MiB) */
    bool drawn;
    uint64_t t0_ms, last_ms;
} cs_cli_progress;

/* The callback to hand a layer: draws on standard error when it is a terminal and --json-out is
 * not given, else does nothing (fn NULL). p lives as long as the work. */
cs_progress cs_cli_progress_start(cs_cli_progress *p, const char *verb, const char *unit,
                                  bool bytes);
/* Ends the line when one was drawn (for layers that do not report a last call). */
void cs_cli_progress_end(cs_cli_progress *p);

/* ---- handlers (cmd_*.c) and their help texts -------------------------------------------- */

int cs_cmd_init(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_network_create(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_network_types(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_network_mode(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_network_whatsapp(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_shop_add(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_shop_list(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_shop_switch(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_shop_password(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_shop_unlink(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_shop_whatsapp(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_shop_nats_credentials(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_whatsapp_resolve(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_sync(const cs_cli_cmd *cmd, int argc, char **argv);
/* cmd_preview.c: `sync --dry-run` on data directory dir, for every branch or shop (!= 0). */
int cs_cmd_sync_preview(const char *dir, uint64_t shop);
int cs_cmd_put(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_get(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_list(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_del(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_log(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_log_export(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_log_compact(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_branch_import(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_audit_history(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_audit_as_of(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_audit_verify(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_audit_checkpoint(const cs_cli_cmd *cmd, int argc, char **argv);

int cs_cmd_status(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_serve(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_demo(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_branch_join(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_branch_follow(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_branch_pull(const cs_cli_cmd *cmd, int argc, char **argv);
int cs_cmd_branch_retry(const cs_cli_cmd *cmd, int argc, char **argv);
/* put --wait on a branch: delivers the outbox (a pull, unless a node runs on dir) and waits up
 * to timeout_ms for the head office's answer to write w. Returns CS_CLI_GO when it was accepted,
 * or the exit code after printing the refusal or the time-out. */
int cs_cli_put_wait(const char *dir, const cs_write_result *w, unsigned timeout_ms);

/* Prints the schema (types, classes, fields) for `put --help`. */
void cs_cli_print_schema_help(void);

#endif
