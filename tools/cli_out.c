/*
 * cli_out.c: what the `chainsync` program prints on standard output: JSON lines (--json-out)
 * and the human forms: `field: value` lines for one item and column tables for lists.
 *
 * Invariants: JSON output is one compact value per line, so a stream of them is JSON lines;
 * ids print as decimal integers; human tables never split a UTF-8 character when they shorten
 * a long cell (CELL_CHARS_MAX).
 */
#include "tools/cli.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A table cell is shortened past this many characters: a list is for scanning, get shows all. */
#define CELL_CHARS_MAX 60u
/* Columns in one table: the widest is shop list (11). */
#define TABLE_COLS_MAX 12u

int cs_cli_print_json(const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        return cs_cli_fail(CS_NO_MEMORY, "cannot format the JSON output");
    puts(s);
    free(s);
    return CS_CLI_GO;
}

int cs_cli_print_json_new(json_t *v)
{
    int rc = v ? cs_cli_print_json(v) : cs_cli_fail(CS_NO_MEMORY, "cannot format the JSON output");
    json_decref(v);
    return rc;
}

int cs_cli_print_write_json(const cs_write_result *w)
{
    /* printf, not json_integer: jansson integers are signed and ids are u64. */
    printf("{\"id\":%" PRIu64 ",\"version\":%" PRIu64 ",\"seq\":%" PRIu64 "}\n", w->id, w->version,
           w->seq);
    return CS_CLI_GO;
}

/* True when a string can print raw: no control characters and no edge spaces. */
static bool string_prints_raw(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || s[0] == ' ' || s[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

char *cs_cli_value_text(const json_t *v)
{
    if (json_is_string(v) && string_prints_raw(json_string_value(v)))
        return strdup(json_string_value(v));
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* An origin link (or detached_from) as text: "shop 1 item 5 v2", or "-" for null. */
static char *link_text(const json_t *link)
{
    if (!json_is_object(link))
        return strdup("-");
    json_int_t shop = json_integer_value(json_object_get(link, "shop"));
    json_int_t id = json_integer_value(json_object_get(link, "id"));
    json_int_t ver = json_integer_value(json_object_get(link, "version"));
    char buf[96];
    snprintf(buf, sizeof(buf), "shop %" PRIu64 " item %" PRIu64 " v%" PRIu64, (uint64_t)shop,
             (uint64_t)id, (uint64_t)ver);
    return strdup(buf);
}

static bool is_meta_key(const char *k)
{
    static const char *const meta[] = {"type",          "id", "version", "archived", "origin",
                                       "detached_from", NULL};
    for (unsigned i = 0; meta[i]; i++)
        if (strcmp(k, meta[i]) == 0)
            return true;
    return false;
}

static bool is_schema_field(const cs_type *t, const char *k)
{
    for (unsigned i = 0; t && i < t->nfields; i++)
        if (strcmp(t->fields[i].name, k) == 0)
            return true;
    return false;
}

/* One `key: value` line; text owned by this call. */
static int item_line(int width, const char *key, char *text)
{
    if (!text)
        return cs_cli_fail(CS_NO_MEMORY, NULL);
    printf("%-*s %s\n", width, key, text);
    free(text);
    return CS_CLI_GO;
}

static int item_width(const json_t *item, const cs_type *t)
{
    size_t w = strlen("detached_from:");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)item, k, v) if (strlen(k) + 1 > w) w = strlen(k) + 1;
    for (unsigned i = 0; t && i < t->nfields; i++)
        if (strlen(t->fields[i].name) + 1 > w)
            w = strlen(t->fields[i].name) + 1;
    return (int)w;
}

int cs_cli_print_item_human(const json_t *item)
{
    const cs_type *t = cs_schema_find(json_string_value(json_object_get(item, "type")) ?: "");
    int w = item_width(item, t), rc = CS_CLI_GO;
    char key[160];
    static const char *const head[] = {"type", "id", "version"};
    for (unsigned i = 0; i < 3 && rc == CS_CLI_GO; i++) {
        snprintf(key, sizeof(key), "%s:", head[i]);
        rc = item_line(w, key, cs_cli_value_text(json_object_get(item, head[i]) ?: json_null()));
    }
    /* Schema fields in schema order, unset ones too: a reader sees what the type offers. */
    for (unsigned i = 0; t && i < t->nfields && rc == CS_CLI_GO; i++) {
        const json_t *v = json_object_get(item, t->fields[i].name);
        snprintf(key, sizeof(key), "%s:", t->fields[i].name);
        rc = item_line(w, key, v ? cs_cli_value_text(v) : strdup("(not set)"));
    }
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)item, k, v)
    {
        if (rc != CS_CLI_GO || is_meta_key(k) || is_schema_field(t, k))
            continue;
        snprintf(key, sizeof(key), "%s:", k);
        rc = item_line(w, key, cs_cli_value_text(v));
    }
    const json_t *arch = json_object_get(item, "archived");
    if (rc == CS_CLI_GO)
        rc = item_line(w, "archived:", strdup(json_is_true(arch) ? "true" : "false"));
    const json_t *origin = json_object_get(item, "origin");
    if (rc == CS_CLI_GO)
        rc = item_line(w, "origin:", json_is_object(origin) ? link_text(origin) : strdup("none"));
    const json_t *det = json_object_get(item, "detached_from");
    if (rc == CS_CLI_GO && json_is_object(det))
        rc = item_line(w, "detached_from:", link_text(det));
    return rc;
}

