/*
 * Clients under load (see load_fixture.h).
 */
#include "load_fixture.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void)
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

static void failed(struct load *l, const char *what, int rc)
{
    if (rc == SHMIPC_ETIMEDOUT)
        __atomic_add_fetch(&l->lost, 1, __ATOMIC_RELAXED);
    else if (rc == SHMIPC_ENOSESSION || rc == -ECONNREFUSED || rc == -ENOENT)
        __atomic_add_fetch(&l->refused, 1, __ATOMIC_RELAXED);
    if (__atomic_fetch_add(&l->failed, 1, __ATOMIC_RELAXED) == 0)
        snprintf(l->why, sizeof(l->why), "%s: %s", what, shmipc_strerror(rc));
}

/* 0 when m holds exactly the n bytes of want. */
static int same(shmipc_msg *m, const char *want, size_t n)
{
    char buf[96] = "";
    size_t got = shmipc_msg_copy(m, 0, buf, sizeof(buf) - 1);
    return got == n && memcmp(buf, want, n) == 0 ? 0 : -EBADMSG;
}

static int one_call(struct load *l, const char *text)
{
    shmipc_stream *st;
    int rc = shmipc_client_get(l->c, &st);
    if (rc < 0)
        return rc;
    shmipc_msg m;
    rc = shmipc_call(st, text, strlen(text), &m, l->timeout_ms);
    if (rc == 0) {
        rc = same(&m, text, strlen(text));
        shmipc_msg_release(&m);
    }
    if (rc == 0)
        shmipc_client_put(l->c, st);
    else
        shmipc_stream_close(st);
    return rc;
}

static void *threaded(void *arg)
{
    struct load *l = arg;
    char text[64];
    unsigned me = __atomic_fetch_add(&l->started, 1, __ATOMIC_RELAXED);
    for (unsigned long i = 0; !__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE); i++) {
        snprintf(text, sizeof(text), "load %u thread %u call %lu", l->index, me, i);
        int rc = one_call(l, text);
        if (rc == 0)
            __atomic_add_fetch(&l->ok, 1, __ATOMIC_RELAXED);
        else
            failed(l, "call", rc);
    }
    return NULL;
}

/* One round of the event-loop style: every request flushed, then polled
 * until each is answered. */
static int round_trip(struct load *l, unsigned long round)
{
    shmipc_stream *st[LOAD_MAX_INFLIGHT] = {NULL}, *ready[LOAD_MAX_INFLIGHT];
    char want[LOAD_MAX_INFLIGHT][48];
    int got[LOAD_MAX_INFLIGHT] = {0}, rc = 0;
    unsigned n = l->inflight, left = n;
    for (unsigned k = 0; k < n && rc == 0; k++) {
        snprintf(want[k], sizeof(want[k]), "loop %u round %lu req %u", l->index, round, k);
        if ((rc = shmipc_client_get(l->c, &st[k])) == 0 &&
            (rc = shmipc_stream_write(st[k], want[k], strlen(want[k]))) == 0)
            rc = shmipc_stream_flush(st[k]);
    }
    uint64_t end = now_ns() + (uint64_t)l->timeout_ms * 1000000u;
    while (rc == 0 && left > 0) {
        if (now_ns() > end) {
            rc = SHMIPC_ETIMEDOUT;
            break;
        }
        int k = shmipc_client_poll(l->c, ready, LOAD_MAX_INFLIGHT, 100);
        if (k < 0)
            rc = k;
        for (int j = 0; j < k && rc == 0; j++) {
            unsigned idx = 0;
            while (idx < n && st[idx] != ready[j])
                idx++;
            shmipc_msg m;
            if (idx == n || got[idx]) {
                rc = -EPROTO; /* news on a stream that owes us nothing */
                break;
            }
            if ((rc = shmipc_stream_recv(ready[j], &m, 0)) != 0)
                break;
            rc = same(&m, want[idx], strlen(want[idx]));
            shmipc_msg_release(&m);
            got[idx] = 1;
            left--;
        }
    }
    for (unsigned k = 0; k < n; k++) {
        if (st[k] != NULL && rc == 0)
            shmipc_client_put(l->c, st[k]);
        else if (st[k] != NULL)
            shmipc_stream_close(st[k]);
    }
    return rc;
}

