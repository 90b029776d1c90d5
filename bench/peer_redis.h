/*
 * peer_redis.h: the peer of SPEC section 8: Redis replication of the same N writes of the same
 * sizes to R replicas (16 in the SPEC) on loopback, timed until every replica has all of them.
 * Header-only, like bench.h; driver: bench/ceilings.c.
 *
 *   bool cs_peer_redis_ensure(bool install, char *why, size_t why_len);
 *   bool cs_peer_redis(const cs_peer_redis_opts *o, cs_peer_redis_result *out);
 *
 * cs_peer_redis_ensure: true when redis-server ($CS_REDIS_SERVER, else /usr/bin/redis-server) is
 * there; when it is missing, install is true and we are root, it runs `apt-get update` and
 * `apt-get install -y redis-server` (Debian's package; a bench-only dependency, not in
 * tools/setup.sh) and checks again. False with the reason in why ("redis-server not installed")
 * otherwise: the caller then prints the peer as unavailable.
 *
 * cs_peer_redis: in a fresh temporary directory, starts a real redis-server master on 127.0.0.1
 * (a free port; --save "" --appendonly no --daemonize no; no output-buffer limit on replicas, so
 * that a replica falling behind is not dropped) and R replicas (--replicaof 127.0.0.1 PORT), all
 * children of this process. The initial sync goes through a (tiny) RDB file: after a diskless
 * one, Redis 7 streams nothing to a replica until that replica's first once-a-second REPLCONF
 * ACK, which showed here as runs up to a second late. It waits until the master's INFO
 * replication says connected_slaves:R with every slave online and every replica's says
 * master_link_status:up, then makes one untimed warm-up SET and waits until every replica has
 * applied it (the stream is known to flow to each).
 *
 * The timed part: on one plain TCP socket speaking RESP (no hiredis), N pipelined
 * `SET key value` (distinct 12-byte keys, values of value_bytes; the stream is built before
 * timing), the replies read as they come. Once the master has answered all N, its
 * master_repl_offset is read (INFO replication) and every replica's own INFO replication is
 * polled (one connection each) until its slave_repl_offset, what it has applied, reaches that
 * offset. The time runs from the first byte written to the moment the last replica is seen
 * there. (The slaves' offset= on the master's INFO moves only with the replicas'
 * once-a-second ACK: too coarse for a run of about a second; it is checked afterwards instead.)
 *
 * Untimed checks afterwards: the master's INFO shows every slave's offset= equal to its
 * master_repl_offset (after their next ACK), and every replica holds N + 1 keys (DBSIZE, the
 * warm-up key included). Every redis process is stopped by pid (SIGTERM, SIGKILL after 5 s) and
 * the directory removed, whatever happened.
 *
 * Returns false on any failure (reported on stderr).
 */
#ifndef CS_PEER_REDIS_H
#define CS_PEER_REDIS_H

#include "bench/bench.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CS_PEER_REDIS_BIN "/usr/bin/redis-server"
#define CS_PEER_REDIS_REPLICAS 16u
#define CS_PEER_REDIS_REPLICAS_MAX 64u
#define CS_PEER_REDIS_TIMEOUT_S 300u
#define CS_PEER_REDIS_UP_TIMEOUT_S 60u
#define CS_PEER_REDIS_REPLY_BYTES_MAX (1u << 20)

typedef struct cs_peer_redis_opts {
    unsigned replicas;  /* R; 0: CS_PEER_REDIS_REPLICAS */
    uint64_t n;         /* writes */
    size_t value_bytes; /* bytes of each value */
    unsigned timeout_s; /* the timed part; 0: CS_PEER_REDIS_TIMEOUT_S */
} cs_peer_redis_opts;

typedef struct cs_peer_redis_result {
    double secs;           /* first byte written to every replica at the master's offset */
    double events_per_s;   /* aggregate: n * replicas / secs */
    double writes_per_s;   /* n / secs */
    double master_secs;    /* first byte written to the master's last +OK */
    uint64_t stream_bytes; /* RESP bytes written to the master */
    uint64_t repl_offset;  /* the master's replication offset at the end */
    char version[64];      /* "7.0.15", from redis-server --version */
} cs_peer_redis_result;

