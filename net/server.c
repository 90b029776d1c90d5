/*
 * server.c: `chainsync serve`: one libuv loop that accepts branch connections, runs the
 * handshake of docs/protocol.md, applies the branches' shared-record writes through the engine,
 * and keeps each branch's cursor and last contact (docs/design.md, "Network"). What goes out to a
 * connection (its write queue, its closing, the log streamed to it) is stream.c's, below this
 * file: stream.c calls nothing here.
 *
 * Lifetimes (libuv's rule: memory of a handle is freed only in its close callback): a cs__conn is
 * allocated at accept and freed in cs__conn_closed (stream.c); it stays in the server's list
 * until then, so every walk of the list skips CLOSING connections. Pending writes complete (or are
 * cancelled) before the close callback runs, and each holds its own buffer reference.
 *
 * Wake-up: a file watch (inotify through uv_fs_event) on the directory's data.mdb fires when any
 * process commits; a safety timer re-reads the head every CS_NET_SAFETY_MS, so a missed
 * notification delays an event, never loses it.
 */
#include "net/nats_int.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 250u
#define CLOSING_GRACE_MS 2000u

/* ---- slowing repeated failed logins ------------------------------------------------------
 *
 * Why: a branch's password is guessed by trying it; each guess costs the attacker one
 * connection and the head office one proof check. After a failed login from an address (a wrong
 * proof, or an id that is not a branch), every CHALLENGE to that address is held back, counted
 * from its HELLO, by LOGIN_DELAY_BASE_MS * 2^(failures-1), at most LOGIN_DELAY_MAX_MS, and HELLOs
 * that arrive at once from that address are answered one delay apart (next_slot_ms), so parallel
 * connections do not multiply the rate. A HELLO whose turn would come after the handshake limit is
 * refused at once (auth_failed) without a challenge. A successful login from the address clears it;
 * an address with no failure for LOGIN_FORGET_MS is forgotten. The table holds CS__LOGIN_FAIL_ADDRS
 * addresses; when full, the one whose last failure is oldest is replaced, so memory stays bounded
 * whatever the number of attackers. Only the CHALLENGE waits: other connections, and branches from
 * other addresses, are served as before. */
#define LOGIN_DELAY_BASE_MS 500u
#define LOGIN_DELAY_MAX_MS 8000u
#define LOGIN_FORGET_MS (15u * 60u * 1000u)
_Static_assert(LOGIN_DELAY_MAX_MS + 2 * TICK_MS < CS_NET_HANDSHAKE_MS,
               "a slowed login still fits in the handshake limit");

/* The peer's address without its port (c->peer is "IP:PORT"). */
static void peer_addr(const cs__conn *c, char *out, size_t len)
{
    snprintf(out, len, "%s", c->peer);
    char *colon = strrchr(out, ':');
    if (colon)
        *colon = '\0';
}

static uint64_t login_delay_ms(uint32_t fails)
{
    if (fails == 0)
        return 0;
    uint64_t d = LOGIN_DELAY_BASE_MS;
    for (uint32_t i = 1; i < fails && d < LOGIN_DELAY_MAX_MS; i++)
        d *= 2;
    return d < LOGIN_DELAY_MAX_MS ? d : LOGIN_DELAY_MAX_MS;
}

/* The entry of addr, or NULL; with `create`, a new or recycled entry (never NULL then). */
static cs__login_fail *login_find(cs__server *s, const char *addr, uint64_t now, bool create)
{
    cs__login_fail *oldest = &s->login_fails[0];
    for (unsigned i = 0; i < CS__LOGIN_FAIL_ADDRS; i++) {
        cs__login_fail *f = &s->login_fails[i];
        if (f->addr[0] && now - f->last_fail_ms > LOGIN_FORGET_MS)
            f->addr[0] = '\0';
        if (f->addr[0] && strcmp(f->addr, addr) == 0)
            return f;
        if (!f->addr[0]) {
            if (oldest->addr[0])
                oldest = f; /* a free slot beats any used one */
        } else if (oldest->addr[0] && f->last_fail_ms < oldest->last_fail_ms) {
            oldest = f;
        }
    }
    if (!create)
        return NULL;
    memset(oldest, 0, sizeof(*oldest));
    snprintf(oldest->addr, sizeof(oldest->addr), "%s", addr);
    oldest->last_fail_ms = now;
    return oldest;
}

/* When the CHALLENGE for a HELLO from c's address may go out (now when it has no failures). */
static uint64_t login_slot(cs__server *s, const cs__conn *c, uint64_t now, uint32_t *fails_out)
{
    char addr[sizeof(((cs__conn *)0)->peer)];
    peer_addr(c, addr, sizeof(addr));
    cs__login_fail *f = login_find(s, addr, now, false);
    *fails_out = f ? f->fails : 0;
    if (!f || f->fails == 0)
        return now;
    uint64_t d = login_delay_ms(f->fails), due = now + d;
    if (due < f->next_slot_ms)
        due = f->next_slot_ms;
    if (due - now <= LOGIN_DELAY_MAX_MS)
        f->next_slot_ms = due + d; /* only a HELLO that is answered takes a turn */
    return due;
}

