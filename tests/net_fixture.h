/*
 * net_fixture.h: the pieces of a live network that the tests with real processes on 127.0.0.1
 * share: a command's --json-out field, adding the shops B1..Bn, starting `chainsync serve` with
 * a ready file and reading the address it bound, a free port for a program that cannot report
 * its own, and a head office's head and a branch's state read from their directories by this
 * process, as any reader beside `serve` and `branch follow` would. It owns no process: the
 * caller keeps the pid it is given and stops it by pid (tests/run.h cs_run_stop). Each test
 * keeps its own checks and its own bounds (every wait here takes the caller's).
 */
#ifndef CS_TEST_NET_FIXTURE_H
#define CS_TEST_NET_FIXTURE_H

#include "engine/engine.h"
#include "projections/projection.h"
#include "tests/run.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* Runs a command whose --json-out is one object (cs_run_code, loud) and returns its field key as
 * an integer (0 when it failed or has none). */
static inline uint64_t cs_fix_cmd_u64(const char *input, const char *key, const char *const *args,
                                      uint64_t deadline_ms)
{
    char *out = NULL;
    uint64_t v = 0;
    if (cs_run_code(input, args, &out, NULL, deadline_ms, true) == 0) {
        json_t *j = json_loads(out, JSON_DISABLE_EOF_CHECK, NULL);
        v = (uint64_t)json_integer_value(json_object_get(j, key));
        json_decref(j);
    }
    free(out);
    return v;
}

/* Adds shops B1..Bn to the network at hq, each with password on stdin (`shop add
 * --password-stdin`), their ids into shops[0..n-1]. False at the first that fails. */
static inline bool cs_fix_shops_add(const char *hq, unsigned n, const char *password,
                                    uint64_t *shops, uint64_t deadline_ms)
{
    char input[128];
    snprintf(input, sizeof(input), "%s\n", password);
    for (unsigned i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof(name), "B%u", i + 1);
        const char *add[] = {"shop",       "add", "--data", hq, "--name", name, "--password-stdin",
                             "--json-out", NULL};
        if (!(shops[i] = cs_fix_cmd_u64(input, "id", add, deadline_ms)))
            return false;
    }
    return true;
}

/* Starts `chainsync serve --data hq --listen 127.0.0.1:PORT --ready-file ready` (port NULL or
 * "" = 0, any free port; a restart passes the port it had) with its output appended to log (NULL
 * = dropped), and waits up to wait_ms for the ready file. *pid is set as soon as it is spawned,
 * so the caller stops it whatever happens; addr gets the bound HOST:PORT. */
static inline bool cs_fix_serve_start(pid_t *pid, const char *hq, const char *port,
                                      const char *ready, const char *log, char *addr,
                                      size_t addr_len, uint64_t wait_ms)
{
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%s", port && port[0] ? port : "0");
    unlink(ready); /* a restart must not read the old one */
    const char *args[] = {"serve", "--data", hq, "--listen", listen, "--ready-file", ready, NULL};
    *pid = cs_run_spawn(args, log);
    return *pid > 0 && cs_run_ready_line(ready, addr, addr_len, wait_ms);
}

/* The port of a HOST:PORT address, into port (for restarting serve where branches look). */
static inline void cs_fix_port_of(const char *addr, char *port, size_t port_len)
{
    const char *colon = strrchr(addr, ':');
    snprintf(port, port_len, "%s", colon ? colon + 1 : "");
}

/* A port free on 127.0.0.1 now (bound to 0, read, closed; 0 when none), for a program that
 * cannot report the port it bound (stunnel, Prometheus). */
static inline unsigned cs_fix_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    unsigned port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* The head of the log in dir (0 when it cannot be read). */
static inline uint64_t cs_fix_head_seq(const char *dir)
{
    cs_engine *e = NULL;
    cs_log_reader *r = NULL;
    uint64_t head = 0;
    if (cs_engine_open(dir, NULL, &e) == CS_OK && cs_log_reader_open(cs_engine_log(e), &r) == CS_OK)
        cs_log_reader_head(r, &head);
    cs_log_reader_close(r);
    cs_engine_close(e);
    return head;
}

/* The branch's state in dir (zeros when it cannot be read). */
static inline cs_branch_state cs_fix_branch_state(const char *dir)
{
    cs_branch *b = NULL;
    cs_branch_state st = {0};
    if (cs_branch_open(dir, NULL, &b) == CS_OK && cs_branch_state_get(b, &st) != CS_OK)
        memset(&st, 0, sizeof(st));
    cs_branch_close(b);
    return st;
}

static inline uint64_t cs_fix_branch_cursor(const char *dir)
{
    return cs_fix_branch_state(dir).cursor;
}

#endif
