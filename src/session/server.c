/*
 * The library's server: one thread (the caller of shmipc_server_run) with
 * one epoll set holding the listener, handshakes in progress and sessions.
 * Handshakes are non-blocking state machines with a deadline, so a client
 * that connects and stalls delays nobody. Handlers run on this thread and
 * must not block; a flush that meets a full queue is retried here.
 *
 * Ownership: the server owns its handshakes and sessions; the pool
 * registry maps each client pool once (keyed by file identity) and drops
 * it with the last session or message that uses it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/log.h"
#include "proto/handshake.h"
#include "proto/sock.h"
#include "session/accept.h"
#include "session/session.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"


enum ep_kind { EP_LISTEN, EP_STOP, EP_HS, EP_SESSION };

struct ep_item {
    enum ep_kind kind;
};

struct hs_conn {
    struct ep_item ep;
    struct hs_server hs;
    struct pool_ref *pool;
    struct region qregion;
    struct hs_conn *next;
};

struct srv_session {
    struct ep_item ep;
    struct session *s;
    struct srv_session *next;
};

struct shmipc_server {
    struct shmipc_server_config cfg;
    char allowed_dir[256];
    struct sock_addr addr;
    ino_t sock_ino;
    struct shmipc_server_handlers h;
    void *arg;
    int lfd, epfd, stopfd;
    struct ep_item ep_listen, ep_stop;
    struct hs_conn *hs;
    unsigned nhs;
    struct srv_session *ss;
    unsigned nsessions;
    struct pool_registry reg;
    struct shmipc_stats gone; /* counters of sessions already closed */
    pthread_mutex_t stats_mu;
    int stop;
};

void shmipc_server_config_init(struct shmipc_server_config *c)
{
    memset(c, 0, sizeof(*c));
    c->socket_mode = 0660;
    c->allowed_dir = "/dev/shm";
    c->handshake_timeout_ms = 1000;
    c->max_event_bytes = 32u << 20;
    c->max_pool_bytes = (size_t)1 << 30;
    c->max_sessions = 1024;
    c->unhealthy_ms = 30000;
}

static void on_session(struct shmipc_server *srv, struct srv_session *ss);

