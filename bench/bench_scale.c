/*
 * shmipc-bench --clients N: N client processes, each with a pool of its
 * own (--pool-bytes) and one session, against one shmipcd; each makes
 * blocking calls (shmipc_call, one in flight, full payload checked) from
 * its main thread, as most C programs would.
 *
 * The run: shmipcd's memory with no session; 10 clients calling (req/s at
 * 10); N - 1 more connect and stay idle: shmipcd's memory per idle session
 * (private memory only: the clients' pools and queues are shared and
 * counted apart); connects timed with N - 1 sessions open; the last client;
 * all N calling (req/s at N). scale_print_summary() sums it up:
 *   scale: clients=N req_per_s=X req_per_s_at_10=Y ratio=R
 *          rss_per_session_kib=K connect_p99_ms=C failed=F
 *
 * The one rule: the clients are steered through one shared page (a
 * command and its generation, a futex the idle ones sleep on) and report
 * there (state, calls, CPU time); the parent never waits on a client
 * without a deadline, and every client dies with it (PR_SET_PDEATHSIG).
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "bench_scale.h"
#include "bench_util.h"
#include "floor.h"
#include "shmipc/shmipc.h"

enum { SC_IDLE = 0, SC_RUN = 1, SC_EXIT = 2 };
enum { CL_STARTING = 0, CL_CONNECTED = 1, CL_FAILED = 2 };

#define FIRST 10           /* clients of the first measurement */
#define WAIT_CONNECT_MS 60000
#define STOP_MS 20000

struct scale_slot {
    uint32_t state;      /* CL_* */
    int32_t rc;          /* why it failed */
    uint64_t connect_ns; /* its shmipc_client_open() */
    uint64_t ops;        /* calls answered and checked (updated as it runs) */
    uint64_t errors;     /* failed calls, wrong answers */
    uint64_t run_ops;    /* calls of its last run */
    uint64_t run_cpu_ns; /* its CPU time (all threads) during its last run */
    uint32_t runs;       /* runs finished */
    uint32_t pad;
};

struct scale_ctl {
    uint32_t gen; /* futex: bumped with each command */
    uint32_t cmd;
    uint32_t active; /* clients [0, active) run during SC_RUN */
    uint32_t pad;
    struct scale_slot slot[];
};

static long futex(uint32_t *w, int op, uint32_t val)
{
    /* Shared (not private): the word is in a MAP_SHARED page of several
     * processes. */
    return syscall(SYS_futex, w, op, val, NULL, NULL, 0);
}

static void client_cfg(struct shmipc_client_config *cfg, const struct scale_opts *o)
{
    shmipc_client_config_init(cfg);
    cfg->address = o->address;
    cfg->pool_bytes = o->pool_bytes;
    cfg->connect_timeout_ms = 10000; /* a thousand connect at once */
}

/* ---- a client process ---- */

/* The unix-socket baseline: a blocking connection to the epoll echo
 * server of bench_sock.c, [u32 length][payload] each way. */
