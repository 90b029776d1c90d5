/*
 * engine_int.h: what the engine's files share: the handle, its databases, the item record
 * layout, the apply step, and the JSON-in-LMDB helpers for the small network state.
 *
 * Databases in the data directory's environment (docs/storage.md, "engine"):
 *   items    type code u8 + id u64 BE -> item record (msgpack array, below)  [from the log]
 *   network  "self" | "net" | "shop:" + id u64 BE -> compact JSON, sorted keys [from the log]
 *   local    shop-local items (staff, shop_info) and the id counter        [never logged, R9]
 *   secrets  shop id u64 BE -> argon2id hash string                        [never logged, R9]
 * An item record is the msgpack array [version, archived, origin, detached_from, fields] where
 * origin and detached_from are nil or [shop, id, version].
 */
#ifndef CS_ENGINE_INT_H
#define CS_ENGINE_INT_H

#include "engine/engine.h"

/* One item's fields, encoded: far below CS_EVENT_BYTES_MAX, with room for the event's header. */
#define CS_ITEM_FIELDS_BYTES_MAX (64u * 1024u)
#define CS__SYNCED_TYPES_MAX 16u
#define CS__ERRMSG_BYTES 320
#define CS__ACTOR_BYTES 64

_Static_assert(CS_ITEM_FIELDS_BYTES_MAX + 1024 <= CS_EVENT_BYTES_MAX, "an item fits one event");

struct cs_engine {
    cs_log *log;
    MDB_dbi items;
    MDB_dbi network;
    MDB_dbi local;
    MDB_dbi secrets;
    cs_event_decoder *dec; /* owned: decodes events for apply and replay */
    msgpack_zone zone;     /* owned: scratch objects of one command */
    char actor[CS__ACTOR_BYTES];
    char errmsg[CS__ERRMSG_BYTES];
};

/* An item record as read from `items` or `local`; fields live in the zone given to the read. */
typedef struct cs__item {
    uint64_t version;
    bool archived;
    bool has_origin;
    uint64_t origin[3]; /* shop, id, version */
    bool has_detached;
    uint64_t detached[3];
    msgpack_object fields;
} cs__item;

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

void cs__item_key(uint8_t key[9], const cs_type *t, uint64_t id);
/* Packs a record; fields are raw msgpack bytes (a map). */
cs_err cs__item_pack(cs__pack *p, const cs__item *hdr, const uint8_t *fields, size_t fields_len);
cs_err cs__item_read(MDB_txn *txn, MDB_dbi dbi, const cs_type *t, uint64_t id, msgpack_zone *z,
                     cs__item *out);
/* Parses a stored record (checked against hostile lengths first). */
cs_err cs__item_parse(const MDB_val *v, msgpack_zone *z, cs__item *out);
cs_err cs__item_json(const cs_type *t, uint64_t id, const cs__item *it, json_t **out);

/* JSON values in `network`. *out is a new reference; CS_NOT_FOUND when absent. */
cs_err cs__net_get(MDB_txn *txn, MDB_dbi dbi, const char *key, size_t key_len, json_t **out);
cs_err cs__net_put(cs_log_txn *txn, MDB_dbi dbi, const char *key, size_t key_len, json_t *val);
void cs__shop_key(char key[13], uint64_t shop);

/* The one state transition: applies a logged event to the state databases. */
cs_err cs__apply(cs_engine *e, cs_log_txn *txn, const cs_event_view *ev);

/* Appends events and applies them, in the caller's transaction. */
cs_err cs__emit(cs_engine *e, cs_log_txn *txn, const cs_event *evs, size_t n, uint64_t *last_seq);

const cs_type *cs__schema_find_len(const char *name, size_t len);
json_t *cs__json_from_msgpack(const msgpack_object *o);
/* Packs any JSON value; failures are recorded by the packer's writer (cs__pack.failed). */
void cs__pack_json(msgpack_packer *pk, const json_t *j);

/* Reads this shop's role in a transaction; CS_ROLE_NONE before init. */
cs_role cs__role(MDB_txn *txn, cs_engine *e, uint64_t *self_id);

#endif
