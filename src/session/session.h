/*
 * Sessions and streams: the protocol engine shared by the client and the
 * server. A session owns its socket and queue mapping and holds a
 * reference on its (possibly shared) pool. Nothing here starts threads:
 * whoever drives a session (the client's I/O thread, the server's loop)
 * calls session_on_io() when its socket is ready.
 *
 * This is the engine's one header for the files that drive sessions; the
 * engine's own files include only the parts below them, from the ground
 * up: pool_ref (pools), rx_msg (received messages), core (the session
 * object, its locking and lifetimes), table (streams by id), output,
 * wakeup (Pollings), harvest (the receive queue), io (the socket), leader
 * (a threaded client's waiting callers driving it), stream (the stream
 * API), and session.c (serving a session as a batch).
 */
#ifndef SHMIPC_SESSION_SESSION_H
#define SHMIPC_SESSION_SESSION_H

#include "session/pool_ref.h"
#include "session/rx_msg.h"
#include "session/core.h"
#include "session/table.h"
#include "session/output.h"
#include "session/wakeup.h"
#include "session/harvest.h"
#include "session/io.h"
#include "session/leader.h"
#include "session/stream.h"

/* Server: serves one readiness event as a batch. The receive queue's
 * working flag stays claimed while dispatch() runs the handlers (the peer
 * skips its Polling for requests it queues meanwhile, and they are taken
 * in the same turn), and a session throttled at its input limit is served
 * until it is not. Answers are not held back for one Polling at the end:
 * the peer starts on the first while we work on the rest. Returns
 * session_alive(). */
int session_serve(struct session *s, void (*dispatch)(void *arg), void *arg);

/* The driver lets a session go: every stream leaves the table (streams a
 * caller still holds keep working until they notice the session died). */
void session_release_streams(struct session *s);

#endif
