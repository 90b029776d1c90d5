/*
 * engine.h: the public contract of chainsync's engine: the schema table of every item type,
 * the network model (shops, roles, synced types, modes), and the commands that turn a request
 * into validated events. A command is checked against the current state and, when accepted,
 * its events and the new state commit in one LMDB transaction (SPEC 4), through log/log.h.
 *
 * State is a pure function of the log: every change goes through one apply step that replays
 * identically (cs_engine_replay_digest proves it). What the log must not carry (R9: password
 * hashes, staff and shop info) lives in databases outside that digest.
 *
 * Items cross this API as jansson objects (SPEC 7 shapes); the engine converts JSON <-> msgpack
 * by the schema table. Every refusal returns a code and leaves a sentence in
 * cs_engine_errmsg naming the field, item or shop (SPEC 6).
 */
#ifndef CS_ENGINE_H
#define CS_ENGINE_H

#include "log/log.h"

#include <jansson.h>

/* ---- event kinds ------------------------------------------------------------------------- */

/* Every kind of event the engine logs, with its stable name: the `kind` string of a log event
 * (docs/design.md lists their fields). The log stores only the name; names are part of the
 * on-disk format and never change. Add new kinds at the end; every `switch` over a cs_kind
 * lists each one (no default), so -Wswitch names each place a new kind must be handled. */
#define CS_EVENT_KINDS(X)                                                                          \
    X(CS_KIND_INIT, "init")                                                                        \
    X(CS_KIND_NETWORK, "network")                                                                  \
    X(CS_KIND_PUT, "put")                                                                          \
    X(CS_KIND_DELETE, "delete")                                                                    \
    X(CS_KIND_SHOP_ADD, "shop_add")                                                                \
    X(CS_KIND_SHOP_SWITCH, "shop_switch")                                                          \
    X(CS_KIND_SHOP_UNLINK, "shop_unlink")                                                          \
    X(CS_KIND_SHOP_PASSWORD, "shop_password")                                                      \
    X(CS_KIND_NETWORK_TYPES, "network_types")                                                      \
    X(CS_KIND_NETWORK_MODE, "network_mode")                                                        \
    X(CS_KIND_NETWORK_WHATSAPP, "network_whatsapp")                                                \
    X(CS_KIND_SHOP_WHATSAPP, "shop_whatsapp")                                                      \
    X(CS_KIND_SYNC, "sync")

typedef enum cs_kind {
    CS_KIND_UNKNOWN, /* a string outside the table: never emitted, only parsed */
#define CS_KIND_ENUM(code, name) code,
    CS_EVENT_KINDS(CS_KIND_ENUM)
#undef CS_KIND_ENUM
} cs_kind;

/* CS_KIND_UNKNOWN and the table's kinds: outside the enum, so that a switch lists only kinds. */
#define CS_KIND_ONE(code, name) +1
enum { CS_KIND_COUNT = 1 CS_EVENT_KINDS(CS_KIND_ONE) };
#undef CS_KIND_ONE

/* The kind named s (an event's `kind`, an outbox entry's); CS_KIND_UNKNOWN when none is. */
cs_kind cs_kind_parse(cs_str s);
/* The stable name of a kind ("put"); "unknown" for CS_KIND_UNKNOWN or a value outside the
 * table (which cs_kind_parse maps back to CS_KIND_UNKNOWN). Static. */
const char *cs_kind_name(cs_kind kind);
/* The same as a cs_str, for a cs_event's kind. Static. */
cs_str cs_kind_str(cs_kind kind);

/* put and delete: the events that write an item (the rest change the network). */
static inline bool cs_kind_is_item(cs_kind kind)
{
    return kind == CS_KIND_PUT || kind == CS_KIND_DELETE;
}

/* ---- schema ------------------------------------------------------------------------------ */

/* Every type's code: stable on disk (the first byte of an item key, docs/storage.md "items"),
 * never renumbered. Ranges by class: synced catalog types from 1, shared records from 32,
 * shop-local types from 64. */
