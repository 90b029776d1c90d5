/*
 * main.c: the `chainsync` program's entry point: the command table and the dispatch through it
 * (git-style: `chainsync [common options] COMMAND [SUBCOMMAND] [options] [args]`), and the
 * overview that `chainsync --help` prints.
 *
 * The table is the one place a command exists: its words, its handler, its one-line summary, its
 * synopsis and its --help text. Dispatch tries the two-word form first ("log export") and then
 * the one-word form ("log"), so a group can grow subcommands beside a one-word command. Words
 * not in the table are usage errors.
 * The full reference is docs/cli.md.
 *
 * Also here: the fault handlers that turn a crash of LMDB on a damaged store (SIGBUS, SIGSEGV,
 * its assertions' abort) into `error: corrupt: ...` and exit 3 (docs/security.md, "What LMDB
 * cannot detect"). Their state (an alternate stack, LMDB's last assertion text) is the only
 * global mutable state of this file.
 */
#include "tools/cli.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const cs_cli_cmd commands[] = {
    {"init", NULL, cs_cmd_init, "make the data directory a single store; prints its shop id",
     "init --data DIR --name NAME",
     "Makes DIR (created if needed) a single store named NAME: no network, every type local\n"
     "(R10). Prints the new shop's id. A store is initialised once.\n\n"
     "Options:\n  --name NAME    the shop's name (1 to 120 bytes)\n\n"
     "Example:\n  chainsync init --data /tmp/hq --name \"Pets HQ\"\n",
     NULL},
    {"network", "create", cs_cmd_network_create,
     "this single store becomes the head office of a new network", "network create --name NAME",
     "Turns this single store into the head office (the master account) of a network named\n"
     "NAME. Its items stay; from now on its catalog types are synced to the branches it adds\n"
     "with `chainsync shop add`.\n\n"
     "Options:\n  --name NAME    the network's name\n\n"
     "Example:\n  chainsync network create --data /tmp/hq --name \"Pets Chain\"\n",
     NULL},
    {"network", "types", cs_cmd_network_types, "show or set which types are synced to branches",
     "network types [--set T,T,...|all|none]",
     "Without --set, prints the synced types. With --set, makes exactly those types synced\n"
     "(R7): a type taken out stops changing on branches (its copies stay); a type put back is\n"
     "brought up to date at the next sync point. `all` means every synced catalog type (the\n"
     "default), `none` the empty set. Head office only.\n\n"
     "Options:\n  --set LIST     comma-separated type names, or all, or none\n\n"
     "Example:\n  chainsync network types --set service_category,service,combo\n",
     NULL},
    {"network", "mode", cs_cmd_network_mode, "show or set when branches sync",
     "network mode [on-trigger|continuous]",
     "Without an argument, prints the sync mode. on-trigger (the default): branches change only\n"
     "at sync points made by `chainsync sync`. continuous: every catalog change is a sync\n"
     "point (R5). Head office only.\n\n"
     "Example:\n  chainsync network mode continuous\n",
     NULL},
    {"network", "whatsapp", cs_cmd_network_whatsapp,
     "show or set the WhatsApp mode and the head office's number",
     "network whatsapp [shared|individual] [--number N]",
     "shared: every shop answers with the head office's number. individual: each shop with its\n"
     "own, set by `chainsync shop whatsapp` (R12). Prints the mode and the head office's\n"
     "number. Head office only.\n\n"
     "Options:\n  --number N     the head office's WhatsApp number\n\n"
     "Example:\n  chainsync network whatsapp shared --number +5511999990000\n",
     NULL},
    {"shop", "add", cs_cmd_shop_add, "add and link a branch; prints its shop id",
     "shop add --name NAME --password-stdin",
     "Adds a branch named NAME to the network and links it: it gets the whole catalog at once\n"
     "(R5a). Its password is read as one line from standard input and stored only as keys\n"
     "derived from it with argon2id, never in the log (R9). Prints the branch's shop id, which the "
     "branch uses\n"
     "to join. Head office only.\n\n"
     "Options:\n  --name NAME        the branch's name\n"
     "  --password-stdin   read the branch's password from standard input (required)\n\n"
     "Example:\n  echo 's3cret-pass' | chainsync shop add --name \"Downtown\" --password-stdin\n",
     NULL},
    {"shop", "list", cs_cmd_shop_list,
     "list the shops: id, name, role, switch, cursor, lag, last seen", "shop list",
     "Lists every shop of the network: the head office and its branches, with each branch's\n"
     "sync switch, its cursor (the last log position it applied), its lag behind the head of\n"
     "the log, whether it is linked, and when it was last seen. With --json-out, one object per\n"
     "shop per line.\n\n"
     "Example:\n  chainsync shop list\n",
     NULL},
    {"shop", "switch", cs_cmd_shop_switch, "turn a branch's sync switch on or off",
     "shop switch SHOP on|off",
     "While a branch's switch is off no sync point covers it and its copies stay as they are;\n"
     "when turned on again, the next sync point brings every copy up to date (R6). SHOP is a\n"
     "shop id from `chainsync shop list`. Head office only.\n\n"
     "Example:\n  chainsync shop switch 8589934592 off\n",
     NULL},
    {"shop", "password", cs_cmd_shop_password, "set a shop's password (read from standard input)",
     "shop password SHOP --password-stdin",
     "Sets the password of SHOP (the head office's own or a branch's), read as one line from\n"
     "standard input. The log records that it changed, never the password or its hash (R9).\n"
     "Head office only: a branch cannot change its own password (forbidden).\n\n"
     "Options:\n  --password-stdin   read the new password from standard input (required)\n\n"
     "Example:\n  echo 'n3w-s3cret' | chainsync shop password 8589934592 --password-stdin\n",
     NULL},
    {"shop", "unlink", cs_cmd_shop_unlink, "unlink a branch: it becomes a single store",
     "shop unlink SHOP",
     "Unlinks a branch (R13): it becomes a single store, and its copies become local items that\n"
     "remember where they came from (detached_from). Head office only.\n\n"
     "Example:\n  chainsync shop unlink 8589934592\n",
     NULL},
    {"shop", "whatsapp", cs_cmd_shop_whatsapp, "set a shop's own WhatsApp number",
     "shop whatsapp SHOP NUMBER",
     "Sets the WhatsApp number SHOP answers with in individual mode (R12). Head office only.\n\n"
     "Example:\n  chainsync shop whatsapp 8589934592 +5511988880000\n",
     NULL},
    {"shop", "nats-credentials", cs_cmd_shop_nats_credentials,
     "make a shop's NATS user for the JetStream transport", "shop nats-credentials SHOP --out FILE",
     "Makes a NATS user with a fresh random password for SHOP (a branch, or the head office's\n"
     "own id for serve --nats), writes its credentials file FILE (JSON, mode 0600: give it to\n"
     "the branch for branch join --nats-creds) and prints the entry to add to nats-server's\n"
     "authorization { users = [...] } list: a branch may read only its network's stream through\n"
     "its own consumer and publish only its own writes. Nothing is stored; running it again\n"
     "makes a new password (replace the entry). Head office only.\n\n"
     "Options:\n  --out FILE   where to write the credentials file (required)\n\n"
     "Example:\n  chainsync shop nats-credentials 8589934592 --out b1.creds >> users.conf\n",
     NULL},
    {"whatsapp", "resolve", cs_cmd_whatsapp_resolve,
     "print the WhatsApp number a shop answers with", "whatsapp resolve SHOP",
     "Prints the number SHOP answers with: the head office's in shared mode, its own in\n"
     "individual mode (R12). A shop with no number to answer with is an error (not_found).\n\n"
     "Example:\n  chainsync whatsapp resolve 8589934592\n",
     NULL},
    {"put", NULL, cs_cmd_put, "create or update an item; prints id, version, seq",
     "put TYPE [ID] [--expect-version V] [--json '{...}'] [--wait [--timeout-ms MS]]",
     "Creates an item of TYPE (without ID) or replaces the fields of item ID (with ID). The\n"
     "fields are one JSON object, read from standard input or given with --json; all the\n"
     "item's fields each time (full state, not a patch). References are item ids. Prints\n"
     "`created TYPE ID version V at seq S`, or {\"id\",\"version\",\"seq\"} with --json-out.\n"
     "On a branch, a synced type makes a local item and a copy is refused (read_only_copy).\n\n"
     "Options:\n  --json JSON           the fields, instead of standard input\n"
     "  --expect-version V    refuse (version_conflict) unless item ID is at version V\n"
     "  --wait                on a branch, a shared record: wait for the head office's answer\n"
     "                        (delivering it with a pull when no branch follow runs)\n"
     "  --timeout-ms MS       how long --wait waits (default 30000)\n\n"
     "Examples:\n"
     "  chainsync put service_category --json '{\"name\":\"Grooming\"}'\n"
     "  echo '{\"name\":\"Bath\",\"category\":4294967297,\"price_table\":"
     "[{\"tier\":\"small\",\"price_cents\":3000}]}' \\\n"
     "      | chainsync put service\n"
     "  chainsync put service 4294967298 --expect-version 1 --json '{...}'\n",
     cs_cli_print_schema_help},
    {"get", NULL, cs_cmd_get, "show one item, with its origin link and archived flag",
     "get TYPE ID",
     "Shows item ID of TYPE: its fields, archived, and origin (the head-office item a copy\n"
     "mirrors, or none). Archived items are still shown (R4). With --json-out, one object:\n"
     "type, id, version, the fields, archived, origin and, after an unlink, detached_from.\n\n"
     "Example:\n  chainsync get service 4294967298\n",
     NULL},
    {"list", NULL, cs_cmd_list, "list the items of a type (or only the archived ones)",
     "list TYPE [--archived]",
     "Lists the items of TYPE by id: id, version, name (key for advanced_setting), archived and\n"
     "origin. Archived items are left out unless --archived, which lists only them. With\n"
     "--json-out, one item object per line.\n\n"
     "Options:\n  --archived     list only archived items\n\n"
     "Example:\n  chainsync list service --json-out\n",
     NULL},
    {"del", NULL, cs_cmd_del, "delete (archive) an item; prints id, version, seq",
     "del TYPE ID [--expect-version V]",
     "Deletes item ID: it is archived, not erased: kept, resolvable by id, left out of normal\n"
     "listings; branches archive their copies at their next sync point (R4).\n\n"
     "Options:\n  --expect-version V    refuse (version_conflict) unless the item is at version "
     "V\n\n"
     "Example:\n  chainsync del service 4294967298\n",
     NULL},
    {"sync", NULL, cs_cmd_sync, "make a sync point for every branch, or for one",
     "sync [--shop SHOP]",
     "Makes a sync point (R5b, R5c): every branch whose switch is on (or only SHOP) is to be\n"
     "brought to the head office's catalog as of this log position. Prints the position.\n"
     "Head office only.\n\n"
     "Options:\n  --shop SHOP    only this branch\n\n"
     "Example:\n  chainsync sync --shop 8589934592\n",
     NULL},
    {"log", NULL, cs_cmd_log, "print the event log as JSON lines", "log [--from N] [--limit K]",
     "Prints the events of the log in order, one JSON object per line:\n"
     "{seq,time,actor,shop,kind,type,id,version,fields}. Every event's checksum and the hash\n"
     "chain are verified as it is read; a damaged log stops with `error: corrupt` (exit 3).\n"
     "Always JSON.\n\n"
     "Options:\n  --from N       start at sequence N (default 1)\n"
     "  --limit K      print at most K events\n\n"
     "Example:\n  chainsync log --from 10 --limit 5\n",
     NULL},
    {"log", "export", cs_cmd_log_export, "write the log's events to a file, for offline transfer",
     "log export --from N --out FILE",
     "Writes events N to the head of the log into FILE as checksummed segments (replacing\n"
     "FILE atomically). Carry the file to a branch and apply it with `chainsync branch\n"
     "import`. Exporting from 1 again is harmless: a branch skips what it already applied.\n\n"
     "Options:\n  --from N       the first event to export (default 1)\n"
     "  --out FILE     where to write the segments (required)\n\n"
     "Example:\n  chainsync log export --data /tmp/hq --from 1 --out /tmp/hq.seg\n",
     NULL},
    {"demo", NULL, cs_cmd_demo, "run the narrated demo: a live network on 127.0.0.1", "demo",
     "Runs tools/demo from the source tree this program was built from: a head office and\n"
     "three branches replicating on 127.0.0.1 (serve, branch join and follow), explained as\n"
     "it goes; everything it starts is stopped, and its data is left in ./demo-data.\n\n"
     "Example:\n  chainsync demo\n",
     NULL},
    {"status", NULL, cs_cmd_status, "is the network in step? head, branches, lag (exit 5: lagging)",
     "status [--max-lag N]",
     "At a head office: the head of the log, whether serve runs, how many linked branches are\n"
     "connected, and the branch furthest behind (from what serve records once a second, as\n"
     "`shop list`). At a branch: its head office and address, whether a node (follow) is\n"
     "connected, its cursor and last sync point, its lag behind the head office's head as the\n"
     "node last saw it, the outbox and the last connection error. Reads only.\n"
     "Exits 0 when in step, 5 when a branch (at a branch: this one) is more than --max-lag\n"
     "events behind (a branch serve never saw counts as behind by the whole log), 1-4 when\n"
     "status itself fails. With --json-out, one object.\n\n"
     "Options:\n  --max-lag N    events a branch may be behind and still be in step (default 0)\n\n"
     "Examples:\n  chainsync status --data /srv/hq\n"
     "  chainsync status --data /srv/hq --json-out --max-lag 100 || alert\n",
     NULL},
    {"serve", NULL, cs_cmd_serve, "serve the network: stream the log to every branch over TCP",
     "serve --listen HOST:PORT [--stuck-ms MS] [--ready-file FILE] [--http HOST:PORT]\n"
     "      [--http-ready-file FILE] [--log-level LEVEL] [--log-format human|json]\n"
     "      [--nats URL [--nats-creds FILE] [--nats-replicas N] [--nats-domain NAME]]",
     "Runs the head office's server in the foreground: branches connect, authenticate with a\n"
     "challenge-response (no password on the wire), receive the log from their cursor and then\n"
     "live, and send their shared-record writes (R8). One log line per event that matters\n"
     "(start, listen, connect, accepted, refused, caught up, drop, stop) on standard error.\n"
     "Commands run in other processes on the same directory (put, sync, ...) reach connected\n"
     "branches at once. SIGINT or SIGTERM stops it cleanly. Head office only.\n\n"
     "Options:\n  --listen HOST:PORT   where to listen (port 0: any free port)\n"
     "  --stuck-ms MS        drop a branch that reads nothing for this long (default 15000)\n"
     "  --ready-file FILE    write the bound HOST:PORT there once listening (for scripts)\n"
     "  --http HOST:PORT     serve /metrics (Prometheus), /api/shops and the Managing shops\n"
     "                       page at /; read-only; a bare PORT binds 127.0.0.1\n"
     "  --metrics HOST:PORT  the same listener as --http\n"
     "  --http-ready-file FILE  write the HTTP listener's HOST:PORT there once listening\n"
     "  --log-level LEVEL    error, warn, info (default) or debug\n"
     "  --log-format FORMAT  human (default) or json (one JSON object per line)\n"
     "  --nats URL           also publish each committed segment once to the network's\n"
     "                       JetStream stream there (nats://HOST:PORT, comma-separated for a\n"
     "                       cluster) and answer branches' writes sent over NATS\n"
     "  --nats-creds FILE    the head office's NATS user (shop nats-credentials SELF)\n"
     "  --nats-replicas N    replicas of the stream when serve creates it (default 1)\n"
     "  --nats-domain NAME   the JetStream domain of those servers, when they have one\n\n"
     "Example:\n  chainsync serve --data /srv/hq --listen 0.0.0.0:7400 --http 127.0.0.1:9400\n",
     NULL},
    {"branch", "join", cs_cmd_branch_join, "join a network as a branch and take its catalog",
     "branch join --data DIR --head HOST:PORT --shop ID --password-stdin\n"
     "      | --data DIR --nats URL --nats-creds FILE [--nats-domain NAME] --shop ID",
     "Connects to the head office at HOST:PORT as branch ID (the id `shop add` printed),\n"
     "proves it knows the password read from standard input, and takes the whole catalog\n"
     "(R5a). DIR is created, or a single store there becomes the branch: its own items stay\n"
     "local items (R10). The branch keeps keys derived from the password, never the password.\n"
     "Exits 0 once in step; 2 when refused (not_in_network); 4 for a wrong password\n"
     "(auth_failed) or when the head office cannot be reached (network_error). A refused\n"
     "join into a new directory leaves no directory behind.\n\n"
     "With --nats URL it joins through NATS JetStream instead: --nats-creds FILE (from shop\n"
     "nats-credentials) authenticates it to NATS, no password is read; --nats-domain NAME is\n"
     "the hub's JetStream domain for a branch on a leaf node. follow and pull then use NATS.\n\n"
     "Example:\n  echo \"$PW\" | chainsync branch join --data /srv/b1 --head hq:7400 --shop 123 "
     "--password-stdin\n",
     NULL},
    {"branch", "follow", cs_cmd_branch_follow, "stay connected to the head office, apply live",
     "branch follow [--head HOST:PORT | --nats URL [--nats-creds FILE] [--nats-domain NAME]]\n"
     "      [--metrics HOST:PORT] [--http-ready-file FILE]\n"
     "      [--log-level LEVEL] [--log-format human|json]",
     "Connects to the head office this branch joined, catches up and stays connected: events\n"
     "arrive as they are committed, copies change at sync points (R5), shared records at once\n"
     "(R8), and the outbox is sent upstream. Reconnects with backoff when the connection\n"
     "breaks. One log line per event that matters on standard error. SIGINT or SIGTERM stops\n"
     "it.\n\n"
     "Options:\n  --head HOST:PORT   connect here instead of the address stored at join\n"
     "  --nats URL         consume from NATS JetStream here (a branch that joined with --nats\n"
     "                     does without it); --nats-creds FILE, --nats-domain NAME override\n"
     "                     what the join stored\n"
     "  --metrics HOST:PORT  serve /metrics (Prometheus) there; a bare PORT binds 127.0.0.1\n"
     "  --http HOST:PORT   the same listener as --metrics\n"
     "  --http-ready-file FILE  write the listener's HOST:PORT there once listening\n"
     "  --log-level LEVEL  error, warn, info (default) or debug\n"
     "  --log-format FORMAT  human (default) or json (one JSON object per line)\n\n"
     "Example:\n  chainsync branch follow --data /srv/b1\n",
     NULL},
    {"branch", "pull", cs_cmd_branch_pull, "catch up with the head office once, send the outbox",
     "branch pull [--head HOST:PORT | --nats URL [--nats-creds FILE] [--nats-domain NAME]]\n"
     "      [--log-level LEVEL] [--log-format human|json]",
     "Connects once, applies everything up to the head office's head as of connecting, sends\n"
     "the outbox and waits for each answer, then exits 0. Exits 4 when the head office cannot\n"
     "be reached (with the reason).\n\n"
     "Options:\n  --head HOST:PORT   connect here instead of the address stored at join\n"
     "  --nats URL         pull from NATS JetStream here (see branch follow)\n"
     "  --log-level LEVEL  error, warn, info (default) or debug\n"
     "  --log-format FORMAT  human (default) or json\n\n"
     "Example:\n  chainsync branch pull --data /srv/b1\n",
     NULL},
    {"branch", "import", cs_cmd_branch_import, "apply an exported file to a branch directory",
     "branch import FILE --data DIR --shop ID",
     "Applies the segments of FILE (from `chainsync log export`) to the branch directory DIR,\n"
     "creating it on first use. ID is the branch's shop id from `chainsync shop add`. A single\n"
     "store's directory becomes a branch: its own items stay local items and the head office's\n"
     "catalog arrives as copies (R10). Each segment is verified (checksums, hash chain) and\n"
     "applied with the cursor in one transaction; a file that does not start right after the\n"
     "branch's cursor is refused (invalid_input), events already applied are skipped.\n\n"
     "Options:\n  --shop ID      this branch's shop id (required)\n\n"
     "Example:\n  chainsync branch import /tmp/hq.seg --data /tmp/branch1 --shop 123456\n",
     NULL},
    {"audit", "history", cs_cmd_audit_history,
     "every version of an item: who, when, at which event, what changed", "audit history TYPE ID",
     "Lists every version of item ID of TYPE in this directory's log, oldest first: its event\n"
     "sequence, time (ISO 8601 UTC), actor, shop, the kind of change (created, updated,\n"
     "deleted) and each field that changed, old -> new (+ added, - removed). With --json-out,\n"
     "one object per version: seq, time (ms), actor, shop, kind, change, type, id, version,\n"
     "changes [{field, op, old, new}], fields. A history index is kept beside the log and\n"
     "brought up to date on each call (docs/design.md, Audit). On a branch, a copy's history is\n"
     "the head office's: ask there with the origin id.\n\n"
     "Example:\n  chainsync audit history service 4294967298\n",
     NULL},
    {"audit", "as-of", cs_cmd_audit_as_of,
     "the catalog at a past event or time, or what a branch should have held",
     "audit as-of (--seq N | --time ISO8601) [TYPE] [--branch SHOP]",
     "Rebuilds this directory's catalog as it was after event N, or after the last event at\n"
     "or before a time (ISO 8601: 2024-03-03, 2024-03-03T10:15:00Z, ...-03:00; no zone means\n"
     "UTC; or milliseconds since the epoch). --seq 0 is before the first event. Only TYPE's\n"
     "items with TYPE. Archived items are included (archived: yes).\n"
     "The state is rebuilt from the nearest checkpoint, so the cost follows the distance to it,\n"
     "not the log's length; checkpoints are first brought up to the head (see audit\n"
     "checkpoint). With --branch SHOP (at the head office), shows what branch SHOP should have\n"
     "held then: its copies (under the head office's ids), its last sync point, switch, mode\n"
     "and synced types; that replays events 1 to N through the projection.\n"
     "With --json-out, one object: seq, time, from_checkpoint, replayed, network or branch,\n"
     "items.\n\n"
     "Options:\n  --seq N          after event N\n"
     "  --time T         after the last event at or before time T\n"
     "  --branch SHOP    what branch SHOP should have held (head office only)\n"
     "  --every N        checkpoint interval, when setting it (see audit checkpoint)\n\n"
     "Examples:\n  chainsync audit as-of --time 2024-03-03T18:00:00Z service\n"
     "  chainsync audit as-of --seq 120 --branch 8589934592\n",
     NULL},
    {"audit", "verify", cs_cmd_audit_verify,
     "check checksums, the hash chain, state against a replay, and a branch",
     "audit verify [--branch DIR]",
     "Checks every event's checksum and the whole hash chain (naming the first bad event),\n"
     "then that this directory's state equals a replay of its log (naming every differing\n"
     "item by type and id, with the fields that differ), that its checkpoints and history\n"
     "index match the log. With --branch DIR (at the head office), also that the branch\n"
     "directory DIR holds what a replay of this log says it should at its cursor: copies\n"
     "compared by origin with references translated back, shared records by id; local items\n"
     "are counted, not checked. On a branch directory itself, only its own log and local\n"
     "items are checked. Prints a report; exits 0 only when everything holds, else prints\n"
     "`error: corrupt: <the first problem>` and exits 3. --json-out prints the report as one\n"
     "object.\n\n"
     "Options:\n  --branch DIR     also check the branch directory DIR\n\n"
     "Examples:\n  chainsync audit verify --data /tmp/hq\n"
     "  chainsync audit verify --data /tmp/hq --branch /tmp/branch1\n",
     NULL},
    {"audit", "checkpoint", cs_cmd_audit_checkpoint,
     "bring the audit's checkpoints and history index up to the head",
     "audit checkpoint [--every N] [--rebuild]",
     "Stores a copy of the state every N events of the log (default 10000; the interval is\n"
     "kept), replaying only from the last checkpoint, and brings the history index up to date.\n"
     "as-of and history do this themselves on first use; run it ahead to keep them fast.\n"
     "A different --every, or --rebuild, drops the checkpoints and the index and rebuilds them\n"
     "from the log. They cost disk space: one copy of the state per N events.\n\n"
     "Options:\n  --every N        events between checkpoints\n"
     "  --rebuild        drop and rebuild everything from the log\n\n"
     "Example:\n  chainsync audit checkpoint --every 10000\n",
     NULL},
};

