/*
 * metrics.c: what `serve --http` and `branch follow --http` publish, and how it crosses from the
 * loop to the HTTP thread (docs/design.md, "Metrics"). The loop renders whole documents
 * (Prometheus text for /metrics, JSON for /api/shops and /api/history) once a second and swaps
 * each into the snapshot under its mutex; the HTTP thread (http.c) only copies a document out.
 * So the HTTP thread never sees a libuv handle, an LMDB transaction or a counter being updated,
 * and a slow scraper costs the loop nothing. Owns: the snapshot, the text builder, the lag
 * history ring, and the head office's rendering (the node renders its own, node.c).
 */
#include "net/net_int.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ---- the snapshot ------------------------------------------------------------------------ */

struct cs__snapshot {
    pthread_mutex_t mu;
    char *doc[CS__DOC_COUNT];
    size_t len[CS__DOC_COUNT];
};

cs_err cs__snapshot_new(cs__snapshot **out)
{
    cs__snapshot *s = calloc(1, sizeof(*s));
    if (!s)
        return CS_NO_MEMORY;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return CS_NO_MEMORY;
    }
    *out = s;
    return CS_OK;
}

void cs__snapshot_free(cs__snapshot *s)
{
    if (!s)
        return;
    for (int d = 0; d < CS__DOC_COUNT; d++)
        free(s->doc[d]);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void cs__snapshot_publish(cs__snapshot *s, cs__doc d, char *text, size_t len)
{
    pthread_mutex_lock(&s->mu);
    char *old = s->doc[d];
    s->doc[d] = text;
    s->len[d] = len;
    pthread_mutex_unlock(&s->mu);
    free(old); /* outside the lock: the HTTP thread never waits for a free */
}

char *cs__snapshot_copy(cs__snapshot *s, cs__doc d, size_t *len)
{
    pthread_mutex_lock(&s->mu);
    char *c = NULL;
    if (s->doc[d] && (c = malloc(s->len[d] + 1))) {
        memcpy(c, s->doc[d], s->len[d]);
        c[s->len[d]] = '\0';
        *len = s->len[d];
    }
    pthread_mutex_unlock(&s->mu);
    return c;
}

/* ---- the text builder -------------------------------------------------------------------- */

cs_err cs__mtext_open(cs__mtext *t)
{
    t->buf = NULL;
    t->len = 0;
    t->f = open_memstream(&t->buf, &t->len);
    return t->f ? CS_OK : CS_NO_MEMORY;
}

void cs__mtext_family(cs__mtext *t, const char *name, const char *type, const char *help)
{
    fprintf(t->f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void cs__mtext_label(cs__mtext *t, const char *v)
{
    for (; v && *v; v++) {
        if (*v == '\\' || *v == '"')
            fputc('\\', t->f), fputc(*v, t->f);
        else if (*v == '\n')
            fputs("\\n", t->f);
        else
            fputc(*v, t->f);
    }
}

cs_err cs__mtext_close(cs__mtext *t, char **out, size_t *len)
{
    bool bad = ferror(t->f) != 0;
    if (fclose(t->f) != 0 || bad || !t->buf) {
        free(t->buf);
        return CS_NO_MEMORY;
    }
    *out = t->buf;
    *len = t->len;
    return CS_OK;
}

/* ---- the lag history --------------------------------------------------------------------- */

#define HN CS_NET_HISTORY_SAMPLES

typedef struct lag_series {
    uint64_t shop;
    int64_t lag[HN]; /* -1: no figure at that sample (not yet added, or never seen) */
} lag_series;

struct cs__lagring {
    uint64_t times[HN];
    unsigned count, next; /* samples held; the slot of the next one */
    uint64_t last_ms;
    lag_series *s;
    size_t ns, cap;
};

cs_err cs__lagring_new(cs__lagring **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? CS_OK : CS_NO_MEMORY;
}

void cs__lagring_free(cs__lagring *r)
{
    if (r)
        free(r->s);
    free(r);
}

static lag_series *series_of(cs__lagring *r, uint64_t shop)
{
    for (size_t i = 0; i < r->ns; i++)
        if (r->s[i].shop == shop)
            return &r->s[i];
    if (r->ns == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        lag_series *g = realloc(r->s, cap * sizeof(*g));
        if (!g)
            return NULL; /* the chart misses this shop: observation only */
        r->s = g;
        r->cap = cap;
    }
    lag_series *ls = &r->s[r->ns++];
    ls->shop = shop;
    for (unsigned k = 0; k < HN; k++)
        ls->lag[k] = -1;
    return ls;
}

bool cs__lagring_sample(cs__lagring *r, uint64_t now_ms, const uint64_t *shops,
                        const uint64_t *lags, size_t n)
{
    if (r->count > 0 && now_ms - r->last_ms < CS_NET_HISTORY_STEP_MS)
        return false;
    unsigned slot = r->next;
    r->times[slot] = now_ms;
    for (size_t i = 0; i < r->ns; i++)
        r->s[i].lag[slot] = -1;
    for (size_t i = 0; i < n; i++) {
        lag_series *ls = series_of(r, shops[i]);
        if (ls)
            ls->lag[slot] = lags[i] > INT64_MAX ? INT64_MAX : (int64_t)lags[i];
    }
    r->next = (slot + 1) % HN;
    if (r->count < HN)
        r->count++;
    r->last_ms = now_ms;
    return true;
}

cs_err cs__lagring_json(const cs__lagring *r, char **out, size_t *len)
{
    cs__mtext t;
    if (cs__mtext_open(&t) != CS_OK)
        return CS_NO_MEMORY;
    unsigned first = (r->next + HN - r->count) % HN;
    fprintf(t.f, "{\"step_ms\":%u,\"times\":[", CS_NET_HISTORY_STEP_MS);
    for (unsigned k = 0; k < r->count; k++)
        fprintf(t.f, "%s%llu", k ? "," : "", (unsigned long long)r->times[(first + k) % HN]);
    fputs("],\"series\":[", t.f);
    for (size_t i = 0; i < r->ns; i++) {
        fprintf(t.f, "%s{\"shop\":%llu,\"lag\":[", i ? "," : "", (unsigned long long)r->s[i].shop);
        for (unsigned k = 0; k < r->count; k++) {
            int64_t v = r->s[i].lag[(first + k) % HN];
            if (v < 0)
                fprintf(t.f, "%snull", k ? "," : "");
            else
                fprintf(t.f, "%s%lld", k ? "," : "", (long long)v);
        }
        fputs("]}", t.f);
    }
    fputs("]}\n", t.f);
    return cs__mtext_close(&t, out, len);
}

/* ---- the head office's documents -------------------------------------------------------- */

static uint64_t jint(const json_t *row, const char *key)
{
    const json_t *v = json_object_get(row, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* Server-wide figures: the log, the traffic, the connections and why they ended. */
static void server_totals(cs__server *s, cs__mtext *t)
{
    cs__mtext_family(t, "chainsync_head_sequence", "gauge", "Sequence of the log's last event.");
    fprintf(t->f, "chainsync_head_sequence %llu\n", (unsigned long long)s->head);
    cs__mtext_family(t, "chainsync_events_appended_total", "counter",
                     "Events appended to the log since this serve started (by any process).");
    fprintf(t->f, "chainsync_events_appended_total %llu\n",
            (unsigned long long)(s->head - s->head_at_start));
    cs__mtext_family(t, "chainsync_remote_writes_total", "counter",
                     "Shared-record writes of branches this serve applied.");
    fprintf(t->f, "chainsync_remote_writes_total %llu\n", (unsigned long long)s->writes_applied);
    cs__mtext_family(t, "chainsync_sent_bytes_total", "counter",
                     "Bytes queued to branches (frames of every type).");
    fprintf(t->f, "chainsync_sent_bytes_total %llu\n", (unsigned long long)s->bytes_sent);
    cs__mtext_family(t, "chainsync_segments_sent_total", "counter",
                     "Log segments queued to branches.");
    fprintf(t->f, "chainsync_segments_sent_total %llu\n", (unsigned long long)s->segments_sent);
    cs__mtext_family(t, "chainsync_connections", "gauge", "Open TCP connections.");
    fprintf(t->f, "chainsync_connections %u\n", s->nconns);
    cs__mtext_family(t, "chainsync_connections_accepted_total", "counter",
                     "TCP connections accepted.");
    fprintf(t->f, "chainsync_connections_accepted_total %llu\n",
            (unsigned long long)s->connections_total);
    cs__mtext_family(t, "chainsync_segment_cache_bytes", "gauge",
                     "Bytes of encoded segments the shared cache holds.");
    fprintf(t->f, "chainsync_segment_cache_bytes %zu\n", cs__segcache_bytes(s->cache));
    cs__mtext_family(t, "chainsync_drops_total", "counter",
                     "Streaming branch connections that ended, by reason (an error code, or "
                     "closed when the branch or the network closed it).");
    for (int c = 0; c < CS_ERR_COUNT; c++)
        if (s->drops[c])
            fprintf(t->f, "chainsync_drops_total{reason=\"%s\"} %llu\n",
                    c == CS_OK ? "closed" : cs_err_name((cs_err)c),
                    (unsigned long long)s->drops[c]);
    cs__mtext_family(t, "chainsync_handshake_refusals_total", "counter",
                     "Connections refused before streaming, by error code.");
    for (int c = 1; c < CS_ERR_COUNT; c++)
        if (s->refusals[c])
            fprintf(t->f, "chainsync_handshake_refusals_total{code=\"%s\"} %llu\n",
                    cs_err_name((cs_err)c), (unsigned long long)s->refusals[c]);
}

/* One gauge family over every branch row: labels shop and name. */
static void branch_family(cs__mtext *t, json_t *shops, const char *name, const char *help,
                          const char *key, double scale)
{
    cs__mtext_family(t, name, "gauge", help);
    size_t i;
    json_t *row;
    json_array_foreach(shops, i, row)
    {
        const json_t *v = json_object_get(row, key);
        if (!json_is_integer(v) && !json_is_boolean(v) && !json_is_real(v))
            continue; /* never seen: no figure rather than a false zero */
        double x = json_is_boolean(v) ? (json_is_true(v) ? 1 : 0) : json_number_value(v);
        fprintf(t->f, "%s{shop=\"%llu\",name=\"", name, (unsigned long long)jint(row, "id"));
        cs__mtext_label(t, json_string_value(json_object_get(row, "name")));
        fprintf(t->f, "\"} %.17g\n", x * scale);
    }
}

/* The branch rows of cs_engine_shop_list, with last_seen_ms from the status records. */
static json_t *branch_rows(cs__server *s)
{
    json_t *all = NULL, *rows = json_array();
    if (!rows || cs_engine_shop_list(s->e, &all) != CS_OK) {
        json_decref(rows);
        return NULL;
    }
    size_t i;
    json_t *row;
    json_array_foreach(all, i, row)
    {
        const char *role = json_string_value(json_object_get(row, "role"));
        cs_shop_status st;
        uint64_t id = jint(row, "id");
        if (role && strcmp(role, "branch") == 0 && json_is_true(json_object_get(row, "linked")) &&
            cs_engine_shop_status_get(s->e, id, &st) == CS_OK) {
            json_object_set_new(row, "last_seen_ms", json_integer((json_int_t)st.last_seen_ms));
            json_object_set_new(row, "held_on", json_boolean(st.held_seq != 0));
            json_object_set_new(row, "held_seq", json_integer((json_int_t)st.held_seq));
        }
        json_array_append(rows, row);
    }
    json_decref(all);
    return rows;
}

static void publish_metrics(cs__server *s, json_t *branches)
{
    cs__mtext t;
    char *text;
    size_t len;
    if (cs__mtext_open(&t) != CS_OK)
        return;
    server_totals(s, &t);
    branch_family(&t, branches, "chainsync_branch_cursor",
                  "The last event the branch said it applied durably.", "cursor", 1);
    branch_family(&t, branches, "chainsync_branch_lag_events",
                  "Events the branch lacks: head sequence - cursor.", "lag", 1);
    branch_family(&t, branches, "chainsync_branch_lag_seconds",
                  "Age of the oldest event the branch lacks (0 when in step).", "lag_ms", 0.001);
    branch_family(&t, branches, "chainsync_branch_connected",
                  "1 while the branch has a streaming connection.", "connected", 1);
    branch_family(&t, branches, "chainsync_branch_last_contact_timestamp_seconds",
                  "When the last frame from the branch arrived (Unix time).", "last_seen_ms",
                  0.001);
    branch_family(&t, branches, "chainsync_branch_outbox_entries",
                  "Shared-record writes the branch still has queued, as it last reported.",
                  "outbox", 1);
    branch_family(&t, branches, "chainsync_branch_switch",
                  "The branch's sync switch (R6): 1 on, 0 off.", "switch", 1);
    branch_family(&t, branches, "chainsync_branch_held",
                  "1 while the branch holds at an event it cannot apply, as it last reported.",
                  "held_on", 1);
    branch_family(&t, branches, "chainsync_branch_held_sequence",
                  "The event the branch holds at (0 when none), as it last reported.", "held_seq",
                  1);
    if (cs__mtext_close(&t, &text, &len) == CS_OK)
        cs__snapshot_publish(s->snap, CS__DOC_METRICS, text, len);
}

/* /api/shops: every shop (the head office's own row first) and the figures the page shows.
 * The rows hold no secret: cs_engine_shop_list never reads keys. */
static void publish_shops(cs__server *s, json_t *rows, uint64_t now)
{
    json_t *doc = json_pack("{s:I,s:I,s:I,s:I,s:O}", "time_ms", (json_int_t)now, "head",
                            (json_int_t)s->self, "head_seq", (json_int_t)s->head, "connections",
                            (json_int_t)s->nconns, "shops", rows);
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(doc);
    if (text)
        cs__snapshot_publish(s->snap, CS__DOC_SHOPS, text, strlen(text));
}

static void publish_history(cs__server *s, json_t *rows, uint64_t now)
{
    size_t n = json_array_size(rows), k = 0;
    uint64_t *shops = malloc((n + 1) * sizeof(*shops)), *lags = malloc((n + 1) * sizeof(*lags));
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        if (shops && lags && json_is_integer(json_object_get(row, "lag")) &&
            json_is_true(json_object_get(row, "linked"))) {
            shops[k] = jint(row, "id");
            lags[k++] = jint(row, "lag");
        }
    }
    char *text;
    size_t len;
    if (shops && lags && cs__lagring_sample(s->ring, now, shops, lags, k) &&
        cs__lagring_json(s->ring, &text, &len) == CS_OK)
        cs__snapshot_publish(s->snap, CS__DOC_HISTORY, text, len);
    free(shops);
    free(lags);
}

void cs__server_publish(cs__server *s, uint64_t now)
{
    if (!s->snap)
        return;
    json_t *rows = branch_rows(s);
    if (!rows) {
        cs__server_log(s, CS_NET_LOG_WARN, "metrics", 0, CS_IO,
                       "cannot read the shops for the metrics: %s", cs_engine_errmsg(s->e));
        return;
    }
    json_t *branches = json_array();
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        const char *role = json_string_value(json_object_get(row, "role"));
        if (branches && role && strcmp(role, "branch") == 0 &&
            json_is_true(json_object_get(row, "linked")))
            json_array_append(branches, row);
    }
    if (branches)
        publish_metrics(s, branches);
    publish_shops(s, rows, now);
    publish_history(s, branches, now);
    json_decref(branches);
    json_decref(rows);
}
