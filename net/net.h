/*
 * net.h: the public contract of chainsync's network layer: the head office's server, which
 * streams its log to every branch of the network over TCP from one libuv loop, and the branch
 * node, which authenticates, applies what it receives through the projection and sends its
 * outbox of shared-record writes upstream (SPEC 5). The bytes on the wire are in
 * docs/protocol.md, the server's shape (loop, queues, limits, wake-up) in docs/design.md
 * ("Network"); keep them in step with this header.
 *
 * Both run a loop of their own until told to stop (SIGINT/SIGTERM, or for a node in pull or join
 * mode, once it is in step). LMDB is read and written from the loop's thread only; the one
 * other thread, the optional HTTP listener's (--http, --metrics), reads nothing but a snapshot
 * of rendered documents the loop publishes (docs/design.md, "Metrics and the HTTP listener").
 */
#ifndef CS_NET_H
#define CS_NET_H

#include "projections/projection.h"

#include <stdio.h>
#include <uv.h>

/* ---- limits (docs/protocol.md) ----------------------------------------------------------- */

#define CS_NET_PROTO_VERSION 1u
/* One streamed segment: large enough to amortise a branch's durable commit, small enough that
 * the send queues of a thousand branches stay small. Holds the largest event. */
#define CS_NET_SEGMENT_BYTES_MAX (1024u * 1024u)
/* Segments end at a multiple of this (or the head) so that branches share encodings. */
#define CS_NET_SEGMENT_EVENTS 1024u
/* Frame header: u32 length + u8 type; a SEGMENT body adds a bin32 header (5 bytes). */
#define CS_NET_FRAME_HEADER_BYTES 5u
#define CS_NET_FRAME_BYTES_MAX (CS_NET_SEGMENT_BYTES_MAX + 64u)
/* Anything but a segment: the largest WRITE is an item's fields (64 KiB) plus its keys. */
#define CS_NET_CONTROL_FRAME_BYTES_MAX (128u * 1024u)
/* Per branch: queue no more than this; resume below LOW (docs/protocol.md, "backpressure"). */
#define CS_NET_SENDQ_BYTES_HIGH (2u * 1024u * 1024u)
#define CS_NET_SENDQ_BYTES_LOW (512u * 1024u)
/* Unsent bytes a connection's socket may hold in the kernel (TCP_NOTSENT_LOWAT, server.c). */
#define CS_NET_NOTSENT_BYTES (256 * 1024)
/* Encoded segments the server keeps for sharing: the bound of its memory beside the queues. */
#define CS_NET_CACHE_BYTES_MAX (32u * 1024u * 1024u)
#define CS_NET_CACHE_ENTRIES_MAX 256u
/* Connections one server holds; past it new ones are refused at accept. */
#define CS_NET_CONNECTIONS_MAX 8192u
#define CS_NET_HANDSHAKE_MS 10000u
#define CS_NET_HEARTBEAT_MS 2000u
#define CS_NET_DEAD_MS 10000u
#define CS_NET_STUCK_MS 15000u
/* The server writes branch statuses (cursor, last contact) at most this often. */
#define CS_NET_STATUS_FLUSH_MS 1000u
/* The slow safety timer behind the file watch: a missed wake-up delays an event this long. */
#define CS_NET_SAFETY_MS 1000u
/* Branch reconnects: full jitter over [0, min(MAX, BASE * 2^attempt)]. */
#define CS_NET_BACKOFF_BASE_MS 250u
#define CS_NET_BACKOFF_MAX_MS 30000u
#define CS_NET_NONCE_BYTES 32u
/* The argon2id cost a branch accepts from a CHALLENGE: libsodium's "sensitive" limits (4 passes,
 * 1 GiB), well above what head offices use ("interactive": 2 passes, 64 MiB). */
#define CS_NET_AUTH_OPS_MAX 4u
#define CS_NET_AUTH_MEM_BYTES_MAX (1024ull * 1024u * 1024u)

_Static_assert(CS_NET_SEGMENT_BYTES_MAX >=
                   CS_EVENT_BYTES_MAX + CS_RECORD_HEADER_BYTES + 4 + CS_SEGMENT_HEADER_BYTES,
               "a streamed segment holds the largest event");
_Static_assert(CS_NET_SEGMENT_BYTES_MAX <= CS_SEGMENT_BYTES_MAX, "streamed segments are segments");
_Static_assert(CS_NET_SENDQ_BYTES_LOW < CS_NET_SENDQ_BYTES_HIGH, "low water below high water");
_Static_assert(CS_NET_HEARTBEAT_MS * 3 <= CS_NET_DEAD_MS, "a peer misses 3 heartbeats first");

/* ---- logs, metrics and the HTTP listener (netlog.c, metrics.c, http.c) ------------------- */