#define COMMAND_COUNT (sizeof(commands) / sizeof(commands[0]))

static void print_overview(void)
{
    printf("usage: chainsync [--data DIR] [--json-out] [--actor NAME] COMMAND [ARGS]\n\n"
           "chainsync keeps the catalog of a chain of pet shops (a head office and its branches)\n"
           "in step by event sourcing: every change is an event in an append-only log.\n\n"
           "Commands:\n");
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        printf("  %-52s %s\n", commands[i].usage, commands[i].summary);
    printf("\nCommon options: --data DIR (default $CHAINSYNC_DATA), --json-out (JSON lines),\n"
           "--actor NAME (recorded in the log; default cli), --help. `chainsync COMMAND --help`\n"
           "explains a command with an example; `chainsync put --help` lists every type and its\n"
           "fields; `chainsync help [GROUP] --all` prints every help text; --version.\n\n"
           "Exit codes: 0 ok, 1 usage, 2 refused by a rule or validation, 3 storage, 4 network;\n"
           "`status` exits 5 when a branch lags past --max-lag.\n"
           "Errors go to standard error as `error: <code>: <sentence>`.\n\n"
           "A small network by hand:\n"
           "  export CHAINSYNC_DATA=/tmp/hq\n"
           "  chainsync init --name \"Pets HQ\"                # a single store\n"
           "  chainsync network create --name \"Pets Chain\"    # it becomes the head office\n"
           "  echo s3cret-pass | chainsync shop add --name Downtown --password-stdin  # a branch\n"
           "  chainsync put service_category --json '{\"name\":\"Grooming\"}'   # prints its id\n"
           "  chainsync put service --json '{\"name\":\"Bath\",\"category\":ID,\n"
           "      \"price_table\":[{\"tier\":\"small\",\"price_cents\":3000}]}'\n"
           "  chainsync list service\n"
           "  chainsync sync                                 # a sync point for the branches\n"
           "  chainsync shop list\n"
           "  chainsync log                                  # every event, as JSON lines\n");
}

