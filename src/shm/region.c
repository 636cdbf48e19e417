/*
 * Shared-memory regions: create a memfd or a file, map a peer's fd, or open
 * a peer-named file confined to an allowed directory.
 *
 * The one rule: a region owns its fd and its mapping from the moment a call
 * receives or creates them. Every failure path releases both (and unlinks a
 * file this call created) and leaves the region closed, so callers never
 * clean up after an error.
 */
#include "shm/region.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/log.h"
#include "shm/guard.h"
#include "shmipc/errors.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#define REGION_FLAGS_ALL                                                                           \
    (REGION_PREFAULT | REGION_UNLINK_ON_CLOSE | REGION_SEAL | REGION_GUARD | REGION_UNLINK_PEER)

/* O_NONBLOCK|O_NOCTTY: a FIFO or device planted under the allowed directory
 * must not block or become our terminal before fstat() refuses it. */
#define PEER_OPEN_FLAGS (O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)

/* Logs "<call> failed: <reason>" and returns -err. */
static int warn_err(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int warn_err(int err, const char *fmt, ...)
{
    char call[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call, sizeof(call), fmt, ap);
    va_end(ap);
    log_warn("%s failed: %s", call, strerror(err));
    return -err;
}

/* Copies peer-supplied text for logs with control bytes replaced. */
static void sanitize(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src[i] != '\0' && i + 1 < cap; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    dst[i] = '\0';
}

void region_init(struct region *r)
{
    r->base = NULL;
    r->size = 0;
    r->fd = -1;
    r->flags = 0;
    r->dev = 0;
    r->ino = 0;
    r->path[0] = '\0';
    r->guard = -1;
    r->peer_path[0] = '\0';
    r->peer_dir_len = 0;
}

static int check_create_args(size_t size, unsigned flags)
{
    if (size == 0 || size > SIZE_MAX / 2 || (flags & ~REGION_FLAGS_ALL) != 0)
        return -EINVAL;
    return 0;
}

static int identify(struct region *r, struct stat *st)
{
    if (fstat(r->fd, st) < 0)
        return warn_err(errno, "fstat(fd=%d, %s)", r->fd, r->path);
    r->dev = st->st_dev;
    r->ino = st->st_ino;
    return 0;
}

/* Sizes the file and allocates its backing store now, so that a full tmpfs
 * fails here instead of raising SIGBUS on a later first touch. */
static int reserve(int fd, size_t size)
{
    if (ftruncate(fd, (off_t)size) < 0)
        return warn_err(errno, "ftruncate(fd=%d, len=%zu)", fd, size);
    int err;
    do
        err = posix_fallocate(fd, 0, (off_t)size); /* returns the error, not -1 */
    while (err == EINTR);
    if (err == 0)
        return 0;
    warn_err(err, "posix_fallocate(fd=%d, len=%zu)", fd, size);
    return err == ENOSPC ? SHMIPC_ENOSPACE : -err;
}

static int seal_size(int fd)
{
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        return warn_err(errno, "fcntl(fd=%d, F_ADD_SEALS)", fd);
    return 0;
}

static int map_region(struct region *r, size_t size)
{
    int mflags = MAP_SHARED | ((r->flags & REGION_PREFAULT) ? MAP_POPULATE : 0);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, mflags, r->fd, 0);
    if (p == MAP_FAILED)
        return warn_err(errno, "mmap(fd=%d, len=%zu)", r->fd, size);
    r->base = p;
    r->size = size;
    return 0;
}

int region_create_memfd(struct region *r, const char *name, size_t size, unsigned flags)
{
    region_init(r);
    if (name == NULL)
        return -EINVAL;
    int rc = check_create_args(size, flags);
    if (rc < 0)
        return rc;
    r->fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (r->fd < 0) {
        rc = warn_err(errno, "memfd_create(name=%s)", name);
        region_init(r);
        return rc;
    }
    r->flags = flags & (REGION_PREFAULT | REGION_SEAL);
    snprintf(r->path, sizeof(r->path), "%s", name);
    struct stat st;
    rc = reserve(r->fd, size);
    if (rc == 0 && (flags & REGION_SEAL))
        rc = seal_size(r->fd);
    if (rc == 0)
        rc = identify(r, &st);
    if (rc == 0)
        rc = map_region(r, size);
    if (rc < 0)
        region_close(r);
    return rc;
}