typedef enum cs_type_code {
    CS_TYPE_SERVICE_CATEGORY = 1,
    CS_TYPE_SERVICE = 2,
    CS_TYPE_COMBO = 3,
    CS_TYPE_PLAN = 4,
    CS_TYPE_PAYMENT_METHOD = 5,
    CS_TYPE_CHECKLIST = 6,
    CS_TYPE_NOTIFICATION_TEMPLATE = 7,
    CS_TYPE_PETCARE_CATEGORY = 8,
    CS_TYPE_DOCUMENT_TEMPLATE = 9,
    CS_TYPE_VACCINE = 10,
    CS_TYPE_SEGMENT = 11,
    CS_TYPE_ADVANCED_SETTING = 12,
    CS_TYPE_SPECIES = 32,
    CS_TYPE_BREED = 33,
    CS_TYPE_CUSTOMER = 34,
    CS_TYPE_PET = 35,
    CS_TYPE_BREEDING_ANIMAL = 36,
    CS_TYPE_CUSTOM_FIELD = 37,
    CS_TYPE_STAFF = 64,
    CS_TYPE_SHOP_INFO = 65,
} cs_type_code;

/* The largest code a synced type may have: a cs_type_set is one bit per code of a uint64_t.
 * schema.c refuses at compile time a synced type with a larger code. */
#define CS_TYPE_SYNCED_CODE_MAX 63u
_Static_assert(CS_TYPE_SYNCED_CODE_MAX < 64, "a cs_type_set holds every synced type code");
_Static_assert(CS_TYPE_ADVANCED_SETTING <= CS_TYPE_SYNCED_CODE_MAX, "synced codes fit the set");

/* The version of schema.c's table this build writes (issue 14, "A format that outlives
 * versions"): events and snapshots name it, and a reader that meets a newer one than it knows
 * stops with protocol_mismatch naming it instead of dropping fields. What changed between
 * versions is recorded beside the table in schema.c. */
#define CS_SCHEMA_VERSION 2u

/* What changed between two schema versions, one entry per change (schema.c's change table,
 * docs/design.md "Schema versions"). The table is data: reading an item written under an older
 * version (cs_schema_upgrade) applies the entries after that version, in order. */
typedef enum cs_schema_change_kind {
    CS_SCHEMA_FIELD_ADDED,   /* type.field is new; items written before read as `dflt` */
    CS_SCHEMA_FIELD_RENAMED, /* type.from is called type.field from this version on */
    CS_SCHEMA_TYPE_ADDED,    /* the type is new: older builds refuse its events (they are newer) */
    CS_SCHEMA_KIND_ADDED,    /* the event kind `type` is new: the same */
} cs_schema_change_kind;

typedef struct cs_schema_change {
    uint32_t version; /* the first version that has the change */
    cs_schema_change_kind what;
    const char *type;  /* the item type (CS_SCHEMA_KIND_ADDED: the event kind) */
    const char *field; /* FIELD_ADDED: the new field; FIELD_RENAMED: its new name; else NULL */
    const char *from;  /* FIELD_RENAMED: the old name; else NULL */
    const char *dflt;  /* FIELD_ADDED: JSON text of the value an older item reads as, or NULL:
                        * an optional field an older item simply does not have */
} cs_schema_change;

/* The change table of this build, oldest first. Borrowed, static. */
const cs_schema_change *cs_schema_changes(unsigned *count_out);

/* Can this build read an event written with schema version `version`? CS_OK for 1 to
 * CS_SCHEMA_VERSION; CS_PROTOCOL_MISMATCH for a newer one, with msg (NUL-terminated, at most
 * msg_len bytes) naming event `seq`, its version and the version a build needs to read it.
 * Never "apply what we understand": an older reader cannot know what a newer change means
 * (docs/design.md "Schema versions"), so it stops and drops nothing. */
cs_err cs_schema_check_version(uint64_t seq, uint64_t version, char *msg, size_t msg_len);

typedef enum cs_type_class {
    CS_CLASS_SYNCED, /* head-office catalog, mirrored to branches as copies */
    CS_CLASS_SHARED, /* one record network-wide, written at any shop (R8) */
    CS_CLASS_LOCAL,  /* never leaves its shop (R9) */
} cs_type_class;

typedef enum cs_field_kind {
    CS_FIELD_STRING,
    CS_FIELD_INT,
    CS_FIELD_BOOL,
    CS_FIELD_ENUM,
    CS_FIELD_REF,         /* an item id of ref_type */
    CS_FIELD_REF_LIST,    /* a list of item ids of ref_type */
    CS_FIELD_STRING_LIST, /* a list of strings */
    CS_FIELD_INT_LIST,    /* a list of integers */
    CS_FIELD_OBJECT,      /* a map with sub-fields */
    CS_FIELD_OBJECT_LIST, /* a list of maps with sub-fields */
} cs_field_kind;

