/*
 * frame.c: the frame codec of docs/protocol.md: shared reference-counted buffers, building a
 * frame from a packed msgpack body, assembling frames from a byte stream with the size limit
 * checked before anything is allocated, typed reads of a control body, and the body of a write's
 * answer (WRITE_RESULT over TCP, the reply over NATS), packed and read in one place.
 *
 * Invariants of cs__rx: len <= cap <= max_bytes + 4; a frame is handed out only when all of its
 * 4 + length bytes are in buf; nothing is allocated for a frame whose length is over the limit.
 */
#include "net/net_int.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

const char *cs__frame_name(unsigned type)
{
    switch (type) {
    case CS__F_HELLO:
        return "HELLO";
    case CS__F_CHALLENGE:
        return "CHALLENGE";
    case CS__F_PROOF:
        return "PROOF";
    case CS__F_WELCOME:
        return "WELCOME";
    case CS__F_START:
        return "START";
    case CS__F_CAUGHT_UP:
        return "CAUGHT_UP";
    case CS__F_SEGMENT:
        return "SEGMENT";
    case CS__F_ACK:
        return "ACK";
    case CS__F_PING:
        return "PING";
    case CS__F_WRITE:
        return "WRITE";
    case CS__F_WRITE_RESULT:
        return "WRITE_RESULT";
    case CS__F_SNAPSHOT:
        return "SNAPSHOT";
    case CS__F_SNAPSHOT_CHUNK:
        return "SNAPSHOT_CHUNK";
    case CS__F_SNAPSHOT_END:
        return "SNAPSHOT_END";
    case CS__F_ERROR:
        return "ERROR";
    default:
        return "unknown";
    }
}

/* ---- shared buffers ---------------------------------------------------------------------- */

cs__buf *cs__buf_new(size_t len)
{
    cs__buf *b = malloc(sizeof(*b) + len);
    if (!b)
        return NULL;
    b->refs = 1;
    b->len = len;
    b->first = b->last = 0;
    return b;
}

void cs__buf_ref(cs__buf *b)
{
    cs_assert(b->refs > 0);
    b->refs++;
}

void cs__buf_unref(cs__buf *b)
{
    if (!b)
        return;
    cs_assert(b->refs > 0);
    if (--b->refs == 0)
        free(b);
}

cs__buf *cs__frame_from_msgpack(unsigned type, const msgpack_sbuffer *sb)
{
    cs_assert(type != CS__F_SEGMENT);
    cs_assert(sb->size + 1 <= CS_NET_CONTROL_FRAME_BYTES_MAX);
    cs__buf *b = cs__buf_new(4 + 1 + sb->size);
    if (!b)
        return NULL;
    cs_be32_put(b->data, (uint32_t)(1 + sb->size));
    b->data[4] = (uint8_t)type;
    memcpy(b->data + 5, sb->data, sb->size);
    return b;
}

/* ---- packing ----------------------------------------------------------------------------- */

void cs__pk_init(cs__pk *p, unsigned map_size)
{
    msgpack_sbuffer_init(&p->sb);
    msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&p->pk, map_size);
}

void cs__pk_destroy(cs__pk *p)
{
    msgpack_sbuffer_destroy(&p->sb);
}

void cs__pk_key(cs__pk *p, const char *key)
{
    msgpack_pack_str_with_body(&p->pk, key, strlen(key));
}

/* A str holds UTF-8 (the receiver's cs_msgpack_check refuses anything else): a message cut by
 * snprintf inside a character, or text from a peer, is packed up to its last whole character. */
void cs__pk_str(cs__pk *p, const char *key, const char *val)
{
    cs__pk_key(p, key);
    msgpack_pack_str_with_body(&p->pk, val, cs_utf8_prefix(val, strlen(val)));
}

void cs__pk_uint(cs__pk *p, const char *key, uint64_t val)
{
    cs__pk_key(p, key);
    msgpack_pack_uint64(&p->pk, val);
}

void cs__pk_bin(cs__pk *p, const char *key, const uint8_t *val, size_t len)
{
    cs__pk_key(p, key);
    msgpack_pack_bin_with_body(&p->pk, val, len);
}

/* msgpack_sbuffer_write returns -1 and leaves data NULL-or-short when realloc fails; a short
 * buffer would be a silently truncated frame, so a failed pack is detected by re-checking that
 * the buffer parses as one value. */
cs__buf *cs__pk_frame(cs__pk *p, unsigned type)
{
    size_t used = 0;
    if (!p->sb.data ||
        cs_msgpack_check((const uint8_t *)p->sb.data, p->sb.size, CS_MSGPACK_DEPTH_MAX, &used) !=
            CS_OK ||
        used != p->sb.size)
        return NULL;
    return cs__frame_from_msgpack(type, &p->sb);
}

