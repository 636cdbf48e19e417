/*
 * Metrics, JSON status and the session list (see metrics.h). The one
 * rule: counters only ever grow (a closed session's numbers are added to
 * its service's when it closes, live sessions' at the scrape; a
 * process-mode service's per-worker counters live in the page that
 * outlives its processes), and a scrape never waits on a worker longer
 * than a loop mutex is held.
 */
#include "server/metrics.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/sock.h"
#include "server/proc.h"

#define HTTP_MAX_REQUEST 4096
#define HTTP_DEADLINE_MS 200

static const char *const refusal_names[4] = {"max_sessions", "allowlist", "uid_limit",
                                             "unavailable"};

/* Sums over the live sessions of a service (thread mode), for counters
 * whose closed-session part is in its svc_stats. */
struct live {
    unsigned sessions, streams;
    struct shmipc_stats st;
};

static void live_of_pool(struct worker_pool *p, struct service *svc, struct live *l)
{
    for (unsigned i = 0; p->w != NULL && i < p->n; i++) {
        struct serve_loop *lp = &p->w[i].loop;
        pthread_mutex_lock(&lp->mu);
        for (struct serve_conn *c = lp->conns; c != NULL; c = c->next) {
            if (((struct dsession *)c)->svc != svc)
                continue;
            l->sessions++;
            l->streams += __atomic_load_n(&c->s->nstreams, __ATOMIC_RELAXED);
            session_add_stats(c->s, &l->st);
        }
        pthread_mutex_unlock(&lp->mu);
    }
}

