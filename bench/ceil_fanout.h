/*
 * ceil_fanout.h: the wire ceiling of SPEC section 8: raw libuv fan-out of the same bytes to K
 * plain loopback sockets, which is what the machine allows a server that streams N events of B
 * bytes to K branches. Header-only, like bench.h; driver: bench/ceilings.c.
 *
 *   bool cs_ceil_fanout(const cs_ceil_fanout_opts *o, cs_ceil_fanout_result *out);
 *
 * The server is a forked child with one libuv loop: it accepts K connections (TCP_NODELAY, as
 * chainsync's server sets) and, once all K are in, writes one shared buffer of events_per_buf * B
 * bytes (one uv_buf_t for every write, no copy, no refcount: it is the ceiling) to every socket
 * until each has been sent N * B bytes (the last write shorter when events_per_buf does not
 * divide N). Backpressure is chainsync's rule: a socket stops being queued to once its
 * uv_stream_get_write_queue_size passes CS_CEIL_FANOUT_HIGH (2 MiB, at most one buffer over) and
 * is resumed when it drops below CS_CEIL_FANOUT_LOW (512 KiB).
 *
 * The K receivers are spread over P forked client processes (one libuv loop each, K/P sockets,
 * one read buffer per process), each counting bytes until every one of its sockets has its N * B.
 * Time runs from just before the server's first write to the last byte received by the last
 * client (CLOCK_MONOTONIC is shared by the processes). RLIMIT_NOFILE is raised to its hard limit
 * in the caller and in every child. The caller must not hold a libuv loop it expects the children
 * to use (they make their own after fork); stdout is flushed before forking.
 *
 * Returns false on any failure (reported on stderr; every child is killed and reaped).
 */
#ifndef CS_CEIL_FANOUT_H
#define CS_CEIL_FANOUT_H

#include "bench/bench.h"

#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#define CS_CEIL_FANOUT_HIGH (2u * 1024u * 1024u) /* = CS_NET_SENDQ_BYTES_HIGH */
#define CS_CEIL_FANOUT_LOW (512u * 1024u)        /* = CS_NET_SENDQ_BYTES_LOW */
#define CS_CEIL_FANOUT_EVENTS_PER_BUF 1024u      /* = CS_NET_SEGMENT_EVENTS */
#define CS_CEIL_FANOUT_PROCS 2u
#define CS_CEIL_FANOUT_K_MAX 10000u
#define CS_CEIL_FANOUT_PROCS_MAX 64u
#define CS_CEIL_FANOUT_READ_BYTES (256u * 1024u)
#define CS_CEIL_FANOUT_TIMEOUT_S 600u

typedef struct cs_ceil_fanout_opts {
    unsigned k;              /* sockets, 1..CS_CEIL_FANOUT_K_MAX */
    uint64_t n;              /* events each socket receives */
    size_t event_bytes;      /* B: bytes of one event on the wire */
    unsigned events_per_buf; /* events per write; 0: CS_CEIL_FANOUT_EVENTS_PER_BUF */
    unsigned procs;          /* receiving processes; 0: CS_CEIL_FANOUT_PROCS (capped at k) */
    unsigned timeout_s;      /* whole run; 0: CS_CEIL_FANOUT_TIMEOUT_S */
} cs_ceil_fanout_opts;

typedef struct cs_ceil_fanout_result {
    double secs;         /* first byte written to last byte received */
    double events_per_s; /* aggregate: k * n / secs */
    double mb_per_s;     /* aggregate: 10^6 bytes received per second */
    uint64_t bytes;      /* received by all sockets: k * n * event_bytes */
} cs_ceil_fanout_result;

