/*
 * test_projection.c: a branch's projection (projections/projection.h) against the rules of
 * SPEC 3 it decides: R1 (on a branch), R2, R3, R4, R5a-d, R6, R7, R8, R10, R13, and the
 * SPEC 4 promises of segment application (determinism, idempotent re-import, refusals that
 * change nothing). The crash half of SPEC 4 is in test_projection_crash.c.
 *
 * How a branch is fed without a network: the head office is an engine on its own directory;
 * after each command the events after the branch's cursor are encoded into a segment
 * (cs_segment_encode) and applied with cs_branch_apply_segment, exactly what the server and
 * `branch import` do.
 *
 * The model test (test_projection_matches_model_*) drives random interleavings of head-office
 * commands, sync triggers, switch, synced types, mode, branch-local writes and one unlink over
 * three branches, and after every step compares each branch's whole catalog with a small
 * reference model written here. The model never calls projection code: it keeps, per branch,
 * which head-office items the branch has copies of and what each copy must hold, with every
 * reference written as "the copy of head item Y"; the check resolves Y through the origin
 * links it reads from the branch itself. Its rules, in the words of SPEC 3:
 *   - a sync point covering B (R5a link, R5b sync all, R5c sync B, R5d every catalog event of a
 *     synced type in continuous mode; none while B's switch is off, R6) gives B a copy of every
 *     head item of a synced type (R2, R7), archived ones included (R4: a live copy may
 *     reference it, and nothing that references it may break), and brings each copy of a
 *     synced type to the head's fields, archived flag and version, its references naming B's
 *     copies where B has one (R2); a copy's own version grows by one each time it changes;
 *   - between sync points nothing of B's copies changes (R5): checked byte for byte through a
 *     digest of B's items database;
 *   - local items are exactly what B wrote (R3); shared records equal the head's from the
 *     event on, whatever the switch (R8); after the unlink every copy is a local item with
 *     detached_from = its last origin link and nothing else changes again (R13).
 * A reference to an item whose type is not synced and of which B has no copy keeps the
 * head-office id (the projection's documented choice, projections/syncpoint.c).
 *
 * Speed: every directory here is opened with CS_LOG_NOSYNC. These tests check what is applied,
 * not what survives power loss (the crash test does that, durable); an fsync per command and
 * per branch would make the model test spend minutes waiting for the disk.
 */
#include "projections/projection.h"
#include "tests/harness.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

static const cs_log_options nosync_opts = {.flags = CS_LOG_NOSYNC};

/* ---- helpers ----------------------------------------------------------------------------- */

static cs_err log_head(cs_log *log, uint64_t *out)
{
    cs_log_reader *r;
    cs_err err = cs_log_reader_open(log, &r);
    if (err != CS_OK)
        return err;
    err = cs_log_reader_head(r, out);
    cs_log_reader_close(r);
    return err;
}

/* Applies the head office's events after the branch's cursor, in segments of at most
 * events_max events (0: as many as fit one segment). *applied_out (may be NULL) adds up. */
static cs_err feed(cs_branch *b, cs_engine *h, uint64_t events_max, uint64_t *applied_out)
{
    cs_branch_state st;
    cs_err err = cs_branch_state_get(b, &st);
    cs_log_reader *r = NULL;
    uint64_t head = 0, total = 0;
    if (err == CS_OK)
        err = cs_log_reader_open(cs_engine_log(h), &r);
    if (err == CS_OK)
        err = cs_log_reader_head(r, &head);
    for (uint64_t s = st.cursor + 1; err == CS_OK && s <= head;) {
        uint64_t last_max = events_max && s + events_max - 1 < head ? s + events_max - 1 : head;
        uint8_t *seg;
        size_t len;
        uint64_t last, applied = 0;
        err = cs_segment_encode(r, s, last_max, CS_SEGMENT_BYTES_MAX, &seg, &len, &last);
        if (err != CS_OK)
            break;
        err = cs_branch_apply_segment(b, seg, len, &applied);
        free(seg);
        if (err != CS_OK)
            fprintf(stderr, "  apply %llu-%llu: %s: %s\n", (unsigned long long)s,
                    (unsigned long long)last, cs_err_name(err), cs_branch_errmsg(b));
        total += applied;
        s = last + 1;
    }
    cs_log_reader_close(r);
    if (err == CS_OK && applied_out)
        *applied_out += total;
    return err;
}

/* XXH3 of the branch's `items` database alone: its catalog as stored, byte for byte. */
static cs_err items_digest(cs_branch *b, uint64_t *out)
{
    cs_engine *e = cs_branch_engine(b);
    MDB_txn *txn;
    if (mdb_txn_begin(cs_log_env(cs_engine_log(e)), NULL, MDB_RDONLY, &txn))
        return CS_IO;
    MDB_dbi dbi = cs_engine_items_dbi(e);
    cs_err err = cs_digest_dbs(txn, &dbi, 1, out);
    mdb_txn_abort(txn);
    return err;
}

/* The schema fields of a SPEC 7 item object. New reference. */
static json_t *fields_of(const json_t *item)
{
    json_t *f = json_deep_copy(item);
    static const char *const meta[] = {"type",     "id",     "version",
                                       "archived", "origin", "detached_from"};
    for (size_t i = 0; f && i < sizeof(meta) / sizeof(meta[0]); i++)
        json_object_del(f, meta[i]);
    return f;
}

static uint64_t jid(const json_t *obj, const char *key)
{
    return (uint64_t)json_integer_value(json_object_get(obj, key));
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
    json_t *f = json_pack("{s:s,s:I,s:[{s:s,s:i}],s:i}", "name", "service", "category",
                          (json_int_t)cat, "price_table", "tier", "standard", "price_cents",
                          (int)cs_test_rng_below(r, 900000), "duration_min",
                          (int)cs_test_rng_below(r, 240));
    if (f)
        json_object_set_new(f, "name", json_sprintf("service %u", n));
    if (f && cs_test_rng_below(r, 2))
        json_object_set_new(f, "active", json_boolean(cs_test_rng_below(r, 2)));
    return f;
}

static json_t *combo_fields(cs_test_rng *r, unsigned n, const uint64_t *svcs, size_t k)
{
    json_t *list = json_array();
    for (size_t i = 0; list && i < k; i++)
        json_array_append_new(list, json_integer((json_int_t)svcs[i]));
    json_t *f = json_pack("{s:s,s:o,s:i}", "name", "combo", "services", list, "price_cents",
                          (int)cs_test_rng_below(r, 500000));
    if (f)
        json_object_set_new(f, "name", json_sprintf("combo %u", n));
    return f;
}

static json_t *species_fields(unsigned n)
{
    return json_pack("{s:o}", "name", json_sprintf("species %u", n));
}

/* A head office: a directory made a single store, then a network. */
typedef struct head {
    char *dir;
    cs_engine *e;
    uint64_t shop;
} head;

static bool head_open(head *h, const char *tag)
{
    memset(h, 0, sizeof(*h));
    h->dir = cs_test_tmpdir(tag);
    return h->dir && cs_engine_open(h->dir, &nosync_opts, &h->e) == CS_OK &&
           cs_engine_init(h->e, "Head office", &h->shop) == CS_OK &&
           cs_engine_network_create(h->e, "Pet chain") == CS_OK;
}

static void head_close(head *h)
{
    cs_engine_close(h->e);
    if (h->dir)
        cs_test_rmtree(h->dir);
    free(h->dir);
    memset(h, 0, sizeof(*h));
}

/* A branch directory, bound to `shop`. */
typedef struct bdir {
    char *dir;
    cs_branch *b;
} bdir;

static bool bdir_open(bdir *d, const char *tag, uint64_t shop)
{
    memset(d, 0, sizeof(*d));
    d->dir = cs_test_tmpdir(tag);
    return d->dir && cs_branch_open(d->dir, &nosync_opts, &d->b) == CS_OK &&
           cs_branch_bind(d->b, shop) == CS_OK;
}

static void bdir_close(bdir *d)
{
    cs_branch_close(d->b);
    if (d->dir)
        cs_test_rmtree(d->dir);
    free(d->dir);
    memset(d, 0, sizeof(*d));
}

static bool put(cs_engine *e, const char *type, uint64_t id, json_t *fields, cs_write_result *out)
{
    cs_write_result res;
    cs_err err = fields ? cs_engine_put(e, type, id, fields, 0, &res) : CS_NO_MEMORY;
    if (err != CS_OK)
        fprintf(stderr, "  put %s %llu: %s: %s\n", type, (unsigned long long)id, cs_err_name(err),
                cs_engine_errmsg(e));
    json_decref(fields);
    if (err == CS_OK && out)
        *out = res;
    return err == CS_OK;
}

/* ---- the reference model ----------------------------------------------------------------- */

#define M_BRANCHES 3
#define M_ITEMS_MAX 2048  /* head-office items in one run: creates are < 40% of the steps */
#define M_LOCALS_MAX 1024 /* branch-local items of one branch */
#define M_REFS_MAX 8      /* services in a combo */

enum m_type { MT_CAT, MT_SVC, MT_COMBO, MT_SPECIES, MT_COUNT };
#define MT_CATALOG 3 /* the first three are synced catalog types */
static const char *const mt_name[MT_COUNT] = {"service_category", "service", "combo", "species"};

typedef struct m_head_item {
    int t;
    uint64_t id;
    uint64_t version;
    bool archived;
    json_t *fields; /* owned: as put at the head office, references are head ids */
} m_head_item;

/* What B's copy of one head item must be. */
typedef struct m_copy {
    bool exists;
    bool detached;         /* R13: B was unlinked */
    uint64_t version;      /* the copy's own version */
    uint64_t head_version; /* origin.version */
    bool archived;
    json_t *expect; /* owned: the fields; a reference is {"copy_of": Y} or head id Y */
} m_copy;

/* B's shared record with a head-office id (R8). */
typedef struct m_shared {
    bool present;
    uint64_t version;
    bool archived;
    json_t *fields; /* owned */
} m_shared;

typedef struct m_local {
    int t;
    uint64_t id;
    uint64_t version;
    bool archived;
    json_t *fields; /* owned: as written on B, references are B's ids */
} m_local;

typedef struct m_branch {
    char *dir;
    cs_branch *b;
    uint64_t shop;
    bool added;                 /* shop_add ran and the directory is bound */
    bool unlinked;              /* R13 */
    bool sw;                    /* R6 */
    m_copy copies[M_ITEMS_MAX]; /* by head item index */
    m_shared shared[M_ITEMS_MAX];
    m_local locals[M_LOCALS_MAX];
    size_t nlocals;
    size_t outbox;        /* shared records written here while a branch (R8) */
    bool changed;         /* the expected catalog changed since the last full check */
    uint64_t items_bytes; /* digest of the items database at the last full check */
} m_branch;

typedef struct model {
    cs_test_rng r;
    unsigned seed;
    unsigned step;
    const char *op; /* the step's operation, for failure messages */
    head h;
    m_head_item items[M_ITEMS_MAX];
    size_t nitems;
    unsigned names; /* a counter that makes names unique */
    bool synced[MT_CATALOG];
    bool continuous;
    m_branch br[M_BRANCHES];
    struct { /* what a run exercised, printed at its end */
        unsigned sync_points, copy_writes, full_checks, raw_refs, refusals, continuous_steps;
    } stats;
} model;

