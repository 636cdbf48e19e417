/*
 * shmipcd's master thread: configuration, plugins, listeners, handshakes,
 * signals (through a signalfd, so handlers never run in odd places) and
 * the admin socket. The one rule: nothing here waits on a client; every
 * handshake is a state machine with a deadline, and a finished session is
 * handed to a worker at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/log.h"
#include "server/daemon.h"
#include "session/accept.h"
#include "shmipc/errors.h"

static int ep_add(struct daemon *d, int fd, uint32_t events, void *tag)
{
    struct epoll_event ev = {.events = events, .data.ptr = tag};
    return epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static ino_t sock_inode(const struct sock_addr *a)
{
    struct stat st;
    if (a->family != AF_UNIX || stat(((const struct sockaddr_un *)&a->ss)->sun_path, &st) < 0)
        return 0;
    return st.st_ino;
}

static void unlink_own_socket(const struct sock_addr *a, ino_t ino)
{
    if (a->family != AF_UNIX || ino == 0)
        return;
    const char *path = ((const struct sockaddr_un *)&a->ss)->sun_path;
    struct stat st;
    if (stat(path, &st) == 0 && st.st_ino == ino)
        unlink(path);
}

static int load_services(struct daemon *d, char *err, size_t errlen)
{
    for (unsigned i = 0; i < d->conf->nservices; i++) {
        struct service *svc = service_create(d, &d->conf->services[i], err, errlen);
        if (svc == NULL)
            return -EINVAL;
        d->svcs[d->nsvcs++] = svc;
    }
    for (unsigned i = 0; i < d->nsvcs; i++) {
        int rc = service_listen(d, d->svcs[i], err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int open_admin(struct daemon *d, char *err, size_t errlen)
{
    d->adminfd = -1;
    if (d->conf->admin == NULL)
        return 0;
    int rc = sock_addr_parse(d->conf->admin, &d->admin_addr);
    if (rc == 0 && d->admin_addr.family != AF_UNIX)
        rc = -EINVAL; /* never on a network */
    if (rc == 0 && (rc = sock_listen(&d->admin_addr, d->conf->admin_mode, 16)) >= 0) {
        d->adminfd = rc;
        d->admin_ino = sock_inode(&d->admin_addr);
        d->admin_tag.kind = EPK_ADMIN;
        rc = ep_add(d, d->adminfd, EPOLLIN, &d->admin_tag);
    }
    if (rc < 0)
        snprintf(err, errlen, "admin socket %s: %s", d->conf->admin, shmipc_strerror(rc));
    return rc < 0 ? rc : 0;
}

