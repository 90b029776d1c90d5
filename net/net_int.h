/*
 * net_int.h: what the files of the network layer share: frame types and the frame codec
 * (frame.c), the reference-counted buffers and the segment cache (segcache.c), the handshake's
 * messages (handshake.c), the branch's stored link (link.c), and small loop helpers.
 */
#ifndef CS_NET_INT_H
#define CS_NET_INT_H

#include "net/net.h"

#include <stdarg.h>
#include <uv.h>

/* ---- frames (docs/protocol.md, "frames") ------------------------------------------------- */

typedef enum cs__frame_type {
    CS__F_HELLO = 0x01,
    CS__F_CHALLENGE = 0x02,
    CS__F_PROOF = 0x03,
    CS__F_WELCOME = 0x04,
    CS__F_START = 0x05,
    CS__F_CAUGHT_UP = 0x06,
    CS__F_SEGMENT = 0x10,
    CS__F_ACK = 0x11,
    CS__F_PING = 0x12,
    CS__F_WRITE = 0x20,
    CS__F_WRITE_RESULT = 0x21,
    CS__F_SNAPSHOT = 0x30,       /* bootstrap.c: a snapshot part follows (retention) */
    CS__F_SNAPSHOT_CHUNK = 0x31, /* one checksummed piece of it */
    CS__F_SNAPSHOT_END = 0x32,   /* the part is whole: apply it, segments continue after it */
    CS__F_ERROR = 0x7f,
} cs__frame_type;

#define CS__F_OPTIONAL 0x80u /* types >= this may be skipped by a receiver that lacks them */

const char *cs__frame_name(unsigned type);

/* A reference-counted, immutable byte buffer: one encoded frame queued to any number of
 * connections (Redis's shared replication buffer). Owned by its references. */
typedef struct cs__buf {
    unsigned refs;
    size_t len;
    uint64_t first, last; /* a segment frame's range; 0 otherwise */
    uint8_t data[];
} cs__buf;

cs__buf *cs__buf_new(size_t len); /* refs = 1; NULL when out of memory */
void cs__buf_ref(cs__buf *b);
void cs__buf_unref(cs__buf *b); /* frees at 0; accepts NULL */

/* Builds a frame whose body is the msgpack in sb (any type but SEGMENT). */
cs__buf *cs__frame_from_msgpack(unsigned type, const msgpack_sbuffer *sb);
/* ERROR {code, message}. */
cs__buf *cs__frame_error(cs_err code, const char *message);

/* Assembles frames from a byte stream. The buffer grows only to the frame being read (and one
 * read, cs__rx_space), never past max_bytes, which is checked from the 4-byte length before
 * anything is allocated. */
#define CS__RX_KEEP_BYTES 4096u
typedef struct cs__rx {
    uint8_t *buf; /* owned; the unread bytes are buf[start, start + len) */
    size_t start, len, cap;
    size_t max_bytes;
    size_t keep_bytes; /* capacity kept when the buffer empties; 0: CS__RX_KEEP_BYTES */
} cs__rx;

void cs__rx_free(cs__rx *rx);
/* Appends received bytes. Errors: CS_NO_MEMORY. */
cs_err cs__rx_feed(cs__rx *rx, const uint8_t *p, size_t n);
/* Room for a read straight into the buffer: *p (borrowed until the next call on rx) has *avail
 * >= want bytes; cs__rx_commit(rx, n) then appends the n of them that were filled. Errors:
 * CS_NO_MEMORY. */
cs_err cs__rx_space(cs__rx *rx, size_t want, uint8_t **p, size_t *avail);
void cs__rx_commit(cs__rx *rx, size_t n);
/* The next whole frame, if any: *type, *body and *body_len (borrowed until cs__rx_consume).
 * Returns CS_NOT_FOUND when more bytes are needed; CS_INVALID_INPUT for a length of 0 or over
 * max_bytes (msg says which). */
cs_err cs__rx_frame(cs__rx *rx, unsigned *type, const uint8_t **body, size_t *body_len, char *msg,
                    size_t msg_len);
void cs__rx_consume(cs__rx *rx); /* drops the frame cs__rx_frame returned */
/* The frame starting `off` bytes into the unread ones (off: the end of frames already looked
 * at). */
cs_err cs__rx_frame_at(cs__rx *rx, size_t off, unsigned *type, const uint8_t **body,
                       size_t *body_len, char *msg, size_t msg_len);
