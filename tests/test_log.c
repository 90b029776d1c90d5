/*
 * test_log.c: the event log's contract (SPEC section 4, codes from section 6), one rule per
 * test: events round-trip field by field; sequences and times are assigned as promised; bad
 * input is refused whole with invalid_input; a changed, lost or reordered byte on disk is found
 * on read and by verify; hostile msgpack is refused before msgpack-c allocates for it; a full
 * map refuses an append whole and leaves the log intact.
 *
 * The corruption tests edit a closed data directory with LMDB's own API (the layout is in
 * docs/storage.md: dbi "events", key = seq as 8 big-endian bytes, value = checksum(8) chain(8)
 * msgpack event), so they depend on that layout and nothing else of the module's insides.
 * Kill -9 durability is in test_log_crash.c, segments in test_segment.c.
 */
#include "log/log.h"
#include "tests/harness.h"

#include <ctype.h>
#include <errno.h>
#include <lmdb.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

/* ---- helpers ----------------------------------------------------------------------------- */

/* A test's data directory, its open log and a decoder. */
typedef struct fx {
    char *dir;
    cs_log *log;
    cs_event_decoder *dec;
} fx;

static bool fx_open(fx *f, const char *tag, const cs_log_options *opts)
{
    memset(f, 0, sizeof(*f));
    f->dir = cs_test_tmpdir(tag);
    if (!f->dir)
        return false;
    return cs_log_open(f->dir, opts, &f->log) == CS_OK && cs_event_decoder_new(&f->dec) == CS_OK;
}

static void fx_close(fx *f)
{
    cs_event_decoder_free(f->dec);
    cs_log_close(f->log);
    if (f->dir)
        cs_test_rmtree(f->dir);
    free(f->dir);
    memset(f, 0, sizeof(*f));
}

/* Closes and reopens the log (a new process would see the same). */
static cs_err fx_reopen(fx *f, const cs_log_options *opts)
{
    cs_log_close(f->log);
    f->log = NULL;
    return cs_log_open(f->dir, opts, &f->log);
}

static cs_err log_head(cs_log *log, uint64_t *head)
{
    cs_log_reader *r;
    cs_err err = cs_log_reader_open(log, &r);
    if (err != CS_OK)
        return err;
    err = cs_log_reader_head(r, head);
    cs_log_reader_close(r);
    return err;
}

static cs_err log_verify(cs_log *log, uint64_t *bad_seq)
{
    cs_log_reader *r;
    cs_err err = cs_log_reader_open(log, &r);
    if (err != CS_OK)
        return err;
    err = cs_log_reader_verify(r, bad_seq);
    cs_log_reader_close(r);
    return err;
}

/* Reads and decodes one event through a short-lived reader. */
static cs_err log_read_event(fx *f, uint64_t seq, cs_event_view *out)
{
    cs_log_reader *r;
    cs_log_record rec;
    cs_err err = cs_log_reader_open(f->log, &r);
    if (err != CS_OK)
        return err;
    err = cs_log_reader_get(r, seq, &rec);
    if (err == CS_OK)
        err = cs_event_decode(f->dec, rec.event, rec.event_len, out);
    cs_log_reader_close(r);
    return err;
}

static bool str_eq(cs_str a, cs_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* True when msg mentions the number seq on its own (not as part of a longer number). */
static bool msg_names_seq(const char *msg, uint64_t seq)
{
    char want[24];
    snprintf(want, sizeof(want), "%llu", (unsigned long long)seq);
    size_t n = strlen(want);
    for (const char *p = strstr(msg, want); p; p = strstr(p + 1, want)) {
        bool left_ok = p == msg || !isdigit((unsigned char)p[-1]);
        if (left_ok && !isdigit((unsigned char)p[n]))
            return true;
    }
    return false;
}

static cs_event plain_event(uint64_t id)
{
    return (cs_event){.shop = 1,
                      .id = id,
                      .version = 1,
                      .actor = CS_STR("ana"),
                      .kind = CS_STR("put"),
                      .type = CS_STR("service")};
}

/* Appends n events with ids first_id.. and empty fields, in one batch. */
static cs_err append_plain(cs_log *log, size_t n, uint64_t first_id, uint64_t *first_seq)
{
    cs_event *evs = calloc(n ? n : 1, sizeof(*evs));
    if (!evs)
        return CS_NO_MEMORY;
    for (size_t i = 0; i < n; i++)
        evs[i] = plain_event(first_id + i);
    cs_err err = cs_log_append(log, evs, n, first_seq);
    free(evs);
    return err;
}

static int pack_key(msgpack_packer *pk, const char *key)
{
    return msgpack_pack_str_with_body(pk, key, strlen(key));
}

/* fields = {"note": <note_bytes of 'x'>}: an item of about that size. */
static bool pack_note(msgpack_sbuffer *sb, size_t note_bytes)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    char *note = malloc(note_bytes ? note_bytes : 1);
    if (!note)
        return false;
    memset(note, 'x', note_bytes);
    int rc = msgpack_pack_map(&pk, 1) || pack_key(&pk, "note") ||
             msgpack_pack_str_with_body(&pk, note, note_bytes);
    free(note);
    return rc == 0;
}

/* One array of `count` events sharing `fields`, ids 1..count. Owned by the caller (free()). */
static cs_event *events_with_fields(size_t count, const msgpack_sbuffer *fields)
{
    cs_event *evs = calloc(count, sizeof(*evs));
    if (!evs)
        return NULL;
    for (size_t i = 0; i < count; i++) {
        evs[i] = plain_event(i + 1);
        evs[i].fields = (const uint8_t *)fields->data;
        evs[i].fields_len = fields->size;
    }
    return evs;
}

/* ---- round trip -------------------------------------------------------------------------- */

/* A map holding every msgpack kind, each in more than one width where msgpack has several. */
static bool pack_every_kind(msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    static const uint8_t bin[] = {0x00, 0x01, 0xc1, 0xff};
    static const char ext[] = {'e', 'x', 't'};
    static const char utf8[] = "ol\xc3\xa1";
    char long_str[300];
    memset(long_str, 'z', sizeof(long_str));
    /* msgpack-c returns 0 on success: `||` stops at the first failure and keeps the order. */
    int rc = msgpack_pack_map(&pk, 21);
    rc = rc || pack_key(&pk, "uint_fix") || msgpack_pack_uint8(&pk, 7);
    rc = rc || pack_key(&pk, "uint16") || msgpack_pack_uint16(&pk, 300);
    rc = rc || pack_key(&pk, "uint64_max") || msgpack_pack_uint64(&pk, UINT64_MAX);
    rc = rc || pack_key(&pk, "uint_wide") || msgpack_pack_fix_uint64(&pk, 5);
    rc = rc || pack_key(&pk, "neg_fix") || msgpack_pack_int8(&pk, -1);
    rc = rc || pack_key(&pk, "neg_int16") || msgpack_pack_int16(&pk, -300);
    rc = rc || pack_key(&pk, "int64_min") || msgpack_pack_int64(&pk, INT64_MIN);
    rc = rc || pack_key(&pk, "true") || msgpack_pack_true(&pk);
    rc = rc || pack_key(&pk, "false") || msgpack_pack_false(&pk);
    rc = rc || pack_key(&pk, "nil") || msgpack_pack_nil(&pk);
    rc = rc || pack_key(&pk, "float32") || msgpack_pack_float(&pk, 1.5f);
    rc = rc || pack_key(&pk, "float64") || msgpack_pack_double(&pk, -2.25e100);
    rc = rc || pack_key(&pk, "str") || msgpack_pack_str_with_body(&pk, utf8, sizeof(utf8) - 1);
    rc = rc || pack_key(&pk, "str_empty") || msgpack_pack_str_with_body(&pk, "", 0);
    rc =
        rc || pack_key(&pk, "str16") || msgpack_pack_str_with_body(&pk, long_str, sizeof(long_str));
    rc = rc || pack_key(&pk, "bin") || msgpack_pack_bin_with_body(&pk, bin, sizeof(bin));
    rc = rc || pack_key(&pk, "ext") || msgpack_pack_ext_with_body(&pk, ext, sizeof(ext), 7);
    /* [1, "x", [nil, [true, -5]], {}] */
    rc = rc || pack_key(&pk, "array") || msgpack_pack_array(&pk, 4);
    rc = rc || msgpack_pack_uint8(&pk, 1) || msgpack_pack_str_with_body(&pk, "x", 1);
    rc = rc || msgpack_pack_array(&pk, 2) || msgpack_pack_nil(&pk) || msgpack_pack_array(&pk, 2);
    rc = rc || msgpack_pack_true(&pk) || msgpack_pack_int8(&pk, -5) || msgpack_pack_map(&pk, 0);
    /* {"a": {"b": [1, 2, {"c": -7}]}, "": 0} */
    rc = rc || pack_key(&pk, "map") || msgpack_pack_map(&pk, 2);
    rc = rc || pack_key(&pk, "a") || msgpack_pack_map(&pk, 1) || pack_key(&pk, "b");
    rc = rc || msgpack_pack_array(&pk, 3) || msgpack_pack_uint8(&pk, 1) ||
         msgpack_pack_uint8(&pk, 2);
    rc = rc || msgpack_pack_map(&pk, 1) || pack_key(&pk, "c") || msgpack_pack_int8(&pk, -7);
    rc = rc || pack_key(&pk, "") || msgpack_pack_uint8(&pk, 0);
    /* array16 and map16 (more than 15 elements), the map with integer keys */
    rc = rc || pack_key(&pk, "array16") || msgpack_pack_array(&pk, 20);
    for (int i = 0; i < 20; i++)
        rc = rc || msgpack_pack_int32(&pk, i - 10);
    rc = rc || pack_key(&pk, "map16") || msgpack_pack_map(&pk, 16);
    for (int i = 0; i < 16; i++)
        rc = rc || msgpack_pack_int32(&pk, i) || msgpack_pack_int32(&pk, i * i);
    return rc == 0;
}

/* SPEC 4: an event is a msgpack map of seq, time, shop, actor, kind, type, id, version and the
 * item's full fields, and it reads back exactly as appended, with its checksum and chain. */
static void test_log_round_trips_every_field_kind(void)
{
    fx f;
    CHECK(fx_open(&f, "roundtrip", NULL));
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(pack_every_kind(&sb));
    cs_event ev = {.time_ms = 1700000000123ull,
                   .shop = UINT64_MAX,
                   .id = UINT64_MAX - 1,
                   .version = 42,
                   .actor = CS_STR("ana@head"),
                   .kind = CS_STR("put"),
                   .type = CS_STR("service"),
                   .fields = (const uint8_t *)sb.data,
                   .fields_len = sb.size};
    uint64_t first = 0;
    CHECK_OK(cs_log_append(f.log, &ev, 1, &first));
    CHECK(first == 1);

    cs_log_reader *r;
    cs_log_record rec;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK_OK(cs_log_reader_get(r, 1, &rec));
    CHECK(rec.seq == 1);
    CHECK(rec.checksum == cs_log_checksum(rec.event, rec.event_len, 1));
    CHECK(rec.chain == cs_log_chain(0, rec.checksum));
    cs_event_view v;
    CHECK_OK(cs_event_decode(f.dec, rec.event, rec.event_len, &v));
    CHECK(v.seq == 1);
    CHECK(v.time_ms == ev.time_ms);
    CHECK(v.shop == ev.shop);
    CHECK(v.id == ev.id);
    CHECK(v.version == ev.version);
    CHECK(str_eq(v.actor, ev.actor));
    CHECK(str_eq(v.kind, ev.kind));
    CHECK(str_eq(v.type, ev.type));

    msgpack_unpacked want;
    msgpack_unpacked_init(&want);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&want, sb.data, sb.size, &off) == MSGPACK_UNPACK_SUCCESS);
    CHECK(off == sb.size);
    CHECK(v.fields.type == MSGPACK_OBJECT_MAP);
    CHECK(v.fields.via.map.size == 21);
    CHECK(msgpack_object_equal(v.fields, want.data));
    /* The fields are stored byte for byte as given (full state, readable by any library). */
    CHECK(memmem(rec.event, rec.event_len, sb.data, sb.size) != NULL);
    msgpack_unpacked_destroy(&want);
    msgpack_sbuffer_destroy(&sb);
    cs_log_reader_close(r);
    fx_close(&f);
}

