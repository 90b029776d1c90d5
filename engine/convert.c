/*
 * convert.c: everything that walks item fields by the schema table: JSON -> canonical msgpack
 * with validation, msgpack -> JSON, visiting references, packing a copy with remapped
 * references (R2), and reading fields written under an older schema version through the change
 * table (cs_schema_upgrade).
 *
 * Canonical form: a map whose keys follow the schema's field order, absent optional fields
 * left out, integers in msgpack-c's smallest encoding. Two equal items therefore have equal
 * bytes, which is what makes state digests and replay comparisons meaningful.
 */
#include "engine/engine_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define PATH_BYTES 160
#define FIELDS_MAX 16 /* fields of one type or object in the schema table (schema.c) */
#define INT_LIST_MAX_ITEMS 64
/* The allowed values named in an enum's refusal; a longer list is cut (conv_fail's message has
 * room for about 200 bytes in all). */
#define ENUM_TEXT_BYTES 160

typedef struct conv {
    msgpack_packer pk;
    char *msg;
    size_t msg_len;
} conv;

static cs_err conv_fail(conv *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static cs_err conv_fail(conv *c, const char *path, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    cs_errmsg_vformat(what, sizeof(what), CS_INVALID_INPUT, fmt, ap);
    va_end(ap);
    /* A cut sentence is still a sentence, cut between characters (cs_errmsg_format). */
    if (path[0])
        cs_errmsg_format(c->msg, c->msg_len, CS_INVALID_INPUT, "field '%s': %s", path, what);
    else
        cs_errmsg_format(c->msg, c->msg_len, CS_INVALID_INPUT, "%s", what);
    return CS_INVALID_INPUT;
}

/* Appends len bytes of s at out[*at] (out holds size bytes and a NUL at *at), cut to keep room
 * for the NUL. Returns false when s was cut. */
static bool text_put(char *out, size_t size, size_t *at, const char *s, size_t len)
{
    cs_assert(size > 0);
    cs_assert(*at < size);
    size_t room = size - 1 - *at;
    bool whole = len <= room;
    if (!whole) /* a cut path stays text: it is cut between characters */
        len = cs_utf8_cut(s, room);
    memcpy(out + *at, s, len);
    *at += len;
    out[*at] = '\0';
    return whole;
}

/* A cut path still points. */
static void path_put(char *out, size_t *at, const char *s, size_t len)
{
    text_put(out, PATH_BYTES, at, s, len);
}

/* Paths name a field in messages ("price_table[0].tier"). Built with memcpy, not snprintf: it
 * runs for every field of every item written, and snprintf was most of validation's time. */
static void path_join(char *out, const char *prefix, const char *name)
{
    size_t at = 0;
    if (prefix[0]) {
        path_put(out, &at, prefix, strlen(prefix));
        path_put(out, &at, ".", 1);
    }
    path_put(out, &at, name, strlen(name));
}

static void path_index(char *out, const char *prefix, size_t i)
{
    char digits[24];
    size_t n = sizeof(digits);
    do
        digits[--n] = (char)('0' + i % 10);
    while ((i /= 10) != 0);
    size_t at = 0;
    path_put(out, &at, prefix, strlen(prefix));
    path_put(out, &at, "[", 1);
    path_put(out, &at, digits + n, sizeof(digits) - n);
    path_put(out, &at, "]", 1);
}

static cs_err pack_object(conv *c, const cs_field *fields, unsigned n, const json_t *obj,
                          const char *prefix);

/* jansson's parser gives only UTF-8 without NUL, but a library caller can build a string with
 * json_stringn_nocheck: the log would refuse its bytes (a str holds UTF-8) with a vaguer
 * sentence, so validation names the field. */
static bool text_ok(const json_t *v)
{
    size_t len = json_string_length(v);
    const char *s = json_string_value(v);
    return cs_utf8_prefix(s, len) == len && memchr(s, '\0', len) == NULL;
}

static cs_err pack_ref(conv *c, const json_t *v, const char *path)
{
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        return conv_fail(c, path, "expected an item id (a positive integer)");
    msgpack_pack_uint64(&c->pk, (uint64_t)json_integer_value(v));
    return CS_OK;
}

static cs_err pack_list(conv *c, const cs_field *f, const json_t *v, const char *path)
{
    if (!json_is_array(v))
        return conv_fail(c, path, "expected a list");
    size_t n = json_array_size(v);
    int64_t most = f->kind == CS_FIELD_INT_LIST ? INT_LIST_MAX_ITEMS : f->max;
    int64_t fewest = f->kind == CS_FIELD_INT_LIST ? 0 : f->min;
    if ((int64_t)n < fewest)
        return conv_fail(c, path, "needs at least %lld entries", (long long)fewest);
    if ((int64_t)n > most)
        return conv_fail(c, path, "holds at most %lld entries", (long long)most);
    msgpack_pack_array(&c->pk, n);
    char sub[PATH_BYTES];
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(v, i);
        path_index(sub, path, i);
        cs_err err = CS_OK;
        if (f->kind == CS_FIELD_REF_LIST) {
            err = pack_ref(c, e, sub);
        } else if (f->kind == CS_FIELD_OBJECT_LIST) {
            err = pack_object(c, f->sub, f->nsub, e, sub);
        } else if (f->kind == CS_FIELD_STRING_LIST) {
            if (!json_is_string(e) || json_string_length(e) == 0 || json_string_length(e) > 200)
                return conv_fail(c, sub, "expected a non-empty string of at most 200 bytes");
            if (!text_ok(e))
                return conv_fail(c, sub, "must be UTF-8 text without NUL bytes");
            msgpack_pack_str_with_body(&c->pk, json_string_value(e), json_string_length(e));
        } else {
            if (!json_is_integer(e) || json_integer_value(e) < f->min ||
                json_integer_value(e) > f->max)
                return conv_fail(c, sub, "expected an integer from %lld to %lld", (long long)f->min,
                                 (long long)f->max);
            msgpack_pack_int64(&c->pk, json_integer_value(e));
        }
        if (err != CS_OK)
            return err;
    }
    return CS_OK;
}

