/*
 * test_engine.c: the engine's contract at library level (engine/engine.h), one rule per test:
 * every kind of bad input is refused with its SPEC 6 code, a sentence naming the field or item,
 * and no change to the log or the state; shop-local records and password hashes stay out of
 * the log (R9); a single store runs no network command until it creates a network (R10, R11);
 * WhatsApp numbers resolve by the network's mode (R12); a delete at the head office archives
 * (R4); ids never collide between shops and grow within one (SPEC 2); and after a long random
 * mix of accepted and refused commands the state equals a replay of the log (SPEC 4, R14).
 * The vocabulary the layers above share keeps its contract: every event kind round-trips through
 * its stable logged name, and a cs_type_set holds codes up to its bound.
 *
 * "Changed nothing" is checked through the public API only: cs_engine_digest (a hash of every
 * database derived from the log) and the log's head sequence, before and after. Branch-side
 * refusals (R1, R11 on a branch) belong to the projection tests.
 */
#include "engine/engine.h"
#include "tests/harness.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* ---- helpers ----------------------------------------------------------------------------- */

/* The SPEC 2 name limit: names are 1 to 120 bytes. */
#define NAME_LIMIT_BYTES 120
/* The schema's price limit: one million in currency units. */
#define PRICE_LIMIT_CENTS 100000000

/* A test's data directory and its open engine, initialised as a single store. */
typedef struct fx {
    char *dir;
    cs_engine *e;
    uint64_t shop;
} fx;

static bool fx_open(fx *f, const char *tag, const cs_log_options *opts)
{
    memset(f, 0, sizeof(*f));
    f->dir = cs_test_tmpdir(tag);
    if (!f->dir)
        return false;
    if (cs_engine_open(f->dir, opts, &f->e) != CS_OK)
        return false;
    return cs_engine_init(f->e, "Pet Shop Centro", &f->shop) == CS_OK;
}

static void fx_close(fx *f)
{
    cs_engine_close(f->e);
    if (f->dir)
        cs_test_rmtree(f->dir);
    free(f->dir);
    memset(f, 0, sizeof(*f));
}

static cs_err log_head(cs_engine *e, uint64_t *head)
{
    cs_log_reader *r;
    cs_err err = cs_log_reader_open(cs_engine_log(e), &r);
    if (err != CS_OK)
        return err;
    err = cs_log_reader_head(r, head);
    cs_log_reader_close(r);
    return err;
}

/* What "changed nothing" compares: the derived state's digest and the log's head. */
typedef struct snap {
    uint64_t digest;
    uint64_t head;
} snap;

static bool snap_take(cs_engine *e, snap *s)
{
    return cs_engine_digest(e, &s->digest) == CS_OK && log_head(e, &s->head) == CS_OK;
}

static bool snap_unchanged(cs_engine *e, const snap *before)
{
    snap after;
    if (!snap_take(e, &after))
        return false;
    if (after.digest == before->digest && after.head == before->head)
        return true;
    fprintf(stderr, "  state changed: head %llu -> %llu, digest %s\n",
            (unsigned long long)before->head, (unsigned long long)after.head,
            after.digest == before->digest ? "same" : "differs");
    return false;
}

/* Checks a refusal: the code, and a sentence that mentions `needle` (a field, item or shop). */
static bool refused_with(cs_engine *e, cs_err got, cs_err want, const char *needle)
{
    const char *msg = cs_engine_errmsg(e);
    if (got != want) {
        fprintf(stderr, "  got %s, want %s (%s)\n", cs_err_name(got), cs_err_name(want), msg);
        return false;
    }
    if (!msg[0] || (needle && !strstr(msg, needle))) {
        fprintf(stderr, "  message '%s' does not name '%s'\n", msg, needle ? needle : "");
        return false;
    }
    return true;
}

/* A put that must be refused with `want`, naming `needle`, with log and state unchanged. */
static bool put_refused(cs_engine *e, const char *type, uint64_t id, json_t *fields,
                        uint64_t expect, cs_err want, const char *needle)
{
    snap before;
    cs_write_result res = {.id = 77, .version = 77, .seq = 77};
    bool ok = fields && snap_take(e, &before);
    if (ok) {
        cs_err got = cs_engine_put(e, type, id, fields, expect, &res);
        ok = refused_with(e, got, want, needle) && snap_unchanged(e, &before);
        ok = ok && res.id == 77 && res.version == 77 && res.seq == 77; /* out untouched */
    }
    json_decref(fields);
    return ok;
}

/* Parses a JSON literal of a test; NULL (and a failed CHECK at the caller) when it is bad. */
static json_t *J(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!j)
        fprintf(stderr, "  bad test JSON: %s\n", jerr.text);
    return j;
}

static cs_err put_json(cs_engine *e, const char *type, uint64_t id, const char *text,
                       uint64_t expect, cs_write_result *res)
{
    json_t *j = J(text);
    if (!j)
        return CS_USAGE;
    cs_err err = cs_engine_put(e, type, id, j, expect, res);
    json_decref(j);
    return err;
}

/* A put of fields the call consumes (so a json_pack can be passed in place). */
static cs_err put_owned(cs_engine *e, const char *type, uint64_t id, json_t *fields,
                        uint64_t expect, cs_write_result *res)
{
    cs_err err = fields ? cs_engine_put(e, type, id, fields, expect, res) : CS_NO_MEMORY;
    json_decref(fields);
    return err;
}

/* A catalog to refer to: one category and two services. */
typedef struct catalog {
    uint64_t category;
    uint64_t services[2];
} catalog;

static bool catalog_make(cs_engine *e, catalog *c)
{
    cs_write_result r;
    if (put_json(e, "service_category", 0, "{\"name\":\"Grooming\"}", 0, &r) != CS_OK)
        return false;
    c->category = r.id;
    for (int i = 0; i < 2; i++) {
        json_t *j =
            json_pack("{s:s,s:I,s:[{s:s,s:i}]}", "name", i ? "Trim" : "Bath", "category",
                      (json_int_t)c->category, "price_table", "tier", "small", "price_cents", 4500);
        if (put_owned(e, "service", 0, j, 0, &r) != CS_OK)
            return false;
        c->services[i] = r.id;
    }
    return true;
}

/* A valid service naming the category, as a new object the caller owns. */
static json_t *service_fields(uint64_t category, const char *name)
{
    return json_pack("{s:s,s:I,s:s,s:i,s:[{s:s,s:i}],s:b}", "name", name, "category",
                     (json_int_t)category, "description", "Shampoo and dry", "duration_min", 45,
                     "price_table", "tier", "small", "price_cents", 4500, "active", 1);
}

static void id_text(char *buf, size_t len, uint64_t id)
{
    snprintf(buf, len, "%llu", (unsigned long long)id);
}

/* ---- SPEC 6: validation ------------------------------------------------------------------ */

/* SPEC 6: a type the schema does not know is unknown_type, naming it. */
static void test_s6_unknown_type_is_refused_and_changes_nothing(void)
{
    fx f;
    CHECK(fx_open(&f, "eng-type", NULL));
    CHECK(put_refused(f.e, "spaceship", 0, J("{\"name\":\"x\"}"), 0, CS_UNKNOWN_TYPE, "spaceship"));
    snap before;
    CHECK(snap_take(f.e, &before));
    CHECK(refused_with(f.e, cs_engine_del(f.e, "spaceship", 5, 0, NULL), CS_UNKNOWN_TYPE,
                       "spaceship"));
    CHECK(snap_unchanged(f.e, &before));
    fx_close(&f);
}

/* SPEC 2, 6: a field the type does not have is invalid_input, naming it (nested too). */
static void test_s6_unknown_field_is_refused_and_changes_nothing(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-field", NULL));
    CHECK(catalog_make(f.e, &c));
    json_t *s = service_fields(c.category, "Bath");
    CHECK(s && json_object_set_new(s, "colour", json_string("red")) == 0);
    CHECK(put_refused(f.e, "service", 0, s, 0, CS_INVALID_INPUT, "colour"));
    s = service_fields(c.category, "Bath");
    json_t *tier = json_array_get(json_object_get(s, "price_table"), 0);
    CHECK(tier && json_object_set_new(tier, "colour", json_string("red")) == 0);
    CHECK(put_refused(f.e, "service", 0, s, 0, CS_INVALID_INPUT, "price_table[0].colour"));
    fx_close(&f);
}

/* SPEC 2, 6: a missing required field is invalid_input, naming it (nested too). */
static void test_s6_missing_required_field_is_refused_and_changes_nothing(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-req", NULL));
    CHECK(catalog_make(f.e, &c));
    json_t *s = service_fields(c.category, "Bath");
    CHECK(s && json_object_del(s, "category") == 0);
    CHECK(put_refused(f.e, "service", 0, s, 0, CS_INVALID_INPUT, "category"));
    s = service_fields(c.category, "Bath");
    CHECK(s && json_object_set_new(s, "name", json_null()) == 0); /* null is absent */
    CHECK(put_refused(f.e, "service", 0, s, 0, CS_INVALID_INPUT, "name"));
    s = service_fields(c.category, "Bath");
    json_t *tier = json_array_get(json_object_get(s, "price_table"), 0);
    CHECK(tier && json_object_del(tier, "price_cents") == 0);
    CHECK(put_refused(f.e, "service", 0, s, 0, CS_INVALID_INPUT, "price_table[0].price_cents"));
    /* an update is a full state too: it is refused the same way */
    s = service_fields(c.category, "Bath");
    CHECK(s && json_object_del(s, "price_table") == 0);
    CHECK(put_refused(f.e, "service", c.services[0], s, 0, CS_INVALID_INPUT, "price_table"));
    fx_close(&f);
}

