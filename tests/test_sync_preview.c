/*
 * test_sync_preview.c: issue 14, "Sync preview": `sync --dry-run` says per branch what the next
 * sync point would do, writes nothing, and agrees exactly with what the sync then does.
 *
 * The agreement test drives random head-office histories (edits, deletes, new items, combos
 * referencing services, switch changes for three branches, synced types taken out and put back,
 * both modes, sync for all and for one branch: the shape of test_projection.c's
 * build_random_history) and, at random moments, previews a sync (for every branch or one),
 * makes that sync, and compares the preview with what happened on three REAL branch directories
 * fed the log as segments: each branch's catalog before and after the sync is read back through
 * the engine (cs_engine_list), keyed by origin, with references translated to head-office ids
 * through the copies' own origin links. Item by item and field by field: every copy created,
 * every copy changed (archived or updated, with the fields that changed, old -> new, and the
 * versions), nothing else; a branch skipped (switch off, R6) changes not at all; a type listed
 * as skipped is one the network does not sync (R7). Rules: R2, R4, R5b, R5c, R6, R7.
 *
 * The CLI test checks the command from the outside: the human summary, --json-out lines,
 * --shop, the data directory's bytes unchanged by the preview, and the refusals (SPEC 6): a shop
 * that is not a branch is not_in_network, a branch directory forbidden, a single store
 * not_in_network.
 */
#include "projections/projection.h"
#include "tests/harness.h"
#include "tests/run.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <xxhash.h>

static const cs_log_options nosync_opts = {.flags = CS_LOG_NOSYNC};

#define BRANCHES 3
#define N_ITEMS 10

/* Applies the head office's events after the branch's cursor, as one segment at a time. */
static cs_err feed(cs_branch *b, cs_engine *h)
{
    cs_branch_state st;
    cs_err err = cs_branch_state_get(b, &st);
    cs_log_reader *r = NULL;
    uint64_t head = 0;
    if (err == CS_OK)
        err = cs_log_reader_open(cs_engine_log(h), &r);
    if (err == CS_OK)
        err = cs_log_reader_head(r, &head);
    for (uint64_t s = st.cursor + 1; err == CS_OK && s <= head;) {
        uint8_t *seg;
        size_t len;
        uint64_t last;
        err = cs_segment_encode(r, s, head, CS_SEGMENT_BYTES_MAX, &seg, &len, &last);
        if (err != CS_OK)
            break;
        err = cs_branch_apply_segment(b, seg, len, NULL);
        free(seg);
        s = last + 1;
    }
    cs_log_reader_close(r);
    return err;
}

/* ---- a branch's catalog under head-office ids --------------------------------------------- */

static const char *const synced[] = {"service_category", "service", "combo"};
#define NSYNCED 3

/* copy id -> head-office id, from the copies' origin links */
typedef struct idmap {
    uint64_t copy[4096], head[4096];
    size_t n;
} idmap;

static uint64_t map_id(const idmap *m, uint64_t id)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->copy[i] == id)
            return m->head[i];
    return id; /* a head-office id kept while the target's type is not synced */
}

static void map_refs(const idmap *m, const cs_field *fs, unsigned n, json_t *obj)
{
    for (unsigned i = 0; i < n; i++) {
        json_t *v = json_object_get(obj, fs[i].name);
        size_t k;
        json_t *x;
        if (!v)
            continue;
        if (fs[i].kind == CS_FIELD_REF && json_is_integer(v))
            json_object_set_new(
                obj, fs[i].name,
                json_integer((json_int_t)map_id(m, (uint64_t)json_integer_value(v))));
        else if (fs[i].kind == CS_FIELD_REF_LIST)
            json_array_foreach(v, k, x) json_array_set_new(
                v, k, json_integer((json_int_t)map_id(m, (uint64_t)json_integer_value(x))));
        else if (fs[i].kind == CS_FIELD_OBJECT)
            map_refs(m, fs[i].sub, fs[i].nsub, v);
        else if (fs[i].kind == CS_FIELD_OBJECT_LIST)
            json_array_foreach(v, k, x) map_refs(m, fs[i].sub, fs[i].nsub, x);
    }
}

