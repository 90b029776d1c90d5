/*
 * run.h: running the real `chainsync` binary from a test (path in $CS_BIN, set by
 * tests/CMakeLists.txt), or any other program a test drives (cs_run_prog): arguments as an
 * array, input on stdin, stdout and stderr captured as strings, the exit code, and a deadline
 * after which the child is killed and reaped, so a hung command fails its test instead of the
 * suite. Also: background processes stopped by pid, waiting for a ready file, the check that a
 * command was refused with a given code (SPEC section 6), and what /proc says of a process (its
 * CPU time, its memory).
 */
#ifndef CS_TEST_RUN_H
#define CS_TEST_RUN_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CS_RUN_OUTPUT_BYTES_MAX (4u * 1024u * 1024u) /* a command's output in these tests */
#define CS_RUN_ARGS_MAX 32

typedef struct cs_run_result {
    int exit_code; /* -1 when killed or not exited */
    char *out;     /* NUL-terminated, owned by the caller (free) */
    size_t out_len;
    char *err; /* NUL-terminated, owned by the caller (free) */
} cs_run_result;

static inline uint64_t cs_run_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The wall clock in ms since the epoch: what a process records as a time of day. */
static inline uint64_t cs_run_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

typedef struct cs_run_sink {
    char *buf;
    size_t len;
    size_t cap;
} cs_run_sink;

/* Reads what is available on fd into s; false at EOF or error. */
static inline bool cs_run_sink_read(int fd, cs_run_sink *s)
{
    if (s->len + 4096 + 1 > s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 8192;
        if (ncap > CS_RUN_OUTPUT_BYTES_MAX)
            return false;
        char *nb = realloc(s->buf, ncap);
        if (!nb)
            return false;
        s->buf = nb, s->cap = ncap;
        s->buf[s->len] = '\0'; /* a child that prints nothing still leaves a string */
    }
    ssize_t n = read(fd, s->buf + s->len, s->cap - s->len - 1);
    if (n < 0 && errno == EINTR)
        return true;
    if (n <= 0)
        return false;
    s->len += (size_t)n;
    s->buf[s->len] = '\0';
    return true;
}

