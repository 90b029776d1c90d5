/*
 * schema.c: the one table of every item type (SPEC 2): its class, its stable on-disk code, and
 * its fields with kinds, required flags, limits and reference targets. Validation, JSON and
 * msgpack conversion, reference checks and remapping all read this table (convert.c); no type
 * has a hand-written C struct.
 *
 * Type codes are part of the on-disk format (docs/storage.md, "items"): never renumber one.
 * Limits: names are short labels (120 bytes); free text is bounded at 4,000 bytes so that one
 * item stays far below CS_EVENT_BYTES_MAX; lists are bounded so an item cannot grow without end.
 */
#include "engine/engine_int.h"

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
    TYPE("service_category", 1, CS_CLASS_SYNCED, service_category),
    TYPE("service", 2, CS_CLASS_SYNCED, service),
    TYPE("combo", 3, CS_CLASS_SYNCED, combo),
    TYPE("plan", 4, CS_CLASS_SYNCED, plan),
    TYPE("payment_method", 5, CS_CLASS_SYNCED, payment_method),
    TYPE("checklist", 6, CS_CLASS_SYNCED, checklist),
    TYPE("notification_template", 7, CS_CLASS_SYNCED, notification_template),
    TYPE("petcare_category", 8, CS_CLASS_SYNCED, petcare_category),
    TYPE("document_template", 9, CS_CLASS_SYNCED, document_template),
    TYPE("vaccine", 10, CS_CLASS_SYNCED, vaccine),
    TYPE("segment", 11, CS_CLASS_SYNCED, segment),
    TYPE("advanced_setting", 12, CS_CLASS_SYNCED, advanced_setting),
    TYPE("species", 32, CS_CLASS_SHARED, species),
    TYPE("breed", 33, CS_CLASS_SHARED, breed),
    TYPE("customer", 34, CS_CLASS_SHARED, customer),
    TYPE("pet", 35, CS_CLASS_SHARED, pet),
    TYPE("breeding_animal", 36, CS_CLASS_SHARED, breeding_animal),
    TYPE("custom_field", 37, CS_CLASS_SHARED, custom_field),
    TYPE("staff", 64, CS_CLASS_LOCAL, staff),
    TYPE("shop_info", 65, CS_CLASS_LOCAL, shop_info),
};

_Static_assert(COUNT(types) <= CS__SYNCED_TYPES_MAX + 16, "type count within the set bound");

const cs_type *cs_schema_types(unsigned *count_out)
{
    *count_out = COUNT(types);
    return types;
}

const cs_type *cs_schema_find(const char *name)
{
    for (unsigned i = 0; i < COUNT(types); i++)
        if (strcmp(types[i].name, name) == 0)
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

const cs_type *cs__schema_find_len(const char *name, size_t len)
{
    for (unsigned i = 0; i < COUNT(types); i++)
        if (strlen(types[i].name) == len && memcmp(types[i].name, name, len) == 0)
            return &types[i];
    return NULL;
}
