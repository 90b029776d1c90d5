/*
 * nats_conn.c: what both ends of the NATS JetStream transport share (docs/design.md "NATS
 * transport"): a network's names on NATS, the credentials file and the nats-server entry that
 * `chainsync shop nats-credentials` writes, connecting through libnats, and the queue that
 * hands messages from libnats's delivery threads to the loop that owns LMDB. libnats runs its
 * own threads (socket reads, message delivery); nothing here touches LMDB from them: a handler
 * only queues the message and wakes the loop (uv_async_send, the one libuv call that is
 * thread-safe).
 */
#include "net/nats_int.h"

#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

void cs__nats_names_make(uint64_t network, uint64_t shop, cs__nats_names *n)
{
    memset(n, 0, sizeof(*n));
    snprintf(n->net, sizeof(n->net), "%016" PRIx64, network);
    snprintf(n->stream, sizeof(n->stream), "CS_%s", n->net);
    snprintf(n->log_subj, sizeof(n->log_subj), "cs.%s.log", n->net);
    snprintf(n->write_all, sizeof(n->write_all), "cs.%s.write.*", n->net);
    snprintf(n->write, sizeof(n->write), "cs.%s.write.%" PRIu64, n->net, shop);
    snprintf(n->reply, sizeof(n->reply), "cs.%s.reply.%" PRIu64, n->net, shop);
    snprintf(n->inbox, sizeof(n->inbox), "cs.%s.inbox.%" PRIu64, n->net, shop);
    snprintf(n->deliver, sizeof(n->deliver), "cs.%s.deliver.%" PRIu64, n->net, shop);
    snprintf(n->durable, sizeof(n->durable), "shop-%" PRIu64, shop);
    snprintf(n->description, sizeof(n->description), "chainsync network %s", n->net);
}

/* ---- credentials ------------------------------------------------------------------------- */

cs_err cs__nats_creds_load(const char *path, cs__nats_creds *out, char *errmsg, size_t len)
{
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    if (!j) {
        snprintf(errmsg, len, "cannot read the NATS credentials %s: %s", path, jerr.text);
        return CS_IO;
    }
    const char *net = NULL, *user = NULL, *pw = NULL;
    json_int_t shop = 0;
    cs__nats_creds c = {0};
    char *end = NULL;
    cs_err err = CS_OK;
    if (json_unpack(j, "{s:s,s:I,s:s,s:s}", "network", &net, "shop", &shop, "user", &user,
                    "password", &pw) != 0 ||
        shop <= 0 || strlen(user) >= sizeof(c.user) || strlen(pw) >= sizeof(c.password) ||
        strlen(net) != 16 || (c.network = strtoull(net, &end, 16), *end != '\0'))
        err = CS_INVALID_INPUT;
    if (err == CS_OK) {
        c.shop = (uint64_t)shop;
        snprintf(c.user, sizeof(c.user), "%s", user);
        snprintf(c.password, sizeof(c.password), "%s", pw);
        *out = c;
    } else {
        snprintf(errmsg, len,
                 "%s is not a chainsync NATS credentials file ({network, shop, user, password})",
                 path);
    }
    json_decref(j);
    sodium_memzero(&c, sizeof(c));
    return err;
}

/* The permissions of one NATS user: the head office may manage and publish to its network's
 * stream and answer writes; a branch may read the stream only through its own consumer and
 * publish only its own writes (docs/design.md "NATS transport", "Credentials"). */
static char *server_entry(const cs__nats_names *n, bool head, const char *user, const char *pw,
                          const char *stream)
{
    char *s = NULL;
    int rc;
    if (head)
        rc = asprintf(&s,
                      "{ user: \"%s\", password: \"%s\", permissions: {\n"
                      "    publish: { allow: [\"%s\", \"cs.%s.reply.*\", \"$JS.API.INFO\",\n"
                      "      \"$JS.API.STREAM.CREATE.%s\", \"$JS.API.STREAM.INFO.%s\",\n"
                      "      \"$JS.API.STREAM.MSG.GET.%s\"] }\n"
                      "    subscribe: { allow: [\"%s\", \"_INBOX.>\"] } } }\n",
                      user, pw, n->log_subj, n->net, stream, stream, stream, n->write_all);
    else /* each JetStream API subject twice: without a domain, and $JS.<domain>.API (leaf) */
        rc = asprintf(
            &s,
            "{ user: \"%s\", password: \"%s\", permissions: {\n"
            "    publish: { allow: [\"%s\",\n"
            "      \"$JS.API.CONSUMER.INFO.%s.%s\", \"$JS.*.API.CONSUMER.INFO.%s.%s\",\n"
            "      \"$JS.API.CONSUMER.CREATE.%s.%s\", \"$JS.*.API.CONSUMER.CREATE.%s.%s\",\n"
            "      \"$JS.API.CONSUMER.CREATE.%s.%s.>\",\n"
            "      \"$JS.*.API.CONSUMER.CREATE.%s.%s.>\",\n"
            "      \"$JS.API.CONSUMER.DURABLE.CREATE.%s.%s\",\n"
            "      \"$JS.*.API.CONSUMER.DURABLE.CREATE.%s.%s\",\n"
            "      \"$JS.ACK.%s.%s.>\", \"$JS.ACK.*.*.%s.%s.>\"] }\n"
            "    subscribe: { allow: [\"%s\", \"%s\", \"%s.>\"] } } }\n",
            user, pw, n->write, stream, n->durable, stream, n->durable, stream, n->durable, stream,
            n->durable, stream, n->durable, stream, n->durable, stream, n->durable, stream,
            n->durable, stream, n->durable, stream, n->durable, n->deliver, n->reply, n->inbox);
    return rc < 0 ? NULL : s;
}

