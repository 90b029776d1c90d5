/*
 * test_fixtures.c: logs written by earlier versions still replay to the state they had (issue
 * 14, "A format that outlives versions"). tests/fixtures/v1/ holds a head office's log written
 * by schema version 1 (made by tests/fixtures/make-v1.sh with that version's CLI) and what that
 * build said the head office and each branch held. This build replays it, as the head office
 * (a fresh log given the same events, checked byte for byte through the hash chain, then the
 * engine's replay) and as each branch (the file applied as `branch import` applies it), and
 * must reach the same state: the same state digest, the same item objects, the same cursors.
 *
 * Every later version must keep passing this test unchanged: the fixture files are history and
 * are never regenerated. A schema change that rewrites old items (a rename, a default) changes
 * what this build reads, on purpose: the expected items are then read through the same change
 * table (cs_schema_upgrade) before they are compared, and docs/design.md "Schema versions" says
 * what to do about the digest. Needs CS_SRC (tests/CMakeLists.txt sets it).
 */
#include "projections/projection.h"
#include "tests/harness.h"

#include <jansson.h>
#include <stdint.h>

static const cs_log_options nosync_opts = {.flags = CS_LOG_NOSYNC};

static const char *const all_types[] = {"service_category",
                                        "service",
                                        "combo",
                                        "plan",
                                        "payment_method",
                                        "checklist",
                                        "notification_template",
                                        "petcare_category",
                                        "document_template",
                                        "vaccine",
                                        "segment",
                                        "advanced_setting",
                                        "species",
                                        "breed",
                                        "customer",
                                        "pet",
                                        "breeding_animal",
                                        "custom_field"};
#define NTYPES (sizeof(all_types) / sizeof(all_types[0]))

static void fixture_path(char *out, size_t len, const char *name)
{
    const char *src = getenv("CS_SRC");
    snprintf(out, len, "%s/tests/fixtures/v1/%s", src ? src : ".", name);
}

/* The whole file, NUL-terminated, or NULL. */
static char *slurp(const char *name, size_t *len_out)
{
    char path[1024];
    fixture_path(path, sizeof(path), name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) &&
        fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        if (len_out)
            *len_out = (size_t)n;
    }
    return buf;
}

