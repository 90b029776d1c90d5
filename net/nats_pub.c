/*
 * nats_pub.c: the head office's side of the NATS JetStream transport (`serve --nats`): it
 * creates or checks the network's stream, publishes every committed segment once and in order
 * (the same bytes the TCP server streams, from the same segment cache), and answers the
 * branches' shared-record writes (R8) that arrive on the network's write subjects through the
 * same cs_engine_remote_write as a WRITE frame. It owns the NATS connection, the publisher's
 * position (the last sequence in the stream and the log sequence its message ends at) and the
 * write subscription. Everything runs on the server's loop; libnats's threads only queue the
 * writes (nats_conn.c).
 *
 * Why no segment is lost, duplicated or reordered: the position is read back from the stream
 * itself at start (the Cs-Last header of its last message), never kept on disk beside it; each
 * publish expects the stream's last sequence to be the one the publisher knows (JetStream's
 * expected-last-subject-sequence) and carries Nats-Msg-Id <network>-<first>, so a publish whose
 * acknowledgement was lost and is sent again is refused or recognised as a duplicate, and the
 * publisher reads the position back again. A publish that fails (NATS unreachable, no quorum)
 * is retried from the same position a second later.
 */
#include "net/nats_int.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

struct cs__natspub {
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *wsub;
    cs__natsq *q;
    cs__server *s;
    uv_timer_t more; /* continues a catch-up past one pump's budget */
    bool more_open;
    cs__nats_names n;
    uint64_t published; /* the log sequence the stream's last message ends at */
    uint64_t sseq;      /* the stream's last sequence (0: empty) */
    uint64_t retry_at_ms;
    bool failing; /* the last publish failed; logged once until one succeeds */
};

static void pub_fail(cs__natspub *p, const char *what, natsStatus st, jsErrCode jerr)
{
    if (!p->failing)
        cs__server_log(p->s, CS_NET_LOG_WARN, "nats", 0, CS_NETWORK,
                       "cannot %s on NATS: %s (JetStream error %d); retrying every %u ms", what,
                       natsStatus_GetText(st), (int)jerr, CS__NATS_RETRY_MS);
    p->failing = true;
    p->retry_at_ms = cs__net_now_ms() + CS__NATS_RETRY_MS;
}

/* Reads the position back from the stream: its last sequence and the Cs-Last of that
 * message. Checked against the log through r: the stream must hold this log's events, up to
 * at most its head, with the same chain. */
static cs_err read_back(cs__natspub *p, cs_log_reader *r, char *errmsg, size_t len)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetStreamInfo(&si, p->js, p->n.stream, NULL, &jerr);
    if (st != NATS_OK) {
        snprintf(errmsg, len, "cannot read stream %s: %s (JetStream error %d)", p->n.stream,
                 natsStatus_GetText(st), (int)jerr);
        return cs__nats_code(st);
    }
    uint64_t last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    if (last == 0) {
        p->published = p->sseq = 0;
        return CS_OK;
    }
    natsMsg *m = NULL;
    if ((st = js_GetMsg(&m, p->js, p->n.stream, last, NULL, &jerr)) != NATS_OK) {
        snprintf(errmsg, len, "cannot read message %" PRIu64 " of stream %s: %s", last, p->n.stream,
                 natsStatus_GetText(st));
        return cs__nats_code(st);
    }
    uint64_t seg_last = 0, chain = 0, head = 0, mine = 0;
    cs_err err = CS_OK;
    if (!cs__nats_header_u64(m, "Cs-Last", 10, &seg_last) ||
        !cs__nats_header_u64(m, "Cs-Chain", 16, &chain)) {
        err = CS_CORRUPT;
        snprintf(errmsg, len, "message %" PRIu64 " of stream %s is not a chainsync segment", last,
                 p->n.stream);
    } else if ((err = cs_log_reader_head(r, &head)) == CS_OK && seg_last > head) {
        err = CS_CORRUPT;
        snprintf(errmsg, len,
                 "stream %s holds events up to %" PRIu64 " but this log ends at %" PRIu64
                 " (a log restored from a backup?): refusing to publish a different history",
                 p->n.stream, seg_last, head);
    } else if (err == CS_OK && (err = cs__log_chain_at(r, seg_last, &mine)) == CS_OK &&
               mine != chain) {
        err = CS_CORRUPT;
        snprintf(errmsg, len, "stream %s's event %" PRIu64 " is not this log's", p->n.stream,
                 seg_last);
    } else if (err != CS_OK) {
        snprintf(errmsg, len, "cannot read the log");
    }
    natsMsg_Destroy(m);
    if (err == CS_OK) {
        p->published = seg_last;
        p->sseq = last;
    }
    return err;
}