typedef struct cs_field {
    const char *name;
    cs_field_kind kind;
    bool required;
    int64_t min; /* INT: smallest value; lists: fewest items; STRING: fewest bytes */
    int64_t max; /* INT: largest value; lists: most items; STRING: most bytes */
    const char *const *enum_values; /* ENUM: NULL-terminated */
    const char *ref_type;           /* REF, REF_LIST: the referenced type's name */
    const struct cs_field *sub;     /* OBJECT, OBJECT_LIST */
    unsigned nsub;
} cs_field;

typedef struct cs_type {
    const char *name;
    uint8_t code; /* stable on disk: the first byte of an item key */
    cs_type_class cls;
    const cs_field *fields;
    unsigned nfields;
} cs_type;

/* The static schema table (SPEC 2). Borrowed, lives forever. */
const cs_type *cs_schema_types(unsigned *count_out);
/* NULL when unknown. */
const cs_type *cs_schema_find(const char *name);
/* The same for a name that is not NUL-terminated (an event's `type`). */
const cs_type *cs_schema_find_str(cs_str name);
const cs_type *cs_schema_by_code(uint8_t code);

/* The fields of an item of type t written under schema version `from`, read under version
 * `to` of the given change table: renames applied and defaults filled, then validated and
 * packed canonically (cs_schema_from_json). When no change between the two versions touches
 * t's fields the bytes are already right: *out is NULL and nothing is allocated. Otherwise *out
 * is owned by the caller (free()). Errors: CS_INVALID_INPUT with msg (the old fields do not
 * validate under the new schema), CS_CORRUPT (fields not a msgpack map), CS_NO_MEMORY. */
cs_err cs_schema_upgrade_with(const cs_schema_change *changes, unsigned nchanges, uint32_t to,
                              const cs_type *t, uint64_t from, const uint8_t *fields, size_t len,
                              uint8_t **out, size_t *out_len, char *msg, size_t msg_len);
/* The same with this build's table, to CS_SCHEMA_VERSION: what both apply paths call. */
cs_err cs_schema_upgrade(const cs_type *t, uint64_t from, const uint8_t *fields, size_t len,
                         uint8_t **out, size_t *out_len, char *msg, size_t msg_len);

/* A set of synced types (a network's synced set, R7), by code: bit `code` of a uint64_t, which
 * CS_TYPE_SYNCED_CODE_MAX keeps in range. A value; the empty set is {0}. */
typedef struct cs_type_set {
    uint64_t bits;
} cs_type_set;

/* False for a code no synced type can have (a shared or local type is never in the set). */
static inline bool cs_type_set_has(cs_type_set s, uint8_t code)
{
    return code <= CS_TYPE_SYNCED_CODE_MAX && (s.bits & ((uint64_t)1 << code)) != 0;
}

static inline void cs_type_set_add(cs_type_set *s, uint8_t code)
{
    cs_assert(code <= CS_TYPE_SYNCED_CODE_MAX);
    s->bits |= (uint64_t)1 << code;
}

static inline void cs_type_set_del(cs_type_set *s, uint8_t code)
{
    cs_assert(code <= CS_TYPE_SYNCED_CODE_MAX);
    s->bits &= ~((uint64_t)1 << code);
}

/* JSON object -> canonical msgpack map (fields in schema order). Validates kinds, required
 * fields, unknown fields, limits and enum values; not references (that needs state).
 * *out is owned by the caller (free()). Errors: CS_INVALID_INPUT with msg (NUL-terminated,
 * msg_len bytes at most) naming the field; CS_NO_MEMORY. */
cs_err cs_schema_from_json(const cs_type *t, const json_t *obj, uint8_t **out, size_t *out_len,
                           char *msg, size_t msg_len);

/* msgpack map (as stored) -> JSON object of the fields. New reference, owned by the caller. */
cs_err cs_schema_to_json(const cs_type *t, const msgpack_object *fields, json_t **out);

/* Calls fn for every reference in fields, with the referenced type and id and the field's path
 * ("services[1]"). Stops at and returns the first error fn returns. */
