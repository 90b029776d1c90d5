/*
 * test_engine_remote.c: the engine API the network server calls (engine/engine.h, "branch
 * authentication", "what the server records", "shared records from branches"), one rule per
 * test: the SCRAM-shaped keys are the standard constructions and a proof only works with the
 * right password for the message it was made for (SPEC 5); unknown shops get a stable decoy
 * salt (SPEC 5); secrets hold keys, never a hash, and the log holds neither (R9); the server's
 * status records give the shop list its cursor, lag and last contact (SPEC 5); a branch's
 * shared-record write is applied exactly once, refusals remembered (R8); a branch's outbox
 * keeps request ids and lists refused writes (R8).
 *
 * A branch is a real one (projections/): bound and caught up from an export of the head
 * office's log, so its outbox entries are the bytes the branch's engine packs.
 */
#include "engine/engine.h"
#include "projections/projection.h"
#include "tests/harness.h"

#include <sodium.h>
#include <time.h>

static const cs_log_options nosync_opts = {.flags = CS_LOG_NOSYNC};

/* A head office with one linked branch whose password is "right-password". */
typedef struct net {
    char *dir;
    cs_engine *e;
    uint64_t head;
    uint64_t branch;
} net;

static bool net_open(net *n, const char *tag)
{
    memset(n, 0, sizeof(*n));
    n->dir = cs_test_tmpdir(tag);
    return n->dir && cs_engine_open(n->dir, &nosync_opts, &n->e) == CS_OK &&
           cs_engine_init(n->e, "Matriz", &n->head) == CS_OK &&
           cs_engine_network_create(n->e, "Rede Pet") == CS_OK &&
           cs_engine_shop_add(n->e, "Filial Norte", "right-password", &n->branch) == CS_OK;
}

static void net_close(net *n)
{
    cs_engine_close(n->e);
    if (n->dir)
        cs_test_rmtree(n->dir);
    free(n->dir);
    memset(n, 0, sizeof(*n));
}

/* The branch's directory, caught up with the head office's whole log. */
typedef struct branch {
    char *dir;
    cs_branch *b;
    cs_engine *e;
} branch;

static bool branch_open(branch *b, net *n)
{
    memset(b, 0, sizeof(*b));
    b->dir = cs_test_tmpdir("rem-branch");
    char path[512];
    snprintf(path, sizeof(path), "%s.export", n->dir);
    bool ok = b->dir && cs_export_file(cs_engine_log(n->e), 1, path, NULL) == CS_OK &&
              cs_branch_open(b->dir, &nosync_opts, &b->b) == CS_OK &&
              cs_branch_bind(b->b, n->branch) == CS_OK &&
              cs_branch_import_file(b->b, path, NULL) == CS_OK;
    unlink(path);
    if (ok)
        b->e = cs_branch_engine(b->b);
    return ok;
}

static void branch_close(branch *b)
{
    cs_branch_close(b->b);
    if (b->dir)
        cs_test_rmtree(b->dir);
    free(b->dir);
    memset(b, 0, sizeof(*b));
}

static uint64_t log_head(cs_engine *e)
{
    cs_log_reader *r;
    uint64_t head = UINT64_MAX;
    if (cs_log_reader_open(cs_engine_log(e), &r) != CS_OK)
        return head;
    if (cs_log_reader_head(r, &head) != CS_OK)
        head = UINT64_MAX;
    cs_log_reader_close(r);
    return head;
}

/* What "changed nothing" compares: the state's digest and the log's head. */
typedef struct snap {
    uint64_t digest, head;
} snap;

static bool snap_take(cs_engine *e, snap *s)
{
    s->head = log_head(e);
    return cs_engine_digest(e, &s->digest) == CS_OK && s->head != UINT64_MAX;
}

static bool snap_same(cs_engine *e, const snap *before)
{
    snap now;
    return snap_take(e, &now) && now.digest == before->digest && now.head == before->head;
}

static json_t *J(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (!j)
        fprintf(stderr, "  bad test JSON: %s\n", jerr.text);
    return j;
}

/* An outbox entry as docs/storage.md ("outbox") describes it, built by hand, with the given
 * msgpack bytes as its fields (NULL: an empty map). *out owned by the caller. */
static void entry_make_raw(const char *kind, const char *type, uint64_t id, uint64_t expect,
                           const uint8_t *packed, size_t packed_len, uint8_t req_byte,
                           msgpack_sbuffer *out)
{
    msgpack_sbuffer_init(out);
    uint8_t req[CS_REQUEST_ID_BYTES];
    memset(req, req_byte, sizeof(req));
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 7);
    msgpack_pack_str_with_body(&pk, "kind", 4);
    msgpack_pack_str_with_body(&pk, kind, strlen(kind));
    msgpack_pack_str_with_body(&pk, "type", 4);
    msgpack_pack_str_with_body(&pk, type, strlen(type));
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_uint64(&pk, id);
    msgpack_pack_str_with_body(&pk, "version", 7);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_str_with_body(&pk, "expect", 6);
    msgpack_pack_uint64(&pk, expect);
    msgpack_pack_str_with_body(&pk, "fields", 6);
    if (packed)
        msgpack_sbuffer_write(out, (const char *)packed, packed_len);
    else
        msgpack_pack_map(&pk, 0);
    msgpack_pack_str_with_body(&pk, "req", 3);
    msgpack_pack_bin_with_body(&pk, req, sizeof(req));
}

