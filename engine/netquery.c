/*
 * netquery.c: questions about the network: this shop, the list of shops (the Managing shops
 * view), which WhatsApp number a shop answers with (R12), and a branch's outbox as JSON
 * (through cs__dbi_json_array, which outbox.c uses for `rejected` too). One writer lives here
 * beside the reader of the same record: cs_engine_set_self, which the projection calls inside
 * its own transaction when a directory becomes a branch or a single store again.
 */
#include "engine/engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cs_err cs_engine_self_txn(cs_engine *e, MDB_txn *m, cs_shop_info *out)
{
    json_t *self;
    cs_role role = CS_ROLE_NONE;
    cs_err err = cs__role_get(m, e, &role, NULL); /* CS_CORRUPT for a damaged `self` */
    if (err != CS_OK)
        return err;
    if (role == CS_ROLE_NONE)
        return cs__fail(e, CS_NOT_FOUND, "this directory is not initialised: run chainsync init");
    if ((err = cs__net_get(m, e->network, "self", 4, &self)) != CS_OK)
        return cs__fail(e, err == CS_NOT_FOUND ? CS_CORRUPT : err, "cannot read `self`");
    cs_shop_info s = {.id = (uint64_t)json_integer_value(json_object_get(self, "id")),
                      .role = role};
    const char *name = json_string_value(json_object_get(self, "name"));
    snprintf(s.name, sizeof(s.name), "%s", name ? name : "");
    *out = s;
    json_decref(self);
    return CS_OK;
}

cs_err cs_engine_self(cs_engine *e, cs_shop_info *out)
{
    MDB_txn *m;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    err = cs_engine_self_txn(e, m, out);
    cs_log_read_end(e->log, m);
    return err;
}

/* A branch row's cursor, last_seen (ISO 8601 UTC, ms), connected and outbox from its status
 * record; lag and lag_ms null until shops_lag. A branch never seen keeps them all null, and
 * outbox stays null for one that never reported it. */
static cs_err status_fill(cs_engine *e, MDB_txn *m, json_t *row)
{
    int jrc = json_object_set_new(row, "lag_ms", json_null()) |
              json_object_set_new(row, "connected", json_null()) |
              json_object_set_new(row, "outbox", json_null()) |
              json_object_set_new(row, "held", json_null());
    cs_shop_status st;
    cs_err err =
        cs__status_read(e, m, (uint64_t)json_integer_value(json_object_get(row, "id")), &st);
    if (err == CS_NOT_FOUND)
        return jrc ? CS_NO_MEMORY : CS_OK;
    if (err != CS_OK)
        return cs__fail(e, err, "the status record of shop %lld cannot be read",
                        (long long)json_integer_value(json_object_get(row, "id")));
    char when[CS__ISO8601_BYTES];
    cs__iso8601_ms(st.last_seen_ms, when);
    jrc |= json_object_set_new(row, "cursor", json_integer((json_int_t)st.cursor)) |
           json_object_set_new(row, "last_seen", json_string(when)) |
           json_object_set_new(row, "connected", json_boolean(st.connected));
    if (st.outbox_known)
        jrc |= json_object_set_new(row, "outbox", json_integer((json_int_t)st.outbox));
    if (st.held_seq) {
        char since[CS__ISO8601_BYTES];
        cs__iso8601_ms(st.held_since_ms, since);
        jrc |= json_object_set_new(row, "held",
                                   json_pack("{s:I,s:s,s:s,s:s}", "seq", (json_int_t)st.held_seq,
                                             "code", cs_err_name(st.held_code), "message",
                                             st.held_message, "since", since));
    }
    return jrc ? CS_NO_MEMORY : CS_OK;
}

/* lag = head - cursor; lag_ms = now - time of the first event the branch lacks (cursor + 1),
 * 0 when it is in step. Its own log snapshot: the caller's read transaction has ended. */
static cs_err shops_lag(cs_engine *e, json_t *arr)
{
    cs_log_reader *r = NULL;
    uint64_t head = 0, now = cs__now_ms();
    cs_err err = cs_log_reader_open(e->log, &r);
    if (err == CS_OK)
        err = cs_log_reader_head(r, &head);
    size_t i;
    json_t *row;
    json_array_foreach(arr, i, row)
    {
        const json_t *c = json_object_get(row, "cursor");
        if (err != CS_OK || !json_is_integer(c))
            continue;
        uint64_t cursor = (uint64_t)json_integer_value(c), lag = 0, lag_ms = 0;
        cs_log_record rec;
        cs_event_view ev;
        if (cursor < head) {
            lag = head - cursor;
            err = cs_log_reader_get(r, cursor + 1, &rec);
            if (err == CS_OK)
                err = cs_event_decode(e->dec, rec.event, rec.event_len, &ev);
            if (err == CS_OK)
                lag_ms = now > ev.time_ms ? now - ev.time_ms : 0;
        }
        if (err == CS_OK && (json_object_set_new(row, "lag", json_integer((json_int_t)lag)) ||
                             json_object_set_new(row, "lag_ms", json_integer((json_int_t)lag_ms))))
            err = CS_NO_MEMORY;
    }
    if (err != CS_OK && !e->errmsg[0])
        cs__fail(e, err, "cannot read the log for the shops' lag: %s",
                 r ? cs_log_reader_errmsg(r) : cs_log_errmsg(e->log));
    cs_log_reader_close(r);
    return err;
}

