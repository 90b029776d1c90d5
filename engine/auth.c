/*
 * auth.c: branch authentication keys (SPEC 5, R9): the SCRAM shape of RFC 5802 built from
 * libsodium's argon2id, HMAC-SHA-256 and SHA-256, and the head office's `secrets` records.
 *
 *   SaltedPassword = argon2id(password, salt, opslimit, memlimit), 32 bytes  -- once, when set
 *   ClientKey      = HMAC-SHA-256(SaltedPassword, "Client Key")
 *   StoredKey      = SHA-256(ClientKey)                                     -- the head keeps
 *   ServerKey      = HMAC-SHA-256(SaltedPassword, "Server Key")             -- both keep
 *   ClientProof    = ClientKey XOR HMAC-SHA-256(StoredKey, msg)
 *   ServerSig      = HMAC-SHA-256(ServerKey, msg)
 *
 * Only the standard constructions are used, so a client in another language (Python's hmac,
 * hashlib and nacl.pwhash.argon2id.kdf) computes the same bytes. libsodium's
 * crypto_auth_hmacsha256_init/update/final is HMAC-SHA-256 for a key of any length.
 *
 * Invariants: the head office never stores SaltedPassword or ClientKey (StoredKey alone cannot
 * produce a proof); a shop without keys gets params that look like a real shop's (a salt that is
 * stable per id, derived from the network's decoy secret) and random keys no proof matches, so
 * a challenge does not tell which ids exist. Layouts: docs/storage.md, "secrets".
 */
#include "engine/engine_int.h"

#include <sodium.h>
#include <string.h>

/* The header's contract: 8..1024 bytes (setting a password is stricter, see network.c). */
#define AUTH_PASSWORD_BYTES_MIN 8u
#define AUTH_PASSWORD_BYTES_MAX 1024u
#define SECRET_VERSION 1u
#define DECOY_BYTES 32u

_Static_assert(CS_AUTH_SALT_BYTES == crypto_pwhash_argon2id_SALTBYTES, "argon2id salt size");
_Static_assert(CS_AUTH_KEY_BYTES == crypto_auth_hmacsha256_BYTES, "HMAC-SHA-256 output size");
_Static_assert(CS_AUTH_KEY_BYTES == crypto_hash_sha256_BYTES, "SHA-256 output size");

static void hmac(const uint8_t *key, size_t key_len, const uint8_t *a, size_t a_len,
                 const uint8_t *b, size_t b_len, uint8_t out[CS_AUTH_KEY_BYTES])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, key_len);
    crypto_auth_hmacsha256_update(&st, a, a_len);
    if (b_len)
        crypto_auth_hmacsha256_update(&st, b, b_len);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof(st));
}

cs_err cs_auth_derive(const char *password, const cs_auth_params *p, cs_auth_client *out)
{
    size_t n = password ? strlen(password) : 0;
    if (n < AUTH_PASSWORD_BYTES_MIN || n > AUTH_PASSWORD_BYTES_MAX)
        return CS_INVALID_INPUT;
    if (p->opslimit < crypto_pwhash_argon2id_OPSLIMIT_MIN ||
        p->opslimit > crypto_pwhash_argon2id_OPSLIMIT_MAX ||
        p->memlimit < crypto_pwhash_argon2id_MEMLIMIT_MIN ||
        p->memlimit > crypto_pwhash_argon2id_MEMLIMIT_MAX)
        return CS_INVALID_INPUT;
    if (sodium_init() < 0)
        return CS_NO_MEMORY;
    uint8_t salted[CS_AUTH_KEY_BYTES];
    if (crypto_pwhash(salted, sizeof(salted), password, n, p->salt, p->opslimit,
                      (size_t)p->memlimit, crypto_pwhash_ALG_ARGON2ID13) != 0)
        return CS_NO_MEMORY; /* the only failure left once the limits are checked */
    cs_auth_client c = {.params = *p};
    hmac(salted, sizeof(salted), (const uint8_t *)"Client Key", 10, NULL, 0, c.client_key);
    hmac(salted, sizeof(salted), (const uint8_t *)"Server Key", 10, NULL, 0, c.server_key);
    sodium_memzero(salted, sizeof(salted));
    *out = c;
    sodium_memzero(&c, sizeof(c));
    return CS_OK;
}

