/*
 * Tests of src/shm/region.c. File tests run in a private mkdtemp directory
 * (removed at the end); only memfds and a few files named with this run's
 * pid touch /dev/shm. Every test checks that fds and mappings are back to
 * their count at the start. Fault injection (no openat2, failing mmap, old madvise) runs
 * in forked children under a seccomp filter, with a deadline.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/log.h"
#include "shm/region.h"
#include "shmipc/errors.h"
#include "testutil.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)
#define DEADLINE_MS 10000
#define SKIPPED 77 /* child exit code: the machine cannot run this check */

#define LEAK_BEGIN()                                                                               \
    leak_warmup();                                                                                 \
    int leak_fds_ = tu_count_fds();                                                                \
    int leak_maps_ = tu_count_maps()
#define LEAK_END()                                                                                 \
    do {                                                                                           \
        CU_ASSERT_EQUAL(tu_count_fds(), leak_fds_);                                                \
        CU_ASSERT_EQUAL(tu_count_maps(), leak_maps_);                                              \
    } while (0)

/* ---- helpers ---- */

static void discard_sink(void *arg, enum log_level level, const char *line)
{
    (void)arg, (void)level, (void)line;
}

/* The first failure log (vsnprintf, strerror) makes ASan's allocator map
 * regions for new size classes: not a leak, but it adds lines to
 * /proc/self/maps. Run that path once before any count is taken. */
static void leak_warmup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    struct region m, r;
    log_set_sink(discard_sink, NULL);
    if (region_create_memfd(&m, "shmipc-test-warmup", 4096, 0) == 0) {
        char link[64];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", m.fd);
        region_map_fd(&r, open(link, O_RDONLY | O_CLOEXEC), 1, 4096, 0); /* EACCES */
        region_map_fd(&r, dup(m.fd), 8192, 8192, 0);                     /* too small */
        region_close(&m);
    }
    log_set_sink(NULL, NULL);
}

static size_t page_size(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

static int fd_is_closed(int fd)
{
    return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

static int fd_is_cloexec(int fd)
{
    int f = fcntl(fd, F_GETFD);
    return f >= 0 && (f & FD_CLOEXEC) != 0;
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static int closed_state(const struct region *r)
{
    return r->base == NULL && r->fd == -1 && r->size == 0;
}

static int make_tmpdir(char *out, size_t cap)
{
    snprintf(out, cap, "/tmp/shmipc-region-XXXXXX");
    return mkdtemp(out) != NULL ? 0 : -errno;
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return type == FTW_DP ? rmdir(path) : unlink(path);
}

static int rm_tree(const char *path)
{
    return nftw(path, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* Creates a regular file of `size` bytes starting with `text`. */
static int write_file(const char *path, size_t size, const char *text)
{
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = ftruncate(fd, (off_t)size) == 0 ? 0 : -errno;
    size_t n = strlen(text) < size ? strlen(text) : size;
    if (rc == 0 && n > 0 && pwrite(fd, text, n, 0) != (ssize_t)n)
        rc = -EIO;
    close(fd);
    return rc;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Resident kB of the mapping that starts at `base`, from /proc/self/smaps:
 * pages present in this process's page tables, unlike mincore(), which for
 * tmpfs reports the page cache. -1 if not found. */
static long rss_kb(const void *base)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (f == NULL)
        return -1;
    char line[512];
    long kb = -1;
    int in = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long start;
        char dash;
        if (sscanf(line, "%lx%c", &start, &dash) == 2 && dash == '-')
            in = start == (unsigned long)base;
        else if (in && sscanf(line, "Rss: %ld kB", &kb) == 1)
            break;
    }
    fclose(f);
    return kb;
}

/* mincore() on the whole mapping (at most 256 pages): 1 if every page is
 * resident. A stack vector: a heap one would add mappings under ASan. */
static int all_resident(const struct region *r)
{
    unsigned char vec[256];
    size_t pages = (r->size + page_size() - 1) / page_size();
    if (pages > sizeof(vec) || mincore(r->base, r->size, vec) < 0)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < pages; i++)
        n += vec[i] & 1;
    return n == pages;
}

#if defined(__x86_64__)
#define AUDIT_ARCH_HERE AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define AUDIT_ARCH_HERE AUDIT_ARCH_AARCH64
#endif

/* In a forked child only: makes syscall `nr` fail with `err` when
 * (low word of argument `arg` & mask) == val. 0 or -1. */
static int deny_syscall(int nr, int arg, uint32_t mask, uint32_t val, int err)
{
#ifdef AUDIT_ARCH_HERE
    uint32_t arg_off = (uint32_t)(offsetof(struct seccomp_data, args) + (size_t)arg * 8);
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_HERE, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nr, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg_off), /* little-endian low word */
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, mask),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, val, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((uint32_t)err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0 ? -1 : 0;
#else
    (void)nr, (void)arg, (void)mask, (void)val, (void)err;
    return -1;
#endif
}

/* Child-side check: prints what failed and counts it. */
#define CHILD_CHECK(bad, cond)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "\n  child check failed at line %d: %s\n", __LINE__, #cond);           \
            (bad)++;                                                                               \
        }                                                                                          \
    } while (0)

/* ---- memfds ---- */

static void test_init_close_idempotent(void)
{
    LEAK_BEGIN();
    struct region r;
    memset(&r, 0x5a, sizeof(r));
    region_init(&r);
    CU_ASSERT_TRUE(closed_state(&r));
    CU_ASSERT_EQUAL(r.flags, 0);
    CU_ASSERT_EQUAL(r.path[0], '\0');
    region_close(&r);
    CU_ASSERT_TRUE(closed_state(&r));

    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&r, "shmipc-test-idem", 4 * KiB, 0), 0);
    int fd = r.fd;
    region_close(&r);
    CU_ASSERT_TRUE(closed_state(&r));
    CU_ASSERT_TRUE(fd_is_closed(fd));
    region_close(&r); /* second close: no double close, no crash */
    CU_ASSERT_TRUE(closed_state(&r));
    LEAK_END();
}

static void test_memfd_shared_mapping(void)
{
    LEAK_BEGIN();
    size_t size = 3 * page_size();
    struct region a, b;
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&a, "shmipc-test-share", size, 0), 0);
    CU_ASSERT_PTR_NOT_NULL(a.base);
    CU_ASSERT_EQUAL(a.size, size);
    CU_ASSERT_STRING_EQUAL(a.path, "shmipc-test-share");
    struct stat st;
    CU_ASSERT_EQUAL(fstat(a.fd, &st), 0);
    CU_ASSERT_EQUAL((size_t)st.st_size, size);
    for (size_t i = 0; i < size; i++)
        a.base[i] = (uint8_t)(i * 7 + 1);

    int dupfd = dup(a.fd);
    CU_ASSERT_FATAL(dupfd >= 0);
    CU_ASSERT_EQUAL_FATAL(region_map_fd(&b, dupfd, 1, 1 * MiB, 0), 0);
    CU_ASSERT_EQUAL(b.fd, dupfd);
    CU_ASSERT_PTR_NOT_EQUAL(b.base, a.base);
    CU_ASSERT_EQUAL(b.size, size);
    CU_ASSERT_EQUAL(memcmp(a.base, b.base, size), 0);
    b.base[size - 1] = 0xee;
    b.base[0] = 0x11;
    CU_ASSERT_EQUAL(a.base[size - 1], 0xee);
    CU_ASSERT_EQUAL(a.base[0], 0x11);
    /* The memfd's name, read back from /proc/self/fd. */
    CU_ASSERT_STRING_EQUAL(b.path, "shmipc-test-share");
    CU_ASSERT_EQUAL(b.flags & REGION_UNLINK_ON_CLOSE, 0);
    region_close(&b);
    CU_ASSERT_TRUE(fd_is_closed(dupfd));
    CU_ASSERT_EQUAL(a.base[0], 0x11); /* a's mapping is untouched */
    region_close(&a);
    LEAK_END();
}

