/*
 * Streams (the public stream API; see stream.c) and what the session's
 * drivers do with them.
 */
#ifndef SHMIPC_SESSION_STREAM_H
#define SHMIPC_SESSION_STREAM_H

#include "session/core.h"

void stream_get(shmipc_stream *st);
void stream_put(shmipc_stream *st);
/* Server: takes the stream's next message; 0, or SHMIPC_EQEMPTY. Sets
 * *closed when the peer closed and nothing is left. */
int stream_take(shmipc_stream *st, shmipc_msg *m, int *closed);
/* Removes a stream from its session's table (server, after the close). */
void stream_forget(shmipc_stream *st);
/* The stream a server handler is running for on this thread (the
 * dispatcher sets it around each call): it is lent, not owned, so
 * shmipc_stream_close() on it must not drop the dispatcher's reference. */
extern _Thread_local shmipc_stream *stream_lent;
/* Server: while a stream is paused its messages stay queued: the
 * dispatcher hands none on (a deferred answer to an earlier one is
 * pending, and answers keep their order). stream_resume(), from any
 * thread, lifts it and puts the stream on the ready list again; the
 * caller then gets the session dispatched. */
void stream_pause(shmipc_stream *st);
int stream_paused(shmipc_stream *st);
void stream_resume(shmipc_stream *st);
/* 1 once this side sent its close (shutdown): nothing more can go out. */
int stream_closed_here(shmipc_stream *st);
/* shmipc_call(): write, flush and wait for one message. */
int stream_call(shmipc_stream *st, const void *req, size_t n, shmipc_msg *resp, int timeout_ms);
/* 1 if the stream can be pooled for reuse. */
int stream_reusable(shmipc_stream *st);
/* Server: retries the flushes that met a full queue. Returns how many
 * streams are still blocked. */
unsigned session_retry_blocked(struct session *s);

#endif