/* {"type:headid": item} of every copy on the branch (archived ones too), references and ids
 * under head-office ids; *raw_out the same items as stored (references to the branch's copy
 * ids). New references, NULL on failure. */
static json_t *catalog(cs_branch *b, json_t **raw_out)
{
    json_t *all = json_array(), *out = json_object();
    *raw_out = json_object();
    static idmap m;
    m.n = 0;
    for (int t = 0; t < NSYNCED; t++)
        for (int arch = 0; arch < 2; arch++) {
            json_t *l = NULL;
            if (cs_engine_list(cs_branch_engine(b), synced[t], arch, &l) != CS_OK)
                return NULL;
            json_array_extend(all, l);
            json_decref(l);
        }
    size_t i;
    json_t *it;
    json_array_foreach(all, i, it)
    {
        json_t *o = json_object_get(it, "origin");
        if (json_is_object(o) && m.n < 4096) {
            m.copy[m.n] = (uint64_t)json_integer_value(json_object_get(it, "id"));
            m.head[m.n++] = (uint64_t)json_integer_value(json_object_get(o, "id"));
        }
    }
    json_array_foreach(all, i, it)
    {
        json_t *o = json_object_get(it, "origin");
        if (!json_is_object(o))
            continue; /* a local item: no sync touches it (R3) */
        const char *type = json_string_value(json_object_get(it, "type"));
        const cs_type *t = cs_schema_find(type);
        json_t *c = json_deep_copy(it);
        map_refs(&m, t->fields, t->nfields, c);
        char key[64];
        snprintf(key, sizeof(key), "%s:%" PRIu64, type,
                 (uint64_t)json_integer_value(json_object_get(o, "id")));
        json_object_set_new(out, key, c);
        json_object_set(*raw_out, key, it);
    }
    json_decref(all);
    return out;
}

/* ---- the comparison ------------------------------------------------------------------------ */

static bool fail(const char *what, const char *key)
{
    fprintf(stderr, "  preview and sync disagree: %s (%s)\n", what, key ? key : "");
    return false;
}

/* The preview entry for key in list (NULL when absent). */
static const json_t *entry(const json_t *list, const char *key)
{
    size_t i;
    const json_t *e;
    json_array_foreach(list, i, e)
    {
        char k[64];
        snprintf(k, sizeof(k), "%s:%" PRIu64, json_string_value(json_object_get(e, "type")),
                 (uint64_t)json_integer_value(json_object_get(e, "id")));
        if (strcmp(k, key) == 0)
            return e;
    }
    return NULL;
}

static uint64_t jget(const json_t *o, const char *a, const char *b)
{
    const json_t *v = json_object_get(o, a);
    return (uint64_t)json_integer_value(b ? json_object_get(v, b) : v);
}

/* An updated or archived copy: versions, archived flag and field changes as happened. */
static bool check_changed(const json_t *e, const json_t *before, const json_t *after,
                          const json_t *raw_b, const json_t *raw_a, const char *key)
{
    if (jget(e, "version", "old") != jget(before, "version", NULL) ||
        jget(e, "version", "new") != jget(after, "version", NULL))
        return fail("copy version", key);
    if (jget(e, "origin_version", "old") != jget(before, "origin", "version") ||
        jget(e, "origin_version", "new") != jget(after, "origin", "version"))
        return fail("origin version", key);
    const cs_type *t = cs_schema_find(json_string_value(json_object_get(e, "type")));
    const json_t *changes = json_object_get(e, "changes");
    size_t listed = 0;
    for (unsigned f = 0; f < t->nfields; f++) {
        const char *name = t->fields[f].name;
        const json_t *o = json_object_get(before, name), *n = json_object_get(after, name);
        bool changed = (o == NULL) != (n == NULL) || (o && !json_equal(o, n));
        const json_t *c = NULL, *x;
        size_t i;
        json_array_foreach(
            changes, i, x) if (strcmp(json_string_value(json_object_get(x, "field")), name) == 0 &&
                               strcmp(json_string_value(json_object_get(x, "op")), "relinked") != 0)
            c = x;
        if (changed != (c != NULL))
            return fail(changed ? "a changed field is not listed"
                                : "a field listed as changed is not",
                        name);
        /* Same under head-office ids, different as stored: its references now name this
         * branch's copies (a type put back, R7), listed as "relinked". */
        const json_t *ro = json_object_get(raw_b, name), *rn = json_object_get(raw_a, name);
        bool relinked = !changed && ((ro == NULL) != (rn == NULL) || (ro && !json_equal(ro, rn)));
        const json_t *rl = NULL;
        json_array_foreach(
            changes, i, x) if (strcmp(json_string_value(json_object_get(x, "field")), name) == 0 &&
                               strcmp(json_string_value(json_object_get(x, "op")), "relinked") == 0)
            rl = x;
        if (relinked != (rl != NULL))
            return fail(relinked ? "a relinked field is not listed"
                                 : "a field listed as relinked is not",
                        name);
        if (!c)
            continue;
        listed++;
        const json_t *co = json_object_get(c, "old"), *cn = json_object_get(c, "new");
        if ((o == NULL) != (co == NULL) || (o && !json_equal(o, co)) ||
            (n == NULL) != (cn == NULL) || (n && !json_equal(n, cn)))
            return fail("a field's old or new value", name);
    }
    size_t i;
    const json_t *x;
    json_array_foreach(
        changes, i, x) if (strcmp(json_string_value(json_object_get(x, "op")), "relinked") != 0 &&
                           listed-- == 0) return fail("extra changes", key);
    return true;
}