static void login_result(cs__server *s, const cs__conn *c, bool ok)
{
    char addr[sizeof(((cs__conn *)0)->peer)];
    uint64_t now = cs__net_now_ms();
    peer_addr(c, addr, sizeof(addr));
    cs__login_fail *f = login_find(s, addr, now, !ok);
    if (ok && f) {
        f->addr[0] = '\0';
    } else if (!ok) {
        f->fails += f->fails < 64;
        f->last_fail_ms = now;
    }
}

/* ---- the handshake ----------------------------------------------------------------------- */

static void send_challenge(cs__conn *c)
{
    cs__pk p;
    cs__pk_init(&p, 6);
    cs__pk_uint(&p, "proto", c->proto);
    cs__pk_bin(&p, "nonce", c->snonce, CS_NET_NONCE_BYTES);
    cs__pk_bin(&p, "salt", c->keys.params.salt, CS_AUTH_SALT_BYTES);
    cs__pk_uint(&p, "ops", c->keys.params.opslimit);
    cs__pk_uint(&p, "mem", c->keys.params.memlimit);
    cs__pk_uint(&p, "log_id", c->srv->log_id);
    cs__buf *f = cs__pk_frame(&p, CS__F_CHALLENGE);
    cs__pk_destroy(&p);
    if (!f) {
        cs__conn_close(c, CS_NO_MEMORY, "out of memory", true);
        return;
    }
    if (c->challenge_due_ms) /* held back: the handshake limit counts from now */
        c->opened_ms = cs__net_now_ms();
    c->challenge_due_ms = 0;
    cs__conn_send(c, f);
    cs__buf_unref(f);
}

static void conn_on_hello(cs__conn *c, const cs__body *b)
{
    cs__server *s = c->srv;
    const msgpack_object *proto = cs__body_get(b, "proto");
    const uint8_t *nonce;
    uint64_t shop;
    if (!proto || proto->type != MSGPACK_OBJECT_ARRAY || proto->via.array.size != 2 ||
        proto->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        proto->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        !cs__body_uint(b, "shop", &shop) || !cs__body_bin(b, "nonce", CS_NET_NONCE_BYTES, &nonce)) {
        cs__conn_close(c, CS_INVALID_INPUT, "HELLO needs proto [lo, hi], shop and a 32-byte nonce",
                       false);
        return;
    }
    uint64_t lo = proto->via.array.ptr[0].via.u64, hi = proto->via.array.ptr[1].via.u64;
    if (lo > CS_NET_PROTO_VERSION || hi < CS_NET_PROTO_VERSION) {
        char m[160];
        snprintf(m, sizeof(m),
                 "this head office speaks protocol %u to %u; the branch offered %llu to %llu",
                 CS_NET_PROTO_VERSION, CS_NET_PROTO_VERSION, (unsigned long long)lo,
                 (unsigned long long)hi);
        cs__conn_close(c, CS_PROTOCOL_MISMATCH, m, false);
        return;
    }
    cs_err err = cs_engine_shop_keys(s->e, shop, &c->keys, &c->known, &c->linked);
    if (err != CS_OK) {
        cs__conn_close(c, err, cs_engine_errmsg(s->e), false);
        return;
    }
    cs_str mode;
    c->joining =
        cs__body_str(b, "mode", &mode) && mode.len == 4 && memcmp(mode.ptr, "join", 4) == 0;
    c->shop = shop;
    c->proto = CS_NET_PROTO_VERSION;
    memcpy(c->cnonce, nonce, CS_NET_NONCE_BYTES);
    randombytes_buf(c->snonce, sizeof(c->snonce));
    c->state = CS__C_PROOF;
    uint64_t now = cs__net_now_ms();
    uint32_t fails;
    uint64_t due = login_slot(s, c, now, &fails);
    if (due - now > LOGIN_DELAY_MAX_MS) {
        char m[160];
        snprintf(m, sizeof(m), "%u failed logins from this address: try again in %llu s", fails,
                 (unsigned long long)((due - now + 999) / 1000));
        cs__conn_close(c, CS_AUTH_FAILED, m, false);
    } else if (due > now) {
        cs__server_logf(s, "connection from %s: %u failed logins: CHALLENGE held %llu ms", c->peer,
                        fails, (unsigned long long)(due - now));
        c->challenge_due_ms = due; /* sent by conn_tick */
    } else {
        send_challenge(c);
    }
}

