/*
 * fuzz_segment.c: libFuzzer target for the segment decoder (log/segment.c) and `branch import`
 * (projections/transfer.c, cs_branch_import_file): what a branch does with a file someone hands
 * it, or with what a head office streams.
 *
 * Input: byte 0 is a mode, bytes 1-8 a shop id (big-endian), the rest is the file. Mode bit 0:
 * first recompute every checksum and the hash chain (as a hostile writer who knows the format
 * would), so that mutations reach the event decoder and the projection instead of stopping at a
 * checksum. Bit 1: also import the file into a fresh branch directory bound to that shop (the
 * seeds name the branch of their network, or its head office). Properties: the decoder hands
 * out no more
 * records than the header counts, each inside the buffer at the next sequence; an import either
 * succeeds or fails with one of its documented codes and a sentence, and a refused import leaves
 * the directory's state as the segments applied before it left it.
 */
#include "projections/projection.h"
#include "tests/fuzz/fuzz.h"

#include <xxhash.h>

static void decode_all(const uint8_t *data, size_t size)
{
    size_t off = 0;
    while (off < size) {
        size_t seg_size;
        if (cs_segment_size(data + off, size - off, &seg_size) != CS_OK || seg_size > size - off)
            return;
        cs_segment_view v = {.corrupt_at = NULL};
        cs_err err = cs_segment_open(data + off, seg_size, &v);
        if (err != CS_OK) {
            FUZZ_ASSERT(err == CS_PROTOCOL_MISMATCH || (v.corrupt_at && v.corrupt_at[0]));
            return;
        }
        uint64_t n = 0;
        cs_log_record rec;
        while ((err = cs_segment_next(&v, &rec)) == CS_OK) {
            FUZZ_ASSERT(rec.seq == v.first + n);
            FUZZ_ASSERT(rec.event > data + off &&
                        rec.event + rec.event_len <= data + off + seg_size);
            n++;
            FUZZ_ASSERT(n <= v.count);
        }
        FUZZ_ASSERT(err == CS_NOT_FOUND ? n == v.count : err == CS_CORRUPT);
        off += seg_size;
    }
}

/* Makes every checksum, chain value and header count of the segments in buf right. */
static void fix_up(uint8_t *buf, size_t size)
{
    uint64_t chain = 0;
    size_t off = 0;
    while (size - off >= CS_SEGMENT_HEADER_BYTES) {
        uint8_t *h = buf + off;
        size_t body = cs_be32_get(h + 28);
        if (body > size - off - CS_SEGMENT_HEADER_BYTES) {
            body = size - off - CS_SEGMENT_HEADER_BYTES;
            cs_be32_put(h + 28, (uint32_t)body);
        }
        uint64_t first = cs_be64_get(h + 8);
        uint32_t count = 0;
        size_t pos = 0;
        uint8_t *b = h + CS_SEGMENT_HEADER_BYTES;
        while (body - pos >= 4 + CS_RECORD_HEADER_BYTES) {
            size_t vlen = cs_be32_get(b + pos);
            if (vlen < CS_RECORD_HEADER_BYTES || vlen > body - pos - 4)
                break;
            uint8_t *rec = b + pos + 4;
            uint64_t sum = cs_log_checksum(rec + CS_RECORD_HEADER_BYTES,
                                           vlen - CS_RECORD_HEADER_BYTES, first + count);
            chain = cs_log_chain(chain, sum);
            cs_be64_put(rec, sum);
            cs_be64_put(rec + 8, chain);
            pos += 4 + vlen;
            count++;
        }
        if (count > 0) {
            cs_be32_put(h + 24, count);
            cs_be64_put(h + 16, first + count - 1);
        }
        cs_be64_put(h + 32, XXH3_64bits_withSeed(b, body, XXH3_64bits(h, 32)));
        off += CS_SEGMENT_HEADER_BYTES + body;
    }
}

static bool import_code_ok(cs_err err)
{
    return err == CS_OK || err == CS_CORRUPT || err == CS_INVALID_INPUT ||
           err == CS_NOT_IN_NETWORK || err == CS_PROTOCOL_MISMATCH || err == CS_FORBIDDEN ||
           err == CS_DANGLING_REFERENCE || err == CS_UNKNOWN_TYPE;
}

static void import(const uint8_t *data, size_t size, uint64_t shop)
{
    char dir[512], file[512];
    snprintf(dir, sizeof(dir), "%s/branch", fuzz_scratch());
    snprintf(file, sizeof(file), "%s/import.seg", fuzz_scratch());
    fuzz_rm_tree(dir);
    FILE *f = fopen(file, "wb");
    FUZZ_ASSERT(f && fwrite(data, 1, size, f) == size && fclose(f) == 0);
    cs_log_options opts = {.flags = CS_LOG_NOSYNC};
    cs_branch *b = NULL;
    FUZZ_ASSERT(cs_branch_open(dir, &opts, &b) == CS_OK);
    cs_err err = cs_branch_bind(b, shop);
    uint64_t applied = 0;
    if (err == CS_OK)
        err = cs_branch_import_file(b, file, &applied);
    if (!import_code_ok(err)) {
        fprintf(stderr, "import: %s: %s\n", cs_err_name(err), cs_branch_errmsg(b));
        FUZZ_ASSERT(import_code_ok(err));
    }
    if (err != CS_OK && !cs_branch_errmsg(b)[0])
        fprintf(stderr, "import: %s without a sentence\n", cs_err_name(err));
    FUZZ_ASSERT(err == CS_OK || cs_branch_errmsg(b)[0] != '\0');
    cs_branch_state st;
    FUZZ_ASSERT(cs_branch_state_get(b, &st) == CS_OK);
    FUZZ_ASSERT(st.cursor == applied); /* a fresh directory: exactly what was applied */
    uint64_t digest;
    FUZZ_ASSERT(cs_branch_digest(b, &digest) == CS_OK);
    if (getenv("CS_FUZZ_VERBOSE")) /* what the replay driver shows, to see a seed's path */
        fprintf(stderr, "import: %s, %llu applied: %s\n", cs_err_name(err),
                (unsigned long long)applied, cs_branch_errmsg(b));
    cs_branch_close(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 9)
        return 0;
    uint8_t mode = data[0];
    uint64_t shop = cs_be64_get(data + 1);
    size -= 9;
    uint8_t *buf = malloc(size ? size : 1);
    FUZZ_ASSERT(buf);
    memcpy(buf, data + 9, size);
    if (mode & 1)
        fix_up(buf, size);
    decode_all(buf, size);
    if (mode & 2)
        import(buf, size, shop);
    free(buf);
    return 0;
}