static cs_err pack_enum(conv *c, const cs_field *f, const json_t *v, const char *path)
{
    if (json_is_string(v))
        for (const char *const *e = f->enum_values; *e; e++)
            if (strcmp(*e, json_string_value(v)) == 0) {
                msgpack_pack_str_with_body(&c->pk, *e, strlen(*e));
                return CS_OK;
            }
    /* The list is cut to fit a message, never the buffer overrun: a cut list ends in "...". */
    char allowed[ENUM_TEXT_BYTES] = "";
    size_t at = 0;
    bool whole = true;
    for (const char *const *e = f->enum_values; *e && whole; e++)
        whole = text_put(allowed, sizeof(allowed), &at, *e, strlen(*e)) &&
                (!e[1] || text_put(allowed, sizeof(allowed), &at, ", ", 2));
    if (!whole)
        memcpy(allowed + sizeof(allowed) - 4, "...", 4);
    return conv_fail(c, path, "expected one of %s", allowed);
}

static cs_err pack_value(conv *c, const cs_field *f, const json_t *v, const char *path)
{
    switch (f->kind) {
    case CS_FIELD_STRING: {
        if (!json_is_string(v))
            return conv_fail(c, path, "expected a string");
        size_t len = json_string_length(v);
        if ((int64_t)len > f->max)
            return conv_fail(c, path, "longer than %lld bytes", (long long)f->max);
        if ((int64_t)len < f->min)
            return conv_fail(c, path, "must not be empty");
        if (!text_ok(v))
            return conv_fail(c, path, "must be UTF-8 text without NUL bytes");
        msgpack_pack_str_with_body(&c->pk, json_string_value(v), len);
        return CS_OK;
    }
    case CS_FIELD_INT:
        if (!json_is_integer(v))
            return conv_fail(c, path, "expected an integer");
        if (json_integer_value(v) < f->min || json_integer_value(v) > f->max)
            return conv_fail(c, path, "must be from %lld to %lld", (long long)f->min,
                             (long long)f->max);
        msgpack_pack_int64(&c->pk, json_integer_value(v));
        return CS_OK;
    case CS_FIELD_BOOL:
        if (!json_is_boolean(v))
            return conv_fail(c, path, "expected true or false");
        json_is_true(v) ? msgpack_pack_true(&c->pk) : msgpack_pack_false(&c->pk);
        return CS_OK;
    case CS_FIELD_ENUM:
        return pack_enum(c, f, v, path);
    case CS_FIELD_REF:
        return pack_ref(c, v, path);
    case CS_FIELD_OBJECT:
        return pack_object(c, f->sub, f->nsub, v, path);
    default:
        return pack_list(c, f, v, path);
    }
}