static void conn_on_proof(cs__conn *c, const cs__body *b)
{
    cs__server *s = c->srv;
    const uint8_t *proof;
    if (!cs__body_bin(b, "proof", CS_AUTH_KEY_BYTES, &proof)) {
        cs__conn_close(c, CS_INVALID_INPUT, "PROOF needs a 32-byte proof", false);
        return;
    }
    if (c->challenge_due_ms) {
        cs__conn_close(c, CS_INVALID_INPUT, "PROOF before CHALLENGE", false);
        return;
    }
    uint8_t msg[CS__AUTH_MESSAGE_BYTES];
    cs__auth_message(msg, c->shop, c->cnonce, c->snonce, s->log_id, c->proto);
    /* The proof is checked for every id, known or not, so the answer takes the same path. */
    bool ok = cs_auth_proof_ok(&c->keys, msg, sizeof(msg), proof) && c->known;
    char m[160];
    /* An unlinked branch that proves itself may still stream, up to its unlink event: that is
     * how a branch that was offline when it was unlinked becomes a single store (R13). Anyone
     * else who is not a linked branch, and an unlinked one that cannot prove itself or asks to
     * join, gets the same answer as an unknown id. */
    bool unlinked_ok = ok && !c->linked && c->shop != s->self && !c->joining;
    login_result(s, c, ok && (c->linked || unlinked_ok));
    if (!c->linked && !unlinked_ok) {
        snprintf(m, sizeof(m), "shop %llu is not a branch of this network",
                 (unsigned long long)c->shop);
        cs__conn_close(c, CS_NOT_IN_NETWORK, m, false);
        return;
    }
    if (!ok) {
        snprintf(m, sizeof(m), "shop %llu: wrong password", (unsigned long long)c->shop);
        cs__conn_close(c, CS_AUTH_FAILED, m, false);
        return;
    }
    uint8_t sig[CS_AUTH_KEY_BYTES];
    cs_auth_server_signature(c->keys.server_key, msg, sizeof(msg), sig);
    cs_log_reader *r; /* WELCOME's head_seq is the head now, not as last pumped */
    if (cs_log_reader_open(s->log, &r) == CS_OK) {
        uint64_t head = 0;
        if (cs_log_reader_head(r, &head) == CS_OK && head > s->head)
            s->head = head;
        cs_log_reader_close(r);
    }
    cs__pk p;
    cs__pk_init(&p, 3);
    cs__pk_bin(&p, "signature", sig, sizeof(sig));
    cs__pk_uint(&p, "head", s->self);
    cs__pk_uint(&p, "head_seq", s->head);
    cs__buf *f = cs__pk_frame(&p, CS__F_WELCOME);
    cs__pk_destroy(&p);
    sodium_memzero(&c->keys, sizeof(c->keys)); /* not needed past this point */
    if (!f) {
        cs__conn_close(c, CS_NO_MEMORY, "out of memory", true);
        return;
    }
    c->state = CS__C_START;
    cs__conn_send(c, f);
    cs__buf_unref(f);
}

/* START: the branch's cursor must be a position of this log with the same chain value. */
static cs_err check_cursor(cs__server *s, uint64_t cursor, uint64_t chain, char *m, size_t mlen)
{
    cs_log_reader *r;
    cs_err err = cs_log_reader_open(s->log, &r);
    uint64_t head = 0, have = 0;
    if (err == CS_OK && (err = cs_log_reader_head(r, &head)) == CS_OK && head > s->head)
        s->head = head;
    if (err == CS_OK && cursor > head) {
        snprintf(m, mlen,
                 "the branch is at event %llu but this log ends at %llu: it is not the log "
                 "the branch follows",
                 (unsigned long long)cursor, (unsigned long long)head);
        err = CS_CORRUPT;
    } else if (err == CS_OK && (err = cs__log_chain_at(r, cursor, &have)) == CS_NOT_FOUND) {
        err = CS_OK; /* cut from the log (log compact): a snapshot follows (bootstrap.c) */
    } else if (err == CS_OK && have != chain) {
        snprintf(m, mlen, "event %llu differs from the one the branch applied: the log diverged",
                 (unsigned long long)cursor);
        err = CS_CORRUPT;
    } else if (err != CS_OK) {
        snprintf(m, mlen, "the head office cannot read its log (%s)", cs_err_name(err));
    }
    cs_log_reader_close(r);
    return err;
}

static void replace_older(cs__server *s, cs__conn *c)
{
    for (cs__conn *o = s->conns, *next; o; o = next) {
        next = o->next;
        if (o != c && o->shop == c->shop && o->state == CS__C_STREAMING)
            cs__conn_close(o, CS_NETWORK, "replaced by a new connection of this shop", false);
    }
}

static void conn_on_start(cs__conn *c, const cs__body *b)
{
    cs__server *s = c->srv;
    uint64_t cursor, chain;
    char m[200];
    if (!cs__body_uint(b, "cursor", &cursor) || !cs__body_uint(b, "chain", &chain)) {
        cs__conn_close(c, CS_INVALID_INPUT, "START needs cursor and chain", false);
        return;
    }
    cs_err err = check_cursor(s, cursor, chain, m, sizeof(m));
    if (err != CS_OK) {
        cs__conn_close(c, err, m, false);
        return;
    }
    bool boot = false;
    uint64_t boot_seq = 0;
    if ((err = cs__boot_start(c, cursor, &boot, &boot_seq, m, sizeof(m))) != CS_OK) {
        cs__conn_close(c, err, m, false);
        return;
    }
    replace_older(s, c);
    c->state = CS__C_STREAMING;
    c->acked = cursor;
    c->send_next = (boot ? boot_seq : cursor) + 1; /* after a snapshot, from its position */
    c->caught_up_seq = s->head;
    c->caught_up_due = true;
    c->status_dirty = true;
    cs__server_log(s, CS_NET_LOG_INFO, "accepted", c->shop, CS_OK,
                   "shop %llu from %s: authenticated, cursor %llu, head %llu",
                   (unsigned long long)c->shop, c->peer, (unsigned long long)cursor,
                   (unsigned long long)s->head);
    cs__server_pump_one(s, c);
}

/* ---- streaming frames -------------------------------------------------------------------- */

/* PING and ACK of a branch may carry `outbox`, its outbox depth (docs/protocol.md); a branch
 * that never sends it stays unknown. Kept with the connection, flushed like the cursor. */
