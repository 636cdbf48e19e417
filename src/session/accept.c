/*
 * Session setup on the server side (see accept.h). The one rule: sizes and
 * identities come from fstat() of what we were given, never from the
 * peer's word, and a pool is mapped once per (st_dev, st_ino).
 *
 * In file-path mode the peer's files are removed when we unmap them
 * (REGION_UNLINK_PEER), as Go peers expect of a server: the queue file when
 * its session closes, the pool file when the last session using it does.
 */
#include "session/accept.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shmipc/errors.h"

#define QUEUE_MAP_MAX (2 * (SHMIPC_QUEUE_HEADER_LEN + (size_t)QUEUE_MAX_CAP * SHMIPC_QUEUE_ELEM_LEN))
#define POOL_MAP_MIN (SHMIPC_POOL_HEADER_LEN + SHMIPC_LIST_HEADER_LEN + SHMIPC_SLICE_HEADER_LEN)

static int map_pool_fd(struct pool_registry *reg, const struct accept_limits *lim, int fd,
                       struct pool_ref **out)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if ((*out = pool_registry_find(reg, st.st_dev, st.st_ino)) != NULL) {
        close(fd); /* this client's pool is already mapped */
        return 0;
    }
    struct region r;
    region_init(&r);
    int rc = region_map_fd(&r, fd, POOL_MAP_MIN, lim->max_pool_bytes, REGION_GUARD);
    return rc < 0 ? rc : pool_ref_new(&r, 0, NULL, 0, reg, out);
}

static int map_pool_file(struct pool_registry *reg, const struct accept_limits *lim,
                         const char *path, struct pool_ref **out)
{
    struct region r;
    region_init(&r);
    int rc = region_open_file(&r, lim->allowed_dir, path, POOL_MAP_MIN, lim->max_pool_bytes,
                              REGION_GUARD | REGION_UNLINK_PEER);
    if (rc < 0)
        return rc;
    /* Armed only once the file proved to be a pool: a peer must not get
     * us to remove any file it names. */
    r.flags &= ~(unsigned)REGION_UNLINK_PEER;
    if ((*out = pool_registry_find(reg, r.dev, r.ino)) != NULL) {
        region_close(&r); /* the registered pool removes it, last */
        return 0;
    }
    rc = pool_ref_new(&r, 0, NULL, 0, reg, out);
    if (rc == 0)
        (*out)->region.flags |= REGION_UNLINK_PEER;
    return rc;
}

/* The handshake has the client's memory: map it (pool once per client). */
int accept_map(struct hs_server *hs, struct pool_registry *reg, const struct accept_limits *lim,
               struct pool_ref **pool, struct region *qregion)
{
    int rc;
    if (hs->mode == HS_MEMFD) {
        int bfd, qfd;
        hs_server_take_fds(hs, &bfd, &qfd);
        rc = map_pool_fd(reg, lim, bfd, pool);
        if (rc < 0) {
            close(qfd);
            return rc;
        }
        rc = region_map_fd(qregion, qfd, 2 * SHMIPC_QUEUE_HEADER_LEN, QUEUE_MAP_MAX, REGION_GUARD);
    } else {
        rc = map_pool_file(reg, lim, hs->buffer_path, pool);
        if (rc < 0)
            return rc;
        rc =
            region_open_file(qregion, lim->allowed_dir, hs->queue_path, 2 * SHMIPC_QUEUE_HEADER_LEN,
                             QUEUE_MAP_MAX, REGION_GUARD | REGION_UNLINK_PEER);
        qregion->flags &= ~(unsigned)REGION_UNLINK_PEER; /* armed once it proved a queue */
    }
    if (rc == 0) {
        /* Validate the queue now, so a bad one fails the handshake. */
        struct queue_pair qp;
        rc = queue_pair_map(&qp, qregion->base, qregion->size, 1);
        if (rc == 0 && hs->mode != HS_MEMFD)
            qregion->flags |= REGION_UNLINK_PEER;
    }
    return rc;
}