typedef cs_err (*cs_schema_ref_fn)(const cs_type *target, uint64_t id, const char *path, void *ctx);
cs_err cs_schema_refs(const cs_type *t, const msgpack_object *fields, cs_schema_ref_fn fn,
                      void *ctx);

/* Packs fields with every reference replaced by map(target, id) — how a copy on a branch points
 * at the branch's own copies (R2). Appends to the caller's sbuffer. Errors: whatever map
 * returns, CS_NO_MEMORY. */
typedef cs_err (*cs_schema_map_fn)(const cs_type *target, uint64_t id, uint64_t *mapped, void *ctx);
cs_err cs_schema_remap(const cs_type *t, const msgpack_object *fields, cs_schema_map_fn map,
                       void *ctx, msgpack_sbuffer *out);

/* ---- item records ------------------------------------------------------------------------ */

/* An item as stored in an `items` database (docs/storage.md, "engine"): the record is the
 * msgpack array [version, archived, origin, detached_from, fields], origin and detached_from
 * nil or [shop, id, version]. Shared by the head office and the branch projections. */
typedef struct cs_item {
    uint64_t version;
    bool archived;
    bool has_origin;
    uint64_t origin[3]; /* shop, id, version of the head-office item a copy mirrors */
    bool has_detached;
    uint64_t detached[3];        /* the origin a copy had before its branch was unlinked (R13) */
    msgpack_object fields;       /* borrowed from the zone given to the read */
    const uint8_t *fields_bytes; /* the same map encoded, borrowed from the record (reads only) */
    size_t fields_len;
} cs_item;

/* The 9-byte key: type code, then the id big-endian. */
void cs_item_key(uint8_t key[9], const cs_type *t, uint64_t id);
/* Reads and parses a record. Errors: CS_NOT_FOUND, CS_CORRUPT, CS_IO. */
cs_err cs_item_read(MDB_txn *txn, MDB_dbi dbi, const cs_type *t, uint64_t id, msgpack_zone *z,
                    cs_item *out);
/* Parses a stored record, checking lengths before msgpack-c allocates. Errors: CS_CORRUPT. */
cs_err cs_item_parse(const MDB_val *v, msgpack_zone *z, cs_item *out);
/* The same without decoding the fields (out->fields is nil; fields_bytes/fields_len hold them):
 * for callers that copy or compare them as bytes. Errors: CS_CORRUPT, CS_NO_MEMORY. */
cs_err cs_item_parse_header(const MDB_val *v, msgpack_zone *z, cs_item *out);
/* Writes a record with it->fields packed as they are. Errors: storage errors, CS_NO_MEMORY. */
cs_err cs_item_write(cs_log_txn *txn, MDB_dbi dbi, const cs_type *t, uint64_t id,
                     const cs_item *it);
/* The SPEC 7 JSON object of an item. New reference owned by the caller. */
cs_err cs_item_json(const cs_type *t, uint64_t id, const cs_item *it, json_t **out);

/* ---- progress of long work ---------------------------------------------------------------- */

/* How a layer reports the progress of long work (a catch-up, an import, an export, an audit):
 * fn is called with the units done so far and the total (0 when not known) as the work goes,
 * and once more with last = true when it ends. Layers never print progress: the program draws
 * it on a terminal (tools/progress.c). fn == NULL: nobody listens. */
typedef struct cs_progress {
    void (*fn)(void *arg, uint64_t done, uint64_t total, bool last);
    void *arg;
} cs_progress;

/* Calls p's fn when there is one. */
static inline void cs_progress_report(const cs_progress *p, uint64_t done, uint64_t total,
                                      bool last)
{
    if (p && p->fn)
        p->fn(p->arg, done, total, last);
}

/* ---- the engine -------------------------------------------------------------------------- */

typedef struct cs_engine cs_engine;

typedef enum cs_role {
    CS_ROLE_NONE,   /* directory not initialised */
    CS_ROLE_SINGLE, /* a single store (R10) */
    CS_ROLE_HEAD,   /* the head office */
    CS_ROLE_BRANCH, /* a branch (its catalog is kept by projections/) */
} cs_role;

const char *cs_role_name(cs_role role); /* "single", "head", "branch", "none" */

/* Opens (creating) the data directory. Owned by the caller; close with cs_engine_close.
 * Errors: as cs_log_open. */