/* SPEC 4: an event without fields or type still carries every key: fields is an empty map. */
static void test_log_round_trips_event_without_fields(void)
{
    fx f;
    CHECK(fx_open(&f, "nofields", NULL));
    cs_event ev = {.time_ms = 5, .actor = CS_STR(""), .kind = CS_STR("link")};
    CHECK_OK(cs_log_append(f.log, &ev, 1, NULL));
    cs_event_view v;
    CHECK_OK(log_read_event(&f, 1, &v));
    CHECK(v.seq == 1 && v.time_ms == 5 && v.shop == 0 && v.id == 0 && v.version == 0);
    CHECK(v.actor.len == 0 && v.type.len == 0);
    CHECK(str_eq(v.kind, ev.kind));
    CHECK(v.fields.type == MSGPACK_OBJECT_MAP);
    CHECK(v.fields.via.map.size == 0);
    fx_close(&f);
}

/* ---- sequences and times ----------------------------------------------------------------- */

/* SPEC 4: sequences start at 1 and every batch gets the next consecutive ones, across batches
 * and across a reopen. */
static void test_log_batch_assigns_consecutive_seqs_from_1(void)
{
    fx f;
    CHECK(fx_open(&f, "seqs", NULL));
    uint64_t first = 0, head = 99;
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == 0);
    CHECK_OK(append_plain(f.log, 5, 1, &first));
    CHECK(first == 1);
    CHECK_OK(append_plain(f.log, 1, 6, &first));
    CHECK(first == 6);
    CHECK_OK(append_plain(f.log, 100, 7, &first));
    CHECK(first == 7);
    CHECK_OK(fx_reopen(&f, NULL));
    CHECK_OK(append_plain(f.log, 3, 107, &first));
    CHECK(first == 107);
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == 109);

    cs_log_reader *r;
    cs_log_record rec;
    cs_err err;
    uint64_t want = 1;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK_OK(cs_log_reader_seek(r, 1));
    while ((err = cs_log_reader_next(r, &rec)) == CS_OK) {
        cs_event_view v;
        CHECK(rec.seq == want);
        CHECK_OK(cs_event_decode(f.dec, rec.event, rec.event_len, &v));
        CHECK(v.seq == want);
        CHECK(v.id == want); /* the batch's order is kept */
        want++;
    }
    CHECK(err == CS_NOT_FOUND);
    CHECK(want == 110);
    cs_log_reader_close(r);
    fx_close(&f);
}

static cs_err append_at_times(cs_log *log, const uint64_t *times, size_t n)
{
    cs_event evs[16];
    if (n > 16)
        return CS_INVALID_INPUT;
    for (size_t i = 0; i < n; i++) {
        evs[i] = plain_event(i + 1);
        evs[i].time_ms = times[i];
    }
    return cs_log_append(log, evs, n, NULL);
}

/* SPEC 4, R14 (as-of by time): event times never decrease, even when a caller gives an older
 * time, within a batch, across batches and across a reopen; 0 means now. */
static void test_log_times_never_decrease(void)
{
    fx f;
    CHECK(fx_open(&f, "times", NULL));
    static const uint64_t b1[] = {1000, 1000, 2000, 1500, 3000};
    static const uint64_t b2[] = {500, 0};
    static const uint64_t b3[] = {2500};
    static const uint64_t want[] = {1000, 1000, 2000, 2000, 3000, 3000};
    struct timespec ts;
    CHECK(clock_gettime(CLOCK_REALTIME, &ts) == 0);
    uint64_t before_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    CHECK_OK(append_at_times(f.log, b1, 5));
    CHECK_OK(append_at_times(f.log, b2, 2));
    CHECK_OK(fx_reopen(&f, NULL));
    CHECK_OK(append_at_times(f.log, b3, 1));
    cs_event_view v;
    for (uint64_t seq = 1; seq <= 6; seq++) {
        CHECK_OK(log_read_event(&f, seq, &v));
        CHECK(v.time_ms == want[seq - 1]);
    }
    CHECK_OK(log_read_event(&f, 7, &v));
    uint64_t now_time = v.time_ms;
    CHECK(now_time >= before_ms); /* 0 = the time of the append */
    CHECK_OK(log_read_event(&f, 8, &v));
    CHECK(v.time_ms == now_time); /* 2500 is older than seq 7: clamped */
    fx_close(&f);
}

/* SPEC R14 (audit as-of --time): seq_at_time gives the first sequence whose time is at or after
 * the given time, and not_found when every event is older. */
static void test_log_seq_at_time_finds_first_at_or_after(void)
{
    fx f;
    CHECK(fx_open(&f, "seqattime", NULL));
    cs_log_reader *r;
    uint64_t seq = 0;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK(cs_log_reader_seq_at_time(r, 0, &seq) == CS_NOT_FOUND); /* empty log */
    cs_log_reader_close(r);

    static const uint64_t b1[] = {1000, 1000, 2000, 1500,
                                  3000};       /* stored 1000 1000 2000 2000 3000 */
    static const uint64_t b2[] = {3000, 4000}; /* seqs 6 and 7 */
    CHECK_OK(append_at_times(f.log, b1, 5));
    CHECK_OK(append_at_times(f.log, b2, 2));
    static const struct {
        uint64_t time_ms, seq;
    } cases[] = {{0, 1},    {999, 1},  {1000, 1}, {1001, 3}, {2000, 3},
                 {2001, 5}, {3000, 5}, {3001, 7}, {4000, 7}};
    CHECK_OK(cs_log_reader_open(f.log, &r));
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        seq = 0;
        CHECK_OK(cs_log_reader_seq_at_time(r, cases[i].time_ms, &seq));
        if (seq != cases[i].seq)
            fprintf(stderr, "  time %llu: got seq %llu, want %llu\n",
                    (unsigned long long)cases[i].time_ms, (unsigned long long)seq,
                    (unsigned long long)cases[i].seq);
        CHECK(seq == cases[i].seq);
    }
    seq = 12345;
    CHECK(cs_log_reader_seq_at_time(r, 4001, &seq) == CS_NOT_FOUND);
    CHECK(seq == 12345); /* outputs stay untouched on failure */
    cs_log_reader_close(r);
    fx_close(&f);
}

/* ---- reader ------------------------------------------------------------------------------ */

/* SPEC 4 (readers): asking a reader for its head or a single event between two `next` calls
 * does not move the iteration: the range read continues where it was. */
static void test_log_reader_head_and_get_do_not_disturb_iteration(void)
{
    fx f;
    CHECK(fx_open(&f, "iter", NULL));
    CHECK_OK(append_plain(f.log, 20, 1, NULL));
    cs_log_reader *r;
    cs_log_record rec;
    uint64_t head = 0;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK_OK(cs_log_reader_seek(r, 5));
    for (uint64_t want = 5; want <= 20; want++) {
        CHECK_OK(cs_log_reader_next(r, &rec));
        CHECK(rec.seq == want);
        if (want % 3 == 0)
            CHECK_OK(cs_log_reader_head(r, &head));
        if (want % 4 == 0)
            CHECK_OK(cs_log_reader_get(r, 2, &rec));
    }
    CHECK(head == 20);
    CHECK(cs_log_reader_next(r, &rec) == CS_NOT_FOUND);
    cs_log_reader_close(r);
    fx_close(&f);
}

/* ---- invalid input ----------------------------------------------------------------------- */

/* Appends `events` expecting invalid_input and checks that the log did not move and still
 * takes a good append at the next sequence (SPEC 6: bad input changes nothing). */
static bool refused_and_unchanged(fx *f, const cs_event *events, size_t n)
{
    uint64_t before = 0, after = 0, bad = 0, first = 777;
    cs_err err;
    if (log_head(f->log, &before) != CS_OK)
        return false;
    if ((err = cs_log_append(f->log, events, n, &first)) != CS_INVALID_INPUT) {
        fprintf(stderr, "  append returned %s, want invalid_input\n", cs_err_name(err));
        return false;
    }
    if (first != 777 || cs_log_errmsg(f->log)[0] == '\0')
        return false;
    if (log_head(f->log, &after) != CS_OK || after != before) {
        fprintf(stderr, "  head moved from %llu to %llu\n", (unsigned long long)before,
                (unsigned long long)after);
        return false;
    }
    if (log_verify(f->log, &bad) != CS_OK)
        return false;
    return append_plain(f->log, 1, 1, &first) == CS_OK && first == before + 1;
}

/* A log with three good events, to see that a refusal leaves them alone. */
static bool fx_open_with_three(fx *f, const char *tag)
{
    return fx_open(f, tag, NULL) && append_plain(f->log, 3, 1, NULL) == CS_OK;
}

/* SPEC 2, 4: an item's fields are one msgpack map; anything else is refused whole. */
static void test_log_refuses_fields_that_are_not_a_map(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "notmap"));
    static const uint8_t array[] = {0x92, 0x01, 0x02};
    static const uint8_t integer[] = {0x05};
    static const uint8_t string[] = {0xa1, 's'};
    static const uint8_t nil[] = {0xc0};
    static const uint8_t map_in_array[] = {0x91, 0x80};
    static const struct {
        const uint8_t *p;
        size_t n;
    } cases[] = {{array, sizeof(array)},
                 {integer, sizeof(integer)},
                 {string, sizeof(string)},
                 {nil, sizeof(nil)},
                 {map_in_array, sizeof(map_in_array)}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cs_event ev = plain_event(9);
        ev.fields = cases[i].p;
        ev.fields_len = cases[i].n;
        CHECK(refused_and_unchanged(&f, &ev, 1));
    }
    fx_close(&f);
}

/* SPEC 4: fields must be exactly one complete msgpack value: every truncation, an empty buffer
 * and trailing bytes are refused. */
static void test_log_refuses_truncated_or_trailing_fields(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "truncfields"));
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(pack_every_kind(&sb));
    cs_event ev = plain_event(9);
    ev.fields = (const uint8_t *)sb.data;
    for (size_t len = 0; len < sb.size; len += 1 + len / 16) { /* 0 = non-NULL but empty */
        ev.fields_len = len;
        bool refused = refused_and_unchanged(&f, &ev, 1);
        if (!refused)
            fprintf(stderr, "  fields cut to %zu bytes\n", len);
        CHECK(refused);
    }
    ev.fields_len = sb.size - 1;
    CHECK(refused_and_unchanged(&f, &ev, 1));
    CHECK(msgpack_sbuffer_write(&sb, "\xc0", 1) == 0); /* one nil too many */
    ev.fields = (const uint8_t *)sb.data;
    ev.fields_len = sb.size;
    CHECK(refused_and_unchanged(&f, &ev, 1));
    msgpack_sbuffer_destroy(&sb);
    fx_close(&f);
}

/* SPEC 4: a container inside the fields that claims more than the input holds is refused at
 * append, not stored for a reader to trip over. */