static bool conn_take_outbox(cs__conn *c, const cs__body *b)
{
    const msgpack_object *o = cs__body_get(b, "outbox");
    if (!o)
        return true;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        cs__conn_close(c, CS_INVALID_INPUT, "outbox is not a uint", false);
        return false;
    }
    if (!c->outbox_known || c->outbox != o->via.u64) {
        c->outbox = o->via.u64;
        c->outbox_known = true;
        c->status_dirty = true;
    }
    return true;
}

/* PING and ACK may also carry `held`, the event the branch cannot apply (hold.c): a change
 * is logged and recorded with the next status flush. */
static bool conn_take_report(cs__conn *c, const cs__body *b)
{
    bool changed;
    const char *why = "";
    if (!conn_take_outbox(c, b))
        return false;
    if (!cs__hold_take(c, b, &changed, &why)) {
        cs__conn_close(c, CS_INVALID_INPUT, why, false);
        return false;
    }
    if (!changed)
        return true;
    c->status_dirty = true;
    if (c->held.held_seq)
        cs__server_log(c->srv, CS_NET_LOG_WARN, "branch_held", c->shop, c->held.held_code,
                       "shop %llu holds at event %llu: %s: %s", (unsigned long long)c->shop,
                       (unsigned long long)c->held.held_seq, cs_err_name(c->held.held_code),
                       c->held.held_message);
    return true;
}

static void conn_on_ack(cs__conn *c, const cs__body *b)
{
    uint64_t cursor;
    if (!cs__body_uint(b, "cursor", &cursor) || cursor >= c->send_next) {
        cs__conn_close(c, CS_INVALID_INPUT, "ACK of an event never sent", false);
        return;
    }
    if (!conn_take_report(c, b))
        return;
    if (cursor > c->acked) {
        c->acked = cursor;
        c->status_dirty = true;
        if (c->paused_ms) /* it applied what it was sent: slow, not stuck (conn_stuck) */
            c->paused_ms = cs__net_now_ms();
    }
}

static void conn_on_write(cs__conn *c, const uint8_t *body, size_t len)
{
    cs__server *s = c->srv;
    cs_remote_answer ans;
    cs_err err = cs_engine_remote_write(s->e, c->shop, body, len, &ans);
    if (err != CS_OK) {
        cs__conn_close(c, err == CS_CORRUPT ? CS_INVALID_INPUT : err,
                       err == CS_CORRUPT ? "WRITE is not an outbox entry" : cs_engine_errmsg(s->e),
                       false);
        return;
    }
    cs__body req;
    const uint8_t *rid = NULL;
    if (cs__body_parse(&req, body, len) != CS_OK ||
        !cs__body_bin(&req, "req", CS_REQUEST_ID_BYTES, &rid)) {
        cs__body_free(&req);
        cs__conn_close(c, CS_INVALID_INPUT, "WRITE needs a 16-byte req", false);
        return;
    }
    cs__pk p;
    cs__pk_write_answer(&p, rid, &ans);
    cs__body_free(&req);
    cs__buf *f = cs__pk_frame(&p, CS__F_WRITE_RESULT);
    cs__pk_destroy(&p);
    if (!f) {
        cs__conn_close(c, CS_NO_MEMORY, "out of memory", true);
        return;
    }
    if (ans.code != CS_OK)
        cs__server_log(s, CS_NET_LOG_WARN, "write_refused", c->shop, ans.code,
                       "shop %llu: write refused: %s: %s", (unsigned long long)c->shop,
                       cs_err_name(ans.code), ans.message);
    else
        s->writes_applied++;
    cs__conn_send(c, f);
    cs__buf_unref(f);
    if (ans.code == CS_OK)
        cs__server_pump_all(s); /* the write is in the log: every branch gets it now */
}

/* Which frame types each state accepts (docs/protocol.md, "connection states"). */
static bool frame_allowed(cs__cstate st, unsigned type)
{
    switch (type) {
    case CS__F_HELLO:
        return st == CS__C_HELLO;
    case CS__F_PROOF:
        return st == CS__C_PROOF;
    case CS__F_START:
        return st == CS__C_START;
    case CS__F_ACK:
    case CS__F_WRITE:
        return st == CS__C_STREAMING;
    case CS__F_PING:
        return st == CS__C_STREAMING;
    case CS__F_ERROR:
        return true;
    default:
        return false;
    }
}

static const char *state_name(cs__cstate st)
{
    static const char *const names[] = {"HELLO", "PROOF", "START", "STREAMING", "CLOSING"};
    return names[st];
}

static bool known_type(unsigned type)
{
    return strcmp(cs__frame_name(type), "unknown") != 0;
}

