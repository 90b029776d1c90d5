/*
 * network.c: the shop and network commands (SPEC R5, R6, R7, R9-R12): init, network create,
 * synced types, mode, WhatsApp, shops (add, switch, password, unlink, WhatsApp), sync points,
 * and the check of a shop's password against its stored keys (cs_engine_shop_auth).
 *
 * Every command is a net_cmd: a check of the caller's role and the arguments against the state,
 * then one event. Roles (R11): a single store may run only `init` and `network create`
 * (else not_in_network); a branch runs none of them (forbidden); the head office runs all.
 * A password is turned into keys with argon2id before the write transaction (it may run twice)
 * and only the keys (auth.c: StoredKey, ServerKey) go to `secrets`, never to the log (R9).
 */
#include "engine/engine_int.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_BYTES 120
#define PASSWORD_MIN_BYTES 8
#define PASSWORD_MAX_BYTES 128
#define PHONE_MIN_BYTES 4
#define PHONE_MAX_BYTES 32
#define SHOP_ID_TRIES_MAX 64

typedef struct net_cmd net_cmd;
typedef cs_err (*net_check_fn)(net_cmd *c, cs_log_txn *txn);

struct net_cmd {
    cs_engine *e;
    net_check_fn check; /* validates; may fill the event's id and fields */
    cs_role need;       /* CS_ROLE_HEAD, or CS_ROLE_SINGLE for network create */
    cs_kind kind;
    uint64_t id;
    json_t *fields;        /* owned by the caller of run() */
    const uint8_t *secret; /* the `secrets` record to store for `id` (auth.c), or NULL */
    size_t secret_len;
    uint64_t self;
    uint64_t seq;
    bool sync_if_continuous; /* R5d made prompt: also a sync point when the mode is continuous */
    uint64_t sync_shop;      /* ... for this branch, 0 = every branch */
};

static cs_err check_role(net_cmd *c, cs_role role)
{
    cs_engine *e = c->e;
    if (c->need == CS_ROLE_NONE) /* init: the one command for an empty directory */
        return role == CS_ROLE_NONE ? CS_OK
                                    : cs__fail(e, CS_FORBIDDEN, "this directory is already a shop");
    if (role == CS_ROLE_NONE)
        return cs__fail(e, CS_NOT_FOUND, "this directory is not initialised: run chainsync init");
    if (role == CS_ROLE_BRANCH)
        return cs__fail(e, CS_FORBIDDEN, "only the head office can do this; this shop is a branch");
    if (c->need == CS_ROLE_HEAD && role == CS_ROLE_SINGLE)
        return cs__fail(e, CS_NOT_IN_NETWORK,
                        "this shop is a single store: create a network first (network create)");
    if (c->need == CS_ROLE_SINGLE && role == CS_ROLE_HEAD)
        return cs__fail(e, CS_FORBIDDEN, "this shop is already the head office of a network");
    return CS_OK;
}

static cs_err put_secret(net_cmd *c, cs_log_txn *txn)
{
    uint8_t kb[8];
    cs_be64_put(kb, c->id ? c->id : c->self);
    MDB_val k = {8, kb}, v = {c->secret_len, (void *)c->secret};
    return cs_log_txn_put(txn, c->e->secrets, &k, &v, 0);
}

/* The network's mode as the state holds it now (after this command's own event applied). */
static cs_err is_continuous(cs_engine *e, MDB_txn *m, bool *yes)
{
    json_t *net = NULL;
    cs_err err = cs__net_get(m, e->network, "net", 3, &net);
    if (err == CS_NOT_FOUND) { /* a single store: no network, no mode */
        *yes = false;
        return CS_OK;
    }
    if (err != CS_OK) /* a damaged `net` is never read as "on-trigger" (issue 12) */
        return cs__fail(e, err, "cannot read the network record `net`%s",
                        err == CS_CORRUPT ? ": it is not JSON; the store is damaged" : "");
    *yes = json_is_string(json_object_get(net, "mode")) &&
           strcmp(json_string_value(json_object_get(net, "mode")), "continuous") == 0;
    json_decref(net);
    return CS_OK;
}

