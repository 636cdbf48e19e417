/*
 * The session engine (see session.h): events in and out, the receive-queue
 * harvest, stream tables and pool references. The one rule: everything
 * the peer wrote (event bytes, queue elements, slice chains) is validated
 * here before a stream sees it, and a violation kills this session only.
 */
#include "session/session.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "proto/event.h"
#include "proto/sock.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

#define IN_START (64u << 10)
#define POLLING_LEN SHMIPC_EV_HEADER_LEN

/* ---- pool references ---- */

void pool_registry_init(struct pool_registry *r)
{
    pthread_mutex_init(&r->mu, NULL);
    r->head = NULL;
    r->count = 0;
}

struct pool_ref *pool_registry_find(struct pool_registry *r, dev_t dev, ino_t ino)
{
    pthread_mutex_lock(&r->mu);
    struct pool_ref *p = r->head;
    while (p != NULL && !(p->region.dev == dev && p->region.ino == ino))
        p = p->next;
    if (p != NULL)
        __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&r->mu);
    return p;
}

int pool_ref_new(struct region *rg, int creator, const struct pool_class *classes, unsigned n,
                 struct pool_registry *reg, struct pool_ref **out)
{
    struct pool_ref *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        region_close(rg);
        return -ENOMEM;
    }
    p->region = *rg;
    region_init(rg);
    int rc = creator ? pool_create(&p->pool, p->region.base, p->region.size, classes, n)
                     : pool_map(&p->pool, p->region.base, p->region.size);
    if (rc == 0 && (p->held = calloc((p->pool.total_slices + 63) / 64, sizeof(uint64_t))) == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        pool_cache_enable(&p->pool);
    if (rc < 0) {
        region_close(&p->region);
        free(p);
        return rc;
    }
    p->refs = 1;
    if (reg != NULL) {
        p->reg = reg;
        pthread_mutex_lock(&reg->mu);
        p->next = reg->head;
        reg->head = p;
        reg->count++;
        pthread_mutex_unlock(&reg->mu);
    }
    *out = p;
    return 0;
}

void pool_ref_get(struct pool_ref *p)
{
    __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
}

void pool_ref_put(struct pool_ref *p)
{
    struct pool_registry *reg = p->reg;
    if (reg != NULL) {
        /* Under the registry lock so a lookup never revives a dying pool. */
        pthread_mutex_lock(&reg->mu);
        if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) != 0) {
            pthread_mutex_unlock(&reg->mu);
            return;
        }
        struct pool_ref **pp = &reg->head;
        while (*pp != p)
            pp = &(*pp)->next;
        *pp = p->next;
        reg->count--;
        pthread_mutex_unlock(&reg->mu);
    } else if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    pool_cache_flush(&p->pool);
    region_close(&p->region);
    free(p->held);
    free(p);
}

/* Marks a received slice held; SHMIPC_ESLICEHELD if it already was. */
static int slice_hold(struct pool_ref *p, uint32_t off)
{
    int i = pool_slice_index(&p->pool, off);
    if (i < 0)
        return i;
    uint64_t bit = 1ull << (i % 64);
    uint64_t old = __atomic_fetch_or(&p->held[i / 64], bit, __ATOMIC_RELAXED);
    return old & bit ? SHMIPC_ESLICEHELD : 0;
}

static void slice_unhold(struct pool_ref *p, uint32_t off)
{
    int i = pool_slice_index(&p->pool, off);
    if (i >= 0)
        __atomic_fetch_and(&p->held[i / 64], ~(1ull << (i % 64)), __ATOMIC_RELAXED);
}

/* ---- sessions ---- */

int session_new(const struct session_cfg *cfg, int fd, struct pool_ref *pool,
                struct region *qregion, struct session **out)
{
    struct session *s = calloc(1, sizeof(*s));
    int rc = -ENOMEM;
    if (s == NULL)
        goto fail;
    s->cfg = *cfg;
    s->nbuckets = 256;
    s->table = calloc(s->nbuckets, sizeof(*s->table));
    s->in_cap = IN_START;
    s->in = malloc(s->in_cap);
    if (s->table == NULL || s->in == NULL)
        goto fail;
    rc = queue_pair_map(&s->qp, qregion->base, qregion->size, cfg->role == ROLE_SERVER);
    if (rc < 0)
        goto fail;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->out_cv, NULL);
    s->refs = 1;
    s->fd = fd;
    s->ep_fd = -1;
    s->kick_fd = -1;
    s->pool = pool;
    s->qregion = *qregion;
    region_init(qregion);
    s->next_id = 1;
    s->last_rx_ns = s->last_tx_ns = sock_now_ns();
    *out = s;
    return 0;
fail:
    if (s != NULL) {
        free(s->table);
        free(s->in);
        free(s);
    }
    close(fd);
    region_close(qregion);
    pool_ref_put(pool);
    return rc;
}

void session_get(struct session *s)
{
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
}

static void session_free(struct session *s)
{
    /* Streams hold references, so none is left in the table here. */
    free(s->table);
    free(s->in);
    free(s->out);
    close(s->fd);
    region_close(&s->qregion);
    pool_ref_put(s->pool);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->out_cv);
    free(s);
}

void session_put(struct session *s)
{
    if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0)
        session_free(s);
}

