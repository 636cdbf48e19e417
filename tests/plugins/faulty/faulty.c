/*
 * Test plugin faulty: a handler that misbehaves in every way a plugin may,
 * for the fault soak (tests/soak/fault_soak.c). A request is
 *     <kind><delay: 4 decimal digits, ms> <anything>
 * and its kind byte says what happens:
 *   'A'  answered at once
 *   'B'  blocks the worker for <delay> ms in handle(), then answers
 *   'F'  handle() returns -EIO (the host closes the stream)
 *   'D'  deferred: the plugin's own thread completes it <delay> ms later
 *   'X'  deferred: that thread fails it (-EIO) <delay> ms later
 *   'R'  one of the above with a delay up to max_block_ms, drawn from the
 *        plugin's RNG (config seed; shared by the workers, under a lock)
 * An answer is "<kind><delay> " (6 bytes, the kind and delay that ran)
 * followed by the whole request, so the client can check every byte and
 * knows what an 'R' became. A malformed request fails (-EINVAL).
 * Config: max_block_ms (default 1500), seed (default 1).
 *
 * The one rule: a deferred answer belongs to the thread from defer() on;
 * handle() touches neither it nor the request afterwards.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shmipc/plugin.h"

#define HEAD_LEN 6 /* "<kind><4 digits> " */

/* A deferred answer waiting for its time. */
struct job {
    uint64_t due_ns;
    struct shmipc_response *resp;
    int fail;
    char head[HEAD_LEN];
    struct job *next;
};

struct faulty {
    const struct shmipc_host_api *host;
    long long max_block_ms;
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;
    uint64_t rng;
    struct job *jobs; /* by due time */
    int stop;
    pthread_t th;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Answers (or fails) each deferred request when its time comes. */
static void *answerer(void *arg)
{
    struct faulty *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        if (f->jobs == NULL) {
            if (f->stop)
                break;
            pthread_cond_wait(&f->cv, &f->mu);
            continue;
        }
        uint64_t now = now_ns(), due = f->jobs->due_ns;
        /* At fini nothing can be pending (a deferred answer holds its
         * generation), but never wait on one that is. */
        if (due > now && !f->stop) {
            struct timespec ts = {(time_t)(due / 1000000000u), (long)(due % 1000000000u)};
            pthread_cond_timedwait(&f->cv, &f->mu, &ts);
            continue;
        }
        struct job *j = f->jobs;
        f->jobs = j->next;
        pthread_mutex_unlock(&f->mu);
        if (j->fail) {
            f->host->fail(j->resp, -EIO);
        } else {
            int rc = f->host->write(j->resp, j->head, HEAD_LEN);
            if (rc == 0)
                rc = f->host->forward(j->resp); /* copied: it follows the head */
            if (rc < 0) {
                f->host->log(SHMIPC_LOG_ERROR, "faulty: building a deferred answer: %s",
                             f->host->strerror(rc));
                f->host->fail(j->resp, rc);
            } else if ((rc = f->host->complete(j->resp)) < 0) {
                /* ECLOSED: the client or its session went (at a stop). */
                f->host->log(SHMIPC_LOG_INFO, "faulty: complete() of a deferred answer: %s",
                             f->host->strerror(rc));
            }
        }
        free(j);
        pthread_mutex_lock(&f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static void *faulty_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                         char *errbuf, size_t errlen)
{
    if (host->size < offsetof(struct shmipc_host_api, fail) + sizeof(host->fail) ||
        host->defer == NULL) {
        snprintf(errbuf, errlen, "faulty: needs a host with deferred answers (ABI minor 1)");
        return NULL;
    }
    long long max_block = 1500, seed = 1;
    int rc = host->conf_int(conf, "max_block_ms", &max_block);
    if ((rc < 0 && rc != -ENOENT) || max_block < 0 || max_block > 9999) {
        snprintf(errbuf, errlen, "faulty: max_block_ms must be an integer in 0..9999");
        return NULL;
    }
    rc = host->conf_int(conf, "seed", &seed);
    if (rc < 0 && rc != -ENOENT) {
        snprintf(errbuf, errlen, "faulty: seed must be an integer");
        return NULL;
    }
    struct faulty *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        snprintf(errbuf, errlen, "faulty: out of memory");
        return NULL;
    }
    f->host = host;
    f->max_block_ms = max_block;
    f->rng = (uint64_t)seed * 0x9e3779b97f4a7c15ull | 1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&f->mu, NULL);
    if (pthread_create(&f->th, NULL, answerer, f) != 0) {
        snprintf(errbuf, errlen, "faulty: cannot start its thread");
        pthread_cond_destroy(&f->cv);
        pthread_mutex_destroy(&f->mu);
        free(f);
        return NULL;
    }
    return f;
}

