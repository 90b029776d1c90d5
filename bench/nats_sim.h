/*
 * nats_sim.h: what the NATS benchmarks share (bench/fanout --via nats, bench/natsscale; issue 15,
 * "Scale, by simulation"): real nats-server processes on 127.0.0.1 (a JetStream "hub" for the
 * head office and a leaf node, with or without a JetStream domain of its own, the region's
 * server; the streams and the region's mirror), and for bench/natsscale a head-office publisher
 * that publishes the log's segments (log/segment.c's cs_segment_encode, the bytes `serve` sends)
 * once each (--head sim; by default natsscale runs the real serve --nats), an appender, and
 * receive-only branch subscribers, one NATS connection and one durable JetStream consumer per
 * branch, that verify every segment (checksums and the chain) and acknowledge it. Everything NATS
 * goes through the real libnats client (JetStream API); nothing speaks the NATS protocol by hand.
 *
 * It owns the servers' processes (started with ports the kernel picks, read back from their
 * logs; stopped by pid), their config files and store directories (under a root the caller
 * gives), and the publisher and subscriber processes it forks. Header-only, like bench_net.h.
 */
#ifndef CS_BENCH_NATS_SIM_H
#define CS_BENCH_NATS_SIM_H

#include "bench/bench.h"
#include "engine/engine.h"
#include "net/net.h"
#include "projections/projection.h"
#include "tests/run.h"

#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define CS_NS_WAIT_MS 15000u /* a server's start, a stream's creation, a mirror's sync */

/* ---- servers ----------------------------------------------------------------------------- */

typedef struct cs_ns_srv {
    pid_t pid;
    int port, leaf_port; /* leaf_port: the hub's leafnode listener (0 on a leaf) */
    char url[64];
    char log[320];
} cs_ns_srv;

/* The port after `what` in a server's log ("... connections on 127.0.0.1:PORT"), 0 if absent. */
static inline int cs__ns_log_port(const char *log, const char *what)
{
    FILE *f = fopen(log, "r");
    char line[512];
    int port = 0;
    while (f && fgets(line, sizeof(line), f)) {
        char *p = strstr(line, what);
        char *colon = p ? strrchr(p, ':') : NULL;
        if (colon)
            port = atoi(colon + 1);
    }
    if (f)
        fclose(f);
    return port;
}

static inline bool cs__ns_log_has(const char *log, const char *what)
{
    FILE *f = fopen(log, "r");
    char line[512];
    bool found = false;
    while (f && !found && fgets(line, sizeof(line), f))
        found = strstr(line, what) != NULL;
    if (f)
        fclose(f);
    return found;
}

/* What JetStream a server runs: none, its own (no domain), or in a domain named as the server. */
typedef enum cs_ns_js { CS_NS_JS_NONE, CS_NS_JS, CS_NS_JS_DOMAIN } cs_ns_js;

/* Starts nats-server `name` with JetStream as js says (its store under root).
 * hub_leaf_port 0: a hub, which listens for leaf nodes; else a leaf node whose remote is that port
 * (without JetStream of its own, its clients' JetStream requests reach the hub's). Ports are the
 * kernel's (-1), read from the log once the server says it is ready (a leaf also waits for its leaf
 * connection). false and why on failure (nats-server missing or not starting). */