/* One JSON value per line of the fixture file, as an array; NULL when a line is not JSON. */
static json_t *jsonl(const char *name)
{
    char *text = slurp(name, NULL);
    json_t *arr = text ? json_array() : NULL;
    for (char *line = text, *next; arr && line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        json_t *v = json_loads(line, 0, NULL);
        if (!v || json_array_append_new(arr, v) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    free(text);
    return arr;
}

/* An expected item object as this build reads it: its fields through the change table from
 * version 1 (today nothing changes for version 1's items: version 2 only added an optional
 * field). NULL on failure. */
static json_t *expected_now(const json_t *item)
{
    const cs_type *t = cs_schema_find(json_string_value(json_object_get(item, "type")));
    if (!t)
        return NULL;
    json_t *fields = json_deep_copy(item);
    static const char *const meta[] = {"type",     "id",     "version",
                                       "archived", "origin", "detached_from"};
    for (size_t i = 0; fields && i < sizeof(meta) / sizeof(meta[0]); i++)
        json_object_del(fields, meta[i]);
    uint8_t *packed = NULL, *up = NULL;
    size_t len = 0, up_len = 0;
    char msg[200];
    json_t *out = NULL;
    if (fields && cs_schema_from_json(t, fields, &packed, &len, msg, sizeof(msg)) == CS_OK &&
        cs_schema_upgrade(t, 1, packed, len, &up, &up_len, msg, sizeof(msg)) == CS_OK) {
        out = json_deep_copy(item);
        if (up) { /* the fields as upgraded, the item's other keys as they were */
            msgpack_zone z;
            msgpack_object o;
            size_t off = 0;
            json_t *jf = NULL;
            if (msgpack_zone_init(&z, 1024)) {
                if (msgpack_unpack((const char *)up, up_len, &off, &z, &o) ==
                        MSGPACK_UNPACK_SUCCESS &&
                    cs_schema_to_json(t, &o, &jf) == CS_OK) {
                    for (size_t i = 0; i < t->nfields; i++)
                        json_object_del(out, t->fields[i].name);
                    json_object_update(out, jf);
                }
                json_decref(jf);
                msgpack_zone_destroy(&z);
            }
        }
    }
    free(packed);
    free(up);
    json_decref(fields);
    return out;
}

/* Every type's items, live then archived, as `list TYPE --json-out` lists them (make-v1.sh's
 * order), compared with the fixture file `name`. */
static bool items_match(cs_engine *e, const char *name)
{
    json_t *want = jsonl(name), *got = json_array();
    bool ok = want && got;
    for (size_t i = 0; ok && i < NTYPES; i++)
        for (int archived = 0; ok && archived < 2; archived++) {
            json_t *l = NULL;
            ok = cs_engine_list(e, all_types[i], archived, &l) == CS_OK &&
                 json_array_extend(got, l) == 0;
            json_decref(l);
        }
    if (ok && json_array_size(got) != json_array_size(want)) {
        fprintf(stderr, "  %s: %zu items, the fixture has %zu\n", name, json_array_size(got),
                json_array_size(want));
        ok = false;
    }
    for (size_t i = 0; ok && i < json_array_size(want); i++) {
        json_t *w = expected_now(json_array_get(want, i)), *g = json_array_get(got, i);
        if (!w || !json_equal(w, g)) {
            char *ws = w ? json_dumps(w, JSON_COMPACT) : NULL, *gs = json_dumps(g, JSON_COMPACT);
            fprintf(stderr, "  %s line %zu:\n    want %s\n    got  %s\n", name, i + 1,
                    ws ? ws : "(unreadable)", gs ? gs : "?");
            free(ws);
            free(gs);
            ok = false;
        }
        json_decref(w);
    }
    json_decref(want);
    json_decref(got);
    return ok;
}

/* ---- the head office --------------------------------------------------------------------- */

typedef struct copy_ctx {
    const uint8_t *seg; /* the fixture's segments, one after another */
    size_t len;
    cs_event_decoder *dec;
    uint64_t events;
    bool same_seqs; /* every appended event got the fixture's sequence */
} copy_ctx;

/* Appends the fixture's events to an empty log, one transaction for all: the same events, each
 * re-encoded from its decoded form (version 1 stays version 1: no `schema` key). */
static cs_err copy_fn(cs_log_txn *txn, void *ctx)
{
    copy_ctx *c = ctx;
    c->events = 0;
    c->same_seqs = true;
    for (size_t at = 0; at < c->len;) {
        size_t size;
        cs_segment_view v;
        cs_err err = cs_segment_size(c->seg + at, c->len - at, &size);
        if (err == CS_OK)
            err = cs_segment_open(c->seg + at, size, &v);
        if (err != CS_OK)
            return err;
        cs_log_record rec;
        while ((err = cs_segment_next(&v, &rec)) == CS_OK) {
            cs_event_view ev;
            if ((err = cs_event_decode(c->dec, rec.event, rec.event_len, &ev)) != CS_OK)
                return err;
            cs_event in = {.time_ms = ev.time_ms,
                           .shop = ev.shop,
                           .id = ev.id,
                           .version = ev.version,
                           .actor = ev.actor,
                           .kind = ev.kind,
                           .type = ev.type,
                           .fields = ev.fields_bytes,
                           .fields_len = ev.fields_len,
                           .schema = (uint32_t)ev.schema};
            uint64_t seq;
            if ((err = cs_log_txn_append(txn, &in, 1, &seq)) != CS_OK)
                return err;
            c->same_seqs = c->same_seqs && seq == rec.seq;
            c->events++;
        }
        if (err != CS_NOT_FOUND)
            return err;
        at += size;
    }
    return CS_OK;
}

/* Issue 14: the version-1 log, replayed by this build's engine, reaches the state digest and
 * the items the version-1 build recorded. */
static void test_fixture_v1_head_office_replays_to_the_same_state(void)
{
    size_t len;
    char *seg = slurp("hq.seg", &len), *digest = slurp("digest.txt", NULL);
    char *logdir = cs_test_tmpdir_kept("fix-log"), *dir = cs_test_tmpdir_kept("fix-hq");
    CHECK(seg && digest && logdir && dir);
    cs_log *log = NULL;
    cs_engine *e = NULL;
    copy_ctx c = {.seg = (const uint8_t *)seg, .len = len};
    cs_log_reader *r = NULL;
    bool ok = cs_log_open(logdir, &nosync_opts, &log) == CS_OK &&
              cs_event_decoder_new(&c.dec) == CS_OK && cs_log_write(log, copy_fn, &c) == CS_OK;
    cs_event_decoder_free(c.dec);
    /* The chain of the copy equals the fixture's: cs_log_reader_verify walks it; and the head
     * record's chain must be the last one the fixture's segments carry. */
    uint64_t bad = 0, head = 0;
    ok = ok && cs_log_reader_open(log, &r) == CS_OK && cs_log_reader_verify(r, &bad) == CS_OK &&
         cs_log_reader_head(r, &head) == CS_OK;
    cs_log_record last = {0};
    ok = ok && cs_log_reader_get(r, head, &last) == CS_OK;
    size_t size;
    cs_segment_view v;
    cs_log_record rec;
    uint64_t fixture_chain = 0;
    for (size_t at = 0; ok && at < len; at += size) {
        ok = cs_segment_size((const uint8_t *)seg + at, len - at, &size) == CS_OK &&
             cs_segment_open((const uint8_t *)seg + at, size, &v) == CS_OK;
        while (ok && cs_segment_next(&v, &rec) == CS_OK)
            fixture_chain = rec.chain;
    }
    ok = ok && c.same_seqs && head == c.events && last.chain == fixture_chain;
    if (!ok)
        fprintf(stderr, "  the fixture's log does not copy byte for byte (%llu events)\n",
                (unsigned long long)c.events);
    /* The engine's replay of it: the head office's state, as `audit verify` computes it. */
    uint64_t d = 0;
    char hex[17] = "";
    if (ok)
        ok = cs_engine_open(dir, &nosync_opts, &e) == CS_OK &&
             cs_engine_replay_range(e, r, 1, UINT64_MAX, NULL) == CS_OK &&
             cs_engine_digest(e, &d) == CS_OK;
    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)d);
    if (ok && strncmp(hex, digest, 16) != 0)
        fprintf(stderr, "  state digest %s, version 1 had %.16s\n", hex, digest);
    bool same_digest = ok && strncmp(hex, digest, 16) == 0;
    bool items = ok && items_match(e, "hq-items.jsonl");
    cs_log_reader_close(r);
    cs_engine_close(e);
    cs_log_close(log);
    free(seg);
    free(digest);
    CHECK(ok);
    CHECK(head == 37);
    CHECK(same_digest);
    CHECK(items);
}