/* Prints where the run went wrong (seed, step, operation) and returns false. */
static bool m_fail(const model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool m_fail(const model *m, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "  seed %u step %u (%s): ", m->seed, m->step, m->op);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return false;
}
#define M_FAIL m_fail

static bool m_linked(const m_branch *B)
{
    return B->added && !B->unlinked;
}

/* Head items are appended in creation order and head ids grow: binary search. */
static long m_find(const model *m, uint64_t id)
{
    size_t lo = 0, hi = m->nitems;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->items[mid].id == id)
            return (long)mid;
        if (m->items[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static json_t *m_ref(const model *m, const m_branch *B, json_t *head_ref)
{
    long i = m_find(m, (uint64_t)json_integer_value(head_ref));
    if (i >= 0 && B->copies[i].exists)
        return json_pack("{s:O}", "copy_of", head_ref);
    return json_incref(head_ref);
}

/* R2: the fields B's copy of `it` holds, references resolved against B's copies now. */
static json_t *m_expect(const model *m, const m_branch *B, const m_head_item *it)
{
    json_t *f = json_deep_copy(it->fields);
    if (f && it->t == MT_SVC) {
        json_object_set_new(f, "category", m_ref(m, B, json_object_get(f, "category")));
    } else if (f && it->t == MT_COMBO) {
        json_t *list = json_object_get(f, "services");
        for (size_t i = 0; i < json_array_size(list); i++)
            json_array_set_new(list, i, m_ref(m, B, json_array_get(list, i)));
    }
    return f;
}

/* A sync point covering B (R2, R4, R7). */
static void m_sync_point(model *m, m_branch *B)
{
    m->stats.sync_points++;
    for (size_t i = 0; i < m->nitems; i++) {
        const m_head_item *it = &m->items[i];
        if (it->t < MT_CATALOG && m->synced[it->t] && !B->copies[i].exists) {
            B->copies[i] = (m_copy){.exists = true};
            B->changed = true;
        }
    }
    for (size_t i = 0; i < m->nitems; i++) {
        const m_head_item *it = &m->items[i];
        m_copy *c = &B->copies[i];
        if (it->t >= MT_CATALOG || !m->synced[it->t])
            continue;
        json_t *e = m_expect(m, B, it);
        if (c->version == 0 || c->head_version != it->version || !json_equal(e, c->expect)) {
            json_decref(c->expect);
            c->expect = e;
            c->version++;
            c->head_version = it->version;
            c->archived = it->archived;
            B->changed = true;
            m->stats.copy_writes++;
            if (json_is_integer(json_object_get(e, "category")))
                m->stats.raw_refs++; /* a head id kept: its type is out and B has no copy */
        } else {
            json_decref(e);
        }
    }
}

/* A head-office catalog event of type t: R5d in continuous mode. */
static void m_catalog_event(model *m, int t)
{
    for (int k = 0; k < M_BRANCHES; k++) {
        m_branch *B = &m->br[k];
        if (m_linked(B) && B->sw && m->continuous && m->synced[t])
            m_sync_point(m, B);
    }
}

/* R8: a shared record reaches every branch on arrival, switch on or off. */
static void m_shared_event(model *m, size_t i)
{
    const m_head_item *it = &m->items[i];
    for (int k = 0; k < M_BRANCHES; k++) {
        m_branch *B = &m->br[k];
        if (!m_linked(B))
            continue;
        json_decref(B->shared[i].fields);
        B->shared[i] = (m_shared){true, it->version, it->archived, json_incref(it->fields)};
        B->changed = true;
    }
}

/* ---- the model's check of one branch ----------------------------------------------------- */

typedef struct idpair {
    uint64_t head_id;
    uint64_t copy_id;
} idpair;

static int idpair_cmp(const void *a, const void *b)
{
    uint64_t x = ((const idpair *)a)->head_id, y = ((const idpair *)b)->head_id;
    return x < y ? -1 : x > y;
}

typedef struct idmap {
    idpair *p;
    size_t n;
} idmap;

static bool idmap_get(const idmap *map, uint64_t head_id, uint64_t *out)
{
    idpair key = {head_id, 0};
    const idpair *hit = bsearch(&key, map->p, map->n, sizeof(idpair), idpair_cmp);
    if (hit)
        *out = hit->copy_id;
    return hit != NULL;
}

/* The copy's link: origin while linked, detached_from after the unlink (R13). */
static const json_t *link_of(const json_t *item)
{
    const json_t *o = json_object_get(item, "origin");
    return json_is_object(o) ? o : json_object_get(item, "detached_from");
}

/* Replaces every {"copy_of": Y} by B's copy id of Y, read from B's own origin links. */
static json_t *m_materialize(const json_t *v, const idmap *map, bool *ok)
{
    if (json_is_object(v) && json_object_size(v) == 1 && json_object_get(v, "copy_of")) {
        uint64_t id = 0;
        if (!idmap_get(map, jid(v, "copy_of"), &id))
            *ok = false;
        return json_integer((json_int_t)id);
    }
    if (json_is_array(v)) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < json_array_size(v); i++)
            json_array_append_new(a, m_materialize(json_array_get(v, i), map, ok));
        return a;
    }
    if (json_is_object(v)) {
        json_t *o = json_object();
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) json_object_set_new(o, k, m_materialize(x, map, ok));
        return o;
    }
    return json_deep_copy(v);
}

static bool m_check_fields(model *m, const json_t *item, const json_t *want)
{
    json_t *got = fields_of(item);
    bool eq = got && want && json_equal(got, want);
    if (!eq) {
        char *a = json_dumps(item, JSON_COMPACT), *b = want ? json_dumps(want, JSON_COMPACT) : 0;
        M_FAIL(m, "fields differ:\n    got  %s\n    want %s", a, b ? b : "(unresolvable)");
        free(a);
        free(b);
    }
    json_decref(got);
    return eq;
}

/* A listed item that is (or was, R13) a copy: R2, R4, R5, R6, R7. */
static bool m_check_copy(model *m, m_branch *B, int t, const json_t *item, const idmap *map)
{
    const json_t *link = link_of(item);
    long i = m_find(m, jid(link, "id"));
    if (i < 0 || m->items[i].t != t || !B->copies[i].exists)
        return M_FAIL(m, "branch %s has a copy of head item %llu it should not have", B->dir,
                      (unsigned long long)jid(link, "id"));
    const m_copy *c = &B->copies[i];
    if (c->detached != json_is_null(json_object_get(item, "origin")) ||
        c->detached != json_is_object(json_object_get(item, "detached_from")))
        return M_FAIL(m, "copy %llu: origin/detached_from wrong for %s (R13)",
                      (unsigned long long)jid(item, "id"), c->detached ? "detached" : "linked");
    if (jid(link, "shop") != m->h.shop || jid(link, "version") != c->head_version)
        return M_FAIL(m, "copy %llu: link {shop %llu, version %llu}, want {%llu, %llu}",
                      (unsigned long long)jid(item, "id"), (unsigned long long)jid(link, "shop"),
                      (unsigned long long)jid(link, "version"), (unsigned long long)m->h.shop,
                      (unsigned long long)c->head_version);
    if (jid(item, "version") != c->version ||
        json_is_true(json_object_get(item, "archived")) != c->archived)
        return M_FAIL(m, "copy %llu: version %llu archived %d, want %llu %d (R4)",
                      (unsigned long long)jid(item, "id"), (unsigned long long)jid(item, "version"),
                      json_is_true(json_object_get(item, "archived")),
                      (unsigned long long)c->version, c->archived);
    bool ok = true;
    json_t *want = m_materialize(c->expect, map, &ok);
    bool eq = ok ? m_check_fields(m, item, want) : m_check_fields(m, item, NULL);
    json_decref(want);
    return eq;
}

static bool m_check_plain(model *m, const json_t *item, uint64_t version, bool archived,
                          const json_t *fields, const char *what)
{
    if (jid(item, "version") != version ||
        json_is_true(json_object_get(item, "archived")) != archived ||
        !json_is_null(json_object_get(item, "origin")) || json_object_get(item, "detached_from"))
        return M_FAIL(m, "%s %llu: version %llu archived %d, want %llu %d and no links", what,
                      (unsigned long long)jid(item, "id"), (unsigned long long)jid(item, "version"),
                      json_is_true(json_object_get(item, "archived")), (unsigned long long)version,
                      archived);
    return m_check_fields(m, item, fields);
}

/* A listed item with no link: a shared record with a head id (R8) or a local item (R3). */
static bool m_check_unlinked_item(model *m, m_branch *B, int t, const json_t *item)
{
    uint64_t id = jid(item, "id");
    long i = t == MT_SPECIES ? m_find(m, id) : -1;
    if (i >= 0 && B->shared[i].present) {
        const m_shared *s = &B->shared[i];
        return m_check_plain(m, item, s->version, s->archived, s->fields, "shared record");
    }
    for (size_t j = 0; j < B->nlocals; j++) {
        const m_local *l = &B->locals[j];
        if (l->id == id && l->t == t)
            return m_check_plain(m, item, l->version, l->archived, l->fields, "local item");
    }
    return M_FAIL(m, "branch %s holds %s %llu, which the model does not know", B->dir, mt_name[t],
                  (unsigned long long)id);
}

static size_t m_expected_count(const model *m, const m_branch *B, int t)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nitems; i++)
        if (m->items[i].t == t && (B->copies[i].exists || B->shared[i].present))
            n++;
    for (size_t j = 0; j < B->nlocals; j++)
        n += B->locals[j].t == t;
    return n;
}

/* The map head id -> B's copy id, from the links B's copies carry. */
static bool m_build_idmap(model *m, json_t *lists[MT_COUNT][2], idmap *map)
{
    size_t n = 0;
    for (int t = 0; t < MT_CATALOG; t++)
        n += json_array_size(lists[t][0]) + json_array_size(lists[t][1]);
    map->p = calloc(n ? n : 1, sizeof(idpair));
    map->n = 0;
    if (!map->p)
        return false;
    for (int t = 0; t < MT_CATALOG; t++)
        for (int a = 0; a < 2; a++)
            for (size_t i = 0; i < json_array_size(lists[t][a]); i++) {
                const json_t *item = json_array_get(lists[t][a], i), *link = link_of(item);
                if (json_is_object(link))
                    map->p[map->n++] = (idpair){jid(link, "id"), jid(item, "id")};
            }
    qsort(map->p, map->n, sizeof(idpair), idpair_cmp);
    for (size_t i = 1; i < map->n; i++)
        if (map->p[i].head_id == map->p[i - 1].head_id)
            return M_FAIL(m, "two copies of head item %llu", (unsigned long long)map->p[i].head_id);
    return true;
}

