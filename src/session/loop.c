/*
 * The serving loop of a server thread (see loop.h). The one rule: a
 * session is served as a batch and never waited on; a flush that meets a
 * full queue waits on the session's blocked list and is retried here.
 */
#include "session/loop.h"

#include <time.h>

#include "proto/sock.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

/* However busy, the owner's own loop runs this often (new sessions, jobs,
 * a hot restart, retries): a spin never lasts longer. */
#define SPIN_TURN_MAX_NS 2000000u

void serve_loop_init(struct serve_loop *lp, int epfd, const struct serve_handler *h, void *ctx)
{
    lp->epfd = epfd;
    pthread_mutex_init(&lp->mu, NULL);
    lp->conns = NULL;
    lp->n = 0;
    lp->nblocked = 0;
    lp->adaptive = 0;
    lp->idle_ns = lp->gap_ns = 0;
    lp->probe = 0;
    lp->reprobes = 0;
    lp->h = h;
    lp->ctx = ctx;
}

void serve_loop_destroy(struct serve_loop *lp)
{
    while (lp->conns != NULL)
        serve_loop_close(lp, lp->conns);
    pthread_mutex_destroy(&lp->mu);
}

unsigned serve_loop_count(struct serve_loop *lp)
{
    pthread_mutex_lock(&lp->mu);
    unsigned n = lp->n;
    pthread_mutex_unlock(&lp->mu);
    return n;
}

void serve_loop_dispatch(struct serve_loop *lp, struct serve_conn *c)
{
    const struct serve_handler *h = lp->h;
    shmipc_stream *st;
    while ((st = session_next_ready(c->s)) != NULL) {
        stream_lent = st; /* the handlers borrow it */
        if (!st->seen_open) {
            st->seen_open = 1;
            if (h->open != NULL)
                h->open(lp->ctx, c, st);
        }
        shmipc_msg m;
        int closed = 0;
        /* A paused stream's messages wait for its resume; once the session
         * is dead they are taken all the same, so that its close is heard
         * (the handler drops them). */
        int dead = !session_alive(c->s);
        while ((dead || !stream_paused(st)) && stream_take(st, &m, &closed) == 0)
            if (h->message(lp->ctx, c, st, &m) && !dead)
                break;
        if (closed && !st->seen_close) {
            st->seen_close = 1;
            if (h->close != NULL)
                h->close(lp->ctx, c, st);
            stream_forget(st);
        }
        stream_lent = NULL;
        stream_put(st); /* the ready list's reference */
    }
    if (h->pass_end != NULL)
        h->pass_end(lp->ctx, c);
}

void serve_loop_close(struct serve_loop *lp, struct serve_conn *c)
{
    pthread_mutex_lock(&lp->mu);
    struct serve_conn **pp = &lp->conns;
    while (*pp != c)
        pp = &(*pp)->next;
    *pp = c->next;
    lp->n--;
    pthread_mutex_unlock(&lp->mu);
    struct session *s = c->s;
    session_unwatch(s);
    if (session_alive(s))
        session_die(s, SHMIPC_ECLOSED, "server closed the session");
    session_retry_blocked(s);
    pthread_mutex_lock(&s->mu);
    s->blocked_sessions = NULL; /* dead: nothing blocks on it any more */
    pthread_mutex_unlock(&s->mu);
    serve_loop_dispatch(lp, c); /* every stream's close reaches the handler */
    session_release_streams(s);
    lp->h->closed(lp->ctx, c);
    session_put(s);
}

struct serve_ctx {
    struct serve_loop *lp;
    struct serve_conn *c;
};

static void dispatch_cb(void *arg)
{
    struct serve_ctx *x = arg;
    serve_loop_dispatch(x->lp, x->c);
}

/* After a HotRestart the client acked: closed once nothing is in flight. */
static int hot_done(struct serve_conn *c)
{
    return __atomic_load_n(&c->s->hot, __ATOMIC_ACQUIRE) == HOT_ACKED && session_hot_quiet(c->s);
}

