/*
 * schema.c: the one table of every item type (SPEC 2): its class, its stable on-disk code, and
 * its fields with kinds, required flags, limits and reference targets. Validation, JSON and
 * msgpack conversion, reference checks and remapping all read this table (convert.c); no type
 * has a hand-written C struct.
 *
 * Type codes are part of the on-disk format (docs/storage.md, "items"): never renumber one
 * (cs_type_code in engine.h lists them). A synced type's code fits a cs_type_set (SYNCED_CODE).
 * Limits: names are short labels (120 bytes); free text is bounded at 4,000 bytes so that one
 * item stays far below CS_EVENT_BYTES_MAX; lists are bounded so an item cannot grow without end.
 */
#include "engine/engine_int.h"

#include <stdio.h>
#include <string.h>

#define NAME_MAX_BYTES 120
#define TEXT_MAX_BYTES 4000
#define LIST_MAX_ITEMS 200
#define PRICE_MAX_CENTS 100000000 /* one million in currency units */

#define F_NAME                                                                                     \
    {                                                                                              \
        "name", CS_FIELD_STRING, true, 1, NAME_MAX_BYTES, NULL, NULL, NULL, 0                      \
    }
#define F_TEXT(n)                                                                                  \
    {                                                                                              \
        n, CS_FIELD_STRING, false, 0, TEXT_MAX_BYTES, NULL, NULL, NULL, 0                          \
    }
#define F_TEXT_REQ(n)                                                                              \
    {                                                                                              \
        n, CS_FIELD_STRING, true, 1, TEXT_MAX_BYTES, NULL, NULL, NULL, 0                           \
    }
#define F_STR(n, max)                                                                              \
    {                                                                                              \
        n, CS_FIELD_STRING, false, 0, max, NULL, NULL, NULL, 0                                     \
    }
#define F_INT(n, req, lo, hi)                                                                      \
    {                                                                                              \
        n, CS_FIELD_INT, req, lo, hi, NULL, NULL, NULL, 0                                          \
    }
#define F_BOOL(n)                                                                                  \
    {                                                                                              \
        n, CS_FIELD_BOOL, false, 0, 0, NULL, NULL, NULL, 0                                         \
    }
#define F_ENUM(n, req, vals)                                                                       \
    {                                                                                              \
        n, CS_FIELD_ENUM, req, 0, 0, vals, NULL, NULL, 0                                           \
    }
#define F_REF(n, req, target)                                                                      \
    {                                                                                              \
        n, CS_FIELD_REF, req, 0, 0, NULL, target, NULL, 0                                          \
    }
#define F_REFS(n, req, lo, target)                                                                 \
    {                                                                                              \
        n, CS_FIELD_REF_LIST, req, lo, LIST_MAX_ITEMS, NULL, target, NULL, 0                       \
    }
#define F_STRS(n, req, lo)                                                                         \
    {                                                                                              \
        n, CS_FIELD_STRING_LIST, req, lo, LIST_MAX_ITEMS, NULL, NULL, NULL, 0                      \
    }
#define F_INTS(n, lo, hi)                                                                          \
    {                                                                                              \
        n, CS_FIELD_INT_LIST, false, lo, hi, NULL, NULL, NULL, 0                                   \
    }
#define F_OBJ(n, req, sub)                                                                         \
    {                                                                                              \
        n, CS_FIELD_OBJECT, req, 0, 0, NULL, NULL, sub, COUNT(sub)                                 \
    }
#define F_OBJS(n, req, lo, sub)                                                                    \
    {                                                                                              \
        n, CS_FIELD_OBJECT_LIST, req, lo, LIST_MAX_ITEMS, NULL, NULL, sub, COUNT(sub)              \
    }
#define COUNT(a) ((unsigned)(sizeof(a) / sizeof((a)[0])))
#define TYPE(n, code, cls, f)                                                                      \
    {                                                                                              \
        n, code, cls, f, COUNT(f)                                                                  \
    }
/* A synced type's code must fit a cs_type_set: a larger one is a compile error (an array of
 * negative size), in the table itself, so no caller of the set checks it at run time. */
#define SYNCED_CODE(code) ((code) + 0 * sizeof(char[(code) <= CS_TYPE_SYNCED_CODE_MAX ? 1 : -1]))
#define SYNCED(n, code, f) TYPE(n, SYNCED_CODE(code), CS_CLASS_SYNCED, f)
#define SHARED(n, code, f) TYPE(n, code, CS_CLASS_SHARED, f)
#define LOCAL(n, code, f) TYPE(n, code, CS_CLASS_LOCAL, f)

