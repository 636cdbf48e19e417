/*
 * The slow-handler log (see slowlog.h). The one rule: the master only
 * reads what workers publish (their call_info seqlock) and writes only
 * call.reported, so a worker never waits for it; the stack dump runs in
 * the worker's own signal handler and uses async-signal-safe calls only.
 */
#include "server/slowlog.h"

#include <errno.h>
#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "proto/sock.h"
#include "server/proc.h"

#define SLOWLOG_SIGNAL SIGURG
#define TRACE_DEPTH 48

static void dump_stack(int sig)
{
    (void)sig;
    int saved = errno;
    void *frames[TRACE_DEPTH];
    int n = backtrace(frames, TRACE_DEPTH);
    static const char head[] = "  stack of the slow handler's worker:\n";
    ssize_t w = write(STDERR_FILENO, head, sizeof(head) - 1);
    (void)w;
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
    errno = saved;
}

void slowlog_init(void)
{
    /* backtrace() loads libgcc on its first call (malloc, dlopen): done
     * here, so the signal handler's calls are safe. */
    void *frames[2];
    backtrace(frames, 2);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = dump_stack;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SLOWLOG_SIGNAL, &sa, NULL);
}

/* One call slot: -1 when it runs nothing, else ms until its call turns
 * slow (0 once it did). `where` names the worker, `th` is its thread in
 * this process (0: another process's, no stack dump). */
static int check_call(struct call_info *c, const char *where, pthread_t th, uint64_t now)
{
    uint64_t seq = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
    if (seq % 2 == 0 || seq == c->reported)
        return -1;
    struct service *svc = __atomic_load_n(&c->svc, __ATOMIC_RELAXED);
    struct plugin_gen *g = __atomic_load_n(&c->g, __ATOMIC_RELAXED);
    uint64_t start = __atomic_load_n(&c->start_ns, __ATOMIC_RELAXED);
    uint64_t sid = __atomic_load_n(&c->session_id, __ATOMIC_RELAXED);
    uint32_t stid = __atomic_load_n(&c->stream_id, __ATOMIC_RELAXED);
    if (__atomic_load_n(&c->seq, __ATOMIC_ACQUIRE) != seq)
        return 0; /* it moved on: look again soon */
    int slow_ms = __atomic_load_n(&svc->slow_ms, __ATOMIC_RELAXED);
    if (slow_ms <= 0)
        return -1;
    uint64_t ran = now > start ? now - start : 0, limit = (uint64_t)slow_ms * 1000000u;
    if (ran < limit)
        return (int)((limit - ran) / 1000000u) + 1;
    c->reported = seq;
    __atomic_add_fetch(&svc->st->slow_handlers, 1, __ATOMIC_RELAXED);
    log_warn("service %s: slow handler: plugin %s %s (generation %u) on %s, session %lu, stream "
             "%u, running for %lu ms (slow_handler_ms %d)",
             svc->name, g->desc->name, g->desc->version, g->number, where, (unsigned long)sid,
             stid, (unsigned long)(ran / 1000000u), slow_ms);
    if (__atomic_load_n(&svc->slow_trace, __ATOMIC_RELAXED) && th != 0)
        pthread_kill(th, SLOWLOG_SIGNAL);
    return -1;
}

static int check_worker(struct worker *w, uint64_t now)
{
    char where[96];
    snprintf(where, sizeof(where), "%s worker %u", w->pool->name, w->index);
    return check_call(w->call, where, w->th, now);
}

/* A process-mode service: its process publishes its calls in the shared
 * page (the svc and g pointers there are the process's: only the master's
 * copy of the service names them). */
static void check_process(struct service *svc, struct wproc *w, uint64_t now, int *due)
{
    if (w->calls == NULL)
        return;
    for (unsigned i = 0; i < PROC_CALLS; i++) {
        struct call_info *c = &w->calls->calls[i];
        uint64_t seq = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
        if (seq % 2 == 0 || seq == c->reported)
            continue;
        uint64_t start = __atomic_load_n(&c->start_ns, __ATOMIC_RELAXED);
        uint64_t sid = __atomic_load_n(&c->session_id, __ATOMIC_RELAXED);
        uint32_t stid = __atomic_load_n(&c->stream_id, __ATOMIC_RELAXED);
        if (__atomic_load_n(&c->seq, __ATOMIC_ACQUIRE) != seq)
            continue;
        int slow_ms = __atomic_load_n(&svc->slow_ms, __ATOMIC_RELAXED);
        uint64_t ran = now > start ? now - start : 0, limit = (uint64_t)slow_ms * 1000000u;
        if (slow_ms <= 0)
            continue;
        if (ran < limit) {
            int ms = (int)((limit - ran) / 1000000u) + 1;
            if (*due < 0 || ms < *due)
                *due = ms;
            continue;
        }
        c->reported = seq;
        __atomic_add_fetch(&svc->st->slow_handlers, 1, __ATOMIC_RELAXED);
        log_warn("service %s: slow handler: plugin %s %s (generation %u) on worker %u of process "
                 "%d, session %lu, stream %u, running for %lu ms (slow_handler_ms %d)",
                 svc->name, svc->gen->desc->name, svc->gen->desc->version, w->generation, i,
                 (int)w->pid, (unsigned long)sid, stid, (unsigned long)(ran / 1000000u), slow_ms);
    }
}

static void check_pool(struct worker_pool *p, uint64_t now, int *due)
{
    for (unsigned i = 0; p->w != NULL && i < p->n; i++) {
        int ms = check_worker(&p->w[i], now);
        if (ms >= 0 && (*due < 0 || ms < *due))
            *due = ms;
    }
}

int slowlog_check(struct daemon *d)
{
    uint64_t now = sock_now_ns();
    int due = -1;
    check_pool(&d->pool, now, &due);
    for (unsigned i = 0; i < d->nsvcs; i++)
        check_pool(&d->svcs[i]->own, now, &due);
    for (struct service *svc = d->removed; svc != NULL; svc = svc->next_removed)
        check_pool(&svc->own, now, &due);
    for (struct wproc *w = d->procs; w != NULL; w = w->next)
        check_process(w->svc, w, now, &due);
    /* A call that starts while the master sleeps is seen within half the
     * smallest threshold (10 to 250 ms): a warning comes late by that at
     * most. */
    int cap = -1;
    for (unsigned i = 0; i < d->nsvcs; i++) {
        int ms = __atomic_load_n(&d->svcs[i]->slow_ms, __ATOMIC_RELAXED);
        if (ms > 0 && (cap < 0 || ms / 2 < cap))
            cap = ms / 2;
    }
    if (cap >= 0) {
        cap = cap < 10 ? 10 : cap > 250 ? 250 : cap;
        if (due < 0 || cap < due)
            due = cap;
    }
    return due;
}