/* Creates the stream, or checks that the one under our name is this network's. */
static cs_err ensure_stream(cs__natspub *p, const cs_nats_options *o, char *errmsg, size_t len)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetStreamInfo(&si, p->js, p->n.stream, NULL, &jerr);
    if (st == NATS_OK) {
        bool ours = si->Config && si->Config->Description &&
                    strcmp(si->Config->Description, p->n.description) == 0 &&
                    si->Config->SubjectsLen == 1 &&
                    strcmp(si->Config->Subjects[0], p->n.log_subj) == 0;
        jsStreamInfo_Destroy(si);
        if (!ours)
            snprintf(errmsg, len, "stream %s exists but is not this network's (%s on %s)",
                     p->n.stream, p->n.description, p->n.log_subj);
        return ours ? CS_OK : CS_FORBIDDEN;
    }
    if (jerr != JSStreamNotFoundErr) {
        snprintf(errmsg, len, "cannot read stream %s: %s (JetStream error %d)", p->n.stream,
                 natsStatus_GetText(st), (int)jerr);
        return cs__nats_code(st);
    }
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    const char *subjects[1] = {p->n.log_subj};
    cfg.Name = p->n.stream;
    cfg.Description = p->n.description;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_LimitsPolicy; /* every branch reads it at its own pace: keep it all */
    cfg.Discard = js_DiscardNew;     /* never drop the oldest a late branch still needs */
    cfg.MaxMsgSize = (int32_t)(CS_NET_SEGMENT_BYTES_MAX + 4096);
    cfg.Replicas = o->replicas ? o->replicas : 1;
    cfg.Duplicates = 2 * 60 * 1000000000LL; /* the Nats-Msg-Id window: 2 minutes, in ns */
    cfg.DenyDelete = true;
    if ((st = js_AddStream(&si, p->js, &cfg, NULL, &jerr)) != NATS_OK) {
        snprintf(errmsg, len, "cannot create stream %s: %s (JetStream error %d)", p->n.stream,
                 natsStatus_GetText(st), (int)jerr);
        return cs__nats_code(st);
    }
    jsStreamInfo_Destroy(si);
    cs__server_log(p->s, CS_NET_LOG_INFO, "nats", 0, CS_OK,
                   "created stream %s (subject %s, file storage, %lld replicas)", p->n.stream,
                   p->n.log_subj, (long long)cfg.Replicas);
    return CS_OK;
}

/* One segment, published; false when it was not (failing, or the position was read back). */
static bool publish_one(cs__natspub *p, cs_log_reader *r, uint64_t head)
{
    cs__buf *b = NULL;
    cs_err err = cs__segcache_get(p->s->cache, r, p->published + 1, head, &b);
    uint64_t chain = 0;
    if (err == CS_OK)
        err = cs__log_chain_at(r, b->last, &chain);
    if (err != CS_OK) {
        cs__buf_unref(b);
        cs__server_log(p->s, CS_NET_LOG_ERROR, "nats", 0, err, "cannot encode a segment: %s",
                       cs_err_name(err));
        p->retry_at_ms = cs__net_now_ms() + CS__NATS_RETRY_MS;
        return false;
    }
    /* The SEGMENT frame's body past its 5-byte frame header and 5-byte bin header: the
     * segment itself, byte for byte. */
    const uint8_t *seg = b->data + CS_NET_FRAME_HEADER_BYTES + 5;
    int seg_len = (int)(b->len - CS_NET_FRAME_HEADER_BYTES - 5);
    char first_s[24], last_s[24], chain_s[24], id[48];
    snprintf(first_s, sizeof(first_s), "%" PRIu64, b->first);
    snprintf(last_s, sizeof(last_s), "%" PRIu64, b->last);
    snprintf(chain_s, sizeof(chain_s), "%016" PRIx64, chain);
    snprintf(id, sizeof(id), "%s-%" PRIu64, p->n.net, b->first);
    natsMsg *m = NULL;
    natsStatus st = natsMsg_Create(&m, p->n.log_subj, NULL, (const char *)seg, seg_len);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Cs-First", first_s);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Cs-Last", last_s);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Cs-Chain", chain_s);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = id;
    po.MaxWait = CS__NATS_WAIT_MS;
    if (p->sseq)
        po.ExpectLastSubjectSeq = p->sseq;
    else
        po.ExpectNoMessage = true;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    if (st == NATS_OK)
        st = js_PublishMsg(&pa, p->js, m, &po, &jerr);
    natsMsg_Destroy(m);
    uint64_t first = b->first, last = b->last;
    cs__buf_unref(b);
    if (st == NATS_OK && !pa->Duplicate) {
        p->published = last;
        p->sseq = pa->Sequence;
        if (p->failing)
            cs__server_log(p->s, CS_NET_LOG_INFO, "nats", 0, CS_OK,
                           "publishing to NATS again from event %" PRIu64, first);
        p->failing = false;
        jsPubAck_Destroy(pa);
        return true;
    }
    bool dup = st == NATS_OK;
    jsPubAck_Destroy(pa);
    if (dup || jerr == JSStreamWrongLastSequenceErr) {
        /* The stream moved past what we knew: an earlier publish landed though its
         * acknowledgement was lost. Read the position back; never publish on a guess. */
        char msg[256];
        cs_err e2 = read_back(p, r, msg, sizeof(msg));
        cs__server_log(
            p->s, e2 == CS_OK ? CS_NET_LOG_INFO : CS_NET_LOG_ERROR, "nats", 0, e2,
            "stream %s already held event %" PRIu64 "; resuming after event %" PRIu64 "%s%s",
            p->n.stream, first, p->published, e2 == CS_OK ? "" : ": ", e2 == CS_OK ? "" : msg);
        if (e2 != CS_OK)
            p->retry_at_ms = cs__net_now_ms() + CS__NATS_RETRY_MS;
        return false;
    }
    pub_fail(p, "publish", st, jerr);
    return false;
}

