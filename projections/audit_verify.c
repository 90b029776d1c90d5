/*
 * audit_verify.c: `audit verify` (R14, SPEC 4): does the directory hold what its log says, and
 * does a branch hold what the head office's log says it should?
 *
 * Order, each step only when the one before held:
 *   1. the log: every checksum and the whole hash chain (cs_log_reader_verify), naming the first
 *      bad sequence. Nothing after it can be trusted, so a bad log stops here.
 *   2. the state: a replay of the whole log in a scratch directory, compared with the
 *      directory's state by digest; on a mismatch both are walked in key order and every
 *      differing record is named (type and id, and the fields that differ). On the way, each
 *      checkpoint is compared with the replay at its position (checkpoints are derived data that
 *      queries trust, so they are verified by the same replay).
 *   3. the history index: its last position still has the chain it recorded.
 *   4. with a branch directory: a scratch branch bound to the same shop replays the log up to the
 *      branch's cursor, and the two are compared. Copies are matched by origin (type, head id),
 *      not by id: a branch's copy ids depend on its local writes interleaved with sync points.
 *      References are translated back to head ids before fields are compared. Shared records are
 *      matched by id; local items are counted, not checked (nothing outside the branch knows
 *      them); shared records still waiting in the branch's outbox are counted as pending.
 *
 * On a branch directory (its own log holds only its own writes) step 2 compares only its local
 * items with the replay of its own log: copies and shared records come from the head office's
 * log and are checked from there (step 4, run at the head office).
 */
#include "projections/audit_int.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A consistent (log head, state digest) pair is retried this often while something appends. */
#define SNAPSHOT_ATTEMPTS_MAX 3

typedef struct verify_ctx {
    cs_audit *a;
    json_t *report;
    bool first_found; /* `first` holds the first problem, a->errmsg's at the end */
    bool oom;         /* a report key could not be set: the verification fails with no_memory */
    char first[CS__AUDIT_ERRMSG_BYTES];
} verify_ctx;

static json_t *ju64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *jhex(uint64_t v)
{
    char b[17];
    snprintf(b, sizeof(b), "%016llx", (unsigned long long)v);
    return json_string(b);
}

/* Sets a report key, taking v; a failure is remembered and fails the verification. */
static void vset(verify_ctx *vc, json_t *o, const char *key, json_t *v)
{
    if (!o || !v || json_object_set_new(o, key, v))
        vc->oom = true;
}

