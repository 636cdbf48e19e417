/*
 * delay: echoes every request after `delay_ms` (config, default 100),
 * answered from a timer thread of its own through deferred responses, so
 * the worker that called handle() goes on with other streams at once. The
 * example of host->defer / complete in README's plugin guide.
 *
 * The one rule: a deferred response belongs to this plugin from defer()
 * until complete() or fail(), and fini answers (fails) whatever is still
 * waiting before it returns.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "shmipc/plugin.h"

struct waiting {
    struct shmipc_response *resp;
    struct timespec due; /* CLOCK_MONOTONIC */
    struct waiting *next;
};

struct delay {
    const struct shmipc_host_api *host;
    long long delay_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    struct waiting *head, *tail; /* due times ascending: one delay for all */
    int stop;
    pthread_t timer;
};

static int before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Answers each waiting request once it is due. */
static void *timer_main(void *arg)
{
    struct delay *d = arg;
    pthread_mutex_lock(&d->mu);
    while (!d->stop || d->head != NULL) {
        if (d->head == NULL) {
            pthread_cond_wait(&d->cv, &d->mu);
            continue;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!d->stop && before(&now, &d->head->due)) {
            pthread_cond_timedwait(&d->cv, &d->mu, &d->head->due);
            continue;
        }
        struct waiting *w = d->head;
        d->head = w->next;
        if (d->head == NULL)
            d->tail = NULL;
        pthread_mutex_unlock(&d->mu);
        if (d->stop) {
            d->host->fail(w->resp, -ECANCELED); /* unloading: no answer */
        } else {
            int rc = d->host->forward(w->resp);
            if (rc == 0)
                rc = d->host->complete(w->resp);
            else
                d->host->fail(w->resp, rc);
            if (rc < 0)
                d->host->log(SHMIPC_LOG_DEBUG, "delay: an answer was not delivered: %s",
                             d->host->strerror(rc));
        }
        free(w);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void *delay_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                        char *errbuf, size_t errlen)
{
    if (host->abi_minor < 1 || host->defer == NULL) {
        snprintf(errbuf, errlen, "delay: needs a host with deferred responses (ABI 1.1)");
        return NULL;
    }
    static const char *const known[] = {"delay_ms", NULL};
    if (SHMIPC_HOST_HAS(host, conf_keys) && host->conf_keys(conf, known, errbuf, errlen) < 0)
        return NULL; /* a typo in the service's config group */
    long long ms = 100;
    int rc = host->conf_int(conf, "delay_ms", &ms);
    if (rc < 0 && rc != -ENOENT) {
        snprintf(errbuf, errlen, "delay: config key 'delay_ms' must be an integer");
        return NULL;
    }
    if (ms < 0 || ms > 3600000) {
        snprintf(errbuf, errlen, "delay: delay_ms %lld out of range 0..3600000", ms);
        return NULL;
    }
    struct delay *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        snprintf(errbuf, errlen, "delay: out of memory");
        return NULL;
    }
    d->host = host;
    d->delay_ms = ms;
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&d->timer, NULL, timer_main, d) != 0) {
        snprintf(errbuf, errlen, "delay: cannot start its timer thread");
        pthread_cond_destroy(&d->cv);
        pthread_mutex_destroy(&d->mu);
        free(d);
        return NULL;
    }
    return d;
}

static void delay_fini(void *state)
{
    struct delay *d = state;
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->timer, NULL);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

static int delay_handle(void *state, void *thread_state, const struct shmipc_request *req,
                        struct shmipc_response *resp)
{
    (void)thread_state;
    (void)req;
    struct delay *d = state;
    struct waiting *w = malloc(sizeof(*w));
    struct shmipc_response *later = w != NULL ? d->host->defer(resp) : NULL;
    if (later == NULL) {
        free(w);
        return d->host->forward(resp); /* could not wait: answer now */
    }
    w->resp = later;
    w->next = NULL;
    clock_gettime(CLOCK_MONOTONIC, &w->due);
    w->due.tv_sec += d->delay_ms / 1000;
    w->due.tv_nsec += (d->delay_ms % 1000) * 1000000L;
    if (w->due.tv_nsec >= 1000000000L) {
        w->due.tv_sec++;
        w->due.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&d->mu);
    if (d->tail != NULL)
        d->tail->next = w;
    else
        d->head = w;
    d->tail = w;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    return 0;
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("delay", "1.0.0"),
    .init = delay_init,
    .fini = delay_fini,
    .handle = delay_handle,
};
