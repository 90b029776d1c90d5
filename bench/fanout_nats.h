/*
 * fanout_nats.h: bench/fanout --via nats (issue 15): the same catch-up and live runs as the
 * direct TCP server's, through NATS JetStream, for the same K and the same events, printed under
 * each TCP row with the ratio nats / tcp. The head office publishes the log's segments once to a
 * JetStream stream on the hub (bench/nats_sim.h's publisher: cs_segment_encode, the bytes serve
 * sends); the region's leaf node mirrors it; each branch is one NATS connection to the leaf with
 * one durable consumer on the mirror, explicit acks after the segment is verified (receive-only)
 * or applied with cs_branch_apply_segment (catch-up, live with K <= 100, as the TCP rows).
 *
 * It owns the two nats-server processes for the whole run, the streams it creates (CS for the
 * catch-up log, CSL_<K> per live run, each with its mirror on the leaf) and the consumers of a
 * row, deleted after it. fanout.c calls cs_fn_setup once, then per K cs_fn_receive_only,
 * cs_fn_catch_up (on branch directories fresh from the templates) and cs_fn_live (on those same
 * directories, now at the head).
 */
#ifndef CS_BENCH_FANOUT_NATS_H
#define CS_BENCH_FANOUT_NATS_H

#include "bench/nats_sim.h"

typedef struct cs_fn {
    char root[300], hq[300];
    cs_ns_srv hub, leaf;
    uint64_t first, head, chain0; /* the catch-up: events first..head; chain of first - 1 */
    unsigned procs, rate, seconds;
} cs_fn;

/* The per-row head-office load: what the hub and the leaf spent while the row ran. */
typedef struct cs_fn_load {
    double hub0, leaf0, hub_cpu, leaf_cpu, hub_rss, leaf_rss;
} cs_fn_load;

static inline void cs__fn_load_begin(const cs_fn *f, cs_fn_load *l)
{
    l->hub0 = cs_ns_cpu_s(f->hub.pid), l->leaf0 = cs_ns_cpu_s(f->leaf.pid);
}

static inline void cs__fn_load_end(const cs_fn *f, cs_fn_load *l)
{
    l->hub_cpu = cs_ns_cpu_s(f->hub.pid) - l->hub0;
    l->leaf_cpu = cs_ns_cpu_s(f->leaf.pid) - l->leaf0;
    l->hub_rss = cs_ns_proc_kib(f->hub.pid, "VmRSS") / 1024.0;
    l->leaf_rss = cs_ns_proc_kib(f->leaf.pid, "VmRSS") / 1024.0;
}

/* Starts the hub and the leaf under root, creates the stream and its mirror, and publishes
 * events first..head of hq's log once; prints the head office's cost of that. false and why
 * when nats-server cannot start or a step fails. */
static inline bool cs_fn_setup(cs_fn *f, const char *root, const char *hq, uint64_t first,
                               unsigned procs, unsigned rate, unsigned seconds, char *why,
                               size_t why_len)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "%s", root);
    snprintf(f->hq, sizeof(f->hq), "%s", hq);
    f->first = first, f->procs = procs, f->rate = rate, f->seconds = seconds;
    if (!cs_ns_start(&f->hub, root, "hub", 0, why, why_len) ||
        !cs_ns_start(&f->leaf, root, "leaf1", f->hub.leaf_port, why, why_len))
        return false;
    snprintf(why, why_len, "cannot create the streams or publish (see stderr)");
    if (!cs_ns_hq_at(hq, first - 1, &f->head, &f->chain0) ||
        !cs_ns_stream(f->hub.url, "CS", "cs.bench", NULL, NULL) ||
        !cs_ns_stream(f->leaf.url, "CSM", NULL, "CS", "hub"))
        return false;
    int fd = -1;
    cs_ns_pub_result p = {0};
    pid_t pid = cs_ns_publisher_start(f->hub.url, hq, "cs.bench", first, 0, &fd);
    if (!cs_ns_publisher_wait(pid, fd, 120000, &p) ||
        !cs_ns_stream_wait(f->leaf.url, "CSM", p.segments))
        return false;
    printf("nats: hub %s (JetStream), leaf node %s (a mirror of the hub's stream); the head "
           "office published %llu events in %llu segments once: %.2f s, %.2f s CPU, %.1f MiB "
           "peak RSS, %.1f MB on the wire\n",
           f->hub.url, f->leaf.url, (unsigned long long)p.events, (unsigned long long)p.segments,
           p.secs, p.cpu_s, p.maxrss_kib / 1024.0, p.out_bytes / 1e6);
    return true;
}

static inline void cs_fn_teardown(cs_fn *f)
{
    cs_ns_stop(&f->leaf);
    cs_ns_stop(&f->hub);
}

