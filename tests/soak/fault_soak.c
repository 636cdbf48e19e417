/*
 * shmipc-fault-soak: a faulty service must not hurt a healthy one.
 *
 * shmipcd serves `echo` (plugins/echo) on the shared workers and `faulty`
 * (tests/plugins/faulty) on workers of its own. The faulty plugin blocks
 * its worker up to MAX_BLOCK_MS, fails requests (the host closes the
 * stream), answers at once, or defers answers to a thread of its own that
 * completes or fails them later, as each request's first byte says (or its
 * own seeded RNG, for 'R'). Four clients per service, two threaded
 * (a thread per stream, blocking calls) and two event-loop style
 * (cfg.no_io_thread, one thread driving its streams with
 * shmipc_client_poll), half in memfd and half in file mode.
 *
 * Phases: the healthy clients alone (their p99 latency measured), then
 * beside the faulty ones (measured again), then SIGTERM under load with
 * limits.drain_timeout_ms = DRAIN_MS, timed to shmipcd's exit. The
 * latencies are taken in windows of WINDOW_MS; one in which other
 * processes of the machine took a good part of a CPU (/proc/stat minus
 * our two processes) is left out of both p99s: it measured them, not the
 * isolation of the services (whose worker threads are disjoint).
 *
 * The one rule: every request ends in a known way and is checked. An
 * answer's bytes are compared whole; a faulty request that asked to fail
 * must see its stream closed, one that asked for an answer must get it;
 * no request may wait out its timeout (set far above the longest wait a
 * faulty stream can meet); a healthy request flushed before the SIGTERM
 * must be answered (the drain answers queued work). Requests the stop
 * cut short are counted apart and not held against anyone.
 *
 * Checked at the end: the above; healthy p99 beside <= 3 x p99 alone; the
 * slow-handler log names every block well past slow_handler_ms and
 * nothing that was not a block; shmipcctl stats agree with the clients;
 * the stop took at most DRAIN_MS + STOP_GRACE_MS (+ STOP_EXIT_MS for the
 * exit itself) and shmipcd's exit code says whether it abandoned work
 * (1 exactly when its log says so); no sanitizer report in shmipcd's log;
 * nothing left in /dev/shm or /tmp. The last line on stdout:
 *   fault-soak: healthy_requests=N healthy_failed=0 healthy_p99_us=X
 *   healthy_p99_alone_us=Y faulty_requests=M faulty_closed=E
 *   faulty_timeouts=0 slow_logged=S stop_ms=T
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../common/daemon_util.h"
#include "shmipc/shmipc.h"

#define CLIENTS 4 /* per service: 0, 1 threaded; 2, 3 event-loop */
#define STREAMS 2 /* per client */
#define PAYLOAD_MAX 2048
#define REQ_MAX (64 + PAYLOAD_MAX)
#define HEAD_LEN 6   /* the faulty plugin's answer head: "<kind><4 digits> " */
#define PACE_US 1000 /* between one answer and a stream's next request */

#define MAX_BLOCK_MS 1500 /* the faulty plugin's longest block or deferral */
#define SLOW_MS 300       /* the faulty service's slow_handler_ms */
/* A block this much past SLOW_MS must be in the slow log; one this much
 * short of it must not (the master looks at the workers between events). */
#define SLOW_MARGIN_MS 200
#define DRAIN_MS 1000 /* limits.drain_timeout_ms */
/* shmipcd waits for a handler still running at the drain deadline this
 * much longer, counted from when it began to stop; the signal's delivery
 * and the process's exit come on top. */
#define STOP_GRACE_MS 500
#define STOP_EXIT_MS 50
#define FAULTY_WORKERS 2

#define HEALTHY_TIMEOUT_MS 5000
/* A faulty request may wait behind a block of every other faulty stream
 * (they may all sit on one worker) and its own longest wait. */
#define FAULTY_TIMEOUT_MS (CLIENTS * STREAMS * MAX_BLOCK_MS + 5000)
#define START_MS 20000
#define STOP_WAIT_MS 20000 /* before shmipcd is killed */
#define ADMIN_MS 10000
#define WARM_MS 300 /* first requests (page faults, connections): not measured */
#define P99_FACTOR 3
#define WINDOW_MS 500 /* the healthy latencies are taken in windows this long */
/* A window in which other processes used more than this share of one CPU
 * measured the machine, not us: its latencies are left out of the p99s. */
#define NOISY_PCT 30

enum { PH_WARM, PH_ALONE, PH_BESIDE, PH_TAIL, PH_STOP };
static const char *const phase_names[] = {"warm-up", "alone", "beside", "tail", "stop"};

/* Written by the driver, read by the clients (seq_cst). The measuring
 * phases are cut into windows of WINDOW_MS, numbered from 0. */
static int phase, window;

static int ld_phase(void)
{
    return __atomic_load_n(&phase, __ATOMIC_SEQ_CST);
}

static int ld_window(void)
{
    return __atomic_load_n(&window, __ATOMIC_SEQ_CST);
}

struct sample {
    uint32_t us, win;
};

static void add(uint64_t *p, uint64_t v)
{
    __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
}

