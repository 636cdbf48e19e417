/*
 * The server side of session setup, shared by the library server and
 * shmipcd: connections accepted on listeners, handshakes run as
 * non-blocking state machines with deadlines (a client that stalls costs
 * only its own deadline), the client's memory mapped (each pool once per
 * identity, through the pool registry), and the session started with the
 * listener's settings.
 *
 * Ownership: a struct serve_accept owns its handshakes in progress; a
 * started session goes to the owner's `started` callback, which takes it.
 * Everything runs on the thread that owns the epoll set.
 */
#ifndef SHMIPC_SESSION_ACCEPT_H
#define SHMIPC_SESSION_ACCEPT_H

#include <stddef.h>

#include "proto/handshake.h"
#include "session/listener.h"
#include "session/session.h"

/* What a listener's sessions get: the one place for these settings and
 * their defaults (serve_settings_init). */
struct serve_settings {
    const char *allowed_dir;  /* file-path mode: where client files may be */
    size_t max_pool_bytes;    /* largest client pool we agree to map */
    int handshake_timeout_ms; /* the whole handshake */
    uint32_t max_event_bytes; /* largest event a peer may send */
    int unhealthy_ms;         /* after a fallback, new streams are refused */
    unsigned max_streams;     /* per session, 0: no limit */
};

/* /dev/shm, 1 GiB, 1000 ms, 32 MiB, 30000 ms, 65536. */
void serve_settings_init(struct serve_settings *s);
/* The config of a server session with these settings (also for one
 * started elsewhere from a handed-over socket and memory). */
struct session_cfg serve_session_cfg(const struct serve_settings *set, uint8_t version,
                                     void *owner, int index);

struct accept_limits {
    const char *allowed_dir;
    size_t max_pool_bytes;
};

/* At HS_MAP: maps the client's pool (or takes another reference on it if
 * another session of that client mapped it) and its queue pair, checking
 * both. On success *pool and *qregion belong to the caller. */
int accept_map(struct hs_server *hs, struct pool_registry *reg, const struct accept_limits *lim,
               struct pool_ref **pool, struct region *qregion);

/* A handshake in progress. */
struct serve_hs {
    struct serve_tag tag; /* SERVE_HANDSHAKE: the epoll data of its fd */
    struct hs_server hs;
    struct pool_ref *pool;
    struct region qregion;
    struct serve_listener *l;
    const struct serve_settings *set;
    long long uid; /* the owner's, from admit (-1: none) */
    struct serve_hs *next;
};

struct serve_accept_ops {
    /* A new connection on l (optional): 0 to shake hands, *uid set for the
     * later callbacks; or a negative code with why filled: the connection
     * is closed, and `ended` is not called. */
    int (*admit)(void *owner, struct serve_listener *l, int fd, long long *uid, char *why,
                 size_t whylen);
    /* The session is set up (neither watched nor served yet): the owner
     * takes it and the uid. */
    void (*started)(void *owner, struct serve_listener *l, long long uid, struct session *s);
    /* A handshake ended without a session: failed (rc < 0, why says why;
     * already logged) or dropped (rc == 0: its listener went, or the
     * server closes). The owner releases the uid, counts the failure. */
    void (*ended)(void *owner, struct serve_listener *l, long long uid, int rc, const char *why);
};

struct serve_accept {
    int epfd;
    struct pool_registry *reg;
    struct serve_hs *hs;
    unsigned nhs;
    const struct serve_accept_ops *ops;
    void *owner;
    int started; /* sessions started: the next one's number (s->index) */
};

void serve_accept_init(struct serve_accept *a, int epfd, struct pool_registry *reg,
                       const struct serve_accept_ops *ops, void *owner);
/* Accepts every connection waiting on l and starts its handshake with
 * set; the session limit is the owner's (admit). */
void serve_accept_listener(struct serve_accept *a, struct serve_listener *l,
                           const struct serve_settings *set);
/* Moves a handshake on after its fd became ready. */
void serve_accept_step(struct serve_accept *a, struct serve_hs *h);
/* Fails the handshakes past their deadline; ms until the next deadline
 * (1000 when none). */
int serve_accept_expire(struct serve_accept *a);
/* Drops the handshakes of listener l (NULL: all), `ended` with rc 0. */
void serve_accept_drop(struct serve_accept *a, const struct serve_listener *l);

#endif