static inline bool cs_ns_start(cs_ns_srv *s, const char *root, const char *name, int hub_leaf_port,
                               cs_ns_js js, char *why, size_t why_len)
{
    char conf[320], store[320];
    snprintf(conf, sizeof(conf), "%s/%s.conf", root, name);
    snprintf(store, sizeof(store), "%s/%s-js", root, name);
    snprintf(s->log, sizeof(s->log), "%s/%s.log", root, name);
    FILE *f = fopen(conf, "w");
    if (!f) {
        snprintf(why, why_len, "cannot write %s", conf);
        return false;
    }
    /* max_payload: a segment is up to CS_NET_SEGMENT_BYTES_MAX (1 MiB) plus headers. */
    fprintf(f, "listen: 127.0.0.1:-1\nserver_name: %s\nmax_payload: 8MB\n", name);
    if (js == CS_NS_JS_DOMAIN)
        fprintf(f, "jetstream { store_dir: \"%s\", domain: %s }\n", store, name);
    else if (js == CS_NS_JS)
        fprintf(f, "jetstream { store_dir: \"%s\" }\n", store);
    if (hub_leaf_port)
        fprintf(f, "leafnodes { remotes [ { url: \"nats-leaf://127.0.0.1:%d\" } ] }\n",
                hub_leaf_port);
    else
        fprintf(f, "leafnodes { listen: 127.0.0.1:-1 }\n");
    fclose(f);
    unlink(s->log);
    s->pid = fork();
    if (s->pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        int out = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (in < 0 || out < 0)
            _exit(127);
        const char *argv[] = {"nats-server", "-c", conf, NULL};
        cs_run_child_exec(argv, in, out, out);
    }
    if (s->pid < 0) {
        snprintf(why, why_len, "fork: %s", strerror(errno));
        return false;
    }
    uint64_t deadline = cs_run_now_ms() + CS_NS_WAIT_MS;
    while (cs_run_now_ms() < deadline) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            snprintf(why, why_len, "nats-server exited (%s); see %s",
                     WIFEXITED(st) && WEXITSTATUS(st) == 127 ? "not installed" : "failed", s->log);
            return false;
        }
        if (cs__ns_log_has(s->log, "Server is ready") &&
            (!hub_leaf_port || cs__ns_log_has(s->log, "Leafnode connection created"))) {
            s->port = cs__ns_log_port(s->log, "Listening for client connections on");
            s->leaf_port = hub_leaf_port
                               ? 0
                               : cs__ns_log_port(s->log, "Listening for leafnode connections on");
            snprintf(s->url, sizeof(s->url), "nats://127.0.0.1:%d", s->port);
            if (s->port > 0 && (hub_leaf_port || s->leaf_port > 0))
                return true;
        }
        cs_run_sleep_ms(20);
    }
    snprintf(why, why_len, "nats-server %s not ready in %u ms; see %s", name, CS_NS_WAIT_MS,
             s->log);
    cs_run_stop(s->pid, SIGKILL, 5000);
    s->pid = 0;
    return false;
}

static inline void cs_ns_stop(cs_ns_srv *s)
{
    if (s->pid > 0)
        cs_run_stop(s->pid, SIGTERM, 10000);
    s->pid = 0;
}

/* CPU seconds (user + system) a process has used so far (0 when it cannot be read). */
static inline double cs_ns_cpu_s(pid_t pid)
{
    uint64_t ticks = 0;
    if (!cs_run_cpu_ticks(pid, &ticks))
        return 0;
    return (double)ticks / (double)sysconf(_SC_CLK_TCK);
}

/* ---- streams ----------------------------------------------------------------------------- */

/* libnats starts threads of its own on first use, and a process that forks after that hands its
 * children a library whose threads are gone: the parent (which forks the publisher and the
 * workers) never calls libnats itself; each administrative call runs in a child of its own. */
static inline bool cs__ns_forked(bool (*fn)(void *), void *arg)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(fn(arg) ? 0 : 1);
    return pid > 0 && cs_run_reap(pid, cs_run_now_ms() + 20 * CS_NS_WAIT_MS) == 0;
}

static inline bool cs__ns_fail(const char *what, natsStatus s, jsErrCode je)
{
    fprintf(stderr, "nats_sim: %s: %s (jetstream error %d)\n", what, natsStatus_GetText(s),
            (int)je);
    return false;
}

typedef struct cs__ns_stream_args {
    const char *url, *stream, *subject, *mirror_of, *hub_domain, *durable;
    uint64_t last;
    unsigned k;
} cs__ns_stream_args;