static const char *const periods[] = {"weekly", "biweekly", "monthly", NULL};
static const char *const payment_kinds[] = {"cash", "card", "pix", "transfer", "other", NULL};
static const char *const channels[] = {"whatsapp", "sms", "email", NULL};
static const char *const rule_ops[] = {"eq", "ne", "lt", "le", "gt", "ge", "contains", NULL};
static const char *const sexes[] = {"male", "female", "unknown", NULL};
static const char *const field_entities[] = {"customer", "pet", NULL};
static const char *const field_kinds[] = {"text", "number", "date", "boolean", NULL};

static const cs_field price_tier[] = {
    {"tier", CS_FIELD_STRING, true, 1, 60, NULL, NULL, NULL, 0},
    F_INT("price_cents", true, 0, PRICE_MAX_CENTS),
};
static const cs_field plan_item[] = {
    F_REF("service", true, "service"),
    F_INT("quantity", true, 1, 1000),
};
static const cs_field trigger[] = {
    {"event", CS_FIELD_STRING, true, 1, 60, NULL, NULL, NULL, 0},
    F_INT("offset_min", true, -525600, 525600), /* within a year either side */
};
static const cs_field schedule[] = {
    F_INT("hour", false, 0, 23),
    F_INTS("weekdays", 0, 6),
};
static const cs_field segment_rule[] = {
    {"field", CS_FIELD_STRING, true, 1, 60, NULL, NULL, NULL, 0},
    F_ENUM("op", true, rule_ops),
    {"value", CS_FIELD_STRING, true, 0, NAME_MAX_BYTES, NULL, NULL, NULL, 0},
};

static const cs_field service_category[] = {F_NAME, F_TEXT("description"),
                                            F_OBJS("price_table", false, 0, price_tier)};
static const cs_field service[] = {
    F_NAME,
    F_REF("category", true, "service_category"),
    F_TEXT("description"),
    F_INT("duration_min", false, 0, 10080),
    F_INT("buffer_min", false, 0, 1440), /* version 2: minutes kept free after it */
    F_OBJS("price_table", true, 1, price_tier),
    F_BOOL("active"),
};
static const cs_field combo[] = {
    F_NAME,
    F_REFS("services", true, 2, "service"),
    F_INT("price_cents", true, 0, PRICE_MAX_CENTS),
    F_TEXT("description"),
};
static const cs_field plan[] = {
    F_NAME,
    F_ENUM("period", true, periods),
    F_OBJS("items", true, 1, plan_item),
    F_INT("price_cents", true, 0, PRICE_MAX_CENTS),
};
static const cs_field payment_method[] = {
    F_NAME,
    F_ENUM("kind", true, payment_kinds),
    F_INT("fee_bp", false, 0, 10000),
};
static const cs_field checklist[] = {
    F_NAME,
    F_STRS("items", true, 1),
    F_REF("category", false, "service_category"),
};
static const cs_field notification_template[] = {
    F_NAME,
    F_ENUM("channel", true, channels),
    F_TEXT_REQ("body"),
    F_OBJ("trigger", true, trigger),
    F_OBJ("schedule", false, schedule),
};
static const cs_field petcare_category[] = {F_NAME};
static const cs_field document_template[] = {
    F_NAME,
    F_REF("category", true, "petcare_category"),
    F_TEXT_REQ("body"),
};
static const cs_field vaccine[] = {
    F_NAME,
    F_REF("species", false, "species"),
    F_INT("interval_days", false, 0, 3650),
    F_INT("doses", false, 1, 20),
};
static const cs_field segment[] = {F_NAME, F_OBJS("rules", true, 1, segment_rule)};
static const cs_field advanced_setting[] = {
    {"key", CS_FIELD_STRING, true, 1, NAME_MAX_BYTES, NULL, NULL, NULL, 0},
    {"value", CS_FIELD_STRING, true, 0, TEXT_MAX_BYTES, NULL, NULL, NULL, 0},
};

static const cs_field species[] = {F_NAME};
static const cs_field breed[] = {F_NAME, F_REF("species", true, "species")};
static const cs_field customer[] = {
    F_NAME,
    F_STR("phone", 40),
    F_STR("email", NAME_MAX_BYTES),
    F_TEXT("notes"),
};
static const cs_field pet[] = {
    F_NAME,
    F_REF("customer", true, "customer"),
    F_REF("species", true, "species"),
    F_REF("breed", false, "breed"),
    F_STR("birth_date", 10),
    F_ENUM("sex", false, sexes),
};
static const cs_field breeding_animal[] = {
    F_NAME,
    F_REF("species", true, "species"),
    F_REF("breed", false, "breed"),
    F_ENUM("sex", false, sexes),
};
static const cs_field custom_field[] = {
    F_NAME,
    F_ENUM("entity", true, field_entities),
    F_ENUM("kind", true, field_kinds),
};

