/*
 * A peer that uses shmipc the way the Go and Rust libraries' everyday code
 * does: after reading a message it frees every slice of it but the last,
 * zeroes that one's header (size, start and flags, IN_USE included) and
 * writes its next message into it, linking new slices after it when the
 * message is longer (Go's Stream.ReleaseReadAndReuse, the Rust crate's
 * release_read_and_reuse). The reused slice is published with IN_USE
 * clear, exactly as theirs are.
 *
 * Built from the library's internal modules (pool, queue, events,
 * handshake), it plays the client against our servers (rp_client_run) and
 * the echo server against our client (rp_server_run). Both check every
 * byte, and at the end that every slice of the pool is back on a free
 * list exactly once (free counts, and a walk of each free list).
 *
 * The one rule: every wait has a deadline; nothing here asserts or exits.
 * Results come back as codes with a reason in rp_report.why.
 */
#ifndef SHMIPC_REUSE_PEER_H
#define SHMIPC_REUSE_PEER_H

#include <stddef.h>
#include <stdint.h>

#include "shm/pool.h"

struct rp_client_opts {
    const char *addr;       /* "unix:/path" or "tcp:host:port" (file mode) */
    int file_mode;          /* file-path handshake instead of memfd (version 3) */
    int version;            /* file mode: 2 (the Go default, no reply) or 3; 0 = 2 */
    const char *shm_prefix; /* file mode: "<dir>/<name>": <prefix>_buffer, _queue_0 */
    size_t pool_bytes;      /* 0: 32 MiB, shmipc's default classes */
    uint32_t size;          /* request bytes (the answer is their echo) */
    unsigned count;         /* round trips */
    unsigned streams;       /* stream ids 2, 3, ... used in turn; 0 = 1 */
    int leave_files;        /* file mode: exit without removing our files, as a
                               Go client that never closes its manager */
    int timeout_ms;         /* for one round trip, and for the final check; 0 = 5000 */
};

struct rp_report {
    uint64_t roundtrips;
    uint64_t reused;      /* messages sent whose head was a reused read slice */
    uint32_t free_slices; /* on the free lists at the end */
    uint32_t total_slices;
    uint64_t ns;   /* time spent in the round trips */
    char why[256]; /* the first failure */
};

/* Connects, runs o->count round trips, closes the streams and the session,
 * then waits (up to the timeout) until the server has given back every
 * slice. 0, or a negative code with r->why filled. */
int rp_client_run(const struct rp_client_opts *o, struct rp_report *r);

struct rp_server_opts {
    const char *addr;        /* unix socket to listen on (removed at the end) */
    const char *allowed_dir; /* file mode paths, default "/dev/shm" */
    unsigned sessions;       /* serve this many sessions, one after another */
    int timeout_ms;          /* longest wait for a client or its next message; 0 = 10000 */
    int ready_fd;            /* >= 0: one byte is written here once listening */
};

/* Echoes every message with the reuse pattern until each session's peer
 * closes; after each, waits until every slice of its pool is free again.
 * 0, or a negative code with r->why filled. */
int rp_server_run(const struct rp_server_opts *o, struct rp_report *r);

/* Every slice of p is on a free list exactly once (free counts equal the
 * slice counts, and each list walks from head to tail over distinct
 * slices). *nfree gets the free count. 1, or 0 with why filled. */
int rp_pool_all_free(const struct pool *p, uint32_t *nfree, char *why, size_t whylen);

/* The byte at position i of message `round` on stream `id`. */
uint8_t rp_byte(uint32_t id, uint64_t round, uint32_t i);

#endif
