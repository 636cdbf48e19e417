/*
 * The library's server: one thread (the caller of shmipc_server_run) with
 * one epoll set holding its listener, the handshakes in progress and the
 * sessions. Handshakes and serving are the server core's (accept.h,
 * loop.h); what is here is the public API around them: the handlers, the
 * session limit, the counters, stop and close. Handlers run on this
 * thread and must not block.
 *
 * Ownership: the server owns its listener, handshakes and sessions; the
 * pool registry maps each client pool once (keyed by file identity) and
 * drops it with the last session or message that uses it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/log.h"
#include "session/accept.h"
#include "session/listener.h"
#include "session/loop.h"
#include "shmipc/errors.h"

enum { EP_STOP = SERVE_OWNER };

struct shmipc_server {
    struct shmipc_server_config cfg;
    char allowed_dir[256];
    struct serve_settings set;
    struct serve_listener l;
    struct shmipc_server_handlers h;
    void *arg;
    int epfd, stopfd;
    struct serve_tag ep_stop;
    struct serve_accept acc;
    struct serve_loop loop;
    int loop_ready;
    struct pool_registry reg;
    struct shmipc_stats gone; /* counters of sessions already closed */
    pthread_mutex_t stats_mu;
    int stop;
    int stop_asked;    /* atomic: shmipc_server_stop() rang */
    int hot;           /* atomic: HOT_ASKED, then HOT_RUNNING on the server's thread */
    uint64_t hot_epoch;
    int hot_drain_ms;
    uint64_t hot_deadline_ns;
};

enum { HOT_IDLE = 0, HOT_ASKED, HOT_RUNNING };

void shmipc_server_config_init(struct shmipc_server_config *c)
{
    struct serve_settings d;
    serve_settings_init(&d);
    memset(c, 0, sizeof(*c));
    c->socket_mode = 0660;
    c->allowed_dir = d.allowed_dir;
    c->handshake_timeout_ms = d.handshake_timeout_ms;
    c->max_event_bytes = d.max_event_bytes;
    c->max_pool_bytes = d.max_pool_bytes;
    c->max_sessions = 1024;
    c->unhealthy_ms = d.unhealthy_ms;
    c->listen_fd = -1;
    c->adaptive_spin = 1;
}

/* ---- the core's callbacks ---- */

static int on_admit(void *owner, struct serve_listener *l, int fd, long long *uid, char *why,
                    size_t whylen)
{
    struct shmipc_server *srv = owner;
    (void)fd;
    (void)uid;
    if (serve_loop_count(&srv->loop) + srv->acc.nhs < srv->cfg.max_sessions)
        return 0;
    snprintf(why, whylen, "%u sessions is the limit", srv->cfg.max_sessions);
    log_warn("refusing a connection on %s: %s", l->addr.text, why);
    return -EUSERS;
}

static void on_started(void *owner, struct serve_listener *l, long long uid, struct session *s)
{
    struct shmipc_server *srv = owner;
    (void)l;
    (void)uid;
    struct serve_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        session_release_streams(s);
        session_put(s);
        return;
    }
    c->s = s;
    pthread_mutex_lock(&srv->stats_mu);
    srv->gone.sessions_opened++;
    pthread_mutex_unlock(&srv->stats_mu);
    log_debug("session on fd %d: protocol version %u", s->fd, s->cfg.version);
    serve_loop_add(&srv->loop, c);
}

static void on_ended(void *owner, struct serve_listener *l, long long uid, int rc, const char *why)
{
    struct shmipc_server *srv = owner;
    (void)uid;
    if (rc == 0)
        return; /* dropped: the server closes */
    log_warn("handshake on %s refused: %s", l->addr.text, why);
    pthread_mutex_lock(&srv->stats_mu);
    srv->gone.handshakes_failed++;
    pthread_mutex_unlock(&srv->stats_mu);
}

static const struct serve_accept_ops accept_ops = {on_admit, on_started, on_ended};

static void h_open(void *ctx, struct serve_conn *c, shmipc_stream *st)
{
    struct shmipc_server *srv = ctx;
    (void)c;
    if (srv->h.on_stream != NULL)
        srv->h.on_stream(st, srv->arg);
}

static int h_message(void *ctx, struct serve_conn *c, shmipc_stream *st, shmipc_msg *m)
{
    struct shmipc_server *srv = ctx;
    (void)c;
    if (srv->h.on_message != NULL)
        srv->h.on_message(st, m, srv->arg);
    else
        shmipc_msg_release(m);
    return 0;
}