int daemon_start(struct daemon *d, const char *conf_path, char *err, size_t errlen)
{
    memset(d, 0, sizeof(*d));
    d->epfd = d->sigfd = d->adminfd = -1;
    watch_init(&d->watch);
    pthread_mutex_init(&d->uid_mu, NULL);
    d->started_ns = sock_now_ns();
    pool_registry_init(&d->reg);
    host_api_init(&d->host);
    d->cref = calloc(1, sizeof(*d->cref));
    if (d->cref == NULL)
        return -ENOMEM;
    d->cref->refs = 1;
    d->conf = &d->cref->c;
    int rc = conf_load(conf_path, d->conf, err, errlen);
    if (rc < 0)
        return rc;
    snprintf(d->conf_path, sizeof(d->conf_path), "%s", d->conf->path);
    log_set_level(d->conf->log_level);
    d->nworkers = d->conf->workers;
    d->spin_us = d->conf->spin_us;
    d->idle_timeout_ms = d->conf->idle_timeout_ms;
    snprintf(d->tmpdir, sizeof(d->tmpdir), "/tmp/shmipcd-%d-XXXXXX", (int)getpid());
    if (mkdtemp(d->tmpdir) == NULL) {
        snprintf(err, errlen, "mkdtemp(%s): %s", d->tmpdir, strerror(errno));
        d->tmpdir[0] = '\0';
        return -errno;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    /* Blocked before any thread starts, so every thread inherits it. */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    d->sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (d->epfd < 0 || d->sigfd < 0) {
        snprintf(err, errlen, "epoll/signalfd: %s", strerror(errno));
        return -errno;
    }
    d->sig_tag.kind = EPK_SIGNAL;
    if ((rc = ep_add(d, d->sigfd, EPOLLIN, &d->sig_tag)) < 0)
        return rc;
    if ((rc = load_services(d, err, errlen)) < 0 || (rc = open_admin(d, err, errlen)) < 0)
        return rc;
    d->workers = calloc(d->nworkers, sizeof(*d->workers));
    if (d->workers == NULL)
        return -ENOMEM;
    for (unsigned i = 0; i < d->nworkers; i++) {
        if ((rc = worker_start(&d->workers[i], d, i)) < 0) {
            snprintf(err, errlen, "starting worker %u: %s", i, shmipc_strerror(rc));
            d->nworkers = i;
            return rc;
        }
    }
    for (unsigned i = 0; i < d->nsvcs; i++) {
        char werr[256];
        if ((rc = workers_exec(d, WCMD_THREAD_INIT, d->svcs[i]->gen, NULL, werr, sizeof(werr))) <
            0) {
            snprintf(err, errlen, "service '%s': %s", d->svcs[i]->name, werr);
            return rc;
        }
    }
    if ((rc = watch_refresh(d)) < 0) {
        snprintf(err, errlen, "inotify: %s", shmipc_strerror(rc));
        return rc;
    }
    log_info("shmipcd %d: %u services, %u workers", (int)getpid(), d->nsvcs, d->nworkers);
    return 0;
}

/* ---- handshakes ---- */

static void hs_drop(struct daemon *d, struct hs_pending *h, int close_fd)
{
    struct hs_pending **pp = &d->hs;
    while (*pp != h)
        pp = &(*pp)->next;
    *pp = h->next;
    d->nhs--;
    if (close_fd) {
        epoll_ctl(d->epfd, EPOLL_CTL_DEL, h->hs.fd, NULL);
        close(h->hs.fd);
        uid_release(d, h->uid); /* a session carries it on otherwise */
    }
    hs_server_cleanup(&h->hs);
    if (h->pool != NULL)
        pool_ref_put(h->pool);
    region_close(&h->qregion);
    free(h);
}

/* Counts a session (or handshake) of uid; 0, or -EUSERS over the limit. */
static int uid_acquire(struct daemon *d, long long uid)
{
    if (uid < 0 || d->conf->max_sessions_per_uid == 0)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&d->uid_mu);
    unsigned i = 0;
    while (i < d->nuids && d->uids[i].uid != uid)
        i++;
    if (i == d->nuids) {
        if (d->nuids == d->capuids) {
            unsigned cap = d->capuids ? d->capuids * 2 : 16;
            struct uid_count *u = realloc(d->uids, cap * sizeof(*u));
            if (u == NULL) {
                pthread_mutex_unlock(&d->uid_mu);
                return -ENOMEM;
            }
            d->uids = u;
            d->capuids = cap;
        }
        d->uids[d->nuids++] = (struct uid_count){uid, 0};
    }
    if (d->uids[i].n >= d->conf->max_sessions_per_uid)
        rc = -EUSERS;
    else
        d->uids[i].n++;
    pthread_mutex_unlock(&d->uid_mu);
    return rc;
}

void uid_release(struct daemon *d, long long uid)
{
    if (uid < 0)
        return;
    pthread_mutex_lock(&d->uid_mu);
    for (unsigned i = 0; i < d->nuids; i++) {
        if (d->uids[i].uid == uid) {
            if (--d->uids[i].n == 0)
                d->uids[i] = d->uids[--d->nuids];
            break;
        }
    }
    pthread_mutex_unlock(&d->uid_mu);
}

static int id_in(const unsigned *ids, unsigned n, unsigned id)
{
    for (unsigned i = 0; i < n; i++)
        if (ids[i] == id)
            return 1;
    return 0;
}

/* Checks a new connection against the service's allowlist and the per-uid
 * limit. 0 to go on (uid set, and counted), or a refusal with the reason. */
