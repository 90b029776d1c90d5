/*
 * preview.c: the sync preview (issue 14; docs/design.md, "Sync preview"): what the next sync
 * point would do to each branch (copies created, updated field by field, archived; branches and
 * types it would skip, and why), computed at the head office without writing anything there.
 *
 * How, and why this way: the head office holds no branch's catalog, only the log. So each
 * branch is rebuilt by the audit's replay (cs_audit_branch_at: a scratch branch fed the log
 * through the projection itself), and then the sync point that has not been made yet is run on
 * that scratch branch by the very function that applies a `sync` event of the log
 * (cs__sync_event, syncpoint.c), inside a write transaction that is always aborted. The
 * preview is the difference between the scratch's copies before and after that sync point, read
 * in the same transaction. No rule of R2/R4/R5/R6/R7 is written a second time here: what is
 * created, updated, archived or left waiting is whatever the projection did.
 *
 * What is compared: only the entries of the branch's dirty set (mirror entries changed since a
 * sync point last covered it), because a sync point touches nothing else (syncpoint.c). An
 * entry still dirty after the sync point is of a type outside the synced set (R7); an entry
 * whose copy record is byte-identical before and after is unchanged (a reference refresh that
 * found nothing to refresh, syncpoint.c invariant 3).
 *
 * Items are shown under head-office ids with references translated back to head-office ids
 * (the audit's convention, cs__audit_unmap_fields): a branch's own copy ids depend on its local
 * writes and mean nothing at the head office. A reference that changes only from the head-office
 * id of an item the branch had no copy of to the branch's copy of it (a type put back, R7) looks
 * the same under head-office ids: it is listed as op "relinked".
 *
 * Nothing is written: the audited directory is only read (the audit may be CS_AUDIT_READ_ONLY),
 * the scratch directories are temporary and their transaction is aborted.
 */
#include "projections/audit_int.h"

#include <stdlib.h>
#include <string.h>

/* One dirty entry of the scratch branch, as it was before the previewed sync point. */
typedef struct pv_entry {
    uint8_t key[9]; /* type code, head id BE */
    uint8_t *rec;   /* the copy's record before (owned), NULL when there was no copy */
    size_t rec_len;
    json_t *item; /* the copy before as an item object, head-office ids (owned) or NULL */
    json_t *raw;  /* its fields as stored, branch ids (owned) or NULL */
} pv_entry;

typedef struct pv_ctx {
    cs_audit *a;
    cs_branch *b;
    uint64_t shop;
    pv_entry *v;
    size_t n, cap;
    MDB_txn *m;  /* the scratch's write transaction, while preview_fn runs */
    json_t *out; /* the branch's preview object (owned until handed over) */
    bool done;   /* the transaction did its work: its abort is the plan, not a failure */
    msgpack_zone zone;
} pv_ctx;

/* Aborts the scratch's transaction after a complete preview (checked with pv_ctx.done). */
#define PV_ABORT CS_INVALID_INPUT

static void pv_clear(pv_ctx *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].rec);
        json_decref(c->v[i].item);
        json_decref(c->v[i].raw);
    }
    c->n = 0;
    json_decref(c->out);
    c->out = NULL;
    c->done = false;
}

/* The copy of entry key (type code + head id) in txn: *rec borrowed from txn, NULL when the
 * branch has none. */
static cs_err copy_get(cs_branch *b, MDB_txn *m, const uint8_t key[9], MDB_val *rec, bool *has)
{
    MDB_val k = {9, (void *)key}, v;
    *has = false;
    int rc = mdb_get(m, b->origin, &k, &v);
    if (rc == MDB_NOTFOUND)
        return CS_OK;
    if (rc || v.mv_size != 8)
        return CS_CORRUPT;
    uint8_t kb[9];
    cs__key9(kb, key[0], cs_be64_get(v.mv_data));
    MDB_val ck = {9, kb};
    rc = mdb_get(m, b->items, &ck, rec);
    if (rc == MDB_NOTFOUND)
        return CS_OK;
    if (rc)
        return CS_IO;
    *has = true;
    return CS_OK;
}

/* A copy record as an item object under head-office ids (*item) and its fields as stored
 * (*raw), both new references. */