static bool m_check_lists(model *m, m_branch *B, json_t *lists[MT_COUNT][2], const idmap *map)
{
    cs_engine *e = cs_branch_engine(B->b);
    for (int t = 0; t < MT_COUNT; t++) {
        size_t got = json_array_size(lists[t][0]) + json_array_size(lists[t][1]);
        size_t want = m_expected_count(m, B, t);
        if (got != want)
            return M_FAIL(m, "branch %s lists %zu %s items, the model %zu", B->dir, got, mt_name[t],
                          want);
        for (int a = 0; a < 2; a++)
            for (size_t i = 0; i < json_array_size(lists[t][a]); i++) {
                const json_t *item = json_array_get(lists[t][a], i);
                if (json_is_true(json_object_get(item, "archived")) != (a == 1))
                    return M_FAIL(m, "an archived item in the normal listing or back (R4)");
                bool ok = json_is_object(link_of(item)) ? m_check_copy(m, B, t, item, map)
                                                        : m_check_unlinked_item(m, B, t, item);
                if (!ok)
                    return false;
                json_t *g = NULL;
                if (a == 1 && cs_engine_get(e, mt_name[t], jid(item, "id"), &g) != CS_OK)
                    return M_FAIL(m, "archived %s %llu does not resolve by id (R4)", mt_name[t],
                                  (unsigned long long)jid(item, "id"));
                json_decref(g);
            }
    }
    return true;
}

/* The whole catalog of B against the model: every listed item is expected and every expected
 * item is listed (the counts match and ids are unique). */
static bool m_check_catalog(model *m, m_branch *B)
{
    cs_engine *e = cs_branch_engine(B->b);
    json_t *lists[MT_COUNT][2] = {{0}};
    bool ok = true;
    for (int t = 0; t < MT_COUNT && ok; t++)
        for (int a = 0; a < 2 && ok; a++)
            ok = cs_engine_list(e, mt_name[t], a == 1, &lists[t][a]) == CS_OK;
    idmap map = {0};
    if (!ok)
        M_FAIL(m, "cannot list the catalog of %s", B->dir);
    ok = ok && m_build_idmap(m, lists, &map) && m_check_lists(m, B, lists, &map);
    json_t *outbox = NULL;
    if (ok && cs_engine_outbox(e, &outbox) == CS_OK && json_array_size(outbox) != B->outbox)
        ok = M_FAIL(m, "outbox holds %zu, want %zu (R8)", json_array_size(outbox), B->outbox);
    json_decref(outbox);
    free(map.p);
    for (int t = 0; t < MT_COUNT; t++)
        for (int a = 0; a < 2; a++)
            json_decref(lists[t][a]);
    return ok;
}

/* After every step: the branch's projection state, then its catalog. When the model expects
 * no change, the items database must be byte-identical (R5: nothing between sync points). */
static bool m_check_branch(model *m, m_branch *B)
{
    cs_branch_state st;
    uint64_t head = 0, d = 0;
    if (cs_branch_state_get(B->b, &st) != CS_OK || log_head(cs_engine_log(m->h.e), &head) ||
        items_digest(B->b, &d) != CS_OK)
        return M_FAIL(m, "cannot read branch %s", B->dir);
    if (st.cursor != head || st.unlinked != B->unlinked || st.linked != m_linked(B))
        return M_FAIL(m, "branch state: cursor %llu/%llu linked %d unlinked %d",
                      (unsigned long long)st.cursor, (unsigned long long)head, st.linked,
                      st.unlinked);
    if (m_linked(B) && (st.sync_on != B->sw || st.continuous != m->continuous))
        return M_FAIL(m, "branch state: switch %d continuous %d, want %d %d", st.sync_on,
                      st.continuous, B->sw, m->continuous);
    if (!B->changed) {
        if (d != B->items_bytes)
            return M_FAIL(m, "branch %s changed its catalog outside a sync point (R5, R6)", B->dir);
        return true;
    }
    m->stats.full_checks++;
    if (!m_check_catalog(m, B))
        return false;
    B->items_bytes = d;
    B->changed = false;
    return true;
}

/* ---- the model's operations -------------------------------------------------------------- */

/* Indices of live head items of type t, into out (size M_ITEMS_MAX); their count. */
static size_t m_live(const model *m, int t, size_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nitems; i++)
        if (m->items[i].t == t && !m->items[i].archived)
            out[n++] = i;
    return n;
}

static bool m_head_write(model *m, int t, long i, json_t *fields)
{
    cs_write_result res;
    uint64_t id = i >= 0 ? m->items[i].id : 0;
    if (!put(m->h.e, mt_name[t], id, json_incref(fields), &res)) {
        json_decref(fields);
        return M_FAIL(m, "head-office put refused");
    }
    if (i < 0) {
        if (m->nitems == M_ITEMS_MAX || res.version != 1) {
            json_decref(fields);
            return M_FAIL(m, "model full or new item at version %llu",
                          (unsigned long long)res.version);
        }
        i = (long)m->nitems++;
        m->items[i] = (m_head_item){.t = t, .id = res.id};
        if (i > 0 && m->items[i - 1].id >= res.id)
            return M_FAIL(m, "head ids do not grow");
    } else if (res.version != m->items[i].version + 1) {
        json_decref(fields);
        return M_FAIL(m, "head version %llu after %llu", (unsigned long long)res.version,
                      (unsigned long long)m->items[i].version);
    }
    json_decref(m->items[i].fields);
    m->items[i].fields = fields;
    m->items[i].version = res.version;
    if (t == MT_SPECIES)
        m_shared_event(m, (size_t)i);
    else
        m_catalog_event(m, t);
    return true;
}

static bool m_head_delete(model *m, size_t i)
{
    m_head_item *it = &m->items[i];
    cs_write_result res;
    cs_err err = cs_engine_del(m->h.e, mt_name[it->t], it->id, 0, &res);
    if (err != CS_OK || res.version != it->version + 1)
        return M_FAIL(m, "head-office delete: %s", cs_err_name(err));
    it->version = res.version;
    it->archived = true;
    if (it->t == MT_SPECIES)
        m_shared_event(m, i);
    else
        m_catalog_event(m, it->t);
    return true;
}

/* Fields of a new or updated head item of type t, with live references; NULL when the
 * references it needs do not exist yet. */
static json_t *m_head_fields(model *m, int t, size_t *live)
{
    unsigned n = ++m->names;
    if (t == MT_CAT)
        return cat_fields(&m->r, n);
    if (t == MT_SPECIES)
        return species_fields(n);
    if (t == MT_SVC) {
        size_t k = m_live(m, MT_CAT, live);
        return k ? svc_fields(&m->r, n, m->items[live[cs_test_rng_below(&m->r, (unsigned)k)]].id)
                 : NULL;
    }
    size_t k = m_live(m, MT_SVC, live);
    if (k < 2)
        return NULL;
    uint64_t ids[M_REFS_MAX];
    size_t want =
        2 + cs_test_rng_below(&m->r, k - 1 < M_REFS_MAX - 1 ? (unsigned)k - 1 : M_REFS_MAX - 1);
    for (size_t j = 0; j < want; j++) { /* a partial shuffle: distinct services */
        size_t pick = j + cs_test_rng_below(&m->r, (unsigned)(k - j));
        size_t tmp = live[j];
        live[j] = live[pick];
        live[pick] = tmp;
        ids[j] = m->items[live[j]].id;
    }
    return combo_fields(&m->r, n, ids, want);
}

/* op: 0 create, 1 update, 2 delete of type t at the head office. */
static bool m_head_item_op(model *m, int t, int op, size_t *live)
{
    size_t k = m_live(m, t, live);
    if (op > 0 && k > 0) {
        size_t i = live[cs_test_rng_below(&m->r, (unsigned)k)];
        if (op == 2)
            return m_head_delete(m, i);
        json_t *f = m_head_fields(m, t, live);
        return f ? m_head_write(m, t, (long)i, f) : true;
    }
    json_t *f = m_head_fields(m, t, live);
    return f ? m_head_write(m, t, -1, f) : true;
}

static bool m_add_branch(model *m, int k)
{
    m_branch *B = &m->br[k];
    char name[32];
    snprintf(name, sizeof(name), "Branch %d", k);
    B->dir = cs_test_tmpdir("proj-model-b");
    if (!B->dir || cs_engine_shop_add(m->h.e, name, "branch-password", &B->shop) != CS_OK ||
        cs_branch_open(B->dir, &nosync_opts, &B->b) != CS_OK ||
        cs_branch_bind(B->b, B->shop) != CS_OK)
        return M_FAIL(m, "cannot add branch %d", k);
    B->added = true;
    B->sw = true;
    B->changed = true;
    /* The branch replays the log from its start: every shared record arrives (R8). */
    for (size_t i = 0; i < m->nitems; i++)
        if (m->items[i].t == MT_SPECIES)
            B->shared[i] = (m_shared){true, m->items[i].version, m->items[i].archived,
                                      json_incref(m->items[i].fields)};
    m_sync_point(m, B); /* R5a: linking is a sync point for the new branch */
    return true;
}

static bool m_unlink(model *m, m_branch *B)
{
    if (cs_engine_shop_unlink(m->h.e, B->shop) != CS_OK)
        return M_FAIL(m, "unlink refused: %s", cs_engine_errmsg(m->h.e));
    B->unlinked = true;
    B->changed = true;
    for (size_t i = 0; i < m->nitems; i++)
        B->copies[i].detached = B->copies[i].exists; /* R13: nothing is lost */
    return true;
}

/* Live ids of a type on B, read from B (a choice of input, not a check). */
static size_t branch_live_ids(m_branch *B, int t, uint64_t *out, size_t max)
{
    json_t *l = NULL;
    size_t n = 0;
    if (cs_engine_list(cs_branch_engine(B->b), mt_name[t], false, &l) == CS_OK)
        for (size_t i = 0; i < json_array_size(l) && n < max; i++)
            out[n++] = jid(json_array_get(l, i), "id");
    json_decref(l);
    return n;
}

/* R1: writing or deleting a live copy on B is refused and changes nothing. */
static bool m_local_copy_refused(model *m, m_branch *B, int t)
{
    json_t *l = NULL;
    bool ok = cs_engine_list(cs_branch_engine(B->b), mt_name[t], false, &l) == CS_OK;
    for (size_t i = 0; ok && i < json_array_size(l); i++) {
        const json_t *item = json_array_get(l, i);
        if (json_is_null(json_object_get(item, "origin")))
            continue;
        json_t *f = fields_of(item);
        cs_err e1 = cs_engine_put(cs_branch_engine(B->b), mt_name[t], jid(item, "id"), f, 0, 0);
        cs_err e2 = cs_engine_del(cs_branch_engine(B->b), mt_name[t], jid(item, "id"), 0, 0);
        json_decref(f);
        m->stats.refusals++;
        if (e1 != CS_READ_ONLY_COPY || e2 != CS_READ_ONLY_COPY)
            ok = M_FAIL(m, "a copy write gave %s, a delete %s (R1)", cs_err_name(e1),
                        cs_err_name(e2));
        break;
    }
    json_decref(l);
    return ok;
}