/* The preview p of one branch against its catalogs before and after the sync. */
static bool agree(const json_t *p, const json_t *before, const json_t *after,
                  const json_t *raw_before, const json_t *raw_after, bool switch_on,
                  const bool *type_synced)
{
    bool covered = json_is_true(json_object_get(p, "covered"));
    if (covered != switch_on)
        return fail("covered is not the branch's switch (R6)", NULL);
    size_t ncreate = 0, nchanged = 0;
    const char *key;
    json_t *a;
    json_object_foreach((json_t *)after, key, a)
    {
        const json_t *b = json_object_get(before, key);
        if (b && json_equal(a, b))
            continue;
        if (!covered)
            return fail("a skipped branch changed", key);
        if (!b) {
            const json_t *e = entry(json_object_get(p, "create"), key);
            if (!e)
                return fail("a copy created is not in create", key);
            ncreate++;
            const json_t *item = json_object_get(e, "item");
            const cs_type *t = cs_schema_find(json_string_value(json_object_get(e, "type")));
            for (unsigned f = 0; f < t->nfields; f++) {
                const json_t *x = json_object_get(item, t->fields[f].name),
                             *y = json_object_get(a, t->fields[f].name);
                if ((x == NULL) != (y == NULL) || (x && !json_equal(x, y)))
                    return fail("a created copy's field", t->fields[f].name);
            }
            if (jget(e, "version", NULL) != jget(a, "version", NULL) ||
                jget(e, "origin_version", NULL) != jget(a, "origin", "version") ||
                json_is_true(json_object_get(e, "archived")) !=
                    json_is_true(json_object_get(a, "archived")))
                return fail("a created copy's version or archived flag", key);
            continue;
        }
        bool arch = json_is_true(json_object_get(a, "archived")) &&
                    !json_is_true(json_object_get(b, "archived"));
        const json_t *e = entry(json_object_get(p, arch ? "archive" : "update"), key);
        if (!e)
            return fail(arch ? "an archived copy is not in archive" : "an update is not in update",
                        key);
        nchanged++;
        if (!check_changed(e, b, a, json_object_get(raw_before, key),
                           json_object_get(raw_after, key), key))
            return false;
    }
    json_object_foreach((json_t *)before, key,
                        a) if (!json_object_get(after, key)) return fail("a copy disappeared", key);
    if (json_array_size(json_object_get(p, "create")) != ncreate ||
        json_array_size(json_object_get(p, "update")) +
                json_array_size(json_object_get(p, "archive")) !=
            nchanged)
        return fail("the preview lists changes the sync did not make", NULL);
    size_t i;
    const json_t *s;
    uint64_t skipped = 0;
    json_array_foreach(json_object_get(p, "skipped_types"), i, s)
    {
        const cs_type *t = cs_schema_find(json_string_value(json_object_get(s, "type")));
        for (int k = 0; k < NSYNCED; k++)
            if (t && strcmp(t->name, synced[k]) == 0 && type_synced[k])
                return fail("a synced type listed as not synced (R7)", t->name);
        skipped += jget(s, "items", NULL);
    }
    if (covered &&
        ncreate + nchanged + skipped + jget(p, "unchanged", NULL) != jget(p, "waiting", NULL))
        return fail("create + update + archive + skipped + unchanged != waiting", NULL);
    return true;
}

