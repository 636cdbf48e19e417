/*
 * Sessions and streams: the protocol engine shared by the client and the
 * server. A session owns its socket and queue mapping and holds a
 * reference on its (possibly shared) pool. Nothing here starts threads:
 * whoever drives a session (the client's I/O thread, the server's loop)
 * calls session_on_io() when its socket is ready.
 *
 * Locking: one mutex per session guards its streams, their receive lists
 * and pending writes, the send queue (its only producer) and the output
 * buffer. The receive queue has one consumer: the driver, also under the
 * mutex. Pool pop/push are lock-free. Lock order: client/server locks
 * before a session's; never two sessions at once.
 *
 * Lifetimes: sessions and streams are reference counted. A stream holds a
 * reference on its session; a received message holds one on the pool, so
 * it stays readable after the session died.
 */
#ifndef SHMIPC_SESSION_SESSION_H
#define SHMIPC_SESSION_SESSION_H

#include <pthread.h>
#include <sys/epoll.h>
#include <stdint.h>

#include "shm/pool.h"
#include "shm/queue.h"
#include "shm/region.h"
#include "shmipc/shmipc.h"

/* A mapped pool, shared by the sessions of one client. */
struct pool_ref {
    struct region region;
    struct pool pool;
    uint64_t *held; /* one bit per slice: in a received message not yet
                       released (a peer that publishes it again is caught) */
    int refs; /* atomic */
    struct pool_registry *reg; /* NULL when not in a registry */
    struct pool_ref *next;     /* registry chain */
};

/* A server's pools, keyed by file identity (st_dev, st_ino). */
struct pool_registry {
    pthread_mutex_t mu;
    struct pool_ref *head;
    unsigned count;
};

void pool_registry_init(struct pool_registry *r);
/* A registered pool with that identity, with a new reference, or NULL. */
struct pool_ref *pool_registry_find(struct pool_registry *r, dev_t dev, ino_t ino);
/* Wraps a mapped region (taken over) in a pool_ref; registers it if reg. */
int pool_ref_new(struct region *rg, int creator, const struct pool_class *classes, unsigned n,
                 struct pool_registry *reg, struct pool_ref **out);
void pool_ref_get(struct pool_ref *p);
void pool_ref_put(struct pool_ref *p);

/* A received message (one flush of the peer). */
#define RX_INLINE_SEGS 4
struct rx_msg {
    struct rx_msg *next;
    struct pool_ref *pool;  /* NULL for a heap (fallback) message */
    uint32_t nseg;
    uint32_t len;
    struct shmipc_iov *iov;
    uint32_t *offs;         /* slice offsets to free */
    uint8_t *heap;          /* fallback payload */
    int trimmed;            /* its start was read by shmipc_stream_read */
    struct shmipc_iov iov_inline[RX_INLINE_SEGS];
    uint32_t offs_inline[RX_INLINE_SEGS];
};

enum stream_flags {
    ST_LOCAL_CLOSED = 1u << 0,  /* we sent close */
    ST_REMOTE_CLOSED = 1u << 1, /* the peer sent close */
    ST_FALLBACK = 1u << 2,      /* writes go as FallbackData for good */
    ST_IN_TABLE = 1u << 3,
    ST_READY = 1u << 4,         /* on the session's ready list (server) */
    ST_BLOCKED = 1u << 5,       /* on the session's blocked list (server) */
};

struct shmipc_stream {
    struct session *sess;
    uint32_t id;
    unsigned flags;
    int refs; /* atomic */
    struct rx_msg *rx_head, *rx_tail;
    uint32_t rx_count;
    size_t rx_off;              /* bytes of rx_head already read by stream_read */
    struct pool_writer w;       /* pending output in the pool */
    uint8_t *fb;                /* pending output in fallback mode */
    size_t fb_len, fb_cap;
    int has_unsent;             /* a finished message the full queue refused */
    uint32_t unsent_first;
    uint32_t unsent_len;
    pthread_cond_t cv;
    struct shmipc_stream *hnext; /* table chain */
    struct shmipc_stream *rnext; /* ready list */
    struct shmipc_stream *bnext; /* blocked list (server) */
    uint8_t seen_open;           /* touched by the dispatcher only */
    uint8_t seen_close;
    void *user;
};

enum session_role { ROLE_CLIENT = 0, ROLE_SERVER = 1 };

