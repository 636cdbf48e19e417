/*
 * The waiting callers drive a threaded client's session (see leader.h):
 * leader and followers, the wake-up batching of their flushes, and the
 * adaptive spin. The one rule: while s->reader is set only the reader
 * reads the socket or harvests the queue, and the I/O thread's watch of
 * the socket's input is off; the reader turns it back on when it leaves.
 *
 * Why: an answer used to go socket -> I/O thread -> condition variable ->
 * caller, two wake-ups per answer. A reader that waits in a read of the
 * socket itself gets its own answer with one, and hands the other
 * streams' answers to their waiters (waking only those, once it has let
 * the session's lock go).
 *
 * Wake-up batching: the Polling a flush owes (it set the peer's working
 * flag) may wait while other callers of the session are awake between an
 * answer and their next wait: each of them will flush too, and the last
 * one to go to sleep (or to leave the library) sends one Polling for all.
 * A flush with no other caller awake sends its Polling at once.
 * `awake` counts those callers: a caller counts from the start of its call
 * until it sleeps or returns; a delivery counts the callers asleep on that
 * stream as awake again (harvest.c), since they are about to run.
 */
#include "session/leader.h"

#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "proto/sock.h"
#include "session/harvest.h"
#include "session/io.h"
#include "session/wakeup.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

/* Adaptive spin. A reader spins (polls the queue, holding the working flag
 * so the peer skips its Polling) only when the session's recent answers
 * came sooner than a wake-up would take, and then no longer than that
 * answer time plus SPIN_SLACK_NS after its flush. Every SPIN_PROBE_EVERY
 * sleeps it spins once up to SPIN_WAKE_NS after the flush, to notice a peer
 * that became fast (answers harvested after a sleep count as RTT_SLEPT_NS).
 * A lone caller whose flush found the peer harvesting (its working flag
 * set: a server that spins, or one probing) spins up to SPIN_WAKE_NS too:
 * both ends awake is how a session leaves the state where each sleeps
 * because the other did. One such spin that finds the peer slow stops
 * them for SPIN_PROBE_EVERY waits. */
#define SPIN_WAKE_NS 10000u
#define SPIN_SLACK_NS 3000u
#define SPIN_PROBE_EVERY 64u

/* Its address names the calling thread. */
static _Thread_local char me;

int session_spin_allowed(void)
{
    /* Spinning on the only CPU we may run on would keep the peer (or the
     * thread that answers us) from running. Asked at each client open:
     * the affinity may have changed. */
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    int mine = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : (int)online;
    return online > 1 && mine > 1;
}

void session_caller_enter_locked(struct session *s)
{
    s->awake++;
}

void session_caller_leave_locked(struct session *s)
{
    if (s->awake > 0 && --s->awake == 0 && !s->dead)
        ring_locked(s); /* the last awake caller pays what the others owe */
}

static int has_news(struct session *s, shmipc_stream *st)
{
    return st->rx_head != NULL || (st->flags & ST_REMOTE_CLOSED) || s->dead;
}

/* When the reader should stop spinning (0: do not spin). */
static uint64_t spin_end(struct session *s, shmipc_stream *st, uint64_t now, uint64_t deadline,
                         int *on_awake)
{
    uint64_t end = 0;
    if (s->cfg.spin_us > 0) {
        end = now + (uint64_t)s->cfg.spin_us * 1000u;
    } else if (s->cfg.adaptive_spin && st->flush_ns != 0) {
        uint64_t wake = s->spin_wake_ns != 0 ? s->spin_wake_ns : SPIN_WAKE_NS;
        if (s->rtt_ns != 0 && s->rtt_ns < SPIN_WAKE_NS) {
            end = st->flush_ns + s->rtt_ns + SPIN_SLACK_NS;
        } else if (s->peer_awake && s->followers == 0 && s->awake_backoff == 0) {
            end = st->flush_ns + wake;
            *on_awake = end > now;
        } else if (++s->spin_probe >= SPIN_PROBE_EVERY) {
            end = st->flush_ns + wake;
        }
        if (s->awake_backoff > 0)
            s->awake_backoff--;
        if (end > now)
            s->spin_probe = 0;
    }
    return end < deadline ? end : deadline;
}

/* Polls the receive queue until st has news or `end`, holding the working
 * flag (the peer skips its Polling meanwhile); lets it go, re-checking the
 * queue, before returning. Called and returns with s->mu held. */
static void spin_locked(struct session *s, shmipc_stream *st, uint64_t end)
{
    pthread_mutex_unlock(&s->mu);
    session_wake_followers(s);
    for (;;) {
        if (session_spin_harvest(s) > 0) {
            pthread_mutex_lock(&s->mu);
            int done = has_news(s, st);
            pthread_mutex_unlock(&s->mu);
            if (done)
                break;
        }
        if (sock_now_ns() >= end)
            break;
        for (int i = 0; i < 16; i++)
            cpu_relax();
    }
    session_spin_end(s);
    pthread_mutex_lock(&s->mu);
}

