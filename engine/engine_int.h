/*
 * engine_int.h: what the engine's files share: the handle, its databases, the item record
 * layout, the apply step, and the JSON-in-LMDB helpers for the small network state.
 *
 * Databases in the data directory's environment (docs/storage.md, "engine"):
 *   items    type code u8 + id u64 BE -> item record (msgpack array, below)  [from the log]
 *   network  "self" | "net" | "shop:" + id u64 BE -> compact JSON, sorted keys [from the log]
 *   local    shop-local items (staff, shop_info) and the id counter        [never logged, R9]
 *   secrets  shop id u64 BE -> msgpack {v,salt,ops,mem,stored_key,server_key};
 *            "decoy" -> 32 random bytes (auth.c)                           [never logged, R9]
 *   outbox   u64 BE counter -> msgpack {kind,type,id,version,expect,fields,req} [a branch's, R8]
 *   status   shop id u64 BE -> msgpack {cursor,last_seen,connected} [head: server's view]
 *   requests shop u64 BE + req 16 bytes -> msgpack answer {code,message,id,version,seq} [head]
 *   rejected u64 BE counter -> msgpack {code,message,entry} [a branch's refused outbox entries]
 * An item record is the msgpack array [version, archived, origin, detached_from, fields] where
 * origin and detached_from are nil or [shop, id, version].
 */
#ifndef CS_ENGINE_INT_H
#define CS_ENGINE_INT_H

#include "engine/engine.h"

/* One item's fields, encoded: far below CS_EVENT_BYTES_MAX, with room for the event's header. */
#define CS_ITEM_FIELDS_BYTES_MAX (64u * 1024u)
#define CS__ERRMSG_BYTES 320
#define CS__ACTOR_BYTES 64

_Static_assert(CS_ITEM_FIELDS_BYTES_MAX + 1024 <= CS_EVENT_BYTES_MAX, "an item fits one event");

struct cs_engine {
    cs_log *log;
    MDB_dbi items;
    MDB_dbi network;
    MDB_dbi local;
    MDB_dbi secrets;
    MDB_dbi outbox;        /* a branch's shared-record writes waiting for the head office (R8) */
    MDB_dbi status;        /* the head office's server's view of each branch (not state) */
    MDB_dbi requests;      /* the head office's answers to branches' outbox entries (R8) */
    MDB_dbi rejected;      /* a branch's outbox entries the head office refused (R8) */
    cs_event_decoder *dec; /* owned: decodes events for apply and replay */
    msgpack_zone zone;     /* owned: scratch objects of one command */
    char actor[CS__ACTOR_BYTES];
    char errmsg[CS__ERRMSG_BYTES];
};

/* A msgpack_sbuffer packer that remembers an allocation failure instead of losing it. */
typedef struct cs__pack {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    bool failed;
} cs__pack;

void cs__pack_init(cs__pack *p);
void cs__pack_destroy(cs__pack *p);