cs_err cs_engine_open(const char *dir, const cs_log_options *opts, cs_engine **out);
/* As cs_engine_open; on failure why[0..why_bytes) gets the log's sentence (why the directory
 * could not be opened: "data.mdb is cut short", ...), since no handle is left to ask. */
cs_err cs_engine_open_why(const char *dir, const cs_log_options *opts, cs_engine **out, char *why,
                          size_t why_bytes);
void cs_engine_close(cs_engine *e); /* accepts NULL */

/* The sentence for the last refusal or failure ("service 12: field 'name' is required").
 * Borrowed until the next call on the engine. */
const char *cs_engine_errmsg(const cs_engine *e);
cs_log *cs_engine_log(cs_engine *e); /* borrowed for the engine's lifetime */
/* The `items` database (the shop's catalog and shared records), for projections/ which keep a
 * branch's copies in it beside the branch's local items. */
MDB_dbi cs_engine_items_dbi(cs_engine *e);
/* The `network` database (docs/storage.md, "engine"): with `items`, the state derived from the
 * log, in the order cs_engine_digest hashes them. For projections/audit.c, which copies and
 * compares states. */
MDB_dbi cs_engine_network_dbi(cs_engine *e);
/* Sets this directory's own shop record inside txn: how a projection makes a directory a branch
 * (R10) or, after an unlink, a single store again (R13). name NULL keeps the current name. */
cs_err cs_engine_set_self(cs_engine *e, cs_log_txn *txn, uint64_t shop, const char *name,
                          cs_role role);
/* The outbox of a branch (R8): a JSON array of {seq,kind,type,id,version,expect}, oldest first.
 * New reference owned by the caller. */
cs_err cs_engine_outbox(cs_engine *e, json_t **out);
/* How many entries the outbox holds: one mdb_stat, no entry read (what a branch node reports to
 * its head office in every PING and ACK). */
cs_err cs_engine_outbox_count(cs_engine *e, uint64_t *out);
/* Allocates the next item id of shop `shop` (this directory's own; 0 = read it from the
 * directory, which costs a parse per call) inside txn (see items.c for the scheme). */
cs_err cs_engine_alloc_id(cs_engine *e, cs_log_txn *txn, uint64_t shop, uint64_t *out);

/* Who is acting: recorded in every event as `actor` (default "cli"). Copied. */
void cs_engine_set_actor(cs_engine *e, const char *actor);

typedef struct cs_shop_info {
    uint64_t id;
    char name[128];
    cs_role role;
} cs_shop_info;

/* This directory's own shop. Errors: CS_NOT_FOUND before init. */
cs_err cs_engine_self(cs_engine *e, cs_shop_info *out);
/* The same inside a transaction the caller holds (LMDB: one transaction per thread). */
cs_err cs_engine_self_txn(cs_engine *e, MDB_txn *txn, cs_shop_info *out);

/* What a write returns (SPEC 7: put and del print {"id","version","seq"}). seq is the log
 * position of the write's last event; 0 for shop-local types, which are not logged (R9). */
typedef struct cs_write_result {
    uint64_t id;
    uint64_t version;
    uint64_t seq;
} cs_write_result;

/* init: makes this directory a single store named `name`; *shop_out gets its id.
 * Errors: CS_INVALID_INPUT (empty or long name), CS_FORBIDDEN (already initialised). */
cs_err cs_engine_init(cs_engine *e, const char *name, uint64_t *shop_out);

/* Items. put creates when id == 0, else updates item `id`; expect_version != 0 refuses with
 * CS_VERSION_CONFLICT when the item is at another version. Errors: CS_UNKNOWN_TYPE,
 * CS_INVALID_INPUT, CS_DANGLING_REFERENCE, CS_NOT_FOUND, CS_VERSION_CONFLICT, CS_FORBIDDEN
 * (a role may not write that type), CS_READ_ONLY_COPY, storage errors. */
cs_err cs_engine_put(cs_engine *e, const char *type, uint64_t id, const json_t *fields,
                     uint64_t expect_version, cs_write_result *out);
/* Creates one item per element of the JSON array `fields_array`, all in one transaction (one
 * fsync): all are created or, on the first refusal, none (errmsg names the element). results
 * (may be NULL) holds json_array_size(fields_array) entries. For bulk loads and benchmarks. */
cs_err cs_engine_put_many(cs_engine *e, const char *type, const json_t *fields_array,
                          cs_write_result *results);