void serve_loop_ready(struct serve_loop *lp, struct serve_conn *c)
{
    struct serve_ctx x = {lp, c};
    if (!session_serve(c->s, dispatch_cb, &x) || hot_done(c))
        serve_loop_close(lp, c);
}

unsigned serve_loop_hot_restart(struct serve_loop *lp, uint64_t epoch)
{
    unsigned left = 0;
    for (struct serve_conn *c = lp->conns, *n; c != NULL; c = n) {
        n = c->next;
        session_hot_restart(c->s, epoch);
        if (hot_done(c))
            serve_loop_close(lp, c);
        else
            left++;
    }
    return left;
}

void serve_loop_add(struct serve_loop *lp, struct serve_conn *c)
{
    c->tag.kind = SERVE_SESSION;
    pthread_mutex_lock(&c->s->mu);
    c->s->blocked_sessions = &lp->nblocked;
    pthread_mutex_unlock(&c->s->mu);
    pthread_mutex_lock(&lp->mu);
    c->next = lp->conns;
    lp->conns = c;
    lp->n++;
    pthread_mutex_unlock(&lp->mu);
    int rc = session_watch(c->s, lp->epfd, (epoll_data_t){.ptr = &c->tag});
    if (rc < 0)
        session_die(c->s, rc, "epoll_ctl failed");
    serve_loop_ready(lp, c);
}

void serve_loop_spin(struct serve_loop *lp, int spin_us, const int *stop)
{
    uint64_t window = (uint64_t)spin_us * 1000u, now = sock_now_ns(), end = now + window;
    uint64_t cap = now + (window > SPIN_TURN_MAX_NS ? window : SPIN_TURN_MAX_NS);
    while (!__atomic_load_n(stop, __ATOMIC_RELAXED) && (now = sock_now_ns()) < end && now < cap) {
        int any = 0;
        for (struct serve_conn *c = lp->conns; c != NULL; c = c->next) {
            if (session_spin_harvest(c->s) > 0) {
                serve_loop_dispatch(lp, c);
                any = 1;
            }
        }
        if (any)
            end = sock_now_ns() + window;
        else
            for (int i = 0; i < 16; i++)
                cpu_relax();
    }
    for (struct serve_conn *c = lp->conns; c != NULL; c = c->next) {
        session_spin_end(c->s);
        serve_loop_dispatch(lp, c);
    }
}

#define ASPIN_WAKE_NS 12000u    /* longer than this, a wake-up is cheaper */
#define ASPIN_SLACK_NS 3000u
#define ASPIN_PROBE_EVERY 64u
#define ASPIN_PROBE_NS 40000u   /* outlasts a client's own wake-up and turn */
#define ASPIN_REPROBES 3u       /* probes at once after a late client, in a row */
#define ASPIN_MAX_SESSIONS 8u   /* each spin turn looks at every session */

void serve_loop_awake(struct serve_loop *lp)
{
    if (lp->idle_ns != 0) {
        uint64_t now = sock_now_ns();
        lp->gap_ns = now > lp->idle_ns ? now - lp->idle_ns : 1;
        lp->idle_ns = 0;
    }
}

void serve_loop_idle(struct serve_loop *lp)
{
    if (lp->idle_ns == 0)
        lp->idle_ns = sock_now_ns();
}

/* No client has more than one answer of ours still to harvest: a client
 * behind on its answers is busy, not asleep, and comes back by itself. */
static int peers_caught_up(const struct serve_loop *lp)
{
    for (const struct serve_conn *c = lp->conns; c != NULL; c = c->next)
        if (queue_len(&c->s->qp.send) > 1)
            return 0;
    return 1;
}