static void test_map_fd_size_from_fstat(void)
{
    LEAK_BEGIN();
    struct region a, b;
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&a, "shmipc-test-size", 5000, 0), 0);
    CU_ASSERT_EQUAL(a.size, 5000);
    CU_ASSERT_EQUAL(region_map_fd(&b, dup(a.fd), 1, 1 * MiB, 0), 0);
    CU_ASSERT_EQUAL(b.size, 5000);
    region_close(&b);
    /* The file grew after a was made: map_fd reports what fstat says now. */
    CU_ASSERT_EQUAL(ftruncate(a.fd, 12288), 0);
    CU_ASSERT_EQUAL(region_map_fd(&b, dup(a.fd), 1, 1 * MiB, 0), 0);
    CU_ASSERT_EQUAL(b.size, 12288);
    b.base[12287] = 9;
    region_close(&b);
    region_close(&a);
    LEAK_END();
}

static void test_map_fd_bounds(void)
{
    LEAK_BEGIN();
    struct region a, b;
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&a, "shmipc-test-bounds", 8192, 0), 0);
    CU_ASSERT_EQUAL(region_map_fd(&b, dup(a.fd), 8192, 8192, 0), 0); /* both ends inclusive */
    CU_ASSERT_EQUAL(b.size, 8192);
    region_close(&b);

    int fd = dup(a.fd);
    CU_ASSERT_EQUAL(region_map_fd(&b, fd, 8193, 1 * MiB, 0), -EINVAL);
    CU_ASSERT_TRUE(fd_is_closed(fd));
    CU_ASSERT_TRUE(closed_state(&b));
    fd = dup(a.fd);
    CU_ASSERT_EQUAL(region_map_fd(&b, fd, 1, 8191, 0), -EFBIG);
    CU_ASSERT_TRUE(fd_is_closed(fd));
    CU_ASSERT_TRUE(closed_state(&b));
    fd = dup(a.fd);
    CU_ASSERT_EQUAL(region_map_fd(&b, fd, 9000, 8192, 0), -EINVAL); /* min > max */
    CU_ASSERT_TRUE(fd_is_closed(fd));
    fd = dup(a.fd);
    CU_ASSERT_EQUAL(region_map_fd(&b, fd, 1, 1 * MiB, 1u << 12), -EINVAL); /* unknown flag */
    CU_ASSERT_TRUE(fd_is_closed(fd));
    CU_ASSERT_EQUAL(region_map_fd(&b, -1, 1, 1 * MiB, 0), -EBADF);
    region_close(&a);

    /* An empty memfd cannot be mapped even when min allows 0. */
    fd = memfd_create("shmipc-test-empty", MFD_CLOEXEC);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(region_map_fd(&b, fd, 0, 1 * MiB, 0), -EINVAL);
    CU_ASSERT_TRUE(fd_is_closed(fd));
    LEAK_END();
}

static void test_create_bad_args(void)
{
    LEAK_BEGIN();
    struct region r;
    CU_ASSERT_EQUAL(region_create_memfd(&r, "shmipc-test-bad", 0, 0), -EINVAL);
    CU_ASSERT_TRUE(closed_state(&r));
    CU_ASSERT_EQUAL(region_create_memfd(&r, "shmipc-test-bad", SIZE_MAX / 2 + 1, 0), -EINVAL);
    CU_ASSERT_EQUAL(region_create_memfd(&r, "shmipc-test-bad", SIZE_MAX, 0), -EINVAL);
    CU_ASSERT_EQUAL(region_create_memfd(&r, "shmipc-test-bad", 4096, 1u << 9), -EINVAL);
    CU_ASSERT_EQUAL(region_create_memfd(&r, NULL, 4096, 0), -EINVAL);
    CU_ASSERT_TRUE(closed_state(&r));

    char dir[64], path[600];
    CU_ASSERT_EQUAL_FATAL(make_tmpdir(dir, sizeof(dir)), 0);
    snprintf(path, sizeof(path), "%s/pool", dir);
    CU_ASSERT_EQUAL(region_create_file(&r, path, 0, 0), -EINVAL);
    CU_ASSERT_EQUAL(region_create_file(&r, path, SIZE_MAX / 2 + 1, 0), -EINVAL);
    CU_ASSERT_EQUAL(region_create_file(&r, path, 4096, 1u << 9), -EINVAL);
    CU_ASSERT_FALSE(exists(path));
    /* A path that does not fit in r->path could not be unlinked later,
     * though each component is short enough for the file system. */
    int n = snprintf(path, sizeof(path), "%s/", dir);
    memset(path + n, 'd', 200);
    path[n + 200] = '\0';
    CU_ASSERT_EQUAL_FATAL(mkdir(path, 0700), 0);
    memset(path + n + 200, 'x', 100);
    path[n + 200] = '/';
    path[n + 300] = '\0';
    CU_ASSERT_EQUAL(region_create_file(&r, path, 4096, 0), -ENAMETOOLONG);
    CU_ASSERT_TRUE(closed_state(&r));
    CU_ASSERT_FALSE(exists(path));
    CU_ASSERT_EQUAL(rm_tree(dir), 0);
    LEAK_END();
}

static void test_cloexec(void)
{
    LEAK_BEGIN();
    char dir[64], path[128];
    CU_ASSERT_EQUAL_FATAL(make_tmpdir(dir, sizeof(dir)), 0);
    snprintf(path, sizeof(path), "%s/pool", dir);
    struct region m, f, d, o;
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&m, "shmipc-test-cloexec", 4096, 0), 0);
    CU_ASSERT_TRUE(fd_is_cloexec(m.fd));
    CU_ASSERT_EQUAL_FATAL(region_create_file(&f, path, 4096, 0), 0);
    CU_ASSERT_TRUE(fd_is_cloexec(f.fd));
    int fd = dup(m.fd); /* dup() clears FD_CLOEXEC; map_fd must set it */
    CU_ASSERT_FALSE(fd_is_cloexec(fd));
    CU_ASSERT_EQUAL_FATAL(region_map_fd(&d, fd, 1, 1 * MiB, 0), 0);
    CU_ASSERT_TRUE(fd_is_cloexec(d.fd));
    CU_ASSERT_EQUAL_FATAL(region_open_file(&o, dir, path, 1, 1 * MiB, 0), 0);
    CU_ASSERT_TRUE(fd_is_cloexec(o.fd));
    region_close(&o);
    region_close(&d);
    region_close(&f);
    region_close(&m);
    CU_ASSERT_EQUAL(rm_tree(dir), 0);
    LEAK_END();
}

static void test_seal(void)
{
    LEAK_BEGIN();
    struct region r;
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&r, "shmipc-test-seal", 8192, REGION_SEAL), 0);
    CU_ASSERT_EQUAL(fcntl(r.fd, F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    errno = 0;
    CU_ASSERT_EQUAL(ftruncate(r.fd, 16384), -1);
    CU_ASSERT_EQUAL(errno, EPERM);
    errno = 0;
    CU_ASSERT_EQUAL(ftruncate(r.fd, 4096), -1);
    CU_ASSERT_EQUAL(errno, EPERM);
    errno = 0;
    CU_ASSERT_EQUAL(fcntl(r.fd, F_ADD_SEALS, F_SEAL_WRITE), -1); /* F_SEAL_SEAL */
    CU_ASSERT_EQUAL(errno, EPERM);
    r.base[8191] = 1; /* contents stay writable */
    CU_ASSERT_EQUAL(r.size, 8192);
    region_close(&r);

    /* Control: without REGION_SEAL the size can change. */
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&r, "shmipc-test-noseal", 8192, 0), 0);
    CU_ASSERT_EQUAL(fcntl(r.fd, F_GET_SEALS), 0);
    CU_ASSERT_EQUAL(ftruncate(r.fd, 16384), 0);
    region_close(&r);
    LEAK_END();
}