/* SPEC 2, 6: a value of the wrong kind is invalid_input, naming the field. */
static void test_s6_wrong_kind_is_refused_and_changes_nothing(void)
{
    static const struct {
        const char *field;
        const char *json; /* the wrong value */
    } cases[] = {
        {"duration_min", "\"45\""},     /* string for integer */
        {"duration_min", "4.5"},        /* real for integer */
        {"name", "5"},                  /* integer for string */
        {"active", "\"yes\""},          /* string for bool */
        {"category", "\"Grooming\""},   /* string for a reference */
        {"category", "0"},              /* not an item id */
        {"price_table", "{}"},          /* object for a list */
        {"price_table", "[\"small\"]"}, /* string for an object in a list */
        {"description", "[]"},          /* list for string */
    };
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-kind", NULL));
    CHECK(catalog_make(f.e, &c));
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *s = service_fields(c.category, "Bath");
        json_t *v = J(cases[i].json);
        CHECK(s && v && json_object_set_new(s, cases[i].field, v) == 0);
        CHECK(put_refused(f.e, "service", 0, s, 0, CS_INVALID_INPUT, cases[i].field));
    }
    CHECK(put_refused(f.e, "service", 0, J("[1,2]"), 0, CS_INVALID_INPUT, NULL)); /* not a map */
    fx_close(&f);
}

/* SPEC 2, 6: a name over its 120-byte limit is invalid_input; at the limit it is accepted. */
static void test_s6_string_over_limit_is_refused_at_limit_accepted(void)
{
    fx f;
    CHECK(fx_open(&f, "eng-long", NULL));
    char name[NAME_LIMIT_BYTES + 2];
    memset(name, 'n', sizeof(name) - 1);
    name[NAME_LIMIT_BYTES + 1] = '\0'; /* 121 bytes */
    CHECK(put_refused(f.e, "service_category", 0, json_pack("{s:s}", "name", name), 0,
                      CS_INVALID_INPUT, "name"));
    CHECK(put_refused(f.e, "service_category", 0, json_pack("{s:s}", "name", ""), 0,
                      CS_INVALID_INPUT, "name"));
    name[NAME_LIMIT_BYTES] = '\0'; /* 120 bytes */
    cs_write_result r;
    CHECK_OK(put_owned(f.e, "service_category", 0, json_pack("{s:s}", "name", name), 0, &r));
    json_t *got;
    CHECK_OK(cs_engine_get(f.e, "service_category", r.id, &got));
    bool same = strcmp(json_string_value(json_object_get(got, "name")), name) == 0;
    json_decref(got);
    CHECK(same);
    fx_close(&f);
}

/* SPEC 2, 6: an enum value outside its list is invalid_input, naming the field. */
static void test_s6_enum_value_not_allowed_is_refused(void)
{
    fx f;
    CHECK(fx_open(&f, "eng-enum", NULL));
    CHECK(put_refused(f.e, "payment_method", 0, J("{\"name\":\"Coins\",\"kind\":\"bitcoin\"}"), 0,
                      CS_INVALID_INPUT, "kind"));
    CHECK(put_refused(f.e, "payment_method", 0, J("{\"name\":\"Coins\",\"kind\":\"PIX\"}"), 0,
                      CS_INVALID_INPUT, "kind")); /* case matters */
    CHECK(put_refused(f.e, "payment_method", 0, J("{\"name\":\"Coins\",\"kind\":3}"), 0,
                      CS_INVALID_INPUT, "kind"));
    CHECK_OK(put_json(f.e, "payment_method", 0, "{\"name\":\"Pix\",\"kind\":\"pix\"}", 0, NULL));
    fx_close(&f);
}

/* SPEC 6: the refusal of an enum names its allowed values; a list longer than the message has
 * room for is cut with "..." (it once overran its buffer past 157 bytes), at and around the
 * length where the old bound underflowed. */
static void test_s6_enum_refusal_with_a_long_value_list_is_cut_not_overrun(void)
{
    static const char *const values[] = {
        "alpha_value", "bravo_value",  "charlie_value", "delta_value", "echo_value",
        "foxtrot_val", "golf_value",   "hotel_value",   "india_value", "juliett_val",
        "kilo_value",  "lima_value",   "mike_value",    "november_v",  "oscar_value",
        "papa_value",  "quebec_value", "romeo_value",   "sierra_val",  "tango_value",
        NULL};
    static const cs_field fields[] = {
        {.name = "kind", .kind = CS_FIELD_ENUM, .required = true, .enum_values = values}};
    const cs_type t = {
        .name = "long_enum", .code = 250, .cls = CS_CLASS_LOCAL, .fields = fields, .nfields = 1};
    uint8_t *out = NULL;
    size_t len = 0;
    char msg[512];
    json_t *bad = J("{\"kind\":\"zulu\"}");
    CHECK(cs_schema_from_json(&t, bad, &out, &len, msg, sizeof(msg)) == CS_INVALID_INPUT);
    json_decref(bad);
    CHECK(strstr(msg, "kind") && strstr(msg, "alpha_value, bravo_value"));
    CHECK(strlen(msg) < 260 && strcmp(msg + strlen(msg) - 3, "...") == 0);
    json_t *good = J("{\"kind\":\"tango_value\"}"); /* the last value is still allowed */
    CHECK_OK(cs_schema_from_json(&t, good, &out, &len, msg, sizeof(msg)));
    json_decref(good);
    free(out);
}

/* SPEC 2, 6: a combo needs at least two services; one is invalid_input naming `services`. */
static void test_s6_combo_with_one_service_is_refused(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-combo", NULL));
    CHECK(catalog_make(f.e, &c));
    CHECK(put_refused(f.e, "combo", 0,
                      json_pack("{s:s,s:[I],s:i}", "name", "Solo", "services",
                                (json_int_t)c.services[0], "price_cents", 9000),
                      0, CS_INVALID_INPUT, "services"));
    CHECK(put_refused(f.e, "combo", 0,
                      json_pack("{s:s,s:[],s:i}", "name", "None", "services", "price_cents", 9000),
                      0, CS_INVALID_INPUT, "services"));
    json_t *two =
        json_pack("{s:s,s:[I,I],s:i}", "name", "Duo", "services", (json_int_t)c.services[0],
                  (json_int_t)c.services[1], "price_cents", 9000);
    CHECK_OK(put_owned(f.e, "combo", 0, two, 0, NULL));
    fx_close(&f);
}

/* SPEC 2, 6: a price outside 0..1,000,000.00 is invalid_input; both ends are accepted. */
static void test_s6_price_out_of_range_is_refused_at_limit_accepted(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-price", NULL));
    CHECK(catalog_make(f.e, &c));
    const json_int_t prices[] = {-1, PRICE_LIMIT_CENTS + 1, 0, PRICE_LIMIT_CENTS};
    for (int i = 0; i < 4; i++) {
        json_t *combo =
            json_pack("{s:s,s:[I,I],s:I}", "name", "Duo", "services", (json_int_t)c.services[0],
                      (json_int_t)c.services[1], "price_cents", prices[i]);
        if (i < 2) {
            CHECK(put_refused(f.e, "combo", 0, combo, 0, CS_INVALID_INPUT, "price_cents"));
            continue;
        }
        CHECK_OK(put_owned(f.e, "combo", 0, combo, 0, NULL));
    }
    json_t *s = service_fields(c.category, "Bath"); /* a price nested in a list */
    json_t *tier = json_array_get(json_object_get(s, "price_table"), 0);
    CHECK(tier && json_object_set_new(tier, "price_cents", json_integer(-5)) == 0);
    CHECK(put_refused(f.e, "service", 0, s, 0, CS_INVALID_INPUT, "price_table[0].price_cents"));
    fx_close(&f);
}

/* Issue 12 (hostile input), SPEC 6: a library caller can hand put strings jansson's parser
 * never makes (json_stringn_nocheck): bytes that are not UTF-8, or a NUL, in a string field or
 * a string list, at the top or nested. Validation refuses them with invalid_input naming the
 * field, and nothing changes; a UTF-8 name with accents and an emoji is accepted. */
static void test_issue12_field_strings_not_utf8_are_refused_naming_the_field(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-utf8", NULL));
    CHECK(catalog_make(f.e, &c));
    static const struct {
        const char *s;
        size_t n;
    } bad[] = {{"Bath\xff", 5}, {"\xc0\xaf", 2}, {"\xed\xa0\x80", 3}, {"Ba\0th", 5}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *s = service_fields(c.category, "Bath");
        CHECK(s && json_object_set_new(s, "name", json_stringn_nocheck(bad[i].s, bad[i].n)) == 0);
        CHECK(put_refused(f.e, "service", 0, s, 0, CS_INVALID_INPUT, "'name': must be UTF-8"));
        s = service_fields(c.category, "Bath");
        json_t *tier = json_array_get(json_object_get(s, "price_table"), 0);
        CHECK(tier &&
              json_object_set_new(tier, "tier", json_stringn_nocheck(bad[i].s, bad[i].n)) == 0);
        CHECK(put_refused(f.e, "service", 0, s, 0, CS_INVALID_INPUT,
                          "'price_table[0].tier': must be UTF-8"));
        json_t *list = json_pack("{s:s,s:[s,o]}", "name", "Check", "items", "ok",
                                 json_stringn_nocheck(bad[i].s, bad[i].n));
        CHECK(put_refused(f.e, "checklist", 0, list, 0, CS_INVALID_INPUT,
                          "'items[1]': must be UTF-8"));
    }
    json_t *s = service_fields(c.category, "Banho e tosa \xc3\xa0 m\xc3\xa3o \xf0\x9f\x90\xb6");
    CHECK_OK(put_owned(f.e, "service", 0, s, 0, NULL));
    fx_close(&f);
}