static const cs_field *field_find(const cs_field *fields, unsigned n, const char *name)
{
    for (unsigned i = 0; i < n; i++)
        if (strcmp(fields[i].name, name) == 0)
            return &fields[i];
    return NULL;
}

static cs_err pack_object(conv *c, const cs_field *fields, unsigned n, const json_t *obj,
                          const char *prefix)
{
    if (!json_is_object(obj))
        return conv_fail(c, prefix, "expected an object");
    cs_assert(n <= FIELDS_MAX);
    /* One pass over the object puts each value beside its field: no hash lookups after it.
     * Paths are built only for messages, which are rare. */
    const json_t *vals[FIELDS_MAX] = {0};
    const char *key;
    const json_t *val;
    char path[PATH_BYTES];
    unsigned present = 0;
    json_object_foreach((json_t *)obj, key, val)
    {
        const cs_field *f = field_find(fields, n, key);
        if (!f) {
            path_join(path, prefix, key);
            return conv_fail(c, "", "unknown field '%s'", path);
        }
        if (!json_is_null(val)) {
            vals[f - fields] = val;
            present++;
        }
    }
    for (unsigned i = 0; i < n; i++)
        if (fields[i].required && !vals[i]) {
            path_join(path, prefix, fields[i].name);
            return conv_fail(c, "", "field '%s' is required", path);
        }
    msgpack_pack_map(&c->pk, present);
    for (unsigned i = 0; i < n; i++) {
        if (!vals[i])
            continue;
        path_join(path, prefix, fields[i].name);
        msgpack_pack_str_with_body(&c->pk, fields[i].name, strlen(fields[i].name));
        cs_err err = pack_value(c, &fields[i], vals[i], path);
        if (err != CS_OK)
            return err;
    }
    return CS_OK;
}

static int pack_write(void *data, const char *buf, size_t len)
{
    cs__pack *p = data;
    if (msgpack_sbuffer_write(&p->sb, buf, len) != 0)
        p->failed = true;
    return p->failed ? -1 : 0;
}

void cs__pack_init(cs__pack *p)
{
    msgpack_sbuffer_init(&p->sb);
    p->failed = false;
    msgpack_packer_init(&p->pk, p, pack_write);
}

void cs__pack_destroy(cs__pack *p)
{
    msgpack_sbuffer_destroy(&p->sb);
}

cs_err cs_schema_from_json(const cs_type *t, const json_t *obj, uint8_t **out, size_t *out_len,
                           char *msg, size_t msg_len)
{
    cs__pack p;
    cs__pack_init(&p);
    conv c = {.pk = p.pk, .msg = msg, .msg_len = msg_len};
    cs_err err = pack_object(&c, t->fields, t->nfields, obj, "");
    if (err == CS_OK && p.failed)
        err = CS_NO_MEMORY;
    if (err == CS_OK && p.sb.size > CS_ITEM_FIELDS_BYTES_MAX)
        err = conv_fail(&c, "", "the item is larger than %u bytes", CS_ITEM_FIELDS_BYTES_MAX);
    if (err != CS_OK) {
        cs__pack_destroy(&p);
        return err;
    }
    *out = (uint8_t *)p.sb.data; /* transferred: sbuffer memory is malloc'd */
    *out_len = p.sb.size;
    return CS_OK;
}

/* ---- msgpack -> JSON --------------------------------------------------------------------- */

json_t *cs__json_from_msgpack(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return json_real((double)o->via.u64);
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR:
        return json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN:
        return json_stringn_nocheck(o->via.bin.ptr, o->via.bin.size);
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++)
            if (json_array_append_new(a, cs__json_from_msgpack(&o->via.array.ptr[i])) != 0) {
                json_decref(a);
                return NULL;
            }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            char key[PATH_BYTES];
            if (k->type != MSGPACK_OBJECT_STR || k->via.str.size >= sizeof(key))
                continue;
            memcpy(key, k->via.str.ptr, k->via.str.size);
            key[k->via.str.size] = '\0';
            if (json_object_set_new(m, key, cs__json_from_msgpack(&o->via.map.ptr[i].val))) {
                json_decref(m);
                return NULL;
            }
        }
        return m;
    }
    default:
        return json_null();
    }
}

cs_err cs_schema_to_json(const cs_type *t, const msgpack_object *fields, json_t **out)
{
    (void)t; /* the canonical form already carries the schema's names and kinds */
    if (fields->type != MSGPACK_OBJECT_MAP)
        return CS_CORRUPT;
    json_t *j = cs__json_from_msgpack(fields);
    if (!j)
        return CS_NO_MEMORY;
    *out = j;
    return CS_OK;
}