/* ---- the random history ------------------------------------------------------------------ */

typedef struct world {
    char *hdir;
    cs_engine *h;
    uint64_t shop[BRANCHES];
    bool on[BRANCHES];
    char *bdir[BRANCHES];
    cs_branch *b[BRANCHES];
    bool type_synced[NSYNCED];
    uint64_t cat[N_ITEMS], svc[N_ITEMS];
    bool cat_live[N_ITEMS], svc_live[N_ITEMS];
    unsigned made;
} world;

static bool put(cs_engine *e, const char *type, uint64_t id, json_t *fields, uint64_t *id_out)
{
    cs_write_result res;
    cs_err err = fields ? cs_engine_put(e, type, id, fields, 0, &res) : CS_NO_MEMORY;
    json_decref(fields);
    if (err != CS_OK)
        fprintf(stderr, "  put %s: %s: %s\n", type, cs_err_name(err), cs_engine_errmsg(e));
    if (err == CS_OK && id_out)
        *id_out = res.id;
    return err == CS_OK;
}

static json_t *cat_fields(cs_test_rng *r, unsigned n)
{
    json_t *f = json_pack("{s:o,s:s}", "name", json_sprintf("category %u", n), "description",
                          cs_test_rng_below(r, 2) ? "grooming" : "clinic");
    if (f && cs_test_rng_below(r, 3) == 0)
        json_object_set_new(f, "price_table",
                            json_pack("[{s:s,s:i}]", "tier", "small", "price_cents",
                                      (int)cs_test_rng_below(r, 100000)));
    return f;
}

static json_t *svc_fields(cs_test_rng *r, unsigned n, uint64_t cat)
{
    json_t *f = json_pack("{s:o,s:I,s:[{s:s,s:i}],s:i}", "name", json_sprintf("service %u", n),
                          "category", (json_int_t)cat, "price_table", "tier", "standard",
                          "price_cents", (int)cs_test_rng_below(r, 4) * 1000, "duration_min",
                          (int)cs_test_rng_below(r, 3) * 30);
    if (f && cs_test_rng_below(r, 2))
        json_object_set_new(f, "active", json_boolean(cs_test_rng_below(r, 2)));
    return f;
}

static int pick(const bool *live, cs_test_rng *r)
{
    unsigned from = cs_test_rng_below(r, N_ITEMS);
    for (unsigned k = 0; k < N_ITEMS; k++)
        if (live[(from + k) % N_ITEMS])
            return (int)((from + k) % N_ITEMS);
    return -1;
}