/* The reader's turn: read and harvest until st has news or the deadline,
 * then let the I/O thread watch the socket again. */
static void lead_locked(struct session *s, shmipc_stream *st, uint64_t deadline)
{
    s->reader = &me;
    s->reader_turns++;
    s->rx_woke = 0;
    session_park_io_locked(s, 1); /* our sleeps must be the only ones */
    /* The queue first: the peer queues without a Polling while it sees our
     * working flag set, and harvesting clears it (re-checking), so from
     * here on each new message comes with a Polling on the socket. */
    harvest_locked(s);
    while (!has_news(s, st)) {
        uint64_t now = sock_now_ns();
        if (now >= deadline)
            break;
        int on_awake = 0;
        uint64_t end = spin_end(s, st, now, deadline, &on_awake);
        /* Spinning is waiting too: what this caller owes goes out first
         * if nobody else awake will send it. */
        session_caller_leave_locked(s);
        if (end > now) {
            spin_locked(s, st, end);
            if (has_news(s, st)) {
                session_caller_enter_locked(s);
                break;
            }
            if (on_awake) /* awake, but slower than a wake-up */
                s->awake_backoff = SPIN_PROBE_EVERY;
        }
        /* Asleep in a blocking read of the socket (a second at most,
         * then we look again), counted asleep until it returns. */
        s->rx_woke = 1;
        session_read_wait_locked(s, deadline);
        session_caller_enter_locked(s);
    }
    s->reader = NULL;
    s->rx_woke = 1;
    /* Followers need someone to read for them: the I/O thread, until a
     * caller comes to read again. Without followers the I/O thread's watch
     * stays off for the next reader (a busy session's callers come back
     * soon: two epoll_ctl calls a call saved); the I/O thread turns it on
     * once a tick passed without a reader (session_reader_tick). */
    if (s->followers > 0 || s->dead)
        session_park_io_locked(s, 0);
}

/* A follower waits for news on its stream until a delivery, the deadline
 * or the session's death; it is counted asleep meanwhile. It sleeps on the
 * session's futex word with its stream's bit: whoever delivers bumps the
 * word under s->mu (so a follower between its unlock and its sleep does
 * not sleep) and wakes the bits after letting s->mu go. */
static void follow_locked(struct session *s, shmipc_stream *st, uint64_t deadline)
{
    unsigned gen = st->wake_gen;
    uint32_t seq = __atomic_load_n(&s->fseq, __ATOMIC_ACQUIRE);
    st->sleeping++;
    s->followers++;
    session_caller_leave_locked(s);
    struct timespec ts = {(time_t)(deadline / 1000000000u), (long)(deadline % 1000000000u)};
    pthread_mutex_unlock(&s->mu);
    /* CLOCK_MONOTONIC, absolute, like sock_now_ns() */
    syscall(SYS_futex, &s->fseq, FUTEX_WAIT_BITSET_PRIVATE, seq,
            deadline == UINT64_MAX ? NULL : &ts, NULL, follower_bit(st));
    pthread_mutex_lock(&s->mu);
    s->followers--;
    if (st->wake_gen == gen) { /* woke by itself: nobody counted it */
        st->sleeping--;
        session_caller_enter_locked(s);
    }
}

void session_reader_tick(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    if (s->io_parked && s->reader == NULL && s->reader_turns == s->turns_seen)
        session_park_io_locked(s, 0);
    s->turns_seen = s->reader_turns;
    pthread_mutex_unlock(&s->mu);
}

int session_poll_rx_locked(struct session *s)
{
    /* Nobody reads a session whose last reader left it parked: a look
     * without waiting reads it. */
    if (s->reader == NULL && s->io_parked && !s->dead)
        return session_read_locked(s);
    return 0;
}

int session_wait_rx_locked(struct session *s, shmipc_stream *st, uint64_t deadline_ns)
{
    int rc, looked = 0;
    for (;;) {
        if (st->rx_head != NULL) {
            rc = 0;
            break;
        }
        if (st->flags & ST_REMOTE_CLOSED) {
            rc = SHMIPC_ECLOSED;
            break;
        }
        if (s->dead) {
            rc = s->err ? s->err : SHMIPC_ECLOSED;
            break;
        }
        if (sock_now_ns() >= deadline_ns) {
            if (!looked++ && session_poll_rx_locked(s) == 0 && st->rx_head != NULL)
                continue; /* a timeout of 0 still reads a session nobody reads */
            rc = SHMIPC_ETIMEDOUT;
            break;
        }
        if (s->reader == NULL)
            lead_locked(s, st, deadline_ns);
        else
            follow_locked(s, st, deadline_ns);
    }
    return rc;
}
