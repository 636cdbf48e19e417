/*
 * libshmipc: shared-memory IPC speaking the shmipc wire protocol.
 *
 * A session is one socket plus a shared buffer pool and a queue pair. A
 * stream is a numbered conversation inside a session. Payloads are written
 * into pool slices and handed to the peer by offset: nothing is copied on
 * the way.
 *
 * Client: shmipc_client_open() keeps N sessions to one address; get a
 * stream, write a request, flush, receive the response (or shmipc_call()
 * for all of it), put the stream back for reuse.
 *
 * Server: shmipc_server_open() listens; shmipc_server_run() accepts
 * sessions, runs handshakes off the accept path, and calls the handlers
 * for every message on every stream.
 *
 * Ownership:
 *  - a shmipc_msg's views point into shared memory (or a heap copy for
 *    fallback data) and stay valid until shmipc_msg_release(), even if the
 *    session dies meanwhile;
 *  - a stream from shmipc_client_get() belongs to the caller until
 *    shmipc_client_put() or shmipc_stream_close();
 *  - a stream passed to a server handler is borrowed for the call;
 *    shmipc_stream_hold() keeps it, shmipc_stream_release() lets it go;
 *    shmipc_stream_close() on it from within the handler ends the stream
 *    and releases nothing (the borrow ends when the handler returns; a
 *    reference taken with hold still needs shmipc_stream_release()).
 *
 * Thread safety: all calls may be made from any thread; one stream should
 * be written by one thread at a time.
 */
#ifndef SHMIPC_SHMIPC_H
#define SHMIPC_SHMIPC_H

#include <stddef.h>
#include <stdint.h>

#include "shmipc/errors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- messages (what one flush of the peer delivered) ------------------ */

struct shmipc_iov {
    const uint8_t *base;
    size_t len;
};

typedef struct shmipc_msg {
    size_t len;                  /* total bytes */
    unsigned niov;               /* number of pieces (slices) */
    const struct shmipc_iov *iov; /* the pieces, in order */
    void *priv_;                 /* the library's; NULL once released */
} shmipc_msg;

/* Copies n bytes starting at `off` (spanning pieces as needed); returns the
 * number copied (less than n at the end of the message). */
SHMIPC_API size_t shmipc_msg_copy(const shmipc_msg *m, size_t off, void *dst, size_t n);
/* Gives the slices back to the pool. Idempotent. */
SHMIPC_API void shmipc_msg_release(shmipc_msg *m);

/* ---- streams ----------------------------------------------------------- */

typedef struct shmipc_stream shmipc_stream;

SHMIPC_API uint32_t shmipc_stream_id(const shmipc_stream *s);

/* Zero-copy write: n contiguous bytes of shared memory (n no larger than
 * the pool's largest slice); fill them before the next call on the
 * stream. Counted as written. */
SHMIPC_API int shmipc_stream_reserve(shmipc_stream *s, size_t n, void **ptr);
/* Copies n bytes into the stream's pending message. */
SHMIPC_API int shmipc_stream_write(shmipc_stream *s, const void *data, size_t n);
/* Appends n bytes without writing them: the message carries whatever the
 * slices hold. For zero-touch benchmarks, and for data already placed in
 * reserved memory by other means. */
SHMIPC_API int shmipc_stream_advance(shmipc_stream *s, size_t n);
/* Publishes everything written since the last flush as one message (an
 * empty flush sends an empty message). On SHMIPC_EQFULL the data stays
 * pending and a later flush retries it. */
SHMIPC_API int shmipc_stream_flush(shmipc_stream *s);
/* Sends a received message on: its bytes after whatever is pending, as one
 * message (shmipc_stream_write() of each piece, then shmipc_stream_flush()).
 * When nothing is pending and m came through this stream's pool (an echo,
 * or a proxy between sessions of one client), m's slices themselves are
 * published: no byte is copied or read. m is released in every case; on
 * an error other than SHMIPC_EQFULL nothing of the message stays pending. */