/* SPEC 2, 6: a service naming a category that does not exist is dangling_reference, naming
 * the field and the id; so is an id of another type. */
static void test_s6_reference_to_missing_item_is_dangling(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-dangle", NULL));
    CHECK(catalog_make(f.e, &c));
    uint64_t missing = c.services[1] + 1000;
    char idt[24];
    id_text(idt, sizeof(idt), missing);
    CHECK(put_refused(f.e, "service", 0, service_fields(missing, "Bath"), 0, CS_DANGLING_REFERENCE,
                      "category"));
    CHECK(strstr(cs_engine_errmsg(f.e), idt));
    /* a service's id is not a category's */
    id_text(idt, sizeof(idt), c.services[0]);
    CHECK(put_refused(f.e, "service", 0, service_fields(c.services[0], "Bath"), 0,
                      CS_DANGLING_REFERENCE, idt));
    /* on update too */
    CHECK(put_refused(f.e, "service", c.services[0], service_fields(missing, "Bath"), 0,
                      CS_DANGLING_REFERENCE, "category"));
    fx_close(&f);
}

/* SPEC 6, R4: a combo naming a deleted service is dangling_reference, naming the element. */
static void test_s6_reference_to_deleted_item_is_dangling(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-deleted", NULL));
    CHECK(catalog_make(f.e, &c));
    CHECK_OK(cs_engine_del(f.e, "service", c.services[1], 0, NULL));
    CHECK(put_refused(f.e, "combo", 0,
                      json_pack("{s:s,s:[I,I],s:i}", "name", "Duo", "services",
                                (json_int_t)c.services[0], (json_int_t)c.services[1], "price_cents",
                                9000),
                      0, CS_DANGLING_REFERENCE, "services[1]"));
    CHECK(strstr(cs_engine_errmsg(f.e), "deleted"));
    fx_close(&f);
}

/* SPEC 6, R8: an expected version that is not the item's is version_conflict, naming it. */
static void test_s6_expect_version_mismatch_is_version_conflict(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-version", NULL));
    CHECK(catalog_make(f.e, &c));
    char idt[24];
    id_text(idt, sizeof(idt), c.services[0]);
    cs_write_result r;
    CHECK_OK(put_owned(f.e, "service", c.services[0], service_fields(c.category, "Bath 2"), 1, &r));
    CHECK(r.version == 2);
    CHECK(put_refused(f.e, "service", c.services[0], service_fields(c.category, "Bath 3"), 1,
                      CS_VERSION_CONFLICT, idt));
    CHECK(put_refused(f.e, "service", c.services[0], service_fields(c.category, "Bath 3"), 3,
                      CS_VERSION_CONFLICT, idt));
    /* a create has no version to expect */
    CHECK(put_refused(f.e, "service", 0, service_fields(c.category, "Bath 3"), 1,
                      CS_VERSION_CONFLICT, "service"));
    snap before;
    CHECK(snap_take(f.e, &before));
    CHECK(refused_with(f.e, cs_engine_del(f.e, "service", c.services[0], 1, NULL),
                       CS_VERSION_CONFLICT, idt));
    CHECK(snap_unchanged(f.e, &before));
    fx_close(&f);
}

/* SPEC 6: an update or delete of an id that does not exist is not_found, naming it. */
static void test_s6_update_of_missing_id_is_not_found(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-missing", NULL));
    CHECK(catalog_make(f.e, &c));
    uint64_t missing = c.services[1] + 1000;
    char idt[24];
    id_text(idt, sizeof(idt), missing);
    CHECK(put_refused(f.e, "service", missing, service_fields(c.category, "Bath"), 0, CS_NOT_FOUND,
                      idt));
    /* the category's id is no service */
    id_text(idt, sizeof(idt), c.category);
    CHECK(put_refused(f.e, "service", c.category, service_fields(c.category, "Bath"), 0,
                      CS_NOT_FOUND, idt));
    snap before;
    CHECK(snap_take(f.e, &before));
    CHECK(refused_with(f.e, cs_engine_del(f.e, "service", missing, 0, NULL), CS_NOT_FOUND, NULL));
    CHECK(refused_with(f.e, cs_engine_del(f.e, "service", 0, 0, NULL), CS_INVALID_INPUT, NULL));
    json_t *got = NULL;
    CHECK(refused_with(f.e, cs_engine_get(f.e, "service", missing, &got), CS_NOT_FOUND, NULL));
    CHECK(got == NULL);
    CHECK(snap_unchanged(f.e, &before));
    fx_close(&f);
}

/* SPEC 6: a batch with one bad element is refused whole, naming the element. */
static void test_s6_put_many_with_one_bad_element_changes_nothing(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-many", NULL));
    CHECK(catalog_make(f.e, &c));
    snap before;
    CHECK(snap_take(f.e, &before));
    json_t *batch = json_array();
    CHECK(batch);
    for (int i = 0; i < 3; i++)
        CHECK(json_array_append_new(batch, service_fields(c.category, "Bath")) == 0);
    json_object_set_new(json_array_get(batch, 2), "category", json_integer(999999));
    cs_err err = cs_engine_put_many(f.e, "service", batch, NULL);
    CHECK(refused_with(f.e, err, CS_DANGLING_REFERENCE, "element 2"));
    CHECK(snap_unchanged(f.e, &before));
    json_object_set_new(json_array_get(batch, 1), "duration_min", json_string("long"));
    err = cs_engine_put_many(f.e, "service", batch, NULL);
    json_decref(batch);
    CHECK(refused_with(f.e, err, CS_INVALID_INPUT, "element 1"));
    CHECK(snap_unchanged(f.e, &before));
    fx_close(&f);
}

/* ---- R9: shop-local records and secrets -------------------------------------------------- */

/* R9: staff and shop_info writes return seq 0 and change neither the log nor the digest. */
static void test_r9_local_records_are_not_logged(void)
{
    fx f;
    CHECK(fx_open(&f, "eng-local", NULL));
    snap before;
    CHECK(snap_take(f.e, &before));
    cs_write_result staff, info, upd, del;
    CHECK_OK(put_json(f.e, "staff", 0, "{\"name\":\"Ana\",\"role\":\"groomer\"}", 0, &staff));
    CHECK_OK(
        put_json(f.e, "shop_info", 0, "{\"name\":\"Centro\",\"address\":\"Rua A, 1\"}", 0, &info));
    CHECK_OK(put_json(f.e, "staff", staff.id, "{\"name\":\"Ana Lima\"}", 1, &upd));
    CHECK_OK(cs_engine_del(f.e, "shop_info", info.id, 0, &del));
    CHECK(staff.seq == 0);
    CHECK(info.seq == 0);
    CHECK(upd.seq == 0);
    CHECK(del.seq == 0);
    CHECK(upd.version == 2);
    CHECK(snap_unchanged(f.e, &before));
    json_t *got;
    CHECK_OK(cs_engine_get(f.e, "staff", staff.id, &got));
    bool named = strcmp(json_string_value(json_object_get(got, "name")), "Ana Lima") == 0;
    json_decref(got);
    CHECK(named);
    fx_close(&f);
}

/* R9: a password change is logged as a fact without the hash; the new password authenticates
 * and the old one no longer does. */
static void test_r9_password_change_logs_no_hash(void)
{
    fx f;
    CHECK(fx_open(&f, "eng-pw", NULL));
    CHECK_OK(cs_engine_network_create(f.e, "Rede Pet"));
    uint64_t branch, head0, head1;
    CHECK_OK(cs_engine_shop_add(f.e, "Filial Norte", "first-secret", &branch));
    CHECK_OK(cs_engine_shop_auth(f.e, branch, "first-secret"));
    CHECK_OK(log_head(f.e, &head0));
    CHECK_OK(cs_engine_shop_password(f.e, branch, "second-secret"));
    CHECK_OK(log_head(f.e, &head1));
    CHECK(head1 == head0 + 1);
    CHECK_OK(cs_engine_shop_auth(f.e, branch, "second-secret"));
    CHECK(
        refused_with(f.e, cs_engine_shop_auth(f.e, branch, "first-secret"), CS_AUTH_FAILED, NULL));
    cs_log_reader *r;
    cs_event_decoder *dec;
    CHECK_OK(cs_event_decoder_new(&dec));
    CHECK_OK(cs_log_reader_open(cs_engine_log(f.e), &r));
    cs_log_record rec;
    cs_err err;
    unsigned events = 0, password_events = 0, hashes = 0;
    while ((err = cs_log_reader_next(r, &rec)) == CS_OK) {
        events++;
        if (memmem(rec.event, rec.event_len, "$argon2id$", 10))
            hashes++;
        cs_event_view ev;
        if (cs_event_decode(dec, rec.event, rec.event_len, &ev) == CS_OK && ev.kind.len == 13 &&
            memcmp(ev.kind.ptr, "shop_password", 13) == 0 && ev.id == branch)
            password_events++;
    }
    cs_log_reader_close(r);
    cs_event_decoder_free(dec);
    CHECK(err == CS_NOT_FOUND);
    CHECK(events == head1);
    CHECK(password_events == 1);
    CHECK(hashes == 0);
    fx_close(&f);
}

/* ---- R10, R11: roles ---------------------------------------------------------------------- */