static void test_identity(void)
{
    LEAK_BEGIN();
    struct region a, b, c;
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&a, "shmipc-test-id", 4096, 0), 0);
    CU_ASSERT_EQUAL_FATAL(region_map_fd(&b, dup(a.fd), 1, 1 * MiB, 0), 0);
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&c, "shmipc-test-id", 4096, 0), 0);
    struct stat st;
    CU_ASSERT_EQUAL(fstat(a.fd, &st), 0);
    CU_ASSERT_EQUAL(a.dev, st.st_dev);
    CU_ASSERT_EQUAL(a.ino, st.st_ino);
    CU_ASSERT_NOT_EQUAL(a.ino, 0);
    CU_ASSERT_EQUAL(b.dev, a.dev);
    CU_ASSERT_EQUAL(b.ino, a.ino);
    /* Same name, different memfd: a registry must tell them apart. */
    CU_ASSERT_FALSE(c.dev == a.dev && c.ino == a.ino);
    region_close(&c);
    region_close(&b);
    region_close(&a);

    char dir[64], path[128];
    CU_ASSERT_EQUAL_FATAL(make_tmpdir(dir, sizeof(dir)), 0);
    snprintf(path, sizeof(path), "%s/pool", dir);
    CU_ASSERT_EQUAL_FATAL(region_create_file(&a, path, 4096, 0), 0);
    CU_ASSERT_EQUAL_FATAL(region_open_file(&b, dir, path, 1, 1 * MiB, 0), 0);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(a.dev, st.st_dev);
    CU_ASSERT_EQUAL(a.ino, st.st_ino);
    CU_ASSERT_EQUAL(b.dev, st.st_dev);
    CU_ASSERT_EQUAL(b.ino, st.st_ino);
    CU_ASSERT_STRING_EQUAL(a.path, path);
    CU_ASSERT_STRING_EQUAL(b.path, path);
    region_close(&b);
    region_close(&a);
    CU_ASSERT_EQUAL(rm_tree(dir), 0);
    LEAK_END();
}

static void test_map_fd_refuses_non_files(void)
{
    LEAK_BEGIN();
    struct region r;
    int p[2];
    CU_ASSERT_EQUAL_FATAL(pipe(p), 0);
    CU_ASSERT_EQUAL(region_map_fd(&r, p[0], 1, 1 * MiB, 0), SHMIPC_EPATH);
    CU_ASSERT_TRUE(fd_is_closed(p[0]));
    CU_ASSERT_TRUE(closed_state(&r));
    close(p[1]);

    int d = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CU_ASSERT_FATAL(d >= 0);
    CU_ASSERT_EQUAL(region_map_fd(&r, d, 1, 1 * MiB, 0), SHMIPC_EPATH);
    CU_ASSERT_TRUE(fd_is_closed(d));

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CU_ASSERT_FATAL(s >= 0);
    CU_ASSERT_EQUAL(region_map_fd(&r, s, 1, 1 * MiB, 0), SHMIPC_EPATH);
    CU_ASSERT_TRUE(fd_is_closed(s));

    /* A regular file opened read-only passes fstat, then mmap refuses it:
     * the fd is closed on that later failure too. */
    struct region m;
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&m, "shmipc-test-ro", 4096, 0), 0);
    char link[64];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", m.fd);
    int ro = open(link, O_RDONLY | O_CLOEXEC);
    CU_ASSERT_FATAL(ro >= 0);
    CU_ASSERT_EQUAL(region_map_fd(&r, ro, 1, 1 * MiB, 0), -EACCES);
    CU_ASSERT_TRUE(fd_is_closed(ro));
    CU_ASSERT_TRUE(closed_state(&r));
    region_close(&m);
    LEAK_END();
}

static char last_warn[1024];

static void capture_sink(void *arg, enum log_level level, const char *line)
{
    (void)arg;
    if (level == LOG_WARN)
        snprintf(last_warn, sizeof(last_warn), "%s", line);
}

static void test_failure_logged(void)
{
    LEAK_BEGIN();
    struct region m, r;
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&m, "shmipc-test-log", 4096, 0), 0);
    char link[64], want[128];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", m.fd);
    int ro = open(link, O_RDONLY | O_CLOEXEC);
    CU_ASSERT_FATAL(ro >= 0);
    snprintf(want, sizeof(want), "mmap(fd=%d, len=4096) failed: %s", ro, strerror(EACCES));
    last_warn[0] = '\0';
    enum log_level old = log_get_level();
    log_set_level(LOG_WARN);
    log_set_sink(capture_sink, NULL);
    int rc = region_map_fd(&r, ro, 1, 1 * MiB, 0);
    log_set_sink(NULL, NULL);
    log_set_level(old);
    CU_ASSERT_EQUAL(rc, -EACCES);
    CU_ASSERT_PTR_NOT_NULL(strstr(last_warn, want));
    if (strstr(last_warn, want) == NULL)
        fprintf(stderr, "\n  logged \"%s\", want \"%s\"\n", last_warn, want);
    region_close(&m);
    LEAK_END();
}

/* ---- created files ---- */

static void test_create_file(void)
{
    LEAK_BEGIN();
    char dir[64], path[128];
    CU_ASSERT_EQUAL_FATAL(make_tmpdir(dir, sizeof(dir)), 0);
    snprintf(path, sizeof(path), "%s/pool", dir);
    size_t size = 16 * page_size();
    struct region r;
    CU_ASSERT_EQUAL_FATAL(region_create_file(&r, path, size, 0), 0);
    struct stat st;
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_TRUE(S_ISREG(st.st_mode));
    CU_ASSERT_EQUAL(st.st_mode & 0077, 0); /* 0600, never group/other */
    CU_ASSERT_EQUAL((size_t)st.st_size, size);
    /* posix_fallocate reserved the blocks: not a sparse file. */
    CU_ASSERT_TRUE((size_t)st.st_blocks * 512 >= size);
    CU_ASSERT_EQUAL(r.size, size);
    r.base[size - 1] = 0x42;
    region_close(&r);
    /* No REGION_UNLINK_ON_CLOSE: the file and its contents stay. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CU_ASSERT_FATAL(fd >= 0);
    uint8_t byte = 0;
    CU_ASSERT_EQUAL(pread(fd, &byte, 1, (off_t)size - 1), 1);
    CU_ASSERT_EQUAL(byte, 0x42);
    close(fd);
    CU_ASSERT_EQUAL(rm_tree(dir), 0);
    LEAK_END();
}

static void test_create_file_refuses_existing(void)
{
    LEAK_BEGIN();
    char dir[64], path[128], target[128], dangling[128], missing[128];
    CU_ASSERT_EQUAL_FATAL(make_tmpdir(dir, sizeof(dir)), 0);
    snprintf(path, sizeof(path), "%s/existing", dir);
    CU_ASSERT_EQUAL_FATAL(write_file(path, 100, "keep me"), 0);
    struct region r;
    CU_ASSERT_EQUAL(region_create_file(&r, path, 4096, REGION_UNLINK_ON_CLOSE), -EEXIST);
    CU_ASSERT_TRUE(closed_state(&r));
    CU_ASSERT_EQUAL(file_size(path), 100); /* neither truncated nor unlinked */

    /* A symlink to an existing file: refused, the target untouched. */
    snprintf(target, sizeof(target), "%s/link", dir);
    CU_ASSERT_EQUAL_FATAL(symlink(path, target), 0);
    CU_ASSERT_EQUAL(region_create_file(&r, target, 4096, 0), -EEXIST);
    CU_ASSERT_EQUAL(file_size(path), 100);
    struct stat st;
    CU_ASSERT_EQUAL(lstat(target, &st), 0);
    CU_ASSERT_TRUE(S_ISLNK(st.st_mode));

    /* A dangling symlink: refused, and its target is not created. */
    snprintf(dangling, sizeof(dangling), "%s/dangling", dir);
    snprintf(missing, sizeof(missing), "%s/missing", dir);
    CU_ASSERT_EQUAL_FATAL(symlink(missing, dangling), 0);
    CU_ASSERT_EQUAL(region_create_file(&r, dangling, 4096, 0), -EEXIST);
    CU_ASSERT_FALSE(exists(missing));
    CU_ASSERT_TRUE(exists(dangling));
    CU_ASSERT_EQUAL(rm_tree(dir), 0);
    LEAK_END();
}