static void faulty_fini(void *state)
{
    struct faulty *f = state;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->th, NULL);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* xorshift64 on the shared state (f->mu held). */
static uint64_t next_rand(struct faulty *f)
{
    f->rng ^= f->rng << 13;
    f->rng ^= f->rng >> 7;
    f->rng ^= f->rng << 17;
    return f->rng;
}

/* What an 'R' becomes: mostly answers, some blocks, failures, deferrals. */
static void draw(struct faulty *f, char *kind, long *delay)
{
    static const char kinds[] = "AAAABBDDDFXX";
    pthread_mutex_lock(&f->mu);
    uint64_t r = next_rand(f);
    pthread_mutex_unlock(&f->mu);
    *kind = kinds[r % (sizeof(kinds) - 1)];
    *delay = (long)((r >> 16) % (uint64_t)(f->max_block_ms + 1));
}

/* The answer written now: the head, then the request's bytes. */
static int answer_now(const struct faulty *f, const char *head, const struct shmipc_request *req,
                      struct shmipc_response *resp)
{
    int rc = f->host->write(resp, head, HEAD_LEN);
    for (unsigned i = 0; rc == 0 && i < req->niov; i++)
        if (req->iov[i].len > 0)
            rc = f->host->write(resp, req->iov[i].base, req->iov[i].len);
    return rc;
}

static int defer(struct faulty *f, const char *head, int fail, long delay,
                 const struct shmipc_request *req, struct shmipc_response *resp)
{
    struct job *j = malloc(sizeof(*j));
    struct shmipc_response *d = j != NULL ? f->host->defer(resp) : NULL;
    if (d == NULL) {
        free(j);
        return fail ? -EIO : answer_now(f, head, req, resp); /* no deferral: now */
    }
    j->due_ns = now_ns() + (uint64_t)delay * 1000000u;
    j->resp = d;
    j->fail = fail;
    memcpy(j->head, head, HEAD_LEN);
    pthread_mutex_lock(&f->mu);
    struct job **p = &f->jobs;
    while (*p != NULL && (*p)->due_ns <= j->due_ns)
        p = &(*p)->next;
    j->next = *p;
    *p = j;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return 0; /* handle() must return 0 after defer() */
}

static int faulty_handle(void *state, void *thread_state, const struct shmipc_request *req,
                         struct shmipc_response *resp)
{
    (void)thread_state;
    struct faulty *f = state;
    char head[HEAD_LEN + 1];
    if (req->len < HEAD_LEN || f->host->copy(req, 0, head, HEAD_LEN) != HEAD_LEN)
        return -EINVAL;
    head[HEAD_LEN] = '\0';
    char kind = head[0];
    long delay = 0;
    for (int i = 1; i < 5; i++) {
        if (head[i] < '0' || head[i] > '9')
            return -EINVAL;
        delay = delay * 10 + (head[i] - '0');
    }
    if (head[5] != ' ')
        return -EINVAL;
    if (kind == 'R') {
        draw(f, &kind, &delay); /* delay <= max_block_ms <= 9999: 4 digits */
        head[0] = kind;
        for (int i = 4, v = (int)delay; i >= 1; i--, v /= 10)
            head[i] = (char)('0' + v % 10);
    }
    switch (kind) {
    case 'A':
        return answer_now(f, head, req, resp);
    case 'B': {
        sleep_ms(delay);
        /* Reserved and filled in place (requests are far below a slice). */
        void *p;
        int rc = f->host->reserve(resp, HEAD_LEN + req->len, &p);
        if (rc < 0)
            return rc;
        memcpy(p, head, HEAD_LEN);
        return f->host->copy(req, 0, (char *)p + HEAD_LEN, req->len) == req->len ? 0 : -EIO;
    }
    case 'F':
        return -EIO;
    case 'D':
    case 'X':
        return defer(f, head, kind == 'X', delay, req, resp);
    default:
        return -EINVAL;
    }
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("faulty", "1.0.0"),
    .init = faulty_init,
    .fini = faulty_fini,
    .handle = faulty_handle,
};
