/*
 * test_storage_reader.c: docs/storage.md is enough to read and verify the log without our C
 * (SPEC 4: "any one event is readable on its own by any msgpack library"; `audit verify` finds
 * any changed, lost or reordered byte). Writes a few hundred varied events through log/log.h,
 * then runs tests/storage_reader.py, a Python reader written from the document alone, and
 * checks that it verifies the log, returns the same events, and finds the same corruption as
 * cs_log_reader_verify.
 *
 * Needs /usr/bin/python3 with Debian's python3-lmdb, python3-msgpack and python3-xxhash
 * (tools/setup.sh installs them). Their absence is a failure, not a skip.
 *
 * The script is found through the macro CS_SOURCE_DIR, else the environment variable
 * CS_SOURCE_DIR, else this file's own (absolute, as CMake compiles it) path, else
 * ../../tests/storage_reader.py from ctest's working directory (the build's tests/).
 */
#include "log/log.h"
#include "tests/harness.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <sys/wait.h>

#define PYTHON "/usr/bin/python3"
#define N_EVENTS 300u
#define BIG_STRING_BYTES (100u * 1024u)

/* ---- running the Python reader ----------------------------------------------------------- */

static char script[PATH_MAX];

static bool find_script(void)
{
#ifdef CS_SOURCE_DIR
    snprintf(script, sizeof(script), "%s/tests/storage_reader.py", CS_SOURCE_DIR);
    return access(script, R_OK) == 0;
#else
    const char *env = getenv("CS_SOURCE_DIR");
    if (env && *env) {
        snprintf(script, sizeof(script), "%s/tests/storage_reader.py", env);
        if (access(script, R_OK) == 0)
            return true;
    }
    const char *self = __FILE__;
    const char *slash = strrchr(self, '/');
    if (self[0] == '/' && slash) {
        snprintf(script, sizeof(script), "%.*s/storage_reader.py", (int)(slash - self), self);
        if (access(script, R_OK) == 0)
            return true;
    }
    snprintf(script, sizeof(script), "../../tests/storage_reader.py");
    return access(script, R_OK) == 0;
#endif
}

/* Runs PYTHON -I with argv (NULL-terminated, after the interpreter) and returns its exit
 * status (-1 when it did not exit normally); *out gets stdout and stderr together,
 * NUL-terminated, owned by the caller. */
