/*
 * The plugin call: a request's trip through a service's plugin. The
 * generation in force is taken once per dispatch pass (gen_acquire), the
 * worker's thread state made on first use, handle() called with the host
 * API table (write, reserve, advance, forward, copy, config getters, log)
 * behind its response, and the answer flushed, forwarded or discarded.
 * The one rule: a generation is only used under a reference, so a reload
 * can retire it once the last pass that holds it ends.
 */
#include "server/handler.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "proto/sock.h"
#include "shmipc/errors.h"

_Static_assert(sizeof(struct shmipc_iov) == sizeof(struct shmipc_plugin_iov), "iov layout");
_Static_assert(offsetof(struct shmipc_iov, len) == offsetof(struct shmipc_plugin_iov, len),
               "iov layout");

struct shmipc_response {
    shmipc_stream *st;
    int err;
    size_t bytes;
    shmipc_msg *req; /* the request being answered */
    int fwd;         /* the response is the request itself (so far) */
    /* Who answers (set by plugin_request, copied into a deferred one). */
    struct service *svc;
    struct plugin_gen *g;
    struct worker *w;
    unsigned windex; /* w->index: a deferred answer counts there after w is gone */
    /* The worker's response: defer() moved it there. */
    struct shmipc_response *moved;
    /* A deferred response: the plugin's until complete() or fail(). */
    int deferred;
    shmipc_msg msg; /* the request, owned */
    struct resume_target *rt;
};

/* The request's bytes written into the response (copied). */
static int copy_request(struct shmipc_response *r)
{
    for (unsigned i = 0; i < r->req->niov; i++) {
        const struct shmipc_iov *v = &r->req->iov[i];
        int rc = v->len == 0 ? 0 : shmipc_stream_write(r->st, v->base, v->len);
        if (rc < 0)
            return r->err = rc;
    }
    return 0;
}

/* A forwarded request followed by more bytes: it is copied after all. */
static int unforward(struct shmipc_response *r)
{
    r->fwd = 0;
    return copy_request(r);
}

/* The service whose plugin code runs on this thread, for its log lines. */
static _Thread_local const char *log_service;

void handler_log_service(const char *service)
{
    log_service = service;
}

static void host_log(int level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (level < SHMIPC_LOG_ERROR)
        level = SHMIPC_LOG_ERROR;
    if (level > SHMIPC_LOG_DEBUG)
        level = SHMIPC_LOG_DEBUG;
    if (log_service != NULL)
        log_msg((enum log_level)level, "service %s: plugin: %s", log_service, line);
    else
        log_msg((enum log_level)level, "plugin: %s", line);
}

static int host_write(struct shmipc_response *r, const void *data, size_t n)
{
    if (r->fwd && unforward(r) < 0)
        return r->err;
    int rc = shmipc_stream_write(r->st, data, n);
    if (rc < 0)
        r->err = rc;
    else
        r->bytes += n;
    return rc;
}

static int host_reserve(struct shmipc_response *r, size_t n, void **ptr)
{
    if (r->fwd && unforward(r) < 0)
        return r->err;
    int rc = shmipc_stream_reserve(r->st, n, ptr);
    if (rc < 0)
        r->err = rc;
    else
        r->bytes += n;
    return rc;
}

static int host_advance(struct shmipc_response *r, size_t n)
{
    if (r->fwd && unforward(r) < 0)
        return r->err;
    int rc = shmipc_stream_advance(r->st, n);
    if (rc < 0)
        r->err = rc;
    else
        r->bytes += n;
    return rc;
}

static int host_forward(struct shmipc_response *r)
{
    if (r->err != 0)
        return r->err;
    if (r->bytes == 0 && !r->fwd) {
        r->fwd = 1; /* published by the worker after handle() */
        r->bytes = r->req->len;
        return 0;
    }
    if ((r->fwd && unforward(r) < 0) || copy_request(r) < 0)
        return r->err;
    r->bytes += r->req->len;
    return 0;
}

static size_t host_copy(const struct shmipc_request *req, size_t off, void *dst, size_t n)
{
    shmipc_msg m = {req->len, req->niov, (const struct shmipc_iov *)req->iov, NULL};
    return shmipc_msg_copy(&m, off, dst, n);
}

static int host_conf_int(const struct shmipc_plugin_conf *c, const char *path, long long *out)
{
    return conf_plugin_int((const config_setting_t *)c, path, out);
}

static int host_conf_bool(const struct shmipc_plugin_conf *c, const char *path, int *out)
{
    return conf_plugin_bool((const config_setting_t *)c, path, out);
}