static bool m_local_record(model *m, m_branch *B, int t, long j, json_t *fields)
{
    cs_write_result res;
    uint64_t id = j >= 0 ? B->locals[j].id : 0;
    if (!put(cs_branch_engine(B->b), mt_name[t], id, json_incref(fields), &res)) {
        json_decref(fields);
        return M_FAIL(m, "a branch-local write was refused (R3)");
    }
    if (j < 0) {
        if (B->nlocals == M_LOCALS_MAX) {
            json_decref(fields);
            return M_FAIL(m, "model: too many local items");
        }
        j = (long)B->nlocals++;
        B->locals[j] = (m_local){.t = t, .id = res.id};
        if (t == MT_SPECIES && !B->unlinked)
            B->outbox++; /* R8: on its way to the head office */
    }
    json_decref(B->locals[j].fields);
    B->locals[j].fields = fields;
    B->locals[j].version = res.version;
    B->changed = true;
    return true;
}

/* Fields for a branch-local item of type t, referencing live items on B; NULL when B has
 * none to reference. */
static json_t *m_local_fields(model *m, m_branch *B, int t, unsigned n)
{
    uint64_t ids[M_ITEMS_MAX + M_LOCALS_MAX];
    const size_t max = sizeof(ids) / sizeof(ids[0]);
    if (t == MT_CAT)
        return cat_fields(&m->r, n);
    if (t == MT_SVC) {
        size_t k = branch_live_ids(B, MT_CAT, ids, max);
        return k ? svc_fields(&m->r, n, ids[cs_test_rng_below(&m->r, (unsigned)k)]) : NULL;
    }
    size_t k = branch_live_ids(B, MT_SVC, ids, max);
    if (k < 2)
        return NULL;
    size_t a = cs_test_rng_below(&m->r, (unsigned)k);
    size_t b = (a + 1 + cs_test_rng_below(&m->r, (unsigned)k - 1)) % k;
    uint64_t two[2] = {ids[a], ids[b]};
    return combo_fields(&m->r, n, two, 2);
}

/* Branch-local writes: local items of synced types (R3), shared records (R8), refusals (R1). */
static bool m_local_op(model *m, m_branch *B)
{
    unsigned op = cs_test_rng_below(&m->r, 6), n = ++m->names;
    int t = (int)cs_test_rng_below(&m->r, MT_CATALOG);
    if (op == 0)
        return B->unlinked ? true : m_local_copy_refused(m, B, t);
    if (op == 1)
        return m_local_record(m, B, MT_SPECIES, -1, species_fields(n));
    long j = -1; /* op 4, 5: update or delete a live local item of a catalog type */
    if (op >= 4 && B->nlocals > 0) {
        size_t x = cs_test_rng_below(&m->r, (unsigned)B->nlocals);
        if (!B->locals[x].archived && B->locals[x].t != MT_SPECIES)
            j = (long)x;
    }
    if (j >= 0 && op == 5) {
        m_local *l = &B->locals[j];
        cs_write_result res;
        if (cs_engine_del(cs_branch_engine(B->b), mt_name[l->t], l->id, 0, &res) != CS_OK)
            return M_FAIL(m, "a branch-local delete was refused (R3)");
        l->version = res.version;
        l->archived = true;
        B->changed = true;
        return true;
    }
    if (j >= 0)
        t = B->locals[j].t;
    json_t *f = m_local_fields(m, B, t, n);
    return f ? m_local_record(m, B, t, j, f) : true;
}

static m_branch *m_pick_linked(model *m)
{
    m_branch *pool[M_BRANCHES];
    unsigned n = 0;
    for (int k = 0; k < M_BRANCHES; k++)
        if (m_linked(&m->br[k]))
            pool[n++] = &m->br[k];
    return n ? pool[cs_test_rng_below(&m->r, n)] : NULL;
}

static m_branch *m_pick_added(model *m)
{
    m_branch *pool[M_BRANCHES];
    unsigned n = 0;
    for (int k = 0; k < M_BRANCHES; k++)
        if (m->br[k].added)
            pool[n++] = &m->br[k];
    return n ? pool[cs_test_rng_below(&m->r, n)] : NULL;
}

static bool m_sync_op(model *m, bool all)
{
    m_branch *B = all ? NULL : m_pick_linked(m);
    if (!all && !B)
        return true;
    if (cs_engine_sync(m->h.e, B ? B->shop : 0, NULL) != CS_OK)
        return M_FAIL(m, "sync refused: %s", cs_engine_errmsg(m->h.e));
    for (int k = 0; k < M_BRANCHES; k++) {
        m_branch *X = &m->br[k];
        if (m_linked(X) && X->sw && (all || X == B)) /* R5b, R5c; R6 */
            m_sync_point(m, X);
    }
    return true;
}

/* A sync point for every linked branch whose switch is on (R5b, R6). */
static void m_sync_all(model *m)
{
    for (int k = 0; k < M_BRANCHES; k++)
        if (m_linked(&m->br[k]) && m->br[k].sw)
            m_sync_point(m, &m->br[k]);
}

static bool m_switch_op(model *m)
{
    m_branch *B = m_pick_linked(m);
    if (!B)
        return true;
    if (cs_engine_shop_switch(m->h.e, B->shop, !B->sw) != CS_OK)
        return M_FAIL(m, "switch refused: %s", cs_engine_errmsg(m->h.e));
    B->sw = !B->sw; /* R6: no sync point of its own in on-trigger mode ... */
    if (B->sw && m->continuous)
        m_sync_point(m, B); /* ... in continuous mode, one at once (docs/design.md) */
    return true;
}

/* R7: a random synced set; the three modelled types each in it with probability 2/3, and some
 * of the types this test never writes. */
static bool m_types_op(model *m)
{
    unsigned count;
    const cs_type *all = cs_schema_types(&count);
    const char *names[32];
    size_t n = 0;
    for (int t = 0; t < MT_CATALOG; t++)
        if ((m->synced[t] = cs_test_rng_below(&m->r, 3) != 0))
            names[n++] = mt_name[t];
    for (unsigned i = 0; i < count && n < 32; i++)
        if (all[i].cls == CS_CLASS_SYNCED && all[i].code > 3 && cs_test_rng_below(&m->r, 2))
            names[n++] = all[i].name;
    if (cs_engine_network_types(m->h.e, names, n, NULL) != CS_OK)
        return M_FAIL(m, "types refused: %s", cs_engine_errmsg(m->h.e));
    if (m->continuous) /* continuous mode: a sync point at once, put-back types included */
        m_sync_all(m);
    return true; /* on-trigger: not a sync point, put-back types wait for the next one */
}

static bool m_mode_op(model *m)
{
    m->continuous = !m->continuous;
    if (cs_engine_network_mode(m->h.e, m->continuous ? "continuous" : "on-trigger", NULL) != CS_OK)
        return M_FAIL(m, "mode refused: %s", cs_engine_errmsg(m->h.e));
    if (m->continuous) /* R5d: turning it on is itself a sync point, then every catalog event */
        m_sync_all(m);
    return true;
}

enum m_op {
    OP_CAT_NEW,
    OP_CAT_UPD,
    OP_CAT_DEL,
    OP_SVC_NEW,
    OP_SVC_UPD,
    OP_SVC_DEL,
    OP_COMBO_NEW,
    OP_COMBO_UPD,
    OP_COMBO_DEL,
    OP_SP_NEW,
    OP_SP_UPD,
    OP_SP_DEL,
    OP_SYNC_ALL,
    OP_SYNC_ONE,
    OP_SWITCH,
    OP_TYPES,
    OP_MODE,
    OP_LOCAL,
    OP_COUNT
};

static const unsigned op_weight[OP_COUNT] = {8, 5, 3, 10, 8, 4, 6, 4, 3, 3, 2, 1, 5, 5, 4, 3, 2, 9};
static const char *const op_name[OP_COUNT] = {
    "category put",   "category update",   "category delete", "service put",
    "service update", "service delete",    "combo put",       "combo update",
    "combo delete",   "species put",       "species update",  "species delete",
    "sync all",       "sync one branch",   "switch",          "synced types",
    "mode",           "branch-local write"};

static bool m_step(model *m, size_t *scratch)
{
    unsigned total = 0, pick;
    for (int i = 0; i < OP_COUNT; i++)
        total += op_weight[i];
    pick = cs_test_rng_below(&m->r, total);
    int op = 0;
    while (pick >= op_weight[op])
        pick -= op_weight[op++];
    m->op = op_name[op];
    if (op <= OP_SP_DEL) {
        static const int types[4] = {MT_CAT, MT_SVC, MT_COMBO, MT_SPECIES};
        return m_head_item_op(m, types[op / 3], op % 3, scratch);
    }
    switch (op) {
    case OP_SYNC_ALL:
        return m_sync_op(m, true);
    case OP_SYNC_ONE:
        return m_sync_op(m, false);
    case OP_SWITCH:
        return m_switch_op(m);
    case OP_TYPES:
        return m_types_op(m);
    case OP_MODE:
        return m_mode_op(m);
    default: {
        m_branch *B = m_pick_added(m);
        return B ? m_local_op(m, B) : true;
    }
    }
}

/* Feeds every branch the step's events, then checks each against the model. */
static bool m_feed_and_check(model *m)
{
    for (int k = 0; k < M_BRANCHES; k++) {
        m_branch *B = &m->br[k];
        if (!B->added)
            continue;
        if (feed(B->b, m->h.e, 0, NULL) != CS_OK)
            return M_FAIL(m, "branch %d refused the step's segment", k);
        if (!m_check_branch(m, B))
            return false;
    }
    return true;
}

/* Other types: nothing was written, nothing may appear. */
static bool m_check_other_types_empty(model *m, m_branch *B)
{
    unsigned count;
    const cs_type *all = cs_schema_types(&count);
    for (unsigned i = 0; i < count; i++) {
        bool modelled = false;
        for (int t = 0; t < MT_COUNT; t++)
            modelled |= strcmp(all[i].name, mt_name[t]) == 0;
        if (modelled || all[i].cls == CS_CLASS_LOCAL)
            continue;
        for (int a = 0; a < 2; a++) {
            json_t *l = NULL;
            bool empty = cs_engine_list(cs_branch_engine(B->b), all[i].name, a, &l) == CS_OK &&
                         json_array_size(l) == 0;
            json_decref(l);
            if (!empty)
                return M_FAIL(m, "branch %s holds %s items", B->dir, all[i].name);
        }
    }
    return true;
}

static void m_free(model *m)
{
    for (size_t i = 0; i < m->nitems; i++)
        json_decref(m->items[i].fields);
    for (int k = 0; k < M_BRANCHES; k++) {
        m_branch *B = &m->br[k];
        for (size_t i = 0; i < m->nitems; i++) {
            json_decref(B->copies[i].expect);
            json_decref(B->shared[i].fields);
        }
        for (size_t j = 0; j < B->nlocals; j++)
            json_decref(B->locals[j].fields);
        cs_branch_close(B->b);
        if (B->dir)
            cs_test_rmtree(B->dir);
        free(B->dir);
    }
    head_close(&m->h);
}

static bool m_setup(model *m, size_t *scratch)
{
    if (!head_open(&m->h, "proj-model-h"))
        return M_FAIL(m, "cannot open the head office");
    for (int t = 0; t < MT_CATALOG; t++)
        m->synced[t] = true; /* R7: all types by default */
    static const int initial[] = {MT_CAT, MT_CAT, MT_CAT,   MT_SVC,     MT_SVC,
                                  MT_SVC, MT_SVC, MT_COMBO, MT_SPECIES, MT_SPECIES};
    for (size_t i = 0; i < sizeof(initial) / sizeof(initial[0]); i++)
        if (!m_head_item_op(m, initial[i], 0, scratch))
            return false;
    return m_add_branch(m, 0) && m_add_branch(m, 1) && m_feed_and_check(m);
}