/* The head office's own line, then one per branch ever added (unlinked ones say so). */
static cs_err list_shops(cs_engine *e, MDB_txn *m, json_t *arr)
{
    json_t *self;
    cs_err err = cs__net_get(m, e->network, "self", 4, &self);
    if (err != CS_OK)
        return err;
    json_t *head = json_pack("{s:O,s:O,s:s,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:b,s:n}", "id",
                             json_object_get(self, "id"), "name", json_object_get(self, "name"),
                             "role", "head", "switch", "cursor", "lag", "lag_ms", "last_seen",
                             "connected", "outbox", "linked", 1, "held");
    json_decref(self);
    if (!head || json_array_append_new(arr, head))
        return CS_NO_MEMORY;
    MDB_cursor *cur;
    if (mdb_cursor_open(m, e->network, &cur))
        return CS_IO;
    MDB_val k = {5, "shop:"}, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 13 || memcmp(k.mv_data, "shop:", 5) != 0)
            break;
        json_t *s = json_loadb(v.mv_data, v.mv_size, 0, NULL);
        if (!s) {
            err = CS_CORRUPT;
            break;
        }
        /* cursor, last_seen and connected come from the server's status records (status.c):
         * null until a branch has reported over a connection; lag is filled after this
         * snapshot ends (shops_lag). */
        json_t *row =
            json_pack("{s:O,s:O,s:s,s:O,s:n,s:n,s:n,s:O,s:O}", "id", json_object_get(s, "id"),
                      "name", json_object_get(s, "name"), "role", "branch", "switch",
                      json_object_get(s, "switch"), "cursor", "lag", "last_seen", "linked",
                      json_object_get(s, "linked"), "sync_seq", json_object_get(s, "sync_seq"));
        json_decref(s);
        if (row)
            err = status_fill(e, m, row);
        if (err != CS_OK) {
            json_decref(row);
            break;
        }
        if (!row || json_array_append_new(arr, row)) {
            err = CS_NO_MEMORY;
            break;
        }
    }
    mdb_cursor_close(cur);
    return err;
}

cs_err cs_engine_shop_list(cs_engine *e, json_t **out)
{
    e->errmsg[0] = '\0';
    MDB_txn *m;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    cs_role role = cs__role(m, e, NULL);
    if (role == CS_ROLE_NONE)
        err = cs__fail(e, CS_NOT_FOUND, "this directory is not initialised: run chainsync init");
    else if (role == CS_ROLE_SINGLE)
        err = cs__fail(e, CS_NOT_IN_NETWORK, "this shop is a single store: it has no branches");
    else if (role == CS_ROLE_BRANCH)
        err = cs__fail(e, CS_FORBIDDEN, "only the head office sees the network's shops");
    json_t *arr = err == CS_OK ? json_array() : NULL;
    if (err == CS_OK && !arr)
        err = CS_NO_MEMORY;
    if (err == CS_OK)
        err = list_shops(e, m, arr);
    cs_log_read_end(e->log, m);
    if (err != CS_OK) {
        json_decref(arr);
        return err;
    }
    err = shops_lag(e, arr);
    if (err != CS_OK) {
        json_decref(arr);
        return err;
    }
    *out = arr;
    return CS_OK;
}

