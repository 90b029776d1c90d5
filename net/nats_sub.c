/*
 * nats_sub.c: a branch node over NATS JetStream (`chainsync branch join|follow|pull --nats`),
 * behind the same cs_node as the TCP node (node.c forwards to it). It owns the node's NATS
 * connection, its durable push consumer shop-<id> on the network's stream, the subscription to
 * the answers of its writes, and the NATS link it keeps in the `netlink` database (key
 * "nats"). Messages reach the loop through a queue (nats_conn.c): LMDB is touched only here,
 * on the loop's thread.
 *
 * Invariants: a segment is acknowledged to JetStream only after the transaction that applied
 * it (with the cursor) committed, so a crash redelivers at most what the cursor already holds,
 * and that is recognised by its Cs-Last and skipped; a message that starts past cursor + 1 is
 * never applied: it is handed back (negative acknowledgement with a delay) while a redelivery
 * of the missing ones may still come, and stops the node with CS_CORRUPT when it cannot (the
 * stream lacks those events). The chain check of cs_branch_apply_segment guards the bytes; the
 * first event of the log must carry the network id the credentials name. At most one write is
 * unanswered, as over TCP, and it is resent with the same request id until answered.
 */
#include "net/nats_int.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define NN_TICK_MS 250u
#define NN_BATCH 16u
/* A message past cursor + 1 is handed back this often while the missing ones may come back
 * (a redelivery after CS__NATS_ACK_WAIT_MS); past NN_GAP_MS the gap is final. */
#define NN_NAK_DELAY_MS 500u
#define NN_GAP_MS (4u * CS__NATS_ACK_WAIT_MS)
#define NN_INFO_EVERY_MS 500u
#define NN_RETRY_MAX_MS 30000u
#define NATS_KEY "nats"

struct cs__natsnode {
    uv_loop_t *loop;
    cs_branch *b;
    cs_engine *e;
    const cs_node_options *o;
    cs_node *outer;
    cs_node_done_fn done;
    void *arg;
    char *errmsg;
    size_t errmsg_len;
    cs__netlog nl;
    cs__nats_names n;
    cs__nats_creds creds;
    char url[256];   /* stored as the link's head, which holds 255 bytes */
    char domain[64]; /* the JetStream domain ("" = none) */
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub, *rsub;
    cs__natsq *q, *rq;
    uv_timer_t tick;
    uv_fs_event_t watch;
    bool tick_open, watching;
    unsigned handles_open; /* the tick and the watch (the queues close on their own) */
    bool finished, connected, caught_up;
    uint64_t cursor, chain;
    uint64_t last_sseq;    /* the stream sequence of the last message applied or skipped */
    uint64_t gap_since_ms; /* when a message past cursor + 1 first came; 0 = none */
    uint64_t next_try_ms;  /* follow: the next connection attempt */
    unsigned attempt;
    uint64_t started_ms, last_msg_ms, last_info_ms;
    bool write_inflight;
    uint64_t inflight_key, sent_ms;
    uint8_t inflight_req[CS_REQUEST_ID_BYTES];
    uint64_t sync_seq;
};