/* Drops the first n bytes (whole frames). */
void cs__rx_consume_bytes(cs__rx *rx, size_t n);

/* A decoded control body: a msgpack map checked with cs_msgpack_check first. */
typedef struct cs__body {
    msgpack_zone zone;
    bool zoned; /* zone was initialised (it is not when that ran out of memory) */
    msgpack_object obj;
} cs__body;

/* Errors: CS_INVALID_INPUT (not one well-formed map filling the body), CS_NO_MEMORY. */
cs_err cs__body_parse(cs__body *b, const uint8_t *p, size_t n);
void cs__body_free(cs__body *b);
/* Typed lookups; false when the key is missing or of another type. */
bool cs__body_uint(const cs__body *b, const char *key, uint64_t *out);
bool cs__body_str(const cs__body *b, const char *key, cs_str *out);
bool cs__body_bin(const cs__body *b, const char *key, size_t len, const uint8_t **out);
const msgpack_object *cs__body_get(const cs__body *b, const char *key);

/* A msgpack map being packed; failures are remembered (failed) rather than lost. */
typedef struct cs__pk {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} cs__pk;
void cs__pk_init(cs__pk *p, unsigned map_size);
void cs__pk_destroy(cs__pk *p);
void cs__pk_str(cs__pk *p, const char *key, const char *val);
void cs__pk_uint(cs__pk *p, const char *key, uint64_t val);
void cs__pk_bin(cs__pk *p, const char *key, const uint8_t *val, size_t len);
void cs__pk_key(cs__pk *p, const char *key);
/* The frame of the packed map (NULL when out of memory). Destroys nothing. */
cs__buf *cs__pk_frame(cs__pk *p, unsigned type);

/* The body of a write's answer, as `serve` sends it over TCP (WRITE_RESULT) and over NATS (the
 * reply): req (the request id, CS_REQUEST_ID_BYTES), code, message, id, version, seq.
 * cs__pk_write_answer initialises p with it (the caller destroys p). cs__body_write_answer
 * reads one into *ans (*req points into b): false when a field is missing; a code this version
 * does not know is invalid_input, a missing message is empty. */
void cs__pk_write_answer(cs__pk *p, const uint8_t *req, const cs_remote_answer *ans);
bool cs__body_write_answer(const cs__body *b, const uint8_t **req, cs_remote_answer *ans);

/* ---- the segment cache (segcache.c) ------------------------------------------------------ */

/* Encoded SEGMENT frames by first sequence, shared by every connection that streams past them.
 * Entries no connection holds are evicted oldest first past CS_NET_CACHE_BYTES_MAX. */
typedef struct cs__segcache cs__segcache;

cs_err cs__segcache_new(cs__segcache **out);
void cs__segcache_free(cs__segcache *c);
/* The SEGMENT frame starting at `first`, ending at or before `head` (the boundary rule of
 * docs/protocol.md "streaming"), from the cache or encoded now through r. A new reference:
 * the caller unrefs it. Errors: as cs_segment_encode. */
cs_err cs__segcache_get(cs__segcache *c, cs_log_reader *r, uint64_t first, uint64_t head,
                        cs__buf **out);
/* Bytes the cache holds now (for the server's memory figures). */
size_t cs__segcache_bytes(const cs__segcache *c);

/* ---- the handshake (handshake.c) --------------------------------------------------------- */

#define CS__AUTH_MESSAGE_BYTES 100u

/* AuthMessage of docs/protocol.md: label, shop, cnonce, snonce, log_id, proto. */
void cs__auth_message(uint8_t out[CS__AUTH_MESSAGE_BYTES], uint64_t shop,
                      const uint8_t cnonce[CS_NET_NONCE_BYTES],
                      const uint8_t snonce[CS_NET_NONCE_BYTES], uint64_t log_id, uint32_t proto);

/* The log id (chain value of event 1, 0 for an empty log) and the chain value at `seq` (0 for
 * seq 0). Errors: CS_NOT_FOUND (seq past the head), log errors. */
cs_err cs__log_chain_at(cs_log_reader *r, uint64_t seq, uint64_t *chain_out);

/* ---- the branch's link (link.c; docs/storage.md, "netlink") ------------------------------ */

/* One record of the branch's `netlink` database (link.c owns the database; hold.c and
 * nats_sub.c keep their keys in it too). cs__netlink_read calls fn on netlink[key] inside one
 * read transaction (the value's bytes are the map's only until fn returns) and returns what fn
 * returns; CS_NOT_FOUND without calling fn when the key is absent. */
