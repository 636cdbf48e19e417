/*
 * shmipcd's worker threads. Each runs the server core's serving loop
 * (session/loop.h) over the sessions the master hands over, with the
 * plugin call (handler.c) as its handler; between epoll waits it adopts
 * new sessions, runs the master's jobs (thread_init/fini of generations,
 * closing a removed service's sessions), closes idle sessions, and on stop
 * drains. The one rule: a worker never blocks on a client: responses are
 * written without waiting, and a flush that meets a full queue is retried
 * by the loop.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "server/daemon.h"
#include "server/handler.h"
#include "server/worker.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

/* ---- the serving loop's handler ---- */

/* The gauges of what this worker serves of ds's service (metrics): only
 * this worker changes them, at adoption, stream open and close, and the
 * session's close. */
static void live_add(struct worker *w, struct dsession *ds, int64_t sessions, int64_t streams)
{
    struct worker_live *l = svc_worker_live(ds->svc, w->index);
    if (l == NULL)
        return;
    if (sessions != 0)
        __atomic_add_fetch(&l->sessions, (uint64_t)sessions, __ATOMIC_RELAXED);
    if (streams != 0)
        __atomic_add_fetch(&l->streams, (uint64_t)streams, __ATOMIC_RELAXED);
}

static void h_open(void *ctx, struct serve_conn *c, shmipc_stream *st)
{
    struct dsession *ds = (struct dsession *)c;
    ds->open_streams++;
    live_add(ctx, ds, 0, 1);
    plugin_stream_hook(ctx, ds, st, 1);
}

static int h_message(void *ctx, struct serve_conn *c, shmipc_stream *st, shmipc_msg *m)
{
    struct worker *w = ctx;
    return plugin_request(w, (struct dsession *)c, st, m, &w->pass);
}

static void h_close(void *ctx, struct serve_conn *c, shmipc_stream *st)
{
    struct dsession *ds = (struct dsession *)c;
    plugin_stream_hook(ctx, ds, st, 0);
    if (ds->open_streams > 0) {
        ds->open_streams--;
        live_add(ctx, ds, 0, -1);
    }
}

static void h_pass_end(void *ctx, struct serve_conn *c)
{
    struct worker *w = ctx;
    plugin_pass_end((struct dsession *)c, &w->pass);
}

static void h_closed(void *ctx, struct serve_conn *c)
{
    struct worker *w = ctx;
    struct dsession *ds = (struct dsession *)c;
    struct session *s = c->s;
    struct service *svc = ds->svc;
    pthread_mutex_lock(&w->mu);
    w->nsessions--;
    pthread_mutex_unlock(&w->mu);
    live_add(w, ds, -1, -(int64_t)ds->open_streams); /* 0: each stream's close came first */
    ds->open_streams = 0;
    uid_release(&w->d->uids, ds->uid);
    if (w->d->session_closed != NULL)
        w->d->session_closed(w->d, ds);
    __atomic_add_fetch(&svc->st->sessions_closed, 1, __ATOMIC_RELAXED);
    if (s->stats.protocol_errors != 0)
        __atomic_add_fetch(&svc->st->protocol_errors, s->stats.protocol_errors, __ATOMIC_RELAXED);
    struct shmipc_stats ss = {0};
    session_add_stats(s, &ss);
    __atomic_add_fetch(&svc->st->wakeups_sent, ss.wakeups_sent, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->st->wakeups_received, ss.wakeups_received, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->st->fallbacks_sent, ss.fallbacks_sent, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->st->fallbacks_received, ss.fallbacks_received, __ATOMIC_RELAXED);
    __atomic_add_fetch(&svc->st->streams_opened, ss.streams_opened, __ATOMIC_RELAXED);
    if (s->err == SHMIPC_ECLOSED)
        log_debug("service %s: session %lu closed: %s", svc->name, (unsigned long)ds->id, s->why);
    else
        log_info("service %s: session %lu closed: %s", svc->name, (unsigned long)ds->id, s->why);
    free(ds);
}

static const struct serve_handler handler = {h_open, h_message, h_close, h_pass_end, h_closed};

