/*
 * The server side of session setup, shared by the library server and
 * shmipcd: mapping what a finished handshake names (memfds or confined
 * files) with each client pool mapped once per identity, and turning the
 * handshake into a running session.
 */
#ifndef SHMIPC_SESSION_ACCEPT_H
#define SHMIPC_SESSION_ACCEPT_H

#include "proto/handshake.h"
#include "session/session.h"

struct accept_limits {
    const char *allowed_dir; /* file-path mode: where client files may be */
    size_t max_pool_bytes;   /* largest client pool we agree to map */
};

/* At HS_MAP: maps the client's pool (or takes another reference on it if
 * another session of that client mapped it) and its queue pair, checking
 * both. On success *pool and *qregion belong to the caller. */
int accept_map(struct hs_server *hs, struct pool_registry *reg, const struct accept_limits *lim,
               struct pool_ref **pool, struct region *qregion);

#endif