static const cs_field staff[] = {F_NAME, F_STR("role", 60), F_STR("phone", 40)};
static const cs_field shop_info[] = {F_NAME, F_TEXT("address"), F_STR("phone", 40)};

/* Order: synced types first (the default synced set), then shared, then local. */
static const cs_type types[] = {
    SYNCED("service_category", CS_TYPE_SERVICE_CATEGORY, service_category),
    SYNCED("service", CS_TYPE_SERVICE, service),
    SYNCED("combo", CS_TYPE_COMBO, combo),
    SYNCED("plan", CS_TYPE_PLAN, plan),
    SYNCED("payment_method", CS_TYPE_PAYMENT_METHOD, payment_method),
    SYNCED("checklist", CS_TYPE_CHECKLIST, checklist),
    SYNCED("notification_template", CS_TYPE_NOTIFICATION_TEMPLATE, notification_template),
    SYNCED("petcare_category", CS_TYPE_PETCARE_CATEGORY, petcare_category),
    SYNCED("document_template", CS_TYPE_DOCUMENT_TEMPLATE, document_template),
    SYNCED("vaccine", CS_TYPE_VACCINE, vaccine),
    SYNCED("segment", CS_TYPE_SEGMENT, segment),
    SYNCED("advanced_setting", CS_TYPE_ADVANCED_SETTING, advanced_setting),
    SHARED("species", CS_TYPE_SPECIES, species),
    SHARED("breed", CS_TYPE_BREED, breed),
    SHARED("customer", CS_TYPE_CUSTOMER, customer),
    SHARED("pet", CS_TYPE_PET, pet),
    SHARED("breeding_animal", CS_TYPE_BREEDING_ANIMAL, breeding_animal),
    SHARED("custom_field", CS_TYPE_CUSTOM_FIELD, custom_field),
    LOCAL("staff", CS_TYPE_STAFF, staff),
    LOCAL("shop_info", CS_TYPE_SHOP_INFO, shop_info),
};

const cs_type *cs_schema_types(unsigned *count_out)
{
    *count_out = COUNT(types);
    return types;
}

const cs_type *cs_schema_find(const char *name)
{
    return cs_schema_find_str((cs_str){name, strlen(name)});
}

const cs_type *cs_schema_find_str(cs_str name)
{
    for (unsigned i = 0; i < COUNT(types); i++)
        if (strlen(types[i].name) == name.len && memcmp(types[i].name, name.ptr, name.len) == 0)
            return &types[i];
    return NULL;
}

const cs_type *cs_schema_by_code(uint8_t code)
{
    for (unsigned i = 0; i < COUNT(types); i++)
        if (types[i].code == code)
            return &types[i];
    return NULL;
}

/* ---- versions ---------------------------------------------------------------------------- */

/* Every change since version 1, oldest first (docs/design.md "Schema versions"). A change to
 * the table above gets an entry here and CS_SCHEMA_VERSION one more; test_engine checks that the
 * entries name fields the table has and that the last one is CS_SCHEMA_VERSION's. Never edit an
 * entry once released: logs written before it are read through it.
 *   2: service.buffer_min, the minutes kept free after the service before the next booking
 *      (cleaning, drying). Optional with no default: an older service has none, which is what
 *      "not set" already meant, so items written by version 1 keep their bytes (and digests). */
static const cs_schema_change changes[] = {
    {2, CS_SCHEMA_FIELD_ADDED, "service", "buffer_min", NULL, NULL},
};
_Static_assert(CS_SCHEMA_VERSION == 2u, "a new schema version needs its entries in `changes`");

const cs_schema_change *cs_schema_changes(unsigned *count_out)
{
    *count_out = COUNT(changes);
    return changes;
}

cs_err cs_schema_check_version(uint64_t seq, uint64_t version, char *msg, size_t msg_len)
{
    if (version >= 1 && version <= CS_SCHEMA_VERSION)
        return CS_OK;
    snprintf(msg, msg_len,
             "event %llu was written with schema version %llu, and this build reads versions 1 "
             "to %u: it needs chainsync with schema version %llu or later",
             (unsigned long long)seq, (unsigned long long)version, CS_SCHEMA_VERSION,
             (unsigned long long)version);
    return CS_PROTOCOL_MISMATCH;
}
