/*
 * The machine's floor for the benchmarks (see floor.h): a futex ring of N
 * processes and a bare-bones blocking echo, both without shmipc.
 */
#include "floor.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINE 64
#define START_MS 60000 /* every process forked and waiting */
#define STOP_MS 10000  /* every process gone once told */
#define ECHO_MAX 64
#define ECHO_SPIN_NS 10000u /* the echo server's spin after work */
#define ECHO_WAIT_MS 5000   /* an answer later than this is an error */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Waits while *w == val, at most ms; shared (not private) futexes: the
 * words live in memory several processes map. */
static void fwait(uint32_t *w, uint32_t val, int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    syscall(SYS_futex, w, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void fwake(uint32_t *w, int n)
{
    syscall(SYS_futex, w, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* A forked helper dies with the process that forked it. */
static int child_setup(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    return getppid() == parent ? 0 : -1;
}

/* Reaps pid (blocking), retrying when a signal interrupts the wait. */
static void reap_one(pid_t pid)
{
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

/* How many of pids[0..n) have exited (reaped here, their slot zeroed). */
static unsigned reap_exited(pid_t *pids, unsigned n)
{
    unsigned gone = 0;
    for (unsigned i = 0; i < n; i++)
        if (pids[i] > 0 && waitpid(pids[i], NULL, WNOHANG) == pids[i]) {
            pids[i] = 0;
            gone++;
        }
    return gone;
}

/* Reaps pids[0..n): waits up to STOP_MS for them to exit, then kills and
 * reaps the rest. Returns how many had to be killed. */
static unsigned reap_all(pid_t *pids, unsigned n)
{
    unsigned left = 0, killed = 0;
    for (unsigned i = 0; i < n; i++)
        left += pids[i] > 0;
    uint64_t end = mono_ns() + (uint64_t)STOP_MS * 1000000u;
    while (left > 0 && mono_ns() < end) {
        unsigned gone = reap_exited(pids, n);
        left -= gone;
        if (gone == 0)
            sleep_ms(5);
    }
    for (unsigned i = 0; i < n; i++)
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            reap_one(pids[i]);
            pids[i] = 0;
            killed++;
        }
    return killed;
}

/* ---- the ring ---- */

struct ring_slot {
    uint32_t tokens; /* futex: tokens waiting here */
    uint32_t pad0;
    uint64_t hops;   /* written by its process only */
    char pad[LINE - 16];
};

struct ring_ctl {
    uint32_t stop;
    uint32_t ready;
    char pad[LINE - 8];
    struct ring_slot slot[];
};

static void ring_child(struct ring_ctl *c, unsigned i, unsigned n)
{
    struct ring_slot *me = &c->slot[i], *next = &c->slot[(i + 1) % n];
    __atomic_add_fetch(&c->ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        uint32_t t = __atomic_load_n(&me->tokens, __ATOMIC_ACQUIRE);
        if (t == 0) {
            fwait(&me->tokens, 0, 100);
            continue;
        }
        /* One token on; tokens are never lost, even when two meet. */
        __atomic_sub_fetch(&me->tokens, 1, __ATOMIC_ACQ_REL);
        __atomic_store_n(&me->hops, me->hops + 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&next->tokens, 1, __ATOMIC_RELEASE);
        fwake(&next->tokens, 1);
    }
    _exit(0);
}

static uint64_t ring_hops(const struct ring_ctl *c, unsigned n)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < n; i++)
        sum += __atomic_load_n(&c->slot[i].hops, __ATOMIC_RELAXED);
    return sum;
}

int floor_ring(unsigned nprocs, unsigned tokens, int ms, struct floor_result *out)
{
    memset(out, 0, sizeof(*out));
    if (nprocs < 2 || tokens < 1 || tokens > nprocs / 2 || ms <= 0)
        return -EINVAL;
    size_t bytes = sizeof(struct ring_ctl) + (size_t)nprocs * sizeof(struct ring_slot);
    struct ring_ctl *c = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                              -1, 0);
    pid_t *pids = calloc(nprocs, sizeof(*pids));
    if (c == MAP_FAILED || pids == NULL) {
        if (c != MAP_FAILED)
            munmap(c, bytes);
        free(pids);
        return -ENOMEM;
    }
    int rc = 0;
    pid_t self = getpid();
    for (unsigned i = 0; i < nprocs && rc == 0; i++) {
        pid_t p = fork();
        if (p == 0) {
            if (child_setup(self) < 0)
                _exit(1);
            ring_child(c, i, nprocs);
        }
        if (p < 0)
            rc = -errno;
        else
            pids[i] = p;
    }
    uint64_t end = mono_ns() + (uint64_t)START_MS * 1000000u;
    while (rc == 0 && __atomic_load_n(&c->ready, __ATOMIC_ACQUIRE) < nprocs) {
        if (mono_ns() > end)
            rc = -ETIMEDOUT;
        else if (reap_exited(pids, nprocs) > 0)
            rc = -ECHILD; /* one died before it started */
        else
            sleep_ms(2);
    }
    if (rc == 0) {
        for (unsigned k = 0; k < tokens; k++) {
            struct ring_slot *s = &c->slot[(size_t)k * nprocs / tokens];
            __atomic_add_fetch(&s->tokens, 1, __ATOMIC_RELEASE);
            fwake(&s->tokens, 1);
        }
        sleep_ms(ms / 5 > 100 ? ms / 5 : 100); /* warm-up */
        uint64_t h0 = ring_hops(c, nprocs), t0 = mono_ns();
        sleep_ms(ms);
        uint64_t h1 = ring_hops(c, nprocs), t1 = mono_ns();
        out->ops = h1 - h0;
        out->ns_per_op = out->ops ? (double)(t1 - t0) / (double)out->ops : 0.0;
        if (out->ops == 0 || reap_exited(pids, nprocs) > 0)
            rc = -EIO; /* the tokens went nowhere, or one died with a token */
    }
    __atomic_store_n(&c->stop, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < nprocs; i++) {
        __atomic_add_fetch(&c->slot[i].tokens, 1, __ATOMIC_RELEASE);
        fwake(&c->slot[i].tokens, 1);
    }
    if (reap_all(pids, nprocs) > 0 && rc == 0)
        rc = -ETIMEDOUT;
    free(pids);
    munmap(c, bytes);
    return rc;
}

/* ---- the bare blocking echo ---- */

struct echo_slot {
    uint32_t req;  /* bumped by the caller with each request */
    uint32_t resp; /* futex: set to req by the server when answered */
    char pad[LINE - 8];
};

struct echo_ctl {
    uint32_t seq;      /* futex: bumped with every request */
    uint32_t sleeping; /* the server sleeps (or is about to) on seq */
    uint32_t stop;
    uint32_t pad0;
    uint64_t srv_cpu_ns; /* the server's CPU time, written as it stops */
    char pad[LINE - 24];
    struct echo_slot slot[ECHO_MAX];
};

struct echo_caller {
    pthread_t th;
    struct echo_ctl *c;
    unsigned idx;
    uint8_t *buf;
    const uint8_t *pattern;
    size_t size;
    uint64_t end_ns;
    uint64_t ops, errors, cpu_ns;
    uint32_t *lat_us;
    size_t nlat, caplat;
};

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void echo_server(struct echo_ctl *c, unsigned n)
{
    uint32_t seen[ECHO_MAX] = {0};
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        uint32_t seq = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
        int did = 0;
        for (unsigned i = 0; i < n; i++) {
            uint32_t r = __atomic_load_n(&c->slot[i].req, __ATOMIC_ACQUIRE);
            if (r != seen[i]) { /* the request's own bytes are the answer */
                seen[i] = r;
                __atomic_store_n(&c->slot[i].resp, r, __ATOMIC_RELEASE);
                fwake(&c->slot[i].resp, 1);
                did = 1;
            }
        }
        if (did)
            continue;
        uint64_t end = mono_ns() + ECHO_SPIN_NS;
        while (mono_ns() < end && __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE) == seq)
            __builtin_ia32_pause();
        if (__atomic_load_n(&c->seq, __ATOMIC_ACQUIRE) != seq)
            continue;
        /* Asleep: a caller that bumps seq after this store wakes us; one
         * that bumped it before is seen by the check below. */
        __atomic_store_n(&c->sleeping, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&c->seq, __ATOMIC_SEQ_CST) == seq)
            fwait(&c->seq, seq, 100);
        __atomic_store_n(&c->sleeping, 0, __ATOMIC_RELAXED);
    }
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    __atomic_store_n(&c->srv_cpu_ns, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
                     __ATOMIC_RELEASE);
    _exit(0);
}