SHMIPC_API int shmipc_stream_forward(shmipc_stream *s, shmipc_msg *m);
/* Drops what was written since the last flush. */
SHMIPC_API void shmipc_stream_discard(shmipc_stream *s);

/* Next message, waiting up to timeout_ms (-1: no limit). 0 and *m filled;
 * SHMIPC_ECLOSED once the peer closed and every message was read;
 * SHMIPC_ETIMEDOUT; or the session's error. */
SHMIPC_API int shmipc_stream_recv(shmipc_stream *s, shmipc_msg *m, int timeout_ms);
/* Byte-stream read across messages: up to n bytes; returns the count, 0 at
 * end of stream, or an error. */
SHMIPC_API int shmipc_stream_read(shmipc_stream *s, void *buf, size_t n, int timeout_ms);

/* Half-close: tells the peer we will write no more; reading goes on until
 * the peer closes too. */
SHMIPC_API int shmipc_stream_shutdown(shmipc_stream *s);
/* Shutdown plus release: the stream is gone for this side. */
SHMIPC_API void shmipc_stream_close(shmipc_stream *s);

/* Server handlers: keep a borrowed stream beyond the call / let it go. */
SHMIPC_API void shmipc_stream_hold(shmipc_stream *s);
SHMIPC_API void shmipc_stream_release(shmipc_stream *s);
SHMIPC_API void *shmipc_stream_user(const shmipc_stream *s);
SHMIPC_API void shmipc_stream_set_user(shmipc_stream *s, void *user);

/* ---- counters ---------------------------------------------------------- */

struct shmipc_stats {
    uint64_t sessions_opened, sessions_closed, session_errors;
    uint64_t streams_opened;
    uint64_t messages_sent, messages_received;
    uint64_t bytes_sent, bytes_received;
    uint64_t wakeups_sent;     /* Polling events written */
    uint64_t wakeups_received; /* Polling events read */
    uint64_t fallbacks_sent, fallbacks_received;
    uint64_t queue_full;       /* flushes that met a full queue */
    uint64_t protocol_errors;  /* sessions closed for a peer's bad input */
    uint64_t handshakes_failed;
    uint64_t reconnects;
};

/* ---- client ------------------------------------------------------------ */

enum shmipc_mem_mode {
    SHMIPC_MODE_MEMFD = 0, /* version 3, fds over a unix socket (default) */
    SHMIPC_MODE_FILE = 1,  /* version 2, /dev/shm paths (unix or TCP) */
};

struct shmipc_client_config {
    const char *address;      /* "unix:/path", "/path" or "tcp:host:port" */
    enum shmipc_mem_mode mode;
    unsigned sessions;        /* default 1 */
    size_t pool_bytes;        /* default 32 MiB */
    uint32_t queue_cap;       /* elements per queue, default 8192 */
    const char *path_prefix;  /* default "/dev/shm/shmipc"; names get _<pid>[_<n>] */
    int connect_timeout_ms;   /* default 1000; also bounds the handshake */
    uint32_t max_event_bytes; /* default 32 MiB */
    int unhealthy_ms;         /* after a fallback, default 30000 */
    int queue_full_retries;   /* default 10, queue_full_wait_ms apart */
    int queue_full_wait_ms;   /* default 10 */
    int reconnect_min_ms;     /* backoff start, default 50 */
    int reconnect_max_ms;     /* backoff cap, default 5000 */
    unsigned idle_streams;    /* streams kept for reuse, default 1024 */
    int no_io_thread;         /* event-loop style: drive with shmipc_client_poll() */
    int spin_us;              /* low-latency mode: a waiting recv (or, event-loop
                                 style, shmipc_client_poll with a timeout) polls the
                                 queues this long before sleeping (burns CPU);
                                 default 0 = off */
    int keepalive_ms;         /* send a Polling ping on sessions idle this long, so
                                 a server's idle timeout keeps them; default 0 = off */
    int prefault;             /* touch the pool's pages at creation */
    /* Slice classes of the pool (slice_bytes a multiple of 4); nclasses 0 means shmipc's defaults
     * (8172/32748/131052 bytes at 50/30/20 %). Sizes ascending. */
    unsigned nclasses;
    struct shmipc_slice_class {
        uint32_t slice_bytes;
        uint32_t percent;
    } classes[8];
    /* Event-loop style: the requests a thread flushes while handling
     * shmipc_client_poll()'s results share one Polling per session, sent
     * by that thread's next poll (or when 32 wait, or another thread queues
     * on the session); eager_wakeups = 1 sends each at its flush. */
    int eager_wakeups;
    /* Blocking calls (with the I/O thread): a thread waiting for an answer
     * reads its session itself when nobody else does, and hands the other
     * waiters their answers; the I/O thread reads only while no caller
     * waits. io_thread_reads = 1 leaves all reading to the I/O thread
     * (every answer then wakes it and then its caller). */
    int io_thread_reads;
    /* Blocking calls: the reading caller spins briefly on the queue (a few
     * microseconds past the session's recent answer time) when recent
     * answers came sooner than a wake-up would take, or, calling alone,
     * when its flush found the server harvesting (up to a wake-up's time;
     * once such a spin found the server slow, not for the next 64 waits);
     * never on a machine with one CPU. spin_us, when set, is used instead.
     * Default 1 (on); 0 turns it off. */
    int adaptive_spin;
};