/* The same with fields the schema's canonical msgpack of the JSON `fields` (NULL: none). */
static bool entry_make(const char *kind, const char *type, uint64_t id, uint64_t expect,
                       const char *fields, uint8_t req_byte, msgpack_sbuffer *out)
{
    uint8_t *packed = NULL;
    size_t packed_len = 0;
    if (fields) {
        const cs_type *t = cs_schema_find(type);
        json_t *j = J(fields);
        char msg[256];
        cs_err err = t && j ? cs_schema_from_json(t, j, &packed, &packed_len, msg, sizeof(msg))
                            : CS_INVALID_INPUT;
        json_decref(j);
        if (err != CS_OK) {
            msgpack_sbuffer_init(out);
            return false;
        }
    }
    entry_make_raw(kind, type, id, expect, packed, packed_len, req_byte, out);
    free(packed);
    return true;
}

/* Sends a hand-made entry from the branch; the answer in *ans. */
static cs_err remote(net *n, const char *kind, const char *type, uint64_t id, uint64_t expect,
                     const char *fields, uint8_t req_byte, cs_remote_answer *ans)
{
    msgpack_sbuffer sb;
    if (!entry_make(kind, type, id, expect, fields, req_byte, &sb)) {
        msgpack_sbuffer_destroy(&sb);
        return CS_USAGE;
    }
    cs_err err = cs_engine_remote_write(n->e, n->branch, (const uint8_t *)sb.data, sb.size, ans);
    msgpack_sbuffer_destroy(&sb);
    return err;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- SPEC 5: branch authentication ------------------------------------------------------- */

/* HMAC-SHA-256 written from RFC 2104 over SHA-256 alone, for a key of at most 64 bytes: the
 * construction an independent client (Python's hmac) computes. */
static void rfc2104_hmac(const uint8_t *key, size_t key_len, const void *msg, size_t len,
                         uint8_t out[32])
{
    uint8_t ipad[64] = {0}, opad[64], inner[32];
    memcpy(ipad, key, key_len);
    memcpy(opad, ipad, sizeof(opad));
    for (int i = 0; i < 64; i++) {
        ipad[i] ^= 0x36;
        opad[i] ^= 0x5c;
    }
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, ipad, 64);
    crypto_hash_sha256_update(&st, msg, len);
    crypto_hash_sha256_final(&st, inner);
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, opad, 64);
    crypto_hash_sha256_update(&st, inner, 32);
    crypto_hash_sha256_final(&st, out);
}

/* SPEC 5 (RFC 5802 shape): the keys are HMAC-SHA-256 of argon2id's SaltedPassword, and the
 * proof and signature are the standard constructions, byte for byte. */
static void test_auth_keys_are_the_standard_constructions(void)
{
    /* The reference HMAC first: RFC 4231 test case 2. */
    static const uint8_t rfc4231[32] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e,
                                        0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
                                        0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83,
                                        0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
    uint8_t mac[32];
    CHECK(sodium_init() >= 0);
    rfc2104_hmac((const uint8_t *)"Jefe", 4, "what do ya want for nothing?", 28, mac);
    CHECK(memcmp(mac, rfc4231, 32) == 0);
    cs_auth_params p = {.opslimit = crypto_pwhash_OPSLIMIT_INTERACTIVE,
                        .memlimit = crypto_pwhash_MEMLIMIT_INTERACTIVE};
    memcpy(p.salt, "0123456789abcdef", 16);
    cs_auth_client c;
    CHECK_OK(cs_auth_derive("right-password", &p, &c));
    uint8_t salted[32], want[32], stored[32];
    CHECK(crypto_pwhash(salted, 32, "right-password", 14, p.salt, p.opslimit, p.memlimit,
                        crypto_pwhash_ALG_ARGON2ID13) == 0);
    rfc2104_hmac(salted, 32, "Client Key", 10, want);
    CHECK(memcmp(c.client_key, want, 32) == 0);
    rfc2104_hmac(salted, 32, "Server Key", 10, want);
    CHECK(memcmp(c.server_key, want, 32) == 0);
    cs_auth_stored_key(&c, stored);
    crypto_hash_sha256(want, c.client_key, 32);
    CHECK(memcmp(stored, want, 32) == 0);
    uint8_t proof[32], sig[32];
    cs_auth_client_proof(&c, (const uint8_t *)"nonce-1", 7, proof);
    rfc2104_hmac(stored, 32, "nonce-1", 7, want);
    for (int i = 0; i < 32; i++)
        CHECK(proof[i] == (c.client_key[i] ^ want[i]));
    cs_auth_server_signature(c.server_key, (const uint8_t *)"nonce-1", 7, sig);
    rfc2104_hmac(c.server_key, 32, "nonce-1", 7, want);
    CHECK(memcmp(sig, want, 32) == 0);
    /* Limits: a password of 7 bytes and parameters outside libsodium's are invalid_input. */
    CHECK(cs_auth_derive("seven-b", &p, &c) == CS_INVALID_INPUT);
    cs_auth_params bad = p;
    bad.opslimit = 0;
    CHECK(cs_auth_derive("right-password", &bad, &c) == CS_INVALID_INPUT);
}