static bool shop_exists(cs_engine *e, uint64_t shop, cs_err *err)
{
    json_t *list = NULL;
    if ((*err = cs_engine_shop_list(e, &list)) != CS_OK)
        return false;
    bool found = false;
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        json_int_t id = json_integer_value(json_object_get(v, "id"));
        found |= id > 0 && (uint64_t)id == shop;
    }
    json_decref(list);
    return found;
}

cs_err cs_nats_credentials(cs_engine *e, uint64_t shop, char **creds_json, char **server_conf,
                           char *errmsg, size_t errmsg_len)
{
    cs_shop_info self;
    cs_err err = cs_engine_self(e, &self);
    if (err != CS_OK || self.role != CS_ROLE_HEAD) {
        snprintf(errmsg, errmsg_len, "this directory is not a head office");
        return CS_FORBIDDEN;
    }
    if (shop != self.id && !shop_exists(e, shop, &err)) {
        snprintf(errmsg, errmsg_len, "no shop %" PRIu64 " in this network", shop);
        return err != CS_OK ? err : CS_NOT_FOUND;
    }
    cs_log_reader *r;
    uint64_t network = 0;
    if ((err = cs_log_reader_open(cs_engine_log(e), &r)) == CS_OK) {
        err = cs__log_chain_at(r, 1, &network);
        cs_log_reader_close(r);
    }
    if (err != CS_OK) {
        snprintf(errmsg, errmsg_len, "cannot read the log's first event");
        return err;
    }
    cs__nats_names n;
    cs__nats_names_make(network, shop, &n);
    uint8_t raw[18];
    randombytes_buf(raw, sizeof(raw));
    char pw[32], user[64];
    sodium_bin2base64(pw, sizeof(pw), raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
    snprintf(user, sizeof(user), "cs-%s-%" PRIu64, n.net, shop);
    json_t *j = json_pack("{s:s,s:I,s:s,s:s}", "network", n.net, "shop", (json_int_t)shop, "user",
                          user, "password", pw);
    *creds_json = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    *server_conf = server_entry(&n, shop == self.id, user, pw, n.stream);
    sodium_memzero(pw, sizeof(pw));
    if (!*creds_json || !*server_conf) {
        free(*creds_json);
        free(*server_conf);
        *creds_json = *server_conf = NULL;
        snprintf(errmsg, errmsg_len, "out of memory");
        return CS_NO_MEMORY;
    }
    return CS_OK;
}

/* ---- connecting -------------------------------------------------------------------------- */

cs_err cs__nats_code(natsStatus s)
{
    switch (s) {
    case NATS_OK:
        return CS_OK;
    case NATS_CONNECTION_AUTH_FAILED:
    case NATS_NOT_PERMITTED:
        return CS_AUTH_FAILED;
    case NATS_NO_MEMORY:
        return CS_NO_MEMORY;
    default:
        return CS_NETWORK;
    }
}

/* "a,b,c" into the servers of o (libnats takes a list, not a comma-separated string). */
static natsStatus set_servers(natsOptions *o, const char *url)
{
    char *copy = strdup(url), *save = NULL;
    const char *list[16];
    int n = 0;
    if (!copy)
        return NATS_NO_MEMORY;
    for (char *t = strtok_r(copy, ",", &save); t && n < 16; t = strtok_r(NULL, ",", &save))
        if (*t)
            list[n++] = t;
    natsStatus s = n ? natsOptions_SetServers(o, list, n) : NATS_INVALID_ARG;
    free(copy);
    return s;
}

cs_err cs__nats_connect(const char *url, const cs__nats_creds *creds, const char *inbox,
                        const char *domain, const char *name, natsConnection **nc, jsCtx **js,
                        char *errmsg, size_t len)
{
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = set_servers(o, url);
    if (s == NATS_OK && creds)
        s = natsOptions_SetUserInfo(o, creds->user, creds->password);
    if (s == NATS_OK && inbox)
        s = natsOptions_SetCustomInboxPrefix(o, inbox);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, name);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1); /* forever: the node's own policy decides */
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, 250);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, CS__NATS_WAIT_MS);
    /* One pool of delivery threads for every subscription of the process (a benchmark runs
     * many nodes in one process), rather than a thread per subscription. */
    if (s == NATS_OK)
        s = natsOptions_UseGlobalMessageDelivery(o, true);
    if (s == NATS_OK)
        s = natsConnection_Connect(nc, o);
    natsOptions_Destroy(o);
    if (s != NATS_OK) {
        snprintf(errmsg, len, "cannot connect to NATS at %s: %s", url, natsStatus_GetText(s));
        *nc = NULL;
        return cs__nats_code(s);
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = CS__NATS_WAIT_MS;
    jo.Domain = domain && *domain ? domain : NULL;
    if ((s = natsConnection_JetStream(js, *nc, &jo)) != NATS_OK) {
        snprintf(errmsg, len, "cannot use JetStream: %s", natsStatus_GetText(s));
        natsConnection_Destroy(*nc);
        *nc = NULL;
        return cs__nats_code(s);
    }
    return CS_OK;
}