static void test_unlink_on_close(void)
{
    LEAK_BEGIN();
    char dir[64], path[128], other[128];
    CU_ASSERT_EQUAL_FATAL(make_tmpdir(dir, sizeof(dir)), 0);
    snprintf(path, sizeof(path), "%s/pool", dir);
    struct region r, o;
    CU_ASSERT_EQUAL_FATAL(region_create_file(&r, path, 4096, REGION_UNLINK_ON_CLOSE), 0);
    CU_ASSERT_TRUE(exists(path));
    region_close(&r);
    CU_ASSERT_FALSE(exists(path));

    /* Replaced after creation: close must not unlink the newcomer. */
    snprintf(other, sizeof(other), "%s/other", dir);
    CU_ASSERT_EQUAL_FATAL(region_create_file(&r, path, 4096, REGION_UNLINK_ON_CLOSE), 0);
    CU_ASSERT_EQUAL_FATAL(write_file(other, 10, "x"), 0);
    CU_ASSERT_EQUAL_FATAL(rename(other, path), 0);
    region_close(&r);
    CU_ASSERT_EQUAL(file_size(path), 10);

    /* The flag means nothing to a file the region did not create. */
    CU_ASSERT_EQUAL_FATAL(unlink(path), 0);
    CU_ASSERT_EQUAL_FATAL(write_file(path, 8192, ""), 0);
    CU_ASSERT_EQUAL_FATAL(region_open_file(&o, dir, path, 1, 1 * MiB, REGION_UNLINK_ON_CLOSE), 0);
    CU_ASSERT_EQUAL(o.flags & REGION_UNLINK_ON_CLOSE, 0);
    region_close(&o);
    CU_ASSERT_EQUAL(file_size(path), 8192);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL_FATAL(region_map_fd(&o, fd, 1, 1 * MiB, REGION_UNLINK_ON_CLOSE), 0);
    CU_ASSERT_EQUAL(o.flags & REGION_UNLINK_ON_CLOSE, 0);
    region_close(&o);
    CU_ASSERT_EQUAL(file_size(path), 8192);
    CU_ASSERT_EQUAL(rm_tree(dir), 0);
    LEAK_END();
}

static void test_dev_shm_unlink_on_close(void)
{
    LEAK_BEGIN();
    char prefix[64], path[128];
    snprintf(prefix, sizeof(prefix), "shmipc-test-%d-", (int)getpid());
    snprintf(path, sizeof(path), "/dev/shm/%sregion", prefix);
    CU_ASSERT_EQUAL_FATAL(tu_count_shm(prefix), 0);
    struct region r;
    CU_ASSERT_EQUAL_FATAL(region_create_file(&r, path, 64 * KiB, REGION_UNLINK_ON_CLOSE), 0);
    CU_ASSERT_EQUAL(tu_count_shm(prefix), 1);
    CU_ASSERT_STRING_EQUAL(r.path, path);
    memset(r.base, 0xab, r.size);
    region_close(&r);
    CU_ASSERT_EQUAL(tu_count_shm(prefix), 0);
    CU_ASSERT_FALSE(exists(path));
    LEAK_END();
}

/* ---- peer-named files ---- */

static void test_path_allowed(void)
{
    static const struct {
        const char *dir, *path;
        int ok;
    } cases[] = {
        {"/dev/shm", "/dev/shm/shmipc_1_buffer", 1},
        {"/dev/shm", "/dev/shm/a/b/c", 1},
        {"/dev/shm/", "/dev/shm/x", 1},
        {"/dev/shm//", "/dev/shm/x", 1},
        {"/", "/x", 1},
        {"/dev/shm", "/dev/shm/..x", 1}, /* a name, not ".." */
        {"/dev/shm", "/dev/shm/.x", 1},
        {"/dev/shm", "/dev/shm/a..", 1},
        {"/dev/shm", "dev/shm/x", 0},
        {"/dev/shm", "x", 0},
        {"/dev/shm", "", 0},
        {"dev/shm", "dev/shm/x", 0},
        {"", "/x", 0},
        {"/dev/shm", "/tmp/x", 0},
        {"/dev/shm", "/dev/shmX/x", 0},
        {"/dev/shm", "/dev/shmX", 0},
        {"/dev/shm", "/dev/sh/x", 0},
        {"/dev/shm", "/dev/shm", 0},
        {"/dev/shm", "/dev/shm/", 0},
        {"/dev/shm", "/dev/shm//x", 0},
        {"/dev/shm", "/dev/shm/a//x", 0},
        {"/dev/shm", "/dev/shm/a/", 0},
        {"/dev/shm", "/dev/shm/.", 0},
        {"/dev/shm", "/dev/shm/./x", 0},
        {"/dev/shm", "/dev/shm/a/./x", 0},
        {"/dev/shm", "/dev/shm/..", 0},
        {"/dev/shm", "/dev/shm/../etc/passwd", 0},
        {"/dev/shm", "/dev/shm/a/../../etc/passwd", 0},
        {"/dev/shm", "/dev/shm/a/..", 0},
        {"/", "/", 0},
        {"/", "//x", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = region_path_allowed(cases[i].dir, cases[i].path);
        int want = cases[i].ok ? 0 : SHMIPC_EPATH;
        if (rc != want)
            fprintf(stderr, "\n  region_path_allowed(\"%s\", \"%s\") = %d, want %d\n", cases[i].dir,
                    cases[i].path, rc, want);
        CU_ASSERT_EQUAL(rc, want);
    }
    CU_ASSERT_EQUAL(region_path_allowed(NULL, "/x"), SHMIPC_EPATH);
    CU_ASSERT_EQUAL(region_path_allowed("/", NULL), SHMIPC_EPATH);

    /* Length: the whole path must fit in r->path with its NUL. */
    char path[300];
    size_t cap = sizeof(((struct region *)0)->path);
    memset(path, 'x', sizeof(path));
    memcpy(path, "/dev/shm/", 9);
    path[cap - 1] = '\0';
    CU_ASSERT_EQUAL(region_path_allowed("/dev/shm", path), 0);
    path[cap - 1] = 'x';
    path[cap] = '\0';
    CU_ASSERT_EQUAL(region_path_allowed("/dev/shm", path), SHMIPC_EPATH);
}

struct tree {
    char root[64];   /* mkdtemp */
    char dir[96];    /* root/a: the allowed directory */
    char dir_sl[96]; /* root/a/ */
};

#define SMALL_MIN (4 * KiB)
#define BIG_MAX (1 * MiB)

static int tree_path(char *out, size_t cap, const char *base, const char *rel)
{
    return snprintf(out, cap, "%s/%s", base, rel) < (int)cap ? 0 : -ENAMETOOLONG;
}

static int tree_build(struct tree *t)
{
    static const char *const dirs[] = {"a", "aX", "a/sub", "a/sub/deeper"};
    static const struct {
        const char *rel;
        size_t size;
    } files[] = {
        {"a/f", 16 * KiB},  {"a/sub/f", 16 * KiB}, {"a/sub/deeper/f", 16 * KiB},
        {"aX/f", 16 * KiB}, {"outside", 16 * KiB}, {"a/small", 100},
        {"a/big", 2 * MiB}, {"a/empty", 0},
    };
    char p[160], q[160];
    if (make_tmpdir(t->root, sizeof(t->root)) < 0)
        return -1;
    snprintf(t->dir, sizeof(t->dir), "%s/a", t->root);
    snprintf(t->dir_sl, sizeof(t->dir_sl), "%s/a/", t->root);
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
        if (tree_path(p, sizeof(p), t->root, dirs[i]) < 0 || mkdir(p, 0700) < 0)
            return -1;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (tree_path(p, sizeof(p), t->root, files[i].rel) < 0 ||
            write_file(p, files[i].size, "hello") < 0)
            return -1;
    /* Symlinks whose targets are all acceptable files or directories. */
    tree_path(p, sizeof(p), t->root, "a/lnk");
    if (symlink("f", p) < 0)
        return -1;
    tree_path(p, sizeof(p), t->root, "a/abslnk");
    tree_path(q, sizeof(q), t->root, "a/f");
    if (symlink(q, p) < 0)
        return -1;
    tree_path(p, sizeof(p), t->root, "a/lsub");
    if (symlink("sub", p) < 0)
        return -1;
    tree_path(p, sizeof(p), t->root, "a/esc");
    if (symlink("../outside", p) < 0)
        return -1;
    tree_path(p, sizeof(p), t->root, "a/fifo");
    if (mkfifo(p, 0600) < 0)
        return -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    tree_path(sa.sun_path, sizeof(sa.sun_path), t->root, "a/sock");
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    int rc = bind(s, (struct sockaddr *)&sa, sizeof(sa));
    close(s);
    return rc;
}

/* Runs the whole acceptance/refusal table; returns the number of wrong
 * results (each printed). Used by a child with and without openat2. */
static int open_matrix(const struct tree *t)
{
    static const struct {
        const char *rel; /* below the tree root */
        int slash_dir;   /* allowed_dir given with a trailing '/' */
        int want;
    } cases[] = {
        {"a/f", 0, 0},
        {"a/f", 1, 0},
        {"a/sub/deeper/f", 0, 0},
        {"a/sub/f", 0, 0},
        {"aX/f", 0, SHMIPC_EPATH},     /* prefix trick: sibling "aX" */
        {"outside", 0, SHMIPC_EPATH},  /* outside the directory */
        {"a/../a/f", 0, SHMIPC_EPATH}, /* ".." even when it stays inside */
        {"a/sub/../f", 0, SHMIPC_EPATH},
        {"a/./f", 0, SHMIPC_EPATH},  /* "." */
        {"a//f", 0, SHMIPC_EPATH},   /* empty component */
        {"a/sub/", 0, SHMIPC_EPATH}, /* trailing slash */
        {"a/f/", 0, SHMIPC_EPATH},
        {"a", 0, SHMIPC_EPATH},        /* the directory itself */
        {"a/lnk", 0, SHMIPC_EPATH},    /* symlink, final, relative */
        {"a/abslnk", 0, SHMIPC_EPATH}, /* symlink, final, absolute */
        {"a/esc", 0, SHMIPC_EPATH},    /* symlink escaping */
        {"a/lsub/f", 0, SHMIPC_EPATH}, /* symlink, intermediate */
        {"a/lsub/deeper/f", 0, SHMIPC_EPATH},
        {"a/fifo", 0, SHMIPC_EPATH}, /* must not block either */
        {"a/sock", 0, SHMIPC_EPATH},
        {"a/sub", 0, SHMIPC_EPATH}, /* directory */
        {"a/small", 0, -EINVAL},    /* below min */
        {"a/empty", 0, -EINVAL},
        {"a/big", 0, -EFBIG}, /* above max */
        {"a/missing", 0, -ENOENT},
        {"a/f/x", 0, -ENOTDIR}, /* a file used as a directory */
    };
    int bad = 0;
    int fds0 = tu_count_fds();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char path[200];
        tree_path(path, sizeof(path), t->root, cases[i].rel);
        struct region r;
        int rc = region_open_file(&r, cases[i].slash_dir ? t->dir_sl : t->dir, path, SMALL_MIN,
                                  BIG_MAX, REGION_UNLINK_ON_CLOSE);
        if (rc != cases[i].want) {
            fprintf(stderr, "\n  region_open_file(%s) = %d (%s), want %d\n", cases[i].rel, rc,
                    shmipc_strerror(rc), cases[i].want);
            bad++;
        }
        if (rc < 0) {
            CHILD_CHECK(bad, closed_state(&r));
            continue;
        }
        CHILD_CHECK(bad, r.size == 16 * KiB);
        CHILD_CHECK(bad, memcmp(r.base, "hello", 5) == 0);
        CHILD_CHECK(bad, strcmp(r.path, path) == 0);
        region_close(&r);
        CHILD_CHECK(bad, exists(path)); /* never unlinked */
    }
    CHILD_CHECK(bad, tu_count_fds() == fds0);
    /* Relative paths and directories are refused before any lookup. */
    struct region r;
    CHILD_CHECK(bad, region_open_file(&r, t->dir, "f", 1, BIG_MAX, 0) == SHMIPC_EPATH);
    CHILD_CHECK(bad, region_open_file(&r, "a", "a/f", 1, BIG_MAX, 0) == SHMIPC_EPATH);
    return bad;
}