static inline bool cs__ns_stream_do(void *arg)
{
    const cs__ns_stream_args *a = arg;
    const char *url = a->url, *stream = a->stream, *mirror_of = a->mirror_of;
    const char *subject = a->subject, *hub_domain = a->hub_domain;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsErrCode je = 0;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, NULL);
    if (s != NATS_OK) {
        natsConnection_Destroy(nc);
        return cs__ns_fail("connect", s, je);
    }
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = stream;
    sc.Storage = js_FileStorage;
    sc.MaxMsgSize = 8 * 1024 * 1024;
    jsStreamSource src = {.Name = mirror_of};
    jsExternalStream ext = {.APIPrefix = NULL, .DeliverPrefix = ""};
    char api[128];
    if (mirror_of) {
        snprintf(api, sizeof(api), "$JS.%s.API", hub_domain);
        ext.APIPrefix = api;
        src.External = &ext;
        sc.Mirror = &src;
    } else {
        sc.Subjects = &subject;
        sc.SubjectsLen = 1;
        sc.Duplicates = (int64_t)120 * 1000000000; /* the dedup window: 2 minutes */
    }
    jsStreamInfo *si = NULL;
    s = js_AddStream(&si, js, &sc, NULL, &je);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return s == NATS_OK || cs__ns_fail("add stream", s, je);
}

/* Creates `stream` on the server at url, holding `subject`, file storage, limits retention,
 * deduplication by message id. With mirror_of: a mirror of that stream in domain hub_domain
 * (a leaf node's regional copy; no subjects of its own). Says why on stderr when it fails. */
static inline bool cs_ns_stream(const char *url, const char *stream, const char *subject,
                                const char *mirror_of, const char *hub_domain)
{
    cs__ns_stream_args a = {.url = url,
                            .stream = stream,
                            .subject = subject,
                            .mirror_of = mirror_of,
                            .hub_domain = hub_domain};
    return cs__ns_forked(cs__ns_stream_do, &a);
}

/* The last sequence a stream holds and its bytes (0 when empty or on error). */
static inline uint64_t cs_ns_stream_last(const char *url, const char *stream, uint64_t *bytes)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    jsErrCode je = 0;
    uint64_t last = 0;
    if (natsConnection_ConnectTo(&nc, url) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_GetStreamInfo(&si, js, stream, NULL, &je) == NATS_OK) {
        last = si->State.LastSeq;
        if (bytes)
            *bytes = si->State.Bytes;
    }
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return last;
}

typedef struct cs__ns_state_args {
    const char *url, *stream;
    int fd;
} cs__ns_state_args;

static inline bool cs__ns_state_do(void *arg)
{
    const cs__ns_state_args *a = arg;
    uint64_t v[2] = {0, 0};
    v[0] = cs_ns_stream_last(a->url, a->stream, &v[1]);
    return write(a->fd, v, sizeof(v)) == (ssize_t)sizeof(v);
}

/* From the parent: the stream's last sequence and bytes (through a child, see cs__ns_forked). */
static inline bool cs_ns_stream_state(const char *url, const char *stream, uint64_t *last,
                                      uint64_t *bytes)
{
    int fds[2];
    uint64_t v[2] = {0, 0};
    if (pipe(fds) != 0)
        return false;
    cs__ns_state_args a = {.url = url, .stream = stream, .fd = fds[1]};
    bool ok = cs__ns_forked(cs__ns_state_do, &a);
    close(fds[1]);
    ok = ok && read(fds[0], v, sizeof(v)) == (ssize_t)sizeof(v);
    close(fds[0]);
    *last = v[0], *bytes = v[1];
    return ok;
}

static inline bool cs__ns_stream_wait_do(void *arg)
{
    const cs__ns_stream_args *a = arg;
    const char *url = a->url, *stream = a->stream;
    uint64_t last = a->last;
    uint64_t deadline = cs_run_now_ms() + 10 * CS_NS_WAIT_MS;
    while (cs_run_now_ms() < deadline) {
        if (cs_ns_stream_last(url, stream, NULL) >= last)
            return true;
        cs_run_sleep_ms(50);
    }
    return false;
}

/* Waits (bounded) until stream at url holds `last` messages: a mirror catching up with the hub. */
static inline bool cs_ns_stream_wait(const char *url, const char *stream, uint64_t last)
{
    cs__ns_stream_args a = {.url = url, .stream = stream, .last = last};
    return cs__ns_forked(cs__ns_stream_wait_do, &a);
}

/* ---- the head office's publisher --------------------------------------------------------- */

typedef struct cs_ns_pub_result {
    uint64_t segments, events, payload_bytes, out_bytes; /* out: libnats' count on the wire */
    double secs, cpu_s;
    long maxrss_kib;
    bool ok;
} cs_ns_pub_result;