static void conn_on_frame(cs__conn *c, unsigned type, const uint8_t *body, size_t len)
{
    char m[160];
    if (!known_type(type)) {
        if (type >= CS__F_OPTIONAL)
            return; /* optional: skipped */
        snprintf(m, sizeof(m), "unknown frame type 0x%02x", type);
        cs__conn_close(c, CS_PROTOCOL_MISMATCH, m, false);
        return;
    }
    if (!frame_allowed(c->state, type)) {
        snprintf(m, sizeof(m), "unexpected %s in state %s", cs__frame_name(type),
                 state_name(c->state));
        cs__conn_close(c, CS_INVALID_INPUT, m, false);
        return;
    }
    if (type == CS__F_WRITE) {
        conn_on_write(c, body, len);
        return;
    }
    cs__body b;
    cs_err err = cs__body_parse(&b, body, len);
    if (err != CS_OK) {
        snprintf(m, sizeof(m), "%s: the body is not one msgpack map", cs__frame_name(type));
        cs__conn_close(c, err, m, false);
    } else if (type == CS__F_HELLO) {
        conn_on_hello(c, &b);
    } else if (type == CS__F_PROOF) {
        conn_on_proof(c, &b);
    } else if (type == CS__F_START) {
        conn_on_start(c, &b);
    } else if (type == CS__F_ACK) {
        conn_on_ack(c, &b);
    } else if (type == CS__F_PING) {
        uint64_t waited;
        if (conn_take_report(c, &b) && c->paused_ms && cs__body_uint(&b, "waiting", &waited))
            c->paused_ms = cs__net_now_ms(); /* waits its turn to apply: slow, not stuck */
    } else if (type == CS__F_ERROR) {
        cs_str code = {"", 0}, msg = {"", 0};
        cs__body_str(&b, "code", &code);
        cs__body_str(&b, "message", &msg);
        snprintf(m, sizeof(m), "the branch said %.*s: %.*s", (int)code.len, code.ptr, (int)msg.len,
                 msg.ptr);
        cs__conn_close(c, CS_OK, m, false);
    }
    cs__body_free(&b);
}

/* ---- reading ----------------------------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    cs__conn *c = (cs__conn *)h;
    *buf = uv_buf_init((char *)c->srv->rbuf, sizeof(c->srv->rbuf));
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    cs__conn *c = (cs__conn *)st;
    (void)buf;
    if (n < 0) {
        cs__conn_close(
            c, CS_OK, n == UV_EOF ? "the branch closed the connection" : uv_strerror((int)n), true);
        return;
    }
    if (n == 0 || c->state == CS__C_CLOSING)
        return;
    c->last_rx_ms = cs__net_now_ms();
    if (c->state == CS__C_STREAMING)
        c->status_dirty = true;
    if (cs__rx_feed(&c->rx, c->srv->rbuf, (size_t)n) != CS_OK) {
        cs__conn_close(c, CS_NO_MEMORY, "out of memory", true);
        return;
    }
    unsigned type;
    const uint8_t *body;
    size_t len;
    char m[160];
    cs_err err;
    while (c->state != CS__C_CLOSING &&
           (err = cs__rx_frame(&c->rx, &type, &body, &len, m, sizeof(m))) == CS_OK) {
        conn_on_frame(c, type, body, len);
        cs__rx_consume(&c->rx);
    }
    if (c->state != CS__C_CLOSING && err == CS_INVALID_INPUT)
        cs__conn_close(c, err, m, false);
}

/* ---- accepting --------------------------------------------------------------------------- */

/* The kernel keeps at most CS_NET_NOTSENT_BYTES of a connection's unsent bytes; the rest of its
 * queue stays in libuv's, as references to the shared segments. Without it each socket's send
 * buffer grew to megabytes of copies: with 1,000 branches, gigabytes of kernel memory and TCP
 * under memory pressure. Best effort: a kernel without the option keeps its own buffer. */
static void limit_unsent(cs__conn *c)
{
#ifdef TCP_NOTSENT_LOWAT
    uv_os_fd_t fd;
    int v = CS_NET_NOTSENT_BYTES;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &v, sizeof(v));
#else
    (void)c;
#endif
}

