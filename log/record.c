/*
 * record.c: the one home of the stored record's format (docs/storage.md, "events" and "the
 * meta database"), below both the write path (store.c) and the read path (reader.c,
 * segment.c), so neither of those calls the other.
 *
 * A stored value is checksum(8) chain(8) event, big-endian:
 *   1. checksum = XXH3_64bits_withSeed(event, seq): a changed byte or a record moved to another
 *      sequence does not verify;
 *   2. chain(seq) = XXH3_64bits(chain(seq - 1), checksum), chain(0) = 0: a changed, lost or
 *      reordered record breaks every chain after it;
 *   3. meta "head" = (last seq, its chain) as of the last commit: a lost tail, which 1 and 2
 *      cannot see, differs from it.
 */
#include "log/log_int.h"

#include <string.h>
#include <xxhash.h>

uint64_t cs_log_checksum(const uint8_t *event, size_t len, uint64_t seq)
{
    return XXH3_64bits_withSeed(event, len, seq);
}

uint64_t cs_log_chain(uint64_t prev_chain, uint64_t checksum)
{
    uint8_t b[16];
    cs_be64_put(b, prev_chain);
    cs_be64_put(b + 8, checksum);
    return XXH3_64bits(b, sizeof(b));
}

void cs_digest_kv(XXH3_state_t *st, const MDB_val *k, const MDB_val *v)
{
    uint8_t lens[16];
    cs_be64_put(lens, k->mv_size);
    cs_be64_put(lens + 8, v->mv_size);
    XXH3_64bits_update(st, lens, sizeof(lens));
    XXH3_64bits_update(st, k->mv_data, k->mv_size);
    XXH3_64bits_update(st, v->mv_data, v->mv_size);
}

cs_err cs__record_parse(uint64_t seq, const uint8_t *val, size_t len, cs_log_record *out,
                        const char **why_out)
{
    if (len <= CS_RECORD_HEADER_BYTES || len > CS_RECORD_HEADER_BYTES + CS_EVENT_BYTES_MAX) {
        *why_out = CS_CORRUPT_AT; /* the size a record can have */
        return CS_CORRUPT;
    }
    cs_log_record rec = {
        .seq = seq,
        .checksum = cs_be64_get(val),
        .chain = cs_be64_get(val + 8),
        .event = val + CS_RECORD_HEADER_BYTES,
        .event_len = len - CS_RECORD_HEADER_BYTES,
    };
    if (cs_log_checksum(rec.event, rec.event_len, seq) != rec.checksum) {
        *why_out = CS_CORRUPT_AT; /* the checksum */
        return CS_CORRUPT;
    }
    cs_assert(rec.event_len >= 1);
    *out = rec;
    return CS_OK;
}

cs_err cs__head_check(MDB_txn *txn, MDB_dbi meta, uint64_t last_seq, uint64_t last_chain,
                      uint64_t *bad_seq, char *msg, size_t msg_len)
{
    MDB_val k = {sizeof(CS__META_HEAD_KEY) - 1, CS__META_HEAD_KEY}, v;
    int rc = mdb_get(txn, meta, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_OK; /* nothing appended yet */
    if (rc)
        return CS_IO;
    uint64_t hs = v.mv_size == 16 ? cs_be64_get(v.mv_data) : 0;
    uint64_t hc = v.mv_size == 16 ? cs_be64_get((const uint8_t *)v.mv_data + 8) : 0;
    if (v.mv_size == 16 && hs == last_seq && hc == last_chain)
        return CS_OK;
    *bad_seq = last_seq < hs ? last_seq + 1 : hs + (last_seq > hs);
    if (last_seq < hs)
        return cs_errmsg_format(msg, msg_len, CS_CORRUPT,
                                "event %llu: missing (the log ends at %llu, its head was "
                                "%llu)" CS_CORRUPT_AT,
                                (unsigned long long)(last_seq + 1), (unsigned long long)last_seq,
                                (unsigned long long)hs);
    return cs_errmsg_format(
        msg, msg_len, CS_CORRUPT,
        "event %llu: the log's end differs from its recorded head" CS_CORRUPT_AT,
        (unsigned long long)*bad_seq);
}