/* Publishes segments of hq's log from `from` to the head (stop_ms 0), or keeps tailing the log
 * until the wall clock passes stop_ms (live), one JetStream message per segment of up to
 * CS_NET_SEGMENT_EVENTS events, message id = the segment's first sequence (the stream drops a
 * duplicate). Asynchronous publishes with the acks awaited at the end of each pass, as a
 * publisher that never has more than a window in flight. The log is re-read every 2 ms when
 * nothing is new (serve wakes on a file watch; polling stands in for it here). */
static inline void cs__ns_publish(const char *url, const char *hq, const char *subject,
                                  uint64_t from, uint64_t stop_ms, cs_ns_pub_result *r)
{
    cs_engine *e = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 256;
    if (cs_engine_open(hq, NULL, &e) != CS_OK || natsConnection_ConnectTo(&nc, url) != NATS_OK ||
        natsConnection_JetStream(&js, nc, &jo) != NATS_OK) {
        fprintf(stderr, "nats_sim: publisher cannot start\n");
        cs_engine_close(e);
        natsConnection_Destroy(nc);
        return;
    }
    double t0 = cs_bench_now_s();
    uint64_t next = from;
    bool ok = true;
    for (;;) {
        cs_log_reader *rd = NULL;
        uint64_t head = 0;
        if (cs_log_reader_open(cs_engine_log(e), &rd) != CS_OK ||
            cs_log_reader_head(rd, &head) != CS_OK) {
            ok = false;
            break;
        }
        unsigned sent = 0;
        while (ok && next <= head) {
            uint8_t *seg = NULL;
            size_t len = 0;
            uint64_t last = 0;
            ok = cs_segment_encode(rd, next, next + CS_NET_SEGMENT_EVENTS - 1,
                                   CS_NET_SEGMENT_BYTES_MAX, &seg, &len, &last) == CS_OK;
            if (!ok)
                break;
            char id[32];
            snprintf(id, sizeof(id), "%llu", (unsigned long long)next);
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MsgId = id;
            ok = js_PublishAsync(js, subject, seg, (int)len, &po) == NATS_OK;
            free(seg);
            r->segments++, r->events += last - next + 1, r->payload_bytes += len;
            next = last + 1;
            sent++;
        }
        cs_log_reader_close(rd); /* short readers: the appender grows the map */
        if (sent && js_PublishAsyncComplete(js, NULL) != NATS_OK)
            ok = false;
        if (!ok || !stop_ms || cs_run_wall_ms() >= stop_ms)
            break;
        if (!sent)
            cs_run_sleep_ms(2);
    }
    r->secs = cs_bench_now_s() - t0;
    natsStatistics *st = NULL;
    if (natsStatistics_Create(&st) == NATS_OK && natsConnection_GetStats(nc, st) == NATS_OK)
        natsStatistics_GetCounts(st, NULL, NULL, NULL, &r->out_bytes, NULL);
    natsStatistics_Destroy(st);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    cs_engine_close(e);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    r->cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    r->maxrss_kib = ru.ru_maxrss;
    r->ok = ok;
}

/* Forks the publisher; cs_ns_publisher_wait collects its result. */
static inline pid_t cs_ns_publisher_start(const char *url, const char *hq, const char *subject,
                                          uint64_t from, uint64_t stop_ms, int *fd_out)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        cs_ns_pub_result r = {0};
        cs__ns_publish(url, hq, subject, from, stop_ms, &r);
        if (write(fds[1], &r, sizeof(r)) != (ssize_t)sizeof(r))
            _exit(1);
        _exit(r.ok ? 0 : 1);
    }
    close(fds[1]);
    *fd_out = fds[0];
    return pid;
}

static inline bool cs_ns_publisher_wait(pid_t pid, int fd, uint64_t deadline_ms,
                                        cs_ns_pub_result *r)
{
    bool ok = pid > 0 && read(fd, r, sizeof(*r)) == (ssize_t)sizeof(*r);
    close(fd);
    return cs_run_reap(pid, cs_run_now_ms() + deadline_ms) == 0 && ok && r->ok;
}

/* ---- the head office's appends ---------------------------------------------------------- */

/* The head office's appends, in a child: `rate` events/s in batches every 10 ms for `secs`;
 * writes how many it appended to fd. */