static void nn_log(cs__natsnode *nn, cs_net_log_level level, const char *event, cs_err code,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void nn_log(cs__natsnode *nn, cs_net_log_level level, const char *event, cs_err code,
                   const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs__netlog_v(&nn->nl, level, event, nn->creds.shop, code, fmt, ap);
    va_end(ap);
}

/* ---- the stored NATS link (netlink, key "nats") ------------------------------------------ */

typedef struct nlink_out {
    char *url, *domain;
    size_t url_len, domain_len;
    cs__nats_creds *c;
} nlink_out;

static cs_err nlink_parse(const MDB_val *v, void *arg)
{
    nlink_out *o = arg;
    cs__nats_creds *c = o->c;
    cs__body body;
    cs_str u, user, pw;
    cs_err err = cs__body_parse(&body, v->mv_data, v->mv_size);
    if (err == CS_OK &&
        !(cs__body_str(&body, "url", &u) && u.len < o->url_len &&
          cs__body_uint(&body, "network", &c->network) && cs__body_uint(&body, "shop", &c->shop) &&
          cs__body_str(&body, "user", &user) && user.len < sizeof(c->user) &&
          cs__body_str(&body, "password", &pw) && pw.len < sizeof(c->password)))
        err = CS_CORRUPT;
    if (err == CS_OK) {
        snprintf(o->url, o->url_len, "%.*s", (int)u.len, u.ptr);
        snprintf(c->user, sizeof(c->user), "%.*s", (int)user.len, user.ptr);
        snprintf(c->password, sizeof(c->password), "%.*s", (int)pw.len, pw.ptr);
        cs_str d = {"", 0};
        cs__body_str(&body, "domain", &d); /* optional: none */
        snprintf(o->domain, o->domain_len, "%.*s", (int)d.len, d.ptr);
    }
    cs__body_free(&body);
    return err;
}

/* url, network, shop, user, password: what a follow or pull needs to connect again. */
static cs_err nlink_load(cs_branch *b, char *url, size_t url_len, char *domain, size_t domain_len,
                         cs__nats_creds *c)
{
    nlink_out o = {url, domain, url_len, domain_len, c};
    cs_err err = cs__netlink_read(b, NATS_KEY, nlink_parse, &o);
    return err == CS_INVALID_INPUT ? CS_CORRUPT : err;
}

/* The NATS link, and the link `status` and node.c read (head = the URL; no TCP keys). */
static cs_err nlink_save(cs__natsnode *nn)
{
    cs__pk p;
    cs__pk_init(&p, 6);
    cs__pk_str(&p, "url", nn->url);
    cs__pk_str(&p, "domain", nn->domain);
    cs__pk_uint(&p, "network", nn->creds.network);
    cs__pk_uint(&p, "shop", nn->creds.shop);
    cs__pk_str(&p, "user", nn->creds.user);
    cs__pk_str(&p, "password", nn->creds.password);
    cs_err err = cs__netlink_write(nn->b, NATS_KEY, &p.sb);
    sodium_memzero(p.sb.data, p.sb.size);
    cs__pk_destroy(&p);
    cs__link l = {0};
    snprintf(l.head, sizeof(l.head), "%s", nn->url);
    l.shop = nn->creds.shop;
    l.log_id = nn->creds.network;
    if (err == CS_OK)
        err = cs__link_save(nn->b, &l);
    return err;
}

bool cs__nats_wanted(cs_branch *b, const cs_node_options *o)
{
    if (o->nats && o->nats->url)
        return true;
    if (o->mode == CS_NODE_JOIN || o->head)
        return false;
    cs__link l;
    return cs__link_load(b, &l) == CS_OK &&
           (strncmp(l.head, "nats://", 7) == 0 || strncmp(l.head, "tls://", 6) == 0);
}

/* ---- finishing --------------------------------------------------------------------------- */

static void nn_record(cs__natsnode *nn, bool connected, const char *error)
{
    if (!nn->o->record_state)
        return;
    cs_err err = cs__link_state_save(nn->b, connected, nn->cursor, error ? error : "");
    if (err != CS_OK)
        nn_log(nn, CS_NET_LOG_WARN, "state", err, "cannot record the node's state");
}

static void nn_disconnect(cs__natsnode *nn)
{
    /* The subscriptions are destroyed, never unsubscribed: unsubscribing a JetStream
     * subscription would delete the durable consumer, whose position the next run needs. */
    cs__nats_disconnect(nn->nc, nn->js);
    nn->nc = NULL;
    nn->js = NULL;
    natsSubscription_Destroy(nn->sub);
    natsSubscription_Destroy(nn->rsub);
    nn->sub = nn->rsub = NULL;
    nn->connected = false;
}

static void nn_finish(cs__natsnode *nn, cs_err result, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void nn_finish(cs__natsnode *nn, cs_err result, const char *fmt, ...)
{
    if (nn->finished)
        return;
    nn->finished = true;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(nn->errmsg, nn->errmsg_len, fmt, ap);
        va_end(ap);
    }
    if (result != CS_OK) {
        nn_log(nn, CS_NET_LOG_ERROR, "drop", result, "%s", nn->errmsg);
        char e[300];
        snprintf(e, sizeof(e), "%s: %s", cs_err_name(result), nn->errmsg);
        nn_record(nn, false, e);
    } else {
        nn_record(nn, false, NULL);
    }
    nn_disconnect(nn);
    if (nn->tick_open)
        uv_timer_stop(&nn->tick);
    if (nn->done)
        nn->done(nn->outer, result, nn->arg);
}

/* ---- the outbox (R8) over NATS ----------------------------------------------------------- */

static void send_outbox(cs__natsnode *nn, bool resend)
{
    if (!nn->connected || (nn->write_inflight && !resend))
        return;
    uint64_t key;
    uint8_t *entry = NULL;
    size_t len = 0;
    cs_err err = cs_engine_outbox_next(nn->e, 0, &key, &entry, &len);
    if (err == CS_NOT_FOUND) {
        nn->write_inflight = false;
        return;
    }
    cs__body body;
    const uint8_t *req = NULL;
    if (err == CS_OK && cs__body_parse(&body, entry, len) == CS_OK) {
        if (cs__body_bin(&body, "req", CS_REQUEST_ID_BYTES, &req))
            memcpy(nn->inflight_req, req, CS_REQUEST_ID_BYTES);
        cs__body_free(&body);
    }
    if (err == CS_OK && !req)
        err = CS_CORRUPT;
    natsStatus st = NATS_OK;
    if (err == CS_OK)
        st = natsConnection_PublishRequest(nn->nc, nn->n.write, nn->n.reply, entry, (int)len);
    free(entry);
    if (err != CS_OK) {
        nn_finish(nn, err, "cannot read outbox entry %" PRIu64, key);
        return;
    }
    if (st != NATS_OK) { /* NATS is reconnecting: the tick sends it again */
        nn_log(nn, CS_NET_LOG_DEBUG, "write", CS_NETWORK, "cannot send a write yet: %s",
               natsStatus_GetText(st));
    }
    nn->write_inflight = true;
    nn->inflight_key = key;
    nn->sent_ms = cs__net_now_ms();
}

static void check_done(cs__natsnode *nn);

static void on_answer(cs__natsnode *nn, natsMsg *m)
{
    cs__body b;
    const uint8_t *req;
    cs_remote_answer ans;
    if (cs__body_parse(&b, (const uint8_t *)natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m)) !=
        CS_OK)
        return; /* not an answer: the write is resent and answered again */
    bool ok = cs__body_write_answer(&b, &req, &ans);
    if (ok && nn->write_inflight && memcmp(req, nn->inflight_req, CS_REQUEST_ID_BYTES) == 0) {
        cs_err err = cs_engine_outbox_done(nn->e, nn->inflight_key, &ans);
        cs__body_free(&b);
        if (err != CS_OK) {
            nn_finish(nn, err, "cannot record the answer: %s", cs_engine_errmsg(nn->e));
            return;
        }
        if (ans.code != CS_OK)
            nn_log(nn, CS_NET_LOG_WARN, "write_refused", ans.code,
                   "write refused by the head office: %s: %s", cs_err_name(ans.code), ans.message);
        nn->write_inflight = false;
        send_outbox(nn, false);
        check_done(nn);
        return;
    }
    cs__body_free(&b); /* an answer to a resend already taken: nothing to do */
}