cs_err cs__netlink_read(cs_branch *b, const char *key, cs_err (*fn)(const MDB_val *v, void *arg),
                        void *arg);
/* Writes netlink[key] = sb's bytes in one durable write; sb NULL deletes the key (absent is
 * fine). An sb whose packing ran out of memory (data NULL) is CS_NO_MEMORY. */
cs_err cs__netlink_write(cs_branch *b, const char *key, const msgpack_sbuffer *sb);

typedef struct cs__link {
    char head[256]; /* HOST:PORT */
    uint64_t shop;
    uint64_t log_id;
    cs_auth_client auth;
} cs__link;

/* Errors: CS_NOT_FOUND (never joined), CS_CORRUPT, storage errors. */
cs_err cs__link_load(cs_branch *b, cs__link *out);
cs_err cs__link_save(cs_branch *b, const cs__link *l);
/* The node's state for `chainsync status` (key "state"; now as contact_ms). */
cs_err cs__link_state_save(cs_branch *b, bool connected, uint64_t head_seq, const char *last_error);

/* ---- a held event (hold.c; docs/design.md, "A branch that never crash-loops") ---------- */

/* Where a following branch stands with an event it cannot apply. Kept in the node, durably in
 * netlink key "hold" while on (so status shows it and a restart knows since when). */
typedef struct cs__hold {
    bool on;      /* an event is held: segments are not applied until the next try */
    bool trying;  /* the next segments are applied: a retry (or the start) is under way */
    uint64_t seq; /* the first event not applied: the committed cursor + 1 */
    cs_err code;  /* the apply path's error */
    char message[160];
    uint64_t since_ms;   /* when it first held at seq */
    uint64_t attempts;   /* tries that failed at seq, the first one included */
    uint64_t next_ms;    /* when the backoff tries again */
    uint64_t retry_seen; /* the `branch retry` counter when the hold began (or was last tried) */
    uint64_t skipped;    /* segments received and not applied while held (metrics) */
} cs__hold;

/* Bounded backoff between tries: 1 s doubling to 60 s. */
#define CS__HOLD_BACKOFF_FIRST_MS 1000u
#define CS__HOLD_BACKOFF_MAX_MS 60000u

/* The node failed to apply at seq (code, message): h is on, its attempts and backoff move on
 * (since and attempts carry over when it is the same event again), and the record is written.
 * The record's write error is returned (the hold stands in memory all the same). */
cs_err cs__hold_enter(cs_branch *b, cs__hold *h, uint64_t seq, cs_err code, const char *message,
                      uint64_t now_ms);
/* The held event went through: h is cleared and the record removed. Errors: storage errors. */
cs_err cs__hold_leave(cs_branch *b, cs__hold *h);
/* At a node's start: the record a previous run left (h->on, trying) and the retry counter. */
cs_err cs__hold_start(cs_branch *b, cs__hold *h);
/* Whether a held node should try again now: the backoff ran out or `branch retry` was asked. */
bool cs__hold_due(cs_branch *b, cs__hold *h, uint64_t now_ms, bool *asked);
/* PING and ACK keys of a branch (docs/protocol.md, "held"): how many, then packs them. */
unsigned cs__hold_keys(const cs__hold *h);
void cs__hold_pack(cs__pk *p, const cs__hold *h);
struct cs__conn;
/* The server's side: takes the held keys of a PING or ACK into c->held (changed: they differ
 * from what it held). False (and *why set) for keys of the wrong type. */
bool cs__hold_take(struct cs__conn *c, const cs__body *b, bool *changed, const char **why);
/* Copies c's held fields into a status about to be recorded. */
void cs__hold_status(const struct cs__conn *c, cs_shop_status *st);

/* ---- logs (netlog.c) -------------------------------------------------------------------- */

/* A log's settings, kept in the handle of whoever logs (server, node). */
typedef struct cs__netlog {
    FILE *out;
    const char *who; /* "serve", "branch" */
    cs_net_log_level level;
    bool json;
} cs__netlog;

void cs__netlog_init(cs__netlog *l, FILE *out, const char *who, cs_net_log_level level,
                     cs_net_log_format format);
bool cs__netlog_on(const cs__netlog *l, cs_net_log_level level);
/* One line: event is a stable word for JSON lines ("listen", "accepted", "refused", "drop",
 * ...); shop 0 and code CS_OK are left out. */
