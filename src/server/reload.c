/*
 * Hot reload (master thread only): the configuration read again and
 * applied service by service (service.c makes and frees them).
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
#include "server/reload.h"
#include "server/notify.h"
#include "server/proc.h"
#include "server/service.h"
#include "server/strbuf.h"
#include "server/worker.h"
#include "shmipc/errors.h"

/* ---- generations ---- */

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
        workers_exec(d, WCMD_THREAD_FINI, r->g, r->svc, NULL, 0);
        log_info("service %s: generation %u finished", r->svc->name, r->g->number);
        service_unload_gen(r->g);
        d->gens_retired++;
        free(r);
    }
    /* Removed services go once their last session and generation did. */
    for (struct service **sp = &d->removed; *sp != NULL;) {
        struct service *svc = *sp;
        uint64_t open = __atomic_load_n(&svc->st->sessions_opened, __ATOMIC_RELAXED) -
                        __atomic_load_n(&svc->st->sessions_closed, __ATOMIC_RELAXED);
        int gen_busy = 0;
        for (struct retiring *r = d->retiring; r != NULL; r = r->next)
            gen_busy |= r->svc == svc;
        for (struct wproc *w = d->procs; w != NULL; w = w->next)
            gen_busy |= w->svc == svc; /* a worker process still drains */
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
    /* A change of isolation starts the service anew, as a new endpoint. */
    return strcmp(svc->listen, sc->listen) == 0 && svc->mode == sc->mode &&
           svc->uid == sc->uid && svc->gid == sc->gid &&
           strcmp(svc->allowed_dir, sc->allowed_dir) == 0 && svc->isolation == sc->isolation;
}

/* What became of the old generation's state. Nothing is said for a
 * plugin without state hooks: its state starts empty, as it always did. */
static void report_carry(const struct service *svc, const struct plugin_gen *g, struct strbuf *rep)
{
    char line[320];
    if (g->carry.how == GEN_CARRY_HANDOFF)
        snprintf(line, sizeof(line), "state of generation %u handed over", g->carry.from);
    else if (g->carry.how == GEN_CARRY_RESTORE)
        snprintf(line, sizeof(line), "state of generation %u restored (%zu bytes)", g->carry.from,
                 g->carry.bytes);
    else if (g->carry.why[0] != '\0')
        snprintf(line, sizeof(line), "state starts empty: %s", g->carry.why);
    else
        return;
    strbuf_add(rep, "service %s: %s\n", svc->name, line);
    log_info("service %s: %s", svc->name, line);
}