static void drain_answers(void *arg)
{
    cs__natsnode *nn = arg;
    natsMsg *m;
    while (nn->rq && (m = cs__natsq_pop(nn->rq))) { /* done may have closed it */
        if (!nn->finished)
            on_answer(nn, m);
        natsMsg_Destroy(m);
    }
}

/* ---- segments ---------------------------------------------------------------------------- */

static void check_done(cs__natsnode *nn)
{
    if (nn->finished || nn->o->mode == CS_NODE_FOLLOW || !nn->caught_up || nn->write_inflight)
        return;
    uint64_t key;
    uint8_t *entry = NULL;
    size_t len;
    cs_err err = cs_engine_outbox_next(nn->e, 0, &key, &entry, &len);
    free(entry);
    if (err == CS_OK) {
        send_outbox(nn, false);
        return;
    }
    nn_log(nn, CS_NET_LOG_INFO, "in_step", CS_OK, "in step at event %" PRIu64, nn->cursor);
    nn_finish(nn, err == CS_NOT_FOUND ? CS_OK : err, NULL);
}

/* receive_only: every check a branch makes (checksums, chain from the cursor), nothing
 * written; records the cursor already holds are skipped. */
static cs_err verify_only(cs__natsnode *nn, const uint8_t *seg, size_t len)
{
    cs_segment_view v;
    cs_log_record rec;
    cs_err err = cs_segment_open(seg, len, &v);
    if (err == CS_OK && v.first == nn->cursor + 1) {
        v.prev_chain = nn->chain;
        v.prev_chain_known = nn->cursor > 0;
    }
    while (err == CS_OK && (err = cs_segment_next(&v, &rec)) == CS_OK) {
        if (rec.seq <= nn->cursor)
            continue;
        nn->cursor = rec.seq;
        nn->chain = rec.chain;
    }
    return err == CS_NOT_FOUND ? CS_OK : CS_CORRUPT;
}

