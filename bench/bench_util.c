/*
 * shmipc-bench helpers: the payload pattern every transport fills and
 * checks, latency percentiles, clocks and CPU accounting, the phases every
 * transport's row loop goes through, child processes (tracked so that no
 * exit path leaves one running), the progress line.
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the pattern is defined little-endian");

volatile sig_atomic_t bench_stop;

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t self_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int read_small(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return n > 0 ? 0 : -1;
}

/* utime + stime from /proc/PID/stat (clock ticks): the field after the
 * command's closing parenthesis is field 3; utime and stime are 14, 15. */
static uint64_t stat_cpu_ns(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if (read_small(path, buf, sizeof(buf)) < 0)
        return 0;
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return 0;
    unsigned long long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %llu %llu", &ut, &st) != 2)
        return 0;
    long hz = sysconf(_SC_CLK_TCK);
    return (ut + st) * (1000000000ull / (uint64_t)(hz > 0 ? hz : 100));
}

uint64_t proc_cpu_ns(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    uint64_t sum = 0;
    int ok = 1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char p[300], buf[128];
        snprintf(p, sizeof(p), "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
        unsigned long long run;
        if (read_small(p, buf, sizeof(buf)) < 0 || sscanf(buf, "%llu", &run) != 1) {
            ok = 0;
            break;
        }
        sum += run;
    }
    closedir(d);
    return ok ? sum : stat_cpu_ns(pid);
}

uint64_t system_busy_ns(void)
{
    char buf[512];
    unsigned long long user, nice, sys;
    if (read_small("/proc/stat", buf, sizeof(buf)) < 0 ||
        sscanf(buf, "cpu %llu %llu %llu", &user, &nice, &sys) != 3)
        return 0;
    long hz = sysconf(_SC_CLK_TCK);
    return (user + nice + sys) * (1000000000ull / (uint64_t)(hz > 0 ? hz : 100));
}

uint64_t self_sleeps(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)ru.ru_nvcsw;
}

uint64_t proc_sleeps(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    uint64_t sum = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char p[300], buf[2048];
        snprintf(p, sizeof(p), "/proc/%d/task/%s/status", (int)pid, e->d_name);
        if (read_small(p, buf, sizeof(buf)) < 0)
            continue;
        const char *v = strstr(buf, "\nvoluntary_ctxt_switches:");
        unsigned long long n;
        if (v != NULL && sscanf(v + 26, "%llu", &n) == 1)
            sum += n;
    }
    closedir(d);
    return sum;
}

/* ---- payload pattern ---- */

#define PAT_K 0x9E3779B97F4A7C15ull

static inline uint8_t pat_byte(uint64_t seed, size_t o)
{
    return (uint8_t)((seed + (uint64_t)(o >> 3) * PAT_K) >> ((o & 7) * 8));
}

/* Four words per step in two SSE2-sized GCC vectors: fill and check run
 * near memory speed (about 2.5x the scalar loop), so that the payload work
 * the transports share stays small beside what they differ in. */
typedef uint64_t v2u64 __attribute__((vector_size(16)));
#define STEP4 ((v2u64){4 * PAT_K, 4 * PAT_K})

void pattern_fill(uint8_t *dst, size_t off, size_t n, uint64_t seed)
{
    uint8_t *d = dst;
    size_t o = off, end = off + n;
    for (; o < end && (o & 7); o++)
        *d++ = pat_byte(seed, o);
    uint64_t w = seed + (uint64_t)(o >> 3) * PAT_K;
    if (o + 32 <= end) {
        v2u64 a = {w, w + PAT_K}, b = {w + 2 * PAT_K, w + 3 * PAT_K};
        for (; o + 32 <= end; o += 32, d += 32) {
            memcpy(d, &a, 16);
            memcpy(d + 16, &b, 16);
            a += STEP4;
            b += STEP4;
        }
        w = a[0];
    }
    for (; o + 8 <= end; o += 8, d += 8, w += PAT_K)
        memcpy(d, &w, 8);
    for (; o < end; o++)
        *d++ = pat_byte(seed, o);
    if (off == 0 && n > 0)
        dst[0] = REQ_FULL;
}

int pattern_check(const uint8_t *p, size_t off, size_t n, uint64_t seed)
{
    size_t o = off, end = off + n;
    if (o == 0 && n > 0) {
        if (p[0] != REQ_FULL)
            return 0;
        p++;
        o++;
    }
    for (; o < end && (o & 7); o++)
        if (*p++ != pat_byte(seed, o))
            return 0;
    uint64_t w = seed + (uint64_t)(o >> 3) * PAT_K, diff = 0;
    if (o + 32 <= end) {
        v2u64 a = {w, w + PAT_K}, b = {w + 2 * PAT_K, w + 3 * PAT_K};
        v2u64 acc_a = {0, 0}, acc_b = {0, 0};
        for (; o + 32 <= end; o += 32, p += 32) {
            v2u64 x, y;
            memcpy(&x, p, 16);
            memcpy(&y, p + 16, 16);
            acc_a |= x ^ a;
            acc_b |= y ^ b;
            a += STEP4;
            b += STEP4;
        }
        acc_a |= acc_b;
        diff = acc_a[0] | acc_a[1];
        w = a[0];
    }
    for (; o + 8 <= end; o += 8, p += 8, w += PAT_K) {
        uint64_t x;
        memcpy(&x, p, 8);
        diff |= x ^ w;
    }
    if (diff != 0)
        return 0;
    for (; o < end; o++)
        if (*p++ != pat_byte(seed, o))
            return 0;
    return 1;
}

