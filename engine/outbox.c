/*
 * outbox.c: a branch's side of R8 after the write: the connection takes the oldest entry the
 * head office has not answered (cs_engine_outbox_next), sends it, and when the answer comes
 * removes it (cs_engine_outbox_done), keeping a refusal in `rejected` so a person sees it.
 * cs_engine_outbox_count is the depth the node reports to the head office (one mdb_stat).
 *
 * Exactly once: an entry leaves the outbox only on an answer, and the head office remembers
 * each (branch, req) answer (remote.c), so an entry sent again after a cut connection gets the
 * first answer back, never a second write. An answer for an entry already gone (it arrived
 * twice) changes nothing. Layouts: docs/storage.md, "outbox" and "rejected".
 */
#include "engine/engine_int.h"

#include <stdlib.h>
#include <string.h>

cs_err cs_engine_outbox_next(cs_engine *e, uint64_t after, uint64_t *key_out, uint8_t **entry,
                             size_t *len)
{
    e->errmsg[0] = '\0';
    if (after == UINT64_MAX)
        return CS_NOT_FOUND;
    MDB_txn *m;
    MDB_cursor *cur;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    if (mdb_cursor_open(m, e->outbox, &cur)) {
        cs_log_read_end(e->log, m);
        return CS_IO;
    }
    uint8_t kb[8];
    cs_be64_put(kb, after + 1);
    MDB_val k = {8, kb}, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    err = rc == MDB_NOTFOUND ? CS_NOT_FOUND : rc ? CS_IO : k.mv_size != 8 ? CS_CORRUPT : CS_OK;
    uint8_t *copy = NULL;
    if (err == CS_OK && !(copy = malloc(v.mv_size ? v.mv_size : 1)))
        err = CS_NO_MEMORY;
    if (err == CS_OK) {
        memcpy(copy, v.mv_data, v.mv_size);
        *key_out = cs_be64_get(k.mv_data);
        *entry = copy;
        *len = v.mv_size;
    }
    mdb_cursor_close(cur);
    cs_log_read_end(e->log, m);
    return err;
}

cs_err cs_engine_outbox_count(cs_engine *e, uint64_t *out)
{
    e->errmsg[0] = '\0';
    MDB_txn *m;
    MDB_stat st;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    int rc = mdb_stat(m, e->outbox, &st);
    cs_log_read_end(e->log, m);
    if (rc)
        return cs__fail(e, CS_IO, "cannot count the outbox: %s", mdb_strerror(rc));
    *out = st.ms_entries;
    return CS_OK;
}

typedef struct done_ctx {
    cs_engine *e;
    uint64_t key;
    const cs_remote_answer *ans;
} done_ctx;

/* rejected: u64 BE counter -> {code, message, entry: the outbox value byte for byte}. */
static cs_err reject_put(cs_log_txn *txn, cs_engine *e, const cs_remote_answer *ans,
                         const MDB_val *entry)
{
    uint64_t next;
    cs_err err = cs__counter_next(cs_log_txn_mdb(txn), e->rejected, &next);
    if (err != CS_OK)
        return err;
    char msg[sizeof(ans->message)];
    memcpy(msg, ans->message, sizeof(msg));
    msg[sizeof(msg) - 1] = '\0';
    cs__pack p;
    cs__pack_init(&p);
    msgpack_pack_map(&p.pk, 3);
    cs__pack_code(&p.pk, ans->code, msg);
    msgpack_pack_str_with_body(&p.pk, "entry", 5);
    msgpack_pack_bin_with_body(&p.pk, entry->mv_data, entry->mv_size);
    uint8_t kb[8];
    cs_be64_put(kb, next);
    MDB_val k = {8, kb}, v = {p.sb.size, p.sb.data};
    err = p.failed ? CS_NO_MEMORY : cs_log_txn_put(txn, e->rejected, &k, &v, MDB_APPEND);
    cs__pack_destroy(&p);
    return err;
}

static cs_err done_fn(cs_log_txn *txn, void *ctx)
{
    done_ctx *d = ctx;
    uint8_t kb[8];
    cs_be64_put(kb, d->key);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(cs_log_txn_mdb(txn), d->e->outbox, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_OK; /* answered before: the answer arrived twice */
    if (rc)
        return CS_IO;
    cs_err err = d->ans->code == CS_OK ? CS_OK : reject_put(txn, d->e, d->ans, &v);
    if (err == CS_OK)
        err = cs_log_txn_del(txn, d->e->outbox, &k);
    return err;
}

cs_err cs_engine_outbox_done(cs_engine *e, uint64_t key, const cs_remote_answer *ans)
{
    e->errmsg[0] = '\0';
    cs_assert(ans != NULL);
    done_ctx d = {.e = e, .key = key, .ans = ans};
    return cs_log_write(e->log, done_fn, &d);
}

/* One rejected record as {type, id, version, code, message, req}. */
static cs_err rejected_json(const MDB_val *k, const MDB_val *v, msgpack_zone *z, json_t **out)
{
    (void)k;
    msgpack_object o, ent;
    const uint8_t *bytes, *req;
    size_t n;
    cs_err code;
    cs_str msg, type;
    uint64_t id, version;
    cs_err err = cs__unpack(v->mv_data, v->mv_size, z, &o);
    if (err == CS_OK && !(cs__map_code(&o, &code, &msg) && cs__map_bin(&o, "entry", 0, &bytes, &n)))
        err = CS_CORRUPT;
    if (err == CS_OK)
        err = cs__unpack(bytes, n, z, &ent);
    if (err == CS_OK && !(cs__map_str(&ent, "type", &type) && cs__map_u64(&ent, "id", &id) &&
                          cs__map_u64(&ent, "version", &version) &&
                          cs__map_bin(&ent, "req", CS_REQUEST_ID_BYTES, &req, NULL)))
        err = CS_CORRUPT;
    if (err != CS_OK)
        return err;
    char hex[2 * CS_REQUEST_ID_BYTES + 1];
    cs__hex(hex, req, CS_REQUEST_ID_BYTES);
    json_t *j = json_pack("{s:s%,s:I,s:I,s:s,s:s%,s:s}", "type", type.ptr, type.len, "id",
                          (json_int_t)id, "version", (json_int_t)version, "code", cs_err_name(code),
                          "message", msg.ptr, msg.len, "req", hex);
    if (!j)
        return CS_NO_MEMORY;
    *out = j;
    return CS_OK;
}

cs_err cs_engine_rejected(cs_engine *e, json_t **out)
{
    e->errmsg[0] = '\0';
    cs_err err = cs__dbi_json_array(e, e->rejected, rejected_json, out);
    return err == CS_OK ? CS_OK : cs__fail(e, err, "a refused write's record cannot be read");
}