static inline void cs_ns_appender(const char *hq, unsigned rate, unsigned commits, unsigned secs,
                                  int fd)
{
    cs_engine *e = NULL;
    if (cs_engine_open(hq, NULL, &e) != CS_OK)
        _exit(1);
    unsigned per = rate / commits ? rate / commits : 1, tick_ms = 1000u / commits;
    json_t *arr = json_array();
    for (unsigned i = 0; i < per; i++)
        json_array_append_new(
            arr, json_pack("{s:s,s:s}", "name", "Bath and grooming, large dogs", "description",
                           "Full bath with hypoallergenic shampoo, drying, brushing, nail "
                           "clipping and ear cleaning; about 90 minutes."));
    uint64_t t0 = cs_run_now_ms(), sent = 0;
    for (unsigned tick = 0; tick < secs * commits; tick++) {
        if (cs_engine_put_many(e, "service_category", arr, NULL) != CS_OK)
            _exit(1);
        sent += per;
        uint64_t due = t0 + (uint64_t)(tick + 1) * tick_ms, now = cs_run_now_ms();
        if (due > now)
            cs_run_sleep_ms((unsigned)(due - now));
    }
    json_decref(arr);
    cs_engine_close(e);
    FILE *out = fdopen(fd, "w");
    fprintf(out, "%llu\n", (unsigned long long)sent);
    fclose(out);
    _exit(0);
}

/* ---- branch subscribers ------------------------------------------------------------------ */

typedef struct cs_ns_sub_opts {
    const char *url;       /* the branch's nearest server (the leaf node) */
    const char *stream;    /* on that server: the region's mirror */
    const char *subject;   /* the head office's subject (a mirror's messages keep it) */
    bool deliver_new;      /* from what is published after subscribing, not the stream's start */
    const char *domain;    /* NULL: the connected server's JetStream; else that domain's */
    const char *durable;   /* consumer names: "<durable>-<i>" */
    uint64_t want_last;    /* done when this sequence is verified (or applied) */
    uint64_t stop_ms;      /* live: stop at this wall time instead (0: not live) ... */
    const char *stop_file; /* ... or once this file exists (the parent's word: all is sent) */
    uint64_t prev_chain;   /* the chain of event want_first - 1, when known (receive only) */
    bool prev_chain_known; /* ... when set */
    unsigned from, to;     /* branches [from, to) in this process */
} cs_ns_sub_opts;

typedef struct cs__ns_sub {
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub;
    uint64_t next_seq, prev_chain, done_ms, bytes;
    bool prev_known;
    int result; /* 0 while going or done, else a cs_err or -1 */
    struct cs__ns_worker *w;
} cs__ns_sub;

typedef struct cs__ns_worker {
    const cs_ns_sub_opts *o;
    cs__ns_sub *subs;
    cs_event_decoder *dec;    /* live: each event's time; one for the worker, so ... */
    pthread_mutex_t dec_lock; /* ... held while it decodes (two delivery threads share it) */
    int left;                 /* branches not yet at want_last (atomic) */
    uint64_t hist[CS_BENCH_HIST_MS + 1], hist_applied[CS_BENCH_HIST_MS + 1];
} cs__ns_worker;

/* Live: each event's commit (its time) to received (recv_ms) and to now (verified). */
static inline void cs__ns_latency(cs__ns_worker *w, const uint8_t *seg, size_t len,
                                  uint64_t recv_ms)
{
    uint64_t done = cs_run_wall_ms();
    cs_segment_view v;
    cs_log_record rec;
    cs_event_view ev;
    if (cs_segment_open(seg, len, &v) != CS_OK)
        return;
    pthread_mutex_lock(&w->dec_lock);
    while (cs_segment_next(&v, &rec) == CS_OK)
        if (cs_event_decode(w->dec, rec.event, rec.event_len, &ev) == CS_OK) {
            uint64_t d = recv_ms > ev.time_ms ? recv_ms - ev.time_ms : 0;
            uint64_t a = done > ev.time_ms ? done - ev.time_ms : 0;
            __atomic_fetch_add(&w->hist[d < CS_BENCH_HIST_MS ? d : CS_BENCH_HIST_MS], 1,
                               __ATOMIC_RELAXED);
            __atomic_fetch_add(&w->hist_applied[a < CS_BENCH_HIST_MS ? a : CS_BENCH_HIST_MS], 1,
                               __ATOMIC_RELAXED);
        }
    pthread_mutex_unlock(&w->dec_lock);
}