static inline const char *cs_peer_redis_bin(void)
{
    const char *b = getenv("CS_REDIS_SERVER");
    return b && *b ? b : CS_PEER_REDIS_BIN;
}

static inline bool cs_peer_redis_ensure(bool install, char *why, size_t why_len)
{
    const char *bin = cs_peer_redis_bin();
    if (access(bin, X_OK) == 0)
        return true;
    if (install && geteuid() == 0 && strcmp(bin, CS_PEER_REDIS_BIN) == 0) {
        fprintf(stderr, "peer: installing redis-server (apt-get install -y redis-server)\n");
        fflush(stdout);
        fflush(stderr);
        int rc = system("apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive "
                        "apt-get install -y -qq redis-server >/dev/null");
        if (rc == 0 && access(bin, X_OK) == 0)
            return true;
        snprintf(why, why_len, "redis-server not installed (apt-get install failed)");
        return false;
    }
    snprintf(why, why_len, "redis-server not installed%s",
             install && geteuid() != 0 ? " (not root: apt-get install -y redis-server)" : "");
    return false;
}

/* ---- RESP over a plain socket ------------------------------------------------------------ */

static inline int cs__rd_connect(int port, bool nonblock)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    if (nonblock)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Appends a RESP array of argc bulk strings to buf at *len (buf big enough: the caller sized). */
static inline size_t cs__rd_put_cmd(char *buf, int argc, const char *const *argv,
                                    const size_t *lens)
{
    size_t n = (size_t)sprintf(buf, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        n += (size_t)sprintf(buf + n, "$%zu\r\n", lens[i]);
        memcpy(buf + n, argv[i], lens[i]);
        n += lens[i];
        buf[n++] = '\r', buf[n++] = '\n';
    }
    return n;
}

/* Sends a command of NUL-terminated words and reads one reply (simple, error, integer or bulk)
 * into a malloc'd NUL-terminated string (the bulk's body; the line for the others, type byte
 * included). NULL on failure. */