static bool model_run(unsigned seed, unsigned steps)
{
    printf("model run: seed %u, %u steps\n", seed, steps);
    fflush(stdout);
    model *m = calloc(1, sizeof(*m));
    size_t *scratch = calloc(M_ITEMS_MAX, sizeof(size_t));
    if (!m || !scratch) {
        free(m);
        free(scratch);
        return false;
    }
    m->seed = seed;
    m->r.s = 0x9e3779b97f4a7c15ull ^ seed;
    m->op = "setup";
    bool ok = m_setup(m, scratch);
    for (m->step = 1; ok && m->step <= steps; m->step++) {
        if (m->step == steps / 4) { /* R5a again, with a grown catalog */
            m->op = "add branch 2";
            ok = m_add_branch(m, 2);
        } else if (m->step == steps * 17 / 20) { /* R13, late in the run */
            m->op = "unlink";
            ok = m_unlink(m, m_pick_linked(m));
        } else {
            ok = m_step(m, scratch);
        }
        ok = ok && m_feed_and_check(m);
        m->stats.continuous_steps += m->continuous;
    }
    size_t archived = 0;
    for (size_t i = 0; i < m->nitems; i++)
        archived += m->items[i].archived;
    printf("  %zu head items (%zu archived), %zu+%zu+%zu local items, %u sync points, %u copy "
           "writes (%u with a raw head id), %u full checks, %u copy writes refused, %u steps "
           "continuous\n",
           m->nitems, archived, m->br[0].nlocals, m->br[1].nlocals, m->br[2].nlocals,
           m->stats.sync_points, m->stats.copy_writes, m->stats.raw_refs, m->stats.full_checks,
           m->stats.refusals, m->stats.continuous_steps);
    for (int k = 0; ok && k < M_BRANCHES; k++)
        ok = m_check_other_types_empty(m, &m->br[k]);
    m_free(m);
    free(m);
    free(scratch);
    return ok;
}

/* ---- determinism and re-import (SPEC 4) -------------------------------------------------- */

/* A head-office log that exercises every kind of event a branch applies: items of the three
 * modelled types and species, puts, updates and deletes, sync for all and for one branch, the
 * switch, synced types, both modes, a second branch and its unlink. `shop` is the branch the
 * tests follow; it is added here. */
static bool build_script(head *h, uint64_t *shop)
{
    cs_test_rng r = {42};
    cs_write_result c[3], s[5], cb, sp, w;
    uint64_t other;
    bool ok = true;
    for (int i = 0; ok && i < 3; i++)
        ok = put(h->e, "service_category", 0, cat_fields(&r, (unsigned)i), &c[i]);
    for (int i = 0; ok && i < 5; i++)
        ok = put(h->e, "service", 0, svc_fields(&r, (unsigned)i, c[i % 3].id), &s[i]);
    uint64_t two[2] = {s[0].id, s[1].id}, three[3] = {s[2].id, s[3].id, s[4].id};
    ok = ok && put(h->e, "combo", 0, combo_fields(&r, 1, two, 2), &cb) &&
         put(h->e, "species", 0, species_fields(1), &sp) &&
         cs_engine_shop_add(h->e, "Downtown", "branch-password", shop) == CS_OK &&
         cs_engine_shop_add(h->e, "Uptown", "branch-password", &other) == CS_OK;
    const char *some[] = {"service", "combo"}, *all[] = {"service_category", "service", "combo"};
    ok = ok && put(h->e, "service", s[0].id, svc_fields(&r, 9, c[1].id), &w) &&
         cs_engine_sync(h->e, 0, NULL) == CS_OK &&
         cs_engine_shop_switch(h->e, *shop, false) == CS_OK &&
         cs_engine_del(h->e, "service_category", c[2].id, 0, &w) == CS_OK &&
         put(h->e, "combo", cb.id, combo_fields(&r, 2, three, 3), &w) &&
         cs_engine_sync(h->e, 0, NULL) == CS_OK && put(h->e, "species", 0, species_fields(2), &w) &&
         cs_engine_shop_switch(h->e, *shop, true) == CS_OK &&
         cs_engine_network_types(h->e, some, 2, NULL) == CS_OK &&
         put(h->e, "service_category", 0, cat_fields(&r, 7), &c[2]) &&
         put(h->e, "service", 0, svc_fields(&r, 8, c[2].id), &w) &&
         cs_engine_sync(h->e, *shop, NULL) == CS_OK &&
         cs_engine_network_types(h->e, all, 3, NULL) == CS_OK &&
         cs_engine_network_mode(h->e, "continuous", NULL) == CS_OK &&
         put(h->e, "service", s[3].id, svc_fields(&r, 10, c[2].id), &w) &&
         cs_engine_del(h->e, "service", s[4].id, 0, &w) == CS_OK &&
         cs_engine_network_mode(h->e, "on-trigger", NULL) == CS_OK &&
         cs_engine_del(h->e, "species", sp.id, 0, &w) == CS_OK &&
         put(h->e, "service_category", c[0].id, cat_fields(&r, 11), &w) &&
         cs_engine_sync(h->e, 0, NULL) == CS_OK && cs_engine_shop_unlink(h->e, other) == CS_OK &&
         cs_engine_sync(h->e, 0, NULL) == CS_OK;
    return ok;
}

static bool digest_of(cs_branch *b, uint64_t *out)
{
    return cs_branch_digest(b, out) == CS_OK;
}

/* SPEC 4: the same log gives the same branch, however it is cut into segments and whether or
 * not the branch is closed and reopened between them. */
static void test_projection_replay_is_deterministic(void)
{
    head h;
    uint64_t shop = 0, d[4] = {0}, head_seq = 0;
    bdir bd[4] = {{0}};
    bool ok = head_open(&h, "proj-det-h") && build_script(&h, &shop);
    for (int i = 0; ok && i < 4; i++)
        ok = bdir_open(&bd[i], "proj-det-b", shop);
    CHECK(ok && log_head(cs_engine_log(h.e), &head_seq) == CS_OK);
    uint64_t applied[4] = {0};
    CHECK_OK(feed(bd[0].b, h.e, 0, &applied[0])); /* one segment */
    CHECK_OK(feed(bd[1].b, h.e, 1, &applied[1])); /* one event per segment */
    cs_test_rng r = {7};
    for (cs_branch_state st = {0}; st.cursor < head_seq;) { /* reopened between segments */
        CHECK_OK(feed(bd[2].b, h.e, 1 + cs_test_rng_below(&r, 5), &applied[2]));
        cs_branch_close(bd[2].b);
        bd[2].b = NULL;
        CHECK_OK(cs_branch_open(bd[2].dir, &nosync_opts, &bd[2].b));
        CHECK_OK(cs_branch_state_get(bd[2].b, &st));
        CHECK(applied[2] == st.cursor);
    }
    char path[512];
    snprintf(path, sizeof(path), "%s/export.cslog", bd[3].dir);
    uint64_t exported = 0;
    CHECK_OK(cs_export_file(cs_engine_log(h.e), 1, path, &exported)); /* through a file */
    CHECK_OK(cs_branch_import_file(bd[3].b, path, &applied[3]));
    for (int i = 0; i < 4; i++) {
        CHECK(applied[i] == head_seq);
        CHECK(digest_of(bd[i].b, &d[i]));
        CHECK(d[i] == d[0]);
    }
    json_t *l = NULL; /* and the branch holds something worth comparing */
    CHECK_OK(cs_engine_list(cs_branch_engine(bd[0].b), "service", false, &l));
    CHECK(json_array_size(l) == 5);
    json_decref(l);
    for (int i = 0; i < 4; i++)
        bdir_close(&bd[i]);
    head_close(&h);
}

/* The first index from `from` on (wrapping) whose flag is set, or -1. */
static int pick_live(const bool *live, int n, unsigned from)
{
    for (int k = 0; k < n; k++)
        if (live[(from + (unsigned)k) % (unsigned)n])
            return (int)((from + (unsigned)k) % (unsigned)n);
    return -1;
}

/* A random head-office history for the batching test: many edits of few items between sync
 * points (so a batch sees an item several times between and across sync points), deletes,
 * sync for all and for the branch, the switch, synced types (a type put back marks its
 * referrers), both modes; with lo > 0 the first lo of every 100 choices are never made (66:
 * no edits; 78: only sync points, the switch, types and modes, with batches that hold nothing
 * but them). Returns the branch's shop through *shop. */
static bool build_random_history(head *h, uint64_t seed, unsigned ops, unsigned lo, uint64_t *shop)
{
    cs_test_rng r = {seed};
    enum { N = 12 };
    cs_write_result cat[N], svc[N], w;
    bool cat_live[N], svc_live[N];
    bool ok = true, on = true, continuous = false;
    for (int i = 0; ok && i < N; i++) {
        ok = put(h->e, "service_category", 0, cat_fields(&r, (unsigned)i), &cat[i]) &&
             put(h->e, "service", 0, svc_fields(&r, (unsigned)i, cat[i].id), &svc[i]);
        cat_live[i] = svc_live[i] = true;
    }
    ok = ok && cs_engine_shop_add(h->e, "Downtown", "branch-password", shop) == CS_OK;
    const char *some[] = {"service", "combo"}, *all[] = {"service_category", "service", "combo"};
    for (unsigned n = 0; ok && n < ops; n++) {
        unsigned op = lo + cs_test_rng_below(&r, 100 - lo);
        int i = pick_live(svc_live, N, cs_test_rng_below(&r, N)),
            j = pick_live(cat_live, N, cs_test_rng_below(&r, N));
        int free_svc = -1;
        for (int k = 0; k < N; k++)
            if (!svc_live[k])
                free_svc = k;
        if (j < 0) { /* every category deleted: a new one */
            ok = put(h->e, "service_category", 0, cat_fields(&r, 100 + n), &cat[0]);
            cat_live[0] = true;
        } else if (op < 45 && i >= 0)
            ok = put(h->e, "service", svc[i].id, svc_fields(&r, 100 + n, cat[j].id), &w);
        else if (op < 60)
            ok = put(h->e, "service_category", cat[j].id, cat_fields(&r, 100 + n), &w);
        else if (op < 66 && i >= 0) {
            int k = pick_live(svc_live, N, cs_test_rng_below(&r, N));
            uint64_t two[2] = {svc[i].id, svc[k].id};
            ok = put(h->e, "combo", 0, combo_fields(&r, n, two, 2), &w);
        } else if (op < 70 && i >= 0) {
            ok = cs_engine_del(h->e, "service", svc[i].id, 0, &w) == CS_OK;
            svc_live[i] = false;
        } else if (op < 72) {
            ok = cs_engine_del(h->e, "service_category", cat[j].id, 0, &w) == CS_OK;
            cat_live[j] = false;
        } else if (op < 78 && free_svc >= 0) { /* a new service in a freed slot */
            ok = put(h->e, "service", 0, svc_fields(&r, 200 + n, cat[j].id), &svc[free_svc]);
            svc_live[free_svc] = ok;
        } else if (op < 86)
            ok = cs_engine_sync(h->e, cs_test_rng_below(&r, 2) ? 0 : *shop, NULL) == CS_OK;
        else if (op < 90) {
            on = !on;
            ok = cs_engine_shop_switch(h->e, *shop, on) == CS_OK;
        } else if (op < 95) {
            bool few = cs_test_rng_below(&r, 2);
            ok = cs_engine_network_types(h->e, few ? some : all, few ? 2 : 3, NULL) == CS_OK;
        } else if (op < 98) {
            continuous = !continuous;
            ok = cs_engine_network_mode(h->e, continuous ? "continuous" : "on-trigger", NULL) ==
                 CS_OK;
        }
    }
    return ok && cs_engine_sync(h->e, 0, NULL) == CS_OK;
}

