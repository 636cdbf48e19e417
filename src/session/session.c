/*
 * Serving a session (see session.h): one readiness event served as a
 * batch over the harvest, the socket and the driver's dispatch, and the
 * driver letting a session's streams go. The one rule: the receive
 * queue's working flag stays claimed while the handlers run, and only
 * session_spin_end() lets it go (re-checking the queue), so nothing the
 * peer queued meanwhile waits for a Polling that was skipped.
 */
#include "session/session.h"

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
