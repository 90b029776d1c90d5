/*
 * loopfs.h: a small filesystem of a test's own, for the tests that need a disk that fills
 * (tests/test_disk_full.c, tests/test_hold.c): an 8 MiB ext4 image loop-mounted under a root
 * directory the caller made (or, when loop devices are unavailable, a tmpfs with size=8m), and a
 * ballast file that fills it until a few hundred KiB remain. It owns the mount point, the image
 * and the ballast (their paths in cs_loopfs); the caller owns the root and removes it. Needs root
 * (mount): cs_loopfs_mount says why not otherwise.
 */
#ifndef CS_TEST_LOOPFS_H
#define CS_TEST_LOOPFS_H

#include "tests/run.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define CS_LOOPFS_BYTES (8u * 1024u * 1024u)
#define CS_LOOPFS_ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

typedef struct cs_loopfs {
    char mnt[300];     /* root/mnt: the mount point */
    char img[300];     /* root/fs.img: the ext4 image */
    char ballast[320]; /* mnt/ballast: what fills the filesystem */
    bool mounted;
} cs_loopfs;

/* Runs argv (argv[0] a path) with its output dropped, for at most wait_ms: the exit code, -1
 * when it could not run or was killed. */
static inline int cs_loopfs_run(const char *const *argv, uint64_t wait_ms)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_RDWR);
        dup2(fd, 0), dup2(fd, 1), dup2(fd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid < 0 ? -1 : cs_run_reap(pid, cs_run_now_ms() + wait_ms);
}

/* Mounts a small filesystem at root/mnt: ext4 on a loop device, else tmpfs; mkfs and mount get
 * wait_ms each. NULL when done, else why not. */
static inline const char *cs_loopfs_mount(cs_loopfs *fs, const char *root, uint64_t wait_ms)
{
    if (geteuid() != 0)
        return "needs root";
    snprintf(fs->mnt, sizeof(fs->mnt), "%s/mnt", root);
    snprintf(fs->img, sizeof(fs->img), "%s/fs.img", root);
    snprintf(fs->ballast, sizeof(fs->ballast), "%s/ballast", fs->mnt);
    if (mkdir(fs->mnt, 0700) != 0)
        return "cannot make the mount point";
    int fd = open(fs->img, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    bool made = fd >= 0 && ftruncate(fd, CS_LOOPFS_BYTES) == 0;
    if (fd >= 0)
        close(fd);
    if (made &&
        cs_loopfs_run(CS_LOOPFS_ARGS("/usr/sbin/mkfs.ext4", "-q", "-F", fs->img), wait_ms) == 0 &&
        cs_loopfs_run(CS_LOOPFS_ARGS("/usr/bin/mount", "-o", "loop", fs->img, fs->mnt), wait_ms) ==
            0) {
        fs->mounted = true;
        fprintf(stderr, "  an 8 MiB ext4 image, loop-mounted\n");
        return NULL;
    }
    if (mount("tmpfs", fs->mnt, "tmpfs", 0, "size=8m,mode=0700") == 0) {
        fs->mounted = true;
        fprintf(stderr, "  a tmpfs of 8 MiB (no loop device)\n");
        return NULL;
    }
    return "neither a loop mount nor a tmpfs mount works here";
}

/* Unmounts it when mounted (lazily when busy). The image stays under the caller's root. */
static inline void cs_loopfs_unmount(cs_loopfs *fs)
{
    if (fs->mounted && umount2(fs->mnt, 0) != 0)
        umount2(fs->mnt, MNT_DETACH);
    fs->mounted = false;
}

/* Fills the filesystem with the ballast file until about `left` bytes remain. */
static inline bool cs_loopfs_fill(const cs_loopfs *fs, uint64_t left)
{
    struct statvfs sv;
    if (statvfs(fs->mnt, &sv) != 0)
        return false;
    uint64_t free_bytes = (uint64_t)sv.f_bfree * sv.f_frsize; /* root may use all of it */
    if (free_bytes <= left)
        return true;
    int fd = open(fs->ballast, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return false;
    /* The filesystem's own metadata for the file takes a little of the space: asking for all of
     * it can fail, so ask for a little less each time. */
    bool ok = false;
    for (uint64_t want = free_bytes - left, i = 0; !ok && i < 32 && want > 65536;
         i++, want -= 65536)
        ok = posix_fallocate(fd, 0, (off_t)want) == 0;
    ok = ok && fsync(fd) == 0;
    close(fd);
    return ok;
}

#endif
