/*
 * Test plugin gate: answers as its request says, so that daemon tests can
 * hold a handler or an answer exactly as long as they want, with no timing:
 *   "block..."   creates <gate_dir>/blocked, then waits in handle() until
 *                the file <gate_dir>/open exists (polled), then echoes
 *   "defer..."   defers the answer to the plugin's thread, which completes
 *                it (an echo) once <gate_dir>/open exists, in order
 *   "dfail..."   defers, and the thread fails it the same way
 *   "fail..."    returns -EIO from handle()
 *   anything else is echoed at once.
 * Config: gate_dir (string, required).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shmipc/plugin.h"

struct pending {
    struct shmipc_response *resp;
    int fail;
    struct pending *next;
};

struct gate {
    const struct shmipc_host_api *host;
    char open_path[512];
    char blocked_path[512];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pending *head, *tail;
    int stop;
    pthread_t th;
};

static void nap(void)
{
    struct timespec ts = {0, 5 * 1000000L};
    nanosleep(&ts, NULL);
}

static int is_open(const struct gate *g)
{
    return access(g->open_path, F_OK) == 0;
}

/* Answers the deferred requests in order, each once the gate is open. */
static void *answerer(void *arg)
{
    struct gate *g = arg;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (g->head == NULL && !g->stop)
            pthread_cond_wait(&g->cv, &g->mu);
        if (g->head == NULL)
            break;
        struct pending *p = g->head;
        pthread_mutex_unlock(&g->mu);
        while (!is_open(g)) {
            pthread_mutex_lock(&g->mu);
            int stop = g->stop;
            pthread_mutex_unlock(&g->mu);
            if (stop)
                break;
            nap();
        }
        if (p->fail)
            g->host->fail(p->resp, -EIO);
        else if (g->host->forward(p->resp) < 0 || g->host->complete(p->resp) < 0)
            g->host->log(SHMIPC_LOG_DEBUG, "gate: a deferred answer found its client gone");
        pthread_mutex_lock(&g->mu);
        g->head = p->next;
        if (g->head == NULL)
            g->tail = NULL;
        free(p);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static void *gate_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                       char *errbuf, size_t errlen)
{
    const char *dir;
    if (host->size < offsetof(struct shmipc_host_api, fail) + sizeof(host->fail) ||
        host->defer == NULL) {
        snprintf(errbuf, errlen, "gate: needs a host with deferred answers (ABI minor 1)");
        return NULL;
    }
    if (host->conf_string(conf, "gate_dir", &dir) < 0) {
        snprintf(errbuf, errlen, "gate: config key 'gate_dir' (a string) is required");
        return NULL;
    }
    struct gate *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        snprintf(errbuf, errlen, "gate: out of memory");
        return NULL;
    }
    g->host = host;
    snprintf(g->open_path, sizeof(g->open_path), "%s/open", dir);
    snprintf(g->blocked_path, sizeof(g->blocked_path), "%s/blocked", dir);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    if (pthread_create(&g->th, NULL, answerer, g) != 0) {
        snprintf(errbuf, errlen, "gate: cannot start its thread");
        free(g);
        return NULL;
    }
    return g;
}

static void gate_fini(void *state)
{
    struct gate *g = state;
    pthread_mutex_lock(&g->mu);
    g->stop = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    pthread_join(g->th, NULL);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

static int starts(const struct gate *g, const struct shmipc_request *req, const char *word)
{
    char head[8] = "";
    size_t n = strlen(word);
    return req->len >= n && g->host->copy(req, 0, head, n) == n && memcmp(head, word, n) == 0;
}

static int gate_handle(void *state, void *thread_state, const struct shmipc_request *req,
                       struct shmipc_response *resp)
{
    (void)thread_state;
    struct gate *g = state;
    if (starts(g, req, "fail"))
        return -EIO;
    if (starts(g, req, "block")) {
        FILE *f = fopen(g->blocked_path, "w");
        if (f != NULL)
            fclose(f);
        while (!is_open(g))
            nap();
    }
    int fail = starts(g, req, "dfail");
    if (fail || starts(g, req, "defer")) {
        struct pending *p = malloc(sizeof(*p));
        struct shmipc_response *d = p != NULL ? g->host->defer(resp) : NULL;
        if (d == NULL) {
            free(p);
            return g->host->forward(resp); /* no deferral: answer now */
        }
        p->resp = d;
        p->fail = fail;
        p->next = NULL;
        pthread_mutex_lock(&g->mu);
        if (g->tail != NULL)
            g->tail->next = p;
        else
            g->head = p;
        g->tail = p;
        pthread_cond_signal(&g->cv);
        pthread_mutex_unlock(&g->mu);
        return 0;
    }
    return g->host->forward(resp);
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("gate", "1.0.0"),
    .init = gate_init,
    .fini = gate_fini,
    .handle = gate_handle,
};