/* R10: a single store runs no network command: each is not_in_network and changes nothing. */
static void test_r10_single_store_refuses_network_commands(void)
{
    fx f;
    CHECK(fx_open(&f, "eng-single", NULL));
    snap before;
    CHECK(snap_take(f.e, &before));
    const char *types[] = {"service", "combo"};
    json_t *out = NULL;
    const char *mode = NULL;
    uint64_t shop = 0, seq = 0;
    char *number = NULL;
    cs_engine *e = f.e;
    CHECK(refused_with(e, cs_engine_network_types(e, types, 2, &out), CS_NOT_IN_NETWORK, NULL));
    CHECK(refused_with(e, cs_engine_network_types(e, NULL, 0, &out), CS_NOT_IN_NETWORK, NULL));
    CHECK(refused_with(e, cs_engine_network_mode(e, "continuous", &mode), CS_NOT_IN_NETWORK, NULL));
    CHECK(refused_with(e, cs_engine_network_mode(e, NULL, &mode), CS_NOT_IN_NETWORK, NULL));
    CHECK(refused_with(e, cs_engine_network_whatsapp(e, "individual", "+55 11 5555-0000", &out),
                       CS_NOT_IN_NETWORK, NULL));
    CHECK(refused_with(e, cs_engine_shop_add(e, "Filial", "long-enough", &shop), CS_NOT_IN_NETWORK,
                       NULL));
    CHECK(refused_with(e, cs_engine_shop_whatsapp(e, f.shop, "+55 11 5555-0000"), CS_NOT_IN_NETWORK,
                       NULL));
    CHECK(refused_with(e, cs_engine_sync(e, 0, &seq), CS_NOT_IN_NETWORK, NULL));
    CHECK(refused_with(e, cs_engine_sync(e, 12345, &seq), CS_NOT_IN_NETWORK, NULL));
    CHECK(refused_with(e, cs_engine_shop_switch(e, 12345, false), CS_NOT_IN_NETWORK, NULL));
    CHECK(refused_with(e, cs_engine_shop_list(e, &out), CS_NOT_IN_NETWORK, NULL));
    CHECK(refused_with(e, cs_engine_whatsapp_resolve(e, f.shop, &number), CS_NOT_IN_NETWORK, NULL));
    CHECK(out == NULL);
    CHECK(mode == NULL);
    CHECK(shop == 0);
    CHECK(seq == 0);
    CHECK(number == NULL);
    CHECK(snap_unchanged(e, &before));
    fx_close(&f);
}

/* R10: network create makes a single store the head office and keeps its items. */
static void test_r10_network_create_makes_head_and_keeps_items(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-create", NULL));
    CHECK(catalog_make(f.e, &c));
    cs_write_result staff;
    CHECK_OK(put_json(f.e, "staff", 0, "{\"name\":\"Ana\"}", 0, &staff));
    json_t *before, *after;
    CHECK_OK(cs_engine_list(f.e, "service", false, &before));
    CHECK_OK(cs_engine_network_create(f.e, "Rede Pet"));
    cs_shop_info self;
    CHECK_OK(cs_engine_self(f.e, &self));
    CHECK(self.role == CS_ROLE_HEAD);
    CHECK(self.id == f.shop);
    CHECK_OK(cs_engine_list(f.e, "service", false, &after));
    bool same = json_equal(before, after) && json_array_size(after) == 2;
    json_decref(before);
    json_decref(after);
    CHECK(same);
    json_t *got;
    CHECK_OK(cs_engine_get(f.e, "service_category", c.category, &got));
    json_decref(got);
    CHECK_OK(cs_engine_get(f.e, "staff", staff.id, &got));
    json_decref(got);
    const char *mode;
    CHECK_OK(cs_engine_network_mode(f.e, NULL, &mode));
    CHECK(strcmp(mode, "on-trigger") == 0); /* R5: the default */
    fx_close(&f);
}

/* R11: a head office cannot create a network again: forbidden, nothing changes. */
static void test_r11_network_create_on_head_is_forbidden(void)
{
    fx f;
    CHECK(fx_open(&f, "eng-twice", NULL));
    CHECK_OK(cs_engine_network_create(f.e, "Rede Pet"));
    snap before;
    CHECK(snap_take(f.e, &before));
    CHECK(refused_with(f.e, cs_engine_network_create(f.e, "Rede Dois"), CS_FORBIDDEN, NULL));
    CHECK(snap_unchanged(f.e, &before));
    fx_close(&f);
}

/* ---- R12: WhatsApp ------------------------------------------------------------------------ */

/* A head office with two branches, for the WhatsApp tests. */
static bool fx_open_network(fx *f, const char *tag, uint64_t branches[2])
{
    return fx_open(f, tag, NULL) && cs_engine_network_create(f->e, "Rede Pet") == CS_OK &&
           cs_engine_shop_add(f->e, "Filial Norte", "secret-norte", &branches[0]) == CS_OK &&
           cs_engine_shop_add(f->e, "Filial Sul", "secret-sul", &branches[1]) == CS_OK;
}

static bool resolves_to(cs_engine *e, uint64_t shop, const char *want)
{
    char *got = NULL;
    cs_err err = cs_engine_whatsapp_resolve(e, shop, &got);
    bool ok = err == CS_OK && strcmp(got, want) == 0;
    if (!ok)
        fprintf(stderr, "  shop %llu resolves to %s (%s), want %s\n", (unsigned long long)shop,
                got ? got : "nothing", cs_err_name(err), want);
    free(got);
    return ok;
}

/* R12: in shared mode (the default) with no number set, resolving is not_found. */
static void test_r12_shared_mode_without_number_is_not_found(void)
{
    fx f;
    uint64_t b[2];
    CHECK(fx_open_network(&f, "eng-wa-none", b));
    char *got = NULL;
    CHECK(refused_with(f.e, cs_engine_whatsapp_resolve(f.e, f.shop, &got), CS_NOT_FOUND, NULL));
    CHECK(refused_with(f.e, cs_engine_whatsapp_resolve(f.e, b[0], &got), CS_NOT_FOUND, NULL));
    /* a branch's own number does not count in shared mode */
    CHECK_OK(cs_engine_shop_whatsapp(f.e, b[1], "+55 21 4444-0001"));
    CHECK(refused_with(f.e, cs_engine_whatsapp_resolve(f.e, b[1], &got), CS_NOT_FOUND, NULL));
    CHECK(got == NULL);
    fx_close(&f);
}

/* R12: in shared mode every shop answers with the head office's number. */
static void test_r12_shared_mode_answers_head_number_for_every_shop(void)
{
    fx f;
    uint64_t b[2];
    CHECK(fx_open_network(&f, "eng-wa-shared", b));
    CHECK_OK(cs_engine_shop_whatsapp(f.e, b[0], "+55 21 4444-0001"));
    json_t *wa;
    CHECK_OK(cs_engine_network_whatsapp(f.e, "shared", "+55 11 3333-0000", &wa));
    bool shown = strcmp(json_string_value(json_object_get(wa, "number")), "+55 11 3333-0000") == 0;
    json_decref(wa);
    CHECK(shown);
    CHECK(resolves_to(f.e, f.shop, "+55 11 3333-0000"));
    CHECK(resolves_to(f.e, b[0], "+55 11 3333-0000"));
    CHECK(resolves_to(f.e, b[1], "+55 11 3333-0000"));
    char *got = NULL; /* a shop outside the network */
    CHECK(refused_with(f.e, cs_engine_whatsapp_resolve(f.e, 0x80000001ull, &got), CS_NOT_FOUND,
                       NULL));
    fx_close(&f);
}

/* R12: in individual mode each shop answers with its own number; none set is not_found. */
static void test_r12_individual_mode_answers_each_shops_own_number(void)
{
    fx f;
    uint64_t b[2];
    CHECK(fx_open_network(&f, "eng-wa-indiv", b));
    CHECK_OK(cs_engine_network_whatsapp(f.e, "individual", "+55 11 3333-0000", NULL));
    CHECK_OK(cs_engine_shop_whatsapp(f.e, b[0], "+55 21 4444-0001"));
    CHECK(resolves_to(f.e, f.shop, "+55 11 3333-0000"));
    CHECK(resolves_to(f.e, b[0], "+55 21 4444-0001"));
    char *got = NULL, idt[24];
    id_text(idt, sizeof(idt), b[1]);
    CHECK(refused_with(f.e, cs_engine_whatsapp_resolve(f.e, b[1], &got), CS_NOT_FOUND, idt));
    CHECK(got == NULL);
    /* the head office's own number set through `shop whatsapp` is the network's */
    CHECK_OK(cs_engine_shop_whatsapp(f.e, f.shop, "+55 11 3333-9999"));
    CHECK(resolves_to(f.e, f.shop, "+55 11 3333-9999"));
    fx_close(&f);
}

/* SPEC 6, R12: a shop's number that is missing or not a phone number is invalid_input with a
 * sentence naming the shop or the number, before any role check, and changes nothing. */
static void test_s6_shop_whatsapp_without_valid_number_is_refused_with_a_sentence(void)
{
    fx f;
    CHECK(fx_open(&f, "eng-wa-null", NULL));
    snap before;
    CHECK(snap_take(f.e, &before));
    char idt[24];
    id_text(idt, sizeof(idt), f.shop);
    CHECK(refused_with(f.e, cs_engine_shop_whatsapp(f.e, f.shop, NULL), CS_INVALID_INPUT, idt));
    CHECK(refused_with(f.e, cs_engine_shop_whatsapp(f.e, f.shop, "call me"), CS_INVALID_INPUT,
                       "call me"));
    CHECK(refused_with(f.e, cs_engine_network_whatsapp(f.e, NULL, "12", NULL), CS_INVALID_INPUT,
                       "12"));
    CHECK(snap_unchanged(f.e, &before));
    fx_close(&f);
}

/* ---- R4, ids ------------------------------------------------------------------------------ */

static bool list_has(cs_engine *e, const char *type, bool archived, uint64_t id)
{
    json_t *arr;
    if (cs_engine_list(e, type, archived, &arr) != CS_OK)
        return false;
    bool found = false;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *it = json_array_get(arr, i);
        if ((uint64_t)json_integer_value(json_object_get(it, "id")) == id)
            found = true;
    }
    json_decref(arr);
    return found;
}

