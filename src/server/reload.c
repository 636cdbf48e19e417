/*
 * Services, plugin generations and hot reload (master thread only).
 *
 * A reload builds every new generation beside the old one: private copy,
 * dlopen, ABI check, init() on the master, thread_init() on every worker
 * (on its own thread). Only when all of that succeeded is the service's
 * generation pointer swapped. Requests already running finish on the
 * generation they started on; a retired generation is finished (each
 * worker's thread_fini, then fini, dlclose, copy removed) once its last
 * request has let go of it. Any failure leaves the old generation serving
 * and is reported to whoever asked for the reload.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/log.h"
#include "server/daemon.h"
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

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_add(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t k = (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1;
    if (b->len + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + k + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, tmp, k);
    b->len += k;
    b->p[b->len] = '\0';
}

/* A canonical text of a setting: equal configs give equal strings. */
static void serialize(struct sbuf *b, const config_setting_t *s)
{
    const char *name = config_setting_name(s);
    if (name != NULL)
        sb_add(b, "%s=", name);
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
        sb_add(b, "i%d;", config_setting_get_int(s));
        break;
    case CONFIG_TYPE_INT64:
        sb_add(b, "l%lld;", config_setting_get_int64(s));
        break;
    case CONFIG_TYPE_FLOAT:
        sb_add(b, "f%.17g;", config_setting_get_float(s));
        break;
    case CONFIG_TYPE_BOOL:
        sb_add(b, "b%d;", config_setting_get_bool(s));
        break;
    case CONFIG_TYPE_STRING: {
        const char *v = config_setting_get_string(s);
        size_t len = strlen(v);
        sb_add(b, "s%zu:", len);
        for (size_t at = 0; at < len; at += 256)
            sb_add(b, "%.256s", v + at);
        sb_add(b, ";");
        break;
    }
    default: {
        int type = config_setting_type(s);
        sb_add(b, "%c", type == CONFIG_TYPE_GROUP ? '{' : type == CONFIG_TYPE_LIST ? '(' : '[');
        for (int i = 0; i < config_setting_length(s); i++)
            serialize(b, config_setting_get_elem(s, (unsigned)i));
        sb_add(b, "%c", type == CONFIG_TYPE_GROUP ? '}' : type == CONFIG_TYPE_LIST ? ')' : ']');
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
    struct sbuf b = {0};
    sb_add(&b, "@");
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

static int gen_source_same(const struct gen_source *a, const struct gen_source *b)
{
    return strcmp(a->path, b->path) == 0 && a->dev == b->dev && a->ino == b->ino &&
           a->size == b->size && a->mtime_ns == b->mtime_ns && a->conf_sig != NULL &&
           b->conf_sig != NULL && strcmp(a->conf_sig, b->conf_sig) == 0;
}

/* ---- services ---- */

static ino_t sock_inode(const struct sock_addr *a)
{
    struct stat st;
    if (a->family != AF_UNIX || stat(((const struct sockaddr_un *)&a->ss)->sun_path, &st) < 0)
        return 0;
    return st.st_ino;
}

static void load_gen(struct daemon *d, struct service *svc, const struct svc_conf *sc,
                     struct conf_ref *cref, struct plugin_gen **out, int *rc, char *err,
                     size_t errlen)
{
    char lerr[512];
    *rc = gen_load(sc->plugin, d->tmpdir, svc->next_gen + 1, d->nworkers, &d->host,
                   (const struct shmipc_plugin_conf *)sc->plugin_conf, out, lerr, sizeof(lerr));
    if (*rc < 0) {
        snprintf(err, errlen, "%s", lerr);
        return;
    }
    svc->next_gen++;
    conf_ref_get(cref);
    (*out)->host_ref = cref;
}

static void unload_gen(struct plugin_gen *g)
{
    struct conf_ref *cref = g->host_ref;
    gen_unload(g);
    conf_ref_put(cref);
}

struct service *service_create(struct daemon *d, const struct svc_conf *sc, char *err,
                               size_t errlen)
{
    struct service *svc = calloc(1, sizeof(*svc));
    if (svc == NULL) {
        snprintf(err, errlen, "service '%s': out of memory", sc->name);
        return NULL;
    }
    svc->tag.kind = EPK_LISTEN;
    svc->d = d;
    svc->lfd = -1;
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
    int rc = gen_source_read(&svc->src, sc->plugin, sc->plugin_conf);
    char lerr[512] = "";
    if (rc == 0)
        load_gen(d, svc, sc, d->cref, &svc->gen, &rc, lerr, sizeof(lerr));
    else
        snprintf(lerr, sizeof(lerr), "%s: %s", sc->plugin, shmipc_strerror(rc));
    if (rc < 0)
        snprintf(err, errlen, "service '%s': %s", sc->name, lerr);
    if (rc < 0) {
        gen_source_free(&svc->src);
        free(svc);
        return NULL;
    }
    log_info("service %s: plugin %s %s loaded (generation %u)", svc->name, svc->gen->desc->name,
             svc->gen->desc->version, svc->gen->number);
    return svc;
}

int service_listen(struct daemon *d, struct service *svc, char *err, size_t errlen)
{
    int rc = sock_addr_parse(svc->listen, &svc->addr);
    if (rc == 0 && (rc = sock_listen(&svc->addr, svc->mode, 1024)) >= 0) {
        svc->lfd = rc;
        svc->sock_ino = sock_inode(&svc->addr);
        rc = 0;
        if (svc->addr.family == AF_UNIX && (svc->uid != (uid_t)-1 || svc->gid != (gid_t)-1) &&
            chown(((struct sockaddr_un *)&svc->addr.ss)->sun_path, svc->uid, svc->gid) < 0)
            rc = -errno;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = svc};
        if (rc == 0 && epoll_ctl(d->epfd, EPOLL_CTL_ADD, svc->lfd, &ev) < 0)
            rc = -errno;
    }
    if (rc < 0) {
        snprintf(err, errlen, "service '%s': listening on %s: %s", svc->name, svc->listen,
                 shmipc_strerror(rc));
        return rc;
    }
    log_info("service %s: listening on %s", svc->name, svc->addr.text);
    return 0;
}

static void service_unlisten(struct daemon *d, struct service *svc)
{
    if (svc->lfd < 0)
        return;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, svc->lfd, NULL);
    close(svc->lfd);
    svc->lfd = -1;
    if (svc->addr.family == AF_UNIX && svc->sock_ino != 0) {
        const char *path = ((const struct sockaddr_un *)&svc->addr.ss)->sun_path;
        struct stat st;
        if (stat(path, &st) == 0 && st.st_ino == svc->sock_ino)
            unlink(path);
    }
}