static int admit(struct daemon *d, struct service *svc, int fd, long long *uid, char *why,
                 size_t whylen)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    *uid = -1;
    int have = svc->addr.family == AF_UNIX &&
               getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
    if (svc->nallow_uids || svc->nallow_gids) {
        if (!have) {
            snprintf(why, whylen, "no peer credentials (TCP) and the service has an allowlist");
            return -EACCES;
        }
        if (!id_in(svc->allow_uids, svc->nallow_uids, cred.uid) &&
            !id_in(svc->allow_gids, svc->nallow_gids, cred.gid)) {
            snprintf(why, whylen, "peer uid %u gid %u (pid %d) is not allowed", cred.uid, cred.gid,
                     (int)cred.pid);
            return -EACCES;
        }
    }
    if (have && uid_acquire(d, cred.uid) < 0) {
        snprintf(why, whylen, "peer uid %u has %u sessions, the limit", cred.uid,
                 d->conf->max_sessions_per_uid);
        return -EUSERS;
    }
    if (have)
        *uid = cred.uid;
    return 0;
}

static unsigned total_sessions(struct daemon *d)
{
    unsigned n = 0;
    for (unsigned i = 0; i < d->nworkers; i++) {
        pthread_mutex_lock(&d->workers[i].mu);
        n += d->workers[i].nsessions;
        pthread_mutex_unlock(&d->workers[i].mu);
    }
    return n;
}

static struct worker *least_loaded(struct daemon *d)
{
    struct worker *best = &d->workers[0];
    unsigned best_n = ~0u;
    for (unsigned i = 0; i < d->nworkers; i++) {
        pthread_mutex_lock(&d->workers[i].mu);
        unsigned n = d->workers[i].nsessions;
        pthread_mutex_unlock(&d->workers[i].mu);
        if (n < best_n) {
            best_n = n;
            best = &d->workers[i];
        }
    }
    return best;
}

static void start_session(struct daemon *d, struct hs_pending *h)
{
    struct service *svc = h->svc;
    struct session_cfg cfg = {
        .role = ROLE_SERVER,
        .version = h->hs.version,
        .max_event = d->conf->max_event_bytes,
        .unhealthy_ms = 30000,
        .out_limit = (size_t)d->conf->max_event_bytes * 2 + (1u << 20),
        .max_streams = d->conf->max_streams,
        .notify_ready = 1,
    };
    int fd = h->hs.fd;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, fd, NULL);
    struct pool_ref *pool = h->pool;
    struct region q = h->qregion;
    long long uid = h->uid;
    h->pool = NULL;
    region_init(&h->qregion);
    hs_drop(d, h, 0);
    struct dsession *ds = calloc(1, sizeof(*ds));
    if (ds == NULL) {
        close(fd);
        pool_ref_put(pool);
        region_close(&q);
        uid_release(d, uid);
        return;
    }
    int rc = session_new(&cfg, fd, pool, &q, &ds->s);
    if (rc < 0) {
        /* The peer changed its memory between the check before our ack and
         * this one (or we ran out of memory): the handshake failed after
         * all, and is counted as such. */
        log_warn("service %s: session setup failed: %s", svc->name, shmipc_strerror(rc));
        __atomic_add_fetch(&svc->st.handshakes_failed, 1, __ATOMIC_RELAXED);
        uid_release(d, uid);
        free(ds);
        return;
    }
    ds->tag.kind = EPK_SESSION;
    ds->uid = uid;
    ds->svc = svc;
    ds->id = ++d->next_session_id;
    ds->s->index = (int)ds->id;
    __atomic_add_fetch(&svc->st.sessions_opened, 1, __ATOMIC_RELAXED);
    struct worker *w = least_loaded(d);
    log_debug("service %s: session %lu (protocol v%u) to worker %u", svc->name,
              (unsigned long)ds->id, cfg.version, w->index);
    worker_hand_over(w, ds);
}

static void hs_advance(struct daemon *d, struct hs_pending *h)
{
    for (;;) {
        int rc = hs_server_step(&h->hs);
        if (rc == HS_MAP) {
            struct accept_limits lim = {h->svc->allowed_dir, d->conf->max_pool_bytes};
            int mrc = accept_map(&h->hs, &d->reg, &lim, &h->pool, &h->qregion);
            hs_server_mapped(&h->hs, mrc == 0, mrc);
            continue;
        }
        if (rc == HS_DONE) {
            start_session(d, h);
            return;
        }
        if (rc == HS_WANT_READ || rc == HS_WANT_WRITE) {
            struct epoll_event ev = {.events = rc == HS_WANT_READ ? EPOLLIN : EPOLLOUT,
                                     .data.ptr = h};
            epoll_ctl(d->epfd, EPOLL_CTL_MOD, h->hs.fd, &ev);
            return;
        }
        log_warn("service %s: handshake refused: %s", h->svc->name,
                 h->hs.why[0] ? h->hs.why : shmipc_strerror(rc));
        __atomic_add_fetch(&h->svc->st.handshakes_failed, 1, __ATOMIC_RELAXED);
        hs_drop(d, h, 1);
        return;
    }
}