cs_err cs__fail(cs_engine *e, cs_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Begins a read snapshot of the data directory through cs_log_read_begin (which adopts a map
 * another process grew); on failure e->errmsg holds cs_log_errmsg's sentence. End the read
 * with cs_log_read_end(e->log, txn). Errors: those of cs_log_read_begin. */
cs_err cs__read_begin(cs_engine *e, MDB_txn **txn);

/* Packs a record; fields are raw msgpack bytes (a map). */
cs_err cs__item_pack(cs__pack *p, const cs_item *hdr, const uint8_t *fields, size_t fields_len);

/* JSON values in `network`. *out is a new reference; CS_NOT_FOUND when absent. */
cs_err cs__net_get(MDB_txn *txn, MDB_dbi dbi, const char *key, size_t key_len, json_t **out);
cs_err cs__net_put(cs_log_txn *txn, MDB_dbi dbi, const char *key, size_t key_len, json_t *val);
void cs__shop_key(char key[13], uint64_t shop);

/* The one state transition: applies a logged event to the state databases. */
cs_err cs__apply(cs_engine *e, cs_log_txn *txn, const cs_event_view *ev);

/* Appends events and applies them, in the caller's transaction. */
cs_err cs__emit(cs_engine *e, cs_log_txn *txn, const cs_event *evs, size_t n, uint64_t *last_seq);

json_t *cs__json_from_msgpack(const msgpack_object *o);
/* Packs any JSON value; failures are recorded by the packer's writer (cs__pack.failed). */
void cs__pack_json(msgpack_packer *pk, const json_t *j);

/* Reads this shop's role in a transaction; CS_ROLE_NONE before init. */
/* This shop's role and id from the `self` record. CS_ROLE_NONE only for a directory that holds
 * nothing; a `self` that cannot be read or parsed, or is missing beside other data, is
 * CS_CORRUPT (e->errmsg says which). *self_id may be NULL. */
cs_err cs__role_get(MDB_txn *txn, cs_engine *e, cs_role *role_out, uint64_t *self_id);
/* As cs__role_get, for callers that refuse every role but the one they need: an error reads
 * as CS_ROLE_NONE. Commands reach these only after cs_engine_self, which reports damage. */
cs_role cs__role(MDB_txn *txn, cs_engine *e, uint64_t *self_id);

/* ---- items.c: the one write path of an item (local commands and branches' writes, R8) ---- */

typedef struct cs__write {
    cs_engine *e;
    const cs_type *t;
    uint64_t id;           /* 0: a new item, its id allocated from `shop`'s counter */
    const uint8_t *fields; /* borrowed: canonical msgpack map */
    size_t fields_len;
    uint64_t expect;
    bool del;
    bool create;       /* id != 0 names an item to create with that id (a branch's, R8) */
    uint64_t shop;     /* the event's shop */
    const char *actor; /* the event's actor, NUL-terminated, borrowed */
    cs_write_result res;
} cs__write;

/* Checks w against the state in txn (existence, expected version, references) and emits its
 * event (or, for a shop-local type, writes `local`). Role rules are the caller's. Uses and
 * clears nothing of e->zone but what it allocates there. */
cs_err cs__write_item(cs_log_txn *txn, cs__write *w);

/* ---- records.c: small helpers for the engine's msgpack records ---------------------------- */

/* Exactly one msgpack value of len bytes, checked before msgpack-c allocates (SPEC 4), into z.
 * Errors: CS_CORRUPT, CS_NO_MEMORY. */
cs_err cs__unpack(const void *buf, size_t len, msgpack_zone *z, msgpack_object *out);
/* The value under a str key of a map, NULL when absent or o is no map. Borrowed from o. */
const msgpack_object *cs__map_get(const msgpack_object *o, const char *key);
bool cs__map_u64(const msgpack_object *o, const char *key, uint64_t *out);
/* A bin of exactly len bytes (len 0: any length, *len_out gets it). */
bool cs__map_bin(const msgpack_object *o, const char *key, size_t len, const uint8_t **out,
                 size_t *len_out);
bool cs__map_str(const msgpack_object *o, const char *key, cs_str *out);
/* The key after the last one of a u64 BE counter database (1 when empty). */
cs_err cs__counter_next(MDB_txn *txn, MDB_dbi dbi, uint64_t *out);
/* The msgpack record stored under key in dbi, unpacked into z (checked first). Errors:
 * CS_NOT_FOUND, CS_IO, CS_CORRUPT, CS_NO_MEMORY. */
cs_err cs__record_get(MDB_txn *m, MDB_dbi dbi, const void *key, size_t key_len, msgpack_zone *z,
                      msgpack_object *out);
/* Every record of dbi, in key order, as a JSON array of what fn makes of each (with e->zone
 * cleared before each record), read in one snapshot. *out is a new reference. */
typedef cs_err (*cs__row_json_fn)(const MDB_val *k, const MDB_val *v, msgpack_zone *z,
                                  json_t **out);
cs_err cs__dbi_json_array(cs_engine *e, MDB_dbi dbi, cs__row_json_fn fn, json_t **out);
/* 2n lowercase hex digits and a NUL. */
void cs__hex(char *out, const uint8_t *in, size_t n);
/* CLOCK_REALTIME in ms since the epoch. */
uint64_t cs__now_ms(void);
/* "2026-12-01T22:40:00.123Z" (24 bytes and a NUL). */
#define CS__ISO8601_BYTES 32
void cs__iso8601_ms(uint64_t ms, char out[CS__ISO8601_BYTES]);
/* The code whose stable name is (name, len); false when none is. */
bool cs__err_from_name(const char *name, size_t len, cs_err *out);
/* An answer's two entries "code" (its stable name) and "message" (requests, rejected). */
void cs__pack_code(msgpack_packer *pk, cs_err code, const char *message);
bool cs__map_code(const msgpack_object *o, cs_err *code, cs_str *message);

/* ---- auth.c, status.c ------------------------------------------------------------------- */

/* The `secrets` record of a shop's keys (docs/storage.md, "secrets"). */
#define CS__SECRET_BYTES_MAX 192u
cs_err cs__secret_encode(const cs_auth_keys *k, uint8_t out[CS__SECRET_BYTES_MAX], size_t *len);
/* Errors: CS_NOT_FOUND, CS_CORRUPT, CS_IO. */
cs_err cs__secret_read(cs_engine *e, MDB_txn *m, uint64_t shop, cs_auth_keys *out);
/* New keys for a password: a random salt, the default argon2id cost. Runs argon2id. */
cs_err cs__auth_keys_new(const char *password, cs_auth_keys *out);
/* Stores the network's decoy secret when it has none yet (network create; shop_keys). */
cs_err cs__decoy_ensure(cs_engine *e, cs_log_txn *txn);
/* A branch's status record. Errors: CS_NOT_FOUND, CS_CORRUPT, CS_IO. */
cs_err cs__status_read(cs_engine *e, MDB_txn *m, uint64_t shop, cs_shop_status *out);

#endif
