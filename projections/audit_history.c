/*
 * audit_history.c: every version of an item (R14): who changed it, when, at which position,
 * and which fields changed.
 *
 * Finding an item's events by scanning the log costs the log's length on every question. So
 * the audit keeps a `history` index (type code, id, seq -> empty) beside the log, brought up to
 * the head lazily, on the next question, by scanning only the events it has not seen: the write
 * path pays nothing, the first question pays one scan, later ones pay for what was appended
 * since. A question then costs one index range plus one read per version. The index remembers
 * the chain at the last event it saw, so a log changed under it is reported, never trusted.
 *
 * The diff of two versions compares fields by the schema (in schema order), as JSON values:
 * a field is added, changed (old -> new) or removed. Events carry full state (SPEC 4), so each
 * version is readable on its own and the diff is only a convenience.
 */
#include "projections/audit_int.h"

#include <stdlib.h>
#include <string.h>

/* Events the index scans per write transaction: bounds the keys held in memory (17 bytes
 * each) while keeping transactions few. */
#define HISTORY_SCAN_EVENTS 100000u
#define HISTORY_KEY_BYTES 17u

/* ---- the index --------------------------------------------------------------------------- */

typedef struct hist_batch {
    uint8_t (*keys)[HISTORY_KEY_BYTES];
    size_t n;
    uint64_t upto;  /* the last event scanned */
    uint64_t chain; /* its chain */
    cs_audit *a;
} hist_batch;

static int key_cmp(const void *x, const void *y)
{
    return memcmp(x, y, HISTORY_KEY_BYTES);
}

/* Collects the index keys of events from..to (at most HISTORY_SCAN_EVENTS of them). */
static cs_err history_scan(cs_audit *a, uint64_t from, uint64_t to, hist_batch *hb)
{
    cs_assert(from >= 1);
    cs_assert(to >= from);
    cs_assert(to - from < HISTORY_SCAN_EVENTS); /* the keys array holds one batch */
    cs_log_reader *r = NULL;
    cs_event_decoder *dec = NULL;
    cs_err err = cs_log_reader_open(a->log, &r);
    if (err == CS_OK)
        err = cs_event_decoder_new(&dec);
    if (err == CS_OK)
        err = cs_log_reader_seek(r, from);
    hb->n = 0;
    for (uint64_t seq = from; err == CS_OK && seq <= to; seq++) {
        cs_log_record rec;
        cs_event_view ev;
        if ((err = cs_log_reader_next(r, &rec)) != CS_OK)
            break;
        if (cs_event_decode(dec, rec.event, rec.event_len, &ev) != CS_OK || ev.seq != seq) {
            err = cs__audit_fail(a, CS_CORRUPT, "event %llu does not decode",
                                 (unsigned long long)seq);
            break;
        }
        hb->upto = seq;
        hb->chain = rec.chain;
        const cs_type *t = cs_schema_find_str(ev.type);
        if (!t || t->cls == CS_CLASS_LOCAL || !cs_kind_is_item(cs_kind_parse(ev.kind)))
            continue;
        uint8_t *k = hb->keys[hb->n++];
        k[0] = t->code;
        cs_be64_put(k + 1, ev.id);
        cs_be64_put(k + 9, seq);
    }
    if (err == CS_NOT_FOUND)
        err =
            cs__audit_fail(a, CS_CORRUPT, "the log ends before event %llu", (unsigned long long)to);
    else if (err != CS_OK && !a->errmsg[0])
        cs__audit_fail(a, err, "%s", cs_log_reader_errmsg(r));
    cs_event_decoder_free(dec);
    cs_log_reader_close(r);
    return err;
}

static cs_err history_write_fn(cs_log_txn *txn, void *ctx)
{
    hist_batch *hb = ctx;
    MDB_val empty = {0, ""};
    cs_err err = CS_OK;
    for (size_t i = 0; i < hb->n && err == CS_OK; i++) {
        MDB_val k = {HISTORY_KEY_BYTES, hb->keys[i]};
        err = cs_log_txn_put(txn, hb->a->history, &k, &empty, 0);
    }
    if (err == CS_OK)
        err = cs__audit_meta_put(txn, hb->a->meta, "history_seq", hb->upto);
    if (err == CS_OK)
        err = cs__audit_meta_put(txn, hb->a->meta, "history_chain", hb->chain);
    return err;
}