uint64_t pattern_seed(unsigned slot, uint64_t seq)
{
    return ((uint64_t)slot << 40) ^ (seq * 0xD6E8FEB86659FD93ull) ^ 0x5bd1e995u;
}

/* ---- latency ---- */

int lat_init(struct lat *l, size_t cap)
{
    l->n = 0;
    l->cap = cap ? cap : 1024;
    l->v = malloc(l->cap * sizeof(*l->v));
    return l->v != NULL ? 0 : -ENOMEM;
}

void lat_grow(struct lat *l)
{
    size_t cap = l->cap * 2;
    uint32_t *v = realloc(l->v, cap * sizeof(*v));
    if (v == NULL)
        return; /* the sample stops growing; percentiles use what it has */
    l->v = v;
    l->cap = cap;
}

static void swap32(uint32_t *a, uint32_t *b)
{
    uint32_t t = *a;
    *a = *b;
    *b = t;
}

/* Quickselect (Numerical Recipes' select): v[k] ends up where a full sort
 * would put it; v[l] and v[ir] serve as sentinels of the inner scans. */
static uint32_t select_k(uint32_t *v, size_t n, size_t k)
{
    size_t l = 0, ir = n - 1;
    for (;;) {
        if (ir <= l + 1) {
            if (ir == l + 1 && v[ir] < v[l])
                swap32(&v[l], &v[ir]);
            return v[k];
        }
        size_t mid = (l + ir) >> 1;
        swap32(&v[mid], &v[l + 1]);
        if (v[l] > v[ir])
            swap32(&v[l], &v[ir]);
        if (v[l + 1] > v[ir])
            swap32(&v[l + 1], &v[ir]);
        if (v[l] > v[l + 1])
            swap32(&v[l], &v[l + 1]);
        size_t i = l + 1, j = ir;
        uint32_t a = v[l + 1];
        for (;;) {
            do
                i++;
            while (v[i] < a);
            do
                j--;
            while (v[j] > a);
            if (j < i)
                break;
            swap32(&v[i], &v[j]);
        }
        v[l + 1] = v[j];
        v[j] = a;
        if (j >= k)
            ir = j - 1;
        if (j <= k)
            l = i;
    }
}

double lat_pct_us(struct lat *l, double q)
{
    if (l->n == 0)
        return 0.0;
    size_t k = (size_t)(q * (double)(l->n - 1) + 0.5);
    return (double)select_k(l->v, l->n, k) / 1000.0;
}