/* What `serve` and `branch follow` log (one line per event that matters, on stderr): error <
 * warn < info < debug; a line is written when its level is at or below the chosen one. */
typedef enum cs_net_log_level {
    CS_NET_LOG_DEFAULT, /* 0 in zeroed options: info */
    CS_NET_LOG_ERROR,
    CS_NET_LOG_WARN,
    CS_NET_LOG_INFO,
    CS_NET_LOG_DEBUG,
} cs_net_log_level;

/* Human lines ("<UTC time> <who>: <message>") or JSON lines ({"time","level","who","event",
 * "msg", and "shop", "code" when they apply}). */
typedef enum cs_net_log_format {
    CS_NET_LOG_HUMAN,
    CS_NET_LOG_JSON,
} cs_net_log_format;

/* Parses "error|warn|info|debug" and "human|json". Errors: CS_INVALID_INPUT. */
cs_err cs_net_log_level_parse(const char *s, cs_net_log_level *out);
cs_err cs_net_log_format_parse(const char *s, cs_net_log_format *out);

/* The HTTP listener (libmicrohttpd, a thread of its own) serves what the loop last published:
 * GET /metrics (Prometheus text format 0.0.4), and on a head office GET /api/shops, GET
 * /api/history (JSON) and GET / (the Managing shops page). It never touches the loop's LMDB
 * handles or libuv state: the loop renders the documents into a snapshot once a second and
 * the listener copies them out under the snapshot's mutex (docs/design.md, "Metrics").
 * The address is HOST:PORT; a bare PORT binds 127.0.0.1 (loopback unless told otherwise). */
#define CS_NET_METRICS_EVERY_MS 1000u
/* The lag chart: one sample per branch every CS_NET_HISTORY_STEP_MS, the last hour kept. */
#define CS_NET_HISTORY_STEP_MS 10000u
#define CS_NET_HISTORY_SAMPLES 360u

/* ---- the NATS JetStream transport (nats_*.c; docs/design.md "NATS transport") ---------- */

/* Contract (stable; docs/protocol.md "NATS" is the wire side):
 * - serve with nats set publishes every committed segment once, in order, to the JetStream
 *   stream CS_<network> (subject cs.<network>.log; <network> = the log id as 16 lower-case hex
 *   digits), one message per segment holding the segment's bytes exactly as streamed over TCP,
 *   with headers Cs-First, Cs-Last (its sequences) and Cs-Chain (the chain value of its last
 *   event, hex). Each publish expects the stream's last sequence to be the one it read back, so
 *   two publishers or a lost acknowledgement cannot duplicate or reorder a segment; after a
 *   crash it resumes after the Cs-Last of the stream's last message. It also answers the
 *   branches' writes (R8) on cs.<network>.write.<shop> through cs_engine_remote_write.
 * - a node with nats set consumes through the durable push consumer shop-<id> of that stream,
 *   applies with cs_branch_apply_segment(s), acknowledges only after the transaction committed,
 *   skips what its cursor already holds, and stops with CS_CORRUPT at a gap. Its outbox goes to
 *   cs.<network>.write.<shop> (answers on cs.<network>.reply.<shop>), one entry at a time.
 * - credentials: a JSON file {network, shop, user, password} from cs_nats_credentials; the
 *   head office adds the user it prints to nats-server's configuration. */
typedef struct cs_nats_options {
    const char *url;   /* "nats://HOST:PORT[,nats://HOST:PORT...]"; NULL = no NATS */
    const char *creds; /* a credentials file (cs_nats_credentials); NULL = connect without a user
                        * (a branch then needs the ones its join stored) */
    unsigned replicas; /* serve: the stream's replicas when it creates it (0 = 1) */
    /* The JetStream domain of the servers holding the stream (jetstream { domain: ... }), for a
     * client on a leaf node without JetStream of its own: its JetStream API requests go to
     * $JS.<domain>.API, which leaf nodes carry to the hub. NULL = none (a branch then uses the
     * one its join stored). */
    const char *domain;
} cs_nats_options;

/* At the head office e: a fresh NATS user for shop (a branch, or the head office itself for
 * serve's own user), with a random password. *creds_json gets the credentials file's text (give
 * it to the branch), *server_conf a nats-server `authorization { users = [...] }` entry with
 * the permissions that let it read only its network's stream and its own consumer and publish
 * only its own write subject (both malloc'd, the caller frees). Nothing is stored: running it
 * again makes another password (replace the entry in nats-server's configuration). Errors:
 * CS_FORBIDDEN (not a head office), CS_NOT_FOUND (no such shop), CS_NO_MEMORY, storage errors. */
cs_err cs_nats_credentials(cs_engine *e, uint64_t shop, char **creds_json, char **server_conf,
                           char *errmsg, size_t errmsg_len);

/* ---- the head office's server ------------------------------------------------------------ */