static void pub_more(uv_timer_t *t);

void cs__natspub_pump(cs__server *s, cs__natspub *p, cs_log_reader *r)
{
    if (!p || s->stopping || cs__net_now_ms() < p->retry_at_ms)
        return;
    uint64_t head = 0;
    if (cs_log_reader_head(r, &head) != CS_OK)
        return;
    unsigned n = 0;
    while (p->published < head && n < CS__NATS_PUB_BUDGET && publish_one(p, r, head))
        n++;
    if (p->published < head && n == CS__NATS_PUB_BUDGET && p->more_open)
        uv_timer_start(&p->more, pub_more, 0, 0); /* the TCP branches get a turn first */
}

static void pub_run(cs__natspub *p)
{
    cs_log_reader *r;
    if (cs_log_reader_open(p->s->log, &r) != CS_OK)
        return;
    cs__natspub_pump(p->s, p, r);
    cs_log_reader_close(r);
}

static void pub_more(uv_timer_t *t)
{
    pub_run(t->data);
}

void cs__natspub_tick(cs__server *s, cs__natspub *p, uint64_t now)
{
    (void)s;
    if (p && p->retry_at_ms && now >= p->retry_at_ms) {
        p->retry_at_ms = 0;
        pub_run(p);
    }
}

/* ---- the branches' writes (R8) ---------------------------------------------------------- */

static void answer_write(cs__natspub *p, natsMsg *m)
{
    const char *subj = natsMsg_GetSubject(m), *reply = natsMsg_GetReply(m);
    size_t pre = strlen(p->n.write_all) - 1; /* "cs.<net>.write." */
    char *end = NULL;
    uint64_t shop = strncmp(subj, p->n.write_all, pre) == 0 ? strtoull(subj + pre, &end, 10) : 0;
    cs__nats_names bn;
    uint64_t network = strtoull(p->n.net, NULL, 16);
    cs__nats_names_make(network, shop, &bn);
    /* The shop is the subject's: nats-server lets branch N publish only cs.<net>.write.N. The
     * answer goes only to that branch's reply subject, whatever the message asked. */
    if (!shop || !end || *end || !reply || strcmp(reply, bn.reply) != 0) {
        cs__server_log(p->s, CS_NET_LOG_WARN, "nats", shop, CS_INVALID_INPUT,
                       "ignored a write on %s (reply subject %s)", subj, reply ? reply : "none");
        return;
    }
    const uint8_t *body = (const uint8_t *)natsMsg_GetData(m);
    size_t len = (size_t)natsMsg_GetDataLength(m);
    cs_remote_answer ans = {0};
    cs__body req;
    const uint8_t *rid = NULL;
    cs_err err = len <= CS_NET_CONTROL_FRAME_BYTES_MAX
                     ? cs_engine_remote_write(p->s->e, shop, body, len, &ans)
                     : CS_CORRUPT;
    bool parsed = err == CS_OK && cs__body_parse(&req, body, len) == CS_OK;
    if (err != CS_OK || !parsed || !cs__body_bin(&req, "req", CS_REQUEST_ID_BYTES, &rid)) {
        cs__server_log(p->s, CS_NET_LOG_WARN, "write_refused", shop,
                       err == CS_OK || err == CS_CORRUPT ? CS_INVALID_INPUT : err,
                       "shop %" PRIu64 ": a write over NATS is not an outbox entry", shop);
        if (parsed)
            cs__body_free(&req);
        return; /* no request id to answer to: the branch resends, and is refused again */
    }
    cs__pk pk;
    cs__pk_write_answer(&pk, rid, &ans);
    cs__body_free(&req);
    natsStatus st = pk.sb.data ? natsConnection_Publish(p->nc, reply, pk.sb.data, (int)pk.sb.size)
                               : NATS_NO_MEMORY;
    cs__pk_destroy(&pk);
    if (st != NATS_OK) /* remembered under (shop, req): the resend gets this answer */
        cs__server_log(p->s, CS_NET_LOG_WARN, "nats", shop, CS_NETWORK,
                       "cannot answer shop %" PRIu64 "'s write: %s", shop, natsStatus_GetText(st));
    if (ans.code != CS_OK)
        cs__server_log(p->s, CS_NET_LOG_WARN, "write_refused", shop, ans.code,
                       "shop %" PRIu64 ": write refused: %s: %s", shop, cs_err_name(ans.code),
                       ans.message);
    else
        p->s->writes_applied++;
}

