/*
 * Admin commands (text in, text or JSON out): status, stats [--json],
 * stop. Runs on the master thread; reads worker-owned sessions under each
 * worker loop's mutex and each session's own lock.
 */
#include "server/admin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <unistd.h>

#include "server/metrics.h"
#include "server/proc.h"
#include "server/reload.h"
#include "server/strbuf.h"

static unsigned count_retiring(const struct daemon *d)
{
    unsigned n = 0;
    for (const struct retiring *r = d->retiring; r != NULL; r = r->next)
        n++;
    return n;
}

static void status(struct daemon *d, struct strbuf *b)
{
    strbuf_add(b, "shmipcd pid %d, up %lu s, %u workers, epoch %llu", (int)getpid(),
               (unsigned long)((sock_now_ns() - d->started_ns) / 1000000000u), d->pool.n,
               (unsigned long long)d->up.epoch);
    if (d->up.since_s != 0) {
        char when[32];
        time_t t = (time_t)d->up.since_s;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        strbuf_add(b, " (upgraded at %s)", when);
    }
    if (d->up.handing_over)
        strbuf_add(b, ", handing over to pid %d", (int)d->up.successor);
    strbuf_add(b, "\n");
    for (unsigned i = 0; i < d->nsvcs; i++) {
        struct service *svc = d->svcs[i];
        struct plugin_gen *g = __atomic_load_n(&svc->gen, __ATOMIC_ACQUIRE);
        unsigned open = (unsigned)(__atomic_load_n(&svc->st->sessions_opened, __ATOMIC_RELAXED) -
                                   __atomic_load_n(&svc->st->sessions_closed, __ATOMIC_RELAXED));
        unsigned draining = 0;
        for (struct retiring *r = d->retiring; r != NULL; r = r->next)
            draining += r->svc == svc;
        strbuf_add(b,
                   "service %s: listen %s, plugin %s %s, generation %u, draining generations %u, "
                   "sessions %u\n",
                   svc->name, svc->l.addr.text, g->desc->name, g->desc->version, g->number,
                   draining, open);
        if (svc->isolation == ISOLATION_PROCESS)
            proc_status(d, svc, b);
    }
    for (struct service *svc = d->removed; svc != NULL; svc = svc->next_removed)
        strbuf_add(b, "service %s: removed, draining\n", svc->name);
    strbuf_add(b, "reloads %lu (refused %lu), generations finished %lu, still draining %u\n",
               (unsigned long)d->reloads, (unsigned long)d->reloads_failed,
               (unsigned long)d->gens_retired, count_retiring(d));
    for (unsigned i = 0; i < d->pool.n; i++) {
        pthread_mutex_lock(&d->pool.w[i].mu);
        strbuf_add(b, "worker %u: sessions %u\n", i, d->pool.w[i].nsessions);
        pthread_mutex_unlock(&d->pool.w[i].mu);
    }
    for (unsigned k = 0; k < d->nsvcs; k++) {
        struct worker_pool *p = &d->svcs[k]->own;
        for (unsigned i = 0; p->w != NULL && i < p->n; i++) {
            pthread_mutex_lock(&p->w[i].mu);
            strbuf_add(b, "service %s worker %u: sessions %u\n", p->name, i, p->w[i].nsessions);
            pthread_mutex_unlock(&p->w[i].mu);
        }
    }
}

static void session_line(struct strbuf *b, struct dsession *ds, unsigned worker, int json,
                         int first)
{
    /* The worker counts these as it goes, without a lock. */
    unsigned long requests = __atomic_load_n(&ds->requests, __ATOMIC_RELAXED);
    unsigned long handler_errors = __atomic_load_n(&ds->handler_errors, __ATOMIC_RELAXED);
    struct shmipc_stats st = {0};
    session_add_stats(ds->conn.s, &st);
    uint64_t in_use = pool_bytes_in_use(&ds->conn.s->pool->pool);
    if (json) {
        strbuf_add(b,
                   "%s{\"id\":%lu,\"service\":\"%s\",\"worker\":%u,\"requests\":%lu,"
                   "\"handler_errors\":%lu,\"bytes_in\":%lu,\"bytes_out\":%lu,\"wakeups_sent\":%lu,"
                   "\"wakeups_received\":%lu,\"fallbacks_sent\":%lu,\"fallbacks_received\":%lu,"
                   "\"queue_full\":%lu,\"streams\":%lu,\"pool_bytes_in_use\":%lu}",
                   first ? "" : ",", (unsigned long)ds->id, ds->svc->name, worker, requests,
                   handler_errors, (unsigned long)st.bytes_received, (unsigned long)st.bytes_sent,
                   (unsigned long)st.wakeups_sent, (unsigned long)st.wakeups_received,
                   (unsigned long)st.fallbacks_sent, (unsigned long)st.fallbacks_received,
                   (unsigned long)st.queue_full, (unsigned long)st.streams_opened,
                   (unsigned long)in_use);
        return;
    }
    strbuf_add(b,
               "session %lu (%s, worker %u): requests %lu, errors %lu, bytes in %lu out %lu, "
               "wake-ups sent %lu received %lu, fallbacks sent %lu received %lu, queue full %lu, "
               "pool bytes in use %lu\n",
               (unsigned long)ds->id, ds->svc->name, worker, requests, handler_errors,
               (unsigned long)st.bytes_received, (unsigned long)st.bytes_sent,
               (unsigned long)st.wakeups_sent, (unsigned long)st.wakeups_received,
               (unsigned long)st.fallbacks_sent, (unsigned long)st.fallbacks_received,
               (unsigned long)st.queue_full, (unsigned long)in_use);
}