static inline char *cs__rd_call(int fd, int argc, const char *const *argv)
{
    char cmd[1024];
    size_t lens[8], total = 16;
    if (argc > 8)
        return NULL;
    for (int i = 0; i < argc; i++)
        total += (lens[i] = strlen(argv[i])) + 24;
    if (total > sizeof(cmd))
        return NULL;
    size_t len = cs__rd_put_cmd(cmd, argc, argv, lens);
    if (send(fd, cmd, len, MSG_NOSIGNAL) != (ssize_t)len)
        return NULL;
    size_t cap = 4096, got = 0;
    char *r = malloc(cap);
    while (r) {
        char *eol = got ? memchr(r, '\n', got) : NULL;
        if (eol && r[0] != '$') {
            *eol = '\0';
            if (eol > r && eol[-1] == '\r')
                eol[-1] = '\0';
            return r;
        }
        if (eol) {
            long blen = strtol(r + 1, NULL, 10);
            size_t head = (size_t)(eol - r) + 1;
            if (blen < 0 || (size_t)blen > CS_PEER_REDIS_REPLY_BYTES_MAX)
                break;
            if (got >= head + (size_t)blen + 2) {
                memmove(r, r + head, (size_t)blen);
                r[blen] = '\0';
                return r;
            }
        }
        if (got + 1 >= cap) {
            char *nr = cap < 2 * CS_PEER_REDIS_REPLY_BYTES_MAX ? realloc(r, cap * 2) : NULL;
            if (!nr)
                break;
            r = nr, cap *= 2;
        }
        ssize_t n = recv(fd, r + got, cap - got - 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    free(r);
    return NULL;
}

/* The unsigned value after "name" (e.g. "master_repl_offset:") in an INFO text; -1 if absent. */
static inline int64_t cs__rd_field(const char *info, const char *name)
{
    const char *p = strstr(info, name);
    return p ? strtoll(p + strlen(name), NULL, 10) : -1;
}

/* The master's INFO replication: connected slaves, how many are online, and whether every
 * slave's offset equals master_repl_offset (into *offset). */
static inline bool cs__rd_master_state(int fd, unsigned *connected, unsigned *online,
                                       bool *all_at_offset, uint64_t *offset)
{
    const char *args[] = {"INFO", "replication"};
    char *info = cs__rd_call(fd, 2, args);
    if (!info || info[0] == '-') {
        free(info);
        return false;
    }
    int64_t c = cs__rd_field(info, "connected_slaves:");
    int64_t mo = cs__rd_field(info, "master_repl_offset:");
    *connected = c > 0 ? (unsigned)c : 0;
    *online = 0;
    *all_at_offset = mo >= 0;
    *offset = mo > 0 ? (uint64_t)mo : 0;
    for (const char *p = strstr(info, "\nslave"); p; p = strstr(p + 1, "\nslave")) {
        const char *eol = strchr(p + 1, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        char line[512];
        snprintf(line, sizeof(line), "%.*s", (int)(ll < sizeof(line) ? ll : sizeof(line) - 1), p);
        if (!strstr(line, "ip="))
            continue; /* slave_read_repl_offset and the like */
        *online += strstr(line, "state=online") != NULL;
        if (cs__rd_field(line, "offset=") != mo)
            *all_at_offset = false;
    }
    free(info);
    return true;
}

/* ---- the processes ----------------------------------------------------------------------- */

/* count distinct free ports on 127.0.0.1 (held open together so that they differ). */
static inline bool cs__rd_free_ports(int *ports, unsigned count)
{
    int fds[CS_PEER_REDIS_REPLICAS_MAX + 1];
    bool ok = true;
    unsigned i;
    for (i = 0; ok && i < count; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        socklen_t len = sizeof(a);
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        ok = fds[i] >= 0 && bind(fds[i], (struct sockaddr *)&a, sizeof(a)) == 0 &&
             getsockname(fds[i], (struct sockaddr *)&a, &len) == 0;
        ports[i] = ntohs(a.sin_port);
        if (fds[i] < 0)
            break;
    }
    for (unsigned j = 0; j < i; j++)
        close(fds[j]);
    return ok;
}

/* Starts redis-server on port with its own directory under root; replica of master_port if > 0. */
static inline pid_t cs__rd_spawn(const char *root, unsigned idx, int port, int master_port)
{
    char dir[320], logf[340], portb[16], mportb[16];
    snprintf(dir, sizeof(dir), "%s/%u", root, idx);
    snprintf(logf, sizeof(logf), "%s/%u.log", root, idx);
    snprintf(portb, sizeof(portb), "%d", port);
    snprintf(mportb, sizeof(mportb), "%d", master_port);
    if (mkdir(dir, 0700) != 0)
        return -1;
    const char *bin = cs_peer_redis_bin();
    const char *args[40] = {bin,
                            "--port",
                            portb,
                            "--bind",
                            "127.0.0.1",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--daemonize",
                            "no",
                            "--dir",
                            dir,
                            "--logfile",
                            "",
                            "--protected-mode",
                            "no",
                            "--repl-diskless-sync",
                            "no",
                            "--client-output-buffer-limit",
                            "replica 0 0 0",
                            NULL};
    if (master_port > 0) {
        unsigned a = 0;
        while (args[a])
            a++;
        args[a++] = "--replicaof";
        args[a++] = "127.0.0.1";
        args[a++] = mportb;
        args[a] = NULL;
    }
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int in = open("/dev/null", O_RDONLY);
    int out = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in < 0 || out < 0)
        _exit(127);
    dup2(in, 0), dup2(out, 1), dup2(out, 2);
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    execv(bin, (char *const *)args);
    _exit(127);
}

/* SIGTERM to every pid, SIGKILL to those not gone within 5 s; all reaped. */
static inline void cs__rd_stop_all(pid_t *pids, unsigned count)
{
    for (unsigned i = 0; i < count; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGTERM);
    double deadline = cs_bench_now_s() + 5;
    for (unsigned i = 0; i < count; i++) {
        if (pids[i] <= 0)
            continue;
        int st;
        while (waitpid(pids[i], &st, WNOHANG) == 0) {
            if (cs_bench_now_s() >= deadline) {
                kill(pids[i], SIGKILL);
                while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR) {
                }
                break;
            }
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
        }
        pids[i] = 0;
    }
}

/* Connects to port, retrying while redis starts (up to the deadline). */
static inline int cs__rd_connect_retry(int port, double deadline)
{
    for (;;) {
        int fd = cs__rd_connect(port, false);
        if (fd >= 0 || cs_bench_now_s() >= deadline)
            return fd;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Waits until the master has r online slaves and every replica's link is up. */
static inline bool cs__rd_wait_up(int mfd, const int *rfd, unsigned r, double deadline)
{
    while (cs_bench_now_s() < deadline) {
        unsigned connected = 0, online = 0, up = 0;
        bool at;
        uint64_t off;
        if (!cs__rd_master_state(mfd, &connected, &online, &at, &off))
            return false;
        for (unsigned i = 0; connected == r && online == r && i < r; i++) {
            const char *args[] = {"INFO", "replication"};
            char *info = cs__rd_call(rfd[i], 2, args);
            up += info && strstr(info, "master_link_status:up") != NULL;
            free(info);
        }
        if (up == r)
            return true;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "peer_redis: the replicas did not all come up\n");
    return false;
}

/* Writes the stream to the master while reading its replies, until all n +OK have come.
 * Returns the second at which the last one arrived, or -1. */
static inline double cs__rd_pump(int fd, const char *stream, size_t len, uint64_t n,
                                 double deadline)
{
    size_t off = 0;
    uint64_t lines = 0;
    bool line_start = true, err = false;
    static char rbuf[65536];
    while (cs_bench_now_s() < deadline) {
        struct pollfd pf = {.fd = fd, .events = POLLIN | (off < len ? POLLOUT : 0)};
        int rc = poll(&pf, 1, 100);
        if (rc < 0 && errno != EINTR)
            return -1;
        if (rc <= 0)
            continue;
        if ((pf.revents & POLLOUT) && off < len) {
            ssize_t w = send(fd, stream + off, len - off, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR)
                return -1;
            if (w > 0)
                off += (size_t)w;
        }
        if (pf.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t got = recv(fd, rbuf, sizeof(rbuf), 0);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))
                return -1;
            for (ssize_t i = 0; i < got; i++) {
                if (line_start)
                    err |= rbuf[i] != '+', line_start = false;
                if (rbuf[i] != '\n')
                    continue;
                line_start = true;
                if (++lines < n)
                    continue;
                if (err) {
                    fprintf(stderr, "peer_redis: the master refused a write\n");
                    return -1;
                }
                return cs_bench_now_s();
            }
        }
    }
    fprintf(stderr, "peer_redis: timed out (%llu of %llu replies)\n", (unsigned long long)lines,
            (unsigned long long)n);
    return -1;
}

/* Polls every replica's own INFO replication until its slave_repl_offset (what it has applied)
 * reaches the master's master_repl_offset, read once the master has answered every write.
 * Returns the second at which the last replica was seen there, or -1. */
static inline double cs__rd_caught_up(int mfd, const int *rfd, unsigned r, double deadline)
{
    const char *args[] = {"INFO", "replication"};
    char *info = cs__rd_call(mfd, 2, args);
    int64_t target = info ? cs__rd_field(info, "master_repl_offset:") : -1;
    free(info);
    if (target < 0) {
        fprintf(stderr, "peer_redis: no master_repl_offset from the master\n");
        return -1;
    }
    bool at[CS_PEER_REDIS_REPLICAS_MAX] = {false};
    unsigned left = r;
    while (cs_bench_now_s() < deadline) {
        for (unsigned i = 0; i < r; i++) {
            if (at[i])
                continue;
            info = cs__rd_call(rfd[i], 2, args);
            int64_t off = info ? cs__rd_field(info, "slave_repl_offset:") : -2;
            free(info);
            if (off == -2) {
                fprintf(stderr, "peer_redis: replica %u does not answer\n", i);
                return -1;
            }
            if (off >= target)
                at[i] = true, left--;
        }
        if (left == 0)
            return cs_bench_now_s();
    }
    fprintf(stderr, "peer_redis: timed out, %u replicas behind\n", left);
    return -1;
}

/* Untimed: one SET that every replica must apply before the timed writes (the stream flows). */
static inline bool cs__rd_warm_up(int mfd, const int *rfd, unsigned r, double deadline)
{
    const char *args[] = {"SET", "warm-up", "1"};
    char *reply = cs__rd_call(mfd, 3, args);
    bool ok = reply && strcmp(reply, "+OK") == 0;
    free(reply);
    if (!ok || cs__rd_caught_up(mfd, rfd, r, deadline) < 0) {
        fprintf(stderr, "peer_redis: the warm-up write did not reach every replica\n");
        return false;
    }
    return true;
}

/* The N SETs as one RESP stream (malloc'd). */
static inline char *cs__rd_stream(uint64_t n, size_t value_bytes, size_t *len)
{
    size_t per = 64 + 24 + value_bytes; /* keys are 12 bytes below 10^10 writes */
    char *s = malloc(per * n + 128), *value = malloc(value_bytes + 1);
    if (!s || !value) {
        free(s);
        free(value);
        return NULL;
    }
    for (size_t i = 0; i < value_bytes; i++)
        value[i] = (char)('a' + i % 26);
    size_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        char key[32];
        int klen = snprintf(key, sizeof(key), "k:%010llu", (unsigned long long)i);
        const char *argv[3] = {"SET", key, value};
        size_t lens[3] = {3, (size_t)klen, value_bytes};
        off += cs__rd_put_cmd(s + off, 3, argv, lens);
    }
    free(value);
    *len = off;
    return s;
}