void lat_free(struct lat *l)
{
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* ---- the phases of a row ---- */

#define WARM_CAP_NS (60ull * 1000000000ull)
#define DRAIN_CAP_NS (30ull * 1000000000ull)

int row_begin(struct row_run *w, const struct row_params *p, struct row_result *r,
              unsigned sessions, const char *unit, uint64_t (*wakeups)(void *), void *arg)
{
    memset(w, 0, sizeof(*w));
    if (lat_init(&w->lat, (size_t)(p->ms > 0 ? p->ms : 1) * 1000) < 0)
        return -ENOMEM;
    memset(r, 0, sizeof(*r));
    r->mode = p->mode;
    r->size = p->size;
    r->conc = p->conc;
    r->sessions = sessions;
    w->p = p;
    w->r = r;
    w->unit = unit;
    w->conc = p->conc;
    w->wakeups = wakeups;
    w->arg = arg;
    w->ph = PH_WARM;
    w->row0 = now_ns();
    w->warm_end = w->row0 + (uint64_t)p->warm_ms * 1000000u;
    return 0;
}

/* x->t is the moment after the snapshot: a window that opens there does
 * not count the snapshot's own /proc reads. */
static void row_snap(struct row_run *w, struct row_snap *x)
{
    pid_t srv = w->p->server_pid;
    x->wakeups = w->wakeups(w->arg);
    x->cpu_self = self_cpu_ns();
    x->cpu_srv = srv > 0 ? proc_cpu_ns(srv) : 0;
    x->cpu_all = system_busy_ns();
    x->sleeps = self_sleeps() + (srv > 0 ? proc_sleeps(srv) : 0);
    x->t = now_ns();
}

void row_stop(struct row_run *w, uint64_t t)
{
    if (w->ph == PH_DRAIN)
        return;
    row_snap(w, &w->b);
    if (t == 0)
        t = w->b.t;
    if (w->ph == PH_MEASURE)
        w->b.t = t;
    w->ph = PH_DRAIN;
    w->end = t; /* the drain's deadline counts from here */
}

uint64_t row_tick(struct row_run *w)
{
    uint64_t t = now_ns();
    if (w->ph == PH_WARM && w->warmed == w->conc && t >= w->warm_end) {
        w->ph = PH_MEASURE;
        row_snap(w, &w->a);
        t = w->a.t;
        w->end = t + (uint64_t)w->p->ms * 1000000u;
    } else if (w->ph == PH_WARM && t - w->row0 > WARM_CAP_NS) {
        fprintf(stderr, "shmipc-bench: warm-up did not finish in 60 s (%u of %u %ss answered)\n",
                w->warmed, w->conc, w->unit);
        w->r->errors++;
        row_stop(w, t);
    }
    if ((w->ph == PH_MEASURE && t >= w->end) || (bench_stop && w->ph != PH_DRAIN))
        row_stop(w, t);
    if (w->ph == PH_DRAIN && t - (w->end ? w->end : w->row0) > DRAIN_CAP_NS) {
        fprintf(stderr, "shmipc-bench: %u responses missing 30 s after the row\n", w->inflight);
        w->r->errors += w->inflight;
        return 0;
    }
    return t;
}

int row_complete(struct row_run *w, int *warmed, uint64_t t0, uint64_t t)
{
    w->inflight--;
    if (w->ph == PH_MEASURE && t >= w->end)
        row_stop(w, t);
    if (w->ph == PH_MEASURE) {
        w->r->ops++;
        lat_add(&w->lat, t - t0);
    } else if (w->ph == PH_WARM && !*warmed) {
        *warmed = 1;
        w->warmed++;
    }
    return w->ph != PH_DRAIN;
}

void row_bad_response(struct row_run *w, unsigned idx, size_t size)
{
    if (w->r->errors++ == 0)
        fprintf(stderr, "shmipc-bench: %s %u: bad response (mode %s, size %zu)\n", w->unit, idx,
                w->p->mode == MODE_FULL ? "full" : "zero-touch", size);
}

int row_end(struct row_run *w)
{
    struct row_result *r = w->r;
    const struct row_snap *a = &w->a, *b = &w->b;
    if (a->t != 0 && b->t > a->t) {
        r->wall_s = (double)(b->t - a->t) / 1e9;
        if (r->ops > 0) {
            double ops = (double)r->ops;
            r->ns_per_op = (double)(b->t - a->t) / ops;
            r->wakeups_per_op = (double)(b->wakeups - a->wakeups) / ops;
            r->sleeps_per_op = (double)(b->sleeps - a->sleeps) / ops;
            r->cpu_client_us = (double)(b->cpu_self - a->cpu_self) / 1000.0 / ops;
            r->cpu_server_us =
                w->p->server_pid > 0 ? (double)(b->cpu_srv - a->cpu_srv) / 1000.0 / ops : -1.0;
        }
        double other = (double)(b->cpu_all - a->cpu_all) - (double)(b->cpu_self - a->cpu_self) -
                       (double)(b->cpu_srv - a->cpu_srv);
        r->other_cpu_pct = other > 0 ? 100.0 * other / (double)(b->t - a->t) : 0.0;
    } else if (r->errors == 0) {
        r->errors++; /* stopped before the timed window began */
    }
    if (r->ops == 0 && r->errors == 0) {
        fprintf(stderr, "shmipc-bench: no round trip completed in the %d ms window\n", w->p->ms);
        r->errors++;
    }
    r->p50_us = lat_pct_us(&w->lat, 0.50);
    r->p99_us = lat_pct_us(&w->lat, 0.99);
    lat_free(&w->lat);
    return r->errors ? -EIO : 0;
}

/* ---- children ---- */

#define MAX_CHILDREN 16
static pid_t children[MAX_CHILDREN];

void child_track(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] == 0) {
            children[i] = pid;
            return;
        }
    }
}

static void untrack(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (children[i] == pid)
            children[i] = 0;
}

int child_alive(pid_t pid)
{
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == 0)
        return 1;
    untrack(pid);
    return 0;
}

int child_stop(pid_t pid, int grace_ms)
{
    int st = -1;
    if (pid <= 0)
        return -1;
    if (kill(pid, SIGTERM) < 0 && errno == ESRCH) {
        waitpid(pid, &st, WNOHANG);
        untrack(pid);
        return st;
    }
    uint64_t deadline = now_ns() + (uint64_t)grace_ms * 1000000u;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            break;
        if (now_ns() >= deadline) {
            fprintf(stderr, "shmipc-bench: child %d did not stop within %d ms: killing it\n",
                    (int)pid, grace_ms);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    untrack(pid);
    return st;
}

void child_kill_all(void)
{
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] > 0) {
            kill(children[i], SIGKILL);
            waitpid(children[i], NULL, 0);
            children[i] = 0;
        }
    }
}

void child_die_with_parent(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
}

/* ---- progress ---- */

static int progress_open;

void progress(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (isatty(STDERR_FILENO)) {
        fprintf(stderr, "\r\033[K%s", line);
        progress_open = 1;
    } else {
        fprintf(stderr, "%s\n", line);
    }
    fflush(stderr);
}

void progress_done(void)
{
    if (progress_open)
        fprintf(stderr, "\r\033[K");
    progress_open = 0;
    fflush(stderr);
}