static void pool_sessions_lines(struct strbuf *b, struct worker_pool *p, int json, int *first)
{
    for (unsigned i = 0; p->w != NULL && i < p->n; i++) {
        struct serve_loop *lp = &p->w[i].loop;
        pthread_mutex_lock(&lp->mu);
        for (struct serve_conn *c = lp->conns; c != NULL; c = c->next) {
            session_line(b, (struct dsession *)c, i, json, *first);
            *first = 0;
        }
        pthread_mutex_unlock(&lp->mu);
    }
}

static void stats(struct daemon *d, struct strbuf *b, int json)
{
    if (json)
        strbuf_add(b, "{\"services\":[");
    for (unsigned i = 0; i < d->nsvcs; i++) {
        struct svc_stats *s = d->svcs[i]->st;
        unsigned long v[13] = {
            __atomic_load_n(&s->requests, __ATOMIC_RELAXED),
            __atomic_load_n(&s->bytes_in, __ATOMIC_RELAXED),
            __atomic_load_n(&s->bytes_out, __ATOMIC_RELAXED),
            __atomic_load_n(&s->handler_errors, __ATOMIC_RELAXED),
            __atomic_load_n(&s->sessions_opened, __ATOMIC_RELAXED),
            __atomic_load_n(&s->sessions_closed, __ATOMIC_RELAXED),
            __atomic_load_n(&s->handshakes_failed, __ATOMIC_RELAXED),
            __atomic_load_n(&s->refused, __ATOMIC_RELAXED),
            __atomic_load_n(&s->idle_closed, __ATOMIC_RELAXED),
            __atomic_load_n(&s->protocol_errors, __ATOMIC_RELAXED),
            __atomic_load_n(&s->client_gone, __ATOMIC_RELAXED),
            __atomic_load_n(&s->deferred, __ATOMIC_RELAXED),
            __atomic_load_n(&s->slow_handlers, __ATOMIC_RELAXED),
        };
        if (json)
            strbuf_add(b,
                       "%s{\"name\":\"%s\",\"requests\":%lu,\"bytes_in\":%lu,\"bytes_out\":%lu,"
                       "\"handler_errors\":%lu,\"sessions_opened\":%lu,\"sessions_closed\":%lu,"
                       "\"handshakes_failed\":%lu,\"refused\":%lu,\"idle_closed\":%lu,"
                       "\"protocol_errors\":%lu,\"client_gone\":%lu,\"deferred\":%lu,"
                       "\"slow_handlers\":%lu}",
                       i ? "," : "", d->svcs[i]->name, v[0], v[1], v[2], v[3], v[4], v[5], v[6],
                       v[7], v[8], v[9], v[10], v[11], v[12]);
        else
            strbuf_add(b,
                       "service %s: requests %lu, bytes in %lu out %lu, handler errors %lu, "
                       "sessions opened %lu closed %lu, handshakes failed %lu, refused %lu, "
                       "idle closed %lu, protocol errors %lu, client gone %lu, deferred %lu, "
                       "slow handlers %lu\n",
                       d->svcs[i]->name, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8],
                       v[9], v[10], v[11], v[12]);
    }
    if (json)
        strbuf_add(b, "],\"sessions\":[");
    int first = 1;
    pool_sessions_lines(b, &d->pool, json, &first);
    for (unsigned k = 0; k < d->nsvcs; k++)
        pool_sessions_lines(b, &d->svcs[k]->own, json, &first);
    /* Workers drop pools (under the registry lock) while we read. */
    pthread_mutex_lock(&d->reg.mu);
    unsigned pools = d->reg.count;
    pthread_mutex_unlock(&d->reg.mu);
    if (json)
        strbuf_add(b, "],\"pools_mapped\":%u}\n", pools);
    else
        strbuf_add(b, "pools mapped: %u\n", pools);
}

char *admin_command(struct daemon *d, const char *line, int *stop)
{
    struct strbuf b = {0};
    *stop = 0;
    if (strcmp(line, "status") == 0)
        status(d, &b);
    else if (strcmp(line, "stats") == 0)
        stats(d, &b, 0);
    else if (strcmp(line, "stats --json") == 0)
        stats(d, &b, 1);
    else if (strcmp(line, "status --json") == 0)
        status_json(d, &b);
    else if (strcmp(line, "metrics") == 0)
        metrics_text(d, &b);
    else if (strcmp(line, "sessions") == 0)
        sessions_text(d, &b);
    else if (strcmp(line, "reload") == 0) {
        char *report = NULL;
        reload_and_log(d, "admin", &report);
        strbuf_add(&b, "%s", report != NULL ? report : "error: reload: out of memory\n");
        free(report);
    } else if (strcmp(line, "stop") == 0) {
        strbuf_add(&b, "stopping\n");
        *stop = 1;
    } else
        strbuf_add(&b,
                   "error: unknown command '%.64s' (status [--json], stats [--json], metrics, "
                   "sessions, reload, stop, upgrade [--binary PATH])\n",
                   line);
    return b.p;
}