/* Raises the soft limit on open files to the hard limit (1,000 sockets need it). */
static inline void cs_ceil_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Writes all of len bytes to fd (a pipe to the parent); false on failure. */
static inline bool cs__cf_write_all(int fd, const void *p, size_t len)
{
    const char *c = p;
    while (len > 0) {
        ssize_t w = write(fd, c, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        c += w, len -= (size_t)w;
    }
    return true;
}

/* Reads exactly len bytes from fd before the monotonic deadline; false on EOF, error or time. */
static inline bool cs__cf_read_all(int fd, void *p, size_t len, double deadline)
{
    char *c = p;
    while (len > 0) {
        int ms = (int)((deadline - cs_bench_now_s()) * 1000);
        if (ms <= 0)
            return false;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int rc = poll(&pf, 1, ms);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return false;
        ssize_t r = read(fd, c, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        c += r, len -= (size_t)r;
    }
    return true;
}

/* ---- the server (a child) ---------------------------------------------------------------- */

typedef struct cs__cf_srv cs__cf_srv;

typedef struct cs__cf_conn {
    uv_tcp_t tcp;
    cs__cf_srv *srv;
    uint64_t sent;     /* events handed to uv_write */
    unsigned inflight; /* writes not yet called back */
    bool paused;       /* stopped at the high-water mark, waiting for the low one */
} cs__cf_conn;

struct cs__cf_srv {
    uv_loop_t loop;
    uv_tcp_t listener;
    cs__cf_conn *conns;
    unsigned k, accepted, finished;
    uint64_t n;
    size_t event_bytes;
    unsigned epb;
    char *buf; /* epb * event_bytes: the one buffer every write sends */
    uv_write_t *free_reqs;
    int report_fd;
};

static inline void cs__cf_srv_fail(const char *what, int rc)
{
    fprintf(stderr, "ceil_fanout server: %s: %s\n", what, rc ? uv_strerror(rc) : "failed");
    _exit(1);
}

static inline void cs__cf_pump(cs__cf_conn *c);

static inline void cs__cf_written(uv_write_t *req, int status)
{
    cs__cf_conn *c = req->handle->data;
    cs__cf_srv *s = c->srv;
    if (status < 0)
        cs__cf_srv_fail("write", status);
    req->data = s->free_reqs; /* back to the free list */
    s->free_reqs = req;
    c->inflight--;
    if (c->sent == s->n && c->inflight == 0) {
        if (++s->finished == s->k)
            for (unsigned i = 0; i < s->k; i++)
                uv_close((uv_handle_t *)&s->conns[i].tcp, NULL);
        return;
    }
    if (c->paused && uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < CS_CEIL_FANOUT_LOW) {
        c->paused = false;
        cs__cf_pump(c);
    }
}

/* Queues writes of the shared buffer until the socket has all N or its queue passes HIGH. */
static inline void cs__cf_pump(cs__cf_conn *c)
{
    cs__cf_srv *s = c->srv;
    uv_stream_t *st = (uv_stream_t *)&c->tcp;
    while (c->sent < s->n) {
        if (uv_stream_get_write_queue_size(st) >= CS_CEIL_FANOUT_HIGH) {
            c->paused = true;
            return;
        }
        uint64_t count = s->n - c->sent < s->epb ? s->n - c->sent : s->epb;
        uv_write_t *req = s->free_reqs;
        if (req)
            s->free_reqs = req->data;
        else if (!(req = malloc(sizeof(*req))))
            cs__cf_srv_fail("out of memory for a write request", 0);
        uv_buf_t b = uv_buf_init(s->buf, (unsigned)(count * s->event_bytes));
        c->sent += count;
        c->inflight++;
        int rc = uv_write(req, st, &b, 1, cs__cf_written);
        if (rc)
            cs__cf_srv_fail("uv_write", rc);
    }
}

static inline void cs__cf_accept(uv_stream_t *l, int status)
{
    cs__cf_srv *s = l->data;
    if (status < 0)
        cs__cf_srv_fail("listen", status);
    if (s->accepted == s->k)
        cs__cf_srv_fail("a connection beyond K", 0);
    cs__cf_conn *c = &s->conns[s->accepted];
    c->srv = s;
    int rc = uv_tcp_init(&s->loop, &c->tcp);
    if (!rc)
        rc = uv_accept(l, (uv_stream_t *)&c->tcp);
    if (rc)
        cs__cf_srv_fail("accept", rc);
    c->tcp.data = c;
    uv_tcp_nodelay(&c->tcp, 1);
    if (++s->accepted < s->k)
        return;
    uv_close((uv_handle_t *)&s->listener, NULL);
    double t0 = cs_bench_now_s(); /* just before the first byte is written */
    if (!cs__cf_write_all(s->report_fd, &t0, sizeof(t0)))
        cs__cf_srv_fail("report to the parent", 0);
    for (unsigned i = 0; i < s->k; i++)
        cs__cf_pump(&s->conns[i]);
}

/* The server child: listens on 127.0.0.1, reports its port then its start time on fd. */
static inline void cs__cf_server(const cs_ceil_fanout_opts *o, unsigned epb, int fd)
{
    cs_ceil_raise_nofile();
    cs__cf_srv *s = calloc(1, sizeof(*s));
    if (!s || !(s->conns = calloc(o->k, sizeof(*s->conns))) ||
        !(s->buf = malloc((size_t)epb * o->event_bytes + 1)))
        cs__cf_srv_fail("out of memory", 0);
    for (size_t i = 0; i < (size_t)epb * o->event_bytes; i++)
        s->buf[i] = (char)(i * 131 + 7);
    s->k = o->k, s->n = o->n, s->event_bytes = o->event_bytes, s->epb = epb, s->report_fd = fd;
    struct sockaddr_in a;
    int rc = uv_loop_init(&s->loop);
    if (!rc)
        rc = uv_ip4_addr("127.0.0.1", 0, &a);
    if (!rc)
        rc = uv_tcp_init(&s->loop, &s->listener);
    s->listener.data = s;
    if (!rc)
        rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0);
    if (!rc)
        rc = uv_listen((uv_stream_t *)&s->listener, 4096, cs__cf_accept);
    int len = sizeof(a);
    if (!rc)
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&a, &len);
    if (rc)
        cs__cf_srv_fail("listen on 127.0.0.1", rc);
    int port = ntohs(a.sin_port);
    if (!cs__cf_write_all(fd, &port, sizeof(port)))
        cs__cf_srv_fail("report the port", 0);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    _exit(s->finished == s->k ? 0 : 1);
}