static void h_close(void *ctx, struct serve_conn *c, shmipc_stream *st)
{
    struct shmipc_server *srv = ctx;
    (void)c;
    if (srv->h.on_close != NULL)
        srv->h.on_close(st, srv->arg);
}

static void h_closed(void *ctx, struct serve_conn *c)
{
    struct shmipc_server *srv = ctx;
    struct session *s = c->s;
    pthread_mutex_lock(&srv->stats_mu);
    session_add_stats(s, &srv->gone);
    srv->gone.sessions_closed++;
    if (s->err != SHMIPC_ECLOSED)
        srv->gone.session_errors++;
    pthread_mutex_unlock(&srv->stats_mu);
    /* A session closed for anything but a plain hang-up is worth a line
     * saying why (the peer's fault or ours). */
    if (s->err == SHMIPC_ECLOSED)
        log_debug("session on fd %d closed: %s", s->fd, s->why);
    else
        log_info("session on fd %d closed: %s", s->fd, s->why);
    free(c);
}

static const struct serve_handler handler = {h_open, h_message, h_close, NULL, h_closed};

/* ---- the API ---- */

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
    serve_settings_init(&srv->set);
    srv->set.allowed_dir = srv->allowed_dir;
    srv->set.max_pool_bytes = c->max_pool_bytes;
    srv->set.handshake_timeout_ms = c->handshake_timeout_ms;
    srv->set.max_event_bytes = c->max_event_bytes;
    srv->set.unhealthy_ms = c->unhealthy_ms;
    srv->h = *h;
    srv->arg = arg;
    srv->l.fd = srv->epfd = srv->stopfd = -1;
    srv->ep_stop.kind = EP_STOP;
    pool_registry_init(&srv->reg);
    pthread_mutex_init(&srv->stats_mu, NULL);
    int rc = c->listen_fd >= 0 ? serve_listen_fd(&srv->l, c->address, c->listen_fd)
                               : serve_listen(&srv->l, c->address, c->socket_mode, 512);
    if (rc == 0) {
        srv->epfd = epoll_create1(EPOLL_CLOEXEC);
        srv->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (srv->epfd < 0 || srv->stopfd < 0)
            rc = -errno;
    }
    if (rc == 0) {
        serve_accept_init(&srv->acc, srv->epfd, &srv->reg, &accept_ops, srv);
        serve_loop_init(&srv->loop, srv->epfd, &handler, srv);
        srv->loop.adaptive = c->adaptive_spin > 0 && session_spin_allowed();
        srv->loop_ready = 1;
        struct epoll_event le = {.events = EPOLLIN, .data.ptr = &srv->l.tag};
        struct epoll_event se = {.events = EPOLLIN, .data.ptr = &srv->ep_stop};
        if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->l.fd, &le) < 0 ||
            epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->stopfd, &se) < 0)
            rc = -errno;
    }
    if (rc < 0) {
        log_error("shmipc server on %s: %s", c->address ? c->address : "(null)",
                  shmipc_strerror(rc));
        shmipc_server_close(srv);
        return rc;
    }
    log_info("listening on %s", srv->l.addr.text);
    *out = srv;
    return 0;
}

/* The hot restart starts (on the server's thread): no more accepting;
 * the socket file is the successor's now. */
static void hot_begin(struct shmipc_server *srv)
{
    srv->hot_deadline_ns = sock_deadline(srv->hot_drain_ms);
    if (srv->l.fd >= 0)
        epoll_ctl(srv->epfd, EPOLL_CTL_DEL, srv->l.fd, NULL);
    srv->l.ino = 0;
    serve_listener_close(&srv->l);
    __atomic_store_n(&srv->hot, HOT_RUNNING, __ATOMIC_RELEASE);
    log_info("hot restart (epoch %llu): %u sessions to hand over, for %d ms at most",
             (unsigned long long)srv->hot_epoch, serve_loop_count(&srv->loop), srv->hot_drain_ms);
}

/* A turn of the hot restart: 1 when it is over (every session closed, or
 * the drain deadline passed and what was left is closed). */
static int hot_turn(struct shmipc_server *srv)
{
    unsigned left = serve_loop_hot_restart(&srv->loop, srv->hot_epoch);
    if (left == 0 && srv->acc.nhs == 0) {
        log_info("hot restart (epoch %llu): every session handed over",
                 (unsigned long long)srv->hot_epoch);
        return 1;
    }
    if (sock_now_ns() < srv->hot_deadline_ns)
        return 0;
    log_warn("hot restart (epoch %llu): %u sessions did not ack within %d ms: closed", 
             (unsigned long long)srv->hot_epoch, left, srv->hot_drain_ms);
    serve_accept_drop(&srv->acc, NULL);
    serve_loop_drain(&srv->loop, sock_deadline(100));
    return 1;
}