/* Lists a group's subcommands, for `chainsync network` and `chainsync network --help`. */
static void print_group(FILE *f, const char *name)
{
    fprintf(f, "usage: chainsync %s SUBCOMMAND ...\n\nSubcommands:\n", name);
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        if (strcmp(commands[i].name, name) == 0 && commands[i].subname)
            fprintf(f, "  %-52s %s\n", commands[i].usage, commands[i].summary);
    fprintf(f, "\n`chainsync %s SUBCOMMAND --help` explains one.\n", name);
}

static const cs_cli_cmd *find(const char *name, const char *subname)
{
    for (size_t i = 0; i < COMMAND_COUNT; i++) {
        const cs_cli_cmd *c = &commands[i];
        if (strcmp(c->name, name) != 0)
            continue;
        if (!subname && !c->subname)
            return c;
        if (subname && c->subname && strcmp(c->subname, subname) == 0)
            return c;
    }
    return NULL;
}

static bool is_group(const char *name)
{
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        if (strcmp(commands[i].name, name) == 0 && commands[i].subname)
            return true;
    return false;
}

static bool is_help_word(const char *s)
{
    return strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0 || strcmp(s, "help") == 0;
}

/* Prints command c's --help text. */
static int help_of(const cs_cli_cmd *c)
{
    char help[] = "--help", word[64];
    snprintf(word, sizeof(word), "%s", c->subname ? c->subname : c->name);
    char *args[] = {word, help, NULL};
    return c->handler(c, 2, args);
}

