/*
 * link.c: what a branch keeps to reach and log in to its head office again (docs/storage.md,
 * "netlink"): the head office's address, the branch's shop id, the id of the log it follows and
 * the keys derived from its password (ClientKey, ServerKey, never the password). One record,
 * key "link", in the `netlink` database of the branch's directory; never logged, never in a
 * digest (R9: secrets stay out of the log). Beside it, key "state": what the last node that ran
 * with record_state saw (connected, the head office's head, the last connection failure), for
 * `chainsync status`; observation, rewritten at each connection change.
 */
#include "net/net_int.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define LINK_KEY "link"
#define STATE_KEY "state"

static cs_err link_dbi(cs_branch *b, MDB_dbi *out)
{
    return cs_log_dbi_open(cs_engine_log(cs_branch_engine(b)), "netlink", MDB_CREATE, out);
}

static cs_err link_parse(const MDB_val *v, cs__link *out)
{
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
    MDB_dbi dbi;
    cs_err err = link_dbi(b, &dbi);
    if (err != CS_OK)
        return err;
    cs_log *log = cs_engine_log(cs_branch_engine(b));
    MDB_txn *txn;
    if ((err = cs_log_read_begin(log, &txn)) != CS_OK)
        return err;
    MDB_val k = {sizeof(LINK_KEY) - 1, LINK_KEY}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND)
        err = CS_NOT_FOUND;
    else if (rc)
        err = CS_IO;
    else
        err = link_parse(&v, out);
    cs_log_read_end(log, txn);
    return err;
}

typedef struct save_ctx {
    MDB_dbi dbi;
    const char *key;
    const msgpack_sbuffer *sb;
} save_ctx;

static cs_err save_fn(cs_log_txn *txn, void *ctx)
{
    save_ctx *c = ctx;
    MDB_val k = {strlen(c->key), (void *)c->key}, v = {c->sb->size, c->sb->data};
    return cs_log_txn_put(txn, c->dbi, &k, &v, 0);
}

cs_err cs__link_save(cs_branch *b, const cs__link *l)
{
    MDB_dbi dbi;
    cs_err err = link_dbi(b, &dbi);
    if (err != CS_OK)
        return err;
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
    if (!p.sb.data || cs_msgpack_check((const uint8_t *)p.sb.data, p.sb.size, 4, &used) != CS_OK ||
        used != p.sb.size)
        err = CS_NO_MEMORY;
    save_ctx c = {.dbi = dbi, .key = LINK_KEY, .sb = &p.sb};
    if (err == CS_OK)
        err = cs_log_write(cs_engine_log(cs_branch_engine(b)), save_fn, &c);
    cs__pk_destroy(&p);
    return err;
}

/* ---- the node's state, for `chainsync status` ------------------------------------------- */

cs_err cs__link_state_save(cs_branch *b, bool connected, uint64_t head_seq, const char *last_error)
{
    MDB_dbi dbi;
    cs_err err = link_dbi(b, &dbi);
    if (err != CS_OK)
        return err;
    cs__pk p;
    cs__pk_init(&p, 4);
    cs__pk_uint(&p, "connected", connected);
    cs__pk_uint(&p, "head_seq", head_seq);
    cs__pk_uint(&p, "contact_ms", cs__net_now_ms());
    cs__pk_str(&p, "last_error", last_error);
    save_ctx c = {.dbi = dbi, .key = STATE_KEY, .sb = &p.sb};
    err = p.sb.data ? cs_log_write(cs_engine_log(cs_branch_engine(b)), save_fn, &c) : CS_NO_MEMORY;
    cs__pk_destroy(&p);
    return err;
}

static cs_err state_parse(const MDB_val *v, cs_branch_link_status *out)
{
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
    MDB_dbi dbi;
    if ((err = link_dbi(b, &dbi)) != CS_OK)
        return err;
    cs_log *log = cs_engine_log(cs_branch_engine(b));
    MDB_txn *txn;
    if ((err = cs_log_read_begin(log, &txn)) != CS_OK)
        return err;
    MDB_val k = {sizeof(STATE_KEY) - 1, STATE_KEY}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    err = rc == MDB_NOTFOUND ? CS_OK : rc ? CS_IO : state_parse(&v, &st);
    cs_log_read_end(log, txn);
    if (err == CS_OK)
        *out = st;
    return err;
}
