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

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/log.h"
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

static int host_conf_string(const struct shmipc_plugin_conf *c, const char *path, const char **out)
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

/* ---- requests ---- */

/* The counters the admin socket reads are added once per pass (each is
 * an atomic shared with the other workers). */
void plugin_pass_end(struct dsession *ds, struct pass *p)
{
    struct service *svc = ds->svc;
    if (p->g != NULL)
        gen_release(p->g);
    p->g = NULL;
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
    p->requests = p->bytes_in = p->bytes_out = p->errors = 0;
}

void plugin_request(unsigned worker, struct dsession *ds, shmipc_stream *st, shmipc_msg *m,
                    struct pass *p)
{
    struct service *svc = ds->svc;
    if (p->g == NULL && (p->g = gen_acquire(svc)) == NULL) {
        shmipc_msg_release(m);
        p->errors++;
        session_die(ds->conn.s, SHMIPC_ECLOSED, "service removed");
        return;
    }
    struct plugin_gen *g = p->g;
    void *ts = thread_state(worker, g);
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

void plugin_stream_hook(unsigned worker, struct dsession *ds, shmipc_stream *st, int open)
{
    struct plugin_gen *g = gen_acquire(ds->svc);
    if (g == NULL)
        return;
    void (*hook)(void *, void *, uint64_t, uint32_t) =
        open ? g->desc->stream_open : g->desc->stream_close;
    if (hook != NULL)
        hook(g->state, thread_state(worker, g), ds->id, shmipc_stream_id(st));
    gen_release(g);
}