/* del archives the item (R4: kept, resolvable by id, left out of normal listings). */
cs_err cs_engine_del(cs_engine *e, const char *type, uint64_t id, uint64_t expect_version,
                     cs_write_result *out);
/* get: the SPEC 7 item object (type, id, version, fields, archived, origin[, detached_from]).
 * New reference owned by the caller. Errors: CS_UNKNOWN_TYPE, CS_NOT_FOUND. */
cs_err cs_engine_get(cs_engine *e, const char *type, uint64_t id, json_t **out);
/* list: a JSON array of item objects, by id; archived ones only when `archived` is true
 * (then only archived ones). New reference owned by the caller. */
cs_err cs_engine_list(cs_engine *e, const char *type, bool archived, json_t **out);

/* Network commands (R10, R11, R12). A single store may only create a network
 * (else CS_NOT_IN_NETWORK); a branch may run none of them (CS_FORBIDDEN). */
cs_err cs_engine_network_create(cs_engine *e, const char *name);
/* types == NULL: leave unchanged. *out (may be NULL) gets a JSON array of the synced types. */
cs_err cs_engine_network_types(cs_engine *e, const char *const *types, size_t n, json_t **out);
/* mode == NULL: leave unchanged; "on-trigger" or "continuous". *out gets the mode name. */
cs_err cs_engine_network_mode(cs_engine *e, const char *mode, const char **out);
/* mode/number NULL: leave unchanged. *out gets {"mode","number"}. */
cs_err cs_engine_network_whatsapp(cs_engine *e, const char *mode, const char *number, json_t **out);

/* Shops. add links a new branch (a sync point for it, R5a); the password is stored only as the
 * keys derived from it (cs_auth_keys), outside the log (R9). */
cs_err cs_engine_shop_add(cs_engine *e, const char *name, const char *password, uint64_t *shop_out);
/* A JSON array of {id,name,role,switch,cursor,lag,lag_ms,last_seen,connected,outbox,linked,held}:
 * cursor, last_seen (ISO 8601), connected and outbox (the branch's outbox depth as it last
 * reported) from the server's status records, null for a branch never seen (outbox also for one
 * that never reported it); lag = head sequence - cursor, lag_ms = now - time of the first event it
 * lacks (0 when in step); held = null, or {seq,code,message,since} of the event the branch
 * cannot apply, as it last reported (since ISO 8601). */
cs_err cs_engine_shop_list(cs_engine *e, json_t **out);
cs_err cs_engine_shop_switch(cs_engine *e, uint64_t shop, bool on);
cs_err cs_engine_shop_password(cs_engine *e, uint64_t shop, const char *password);
/* Checks a shop's password against its stored keys (runs argon2id once: for tools and tests,
 * never per connection): CS_OK or CS_AUTH_FAILED. */
cs_err cs_engine_shop_auth(cs_engine *e, uint64_t shop, const char *password);
cs_err cs_engine_shop_unlink(cs_engine *e, uint64_t shop);
cs_err cs_engine_shop_whatsapp(cs_engine *e, uint64_t shop, const char *number);
/* The number a shop answers with (R12). *out owned by the caller (free()).
 * Errors: CS_NOT_FOUND (unknown shop or no number set). */
cs_err cs_engine_whatsapp_resolve(cs_engine *e, uint64_t shop, char **out);

/* ---- branch authentication (docs/protocol.md, "handshake"; docs/storage.md, "secrets") ----
 * The SCRAM shape of RFC 5802 with libsodium's primitives: when a password is set, argon2id
 * (salt, opslimit, memlimit) turns it into SaltedPassword once; ClientKey = HMAC-SHA-256(
 * SaltedPassword, "Client Key"), StoredKey = SHA-256(ClientKey), ServerKey = HMAC-SHA-256(
 * SaltedPassword, "Server Key"). The head office stores StoredKey and ServerKey, which cannot
 * log in by themselves; a branch stores ClientKey and ServerKey. Per connection only HMACs run:
 * a reconnect storm costs no argon2id. */
#define CS_AUTH_SALT_BYTES 16u
#define CS_AUTH_KEY_BYTES 32u /* crypto_auth_hmacsha256_BYTES == crypto_hash_sha256_BYTES */

