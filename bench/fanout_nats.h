/*
 * fanout_nats.h: bench/fanout --via nats (issue 15): the same catch-up and live runs as the
 * direct TCP server's, for the same K and the same events, through NATS JetStream: the head
 * office is the same `chainsync serve` with `--nats HUB` (it publishes each committed segment
 * once to the network's stream), and the branches are the same cs_node with its NATS option
 * (net/nats_sub.c: a durable consumer shop-<id> each, with its own credentials, acknowledged
 * after the commit), connected to a leaf node (the region's server, without JetStream of its
 * own), whose leaf connection carries their JetStream requests to the hub's domain "hub"
 * (--nats-domain). fanout.c runs its catch_up() and live() again with these options and prints
 * each row under the TCP one with what the two nats-servers spent and the ratio nats / tcp.
 *
 * It owns, per K, a JetStream hub and a leaf node (nats-server processes on kernel-picked ports,
 * bench/nats_sim.h; stopped by pid and their store directory removed after the K), the
 * branches' credential files, and the durable consumers, deleted between the rows so that each
 * catch-up starts from the stream's first segment as the TCP catch-up starts from the log.
 */
#ifndef CS_BENCH_FANOUT_NATS_H
#define CS_BENCH_FANOUT_NATS_H

#include "bench/nats_sim.h"

typedef struct cs_fn {
    char root[300], hq[300];
    cs_ns_srv hub, leaf;
    cs_nats_options branch, head; /* the branches' (the leaf), the head office's (the hub) */
    char stream[64], subject[64]; /* the network's: net/nats_conn.c's names */
    char creds[320];              /* the branches' credentials, one file each */
    double hub0, leaf0;           /* their CPU at the start of a row */
} cs_fn;

/* Each branch's NATS credentials (cs_nats_credentials at the head office, as `shop
 * nats-credentials` makes them) in dir/b<i>.json, named as fanout's run directories. The servers
 * here require no user, so they accept these; the node still checks their network. */
static inline bool cs__fn_creds(const char *hq, const char *dir, const uint64_t *shops, unsigned k)
{
    cs_engine *e = NULL;
    bool ok = mkdir(dir, 0700) == 0 && cs_engine_open(hq, NULL, &e) == CS_OK;
    for (unsigned i = 0; ok && i < k; i++) {
        char *json = NULL, *conf = NULL, msg[256], path[400];
        snprintf(path, sizeof(path), "%s/b%u.json", dir, i);
        FILE *out = NULL;
        ok = cs_nats_credentials(e, shops[i], &json, &conf, msg, sizeof(msg)) == CS_OK &&
             (out = fopen(path, "w")) != NULL && fputs(json, out) >= 0;
        if (out && fclose(out) != 0)
            ok = false;
        free(json);
        free(conf);
    }
    cs_engine_close(e);
    return ok;
}

/* Starts the hub (JetStream in domain "hub") and the leaf node in root/nats; writes the k
 * branches' credentials. branch.creds is
 * then their directory (fanout.c's worker_run names each node's file). */
static inline bool cs_fn_begin(cs_fn *f, const char *root, const char *hq, const uint64_t *shops,
                               unsigned k, char *why, size_t why_len)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "%.280s/nats", root);
    snprintf(f->hq, sizeof(f->hq), "%s", hq);
    cs_bench_rm_tree(f->root);
    mkdir(f->root, 0700);
    uint64_t head = 0, network = 0;
    if (!cs_ns_hq_at(hq, 1, &head, &network)) {
        snprintf(why, why_len, "cannot read the head office's log");
        return false;
    }
    snprintf(f->stream, sizeof(f->stream), "CS_%016llx", (unsigned long long)network);
    snprintf(f->subject, sizeof(f->subject), "cs.%016llx.log", (unsigned long long)network);
    if (!cs_ns_start(&f->hub, f->root, "hub", 0, CS_NS_JS_DOMAIN, why, why_len) ||
        !cs_ns_start(&f->leaf, f->root, "leaf1", f->hub.leaf_port, CS_NS_JS_NONE, why, why_len))
        return false;
    f->branch.url = f->leaf.url;
    f->branch.domain = "hub";
    f->head.url = f->hub.url;
    snprintf(f->creds, sizeof(f->creds), "%s/creds", f->root);
    f->branch.creds = f->creds;
    if (!cs__fn_creds(hq, f->creds, shops, k)) {
        snprintf(why, why_len, "cannot make the branches' NATS credentials");
        return false;
    }
    return true;
}

static inline void cs_fn_end(cs_fn *f)
{
    cs_ns_stop(&f->leaf);
    cs_ns_stop(&f->hub);
    cs_bench_rm_tree(f->root);
}

typedef struct cs__fn_wait_args {
    const char *url, *stream, *subject;
    uint64_t head;
} cs__fn_wait_args;