/* After a message was verified (rc CS_OK) or refused: the branch's figures, its ack (only for
 * what verified), and the branch's end at the last wanted sequence. */
static inline void cs__ns_settle(cs__ns_sub *s, natsMsg *m, uint64_t recv_ms, uint64_t last, int rc)
{
    cs__ns_worker *w = s->w;
    const uint8_t *seg = (const uint8_t *)natsMsg_GetData(m);
    size_t len = (size_t)natsMsg_GetDataLength(m);
    if (rc == CS_OK && w->dec)
        cs__ns_latency(w, seg, len, recv_ms);
    if (rc != CS_OK && !s->result) {
        s->result = rc;
        __atomic_fetch_sub(&w->left, 1, __ATOMIC_SEQ_CST);
    } else if (rc == CS_OK) {
        s->bytes += len;
        natsMsg_Ack(m, NULL);
        if (!s->done_ms && !w->o->stop_ms && last >= w->o->want_last) {
            s->done_ms = cs_run_wall_ms();
            __atomic_fetch_sub(&w->left, 1, __ATOMIC_SEQ_CST);
        }
    }
    natsMsg_Destroy(m);
}

/* One segment for one branch: verify it (checksums, the chain from the previous segment), ack
 * it once verified; at the last wanted sequence the branch is done. Runs on libnats' delivery
 * thread, one message of a subscription at a time. */
static inline void cs__ns_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *arg)
{
    (void)nc, (void)sub;
    cs__ns_sub *s = arg;
    const uint8_t *seg = (const uint8_t *)natsMsg_GetData(m);
    size_t len = (size_t)natsMsg_GetDataLength(m);
    uint64_t now = cs_run_wall_ms(), last = 0;
    cs_segment_view v;
    cs_log_record rec;
    int rc = cs_segment_open(seg, len, &v);
    if (rc == CS_OK) {
        v.prev_chain = s->prev_chain, v.prev_chain_known = s->prev_known;
        while ((rc = cs_segment_next(&v, &rec)) == CS_OK)
            s->prev_chain = rec.chain, last = rec.seq;
        rc = rc == CS_NOT_FOUND && last == v.last ? CS_OK : CS_CORRUPT;
        s->prev_known = true;
    }
    cs__ns_settle(s, m, now, last, rc);
}

/* Connects branch i and creates its durable consumer (explicit acks, from the stream's first
 * message). Fails on the branch, not the run: a refused connection counts as failed. */
static inline bool cs__ns_sub_start(cs__ns_worker *w, unsigned i, natsOptions *nopts)
{
    const cs_ns_sub_opts *o = w->o;
    cs__ns_sub *s = &w->subs[i - o->from];
    s->w = w;
    s->prev_chain = o->prev_chain, s->prev_known = o->prev_chain_known;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Domain = o->domain;
    jo.Wait = 30000; /* thousands of consumers created at once queue at the server */
    char name[64];
    snprintf(name, sizeof(name), "%s-%u", o->durable, i);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = o->stream;
    so.Config.Durable = name;
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.DeliverPolicy = o->deliver_new ? js_DeliverNew : js_DeliverAll;
    /* 16 segments unacknowledged per branch, as many as a TCP node applies in one transaction:
     * a bound on what the server sends ahead and the worker buffers (16 MiB at most). */
    so.Config.MaxAckPending = 16;
    so.ManualAck = true;
    jsErrCode je = 0;
    natsStatus st = natsConnection_Connect(&s->nc, nopts);
    if (st == NATS_OK)
        st = natsConnection_JetStream(&s->js, s->nc, &jo);
    if (st == NATS_OK)
        st = js_Subscribe(&s->sub, s->js, o->subject, cs__ns_on_msg, s, &jo, &so, &je);
    if (st != NATS_OK) {
        fprintf(stderr, "nats_sim: branch %u: %s (jetstream error %d)\n", i, natsStatus_GetText(st),
                (int)je);
        return false;
    }
    return true;
}