cs_err cs__history_extend(cs_audit *a)
{
    MDB_txn *t;
    cs_err err = cs_log_read_begin(a->log, &t);
    if (err != CS_OK)
        return cs__audit_fail(a, err, "cannot read the history index: %s", cs_log_errmsg(a->log));
    uint64_t seen = cs__audit_meta_get(t, a->meta, "history_seq");
    uint64_t seen_chain = cs__audit_meta_get(t, a->meta, "history_chain");
    cs_log_read_end(a->log, t);
    uint64_t head = 0, chain = 0;
    cs__audit_base_info base;
    err = cs__audit_base(a, &base);
    bool from_cut = err == CS_OK && base.start && seen + 1 < base.start;
    if (from_cut) { /* a cut log: versions before its start are gone, the index starts there */
        seen = base.start - 1;
        seen_chain = 0;
    }
    if (err == CS_OK)
        err = cs__audit_log_point(a, 0, &head, NULL, NULL);
    if (err == CS_OK && seen > head)
        return cs__audit_fail(a, CS_CORRUPT,
                              "the history index has seen %llu events but the log holds %llu: "
                              "the log lost events (run `chainsync audit verify`)",
                              (unsigned long long)seen, (unsigned long long)head);
    if (err == CS_OK && seen > 0 && !from_cut)
        err = cs__audit_log_point(a, seen, &head, &chain, NULL);
    if (err == CS_OK && seen > 0 && !from_cut && chain != seen_chain)
        return cs__audit_fail(a, CS_CORRUPT,
                              "the log's event %llu changed after the history index saw it "
                              "(run `chainsync audit verify`)",
                              (unsigned long long)seen);
    hist_batch hb = {.a = a};
    if (err == CS_OK && seen < head && !(hb.keys = malloc(HISTORY_SCAN_EVENTS * sizeof(*hb.keys))))
        err = CS_NO_MEMORY;
    while (err == CS_OK && seen < head) {
        uint64_t to = head - seen > HISTORY_SCAN_EVENTS ? seen + HISTORY_SCAN_EVENTS : head;
        err = history_scan(a, seen + 1, to, &hb);
        if (err != CS_OK)
            break;
        cs_assert(hb.upto == to); /* invariant 3: one key per event of seen+1..to */
        cs_assert(hb.n <= to - seen);
        qsort(hb.keys, hb.n, sizeof(*hb.keys), key_cmp); /* sorted puts touch fewer pages */
        err = cs_log_write(a->log, history_write_fn, &hb);
        if (err != CS_OK)
            cs__audit_fail(a, err, "cannot write the history index: %s", cs_log_errmsg(a->log));
        seen = to;
    }
    free(hb.keys);
    cs_assert(err != CS_OK || seen == head); /* invariant 3: the index reaches the head */
    return err;
}

/* ---- the diff ---------------------------------------------------------------------------- */

cs_err cs__audit_diff(const cs_type *t, const json_t *old, const json_t *new, json_t *changes)
{
    for (unsigned i = 0; i < t->nfields; i++) {
        const char *name = t->fields[i].name;
        json_t *o = old ? json_object_get(old, name) : NULL;
        json_t *n = new ? json_object_get(new, name) : NULL;
        if ((!o && !n) || (o && n && json_equal(o, n)))
            continue;
        json_t *c = json_pack("{s:s,s:s}", "field", name, "op",
                              !o   ? "added"
                              : !n ? "removed"
                                   : "changed");
        if (c && o && json_object_set(c, "old", o))
            json_decref(c), c = NULL;
        if (c && n && json_object_set(c, "new", n))
            json_decref(c), c = NULL;
        if (!c || json_array_append_new(changes, c))
            return CS_NO_MEMORY;
    }
    return CS_OK;
}