/* One random head-office command (never a sync: the test makes those itself). */
static bool step(world *w, cs_test_rng *r)
{
    unsigned op = cs_test_rng_below(r, 100), n = w->made++;
    int i = pick(w->svc_live, r), j = pick(w->cat_live, r);
    if (j < 0) {
        w->cat_live[0] = true;
        return put(w->h, "service_category", 0, cat_fields(r, n), &w->cat[0]);
    }
    if (op < 35 && i >= 0) /* a price change, the case the preview is for */
        return put(w->h, "service", w->svc[i], svc_fields(r, n, w->cat[j]), NULL);
    if (op < 47)
        return put(w->h, "service_category", w->cat[j], cat_fields(r, n), NULL);
    if (op < 55 && i >= 0) {
        int k = pick(w->svc_live, r);
        json_t *f = json_pack("{s:o,s:[I,I],s:i}", "name", json_sprintf("combo %u", n), "services",
                              (json_int_t)w->svc[i], (json_int_t)w->svc[k], "price_cents",
                              (int)cs_test_rng_below(r, 50000));
        return put(w->h, "combo", 0, f, NULL);
    }
    if (op < 61 && i >= 0) {
        w->svc_live[i] = false;
        cs_write_result res;
        return cs_engine_del(w->h, "service", w->svc[i], 0, &res) == CS_OK;
    }
    if (op < 64) {
        w->cat_live[j] = false;
        cs_write_result res;
        return cs_engine_del(w->h, "service_category", w->cat[j], 0, &res) == CS_OK;
    }
    if (op < 74) {
        int k = pick((bool[N_ITEMS]){0}, r); /* -1: look for a free slot instead */
        for (int s = 0; s < N_ITEMS && k < 0; s++)
            if (!w->svc_live[s])
                k = s;
        if (k < 0)
            return true;
        w->svc_live[k] = true;
        return put(w->h, "service", 0, svc_fields(r, n, w->cat[j]), &w->svc[k]);
    }
    if (op < 84) {
        int k = (int)cs_test_rng_below(r, BRANCHES);
        w->on[k] = !w->on[k];
        return cs_engine_shop_switch(w->h, w->shop[k], w->on[k]) == CS_OK;
    }
    if (op < 94) {
        const char *names[NSYNCED];
        size_t nn = 0;
        for (int t = 0; t < NSYNCED; t++)
            if ((w->type_synced[t] = cs_test_rng_below(r, 3) != 0))
                names[nn++] = synced[t];
        return cs_engine_network_types(w->h, names, nn, NULL) == CS_OK;
    }
    bool cont =
        cs_test_rng_below(r, 4) == 0; /* mostly on-trigger: the sync points the preview is for */
    return cs_engine_network_mode(w->h, cont ? "continuous" : "on-trigger", NULL) == CS_OK;
}

static bool world_open(world *w)
{
    memset(w, 0, sizeof(*w));
    w->hdir = cs_test_tmpdir_kept("pv-head");
    bool ok = w->hdir && cs_engine_open(w->hdir, &nosync_opts, &w->h) == CS_OK &&
              cs_engine_init(w->h, "Head office", &w->shop[0]) == CS_OK &&
              cs_engine_network_create(w->h, "Pet chain") == CS_OK;
    cs_test_rng r = {7};
    for (int i = 0; ok && i < N_ITEMS; i++) {
        ok = put(w->h, "service_category", 0, cat_fields(&r, (unsigned)i), &w->cat[i]) &&
             put(w->h, "service", 0, svc_fields(&r, (unsigned)i, w->cat[i]), &w->svc[i]);
        w->cat_live[i] = w->svc_live[i] = true;
    }
    for (int k = 0; k < NSYNCED; k++)
        w->type_synced[k] = true;
    for (int k = 0; ok && k < BRANCHES; k++) {
        char name[32];
        snprintf(name, sizeof(name), "branch %d", k);
        ok = cs_engine_shop_add(w->h, name, "branch-password", &w->shop[k]) == CS_OK;
        w->on[k] = true;
        w->bdir[k] = ok ? cs_test_tmpdir_kept("pv-branch") : NULL;
        ok = ok && w->bdir[k] && cs_branch_open(w->bdir[k], &nosync_opts, &w->b[k]) == CS_OK &&
             cs_branch_bind(w->b[k], w->shop[k]) == CS_OK;
    }
    return ok;
}

static void world_close(world *w)
{
    for (int k = 0; k < BRANCHES; k++) {
        cs_branch_close(w->b[k]);
        cs_test_tmpdir_free(w->bdir[k]);
    }
    cs_engine_close(w->h);
    cs_test_tmpdir_free(w->hdir);
}