static cs_err resolve(cs_engine *e, MDB_txn *m, uint64_t shop, char **out)
{
    json_t *net, *s = NULL;
    uint64_t self;
    if (cs__role(m, e, &self) != CS_ROLE_HEAD)
        return cs__fail(e, CS_NOT_IN_NETWORK, "only a network's head office resolves numbers");
    cs_err err = cs__net_get(m, e->network, "net", 3, &net);
    if (err != CS_OK)
        return err;
    const char *mode = json_string_value(json_object_get(net, "whatsapp_mode"));
    const char *number = json_string_value(json_object_get(net, "whatsapp_number"));
    bool shared = mode && strcmp(mode, "shared") == 0;
    if (shop != self) {
        char key[13];
        cs__shop_key(key, shop);
        err = cs__net_get(m, e->network, key, 13, &s);
        if (err == CS_OK && !json_is_true(json_object_get(s, "linked")))
            err = CS_NOT_FOUND; /* an unlinked shop is a single store now: not ours to answer */
        if (err == CS_NOT_FOUND)
            err = cs__fail(e, err, "shop %llu is not in this network", (unsigned long long)shop);
        if (err == CS_OK && !shared)
            number = json_string_value(json_object_get(s, "whatsapp_number"));
    }
    if (err == CS_OK && !number)
        err = shared ? cs__fail(e, CS_NOT_FOUND,
                                "the network's shared WhatsApp number is not set "
                                "(network whatsapp --number N)")
                     : cs__fail(e, CS_NOT_FOUND, "shop %llu has no WhatsApp number of its own",
                                (unsigned long long)shop);
    if (err == CS_OK && !(*out = strdup(number)))
        err = CS_NO_MEMORY;
    json_decref(s);
    json_decref(net);
    return err;
}

cs_err cs_engine_whatsapp_resolve(cs_engine *e, uint64_t shop, char **out)
{
    e->errmsg[0] = '\0';
    MDB_txn *m;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    err = resolve(e, m, shop, out);
    cs_log_read_end(e->log, m);
    return err;
}

cs_err cs_engine_set_self(cs_engine *e, cs_log_txn *txn, uint64_t shop, const char *name,
                          cs_role role)
{
    json_t *self = NULL;
    cs_err err = cs__net_get(cs_log_txn_mdb(txn), e->network, "self", 4, &self);
    if (err == CS_NOT_FOUND)
        self = json_object();
    else if (err != CS_OK)
        return err;
    if (!self)
        return CS_NO_MEMORY;
    int jrc = json_object_set_new(self, "id", json_integer((json_int_t)shop)) |
              json_object_set_new(self, "role", json_string(cs_role_name(role)));
    if (name || !json_object_get(self, "name"))
        jrc |= json_object_set_new(self, "name", json_string(name ? name : ""));
    err = jrc ? CS_NO_MEMORY : cs__net_put(txn, e->network, "self", 4, self);
    json_decref(self);
    return err;
}

static cs_err outbox_entry(const MDB_val *k, const MDB_val *v, msgpack_zone *z, json_t **out)
{
    size_t vlen, off = 0;
    msgpack_object o;
    if (k->mv_size != 8 ||
        cs_msgpack_check(v->mv_data, v->mv_size, CS_MSGPACK_DEPTH_MAX, &vlen) != CS_OK ||
        msgpack_unpack(v->mv_data, v->mv_size, &off, z, &o) != MSGPACK_UNPACK_SUCCESS)
        return CS_CORRUPT;
    json_t *j = cs__json_from_msgpack(&o);
    uint64_t seq = cs_be64_get(k->mv_data);
    /* req is bin: as 32 hex digits (null in an entry written before requests had ids). */
    const uint8_t *req;
    char hex[2 * CS_REQUEST_ID_BYTES + 1];
    json_t *rj = json_null();
    if (cs__map_bin(&o, "req", CS_REQUEST_ID_BYTES, &req, NULL)) {
        cs__hex(hex, req, CS_REQUEST_ID_BYTES);
        rj = json_string(hex);
    }
    if (!j || json_object_set_new(j, "seq", json_integer((json_int_t)seq)) ||
        json_object_set_new(j, "req", rj)) {
        json_decref(j);
        return CS_NO_MEMORY;
    }
    *out = j;
    return CS_OK;
}

cs_err cs__dbi_json_array(cs_engine *e, MDB_dbi dbi, cs__row_json_fn fn, json_t **out)
{
    MDB_txn *m;
    MDB_cursor *cur;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    if (mdb_cursor_open(m, dbi, &cur)) {
        cs_log_read_end(e->log, m);
        return CS_IO;
    }
    json_t *arr = json_array();
    err = arr ? CS_OK : CS_NO_MEMORY;
    MDB_val k, v;
    while (err == CS_OK && mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
        json_t *j;
        msgpack_zone_clear(&e->zone);
        err = fn(&k, &v, &e->zone, &j);
        if (err == CS_OK && json_array_append_new(arr, j))
            err = CS_NO_MEMORY;
    }
    mdb_cursor_close(cur);
    cs_log_read_end(e->log, m);
    if (err != CS_OK) {
        json_decref(arr);
        return err;
    }
    *out = arr;
    return CS_OK;
}

cs_err cs_engine_outbox(cs_engine *e, json_t **out)
{
    return cs__dbi_json_array(e, e->outbox, outbox_entry, out);
}