typedef struct cs_server_options {
    const char *listen;           /* "HOST:PORT"; PORT 0 picks a free port (printed in the log) */
    uint64_t stuck_ms;            /* 0 = CS_NET_STUCK_MS */
    FILE *log;                    /* one line per connection event; NULL = stderr */
    const char *ready_file;       /* when not NULL, "HOST:PORT\n" is written there once listening */
    cs_net_log_level log_level;   /* CS_NET_LOG_DEFAULT = info */
    cs_net_log_format log_format; /* human or JSON lines */
    const char *http;            /* "HOST:PORT" of /metrics, /api/shops and the page; NULL = none */
    const char *http_ready_file; /* when not NULL, the HTTP listener's "HOST:PORT\n" */
    const cs_nats_options *nats; /* publish to JetStream too (above); NULL = TCP only */
} cs_server_options;

/* Serves the head office whose directory `dir` e has open until SIGINT or SIGTERM, then closes
 * every connection, writes the branches' statuses and returns CS_OK. e is borrowed. errmsg
 * (errmsg_len bytes, NUL-terminated) gets the sentence of a failure. Errors: CS_FORBIDDEN (not
 * a head office), CS_INVALID_INPUT (listen address), CS_NETWORK (cannot listen), storage errors.
 */
cs_err cs_server_run(cs_engine *e, const char *dir, const cs_server_options *opts, char *errmsg,
                     size_t errmsg_len);

/* Whether a `serve` holds the head office directory `dir` now (for `chainsync status`). */
bool cs_server_running(const char *dir);

/* ---- the branch node --------------------------------------------------------------------- */

typedef enum cs_node_mode {
    CS_NODE_JOIN,   /* authenticate with a password, store the keys, catch up, exit */
    CS_NODE_PULL,   /* catch up to the head as of connecting, send the outbox, exit */
    CS_NODE_FOLLOW, /* stay connected, apply live, reconnect with backoff */
} cs_node_mode;

/* Nodes that share one loop take turns applying (docs/design.md, "Taking turns"): in each loop
 * iteration they apply transactions for at most budget_ms between them (at least one), so that
 * one branch's catch-up never holds up the others' reads, heartbeats and handshakes past the
 * protocol's limits. One per loop, shared through cs_node_options.turns; freed after the nodes. */
typedef struct cs_node_turns cs_node_turns;
cs_err cs_node_turns_new(unsigned budget_ms, cs_node_turns **out); /* CS_NO_MEMORY */
void cs_node_turns_free(cs_node_turns *t);

typedef struct cs_node_options {
    cs_node_mode mode;
    const char *head;     /* JOIN: "HOST:PORT"; others: NULL = the stored one */
    uint64_t shop;        /* JOIN: the branch's shop id */
    const char *password; /* JOIN only; never stored */
    FILE *log;            /* connection events; NULL = stderr */
    /* Called as a join or pull catches up (done of total events) and once with last = true;
     * NULL = none. The layer never prints progress itself: tools/progress.c draws it. */
    cs_progress progress;
    /* Keep what `chainsync status` shows of this node (connected, head seen, last error) in the
     * directory's netlink database: one write per connection change. Off for benchmarks. */
    bool record_state;
    uint64_t timeout_ms; /* JOIN/PULL: give up connecting after this long (0 = 10 s) */
    bool no_watch;       /* no file watch on the directory's outbox (many nodes in a process) */
    bool receive_only;   /* verify each segment (checksums, chain) and apply nothing: the
                          * benchmark's ceiling; the cursor is kept in memory only */
    /* Called after each segment is applied (or verified), with its bytes (borrowed for the
     * call) and the time it was received (ms since the epoch): for benchmarks. May be NULL. */
    void (*on_segment)(void *hook_arg, const uint8_t *seg, size_t len, uint64_t recv_ms);
    void *hook_arg;
    cs_net_log_level log_level;   /* CS_NET_LOG_DEFAULT = info */
    cs_net_log_format log_format; /* human or JSON lines */
    const char *http;             /* "HOST:PORT" of /metrics; NULL = none */
    const char *http_ready_file;  /* when not NULL, the HTTP listener's "HOST:PORT\n" */
    cs_node_turns *turns;         /* shared by the nodes of one loop; NULL = alone on it */
    /* Consume from JetStream instead of TCP (above); NULL = TCP, or NATS when the stored link
     * is a NATS one (a join with nats stores it). head is then unused. */
    const cs_nats_options *nats;
} cs_node_options;

typedef struct cs_node cs_node;
/* Called once when the node is done: a join or pull in step (CS_OK), a follow stopped, or a
 * failure (its code; cs_node_errmsg says why). The node may be freed from here. */
typedef void (*cs_node_done_fn)(cs_node *n, cs_err result, void *arg);