/* XXH3 of a file's bytes (0 when unreadable). */
static uint64_t file_hash(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        XXH3_64bits_update(st, buf, n);
    fclose(f);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

typedef struct collected {
    json_t *by_shop; /* "shop id" -> preview object */
    size_t n;
} collected;

static cs_err collect_fn(const json_t *p, void *ctx)
{
    collected *c = ctx;
    char k[32];
    snprintf(k, sizeof(k), "%" PRIu64, (uint64_t)json_integer_value(json_object_get(p, "shop")));
    c->n++;
    return json_object_set(c->by_shop, k, (json_t *)p) ? CS_NO_MEMORY : CS_OK;
}

/* One round: preview (all branches or one), sync the same way, compare on every branch. */
static bool round_agrees(world *w, cs_test_rng *r, unsigned *events)
{
    json_t *before[BRANCHES] = {0}, *after[BRANCHES] = {0}, *raw_b[BRANCHES] = {0},
           *raw_a[BRANCHES] = {0};
    bool ok = true;
    for (int k = 0; ok && k < BRANCHES; k++)
        ok = feed(w->b[k], w->h) == CS_OK && (before[k] = catalog(w->b[k], &raw_b[k])) != NULL;
    int one = cs_test_rng_below(r, 3) == 0 ? (int)cs_test_rng_below(r, BRANCHES) : -1;
    uint64_t target = one < 0 ? 0 : w->shop[one], seq = 0, head_before = 0, head_after = 0;
    collected c = {json_object(), 0};
    cs_audit *a = NULL;
    uint64_t bytes = file_hash(w->hdir, "data.mdb");
    ok = ok && cs_audit_open_flags(w->h, CS_AUDIT_READ_ONLY, &a) == CS_OK;
    cs_err err = ok ? cs_audit_sync_preview(a, target, collect_fn, &c, &seq) : CS_IO;
    if (err != CS_OK)
        fprintf(stderr, "  preview: %s: %s\n", cs_err_name(err), a ? cs_audit_errmsg(a) : "");
    cs_audit_close(a);
    ok = ok && err == CS_OK && c.n == (one < 0 ? BRANCHES : 1);
    /* Nothing was written: the head office's store is byte-identical (issue 14). */
    ok = ok && file_hash(w->hdir, "data.mdb") == bytes;
    cs_log_reader *lr = NULL;
    ok = ok && cs_log_reader_open(cs_engine_log(w->h), &lr) == CS_OK &&
         cs_log_reader_head(lr, &head_before) == CS_OK && head_before == seq;
    cs_log_reader_close(lr);
    ok = ok && cs_engine_sync(w->h, target, &head_after) == CS_OK && head_after == seq + 1;
    for (int k = 0; ok && k < BRANCHES; k++)
        ok = feed(w->b[k], w->h) == CS_OK && (after[k] = catalog(w->b[k], &raw_a[k])) != NULL;
    for (int k = 0; ok && k < BRANCHES; k++) {
        char key[32];
        snprintf(key, sizeof(key), "%" PRIu64, w->shop[k]);
        const json_t *p = json_object_get(c.by_shop, key);
        if (one >= 0 && k != one) { /* R5c: a sync for another branch leaves this one alone */
            ok = !p && json_equal(before[k], after[k]);
            if (!ok)
                fprintf(stderr, "  branch %d changed by a sync for branch %d\n", k, one);
            continue;
        }
        ok = p && jget(p, "seq", NULL) == seq &&
             agree(p, before[k], after[k], raw_b[k], raw_a[k], w->on[k], w->type_synced);
        if (ok && json_is_true(json_object_get(p, "covered")))
            *events += (unsigned)(json_array_size(json_object_get(p, "create")) +
                                  json_array_size(json_object_get(p, "update")) +
                                  json_array_size(json_object_get(p, "archive")));
    }
    for (int k = 0; k < BRANCHES; k++) {
        json_decref(before[k]);
        json_decref(after[k]);
        json_decref(raw_b[k]);
        json_decref(raw_a[k]);
    }
    json_decref(c.by_shop);
    return ok;
}

/* Issue 14 (R2, R4, R5b, R5c, R6, R7): the preview is exactly what the sync then does. */
static void test_issue14_preview_equals_sync_on_random_histories(void)
{
    unsigned changes = 0, rounds = 0;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        world w;
        cs_test_rng r = {seed * 7919};
        bool ok = world_open(&w);
        for (unsigned n = 0; ok && n < 300; n++) {
            ok = step(&w, &r);
            if (ok && cs_test_rng_below(&r, 12) == 0) {
                ok = round_agrees(&w, &r, &changes);
                rounds++;
                if (!ok)
                    fprintf(stderr, "  seed %" PRIu64 ", step %u\n", seed, n);
            }
        }
        world_close(&w);
        CHECK(ok);
    }
    /* The histories made the preview say something: copies created, updated and archived. */
    CHECK(rounds > 40);
    CHECK(changes > 100);
}