/* In the worker process: branches [from, to) subscribe, say "R" on fd once all have, run until
 * each is at want_last (or stop_ms), then write "done_ms bytes result" per branch and, live, the
 * histogram ("h ms count"). Message delivery runs on libnats' shared pool (2 threads): one
 * thread per subscription would be thousands of threads at the scale this simulates. */
static inline int cs_ns_sub_worker(const cs_ns_sub_opts *o, int fd)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    cs__ns_worker *w = calloc(1, sizeof(*w));
    natsOptions *nopts = NULL;
    if (!w || nats_Open(-1) != NATS_OK || nats_SetMessageDeliveryPoolSize(2) != NATS_OK ||
        natsOptions_Create(&nopts) != NATS_OK || natsOptions_SetURL(nopts, o->url) != NATS_OK ||
        natsOptions_UseGlobalMessageDelivery(nopts, true) != NATS_OK ||
        natsOptions_SetMaxPendingMsgs(nopts, 65536) != NATS_OK)
        return 1;
    w->o = o;
    if (pthread_mutex_init(&w->dec_lock, NULL) != 0)
        return 1;
    w->subs = calloc(o->to - o->from, sizeof(cs__ns_sub));
    w->left = (int)(o->to - o->from);
    if (!w->subs || (o->stop_ms && cs_event_decoder_new(&w->dec) != CS_OK))
        return 1;
    FILE *out = fdopen(fd, "w");
    for (unsigned i = o->from; i < o->to; i++)
        if (!cs__ns_sub_start(w, i, nopts)) {
            w->subs[i - o->from].result = -1;
            __atomic_fetch_sub(&w->left, 1, __ATOMIC_SEQ_CST);
        }
    fprintf(out, "R\n");
    fflush(out);
    uint64_t deadline = o->stop_ms ? o->stop_ms : cs_run_wall_ms() + 600000u;
    while (__atomic_load_n(&w->left, __ATOMIC_SEQ_CST) > 0 && cs_run_wall_ms() < deadline &&
           !(o->stop_file && access(o->stop_file, F_OK) == 0))
        cs_run_sleep_ms(5);
    for (unsigned i = o->from; i < o->to; i++) { /* unsubscribe first: no callback after this */
        cs__ns_sub *s = &w->subs[i - o->from];
        if (s->sub)
            natsSubscription_Unsubscribe(s->sub);
        natsSubscription_Destroy(s->sub);
        natsConnection_Destroy(s->nc);
        jsCtx_Destroy(s->js);
        if (!o->stop_ms && !s->done_ms && !s->result)
            s->result = -1; /* not done by the deadline */
        fprintf(out, "%llu %llu %d\n", (unsigned long long)s->done_ms, (unsigned long long)s->bytes,
                s->result);
    }
    if (w->dec)
        for (unsigned i = 0; i <= CS_BENCH_HIST_MS; i++)
            if (w->hist[i] || w->hist_applied[i])
                fprintf(out, "h %u %llu %llu\n", i, (unsigned long long)w->hist[i],
                        (unsigned long long)w->hist_applied[i]);
    fclose(out);
    natsOptions_Destroy(nopts);
    return 0;
}

/* What the parent gathers from the workers. */
typedef struct cs_ns_subs_result {
    unsigned k, failed, done;
    uint64_t start_ms, ready_ms, last_ms, bytes;
    double *catchup_ms; /* per branch, from start_ms (before connecting, as TCP's) */
    uint64_t hist[CS_BENCH_HIST_MS + 1], hist_applied[CS_BENCH_HIST_MS + 1];
} cs_ns_subs_result;

typedef struct cs_ns_subs {
    pid_t pids[16];
    FILE *ins[16];
    unsigned p;
} cs_ns_subs;