static int in_loop(struct worker *w, struct serve_conn *c)
{
    for (struct serve_conn *x = w->loop.conns; x != NULL; x = x->next)
        if (x == c)
            return 1;
    return 0;
}

static void close_service_sessions(struct worker *w, struct service *svc)
{
    for (struct serve_conn *c = w->loop.conns, *n; c != NULL; c = n) {
        n = c->next;
        if (((struct dsession *)c)->svc != svc)
            continue;
        serve_loop_ready(&w->loop, c); /* answer what is already queued */
        if (in_loop(w, c))
            serve_loop_close(&w->loop, c);
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
        handler_log_service(c->svc != NULL ? c->svc->name : NULL);
        if (c->kind == WCMD_THREAD_INIT && c->g->desc->thread_init != NULL &&
            c->g->thread_states[w->index] == NULL)
            c->rc = gen_thread_init(c->g, w->index, c->err, sizeof(c->err));
        else if (c->kind == WCMD_THREAD_FINI)
            gen_thread_fini(c->g, w->index);
        else if (c->kind == WCMD_CLOSE_SERVICE)
            close_service_sessions(w, c->svc);
        handler_log_service(NULL);
        pthread_mutex_lock(&w->mu);
        c->done = 1;
        pthread_cond_broadcast(&w->cmd_done);
        pthread_mutex_unlock(&w->mu);
    }
}

/* A deferred answer was completed (any thread; rt->mu held): its
 * session is dispatched again on this worker. */
static void resume_session(struct worker *w, struct session *s)
{
    struct resume *r = malloc(sizeof(*r));
    if (r == NULL) {
        log_error("worker %u: out of memory resuming a stream: its next request waits for the "
                  "session's next message", w->index);
        return;
    }
    session_get(s);
    r->s = s;
    pthread_mutex_lock(&w->mu);
    r->next = w->resumes;
    w->resumes = r;
    pthread_mutex_unlock(&w->mu);
    uint64_t one = 1;
    if (write(w->evfd, &one, sizeof(one)) < 0)
        log_warn("worker %u: waking it failed: %s", w->index, strerror(errno));
}

/* Dispatches the sessions whose streams deferred answers resumed. */
static void run_resumes(struct worker *w)
{
    pthread_mutex_lock(&w->mu);
    struct resume *r = w->resumes;
    w->resumes = NULL;
    pthread_mutex_unlock(&w->mu);
    while (r != NULL) {
        struct resume *n = r->next;
        for (struct serve_conn *c = w->loop.conns; c != NULL; c = c->next) {
            if (c->s == r->s) {
                serve_loop_dispatch(&w->loop, c);
                break;
            }
        }
        session_put(r->s); /* a session closed meanwhile is not in the loop */
        free(r);
        r = n;
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
        in = ds->next_in;
        live_add(w, ds, 1, 0); /* before: a session that cannot be watched closes at once */
        serve_loop_add(&w->loop, &ds->conn); /* served at once: a file-path
                                                client may have sent already */
    }
    run_resumes(w);
    run_jobs(w);
}

/* Stop: answer what is already queued, flush what is blocked, until done
 * or the drain deadline, then close every session. */
