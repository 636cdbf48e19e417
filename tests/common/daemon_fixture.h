/*
 * The fixture of the daemon suite (tests/unit/test_daemon.c): the real
 * shmipcd and shmipcctl binaries, started with configuration files written
 * into a mkdtemp directory (sockets, the admin socket, shmipcd's log and
 * the plugin trace live there too), driven by forked client processes that
 * use libshmipc in both handshake modes. The prefix dfx_ stands for daemon
 * fixture; what is not particular to this suite is in daemon_util.h (du_).
 *
 * The one rule of the suite: a test never uses CU_ASSERT_FATAL. A check
 * that must stop it (REQUIRE) jumps to its `out:` label, where dfx_end()
 * kills and reaps every client child, stops shmipcd (SIGTERM, SIGKILL
 * after a deadline), fails the test if shmipcd's log holds a sanitizer
 * report, and removes the directory and any /dev/shm file of this run.
 * Every wait is bounded; no check is on time.
 *
 * Binaries and plugins: $SHMIPC_BIN, $SHMIPC_PLUGINS, $SHMIPC_TEST_PLUGINS
 * (set by `scons test`), else the layout next to the test program
 * ($TOP/tests/unit_tests: $TOP/bin, $TOP/plugins, $TOP/tests/plugins).
 * Every program started (shmipcd, shmipcctl) is forked with an alarm that
 * survives the exec: one a crashed test left behind dies within a minute.
 *
 * Who owns what: a struct fx belongs to its test; its shmipcd, directory
 * and client children (f->kids, up to MAX_KIDS) are freed by dfx_end().
 * dfx_log's text is the caller's to free; dfx_shm_name's is static (this
 * run's prefix, fixed by the first call, made before any fork). CUnit
 * assertions are made by dfx_ctl (no sanitizer report in shmipcctl's
 * output), dfx_kid_expect_all_ok and dfx_end; every other helper returns
 * a code.
 */
#ifndef SHMIPC_TESTS_DAEMON_FIXTURE_H
#define SHMIPC_TESTS_DAEMON_FIXTURE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../unit/testutil.h"
#include "daemon_util.h"
#include "shmipc/shmipc.h"

#define START_MS 15000 /* shmipcd to answer on its admin socket */
#define STOP_MS 15000  /* shmipcd to exit after SIGTERM (drain included) */
#define CHILD_MS 30000 /* a client child to finish its work */
#define CMD_MS 15000   /* one shmipcctl or `shmipcd -t` run */
#define POLL_MS 10000  /* a state that should be reached */
#define RECV_MS 10000  /* an answer that should come */
#define DRAIN_MS 3000  /* drain_timeout_ms of the SIGTERM test */

#define GREETER_REQ "client say hello world!!!"
#define GREETER_RESP "server hello world!!!"

/* The /dev/shm name prefix of this run (pid of the test program, taken
 * before any fork so the children share it); file-mode clients add a
 * letter, the library adds "_<pid>...". */
const char *dfx_shm_name(void);
/* du_run_capture with CMD_MS and the suite's spawn options. */
int dfx_run_capture(const char *const *argv, char *out, size_t cap);

/* ---- the daemon ---- */

/* shmipcd's log so far, malloc'd ("" when unreadable); the caller frees it. */
char *dfx_log(const struct du_daemon *d);
/* Occurrences of needle in shmipcd's log. */
int dfx_log_count(const struct du_daemon *d, const char *needle);
/* shmipcctl -s <admin> a1 a2 (a2 may be NULL): exit code, output in out.
 * Asserts that the output holds no sanitizer report. */
int dfx_ctl(const struct du_daemon *d, char *out, size_t cap, const char *a1, const char *a2);

/* ---- stats parsing (roughly: the formats are admin.c's) ---- */

struct svc_stats_txt {
    unsigned long requests, bytes_in, bytes_out, handler_errors, opened, closed, hs_failed;
};