int serve_loop_adaptive_spin(struct serve_loop *lp, const int *stop)
{
    if (!lp->adaptive || lp->n == 0 || lp->n > ASPIN_MAX_SESSIONS)
        return 0;
    uint64_t window;
    if (lp->gap_ns != 0 && lp->gap_ns < ASPIN_WAKE_NS) {
        window = lp->gap_ns + ASPIN_SLACK_NS;
    } else if (++lp->probe >= ASPIN_PROBE_EVERY) {
        window = ASPIN_PROBE_NS;
        lp->probe = 0;
    } else {
        return 0;
    }
    uint64_t idle = sock_now_ns(), end = idle + window, cap = idle + SPIN_TURN_MAX_NS;
    int came = 0, capped = 0;
    while (!__atomic_load_n(stop, __ATOMIC_RELAXED)) {
        if (idle >= cap) {
            capped = 1;
            break;
        }
        int any = 0;
        for (struct serve_conn *c = lp->conns; c != NULL; c = c->next) {
            if (session_spin_harvest(c->s) > 0) {
                if (!any) {
                    uint64_t now = sock_now_ns();
                    lp->gap_ns = now > idle ? now - idle : 1;
                }
                serve_loop_dispatch(lp, c);
                any = came = 1;
            }
        }
        uint64_t now = sock_now_ns();
        if (any) {
            idle = now;
            end = now + (lp->gap_ns < ASPIN_WAKE_NS ? lp->gap_ns : ASPIN_WAKE_NS) + ASPIN_SLACK_NS;
            continue;
        }
        if (now >= end)
            break;
        for (int i = 0; i < 16; i++)
            cpu_relax();
    }
    /* Nothing came within the window: the next turn sleeps (unless a
     * probe), and the gap is what the wake-up will measure. */
    if (!came)
        lp->gap_ns = ASPIN_WAKE_NS;
    /* Work came, then a quiet window: the client was late (a timer tick, a
     * sleep, or it stopped calling), not busy with answers we gave it
     * (peers_caught_up). The next turn probes, long enough for a client
     * that now has to be woken to come back while we spin: it then finds
     * us awake and spins for its answer too (leader.c), and neither side
     * sleeps again until one is late. Without it both would sleep because
     * the other did until the next periodic probe. A client that never
     * comes back in step (sooner than a wake-up: it thinks for tens of
     * microseconds between calls) gets ASPIN_REPROBES such probes, then
     * only the periodic ones. */
    if (came && !capped && peers_caught_up(lp)) {
        if (lp->gap_ns < ASPIN_WAKE_NS)
            lp->reprobes = 0;
        if (lp->reprobes < ASPIN_REPROBES) {
            lp->reprobes++;
            lp->probe = ASPIN_PROBE_EVERY - 1;
        }
    }
    lp->idle_ns = idle;
    for (struct serve_conn *c = lp->conns; c != NULL; c = c->next) {
        session_spin_end(c->s);
        serve_loop_dispatch(lp, c);
    }
    return capped;
}

int serve_loop_retry_blocked(struct serve_loop *lp)
{
    /* Called after every wake-up: with a thousand sessions a walk over
     * them all would cost more than the wake-up's work. */
    if (__atomic_load_n(&lp->nblocked, __ATOMIC_ACQUIRE) == 0)
        return 0;
    int any = 0;
    for (struct serve_conn *c = lp->conns; c != NULL; c = c->next)
        if (c->s->blocked != NULL)
            any |= session_retry_blocked(c->s) > 0;
    return any;
}

void serve_loop_drain(struct serve_loop *lp, uint64_t deadline_ns)
{
    for (;;) {
        for (struct serve_conn *c = lp->conns, *n; c != NULL; c = n) {
            n = c->next;
            serve_loop_ready(lp, c);
        }
        if (!serve_loop_retry_blocked(lp) || sock_now_ns() >= deadline_ns)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    while (lp->conns != NULL)
        serve_loop_close(lp, lp->conns);
}