/* `chainsync help --all` (the overview and every one-word command) and `chainsync help GROUP
 * --all` (the group and each of its commands): every help text one after another, which is
 * what the man pages are generated from (help2man, tools/CMakeLists.txt). */
static int help_all(const char *group)
{
    if (group && !is_group(group))
        return cs_cli_usage(NULL, "'%s' is no command group", group);
    if (group)
        print_group(stdout, group);
    else
        print_overview();
    int rc = 0;
    for (size_t i = 0; i < COMMAND_COUNT && rc == 0; i++) {
        const cs_cli_cmd *c = &commands[i];
        if (group ? strcmp(c->name, group) != 0 : is_group(c->name))
            continue;
        printf("\n");
        rc = help_of(c);
    }
    return rc;
}

/* `chainsync help [COMMAND [SUBCOMMAND]]`: the same text as --help. */
static int help_command(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[argc - 1], "--all") == 0)
        return argc == 2   ? help_all(NULL)
               : argc == 3 ? help_all(argv[1])
                           : cs_cli_usage(NULL, "help --all takes at most one group");
    if (argc < 2) {
        print_overview();
        return 0;
    }
    const cs_cli_cmd *c = argc >= 3 ? find(argv[1], argv[2]) : NULL;
    if (!c)
        c = find(argv[1], NULL);
    if (c) {
        char help[] = "--help";
        char *args[] = {argv[argc >= 3 && c->subname ? 2 : 1], help, NULL};
        return c->handler(c, 2, args);
    }
    if (is_group(argv[1])) {
        print_group(stdout, argv[1]);
        return 0;
    }
    return cs_cli_usage(NULL, "unknown command '%s'", argv[1]);
}

