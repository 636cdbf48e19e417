/*
 * Streams (the public stream API; messages are rx_msg.c's). The one rule:
 * a stream's pending output is either in pool slices (the writer) or, once
 * the pool ran dry, in a heap buffer sent as FallbackData, and never both:
 * bytes already in slices are moved to the heap when the stream falls
 * back, so they cannot overtake or trail what follows.
 */
#include "session/stream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/event.h"
#include "proto/sock.h"
#include "session/harvest.h"
#include "session/io.h"
#include "session/leader.h"
#include "session/output.h"
#include "session/pool_ref.h"
#include "session/rx_msg.h"
#include "session/table.h"
#include "session/wakeup.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

#define OUTPUT_WAIT_NS (10ull * 1000000000ull)
#define CLIENT_OUT_HIGH (4u << 20)

uint32_t shmipc_stream_id(const shmipc_stream *st)
{
    return st->id;
}

void *shmipc_stream_user(const shmipc_stream *st)
{
    return st->user;
}

void shmipc_stream_set_user(shmipc_stream *st, void *user)
{
    st->user = user;
}

void stream_get(shmipc_stream *st)
{
    __atomic_add_fetch(&st->refs, 1, __ATOMIC_RELAXED);
}

static void drop_rx(shmipc_stream *st)
{
    while (st->rx_head != NULL) {
        struct rx_msg *m = st->rx_head;
        st->rx_head = m->next;
        __atomic_sub_fetch(&st->sess->rx_heap, rx_msg_heap_cost(m), __ATOMIC_RELAXED);
        rx_msg_free(m);
    }
    st->rx_tail = NULL;
    st->rx_count = 0;
    st->rx_off = 0;
}

/* The stream lets go of its fallback bytes (sent, or dropped) and of the
 * buffer: a stream holds heap only while it has bytes pending, so many
 * streams that each fell back once do not add up. */
static void fb_release(shmipc_stream *st)
{
    __atomic_sub_fetch(&st->sess->fb_pending, st->fb_len, __ATOMIC_RELAXED);
    free(st->fb);
    st->fb = NULL;
    st->fb_len = st->fb_cap = 0;
}

