/*
 * node.c: a branch node (`chainsync branch join|pull|follow`): connects to the head office,
 * proves it knows its password without sending it, checks that the head office holds its
 * secret and keeps the log it follows, applies every segment through the projection in one
 * durable transaction with the cursor, acknowledges it, and sends its outbox of shared-record
 * writes upstream, one at a time, until each is answered (docs/protocol.md). Every PING and ACK
 * carries the outbox depth, and a PING goes at once when it changed, so the head office shows
 * each branch's backlog.
 *
 * States, with what moves the node on:
 *
 *   IDLE --node_connect--> CONNECTING --on_connected: HELLO--> HELLO_SENT
 *   HELLO_SENT --CHALLENGE: on_challenge, PROOF--> PROOF_SENT
 *   PROOF_SENT --WELCOME: on_welcome, START--> STREAMING
 *   any --error, EOF, dead peer: node_drop--> CLOSING --on_closed--> IDLE (follow: after a
 *        backoff timer) or done (join, pull, a final refusal, a signal)
 *
 * Invariants: the cursor sent in START and every ACK is one the projection committed; an
 * outbox entry leaves the outbox only in cs_engine_outbox_done, after the head office's answer;
 * at most one WRITE is unanswered (so answers need no reordering and a resend after a reconnect
 * is the same entry).
 */
#include "net/nats_int.h"

#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#define NODE_TICK_MS 250u
#define NODE_PAUSED_READ_MS (CS_NET_STUCK_MS / 3)

typedef enum node_state {
    N_IDLE,
    N_CONNECTING,
    N_HELLO_SENT,
    N_PROOF_SENT,
    N_STREAMING,
    N_CLOSING,
} node_state;

/* A node's place in one of cs_node_turns' first-come queues (node_fifo below). */
typedef struct node_link {
    struct cs_node *next;
    bool queued;
} node_link;

typedef struct cs_node {
    uv_loop_t *loop; /* borrowed: the caller's, or cs_node_run's own */
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_timer_t tick, retry;
    uv_fs_event_t watch;
    bool watching;
    uv_check_t check; /* frames are handled after the loop's reads, so segments that arrived
                       * together are applied in one transaction (node_process) */
    bool check_on;
    uv_idle_t spin; /* active while whole frames wait for this node's next turn: the loop
                     * then polls without sleeping (node_process, "Taking turns") */
    bool spin_on;
    bool rx_paused;        /* reads stopped: the receive buffer holds enough for the next turns */
    uint64_t paused_ms;    /* when they stopped (node_tick reads a little anyway, later) */
    unsigned batch_max;    /* segments per transaction, adapted to how long turns wait */
    uint64_t yielded_ms;   /* when this node last gave its turn up with frames left; 0 = none */
    node_link turn;        /* in o->turns' queue of nodes waiting to apply */
    bool slot;             /* holds one of o->turns' catch-up slots ("Taking turns") */
    node_link slot_wait;   /* in o->turns' line for a slot */
    uint64_t slot_ms;      /* when it took the slot or last applied with it */
    uint64_t slot_wait_ms; /* when it began to wait for one */
    cs_node_done_fn done_cb;
    void *done_arg;
    bool finished;         /* done_cb was called */
    unsigned handles_open; /* freed when the last of its handles has closed (cs_node_free) */
    cs_branch *b;
    cs_engine *e;
    const cs_node_options *o;
    FILE *out;
    cs__link link;
    struct sockaddr_storage addr;
    node_state state;
    uint8_t cnonce[CS_NET_NONCE_BYTES];
    cs__rx rx;
    uint64_t cursor, chain;
    uint64_t target; /* CAUGHT_UP's seq; 0 until it came */
    bool caught_up;
    bool write_inflight;
    uint64_t inflight_key;
    uint64_t outbox_told; /* the outbox depth last sent in PING or ACK, this connection */
    bool outbox_told_known;
    bool start_taken; /* a frame after START came: the head office took it (report_outbox) */
    uint8_t inflight_req[CS_REQUEST_ID_BYTES];
    unsigned attempt;
    uint64_t opened_ms, last_rx_ms, last_tx_ms;
    uint64_t last_tick_ms; /* when node_tick last ran (its lateness shows a busy loop) */
    uint64_t progress_from, progress_total;
    bool progress_line; /* a progress line without its newline is on the terminal */
    bool state_ok;      /* record_state may write: the directory holds this branch's link */
    uint64_t head_seen; /* the head office's head as last seen (WELCOME, then the cursor) */
    char last_error[256];
    bool done;     /* stop after this connection: no retry */
    cs_err result; /* what cs_node_run returns */
    char errmsg[320];
    cs__netlog nl;
    uint64_t sync_seq;     /* the last sync point applied, to log the next one */
    bool caught_up_logged; /* this connection's "caught up" line was written */
    /* metrics (node_publish renders them once a second when --http is given) */
    cs__snapshot *snap; /* NULL without an HTTP listener */
    cs__http *http;
    char name[128];
    uint64_t head_seq;        /* the head office's head, as last heard (WELCOME, PING, segments) */
    uint64_t behind_since_ms; /* when the branch last fell behind head_seq; 0 = in step */
    uint64_t last_metrics_ms, rate_cursor, rate_ms;
    double rate; /* events applied per second over the last interval */
    uint64_t bytes_received, segments_received, events_applied, reconnects;
    uint64_t drops[CS_ERR_COUNT], refusals[CS_ERR_COUNT];
    cs__boot_rx boot; /* a snapshot part arriving (bootstrap.c); dropped with the connection */
    cs__hold hold;    /* follow: the event it cannot apply, if any ("a held event" below) */
    struct cs__natsnode *nats; /* --nats: the node is the one in nats_sub.c; this one forwards */
} node;