static int echo_check(const uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i += 61)
        if (p[i] != (uint8_t)(seed + i))
            return 0;
    return n == 0 || p[n - 1] == (uint8_t)(seed + n - 1);
}

static void *echo_call_loop(void *arg)
{
    struct echo_caller *w = arg;
    struct echo_slot *s = &w->c->slot[w->idx];
    uint64_t cpu0 = thread_cpu_ns();
    uint32_t q = 0;
    for (uint8_t seed = 0; mono_ns() < w->end_ns; seed++) {
        uint64_t t0 = mono_ns();
        memcpy(w->buf, w->pattern + seed, w->size);
        __atomic_store_n(&s->req, ++q, __ATOMIC_RELEASE);
        __atomic_add_fetch(&w->c->seq, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&w->c->sleeping, __ATOMIC_SEQ_CST))
            fwake(&w->c->seq, 1);
        uint64_t give_up = t0 + (uint64_t)ECHO_WAIT_MS * 1000000u;
        uint32_t r;
        while ((r = __atomic_load_n(&s->resp, __ATOMIC_ACQUIRE)) != q && mono_ns() < give_up)
            fwait(&s->resp, r, 100);
        if (r != q) {
            w->errors++;
            break;
        }
        if (!echo_check(w->buf, w->size, seed))
            w->errors++;
        if (w->nlat == w->caplat) {
            size_t cap = w->caplat ? w->caplat * 2 : 4096;
            uint32_t *l = realloc(w->lat_us, cap * sizeof(*l));
            if (l == NULL) {
                w->errors++;
                break;
            }
            w->lat_us = l;
            w->caplat = cap;
        }
        w->lat_us[w->nlat++] = (uint32_t)((mono_ns() - t0 + 500) / 1000);
        w->ops++;
    }
    w->cpu_ns = thread_cpu_ns() - cpu0;
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int floor_echo(size_t size, unsigned nthreads, int ms, struct floor_result *out)
{
    memset(out, 0, sizeof(*out));
    if (nthreads < 1 || nthreads > ECHO_MAX || ms <= 0)
        return -EINVAL;
    size_t data = (size ? size : 1) * nthreads;
    struct echo_ctl *c = mmap(NULL, sizeof(*c), PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint8_t *buf = mmap(NULL, data, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint8_t *pattern = malloc(size + 256);
    struct echo_caller *w = calloc(nthreads, sizeof(*w));
    int rc = 0;
    if (c == MAP_FAILED || buf == MAP_FAILED || pattern == NULL || w == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < size + 256; i++)
        pattern[i] = (uint8_t)i;
    memset(buf, 0, data); /* touched here: no first-touch faults in the window */
    pid_t self = getpid(), srv = fork();
    if (srv == 0) {
        if (child_setup(self) < 0)
            _exit(1);
        echo_server(c, nthreads);
    }
    if (srv < 0) {
        rc = -errno;
        goto out;
    }
    uint64_t t0 = mono_ns(), end = t0 + (uint64_t)ms * 1000000u;
    unsigned started = 0;
    for (unsigned i = 0; i < nthreads; i++) {
        w[i] = (struct echo_caller){.c = c, .idx = i, .buf = buf + (size_t)i * size,
                                    .pattern = pattern, .size = size, .end_ns = end};
        if (pthread_create(&w[i].th, NULL, echo_call_loop, &w[i]) != 0) {
            rc = -EAGAIN;
            break;
        }
        started++;
    }
    size_t nlat = 0;
    uint64_t cpu = 0;
    for (unsigned i = 0; i < started; i++) {
        pthread_join(w[i].th, NULL);
        out->ops += w[i].ops;
        out->errors += w[i].errors;
        cpu += w[i].cpu_ns;
        nlat += w[i].nlat;
    }
    uint64_t wall = mono_ns() - t0;
    __atomic_store_n(&c->stop, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&c->seq, 1, __ATOMIC_SEQ_CST);
    fwake(&c->seq, 1);
    pid_t one[1] = {srv};
    if (reap_all(one, 1) > 0 && rc == 0)
        rc = -ETIMEDOUT;
    uint64_t srv_cpu = __atomic_load_n(&c->srv_cpu_ns, __ATOMIC_ACQUIRE);
    if (out->ops > 0) {
        out->ns_per_op = (double)wall / (double)out->ops;
        out->cpu_cli_us = (double)cpu / 1000.0 / (double)out->ops;
        out->cpu_srv_us = (double)srv_cpu / 1000.0 / (double)out->ops;
    }
    uint32_t *all = nlat ? malloc(nlat * sizeof(*all)) : NULL;
    if (all != NULL) {
        size_t k = 0;
        for (unsigned i = 0; i < started; i++) {
            memcpy(all + k, w[i].lat_us, w[i].nlat * sizeof(*all));
            k += w[i].nlat;
        }
        qsort(all, nlat, sizeof(*all), cmp_u32);
        out->p50_us = all[nlat / 2];
        out->p99_us = all[nlat * 99 / 100];
        free(all);
    }
    if (rc == 0 && (out->ops == 0 || out->errors > 0))
        rc = -EIO;
out:
    if (w != NULL)
        for (unsigned i = 0; i < nthreads; i++)
            free(w[i].lat_us);
    free(w);
    free(pattern);
    if (buf != MAP_FAILED)
        munmap(buf, data);
    if (c != MAP_FAILED)
        munmap(c, sizeof(*c));
    return rc;
}
