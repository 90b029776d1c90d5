/*
 * test_segment.c: segments, the framed ranges of the log the server sends and `log export`
 * writes (SPEC sections 4 and 5, layout in log/segment.c and docs/storage.md). A segment holds
 * the records exactly as stored; its bound stops it early but never empty; any flipped or
 * missing byte is corrupt; a record that does not chain onto what the branch already holds is
 * corrupt; a newer format is a protocol mismatch.
 *
 * Some tests re-seal an altered segment (recompute its checksum, as the layout documents) to
 * show that the per-record checks stand on their own behind the frame's checksum.
 */
#include "log/log.h"
#include "tests/harness.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <xxhash.h>

#define EVENTS 100u

/* ---- helpers ----------------------------------------------------------------------------- */

/* A log of EVENTS events of varied sizes and one reader on it. */
typedef struct fx {
    char *dir;
    cs_log *log;
    cs_log_reader *r;
} fx;

static int pack_key(msgpack_packer *pk, const char *key)
{
    return msgpack_pack_str_with_body(pk, key, strlen(key));
}

static bool append_varied(cs_log *log, size_t count)
{
    char note[600];
    memset(note, 'n', sizeof(note));
    for (size_t i = 0; i < count; i++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        int rc = msgpack_pack_map(&pk, 2) || pack_key(&pk, "i") || msgpack_pack_uint64(&pk, i) ||
                 pack_key(&pk, "note") ||
                 msgpack_pack_str_with_body(&pk, note, (i * 37) % sizeof(note));
        cs_event ev = {.shop = 1,
                       .id = i + 1,
                       .version = 1,
                       .actor = CS_STR("ana"),
                       .kind = CS_STR("put"),
                       .type = CS_STR("service"),
                       .fields = (const uint8_t *)sb.data,
                       .fields_len = sb.size};
        bool ok = rc == 0 && cs_log_append(log, &ev, 1, NULL) == CS_OK;
        msgpack_sbuffer_destroy(&sb);
        if (!ok)
            return false;
    }
    return true;
}

static bool fx_open(fx *f, const char *tag, size_t count)
{
    memset(f, 0, sizeof(*f));
    f->dir = cs_test_tmpdir(tag);
    if (!f->dir || cs_log_open(f->dir, NULL, &f->log) != CS_OK)
        return false;
    /* Batches of one: every event its own commit, as a head office mostly writes. */
    if (!append_varied(f->log, count))
        return false;
    return cs_log_reader_open(f->log, &f->r) == CS_OK;
}

static void fx_close(fx *f)
{
    cs_log_reader_close(f->r);
    cs_log_close(f->log);
    if (f->dir)
        cs_test_rmtree(f->dir);
    free(f->dir);
    memset(f, 0, sizeof(*f));
}

/* Recomputes the segment checksum after an edit (layout: bytes 32..40 = XXH3_64bits_withSeed(
 * body, body_bytes, XXH3_64bits(header[0..32)))), so only the deeper checks can catch it. */
static void reseal(uint8_t *seg, size_t len)
{
    uint64_t seed = XXH3_64bits(seg, 32);
    cs_be64_put(seg + 32, XXH3_64bits_withSeed(seg + CS_SEGMENT_HEADER_BYTES,
                                               len - CS_SEGMENT_HEADER_BYTES, seed));
}

/* Every record of v equals the log's record at the same sequence, from v->first to v->last,
 * and then the segment ends. */
static bool records_match_log(cs_segment_view *v, cs_log_reader *r)
{
    cs_log_record got, want;
    for (uint64_t seq = v->first; seq <= v->last; seq++) {
        if (cs_segment_next(v, &got) != CS_OK || cs_log_reader_get(r, seq, &want) != CS_OK)
            return false;
        if (got.seq != seq || got.checksum != want.checksum || got.chain != want.chain ||
            got.event_len != want.event_len || memcmp(got.event, want.event, got.event_len) != 0)
            return false;
    }
    return cs_segment_next(v, &got) == CS_NOT_FOUND;
}