/* ---- a history --------------------------------------------------------------------------- */

/* The sequences of the item's versions, from the index. *seqs owned by the caller. */
static cs_err history_seqs(cs_audit *a, const cs_type *t, uint64_t id, uint64_t **seqs, size_t *n)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    cs_err err = cs__audit_read_begin(a, a->log, &txn);
    if (err != CS_OK)
        return err;
    if (mdb_cursor_open(txn, a->history, &cur)) {
        cs_log_read_end(a->log, txn);
        return CS_IO;
    }
    uint8_t kb[9];
    kb[0] = t->code;
    cs_be64_put(kb + 1, id);
    MDB_val k = {9, kb}, v;
    size_t cap = 0;
    *seqs = NULL;
    *n = 0;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != HISTORY_KEY_BYTES || memcmp(k.mv_data, kb, 9) != 0)
            break;
        if (*n == CS_AUDIT_HISTORY_VERSIONS_MAX) {
            err = cs__audit_fail(a, CS_INVALID_INPUT, "%s %llu has more than %u versions", t->name,
                                 (unsigned long long)id, CS_AUDIT_HISTORY_VERSIONS_MAX);
            break;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *p = realloc(*seqs, cap * sizeof(*p));
            if (!p) {
                err = CS_NO_MEMORY;
                break;
            }
            *seqs = p;
        }
        (*seqs)[(*n)++] = cs_be64_get((const uint8_t *)k.mv_data + 9);
    }
    if (err == CS_OK && rc != 0 && rc != MDB_NOTFOUND)
        err = CS_IO;
    mdb_cursor_close(cur);
    cs_log_read_end(a->log, txn);
    if (err != CS_OK) {
        free(*seqs);
        *seqs = NULL;
    }
    return err;
}

/* No version in this log: say why, naming the head-office item when this one is a copy. */
static cs_err history_none(cs_audit *a, const cs_type *t, uint64_t id)
{
    MDB_txn *txn;
    msgpack_zone z;
    cs_item it;
    bool copy = false;
    uint64_t origin = 0;
    if (msgpack_zone_init(&z, 1024)) {
        if (cs_log_read_begin(a->log, &txn) == CS_OK) {
            if (cs_item_read(txn, cs_engine_items_dbi(a->e), t, id, &z, &it) == CS_OK &&
                (it.has_origin || it.has_detached)) {
                copy = true;
                origin = it.has_origin ? it.origin[1] : it.detached[1];
            }
            cs_log_read_end(a->log, txn);
        }
        msgpack_zone_destroy(&z);
    }
    if (copy)
        return cs__audit_fail(a, CS_NOT_FOUND,
                              "%s %llu is a copy of head-office item %llu: its history is in the "
                              "head office's log (chainsync audit history %s %llu --data HEAD)",
                              t->name, (unsigned long long)id, (unsigned long long)origin, t->name,
                              (unsigned long long)origin);
    cs__audit_base_info base;
    if (cs__audit_base(a, &base) == CS_OK && base.start)
        return cs__audit_fail(a, CS_NOT_FOUND,
                              "%s %llu has no version in this log since event %llu: events "
                              "before it were cut (log compact), and with them every older "
                              "version and who made it; its state as of event %llu is in the "
                              "snapshot (chainsync audit as-of --seq %llu %s)",
                              t->name, (unsigned long long)id, (unsigned long long)base.start,
                              (unsigned long long)base.seq, (unsigned long long)base.seq, t->name);
    return cs__audit_fail(a, CS_NOT_FOUND, "%s %llu has no version in this log", t->name,
                          (unsigned long long)id);
}

