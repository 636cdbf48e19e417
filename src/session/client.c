/*
 * The client session manager: N sessions to one address sharing one pool,
 * an I/O thread that drives them (epoll, edge-triggered) while no caller
 * waits on them (a waiting caller reads its session itself: leader.c), a
 * pool of idle streams, and reconnection with exponential backoff done by
 * the caller that next needs the slot, so healthy sessions never wait for
 * it.
 *
 * Hot restart (PROTOCOL.md 8): a session told HotRestart retires. Its
 * slot gets a replacement session at once (by the I/O thread, or in the
 * event-loop style by the next poll or get), its idle streams are closed,
 * the streams callers still hold finish on it, and it acks by itself when
 * the last one is gone (session/io.h); the server then closes it. Retired
 * sessions wait on a list of their own until they are dead.
 *
 * Lock order: a slot's mutex, then the idle-list mutex is never held with
 * it; a session's mutex is taken inside either; pool_mu only around
 * picking the pool of a new session (inside a slot's mutex); retired_mu
 * inside a slot's mutex, never with a session's. The I/O thread holds one
 * reference on each session registered with it and drops it when it sees
 * the session dead.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "proto/handshake.h"
#include "proto/sock.h"
#include "session/session.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

struct client_slot {
    pthread_mutex_t mu;
    struct session *sess; /* NULL or the current one, maybe dead */
    unsigned index;
    unsigned generation;  /* connections made, for unique queue names */
    unsigned failures;
    uint64_t next_try_ns;
};

struct shmipc_client {
    struct shmipc_client_config cfg;
    struct sock_addr addr;
    char prefix[200];
    pthread_mutex_t pool_mu; /* pool, buffer_path, pool_gen */
    char buffer_path[256];
    struct pool_ref *pool;
    unsigned pool_gen; /* pools made again after a server removed the file */
    uint64_t pool_epoch; /* file mode: the hot restart the current pool was made for */
    struct client_slot *slots;
    unsigned nslots;
    unsigned rr; /* atomic */
    pthread_t io;
    int io_started;
    int epfd, evfd;
    int fd_taken;  /* shmipc_client_fd() was called: the caller may wait on it */
    int kick_need; /* atomic: FD_TAKEN once it was, plus the threads waiting in
                      shmipc_client_poll; > 0: deferred Pollings kick evfd */
    int stopping; /* atomic */
    pthread_mutex_t idle_mu;
    shmipc_stream **idle;
    unsigned nidle;
    pthread_mutex_t stats_mu;
    struct shmipc_stats gone;
    pthread_mutex_t reg_mu; /* sessions the I/O thread holds a reference on */
    struct session **reg;
    unsigned nreg, capreg;
    int hot_pending; /* atomic: a session was told HotRestart and is not retired yet */
    pthread_mutex_t retired_mu; /* sessions replaced after a HotRestart, until dead */
    struct session **retired;
    unsigned nretired, capretired; /* nretired: atomic reads outside the lock */
};

static void retire_all(struct shmipc_client *c);
static void sweep_retired(struct shmipc_client *c, int all);

static unsigned instances; /* per process, for unique default names */

void shmipc_client_config_init(struct shmipc_client_config *c)
{
    memset(c, 0, sizeof(*c));
    c->mode = SHMIPC_MODE_MEMFD;
    c->sessions = 1;
    c->pool_bytes = POOL_DEFAULT_SIZE;
    c->queue_cap = 8192;
    c->path_prefix = "/dev/shm/shmipc";
    c->connect_timeout_ms = 1000;
    c->max_event_bytes = 32u << 20;
    c->unhealthy_ms = 30000;
    c->queue_full_retries = 10;
    c->queue_full_wait_ms = 10;
    c->reconnect_min_ms = 50;
    c->reconnect_max_ms = 5000;
    c->idle_streams = 1024;
    /* On: it spins only while the peer answers sooner than a wake-up
     * (there it saved both latency and CPU per call), and otherwise costs
     * a probe of at most 10 us every 64 sleeps (see leader.c, README). */
    c->adaptive_spin = 1;
}

static int io_register(struct shmipc_client *c, struct session *s)
{
    pthread_mutex_lock(&c->reg_mu);
    if (c->nreg == c->capreg) {
        unsigned cap = c->capreg ? c->capreg * 2 : 8;
        struct session **r = realloc(c->reg, cap * sizeof(*r));
        if (r == NULL) {
            pthread_mutex_unlock(&c->reg_mu);
            return -ENOMEM;
        }
        c->reg = r;
        c->capreg = cap;
    }
    session_get(s);
    c->reg[c->nreg++] = s;
    pthread_mutex_unlock(&c->reg_mu);
    /* On failure it stays on the list: released with the client. */
    return session_watch(s, c->epfd, (epoll_data_t){.ptr = s});
}

