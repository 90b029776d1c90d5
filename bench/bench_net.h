/*
 * bench_net.h: what the network benchmarks share: a head office with K branches made through the
 * library, a real `chainsync serve` process, real `branch join` runs, and the path of the
 * chainsync binary. Header-only, like bench.h; processes are started and reaped by tests/run.h.
 */
#ifndef CS_BENCH_NET_H
#define CS_BENCH_NET_H

#include "bench/bench.h"
#include "engine/engine.h"
#include "tests/run.h"

#include <libgen.h>
#include <limits.h>
#include <sys/wait.h>

typedef struct cs_bench_net {
    char root[256], hq[300], addr[64], log[300];
    unsigned k;
    uint64_t *shops;
    pid_t serve;
    pid_t *follow;
    const char *nats; /* when set, serve also publishes to JetStream there (--nats URL) */
} cs_bench_net;

/* Adds shops [from, to) as branch-<i> and writes "i id" per shop to out. */
static inline bool cs_bench_net_add(const char *hq, unsigned from, unsigned to, FILE *out)
{
    cs_engine *e = NULL;
    bool ok = cs_engine_open(hq, NULL, &e) == CS_OK;
    for (unsigned i = from; ok && i < to; i++) {
        char name[32];
        uint64_t id = 0;
        snprintf(name, sizeof(name), "branch-%u", i);
        ok = cs_engine_shop_add(e, name, "idle-bench-pw", &id) == CS_OK;
        fprintf(out, "%u %llu\n", i, (unsigned long long)id);
    }
    cs_engine_close(e);
    return ok && fflush(out) == 0;
}

/* A head office with k branches (passwords set: argon2id per branch, which dominates, so with
 * many branches two processes add them at once: shop_add runs argon2id before its write
 * transaction, and LMDB serialises the writes). */
static inline bool cs_bench_net_make(cs_bench_net *r)
{
    cs_engine *e = NULL;
    uint64_t self = 0;
    bool ok = cs_engine_open(r->hq, NULL, &e) == CS_OK && cs_engine_init(e, "HQ", &self) == CS_OK &&
              cs_engine_network_create(e, "Bench") == CS_OK;
    cs_engine_close(e);
    unsigned procs = r->k >= 16 ? 2 : 1, got = 0;
    pid_t pids[2] = {0, 0};
    FILE *ins[2] = {NULL, NULL};
    for (unsigned p = 0; ok && p < procs; p++) {
        int fds[2];
        if (pipe(fds) != 0)
            return false;
        pids[p] = fork();
        if (pids[p] == 0) {
            close(fds[0]);
            FILE *out = fdopen(fds[1], "w");
            _exit(out && cs_bench_net_add(r->hq, r->k * p / procs, r->k * (p + 1) / procs, out)
                      ? 0
                      : 1);
        }
        close(fds[1]);
        ins[p] = fdopen(fds[0], "r");
        ok = pids[p] > 0 && ins[p] != NULL;
    }
    for (unsigned p = 0; p < procs; p++) {
        unsigned i;
        unsigned long long id;
        while (ins[p] && fscanf(ins[p], "%u %llu", &i, &id) == 2)
            if (i < r->k)
                r->shops[i] = id, got++;
        if (ins[p])
            fclose(ins[p]);
        int st = 0;
        if (pids[p] > 0)
            ok = waitpid(pids[p], &st, 0) == pids[p] && WIFEXITED(st) && WEXITSTATUS(st) == 0 && ok;
    }
    return ok && got == r->k;
}

/* Starts `chainsync serve` on 127.0.0.1, port chosen by the kernel, into r->addr. */
static inline bool cs_bench_net_serve(cs_bench_net *r)
{
    char ready[300];
    snprintf(ready, sizeof(ready), "%s/ready", r->root);
    const char *args[] = {"serve",        "--data", r->hq,    "--listen", "127.0.0.1:0",
                          "--ready-file", ready,    "--nats", r->nats,    NULL};
    if (!r->nats)
        args[7] = NULL;
    unlink(ready); /* a ready file of an earlier serve would name its port */
    r->serve = cs_run_spawn(args, r->log);
    for (int i = 0; i < 500; i++) {
        FILE *f = fopen(ready, "r");
        if (f) {
            bool ok = fgets(r->addr, sizeof(r->addr), f) != NULL;
            fclose(f);
            r->addr[strcspn(r->addr, "\n")] = '\0';
            return ok;
        }
        cs_run_sleep_ms(20);
    }
    return false;
}

/* `branch join` for every branch, one after the other. */
static inline bool cs_bench_net_join(cs_bench_net *r)
{
    for (unsigned i = 0; i < r->k; i++) {
        char dir[320], shop[32];
        snprintf(dir, sizeof(dir), "%s/b%u", r->root, i);
        snprintf(shop, sizeof(shop), "%llu", (unsigned long long)r->shops[i]);
        const char *args[] = {"branch", "join", "--data",           dir, "--head", r->addr,
                              "--shop", shop,   "--password-stdin", NULL};
        cs_run_result res;
        bool ok = cs_run(&res, "idle-bench-pw\n", NULL, args, 60000) && res.exit_code == 0;
        free(res.out);
        free(res.err);
        if (!ok)
            return false;
    }
    return true;
}

/* CS_BIN, else the chainsync built next to this benchmark. */
static inline void cs_bench_set_bin(const char *argv0)
{
    if (getenv("CS_BIN"))
        return;
    char exe[PATH_MAX], bin[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        snprintf(exe, sizeof(exe), "%s", argv0);
    else
        exe[n] = '\0';
    snprintf(bin, sizeof(bin), "%s/../tools/chainsync", dirname(exe));
    setenv("CS_BIN", bin, 1);
}

#endif