void cs_auth_stored_key(const cs_auth_client *c, uint8_t stored_key[CS_AUTH_KEY_BYTES])
{
    crypto_hash_sha256(stored_key, c->client_key, CS_AUTH_KEY_BYTES);
}

void cs_auth_client_proof(const cs_auth_client *c, const uint8_t *msg, size_t len,
                          uint8_t proof[CS_AUTH_KEY_BYTES])
{
    uint8_t stored[CS_AUTH_KEY_BYTES], sig[CS_AUTH_KEY_BYTES];
    cs_auth_stored_key(c, stored);
    hmac(stored, sizeof(stored), msg, len, NULL, 0, sig);
    for (unsigned i = 0; i < CS_AUTH_KEY_BYTES; i++)
        proof[i] = c->client_key[i] ^ sig[i];
    sodium_memzero(sig, sizeof(sig));
}

bool cs_auth_proof_ok(const cs_auth_keys *k, const uint8_t *msg, size_t len,
                      const uint8_t proof[CS_AUTH_KEY_BYTES])
{
    uint8_t sig[CS_AUTH_KEY_BYTES], client_key[CS_AUTH_KEY_BYTES], stored[CS_AUTH_KEY_BYTES];
    hmac(k->stored_key, CS_AUTH_KEY_BYTES, msg, len, NULL, 0, sig);
    for (unsigned i = 0; i < CS_AUTH_KEY_BYTES; i++)
        client_key[i] = proof[i] ^ sig[i];
    crypto_hash_sha256(stored, client_key, sizeof(client_key));
    bool ok = sodium_memcmp(stored, k->stored_key, CS_AUTH_KEY_BYTES) == 0;
    sodium_memzero(client_key, sizeof(client_key));
    return ok;
}

void cs_auth_server_signature(const uint8_t server_key[CS_AUTH_KEY_BYTES], const uint8_t *msg,
                              size_t len, uint8_t sig[CS_AUTH_KEY_BYTES])
{
    hmac(server_key, CS_AUTH_KEY_BYTES, msg, len, NULL, 0, sig);
}

cs_err cs__auth_keys_new(const char *password, cs_auth_keys *out)
{
    if (sodium_init() < 0)
        return CS_NO_MEMORY;
    cs_auth_params p = {.opslimit = crypto_pwhash_OPSLIMIT_INTERACTIVE,
                        .memlimit = crypto_pwhash_MEMLIMIT_INTERACTIVE};
    randombytes_buf(p.salt, sizeof(p.salt));
    cs_auth_client c;
    cs_err err = cs_auth_derive(password, &p, &c);
    if (err != CS_OK)
        return err;
    out->params = p;
    cs_auth_stored_key(&c, out->stored_key);
    memcpy(out->server_key, c.server_key, CS_AUTH_KEY_BYTES);
    sodium_memzero(&c, sizeof(c));
    return CS_OK;
}

/* ---- the `secrets` database -------------------------------------------------------------- */