int session_alive(struct session *s)
{
    return !__atomic_load_n(&s->dead, __ATOMIC_ACQUIRE);
}

int session_unhealthy(struct session *s)
{
    uint64_t until = __atomic_load_n(&s->unhealthy_until_ns, __ATOMIC_RELAXED);
    return until != 0 && sock_now_ns() < until;
}

static void wake_all_locked(struct session *s)
{
    for (unsigned b = 0; b < s->nbuckets; b++)
        for (shmipc_stream *st = s->table[b]; st != NULL; st = st->hnext)
            pthread_cond_broadcast(&st->cv);
    pthread_cond_broadcast(&s->out_cv);
}

static void mark_ready_locked(struct session *s, shmipc_stream *st);
static int pump_locked(struct session *s);

void session_die_locked(struct session *s, int err, const char *why)
{
    if (s->dead)
        return;
    __atomic_store_n(&s->dead, 1, __ATOMIC_RELEASE);
    s->err = err;
    snprintf(s->why, sizeof(s->why), "%s", why);
    shutdown(s->fd, SHUT_RDWR); /* the driver sees a hang-up and lets go */
    wake_all_locked(s);
    if (s->cfg.notify_ready)
        for (unsigned b = 0; b < s->nbuckets; b++)
            for (shmipc_stream *st = s->table[b]; st != NULL; st = st->hnext)
                mark_ready_locked(s, st);
}

void session_die(struct session *s, int err, const char *why)
{
    pthread_mutex_lock(&s->mu);
    session_die_locked(s, err, why);
    pthread_mutex_unlock(&s->mu);
}

static int protocol_error(struct session *s, int err, const char *what)
{
    /* Once the peer shrank its memory under us, whatever looked wrong
     * (zeros where counters were) follows from that: say so. */
    if (region_tripped(&s->pool->region) || region_tripped(&s->qregion)) {
        err = SHMIPC_ECORRUPT;
        what = "peer truncated its shared memory";
    }
    char why[160];
    snprintf(why, sizeof(why), "%s: %s", what, shmipc_strerror(err));
    s->stats.protocol_errors++;
    log_warn("session %d (fd %d): closing: %s", s->index, s->fd, why);
    session_die_locked(s, err, why);
    return err;
}

/* ---- stream table ---- */

static unsigned bucket(const struct session *s, uint32_t id)
{
    return (id * 2654435761u) >> 8 & (s->nbuckets - 1);
}

static shmipc_stream *lookup_locked(struct session *s, uint32_t id)
{
    shmipc_stream *st = s->table[bucket(s, id)];
    while (st != NULL && st->id != id)
        st = st->hnext;
    return st;
}

static void grow_table_locked(struct session *s)
{
    unsigned n = s->nbuckets * 2;
    shmipc_stream **t = calloc(n, sizeof(*t));
    if (t == NULL)
        return; /* longer chains, still correct */
    shmipc_stream **old = s->table;
    unsigned oldn = s->nbuckets;
    s->table = t;
    s->nbuckets = n;
    for (unsigned b = 0; b < oldn; b++) {
        shmipc_stream *st = old[b];
        while (st != NULL) {
            shmipc_stream *next = st->hnext;
            unsigned k = bucket(s, st->id);
            st->hnext = t[k];
            t[k] = st;
            st = next;
        }
    }
    free(old);
}

static shmipc_stream *stream_new_locked(struct session *s, uint32_t id)
{
    shmipc_stream *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    st->sess = s;
    st->id = id;
    st->refs = 1; /* the table's */
    st->flags = ST_IN_TABLE;
    pthread_cond_init(&st->cv, NULL);
    pool_writer_init(&st->w, &s->pool->pool);
    session_get(s);
    if (s->nstreams >= s->nbuckets)
        grow_table_locked(s);
    unsigned k = bucket(s, id);
    st->hnext = s->table[k];
    s->table[k] = st;
    s->nstreams++;
    s->stats.streams_opened++;
    return st;
}

void stream_unlink_locked(struct session *s, shmipc_stream *st)
{
    if (!(st->flags & ST_IN_TABLE))
        return;
    shmipc_stream **pp = &s->table[bucket(s, st->id)];
    while (*pp != st)
        pp = &(*pp)->hnext;
    *pp = st->hnext;
    st->hnext = NULL;
    st->flags &= ~ST_IN_TABLE;
    s->nstreams--;
}

