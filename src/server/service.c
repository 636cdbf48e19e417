/*
 * Services and their plugin generations (master thread only): a service
 * is created from its configuration with its first generation, listens,
 * gets new generations on reloads (loaded beside the old one: private
 * copy, dlopen, ABI check, init() here, thread_init() on every worker,
 * then the old generation's state carried over by the plugin's hooks),
 * and is freed once removed and drained. The one rule: a generation is
 * unloaded only after every worker ran its thread_fini and no request
 * holds it (reload.c retires it).
 */
#include "server/service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/log.h"
#include "server/handler.h"
#include "server/proc.h"
#include "server/strbuf.h"
#include "server/worker.h"
#include "shmipc/errors.h"

void conf_ref_get(struct conf_ref *r)
{
    __atomic_add_fetch(&r->refs, 1, __ATOMIC_RELAXED);
}

void conf_ref_put(struct conf_ref *r)
{
    if (r != NULL && __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        conf_free(&r->c);
        free(r);
    }
}

/* ---- what a generation is made from ---- */

/* A canonical text of a setting: equal configs give equal strings. */
static void serialize(struct strbuf *b, const config_setting_t *s)
{
    const char *name = config_setting_name(s);
    if (name != NULL)
        strbuf_add(b, "%s=", name);
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
        strbuf_add(b, "i%d;", config_setting_get_int(s));
        break;
    case CONFIG_TYPE_INT64:
        strbuf_add(b, "l%lld;", config_setting_get_int64(s));
        break;
    case CONFIG_TYPE_FLOAT:
        strbuf_add(b, "f%.17g;", config_setting_get_float(s));
        break;
    case CONFIG_TYPE_BOOL:
        strbuf_add(b, "b%d;", config_setting_get_bool(s));
        break;
    case CONFIG_TYPE_STRING: {
        const char *v = config_setting_get_string(s);
        size_t len = strlen(v);
        strbuf_add(b, "s%zu:", len);
        for (size_t at = 0; at < len; at += 256)
            strbuf_add(b, "%.256s", v + at);
        strbuf_add(b, ";");
        break;
    }
    default: {
        int type = config_setting_type(s);
        strbuf_add(b, "%c", type == CONFIG_TYPE_GROUP ? '{' : type == CONFIG_TYPE_LIST ? '(' : '[');
        for (int i = 0; i < config_setting_length(s); i++)
            serialize(b, config_setting_get_elem(s, (unsigned)i));
        strbuf_add(b, "%c", type == CONFIG_TYPE_GROUP ? '}' : type == CONFIG_TYPE_LIST ? ')' : ']');
    }
    }
}

int gen_source_read(struct gen_source *src, const char *path, const config_setting_t *conf)
{
    memset(src, 0, sizeof(*src));
    snprintf(src->path, sizeof(src->path), "%s", path);
    struct stat st;
    if (stat(path, &st) < 0)
        return -errno;
    src->dev = st.st_dev;
    src->ino = st.st_ino;
    src->size = st.st_size;
    src->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    struct strbuf b = {0};
    strbuf_add(&b, "@");
    if (conf != NULL)
        serialize(&b, conf);
    src->conf_sig = b.p;
    return src->conf_sig != NULL ? 0 : -ENOMEM;
}

void gen_source_free(struct gen_source *src)
{
    free(src->conf_sig);
    src->conf_sig = NULL;
}

int gen_source_same(const struct gen_source *a, const struct gen_source *b)
{
    return strcmp(a->path, b->path) == 0 && a->dev == b->dev && a->ino == b->ino &&
           a->size == b->size && a->mtime_ns == b->mtime_ns && a->conf_sig != NULL &&
           b->conf_sig != NULL && strcmp(a->conf_sig, b->conf_sig) == 0;
}

/* ---- services ---- */

static void load_gen(struct daemon *d, struct service *svc, const struct svc_conf *sc,
                     struct conf_ref *cref, struct plugin_gen **out, int *rc, char *err,
                     size_t errlen)
{
    char lerr[512];
    /* A process-mode plugin is only checked here: its worker process runs
     * init and the rest. */
    const struct shmipc_host_api *host =
        sc->isolation == ISOLATION_PROCESS && !d->worker_process ? NULL : &d->host;
    handler_log_service(svc->name);
    *rc = gen_load(sc->plugin, d->tmpdir, svc->next_gen + 1, pool_of(d, svc)->n, host,
                   (const struct shmipc_plugin_conf *)sc->plugin_conf, out, lerr, sizeof(lerr));
    handler_log_service(NULL);
    if (*rc < 0) {
        snprintf(err, errlen, "%s", lerr);
        return;
    }
    svc->next_gen++;
    conf_ref_get(cref);
    (*out)->host_ref = cref;
}