/* The catch-up of k branches from the mirror: receive only (dirs NULL) or applying into dirs. */
static inline bool cs__fn_catch(cs_fn *f, unsigned k, char (*dirs)[320], const char *durable,
                                cs_ns_subs_result *r, cs_fn_load *l)
{
    cs_ns_sub_opts so = {.url = f->leaf.url,
                         .stream = "CSM",
                         .subject = "cs.bench",
                         .durable = durable,
                         .dirs = dirs,
                         .want_last = f->head,
                         .prev_chain = f->chain0,
                         .prev_chain_known = true};
    cs_ns_subs ss;
    cs__fn_load_begin(f, l);
    bool ok = cs_ns_subs_start(&ss, &so, k, f->procs, r);
    ok = cs_ns_subs_wait(&ss, r) && ok;
    cs__fn_load_end(f, l);
    cs_ns_consumers_delete(f->leaf.url, "CSM", durable, k);
    return ok;
}

static inline int cs__fn_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One catch-up row, in the TCP row's columns (time from the start, before the branches connect
 * and create their consumers, to the last at the head, aggregate events/s, MB/s received,
 * per-branch p50/p99), then the ratio line. */
static inline void cs__fn_catch_row(cs_fn *f, unsigned k, const char *mode, bool ok,
                                    cs_ns_subs_result *r, const cs_fn_load *l, double tcp_eps,
                                    FILE *json)
{
    uint64_t events = f->head - f->first + 1;
    double secs = (double)(r->last_ms - r->start_ms) / 1000.0;
    double eps = ok && secs > 0 ? (double)events * k / secs : 0;
    qsort(r->catchup_ms, k, sizeof(double), cs__fn_cmp);
    double p50 = r->catchup_ms[(size_t)((k - 1) * 0.5)],
           p99 = r->catchup_ms[(size_t)((k - 1) * 0.99)];
    if (!ok)
        printf("%6u  %-20s  failed (%u of %u branches; see stderr)\n", k, mode, r->failed, k);
    else
        printf("%6u  %-20s  %8.2f s %12.0f ev/s %8.1f MB/s  p50/p99 %.0f/%.0f ms  hub cpu %.2f s "
               "rss %.0f MiB, leaf cpu %.2f s rss %.0f MiB\n",
               k, mode, secs, eps, secs > 0 ? (double)r->bytes / 1e6 / secs : 0, p50, p99,
               l->hub_cpu, l->hub_rss, l->leaf_cpu, l->leaf_rss);
    if (ok && tcp_eps > 0)
        printf("        %-44s %12.0f vs %12.0f  ratio %5.2f\n", "nats / tcp (ev/s)", eps, tcp_eps,
               eps / tcp_eps);
    if (json)
        fprintf(json,
                "{\"k\":%u,\"mode\":\"%s\",\"via\":\"nats\",\"ok\":%s,\"secs\":%.3f,"
                "\"events_per_s\":%.0f,\"mb_per_s\":%.2f,\"p50_ms\":%.1f,\"p99_ms\":%.1f,"
                "\"tcp_events_per_s\":%.0f,\"hub_cpu_s\":%.3f,\"hub_rss_mib\":%.1f,"
                "\"leaf_cpu_s\":%.3f,\"leaf_rss_mib\":%.1f}\n",
                k, mode, ok ? "true" : "false", secs, eps,
                secs > 0 ? (double)r->bytes / 1e6 / secs : 0, p50, p99, tcp_eps, l->hub_cpu,
                l->hub_rss, l->leaf_cpu, l->leaf_rss);
}

/* receive-only through NATS: k branches verify every segment from the mirror. */
static inline void cs_fn_receive_only(cs_fn *f, unsigned k, double tcp_eps, FILE *json)
{
    cs_ns_subs_result r;
    cs_fn_load l;
    bool ok = cs__fn_catch(f, k, NULL, "ro", &r, &l);
    cs__fn_catch_row(f, k, "receive-only, nats", ok, &r, &l, tcp_eps, json);
    free(r.catchup_ms);
}

/* catch-up through NATS: k branches (dirs: fresh from the templates) apply every segment. */
static inline void cs_fn_catch_up(cs_fn *f, unsigned k, char (*dirs)[320], double tcp_eps,
                                  FILE *json)
{
    cs_ns_subs_result r;
    cs_fn_load l;
    bool ok = cs__fn_catch(f, k, dirs, "cu", &r, &l);
    cs__fn_catch_row(f, k, "catch-up, nats", ok, &r, &l, tcp_eps, json);
    free(r.catchup_ms);
}

/* live through NATS: the head office in continuous mode appends at the rate for the seconds
 * while its publisher tails the log into a fresh stream CSL_<k> (mirrored on the leaf); k
 * followers (dirs at the head after cs_fn_catch_up) apply when k <= 100, else receive only, as
 * the TCP live row. Commit (the event's time) to received and to applied, across all branches. */