static int uds_connect(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    for (int tries = 0; connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0; tries++) {
        int e = errno;
        if (e != EAGAIN || tries > 10000) { /* a full backlog: try again */
            close(fd);
            return -e;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return fd;
}

static int uds_call(int fd, uint8_t *frame, size_t size, uint64_t seed)
{
    uint32_t len = (uint32_t)size;
    memcpy(frame, &len, 4);
    pattern_fill(frame + 4, 0, size, seed);
    for (size_t off = 0; off < size + 4;) {
        ssize_t w = write(fd, frame + off, size + 4 - off);
        if (w <= 0)
            return -EIO;
        off += (size_t)w;
    }
    for (size_t off = 0; off < size + 4;) {
        ssize_t r = read(fd, frame + off, size + 4 - off);
        if (r <= 0)
            return -EIO;
        off += (size_t)r;
    }
    memcpy(&len, frame, 4);
    return len == size && pattern_check(frame + 4, 0, size, seed) ? 0 : -EBADMSG;
}

static int one_call(shmipc_stream *st, uint8_t *req, size_t size, uint64_t seed)
{
    pattern_fill(req, 0, size, seed);
    shmipc_msg m;
    int rc = shmipc_call(st, req, size, &m, 10000);
    if (rc < 0)
        return rc;
    size_t off = 0;
    int ok = m.len == size;
    for (unsigned i = 0; ok && i < m.niov; i++) {
        ok = pattern_check(m.iov[i].base, off, m.iov[i].len, seed);
        off += m.iov[i].len;
    }
    shmipc_msg_release(&m);
    return ok ? 0 : -EBADMSG;
}

static void client_main(struct scale_ctl *ctl, unsigned idx, const struct scale_opts *o)
{
    struct scale_slot *sl = &ctl->slot[idx];
    struct shmipc_client_config cfg;
    client_cfg(&cfg, o);
    shmipc_client *c = NULL;
    shmipc_stream *st = NULL;
    int fd = -1;
    uint8_t *req = malloc(o->size + 4);
    uint64_t t0 = now_ns();
    int rc = req == NULL ? -ENOMEM : 0;
    if (rc == 0 && o->uds_path != NULL)
        rc = fd = uds_connect(o->uds_path);
    else if (rc == 0 && (rc = shmipc_client_open(&cfg, &c)) == 0)
        rc = shmipc_client_get(c, &st);
    if (rc > 0)
        rc = 0;
    sl->connect_ns = now_ns() - t0;
    sl->rc = rc;
    __atomic_store_n(&sl->state, rc == 0 ? CL_CONNECTED : CL_FAILED, __ATOMIC_RELEASE);
    uint32_t seen = 0;
    uint64_t seq = 0;
    while (rc == 0) {
        uint32_t g = __atomic_load_n(&ctl->gen, __ATOMIC_ACQUIRE);
        if (g == seen) {
            futex(&ctl->gen, FUTEX_WAIT, g);
            continue;
        }
        seen = g;
        uint32_t cmd = __atomic_load_n(&ctl->cmd, __ATOMIC_ACQUIRE);
        if (cmd == SC_EXIT)
            break;
        if (cmd != SC_RUN || idx >= __atomic_load_n(&ctl->active, __ATOMIC_ACQUIRE))
            continue;
        uint64_t cpu0 = self_cpu_ns(), ops0 = sl->ops;
        while (__atomic_load_n(&ctl->gen, __ATOMIC_ACQUIRE) == seen) {
            uint64_t seed = pattern_seed(idx, ++seq);
            if ((fd >= 0 ? uds_call(fd, req, o->size, seed) : one_call(st, req, o->size, seed)) == 0)
                __atomic_store_n(&sl->ops, sl->ops + 1, __ATOMIC_RELAXED);
            else
                __atomic_store_n(&sl->errors, sl->errors + 1, __ATOMIC_RELAXED);
        }
        __atomic_store_n(&sl->run_cpu_ns, self_cpu_ns() - cpu0, __ATOMIC_RELAXED);
        __atomic_store_n(&sl->run_ops, sl->ops - ops0, __ATOMIC_RELAXED);
        __atomic_store_n(&sl->runs, sl->runs + 1, __ATOMIC_RELEASE);
    }
    if (st != NULL)
        shmipc_client_put(c, st);
    shmipc_client_close(c);
    if (fd >= 0)
        close(fd);
    free(req);
    _exit(rc == 0 && sl->errors == 0 ? 0 : 1);
}

/* ---- the parent ---- */

struct scale_run {
    const struct scale_opts *o;
    struct scale_ctl *ctl;
    size_t ctl_bytes;
    pid_t *pids;
    unsigned nforked;
};

static void command(struct scale_run *r, uint32_t cmd, uint32_t active)
{
    __atomic_store_n(&r->ctl->active, active, __ATOMIC_RELEASE);
    __atomic_store_n(&r->ctl->cmd, cmd, __ATOMIC_RELEASE);
    __atomic_add_fetch(&r->ctl->gen, 1, __ATOMIC_ACQ_REL);
    futex(&r->ctl->gen, FUTEX_WAKE, INT_MAX);
}

/* Forks clients [r->nforked, upto). */
static int fork_clients(struct scale_run *r, unsigned upto)
{
    pid_t parent = getpid();
    fflush(NULL);
    while (r->nforked < upto) {
        unsigned idx = r->nforked;
        pid_t pid = fork();
        if (pid < 0)
            return -errno;
        if (pid == 0) {
            child_die_with_parent(parent);
            log_set_level(LOG_ERROR);
            client_main(r->ctl, idx, r->o);
        }
        r->pids[r->nforked++] = pid;
    }
    return 0;
}

/* Waits (bounded) until clients [0, upto) connected or failed; how many
 * failed, or -ETIMEDOUT. */
static int wait_connected(struct scale_run *r, unsigned upto)
{
    uint64_t deadline = now_ns() + (uint64_t)WAIT_CONNECT_MS * 1000000u;
    for (;;) {
        unsigned pending = 0, failed = 0;
        for (unsigned i = 0; i < upto; i++) {
            uint32_t s = __atomic_load_n(&r->ctl->slot[i].state, __ATOMIC_ACQUIRE);
            pending += s == CL_STARTING;
            failed += s == CL_FAILED;
        }
        if (pending == 0)
            return (int)failed;
        if (now_ns() >= deadline || bench_stop) {
            fprintf(stderr, "shmipc-bench: %u clients did not connect in %d ms\n", pending,
                    WAIT_CONNECT_MS);
            return -ETIMEDOUT;
        }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
}

static uint64_t ops_sum(const struct scale_run *r, unsigned n)
{
    uint64_t s = 0;
    for (unsigned i = 0; i < n; i++)
        s += __atomic_load_n(&r->ctl->slot[i].ops, __ATOMIC_RELAXED);
    return s;
}

struct load_result {
    double req_per_s;
    double cpu_client_us, cpu_server_us; /* per call */
    uint64_t errors;
};

/* Clients [0, n) call for warm_ms, then for o->ms measured; then idle. */
static int run_load(struct scale_run *r, unsigned n, int warm_ms, struct load_result *out)
{
    uint32_t runs0 = 0;
    for (unsigned i = 0; i < n; i++)
        runs0 += r->ctl->slot[i].runs;
    command(r, SC_RUN, n);
    struct timespec w = {warm_ms / 1000, (long)(warm_ms % 1000) * 1000000L};
    nanosleep(&w, NULL);
    uint64_t srv0 = proc_cpu_ns(r->o->server_pid), t0 = now_ns(), ops0 = ops_sum(r, n);
    struct timespec m = {r->o->ms / 1000, (long)(r->o->ms % 1000) * 1000000L};
    nanosleep(&m, NULL);
    uint64_t t1 = now_ns(), ops1 = ops_sum(r, n), srv1 = proc_cpu_ns(r->o->server_pid);
    command(r, SC_IDLE, 0);
    /* Each client reports its run once it sees the command. */
    uint64_t deadline = now_ns() + (uint64_t)STOP_MS * 1000000u;
    uint32_t runs;
    do {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
        runs = 0;
        for (unsigned i = 0; i < n; i++)
            runs += __atomic_load_n(&r->ctl->slot[i].runs, __ATOMIC_ACQUIRE);
    } while (runs < runs0 + n && now_ns() < deadline);
    uint64_t cpu = 0, rops = 0, errors = 0;
    for (unsigned i = 0; i < n; i++) {
        cpu += r->ctl->slot[i].run_cpu_ns;
        rops += r->ctl->slot[i].run_ops;
        errors += r->ctl->slot[i].errors;
    }
    out->req_per_s = (double)(ops1 - ops0) * 1e9 / (double)(t1 - t0);
    out->cpu_client_us = rops ? (double)cpu / 1000.0 / (double)rops : 0;
    out->cpu_server_us =
        ops1 > ops0 && srv1 > srv0 ? (double)(srv1 - srv0) / 1000.0 / (double)(ops1 - ops0) : -1;
    out->errors = errors;
    return runs < runs0 + n ? -ETIMEDOUT : 0;
}

/* shmipcd's resident memory from /proc/PID/status: private (anon + file)
 * and shared (shmem: the clients' pools and queues it maps), KiB. */
static int rss_kib(pid_t pid, long *priv, long *shmem)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -errno;
    long anon = -1, file = -1, sh = -1, v;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "RssAnon: %ld", &v) == 1)
            anon = v;
        else if (sscanf(line, "RssFile: %ld", &v) == 1)
            file = v;
        else if (sscanf(line, "RssShmem: %ld", &v) == 1)
            sh = v;
    }
    fclose(f);
    if (anon < 0 || file < 0 || sh < 0)
        return -EIO;
    *priv = anon + file;
    *shmem = sh;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(uint64_t *v, unsigned n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_u64);
    unsigned i = (unsigned)(q * (n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

/* Opens and closes a client `trials` times with the sessions already
 * open: connect times (shmipc_client_open: socket, handshake, pool and
 * queue) in v. How many failed. */
static unsigned connect_trials(const struct scale_opts *o, uint64_t *v, unsigned trials)
{
    struct shmipc_client_config cfg;
    client_cfg(&cfg, o);
    unsigned failed = 0;
    for (unsigned i = 0; i < trials && !bench_stop; i++) {
        shmipc_client *c = NULL;
        uint64_t t0 = now_ns();
        int rc = o->uds_path != NULL ? uds_connect(o->uds_path) : shmipc_client_open(&cfg, &c);
        v[i] = now_ns() - t0;
        if (o->uds_path != NULL && rc >= 0)
            rc = close(rc);
        if (rc < 0) {
            fprintf(stderr, "shmipc-bench: connect %u: %s\n", i, shmipc_strerror(rc));
            failed++;
        }
        shmipc_client_close(c);
    }
    return failed;
}

/* Ends every client: SC_EXIT, then reaps them (bounded; stragglers are
 * killed). How many did not exit cleanly. */
static unsigned end_clients(struct scale_run *r)
{
    command(r, SC_EXIT, 0);
    unsigned bad = 0, left = r->nforked;
    uint64_t deadline = now_ns() + (uint64_t)STOP_MS * 1000000u;
    while (left > 0) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0) {
            for (unsigned i = 0; i < r->nforked; i++) {
                if (r->pids[i] == p) {
                    r->pids[i] = 0;
                    left--;
                    bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
                }
            }
            continue;
        }
        if (now_ns() >= deadline) {
            fprintf(stderr, "shmipc-bench: %u clients did not exit: killing them\n", left);
            for (unsigned i = 0; i < r->nforked; i++) {
                if (r->pids[i] > 0) {
                    kill(r->pids[i], SIGKILL);
                    waitpid(r->pids[i], NULL, 0);
                    r->pids[i] = 0;
                    bad++;
                }
            }
            break;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return bad;
}

/* "scale", or "scale-uds" for the baseline: the first word of every line. */
static const char *tag = "scale";

static void print_load(const char *what, unsigned n, const struct load_result *l)
{
    printf("%s: %u clients calling (%s): req_per_s=%.0f cpu_per_req_us client=%.2f "
           "server=%.2f errors=%llu\n",
           tag, n, what, l->req_per_s, l->cpu_client_us, l->cpu_server_us,
           (unsigned long long)l->errors);
    fflush(stdout);
}

/* The machine's own ceiling for this run (floor.h): a client process that
 * makes one blocking call at a time is woken once per call, whatever the
 * transport; a futex ring of 10 and of n processes, a token per CPU (at
 * most 5), shows
 * what those wake-ups cost as the number of processes grows. */
static void print_floor(unsigned n)
{
    if (bench_stop)
        return;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned tokens = cpus < 1 ? 1u : (unsigned)cpus;
    if (tokens > FIRST / 2) /* a ring holds at most one token per two processes */
        tokens = FIRST / 2;
    struct floor_result f10, fn;
    progress("%s: the floor: futex rings of %u and %u processes", tag, FIRST, n);
    int rc = floor_ring(FIRST, tokens, 1000, &f10);
    if (rc == 0)
        rc = floor_ring(n, tokens, 1000, &fn);
    progress_done();
    if (rc < 0) {
        printf("%s-floor: the futex ring failed: %s\n", tag, strerror(-rc));
        return;
    }
    double a = 1e9 / f10.ns_per_op, b = 1e9 / fn.ns_per_op;
    printf("%s-floor: the machine without shmipc, processes waking each other in a futex ring "
           "(%u tokens): %u processes %.0f wake-ups/s, %u processes %.0f wake-ups/s, "
           "ratio %.2f\n",
           tag, tokens, FIRST, a, n, b, b / a);
    fflush(stdout);
}

void scale_print_summary(const struct scale_summary *s)
{
    printf("%s: clients=%u req_per_s=%.0f req_per_s_at_10=%.0f ratio=%.2f "
           "rss_per_session_kib=%.0f connect_p99_ms=%.2f failed=%u\n",
           s->name ? s->name : "scale", s->clients, s->req_per_s, s->req_per_s_at_10,
           s->req_per_s_at_10 > 0 ? s->req_per_s / s->req_per_s_at_10 : 0, s->rss_per_session_kib,
           s->connect_p99_ms, s->failed);
    fflush(stdout);
}

int scale_run(const struct scale_opts *o, struct scale_summary *sum)
{
    unsigned n = o->clients;
    if (n < FIRST + 1) {
        fprintf(stderr, "shmipc-bench: --clients needs at least %u\n", FIRST + 1);
        return -EINVAL;
    }
    struct scale_run r = {.o = o};
    r.ctl_bytes = sizeof(*r.ctl) + (size_t)n * sizeof(r.ctl->slot[0]);
    r.ctl = mmap(NULL, r.ctl_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    r.pids = calloc(n, sizeof(*r.pids));
    uint64_t *conn = calloc(o->trials > n ? o->trials : n, sizeof(*conn));
    if (r.ctl == MAP_FAILED || r.pids == NULL || conn == NULL) {
        free(r.pids);
        free(conn);
        return -ENOMEM;
    }
    memset(r.ctl, 0, r.ctl_bytes);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (o->uds_path != NULL)
        printf("scale-uds: the baseline: %u client processes, a unix-socket connection each, "
               "against one epoll echo server (pid %d); %zu-byte calls (blocking write and "
               "read), one in flight per client; %d ms windows; %ld CPUs\n",
               n, (int)o->server_pid, o->size, o->ms, sysconf(_SC_NPROCESSORS_ONLN));
    else
        printf("scale: %u client processes against shmipcd (pid %d), one session and a "
               "%zu-byte pool each; %zu-byte calls, one in flight per client; %d ms windows; "
               "%ld CPUs; open files limit %llu\n",
               n, (int)o->server_pid, o->pool_bytes, o->size, o->ms,
               sysconf(_SC_NPROCESSORS_ONLN), (unsigned long long)rl.rlim_cur);
    fflush(stdout);
    int rc = 0;
    unsigned failed = 0;
    long priv0 = 0, sh0 = 0, priv1 = 0, sh1 = 0;
    struct load_result at10 = {0}, atn = {0};
    double p99 = 0, k = 0;

    if ((rc = rss_kib(o->server_pid, &priv0, &sh0)) < 0)
        goto out;
    /* 10 clients. */
    tag = o->uds_path != NULL ? "scale-uds" : "scale";
    const char *srv = o->uds_path != NULL ? "the echo server" : "shmipcd";
    progress("%s: %u clients connecting", tag, FIRST);
    if ((rc = fork_clients(&r, FIRST)) < 0 || (rc = wait_connected(&r, FIRST)) < 0)
        goto out;
    failed += (unsigned)rc;
    progress("%s: %u clients calling", tag, FIRST);
    if ((rc = run_load(&r, FIRST, 500, &at10)) < 0)
        goto out;
    progress_done();
    print_load("the first", FIRST, &at10);

    /* N - 1 sessions, idle: memory, then connect times. */
    progress("%s: %u clients connecting", tag, n - 1);
    if ((rc = fork_clients(&r, n - 1)) < 0 || (rc = wait_connected(&r, n - 1)) < 0)
        goto out;
    failed += (unsigned)rc;
    struct timespec settle = {0, 500000000};
    nanosleep(&settle, NULL);
    if ((rc = rss_kib(o->server_pid, &priv1, &sh1)) < 0)
        goto out;
    k = (double)(priv1 - priv0) / (double)(n - 1);
    for (unsigned i = 0; i < n - 1; i++)
        conn[i] = r.ctl->slot[i].connect_ns;
    double c50 = pct_ms(conn, n - 1, 0.5), c99 = pct_ms(conn, n - 1, 0.99);
    progress_done();
    printf("%s: %u idle sessions: %s's resident memory +%.1f KiB per session private "
           "(anon+file), +%.1f KiB shared (the clients' pools and queues it maps); their "
           "connects (%u at once, %u before): p50 %.2f ms p99 %.2f ms\n",
           tag, n - 1, srv, k, (double)(sh1 - sh0) / (double)(n - 1), n - 1 - FIRST, FIRST, c50, c99);
    progress("%s: %u connects with %u sessions open", tag, o->trials, n - 1);
    failed += connect_trials(o, conn, o->trials);
    double t50 = pct_ms(conn, o->trials, 0.5);
    p99 = pct_ms(conn, o->trials, 0.99);
    progress_done();
    printf("%s: %u connects (open and close) with %u sessions open: p50 %.2f ms p99 %.2f ms "
           "max %.2f ms\n",
           tag, o->trials, n - 1, t50, p99, (double)conn[o->trials - 1] / 1e6);

    /* All N. */
    if ((rc = fork_clients(&r, n)) < 0 || (rc = wait_connected(&r, n)) < 0)
        goto out;
    failed += (unsigned)rc;
    progress("%s: %u clients calling", tag, n);
    if ((rc = run_load(&r, n, 2000, &atn)) < 0)
        goto out;
    progress_done();
    print_load("all", n, &atn);
out:
    progress_done();
    failed += end_clients(&r);
    if (rc == 0)
        print_floor(n);
    failed += (unsigned)(at10.errors + atn.errors);
    if (rc < 0) {
        fprintf(stderr, "shmipc-bench: scale run failed: %s\n", strerror(-rc));
        failed += 1;
    }
    *sum = (struct scale_summary){o->uds_path ? "scale-uds" : "scale", n, atn.req_per_s,
                                  at10.req_per_s, k, p99, failed};
    munmap(r.ctl, r.ctl_bytes);
    free(r.pids);
    free(conn);
    return rc < 0 || failed ? -EIO : 0;
}