/* R4: a delete at the head office archives: left out of the normal list, shown with
 * --archived, still resolvable by id with its fields and "archived": true. */
static void test_r4_delete_at_head_archives_item(void)
{
    fx f;
    catalog c;
    CHECK(fx_open(&f, "eng-archive", NULL));
    CHECK_OK(cs_engine_network_create(f.e, "Rede Pet"));
    CHECK(catalog_make(f.e, &c));
    uint64_t id = c.services[0], head;
    CHECK(list_has(f.e, "service", false, id));
    CHECK(!list_has(f.e, "service", true, id));
    cs_write_result r;
    CHECK_OK(cs_engine_del(f.e, "service", id, 1, &r));
    CHECK_OK(log_head(f.e, &head));
    CHECK(r.id == id);
    CHECK(r.version == 2);
    CHECK(r.seq == head);
    CHECK(!list_has(f.e, "service", false, id));
    CHECK(list_has(f.e, "service", true, id));
    CHECK(list_has(f.e, "service", false, c.services[1])); /* the other one stays listed */
    CHECK(!list_has(f.e, "service", true, c.services[1]));
    json_t *got;
    CHECK_OK(cs_engine_get(f.e, "service", id, &got));
    bool ok = json_is_true(json_object_get(got, "archived")) &&
              json_integer_value(json_object_get(got, "version")) == 2 &&
              strcmp(json_string_value(json_object_get(got, "name")), "Bath") == 0 &&
              (uint64_t)json_integer_value(json_object_get(got, "category")) == c.category;
    json_decref(got);
    CHECK(ok);
    /* an archived item is not deleted twice, nor edited */
    CHECK(refused_with(f.e, cs_engine_del(f.e, "service", id, 0, NULL), CS_NOT_FOUND, NULL));
    CHECK(
        put_refused(f.e, "service", id, service_fields(c.category, "Bath"), 0, CS_NOT_FOUND, NULL));
    fx_close(&f);
}

#define IDS_PER_SHOP 60

/* SPEC 2: ids allocated by two shops without coordination never collide, and each shop's
 * ids increase in the order it created them, across types. */
static void test_ids_are_unique_across_shops_and_increasing_within_one(void)
{
    fx f[2];
    uint64_t ids[2][IDS_PER_SHOP];
    CHECK(fx_open(&f[0], "eng-ids-a", NULL));
    CHECK(fx_open(&f[1], "eng-ids-b", NULL));
    CHECK(f[0].shop != f[1].shop);
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < IDS_PER_SHOP; i++) {
            cs_write_result r;
            const char *type = i % 3 == 0 ? "species" : i % 3 == 1 ? "service_category" : "staff";
            CHECK_OK(put_json(f[s].e, type, 0, "{\"name\":\"Cat\"}", 0, &r));
            ids[s][i] = r.id;
            CHECK(r.id != 0);
            CHECK(i == 0 || ids[s][i] > ids[s][i - 1]);
        }
    }
    for (int i = 0; i < IDS_PER_SHOP; i++)
        for (int j = 0; j < IDS_PER_SHOP; j++)
            CHECK(ids[0][i] != ids[1][j]);
    fx_close(&f[0]);
    fx_close(&f[1]);
}

/* ---- SPEC 4, R14: replay of a random command mix ----------------------------------------- */

#define MIX_COMMANDS 10000u
#define MIX_SEED 0x5eed2024c0ffee01ull
/* argon2id costs about 0.1 s a hash: a few shop adds are enough to cover the kind. */
#define MIX_SHOP_ADDS_MAX 3u
/* The single store becomes a head office here: before it, network commands are refused. */
#define MIX_NETWORK_AT 1500u
/* Replay is also compared half-way, so a divergence is caught near where it starts. */
#define MIX_REPLAY_AT 5000u
/* A shop id no shop can have: shop ids are 31-bit. */
#define MIX_NO_SHOP 0x80000001ull
/* A map this small fills within the first hundreds of commands, and again after each doubling. */
#define MIX_MAP_BYTES_SMALL ((size_t)64 * 1024)

enum { M_CATEGORY, M_SERVICE, M_COMBO, M_PAYMENT, M_SPECIES, M_BREED, M_STAFF, M_TYPES };
static const char *const mix_type_names[M_TYPES] = {
    "service_category", "service", "combo", "payment_method", "species", "breed", "staff"};

typedef struct mix_item {
    uint64_t id;
    uint64_t version;
    bool deleted;
} mix_item;

/* The model the engine is compared with: what exists, and what the log head should be. */
typedef struct mix {
    fx f;
    uint64_t rng;
    mix_item *items[M_TYPES]; /* MIX_COMMANDS entries each */
    size_t n[M_TYPES];
    uint64_t head;
    bool is_head;
    uint64_t shops[MIX_SHOP_ADDS_MAX];
    bool linked[MIX_SHOP_ADDS_MAX];
    size_t nshops;
    unsigned shop_add_calls;
    unsigned accepted;
    unsigned refused;
    bool continuous; /* the network's mode: R5d commands then append a sync point too */
    char what[160];  /* the current command, for a failure's message */
} mix;

/* One command: what the model expects, what the engine said, and what it appends. */
typedef struct mix_cmd {
    cs_err want;
    cs_err got;
    bool logged;     /* appends one event when accepted */
    bool sync_point; /* ... and a sync point after it (continuous mode, docs/design.md) */
    cs_write_result res;
} mix_cmd;

static uint64_t mix_rand(mix *m)
{
    m->rng ^= m->rng << 13; /* xorshift64: fixed seed, same sequence on every run */
    m->rng ^= m->rng >> 7;
    m->rng ^= m->rng << 17;
    return m->rng;
}

static size_t mix_below(mix *m, size_t n)
{
    return (size_t)(mix_rand(m) % n);
}

/* A random item of type t that is deleted or not, as asked; NULL when there is none. */
static mix_item *mix_pick(mix *m, int t, bool deleted)
{
    size_t n = m->n[t];
    size_t start = n ? mix_below(m, n) : 0;
    for (size_t k = 0; k < n; k++) {
        mix_item *it = &m->items[t][(start + k) % n];
        if (it->deleted == deleted)
            return it;
    }
    return NULL;
}

/* An id nothing has: beyond every shop's counter. */
static uint64_t mix_no_id(mix *m)
{
    return (m->f.shop << 32) | (0xfff00000u + mix_below(m, 1000));
}

/* Valid fields for a new state of type t, with references to live items; NULL when the
 * references it needs do not exist. */
static json_t *mix_fields(mix *m, int t)
{
    char name[48];
    json_int_t k = (json_int_t)mix_below(m, 100000);
    snprintf(name, sizeof(name), "%s %lld", mix_type_names[t], (long long)k);
    static const char *const kinds[] = {"cash", "card", "pix", "transfer", "other"};
    mix_item *a, *b;
    switch (t) {
    case M_CATEGORY:
        return json_pack("{s:s,s:s,s:[{s:s,s:I}]}", "name", name, "description",
                         "Baths, trims and brushing", "price_table", "tier", "small", "price_cents",
                         1000 + k % 5000);
    case M_SERVICE:
        if (!(a = mix_pick(m, M_CATEGORY, false)))
            return NULL;
        return json_pack("{s:s,s:I,s:s,s:I,s:[{s:s,s:I},{s:s,s:I}],s:b}", "name", name, "category",
                         (json_int_t)a->id, "description", "Shampoo, dry, brush", "duration_min",
                         15 + k % 120, "price_table", "tier", "small", "price_cents",
                         4500 + k % 900, "tier", "large", "price_cents", 7500 + k % 900, "active",
                         (int)(k % 7 != 0));
    case M_COMBO:
        if (!(a = mix_pick(m, M_SERVICE, false)))
            return NULL;
        b = NULL;
        for (int tries = 0; tries < 8 && (!b || b == a); tries++)
            b = mix_pick(m, M_SERVICE, false);
        if (b == a)
            return NULL;
        return json_pack("{s:s,s:[I,I],s:I}", "name", name, "services", (json_int_t)a->id,
                         (json_int_t)b->id, "price_cents", 9000 + k % 1000);
    case M_PAYMENT:
        return json_pack("{s:s,s:s,s:I}", "name", name, "kind", kinds[k % 5], "fee_bp", k % 1000);
    case M_SPECIES:
        return json_pack("{s:s}", "name", name);
    case M_BREED:
        if (!(a = mix_pick(m, M_SPECIES, false)))
            return NULL;
        return json_pack("{s:s,s:I}", "name", name, "species", (json_int_t)a->id);
    default:
        return json_pack("{s:s,s:s}", "name", name, "role", "groomer");
    }
}

/* Breaks valid fields of type t in one way validation must refuse (invalid_input). */
static void mix_break(mix *m, int t, json_t *obj)
{
    char big[NAME_LIMIT_BYTES + 2];
    json_t *list;
    switch (mix_below(m, 5)) {
    case 0:
        json_object_set_new(obj, "colour", json_string("red"));
        return;
    case 1:
        json_object_del(obj, "name");
        return;
    case 2:
        json_object_set_new(obj, "name", json_integer(5));
        return;
    case 3:
        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        json_object_set_new(obj, "name", json_string(big));
        return;
    default:
        break;
    }
    switch (t) {
    case M_SERVICE:
        json_object_set_new(obj, "duration_min", json_integer(-1));
        return;
    case M_COMBO:
        list = json_object_get(obj, "services");
        json_array_remove(list, 1);
        return;
    case M_PAYMENT:
        json_object_set_new(obj, "kind", json_string("bitcoin"));
        return;
    case M_CATEGORY:
        list = json_object_get(obj, "price_table");
        json_object_set_new(json_array_get(list, 0), "price_cents",
                            json_integer(PRICE_LIMIT_CENTS + 1));
        return;
    default:
        json_object_set_new(obj, "name", json_string(""));
    }
}

