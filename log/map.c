/*
 * map.c: this process's map of the data directory's LMDB environment, below the write path
 * (store.c, which grows it on MDB_MAP_FULL) and the read path (reader.c, which adopts a size
 * another process grew it to), so neither of those calls the other.
 *
 * Invariants:
 *   1. map_bytes is the map size as LMDB has it (mdb_env_info) after every resize.
 *   2. the map is resized only with no transaction of this process open (LMDB's rule; our read
 *      snapshots' pages would dangle otherwise): readers_open == 0 and !in_write.
 *   3. once a resize failed (map_lost), nothing touches the environment again: every call
 *      returns CS_IO until the directory is reopened.
 * docs/storage.md, "Map size across processes".
 */
#include "log/log_int.h"

#include <errno.h>

cs_err cs__map_check(cs_log *log)
{
    if (!log->map_lost)
        return CS_OK;
    return cs__log_fail(log, CS_IO,
                        "the data directory is no longer mapped (a resize failed): reopen it");
}

/* After any mdb_env_set_mapsize: LMDB may have rounded the size up (never below the data). */
static void map_bytes_refresh(cs_log *log)
{
    MDB_envinfo info;
    int rc = mdb_env_info(log->env, &info); /* fails only on NULL arguments */
    cs_assert(rc == 0);
    (void)rc;
    log->map_bytes = info.me_mapsize;
}

/* mdb_env_set_mapsize unmaps the old map before it maps the new one: when that fails, nothing
 * of the environment may be touched again (its meta pointers point into the old map). */
cs_err cs__map_resize(cs_log *log, size_t bytes, cs_err err, const char *what)
{
    cs_assert(log->readers_open == 0);
    cs_assert(!log->in_write);
    cs_assert(!log->map_lost);
    int rc = mdb_env_set_mapsize(log->env, bytes);
    if (rc) {
        log->map_lost = true;
        return cs__log_fail(log, rc == ENOMEM ? CS_NO_MEMORY : err, "%s: %s", what,
                            mdb_strerror(rc));
    }
    map_bytes_refresh(log);
    cs_assert(bytes == 0 || log->map_bytes >= bytes);
    return CS_OK;
}

cs_err cs__map_adopt(cs_log *log)
{
    if (log->readers_open > 0 || log->in_write)
        return cs__log_fail(log, CS_IO,
                            "another process grew the data directory's map; this process adopts "
                            "the new size only with no transaction of its own open (%u read%s "
                            "open)",
                            log->readers_open, log->readers_open == 1 ? " is" : "s are");
    size_t before = log->map_bytes;
    cs_err err = cs__map_resize(log, 0, CS_IO, "cannot map the data directory at its new size");
    /* MDB_MAP_RESIZED means the data outgrew our map: the size adopted covers it. */
    cs_assert(err != CS_OK || log->map_bytes >= before);
    (void)before;
    return err;
}
