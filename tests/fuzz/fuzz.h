/*
 * fuzz.h: what the fuzz targets of tests/fuzz/ share: the libFuzzer entry points each defines,
 * a property check that aborts (so libFuzzer, and the replay driver under gcc, report the input
 * that broke it), and a scratch directory per process under /dev/shm (or /tmp) that the process
 * removes at exit. Fuzz targets are test programs: the one place besides tools/ where a
 * process-wide static is fine.
 */
#ifndef CS_FUZZ_H
#define CS_FUZZ_H

#include <ftw.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A property of the code under test, not of the input: a failure is a finding. */
#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static int fuzz_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static inline void fuzz_rm_tree(const char *path)
{
    nftw(path, fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char fuzz_scratch_dir[256];

static void fuzz_scratch_cleanup(void)
{
    if (fuzz_scratch_dir[0])
        fuzz_rm_tree(fuzz_scratch_dir);
}

/* The process's scratch directory, made on first use: tmpfs when there is one, since targets
 * that write LMDB stores do it for every input. */
static inline const char *fuzz_scratch(void)
{
    if (fuzz_scratch_dir[0])
        return fuzz_scratch_dir;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fuzz_scratch_dir, sizeof(fuzz_scratch_dir), "%s/cs-fuzz-XXXXXX", base);
    if (!mkdtemp(fuzz_scratch_dir)) {
        perror("mkdtemp");
        exit(2);
    }
    atexit(fuzz_scratch_cleanup);
    return fuzz_scratch_dir;
}

#endif