typedef struct shmipc_client shmipc_client;

SHMIPC_API void shmipc_client_config_init(struct shmipc_client_config *c);
/* Connects every session (at least one must succeed). */
SHMIPC_API int shmipc_client_open(const struct shmipc_client_config *c, shmipc_client **out);
/* A stream: a pooled one if any, else a new one on a healthy session. */
SHMIPC_API int shmipc_client_get(shmipc_client *c, shmipc_stream **out);
/* Back to the pool when reusable (healthy, nothing pending), else closed. */
SHMIPC_API void shmipc_client_put(shmipc_client *c, shmipc_stream *s);
/* Write the request, flush, wait for one response message. */
SHMIPC_API int shmipc_call(shmipc_stream *s, const void *req, size_t n, shmipc_msg *resp,
                           int timeout_ms);
SHMIPC_API void shmipc_client_stats(shmipc_client *c, struct shmipc_stats *st);

/* Event-loop style (cfg.no_io_thread = 1; one thread can drive hundreds of
 * streams). shmipc_client_fd() becomes readable when a session has input,
 * or when requests flushed since the last poll still owe the server its
 * wake-up (see eager_wakeups).
 * shmipc_client_poll() reads and harvests every ready session (waiting up
 * to timeout_ms, as epoll_wait, when nothing is pending) and stores up to
 * max streams that got messages or were closed; take their messages with
 * shmipc_stream_recv(st, &m, 0). The streams are borrowed: they stay valid
 * while the caller holds them. Returns the count or a negative code. In
 * this style nothing reads the sockets between calls, so blocking calls
 * (shmipc_call, a recv with a timeout) would wait in vain. */
SHMIPC_API int shmipc_client_fd(shmipc_client *c);
SHMIPC_API int shmipc_client_poll(shmipc_client *c, shmipc_stream **ready, int max,
                                  int timeout_ms);
/* Number of sessions currently connected. */
SHMIPC_API unsigned shmipc_client_live_sessions(shmipc_client *c);
/* Closes every session; streams still held fail with SHMIPC_ECLOSED. */
SHMIPC_API void shmipc_client_close(shmipc_client *c);

/* ---- server ------------------------------------------------------------ */

struct shmipc_server_handlers {
    /* A new stream (optional). */
    void (*on_stream)(shmipc_stream *s, void *arg);
    /* A message: the handler owns *m and must release it (now or later). */
    void (*on_message)(shmipc_stream *s, shmipc_msg *m, void *arg);
    /* The peer closed the stream, or its session ended (optional). Not
     * called for a stream the server closed itself with
     * shmipc_stream_close() before either happened. */
    void (*on_close)(shmipc_stream *s, void *arg);
};