int region_create_file(struct region *r, const char *path, size_t size, unsigned flags)
{
    region_init(r);
    if (path == NULL)
        return -EINVAL;
    int rc = check_create_args(size, flags);
    if (rc < 0)
        return rc;
    if (strlen(path) >= sizeof(r->path))
        return -ENAMETOOLONG; /* region_close() needs the whole path to unlink */
    r->fd = open(path, O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_RDWR, 0600);
    if (r->fd < 0) {
        rc = warn_err(errno, "open(%s, O_CREAT|O_EXCL)", path);
        region_init(r);
        return rc;
    }
    snprintf(r->path, sizeof(r->path), "%s", path);
    struct stat st;
    rc = identify(r, &st);
    /* From here the file is ours: region_close() unlinks it on failure. */
    r->flags = (flags & REGION_PREFAULT) | REGION_UNLINK_ON_CLOSE;
    if (rc == 0)
        rc = reserve(r->fd, size);
    if (rc == 0)
        rc = map_region(r, size);
    if (rc < 0) {
        region_close(r);
        return rc;
    }
    r->flags = flags & (REGION_PREFAULT | REGION_UNLINK_ON_CLOSE);
    return 0;
}

/* The name for logs: a memfd's own name, else "fd:<n>". Best effort. */
static void fd_name(int fd, char *out, size_t cap)
{
    static const char memfd[] = "/memfd:", deleted[] = " (deleted)";
    char link[64], target[300];
    snprintf(out, cap, "fd:%d", fd);
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0)
        return;
    target[n] = '\0';
    if (strncmp(target, memfd, sizeof(memfd) - 1) != 0)
        return;
    size_t dl = sizeof(deleted) - 1;
    if ((size_t)n >= dl && strcmp(target + n - dl, deleted) == 0)
        target[n - dl] = '\0';
    sanitize(out, cap, target + sizeof(memfd) - 1);
}

/* Maps r->fd (already owned by r) after checking what fstat() says. */
static int map_checked(struct region *r, size_t min, size_t max)
{
    struct stat st;
    int rc = identify(r, &st);
    if (rc < 0)
        return rc;
    if (!S_ISREG(st.st_mode)) {
        log_warn("region %s: not a regular file (mode 0%o)", r->path, (unsigned)st.st_mode);
        return SHMIPC_EPATH;
    }
    if ((uintmax_t)st.st_size > max) {
        log_warn("region %s: size %jd above the maximum %zu", r->path, (intmax_t)st.st_size, max);
        return -EFBIG;
    }
    if ((uintmax_t)st.st_size < min || st.st_size == 0) {
        log_warn("region %s: size %jd below the minimum %zu", r->path, (intmax_t)st.st_size, min);
        return -EINVAL;
    }
    rc = map_region(r, (size_t)st.st_size);
    if (rc == 0 && (r->flags & REGION_GUARD)) {
        /* A shrink between fstat and here is caught by the guard too. */
        if ((rc = guard_install()) == 0 && (r->guard = guard_add(r->base, r->size)) < 0)
            rc = r->guard;
        if (rc < 0)
            log_warn("region %s: cannot guard it against truncation: %s", r->path,
                     strerror(-rc));
    }
    return rc;
}

static int check_map_args(size_t min, size_t max, unsigned flags)
{
    if (min > max || (flags & ~REGION_FLAGS_ALL) != 0)
        return -EINVAL;
    return 0;
}