/* SPEC 5: the head office's stored keys accept a proof made with the right password for this
 * message, and refuse one made with a wrong password or for another message (a replay); the
 * client checks the head office's signature with its ServerKey (mutual). */
static void test_auth_proof_accepts_right_password_refuses_wrong_and_replayed_message(void)
{
    net n;
    CHECK(net_open(&n, "rem-auth"));
    cs_auth_keys k;
    bool known = false, linked = false;
    CHECK_OK(cs_engine_shop_keys(n.e, n.branch, &k, &known, &linked));
    CHECK(known);
    CHECK(linked);
    CHECK(k.params.opslimit == crypto_pwhash_OPSLIMIT_INTERACTIVE);
    CHECK(k.params.memlimit == crypto_pwhash_MEMLIMIT_INTERACTIVE);
    const uint8_t *msg1 = (const uint8_t *)"client-nonce,server-nonce-1";
    const uint8_t *msg2 = (const uint8_t *)"client-nonce,server-nonce-2";
    cs_auth_client right, wrong;
    CHECK_OK(cs_auth_derive("right-password", &k.params, &right));
    CHECK_OK(cs_auth_derive("wrong-password", &k.params, &wrong));
    uint8_t proof[32], bad[32], sig_head[32], sig_branch[32];
    cs_auth_client_proof(&right, msg1, 27, proof);
    cs_auth_client_proof(&wrong, msg1, 27, bad);
    CHECK(cs_auth_proof_ok(&k, msg1, 27, proof));
    CHECK(!cs_auth_proof_ok(&k, msg1, 27, bad));
    CHECK(!cs_auth_proof_ok(&k, msg2, 27, proof)); /* replayed for another challenge */
    proof[31] ^= 1;
    CHECK(!cs_auth_proof_ok(&k, msg1, 27, proof));
    cs_auth_server_signature(k.server_key, msg1, 27, sig_head);
    cs_auth_server_signature(right.server_key, msg1, 27, sig_branch);
    CHECK(memcmp(sig_head, sig_branch, 32) == 0);
    cs_auth_server_signature(wrong.server_key, msg1, 27, sig_branch);
    CHECK(memcmp(sig_head, sig_branch, 32) != 0);
    /* An unlinked branch still has keys but is no longer linked. */
    CHECK_OK(cs_engine_shop_unlink(n.e, n.branch));
    CHECK_OK(cs_engine_shop_keys(n.e, n.branch, &k, &known, &linked));
    CHECK(known);
    CHECK(!linked);
    net_close(&n);
}

/* SPEC 5: a shop without keys gets a challenge that looks like a real one: the same salt every
 * time for one id, another salt for another id, the default cost, and keys no proof matches.
 * The head office's own id is known once it has a password, and never linked. */
static void test_auth_unknown_shop_gets_decoy_salt_stable_per_id(void)
{
    net n;
    CHECK(net_open(&n, "rem-decoy"));
    cs_auth_keys a1, a2, b, real;
    bool known = true, linked = true;
    uint64_t ghost = n.branch ^ 0x5a5a5;
    CHECK_OK(cs_engine_shop_keys(n.e, ghost, &a1, &known, &linked));
    CHECK(!known);
    CHECK(!linked);
    CHECK_OK(cs_engine_shop_keys(n.e, ghost, &a2, &known, &linked));
    CHECK(memcmp(a1.params.salt, a2.params.salt, CS_AUTH_SALT_BYTES) == 0);
    CHECK(a1.params.opslimit == crypto_pwhash_OPSLIMIT_INTERACTIVE);
    CHECK(a1.params.memlimit == crypto_pwhash_MEMLIMIT_INTERACTIVE);
    CHECK_OK(cs_engine_shop_keys(n.e, ghost + 1, &b, &known, &linked));
    CHECK(memcmp(a1.params.salt, b.params.salt, CS_AUTH_SALT_BYTES) != 0);
    CHECK_OK(cs_engine_shop_keys(n.e, n.branch, &real, &known, &linked));
    CHECK(memcmp(a1.params.salt, real.params.salt, CS_AUTH_SALT_BYTES) != 0);
    cs_auth_client c;
    uint8_t proof[32];
    CHECK_OK(cs_auth_derive("right-password", &a1.params, &c));
    cs_auth_client_proof(&c, (const uint8_t *)"m", 1, proof);
    CHECK(!cs_auth_proof_ok(&a1, (const uint8_t *)"m", 1, proof));
    /* The head office's own id. */
    CHECK_OK(cs_engine_shop_keys(n.e, n.head, &a1, &known, &linked));
    CHECK(!known);
    CHECK_OK(cs_engine_shop_password(n.e, n.head, "head-password"));
    CHECK_OK(cs_engine_shop_keys(n.e, n.head, &a1, &known, &linked));
    CHECK(known);
    CHECK(!linked);
    net_close(&n);
}