struct shmipc_server_config {
    const char *address;
    int socket_mode;           /* unix socket permissions, default 0660; -1 keeps umask */
    const char *allowed_dir;   /* file-path mode, default "/dev/shm" */
    int handshake_timeout_ms;  /* default 1000 */
    uint32_t max_event_bytes;  /* default 32 MiB */
    size_t max_pool_bytes;     /* largest client pool mapped, default 1 GiB */
    unsigned max_sessions;     /* default 1024 */
    int unhealthy_ms;          /* default 30000 */
    int spin_us;               /* low-latency mode: poll the queues this long after
                                  work before sleeping (burns CPU); default 0 = off */
    int adaptive_spin;         /* with few sessions whose clients come back sooner
                                  than a wake-up, poll their queues that long after
                                  answering (clients skip their Pollings), and probe
                                  40 us on the turn after a client came late; never
                                  on one CPU. Default 1; 0 turns it off */
    int listen_fd;             /* a listening socket to serve instead of binding
                                  address (inherited from the server it replaces:
                                  see shmipc_server_hot_restart); address then only
                                  names it, and the socket file is left in place at
                                  close (the next bind replaces it). Default -1:
                                  bind address */
};

typedef struct shmipc_server shmipc_server;

SHMIPC_API void shmipc_server_config_init(struct shmipc_server_config *c);
SHMIPC_API int shmipc_server_open(const struct shmipc_server_config *c,
                                  const struct shmipc_server_handlers *h, void *arg,
                                  shmipc_server **out);
/* Serves on the calling thread until shmipc_server_stop(). */
SHMIPC_API int shmipc_server_run(shmipc_server *s);
/* Async-signal-safe; shmipc_server_run() returns soon after. */
SHMIPC_API void shmipc_server_stop(shmipc_server *s);
/* Hot restart: hands every client over to a successor without failing a
 * call. Start the successor first on the same listening socket (give it
 * shmipc_server_listen_fd(), e.g. across fork and exec, as its
 * cfg.listen_fd): from then on both accept. This server then stops
 * accepting, tells every session HotRestart(epoch) (epoch non-zero, e.g.
 * the successor's pid), and closes each one once its client acked (the
 * client has opened a session to the successor and finished its streams
 * here) and nothing is in flight. shmipc_server_run() returns 0 when
 * every session is closed, or after drain_ms (sessions whose client never
 * acked are closed then, what is queued answered first). The socket file
 * stays: the successor owns it. Once; async-signal-safe (as nginx's
 * SIGUSR2). 0, -EINVAL (epoch 0), or -EALREADY. */
SHMIPC_API int shmipc_server_hot_restart(shmipc_server *s, uint64_t epoch, int drain_ms);
/* The listening socket (close-on-exec: clear the flag, or dup2 it, to pass
 * it across exec), or -EBADF once a hot restart let it go. */
SHMIPC_API int shmipc_server_listen_fd(shmipc_server *s);
SHMIPC_API void shmipc_server_stats(shmipc_server *s, struct shmipc_stats *st);
SHMIPC_API void shmipc_server_close(shmipc_server *s);

/* ---- logging ------------------------------------------------------------ */

/* The library logs to stderr (warnings: a peer's bad input, a reconnect;
 * info: a server listening, a session closed for a reason). Levels: 0
 * error, 1 warn, 2 info (the default), 3 debug. A sink gets every line up
 * to the level (timestamped, without a newline) instead of stderr, from
 * any thread; NULL restores stderr. */
SHMIPC_API void shmipc_set_log_level(int level);
SHMIPC_API void shmipc_set_log_sink(void (*sink)(void *arg, int level, const char *line),
                                    void *arg);

/* The release, the one place it is written: SConstruct reads these for
 * libshmipc.so's name (libshmipc.so.MAJOR.MINOR, SONAME libshmipc.so.MAJOR)
 * and shmipc.pc; every program's --version prints SHMIPC_VERSION. */
#define SHMIPC_VERSION_MAJOR 0
#define SHMIPC_VERSION_MINOR 1
#define SHMIPC_VERSION_PATCH 0
#define SHMIPC_VERSION "0.1.0"

#ifdef __cplusplus
}
#endif
#endif