void service_unload_gen(struct plugin_gen *g)
{
    struct conf_ref *cref = g->host_ref;
    gen_unload(g);
    conf_ref_put(cref);
}

/* Its per-worker figures (metrics): one of each per worker of its pool,
 * which keeps its size for the service's life. A process-mode service
 * keeps them in the pages it shares with its worker processes. */
static int worker_figures(struct daemon *d, struct service *svc, const struct svc_conf *sc)
{
    unsigned n = pool_of(d, svc)->n;
    if (sc->isolation == ISOLATION_PROCESS || n == 0)
        return 0;
    size_t size = (size_t)n * (sizeof(struct worker_stats) + sizeof(struct worker_live));
    void *mem;
    if (posix_memalign(&mem, 64, size) != 0)
        return -ENOMEM;
    memset(mem, 0, size);
    svc->wmem = mem;
    svc->wst = mem;
    svc->wlive = (struct worker_live *)(svc->wst + n);
    svc->nwst = n;
    return 0;
}

struct service *service_create(struct daemon *d, const struct svc_conf *sc, char *err,
                               size_t errlen)
{
    struct service *svc = calloc(1, sizeof(*svc));
    if (svc == NULL) {
        snprintf(err, errlen, "service '%s': out of memory", sc->name);
        return NULL;
    }
    svc->l.tag.kind = SERVE_LISTENER;
    svc->l.fd = -1;
    svc->l.ctx = svc;
    svc->st = &svc->st_own;
    svc->d = d;
    snprintf(svc->name, sizeof(svc->name), "%s", sc->name);
    snprintf(svc->listen, sizeof(svc->listen), "%s", sc->listen);
    snprintf(svc->allowed_dir, sizeof(svc->allowed_dir), "%s", sc->allowed_dir);
    snprintf(svc->plugin_path, sizeof(svc->plugin_path), "%s", sc->plugin);
    svc->mode = sc->mode;
    svc->uid = sc->uid;
    svc->gid = sc->gid;
    svc->watch = sc->watch;
    memcpy(svc->allow_uids, sc->allow_uids, sizeof(svc->allow_uids));
    memcpy(svc->allow_gids, sc->allow_gids, sizeof(svc->allow_gids));
    svc->nallow_uids = sc->nallow_uids;
    svc->nallow_gids = sc->nallow_gids;
    service_configure(d, svc, sc);
    svc->own.n = sc->workers; /* started by service_start_workers */
    svc->own.name = svc->name;
    char lerr[512] = "";
    int rc = worker_figures(d, svc, sc);
    if (rc < 0) {
        snprintf(err, errlen, "service '%s': out of memory", sc->name);
        free(svc);
        return NULL;
    }
    rc = gen_source_read(&svc->src, sc->plugin, sc->plugin_conf);
    if (rc == 0)
        load_gen(d, svc, sc, d->cref, &svc->gen, &rc, lerr, sizeof(lerr));
    else
        snprintf(lerr, sizeof(lerr), "%s: %s", sc->plugin, shmipc_strerror(rc));
    if (rc < 0)
        snprintf(err, errlen, "service '%s': %s", sc->name, lerr);
    if (rc < 0) {
        gen_source_free(&svc->src);
        free(svc->wmem);
        free(svc);
        return NULL;
    }
    log_info("service %s: plugin %s %s loaded (generation %u)", svc->name, svc->gen->desc->name,
             svc->gen->desc->version, svc->gen->number);
    return svc;
}

int daemon_load_conf(struct daemon *d, const char *path, char *err, size_t errlen)
{
    if ((d->cref = calloc(1, sizeof(*d->cref))) == NULL)
        return -ENOMEM;
    d->cref->refs = 1;
    d->conf = &d->cref->c;
    int rc = conf_load(path, d->conf, err, errlen);
    if (rc < 0)
        return rc;
    snprintf(d->conf_path, sizeof(d->conf_path), "%s", d->conf->path);
    log_set_level(d->conf->log_level);
    d->spin_us = d->conf->spin_us;
    d->idle_timeout_ms = d->conf->idle_timeout_ms;
    return 0;
}