static void family(struct strbuf *b, const char *name, const char *type, const char *help)
{
    strbuf_add(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static unsigned long long load(const uint64_t *v)
{
    return (unsigned long long)__atomic_load_n(v, __ATOMIC_RELAXED);
}

/* The samples of a handler-time histogram for one label set (`labels`,
 * without braces); buckets as svc_stats.lat_buckets. */
static void histogram(struct strbuf *b, const char *name, const char *labels,
                      const uint64_t *buckets, const uint64_t *sum_ns)
{
    static const uint64_t bounds[LAT_NBOUNDS] = LAT_BOUNDS_US;
    unsigned long long cum = 0;
    for (unsigned k = 0; k < LAT_NBOUNDS; k++) {
        cum += load(&buckets[k]);
        strbuf_add(b, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, (double)bounds[k] / 1e6, cum);
    }
    cum += load(&buckets[LAT_NBOUNDS]);
    strbuf_add(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, cum);
    strbuf_add(b, "%s_sum{%s} %.9f\n", name, labels, (double)load(sum_ns) / 1e9);
    strbuf_add(b, "%s_count{%s} %llu\n", name, labels, cum);
}

/* ---- per worker ---- */

/* A service's workers as the metrics list them: worker i of its pool
 * (thread mode), or worker slot i of its processes (process mode: the
 * counters of every process it had, the gauges of those alive). */
struct wview {
    struct service *svc;
    const struct worker_stats *st; /* n of them */
    unsigned n;
    const char *pool; /* "shared", the service's name (workers of its own), "process" */
};

static struct wview worker_view(struct daemon *d, struct service *svc)
{
    struct wview v = {svc, NULL, 0, "process"};
    if (svc->isolation == ISOLATION_PROCESS) {
        if (svc->shared != NULL) {
            /* Its processes write nworkers: capped before it bounds a loop. */
            unsigned n = __atomic_load_n(&svc->shared->nworkers, __ATOMIC_RELAXED);
            v.st = svc->shared->wst;
            v.n = n < PROC_CALLS ? n : PROC_CALLS;
        }
        return v;
    }
    struct worker_pool *p = svc->own.n > 0 ? &svc->own : &d->pool;
    v.st = svc->wst;
    v.n = svc->wst != NULL ? svc->nwst : 0;
    v.pool = p->name != NULL ? p->name : "shared";
    return v;
}

static void wlabels(char *buf, size_t cap, const struct wview *v, unsigned i)
{
    snprintf(buf, cap, "service=\"%s\",pool=\"%s\",worker=\"%u\"", v->svc->name, v->pool, i);
}

/* Sessions and streams worker i serves now: its own gauges (thread
 * mode), or slot i's in every live process of the service. */
static void worker_gauges(struct daemon *d, const struct wview *v, unsigned i,
                          unsigned long long *sessions, unsigned long long *streams)
{
    *sessions = *streams = 0;
    if (v->svc->isolation != ISOLATION_PROCESS) {
        const struct worker_live *l = svc_worker_live(v->svc, i);
        if (l != NULL) {
            *sessions = load(&l->sessions);
            *streams = load(&l->streams);
        }
        return;
    }
    for (struct wproc *w = d->procs; w != NULL && i < PROC_CALLS; w = w->next) {
        if (w->svc != v->svc || w->calls == NULL)
            continue;
        *sessions += load(&w->calls->live[i].sessions);
        *streams += load(&w->calls->live[i].streams);
    }
}

/* One sample per worker of each service of a counter at `off` in
 * worker_stats. */
static void per_worker(struct strbuf *b, struct daemon *d, const struct wview *views,
                       const char *name, const char *help, size_t off)
{
    char labels[192];
    family(b, name, "counter", help);
    for (unsigned k = 0; k < d->nsvcs; k++) {
        for (unsigned i = 0; i < views[k].n; i++) {
            wlabels(labels, sizeof(labels), &views[k], i);
            strbuf_add(b, "%s{%s} %llu\n", name, labels,
                       load((const uint64_t *)((const char *)&views[k].st[i] + off)));
        }
    }
}

#define WORKER_FIELD(f) offsetof(struct worker_stats, f)

static void worker_metrics(struct strbuf *b, struct daemon *d)
{
    struct wview views[CONF_MAX_SERVICES];
    for (unsigned k = 0; k < d->nsvcs; k++)
        views[k] = worker_view(d, d->svcs[k]);
    per_worker(b, d, views, "shmipcd_worker_requests_total", "Requests handled, per worker.",
               WORKER_FIELD(requests));
    per_worker(b, d, views, "shmipcd_worker_request_bytes_total",
               "Request bytes received, per worker.", WORKER_FIELD(bytes_in));
    per_worker(b, d, views, "shmipcd_worker_response_bytes_total",
               "Response bytes sent, per worker.", WORKER_FIELD(bytes_out));
    per_worker(b, d, views, "shmipcd_worker_handler_errors_total",
               "Requests whose handler failed, per worker.", WORKER_FIELD(handler_errors));
    char labels[192];
    family(b, "shmipcd_worker_handler_seconds", "histogram",
           "Time handle() took per request, per worker.");
    for (unsigned k = 0; k < d->nsvcs; k++) {
        for (unsigned i = 0; i < views[k].n; i++) {
            wlabels(labels, sizeof(labels), &views[k], i);
            histogram(b, "shmipcd_worker_handler_seconds", labels, views[k].st[i].lat_buckets,
                      &views[k].st[i].lat_sum_ns);
        }
    }
    static const char *const gauge[2][2] = {
        {"shmipcd_worker_sessions", "Sessions open, per worker."},
        {"shmipcd_worker_streams", "Streams open, per worker."}};
    for (unsigned g = 0; g < 2; g++) {
        family(b, gauge[g][0], "gauge", gauge[g][1]);
        for (unsigned k = 0; k < d->nsvcs; k++) {
            for (unsigned i = 0; i < views[k].n; i++) {
                unsigned long long v[2];
                worker_gauges(d, &views[k], i, &v[0], &v[1]);
                wlabels(labels, sizeof(labels), &views[k], i);
                strbuf_add(b, "%s{%s} %llu\n", gauge[g][0], labels, v[g]);
            }
        }
    }
    family(b, "shmipcd_worker_process_sessions", "gauge",
           "Sessions of each worker process (process-mode services).");
    for (struct wproc *w = d->procs; w != NULL; w = w->next)
        strbuf_add(b,
                   "shmipcd_worker_process_sessions{service=\"%s\",pid=\"%d\",generation=\"%u\"} "
                   "%u\n",
                   w->svc->name, (int)w->pid, w->generation, w->nsess);
}

/* One sample per service of a per-service counter at `off` in svc_stats. */
static void per_service(struct strbuf *b, struct daemon *d, const char *name, const char *type,
                        const char *help, size_t off, const uint64_t *live_add)
{
    family(b, name, type, help);
    for (unsigned i = 0; i < d->nsvcs; i++) {
        const uint64_t *v = (const uint64_t *)((const char *)d->svcs[i]->st + off);
        strbuf_add(b, "%s{service=\"%s\"} %llu\n", name, d->svcs[i]->name,
                   (unsigned long long)(__atomic_load_n(v, __ATOMIC_RELAXED) +
                                        (live_add != NULL ? live_add[i] : 0)));
    }
}

#define SVC_FIELD(f) offsetof(struct svc_stats, f)

/* Streams open of a service: what its live sessions hold (thread mode,
 * `live`), or what the workers of its processes counted. */
static unsigned long long service_streams(struct daemon *d, struct service *svc, unsigned live)
{
    if (svc->isolation != ISOLATION_PROCESS)
        return live;
    struct wview v = worker_view(d, svc);
    unsigned long long sum = 0, sessions, streams;
    for (unsigned i = 0; i < v.n; i++) {
        worker_gauges(d, &v, i, &sessions, &streams);
        sum += streams;
    }
    return sum;
}

void metrics_text(struct daemon *d, struct strbuf *b)
{
    unsigned n = d->nsvcs;
    struct live lv[CONF_MAX_SERVICES];
    memset(lv, 0, sizeof(lv));
    uint64_t ws[CONF_MAX_SERVICES], wr[CONF_MAX_SERVICES], fs[CONF_MAX_SERVICES],
        fr[CONF_MAX_SERVICES], so[CONF_MAX_SERVICES];
    for (unsigned i = 0; i < n; i++) {
        struct service *svc = d->svcs[i];
        live_of_pool(&d->pool, svc, &lv[i]);
        live_of_pool(&svc->own, svc, &lv[i]);
        ws[i] = lv[i].st.wakeups_sent;
        wr[i] = lv[i].st.wakeups_received;
        fs[i] = lv[i].st.fallbacks_sent;
        fr[i] = lv[i].st.fallbacks_received;
        so[i] = lv[i].st.streams_opened;
    }
    strbuf_add(b, "# HELP shmipcd_up 1 while shmipcd serves.\n# TYPE shmipcd_up gauge\n"
                  "shmipcd_up 1\n");
    family(b, "shmipcd_start_time_seconds", "gauge", "When shmipcd started, Unix time.");
    strbuf_add(b, "shmipcd_start_time_seconds %llu\n",
               (unsigned long long)(time(NULL) - (time_t)((sock_now_ns() - d->started_ns) /
                                                          1000000000u)));
    per_service(b, d, "shmipcd_requests_total", "counter", "Requests handled.",
                SVC_FIELD(requests), NULL);
    per_service(b, d, "shmipcd_request_bytes_total", "counter", "Request bytes received.",
                SVC_FIELD(bytes_in), NULL);
    per_service(b, d, "shmipcd_response_bytes_total", "counter", "Response bytes sent.",
                SVC_FIELD(bytes_out), NULL);
    per_service(b, d, "shmipcd_handler_errors_total", "counter",
                "Requests whose handler failed (its stream closed or, handler_error drop, "
                "nothing sent).",
                SVC_FIELD(handler_errors), NULL);
    per_service(b, d, "shmipcd_client_gone_total", "counter",
                "Answers that found their client or session gone.", SVC_FIELD(client_gone),
                NULL);
    per_service(b, d, "shmipcd_deferred_total", "counter", "Answers the plugin deferred.",
                SVC_FIELD(deferred), NULL);
    per_service(b, d, "shmipcd_slow_handlers_total", "counter",
                "Handler calls logged as slow (slow_handler_ms).", SVC_FIELD(slow_handlers), NULL);
    per_service(b, d, "shmipcd_sessions_opened_total", "counter", "Sessions opened.",
                SVC_FIELD(sessions_opened), NULL);
    per_service(b, d, "shmipcd_sessions_closed_total", "counter", "Sessions closed.",
                SVC_FIELD(sessions_closed), NULL);
    per_service(b, d, "shmipcd_handshakes_failed_total", "counter", "Handshakes refused.",
                SVC_FIELD(handshakes_failed), NULL);
    per_service(b, d, "shmipcd_protocol_errors_total", "counter",
                "Sessions closed for the peer's bad input.", SVC_FIELD(protocol_errors), NULL);
    per_service(b, d, "shmipcd_idle_closed_total", "counter",
                "Sessions closed by the idle timeout.", SVC_FIELD(idle_closed), NULL);
    per_service(b, d, "shmipcd_streams_opened_total", "counter", "Streams opened by clients.",
                SVC_FIELD(streams_opened), so);
    per_service(b, d, "shmipcd_pollings_sent_total", "counter", "Polling events sent.",
                SVC_FIELD(wakeups_sent), ws);
    per_service(b, d, "shmipcd_pollings_received_total", "counter", "Polling events received.",
                SVC_FIELD(wakeups_received), wr);
    per_service(b, d, "shmipcd_fallbacks_sent_total", "counter", "FallbackData events sent.",
                SVC_FIELD(fallbacks_sent), fs);
    per_service(b, d, "shmipcd_fallbacks_received_total", "counter",
                "FallbackData events received.", SVC_FIELD(fallbacks_received), fr);
    family(b, "shmipcd_refused_total", "counter", "Connections refused, by reason.");
    for (unsigned i = 0; i < n; i++)
        for (unsigned r = 0; r < 4; r++)
            strbuf_add(b, "shmipcd_refused_total{service=\"%s\",reason=\"%s\"} %llu\n",
                       d->svcs[i]->name, refusal_names[r],
                       (unsigned long long)__atomic_load_n(&d->svcs[i]->st->refused_by[r],
                                                          __ATOMIC_RELAXED));
    family(b, "shmipcd_sessions", "gauge", "Sessions open.");
    for (unsigned i = 0; i < n; i++) {
        struct svc_stats *s = d->svcs[i]->st;
        uint64_t open = __atomic_load_n(&s->sessions_opened, __ATOMIC_RELAXED) -
                        __atomic_load_n(&s->sessions_closed, __ATOMIC_RELAXED);
        strbuf_add(b, "shmipcd_sessions{service=\"%s\"} %llu\n", d->svcs[i]->name,
                   (unsigned long long)open);
    }
    family(b, "shmipcd_streams", "gauge", "Streams open.");
    for (unsigned i = 0; i < n; i++)
        strbuf_add(b, "shmipcd_streams{service=\"%s\"} %llu\n", d->svcs[i]->name,
                   service_streams(d, d->svcs[i], lv[i].streams));
    family(b, "shmipcd_handler_seconds", "histogram", "Time handle() took per request.");
    for (unsigned i = 0; i < n; i++) {
        char labels[96];
        snprintf(labels, sizeof(labels), "service=\"%s\"", d->svcs[i]->name);
        histogram(b, "shmipcd_handler_seconds", labels, d->svcs[i]->st->lat_buckets,
                  &d->svcs[i]->st->lat_sum_ns);
    }
    worker_metrics(b, d);
    family(b, "shmipcd_worker_process_restarts_total", "counter",
           "Worker processes of process-mode services started again after dying.");
    for (unsigned i = 0; i < n; i++)
        if (d->svcs[i]->isolation == ISOLATION_PROCESS)
            strbuf_add(b, "shmipcd_worker_process_restarts_total{service=\"%s\"} %u\n",
                       d->svcs[i]->name, d->svcs[i]->restarts);
    unsigned draining = 0;
    for (struct retiring *r = d->retiring; r != NULL; r = r->next)
        draining++;
    family(b, "shmipcd_reloads_total", "counter", "Reloads asked for.");
    strbuf_add(b, "shmipcd_reloads_total %llu\n", (unsigned long long)d->reloads);
    family(b, "shmipcd_reloads_failed_total", "counter", "Reloads refused in whole or part.");
    strbuf_add(b, "shmipcd_reloads_failed_total %llu\n", (unsigned long long)d->reloads_failed);
    family(b, "shmipcd_generations_draining", "gauge", "Plugin generations still draining.");
    strbuf_add(b, "shmipcd_generations_draining %u\n", draining);
    uint64_t bytes = 0;
    unsigned pools_n = 0;
    pthread_mutex_lock(&d->reg.mu);
    for (struct pool_ref *p = d->reg.head; p != NULL; p = p->next) {
        bytes += p->region.size;
        pools_n++;
    }
    pthread_mutex_unlock(&d->reg.mu);
    family(b, "shmipcd_pools_mapped", "gauge", "Client pools mapped (thread-mode services).");
    strbuf_add(b, "shmipcd_pools_mapped %u\n", pools_n);
    family(b, "shmipcd_pool_bytes_mapped", "gauge", "Bytes of client pools mapped.");
    strbuf_add(b, "shmipcd_pool_bytes_mapped %llu\n", (unsigned long long)bytes);
}

/* ---- status --json ---- */

static void json_string(struct strbuf *b, const char *s)
{
    strbuf_add(b, "\"");
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            strbuf_add(b, "\\%c", c);
        else if (c < 0x20)
            strbuf_add(b, "\\u%04x", c);
        else
            strbuf_add(b, "%c", c);
    }
    strbuf_add(b, "\"");
}

void status_json(struct daemon *d, struct strbuf *b)
{
    strbuf_add(b, "{\"pid\":%d,\"uptime_s\":%llu,\"workers\":%u,\"reloads\":%llu,"
                  "\"reloads_failed\":%llu,\"epoch\":%llu,\"upgraded_at_s\":%llu,"
                  "\"handing_over_to\":%d,\"services\":[",
               (int)getpid(), (unsigned long long)((sock_now_ns() - d->started_ns) / 1000000000u),
               d->pool.n, (unsigned long long)d->reloads, (unsigned long long)d->reloads_failed,
               (unsigned long long)d->up.epoch, (unsigned long long)d->up.since_s,
               d->up.handing_over ? (int)d->up.successor : 0);
    for (unsigned i = 0; i < d->nsvcs; i++) {
        struct service *svc = d->svcs[i];
        struct plugin_gen *g = __atomic_load_n(&svc->gen, __ATOMIC_ACQUIRE);
        unsigned draining = 0;
        for (struct retiring *r = d->retiring; r != NULL; r = r->next)
            draining += r->svc == svc;
        uint64_t open = __atomic_load_n(&svc->st->sessions_opened, __ATOMIC_RELAXED) -
                        __atomic_load_n(&svc->st->sessions_closed, __ATOMIC_RELAXED);
        strbuf_add(b, "%s{\"name\":", i ? "," : "");
        json_string(b, svc->name);
        strbuf_add(b, ",\"listen\":");
        json_string(b, svc->l.addr.text);
        strbuf_add(b, ",\"plugin\":");
        json_string(b, g->desc->name);
        strbuf_add(b, ",\"version\":");
        json_string(b, g->desc->version);
        strbuf_add(b,
                   ",\"generation\":%u,\"draining_generations\":%u,\"sessions\":%llu,"
                   "\"isolation\":\"%s\",\"workers\":%u",
                   g->number, draining, (unsigned long long)open,
                   svc->isolation == ISOLATION_PROCESS ? "process" : "thread",
                   svc->own.n ? svc->own.n : d->pool.n);
        if (svc->isolation == ISOLATION_PROCESS) {
            strbuf_add(b, ",\"restarts\":%u,\"failed\":", svc->restarts);
            json_string(b, svc->failed);
            strbuf_add(b, ",\"last_exit\":");
            json_string(b, svc->last_exit);
            strbuf_add(b, ",\"processes\":[");
            int first = 1;
            for (struct wproc *w = d->procs; w != NULL; w = w->next) {
                if (w->svc != svc)
                    continue;
                strbuf_add(b, "%s{\"pid\":%d,\"generation\":%u,\"state\":\"%s\",\"sessions\":%u}",
                           first ? "" : ",", (int)w->pid, w->generation,
                           w->draining ? "draining" : w->ready ? "serving" : "starting", w->nsess);
                first = 0;
            }
            strbuf_add(b, "]");
        }
        strbuf_add(b, "}");
    }
    strbuf_add(b, "]}\n");
}

/* ---- sessions ---- */

static void sessions_of_pool(struct strbuf *b, struct worker_pool *p, uint64_t now)
{
    for (unsigned i = 0; p->w != NULL && i < p->n; i++) {
        struct serve_loop *lp = &p->w[i].loop;
        pthread_mutex_lock(&lp->mu);
        for (struct serve_conn *c = lp->conns; c != NULL; c = c->next) {
            struct dsession *ds = (struct dsession *)c;
            uint64_t last = __atomic_load_n(&c->s->last_rx_ns, __ATOMIC_RELAXED);
            strbuf_add(b,
                       "session %lu: service %s, worker %s %u, peer pid %lld uid %lld, age %llu s, "
                       "streams %u, pool bytes in use %llu, idle %llu ms\n",
                       (unsigned long)ds->id, ds->svc->name, p->name, i, ds->pid, ds->uid,
                       (unsigned long long)((now - ds->started_ns) / 1000000000u),
                       __atomic_load_n(&c->s->nstreams, __ATOMIC_RELAXED),
                       (unsigned long long)pool_bytes_in_use(&c->s->pool->pool),
                       (unsigned long long)((now > last ? now - last : 0) / 1000000u));
        }
        pthread_mutex_unlock(&lp->mu);
    }
}

void sessions_text(struct daemon *d, struct strbuf *b)
{
    uint64_t now = sock_now_ns();
    sessions_of_pool(b, &d->pool, now);
    for (unsigned i = 0; i < d->nsvcs; i++)
        sessions_of_pool(b, &d->svcs[i]->own, now);
    for (struct wproc *w = d->procs; w != NULL; w = w->next)
        for (unsigned i = 0; i < w->nsess; i++)
            strbuf_add(b, "session %lu: service %s, worker process %d, peer uid %lld\n",
                       (unsigned long)w->sess[i].id, w->svc->name, (int)w->pid, w->sess[i].uid);
    if (b->p == NULL)
        strbuf_add(b, "no sessions\n");
}

/* ---- HTTP ---- */

static void reply(int fd, const char *status, const char *type, const char *body, size_t len)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, type, len);
    uint64_t dl = sock_deadline(1000);
    if (sock_write_all(fd, head, (size_t)n, dl) == 0 && len > 0)
        sock_write_all(fd, body, len, dl);
}

