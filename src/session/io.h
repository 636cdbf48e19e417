/*
 * Driving a session's socket: what a readiness event asks for (read every
 * event, handle each, write pending output, harvest the queue), and the
 * waits that must drive the socket themselves. The one rule: every event
 * the peer wrote is validated here before a stream sees it, and a
 * violation kills this session only.
 */
#ifndef SHMIPC_SESSION_IO_H
#define SHMIPC_SESSION_IO_H

#include <stdint.h>

#include "session/core.h"

/* Reads everything the socket has, handles every event, harvests the
 * receive queue, writes pending output. Returns 0, or the error that
 * killed the session (which is then dead). */
int session_on_io(struct session *s);
/* Server: the last session_on_io() stopped reading because the session
 * holds as much unhandled input as it may (cfg.out_limit): its driver
 * dispatches, then calls session_on_io() again (the socket may still have
 * input, and an edge-triggered poller will not say so again). */
int session_throttled(struct session *s);
/* Threaded client, the reader (leader.c): reads what the socket holds
 * (stopping at a short read: the reader polls level-triggered), handles
 * it, writes pending output and harvests the queue. Caller holds s->mu. */
int session_read_locked(struct session *s);
/* Threaded client, the reader: waits for input in a blocking read (the
 * socket is blocking; everyone else reads and writes with MSG_DONTWAIT)
 * until the deadline or a second, then handles what came as
 * session_read_locked() does. s->mu is let go meanwhile (the followers
 * its deliveries woke are woken first). Caller holds s->mu. */
int session_read_wait_locked(struct session *s, uint64_t deadline_ns);
/* Threaded client: turns the I/O thread's watch of the socket's input off
 * (park = 1) while a caller reads, and back on (0). Output readiness and
 * hang-ups still reach the I/O thread. Caller holds s->mu. */
void session_park_io_locked(struct session *s, int park);
/* Client: waits (unlocked) until the output buffer drains, up to the
 * deadline. Caller holds s->mu. */
int session_wait_output_locked(struct session *s, uint64_t deadline_ns);

/* ---- hot restart (PROTOCOL.md 8) ----
 * Server: session_hot_restart() sends HotRestart(epoch); the client opens
 * a replacement session, lets its streams here finish and acks; once
 * acked and quiet (session_hot_quiet) the driver closes the session.
 * Client: a HotRestart marks the session retiring (cfg.on_hot_restart
 * tells the owner): no new stream opens on it (session_open_stream says
 * SHMIPC_ERETIRED), idle streams are not reused, and the ack goes out by
 * itself once its last stream has left it. */
/* Server: sends HotRestart(epoch) once. 1 when sent now, 0 when it was
 * already (or the session is dead). */
int session_hot_restart(struct session *s, uint64_t epoch);
/* Server: the client acked, and nothing is in flight: no stream is held
 * beyond the table (by a handler or a ready list), none has unread input
 * or a blocked flush, and the output is written. */
int session_hot_quiet(struct session *s);
/* Client: a HotRestart came (HOT_RETIRING or HOT_ACK_SENT). */
int session_retiring(struct session *s);
/* Client: acks when the session is retiring and its last stream left.
 * Caller holds s->mu. */
void session_hot_ack_locked(struct session *s);

#endif
