/*
 * fuzz_put.c: libFuzzer target for JSON input to `put` (engine/convert.c): the JSON is parsed
 * as the CLI parses it (jansson, duplicate keys refused) and converted to canonical msgpack with
 * the schema's validation, for the item type byte 0 picks; what validation accepts is then put
 * through the engine into a store (engine/items.c, the log's append).
 *
 * Properties: validation refuses with invalid_input and a sentence, or gives msgpack that the
 * log's own check accepts (a map, UTF-8 str, depth within bounds, at most
 * CS_ITEM_FIELDS_BYTES_MAX); converting that msgpack back to JSON and validating it again gives
 * the same bytes (the canonical form); a put of accepted fields fails only with the codes `put`
 * documents (a reference to a missing item, say), never with corrupt, io or no_memory.
 */
#include "engine/engine.h"
#include "tests/fuzz/fuzz.h"

#include <msgpack.h>

static cs_engine *store;
static unsigned puts_done;

static void store_open(void)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/store", fuzz_scratch());
    fuzz_rm_tree(dir);
    cs_log_options opts = {.flags = CS_LOG_NOSYNC};
    uint64_t shop;
    if (cs_engine_open(dir, &opts, &store) != CS_OK ||
        cs_engine_init(store, "fuzz", &shop) != CS_OK)
        abort();
    puts_done = 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    store_open();
    return 0;
}

static void roundtrip(const cs_type *t, const uint8_t *mp, size_t len)
{
    msgpack_zone zone;
    FUZZ_ASSERT(msgpack_zone_init(&zone, 1024));
    msgpack_object obj;
    size_t off = 0;
    FUZZ_ASSERT(msgpack_unpack((const char *)mp, len, &off, &zone, &obj) == MSGPACK_UNPACK_SUCCESS);
    json_t *j = NULL;
    FUZZ_ASSERT(cs_schema_to_json(t, &obj, &j) == CS_OK);
    uint8_t *again = NULL;
    size_t again_len = 0;
    char msg[256];
    FUZZ_ASSERT(cs_schema_from_json(t, j, &again, &again_len, msg, sizeof(msg)) == CS_OK);
    FUZZ_ASSERT(again_len == len && memcmp(again, mp, len) == 0);
    free(again);
    json_decref(j);
    msgpack_zone_destroy(&zone);
}

static bool put_code_ok(cs_err err)
{
    return err == CS_OK || err == CS_INVALID_INPUT || err == CS_DANGLING_REFERENCE ||
           err == CS_FORBIDDEN || err == CS_NOT_FOUND;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned ntypes;
    const cs_type *types = cs_schema_types(&ntypes);
    const cs_type *t = &types[data[0] % ntypes];
    json_error_t jerr;
    json_t *j = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, &jerr);
    if (!j)
        return 0;
    uint8_t *mp = NULL;
    size_t len = 0;
    char msg[256] = "";
    cs_err err = cs_schema_from_json(t, j, &mp, &len, msg, sizeof(msg));
    if (err != CS_OK) {
        if (getenv("CS_FUZZ_VERBOSE"))
            fprintf(stderr, "%s: %s\n", t->name, msg);
        FUZZ_ASSERT(err == CS_INVALID_INPUT && msg[0] != '\0');
        FUZZ_ASSERT(cs_utf8_prefix(msg, strlen(msg)) == strlen(msg)); /* the sentence is text */
        json_decref(j);
        return 0;
    }
    size_t vlen = 0;
    FUZZ_ASSERT(len >= 1 && len <= 64u * 1024u);
    FUZZ_ASSERT(cs_msgpack_check(mp, len, CS_MSGPACK_DEPTH_MAX - 1, &vlen) == CS_OK && vlen == len);
    FUZZ_ASSERT((mp[0] & 0xf0) == 0x80 || mp[0] == 0xde); /* a map */
    roundtrip(t, mp, len);
    free(mp);
    cs_write_result res;
    err = cs_engine_put(store, t->name, 0, j, 0, &res);
    if (!put_code_ok(err)) {
        fprintf(stderr, "put %s: %s: %s\n", t->name, cs_err_name(err), cs_engine_errmsg(store));
        FUZZ_ASSERT(put_code_ok(err));
    }
    if (getenv("CS_FUZZ_VERBOSE"))
        fprintf(stderr, "put %s: %s: %s\n", t->name, cs_err_name(err), cs_engine_errmsg(store));
    json_decref(j);
    if (err == CS_OK && ++puts_done >= 5000) { /* a long run: keep the store small */
        cs_engine_close(store);
        store_open();
    }
    return 0;
}
