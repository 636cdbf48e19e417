/*
 * Driving a session's socket (see io.h): reading and handling every event
 * the peer sent, writing what is pending, harvesting the queue, and the
 * waits for output that do all of that themselves. The one rule: every
 * event byte the peer wrote is validated here before a stream sees it,
 * and a violation kills this session only.
 */
#include "session/io.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include "base/log.h"
#include "proto/event.h"
#include "proto/sock.h"
#include "session/harvest.h"
#include "session/output.h"
#include "session/pool_ref.h"
#include "session/rx_msg.h"
#include "session/table.h"
#include "session/wakeup.h"
#include "shmipc/errors.h"

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

/* HotRestart reaches a client, HotRestartAck a server: anything else is
 * the peer's error. A client keeps the first epoch it was told (as Go's
 * does); a server takes only the ack of the epoch it sent, and an ack it
 * never asked for is a protocol error. */
static int on_hot_locked(struct session *s, const uint8_t *ev, const struct ev_header *h)
{
    uint64_t epoch;
    int rc = ev_decode_hot_restart(ev, h->length, &epoch);
    if (rc < 0)
        return protocol_error(s, rc, "malformed HotRestart");
    if (h->type == SHMIPC_EV_HOT_RESTART) {
        if (s->cfg.role != ROLE_CLIENT)
            return protocol_error(s, SHMIPC_EPROTO, "a client sent HotRestart");
        if (s->hot != HOT_NONE)
            return 0;
        s->hot_epoch = epoch;
        __atomic_store_n(&s->hot, HOT_RETIRING, __ATOMIC_RELEASE);
        log_info("session %d: the server restarts (epoch %llu): new streams go to a new session",
                 s->cfg.index, (unsigned long long)epoch);
        if (s->cfg.on_hot_restart != NULL)
            s->cfg.on_hot_restart(s->cfg.owner);
        session_hot_ack_locked(s);
        return 0;
    }
    if (s->cfg.role != ROLE_SERVER)
        return protocol_error(s, SHMIPC_EPROTO, "a server sent HotRestartAck");
    if (s->hot == HOT_SENT && epoch == s->hot_epoch) {
        __atomic_store_n(&s->hot, HOT_ACKED, __ATOMIC_RELEASE);
        return 0;
    }
    if (s->hot == HOT_ACKED && epoch == s->hot_epoch)
        return 0; /* said twice: harmless */
    return protocol_error(s, SHMIPC_EPROTO,
                          s->hot == HOT_NONE ? "HotRestartAck, but no HotRestart was sent"
                                             : "HotRestartAck for another epoch");
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
    case SHMIPC_EV_HOT_RESTART_ACK:
        return on_hot_locked(s, ev, h);
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

/* How pump_locked() reads: until EAGAIN (an edge-triggered driver: no new
 * edge would tell of what it left), until a short read (a reader that
 * waits on the socket again next), or not at all (the reader just read). */
enum pump_read { READ_ALL, READ_SHORT, READ_NONE };

/* Reads what the socket holds, handles it, writes what is pending and
 * harvests the queue: everything a readiness event asks for. */
static int pump_locked(struct session *s, enum pump_read how)
{
    int rc = 0;
    if (!s->dead && (region_tripped(&s->pool->region) || region_tripped(&s->qregion)))
        protocol_error(s, SHMIPC_ECORRUPT, "peer truncated its shared memory");
    __atomic_store_n(&s->throttled, 0, __ATOMIC_RELAXED);
    while (!s->dead && how != READ_NONE) {
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
            if (how == READ_SHORT && s->in_len < s->in_cap)
                break;
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
    int rc;
    if (s->reader != NULL) {
        /* A caller reads for the waiters (leader.c): only it may, or what
         * we deliver here would wake nobody while it sleeps in poll(). The
         * output is ours still. */
        rc = s->out_len > 0 && !s->dead ? flush_out_locked(s) : 0;
    } else {
        rc = pump_locked(s, READ_ALL);
    }
    pthread_mutex_unlock(&s->mu);
    session_wake_followers(s);
    return rc;
}

int session_read_locked(struct session *s)
{
    return pump_locked(s, READ_SHORT);
}

#define READER_BUF 2048
#define READER_WAIT_NS 1000000000ull

/* Appends what the reader read to the input buffer. */
static int take_input_locked(struct session *s, const uint8_t *p, size_t n)
{
    if (s->in_len + n > s->in_cap) {
        size_t cap = s->in_cap * 2 > s->in_len + n ? s->in_cap * 2 : s->in_len + n;
        uint8_t *b = realloc(s->in, cap);
        if (b == NULL)
            return protocol_error(s, -ENOMEM, "no memory for input");
        s->in = b;
        s->in_cap = cap;
    }
    memcpy(s->in + s->in_len, p, n);
    s->in_len += n;
    return 0; /* (last_rx_ns is for a server's idle timeout: not kept here) */
}

int session_read_wait_locked(struct session *s, uint64_t deadline_ns)
{
    uint64_t now = sock_now_ns();
    if (now >= deadline_ns)
        return 0;
    /* A blocking read wakes with the bytes (poll() and then a read would
     * be two calls); SO_RCVTIMEO bounds it: a second, or less when the
     * deadline is nearer (set only when it changes). */
    uint64_t want = deadline_ns - now < READER_WAIT_NS ? deadline_ns - now : READER_WAIT_NS;
    int set = want != s->rcvtimeo_ns;
    s->rcvtimeo_ns = want;
    int fd = s->fd; /* closed only with the session, which our caller holds */
    pthread_mutex_unlock(&s->mu);
    session_wake_followers(s); /* what we delivered, now that they can lock */
    if (set) {
        uint64_t us = (want + 999) / 1000;
        struct timeval tv = {(time_t)(us / 1000000u), (suseconds_t)(us % 1000000u)};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    uint8_t buf[READER_BUF];
    if (!s->rd_blocking) { /* set once when the session was made */
        struct timespec ts = {(time_t)(want / 1000000000u), (long)(want % 1000000000u)};
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ppoll(&p, 1, &ts, NULL);
    }
    ssize_t n = recv(fd, buf, sizeof(buf), s->rd_blocking ? 0 : MSG_DONTWAIT);
    int err = n < 0 ? errno : 0;
    pthread_mutex_lock(&s->mu);
    if (n > 0) {
        int rc = take_input_locked(s, buf, (size_t)n);
        if (rc < 0)
            return rc;
        /* A full buffer may have left more behind. */
        return pump_locked(s, (size_t)n == sizeof(buf) ? READ_SHORT : READ_NONE);
    }
    if (n == 0 && !s->dead)
        return pump_locked(s, READ_ALL); /* sees the end and lets the session go */
    if (n < 0 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR && !s->dead)
        session_die_locked(s, -err, "read failed");
    return s->dead ? (s->err ? s->err : SHMIPC_ECLOSED) : 0;
}

void session_park_io_locked(struct session *s, int park)
{
    if (s->ep_fd < 0 || s->io_parked == park)
        return;
    /* Parked: output readiness (when output waits) and the peer's hang-up
     * only (input wakes with a key that matches neither, so it no longer
     * wakes the I/O thread); back on: what session_watch() asked for. A
     * MOD re-checks readiness, so input that came meanwhile is reported. */
    uint32_t events = EPOLLET | EPOLLRDHUP | (s->ep_out ? EPOLLOUT : 0);
    if (!park)
        events |= EPOLLIN;
    struct epoll_event ev = {.events = events, .data = s->ep_data};
    if (epoll_ctl(s->ep_fd, EPOLL_CTL_MOD, s->fd, &ev) == 0)
        s->io_parked = park;
}

/* No other thread serves this session: wait for the socket here, and keep
 * reading while waiting so a peer that answers as it reads is not stuck
 * behind a full socket of its own. */
static int wait_output_self_locked(struct session *s, uint64_t deadline_ns)
{
    ring_locked(s); /* the peer may be waiting for it to read what we wait on */
    while (!s->dead && pump_locked(s, READ_ALL) >= 0 && s->out_len > 0) {
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
    ring_locked(s); /* a caller about to sleep sends what it owes first */
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

/* ---- hot restart ---- */

static int hot_send_locked(struct session *s, uint8_t type, uint64_t epoch)
{
    uint8_t ev[SHMIPC_EV_HOT_RESTART_LEN];
    ev_encode_hot_restart(ev, sizeof(ev), s->cfg.version, type, epoch);
    return session_send_locked(s, ev, sizeof(ev), NULL, 0);
}

int session_hot_restart(struct session *s, uint64_t epoch)
{
    pthread_mutex_lock(&s->mu);
    int sent = 0;
    if (!s->dead && s->hot == HOT_NONE) {
        s->hot_epoch = epoch;
        __atomic_store_n(&s->hot, HOT_SENT, __ATOMIC_RELEASE);
        sent = hot_send_locked(s, SHMIPC_EV_HOT_RESTART, epoch) == 0;
    }
    pthread_mutex_unlock(&s->mu);
    return sent;
}

int session_hot_quiet(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    int quiet = s->hot == HOT_ACKED && s->out_len == 0 && s->ready_head == NULL &&
                s->blocked == NULL && __atomic_load_n(&s->rx_heap, __ATOMIC_RELAXED) == 0;
    for (unsigned b = 0; quiet && b < s->nbuckets; b++)
        for (shmipc_stream *st = s->table[b]; quiet && st != NULL; st = st->hnext)
            quiet = __atomic_load_n(&st->refs, __ATOMIC_ACQUIRE) == 1 && st->rx_head == NULL &&
                    !st->has_unsent && st->w.chain.nslices == 0 && st->fb_len == 0;
    pthread_mutex_unlock(&s->mu);
    return quiet;
}

int session_retiring(struct session *s)
{
    int h = __atomic_load_n(&s->hot, __ATOMIC_ACQUIRE);
    return h == HOT_RETIRING || h == HOT_ACK_SENT;
}

void session_hot_ack_locked(struct session *s)
{
    if (s->hot != HOT_RETIRING || s->nstreams > 0 || s->dead)
        return;
    __atomic_store_n(&s->hot, HOT_ACK_SENT, __ATOMIC_RELEASE);
    if (hot_send_locked(s, SHMIPC_EV_HOT_RESTART_ACK, s->hot_epoch) == 0)
        log_debug("session %d: HotRestartAck (epoch %llu) sent", s->cfg.index,
                  (unsigned long long)s->hot_epoch);
}