/* Starts a branch node on `loop`, which the caller runs; many nodes may share one loop (one per
 * branch directory, each with its own cs_branch). b, dir and opts are borrowed until done. No
 * lock is taken and no signal handled: that is cs_node_run's job. Errors: as cs_node_run, with
 * nothing started. */
cs_err cs_node_start(uv_loop_t *loop, cs_branch *b, const char *dir, const cs_node_options *opts,
                     cs_node_done_fn done, void *arg, cs_node **out, char *errmsg,
                     size_t errmsg_len);
/* Asks the node to stop (a follow); done follows. */
void cs_node_stop(cs_node *n);
/* After done: closes the node's handles; its memory is freed once the loop has closed them. */
void cs_node_free(cs_node *n);
const char *cs_node_errmsg(const cs_node *n); /* borrowed until the next callback */
/* The last sequence applied (or verified, receive_only). */
cs_err cs_node_cursor(const cs_node *n, uint64_t *cursor_out);
/* What a TCP node has counted since it started (the figures of its --metrics page): for
 * benchmarks. A NATS node counts none of them yet (all 0). */
typedef struct cs_node_counters {
    uint64_t bytes_received, segments_received, events_applied;
    uint64_t reconnects; /* reconnections scheduled after a lost connection (FOLLOW) */
} cs_node_counters;
void cs_node_counters_get(const cs_node *n, cs_node_counters *out);

/* Runs a branch node on the branch directory `dir` that b has open (borrowed). JOIN binds the
 * directory to opts->shop (R10: a single store becomes the branch). Returns CS_OK when a join
 * or pull is in step, or a follow was stopped by a signal. errmsg gets the sentence of a
 * failure. Errors: CS_NETWORK (the head office cannot be reached or the connection broke:
 * JOIN/PULL only; FOLLOW retries), CS_AUTH_FAILED, CS_NOT_IN_NETWORK, CS_PROTOCOL_MISMATCH,
 * CS_CORRUPT (the head office's log is not the one this branch follows), CS_INVALID_INPUT (no
 * stored link: run branch join; a bad address), CS_FORBIDDEN (another node runs on this
 * directory), storage errors. FOLLOW never ends on an error of the apply path (a segment the
 * projection refuses, storage_full, ...): it holds there and tries again (cs_branch_hold). */
cs_err cs_node_run(cs_branch *b, const char *dir, const cs_node_options *opts, char *errmsg,
                   size_t errmsg_len);

/* What a branch knows of its head office, for `chainsync status`: the stored link and what the
 * last node that ran with record_state saw (docs/storage.md, "netlink"). */
typedef struct cs_branch_link_status {
    char head[256];       /* HOST:PORT stored at join ("" before any) */
    bool joined;          /* a link is stored */
    bool connected;       /* the node said it was connected (check cs_node_running too) */
    uint64_t head_seq;    /* the head office's head as the node last saw it */
    uint64_t contact_ms;  /* when it last connected or lost the connection, ms since the epoch */
    char last_error[256]; /* the last connection failure's "code: sentence", "" when none */
} cs_branch_link_status;

/* Errors: CS_CORRUPT, storage errors (no link is not an error: joined = false). */
cs_err cs_branch_link_status_get(cs_branch *b, cs_branch_link_status *out);

/* An event a following branch cannot apply (docs/design.md, "A branch that never
 * crash-loops"): the node stops applying there, keeps its connection and reads, reports it
 * upstream, and tries again with a bounded backoff, at once after a restart, or at once on
 * cs_branch_retry_ask. What the node last recorded (netlink key "hold"). */
typedef struct cs_branch_hold {
    bool held;         /* false: nothing is held (the other fields are zero) */
    uint64_t seq;      /* the first event not applied (the cursor + 1) */
    cs_err code;       /* the apply path's error */
    char message[160]; /* its sentence */
    uint64_t since_ms; /* when the branch first held at seq, ms since the epoch */
    uint64_t attempts; /* tries that failed at seq */
    uint64_t next_ms;  /* when the node tries again by itself */
} cs_branch_hold;

/* Errors: CS_CORRUPT, storage errors (nothing held is not an error: held = false). */
cs_err cs_branch_hold_get(cs_branch *b, cs_branch_hold *out);
/* Asks the node that follows on b's directory (another process, or the next one to start) to
 * try the held event again now: one durable write (netlink key "retry") that the node sees
 * through its watch of the directory or its next tick. *asked_out (may be NULL) gets the
 * request's number. Errors: storage errors (storage_full included). */
cs_err cs_branch_retry_ask(cs_branch *b, uint64_t *asked_out);

/* Whether a branch node (follow or pull) holds `dir` now: how `put --wait` decides to wait for
 * it or to deliver the outbox itself. */
bool cs_node_running(const char *dir);

#endif
