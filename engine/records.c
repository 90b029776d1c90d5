/*
 * records.c: the small helpers every engine file that keeps its own msgpack records needs
 * (secrets, status, requests, rejected, outbox; docs/storage.md): big-endian keys, a checked
 * unpack (msgpack-c trusts lengths, SPEC 4, so every record read from disk is checked first),
 * map lookups by str key, counters, hex and time text.
 */
#include "engine/engine_int.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

cs_err cs__unpack(const void *buf, size_t len, msgpack_zone *z, msgpack_object *out)
{
    size_t vlen, off = 0;
    if (cs_msgpack_check(buf, len, CS_MSGPACK_DEPTH_MAX, &vlen) != CS_OK || vlen != len)
        return CS_CORRUPT;
    msgpack_unpack_return rc = msgpack_unpack(buf, len, &off, z, out);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
        return CS_NO_MEMORY;
    return rc == MSGPACK_UNPACK_SUCCESS ? CS_OK : CS_CORRUPT;
}

cs_err cs__record_get(MDB_txn *m, MDB_dbi dbi, const void *key, size_t key_len, msgpack_zone *z,
                      msgpack_object *out)
{
    MDB_val k = {key_len, (void *)key}, v;
    int rc = mdb_get(m, dbi, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    if (rc)
        return CS_IO;
    return cs__unpack(v.mv_data, v.mv_size, z, out);
}

const msgpack_object *cs__map_get(const msgpack_object *o, const char *key)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &o->via.map.ptr[i].val;
    }
    return NULL;
}

bool cs__map_u64(const msgpack_object *o, const char *key, uint64_t *out)
{
    const msgpack_object *v = cs__map_get(o, key);
    if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *out = v->via.u64;
    return true;
}

bool cs__map_bin(const msgpack_object *o, const char *key, size_t len, const uint8_t **out,
                 size_t *len_out)
{
    const msgpack_object *v = cs__map_get(o, key);
    if (!v || v->type != MSGPACK_OBJECT_BIN || (len && v->via.bin.size != len))
        return false;
    *out = (const uint8_t *)v->via.bin.ptr;
    if (len_out)
        *len_out = v->via.bin.size;
    return true;
}

bool cs__map_str(const msgpack_object *o, const char *key, cs_str *out)
{
    const msgpack_object *v = cs__map_get(o, key);
    if (!v || v->type != MSGPACK_OBJECT_STR)
        return false;
    *out = (cs_str){v->via.str.ptr, v->via.str.size};
    return true;
}

cs_err cs__counter_next(MDB_txn *txn, MDB_dbi dbi, uint64_t *out)
{
    MDB_cursor *cur;
    MDB_val k, v;
    if (mdb_cursor_open(txn, dbi, &cur))
        return CS_IO;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND) {
        *out = 1;
        return CS_OK;
    }
    if (rc)
        return CS_IO;
    if (k.mv_size != 8)
        return CS_CORRUPT;
    uint64_t last = cs_be64_get(k.mv_data);
    if (last == UINT64_MAX)
        return CS_STORAGE_FULL;
    *out = last + 1;
    return CS_OK;
}

void cs__hex(char *out, const uint8_t *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

uint64_t cs__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void cs__iso8601_ms(uint64_t ms, char out[CS__ISO8601_BYTES])
{
    time_t secs = (time_t)(ms / 1000u);
    struct tm tm;
    char day[24];
    if (!gmtime_r(&secs, &tm) || !strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm))
        snprintf(day, sizeof(day), "1970-01-01T00:00:00");
    snprintf(out, CS__ISO8601_BYTES, "%s.%03uZ", day, (unsigned)(ms % 1000u));
}

bool cs__err_from_name(const char *name, size_t len, cs_err *out)
{
    for (int c = 0; c < CS_ERR_COUNT; c++) {
        const char *n = cs_err_name((cs_err)c);
        if (strlen(n) == len && memcmp(n, name, len) == 0) {
            *out = (cs_err)c;
            return true;
        }
    }
    return false;
}

void cs__pack_code(msgpack_packer *pk, cs_err code, const char *message)
{
    const char *name = cs_err_name(code);
    msgpack_pack_str_with_body(pk, "code", 4);
    msgpack_pack_str_with_body(pk, name, strlen(name));
    msgpack_pack_str_with_body(pk, "message", 7);
    msgpack_pack_str_with_body(pk, message, strlen(message));
}

bool cs__map_code(const msgpack_object *o, cs_err *code, cs_str *message)
{
    cs_str name;
    return cs__map_str(o, "code", &name) && cs__err_from_name(name.ptr, name.len, code) &&
           cs__map_str(o, "message", message);
}