/* Segments of `per` events from `first`, up to `k` of them, applied in one transaction. */
static cs_err feed_batch(cs_branch *b, cs_log_reader *r, uint64_t first, uint64_t head,
                         uint64_t per, size_t k, uint64_t *next_out)
{
    uint8_t *segs[8] = {0};
    size_t lens[8] = {0}, n = 0;
    cs_err err = CS_OK;
    uint64_t s = first;
    while (err == CS_OK && n < k && n < 8 && s <= head) {
        uint64_t last, last_max = s + per - 1 < head ? s + per - 1 : head;
        err = cs_segment_encode(r, s, last_max, CS_SEGMENT_BYTES_MAX, &segs[n], &lens[n], &last);
        if (err == CS_OK) {
            n++;
            s = last + 1;
        }
    }
    if (err == CS_OK)
        err = cs_branch_apply_segments(b, (const uint8_t *const *)segs, lens, n, NULL);
    if (err != CS_OK)
        fprintf(stderr, "  batch from %llu: %s: %s\n", (unsigned long long)first, cs_err_name(err),
                cs_branch_errmsg(b));
    for (size_t i = 0; i < n; i++)
        free(segs[i]);
    *next_out = s;
    return err;
}

/* SPEC 4, and the batch of projections/batch.c: a transaction applies many events at once and
 * writes each item's mirror entry and copy once, yet the branch must be the same, byte for
 * byte, as one transaction per event, over random histories and random cuts. */
static void test_projection_batches_equal_event_by_event(void)
{
    for (uint64_t seed = 1; seed <= 4; seed++) {
        head h;
        uint64_t shop = 0, head_seq = 0, d[3] = {0};
        bdir bd[3] = {{0}};
        bool ok = head_open(&h, "proj-batch-h") &&
                  build_random_history(&h, seed, 1500, seed == 4 ? 78 : 0, &shop);
        for (int i = 0; ok && i < 3; i++)
            ok = bdir_open(&bd[i], "proj-batch-b", shop);
        CHECK(ok && log_head(cs_engine_log(h.e), &head_seq) == CS_OK);
        CHECK_OK(feed(bd[0].b, h.e, 1, NULL)); /* event by event */
        CHECK_OK(feed(bd[1].b, h.e, 0, NULL)); /* as few segments as fit */
        cs_log_reader *r = NULL;
        CHECK_OK(cs_log_reader_open(cs_engine_log(h.e), &r));
        cs_test_rng cut = {seed * 977};
        for (uint64_t s = 1; s <= head_seq;) /* random segments, 1 to 8 per transaction */
            CHECK_OK(feed_batch(bd[2].b, r, s, head_seq, 1 + cs_test_rng_below(&cut, 300),
                                1 + cs_test_rng_below(&cut, 8), &s));
        cs_log_reader_close(r);
        for (int i = 0; i < 3; i++) {
            CHECK(digest_of(bd[i].b, &d[i]));
            CHECK(d[i] == d[0]);
        }
        json_t *live = NULL, *gone = NULL; /* copies exist: the history synced something */
        CHECK_OK(cs_engine_list(cs_branch_engine(bd[0].b), "service", false, &live));
        CHECK_OK(cs_engine_list(cs_branch_engine(bd[0].b), "service", true, &gone));
        CHECK(json_array_size(live) + json_array_size(gone) > 0);
        json_decref(live);
        json_decref(gone);
        for (int i = 0; i < 3; i++)
            bdir_close(&bd[i]);
        head_close(&h);
    }
}

/* A segment with one byte flipped at `pos` is refused and changes nothing. */
static bool flipped_segment_refused(cs_branch *b, const uint8_t *seg, size_t len, size_t pos,
                                    uint64_t digest)
{
    uint8_t *bad = malloc(len);
    if (!bad)
        return false;
    memcpy(bad, seg, len);
    bad[pos] ^= 0x20;
    uint64_t applied = 99, d = 0;
    cs_err err = cs_branch_apply_segment(b, bad, len, &applied);
    free(bad);
    /* A flipped version or flags field (bytes 4-7) says "a newer format" before the checksum
     * is looked at. */
    bool code_ok = err == CS_CORRUPT || (pos >= 4 && pos < 8 && err == CS_PROTOCOL_MISMATCH);
    if (!code_ok || applied != 99 || !digest_of(b, &d) || d != digest) {
        fprintf(stderr, "  byte %zu flipped: %s, applied %llu\n", pos, cs_err_name(err),
                (unsigned long long)applied);
        return false;
    }
    return true;
}

/* SPEC 4: a re-import applies nothing; a gap, a flipped byte or another log change nothing. */
static void test_projection_reimport_is_idempotent_and_refusals_change_nothing(void)
{
    head h, other;
    uint64_t shop = 0, head_seq = 0, applied = 0, d1 = 0, d2 = 0, exported = 0;
    bdir bd = {0};
    CHECK(head_open(&h, "proj-idem-h") && build_script(&h, &shop));
    CHECK(bdir_open(&bd, "proj-idem-b", shop));
    CHECK_OK(log_head(cs_engine_log(h.e), &head_seq));
    char path[512];
    snprintf(path, sizeof(path), "%s/export.cslog", bd.dir);
    CHECK_OK(cs_export_file(cs_engine_log(h.e), 1, path, &exported));
    CHECK_OK(cs_branch_import_file(bd.b, path, &applied));
    CHECK(exported == head_seq && applied == head_seq && digest_of(bd.b, &d1));
    applied = 99;
    CHECK_OK(cs_branch_import_file(bd.b, path, &applied));
    CHECK(applied == 0 && digest_of(bd.b, &d2) && d2 == d1);

    /* New events at the head office: 5 puts after the cursor. */
    cs_test_rng r = {3};
    for (int i = 0; i < 5; i++)
        CHECK(put(h.e, "service_category", 0, cat_fields(&r, 100u + (unsigned)i), NULL));
    cs_log_reader *rd;
    uint8_t *seg = NULL;
    size_t len = 0;
    uint64_t last = 0;
    CHECK_OK(cs_log_reader_open(cs_engine_log(h.e), &rd));
    cs_err gap =
        cs_segment_encode(rd, head_seq + 2, head_seq + 5, CS_SEGMENT_BYTES_MAX, &seg, &len, &last);
    cs_err err = gap == CS_OK ? cs_branch_apply_segment(bd.b, seg, len, NULL) : gap;
    free(seg);
    seg = NULL;
    cs_err full =
        cs_segment_encode(rd, head_seq - 2, head_seq + 5, CS_SEGMENT_BYTES_MAX, &seg, &len, &last);
    cs_log_reader_close(rd);
    CHECK(gap == CS_OK && err == CS_INVALID_INPUT); /* starts after cursor + 1 */
    CHECK(digest_of(bd.b, &d2) && d2 == d1);
    CHECK(full == CS_OK);
    bool flips_ok = true;
    for (size_t pos = 0; pos < len && flips_ok; pos += pos < 64 ? 1 : 13)
        flips_ok = flipped_segment_refused(bd.b, seg, len, pos, d1);
    if (flips_ok) /* overlapping the cursor: only the 5 new events apply */
        err = cs_branch_apply_segment(bd.b, seg, len, &applied);
    free(seg);
    CHECK(flips_ok);
    CHECK(err == CS_OK && applied == 5);

    /* The same positions from another head office's log: the chain does not continue ours. */
    uint64_t shop2 = 0;
    CHECK(head_open(&other, "proj-idem-o") && build_script(&other, &shop2));
    for (int i = 0; i < 8; i++)
        CHECK(put(other.e, "service_category", 0, cat_fields(&r, 200u + (unsigned)i), NULL));
    CHECK(digest_of(bd.b, &d1));
    CHECK_OK(cs_log_reader_open(cs_engine_log(other.e), &rd));
    err =
        cs_segment_encode(rd, head_seq + 6, head_seq + 8, CS_SEGMENT_BYTES_MAX, &seg, &len, &last);
    cs_log_reader_close(rd);
    CHECK_OK(err);
    err = cs_branch_apply_segment(bd.b, seg, len, &applied);
    free(seg);
    CHECK(err == CS_CORRUPT && digest_of(bd.b, &d2) && d2 == d1);
    head_close(&other);

    /* A file with a flipped byte: refused, nothing applied from the damaged segment. */
    bdir fresh = {0};
    CHECK(bdir_open(&fresh, "proj-idem-f", shop));
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    int c = fseek(f, 100, SEEK_SET) == 0 ? fgetc(f) : EOF;
    bool flipped = c != EOF && fseek(f, 100, SEEK_SET) == 0 && fputc(c ^ 1, f) != EOF;
    CHECK(fclose(f) == 0 && flipped);
    CHECK(digest_of(fresh.b, &d1));
    CHECK(cs_branch_import_file(fresh.b, path, &applied) == CS_CORRUPT);
    CHECK(digest_of(fresh.b, &d2) && d2 == d1);
    bdir_close(&fresh);
    bdir_close(&bd);
    head_close(&h);
}

/* SPEC 4 (a branch applies one log): a segment that overlaps the cursor from another log, whose
 * event at the cursor is not the one this branch applied, is refused whole (corrupt) even though
 * the segment verifies on its own and its later events would chain onto each other. */
static void test_projection_reimport_from_log_diverged_at_cursor_is_refused(void)
{
    head h, other;
    uint64_t shop = 0, shop2 = 0, head_seq = 0, applied = 0, d1 = 0, d2 = 0;
    bdir bd = {0};
    CHECK(head_open(&h, "proj-div-h") && build_script(&h, &shop));
    CHECK(head_open(&other, "proj-div-o") && build_script(&other, &shop2));
    CHECK(bdir_open(&bd, "proj-div-b", shop));
    CHECK_OK(feed(bd.b, h.e, 0, &applied));
    CHECK_OK(log_head(cs_engine_log(h.e), &head_seq));
    CHECK(applied == head_seq && digest_of(bd.b, &d1));
    cs_test_rng r = {5};
    for (int i = 0; i < 3; i++)
        CHECK(put(other.e, "service_category", 0, cat_fields(&r, 300u + (unsigned)i), NULL));
    cs_log_reader *rd;
    uint8_t *seg = NULL;
    size_t len = 0;
    uint64_t last = 0;
    CHECK_OK(cs_log_reader_open(cs_engine_log(other.e), &rd));
    cs_err err =
        cs_segment_encode(rd, head_seq, head_seq + 3, CS_SEGMENT_BYTES_MAX, &seg, &len, &last);
    cs_log_reader_close(rd);
    CHECK_OK(err);
    applied = 99;
    err = cs_branch_apply_segment(bd.b, seg, len, &applied);
    free(seg);
    cs_branch_state st;
    CHECK(err == CS_CORRUPT && applied == 99);
    CHECK_OK(cs_branch_state_get(bd.b, &st));
    CHECK(st.cursor == head_seq && digest_of(bd.b, &d2) && d2 == d1);
    bdir_close(&bd);
    head_close(&other);
    head_close(&h);
}