static void node_log(node *n, cs_net_log_level level, const char *event, cs_err code,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* One log line (netlog.c) with the branch's shop id. */
static void node_log(node *n, cs_net_log_level level, const char *event, cs_err code,
                     const char *fmt, ...)
{
    if (!cs__netlog_on(&n->nl, level))
        return;
    if (n->progress_line) { /* end the progress line first: a log line of its own */
        fputc('\n', stderr);
        n->progress_line = false;
    }
    va_list ap;
    va_start(ap, fmt);
    cs__netlog_v(&n->nl, level, event, n->link.shop, code, fmt, ap);
    va_end(ap);
}

static void node_connect(node *n);
static void turns_remove(cs_node_turns *t, node *n);
static void slot_release(node *n);
static void record_state(node *n, bool connected);
static bool node_hold(node *n, cs_err err);
static void node_hold_check(node *n, uint64_t now);

/* ---- closing and retrying ---------------------------------------------------------------- */

/* Codes after which trying again cannot help: the branch is refused, speaks another version, or
 * holds (or was sent) a log it must not apply, or its own storage failed. invalid_input is not
 * among them: the server says it for a handshake that took too long, which a retry may pass. */
static bool final_code(cs_err code)
{
    return code == CS_AUTH_FAILED || code == CS_NOT_IN_NETWORK || code == CS_PROTOCOL_MISMATCH ||
           code == CS_CORRUPT || code == CS_FORBIDDEN || code == CS_STORAGE_FULL || code == CS_IO;
}

/* The node is done (a join or pull in step, a final refusal, a stop): its timers stop and the
 * caller hears of it once. The connection is already closed. */
static void node_finish(node *n)
{
    if (n->finished)
        return;
    n->finished = true;
    uv_timer_stop(&n->tick);
    uv_timer_stop(&n->retry);
    uv_check_stop(&n->check);
    n->check_on = false;
    uv_idle_stop(&n->spin);
    n->spin_on = false;
    if (n->watching)
        uv_fs_event_stop(&n->watch);
    if (n->done_cb)
        n->done_cb(n, n->result, n->done_arg);
}

static void on_retry(uv_timer_t *t)
{
    node_connect(t->data);
}

static void on_closed(uv_handle_t *h)
{
    node *n = h->data;
    n->state = N_IDLE;
    record_state(n, false);
    cs__rx_free(&n->rx);
    n->rx_paused = false;
    n->yielded_ms = 0;
    turns_remove(n->o->turns, n);
    slot_release(n);
    uv_idle_stop(&n->spin);
    n->spin_on = false;
    cs__boot_rx_free(&n->boot); /* a part cut short is asked for again, whole */
    n->write_inflight = false;  /* unanswered: sent again, with the same req, next time */
    if (n->done || n->o->mode != CS_NODE_FOLLOW) {
        node_finish(n);
        return;
    }
    uint64_t cap = CS_NET_BACKOFF_BASE_MS << (n->attempt < 7 ? n->attempt : 7);
    if (cap > CS_NET_BACKOFF_MAX_MS)
        cap = CS_NET_BACKOFF_MAX_MS;
    uint64_t delay = randombytes_uniform((uint32_t)cap + 1);
    n->attempt++;
    n->reconnects++;
    node_log(n, CS_NET_LOG_INFO, "reconnect", CS_OK, "reconnecting in %llu ms",
             (unsigned long long)delay);
    uv_timer_start(&n->retry, on_retry, delay, 0);
}

/* Ends the connection. code != CS_OK: the reason (final ones end the node, others are retried
 * by follow and end join and pull with CS_NETWORK). tell: send ERROR first. */
static void node_drop(node *n, cs_err code, bool tell, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void node_drop(node *n, cs_err code, bool tell, const char *fmt, ...)
{
    if (n->state == N_CLOSING || n->state == N_IDLE)
        return;
    va_list ap;
    va_start(ap, fmt);
    char m[256];
    cs_errmsg_vformat(m, sizeof(m), code, fmt, ap);
    va_end(ap);
    if (code != CS_OK) {
        bool refused = n->state < N_STREAMING && n->state >= N_HELLO_SENT;
        if (refused)
            n->refusals[code]++;
        else if (n->state == N_STREAMING)
            n->drops[code]++;
        const char *event = refused                    ? "refused"
                            : n->state == N_CONNECTING ? "connect_failed"
                                                       : "drop";
        node_log(n, refused && final_code(code) ? CS_NET_LOG_ERROR : CS_NET_LOG_WARN, event, code,
                 "%s: %s", cs_err_name(code), m);
        snprintf(n->last_error, sizeof(n->last_error), "%s: %.200s", cs_err_name(code), m);
        if (final_code(code) || n->o->mode != CS_NODE_FOLLOW) {
            n->done = true;
            n->result = final_code(code) ? code : CS_NETWORK;
            snprintf(n->errmsg, sizeof(n->errmsg), "%s", m);
        }
    }
    if (tell && code != CS_OK && n->state >= N_HELLO_SENT) {
        cs__buf *b = cs__frame_error(code, m);
        if (b) {
            uv_buf_t ub = uv_buf_init((char *)b->data, (unsigned)b->len);
            uv_try_write((uv_stream_t *)&n->tcp, &ub, 1); /* best effort: we close next */
            cs__buf_unref(b);
        }
    }
    n->state = N_CLOSING;
    uv_close((uv_handle_t *)&n->tcp, on_closed);
}

/* ---- sending ----------------------------------------------------------------------------- */

typedef struct nwreq {
    uv_write_t req;
    cs__buf *buf;
} nwreq;

static void node_write_done(uv_write_t *req, int status)
{
    nwreq *w = (nwreq *)req;
    node *n = req->handle->data;
    cs__buf_unref(w->buf);
    free(w);
    if (status < 0 && status != UV_ECANCELED)
        node_drop(n, CS_NETWORK, false, "cannot send to the head office: %s", uv_strerror(status));
}

/* Sends b (the node's reference is transferred). */
static void node_send(node *n, cs__buf *b)
{
    nwreq *w = b ? malloc(sizeof(*w)) : NULL;
    if (!w) {
        cs__buf_unref(b);
        node_drop(n, CS_NETWORK, false, "out of memory");
        return;
    }
    w->buf = b;
    uv_buf_t ub = uv_buf_init((char *)b->data, (unsigned)b->len);
    int rc = uv_write(&w->req, (uv_stream_t *)&n->tcp, &ub, 1, node_write_done);
    if (rc < 0) {
        cs__buf_unref(b);
        free(w);
        node_drop(n, CS_NETWORK, false, "cannot send to the head office: %s", uv_strerror(rc));
        return;
    }
    n->last_tx_ms = cs__net_now_ms();
}

/* PING (key "time") or ACK (key "cursor") with the outbox depth, so the head office shows the
 * backlog (docs/protocol.md, "outbox"). The depth is one mdb_stat; when it cannot be read the
 * frame goes without it (the key is optional: the head office keeps the last figure). */
static void send_report(node *n, unsigned type, const char *key, uint64_t v)
{
    uint64_t depth;
    bool known = cs_engine_outbox_count(n->e, &depth) == CS_OK;
    cs__pk p;
    cs__pk_init(&p, (known ? 2 : 1) + (n->slot_wait.queued ? 1 : 0) + cs__hold_keys(&n->hold));
    cs__pk_uint(&p, key, v);
    if (n->slot_wait.queued) /* reads nothing until its turn: slow, not stuck (docs/protocol.md) */
        cs__pk_uint(&p, "waiting", cs__net_now_ms() - n->slot_wait_ms);
    if (known) {
        cs__pk_uint(&p, "outbox", depth);
        n->outbox_told = depth;
        n->outbox_told_known = true;
    }
    cs__hold_pack(&p, &n->hold); /* the held event, or held 0 (docs/protocol.md, "held") */
    node_send(n, cs__pk_frame(&p, type));
    cs__pk_destroy(&p);
}

/* A PING now when the depth changed since the last report (a write answered or queued), so
 * the head office's figure does not wait for the next heartbeat. Only once the head office took
 * START: a PING still unread when a head office that refuses START closes would make the close
 * reset the connection and lose the ERROR (the watch fires right after START, on record_state's
 * write). */
static void report_outbox(node *n)
{
    uint64_t depth;
    if (n->state == N_STREAMING && n->start_taken &&
        cs_engine_outbox_count(n->e, &depth) == CS_OK &&
        (!n->outbox_told_known || depth != n->outbox_told))
        send_report(n, CS__F_PING, "time", cs__net_now_ms());
}

/* The oldest outbox entry, as a WRITE, when none is unanswered. */
static void send_outbox(node *n)
{
    if (n->state != N_STREAMING || n->write_inflight)
        return;
    uint64_t key;
    uint8_t *entry = NULL;
    size_t len = 0;
    cs_err err = cs_engine_outbox_next(n->e, 0, &key, &entry, &len);
    if (err == CS_NOT_FOUND)
        return;
    cs__body body;
    const uint8_t *req;
    if (err == CS_OK && (cs__body_parse(&body, entry, len) != CS_OK ||
                         !cs__body_bin(&body, "req", CS_REQUEST_ID_BYTES, &req)))
        err = CS_CORRUPT;
    else if (err == CS_OK)
        memcpy(n->inflight_req, req, CS_REQUEST_ID_BYTES);
    if (err == CS_OK || err == CS_CORRUPT)
        cs__body_free(&body);
    cs__buf *f = NULL;
    if (err == CS_OK && len + 1 <= CS_NET_CONTROL_FRAME_BYTES_MAX && (f = cs__buf_new(5 + len))) {
        uint32_t flen = (uint32_t)(1 + len);
        cs_be32_put(f->data, flen);
        f->data[4] = CS__F_WRITE;
        memcpy(f->data + 5, entry, len);
    }
    free(entry);
    if (err != CS_OK || !f) {
        node_drop(n, err == CS_OK ? CS_NO_MEMORY : err, false, "cannot read outbox entry %llu",
                  (unsigned long long)key);
        return;
    }
    n->write_inflight = true;
    n->inflight_key = key;
    node_send(n, f);
}

/* ---- join / pull completion and progress ------------------------------------------------- */

static void progress(node *n, bool last);

static void check_done(node *n)
{
    if (n->o->mode == CS_NODE_FOLLOW || n->state != N_STREAMING || !n->caught_up ||
        n->cursor < n->target || n->write_inflight)
        return;
    uint64_t key;
    uint8_t *entry = NULL;
    size_t len;
    cs_err err = cs_engine_outbox_next(n->e, 0, &key, &entry, &len);
    free(entry);
    if (err == CS_OK)
        return; /* more to send: send_outbox runs after every answer */
    progress(n, true);
    node_log(n, CS_NET_LOG_INFO, "in_step", CS_OK, "in step at event %llu",
             (unsigned long long)n->cursor);
    n->done = true;
    n->result = err == CS_NOT_FOUND ? CS_OK : err;
    n->state = N_CLOSING;
    uv_close((uv_handle_t *)&n->tcp, on_closed);
}

/* Reports the catch-up (events applied of those the head office had at WELCOME) to the
 * caller's progress callback, which draws it (the callback rate-limits). */
static void progress(node *n, bool last)
{
    if (!n->o->progress.fn || n->progress_total == 0)
        return;
    uint64_t done = n->cursor > n->progress_from ? n->cursor - n->progress_from : 0;
    if (done > n->progress_total)
        done = n->progress_total;
    cs_progress_report(&n->o->progress, done, n->progress_total, last);
    n->progress_line = !last;
    if (last)
        n->progress_total = 0;
}

/* record_state: what `chainsync status` shows of this node. A failure to write it costs the
 * display only, so it is logged and the node goes on. */
static void record_state(node *n, bool connected)
{
    if (!n->o->record_state || !n->state_ok)
        return;
    if (n->cursor > n->head_seen)
        n->head_seen = n->cursor;
    cs_err err = cs__link_state_save(n->b, connected, n->head_seen, n->last_error);
    if (err != CS_OK)
        node_log(n, CS_NET_LOG_WARN, "state_not_recorded", err,
                 "cannot record the node's state for status: %s", cs_err_name(err));
}

/* ---- frames from the head office --------------------------------------------------------- */

static void on_challenge(node *n, const cs__body *b)
{
    uint64_t proto, log_id, ops, mem;
    const uint8_t *snonce, *salt;
    if (!cs__body_uint(b, "proto", &proto) || !cs__body_uint(b, "log_id", &log_id) ||
        !cs__body_uint(b, "ops", &ops) || !cs__body_uint(b, "mem", &mem) ||
        !cs__body_bin(b, "nonce", CS_NET_NONCE_BYTES, &snonce) ||
        !cs__body_bin(b, "salt", CS_AUTH_SALT_BYTES, &salt)) {
        node_drop(n, CS_INVALID_INPUT, true, "CHALLENGE lacks a field");
        return;
    }
    if (proto != CS_NET_PROTO_VERSION) {
        node_drop(n, CS_PROTOCOL_MISMATCH, true, "the head office chose protocol %llu",
                  (unsigned long long)proto);
        return;
    }
    if (n->link.log_id && log_id != n->link.log_id) {
        node_drop(n, CS_NOT_IN_NETWORK, true,
                  "this head office keeps another network's log (log id %016llx, this branch "
                  "follows %016llx)",
                  (unsigned long long)log_id, (unsigned long long)n->link.log_id);
        return;
    }
    if (ops > CS_NET_AUTH_OPS_MAX || mem > CS_NET_AUTH_MEM_BYTES_MAX) {
        /* a hostile server must not make a branch burn CPU or memory without bound */
        node_drop(n, CS_PROTOCOL_MISMATCH, true,
                  "the head office asks for argon2id with %llu passes and %llu bytes: over this "
                  "branch's limits",
                  (unsigned long long)ops, (unsigned long long)mem);
        return;
    }
    cs_auth_params p = {.opslimit = ops, .memlimit = mem};
    memcpy(p.salt, salt, CS_AUTH_SALT_BYTES);
    if (n->o->mode == CS_NODE_JOIN) {
        /* argon2id once, here, on the branch: the head office never runs it per connection. */
        cs_err err = cs_auth_derive(n->o->password, &p, &n->link.auth);
        if (err != CS_OK) {
            node_drop(n, err, false, "cannot derive the keys from the password");
            return;
        }
    } else if (memcmp(&p, &n->link.auth.params, sizeof(p)) != 0) {
        node_drop(n, CS_AUTH_FAILED, false,
                  "the head office has a new password for shop %llu: run branch join again",
                  (unsigned long long)n->link.shop);
        return;
    }
    n->link.log_id = log_id;
    uint8_t msg[CS__AUTH_MESSAGE_BYTES], proof[CS_AUTH_KEY_BYTES];
    cs__auth_message(msg, n->link.shop, n->cnonce, snonce, log_id, (uint32_t)proto);
    cs_auth_client_proof(&n->link.auth, msg, sizeof(msg), proof);
    /* Keep the expected signature for WELCOME in place of the nonce we no longer need. */
    cs_auth_server_signature(n->link.auth.server_key, msg, sizeof(msg), n->cnonce);
    cs__pk pk;
    cs__pk_init(&pk, 1);
    cs__pk_bin(&pk, "proof", proof, sizeof(proof));
    n->state = N_PROOF_SENT;
    node_send(n, cs__pk_frame(&pk, CS__F_PROOF));
    cs__pk_destroy(&pk);
}

static void on_welcome(node *n, const cs__body *b)
{
    const uint8_t *sig;
    uint64_t head, head_seq;
    if (!cs__body_bin(b, "signature", CS_AUTH_KEY_BYTES, &sig) ||
        !cs__body_uint(b, "head", &head) || !cs__body_uint(b, "head_seq", &head_seq)) {
        node_drop(n, CS_INVALID_INPUT, true, "WELCOME lacks a field");
        return;
    }
    if (sodium_memcmp(sig, n->cnonce, CS_AUTH_KEY_BYTES) != 0) {
        node_drop(n, CS_AUTH_FAILED, true,
                  "the head office could not prove it holds this branch's secret");
        return;
    }
    cs_err err = CS_OK;
    if (n->o->mode == CS_NODE_JOIN && (err = cs__link_save(n->b, &n->link)) != CS_OK) {
        node_drop(n, err, false, "cannot store the link: %s", cs_branch_errmsg(n->b));
        return;
    }
    cs_branch_state st;
    if ((err = cs_branch_state_get(n->b, &st)) != CS_OK) {
        node_drop(n, err, false, "cannot read the branch's cursor");
        return;
    }
    n->cursor = st.cursor;
    n->chain = st.chain;
    n->progress_from = st.cursor;
    n->progress_total = head_seq > st.cursor ? head_seq - st.cursor : 0;
    if (head_seq > n->head_seq)
        n->head_seq = head_seq;
    if (n->head_seq > st.cursor && !n->behind_since_ms)
        n->behind_since_ms = cs__net_now_ms();
    n->caught_up_logged = false;
    n->sync_seq = st.sync_seq;
    n->head_seen = head_seq;
    n->state_ok = true;
    node_log(n, CS_NET_LOG_INFO, "accepted", CS_OK,
             "authenticated as shop %llu at head office %llu; cursor %llu, head %llu",
             (unsigned long long)n->link.shop, (unsigned long long)head,
             (unsigned long long)st.cursor, (unsigned long long)head_seq);
    cs__pk pk;
    cs__pk_init(&pk, 2);
    cs__pk_uint(&pk, "cursor", st.cursor);
    cs__pk_uint(&pk, "chain", st.chain);
    n->state = N_STREAMING;
    n->attempt = 0;
    record_state(n, true);
    node_send(n, cs__pk_frame(&pk, CS__F_START));
    cs__pk_destroy(&pk);
    /* Not reported here (report_outbox says why): the first ACK or CAUGHT_UP does. */
    n->outbox_told_known = false;
    n->start_taken = false;
    send_outbox(n);
}

/* A SEGMENT body is one msgpack bin holding the segment. */
static bool bin_body(const uint8_t *p, size_t n, const uint8_t **seg, size_t *len)
{
    size_t hdr, l;
    if (n >= 2 && p[0] == 0xc4)
        hdr = 2, l = p[1];
    else if (n >= 3 && p[0] == 0xc5)
        hdr = 3, l = cs_be16_get(p + 1);
    else if (n >= 5 && p[0] == 0xc6)
        hdr = 5, l = cs_be32_get(p + 1);
    else
        return false;
    if (hdr + l != n)
        return false;
    *seg = p + hdr;
    *len = l;
    return true;
}

/* receive_only: every check a branch makes before applying (segment checksum, each record's
 * checksum, the chain from the cursor on, no gap), and nothing written: the ceiling of what
 * receiving costs. The cursor lives in memory only. */
static void verify_segment(node *n, const uint8_t *seg, size_t len)
{
    cs_segment_view v;
    cs_log_record rec;
    cs_err err = cs_segment_open(seg, len, &v);
    if (err == CS_OK && v.first != n->cursor + 1)
        err = CS_CORRUPT;
    v.prev_chain = n->chain;
    v.prev_chain_known = n->cursor > 0;
    while (err == CS_OK && (err = cs_segment_next(&v, &rec)) == CS_OK) {
        n->cursor = rec.seq;
        n->chain = rec.chain;
    }
    if (err != CS_NOT_FOUND) {
        node_drop(n, CS_CORRUPT, true, "segment after event %llu does not verify",
                  (unsigned long long)n->cursor);
        return;
    }
    send_report(n, CS__F_ACK, "cursor", n->cursor);
    check_done(n);
}

static void segment_applied(node *n);
static void node_resume(node *n);

/* Once per connection: the branch holds everything the head office had when it started. */
static void log_caught_up(node *n)
{
    if (n->caught_up_logged || !n->caught_up || n->cursor < n->target)
        return;
    n->caught_up_logged = true;
    node_log(n, CS_NET_LOG_INFO, "caught_up", CS_OK, "caught up at event %llu",
             (unsigned long long)n->cursor);
}

static void on_segment(node *n, const uint8_t *body, size_t len)
{
    const uint8_t *seg;
    size_t seg_len;
    if (!bin_body(body, len, &seg, &seg_len)) {
        node_drop(n, CS_INVALID_INPUT, true, "SEGMENT body is not one bin");
        return;
    }
    uint64_t recv_ms = n->o->on_segment ? cs__net_now_ms() : 0;
    n->segments_received++;
    if (n->o->receive_only) {
        verify_segment(n, seg, seg_len);
        if (n->state == N_STREAMING && n->o->on_segment)
            n->o->on_segment(n->o->hook_arg, seg, seg_len, recv_ms);
        return;
    }
    uint64_t applied = 0;
    cs_err err = cs_branch_apply_segment(n->b, seg, seg_len, &applied);
    if (err != CS_OK) {
        if (!node_hold(n, err))
            node_drop(n, err, true, "%s", cs_branch_errmsg(n->b));
        return;
    }
    if (n->o->on_segment)
        n->o->on_segment(n->o->hook_arg, seg, seg_len, recv_ms);
    segment_applied(n);
}

/* After a transaction of segments: the new cursor, acknowledged. */
static void segment_applied(node *n)
{
    cs_err err;
    cs_branch_state st;
    if ((err = cs_branch_state_get(n->b, &st)) != CS_OK) {
        node_drop(n, err, false, "cannot read the branch's cursor");
        return;
    }
    cs_assert(st.cursor >= n->cursor); /* a segment never moves the cursor back */
    n->events_applied += st.cursor - n->cursor;
    n->cursor = st.cursor;
    n->chain = st.chain;
    if (st.cursor > n->head_seq)
        n->head_seq = st.cursor; /* the head office has at least what it sent */
    if (st.cursor >= n->head_seq)
        n->behind_since_ms = 0;
    if (n->hold.on && n->cursor >= n->hold.seq)
        node_resume(n);
    if (st.sync_seq > n->sync_seq) {
        n->sync_seq = st.sync_seq;
        node_log(n, CS_NET_LOG_INFO, "sync_point", CS_OK, "sync point at event %llu applied",
                 (unsigned long long)st.sync_seq);
    }
    log_caught_up(n);
    send_report(n, CS__F_ACK, "cursor", n->cursor);
    if (st.unlinked) { /* R13: the segment held this branch's unlink */
        node_drop(n, CS_NOT_IN_NETWORK, false,
                  "the head office unlinked this branch: it is a single store now, its copies "
                  "kept as local items");
        return;
    }
    progress(n, false);
    check_done(n);
}

static void on_write_result(node *n, const cs__body *b)
{
    const uint8_t *req;
    cs_remote_answer ans;
    if (!cs__body_write_answer(b, &req, &ans)) {
        node_drop(n, CS_INVALID_INPUT, true, "WRITE_RESULT lacks a field");
        return;
    }
    if (!n->write_inflight || memcmp(req, n->inflight_req, CS_REQUEST_ID_BYTES) != 0) {
        node_drop(n, CS_INVALID_INPUT, true, "WRITE_RESULT for a write not sent");
        return;
    }
    cs_err err = cs_engine_outbox_done(n->e, n->inflight_key, &ans);
    if (err != CS_OK) {
        node_drop(n, err, false, "cannot record the answer: %s", cs_engine_errmsg(n->e));
        return;
    }
    if (ans.code != CS_OK)
        node_log(n, CS_NET_LOG_WARN, "write_refused", ans.code,
                 "write refused by the head office: %s: %s", cs_err_name(ans.code), ans.message);
    n->write_inflight = false;
    report_outbox(n);
    send_outbox(n);
    check_done(n);
}

/* Bootstrap (bootstrap.c): the head office cut the events this branch needs next and sends
 * its snapshot part; once applied, the cursor is the part's and segments continue from it. */
static void on_snapshot(node *n, unsigned type, const cs__body *b)
{
    char m[320];
    bool applied = false;
    if (n->o->receive_only) {
        node_drop(n, CS_PROTOCOL_MISMATCH, true, "a receive-only node cannot apply a snapshot");
        return;
    }
    cs_err err = cs__boot_rx_frame(&n->boot, type, b, n->b, &applied, m, sizeof(m));
    if (err != CS_OK) {
        node_drop(n, err, true, "snapshot: %s", m);
        return;
    }
    if (!applied)
        return;
    uint64_t before = n->cursor;
    segment_applied(n); /* the new cursor, acknowledged */
    node_log(n, CS_NET_LOG_INFO, "bootstrap", CS_OK,
             "bootstrapped from the head office's snapshot: from event %llu to %llu",
             (unsigned long long)before, (unsigned long long)n->cursor);
}

static void on_frame(node *n, unsigned type, const uint8_t *body, size_t len)
{
    static const uint8_t allowed[] = {
        [CS__F_CHALLENGE] = 1 << N_HELLO_SENT,   [CS__F_WELCOME] = 1 << N_PROOF_SENT,
        [CS__F_CAUGHT_UP] = 1 << N_STREAMING,    [CS__F_SEGMENT] = 1 << N_STREAMING,
        [CS__F_PING] = 1 << N_STREAMING,         [CS__F_WRITE_RESULT] = 1 << N_STREAMING,
        [CS__F_SNAPSHOT] = 1 << N_STREAMING,     [CS__F_SNAPSHOT_CHUNK] = 1 << N_STREAMING,
        [CS__F_SNAPSHOT_END] = 1 << N_STREAMING, [CS__F_ERROR] = 0xff};
    if (type >= sizeof(allowed) || !allowed[type]) {
        if (type >= CS__F_OPTIONAL)
            return;
        node_drop(n, CS_PROTOCOL_MISMATCH, true, "unknown frame type 0x%02x", type);
        return;
    }
    if (!(allowed[type] & (1 << n->state))) {
        node_drop(n, CS_INVALID_INPUT, true, "unexpected %s", cs__frame_name(type));
        return;
    }
    if (n->state == N_STREAMING && type != CS__F_ERROR)
        n->start_taken = true;
    if (type == CS__F_SEGMENT) {
        on_segment(n, body, len);
        return;
    }
    cs__body b;
    if (cs__body_parse(&b, body, len) != CS_OK) {
        cs__body_free(&b);
        node_drop(n, CS_INVALID_INPUT, true, "%s: the body is not one msgpack map",
                  cs__frame_name(type));
        return;
    }
    cs_str code = {"", 0}, msg = {"", 0};
    switch (type) {
    case CS__F_CHALLENGE:
        on_challenge(n, &b);
        break;
    case CS__F_WELCOME:
        on_welcome(n, &b);
        break;
    case CS__F_CAUGHT_UP:
        if (cs__body_uint(&b, "seq", &n->target)) {
            n->caught_up = true;
            slot_release(n); /* in step: its turns are the in-step nodes' (node_process) */
            log_caught_up(n);
            report_outbox(n); /* START was taken: the first report of an in-step branch */
            check_done(n);
        }
        break;
    case CS__F_WRITE_RESULT:
        on_write_result(n, &b);
        break;
    case CS__F_SNAPSHOT:
    case CS__F_SNAPSHOT_CHUNK:
    case CS__F_SNAPSHOT_END:
        on_snapshot(n, type, &b);
        break;
    case CS__F_ERROR: {
        cs__body_str(&b, "code", &code);
        cs__body_str(&b, "message", &msg);
        cs_err c = cs_err_from_name(code.ptr, code.len);
        node_drop(n, c == CS_ERR_COUNT || c == CS_OK ? CS_NETWORK : c, false,
                  "the head office said: %.*s", (int)msg.len, msg.ptr);
        break;
    }
    default: { /* PING: contact, and the head office's head (for the lag figures) */
        uint64_t head;
        if (cs__body_uint(&b, "head_seq", &head) && head > n->head_seq) {
            n->head_seq = head;
            if (head > n->cursor && !n->behind_since_ms)
                n->behind_since_ms = cs__net_now_ms();
        }
        break;
    }
    }
    cs__body_free(&b);
}

/* ---- the connection ---------------------------------------------------------------------- */

/* Segments applied per transaction, and bytes: bounded by the projection's own limit and by
 * what the receive buffer holds in one loop iteration. A node holding a catch-up slot (below)
 * applies up to SLOT_SEGMENTS_MAX / SLOT_BATCH_BYTES at once. */
#define BATCH_SEGMENTS_MAX 16u
#define BATCH_BYTES_MAX (8u * 1024u * 1024u)
#define SLOT_SEGMENTS_MAX CS_BRANCH_SEGMENTS_PER_TXN_MAX
#define SLOT_BATCH_BYTES (32u * 1024u * 1024u)

/* The SEGMENT frames at the front of the buffer, as many as are complete (at least the first):
 * applied in one transaction, acknowledged once. */
static void apply_batch(node *n)
{
    const uint8_t *segs[SLOT_SEGMENTS_MAX];
    size_t lens[SLOT_SEGMENTS_MAX], off = 0, k = 0;
    size_t kmax = n->slot ? SLOT_SEGMENTS_MAX : n->batch_max;
    size_t bmax = n->slot ? SLOT_BATCH_BYTES : BATCH_BYTES_MAX;
    unsigned type;
    const uint8_t *body;
    size_t len;
    char m[160];
    while (k < kmax && off < bmax &&
           cs__rx_frame_at(&n->rx, off, &type, &body, &len, m, sizeof(m)) == CS_OK &&
           type == CS__F_SEGMENT) {
        if (!bin_body(body, len, &segs[k], &lens[k])) {
            node_drop(n, CS_INVALID_INPUT, true, "SEGMENT body is not one bin");
            return;
        }
        off += CS_NET_FRAME_HEADER_BYTES + len;
        k++;
    }
    cs_assert(k > 0); /* called with a whole SEGMENT frame at the front */
    n->segments_received += k;
    uint64_t recv_ms = n->o->on_segment ? cs__net_now_ms() : 0, applied = 0;
    cs_err err = cs_branch_apply_segments(n->b, segs, lens, k, &applied);
    n->slot_ms = cs__net_now_ms();
    if (err != CS_OK) {
        if (node_hold(n, err))
            cs__rx_consume_bytes(&n->rx, off); /* held: these are not applied (see below) */
        else
            node_drop(n, err, true, "%s", cs_branch_errmsg(n->b));
        return;
    }
    for (size_t i = 0; n->o->on_segment && i < k; i++)
        n->o->on_segment(n->o->hook_arg, segs[i], lens[i], recv_ms);
    cs__rx_consume_bytes(&n->rx, off);
    segment_applied(n);
}

/* Taking turns (docs/design.md). Nodes may share one loop (bench/fanout runs 500 on each), and
 * a loop iteration that applies everything every node has received lasts longer than the
 * protocol's silence and stuck limits (CS_NET_DEAD_MS, CS_NET_STUCK_MS, the handshake's): the
 * head office drops them all. So a node applies one transaction per turn and, with whole frames
 * left, keeps its check handle and an idle handle active (the loop then polls without sleeping
 * and comes back). With cs_node_turns the nodes of a loop also share a budget of applying time
 * per iteration, served first come first served, and catching up takes a slot:
 *
 * - Catch-up slots. An apply transaction writes every page of the items it touches, and a
 *   catch-up of random edits touches most of the catalog in every transaction: 500 branches
 *   each applying its catch-up four segments at a time wrote eight times their size (100
 *   branches: 11 GB for 1.4 GB of databases). So at most TURNS_SLOTS nodes of a loop catch up
 *   at once, each in transactions of up to SLOT_SEGMENTS_MAX segments (a whole default catch-up
 *   in one), applied once that much is in or the stream pauses (CAUGHT_UP, or SLOT_HOLD_MS
 *   without a transaction). The others wait in line with one frame read and their reads
 *   stopped, and say so in their PINGs ("waiting"), so the head office counts them as slow, not
 *   stuck. A node gives its slot up when it is in step (CAUGHT_UP) or its connection closes.
 * - In step, a node's transaction size follows how long its turns wait, halving while the
 *   others make it wait over TURN_WAIT_HIGH_MS and doubling back below TURN_WAIT_LOW_MS (alone
 *   on its loop, as `branch follow` is, it waits for no one and grows to BATCH_SEGMENTS_MAX).
 *   Reads stop while the buffer holds more than the next turns need (the head office's queue
 *   for this branch then waits, bounded, instead of this process's memory). */
#define TURN_WAIT_HIGH_MS 1000u
#define TURN_WAIT_LOW_MS 200u
#define RX_PAUSE_BYTES_PER_SEGMENT (512u * 1024u)
#define TURNS_SLOTS 2u
#define SLOT_HOLD_MS 2000u
#define SLOT_WAIT_PAUSE_BYTES (CS_NET_FRAME_BYTES_MAX + 4u) /* one whole frame, at least */

/* A first-come queue of nodes through the node_link at offset `link` of each. */
typedef struct node_fifo {
    node *head, *tail; /* borrowed: a node leaves when its connection closes */
    size_t link;
} node_fifo;

static node_link *link_of(const node_fifo *q, node *n)
{
    return (node_link *)((char *)n + q->link);
}

static void fifo_push(node_fifo *q, node *n)
{
    node_link *l = link_of(q, n);
    if (l->queued)
        return;
    l->queued = true;
    l->next = NULL;
    if (q->tail)
        link_of(q, q->tail)->next = n;
    else
        q->head = n;
    q->tail = n;
}

static node *fifo_pop(node_fifo *q)
{
    node *n = q->head;
    if (!n)
        return NULL;
    node_link *l = link_of(q, n);
    q->head = l->next;
    if (!q->head)
        q->tail = NULL;
    l->queued = false;
    return n;
}

static void fifo_remove(node_fifo *q, node *n)
{
    node_link *l = link_of(q, n);
    if (!l->queued)
        return;
    node **pp = &q->head, *prev = NULL;
    while (*pp && *pp != n)
        prev = *pp, pp = &link_of(q, *pp)->next;
    if (*pp)
        *pp = l->next;
    if (q->tail == n)
        q->tail = prev;
    l->queued = false;
}

/* The nodes waiting to apply are served first come first served: libuv runs the check handles
 * restarted last first, which alternates some nodes and leaves others waiting for many rounds
 * (a branch then acknowledges nothing for 15 s and the head office drops it as stuck). */
struct cs_node_turns {
    uint64_t budget_ns;
    uint64_t iteration; /* uv_now of the iteration spent_ns counts (constant in one check phase) */
    uint64_t spent_ns;
    node_fifo due;       /* the nodes waiting to apply */
    unsigned slots_free; /* catch-up slots nobody holds */
    node_fifo wait;      /* the nodes waiting for a slot */
};

cs_err cs_node_turns_new(unsigned budget_ms, cs_node_turns **out)
{
    cs_node_turns *t = calloc(1, sizeof(*t));
    if (!t)
        return CS_NO_MEMORY;
    t->budget_ns = (uint64_t)budget_ms * 1000000u;
    t->slots_free = TURNS_SLOTS;
    t->due.link = offsetof(node, turn);
    t->wait.link = offsetof(node, slot_wait);
    *out = t;
    return CS_OK;
}

void cs_node_turns_free(cs_node_turns *t)
{
    free(t);
}

static void turns_remove(cs_node_turns *t, node *n)
{
    if (t)
        fifo_remove(&t->due, n);
}

/* Applying a catch-up: with turns, only while holding a slot. */
static bool catching_up(const node *n)
{
    return n->o->turns && !n->o->receive_only && n->state == N_STREAMING && !n->caught_up;
}

static size_t rx_pause_bytes(const node *n)
{
    if (catching_up(n))
        return n->slot ? SLOT_BATCH_BYTES + CS_NET_FRAME_BYTES_MAX : SLOT_WAIT_PAUSE_BYTES;
    return (size_t)(n->batch_max + 1) * RX_PAUSE_BYTES_PER_SEGMENT;
}

static void read_again(node *n);
static void node_process(uv_check_t *h);

static void slot_grant(cs_node_turns *t)
{
    node *n;
    while (t->slots_free && (n = fifo_pop(&t->wait))) {
        if (!catching_up(n))
            continue;
        t->slots_free--;
        n->slot = true;
        n->slot_ms = cs__net_now_ms();
        if (n->rx_paused)
            read_again(n);
        if (!n->check_on && uv_check_start(&n->check, node_process) == 0)
            n->check_on = true;
    }
}

/* True when n holds a slot; else it takes a free one or waits in line for one. */
static bool slot_take(node *n)
{
    cs_node_turns *t = n->o->turns;
    if (n->slot)
        return true;
    if (!n->slot_wait.queued && t->slots_free && !t->wait.head) {
        t->slots_free--;
        n->slot = true;
        n->slot_ms = cs__net_now_ms();
        return true;
    }
    if (!n->slot_wait.queued) {
        n->slot_wait_ms = cs__net_now_ms();
        fifo_push(&t->wait, n);
    }
    return false;
}

static void slot_release(node *n)
{
    cs_node_turns *t = n->o->turns;
    if (!t)
        return;
    fifo_remove(&t->wait, n);
    if (n->slot) {
        n->slot = false;
        t->slots_free++;
        slot_grant(t);
    }
}

/* A slot's transaction is due once a full one is in, the stream paused (a frame other than a
 * SEGMENT follows them, CAUGHT_UP say), or SLOT_HOLD_MS passed without one. */
static bool slot_due(node *n)
{
    size_t off = 0, k = 0, len;
    unsigned type;
    const uint8_t *body;
    char m[160];
    while (k < SLOT_SEGMENTS_MAX && off < SLOT_BATCH_BYTES) {
        cs_err err = cs__rx_frame_at(&n->rx, off, &type, &body, &len, m, sizeof(m));
        if (err == CS_NOT_FOUND)
            return k > 0 && cs__net_now_ms() - n->slot_ms >= SLOT_HOLD_MS;
        if (err != CS_OK || type != CS__F_SEGMENT)
            return k > 0;
        off += CS_NET_FRAME_HEADER_BYTES + len;
        k++;
    }
    return true;
}

/* Whether n may apply in this turn: in step, or catching up with a slot and a transaction due. */
static bool turn_due(node *n)
{
    if (!catching_up(n))
        return true;
    return slot_take(n) && slot_due(n);
}

static void adapt_batch(node *n, uint64_t now)
{
    if (n->batch_max < 1)
        n->batch_max = 1;
    if (!n->yielded_ms)
        return;
    uint64_t waited = now - n->yielded_ms;
    n->yielded_ms = 0;
    if (waited > TURN_WAIT_HIGH_MS && n->batch_max > 1)
        n->batch_max /= 2;
    else if (waited < TURN_WAIT_LOW_MS && n->batch_max < BATCH_SEGMENTS_MAX)
        n->batch_max *= 2;
}

static void node_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void node_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void node_process(uv_check_t *h);

static void on_spin(uv_idle_t *h)
{
    (void)h; /* its being active is the point: poll does not block */
}

static void read_again(node *n)
{
    int rc = uv_read_start((uv_stream_t *)&n->tcp, node_alloc, node_read);
    if (rc < 0) {
        node_drop(n, CS_NETWORK, false, "cannot read: %s", uv_strerror(rc));
        return;
    }
    n->rx_paused = false;
    n->last_rx_ms = cs__net_now_ms(); /* the silence was ours */
}

static bool frame_whole(node *n)
{
    unsigned type;
    const uint8_t *body;
    size_t len;
    char m[160];
    return cs__rx_frame(&n->rx, &type, &body, &len, m, sizeof(m)) != CS_NOT_FOUND;
}

/* After a turn: come back next iteration while whole frames wait, read again once the buffer
 * has room. */
static void turn_end(node *n, bool more)
{
    if (n->state == N_CLOSING || n->state == N_IDLE)
        return;
    if (more) {
        if (!n->yielded_ms) /* since it last applied, not since its last check callback */
            n->yielded_ms = cs__net_now_ms();
        if (!n->check_on && uv_check_start(&n->check, node_process) == 0)
            n->check_on = true;
        if (!n->spin_on && uv_idle_start(&n->spin, on_spin) == 0)
            n->spin_on = true;
    } else if (n->spin_on) {
        uv_idle_stop(&n->spin);
        n->spin_on = false;
    }
    if (n->rx_paused && (n->rx.len < rx_pause_bytes(n) || !frame_whole(n)))
        read_again(n);
}

static bool segment_due(node *n)
{
    unsigned type;
    const uint8_t *body;
    size_t len;
    char m[160];
    return n->state == N_STREAMING &&
           cs__rx_frame(&n->rx, &type, &body, &len, m, sizeof(m)) == CS_OK && type == CS__F_SEGMENT;
}

/* Applies one transaction for each node at the front of the queue while the iteration's budget
 * lasts; a node with more segments goes to the back. Run from whichever node's check comes
 * first in the iteration. */
static void turns_serve(cs_node_turns *t, uv_loop_t *loop)
{
    if (t->iteration != uv_now(loop)) {
        t->iteration = uv_now(loop);
        t->spent_ns = 0;
    }
    node *n;
    while (t->spent_ns < t->budget_ns && (n = fifo_pop(&t->due))) {
        if (!segment_due(n) || !turn_due(n))
            continue;
        adapt_batch(n, cs__net_now_ms());
        uint64_t t0 = uv_hrtime();
        apply_batch(n);
        t->spent_ns += uv_hrtime() - t0;
        if (segment_due(n) && turn_due(n))
            fifo_push(&t->due, n);
        /* Other frames after the batch (CAUGHT_UP, say) are node_process's, next iteration:
         * nothing else would run it before the next read, which may be a heartbeat away. */
        turn_end(n, n->turn.queued || (frame_whole(n) && !segment_due(n)));
    }
}

static void node_process(uv_check_t *h)
{
    node *n = h->data;
    uv_check_stop(h);
    n->check_on = false;
    cs_node_turns *turns = n->o->turns;
    if (!turns)
        adapt_batch(n, cs__net_now_ms());
    unsigned type;
    const uint8_t *body;
    size_t len;
    char m[160];
    cs_err err = CS_OK;
    bool applied = false;
    while (n->state != N_CLOSING && n->state != N_IDLE &&
           (err = cs__rx_frame(&n->rx, &type, &body, &len, m, sizeof(m))) == CS_OK) {
        if (type == CS__F_SEGMENT && n->state == N_STREAMING && !n->o->receive_only) {
            if (n->hold.on && !n->hold.trying) { /* held: not applied; a try streams again */
                n->hold.skipped++;
                cs__rx_consume(&n->rx);
                continue;
            }
            if (turns) { /* wait in line (turns_serve); catching up, for a slot first */
                if (turn_due(n))
                    fifo_push(&turns->due, n);
                break;
            }
            if (applied)
                break; /* one transaction per turn */
            apply_batch(n);
            applied = true;
            continue;
        }
        on_frame(n, type, body, len);
        if (n->state != N_CLOSING && n->state != N_IDLE)
            cs__rx_consume(&n->rx);
    }
    if (err == CS_INVALID_INPUT)
        node_drop(n, CS_INVALID_INPUT, true, "%s", m);
    if (turns)
        turns_serve(turns, n->loop);
    turn_end(n, turns ? n->turn.queued : err == CS_OK);
}

/* Reads land straight in the frame buffer, NODE_READ_BYTES at a time (a catch-up is megabytes of
 * segments: one copy and a quarter of the reads fewer than through a separate read buffer). */
#define NODE_READ_BYTES (256u * 1024u)
#define NODE_TURNS_RCVBUF_BYTES (512 * 1024) /* SO_RCVBUF with turns (the kernel doubles it) */
#define NODE_RX_KEEP_BYTES (2u * 1024u * 1024u)

static void node_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    node *n = h->data;
    uint8_t *p;
    size_t avail;
    if (cs__rx_space(&n->rx, NODE_READ_BYTES, &p, &avail) != CS_OK) {
        *buf = uv_buf_init(NULL, 0); /* node_read gets UV_ENOBUFS */
        return;
    }
    *buf = uv_buf_init((char *)p, avail > UINT_MAX ? UINT_MAX : (unsigned)avail);
}

static void node_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    node *n = st->data;
    (void)buf;
    if (nread < 0) {
        node_drop(n, CS_NETWORK, false, "%s",
                  nread == UV_EOF       ? "the head office closed the connection"
                  : nread == UV_ENOBUFS ? "out of memory"
                                        : uv_strerror((int)nread));
        return;
    }
    if (nread == 0 || n->state == N_CLOSING)
        return;
    n->last_rx_ms = cs__net_now_ms();
    n->bytes_received += (uint64_t)nread;
    cs__rx_commit(&n->rx, (size_t)nread); /* node_alloc's room, filled */
    if (!n->rx_paused && n->rx.len >= rx_pause_bytes(n) && uv_read_stop(st) == 0) {
        n->rx_paused = true;
        n->paused_ms = n->last_rx_ms;
    }
    if (!n->check_on && uv_check_start(&n->check, node_process) == 0)
        n->check_on = true;
}