/* The log's event 1 is the network's: its chain value is the network id the credentials and
 * the stream's name carry (another network's stream is refused before anything is applied). */
static bool first_event_ours(cs__natsnode *nn, const uint8_t *seg, size_t len)
{
    cs_segment_view v;
    cs_log_record rec;
    if (cs_segment_open(seg, len, &v) != CS_OK || v.first != 1)
        return true; /* not event 1: the chain check covers the rest */
    return cs_segment_next(&v, &rec) == CS_OK && rec.chain == nn->creds.network;
}

static cs_err apply_batch(cs__natsnode *nn, natsMsg **msgs, unsigned k)
{
    if (k == 0)
        return CS_OK;
    const uint8_t *segs[NN_BATCH];
    size_t lens[NN_BATCH];
    for (unsigned i = 0; i < k; i++) {
        segs[i] = (const uint8_t *)natsMsg_GetData(msgs[i]);
        lens[i] = (size_t)natsMsg_GetDataLength(msgs[i]);
        if (nn->cursor == 0 && !first_event_ours(nn, segs[i], lens[i])) {
            nn_finish(nn, CS_CORRUPT,
                      "the stream's first event is not network %s's: refusing another "
                      "network's log",
                      nn->n.net);
            return CS_CORRUPT;
        }
    }
    cs_err err = CS_OK;
    uint64_t recv_ms = cs__net_now_ms();
    if (nn->o->receive_only) {
        for (unsigned i = 0; i < k && err == CS_OK; i++)
            err = verify_only(nn, segs[i], lens[i]);
        if (err != CS_OK) {
            nn_finish(nn, CS_CORRUPT, "segment after event %" PRIu64 " does not verify",
                      nn->cursor);
            return err;
        }
    } else {
        uint64_t applied = 0;
        if ((err = cs_branch_apply_segments(nn->b, segs, lens, k, &applied)) != CS_OK) {
            nn_finish(nn, err, "%s", cs_branch_errmsg(nn->b));
            return err;
        }
        cs_branch_state st;
        if ((err = cs_branch_state_get(nn->b, &st)) != CS_OK) {
            nn_finish(nn, err, "cannot read the branch's cursor");
            return err;
        }
        nn->cursor = st.cursor;
        nn->chain = st.chain;
        if (st.sync_seq > nn->sync_seq) {
            nn->sync_seq = st.sync_seq;
            nn_log(nn, CS_NET_LOG_INFO, "sync_point", CS_OK,
                   "sync point at event %" PRIu64 " applied", st.sync_seq);
        }
        if (st.unlinked) {
            for (unsigned i = 0; i < k; i++)
                natsMsg_Ack(msgs[i], NULL);
            nn_finish(nn, CS_NOT_IN_NETWORK,
                      "the head office unlinked this branch: it is a single store now, its "
                      "copies kept as local items");
            return CS_NOT_IN_NETWORK;
        }
    }
    /* Committed: only now does JetStream learn that these are applied. A lost ack costs a
     * redelivery, which the cursor skips. */
    for (unsigned i = 0; i < k; i++) {
        natsMsg_Ack(msgs[i], NULL);
        if (nn->o->on_segment)
            nn->o->on_segment(nn->o->hook_arg, segs[i], lens[i], recv_ms);
    }
    return CS_OK;
}

/* Where a message stands against the cursor (and the batch before it). */
typedef enum seg_place { SEG_HELD, SEG_NEXT, SEG_EARLY, SEG_BAD } seg_place;

static seg_place place(natsMsg *m, uint64_t cursor, uint64_t *first, uint64_t *last)
{
    if (!cs__nats_header_u64(m, "Cs-First", 10, first) ||
        !cs__nats_header_u64(m, "Cs-Last", 10, last) || *first == 0 || *last < *first)
        return SEG_BAD;
    if (*last <= cursor)
        return SEG_HELD;
    return *first <= cursor + 1 ? SEG_NEXT : SEG_EARLY;
}

/* A message past cursor + 1: handed back while a redelivery of the missing ones may come;
 * final when the stream itself is contiguous there or the wait ran out. */