/* SPEC 7 (branch import), docs/storage.md (an export is segments one after another): a file cut
 * inside a segment header is corrupt, not a clean end of file; the whole segments before the
 * cut stay applied. */
static void test_projection_import_refuses_file_cut_inside_segment_header(void)
{
    head h;
    uint64_t shop = 0, head_seq = 0, applied = 0, exported = 0;
    bdir bd = {0};
    CHECK(head_open(&h, "proj-cut-h") && build_script(&h, &shop));
    CHECK(bdir_open(&bd, "proj-cut-b", shop));
    CHECK_OK(log_head(cs_engine_log(h.e), &head_seq));
    char path[512];
    snprintf(path, sizeof(path), "%s/export.cslog", bd.dir);
    CHECK_OK(cs_export_file(cs_engine_log(h.e), 1, path, &exported));
    CHECK(exported == head_seq);
    FILE *f = fopen(path, "rb");
    uint8_t hdr[CS_SEGMENT_HEADER_BYTES];
    bool read_ok = f && fread(hdr, 1, sizeof(hdr), f) == sizeof(hdr);
    long whole = read_ok && fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (f)
        fclose(f);
    CHECK(read_ok && whole > 0);
    static const size_t cuts[] = {1, 8, 20, CS_SEGMENT_HEADER_BYTES - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        CHECK(truncate(path, whole) == 0);
        f = fopen(path, "ab"); /* the file, then the start of another segment's header */
        bool ok = f && fwrite(hdr, 1, cuts[i], f) == cuts[i];
        CHECK(f && fclose(f) == 0 && ok);
        cs_err err = cs_branch_import_file(bd.b, path, &applied);
        if (err != CS_CORRUPT)
            fprintf(stderr, "  header cut after %zu bytes: %s\n", cuts[i], cs_err_name(err));
        CHECK(err == CS_CORRUPT);
        cs_branch_state st;
        CHECK_OK(cs_branch_state_get(bd.b, &st));
        CHECK(st.cursor == head_seq); /* what came before the cut is applied */
    }
    CHECK(truncate(path, whole) == 0);
    CHECK_OK(cs_branch_import_file(bd.b, path, &applied)); /* the control: the whole file */
    CHECK(applied == 0);
    bdir_close(&bd);
    head_close(&h);
}

/* SPEC 7 (log export --from SEQ): exporting from the head exports exactly the head event; from
 * past the head there is nothing to export (not_found) and no file is written. */
static void test_projection_export_from_head_is_exactly_the_head_event(void)
{
    head h;
    uint64_t shop = 0, head_seq = 0, exported = 0;
    CHECK(head_open(&h, "proj-exph-h") && build_script(&h, &shop));
    CHECK_OK(log_head(cs_engine_log(h.e), &head_seq));
    char path[512];
    snprintf(path, sizeof(path), "%s/head.cslog", h.dir);
    CHECK_OK(cs_export_file(cs_engine_log(h.e), head_seq, path, &exported));
    CHECK(exported == 1);
    FILE *f = fopen(path, "rb");
    uint8_t buf[CS_SEGMENT_BYTES_MAX > 65536 ? 65536 : CS_SEGMENT_BYTES_MAX];
    size_t n = f ? fread(buf, 1, sizeof(buf), f) : 0;
    if (f)
        fclose(f);
    cs_segment_view v;
    CHECK(n > 0 && n < sizeof(buf));
    CHECK_OK(cs_segment_open(buf, n, &v));
    CHECK(v.first == head_seq && v.last == head_seq && v.count == 1);
    char past[520];
    snprintf(past, sizeof(past), "%s.past", path);
    CHECK(cs_export_file(cs_engine_log(h.e), head_seq + 1, past, &exported) == CS_NOT_FOUND);
    CHECK(access(past, F_OK) != 0);
    head_close(&h);
}

/* The copy on b of head item head_id of `type`, archived or not (a new reference), or NULL. */
static json_t *copy_on(cs_branch *b, const char *type, uint64_t head_id)
{
    json_t *found = NULL;
    for (int archived = 0; archived < 2 && !found; archived++) {
        json_t *l = NULL, *o;
        size_t i;
        if (cs_engine_list(cs_branch_engine(b), type, archived, &l) != CS_OK)
            return NULL;
        json_array_foreach(l, i, o)
        {
            if (jid(json_object_get(o, "origin"), "id") == head_id)
                found = json_incref(o);
        }
        json_decref(l);
    }
    return found;
}

/* R6: while a branch's switch is off, a sync for all and a sync naming it are no sync point for
 * it: its last sync point (sync_seq) stays where it was and no copy arrives; once it is switched
 * back on, the next sync is its sync point. */
static void test_r6_sync_while_switched_off_keeps_sync_seq(void)
{
    head h;
    uint64_t shop = 0, seq = 0;
    bdir bd = {0};
    CHECK(head_open(&h, "proj-r6s-h"));
    const char *types[] = {"service_category"};
    CHECK_OK(cs_engine_network_types(h.e, types, 1, NULL));
    CHECK_OK(cs_engine_shop_add(h.e, "Downtown", "branch-password", &shop));
    CHECK(bdir_open(&bd, "proj-r6s-b", shop));
    CHECK_OK(feed(bd.b, h.e, 0, NULL));
    CHECK_OK(cs_engine_shop_switch(h.e, shop, false));
    CHECK_OK(feed(bd.b, h.e, 0, NULL));
    cs_branch_state st0, st;
    CHECK_OK(cs_branch_state_get(bd.b, &st0));
    CHECK(st0.linked && st0.sync_seq > 0);
    cs_test_rng r = {6};
    cs_write_result cat;
    CHECK(put(h.e, "service_category", 0, cat_fields(&r, 1), &cat));
    CHECK_OK(cs_engine_sync(h.e, 0, NULL));
    CHECK_OK(cs_engine_sync(h.e, shop, NULL));
    CHECK_OK(feed(bd.b, h.e, 0, NULL));
    CHECK_OK(cs_branch_state_get(bd.b, &st));
    CHECK(st.cursor > st0.cursor && st.sync_seq == st0.sync_seq);
    json_t *c = copy_on(bd.b, "service_category", cat.id);
    json_decref(c);
    CHECK(c == NULL);
    CHECK_OK(cs_engine_shop_switch(h.e, shop, true));
    CHECK_OK(cs_engine_sync(h.e, shop, &seq));
    CHECK_OK(feed(bd.b, h.e, 0, NULL));
    CHECK_OK(cs_branch_state_get(bd.b, &st));
    CHECK(st.sync_seq == seq);
    c = copy_on(bd.b, "service_category", cat.id);
    json_decref(c);
    CHECK(c != NULL);
    bdir_close(&bd);
    head_close(&h);
}

/* R2 (a copy's origin names the head item and its version): a head update that changes only
 * the version (the same fields put again) reaches the copy at the next sync point: its origin
 * names the new version, and the copy's own version grows by one. */
static void test_r2_version_only_change_moves_copy_origin_version(void)
{
    head h;
    uint64_t shop = 0;
    bdir bd = {0};
    CHECK(head_open(&h, "proj-r2v-h"));
    const char *types[] = {"service_category"};
    CHECK_OK(cs_engine_network_types(h.e, types, 1, NULL));
    CHECK_OK(cs_engine_shop_add(h.e, "Downtown", "branch-password", &shop));
    CHECK(bdir_open(&bd, "proj-r2v-b", shop));
    cs_test_rng r = {8};
    cs_write_result cat, again;
    CHECK(put(h.e, "service_category", 0, cat_fields(&r, 1), &cat));
    CHECK_OK(cs_engine_sync(h.e, 0, NULL));
    CHECK_OK(feed(bd.b, h.e, 0, NULL));
    json_t *c1 = copy_on(bd.b, "service_category", cat.id);
    CHECK(c1 != NULL);
    uint64_t v1 = jid(json_object_get(c1, "origin"), "version"), own1 = jid(c1, "version");
    json_decref(c1);
    CHECK(v1 == cat.version);
    json_t *head_item = NULL;
    CHECK_OK(cs_engine_get(h.e, "service_category", cat.id, &head_item));
    json_t *same = fields_of(head_item);
    json_decref(head_item);
    CHECK(put(h.e, "service_category", cat.id, same, &again));
    CHECK(again.version == cat.version + 1);
    CHECK_OK(cs_engine_sync(h.e, 0, NULL));
    CHECK_OK(feed(bd.b, h.e, 0, NULL));
    json_t *c2 = copy_on(bd.b, "service_category", cat.id);
    CHECK(c2 != NULL);
    uint64_t v2 = jid(json_object_get(c2, "origin"), "version"), own2 = jid(c2, "version");
    json_decref(c2);
    CHECK(v2 == again.version);
    CHECK(own2 == own1 + 1);
    bdir_close(&bd);
    head_close(&h);
}

/* ---- R10 and R1 -------------------------------------------------------------------------- */

/* R10: a single store that joins a network keeps its own items as local items; the head
 * office's catalog arrives as copies beside them. */
static void test_single_store_joining_keeps_its_items_local(void)
{
    head h;
    uint64_t shop = 0, store = 0;
    CHECK(head_open(&h, "proj-r10-h") && build_script(&h, &shop));
    char *dir = cs_test_tmpdir("proj-r10-s");
    CHECK(dir != NULL);
    cs_engine *e;
    cs_test_rng r = {10};
    cs_write_result cat, svc, sp;
    CHECK_OK(cs_engine_open(dir, &nosync_opts, &e));
    bool ok = cs_engine_init(e, "Corner shop", &store) == CS_OK &&
              put(e, "service_category", 0, cat_fields(&r, 1), &cat) &&
              put(e, "service", 0, svc_fields(&r, 2, cat.id), &svc) &&
              put(e, "species", 0, species_fields(3), &sp);
    json_t *before[3] = {NULL, NULL, NULL};
    ok = ok && cs_engine_get(e, "service_category", cat.id, &before[0]) == CS_OK &&
         cs_engine_get(e, "service", svc.id, &before[1]) == CS_OK &&
         cs_engine_get(e, "species", sp.id, &before[2]) == CS_OK;
    cs_engine_close(e); /* LMDB: one open per path per process */
    CHECK(ok);
    cs_branch *b;
    CHECK_OK(cs_branch_open(dir, &nosync_opts, &b));
    CHECK_OK(cs_branch_bind(b, shop));
    CHECK_OK(feed(b, h.e, 0, NULL));
    cs_shop_info self;
    CHECK_OK(cs_engine_self(cs_branch_engine(b), &self));
    CHECK(self.id == shop && self.role == CS_ROLE_BRANCH && strcmp(self.name, "Corner shop") == 0);
    static const char *const types[3] = {"service_category", "service", "species"};
    const uint64_t ids[3] = {cat.id, svc.id, sp.id};
    for (int i = 0; i < 3; i++) { /* unchanged, origin null */
        json_t *now = NULL;
        CHECK_OK(cs_engine_get(cs_branch_engine(b), types[i], ids[i], &now));
        bool same = json_equal(now, before[i]) && json_is_null(json_object_get(now, "origin"));
        json_decref(now);
        json_decref(before[i]);
        CHECK(same);
    }
    json_t *l = NULL; /* the head's 5 live services arrive as copies beside the local one */
    CHECK_OK(cs_engine_list(cs_branch_engine(b), "service", false, &l));
    size_t copies = 0;
    for (size_t i = 0; i < json_array_size(l); i++)
        copies += jid(json_object_get(json_array_get(l, i), "origin"), "shop") == h.shop;
    CHECK(json_array_size(l) == 6 && copies == 5);
    json_decref(l);
    cs_branch_close(b);
    cs_test_rmtree(dir);
    free(dir);
    head_close(&h);
}