static void *event_loop(void *arg)
{
    struct load *l = arg;
    for (unsigned long r = 0; !__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE); r++) {
        int rc = round_trip(l, r);
        if (rc == 0)
            __atomic_add_fetch(&l->ok, l->inflight, __ATOMIC_RELAXED);
        else
            failed(l, "round", rc);
    }
    return NULL;
}

void load_mix(struct load *ls)
{
    memset(ls, 0, 4 * sizeof(*ls));
    ls[0] = (struct load){.mode = SHMIPC_MODE_MEMFD, .threads = 3};
    ls[1] = (struct load){.mode = SHMIPC_MODE_FILE, .threads = 2};
    ls[2] = (struct load){.mode = SHMIPC_MODE_MEMFD, .event_loop = 1, .threads = 1, .inflight = 4};
    ls[3] = (struct load){.mode = SHMIPC_MODE_FILE, .event_loop = 1, .threads = 1, .inflight = 3};
}

int load_start(struct load *l)
{
    if (l->threads == 0 || l->threads > LOAD_MAX_THREADS ||
        (l->event_loop && (l->threads != 1 || l->inflight == 0 ||
                           l->inflight > LOAD_MAX_INFLIGHT)))
        return -EINVAL;
    if (l->timeout_ms <= 0)
        l->timeout_ms = 10000;
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = l->address;
    cfg.mode = l->mode;
    cfg.path_prefix = l->path_prefix;
    cfg.pool_bytes = 4u << 20;
    cfg.sessions = 2;
    cfg.no_io_thread = l->event_loop;
    cfg.connect_timeout_ms = 5000;
    cfg.reconnect_min_ms = 10;
    cfg.reconnect_max_ms = 50;
    int rc = shmipc_client_open(&cfg, &l->c);
    if (rc < 0) {
        l->c = NULL;
        return rc;
    }
    for (unsigned i = 0; i < l->threads; i++) {
        if ((rc = -pthread_create(&l->th[i], NULL, l->event_loop ? event_loop : threaded, l)) < 0) {
            l->threads = i;
            return rc;
        }
    }
    return 0;
}

void load_stop(struct load *l)
{
    __atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < l->threads; i++)
        pthread_join(l->th[i], NULL);
    l->threads = 0;
    if (l->c != NULL)
        shmipc_client_close(l->c);
    l->c = NULL;
}

unsigned long load_stop_all(struct load *ls, unsigned n)
{
    unsigned long bad = 0;
    for (unsigned i = 0; i < n; i++) {
        load_stop(&ls[i]);
        if (ls[i].failed > 0 || ls[i].ok == 0)
            fprintf(stderr, "\n  load %u (%s): %lu failed (%s), %lu ok\n", i, ls[i].address,
                    ls[i].failed, ls[i].failed ? ls[i].why : "-", ls[i].ok);
        bad += ls[i].failed + (ls[i].ok == 0);
    }
    return bad;
}

void load_counts(struct load *ls, unsigned n, unsigned long *since)
{
    for (unsigned i = 0; i < n; i++)
        since[i] = __atomic_load_n(&ls[i].ok, __ATOMIC_RELAXED);
}

int load_progress(struct load *ls, unsigned n, const unsigned long *since, unsigned long more,
                  int ms)
{
    uint64_t end = now_ns() + (uint64_t)ms * 1000000u;
    for (unsigned i = 0; i < n; i++) {
        while (__atomic_load_n(&ls[i].ok, __ATOMIC_RELAXED) < since[i] + more) {
            if (now_ns() > end)
                return -1;
            sleep_ms(5);
        }
    }
    return 0;
}