void metrics_http(struct daemon *d, int fd)
{
    char req[HTTP_MAX_REQUEST + 1];
    size_t n = 0;
    uint64_t dl = sock_deadline(HTTP_DEADLINE_MS);
    while (n < HTTP_MAX_REQUEST) {
        ssize_t r = read(fd, req + n, HTTP_MAX_REQUEST - n);
        if (r > 0) {
            n += (size_t)r;
            req[n] = '\0';
            if (strstr(req, "\r\n\r\n") != NULL || strstr(req, "\n\n") != NULL)
                break;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR) || sock_now_ns() >= dl)
            break;
        struct pollfd p = {fd, POLLIN, 0};
        poll(&p, 1, 20);
    }
    req[n] = '\0';
    if (n == HTTP_MAX_REQUEST) {
        static const char big[] = "request too large\n";
        reply(fd, "431 Request Header Fields Too Large", "text/plain", big, sizeof(big) - 1);
        return;
    }
    if (strncmp(req, "GET ", 4) != 0) {
        static const char no[] = "only GET\n";
        reply(fd, "405 Method Not Allowed", "text/plain", no, sizeof(no) - 1);
        return;
    }
    if (strncmp(req + 4, "/metrics ", 9) != 0 && strncmp(req + 4, "/metrics?", 9) != 0) {
        static const char nf[] = "try /metrics\n";
        reply(fd, "404 Not Found", "text/plain", nf, sizeof(nf) - 1);
        return;
    }
    struct strbuf b = {0};
    metrics_text(d, &b);
    reply(fd, "200 OK", "text/plain; version=0.0.4; charset=utf-8", b.p ? b.p : "", b.len);
    free(b.p);
}
