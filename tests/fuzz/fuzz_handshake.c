/*
 * fuzz_handshake.c: libFuzzer target for the head office's side of the handshake and of the
 * frames a branch sends after it (docs/protocol.md): a real `serve` (cs_server_run on a head
 * office with one branch) runs in a thread of this process on 127.0.0.1:0, and each input is
 * sent to it over a fresh TCP connection, as a hostile branch would.
 *
 * Input: byte 0 is a mode, the rest goes on the wire as it is. Mode 0: straight away (HELLO and
 * PROOF as the fuzzer writes them). Mode 1: first a correct HELLO and PROOF of the seed branch
 * (this harness holds its keys), so the bytes reach the AWAIT_START state. Mode 2: that and a
 * START at cursor 0, so they reach STREAMING (ACK, PING, WRITE). The connection's write side
 * is then shut and whatever the server answers is read until it closes.
 *
 * Properties: the server survives every input (a crash or sanitizer report in its thread is
 * this input's finding), answers with well-formed frames, closes the connection (it never
 * hangs on a half-sent frame once the peer is gone), and still completes a correct handshake
 * afterwards.
 */
#include "net/net_int.h"
#include "tests/fuzz/fuzz.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <sys/socket.h>

#define PASSWORD "fuzz-password-1"
#define READ_WAIT_MS 10000 /* a loaded machine may stall a while; longer than that: a hang */

static struct {
    cs_engine *e;
    char dir[512];
    char ready[600];
    uint16_t port;
    uint64_t shop;
    cs_auth_client client;
    pthread_t thread;
    unsigned inputs;
} fz;