static int dispatch(int argc, char **argv)
{
    const char *name = argv[0], *sub = argc > 1 ? argv[1] : NULL;
    if (strcmp(name, "help") == 0)
        return help_command(argc, argv);
    const cs_cli_cmd *c = sub ? find(name, sub) : NULL;
    if (c)
        return c->handler(c, argc - 1, argv + 1);
    c = find(name, NULL);
    if (c)
        return c->handler(c, argc, argv);
    if (!is_group(name))
        return cs_cli_usage(NULL, "unknown command '%s'", name);
    if (sub && is_help_word(sub)) {
        print_group(stdout, name);
        return 0;
    }
    if (!sub) {
        cs_cli_usage(NULL, "%s needs a subcommand", name);
    } else {
        cs_cli_usage(NULL, "unknown command '%s %s'", name, sub);
    }
    print_group(stderr, name);
    return 1;
}

/* ---- a damaged store ends the process with `corrupt`, not a signal ------------------------ */

/* LMDB trusts its pages (docs/security.md, "What LMDB cannot detect"): bytes overwritten in
 * data.mdb can make it read outside its map (SIGSEGV, SIGBUS) or fail one of its own asserts
 * (abort). Nothing can be recovered in the process at that point, but the user gets the SPEC 6
 * shape, `error: corrupt: ...` and exit 3, instead of a core dump. Only async-signal-safe calls
 * (write, _exit). Not installed under the sanitizers, whose reports must not be replaced. */
