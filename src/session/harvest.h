/*
 * The receive queue's harvest: every element the peer queued becomes a
 * message (its slice chain checked once, slice by slice) delivered to its
 * stream. The one rule: a chain is trusted only as the copy checked here,
 * and a bad one kills this session only. Callers hold s->mu for the
 * _locked calls.
 */
#ifndef SHMIPC_SESSION_HARVEST_H
#define SHMIPC_SESSION_HARVEST_H

#include "session/core.h"

struct rx_msg;

/* Takes every queued element, then clears the working flag (re-checking
 * the queue) unless a spinner holds it. 0 or the error that closed the
 * session. */
int harvest_locked(struct session *s);
/* Adaptive spin (leader.c): a stream's answer that was harvested after its
 * reader slept counts as this long in the session's recent answer time. */
#define RTT_SLEPT_NS 20000u

/* Appends a received message to the stream and wakes its readers. */
void deliver_locked(struct session *s, shmipc_stream *st, struct rx_msg *m);
/* The peer closed the stream: its readers wake to the end. */
void remote_close_locked(struct session *s, shmipc_stream *st);

/* Low-latency mode: claims the receive queue's working flag (so the peer
 * skips its Polling event) and harvests whatever is queued; returns how
 * many elements it took. A spinner must call session_spin_end() before it
 * sleeps: that clears the flag the safe way (store 0, re-check). */
int session_spin_harvest(struct session *s);
void session_spin_end(struct session *s);

#endif
