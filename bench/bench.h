/*
 * bench.h: what every benchmark in bench/ needs besides the code it measures: a monotonic clock,
 * removing the temporary data directories it made, and the latency histogram the fan-out
 * benches count in. Header-only: each bench is one file.
 */
#ifndef CS_BENCH_H
#define CS_BENCH_H

#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Seconds on the monotonic clock. */
static inline double cs_bench_now_s(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        abort(); /* cannot happen for CLOCK_MONOTONIC on Linux; a bench without a clock is void */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cs_bench_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    if (remove(path) != 0)
        fprintf(stderr, "bench: cannot remove %s: %s\n", path, strerror(errno));
    return 0; /* keep going: remove as much as we can */
}

/* Removes dir and everything in it; a missing dir is fine. */
static inline void cs_bench_rm_tree(const char *dir)
{
    struct stat st;
    if (lstat(dir, &st) != 0)
        return;
    nftw(dir, cs_bench_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A latency histogram: h[i] counts the deliveries that took i ms, h[CS_BENCH_HIST_MS] those
 * that took CS_BENCH_HIST_MS or more (1 ms buckets up to 10 s). */
#define CS_BENCH_HIST_MS 10000u

static inline uint64_t cs_bench_hist_count(const uint64_t *h)
{
    uint64_t total = 0;
    for (unsigned i = 0; i <= CS_BENCH_HIST_MS; i++)
        total += h[i];
    return total;
}

/* The q-quantile (0 < q <= 1) in ms: the first bucket by which that share was counted. */
static inline double cs_bench_hist_pct(const uint64_t *h, double q)
{
    uint64_t total = cs_bench_hist_count(h), acc = 0;
    for (unsigned i = 0; i <= CS_BENCH_HIST_MS; i++)
        if ((acc += h[i]) > 0 && acc >= (uint64_t)(q * (double)total))
            return i;
    return CS_BENCH_HIST_MS;
}

/* The largest bucket counted in (0 when none). */
static inline double cs_bench_hist_max(const uint64_t *h)
{
    for (unsigned i = CS_BENCH_HIST_MS + 1; i-- > 0;)
        if (h[i])
            return i;
    return 0;
}

#endif