static void mix_add(mix *m, int t, const cs_write_result *r)
{
    m->items[t][m->n[t]++] = (mix_item){.id = r->id, .version = r->version};
}

static int mix_type(mix *m)
{
    static const int weights[M_TYPES] = {12, 30, 15, 10, 10, 15, 8};
    size_t r = mix_below(m, 100);
    for (int t = 0; t < M_TYPES; t++) {
        if (r < (size_t)weights[t])
            return t;
        r -= (size_t)weights[t];
    }
    return M_STAFF;
}

/* A create: valid, broken, with a dangling reference, or expecting a version. */
static void mix_create(mix *m, mix_cmd *c)
{
    int t = mix_type(m);
    json_t *j = mix_fields(m, t);
    if (!j) { /* what it refers to is missing: make that first */
        t = t == M_BREED ? M_SPECIES : t == M_COMBO ? M_SERVICE : M_CATEGORY;
        j = mix_fields(m, t);
    }
    if (!j)
        j = (t = M_CATEGORY, mix_fields(m, t)); /* a service for a combo needs one */
    size_t how = mix_below(m, 10);
    uint64_t expect = 0;
    c->want = CS_OK;
    c->logged = t != M_STAFF;
    if (how == 0) {
        mix_break(m, t, j);
        c->want = CS_INVALID_INPUT;
    } else if (how == 1 && (t == M_SERVICE || t == M_COMBO || t == M_BREED)) {
        /* a reference to a deleted item, an item of another type, or no item */
        int target = t == M_SERVICE ? M_CATEGORY : t == M_COMBO ? M_SERVICE : M_SPECIES;
        mix_item *d = mix_pick(m, target, true);
        mix_item *other = mix_pick(m, M_PAYMENT, false);
        size_t which = mix_below(m, 3);
        uint64_t bad = which == 0 && d ? d->id : which == 1 && other ? other->id : mix_no_id(m);
        const char *field = t == M_SERVICE ? "category" : t == M_BREED ? "species" : NULL;
        if (field)
            json_object_set_new(j, field, json_integer((json_int_t)bad));
        else
            json_array_set_new(json_object_get(j, "services"), 1, json_integer((json_int_t)bad));
        c->want = CS_DANGLING_REFERENCE;
    } else if (how == 2 && mix_below(m, 4) == 0) {
        expect = 1;
        c->want = CS_VERSION_CONFLICT;
    }
    snprintf(m->what, sizeof(m->what), "create %s", mix_type_names[t]);
    c->got = cs_engine_put(m->f.e, mix_type_names[t], 0, j, expect, &c->res);
    json_decref(j);
    if (c->got == CS_OK && c->want == CS_OK)
        mix_add(m, t, &c->res);
}

/* An update of a live item (right, absent or wrong expected version) or of one that is not
 * there (deleted, another type's, never made). */
static void mix_update(mix *m, mix_cmd *c)
{
    int t = mix_type(m);
    mix_item *it = mix_pick(m, t, false);
    json_t *j = mix_fields(m, t);
    if (!it || !j) { /* nothing to edit: edit nothing, which is refused */
        json_decref(j);
        j = mix_fields(m, M_SPECIES);
        t = M_SPECIES;
        it = NULL;
    }
    size_t how = mix_below(m, 10);
    uint64_t id = it ? it->id : mix_no_id(m), expect = 0;
    c->logged = t != M_STAFF;
    c->want = it ? CS_OK : CS_NOT_FOUND;
    if (it && how < 4) {
        expect = it->version;
    } else if (it && how < 6) {
        expect = it->version + 1 + mix_below(m, 3);
        c->want = CS_VERSION_CONFLICT;
    } else if (it && how == 6) {
        mix_item *d = mix_pick(m, t, true);
        mix_item *other = mix_pick(m, t == M_PAYMENT ? M_SPECIES : M_PAYMENT, false);
        id = d ? d->id : other ? other->id : mix_no_id(m);
        c->want = CS_NOT_FOUND;
    }
    snprintf(m->what, sizeof(m->what), "update %s %llu expecting %llu", mix_type_names[t],
             (unsigned long long)id, (unsigned long long)expect);
    c->got = cs_engine_put(m->f.e, mix_type_names[t], id, j, expect, &c->res);
    json_decref(j);
    if (c->got == CS_OK && c->want == CS_OK)
        it->version++;
}

/* A delete of a live item (with or without a right or wrong version) or of a missing one. */
static void mix_delete(mix *m, mix_cmd *c)
{
    int t = mix_type(m);
    mix_item *it = mix_pick(m, t, false);
    size_t how = mix_below(m, 10);
    uint64_t id = it ? it->id : mix_no_id(m), expect = 0;
    c->logged = t != M_STAFF;
    c->want = it ? CS_OK : CS_NOT_FOUND;
    if (it && how < 3) {
        expect = it->version;
    } else if (it && how == 3) {
        expect = it->version + 1;
        c->want = CS_VERSION_CONFLICT;
    } else if (it && how < 6) {
        mix_item *d = mix_pick(m, t, true);
        id = d ? d->id : mix_no_id(m);
        c->want = CS_NOT_FOUND;
    }
    snprintf(m->what, sizeof(m->what), "delete %s %llu expecting %llu", mix_type_names[t],
             (unsigned long long)id, (unsigned long long)expect);
    c->got = cs_engine_del(m->f.e, mix_type_names[t], id, expect, &c->res);
    if (c->got == CS_OK && c->want == CS_OK) {
        it->version++;
        it->deleted = true;
    }
}

/* The code a network command with valid arguments gets from the role alone. */
static cs_err mix_role_code(const mix *m)
{
    return m->is_head ? CS_OK : CS_NOT_IN_NETWORK;
}

/* A shop to name: a linked branch, an unlinked one, or none at all; *want is the outcome on
 * a head office. */
static uint64_t mix_shop(mix *m, cs_err *want)
{
    size_t i = m->nshops ? mix_below(m, m->nshops + 1) : 0;
    if (i == m->nshops) {
        *want = CS_NOT_FOUND;
        return MIX_NO_SHOP;
    }
    *want = m->linked[i] ? CS_OK : CS_NOT_FOUND;
    return m->shops[i];
}

static void mix_network_settings(mix *m, mix_cmd *c)
{
    cs_engine *e = m->f.e;
    c->logged = true;
    c->want = mix_role_code(m);
    size_t how = mix_below(m, 3);
    if (how == 0) { /* synced types: a valid set, or one with a non-catalog name */
        unsigned count;
        const cs_type *all = cs_schema_types(&count);
        const char *set[5];
        size_t n = mix_below(m, 5);
        for (size_t i = 0; i < n; i++)
            set[i] = all[mix_below(m, 12)].name; /* the 12 synced types come first */
        size_t bad = mix_below(m, 8);
        if (bad == 0 || bad == 1) {
            set[n++] = bad == 0 ? "spaceship" : "species";
            c->want = bad == 0 ? CS_UNKNOWN_TYPE : CS_INVALID_INPUT;
        }
        snprintf(m->what, sizeof(m->what), "network types (%zu)", n);
        c->got = cs_engine_network_types(e, set, n, NULL);
        c->sync_point = m->continuous;
    } else if (how == 1) {
        static const char *const modes[] = {"on-trigger", "continuous", "sometimes"};
        size_t i = mix_below(m, 3);
        if (i == 2)
            c->want = CS_INVALID_INPUT;
        snprintf(m->what, sizeof(m->what), "network mode %s", modes[i]);
        c->got = cs_engine_network_mode(e, modes[i], NULL);
        if (c->got == CS_OK)
            m->continuous = i == 1;
        c->sync_point = i == 1;
    } else {
        static const char *const modes[] = {NULL, "shared", "individual", "both"};
        static const char *const numbers[] = {NULL, "+55 11 3333-0000", "+55 11 3333-1111",
                                              "call me"};
        size_t i = mix_below(m, 4), j = mix_below(m, 4);
        if (i == 3 || j == 3)
            c->want = CS_INVALID_INPUT;
        c->logged = i != 0 || j != 0; /* neither: only reads */
        snprintf(m->what, sizeof(m->what), "network whatsapp %s %s", modes[i] ? modes[i] : "-",
                 numbers[j] ? numbers[j] : "-");
        c->got = cs_engine_network_whatsapp(e, modes[i], numbers[j], NULL);
    }
}

static void mix_shop_command(mix *m, mix_cmd *c)
{
    cs_engine *e = m->f.e;
    cs_err found;
    uint64_t shop = mix_shop(m, &found);
    c->logged = true;
    c->want = m->is_head ? found : CS_NOT_IN_NETWORK;
    size_t how = mix_below(m, 10);
    if (how < 4) {
        bool on = mix_below(m, 3) != 0;
        snprintf(m->what, sizeof(m->what), "shop switch %llu %s", (unsigned long long)shop,
                 on ? "on" : "off");
        c->got = cs_engine_shop_switch(e, shop, on);
        c->sync_point = on && m->continuous;
    } else if (how < 8) {
        bool self = how == 7;
        bool bad = how == 6;
        if (self) {
            shop = m->f.shop;
            c->want = mix_role_code(m);
        }
        if (bad)
            c->want = CS_INVALID_INPUT;
        snprintf(m->what, sizeof(m->what), "shop whatsapp %llu", (unsigned long long)shop);
        c->got = cs_engine_shop_whatsapp(e, shop, bad ? "12" : "+55 21 4444-0001");
    } else if (how == 8 && m->is_head && m->nshops >= 2 && m->linked[0]) {
        snprintf(m->what, sizeof(m->what), "shop unlink %llu", (unsigned long long)m->shops[0]);
        c->want = CS_OK;
        c->got = cs_engine_shop_unlink(e, m->shops[0]);
        if (c->got == CS_OK)
            m->linked[0] = false;
    } else {
        c->want = CS_INVALID_INPUT; /* too short: refused before hashing, so it costs nothing */
        snprintf(m->what, sizeof(m->what), "shop add with a short password");
        c->got = cs_engine_shop_add(e, "Filial", "short", NULL);
    }
}