typedef struct cs_auth_params {
    uint8_t salt[CS_AUTH_SALT_BYTES];
    uint64_t opslimit; /* argon2id passes */
    uint64_t memlimit; /* argon2id memory, bytes */
} cs_auth_params;

/* What the head office keeps for a shop's password. */
typedef struct cs_auth_keys {
    cs_auth_params params;
    uint8_t stored_key[CS_AUTH_KEY_BYTES];
    uint8_t server_key[CS_AUTH_KEY_BYTES];
} cs_auth_keys;

/* What a branch keeps to log in again without its password. */
typedef struct cs_auth_client {
    cs_auth_params params;
    uint8_t client_key[CS_AUTH_KEY_BYTES];
    uint8_t server_key[CS_AUTH_KEY_BYTES];
} cs_auth_client;

/* argon2id once, then the keys. Errors: CS_INVALID_INPUT (params outside libsodium's limits or
 * a password outside 8..1024 bytes), CS_NO_MEMORY. */
cs_err cs_auth_derive(const char *password, const cs_auth_params *p, cs_auth_client *out);
/* The StoredKey a client's keys correspond to (for tests and for cs_engine_shop_auth). */
void cs_auth_stored_key(const cs_auth_client *c, uint8_t stored_key[CS_AUTH_KEY_BYTES]);
/* ClientProof = ClientKey XOR HMAC-SHA-256(StoredKey, msg). */
void cs_auth_client_proof(const cs_auth_client *c, const uint8_t *msg, size_t len,
                          uint8_t proof[CS_AUTH_KEY_BYTES]);
/* The head office's check: SHA-256(proof XOR HMAC(StoredKey, msg)) == StoredKey, compared in
 * constant time. */
bool cs_auth_proof_ok(const cs_auth_keys *k, const uint8_t *msg, size_t len,
                      const uint8_t proof[CS_AUTH_KEY_BYTES]);
/* ServerSignature = HMAC-SHA-256(ServerKey, msg): the head office proves it holds the secret. */
void cs_auth_server_signature(const uint8_t server_key[CS_AUTH_KEY_BYTES], const uint8_t *msg,
                              size_t len, uint8_t sig[CS_AUTH_KEY_BYTES]);

/* At the head office: the keys stored for `shop` and whether it is a linked branch. For a shop
 * with no keys (unknown, or never given a password) *out still gets params, with a salt derived
 * from the network's decoy secret and the shop id, so a challenge looks the same for every id,
 * and random keys no proof matches; *known_out is then false. Never runs argon2id. Errors:
 * CS_FORBIDDEN (this directory is no head office), storage errors. */
cs_err cs_engine_shop_keys(cs_engine *e, uint64_t shop, cs_auth_keys *out, bool *known_out,
                           bool *linked_out);

/* ---- what the server records (docs/storage.md, "status") -------------------------------- */

/* A branch as the head office's server last saw it. Not logged, not in any digest: it is
 * observation, not state, and serve writes it in batches (one transaction for every change of
 * the last second), never one durable write per acknowledgement. */
typedef struct cs_shop_status {
    uint64_t shop;
    uint64_t cursor;       /* the last sequence the branch said it has durably applied */
    uint64_t last_seen_ms; /* when the last frame from it arrived, ms since the epoch */
    bool connected;
    /* Its outbox depth (R8 writes not yet answered) as it last reported in PING or ACK;
     * outbox_known false when it never did (a branch older than the `outbox` key). */
    uint64_t outbox;
    bool outbox_known;
    /* The event the branch holds at: one it cannot apply (docs/design.md, "A branch that never
     * crash-loops"), as it last reported in PING or ACK. held_seq 0: it applies normally.
     * held_known false: the connection has not said yet (or the branch is older than the key),
     * and cs_engine_shop_status_save keeps the figure the record already holds. */
    bool held_known;
    uint64_t held_seq;
    cs_err held_code;       /* why: the apply path's error (storage_full, protocol_mismatch, ...) */
    uint64_t held_since_ms; /* since when it holds there, ms since the epoch */
    char held_message[160]; /* the apply path's sentence */
} cs_shop_status;

/* Writes n statuses in one transaction. Errors: CS_INVALID_INPUT (a shop that is no branch),
 * storage errors. */
cs_err cs_engine_shop_status_save(cs_engine *e, const cs_shop_status *st, size_t n);
/* Errors: CS_NOT_FOUND (never seen), storage errors. */
cs_err cs_engine_shop_status_get(cs_engine *e, uint64_t shop, cs_shop_status *out);