static inline void cs__rd_version(char *out, size_t out_len)
{
    char cmd[512], line[256];
    snprintf(cmd, sizeof(cmd), "'%s' --version 2>/dev/null", cs_peer_redis_bin());
    snprintf(out, out_len, "?");
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    if (fgets(line, sizeof(line), p)) {
        const char *v = strstr(line, "v=");
        if (v)
            snprintf(out, out_len, "%.*s", (int)strcspn(v + 2, " \n"), v + 2);
    }
    pclose(p);
}

/* Untimed: the master's slaves all at its offset, every replica at it with n keys. */
static inline bool cs__rd_verify(int mfd, const int *rfd, unsigned r, uint64_t n, uint64_t *off)
{
    bool at = false;
    unsigned connected = 0, online = 0;
    double deadline = cs_bench_now_s() + 5;
    while (cs_bench_now_s() < deadline) {
        /* the slaves' offsets on the master move with their once-a-second ACK */
        if (!cs__rd_master_state(mfd, &connected, &online, &at, off))
            return false;
        if (at && connected == r)
            break;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (!at || connected != r) {
        fprintf(stderr, "peer_redis: the master's slaves are not all at its offset\n");
        return false;
    }
    for (unsigned i = 0; i < r; i++) {
        const char *info_args[] = {"INFO", "replication"}, *size_args[] = {"DBSIZE"};
        char *info = cs__rd_call(rfd[i], 2, info_args);
        char *size = cs__rd_call(rfd[i], 1, size_args);
        bool ok = info && size && size[0] == ':' && strtoull(size + 1, NULL, 10) == n + 1 &&
                  cs__rd_field(info, "slave_repl_offset:") >= (int64_t)*off;
        free(info);
        free(size);
        if (!ok) {
            fprintf(stderr, "peer_redis: replica %u does not hold the %llu writes\n", i,
                    (unsigned long long)n);
            return false;
        }
    }
    return true;
}

static inline bool cs_peer_redis(const cs_peer_redis_opts *o, cs_peer_redis_result *out)
{
    unsigned r = o->replicas ? o->replicas : CS_PEER_REDIS_REPLICAS;
    if (r > CS_PEER_REDIS_REPLICAS_MAX || o->n == 0 || o->value_bytes > (1u << 20)) {
        fprintf(stderr, "peer_redis: bad options\n");
        return false;
    }
    char root[] = "/tmp/cs-peer-redis-XXXXXX";
    if (!mkdtemp(root)) {
        fprintf(stderr, "peer_redis: mkdtemp: %s\n", strerror(errno));
        return false;
    }
    pid_t pids[CS_PEER_REDIS_REPLICAS_MAX + 1] = {0};
    int ports[CS_PEER_REDIS_REPLICAS_MAX + 1], rfd[CS_PEER_REDIS_REPLICAS_MAX], mfd = -1, wfd = -1;
    for (unsigned i = 0; i < r; i++)
        rfd[i] = -1;
    size_t len = 0;
    char *stream = NULL;
    bool ok = false;
    memset(out, 0, sizeof(*out));
    cs__rd_version(out->version, sizeof(out->version));
    fflush(stdout);
    fflush(stderr);
    if (!cs__rd_free_ports(ports, r + 1)) {
        fprintf(stderr, "peer_redis: no free ports\n");
        goto done;
    }
    for (unsigned i = 0; i <= r; i++)
        if ((pids[i] = cs__rd_spawn(root, i, ports[i], i ? ports[0] : 0)) < 0) {
            fprintf(stderr, "peer_redis: cannot start redis-server\n");
            goto done;
        }
    double up_deadline = cs_bench_now_s() + CS_PEER_REDIS_UP_TIMEOUT_S;
    if ((mfd = cs__rd_connect_retry(ports[0], up_deadline)) < 0) {
        fprintf(stderr, "peer_redis: cannot reach the master (see %s/0.log)\n", root);
        goto done;
    }
    for (unsigned i = 0; i < r; i++)
        if ((rfd[i] = cs__rd_connect_retry(ports[i + 1], up_deadline)) < 0) {
            fprintf(stderr, "peer_redis: cannot reach replica %u\n", i);
            goto done;
        }
    if (!cs__rd_wait_up(mfd, rfd, r, up_deadline) || !cs__rd_warm_up(mfd, rfd, r, up_deadline))
        goto done;
    if (!(stream = cs__rd_stream(o->n, o->value_bytes, &len))) {
        fprintf(stderr, "peer_redis: out of memory for the stream\n");
        goto done;
    }
    if ((wfd = cs__rd_connect(ports[0], true)) < 0) {
        fprintf(stderr, "peer_redis: cannot connect the writer\n");
        goto done;
    }
    double t0 = cs_bench_now_s();
    double deadline = t0 + (o->timeout_s ? o->timeout_s : CS_PEER_REDIS_TIMEOUT_S);
    double t_acked = cs__rd_pump(wfd, stream, len, o->n, deadline);
    double t1 = t_acked < 0 ? -1 : cs__rd_caught_up(mfd, rfd, r, deadline);
    if (t1 < 0 || !cs__rd_verify(mfd, rfd, r, o->n, &out->repl_offset))
        goto done;
    out->master_secs = t_acked - t0;
    double secs = t1 - t0 > 1e-9 ? t1 - t0 : 1e-9;
    out->secs = secs;
    out->events_per_s = (double)o->n * r / secs;
    out->writes_per_s = (double)o->n / secs;
    out->stream_bytes = len;
    ok = true;
done:
    free(stream);
    if (wfd >= 0)
        close(wfd);
    if (mfd >= 0)
        close(mfd);
    for (unsigned i = 0; i < r; i++)
        if (rfd[i] >= 0)
            close(rfd[i]);
    cs__rd_stop_all(pids, r + 1);
    cs_bench_rm_tree(root);
    return ok;
}

#endif
