/*
 * Shared-memory regions: a memfd or a file under an allowed directory
 * (normally /dev/shm), mapped MAP_SHARED read-write.
 *
 * Ownership: a region owns its mapping and its fd; region_close() releases
 * both. It unlinks the file when the region created it with
 * REGION_UNLINK_ON_CLOSE, or opened a peer's file with REGION_UNLINK_PEER
 * (what Go peers expect of the side that unmaps last), and then only if the
 * path still names the file it mapped. A region that maps a peer's fd takes
 * ownership of that fd (it is closed by region_close(), or on failure by
 * the call). Sizes always come from fstat(), never from the peer's word.
 */
#ifndef SHMIPC_SHM_REGION_H
#define SHMIPC_SHM_REGION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum region_flags {
    REGION_PREFAULT = 1u << 0,        /* populate every page at map time */
    REGION_UNLINK_ON_CLOSE = 1u << 1, /* created file: unlink in region_close() */
    REGION_SEAL = 1u << 2,            /* created memfd: F_SEAL_SHRINK|GROW|SEAL */
    REGION_GUARD = 1u << 3,           /* peer's file: survive its truncation (guard.h) */
    REGION_UNLINK_PEER = 1u << 4,     /* peer-named file: unlink in region_close() */
};

#define REGION_PATH_CAP 256 /* paths, with their NUL */

struct region {
    uint8_t *base;  /* mapping, NULL when closed */
    size_t size;    /* mapped bytes == file size at map time */
    int fd;         /* -1 when closed */
    unsigned flags; /* enum region_flags */
    dev_t dev;      /* file identity (st_dev, st_ino) for pool registries */
    ino_t ino;
    char path[REGION_PATH_CAP]; /* file path, or the memfd's name; for logs
                                   (a peer's text with control bytes replaced) */
    int guard;                  /* guard slot (REGION_GUARD), -1 when none */
    /* REGION_UNLINK_PEER: the path exactly as opened, whose first
     * peer_dir_len bytes are the allowed directory ("/" when 0). */
    char peer_path[REGION_PATH_CAP];
    size_t peer_dir_len;
};

/* Sets every field to the closed state; region_close() on it is a no-op.
 * Every other call starts by doing this to `r` (close an open region first)
 * and leaves it closed when it fails. Flags a call does not use are ignored
 * (REGION_UNLINK_ON_CLOSE outside region_create_file(), REGION_SEAL outside
 * region_create_memfd(), REGION_UNLINK_PEER outside region_open_file());
 * unknown bits are -EINVAL. */
void region_init(struct region *r);

/* Creates a memfd (MFD_CLOEXEC | MFD_ALLOW_SEALING) named `name`, reserves
 * `size` bytes of backing store (posix_fallocate: a full tmpfs fails here
 * with SHMIPC_ENOSPACE instead of SIGBUS later) and maps it. A size of 0 or
 * above SIZE_MAX / 2 is -EINVAL. */
int region_create_memfd(struct region *r, const char *name, size_t size, unsigned flags);

/* Creates `path` (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600), reserves and maps
 * it. -EEXIST if it exists (a symlink included); -ENAMETOOLONG unless it
 * fits in `path`. On failure the file is removed again. */
int region_create_file(struct region *r, const char *path, size_t size, unsigned flags);

/* Maps an fd received from a peer. Takes ownership of `fd` in all cases
 * and sets FD_CLOEXEC on it. The fd must be a regular file or memfd
 * (SHMIPC_EPATH otherwise) whose size is in [min, max]: -EFBIG above max,
 * -EINVAL below min or when empty; -EINVAL also when min > max. r->size is
 * the fstat() size. */
int region_map_fd(struct region *r, int fd, size_t min, size_t max, unsigned flags);

/* Opens and maps a peer-named file that must lie under `allowed_dir`:
 * absolute, no ".." or "." components, no symlink anywhere below the
 * directory, a regular file: SHMIPC_EPATH otherwise. Size in [min, max]
 * with the codes of region_map_fd(); other open errors as -errno
 * (-ENOENT, -ENOTDIR). Without REGION_UNLINK_PEER the file is never
 * unlinked. With it, region_close() after a successful open removes the
 * file, found again below `allowed_dir` (reopened by name; no symlink or
 * escape allowed), if it is still the same (st_dev, st_ino); a file the
 * peer removed or replaced is left alone. A failed open never unlinks. */
int region_open_file(struct region *r, const char *allowed_dir, const char *path, size_t min,
                     size_t max, unsigned flags);

/* Checks `path` against `allowed_dir` by its text alone (the rules above
 * that need no file system; also no empty component, no trailing '/', and
 * shorter than sizeof(r->path)). 0 or SHMIPC_EPATH. */
int region_path_allowed(const char *allowed_dir, const char *path);

/* 1 once the peer shrank a guarded region under us (its pages past the
 * end now read as zeros): whatever uses it must be closed. */
int region_tripped(const struct region *r);

/* Unmaps, closes, and unlinks if REGION_UNLINK_ON_CLOSE or
 * REGION_UNLINK_PEER says so (see above). Idempotent. */
void region_close(struct region *r);

/* Touches every page so later accesses do not fault (also done at map time
 * with REGION_PREFAULT). */
void region_prefault(struct region *r);

#endif