/* In continuous mode every catalog event is a sync point (R5d); a switch turned on, types put
 * back or the mode itself turned on would otherwise wait for the next catalog event, which may
 * be hours away. So these commands append a sync point of their own, in the same transaction,
 * with the same meaning as `chainsync sync` (docs/design.md, "Continuous mode"). */
static cs_err emit_sync(net_cmd *c, cs_log_txn *txn)
{
    cs_engine *e = c->e;
    static const uint8_t empty_map[1] = {0x80};
    cs_event ev = {.shop = c->self,
                   .id = c->sync_shop,
                   .actor = {e->actor, strlen(e->actor)},
                   .kind = cs_kind_str(CS_KIND_SYNC),
                   .fields = empty_map,
                   .fields_len = sizeof(empty_map),
                   .schema = CS_SCHEMA_VERSION};
    return cs__emit(e, txn, &ev, 1, &c->seq);
}

static cs_err net_fn(cs_log_txn *txn, void *ctx)
{
    net_cmd *c = ctx;
    cs_engine *e = c->e;
    cs_assert(c->kind != CS_KIND_UNKNOWN); /* every command names the kind it logs */
    msgpack_zone_clear(&e->zone);
    cs_role role = CS_ROLE_NONE;
    cs_err err = cs__role_get(cs_log_txn_mdb(txn), e, &role, &c->self);
    if (err == CS_OK)
        err = check_role(c, role);
    if (err == CS_OK && c->check)
        err = c->check(c, txn);
    if (err == CS_OK && c->secret)
        err = put_secret(c, txn);
    if (err != CS_OK)
        return err;
    cs__pack p;
    cs__pack_init(&p);
    cs__pack_json(&p.pk, c->fields);
    cs_event ev = {.shop = c->self,
                   .id = c->id,
                   .actor = {e->actor, strlen(e->actor)},
                   .kind = cs_kind_str(c->kind),
                   .fields = (const uint8_t *)p.sb.data,
                   .fields_len = p.sb.size,
                   .schema = CS_SCHEMA_VERSION};
    err = p.failed ? CS_NO_MEMORY : cs__emit(e, txn, &ev, 1, &c->seq);
    cs__pack_destroy(&p);
    bool continuous = false;
    if (err == CS_OK && c->sync_if_continuous)
        err = is_continuous(e, cs_log_txn_mdb(txn), &continuous);
    if (err == CS_OK && continuous)
        err = emit_sync(c, txn);
    return err;
}

static cs_err run(net_cmd *c)
{
    c->e->errmsg[0] = '\0';
    if (!c->fields)
        return CS_NO_MEMORY;
    return cs_log_write(cs_engine_log(c->e), net_fn, c);
}

static cs_err check_name(cs_engine *e, const char *what, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > NAME_MAX_BYTES)
        return cs__fail(e, CS_INVALID_INPUT, "%s name must be 1 to %d bytes", what, NAME_MAX_BYTES);
    /* Names are str in the log and text in JSON: a byte that is no UTF-8 is refused here, with
     * a sentence, not later as an event the log refuses (or JSON cannot hold). */
    if (cs_utf8_prefix(name, n) != n)
        return cs__fail(e, CS_INVALID_INPUT, "%s name must be UTF-8 (byte %zu is not)", what,
                        cs_utf8_prefix(name, n) + 1);
    return CS_OK;
}

/* A linked branch of this network, as stored; CS_NOT_FOUND otherwise. *out owned by caller. */
static cs_err get_shop(cs_engine *e, MDB_txn *m, uint64_t shop, json_t **out)
{
    char key[13];
    cs__shop_key(key, shop);
    cs_err err = cs__net_get(m, e->network, key, 13, out);
    if (err == CS_NOT_FOUND)
        return cs__fail(e, err, "shop %llu is not a branch of this network",
                        (unsigned long long)shop);
    if (err == CS_OK && !json_is_true(json_object_get(*out, "linked"))) {
        json_decref(*out);
        return cs__fail(e, CS_NOT_FOUND, "shop %llu was unlinked from this network",
                        (unsigned long long)shop);
    }
    return err;
}