void stream_put(shmipc_stream *st)
{
    if (__atomic_sub_fetch(&st->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    struct session *s = st->sess;
    drop_rx(st);
    pool_writer_abort(&st->w);
    if (st->has_unsent)
        pool_free_chain(&s->pool->pool, st->unsent_first);
    fb_release(st);
    pthread_cond_destroy(&st->cv);
    free(st);
    session_put(s);
}

void shmipc_stream_hold(shmipc_stream *st)
{
    stream_get(st);
}

void shmipc_stream_release(shmipc_stream *st)
{
    stream_put(st);
}

static int session_err(const struct session *s)
{
    return s->err ? s->err : SHMIPC_ECLOSED;
}

static int check_writable_locked(shmipc_stream *st)
{
    if (st->sess->dead)
        return session_err(st->sess);
    if (st->flags & (ST_LOCAL_CLOSED | ST_REMOTE_CLOSED))
        return SHMIPC_ECLOSED;
    return 0;
}

static int fb_reserve(shmipc_stream *st, size_t n, uint8_t **p)
{
    if (st->fb_len + n > st->sess->cfg.max_event - SHMIPC_EV_FALLBACK_MIN_LEN)
        return -EMSGSIZE; /* could never be sent as one FallbackData event */
    /* A server's streams whose flushes a full queue holds back would
     * otherwise buffer up to max_event each for a peer that never reads. */
    if (session_over_limit_locked(st->sess, n))
        return SHMIPC_EPROTO;
    if (st->fb_len + n > st->fb_cap) {
        size_t cap = st->fb_cap ? st->fb_cap : 4096;
        while (cap < st->fb_len + n)
            cap *= 2;
        uint8_t *b = realloc(st->fb, cap);
        if (b == NULL)
            return -ENOMEM;
        st->fb = b;
        st->fb_cap = cap;
    }
    *p = st->fb + st->fb_len;
    st->fb_len += n;
    __atomic_add_fetch(&st->sess->fb_pending, n, __ATOMIC_RELAXED);
    return 0;
}

/* The pool could not take more: move what the writer holds to the heap
 * and send everything of this stream as FallbackData from now on. */
static int enter_fallback_locked(shmipc_stream *st)
{
    struct session *s = st->sess;
    struct pool_walk w;
    struct pool_seg seg;
    int rc = 0;
    if (st->w.chain.nslices != 0) {
        pool_walk_init(&w, &s->pool->pool, st->w.chain.head);
        while (rc == 0 && pool_walk_next(&w, &seg) > 0) {
            uint8_t *p;
            rc = fb_reserve(st, seg.len, &p);
            if (rc == 0)
                memcpy(p, seg.data, seg.len);
        }
    }
    if (rc < 0)
        return rc;
    pool_writer_abort(&st->w);
    st->flags |= ST_FALLBACK;
    uint64_t until = sock_now_ns() + (uint64_t)s->cfg.unhealthy_ms * 1000000u;
    __atomic_store_n(&s->unhealthy_until_ns, until, __ATOMIC_RELAXED);
    return 0;
}

static int pool_exhausted(int rc)
{
    return rc == SHMIPC_ENOBUFS || rc == SHMIPC_ECONTENDED;
}

/* Writes this large are copied into the pool without the session's lock:
 * a megabyte's copy must not hold up the session's other callers (and its
 * reader). The writer and its slices are the stream's, written by one
 * thread at a time, and the pool is lock-free. */
#define WRITE_UNLOCKED_MIN (32u << 10)

int shmipc_stream_write(shmipc_stream *st, const void *data, size_t n)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int rc = check_writable_locked(st);
    const uint8_t *src = data;
    if (rc == 0 && !(st->flags & ST_FALLBACK)) {
        uint64_t before = st->w.total;
        if (n >= WRITE_UNLOCKED_MIN) {
            pthread_mutex_unlock(&s->mu);
            rc = pool_writer_write(&st->w, src, n);
            pthread_mutex_lock(&s->mu);
        } else {
            rc = pool_writer_write(&st->w, src, n);
        }
        if (pool_exhausted(rc)) {
            size_t done = (size_t)(st->w.total - before);
            src += done;
            n -= done;
            rc = enter_fallback_locked(st);
        } else {
            n = 0;
        }
    }
    if (rc == 0 && n > 0) {
        uint8_t *p;
        rc = fb_reserve(st, n, &p);
        if (rc == 0)
            memcpy(p, src, n);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int shmipc_stream_advance(shmipc_stream *st, size_t n)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int rc = check_writable_locked(st);
    if (rc == 0 && !(st->flags & ST_FALLBACK)) {
        uint64_t before = st->w.total;
        rc = pool_writer_write(&st->w, NULL, n);
        if (pool_exhausted(rc)) {
            n -= (size_t)(st->w.total - before);
            rc = enter_fallback_locked(st);
        } else {
            n = 0;
        }
    }
    if (rc == 0 && n > 0) {
        uint8_t *p;
        if ((rc = fb_reserve(st, n, &p)) == 0)
            memset(p, 0, n); /* heap bytes go on the socket: never send stale memory */
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int shmipc_stream_reserve(shmipc_stream *st, size_t n, void **ptr)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int rc = check_writable_locked(st);
    if (rc == 0 && !(st->flags & ST_FALLBACK)) {
        rc = pool_writer_reserve(&st->w, n, ptr);
        if (pool_exhausted(rc))
            rc = enter_fallback_locked(st);
        else if (rc == 0)
            goto out;
    }
    if (rc == 0) {
        uint8_t *p;
        if (n > s->pool->pool.max_slice_cap)
            rc = -EMSGSIZE; /* the same limit as in shared memory */
        else if ((rc = fb_reserve(st, n, &p)) == 0)
            *ptr = p;
    }
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void shmipc_stream_discard(shmipc_stream *st)
{
    pthread_mutex_lock(&st->sess->mu);
    pool_writer_abort(&st->w);
    fb_release(st);
    pthread_mutex_unlock(&st->sess->mu);
}

static int flush_fallback_locked(shmipc_stream *st)
{
    struct session *s = st->sess;
    uint8_t hdr[SHMIPC_EV_FALLBACK_MIN_LEN];
    int rc = ev_encode_fallback_header(hdr, sizeof(hdr), s->cfg.version, st->id,
                                       SHMIPC_STREAM_OPEN, (uint32_t)st->fb_len);
    if (rc < 0)
        return rc;
    /* The bytes move to the socket or the output buffer (which counts
     * them from now on), so the stream's count and buffer go first. */
    uint8_t *fb = st->fb;
    size_t len = st->fb_len;
    __atomic_sub_fetch(&s->fb_pending, len, __ATOMIC_RELAXED);
    st->fb = NULL;
    st->fb_len = st->fb_cap = 0;
    rc = session_send_locked(s, hdr, sizeof(hdr), fb, len);
    free(fb);
    if (rc < 0)
        return rc;
    s->stats.fallbacks_sent++;
    s->stats.messages_sent++;
    s->stats.bytes_sent += len;
    /* A client does not pile up more than it can send: it waits (with a
     * deadline) for the socket to drain. A server never waits. */
    if (s->cfg.role == ROLE_CLIENT && s->out_len > CLIENT_OUT_HIGH)
        return session_wait_output_locked(s, sock_now_ns() + OUTPUT_WAIT_NS);
    return 0;
}

static int put_message_locked(shmipc_stream *st, uint32_t first, uint32_t len)
{
    struct shmipc_queue_elem e = {st->id, first, SHMIPC_STREAM_OPEN};
    int rc = session_put_elem_locked(st->sess, &e);
    if (rc == SHMIPC_EQFULL) {
        /* Kept, not freed: the next flush publishes it first. A server
         * retries by itself, since its handler may never flush again. */
        st->has_unsent = 1;
        st->unsent_first = first;
        st->unsent_len = len;
        struct session *s = st->sess;
        if (s->cfg.role == ROLE_SERVER && !(st->flags & ST_BLOCKED)) {
            st->flags |= ST_BLOCKED;
            stream_get(st);
            /* The loop counts sessions with a list: it looks for them only
             * while there are some, not at each turn over all of them. */
            if (s->blocked == NULL && s->blocked_sessions != NULL)
                __atomic_add_fetch(s->blocked_sessions, 1, __ATOMIC_RELEASE);
            st->bnext = s->blocked;
            s->blocked = st;
        }
        return rc;
    }
    if (rc == 0) {
        st->sess->stats.messages_sent++;
        st->sess->stats.bytes_sent += len;
    } else {
        /* Not queued (the session died): the slices are still ours. */
        pool_free_chain(&st->sess->pool->pool, first);
    }
    return rc;
}

static int flush_locked(shmipc_stream *st);

/* A threaded client's caller counts as awake while inside a call (see
 * leader.c): the Polling its flush owes may go out with the flushes of
 * the other awake callers. */
static void caller_enter_locked(struct session *s)
{
    if (s->cfg.callers_read)
        session_caller_enter_locked(s);
}

static void caller_leave_locked(struct session *s)
{
    if (s->cfg.callers_read)
        session_caller_leave_locked(s);
}

int shmipc_stream_flush(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    caller_enter_locked(s);
    int rc = flush_locked(st);
    caller_leave_locked(s);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int shmipc_stream_forward(shmipc_stream *st, shmipc_msg *m)
{
    struct rx_msg *rx = m->priv_;
    if (rx == NULL)
        return -EINVAL;
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int rc = check_writable_locked(st);
    if (rc == 0 && rx->pool == s->pool && rx->nseg > 0 && !rx->trimmed &&
        st->w.chain.nslices == 0 && !st->has_unsent && !(st->flags & ST_FALLBACK)) {
        /* The chain goes back as it came: its links were checked when it
         * arrived, and the peer is the only one who could have changed
         * them since (it would only confuse itself). Our held marks go
         * first, or the peer's next message on these slices would look
         * like a replay. */
        uint32_t first = rx->offs[0], len = rx->len;
        rx_msg_unhold(rx);
        caller_enter_locked(s);
        rc = put_message_locked(st, first, len); /* frees the chain if not queued */
        caller_leave_locked(s);
        pthread_mutex_unlock(&s->mu);
        pool_ref_put(rx->pool);
        rx_msg_drop(rx);
        memset(m, 0, sizeof(*m));
        return rc;
    }
    pthread_mutex_unlock(&s->mu);
    for (unsigned i = 0; rc == 0 && i < m->niov; i++)
        if (m->iov[i].len > 0)
            rc = shmipc_stream_write(st, m->iov[i].base, m->iov[i].len);
    shmipc_msg_release(m);
    if (rc < 0) {
        shmipc_stream_discard(st); /* half a message must not go out later */
        return rc;
    }
    return shmipc_stream_flush(st);
}

/* A blocked stream whose message went out since (its handler flushed
 * again) has nothing owed: flushing it would send an empty message. */
static int retry_unsent(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int rc = st->has_unsent ? flush_locked(st) : 0;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int flush_locked(shmipc_stream *st)
{
    int rc = check_writable_locked(st);
    int retried = 0;
    if (rc == 0 && st->sess->cfg.adaptive_spin)
        st->flush_ns = sock_now_ns(); /* its answer's time tells how fast the peer is */
    if (rc == 0 && st->has_unsent) {
        st->has_unsent = 0;
        rc = put_message_locked(st, st->unsent_first, st->unsent_len);
        retried = rc == 0;
    }
    if (rc == 0 && (st->flags & ST_FALLBACK)) {
        rc = flush_fallback_locked(st);
    } else if (rc == 0 && !(retried && st->w.chain.nslices == 0)) {
        rc = pool_writer_touch(&st->w);
        if (pool_exhausted(rc) && (rc = enter_fallback_locked(st)) == 0) {
            rc = flush_fallback_locked(st);
        } else if (rc == 0) {
            uint32_t len = (uint32_t)st->w.total, first;
            pool_writer_finish(&st->w, &first);
            rc = put_message_locked(st, first, len);
        }
    }
    return rc;
}

/* ---- reading ---- */

static void abs_deadline(struct timespec *ts, uint64_t deadline_ns)
{
    uint64_t now = sock_now_ns();
    uint64_t left = deadline_ns > now ? deadline_ns - now : 0;
    if (left > 3600ull * 1000000000ull)
        left = 3600ull * 1000000000ull;
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)(left / 1000000000ull);
    ts->tv_nsec += (long)(left % 1000000000ull);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Waits until the stream has a message, is closed, or the deadline. */
static int wait_rx_locked(shmipc_stream *st, uint64_t deadline_ns)
{
    struct session *s = st->sess;
    if (s->cfg.callers_read && deadline_ns != 0)
        return session_wait_rx_locked(s, st, deadline_ns); /* we drive the session */
    if (s->cfg.callers_read && st->rx_head == NULL)
        session_poll_rx_locked(s);
    while (st->rx_head == NULL) {
        if (st->flags & ST_REMOTE_CLOSED)
            return SHMIPC_ECLOSED;
        if (s->dead)
            return session_err(s);
        /* 0: do not wait (an event loop's recv after poll: no clock read) */
        if (deadline_ns == 0 || sock_now_ns() >= deadline_ns)
            return SHMIPC_ETIMEDOUT;
        struct timespec ts;
        abs_deadline(&ts, deadline_ns);
        pthread_cond_timedwait(&st->cv, &s->mu, &ts);
    }
    return 0;
}

/* Unlinks the head message, skipping what stream_read already consumed. */
static struct rx_msg *take_head_locked(shmipc_stream *st)
{
    struct rx_msg *m = st->rx_head;
    /* Taken: from here it is the caller's memory, not the session's. */
    __atomic_sub_fetch(&st->sess->rx_heap, rx_msg_heap_cost(m), __ATOMIC_RELAXED);
    st->rx_head = m->next;
    if (st->rx_head == NULL)
        st->rx_tail = NULL;
    st->rx_count--;
    size_t skip = st->rx_off;
    st->rx_off = 0;
    m->trimmed |= skip > 0;
    while (skip > 0 && m->nseg > 0) {
        size_t k = skip < m->iov[0].len ? skip : m->iov[0].len;
        m->iov[0].base += k;
        m->iov[0].len -= k;
        m->len -= (uint32_t)k;
        skip -= k;
        if (m->iov[0].len == 0 && m->nseg > 1) {
            /* Keep offs aligned with iov: the slice is freed with the rest. */
            memmove(m->iov, m->iov + 1, (m->nseg - 1) * sizeof(*m->iov));
            m->iov[m->nseg - 1] = (struct shmipc_iov){NULL, 0};
        }
    }
    return m;
}

static void fill_msg(shmipc_msg *out, struct rx_msg *m)
{
    unsigned n = m->nseg;
    while (n > 0 && m->iov[n - 1].base == NULL && m->iov[n - 1].len == 0 && n > 1)
        n--;
    out->len = m->len;
    out->niov = n;
    out->iov = m->iov;
    out->priv_ = m;
}

/* Low-latency mode: poll the receive queue ourselves for up to spin_us
 * before sleeping, holding the working flag so the peer skips its Polling. */
static void spin_for_message(shmipc_stream *st, int spin_us, uint64_t deadline_ns)
{
    struct session *s = st->sess;
    uint64_t end = sock_now_ns() + (uint64_t)spin_us * 1000u;
    if (end > deadline_ns)
        end = deadline_ns;
    int have = 0;
    while (!have) {
        session_spin_harvest(s);
        pthread_mutex_lock(&s->mu);
        have = st->rx_head != NULL || (st->flags & ST_REMOTE_CLOSED) || s->dead;
        pthread_mutex_unlock(&s->mu);
        if (have || sock_now_ns() >= end)
            break;
        for (int i = 0; i < 16; i++)
            cpu_relax();
    }
    session_spin_end(s);
}

int shmipc_stream_recv(shmipc_stream *st, shmipc_msg *out, int timeout_ms)
{
    struct session *s = st->sess;
    memset(out, 0, sizeof(*out));
    /* A threaded client's reader spins itself (leader.c): a follower that
     * harvested would take the reader's answer from under its read(). */
    if (s->cfg.spin_us > 0 && timeout_ms != 0 && !s->cfg.callers_read)
        spin_for_message(st, s->cfg.spin_us, sock_deadline(timeout_ms));
    pthread_mutex_lock(&s->mu);
    caller_enter_locked(s);
    int rc = wait_rx_locked(st, timeout_ms == 0 ? 0 : sock_deadline(timeout_ms));
    if (rc == 0)
        fill_msg(out, take_head_locked(st));
    caller_leave_locked(s);
    pthread_mutex_unlock(&s->mu);
    session_wake_followers(s); /* what we read for others, once unlocked */
    return rc;
}

int stream_call(shmipc_stream *st, const void *req, size_t n, shmipc_msg *resp, int timeout_ms)
{
    struct session *s = st->sess;
    memset(resp, 0, sizeof(*resp));
    int rc = shmipc_stream_write(st, req, n);
    if (rc < 0)
        return rc;
    if (!s->cfg.callers_read) {
        if ((rc = shmipc_stream_flush(st)) < 0)
            return rc;
        return shmipc_stream_recv(st, resp, timeout_ms);
    }
    /* One lock from the flush to the wait: the caller stays awake between
     * them, so its Polling may go out with those of the other callers. */
    uint64_t deadline = timeout_ms == 0 ? 0 : sock_deadline(timeout_ms);
    pthread_mutex_lock(&s->mu);
    caller_enter_locked(s);
    rc = flush_locked(st);
    if (rc == 0)
        rc = wait_rx_locked(st, deadline);
    if (rc == 0)
        fill_msg(resp, take_head_locked(st));
    caller_leave_locked(s);
    pthread_mutex_unlock(&s->mu);
    session_wake_followers(s);
    return rc;
}

int shmipc_stream_read(shmipc_stream *st, void *buf, size_t n, int timeout_ms)
{
    struct session *s = st->sess;
    uint64_t deadline = sock_deadline(timeout_ms);
    size_t got = 0;
    if (n > INT32_MAX)
        n = INT32_MAX;
    pthread_mutex_lock(&s->mu);
    caller_enter_locked(s);
    while (got == 0 && n > 0) {
        int rc = wait_rx_locked(st, deadline);
        if (rc == SHMIPC_ECLOSED)
            break; /* end of stream: 0 */
        if (rc < 0) {
            caller_leave_locked(s);
            pthread_mutex_unlock(&s->mu);
            session_wake_followers(s);
            return rc;
        }
        struct rx_msg *m = st->rx_head;
        shmipc_msg view = {m->len, m->nseg, m->iov, m};
        size_t k = shmipc_msg_copy(&view, st->rx_off, buf, n);
        st->rx_off += k;
        got = k;
        if (st->rx_off >= m->len)
            rx_msg_free(take_head_locked(st));
    }
    caller_leave_locked(s);
    pthread_mutex_unlock(&s->mu);
    session_wake_followers(s);
    return (int)got;
}

int stream_take(shmipc_stream *st, shmipc_msg *out, int *closed)
{
    struct session *s = st->sess;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&s->mu);
    int rc = SHMIPC_EQEMPTY;
    if (st->rx_head != NULL) {
        fill_msg(out, take_head_locked(st));
        rc = 0;
    }
    *closed = st->rx_head == NULL && ((st->flags & ST_REMOTE_CLOSED) || s->dead);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- closing ---- */

static int send_close_locked(shmipc_stream *st)
{
    struct session *s = st->sess;
    struct shmipc_queue_elem e = {st->id, 0, SHMIPC_STREAM_CLOSED};
    int rc = queue_put(&s->qp.send, &e);
    if (rc == 0) {
        if (queue_mark_working(&s->qp.send)) {
            uint8_t ev[SHMIPC_EV_HEADER_LEN];
            ev_encode_simple(ev, sizeof(ev), s->cfg.version, SHMIPC_EV_POLLING);
            s->stats.wakeups_sent++;
            return session_send_locked(s, ev, sizeof(ev), NULL, 0);
        }
        return 0;
    }
    /* The queue is full: the close goes as an event instead. */
    uint8_t ev[SHMIPC_EV_STREAM_CLOSE_LEN];
    ev_encode_stream_close(ev, sizeof(ev), s->cfg.version, st->id);
    return session_send_locked(s, ev, sizeof(ev), NULL, 0);
}

int shmipc_stream_shutdown(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (!(st->flags & ST_LOCAL_CLOSED)) {
        st->flags |= ST_LOCAL_CLOSED;
        pool_writer_abort(&st->w);
        fb_release(st);
        /* Sent even when the peer closed first: a peer that half-closed
         * keeps its stream until it hears from us (a server would hold it
         * for the session's life), and one that already let it go ignores
         * a close for an unknown id. */
        if (!s->dead)
            rc = send_close_locked(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void stream_forget(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int was_in = (st->flags & ST_IN_TABLE) != 0;
    stream_unlink_locked(s, st);
    drop_rx(st);
    if (s->hot == HOT_RETIRING)
        session_hot_ack_locked(s); /* its last stream gone: the server may close it */
    pthread_mutex_unlock(&s->mu);
    if (was_in)
        stream_put(st); /* the table's reference */
}

_Thread_local shmipc_stream *stream_lent;

void shmipc_stream_close(shmipc_stream *st)
{
    shmipc_stream_shutdown(st);
    stream_forget(st);
    /* A handler closing the stream it was called for holds no reference of
     * its own: the dispatcher lets go of it after the handler returns. */
    if (st != stream_lent)
        stream_put(st); /* the caller's */
}

int stream_reusable(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int ok = !s->dead && s->hot == HOT_NONE && (st->flags & ST_IN_TABLE) &&
             !(st->flags & (ST_LOCAL_CLOSED | ST_REMOTE_CLOSED | ST_FALLBACK)) &&
             st->rx_head == NULL && st->w.chain.nslices == 0 && st->fb_len == 0 &&
             !st->has_unsent;
    pthread_mutex_unlock(&s->mu);
    return ok;
}

unsigned session_retry_blocked(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    shmipc_stream *list = s->blocked;
    s->blocked = NULL;
    if (list != NULL && s->blocked_sessions != NULL)
        __atomic_sub_fetch(s->blocked_sessions, 1, __ATOMIC_RELEASE);
    for (shmipc_stream *st = list; st != NULL; st = st->bnext)
        st->flags &= ~ST_BLOCKED;
    pthread_mutex_unlock(&s->mu);
    while (list != NULL) {
        shmipc_stream *st = list;
        list = st->bnext;
        retry_unsent(st); /* re-blocks itself if still full */
        stream_put(st);
    }
    pthread_mutex_lock(&s->mu);
    unsigned n = 0;
    for (shmipc_stream *st = s->blocked; st != NULL; st = st->bnext)
        n++;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void stream_pause(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    st->flags |= ST_PAUSED;
    pthread_mutex_unlock(&s->mu);
}

int stream_paused(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int paused = (st->flags & ST_PAUSED) != 0;
    pthread_mutex_unlock(&s->mu);
    return paused;
}

void stream_resume(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    st->flags &= ~(unsigned)ST_PAUSED;
    if (!s->dead)
        mark_ready_locked(s, st);
    pthread_mutex_unlock(&s->mu);
}

int stream_closed_here(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    int closed = (st->flags & ST_LOCAL_CLOSED) != 0;
    pthread_mutex_unlock(&s->mu);
    return closed;
}
