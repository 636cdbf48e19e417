/*
 * The fixture of the session suite (tests/unit/test_session.c): the C
 * client (the test process) against the C server running in a forked
 * child, over a unix socket in a mkdtemp directory (or TCP loopback for
 * file mode over TCP). The prefix sfx_ stands for session fixture.
 *
 * The one rule of the suite: a test never uses CU_ASSERT_FATAL. Its checks
 * that must stop it (REQUIRE, REQUIRE_RC) jump to its `out:` label, which
 * calls sfx_end(): that closes the client, stops (or kills) every child,
 * removes the socket directory and then checks that fds, shared mappings
 * and /dev/shm entries are back to where the test found them. Every wait
 * is bounded; no check is on time.
 *
 * The server child answers by mode (echo, echo then half-close, swallow,
 * checksum, forward) and also understands control messages, on a stream
 * of their own, that return its counters and the streams it saw closed
 * (sfx_srv_stats, sfx_srv_closed), so a test can look into the server
 * without sharing memory with it.
 *
 * Who owns what: a struct fx belongs to its test, which owns its client,
 * its main stream and its server child; sfx_end() frees them all. A test
 * that forks a second server child (struct srv_child) stops it itself with
 * sfx_srv_stop(). Buffers from sfx_pattern() are the caller's to free.
 * Strings from sfx_shm_name() are static (4 rotating buffers) and those of
 * sfx_shm_prefix() are kept for the run (8 suffixes at most). The shm
 * prefix holds the pid of the test process, fixed by the first call
 * (before any fork, so children share it). Not thread-safe, except the
 * payload and client helpers on distinct streams.
 *
 * CUnit assertions are made by sfx_expect_rc (EXPECT_RC, REQUIRE_RC),
 * sfx_leaks_check and sfx_end; every other helper returns a code.
 */
#ifndef SHMIPC_TESTS_SESSION_FIXTURE_H
#define SHMIPC_TESTS_SESSION_FIXTURE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../unit/testutil.h"
#include "shmipc/shmipc.h"

#define CHILD_MS 15000    /* a child's deadline to exit after being asked */
#define START_MS 10000    /* a server child's deadline to start listening */
#define RECV_MS 10000     /* an answer that should come */
#define POLL_MS 5000      /* a state that should be reached */
#define MAX_SLICE 131052u /* the default pool's largest slice */

/* ---- checks that can stop a test (at its `out:` label) ---- */

/* Asserts got == want (a CUnit assertion at file:line), naming both codes
 * on stderr when they differ. 1 when equal. */
int sfx_expect_rc(int got, int want, const char *what, const char *file, unsigned line);

#define EXPECT_RC(expr, want) sfx_expect_rc((expr), (want), #expr, __FILE__, __LINE__)
#define REQUIRE_RC(expr, want)                                                                     \
    do {                                                                                           \
        if (!EXPECT_RC(expr, want))                                                                \
            goto out;                                                                              \
    } while (0)

/* Sleeps ms, resumed after a signal. */
void sfx_sleep_ms(int ms);
/* The tu_now_ns() time `ms` from now: a bounded wait's end. */
uint64_t sfx_deadline_ns(int ms);

/* ---- payloads ---- */

/* Byte i of the message with this seed: every message is distinct and a
 * byte out of place shows. */
uint8_t sfx_pat(uint64_t seed, uint64_t i);
/* b[0..n) = the pattern of seed. */
void sfx_fill(uint8_t *b, size_t n, uint64_t seed);
/* A malloc'd buffer of n pattern bytes (the caller frees it), or NULL. */
uint8_t *sfx_pattern(size_t n, uint64_t seed);
/* FNV-1a over p[0..n), continuing from h (FNV_INIT to start). */
uint64_t sfx_fnv1a(uint64_t h, const uint8_t *p, size_t n);
#define FNV_INIT 0xcbf29ce484222325ull
/* FNV-1a of a whole message (what an SRV_HASH server answers). */
uint64_t sfx_msg_hash(const shmipc_msg *m);
/* 1 if the message is exactly the n pattern bytes of `seed` (else says
 * how it differs on stderr). */