static void drain(struct worker *w)
{
    /* Deferred answers still open keep it going (their streams' next
     * requests wait for them) until they complete or the deadline. */
    for (;;) {
        adopt(w);
        for (struct serve_conn *c = w->loop.conns, *n; c != NULL; c = n) {
            n = c->next;
            serve_loop_ready(&w->loop, c);
        }
        int busy = serve_loop_retry_blocked(&w->loop) ||
                   __atomic_load_n(&w->deferred_open, __ATOMIC_ACQUIRE) > 0;
        if (!busy || sock_now_ns() >= w->drain_deadline_ns)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    unsigned open = (unsigned)__atomic_load_n(&w->deferred_open, __ATOMIC_ACQUIRE);
    if (open > 0)
        log_warn("%s worker %u: %u deferred answers not completed by the drain deadline: "
                 "abandoned", w->pool->name, w->index, open);
    serve_loop_drain(&w->loop, w->drain_deadline_ns);
}

/* On the way out: every generation this worker started finishes here,
 * current ones and those still draining (the master waits in join). */
static void finish_thread_states(struct worker *w)
{
    struct daemon *d = w->d;
    for (unsigned i = 0; i < d->nsvcs; i++) {
        struct plugin_gen *g = d->svcs[i]->gen;
        if (g != NULL && pool_of(d, d->svcs[i]) == w->pool && g->thread_states[w->index] != NULL)
            gen_thread_fini(g, w->index);
    }
    for (struct retiring *r = d->retiring; r != NULL; r = r->next)
        if (pool_of(d, r->svc) == w->pool && r->g->thread_states[w->index] != NULL)
            gen_thread_fini(r->g, w->index);
}

/* limits.idle_timeout_ms: sessions the peer has not used for that long
 * are closed (a client that wants to stay sends keepalive Pollings). */
static void close_idle(struct worker *w, int idle_ms)
{
    uint64_t now = sock_now_ns(), limit = (uint64_t)idle_ms * 1000000u;
    for (struct serve_conn *c = w->loop.conns, *n; c != NULL; c = n) {
        n = c->next;
        uint64_t last = __atomic_load_n(&c->s->last_rx_ns, __ATOMIC_RELAXED);
        if (now > last && now - last > limit) {
            __atomic_add_fetch(&((struct dsession *)c)->svc->st->idle_closed, 1, __ATOMIC_RELAXED);
            session_die(c->s, SHMIPC_ETIMEDOUT, "idle timeout");
            serve_loop_close(&w->loop, c);
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[64];
    int blocked = 0, spinning = 0;
    uint64_t next_idle_check = 0;
    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        int idle_ms = __atomic_load_n(&w->d->idle_timeout_ms, __ATOMIC_RELAXED);
        int timeout = spinning  ? 0 /* the spin goes on after a look at the rest */
                      : blocked ? 1
                      : idle_ms > 0 && idle_ms < 4000 ? idle_ms / 4 + 1
                                                      : 1000;
        serve_loop_idle(&w->loop);
        int n = epoll_wait(w->epfd, evs, 64, timeout);
        if (n > 0)
            serve_loop_awake(&w->loop);
        for (int i = 0; i < n; i++) {
            struct serve_tag *t = evs[i].data.ptr;
            if (t->kind == EPK_WAKE)
                adopt(w);
            else
                serve_loop_ready(&w->loop, (struct serve_conn *)t);
        }
        int spin_us = __atomic_load_n(&w->d->spin_us, __ATOMIC_RELAXED);
        if (n > 0 && spin_us > 0)
            serve_loop_spin(&w->loop, spin_us, &w->stop);
        else
            spinning = (n > 0 || spinning) && serve_loop_adaptive_spin(&w->loop, &w->stop);
        blocked = serve_loop_retry_blocked(&w->loop);
        uint64_t hot = __atomic_load_n(&w->hot_epoch, __ATOMIC_ACQUIRE);
        if (hot != 0) {
            adopt(w);
            /* A session that acked closes when its last answer is out,
             * which may come from another thread: look again soon. */
            blocked |= serve_loop_hot_restart(&w->loop, hot) > 0;
        }
        if (idle_ms > 0 && sock_now_ns() >= next_idle_check) {
            close_idle(w, idle_ms);
            next_idle_check = sock_now_ns() + (uint64_t)idle_ms * 250000u;
        }
    }
    drain(w);
    finish_thread_states(w);
    return NULL;
}

static int worker_start(struct worker *w, struct daemon *d, struct worker_pool *p, unsigned index)
{
    memset(w, 0, sizeof(*w));
    w->wake_tag.kind = EPK_WAKE;
    w->index = index;
    w->pool = p;
    w->d = d;
    w->call = d->calls != NULL && index < d->ncalls ? &d->calls[index] : &w->call_own;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cmd_done, NULL);
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->epfd < 0 || w->evfd < 0)
        return -errno;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->wake_tag};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->evfd, &ev) < 0)
        return -errno;
    serve_loop_init(&w->loop, w->epfd, &handler, w);
    w->loop_ready = 1;
    w->loop.adaptive = d->conf->adaptive_spin && session_spin_allowed();
    w->resume = resume_session;
    if ((w->rt = calloc(1, sizeof(*w->rt))) == NULL)
        return -ENOMEM;
    pthread_mutex_init(&w->rt->mu, NULL);
    w->rt->refs = 1;
    w->rt->w = w;
    return -pthread_create(&w->th, NULL, worker_main, w);
}

