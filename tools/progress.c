/*
 * progress.c: the progress line of long commands (branch join and pull catch-up, branch import,
 * log export, audit checkpoint and verify) on a terminal: one line on standard error, redrawn
 * in place with \r at most ten times a second, with what is done of the total and the rate.
 * The layers only report (cs_progress); drawing is the program's business, and only when
 * standard error is a terminal and --json-out is not given: a pipe or a log file never gets
 * carriage returns.
 *
 * Owns nothing global: each command keeps its cs_cli_progress on its stack.
 */
#include "tools/cli.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define PROGRESS_EVERY_MS 100u

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* "12345" for counts, "12.3 MiB" for bytes. */
static void amount(char *buf, size_t len, uint64_t v, bool bytes)
{
    if (bytes)
        snprintf(buf, len, "%.1f MiB", (double)v / (1024.0 * 1024.0));
    else
        snprintf(buf, len, "%llu", (unsigned long long)v);
}

static void draw(cs_cli_progress *p, uint64_t done, uint64_t total, bool last)
{
    uint64_t now = mono_ms();
    if (!last && p->drawn && now - p->last_ms < PROGRESS_EVERY_MS)
        return;
    if (last && !p->drawn)
        return; /* nothing was shown: nothing to finish */
    p->last_ms = now;
    p->drawn = true;
    double secs = (double)(now - p->t0_ms) / 1000.0;
    const char *sep = p->unit[0] ? " " : "";
    char d[32], t[32], r[32], rate[64] = "";
    amount(d, sizeof(d), done, p->bytes);
    if (secs >= 0.1) { /* a rate over less is noise */
        amount(r, sizeof(r), (uint64_t)((double)done / secs), p->bytes);
        snprintf(rate, sizeof(rate), ", %s%s%s/s", r, sep, p->unit);
    }
    if (total > 0) {
        amount(t, sizeof(t), total, p->bytes);
        fprintf(stderr, "\r%s %s of %s%s%s (%.0f%%)%s\033[K", p->verb, d, t, sep, p->unit,
                100.0 * (double)done / (double)total, rate);
    } else {
        fprintf(stderr, "\r%s %s%s%s%s\033[K", p->verb, d, sep, p->unit, rate);
    }
    if (last)
        fputc('\n', stderr);
    fflush(stderr);
}

static void on_progress(void *arg, uint64_t done, uint64_t total, bool last)
{
    draw(arg, done, total, last);
}

cs_progress cs_cli_progress_start(cs_cli_progress *p, const char *verb, const char *unit,
                                  bool bytes)
{
    *p = (cs_cli_progress){.verb = verb, .unit = unit, .bytes = bytes, .t0_ms = mono_ms()};
    if (!isatty(STDERR_FILENO) || cs_cli_g.json_out)
        return (cs_progress){0};
    return (cs_progress){.fn = on_progress, .arg = p};
}

void cs_cli_progress_end(cs_cli_progress *p)
{
    if (p->drawn) {
        fputc('\n', stderr);
        fflush(stderr);
        p->drawn = false;
    }
}
