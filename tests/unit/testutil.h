/*
 * Shared test helpers: the suite table, checks that stop a test, golden-
 * vector files, forked peers with deadlines, resource counters for leak
 * checks, a watchdog for tests that block in this process, and socketpair
 * and fd-message helpers. Helpers for tests that run shmipcd itself are in
 * tests/common/daemon_util.h (the soak programs share those).
 */
#ifndef SHMIPC_TESTUTIL_H
#define SHMIPC_TESTUTIL_H

#include <CUnit/CUnit.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

struct test_case {
    const char *name;
    void (*fn)(void);
};

struct test_suite {
    const char *name;
    const struct test_case *cases; /* terminated by {NULL, NULL} */
};

/* ---- checks ---- */

/* A check that must stop the test: it jumps to the test's `out:` label,
 * where the test frees what it holds (never CU_ASSERT_FATAL, which would
 * leave processes and files behind). */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        int ok_ = (cond) ? 1 : 0;                                                                  \
        CU_assertImplementation(ok_ ? CU_TRUE : CU_FALSE, __LINE__, "REQUIRE(" #cond ")",          \
                                __FILE__, "", CU_FALSE);                                           \
        if (!ok_)                                                                                  \
            goto out;                                                                              \
    } while (0)

/* An equality assertion that also says what it saw. */
#define CHECK_EQ(got, want)                                                                        \
    do {                                                                                           \
        long long g_ = (long long)(got), w_ = (long long)(want);                                   \
        if (g_ != w_)                                                                              \
            fprintf(stderr, "\n  %s:%d: %s is %lld, expected %lld\n", __FILE__, __LINE__, #got,    \
                    g_, w_);                                                                       \
        CU_ASSERT_EQUAL(g_, w_);                                                                   \
    } while (0)

/* ---- golden vectors ---- */

struct vec_record {
    char *label;
    uint64_t offset;
    uint8_t *bytes;
    size_t len;
};

struct vec_file {
    struct vec_record *recs;
    size_t n;
};

/* Loads `name` from $SHMIPC_VECTORS (default tests/vectors). 0 or -errno. */
int vec_load(const char *name, struct vec_file *out);
const struct vec_record *vec_find(const struct vec_file *vf, const char *label);
void vec_free(struct vec_file *vf);

/* Asserts that `len` bytes at `p` equal the record `label` (found in vf),
 * reporting the first differing byte. Returns 1 when equal. */
int vec_check(const struct vec_file *vf, const char *label, const void *p, size_t len);
#define CU_ASSERT_VEC(vf, label, p, len) CU_ASSERT_TRUE(vec_check((vf), (label), (p), (len)))

/* ---- forked peers ---- */

/* Forks; the child runs fn(arg) and _exit()s with its return value. */
pid_t tu_fork(int (*fn)(void *), void *arg);
/* Waits up to timeout_ms; kills the child (SIGKILL) on expiry and returns
 * -1. Otherwise returns the child's exit code (128+sig if it was killed). */
int tu_wait(pid_t pid, int timeout_ms);

/* ---- resources ---- */

int tu_count_fds(void);
/* Shared mappings of this process (what regions create). */
int tu_count_maps(void);
/* Number of entries in /dev/shm whose name starts with `prefix`. */
int tu_count_shm(const char *prefix);

uint64_t tu_now_ns(void);

/* ---- watchdog and fd leak checks ---- */

/* For suites that call blocking helpers in this process (no fork around
 * them): a helper that ignored its deadline would hang the whole run, so
 * SIGALRM ends it instead after `seconds`, naming `test` on stderr. */
void tu_watchdog_arm(const char *test, unsigned seconds);
void tu_watchdog_disarm(void);

#define TU_WATCHDOG_S 90

/* Brackets a test under the watchdog that must leave this process's fd
 * count as it found it. (test_region keeps its own LEAK_BEGIN, which also
 * counts mappings.) */
#define FD_LEAK_BEGIN()                                                                            \
    tu_watchdog_arm(__func__, TU_WATCHDOG_S);                                                      \
    int leak_fds_ = tu_count_fds()
#define FD_LEAK_END()                                                                              \
    do {                                                                                           \
        CU_ASSERT_EQUAL(tu_count_fds(), leak_fds_);                                                \
        tu_watchdog_disarm();                                                                      \
    } while (0)

/* ---- sockets ---- */

/* A non-blocking, close-on-exec AF_UNIX stream socketpair. 0 or -1. */
int tu_pair(int sv[2]);
void tu_close_pair(int sv[2]);
/* The inode behind `fd` (0 if fstat fails): tells whether two fds, passed
 * over a socket or not, name the same file. */
ino_t tu_ino_of(int fd);

#define TU_SEND_FDS_MAX 32

/* Sends the fd message by hand, bypassing sock_send_fds: `len` data bytes
 * with SCM_RIGHTS for nfds fds (none when nfds is 0). `hdr`, if hdr_len is
 * sizeof(struct cmsghdr), is the raw header to send instead of a correct
 * one. 0, or -errno (-EINVAL for more than TU_SEND_FDS_MAX fds). */
int tu_send_fds(int fd, const void *data, size_t len, const void *hdr, size_t hdr_len,
                const int *fds, int nfds);

#endif
