/*
 * bench.h: what every benchmark in bench/ needs besides the code it measures: a monotonic clock
 * and removing the temporary data directories it made. Header-only: each bench is one file.
 */
#ifndef CS_BENCH_H
#define CS_BENCH_H

#include <errno.h>
#include <ftw.h>
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

#endif
