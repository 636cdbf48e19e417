/*
 * A threaded client's session is driven by the callers that wait on it
 * (leader and followers): the first thread that waits for a message and
 * finds nobody reading becomes the session's reader, the others wait on
 * their stream. The I/O thread reads only while no caller waits (and
 * sees hang-ups at once; what else comes while no caller waits, at its
 * next tick, or at a caller's next look).
 *
 * The one rule: while s->reader is set, only the reader reads the socket
 * or harvests the receive queue (a message delivered by anyone else would
 * leave the reader asleep in poll() with its answer in hand).
 */
#ifndef SHMIPC_SESSION_LEADER_H
#define SHMIPC_SESSION_LEADER_H

#include <stdint.h>

#include "session/core.h"

/* Waits (cfg.callers_read) until st has a message (0), the peer closed it
 * (SHMIPC_ECLOSED), the session died (its error) or the deadline passed
 * (SHMIPC_ETIMEDOUT): as the session's reader if nobody reads it, else on
 * the stream's condition variable. Caller holds s->mu. */
int session_wait_rx_locked(struct session *s, shmipc_stream *st, uint64_t deadline_ns);

/* A look at the stream without waiting (cfg.callers_read): reads the
 * socket when the I/O thread's watch is still off after the last reader
 * left (the I/O thread turns it on again only at its next tick). Caller
 * holds s->mu. */
int session_poll_rx_locked(struct session *s);

/* The I/O thread, about once a second: turns its watch of the socket back
 * on when the session's last reader left it off and no caller read since
 * the last tick. */
void session_reader_tick(struct session *s);

/* Wake-up batching (cfg.callers_read): a caller that flushed and is about
 * to wait counts as awake until it sleeps; the Polling a flush owes is
 * sent by the last awake caller before it sleeps (see leader.c). Caller
 * holds s->mu. */
void session_caller_enter_locked(struct session *s);
void session_caller_leave_locked(struct session *s);

/* 1 where spinning can pay: more than one CPU online and in this
 * process's affinity. */
int session_spin_allowed(void);

#endif
