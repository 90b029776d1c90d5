/*
 * link.c: what a branch keeps to reach and log in to its head office again (docs/storage.md,
 * "netlink"): the head office's address, the branch's shop id, the id of the log it follows and
 * the keys derived from its password (ClientKey, ServerKey, never the password). One record,
 * key "link", in the `netlink` database of the branch's directory; never logged, never in a
 * digest (R9: secrets stay out of the log). Beside it, key "state": what the last node that ran
 * with record_state saw (connected, the head office's head, the last connection failure), for
 * `chainsync status`; observation, rewritten at each connection change. It owns the `netlink`
 * database itself: reading or writing one record of it (cs__netlink_read/write), which hold.c
 * (keys "hold", "retry") and nats_sub.c (key "nats") use for theirs.
 */
#include "net/net_int.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define LINK_KEY "link"
#define STATE_KEY "state"

/* ---- the netlink database: one record read or written ------------------------------------ */

static cs_err netlink_dbi(cs_branch *b, MDB_dbi *out)
{
    return cs_log_dbi_open(cs_engine_log(cs_branch_engine(b)), "netlink", MDB_CREATE, out);
}

cs_err cs__netlink_read(cs_branch *b, const char *key, cs_err (*fn)(const MDB_val *v, void *arg),
                        void *arg)
{
    MDB_dbi dbi;
    cs_err err = netlink_dbi(b, &dbi);
    if (err != CS_OK)
        return err;
    cs_log *log = cs_engine_log(cs_branch_engine(b));
    MDB_txn *txn;
    if ((err = cs_log_read_begin(log, &txn)) != CS_OK)
        return err;
    MDB_val k = {strlen(key), (void *)key}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    err = rc == MDB_NOTFOUND ? CS_NOT_FOUND : rc ? CS_IO : fn(&v, arg);
    cs_log_read_end(log, txn);
    return err;
}

typedef struct write_ctx {
    MDB_dbi dbi;
    const char *key;
    const msgpack_sbuffer *sb; /* NULL: delete the key */
} write_ctx;

static cs_err write_fn(cs_log_txn *txn, void *ctx)
{
    write_ctx *c = ctx;
    MDB_val k = {strlen(c->key), (void *)c->key};
    if (!c->sb) {
        cs_err err = cs_log_txn_del(txn, c->dbi, &k);
        return err == CS_NOT_FOUND ? CS_OK : err;
    }
    MDB_val v = {c->sb->size, c->sb->data};
    return cs_log_txn_put(txn, c->dbi, &k, &v, 0);
}

cs_err cs__netlink_write(cs_branch *b, const char *key, const msgpack_sbuffer *sb)
{
    write_ctx c = {.key = key, .sb = sb};
    cs_err err = netlink_dbi(b, &c.dbi);
    if (err == CS_OK && sb && !sb->data)
        err = CS_NO_MEMORY;
    return err == CS_OK ? cs_log_write(cs_engine_log(cs_branch_engine(b)), write_fn, &c) : err;
}

/* ---- the link ----------------------------------------------------------------------------- */

static cs_err link_parse(const MDB_val *v, void *arg)
{
    cs__link *out = arg;
    cs__body body;
    cs_err err = cs__body_parse(&body, v->mv_data, v->mv_size);
    cs_str head;
    const uint8_t *salt, *ck, *sk;
    cs__link l = {0};
    if (err == CS_OK &&
        !(cs__body_str(&body, "head", &head) && head.len < sizeof(l.head) &&
          cs__body_uint(&body, "shop", &l.shop) && cs__body_uint(&body, "log_id", &l.log_id) &&
          cs__body_bin(&body, "salt", CS_AUTH_SALT_BYTES, &salt) &&
          cs__body_uint(&body, "ops", &l.auth.params.opslimit) &&
          cs__body_uint(&body, "mem", &l.auth.params.memlimit) &&
          cs__body_bin(&body, "client_key", CS_AUTH_KEY_BYTES, &ck) &&
          cs__body_bin(&body, "server_key", CS_AUTH_KEY_BYTES, &sk)))
        err = CS_CORRUPT;
    if (err == CS_OK) {
        memcpy(l.head, head.ptr, head.len);
        memcpy(l.auth.params.salt, salt, CS_AUTH_SALT_BYTES);
        memcpy(l.auth.client_key, ck, CS_AUTH_KEY_BYTES);
        memcpy(l.auth.server_key, sk, CS_AUTH_KEY_BYTES);
        *out = l;
    }
    cs__body_free(&body);
    return err == CS_INVALID_INPUT ? CS_CORRUPT : err;
}