/* ---- a receiving process (a child) ------------------------------------------------------- */

typedef struct cs__cf_cli cs__cf_cli;

typedef struct cs__cf_rconn {
    uv_tcp_t tcp;
    uv_connect_t req;
    cs__cf_cli *cli;
    uint64_t got;
} cs__cf_rconn;

struct cs__cf_cli {
    uv_loop_t loop;
    cs__cf_rconn *conns;
    unsigned k, finished;
    uint64_t want; /* bytes per socket */
    uint64_t bytes;
    double t_last;
    char buf[CS_CEIL_FANOUT_READ_BYTES];
};

static inline void cs__cf_cli_fail(const char *what, int rc)
{
    fprintf(stderr, "ceil_fanout client: %s: %s\n", what, rc ? uv_strerror(rc) : "failed");
    _exit(1);
}

static inline void cs__cf_alloc(uv_handle_t *h, size_t size, uv_buf_t *b)
{
    (void)size;
    cs__cf_cli *cl = ((cs__cf_rconn *)h->data)->cli;
    *b = uv_buf_init(cl->buf, sizeof(cl->buf));
}

static inline void cs__cf_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    cs__cf_rconn *c = st->data;
    cs__cf_cli *cl = c->cli;
    if (nread < 0)
        cs__cf_cli_fail("read before all bytes arrived", (int)nread);
    c->got += (uint64_t)nread;
    cl->bytes += (uint64_t)nread;
    if (c->got < cl->want)
        return;
    if (c->got > cl->want)
        cs__cf_cli_fail("more bytes than sent", 0);
    uv_read_stop(st);
    uv_close((uv_handle_t *)st, NULL);
    if (++cl->finished == cl->k)
        cl->t_last = cs_bench_now_s();
}

static inline void cs__cf_connected(uv_connect_t *req, int status)
{
    if (status < 0)
        cs__cf_cli_fail("connect", status);
    int rc = uv_read_start(req->handle, cs__cf_alloc, cs__cf_read);
    if (rc)
        cs__cf_cli_fail("read_start", rc);
}

/* A receiving child: k sockets to port, reports its last-byte time and byte count on fd. */
static inline void cs__cf_client(unsigned k, int port, uint64_t want, int fd)
{
    cs_ceil_raise_nofile();
    cs__cf_cli *cl = calloc(1, sizeof(*cl));
    if (!cl || !(cl->conns = calloc(k, sizeof(*cl->conns))))
        cs__cf_cli_fail("out of memory", 0);
    cl->k = k, cl->want = want;
    struct sockaddr_in a;
    int rc = uv_loop_init(&cl->loop);
    if (!rc)
        rc = uv_ip4_addr("127.0.0.1", port, &a);
    for (unsigned i = 0; !rc && i < k; i++) {
        cs__cf_rconn *c = &cl->conns[i];
        c->cli = cl;
        rc = uv_tcp_init(&cl->loop, &c->tcp);
        c->tcp.data = c;
        if (!rc)
            rc = uv_tcp_connect(&c->req, &c->tcp, (const struct sockaddr *)&a, cs__cf_connected);
    }
    if (rc)
        cs__cf_cli_fail("connect", rc);
    uv_run(&cl->loop, UV_RUN_DEFAULT);
    if (cl->finished != k)
        cs__cf_cli_fail("the loop ended early", 0);
    if (!cs__cf_write_all(fd, &cl->t_last, sizeof(cl->t_last)) ||
        !cs__cf_write_all(fd, &cl->bytes, sizeof(cl->bytes)))
        cs__cf_cli_fail("report to the parent", 0);
    _exit(0);
}