int sfx_msg_is(const shmipc_msg *m, size_t n, uint64_t seed);
/* xorshift64: the next number of the sequence in *s. */
uint64_t sfx_rng(uint64_t *s);

/* ---- leftovers ---- */

/* The /dev/shm name prefix of this run, with the test process's pid (set
 * before any fork, so children share it): another run of the suite at the
 * same time must not change our counts. `suffix` ("", "a", "b") tells
 * apart several clients; the library adds "_<pid>..." after it. One of 4
 * static buffers. */
const char *sfx_shm_name(const char *suffix);
/* The client's path_prefix for that name: one string per suffix, kept
 * for the run (the suite uses four suffixes). */
const char *sfx_shm_prefix(const char *suffix);

/* What a test must leave as it found it. */
struct leaks {
    int fds, maps, shm;
};

void sfx_leaks_begin(struct leaks *l);
/* Asserts that fds, shared mappings and this run's /dev/shm entries are
 * back to l's counts (says which moved on stderr). */
void sfx_leaks_check(const struct leaks *l);
/* Removes /dev/shm files a killed client process left (its pid in the
 * name): how many. */
int sfx_unlink_shm_of(pid_t pid);
/* In a forked child: closes every fd but stdio, keep and keep2 (it must
 * not hold the parent's sockets or memfds). */
void sfx_close_inherited(int keep, int keep2);

/* ---- the server child ---- */

enum srv_mode {
    SRV_ECHO,          /* answers every message with its bytes */
    SRV_ECHO_SHUTDOWN, /* answers, then half-closes the stream */
    SRV_ECHO_CLOSE,    /* answers, logs the stream as closed, closes it */
    SRV_SWALLOW,       /* never answers */
    SRV_HASH,          /* answers with u32 length + u64 FNV-1a of the message */
    SRV_FORWARD,       /* answers with the message itself (shmipc_stream_forward);
                          one starting with "pfx?" gets "pfx" written before it */
};

/* The control messages are CTL_LEN bytes. */
#define CTL_LEN 11
/* Says so through the FIFO <dir>/entered, holds the handler until a byte
 * comes through <dir>/release, then is echoed like any message. */
extern const char sfx_ctl_gate[CTL_LEN + 1];

/* What the server saw on a stream by the time on_close ran. */
struct closed_rec {
    uint32_t id;
    uint32_t msgs;
    uint64_t bytes;
};
#define CLOSED_MAX 64 /* the server's close log keeps the last CLOSED_MAX */

/* A server child: forked first (while this process has no other thread,
 * which fork and the sanitizers need), started on `go`. */
struct srv_child {
    pid_t pid;   /* 0: none */
    int waiting; /* forked, not started: go and ready are open */
    int go;      /* write end: start the server */
    int ready;   /* read end: its open result */
};

/* Forks a server child that waits for sfx_srv_go(). 0 or a negative code. */
int sfx_srv_fork(struct srv_child *c, enum srv_mode mode, const char *address);
/* Starts a forked server: 0 once it listens, else its open error or -1
 * (the child is reaped then). */
int sfx_srv_go(struct srv_child *c);
/* sfx_srv_fork, then sfx_srv_go. */
int sfx_srv_start(struct srv_child *c, enum srv_mode mode, const char *address);
/* SIGTERM (after SIGCONT, in case a test stopped it) and reap: the exit
 * code, 0 for a clean stop; 0 when no child is running. */
int sfx_srv_stop(struct srv_child *c);

/* ---- fixture: baseline, socket directory, one server, one client ---- */

struct fx {
    struct leaks base;
    char dir[64];
    char addr[128]; /* unix:<dir>/sock, or the TCP address a test put here */
    struct srv_child srv;
    shmipc_client *cli;
    shmipc_stream *st; /* the test's main stream, if it has one */
};

/* Takes the baseline and makes the socket directory. 0 or -errno. */
int sfx_begin(struct fx *f);
/* Closes the client, stops the server (which must exit cleanly), removes
 * the directory and checks for leftovers. Safe on a half-built fixture. */
void sfx_end(struct fx *f);
/* The suite's client configuration: addr, mode, this run's shm prefix,
 * quick reconnects. */