/* Forks p workers for branches [0, k) and waits (bounded) until every one has subscribed. */
static inline bool cs_ns_subs_start(cs_ns_subs *ss, const cs_ns_sub_opts *base, unsigned k,
                                    unsigned procs, cs_ns_subs_result *r)
{
    ss->p = procs < k ? procs : k;
    if (ss->p > 16)
        ss->p = 16;
    memset(r, 0, sizeof(*r));
    r->k = k;
    r->catchup_ms = calloc(k, sizeof(double));
    r->start_ms = cs_run_wall_ms();
    for (unsigned i = 0; i < ss->p; i++) {
        int fds[2];
        if (pipe(fds) != 0)
            return false;
        cs_ns_sub_opts o = *base;
        o.from = k * i / ss->p, o.to = k * (i + 1) / ss->p;
        ss->pids[i] = fork();
        if (ss->pids[i] == 0) {
            close(fds[0]);
            _exit(cs_ns_sub_worker(&o, fds[1]));
        }
        close(fds[1]);
        ss->ins[i] = fdopen(fds[0], "r");
    }
    bool ok = true;
    for (unsigned i = 0; i < ss->p; i++) {
        char line[16];
        ok = ok && fgets(line, sizeof(line), ss->ins[i]) && line[0] == 'R';
    }
    r->ready_ms = cs_run_wall_ms();
    return ok && r->catchup_ms;
}

/* Tells live workers to stop (they see the file within 5 ms). */
static inline void cs_ns_subs_stop(const char *stop_file)
{
    FILE *f = fopen(stop_file, "w");
    if (f)
        fclose(f);
}

/* Gathers every worker's lines and reaps them. true when every branch finished without error. */
static inline bool cs_ns_subs_wait(cs_ns_subs *ss, cs_ns_subs_result *r)
{
    unsigned idx = 0;
    bool ok = true;
    for (unsigned i = 0; i < ss->p; i++) {
        char line[128];
        unsigned long long a, b, c;
        unsigned h;
        int code;
        while (ss->ins[i] && fgets(line, sizeof(line), ss->ins[i])) {
            if (sscanf(line, "h %u %llu %llu", &h, &b, &c) == 3 && h <= CS_BENCH_HIST_MS) {
                r->hist[h] += b;
                r->hist_applied[h] += c;
            } else if (sscanf(line, "%llu %llu %d", &a, &b, &code) == 3 && idx < r->k) {
                r->catchup_ms[idx++] = a > r->start_ms ? (double)(a - r->start_ms) : 0;
                if (a > r->last_ms)
                    r->last_ms = a;
                r->bytes += b;
                r->failed += code != 0;
                r->done += code == 0;
            }
        }
        if (ss->ins[i])
            fclose(ss->ins[i]);
        ok = cs_run_reap(ss->pids[i], cs_run_now_ms() + 60000) == 0 && ok;
    }
    return ok && idx == r->k && r->failed == 0;
}

static inline bool cs__ns_consumers_delete_do(void *arg)
{
    const cs__ns_stream_args *a = arg;
    const char *url = a->url, *stream = a->stream, *durable = a->durable;
    unsigned k = a->k;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    if (natsConnection_ConnectTo(&nc, url) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK)
        for (unsigned i = 0; i < k; i++) {
            char name[64];
            jsErrCode je = 0;
            snprintf(name, sizeof(name), "%s-%u", durable, i);
            js_DeleteConsumer(js, stream, name, NULL, &je);
        }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return true;
}

/* Deletes the durable consumers "<durable>-0" .. "<durable>-(k-1)" of stream at url. */
static inline void cs_ns_consumers_delete(const char *url, const char *stream, const char *durable,
                                          unsigned k)
{
    cs__ns_stream_args a = {.url = url, .stream = stream, .durable = durable, .k = k};
    cs__ns_forked(cs__ns_consumers_delete_do, &a);
}

/* The head of hq's log and the chain value of event `seq` there (0 for seq 0). */
static inline bool cs_ns_hq_at(const char *hq, uint64_t seq, uint64_t *head, uint64_t *chain)
{
    cs_engine *e = NULL;
    cs_log_reader *r = NULL;
    cs_log_record rec = {0};
    bool ok = cs_engine_open(hq, NULL, &e) == CS_OK &&
              cs_log_reader_open(cs_engine_log(e), &r) == CS_OK &&
              cs_log_reader_head(r, head) == CS_OK &&
              (seq == 0 || cs_log_reader_get(r, seq, &rec) == CS_OK);
    *chain = rec.chain;
    cs_log_reader_close(r);
    cs_engine_close(e);
    return ok;
}

#endif