static cs_err copy_json(pv_ctx *c, MDB_txn *m, const uint8_t key[9], const MDB_val *rec,
                        json_t **item, json_t **raw)
{
    const cs_type *t = cs_schema_by_code(key[0]);
    if (!t)
        return CS_CORRUPT;
    cs_item it;
    msgpack_zone_clear(&c->zone);
    if (cs_item_parse(rec, &c->zone, &it) != CS_OK)
        return CS_CORRUPT;
    cs_err err = cs_schema_to_json(t, &it.fields, raw);
    if (err != CS_OK)
        return err;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    err = cs__audit_unmap_fields(m, c->b->items, t, &it.fields, &sb);
    size_t off = 0;
    if (err == CS_OK &&
        msgpack_unpack(sb.data, sb.size, &off, &c->zone, &it.fields) != MSGPACK_UNPACK_SUCCESS)
        err = CS_NO_MEMORY;
    if (err == CS_OK)
        err = cs_item_json(t, cs_be64_get(key + 1), &it, item);
    msgpack_sbuffer_destroy(&sb);
    if (err != CS_OK) {
        json_decref(*raw);
        *raw = NULL;
    }
    return err;
}

/* Before the sync point: one dirty entry, with its copy as it stands. */
static cs_err collect_one(const uint8_t key[9], void *ctx)
{
    pv_ctx *c = ctx;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        pv_entry *nv = realloc(c->v, cap * sizeof(*nv));
        if (!nv)
            return CS_NO_MEMORY;
        c->v = nv, c->cap = cap;
    }
    pv_entry *e = &c->v[c->n++];
    memset(e, 0, sizeof(*e));
    memcpy(e->key, key, 9);
    MDB_val rec;
    bool has;
    cs_err err = copy_get(c->b, c->m, e->key, &rec, &has);
    if (err != CS_OK || !has)
        return err;
    /* Copied: the sync point's writes in this transaction may reuse the page. */
    if (!(e->rec = malloc(rec.mv_size ? rec.mv_size : 1)))
        return CS_NO_MEMORY;
    memcpy(e->rec, rec.mv_data, rec.mv_size);
    e->rec_len = rec.mv_size;
    return copy_json(c, c->m, e->key, &rec, &e->item, &e->raw);
}

static json_t *ju64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *old_new(json_t *o, json_t *n)
{
    return json_pack("{s:o,s:o}", "old", o ? o : json_null(), "new", n ? n : json_null());
}

static json_t *version_of(const json_t *item, const char *what)
{
    if (!item)
        return NULL;
    if (strcmp(what, "version") == 0)
        return json_incref(json_object_get(item, "version"));
    json_t *o = json_object_get(item, "origin");
    return json_is_object(o) ? json_incref(json_object_get(o, "version")) : NULL;
}

/* The field changes between the copy before and after (schema order): cs__audit_diff under
 * head-office ids, then the fields whose stored references alone changed ("relinked"). */
static cs_err field_changes(const cs_type *t, const pv_entry *e, const json_t *item,
                            const json_t *raw, json_t *changes)
{
    cs_err err = cs__audit_diff(t, e->item, item, changes);
    for (unsigned i = 0; i < t->nfields && err == CS_OK; i++) {
        const char *name = t->fields[i].name;
        const json_t *o = json_object_get(e->raw, name), *n = json_object_get(raw, name);
        bool diff = (o == NULL) != (n == NULL) || (o && !json_equal(o, n));
        const json_t *ho = json_object_get(e->item, name), *hn = json_object_get(item, name);
        bool shown = (ho == NULL) != (hn == NULL) || (ho && !json_equal(ho, hn));
        if (!diff || shown)
            continue;
        json_t *ch = json_pack("{s:s,s:s,s:O}", "field", name, "op", "relinked", "value", hn);
        if (!ch || json_array_append_new(changes, ch))
            err = CS_NO_MEMORY;
    }
    return err;
}

/* One changed copy: create (no copy before), archive (archived now, not before) or update. */
static cs_err note_change(pv_ctx *c, MDB_txn *m, const pv_entry *e, const MDB_val *rec,
                          json_t *lists[3])
{
    const cs_type *t = cs_schema_by_code(e->key[0]);
    json_t *item = NULL, *raw = NULL;
    cs_err err = copy_json(c, m, e->key, rec, &item, &raw);
    if (err != CS_OK)
        return err;
    bool arch = json_is_true(json_object_get(item, "archived"));
    bool was = e->item && json_is_true(json_object_get(e->item, "archived"));
    int which = !e->item ? 0 : arch && !was ? 2 : 1;
    json_t *o = NULL;
    if (which == 0) {
        o = json_pack("{s:s,s:o,s:o,s:o,s:b,s:O}", "type", t->name, "id",
                      ju64(cs_be64_get(e->key + 1)), "version", version_of(item, "version"),
                      "origin_version", version_of(item, "origin"), "archived", arch, "item", item);
    } else {
        json_t *changes = json_array();
        if (changes && (err = field_changes(t, e, item, raw, changes)) != CS_OK)
            json_decref(changes), changes = NULL;
        o = changes
                ? json_pack("{s:s,s:o,s:o,s:o,s:o}", "type", t->name, "id",
                            ju64(cs_be64_get(e->key + 1)), "version",
                            old_new(version_of(e->item, "version"), version_of(item, "version")),
                            "origin_version",
                            old_new(version_of(e->item, "origin"), version_of(item, "origin")),
                            "changes", changes)
                : NULL;
        if (o && arch != was &&
            json_object_set_new(o, "archived", old_new(json_boolean(was), json_boolean(arch))))
            json_decref(o), o = NULL;
    }
    json_decref(item);
    json_decref(raw);
    if (err == CS_OK && (!o || json_array_append_new(lists[which], o)))
        err = CS_NO_MEMORY;
    return err;
}

