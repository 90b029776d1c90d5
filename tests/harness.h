/*
 * harness.h: the small test harness every tests/test_*.c uses over ctest. A test is a void
 * function; CHECK stops it at the first failed condition. Each test prints PASS or FAIL with its
 * name (named after the SPEC rule it checks), and the file ends with "N passed, N failed" and
 * exits non-zero when anything failed. Also: temporary data directories that clean up after
 * themselves, and a small random generator reproducible from its seed.
 */
#ifndef CS_TEST_HARNESS_H
#define CS_TEST_HARNESS_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct cs_test_state {
    int passed;
    int failed;
    int current_failed;
} cs_test_state;

static cs_test_state cs_test_st; /* test programs only: one per process */

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);             \
            cs_test_st.current_failed = 1;                                                         \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define CHECK_OK(expr) CHECK((expr) == CS_OK)

/* CS_TEST_ONLY=WORD runs only the tests whose name contains WORD (a quick rerun of one test,
 * as tools/mutate's hand checks do); unset, every test runs. */
#define RUN(fn)                                                                                    \
    do {                                                                                           \
        const char *only_ = getenv("CS_TEST_ONLY");                                                \
        if (only_ && *only_ && !strstr(#fn, only_))                                                \
            break;                                                                                 \
        cs_test_st.current_failed = 0;                                                             \
        fn();                                                                                      \
        if (cs_test_st.current_failed) {                                                           \
            cs_test_st.failed++;                                                                   \
            printf("FAIL %s\n", #fn);                                                              \
        } else {                                                                                   \
            cs_test_st.passed++;                                                                   \
            printf("PASS %s\n", #fn);                                                              \
        }                                                                                          \
        fflush(stdout);                                                                            \
    } while (0)

static inline int cs_test_finish(void)
{
    printf("%d passed, %d failed\n", cs_test_st.passed, cs_test_st.failed);
    fflush(stdout); /* before any sanitizer report at exit can cut it off */
    return cs_test_st.failed ? 1 : 0;
}

static int cs_test_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes a directory tree (a test's data directory). */
static inline void cs_test_rmtree(const char *dir)
{
    nftw(dir, cs_test_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Makes a fresh empty directory under /tmp; the caller owns the returned string. */
static inline char *cs_test_tmpdir(const char *tag)
{
    char tmpl[256];
    snprintf(tmpl, sizeof(tmpl), "/tmp/cs-test-%s-XXXXXX", tag);
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

/* The temporary directories a test program made with cs_test_tmpdir_kept: removed by
 * cs_test_tmpdirs_cleanup after each test, also when a failed CHECK returned early. One list a
 * program (a static inside a static inline function: each test file has its own). */
#define CS_TEST_TMPDIRS_MAX 64
static inline char **cs_test_tmpdirs(void)
{
    static char *dirs[CS_TEST_TMPDIRS_MAX];
    return dirs;
}

/* cs_test_tmpdir, remembered for cs_test_tmpdirs_cleanup (NULL when the list is full). */
static inline char *cs_test_tmpdir_kept(const char *tag)
{
    char **dirs = cs_test_tmpdirs();
    for (unsigned i = 0; i < CS_TEST_TMPDIRS_MAX; i++)
        if (!dirs[i])
            return dirs[i] = cs_test_tmpdir(tag);
    return NULL;
}

/* Removes dir (made by cs_test_tmpdir or cs_test_tmpdir_kept; NULL is fine) and frees it,
 * forgetting it when it was kept. */
static inline void cs_test_tmpdir_free(char *dir)
{
    char **dirs = cs_test_tmpdirs();
    if (!dir)
        return;
    for (unsigned i = 0; i < CS_TEST_TMPDIRS_MAX; i++)
        if (dirs[i] == dir)
            dirs[i] = NULL;
    cs_test_rmtree(dir);
    free(dir);
}

static inline void cs_test_tmpdirs_cleanup(void)
{
    char **dirs = cs_test_tmpdirs();
    for (unsigned i = 0; i < CS_TEST_TMPDIRS_MAX; i++)
        cs_test_tmpdir_free(dirs[i]);
}

/* xorshift64*: a random generator reproducible from its seed (a test's random schedule or
 * data, the same each run), one state per user. The seed must not be 0. */
typedef struct cs_test_rng {
    uint64_t s;
} cs_test_rng;

static inline uint64_t cs_test_rng_next(cs_test_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ull;
}

/* A number below n (n > 0). */
static inline unsigned cs_test_rng_below(cs_test_rng *r, unsigned n)
{
    return (unsigned)(cs_test_rng_next(r) % n);
}

#endif