/* SPEC 5: only a head office hands out keys. */
static void test_auth_keys_are_forbidden_outside_a_head_office(void)
{
    char *dir = cs_test_tmpdir("rem-single");
    cs_engine *e = NULL;
    uint64_t shop;
    cs_auth_keys k;
    bool known, linked;
    CHECK(dir);
    CHECK_OK(cs_engine_open(dir, &nosync_opts, &e));
    CHECK_OK(cs_engine_init(e, "Sozinha", &shop));
    CHECK(cs_engine_shop_keys(e, shop, &k, &known, &linked) == CS_FORBIDDEN);
    cs_engine_close(e);
    cs_test_rmtree(dir);
    free(dir);
}

/* ---- R9: secrets ------------------------------------------------------------------------- */

/* R9: the stored record holds the salt, the cost and the two keys, nothing else (no argon2id
 * string, no ClientKey), and no event of the log carries any of it or the password. */
static void test_r9_secrets_hold_no_password_hash(void)
{
    net n;
    CHECK(net_open(&n, "rem-secrets"));
    CHECK_OK(cs_engine_shop_password(n.e, n.branch, "second-password"));
    cs_auth_keys k;
    bool known, linked;
    CHECK_OK(cs_engine_shop_keys(n.e, n.branch, &k, &known, &linked));
    CHECK(known);
    cs_auth_client c;
    CHECK_OK(cs_auth_derive("second-password", &k.params, &c));
    CHECK_OK(cs_engine_shop_auth(n.e, n.branch, "second-password"));
    CHECK(cs_engine_shop_auth(n.e, n.branch, "right-password") == CS_AUTH_FAILED);
    /* The raw record, read as another program would. */
    cs_log *log = cs_engine_log(n.e);
    MDB_txn *m;
    MDB_dbi dbi;
    CHECK_OK(cs_log_read_begin(log, &m));
    uint8_t kb[8];
    for (int i = 0; i < 8; i++)
        kb[i] = (uint8_t)(n.branch >> (56 - 8 * i));
    MDB_val key = {8, kb}, val;
    bool ok = mdb_dbi_open(m, "secrets", 0, &dbi) == 0 && mdb_get(m, dbi, &key, &val) == 0;
    uint8_t rec[256];
    size_t rec_len = ok && val.mv_size <= sizeof(rec) ? val.mv_size : 0;
    memcpy(rec, val.mv_data, rec_len);
    cs_log_read_end(log, m);
    CHECK(ok);
    CHECK(rec_len > 0);
    msgpack_zone z;
    msgpack_object o;
    size_t off = 0;
    CHECK(msgpack_zone_init(&z, 512));
    ok = msgpack_unpack((const char *)rec, rec_len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS &&
         off == rec_len && o.type == MSGPACK_OBJECT_MAP && o.via.map.size == 6;
    static const char *const keys[] = {"v", "salt", "ops", "mem", "stored_key", "server_key"};
    for (uint32_t i = 0; ok && i < 6; i++) {
        const msgpack_object_kv *kv = &o.via.map.ptr[i];
        ok = kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(keys[i]) &&
             memcmp(kv->key.via.str.ptr, keys[i], strlen(keys[i])) == 0;
        if (ok && i == 4)
            ok = kv->val.type == MSGPACK_OBJECT_BIN && kv->val.via.bin.size == 32 &&
                 memcmp(kv->val.via.bin.ptr, k.stored_key, 32) == 0;
    }
    msgpack_zone_destroy(&z);
    CHECK(ok);
    CHECK(!memmem(rec, rec_len, "$argon2id$", 10));
    CHECK(!memmem(rec, rec_len, "second-password", 15));
    CHECK(!memmem(rec, rec_len, c.client_key, 32));
    /* The log: no password, no key, no salt. */
    cs_log_reader *r;
    cs_log_record lr;
    cs_err err;
    unsigned traces = 0;
    CHECK_OK(cs_log_reader_open(log, &r));
    while ((err = cs_log_reader_next(r, &lr)) == CS_OK)
        traces += memmem(lr.event, lr.event_len, "right-password", 14) ||
                  memmem(lr.event, lr.event_len, "second-password", 15);
    cs_log_reader_close(r);
    CHECK(err == CS_NOT_FOUND);
    CHECK_OK(cs_log_reader_open(log, &r));
    while ((err = cs_log_reader_next(r, &lr)) == CS_OK)
        traces += memmem(lr.event, lr.event_len, k.stored_key, 32) ||
                  memmem(lr.event, lr.event_len, k.server_key, 32) ||
                  memmem(lr.event, lr.event_len, k.params.salt, 16) ||
                  memmem(lr.event, lr.event_len, "$argon2id$", 10);
    cs_log_reader_close(r);
    CHECK(err == CS_NOT_FOUND);
    CHECK(traces == 0);
    net_close(&n);
}

/* ---- SPEC 5: status ---------------------------------------------------------------------- */

/* SPEC 5 (Managing shops): the server's status record gives the branch's row its cursor, its
 * lag in events and in ms, last contact and connection; a branch never seen shows nulls; one
 * transaction saves a batch, all or nothing. */
static void test_status_save_and_shop_list_lag(void)
{
    net n;
    CHECK(net_open(&n, "rem-status"));
    uint64_t quiet;
    CHECK_OK(cs_engine_shop_add(n.e, "Filial Sul", "other-password", &quiet));
    uint64_t before_put = now_ms(), head;
    cs_write_result r;
    json_t *f = J("{\"name\":\"Grooming\"}");
    CHECK(f);
    cs_err err = cs_engine_put(n.e, "service_category", 0, f, 0, &r);
    json_decref(f);
    CHECK_OK(err);
    f = J("{\"name\":\"Cats\"}");
    err = cs_engine_put(n.e, "species", 0, f, 0, &r);
    json_decref(f);
    CHECK_OK(err);
    head = log_head(n.e);
    /* A batch with one shop that is no branch (the head office itself) saves nothing. */
    cs_shop_status st[2] = {
        {.shop = n.branch, .cursor = head - 2, .last_seen_ms = 1796164800123u, .connected = true},
        {.shop = n.head, .cursor = 1}};
    CHECK(cs_engine_shop_status_save(n.e, st, 2) == CS_INVALID_INPUT);
    cs_shop_status got;
    CHECK(cs_engine_shop_status_get(n.e, n.branch, &got) == CS_NOT_FOUND);
    CHECK_OK(cs_engine_shop_status_save(n.e, st, 1));
    CHECK_OK(cs_engine_shop_status_get(n.e, n.branch, &got));
    CHECK(got.cursor == head - 2);
    CHECK(got.last_seen_ms == 1796164800123u);
    CHECK(got.connected);
    CHECK(!got.outbox_known); /* never reported: unknown, not 0 (a record written without it) */
    json_t *list;
    CHECK_OK(cs_engine_shop_list(n.e, &list));
    uint64_t after_list = now_ms();
    json_t *row = NULL, *quiet_row = NULL, *it;
    size_t i;
    json_array_foreach(list, i, it)
    {
        uint64_t id = (uint64_t)json_integer_value(json_object_get(it, "id"));
        if (id == n.branch)
            row = it;
        if (id == quiet)
            quiet_row = it;
    }
    bool ok = row && quiet_row;
    ok = ok && json_integer_value(json_object_get(row, "cursor")) == (json_int_t)(head - 2);
    ok = ok && json_integer_value(json_object_get(row, "lag")) == 2;
    json_int_t lag_ms = json_integer_value(json_object_get(row, "lag_ms"));
    ok = ok && json_is_integer(json_object_get(row, "lag_ms")) && lag_ms >= 0 &&
         (uint64_t)lag_ms <= after_list - before_put; /* the event is no older than the put */
    const char *seen = json_string_value(json_object_get(row, "last_seen"));
    ok = ok && seen && strcmp(seen, "2026-12-01T22:40:00.123Z") == 0;
    ok = ok && json_is_true(json_object_get(row, "connected"));
    ok = ok && json_is_null(json_object_get(quiet_row, "cursor")) &&
         json_is_null(json_object_get(quiet_row, "lag")) &&
         json_is_null(json_object_get(quiet_row, "last_seen")) &&
         json_is_null(json_object_get(quiet_row, "connected"));
    ok = ok && json_is_null(json_object_get(row, "outbox")) &&
         json_is_null(json_object_get(quiet_row, "outbox"));
    json_decref(list);
    CHECK(ok);
    /* In step: lag 0 and lag_ms 0; a disconnect is recorded, with the outbox depth the branch
     * last reported (issue 13, the outbox backlog). */
    st[0].cursor = head;
    st[0].connected = false;
    st[0].outbox = 3;
    st[0].outbox_known = true;
    CHECK_OK(cs_engine_shop_status_save(n.e, st, 1));
    CHECK_OK(cs_engine_shop_list(n.e, &list));
    row = NULL;
    json_array_foreach(list, i, it)
    {
        if ((uint64_t)json_integer_value(json_object_get(it, "id")) == n.branch)
            row = it;
    }
    CHECK(row);
    ok = json_integer_value(json_object_get(row, "lag")) == 0 &&
         json_is_integer(json_object_get(row, "lag_ms")) &&
         json_integer_value(json_object_get(row, "lag_ms")) == 0 &&
         json_is_false(json_object_get(row, "connected")) &&
         json_integer_value(json_object_get(row, "outbox")) == 3;
    json_decref(list);
    CHECK(ok);
    CHECK_OK(cs_engine_shop_status_get(n.e, n.branch, &got));
    CHECK(got.outbox_known && got.outbox == 3);
    /* Status is observation, not state: the digest a replay rebuilds still matches. */
    uint64_t d1, d2;
    char *scratch = cs_test_tmpdir("rem-status-replay");
    CHECK(scratch);
    CHECK_OK(cs_engine_digest(n.e, &d1));
    err = cs_engine_replay_digest(n.e, scratch, &d2);
    free(scratch);
    CHECK_OK(err);
    CHECK(d1 == d2);
    net_close(&n);
}

/* ---- R8: shared records from branches ---------------------------------------------------- */

/* R8: a branch's write (the entry its own engine put in its outbox) is applied once at the head
 * office with the branch as the event's shop; the same entry sent again gets the same answer
 * and writes nothing; the branch then clears it from its outbox. */
static void test_r8_remote_write_applies_once_for_a_resent_request(void)
{
    net n;
    branch b;
    CHECK(net_open(&n, "rem-once"));
    CHECK(branch_open(&b, &n));
    json_t *f = J("{\"name\":\"Ana Souza\",\"phone\":\"+55 11 5555-0101\"}");
    CHECK(f);
    cs_write_result local;
    cs_err err = cs_engine_put(b.e, "customer", 0, f, 0, &local);
    json_decref(f);
    CHECK_OK(err);
    CHECK(local.id >> 32 == n.branch);
    uint64_t key;
    uint8_t *entry;
    size_t len;
    CHECK_OK(cs_engine_outbox_next(b.e, 0, &key, &entry, &len));
    uint64_t head0 = log_head(n.e);
    cs_remote_answer a1, a2;
    err = cs_engine_remote_write(n.e, n.branch, entry, len, &a1);
    snap after_first;
    bool ok = err == CS_OK && snap_take(n.e, &after_first);
    ok = ok && cs_engine_remote_write(n.e, n.branch, entry, len, &a2) == CS_OK;
    ok = ok && snap_same(n.e, &after_first);
    free(entry);
    CHECK(ok);
    CHECK(a1.code == CS_OK);
    CHECK(a1.id == local.id);
    CHECK(a1.version == 1);
    CHECK(a1.seq == head0 + 1);
    CHECK(after_first.head == head0 + 1);
    CHECK(a2.code == a1.code && a2.id == a1.id && a2.version == a1.version && a2.seq == a1.seq);
    json_t *got;
    CHECK_OK(cs_engine_get(n.e, "customer", local.id, &got));
    ok = strcmp(json_string_value(json_object_get(got, "name")), "Ana Souza") == 0;
    json_decref(got);
    CHECK(ok);
    /* The event names the branch as its shop and actor. */
    cs_log_reader *r;
    cs_log_record rec;
    cs_event_decoder *dec;
    cs_event_view ev;
    CHECK_OK(cs_event_decoder_new(&dec));
    CHECK_OK(cs_log_reader_open(cs_engine_log(n.e), &r));
    char actor[40];
    snprintf(actor, sizeof(actor), "branch:%llu", (unsigned long long)n.branch);
    ok = cs_log_reader_get(r, a1.seq, &rec) == CS_OK &&
         cs_event_decode(dec, rec.event, rec.event_len, &ev) == CS_OK && ev.shop == n.branch &&
         ev.id == local.id && ev.actor.len == strlen(actor) &&
         memcmp(ev.actor.ptr, actor, ev.actor.len) == 0;
    cs_log_reader_close(r);
    cs_event_decoder_free(dec);
    CHECK(ok);
    /* An update of the record by the branch, then the answers reach the branch. */
    uint64_t depth = 0;
    CHECK_OK(cs_engine_outbox_count(b.e, &depth));
    CHECK(depth == 1); /* what the node reports to the head office (issue 13) */
    CHECK_OK(cs_engine_outbox_done(b.e, key, &a1));
    CHECK_OK(cs_engine_outbox_done(b.e, key, &a1)); /* arrived twice */
    CHECK(cs_engine_outbox_next(b.e, 0, &key, &entry, &len) == CS_NOT_FOUND);
    CHECK_OK(cs_engine_outbox_count(b.e, &depth));
    CHECK(depth == 0);
    json_t *rej;
    CHECK_OK(cs_engine_rejected(b.e, &rej));
    ok = json_array_size(rej) == 0;
    json_decref(rej);
    CHECK(ok);
    branch_close(&b);
    net_close(&n);
}

/* R8: a writer that names the version it expects gets version_conflict when the record has
 * moved on; the refusal is remembered, so the same request sent again is refused the same
 * way even once the record is at the version it named. */
static void test_r8_remote_write_version_conflict_is_remembered(void)
{
    net n;
    CHECK(net_open(&n, "rem-conflict"));
    uint64_t id = (n.branch << 32) | 7;
    cs_remote_answer a;
    CHECK_OK(remote(&n, "put", "customer", id, 0, "{\"name\":\"Bia\"}", 1, &a));
    CHECK(a.code == CS_OK);
    CHECK(a.version == 1);
    CHECK_OK(remote(&n, "put", "customer", id, 1, "{\"name\":\"Bia Lima\"}", 2, &a));
    CHECK(a.code == CS_OK);
    CHECK(a.version == 2);
    snap before;
    CHECK(snap_take(n.e, &before));
    CHECK_OK(remote(&n, "put", "customer", id, 3, "{\"name\":\"Bia L.\"}", 3, &a));
    CHECK(a.code == CS_VERSION_CONFLICT);
    CHECK(a.id == id);
    CHECK(strstr(a.message, "version 2"));
    CHECK(snap_same(n.e, &before));
    /* The head office moves the record to version 3: the old request stays refused. */
    json_t *f = J("{\"name\":\"Beatriz\"}");
    CHECK(f);
    cs_write_result r;
    cs_err err = cs_engine_put(n.e, "customer", id, f, 2, &r);
    json_decref(f);
    CHECK_OK(err);
    CHECK(r.version == 3);
    CHECK(snap_take(n.e, &before));
    CHECK_OK(remote(&n, "put", "customer", id, 3, "{\"name\":\"Bia L.\"}", 3, &a));
    CHECK(a.code == CS_VERSION_CONFLICT);
    CHECK(snap_same(n.e, &before));
    /* A new request with that expectation is applied: last writer wins, ordered here. */
    CHECK_OK(remote(&n, "put", "customer", id, 3, "{\"name\":\"Bia L.\"}", 4, &a));
    CHECK(a.code == CS_OK);
    CHECK(a.version == 4);
    net_close(&n);
}

/* R8: a branch writes only shared records: a catalog type or a shop-local type is forbidden,
 * remembered, and changes nothing. */
static void test_r8_remote_write_refuses_catalog_type(void)
{
    net n;
    CHECK(net_open(&n, "rem-catalog"));
    uint64_t id = (n.branch << 32) | 1;
    snap before;
    CHECK(snap_take(n.e, &before));
    cs_remote_answer a;
    CHECK_OK(remote(&n, "put", "service_category", id, 0, "{\"name\":\"Banho\"}", 1, &a));
    CHECK(a.code == CS_FORBIDDEN);
    CHECK(strstr(a.message, "service_category"));
    CHECK_OK(remote(&n, "put", "staff", id, 0, "{\"name\":\"Rui\"}", 2, &a));
    CHECK(a.code == CS_FORBIDDEN);
    CHECK_OK(remote(&n, "put", "no_such_type", id, 0, NULL, 3, &a));
    CHECK(a.code == CS_UNKNOWN_TYPE);
    CHECK(snap_same(n.e, &before));
    net_close(&n);
}

/* R8, SPEC 6: every other refusal of a branch's write names its reason and changes nothing:
 * a new record with an id another shop allocates, a delete or update of a record the head
 * office lacks, bad fields, a dangling reference; bytes that are no entry are corrupt and
 * nothing is remembered. */
static void test_r8_remote_write_refusals_change_nothing(void)
{
    net n;
    CHECK(net_open(&n, "rem-refuse"));
    uint64_t mine = (n.branch << 32) | 5, theirs = ((n.branch + 1) << 32) | 5;
    snap before;
    CHECK(snap_take(n.e, &before));
    cs_remote_answer a;
    CHECK_OK(remote(&n, "put", "customer", theirs, 0, "{\"name\":\"Caio\"}", 1, &a));
    CHECK(a.code == CS_INVALID_INPUT);
    CHECK_OK(remote(&n, "delete", "customer", mine, 0, NULL, 2, &a));
    CHECK(a.code == CS_NOT_FOUND);
    CHECK_OK(remote(&n, "put", "customer", mine, 1, "{\"name\":\"Caio\"}", 3, &a));
    CHECK(a.code == CS_VERSION_CONFLICT); /* an expected version for a record not there */
    CHECK_OK(remote(&n, "put", "pet", mine, 0,
                    "{\"name\":\"Rex\",\"customer\":12345,\"species\":12346}", 4, &a));
    CHECK(a.code == CS_DANGLING_REFERENCE);
    CHECK(strstr(a.message, "customer"));
    CHECK(snap_same(n.e, &before));
    /* Fields the schema refuses: hand-packed {"nome": "x"}, a field customer lacks. */
    static const uint8_t bad_fields[] = {0x81, 0xa4, 'n', 'o', 'm', 'e', 0xa1, 'x'};
    msgpack_sbuffer sb;
    entry_make_raw("put", "customer", mine, 0, bad_fields, sizeof(bad_fields), 5, &sb);
    uint8_t buf[256];
    size_t blen = sb.size;
    bool fits = blen <= sizeof(buf);
    if (fits)
        memcpy(buf, sb.data, blen);
    msgpack_sbuffer_destroy(&sb);
    CHECK(fits);
    CHECK_OK(cs_engine_remote_write(n.e, n.branch, buf, blen, &a));
    CHECK(a.code == CS_INVALID_INPUT);
    CHECK(strstr(a.message, "nome"));
    /* Not an entry: truncated, or a container claiming more than there is. */
    CHECK(cs_engine_remote_write(n.e, n.branch, buf, blen - 3, &a) == CS_CORRUPT);
    static const uint8_t huge[] = {0xdf, 0x7f, 0xff, 0xff, 0xff, 0x00};
    CHECK(cs_engine_remote_write(n.e, n.branch, huge, sizeof(huge), &a) == CS_CORRUPT);
    CHECK(snap_same(n.e, &before));
    /* A delete of an existing record archives it, once. */
    CHECK_OK(remote(&n, "put", "customer", mine, 0, "{\"name\":\"Caio\"}", 6, &a));
    CHECK(a.code == CS_OK);
    CHECK_OK(remote(&n, "delete", "customer", mine, 1, NULL, 7, &a));
    CHECK(a.code == CS_OK);
    CHECK(a.version == 2);
    json_t *got;
    CHECK_OK(cs_engine_get(n.e, "customer", mine, &got));
    bool archived = json_is_true(json_object_get(got, "archived"));
    json_decref(got);
    CHECK(archived);
    net_close(&n);
}

/* R8: each outbox entry carries a random request id; outbox_next walks the entries in order;
 * outbox_done removes an answered entry and keeps a refusal in `rejected`, which lists it with
 * the entry's type, id, version and request id. */
static void test_r8_outbox_done_rejected_listed(void)
{
    net n;
    branch b;
    CHECK(net_open(&n, "rem-outbox"));
    CHECK(branch_open(&b, &n));
    cs_write_result w1, w2;
    json_t *f = J("{\"name\":\"Dora\"}");
    CHECK(f);
    cs_err err = cs_engine_put(b.e, "customer", 0, f, 0, &w1);
    if (err == CS_OK)
        err = cs_engine_put(b.e, "customer", 0, f, 0, &w2);
    json_decref(f);
    CHECK_OK(err);
    json_t *ob;
    CHECK_OK(cs_engine_outbox(b.e, &ob));
    const char *req1 = json_string_value(json_object_get(json_array_get(ob, 0), "req"));
    const char *req2 = json_string_value(json_object_get(json_array_get(ob, 1), "req"));
    bool ok = json_array_size(ob) == 2 && req1 && req2 && strlen(req1) == 32 &&
              strlen(req2) == 32 && strspn(req1, "0123456789abcdef") == 32 &&
              strcmp(req1, req2) != 0;
    char req1_copy[33] = "";
    if (ok)
        memcpy(req1_copy, req1, 33);
    json_decref(ob);
    CHECK(ok);
    uint64_t k1, k2, k3;
    uint8_t *entry;
    size_t len;
    CHECK_OK(cs_engine_outbox_next(b.e, 0, &k1, &entry, &len));
    free(entry);
    CHECK_OK(cs_engine_outbox_next(b.e, k1, &k2, &entry, &len));
    free(entry);
    CHECK(k2 > k1);
    CHECK(cs_engine_outbox_next(b.e, k2, &k3, &entry, &len) == CS_NOT_FOUND);
    cs_remote_answer no = {.code = CS_VERSION_CONFLICT, .id = w1.id};
    snprintf(no.message, sizeof(no.message), "customer %llu is at version 4, not 1",
             (unsigned long long)w1.id);
    cs_remote_answer yes = {.code = CS_OK, .id = w2.id, .version = 1, .seq = 9};
    CHECK_OK(cs_engine_outbox_done(b.e, k1, &no));
    CHECK_OK(cs_engine_outbox_done(b.e, k1, &no)); /* a second answer changes nothing */
    CHECK_OK(cs_engine_outbox_done(b.e, k2, &yes));
    CHECK(cs_engine_outbox_next(b.e, 0, &k3, &entry, &len) == CS_NOT_FOUND);
    json_t *rej;
    CHECK_OK(cs_engine_rejected(b.e, &rej));
    json_t *r0 = json_array_get(rej, 0);
    ok = json_array_size(rej) == 1 &&
         strcmp(json_string_value(json_object_get(r0, "type")), "customer") == 0 &&
         (uint64_t)json_integer_value(json_object_get(r0, "id")) == w1.id &&
         json_integer_value(json_object_get(r0, "version")) == 1 &&
         strcmp(json_string_value(json_object_get(r0, "code")), "version_conflict") == 0 &&
         strstr(json_string_value(json_object_get(r0, "message")), "version 4") &&
         strcmp(json_string_value(json_object_get(r0, "req")), req1_copy) == 0;
    json_decref(rej);
    CHECK(ok);
    branch_close(&b);
    net_close(&n);
}

int main(void)
{
    RUN(test_auth_keys_are_the_standard_constructions);
    RUN(test_auth_proof_accepts_right_password_refuses_wrong_and_replayed_message);
    RUN(test_auth_unknown_shop_gets_decoy_salt_stable_per_id);
    RUN(test_auth_keys_are_forbidden_outside_a_head_office);
    RUN(test_r9_secrets_hold_no_password_hash);
    RUN(test_status_save_and_shop_list_lag);
    RUN(test_r8_remote_write_applies_once_for_a_resent_request);
    RUN(test_r8_remote_write_version_conflict_is_remembered);
    RUN(test_r8_remote_write_refuses_catalog_type);
    RUN(test_r8_remote_write_refusals_change_nothing);
    RUN(test_r8_outbox_done_rejected_listed);
    return cs_test_finish();
}
