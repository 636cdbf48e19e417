/*
 * shmipc-crash-soak: a plugin that crashes, again and again, takes down
 * only its own worker process (isolation = "process"); the master respawns
 * it and every other service serves on as if nothing happened.
 *
 * shmipcd serves echo_t (plugins/echo, thread mode), echo_p (plugins/echo,
 * process mode) and victim (tests/plugins/crash, process mode, crash_limit
 * 64): a request to victim that starts with "crash" makes its worker
 * process raise SIGSEGV, anything else is echoed. Four clients per
 * service, one thread each making blocking calls (shmipc_call), half in
 * memfd and half in file mode; the library reconnects a client whose
 * session died (reconnect backoff 10..50 ms here).
 *
 * Crashes come on the soak's command, so that they are paced instead of
 * random: crash_limit counts crashes within a minute (at most 64), so a
 * crash comes once CRASH_EVERY victim requests were answered since the
 * last recovery and CRASH_GAP_MS passed since the last crash (the victim
 * threads are paced so that both come at about the same time: about one
 * request in 500 crashes). The next victim thread to finish a request
 * then sends "crash" instead. A crash counts once shmipcd's log says the
 * victim's worker process was killed by a signal. Its recovery time runs
 * from sending the crash request to the first victim answer to a request
 * begun after the crashing call failed (the process was dead by then).
 *
 * The one rule: every answer is checked byte for byte. A healthy request
 * must never fail or time out; a victim request may fail (its process
 * died under it, or the master refused while respawning) but never be
 * answered wrong, and a crash request is never answered.
 *
 * Checked at the end: the above; crashes >= 20 in a run of 30 s or more
 * (3 in a shorter one), a respawn for each, recovery within
 * MAX_RECOVERY_MS every time, the victim serving after the last crash;
 * echo_p never restarted, no process but the victim's killed; the
 * master's fds and shared mappings back to their count before the load
 * (taken with every session closed, after a warm-up round; thread-mode
 * sessions hold fds in the master meanwhile, so a leak per session or per
 * crash shows); shmipcd exits 0 on SIGTERM, no sanitizer report in its
 * log; nothing of the run left in /dev/shm (this run's prefix) or /tmp
 * (the private directories of the master and of every worker process).
 * The last line on stdout:
 *   crash-soak: crashes=C respawns=R healthy_requests=N healthy_failed=0
 *   victim_requests=M victim_recovered=1 max_recovery_ms=T
 *   master_fd_growth=0 shm_left=0
 * (victim_requests counts victim requests answered right.)
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/daemon_util.h"
#include "base/log.h"
#include "shmipc/shmipc.h"

#define NSVC 3
#define CLIENTS 4 /* per service */
#define PAD_MAX 4096
#define REQ_MAX (64 + PAD_MAX)

#define CRASH_GAP_MS 1000   /* at least this between two crashes */
#define CRASH_EVERY 500     /* victim answers between a recovery and the next crash */
#define CRASH_TAIL_MS 1500  /* no crash this close to the end of the run */
#define CRASH_LIMIT 64      /* the victim's crash_limit (the most allowed) */
#define HEALTHY_PACE_US 500 /* between a healthy thread's requests */
#define VICTIM_PACE_US                                                                             \
    6000                    /* between a victim thread's requests: 4 threads                       \
                               answer CRASH_EVERY in about 0.75 s */
#define MAX_RECOVERY_MS 500 /* crash to the first answer after it */
#define RECOVER_MS 35000    /* longest wait for a recovery (above the 30 s backoff cap) */
#define CONFIRM_MS 3000     /* the master to log a crash */
#define CLAIM_MS 10000      /* a victim thread to take an armed crash */
#define CALL_MS 5000        /* one request's timeout */
#define START_MS 15000      /* shmipcd to answer on its admin socket */
#define STOP_MS 15000       /* shmipcd to exit after SIGTERM */
#define SETTLE_MS 5000      /* the master's fds to come back */
#define JOIN_MS (CALL_MS + 5000)

