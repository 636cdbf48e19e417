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
/* Client: waits (unlocked) until the output buffer drains, up to the
 * deadline. Caller holds s->mu. */
int session_wait_output_locked(struct session *s, uint64_t deadline_ns);

#endif