static cs_err check_linked_shop(net_cmd *c, cs_log_txn *txn)
{
    json_t *shop;
    cs_err err = get_shop(c->e, cs_log_txn_mdb(txn), c->id, &shop);
    if (err == CS_OK)
        json_decref(shop);
    return err;
}

/* ---- init and network create ------------------------------------------------------------- */

static uint64_t random_shop_id(void)
{
    return 1 + randombytes_uniform(0x7ffffffeu); /* 31 bits: ids stay below 2^63 */
}

static cs_err check_init(net_cmd *c, cs_log_txn *txn)
{
    (void)txn;
    c->self = c->id; /* the event's shop is the new shop itself */
    return CS_OK;
}

cs_err cs_engine_init(cs_engine *e, const char *name, uint64_t *shop_out)
{
    e->errmsg[0] = '\0';
    cs_err err = check_name(e, "a shop", name);
    if (err != CS_OK)
        return err;
    MDB_txn *m;
    if ((err = cs__read_begin(e, &m)) != CS_OK)
        return err;
    cs_role role = cs__role(m, e, NULL);
    cs_log_read_end(e->log, m);
    if (role != CS_ROLE_NONE)
        return cs__fail(e, CS_FORBIDDEN, "this directory is already a %s shop", cs_role_name(role));
    if (sodium_init() < 0)
        return CS_NO_MEMORY;
    net_cmd c = {.e = e,
                 .kind = CS_KIND_INIT,
                 .id = random_shop_id(),
                 .check = check_init,
                 .fields = json_pack("{s:s}", "name", name)};
    err = run(&c);
    json_decref(c.fields);
    if (err == CS_OK && shop_out)
        *shop_out = c.id;
    return err;
}

/* The decoy secret that unknown shops' challenges are made from (auth.c) is born with the
 * network; it is no state (not logged, not digested) but lives in `secrets`. */
static cs_err check_network_create(net_cmd *c, cs_log_txn *txn)
{
    return cs__decoy_ensure(c->e, txn);
}

cs_err cs_engine_network_create(cs_engine *e, const char *name)
{
    e->errmsg[0] = '\0';
    cs_err err = check_name(e, "a network", name);
    if (err != CS_OK)
        return err;
    json_t *types = json_array();
    unsigned n;
    const cs_type *t = cs_schema_types(&n);
    for (unsigned i = 0; types && i < n; i++)
        if (t[i].cls == CS_CLASS_SYNCED && json_array_append_new(types, json_string(t[i].name))) {
            json_decref(types);
            types = NULL;
        }
    if (!types)
        return CS_NO_MEMORY;
    net_cmd c = {.e = e,
                 .need = CS_ROLE_SINGLE,
                 .kind = CS_KIND_NETWORK,
                 .check = check_network_create,
                 .fields = json_pack("{s:s,s:s,s:o,s:s,s:n}", "name", name, "mode", "on-trigger",
                                     "types", types, "whatsapp_mode", "shared", "whatsapp_number")};
    err = run(&c);
    json_decref(c.fields);
    return err;
}

/* Reads the network record for a query; only the head office has one. */
static cs_err read_net(cs_engine *e, json_t **out)
{
    MDB_txn *m;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    net_cmd c = {.e = e, .need = CS_ROLE_HEAD};
    err = check_role(&c, cs__role(m, e, NULL));
    if (err == CS_OK)
        err = cs__net_get(m, e->network, "net", 3, out);
    cs_log_read_end(e->log, m);
    return err;
}

