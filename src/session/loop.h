/*
 * The serving loop of one server thread, shared by the library's server
 * and shmipcd's workers: its sessions, each served as a batch on
 * readiness (harvest, then every ready stream's messages to the handler
 * in stream order), flushes that met a full queue retried, the
 * low-latency spin, and the close of a session with a last dispatch.
 *
 * Threads: everything but serve_loop_count() and walking `conns` under
 * `mu` (what other threads may do, e.g. an admin command) runs on the
 * loop's thread. The handler runs there too and must not block.
 */
#ifndef SHMIPC_SESSION_LOOP_H
#define SHMIPC_SESSION_LOOP_H

#include <pthread.h>

#include "session/serve_tag.h"
#include "session/session.h"

/* A session in a loop; owners embed it (first member) in their own. */
struct serve_conn {
    struct serve_tag tag; /* SERVE_SESSION: the epoll data of the socket */
    struct session *s;
    struct serve_conn *next;
};

struct serve_handler {
    /* A stream's first news (optional). */
    void (*open)(void *ctx, struct serve_conn *c, shmipc_stream *st);
    /* A message: the handler owns *m and releases it, now or later.
     * Returns 1 when it paused the stream (stream_pause: its next
     * messages wait until stream_resume), else 0. */
    int (*message)(void *ctx, struct serve_conn *c, shmipc_stream *st, shmipc_msg *m);
    /* The peer closed the stream, or the session ended (optional). */
    void (*close)(void *ctx, struct serve_conn *c, shmipc_stream *st);
    /* After each dispatch pass over a session (optional). */
    void (*pass_end)(void *ctx, struct serve_conn *c);
    /* The session left the loop and is closed: the owner's last look at
     * c (counters, logs); it frees c. c->s is still readable, and put by
     * the loop right after. */
    void (*closed)(void *ctx, struct serve_conn *c);
};

struct serve_loop {
    int epfd;           /* the thread's epoll set (the owner's) */
    pthread_mutex_t mu; /* guards conns and n against other threads */
    struct serve_conn *conns;
    unsigned n;
    int nblocked;       /* atomic: sessions with flushes a full queue blocked */
    const struct serve_handler *h;
    void *ctx;
    /* Adaptive spin (serve_loop_adaptive_spin), on the loop's thread. */
    int adaptive;       /* allowed: set by the owner (more than one CPU) */
    uint64_t idle_ns;   /* when the loop last went idle, 0 before */
    uint64_t gap_ns;    /* how soon work came back after it went idle */
    unsigned probe;     /* idle turns since the last probe spin */
    unsigned reprobes;  /* probes at once since work last came in step */
};

void serve_loop_init(struct serve_loop *lp, int epfd, const struct serve_handler *h, void *ctx);
/* Closes every session left, then frees the loop's own resources. */
void serve_loop_destroy(struct serve_loop *lp);
/* Takes c (c->s set): watches its socket, then serves it at once (a
 * file-path client may have queued requests before the handshake ended).
 * A session that cannot be watched is closed. */
void serve_loop_add(struct serve_loop *lp, struct serve_conn *c);
/* Its socket is ready: serve the batch; a dead session is closed. */
void serve_loop_ready(struct serve_loop *lp, struct serve_conn *c);
/* Runs the handler over every stream with news. */
void serve_loop_dispatch(struct serve_loop *lp, struct serve_conn *c);
/* Closes c: the handler hears of every stream's end, then `closed`. */
void serve_loop_close(struct serve_loop *lp, struct serve_conn *c);
/* Low-latency mode: polls every session's queue for spin_us after work
 * (holding the working flags, so clients skip their Polling), new work
 * restarting the window; stops early when *stop becomes non-zero. */
void serve_loop_spin(struct serve_loop *lp, int spin_us, const int *stop);
/* Adaptive spin, for a loop with few sessions whose peers come back
 * sooner than a wake-up takes (a client making one call after another):
 * after a turn that served work it polls its sessions' queues for as long
 * as work recently took to come back plus a little, holding the working
 * flags so the clients skip their Pollings; never longer than a wake-up
 * (SPIN_WAKE). Once every few dozen idle turns, and on the turn after a
 * client came late, a longer probe notices clients that became fast, or
 * that had to be woken before they could come back. serve_loop_awake()
 * is called when epoll_wait returned work, serve_loop_idle() before the
 * loop sleeps. */
void serve_loop_awake(struct serve_loop *lp);
/* Returns 1 when it stopped only because it ran SPIN_TURN_MAX_NS with work
 * still coming: the owner runs its own loop without sleeping (epoll_wait
 * with no timeout) and calls it again, so the clients keep being served
 * by the spin while new sessions, jobs and stops are still looked at. */
int serve_loop_adaptive_spin(struct serve_loop *lp, const int *stop);
void serve_loop_idle(struct serve_loop *lp);
/* Retries flushes that met a full queue; 1 while any stream stays
 * blocked (the caller polls again soon). */
int serve_loop_retry_blocked(struct serve_loop *lp);
/* Stop: serves what is queued and retries what is blocked until nothing
 * is or the deadline passed, then closes every session. */
void serve_loop_drain(struct serve_loop *lp, uint64_t deadline_ns);
/* Hot restart (PROTOCOL.md 8): tells every session HotRestart(epoch)
 * once (those told already are skipped, so it may run on every turn and
 * reach sessions added since), and closes the ones whose client acked
 * and that have nothing in flight. Returns the sessions left. A session
 * that acks is closed by serve_loop_ready() as soon as it is quiet. */
unsigned serve_loop_hot_restart(struct serve_loop *lp, uint64_t epoch);
/* Sessions in the loop (any thread). */
unsigned serve_loop_count(struct serve_loop *lp);

#endif
