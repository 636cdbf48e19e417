/*
 * Waking the peer for what we queue: publishing a queue element and the
 * Polling event it may need, sent at once or, with cfg.defer_wakeups, owed
 * by the thread handling a poll's results and sent once for the batch.
 * The one rule: a Polling is owed only while we hold the peer's working
 * flag, and whoever clears wake_owed sends it.
 */
#ifndef SHMIPC_SESSION_WAKEUP_H
#define SHMIPC_SESSION_WAKEUP_H

#include "session/core.h"

/* Publishes one queue element, waking the peer if the working flag says
 * so; on a full queue a client retries (unlocking meanwhile) and a server
 * reports SHMIPC_EQFULL at once. Caller holds s->mu. */
int session_put_elem_locked(struct session *s, const struct shmipc_queue_elem *e);

/* Deferred wake-ups (cfg.defer_wakeups). A poll loop handles a batch of
 * answers and flushes a request for each: one Polling at the end wakes
 * the peer for all of them. session_defer_wakeups(owner) marks the
 * calling thread as handling the results of owner's poll: its flushes on
 * owner's sessions claim the peer's working flag but owe the Polling,
 * which is sent once WAKE_DEFER_MAX messages wait, when another thread
 * queues on the session, by session_ring_wakeup(), or when this thread
 * calls session_defer_wakeups() for another owner or NULL (or ends).
 * Flushes from other threads never wait for it. A threaded client
 * (cfg.callers_read) batches the flushes of its callers instead: see
 * leader.c. */
#define WAKE_DEFER_MAX 32
void session_defer_wakeups(const void *owner);
/* Sends the Polling the session owes, if any. */
int session_ring_wakeup(struct session *s);
/* The same, caller holding s->mu. */
int ring_locked(struct session *s);

/* Sends a Polling event as a keepalive (harmless to every peer). */
int session_keepalive(struct session *s);

#endif