/* ---- references -------------------------------------------------------------------------- */

typedef struct ref_walk {
    cs_schema_ref_fn visit; /* visit mode */
    cs_schema_map_fn map;   /* remap mode: also packs */
    msgpack_packer *pk;
    void *ctx;
} ref_walk;

static cs_err walk_map(ref_walk *w, const cs_field *fields, unsigned n, const msgpack_object *o,
                       const char *prefix);

static cs_err walk_ref(ref_walk *w, const cs_field *f, const msgpack_object *v, const char *path)
{
    const cs_type *target = cs_schema_find(f->ref_type);
    cs_assert(target != NULL);
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return CS_CORRUPT;
    if (w->visit)
        return w->visit(target, v->via.u64, path, w->ctx);
    uint64_t mapped;
    cs_err err = w->map(target, v->via.u64, &mapped, w->ctx);
    if (err == CS_OK)
        msgpack_pack_uint64(w->pk, mapped);
    return err;
}

static cs_err walk_value(ref_walk *w, const cs_field *f, const msgpack_object *v, const char *path)
{
    bool is_list = f->kind == CS_FIELD_REF_LIST || f->kind == CS_FIELD_OBJECT_LIST;
    if (f->kind == CS_FIELD_REF)
        return walk_ref(w, f, v, path);
    if (f->kind == CS_FIELD_OBJECT)
        return walk_map(w, f->sub, f->nsub, v, path);
    if (!is_list || v->type != MSGPACK_OBJECT_ARRAY) {
        if (w->pk)
            msgpack_pack_object(w->pk, *v);
        return CS_OK;
    }
    if (w->pk)
        msgpack_pack_array(w->pk, v->via.array.size);
    char sub[PATH_BYTES] = "";
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        if (w->visit) /* paths are for the visitor's messages; remapping needs none */
            path_index(sub, path, i);
        cs_err err = f->kind == CS_FIELD_REF_LIST
                         ? walk_ref(w, f, &v->via.array.ptr[i], sub)
                         : walk_map(w, f->sub, f->nsub, &v->via.array.ptr[i], sub);
        if (err != CS_OK)
            return err;
    }
    return CS_OK;
}

static cs_err walk_map(ref_walk *w, const cs_field *fields, unsigned n, const msgpack_object *o,
                       const char *prefix)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return CS_CORRUPT;
    if (w->pk)
        msgpack_pack_map(w->pk, o->via.map.size);
    char path[PATH_BYTES] = "", name[PATH_BYTES];
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        const msgpack_object *v = &o->via.map.ptr[i].val;
        if (w->pk)
            msgpack_pack_object(w->pk, *k);
        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size >= sizeof(name))
            return CS_CORRUPT;
        memcpy(name, k->via.str.ptr, k->via.str.size);
        name[k->via.str.size] = '\0';
        const cs_field *f = field_find(fields, n, name);
        if (!f)
            return CS_CORRUPT;
        if (w->visit)
            path_join(path, prefix, name);
        cs_err err = walk_value(w, f, v, path);
        if (err != CS_OK)
            return err;
    }
    return CS_OK;
}

cs_err cs_schema_refs(const cs_type *t, const msgpack_object *fields, cs_schema_ref_fn fn,
                      void *ctx)
{
    ref_walk w = {.visit = fn, .ctx = ctx};
    return walk_map(&w, t->fields, t->nfields, fields, "");
}

cs_err cs_schema_remap(const cs_type *t, const msgpack_object *fields, cs_schema_map_fn map,
                       void *ctx, msgpack_sbuffer *out)
{
    cs__pack p = {.sb = *out};
    msgpack_packer_init(&p.pk, &p, pack_write);
    ref_walk w = {.map = map, .pk = &p.pk, .ctx = ctx};
    cs_err err = walk_map(&w, t->fields, t->nfields, fields, "");
    *out = p.sb; /* the buffer may have moved */
    return err == CS_OK && p.failed ? CS_NO_MEMORY : err;
}

/* ---- JSON -> msgpack, generic (network events' small payloads) --------------------------- */