/* ---- shared records from branches (R8; docs/protocol.md, "write") ------------------------ */

#define CS_REQUEST_ID_BYTES 16u

typedef struct cs_remote_answer {
    cs_err code; /* CS_OK or the refusal (version_conflict, invalid_input, forbidden, ...) */
    uint64_t id;
    uint64_t version; /* the version the head office gave the record */
    uint64_t seq;     /* its event in the head office's log */
    char message[256];
} cs_remote_answer;

/* At the head office: applies one outbox entry of branch `shop` (the msgpack map a branch keeps
 * in its outbox: {kind, type, id, version, expect, fields, req}, docs/storage.md "outbox")
 * exactly once. When (shop, req) was answered before, *out is that answer and nothing is
 * written. Otherwise the entry is checked as a put or delete of a shared record at the head
 * office (a catalog or local type: forbidden; fields by the schema: invalid_input; references:
 * dangling_reference; a new record's id must be one `shop` allocates: invalid_input; expect:
 * version_conflict), appended with the event's shop = `shop`, and the answer, a refusal too,
 * remembered durably with it in one transaction. Returns CS_OK whenever *out holds an answer;
 * CS_CORRUPT for an entry that is not such a map (nothing remembered); storage errors. */
cs_err cs_engine_remote_write(cs_engine *e, uint64_t shop, const uint8_t *entry, size_t len,
                              cs_remote_answer *out);

/* On a branch: the oldest outbox entry with a key > after. *entry is the stored msgpack map,
 * owned by the caller (free()). Errors: CS_NOT_FOUND (none), storage errors. */
cs_err cs_engine_outbox_next(cs_engine *e, uint64_t after, uint64_t *key_out, uint8_t **entry,
                             size_t *len);
/* On a branch: the head office answered entry `key`: it leaves the outbox, and a refusal is kept
 * in `rejected` (cs_engine_rejected lists them) so it is reported, never retried. A key no
 * longer in the outbox is CS_OK (an answer that arrived twice). Errors: storage errors. */
cs_err cs_engine_outbox_done(cs_engine *e, uint64_t key, const cs_remote_answer *ans);
/* A JSON array of {type,id,version,code,message,req} of refused writes, oldest first. New
 * reference owned by the caller. */
cs_err cs_engine_rejected(cs_engine *e, json_t **out);

/* A sync point for every branch (shop == 0) or one (R5b, R5c). *seq_out (may be NULL) gets
 * its log position. */
cs_err cs_engine_sync(cs_engine *e, uint64_t shop, uint64_t *seq_out);

/* A decoded log event as JSON {seq,time,actor,shop,kind,type,id,version,fields}, fields
 * converted by the schema when the type is known. New reference owned by the caller. */
cs_err cs_engine_event_json(const cs_event_view *ev, json_t **out);

/* XXH3 of every database derived from the log (items, network), in key order. */
cs_err cs_engine_digest(cs_engine *e, uint64_t *out);
/* XXH3 over the given databases' keys and values in key order, within txn (a projection's
 * digest uses it over its own databases). */
cs_err cs_digest_dbs(MDB_txn *txn, const MDB_dbi *dbis, size_t n, uint64_t *out);
/* Replays this directory's log into a fresh state under scratch_dir (created, then removed)
 * and returns that state's digest: equal to cs_engine_digest when state and log agree. */
cs_err cs_engine_replay_digest(cs_engine *e, const char *scratch_dir, uint64_t *out);
/* Applies the events from..to (inclusive; stopping early at the head) read through r, which
 * may belong to another directory's log, to dst's state (items, network) with the same apply
 * step as commands, in write transactions of dst of at most 10,000 events, without appending
 * them to dst's log: how audit rebuilds a past state in a scratch directory from a checkpoint.
 * When only is not NULL, put and delete events of other types are skipped (the state then holds
 * only that type's items, exactly as a full replay would have them). dst's state must be the
 * state as of from - 1. Errors: CS_CORRUPT (an event does not verify, decode or apply; errmsg
 * of dst names it), storage errors of dst. What applied before an error stays applied. */
cs_err cs_engine_replay_range(cs_engine *dst, cs_log_reader *r, uint64_t from, uint64_t to,
                              const cs_type *only);

#endif