static void on_accept(struct daemon *d, struct service *svc)
{
    for (;;) {
        int fd = sock_accept(svc->lfd);
        if (fd < 0) {
            if (fd != -EAGAIN && fd != -ECONNABORTED)
                log_warn("service %s: accept: %s", svc->name, shmipc_strerror(fd));
            return;
        }
        if (total_sessions(d) + d->nhs >= d->conf->max_sessions) {
            log_warn("service %s: connection refused: %u sessions is the limit", svc->name,
                     d->conf->max_sessions);
            __atomic_add_fetch(&svc->st.refused, 1, __ATOMIC_RELAXED);
            close(fd);
            continue;
        }
        long long uid;
        char why[160];
        if (admit(d, svc, fd, &uid, why, sizeof(why)) < 0) {
            log_warn("service %s: connection refused: %s", svc->name, why);
            __atomic_add_fetch(&svc->st.refused, 1, __ATOMIC_RELAXED);
            close(fd);
            continue;
        }
        struct hs_pending *h = calloc(1, sizeof(*h));
        if (h == NULL) {
            uid_release(d, uid);
            close(fd);
            continue;
        }
        h->tag.kind = EPK_HANDSHAKE;
        h->svc = svc;
        h->uid = uid;
        region_init(&h->qregion);
        hs_server_init(&h->hs, fd, svc->addr.family == AF_UNIX,
                       sock_deadline(d->conf->handshake_timeout_ms));
        h->next = d->hs;
        d->hs = h;
        d->nhs++;
        if (ep_add(d, fd, EPOLLIN, h) < 0) {
            hs_drop(d, h, 1);
            continue;
        }
        hs_advance(d, h);
    }
}

static int expire_handshakes(struct daemon *d)
{
    uint64_t now = sock_now_ns(), next = UINT64_MAX;
    for (struct hs_pending *h = d->hs, *n; h != NULL; h = n) {
        n = h->next;
        if (h->hs.deadline_ns <= now)
            hs_advance(d, h);
        else if (h->hs.deadline_ns < next)
            next = h->hs.deadline_ns;
    }
    return next == UINT64_MAX ? 1000 : (int)((next - now) / 1000000 + 1);
}

/* ---- signals and admin ---- */

static void on_signal(struct daemon *d)
{
    struct signalfd_siginfo si;
    while (read(d->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            char *report = NULL;
            log_info("SIGHUP: reloading %s", d->conf_path);
            daemon_reload(d, &report);
            if (report != NULL)
                for (char *line = strtok(report, "\n"); line != NULL; line = strtok(NULL, "\n"))
                    log_info("%s", line);
            free(report);
            continue;
        }
        log_info("signal %u: stopping", si.ssi_signo);
        d->stopping = 1;
    }
}

/* One admin connection: a command line in, a reply out, closed. Bounded
 * by short deadlines so a stuck admin client cannot hold the master. */
static void on_admin(struct daemon *d)
{
    int fd;
    while ((fd = sock_accept(d->adminfd)) >= 0) {
        char line[256];
        size_t n = 0;
        uint64_t deadline = sock_deadline(200);
        while (n < sizeof(line) - 1 && memchr(line, '\n', n) == NULL) {
            ssize_t r = read(fd, line + n, sizeof(line) - 1 - n);
            if (r > 0) {
                n += (size_t)r;
                continue;
            }
            if (r == 0 || (errno != EAGAIN && errno != EINTR) || sock_now_ns() >= deadline)
                break;
            struct pollfd p = {fd, POLLIN, 0};
            poll(&p, 1, 20);
        }
        line[n] = '\0';
        char *nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        int stop = 0;
        char *reply = admin_command(d, line, &stop);
        if (reply != NULL) {
            sock_write_all(fd, reply, strlen(reply), sock_deadline(1000));
            free(reply);
        }
        close(fd);
        if (stop) {
            log_info("admin: stop requested");
            d->stopping = 1;
        }
    }
}