static int child_matrix(void *arg)
{
    return open_matrix(arg) == 0 ? 0 : 1;
}

static int child_matrix_no_openat2(void *arg)
{
    if (deny_syscall(SYS_openat2, 0, 0, 0, ENOSYS) < 0)
        return SKIPPED;
    struct open_how how = {.flags = O_RDONLY};
    errno = 0;
    if (syscall(SYS_openat2, AT_FDCWD, "/", &how, sizeof(how)) != -1 || errno != ENOSYS) {
        fprintf(stderr, "\n  seccomp filter did not hide openat2\n");
        return 2;
    }
    return open_matrix(arg) == 0 ? 0 : 1;
}

static void run_child(int (*fn)(void *), void *arg, const char *what)
{
    pid_t pid = tu_fork(fn, arg);
    CU_ASSERT_FATAL(pid > 0);
    int rc = tu_wait(pid, DEADLINE_MS);
    if (rc == SKIPPED) {
        fprintf(stderr, "\n  NOTE: %s skipped: not possible on this machine\n", what);
        return;
    }
    CU_ASSERT_EQUAL(rc, 0);
}

static void test_open_file_matrix(void)
{
    LEAK_BEGIN();
    struct tree t;
    int built = tree_build(&t);
    CU_ASSERT_EQUAL(built, 0);
    if (built == 0) {
        run_child(child_matrix, &t, "open matrix");
        run_child(child_matrix_no_openat2, &t, "open matrix without openat2");
    }
    char p[160];
    tree_path(p, sizeof(p), t.root, "a/f");
    CU_ASSERT_EQUAL(file_size(p), 16 * KiB); /* still there, untouched */
    CU_ASSERT_EQUAL(rm_tree(t.root), 0);
    LEAK_END();
}

static void test_open_file_in_process(void)
{
    LEAK_BEGIN();
    struct tree t;
    CU_ASSERT_EQUAL_FATAL(tree_build(&t), 0);
    char p[160];
    struct region r;
    tree_path(p, sizeof(p), t.root, "a/sub/deeper/f");
    CU_ASSERT_EQUAL(region_open_file(&r, t.dir, p, SMALL_MIN, BIG_MAX, 0), 0);
    CU_ASSERT_EQUAL(memcmp(r.base, "hello", 5), 0);
    CU_ASSERT_EQUAL(r.size, 16 * KiB);
    region_close(&r);
    tree_path(p, sizeof(p), t.root, "a/lsub/f");
    CU_ASSERT_EQUAL(region_open_file(&r, t.dir, p, SMALL_MIN, BIG_MAX, 0), SHMIPC_EPATH);
    tree_path(p, sizeof(p), t.root, "a/lnk");
    CU_ASSERT_EQUAL(region_open_file(&r, t.dir, p, SMALL_MIN, BIG_MAX, 0), SHMIPC_EPATH);
    tree_path(p, sizeof(p), t.root, "a/fifo");
    CU_ASSERT_EQUAL(region_open_file(&r, t.dir, p, SMALL_MIN, BIG_MAX, 0), SHMIPC_EPATH);
    tree_path(p, sizeof(p), t.root, "a/big");
    CU_ASSERT_EQUAL(region_open_file(&r, t.dir, p, SMALL_MIN, BIG_MAX, 0), -EFBIG);
    CU_ASSERT_EQUAL(region_open_file(&r, t.dir, p, SMALL_MIN, 2 * MiB, 0), 0);
    CU_ASSERT_EQUAL(r.size, 2 * MiB);
    region_close(&r);
    tree_path(p, sizeof(p), t.root, "a/f");
    CU_ASSERT_EQUAL(region_open_file(&r, t.dir, p, 9, 8, 0), -EINVAL); /* min > max */
    CU_ASSERT_EQUAL(region_open_file(&r, t.dir, p, 1, BIG_MAX, 1u << 8), -EINVAL);
    CU_ASSERT_EQUAL(rm_tree(t.root), 0);
    LEAK_END();
}

/* ---- peer files removed on close (REGION_UNLINK_PEER) ---- */

static int warns_seen;

static void count_warn_sink(void *arg, enum log_level level, const char *line)
{
    (void)arg, (void)line;
    if (level <= LOG_WARN)
        warns_seen++;
}

/* region_close() with warnings counted (and nothing printed). */
static int close_counting_warns(struct region *r)
{
    warns_seen = 0;
    enum log_level old = log_get_level();
    log_set_level(LOG_WARN); /* the suite runs at LOG_ERROR */
    log_set_sink(count_warn_sink, NULL);
    region_close(r);
    log_set_sink(NULL, NULL);
    log_set_level(old);
    return warns_seen;
}