/* The line of service svc in `shmipcctl stats` text. 0 or -1. */
int dfx_stats_svc(const char *txt, const char *svc, struct svc_stats_txt *s);
/* "pools mapped: N" in the same text. 0 or -1. */
int dfx_stats_pools(const char *txt, unsigned long *n);
/* "key":N inside the JSON object of service `svc`. 0 or -1. */
int dfx_json_svc(const char *js, const char *svc, const char *key, unsigned long *out);
/* "key":N, the first in the JSON text. 0 or -1. */
int dfx_json_top(const char *js, const char *key, unsigned long *out);
/* Polls `shmipcctl stats` until service svc has every session closed (and
 * at least min_closed of them) and `pools` pools are mapped. The last
 * output stays in out. 0 when reached. */
int dfx_wait_settled(const struct du_daemon *d, const char *svc, unsigned long min_closed,
                     unsigned long pools, char *out, size_t cap);

/* ---- client children ---- */

/* Size of the request a client child sends on `stream` in `round`: sizes
 * around the slice classes (8172/32748/131052), an empty message, and
 * 1 MiB once per round per client (on a rotating stream), up to max. */
size_t dfx_req_size(unsigned stream, unsigned round, size_t max);

/* What a client child does: `sessions` sessions, `streams` streams, and
 * `rounds` rounds of one request per stream, each answer checked (an echo
 * of a pattern, or the greeter's answer). */
struct cl_args {
    char address[200];
    enum shmipc_mem_mode mode;
    char prefix[128]; /* path_prefix (file mode) */
    int greeter;      /* greeter requests instead of echoed patterns */
    unsigned sessions;
    unsigned streams;
    unsigned rounds; /* rounds of one request per stream */
    size_t max_size;
    uint64_t seed;
    int res_fd;   /* struct cl_result goes here */
    int ready_fd; /* -1, or a byte once round `mark_round` is flushed */
    unsigned mark_round;
    int hold_fd; /* -1, or wait for EOF on it before closing */
};

struct cl_result {
    int32_t open_rc;
    int32_t first_err; /* first error a stream ended with, 0 if none */
    uint64_t flushed;  /* requests flushed */
    uint64_t ok;       /* answered, every byte right */
    uint64_t bad;      /* answered wrong */
    uint64_t errors;   /* ended by a session or stream error (not a timeout) */
    uint64_t timeouts; /* no answer within RECV_MS */
    uint64_t flush_errors;
    uint64_t marked;    /* requests of round mark_round flushed (before the ready byte) */
    uint64_t marked_ok; /* ... and answered right */
};

/* ---- fixture: one daemon directory, client children ---- */

#define MAX_KIDS 16

struct kid {
    pid_t pid;
    int res_fd;   /* read end of the result pipe */
    int ready_fd; /* read end, or -1 */
    int hold_fd;  /* write end, or -1 */
    struct cl_args args;
};

struct fx {
    struct du_daemon d;
    struct kid kids[MAX_KIDS];
    int nkids;
    unsigned failures_before;
};

/* Makes the directory (du_init) with the suite's spawn options. 0 or -errno. */
int dfx_begin(struct fx *f);
/* A client of service svc of d: 1 session, 4 streams, 10 rounds, up to
 * 64 KiB, its shm prefix and seed from `letter`, no pipes. */
void dfx_cl_defaults(struct cl_args *a, const struct du_daemon *d, const char *svc,
                     enum shmipc_mem_mode mode, char letter);
/* Forks a client child; with want_ready / want_hold it gets those pipes.
 * Returns its index in f->kids or -1. */
int dfx_kid_start(struct fx *f, const struct cl_args *args, int want_ready, int want_hold);
/* Waits for its mark round to be flushed (a byte on the ready pipe). 0
 * when it came. */
int dfx_kid_ready(struct kid *k);
/* Lets it close (EOF on its hold pipe), reaps the child and reads its
 * result. Its exit code (-1 on timeout); says on stderr what went wrong. */
int dfx_kid_finish(struct kid *k, struct cl_result *r, int timeout_ms);
/* Asserts that the child did all its work right. */
void dfx_kid_expect_all_ok(struct kid *k);
/* Kills and reaps every child left, stops shmipcd, checks its log for
 * sanitizer reports, removes the directory and this run's /dev/shm
 * files. Safe on a half-built fixture. */
void dfx_end(struct fx *f);

#endif