#if defined(__SANITIZE_ADDRESS__)
#define CS_FAULT_HANDLER 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define CS_FAULT_HANDLER 0
#endif
#endif
#ifndef CS_FAULT_HANDLER
#define CS_FAULT_HANDLER 1
#endif

#define FAULT_STACK_BYTES (64u * 1024u) /* a fault from a blown stack still has one to run on */
static char fault_stack[FAULT_STACK_BYTES];

static void fault_write(const char *s)
{
    ssize_t n = write(2, s, strlen(s));
    (void)n;
}

/* LMDB's assertion message, kept by fault_lmdb_assert for the SIGABRT that follows it. */
#define FAULT_LMDB_MSG_BYTES 256
static char fault_lmdb_msg[FAULT_LMDB_MSG_BYTES];

/* LMDB calls this on a failed assertion, then abort()s: instead of its own line on stderr
 * before ours, its words go into our one `error: corrupt:` line. */
static void fault_lmdb_assert(MDB_env *env, const char *msg)
{
    (void)env;
    snprintf(fault_lmdb_msg, sizeof(fault_lmdb_msg), "%s", msg);
}

void cs_cli_fault_watch(cs_engine *e)
{
    if (e && CS_FAULT_HANDLER)
        mdb_env_set_assert(cs_log_env(cs_engine_log(e)), fault_lmdb_assert);
}