static void test_unlink_peer_on_close(void)
{
    LEAK_BEGIN();
    char prefix[64], path[128], kept[128], small[128], ctl[128], decoy[128];
    struct region r, m;
    int fd = -1;
    region_init(&r);
    region_init(&m);
    snprintf(prefix, sizeof(prefix), "shmipc-test-%d-peer-", (int)getpid());
    snprintf(path, sizeof(path), "/dev/shm/%sbuffer", prefix);
    snprintf(kept, sizeof(kept), "/dev/shm/%skept", prefix);
    snprintf(small, sizeof(small), "/dev/shm/%ssmall", prefix);
    snprintf(ctl, sizeof(ctl), "/dev/shm/%sctl\001\n", prefix);
    snprintf(decoy, sizeof(decoy), "/dev/shm/%sctl??", prefix); /* what r.path shows */
    REQUIRE(tu_count_shm(prefix) == 0);
    REQUIRE(write_file(path, 64 * KiB, "peer") == 0);
    REQUIRE(write_file(kept, 64 * KiB, "peer") == 0);
    REQUIRE(write_file(small, 100, "peer") == 0);
    REQUIRE(tu_count_shm(prefix) == 3);

    /* With the flag: the file stays while mapped and goes at close. */
    REQUIRE(region_open_file(&r, "/dev/shm", path, SMALL_MIN, BIG_MAX,
                             REGION_GUARD | REGION_UNLINK_PEER) == 0);
    CU_ASSERT_NOT_EQUAL(r.flags & REGION_UNLINK_PEER, 0);
    CU_ASSERT_EQUAL(memcmp(r.base, "peer", 4), 0);
    CU_ASSERT_TRUE(exists(path));
    CU_ASSERT_EQUAL(close_counting_warns(&r), 0);
    CU_ASSERT_FALSE(exists(path));
    CU_ASSERT_TRUE(exists(kept));

    /* Without it the file stays (the control for the case above). */
    REQUIRE(region_open_file(&r, "/dev/shm/", kept, SMALL_MIN, BIG_MAX, REGION_GUARD) == 0);
    region_close(&r);
    CU_ASSERT_TRUE(exists(kept));

    /* A file we refused is not ours to remove. */
    CU_ASSERT_EQUAL(region_open_file(&r, "/dev/shm", small, SMALL_MIN, BIG_MAX, REGION_UNLINK_PEER),
                    -EINVAL);
    CU_ASSERT_TRUE(exists(small));

    /* The flag means nothing to region_map_fd(). */
    fd = open(kept, O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(region_map_fd(&m, fd, 1, BIG_MAX, REGION_UNLINK_PEER) == 0);
    fd = -1;
    CU_ASSERT_EQUAL(m.flags & REGION_UNLINK_PEER, 0);
    region_close(&m);
    CU_ASSERT_TRUE(exists(kept));

    /* Control bytes: r.path shows them as '?', the unlink uses the real
     * name (and leaves a file named like the log text alone). */
    REQUIRE(write_file(ctl, 64 * KiB, "peer") == 0);
    REQUIRE(write_file(decoy, 64 * KiB, "decoy") == 0);
    REQUIRE(region_open_file(&r, "/dev/shm", ctl, SMALL_MIN, BIG_MAX, REGION_UNLINK_PEER) == 0);
    CU_ASSERT_STRING_EQUAL(r.path, decoy);
    region_close(&r);
    CU_ASSERT_FALSE(exists(ctl));
    CU_ASSERT_TRUE(exists(decoy));
    CU_ASSERT_EQUAL(tu_count_shm(prefix), 3); /* kept, small, decoy */
out:
    if (fd >= 0)
        close(fd);
    region_close(&r);
    region_close(&m);
    unlink(path);
    unlink(kept);
    unlink(small);
    unlink(ctl);
    unlink(decoy);
    CU_ASSERT_EQUAL(tu_count_shm(prefix), 0);
    LEAK_END();
}

/* Replaced by another file (renamed over it): that one stays. Already
 * removed by the peer, with or without its directory: no warning. */
static void test_unlink_peer_replaced_or_gone(void)
{
    LEAK_BEGIN();
    char dir[64], f[128], other[128], sib[128], sub[128], g[128];
    struct region r;
    region_init(&r);
    REQUIRE(make_tmpdir(dir, sizeof(dir)) == 0);
    snprintf(f, sizeof(f), "%s/f", dir);
    snprintf(other, sizeof(other), "%s/other", dir);
    snprintf(sib, sizeof(sib), "%s/sibling", dir);
    snprintf(sub, sizeof(sub), "%s/sub", dir);
    snprintf(g, sizeof(g), "%s/sub/g", dir);
    REQUIRE(write_file(sib, 16 * KiB, "sibling") == 0);

    REQUIRE(write_file(f, 16 * KiB, "old") == 0);
    REQUIRE(region_open_file(&r, dir, f, SMALL_MIN, BIG_MAX, REGION_UNLINK_PEER) == 0);
    REQUIRE(write_file(other, 32 * KiB, "new") == 0);
    REQUIRE(rename(other, f) == 0);
    CU_ASSERT_EQUAL(close_counting_warns(&r), 0); /* a peer may reuse its name */
    CU_ASSERT_EQUAL(file_size(f), 32 * KiB);
    REQUIRE(unlink(f) == 0);

    REQUIRE(write_file(f, 16 * KiB, "old") == 0);
    REQUIRE(region_open_file(&r, dir, f, SMALL_MIN, BIG_MAX, REGION_UNLINK_PEER) == 0);
    REQUIRE(unlink(f) == 0);
    CU_ASSERT_EQUAL(close_counting_warns(&r), 0);
    CU_ASSERT_FALSE(exists(f));

    REQUIRE(mkdir(sub, 0700) == 0);
    REQUIRE(write_file(g, 16 * KiB, "old") == 0);
    REQUIRE(region_open_file(&r, dir, g, SMALL_MIN, BIG_MAX, REGION_UNLINK_PEER) == 0);
    REQUIRE(unlink(g) == 0);
    REQUIRE(rmdir(sub) == 0);
    CU_ASSERT_EQUAL(close_counting_warns(&r), 0);
    CU_ASSERT_EQUAL(file_size(sib), 16 * KiB); /* nothing else touched */
out:
    region_close(&r);
    if (dir[0] != '\0')
        CU_ASSERT_EQUAL(rm_tree(dir), 0);
    LEAK_END();
}

/* The peer's moves after we mapped its file, each leaving, at the path
 * we mapped, a symlink that leads to a hard link of that same file
 * outside the allowed directory (so the identity check alone would not
 * save it). 0, or -1 with the failing call printed. */
static int step(int rc, const char *call, const char *path)
{
    if (rc < 0)
        fprintf(stderr, "\n  %s(%s): %s\n", call, path, strerror(errno));
    return rc;
}

/* allowed/a/f: "a" becomes an absolute symlink to outside/. */
static int swap_parent(const char *root)
{
    char f[192], out[192], a[192], moved[192];
    tree_path(f, sizeof(f), root, "allowed/a/f");
    tree_path(out, sizeof(out), root, "outside/f");
    tree_path(a, sizeof(a), root, "allowed/a");
    tree_path(moved, sizeof(moved), root, "allowed/a.old");
    char target[192];
    tree_path(target, sizeof(target), root, "outside");
    if (step(link(f, out), "link", out) < 0 || step(rename(a, moved), "rename", a) < 0)
        return -1;
    return step(symlink(target, a), "symlink", a);
}

/* allowed/b/deeper/f: "b" becomes a relative symlink to ../outside. */
static int swap_middle(const char *root)
{
    char f[192], out[192], b[192], moved[192];
    tree_path(f, sizeof(f), root, "allowed/b/deeper/f");
    tree_path(out, sizeof(out), root, "outside/deeper/f");
    tree_path(b, sizeof(b), root, "allowed/b");
    tree_path(moved, sizeof(moved), root, "allowed/b.old");
    if (step(link(f, out), "link", out) < 0 || step(rename(b, moved), "rename", b) < 0)
        return -1;
    return step(symlink("../outside", b), "symlink", b);
}

/* allowed/g itself becomes a symlink to outside/g. */
static int swap_final(const char *root)
{
    char f[192], out[192];
    tree_path(f, sizeof(f), root, "allowed/g");
    tree_path(out, sizeof(out), root, "outside/g");
    if (step(link(f, out), "link", out) < 0 || step(unlink(f), "unlink", f) < 0)
        return -1;
    return step(symlink(out, f), "symlink", f);
}

/* Maps `rel` (below root) with REGION_UNLINK_PEER, lets `swap` run, closes:
 * the number of failed checks. */
static int map_swap_close(const char *root, const char *allowed, const char *rel,
                          int (*swap)(const char *root))
{
    int bad = 0;
    char p[192];
    struct region r;
    tree_path(p, sizeof(p), root, rel);
    CHILD_CHECK(bad, write_file(p, 16 * KiB, "x") == 0);
    int rc = region_open_file(&r, allowed, p, SMALL_MIN, BIG_MAX, REGION_UNLINK_PEER);
    CHILD_CHECK(bad, rc == 0);
    CHILD_CHECK(bad, swap(root) == 0);
    region_close(&r);
    return bad;
}

/* Subdirectories, and directories swapped for symlinks after the file was
 * mapped, below `root` (empty): the number of failed checks (each
 * printed). Run with and without openat2. */
static int peer_unlink_checks(const char *root)
{
    static const char *const dirs[] = {"allowed",   "allowed/sub",   "allowed/sub/deeper",
                                       "allowed/a", "allowed/b",     "allowed/b/deeper",
                                       "outside",   "outside/deeper"};
    static const char *const files[] = {"allowed/f", "allowed/sub/f", "allowed/sub/deeper/f"};
    static const char *const kept[] = {"outside/f",        "allowed/a.old/f",
                                       "outside/deeper/f", "allowed/b.old/deeper/f",
                                       "outside/g",        "allowed/g"};
    char allowed[128], allowed_sl[128], p[192];
    int bad = 0;
    struct region r;
    log_set_sink(discard_sink, NULL);
    snprintf(allowed, sizeof(allowed), "%s/allowed", root);
    snprintf(allowed_sl, sizeof(allowed_sl), "%s/allowed/", root);
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        tree_path(p, sizeof(p), root, dirs[i]);
        if (mkdir(p, 0700) < 0) {
            fprintf(stderr, "\n  mkdir(%s): %s\n", p, strerror(errno));
            bad++;
            goto out;
        }
    }
    /* In the directory and below subdirectories, the allowed directory
     * with and without a '/' after it: removed, the directories kept. */
    for (int sl = 0; sl < 2; sl++) {
        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
            tree_path(p, sizeof(p), root, files[i]);
            CHILD_CHECK(bad, write_file(p, 16 * KiB, "x") == 0);
            int rc = region_open_file(&r, sl ? allowed_sl : allowed, p, SMALL_MIN, BIG_MAX,
                                      REGION_UNLINK_PEER);
            CHILD_CHECK(bad, rc == 0);
            region_close(&r);
            if (exists(p))
                fprintf(stderr, "\n  %s was not removed\n", files[i]);
            CHILD_CHECK(bad, !exists(p));
        }
    }
    tree_path(p, sizeof(p), root, "allowed/sub/deeper");
    CHILD_CHECK(bad, exists(p));

    /* Swapped after mapping: nothing is removed through the symlinks. */
    bad += map_swap_close(root, allowed, "allowed/a/f", swap_parent);
    bad += map_swap_close(root, allowed, "allowed/b/deeper/f", swap_middle);
    bad += map_swap_close(root, allowed, "allowed/g", swap_final);
    for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
        tree_path(p, sizeof(p), root, kept[i]);
        if (!exists(p))
            fprintf(stderr, "\n  %s was removed\n", kept[i]);
        CHILD_CHECK(bad, exists(p));
    }