static void test_log_refuses_fields_with_lying_lengths(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "lyingfields"));
    static const uint8_t huge_array[] = {0x81, 0xa1, 'k', 0xdd, 0xff, 0xff, 0xff, 0xff, 0x00};
    static const uint8_t long_str[] = {0x81, 0xa1, 'k', 0xdb, 0x00, 0x01, 0x00, 0x00, 'a'};
    static const uint8_t bad_byte[] = {0x81, 0xa1, 'k', 0xc1};
    cs_event ev = plain_event(9);
    ev.fields = huge_array;
    ev.fields_len = sizeof(huge_array);
    CHECK(refused_and_unchanged(&f, &ev, 1));
    ev.fields = long_str;
    ev.fields_len = sizeof(long_str);
    CHECK(refused_and_unchanged(&f, &ev, 1));
    ev.fields = bad_byte;
    ev.fields_len = sizeof(bad_byte);
    CHECK(refused_and_unchanged(&f, &ev, 1));
    fx_close(&f);
}

/* Builds a fields map {"n": [[...[nil]...]]} nesting `depth` containers in all (the map
 * counts as one). */
static bool pack_nested_fields(msgpack_sbuffer *sb, unsigned depth)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, 1) || pack_key(&pk, "n");
    for (unsigned i = 1; i < depth; i++)
        rc = rc || msgpack_pack_array(&pk, 1);
    rc = rc || msgpack_pack_nil(&pk);
    return rc == 0;
}

/* SPEC 4: an appended event must stay readable: fields are accepted only as deep as an event
 * (the map around them adds one level) may nest, CS_MSGPACK_DEPTH_MAX - 1. */
static void test_log_refuses_fields_deeper_than_an_event_may_nest(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "deepfields"));
    msgpack_sbuffer at, over;
    msgpack_sbuffer_init(&at);
    msgpack_sbuffer_init(&over);
    CHECK(pack_nested_fields(&at, CS_MSGPACK_DEPTH_MAX - 1));
    CHECK(pack_nested_fields(&over, CS_MSGPACK_DEPTH_MAX));
    cs_event ev = plain_event(9);
    ev.fields = (const uint8_t *)over.data;
    ev.fields_len = over.size;
    CHECK(refused_and_unchanged(&f, &ev, 1));
    ev.fields = (const uint8_t *)at.data;
    ev.fields_len = at.size;
    uint64_t first = 0, bad = 0;
    CHECK_OK(cs_log_append(f.log, &ev, 1, &first));
    cs_event_view v;
    CHECK_OK(log_read_event(&f, first, &v));
    CHECK(v.fields.type == MSGPACK_OBJECT_MAP);
    CHECK_OK(log_verify(f.log, &bad));
    msgpack_sbuffer_destroy(&at);
    msgpack_sbuffer_destroy(&over);
    fx_close(&f);
}

/* SPEC 4, limits in log.h: actor, kind and type are accepted up to CS_EVENT_STR_BYTES_MAX bytes
 * and refused one byte over. */
static void test_log_refuses_strings_over_limit(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "strlimit"));
    char s[CS_EVENT_STR_BYTES_MAX + 1];
    memset(s, 'a', sizeof(s));
    cs_str at = {s, CS_EVENT_STR_BYTES_MAX}, over = {s, CS_EVENT_STR_BYTES_MAX + 1};
    for (int which = 0; which < 3; which++) {
        cs_event ev = plain_event(9);
        cs_str *field = which == 0 ? &ev.actor : which == 1 ? &ev.kind : &ev.type;
        *field = over;
        CHECK(refused_and_unchanged(&f, &ev, 1));
        *field = at;
        uint64_t first = 0;
        CHECK_OK(cs_log_append(f.log, &ev, 1, &first));
        cs_event_view v;
        CHECK_OK(log_read_event(&f, first, &v));
        cs_str got = which == 0 ? v.actor : which == 1 ? v.kind : v.type;
        CHECK(str_eq(got, at));
    }
    fx_close(&f);
}

/* SPEC 4: every event says what happened: an empty kind is refused. */
static void test_log_refuses_empty_kind(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "emptykind"));
    cs_event ev = plain_event(9);
    ev.kind = CS_STR("");
    CHECK(refused_and_unchanged(&f, &ev, 1));
    fx_close(&f);
}

/* Limits in log.h: a batch holds 1 to CS_LOG_BATCH_EVENTS_MAX events. */
static void test_log_refuses_empty_and_oversized_batch(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "batchlimit"));
    cs_event ev = plain_event(9);
    CHECK(refused_and_unchanged(&f, &ev, 0));
    CHECK(refused_and_unchanged(&f, NULL, 0));
    cs_event *evs = calloc(CS_LOG_BATCH_EVENTS_MAX + 1, sizeof(*evs));
    CHECK(evs);
    for (size_t i = 0; i <= CS_LOG_BATCH_EVENTS_MAX; i++)
        evs[i] = plain_event(i + 1);
    CHECK(refused_and_unchanged(&f, evs, CS_LOG_BATCH_EVENTS_MAX + 1));
    uint64_t first = 0, head = 0;
    CHECK_OK(cs_log_append(f.log, evs, CS_LOG_BATCH_EVENTS_MAX, &first));
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == first + CS_LOG_BATCH_EVENTS_MAX - 1);
    free(evs);
    fx_close(&f);
}

/* fields = {"b": bin32 of n bytes}: fields_len = n + 8, adjustable to the byte. */
static uint8_t *bin_fields(size_t n)
{
    uint8_t *p = malloc(n + 8);
    if (!p)
        return NULL;
    static const uint8_t head[] = {0x81, 0xa1, 'b', 0xc6}; /* {"b": bin32 */
    memcpy(p, head, sizeof(head));
    cs_be32_put(p + 4, (uint32_t)n);
    memset(p + 8, 0x33, n);
    return p;
}

/* SPEC 6 (bad input changes nothing): when only the last event of a batch is bad, none of the
 * batch is appended, whether the check fails up front or while the batch is being written. */
static void test_log_refuses_whole_batch_when_last_event_is_bad(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "lastbad"));
    enum { N = 10 };
    cs_event evs[N];
    for (size_t i = 0; i < N; i++)
        evs[i] = plain_event(i + 1);
    char actor[CS_EVENT_STR_BYTES_MAX + 1];
    memset(actor, 'a', sizeof(actor));
    evs[N - 1].actor = (cs_str){actor, sizeof(actor)};
    CHECK(refused_and_unchanged(&f, evs, N));

    static const uint8_t array[] = {0x90};
    evs[N - 1] = plain_event(N);
    evs[N - 1].fields = array;
    evs[N - 1].fields_len = sizeof(array);
    CHECK(refused_and_unchanged(&f, evs, N));

    /* Fields of exactly CS_EVENT_BYTES_MAX pass the fields check; the event around them does
     * not fit, which is found only when that event is encoded, after the others were put. */
    uint8_t *big = bin_fields(CS_EVENT_BYTES_MAX - 8);
    CHECK(big);
    evs[N - 1].fields = big;
    evs[N - 1].fields_len = CS_EVENT_BYTES_MAX;
    CHECK(refused_and_unchanged(&f, evs, N));
    free(big);
    fx_close(&f);
}

/* Limits in log.h: an encoded event of exactly CS_EVENT_BYTES_MAX is stored and read back; one
 * byte more is refused. */
static void test_log_event_size_limit_is_exact(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "eventlimit"));
    /* Measure what the event adds around its fields (same times and values, fixint seqs). */
    uint8_t *small = bin_fields(1);
    CHECK(small);
    cs_event ev = plain_event(9);
    ev.time_ms = 77;
    ev.fields = small;
    ev.fields_len = 9;
    uint64_t first = 0, bad = 0;
    CHECK_OK(cs_log_append(f.log, &ev, 1, &first));
    cs_log_reader *r;
    cs_log_record rec;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK_OK(cs_log_reader_get(r, first, &rec));
    size_t overhead = rec.event_len - ev.fields_len;
    cs_log_reader_close(r);
    free(small);

    uint8_t *over = bin_fields(CS_EVENT_BYTES_MAX - overhead - 8 + 1);
    CHECK(over);
    ev.fields = over;
    ev.fields_len = CS_EVENT_BYTES_MAX - overhead + 1;
    CHECK(refused_and_unchanged(&f, &ev, 1));
    free(over);

    uint8_t *at = bin_fields(CS_EVENT_BYTES_MAX - overhead - 8);
    CHECK(at);
    ev.fields = at;
    ev.fields_len = CS_EVENT_BYTES_MAX - overhead;
    CHECK_OK(cs_log_append(f.log, &ev, 1, &first));
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK_OK(cs_log_reader_get(r, first, &rec));
    CHECK(rec.event_len == CS_EVENT_BYTES_MAX);
    cs_event_view v;
    CHECK_OK(cs_event_decode(f.dec, rec.event, rec.event_len, &v));
    CHECK(v.fields.type == MSGPACK_OBJECT_MAP);
    CHECK_OK(cs_log_reader_verify(r, &bad));
    cs_log_reader_close(r);
    free(at);
    fx_close(&f);
}

/* ---- write transactions ------------------------------------------------------------------ */

typedef struct txn_ctx {
    MDB_dbi side; /* a database of the caller's, beside the log */
    const cs_event *bad;
    const cs_event *good;
    cs_err errs[4];
    uint64_t next_seq[2];
    cs_err result; /* what fn returns */
} txn_ctx;

static cs_err put_side_key(cs_log_txn *txn, MDB_dbi dbi)
{
    MDB_val k = {4, "side"}, v = {5, "value"};
    return cs_log_txn_put(txn, dbi, &k, &v, 0);
}

/* A bad append, then a good one and a put: all must fail; fn then claims success. */
static cs_err bad_then_good(cs_log_txn *txn, void *ctx)
{
    txn_ctx *c = ctx;
    c->errs[0] = cs_log_txn_append(txn, c->bad, 1, NULL);
    c->errs[1] = cs_log_txn_append(txn, c->good, 1, NULL);
    c->errs[2] = put_side_key(txn, c->side);
    return CS_OK; /* ignores the failures on purpose: cs_log_write must not commit */
}

/* Appends two batches and puts a key of its own in one transaction, then returns c->result. */
static cs_err command_with_events(cs_log_txn *txn, void *ctx)
{
    txn_ctx *c = ctx;
    c->next_seq[0] = cs_log_txn_next_seq(txn);
    c->errs[0] = cs_log_txn_append(txn, c->good, 1, NULL);
    c->errs[1] = cs_log_txn_append(txn, c->good, 1, NULL);
    c->next_seq[1] = cs_log_txn_next_seq(txn);
    c->errs[2] = put_side_key(txn, c->side);
    return c->result;
}

static cs_err side_key_get(cs_log *log, MDB_dbi dbi)
{
    MDB_txn *txn;
    MDB_val k = {4, "side"}, v;
    if (mdb_txn_begin(cs_log_env(log), NULL, MDB_RDONLY, &txn) != 0)
        return CS_IO;
    int rc = mdb_get(txn, dbi, &k, &v);
    mdb_txn_abort(txn);
    return rc == 0 ? CS_OK : rc == MDB_NOTFOUND ? CS_NOT_FOUND : CS_IO;
}

/* STYLE (a transaction that failed stays failed), SPEC 6: after a refused append every later
 * call in the transaction fails too, and nothing of it commits even when fn returns CS_OK. */
static void test_log_failed_txn_stays_failed(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "txnfailed"));
    cs_event bad = plain_event(9), good = plain_event(10);
    bad.kind = CS_STR("");
    txn_ctx c = {.bad = &bad, .good = &good};
    CHECK_OK(cs_log_dbi_open(f.log, "test_side", 0, &c.side));
    CHECK(cs_log_write(f.log, bad_then_good, &c) == CS_INVALID_INPUT);
    CHECK(c.errs[0] == CS_INVALID_INPUT);
    CHECK(c.errs[1] == CS_INVALID_INPUT);
    CHECK(c.errs[2] == CS_INVALID_INPUT);
    uint64_t head = 0;
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == 3);
    CHECK(side_key_get(f.log, c.side) == CS_NOT_FOUND);
    fx_close(&f);
}

