/*
 * The session object: its struct and its streams' struct, its references
 * and its death, which every other part of the engine may cause.
 *
 * Locking: one mutex per session guards its streams, their receive lists
 * and pending writes, the send queue (its only producer) and the output
 * buffer. The receive queue has one consumer: the driver, also under the
 * mutex (a threaded client's driver is its reading caller while one
 * waits: leader.h). Pool pop/push are lock-free; a large write copies into
 * its stream's slices without the mutex (one thread writes a stream).
 * Lock order: client/server locks before a session's; never two sessions
 * at once.
 *
 * Lifetimes: sessions and streams are reference counted. A stream holds a
 * reference on its session; a received message holds one on the pool, so
 * it stays readable after the session died.
 */
#ifndef SHMIPC_SESSION_CORE_H
#define SHMIPC_SESSION_CORE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>

#include "shm/pool.h"
#include "shm/queue.h"
#include "shm/region.h"
#include "shmipc/shmipc.h"

struct pool_ref;
struct rx_msg;

enum stream_flags {
    ST_LOCAL_CLOSED = 1u << 0,  /* we sent close */
    ST_REMOTE_CLOSED = 1u << 1, /* the peer sent close */
    ST_FALLBACK = 1u << 2,      /* writes go as FallbackData for good */
    ST_IN_TABLE = 1u << 3,
    ST_READY = 1u << 4,         /* on the session's ready list (server) */
    ST_BLOCKED = 1u << 5,       /* on the session's blocked list (server) */
    ST_PAUSED = 1u << 6,        /* server: its messages wait (a deferred answer) */
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
    uint64_t flush_ns;           /* adaptive spin: when the request now answered went out */
    unsigned sleeping;           /* callers asleep on cv, not counted in sess->awake */
    unsigned wake_gen;           /* bumped when a delivery counts them awake again */
};

enum session_role { ROLE_CLIENT = 0, ROLE_SERVER = 1 };

/* Where a hot restart stands (io.h). */
enum hot_state {
    HOT_NONE = 0,
    HOT_SENT,     /* server: HotRestart sent, no ack yet */
    HOT_ACKED,    /* server: the client acked */
    HOT_RETIRING, /* client: HotRestart received, streams still open */
    HOT_ACK_SENT, /* client: acked; the server closes it */
};


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
    int callers_read;  /* client with an I/O thread: a caller waiting for a
                          message reads the session itself (leader.h) */
    int adaptive_spin; /* with callers_read: the reader spins briefly when
                          recent answers came sooner than a wake-up */
    void *owner;       /* the client or server that drives it */
    /* Client: a HotRestart arrived (called under s->mu; it may only note
     * it and wake the owner, which replaces the session: io.h). */
    void (*on_hot_restart)(void *owner);
    int index;         /* its number for logs (inside its client, or its server) */
    int kick_fd;       /* with kick_need: the owner's eventfd (see struct session) */
    const int *kick_need;
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
    int *blocked_sessions; /* server: its loop's count of sessions with a blocked
                              list (atomic; kept by stream.c), or NULL */
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
    /* cfg.callers_read (leader.c): the callers that wait drive the session. */
    const void *reader;    /* the thread reading for the waiters, or NULL */
    int io_parked;         /* the I/O thread's watch of input is off: a reader
                              reads, or one did lately (see leader.c) */
    unsigned followers;    /* callers waiting on their stream for the reader */
    uint32_t fseq;         /* followers sleep on this futex word (bumped under mu
                              when they have news), each with its stream's bit */
    uint32_t wake_bits;    /* atomic: bits of followers to wake after the unlock */
    unsigned reader_turns; /* readers so far; what the I/O thread last saw */
    unsigned turns_seen;
    unsigned awake;        /* callers inside a call on this session that are not
                              asleep (wake-up batching, leader.c) */
    uint64_t rtt_ns;       /* recent flush-to-answer time (adaptive spin) */
    unsigned spin_probe;   /* waits since the last spin probe */
    int peer_awake;        /* the last flush found the peer harvesting: its
                              working flag set, by itself (nothing owed, and
                              not still ours from an earlier flush: it took
                              something since) */
    int64_t flag_head;     /* the peer's counter when we last set its working
                              flag (INT64_MIN: never) */
    unsigned awake_backoff; /* waits before a spin on an awake peer again
                              (one found it slow) */
    uint64_t spin_wake_ns; /* the longest spin without an answer time known;
                              0: SPIN_WAKE_NS (leader.c; tests lengthen it) */
    uint64_t rcvtimeo_ns;  /* the socket's SO_RCVTIMEO (the reader's blocking read) */
    int rd_blocking;       /* the socket is blocking: the reader waits in recv() */
    int rx_woke;           /* what is harvested now came after a sleep (a Polling
                              woke its reader): its answer times say nothing of
                              how soon the peer answers */
    int hot;               /* enum hot_state: where a hot restart stands */
    uint64_t hot_epoch;    /* the epoch of that hot restart */
};

/* Takes over fd, the queue region (mapped) and a pool reference. */
int session_new(const struct session_cfg *cfg, int fd, struct pool_ref *pool,
                struct region *qregion, struct session **out);
void session_get(struct session *s);
void session_put(struct session *s);

int session_alive(struct session *s);
/* 1 while new streams are refused after a fallback. */
int session_unhealthy(struct session *s);

/* Marks the session dead (err, why), wakes every waiter, shuts the socket
 * down so the driver notices. Idempotent. Caller holds s->mu. */
void session_die_locked(struct session *s, int err, const char *why);
void session_die(struct session *s, int err, const char *why);
/* The peer broke the protocol: counts it, logs it and kills the session
 * with err (SHMIPC_ECORRUPT if the peer shrank its memory). Returns the
 * error reported. Caller holds s->mu. */
int protocol_error(struct session *s, int err, const char *what);

/* Followers (leader.c) sleep on s->fseq with a bit of their stream's id:
 * the bit, and waking those of `bits` (FOLLOWERS_ALL: every one). A
 * deliverer bumps fseq and collects bits in s->wake_bits under s->mu,
 * then wakes them after unlocking (session_wake_followers), so that they
 * do not wake to a mutex it still holds. */
#define FOLLOWERS_ALL 0xffffffffu
static inline uint32_t follower_bit(const shmipc_stream *st)
{
    return 1u << (st->id % 32u);
}
void session_futex_wake(struct session *s, uint32_t bits);
/* Wakes the followers that deliveries made while s->mu was held have
 * news for; called after unlocking (any thread holding a reference). */
void session_wake_followers(struct session *s);

/* With cfg.notify_ready: puts a stream with news on the ready list (which
 * takes a reference), once. Caller holds s->mu. */
void mark_ready_locked(struct session *s, shmipc_stream *st);
/* With cfg.notify_ready: pops the next stream that has messages or news (a
 * reference is passed to the caller), NULL when none. */
shmipc_stream *session_next_ready(struct session *s);

void session_add_stats(struct session *s, struct shmipc_stats *st);

#endif