void cs__netlog_emit(const cs__netlog *l, cs_net_log_level level, const char *event, uint64_t shop,
                     cs_err code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void cs__netlog_v(const cs__netlog *l, cs_net_log_level level, const char *event, uint64_t shop,
                  cs_err code, const char *fmt, va_list ap);

/* ---- metrics: the snapshot hand-off and the HTTP listener (metrics.c, http.c) ------------ */

typedef enum cs__doc {
    CS__DOC_METRICS, /* Prometheus text */
    CS__DOC_SHOPS,   /* /api/shops JSON (head office) */
    CS__DOC_HISTORY, /* /api/history JSON (head office) */
    CS__DOC_COUNT,
} cs__doc;

/* The documents the loop last rendered. The loop replaces one under the mutex (a pointer swap);
 * the HTTP thread copies one out under it. Nothing else is shared between the two threads. */
typedef struct cs__snapshot cs__snapshot;

cs_err cs__snapshot_new(cs__snapshot **out);
void cs__snapshot_free(cs__snapshot *s);
/* Takes text (malloc'd, len bytes) as the new document d; frees the one it replaces. */
void cs__snapshot_publish(cs__snapshot *s, cs__doc d, char *text, size_t len);
/* A malloc'd copy of document d (NULL when none was published or out of memory). */
char *cs__snapshot_copy(cs__snapshot *s, cs__doc d, size_t *len);

/* A text document being written (open_memstream): failures are remembered, never lost. */
typedef struct cs__mtext {
    FILE *f;
    char *buf;
    size_t len;
} cs__mtext;

cs_err cs__mtext_open(cs__mtext *t);
/* "# HELP name help" and "# TYPE name type" (counter, gauge). */
void cs__mtext_family(cs__mtext *t, const char *name, const char *type, const char *help);
/* A label value with Prometheus' escapes (backslash, quote, newline). */
void cs__mtext_label(cs__mtext *t, const char *v);
/* Ends the document: *out (malloc'd) and *len. Errors: CS_NO_MEMORY (nothing returned). */
cs_err cs__mtext_close(cs__mtext *t, char **out, size_t *len);

/* The lag chart's history: every branch's lag (events) once per CS_NET_HISTORY_STEP_MS, the
 * last CS_NET_HISTORY_SAMPLES kept in a ring. Loop thread only. */
typedef struct cs__lagring cs__lagring;

cs_err cs__lagring_new(cs__lagring **out);
void cs__lagring_free(cs__lagring *r);
/* Adds a sample when a step has passed since the last (true then). Shops not seen before get a
 * series of their own; a series whose shop is gone keeps its past. */
bool cs__lagring_sample(cs__lagring *r, uint64_t now_ms, const uint64_t *shops,
                        const uint64_t *lags, size_t n);
/* {"step_ms","times":[ms...],"series":[{"shop","lag":[n|null...]}]} oldest first. */
cs_err cs__lagring_json(const cs__lagring *r, char **out, size_t *len);

/* The HTTP listener over a snapshot (libmicrohttpd's own thread). page: serve /, /api/shops
 * and /api/history too (a head office). Writes "HOST:PORT\n" of the bound address to
 * ready_file when set. Errors: CS_INVALID_INPUT (address), CS_NETWORK (cannot listen). */
typedef struct cs__http cs__http;

cs_err cs__http_start(const char *hostport, cs__snapshot *snap, bool page, const char *ready_file,
                      char *bound, size_t bound_len, cs__http **out, char *errmsg,
                      size_t errmsg_len);
void cs__http_stop(cs__http *h); /* joins the thread; accepts NULL */

/* ---- the server (server.c: accept, handshake, timers; stream.c: writes, close, streaming) - */

/* A connection's states (docs/protocol.md, "connection states"), with what moves it on:
 *
 *   HELLO --HELLO: conn_on_hello--> PROOF --PROOF ok: conn_on_proof--> START
 *   START --START ok: conn_on_start--> STREAMING
 *   any   --error, stuck, dead, shutdown: cs__conn_close--> CLOSING --close_cb--> (freed)
 */
typedef enum cs__cstate {
    CS__C_HELLO,
    CS__C_PROOF,
    CS__C_START,
    CS__C_STREAMING,
    CS__C_CLOSING,
} cs__cstate;

typedef struct cs__server cs__server;

/* Failed logins from one address (server.c, "slowing repeated failed logins"): the table is
 * bounded, so an attacker with many addresses costs memory of at most this many entries. */
#define CS__LOGIN_FAIL_ADDRS 1024u
typedef struct cs__login_fail {
    char addr[64];         /* the peer's IP address, no port; "" = free slot */
    uint32_t fails;        /* consecutive failures since the last success */
    uint64_t last_fail_ms; /* forgotten CS__LOGIN_FORGET_MS after the last failure */
    uint64_t next_slot_ms; /* the next CHALLENGE for this address goes out no earlier */
} cs__login_fail;

typedef struct cs__conn {
    uv_tcp_t tcp; /* first: the handle's data is the conn too */
    cs__server *srv;
    struct cs__conn *prev, *next; /* the server's list of open connections */
    cs__cstate state;
    char peer[64];
    uint64_t shop;
    bool known, linked;
    bool joining;              /* HELLO's mode was "join": only a linked branch may */
    uint64_t challenge_due_ms; /* HELLO answered but CHALLENGE held back until then (slow-down) */
    cs_auth_keys keys;
    uint8_t cnonce[CS_NET_NONCE_BYTES];
    uint8_t snonce[CS_NET_NONCE_BYTES];
    uint32_t proto;
    uint64_t send_next; /* the next sequence to queue */
    uint64_t acked;     /* the branch's durable cursor, as it last said */
    uint64_t outbox;    /* its outbox depth, as it last said in PING or ACK (optional key) */
    bool outbox_known;
    uint64_t caught_up_seq; /* the head as of START: CAUGHT_UP once send_next passes it */
    bool caught_up_due;
    size_t queued;      /* bytes handed to uv_write and not yet written */
    uint64_t paused_ms; /* when the queue passed the high-water mark; 0 = not paused */
    size_t wq_seen;     /* libuv's write queue at the last tick: partial writes are drain too */
    uint64_t opened_ms, last_rx_ms, last_tx_ms, closing_ms;
    uint64_t last_alive_ms; /* when the peer last took bytes we wrote (a write completed) */
    bool status_dirty;
    struct cs__boot_tx *boot; /* bootstrap.c: a snapshot part being sent; NULL otherwise */
    uv_shutdown_t shutdown;
    cs__rx rx;
    cs_shop_status held; /* the held_* fields: the event it holds at, as it last said (hold.c) */
} cs__conn;

struct cs__server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t tick;
    uv_timer_t recheck; /* a wake-up that found nothing new looks again (server.c) */
    unsigned recheck_step;
    uv_fs_event_t watch;
    uv_signal_t sigint, sigterm;
    cs_engine *e;
    cs_log *log;
    FILE *out;
    uint64_t stuck_ms;
    uint64_t self;   /* the head office's shop id */
    uint64_t head;   /* the log's head as last read */
    uint64_t log_id; /* chain value of event 1 */
    cs__segcache *cache;
    cs__conn *conns;
    unsigned nconns;
    cs_shop_status *gone; /* statuses of closed connections, written at the next flush */
    size_t ngone, gone_cap;
    uint64_t last_flush_ms, last_safety_ms;
    /* on_tick's lateness: when the loop last came back from a long absence (a commit held up
     * by the disk, say), the limits' clocks restart there (server.c, conn_tick) */
    uint64_t last_tick_ms, back_ms;
    bool stopping;
    cs__netlog nl;
    /* metrics (metrics.c renders them from these once a second when --http is given) */
    cs__snapshot *snap; /* NULL without an HTTP listener */
    cs__http *http;
    cs__lagring *ring;
    uint64_t last_metrics_ms;
    uint64_t head_at_start;
    uint64_t bytes_sent, frames_sent, segments_sent, connections_total, writes_applied;
    uint64_t drops[CS_ERR_COUNT + 1];    /* streaming connections closed, by code; [CS_OK]: */
    uint64_t refusals[CS_ERR_COUNT + 1]; /* closed by the branch. Handshakes refused, by code */
    cs__login_fail login_fails[CS__LOGIN_FAIL_ADDRS];
    struct cs__natspub *nats; /* serve --nats: the JetStream publisher (nats_pub.c); NULL = none */
    uint8_t rbuf[64 * 1024];  /* every read lands here first: libuv reads one stream at a time */
};