cs__buf *cs__frame_error(cs_err code, const char *message)
{
    cs__pk p;
    cs__pk_init(&p, 2);
    cs__pk_str(&p, "code", cs_err_name(code));
    char m[512];
    snprintf(m, sizeof(m), "%s", message ? message : "");
    cs__pk_str(&p, "message", m);
    cs__buf *b = cs__pk_frame(&p, CS__F_ERROR);
    cs__pk_destroy(&p);
    return b;
}

/* ---- receiving --------------------------------------------------------------------------- */

void cs__rx_free(cs__rx *rx)
{
    free(rx->buf);
    rx->buf = NULL;
    rx->start = rx->len = rx->cap = 0;
}

/* Room for n more bytes after the unread ones: the unread bytes move to the front first (they
 * are at most one frame and a read), and the buffer grows only to what is needed, doubling. */
static cs_err rx_room(cs__rx *rx, size_t n)
{
    if (rx->start + rx->len + n <= rx->cap)
        return CS_OK;
    if (rx->start > 0) {
        memmove(rx->buf, rx->buf + rx->start, rx->len);
        rx->start = 0;
        if (rx->len + n <= rx->cap)
            return CS_OK;
    }
    size_t cap = rx->cap ? rx->cap : 256;
    while (cap < rx->len + n)
        cap *= 2;
    uint8_t *nb = realloc(rx->buf, cap);
    if (!nb)
        return CS_NO_MEMORY;
    rx->buf = nb;
    rx->cap = cap;
    return CS_OK;
}

cs_err cs__rx_feed(cs__rx *rx, const uint8_t *p, size_t n)
{
    cs_err err = rx_room(rx, n);
    if (err != CS_OK)
        return err;
    memcpy(rx->buf + rx->start + rx->len, p, n);
    rx->len += n;
    return CS_OK;
}

cs_err cs__rx_space(cs__rx *rx, size_t want, uint8_t **p, size_t *avail)
{
    cs_err err = rx_room(rx, want);
    if (err != CS_OK)
        return err;
    *p = rx->buf + rx->start + rx->len;
    *avail = rx->cap - rx->start - rx->len;
    return CS_OK;
}

void cs__rx_commit(cs__rx *rx, size_t n)
{
    cs_assert(rx->start + rx->len + n <= rx->cap);
    rx->len += n;
}

cs_err cs__rx_frame_at(cs__rx *rx, size_t off, unsigned *type, const uint8_t **body,
                       size_t *body_len, char *msg, size_t msg_len)
{
    if (rx->len < off + 4)
        return CS_NOT_FOUND;
    const uint8_t *p = rx->buf + rx->start + off;
    uint32_t flen = cs_be32_get(p);
    if (flen == 0 || flen > rx->max_bytes) {
        snprintf(msg, msg_len, "a frame of %u bytes (the limit is %zu)", flen, rx->max_bytes);
        return CS_INVALID_INPUT;
    }
    if (rx->len < off + 4 + (size_t)flen)
        return CS_NOT_FOUND;
    *type = p[4];
    *body = p + 5;
    *body_len = flen - 1;
    return CS_OK;
}

cs_err cs__rx_frame(cs__rx *rx, unsigned *type, const uint8_t **body, size_t *body_len, char *msg,
                    size_t msg_len)
{
    return cs__rx_frame_at(rx, 0, type, body, body_len, msg, msg_len);
}

/* Consuming moves no bytes (a read buffer of many frames is not shifted once per frame); an
 * emptied buffer starts again at its front, and one grown past keep_bytes for a big frame is
 * given back, so an idle connection keeps no large buffer. */
void cs__rx_consume_bytes(cs__rx *rx, size_t n)
{
    cs_assert(n <= rx->len);
    rx->start += n;
    rx->len -= n;
    if (rx->len > 0)
        return;
    rx->start = 0;
    if (rx->cap > (rx->keep_bytes ? rx->keep_bytes : CS__RX_KEEP_BYTES)) {
        free(rx->buf);
        rx->buf = NULL;
        rx->cap = 0;
    }
}

void cs__rx_consume(cs__rx *rx)
{
    cs_assert(rx->len >= 4);
    cs__rx_consume_bytes(rx, 4 + (size_t)cs_be32_get(rx->buf + rx->start));
}

/* ---- control bodies ---------------------------------------------------------------------- */

cs_err cs__body_parse(cs__body *b, const uint8_t *p, size_t n)
{
    size_t used = 0;
    b->obj.type = MSGPACK_OBJECT_NIL;
    b->zoned = msgpack_zone_init(&b->zone, 512);
    if (!b->zoned) /* callers free the body on every path: cs__body_free skips the zone */
        return CS_NO_MEMORY;
    if (cs_msgpack_check(p, n, CS_MSGPACK_DEPTH_MAX, &used) != CS_OK || used != n)
        return CS_INVALID_INPUT;
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack((const char *)p, n, &off, &b->zone, &b->obj);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
        return CS_NO_MEMORY;
    if (rc != MSGPACK_UNPACK_SUCCESS || b->obj.type != MSGPACK_OBJECT_MAP)
        return CS_INVALID_INPUT;
    return CS_OK;
}