void cs__nats_disconnect(natsConnection *nc, jsCtx *js)
{
    jsCtx_Destroy(js);
    if (nc) {
        natsConnection_Close(nc);
        natsConnection_Destroy(nc);
    }
}

bool cs__nats_header_u64(natsMsg *m, const char *key, int base, uint64_t *out)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || !v || !*v)
        return false;
    char *end = NULL;
    unsigned long long x = strtoull(v, &end, base);
    if (*end != '\0')
        return false;
    *out = x;
    return true;
}

/* ---- the queue to the loop --------------------------------------------------------------- */

struct cs__natsq {
    uv_async_t async;
    pthread_mutex_t mu;
    natsMsg **msgs; /* a ring */
    size_t head, len, cap;
    bool closed;
    cs__natsq_fn drain;
    void *owner;
};

static void natsq_wake(uv_async_t *a)
{
    cs__natsq *q = a->data;
    q->drain(q->owner);
}

cs_err cs__natsq_new(uv_loop_t *loop, cs__natsq_fn drain, void *owner, cs__natsq **out)
{
    cs__natsq *q = calloc(1, sizeof(*q));
    if (!q)
        return CS_NO_MEMORY;
    q->drain = drain;
    q->owner = owner;
    q->async.data = q;
    if (pthread_mutex_init(&q->mu, NULL) != 0) {
        free(q);
        return CS_NO_MEMORY;
    }
    if (uv_async_init(loop, &q->async, natsq_wake) != 0) {
        pthread_mutex_destroy(&q->mu);
        free(q);
        return CS_IO;
    }
    *out = q;
    return CS_OK;
}

void cs__natsq_handler(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *arg)
{
    (void)nc;
    (void)sub;
    cs__natsq *q = arg;
    pthread_mutex_lock(&q->mu);
    bool ok = !q->closed;
    if (ok && q->len == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        natsMsg **m = malloc(cap * sizeof(*m));
        ok = m != NULL;
        for (size_t i = 0; ok && i < q->len; i++)
            m[i] = q->msgs[(q->head + i) % q->cap];
        if (ok) {
            free(q->msgs);
            q->msgs = m;
            q->head = 0;
            q->cap = cap;
        }
    }
    if (ok) {
        q->msgs[(q->head + q->len) % q->cap] = msg;
        q->len++;
        uv_async_send(&q->async);
    }
    pthread_mutex_unlock(&q->mu);
    if (!ok) /* closing, or out of memory: unacknowledged, so JetStream delivers it again */
        natsMsg_Destroy(msg);
}

natsMsg *cs__natsq_pop(cs__natsq *q)
{
    natsMsg *m = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->len) {
        m = q->msgs[q->head];
        q->head = (q->head + 1) % q->cap;
        q->len--;
    }
    pthread_mutex_unlock(&q->mu);
    return m;
}

static void natsq_closed(uv_handle_t *h)
{
    cs__natsq *q = h->data;
    pthread_mutex_destroy(&q->mu);
    free(q->msgs);
    free(q);
}

void cs__natsq_close(cs__natsq *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    q->closed = true;
    while (q->len) {
        natsMsg_Destroy(q->msgs[q->head]);
        q->head = (q->head + 1) % q->cap;
        q->len--;
    }
    pthread_mutex_unlock(&q->mu);
    uv_close((uv_handle_t *)&q->async, natsq_closed);
}
