/*
 * damage.h: what the tests of issue 12 use to look at and to damage a data directory from the
 * outside: its data.mdb as bytes (to show a refused command or a verify wrote nothing), the set
 * of LMDB databases in it (opened read-only with LMDB itself, so nothing is created), and
 * writers of deliberate damage (cut the file, overwrite bytes at an offset, replace one record).
 * Everything returned is owned by the caller (free).
 */
#ifndef CS_TEST_DAMAGE_H
#define CS_TEST_DAMAGE_H

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CS_DAMAGE_FILE_BYTES_MAX (64u * 1024u * 1024u) /* a test's store is far smaller */

static inline void cs_damage_path(const char *dir, char *buf, size_t len)
{
    snprintf(buf, len, "%s/data.mdb", dir);
}

/* dir/data.mdb whole, or NULL. */
static inline uint8_t *cs_damage_file(const char *dir, size_t *len_out)
{
    char path[1024];
    cs_damage_path(dir, path, sizeof(path));
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0 || st.st_size <= 0 || st.st_size > CS_DAMAGE_FILE_BYTES_MAX) {
        close(fd);
        return NULL;
    }
    uint8_t *buf = malloc((size_t)st.st_size);
    bool ok = buf && pread(fd, buf, (size_t)st.st_size, 0) == st.st_size;
    close(fd);
    if (!ok) {
        free(buf);
        return NULL;
    }
    *len_out = (size_t)st.st_size;
    return buf;
}

/* True when dir/data.mdb holds exactly bytes[0..len). */
static inline bool cs_damage_file_same(const char *dir, const uint8_t *bytes, size_t len)
{
    size_t now_len = 0;
    uint8_t *now = cs_damage_file(dir, &now_len);
    bool same = now && now_len == len && memcmp(now, bytes, len) == 0;
    if (!same)
        fprintf(stderr, "  %s/data.mdb changed (%zu bytes, was %zu)\n", dir, now_len, len);
    free(now);
    return same;
}

/* The names of the databases in dir's environment, one per line in LMDB's (sorted) order. */
static inline char *cs_damage_dbs(const char *dir)
{
    MDB_env *env = NULL;
    MDB_txn *t = NULL;
    MDB_dbi main_dbi;
    MDB_cursor *cur = NULL;
    size_t cap = 4096, len = 0;
    char *out = calloc(1, cap);
    int rc = out ? mdb_env_create(&env) : ENOMEM;
    if (rc == 0 && (rc = mdb_env_set_maxdbs(env, 64)) == 0 &&
        (rc = mdb_env_open(env, dir, MDB_RDONLY, 0600)) == 0 &&
        (rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &t)) == 0 &&
        (rc = mdb_dbi_open(t, NULL, 0, &main_dbi)) == 0 &&
        (rc = mdb_cursor_open(t, main_dbi, &cur)) == 0) {
        MDB_val k, v;
        for (int r = mdb_cursor_get(cur, &k, &v, MDB_FIRST); r == 0;
             r = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (len + k.mv_size + 2 > cap)
                break; /* a test's store has a dozen databases */
            memcpy(out + len, k.mv_data, k.mv_size);
            len += k.mv_size;
            out[len++] = '\n';
            out[len] = '\0';
        }
    }
    if (cur)
        mdb_cursor_close(cur);
    if (t)
        mdb_txn_abort(t);
    if (env)
        mdb_env_close(env);
    if (rc) {
        free(out);
        return NULL;
    }
    return out;
}

/* Cuts dir/data.mdb to len bytes. */
static inline bool cs_damage_truncate(const char *dir, off_t len)
{
    char path[1024];
    cs_damage_path(dir, path, sizeof(path));
    return truncate(path, len) == 0;
}

/* Overwrites n bytes of dir/data.mdb at off with bytes from a fixed generator (seed). */
static inline bool cs_damage_scribble(const char *dir, off_t off, size_t n, uint32_t seed)
{
    char path[1024];
    cs_damage_path(dir, path, sizeof(path));
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return false;
    bool ok = true;
    uint32_t x = seed ? seed : 1;
    for (size_t i = 0; ok && i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5; /* xorshift32: the same damage every run */
        uint8_t b = (uint8_t)x;
        ok = pwrite(fd, &b, 1, off + (off_t)i) == 1;
    }
    close(fd);
    return ok;
}

/* Replaces (or, val NULL, deletes) key in database db of dir's environment, with LMDB. */
static inline bool cs_damage_record(const char *dir, const char *db, const char *key,
                                    const char *val)
{
    MDB_env *env = NULL;
    MDB_txn *t = NULL;
    MDB_dbi d;
    int rc = mdb_env_create(&env);
    if (rc == 0 && (rc = mdb_env_set_maxdbs(env, 64)) == 0 &&
        (rc = mdb_env_set_mapsize(env, 64u << 20)) == 0 &&
        (rc = mdb_env_open(env, dir, 0, 0600)) == 0 &&
        (rc = mdb_txn_begin(env, NULL, 0, &t)) == 0 && (rc = mdb_dbi_open(t, db, 0, &d)) == 0) {
        MDB_val k = {strlen(key), (void *)key}, v = {val ? strlen(val) : 0, (void *)val};
        rc = val ? mdb_put(t, d, &k, &v, 0) : mdb_del(t, d, &k, NULL);
        if (rc == 0) {
            rc = mdb_txn_commit(t);
            t = NULL;
        }
    }
    if (t)
        mdb_txn_abort(t);
    if (env)
        mdb_env_close(env);
    return rc == 0;
}

#endif