enum { SVC_ECHO_T, SVC_ECHO_P, SVC_VICTIM };
static const char *const svc_name[NSVC] = {"echo_t", "echo_p", "victim"};

static int failures;
static volatile sig_atomic_t interrupted;

#define fail(...) du_fail("crash-soak", &failures, __VA_ARGS__)

/* ---- what the threads and the coordinator share ----
 * seq_cst for the few control words (cheap at this rate, easy to get
 * right); each thread's counters are its own until it is joined. */
static uint32_t g_stop;       /* main -> threads: finish */
static uint32_t g_arm;        /* main sets 1; the victim thread that takes it sets 0 */
static uint32_t g_crash_done; /* the crashing thread -> main: the fields below are set */
static int32_t g_crash_rc;    /* the crash request's result (0: it was answered!) */
static uint64_t g_crash_sent_ns, g_crash_failed_ns;
static uint64_t g_watch_ns;    /* 0, or: victim answers to requests begun after this count */
static uint64_t g_first_ok_ns; /* the first such answer's time (0 until then) */
static uint64_t g_victim_ok;   /* victim answers so far */

static uint32_t ld(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

static void st(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

static uint64_t ld64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

static void st64(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

/* ---- client threads ---- */

struct worker {
    int svc;
    unsigned id;
    shmipc_client *c;
    pthread_t th;
    int started;
    uint64_t rng;
    /* the thread's own until joined */
    uint64_t ok, errors, wrong, timeouts, max_ns;
    int first_err;
};

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !ld(&g_stop))
        ;
}

/* One call of len bytes of req; 0 and the answer's length in *got, or a
 * code. The stream goes back to the pool when healthy, else is closed. */
static int call(struct worker *w, const uint8_t *req, size_t len, uint8_t *resp, size_t *got)
{
    shmipc_stream *s;
    int rc = shmipc_client_get(w->c, &s);
    if (rc < 0)
        return rc;
    shmipc_msg m;
    rc = shmipc_call(s, req, len, &m, CALL_MS);
    if (rc < 0) {
        shmipc_stream_close(s);
        return rc;
    }
    *got = m.len <= REQ_MAX ? shmipc_msg_copy(&m, 0, resp, m.len) : 0;
    if (m.len > REQ_MAX)
        *got = m.len; /* wrong anyway; not copied */
    shmipc_msg_release(&m);
    shmipc_client_put(w->c, s);
    return 0;
}

/* Sends the armed crash request and says how it went. */
static void send_crash(struct worker *w, uint64_t n, uint8_t *resp)
{
    char req[64];
    int len = snprintf(req, sizeof(req), "crash v%u n%llu", w->id, (unsigned long long)n);
    size_t got = 0;
    uint64_t sent = du_now_ns();
    int rc = call(w, (const uint8_t *)req, (size_t)len, resp, &got);
    uint64_t failed = du_now_ns();
    st64(&g_crash_sent_ns, sent);
    st64(&g_crash_failed_ns, failed);
    st((uint32_t *)&g_crash_rc, (uint32_t)rc);
    if (rc < 0)
        st64(&g_watch_ns, failed);
    st(&g_crash_done, 1);
}

static void *client_thread(void *arg)
{
    struct worker *w = arg;
    int victim = w->svc == SVC_VICTIM;
    uint8_t *req = malloc(REQ_MAX), *resp = malloc(REQ_MAX);
    if (req == NULL || resp == NULL) {
        w->errors++;
        w->first_err = -ENOMEM;
        goto out;
    }
    for (uint64_t n = 0; !ld(&g_stop); n++) {
        int len = snprintf((char *)req, 64, "%s c%u n%llu ", svc_name[w->svc], w->id,
                           (unsigned long long)n);
        size_t pad = (size_t)(xorshift(&w->rng) % (PAD_MAX + 1));
        for (size_t i = 0; i < pad; i += 8) {
            uint64_t r = xorshift(&w->rng);
            memcpy(req + len + i, &r, pad - i < 8 ? pad - i : 8);
        }
        size_t rlen = (size_t)len + pad, got = 0;
        uint64_t t0 = du_now_ns();
        int rc = call(w, req, rlen, resp, &got);
        uint64_t t1 = du_now_ns();
        if (rc == 0 && got == rlen && memcmp(req, resp, rlen) == 0) {
            w->ok++;
            if (t1 - t0 > w->max_ns)
                w->max_ns = t1 - t0;
            if (victim) {
                __atomic_add_fetch(&g_victim_ok, 1, __ATOMIC_SEQ_CST);
                uint64_t watch = ld64(&g_watch_ns), zero = 0;
                if (watch != 0 && t0 > watch)
                    __atomic_compare_exchange_n(&g_first_ok_ns, &zero, t1, 0, __ATOMIC_SEQ_CST,
                                                __ATOMIC_SEQ_CST);
                uint32_t one = 1;
                /* Only a thread whose session just served takes the crash. */
                if (ld(&g_arm) == 1 && __atomic_compare_exchange_n(
                                           &g_arm, &one, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
                    send_crash(w, n, resp);
            }
        } else if (rc == 0) {
            w->wrong++;
            fprintf(stderr,
                    "crash-soak: %s client %u request %llu: wrong answer (%zu bytes for %zu)\n",
                    svc_name[w->svc], w->id, (unsigned long long)n, got, rlen);
        } else {
            if (rc == SHMIPC_ETIMEDOUT)
                w->timeouts++;
            else
                w->errors++;
            if (w->first_err == 0)
                w->first_err = rc;
            if (!victim)
                fprintf(stderr, "crash-soak: %s client %u request %llu: %s after %.1f ms\n",
                        svc_name[w->svc], w->id, (unsigned long long)n, shmipc_strerror(rc),
                        (double)(t1 - t0) / 1e6);
        }
        sleep_us(victim ? VICTIM_PACE_US : HEALTHY_PACE_US);
    }
out:
    free(req);
    free(resp);
    return NULL;
}

static int client_open(struct worker *w, const char *address, const char *shm_prefix)
{
    char prefix[200];
    snprintf(prefix, sizeof(prefix), "/dev/shm/%s%s%u", shm_prefix, svc_name[w->svc], w->id);
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = address;
    cfg.mode = w->id % 2 ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD;
    cfg.path_prefix = prefix;
    cfg.pool_bytes = 4u << 20;
    cfg.connect_timeout_ms = 5000;
    cfg.reconnect_min_ms = 10;
    cfg.reconnect_max_ms = 50;
    int rc = shmipc_client_open(&cfg, &w->c);
    if (rc < 0) {
        w->c = NULL;
        fail("%s client %u: shmipc_client_open(%s): %s", svc_name[w->svc], w->id, address,
             shmipc_strerror(rc));
    }
    return rc;
}

/* Joins the thread within deadline; -1 if it is stuck. */
static int client_join(struct worker *w, uint64_t deadline)
{
    if (!w->started)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t abs = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec +
                   (uint64_t)du_left_ms(deadline) * 1000000u;
    ts.tv_sec = (time_t)(abs / 1000000000u);
    ts.tv_nsec = (long)(abs % 1000000000u);
    if (pthread_timedjoin_np(w->th, NULL, &ts) != 0) {
        fail("%s client %u: its thread did not finish after the stop", svc_name[w->svc], w->id);
        return -1;
    }
    w->started = 0;
    return 0;
}

/* ---- shmipcd's log and status ---- */

/* Lines of shmipcd's log holding both a and b (b may be NULL). */
static int log_lines(const struct du_daemon *d, const char *a, const char *b)
{
    char *log = du_read_file(d->log, NULL);
    int n = 0;
    for (char *p = log; p != NULL && *p != '\0';) {
        char *nl = strchr(p, '\n');
        if (nl != NULL)
            *nl = '\0';
        n += strstr(p, a) != NULL && (b == NULL || strstr(p, b) != NULL);
        p = nl != NULL ? nl + 1 : NULL;
    }
    free(log);
    return n;
}

/* "service <svc> processes: restarts N" of `status`; -1 when absent. */
static long restarts_of(const struct du_daemon *d, const char *svc)
{
    char out[16384], key[96];
    if (du_admin(d->admin, "status", out, sizeof(out), 5000) <= 0)
        return -1;
    snprintf(key, sizeof(key), "service %s processes: restarts ", svc);
    const char *p = strstr(out, key);
    return p != NULL ? strtol(p + strlen(key), NULL, 10) : -1;
}

/* The pids of the log's "worker process N started" lines, up to max. */
static int worker_pids(const struct du_daemon *d, pid_t *pids, int max)
{
    char *log = du_read_file(d->log, NULL);
    int n = 0;
    const char *key = ": worker process ";
    for (const char *p = log; p != NULL && (p = strstr(p, key)) != NULL; p += strlen(key)) {
        int pid;
        char word[16];
        if (sscanf(p + strlen(key), "%d %15s", &pid, word) == 2 && strcmp(word, "started") == 0 &&
            n < max)
            pids[n++] = pid;
    }
    free(log);
    return n;
}

/* ---- the run ---- */

static int write_conf(struct du_daemon *d, const char *echo, const char *crash)
{
    struct du_conf c = {.n = 0};
    du_conf_head(&c, d, "drain_timeout_ms = 2000;");
    du_conf_service(&c, d, 1, "echo_t", echo, NULL);
    du_conf_add(&c,
                ",  { name = \"echo_p\"; listen = \"%s\"; plugin = \"%s\"; "
                "isolation = \"process\"; }\n",
                du_addr(d, "echo_p"), echo);
    du_conf_add(&c,
                ",  { name = \"victim\"; listen = \"%s\"; plugin = \"%s\"; "
                "isolation = \"process\"; crash_limit = %d; }\n",
                du_addr(d, "victim"), crash, CRASH_LIMIT);
    return du_conf_write(&c, d, "shmipcd.conf");
}

/* One checked request to each service from a fresh client, closed after:
 * every service serves, and the master has met a session of each kind
 * before its fds are counted. */
static int warm_up(const struct du_daemon *d, const char *shm_prefix)
{
    for (int s = 0; s < NSVC; s++) {
        struct worker w = {.svc = s, .id = 9};
        if (client_open(&w, du_addr(d, svc_name[s]), shm_prefix) < 0)
            return -1;
        uint8_t resp[64];
        size_t got = 0;
        int rc = call(&w, (const uint8_t *)"warm-up", 7, resp, &got);
        shmipc_client_close(w.c);
        if (rc < 0 || got != 7 || memcmp(resp, "warm-up", 7) != 0) {
            fail("%s: the warm-up request %s", svc_name[s],
                 rc < 0 ? shmipc_strerror(rc) : "was answered wrong");
            return -1;
        }
    }
    return 0;
}

/* Sessions open in every service, from `status`; -1 when it does not parse. */
static long sessions_open(const struct du_daemon *d)
{
    char out[16384], key[64];
    if (du_admin(d->admin, "status", out, sizeof(out), 5000) <= 0)
        return -1;
    long n = 0;
    for (int s = 0; s < NSVC; s++) {
        snprintf(key, sizeof(key), "service %s: listen ", svc_name[s]);
        const char *p = strstr(out, key), *nl = p != NULL ? strchr(p, '\n') : NULL;
        const char *q = p != NULL ? strstr(p, ", sessions ") : NULL;
        if (q == NULL || (nl != NULL && q > nl))
            return -1;
        n += strtol(q + strlen(", sessions "), NULL, 10);
    }
    return n;
}

/* The baseline: once every session is closed and the master's fd count
 * held still for 100 ms. 0, or -1 (said). */
static int baseline(const struct du_daemon *d, int *fds, int *maps)
{
    uint64_t dl = du_deadline(SETTLE_MS);
    int last = -1;
    while (!du_past(dl)) {
        long open = sessions_open(d);
        *fds = du_count_fds(d->pid);
        *maps = du_count_shared_maps(d->pid);
        if (open == 0 && *fds >= 0 && *fds == last)
            return 0;
        last = open == 0 ? *fds : -1;
        du_sleep_ms(100);
    }
    fail("no baseline: sessions still open or the master's fds still moving after %d ms",
         SETTLE_MS);
    return -1;
}

/* Waits (bounded) for the master's fds and shared mappings to come back
 * to the baseline; their last counts in *fds, *maps. */
static void settle(pid_t pid, int base_fds, int base_maps, int *fds, int *maps)
{
    uint64_t dl = du_deadline(SETTLE_MS);
    do {
        *fds = du_count_fds(pid);
        *maps = du_count_shared_maps(pid);
        if (*fds == base_fds && *maps == base_maps)
            return;
        du_sleep_ms(20);
    } while (!du_past(dl));
}

struct crash_stats {
    int crashes;        /* confirmed by the log */
    int sent;           /* crash requests sent */
    int undelivered;    /* sent, but no crash followed (the thread had no session) */
    int recovered;      /* recoveries seen */
    int last_recovered; /* the victim answered after the last crash */
    long max_recovery_ms;
    double sum_recovery_ms;
};

enum { IDLE, ARMED, CONFIRMING, RECOVERING };

/* Runs the load for secs seconds, pacing the crashes; returns once the run
 * is over and the last crash recovered (or its wait ran out). */
static void coordinate(const struct du_daemon *d, unsigned secs, struct crash_stats *cs)
{
    uint64_t t0 = du_now_ns(), end = t0 + (uint64_t)secs * 1000000000u;
    uint64_t arm_until = end - (uint64_t)CRASH_TAIL_MS * 1000000u;
    uint64_t next_at = t0 + (uint64_t)CRASH_GAP_MS * 1000000u, dl = 0, sent_ns = 0;
    uint64_t ok_mark = 0, last_report = t0;
    int state = IDLE, give_up = 0;
    for (;;) {
        uint64_t now = du_now_ns();
        if (interrupted || (state == IDLE && now >= end))
            break;
        switch (state) {
        case IDLE:
            if (!give_up && now >= next_at && now < arm_until &&
                ld64(&g_victim_ok) - ok_mark >= CRASH_EVERY) {
                st64(&g_watch_ns, 0);
                st64(&g_first_ok_ns, 0);
                st(&g_crash_done, 0);
                st(&g_arm, 1);
                state = ARMED;
                dl = now + (uint64_t)CLAIM_MS * 1000000u;
            }
            break;
        case ARMED:
            if (ld(&g_crash_done)) {
                cs->sent++;
                sent_ns = ld64(&g_crash_sent_ns);
                if ((int32_t)ld((uint32_t *)&g_crash_rc) == 0) {
                    fail("a crash request was answered");
                    state = IDLE;
                    next_at = now + (uint64_t)CRASH_GAP_MS * 1000000u;
                } else {
                    state = CONFIRMING;
                    dl = now + (uint64_t)CONFIRM_MS * 1000000u;
                }
            } else if (now >= dl) {
                uint32_t one = 1;
                if (__atomic_compare_exchange_n(&g_arm, &one, 0, 0, __ATOMIC_SEQ_CST,
                                                __ATOMIC_SEQ_CST)) {
                    fail("no victim request was answered within %d ms to carry a crash", CLAIM_MS);
                    give_up = 1;
                    state = IDLE;
                }
            }
            break;
        case CONFIRMING: {
            int n = log_lines(d, "service victim: worker process ", " killed by signal ");
            if (n > cs->crashes) {
                if (n > cs->crashes + 1)
                    fail("the log says %d crashes; %d were asked for", n, cs->crashes + 1);
                cs->crashes = n;
                state = RECOVERING;
                dl = sent_ns + (uint64_t)RECOVER_MS * 1000000u;
            } else if (now >= dl) {
                /* Its thread had no live session: nothing crashed. Again. */
                cs->undelivered++;
                state = IDLE;
                next_at = now + 50000000u;
            }
            break;
        }
        case RECOVERING: {
            uint64_t ok = ld64(&g_first_ok_ns);
            if (ok != 0 || now >= dl) {
                long ms = (long)(((ok != 0 ? ok : now) - sent_ns) / 1000000u);
                if (ms > cs->max_recovery_ms)
                    cs->max_recovery_ms = ms;
                cs->last_recovered = ok != 0;
                if (ok != 0) {
                    cs->recovered++;
                    cs->sum_recovery_ms += (double)ms;
                    if (ms >= MAX_RECOVERY_MS)
                        fprintf(stderr,
                                "crash-soak: crash %d: the victim answered again after %ld ms\n",
                                cs->crashes, ms);
                } else {
                    fail("crash %d: the victim did not answer again within %d ms", cs->crashes,
                         RECOVER_MS);
                    give_up = 1;
                }
                state = IDLE;
                next_at = sent_ns + (uint64_t)CRASH_GAP_MS * 1000000u;
                ok_mark = ld64(&g_victim_ok);
            }
            break;
        }
        }
        if (now - last_report >= 5000000000ull) {
            last_report = now;
            fprintf(stderr,
                    "crash-soak: %.0f s: %d crashes, %llu victim answers, max recovery %ld ms\n",
                    (double)(now - t0) / 1e9, cs->crashes, (unsigned long long)ld64(&g_victim_ok),
                    cs->max_recovery_ms);
        }
        du_sleep_ms(2);
    }
}

/* The client library's log: what it says of victim sessions (ended,
 * reconnects refused while the process restarts) is expected and only
 * counted; anything else is shown. */
static uint64_t g_victim_log_lines;

static void client_log(void *arg, enum log_level level, const char *line)
{
    (void)arg;
    (void)level;
    /* Its sessions' address, or its clients' pool files (shm prefix). */
    if (strstr(line, "/victim.sock") != NULL || strstr(line, "-victim") != NULL)
        __atomic_add_fetch(&g_victim_log_lines, 1, __ATOMIC_RELAXED);
    else
        fprintf(stderr, "%s\n", line);
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: shmipc-crash-soak [SECONDS]\n"
               "  SECONDS  length of the load, 5..86400 (default 30); crashes >= 20 are\n"
               "           required from 30 s on, >= 3 below\n"
               "shmipcd and its plugins are found beside this program (../plugins,\n"
               "../tests/plugins); $SHMIPC_BIN overrides where shmipcd is.\n");
}

int main(int argc, char **argv)
{
    unsigned secs = 30;
    int done = du_soak_seconds(argc, argv, usage, &secs);
    if (done >= 0)
        return done;
    int min_crashes = secs >= 30 ? 20 : 3;
    char echo[4200], crash[4200];
    snprintf(echo, sizeof(echo), "%s/../plugins/echo.so", du_exe_dir());
    snprintf(crash, sizeof(crash), "%s/../tests/plugins/crash.so", du_exe_dir());
    const char *need[] = {du_bin_path("shmipcd"), echo, crash};
    if (du_soak_prepare("crash-soak", need, 3, on_signal) != 0)
        return 2;
    log_set_sink(client_log, NULL);

    static struct worker w[NSVC][CLIENTS];
    struct du_daemon d;
    struct crash_stats cs = {0};
    char shm_prefix[64];
    snprintf(shm_prefix, sizeof(shm_prefix), "shmipc-crashsoak-%d-", (int)getpid());
    long respawns = -1, restarts = -1, healthy_restarts = -1;
    int base_fds = -1, base_maps = -1, end_fds = -1, end_maps = -1, shm_left = 0;
    pid_t pids[4096];
    int npids = 0;
    uint64_t t_start = du_now_ns();
    int rc = du_init(&d, "/tmp/shmipc-crashsoak-XXXXXX");
    if (rc < 0) {
        fail("mkdtemp: %s", strerror(-rc));
        goto out;
    }
    if ((rc = write_conf(&d, echo, crash)) < 0) {
        fail("writing %s: %s", d.conf, strerror(-rc));
        goto out;
    }
    /* Before any thread: du_start forks. */
    if ((rc = du_start(&d, START_MS)) != 0) {
        fail(rc > 0 ? "shmipcd exited at start with %d" : "shmipcd did not start (%d)", rc);
        goto out;
    }
    if (warm_up(&d, shm_prefix) < 0)
        goto out;
    if (baseline(&d, &base_fds, &base_maps) < 0) {
        base_fds = base_maps = -1;
        goto out;
    }
    for (int s = 0; s < NSVC; s++) {
        for (unsigned i = 0; i < CLIENTS; i++) {
            struct worker *x = &w[s][i];
            x->svc = s;
            x->id = i;
            x->rng = ((uint64_t)s << 32 | (i + 1)) * 0x9e3779b97f4a7c15ull;
            if (client_open(x, du_addr(&d, svc_name[s]), shm_prefix) < 0)
                goto stop;
        }
    }
    for (int s = 0; s < NSVC; s++) {
        for (unsigned i = 0; i < CLIENTS; i++) {
            if (pthread_create(&w[s][i].th, NULL, client_thread, &w[s][i]) != 0) {
                fail("pthread_create failed");
                goto stop;
            }
            w[s][i].started = 1;
        }
    }
    coordinate(&d, secs, &cs);
    if (interrupted)
        fail("interrupted");
stop:
    st(&g_arm, 0);
    st(&g_stop, 1);
    uint64_t jdl = du_deadline(JOIN_MS);
    for (int s = 0; s < NSVC; s++)
        for (unsigned i = 0; i < CLIENTS; i++)
            client_join(&w[s][i], jdl);
    restarts = restarts_of(&d, "victim");
    healthy_restarts = restarts_of(&d, "echo_p");
    for (int s = 0; s < NSVC; s++) {
        for (unsigned i = 0; i < CLIENTS; i++) {
            if (w[s][i].c != NULL && !w[s][i].started) /* a stuck thread keeps its client */
                shmipc_client_close(w[s][i].c);
            w[s][i].c = NULL;
        }
    }
    /* Every session closed, as when the baseline was taken. */
    if (base_fds >= 0 && d.pid > 0) {
        settle(d.pid, base_fds, base_maps, &end_fds, &end_maps);
        if (end_maps != base_maps)
            fail("the master's shared mappings went from %d to %d", base_maps, end_maps);
    }
    npids = worker_pids(&d, pids, (int)(sizeof(pids) / sizeof(pids[0])));
    int victim_started = log_lines(&d, "service victim: worker process ", " started (generation ");
    respawns = victim_started > 0 ? victim_started - 1 : 0;
    int others_killed = log_lines(&d, " killed by signal ", NULL) -
                        log_lines(&d, "service victim: worker process ", " killed by signal ");
    if (others_killed != 0)
        fail("%d worker processes but the victim's were killed by a signal", others_killed);
    if (healthy_restarts != 0)
        fail("echo_p's worker process restarted %ld times", healthy_restarts);
    if (restarts != cs.crashes)
        fail("status says the victim restarted %ld times; %d crashes", restarts, cs.crashes);
out:
    if (d.pid > 0) {
        pid_t dpid = d.pid;
        rc = du_stop(&d, SIGTERM, STOP_MS);
        if (rc != 0)
            fail("shmipcd exited with %d after SIGTERM", rc);
        if (du_daemon_tmpdirs(dpid, 0) != 0) {
            fail("shmipcd left /tmp/shmipcd-%d-* behind", (int)dpid);
            du_daemon_tmpdirs(dpid, 1);
        }
    }
    for (int i = 0; i < npids; i++) {
        if (du_daemon_tmpdirs(pids[i], 0) != 0) {
            fail("worker process %d left /tmp/shmipcd-%d-* behind", (int)pids[i], (int)pids[i]);
            du_daemon_tmpdirs(pids[i], 1);
        }
    }
    if (d.dir[0] != '\0') {
        const char *san = du_log_check(&d, failures != 0);
        if (san != NULL)
            fail("shmipcd's log holds a %s report", san);
        shm_left = du_count_prefix("/dev/shm", shm_prefix);
        if (shm_left != 0) {
            fail("%d files with prefix %s left in /dev/shm:", shm_left, shm_prefix);
            du_show_prefix("/dev/shm", shm_prefix);
            du_remove_prefix("/dev/shm", shm_prefix);
        }
        if ((rc = du_remove_dir(d.dir)) < 0)
            fail("rmdir %s: %s", d.dir, strerror(-rc));
    }

    uint64_t healthy = 0, healthy_failed = 0, victim_ok = 0, victim_err = 0, victim_wrong = 0;
    double healthy_max_ms[2] = {0, 0};
    for (int s = 0; s < NSVC; s++) {
        for (unsigned i = 0; i < CLIENTS; i++) {
            struct worker *x = &w[s][i];
            if (s == SVC_VICTIM) {
                victim_ok += x->ok;
                victim_err += x->errors + x->timeouts;
                victim_wrong += x->wrong;
                continue;
            }
            healthy += x->ok;
            healthy_failed += x->errors + x->timeouts + x->wrong;
            if ((double)x->max_ns / 1e6 > healthy_max_ms[s])
                healthy_max_ms[s] = (double)x->max_ns / 1e6;
            if (x->ok == 0)
                fail("%s client %u had no request answered", svc_name[s], i);
        }
    }
    if (healthy_failed != 0)
        fail("%llu healthy requests failed", (unsigned long long)healthy_failed);
    if (victim_wrong != 0)
        fail("%llu victim requests were answered wrong", (unsigned long long)victim_wrong);
    if (cs.crashes < min_crashes)
        fail("%d crashes; at least %d wanted in %u s", cs.crashes, min_crashes, secs);
    if (respawns < cs.crashes)
        fail("%ld respawns for %d crashes", respawns, cs.crashes);
    if (cs.max_recovery_ms >= MAX_RECOVERY_MS)
        fail("the slowest recovery took %ld ms (limit %d)", cs.max_recovery_ms, MAX_RECOVERY_MS);
    if (cs.crashes > 0 && !cs.last_recovered)
        fail("the victim did not serve again after the last crash");
    int fd_growth = end_fds >= 0 && base_fds >= 0 ? end_fds - base_fds : -1;
    if (fd_growth < 0)
        fail("the master's fds were not measured");
    else if (fd_growth != 0)
        fail("the master's fds went from %d to %d", base_fds, end_fds);
    fprintf(stderr,
            "crash-soak: %u s: %d crash requests sent (%d found no session), %d crashes, "
            "mean recovery %.0f ms; victim: %llu answered, %llu failed (a crash per %.0f answered; "
            "%llu client log lines on victim sessions); healthy: %llu answered, slowest echo_t "
            "%.1f ms, echo_p %.1f ms; "
            "status restarts %ld; master fds %d -> %d, shared maps %d -> %d; %.1f s, %s\n",
            secs, cs.sent, cs.undelivered, cs.crashes,
            cs.recovered ? cs.sum_recovery_ms / cs.recovered : 0.0, (unsigned long long)victim_ok,
            (unsigned long long)victim_err, cs.crashes ? (double)victim_ok / cs.crashes : 0.0,
            (unsigned long long)__atomic_load_n(&g_victim_log_lines, __ATOMIC_RELAXED),
            (unsigned long long)healthy, healthy_max_ms[0], healthy_max_ms[1], restarts, base_fds,
            end_fds, base_maps, end_maps, (double)(du_now_ns() - t_start) / 1e9,
            failures ? "FAILED" : "passed");
    printf("crash-soak: crashes=%d respawns=%ld healthy_requests=%llu healthy_failed=%llu "
           "victim_requests=%llu victim_recovered=%d max_recovery_ms=%ld master_fd_growth=%d "
           "shm_left=%d\n",
           cs.crashes, respawns, (unsigned long long)healthy, (unsigned long long)healthy_failed,
           (unsigned long long)victim_ok, cs.crashes > 0 && cs.last_recovered, cs.max_recovery_ms,
           fd_growth, shm_left);
    return failures ? 1 : 0;
}
