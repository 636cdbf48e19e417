/*
 * shmipc-hostile: a malicious shmipc client against a running shmipcd and
 * against the library's echo_server, one attack per session, while a
 * well-behaved client keeps checking every answer (see hostile.c).
 *
 * Parts: target.c starts and watches the servers (config, logs, counters,
 * /proc), good.c is the well-behaved client (a forked process), evil.c
 * builds raw sessions from the library's internal modules, cases.c holds
 * the attacks. The one rule: every wait has a deadline, and everything a
 * run creates (processes, temp dir, /dev/shm files, symlinks) is removed
 * even when it fails.
 */
#ifndef SHMIPC_HOSTILE_H
#define SHMIPC_HOSTILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/daemon_util.h"
#include "shm/pool.h"
#include "shm/queue.h"
#include "shm/region.h"

/* ---- timing (ms) ---- */
#define H_START_MS 15000 /* a target to answer */
#define H_STOP_MS 20000  /* a target to exit after SIGTERM */
#define H_CLOSE_MS 5000  /* a bad session to be closed (beyond the handshake deadline) */
#define H_SETTLE_MS 8000 /* counters and log lines to show up */
#define H_GOOD_MS 10000  /* the good client to make progress */
#define H_IO_MS 3000     /* one socket operation of a bad session */

/* ---- targets (target.c) ---- */

enum target_kind { T_SHMIPCD = 0, T_ECHO = 1 };

struct target {
    enum target_kind kind;
    const char *name;    /* "shmipcd" or "echo_server" */
    char dir[64];        /* mkdtemp: config, sockets, log */
    char log[128];       /* stdout+stderr of every target process */
    char unix_addr[160]; /* "unix:<dir>/echo.sock" */
    char tcp_addr[64];   /* "tcp:127.0.0.1:<port>" */
    char admin[160];     /* shmipcd: "unix:<dir>/admin.sock" */
    pid_t pids[2];       /* [0] serves unix_addr, [1] tcp_addr (echo_server: two processes) */
    int npids;
    int died;             /* a target process exited: every later case fails */
    char death[200];      /* how it ended, as first seen */
    uint32_t max_event;   /* the target's maximum event size */
    unsigned max_streams; /* per session */
    unsigned max_sessions;
    int idle_timeout_ms; /* 0: none */
    int hs_timeout_ms;
    size_t out_limit; /* the server's per-session output limit */
    int asan;         /* the target runs with AddressSanitizer */
    int tsan;         /* ... with ThreadSanitizer (shadow memory: 4x) */
};

struct svc_counters {
    unsigned long requests, opened, closed, hs_failed, refused, idle_closed;
};

extern char h_bin_dir[4096];
extern char h_plugin_dir[4096];
/* "shmipc-hostile-<pid>": the prefix of every /dev/shm name of this run. */
const char *h_shm_prefix(void);

int target_start(struct target *t, enum target_kind kind, char *err, size_t errlen);
/* SIGTERM, then SIGKILL after H_STOP_MS; *exit_codes gets each exit
 * status (128+signal when killed). The temp dir (and its log) stays. */
void target_stop(struct target *t, int exit_codes[2]);
/* Removes the temp dir with everything in it. */
void target_remove_dir(struct target *t);
/* 1 while every process runs; otherwise sets t->died and explains. */
int target_alive(struct target *t, char *why, size_t whylen);
/* shmipcd: sums `shmipcctl stats` over its services. 0 or -1. */
int target_stats(const struct target *t, struct svc_counters *out);
/* The log from byte `from` on (malloc'd, NUL-terminated). */
char *target_log_since(const struct target *t, long from);
long target_log_size(const struct target *t);
/* Private resident memory (RssAnon) of process i in KiB, or -1. */
long target_rss_anon_kib(const struct target *t, int i);
int target_fd_count(const struct target *t, int i);
/* Removes every /dev/shm entry of this run. */
void h_cleanup_shm(void);

/* ---- the good client (good.c) ---- */

struct good_shared {
    /* written by the good client, read by the driver (relaxed atomics) */
    uint64_t requests; /* answered and checked */
    uint64_t errors;   /* failed calls or wrong answers */
    uint64_t bytes;
    char last_error[256];
    /* written by the driver */
    int stop;
};

/* Forks the good client against t (unix memfd sessions, plus a file-mode
 * client over TCP). Returns its pid; *shared is a MAP_SHARED page. */
pid_t good_start(const struct target *t, struct good_shared *shared);
/* Asks it to stop and reaps it (SIGKILL after a deadline); its exit code. */
int good_stop(pid_t pid, struct good_shared *shared);

/* ---- raw sessions (evil.c) ---- */