static void peer_name(cs__conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    snprintf(c->peer, sizeof(c->peer), "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    char ip[INET6_ADDRSTRLEN] = "";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else {
        uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
}

static void on_connection(uv_stream_t *l, int status)
{
    cs__server *s = l->data;
    if (status < 0 || s->stopping)
        return;
    cs__conn *c = calloc(1, sizeof(*c));
    if (!c || uv_tcp_init(s->loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    c->srv = s;
    c->rx.max_bytes = CS_NET_CONTROL_FRAME_BYTES_MAX;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
        c->state = CS__C_CLOSING;
        uv_close((uv_handle_t *)&c->tcp, cs__conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    limit_unsent(c);
    peer_name(c);
    c->opened_ms = c->last_rx_ms = c->last_tx_ms = cs__net_now_ms();
    s->connections_total++;
    cs__server_log(s, CS_NET_LOG_INFO, "connect", 0, CS_OK, "connection from %s", c->peer);
    if (s->nconns > CS_NET_CONNECTIONS_MAX) {
        cs__conn_close(c, CS_NETWORK, "the head office has too many connections", false);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0)
        cs__conn_close(c, CS_OK, "cannot read", true);
}

/* ---- timers: heartbeats, handshake and stuck limits, statuses, safety ------------------- */

static void flush_status(cs__server *s)
{
    size_t n = s->ngone;
    for (cs__conn *c = s->conns; c; c = c->next)
        n += c->state == CS__C_STREAMING && c->status_dirty;
    if (n == 0)
        return;
    cs_shop_status *st = malloc(n * sizeof(*st));
    if (!st)
        return;
    size_t k = 0;
    for (size_t i = 0; i < s->ngone; i++)
        st[k++] = s->gone[i];
    for (cs__conn *c = s->conns; c; c = c->next)
        if (c->state == CS__C_STREAMING && c->status_dirty) {
            st[k] = (cs_shop_status){.shop = c->shop,
                                     .cursor = c->acked,
                                     .last_seen_ms = c->last_rx_ms,
                                     .connected = true,
                                     .outbox = c->outbox,
                                     .outbox_known = c->outbox_known};
            cs__hold_status(c, &st[k++]);
        }
    uint64_t t0 = cs__net_now_ms();
    cs_err err = cs_engine_shop_status_save(s->e, st, k);
    uint64_t took = cs__net_now_ms() - t0;
    free(st);
    if (took > CS_NET_STATUS_FLUSH_MS) /* the disk is slow: what held the loop up, in the log */
        cs__server_log(s, CS_NET_LOG_WARN, "slow_status", 0, CS_OK,
                       "recording %zu branch statuses took %llu ms", k, (unsigned long long)took);
    if (err != CS_OK) {
        cs__server_log(s, CS_NET_LOG_ERROR, "status", 0, err,
                       "cannot record branch statuses: %s: %s", cs_err_name(err),
                       cs_engine_errmsg(s->e));
        return;
    }
    s->ngone = 0;
    for (cs__conn *c = s->conns; c; c = c->next)
        c->status_dirty = false;
}

static void send_ping(cs__server *s, cs__conn *c, uint64_t now)
{
    cs__pk p;
    cs__pk_init(&p, 2);
    cs__pk_uint(&p, "time", now);
    cs__pk_uint(&p, "head_seq", s->head);
    cs__buf *f = cs__pk_frame(&p, CS__F_PING);
    cs__pk_destroy(&p);
    if (f) {
        cs__conn_send(c, f);
        cs__buf_unref(f);
    }
}

static uint64_t max_ms(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* Stuck: a send queue that has not drained for stuck_ms while the branch acknowledged nothing
 * new. Drain is a write that completed (stream.c) or libuv's own queue getting shorter (a write
 * moved forward in pieces); an ACK past the last one (conn_on_ack) shows a branch that applies
 * what it was sent but reads in turns (many on one loop, net/node.c "Taking turns"): the
 * kernel only wakes a writer once a third of its send buffer is free, which a branch reading a
 * little at a time may take longer than stuck_ms to free. */
static bool conn_stuck(cs__server *s, cs__conn *c, uint64_t now)
{
    size_t wq = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (wq < c->wq_seen)
        c->paused_ms = now;
    c->wq_seen = wq;
    return now - max_ms(c->paused_ms, s->back_ms) > s->stuck_ms;
}

/* The limits count only time this loop was there to see: a tick that comes late (the loop was
 * held up, by a commit waiting for the disk, say) runs before this iteration's reads, so what
 * the branches sent meanwhile is not seen yet; their clocks restart at s->back_ms. */
static void conn_tick(cs__server *s, cs__conn *c, uint64_t now)
{
    char m[160];
    if (c->state == CS__C_CLOSING) {
        if (now - c->closing_ms > CLOSING_GRACE_MS)
            cs__conn_close(c, CS_OK, "", true);
    } else if (c->state == CS__C_PROOF && c->challenge_due_ms && now >= c->challenge_due_ms) {
        send_challenge(c);
    } else if (c->state != CS__C_STREAMING &&
               now - max_ms(c->opened_ms, s->back_ms) > CS_NET_HANDSHAKE_MS) {
        cs__conn_close(c, CS_INVALID_INPUT, "handshake took too long", false);
    } else if (now - max_ms(max_ms(c->last_rx_ms, c->last_alive_ms), s->back_ms) > CS_NET_DEAD_MS) {
        snprintf(m, sizeof(m), "nothing received nor read for %llu ms",
                 (unsigned long long)(now - c->last_rx_ms));
        cs__conn_close(c, CS_NETWORK, m, false);
    } else if (c->paused_ms && conn_stuck(s, c, now)) {
        snprintf(m, sizeof(m), "%zu bytes unread for %llu ms", c->queued,
                 (unsigned long long)(now - c->paused_ms));
        cs__conn_close(c, CS_NETWORK, m, true);
    } else if (c->state == CS__C_STREAMING && now - c->last_tx_ms >= CS_NET_HEARTBEAT_MS) {
        send_ping(s, c, now);
    }
}

static void on_tick_stopping(cs__server *s);

static void on_tick(uv_timer_t *t)
{
    cs__server *s = t->data;
    uint64_t now = cs__net_now_ms();
    if (s->last_tick_ms && now - s->last_tick_ms > 4 * TICK_MS) {
        s->back_ms = now;
        cs__server_log(s, CS_NET_LOG_WARN, "late", 0, CS_OK,
                       "the loop was held up for %llu ms: the branches' silence and stuck "
                       "limits count from now",
                       (unsigned long long)(now - s->last_tick_ms));
    }
    s->last_tick_ms = now;
    for (cs__conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        conn_tick(s, c, now);
    }
    if (now - s->last_flush_ms >= CS_NET_STATUS_FLUSH_MS) {
        s->last_flush_ms = now;
        flush_status(s);
    }
    if (s->snap && !s->stopping && now - s->last_metrics_ms >= CS_NET_METRICS_EVERY_MS) {
        s->last_metrics_ms = now;
        cs__server_publish(s, now); /* after the flush: the statuses it reads are current */
    }
    if (now - s->last_safety_ms >= CS_NET_SAFETY_MS) {
        s->last_safety_ms = now;
        cs__server_pump_all(s);
    }
    cs__natspub_tick(s, s->nats, now);
    if (s->stopping)
        on_tick_stopping(s);
}

/* Why a re-check: the last file write of an LMDB commit is the meta page, but a reader sees the
 * commit only once the writer has also stored its transaction id in the lock file's shared
 * memory, a moment later and without any file write. A reader woken by the meta page's write can
 * therefore still see the previous commit, and no further event would come. So a wake-up that
 * found nothing new looks again after 2, 20 and 200 ms; the safety timer covers the rest. */
#define RECHECK_FIRST_MS 2u
#define RECHECK_STEPS 3u

static void on_recheck(uv_timer_t *t)
{
    cs__server *s = t->data;
    uint64_t before = s->head;
    cs__server_pump_all(s);
    if (s->head == before && ++s->recheck_step < RECHECK_STEPS) {
        uint64_t delay = RECHECK_FIRST_MS;
        for (unsigned i = 0; i < s->recheck_step; i++)
            delay *= 10;
        uv_timer_start(&s->recheck, on_recheck, delay, 0);
    }
}

static void on_watch(uv_fs_event_t *h, const char *file, int events, int status)
{
    (void)file;
    (void)events;
    cs__server *s = h->data;
    if (status != 0)
        return;
    uint64_t before = s->head;
    cs__server_pump_all(s);
    if (s->head == before) { /* the commit may not be visible yet: look again shortly */
        s->recheck_step = 0;
        uv_timer_start(&s->recheck, on_recheck, RECHECK_FIRST_MS, 0);
    }
}

static void on_signal(uv_signal_t *sig, int signum)
{
    cs__server *s = sig->data;
    if (s->stopping)
        return;
    s->stopping = true;
    cs__server_log(s, CS_NET_LOG_INFO, "stop", 0, CS_OK, "stopping (signal %d)", signum);
    for (cs__conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        cs__conn_close(c, CS_NETWORK, "the head office is shutting down", false);
    }
    uv_close((uv_handle_t *)&s->listener, NULL);
    uv_close((uv_handle_t *)&s->watch, NULL);
    uv_close((uv_handle_t *)&s->recheck, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    cs__natspub_stop(s->nats); /* what it published is in the stream; it resumes from there */
    s->nats = NULL;
    /* The tick goes on until the last connection is gone (on_tick closes it then). */
}

static void on_tick_stopping(cs__server *s)
{
    if (s->nconns > 0)
        return;
    flush_status(s);
    uv_close((uv_handle_t *)&s->tick, NULL);
}

/* ---- running ----------------------------------------------------------------------------- */

static cs_err server_fail(char *errmsg, size_t len, cs_err err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static cs_err server_fail(char *errmsg, size_t len, cs_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs_errmsg_vformat(errmsg, len, err, fmt, ap);
    va_end(ap);
    return err;
}

/* The head office's identity and its log's: self id, log id, head. */
static cs_err server_load(cs__server *s, char *errmsg, size_t len)
{
    cs_shop_info self;
    cs_err err = cs_engine_self(s->e, &self);
    if (err != CS_OK || self.role != CS_ROLE_HEAD)
        return server_fail(errmsg, len, CS_FORBIDDEN,
                           "this directory is not a head office (chainsync network create)");
    s->self = self.id;
    cs_log_reader *r;
    if ((err = cs_log_reader_open(s->log, &r)) != CS_OK)
        return server_fail(errmsg, len, err, "cannot read the log: %s", cs_log_errmsg(s->log));
    err = cs_log_reader_head(r, &s->head);
    cs_log_start start;
    if (err == CS_OK && (err = cs_log_reader_start(r, &start)) == CS_OK)
        s->log_id = start.log_id; /* event 1's chain, kept by a cut (log/cut.c) */
    cs_log_reader_close(r);
    if (err != CS_OK)
        return server_fail(errmsg, len, err, "cannot read the log's first event");
    return cs__segcache_new(&s->cache);
}

static cs_err server_listen(cs__server *s, const cs_server_options *o, char *errmsg, size_t len)
{
    struct sockaddr_storage addr;
    if (cs__parse_addr(o->listen, &addr) != CS_OK)
        return server_fail(errmsg, len, CS_INVALID_INPUT, "--listen wants HOST:PORT, not '%s'",
                           o->listen ? o->listen : "");
    int rc = uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    if (rc == 0)
        rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc != 0)
        return server_fail(errmsg, len, CS_NETWORK, "cannot listen on %s: %s", o->listen,
                           uv_strerror(rc));
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen) == 0) {
        if (bound.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&bound, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        } else {
            uv_ip6_name((struct sockaddr_in6 *)&bound, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        }
    }
    cs__server_log(s, CS_NET_LOG_INFO, "listen", 0, CS_OK,
                   "listening on %s:%d, head office %llu, log at event %llu", ip, port,
                   (unsigned long long)s->self, (unsigned long long)s->head);
    if (o->ready_file) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp", o->ready_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%s:%d\n", ip, port) < 0 || fclose(f) != 0 ||
            rename(tmp, o->ready_file) != 0)
            return server_fail(errmsg, len, CS_IO, "cannot write %s", o->ready_file);
    }
    return CS_OK;
}

static cs_err server_handles(cs__server *s, const char *dir, char *errmsg, size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    int rc = uv_timer_init(s->loop, &s->tick);
    s->tick.data = s;
    if (rc == 0 && (rc = uv_timer_init(s->loop, &s->recheck)) == 0)
        s->recheck.data = s;
    if (rc == 0)
        rc = uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    if (rc == 0 && (rc = uv_fs_event_init(s->loop, &s->watch)) == 0) {
        s->watch.data = s;
        rc = uv_fs_event_start(&s->watch, on_watch, path, 0);
    }
    if (rc == 0 && (rc = uv_signal_init(s->loop, &s->sigint)) == 0) {
        s->sigint.data = s;
        rc = uv_signal_start(&s->sigint, on_signal, SIGINT);
    }
    if (rc == 0 && (rc = uv_signal_init(s->loop, &s->sigterm)) == 0) {
        s->sigterm.data = s;
        rc = uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    }
    if (rc == 0)
        cs__signals_unblock(); /* one that came during start-up is handled now */
    if (rc != 0)
        return server_fail(errmsg, len, CS_IO, "cannot start the server's timers and watch: %s",
                           uv_strerror(rc));
    return CS_OK;
}

/* The HTTP listener and what it serves: the first snapshot is rendered before it listens. */
static cs_err server_http(cs__server *s, const cs_server_options *o, char *errmsg, size_t len)
{
    if (cs__snapshot_new(&s->snap) != CS_OK || cs__lagring_new(&s->ring) != CS_OK)
        return server_fail(errmsg, len, CS_NO_MEMORY, "out of memory");
    s->last_metrics_ms = cs__net_now_ms();
    cs__server_publish(s, s->last_metrics_ms);
    char bound[128], m[300];
    cs_err err = cs__http_start(o->http, s->snap, true, o->http_ready_file, bound, sizeof(bound),
                                &s->http, m, sizeof(m));
    if (err != CS_OK)
        return server_fail(errmsg, len, err, "%s", m);
    cs__server_log(s, CS_NET_LOG_INFO, "listen", 0, CS_OK,
                   "HTTP on %s: /metrics, /api/shops and the Managing shops page at /", bound);
    return CS_OK;
}

static void close_all(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL); /* only on a failed start: no connection exists yet */
}