/* ---- the branches ------------------------------------------------------------------------ */

/* Issue 14: each branch of the fixture, given the version-1 log as `branch import` gives it,
 * reaches the cursor, sync point, link state and items the version-1 build recorded. */
static void test_fixture_v1_branches_replay_to_the_same_state(void)
{
    char *shops = slurp("shops.txt", NULL), path[1024];
    CHECK(shops);
    fixture_path(path, sizeof(path), "hq.seg");
    char name[64];
    unsigned long long shop;
    int n = 0, pos = 0, used;
    bool ok = true;
    while (ok && sscanf(shops + pos, "%63s %llu%n", name, &shop, &used) == 2) {
        pos += used;
        n++;
        char *dir = cs_test_tmpdir_kept("fix-branch"), file[128];
        cs_branch *b = NULL;
        uint64_t applied = 0;
        cs_branch_state st = {0};
        ok = dir && cs_branch_open(dir, &nosync_opts, &b) == CS_OK &&
             cs_branch_bind(b, shop) == CS_OK &&
             cs_branch_import_file(b, path, &applied) == CS_OK &&
             cs_branch_state_get(b, &st) == CS_OK;
        if (!ok)
            fprintf(stderr, "  branch %s: %s\n", name, b ? cs_branch_errmsg(b) : "cannot open");
        snprintf(file, sizeof(file), "branch-%s.import.json", name);
        char *imp = ok ? slurp(file, NULL) : NULL;
        json_t *want = imp ? json_loads(imp, 0, NULL) : NULL;
        ok = ok && want &&
             json_integer_value(json_object_get(want, "applied")) == (json_int_t)applied &&
             json_integer_value(json_object_get(want, "cursor")) == (json_int_t)st.cursor &&
             json_integer_value(json_object_get(want, "sync_seq")) == (json_int_t)st.sync_seq &&
             json_is_true(json_object_get(want, "linked")) == st.linked;
        if (!ok && want)
            fprintf(stderr, "  branch %s: applied %llu cursor %llu sync %llu linked %d, not %s",
                    name, (unsigned long long)applied, (unsigned long long)st.cursor,
                    (unsigned long long)st.sync_seq, st.linked, imp);
        snprintf(file, sizeof(file), "branch-%s.jsonl", name);
        ok = ok && items_match(cs_branch_engine(b), file);
        json_decref(want);
        free(imp);
        cs_branch_close(b);
    }
    free(shops);
    CHECK(ok);
    CHECK(n == 3);
}

int main(void)
{
    RUN(test_fixture_v1_head_office_replays_to_the_same_state);
    RUN(test_fixture_v1_branches_replay_to_the_same_state);
    cs_test_tmpdirs_cleanup();
    return cs_test_finish();
}