static bool early(cs__natsnode *nn, natsMsg *m, const jsMsgMetaData *meta, uint64_t cursor,
                  uint64_t first)
{
    uint64_t now = cs__net_now_ms();
    if (!nn->gap_since_ms)
        nn->gap_since_ms = now;
    bool contiguous = meta && nn->last_sseq && meta->Sequence.Stream == nn->last_sseq + 1;
    bool first_ever = meta && meta->Sequence.Consumer == 1 && meta->NumDelivered == 1;
    if (contiguous || first_ever || now - nn->gap_since_ms > NN_GAP_MS) {
        nn_finish(nn, CS_CORRUPT,
                  "gap: the stream's next segment starts at event %" PRIu64
                  " but this branch holds events up to %" PRIu64
                  " (the stream lost them: join over TCP or import a log export)",
                  first, cursor);
        return false;
    }
    natsMsg_NakWithDelay(m, NN_NAK_DELAY_MS, NULL);
    return true;
}

static void drain_segments(void *arg)
{
    cs__natsnode *nn = arg;
    natsMsg *batch[NN_BATCH], *m;
    unsigned k = 0;
    uint64_t cursor = nn->cursor;
    while (!nn->finished && (m = cs__natsq_pop(nn->q))) {
        nn->last_msg_ms = cs__net_now_ms();
        jsMsgMetaData *meta = NULL;
        natsMsg_GetMetaData(&meta, m);
        uint64_t first = 0, last = 0;
        seg_place p = place(m, cursor, &first, &last);
        bool keep = false;
        if (p == SEG_BAD) {
            natsMsg_Term(m, NULL);
            nn_finish(nn, CS_CORRUPT, "a message on %s is not a chainsync segment", nn->n.log_subj);
        } else if (p == SEG_HELD) {
            natsMsg_Ack(m, NULL); /* a redelivery or duplicate: the cursor holds it */
        } else if (p == SEG_EARLY) {
            early(nn, m, meta, cursor, first);
        } else {
            nn->gap_since_ms = 0;
            batch[k++] = m;
            cursor = last;
            keep = true;
        }
        if (p != SEG_BAD && p != SEG_EARLY && meta) {
            nn->last_sseq = meta->Sequence.Stream;
            nn->caught_up = meta->NumPending == 0;
        }
        jsMsgMetaData_Destroy(meta);
        if (!keep)
            natsMsg_Destroy(m);
        if (k == NN_BATCH || (k && (nn->finished || p == SEG_EARLY))) {
            if (!nn->finished)
                apply_batch(nn, batch, k);
            for (unsigned i = 0; i < k; i++)
                natsMsg_Destroy(batch[i]);
            k = 0;
            cursor = nn->cursor;
        }
    }
    if (k && !nn->finished)
        apply_batch(nn, batch, k);
    for (unsigned i = 0; i < k; i++)
        natsMsg_Destroy(batch[i]);
    check_done(nn);
}

/* ---- connecting -------------------------------------------------------------------------- */

/* A refused JetStream request comes back as a timeout; the connection's last error says
 * whether nats-server refused it for want of permission. */
static cs_err refusal(cs__natsnode *nn, natsStatus st, const char **why)
{
    const char *last = NULL;
    natsConnection_GetLastError(nn->nc, &last);
    *why = last && *last ? last : natsStatus_GetText(st);
    if (last && strstr(last, "ermission"))
        return CS_AUTH_FAILED;
    return cs__nats_code(st);
}

static cs_err nn_subscribe(cs__natsnode *nn)
{
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = nn->n.stream;
    so.ManualAck = true;
    so.Config.Durable = nn->n.durable;
    so.Config.DeliverSubject = nn->n.deliver;
    so.Config.DeliverPolicy = js_DeliverAll;
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.AckWait = (int64_t)CS__NATS_ACK_WAIT_MS * 1000000; /* ns */
    so.Config.MaxAckPending = CS__NATS_MAX_ACK_PENDING;
    so.Config.MaxDeliver = -1;
    jsErrCode jerr = 0;
    natsStatus st =
        js_Subscribe(&nn->sub, nn->js, nn->n.log_subj, cs__natsq_handler, nn->q, NULL, &so, &jerr);
    if (st != NATS_OK) {
        const char *why;
        cs_err err = refusal(nn, st, &why);
        snprintf(nn->errmsg, nn->errmsg_len,
                 "cannot consume stream %s as %s: %s (JetStream error %d)%s", nn->n.stream,
                 nn->n.durable, why, (int)jerr,
                 err == CS_AUTH_FAILED ? ": these credentials may not read this stream" : "");
        return err;
    }
    st = natsConnection_Subscribe(&nn->rsub, nn->nc, nn->n.reply, cs__natsq_handler, nn->rq);
    if (st == NATS_OK)
        st = natsConnection_FlushTimeout(nn->nc, CS__NATS_WAIT_MS);
    if (st != NATS_OK) {
        const char *why;
        cs_err err = refusal(nn, st, &why);
        snprintf(nn->errmsg, nn->errmsg_len, "cannot subscribe to %s: %s", nn->n.reply, why);
        return err;
    }
    return CS_OK;
}

