/*
 * shmipcd's worker threads. Each owns an epoll set of sessions handed over
 * by the master; a wake-up harvests a session's whole receive queue, then
 * every ready stream's requests go to the service's plugin in order. The
 * one rule: a worker never blocks on a client: responses are written
 * without waiting, and a flush that meets a full queue is retried from
 * this loop.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/log.h"
#include "server/daemon.h"
#include "shm/atomics.h"
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

static void host_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg((enum log_level)level, fmt, ap);
    va_end(ap);
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

static int host_conf_string(const struct shmipc_plugin_conf *c, const char *path,
                            const char **out)
{
    return conf_plugin_string((const config_setting_t *)c, path, out);
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

static void *thread_state(struct worker *w, struct plugin_gen *g)
{
    if (g->desc->thread_init == NULL || g->thread_states[w->index] != NULL)
        return g->thread_states[w->index];
    char err[256];
    if (gen_thread_init(g, w->index, err, sizeof(err)) < 0) {
        log_error("worker %u: %s", w->index, err);
        return NULL;
    }
    return g->thread_states[w->index];
}

/* ---- requests ---- */

/* One dispatch pass: the plugin generation is taken once for all the
 * requests it answers, and the counters the admin socket reads are added
 * once at the end (each is an atomic shared with the other workers). */
struct pass {
    struct plugin_gen *g;
    uint64_t requests, bytes_in, bytes_out, errors;
};

static void pass_end(struct dsession *ds, struct pass *p)
{
    struct service *svc = ds->svc;
    if (p->g != NULL)
        gen_release(p->g);
    if (p->requests == 0)
        return;
    __atomic_add_fetch(&ds->requests, p->requests, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->st.requests, p->requests, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->st.bytes_in, p->bytes_in, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->st.bytes_out, p->bytes_out, __ATOMIC_RELAXED);
    if (p->errors > 0) {
        __atomic_add_fetch(&ds->handler_errors, p->errors, __ATOMIC_RELAXED);
        __atomic_add_fetch(&svc->st.handler_errors, p->errors, __ATOMIC_RELAXED);
    }
}

static void handle(struct worker *w, struct dsession *ds, shmipc_stream *st, shmipc_msg *m,
                   struct pass *p)
{
    struct service *svc = ds->svc;
    if (p->g == NULL && (p->g = gen_acquire(svc)) == NULL) {
        shmipc_msg_release(m);
        p->errors++;
        session_die(ds->s, SHMIPC_ECLOSED, "service removed");
        return;
    }
    struct plugin_gen *g = p->g;
    void *ts = thread_state(w, g);
    struct shmipc_request req = {ds->id, shmipc_stream_id(st), m->len, m->niov,
                                 (const struct shmipc_plugin_iov *)m->iov};
    struct shmipc_response resp = {st, 0, 0, m, 0};
    int rc = SHMIPC_EPROTO;
    if (ts != NULL || g->desc->thread_init == NULL)
        rc = g->desc->handle(g->state, ts, &req, &resp);
    size_t in = m->len;
    if (rc == 0 && resp.err == 0 && resp.fwd) {
        rc = shmipc_stream_forward(st, m);
    } else {
        shmipc_msg_release(m);
        if (rc == 0 && resp.err == 0)
            rc = shmipc_stream_flush(st);
        else
            shmipc_stream_discard(st);
    }
    p->requests++;
    p->bytes_in += in;
    if ((rc == 0 || rc == SHMIPC_EQFULL) && resp.err == 0) {
        p->bytes_out += resp.bytes;
        return;
    }
    p->errors++;
    log_debug("service %s: request on session %lu stream %u failed: %s", svc->name,
              (unsigned long)ds->id, shmipc_stream_id(st),
              shmipc_strerror(resp.err ? resp.err : rc));
}

static void stream_hook(struct worker *w, struct dsession *ds, shmipc_stream *st, int open)
{
    struct plugin_gen *g = gen_acquire(ds->svc);
    if (g == NULL)
        return;
    void (*hook)(void *, void *, uint64_t, uint32_t) =
        open ? g->desc->stream_open : g->desc->stream_close;
    if (hook != NULL)
        hook(g->state, thread_state(w, g), ds->id, shmipc_stream_id(st));
    gen_release(g);
}