static int host_conf_float(const struct shmipc_plugin_conf *c, const char *path, double *out)
{
    return conf_plugin_float((const config_setting_t *)c, path, out);
}

static int host_conf_keys(const struct shmipc_plugin_conf *c, const char *const *known,
                          char *errbuf, size_t errlen)
{
    return conf_plugin_keys((const config_setting_t *)c, known, errbuf, errlen);
}

static int host_conf_string(const struct shmipc_plugin_conf *c, const char *path, const char **out)
{
    return conf_plugin_string((const config_setting_t *)c, path, out);
}

/* ---- generations ---- */

/* A reference on the service's current generation, or NULL when the
 * service was removed and its last generation is retiring. The master
 * publishes a new generation holding the service's reference before it
 * drops the old one's, so a reference count of 0 on the generation we
 * read means "read the pointer again"; if it did not change, there is
 * nothing left to serve with. */
static struct plugin_gen *gen_acquire(struct service *svc)
{
    struct plugin_gen *g = __atomic_load_n(&svc->gen, __ATOMIC_ACQUIRE);
    for (;;) {
        int refs = __atomic_load_n(&g->refs, __ATOMIC_RELAXED);
        while (refs > 0) {
            if (__atomic_compare_exchange_n(&g->refs, &refs, refs + 1, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_RELAXED))
                return g;
        }
        struct plugin_gen *again = __atomic_load_n(&svc->gen, __ATOMIC_ACQUIRE);
        if (again == g)
            return NULL;
        g = again;
    }
}

static void gen_release(struct plugin_gen *g)
{
    __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL);
}

static void *thread_state(unsigned worker, struct plugin_gen *g)
{
    if (g->desc->thread_init == NULL || g->thread_states[worker] != NULL)
        return g->thread_states[worker];
    char err[256];
    if (gen_thread_init(g, worker, err, sizeof(err)) < 0) {
        log_error("worker %u: %s", worker, err);
        return NULL;
    }
    return g->thread_states[worker];
}

/* ---- what a worker runs (read by the slow-handler log and the stop) ---- */

/* A seqlock: seq is odd while a call runs; a reader takes the fields
 * between two equal odd reads of it. */
static void call_begin(struct worker *w, struct service *svc, struct plugin_gen *g,
                       uint64_t session_id, uint32_t stream_id)
{
    struct call_info *c = w->call;
    __atomic_store_n(&c->svc, svc, __ATOMIC_RELAXED);
    __atomic_store_n(&c->g, g, __ATOMIC_RELAXED);
    __atomic_store_n(&c->session_id, session_id, __ATOMIC_RELAXED);
    __atomic_store_n(&c->stream_id, stream_id, __ATOMIC_RELAXED);
    __atomic_store_n(&c->start_ns, sock_now_ns(), __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->seq, 1, __ATOMIC_RELEASE);
    log_service = svc->name;
}

static void call_end(struct worker *w)
{
    __atomic_add_fetch(&w->call->seq, 1, __ATOMIC_RELEASE);
    log_service = NULL;
}

/* A handler call took `ns`: counted in the pass, which adds it to the
 * service's and the worker's histograms at its end. */
static void record_latency(struct pass *p, uint64_t ns)
{
    static const uint64_t bounds[LAT_NBOUNDS] = LAT_BOUNDS_US;
    unsigned b = 0;
    while (b < LAT_NBOUNDS && ns > bounds[b] * 1000u)
        b++;
    p->lat_buckets[b]++;
    p->lat_sum_ns += ns;
}

static void add(uint64_t *counter, uint64_t n)
{
    if (n > 0)
        __atomic_add_fetch(counter, n, __ATOMIC_RELAXED);
}

/* ---- requests ---- */

/* The counters the admin socket and the metrics read are added once per
 * pass: the service's (atomics shared with the other workers) and the
 * worker's own (its cache lines). */