/* SPEC 4: a command and the events it causes commit in one transaction: both or neither. */
static void test_log_write_commits_events_with_caller_data_or_neither(void)
{
    fx f;
    CHECK(fx_open_with_three(&f, "txnatomic"));
    cs_event good = plain_event(10);
    txn_ctx c = {.good = &good, .result = CS_VERSION_CONFLICT};
    CHECK_OK(cs_log_dbi_open(f.log, "test_side", 0, &c.side));
    CHECK(cs_log_write(f.log, command_with_events, &c) == CS_VERSION_CONFLICT);
    CHECK(c.errs[0] == CS_OK && c.errs[1] == CS_OK && c.errs[2] == CS_OK);
    uint64_t head = 0;
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == 3);
    CHECK(side_key_get(f.log, c.side) == CS_NOT_FOUND);

    c.result = CS_OK;
    CHECK_OK(cs_log_write(f.log, command_with_events, &c));
    CHECK(c.next_seq[0] == 4 && c.next_seq[1] == 6);
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == 5);
    CHECK_OK(side_key_get(f.log, c.side));
    fx_close(&f);
}

/* ---- corruption on disk ------------------------------------------------------------------ */

typedef int (*raw_edit_fn)(MDB_txn *txn, MDB_dbi events, void *ctx);

/* Opens the closed data directory with LMDB itself, as a bad disk or a meddler would, and runs
 * edit in one write transaction on the "events" database. Returns an LMDB code. */
static int raw_edit(const char *dir, raw_edit_fn edit, void *ctx)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    int rc = mdb_env_create(&env);
    if (rc)
        return rc;
    if ((rc = mdb_env_set_maxdbs(env, 32)) || (rc = mdb_env_open(env, dir, 0, 0600)) ||
        (rc = mdb_txn_begin(env, NULL, 0, &txn)))
        goto out;
    if ((rc = mdb_dbi_open(txn, "events", 0, &dbi)) || (rc = edit(txn, dbi, ctx))) {
        mdb_txn_abort(txn);
        goto out;
    }
    rc = mdb_txn_commit(txn);
out:
    mdb_env_close(env);
    return rc;
}

static void seq_key(uint8_t kb[8], uint64_t seq)
{
    cs_be64_put(kb, seq);
}

/* Copies the stored value of seq into a malloc'd buffer. */
static int raw_get_copy(MDB_txn *txn, MDB_dbi dbi, uint64_t seq, uint8_t **out, size_t *len)
{
    uint8_t kb[8];
    seq_key(kb, seq);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc)
        return rc;
    if (!(*out = malloc(v.mv_size)))
        return ENOMEM;
    memcpy(*out, v.mv_data, v.mv_size);
    *len = v.mv_size;
    return 0;
}

static int raw_put(MDB_txn *txn, MDB_dbi dbi, uint64_t seq, uint8_t *val, size_t len)
{
    uint8_t kb[8];
    seq_key(kb, seq);
    MDB_val k = {8, kb}, v = {len, val};
    return mdb_put(txn, dbi, &k, &v, 0);
}

typedef struct flip_ctx {
    uint64_t seq;
    long offset; /* into the stored value; negative counts from its end */
    uint8_t mask;
} flip_ctx;

static int flip_edit(MDB_txn *txn, MDB_dbi dbi, void *ctx)
{
    flip_ctx *c = ctx;
    uint8_t *val;
    size_t len;
    int rc = raw_get_copy(txn, dbi, c->seq, &val, &len);
    if (rc)
        return rc;
    size_t at = c->offset >= 0 ? (size_t)c->offset : len - (size_t)-c->offset;
    if (at >= len) {
        free(val);
        return EINVAL;
    }
    val[at] ^= c->mask;
    rc = raw_put(txn, dbi, c->seq, val, len);
    free(val);
    return rc;
}

static int delete_edit(MDB_txn *txn, MDB_dbi dbi, void *ctx)
{
    uint8_t kb[8];
    seq_key(kb, *(const uint64_t *)ctx);
    MDB_val k = {8, kb};
    return mdb_del(txn, dbi, &k, NULL);
}

static int swap_edit(MDB_txn *txn, MDB_dbi dbi, void *ctx)
{
    const uint64_t *seqs = ctx;
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    int rc = raw_get_copy(txn, dbi, seqs[0], &a, &alen);
    if (!rc)
        rc = raw_get_copy(txn, dbi, seqs[1], &b, &blen);
    if (!rc)
        rc = raw_put(txn, dbi, seqs[0], b, blen);
    if (!rc)
        rc = raw_put(txn, dbi, seqs[1], a, alen);
    free(a);
    free(b);
    return rc;
}

/* A closed log of `count` events with varied fields, ready for raw edits. */
static bool fx_open_closed_log(fx *f, const char *tag, size_t count)
{
    if (!fx_open(f, tag, NULL))
        return false;
    for (size_t i = 0; i < count; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        bool ok = pack_note(&sb, 10 + i * 7);
        cs_event ev = plain_event(i + 1);
        ev.fields = (const uint8_t *)sb.data;
        ev.fields_len = sb.size;
        ok = ok && cs_log_append(f->log, &ev, 1, NULL) == CS_OK;
        msgpack_sbuffer_destroy(&sb);
        if (!ok)
            return false;
    }
    cs_log_close(f->log);
    f->log = NULL;
    return true;
}

/* SPEC 4: every event's checksum is verified on every read: a flipped byte anywhere in the
 * checksum or the event makes reading that event corrupt (naming it), and verify reports it. */
static void test_log_flipped_byte_is_corrupt_on_read_and_verify(void)
{
    fx f;
    CHECK(fx_open_closed_log(&f, "flip", 50));
    /* first and last checksum byte, the event's first byte, its middle, its last byte */
    static const long offsets[] = {0, 7, 16, 40, -1};
    for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
        flip_ctx c = {17, offsets[i], 0x01};
        CHECK(raw_edit(f.dir, flip_edit, &c) == 0);
        CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
        cs_log_reader *r;
        cs_log_record rec;
        uint64_t bad = 0;
        CHECK_OK(cs_log_reader_open(f.log, &r));
        CHECK(cs_log_reader_get(r, 17, &rec) == CS_CORRUPT);
        CHECK(msg_names_seq(cs_log_reader_errmsg(r), 17));
        /* ... and names the check that failed (SQLITE_CORRUPT_BKPT's manner), after its words */
        CHECK(strstr(cs_log_reader_errmsg(r), "event 17: checksum mismatch [record.c:") ==
              cs_log_reader_errmsg(r));
        CHECK_OK(cs_log_reader_get(r, 16, &rec));
        CHECK_OK(cs_log_reader_get(r, 18, &rec));
        CHECK(cs_log_reader_verify(r, &bad) == CS_CORRUPT);
        CHECK(bad == 17);
        CHECK(msg_names_seq(cs_log_reader_errmsg(r), 17));
        cs_log_reader_close(r);
        cs_log_close(f.log);
        f.log = NULL;
        CHECK(raw_edit(f.dir, flip_edit, &c) == 0); /* flip it back */
    }
    uint64_t bad = 0;
    CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
    CHECK_OK(log_verify(f.log, &bad));
    fx_close(&f);
}

/* SPEC 4 (hash chain): a changed chain field is not covered by the event's own checksum, so
 * the event still reads, but verify finds the broken chain at that event. */
static void test_log_verify_detects_changed_chain(void)
{
    fx f;
    CHECK(fx_open_closed_log(&f, "chain", 50));
    flip_ctx c = {17, 12, 0x80};
    CHECK(raw_edit(f.dir, flip_edit, &c) == 0);
    CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
    cs_log_reader *r;
    cs_log_record rec;
    uint64_t bad = 0;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK_OK(cs_log_reader_get(r, 17, &rec));
    CHECK(cs_log_reader_verify(r, &bad) == CS_CORRUPT);
    CHECK(bad == 17);
    cs_log_reader_close(r);
    fx_close(&f);
}

/* SPEC 4 (audit verify finds lost bytes): a deleted event is reported by verify and by a range
 * read that crosses it. */
static void test_log_verify_detects_lost_event(void)
{
    fx f;
    CHECK(fx_open_closed_log(&f, "lost", 50));
    uint64_t lost = 30;
    CHECK(raw_edit(f.dir, delete_edit, &lost) == 0);
    CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
    cs_log_reader *r;
    cs_log_record rec;
    uint64_t bad = 0;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK(cs_log_reader_get(r, 30, &rec) == CS_NOT_FOUND);
    CHECK(cs_log_reader_verify(r, &bad) == CS_CORRUPT);
    CHECK(bad == 30);
    CHECK(msg_names_seq(cs_log_reader_errmsg(r), 30));
    CHECK_OK(cs_log_reader_seek(r, 25));
    for (uint64_t seq = 25; seq < 30; seq++) {
        CHECK_OK(cs_log_reader_next(r, &rec));
        CHECK(rec.seq == seq);
    }
    CHECK(cs_log_reader_next(r, &rec) == CS_CORRUPT);
    cs_log_reader_close(r);
    fx_close(&f);
}

/* SPEC 4 (audit verify finds reordered bytes): two swapped events fail their checksums (each is
 * seeded with its sequence) and verify reports the first. */
static void test_log_verify_detects_reordered_events(void)
{
    fx f;
    CHECK(fx_open_closed_log(&f, "swap", 50));
    uint64_t seqs[2] = {10, 11};
    CHECK(raw_edit(f.dir, swap_edit, seqs) == 0);
    CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
    cs_log_reader *r;
    cs_log_record rec;
    uint64_t bad = 0;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK(cs_log_reader_get(r, 10, &rec) == CS_CORRUPT);
    CHECK(cs_log_reader_get(r, 11, &rec) == CS_CORRUPT);
    CHECK(cs_log_reader_verify(r, &bad) == CS_CORRUPT);
    CHECK(bad == 10);
    cs_log_reader_close(r);
    fx_close(&f);
}

/* SPEC 4: an append chains onto the last event, so it refuses (corrupt, nothing written) when
 * that event does not verify instead of extending a broken chain. */
static void test_log_refuses_append_onto_corrupt_tail(void)
{
    fx f;
    CHECK(fx_open_closed_log(&f, "badtail", 50));
    flip_ctx c = {50, 20, 0x04};
    CHECK(raw_edit(f.dir, flip_edit, &c) == 0);
    CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
    CHECK(append_plain(f.log, 1, 51, NULL) == CS_CORRUPT);
    CHECK(msg_names_seq(cs_log_errmsg(f.log), 50));
    uint64_t head = 0;
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == 50);
    fx_close(&f);
}

/* How a meddler with LMDB would rewrite event `seq`: `event` stored under that key with a
 * checksum and a chain that both verify (seeded with the key, chained onto event seq-1), and,
 * with `head`, the head recorded in `meta` made to match too. */
typedef struct reseal_ctx {
    uint64_t seq;
    uint64_t from_seq; /* the event bytes are those of this stored event ... */
    long offset;       /* ... with this byte of the event flipped (negative: none) */
    bool head;
} reseal_ctx;

