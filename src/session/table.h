/*
 * A session's stream table: streams by id, their birth, and their leaving
 * the table. The one rule: the table holds a reference on every stream in
 * it (ST_IN_TABLE), and each stream one on its session. Callers hold s->mu
 * for the _locked calls.
 */
#ifndef SHMIPC_SESSION_TABLE_H
#define SHMIPC_SESSION_TABLE_H

#include <stdint.h>

#include "session/core.h"

/* The stream with that id, or NULL. */
shmipc_stream *lookup_locked(struct session *s, uint32_t id);
/* Finds the stream an incoming message or close belongs to; a server
 * opens it implicitly on its first open-status message (NULL, the session
 * killed, when that would pass cfg.max_streams). */
shmipc_stream *stream_for_locked(struct session *s, uint32_t id, int opening);
/* Takes the stream out of the table; the caller puts the table's
 * reference. A stream not in the table is left alone. */
void stream_unlink_locked(struct session *s, shmipc_stream *st);

/* Client: a new stream with the next id. SHMIPC_EUNHEALTHY, ECLOSED. */
int session_open_stream(struct session *s, shmipc_stream **out);

#endif
