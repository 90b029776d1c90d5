/*
 * fuzz_event.c: libFuzzer target for the event decoder (log/event.c): cs_msgpack_check, the
 * bounds check every decoder of untrusted msgpack runs first, and cs_event_decode, which turns a
 * stored or received event into a view (issue 12, "Hostile input").
 *
 * Properties, beyond "no crash, no leak, no read out of bounds":
 *   1. what cs_msgpack_check accepts, msgpack-c unpacks, to the same length, within a zone not
 *      much larger than the input (the check exists so that allocation is bounded);
 *   2. what it accepts holds only UTF-8 str and valid timestamps (SPEC 4, docs/storage.md);
 *   3. a decoded event's strings and fields lie inside the input, fields is a map that checks
 *      on its own, and decoding twice gives the same view.
 */
#include "log/log.h"
#include "tests/fuzz/fuzz.h"

#include <msgpack.h>

static cs_event_decoder *dec;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (cs_event_decoder_new(&dec) != CS_OK)
        abort();
    return 0;
}

static bool inside(const uint8_t *data, size_t size, const void *p, size_t len)
{
    const uint8_t *q = p;
    return len == 0 || (q >= data && q + len <= data + size);
}

/* Property 2 on msgpack-c's own view of the value. */
static void strings_valid(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_STR:
        FUZZ_ASSERT(cs_utf8_prefix(o->via.str.ptr, o->via.str.size) == o->via.str.size);
        return;
    case MSGPACK_OBJECT_EXT:
        if (o->via.ext.type == -1)
            FUZZ_ASSERT(o->via.ext.size == 4 || o->via.ext.size == 8 || o->via.ext.size == 12);
        return;
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < o->via.array.size; i++)
            strings_valid(&o->via.array.ptr[i]);
        return;
    case MSGPACK_OBJECT_MAP:
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            strings_valid(&o->via.map.ptr[i].key);
            strings_valid(&o->via.map.ptr[i].val);
        }
        return;
    default:
        return;
    }
}

static void check_then_unpack(const uint8_t *data, size_t size)
{
    size_t vlen = 0;
    if (cs_msgpack_check(data, size, CS_MSGPACK_DEPTH_MAX, &vlen) != CS_OK)
        return;
    FUZZ_ASSERT(vlen >= 1 && vlen <= size);
    msgpack_zone zone;
    FUZZ_ASSERT(msgpack_zone_init(&zone, 1024));
    msgpack_object obj;
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack((const char *)data, vlen, &off, &zone, &obj);
    FUZZ_ASSERT(rc == MSGPACK_UNPACK_SUCCESS);
    FUZZ_ASSERT(off == vlen);
    strings_valid(&obj);
    msgpack_zone_destroy(&zone);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_then_unpack(data, size);
    cs_event_view ev;
    if (cs_event_decode(dec, data, size, &ev) != CS_OK) {
        FUZZ_ASSERT(cs_event_decoder_corrupt_at(dec) != NULL);
        return 0;
    }
    FUZZ_ASSERT(inside(data, size, ev.actor.ptr, ev.actor.len));
    FUZZ_ASSERT(inside(data, size, ev.kind.ptr, ev.kind.len));
    FUZZ_ASSERT(inside(data, size, ev.type.ptr, ev.type.len));
    FUZZ_ASSERT(ev.fields.type == MSGPACK_OBJECT_MAP);
    FUZZ_ASSERT(ev.fields_bytes && inside(data, size, ev.fields_bytes, ev.fields_len));
    size_t flen = 0;
    FUZZ_ASSERT(cs_msgpack_check(ev.fields_bytes, ev.fields_len, CS_MSGPACK_DEPTH_MAX, &flen) ==
                    CS_OK &&
                flen == ev.fields_len);
    cs_event_view again;
    FUZZ_ASSERT(cs_event_decode(dec, data, size, &again) == CS_OK);
    FUZZ_ASSERT(again.seq == ev.seq && again.time_ms == ev.time_ms && again.shop == ev.shop &&
                again.id == ev.id && again.version == ev.version &&
                again.fields_bytes == ev.fields_bytes && again.fields_len == ev.fields_len);
    return 0;
}