static int run(const char *const *argv, char **out)
{
    *out = NULL;
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        const char *args[16] = {PYTHON, "-I"};
        size_t n = 2;
        for (; *argv && n < 15; argv++)
            args[n++] = *argv;
        args[n] = NULL;
        execv(PYTHON, (char *const *)args);
        fprintf(stderr, "cannot run %s: %s\n", PYTHON, strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);
    ssize_t got;
    while (buf) {
        if (len + 1 == cap) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
        got = read(fds[0], buf + len, cap - 1 - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    close(fds[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (buf)
        buf[len] = '\0';
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Runs the reader on dir with an optional flag; returns its exit status, output in *out. */
static int reader(const char *flag, const char *dir, char **out)
{
    const char *argv[] = {script, flag ? flag : dir, flag ? dir : NULL, NULL};
    return run(argv, out);
}

/* The reader's verdict on dir: the N of "ok N events", or -(SEQ) of "corrupt at SEQ", or
 * INT64_MIN when the output is neither (printed, to see why). */
static int64_t verdict(const char *flag, const char *dir)
{
    char *out;
    int st = reader(flag, dir, &out);
    if (!out)
        return INT64_MIN;
    unsigned long long n;
    int64_t v = INT64_MIN;
    if (st == 0 && sscanf(out, "ok %llu events", &n) == 1)
        v = (int64_t)n;
    else if (st == 3 && sscanf(out, "corrupt at %llu", &n) == 1)
        v = -(int64_t)n;
    else
        fprintf(stderr, "  storage_reader.py exited %d: %s\n", st, out);
    free(out);
    return v;
}

/* cs_log_reader_verify's verdict in the same form, to compare the two readers. */
static int64_t c_verdict(cs_log *log)
{
    cs_log_reader *r;
    if (cs_log_reader_open(log, &r) != CS_OK)
        return INT64_MIN;
    uint64_t bad = 0, head = 0;
    cs_err err = cs_log_reader_verify(r, &bad);
    if (err == CS_OK)
        err = cs_log_reader_head(r, &head);
    cs_log_reader_close(r);
    if (err == CS_OK)
        return (int64_t)head;
    return err == CS_CORRUPT ? -(int64_t)bad : INT64_MIN;
}

/* ---- raw LMDB access, to damage the store the way a disk or a person would -------------- */

static bool raw_begin(cs_log *log, MDB_txn **txn, MDB_dbi *dbi, const char *db)
{
    if (mdb_txn_begin(cs_log_env(log), NULL, 0, txn) != 0)
        return false;
    if (mdb_dbi_open(*txn, db, 0, dbi) != 0) {
        mdb_txn_abort(*txn);
        return false;
    }
    return true;
}

static void be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* A copy of the stored value of seq (owned by the caller), or NULL. */
static uint8_t *raw_get(cs_log *log, uint64_t seq, size_t *len)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    if (!raw_begin(log, &txn, &dbi, "events"))
        return NULL;
    uint8_t kb[8];
    be64(kb, seq);
    MDB_val k = {8, kb}, v;
    uint8_t *copy = NULL;
    if (mdb_get(txn, dbi, &k, &v) == 0 && (copy = malloc(v.mv_size)) != NULL) {
        memcpy(copy, v.mv_data, v.mv_size);
        *len = v.mv_size;
    }
    mdb_txn_abort(txn);
    return copy;
}

/* Puts (val != NULL) or deletes the value of seq. */
static bool raw_set(cs_log *log, uint64_t seq, const uint8_t *val, size_t len)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    if (!raw_begin(log, &txn, &dbi, "events"))
        return false;
    uint8_t kb[8];
    be64(kb, seq);
    MDB_val k = {8, kb}, v = {len, (void *)val};
    int rc = val ? mdb_put(txn, dbi, &k, &v, 0) : mdb_del(txn, dbi, &k, NULL);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return false;
    }
    return mdb_txn_commit(txn) == 0;
}

/* ---- the events written ------------------------------------------------------------------ */

typedef struct written {
    msgpack_sbuffer fields; /* empty when the event had fields = NULL */
    json_t *expect;         /* what the JSON view of `fields` must be (docs/storage.md) */
} written;

static void pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* Event i's fields, in msgpack and as the JSON view the reader must print for them. Returns
 * false for "no fields" (NULL, stored as an empty map). */
static bool make_fields(unsigned i, msgpack_packer *pk, json_t **expect)
{
    char name[32];
    snprintf(name, sizeof(name), "item %u", i);
    if (i == 150) { /* one large event: a long description */
        char *big = malloc(BIG_STRING_BYTES + 1);
        if (!big)
            return false;
        for (unsigned j = 0; j < BIG_STRING_BYTES; j++)
            big[j] = (char)('a' + j % 26);
        big[BIG_STRING_BYTES] = '\0';
        msgpack_pack_map(pk, 1);
        pack_str(pk, "description");
        pack_str(pk, big);
        *expect = json_pack("{s:s}", "description", big);
        free(big);
        return true;
    }
    switch (i % 8) {
    case 0:
        msgpack_pack_map(pk, 3);
        pack_str(pk, "name");
        pack_str(pk, name);
        pack_str(pk, "price");
        msgpack_pack_uint64(pk, (uint64_t)i * 100);
        pack_str(pk, "active");
        msgpack_pack_true(pk);
        *expect =
            json_pack("{s:s,s:I,s:b}", "name", name, "price", (json_int_t)i * 100, "active", 1);
        return true;
    case 1:
        msgpack_pack_map(pk, 3);
        pack_str(pk, "tags");
        msgpack_pack_array(pk, 3);
        pack_str(pk, "a");
        pack_str(pk, "b");
        msgpack_pack_uint32(pk, i);
        pack_str(pk, "note");
        msgpack_pack_nil(pk);
        pack_str(pk, "ratio");
        msgpack_pack_double(pk, 0.25 * i);
        *expect = json_pack("{s:[s,s,I],s:n,s:f}", "tags", "a", "b", (json_int_t)i, "note", "ratio",
                            0.25 * i);
        return true;
    case 2:
        msgpack_pack_map(pk, 3);
        pack_str(pk, "nested");
        msgpack_pack_map(pk, 1);
        pack_str(pk, "a");
        msgpack_pack_map(pk, 1);
        pack_str(pk, "b");
        msgpack_pack_array(pk, 2);
        msgpack_pack_int(pk, 1);
        msgpack_pack_array(pk, 1);
        msgpack_pack_float(pk, 1.5f);
        pack_str(pk, "neg");
        msgpack_pack_int64(pk, -(int64_t)i - 1);
        pack_str(pk, "min");
        msgpack_pack_int64(pk, INT64_MIN);
        *expect = json_pack("{s:{s:{s:[i,[f]]}},s:I,s:I}", "nested", "a", "b", 1, 1.5, "neg",
                            (json_int_t) - (int64_t)i - 1, "min", (json_int_t)INT64_MIN);
        return true;
    case 3: /* bin and ext: JSON has neither */
        msgpack_pack_map(pk, 2);
        pack_str(pk, "photo");
        msgpack_pack_bin_with_body(pk, "\x00\xff\x10", 3);
        pack_str(pk, "custom");
        msgpack_pack_ext_with_body(pk, "\x07", 1, 5);
        *expect = json_pack("{s:{s:s},s:{s:i,s:s}}", "photo", "$bin", "AP8Q", "custom", "$ext", 5,
                            "data", "Bw==");
        return true;
    case 4:
        msgpack_pack_map(pk, 4);
        pack_str(pk, "utf8");
        pack_str(pk, "Jos\xc3\xa9 \xe2\x9c\x82 \xc3\xbc");
        pack_str(pk, "");
        pack_str(pk, "empty key");
        pack_str(pk, "empty");
        msgpack_pack_array(pk, 0);
        pack_str(pk, "emptymap");
        msgpack_pack_map(pk, 0);
        *expect = json_pack("{s:s,s:s,s:[],s:{}}", "utf8", "Jos\xc3\xa9 \xe2\x9c\x82 \xc3\xbc", "",
                            "empty key", "empty", "emptymap");
        return true;
    case 5:
        *expect = json_object();
        return false;
    case 6: /* a key that is not a string */
        msgpack_pack_map(pk, 1);
        msgpack_pack_uint32(pk, i);
        pack_str(pk, "by number");
        *expect = json_pack("{s:[[I,s]]}", "$map", (json_int_t)i, "by number");
        return true;
    default: /* a float JSON cannot hold, and a deep but legal nesting (fields <= 15) */
        msgpack_pack_map(pk, 2);
        pack_str(pk, "nan");
        msgpack_pack_double(pk, __builtin_nan(""));
        pack_str(pk, "deep");
        for (int d = 0; d < 14; d++)
            msgpack_pack_array(pk, 1);
        msgpack_pack_uint32(pk, i);
        json_t *deep = json_integer(i);
        for (int d = 0; d < 14; d++) {
            json_t *a = json_array();
            json_array_append_new(a, deep);
            deep = a;
        }
        *expect = json_pack("{s:{s:s},s:o}", "nan", "$float", "nan", "deep", deep);
        return true;
    }
}

static const char *const actors[] = {"ana", "Jos\xc3\xa9", "sync-daemon", ""};
static const char *const kinds[] = {"put", "delete", "link", "unlink", "shop_join"};
static const char *const types[] = {"service", "product", "", "notification"};

/* Appends N_EVENTS varied events in batches of varied sizes; w[i] gets event i+1's fields. */
static bool write_events(cs_log *log, written *w)
{
    static char long_actor[CS_EVENT_STR_BYTES_MAX + 1];
    memset(long_actor, 'x', CS_EVENT_STR_BYTES_MAX);
    static const unsigned batches[] = {1, 2, 5, 17, 40, 1, 64, 3};
    cs_event evs[64];
    uint64_t t_ms = 1700000000000ull;
    unsigned i = 0;
    for (unsigned b = 0; i < N_EVENTS; b++) {
        unsigned n = batches[b % 8];
        if (n > N_EVENTS - i)
            n = N_EVENTS - i;
        for (unsigned j = 0; j < n; j++, i++) {
            msgpack_sbuffer_init(&w[i].fields);
            msgpack_packer pk;
            msgpack_packer_init(&pk, &w[i].fields, msgpack_sbuffer_write);
            bool has = make_fields(i, &pk, &w[i].expect);
            if (!w[i].expect)
                return false;
            t_ms += (i % 3 == 0) ? 0 : 250; /* some share a time */
            cs_event *e = &evs[j];
            *e = (cs_event){
                .time_ms = t_ms,
                .shop = 1 + i % 5,
                .id = i % 4 == 3 ? 0 : 1000 + i,
                .version = i % 4 == 3 ? 0 : 1 + i / 7,
                .actor = {actors[i % 4], strlen(actors[i % 4])},
                .kind = {kinds[i % 5], strlen(kinds[i % 5])},
                .type = {types[i % 4], strlen(types[i % 4])},
                .fields = has ? (const uint8_t *)w[i].fields.data : NULL,
                .fields_len = has ? w[i].fields.size : 0,
            };
            if (i == 290)
                e->time_ms = 0; /* "now": later ones are clamped */
            if (i % 50 == 20)
                e->time_ms = 1600000000000ull; /* the past: clamped */
            if (i == 77)
                e->actor = (cs_str){long_actor, CS_EVENT_STR_BYTES_MAX};
            if (i == 200)
                e->id = e->version = UINT64_MAX;
        }
        uint64_t first;
        if (cs_log_append(log, evs, n, &first) != CS_OK || first != i - n + 1)
            return false;
    }
    return true;
}

static void free_written(written *w)
{
    for (unsigned i = 0; i < N_EVENTS; i++) {
        msgpack_sbuffer_destroy(&w[i].fields);
        json_decref(w[i].expect);
    }
}

static bool str_is(json_t *obj, const char *key, cs_str want)
{
    json_t *s = json_object_get(obj, key);
    return json_is_string(s) && json_string_length(s) == want.len &&
           memcmp(json_string_value(s), want.ptr, want.len) == 0;
}

static bool u64_is(json_t *obj, const char *key, uint64_t want)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) && (uint64_t)json_integer_value(v) == want;
}