/* The encoded size of records first..last: header, then per record 4 + 16 + event. */
static size_t segment_bytes(cs_log_reader *r, uint64_t first, uint64_t last)
{
    size_t n = CS_SEGMENT_HEADER_BYTES;
    for (uint64_t seq = first; seq <= last; seq++) {
        cs_log_record rec;
        if (cs_log_reader_get(r, seq, &rec) != CS_OK)
            return 0;
        n += 4 + CS_RECORD_HEADER_BYTES + rec.event_len;
    }
    return n;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* SPEC 4, 5: a segment carries its range and the records exactly as the log stores them, each
 * with its checksum and chain; the first chains onto the record before the range. */
static void test_segment_round_trips_log_records(void)
{
    fx f;
    CHECK(fx_open(&f, "segrt", EVENTS));
    uint8_t *seg = NULL;
    size_t len = 0;
    uint64_t last = 0;
    cs_segment_view v;
    CHECK_OK(cs_segment_encode(f.r, 1, EVENTS, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    CHECK(last == EVENTS);
    CHECK(len == segment_bytes(f.r, 1, EVENTS));
    CHECK_OK(cs_segment_open(seg, len, &v));
    CHECK(v.first == 1 && v.last == EVENTS && v.count == EVENTS);
    CHECK(records_match_log(&v, f.r));
    free(seg);

    /* a middle range, chained onto the record before it as a branch holding 39 would */
    cs_log_record prev;
    CHECK_OK(cs_segment_encode(f.r, 40, 60, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    CHECK(last == 60);
    CHECK_OK(cs_segment_open(seg, len, &v));
    CHECK(v.first == 40 && v.last == 60 && v.count == 21);
    CHECK_OK(cs_log_reader_get(f.r, 39, &prev));
    v.prev_chain = prev.chain;
    v.prev_chain_known = true;
    CHECK(records_match_log(&v, f.r));
    free(seg);

    /* last_max past the head: the segment ends at the head */
    CHECK_OK(cs_segment_encode(f.r, 95, UINT64_MAX, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    CHECK(last == EVENTS);
    CHECK_OK(cs_segment_open(seg, len, &v));
    CHECK(records_match_log(&v, f.r));
    free(seg);
    fx_close(&f);
}

/* log.h (cs_segment_encode): a range that starts past the head is not_found; a range that is
 * empty or starts at 0 is invalid_input; outputs stay untouched. */
static void test_segment_encode_refuses_empty_or_missing_range(void)
{
    fx f;
    CHECK(fx_open(&f, "segrange", 10));
    static uint8_t sentinel;
    uint8_t *seg = &sentinel; /* outputs must come back untouched */
    size_t len = 4242;
    uint64_t last = 4242;
    CHECK(cs_segment_encode(f.r, 11, 20, CS_SEGMENT_BYTES_MAX, &seg, &len, &last) == CS_NOT_FOUND);
    CHECK(cs_segment_encode(f.r, 500, 600, CS_SEGMENT_BYTES_MAX, &seg, &len, &last) ==
          CS_NOT_FOUND);
    CHECK(cs_segment_encode(f.r, 0, 5, CS_SEGMENT_BYTES_MAX, &seg, &len, &last) ==
          CS_INVALID_INPUT);
    CHECK(cs_segment_encode(f.r, 6, 5, CS_SEGMENT_BYTES_MAX, &seg, &len, &last) ==
          CS_INVALID_INPUT);
    CHECK(seg == &sentinel && len == 4242 && last == 4242);
    fx_close(&f);
}

/* SPEC 5 (a segment is the unit in a bounded send queue): bytes_max stops the segment early,
 * never above the bound and never empty; consecutive segments cover the range in order, each
 * chaining onto the one before. Driven at, below and above the exact sizes. */
static void test_segment_stops_at_bytes_max(void)
{
    fx f;
    CHECK(fx_open(&f, "segbound", EVENTS));
    uint8_t *seg = NULL;
    size_t len = 0, full = segment_bytes(f.r, 1, EVENTS);
    uint64_t last = 0;
    cs_segment_view v;

    /* Exactly the whole range fits; one byte less drops the last record. */
    CHECK_OK(cs_segment_encode(f.r, 1, EVENTS, full, &seg, &len, &last));
    CHECK(last == EVENTS && len == full);
    free(seg);
    CHECK_OK(cs_segment_encode(f.r, 1, EVENTS, full - 1, &seg, &len, &last));
    CHECK(last == EVENTS - 1 && len == segment_bytes(f.r, 1, EVENTS - 1));
    free(seg);

    /* Exactly one record fits; one byte less is refused, never an empty segment. */
    size_t one = segment_bytes(f.r, 1, 1);
    CHECK_OK(cs_segment_encode(f.r, 1, EVENTS, one, &seg, &len, &last));
    CHECK(last == 1 && len == one);
    CHECK_OK(cs_segment_open(seg, len, &v));
    CHECK(v.count == 1);
    free(seg);
    seg = NULL;
    CHECK(cs_segment_encode(f.r, 1, EVENTS, one - 1, &seg, &len, &last) == CS_INVALID_INPUT);
    CHECK(seg == NULL);

    /* A third of the range per segment: several segments, together exactly the log. */
    size_t bound = full / 3;
    uint64_t next = 1, prev_chain = 0;
    int segments = 0;
    while (next <= EVENTS && segments < 100) {
        CHECK_OK(cs_segment_encode(f.r, next, EVENTS, bound, &seg, &len, &last));
        CHECK(len <= bound);
        CHECK(last >= next);
        if (segments == 0)
            CHECK(last < EVENTS); /* stopped early */
        CHECK_OK(cs_segment_open(seg, len, &v));
        CHECK(v.first == next && v.last == last);
        v.prev_chain = prev_chain;
        v.prev_chain_known = true;
        CHECK(records_match_log(&v, f.r));
        prev_chain = v.prev_chain; /* the chain of the segment's last record */
        free(seg);
        seg = NULL;
        next = last + 1;
        segments++;
    }
    CHECK(next == EVENTS + 1);
    CHECK(segments >= 3);
    fx_close(&f);
}

/* log.h (framing): cs_segment_size reads the whole segment's size from its header alone, and
 * refuses fewer than CS_SEGMENT_HEADER_BYTES or a header that is not a segment's. */
static void test_segment_size_reads_full_size_from_header(void)
{
    fx f;
    CHECK(fx_open(&f, "segsize", 30));
    uint8_t *seg = NULL;
    size_t len = 0, size = 0;
    uint64_t last = 0;
    CHECK_OK(cs_segment_encode(f.r, 3, 30, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    CHECK_OK(cs_segment_size(seg, CS_SEGMENT_HEADER_BYTES, &size));
    CHECK(size == len);
    CHECK_OK(cs_segment_size(seg, len, &size));
    CHECK(size == len);
    size = 4242;
    CHECK(cs_segment_size(seg, CS_SEGMENT_HEADER_BYTES - 1, &size) == CS_CORRUPT);
    seg[0] ^= 0x20; /* magic */
    CHECK(cs_segment_size(seg, len, &size) == CS_CORRUPT);
    seg[0] ^= 0x20;
    cs_be32_put(seg + 28, CS_SEGMENT_BYTES_MAX); /* body bigger than any segment may be */
    CHECK(cs_segment_size(seg, len, &size) == CS_CORRUPT);
    CHECK(size == 4242);
    free(seg);
    fx_close(&f);
}

/* SPEC 4, 5 (a segment carries an XXH3 checksum): flipping any bit of a segment makes
 * cs_segment_open refuse it: corrupt, or protocol_mismatch when the bit is in the version. */
static void test_segment_open_refuses_flipped_byte(void)
{
    fx f;
    CHECK(fx_open(&f, "segflip", 6));
    uint8_t *seg = NULL;
    size_t len = 0;
    uint64_t last = 0;
    cs_segment_view v;
    CHECK_OK(cs_segment_encode(f.r, 1, 6, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    CHECK(len > 200);
    for (size_t at = 0; at < len; at++) {
        for (int bit = 0; bit < 8; bit++) {
            seg[at] ^= (uint8_t)(1u << bit);
            cs_err err = cs_segment_open(seg, len, &v);
            seg[at] ^= (uint8_t)(1u << bit);
            /* docs/storage.md: a version other than 1, or any flag, is protocol_mismatch */
            bool ok = err == (at >= 4 && at <= 7 ? CS_PROTOCOL_MISMATCH : CS_CORRUPT);
            if (!ok)
                fprintf(stderr, "  byte %zu bit %d: %s\n", at, bit, cs_err_name(err));
            CHECK(ok);
        }
    }
    CHECK_OK(cs_segment_open(seg, len, &v)); /* every flip was undone */
    free(seg);
    fx_close(&f);
}

/* log.h (cs_segment_open: len must be exactly the segment's size): every truncation, and one
 * byte too many, is corrupt. */
static void test_segment_open_refuses_truncated_segment(void)
{
    fx f;
    CHECK(fx_open(&f, "segtrunc", 6));
    uint8_t *seg = NULL;
    size_t len = 0;
    uint64_t last = 0;
    cs_segment_view v;
    CHECK_OK(cs_segment_encode(f.r, 1, 6, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    for (size_t cut = 0; cut < len; cut++) {
        cs_err err = cs_segment_open(seg, cut, &v);
        if (err != CS_CORRUPT)
            fprintf(stderr, "  cut to %zu: %s\n", cut, cs_err_name(err));
        CHECK(err == CS_CORRUPT);
    }
    uint8_t *longer = malloc(len + 1);
    CHECK(longer);
    memcpy(longer, seg, len);
    longer[len] = 0;
    CHECK(cs_segment_open(longer, len + 1, &v) == CS_CORRUPT);
    free(longer);
    free(seg);
    fx_close(&f);
}

/* SPEC 4 (hash chain), 5: a segment whose first record does not chain onto what the branch
 * already holds (prev_chain) is corrupt at that record; the right prev_chain verifies. */
static void test_segment_refuses_record_not_chaining_onto_prev_chain(void)
{
    fx f;
    CHECK(fx_open(&f, "segchain", 30));
    uint8_t *seg = NULL;
    size_t len = 0;
    uint64_t last = 0;
    cs_segment_view v;
    cs_log_record prev, rec;
    CHECK_OK(cs_segment_encode(f.r, 11, 20, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    CHECK_OK(cs_log_reader_get(f.r, 10, &prev));

    CHECK_OK(cs_segment_open(seg, len, &v));
    v.prev_chain = prev.chain ^ 1;
    v.prev_chain_known = true;
    CHECK(cs_segment_next(&v, &rec) == CS_CORRUPT);
    CHECK(strstr(v.corrupt_at, "hash chain [segment.c:") == v.corrupt_at); /* names its check */

    CHECK_OK(cs_log_reader_get(f.r, 9, &prev)); /* a branch one record behind */
    CHECK_OK(cs_segment_open(seg, len, &v));
    v.prev_chain = prev.chain;
    v.prev_chain_known = true;
    CHECK(cs_segment_next(&v, &rec) == CS_CORRUPT);

    CHECK_OK(cs_log_reader_get(f.r, 10, &prev));
    CHECK_OK(cs_segment_open(seg, len, &v));
    v.prev_chain = prev.chain;
    v.prev_chain_known = true;
    CHECK(records_match_log(&v, f.r));
    free(seg);
    fx_close(&f);
}

/* SPEC 4: behind a valid frame, each record is still verified on its own: a changed event byte
 * fails its checksum, a changed chain breaks the chain, and a header whose range disagrees with
 * the body or with itself is corrupt. */
static void test_segment_next_verifies_records_behind_a_valid_frame(void)
{
    fx f;
    CHECK(fx_open(&f, "segrec", 10));
    uint8_t *seg = NULL;
    size_t len = 0;
    uint64_t last = 0;
    cs_segment_view v;
    cs_log_record rec;
    CHECK_OK(cs_segment_encode(f.r, 1, 10, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    size_t second = CS_SEGMENT_HEADER_BYTES + 4 + cs_be32_get(seg + CS_SEGMENT_HEADER_BYTES);

    /* the second record's last event byte */
    size_t at = second + 4 + cs_be32_get(seg + second) - 1;
    seg[at] ^= 0x01;
    reseal(seg, len);
    CHECK_OK(cs_segment_open(seg, len, &v));
    CHECK_OK(cs_segment_next(&v, &rec));
    CHECK(cs_segment_next(&v, &rec) == CS_CORRUPT);
    seg[at] ^= 0x01;

    /* the second record's chain (not covered by its checksum) no longer follows the first */
    seg[second + 4 + 8] ^= 0x01;
    reseal(seg, len);
    CHECK_OK(cs_segment_open(seg, len, &v));
    CHECK_OK(cs_segment_next(&v, &rec));
    CHECK(cs_segment_next(&v, &rec) == CS_CORRUPT);
    seg[second + 4 + 8] ^= 0x01;

    /* the first record's chain: taken on trust without prev_chain, but the second record does
     * not follow it */
    size_t first_chain = CS_SEGMENT_HEADER_BYTES + 4 + 8;
    seg[first_chain] ^= 0x01;
    reseal(seg, len);
    CHECK_OK(cs_segment_open(seg, len, &v));
    CHECK_OK(cs_segment_next(&v, &rec));
    CHECK(cs_segment_next(&v, &rec) == CS_CORRUPT);
    seg[first_chain] ^= 0x01;

    /* a header claiming 11 records (first 1, last 11) over a body of 10 */
    cs_be64_put(seg + 16, 11);
    cs_be32_put(seg + 24, 11);
    reseal(seg, len);
    CHECK_OK(cs_segment_open(seg, len, &v));
    for (int i = 0; i < 10; i++)
        CHECK_OK(cs_segment_next(&v, &rec));
    CHECK(cs_segment_next(&v, &rec) == CS_CORRUPT);

    /* first, last and count that disagree with each other */
    cs_be64_put(seg + 16, 10);
    reseal(seg, len);
    CHECK(cs_segment_open(seg, len, &v) == CS_CORRUPT);
    CHECK(strstr(v.corrupt_at, "range [segment.c:") == v.corrupt_at);
    cs_be64_put(seg + 8, 0);
    cs_be32_put(seg + 24, 10);
    reseal(seg, len);
    CHECK(cs_segment_open(seg, len, &v) == CS_CORRUPT);
    free(seg);
    fx_close(&f);
}

/* SPEC 5 (a protocol version mismatch is refused with a clear reason): a segment of a newer
 * format is protocol_mismatch, from cs_segment_size (which frames before any checksum can be
 * checked) and cs_segment_open alike, whether or not its checksum matches. */
static void test_segment_newer_version_is_protocol_mismatch(void)
{
    fx f;
    CHECK(fx_open(&f, "segversion", 5));
    uint8_t *seg = NULL;
    size_t len = 0, size = 4242;
    uint64_t last = 0;
    cs_segment_view v;
    CHECK_OK(cs_segment_encode(f.r, 1, 5, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    CHECK(seg[4] == 0 && seg[5] == 1);
    seg[5] = 2;
    CHECK(cs_segment_size(seg, CS_SEGMENT_HEADER_BYTES, &size) == CS_PROTOCOL_MISMATCH);
    CHECK(size == 4242);
    CHECK(cs_segment_open(seg, len, &v) == CS_PROTOCOL_MISMATCH);
    reseal(seg, len);
    CHECK(cs_segment_open(seg, len, &v) == CS_PROTOCOL_MISMATCH);
    seg[4] = 1, seg[5] = 1; /* 257 */
    CHECK(cs_segment_open(seg, len, &v) == CS_PROTOCOL_MISMATCH);
    free(seg);
    fx_close(&f);
}

/* SPEC 5 / docs/storage.md: no segment flag is defined, so one set (a newer writer's) is refused
 * as protocol_mismatch even when the checksum matches. */
static void test_segment_unknown_flags_are_protocol_mismatch(void)
{
    fx f;
    CHECK(fx_open(&f, "segflags", 3));
    uint8_t *seg = NULL;
    size_t len = 0, size = 4242;
    uint64_t last = 0;
    cs_segment_view v;
    CHECK_OK(cs_segment_encode(f.r, 1, 3, CS_SEGMENT_BYTES_MAX, &seg, &len, &last));
    CHECK(seg[6] == 0 && seg[7] == 0);
    seg[7] = 1;
    reseal(seg, len);
    CHECK(cs_segment_size(seg, CS_SEGMENT_HEADER_BYTES, &size) == CS_PROTOCOL_MISMATCH);
    CHECK(cs_segment_open(seg, len, &v) == CS_PROTOCOL_MISMATCH);
    seg[7] = 0;
    reseal(seg, len);
    CHECK_OK(cs_segment_open(seg, len, &v));
    free(seg);
    fx_close(&f);
}

int main(void)
{
    RUN(test_segment_round_trips_log_records);
    RUN(test_segment_encode_refuses_empty_or_missing_range);
    RUN(test_segment_stops_at_bytes_max);
    RUN(test_segment_size_reads_full_size_from_header);
    RUN(test_segment_open_refuses_flipped_byte);
    RUN(test_segment_open_refuses_truncated_segment);
    RUN(test_segment_refuses_record_not_chaining_onto_prev_chain);
    RUN(test_segment_next_verifies_records_behind_a_valid_frame);
    RUN(test_segment_newer_version_is_protocol_mismatch);
    RUN(test_segment_unknown_flags_are_protocol_mismatch);
    int rc = cs_test_finish();
    /* A failed test leaks what it held when its CHECK returned: skip the leak report, which
     * would only bury the failure. A passing run still exits normally and is leak-checked. */
    if (rc != 0) {
        fflush(NULL);
        _exit(rc);
    }
    return rc;
}