int region_map_fd(struct region *r, int fd, size_t min, size_t max, unsigned flags)
{
    region_init(r);
    if (fd < 0)
        return -EBADF;
    r->fd = fd;
    r->flags = flags & (REGION_PREFAULT | REGION_GUARD); /* never unlink or seal a peer's file */
    fd_name(fd, r->path, sizeof(r->path));
    int rc = check_map_args(min, max, flags);
    /* We own it now: it must not leak into a child we exec. */
    if (rc == 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        rc = warn_err(errno, "fcntl(fd=%d, F_SETFD, FD_CLOEXEC)", fd);
    if (rc == 0)
        rc = map_checked(r, min, max);
    if (rc < 0)
        region_close(r);
    return rc;
}

/* Length of allowed_dir without trailing slashes ("/" gives 0). */
static size_t dir_len(const char *allowed_dir)
{
    size_t n = strlen(allowed_dir);
    while (n > 0 && allowed_dir[n - 1] == '/')
        n--;
    return n;
}

int region_path_allowed(const char *allowed_dir, const char *path)
{
    if (allowed_dir == NULL || path == NULL || allowed_dir[0] != '/' || path[0] != '/')
        return SHMIPC_EPATH;
    if (strlen(path) >= sizeof(((struct region *)0)->path))
        return SHMIPC_EPATH;
    size_t dl = dir_len(allowed_dir);
    if (strncmp(path, allowed_dir, dl) != 0 || path[dl] != '/')
        return SHMIPC_EPATH;
    /* Each component below the directory: non-empty, not "." or "..". The
     * loop also refuses the directory itself and a trailing '/'. */
    const char *c = path + dl + 1;
    for (;;) {
        size_t n = strcspn(c, "/");
        if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return SHMIPC_EPATH;
        if (c[n] == '\0')
            return 0;
        c += n + 1;
    }
}

/* Errors that mean "a symlink, an escape or not a regular file". */
static int open_err(int err)
{
    if (err == ELOOP || err == EXDEV || err == EISDIR || err == ENXIO)
        return SHMIPC_EPATH;
    return -err;
}

/* Opens one intermediate directory below `dirfd` without following links. */
static int open_subdir(int dirfd, const char *name)
{
    int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return open_err(errno);
    struct stat st;
    int rc = fstat(fd, &st) < 0 ? -errno : 0;
    if (rc == 0 && S_ISLNK(st.st_mode))
        rc = SHMIPC_EPATH;
    else if (rc == 0 && !S_ISDIR(st.st_mode))
        rc = -ENOTDIR;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* For kernels without openat2 (before 5.6): opens the directory `rel`
 * (non-empty, no ".." since it passed region_path_allowed(); overwritten)
 * below `dirfd` one component at a time with O_NOFOLLOW. A new fd or a
 * negative code. */
static int walk_dirs(int dirfd, char *rel)
{
    int cur = dirfd;
    char *save = NULL;
    for (char *name = strtok_r(rel, "/", &save); name != NULL; name = strtok_r(NULL, "/", &save)) {
        int fd = open_subdir(cur, name);
        if (cur != dirfd)
            close(cur);
        if (fd < 0)
            return fd;
        cur = fd;
    }
    return cur != dirfd ? cur : -EINVAL;
}

/* Cuts `path` at its last '/': the last component, or NULL (and `path`
 * untouched) when it has only one. */
static char *cut_last(char *path)
{
    char *slash = strrchr(path, '/');
    if (slash == NULL)
        return NULL;
    *slash = '\0';
    return slash + 1;
}

/* open_beneath() without openat2. */
static int open_walk(int dirfd, const char *rest)
{
    char buf[REGION_PATH_CAP];
    snprintf(buf, sizeof(buf), "%s", rest);
    char *name = cut_last(buf);
    int cur = name != NULL ? walk_dirs(dirfd, buf) : dirfd;
    if (cur < 0)
        return cur;
    if (name == NULL)
        name = buf;
    int fd = openat(cur, name, PEER_OPEN_FLAGS);
    int rc = fd < 0 ? open_err(errno) : fd;
    if (cur != dirfd)
        close(cur);
    return rc;
}

/* Opens `rest` below `dirfd`: an fd, or a negative code. */
static int open_beneath(int dirfd, const char *rest)
{
    struct open_how how = {
        .flags = PEER_OPEN_FLAGS,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    long fd = syscall(SYS_openat2, dirfd, rest, &how, sizeof(how));
    if (fd >= 0)
        return (int)fd;
    if (errno != ENOSYS)
        return open_err(errno);
    log_debug("openat2 unavailable; walking %s one component at a time", rest);
    return open_walk(dirfd, rest);
}

/* Opens the directory `rel` (non-empty, no "..") below `dirfd` as O_PATH,
 * refusing symlinks and escapes as open_beneath() does. */
static int open_dir_beneath(int dirfd, const char *rel)
{
    struct open_how how = {
        .flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
    if (fd >= 0)
        return (int)fd;
    if (errno != ENOSYS)
        return open_err(errno);
    char buf[REGION_PATH_CAP];
    snprintf(buf, sizeof(buf), "%s", rel);
    return walk_dirs(dirfd, buf);
}

/* REGION_UNLINK_PEER: keeps the exact path (r->path is only for logs) and
 * where the allowed directory ends in it, so region_close() can find the
 * file again the way region_open_file() did. */
static void keep_peer_path(struct region *r, const char *allowed_dir, const char *path)
{
    size_t n = strlen(path);
    if (n >= sizeof(r->peer_path)) { /* region_path_allowed() refused it already */
        log_warn("region %s: path too long to keep; it will not be unlinked", r->path);
        return;
    }
    memcpy(r->peer_path, path, n + 1);
    r->peer_dir_len = dir_len(allowed_dir);
    r->flags |= REGION_UNLINK_PEER;
}

int region_open_file(struct region *r, const char *allowed_dir, const char *path, size_t min,
                     size_t max, unsigned flags)
{
    region_init(r);
    char shown[sizeof(r->path)];
    sanitize(shown, sizeof(shown), path != NULL ? path : "(null)");
    if (region_path_allowed(allowed_dir, path) < 0) {
        log_warn("region path %s refused: not below %s", shown,
                 allowed_dir != NULL ? allowed_dir : "(null)");
        return SHMIPC_EPATH;
    }
    int rc = check_map_args(min, max, flags);
    if (rc < 0)
        return rc;
    int dirfd = open(allowed_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return warn_err(errno, "open(%s, O_PATH|O_DIRECTORY)", allowed_dir);
    int fd = open_beneath(dirfd, path + dir_len(allowed_dir) + 1);
    close(dirfd);
    if (fd < 0) {
        char err[128];
        snprintf(err, sizeof(err), "%s",
                 fd == SHMIPC_EPATH ? "symlink, escape or not a file" : strerror(-fd));
        log_warn("open(%s below %s) failed: %s", shown, allowed_dir, err);
        return fd;
    }
    r->fd = fd;
    r->flags = flags & (REGION_PREFAULT | REGION_GUARD);
    snprintf(r->path, sizeof(r->path), "%s", shown);
    rc = map_checked(r, min, max);
    if (rc < 0) {
        region_close(r); /* before the flag: a file we refused is not ours to remove */
        return rc;
    }
    if (flags & REGION_UNLINK_PEER)
        keep_peer_path(r, allowed_dir, path);
    return 0;
}

/* Unlinks `path` only if it still names the file we created: someone may
 * have replaced it, and we never unlink a file we did not create. */
static void unlink_if_ours(const char *path, dev_t dev, ino_t ino)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return; /* already gone */
    if (st.st_dev != dev || st.st_ino != ino) {
        log_warn("not unlinking %s: it was replaced after we created it", path);
        return;
    }
    if (unlink(path) < 0 && errno != ENOENT) /* ENOENT: the peer removed it meanwhile */
        warn_err(errno, "unlink(%s)", path);
}

/* Logs why a peer's file is not unlinked; a file already gone is the
 * normal case (the peer removed it first) and worth a debug line only. */
static void peer_unlink_failed(const struct region *r, const char *call, int err)
{
    if (err == -ENOENT)
        log_debug("region %s: already removed", r->path);
    else if (err == SHMIPC_EPATH)
        log_warn("not unlinking %s: a symlink or escape now lies on its path", r->path);
    else
        log_warn("not unlinking %s: %s failed: %s", r->path, call, strerror(-err));
}

/* Unlinks a peer's file (REGION_UNLINK_PEER) if its path still names the
 * file we mapped, looking it up again below the allowed directory with
 * the rules region_open_file() used, so a directory swapped for a symlink
 * since then cannot send the unlink elsewhere. A rename between the check
 * and unlinkat() could still make us remove the newcomer; only a process
 * that can write the directory can do that, and it could remove it too. */
static void unlink_peer(const struct region *r)
{
    char buf[REGION_PATH_CAP];
    memcpy(buf, r->peer_path, sizeof(buf));
    size_t dl = r->peer_dir_len;
    if (dl >= strnlen(buf, sizeof(buf)) || buf[dl] != '/')
        return; /* not what keep_peer_path() stores */
    char *rel = buf + dl + 1;
    buf[dl] = '\0';
    int dirfd = open(dl == 0 ? "/" : buf, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        peer_unlink_failed(r, "open(allowed directory)", -errno);
        return;
    }
    char *name = cut_last(rel);
    int pfd = name != NULL ? open_dir_beneath(dirfd, rel) : dirfd;
    if (name == NULL)
        name = rel;
    struct stat st;
    if (pfd < 0)
        peer_unlink_failed(r, "openat2(parent directory)", pfd);
    else if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        peer_unlink_failed(r, "fstatat", -errno);
    else if (st.st_dev != r->dev || st.st_ino != r->ino)
        log_info("not unlinking %s: the peer replaced it", r->path);
    else if (unlinkat(pfd, name, 0) < 0)
        peer_unlink_failed(r, "unlinkat", -errno);
    else
        log_debug("region %s: unlinked the peer's file", r->path);
    if (pfd >= 0 && pfd != dirfd)
        close(pfd);
    close(dirfd);
}

int region_tripped(const struct region *r)
{
    return r->guard >= 0 && guard_tripped(r->guard);
}

void region_close(struct region *r)
{
    if (r->guard >= 0)
        guard_remove(r->guard);
    if (r->base != NULL && munmap(r->base, r->size) < 0)
        warn_err(errno, "munmap(%p, len=%zu)", (void *)r->base, r->size);
    /* Unlink while our fd still pins the inode, so its number is not reused. */
    if (r->fd >= 0 && (r->flags & REGION_UNLINK_ON_CLOSE) && r->ino != 0)
        unlink_if_ours(r->path, r->dev, r->ino);
    if (r->fd >= 0 && (r->flags & REGION_UNLINK_PEER) && r->ino != 0 && r->peer_path[0] == '/')
        unlink_peer(r);
    if (r->fd >= 0)
        close(r->fd);
    region_init(r);
}

void region_prefault(struct region *r)
{
    if (r->base == NULL)
        return;
    int rc;
    do
        rc = madvise(r->base, r->size, MADV_POPULATE_WRITE);
    while (rc < 0 && errno == EINTR);
    if (rc == 0)
        return;
    if (errno != EINVAL) {
        /* EFAULT/ENOMEM: e.g. the peer shrank the file; reading would SIGBUS. */
        warn_err(errno, "madvise(%p, len=%zu, MADV_POPULATE_WRITE)", (void *)r->base, r->size);
        return;
    }
    /* Before Linux 5.14. Reads only: a write-back could race with the peer. */
    long page = sysconf(_SC_PAGESIZE);
    const volatile uint8_t *p = r->base;
    for (size_t off = 0; off < r->size; off += (size_t)page)
        (void)p[off];
}