static inline void cs_fn_live(cs_fn *f, unsigned k, char (*dirs)[320], double tcp_p99, FILE *json)
{
    char stream[32], mirror[32], subject[32], stop[320];
    snprintf(stream, sizeof(stream), "CSL_%u", k);
    snprintf(mirror, sizeof(mirror), "CSLM_%u", k);
    snprintf(subject, sizeof(subject), "cs.live.%u", k);
    snprintf(stop, sizeof(stop), "%s/nats-stop", f->root);
    unlink(stop);
    const char *mode = k <= 100 ? "live, applying, nats" : "live, receive-only, nats";
    uint64_t head = 0, chain = 0;
    cs_engine *e = NULL;
    bool ok = cs_ns_hq_at(f->hq, 0, &head, &chain) && cs_ns_hq_at(f->hq, head, &head, &chain) &&
              cs_engine_open(f->hq, NULL, &e) == CS_OK &&
              cs_engine_network_mode(e, "continuous", NULL) == CS_OK;
    cs_engine_close(e);
    ok = ok && cs_ns_stream(f->hub.url, stream, subject, NULL, NULL) &&
         cs_ns_stream(f->leaf.url, mirror, NULL, stream, "hub");
    cs_ns_sub_opts so = {.url = f->leaf.url,
                         .stream = mirror,
                         .subject = subject,
                         .durable = "lv",
                         .dirs = k <= 100 ? dirs : NULL,
                         .want_last = UINT64_MAX,
                         .stop_ms = cs_ns_wall_ms() + 600000u,
                         .stop_file = stop,
                         .prev_chain = chain,
                         .prev_chain_known = true};
    cs_ns_subs ss = {0};
    cs_ns_subs_result r = {0};
    cs_fn_load l = {0};
    cs_ns_pub_result p = {0};
    if (ok)
        ok = cs_ns_subs_start(&ss, &so, k, f->procs, &r);
    if (ok) {
        cs__fn_load_begin(f, &l);
        int afd[2] = {-1, -1}, pfd = -1;
        ok = pipe(afd) == 0;
        pid_t ap = ok ? fork() : -1;
        if (ap == 0) {
            close(afd[0]);
            cs_ns_appender(f->hq, f->rate, 100, f->seconds, afd[1]); /* fanout's: every 10 ms */
        }
        if (ok)
            close(afd[1]);
        uint64_t run_ms = (uint64_t)f->seconds * 1000u;
        pid_t pp = cs_ns_publisher_start(f->hub.url, f->hq, subject, head + 1,
                                         cs_ns_wall_ms() + run_ms + 500u, &pfd);
        ok = ok && cs_run_reap(ap, cs_run_now_ms() + run_ms + 30000u) == 0;
        if (afd[0] >= 0)
            close(afd[0]);
        ok = cs_ns_publisher_wait(pp, pfd, run_ms + 30000u, &p) && ok;
        cs_run_sleep_ms(1500); /* the last segments reach every branch */
        cs_ns_subs_stop(stop);
        cs__fn_load_end(f, &l);
    }
    if (ss.p)
        ok = cs_ns_subs_wait(&ss, &r) && ok;
    cs_ns_consumers_delete(f->leaf.url, mirror, "lv", k);
    double rp50 = cs_ns_hist_pct(r.hist, 0.5), rp99 = cs_ns_hist_pct(r.hist, 0.99);
    double ap50 = cs_ns_hist_pct(r.hist_applied, 0.5), ap99 = cs_ns_hist_pct(r.hist_applied, 0.99);
    double rmax = cs_ns_hist_max(r.hist), amax = cs_ns_hist_max(r.hist_applied);
    uint64_t got = cs_ns_hist_count(r.hist), want = p.events * k;
    if (!ok)
        printf("%6u  %-20s  failed (see stderr)\n", k, mode);
    else {
        printf("%6u  %-20s  received p50/p99/max %.0f/%.0f/%.0f ms", k, mode, rp50, rp99, rmax);
        if (k <= 100)
            printf("  applied %.0f/%.0f/%.0f ms", ap50, ap99, amax);
        printf("  %llu of %llu events; head office: publisher cpu %.2f s, %.1f MB out, hub cpu "
               "%.2f s, leaf cpu %.2f s\n",
               (unsigned long long)got, (unsigned long long)want, p.cpu_s, p.out_bytes / 1e6,
               l.hub_cpu, l.leaf_cpu);
        if (tcp_p99 > 0)
            printf("        %-44s %12.0f vs %12.0f  ratio %5.2f\n", "nats / tcp (received p99, ms)",
                   rp99, tcp_p99, rp99 / tcp_p99);
    }
    if (json)
        fprintf(json,
                "{\"k\":%u,\"mode\":\"%s\",\"via\":\"nats\",\"ok\":%s,\"recv_p50_ms\":%.0f,"
                "\"recv_p99_ms\":%.0f,\"recv_max_ms\":%.0f,\"applied_p50_ms\":%.0f,"
                "\"applied_p99_ms\":%.0f,\"applied_max_ms\":%.0f,\"received_events\":%llu,"
                "\"expected_events\":%llu,\"tcp_recv_p99_ms\":%.0f,\"publisher_cpu_s\":%.3f,"
                "\"publisher_out_bytes\":%llu,\"hub_cpu_s\":%.3f,\"leaf_cpu_s\":%.3f}\n",
                k, mode, ok ? "true" : "false", rp50, rp99, rmax, ap50, ap99, amax,
                (unsigned long long)got, (unsigned long long)want, tcp_p99, p.cpu_s,
                (unsigned long long)p.out_bytes, l.hub_cpu, l.leaf_cpu);
    free(r.catchup_ms);
}

#endif