static int ep_add(struct shmipc_server *srv, int fd, uint32_t events, void *item)
{
    struct epoll_event ev = {.events = events, .data.ptr = item};
    return epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void ep_mod(struct shmipc_server *srv, int fd, uint32_t events, void *item)
{
    struct epoll_event ev = {.events = events, .data.ptr = item};
    epoll_ctl(srv->epfd, EPOLL_CTL_MOD, fd, &ev);
}

int shmipc_server_open(const struct shmipc_server_config *c, const struct shmipc_server_handlers *h,
                       void *arg, shmipc_server **out)
{
    struct shmipc_server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return -ENOMEM;
    srv->cfg = *c;
    snprintf(srv->allowed_dir, sizeof(srv->allowed_dir), "%s",
             c->allowed_dir ? c->allowed_dir : "/dev/shm");
    srv->cfg.allowed_dir = srv->allowed_dir;
    srv->cfg.address = NULL;
    srv->h = *h;
    srv->arg = arg;
    srv->lfd = srv->epfd = srv->stopfd = -1;
    srv->ep_listen.kind = EP_LISTEN;
    srv->ep_stop.kind = EP_STOP;
    pool_registry_init(&srv->reg);
    pthread_mutex_init(&srv->stats_mu, NULL);
    int rc = sock_addr_parse(c->address, &srv->addr);
    if (rc == 0 && (rc = sock_listen(&srv->addr, c->socket_mode, 512)) >= 0) {
        srv->lfd = rc;
        rc = 0;
    }
    if (rc == 0 && srv->addr.family == AF_UNIX) {
        struct stat st;
        if (stat(((struct sockaddr_un *)&srv->addr.ss)->sun_path, &st) == 0)
            srv->sock_ino = st.st_ino;
    }
    if (rc == 0) {
        srv->epfd = epoll_create1(EPOLL_CLOEXEC);
        srv->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (srv->epfd < 0 || srv->stopfd < 0)
            rc = -errno;
    }
    if (rc == 0 && (rc = ep_add(srv, srv->lfd, EPOLLIN, &srv->ep_listen)) == 0)
        rc = ep_add(srv, srv->stopfd, EPOLLIN, &srv->ep_stop);
    if (rc < 0) {
        log_error("shmipc server on %s: %s", c->address ? c->address : "(null)",
                  shmipc_strerror(rc));
        shmipc_server_close(srv);
        return rc;
    }
    log_info("listening on %s", srv->addr.text);
    *out = srv;
    return 0;
}

/* ---- handshakes ---- */

static void hs_free(struct shmipc_server *srv, struct hs_conn *c, int close_fd)
{
    struct hs_conn **pp = &srv->hs;
    while (*pp != c)
        pp = &(*pp)->next;
    *pp = c->next;
    srv->nhs--;
    if (close_fd) {
        epoll_ctl(srv->epfd, EPOLL_CTL_DEL, c->hs.fd, NULL);
        close(c->hs.fd);
    }
    hs_server_cleanup(&c->hs);
    if (c->pool != NULL)
        pool_ref_put(c->pool);
    region_close(&c->qregion);
    free(c);
}

static void start_session(struct shmipc_server *srv, struct hs_conn *c)
{
    struct srv_session *ss = calloc(1, sizeof(*ss));
    struct session_cfg cfg = {
        .role = ROLE_SERVER,
        .version = c->hs.version,
        .max_event = srv->cfg.max_event_bytes,
        .unhealthy_ms = srv->cfg.unhealthy_ms,
        .out_limit = (size_t)srv->cfg.max_event_bytes * 2 + (1u << 20),
        .max_streams = 65536,
        .notify_ready = 1,
    };
    int fd = c->hs.fd;
    epoll_ctl(srv->epfd, EPOLL_CTL_DEL, fd, NULL);
    struct pool_ref *pool = c->pool;
    c->pool = NULL;
    struct region q = c->qregion;
    region_init(&c->qregion);
    hs_free(srv, c, 0);
    if (ss == NULL) {
        close(fd);
        pool_ref_put(pool);
        region_close(&q);
        return;
    }
    int rc = session_new(&cfg, fd, pool, &q, &ss->s);
    if (rc == 0) {
        ss->ep.kind = EP_SESSION;
        ss->s->owner = srv;
        ss->s->index = (int)srv->nsessions;
        rc = session_watch(ss->s, srv->epfd, (epoll_data_t){.ptr = ss});
        if (rc < 0) {
            session_release_streams(ss->s);
            session_put(ss->s);
        }
    }
    if (rc < 0) {
        /* The peer changed its memory between the check before our ack and
         * this one (or we ran out of memory): the handshake failed after
         * all, and is counted as such. */
        log_warn("session setup failed: %s", shmipc_strerror(rc));
        pthread_mutex_lock(&srv->stats_mu);
        srv->gone.handshakes_failed++;
        pthread_mutex_unlock(&srv->stats_mu);
        free(ss);
        return;
    }
    ss->next = srv->ss;
    srv->ss = ss;
    srv->nsessions++;
    pthread_mutex_lock(&srv->stats_mu);
    srv->gone.sessions_opened++;
    pthread_mutex_unlock(&srv->stats_mu);
    log_debug("session on fd %d: protocol version %u", fd, cfg.version);
    /* Elements may have been queued before we registered (v2 sends at once):
     * take and answer them now, as for any readiness event. */
    on_session(srv, ss);
}

static void hs_fail(struct shmipc_server *srv, struct hs_conn *c, int rc)
{
    log_warn("handshake on fd %d refused: %s", c->hs.fd,
             c->hs.why[0] ? c->hs.why : shmipc_strerror(rc));
    pthread_mutex_lock(&srv->stats_mu);
    srv->gone.handshakes_failed++;
    pthread_mutex_unlock(&srv->stats_mu);
    hs_free(srv, c, 1);
}

static void hs_advance(struct shmipc_server *srv, struct hs_conn *c)
{
    for (;;) {
        int rc = hs_server_step(&c->hs);
        if (rc == HS_MAP) {
            struct accept_limits lim = {srv->allowed_dir, srv->cfg.max_pool_bytes};
            int mrc = accept_map(&c->hs, &srv->reg, &lim, &c->pool, &c->qregion);
            hs_server_mapped(&c->hs, mrc == 0, mrc);
            continue;
        }
        if (rc == HS_DONE) {
            start_session(srv, c);
            return;
        }
        if (rc == HS_WANT_READ || rc == HS_WANT_WRITE) {
            ep_mod(srv, c->hs.fd, rc == HS_WANT_READ ? EPOLLIN : EPOLLOUT, c);
            return;
        }
        hs_fail(srv, c, rc);
        return;
    }
}

static void on_accept(struct shmipc_server *srv)
{
    for (;;) {
        int fd = sock_accept(srv->lfd);
        if (fd < 0) {
            if (fd != -EAGAIN && fd != -ECONNABORTED)
                log_warn("accept on %s: %s", srv->addr.text, shmipc_strerror(fd));
            return;
        }
        if (srv->nsessions + srv->nhs >= srv->cfg.max_sessions) {
            log_warn("refusing a connection on %s: %u sessions is the limit", srv->addr.text,
                     srv->cfg.max_sessions);
            close(fd);
            continue;
        }
        struct hs_conn *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->ep.kind = EP_HS;
        region_init(&c->qregion);
        hs_server_init(&c->hs, fd, srv->addr.family == AF_UNIX,
                       sock_deadline(srv->cfg.handshake_timeout_ms));
        c->next = srv->hs;
        srv->hs = c;
        srv->nhs++;
        if (ep_add(srv, fd, EPOLLIN, c) < 0) {
            hs_free(srv, c, 1);
            continue;
        }
        hs_advance(srv, c);
    }
}

/* Handshakes past their deadline fail now. */
static int expire_handshakes(struct shmipc_server *srv)
{
    uint64_t now = sock_now_ns(), next = UINT64_MAX;
    struct hs_conn *c = srv->hs;
    while (c != NULL) {
        struct hs_conn *n = c->next;
        if (c->hs.deadline_ns <= now)
            hs_advance(srv, c); /* fails with SHMIPC_ETIMEDOUT */
        else if (c->hs.deadline_ns < next)
            next = c->hs.deadline_ns;
        c = n;
    }
    if (next == UINT64_MAX)
        return 1000;
    return (int)((next - now) / 1000000 + 1);
}

/* ---- sessions ---- */

static void dispatch(struct shmipc_server *srv, struct session *s)
{
    shmipc_stream *st;
    while ((st = session_next_ready(s)) != NULL) {
        stream_lent = st; /* for the handlers' calls below */
        if (!st->seen_open) {
            st->seen_open = 1;
            if (srv->h.on_stream)
                srv->h.on_stream(st, srv->arg);
        }
        shmipc_msg m;
        int closed = 0;
        while (stream_take(st, &m, &closed) == 0) {
            if (srv->h.on_message)
                srv->h.on_message(st, &m, srv->arg);
            else
                shmipc_msg_release(&m);
        }
        if (closed && !st->seen_close) {
            st->seen_close = 1;
            if (srv->h.on_close)
                srv->h.on_close(st, srv->arg);
            stream_forget(st);
        }
        stream_lent = NULL;
        stream_put(st); /* the ready list's reference */
    }
}

static void close_session(struct shmipc_server *srv, struct srv_session *ss)
{
    struct srv_session **pp = &srv->ss;
    while (*pp != ss)
        pp = &(*pp)->next;
    *pp = ss->next;
    srv->nsessions--;
    struct session *s = ss->s;
    session_unwatch(s);
    if (session_alive(s))
        session_die(s, SHMIPC_ECLOSED, "server closed the session");
    session_retry_blocked(s);
    dispatch(srv, s); /* on_close for every stream */
    session_release_streams(s);
    pthread_mutex_lock(&srv->stats_mu);
    session_add_stats(s, &srv->gone);
    srv->gone.sessions_closed++;
    if (s->err != SHMIPC_ECLOSED)
        srv->gone.session_errors++;
    pthread_mutex_unlock(&srv->stats_mu);
    /* As shmipcd's workers do: a session closed for anything but a plain
     * hang-up is worth a line saying why (the peer's fault or ours). */
    if (s->err == SHMIPC_ECLOSED)
        log_debug("session on fd %d closed: %s", s->fd, s->why);
    else
        log_info("session on fd %d closed: %s", s->fd, s->why);
    session_put(s);
    free(ss);
}

struct serve_ctx {
    struct shmipc_server *srv;
    struct session *s;
};

static void dispatch_cb(void *arg)
{
    struct serve_ctx *c = arg;
    dispatch(c->srv, c->s);
}

static void on_session(struct shmipc_server *srv, struct srv_session *ss)
{
    struct serve_ctx c = {srv, ss->s};
    if (!session_serve(ss->s, dispatch_cb, &c))
        close_session(srv, ss);
}

/* Low-latency mode: after work, poll every session's queue for spin_us
 * (holding the working flags, so clients skip their Polling) before going
 * back to sleep; new work restarts the window. */
static void spin(struct shmipc_server *srv)
{
    uint64_t window = (uint64_t)srv->cfg.spin_us * 1000u, end = sock_now_ns() + window;
    while (!srv->stop && sock_now_ns() < end) {
        int any = 0;
        for (struct srv_session *ss = srv->ss; ss != NULL; ss = ss->next) {
            if (session_spin_harvest(ss->s) > 0) {
                dispatch(srv, ss->s);
                any = 1;
            }
        }
        if (any)
            end = sock_now_ns() + window;
        else
            for (int i = 0; i < 16; i++)
                cpu_relax();
    }
    for (struct srv_session *ss = srv->ss; ss != NULL; ss = ss->next) {
        session_spin_end(ss->s);
        dispatch(srv, ss->s);
    }
}

static int retry_blocked(struct shmipc_server *srv)
{
    int any = 0;
    for (struct srv_session *ss = srv->ss; ss != NULL; ss = ss->next)
        if (ss->s->blocked != NULL)
            any |= session_retry_blocked(ss->s) > 0;
    return any;
}

int shmipc_server_run(shmipc_server *srv)
{
    struct epoll_event evs[64];
    int blocked = 0;
    while (!srv->stop) {
        int timeout = expire_handshakes(srv);
        if (blocked && timeout > 1)
            timeout = 1; /* a client's queue was full: retry soon */
        int n = epoll_wait(srv->epfd, evs, 64, timeout);
        if (n < 0 && errno != EINTR)
            return -errno;
        for (int i = 0; i < n; i++) {
            struct ep_item *it = evs[i].data.ptr;
            if (it->kind == EP_LISTEN) {
                on_accept(srv);
            } else if (it->kind == EP_STOP) {
                uint64_t v;
                if (read(srv->stopfd, &v, sizeof(v)) > 0)
                    srv->stop = 1;
            } else if (it->kind == EP_HS) {
                hs_advance(srv, (struct hs_conn *)it);
            } else {
                on_session(srv, (struct srv_session *)it);
            }
        }
        if (n > 0 && srv->cfg.spin_us > 0)
            spin(srv);
        blocked = retry_blocked(srv);
    }
    return 0;
}

void shmipc_server_stop(shmipc_server *srv)
{
    uint64_t one = 1;
    ssize_t w = write(srv->stopfd, &one, sizeof(one));
    (void)w; /* a full eventfd already means "stop" */
}

void shmipc_server_stats(shmipc_server *srv, struct shmipc_stats *st)
{
    pthread_mutex_lock(&srv->stats_mu);
    *st = srv->gone;
    pthread_mutex_unlock(&srv->stats_mu);
    for (struct srv_session *ss = srv->ss; ss != NULL; ss = ss->next)
        session_add_stats(ss->s, st);
}

void shmipc_server_close(shmipc_server *srv)
{
    if (srv == NULL)
        return;
    while (srv->hs != NULL)
        hs_free(srv, srv->hs, 1);
    while (srv->ss != NULL)
        close_session(srv, srv->ss);
    if (srv->lfd >= 0) {
        close(srv->lfd);
        if (srv->addr.family == AF_UNIX && srv->sock_ino != 0) {
            /* Remove our socket file, not one a successor bound since. */
            const char *path = ((struct sockaddr_un *)&srv->addr.ss)->sun_path;
            struct stat st;
            if (stat(path, &st) == 0 && st.st_ino == srv->sock_ino)
                unlink(path);
        }
    }
    if (srv->epfd >= 0)
        close(srv->epfd);
    if (srv->stopfd >= 0)
        close(srv->stopfd);
    pthread_mutex_destroy(&srv->stats_mu);
    free(srv);
}