/* Runs a network-settings change, or only reads when fields is NULL; then reads back. */
/* network_types and network_mode also make a sync point in continuous mode (emit_sync). */
static cs_err net_setting(cs_engine *e, cs_kind kind, json_t *fields, json_t **net_out)
{
    e->errmsg[0] = '\0';
    cs_err err = CS_OK;
    if (fields) {
        net_cmd c = {.e = e,
                     .need = CS_ROLE_HEAD,
                     .kind = kind,
                     .fields = fields,
                     .sync_if_continuous = kind != CS_KIND_NETWORK_WHATSAPP};
        err = run(&c);
    }
    if (err == CS_OK)
        err = read_net(e, net_out);
    return err;
}

cs_err cs_engine_network_types(cs_engine *e, const char *const *types, size_t n, json_t **out)
{
    json_t *set = NULL;
    if (types) {
        unsigned count;
        const cs_type *all = cs_schema_types(&count);
        for (size_t i = 0; i < n; i++) {
            const cs_type *t = cs_schema_find(types[i]);
            if (!t)
                return cs__fail(e, CS_UNKNOWN_TYPE, "'%s' is not a type", types[i]);
            if (t->cls != CS_CLASS_SYNCED)
                return cs__fail(e, CS_INVALID_INPUT, "%s is not a catalog type: %s", types[i],
                                t->cls == CS_CLASS_SHARED ? "shared records reach every shop"
                                                          : "it never leaves its shop");
        }
        set = json_array(); /* schema order, each once, whatever order the caller used */
        for (unsigned i = 0; set && i < count; i++)
            for (size_t j = 0; j < n; j++)
                if (strcmp(all[i].name, types[j]) == 0) {
                    if (json_array_append_new(set, json_string(all[i].name))) {
                        json_decref(set);
                        set = NULL;
                    }
                    break;
                }
        if (!set)
            return CS_NO_MEMORY;
    }
    json_t *fields = set ? json_pack("{s:o}", "types", set) : NULL;
    if (set && !fields)
        return CS_NO_MEMORY; /* not a silent read instead of the change asked for */
    json_t *net = NULL;
    cs_err err = net_setting(e, CS_KIND_NETWORK_TYPES, fields, &net);
    json_decref(fields);
    if (err == CS_OK && out)
        *out = json_incref(json_object_get(net, "types"));
    json_decref(net);
    return err;
}

cs_err cs_engine_network_mode(cs_engine *e, const char *mode, const char **out)
{
    if (mode && strcmp(mode, "on-trigger") != 0 && strcmp(mode, "continuous") != 0)
        return cs__fail(e, CS_INVALID_INPUT, "mode must be on-trigger or continuous, not '%s'",
                        mode);
    json_t *fields = mode ? json_pack("{s:s}", "mode", mode) : NULL;
    if (mode && !fields)
        return CS_NO_MEMORY;
    json_t *net = NULL;
    cs_err err = net_setting(e, CS_KIND_NETWORK_MODE, fields, &net);
    json_decref(fields);
    if (err == CS_OK && out)
        *out = strcmp(json_string_value(json_object_get(net, "mode")), "continuous") == 0
                   ? "continuous"
                   : "on-trigger";
    json_decref(net);
    return err;
}

static cs_err check_phone(cs_engine *e, const char *number)
{
    size_t n = strlen(number);
    if (n < PHONE_MIN_BYTES || n > PHONE_MAX_BYTES || strspn(number, "+0123456789 -()") != n)
        return cs__fail(e, CS_INVALID_INPUT,
                        "'%s' is not a phone number (%d to %d digits, +, spaces, dashes)", number,
                        PHONE_MIN_BYTES, PHONE_MAX_BYTES);
    return CS_OK;
}