/* A service whose plugin or plugin config changed: new generation. */
static int update_service(struct daemon *d, struct service *svc, const struct svc_conf *sc,
                          struct conf_ref *cref, struct strbuf *rep)
{
    struct gen_source src;
    char err[768];
    int rc = gen_source_read(&src, sc->plugin, sc->plugin_conf);
    if (rc < 0) {
        strbuf_add(rep, "service %s: refused: %s: %s; generation %u keeps serving\n", svc->name,
               sc->plugin, shmipc_strerror(rc), svc->gen->number);
        return rc;
    }
    if (gen_source_same(&src, &svc->src)) {
        gen_source_free(&src);
        if (svc->isolation == ISOLATION_PROCESS && (svc->failed[0] || svc->proc == NULL)) {
            /* A failed (or down) process-mode service starts anew. */
            rc = proc_service_replace(d, svc, svc->gen->number, NULL, NULL, err, sizeof(err));
            if (rc < 0) {
                strbuf_add(rep, "service %s: refused: %s\n", svc->name, err);
                return rc;
            }
            strbuf_add(rep, "service %s: worker process started again (generation %u)\n",
                       svc->name, svc->gen->number);
            return 0;
        }
        strbuf_add(rep, "service %s: unchanged (generation %u)\n", svc->name, svc->gen->number);
        return 0;
    }
    struct plugin_gen *g;
    rc = service_new_gen(d, svc, sc, cref, &g, err, sizeof(err));
    if (rc < 0) {
        gen_source_free(&src);
        strbuf_add(rep, "service %s: refused: %s; generation %u keeps serving\n", svc->name, err,
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
    strbuf_add(rep, "service %s: generation %u (plugin %s %s), generation %u draining\n", svc->name,
           g->number, g->desc->name, g->desc->version, old->number);
    log_info("service %s: generation %u (plugin %s %s) serves; generation %u drains", svc->name,
             g->number, g->desc->name, g->desc->version, old->number);
    report_carry(svc, g, rep);
    return 0;
}

static void remove_service(struct daemon *d, unsigned i, struct strbuf *rep)
{
    struct service *svc = d->svcs[i];
    service_unlisten(d, svc);
    serve_accept_drop(&d->acc, &svc->l); /* its handshakes in progress */
    memmove(&d->svcs[i], &d->svcs[i + 1], (d->nsvcs - i - 1) * sizeof(d->svcs[0]));
    d->nsvcs--;
    svc->removed = 1;
    workers_exec(d, WCMD_CLOSE_SERVICE, NULL, svc, NULL, 0);
    if (svc->isolation == ISOLATION_PROCESS)
        proc_service_stop(d, svc, sock_deadline(d->conf->drain_timeout_ms));
    retire(d, svc, svc->gen);
    svc->next_removed = d->removed;
    d->removed = svc;
    strbuf_add(rep, "service %s: removed (listener closed, sessions closed)\n", svc->name);
}

static int add_service(struct daemon *d, const struct svc_conf *sc, struct strbuf *rep)
{
    char err[768];
    if (d->nsvcs == CONF_MAX_SERVICES) {
        strbuf_add(rep, "service %s: refused: too many services\n", sc->name);
        return -ENOSPC;
    }
    struct service *svc = service_create(d, sc, err, sizeof(err));
    int rc = svc == NULL ? -EINVAL : 0;
    if (rc == 0 && (rc = service_start_workers(d, svc)) < 0)
        snprintf(err, sizeof(err), "starting its workers: %s", shmipc_strerror(rc));
    if (rc == 0)
        rc = workers_exec(d, WCMD_THREAD_INIT, svc->gen, svc, err, sizeof(err));
    if (rc == 0 && svc->isolation == ISOLATION_PROCESS)
        rc = proc_service_start(d, svc, err, sizeof(err));
    if (rc == 0)
        rc = service_listen(d, svc, err, sizeof(err));
    if (rc < 0) {
        /* Whatever failed, thread_init ran (or was tried) on the workers:
         * their thread states go before the generation does. */
        if (svc != NULL) {
            workers_exec(d, WCMD_THREAD_FINI, svc->gen, svc, NULL, 0);
            service_free(d, svc);
        }
        /* err may already name the service; say it once. */
        char prefix[96];
        snprintf(prefix, sizeof(prefix), "service '%s': ", sc->name);
        const char *why = strncmp(err, prefix, strlen(prefix)) == 0 ? err + strlen(prefix) : err;
        strbuf_add(rep, "service %s: refused: %s\n", sc->name, why);
        return rc;
    }
    d->svcs[d->nsvcs++] = svc;
    strbuf_add(rep, "service %s: added (generation %u, plugin %s %s, listening on %s)\n", svc->name,
           svc->gen->number, svc->gen->desc->name, svc->gen->desc->version, svc->l.addr.text);
    return 0;
}

int daemon_reload(struct daemon *d, char **report)
{
    struct strbuf rep = {0};
    char err[1024];
    struct conf_ref *cref = calloc(1, sizeof(*cref));
    int rc = cref == NULL ? -ENOMEM : conf_load(d->conf_path, &cref->c, err, sizeof(err));
    d->reloads++;
    if (rc < 0) {
        free(cref);
        d->reloads_failed++;
        strbuf_add(&rep, "error: reload refused: %s\nnothing changed\n", cref ? err : "out of memory");
        log_warn("reload refused: %s", err);
        *report = rep.p;
        return rc;
    }
    cref->refs = 1;
    struct daemon_conf *nc = &cref->c;
    struct strbuf body = {0};
    int failed = 0;
    if (nc->workers != d->pool.n)
        strbuf_add(&body, "note: workers stays %u until a restart (the file says %u)\n", d->pool.n,
               nc->workers);
    for (unsigned i = 0; i < d->nsvcs;) {
        const struct svc_conf *sc = find_conf(nc, d->svcs[i]->name);
        if (sc == NULL || !same_endpoint(d->svcs[i], sc)) {
            remove_service(d, i, &body); /* a changed endpoint is removed, then added */
            continue;
        }
        failed += update_service(d, d->svcs[i], sc, cref, &body) < 0;
        struct service *svc = d->svcs[i];
        service_configure(d, svc, sc);
        if (sc->workers != svc->own.n)
            strbuf_add(&body, "note: service %s: workers stays %u until a restart (the file says %u)\n",
                       svc->name, svc->own.n, sc->workers);
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
        strbuf_add(&rep, "error: reload: %d service(s) refused; the rest applied\n", failed);
    } else {
        strbuf_add(&rep, "reload: done\n");
    }
    strbuf_add(&rep, "%s", body.p ? body.p : "");
    free(body.p);
    *report = rep.p;
    return failed ? -EINVAL : 0;
}

int reload_and_log(struct daemon *d, const char *trigger, char **report_out)
{
    char *report = NULL;
    if (d->up.handing_over) {
        /* The successor serves the configuration now: a reload here would
         * open listeners again. */
        log_warn("%s: reload ignored: this daemon hands over to pid %d", trigger,
                 (int)d->up.successor);
        if (report_out != NULL) {
            char msg[96];
            snprintf(msg, sizeof(msg), "error: this daemon hands over to pid %d: reload it\n",
                     (int)d->up.successor);
            *report_out = strdup(msg);
        }
        return -EBUSY;
    }
    sd_notify_text("RELOADING=1");
    log_info("%s: reloading %s", trigger, d->conf_path);
    int rc = daemon_reload(d, &report);
    /* A refused reload is an error whoever asked for it. */
    if (report != NULL) {
        char *copy = strdup(report), *save = NULL;
        for (char *line = copy != NULL ? strtok_r(copy, "\n", &save) : NULL; line != NULL;
             line = strtok_r(NULL, "\n", &save))
            log_msg(rc == 0 ? LOG_INFO : LOG_ERROR, "%s: %s", trigger, line);
        free(copy);
    }
    sd_notify_text("READY=1\nSTATUS=%u services; the last reload (%s) %s", d->nsvcs, trigger,
                   rc == 0 ? "applied" : "was refused in part: see the log");
    if (report_out != NULL)
        *report_out = report;
    else
        free(report);
    return rc;
}