cs_err cs__link_load(cs_branch *b, cs__link *out)
{
    return cs__netlink_read(b, LINK_KEY, link_parse, out);
}

cs_err cs__link_save(cs_branch *b, const cs__link *l)
{
    cs__pk p;
    cs__pk_init(&p, 8);
    cs__pk_str(&p, "head", l->head);
    cs__pk_uint(&p, "shop", l->shop);
    cs__pk_uint(&p, "log_id", l->log_id);
    cs__pk_bin(&p, "salt", l->auth.params.salt, CS_AUTH_SALT_BYTES);
    cs__pk_uint(&p, "ops", l->auth.params.opslimit);
    cs__pk_uint(&p, "mem", l->auth.params.memlimit);
    cs__pk_bin(&p, "client_key", l->auth.client_key, CS_AUTH_KEY_BYTES);
    cs__pk_bin(&p, "server_key", l->auth.server_key, CS_AUTH_KEY_BYTES);
    size_t used = 0;
    cs_err err = CS_NO_MEMORY;
    if (p.sb.data && cs_msgpack_check((const uint8_t *)p.sb.data, p.sb.size, 4, &used) == CS_OK &&
        used == p.sb.size)
        err = cs__netlink_write(b, LINK_KEY, &p.sb);
    cs__pk_destroy(&p);
    return err;
}

/* ---- the node's state, for `chainsync status` ------------------------------------------- */

cs_err cs__link_state_save(cs_branch *b, bool connected, uint64_t head_seq, const char *last_error)
{
    cs__pk p;
    cs__pk_init(&p, 4);
    cs__pk_uint(&p, "connected", connected);
    cs__pk_uint(&p, "head_seq", head_seq);
    cs__pk_uint(&p, "contact_ms", cs__net_now_ms());
    cs__pk_str(&p, "last_error", last_error);
    cs_err err = cs__netlink_write(b, STATE_KEY, &p.sb);
    cs__pk_destroy(&p);
    return err;
}

static cs_err state_parse(const MDB_val *v, void *arg)
{
    cs_branch_link_status *out = arg;
    cs__body body;
    cs_err err = cs__body_parse(&body, v->mv_data, v->mv_size);
    uint64_t connected = 0;
    cs_str last = {"", 0};
    if (err == CS_OK &&
        !(cs__body_uint(&body, "connected", &connected) &&
          cs__body_uint(&body, "head_seq", &out->head_seq) &&
          cs__body_uint(&body, "contact_ms", &out->contact_ms) &&
          cs__body_str(&body, "last_error", &last) && last.len < sizeof(out->last_error)))
        err = CS_CORRUPT;
    if (err == CS_OK) {
        out->connected = connected != 0;
        memcpy(out->last_error, last.ptr, last.len);
        out->last_error[last.len] = '\0';
    }
    cs__body_free(&body);
    return err == CS_INVALID_INPUT ? CS_CORRUPT : err;
}

cs_err cs_branch_link_status_get(cs_branch *b, cs_branch_link_status *out)
{
    cs_branch_link_status st = {0};
    cs__link l;
    cs_err err = cs__link_load(b, &l);
    if (err == CS_OK) {
        st.joined = true;
        memcpy(st.head, l.head, sizeof(st.head));
        sodium_memzero(&l, sizeof(l)); /* the keys are not this caller's business */
    } else if (err != CS_NOT_FOUND) {
        return err;
    }
    err = cs__netlink_read(b, STATE_KEY, state_parse, &st);
    if (err == CS_NOT_FOUND) /* no node has run with record_state yet */
        err = CS_OK;
    if (err == CS_OK)
        *out = st;
    return err;
}