cs_err cs_engine_network_whatsapp(cs_engine *e, const char *mode, const char *number, json_t **out)
{
    if (mode && strcmp(mode, "shared") != 0 && strcmp(mode, "individual") != 0)
        return cs__fail(e, CS_INVALID_INPUT, "WhatsApp mode must be shared or individual");
    if (number && check_phone(e, number) != CS_OK)
        return CS_INVALID_INPUT;
    json_t *fields = NULL;
    if (mode || number) {
        fields = json_object();
        int jrc = !fields;
        if (!jrc && mode)
            jrc |= json_object_set_new(fields, "whatsapp_mode", json_string(mode));
        if (!jrc && number)
            jrc |= json_object_set_new(fields, "whatsapp_number", json_string(number));
        if (jrc) {
            json_decref(fields);
            return CS_NO_MEMORY;
        }
    }
    json_t *net = NULL;
    cs_err err = net_setting(e, CS_KIND_NETWORK_WHATSAPP, fields, &net);
    json_decref(fields);
    if (err == CS_OK && out)
        *out = json_pack("{s:O,s:O}", "mode", json_object_get(net, "whatsapp_mode"), "number",
                         json_object_get(net, "whatsapp_number"));
    json_decref(net);
    return err;
}

/* ---- shops ------------------------------------------------------------------------------- */

/* The `secrets` record of a new password: argon2id once, then only the keys are kept. */
static cs_err hash_password(cs_engine *e, const char *password,
                            uint8_t secret[CS__SECRET_BYTES_MAX], size_t *secret_len)
{
    size_t n = password ? strlen(password) : 0;
    if (n < PASSWORD_MIN_BYTES || n > PASSWORD_MAX_BYTES)
        return cs__fail(e, CS_INVALID_INPUT, "a password has %d to %d bytes", PASSWORD_MIN_BYTES,
                        PASSWORD_MAX_BYTES);
    cs_auth_keys k;
    cs_err err = cs__auth_keys_new(password, &k);
    if (err == CS_OK)
        err = cs__secret_encode(&k, secret, secret_len);
    sodium_memzero(&k, sizeof(k));
    if (err != CS_OK)
        return cs__fail(e, CS_NO_MEMORY, "cannot derive the password's keys (out of memory)");
    return CS_OK;
}

static cs_err check_shop_add(net_cmd *c, cs_log_txn *txn)
{
    for (int i = 0; i < SHOP_ID_TRIES_MAX; i++) {
        c->id = random_shop_id();
        json_t *old;
        char key[13];
        cs__shop_key(key, c->id);
        cs_err err = cs__net_get(cs_log_txn_mdb(txn), c->e->network, key, 13, &old);
        if (err == CS_NOT_FOUND && c->id != c->self)
            return CS_OK;
        if (err == CS_OK)
            json_decref(old);
    }
    return cs__fail(c->e, CS_STORAGE_FULL, "no free shop id found");
}

cs_err cs_engine_shop_add(cs_engine *e, const char *name, const char *password, uint64_t *shop_out)
{
    e->errmsg[0] = '\0';
    uint8_t secret[CS__SECRET_BYTES_MAX];
    size_t secret_len = 0;
    cs_err err = check_name(e, "a shop", name);
    if (err == CS_OK)
        err = hash_password(e, password, secret, &secret_len);
    if (err != CS_OK)
        return err;
    net_cmd c = {.e = e,
                 .need = CS_ROLE_HEAD,
                 .kind = CS_KIND_SHOP_ADD,
                 .check = check_shop_add,
                 .secret = secret,
                 .secret_len = secret_len,
                 .fields =
                     json_pack("{s:s,s:s,s:n}", "name", name, "role", "branch", "whatsapp_number")};
    err = run(&c);
    json_decref(c.fields);
    if (err == CS_OK && shop_out)
        *shop_out = c.id;
    return err;
}

static cs_err shop_event(cs_engine *e, uint64_t shop, cs_kind kind, json_t *fields)
{
    /* a switch turned on in continuous mode is brought up to date at once (emit_sync) */
    bool on = kind == CS_KIND_SHOP_SWITCH && json_is_true(json_object_get(fields, "switch"));
    net_cmd c = {.e = e,
                 .need = CS_ROLE_HEAD,
                 .kind = kind,
                 .id = shop,
                 .check = check_linked_shop,
                 .fields = fields,
                 .sync_if_continuous = on,
                 .sync_shop = shop};
    cs_err err = run(&c);
    json_decref(fields);
    return err;
}