static void fault_handler(int sig)
{
    if (sig == SIGABRT && fault_lmdb_msg[0]) {
        fault_write("error: corrupt: LMDB stopped on a damaged page (");
        fault_write(fault_lmdb_msg);
        fault_write("): the data directory's store is damaged (see docs/security.md); "
                    "`chainsync audit verify` names the damage\n");
        _exit(3);
    }
    fault_write("error: corrupt: the process stopped on ");
    fault_write(sig == SIGBUS ? "SIGBUS" : sig == SIGSEGV ? "SIGSEGV" : "SIGABRT");
    fault_write(" while reading the data directory: its store is damaged (LMDB cannot detect "
                "overwritten pages; see docs/security.md) or this is a bug; "
                "`chainsync audit verify` names the damage\n");
    _exit(3);
}

static void fault_handlers_install(void)
{
    if (!CS_FAULT_HANDLER)
        return;
    stack_t ss = {.ss_sp = fault_stack, .ss_size = sizeof(fault_stack)};
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fault_handler;
    sa.sa_flags = sigaltstack(&ss, NULL) == 0 ? SA_ONSTACK : 0;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("chainsync %s\n", CS_VERSION);
        return 0;
    }
    fault_handlers_install();
    int first = 0;
    bool help = false;
    int rc = cs_cli_parse_globals(argc, argv, &first, &help);
    if (rc != CS_CLI_GO)
        return rc;
    if (help) {
        print_overview();
        return 0;
    }
    if (first >= argc)
        return cs_cli_usage(NULL, "no command given");
    rc = dispatch(argc - first, argv + first);
    if (rc == CS_CLI_GO)
        rc = 0;
    /* Output that never reached its destination (a full disk, a closed pipe) is a failure. */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        if (rc == 0)
            rc = cs_cli_fail(CS_IO, "cannot write the output");
    }
    return rc;
}