cs_err cs__secret_encode(const cs_auth_keys *k, uint8_t out[CS__SECRET_BYTES_MAX], size_t *len)
{
    cs__pack p;
    cs__pack_init(&p);
    msgpack_pack_map(&p.pk, 6);
    msgpack_pack_str_with_body(&p.pk, "v", 1);
    msgpack_pack_uint64(&p.pk, SECRET_VERSION);
    msgpack_pack_str_with_body(&p.pk, "salt", 4);
    msgpack_pack_bin_with_body(&p.pk, k->params.salt, CS_AUTH_SALT_BYTES);
    msgpack_pack_str_with_body(&p.pk, "ops", 3);
    msgpack_pack_uint64(&p.pk, k->params.opslimit);
    msgpack_pack_str_with_body(&p.pk, "mem", 3);
    msgpack_pack_uint64(&p.pk, k->params.memlimit);
    msgpack_pack_str_with_body(&p.pk, "stored_key", 10);
    msgpack_pack_bin_with_body(&p.pk, k->stored_key, CS_AUTH_KEY_BYTES);
    msgpack_pack_str_with_body(&p.pk, "server_key", 10);
    msgpack_pack_bin_with_body(&p.pk, k->server_key, CS_AUTH_KEY_BYTES);
    cs_err err = p.failed ? CS_NO_MEMORY : CS_OK;
    cs_assert(p.failed || p.sb.size <= CS__SECRET_BYTES_MAX);
    if (err == CS_OK) {
        memcpy(out, p.sb.data, p.sb.size);
        *len = p.sb.size;
    }
    sodium_memzero(p.sb.data, p.sb.size);
    cs__pack_destroy(&p);
    return err;
}

static cs_err secret_parse(const MDB_val *v, cs_auth_keys *out)
{
    msgpack_zone z;
    msgpack_object o;
    if (!msgpack_zone_init(&z, 256))
        return CS_NO_MEMORY;
    cs_err err = cs__unpack(v->mv_data, v->mv_size, &z, &o);
    uint64_t ver = 0;
    const uint8_t *salt, *stored, *server;
    cs_auth_keys k;
    if (err == CS_OK && !(cs__map_u64(&o, "v", &ver) && ver == SECRET_VERSION &&
                          cs__map_bin(&o, "salt", CS_AUTH_SALT_BYTES, &salt, NULL) &&
                          cs__map_u64(&o, "ops", &k.params.opslimit) &&
                          cs__map_u64(&o, "mem", &k.params.memlimit) &&
                          cs__map_bin(&o, "stored_key", CS_AUTH_KEY_BYTES, &stored, NULL) &&
                          cs__map_bin(&o, "server_key", CS_AUTH_KEY_BYTES, &server, NULL)))
        err = CS_CORRUPT;
    if (err == CS_OK) {
        memcpy(k.params.salt, salt, CS_AUTH_SALT_BYTES);
        memcpy(k.stored_key, stored, CS_AUTH_KEY_BYTES);
        memcpy(k.server_key, server, CS_AUTH_KEY_BYTES);
        *out = k;
    }
    msgpack_zone_destroy(&z);
    return err;
}

