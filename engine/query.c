/*
 * query.c: reading items (get, list) and events as JSON. Reads use their own LMDB read
 * transaction and return JSON the caller owns, so nothing borrowed outlives the snapshot.
 */
#include "engine/engine_int.h"

#include <string.h>

/* The start of every item read: the type by name, a read snapshot, and the database that type's
 * items live in (shop-local ones in `local`). */
static cs_err read_type(cs_engine *e, const char *type, const cs_type **t, MDB_txn **txn,
                        MDB_dbi *dbi)
{
    e->errmsg[0] = '\0';
    /* Set on every path: gcc -O3 cannot see that callers only use them on CS_OK and warns. */
    *dbi = 0;
    *txn = NULL;
    *t = type ? cs_schema_find(type) : NULL;
    if (!*t)
        return cs__fail(e, CS_UNKNOWN_TYPE, "'%s' is not a type", type ? type : "");
    *dbi = (*t)->cls == CS_CLASS_LOCAL ? e->local : e->items;
    return cs__read_begin(e, txn);
}

cs_err cs_engine_get(cs_engine *e, const char *type, uint64_t id, json_t **out)
{
    const cs_type *t;
    MDB_txn *txn;
    MDB_dbi dbi;
    cs_err err = read_type(e, type, &t, &txn, &dbi);
    if (err != CS_OK)
        return err;
    msgpack_zone_clear(&e->zone);
    cs_item it;
    err = cs_item_read(txn, dbi, t, id, &e->zone, &it);
    if (err == CS_OK)
        err = cs_item_json(t, id, &it, out);
    else if (err == CS_NOT_FOUND)
        cs__fail(e, err, "%s %llu does not exist", t->name, (unsigned long long)id);
    cs_log_read_end(e->log, txn);
    return err;
}

static cs_err list_append(cs_engine *e, const cs_type *t, const MDB_val *k, const MDB_val *v,
                          bool archived, json_t *arr)
{
    cs_item it;
    msgpack_zone_clear(&e->zone);
    cs_err err = cs_item_parse(v, &e->zone, &it);
    if (err != CS_OK || it.archived != archived)
        return err;
    uint64_t id = cs_be64_get((const uint8_t *)k->mv_data + 1);
    json_t *j;
    if ((err = cs_item_json(t, id, &it, &j)) != CS_OK)
        return err;
    return json_array_append_new(arr, j) ? CS_NO_MEMORY : CS_OK;
}

cs_err cs_engine_list(cs_engine *e, const char *type, bool archived, json_t **out)
{
    const cs_type *t;
    MDB_txn *txn;
    MDB_dbi dbi;
    cs_err err = read_type(e, type, &t, &txn, &dbi);
    if (err != CS_OK)
        return err;
    json_t *arr = json_array();
    MDB_cursor *cur;
    if (!arr || mdb_cursor_open(txn, dbi, &cur)) {
        json_decref(arr);
        cs_log_read_end(e->log, txn);
        return arr ? CS_IO : CS_NO_MEMORY;
    }
    uint8_t kb[9];
    cs_item_key(kb, t, 0);
    MDB_val k = {9, kb}, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; rc == 0 && err == CS_OK; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 9 || ((const uint8_t *)k.mv_data)[0] != t->code)
            break;
        err = list_append(e, t, &k, &v, archived, arr);
    }
    if (err == CS_OK && rc != 0 && rc != MDB_NOTFOUND)
        err = CS_IO;
    mdb_cursor_close(cur);
    cs_log_read_end(e->log, txn);
    if (err != CS_OK) {
        json_decref(arr);
        return cs__fail(e, err, "cannot list %s: a record does not read back", t->name);
    }
    *out = arr;
    return CS_OK;
}

cs_err cs_engine_event_json(const cs_event_view *ev, json_t **out)
{
    json_t *fields = cs__json_from_msgpack(&ev->fields);
    json_t *j =
        json_pack("{s:I,s:I,s:s%,s:I,s:s%,s:s%,s:I,s:I,s:I,s:o}", "seq", (json_int_t)ev->seq,
                  "time", (json_int_t)ev->time_ms, "actor", ev->actor.ptr, ev->actor.len, "shop",
                  (json_int_t)ev->shop, "kind", ev->kind.ptr, ev->kind.len, "type", ev->type.ptr,
                  ev->type.len, "id", (json_int_t)ev->id, "version", (json_int_t)ev->version,
                  "schema", (json_int_t)ev->schema, "fields", fields);
    if (!j)
        return CS_NO_MEMORY;
    *out = j;
    return CS_OK;
}