/* Writes the branch's stored projection state (`branch` "state") behind the projection's back,
 * through the branch's own environment (one open per path per process). */
static bool branch_state_replace(cs_branch *b, const char *json)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    if (mdb_txn_begin(cs_log_env(cs_engine_log(cs_branch_engine(b))), NULL, 0, &txn))
        return false;
    MDB_val k = {5, "state"}, v = {strlen(json), (void *)json};
    if (mdb_dbi_open(txn, "branch", 0, &dbi) || mdb_put(txn, dbi, &k, &v, 0)) {
        mdb_txn_abort(txn);
        return false;
    }
    return mdb_txn_commit(txn) == 0;
}

/* projection_int.h: the apply path asserts the branch state's invariants, so a stored state
 * that breaks one (damage: the code never writes it) is reported corrupt by every reader, and
 * a segment is refused rather than applied to it. */
static void test_branch_state_breaking_an_invariant_is_corrupt(void)
{
    head h;
    bdir d;
    uint64_t shop = 0;
    CHECK(head_open(&h, "proj-inv-h") && build_script(&h, &shop));
    CHECK(bdir_open(&d, "proj-inv-b", shop));
    CHECK_OK(feed(d.b, h.e, 0, NULL));
    cs_branch_state st;
    CHECK_OK(cs_branch_state_get(d.b, &st));
    CHECK(st.linked && st.cursor > 0 && st.sync_seq > 0);
    char json[512];
    snprintf(json, sizeof(json),
             "{\"continuous\":false,\"cursor\":%llu,\"head\":%llu,\"linked\":true,"
             "\"shop\":%llu,\"switch\":true,\"sync_seq\":%llu,\"types\":[],"
             "\"unlinked\":true}",
             (unsigned long long)st.cursor, (unsigned long long)st.head,
             (unsigned long long)st.shop, (unsigned long long)st.sync_seq);
    CHECK(branch_state_replace(d.b, json));
    CHECK(cs_branch_state_get(d.b, &st) == CS_CORRUPT);
    CHECK(strstr(cs_branch_errmsg(d.b), "inconsistent"));
    cs_log_reader *r;
    uint8_t *seg = NULL;
    size_t len;
    uint64_t last;
    CHECK_OK(cs_log_reader_open(cs_engine_log(h.e), &r));
    cs_err err = cs_segment_encode(r, 1, UINT64_MAX, CS_SEGMENT_BYTES_MAX, &seg, &len, &last);
    cs_log_reader_close(r);
    CHECK_OK(err);
    err = cs_branch_apply_segment(d.b, seg, len, NULL);
    free(seg);
    CHECK(err == CS_CORRUPT);
    bdir_close(&d);
    head_close(&h);
}

/* The state a refusal must leave alone: the branch's projection digest and its own log. */
static bool branch_snapshot(cs_branch *b, uint64_t snap[2])
{
    return cs_branch_digest(b, &snap[0]) == CS_OK &&
           log_head(cs_engine_log(cs_branch_engine(b)), &snap[1]) == CS_OK;
}

/* R1, R11: on a branch, copies are read-only, advanced settings, network and shop commands
 * belong to the head office; each refusal changes nothing. */
static void test_branch_refuses_copy_writes_and_head_office_commands(void)
{
    head h;
    uint64_t shop = 0, before[2], after[2];
    bdir bd = {0};
    CHECK(head_open(&h, "proj-r1-h") && build_script(&h, &shop));
    CHECK(bdir_open(&bd, "proj-r1-b", shop));
    CHECK_OK(feed(bd.b, h.e, 0, NULL));
    cs_engine *e = cs_branch_engine(bd.b);
    json_t *l = NULL;
    CHECK_OK(cs_engine_list(e, "service", false, &l));
    const json_t *copy = json_array_get(l, 0);
    CHECK(copy && json_is_object(json_object_get(copy, "origin")));
    uint64_t id = jid(copy, "id");
    json_t *f = fields_of(copy);
    CHECK(branch_snapshot(bd.b, before));
    cs_err put_copy = cs_engine_put(e, "service", id, f, 0, NULL);
    cs_err del_copy = cs_engine_del(e, "service", id, 0, NULL);
    json_decref(f);
    json_decref(l);
    CHECK(put_copy == CS_READ_ONLY_COPY);
    CHECK(del_copy == CS_READ_ONLY_COPY);
    json_t *setting = json_pack("{s:s,s:s}", "key", "theme", "value", "dark");
    cs_err adv = cs_engine_put(e, "advanced_setting", 0, setting, 0, NULL);
    json_decref(setting);
    CHECK(adv == CS_FORBIDDEN);
    const char *types[] = {"service"};
    uint64_t new_shop = 0;
    CHECK(cs_engine_network_create(e, "Another") == CS_FORBIDDEN);
    CHECK(cs_engine_network_types(e, types, 1, NULL) == CS_FORBIDDEN);
    CHECK(cs_engine_network_mode(e, "continuous", NULL) == CS_FORBIDDEN);
    CHECK(cs_engine_network_whatsapp(e, "individual", NULL, NULL) == CS_FORBIDDEN);
    CHECK(cs_engine_shop_add(e, "Rogue", "branch-password", &new_shop) == CS_FORBIDDEN);
    CHECK(cs_engine_shop_switch(e, shop, false) == CS_FORBIDDEN);
    CHECK(cs_engine_shop_unlink(e, shop) == CS_FORBIDDEN);
    CHECK(cs_engine_sync(e, 0, NULL) == CS_FORBIDDEN);
    CHECK(cs_engine_shop_password(e, shop, "a-new-password") == CS_FORBIDDEN);
    CHECK(cs_engine_shop_password(e, h.shop, "a-new-password") == CS_FORBIDDEN);
    CHECK(branch_snapshot(bd.b, after));
    CHECK(after[0] == before[0] && after[1] == before[1]);
    bdir_close(&bd);
    head_close(&h);
}

/* R1 holds for an archived copy too (its delete at the head office does not make it the
 * branch's), and R13's detached_from survives the former copy being edited afterwards. */
static void test_archived_copy_is_read_only_and_detached_link_survives_edits(void)
{
    head h;
    uint64_t shop = 0;
    bdir bd = {0};
    cs_write_result cat, svc;
    CHECK(head_open(&h, "proj-arch-h"));
    CHECK(put(h.e, "service_category", 0, json_pack("{s:s}", "name", "Bath"), &cat));
    CHECK(put(h.e, "service", 0,
              json_pack("{s:s,s:I,s:[{s:s,s:i}]}", "name", "Wash", "category", (json_int_t)cat.id,
                        "price_table", "tier", "any", "price_cents", 100),
              &svc));
    CHECK_OK(cs_engine_shop_add(h.e, "B", "branch-password", &shop));
    CHECK_OK(cs_engine_del(h.e, "service", svc.id, 0, NULL));
    CHECK_OK(cs_engine_sync(h.e, 0, NULL));
    CHECK(bdir_open(&bd, "proj-arch-b", shop));
    CHECK_OK(feed(bd.b, h.e, 0, NULL));
    cs_engine *e = cs_branch_engine(bd.b);
    json_t *l = NULL;
    CHECK_OK(cs_engine_list(e, "service", true, &l));
    CHECK(json_array_size(l) == 1);
    uint64_t copy = jid(json_array_get(l, 0), "id");
    json_t *f = fields_of(json_array_get(l, 0));
    cs_err put_err = cs_engine_put(e, "service", copy, f, 0, NULL);
    cs_err del_err = cs_engine_del(e, "service", copy, 0, NULL);
    json_decref(f);
    json_decref(l);
    CHECK(put_err == CS_READ_ONLY_COPY);
    CHECK(del_err == CS_READ_ONLY_COPY);
    CHECK_OK(cs_engine_shop_unlink(h.e, shop));
    CHECK_OK(feed(bd.b, h.e, 0, NULL));
    CHECK_OK(cs_engine_list(e, "service_category", false, &l));
    CHECK(json_array_size(l) == 1);
    uint64_t former = jid(json_array_get(l, 0), "id");
    json_decref(l);
    json_t *item = NULL;
    CHECK(put(e, "service_category", former, json_pack("{s:s}", "name", "Bath (ours now)"), NULL));
    CHECK_OK(cs_engine_get(e, "service_category", former, &item));
    const json_t *d = json_object_get(item, "detached_from");
    bool kept = json_is_object(d) && jid(d, "id") == cat.id &&
                json_is_null(json_object_get(item, "origin"));
    json_decref(item);
    CHECK(kept);
    bdir_close(&bd);
    head_close(&h);
}

#define MODEL_STEPS 1500

static void test_projection_matches_model_seed_1(void)
{
    CHECK(model_run(1, MODEL_STEPS));
}

static void test_projection_matches_model_seed_2(void)
{
    CHECK(model_run(2, MODEL_STEPS));
}

static void test_projection_matches_model_seed_3(void)
{
    CHECK(model_run(3, MODEL_STEPS));
}

int main(void)
{
    RUN(test_projection_replay_is_deterministic);
    RUN(test_projection_batches_equal_event_by_event);
    RUN(test_archived_copy_is_read_only_and_detached_link_survives_edits);
    RUN(test_projection_reimport_is_idempotent_and_refusals_change_nothing);
    RUN(test_projection_reimport_from_log_diverged_at_cursor_is_refused);
    RUN(test_projection_import_refuses_file_cut_inside_segment_header);
    RUN(test_projection_export_from_head_is_exactly_the_head_event);
    RUN(test_r6_sync_while_switched_off_keeps_sync_seq);
    RUN(test_r2_version_only_change_moves_copy_origin_version);
    RUN(test_single_store_joining_keeps_its_items_local);
    RUN(test_branch_refuses_copy_writes_and_head_office_commands);
    RUN(test_branch_state_breaking_an_invariant_is_corrupt);
    RUN(test_projection_matches_model_seed_1);
    RUN(test_projection_matches_model_seed_2);
    RUN(test_projection_matches_model_seed_3);
    return cs_test_finish();
}