/* Drops the I/O thread's reference on s (once). */
static void io_unregister(struct shmipc_client *c, struct session *s)
{
    int found = 0;
    pthread_mutex_lock(&c->reg_mu);
    for (unsigned i = 0; i < c->nreg; i++) {
        if (c->reg[i] == s) {
            c->reg[i] = c->reg[--c->nreg];
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&c->reg_mu);
    if (found) {
        session_unwatch(s);
        session_put(s);
    }
}

/* keepalive_ms: a Polling on every session we have not written to lately. */
static void keepalives(struct shmipc_client *c)
{
    uint64_t now = sock_now_ns(), limit = (uint64_t)c->cfg.keepalive_ms * 1000000u;
    pthread_mutex_lock(&c->reg_mu);
    for (unsigned i = 0; i < c->nreg; i++) {
        struct session *s = c->reg[i];
        uint64_t last = __atomic_load_n(&s->last_tx_ns, __ATOMIC_RELAXED);
        if (session_alive(s) && now > last && now - last >= limit)
            session_keepalive(s);
    }
    pthread_mutex_unlock(&c->reg_mu);
}

/* Sessions whose last reading caller left the I/O thread's watch off (see
 * leader.c) get it back when no caller read them since the last tick. */
/* A second: a thousand client processes ticking ten times as often cost a
 * quarter of their throughput on two CPUs. An idle session that was left
 * parked so hears a HotRestart within two seconds (a busy one at once:
 * its readers handle it). */
#define TICK_NS 1000000000ull

static void reader_ticks(struct shmipc_client *c)
{
    pthread_mutex_lock(&c->reg_mu);
    for (unsigned i = 0; i < c->nreg; i++)
        session_reader_tick(c->reg[i]);
    pthread_mutex_unlock(&c->reg_mu);
}

static void *io_main(void *arg)
{
    struct shmipc_client *c = arg;
    struct epoll_event evs[64];
    int ka = c->cfg.keepalive_ms;
    int timeout = ka > 0 && ka < 2000 ? ka / 2 + 1 : (int)(TICK_NS / 1000000u);
    uint64_t next_tick = sock_now_ns() + TICK_NS;
    while (!__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE)) {
        int n = epoll_wait(c->epfd, evs, 64, timeout);
        if (ka > 0)
            keepalives(c);
        uint64_t now = sock_now_ns();
        if (now >= next_tick) {
            reader_ticks(c);
            sweep_retired(c, 0);
            next_tick = now + TICK_NS;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t v;
                if (read(c->evfd, &v, sizeof(v)) < 0)
                    continue;
                continue;
            }
            struct session *s = evs[i].data.ptr;
            session_on_io(s);
            if (!session_alive(s)) {
                if (__atomic_load_n(&c->stopping, __ATOMIC_RELAXED) || s->err == SHMIPC_ECLOSED)
                    log_debug("session %d to %s ended: %s", s->index, c->addr.text, s->why);
                else
                    log_warn("session %d to %s ended: %s", s->index, c->addr.text, s->why);
                io_unregister(c, s);
            }
        }
        if (__atomic_load_n(&c->hot_pending, __ATOMIC_ACQUIRE))
            retire_all(c);
    }
    return NULL;
}

/* A session of ours was told HotRestart (its mutex held): the I/O thread,
 * or in the event-loop style the next poll or get, replaces it. */