void worker_hand_over(struct worker *w, struct dsession *ds)
{
    ds->w = w;
    pthread_mutex_lock(&w->mu);
    ds->next_in = w->inbox;
    w->inbox = ds;
    w->nsessions++;
    pthread_mutex_unlock(&w->mu);
    uint64_t one = 1;
    if (write(w->evfd, &one, sizeof(one)) < 0)
        log_warn("worker %u: waking it failed: %s", w->index, strerror(errno));
}

static void worker_stop(struct worker *w, uint64_t drain_deadline_ns)
{
    w->drain_deadline_ns = drain_deadline_ns;
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(w->evfd, &one, sizeof(one)) < 0)
        log_warn("worker %u: waking it failed: %s", w->index, strerror(errno));
}

static void worker_join(struct worker *w)
{
    if (!w->joined)
        pthread_join(w->th, NULL);
    w->joined = 1;
    /* Deferred answers completed from now on find no worker. */
    if (w->rt != NULL) {
        pthread_mutex_lock(&w->rt->mu);
        w->rt->w = NULL;
        int last = --w->rt->refs == 0;
        pthread_mutex_unlock(&w->rt->mu);
        if (last) {
            pthread_mutex_destroy(&w->rt->mu);
            free(w->rt);
        }
        w->rt = NULL;
    }
    while (w->resumes != NULL) {
        struct resume *r = w->resumes;
        w->resumes = r->next;
        session_put(r->s);
        free(r);
    }
    if (w->loop_ready)
        serve_loop_destroy(&w->loop); /* empty: the thread drained it */
    close(w->epfd);
    close(w->evfd);
    pthread_cond_destroy(&w->cmd_done);
    pthread_mutex_destroy(&w->mu);
}

/* ---- pools ---- */

struct worker_pool *pool_of(struct daemon *d, struct service *svc)
{
    return svc != NULL && svc->own.n > 0 ? &svc->own : &d->pool;
}

int pool_start(struct worker_pool *p, struct daemon *d, unsigned n, const char *name)
{
    p->name = name;
    p->n = 0;
    p->w = calloc(n ? n : 1, sizeof(*p->w));
    if (p->w == NULL)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        int rc = worker_start(&p->w[i], d, p, i);
        if (rc < 0) {
            log_error("%s workers: starting worker %u: %s", name, i, shmipc_strerror(rc));
            return rc;
        }
        p->n = i + 1;
    }
    return 0;
}

void pool_ask_stop(struct worker_pool *p, uint64_t drain_deadline_ns)
{
    for (unsigned i = 0; p->w != NULL && i < p->n; i++)
        worker_stop(&p->w[i], drain_deadline_ns);
}

void pool_join(struct worker_pool *p)
{
    if (p->w == NULL)
        return;
    for (unsigned i = 0; i < p->n; i++)
        worker_join(&p->w[i]);
    free(p->w);
    p->w = NULL;
    /* n stays: other pools' workers still ask pool_of() which pool a
     * service has while they finish. */
}

/* Says what a worker that did not exit is running (the seqlock of
 * call_info: two equal odd reads around the fields). */
static void report_stuck(struct worker *w)
{
    struct call_info *c = w->call;
    for (int tries = 0; tries < 100; tries++) {
        uint64_t seq = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
        struct service *svc = __atomic_load_n(&c->svc, __ATOMIC_RELAXED);
        struct plugin_gen *g = __atomic_load_n(&c->g, __ATOMIC_RELAXED);
        uint64_t start = __atomic_load_n(&c->start_ns, __ATOMIC_RELAXED);
        uint64_t sid = __atomic_load_n(&c->session_id, __ATOMIC_RELAXED);
        uint32_t stid = __atomic_load_n(&c->stream_id, __ATOMIC_RELAXED);
        if (__atomic_load_n(&c->seq, __ATOMIC_ACQUIRE) != seq)
            continue;
        if (seq % 2 == 0)
            break;
        uint64_t now = sock_now_ns();
        log_warn("service %s: stop: a handler of plugin %s %s (generation %u) still runs on %s "
                 "worker %u after %lu ms (session %lu, stream %u): abandoned",
                 svc->name, g->desc->name, g->desc->version, g->number, w->pool->name, w->index,
                 (unsigned long)((now > start ? now - start : 0) / 1000000u), (unsigned long)sid,
                 stid);
        return;
    }
    log_warn("%s worker %u did not exit by the drain deadline: abandoned", w->pool->name,
             w->index);
}