int session_open_stream(struct session *s, shmipc_stream **out)
{
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->dead)
        rc = s->err ? s->err : SHMIPC_ECLOSED;
    else if (session_unhealthy(s))
        rc = SHMIPC_EUNHEALTHY;
    else if (s->cfg.max_streams && s->nstreams >= s->cfg.max_streams)
        rc = -EMFILE;
    if (rc == 0) {
        uint32_t id;
        do
            id = ++s->next_id;
        while (id < 2 || lookup_locked(s, id) != NULL);
        shmipc_stream *st = stream_new_locked(s, id);
        if (st == NULL) {
            rc = -ENOMEM;
        } else {
            __atomic_add_fetch(&st->refs, 1, __ATOMIC_RELAXED); /* the caller's */
            *out = st;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- output ---- */

static int ep_update_locked(struct session *s, int want_out)
{
    if (s->ep_fd < 0 || s->ep_out == want_out)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (want_out ? EPOLLOUT : 0),
                             .data = s->ep_data};
    if (epoll_ctl(s->ep_fd, EPOLL_CTL_MOD, s->fd, &ev) < 0)
        return -errno;
    s->ep_out = want_out;
    return 0;
}

int session_watch(struct session *s, int epfd, epoll_data_t data)
{
    pthread_mutex_lock(&s->mu);
    int want_out = s->out_len > 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (want_out ? EPOLLOUT : 0),
                             .data = data};
    int rc = epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0 ? -errno : 0;
    if (rc == 0) {
        s->ep_fd = epfd;
        s->ep_data = data;
        s->ep_out = want_out;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void session_unwatch(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    if (s->ep_fd >= 0)
        epoll_ctl(s->ep_fd, EPOLL_CTL_DEL, s->fd, NULL);
    s->ep_fd = -1;
    pthread_mutex_unlock(&s->mu);
}

static int out_append(struct session *s, const uint8_t *p, size_t n)
{
    if (s->out_len + n > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 4096;
        while (cap < s->out_len + n)
            cap *= 2;
        uint8_t *b = realloc(s->out, cap);
        if (b == NULL)
            return -ENOMEM;
        s->out = b;
        s->out_cap = cap;
    }
    memcpy(s->out + s->out_len, p, n);
    s->out_len += n;
    int rc = ep_update_locked(s, 1);
    if (rc < 0)
        session_die_locked(s, rc, "watching the socket for writing failed");
    return rc;
}

/* Writes as much of the output buffer as the socket takes. */
static int flush_out_locked(struct session *s)
{
    size_t done = 0;
    while (done < s->out_len) {
        ssize_t w = send(s->fd, s->out + done, s->out_len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        int err = w < 0 ? -errno : SHMIPC_ECLOSED;
        session_die_locked(s, err, "write to the peer failed");
        return err;
    }
    memmove(s->out, s->out + done, s->out_len - done);
    s->out_len -= done;
    if (s->out_len == 0) {
        pthread_cond_broadcast(&s->out_cv);
        ep_update_locked(s, 0); /* failing leaves a harmless extra event */
    }
    return 0;
}

int session_send_locked(struct session *s, const void *ev, size_t evlen, const void *payload,
                        size_t plen)
{
    if (s->dead)
        return s->err ? s->err : SHMIPC_ECLOSED;
    __atomic_store_n(&s->last_tx_ns, sock_now_ns(), __ATOMIC_RELAXED);
    if (s->out_len == 0) {
        /* The common case: straight to the socket, nothing buffered. */
        struct iovec iov[2] = {{(void *)ev, evlen}, {(void *)payload, plen}};
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = plen ? 2 : 1};
        ssize_t w;
        do
            w = sendmsg(s->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (w < 0 && errno == EINTR);
        if (w < 0 && errno != EAGAIN) {
            int err = -errno;
            session_die_locked(s, err, "write to the peer failed");
            return err;
        }
        size_t sent = w < 0 ? 0 : (size_t)w;
        if (sent >= evlen + plen)
            return 0;
        if (sent < evlen) {
            if (out_append(s, (const uint8_t *)ev + sent, evlen - sent) < 0)
                return -ENOMEM;
            sent = 0;
        } else {
            sent -= evlen;
        }
        if (plen > sent && out_append(s, (const uint8_t *)payload + sent, plen - sent) < 0)
            return -ENOMEM;
    } else if (out_append(s, ev, evlen) < 0 || (plen && out_append(s, payload, plen) < 0)) {
        return -ENOMEM;
    }
    if (session_over_limit_locked(s, 0))
        return SHMIPC_EPROTO;
    return 0;
}

int session_over_limit_locked(struct session *s, size_t more)
{
    size_t held = s->out_len + __atomic_load_n(&s->fb_pending, __ATOMIC_RELAXED) + more;
    if (!s->cfg.out_limit || held <= s->cfg.out_limit)
        return 0;
    s->stats.protocol_errors++;
    session_die_locked(s, SHMIPC_EPROTO, "peer stopped reading: output limit reached");
    return 1;
}

static int ring_locked(struct session *s);

/* No other thread serves this session: wait for the socket here, and keep
 * reading while waiting so a peer that answers as it reads is not stuck
 * behind a full socket of its own. */
static int wait_output_self_locked(struct session *s, uint64_t deadline_ns)
{
    ring_locked(s); /* the peer may be waiting for it to read what we wait on */
    while (!s->dead && pump_locked(s) >= 0 && s->out_len > 0) {
        uint64_t now = sock_now_ns();
        if (now >= deadline_ns)
            return SHMIPC_ETIMEDOUT;
        uint64_t left_ms = (deadline_ns - now) / 1000000u + 1;
        struct pollfd pfd = {.fd = s->fd, .events = POLLOUT | POLLIN};
        if (session_throttled(s))
            pfd.events = POLLOUT; /* input waits for the caller to take what it has */
        pthread_mutex_unlock(&s->mu);
        int k = poll(&pfd, 1, left_ms > 1000 ? 1000 : (int)left_ms);
        pthread_mutex_lock(&s->mu);
        if (k < 0 && errno != EINTR) {
            session_die_locked(s, -errno, "poll failed");
            break;
        }
    }
    return s->dead ? (s->err ? s->err : SHMIPC_ECLOSED) : 0;
}

int session_wait_output_locked(struct session *s, uint64_t deadline_ns)
{
    if (s->cfg.self_driven)
        return wait_output_self_locked(s, deadline_ns);
    while (s->out_len > 0 && !s->dead) {
        uint64_t now = sock_now_ns();
        if (now >= deadline_ns)
            return SHMIPC_ETIMEDOUT;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t left = deadline_ns - now;
        if (left > 1000000000ull)
            left = 1000000000ull;
        ts.tv_nsec += (long)(left % 1000000000ull);
        ts.tv_sec += (time_t)(left / 1000000000ull) + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->out_cv, &s->mu, &ts);
    }
    return s->dead ? (s->err ? s->err : SHMIPC_ECLOSED) : 0;
}

/* A Polling that cannot even be buffered leaves a peer asleep on what we
 * queued: the session is not usable any more. */
static int send_polling_locked(struct session *s)
{
    uint8_t ev[POLLING_LEN];
    ev_encode_simple(ev, sizeof(ev), s->cfg.version, SHMIPC_EV_POLLING);
    s->stats.wakeups_sent++;
    int rc = session_send_locked(s, ev, sizeof(ev), NULL, 0);
    if (rc < 0 && !s->dead)
        session_die_locked(s, rc, "could not send a wake-up");
    return rc;
}

/* ---- deferred wake-ups ----
 * The thread handling an owner's poll results owes Pollings for the
 * sessions it queued on; it keeps them (with a reference) in a list of
 * its own and sends them when it polls again, turns to another owner or
 * ends. Meanwhile a message another thread queues on such a session sends
 * the owed Polling at once, and a thread blocked in the owner's poll (or
 * a caller watching its fd) is kicked through kick_fd. */
#define OWED_MAX 64

struct owed_list {
    struct session *s[OWED_MAX];
    unsigned n;
    int keyed;
};

static _Thread_local struct owed_list owed;
static _Thread_local const void *wake_defer_owner;
static _Thread_local char wake_me; /* its address names this thread */
static pthread_key_t owed_key;
static pthread_once_t owed_once = PTHREAD_ONCE_INIT;

static void owed_flush(struct owed_list *l)
{
    while (l->n > 0) {
        struct session *s = l->s[--l->n];
        session_ring_wakeup(s);
        session_put(s);
    }
}

static void owed_exit(void *arg)
{
    owed_flush(arg);
}

static void owed_key_init(void)
{
    pthread_key_create(&owed_key, owed_exit);
}

/* Keeps s on this thread's list; 0 when the list is full. */
static int owed_add(struct session *s)
{
    for (unsigned i = 0; i < owed.n; i++)
        if (owed.s[i] == s)
            return 1;
    if (owed.n == OWED_MAX)
        return 0;
    if (!owed.keyed) {
        pthread_once(&owed_once, owed_key_init);
        pthread_setspecific(owed_key, &owed);
        owed.keyed = 1;
    }
    session_get(s);
    owed.s[owed.n++] = s;
    return 1;
}

void session_defer_wakeups(const void *owner)
{
    if (owner == NULL || owner != wake_defer_owner)
        owed_flush(&owed);
    wake_defer_owner = owner;
}

static int ring_locked(struct session *s)
{
    if (!__atomic_load_n(&s->wake_owed, __ATOMIC_RELAXED))
        return 0;
    __atomic_store_n(&s->wake_owed, 0, __ATOMIC_RELAXED);
    s->wake_deferred = 0;
    s->wake_thread = NULL;
    return send_polling_locked(s);
}

int session_ring_wakeup(struct session *s)
{
    if (!__atomic_load_n(&s->wake_owed, __ATOMIC_RELAXED))
        return 0;
    pthread_mutex_lock(&s->mu);
    int rc = s->dead ? 0 : ring_locked(s);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* After a message was queued: the peer needs a Polling if it was idle
 * (its working flag clear, which we now set for it). */
static int wake_peer_locked(struct session *s)
{
    if (!queue_mark_working(&s->qp.send)) {
        if (!__atomic_load_n(&s->wake_owed, __ATOMIC_RELAXED))
            return 0;
        /* Owed by another thread, which may be long in coming back; or
         * enough waiting: start the peer on them. */
        if (s->wake_thread != &wake_me || ++s->wake_deferred >= WAKE_DEFER_MAX)
            return ring_locked(s);
        return 0;
    }
    if (s->cfg.defer_wakeups && s->owner != NULL && s->owner == wake_defer_owner &&
        owed_add(s)) {
        __atomic_store_n(&s->wake_owed, 1, __ATOMIC_RELAXED);
        s->wake_deferred = 1;
        s->wake_thread = &wake_me;
        uint64_t one = 1;
        if (s->kick_need != NULL && __atomic_load_n(s->kick_need, __ATOMIC_SEQ_CST) > 0 &&
            write(s->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            return ring_locked(s);
        return 0;
    }
    return send_polling_locked(s);
}

int session_keepalive(struct session *s)
{
    /* A Polling on an empty queue is harmless to every peer, so it serves
     * as a ping that needs nothing new on the wire. */
    pthread_mutex_lock(&s->mu);
    uint8_t ev[POLLING_LEN];
    ev_encode_simple(ev, sizeof(ev), s->cfg.version, SHMIPC_EV_POLLING);
    int rc = session_send_locked(s, ev, sizeof(ev), NULL, 0);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int session_put_elem_locked(struct session *s, const struct shmipc_queue_elem *e)
{
    int tries = s->cfg.role == ROLE_CLIENT ? s->cfg.queue_full_retries : 0;
    for (;;) {
        if (s->dead)
            return s->err ? s->err : SHMIPC_ECLOSED;
        shm_tsan_release(s->pool);
        int rc = queue_put(&s->qp.send, e);
        if (rc == 0) {
            /* Queued: the peer will take it. A wake-up that failed killed
             * the session, which the next call reports. */
            wake_peer_locked(s);
            return 0;
        }
        if (rc == SHMIPC_ECORRUPT)
            return protocol_error(s, rc, "send queue head out of range");
        s->stats.queue_full++;
        /* Make sure the peer is awake to drain what is queued. */
        ring_locked(s);
        if (queue_mark_working(&s->qp.send))
            send_polling_locked(s);
        if (tries-- <= 0)
            return SHMIPC_EQFULL;
        pthread_mutex_unlock(&s->mu);
        struct timespec ts = {0, (long)s->cfg.queue_full_wait_ms * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&s->mu);
    }
}

/* ---- input ---- */

/* Received messages come and go at the message rate: each thread keeps
 * the ones it freed (up to RX_CACHE_MAX) for the next ones it receives,
 * which also spares the allocator a burst of frees after a batch. The
 * cache is freed when its thread ends. */
#define RX_CACHE_MAX 256

struct rx_cache {
    struct rx_msg *head;
    unsigned n;
};

static __thread struct rx_cache rx_cache;
static pthread_key_t rx_cache_key;
static pthread_once_t rx_cache_once = PTHREAD_ONCE_INIT;

static void rx_cache_drop(void *arg)
{
    struct rx_cache *c = arg;
    while (c->head != NULL) {
        struct rx_msg *m = c->head;
        c->head = m->next;
        free(m);
    }
    c->n = 0;
}

static void rx_cache_key_init(void)
{
    pthread_key_create(&rx_cache_key, rx_cache_drop);
}

static struct rx_msg *rx_msg_new(void)
{
    struct rx_msg *m = rx_cache.head;
    if (m == NULL)
        return calloc(1, sizeof(*m));
    rx_cache.head = m->next;
    rx_cache.n--;
    memset(m, 0, sizeof(*m));
    return m;
}

static void rx_msg_recycle(struct rx_msg *m)
{
    if (rx_cache.n >= RX_CACHE_MAX) {
        free(m);
        return;
    }
    if (rx_cache.n == 0 && rx_cache.head == NULL) {
        /* First use in this thread: have the cache freed at its end. */
        pthread_once(&rx_cache_once, rx_cache_key_init);
        pthread_setspecific(rx_cache_key, &rx_cache);
    }
    m->next = rx_cache.head;
    rx_cache.head = m;
    rx_cache.n++;
}

void rx_msg_unhold(struct rx_msg *m)
{
    for (uint32_t i = 0; m->pool != NULL && i < m->nseg; i++)
        slice_unhold(m->pool, m->offs[i]);
}

void rx_msg_free(struct rx_msg *m)
{
    if (m->pool != NULL) {
        rx_msg_unhold(m);
        pool_give_many(&m->pool->pool, m->offs, m->nseg);
        pool_ref_put(m->pool);
    }
    rx_msg_drop(m);
}

void rx_msg_drop(struct rx_msg *m)
{
    if (m->iov != m->iov_inline)
        free(m->iov);
    if (m->offs != m->offs_inline)
        free(m->offs);
    free(m->heap);
    rx_msg_recycle(m);
}

static void mark_ready_locked(struct session *s, shmipc_stream *st)
{
    if (!s->cfg.notify_ready || (st->flags & ST_READY))
        return;
    st->flags |= ST_READY;
    __atomic_add_fetch(&st->refs, 1, __ATOMIC_RELAXED); /* the ready list's */
    st->rnext = NULL;
    if (s->ready_tail != NULL)
        s->ready_tail->rnext = st;
    else
        s->ready_head = st;
    s->ready_tail = st;
}

size_t rx_msg_heap_cost(const struct rx_msg *m)
{
    /* Pool messages cost the peer's pool, which bounds them; a fallback
     * message is a heap copy. */
    return m->pool == NULL ? sizeof(*m) + m->len : 0;
}

static void deliver_locked(struct session *s, shmipc_stream *st, struct rx_msg *m)
{
    __atomic_add_fetch(&s->rx_heap, rx_msg_heap_cost(m), __ATOMIC_RELAXED);
    m->next = NULL;
    if (st->rx_tail != NULL)
        st->rx_tail->next = m;
    else
        st->rx_head = m;
    st->rx_tail = m;
    st->rx_count++;
    s->stats.messages_received++;
    s->stats.bytes_received += m->len;
    pthread_cond_broadcast(&st->cv);
    mark_ready_locked(s, st);
}

static void remote_close_locked(struct session *s, shmipc_stream *st)
{
    st->flags |= ST_REMOTE_CLOSED;
    pthread_cond_broadcast(&st->cv);
    mark_ready_locked(s, st);
}

/* Finds the stream an incoming message or close belongs to; a server
 * opens it implicitly on its first open-status message. */
static shmipc_stream *stream_for_locked(struct session *s, uint32_t id, int opening)
{
    shmipc_stream *st = lookup_locked(s, id);
    if (st != NULL || !opening || s->cfg.role != ROLE_SERVER)
        return st;
    if (s->cfg.max_streams && s->nstreams >= s->cfg.max_streams) {
        protocol_error(s, -EMFILE, "peer opened more streams than allowed");
        return NULL;
    }
    return stream_new_locked(s, id);
}

/* Snapshots a peer's chain into a message: every slice checked once, and
 * only the checked copy used afterwards. */
static int chain_to_msg(struct session *s, uint32_t first, struct rx_msg **out)
{
    shm_tsan_acquire(s->pool);
    struct pool *p = &s->pool->pool;
    struct rx_msg *m = rx_msg_new();
    if (m == NULL)
        return -ENOMEM;
    m->iov = m->iov_inline;
    m->offs = m->offs_inline;
    uint32_t cap = RX_INLINE_SEGS;
    struct pool_walk w;
    struct pool_seg seg;
    int rc;
    uint64_t total = 0;
    pool_walk_init(&w, p, first);
    while ((rc = pool_walk_next(&w, &seg)) > 0) {
        if (m->nseg == cap) {
            cap *= 2;
            struct shmipc_iov *iov = malloc(cap * sizeof(*iov));
            uint32_t *offs = malloc(cap * sizeof(*offs));
            if (iov == NULL || offs == NULL) {
                free(iov);
                free(offs);
                rc = -ENOMEM;
                break;
            }
            memcpy(iov, m->iov, m->nseg * sizeof(*iov));
            memcpy(offs, m->offs, m->nseg * sizeof(*offs));
            if (m->iov != m->iov_inline)
                free(m->iov);
            if (m->offs != m->offs_inline)
                free(m->offs);
            m->iov = iov;
            m->offs = offs;
        }
        /* A slice of a message not yet released, published again (or
         * twice in this chain): the peer frees what we are reading. */
        if ((rc = slice_hold(s->pool, seg.off)) < 0) {
            for (uint32_t i = 0; rc == SHMIPC_ESLICEHELD && i < m->nseg; i++)
                if (m->offs[i] == seg.off)
                    rc = SHMIPC_ECHAINLOOP; /* held by this very chain */
            break;
        }
        if (seg.reused)
            pool_adopt(p, seg.off); /* held: no other message has it */
        m->iov[m->nseg] = (struct shmipc_iov){seg.data, seg.len};
        m->offs[m->nseg++] = seg.off;
        total += seg.len;
    }
    if (rc == 0 && total > UINT32_MAX)
        rc = SHMIPC_EBADSLICE;
    if (rc < 0) {
        /* Nothing of a bad chain is freed: its links cannot be trusted.
         * What this chain marked held is unmarked; a slice found held
         * already stays with the message that holds it. */
        for (uint32_t i = 0; i < m->nseg; i++)
            slice_unhold(s->pool, m->offs[i]);
        m->nseg = 0;
        rx_msg_free(m);
        return rc;
    }
    m->len = (uint32_t)total;
    m->pool = s->pool;
    pool_ref_get(s->pool);
    *out = m;
    return 0;
}

static int on_elem_locked(struct session *s, const struct shmipc_queue_elem *e)
{
    uint32_t status = e->status & 0xff;
    if (status == SHMIPC_STREAM_CLOSED) {
        shmipc_stream *st = lookup_locked(s, e->stream_id);
        if (st != NULL)
            remote_close_locked(s, st);
        return 0; /* unknown id: ignored, as the peers do */
    }
    if (status != SHMIPC_STREAM_OPEN)
        return protocol_error(s, SHMIPC_EPROTO, "queue element with an unknown status");
    struct rx_msg *m;
    int rc = chain_to_msg(s, e->offset, &m);
    if (rc < 0)
        return protocol_error(s, rc, "bad slice chain in a queue element");
    shmipc_stream *st = stream_for_locked(s, e->stream_id, 1);
    if (st == NULL || (st->flags & ST_REMOTE_CLOSED)) {
        rx_msg_free(m); /* a stream we do not know: give the slices back */
        return s->dead ? s->err : 0;
    }
    deliver_locked(s, st, m);
    return 0;
}

#define HARVEST_BATCH 32

/* Takes every element queued (a batch at a time: the head is published
 * once per batch); *n counts them. 0 or the error that closed the session. */
static int drain_locked(struct session *s, int *n)
{
    struct shmipc_queue_elem e[HARVEST_BATCH];
    int k;
    while ((k = queue_pop_many(&s->qp.recv, e, HARVEST_BATCH)) > 0) {
        *n += k;
        for (int i = 0; i < k; i++) {
            int rc = on_elem_locked(s, &e[i]);
            if (rc < 0)
                return rc;
        }
    }
    return k < 0 ? protocol_error(s, k, "receive queue tail out of range") : 0;
}

static int harvest_locked(struct session *s)
{
    /* While a spinner holds the working flag it stays set: the spinner
     * clears it (with the re-check) when it stops. */
    int keep_flag = s->spinning, n = 0;
    do {
        int rc = drain_locked(s, &n);
        if (rc < 0)
            return rc;
    } while (!keep_flag && !queue_mark_not_working(&s->qp.recv));
    return 0;
}

int session_spin_harvest(struct session *s)
{
    int n = 0;
    if (queue_len(&s->qp.recv) == 0 && __atomic_load_n(&s->spinning, __ATOMIC_RELAXED))
        return 0; /* the common idle case: two loads, no lock */
    pthread_mutex_lock(&s->mu);
    if (!s->dead) {
        /* Claim the flag: a producer that finds it set skips its Polling,
         * which is the point of spinning. */
        if (!s->spinning) {
            __atomic_store_n((uint32_t *)(s->qp.recv.hdr + SHMIPC_QUEUE_OFF_WORKING), 1,
                             __ATOMIC_SEQ_CST);
            __atomic_store_n(&s->spinning, 1, __ATOMIC_RELAXED);
        }
        drain_locked(s, &n);
        if (n > 0)
            __atomic_store_n(&s->last_rx_ns, sock_now_ns(), __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Rounds of work taken without going back to the event loop. */
#define SERVE_ROUNDS 8

int session_serve(struct session *s, void (*dispatch)(void *arg), void *arg)
{
    do {
        session_spin_harvest(s); /* claims the working flag */
        session_on_io(s);
        dispatch(arg);
        for (int i = 0; i < SERVE_ROUNDS && session_spin_harvest(s) > 0; i++)
            dispatch(arg);
        session_spin_end(s); /* releases the flag, re-checking the queue */
        dispatch(arg);
    } while (session_alive(s) && session_throttled(s));
    return session_alive(s);
}

void session_spin_end(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    if (s->spinning) {
        __atomic_store_n(&s->spinning, 0, __ATOMIC_RELAXED);
        if (!s->dead)
            harvest_locked(s); /* now clears the flag, re-checking the queue */
    }
    pthread_mutex_unlock(&s->mu);
}

static int on_fallback_locked(struct session *s, const uint8_t *ev, uint32_t len)
{
    struct ev_fallback fb;
    int rc = ev_decode_fallback(ev, len, &fb);
    if (rc < 0)
        return protocol_error(s, rc, "malformed FallbackData");
    uint32_t status = fb.status & 0xff;
    if (status > SHMIPC_STREAM_CLOSED)
        return protocol_error(s, SHMIPC_EPROTO, "FallbackData with an unknown status");
    s->stats.fallbacks_received++;
    shmipc_stream *st = stream_for_locked(s, fb.stream_id, status == SHMIPC_STREAM_OPEN);
    if (st == NULL)
        return s->dead ? s->err : 0;
    if (fb.payload_len > 0 || status == SHMIPC_STREAM_OPEN) {
        struct rx_msg *m = rx_msg_new();
        uint8_t *copy = malloc(fb.payload_len ? fb.payload_len : 1);
        if (m == NULL || copy == NULL) {
            free(m);
            free(copy);
            return protocol_error(s, -ENOMEM, "no memory for FallbackData");
        }
        memcpy(copy, fb.payload, fb.payload_len);
        m->heap = copy;
        m->len = fb.payload_len;
        m->nseg = 1;
        m->iov = m->iov_inline;
        m->offs = m->offs_inline;
        m->iov[0] = (struct shmipc_iov){copy, fb.payload_len};
        deliver_locked(s, st, m);
    }
    if (status == SHMIPC_STREAM_CLOSED)
        remote_close_locked(s, st);
    return 0;
}

static int on_event_locked(struct session *s, const uint8_t *ev, const struct ev_header *h)
{
    switch (h->type) {
    case SHMIPC_EV_POLLING:
        s->stats.wakeups_received++;
        return harvest_locked(s);
    case SHMIPC_EV_STREAM_CLOSE: {
        uint32_t id;
        int rc = ev_decode_stream_close(ev, h->length, &id);
        if (rc < 0)
            return protocol_error(s, rc, "malformed StreamClose");
        shmipc_stream *st = lookup_locked(s, id);
        if (st != NULL)
            remote_close_locked(s, st);
        return 0;
    }
    case SHMIPC_EV_FALLBACK_DATA:
        return on_fallback_locked(s, ev, h->length);
    case SHMIPC_EV_HOT_RESTART:
        if (s->cfg.role == ROLE_CLIENT) {
            session_die_locked(s, SHMIPC_ECLOSED, "server is restarting");
            return SHMIPC_ECLOSED;
        }
        return protocol_error(s, SHMIPC_EPROTO, "a client sent HotRestart");
    default:
        return protocol_error(s, SHMIPC_EPROTO, "event type not allowed after the handshake");
    }
}

/* Handles every whole event in the input buffer. */
static int parse_locked(struct session *s)
{
    size_t at = 0;
    int rc = 0;
    while (s->in_len - at >= SHMIPC_EV_HEADER_LEN && !s->dead) {
        struct ev_header h;
        rc = ev_decode_header(s->in + at, s->cfg.max_event, &h);
        if (rc < 0) {
            protocol_error(s, rc, "bad event from the peer");
            break;
        }
        if (h.version != s->cfg.version) {
            rc = protocol_error(s, SHMIPC_EBADVERSION, "event version differs from the session's");
            break;
        }
        if (s->in_len - at < h.length) {
            if (h.length > s->in_cap) {
                uint8_t *b = realloc(s->in, h.length);
                if (b == NULL) {
                    rc = protocol_error(s, -ENOMEM, "no memory for a large event");
                    break;
                }
                s->in = b;
                s->in_cap = h.length;
            }
            break;
        }
        rc = on_event_locked(s, s->in + at, &h);
        at += h.length;
        if (rc < 0)
            break;
    }
    memmove(s->in, s->in + at, s->in_len - at);
    s->in_len -= at;
    return rc;
}

int session_throttled(struct session *s)
{
    return __atomic_load_n(&s->throttled, __ATOMIC_RELAXED);
}

/* Reads what the socket holds, handles it, writes what is pending and
 * harvests the queue: everything a readiness event asks for. */
static int pump_locked(struct session *s)
{
    int rc = 0;
    if (!s->dead && (region_tripped(&s->pool->region) || region_tripped(&s->qregion)))
        protocol_error(s, SHMIPC_ECORRUPT, "peer truncated its shared memory");
    __atomic_store_n(&s->throttled, 0, __ATOMIC_RELAXED);
    while (!s->dead) {
        /* A peer that sends FallbackData faster than we handle it would
         * otherwise have us read (and copy) without bound before the
         * driver gets to dispatch. Unhandled input shares the output's
         * allowance: beyond it, stop; the driver dispatches (which takes
         * every message, so this cannot repeat without progress) and
         * comes back. */
        size_t rx = __atomic_load_n(&s->rx_heap, __ATOMIC_RELAXED);
        if (s->cfg.out_limit && rx > 0 &&
            rx + s->out_len + __atomic_load_n(&s->fb_pending, __ATOMIC_RELAXED) >
                s->cfg.out_limit) {
            __atomic_store_n(&s->throttled, 1, __ATOMIC_RELAXED);
            break;
        }
        if (s->in_len == s->in_cap) {
            if ((rc = parse_locked(s)) < 0)
                break;
            if (s->in_len == s->in_cap) {
                rc = protocol_error(s, SHMIPC_EBIGEVENT, "input buffer full");
                break;
            }
        }
        /* Read until EAGAIN even after a short read: the peer's close may
         * have come with its last bytes, and no new edge would tell. */
        ssize_t n = recv(s->fd, s->in + s->in_len, s->in_cap - s->in_len, MSG_DONTWAIT);
        if (n > 0) {
            s->in_len += (size_t)n;
            __atomic_store_n(&s->last_rx_ns, sock_now_ns(), __ATOMIC_RELAXED);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        rc = n == 0 ? SHMIPC_ECLOSED : -errno;
        parse_locked(s);
        session_die_locked(s, rc, n == 0 ? "peer closed the connection" : "read failed");
        break;
    }
    if (!s->dead && (rc = parse_locked(s)) == 0 && s->out_len > 0)
        rc = flush_out_locked(s);
    /* A Polling may have been lost to a full socket earlier; harvesting
     * when nothing is queued costs two loads. */
    if (!s->dead && rc == 0)
        rc = harvest_locked(s);
    if (s->dead)
        rc = s->err ? s->err : SHMIPC_ECLOSED;
    return rc;
}

int session_on_io(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    int rc = pump_locked(s);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

shmipc_stream *session_next_ready(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    shmipc_stream *st = s->ready_head;
    if (st != NULL) {
        s->ready_head = st->rnext;
        if (s->ready_head == NULL)
            s->ready_tail = NULL;
        st->rnext = NULL;
        st->flags &= ~ST_READY;
    }
    pthread_mutex_unlock(&s->mu);
    return st; /* carries the ready list's reference */
}

void session_add_stats(struct session *s, struct shmipc_stats *st)
{
    pthread_mutex_lock(&s->mu);
    const struct session_stats *a = &s->stats;
    st->streams_opened += a->streams_opened;
    st->messages_sent += a->messages_sent;
    st->messages_received += a->messages_received;
    st->bytes_sent += a->bytes_sent;
    st->bytes_received += a->bytes_received;
    st->wakeups_sent += a->wakeups_sent;
    st->wakeups_received += a->wakeups_received;
    st->fallbacks_sent += a->fallbacks_sent;
    st->fallbacks_received += a->fallbacks_received;
    st->queue_full += a->queue_full;
    st->protocol_errors += a->protocol_errors;
    pthread_mutex_unlock(&s->mu);
}

void session_release_streams(struct session *s)
{
    shmipc_stream *ready;
    while ((ready = session_next_ready(s)) != NULL)
        stream_put(ready); /* the ready list's reference */
    for (;;) {
        shmipc_stream *st = NULL;
        pthread_mutex_lock(&s->mu);
        for (unsigned b = 0; b < s->nbuckets && st == NULL; b++)
            st = s->table[b];
        if (st != NULL)
            stream_unlink_locked(s, st);
        pthread_mutex_unlock(&s->mu);
        if (st == NULL)
            return;
        stream_put(st); /* the table's reference */
    }
}