void service_free(struct daemon *d, struct service *svc)
{
    service_unlisten(d, svc);
    if (svc->gen != NULL)
        unload_gen(svc->gen);
    gen_source_free(&svc->src);
    free(svc);
}

/* ---- generations ---- */

int service_new_gen(struct daemon *d, struct service *svc, const struct svc_conf *sc,
                    struct conf_ref *cref, struct plugin_gen **out, char *err, size_t errlen)
{
    int rc;
    load_gen(d, svc, sc, cref, out, &rc, err, errlen);
    if (rc < 0)
        return rc;
    char werr[256];
    rc = workers_exec(d, WCMD_THREAD_INIT, *out, NULL, werr, sizeof(werr));
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", sc->plugin, werr);
        workers_exec(d, WCMD_THREAD_FINI, *out, NULL, NULL, 0);
        unload_gen(*out);
        *out = NULL;
    }
    return rc;
}

static void retire(struct daemon *d, struct service *svc, struct plugin_gen *old)
{
    struct retiring *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        log_error("service %s: cannot track generation %u: it will not be unloaded", svc->name,
                  old->number);
        return;
    }
    r->g = old;
    r->svc = svc;
    r->next = d->retiring;
    d->retiring = r;
    __atomic_sub_fetch(&old->refs, 1, __ATOMIC_ACQ_REL); /* the service's reference */
}