out:
    log_set_sink(NULL, NULL);
    return bad;
}

struct peer_root {
    char root[64];
};

static int child_peer_unlink(void *arg)
{
    return peer_unlink_checks(((struct peer_root *)arg)->root) == 0 ? 0 : 1;
}

static int child_peer_unlink_no_openat2(void *arg)
{
    if (deny_syscall(SYS_openat2, 0, 0, 0, ENOSYS) < 0)
        return SKIPPED;
    return peer_unlink_checks(((struct peer_root *)arg)->root) == 0 ? 0 : 1;
}

/* Three fresh trees: in this process, in a child, in a child without
 * openat2 (the component-by-component walk). */
static void test_unlink_peer_beneath(void)
{
    LEAK_BEGIN();
    struct peer_root t[3];
    int made = 0;
    for (; made < 3; made++)
        REQUIRE(make_tmpdir(t[made].root, sizeof(t[made].root)) == 0);
    CU_ASSERT_EQUAL(peer_unlink_checks(t[0].root), 0);
    run_child(child_peer_unlink, &t[1], "peer unlink checks");
    run_child(child_peer_unlink_no_openat2, &t[2], "peer unlink checks without openat2");
out:
    while (made > 0)
        CU_ASSERT_EQUAL(rm_tree(t[--made].root), 0);
    LEAK_END();
}

/* ---- failures at creation ---- */

struct enospc_arg {
    char dir[64];
};

static int child_enospc(void *argp)
{
    struct enospc_arg *a = argp;
    if (unshare(CLONE_NEWNS) < 0 || mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("tmpfs", a->dir, "tmpfs", 0, "size=64k,mode=0700") < 0)
        return SKIPPED;
    int bad = 0;
    char path[128];
    struct region r;
    snprintf(path, sizeof(path), "%s/pool", a->dir);
    int rc = region_create_file(&r, path, 1 * MiB, 0);
    if (rc != SHMIPC_ENOSPACE)
        fprintf(stderr, "\n  region_create_file on a full tmpfs = %d\n", rc);
    CHILD_CHECK(bad, rc == SHMIPC_ENOSPACE);
    CHILD_CHECK(bad, closed_state(&r));
    CHILD_CHECK(bad, !exists(path)); /* undone */
    /* Control: a size that fits works on the same file system. */
    CHILD_CHECK(bad, region_create_file(&r, path, 16 * KiB, REGION_UNLINK_ON_CLOSE) == 0);
    region_close(&r);
    CHILD_CHECK(bad, !exists(path));
    return bad ? 1 : 0;
}

static void test_enospace(void)
{
    LEAK_BEGIN();
    struct enospc_arg a;
    CU_ASSERT_EQUAL_FATAL(make_tmpdir(a.dir, sizeof(a.dir)), 0);
    run_child(child_enospc, &a, "ENOSPC on a private 64 KiB tmpfs");
    CU_ASSERT_EQUAL(rmdir(a.dir), 0); /* the mount lived only in the child's namespace */
    LEAK_END();
}

static int child_fsize(void *argp)
{
    const char *dir = argp;
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {64 * KiB, 64 * KiB};
    if (setrlimit(RLIMIT_FSIZE, &rl) < 0)
        return SKIPPED;
    int bad = 0;
    int fds0 = tu_count_fds();
    char path[128];
    struct region r;
    snprintf(path, sizeof(path), "%s/pool", dir);
    CHILD_CHECK(bad, region_create_file(&r, path, 1 * MiB, 0) == -EFBIG);
    CHILD_CHECK(bad, closed_state(&r));
    CHILD_CHECK(bad, !exists(path));
    CHILD_CHECK(bad, region_create_memfd(&r, "shmipc-test-fsize", 1 * MiB, 0) == -EFBIG);
    CHILD_CHECK(bad, closed_state(&r));
    CHILD_CHECK(bad, tu_count_fds() == fds0);
    /* Control: within the limit both work. */
    CHILD_CHECK(bad, region_create_memfd(&r, "shmipc-test-fsize", 32 * KiB, 0) == 0);
    region_close(&r);
    CHILD_CHECK(bad, region_create_file(&r, path, 32 * KiB, REGION_UNLINK_ON_CLOSE) == 0);
    region_close(&r);
    return bad ? 1 : 0;
}

static void test_fsize_limit(void)
{
    LEAK_BEGIN();
    char dir[64];
    CU_ASSERT_EQUAL_FATAL(make_tmpdir(dir, sizeof(dir)), 0);
    pid_t pid = tu_fork(child_fsize, dir);
    CU_ASSERT_FATAL(pid > 0);
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0); /* 128 + SIGXFSZ if it crashed */
    CU_ASSERT_EQUAL(rmdir(dir), 0);                /* no file left behind */
    LEAK_END();
}

