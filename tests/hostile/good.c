/*
 * The well-behaved client: a forked process that uses only the public API.
 * Three threads call the unix service (memfd mode, two sessions) and one
 * the TCP service (file-path mode), each with requests of 0..64 KiB whose
 * every byte is checked in the echo. It counts what it did in a shared
 * page; the driver reads it between cases. Any failed call or wrong byte
 * is an error: the attacks must not be visible from here.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "hostile.h"
#include "shmipc/shmipc.h"

#define GOOD_MAX 65536
#define GOOD_CALL_MS 10000
#define GOOD_REUSE 64 /* calls on one stream before it goes back to the client's pool */
#define GOOD_UNIX_THREADS 3

struct good_thread {
    shmipc_client *c;
    struct good_shared *sh;
    const char *label;
    uint64_t rng;
    pthread_t th;
};

static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void record_error(struct good_shared *sh, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void record_error(struct good_shared *sh, const char *fmt, ...)
{
    __atomic_add_fetch(&sh->errors, 1, __ATOMIC_RELAXED);
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* Best effort: the driver only prints it. */
    memcpy(sh->last_error, line, sizeof(line));
    fprintf(stderr, "hostile: good client: %s\n", line);
}

/* Sizes: mostly small, some around slice sizes, some up to 64 KiB. */
static size_t pick_size(uint64_t *rng)
{
    uint64_t r = next_rand(rng);
    switch (r % 4) {
    case 0:
        return (size_t)(r >> 8) % 65;
    case 1:
        return (size_t)(r >> 8) % 8300;
    default:
        return (size_t)(r >> 8) % (GOOD_MAX + 1);
    }
}

static void *good_thread_main(void *arg)
{
    struct good_thread *g = arg;
    uint8_t *req = malloc(GOOD_MAX), *resp = malloc(GOOD_MAX + 1);
    shmipc_stream *st = NULL;
    unsigned uses = 0;
    while (req != NULL && resp != NULL && !__atomic_load_n(&g->sh->stop, __ATOMIC_RELAXED)) {
        if (st == NULL) {
            int rc = shmipc_client_get(g->c, &st);
            if (rc < 0) {
                record_error(g->sh, "%s: getting a stream: %s", g->label, shmipc_strerror(rc));
                st = NULL;
                du_sleep_ms(10);
                continue;
            }
            uses = 0;
        }
        size_t n = pick_size(&g->rng);
        uint64_t seed = next_rand(&g->rng);
        for (size_t i = 0; i < n; i++)
            req[i] = (uint8_t)(seed >> (8 * (i % 8))) ^ (uint8_t)i;
        shmipc_msg m;
        int rc = shmipc_call(st, req, n, &m, GOOD_CALL_MS);
        if (rc < 0) {
            record_error(g->sh, "%s: stream %u: call of %zu bytes: %s", g->label,
                         shmipc_stream_id(st), n, shmipc_strerror(rc));
            shmipc_stream_close(st);
            st = NULL;
            continue;
        }
        size_t got = m.len;
        size_t copied = shmipc_msg_copy(&m, 0, resp, got < GOOD_MAX + 1 ? got : GOOD_MAX + 1);
        shmipc_msg_release(&m);
        if (got != n || copied != n || memcmp(req, resp, n) != 0) {
            record_error(g->sh, "%s: stream %u: echo of %zu bytes came back as %zu bytes%s",
                         g->label, shmipc_stream_id(st), n, got,
                         got == n ? " with different content" : "");
            shmipc_stream_close(st);
            st = NULL;
            continue;
        }
        __atomic_add_fetch(&g->sh->requests, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&g->sh->bytes, n, __ATOMIC_RELAXED);
        if (++uses % GOOD_REUSE == 0) {
            shmipc_client_put(g->c, st);
            st = NULL;
        }
    }
    if (st != NULL)
        shmipc_client_put(g->c, st);
    free(req);
    free(resp);
    return NULL;
}

static int open_client(struct shmipc_client_config *cfg, struct good_shared *sh,
                       shmipc_client **out)
{
    uint64_t dl = du_deadline(H_GOOD_MS);
    int rc;
    while ((rc = shmipc_client_open(cfg, out)) < 0 && du_now_ns() < dl)
        du_sleep_ms(50);
    if (rc < 0)
        record_error(sh, "connecting to %s: %s", cfg->address, shmipc_strerror(rc));
    return rc;
}

static int good_main(const struct target *t, struct good_shared *sh)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    char pfx_m[128], pfx_f[128];
    snprintf(pfx_m, sizeof(pfx_m), "/dev/shm/%s-gm", h_shm_prefix());
    snprintf(pfx_f, sizeof(pfx_f), "/dev/shm/%s-gf", h_shm_prefix());
    struct shmipc_client_config cu, ct;
    shmipc_client_config_init(&cu);
    cu.address = t->unix_addr;
    cu.mode = SHMIPC_MODE_MEMFD;
    cu.sessions = 2;
    cu.path_prefix = pfx_m;
    cu.max_event_bytes = t->max_event;
    shmipc_client_config_init(&ct);
    ct.address = t->tcp_addr;
    ct.mode = SHMIPC_MODE_FILE;
    ct.sessions = 1;
    ct.pool_bytes = 8u << 20;
    ct.path_prefix = pfx_f;
    ct.max_event_bytes = t->max_event;
    shmipc_client *cl_u = NULL, *cl_t = NULL;
    if (open_client(&cu, sh, &cl_u) < 0 || open_client(&ct, sh, &cl_t) < 0) {
        if (cl_u != NULL)
            shmipc_client_close(cl_u);
        return 1;
    }
    struct good_thread th[GOOD_UNIX_THREADS + 1];
    for (int i = 0; i <= GOOD_UNIX_THREADS; i++) {
        th[i] = (struct good_thread){
            .c = i < GOOD_UNIX_THREADS ? cl_u : cl_t,
            .sh = sh,
            .label = i < GOOD_UNIX_THREADS ? "unix/memfd" : "tcp/file",
            .rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) ^ (uint64_t)getpid(),
        };
        if (pthread_create(&th[i].th, NULL, good_thread_main, &th[i]) != 0) {
            record_error(sh, "pthread_create failed");
            __atomic_store_n(&sh->stop, 1, __ATOMIC_RELAXED);
            for (int k = 0; k < i; k++)
                pthread_join(th[k].th, NULL);
            shmipc_client_close(cl_u);
            shmipc_client_close(cl_t);
            return 1;
        }
    }
    for (int i = 0; i <= GOOD_UNIX_THREADS; i++)
        pthread_join(th[i].th, NULL);
    shmipc_client_close(cl_u);
    shmipc_client_close(cl_t);
    return 0;
}

pid_t good_start(const struct target *t, struct good_shared *shared)
{
    memset(shared, 0, sizeof(*shared));
    (void)h_shm_prefix(); /* the driver's pid, computed before the fork */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        _exit(good_main(t, shared));
    return pid;
}

int good_stop(pid_t pid, struct good_shared *shared)
{
    if (pid <= 0)
        return -1;
    __atomic_store_n(&shared->stop, 1, __ATOMIC_RELAXED);
    return du_reap(pid, GOOD_CALL_MS + 10000);
}