/* ---- the parent -------------------------------------------------------------------------- */

/* Waits for pid until the deadline, then kills it; true when it exited 0. */
static inline bool cs__cf_reap(pid_t pid, double deadline)
{
    int st = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (r < 0 && errno != EINTR)
            return false;
        if (cs_bench_now_s() >= deadline) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
            }
            return false;
        }
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static inline bool cs_ceil_fanout(const cs_ceil_fanout_opts *o, cs_ceil_fanout_result *out)
{
    unsigned epb = o->events_per_buf ? o->events_per_buf : CS_CEIL_FANOUT_EVENTS_PER_BUF;
    unsigned procs = o->procs ? o->procs : CS_CEIL_FANOUT_PROCS;
    if (procs > o->k)
        procs = o->k;
    if (o->k == 0 || o->k > CS_CEIL_FANOUT_K_MAX || o->n == 0 || o->event_bytes == 0 ||
        procs > CS_CEIL_FANOUT_PROCS_MAX || (uint64_t)epb * o->event_bytes > UINT32_MAX / 2) {
        fprintf(stderr, "ceil_fanout: bad options (k %u, n %llu, bytes %zu, per write %u)\n", o->k,
                (unsigned long long)o->n, o->event_bytes, epb);
        return false;
    }
    double deadline = cs_bench_now_s() + (o->timeout_s ? o->timeout_s : CS_CEIL_FANOUT_TIMEOUT_S);
    cs_ceil_raise_nofile();
    fflush(stdout);
    fflush(stderr);
    pid_t pids[1 + CS_CEIL_FANOUT_PROCS_MAX];
    int fds[1 + CS_CEIL_FANOUT_PROCS_MAX];
    unsigned started = 0;
    bool ok = false;
    double t0 = 0, t_last = 0;
    uint64_t bytes = 0;
    int port = 0;
    for (unsigned i = 0; i <= procs; i++) {
        int p[2];
        if (i == 1 && !cs__cf_read_all(fds[0], &port, sizeof(port), deadline)) {
            fprintf(stderr, "ceil_fanout: the server did not report its port\n");
            goto done;
        }
        if (pipe(p) != 0) {
            fprintf(stderr, "ceil_fanout: pipe: %s\n", strerror(errno));
            goto done;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "ceil_fanout: fork: %s\n", strerror(errno));
            close(p[0]), close(p[1]);
            goto done;
        }
        if (pid == 0) {
            for (unsigned j = 0; j < started; j++)
                close(fds[j]);
            close(p[0]);
            if (i == 0)
                cs__cf_server(o, epb, p[1]);
            unsigned share = o->k / procs + (i - 1 < o->k % procs);
            cs__cf_client(share, port, o->n * (uint64_t)o->event_bytes, p[1]);
        }
        close(p[1]);
        pids[started] = pid, fds[started] = p[0];
        started++;
    }
    if (!cs__cf_read_all(fds[0], &t0, sizeof(t0), deadline)) {
        fprintf(stderr, "ceil_fanout: the server did not start writing\n");
        goto done;
    }
    for (unsigned i = 1; i < started; i++) {
        double t;
        uint64_t b;
        if (!cs__cf_read_all(fds[i], &t, sizeof(t), deadline) ||
            !cs__cf_read_all(fds[i], &b, sizeof(b), deadline)) {
            fprintf(stderr, "ceil_fanout: receiving process %u did not finish\n", i);
            goto done;
        }
        t_last = t > t_last ? t : t_last;
        bytes += b;
    }
    ok = true;
done:
    for (unsigned i = 0; i < started; i++) {
        close(fds[i]);
        if (!ok)
            kill(pids[i], SIGKILL);
        if (!cs__cf_reap(pids[i], ok ? cs_bench_now_s() + 10 : deadline) && ok) {
            fprintf(stderr, "ceil_fanout: %s did not exit cleanly\n",
                    i ? "a receiving process" : "the server");
            ok = false;
        }
    }
    uint64_t want = (uint64_t)o->k * o->n * o->event_bytes;
    if (ok && bytes != want) {
        fprintf(stderr, "ceil_fanout: received %llu bytes of %llu\n", (unsigned long long)bytes,
                (unsigned long long)want);
        ok = false;
    }
    if (!ok)
        return false;
    double secs = t_last - t0 > 1e-9 ? t_last - t0 : 1e-9;
    *out = (cs_ceil_fanout_result){.secs = secs,
                                   .events_per_s = (double)o->k * (double)o->n / secs,
                                   .mb_per_s = (double)bytes / secs / 1e6,
                                   .bytes = bytes};
    return true;
}

#endif