void cs__pack_json(msgpack_packer *pk, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *val;
        msgpack_pack_map(pk, json_object_size(j));
        json_object_foreach((json_t *)j, key, val)
        {
            msgpack_pack_str_with_body(pk, key, strlen(key));
            cs__pack_json(pk, val);
        }
        return;
    }
    case JSON_ARRAY:
        msgpack_pack_array(pk, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++)
            cs__pack_json(pk, json_array_get(j, i));
        return;
    case JSON_STRING:
        msgpack_pack_str_with_body(pk, json_string_value(j), json_string_length(j));
        return;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, json_integer_value(j));
        return;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(j));
        return;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        return;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        return;
    default:
        msgpack_pack_nil(pk);
    }
}

/* ---- reading an older version ------------------------------------------------------------ */

/* True when a change c touches the fields of items of type t: a rename, or an added field
 * with a default. An added type, an added kind or an added optional field leaves old bytes as
 * they are. */
static bool change_rewrites(const cs_schema_change *c, const cs_type *t)
{
    if (strcmp(c->type, t->name) != 0)
        return false;
    return c->what == CS_SCHEMA_FIELD_RENAMED || (c->what == CS_SCHEMA_FIELD_ADDED && c->dflt);
}

/* Applies change c to the item's fields as JSON. Errors: CS_NO_MEMORY, CS_INVALID_INPUT (a
 * default that is not JSON: a defect of the table, named in msg). */
static cs_err change_apply(const cs_schema_change *c, json_t *obj, char *msg, size_t msg_len)
{
    if (c->what == CS_SCHEMA_FIELD_RENAMED) {
        json_t *v = json_object_get(obj, c->from);
        if (!v)
            return CS_OK;
        json_incref(v);
        int rc = json_object_del(obj, c->from) | json_object_set_new(obj, c->field, v);
        return rc ? CS_NO_MEMORY : CS_OK;
    }
    if (json_object_get(obj, c->field))
        return CS_OK; /* the old item had a value: it stays */
    json_error_t jerr;
    json_t *d = json_loads(c->dflt, JSON_DECODE_ANY, &jerr);
    if (!d) {
        snprintf(msg, msg_len, "%s.%s: the default of schema version %u is not JSON", c->type,
                 c->field, c->version);
        return CS_INVALID_INPUT;
    }
    return json_object_set_new(obj, c->field, d) ? CS_NO_MEMORY : CS_OK;
}

cs_err cs_schema_upgrade_with(const cs_schema_change *changes, unsigned nchanges, uint32_t to,
                              const cs_type *t, uint64_t from, const uint8_t *fields, size_t len,
                              uint8_t **out, size_t *out_len, char *msg, size_t msg_len)
{
    *out = NULL;
    *out_len = 0;
    bool rewrites = false;
    for (unsigned i = 0; i < nchanges && !rewrites; i++)
        rewrites = changes[i].version > from && changes[i].version <= to &&
                   change_rewrites(&changes[i], t);
    if (!rewrites)
        return CS_OK; /* the common case, and every event of the current version: no work */
    /* Rare (an old event read by a newer build, once per replay): through JSON, so the result
     * is validated and packed by the one converter every write goes through. */
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 1024))
        return CS_NO_MEMORY;
    msgpack_object o;
    size_t off = 0;
    cs_err err = CS_OK;
    msgpack_unpack_return rc = msgpack_unpack((const char *)fields, len, &off, &zone, &o);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
        err = CS_NO_MEMORY;
    else if (rc != MSGPACK_UNPACK_SUCCESS || o.type != MSGPACK_OBJECT_MAP)
        err = CS_CORRUPT;
    json_t *obj = err == CS_OK ? cs__json_from_msgpack(&o) : NULL;
    if (err == CS_OK && !obj)
        err = CS_NO_MEMORY;
    for (unsigned i = 0; err == CS_OK && i < nchanges; i++)
        if (changes[i].version > from && changes[i].version <= to &&
            change_rewrites(&changes[i], t))
            err = change_apply(&changes[i], obj, msg, msg_len);
    if (err == CS_OK)
        err = cs_schema_from_json(t, obj, out, out_len, msg, msg_len);
    json_decref(obj);
    msgpack_zone_destroy(&zone);
    return err;
}

cs_err cs_schema_upgrade(const cs_type *t, uint64_t from, const uint8_t *fields, size_t len,
                         uint8_t **out, size_t *out_len, char *msg, size_t msg_len)
{
    unsigned n;
    const cs_schema_change *c = cs_schema_changes(&n);
    return cs_schema_upgrade_with(c, n, CS_SCHEMA_VERSION, t, from, fields, len, out, out_len, msg,
                                  msg_len);
}
