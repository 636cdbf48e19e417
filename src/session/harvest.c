/*
 * The receive queue's harvest (see harvest.h): queue elements into
 * messages delivered to their streams, and the low-latency spin that
 * harvests without a Polling. The one rule: everything the peer wrote
 * (queue elements, slice chains) is validated here before a stream sees
 * it, and a violation kills this session only.
 */
#include "session/harvest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto/sock.h"
#include "session/pool_ref.h"
#include "session/rx_msg.h"
#include "session/table.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

/* A threaded client's callers asleep on the stream (followers, leader.c)
 * count as awake again from here on (the last awake caller pays an owed
 * Polling) and are woken once s->mu is let go (session_wake_followers);
 * other readers wait on the stream's condition variable. */
static void wake_stream_locked(struct session *s, shmipc_stream *st)
{
    if (st->sleeping == 0) {
        pthread_cond_broadcast(&st->cv);
        return;
    }
    s->awake += st->sleeping;
    st->sleeping = 0;
    st->wake_gen++;
    __atomic_add_fetch(&s->fseq, 1, __ATOMIC_RELEASE);
    __atomic_or_fetch(&s->wake_bits, follower_bit(st), __ATOMIC_RELEASE);
}

/* Adaptive spin: how soon the peer answered a request of this stream. An
 * answer harvested after a sleep counts as RTT_SLEPT_NS: it only says the
 * peer was not faster than a wake-up. A faster answer than the estimate
 * (a spin probe's) is taken at once; slower ones move it a quarter of the
 * way, so a peer that slows down costs a few short spins, not many. */
static void sample_rtt_locked(struct session *s, shmipc_stream *st)
{
    uint64_t d = s->rx_woke ? RTT_SLEPT_NS : sock_now_ns() - st->flush_ns;
    if (s->rtt_ns == 0 || d < s->rtt_ns)
        s->rtt_ns = d;
    else
        s->rtt_ns += (d - s->rtt_ns) / 4;
    st->flush_ns = 0;
}

void deliver_locked(struct session *s, shmipc_stream *st, struct rx_msg *m)
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
    if (st->flush_ns != 0)
        sample_rtt_locked(s, st);
    wake_stream_locked(s, st);
    mark_ready_locked(s, st);
}

void remote_close_locked(struct session *s, shmipc_stream *st)
{
    st->flags |= ST_REMOTE_CLOSED;
    wake_stream_locked(s, st);
    mark_ready_locked(s, st);
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

int harvest_locked(struct session *s)
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
    session_wake_followers(s);
    return n;
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
    session_wake_followers(s);
}