static int reseal_edit(MDB_txn *txn, MDB_dbi dbi, void *ctx)
{
    reseal_ctx *c = ctx;
    uint8_t *val = NULL, *prev = NULL;
    size_t len = 0, plen = 0;
    int rc = raw_get_copy(txn, dbi, c->from_seq, &val, &len);
    if (!rc && c->seq > 1)
        rc = raw_get_copy(txn, dbi, c->seq - 1, &prev, &plen);
    if (!rc) {
        uint8_t *ev = val + CS_RECORD_HEADER_BYTES;
        size_t ev_len = len - CS_RECORD_HEADER_BYTES;
        if (c->offset >= 0)
            ev[c->offset] ^= 0x01;
        uint64_t sum = cs_log_checksum(ev, ev_len, c->seq);
        uint64_t chain = cs_log_chain(prev ? cs_be64_get(prev + 8) : 0, sum);
        cs_be64_put(val, sum);
        cs_be64_put(val + 8, chain);
        rc = raw_put(txn, dbi, c->seq, val, len);
        MDB_dbi meta;
        uint8_t hb[16];
        cs_be64_put(hb, c->seq);
        cs_be64_put(hb + 8, chain);
        MDB_val k = {4, "head"}, v = {16, hb};
        if (!rc && c->head && !(rc = mdb_dbi_open(txn, "meta", 0, &meta)))
            rc = mdb_put(txn, meta, &k, &v, 0);
    }
    free(val);
    free(prev);
    return rc;
}

/* SPEC 4 (the head recorded in `meta`): a last event replaced whole, with a checksum and a
 * chain that verify, still differs from the head the log recorded at its last append: verify
 * names it and the log refuses to grow from it (the head check compares the chain, not only
 * the sequence). */
static void test_log_replaced_last_event_differs_from_recorded_head(void)
{
    fx f;
    CHECK(fx_open_closed_log(&f, "rehead", 5));
    reseal_ctx c = {.seq = 5, .from_seq = 5, .offset = 30};
    CHECK(raw_edit(f.dir, reseal_edit, &c) == 0);
    CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
    cs_log_reader *r;
    cs_log_record rec;
    uint64_t bad = 0;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK_OK(cs_log_reader_get(r, 5, &rec));            /* the record itself verifies ... */
    CHECK(cs_log_reader_verify(r, &bad) == CS_CORRUPT); /* ... the log does not */
    CHECK(bad == 5);
    CHECK(msg_names_seq(cs_log_reader_errmsg(r), 5));
    cs_log_reader_close(r);
    CHECK(append_plain(f.log, 1, 6, NULL) == CS_CORRUPT);
    uint64_t head = 0;
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == 5);
    fx_close(&f);
}

/* SPEC 4 (a range read verifies from its start): a read from seek(k) chains event k onto event
 * k-1, so a changed chain at k is found by the first `next`, not only by a walk from 1. */
static void test_log_range_read_chains_first_event_onto_its_predecessor(void)
{
    fx f;
    CHECK(fx_open_closed_log(&f, "seekchain", 30));
    flip_ctx c = {17, 9, 0x20}; /* a chain byte: the record's own checksum still holds */
    CHECK(raw_edit(f.dir, flip_edit, &c) == 0);
    CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
    cs_log_reader *r;
    cs_log_record rec;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    CHECK_OK(cs_log_reader_seek(r, 16));
    CHECK_OK(cs_log_reader_next(r, &rec));
    CHECK(rec.seq == 16);
    CHECK_OK(cs_log_reader_seek(r, 17));
    CHECK(cs_log_reader_next(r, &rec) == CS_CORRUPT);
    CHECK(msg_names_seq(cs_log_reader_errmsg(r), 17));
    cs_log_reader_close(r);
    fx_close(&f);
}

/* SPEC 4 (verify): an event stored under another sequence than its own is misplaced even when
 * its checksum, its chain and the recorded head were all recomputed for the new key. */
static void test_log_verify_refuses_event_whose_seq_is_not_its_key(void)
{
    fx f;
    CHECK(fx_open_closed_log(&f, "seqkey", 5));
    reseal_ctx c = {.seq = 5, .from_seq = 4, .offset = -1, .head = true};
    CHECK(raw_edit(f.dir, reseal_edit, &c) == 0);
    CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
    uint64_t bad = 0;
    CHECK(log_verify(f.log, &bad) == CS_CORRUPT);
    CHECK(bad == 5);
    fx_close(&f);
    /* the control: the same reseal of the event's own bytes is a log that verifies */
    CHECK(fx_open_closed_log(&f, "seqkey2", 5));
    c.from_seq = 5;
    CHECK(raw_edit(f.dir, reseal_edit, &c) == 0);
    CHECK_OK(cs_log_open(f.dir, NULL, &f.log));
    CHECK_OK(log_verify(f.log, &bad));
    fx_close(&f);
}

/* ---- hostile msgpack --------------------------------------------------------------------- */

typedef struct bytes {
    const char *name;
    const uint8_t *p;
    size_t n;
} bytes;

#define BYTES(name, ...)                                                                           \
    {                                                                                              \
        name, (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})               \
    }

/* Inputs that are not one well-formed msgpack value within their own length. Each would make
 * msgpack-c's unpacker allocate from the claimed length (array32 of 4G elements: ~96 GiB); under
 * the sanitizer build such an allocation aborts the test, so passing also shows none happened. */
static const bytes hostile[] = {
    BYTES("array32 claiming 4G elements", 0xdd, 0xff, 0xff, 0xff, 0xff, 0x00),
    BYTES("map32 claiming 4G pairs", 0xdf, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00),
    BYTES("array16 claiming 100", 0xdc, 0x00, 0x64, 0x01, 0x02, 0x03),
    BYTES("map16 claiming 3 pairs, holding 2", 0xde, 0x00, 0x03, 0x01, 0x01, 0x02, 0x02),
    BYTES("fixmap claiming 2 pairs, holding 1", 0x82, 0xa1, 'a', 0x01),
    BYTES("str32 longer than input", 0xdb, 0x00, 0x01, 0x00, 0x00, 'a', 'b'),
    BYTES("str8 longer than input", 0xd9, 0x05, 'a', 'b'),
    BYTES("fixstr longer than input", 0xa5, 'a'),
    BYTES("bin32 longer than input", 0xc6, 0x7f, 0xff, 0xff, 0xff, 0x00),
    BYTES("ext32 longer than input", 0xc9, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00),
    BYTES("fixext16 cut short", 0xd8, 0x01, 0x00, 0x00),
    BYTES("array32 length cut short", 0xdd, 0xff, 0xff),
    BYTES("uint64 cut short", 0xcf, 0x01, 0x02),
    BYTES("float64 cut short", 0xcb, 0x40, 0x09),
    BYTES("never-used byte 0xc1", 0xc1),
    BYTES("0xc1 inside a map", 0x81, 0xa1, 'k', 0xc1),
};

/* SPEC 4 (msgpack-c trusts container lengths): the bounds check refuses every length that
 * claims more than the input holds, and the never-used byte, before msgpack-c sees the bytes. */
static void test_msgpack_check_refuses_lengths_beyond_input(void)
{
    size_t vlen = 4242;
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        cs_err err = cs_msgpack_check(hostile[i].p, hostile[i].n, CS_MSGPACK_DEPTH_MAX, &vlen);
        if (err != CS_CORRUPT)
            fprintf(stderr, "  accepted: %s\n", hostile[i].name);
        CHECK(err == CS_CORRUPT);
    }
    CHECK(cs_msgpack_check((const uint8_t *)"", 0, CS_MSGPACK_DEPTH_MAX, &vlen) == CS_CORRUPT);
    CHECK(vlen == 4242); /* untouched on failure */
    /* The check reads one value from the start: trailing bytes are the caller's to judge. */
    static const uint8_t two_values[] = {0x92, 0x01, 0xa1, 'x', 0xc0};
    CHECK_OK(cs_msgpack_check(two_values, sizeof(two_values), CS_MSGPACK_DEPTH_MAX, &vlen));
    CHECK(vlen == 4);
}

/* `levels` non-empty nested containers (arrays, or maps {0: ...}) around a nil, or around an
 * empty container when empty_inside. */
static size_t nest(uint8_t *buf, unsigned levels, bool maps, bool empty_inside)
{
    size_t len = 0;
    for (unsigned i = 0; i < levels; i++) {
        buf[len++] = maps ? 0x81 : 0x91;
        if (maps)
            buf[len++] = 0x00;
    }
    buf[len++] = empty_inside ? (maps ? 0x80 : 0x90) : 0xc0;
    return len;
}

/* SPEC 4, CS_MSGPACK_DEPTH_MAX (depth as docs/storage.md defines it: a scalar or an empty
 * container is 0, a non-empty container 1 + its deepest element): depth at the limit is
 * accepted, one more is refused, for arrays and maps; the caller's smaller limit holds; a larger
 * one is capped at the module's. */
static void test_msgpack_check_limits_nesting(void)
{
    uint8_t buf[2 * (CS_MSGPACK_DEPTH_MAX + 2)];
    size_t vlen = 0, len;
    for (int maps = 0; maps < 2; maps++) {
        for (int empty = 0; empty < 2; empty++) {
            len = nest(buf, CS_MSGPACK_DEPTH_MAX, maps, empty);
            CHECK_OK(cs_msgpack_check(buf, len, CS_MSGPACK_DEPTH_MAX, &vlen));
            CHECK(vlen == len);
            len = nest(buf, CS_MSGPACK_DEPTH_MAX + 1, maps, empty);
            CHECK(cs_msgpack_check(buf, len, CS_MSGPACK_DEPTH_MAX, &vlen) == CS_CORRUPT);
            CHECK(cs_msgpack_check(buf, len, 1000, &vlen) == CS_CORRUPT);
        }
    }
    len = nest(buf, 3, false, false);
    CHECK_OK(cs_msgpack_check(buf, len, 3, &vlen));
    CHECK(cs_msgpack_check(buf, len, 2, &vlen) == CS_CORRUPT);
    static const uint8_t nil = 0xc0;
    CHECK_OK(cs_msgpack_check(&nil, 1, 0, &vlen)); /* a scalar has no depth */
}

/* Packs a complete event map with fields nested `depth` containers deep (event map excluded). */
static bool pack_event(msgpack_sbuffer *sb, unsigned fields_depth)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, 9);
    static const char *const u64_keys[] = {"seq", "time", "shop", "id", "version"};
    for (int i = 0; i < 5; i++)
        rc = rc || pack_key(&pk, u64_keys[i]) || msgpack_pack_uint64(&pk, (uint64_t)i + 1);
    rc = rc || pack_key(&pk, "actor") || pack_key(&pk, "ana");
    rc = rc || pack_key(&pk, "kind") || pack_key(&pk, "put");
    rc = rc || pack_key(&pk, "type") || pack_key(&pk, "service");
    rc = rc || pack_key(&pk, "fields");
    if (rc != 0)
        return false;
    return pack_nested_fields(sb, fields_depth);
}

/* SPEC 4: the event decoder refuses every hostile input with corrupt (no allocation from a
 * lying length), refuses trailing bytes and every truncation of a valid event. */
