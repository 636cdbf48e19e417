/*
 * Waking the peer (see wakeup.h): a Polling after a message queued while
 * the peer was idle, sent at once or owed for a batch, and the queue_put
 * that needs it. The one rule: whoever sets the peer's working flag owes
 * it a Polling, and wake_owed records who still does; ring_locked() is
 * the one place that pays it.
 */
#include "session/wakeup.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "proto/event.h"
#include "session/output.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

#define POLLING_LEN SHMIPC_EV_HEADER_LEN

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

/* Deferred wake-ups: the thread handling an owner's poll results owes
 * Pollings for the sessions it queued on; it keeps them (with a
 * reference) in a list of its own and sends them when it polls again,
 * turns to another owner or ends. Meanwhile a message another thread queues on such a session sends
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

int ring_locked(struct session *s)
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
    if (s->cfg.callers_read) {
        /* Threaded client: while other callers are awake (leader.c counts
         * them) the Polling waits for their flushes; the last of them to
         * sleep or return sends it, or whoever queues the WAKE_DEFER_MAX-th
         * message meanwhile. */
        if (!queue_mark_working(&s->qp.send)) {
            int owing = __atomic_load_n(&s->wake_owed, __ATOMIC_RELAXED);
            /* Set by the peer itself (it harvests, or spins), unless it is
             * still the flag one of our flushes set and the peer has not
             * taken anything since (it has not woken yet). */
            s->peer_awake = !owing && queue_head(&s->qp.send) != s->flag_head;
            if (owing && ++s->wake_deferred >= WAKE_DEFER_MAX)
                return ring_locked(s);
            return 0;
        }
        s->peer_awake = 0;
        s->flag_head = queue_head(&s->qp.send);
        if (s->awake <= 1) /* nobody but (maybe) this caller */
            return send_polling_locked(s);
        __atomic_store_n(&s->wake_owed, 1, __ATOMIC_RELAXED);
        s->wake_deferred = 1;
        return 0;
    }
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