static cs_err nn_connect(cs__natsnode *nn)
{
    char name[64];
    snprintf(name, sizeof(name), "chainsync branch %" PRIu64, nn->creds.shop);
    cs_err err = cs__nats_connect(nn->url, &nn->creds, nn->n.inbox, nn->domain, name, &nn->nc,
                                  &nn->js, nn->errmsg, nn->errmsg_len);
    if (err == CS_OK)
        err = nn_subscribe(nn);
    if (err != CS_OK) {
        nn_disconnect(nn);
        return err;
    }
    if (nn->o->mode == CS_NODE_JOIN && (err = nlink_save(nn)) != CS_OK) {
        snprintf(nn->errmsg, nn->errmsg_len, "cannot store the link: %s", cs_branch_errmsg(nn->b));
        nn_disconnect(nn);
        return err;
    }
    nn->connected = true;
    nn->attempt = 0;
    nn->last_info_ms = nn->last_msg_ms = cs__net_now_ms();
    nn_record(nn, true, NULL);
    nn_log(nn, CS_NET_LOG_INFO, "accepted", CS_OK,
           "consuming stream %s as %s at %s; cursor %" PRIu64, nn->n.stream, nn->n.durable, nn->url,
           nn->cursor);
    send_outbox(nn, false);
    return CS_OK;
}

/* Follow: a failed connection is tried again with exponential backoff and full jitter; a
 * refusal (credentials, permissions) is final, like a refused TCP login. */
static void nn_try(cs__natsnode *nn)
{
    cs_err err = nn_connect(nn);
    if (err == CS_OK)
        return;
    bool final = err != CS_NETWORK;
    if (nn->o->mode != CS_NODE_FOLLOW || final) {
        nn_finish(nn, err, NULL);
        return;
    }
    uint64_t cap = CS_NET_BACKOFF_BASE_MS << (nn->attempt < 7 ? nn->attempt : 7);
    if (cap > NN_RETRY_MAX_MS)
        cap = NN_RETRY_MAX_MS;
    nn->attempt++;
    nn->next_try_ms = cs__net_now_ms() + randombytes_uniform((uint32_t)cap + 1);
    nn_log(nn, CS_NET_LOG_WARN, "drop", err, "%s; trying again", nn->errmsg);
    char e[300];
    snprintf(e, sizeof(e), "%s: %s", cs_err_name(err), nn->errmsg);
    nn_record(nn, false, e);
}

/* Join and pull: in step once the consumer has nothing pending and nothing unacknowledged (a
 * message says NumPending 0 too, but an empty or already-read stream sends none). */
static void poll_pending(cs__natsnode *nn, uint64_t now)
{
    if (nn->o->mode == CS_NODE_FOLLOW || nn->caught_up ||
        now - nn->last_msg_ms < NN_INFO_EVERY_MS || now - nn->last_info_ms < NN_INFO_EVERY_MS)
        return;
    nn->last_info_ms = now;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, nn->js, nn->n.stream, nn->n.durable, NULL, &jerr) != NATS_OK)
        return; /* NATS is away: asked again later */
    nn->caught_up = ci->NumPending == 0 && ci->NumAckPending == 0;
    jsConsumerInfo_Destroy(ci);
    check_done(nn);
}

static void nn_tick(uv_timer_t *t)
{
    cs__natsnode *nn = t->data;
    uint64_t now = cs__net_now_ms();
    if (nn->finished)
        return;
    if (!nn->connected) {
        if (now >= nn->next_try_ms)
            nn_try(nn);
        return;
    }
    if (nn->o->mode != CS_NODE_FOLLOW && nn->o->timeout_ms && !nn->caught_up &&
        nn->last_msg_ms == nn->started_ms && now - nn->started_ms > nn->o->timeout_ms) {
        nn_finish(nn, CS_NETWORK, "nothing came from NATS within %" PRIu64 " ms",
                  nn->o->timeout_ms);
        return;
    }
    if (nn->write_inflight && now - nn->sent_ms >= CS__NATS_WRITE_RESEND_MS)
        send_outbox(nn, true); /* the same entry, the same request id: exactly once */
    else
        send_outbox(nn, false); /* one the watch did not see */
    poll_pending(nn, now);
}