static void dispatch(struct worker *w, struct dsession *ds)
{
    shmipc_stream *st;
    struct pass p = {0};
    while ((st = session_next_ready(ds->s)) != NULL) {
        if (!st->seen_open) {
            st->seen_open = 1;
            stream_hook(w, ds, st, 1);
        }
        shmipc_msg m;
        int closed = 0;
        while (stream_take(st, &m, &closed) == 0)
            handle(w, ds, st, &m, &p);
        if (closed && !st->seen_close) {
            st->seen_close = 1;
            stream_hook(w, ds, st, 0);
            stream_forget(st);
        }
        stream_put(st);
    }
    pass_end(ds, &p);
}

/* ---- sessions ---- */

static void close_session(struct worker *w, struct dsession *ds)
{
    pthread_mutex_lock(&w->mu);
    struct dsession **pp = &w->sessions;
    while (*pp != ds)
        pp = &(*pp)->next;
    *pp = ds->next;
    w->nsessions--;
    pthread_mutex_unlock(&w->mu);
    struct session *s = ds->s;
    session_unwatch(s);
    if (session_alive(s))
        session_die(s, SHMIPC_ECLOSED, "server closed the session");
    session_retry_blocked(s);
    dispatch(w, ds);
    session_release_streams(s);
    struct service *svc = ds->svc;
    uid_release(w->d, ds->uid);
    __atomic_add_fetch(&svc->st.sessions_closed, 1, __ATOMIC_RELAXED);
    if (s->stats.protocol_errors != 0)
        __atomic_add_fetch(&svc->st.protocol_errors, s->stats.protocol_errors, __ATOMIC_RELAXED);
    if (s->err == SHMIPC_ECLOSED)
        log_debug("service %s: session %lu closed: %s", svc->name, (unsigned long)ds->id, s->why);
    else
        log_info("service %s: session %lu closed: %s", svc->name, (unsigned long)ds->id, s->why);
    session_put(s);
    free(ds);
}

struct serve_ctx {
    struct worker *w;
    struct dsession *ds;
};

static void dispatch_cb(void *arg)
{
    struct serve_ctx *c = arg;
    dispatch(c->w, c->ds);
}

static void serve(struct worker *w, struct dsession *ds)
{
    struct serve_ctx c = {w, ds};
    if (!session_serve(ds->s, dispatch_cb, &c))
        close_session(w, ds);
}

static void close_service_sessions(struct worker *w, struct service *svc)
{
    for (struct dsession *ds = w->sessions, *n; ds != NULL; ds = n) {
        n = ds->next;
        if (ds->svc != svc)
            continue;
        serve(w, ds); /* answer what is already queued */
        pthread_mutex_lock(&w->mu);
        int still = 0;
        for (struct dsession *x = w->sessions; x != NULL; x = x->next)
            still |= x == ds;
        pthread_mutex_unlock(&w->mu);
        if (still)
            close_session(w, ds);
    }
}

/* Runs the master's jobs on this thread. */
static void run_jobs(struct worker *w)
{
    pthread_mutex_lock(&w->mu);
    struct wcmd *jobs = w->cmds;
    w->cmds = NULL;
    pthread_mutex_unlock(&w->mu);
    while (jobs != NULL) {
        struct wcmd *c = jobs;
        jobs = c->next;
        c->rc = 0;
        if (c->kind == WCMD_THREAD_INIT && c->g->desc->thread_init != NULL &&
            c->g->thread_states[w->index] == NULL)
            c->rc = gen_thread_init(c->g, w->index, c->err, sizeof(c->err));
        else if (c->kind == WCMD_THREAD_FINI)
            gen_thread_fini(c->g, w->index);
        else if (c->kind == WCMD_CLOSE_SERVICE)
            close_service_sessions(w, c->svc);
        pthread_mutex_lock(&w->mu);
        c->done = 1;
        pthread_cond_broadcast(&w->cmd_done);
        pthread_mutex_unlock(&w->mu);
    }
}