/* In the child: wires the pipes and executes argv (argv[0] a path, or a name found on PATH). */
static inline void cs_run_child_exec(const char *const *argv, int in_fd, int out_fd, int err_fd)
{
    dup2(in_fd, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    if (argv[0])
        execvp(argv[0], (char *const *)argv);
    _exit(127);
}

/* In the child: wires the pipes, sets or unsets CHAINSYNC_DATA, executes $CS_BIN args. */
static inline void cs_run_child(const char *const *args, int in_fd, int out_fd, int err_fd,
                                const char *data_env)
{
    if (data_env)
        setenv("CHAINSYNC_DATA", data_env, 1);
    else
        unsetenv("CHAINSYNC_DATA");
    const char *argv[CS_RUN_ARGS_MAX + 2];
    argv[0] = getenv("CS_BIN");
    size_t i = 0;
    for (; args[i] && i < CS_RUN_ARGS_MAX; i++)
        argv[i + 1] = args[i];
    argv[i + 1] = NULL;
    cs_run_child_exec(argv, in_fd, out_fd, err_fd);
}

/* Waits for pid until the deadline, killing and reaping it past that. */
static inline int cs_run_reap(pid_t pid, uint64_t deadline)
{
    int status = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR)
            return -1;
        if (cs_run_now_ms() > deadline) {
            fprintf(stderr, "  child %d passed its deadline: killed\n", (int)pid);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Drains the child's stdout and stderr until both close or the deadline passes. */
static inline void cs_run_drain(int out_fd, int err_fd, cs_run_sink *o, cs_run_sink *e,
                                uint64_t deadline)
{
    struct pollfd p[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
    while ((p[0].fd >= 0 || p[1].fd >= 0) && cs_run_now_ms() < deadline) {
        int n = poll(p, 2, 100);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2 && n > 0; i++) {
            if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (!cs_run_sink_read(p[i].fd, i == 0 ? o : e))
                p[i].fd = -1;
        }
    }
}

static inline void cs_run_close(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

/* Runs a child with input on stdin (NULL = none) for at most deadline_ms, capturing its output:
 * `chainsync args...` (CHAINSYNC_DATA set to data_env, NULL = unset) when chainsync, else the
 * program args[0] itself (a path, or a name on PATH) with args as its argv and the environment
 * left alone. False when the child could not be started or fed; r's strings are set whenever
 * true is returned. */
static inline bool cs_run_any(cs_run_result *r, const char *input, bool chainsync,
                              const char *data_env, const char *const *args, uint64_t deadline_ms)
{
    memset(r, 0, sizeof(*r));
    r->exit_code = -1;
    int p[6]; /* in[2], out[2], err[2] */
    if (pipe(p))
        return false;
    if (pipe(p + 2)) {
        cs_run_close(p, 2);
        return false;
    }
    if (pipe(p + 4)) {
        cs_run_close(p, 4);
        return false;
    }
    pid_t pid = fork();
    if (pid < 0) {
        cs_run_close(p, 6);
        return false;
    }
    if (pid == 0) {
        close(p[1]), close(p[2]), close(p[4]);
        if (chainsync)
            cs_run_child(args, p[0], p[3], p[5], data_env);
        cs_run_child_exec(args, p[0], p[3], p[5]);
    }
    close(p[0]), close(p[3]), close(p[5]);
    /* Inputs here are far below a pipe's buffer, so writing all first cannot deadlock. A child
     * that exits without reading (a usage error) closes the pipe: EPIPE is not a failure. */
    size_t len = input ? strlen(input) : 0;
    bool wrote = len == 0 || write(p[1], input, len) == (ssize_t)len || errno == EPIPE;
    close(p[1]);
    uint64_t deadline = cs_run_now_ms() + deadline_ms;
    cs_run_sink o = {0}, e = {0};
    cs_run_drain(p[2], p[4], &o, &e, deadline);
    close(p[2]), close(p[4]);
    r->exit_code = cs_run_reap(pid, deadline);
    r->out = o.buf ? o.buf : strdup("");
    r->out_len = o.len;
    r->err = e.buf ? e.buf : strdup("");
    return wrote && r->out && r->err;
}

/* Runs `chainsync args...` (args NULL-terminated) with input on stdin (NULL = none) and
 * CHAINSYNC_DATA set to data_env (NULL = unset), for at most deadline_ms. False when the child
 * could not be started or fed; r's strings are set whenever true is returned. */
static inline bool cs_run(cs_run_result *r, const char *input, const char *data_env,
                          const char *const *args, uint64_t deadline_ms)
{
    return cs_run_any(r, input, true, data_env, args, deadline_ms);
}

/* Runs any program like cs_run runs chainsync: argv[0] a path or a name found on PATH. */
static inline bool cs_run_prog(cs_run_result *r, const char *input, const char *const *argv,
                               uint64_t deadline_ms)
{
    return cs_run_any(r, input, false, NULL, argv, deadline_ms);
}

static inline void cs_run_free(cs_run_result *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof(*r));
}

/* `chainsync args...` with input, for at most deadline_ms: the exit code (-1 when it could not
 * run or was killed). *out and *err (each NULL = dropped) get stdout and stderr, owned by the
 * caller. With loud, a non-zero exit copies its stderr to ours, so a failing check says why. */
static inline int cs_run_code(const char *input, const char *const *args, char **out, char **err,
                              uint64_t deadline_ms, bool loud)
{
    cs_run_result r;
    bool ok = cs_run(&r, input, NULL, args, deadline_ms);
    int code = ok ? r.exit_code : -1;
    if (loud && code != 0)
        fprintf(stderr, "  chainsync %s %s exited %d: %s", args[0], args[1] ? args[1] : "", code,
                r.err ? r.err : "");
    if (out)
        *out = r.out, r.out = NULL;
    if (err)
        *err = r.err, r.err = NULL;
    cs_run_free(&r);
    return code;
}

/* True when the command r ran exited want_exit with stderr starting `error: <code>: ` (SPEC
 * section 6: the stable code of a refusal); says what came instead when not. */
static inline bool cs_run_refused(const cs_run_result *r, const char *code, int want_exit)
{
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "error: %s: ", code);
    if (r->exit_code != want_exit || strncmp(r->err, prefix, strlen(prefix)) != 0) {
        fprintf(stderr, "  wanted exit %d and `%s`; got exit %d, stderr: %s", want_exit, prefix,
                r->exit_code, r->err);
        return false;
    }
    return true;
}

/* Starts `chainsync args...` in the background with stdin from /dev/null and stdout and stderr
 * appended to log_path (NULL = /dev/null). Returns the pid, or -1. The caller stops it with
 * cs_run_stop (every test reaps what it starts, by pid). */
static inline pid_t cs_run_spawn(const char *const *args, const char *log_path)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int in = open("/dev/null", O_RDONLY);
    int out = open(log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in < 0 || out < 0)
        _exit(127);
    cs_run_child(args, in, out, out, NULL);
    return -1; /* not reached */
}

/* Sends sig (SIGTERM for a clean stop, SIGKILL for a crash) and reaps pid, killing it when it
 * has not exited within deadline_ms. Returns the exit code (-1 when killed by a signal). */
static inline int cs_run_stop(pid_t pid, int sig, uint64_t deadline_ms)
{
    if (pid <= 0)
        return -1;
    kill(pid, sig);
    return cs_run_reap(pid, cs_run_now_ms() + deadline_ms);
}

/* Sleeps ms milliseconds. */
static inline void cs_run_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Waits up to deadline_ms for the file at path to hold a whole first line (a ready file that
 * `serve` or `--http-ready-file` writes once listening) and copies it to out without its line
 * end. False when no whole line came in time. */
static inline bool cs_run_ready_line(const char *path, char *out, size_t len, uint64_t deadline_ms)
{
    for (uint64_t end = cs_run_now_ms() + deadline_ms; cs_run_now_ms() < end; cs_run_sleep_ms(10)) {
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        bool ok = fgets(out, (int)len, f) && strchr(out, '\n');
        fclose(f);
        if (ok) {
            out[strcspn(out, "\r\n")] = '\0';
            return true;
        }
    }
    return false;
}

/* CPU time (user + system) pid has used so far, in clock ticks (sysconf(_SC_CLK_TCK) a second),
 * from /proc/PID/stat. False when it cannot be read. */
static inline bool cs_run_cpu_ticks(pid_t pid, uint64_t *ticks)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return false;
    *ticks = ut + st;
    return true;
}

/* The line "field: N kB" of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...): N, or -1 when the
 * process or the line is not there. */
static inline long cs_run_proc_kib(pid_t pid, const char *field)
{
    char path[64], line[256], want[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    snprintf(want, sizeof(want), "%s: %%ld kB", field);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, want, &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

#endif