cs_err cs_engine_shop_switch(cs_engine *e, uint64_t shop, bool on)
{
    return shop_event(e, shop, CS_KIND_SHOP_SWITCH, json_pack("{s:b}", "switch", on));
}

cs_err cs_engine_shop_unlink(cs_engine *e, uint64_t shop)
{
    return shop_event(e, shop, CS_KIND_SHOP_UNLINK, json_pack("{s:b}", "linked", 0));
}

cs_err cs_engine_shop_whatsapp(cs_engine *e, uint64_t shop, const char *number)
{
    e->errmsg[0] = '\0';
    if (!number)
        return cs__fail(e, CS_INVALID_INPUT, "shop %llu: a WhatsApp number is required",
                        (unsigned long long)shop);
    if (check_phone(e, number) != CS_OK)
        return CS_INVALID_INPUT;
    cs_shop_info self;
    if (cs_engine_self(e, &self) == CS_OK && self.id == shop) /* the head office's own */
        return cs_engine_network_whatsapp(e, NULL, number, NULL);
    return shop_event(e, shop, CS_KIND_SHOP_WHATSAPP,
                      json_pack("{s:s}", "whatsapp_number", number));
}

static cs_err check_password_target(net_cmd *c, cs_log_txn *txn)
{
    if (c->id == c->self)
        return CS_OK; /* the head office's own password */
    return check_linked_shop(c, txn);
}

cs_err cs_engine_shop_password(cs_engine *e, uint64_t shop, const char *password)
{
    e->errmsg[0] = '\0';
    uint8_t secret[CS__SECRET_BYTES_MAX];
    size_t secret_len = 0;
    cs_err err = hash_password(e, password, secret, &secret_len);
    if (err != CS_OK)
        return err;
    /* R9: the event says that it changed, never what to. */
    net_cmd c = {.e = e,
                 .need = CS_ROLE_HEAD,
                 .kind = CS_KIND_SHOP_PASSWORD,
                 .id = shop,
                 .check = check_password_target,
                 .secret = secret,
                 .secret_len = secret_len,
                 .fields = json_object()};
    err = run(&c);
    json_decref(c.fields);
    return err;
}

cs_err cs_engine_shop_auth(cs_engine *e, uint64_t shop, const char *password)
{
    e->errmsg[0] = '\0';
    MDB_txn *m;
    cs_err err = cs__read_begin(e, &m);
    if (err != CS_OK)
        return err;
    cs_auth_keys k;
    err = cs__secret_read(e, m, shop, &k);
    cs_log_read_end(e->log, m);
    if (err != CS_OK && err != CS_NOT_FOUND)
        return cs__fail(e, err, "shop %llu: its stored keys cannot be read",
                        (unsigned long long)shop);
    cs_auth_client c;
    uint8_t stored[CS_AUTH_KEY_BYTES];
    bool ok = err == CS_OK && cs_auth_derive(password, &k.params, &c) == CS_OK;
    if (ok) {
        cs_auth_stored_key(&c, stored);
        ok = sodium_memcmp(stored, k.stored_key, CS_AUTH_KEY_BYTES) == 0;
        sodium_memzero(&c, sizeof(c));
    }
    sodium_memzero(&k, sizeof(k));
    if (!ok)
        return cs__fail(e, CS_AUTH_FAILED, "shop %llu: wrong password or unknown shop",
                        (unsigned long long)shop);
    return CS_OK;
}

cs_err cs_engine_sync(cs_engine *e, uint64_t shop, uint64_t *seq_out)
{
    e->errmsg[0] = '\0';
    net_cmd c = {.e = e,
                 .need = CS_ROLE_HEAD,
                 .kind = CS_KIND_SYNC,
                 .id = shop,
                 .check = shop ? check_linked_shop : NULL,
                 .fields = json_object()};
    cs_err err = run(&c);
    json_decref(c.fields);
    if (err == CS_OK && seq_out)
        *seq_out = c.seq;
    return err;
}
