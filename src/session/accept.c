/*
 * Session setup on the server side (see accept.h): accepting, handshakes
 * with deadlines, mapping the client's memory, starting the session. The
 * one rule: sizes and identities come from fstat() of what we were given,
 * never from the peer's word, and a pool is mapped once per (st_dev,
 * st_ino).
 *
 * In file-path mode the peer's files are removed when we unmap them
 * (REGION_UNLINK_PEER), as Go peers expect of a server: the queue file when
 * its session closes, the pool file when the last session using it does.
 */
#include "session/accept.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "shmipc/errors.h"

#define QUEUE_MAP_MAX                                                                              \
    (2 * (SHMIPC_QUEUE_HEADER_LEN + (size_t)QUEUE_MAX_CAP * SHMIPC_QUEUE_ELEM_LEN))
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

/* ---- settings ---- */

void serve_settings_init(struct serve_settings *s)
{
    s->allowed_dir = "/dev/shm";
    s->max_pool_bytes = (size_t)1 << 30;
    s->handshake_timeout_ms = 1000;
    s->max_event_bytes = 32u << 20;
    s->unhealthy_ms = 30000;
    s->max_streams = 65536;
}

/* ---- handshakes ---- */

void serve_accept_init(struct serve_accept *a, int epfd, struct pool_registry *reg,
                       const struct serve_accept_ops *ops, void *owner)
{
    memset(a, 0, sizeof(*a));
    a->epfd = epfd;
    a->reg = reg;
    a->ops = ops;
    a->owner = owner;
}

static void hs_free(struct serve_accept *a, struct serve_hs *h, int close_fd)
{
    struct serve_hs **pp = &a->hs;
    while (*pp != h)
        pp = &(*pp)->next;
    *pp = h->next;
    a->nhs--;
    if (close_fd) {
        epoll_ctl(a->epfd, EPOLL_CTL_DEL, h->hs.fd, NULL);
        close(h->hs.fd);
    }
    hs_server_cleanup(&h->hs);
    if (h->pool != NULL)
        pool_ref_put(h->pool);
    region_close(&h->qregion);
    free(h);
}

/* The handshake ends without a session: rc < 0 failed (why), 0 dropped. */
static void hs_end(struct serve_accept *a, struct serve_hs *h, int rc, const char *why)
{
    char text[192];
    snprintf(text, sizeof(text), "%s", why != NULL ? why : "");
    /* Said before the fd closes: whoever sees the close finds it logged. */
    if (a->ops->ended != NULL)
        a->ops->ended(a->owner, h->l, h->uid, rc, text);
    hs_free(a, h, 1);
}

struct session_cfg serve_session_cfg(const struct serve_settings *set, uint8_t version,
                                     void *owner, int index)
{
    return (struct session_cfg){
        .owner = owner,
        .index = index,
        .role = ROLE_SERVER,
        .version = version,
        .max_event = set->max_event_bytes,
        .unhealthy_ms = set->unhealthy_ms,
        .out_limit = (size_t)set->max_event_bytes * 2 + (1u << 20),
        .max_streams = set->max_streams,
        .notify_ready = 1,
    };
}

static void hs_start(struct serve_accept *a, struct serve_hs *h)
{
    struct session_cfg cfg = serve_session_cfg(h->set, h->hs.version, a->owner, a->started + 1);
    a->started = a->started == INT32_MAX ? 0 : a->started + 1;
    int fd = h->hs.fd;
    epoll_ctl(a->epfd, EPOLL_CTL_DEL, fd, NULL);
    struct pool_ref *pool = h->pool;
    struct region q = h->qregion;
    struct serve_listener *l = h->l;
    long long uid = h->uid;
    h->pool = NULL;
    region_init(&h->qregion);
    hs_free(a, h, 0);
    struct session *s;
    int rc = session_new(&cfg, fd, pool, &q, &s); /* takes fd, pool and q */
    if (rc < 0) {
        /* The peer changed its memory between the check before our ack and
         * this one (or we ran out of memory): the handshake failed after
         * all. */
        char why[160];
        snprintf(why, sizeof(why), "session setup failed: %s", shmipc_strerror(rc));
        if (a->ops->ended != NULL)
            a->ops->ended(a->owner, l, uid, rc, why);
        return;
    }
    a->ops->started(a->owner, l, uid, s);
}

void serve_accept_step(struct serve_accept *a, struct serve_hs *h)
{
    for (;;) {
        int rc = hs_server_step(&h->hs);
        if (rc == HS_MAP) {
            struct accept_limits lim = {h->set->allowed_dir, h->set->max_pool_bytes};
            int mrc = accept_map(&h->hs, a->reg, &lim, &h->pool, &h->qregion);
            hs_server_mapped(&h->hs, mrc == 0, mrc);
            continue;
        }
        if (rc == HS_DONE) {
            hs_start(a, h);
            return;
        }
        if (rc == HS_WANT_READ || rc == HS_WANT_WRITE) {
            struct epoll_event ev = {.events = rc == HS_WANT_READ ? EPOLLIN : EPOLLOUT,
                                     .data.ptr = &h->tag};
            epoll_ctl(a->epfd, EPOLL_CTL_MOD, h->hs.fd, &ev);
            return;
        }
        hs_end(a, h, rc < 0 ? rc : SHMIPC_EPROTO, h->hs.why[0] ? h->hs.why : shmipc_strerror(rc));
        return;
    }
}

void serve_accept_listener(struct serve_accept *a, struct serve_listener *l,
                           const struct serve_settings *set)
{
    for (;;) {
        int fd = sock_accept(l->fd);
        if (fd < 0) {
            if (fd != -EAGAIN && fd != -ECONNABORTED)
                log_warn("accept on %s: %s", l->addr.text, shmipc_strerror(fd));
            return;
        }
        long long uid = -1;
        char why[160] = "";
        if (a->ops->admit != NULL && a->ops->admit(a->owner, l, fd, &uid, why, sizeof(why)) < 0) {
            close(fd);
            continue;
        }
        struct serve_hs *h = calloc(1, sizeof(*h));
        if (h == NULL) {
            close(fd);
            if (a->ops->ended != NULL)
                a->ops->ended(a->owner, l, uid, -ENOMEM, "out of memory");
            continue;
        }
        h->tag.kind = SERVE_HANDSHAKE;
        h->l = l;
        h->set = set;
        h->uid = uid;
        region_init(&h->qregion);
        hs_server_init(&h->hs, fd, l->addr.family == AF_UNIX,
                       sock_deadline(set->handshake_timeout_ms));
        h->next = a->hs;
        a->hs = h;
        a->nhs++;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &h->tag};
        if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            hs_end(a, h, -errno, "epoll_ctl failed");
            continue;
        }
        serve_accept_step(a, h);
    }
}

int serve_accept_expire(struct serve_accept *a)
{
    uint64_t now = sock_now_ns(), next = UINT64_MAX;
    for (struct serve_hs *h = a->hs, *n; h != NULL; h = n) {
        n = h->next;
        if (h->hs.deadline_ns <= now)
            serve_accept_step(a, h); /* fails with SHMIPC_ETIMEDOUT */
        else if (h->hs.deadline_ns < next)
            next = h->hs.deadline_ns;
    }
    return next == UINT64_MAX ? 1000 : (int)((next - now) / 1000000 + 1);
}

void serve_accept_drop(struct serve_accept *a, const struct serve_listener *l)
{
    for (struct serve_hs *h = a->hs, *n; h != NULL; h = n) {
        n = h->next;
        if (l == NULL || h->l == l)
            hs_end(a, h, 0, "");
    }
}