static void on_hot_restart(void *owner)
{
    struct shmipc_client *c = owner;
    __atomic_store_n(&c->hot_pending, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (c->io_started && write(c->evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_warn("client: waking the I/O thread failed");
}

static int create_pool(struct shmipc_client *c)
{
    struct region r;
    region_init(&r);
    unsigned flags = c->cfg.prefault ? REGION_PREFAULT : 0;
    int rc;
    if (c->cfg.mode == SHMIPC_MODE_MEMFD) {
        char name[256];
        snprintf(name, sizeof(name), "%s_buffer", basename(c->prefix));
        rc = region_create_memfd(&r, name, c->cfg.pool_bytes, flags | REGION_SEAL);
    } else {
        rc = region_create_file(&r, c->buffer_path, c->cfg.pool_bytes,
                                flags | REGION_UNLINK_ON_CLOSE);
    }
    if (rc < 0)
        return rc;
    if (c->cfg.nclasses == 0)
        return pool_ref_new(&r, 1, pool_default_classes, 3, NULL, &c->pool);
    struct pool_class classes[8];
    for (unsigned i = 0; i < c->cfg.nclasses; i++)
        classes[i] = (struct pool_class){c->cfg.classes[i].slice_bytes, c->cfg.classes[i].percent};
    return pool_ref_new(&r, 1, classes, c->cfg.nclasses, NULL, &c->pool);
}

/* File mode: the pool new sessions use moves to a new file, `path`; the
 * old pool lives on for the sessions and messages that still use it.
 * pool_mu held. */
static int new_file_pool(struct shmipc_client *c, const char *path, const char *why)
{
    char old_path[sizeof(c->buffer_path)];
    memcpy(old_path, c->buffer_path, sizeof(old_path));
    struct pool_ref *old = c->pool;
    int rc = strlen(path) >= sizeof(c->buffer_path) ? -ENAMETOOLONG : 0;
    if (rc == 0) {
        snprintf(c->buffer_path, sizeof(c->buffer_path), "%s", path);
        rc = create_pool(c);
    }
    if (rc < 0) {
        memcpy(c->buffer_path, old_path, sizeof(old_path));
        c->pool = old;
        return rc;
    }
    c->pool_gen++;
    log_info("pool file %s: %s: new pool %s", old_path, why, c->buffer_path);
    pool_ref_put(old);
    return 0;
}

/* File mode: a server removes a pool file once the last session using it
 * has closed (Go's servers do, and ours), so a reconnect after that needs
 * a new pool in a new file. pool_mu held. */
static int file_pool_current(struct shmipc_client *c)
{
    struct stat st;
    const struct region *r = &c->pool->region;
    if (lstat(c->buffer_path, &st) == 0 && st.st_dev == r->dev && st.st_ino == r->ino)
        return 0;
    char path[300];
    snprintf(path, sizeof(path), "%s_buffer_r%u", c->prefix, c->pool_gen + 1);
    return new_file_pool(c, path, "gone (the server removed it)");
}

/* File mode, a hot restart: the old server removes the pool file once its
 * sessions are gone, while the new one may still map it; so the sessions
 * to the new server get a pool of their own, named as Go's clients name
 * theirs (_epoch_<epoch>_<n>). Once per epoch. */
static void file_pool_for_epoch(struct shmipc_client *c, uint64_t epoch)
{
    pthread_mutex_lock(&c->pool_mu);
    if (c->pool_epoch != epoch) {
        char path[300];
        snprintf(path, sizeof(path), "%s_epoch_%llu_%u_buffer", c->prefix,
                 (unsigned long long)epoch, c->pool_gen + 1);
        if (new_file_pool(c, path, "the server restarts") == 0)
            c->pool_epoch = epoch;
    }
    pthread_mutex_unlock(&c->pool_mu);
}

/* The pool a new session uses, with a reference for it; its path in bpath. */
static int take_pool(struct shmipc_client *c, struct pool_ref **pool, char *bpath, size_t len)
{
    pthread_mutex_lock(&c->pool_mu);
    int rc = c->cfg.mode == SHMIPC_MODE_FILE ? file_pool_current(c) : 0;
    if (rc == 0) {
        *pool = c->pool;
        pool_ref_get(*pool);
        snprintf(bpath, len, "%s", c->buffer_path);
    }
    pthread_mutex_unlock(&c->pool_mu);
    return rc;
}

static void drop_session(struct shmipc_client *c, struct client_slot *sl);

static int connect_slot(struct shmipc_client *c, struct client_slot *sl)
{
    uint64_t deadline = sock_deadline(c->cfg.connect_timeout_ms);
    char qpath[256];
    int n = sl->generation == 0
                ? snprintf(qpath, sizeof(qpath), "%s_queue_%u", c->prefix, sl->index)
                : snprintf(qpath, sizeof(qpath), "%s_queue_%u_r%u", c->prefix, sl->index,
                           sl->generation);
    if (n < 0 || (size_t)n >= sizeof(qpath))
        return -ENAMETOOLONG;
    sl->generation++;
    struct pool_ref *pool = NULL;
    char bpath[sizeof(c->buffer_path)];
    int rc = take_pool(c, &pool, bpath, sizeof(bpath));
    if (rc < 0)
        return rc;
    int fd = sock_connect(&c->addr, deadline);
    if (fd < 0) {
        pool_ref_put(pool);
        return fd;
    }
    struct region q;
    region_init(&q);
    size_t qsize = queue_pair_size(c->cfg.queue_cap);
    rc = c->cfg.mode == SHMIPC_MODE_MEMFD
             ? region_create_memfd(&q, basename(qpath), qsize, REGION_SEAL)
             : region_create_file(&q, qpath, qsize, REGION_UNLINK_ON_CLOSE);
    struct queue_pair qp;
    if (rc == 0)
        rc = queue_pair_create(&qp, q.base, q.size, c->cfg.queue_cap);
    uint8_t version = 0;
    if (rc == 0) {
        int memfd = c->cfg.mode == SHMIPC_MODE_MEMFD;
        rc = hs_client(fd, memfd ? HS_MEMFD : HS_FILE, memfd ? SHMIPC_PROTO_V3 : SHMIPC_PROTO_V2,
                       qpath, bpath, pool->region.fd, q.fd, deadline, &version);
    }
    if (rc < 0) {
        close(fd);
        region_close(&q);
        pool_ref_put(pool);
        return rc;
    }
    struct session_cfg scfg = {
        .role = ROLE_CLIENT,
        .version = version,
        .max_event = c->cfg.max_event_bytes,
        .unhealthy_ms = c->cfg.unhealthy_ms,
        .queue_full_retries = c->cfg.queue_full_retries,
        .queue_full_wait_ms = c->cfg.queue_full_wait_ms,
        .notify_ready = c->cfg.no_io_thread,
        .self_driven = c->cfg.no_io_thread,
        .defer_wakeups = c->cfg.no_io_thread && !c->cfg.eager_wakeups,
        .callers_read = !c->cfg.no_io_thread && !c->cfg.io_thread_reads,
        .adaptive_spin = !c->cfg.no_io_thread && !c->cfg.io_thread_reads &&
                         c->cfg.adaptive_spin > 0 && session_spin_allowed(),
        .spin_us = c->cfg.spin_us,
        .owner = c,
        .on_hot_restart = on_hot_restart,
        .index = (int)sl->index,
    };
    if (scfg.defer_wakeups) {
        scfg.kick_fd = c->evfd;
        scfg.kick_need = &c->kick_need;
    }
    /* The reading caller waits in a blocking read (leader.c); every other
     * read and write of the session says MSG_DONTWAIT. */
    int fl = scfg.callers_read ? fcntl(fd, F_GETFL) : -1, blocking = 0;
    if (fl >= 0) {
        blocking = fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0;
        if (!blocking)
            log_warn("session %u to %s: fcntl(fd=%d, F_SETFL): %s (its reader polls instead)",
                     sl->index, c->addr.text, fd, strerror(errno));
    }
    struct session *s;
    if ((rc = session_new(&scfg, fd, pool, &q, &s)) < 0)
        return rc; /* session_new took the pool reference */
    s->rd_blocking = blocking;
    sl->sess = s;
    if ((rc = io_register(c, s)) < 0) {
        drop_session(c, sl);
        return rc;
    }
    pthread_mutex_lock(&c->stats_mu);
    c->gone.sessions_opened++;
    pthread_mutex_unlock(&c->stats_mu);
    return 0;
}

/* Lets a dead session go, keeping its counters. Slot locked. */
static void drop_session(struct shmipc_client *c, struct client_slot *sl)
{
    struct session *s = sl->sess;
    if (s == NULL)
        return;
    sl->sess = NULL;
    session_die(s, SHMIPC_ECLOSED, "client closed the session");
    session_release_streams(s);
    pthread_mutex_lock(&c->stats_mu);
    session_add_stats(s, &c->gone);
    c->gone.sessions_closed++;
    if (s->err != SHMIPC_ECLOSED)
        c->gone.session_errors++;
    pthread_mutex_unlock(&c->stats_mu);
    session_put(s);
}

/* The slot's session was told HotRestart: it goes to the retired list
 * (with the slot's reference), alive for the streams still on it. Slot
 * locked. */
static void retire_slot(struct shmipc_client *c, struct client_slot *sl)
{
    struct session *s = sl->sess;
    pthread_mutex_lock(&c->retired_mu);
    if (c->nretired == c->capretired) {
        unsigned cap = c->capretired ? c->capretired * 2 : 4;
        struct session **r = realloc(c->retired, cap * sizeof(*r));
        if (r == NULL) {
            pthread_mutex_unlock(&c->retired_mu);
            return; /* drop_session() lets it go: its streams fail */
        }
        c->retired = r;
        c->capretired = cap;
    }
    c->retired[c->nretired] = s;
    __atomic_store_n(&c->nretired, c->nretired + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&c->retired_mu);
    sl->sess = NULL;
}

/* Lets retired sessions go: the dead ones, or all (closing the client). */
static void sweep_retired(struct shmipc_client *c, int all)
{
    if (__atomic_load_n(&c->nretired, __ATOMIC_ACQUIRE) == 0)
        return;
    for (;;) {
        struct session *s = NULL;
        pthread_mutex_lock(&c->retired_mu);
        for (unsigned i = 0; i < c->nretired; i++) {
            if (all || !session_alive(c->retired[i])) {
                s = c->retired[i];
                c->retired[i] = c->retired[c->nretired - 1];
                __atomic_store_n(&c->nretired, c->nretired - 1, __ATOMIC_RELEASE);
                break;
            }
        }
        pthread_mutex_unlock(&c->retired_mu);
        if (s == NULL)
            return;
        struct client_slot gone = {.sess = s};
        drop_session(c, &gone);
    }
}

static uint64_t backoff_ns(const struct shmipc_client *c, unsigned failures)
{
    uint64_t ms = (uint64_t)c->cfg.reconnect_min_ms;
    for (unsigned i = 1; i < failures && ms < (uint64_t)c->cfg.reconnect_max_ms; i++)
        ms *= 2;
    if (ms > (uint64_t)c->cfg.reconnect_max_ms)
        ms = (uint64_t)c->cfg.reconnect_max_ms;
    return ms * 1000000u;
}

/* Slot locked: makes sure it has a live session, reconnecting when the
 * backoff allows. */
static int ensure_slot(struct shmipc_client *c, struct client_slot *sl, int initial)
{
    int retiring = sl->sess != NULL && session_retiring(sl->sess);
    if (sl->sess != NULL && session_alive(sl->sess) && !retiring)
        return 0;
    if (retiring && c->cfg.mode == SHMIPC_MODE_FILE)
        file_pool_for_epoch(c, sl->sess->hot_epoch);
    if (retiring)
        retire_slot(c, sl); /* its replacement is due now, whatever the backoff */
    else if (!initial && sock_now_ns() < sl->next_try_ns)
        return SHMIPC_ENOSESSION;
    int was_connected = sl->sess != NULL || retiring;
    drop_session(c, sl);
    int rc = connect_slot(c, sl);
    if (rc < 0) {
        sl->failures++;
        sl->next_try_ns = sock_now_ns() + backoff_ns(c, sl->failures);
        log_warn("session %u to %s: connect failed (attempt %u): %s", sl->index, c->addr.text,
                 sl->failures, shmipc_strerror(rc));
        return rc;
    }
    sl->failures = 0;
    if (was_connected || !initial) {
        pthread_mutex_lock(&c->stats_mu);
        c->gone.reconnects++;
        pthread_mutex_unlock(&c->stats_mu);
    }
    return 0;
}

int shmipc_client_open(const struct shmipc_client_config *cfg, shmipc_client **out)
{
    struct shmipc_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->cfg = *cfg;
    c->epfd = c->evfd = -1;
    pthread_mutex_init(&c->idle_mu, NULL);
    pthread_mutex_init(&c->stats_mu, NULL);
    pthread_mutex_init(&c->pool_mu, NULL);
    pthread_mutex_init(&c->reg_mu, NULL);
    pthread_mutex_init(&c->retired_mu, NULL);
    unsigned inst = __atomic_fetch_add(&instances, 1, __ATOMIC_RELAXED);
    const char *pre = cfg->path_prefix ? cfg->path_prefix : "/dev/shm/shmipc";
    int n = inst == 0 ? snprintf(c->prefix, sizeof(c->prefix), "%s_%d", pre, (int)getpid())
                      : snprintf(c->prefix, sizeof(c->prefix), "%s_%d_%u", pre, (int)getpid(), inst);
    int rc = n < 0 || (size_t)n >= sizeof(c->prefix) ? -ENAMETOOLONG : 0;
    snprintf(c->buffer_path, sizeof(c->buffer_path), "%s_buffer", c->prefix);
    c->cfg.path_prefix = NULL;
    c->cfg.address = NULL;
    if (c->cfg.sessions == 0 || c->cfg.queue_cap == 0 || c->cfg.nclasses > 8)
        rc = -EINVAL;
    if (rc == 0)
        rc = sock_addr_parse(cfg->address, &c->addr);
    if (rc == 0 && c->cfg.mode == SHMIPC_MODE_MEMFD && c->addr.family != AF_UNIX)
        rc = -EINVAL; /* fds travel only over unix sockets */
    c->nslots = c->cfg.sessions;
    c->slots = calloc(c->nslots, sizeof(*c->slots));
    c->idle = calloc(c->cfg.idle_streams ? c->cfg.idle_streams : 1, sizeof(*c->idle));
    if (rc == 0 && (c->slots == NULL || c->idle == NULL))
        rc = -ENOMEM;
    for (unsigned i = 0; c->slots != NULL && i < c->nslots; i++) {
        pthread_mutex_init(&c->slots[i].mu, NULL);
        c->slots[i].index = i;
    }
    if (rc == 0)
        rc = create_pool(c);
    if (rc == 0) {
        c->epfd = epoll_create1(EPOLL_CLOEXEC);
        c->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (c->epfd < 0 || c->evfd < 0 || epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->evfd, &ev) < 0)
            rc = -errno;
    }
    if (rc == 0 && !c->cfg.no_io_thread && (rc = -pthread_create(&c->io, NULL, io_main, c)) == 0)
        c->io_started = 1;
    int live = 0, last = rc;
    for (unsigned i = 0; rc == 0 && i < c->nslots; i++) {
        pthread_mutex_lock(&c->slots[i].mu);
        int r = ensure_slot(c, &c->slots[i], 1);
        pthread_mutex_unlock(&c->slots[i].mu);
        live += r == 0;
        if (r < 0)
            last = r;
    }
    if (rc == 0 && live == 0)
        rc = last < 0 ? last : SHMIPC_ENOSESSION;
    if (rc < 0) {
        log_warn("shmipc client to %s: %s", cfg->address ? cfg->address : "(null)",
                 shmipc_strerror(rc));
        shmipc_client_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

static shmipc_stream *take_idle(struct shmipc_client *c)
{
    for (;;) {
        pthread_mutex_lock(&c->idle_mu);
        shmipc_stream *st = c->nidle ? c->idle[--c->nidle] : NULL;
        pthread_mutex_unlock(&c->idle_mu);
        if (st == NULL || stream_reusable(st))
            return st;
        shmipc_stream_close(st);
    }
}

/* Opens a stream on the slot's session; reconnects when it is dead, and
 * replaces it when a HotRestart came in between. */
static int open_on_slot(struct shmipc_client *c, struct client_slot *sl, shmipc_stream **out)
{
    int rc = SHMIPC_ERETIRED;
    for (int tries = 0; tries < 2 && rc == SHMIPC_ERETIRED; tries++) {
        rc = ensure_slot(c, sl, 0);
        if (rc == 0)
            rc = session_open_stream(sl->sess, out);
    }
    return rc;
}

/* An idle stream of a retired session, taken off the idle list, or NULL. */
static shmipc_stream *take_retired_idle(struct shmipc_client *c)
{
    shmipc_stream *st = NULL;
    pthread_mutex_lock(&c->idle_mu);
    for (unsigned i = 0; i < c->nidle; i++) {
        if (session_retiring(c->idle[i]->sess)) {
            st = c->idle[i];
            c->idle[i] = c->idle[--c->nidle];
            break;
        }
    }
    pthread_mutex_unlock(&c->idle_mu);
    return st;
}

/* After a HotRestart: every slot whose session was told gets its
 * replacement, idle streams on the retired sessions are closed (their
 * last one leaving sends the ack), and dead retired sessions go. */
static void retire_all(struct shmipc_client *c)
{
    if (!__atomic_exchange_n(&c->hot_pending, 0, __ATOMIC_ACQ_REL))
        return;
    for (unsigned i = 0; i < c->nslots; i++) {
        struct client_slot *sl = &c->slots[i];
        pthread_mutex_lock(&sl->mu);
        if (sl->sess != NULL && session_retiring(sl->sess) &&
            !__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE))
            ensure_slot(c, sl, 1);
        pthread_mutex_unlock(&sl->mu);
    }
    shmipc_stream *st;
    while ((st = take_retired_idle(c)) != NULL)
        shmipc_stream_close(st);
    sweep_retired(c, 0);
}

int shmipc_client_get(shmipc_client *c, shmipc_stream **out)
{
    if (__atomic_load_n(&c->hot_pending, __ATOMIC_ACQUIRE))
        retire_all(c);
    if ((*out = take_idle(c)) != NULL)
        return 0;
    int rc = SHMIPC_ENOSESSION;
    unsigned start = __atomic_fetch_add(&c->rr, 1, __ATOMIC_RELAXED);
    /* First pass skips slots another thread is reconnecting. */
    for (int pass = 0; pass < 2; pass++) {
        for (unsigned k = 0; k < c->nslots; k++) {
            struct client_slot *sl = &c->slots[(start + k) % c->nslots];
            if (pass == 0 ? pthread_mutex_trylock(&sl->mu) != 0 : pthread_mutex_lock(&sl->mu) != 0)
                continue;
            int r = open_on_slot(c, sl, out);
            pthread_mutex_unlock(&sl->mu);
            if (r == 0)
                return 0;
            if (rc == SHMIPC_ENOSESSION || r == SHMIPC_EUNHEALTHY)
                rc = r;
        }
    }
    return rc;
}

void shmipc_client_put(shmipc_client *c, shmipc_stream *st)
{
    if (st == NULL)
        return;
    if (stream_reusable(st)) {
        pthread_mutex_lock(&c->idle_mu);
        int kept = c->nidle < c->cfg.idle_streams;
        if (kept)
            c->idle[c->nidle++] = st;
        pthread_mutex_unlock(&c->idle_mu);
        if (kept)
            return;
    }
    shmipc_stream_close(st);
}

int shmipc_call(shmipc_stream *st, const void *req, size_t n, shmipc_msg *resp, int timeout_ms)
{
    return stream_call(st, req, n, resp, timeout_ms);
}

void shmipc_client_stats(shmipc_client *c, struct shmipc_stats *st)
{
    pthread_mutex_lock(&c->stats_mu);
    *st = c->gone;
    pthread_mutex_unlock(&c->stats_mu);
    for (unsigned i = 0; i < c->nslots; i++) {
        pthread_mutex_lock(&c->slots[i].mu);
        if (c->slots[i].sess != NULL)
            session_add_stats(c->slots[i].sess, st);
        pthread_mutex_unlock(&c->slots[i].mu);
    }
    pthread_mutex_lock(&c->retired_mu);
    for (unsigned i = 0; i < c->nretired; i++)
        session_add_stats(c->retired[i], st);
    pthread_mutex_unlock(&c->retired_mu);
}

#define FD_TAKEN (1 << 20)

int shmipc_client_fd(shmipc_client *c)
{
    /* Someone may wait on it instead of in our poll: deferred Pollings
     * make it readable from now on, and one owed already does now. */
    if (!__atomic_exchange_n(&c->fd_taken, 1, __ATOMIC_ACQ_REL)) {
        __atomic_add_fetch(&c->kick_need, FD_TAKEN, __ATOMIC_SEQ_CST);
        uint64_t one = 1;
        if (write(c->evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            log_warn("client: kicking the event fd failed");
    }
    return c->epfd;
}

static int collect_from(struct session *s, shmipc_stream **ready, int n, int max)
{
    shmipc_stream *st;
    while (n < max && s != NULL && (st = session_next_ready(s)) != NULL) {
        ready[n++] = st;
        stream_put(st); /* borrowed: the caller holds its own reference */
    }
    return n;
}

static int collect(struct shmipc_client *c, shmipc_stream **ready, int max)
{
    int n = 0;
    for (unsigned i = 0; i < c->nslots && n < max; i++) {
        struct client_slot *sl = &c->slots[i];
        pthread_mutex_lock(&sl->mu);
        n = collect_from(sl->sess, ready, n, max);
        pthread_mutex_unlock(&sl->mu);
    }
    if (__atomic_load_n(&c->nretired, __ATOMIC_ACQUIRE) > 0) {
        pthread_mutex_lock(&c->retired_mu);
        for (unsigned i = 0; i < c->nretired && n < max; i++)
            n = collect_from(c->retired[i], ready, n, max);
        pthread_mutex_unlock(&c->retired_mu);
    }
    return n;
}

enum slot_op { RING_WAKEUP, SPIN_HARVEST, SPIN_END };

/* Runs op on every connected session, each under its slot's lock. */
static void each_session(struct shmipc_client *c, enum slot_op op)
{
    for (unsigned i = 0; i < c->nslots; i++) {
        struct client_slot *sl = &c->slots[i];
        pthread_mutex_lock(&sl->mu);
        if (sl->sess != NULL) {
            if (op == RING_WAKEUP)
                session_ring_wakeup(sl->sess);
            else if (op == SPIN_HARVEST)
                session_spin_harvest(sl->sess);
            else
                session_spin_end(sl->sess);
        }
        pthread_mutex_unlock(&sl->mu);
    }
}

static void ring_all(struct shmipc_client *c)
{
    each_session(c, RING_WAKEUP);
}

/* Low-latency mode: poll every session's receive queue for spin_us before
 * sleeping, holding the working flags so the server skips its Polling.
 * The flags are let go (with the re-check) before returning, so a caller
 * that waits on shmipc_client_fd() instead is still woken. */
static int spin_collect(struct shmipc_client *c, shmipc_stream **ready, int max)
{
    uint64_t end = sock_now_ns() + (uint64_t)c->cfg.spin_us * 1000u;
    int n = 0;
    do {
        each_session(c, SPIN_HARVEST);
        if ((n = collect(c, ready, max)) > 0)
            break;
        for (int k = 0; k < 16; k++)
            cpu_relax();
    } while (sock_now_ns() < end);
    each_session(c, SPIN_END);
    return n + collect(c, ready + n, max - n);
}

int shmipc_client_poll(shmipc_client *c, shmipc_stream **ready, int max, int timeout_ms)
{
    if (!c->cfg.no_io_thread || max <= 0)
        return -EINVAL;
    /* Requests flushed while the last results were handled: one Polling
     * per session wakes the server for all of them. A thread that defers
     * one while we wait kicks us (counted before the ring, so either the
     * ring sees its Polling owed or it sees us waiting). */
    session_defer_wakeups(NULL);
    int waits = timeout_ms != 0;
    if (waits)
        __atomic_add_fetch(&c->kick_need, 1, __ATOMIC_SEQ_CST);
    ring_all(c);
    int n = collect(c, ready, max);
    if (n == 0 && waits && c->cfg.spin_us > 0)
        n = spin_collect(c, ready, max);
    struct epoll_event evs[64];
    int k = epoll_wait(c->epfd, evs, 64, n > 0 ? 0 : timeout_ms);
    int err = k < 0 && errno != EINTR ? -errno : 0;
    if (waits)
        __atomic_sub_fetch(&c->kick_need, 1, __ATOMIC_SEQ_CST);
    if (err < 0)
        return err;
    int kicked = 0;
    for (int i = 0; i < k; i++) {
        struct session *s = evs[i].data.ptr;
        if (s == NULL) { /* kicked: another thread owes a Polling */
            uint64_t v;
            if (read(c->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                return -errno;
            kicked = 1;
            continue;
        }
        session_on_io(s);
        if (!session_alive(s))
            io_unregister(c, s);
    }
    if (kicked)
        ring_all(c);
    if (__atomic_load_n(&c->hot_pending, __ATOMIC_ACQUIRE))
        retire_all(c);
    else
        sweep_retired(c, 0);
    n += collect(c, ready + n, max - n);
    if (n > 0)
        session_defer_wakeups(c);
    return n;
}

unsigned shmipc_client_live_sessions(shmipc_client *c)
{
    unsigned n = 0;
    for (unsigned i = 0; i < c->nslots; i++) {
        pthread_mutex_lock(&c->slots[i].mu);
        n += c->slots[i].sess != NULL && session_alive(c->slots[i].sess);
        pthread_mutex_unlock(&c->slots[i].mu);
    }
    return n;
}

void shmipc_client_close(shmipc_client *c)
{
    if (c == NULL)
        return;
    session_defer_wakeups(NULL);
    if (c->cfg.no_io_thread)
        ring_all(c); /* what was flushed last still reaches the server */
    while (c->nidle > 0)
        shmipc_stream_close(c->idle[--c->nidle]);
    for (unsigned i = 0; c->slots != NULL && i < c->nslots; i++) {
        pthread_mutex_lock(&c->slots[i].mu);
        if (c->slots[i].sess != NULL)
            session_die(c->slots[i].sess, SHMIPC_ECLOSED, "client closed");
        pthread_mutex_unlock(&c->slots[i].mu);
    }
    pthread_mutex_lock(&c->retired_mu);
    for (unsigned i = 0; i < c->nretired; i++)
        session_die(c->retired[i], SHMIPC_ECLOSED, "client closed");
    pthread_mutex_unlock(&c->retired_mu);
    if (c->io_started) {
        __atomic_store_n(&c->stopping, 1, __ATOMIC_RELEASE);
        uint64_t one = 1;
        if (write(c->evfd, &one, sizeof(one)) < 0)
            log_warn("waking the I/O thread failed");
        pthread_join(c->io, NULL);
    }
    /* The I/O thread has stopped: drop the references it still held. */
    while (c->nreg > 0)
        io_unregister(c, c->reg[c->nreg - 1]);
    for (unsigned i = 0; c->slots != NULL && i < c->nslots; i++) {
        drop_session(c, &c->slots[i]);
        pthread_mutex_destroy(&c->slots[i].mu);
    }
    sweep_retired(c, 1);
    free(c->retired);
    pthread_mutex_destroy(&c->retired_mu);
    if (c->pool != NULL)
        pool_ref_put(c->pool);
    if (c->epfd >= 0)
        close(c->epfd);
    if (c->evfd >= 0)
        close(c->evfd);
    free(c->slots);
    free(c->idle);
    free(c->reg);
    pthread_mutex_destroy(&c->reg_mu);
    pthread_mutex_destroy(&c->idle_mu);
    pthread_mutex_destroy(&c->stats_mu);
    pthread_mutex_destroy(&c->pool_mu);
    free(c);
}
