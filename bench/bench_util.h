/*
 * shmipc-bench's shared parts (bench_util.c): the request modes, what a
 * row measured, the payload pattern, latency percentiles, clocks, CPU
 * accounting, the row phases, child processes and the progress line.
 * Every other file of the program builds on it; it builds on none of them.
 *
 * The one rule: every transport runs the same loop shape (one client thread
 * driving C requests in flight, warm-up, a timed window, a drain) and the
 * same payload code, so that the rows differ only by the transport.
 */
#ifndef SHMIPC_BENCH_UTIL_H
#define SHMIPC_BENCH_UTIL_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum bench_mode { MODE_ZERO = 0, MODE_FULL = 1 };

/* Byte 0 of every request tells the server what to do (see plugins/bench). */
#define REQ_ZERO 'Z'
#define REQ_FULL 'F'

/* Set by SIGINT/SIGTERM/SIGHUP: every loop ends its row and the program
 * cleans up. */
extern volatile sig_atomic_t bench_stop;

/* ---- what one row measured ---- */

struct row_result {
    const char *transport; /* "shmipc-lib", "shmipc-shmipcd", "uds", "tcp" or --label */
    enum bench_mode mode;
    size_t size;
    unsigned conc;
    uint64_t ops;     /* round trips completed inside the timed window */
    uint64_t errors;  /* failed sends/receives and payload mismatches */
    double wall_s;    /* length of the timed window */
    double ns_per_op; /* wall / ops */
    double p50_us, p99_us;
    double wakeups_per_op;
    double sleeps_per_op; /* voluntary context switches, client + server */
    double cpu_client_us; /* per op; < 0 unknown */
    double cpu_server_us; /* per op; < 0 unknown (--connect) */
    double other_cpu_pct; /* CPU used by other processes meanwhile, % of one CPU */
    uint64_t fallbacks;   /* shmipc: FallbackData events (pool exhausted) */
    unsigned sessions;    /* shmipc sessions, or socket connections */
};

/* Timing of one row: warm-up until every request slot completed once and
 * warm_ms passed, then ms of measurement, then a drain. */
struct row_params {
    enum bench_mode mode;
    size_t size;
    unsigned conc;
    int warm_ms;
    int ms;
    pid_t server_pid; /* for server CPU; <= 0 unknown */
};

uint64_t now_ns(void);
/* CPU time of this process (all threads), ns. */
uint64_t self_cpu_ns(void);
/* CPU time of a process, summed over its threads (/proc/PID/task/STAR/schedstat,
 * ns resolution; falls back to /proc/PID/stat ticks). 0 when unknown. */
uint64_t proc_cpu_ns(pid_t pid);
/* CPU time all processes spent in user and system mode since boot
 * (/proc/stat, clock ticks; irq and softirq time not included), ns. */
uint64_t system_busy_ns(void);
/* Voluntary context switches (times a thread blocked): this process (all
 * threads), and another process summed over its threads. */
uint64_t self_sleeps(void);
uint64_t proc_sleeps(pid_t pid);

/* The payload pattern: byte at message offset o is byte (o % 8) of the
 * little-endian word seed + (o / 8) * K, except byte 0, which is REQ_FULL.
 * Fill and check work on any piece [off, off + n) of a message. */
void pattern_fill(uint8_t *dst, size_t off, size_t n, uint64_t seed);
/* 1 when the piece matches. */
int pattern_check(const uint8_t *p, size_t off, size_t n, uint64_t seed);
uint64_t pattern_seed(unsigned slot, uint64_t seq);

/* Round-trip latencies of one row (ns), kept in an array allocated before
 * the row; grows (rarely, outside the timed path's common case) if a row
 * completes more round trips than planned. */
struct lat {
    uint32_t *v;
    size_t n, cap;
};
int lat_init(struct lat *l, size_t cap);
void lat_grow(struct lat *l);
static inline void lat_add(struct lat *l, uint64_t ns)
{
    if (l->n == l->cap)
        lat_grow(l);
    if (l->n < l->cap)
        l->v[l->n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}
/* Percentile q (0..1) in microseconds; reorders the array. */
double lat_pct_us(struct lat *l, double q);
void lat_free(struct lat *l);

/* Children: remembered so that every exit path can kill them. */
void child_track(pid_t pid);
/* SIGTERM, wait up to grace_ms, then SIGKILL and reap. Returns the exit
 * status from waitpid, or -1. */
int child_stop(pid_t pid, int grace_ms);
/* SIGKILL every tracked child still running (atexit). */
void child_kill_all(void);
/* In a forked child: die with the parent. */
void child_die_with_parent(pid_t parent);
/* 1 while pid has not exited (reaps it when it has). */
int child_alive(pid_t pid);

/* The phases of one row, the same for every transport: the transport's
 * loop sends, polls and checks; these say what a completion counts for and
 * when the timed window opens and closes, so that every transport is timed
 * by the same code. */
enum row_phase { PH_WARM, PH_MEASURE, PH_DRAIN };

struct row_snap {
    uint64_t t, cpu_self, cpu_srv, cpu_all, wakeups, sleeps;
};

struct row_run {
    const struct row_params *p;
    struct row_result *r;
    const char *unit; /* "stream" or "connection", for messages */
    unsigned conc;
    /* The transport's count of wake-ups so far, read at each snapshot. */
    uint64_t (*wakeups)(void *arg);
    void *arg;
    struct lat lat;
    enum row_phase ph;
    uint64_t row0, warm_end;
    uint64_t end;         /* PH_MEASURE: the window's end; PH_DRAIN: the drain's start */
    struct row_snap a, b; /* the timed window's two ends */
    unsigned inflight, warmed;
};

/* Starts a row of p->conc requests in flight: clears *r and fills what the
 * parameters say. Returns 0 or -ENOMEM; on success row_end must follow. */
int row_begin(struct row_run *w, const struct row_params *p, struct row_result *r,
              unsigned sessions, const char *unit, uint64_t (*wakeups)(void *), void *arg);
/* At the top of each turn of the loop: opens or closes the timed window by
 * the clock, gives up on a warm-up or drain that takes too long. Returns
 * the time, or 0 when the loop must end now. */
uint64_t row_tick(struct row_run *w);
/* Ends the timed window (if open) at t, or the warm-up on an error. t == 0:
 * at the moment after the snapshot (a send that failed may have blocked). */
void row_stop(struct row_run *w, uint64_t t);
/* A response to a request sent at t0 arrived whole at t; *warmed is the
 * request slot's flag. 1 when the slot should send its next request. */
int row_complete(struct row_run *w, int *warmed, uint64_t t0, uint64_t t);
/* A response that did not match its request; reported once per row. */
void row_bad_response(struct row_run *w, unsigned idx, size_t size);
/* Fills the row's measurements from the window's snapshots and latencies,
 * frees them. Returns 0, or -EIO when the row had errors. */
int row_end(struct row_run *w);

/* Progress line on stderr (a rewritten line on a terminal). */
void progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void progress_done(void);

#endif