/* Moves sessions from the inbox into the epoll set. */
static void adopt(struct worker *w)
{
    uint64_t v;
    if (read(w->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        log_warn("worker %u: reading its eventfd: %s", w->index, strerror(errno));
    pthread_mutex_lock(&w->mu);
    struct dsession *in = w->inbox;
    w->inbox = NULL;
    pthread_mutex_unlock(&w->mu);
    while (in != NULL) {
        struct dsession *ds = in;
        in = ds->next;
        pthread_mutex_lock(&w->mu);
        ds->next = w->sessions;
        w->sessions = ds;
        pthread_mutex_unlock(&w->mu);
        int rc = session_watch(ds->s, w->epfd, (epoll_data_t){.ptr = ds});
        if (rc < 0)
            session_die(ds->s, rc, "epoll_ctl failed");
        serve(w, ds); /* a file-path client may have sent already */
    }
    run_jobs(w);
}

/* Low-latency mode (spin_us): see the library server's spin(). */
static void spin(struct worker *w, int spin_us)
{
    uint64_t window = (uint64_t)spin_us * 1000u, end = sock_now_ns() + window;
    while (!__atomic_load_n(&w->stop, __ATOMIC_RELAXED) && sock_now_ns() < end) {
        int any = 0;
        for (struct dsession *ds = w->sessions; ds != NULL; ds = ds->next) {
            if (session_spin_harvest(ds->s) > 0) {
                dispatch(w, ds);
                any = 1;
            }
        }
        if (any)
            end = sock_now_ns() + window;
        else
            for (int i = 0; i < 16; i++)
                cpu_relax();
    }
    for (struct dsession *ds = w->sessions; ds != NULL; ds = ds->next) {
        session_spin_end(ds->s);
        dispatch(w, ds);
    }
}

static int retry_blocked(struct worker *w)
{
    int any = 0;
    for (struct dsession *ds = w->sessions; ds != NULL; ds = ds->next)
        if (ds->s->blocked != NULL)
            any |= session_retry_blocked(ds->s) > 0;
    return any;
}

/* Stop: answer what is already queued, flush what is blocked, until done
 * or the drain deadline, then close every session. */
static void drain(struct worker *w)
{
    adopt(w);
    for (;;) {
        for (struct dsession *ds = w->sessions, *n; ds != NULL; ds = n) {
            n = ds->next;
            serve(w, ds);
        }
        if (!retry_blocked(w) || sock_now_ns() >= w->drain_deadline_ns)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    while (w->sessions != NULL)
        close_session(w, w->sessions);
}

/* On the way out: every generation this worker started finishes here,
 * current ones and those still draining (the master waits in join). */
static void finish_thread_states(struct worker *w)
{
    struct daemon *d = w->d;
    for (unsigned i = 0; i < d->nsvcs; i++) {
        struct plugin_gen *g = d->svcs[i]->gen;
        if (g != NULL && g->thread_states[w->index] != NULL)
            gen_thread_fini(g, w->index);
    }
    for (struct retiring *r = d->retiring; r != NULL; r = r->next)
        if (r->g->thread_states[w->index] != NULL)
            gen_thread_fini(r->g, w->index);
}

/* limits.idle_timeout_ms: sessions the peer has not used for that long
 * are closed (a client that wants to stay sends keepalive Pollings). */
static void close_idle(struct worker *w, int idle_ms)
{
    uint64_t now = sock_now_ns(), limit = (uint64_t)idle_ms * 1000000u;
    for (struct dsession *ds = w->sessions, *n; ds != NULL; ds = n) {
        n = ds->next;
        uint64_t last = __atomic_load_n(&ds->s->last_rx_ns, __ATOMIC_RELAXED);
        if (now > last && now - last > limit) {
            __atomic_add_fetch(&ds->svc->st.idle_closed, 1, __ATOMIC_RELAXED);
            session_die(ds->s, SHMIPC_ETIMEDOUT, "idle timeout");
            close_session(w, ds);
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[64];
    int blocked = 0;
    uint64_t next_idle_check = 0;
    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        int idle_ms = __atomic_load_n(&w->d->idle_timeout_ms, __ATOMIC_RELAXED);
        int timeout = blocked ? 1 : idle_ms > 0 && idle_ms < 4000 ? idle_ms / 4 + 1 : 1000;
        int n = epoll_wait(w->epfd, evs, 64, timeout);
        for (int i = 0; i < n; i++) {
            struct ep_tag *t = evs[i].data.ptr;
            if (t->kind == EPK_WAKE)
                adopt(w);
            else
                serve(w, (struct dsession *)t);
        }
        int spin_us = __atomic_load_n(&w->d->spin_us, __ATOMIC_RELAXED);
        if (n > 0 && spin_us > 0)
            spin(w, spin_us);
        blocked = retry_blocked(w);
        if (idle_ms > 0 && sock_now_ns() >= next_idle_check) {
            close_idle(w, idle_ms);
            next_idle_check = sock_now_ns() + (uint64_t)idle_ms * 250000u;
        }
    }
    drain(w);
    finish_thread_states(w);
    return NULL;
}

int worker_start(struct worker *w, struct daemon *d, unsigned index)
{
    memset(w, 0, sizeof(*w));
    w->wake_tag.kind = EPK_WAKE;
    w->index = index;
    w->d = d;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cmd_done, NULL);
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->epfd < 0 || w->evfd < 0)
        return -errno;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->wake_tag};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->evfd, &ev) < 0)
        return -errno;
    return -pthread_create(&w->th, NULL, worker_main, w);
}