struct session_cfg {
    enum session_role role;
    uint8_t version;
    uint32_t max_event;
    int unhealthy_ms;
    int queue_full_retries;
    int queue_full_wait_ms;
    size_t out_limit;  /* server: unsent bytes that mark a peer not reading; also
                          bounds them plus received FallbackData not yet handled */
    unsigned max_streams;
    int notify_ready;  /* keep a list of streams with news (session_next_ready) */
    int spin_us;       /* client: a waiting recv spins on the queue this long */
    int self_driven;   /* no I/O thread: the caller's poll does all the I/O, so
                          waits for the socket are done in place */
    int defer_wakeups; /* client, self-driven: a flush made by the thread that
                          is handling a poll's results owes its Polling to the
                          next poll (see session_defer_wakeups) */
};

struct session_stats {
    uint64_t streams_opened, messages_sent, messages_received, bytes_sent, bytes_received;
    uint64_t wakeups_sent, wakeups_received, fallbacks_sent, fallbacks_received, queue_full;
    uint64_t protocol_errors;
};

struct session {
    pthread_mutex_t mu;
    pthread_cond_t out_cv; /* output buffer drained */
    int refs;              /* atomic */
    int fd;
    struct session_cfg cfg;
    struct pool_ref *pool;
    struct region qregion;
    struct queue_pair qp;
    int dead;
    int err;               /* why it died */
    char why[160];
    uint64_t unhealthy_until_ns;
    struct shmipc_stream **table;
    unsigned nbuckets, nstreams;
    uint32_t next_id;
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_len, out_cap;
    int ep_fd;             /* the epoll set that watches fd, or -1 */
    int ep_out;            /* EPOLLOUT is armed: output is waiting */
    epoll_data_t ep_data;
    size_t fb_pending;     /* atomic: bytes in streams' fallback buffers, not yet sent */
    size_t rx_heap;        /* atomic: received FallbackData messages not yet taken */
    int throttled;         /* session_on_io stopped reading at the limit above */
    struct shmipc_stream *ready_head, *ready_tail;
    struct shmipc_stream *blocked;  /* server: streams whose flush met a full queue */
    struct session_stats stats;
    int spinning;          /* a spinner holds the receive queue's working flag */
    uint64_t last_rx_ns;   /* atomic: when the peer last sent anything */
    uint64_t last_tx_ns;   /* atomic: when we last wrote an event */
    void *owner;           /* the client slot or server that drives it */
    int wake_owed;         /* we claimed the peer's working flag and owe it a
                              Polling (cfg.defer_wakeups) */
    unsigned wake_deferred; /* messages queued since, without a Polling */
    const void *wake_thread; /* the thread that owes it */
    int kick_fd;           /* the owner's eventfd: made readable when a Polling
                              is owed and *kick_need > 0 (a thread waits in the
                              owner's poll, or a caller took its fd) */
    const int *kick_need;
    int index;             /* session number inside its client */
};

/* Takes over fd, the queue region (mapped) and a pool reference. */
int session_new(const struct session_cfg *cfg, int fd, struct pool_ref *pool,
                struct region *qregion, struct session **out);
void session_get(struct session *s);
void session_put(struct session *s);

/* Reads everything the socket has, handles every event, harvests the
 * receive queue, writes pending output. Returns 0, or the error that
 * killed the session (which is then dead). */
int session_on_io(struct session *s);
/* Adds the session's socket to an epoll set, edge-triggered. Write
 * readiness is watched only while unsent output is buffered, so a peer
 * reading our wake-ups does not wake us. */
int session_watch(struct session *s, int epfd, epoll_data_t data);
void session_unwatch(struct session *s);

/* Marks the session dead (err, why), wakes every waiter, shuts the socket
 * down so the driver notices. Idempotent. Caller holds s->mu. */
void session_die_locked(struct session *s, int err, const char *why);
void session_die(struct session *s, int err, const char *why);

int session_alive(struct session *s);
/* Server: the last session_on_io() stopped reading because the session
 * holds as much unhandled input as it may (cfg.out_limit): its driver
 * dispatches, then calls session_on_io() again (the socket may still have
 * input, and an edge-triggered poller will not say so again). */
int session_throttled(struct session *s);
/* Heap bytes a received message costs while it waits in a stream. */
size_t rx_msg_heap_cost(const struct rx_msg *m);
/* 1 while new streams are refused after a fallback. */
int session_unhealthy(struct session *s);

/* Client: a new stream with the next id. SHMIPC_EUNHEALTHY, ECLOSED. */
int session_open_stream(struct session *s, shmipc_stream **out);

