/*
 * fuzz_frame.c: libFuzzer target for the frame decoder (net/frame.c): a byte stream cut into
 * reads of arbitrary sizes is assembled into frames (cs__rx), each body is parsed as a control
 * body (cs__body_parse) and read with the typed lookups the server and the node use, and a
 * SEGMENT body is opened as a segment (log/segment.c), as a node does.
 *
 * Input: byte 0 seeds the read sizes; byte 1 picks the frame limit (a control connection's or a
 * streaming one's); the rest is the stream. Properties: a frame handed out lies inside the
 * buffer and within the limit; the buffer never grows past limit + 4 plus one read; a frame
 * over the limit is refused before its bytes are buffered.
 */
#include "net/net_int.h"
#include "tests/fuzz/fuzz.h"

static void read_body(unsigned type, const uint8_t *body, size_t len)
{
    if (type == CS__F_SEGMENT) {
        /* SEGMENT: a bin header then the segment (docs/protocol.md). */
        if (len < 5 || body[0] != 0xc6)
            return;
        cs_segment_view v;
        if (cs_segment_open(body + 5, len - 5, &v) != CS_OK)
            return;
        cs_log_record rec;
        while (cs_segment_next(&v, &rec) == CS_OK)
            FUZZ_ASSERT(rec.event >= body && rec.event + rec.event_len <= body + len);
        return;
    }
    cs__body b;
    cs_err err = cs__body_parse(&b, body, len);
    if (err == CS_OK) {
        uint64_t u;
        cs_str s;
        const uint8_t *bin;
        static const char *const keys[] = {"proto", "shop",   "nonce",   "proof", "cursor",
                                           "chain", "code",   "message", "mode",  "req",
                                           "head",  "log_id", "salt"};
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
            cs__body_uint(&b, keys[i], &u);
            if (cs__body_str(&b, keys[i], &s))
                FUZZ_ASSERT(s.ptr >= (const char *)body &&
                            s.ptr + s.len <= (const char *)body + len);
            if (cs__body_bin(&b, keys[i], 32, &bin))
                FUZZ_ASSERT(bin >= body && bin + 32 <= body + len);
        }
    }
    cs__body_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t seed = data[0] * 2654435761u + 1;
    cs__rx rx = {.max_bytes = (data[1] & 1) ? CS_NET_FRAME_BYTES_MAX
                                            : (data[1] & 2 ? 64u : CS_NET_CONTROL_FRAME_BYTES_MAX)};
    data += 2;
    size -= 2;
    size_t pos = 0;
    while (pos < size) {
        seed = seed * 1103515245u + 12345u;
        size_t n = 1 + (seed >> 16) % 97;
        if (n > size - pos)
            n = size - pos;
        FUZZ_ASSERT(cs__rx_feed(&rx, data + pos, n) == CS_OK);
        pos += n;
        FUZZ_ASSERT(rx.len <= rx.max_bytes + 4 + 97);
        unsigned type;
        const uint8_t *body;
        size_t len;
        char msg[160];
        cs_err err;
        while ((err = cs__rx_frame(&rx, &type, &body, &len, msg, sizeof(msg))) == CS_OK) {
            FUZZ_ASSERT(len + 1 <= rx.max_bytes);
            FUZZ_ASSERT(body >= rx.buf + rx.start + 5 && body + len <= rx.buf + rx.start + rx.len);
            read_body(type, body, len);
            cs__rx_consume(&rx);
        }
        if (err == CS_INVALID_INPUT) {
            FUZZ_ASSERT(msg[0] != '\0'); /* the connection is closed with a sentence */
            break;
        }
        FUZZ_ASSERT(err == CS_NOT_FOUND);
    }
    cs__rx_free(&rx);
    return 0;
}
