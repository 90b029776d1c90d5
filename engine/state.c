/*
 * state.c: the records of the engine's state and what every engine file uses to reach them:
 * the refusal sentence (cs__fail), read snapshots, item records (key, pack, write, read, parse,
 * JSON; the layout is in engine_int.h), the network's small JSON records ("self", "net",
 * "shop:" + id) and the caller's role.
 *
 * The one transition that changes the state, cs__apply, lives in apply.c: commands (items.c,
 * network.c) validate, then emit events through cs__emit (apply.c), which appends them and
 * applies each; replay applies the same events from the log. Because nothing else writes
 * `items` or `network`, the state is a pure function of the log, and cs_engine_replay_digest
 * checks exactly that.
 */
#include "engine/engine_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

cs_err cs__fail(cs_engine *e, cs_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs_errmsg_vformat(e->errmsg, sizeof(e->errmsg), err, fmt, ap);
    va_end(ap);
    return err;
}

cs_err cs__read_begin(cs_engine *e, MDB_txn **txn)
{
    cs_err err = cs_log_read_begin(e->log, txn);
    return err == CS_OK ? CS_OK : cs__fail(e, err, "%s", cs_log_errmsg(e->log));
}

/* ---- item records ------------------------------------------------------------------------ */

void cs_item_key(uint8_t key[9], const cs_type *t, uint64_t id)
{
    key[0] = t->code;
    cs_be64_put(key + 1, id);
}

static void pack_link(msgpack_packer *pk, bool has, const uint64_t v[3])
{
    if (!has) {
        msgpack_pack_nil(pk);
        return;
    }
    msgpack_pack_array(pk, 3);
    for (int i = 0; i < 3; i++)
        msgpack_pack_uint64(pk, v[i]);
}

cs_err cs__item_pack(cs__pack *p, const cs_item *hdr, const uint8_t *fields, size_t fields_len)
{
    msgpack_pack_array(&p->pk, 5);
    msgpack_pack_uint64(&p->pk, hdr->version);
    hdr->archived ? msgpack_pack_true(&p->pk) : msgpack_pack_false(&p->pk);
    pack_link(&p->pk, hdr->has_origin, hdr->origin);
    pack_link(&p->pk, hdr->has_detached, hdr->detached);
    if (msgpack_sbuffer_write(&p->sb, (const char *)fields, fields_len) != 0)
        p->failed = true;
    return p->failed ? CS_NO_MEMORY : CS_OK;
}

cs_err cs_item_write(cs_log_txn *txn, MDB_dbi dbi, const cs_type *t, uint64_t id, const cs_item *it)
{
    cs__pack p;
    cs__pack_init(&p);
    msgpack_pack_array(&p.pk, 5);
    msgpack_pack_uint64(&p.pk, it->version);
    it->archived ? msgpack_pack_true(&p.pk) : msgpack_pack_false(&p.pk);
    pack_link(&p.pk, it->has_origin, it->origin);
    pack_link(&p.pk, it->has_detached, it->detached);
    msgpack_pack_object(&p.pk, it->fields);
    cs_err err = CS_NO_MEMORY;
    if (!p.failed) {
        uint8_t kb[9];
        cs_item_key(kb, t, id);
        MDB_val k = {9, kb}, v = {p.sb.size, p.sb.data};
        err = cs_log_txn_put(txn, dbi, &k, &v, 0);
    }
    cs__pack_destroy(&p);
    return err;
}

static bool read_link(const msgpack_object *o, bool *has, uint64_t v[3])
{
    *has = false;
    if (o->type == MSGPACK_OBJECT_NIL)
        return true;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3)
        return false;
    for (int i = 0; i < 3; i++) {
        if (o->via.array.ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return false;
        v[i] = o->via.array.ptr[i].via.u64;
    }
    *has = true;
    return true;
}

cs_err cs_item_read(MDB_txn *txn, MDB_dbi dbi, const cs_type *t, uint64_t id, msgpack_zone *z,
                    cs_item *out)
{
    uint8_t kb[9];
    cs_item_key(kb, t, id);
    MDB_val k = {9, kb}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    if (rc)
        return CS_IO;
    return cs_item_parse(&v, z, out);
}