static uint64_t ld(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static int failures;

#define fail(...) du_fail("fault-soak", &failures, __VA_ARGS__)

/* ---- a client's counts (its threads add, the driver sums) ---- */

struct counts {
    uint64_t done;       /* requests ended, however */
    uint64_t ok;         /* answered, every byte right */
    uint64_t wrong;      /* answered wrong (bytes, kind, delay), or an extra answer */
    uint64_t failed;     /* an error that should not have been */
    uint64_t timeouts;   /* waited out the timeout */
    uint64_t closed;     /* faulty: the stream closed as the request asked */
    uint64_t at_stop;    /* cut short by the stop (flushed after it, or faulty) */
    uint64_t unanswered; /* healthy: flushed before the stop, not answered */
    uint64_t ans_b;      /* faulty answers that had blocked */
    uint64_t ans_d;      /* faulty answers that were deferred */
    uint64_t slow_must;  /* answered blocks the slow log must name */
    uint64_t slow_may;   /* blocks (or unknowns) it may name */
    int32_t first_err;
};

struct client;

/* One stream's requests: owned by one thread (its own, or the loop's). */
struct stream_ctx {
    struct client *cl;
    unsigned idx;
    shmipc_stream *s;
    uint64_t rng, n;
    uint8_t req[REQ_MAX], resp[REQ_MAX + HEAD_LEN + 8];
    size_t len;
    char kind; /* faulty: asked for */
    long delay;
    int ph_sent, ph_flushed, win_sent;
    uint64_t t0, deadline, next_send;
    int busy, close_me;
    /* healthy latencies, of requests within one measuring window */
    struct sample *lat;
    size_t nlat, caplat;
    pthread_t th;
};

struct client {
    unsigned id;
    int faulty, evloop;
    shmipc_client *c;
    int timeout_ms;
    uint64_t seed;
    struct counts k;
    struct stream_ctx st[STREAMS];
    pthread_t loop_th;
    int started;
};

static struct client clients[2][CLIENTS]; /* [0] healthy, [1] faulty */

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void note_err(struct counts *k, int rc)
{
    int32_t zero = 0;
    __atomic_compare_exchange_n(&k->first_err, &zero, rc, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- requests and their outcomes ---- */

/* Faulty kinds as the clients ask: mostly answers, and every fault. A
 * block holds its worker and every stream served there, and a deferral
 * its stream: half of the waits are short, so that the service stays
 * slow, not stuck. */
static void pick_kind(struct stream_ctx *st)
{
    uint64_t r = xorshift(&st->rng);
    static const char kinds[] = "AAAAAAAABBFFDDDDXXRR";
    st->kind = kinds[r % 20];
    long max = (r >> 8) % 2 ? SLOW_MS / 2 : MAX_BLOCK_MS;
    st->delay = st->kind == 'A' || st->kind == 'F' || st->kind == 'R'
                    ? 0
                    : (long)((r >> 20) % (uint64_t)(max + 1));
}

static void build_request(struct stream_ctx *st)
{
    struct client *cl = st->cl;
    int len;
    if (cl->faulty) {
        pick_kind(st);
        len = snprintf((char *)st->req, 64, "%c%04ld c%u s%u n%llu ", st->kind, st->delay, cl->id,
                       st->idx, (unsigned long long)st->n);
    } else {
        len = snprintf((char *)st->req, 64, "h c%u s%u n%llu ", cl->id, st->idx,
                       (unsigned long long)st->n);
    }
    st->n++;
    size_t pad = (size_t)(xorshift(&st->rng) % (PAYLOAD_MAX + 1));
    for (size_t i = 0; i < pad; i += 8) {
        uint64_t r = xorshift(&st->rng);
        memcpy(st->req + len + i, &r, pad - i < 8 ? pad - i : 8);
    }
    st->len = (size_t)len + pad;
}

static void record_latency(struct stream_ctx *st, int win, uint64_t ns)
{
    if (st->nlat == st->caplat) {
        size_t cap = st->caplat ? st->caplat * 2 : 8192;
        struct sample *v = realloc(st->lat, cap * sizeof(*v));
        if (v == NULL)
            return; /* a missing sample only thins the statistics */
        st->lat = v;
        st->caplat = cap;
    }
    uint64_t us = ns / 1000;
    st->lat[st->nlat++] =
        (struct sample){us > UINT32_MAX ? UINT32_MAX : (uint32_t)us, (uint32_t)win};
}

/* Checks a faulty answer: "<kind><delay> " and the whole request. */
static int faulty_answer_ok(struct stream_ctx *st, const shmipc_msg *m, char *kind, long *delay)
{
    if (m->len != st->len + HEAD_LEN || shmipc_msg_copy(m, 0, st->resp, m->len) != m->len ||
        st->resp[5] != ' ')
        return 0;
    long d = 0;
    for (int i = 1; i < 5; i++) {
        if (st->resp[i] < '0' || st->resp[i] > '9')
            return 0;
        d = d * 10 + (st->resp[i] - '0');
    }
    *kind = (char)st->resp[0];
    *delay = d;
    if (*kind != 'A' && *kind != 'B' && *kind != 'D')
        return 0;
    if (st->kind == 'R' ? d > MAX_BLOCK_MS : *kind != st->kind || d != st->delay)
        return 0;
    return memcmp(st->resp + HEAD_LEN, st->req, st->len) == 0;
}

static void report(struct stream_ctx *st, const char *what, int rc)
{
    struct client *cl = st->cl;
    fprintf(stderr, "fault-soak: %s client %u stream %u request %llu (%.*s, %s): %s%s%s\n",
            cl->faulty ? "faulty" : "healthy", cl->id, st->idx, (unsigned long long)(st->n - 1),
            cl->faulty ? 5 : 1, (const char *)st->req, phase_names[st->ph_flushed], what,
            rc ? ": " : "", rc ? shmipc_strerror(rc) : "");
}

/* The request ended with rc (0: m holds the answer, released here) at
 * t1. Returns 1 when the stream is to be closed. */
static int outcome(struct stream_ctx *st, int rc, shmipc_msg *m, uint64_t t1)
{
    struct client *cl = st->cl;
    struct counts *k = &cl->k;
    int now = ld_phase();
    add(&k->done, 1);
    st->busy = 0;
    if (rc == SHMIPC_ETIMEDOUT) {
        add(&k->timeouts, 1);
        report(st, "no answer or close within the timeout", 0);
        return 1;
    }
    if (rc == 0 && !cl->faulty) {
        int good = m->len == st->len && shmipc_msg_copy(m, 0, st->resp, m->len) == m->len &&
                   memcmp(st->resp, st->req, st->len) == 0;
        shmipc_msg_release(m);
        if (!good) {
            add(&k->wrong, 1);
            report(st, "wrong answer", 0);
            return 1;
        }
        add(&k->ok, 1);
        if ((st->ph_sent == PH_ALONE || st->ph_sent == PH_BESIDE) && now == st->ph_sent &&
            ld_window() == st->win_sent)
            record_latency(st, st->win_sent, t1 - st->t0);
        return 0;
    }
    if (rc == 0) {
        char kind = 0;
        long delay = 0;
        int good = faulty_answer_ok(st, m, &kind, &delay);
        shmipc_msg_release(m);
        if (!good || st->kind == 'F' || st->kind == 'X') {
            add(&k->wrong, 1);
            report(st, good ? "answered, but it asked to fail" : "wrong answer", 0);
            return 1;
        }
        add(&k->ok, 1);
        if (kind == 'B')
            add(&k->ans_b, 1);
        else if (kind == 'D')
            add(&k->ans_d, 1);
        /* shmipcd's slow log runs until the stop, not in the drain. */
        if (kind == 'B' && delay >= SLOW_MS + SLOW_MARGIN_MS && now != PH_STOP)
            add(&k->slow_must, 1);
        if (kind == 'B' && st->kind == 'R' && delay > SLOW_MS - SLOW_MARGIN_MS)
            add(&k->slow_may, 1); /* an asked-for block was counted when sent */
        return 0;
    }
    /* An error: the stream is done for. */
    note_err(k, rc);
    if (cl->faulty && rc == SHMIPC_ECLOSED && now != PH_STOP &&
        (st->kind == 'F' || st->kind == 'X' || st->kind == 'R')) {
        add(&k->closed, 1);
        return 1;
    }
    if (now == PH_STOP && (cl->faulty || st->ph_flushed == PH_STOP)) {
        add(&k->at_stop, 1);
        if (st->kind == 'R')
            add(&k->slow_may, 1); /* it may have been a block that ran at the stop */
        return 1;
    }
    if (now == PH_STOP) {
        add(&k->unanswered, 1);
        report(st, "flushed before the stop, not answered", rc);
    } else {
        add(&k->failed, 1);
        report(st, "failed", rc);
    }
    return 1;
}

/* Writes and flushes the stream's next request. 0, or the error (the
 * request then ended with it). */
static int send_request(struct stream_ctx *st)
{
    struct client *cl = st->cl;
    build_request(st);
    if (cl->faulty && st->kind == 'B' && st->delay > SLOW_MS - SLOW_MARGIN_MS)
        add(&cl->k.slow_may, 1);
    st->ph_sent = ld_phase();
    st->win_sent = ld_window();
    st->t0 = du_now_ns();
    st->deadline = st->t0 + (uint64_t)cl->timeout_ms * 1000000u;
    st->busy = 1;
    int rc = shmipc_stream_write(st->s, st->req, st->len);
    if (rc == 0)
        rc = shmipc_stream_flush(st->s);
    st->ph_flushed = ld_phase(); /* before the stop: shmipcd must answer it */
    return rc;
}

/* A stream for st: 0, or the error (counted, unless the stop explains it). */
static int get_stream(struct stream_ctx *st)
{
    int rc = shmipc_client_get(st->cl->c, &st->s);
    if (rc == 0) {
        shmipc_stream_set_user(st->s, st);
        return 0;
    }
    st->s = NULL;
    if (ld_phase() != PH_STOP) {
        add(&st->cl->k.failed, 1);
        note_err(&st->cl->k, rc);
        fprintf(stderr, "fault-soak: client %u: shmipc_client_get: %s\n", st->cl->id,
                shmipc_strerror(rc));
    }
    return rc;
}

static int idle_faulty; /* --idle-faulty */

/* Whether a client of this service sends in this phase. */
static int sending(const struct client *cl, int ph)
{
    return ph != PH_STOP && (!cl->faulty || (ph >= PH_BESIDE && !idle_faulty));
}

/* ---- threaded style: a thread per stream, blocking calls ---- */

static void *stream_thread(void *arg)
{
    struct stream_ctx *st = arg;
    struct client *cl = st->cl;
    for (;;) {
        int ph = ld_phase();
        if (ph == PH_STOP)
            break;
        if (!sending(cl, ph)) {
            sleep_us(5000);
            continue;
        }
        if (st->s == NULL && get_stream(st) < 0) {
            sleep_us(10000);
            continue;
        }
        shmipc_msg m = {0};
        int rc = send_request(st);
        if (rc == 0)
            rc = shmipc_stream_recv(st->s, &m, cl->timeout_ms);
        if (outcome(st, rc, &m, du_now_ns())) {
            shmipc_stream_close(st->s);
            st->s = NULL;
        }
        if (st->ph_flushed == PH_STOP)
            break;
        sleep_us(PACE_US);
    }
    if (st->s != NULL)
        shmipc_client_put(cl->c, st->s);
    st->s = NULL;
    return NULL;
}

/* ---- event-loop style: one thread, shmipc_client_poll ---- */

/* Takes what a ready stream holds. */
static void loop_ready(struct stream_ctx *st)
{
    shmipc_msg m;
    int rc;
    while (st->s != NULL && !st->close_me &&
           (rc = shmipc_stream_recv(st->s, &m, 0)) != SHMIPC_ETIMEDOUT) {
        if (rc == 0 && !st->busy) {
            shmipc_msg_release(&m);
            add(&st->cl->k.wrong, 1);
            report(st, "an answer nobody asked for", 0);
            st->close_me = 1;
            break;
        }
        if (!st->busy) { /* closed while idle: a fresh one next time */
            st->close_me = 1;
            break;
        }
        st->close_me = outcome(st, rc, &m, du_now_ns());
        if (st->close_me)
            break;
        st->next_send = du_now_ns() + PACE_US * 1000u;
    }
}

static void loop_close_marked(struct client *cl)
{
    for (unsigned i = 0; i < STREAMS; i++) {
        struct stream_ctx *st = &cl->st[i];
        if (st->close_me && st->s != NULL) {
            shmipc_stream_close(st->s);
            st->s = NULL;
        }
        st->close_me = 0;
    }
}

static void *loop_thread(void *arg)
{
    struct client *cl = arg;
    shmipc_stream *ready[STREAMS * 2];
    for (;;) {
        int ph = ld_phase();
        uint64_t now = du_now_ns(), wake = now + 50 * 1000000u;
        unsigned busy = 0;
        for (unsigned i = 0; i < STREAMS; i++) {
            struct stream_ctx *st = &cl->st[i];
            if (!st->busy && sending(cl, ph) && now >= st->next_send) {
                if (st->s == NULL && get_stream(st) < 0) {
                    st->next_send = now + 10 * 1000000u;
                } else {
                    int rc = send_request(st);
                    if (rc < 0 && outcome(st, rc, NULL, du_now_ns()))
                        st->close_me = 1;
                }
            }
            if (st->busy) {
                busy++;
                if (st->deadline < wake)
                    wake = st->deadline;
            } else if (sending(cl, ph) && st->next_send < wake) {
                wake = st->next_send;
            }
        }
        loop_close_marked(cl);
        if (ph == PH_STOP && busy == 0)
            break;
        if (!sending(cl, ph) && busy == 0) {
            sleep_us(5000);
            continue;
        }
        now = du_now_ns();
        int timeout = wake > now ? (int)((wake - now + 999999) / 1000000) : 0;
        int n = shmipc_client_poll(cl->c, ready, STREAMS * 2, timeout);
        if (n < 0) {
            /* Every session gone: what was in flight ended with it. */
            for (unsigned i = 0; i < STREAMS; i++)
                if (cl->st[i].busy && outcome(&cl->st[i], n, NULL, du_now_ns()))
                    cl->st[i].close_me = 1;
            loop_close_marked(cl);
            if (ld_phase() == PH_STOP)
                break;
            sleep_us(10000);
            continue;
        }
        for (int i = 0; i < n; i++)
            loop_ready(shmipc_stream_user(ready[i]));
        now = du_now_ns();
        for (unsigned i = 0; i < STREAMS; i++) {
            struct stream_ctx *st = &cl->st[i];
            if (st->busy && !st->close_me && now >= st->deadline)
                st->close_me = outcome(st, SHMIPC_ETIMEDOUT, NULL, now);
        }
        loop_close_marked(cl);
    }
    for (unsigned i = 0; i < STREAMS; i++) {
        if (cl->st[i].s != NULL)
            shmipc_client_put(cl->c, cl->st[i].s);
        cl->st[i].s = NULL;
    }
    return NULL;
}

/* ---- the clients ---- */

static int client_start(struct client *cl, const char *address, const char *shm_prefix)
{
    char prefix[200];
    snprintf(prefix, sizeof(prefix), "/dev/shm/%s%c%u", shm_prefix, cl->faulty ? 'f' : 'h', cl->id);
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = address;
    cfg.mode = cl->id % 2 ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD;
    cfg.path_prefix = prefix;
    cfg.pool_bytes = 4u << 20;
    cfg.connect_timeout_ms = 5000;
    cfg.no_io_thread = cl->evloop;
    int rc = shmipc_client_open(&cfg, &cl->c);
    if (rc < 0) {
        cl->c = NULL;
        fail("%s client %u: shmipc_client_open(%s): %s", cl->faulty ? "faulty" : "healthy", cl->id,
             address, shmipc_strerror(rc));
        return -1;
    }
    for (unsigned i = 0; i < STREAMS; i++) {
        struct stream_ctx *st = &cl->st[i];
        st->cl = cl;
        st->idx = i;
        st->rng = (cl->seed + 1) * 0x9e3779b97f4a7c15ull ^ ((uint64_t)cl->faulty << 40) ^
                  ((uint64_t)cl->id << 20) ^ (i + 1);
        xorshift(&st->rng);
    }
    if (cl->evloop) {
        if (pthread_create(&cl->loop_th, NULL, loop_thread, cl) != 0) {
            fail("pthread_create failed");
            return -1;
        }
        cl->started = 1;
        return 0;
    }
    for (unsigned i = 0; i < STREAMS; i++) {
        if (pthread_create(&cl->st[i].th, NULL, stream_thread, &cl->st[i]) != 0) {
            fail("pthread_create failed");
            return -1;
        }
        cl->started = (int)i + 1;
    }
    return 0;
}

/* Joins a client's threads, each within deadline; -1 if one is stuck. */
static int client_join(struct client *cl, uint64_t deadline)
{
    int stuck = 0;
    unsigned n = cl->evloop ? (cl->started ? 1 : 0) : (unsigned)cl->started;
    for (unsigned i = 0; i < n; i++) {
        pthread_t th = cl->evloop ? cl->loop_th : cl->st[i].th;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t abs = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec +
                       (uint64_t)du_left_ms(deadline) * 1000000u;
        ts.tv_sec = (time_t)(abs / 1000000000u);
        ts.tv_nsec = (long)(abs % 1000000000u);
        if (pthread_timedjoin_np(th, NULL, &ts) != 0) {
            fail("%s client %u: a thread did not finish after the stop",
                 cl->faulty ? "faulty" : "healthy", cl->id);
            stuck = 1;
        }
    }
    cl->started = 0;
    return stuck ? -1 : 0;
}

static uint64_t sum(int faulty, size_t off)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < CLIENTS; i++)
        v += ld((const uint64_t *)((const char *)&clients[faulty][i].k + off));
    return v;
}

#define SUM(faulty, f) sum(faulty, offsetof(struct counts, f))

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* p50, p99 and max of the healthy latencies of windows [w0, w1) but the
 * noisy ones; the sample count, 0 when there are none. */
static size_t percentiles(const int *noisy, unsigned w0, unsigned w1, uint32_t *p50, uint32_t *p99,
                          uint32_t *max)
{
    size_t n = 0;
    for (unsigned c = 0; c < CLIENTS; c++)
        for (unsigned i = 0; i < STREAMS; i++)
            n += clients[0][c].st[i].nlat;
    *p50 = *p99 = *max = 0;
    uint32_t *all = n ? malloc(n * sizeof(*all)) : NULL;
    if (all == NULL)
        return 0;
    size_t k = 0;
    for (unsigned c = 0; c < CLIENTS; c++) {
        for (unsigned i = 0; i < STREAMS; i++) {
            const struct stream_ctx *st = &clients[0][c].st[i];
            for (size_t j = 0; j < st->nlat; j++)
                if (st->lat[j].win >= w0 && st->lat[j].win < w1 && !noisy[st->lat[j].win])
                    all[k++] = st->lat[j].us;
        }
    }
    if (k > 0) {
        qsort(all, k, sizeof(*all), cmp_u32);
        *p50 = all[(k - 1) / 2];
        *p99 = all[(k * 99 + 99) / 100 - 1];
        *max = all[k - 1];
    }
    free(all);
    return k;
}

/* ---- shmipcd ---- */

struct svc_stats {
    unsigned long requests, handler_errors, deferred, slow;
};

/* One service's line of `stats`: 0, or -1 when it is missing. */
static int parse_stats(const char *txt, const char *name, struct svc_stats *s)
{
    char key[64];
    snprintf(key, sizeof(key), "service %s: requests ", name);
    const char *p = strstr(txt, key);
    if (p == NULL || sscanf(p + strlen(key), "%lu", &s->requests) != 1)
        return -1;
    const char *e = strstr(p, "handler errors "), *d = strstr(p, ", deferred "),
               *sl = strstr(p, "slow handlers "), *nl = strchr(p, '\n');
    if (e == NULL || d == NULL || sl == NULL || (nl != NULL && sl > nl) ||
        sscanf(e, "handler errors %lu", &s->handler_errors) != 1 ||
        sscanf(d, ", deferred %lu", &s->deferred) != 1 ||
        sscanf(sl, "slow handlers %lu", &s->slow) != 1)
        return -1;
    return 0;
}

/* SIGTERM to shmipcd, timed to its exit (a pidfd: no polling delay in
 * the time). Its exit code, as du_stop's; the time in *ms. */
static int stop_daemon(struct du_daemon *d, long long *ms)
{
    int pfd = (int)syscall(SYS_pidfd_open, d->pid, 0);
    uint64_t t0 = du_now_ns();
    if (pfd < 0) {
        int rc = du_stop(d, SIGTERM, STOP_WAIT_MS);
        *ms = (long long)((du_now_ns() - t0) / 1000000u);
        return rc;
    }
    kill(d->pid, SIGTERM);
    struct pollfd p = {pfd, POLLIN, 0};
    int n;
    while ((n = poll(&p, 1, du_left_ms(t0 + (uint64_t)STOP_WAIT_MS * 1000000u) + 1)) < 0 &&
           errno == EINTR)
        ;
    *ms = (long long)((du_now_ns() - t0) / 1000000u);
    close(pfd);
    int rc = du_stop(d, SIGKILL, n > 0 ? STOP_WAIT_MS : 0); /* reaps; SIGKILL only if alive */
    return n > 0 ? rc : -1;
}

/* shmipcd dies with us. */
static const struct du_spawn_opts daemon_spawn = {
    .die_with_parent = 1,
    .asan_defaults = "quarantine_size_mb=16",
};

struct opts {
    unsigned seconds;
    unsigned long long seed;
    char shmipcd[4096], echo[4200], faulty[4200];
};

static int write_conf(struct du_daemon *d, const struct opts *o)
{
    struct du_conf c = {.n = 0};
    char limits[64];
    snprintf(limits, sizeof(limits), "drain_timeout_ms = %d;", DRAIN_MS);
    du_conf_head(&c, d, limits); /* the shared workers: 2 */
    du_conf_service(&c, d, 1, "echo", o->echo, NULL);
    du_conf_add(&c,
                ",\n  { name = \"faulty\"; listen = \"%s\"; plugin = \"%s\"; workers = %d; "
                "slow_handler_ms = %d; config = { max_block_ms = %d; seed = %llu; }; }\n",
                du_addr(d, "faulty"), o->faulty, FAULTY_WORKERS, SLOW_MS, MAX_BLOCK_MS, o->seed);
    return du_conf_write(&c, d, "shmipcd.conf");
}

static void set_phase(int ph)
{
    __atomic_store_n(&phase, ph, __ATOMIC_SEQ_CST);
}

/* ---- CPU time of the machine and of ours (the p99 check's context) ---- */

/* Busy jiffies of every CPU (/proc/stat), and of this process and
 * shmipcd (utime + stime of /proc/<pid>/stat); -1 when unreadable. */
struct cpu_mark {
    long long all, ours;
    uint64_t ns;
};

static long long proc_jiffies(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    char *t = du_read_file(path, NULL);
    char *p = t != NULL ? strrchr(t, ')') : NULL;
    unsigned long long ut = 0, st = 0;
    int ok = p != NULL &&
             sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2;
    free(t);
    return ok ? (long long)(ut + st) : -1;
}

static void cpu_mark(struct cpu_mark *m, pid_t daemon)
{
    m->ns = du_now_ns();
    char *t = du_read_file("/proc/stat", NULL);
    unsigned long long v[8] = {0};
    int n = t != NULL ? sscanf(t, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                               &v[2], &v[3], &v[4], &v[5], &v[6], &v[7])
                      : 0;
    free(t);
    /* user nice system idle iowait irq softirq steal: all but idle, iowait */
    m->all = n == 8 ? (long long)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) : -1;
    long long self = proc_jiffies(getpid()), dmn = daemon > 0 ? proc_jiffies(daemon) : 0;
    m->ours = self >= 0 && dmn >= 0 ? self + dmn : -1;
}

