/*
 * ceil_lmdb.h: the LMDB ceiling of SPEC section 8: raw LMDB puts of the bytes one branch would
 * write, nothing else. n values of value_bytes each under u64 big-endian keys 1..n, mdb_put with
 * MDB_APPEND, one transaction per `batch` puts (the last one may be shorter), fsync on every
 * commit unless !durable (MDB_NOSYNC). Header-only, like bench.h; driver: bench/ceilings.c.
 *
 *   double cs_ceil_lmdb_puts(const char *dir, uint64_t n, size_t value_bytes, unsigned batch,
 *                            bool durable);
 *
 * dir must not exist or be empty: the environment is made in it (map pre-sized so no run pays for
 * growth) and dir is removed afterwards. Returns puts/s (multiply by value_bytes for bytes/s),
 * or -1 on an error (reported on stderr). Only the puts and commits are timed.
 */
#ifndef CS_CEIL_LMDB_H
#define CS_CEIL_LMDB_H

#include "bench/bench.h"

#include "log/log.h"

#include <lmdb.h>
#include <stdbool.h>
#include <stdint.h>

/* Map bytes for n values of value_bytes: a leaf node (8-byte header + key + value, 2-byte slot)
 * on half-full pages at worst, or whole overflow pages for large values; plus 64 MiB of slack. */
static inline size_t cs_ceil_lmdb_map_bytes(uint64_t n, size_t value_bytes)
{
    size_t page = 4096, per;
    if (value_bytes + 18 <= page / 2 - 64)
        per = 2 * (value_bytes + 18);
    else
        per = ((value_bytes + 16) / page + 2) * page;
    return (size_t)64 * 1024 * 1024 + (size_t)n * per;
}

static inline int cs_ceil_lmdb_fail(const char *what, int rc)
{
    fprintf(stderr, "ceil_lmdb: %s: %s\n", what, mdb_strerror(rc));
    return -1;
}

/* Opens an environment in dir (made here) with one unnamed database. */
static inline int cs_ceil_lmdb_open(const char *dir, size_t map_bytes, bool durable, MDB_env **env,
                                    MDB_dbi *dbi)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "ceil_lmdb: mkdir %s: %s\n", dir, strerror(errno));
        return -1;
    }
    int rc = mdb_env_create(env);
    if (rc)
        return cs_ceil_lmdb_fail("env_create", rc);
    if ((rc = mdb_env_set_mapsize(*env, map_bytes)))
        return cs_ceil_lmdb_fail("set_mapsize", rc);
    if ((rc = mdb_env_open(*env, dir, durable ? 0 : MDB_NOSYNC, 0600)))
        return cs_ceil_lmdb_fail("env_open", rc);
    MDB_txn *txn;
    if ((rc = mdb_txn_begin(*env, NULL, 0, &txn)))
        return cs_ceil_lmdb_fail("txn_begin", rc);
    if ((rc = mdb_dbi_open(txn, NULL, 0, dbi))) {
        mdb_txn_abort(txn);
        return cs_ceil_lmdb_fail("dbi_open", rc);
    }
    if ((rc = mdb_txn_commit(txn)))
        return cs_ceil_lmdb_fail("txn_commit", rc);
    return 0;
}

/* Puts keys first+1..first+count in one transaction; the first 8 value bytes carry the key so
 * that no two values are the same bytes. */
static inline int cs_ceil_lmdb_batch(MDB_env *env, MDB_dbi dbi, uint64_t first, uint64_t count,
                                     uint8_t *value, size_t value_bytes)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc)
        return cs_ceil_lmdb_fail("txn_begin", rc);
    for (uint64_t i = first; i < first + count; i++) {
        uint8_t kb[8];
        cs_be64_put(kb, i + 1);
        memcpy(value, kb, value_bytes < 8 ? value_bytes : 8);
        MDB_val k = {sizeof(kb), kb}, v = {value_bytes, value};
        if ((rc = mdb_put(txn, dbi, &k, &v, MDB_APPEND))) {
            mdb_txn_abort(txn);
            return cs_ceil_lmdb_fail("put", rc);
        }
    }
    if ((rc = mdb_txn_commit(txn)))
        return cs_ceil_lmdb_fail("txn_commit", rc);
    return 0;
}

static inline double cs_ceil_lmdb_puts(const char *dir, uint64_t n, size_t value_bytes,
                                       unsigned batch, bool durable)
{
    if (n == 0 || batch == 0) {
        fprintf(stderr, "ceil_lmdb: n and batch must be positive\n");
        return -1;
    }
    uint8_t *value = malloc(value_bytes ? value_bytes : 1);
    if (!value) {
        fprintf(stderr, "ceil_lmdb: out of memory for a value of %zu bytes\n", value_bytes);
        return -1;
    }
    for (size_t i = 0; i < value_bytes; i++)
        value[i] = (uint8_t)(i * 131 + 7);
    MDB_env *env = NULL;
    MDB_dbi dbi;
    double rate = -1;
    if (cs_ceil_lmdb_open(dir, cs_ceil_lmdb_map_bytes(n, value_bytes), durable, &env, &dbi) != 0)
        goto done;
    double t0 = cs_bench_now_s();
    for (uint64_t done = 0; done < n; done += batch) {
        uint64_t count = n - done < batch ? n - done : batch;
        if (cs_ceil_lmdb_batch(env, dbi, done, count, value, value_bytes) != 0)
            goto done;
    }
    double secs = cs_bench_now_s() - t0;
    rate = (double)n / (secs > 0 ? secs : 1e-9);
done:
    if (env)
        mdb_env_close(env);
    free(value);
    cs_bench_rm_tree(dir);
    return rate;
}

#endif