static void on_connected(uv_connect_t *req, int status)
{
    node *n = req->data;
    if (status < 0) {
        node_drop(n, CS_NETWORK, false, "cannot reach the head office at %s: %s", n->link.head,
                  uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&n->tcp, 1);
    node_log(n, CS_NET_LOG_INFO, "connect", CS_OK, "connected to the head office at %s",
             n->link.head);
    n->last_rx_ms = n->last_tx_ms = cs__net_now_ms();
    n->caught_up = false;
    n->target = 0;
    randombytes_buf(n->cnonce, sizeof(n->cnonce));
    int rc = uv_read_start((uv_stream_t *)&n->tcp, node_alloc, node_read);
    if (rc < 0) {
        node_drop(n, CS_NETWORK, false, "cannot read: %s", uv_strerror(rc));
        return;
    }
    cs__pk p;
    cs__pk_init(&p, 4);
    cs__pk_key(&p, "proto");
    msgpack_pack_array(&p.pk, 2);
    msgpack_pack_uint32(&p.pk, CS_NET_PROTO_VERSION);
    msgpack_pack_uint32(&p.pk, CS_NET_PROTO_VERSION);
    cs__pk_uint(&p, "shop", n->link.shop);
    cs__pk_bin(&p, "nonce", n->cnonce, sizeof(n->cnonce));
    cs__pk_str(&p, "mode",
               n->o->mode == CS_NODE_JOIN   ? "join"
               : n->o->mode == CS_NODE_PULL ? "pull"
                                            : "follow");
    n->state = N_HELLO_SENT;
    node_send(n, cs__pk_frame(&p, CS__F_HELLO));
    cs__pk_destroy(&p);
}

static void node_connect(node *n)
{
    if (n->done)
        return;
    int rc = uv_tcp_init_ex(n->loop, &n->tcp, n->addr.ss_family);
    if (rc == 0 && n->o->turns) {
        /* Many branches in one process ("Taking turns"): the kernel's receive buffer of each
         * is bounded, set before connecting so the window scale fits it. Autotuned, the waiting
         * branches' buffers grew to 7 MB each, 1,000 of them pushed TCP into memory pressure,
         * and the kernel dropped segments and backed its retransmissions off to minutes. */
        int v = NODE_TURNS_RCVBUF_BYTES;
        rc = uv_recv_buffer_size((uv_handle_t *)&n->tcp, &v);
        if (rc < 0)
            uv_close((uv_handle_t *)&n->tcp, NULL);
    }
    if (rc < 0) {
        n->done = true;
        n->result = CS_NETWORK;
        snprintf(n->errmsg, sizeof(n->errmsg), "cannot make a socket: %s", uv_strerror(rc));
        node_finish(n);
        return;
    }
    n->tcp.data = n;
    n->creq.data = n;
    n->rx.max_bytes = CS_NET_FRAME_BYTES_MAX;
    n->rx.keep_bytes = NODE_RX_KEEP_BYTES;
    n->state = N_CONNECTING;
    n->opened_ms = cs__net_now_ms();
    rc = uv_tcp_connect(&n->creq, &n->tcp, (struct sockaddr *)&n->addr, on_connected);
    if (rc < 0)
        node_drop(n, CS_NETWORK, false, "cannot reach the head office at %s: %s", n->link.head,
                  uv_strerror(rc));
}

/* ---- metrics (docs/design.md, "Metrics") ----------------------------------------------- */

static void node_gauge(cs__mtext *t, node *n, const char *name, const char *help, double v)
{
    cs__mtext_family(t, name, "gauge", help);
    fprintf(t->f, "%s{shop=\"%llu\",name=\"", name, (unsigned long long)n->link.shop);
    cs__mtext_label(t, n->name);
    fprintf(t->f, "\"} %.17g\n", v);
}

static void node_counter(cs__mtext *t, const char *name, const char *help, uint64_t v)
{
    cs__mtext_family(t, name, "counter", help);
    fprintf(t->f, "%s %llu\n", name, (unsigned long long)v);
}

static void node_by_code(cs__mtext *t, const char *name, const char *label, const char *help,
                         const uint64_t *by)
{
    cs__mtext_family(t, name, "counter", help);
    for (int c = 1; c < CS_ERR_COUNT; c++)
        if (by[c])
            fprintf(t->f, "%s{%s=\"%s\"} %llu\n", name, label, cs_err_name((cs_err)c),
                    (unsigned long long)by[c]);
}

/* Renders /metrics into the snapshot: loop thread, once a second. */
static void node_publish(node *n, uint64_t now)
{
    if (n->rate_ms && now > n->rate_ms)
        n->rate = (double)(n->cursor - n->rate_cursor) * 1000.0 / (double)(now - n->rate_ms);
    n->rate_ms = now;
    n->rate_cursor = n->cursor;
    n->last_metrics_ms = now;
    uint64_t outbox = 0;
    if (cs_engine_outbox_count(n->e, &outbox) != CS_OK)
        outbox = 0;
    uint64_t lag = n->head_seq > n->cursor ? n->head_seq - n->cursor : 0;
    cs__mtext t;
    char *text;
    size_t len;
    if (cs__mtext_open(&t) != CS_OK)
        return;
    node_gauge(&t, n, "chainsync_branch_cursor", "The last event applied durably.",
               (double)n->cursor);
    node_gauge(&t, n, "chainsync_head_sequence", "The head office's head, as last heard.",
               (double)n->head_seq);
    node_gauge(&t, n, "chainsync_branch_lag_events", "Events behind the head as last heard.",
               (double)lag);
    node_gauge(&t, n, "chainsync_branch_lag_seconds",
               "Seconds since the branch was last in step (0 when in step).",
               lag && n->behind_since_ms ? (double)(now - n->behind_since_ms) / 1000.0 : 0.0);
    node_gauge(&t, n, "chainsync_branch_connected", "1 while streaming from the head office.",
               n->state == N_STREAMING ? 1 : 0);
    node_gauge(&t, n, "chainsync_branch_last_contact_timestamp_seconds",
               "When the last bytes from the head office arrived (Unix time).",
               (double)n->last_rx_ms / 1000.0);
    node_gauge(&t, n, "chainsync_outbox_entries",
               "Shared-record writes waiting for the head office's answer.", (double)outbox);
    node_gauge(&t, n, "chainsync_apply_rate_events_per_second",
               "Events applied per second over the last second.", n->rate);
    node_gauge(&t, n, "chainsync_sync_point_sequence", "The last sync point applied.",
               (double)n->sync_seq);
    node_gauge(&t, n, "chainsync_branch_held",
               "1 while the branch holds at an event it cannot apply.", n->hold.on ? 1 : 0);
    node_gauge(&t, n, "chainsync_branch_held_sequence",
               "The event the branch holds at (0 when none).",
               (double)(n->hold.on ? n->hold.seq : 0));
    node_counter(&t, "chainsync_events_applied_total", "Events applied by this node.",
                 n->events_applied);
    node_counter(&t, "chainsync_segments_received_total", "Log segments received.",
                 n->segments_received);
    node_counter(&t, "chainsync_received_bytes_total", "Bytes received from the head office.",
                 n->bytes_received);
    node_counter(&t, "chainsync_reconnects_total", "Reconnection attempts scheduled.",
                 n->reconnects);
    node_counter(&t, "chainsync_hold_segments_skipped_total",
                 "Segments received while held, not applied (streamed again on the next try).",
                 n->hold.skipped);
    node_by_code(&t, "chainsync_drops_total", "reason", "Streaming connections lost, by reason.",
                 n->drops);
    node_by_code(&t, "chainsync_handshake_refusals_total", "code",
                 "Handshakes the head office refused, by error code.", n->refusals);
    if (cs__mtext_close(&t, &text, &len) == CS_OK)
        cs__snapshot_publish(n->snap, CS__DOC_METRICS, text, len);
}

static cs_err node_http(node *n)
{
    cs_shop_info self;
    if (cs_engine_self(n->e, &self) == CS_OK)
        snprintf(n->name, sizeof(n->name), "%s", self.name);
    if (cs__snapshot_new(&n->snap) != CS_OK) {
        snprintf(n->errmsg, sizeof(n->errmsg), "out of memory");
        return CS_NO_MEMORY;
    }
    node_publish(n, cs__net_now_ms());
    char bound[128];
    cs_err err = cs__http_start(n->o->http, n->snap, false, n->o->http_ready_file, bound,
                                sizeof(bound), &n->http, n->errmsg, sizeof(n->errmsg));
    if (err == CS_OK)
        node_log(n, CS_NET_LOG_INFO, "listen", CS_OK, "HTTP on %s: /metrics", bound);
    return err;
}

/* ---- a held event (docs/design.md, "A branch that never crash-loops"; net/hold.c) ------- */

/* Follow: the apply path refused a transaction of segments (whatever the code). Instead of a
 * drop that a final code makes an exit (and a supervisor a crash-loop) or a retry a spin, the
 * node holds: its cursor stays where the last commit left it, nothing after is applied, the
 * connection and the heartbeats go on, the head office hears of it in the next PING (sent
 * now), and a try follows after a backoff or on `branch retry`. Join and pull end as before. */
static bool node_hold(node *n, cs_err err)
{
    if (n->o->mode != CS_NODE_FOLLOW)
        return false;
    bool again = n->hold.on;
    uint64_t now = cs__net_now_ms();
    /* the projection's sentence, else the storage's (storage_full is the log's to explain) */
    const char *why = cs_branch_errmsg(n->b);
    if (!why[0])
        why = cs_log_errmsg(cs_engine_log(n->e));
    char m[160];
    cs_errmsg_format(m, sizeof(m), err, "%s", why[0] ? why : "the branch cannot apply it");
    cs_err rec = cs__hold_enter(n->b, &n->hold, n->cursor + 1, err, m, now);
    node_log(n, again ? CS_NET_LOG_WARN : CS_NET_LOG_ERROR, "held", err,
             "holding at event %llu, which cannot be applied (try %llu; next in %llu ms or on "
             "branch retry): %s: %s",
             (unsigned long long)n->hold.seq, (unsigned long long)n->hold.attempts,
             (unsigned long long)(n->hold.next_ms - now), cs_err_name(err), n->hold.message);
    if (rec != CS_OK)
        node_log(n, CS_NET_LOG_WARN, "hold_not_recorded", rec,
                 "cannot record the held event for status: %s", cs_err_name(rec));
    if (n->state == N_STREAMING)
        send_report(n, CS__F_PING, "time", now);
    return true;
}

/* The held event went through (a try after the cause went away). */
static void node_resume(node *n)
{
    uint64_t seq = n->hold.seq, tries = n->hold.attempts;
    cs_err err = cs__hold_leave(n->b, &n->hold);
    node_log(n, CS_NET_LOG_INFO, "resumed", CS_OK,
             "event %llu applied after %llu failed tries: applying again", (unsigned long long)seq,
             (unsigned long long)tries);
    if (err != CS_OK)
        node_log(n, CS_NET_LOG_WARN, "hold_not_recorded", err,
                 "cannot remove the held event's record: %s", cs_err_name(err));
}

/* A try streams again from the durable cursor: the segments that came while held were not
 * kept, so the connection is closed (no error) and made again at once. */
static void node_hold_check(node *n, uint64_t now)
{
    bool asked;
    if (!n->hold.on || n->finished || !cs__hold_due(n->b, &n->hold, now, &asked))
        return;
    n->hold.trying = true;
    node_log(n, CS_NET_LOG_INFO, "retry", CS_OK, "trying event %llu again (%s)",
             (unsigned long long)n->hold.seq, asked ? "branch retry" : "backoff");
    n->attempt = 0; /* the reconnect comes within CS_NET_BACKOFF_BASE_MS */
    if (n->state > N_IDLE && n->state < N_CLOSING)
        node_drop(n, CS_OK, false, "%s", "trying the held event again");
}

/* What a previous run left: held at start means a try at once (an upgrade may have fixed it). */
static void node_hold_start(node *n)
{
    cs_err err = cs__hold_start(n->b, &n->hold);
    if (err != CS_OK)
        node_log(n, CS_NET_LOG_WARN, "hold_not_recorded", err,
                 "cannot read the held event's record: %s", cs_err_name(err));
    else if (n->hold.on)
        node_log(n, CS_NET_LOG_INFO, "retry", CS_OK,
                 "held at event %llu since the last run (%s): trying it again",
                 (unsigned long long)n->hold.seq, cs_err_name(n->hold.code));
}

/* ---- timers, watch, signals -------------------------------------------------------------- */

static void node_tick(uv_timer_t *t)
{
    node *n = t->data;
    uint64_t now = cs__net_now_ms();
    /* Silence is the head office's only for the time this loop was listening: a tick that
     * comes late (the loop was busy applying, for this node or the others sharing it) runs
     * before the loop's next reads, so it knows nothing about the connection: the wait starts
     * again (a head office that is really gone is found once the loop keeps time again). */
    if (n->last_tick_ms && now - n->last_tick_ms > 4 * NODE_TICK_MS &&
        n->last_rx_ms < now - NODE_TICK_MS)
        n->last_rx_ms = now - NODE_TICK_MS;
    n->last_tick_ms = now;
    if (n->rx_paused)
        n->last_rx_ms = now; /* reads stopped by us (turn_end): the head office is not silent */
    /* A branch whose turns come seldom (many on a loop) still reads a little every
     * NODE_PAUSED_READ_MS: the head office drops a connection whose queue does not drain for
     * CS_NET_STUCK_MS, and this one is slow, not stuck (one read, then node_read pauses again).
     * One waiting for a catch-up slot says so in its PINGs instead ("Taking turns"). */
    if (n->rx_paused && n->state == N_STREAMING && !n->slot_wait.queued &&
        now - n->paused_ms >= NODE_PAUSED_READ_MS)
        read_again(n);
    if (n->slot && !n->check_on && segment_due(n) && slot_due(n) && /* SLOT_HOLD_MS passed */
        uv_check_start(&n->check, node_process) == 0)
        n->check_on = true;
    uint64_t limit = n->o->timeout_ms ? n->o->timeout_ms : CS_NET_HANDSHAKE_MS;
    if (n->state >= N_CONNECTING && n->state < N_STREAMING && now - n->opened_ms > limit)
        node_drop(n, CS_NETWORK, false, "no answer from the head office at %s within %llu ms",
                  n->link.head, (unsigned long long)limit);
    else if (n->state == N_STREAMING &&
             now > n->last_rx_ms + CS_NET_DEAD_MS) /* read_again: may be > now */
        node_drop(n, CS_NETWORK, false, "nothing from the head office for %llu ms",
                  (unsigned long long)(now - n->last_rx_ms));
    else if (n->state == N_STREAMING && now - n->last_tx_ms >= CS_NET_HEARTBEAT_MS)
        send_report(n, CS__F_PING, "time", now);
    if (n->state == N_STREAMING) {
        report_outbox(n); /* a write queued that the watch did not see */
        send_outbox(n);   /* the safety net behind the watch */
    }
    node_hold_check(n, now);
    if (n->snap && now - n->last_metrics_ms >= CS_NET_METRICS_EVERY_MS)
        node_publish(n, now);
}

static void node_watch(uv_fs_event_t *h, const char *file, int events, int status)
{
    (void)file;
    (void)events;
    if (status == 0) {
        report_outbox(h->data); /* a write was queued (or the directory changed otherwise) */
        send_outbox(h->data);
        node_hold_check(h->data, cs__net_now_ms()); /* `branch retry` writes the directory */
    }
}

void cs_node_stop(cs_node *n)
{
    if (n->nats) {
        cs__natsnode_stop(n->nats);
        return;
    }
    n->done = true;
    n->result = CS_OK;
    if (n->state == N_IDLE)
        node_finish(n);
    else if (n->state != N_CLOSING) {
        n->state = N_CLOSING;
        uv_close((uv_handle_t *)&n->tcp, on_closed);
    }
}

static void handle_closed(uv_handle_t *h)
{
    node *n = h->data;
    cs_assert(n->handles_open > 0);
    if (--n->handles_open > 0)
        return;
    cs__rx_free(&n->rx);
    sodium_memzero(&n->link, sizeof(n->link));
    cs__http_stop(n->http); /* its thread is gone before the snapshot is freed */
    cs__snapshot_free(n->snap);
    free(n);
}

void cs_node_free(cs_node *n)
{
    if (!n)
        return;
    if (n->nats) {
        cs__natsnode_free(n->nats, n); /* frees n too */
        return;
    }
    cs_assert(n->finished); /* the connection is closed; only the timers and watch remain */
    uv_close((uv_handle_t *)&n->tick, handle_closed);
    uv_close((uv_handle_t *)&n->retry, handle_closed);
    uv_close((uv_handle_t *)&n->check, handle_closed);
    uv_close((uv_handle_t *)&n->spin, handle_closed);
    if (n->watching)
        uv_close((uv_handle_t *)&n->watch, handle_closed);
}

const char *cs_node_errmsg(const cs_node *n)
{
    return n->errmsg;
}

void cs_node_counters_get(const cs_node *n, cs_node_counters *out)
{
    *out = (cs_node_counters){.bytes_received = n->bytes_received,
                              .segments_received = n->segments_received,
                              .events_applied = n->events_applied,
                              .reconnects = n->reconnects};
}

cs_err cs_node_cursor(const cs_node *n, uint64_t *cursor_out)
{
    if (n->nats) {
        *cursor_out = cs__natsnode_cursor(n->nats);
        return CS_OK;
    }
    *cursor_out = n->cursor;
    return CS_OK;
}

static int node_handles(node *n, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    int rc = uv_timer_init(n->loop, &n->tick);
    n->tick.data = n;
    n->handles_open += rc == 0;
    if (rc == 0 && (rc = uv_timer_init(n->loop, &n->retry)) == 0) {
        n->retry.data = n;
        n->handles_open++;
    }
    if (rc == 0 && (rc = uv_check_init(n->loop, &n->check)) == 0) {
        n->check.data = n;
        n->handles_open++;
    }
    if (rc == 0 && (rc = uv_idle_init(n->loop, &n->spin)) == 0) {
        n->spin.data = n;
        n->handles_open++;
    }
    if (rc == 0)
        rc = uv_timer_start(&n->tick, node_tick, NODE_TICK_MS, NODE_TICK_MS);
    if (rc == 0 && !n->o->no_watch && (rc = uv_fs_event_init(n->loop, &n->watch)) == 0) {
        n->watch.data = n;
        n->watching = true;
        n->handles_open++;
        rc = uv_fs_event_start(&n->watch, node_watch, path, 0);
    }
    return rc;
}

/* ---- running ----------------------------------------------------------------------------- */

bool cs_node_running(const char *dir)
{
    int fd = cs__dir_lock(dir, "node.lock", LOCK_SH);
    if (fd >= 0)
        close(fd);
    return fd == -2;
}

static cs_err node_setup(node *n)
{
    cs_err err = CS_OK;
    cs_branch_state st;
    if (n->o->mode == CS_NODE_JOIN) {
        snprintf(n->link.head, sizeof(n->link.head), "%s", n->o->head ? n->o->head : "");
        n->link.shop = n->o->shop;
        cs__link old;
        if (cs__link_load(n->b, &old) == CS_OK && old.shop == n->o->shop)
            n->link.log_id = old.log_id; /* joining again: it must be the same network */
        if ((err = cs_branch_bind(n->b, n->o->shop)) != CS_OK)
            snprintf(n->errmsg, sizeof(n->errmsg), "%s", cs_branch_errmsg(n->b));
    } else if (cs_branch_state_get(n->b, &st) == CS_OK && st.unlinked) {
        err = CS_NOT_IN_NETWORK;
        snprintf(n->errmsg, sizeof(n->errmsg),
                 "this directory was unlinked from its network: it is a single store now");
    } else if ((err = cs__link_load(n->b, &n->link)) == CS_NOT_FOUND) {
        err = CS_INVALID_INPUT;
        snprintf(n->errmsg, sizeof(n->errmsg),
                 "this directory has not joined a network: run chainsync branch join");
    } else if (err != CS_OK) {
        snprintf(n->errmsg, sizeof(n->errmsg), "cannot read the stored link (%s)",
                 cs_err_name(err));
    } else if (n->o->head) {
        snprintf(n->link.head, sizeof(n->link.head), "%s", n->o->head);
    }
    if (err == CS_OK && cs__parse_addr(n->link.head, &n->addr) != CS_OK) {
        err = CS_INVALID_INPUT;
        snprintf(n->errmsg, sizeof(n->errmsg), "--head wants HOST:PORT, not '%s'", n->link.head);
    }
    return err;
}

cs_err cs_node_start(uv_loop_t *loop, cs_branch *b, const char *dir, const cs_node_options *o,
                     cs_node_done_fn done, void *arg, cs_node **out, char *errmsg,
                     size_t errmsg_len)
{
    if (sodium_init() < 0) {
        snprintf(errmsg, errmsg_len, "libsodium cannot start");
        return CS_NO_MEMORY;
    }
    node *n = calloc(1, sizeof(*n));
    if (!n) {
        snprintf(errmsg, errmsg_len, "out of memory");
        return CS_NO_MEMORY;
    }
    n->loop = loop;
    n->b = b;
    n->e = cs_branch_engine(b);
    n->o = o;
    n->batch_max = 1; /* doubles each turn that waits for no one (adapt_batch) */
    n->state_ok = o->mode != CS_NODE_JOIN; /* a join has a link only once WELCOME came */
    n->out = o->log ? o->log : stderr;
    n->done_cb = done;
    n->done_arg = arg;
    cs__netlog_init(&n->nl, n->out, "branch", o->log_level, o->log_format);
    if (cs__nats_wanted(b, o)) { /* the NATS JetStream transport (nats_sub.c) */
        cs_err err = cs__natsnode_start(loop, b, dir, o, n, done, arg, n->errmsg, sizeof(n->errmsg),
                                        &n->nats);
        if (err != CS_OK) {
            snprintf(errmsg, errmsg_len, "%s", n->errmsg);
            free(n);
            return err;
        }
        *out = n;
        return CS_OK;
    }
    cs_err err = node_setup(n);
    if (err == CS_OK)
        node_log(n, CS_NET_LOG_INFO, "start", CS_OK, "starting on %s, head office at %s", dir,
                 n->link.head);
    if (err == CS_OK && o->mode == CS_NODE_FOLLOW && !o->receive_only)
        node_hold_start(n);
    if (err == CS_OK && o->http)
        err = node_http(n);
    if (err == CS_OK && node_handles(n, dir) != 0) {
        err = CS_IO;
        snprintf(n->errmsg, sizeof(n->errmsg), "cannot start the node's timers");
    }
    if (err != CS_OK) {
        snprintf(errmsg, errmsg_len, "%s", n->errmsg);
        cs__http_stop(n->http);
        n->http = NULL;
        cs__snapshot_free(n->snap);
        n->snap = NULL;
        n->finished = true;
        n->done_cb = NULL;
        if (n->handles_open)
            cs_node_free(n); /* frees it once its handles have closed */
        else
            free(n);
        return err;
    }
    n->result = CS_OK;
    node_connect(n);
    *out = n;
    return CS_OK;
}

/* ---- one node in a loop of its own, until done or a signal ------------------------------ */

typedef struct run_ctx {
    uv_signal_t sigint, sigterm;
    cs_node *n;
    cs_err result;
    char *errmsg;
    size_t errmsg_len;
} run_ctx;

static void run_signal(uv_signal_t *s, int signum)
{
    run_ctx *r = s->data;
    node_log(r->n, CS_NET_LOG_INFO, "stop", CS_OK, "stopping (signal %d)", signum);
    cs_node_stop(r->n);
}

static void run_done(cs_node *n, cs_err result, void *arg)
{
    run_ctx *r = arg;
    if (n->nats)
        n->cursor = cs__natsnode_cursor(n->nats);
    progress(n, true);
    if (result == CS_OK && n->o->mode == CS_NODE_FOLLOW)
        node_log(n, CS_NET_LOG_INFO, "stop", CS_OK, "stopped at event %llu",
                 (unsigned long long)n->cursor);
    r->result = result;
    snprintf(r->errmsg, r->errmsg_len, "%s", n->errmsg);
    uv_close((uv_handle_t *)&r->sigint, NULL);
    uv_close((uv_handle_t *)&r->sigterm, NULL);
    cs_node_free(n);
}

cs_err cs_node_run(cs_branch *b, const char *dir, const cs_node_options *o, char *errmsg,
                   size_t errmsg_len)
{
    int lock = cs__dir_lock(dir, "node.lock", LOCK_EX);
    if (lock < 0) {
        snprintf(errmsg, errmsg_len,
                 lock == -2 ? "another branch node runs on %s" : "cannot create %s/node.lock", dir);
        return lock == -2 ? CS_FORBIDDEN : CS_IO;
    }
    uv_loop_t loop;
    run_ctx r = {.errmsg = errmsg, .errmsg_len = errmsg_len, .result = CS_OK};
    errmsg[0] = '\0';
    cs_err err = uv_loop_init(&loop) == 0 ? CS_OK : CS_IO;
    if (err != CS_OK) {
        snprintf(errmsg, errmsg_len, "cannot start the node's loop");
        close(lock);
        return err;
    }
    bool si = uv_signal_init(&loop, &r.sigint) == 0;
    bool st = si && uv_signal_init(&loop, &r.sigterm) == 0;
    r.sigint.data = r.sigterm.data = &r;
    if (si && st)
        err = cs_node_start(&loop, b, dir, o, run_done, &r, &r.n, errmsg, errmsg_len);
    else
        err = CS_IO;
    if (err == CS_OK && (uv_signal_start(&r.sigint, run_signal, SIGINT) != 0 ||
                         uv_signal_start(&r.sigterm, run_signal, SIGTERM) != 0))
        cs_node_stop(r.n); /* without signals a follower could not be stopped cleanly */
    cs__signals_unblock(); /* one that came during start-up (the CLI blocks them) is handled now */
    if (err != CS_OK) {    /* run_done never comes: close the signals here */
        if (si)
            uv_close((uv_handle_t *)&r.sigint, NULL);
        if (st)
            uv_close((uv_handle_t *)&r.sigterm, NULL);
    }
    uv_run(&loop, UV_RUN_DEFAULT); /* until the node and the signals have closed */
    int rc = uv_loop_close(&loop);
    cs_assert(rc == 0);
    (void)rc;
    close(lock);
    return err != CS_OK ? err : r.result;
}