/* One version's object; *prev (the previous version's fields) is replaced by this one's. */
static cs_err version_json(const cs_type *t, const cs_event_view *ev, json_t **prev, json_t **out)
{
    json_t *fields = NULL, *changes = json_array();
    cs_err err = changes ? cs_schema_to_json(t, &ev->fields, &fields) : CS_NO_MEMORY;
    bool del = cs_kind_parse(ev->kind) == CS_KIND_DELETE;
    if (err == CS_OK)
        err = cs__audit_diff(t, *prev, fields, changes);
    json_t *o = NULL;
    if (err == CS_OK)
        o = json_pack("{s:I,s:I,s:s%,s:I,s:s%,s:s,s:s,s:I,s:I,s:O,s:O}", "seq", (json_int_t)ev->seq,
                      "time", (json_int_t)ev->time_ms, "actor", ev->actor.ptr, ev->actor.len,
                      "shop", (json_int_t)ev->shop, "kind", ev->kind.ptr, ev->kind.len, "change",
                      del     ? "deleted"
                      : *prev ? "updated"
                              : "created",
                      "type", t->name, "id", (json_int_t)ev->id, "version", (json_int_t)ev->version,
                      "changes", changes, "fields", fields);
    json_decref(changes);
    if (err == CS_OK && !o)
        err = CS_NO_MEMORY;
    if (err != CS_OK) {
        json_decref(fields);
        return err;
    }
    json_decref(*prev);
    *prev = fields;
    *out = o;
    return CS_OK;
}

static cs_err history_read(cs_audit *a, const cs_type *t, uint64_t id, const uint64_t *seqs,
                           size_t n, json_t *arr)
{
    cs_log_reader *r = NULL;
    cs_event_decoder *dec = NULL;
    json_t *prev = NULL;
    cs_err err = cs_log_reader_open(a->log, &r);
    if (err == CS_OK)
        err = cs_event_decoder_new(&dec);
    for (size_t i = 0; i < n && err == CS_OK; i++) {
        cs_log_record rec;
        cs_event_view ev;
        json_t *o = NULL;
        if ((err = cs_log_reader_get(r, seqs[i], &rec)) != CS_OK) {
            cs__audit_fail(a, err == CS_NOT_FOUND ? CS_CORRUPT : err, "%s",
                           cs_log_reader_errmsg(r));
            err = err == CS_NOT_FOUND ? CS_CORRUPT : err;
        } else if (cs_event_decode(dec, rec.event, rec.event_len, &ev) != CS_OK ||
                   ev.seq != seqs[i] || ev.id != id || cs_schema_find_str(ev.type) != t) {
            err = cs__audit_fail(a, CS_CORRUPT,
                                 "event %llu is not a version of %s %llu as the history index "
                                 "says (run `chainsync audit verify`)",
                                 (unsigned long long)seqs[i], t->name, (unsigned long long)id);
        } else if ((err = version_json(t, &ev, &prev, &o)) == CS_OK &&
                   json_array_append_new(arr, o)) {
            err = CS_NO_MEMORY;
        }
    }
    json_decref(prev);
    cs_event_decoder_free(dec);
    cs_log_reader_close(r);
    return err;
}

cs_err cs_audit_history(cs_audit *a, const char *type, uint64_t id, json_t **out)
{
    a->errmsg[0] = '\0';
    const cs_type *t = type ? cs_schema_find(type) : NULL;
    if (!t)
        return cs__audit_fail(a, CS_UNKNOWN_TYPE, "'%s' is not a type", type ? type : "");
    if (t->cls == CS_CLASS_LOCAL)
        return cs__audit_fail(a, CS_INVALID_INPUT,
                              "%s is shop-local: it is never logged (R9), so it has no history",
                              t->name);
    cs_err err = cs__history_extend(a);
    uint64_t *seqs = NULL;
    size_t n = 0;
    if (err == CS_OK)
        err = history_seqs(a, t, id, &seqs, &n);
    if (err == CS_OK && n == 0)
        err = history_none(a, t, id);
    json_t *arr = err == CS_OK ? json_array() : NULL;
    if (err == CS_OK && !arr)
        err = CS_NO_MEMORY;
    if (err == CS_OK)
        err = history_read(a, t, id, seqs, n, arr);
    free(seqs);
    if (err != CS_OK) {
        json_decref(arr);
        if (!a->errmsg[0])
            cs__audit_fail(a, err, "cannot read the history of %s %llu", t->name,
                           (unsigned long long)id);
        return err;
    }
    *out = arr;
    return CS_OK;
}