static bool hex_is(json_t *obj, const char *key, uint64_t want)
{
    char hex[17];
    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)want);
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) && strcmp(json_string_value(v), hex) == 0;
}

/* Checks one line of --json output against the C reader's view of that event and what was
 * written. Event 201 holds u64 values that JSON parsers with int64 (jansson) refuse: its line is
 * checked as text. */
static bool line_matches(const char *line, cs_log_reader *r, cs_event_decoder *dec, written *w,
                         uint64_t *seq_io)
{
    uint64_t seq = ++*seq_io;
    cs_log_record rec;
    cs_event_view v;
    if (cs_log_reader_get(r, seq, &rec) != CS_OK ||
        cs_event_decode(dec, rec.event, rec.event_len, &v) != CS_OK)
        return false;
    if (seq == 201)
        return strstr(line, "\"id\":18446744073709551615,\"version\":18446744073709551615,") &&
               strncmp(line, "{\"seq\":201,", 11) == 0;
    json_error_t jerr;
    json_t *obj = json_loads(line, 0, &jerr);
    if (!obj) {
        fprintf(stderr, "  line %llu is not JSON: %s\n", (unsigned long long)seq, jerr.text);
        return false;
    }
    bool ok = u64_is(obj, "seq", seq) && u64_is(obj, "time", v.time_ms) &&
              u64_is(obj, "shop", v.shop) && u64_is(obj, "id", v.id) &&
              u64_is(obj, "version", v.version) && str_is(obj, "actor", v.actor) &&
              str_is(obj, "kind", v.kind) && str_is(obj, "type", v.type) &&
              hex_is(obj, "checksum", rec.checksum) && hex_is(obj, "chain", rec.chain) &&
              json_equal(json_object_get(obj, "fields"), w[seq - 1].expect);
    if (!ok)
        fprintf(stderr, "  event %llu differs: %s\n", (unsigned long long)seq, line);
    json_decref(obj);
    return ok;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_storage_reader_has_python_and_its_modules(void)
{
    if (!find_script()) {
        fprintf(stderr, "  tests/storage_reader.py not found (set CS_SOURCE_DIR to the source "
                        "tree)\n");
        CHECK(false);
    }
    if (access(PYTHON, X_OK) != 0) {
        fprintf(stderr,
                "  %s is missing: install python3 python3-lmdb python3-msgpack "
                "python3-xxhash (tools/setup.sh does)\n",
                PYTHON);
        CHECK(false);
    }
    const char *argv[] = {"-c", "import lmdb, msgpack, xxhash", NULL};
    char *out;
    int st = run(argv, &out);
    if (st != 0)
        fprintf(stderr,
                "  %s cannot import lmdb, msgpack and xxhash (%s): install python3-lmdb "
                "python3-msgpack python3-xxhash (tools/setup.sh does)\n",
                PYTHON, out ? out : "");
    free(out);
    CHECK(st == 0);
}

/* SPEC 4: any event is readable by any msgpack library, and the document says enough to
 * verify the whole log and read back exactly what was written. */
static void test_storage_doc_lets_another_language_read_the_log(void)
{
    CHECK(find_script());
    char *dir = cs_test_tmpdir("storage-reader");
    CHECK(dir);
    cs_log *log;
    CHECK_OK(cs_log_open(dir, NULL, &log));
    written *w = calloc(N_EVENTS, sizeof(*w));
    CHECK(w);
    bool wrote = write_events(log, w);
    CHECK(wrote);
    CHECK(c_verdict(log) == N_EVENTS);
    CHECK(verdict(NULL, dir) == N_EVENTS);
    CHECK(verdict("--times", dir) == N_EVENTS);

    char *out;
    int st = reader("--json", dir, &out);
    CHECK(st == 0 && out);
    cs_log_reader *r;
    cs_event_decoder *dec;
    CHECK_OK(cs_log_reader_open(log, &r));
    CHECK_OK(cs_event_decoder_new(&dec));
    uint64_t seq = 0;
    bool all = true, status_ok = false;
    for (char *line = strtok(out, "\n"); line && all; line = strtok(NULL, "\n")) {
        if (line[0] == '{')
            all = line_matches(line, r, dec, w, &seq);
        else
            status_ok = strcmp(line, "ok 300 events") == 0;
    }
    cs_event_decoder_free(dec);
    cs_log_reader_close(r);
    free(out);
    CHECK(all && seq == N_EVENTS && status_ok);

    free_written(w);
    free(w);
    cs_log_close(log);
    cs_test_rmtree(dir);
    free(dir);
}

/* SPEC 4: `audit verify` finds any changed, lost or reordered byte: the Python reader finds it
 * at the same sequence as cs_log_reader_verify, and the log verifies again once repaired. */
static void test_storage_reader_finds_changed_lost_and_reordered_events(void)
{
    CHECK(find_script());
    char *dir = cs_test_tmpdir("storage-corrupt");
    CHECK(dir);
    cs_log *log;
    CHECK_OK(cs_log_open(dir, NULL, &log));
    written *w = calloc(N_EVENTS, sizeof(*w));
    CHECK(w);
    bool wrote = write_events(log, w);
    free_written(w);
    free(w);
    CHECK(wrote);

    size_t len, len2;
    uint8_t *orig = raw_get(log, 137, &len);
    CHECK(orig && len > 40);

    /* A changed byte inside the msgpack event. */
    orig[16 + (len - 16) / 2] ^= 0x01;
    CHECK(raw_set(log, 137, orig, len));
    CHECK(verdict(NULL, dir) == -137);
    CHECK(c_verdict(log) == -137);
    orig[16 + (len - 16) / 2] ^= 0x01;
    CHECK(raw_set(log, 137, orig, len));
    CHECK(verdict(NULL, dir) == N_EVENTS);

    /* A changed byte of the stored checksum, then of the stored chain. */
    orig[3] ^= 0x80;
    CHECK(raw_set(log, 137, orig, len));
    CHECK(verdict(NULL, dir) == -137);
    orig[3] ^= 0x80;
    orig[12] ^= 0x80;
    CHECK(raw_set(log, 137, orig, len));
    CHECK(verdict(NULL, dir) == -137);
    CHECK(c_verdict(log) == -137);
    orig[12] ^= 0x80;
    CHECK(raw_set(log, 137, orig, len));

    /* A lost event in the middle. */
    CHECK(raw_set(log, 137, NULL, 0));
    CHECK(verdict(NULL, dir) == -137);
    CHECK(c_verdict(log) == -137);
    CHECK(raw_set(log, 137, orig, len));
    CHECK(verdict(NULL, dir) == N_EVENTS);

    /* Two events swapped. */
    uint8_t *next = raw_get(log, 138, &len2);
    CHECK(next);
    CHECK(raw_set(log, 137, next, len2) && raw_set(log, 138, orig, len));
    CHECK(verdict(NULL, dir) == -137);
    CHECK(c_verdict(log) == -137);
    CHECK(raw_set(log, 137, orig, len) && raw_set(log, 138, next, len2));
    free(next);
    free(orig);

    /* An event whose own seq field lies, with a checksum and chain recomputed to match: only
     * the "seq field equals the key" rule catches it. The last event, so nothing follows. */
    uint8_t *last = raw_get(log, N_EVENTS, &len);
    uint8_t *prev = raw_get(log, N_EVENTS - 1, &len2);
    CHECK(last && prev);
    static const uint8_t seq300[] = {0x89, 0xa3, 's', 'e', 'q', 0xcd, 0x01, 0x2c};
    CHECK(len > 24 && memcmp(last + 16, seq300, sizeof(seq300)) == 0);
    last[16 + 7] = 0x2b; /* "seq": 299 */
    uint64_t sum = cs_log_checksum(last + 16, len - 16, N_EVENTS);
    be64(last, sum);
    be64(last + 8, cs_log_chain(get_be64(prev + 8), sum));
    CHECK(raw_set(log, N_EVENTS, last, len));
    CHECK(verdict(NULL, dir) == -(int64_t)N_EVENTS);
    CHECK(c_verdict(log) == -(int64_t)N_EVENTS);
    free(prev);
    free(last);

    /* A lost tail: the log is shorter than the head recorded in `meta` at its last commit
     * (docs/storage.md, "The meta database"), so the first missing event is named. */
    CHECK(raw_set(log, N_EVENTS, NULL, 0));
    CHECK(verdict(NULL, dir) == -(int64_t)N_EVENTS);
    CHECK(c_verdict(log) == -(int64_t)N_EVENTS);

    cs_log_close(log);
    cs_test_rmtree(dir);
    free(dir);
}

int main(void)
{
    RUN(test_storage_reader_has_python_and_its_modules);
    RUN(test_storage_doc_lets_another_language_read_the_log);
    RUN(test_storage_reader_finds_changed_lost_and_reordered_events);
    return cs_test_finish();
}