static void nn_watch(uv_fs_event_t *h, const char *file, int events, int status)
{
    (void)file;
    (void)events;
    cs__natsnode *nn = h->data;
    if (status == 0 && !nn->finished)
        send_outbox(nn, false);
}

/* ---- start, stop, free ------------------------------------------------------------------- */

/* The credentials and URL: from the options, the stored NATS link, or both (checked equal). */
static cs_err nn_setup(cs__natsnode *nn)
{
    const cs_nats_options *no = nn->o->nats;
    cs_err err = CS_OK;
    char stored_url[256] = "", stored_domain[64] = "";
    cs__nats_creds stored = {0};
    bool have_stored = nn->o->mode != CS_NODE_JOIN &&
                       nlink_load(nn->b, stored_url, sizeof(stored_url), stored_domain,
                                  sizeof(stored_domain), &stored) == CS_OK;
    if (no && no->creds) {
        if ((err = cs__nats_creds_load(no->creds, &nn->creds, nn->errmsg, nn->errmsg_len)))
            return err;
    } else if (have_stored) {
        nn->creds = stored;
    } else {
        snprintf(nn->errmsg, nn->errmsg_len,
                 nn->o->mode == CS_NODE_JOIN
                     ? "branch join --nats needs --nats-creds FILE (from shop nats-credentials)"
                     : "this branch has not joined over NATS: run chainsync branch join --nats "
                       "URL --nats-creds FILE");
        return CS_INVALID_INPUT;
    }
    sodium_memzero(&stored, sizeof(stored));
    const char *url = no && no->url ? no->url : stored_url;
    if (strlen(url) >= sizeof(nn->url)) {
        snprintf(nn->errmsg, nn->errmsg_len, "--nats URL is longer than %zu bytes",
                 sizeof(nn->url) - 1);
        return CS_INVALID_INPUT;
    }
    snprintf(nn->url, sizeof(nn->url), "%s", url);
    const char *domain = no && no->domain ? no->domain : stored_domain;
    if (strlen(domain) >= sizeof(nn->domain)) {
        snprintf(nn->errmsg, nn->errmsg_len, "--nats-domain is longer than %zu bytes",
                 sizeof(nn->domain) - 1);
        return CS_INVALID_INPUT;
    }
    snprintf(nn->domain, sizeof(nn->domain), "%s", domain);
    cs__link l;
    cs_branch_state st;
    if (nn->o->mode == CS_NODE_JOIN && nn->creds.shop != nn->o->shop) {
        snprintf(nn->errmsg, nn->errmsg_len,
                 "the credentials are shop %" PRIu64 "'s, not --shop %" PRIu64 "'s", nn->creds.shop,
                 nn->o->shop);
        return CS_INVALID_INPUT;
    }
    /* A branch follows one network: credentials of another are refused before NATS is asked
     * (a join may bind the directory to another shop, which cs_branch_bind rules on). */
    if (cs__link_load(nn->b, &l) == CS_OK && l.log_id &&
        (nn->o->mode != CS_NODE_JOIN || l.shop == nn->creds.shop) &&
        l.log_id != nn->creds.network) {
        snprintf(nn->errmsg, nn->errmsg_len,
                 "this branch follows network %016" PRIx64 ", not %016" PRIx64
                 " (the credentials')",
                 l.log_id, nn->creds.network);
        return CS_CORRUPT;
    }
    if (nn->o->mode == CS_NODE_JOIN && (err = cs_branch_bind(nn->b, nn->creds.shop)) != CS_OK) {
        snprintf(nn->errmsg, nn->errmsg_len, "%s", cs_branch_errmsg(nn->b));
        return err;
    }
    if ((err = cs_branch_state_get(nn->b, &st)) != CS_OK) {
        snprintf(nn->errmsg, nn->errmsg_len, "cannot read the branch's cursor");
        return err;
    }
    if (st.unlinked) {
        snprintf(nn->errmsg, nn->errmsg_len,
                 "this directory was unlinked from its network: it is a single store now");
        return CS_NOT_IN_NETWORK;
    }
    if (nn->o->mode != CS_NODE_JOIN && st.shop != nn->creds.shop) {
        snprintf(nn->errmsg, nn->errmsg_len,
                 "the credentials are shop %" PRIu64 "'s; this branch is shop %" PRIu64,
                 nn->creds.shop, st.shop);
        return CS_INVALID_INPUT;
    }
    nn->cursor = st.cursor;
    nn->chain = st.chain;
    nn->sync_seq = st.sync_seq;
    cs__nats_names_make(nn->creds.network, nn->creds.shop, &nn->n);
    return CS_OK;
}