int shmipc_server_run(shmipc_server *srv)
{
    struct epoll_event evs[64];
    int blocked = 0, spinning = 0;
    while (!srv->stop) {
        int hot = __atomic_load_n(&srv->hot, __ATOMIC_ACQUIRE) == HOT_RUNNING;
        if (hot && hot_turn(srv))
            break;
        int timeout = serve_accept_expire(&srv->acc);
        if (blocked && timeout > 1)
            timeout = 1; /* a client's queue was full: retry soon */
        if (hot && (timeout < 0 || timeout > 10))
            timeout = 10; /* a session that acked closes once quiet */
        if (spinning)
            timeout = 0; /* the spin goes on after a look at everything else */
        serve_loop_idle(&srv->loop);
        int n = epoll_wait(srv->epfd, evs, 64, timeout);
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0)
            serve_loop_awake(&srv->loop);
        for (int i = 0; i < n; i++) {
            struct serve_tag *t = evs[i].data.ptr;
            if (t->kind == SERVE_LISTENER) {
                serve_accept_listener(&srv->acc, &srv->l, &srv->set);
            } else if (t->kind == EP_STOP) {
                uint64_t v;
                if (read(srv->stopfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                    log_warn("server: reading its event fd: %s", strerror(errno));
                if (__atomic_load_n(&srv->stop_asked, __ATOMIC_ACQUIRE))
                    srv->stop = 1;
                if (__atomic_load_n(&srv->hot, __ATOMIC_ACQUIRE) == HOT_ASKED)
                    hot_begin(srv);
            } else if (t->kind == SERVE_HANDSHAKE) {
                serve_accept_step(&srv->acc, (struct serve_hs *)t);
            } else {
                serve_loop_ready(&srv->loop, (struct serve_conn *)t);
            }
        }
        if (n > 0 && srv->cfg.spin_us > 0)
            serve_loop_spin(&srv->loop, srv->cfg.spin_us, &srv->stop);
        else
            spinning = (n > 0 || spinning) && serve_loop_adaptive_spin(&srv->loop, &srv->stop);
        blocked = serve_loop_retry_blocked(&srv->loop);
    }
    return 0;
}

int shmipc_server_hot_restart(shmipc_server *srv, uint64_t epoch, int drain_ms)
{
    if (epoch == 0)
        return -EINVAL;
    int idle = HOT_IDLE;
    /* The epoch and drain are written before the state that publishes them. */
    if (__atomic_load_n(&srv->hot, __ATOMIC_ACQUIRE) != HOT_IDLE)
        return -EALREADY;
    srv->hot_epoch = epoch;
    srv->hot_drain_ms = drain_ms > 0 ? drain_ms : 0;
    if (!__atomic_compare_exchange_n(&srv->hot, &idle, HOT_ASKED, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return -EALREADY;
    uint64_t one = 1;
    ssize_t w = write(srv->stopfd, &one, sizeof(one));
    (void)w; /* a full eventfd is rung already */
    return 0;
}

int shmipc_server_listen_fd(shmipc_server *srv)
{
    return __atomic_load_n(&srv->hot, __ATOMIC_ACQUIRE) == HOT_RUNNING || srv->l.fd < 0 ? -EBADF
                                                                                      : srv->l.fd;
}

void shmipc_server_stop(shmipc_server *srv)
{
    __atomic_store_n(&srv->stop_asked, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    ssize_t w = write(srv->stopfd, &one, sizeof(one));
    (void)w; /* a full eventfd already means "stop" */
}

void shmipc_server_stats(shmipc_server *srv, struct shmipc_stats *st)
{
    pthread_mutex_lock(&srv->stats_mu);
    *st = srv->gone;
    pthread_mutex_unlock(&srv->stats_mu);
    pthread_mutex_lock(&srv->loop.mu);
    for (struct serve_conn *c = srv->loop.conns; c != NULL; c = c->next)
        session_add_stats(c->s, st);
    pthread_mutex_unlock(&srv->loop.mu);
}

void shmipc_server_close(shmipc_server *srv)
{
    if (srv == NULL)
        return;
    if (srv->loop_ready) {
        serve_accept_drop(&srv->acc, NULL);
        serve_loop_destroy(&srv->loop);
    }
    serve_listener_close(&srv->l);
    if (srv->epfd >= 0)
        close(srv->epfd);
    if (srv->stopfd >= 0)
        close(srv->stopfd);
    pthread_mutex_destroy(&srv->stats_mu);
    free(srv);
}
