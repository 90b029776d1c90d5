/*
 * transfer.c: offline transfer of the log (SPEC 7: log export, branch import). An export file
 * is nothing but segments one after another, each self-describing and checksummed
 * (docs/storage.md, "segments"), so a file cut short or altered is refused segment by segment
 * and whatever was applied before stays applied, in order.
 */
#include "projections/projection_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static cs_err write_all(int fd, const uint8_t *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return errno == ENOSPC ? CS_STORAGE_FULL : CS_IO;
        buf += n;
        len -= (size_t)n;
    }
    return CS_OK;
}

static cs_err export_segments(cs_log_reader *r, uint64_t from, uint64_t head, int fd,
                              uint64_t *events, const cs_progress *p)
{
    for (uint64_t s = from; s <= head;) {
        uint8_t *seg;
        size_t len;
        uint64_t last;
        cs_err err = cs_segment_encode(r, s, head, CS_EXPORT_SEGMENT_BYTES, &seg, &len, &last);
        if (err != CS_OK)
            return err;
        err = write_all(fd, seg, len);
        free(seg);
        if (err != CS_OK)
            return err;
        *events += last - s + 1;
        s = last + 1;
        cs_progress_report(p, *events, head - from + 1, false);
    }
    cs_progress_report(p, *events, head - from + 1, true);
    return CS_OK;
}

/* The rename is durable only once the directory holding the name is on disk too. */
static cs_err dir_sync(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return CS_IO;
    cs_err err = fsync(fd) == 0 ? CS_OK : CS_IO;
    close(fd);
    return err;
}

/* The name is replaced only when it is new or a regular file: a rename over a device node,
 * a directory's entry or a symbolic link would replace that instead (issue 12). */
static bool replaceable(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT;
    return S_ISREG(st.st_mode);
}

cs_err cs_export_file(cs_log *log, uint64_t from, const char *path, uint64_t *events_out)
{
    return cs_export_file_progress(log, from, path, events_out, NULL);
}

cs_err cs_export_file_progress(cs_log *log, uint64_t from, const char *path, uint64_t *events_out,
                               const cs_progress *p)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return CS_INVALID_INPUT;
    if (!replaceable(path) || !replaceable(tmp))
        return CS_INVALID_INPUT;
    unlink(tmp); /* a regular file left by a crashed export; O_EXCL below then makes a new one */
    cs_log_reader *r;
    cs_err err = cs_log_reader_open(log, &r);
    if (err != CS_OK)
        return err;
    uint64_t head = 0, events = 0;
    if ((err = cs_log_reader_head(r, &head)) == CS_OK && (from == 0 || from > head))
        err = CS_NOT_FOUND;
    int fd =
        err == CS_OK ? open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600) : -1;
    if (err == CS_OK && fd < 0)
        err = CS_IO;
    if (err == CS_OK)
        err = export_segments(r, from, head, fd, &events, p);
    /* Durable before it is visible under its name: a crash leaves the old file or the new. */
    if (err == CS_OK && fsync(fd) != 0)
        err = CS_IO;
    if (fd >= 0 && close(fd) != 0 && err == CS_OK)
        err = CS_IO;
    if (err == CS_OK && rename(tmp, path) != 0)
        err = CS_IO;
    if (err == CS_OK)
        err = dir_sync(path);
    if (err != CS_OK && fd >= 0)
        unlink(tmp);
    cs_log_reader_close(r);
    if (err == CS_OK && events_out)
        *events_out = events;
    return err;
}

/* Reads the next segment of f into *buf (grown as needed). CS_NOT_FOUND at a clean end. A size
 * in the header beyond the bytes the file still holds is refused before the buffer grows for
 * it: a 40-byte file cannot make the import allocate a segment's worth. */
static cs_err read_segment(FILE *f, uint8_t **buf, size_t *cap, size_t *len)
{
    struct stat st;
    long at = ftell(f);
    if (at < 0 || fstat(fileno(f), &st) != 0)
        return CS_IO;
    uint8_t hdr[CS_SEGMENT_HEADER_BYTES];
    size_t n = fread(hdr, 1, sizeof(hdr), f);
    if (n == 0 && feof(f))
        return CS_NOT_FOUND;
    if (n != sizeof(hdr))
        return ferror(f) ? CS_IO : CS_CORRUPT;
    size_t size;
    cs_err err = cs_segment_size(hdr, sizeof(hdr), &size);
    /* No network is involved in a file: a version or flags we do not know after the right
     * magic is damage (or not our file), never a peer's protocol (issue 12). */
    if (err == CS_PROTOCOL_MISMATCH)
        err = CS_CORRUPT;
    if (err != CS_OK)
        return err;
    if (S_ISREG(st.st_mode) && (off_t)size > st.st_size - (off_t)at)
        return CS_CORRUPT; /* cut short: the header promises more than is there */
    if (size > *cap) {
        uint8_t *p = realloc(*buf, size);
        if (!p)
            return CS_NO_MEMORY;
        *buf = p;
        *cap = size;
    }
    memcpy(*buf, hdr, sizeof(hdr));
    n = fread(*buf + sizeof(hdr), 1, size - sizeof(hdr), f);
    if (n != size - sizeof(hdr))
        return ferror(f) ? CS_IO : CS_CORRUPT;
    *len = size;
    return CS_OK;
}

cs_err cs_branch_import_file(cs_branch *b, const char *path, uint64_t *applied_out)
{
    return cs_branch_import_file_progress(b, path, applied_out, NULL);
}

cs_err cs_branch_import_file_progress(cs_branch *b, const char *path, uint64_t *applied_out,
                                      const cs_progress *p)
{
    b->errmsg[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f)
        return cs__branch_fail(b, CS_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    uint64_t size = fstat(fileno(f), &sb) == 0 ? (uint64_t)sb.st_size : 0, done = 0;
    uint8_t *buf = NULL;
    size_t cap = 0, len, nseg = 0;
    uint64_t total = 0;
    cs_err err;
    while ((err = read_segment(f, &buf, &cap, &len)) == CS_OK) {
        uint64_t applied = 0;
        nseg++;
        if ((err = cs_branch_apply_segment(b, buf, len, &applied)) != CS_OK)
            break;
        total += applied;
        done += len;
        cs_progress_report(p, done, size, false);
    }
    cs_progress_report(p, done, size, true);
    if (err == CS_NOT_FOUND && nseg == 0) /* an empty file is a mistake, not "nothing new" */
        err = cs__branch_fail(b, CS_INVALID_INPUT, "%s is empty: it holds no segment", path);
    else if (err == CS_NOT_FOUND)
        err = CS_OK;
    else if (err == CS_CORRUPT && !b->errmsg[0])
        cs__branch_fail(b, err, "%s: segment %zu is cut short or damaged", path, nseg + 1);
    else if (err == CS_PROTOCOL_MISMATCH && !b->errmsg[0]) /* every refusal says why */
        cs__branch_fail(b, err,
                        "%s: segment %zu has a format version or flags this program "
                        "does not know",
                        path, nseg + 1);
    else if (err != CS_OK && !b->errmsg[0])
        cs__branch_fail(b, err, "%s: cannot read segment %zu", path, nseg + 1);
    free(buf);
    fclose(f);
    if (applied_out)
        *applied_out = total;
    return err;
}
