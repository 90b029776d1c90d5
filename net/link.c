/*
 * link.c: what a branch keeps to reach and log in to its head office again (docs/storage.md,
 * "netlink"): the head office's address, the branch's shop id, the id of the log it follows and
 * the keys derived from its password (ClientKey, ServerKey, never the password). One record,
 * key "link", in the `netlink` database of the branch's directory; never logged, never in a
 * digest (R9: secrets stay out of the log).
 */
#include "net/net_int.h"

#include <stdlib.h>
#include <string.h>

#define LINK_KEY "link"

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
    const msgpack_sbuffer *sb;
} save_ctx;

static cs_err save_fn(cs_log_txn *txn, void *ctx)
{
    save_ctx *c = ctx;
    MDB_val k = {sizeof(LINK_KEY) - 1, LINK_KEY}, v = {c->sb->size, c->sb->data};
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
    save_ctx c = {.dbi = dbi, .sb = &p.sb};
    if (err == CS_OK)
        err = cs_log_write(cs_engine_log(cs_branch_engine(b)), save_fn, &c);
    cs__pk_destroy(&p);
    return err;
}
