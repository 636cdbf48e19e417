/*
 * A session's output: events go to the socket without blocking, and what
 * it does not take waits in the output buffer, with EPOLLOUT armed only
 * while it does. The one rule: what a server holds for a peer that does
 * not read is bounded (cfg.out_limit); beyond it the session dies.
 */
#ifndef SHMIPC_SESSION_OUTPUT_H
#define SHMIPC_SESSION_OUTPUT_H

#include <stddef.h>
#include <sys/epoll.h>

#include "session/core.h"

/* Adds the session's socket to an epoll set, edge-triggered. Write
 * readiness is watched only while unsent output is buffered, so a peer
 * reading our wake-ups does not wake us. */
int session_watch(struct session *s, int epfd, epoll_data_t data);
void session_unwatch(struct session *s);

/* ---- callers hold s->mu ---- */

/* Queues an event (header + optional payload) on the socket without
 * blocking: what the socket does not take waits in the output buffer. */
int session_send_locked(struct session *s, const void *ev, size_t evlen, const void *payload,
                        size_t plen);
/* Writes as much of the output buffer as the socket takes. 0, or the
 * error that killed the session. */
int flush_out_locked(struct session *s);
/* Server: what the session holds for a peer that does not take it (the
 * output buffer plus the streams' pending fallback bytes plus `more`)
 * must stay within cfg.out_limit; beyond it the peer is not reading and
 * the session dies (counted as a protocol error). Returns 1 then. */
int session_over_limit_locked(struct session *s, size_t more);

#endif