void cs__body_free(cs__body *b)
{
    if (b->zoned)
        msgpack_zone_destroy(&b->zone);
    b->zoned = false;
}

const msgpack_object *cs__body_get(const cs__body *b, const char *key)
{
    if (b->obj.type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < b->obj.via.map.size; i++) {
        const msgpack_object *k = &b->obj.via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &b->obj.via.map.ptr[i].val;
    }
    return NULL;
}

bool cs__body_uint(const cs__body *b, const char *key, uint64_t *out)
{
    const msgpack_object *o = cs__body_get(b, key);
    if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *out = o->via.u64;
    return true;
}

bool cs__body_str(const cs__body *b, const char *key, cs_str *out)
{
    const msgpack_object *o = cs__body_get(b, key);
    if (!o || o->type != MSGPACK_OBJECT_STR)
        return false;
    *out = (cs_str){o->via.str.ptr, o->via.str.size};
    return true;
}

bool cs__body_bin(const cs__body *b, const char *key, size_t len, const uint8_t **out)
{
    const msgpack_object *o = cs__body_get(b, key);
    if (!o || o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != len)
        return false;
    *out = (const uint8_t *)o->via.bin.ptr;
    return true;
}

/* ---- a write's answer (docs/protocol.md, WRITE_RESULT; over NATS, the reply) ------------- */

void cs__pk_write_answer(cs__pk *p, const uint8_t *req, const cs_remote_answer *ans)
{
    cs__pk_init(p, 6);
    cs__pk_bin(p, "req", req, CS_REQUEST_ID_BYTES);
    cs__pk_str(p, "code", cs_err_name(ans->code));
    cs__pk_str(p, "message", ans->message);
    cs__pk_uint(p, "id", ans->id);
    cs__pk_uint(p, "version", ans->version);
    cs__pk_uint(p, "seq", ans->seq);
}

bool cs__body_write_answer(const cs__body *b, const uint8_t **req, cs_remote_answer *ans)
{
    cs_str code, msg = {"", 0};
    memset(ans, 0, sizeof(*ans));
    if (!cs__body_bin(b, "req", CS_REQUEST_ID_BYTES, req) || !cs__body_str(b, "code", &code) ||
        !cs__body_uint(b, "id", &ans->id) || !cs__body_uint(b, "version", &ans->version) ||
        !cs__body_uint(b, "seq", &ans->seq))
        return false;
    cs__body_str(b, "message", &msg); /* optional: none */
    ans->code = cs_err_from_name(code.ptr, code.len);
    if (ans->code == CS_ERR_COUNT)
        ans->code = CS_INVALID_INPUT; /* a code this version does not know */
    snprintf(ans->message, sizeof(ans->message), "%.*s", (int)msg.len, msg.ptr);
    return true;
}

/* ---- helpers ----------------------------------------------------------------------------- */

uint64_t cs__net_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void cs__net_vlogf(FILE *out, const char *who, const char *fmt, va_list ap)
{
    char when[32];
    time_t t = time(NULL);
    struct tm tm;
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    fprintf(out, "%s %s: ", when, who);
    vfprintf(out, fmt, ap);
    fputc('\n', out);
    fflush(out);
}

void cs__signals_unblock(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

int cs__dir_lock(const char *dir, const char *name, int how)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (flock(fd, how | LOCK_NB) != 0) {
        close(fd);
        return -2;
    }
    return fd;
}

cs_err cs__parse_addr(const char *hostport, struct sockaddr_storage *out)
{
    const char *colon = hostport ? strrchr(hostport, ':') : NULL;
    if (!colon || colon == hostport || strlen(colon + 1) == 0 || strlen(colon + 1) > 5)
        return CS_INVALID_INPUT;
    char host[256];
    size_t hl = (size_t)(colon - hostport);
    if (hl >= sizeof(host))
        return CS_INVALID_INPUT;
    memcpy(host, hostport, hl);
    host[hl] = '\0';
    if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') { /* [::1]:7000 */
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return CS_INVALID_INPUT;
    memset(out, 0, sizeof(*out));
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) == 0)
        return CS_OK;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) == 0)
        return CS_OK;
    /* A name (localhost): resolved once, synchronously, before the loop runs. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return CS_INVALID_INPUT;
    memcpy(out, res->ai_addr, res->ai_addrlen);
    ((struct sockaddr_in *)out)->sin_port = htons((uint16_t)port); /* same offset in v6 */
    freeaddrinfo(res);
    return CS_OK;
}