void plugin_pass_end(struct dsession *ds, struct pass *p)
{
    struct service *svc = ds->svc;
    if (p->g != NULL)
        gen_release(p->g);
    p->g = NULL;
    if (p->requests == 0 && p->gone == 0 && p->errors == 0)
        return;
    add(&ds->requests, p->requests);
    add(&ds->handler_errors, p->errors);
    struct svc_stats *st = svc->st;
    add(&st->requests, p->requests);
    add(&st->bytes_in, p->bytes_in);
    add(&st->bytes_out, p->bytes_out);
    add(&st->handler_errors, p->errors);
    add(&st->client_gone, p->gone);
    add(&st->deferred, p->deferred);
    add(&st->lat_sum_ns, p->lat_sum_ns);
    add(&st->lat_count, p->requests);
    for (unsigned b = 0; b <= LAT_NBOUNDS; b++)
        add(&st->lat_buckets[b], p->lat_buckets[b]);
    struct worker_stats *ws = ds->w != NULL ? svc_worker_stats(svc, ds->w->index) : NULL;
    if (ws != NULL) {
        add(&ws->requests, p->requests);
        add(&ws->bytes_in, p->bytes_in);
        add(&ws->bytes_out, p->bytes_out);
        add(&ws->handler_errors, p->errors);
        add(&ws->lat_sum_ns, p->lat_sum_ns);
        for (unsigned b = 0; b <= LAT_NBOUNDS; b++)
            add(&ws->lat_buckets[b], p->lat_buckets[b]);
    }
    memset(p, 0, sizeof(*p));
}

/* The answer could not reach the client because it (or its session) is
 * gone: not the handler's fault. */
static int client_gone(shmipc_stream *st, int rc)
{
    return rc == SHMIPC_ECLOSED || !session_alive(st->sess);
}

/* A handler failed: by the service's handler_error, the stream is closed
 * so the client hears it at once (its next read sees the end), or
 * nothing is sent. */
static void stream_failed(struct service *svc, shmipc_stream *st, int code)
{
    shmipc_stream_discard(st);
    if (__atomic_load_n(&svc->handler_error, __ATOMIC_RELAXED) == HANDLER_ERROR_CLOSE_STREAM) {
        int rc = shmipc_stream_shutdown(st);
        log_debug("service %s: stream %u closed: its handler failed (%s)%s", svc->name,
                  shmipc_stream_id(st), shmipc_strerror(code), rc < 0 ? "; the close failed" : "");
    }
}

/* Sends what r holds as the answer of a handler that returned hrc, or
 * fails the stream; the request is released either way. Counts into p. */
static void answer(struct shmipc_response *r, int hrc, struct pass *p)
{
    shmipc_stream *st = r->st;
    int rc;
    if (hrc == 0 && r->err == 0) {
        if (r->fwd) {
            rc = shmipc_stream_forward(st, r->req); /* releases it */
        } else {
            shmipc_msg_release(r->req);
            rc = shmipc_stream_flush(st);
        }
        if (rc == 0 || rc == SHMIPC_EQFULL) { /* a full queue: retried by the loop */
            p->bytes_out += r->bytes;
            return;
        }
        shmipc_stream_discard(st);
    } else {
        shmipc_msg_release(r->req);
        shmipc_stream_discard(st);
        rc = hrc < 0 ? hrc : r->err;
    }
    if (client_gone(st, rc)) {
        p->gone++;
        return;
    }
    p->errors++;
    stream_failed(r->svc, st, rc);
}

static struct shmipc_response *host_defer(struct shmipc_response *r)
{
    if (r == NULL || r->deferred || r->moved != NULL || r->w == NULL)
        return NULL; /* only once, and only the response handle() got */
    struct shmipc_response *d = malloc(sizeof(*d));
    if (d == NULL)
        return NULL;
    *d = *r;
    d->deferred = 1;
    d->msg = *r->req; /* the request moves with it (its slices stay) */
    memset(r->req, 0, sizeof(*r->req));
    d->req = &d->msg;
    __atomic_add_fetch(&d->g->refs, 1, __ATOMIC_ACQ_REL); /* the generation stays */
    shmipc_stream_hold(d->st);
    stream_pause(d->st); /* its next request waits for this answer */
    d->rt = r->w->rt;
    pthread_mutex_lock(&d->rt->mu);
    d->rt->refs++;
    pthread_mutex_unlock(&d->rt->mu);
    __atomic_add_fetch(&r->w->deferred_open, 1, __ATOMIC_ACQ_REL);
    r->moved = d;
    return d;
}

/* The deferred answer is done: its stream goes on with its next request
 * (on the worker, if it still runs), and the references go. */
static void deferred_end(struct shmipc_response *d, struct pass *p)
{
    struct service *svc = d->svc;
    add(&svc->st->bytes_out, p->bytes_out);
    add(&svc->st->handler_errors, p->errors);
    add(&svc->st->client_gone, p->gone);
    struct worker_stats *ws = svc_worker_stats(svc, d->windex);
    if (ws != NULL) {
        add(&ws->bytes_out, p->bytes_out);
        add(&ws->handler_errors, p->errors);
    }
    shmipc_stream *st = d->st;
    struct session *s = st->sess;
    stream_resume(st);
    struct resume_target *rt = d->rt;
    pthread_mutex_lock(&rt->mu);
    if (rt->w != NULL) {
        rt->w->resume(rt->w, s);
        __atomic_sub_fetch(&rt->w->deferred_open, 1, __ATOMIC_ACQ_REL);
    }
    int last = --rt->refs == 0;
    pthread_mutex_unlock(&rt->mu);
    if (last) {
        pthread_mutex_destroy(&rt->mu);
        free(rt);
    }
    shmipc_stream_release(st);
    gen_release(d->g);
    free(d);
}