/* After the sync point: each entry's copy against what it was. */
static cs_err collect_after(pv_ctx *c, MDB_txn *m, json_t *lists[3], uint64_t waiting[64],
                            uint64_t *unchanged)
{
    cs_err err = CS_OK;
    for (size_t i = 0; i < c->n && err == CS_OK; i++) {
        const pv_entry *e = &c->v[i];
        MDB_val k = {9, (void *)e->key}, v, rec;
        int rc = mdb_get(m, c->b->dirty, &k, &v);
        if (rc == 0) { /* still waiting: its type is not synced (R7) */
            waiting[e->key[0] & 63]++;
            continue;
        }
        if (rc != MDB_NOTFOUND)
            return CS_IO;
        bool has;
        if ((err = copy_get(c->b, m, e->key, &rec, &has)) != CS_OK)
            return err;
        if (!has) /* a sync point gives every synced entry a copy (syncpoint.c invariant 1) */
            return CS_CORRUPT;
        if (e->rec && rec.mv_size == e->rec_len && memcmp(rec.mv_data, e->rec, e->rec_len) == 0)
            (*unchanged)++;
        else
            err = note_change(c, m, e, &rec, lists);
    }
    return err;
}

static json_t *waiting_json(const uint64_t waiting[64])
{
    json_t *arr = json_array();
    for (unsigned code = 0; arr && code < 64; code++) {
        const cs_type *t = waiting[code] ? cs_schema_by_code((uint8_t)code) : NULL;
        if (!t)
            continue;
        json_t *o = json_pack("{s:s,s:o,s:s}", "type", t->name, "items", ju64(waiting[code]),
                              "reason", "type_not_synced");
        if (!o || json_array_append_new(arr, o)) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static const char *skip_reason(cs__sync_cover cover)
{
    return cover == CS__SYNC_SWITCH_OFF   ? "switch_off"
           : cover == CS__SYNC_NOT_LINKED ? "not_linked"
                                          : "other_shop";
}

/* The scratch's write transaction: before, the sync point of the shared code, after; then it
 * is aborted (PV_ABORT), so even the scratch keeps nothing of it. */
static cs_err preview_fn(cs_log_txn *txn, void *ctx)
{
    pv_ctx *c = ctx;
    cs_branch *b = c->b;
    MDB_txn *m = cs_log_txn_mdb(txn);
    pv_clear(c); /* a retry after the map grew starts again */
    c->m = m;
    cs__batch_reset(&b->batch);
    cs_err err = cs__state_load(b, m, &b->st);
    if (err == CS_OK)
        err = cs__dirty_walk(b, m, collect_one, c);
    cs__sync_cover cover = CS__SYNC_COVERED;
    if (err == CS_OK)
        err = cs__sync_event(b, txn, c->shop, b->st.cursor + 1, &cover);
    if (err == CS_OK && cover == CS__SYNC_COVERED)
        err = cs__batch_write(b, txn);
    json_t *lists[3] = {json_array(), json_array(), json_array()};
    uint64_t waiting[64] = {0}, unchanged = 0;
    if (err == CS_OK && (!lists[0] || !lists[1] || !lists[2]))
        err = CS_NO_MEMORY;
    if (err == CS_OK && cover == CS__SYNC_COVERED)
        err = collect_after(c, m, lists, waiting, &unchanged);
    if (err == CS_OK) {
        c->out = json_pack(
            "{s:o,s:b,s:o,s:o,s:O,s:O,s:O,s:o,s:o}", "shop", ju64(c->shop), "covered",
            cover == CS__SYNC_COVERED, "skip",
            cover == CS__SYNC_COVERED ? json_null() : json_string(skip_reason(cover)), "waiting",
            ju64(c->n), "create", lists[0], "update", lists[1], "archive", lists[2],
            "skipped_types", waiting_json(waiting), "unchanged", ju64(unchanged));
        if (!c->out)
            err = CS_NO_MEMORY;
    }
    for (int i = 0; i < 3; i++)
        json_decref(lists[i]);
    if (err != CS_OK)
        return err;
    c->done = true;
    return PV_ABORT;
}

/* The preview of one branch, as of the head `seq` of the audited log. *out owned by the
 * caller. */
static cs_err preview_branch(cs_audit *a, uint64_t seq, uint64_t shop, json_t **out)
{
    cs_audit_state *s = NULL;
    cs_err err = cs_audit_branch_at(a, seq, shop, &s);
    if (err != CS_OK)
        return err;
    pv_ctx c = {.a = a, .b = s->b, .shop = shop};
    if (!msgpack_zone_init(&c.zone, 4096)) {
        cs_audit_state_free(s);
        return CS_NO_MEMORY;
    }
    err = cs_log_write(cs_engine_log(s->e), preview_fn, &c);
    if (err == PV_ABORT && c.done) {
        err = CS_OK;
        *out = c.out;
        c.out = NULL;
    } else if (err != CS_OK || !c.done) {
        err = err != CS_OK ? err : CS_CORRUPT;
        cs__audit_fail(a, err, "previewing branch %llu: %s", (unsigned long long)shop,
                       cs_branch_errmsg(s->b)[0] ? cs_branch_errmsg(s->b) : cs_err_name(err));
    }
    pv_clear(&c);
    free(c.v);
    msgpack_zone_destroy(&c.zone);
    cs_audit_state_free(s);
    return err;
}

/* The linked branches of the network (or only `shop`) from the engine's shop list. */
static cs_err branches_of(cs_audit *a, uint64_t shop, json_t **out)
{
    json_t *shops = NULL;
    cs_err err = cs_engine_shop_list(a->e, &shops);
    if (err != CS_OK)
        return cs__audit_fail(a, err, "%s", cs_engine_errmsg(a->e));
    json_t *arr = json_array();
    size_t i;
    json_t *row;
    json_array_foreach(shops, i, row)
    {
        const char *role = json_string_value(json_object_get(row, "role"));
        uint64_t id = (uint64_t)json_integer_value(json_object_get(row, "id"));
        if (!role || strcmp(role, "branch") != 0 || !json_is_true(json_object_get(row, "linked")))
            continue;
        if ((shop == 0 || id == shop) && arr && json_array_append(arr, row))
            json_decref(arr), arr = NULL;
    }
    json_decref(shops);
    if (!arr)
        return CS_NO_MEMORY;
    if (shop != 0 && json_array_size(arr) == 0) {
        json_decref(arr);
        return cs__audit_fail(a, CS_NOT_IN_NETWORK,
                              "shop %llu is not a linked branch of this network (see shop list)",
                              (unsigned long long)shop);
    }
    *out = arr;
    return CS_OK;
}

cs_err cs_audit_sync_preview(cs_audit *a, uint64_t shop, cs_sync_preview_fn fn, void *ctx,
                             uint64_t *seq_out)
{
    a->errmsg[0] = '\0';
    if (a->branch_dir)
        return cs__audit_fail(a, CS_FORBIDDEN,
                              "only the head office can do this; this shop is a branch");
    json_t *branches = NULL;
    cs_err err = branches_of(a, shop, &branches);
    uint64_t head = 0;
    /* One position for every branch: a write made while the preview runs is in none of it. */
    if (err == CS_OK)
        err = cs__audit_log_point(a, 0, &head, NULL, NULL);
    if (err == CS_OK && seq_out)
        *seq_out = head;
    size_t i;
    json_t *row;
    json_array_foreach(branches, i, row)
    {
        if (err != CS_OK)
            break;
        json_t *p = NULL, *o = NULL;
        uint64_t id = (uint64_t)json_integer_value(json_object_get(row, "id"));
        err = preview_branch(a, head, id, &p);
        /* Who and as of when first, then what the sync point would do. */
        if (err == CS_OK && (!(o = json_pack("{s:o,s:O,s:o}", "shop", ju64(id), "name",
                                             json_object_get(row, "name"), "seq", ju64(head))) ||
                             json_object_update(o, p)))
            err = CS_NO_MEMORY;
        if (err == CS_OK && (err = fn(o, ctx)) != CS_OK && !a->errmsg[0])
            cs__audit_fail(a, err, "the preview of branch %llu could not be reported",
                           (unsigned long long)id);
        json_decref(o);
        json_decref(p);
    }
    json_decref(branches);
    return err;
}