static inline bool cs__fn_published_do(void *arg)
{
    const cs__fn_wait_args *a = arg;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    bool ok = false;
    if (natsConnection_ConnectTo(&nc, a->url) != NATS_OK ||
        natsConnection_JetStream(&js, nc, NULL) != NATS_OK) {
        natsConnection_Destroy(nc);
        return false;
    }
    uint64_t deadline = cs_run_now_ms() + 10 * CS_NS_WAIT_MS;
    while (!ok && cs_run_now_ms() < deadline) {
        natsMsg *m = NULL;
        jsErrCode je = 0;
        const char *last = NULL;
        if (js_GetLastMsg(&m, js, a->stream, a->subject, NULL, &je) == NATS_OK &&
            natsMsgHeader_Get(m, "Cs-Last", &last) == NATS_OK)
            ok = strtoull(last, NULL, 10) >= a->head;
        natsMsg_Destroy(m);
        if (!ok)
            cs_run_sleep_ms(20);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return ok;
}

/* Waits (bounded) until serve has published up to the log's event `head` (the Cs-Last header
 * of the stream's last message), so that a catch-up through NATS starts, as over TCP, with
 * the whole log there to read. */
static inline bool cs_fn_published(cs_fn *f, uint64_t head)
{
    cs__fn_wait_args a = {
        .url = f->hub.url, .stream = f->stream, .subject = f->subject, .head = head};
    return cs__ns_forked(cs__fn_published_do, &a);
}

typedef struct cs__fn_drop_args {
    const char *url, *stream;
    const uint64_t *shops;
    unsigned k;
} cs__fn_drop_args;

static inline bool cs__fn_drop_do(void *arg)
{
    const cs__fn_drop_args *a = arg;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    if (natsConnection_ConnectTo(&nc, a->url) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK)
        for (unsigned i = 0; i < a->k; i++) {
            char name[64];
            jsErrCode je = 0;
            snprintf(name, sizeof(name), "shop-%llu", (unsigned long long)a->shops[i]);
            js_DeleteConsumer(js, a->stream, name, NULL, &je);
        }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return true;
}

/* Deletes the branches' durable consumers (shop-<id>): the next catch-up reads from the start. */
static inline void cs_fn_consumers_drop(cs_fn *f, const uint64_t *shops, unsigned k)
{
    cs__fn_drop_args a = {.url = f->hub.url, .stream = f->stream, .shops = shops, .k = k};
    cs__ns_forked(cs__fn_drop_do, &a);
}

/* How many of dirs[0..k) hold the log up to head (their cursor): a catch-up through NATS counts
 * only when every branch got all of it, as the TCP one ends at the head. */
static inline unsigned cs_fn_at_head(char (*dirs)[320], unsigned k, uint64_t head)
{
    unsigned n = 0;
    for (unsigned i = 0; i < k; i++) {
        cs_branch *b = NULL;
        cs_branch_state st = {0};
        if (cs_branch_open(dirs[i], NULL, &b) == CS_OK && cs_branch_state_get(b, &st) == CS_OK)
            n += st.cursor >= head;
        cs_branch_close(b);
    }
    return n;
}

static inline void cs_fn_row_begin(cs_fn *f)
{
    f->hub0 = cs_ns_cpu_s(f->hub.pid), f->leaf0 = cs_ns_cpu_s(f->leaf.pid);
}

/* The NATS servers' share of a row, printed under it, and the ratio to the TCP row's figure. */
static inline void cs_fn_row_end(cs_fn *f, bool ok, const char *what, double nats, double tcp,
                                 unsigned k, const char *mode, FILE *json)
{
    double hub = cs_ns_cpu_s(f->hub.pid) - f->hub0, leaf = cs_ns_cpu_s(f->leaf.pid) - f->leaf0;
    double hub_rss = cs_run_proc_kib(f->hub.pid, "VmRSS") / 1024.0;
    double leaf_rss = cs_run_proc_kib(f->leaf.pid, "VmRSS") / 1024.0;
    printf("        %-44s hub cpu %.2f s rss %.0f MiB, leaf cpu %.2f s rss %.0f MiB\n",
           "nats-server", hub, hub_rss, leaf, leaf_rss);
    if (ok && nats > 0 && tcp > 0)
        printf("        %-44s %12.0f vs %12.0f  ratio %5.2f\n", what, nats, tcp, nats / tcp);
    if (json)
        fprintf(json,
                "{\"k\":%u,\"mode\":\"%s\",\"via\":\"nats\",\"nats_over_tcp\":%.3f,"
                "\"hub_cpu_s\":%.3f,\"hub_rss_mib\":%.1f,\"leaf_cpu_s\":%.3f,"
                "\"leaf_rss_mib\":%.1f}\n",
                k, mode, ok && tcp > 0 ? nats / tcp : 0, hub, hub_rss, leaf, leaf_rss);
}

#endif