static void drain_writes(void *arg)
{
    cs__natspub *p = arg;
    natsMsg *m;
    bool any = false;
    while ((m = cs__natsq_pop(p->q))) {
        if (!p->s->stopping) {
            answer_write(p, m);
            any = true;
        }
        natsMsg_Destroy(m);
    }
    if (any)
        cs__server_pump_all(p->s); /* the writes are in the log: every branch gets them now */
}

/* ---- start and stop ---------------------------------------------------------------------- */

cs_err cs__natspub_start(cs__server *s, const cs_nats_options *o, cs__natspub **out, char *errmsg,
                         size_t len)
{
    cs__natspub *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(errmsg, len, "out of memory");
        return CS_NO_MEMORY;
    }
    p->s = s;
    cs__nats_names_make(s->log_id, s->self, &p->n);
    cs__nats_creds creds;
    cs_err err = o->creds ? cs__nats_creds_load(o->creds, &creds, errmsg, len) : CS_OK;
    if (err == CS_OK && o->creds && creds.network != s->log_id) {
        err = CS_INVALID_INPUT;
        snprintf(errmsg, len, "%s holds credentials of network %016" PRIx64 ", not this one (%s)",
                 o->creds, creds.network, p->n.net);
    }
    if (err == CS_OK)
        err = cs__nats_connect(o->url, o->creds ? &creds : NULL, NULL, o->domain, "chainsync serve",
                               &p->nc, &p->js, errmsg, len);
    sodium_memzero(&creds, sizeof(creds));
    if (err == CS_OK)
        err = ensure_stream(p, o, errmsg, len);
    cs_log_reader *r = NULL;
    if (err == CS_OK && (err = cs_log_reader_open(s->log, &r)) != CS_OK)
        snprintf(errmsg, len, "cannot read the log");
    if (err == CS_OK)
        err = read_back(p, r, errmsg, len);
    cs_log_reader_close(r);
    if (err == CS_OK && (err = cs__natsq_new(s->loop, drain_writes, p, &p->q)) != CS_OK)
        snprintf(errmsg, len, "cannot start the write queue");
    natsStatus st = NATS_OK;
    if (err == CS_OK && (st = natsConnection_Subscribe(&p->wsub, p->nc, p->n.write_all,
                                                       cs__natsq_handler, p->q)) != NATS_OK) {
        err = cs__nats_code(st);
        snprintf(errmsg, len, "cannot subscribe to %s: %s", p->n.write_all, natsStatus_GetText(st));
    }
    if (err == CS_OK && uv_timer_init(s->loop, &p->more) == 0) {
        p->more.data = p;
        p->more_open = true;
    }
    if (err != CS_OK) {
        cs__natspub_stop(p);
        return err;
    }
    cs__server_log(s, CS_NET_LOG_INFO, "nats", 0, CS_OK,
                   "publishing to NATS stream %s at %s; it holds events up to %" PRIu64
                   " (stream sequence %" PRIu64 ")",
                   p->n.stream, o->url, p->published, p->sseq);
    *out = p;
    return CS_OK;
}

static void more_closed(uv_handle_t *h)
{
    free(h->data);
}

void cs__natspub_stop(cs__natspub *p)
{
    if (!p)
        return;
    if (p->wsub) {
        natsSubscription_Unsubscribe(p->wsub);
        natsSubscription_Destroy(p->wsub);
    }
    cs__nats_disconnect(p->nc, p->js);
    cs__natsq_close(p->q);
    if (p->more_open)
        uv_close((uv_handle_t *)&p->more, more_closed); /* frees p */
    else
        free(p);
}