static void mix_shop_add(mix *m, mix_cmd *c)
{
    uint64_t id = 0;
    c->logged = true;
    c->want = mix_role_code(m);
    m->shop_add_calls++;
    snprintf(m->what, sizeof(m->what), "shop add");
    c->got = cs_engine_shop_add(m->f.e, "Filial", "long-enough-secret", &id);
    if (c->got == CS_OK && c->want == CS_OK) {
        m->shops[m->nshops] = id;
        m->linked[m->nshops++] = true;
    }
}

static void mix_sync(mix *m, mix_cmd *c)
{
    cs_err found = CS_OK;
    uint64_t shop = mix_below(m, 2) ? 0 : mix_shop(m, &found);
    c->logged = true;
    c->want = m->is_head ? found : CS_NOT_IN_NETWORK;
    snprintf(m->what, sizeof(m->what), "sync %llu", (unsigned long long)shop);
    c->got = cs_engine_sync(m->f.e, shop, &c->res.seq);
}

static void mix_network_create(mix *m, mix_cmd *c, bool now)
{
    c->logged = true;
    c->want = now ? CS_OK : m->is_head ? CS_FORBIDDEN : CS_INVALID_INPUT;
    const char *name = now || m->is_head ? "Rede Pet" : "";
    snprintf(m->what, sizeof(m->what), "network create '%s'", name);
    c->got = cs_engine_network_create(m->f.e, name);
    if (c->got == CS_OK)
        m->is_head = true;
}

/* Picks and runs command i. */
static void mix_run(mix *m, unsigned i, mix_cmd *c)
{
    size_t r = mix_below(m, 100);
    if (i == MIX_NETWORK_AT)
        mix_network_create(m, c, true);
    else if (r < 35)
        mix_create(m, c);
    else if (r < 55)
        mix_update(m, c);
    else if (r < 68)
        mix_delete(m, c);
    else if (r < 80)
        mix_network_settings(m, c);
    else if (r < 88)
        mix_shop_command(m, c);
    else if (r < 97)
        mix_sync(m, c);
    else if (r == 97 && m->shop_add_calls < MIX_SHOP_ADDS_MAX &&
             (m->is_head || m->shop_add_calls == 0))
        mix_shop_add(m, c);
    else if (r == 98)
        mix_network_create(m, c, false);
    else
        mix_create(m, c);
}

/* Checks command i against the model: its code, its sentence, the log head, and that a
 * refusal or a shop-local write left the digest where it was. */
static bool mix_check(mix *m, unsigned i, const mix_cmd *c, uint64_t *digest)
{
    cs_engine *e = m->f.e;
    if (c->got != c->want) {
        fprintf(stderr, "  command %u (%s): got %s, want %s: %s\n", i, m->what, cs_err_name(c->got),
                cs_err_name(c->want), cs_engine_errmsg(e));
        return false;
    }
    if (c->got != CS_OK && !cs_engine_errmsg(e)[0]) {
        fprintf(stderr, "  command %u (%s): refused without a sentence\n", i, m->what);
        return false;
    }
    if (c->got == CS_OK && c->logged)
        m->head += 1u + c->sync_point;
    c->got == CS_OK ? m->accepted++ : m->refused++;
    uint64_t head, d;
    if (log_head(e, &head) != CS_OK || cs_engine_digest(e, &d) != CS_OK)
        return false;
    if (head != m->head) {
        fprintf(stderr, "  command %u (%s): log head %llu, want %llu\n", i, m->what,
                (unsigned long long)head, (unsigned long long)m->head);
        return false;
    }
    if ((c->got != CS_OK || !c->logged) && d != *digest) {
        fprintf(stderr, "  command %u (%s, %s): the state changed\n", i, m->what,
                cs_err_name(c->got));
        return false;
    }
    *digest = d;
    return true;
}

static bool mix_replay_equal(mix *m)
{
    uint64_t state, replayed;
    char scratch[4200];
    snprintf(scratch, sizeof(scratch), "%s/replay", m->f.dir);
    if (cs_engine_digest(m->f.e, &state) != CS_OK)
        return false;
    cs_err err = cs_engine_replay_digest(m->f.e, scratch, &replayed);
    if (err != CS_OK || state != replayed)
        fprintf(stderr, "  replay: %s, digest %s\n", cs_err_name(err),
                state == replayed ? "equal" : "differs");
    return err == CS_OK && state == replayed;
}

/* Runs the whole mix in a fresh directory opened with opts; true when every command matched
 * the model and the state equals the log's replay half-way and at the end. *map_bytes_out gets
 * the map's final size. */
static bool mix_run_all(const cs_log_options *opts, size_t *map_bytes_out)
{
    mix m = {.rng = MIX_SEED};
    bool ok = fx_open(&m.f, "eng-mix", opts);
    for (int t = 0; t < M_TYPES; t++)
        ok = ok && (m.items[t] = calloc(MIX_COMMANDS, sizeof(mix_item))) != NULL;
    uint64_t digest = 0;
    ok = ok && log_head(m.f.e, &m.head) == CS_OK && cs_engine_digest(m.f.e, &digest) == CS_OK;
    for (unsigned i = 0; ok && i < MIX_COMMANDS; i++) {
        mix_cmd c = {0};
        mix_run(&m, i, &c);
        ok = mix_check(&m, i, &c, &digest);
        if (ok && i == MIX_REPLAY_AT)
            ok = mix_replay_equal(&m);
    }
    ok = ok && mix_replay_equal(&m);
    MDB_envinfo info;
    ok = ok && mdb_env_info(cs_log_env(cs_engine_log(m.f.e)), &info) == 0;
    *map_bytes_out = ok ? info.me_mapsize : 0;
    printf("  %u accepted, %u refused, %llu events, %zu shops added, map %zu KiB\n", m.accepted,
           m.refused, (unsigned long long)m.head, m.nshops, *map_bytes_out / 1024);
    bool mixed = m.accepted > MIX_COMMANDS / 3 && m.refused > MIX_COMMANDS / 5 && m.nshops >= 2;
    if (!mixed)
        fprintf(stderr, "  the mix did not mix: too few accepted, refused or shops\n");
    for (int t = 0; t < M_TYPES; t++)
        free(m.items[t]);
    fx_close(&m.f);
    return ok && mixed;
}

/* SPEC 4, R14: after 10,000 random commands, accepted and refused, of every kind the engine
 * has (items of synced, shared and local types; updates and deletes with right and wrong
 * versions; references to live, deleted, wrong-type and missing items; network settings;
 * shops; sync points), the state equals a replay of the log, and no refusal changed it. */
static void test_r14_replay_of_random_commands_equals_state(void)
{
    /* CS_LOG_NOSYNC: 10,000 fsyncs would take most of a minute on a slow disk, and durability
     * is not what this test checks (the log's crash tests do); the state logic is the same. */
    cs_log_options opts = {.flags = CS_LOG_NOSYNC};
    size_t map_bytes;
    CHECK(mix_run_all(&opts, &map_bytes));
}

/* SPEC 4: a command that hits a full map is aborted and run again after the map grows
 * (cs_log_write); the same mix from a 64 KiB map, grown many times, still matches the model
 * command by command and its replay. */
static void test_s4_commands_rerun_after_map_growth_keep_state_and_log_equal(void)
{
    cs_log_options opts = {.flags = CS_LOG_NOSYNC, .map_bytes = MIX_MAP_BYTES_SMALL};
    size_t map_bytes;
    CHECK(mix_run_all(&opts, &map_bytes));
    CHECK(map_bytes >= 32 * MIX_MAP_BYTES_SMALL); /* it grew at least five times */
}

/* ---- vocabulary: event kinds and type sets ------------------------------------------------ */

/* Every kind's name parses back to that kind, and a string outside the table (or a prefix or
 * extension of a name) parses to CS_KIND_UNKNOWN, whose name parses to itself. */
static void test_kinds_round_trip_through_their_names(void)
{
    for (int k = CS_KIND_UNKNOWN + 1; k < CS_KIND_COUNT; k++) {
        const char *name = cs_kind_name((cs_kind)k);
        cs_str s = cs_kind_str((cs_kind)k);
        CHECK(strcmp(name, "unknown") != 0);
        CHECK(s.ptr == name && s.len == strlen(name));
        CHECK(cs_kind_parse((cs_str){name, strlen(name)}) == (cs_kind)k);
        for (int other = CS_KIND_UNKNOWN + 1; other < k; other++)
            CHECK(strcmp(name, cs_kind_name((cs_kind)other)) != 0); /* names are distinct */
    }
    CHECK(cs_kind_parse(CS_STR("unknown")) == CS_KIND_UNKNOWN);
    CHECK(cs_kind_parse(CS_STR("link")) == CS_KIND_UNKNOWN);
    CHECK(cs_kind_parse(CS_STR("")) == CS_KIND_UNKNOWN);
    CHECK(cs_kind_parse((cs_str){NULL, 0}) == CS_KIND_UNKNOWN);
    CHECK(cs_kind_parse(CS_STR("pu")) == CS_KIND_UNKNOWN);
    CHECK(cs_kind_parse(CS_STR("puts")) == CS_KIND_UNKNOWN);
    CHECK(cs_kind_parse(CS_STR("PUT")) == CS_KIND_UNKNOWN);
    CHECK(cs_kind_parse((cs_str){"put", 3}) == CS_KIND_PUT); /* by length, not NUL */
    CHECK(cs_kind_parse((cs_str){"shop_addX", 8}) == CS_KIND_SHOP_ADD);
    CHECK(strcmp(cs_kind_name(CS_KIND_UNKNOWN), "unknown") == 0);
    CHECK(strcmp(cs_kind_name((cs_kind)CS_KIND_COUNT), "unknown") == 0); /* out of range */
}