/* Records a problem: the first one becomes the errmsg (the CLI's `error: corrupt:` line). */
static void problem(verify_ctx *vc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(verify_ctx *vc, const char *fmt, ...)
{
    if (vc->first_found)
        return;
    va_list ap;
    va_start(ap, fmt);
    cs_errmsg_vformat(vc->first, sizeof(vc->first), CS_CORRUPT, fmt, ap);
    va_end(ap);
    vc->first_found = true;
}

/* A report part: {"ok": true, "differences": [], "count": 0} plus its own keys. */
static json_t *part_new(verify_ctx *vc, const char *name)
{
    json_t *p = json_pack("{s:b,s:[],s:i}", "ok", 1, "differences", "count", 0);
    if (p && json_object_set_new(vc->report, name, p))
        return NULL;
    return p;
}

/* Adds one difference to a part (listing at most CS_AUDIT_DIFFS_MAX, counting all). Takes d. */
static cs_err part_diff(verify_ctx *vc, json_t *part, json_t *d)
{
    if (!d)
        return CS_NO_MEMORY;
    json_int_t count = json_integer_value(json_object_get(part, "count")) + 1;
    vset(vc, part, "count", json_integer(count));
    vset(vc, part, "ok", json_false());
    vset(vc, vc->report, "ok", json_false());
    if (count > (json_int_t)CS_AUDIT_DIFFS_MAX) {
        json_decref(d);
        return CS_OK;
    }
    const char *type = json_string_value(json_object_get(d, "type"));
    json_t *id = json_object_get(d, "id");
    const char *key = json_string_value(json_object_get(d, "key"));
    const char *what = json_string_value(json_object_get(d, "what"));
    if (id)
        problem(vc, "%s %lld %s", type, (long long)json_integer_value(id), what ? what : "");
    else
        problem(vc, "%s%s%s %s", type, key ? " " : "", key ? key : "", what ? what : "");
    return json_array_append_new(json_object_get(part, "differences"), d) ? CS_NO_MEMORY : CS_OK;
}

/* ---- comparing two databases record by record ------------------------------------------- */

/* Which records of a database take part (NULL: all). */
typedef bool (*keep_fn)(const MDB_val *k, const MDB_val *v, void *ctx);
/* One difference: va (the directory's) or vb (the replay's) is NULL when the record is absent. */
typedef cs_err (*differ_fn)(const MDB_val *k, const MDB_val *va, const MDB_val *vb, void *ctx);

static int key_cmp(const MDB_val *x, const MDB_val *y)
{
    size_t n = x->mv_size < y->mv_size ? x->mv_size : y->mv_size;
    int c = memcmp(x->mv_data, y->mv_data, n);
    if (c)
        return c;
    return x->mv_size < y->mv_size ? -1 : x->mv_size > y->mv_size;
}

/* Advances a cursor to the next record `keep` accepts; *at false at the end. */
static int walk_next(MDB_cursor *cur, MDB_val *k, MDB_val *v, keep_fn keep, void *ctx, bool *at)
{
    int rc;
    while ((rc = mdb_cursor_get(cur, k, v, MDB_NEXT)) == 0)
        if (!keep || keep(k, v, ctx))
            break;
    *at = rc == 0;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Walks da (in ta) and db (in tb) in key order together and calls fn for every key whose
 * records differ or exist on one side only; with all, for keys on both sides whatever their
 * records (when equal bytes do not mean equal, e.g. copy ids). */
static cs_err walk_compare(MDB_txn *ta, MDB_dbi da, keep_fn keep_a, MDB_txn *tb, MDB_dbi db,
                           keep_fn keep_b, bool all, differ_fn fn, void *ctx)
{
    MDB_cursor *ca = NULL, *cb = NULL;
    if (mdb_cursor_open(ta, da, &ca) || mdb_cursor_open(tb, db, &cb)) {
        mdb_cursor_close(ca);
        return CS_IO;
    }
    MDB_val ka, va, kb, vb;
    bool at_a, at_b;
    int rc = walk_next(ca, &ka, &va, keep_a, ctx, &at_a);
    if (rc == 0)
        rc = walk_next(cb, &kb, &vb, keep_b, ctx, &at_b);
    cs_err err = CS_OK;
    while (rc == 0 && err == CS_OK && (at_a || at_b)) {
        int c = !at_a ? 1 : !at_b ? -1 : key_cmp(&ka, &kb);
        if (c < 0) {
            err = fn(&ka, &va, NULL, ctx);
            rc = walk_next(ca, &ka, &va, keep_a, ctx, &at_a);
        } else if (c > 0) {
            err = fn(&kb, NULL, &vb, ctx);
            rc = walk_next(cb, &kb, &vb, keep_b, ctx, &at_b);
        } else {
            if (all || va.mv_size != vb.mv_size || memcmp(va.mv_data, vb.mv_data, va.mv_size) != 0)
                err = fn(&ka, &va, &vb, ctx);
            if ((rc = walk_next(ca, &ka, &va, keep_a, ctx, &at_a)) == 0)
                rc = walk_next(cb, &kb, &vb, keep_b, ctx, &at_b);
        }
    }
    mdb_cursor_close(ca);
    mdb_cursor_close(cb);
    return err == CS_OK && rc ? CS_IO : err;
}

/* ---- describing a differing item ---------------------------------------------------------- */

static const char *link_text(bool has, const uint64_t v[3], char *buf, size_t len)
{
    if (!has)
        return "none";
    snprintf(buf, len, "shop %llu item %llu v%llu", (unsigned long long)v[0],
             (unsigned long long)v[1], (unsigned long long)v[2]);
    return buf;
}

/* Sets d's "what" from the records' headers and adds "changes" from their fields (the fields
 * given already translated when the caller did so). */
static cs_err item_describe(const cs_type *t, const cs_item *x, const cs_item *y, const char *base,
                            json_t *d)
{
    char what[512], la[96], lb[96];
    size_t n = (size_t)snprintf(what, sizeof(what), "%s: ", base);
    if (x->version != y->version)
        n += (size_t)snprintf(what + n, sizeof(what) - n, "version %llu, replay says %llu; ",
                              (unsigned long long)x->version, (unsigned long long)y->version);
    if (x->archived != y->archived && n < sizeof(what))
        n += (size_t)snprintf(what + n, sizeof(what) - n, "archived %s, replay says %s; ",
                              x->archived ? "yes" : "no", y->archived ? "yes" : "no");
    if ((x->has_origin != y->has_origin ||
         (x->has_origin && memcmp(x->origin, y->origin, sizeof(x->origin)))) &&
        n < sizeof(what))
        n += (size_t)snprintf(what + n, sizeof(what) - n, "origin %s, replay says %s; ",
                              link_text(x->has_origin, x->origin, la, sizeof(la)),
                              link_text(y->has_origin, y->origin, lb, sizeof(lb)));
    if ((x->has_detached != y->has_detached ||
         (x->has_detached && memcmp(x->detached, y->detached, sizeof(x->detached)))) &&
        n < sizeof(what))
        n += (size_t)snprintf(what + n, sizeof(what) - n, "detached_from %s, replay says %s; ",
                              link_text(x->has_detached, x->detached, la, sizeof(la)),
                              link_text(y->has_detached, y->detached, lb, sizeof(lb)));
    json_t *fx = NULL, *fy = NULL, *changes = json_array();
    cs_err err = changes ? cs_schema_to_json(t, &x->fields, &fx) : CS_NO_MEMORY;
    if (err == CS_OK)
        err = cs_schema_to_json(t, &y->fields, &fy);
    if (err == CS_OK)
        err = cs__audit_diff(t, fy, fx, changes); /* from the replay's value to the held one */
    if (err == CS_OK && json_array_size(changes) > 0 && n < sizeof(what)) {
        n += (size_t)snprintf(what + n, sizeof(what) - n, "fields differ:");
        for (size_t i = 0; i < json_array_size(changes) && n < sizeof(what); i++)
            n += (size_t)snprintf(
                what + n, sizeof(what) - n, " %s",
                json_string_value(json_object_get(json_array_get(changes, i), "field")));
    }
    json_decref(fx);
    json_decref(fy);
    n = strlen(what); /* drop the last separator */
    while (n > 0 && (what[n - 1] == ' ' || what[n - 1] == ';' || what[n - 1] == ':'))
        what[--n] = '\0';
    if (err == CS_OK && (json_object_set_new(d, "changes", changes) ||
                         json_object_set_new(d, "what", json_string(what))))
        err = CS_NO_MEMORY;
    else if (err != CS_OK)
        json_decref(changes);
    return err;
}

/* A difference about an item: {"type","id","what"}. */
static json_t *item_diff_new(uint8_t code, uint64_t id, const char *what)
{
    char buf[16];
    return json_pack("{s:s,s:I,s:s}", "type", cs__audit_type_name(code, buf, sizeof(buf)), "id",
                     (json_int_t)id, "what", what);
}

/* ---- step 2: the state against a replay ---------------------------------------------------- */

typedef struct state_cmp {
    verify_ctx *vc;
    json_t *part;
    msgpack_zone z;
} state_cmp;

static cs_err state_item_differ(const MDB_val *k, const MDB_val *va, const MDB_val *vb, void *ctx)
{
    state_cmp *sc = ctx;
    const uint8_t *kb = k->mv_data;
    if (k->mv_size != 9)
        return part_diff(sc->vc, sc->part,
                         json_pack("{s:s,s:s}", "type", "items", "what", "a malformed key"));
    uint64_t id = cs_be64_get(kb + 1);
    if (!va)
        return part_diff(sc->vc, sc->part,
                         item_diff_new(kb[0], id, "is missing here: a replay of the log has it"));
    if (!vb)
        return part_diff(
            sc->vc, sc->part,
            item_diff_new(kb[0], id, "is not in a replay of the log: written behind its back"));
    const cs_type *t = cs_schema_by_code(kb[0]);
    cs_item x, y;
    msgpack_zone_clear(&sc->z);
    json_t *d = item_diff_new(kb[0], id, "differs from a replay of the log");
    if (t && d && cs_item_parse(va, &sc->z, &x) == CS_OK && cs_item_parse(vb, &sc->z, &y) == CS_OK)
        if (item_describe(t, &x, &y, "differs from a replay of the log", d) != CS_OK) {
            json_decref(d);
            return CS_NO_MEMORY;
        }
    return part_diff(sc->vc, sc->part, d);
}

static cs_err state_net_differ(const MDB_val *k, const MDB_val *va, const MDB_val *vb, void *ctx)
{
    state_cmp *sc = ctx;
    char key[40];
    if (k->mv_size == 13 && memcmp(k->mv_data, "shop:", 5) == 0)
        snprintf(key, sizeof(key), "shop %llu",
                 (unsigned long long)cs_be64_get((const uint8_t *)k->mv_data + 5));
    else
        snprintf(key, sizeof(key), "%.*s", (int)(k->mv_size < 32 ? k->mv_size : 32),
                 (const char *)k->mv_data);
    const char *what = !va   ? "is missing here: a replay of the log has it"
                       : !vb ? "is not in a replay of the log: written behind its back"
                             : "differs from a replay of the log";
    json_t *d = json_pack("{s:s,s:s,s:s}", "type", "network", "key", key, "what", what);
    if (d && va && vb) {
        vset(sc->vc, d, "held", json_stringn(va->mv_data, va->mv_size));
        vset(sc->vc, d, "replay", json_stringn(vb->mv_data, vb->mv_size));
    }
    return part_diff(sc->vc, sc->part, d);
}

/* On a branch directory: its local items (no origin, no detached_from, a catalog type), which
 * its own log wrote; and of the replay of that log, its catalog items. */
static bool keep_local_item(const MDB_val *k, const MDB_val *v, void *ctx)
{
    (void)ctx;
    const cs_type *t = k->mv_size == 9 ? cs_schema_by_code(((const uint8_t *)k->mv_data)[0]) : NULL;
    if (!t || t->cls != CS_CLASS_SYNCED)
        return false;
    /* A record that does not parse is counted as local: the item check reports it. */
    msgpack_zone z;
    cs_item it;
    if (!msgpack_zone_init(&z, 512))
        return true;
    bool local = cs_item_parse(v, &z, &it) != CS_OK || (!it.has_origin && !it.has_detached);
    msgpack_zone_destroy(&z);
    return local;
}

static bool keep_catalog_item(const MDB_val *k, const MDB_val *v, void *ctx)
{
    (void)v, (void)ctx;
    const cs_type *t = k->mv_size == 9 ? cs_schema_by_code(((const uint8_t *)k->mv_data)[0]) : NULL;
    return t && t->cls == CS_CLASS_SYNCED;
}

/* Walks the directory's state and the replay's, listing every difference. */
static cs_err state_walk(verify_ctx *vc, json_t *part, cs_audit_state *s)
{
    cs_audit *a = vc->a;
    state_cmp sc = {.vc = vc, .part = part};
    MDB_txn *ta = NULL, *tb = NULL;
    if (!msgpack_zone_init(&sc.z, 4096))
        return CS_NO_MEMORY;
    cs_err err = cs__audit_read_begin(a, a->log, &ta);
    if (err == CS_OK)
        err = cs__audit_read_begin(a, cs_engine_log(s->e), &tb);
    if (err == CS_OK)
        err = walk_compare(ta, cs_engine_items_dbi(a->e), a->branch_dir ? keep_local_item : NULL,
                           tb, cs_engine_items_dbi(s->e), a->branch_dir ? keep_catalog_item : NULL,
                           false, state_item_differ, &sc);
    if (err == CS_OK && !a->branch_dir)
        err = walk_compare(ta, cs_engine_network_dbi(a->e), NULL, tb, cs_engine_network_dbi(s->e),
                           NULL, false, state_net_differ, &sc);
    cs_log_read_end(cs_engine_log(s->e), tb); /* both accept NULL */
    cs_log_read_end(a->log, ta);
    msgpack_zone_destroy(&sc.z);
    return err;
}

/* The checkpoint after `after` (0: the first), 0 when none. */
static cs_err ckpt_next(cs_audit *a, uint64_t after, uint64_t *out)
{
    MDB_txn *t;
    MDB_cursor *cur;
    if (a->read_only && a->ckpt == 0) { /* never checkpointed: no `ckpt` database */
        *out = 0;
        return CS_OK;
    }
    cs_err err = cs__audit_read_begin(a, a->log, &t);
    if (err != CS_OK)
        return err;
    if (mdb_cursor_open(t, a->ckpt, &cur)) {
        cs_log_read_end(a->log, t);
        return CS_IO;
    }
    uint8_t kb[9] = {0};
    cs_be64_put(kb, after + 1);
    MDB_val k = {9, kb}, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    *out = rc == 0 && k.mv_size >= 9 ? cs_be64_get(k.mv_data) : 0;
    mdb_cursor_close(cur);
    cs_log_read_end(a->log, t);
    return rc == 0 || rc == MDB_NOTFOUND ? CS_OK : CS_IO;
}

/* Compares checkpoint cp with the replay, which is at cp. */
static cs_err ckpt_check(verify_ctx *vc, json_t *part, cs_audit_state *s, uint64_t cp)
{
    cs_audit *a = vc->a;
    uint64_t head, chain = 0, replay = 0, content = 0;
    cs__ckpt_header h = {0};
    cs_err err = cs__audit_log_point(a, cp, &head, &chain, NULL);
    if (err == CS_OK)
        err = cs_engine_digest(s->e, &replay);
    MDB_txn *t;
    if (err == CS_OK && (err = cs__audit_read_begin(a, a->log, &t)) == CS_OK) {
        err = cs__ckpt_header_get(t, a->ckpt, cp, &h);
        if (err == CS_OK)
            err = cs__ckpt_content_digest(t, a->ckpt, cp, &content);
        cs_log_read_end(a->log, t);
    }
    const char *what = NULL;
    if (err == CS_NOT_FOUND || err == CS_CORRUPT)
        what = "has no readable header";
    else if (err != CS_OK)
        return err;
    else if (h.chain != chain)
        what = "was taken from another log (its chain is not the log's)";
    else if (content != h.digest)
        what = "is damaged (its records do not match its digest)";
    else if (replay != h.digest)
        what = "differs from a replay of the log at its position";
    if (!what)
        return CS_OK;
    return part_diff(
        vc, part,
        json_pack("{s:s,s:I,s:s}", "type", "checkpoint", "id", (json_int_t)cp, "what", what));
}

/* Replays the log into s up to head, checking every checkpoint on the way. */
static cs_err replay_with_checkpoints(verify_ctx *vc, json_t *ckpart, cs_audit_state *s,
                                      uint64_t head)
{
    cs_audit *a = vc->a;
    uint64_t at = 0, cp = 0, checked = 0;
    cs__audit_base_info base;
    cs_err err = cs__audit_base(a, &base);
    if (err == CS_OK && base.seq > 0) { /* a cut log is replayed from its snapshot */
        err = cs__audit_base_load(a, s, 0);
        at = cp = base.seq;
    }
    for (; err == CS_OK;) {
        if ((err = ckpt_next(a, cp, &cp)) != CS_OK)
            break;
        uint64_t to = cp == 0 || cp > head ? head : cp;
        cs_log_reader *r = NULL;
        if (to > at && (err = cs_log_reader_open(a->log, &r)) == CS_OK) {
            err = cs_engine_replay_range(s->e, r, at + 1, to, NULL);
            if (err != CS_OK)
                cs__audit_fail(a, err, "replay stopped: %s", cs_engine_errmsg(s->e));
            cs_log_reader_close(r);
        }
        if (err != CS_OK)
            break;
        at = to;
        cs_progress_report(&a->progress, at, head, false);
        if (cp == 0)
            break;
        if (cp > head) {
            err = part_diff(vc, ckpart,
                            json_pack("{s:s,s:I,s:s}", "type", "checkpoint", "id", (json_int_t)cp,
                                      "what", "is past the log's head: the log lost events"));
            break; /* the later ones are past it too */
        }
        if ((err = ckpt_check(vc, ckpart, s, cp)) != CS_OK)
            break;
        checked++;
    }
    vset(vc, ckpart, "checked", ju64(checked));
    return err;
}

/* The log's head and the state's digest, read with no commit in between. */
static cs_err state_snapshot(cs_audit *a, uint64_t *head, uint64_t *digest)
{
    for (int i = 0; i < SNAPSHOT_ATTEMPTS_MAX; i++) {
        uint64_t h1, h2;
        cs_err err = cs__audit_log_point(a, 0, &h1, NULL, NULL);
        if (err == CS_OK)
            err = cs_engine_digest(a->e, digest);
        if (err == CS_OK)
            err = cs__audit_log_point(a, 0, &h2, NULL, NULL);
        if (err != CS_OK)
            return err;
        if (h1 == h2) {
            *head = h1;
            return CS_OK;
        }
    }
    return cs__audit_fail(a, CS_IO, "the log kept growing while it was verified: try again");
}

static cs_err verify_state(verify_ctx *vc)
{
    cs_audit *a = vc->a;
    json_t *part = part_new(vc, "state"), *ckpart = part_new(vc, "checkpoints");
    if (!part || !ckpart)
        return CS_NO_MEMORY;
    uint64_t head = 0, held = 0, replayed = 0;
    cs_audit_state *s = NULL;
    cs_err err = state_snapshot(a, &head, &held);
    if (err == CS_OK)
        err = cs__audit_scratch(a, 0, &s);
    if (err == CS_OK)
        err = replay_with_checkpoints(vc, ckpart, s, head);
    if (err == CS_CORRUPT) { /* the log verified, but an event makes no sense to the engine */
        char what[CS__AUDIT_ERRMSG_BYTES + 32];
        snprintf(what, sizeof(what), "stopped: %s", a->errmsg);
        err = part_diff(vc, part, json_pack("{s:s,s:s}", "type", "replay", "what", what));
        cs_audit_state_free(s);
        return err;
    }
    if (err == CS_OK)
        err = cs_engine_digest(s->e, &replayed);
    if (err == CS_OK) {
        vset(vc, part, "events", ju64(head));
        vset(vc, part, "checked", json_string(a->branch_dir ? "local items" : "all"));
        vset(vc, part, "digest", jhex(held));
        vset(vc, part, "replay_digest", jhex(replayed));
    }
    /* A branch's digest covers its copies, which its own log never wrote: walk its local items
     * instead. Elsewhere equal digests mean equal states, and the walk only names differences. */
    if (err == CS_OK && (a->branch_dir || held != replayed))
        err = state_walk(vc, part, s);
    if (err == CS_OK && !a->branch_dir && held != replayed &&
        json_integer_value(json_object_get(part, "count")) == 0)
        err = part_diff(vc, part,
                        json_pack("{s:s,s:s}", "type", "state", "what",
                                  "changed while it was verified: try again"));
    cs_audit_state_free(s);
    return err;
}

/* ---- step 3: the history index ------------------------------------------------------------ */

static cs_err verify_history(verify_ctx *vc)
{
    cs_audit *a = vc->a;
    json_t *part = part_new(vc, "history");
    MDB_txn *t;
    if (!part)
        return CS_NO_MEMORY;
    cs_err err = cs__audit_read_begin(a, a->log, &t);
    if (err != CS_OK)
        return err;
    uint64_t seen = cs__audit_meta_get(t, a->meta, "history_seq");
    uint64_t seen_chain = cs__audit_meta_get(t, a->meta, "history_chain");
    cs_log_read_end(a->log, t);
    vset(vc, part, "indexed", ju64(seen));
    uint64_t head = 0, chain = 0;
    err = cs__audit_log_point(a, 0, &head, NULL, NULL);
    if (err != CS_OK || seen == 0)
        return err;
    const char *what = NULL;
    if (seen > head)
        what = "has seen more events than the log holds: the log lost events";
    else if ((err = cs__audit_log_point(a, seen, &head, &chain, NULL)) != CS_OK)
        return err;
    else if (chain != seen_chain)
        what = "was built from another log (its chain is not the log's)";
    if (!what)
        return CS_OK;
    return part_diff(
        vc, part,
        json_pack("{s:s,s:I,s:s}", "type", "history index", "id", (json_int_t)seen, "what", what));
}

/* ---- step 1: the log ---------------------------------------------------------------------- */

static cs_err verify_log(verify_ctx *vc, bool *ok)
{
    cs_audit *a = vc->a;
    json_t *part = part_new(vc, "log");
    cs_log_reader *r = NULL;
    if (!part)
        return CS_NO_MEMORY;
    cs_err err = cs_log_reader_open(a->log, &r);
    uint64_t bad = 0, head = 0;
    if (err == CS_OK)
        err = cs_log_reader_verify(r, &bad);
    *ok = err == CS_OK;
    if (err == CS_OK)
        err = cs_log_reader_head(r, &head);
    vset(vc, part, "events", ju64(head));
    if (err == CS_CORRUPT) {
        char what[300];
        snprintf(what, sizeof(what), "does not verify: %s", cs_log_reader_errmsg(r));
        vset(vc, part, "bad_seq", ju64(bad));
        err = part_diff(
            vc, part,
            json_pack("{s:s,s:I,s:s}", "type", "event", "id", (json_int_t)bad, "what", what));
    } else if (err != CS_OK) {
        cs__audit_fail(a, err, "cannot read the log: %s", cs_log_reader_errmsg(r));
    }
    cs_log_reader_close(r);
    return err;
}

/* ---- step 4: a branch --------------------------------------------------------------------- */

static cs_err verify_branch(verify_ctx *vc, const char *dir);

cs_err cs_audit_verify(cs_audit *a, const char *branch_dir, json_t **report)
{
    a->errmsg[0] = '\0';
    verify_ctx vc = {.a = a, .report = json_pack("{s:b}", "ok", 1)};
    if (!vc.report)
        return CS_NO_MEMORY;
    bool log_ok = false;
    cs_err err = verify_log(&vc, &log_ok);
    if (err == CS_OK && log_ok)
        err = verify_state(&vc);
    if (err == CS_OK && log_ok)
        err = verify_history(&vc);
    if (err == CS_OK && log_ok && branch_dir)
        err = verify_branch(&vc, branch_dir);
    if (err == CS_OK && !log_ok) /* nothing after a bad event can be trusted: say so */
        for (const char *const *p = (const char *const[]){"state", "checkpoints", "history",
                                                          branch_dir ? "branch" : NULL, NULL};
             *p; p++)
            vset(&vc, vc.report, *p,
                 json_pack("{s:n,s:s}", "ok", "skipped", "the log does not verify"));
    if (err == CS_OK && vc.oom)
        err = cs__audit_fail(a, CS_NO_MEMORY, "out of memory while writing the report");
    if (err != CS_OK) {
        json_decref(vc.report);
        if (!a->errmsg[0])
            cs__audit_fail(a, err, "verification could not run");
        return err;
    }
    *report = vc.report;
    if (json_is_true(json_object_get(vc.report, "ok")))
        return CS_OK;
    snprintf(a->errmsg, sizeof(a->errmsg), "%s", vc.first);
    return CS_CORRUPT;
}

typedef struct branch_cmp {
    verify_ctx *vc;
    json_t *part;
    cs_branch *rb;     /* the branch directory */
    cs_audit_state *s; /* the replay */
    MDB_txn *tr;       /* a read transaction on rb */
    MDB_txn *ts;       /* a read transaction on s */
    json_t *outbox;    /* rb's shared-record writes not yet acknowledged */
    const char *label; /* raw walks: what the records are ("mirror", "dirty set") */
    uint64_t shop;
    uint64_t copies, shared, local, pending;
    msgpack_zone z;
} branch_cmp;

/* The one read transaction not begun by cs_log_read_begin: branch_dir_check's environment is
 * not a cs_log (cs_log_open would create databases in a directory that may not be ours). The
 * same rule applies: a map another process grew after mdb_env_open is adopted
 * (mdb_env_set_mapsize(env, 0), legal because nothing of env is open) and the begin retried. */
static int branch_dir_begin(MDB_env *env, MDB_txn **t)
{
    int rc = MDB_MAP_RESIZED;
    for (int attempt = 0; attempt < 8 && rc == MDB_MAP_RESIZED; attempt++) {
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, t);
        if (rc == MDB_MAP_RESIZED && (rc = mdb_env_set_mapsize(env, 0)) == 0)
            rc = MDB_MAP_RESIZED; /* adopted: begin again */
    }
    return rc;
}

/* Refuses what is not another directory holding a branch, before cs_branch_open would create
 * the projection's databases in it. *real gets the resolved path. */
static cs_err branch_dir_check(cs_audit *a, const char *dir, char real[PATH_MAX])
{
    char self[PATH_MAX], path[PATH_MAX + 16];
    const char *own = NULL;
    struct stat st;
    if (!realpath(dir, real))
        return cs__audit_fail(a, CS_NOT_FOUND, "the branch directory %s does not exist", dir);
    if (mdb_env_get_path(cs_log_env(a->log), &own) == 0 && realpath(own, self) &&
        strcmp(self, real) == 0)
        return cs__audit_fail(a, CS_INVALID_INPUT,
                              "--branch names the audited directory itself: give the head "
                              "office's directory with --data and the branch's with --branch");
    snprintf(path, sizeof(path), "%s/data.mdb", real);
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return cs__audit_fail(a, CS_NOT_FOUND, "%s holds no chainsync store", dir);
    MDB_env *env = NULL;
    MDB_txn *t = NULL;
    MDB_dbi d;
    int rc = mdb_env_create(&env);
    if (rc == 0 && (rc = mdb_env_set_maxdbs(env, 32)) == 0 &&
        (rc = mdb_env_open(env, real, MDB_RDONLY, 0600)) == 0)
        rc = branch_dir_begin(env, &t);
    if (rc == 0) {
        rc = mdb_dbi_open(t, "branch", 0, &d);
        mdb_txn_abort(t);
    }
    if (env)
        mdb_env_close(env);
    if (rc == MDB_NOTFOUND)
        return cs__audit_fail(a, CS_INVALID_INPUT, "%s is not a branch directory", dir);
    if (rc)
        return cs__audit_fail(a, CS_IO, "cannot open %s: %s", dir, mdb_strerror(rc));
    return CS_OK;
}

static cs_err state_field_diff(branch_cmp *bc, const char *key, uint64_t held, uint64_t replay)
{
    if (held == replay)
        return CS_OK;
    char what[128];
    snprintf(what, sizeof(what), "is %llu, a replay says %llu", (unsigned long long)held,
             (unsigned long long)replay);
    return part_diff(bc->vc, bc->part,
                     json_pack("{s:s,s:s,s:s}", "type", "branch", "key", key, "what", what));
}

/* The projection's own state: where it is, its last sync point, switch, mode, synced types. */
static cs_err branch_state_cmp(branch_cmp *bc, const cs__bstate *x, const cs__bstate *y)
{
    cs_err err = state_field_diff(bc, "head", x->head, y->head);
    if (err == CS_OK)
        err = state_field_diff(bc, "sync_seq", x->sync_seq, y->sync_seq);
    if (err == CS_OK)
        err = state_field_diff(bc, "linked", x->linked, y->linked);
    if (err == CS_OK)
        err = state_field_diff(bc, "switch", x->sync_on, y->sync_on);
    if (err == CS_OK)
        err = state_field_diff(bc, "continuous", x->continuous, y->continuous);
    if (err == CS_OK)
        err = state_field_diff(bc, "unlinked", x->unlinked, y->unlinked);
    if (err == CS_OK)
        err = state_field_diff(bc, "types (bit mask of type codes)", x->types_mask.bits,
                               y->types_mask.bits);
    return err;
}

/* Reads an item and packs its fields with references translated back to head ids; it->fields
 * then points at the translated fields (in bc->z). */
static cs_err read_unmapped(branch_cmp *bc, MDB_txn *t, MDB_dbi items, const cs_type *type,
                            uint64_t id, cs_item *it)
{
    cs_err err = cs_item_read(t, items, type, id, &bc->z, it);
    if (err != CS_OK)
        return err;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    err = cs__audit_unmap_fields(t, items, type, &it->fields, &sb);
    /* msgpack_unpack leaves strings pointing into its input: keep the input in the zone. */
    char *copy = err == CS_OK ? msgpack_zone_malloc(&bc->z, sb.size) : NULL;
    size_t off = 0;
    if (err == CS_OK && copy)
        memcpy(copy, sb.data, sb.size);
    if (err == CS_OK && (!copy || msgpack_unpack(copy, sb.size, &off, &bc->z, &it->fields) !=
                                      MSGPACK_UNPACK_SUCCESS))
        err = CS_NO_MEMORY;
    msgpack_sbuffer_destroy(&sb);
    return err;
}

static bool items_equal(const cs_item *x, const cs_item *y)
{
    return x->version == y->version && x->archived == y->archived &&
           x->has_origin == y->has_origin &&
           (!x->has_origin || memcmp(x->origin, y->origin, sizeof(x->origin)) == 0) &&
           x->has_detached == y->has_detached &&
           (!x->has_detached || memcmp(x->detached, y->detached, sizeof(x->detached)) == 0) &&
           msgpack_object_equal(x->fields, y->fields);
}

/* One origin-index key (type, head id) on either side: the copies it names must be equal. */
static cs_err copy_differ(const MDB_val *k, const MDB_val *va, const MDB_val *vb, void *ctx)
{
    branch_cmp *bc = ctx;
    const uint8_t *kb = k->mv_data;
    const cs_type *t = k->mv_size == 9 ? cs_schema_by_code(kb[0]) : NULL;
    if (!t || (va && va->mv_size != 8) || (vb && vb->mv_size != 8))
        return part_diff(
            bc->vc, bc->part,
            json_pack("{s:s,s:s}", "type", "origin index", "what", "holds a malformed entry"));
    uint64_t head_id = cs_be64_get(kb + 1);
    char what[160];
    if (!va)
        return part_diff(bc->vc, bc->part,
                         item_diff_new(kb[0], head_id,
                                       "has no copy on the branch: a replay "
                                       "of the head office's log gives it one"));
    uint64_t copy_id = cs_be64_get(va->mv_data);
    if (!vb) {
        snprintf(what, sizeof(what), "has copy %llu on the branch, which a replay does not give",
                 (unsigned long long)copy_id);
        return part_diff(bc->vc, bc->part, item_diff_new(kb[0], head_id, what));
    }
    bc->copies++;
    cs_item x, y;
    msgpack_zone_clear(&bc->z);
    cs_err err = read_unmapped(bc, bc->tr, bc->rb->items, t, copy_id, &x);
    if (err == CS_NOT_FOUND) {
        snprintf(what, sizeof(what), "is copy %llu in the origin index, which the catalog lacks",
                 (unsigned long long)copy_id);
        return part_diff(bc->vc, bc->part, item_diff_new(kb[0], head_id, what));
    }
    if (err == CS_OK)
        err = read_unmapped(bc, bc->ts, cs_engine_items_dbi(bc->s->e), t, cs_be64_get(vb->mv_data),
                            &y);
    if (err != CS_OK || items_equal(&x, &y))
        return err == CS_CORRUPT
                   ? part_diff(bc->vc, bc->part,
                               item_diff_new(kb[0], head_id, "has a copy that does not read back"))
                   : err;
    snprintf(what, sizeof(what), "(copy %llu on the branch) differs from a replay",
             (unsigned long long)copy_id);
    json_t *d = item_diff_new(kb[0], head_id, what);
    if (d && (json_object_set_new(d, "copy", json_integer((json_int_t)copy_id)) ||
              item_describe(t, &x, &y, what, d) != CS_OK)) {
        json_decref(d);
        return CS_NO_MEMORY;
    }
    return part_diff(bc->vc, bc->part, d);
}

/* Every copy in the branch's catalog must be the one its origin index names; items without a
 * link are local items, counted only. */
static cs_err copies_indexed(branch_cmp *bc)
{
    MDB_cursor *cur;
    if (mdb_cursor_open(bc->tr, bc->rb->items, &cur))
        return CS_IO;
    MDB_val k, v;
    int rc;
    cs_err err = CS_OK;
    while (err == CS_OK && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        const uint8_t *kb = k.mv_data;
        const cs_type *t = k.mv_size == 9 ? cs_schema_by_code(kb[0]) : NULL;
        cs_item it;
        msgpack_zone_clear(&bc->z);
        if (!t || cs_item_parse(&v, &bc->z, &it) != CS_OK) {
            err = part_diff(bc->vc, bc->part,
                            json_pack("{s:s,s:s}", "type", "items", "what",
                                      "a record of the branch's catalog does not read back"));
            continue;
        }
        if (!it.has_origin && !it.has_detached) {
            bc->local += t->cls == CS_CLASS_SYNCED;
            continue;
        }
        uint8_t ok[9];
        ok[0] = kb[0];
        cs_be64_put(ok + 1, it.has_origin ? it.origin[1] : it.detached[1]);
        MDB_val ik = {9, ok}, iv;
        if (mdb_get(bc->tr, bc->rb->origin, &ik, &iv) == 0 && iv.mv_size == 8 &&
            memcmp(iv.mv_data, kb + 1, 8) == 0)
            continue;
        char what[160];
        snprintf(what, sizeof(what),
                 "is copy %llu on the branch, which its origin index "
                 "does not name",
                 (unsigned long long)cs_be64_get(kb + 1));
        err = part_diff(bc->vc, bc->part, item_diff_new(kb[0], cs_be64_get(ok + 1), what));
    }
    mdb_cursor_close(cur);
    return err == CS_OK && rc != MDB_NOTFOUND ? CS_IO : err;
}

static bool keep_shared(const MDB_val *k, const MDB_val *v, void *ctx)
{
    (void)v, (void)ctx;
    const cs_type *t = k->mv_size == 9 ? cs_schema_by_code(((const uint8_t *)k->mv_data)[0]) : NULL;
    return t && t->cls == CS_CLASS_SHARED;
}

/* A shared record the branch wrote that the head office has not acknowledged yet (R8). */
static bool pending(const branch_cmp *bc, const cs_type *t, uint64_t id)
{
    if ((id >> 32) == bc->shop)
        return true; /* allocated here: it reaches the head office's log later */
    for (size_t i = 0; i < json_array_size(bc->outbox); i++) {
        json_t *o = json_array_get(bc->outbox, i);
        const char *type = json_string_value(json_object_get(o, "type"));
        if (type && strcmp(type, t->name) == 0 &&
            (uint64_t)json_integer_value(json_object_get(o, "id")) == id)
            return true;
    }
    return false;
}

static cs_err shared_differ(const MDB_val *k, const MDB_val *va, const MDB_val *vb, void *ctx)
{
    branch_cmp *bc = ctx;
    const uint8_t *kb = k->mv_data;
    const cs_type *t = cs_schema_by_code(kb[0]);
    uint64_t id = cs_be64_get(kb + 1);
    if (va && pending(bc, t, id)) {
        bc->pending++;
        return CS_OK;
    }
    if (!va)
        return part_diff(bc->vc, bc->part,
                         item_diff_new(kb[0], id,
                                       "is missing on the branch: the head office's "
                                       "log has it"));
    if (!vb)
        return part_diff(bc->vc, bc->part,
                         item_diff_new(kb[0], id,
                                       "is on the branch but not in the head office's "
                                       "log up to the branch's cursor"));
    cs_item x, y;
    msgpack_zone_clear(&bc->z);
    json_t *d = item_diff_new(kb[0], id, "differs from a replay");
    if (d && cs_item_parse(va, &bc->z, &x) == CS_OK && cs_item_parse(vb, &bc->z, &y) == CS_OK &&
        item_describe(t, &x, &y, "differs from a replay", d) != CS_OK) {
        json_decref(d);
        return CS_NO_MEMORY;
    }
    return part_diff(bc->vc, bc->part, d);
}

static bool count_shared(const MDB_val *k, const MDB_val *v, void *ctx)
{
    branch_cmp *bc = ctx;
    bool keep = keep_shared(k, v, ctx);
    bc->shared += keep;
    return keep;
}

/* The mirror and the dirty set are keyed by (type, head id) on both sides: compared as bytes. */
static cs_err raw_differ(const MDB_val *k, const MDB_val *va, const MDB_val *vb, void *ctx)
{
    branch_cmp *bc = ctx;
    const uint8_t *kb = k->mv_data;
    char what[160];
    snprintf(what, sizeof(what), "%s entry %s", bc->label,
             !va   ? "is missing on the branch"
             : !vb ? "is not in a replay"
                   : "differs from a replay");
    if (k->mv_size != 9)
        return part_diff(bc->vc, bc->part,
                         json_pack("{s:s,s:s}", "type", bc->label, "what", "a malformed key"));
    return part_diff(bc->vc, bc->part, item_diff_new(kb[0], cs_be64_get(kb + 1), what));
}

static cs_err branch_compare(branch_cmp *bc)
{
    cs__bstate x, y;
    cs_err err = cs__state_load(bc->rb, bc->tr, &x);
    if (err == CS_OK)
        err = cs__state_load(bc->s->b, bc->ts, &y);
    if (err == CS_OK)
        err = branch_state_cmp(bc, &x, &y);
    if (err == CS_OK)
        err = walk_compare(bc->tr, bc->rb->origin, NULL, bc->ts, bc->s->b->origin, NULL, true,
                           copy_differ, bc);
    if (err == CS_OK)
        err = copies_indexed(bc);
    if (err == CS_OK)
        err = walk_compare(bc->tr, bc->rb->items, keep_shared, bc->ts, bc->s->b->items,
                           count_shared, false, shared_differ, bc);
    bc->label = "mirror";
    if (err == CS_OK)
        err = walk_compare(bc->tr, bc->rb->mirror, NULL, bc->ts, bc->s->b->mirror, NULL, false,
                           raw_differ, bc);
    bc->label = "dirty set";
    if (err == CS_OK)
        err = walk_compare(bc->tr, bc->rb->dirty, NULL, bc->ts, bc->s->b->dirty, NULL, false,
                           raw_differ, bc);
    return err;
}

/* Opens the branch, checks it follows this log, and replays a scratch branch to its cursor. */
static cs_err branch_prepare(branch_cmp *bc, const char *real, cs__bstate *st)
{
    cs_audit *a = bc->vc->a;
    /* Read-only: the branch being checked is not written either. */
    const cs_log_options ro = {.flags = CS_LOG_READ_ONLY};
    cs_err err = cs_branch_open(real, &ro, &bc->rb);
    if (err != CS_OK)
        return cs__audit_fail(a, err, "cannot open the branch directory %s", real);
    MDB_txn *t;
    cs_log *blog = cs_engine_log(bc->rb->engine);
    if ((err = cs__audit_read_begin(a, blog, &t)) != CS_OK)
        return err;
    err = cs__state_load(bc->rb, t, st);
    cs_log_read_end(blog, t);
    if (err == CS_OK && st->shop == 0)
        return cs__audit_fail(a, CS_INVALID_INPUT, "%s is not bound to a shop", real);
    if (err == CS_OK)
        err = cs_engine_outbox(bc->rb->engine, &bc->outbox);
    if (err != CS_OK)
        return a->errmsg[0] ? err : cs__audit_fail(a, err, "cannot read the branch's state");
    bc->shop = st->shop;
    vset(bc->vc, bc->part, "shop", ju64(st->shop));
    vset(bc->vc, bc->part, "cursor", ju64(st->cursor));
    uint64_t head = 0, chain = 0;
    err = cs__audit_log_point(a, 0, &head, NULL, NULL);
    if (err == CS_OK && st->cursor > head) {
        char what[200];
        snprintf(what, sizeof(what),
                 "is at event %llu but this log holds %llu: another head "
                 "office's, or this log lost events",
                 (unsigned long long)st->cursor, (unsigned long long)head);
        err =
            part_diff(bc->vc, bc->part,
                      json_pack("{s:s,s:s,s:s}", "type", "branch", "key", "cursor", "what", what));
        return err == CS_OK ? CS_CORRUPT : err; /* nothing to compare against */
    }
    if (err == CS_OK && st->cursor > 0)
        err = cs__audit_log_point(a, st->cursor, &head, &chain, NULL);
    if (err == CS_OK && st->cursor > 0 && chain != st->chain) {
        err = part_diff(bc->vc, bc->part,
                        json_pack("{s:s,s:s,s:s}", "type", "branch", "key", "cursor", "what",
                                  "followed another log: the event at its cursor differs"));
        return err == CS_OK ? CS_CORRUPT : err;
    }
    cs_audit_state *s = NULL;
    if (err == CS_OK)
        err = cs_audit_branch_at(a, st->cursor, st->shop, &s);
    bc->s = s;
    return err;
}

static cs_err verify_branch(verify_ctx *vc, const char *dir)
{
    cs_audit *a = vc->a;
    char real[PATH_MAX];
    branch_cmp bc = {.vc = vc, .part = part_new(vc, "branch")};
    if (!bc.part)
        return CS_NO_MEMORY;
    vset(vc, bc.part, "dir", json_string(dir));
    cs_err err = branch_dir_check(a, dir, real);
    cs__bstate st;
    if (err == CS_OK)
        err = branch_prepare(&bc, real, &st);
    if (err == CS_OK && !msgpack_zone_init(&bc.z, 4096))
        err = CS_NO_MEMORY;
    else if (err == CS_OK) {
        err = cs__audit_read_begin(a, cs_engine_log(bc.rb->engine), &bc.tr);
        if (err == CS_OK)
            err = cs__audit_read_begin(a, cs_engine_log(bc.s->e), &bc.ts);
        if (err == CS_OK)
            err = branch_compare(&bc);
        cs_log_read_end(cs_engine_log(bc.s->e), bc.ts); /* both accept NULL */
        cs_log_read_end(cs_engine_log(bc.rb->engine), bc.tr);
        msgpack_zone_destroy(&bc.z);
    }
    if (err == CS_CORRUPT && !json_is_true(json_object_get(bc.part, "ok")))
        err = CS_OK; /* a reported difference, not a failure to check */
    vset(vc, bc.part, "copies_checked", ju64(bc.copies));
    vset(vc, bc.part, "shared_checked", ju64(bc.shared));
    vset(vc, bc.part, "local_not_checked", ju64(bc.local));
    vset(vc, bc.part, "pending_not_checked", ju64(bc.pending));
    json_decref(bc.outbox);
    cs_audit_state_free(bc.s);
    cs_branch_close(bc.rb);
    return err;
}