static void test_event_decode_refuses_hostile_input(void)
{
    cs_event_decoder *dec;
    cs_event_view v;
    CHECK_OK(cs_event_decoder_new(&dec));
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        if (cs_event_decode(dec, hostile[i].p, hostile[i].n, &v) != CS_CORRUPT)
            fprintf(stderr, "  accepted: %s\n", hostile[i].name);
        CHECK(cs_event_decode(dec, hostile[i].p, hostile[i].n, &v) == CS_CORRUPT);
    }
    static const uint8_t empty = 0;
    CHECK(cs_event_decode(dec, &empty, 0, &v) == CS_CORRUPT);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(pack_event(&sb, 1));
    CHECK_OK(cs_event_decode(dec, (const uint8_t *)sb.data, sb.size, &v));
    CHECK(v.seq == 1 && v.time_ms == 2 && v.shop == 3 && v.id == 4 && v.version == 5);
    for (size_t len = 0; len < sb.size; len++)
        CHECK(cs_event_decode(dec, (const uint8_t *)sb.data, len, &v) == CS_CORRUPT);
    CHECK(msgpack_sbuffer_write(&sb, "\xc0", 1) == 0); /* trailing byte */
    CHECK(cs_event_decode(dec, (const uint8_t *)sb.data, sb.size, &v) == CS_CORRUPT);
    msgpack_sbuffer_destroy(&sb);

    /* an event whose fields claim 4G elements */
    msgpack_sbuffer_init(&sb);
    CHECK(pack_event(&sb, 1));
    sb.size -= 4; /* drop {"n": nil}: 0x81 0xa1 'n' 0xc0 */
    CHECK(msgpack_sbuffer_write(&sb, "\xdd\xff\xff\xff\xff\x00", 6) == 0);
    CHECK(cs_event_decode(dec, (const uint8_t *)sb.data, sb.size, &v) == CS_CORRUPT);
    msgpack_sbuffer_destroy(&sb);
    cs_event_decoder_free(dec);
}

/* SPEC 4: an event is a map with every documented key of the right kind; one missing or of the
 * wrong kind is corrupt. */
static void test_event_decode_refuses_missing_or_mistyped_key(void)
{
    cs_event_decoder *dec;
    cs_event_view v;
    CHECK_OK(cs_event_decoder_new(&dec));
    msgpack_sbuffer sb;
    msgpack_packer pk;
    /* 8 keys: no "version" */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, 8);
    static const char *const u64_keys[] = {"seq", "time", "shop", "id"};
    for (int i = 0; i < 4; i++)
        rc = rc || pack_key(&pk, u64_keys[i]) || msgpack_pack_uint64(&pk, 1);
    rc = rc || pack_key(&pk, "actor") || pack_key(&pk, "a");
    rc = rc || pack_key(&pk, "kind") || pack_key(&pk, "k");
    rc = rc || pack_key(&pk, "type") || pack_key(&pk, "");
    rc = rc || pack_key(&pk, "fields") || msgpack_pack_map(&pk, 0);
    CHECK(rc == 0);
    CHECK(cs_event_decode(dec, (const uint8_t *)sb.data, sb.size, &v) == CS_CORRUPT);
    msgpack_sbuffer_destroy(&sb);
    /* seq negative, then fields an array */
    msgpack_sbuffer_init(&sb);
    CHECK(pack_event(&sb, 1));
    uint8_t *seq_val = memmem(sb.data, sb.size, "\xa3seq\x01", 5);
    CHECK(seq_val);
    seq_val[4] = 0xff; /* negative fixint -1 */
    CHECK(cs_event_decode(dec, (const uint8_t *)sb.data, sb.size, &v) == CS_CORRUPT);
    seq_val[4] = 0x01;
    CHECK_OK(cs_event_decode(dec, (const uint8_t *)sb.data, sb.size, &v));
    sb.data[sb.size - 4] = (char)0x91; /* {"n": nil} becomes ["n"]: fields not a map */
    sb.size--;
    CHECK(cs_event_decode(dec, (const uint8_t *)sb.data, sb.size, &v) == CS_CORRUPT);
    msgpack_sbuffer_destroy(&sb);
    /* not a map at all */
    static const uint8_t array[] = {0x91, 0x01};
    CHECK(cs_event_decode(dec, array, sizeof(array), &v) == CS_CORRUPT);
    cs_event_decoder_free(dec);
}

/* SPEC 4, CS_MSGPACK_DEPTH_MAX: an event nesting exactly at the limit (the event map, its fields
 * map and 14 arrays) decodes; one level more is corrupt. */
static void test_event_decode_accepts_nesting_at_the_limit(void)
{
    cs_event_decoder *dec;
    cs_event_view v;
    CHECK_OK(cs_event_decoder_new(&dec));
    msgpack_sbuffer at, over;
    msgpack_sbuffer_init(&at);
    msgpack_sbuffer_init(&over);
    CHECK(pack_event(&at, CS_MSGPACK_DEPTH_MAX - 1));
    CHECK(pack_event(&over, CS_MSGPACK_DEPTH_MAX));
    CHECK_OK(cs_event_decode(dec, (const uint8_t *)at.data, at.size, &v));
    CHECK(v.fields.type == MSGPACK_OBJECT_MAP);
    const msgpack_object *o = &v.fields.via.map.ptr[0].val;
    unsigned depth = 2;
    while (o->type == MSGPACK_OBJECT_ARRAY) {
        o = &o->via.array.ptr[0];
        depth++;
    }
    CHECK(o->type == MSGPACK_OBJECT_NIL);
    CHECK(depth == CS_MSGPACK_DEPTH_MAX); /* the nil sits inside the 16th container */
    CHECK(cs_event_decode(dec, (const uint8_t *)over.data, over.size, &v) == CS_CORRUPT);
    msgpack_sbuffer_destroy(&at);
    msgpack_sbuffer_destroy(&over);
    cs_event_decoder_free(dec);
}

/* SPEC 4 (decoders of bytes from disk or the wire): random damage to a valid event never makes
 * the decoder crash, read out of bounds (sanitizer build) or answer other than ok/corrupt. */
static void test_event_decode_survives_random_damage(void)
{
    cs_event_decoder *dec;
    cs_event_view v;
    CHECK_OK(cs_event_decoder_new(&dec));
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(pack_event(&sb, 4));
    uint8_t *copy = malloc(sb.size);
    CHECK(copy);
    uint64_t x = 0x9e3779b97f4a7c15ull; /* fixed seed: the same damage every run */
    for (int round = 0; round < 5000; round++) {
        memcpy(copy, sb.data, sb.size);
        int hits = 1 + round % 4;
        for (int h = 0; h < hits; h++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            copy[(x >> 8) % sb.size] = (uint8_t)x;
        }
        size_t len = sb.size - (round % 7 == 0 ? (x >> 32) % sb.size : 0);
        cs_err err = cs_event_decode(dec, copy, len, &v);
        CHECK(err == CS_OK || err == CS_CORRUPT);
    }
    free(copy);
    msgpack_sbuffer_destroy(&sb);
    cs_event_decoder_free(dec);
}

/* ---- map size ---------------------------------------------------------------------------- */

enum { FULL_BATCH = 16, NOTE_BYTES = 180 };

/* Appends FULL_BATCH ~200-byte events per call until one fails (at most `calls` calls).
 * *last_ok gets the last sequence of the last successful batch; returns the failing code. */
static cs_err append_until_refused(cs_log *log, int calls, uint64_t *last_ok)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    cs_event *evs = NULL;
    cs_err err = CS_NO_MEMORY;
    if (!pack_note(&sb, NOTE_BYTES) || !(evs = events_with_fields(FULL_BATCH, &sb)))
        goto out;
    for (int i = 0; i < calls; i++) {
        uint64_t first;
        if ((err = cs_log_append(log, evs, FULL_BATCH, &first)) != CS_OK)
            break;
        *last_ok = first + FULL_BATCH - 1;
    }
out:
    free(evs);
    msgpack_sbuffer_destroy(&sb);
    return err;
}

static size_t map_size(cs_log *log)
{
    MDB_envinfo info;
    if (mdb_env_info(cs_log_env(log), &info) != 0)
        return 0;
    return info.me_mapsize;
}

/* SPEC 6 storage_full: when the map reaches its maximum the append is refused whole with
 * storage_full; the log keeps every earlier batch, verifies, and reopens the same. */
static void test_log_full_map_refuses_append_and_keeps_log(void)
{
    cs_log_options o = {.map_bytes = 256 * 1024, .map_bytes_max = 256 * 1024};
    fx f;
    CHECK(fx_open(&f, "mapfull", &o));
    uint64_t last_ok = 0, head = 0, bad = 0;
    CHECK(append_until_refused(f.log, 1000, &last_ok) == CS_STORAGE_FULL);
    CHECK(last_ok >= FULL_BATCH);
    CHECK(cs_log_errmsg(f.log)[0] != '\0');
    CHECK(map_size(f.log) == 256 * 1024);
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == last_ok);
    CHECK_OK(log_verify(f.log, &bad));
    CHECK(append_until_refused(f.log, 1, &last_ok) == CS_STORAGE_FULL); /* still full */

    CHECK_OK(fx_reopen(&f, &o));
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == last_ok);
    CHECK_OK(log_verify(f.log, &bad));
    cs_event_view v;
    CHECK_OK(log_read_event(&f, head, &v));
    CHECK(v.seq == head);
    fx_close(&f);
}

/* log.h (map_bytes_max: the map doubles up to it, never past it): with a maximum that is not a
 * doubling of the start (256 KiB -> 384 KiB), the last growth stops at the maximum exactly and the
 * append after it is storage_full. */
static void test_log_map_growth_stops_at_max_exactly(void)
{
    cs_log_options o = {.map_bytes = 256 * 1024, .map_bytes_max = 384 * 1024};
    fx f;
    CHECK(fx_open(&f, "mapclamp", &o));
    uint64_t last_ok = 0, bad = 0;
    CHECK(append_until_refused(f.log, 1000, &last_ok) == CS_STORAGE_FULL);
    CHECK(map_size(f.log) == 384 * 1024);
    CHECK(last_ok >= FULL_BATCH);
    CHECK_OK(log_verify(f.log, &bad));
    fx_close(&f);
}

/* This process's address space in bytes (/proc/self/statm, first field), or 0. */
static size_t vm_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    bool ok = f && fscanf(f, "%lu", &pages) == 1;
    if (f)
        fclose(f);
    return ok ? (size_t)pages * (size_t)sysconf(_SC_PAGESIZE) : 0;
}

/* The child of test_log_failed_resize_leaves_the_log_unusable_until_reopened: its exit code
 * says which step went wrong (0: all as promised). */
static int failed_resize_child(const char *dir, uint64_t *last_ok_out, int fd)
{
    cs_log_options o = {
        .map_bytes = 1 << 20, .map_bytes_max = (size_t)1 << 36, .flags = CS_LOG_NOSYNC};
    cs_log *log;
    if (cs_log_open(dir, &o, &log) != CS_OK)
        return 10;
    enum { EVENT_BYTES = 64 * 1024, BATCH = 16 };
    uint8_t *fields = bin_fields(EVENT_BYTES);
    cs_event evs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        evs[i] = plain_event((uint64_t)i + 1);
        evs[i].fields = fields;
        evs[i].fields_len = EVENT_BYTES + 8;
    }
    /* Room for the heap, not for a map of 32 MiB beside the 16 MiB one LMDB drops late. */
    struct rlimit rl = {.rlim_cur = vm_bytes() + ((size_t)40 << 20), .rlim_max = RLIM_INFINITY};
    if (!fields || vm_bytes() == 0 || setrlimit(RLIMIT_AS, &rl) != 0)
        return 11;
    cs_err err = CS_OK;
    uint64_t last_ok = 0;
    for (int calls = 0; calls < 400 && err == CS_OK; calls++) {
        uint64_t first = 0;
        if ((err = cs_log_append(log, evs, BATCH, &first)) == CS_OK)
            last_ok = first + BATCH - 1;
    }
    if (write(fd, &last_ok, sizeof(last_ok)) != sizeof(last_ok))
        return 12;
    if (err != CS_NO_MEMORY)
        return 13; /* the resize failed for want of address space */
    cs_log_reader *r;
    if (cs_log_reader_open(log, &r) != CS_IO) /* map.c invariant 3: nothing touches the env */
        return 14;
    MDB_txn *t = NULL;
    if (cs_log_read_begin(log, &t) != CS_IO) /* what the engine's reads begin with */
        return 17;
    if (cs_log_append(log, evs, 1, NULL) != CS_IO)
        return 15;
    if (!strstr(cs_log_errmsg(log), "reopen"))
        return 16;
    *last_ok_out = last_ok;
    return 0; /* no close: the environment is not to be touched again */
}