static void nn_handle_closed(uv_handle_t *h)
{
    cs__natsnode *nn = h->data;
    if (--nn->handles_open > 0)
        return;
    cs_node *outer = nn->outer;
    sodium_memzero(&nn->creds, sizeof(nn->creds));
    free(nn);
    free(outer);
}

cs_err cs__natsnode_start(uv_loop_t *loop, cs_branch *b, const char *dir, const cs_node_options *o,
                          cs_node *outer, cs_node_done_fn done, void *arg, char *errmsg,
                          size_t errmsg_len, cs__natsnode **out)
{
    cs__natsnode *nn = calloc(1, sizeof(*nn));
    if (!nn) {
        snprintf(errmsg, errmsg_len, "out of memory");
        return CS_NO_MEMORY;
    }
    nn->loop = loop;
    nn->b = b;
    nn->e = cs_branch_engine(b);
    nn->o = o;
    nn->outer = outer;
    nn->errmsg = errmsg;
    nn->errmsg_len = errmsg_len;
    cs__netlog_init(&nn->nl, o->log ? o->log : stderr, "branch", o->log_level, o->log_format);
    cs_err err = nn_setup(nn);
    if (err == CS_OK)
        err = cs__natsq_new(loop, drain_segments, nn, &nn->q);
    if (err == CS_OK)
        err = cs__natsq_new(loop, drain_answers, nn, &nn->rq);
    if (err == CS_OK && uv_timer_init(loop, &nn->tick) == 0) {
        nn->tick.data = nn;
        nn->tick_open = true;
        nn->handles_open++;
    } else if (err == CS_OK) {
        err = CS_IO;
    }
    if (err == CS_OK && !o->no_watch && uv_fs_event_init(loop, &nn->watch) == 0) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/data.mdb", dir);
        nn->watch.data = nn;
        nn->watching = true;
        nn->handles_open++;
        uv_fs_event_start(&nn->watch, nn_watch, path, 0); /* the tick is the safety net */
    }
    if (err == CS_OK)
        nn_log(nn, CS_NET_LOG_INFO, "start", CS_OK, "starting on %s, NATS at %s (stream %s)", dir,
               nn->url, nn->n.stream);
    nn->started_ms = nn->last_msg_ms = cs__net_now_ms();
    if (err == CS_OK && (err = nn_connect(nn)) != CS_OK && o->mode == CS_NODE_FOLLOW &&
        err == CS_NETWORK) {
        nn_log(nn, CS_NET_LOG_WARN, "drop", err, "%s; trying again", nn->errmsg);
        nn->next_try_ms = cs__net_now_ms() + CS_NET_BACKOFF_BASE_MS;
        err = CS_OK; /* a follower waits for NATS to come */
    }
    if (err == CS_OK && uv_timer_start(&nn->tick, nn_tick, NN_TICK_MS, NN_TICK_MS) != 0)
        err = CS_IO;
    if (err != CS_OK) {
        nn_disconnect(nn);
        nn->finished = true;
        cs__natsnode_free(nn, NULL);
        return err;
    }
    nn->done = done; /* only now: a failed start reports through its return value */
    nn->arg = arg;
    *out = nn;
    return CS_OK;
}

void cs__natsnode_stop(cs__natsnode *nn)
{
    nn_finish(nn, CS_OK, NULL);
}

void cs__natsnode_free(cs__natsnode *nn, cs_node *outer)
{
    nn->outer = outer;
    nn->finished = true;
    nn_disconnect(nn); /* libnats's threads stop queueing before the queues close */
    cs__natsq_close(nn->q);
    cs__natsq_close(nn->rq);
    nn->q = nn->rq = NULL;
    if (nn->handles_open == 0) { /* a start that failed before its timer */
        sodium_memzero(&nn->creds, sizeof(nn->creds));
        free(nn);
        free(outer);
        return;
    }
    if (nn->tick_open)
        uv_close((uv_handle_t *)&nn->tick, nn_handle_closed);
    if (nn->watching)
        uv_close((uv_handle_t *)&nn->watch, nn_handle_closed);
}

uint64_t cs__natsnode_cursor(const cs__natsnode *nn)
{
    return nn->cursor;
}