static int host_complete(struct shmipc_response *d)
{
    if (d == NULL || !d->deferred)
        return -EINVAL;
    struct pass p = {0};
    answer(d, 0, &p);
    int rc = p.errors ? (d->err ? d->err : SHMIPC_EPROTO) : p.gone ? SHMIPC_ECLOSED : 0;
    deferred_end(d, &p);
    return rc;
}

static void host_fail(struct shmipc_response *d, int code)
{
    if (d == NULL || !d->deferred)
        return;
    struct pass p = {0};
    answer(d, code < 0 ? code : SHMIPC_EPROTO, &p);
    deferred_end(d, &p);
}

int plugin_request(struct worker *w, struct dsession *ds, shmipc_stream *st, shmipc_msg *m,
                   struct pass *p)
{
    struct service *svc = ds->svc;
    if (stream_paused(st) || stream_closed_here(st)) {
        /* The session is dying with a deferred answer pending, or we
         * closed this stream after its handler failed: nothing can go out
         * for the requests that were still on their way. */
        shmipc_msg_release(m);
        return stream_paused(st);
    }
    if (p->g == NULL && (p->g = gen_acquire(svc)) == NULL) {
        shmipc_msg_release(m);
        p->errors++;
        session_die(ds->conn.s, SHMIPC_ECLOSED, "service removed");
        return 0;
    }
    struct plugin_gen *g = p->g;
    void *ts = thread_state(w->index, g);
    struct shmipc_request req = {ds->id, shmipc_stream_id(st), m->len, m->niov,
                                 (const struct shmipc_plugin_iov *)m->iov};
    struct shmipc_response resp = {
        .st = st, .req = m, .svc = svc, .g = g, .w = w, .windex = w->index};
    int rc = SHMIPC_EPROTO;
    p->requests++;
    p->bytes_in += m->len;
    call_begin(w, svc, g, ds->id, req.stream_id);
    if (ts != NULL || g->desc->thread_init == NULL)
        rc = g->desc->handle(g->state, ts, &req, &resp);
    call_end(w);
    record_latency(p, sock_now_ns() - w->call->start_ns);
    if (resp.moved != NULL) {
        p->deferred++;
        if (rc < 0)
            log_warn("service %s: plugin %s: handle() returned %s after defer(): the deferred "
                     "answer stays the plugin's to complete or fail",
                     svc->name, g->desc->name, shmipc_strerror(rc));
        return 1; /* the stream waits for the deferred answer */
    }
    answer(&resp, rc, p);
    if (rc < 0 || resp.err != 0)
        log_debug("service %s: request on session %lu stream %u failed: %s", svc->name,
                  (unsigned long)ds->id, req.stream_id, shmipc_strerror(rc < 0 ? rc : resp.err));
    return 0;
}

void plugin_stream_hook(struct worker *w, struct dsession *ds, shmipc_stream *st, int open)
{
    struct plugin_gen *g = gen_acquire(ds->svc);
    if (g == NULL)
        return;
    void (*hook)(void *, void *, uint64_t, uint32_t) =
        open ? g->desc->stream_open : g->desc->stream_close;
    if (hook != NULL) {
        call_begin(w, ds->svc, g, ds->id, shmipc_stream_id(st));
        hook(g->state, thread_state(w->index, g), ds->id, shmipc_stream_id(st));
        call_end(w);
    }
    gen_release(g);
}

void host_api_init(struct shmipc_host_api *h)
{
    memset(h, 0, sizeof(*h));
    h->size = sizeof(*h);
    h->abi_minor = SHMIPC_PLUGIN_ABI_MINOR;
    h->log = host_log;
    h->write = host_write;
    h->reserve = host_reserve;
    h->copy = host_copy;
    h->strerror = shmipc_strerror;
    h->conf_int = host_conf_int;
    h->conf_bool = host_conf_bool;
    h->conf_float = host_conf_float;
    h->conf_string = host_conf_string;
    h->advance = host_advance;
    h->forward = host_forward;
    h->defer = host_defer;
    h->complete = host_complete;
    h->fail = host_fail;
    h->conf_keys = host_conf_keys;
}