/* ---- the command line ------------------------------------------------------------------- */

#define RUN_DEADLINE_MS 60000
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static bool run_ok(const char *input, const char *const *args, char **out)
{
    return cs_run_code(input, args, out, NULL, RUN_DEADLINE_MS, true) == 0;
}

static uint64_t out_id(const char *out)
{
    json_t *o = json_loads(out ? out : "", 0, NULL);
    uint64_t id = (uint64_t)json_integer_value(json_object_get(o, "id"));
    json_decref(o);
    return id;
}

/* Issue 14 via the CLI: readable summary, JSON lines, --shop, nothing written, SPEC 6 codes. */
static void test_issue14_sync_dry_run_cli(void)
{
    char *hq = cs_test_tmpdir_kept("pv-cli-hq"), *single = cs_test_tmpdir_kept("pv-cli-one");
    char *out = NULL, cat[32], svc[32], b1[32], b2[32], json[512];
    CHECK(hq && single);
    char head_id[32];
    CHECK(run_ok(NULL, ARGS("init", "--data", hq, "--name", "HQ", "--json-out"), &out));
    snprintf(head_id, sizeof(head_id), "%" PRIu64, out_id(out));
    free(out);
    CHECK(run_ok(NULL, ARGS("network", "create", "--data", hq, "--name", "Pets"), NULL));
    CHECK(run_ok(NULL, ARGS("init", "--data", single, "--name", "Alone"), NULL));
    CHECK(run_ok(
        "passw0rd-1\n",
        ARGS("shop", "add", "--data", hq, "--name", "Downtown", "--password-stdin", "--json-out"),
        &out));
    snprintf(b1, sizeof(b1), "%" PRIu64, out_id(out));
    free(out);
    CHECK(run_ok(
        "passw0rd-2\n",
        ARGS("shop", "add", "--data", hq, "--name", "Beach", "--password-stdin", "--json-out"),
        &out));
    snprintf(b2, sizeof(b2), "%" PRIu64, out_id(out));
    free(out);
    CHECK(run_ok(NULL,
                 ARGS("put", "service_category", "--data", hq, "--json-out", "--json",
                      "{\"name\":\"Grooming\"}"),
                 &out));
    snprintf(cat, sizeof(cat), "%" PRIu64, out_id(out));
    free(out);
    snprintf(json, sizeof(json),
             "{\"name\":\"Bath\",\"category\":%s,\"price_table\":[{\"tier\":\"small\","
             "\"price_cents\":3000}]}",
             cat);
    CHECK(run_ok(NULL, ARGS("put", "service", "--data", hq, "--json-out", "--json", json), &out));
    snprintf(svc, sizeof(svc), "%" PRIu64, out_id(out));
    free(out);
    CHECK(run_ok(NULL, ARGS("sync", "--data", hq), NULL));
    /* The price change the preview is for, and Beach switched off. */
    snprintf(json, sizeof(json),
             "{\"name\":\"Bath\",\"category\":%s,\"price_table\":[{\"tier\":\"small\","
             "\"price_cents\":3500}]}",
             cat);
    CHECK(run_ok(NULL, ARGS("put", "service", svc, "--data", hq, "--json", json), NULL));
    CHECK(run_ok(NULL, ARGS("shop", "switch", b2, "off", "--data", hq), NULL));
    uint64_t bytes = file_hash(hq, "data.mdb");

    CHECK(run_ok(NULL, ARGS("sync", "--dry-run", "--data", hq), &out));
    bool human = strstr(out, "branch \"Downtown\"") && strstr(out, "1 to update") &&
                 strstr(out, "price_table: [{\"tier\":\"small\",\"price_cents\":3000}] -> "
                             "[{\"tier\":\"small\",\"price_cents\":3500}]") &&
                 strstr(out, "branch \"Beach\"") && strstr(out, "its sync switch is off");
    if (!human)
        fprintf(stderr, "  human output:\n%s", out);
    free(out);
    CHECK(human);

    CHECK(run_ok(NULL, ARGS("sync", "--dry-run", "--json-out", "--data", hq), &out));
    json_error_t je;
    char *line2 = strchr(out, '\n');
    CHECK(line2 != NULL);
    json_t *p1 = json_loadb(out, (size_t)(line2 - out), 0, &je),
           *p2 = json_loads(line2 + 1, 0, &je);
    free(out);
    if (p1 && p2 && strcmp(json_string_value(json_object_get(p1, "name")) ?: "", "Beach") == 0) {
        json_t *x = p1; /* one line per branch, in shop id order */
        p1 = p2, p2 = x;
    }
    bool shapes = p1 && p2 && json_is_true(json_object_get(p1, "covered")) &&
                  json_array_size(json_object_get(p1, "update")) == 1 &&
                  json_is_false(json_object_get(p2, "covered")) &&
                  strcmp(json_string_value(json_object_get(p2, "skip")) ?: "", "switch_off") == 0;
    json_decref(p1);
    json_decref(p2);
    CHECK(shapes);

    CHECK(run_ok(NULL, ARGS("sync", "--dry-run", "--shop", b2, "--json-out", "--data", hq), &out));
    bool one = strchr(out, '\n') == out + strlen(out) - 1 && strstr(out, "\"switch_off\"");
    free(out);
    CHECK(one);
    CHECK(file_hash(hq, "data.mdb") == bytes); /* nothing written by any preview */

    cs_run_result r;
    CHECK(cs_run(&r, NULL, NULL, ARGS("sync", "--dry-run", "--shop", "12345", "--data", hq),
                 RUN_DEADLINE_MS));
    bool refused = cs_run_refused(&r, "not_in_network", 2) && r.out[0] == '\0';
    cs_run_free(&r);
    CHECK(refused);
    CHECK(cs_run(&r, NULL, NULL, ARGS("sync", "--dry-run", "--shop", head_id, "--data", hq),
                 RUN_DEADLINE_MS));
    refused = cs_run_refused(&r, "not_in_network", 2); /* the head office is no branch */
    cs_run_free(&r);
    CHECK(refused);
    CHECK(cs_run(&r, NULL, NULL, ARGS("sync", "--dry-run", "--data", single), RUN_DEADLINE_MS));
    refused = cs_run_refused(&r, "not_in_network", 2);
    cs_run_free(&r);
    CHECK(refused);
    CHECK(file_hash(hq, "data.mdb") == bytes);

    /* A branch directory: forbidden, as the head-office commands are there. */
    char *bd = cs_test_tmpdir_kept("pv-cli-branch"), path[512];
    CHECK(bd);
    snprintf(path, sizeof(path), "%s/export.seg", bd);
    CHECK(run_ok(NULL, ARGS("log", "export", "--data", hq, "--from", "1", "--out", path), NULL));
    CHECK(run_ok(NULL, ARGS("branch", "import", path, "--data", bd, "--shop", b1), NULL));
    CHECK(cs_run(&r, NULL, NULL, ARGS("sync", "--dry-run", "--data", bd), RUN_DEADLINE_MS));
    refused = cs_run_refused(&r, "forbidden", 2);
    cs_run_free(&r);
    CHECK(refused);

    /* An unlinked shop is a single store now: no sync point covers it (R13). */
    CHECK(run_ok(NULL, ARGS("shop", "unlink", b1, "--data", hq), NULL));
    CHECK(cs_run(&r, NULL, NULL, ARGS("sync", "--dry-run", "--shop", b1, "--data", hq),
                 RUN_DEADLINE_MS));
    refused = cs_run_refused(&r, "not_in_network", 2);
    cs_run_free(&r);
    CHECK(refused);
    CHECK(run_ok(NULL, ARGS("sync", "--dry-run", "--json-out", "--data", hq), &out));
    bool only_beach = strchr(out, '\n') == out + strlen(out) - 1 && strstr(out, "\"Beach\"");
    free(out);
    CHECK(only_beach);
}

int main(void)
{
    RUN(test_issue14_preview_equals_sync_on_random_histories);
    cs_test_tmpdirs_cleanup();
    RUN(test_issue14_sync_dry_run_cli);
    cs_test_tmpdirs_cleanup();
    return cs_test_finish();
}
