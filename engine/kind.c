/*
 * kind.c: the names of the event kinds, built from CS_EVENT_KINDS (engine.h), and the one
 * comparison of a kind string: every other file switches on the cs_kind that cs_kind_parse
 * returns. The names are what the log stores, so a log written before the enum existed decodes
 * to the same kinds. Owns nothing.
 */
#include "engine/engine.h"

#include <string.h>

static const cs_str kind_names[] = {{"unknown", sizeof("unknown") - 1},
#define CS_KIND_NAME(code, name) {name, sizeof(name) - 1},
                                    CS_EVENT_KINDS(CS_KIND_NAME)
#undef CS_KIND_NAME
};

_Static_assert(sizeof(kind_names) / sizeof(kind_names[0]) == CS_KIND_COUNT, "one name per kind");

cs_kind cs_kind_parse(cs_str s)
{
    for (unsigned i = CS_KIND_UNKNOWN + 1; i < CS_KIND_COUNT; i++)
        if (kind_names[i].len == s.len && memcmp(kind_names[i].ptr, s.ptr, s.len) == 0)
            return (cs_kind)i;
    return CS_KIND_UNKNOWN;
}

cs_str cs_kind_str(cs_kind kind)
{
    return (unsigned)kind < CS_KIND_COUNT ? kind_names[kind] : kind_names[CS_KIND_UNKNOWN];
}

const char *cs_kind_name(cs_kind kind)
{
    return cs_kind_str(kind).ptr;
}