int service_listen(struct daemon *d, struct service *svc, char *err, size_t errlen)
{
    /* An upgrade's successor takes the old daemon's socket as it is. */
    int inherited = upgrade_take_listener(d, svc->listen), rc;
    if (inherited >= 0 && (rc = serve_listen_fd(&svc->l, svc->listen, inherited)) < 0)
        close(inherited);
    else if (inherited < 0)
        rc = serve_listen(&svc->l, svc->listen, svc->mode, sock_backlog_for(d->conf->max_sessions));
    svc->l.ctx = svc;
    if (rc == 0) {
        const struct sock_addr *a = &svc->l.addr;
        if (a->family == AF_UNIX && (svc->uid != (uid_t)-1 || svc->gid != (gid_t)-1) &&
            chown(((const struct sockaddr_un *)&a->ss)->sun_path, svc->uid, svc->gid) < 0)
            rc = -errno;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &svc->l.tag};
        if (rc == 0 && epoll_ctl(d->epfd, EPOLL_CTL_ADD, svc->l.fd, &ev) < 0)
            rc = -errno;
    }
    if (rc < 0) {
        pid_t owner;
        if (rc == -EADDRINUSE && sock_unix_owner(&svc->l.addr, &owner) > 0) {
            snprintf(err, errlen, "service '%s': %s is served by pid %d (another shmipcd?)",
                     svc->name, svc->l.addr.text, (int)owner);
            return rc;
        }
        snprintf(err, errlen, "service '%s': listening on %s: %s", svc->name, svc->listen,
                 shmipc_strerror(rc));
        return rc;
    }
    log_info("service %s: listening on %s", svc->name, svc->l.addr.text);
    return 0;
}

void service_unlisten(struct daemon *d, struct service *svc)
{
    if (svc->l.fd < 0)
        return;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, svc->l.fd, NULL);
    serve_listener_close(&svc->l);
}

int service_start_workers(struct daemon *d, struct service *svc)
{
    if (svc->own.n == 0 || svc->own.w != NULL)
        return 0;
    int rc = pool_start(&svc->own, d, svc->own.n, svc->name);
    if (rc == 0)
        log_info("service %s: %u workers of its own", svc->name, svc->own.n);
    return rc;
}

void service_configure(struct daemon *d, struct service *svc, const struct svc_conf *sc)
{
    const struct daemon_conf *c = d->conf;
    svc->watch = sc->watch;
    svc->isolation = sc->isolation;
    svc->crash_limit = sc->crash_limit;
    svc->handler_kill_ms = sc->handler_kill_ms;
    svc->max_rss_bytes = sc->max_rss_bytes;
    __atomic_store_n(&svc->handler_error, sc->handler_error, __ATOMIC_RELAXED);
    __atomic_store_n(&svc->slow_ms, sc->slow_handler_ms >= 0 ? sc->slow_handler_ms
                                                             : c->slow_handler_ms,
                     __ATOMIC_RELAXED);
    __atomic_store_n(&svc->slow_trace, sc->slow_handler_trace >= 0 ? sc->slow_handler_trace
                                                                   : c->slow_handler_trace,
                     __ATOMIC_RELAXED);
}

void service_free(struct daemon *d, struct service *svc)
{
    /* Its own workers are idle by now: no session and no request left. */
    pool_stop(&svc->own, sock_now_ns());
    if (svc->shared != NULL) {
        munmap(svc->shared, sizeof(*svc->shared));
        close(svc->shared_fd);
        svc->shared = NULL;
    }
    service_unlisten(d, svc);
    if (svc->gen != NULL)
        service_unload_gen(svc->gen);
    gen_source_free(&svc->src);
    free(svc->wmem);
    free(svc);
}

int service_new_gen(struct daemon *d, struct service *svc, const struct svc_conf *sc,
                    struct conf_ref *cref, struct plugin_gen **out, char *err, size_t errlen)
{
    int rc;
    load_gen(d, svc, sc, cref, out, &rc, err, errlen);
    if (rc < 0)
        return rc;
    if ((*out)->checked_only) {
        /* Process mode: a new worker process runs it (proc_service_replace). */
        if ((rc = proc_service_replace(d, svc, (*out)->number, svc->gen, *out, err, errlen)) < 0) {
            service_unload_gen(*out);
            *out = NULL;
        }
        return rc;
    }
    char werr[256];
    rc = workers_exec(d, WCMD_THREAD_INIT, *out, svc, werr, sizeof(werr));
    if (rc < 0)
        snprintf(err, errlen, "%s: %s", sc->plugin, werr);
    else /* last before the swap: see gen_carry_state for why */
        rc = gen_carry_state(svc->gen, *out, err, errlen);
    if (rc < 0) {
        workers_exec(d, WCMD_THREAD_FINI, *out, svc, NULL, 0);
        service_unload_gen(*out);
        *out = NULL;
    }
    return rc;
}

/* The settings a service's new sessions get: the daemon-wide limits of
 * the configuration in force (a reload may change them) and the
 * service's allowed directory. */
const struct serve_settings *service_settings(struct daemon *d, struct service *svc)
{
    struct serve_settings *set = &svc->set;
    serve_settings_init(set);
    set->allowed_dir = svc->allowed_dir;
    set->max_pool_bytes = d->conf->max_pool_bytes;
    set->handshake_timeout_ms = d->conf->handshake_timeout_ms;
    set->max_event_bytes = d->conf->max_event_bytes;
    set->max_streams = d->conf->max_streams;
    return set;
}
