/*
 * Session handshakes (PROTOCOL.md section 3).
 *
 * Server side: a non-blocking state machine, so a listener can run many at
 * once and a client that stalls costs nothing but its own deadline. It
 * reads exactly the bytes of each event (the fd message is a one-byte
 * payload, so nothing may be read ahead), answers, receives the fds, then
 * stops at HS_MAP: the caller maps the memory (it owns the pool registry)
 * and calls hs_server_mapped(), which queues the final ack.
 *
 * Client side: one blocking call bounded by a deadline.
 *
 * Ownership: fds received by the state machine belong to it until the
 * caller takes them (hs_server_take_fds); hs_server_cleanup() closes what
 * was not taken.
 */
#ifndef SHMIPC_PROTO_HANDSHAKE_H
#define SHMIPC_PROTO_HANDSHAKE_H

#include <stdint.h>

#include "shmipc/wire.h"

#define HS_MAX_PATH 255 /* longest queue or buffer path / name accepted */
#define HS_MAX_EVENT (SHMIPC_EV_HEADER_LEN + 4 + 2 * HS_MAX_PATH)

enum hs_mode {
    HS_FILE = 0,  /* buffer and queue are files named by path */
    HS_MEMFD = 1, /* buffer and queue arrive as fds */
};

/* What hs_server_step() wants next. */
enum hs_want {
    HS_WANT_READ = 1,
    HS_WANT_WRITE = 2,
    HS_MAP = 3,  /* fds or paths ready: map them, then hs_server_mapped() */
    HS_DONE = 4, /* the session may start */
};

enum hs_state {
    HS_ST_HEADER,   /* reading an 8-byte header */
    HS_ST_BODY,     /* reading the rest of the event */
    HS_ST_FDS,      /* waiting for the fd message */
    HS_ST_WRITE,    /* sending a reply */
    HS_ST_MAP,      /* waiting for the caller to map */
    HS_ST_DONE,
    HS_ST_FAILED,
};

struct hs_server {
    int fd;
    int allow_memfd;  /* unix sockets only */
    enum hs_state st;
    enum hs_state after_write;
    uint8_t in[HS_MAX_EVENT];
    uint32_t have, need;
    uint8_t out[SHMIPC_EV_HEADER_LEN];
    uint32_t out_len, out_sent;
    int stage;        /* 0: first event; 1: after the version exchange */
    uint8_t version;  /* the session's version */
    enum hs_mode mode;
    char queue_path[HS_MAX_PATH + 1];
    char buffer_path[HS_MAX_PATH + 1];
    int fds[2];       /* [buffer, queue] in memfd mode, -1 otherwise */
    uint64_t deadline_ns;
    int err;
    char why[160];    /* reason of a failure, for logs */
};

void hs_server_init(struct hs_server *h, int fd, int allow_memfd, uint64_t deadline_ns);

/* Advances as far as the socket allows. Returns an enum hs_want, or a
 * negative code (h->why says why; the session must be closed). Call again
 * when the fd is ready for what it asked, or at the deadline (which then
 * fails with SHMIPC_ETIMEDOUT). */
int hs_server_step(struct hs_server *h);

/* The caller mapped the memory (ok=1) or refuses it (ok=0, with a code
 * for the log). Queues the ack for version 3; then keep stepping. */
int hs_server_mapped(struct hs_server *h, int ok, int err);

/* Moves the received fds to the caller (buffer, queue); -1 where none. */
void hs_server_take_fds(struct hs_server *h, int *buffer_fd, int *queue_fd);
void hs_server_cleanup(struct hs_server *h);

/* Client side, blocking until done or the deadline.
 *   HS_FILE with version 2: one ShareMemoryByFilePath event, no reply.
 *   HS_FILE with version 3: version exchange, paths, AckShareMemory.
 *   HS_MEMFD (version 3): version exchange, names, AckReadyRecvFD, the fd
 *     message [buffer_fd, queue_fd], AckShareMemory.
 * *version_out gets the session's version. */
int hs_client(int fd, enum hs_mode mode, uint8_t version, const char *queue_path,
              const char *buffer_path, int buffer_fd, int queue_fd, uint64_t deadline_ns,
              uint8_t *version_out);

#endif
