/*
 * err.c: the table of error names built from CS_ERRORS, the SPEC section 6 exit codes, the
 * mapping of LMDB's codes to ours, the one body of every failure helper (cs_errmsg_format),
 * and the assertion failure path. Owns nothing.
 */
#include "log/log_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const err_names[] = {
#define CS_ERR_NAME(code, name) name,
    CS_ERRORS(CS_ERR_NAME)
#undef CS_ERR_NAME
};

_Static_assert(sizeof(err_names) / sizeof(err_names[0]) == CS_ERR_COUNT, "one name per code");

const char *cs_err_name(cs_err err)
{
    if ((unsigned)err >= CS_ERR_COUNT)
        return "unknown";
    return err_names[err];
}

cs_err cs_err_from_name(const char *name, size_t len)
{
    for (unsigned i = 0; i < CS_ERR_COUNT; i++)
        if (strlen(err_names[i]) == len && memcmp(err_names[i], name, len) == 0)
            return (cs_err)i;
    return CS_ERR_COUNT;
}

int cs_err_exit_code(cs_err err)
{
    switch (err) {
    case CS_OK:
        return 0;
    case CS_USAGE:
        return 1;
    case CS_STORAGE_FULL:
    case CS_CORRUPT:
    case CS_IO:
    case CS_NO_MEMORY:
        return 3;
    case CS_AUTH_FAILED:
    case CS_PROTOCOL_MISMATCH:
    case CS_NETWORK:
        return 4;
    default:
        return 2;
    }
}

cs_err cs__mdb_err(int rc)
{
    switch (rc) {
    case MDB_SUCCESS:
        return CS_OK;
    case MDB_NOTFOUND:
        return CS_NOT_FOUND;
    case MDB_MAP_FULL:
        return CS_STORAGE_FULL;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
        return CS_CORRUPT;
    case ENOMEM:
        return CS_NO_MEMORY;
    case ENOSPC:
        return CS_STORAGE_FULL;
    default:
        return CS_IO;
    }
}

size_t cs_utf8_cut(const char *s, size_t len)
{
    /* Back to the first byte of the last character: continuation bytes are 10xxxxxx. */
    size_t start = len;
    for (int k = 0; k < 3 && start > 0 && ((uint8_t)s[start - 1] & 0xc0) == 0x80; k++)
        start--;
    if (start > 0 && (uint8_t)s[start - 1] >= 0xc0)
        start--;
    return cs_utf8_prefix(s + start, len - start) == len - start ? len : start;
}

cs_err cs_errmsg_vformat(char *buf, size_t len, cs_err err, const char *fmt, va_list ap)
{
    cs_assert(buf != NULL || len == 0);
    int n = len > 0 ? vsnprintf(buf, len, fmt, ap) : 0;
    if (n < 0)
        buf[0] = '\0'; /* an encoding error: no sentence rather than a half-written one */
    else if ((size_t)n >= len && len > 0) /* cut: not inside a character (it goes out as str) */
        buf[cs_utf8_cut(buf, len - 1)] = '\0';
    return err;
}

cs_err cs_errmsg_format(char *buf, size_t len, cs_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs_errmsg_vformat(buf, len, err, fmt, ap);
    va_end(ap);
    return err;
}

cs_err cs__log_fail(cs_log *log, cs_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs_errmsg_vformat(log->errmsg, sizeof(log->errmsg), err, fmt, ap);
    va_end(ap);
    return err;
}

void cs__assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "chainsync: assertion failed: %s (%s:%d)\n", cond, file, line);
    abort();
}