/* One header element of a record at *off, bounds-checked (SPEC 4), then read by msgpack-c. */
static cs_err item_element(const uint8_t *p, size_t len, size_t *off, msgpack_zone *z,
                           msgpack_object *out)
{
    size_t vlen;
    if (*off >= len || cs_msgpack_check(p + *off, len - *off, 1, &vlen) != CS_OK)
        return CS_CORRUPT;
    msgpack_unpack_return rc = msgpack_unpack((const char *)p, len, off, z, out);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
        return CS_NO_MEMORY;
    return rc == MSGPACK_UNPACK_EXTRA_BYTES ? CS_OK : CS_CORRUPT; /* the fields follow */
}

cs_err cs_item_parse_header(const MDB_val *v, msgpack_zone *z, cs_item *out)
{
    const uint8_t *p = v->mv_data;
    size_t len = v->mv_size, off = 1;
    msgpack_object o[4];
    /* msgpack-c packs the record's 5-element array header as the one byte 0x95 (fixarray). */
    if (len < 1 || p[0] != 0x95)
        return CS_CORRUPT;
    for (int i = 0; i < 4; i++) {
        cs_err err = item_element(p, len, &off, z, &o[i]);
        if (err != CS_OK)
            return err;
    }
    cs_item it = {.version = o[0].via.u64, .archived = o[1].via.boolean};
    if (o[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || o[1].type != MSGPACK_OBJECT_BOOLEAN ||
        !read_link(&o[2], &it.has_origin, it.origin) ||
        !read_link(&o[3], &it.has_detached, it.detached))
        return CS_CORRUPT;
    if (off >= len || ((p[off] & 0xf0) != 0x80 && p[off] != 0xde && p[off] != 0xdf))
        return CS_CORRUPT;               /* the fields are a map */
    it.fields.type = MSGPACK_OBJECT_NIL; /* not decoded here */
    it.fields_bytes = p + off;
    it.fields_len = len - off;
    *out = it;
    return CS_OK;
}

cs_err cs_item_parse(const MDB_val *v, msgpack_zone *z, cs_item *out)
{
    cs_item it;
    size_t vlen, off = 0;
    cs_err err = cs_item_parse_header(v, z, &it);
    if (err != CS_OK)
        return err;
    if (cs_msgpack_check(it.fields_bytes, it.fields_len, CS_MSGPACK_DEPTH_MAX - 1, &vlen) !=
            CS_OK ||
        vlen != it.fields_len)
        return CS_CORRUPT;
    msgpack_unpack_return rc =
        msgpack_unpack((const char *)it.fields_bytes, it.fields_len, &off, z, &it.fields);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
        return CS_NO_MEMORY;
    if (rc != MSGPACK_UNPACK_SUCCESS || it.fields.type != MSGPACK_OBJECT_MAP)
        return CS_CORRUPT;
    *out = it;
    return CS_OK;
}

static json_t *link_json(bool has, const uint64_t v[3])
{
    if (!has)
        return json_null();
    return json_pack("{s:I,s:I,s:I}", "shop", (json_int_t)v[0], "id", (json_int_t)v[1], "version",
                     (json_int_t)v[2]);
}

cs_err cs_item_json(const cs_type *t, uint64_t id, const cs_item *it, json_t **out)
{
    json_t *fields;
    cs_err err = cs_schema_to_json(t, &it->fields, &fields);
    if (err != CS_OK)
        return err;
    json_t *j = json_pack("{s:s,s:I,s:I}", "type", t->name, "id", (json_int_t)id, "version",
                          (json_int_t)it->version);
    int rc = j ? json_object_update(j, fields) : -1;
    json_decref(fields);
    if (rc == 0) {
        rc |= json_object_set_new(j, "archived", json_boolean(it->archived));
        rc |= json_object_set_new(j, "origin", link_json(it->has_origin, it->origin));
        if (it->has_detached)
            rc |= json_object_set_new(j, "detached_from", link_json(true, it->detached));
    }
    if (rc) {
        json_decref(j);
        return CS_NO_MEMORY;
    }
    *out = j;
    return CS_OK;
}

/* ---- network state (small, JSON) --------------------------------------------------------- */

void cs__shop_key(char key[13], uint64_t shop)
{
    memcpy(key, "shop:", 5);
    cs_be64_put((uint8_t *)key + 5, shop);
}

cs_err cs__net_get(MDB_txn *txn, MDB_dbi dbi, const char *key, size_t key_len, json_t **out)
{
    MDB_val k = {key_len, (void *)key}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    if (rc)
        return CS_IO;
    json_t *j = json_loadb(v.mv_data, v.mv_size, 0, NULL);
    if (!j)
        return CS_CORRUPT;
    *out = j;
    return CS_OK;
}

cs_err cs__net_put(cs_log_txn *txn, MDB_dbi dbi, const char *key, size_t key_len, json_t *val)
{
    /* Sorted, compact: equal states have equal bytes, so digests compare. */
    char *s = json_dumps(val, JSON_COMPACT | JSON_SORT_KEYS);
    if (!s)
        return CS_NO_MEMORY;
    MDB_val k = {key_len, (void *)key}, v = {strlen(s), s};
    cs_err err = cs_log_txn_put(txn, dbi, &k, &v, 0);
    free(s);
    return err;
}

/* No `self` is "not initialised" only in an empty directory: with items or network records
 * there, the record was lost (a damaged page or key), and `init` must not start a second shop
 * on top of that log (issue 12). */
static cs_err self_missing(MDB_txn *txn, cs_engine *e)
{
    const MDB_dbi dbis[] = {e->network, e->items, e->local};
    for (size_t i = 0; i < sizeof(dbis) / sizeof(dbis[0]); i++) {
        MDB_stat st;
        int rc = mdb_stat(txn, dbis[i], &st);
        if (rc)
            return cs__fail(e, CS_IO, "cannot read the store: %s", mdb_strerror(rc));
        if (st.ms_entries > 0)
            return cs__fail(e, CS_CORRUPT,
                            "this shop's identity (the `self` record) is missing though the store "
                            "holds data: the store is damaged" CS_CORRUPT_AT);
    }
    return CS_OK;
}

cs_err cs__role_get(MDB_txn *txn, cs_engine *e, cs_role *role_out, uint64_t *self_id)
{
    json_t *self;
    cs_err err = cs__net_get(txn, e->network, "self", 4, &self);
    if (err == CS_NOT_FOUND) {
        err = self_missing(txn, e);
        if (err == CS_OK) {
            *role_out = CS_ROLE_NONE;
            if (self_id)
                *self_id = 0;
        }
        return err;
    }
    if (err != CS_OK)
        return cs__fail(e, err, "cannot read this shop's identity (the `self` record)%s",
                        err == CS_CORRUPT ? ": it is not JSON; the store is damaged" : "");
    const char *role = json_string_value(json_object_get(self, "role"));
    json_t *id = json_object_get(self, "id");
    cs_role r = CS_ROLE_NONE;
    if (role && strcmp(role, "single") == 0)
        r = CS_ROLE_SINGLE;
    else if (role && strcmp(role, "head") == 0)
        r = CS_ROLE_HEAD;
    else if (role && strcmp(role, "branch") == 0)
        r = CS_ROLE_BRANCH;
    bool id_ok = json_is_integer(id) && json_integer_value(id) != 0;
    uint64_t id_v = id_ok ? (uint64_t)json_integer_value(id) : 0;
    json_decref(self);
    /* Any record we wrote has both: anything else is damage, never "not initialised". */
    if (r == CS_ROLE_NONE || !id_ok)
        return cs__fail(e, CS_CORRUPT,
                        "this shop's identity (the `self` record) has no valid %s: the store is "
                        "damaged" CS_CORRUPT_AT,
                        r == CS_ROLE_NONE ? "role" : "id");
    *role_out = r;
    if (self_id)
        *self_id = id_v;
    return CS_OK;
}

cs_role cs__role(MDB_txn *txn, cs_engine *e, uint64_t *self_id)
{
    cs_role r = CS_ROLE_NONE;
    if (cs__role_get(txn, e, &r, self_id) != CS_OK)
        return CS_ROLE_NONE; /* callers that refuse anything but a known role */
    return r;
}