/* log/map.c invariant 3 (a failed resize leaves the environment alone): when growing the map
 * fails (here for want of address space, RLIMIT_AS in a child), the append is refused
 * (no_memory), every later read and write is io_error saying to reopen, and the directory
 * reopened holds every acknowledged event and verifies. Not under AddressSanitizer, whose
 * shadow memory an address-space limit breaks. */
static void test_log_failed_resize_leaves_the_log_unusable_until_reopened(void)
{
#if defined(__SANITIZE_ADDRESS__)
    printf("  (skipped under AddressSanitizer)\n");
    return;
#endif
    char *dir = cs_test_tmpdir("resizefail");
    CHECK(dir);
    int fds[2];
    CHECK(pipe(fds) == 0);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        uint64_t ignored;
        _exit(failed_resize_child(dir, &ignored, fds[1]));
    }
    close(fds[1]);
    uint64_t last_ok = 0;
    ssize_t got = read(fds[0], &last_ok, sizeof(last_ok));
    close(fds[0]);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fprintf(stderr, "  child: %s %d\n", WIFEXITED(status) ? "exit" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(got == sizeof(last_ok) && last_ok >= 16);
    cs_log *log;
    uint64_t head = 0, bad = 0;
    CHECK_OK(cs_log_open(dir, NULL, &log));
    cs_err herr = log_head(log, &head), verr = log_verify(log, &bad);
    cs_log_close(log);
    cs_test_rmtree(dir);
    free(dir);
    CHECK(herr == CS_OK && head == last_ok);
    CHECK(verr == CS_OK);
}

/* SPEC 4 / log.h (the map doubles up to its maximum): 5 MB of events in a log that starts at
 * 256 KiB grow the map, and the log verifies before and after a reopen. */
static void test_log_map_grows_up_to_max(void)
{
    cs_log_options o = {.map_bytes = 256 * 1024, .map_bytes_max = 64 * 1024 * 1024};
    fx f;
    CHECK(fx_open(&f, "mapgrow", &o));
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(pack_note(&sb, NOTE_BYTES));
    enum { BATCH = 1000, BATCHES = 25 }; /* 25,000 x ~200 B = 5 MB */
    cs_event *evs = events_with_fields(BATCH, &sb);
    CHECK(evs);
    for (int i = 0; i < BATCHES; i++) {
        uint64_t first = 0;
        CHECK_OK(cs_log_append(f.log, evs, BATCH, &first));
        CHECK(first == (uint64_t)i * BATCH + 1);
    }
    size_t grown = map_size(f.log);
    CHECK(grown >= 5u * 1024 * 1024);
    CHECK(grown <= 64u * 1024 * 1024);
    uint64_t head = 0, bad = 0;
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == BATCH * BATCHES);
    CHECK_OK(log_verify(f.log, &bad));
    /* Reopened with the small initial size, LMDB maps at least the data it holds, and the
     * next append grows the map again. */
    CHECK_OK(fx_reopen(&f, &o));
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == BATCH * BATCHES);
    CHECK_OK(log_verify(f.log, &bad));
    uint64_t first = 0;
    CHECK_OK(cs_log_append(f.log, evs, BATCH, &first));
    CHECK(first == BATCH * BATCHES + 1);
    CHECK(map_size(f.log) <= 64u * 1024 * 1024);
    CHECK_OK(log_verify(f.log, &bad));
    free(evs);
    msgpack_sbuffer_destroy(&sb);
    fx_close(&f);
}

/* SPEC 4 (the map is resized only while this process has no transaction open): an open reader
 * keeps the map from growing, so the append is refused with storage_full, and succeeds once
 * the reader is closed. */
static void test_log_map_does_not_grow_under_open_reader(void)
{
    cs_log_options o = {.map_bytes = 256 * 1024, .map_bytes_max = 64 * 1024 * 1024};
    fx f;
    CHECK(fx_open(&f, "mapreader", &o));
    cs_log_reader *r;
    CHECK_OK(cs_log_reader_open(f.log, &r));
    uint64_t last_ok = 0, head = 0, bad = 0;
    cs_err err = append_until_refused(f.log, 1000, &last_ok);
    cs_log_reader_close(r);
    CHECK(err == CS_STORAGE_FULL);
    CHECK(map_size(f.log) == 256 * 1024);
    CHECK_OK(log_head(f.log, &head));
    CHECK(head == last_ok);
    uint64_t after = last_ok; /* 200 batches = 640 KB: more than the first map holds */
    CHECK(append_until_refused(f.log, 200, &after) == CS_OK);
    CHECK(after == last_ok + 200 * FULL_BATCH);
    CHECK(map_size(f.log) > 256 * 1024);
    CHECK_OK(log_verify(f.log, &bad));
    fx_close(&f);
}

/* ---- error names ------------------------------------------------------------------------- */

/* SPEC 6: every code has its stable product name and exit code class. */
static void test_err_names_are_the_product_codes(void)
{
    CHECK(strcmp(cs_err_name(CS_OK), "ok") == 0);
    CHECK(strcmp(cs_err_name(CS_INVALID_INPUT), "invalid_input") == 0);
    CHECK(strcmp(cs_err_name(CS_STORAGE_FULL), "storage_full") == 0);
    CHECK(strcmp(cs_err_name(CS_CORRUPT), "corrupt") == 0);
    CHECK(strcmp(cs_err_name(CS_PROTOCOL_MISMATCH), "protocol_mismatch") == 0);
    CHECK(strcmp(cs_err_name(CS_ERR_COUNT), "unknown") == 0);
    CHECK(cs_err_exit_code(CS_OK) == 0);
    CHECK(cs_err_exit_code(CS_USAGE) == 1);
    CHECK(cs_err_exit_code(CS_INVALID_INPUT) == 2);
    CHECK(cs_err_exit_code(CS_CORRUPT) == 3);
    CHECK(cs_err_exit_code(CS_STORAGE_FULL) == 3);
    CHECK(cs_err_exit_code(CS_NETWORK) == 4);
}

/* SPEC 6 (bad input changes nothing): a directory holding another program's LMDB environment is
 * refused as corrupt and left as it was, not taken over as a new log. */
static void test_log_refuses_foreign_lmdb_environment(void)
{
    char *dir = cs_test_tmpdir("foreign");
    CHECK(dir);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    CHECK(mdb_env_create(&env) == 0);
    CHECK(mdb_env_open(env, dir, 0, 0600) == 0);
    CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    CHECK(mdb_dbi_open(txn, NULL, 0, &dbi) == 0);
    MDB_val k = {5, "hello"}, v = {5, "world"};
    CHECK(mdb_put(txn, dbi, &k, &v, 0) == 0);
    CHECK(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
    cs_log *log = NULL;
    CHECK(cs_log_open(dir, NULL, &log) == CS_CORRUPT);
    CHECK(log == NULL);
    CHECK(mdb_env_create(&env) == 0);
    CHECK(mdb_env_open(env, dir, MDB_RDONLY, 0600) == 0);
    CHECK(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) == 0);
    MDB_stat ms;
    CHECK(mdb_stat(txn, dbi, &ms) == 0);
    CHECK(ms.ms_entries == 1); /* still just the other program's key */
    mdb_txn_abort(txn);
    mdb_env_close(env);
    cs_test_rmtree(dir);
    free(dir);
}

/* SPEC 4 (verify finds any lost byte): removing the last events is found through the head
 * recorded in `meta`, named at the first missing sequence, and the log refuses to grow from
 * the wrong place. */
static void test_log_lost_tail_is_corrupt_and_not_extended(void)
{
    char *dir = cs_test_tmpdir("tail");
    CHECK(dir);
    cs_log *log;
    CHECK_OK(cs_log_open(dir, NULL, &log));
    cs_event ev[5];
    for (int i = 0; i < 5; i++)
        ev[i] = (cs_event){.shop = 1, .id = (uint64_t)i + 1, .kind = CS_STR("put")};
    CHECK_OK(cs_log_append(log, ev, 5, NULL));
    MDB_txn *txn;
    MDB_dbi dbi;
    CHECK(mdb_txn_begin(cs_log_env(log), NULL, 0, &txn) == 0);
    CHECK(mdb_dbi_open(txn, "events", 0, &dbi) == 0);
    for (uint64_t seq = 4; seq <= 5; seq++) {
        uint8_t kb[8];
        cs_be64_put(kb, seq);
        MDB_val k = {8, kb};
        CHECK(mdb_del(txn, dbi, &k, NULL) == 0);
    }
    CHECK(mdb_txn_commit(txn) == 0);
    cs_log_reader *r;
    CHECK_OK(cs_log_reader_open(log, &r));
    uint64_t bad = 0;
    cs_err verr = cs_log_reader_verify(r, &bad);
    bool named = strstr(cs_log_reader_errmsg(r), "4") != NULL;
    cs_log_reader_close(r);
    CHECK(verr == CS_CORRUPT);
    CHECK(bad == 4);
    CHECK(named);
    CHECK(cs_log_append(log, ev, 1, NULL) == CS_CORRUPT);
    cs_log_close(log);
    cs_test_rmtree(dir);
    free(dir);
}

/* SPEC 6 (bad input changes nothing): msgpack's str holds UTF-8, so an actor, kind or type that
 * is not (a stray byte, an overlong, a surrogate, a cut sequence) is refused; real UTF-8 is
 * kept as it is. */
static void test_log_refuses_event_strings_that_are_not_utf8(void)
{
    char *dir = cs_test_tmpdir("utf8");
    CHECK(dir);
    cs_log *log;
    CHECK_OK(cs_log_open(dir, NULL, &log));
    static const char *const bad[] = {"ana\xff", "\xc0\xaf", "\xed\xa0\x80", "caf\xc3",
                                      "\xf4\x90\x80\x80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cs_event ev = {.kind = CS_STR("put"), .actor = {bad[i], strlen(bad[i])}};
        CHECK(cs_log_append(log, &ev, 1, NULL) == CS_INVALID_INPUT);
        ev.actor = CS_STR("ana");
        ev.type = (cs_str){bad[i], strlen(bad[i])};
        CHECK(cs_log_append(log, &ev, 1, NULL) == CS_INVALID_INPUT);
    }
    cs_event good = {.kind = CS_STR("put"), .actor = CS_STR("Jo\xc3\xa3o \xf0\x9f\x90\xb6")};
    uint64_t first = 0;
    CHECK_OK(cs_log_append(log, &good, 1, &first));
    CHECK(first == 1); /* none of the refused ones took a sequence */
    cs_log_close(log);
    cs_test_rmtree(dir);
    free(dir);
}

/* An event whose fields are the map {"v": <value>}, the value given as raw msgpack bytes. */
static size_t fields_with(uint8_t *buf, const uint8_t *value, size_t n)
{
    buf[0] = 0x81;
    buf[1] = 0xa1;
    buf[2] = 'v';
    memcpy(buf + 3, value, n);
    return 3 + n;
}

#define RAW(...)                                                                                   \
    {                                                                                              \
        (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})                     \
    }

/* Issue 12 (hostile input), SPEC 6: a str anywhere inside `fields` that is not UTF-8, and an
 * ext of type -1 that is not a valid msgpack timestamp, are refused at append with a sentence
 * naming the rule, before anything is written (the sequence is not taken); the same bytes
 * reaching a reader (a segment from a hostile head office, an import file) are corrupt. Valid
 * timestamps of all three sizes and real UTF-8 are stored as they are. */