static void *serve_thread(void *arg)
{
    (void)arg;
    cs_server_options o = {.listen = "127.0.0.1:0", .ready_file = fz.ready};
    /* CS_FUZZ_VERBOSE: the server's log in the scratch directory (kept when a finding aborts). */
    char path[600];
    snprintf(path, sizeof(path), "%s/serve.log", fuzz_scratch());
    o.log = fopen(getenv("CS_FUZZ_VERBOSE") ? path : "/dev/null", "w");
    if (getenv("CS_FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz_handshake: the server logs to %s\n", path);
    char msg[256] = "";
    cs_err err = cs_server_run(fz.e, fz.dir, &o, msg, sizeof(msg));
    fprintf(stderr, "fuzz_handshake: the server stopped: %s: %s\n", cs_err_name(err), msg);
    abort(); /* it runs until the process ends: stopping is a finding */
}

static void setup_store(void)
{
    snprintf(fz.dir, sizeof(fz.dir), "%s/hq", fuzz_scratch());
    snprintf(fz.ready, sizeof(fz.ready), "%s/ready", fuzz_scratch());
    cs_log_options opts = {.flags = CS_LOG_NOSYNC};
    uint64_t self;
    if (cs_engine_open(fz.dir, &opts, &fz.e) != CS_OK ||
        cs_engine_init(fz.e, "HQ", &self) != CS_OK ||
        cs_engine_network_create(fz.e, "Net") != CS_OK ||
        cs_engine_shop_add(fz.e, "Branch", PASSWORD, &fz.shop) != CS_OK)
        abort();
    cs_auth_keys keys;
    bool known, linked;
    if (cs_engine_shop_keys(fz.e, fz.shop, &keys, &known, &linked) != CS_OK || !known ||
        cs_auth_derive(PASSWORD, &keys.params, &fz.client) != CS_OK)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    signal(SIGPIPE, SIG_IGN); /* the server may close first: a write then fails, no signal */
    if (sodium_init() < 0)
        abort();
    setup_store();
    if (pthread_create(&fz.thread, NULL, serve_thread, NULL) != 0)
        abort();
    for (int i = 0; i < 1000 && !fz.port; i++) {
        FILE *f = fopen(fz.ready, "r");
        unsigned port;
        if (f && fscanf(f, "127.0.0.1:%u", &port) == 1)
            fz.port = (uint16_t)port;
        if (f)
            fclose(f);
        usleep(10000);
    }
    if (!fz.port)
        abort();
    return 0;
}

static int connect_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_ASSERT(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(fz.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    FUZZ_ASSERT(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    return fd;
}

static bool send_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0)
            return false; /* the server closed: it may, on a refusal */
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static bool send_frame(int fd, unsigned type, cs__pk *p)
{
    cs__buf *b = cs__pk_frame(p, type);
    cs__pk_destroy(p);
    FUZZ_ASSERT(b);
    bool ok = send_all(fd, b->data, b->len);
    cs__buf_unref(b);
    return ok;
}

/* Reads until the next whole frame (into rx) or the connection's end. */
static cs_err read_frame(int fd, cs__rx *rx, unsigned *type, cs__body *body, bool *parsed)
{
    *parsed = false;
    for (;;) {
        const uint8_t *b;
        size_t len;
        char m[160];
        cs_err err = cs__rx_frame(rx, type, &b, &len, m, sizeof(m));
        FUZZ_ASSERT(err != CS_INVALID_INPUT); /* the server never sends a bad frame */
        if (err == CS_OK) {
            if (*type != CS__F_SEGMENT) {
                FUZZ_ASSERT(cs__body_parse(body, b, len) == CS_OK);
                *parsed = true;
            }
            cs__rx_consume(rx);
            return CS_OK;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, READ_WAIT_MS) != 1)
            return CS_NETWORK; /* the server did not answer nor close in time */
        uint8_t buf[65536];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            return CS_NOT_FOUND; /* closed */
        FUZZ_ASSERT(cs__rx_feed(rx, buf, (size_t)n) == CS_OK);
    }
}

/* The server's answer to a correct message must be `want`: anything else is a finding, said
 * with what the server said (an ERROR's code and message) or that it closed or stalled. */
static void expect(cs_err got, unsigned type, cs__body *b, bool parsed, unsigned want)
{
    if (got == CS_OK && type == want)
        return;
    cs_str code = {"", 0}, msg = {"", 0};
    if (got == CS_OK && parsed && type == CS__F_ERROR) {
        cs__body_str(b, "code", &code);
        cs__body_str(b, "message", &msg);
    }
    fprintf(stderr, "fuzz_handshake: wanted %s, got %s %s: %.*s: %.*s\n", cs__frame_name(want),
            got == CS_OK          ? "frame"
            : got == CS_NOT_FOUND ? "close"
                                  : "timeout",
            got == CS_OK ? cs__frame_name(type) : "", (int)code.len, code.ptr, (int)msg.len,
            msg.ptr);
    abort();
}

/* A correct HELLO and PROOF (and START at cursor 0 when `start`). False when the server
 * refused or closed. */
static bool authenticate(int fd, cs__rx *rx, bool start)
{
    uint8_t cnonce[CS_NET_NONCE_BYTES];
    randombytes_buf(cnonce, sizeof(cnonce));
    cs__pk p;
    cs__pk_init(&p, 3);
    cs__pk_key(&p, "proto");
    msgpack_pack_array(&p.pk, 2);
    msgpack_pack_uint32(&p.pk, CS_NET_PROTO_VERSION);
    msgpack_pack_uint32(&p.pk, CS_NET_PROTO_VERSION);
    cs__pk_uint(&p, "shop", fz.shop);
    cs__pk_bin(&p, "nonce", cnonce, sizeof(cnonce));
    unsigned type = 0;
    cs__body b;
    bool parsed = false;
    FUZZ_ASSERT(send_frame(fd, CS__F_HELLO, &p));
    cs_err got = read_frame(fd, rx, &type, &b, &parsed);
    expect(got, type, &b, parsed, CS__F_CHALLENGE);
    const uint8_t *snonce;
    uint64_t log_id = 0, proto = 0;
    FUZZ_ASSERT(cs__body_bin(&b, "nonce", CS_NET_NONCE_BYTES, &snonce) &&
                cs__body_uint(&b, "log_id", &log_id) && cs__body_uint(&b, "proto", &proto));
    uint8_t msg[CS__AUTH_MESSAGE_BYTES], proof[CS_AUTH_KEY_BYTES];
    cs__auth_message(msg, fz.shop, cnonce, snonce, log_id, (uint32_t)proto);
    cs__body_free(&b);
    cs_auth_client_proof(&fz.client, msg, sizeof(msg), proof);
    cs__pk_init(&p, 1);
    cs__pk_bin(&p, "proof", proof, sizeof(proof));
    FUZZ_ASSERT(send_frame(fd, CS__F_PROOF, &p));
    /* the right proof is always let in */
    got = read_frame(fd, rx, &type, &b, &parsed);
    expect(got, type, &b, parsed, CS__F_WELCOME);
    cs__body_free(&b);
    if (!start)
        return true;
    cs__pk_init(&p, 2);
    cs__pk_uint(&p, "cursor", 0);
    cs__pk_uint(&p, "chain", 0);
    return send_frame(fd, CS__F_START, &p);
}

static void session(const uint8_t *data, size_t size, unsigned mode)
{
    int fd = connect_server();
    cs__rx rx = {.max_bytes = CS_NET_FRAME_BYTES_MAX};
    bool go = mode == 0 || authenticate(fd, &rx, mode == 2);
    FUZZ_ASSERT(go); /* nothing was sent yet that it could refuse */
    send_all(fd, data, size);
    shutdown(fd, SHUT_WR);
    unsigned type;
    cs__body b;
    bool parsed;
    cs_err err;
    while ((err = read_frame(fd, &rx, &type, &b, &parsed)) == CS_OK)
        if (parsed)
            cs__body_free(&b);
    if (err != CS_NOT_FOUND && getenv("CS_FUZZ_HANG_SLEEP")) { /* time to attach a debugger */
        fprintf(stderr, "fuzz_handshake: no close from the server; pid %d sleeps\n", getpid());
        sleep((unsigned)atoi(getenv("CS_FUZZ_HANG_SLEEP")));
    }
    FUZZ_ASSERT(err == CS_NOT_FOUND); /* closed, not hanging */
    cs__rx_free(&rx);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    session(data + 1, size - 1, data[0] % 3);
    if (++fz.inputs % 64 == 0) /* and it still lets the branch in */
        session((const uint8_t *)"", 0, 1);
    return 0;
}