void sfx_cfg_init(struct shmipc_client_config *c, const char *addr, enum shmipc_mem_mode mode);
/* A pool of one size class: a small one lets a test run it out. */
void sfx_one_class_pool(struct shmipc_client_config *c, size_t pool_bytes, uint32_t slice_bytes);
/* The fixture with a server child in `smode` on its socket, in
 * low-latency mode with `spin_us` (0: off, the adaptive spin only; -1: no
 * spin at all). */
int sfx_serve(struct fx *f, enum srv_mode smode, int spin_us);
/* Opens the fixture's client with sfx_cfg_init's defaults for `mode`;
 * with `st`, takes a stream from it. */
int sfx_connect(struct fx *f, enum shmipc_mem_mode mode, shmipc_stream **st);
/* The start of most tests: sfx_serve, then sfx_connect. */
int sfx_start(struct fx *f, enum srv_mode smode, enum shmipc_mem_mode mode, shmipc_stream **st);

/* ---- client-side helpers ---- */

/* One message of n pattern bytes and its echo; checks length and content.
 * 0, the library's code, or 1 on a content mismatch. */
int sfx_echo_once(shmipc_stream *st, size_t n, uint64_t seed, unsigned *niov);
/* Writes n bytes and flushes them: one message. 0 or the library's code. */
int sfx_send_msg(shmipc_stream *st, const void *p, size_t n);
/* The message of sz pattern bytes of `seed`, made in buf, sent. */
int sfx_send_one(shmipc_stream *st, uint8_t *buf, size_t sz, uint64_t seed);
/* Closes the streams still held in st[0..n) and forgets them. */
void sfx_close_streams(shmipc_stream **st, unsigned n);
/* A fresh stream, one echo, back to the pool. */
int sfx_echo_new(shmipc_client *c, size_t n, uint64_t seed);
/* Reads exactly n bytes with shmipc_stream_read in chunks of varying size
 * and checks them against `want`. 0, a code, or 1 on a mismatch or EOF. */
int sfx_read_expect(shmipc_stream *st, const uint8_t *want, size_t n);
/* The server's counters (asked on a stream of its own): 0, a code, or 1
 * on a short answer. */
int sfx_srv_stats(shmipc_client *c, struct shmipc_stats *st);
/* Finds the records of stream `id` in the server's close log: how many
 * (the first in *out), or a code. Only meaningful with one session. */
int sfx_srv_closed(shmipc_client *c, uint32_t id, struct closed_rec *out);
/* Polls the close log until stream `id` shows up (bounded). */
int sfx_srv_wait_closed(shmipc_client *c, uint32_t id, struct closed_rec *out);

/* A loopback port nobody listens on right now (-1 if none was found). */
int sfx_free_port(void);

/* ---- the gate: holding the server inside a handler (sfx_ctl_gate) ---- */

/* The gate's FIFOs in the fixture's directory. Each gate message the
 * server handles says "entered" and waits for one "release". */
struct gate {
    char entered[160];
    char release[160];
};
/* Makes the FIFOs (sfx_end removes them). 0 or -errno. */
int sfx_gate_init(const struct fx *f, struct gate *g);
/* Waits (bounded) until the server is inside a gate handler: 0, or
 * -ETIMEDOUT / -errno. */
int sfx_gate_entered(const struct gate *g);
/* Lets the gate handler the server is in go on (bounded): 0 or a code. */
int sfx_gate_release(const struct gate *g);

/* ---- a blocking caller on a thread of its own ---- */

struct caller {
    pthread_t th;
    shmipc_stream *st;
    const void *req;
    size_t n;
    int timeout_ms;
    int rc;       /* what shmipc_call() returned */
    shmipc_msg m; /* its answer when rc == 0: the test releases it */
    int running;  /* the thread was started and not joined yet */
};
/* Starts a thread that makes one shmipc_call(st, req, n, ..., timeout_ms);
 * req must stay valid until sfx_caller_join(). 0 or -errno. */
int sfx_caller_start(struct caller *c, shmipc_stream *st, const void *req, size_t n,
                     int timeout_ms);
/* Joins it (if running): its rc. */
int sfx_caller_join(struct caller *c);

#endif