struct evil {
    int fd;               /* -1 when closed */
    struct region pr, qr; /* our pool and queue memory */
    struct pool pool;
    struct queue_pair qp;
    int mem;         /* pool and queue set up */
    uint8_t version; /* the session's, after the handshake */
    uint8_t *in;     /* socket input not yet parsed */
    size_t in_len, in_cap;
    int eof; /* the peer closed */
};

#define EVIL_POOL_DEFAULT (2u << 20)
#define EVIL_QCAP_DEFAULT 64u

void evil_init(struct evil *e);
/* Pool (default classes) and queue pair in fresh memfds. */
int evil_mem_memfd(struct evil *e, size_t pool_bytes, uint32_t qcap);
int evil_mem_memfd_classes(struct evil *e, size_t pool_bytes, const struct pool_class *classes,
                           unsigned n, uint32_t qcap);
/* The same in files (file-path mode): created, unlinked again by evil_close. */
int evil_mem_files(struct evil *e, const char *bpath, const char *qpath, size_t pool_bytes,
                   uint32_t qcap);
int evil_connect(struct evil *e, const char *addr);
/* memfd handshake (v3) with our memory: 0 or the client's error. */
int evil_hs_memfd(struct evil *e);
/* File-path handshake, version 2 (no reply) or 3. */
int evil_hs_file(struct evil *e, uint8_t version, const char *qpath, const char *bpath);
/* memfd handshake up to AckReadyRecvFD (the fd message is the caller's). */
int evil_hs_until_fds(struct evil *e);
/* The fd message with any data byte and any fds. */
int evil_send_fd_msg(struct evil *e, uint8_t byte, const int *fds, int nfds);
/* connect + memfd memory + handshake in one. */
int evil_open(struct evil *e, const char *addr, size_t pool_bytes, uint32_t qcap);
void evil_close(struct evil *e);

int evil_write(struct evil *e, const void *buf, size_t n);
/* An event with our version: header (length as given) then body. */
int evil_event(struct evil *e, uint32_t length, uint8_t type, const void *body, size_t blen);
int evil_polling(struct evil *e);
int evil_fallback(struct evil *e, uint32_t id, uint32_t status, const void *p, size_t n);
/* Publishes one element and wakes the server. */
int evil_put(struct evil *e, uint32_t id, uint32_t off, uint32_t status);
/* A proper request: bytes in pool slices, element, Polling. *first gets
 * the chain (may be NULL). */
int evil_request(struct evil *e, uint32_t id, const void *p, size_t n, uint32_t *first);
/* A slice popped from list li (IN_USE); its absolute offset or a code. */
int evil_pop(struct evil *e, unsigned li, uint32_t *off);
/* Sends a request and waits for its echo on stream id (from the queue or
 * as FallbackData). 0, or a code with why filled. */
int evil_roundtrip(struct evil *e, uint32_t id, const void *p, size_t n, int ms, char *why,
                   size_t whylen);
/* Waits for the echo of a request already sent on stream id. */
int evil_wait_echo(struct evil *e, uint32_t id, const void *p, size_t n, int ms, char *why,
                   size_t whylen);
/* Reads and drops socket input, pops and frees our receive queue; returns
 * -1 once the peer closed. Never waits. */
int evil_pump(struct evil *e);
/* Waits for the server to close the connection (draining what comes):
 * 1 closed, 0 still open at the deadline. */
int evil_wait_closed(struct evil *e, int ms);

/* ---- cases (cases.c) ---- */

#define CASE_MAX_REASONS 6

struct case_ctx {
    struct target *t;
    struct good_shared *good; /* the good client's counters */
    /* expectations the case declares; the runner checks them afterwards */
    int hs_refused;  /* sessions the handshake must refuse (counter handshakes failed) */
    int refused;     /* connections refused before any handshake (counter refused) */
    int idle_closed; /* sessions closed by the idle timeout (counter idle closed) */
    int either;      /* sessions refused late or closed: one of the two counters */
    int closed;      /* established sessions the server must close (sessions closed) */
    int open_ok;     /* the session staying open is correct */
    struct {
        char text[200];
        int min;
    } reasons[CASE_MAX_REASONS]; /* log text that must appear, at least min times */
    int nreasons;
    char any_reason[4][200]; /* at least one of these must appear (when set) */
    int nany;
    char outcome[64]; /* "closed", "refused", "open": for the output line */
    char note[240];   /* what the case measured */
    char fail[400];   /* first failure */
};

typedef void (*case_fn)(struct case_ctx *c);

struct hcase {
    const char *name;
    case_fn fn;
};

extern const struct hcase h_cases[];
extern const unsigned h_ncases;

void case_fail(struct case_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void case_expect_reason(struct case_ctx *c, int min, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