/* ---- tables ----------------------------------------------------------------------------- */

struct cs_cli_table {
    unsigned ncols;
    const char *headers[TABLE_COLS_MAX];
    char **cells; /* rows * ncols, row-major, owned */
    size_t rows;
    size_t cap;
};

cs_cli_table *cs_cli_table_new(unsigned ncols, const char *const *headers)
{
    cs_assert(ncols > 0);
    cs_assert(ncols <= TABLE_COLS_MAX);
    cs_cli_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ncols = ncols;
    for (unsigned i = 0; i < ncols; i++)
        t->headers[i] = headers[i];
    return t;
}

/* Characters, not bytes: UTF-8 continuation bytes take no column. */
static size_t text_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

/* A copy of s cut to CELL_CHARS_MAX characters (with "..."), never inside a character. */
static char *cell_copy(const char *s)
{
    if (text_chars(s) <= CELL_CHARS_MAX)
        return strdup(s);
    size_t chars = 0, i = 0;
    for (; s[i]; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80 && chars++ == CELL_CHARS_MAX - 3)
            break;
    }
    char *c = malloc(i + 4);
    if (!c)
        return NULL;
    memcpy(c, s, i);
    memcpy(c + i, "...", 4);
    return c;
}

bool cs_cli_table_add(cs_cli_table *t, const char *const *cells)
{
    if (t->rows == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 16;
        char **nc = realloc(t->cells, ncap * t->ncols * sizeof(char *));
        if (!nc)
            return false;
        t->cells = nc;
        t->cap = ncap;
    }
    char **row = t->cells + t->rows * t->ncols;
    for (unsigned i = 0; i < t->ncols; i++) {
        row[i] = cell_copy(cells[i] ? cells[i] : "-");
        if (!row[i]) {
            for (unsigned j = 0; j < i; j++)
                free(row[j]);
            return false;
        }
    }
    t->rows++;
    return true;
}

static void table_cell(const char *s, size_t width, bool last)
{
    fputs(s, stdout);
    if (last)
        return;
    for (size_t n = text_chars(s); n < width + 2; n++)
        putchar(' ');
}

void cs_cli_table_print(const cs_cli_table *t)
{
    size_t width[TABLE_COLS_MAX];
    for (unsigned c = 0; c < t->ncols; c++) {
        width[c] = text_chars(t->headers[c]);
        for (size_t r = 0; r < t->rows; r++) {
            size_t n = text_chars(t->cells[r * t->ncols + c]);
            if (n > width[c])
                width[c] = n;
        }
    }
    for (unsigned c = 0; c < t->ncols; c++)
        table_cell(t->headers[c], width[c], c + 1 == t->ncols);
    putchar('\n');
    for (size_t r = 0; r < t->rows; r++) {
        for (unsigned c = 0; c < t->ncols; c++)
            table_cell(t->cells[r * t->ncols + c], width[c], c + 1 == t->ncols);
        putchar('\n');
    }
}