/* CPU other processes used between two marks, in % of one CPU; -1 when
 * unknown. A p99 that moved with it moved for reasons not ours. */
static int cpu_others(const struct cpu_mark *a, const struct cpu_mark *b)
{
    if (a->all < 0 || b->all < 0 || a->ours < 0 || b->ours < 0 || b->ns <= a->ns)
        return -1;
    long long others = (b->all - a->all) - (b->ours - a->ours);
    double secs = (double)(b->ns - a->ns) / 1e9, hz = (double)sysconf(_SC_CLK_TCK);
    return others <= 0 ? 0 : (int)((double)others / hz / secs * 100.0 + 0.5);
}

/* The measuring phases, window by window (mark[w] at the start of window
 * w, mark[nwin] at the end); progress every 5 s. */
static void run_windows(struct cpu_mark *mark, unsigned nwin, unsigned alone_w, pid_t daemon,
                        uint64_t t_start)
{
    for (unsigned w = 0; w < nwin; w++) {
        __atomic_store_n(&window, (int)w, __ATOMIC_SEQ_CST);
        if (w == 0 || w == alone_w)
            __atomic_store_n(&phase, w == 0 ? PH_ALONE : PH_BESIDE, __ATOMIC_SEQ_CST);
        cpu_mark(&mark[w], daemon);
        du_sleep_ms(WINDOW_MS);
        if ((w + 1) % (5000 / WINDOW_MS) != 0)
            continue;
        fprintf(stderr,
                "fault-soak: %.1f s (%s): healthy %llu requests, faulty %llu (%llu closed, "
                "%llu blocks, %llu deferred answers)\n",
                (double)(du_now_ns() - t_start) / 1e9, phase_names[ld_phase()],
                (unsigned long long)SUM(0, done), (unsigned long long)SUM(1, done),
                (unsigned long long)SUM(1, closed), (unsigned long long)SUM(1, ans_b),
                (unsigned long long)SUM(1, ans_d));
    }
    cpu_mark(&mark[nwin], daemon);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: shmipc-fault-soak [SECONDS] [--seed N] [--shmipcd PATH] [--idle-faulty]\n"
               "  SECONDS        the load's length: healthy alone, then beside the faulty\n"
               "                 service (default 30, at least 3)\n"
               "  --seed N       seeds the clients' and the plugin's choices (default 1)\n"
               "  --shmipcd PATH the daemon (default: shmipcd next to this program)\n"
               "  --idle-faulty  the faulty clients send nothing: the p99 ratio's own noise\n"
               "                 (the checks that need faults then fail)\n");
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option lo[] = {
        {"seed", required_argument, NULL, 's'},
        {"shmipcd", required_argument, NULL, 'd'},
        {"idle-faulty", no_argument, NULL, 'i'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->seconds = 30;
    o->seed = 1;
    const char *dir = du_exe_dir();
    snprintf(o->shmipcd, sizeof(o->shmipcd), "%s/shmipcd", dir);
    snprintf(o->echo, sizeof(o->echo), "%s/../plugins/echo.so", dir);
    snprintf(o->faulty, sizeof(o->faulty), "%s/../tests/plugins/faulty.so", dir);
    int opt;
    char *end;
    while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (opt) {
        case 's':
            errno = 0;
            o->seed = strtoull(optarg, &end, 10);
            if (errno != 0 || *optarg == '\0' || *end != '\0') {
                fprintf(stderr, "fault-soak: bad --seed: %s\n", optarg);
                return -1;
            }
            break;
        case 'd':
            snprintf(o->shmipcd, sizeof(o->shmipcd), "%s", optarg);
            break;
        case 'i':
            idle_faulty = 1;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        errno = 0;
        unsigned long v = strtoul(argv[optind], &end, 10);
        if (errno != 0 || *argv[optind] == '\0' || *end != '\0' || v < 3 || v > 86400) {
            fprintf(stderr, "fault-soak: SECONDS must be 3..86400, not %s\n", argv[optind]);
            return -1;
        }
        o->seconds = (unsigned)v;
        optind++;
    }
    if (optind != argc) {
        usage(stderr);
        return -1;
    }
    return 0;
}

/* ---- the run ---- */

/* The checks on what shmipcd's log says once it exited. */
static int check_log(const struct du_daemon *d, int exit_code, uint64_t slow_must,
                     uint64_t slow_may, unsigned long stats_slow)
{
    char *log = du_read_file(d->log, NULL);
    if (log == NULL) {
        fail("cannot read %s", d->log);
        return 0;
    }
    int slow = du_count_str(log, "service faulty: slow handler: plugin faulty");
    int healthy_slow = du_count_str(log, "service echo: slow handler");
    int abandoned = du_count_str(log, "abandoned");
    int completes = du_count_str(log, "faulty: building a deferred answer");
    if (slow < 0 || (uint64_t)slow < slow_must || (uint64_t)slow > slow_may)
        fail("the slow-handler log names %d faulty calls: at least %llu blocks ran %d ms or "
             "more past slow_handler_ms %d and were answered, at most %llu blocks could have "
             "passed it",
             slow, (unsigned long long)slow_must, SLOW_MARGIN_MS, SLOW_MS,
             (unsigned long long)slow_may);
    if ((unsigned long)slow < stats_slow)
        fail("stats counted %lu slow handlers, the log names %d", stats_slow, slow);
    if (healthy_slow != 0)
        fail("the slow-handler log names %d echo calls", healthy_slow);
    if (completes != 0)
        fail("the faulty plugin could not build %d deferred answers", completes);
    /* Exit 1 exactly when something was abandoned (and said so). */
    if (exit_code == 1 && abandoned == 0)
        fail("shmipcd exited 1 after SIGTERM, and its log names nothing abandoned");
    if (exit_code == 0 && abandoned != 0)
        fail("shmipcd exited 0 after SIGTERM, but its log says it abandoned work");
    fprintf(stderr,
            "fault-soak: shmipcd exited %d; slow handlers logged %d (must %llu, may "
            "%llu); %d log lines say abandoned\n",
            exit_code, slow, (unsigned long long)slow_must, (unsigned long long)slow_may,
            abandoned);
    free(log);
    return slow;
}

int main(int argc, char **argv)
{
    static struct opts o;
    static struct du_daemon d;
    if (parse_opts(argc, argv, &o) < 0)
        return 2;
    const char *need[] = {o.shmipcd, o.echo, o.faulty};
    for (unsigned i = 0; i < 3; i++) {
        if (access(need[i], R_OK) < 0) {
            fprintf(stderr, "fault-soak: %s: %s\n", need[i], strerror(errno));
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    unsigned alone_ms = o.seconds * 1000 / 4;
    alone_ms = alone_ms < 1500 ? 1500 : alone_ms > 5000 ? 5000 : alone_ms;
    unsigned beside_ms = o.seconds * 1000 - alone_ms;
    fprintf(stderr,
            "fault-soak: seed %llu; healthy alone %u ms, beside the faulty service %u ms; "
            "blocks up to %d ms, slow_handler_ms %d, drain_timeout_ms %d, faulty timeout %d ms\n",
            o.seed, alone_ms, beside_ms, MAX_BLOCK_MS, SLOW_MS, DRAIN_MS, FAULTY_TIMEOUT_MS);

    uint64_t t_start = du_now_ns();
    struct svc_stats hs = {0}, fs = {0};
    /* The measuring windows: the first `alone` ones alone, then beside. */
    unsigned nwin = (alone_ms + beside_ms) / WINDOW_MS, alone_w = alone_ms / WINDOW_MS;
    struct cpu_mark *mark = calloc(nwin + 1, sizeof(*mark));
    int *noisy = calloc(nwin, sizeof(*noisy));
    if (mark == NULL || noisy == NULL) {
        fprintf(stderr, "fault-soak: out of memory\n");
        return 1;
    }
    for (unsigned w = 0; w <= nwin; w++)
        mark[w].all = mark[w].ours = -1;
    long long stop_ms = -1;
    int slow_logged = 0, exit_code = -2;
    pid_t dpid = 0;
    char shm_prefix[64];
    snprintf(shm_prefix, sizeof(shm_prefix), "shmipc-faultsoak-%d-", (int)getpid());
    int rc = du_init(&d, "/tmp/shmipc-faultsoak-XXXXXX");
    if (rc < 0) {
        fail("mkdtemp: %s", strerror(-rc));
        goto out;
    }
    snprintf(d.shmipcd, sizeof(d.shmipcd), "%s", o.shmipcd);
    d.spawn = daemon_spawn;
    if ((rc = write_conf(&d, &o)) < 0) {
        fail("writing %s: %s", d.conf, strerror(-rc));
        goto out;
    }
    /* Before any thread: du_start forks. */
    if ((rc = du_start(&d, START_MS)) != 0) {
        fail(rc > 0 ? "shmipcd exited at start with %d" : "shmipcd did not start (%d)", rc);
        goto out;
    }
    dpid = d.pid;
    char addr[2][200];
    snprintf(addr[0], sizeof(addr[0]), "%s", du_addr(&d, "echo"));
    snprintf(addr[1], sizeof(addr[1]), "%s", du_addr(&d, "faulty"));
    for (int f = 0; f < 2; f++) {
        for (unsigned i = 0; i < CLIENTS; i++) {
            struct client *cl = &clients[f][i];
            cl->id = i;
            cl->faulty = f;
            cl->evloop = i >= CLIENTS / 2;
            cl->seed = o.seed;
            cl->timeout_ms = f ? FAULTY_TIMEOUT_MS : HEALTHY_TIMEOUT_MS;
            if (client_start(cl, addr[f], shm_prefix) < 0)
                goto stop;
        }
    }

    set_phase(PH_WARM);
    du_sleep_ms(WARM_MS);
    run_windows(mark, nwin, alone_w, dpid, t_start);
    set_phase(PH_TAIL);

    /* What shmipcd counted, beside what the clients saw until now (each
     * stream may have one request the server counted and the client not
     * yet, or the other way round). */
    uint64_t seen_closed = SUM(1, closed), seen_deferred = SUM(1, ans_d), seen_healthy = SUM(0, ok);
    char txt[16384];
    int n = du_admin(d.admin, "stats", txt, sizeof(txt), ADMIN_MS);
    if (n <= 0 || parse_stats(txt, "echo", &hs) < 0 || parse_stats(txt, "faulty", &fs) < 0) {
        fail("shmipcd's stats do not parse:\n%s", n > 0 ? txt : "(no reply)");
    } else {
        fprintf(stderr,
                "fault-soak: stats: echo %lu requests, %lu handler errors, %lu slow; "
                "faulty %lu requests, %lu handler errors, %lu deferred, %lu slow\n",
                hs.requests, hs.handler_errors, hs.slow, fs.requests, fs.handler_errors,
                fs.deferred, fs.slow);
        const uint64_t slack = CLIENTS * STREAMS;
        if (hs.handler_errors != 0 || hs.slow != 0)
            fail("stats: echo has %lu handler errors and %lu slow handlers", hs.handler_errors,
                 hs.slow);
        if (hs.requests + slack < seen_healthy)
            fail("stats: echo served %lu requests, its clients got %llu answers", hs.requests,
                 (unsigned long long)seen_healthy);
        if (fs.handler_errors + slack < seen_closed)
            fail("stats: faulty has %lu handler errors, its clients saw %llu streams closed",
                 fs.handler_errors, (unsigned long long)seen_closed);
        if (fs.deferred + slack < seen_deferred)
            fail("stats: faulty deferred %lu answers, its clients got %llu", fs.deferred,
                 (unsigned long long)seen_deferred);
    }

stop:
    /* SIGTERM with requests in flight; timed to the exit. */
    set_phase(PH_STOP);
    if (d.pid > 0) {
        exit_code = stop_daemon(&d, &stop_ms);
        fprintf(stderr, "fault-soak: shmipcd stopped in %lld ms (exit %d)\n", stop_ms, exit_code);
        if (exit_code != 0 && exit_code != 1)
            fail("shmipcd exited with %d after SIGTERM (0, or 1 for abandoned work, expected)",
                 exit_code);
        if (stop_ms > DRAIN_MS + STOP_GRACE_MS + STOP_EXIT_MS)
            fail("the stop took %lld ms; drain_timeout_ms %d + %d + %d ms allowed", stop_ms,
                 DRAIN_MS, STOP_GRACE_MS, STOP_EXIT_MS);
    }
    uint64_t join_by = du_deadline(FAULTY_TIMEOUT_MS + 10000);
    int stuck = 0;
    for (int f = 0; f < 2; f++)
        for (unsigned i = 0; i < CLIENTS; i++)
            stuck |= client_join(&clients[f][i], join_by) < 0;
    if (stuck) {
        fail("client threads stuck: not closing the clients");
        fflush(NULL);
        _exit(1);
    }
    for (int f = 0; f < 2; f++) {
        for (unsigned i = 0; i < CLIENTS; i++) {
            if (clients[f][i].c != NULL)
                shmipc_client_close(clients[f][i].c);
            clients[f][i].c = NULL;
        }
    }
    if (exit_code == 0 || exit_code == 1)
        slow_logged = check_log(&d, exit_code, SUM(1, slow_must), SUM(1, slow_may), fs.slow);

out:
    if (d.pid > 0 && du_stop(&d, SIGKILL, 5000) != 0)
        fail("shmipcd had to be killed");
    if (d.dir[0] != '\0') {
        const char *san = du_log_check(&d, failures != 0);
        if (san != NULL)
            fail("shmipcd's log holds a %s report", san);
        if (dpid > 0 && du_daemon_tmpdirs(dpid, 1) != 0)
            fail("shmipcd left /tmp/shmipcd-%d-* behind", (int)dpid);
        int left = du_count_prefix("/dev/shm", shm_prefix);
        if (left != 0) {
            fail("%d files with prefix %s left in /dev/shm:", left, shm_prefix);
            du_show_prefix("/dev/shm", shm_prefix);
            du_remove_prefix("/dev/shm", shm_prefix);
        }
        if ((rc = du_remove_dir(d.dir)) < 0)
            fail("rmdir %s: %s", d.dir, strerror(-rc));
    }

    /* Windows in which other processes took a good part of a CPU measured
     * the machine, not shmipcd: their latencies are left out, unless that
     * would leave a phase with none (then both phases keep all: a load
     * that lasted through both weighs on both). */
    unsigned noisy_alone = 0, noisy_beside = 0;
    for (unsigned w = 0; w < nwin; w++) {
        int others = cpu_others(&mark[w], &mark[w + 1]);
        noisy[w] = others > NOISY_PCT;
        *(w < alone_w ? &noisy_alone : &noisy_beside) += (unsigned)noisy[w];
    }
    int busy_throughout = noisy_alone == alone_w || noisy_beside == nwin - alone_w;
    if (busy_throughout)
        memset(noisy, 0, nwin * sizeof(*noisy));
    int others_alone = cpu_others(&mark[0], &mark[alone_w]),
        others_beside = cpu_others(&mark[alone_w], &mark[nwin]);
    uint32_t a50, a99, amax, b50, b99, bmax;
    size_t na = percentiles(noisy, 0, alone_w, &a50, &a99, &amax),
           nb = percentiles(noisy, alone_w, nwin, &b50, &b99, &bmax);
    fprintf(stderr,
            "fault-soak: healthy latency alone: %zu samples, p50 %u us, p99 %u us, max %u us; "
            "beside: %zu samples, p50 %u us, p99 %u us, max %u us; other processes used %d%% "
            "of a CPU alone, %d%% beside; windows of %d ms with more than %d%%: %u of %u alone, "
            "%u of %u beside, %s\n",
            na, a50, a99, amax, nb, b50, b99, bmax, others_alone, others_beside, WINDOW_MS,
            NOISY_PCT, noisy_alone, alone_w, noisy_beside, nwin - alone_w,
            busy_throughout ? "all kept (a phase had no other)" : "left out");
    uint64_t h_failed = SUM(0, failed) + SUM(0, wrong) + SUM(0, timeouts) + SUM(0, unanswered);
    uint64_t f_bad = SUM(1, failed) + SUM(1, wrong) + SUM(1, unanswered);
    fprintf(stderr,
            "fault-soak: healthy: %llu ok, %llu failed, %llu wrong, %llu timeouts, %llu "
            "unanswered at the stop, %llu cut by the stop; faulty: %llu ok (%llu blocks, %llu "
            "deferred), %llu closed, %llu failed, %llu wrong, %llu timeouts, %llu cut by the "
            "stop\n",
            (unsigned long long)SUM(0, ok), (unsigned long long)SUM(0, failed),
            (unsigned long long)SUM(0, wrong), (unsigned long long)SUM(0, timeouts),
            (unsigned long long)SUM(0, unanswered), (unsigned long long)SUM(0, at_stop),
            (unsigned long long)SUM(1, ok), (unsigned long long)SUM(1, ans_b),
            (unsigned long long)SUM(1, ans_d), (unsigned long long)SUM(1, closed),
            (unsigned long long)SUM(1, failed), (unsigned long long)SUM(1, wrong),
            (unsigned long long)SUM(1, timeouts), (unsigned long long)SUM(1, at_stop));
    if (h_failed != 0)
        fail("%llu healthy requests failed", (unsigned long long)h_failed);
    if (f_bad != 0)
        fail("%llu faulty requests ended otherwise than asked", (unsigned long long)f_bad);
    if (SUM(1, timeouts) != 0)
        fail("%llu faulty requests waited out their timeout", (unsigned long long)SUM(1, timeouts));
    if (na == 0 || nb == 0)
        fail("no healthy latencies measured (alone %zu, beside %zu)", na, nb);
    else if (b99 > (uint64_t)P99_FACTOR * a99)
        fail("healthy p99 beside the faulty service %u us > %d x %u us alone%s", b99, P99_FACTOR,
             a99,
             busy_throughout ? " (other processes kept the CPUs busy: see their share above)" : "");
    if (SUM(1, closed) == 0 || SUM(1, ans_b) == 0 || SUM(1, ans_d) == 0)
        fail("the faulty service did not show every fault (closes, blocks, deferred answers)");
    fprintf(stderr, "fault-soak: %.1f s, %s\n", (double)(du_now_ns() - t_start) / 1e9,
            failures ? "FAILED" : "passed");
    printf("fault-soak: healthy_requests=%llu healthy_failed=%llu healthy_p99_us=%u "
           "healthy_p99_alone_us=%u faulty_requests=%llu faulty_closed=%llu faulty_timeouts=%llu "
           "slow_logged=%d stop_ms=%lld\n",
           (unsigned long long)SUM(0, done), (unsigned long long)h_failed, b99, a99,
           (unsigned long long)SUM(1, done), (unsigned long long)SUM(1, closed),
           (unsigned long long)SUM(1, timeouts), slow_logged, stop_ms);
    for (int f = 0; f < 2; f++)
        for (unsigned i = 0; i < CLIENTS; i++)
            for (unsigned s = 0; s < STREAMS; s++)
                free(clients[f][i].st[s].lat);
    free(mark);
    free(noisy);
    return failures ? 1 : 0;
}
