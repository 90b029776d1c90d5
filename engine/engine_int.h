/*
 * engine_int.h: what the engine's files share: the handle, its databases, the item record
 * layout, the apply step, and the JSON-in-LMDB helpers for the small network state.
 *
 * Databases in the data directory's environment (docs/storage.md, "engine"):
 *   items    type code u8 + id u64 BE -> item record (msgpack array, below)  [from the log]
 *   network  "self" | "net" | "shop:" + id u64 BE -> compact JSON, sorted keys [from the log]
 *   local    shop-local items (staff, shop_info) and the id counter        [never logged, R9]
 *   secrets  shop id u64 BE -> argon2id hash string                        [never logged, R9]
 *   outbox   u64 BE counter -> msgpack {kind,type,id,version,expect,fields} [a branch's, R8]
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
    MDB_dbi outbox;        /* a branch's shared-record writes waiting for the head office (R8) */
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

const cs_type *cs__schema_find_len(const char *name, size_t len);
json_t *cs__json_from_msgpack(const msgpack_object *o);
/* Packs any JSON value; failures are recorded by the packer's writer (cs__pack.failed). */
void cs__pack_json(msgpack_packer *pk, const json_t *j);

/* Reads this shop's role in a transaction; CS_ROLE_NONE before init. */
cs_role cs__role(MDB_txn *txn, cs_engine *e, uint64_t *self_id);

#endif