void cs_cli_table_free(cs_cli_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->rows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

/* The column a list shows beside the id: the type's `name`, else its first field (`key`). */
static const char *label_field(const cs_type *t)
{
    if (!t || t->nfields == 0)
        return "name";
    for (unsigned i = 0; i < t->nfields; i++)
        if (strcmp(t->fields[i].name, "name") == 0)
            return "name";
    return t->fields[0].name;
}

/* Fills cells[0..5) for one item; the strings are owned by the caller. */
static bool item_row(const json_t *item, const char *label, char **cells)
{
    const json_t *lv = json_object_get(item, label);
    cells[0] = cs_cli_value_text(json_object_get(item, "id") ?: json_null());
    cells[1] = cs_cli_value_text(json_object_get(item, "version") ?: json_null());
    cells[2] = lv ? cs_cli_value_text(lv) : strdup("-");
    cells[3] = strdup(json_is_true(json_object_get(item, "archived")) ? "yes" : "no");
    cells[4] = link_text(json_object_get(item, "origin"));
    for (unsigned i = 0; i < 5; i++)
        if (!cells[i])
            return false;
    return true;
}

int cs_cli_print_items_table(const char *type, const json_t *items)
{
    const char *label = label_field(cs_schema_find(type));
    const char *headers[] = {"id", "version", label, "archived", "origin"};
    cs_cli_table *t = cs_cli_table_new(5, headers);
    if (!t)
        return cs_cli_fail(CS_NO_MEMORY, NULL);
    size_t i;
    const json_t *item;
    bool ok = true;
    json_array_foreach((json_t *)items, i, item)
    {
        char *cells[5] = {NULL};
        ok = ok && item_row(item, label, cells) && cs_cli_table_add(t, (const char *const *)cells);
        for (unsigned c = 0; c < 5; c++)
            free(cells[c]);
    }
    if (ok)
        cs_cli_table_print(t);
    cs_cli_table_free(t);
    return ok ? CS_CLI_GO : cs_cli_fail(CS_NO_MEMORY, NULL);
}

/* last_seen as text: a time in ms since the epoch prints as UTC ISO 8601; 0 or null as never. */
static char *last_seen_text(const json_t *v)
{
    if (!v || json_is_null(v) || (json_is_integer(v) && json_integer_value(v) == 0))
        return strdup("never");
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return cs_cli_value_text(v);
    time_t secs = (time_t)(json_integer_value(v) / 1000);
    struct tm tm;
    char buf[32];
    if (!gmtime_r(&secs, &tm) || !strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
        return cs_cli_value_text(v);
    return strdup(buf);
}

/* held as text: "SEQ CODE" (the event the branch cannot apply and why), "-" when none. */
static char *held_text(const json_t *h)
{
    if (!json_is_object(h))
        return strdup("-");
    char buf[96];
    snprintf(buf, sizeof(buf), "%lld %s", (long long)json_integer_value(json_object_get(h, "seq")),
             json_string_value(json_object_get(h, "code"))
                 ? json_string_value(json_object_get(h, "code"))
                 : "?");
    return strdup(buf);
}

int cs_cli_print_shops_table(const json_t *shops)
{
    static const char *const keys[] = {"id",  "name",   "role",      "switch", "cursor",
                                       "lag", "lag_ms", "connected", "outbox", "linked"};
    const char *headers[] = {"id",     "name",   "role",   "switch", "cursor",    "lag",
                             "lag_ms", "online", "outbox", "linked", "last_seen", "held"};
    enum { NCOLS = 12 };
    cs_cli_table *t = cs_cli_table_new(NCOLS, headers);
    if (!t)
        return cs_cli_fail(CS_NO_MEMORY, NULL);
    size_t i;
    const json_t *shop;
    bool ok = true;
    json_array_foreach((json_t *)shops, i, shop)
    {
        char *cells[NCOLS] = {NULL};
        for (unsigned c = 0; c + 2 < NCOLS; c++) {
            const json_t *v = json_object_get(shop, keys[c]);
            if (strcmp(keys[c], "switch") == 0 && json_is_boolean(v))
                cells[c] = strdup(json_is_true(v) ? "on" : "off");
            else if ((strcmp(keys[c], "connected") == 0 || strcmp(keys[c], "linked") == 0) &&
                     json_is_boolean(v))
                cells[c] = strdup(json_is_true(v) ? "yes" : "no");
            else
                cells[c] = v && !json_is_null(v) ? cs_cli_value_text(v) : strdup("-");
            ok = ok && cells[c];
        }
        cells[NCOLS - 2] = last_seen_text(json_object_get(shop, "last_seen"));
        cells[NCOLS - 1] = held_text(json_object_get(shop, "held"));
        ok = ok && cells[NCOLS - 2] && cells[NCOLS - 1] &&
             cs_cli_table_add(t, (const char *const *)cells);
        for (unsigned c = 0; c < NCOLS; c++)
            free(cells[c]);
    }
    if (ok)
        cs_cli_table_print(t);
    cs_cli_table_free(t);
    return ok ? CS_CLI_GO : cs_cli_fail(CS_NO_MEMORY, NULL);
}