void worker_hand_over(struct worker *w, struct dsession *ds)
{
    ds->w = w;
    pthread_mutex_lock(&w->mu);
    ds->next = w->inbox;
    w->inbox = ds;
    w->nsessions++;
    pthread_mutex_unlock(&w->mu);
    uint64_t one = 1;
    if (write(w->evfd, &one, sizeof(one)) < 0)
        log_warn("worker %u: waking it failed: %s", w->index, strerror(errno));
}

void worker_stop(struct worker *w, uint64_t drain_deadline_ns)
{
    w->drain_deadline_ns = drain_deadline_ns;
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(w->evfd, &one, sizeof(one)) < 0)
        log_warn("worker %u: waking it failed: %s", w->index, strerror(errno));
}

void worker_join(struct worker *w)
{
    pthread_join(w->th, NULL);
    close(w->epfd);
    close(w->evfd);
    pthread_cond_destroy(&w->cmd_done);
    pthread_mutex_destroy(&w->mu);
}

int workers_exec(struct daemon *d, enum wcmd_kind kind, struct plugin_gen *g, struct service *svc,
                 char *err, size_t errlen)
{
    if (d->workers == NULL || d->nworkers == 0)
        return 0;
    struct wcmd *jobs = calloc(d->nworkers, sizeof(*jobs));
    if (jobs == NULL) {
        if (err != NULL)
            snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (unsigned i = 0; i < d->nworkers; i++) {
        struct worker *w = &d->workers[i];
        jobs[i] = (struct wcmd){.kind = kind, .g = g, .svc = svc};
        pthread_mutex_lock(&w->mu);
        jobs[i].next = w->cmds;
        w->cmds = &jobs[i];
        pthread_mutex_unlock(&w->mu);
        uint64_t one = 1;
        if (write(w->evfd, &one, sizeof(one)) < 0)
            log_warn("worker %u: waking it failed: %s", w->index, strerror(errno));
    }
    int rc = 0;
    for (unsigned i = 0; i < d->nworkers; i++) {
        struct worker *w = &d->workers[i];
        pthread_mutex_lock(&w->mu);
        while (!jobs[i].done)
            pthread_cond_wait(&w->cmd_done, &w->mu);
        pthread_mutex_unlock(&w->mu);
        if (jobs[i].rc < 0 && rc == 0) {
            rc = jobs[i].rc;
            if (err != NULL)
                snprintf(err, errlen, "worker %u: %s", i, jobs[i].err);
        }
    }
    free(jobs);
    return rc;
}