unsigned daemon_retire(struct daemon *d)
{
    unsigned left = 0;
    struct retiring **pp = &d->retiring;
    while (*pp != NULL) {
        struct retiring *r = *pp;
        if (__atomic_load_n(&r->g->refs, __ATOMIC_ACQUIRE) != 0) {
            left++;
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        workers_exec(d, WCMD_THREAD_FINI, r->g, NULL, NULL, 0);
        log_info("service %s: generation %u finished", r->svc->name, r->g->number);
        unload_gen(r->g);
        d->gens_retired++;
        free(r);
    }
    /* Removed services go once their last session and generation did. */
    for (struct service **sp = &d->removed; *sp != NULL;) {
        struct service *svc = *sp;
        uint64_t open = __atomic_load_n(&svc->st.sessions_opened, __ATOMIC_RELAXED) -
                        __atomic_load_n(&svc->st.sessions_closed, __ATOMIC_RELAXED);
        int gen_busy = 0;
        for (struct retiring *r = d->retiring; r != NULL; r = r->next)
            gen_busy |= r->svc == svc;
        if (open == 0 && !gen_busy) {
            *sp = svc->next_removed;
            svc->gen = NULL; /* retired above */
            log_info("service %s: removed", svc->name);
            service_free(d, svc);
        } else {
            left++;
            sp = &svc->next_removed;
        }
    }
    return left;
}

/* ---- reload ---- */

static const struct svc_conf *find_conf(const struct daemon_conf *c, const char *name)
{
    for (unsigned i = 0; i < c->nservices; i++)
        if (strcmp(c->services[i].name, name) == 0)
            return &c->services[i];
    return NULL;
}

static int same_endpoint(const struct service *svc, const struct svc_conf *sc)
{
    return strcmp(svc->listen, sc->listen) == 0 && svc->mode == sc->mode &&
           svc->uid == sc->uid && svc->gid == sc->gid &&
           strcmp(svc->allowed_dir, sc->allowed_dir) == 0;
}

/* A service whose plugin or plugin config changed: new generation. */
static int update_service(struct daemon *d, struct service *svc, const struct svc_conf *sc,
                          struct conf_ref *cref, struct sbuf *rep)
{
    struct gen_source src;
    char err[768];
    int rc = gen_source_read(&src, sc->plugin, sc->plugin_conf);
    if (rc < 0) {
        sb_add(rep, "service %s: refused: %s: %s; generation %u keeps serving\n", svc->name,
               sc->plugin, shmipc_strerror(rc), svc->gen->number);
        return rc;
    }
    if (gen_source_same(&src, &svc->src)) {
        gen_source_free(&src);
        sb_add(rep, "service %s: unchanged (generation %u)\n", svc->name, svc->gen->number);
        return 0;
    }
    struct plugin_gen *g;
    rc = service_new_gen(d, svc, sc, cref, &g, err, sizeof(err));
    if (rc < 0) {
        gen_source_free(&src);
        sb_add(rep, "service %s: refused: %s; generation %u keeps serving\n", svc->name, err,
               svc->gen->number);
        log_warn("reload: service %s: %s", svc->name, err);
        return rc;
    }
    struct plugin_gen *old = svc->gen;
    __atomic_store_n(&svc->gen, g, __ATOMIC_RELEASE);
    gen_source_free(&svc->src);
    svc->src = src;
    snprintf(svc->plugin_path, sizeof(svc->plugin_path), "%s", sc->plugin);
    retire(d, svc, old);
    sb_add(rep, "service %s: generation %u (plugin %s %s), generation %u draining\n", svc->name,
           g->number, g->desc->name, g->desc->version, old->number);
    log_info("service %s: generation %u (plugin %s %s) serves; generation %u drains", svc->name,
             g->number, g->desc->name, g->desc->version, old->number);
    return 0;
}

static void remove_service(struct daemon *d, unsigned i, struct sbuf *rep)
{
    struct service *svc = d->svcs[i];
    service_unlisten(d, svc);
    master_drop_handshakes(d, svc);
    memmove(&d->svcs[i], &d->svcs[i + 1], (d->nsvcs - i - 1) * sizeof(d->svcs[0]));
    d->nsvcs--;
    svc->removed = 1;
    workers_exec(d, WCMD_CLOSE_SERVICE, NULL, svc, NULL, 0);
    retire(d, svc, svc->gen);
    svc->next_removed = d->removed;
    d->removed = svc;
    sb_add(rep, "service %s: removed (listener closed, sessions closed)\n", svc->name);
}

static int add_service(struct daemon *d, const struct svc_conf *sc, struct sbuf *rep)
{
    char err[768];
    if (d->nsvcs == CONF_MAX_SERVICES) {
        sb_add(rep, "service %s: refused: too many services\n", sc->name);
        return -ENOSPC;
    }
    struct service *svc = service_create(d, sc, err, sizeof(err));
    int rc = svc == NULL ? -EINVAL : 0;
    if (rc == 0)
        rc = workers_exec(d, WCMD_THREAD_INIT, svc->gen, NULL, err, sizeof(err));
    if (rc == 0)
        rc = service_listen(d, svc, err, sizeof(err));
    if (rc < 0) {
        /* Whatever failed, thread_init ran (or was tried) on the workers:
         * their thread states go before the generation does. */
        if (svc != NULL) {
            workers_exec(d, WCMD_THREAD_FINI, svc->gen, NULL, NULL, 0);
            service_free(d, svc);
        }
        /* err may already name the service; say it once. */
        char prefix[96];
        snprintf(prefix, sizeof(prefix), "service '%s': ", sc->name);
        const char *why = strncmp(err, prefix, strlen(prefix)) == 0 ? err + strlen(prefix) : err;
        sb_add(rep, "service %s: refused: %s\n", sc->name, why);
        return rc;
    }
    d->svcs[d->nsvcs++] = svc;
    sb_add(rep, "service %s: added (generation %u, plugin %s %s, listening on %s)\n", svc->name,
           svc->gen->number, svc->gen->desc->name, svc->gen->desc->version, svc->addr.text);
    return 0;
}

int daemon_reload(struct daemon *d, char **report)
{
    struct sbuf rep = {0};
    char err[1024];
    struct conf_ref *cref = calloc(1, sizeof(*cref));
    int rc = cref == NULL ? -ENOMEM : conf_load(d->conf_path, &cref->c, err, sizeof(err));
    d->reloads++;
    if (rc < 0) {
        free(cref);
        d->reloads_failed++;
        sb_add(&rep, "error: reload refused: %s\nnothing changed\n", cref ? err : "out of memory");
        log_warn("reload refused: %s", err);
        *report = rep.p;
        return rc;
    }
    cref->refs = 1;
    struct daemon_conf *nc = &cref->c;
    struct sbuf body = {0};
    int failed = 0;
    if (nc->workers != d->nworkers)
        sb_add(&body, "note: workers stays %u until a restart (the file says %u)\n", d->nworkers,
               nc->workers);
    for (unsigned i = 0; i < d->nsvcs;) {
        const struct svc_conf *sc = find_conf(nc, d->svcs[i]->name);
        if (sc == NULL || !same_endpoint(d->svcs[i], sc)) {
            remove_service(d, i, &body); /* a changed endpoint is removed, then added */
            continue;
        }
        failed += update_service(d, d->svcs[i], sc, cref, &body) < 0;
        struct service *svc = d->svcs[i];
        svc->watch = sc->watch;
        /* New connections see the new allowlist; sessions stay. */
        memcpy(svc->allow_uids, sc->allow_uids, sizeof(svc->allow_uids));
        memcpy(svc->allow_gids, sc->allow_gids, sizeof(svc->allow_gids));
        svc->nallow_uids = sc->nallow_uids;
        svc->nallow_gids = sc->nallow_gids;
        i++;
    }
    for (unsigned k = 0; k < nc->nservices; k++) {
        int present = 0;
        for (unsigned i = 0; i < d->nsvcs; i++)
            present |= strcmp(d->svcs[i]->name, nc->services[k].name) == 0;
        if (!present)
            failed += add_service(d, &nc->services[k], &body) < 0;
    }
    /* Settings that apply to new sessions from now on. */
    log_set_level(nc->log_level);
    __atomic_store_n(&d->spin_us, nc->spin_us, __ATOMIC_RELAXED);
    __atomic_store_n(&d->idle_timeout_ms, nc->idle_timeout_ms, __ATOMIC_RELAXED);
    struct conf_ref *old = d->cref;
    d->cref = cref;
    d->conf = &cref->c;
    conf_ref_put(old);
    watch_refresh(d);
    if (failed) {
        d->reloads_failed++;
        sb_add(&rep, "error: reload: %d service(s) refused; the rest applied\n", failed);
    } else {
        sb_add(&rep, "reload: done\n");
    }
    sb_add(&rep, "%s", body.p ? body.p : "");
    free(body.p);
    *report = rep.p;
    return failed ? -EINVAL : 0;
}