int pool_join_until(struct worker_pool *p, uint64_t deadline_ns)
{
    int stuck = 0;
    for (unsigned i = 0; p->w != NULL && i < p->n; i++) {
        struct worker *w = &p->w[i];
        /* pthread_timedjoin_np wants CLOCK_REALTIME. */
        uint64_t now = sock_now_ns(), left = deadline_ns > now ? deadline_ns - now : 0;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t abs = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + left;
        ts.tv_sec = (time_t)(abs / 1000000000u);
        ts.tv_nsec = (long)(abs % 1000000000u);
        if (pthread_timedjoin_np(w->th, NULL, &ts) != 0) {
            report_stuck(w);
            w->stuck = 1;
            stuck++;
            continue;
        }
        w->joined = 1;
    }
    if (stuck)
        return stuck;
    pool_join(p); /* every thread exited: the rest of the cleanup */
    return 0;
}

void pool_stop(struct worker_pool *p, uint64_t drain_deadline_ns)
{
    pool_ask_stop(p, drain_deadline_ns);
    pool_join(p);
}

void pool_hot_restart(struct worker_pool *p, uint64_t epoch)
{
    for (unsigned i = 0; p->w != NULL && i < p->n; i++) {
        __atomic_store_n(&p->w[i].hot_epoch, epoch, __ATOMIC_RELEASE);
        uint64_t one = 1;
        if (write(p->w[i].evfd, &one, sizeof(one)) < 0)
            log_warn("worker %u: waking it failed: %s", p->w[i].index, strerror(errno));
    }
}

unsigned pool_sessions(struct worker_pool *p)
{
    unsigned n = 0;
    for (unsigned i = 0; p->w != NULL && i < p->n; i++) {
        pthread_mutex_lock(&p->w[i].mu);
        n += p->w[i].nsessions;
        pthread_mutex_unlock(&p->w[i].mu);
    }
    return n;
}

struct worker *pool_least_loaded(struct worker_pool *p)
{
    struct worker *best = &p->w[0];
    unsigned best_n = ~0u;
    for (unsigned i = 0; i < p->n; i++) {
        pthread_mutex_lock(&p->w[i].mu);
        unsigned n = p->w[i].nsessions;
        pthread_mutex_unlock(&p->w[i].mu);
        if (n < best_n) {
            best_n = n;
            best = &p->w[i];
        }
    }
    return best;
}

int workers_exec(struct daemon *d, enum wcmd_kind kind, struct plugin_gen *g, struct service *svc,
                 char *err, size_t errlen)
{
    struct worker_pool *p = pool_of(d, svc);
    if (p->w == NULL || p->n == 0 || (svc != NULL && svc->isolation == ISOLATION_PROCESS))
        return 0; /* a process-mode service's workers are in its process */
    struct wcmd *jobs = calloc(p->n, sizeof(*jobs));
    if (jobs == NULL) {
        if (err != NULL)
            snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];
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
    for (unsigned i = 0; i < p->n; i++) {
        struct worker *w = &p->w[i];
        pthread_mutex_lock(&w->mu);
        while (!jobs[i].done)
            pthread_cond_wait(&w->cmd_done, &w->mu);
        pthread_mutex_unlock(&w->mu);
        if (jobs[i].rc < 0 && rc == 0) {
            rc = jobs[i].rc;
            if (err != NULL)
                snprintf(err, errlen, "%s worker %u: %s", p->name, i, jobs[i].err);
        }
    }
    free(jobs);
    return rc;
}