cs_err cs__secret_read(cs_engine *e, MDB_txn *m, uint64_t shop, cs_auth_keys *out)
{
    uint8_t kb[8];
    cs_be64_put(kb, shop);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(m, e->secrets, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    if (rc)
        return CS_IO;
    return secret_parse(&v, out);
}

static cs_err decoy_get(cs_engine *e, MDB_txn *m, uint8_t out[DECOY_BYTES])
{
    MDB_val k = {5, "decoy"}, v;
    int rc = mdb_get(m, e->secrets, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_NOT_FOUND;
    if (rc)
        return CS_IO;
    if (v.mv_size != DECOY_BYTES)
        return CS_CORRUPT;
    memcpy(out, v.mv_data, DECOY_BYTES);
    return CS_OK;
}

cs_err cs__decoy_ensure(cs_engine *e, cs_log_txn *txn)
{
    uint8_t d[DECOY_BYTES];
    cs_err err = decoy_get(e, cs_log_txn_mdb(txn), d);
    if (err != CS_NOT_FOUND)
        return err;
    if (sodium_init() < 0)
        return CS_NO_MEMORY;
    randombytes_buf(d, sizeof(d));
    MDB_val k = {5, "decoy"}, v = {sizeof(d), d};
    err = cs_log_txn_put(txn, e->secrets, &k, &v, 0);
    sodium_memzero(d, sizeof(d));
    return err;
}

static cs_err decoy_fn(cs_log_txn *txn, void *ctx)
{
    return cs__decoy_ensure(ctx, txn);
}

/* What an unknown shop gets: the decoy salt of its id, the default cost, keys nobody has. */
static void decoy_keys(const uint8_t decoy[DECOY_BYTES], uint64_t shop, cs_auth_keys *out)
{
    uint8_t id[8], mac[CS_AUTH_KEY_BYTES];
    cs_be64_put(id, shop);
    hmac(decoy, DECOY_BYTES, (const uint8_t *)"salt", 4, id, sizeof(id), mac);
    memcpy(out->params.salt, mac, CS_AUTH_SALT_BYTES);
    out->params.opslimit = crypto_pwhash_OPSLIMIT_INTERACTIVE;
    out->params.memlimit = crypto_pwhash_MEMLIMIT_INTERACTIVE;
    randombytes_buf(out->stored_key, CS_AUTH_KEY_BYTES);
    randombytes_buf(out->server_key, CS_AUTH_KEY_BYTES);
}

/* linked: the shop's record in `network` is a linked branch. */
static cs_err shop_linked(cs_engine *e, MDB_txn *m, uint64_t shop, bool *linked)
{
    char key[13];
    json_t *s;
    cs__shop_key(key, shop);
    cs_err err = cs__net_get(m, e->network, key, 13, &s);
    *linked = false;
    if (err == CS_NOT_FOUND)
        return CS_OK;
    if (err != CS_OK)
        return err;
    const char *role = json_string_value(json_object_get(s, "role"));
    *linked = json_is_true(json_object_get(s, "linked")) && role && strcmp(role, "branch") == 0;
    json_decref(s);
    return CS_OK;
}

/* One read of everything shop_keys needs; CS_NOT_FOUND when the decoy is still missing. */
static cs_err keys_read(cs_engine *e, uint64_t shop, cs_auth_keys *out, bool *known, bool *linked)
{
    MDB_txn *m;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    uint64_t self = 0;
    if (cs__role(m, e, &self) != CS_ROLE_HEAD) {
        cs_log_read_end(e->log, m);
        return cs__fail(e, CS_FORBIDDEN, "only a network's head office authenticates branches");
    }
    err = cs__secret_read(e, m, shop, out);
    *known = err == CS_OK;
    if (err == CS_CORRUPT)
        cs__fail(e, err, "shop %llu: its stored keys are damaged", (unsigned long long)shop);
    if (err == CS_NOT_FOUND) {
        uint8_t decoy[DECOY_BYTES];
        err = decoy_get(e, m, decoy);
        if (err == CS_OK)
            decoy_keys(decoy, shop, out);
        sodium_memzero(decoy, sizeof(decoy));
    }
    if (err == CS_OK && shop != self)
        err = shop_linked(e, m, shop, linked);
    else if (err == CS_OK)
        *linked = false; /* the head office's own id is no branch */
    cs_log_read_end(e->log, m);
    return err;
}

cs_err cs_engine_shop_keys(cs_engine *e, uint64_t shop, cs_auth_keys *out, bool *known_out,
                           bool *linked_out)
{
    e->errmsg[0] = '\0';
    if (sodium_init() < 0)
        return CS_NO_MEMORY;
    cs_auth_keys k;
    bool known = false, linked = false;
    cs_err err = keys_read(e, shop, &k, &known, &linked);
    if (err == CS_NOT_FOUND) { /* a network created before decoys existed: make it once */
        err = cs_log_write(e->log, decoy_fn, e);
        if (err == CS_OK)
            err = keys_read(e, shop, &k, &known, &linked);
    }
    if (err == CS_OK) {
        *out = k;
        *known_out = known;
        *linked_out = linked;
    }
    sodium_memzero(&k, sizeof(k));
    return err;
}