/* With cfg.notify_ready: pops the next stream that has messages or news (a
 * reference is passed to the caller), NULL when none. */
shmipc_stream *session_next_ready(struct session *s);
/* Server: takes the stream's next message; 0, or SHMIPC_EQEMPTY. Sets
 * *closed when the peer closed and nothing is left. */
int stream_take(shmipc_stream *st, shmipc_msg *m, int *closed);
/* Removes a stream from its session's table (server, after the close). */
void stream_forget(shmipc_stream *st);

void stream_get(shmipc_stream *st);
/* The stream a server handler is running for on this thread (the
 * dispatcher sets it around each call): it is lent, not owned, so
 * shmipc_stream_close() on it must not drop the dispatcher's reference. */
extern _Thread_local shmipc_stream *stream_lent;
/* 1 if the stream can be pooled for reuse. */
int stream_reusable(shmipc_stream *st);

void session_add_stats(struct session *s, struct shmipc_stats *st);

#endif

/* ---- used by stream.c (callers hold s->mu) ---- */

/* Queues an event (header + optional payload) on the socket without
 * blocking: what the socket does not take waits in the output buffer. */
int session_send_locked(struct session *s, const void *ev, size_t evlen, const void *payload,
                        size_t plen);
/* Publishes one queue element, waking the peer if the working flag says
 * so; on a full queue a client retries (unlocking meanwhile) and a server
 * reports SHMIPC_EQFULL at once. */
int session_put_elem_locked(struct session *s, const struct shmipc_queue_elem *e);
/* Server: what the session holds for a peer that does not take it (the
 * output buffer plus the streams' pending fallback bytes plus `more`)
 * must stay within cfg.out_limit; beyond it the peer is not reading and
 * the session dies (counted as a protocol error). Returns 1 then. */
int session_over_limit_locked(struct session *s, size_t more);
/* Client: waits (unlocked) until the output buffer drains, up to the
 * deadline. */
int session_wait_output_locked(struct session *s, uint64_t deadline_ns);
void rx_msg_free(struct rx_msg *m);
/* A message whose slices go on elsewhere (forwarded): clears their held
 * marks / frees the bookkeeping only, neither the slices nor the pool
 * reference. */
void rx_msg_unhold(struct rx_msg *m);
void rx_msg_drop(struct rx_msg *m);
void stream_unlink_locked(struct session *s, shmipc_stream *st);
/* Low-latency mode: claims the receive queue's working flag (so the peer
 * skips its Polling event) and harvests whatever is queued; returns how
 * many elements it took. A spinner must call session_spin_end() before it
 * sleeps: that clears the flag the safe way (store 0, re-check). */
int session_spin_harvest(struct session *s);
void session_spin_end(struct session *s);

/* Server: serves one readiness event as a batch. The receive queue's
 * working flag stays claimed while dispatch() runs the handlers (the peer
 * skips its Polling for requests it queues meanwhile, and they are taken
 * in the same turn), and a session throttled at its input limit is served
 * until it is not. Answers are not held back for one Polling at the end:
 * the peer starts on the first while we work on the rest. Returns
 * session_alive(). */
int session_serve(struct session *s, void (*dispatch)(void *arg), void *arg);

/* Deferred wake-ups (cfg.defer_wakeups). A poll loop handles a batch of
 * answers and flushes a request for each: one Polling at the end wakes
 * the peer for all of them. session_defer_wakeups(owner) marks the
 * calling thread as handling the results of owner's poll: its flushes on
 * owner's sessions claim the peer's working flag but owe the Polling,
 * which is sent once WAKE_DEFER_MAX messages wait, when another thread
 * queues on the session, by session_ring_wakeup(), or when this thread
 * calls session_defer_wakeups() for another owner or NULL (or ends).
 * Flushes from other threads never wait for it. */
#define WAKE_DEFER_MAX 32
void session_defer_wakeups(const void *owner);
/* Sends the Polling the session owes, if any. */
int session_ring_wakeup(struct session *s);

/* Sends a Polling event as a keepalive (harmless to every peer). */
int session_keepalive(struct session *s);

/* The driver lets a session go: every stream leaves the table (streams a
 * caller still holds keep working until they notice the session died). */
void session_release_streams(struct session *s);
void stream_put(shmipc_stream *st);
/* Server: retries the flushes that met a full queue. Returns how many
 * streams are still blocked. */
unsigned session_retry_blocked(struct session *s);