static void test_log_refuses_field_strings_not_utf8_and_bad_timestamps(void)
{
    char *dir = cs_test_tmpdir("fieldutf8");
    CHECK(dir);
    cs_log *log;
    CHECK_OK(cs_log_open(dir, NULL, &log));
    const struct {
        const uint8_t *p;
        size_t n;
    } bad[] = {
        RAW(0xa2, 'a', 0xff),                    /* fixstr with a stray byte */
        RAW(0xd9, 0x02, 0xc0, 0xaf),             /* str8, an overlong '/' */
        RAW(0xda, 0x00, 0x03, 0xed, 0xa0, 0x80), /* str16, a surrogate */
        RAW(0x91, 0x81, 0xa1, 'k', 0xa1, 0xc3),  /* deep in a list of maps, a cut sequence */
        RAW(0x81, 0xa2, 'k', 0xfe, 0x01),        /* a map key */
        RAW(0xd4, 0xff, 0x00),                   /* fixext 1, type -1: no timestamp size */
        RAW(0xd7, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0), /* timestamp 64, nanoseconds >= 1e9 */
        RAW(0xc7, 0x0c, 0xff, 0x3b, 0x9a, 0xca, 0x00, 0, 0, 0, 0, 0, 0, 0, 0), /* 96, ns = 1e9 */
        RAW(0xc7, 0x05, 0xff, 1, 2, 3, 4, 5), /* ext8 of 5 bytes, type -1 */
    };
    const struct {
        const uint8_t *p;
        size_t n;
    } good[] = {
        RAW(0xa5, 'o', 'l', 0xc3, 0xa1, '!'),                /* olá! */
        RAW(0xd6, 0xff, 0x5f, 0x00, 0x00, 0x00),             /* timestamp 32 */
        RAW(0xd7, 0xff, 0xee, 0x6b, 0x27, 0xfc, 0, 0, 0, 1), /* timestamp 64, 999999999 ns */
        RAW(0xc7, 0x0c, 0xff, 0x3b, 0x9a, 0xc9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff),                   /* timestamp 96, before 1970 */
        RAW(0xd4, 0x07, 0x00),       /* another ext type: any bytes */
        RAW(0xc4, 0x02, 0xff, 0xfe), /* bin: any bytes */
    };
    uint8_t f[64];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cs_event ev = {
            .kind = CS_STR("put"), .fields = f, .fields_len = fields_with(f, bad[i].p, bad[i].n)};
        CHECK(cs_log_append(log, &ev, 1, NULL) == CS_INVALID_INPUT);
        CHECK(strstr(cs_log_errmsg(log), "UTF-8") && strstr(cs_log_errmsg(log), "timestamp"));
    }
    cs_event_decoder *dec;
    CHECK_OK(cs_event_decoder_new(&dec));
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        cs_event ev = {
            .kind = CS_STR("put"), .fields = f, .fields_len = fields_with(f, good[i].p, good[i].n)};
        uint64_t seq = 0;
        CHECK_OK(cs_log_append(log, &ev, 1, &seq));
        CHECK(seq == i + 1); /* none of the refused ones took a sequence */
    }
    /* The reader's side: an event carrying a bad str decodes as corrupt, the good one does not. */
    msgpack_sbuffer sb;
    for (int k = 0; k < 2; k++) {
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 9);
        static const char *const ukeys[] = {"seq", "time", "shop", "id", "version"};
        for (int j = 0; j < 5; j++) {
            pack_key(&pk, ukeys[j]);
            msgpack_pack_uint64(&pk, 1);
        }
        static const char *const skeys[] = {"actor", "kind", "type"};
        for (int j = 0; j < 3; j++) {
            pack_key(&pk, skeys[j]);
            msgpack_pack_str_with_body(&pk, "a", 1);
        }
        pack_key(&pk, "fields");
        size_t n = fields_with(f, k ? good[0].p : bad[0].p, k ? good[0].n : bad[0].n);
        msgpack_sbuffer_write(&sb, (const char *)f, n);
        cs_event_view v;
        cs_err err = cs_event_decode(dec, (const uint8_t *)sb.data, sb.size, &v);
        msgpack_sbuffer_destroy(&sb);
        CHECK(k ? err == CS_OK : err == CS_CORRUPT);
    }
    cs_event_decoder_free(dec);
    cs_log_close(log);
    cs_test_rmtree(dir);
    free(dir);
}

/* SPEC 6 (UTF-8, RFC 3629 table 3-7): each lead byte's range of the next byte is exact: the
 * first and last code point of every range is accepted, the sequence one step outside refused. */
static void test_log_utf8_ranges_are_exact_at_both_ends(void)
{
    char *dir = cs_test_tmpdir("utf8b");
    CHECK(dir);
    cs_log *log;
    CHECK_OK(cs_log_open(dir, NULL, &log));
    static const char *const good[] = {"\x7f",
                                       "\xc2\x80",
                                       "\xdf\xbf",
                                       "\xe0\xa0\x80",
                                       "\xe0\xbf\xbf",
                                       "\xe1\x80\x80",
                                       "\xec\xbf\xbf",
                                       "\xed\x80\x80",
                                       "\xed\x9f\xbf",
                                       "\xee\x80\x80",
                                       "\xef\xbf\xbf",
                                       "\xf0\x90\x80\x80",
                                       "\xf0\xbf\xbf\xbf",
                                       "\xf1\x80\x80\x80",
                                       "\xf3\xbf\xbf\xbf",
                                       "\xf4\x80\x80\x80",
                                       "\xf4\x8f\xbf\xbf"};
    static const char *const bad[] = {"\x80",
                                      "\xc1\xbf",
                                      "\xc2\x7f",
                                      "\xc2\xc0",
                                      "\xe0\x9f\xbf",
                                      "\xe0\xa0\x7f",
                                      "\xe1\x80\xc0",
                                      "\xed\xa0\x80",
                                      "\xf0\x8f\xbf\xbf",
                                      "\xf4\x90\x80\x80",
                                      "\xf4\x8f\xbf\x7f",
                                      "\xf5\x80\x80\x80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cs_event ev = {.kind = CS_STR("put"), .actor = {bad[i], strlen(bad[i])}};
        cs_err err = cs_log_append(log, &ev, 1, NULL);
        if (err != CS_INVALID_INPUT)
            fprintf(stderr, "  bad string %zu accepted\n", i);
        CHECK(err == CS_INVALID_INPUT);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        cs_event ev = {.kind = CS_STR("put"), .actor = {good[i], strlen(good[i])}};
        uint64_t seq = 0;
        cs_err err = cs_log_append(log, &ev, 1, &seq);
        if (err != CS_OK)
            fprintf(stderr, "  good string %zu refused\n", i);
        CHECK(err == CS_OK && seq == i + 1);
    }
    cs_log_close(log);
    cs_test_rmtree(dir);
    free(dir);
}

/* cs_utf8_prefix, which cuts a message so that it stays a str: it stops before the first byte
 * that does not begin a whole, well-formed character. */
static void test_utf8_prefix_and_cut_stop_before_a_cut_character(void)
{
    CHECK(cs_utf8_prefix("", 0) == 0);
    CHECK(cs_utf8_prefix("abcdefghijklmnop", 16) == 16);
    CHECK(cs_utf8_prefix("abcdefgh\xc3\xa1", 10) == 10);
    CHECK(cs_utf8_prefix("abcdefgh\xc3", 9) == 8);     /* cut inside á */
    CHECK(cs_utf8_prefix("ab\xf0\x9f\x90", 5) == 2);   /* cut inside an emoji */
    CHECK(cs_utf8_prefix("abcdefghij\xff", 11) == 10); /* a stray byte after the fast path */
    CHECK(cs_utf8_prefix("\xe0\x80\x80", 3) == 0);     /* overlong */
    /* cs_utf8_cut: a text cut by a buffer ends before a character the cut split, never
     * inside it; a cut between characters stays where it is. */
    CHECK(cs_utf8_cut("ab\xc3\xa1", 4) == 4);
    CHECK(cs_utf8_cut("ab\xc3\xa1", 3) == 2);
    CHECK(cs_utf8_cut("ab\xf0\x9f\x90\xb6", 5) == 2);
    CHECK(cs_utf8_cut("ab\xf0\x9f\x90\xb6", 6) == 6);
    CHECK(cs_utf8_cut("abc", 2) == 2);
    /* and a message formatted into too small a buffer is cut so (it goes out as a str) */
    char small[6];
    cs_errmsg_format(small, sizeof(small), CS_INVALID_INPUT, "%s", "abcd\xc3\xa1");
    CHECK(strcmp(small, "abcd") == 0);
}

int main(void)
{
    RUN(test_log_refuses_foreign_lmdb_environment);
    RUN(test_log_refuses_event_strings_that_are_not_utf8);
    RUN(test_log_refuses_field_strings_not_utf8_and_bad_timestamps);
    RUN(test_utf8_prefix_and_cut_stop_before_a_cut_character);
    RUN(test_log_utf8_ranges_are_exact_at_both_ends);
    RUN(test_log_lost_tail_is_corrupt_and_not_extended);
    RUN(test_log_round_trips_every_field_kind);
    RUN(test_log_round_trips_event_without_fields);
    RUN(test_log_batch_assigns_consecutive_seqs_from_1);
    RUN(test_log_times_never_decrease);
    RUN(test_log_seq_at_time_finds_first_at_or_after);
    RUN(test_log_reader_head_and_get_do_not_disturb_iteration);
    RUN(test_log_refuses_fields_that_are_not_a_map);
    RUN(test_log_refuses_truncated_or_trailing_fields);
    RUN(test_log_refuses_fields_with_lying_lengths);
    RUN(test_log_refuses_fields_deeper_than_an_event_may_nest);
    RUN(test_log_refuses_strings_over_limit);
    RUN(test_log_refuses_empty_kind);
    RUN(test_log_refuses_empty_and_oversized_batch);
    RUN(test_log_refuses_whole_batch_when_last_event_is_bad);
    RUN(test_log_event_size_limit_is_exact);
    RUN(test_log_failed_txn_stays_failed);
    RUN(test_log_write_commits_events_with_caller_data_or_neither);
    RUN(test_log_flipped_byte_is_corrupt_on_read_and_verify);
    RUN(test_log_verify_detects_changed_chain);
    RUN(test_log_verify_detects_lost_event);
    RUN(test_log_verify_detects_reordered_events);
    RUN(test_log_refuses_append_onto_corrupt_tail);
    RUN(test_log_replaced_last_event_differs_from_recorded_head);
    RUN(test_log_range_read_chains_first_event_onto_its_predecessor);
    RUN(test_log_verify_refuses_event_whose_seq_is_not_its_key);
    RUN(test_msgpack_check_refuses_lengths_beyond_input);
    RUN(test_msgpack_check_limits_nesting);
    RUN(test_event_decode_refuses_hostile_input);
    RUN(test_event_decode_refuses_missing_or_mistyped_key);
    RUN(test_event_decode_accepts_nesting_at_the_limit);
    RUN(test_event_decode_survives_random_damage);
    RUN(test_log_full_map_refuses_append_and_keeps_log);
    RUN(test_log_map_growth_stops_at_max_exactly);
    RUN(test_log_failed_resize_leaves_the_log_unusable_until_reopened);
    RUN(test_log_map_grows_up_to_max);
    RUN(test_log_map_does_not_grow_under_open_reader);
    RUN(test_err_names_are_the_product_codes);
    int rc = cs_test_finish();
    /* A failed test leaks what it held when its CHECK returned: skip the leak report, which
     * would only bury the failure. A passing run still exits normally and is leak-checked. */
    if (rc != 0) {
        fflush(NULL);
        _exit(rc);
    }
    return rc;
}