cs_err cs_server_run(cs_engine *e, const char *dir, const cs_server_options *o, char *errmsg,
                     size_t errmsg_len)
{
    if (sodium_init() < 0)
        return server_fail(errmsg, errmsg_len, CS_NO_MEMORY, "libsodium cannot start");
    int lock = cs__dir_lock(dir, "serve.lock", LOCK_EX); /* SPEC 5: one serve per network */
    if (lock < 0)
        return server_fail(errmsg, errmsg_len, lock == -2 ? CS_FORBIDDEN : CS_IO,
                           lock == -2 ? "another chainsync serve runs on %s" : "cannot lock %s",
                           dir);
    cs__server *s = calloc(1, sizeof(*s));
    uv_loop_t *loop = malloc(sizeof(*loop));
    if (!s || !loop || uv_loop_init(loop) != 0) {
        free(s);
        free(loop);
        close(lock);
        return server_fail(errmsg, errmsg_len, CS_NO_MEMORY, "out of memory");
    }
    s->loop = loop;
    s->e = e;
    s->log = cs_engine_log(e);
    s->out = o->log ? o->log : stderr;
    s->stuck_ms = o->stuck_ms ? o->stuck_ms : CS_NET_STUCK_MS;
    s->last_flush_ms = s->last_safety_ms = cs__net_now_ms();
    cs__netlog_init(&s->nl, s->out, "serve", o->log_level, o->log_format);
    cs__server_log(s, CS_NET_LOG_INFO, "start", 0, CS_OK, "starting on %s", dir);
    cs_err err = server_load(s, errmsg, errmsg_len);
    s->head_at_start = s->head;
    if (err == CS_OK && o->nats && o->nats->url) /* before the signals are unblocked: libnats's
                                                  * threads keep them blocked */
        err = cs__natspub_start(s, o->nats, &s->nats, errmsg, errmsg_len);
    if (err == CS_OK && o->http) /* before server_handles unblocks the signals: its thread
                                  * keeps them blocked, so a stop always reaches the loop */
        err = server_http(s, o, errmsg, errmsg_len);
    if (err == CS_OK)
        err = server_handles(s, dir, errmsg, errmsg_len);
    if (err == CS_OK)
        err = server_listen(s, o, errmsg, errmsg_len);
    if (err != CS_OK) {
        cs__natspub_stop(s->nats);
        s->nats = NULL;
        uv_walk(loop, close_all, NULL);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    if (err == CS_OK)
        cs__server_log(s, CS_NET_LOG_INFO, "stop", 0, CS_OK, "stopped");
    cs__http_stop(s->http); /* its thread is gone before the snapshot is freed */
    cs__snapshot_free(s->snap);
    cs__lagring_free(s->ring);
    cs_assert(s->conns == NULL);
    int rc = uv_loop_close(loop);
    cs_assert(rc == 0);
    (void)rc;
    cs__segcache_free(s->cache);
    free(s->gone);
    free(s);
    free(loop);
    close(lock);
    return err;
}

bool cs_server_running(const char *dir)
{
    int fd = cs__dir_lock(dir, "serve.lock", LOCK_SH);
    if (fd >= 0)
        close(fd);
    return fd == -2;
}