/* The names are what logs written before the enum hold: they must never change. */
static void test_kind_names_are_the_stable_logged_names(void)
{
    static const char *const logged[] = {"init",         "network",          "put",
                                         "delete",       "shop_add",         "shop_switch",
                                         "shop_unlink",  "shop_password",    "network_types",
                                         "network_mode", "network_whatsapp", "shop_whatsapp",
                                         "sync"};
    CHECK(sizeof(logged) / sizeof(logged[0]) == CS_KIND_COUNT - 1);
    for (size_t i = 0; i < sizeof(logged) / sizeof(logged[0]); i++) {
        cs_kind k = cs_kind_parse((cs_str){logged[i], strlen(logged[i])});
        CHECK(k != CS_KIND_UNKNOWN);
        CHECK(strcmp(cs_kind_name(k), logged[i]) == 0);
    }
}

/* Every event the engine's commands log carries a kind of the table, and the commands between
 * them log every kind of it. */
static void test_every_logged_kind_is_in_the_table(void)
{
    fx f;
    CHECK(fx_open(&f, "eng-kinds", NULL));
    CHECK_OK(cs_engine_network_create(f.e, "Rede Pet"));
    const char *types[] = {"service_category", "service"};
    CHECK_OK(cs_engine_network_types(f.e, types, 2, NULL));
    CHECK_OK(cs_engine_network_mode(f.e, "continuous", NULL));
    CHECK_OK(cs_engine_network_whatsapp(f.e, "individual", NULL, NULL));
    uint64_t branch;
    CHECK_OK(cs_engine_shop_add(f.e, "Filial Norte", "first-secret", &branch));
    CHECK_OK(cs_engine_shop_switch(f.e, branch, false));
    CHECK_OK(cs_engine_shop_whatsapp(f.e, branch, "+5511999990000"));
    CHECK_OK(cs_engine_shop_password(f.e, branch, "second-secret"));
    CHECK_OK(cs_engine_sync(f.e, 0, NULL));
    json_t *cat = json_pack("{s:s}", "name", "Banho");
    cs_write_result res;
    CHECK_OK(cs_engine_put(f.e, "service_category", 0, cat, 0, &res));
    CHECK_OK(cs_engine_del(f.e, "service_category", res.id, 0, NULL));
    json_decref(cat);
    CHECK_OK(cs_engine_shop_unlink(f.e, branch));
    cs_log_reader *r;
    cs_event_decoder *dec;
    CHECK_OK(cs_event_decoder_new(&dec));
    CHECK_OK(cs_log_reader_open(cs_engine_log(f.e), &r));
    bool seen[CS_KIND_COUNT] = {false};
    cs_log_record rec;
    cs_err err;
    while ((err = cs_log_reader_next(r, &rec)) == CS_OK) {
        cs_event_view ev;
        CHECK_OK(cs_event_decode(dec, rec.event, rec.event_len, &ev));
        cs_kind k = cs_kind_parse(ev.kind);
        CHECK(k != CS_KIND_UNKNOWN);
        seen[k] = true;
    }
    cs_log_reader_close(r);
    cs_event_decoder_free(dec);
    CHECK(err == CS_NOT_FOUND);
    CHECK(!seen[CS_KIND_UNKNOWN]);
    for (int k = CS_KIND_UNKNOWN + 1; k < CS_KIND_COUNT; k++)
        if (!seen[k]) {
            fprintf(stderr, "  no command logged a '%s' event\n", cs_kind_name((cs_kind)k));
            CHECK(seen[k]);
        }
    fx_close(&f);
}

/* A cs_type_set holds every code from 0 to CS_TYPE_SYNCED_CODE_MAX, each bit on its own, and
 * a code above that (a shared or local type's) is never in it. */
static void test_type_set_holds_codes_at_its_bounds(void)
{
    cs_type_set s = {0};
    CHECK(!cs_type_set_has(s, 0));
    CHECK(!cs_type_set_has(s, CS_TYPE_SYNCED_CODE_MAX));
    cs_type_set_add(&s, 0);
    CHECK(cs_type_set_has(s, 0));
    CHECK(!cs_type_set_has(s, 1));
    CHECK(!cs_type_set_has(s, CS_TYPE_SYNCED_CODE_MAX));
    cs_type_set_add(&s, CS_TYPE_SYNCED_CODE_MAX);
    CHECK(cs_type_set_has(s, CS_TYPE_SYNCED_CODE_MAX));
    CHECK(!cs_type_set_has(s, CS_TYPE_SYNCED_CODE_MAX - 1));
    CHECK(s.bits == (1u | (uint64_t)1 << CS_TYPE_SYNCED_CODE_MAX));
    CHECK(!cs_type_set_has(s, CS_TYPE_SYNCED_CODE_MAX + 1)); /* just above: no bit to read */
    CHECK(!cs_type_set_has(s, UINT8_MAX));
    cs_type_set_add(&s, CS_TYPE_SYNCED_CODE_MAX); /* adding twice changes nothing */
    CHECK(s.bits == (1u | (uint64_t)1 << CS_TYPE_SYNCED_CODE_MAX));
    cs_type_set_del(&s, 0);
    CHECK(!cs_type_set_has(s, 0));
    CHECK(cs_type_set_has(s, CS_TYPE_SYNCED_CODE_MAX));
    cs_type_set_del(&s, CS_TYPE_SYNCED_CODE_MAX);
    CHECK(s.bits == 0);
    cs_type_set_del(&s, CS_TYPE_SYNCED_CODE_MAX); /* deleting an absent code changes nothing */
    CHECK(s.bits == 0);
    /* every synced type of the schema fits; the others never read as members */
    unsigned n;
    const cs_type *t = cs_schema_types(&n);
    cs_type_set all = {0};
    for (unsigned i = 0; i < n; i++)
        if (t[i].cls == CS_CLASS_SYNCED)
            cs_type_set_add(&all, t[i].code);
    for (unsigned i = 0; i < n; i++)
        CHECK(cs_type_set_has(all, t[i].code) == (t[i].cls == CS_CLASS_SYNCED));
}

/* cs_schema_find_str matches a whole name by its length: no prefix, no NUL needed. */
static void test_schema_find_str_matches_whole_names_only(void)
{
    CHECK(cs_schema_find_str(CS_STR("service")) == cs_schema_find("service"));
    CHECK(cs_schema_find_str((cs_str){"service_category!", 16}) ==
          cs_schema_find("service_category"));
    CHECK(cs_schema_find_str((cs_str){"service_category", 7}) == cs_schema_find("service"));
    CHECK(cs_schema_find_str(CS_STR("servic")) == NULL);
    CHECK(cs_schema_find_str(CS_STR("")) == NULL);
    CHECK(cs_schema_find_str((cs_str){NULL, 0}) == NULL);
    CHECK(cs_schema_find("service")->code == CS_TYPE_SERVICE);
    CHECK(cs_schema_find("shop_info")->code == CS_TYPE_SHOP_INFO);
}

int main(void)
{
    RUN(test_s6_unknown_type_is_refused_and_changes_nothing);
    RUN(test_s6_unknown_field_is_refused_and_changes_nothing);
    RUN(test_s6_missing_required_field_is_refused_and_changes_nothing);
    RUN(test_s6_wrong_kind_is_refused_and_changes_nothing);
    RUN(test_s6_string_over_limit_is_refused_at_limit_accepted);
    RUN(test_s6_enum_value_not_allowed_is_refused);
    RUN(test_s6_enum_refusal_with_a_long_value_list_is_cut_not_overrun);
    RUN(test_s6_combo_with_one_service_is_refused);
    RUN(test_s6_price_out_of_range_is_refused_at_limit_accepted);
    RUN(test_issue12_field_strings_not_utf8_are_refused_naming_the_field);
    RUN(test_s6_reference_to_missing_item_is_dangling);
    RUN(test_s6_reference_to_deleted_item_is_dangling);
    RUN(test_s6_expect_version_mismatch_is_version_conflict);
    RUN(test_s6_update_of_missing_id_is_not_found);
    RUN(test_s6_put_many_with_one_bad_element_changes_nothing);
    RUN(test_r9_local_records_are_not_logged);
    RUN(test_r9_password_change_logs_no_hash);
    RUN(test_r10_single_store_refuses_network_commands);
    RUN(test_r10_network_create_makes_head_and_keeps_items);
    RUN(test_r11_network_create_on_head_is_forbidden);
    RUN(test_r12_shared_mode_without_number_is_not_found);
    RUN(test_r12_shared_mode_answers_head_number_for_every_shop);
    RUN(test_r12_individual_mode_answers_each_shops_own_number);
    RUN(test_s6_shop_whatsapp_without_valid_number_is_refused_with_a_sentence);
    RUN(test_r4_delete_at_head_archives_item);
    RUN(test_ids_are_unique_across_shops_and_increasing_within_one);
    RUN(test_r14_replay_of_random_commands_equals_state);
    RUN(test_s4_commands_rerun_after_map_growth_keep_state_and_log_equal);
    RUN(test_kinds_round_trip_through_their_names);
    RUN(test_kind_names_are_the_stable_logged_names);
    RUN(test_every_logged_kind_is_in_the_table);
    RUN(test_type_set_holds_codes_at_its_bounds);
    RUN(test_schema_find_str_matches_whole_names_only);
    return cs_test_finish();
}