/* stream.c. Queues a frame (takes a new reference of b). */
void cs__conn_send(cs__conn *c, cs__buf *b);
/* Sends ERROR {code, message} unless code is CS_OK, then closes once it is written (at once
 * when `now` is set: a stuck peer never reads it). Logs the reason. Idempotent. */
void cs__conn_close(cs__conn *c, cs_err code, const char *message, bool now);
/* The close callback of a connection's handle: unlinks c from the server's list and frees it. */
void cs__conn_closed(uv_handle_t *h);
void cs__server_logf(cs__server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A line with its level, event word, shop (0: none) and code (CS_OK: none). */
void cs__server_log(cs__server *s, cs_net_log_level level, const char *event, uint64_t shop,
                    cs_err code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* metrics.c: renders /metrics, /api/shops and /api/history into s->snap (loop thread). */
void cs__server_publish(cs__server *s, uint64_t now);

/* Reads the head and queues segments to every streaming connection that needs them. */
void cs__server_pump_all(cs__server *s);
/* The same for one connection (after its queue drained below the low-water mark). */
void cs__server_pump_one(cs__server *s, cs__conn *c);

/* ---- bootstrap.c: a branch behind the log's start gets a snapshot part (docs/protocol.md) -- */

/* Bytes of snapshot per SNAPSHOT_CHUNK: well inside a branch's frame limit. */
#define CS__SNAPSHOT_CHUNK_BYTES (512u * 1024u)
_Static_assert(CS__SNAPSHOT_CHUNK_BYTES + 64u <= CS_NET_FRAME_BYTES_MAX, "a chunk fits a frame");

/* Server: whether a branch at `cursor` needs a snapshot (its next event was cut), and if so
 * loads its part and queues SNAPSHOT; *seq_out gets the part's position (the stream goes on
 * after it). *needed false: stream as usual. Errors (m says why): CS_NOT_FOUND (the log was cut
 * but holds no snapshot), CS_CORRUPT, CS_NO_MEMORY, CS_IO. */
cs_err cs__boot_start(cs__conn *c, uint64_t cursor, bool *needed, uint64_t *seq_out, char *m,
                      size_t mlen);
/* Server: queues chunks while the send queue is below its high-water mark, then SNAPSHOT_END.
 * True when the whole part was queued (c->boot is then freed). */
bool cs__boot_pump(cs__conn *c);
void cs__boot_free(cs__conn *c); /* accepts a connection with none */

/* Branch: a part being received. Owned buffer, at most CS_SNAPSHOT_BYTES_MAX. */
typedef struct cs__boot_rx {
    uint8_t *buf;
    size_t len, bytes;
    uint64_t seq;
    uint32_t chunks, next;
    bool active;
} cs__boot_rx;

/* Branch: handle SNAPSHOT, SNAPSHOT_CHUNK and SNAPSHOT_END. END applies the part in one
 * transaction (cs_branch_bootstrap); *applied is set then. Errors (m says why):
 * CS_INVALID_INPUT, CS_CORRUPT, CS_PROTOCOL_MISMATCH, CS_NO_MEMORY, the bootstrap's. */
cs_err cs__boot_rx_frame(cs__boot_rx *rx, unsigned type, const cs__body *b, cs_branch *br,
                         bool *applied, char *m, size_t mlen);
void cs__boot_rx_free(cs__boot_rx *rx);

/* ---- helpers ----------------------------------------------------------------------------- */

uint64_t cs__net_now_ms(void); /* wall clock, ms since the epoch */
/* One log line: "<UTC time> <who>: <message>\n", flushed (serve's and a node's log). */
void cs__net_vlogf(FILE *out, const char *who, const char *fmt, va_list ap);
/* Takes the flock `how` (LOCK_EX, LOCK_SH) on DIR/name without waiting: one branch node, one
 * server per directory; the kernel releases it when the process dies, however it dies. Returns
 * the descriptor (close it to release), -2 when another process holds it, -1 when it cannot be
 * created. */
int cs__dir_lock(const char *dir, const char *name, int how);
/* Unblocks SIGINT and SIGTERM once the loop's handlers are in place: a program that blocks
 * them before it starts (the CLI does, for serve and the branch nodes) then loses no stop
 * request that came during start-up, and never dies of one without a clean stop. */
void cs__signals_unblock(void);
/* Splits "HOST:PORT" into a sockaddr. Errors: CS_INVALID_INPUT. */
cs_err cs__parse_addr(const char *hostport, struct sockaddr_storage *out);

#endif