static int child_mmap_fails(void *argp)
{
    const char *dir = argp;
    struct region m;
    /* Made before the filter, to test map_fd's failure path. */
    if (region_create_memfd(&m, "shmipc-test-nommap", 4096, 0) < 0)
        return 2;
    int fd = dup(m.fd);
    if (deny_syscall(SYS_mmap, 3, MAP_SHARED, MAP_SHARED, ENOMEM) < 0)
        return SKIPPED;
    int bad = 0;
    int fds0 = tu_count_fds();
    char path[128];
    struct region r;
    snprintf(path, sizeof(path), "%s/pool", dir);
    CHILD_CHECK(bad, region_create_file(&r, path, 8192, 0) == -ENOMEM);
    CHILD_CHECK(bad, closed_state(&r));
    CHILD_CHECK(bad, !exists(path));
    CHILD_CHECK(bad, region_create_memfd(&r, "shmipc-test-nommap", 8192, 0) == -ENOMEM);
    CHILD_CHECK(bad, closed_state(&r));
    CHILD_CHECK(bad, tu_count_fds() == fds0);
    CHILD_CHECK(bad, region_map_fd(&r, fd, 1, 1 * MiB, 0) == -ENOMEM);
    CHILD_CHECK(bad, fd_is_closed(fd));
    CHILD_CHECK(bad, tu_count_fds() == fds0 - 1);
    return bad ? 1 : 0;
}

static void test_mmap_failure_undone(void)
{
    LEAK_BEGIN();
    char dir[64];
    CU_ASSERT_EQUAL_FATAL(make_tmpdir(dir, sizeof(dir)), 0);
    run_child(child_mmap_fails, dir, "mmap failure injection");
    CU_ASSERT_EQUAL(rmdir(dir), 0);
    LEAK_END();
}

/* ---- prefault ---- */

static void test_prefault(void)
{
    LEAK_BEGIN();
    size_t size = 64 * page_size();
    long want_kb = (long)(size / KiB);
    struct region a, b;
    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&a, "shmipc-test-prefault", size, 0), 0);
    /* Control: a fresh mapping has no pages in our page tables yet. */
    CU_ASSERT_EQUAL(rss_kb(a.base), 0);
    CU_ASSERT_EQUAL_FATAL(region_map_fd(&b, dup(a.fd), 1, 1 * MiB, REGION_PREFAULT), 0);
    CU_ASSERT_EQUAL(rss_kb(b.base), want_kb);
    CU_ASSERT_TRUE(all_resident(&b));
    CU_ASSERT_EQUAL(b.flags & REGION_PREFAULT, REGION_PREFAULT);
    region_close(&b);
    region_prefault(&a);
    CU_ASSERT_EQUAL(rss_kb(a.base), want_kb);
    CU_ASSERT_TRUE(all_resident(&a));
    region_close(&a);
    region_prefault(&a); /* closed: nothing to do, no crash */

    CU_ASSERT_EQUAL_FATAL(region_create_memfd(&a, "shmipc-test-prefault", size, REGION_PREFAULT),
                          0);
    CU_ASSERT_EQUAL(rss_kb(a.base), want_kb);
    CU_ASSERT_TRUE(all_resident(&a));
    region_close(&a);
    LEAK_END();
}

static int child_prefault_old_kernel(void *argp)
{
    (void)argp;
    struct region r;
    size_t size = 32 * page_size();
    if (region_create_memfd(&r, "shmipc-test-oldmadv", size, 0) < 0)
        return 2;
    if (deny_syscall(SYS_madvise, 2, 0xffffffffu, 23 /* MADV_POPULATE_WRITE */, EINVAL) < 0)
        return SKIPPED;
    int bad = 0;
    errno = 0;
    CHILD_CHECK(bad, madvise(r.base, size, 23) == -1 && errno == EINVAL);
    CHILD_CHECK(bad, rss_kb(r.base) == 0);
    region_prefault(&r);
    CHILD_CHECK(bad, rss_kb(r.base) == (long)(size / KiB));
    region_close(&r);
    return bad ? 1 : 0;
}

static void test_prefault_fallback(void)
{
    LEAK_BEGIN();
    run_child(child_prefault_old_kernel, NULL, "prefault without MADV_POPULATE_WRITE");
    LEAK_END();
}

/* Reads one byte of a mapping whose file the peer shrank under us. */
static int touch_after_truncate(void *arg)
{
    unsigned flags = *(unsigned *)arg;
    struct region mine, theirs;
    region_init(&mine);
    region_init(&theirs);
    if (region_create_memfd(&mine, "shmipc-test-trunc", 64 * KiB, 0) < 0 ||
        region_map_fd(&theirs, dup(mine.fd), 1, MiB, flags) < 0)
        return 2;
    ((volatile uint8_t *)mine.base)[40000] = 7;
    if (ftruncate(mine.fd, 0) < 0)
        return 3;
    uint8_t v = ((volatile uint8_t *)theirs.base)[40000]; /* past the new end */
    int tripped = region_tripped(&theirs);
    region_close(&theirs);
    region_close(&mine);
    return v == 0 && tripped ? 0 : 4;
}

/* REGION_GUARD: a peer that truncates its memfd costs us nothing worse than
 * zeros and a tripped flag; without the guard the same access is SIGBUS. */
static void test_guard_survives_truncation(void)
{
    LEAK_BEGIN();
    unsigned guarded = REGION_GUARD, plain = 0;
    /* Killed by SIGBUS (a sanitizer's handler turns that into its own
     * failure exit): in no case does the child get to return normally. */
    int plain_rc = tu_wait(tu_fork(touch_after_truncate, &plain), DEADLINE_MS);
    CU_ASSERT(plain_rc != 0 && plain_rc != 4);
    CU_ASSERT_EQUAL(tu_wait(tu_fork(touch_after_truncate, &guarded), DEADLINE_MS), 0);
    /* And in this process, twice (slots are reused). */
    CU_ASSERT_EQUAL(touch_after_truncate(&guarded), 0);
    CU_ASSERT_EQUAL(touch_after_truncate(&guarded), 0);
    LEAK_END();
}

static const struct test_case cases[] = {
    {"REGION_GUARD survives a truncated memfd", test_guard_survives_truncation},
    {"init and close are idempotent", test_init_close_idempotent},
    {"memfd mapped twice shares bytes", test_memfd_shared_mapping},
    {"map_fd takes the size from fstat", test_map_fd_size_from_fstat},
    {"map_fd enforces [min, max] and closes the fd", test_map_fd_bounds},
    {"create refuses bad sizes, flags, long paths", test_create_bad_args},
    {"every fd is close-on-exec", test_cloexec},
    {"REGION_SEAL fixes the memfd size", test_seal},
    {"dev/ino identify the file", test_identity},
    {"map_fd refuses pipes, dirs, sockets", test_map_fd_refuses_non_files},
    {"a failure logs the call and its arguments", test_failure_logged},
    {"create_file reserves a 0600 file", test_create_file},
    {"create_file refuses existing paths and symlinks", test_create_file_refuses_existing},
    {"unlink on close, only our own file", test_unlink_on_close},
    {"/dev/shm file is gone after close", test_dev_shm_unlink_on_close},
    {"region_path_allowed lexical rules", test_path_allowed},
    {"open_file matrix with and without openat2", test_open_file_matrix},
    {"open_file in process", test_open_file_in_process},
    {"REGION_UNLINK_PEER removes the peer's file at close", test_unlink_peer_on_close},
    {"REGION_UNLINK_PEER spares a replaced or removed file", test_unlink_peer_replaced_or_gone},
    {"REGION_UNLINK_PEER stays below the allowed dir", test_unlink_peer_beneath},
    {"full tmpfs gives SHMIPC_ENOSPACE", test_enospace},
    {"RLIMIT_FSIZE fails cleanly", test_fsize_limit},
    {"mmap failure is undone", test_mmap_failure_undone},
    {"REGION_PREFAULT and region_prefault populate", test_prefault},
    {"region_prefault falls back to reads", test_prefault_fallback},
    {NULL, NULL},
};

const struct test_suite suite_region = {"region", cases};