int daemon_run(struct daemon *d)
{
    struct epoll_event evs[64];
    unsigned draining = 0;
    while (!d->stopping) {
        int timeout = expire_handshakes(d);
        if (draining && timeout > 20)
            timeout = 20; /* old generations and removed services wait for us */
        int due = watch_tick(d);
        if (due >= 0 && due < timeout)
            timeout = due;
        int n = epoll_wait(d->epfd, evs, 64, timeout);
        if (n < 0 && errno != EINTR)
            return -errno;
        /* A reload (SIGHUP, admin) frees the handshakes of a removed
         * service, which later entries of evs[] may point at: after one,
         * poll again. Every fd here is level-triggered, so what is still
         * ready comes back, and what was dropped left the epoll set. */
        uint64_t reloads = d->reloads;
        for (int i = 0; i < n && !d->stopping && d->reloads == reloads; i++) {
            struct ep_tag *t = evs[i].data.ptr;
            switch (t->kind) {
            case EPK_LISTEN:
                on_accept(d, (struct service *)t);
                break;
            case EPK_HANDSHAKE:
                hs_advance(d, (struct hs_pending *)t);
                break;
            case EPK_SIGNAL:
                on_signal(d);
                break;
            case EPK_ADMIN:
                on_admin(d);
                break;
            case EPK_WATCH:
                watch_on_event(d);
                break;
            default:
                break;
            }
        }
        if (d->retiring != NULL || d->removed != NULL)
            draining = daemon_retire(d);
        else
            draining = 0;
    }
    return 0;
}

void master_drop_handshakes(struct daemon *d, struct service *svc)
{
    for (struct hs_pending *h = d->hs, *n; h != NULL; h = n) {
        n = h->next;
        if (h->svc == svc)
            hs_drop(d, h, 1);
    }
}

void daemon_stop_and_free(struct daemon *d)
{
    /* Stop accepting first, then let the workers drain. */
    for (unsigned i = 0; i < d->nsvcs; i++) {
        struct service *svc = d->svcs[i];
        if (svc->lfd >= 0) {
            epoll_ctl(d->epfd, EPOLL_CTL_DEL, svc->lfd, NULL);
            close(svc->lfd);
            unlink_own_socket(&svc->addr, svc->sock_ino);
            svc->lfd = -1;
        }
    }
    while (d->hs != NULL)
        hs_drop(d, d->hs, 1);
    /* A start that failed before the workers existed leaves d->workers
     * NULL while d->nworkers already holds the configured count. */
    unsigned nworkers = d->workers != NULL ? d->nworkers : 0;
    uint64_t deadline = sock_deadline(d->conf != NULL ? d->conf->drain_timeout_ms : 0);
    for (unsigned i = 0; i < nworkers; i++)
        worker_stop(&d->workers[i], deadline);
    for (unsigned i = 0; i < nworkers; i++)
        worker_join(&d->workers[i]);
    /* The workers ran every thread_fini on their way out. */
    while (d->retiring != NULL) {
        struct retiring *r = d->retiring;
        d->retiring = r->next;
        struct conf_ref *cref = r->g->host_ref;
        gen_unload(r->g);
        conf_ref_put(cref);
        free(r);
    }
    while (d->removed != NULL) {
        struct service *svc = d->removed;
        d->removed = svc->next_removed;
        svc->gen = NULL;
        service_free(d, svc);
    }
    for (unsigned i = 0; i < d->nsvcs; i++)
        service_free(d, d->svcs[i]);
    d->nsvcs = 0;
    if (d->adminfd >= 0) {
        close(d->adminfd);
        unlink_own_socket(&d->admin_addr, d->admin_ino);
    }
    watch_close(&d->watch);
    if (d->tmpdir[0] != '\0')
        rmdir(d->tmpdir);
    if (d->epfd >= 0)
        close(d->epfd);
    if (d->sigfd >= 0)
        close(d->sigfd);
    free(d->workers);
    free(d->uids);
    pthread_mutex_destroy(&d->uid_mu);
    conf_ref_put(d->cref);
}
