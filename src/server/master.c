/*
 * shmipcd's master thread: configuration, plugins, the services'
 * listeners, admission (limits, allowlists, sessions per uid), signals
 * (through a signalfd, so handlers never run in odd places) and the admin
 * socket. Handshakes run in the server core (session/accept.h). The one
 * rule: nothing here waits on a client; a finished session is handed to a
 * worker at once.
 */
#include "server/master.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "server/admin.h"
#include "server/handler.h"
#include "server/metrics.h"
#include "server/notify.h"
#include "server/proc.h"
#include "server/reload.h"
#include "server/service.h"
#include "server/slowlog.h"
#include "server/upgrade.h"
#include "server/worker.h"
#include "session/accept.h"
#include "shmipc/errors.h"

static const struct serve_accept_ops accept_ops;

static int ep_add(struct daemon *d, int fd, uint32_t events, void *tag)
{
    struct epoll_event ev = {.events = events, .data.ptr = tag};
    return epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static int start_services(struct daemon *d, char *err, size_t errlen)
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
    d->admin.fd = -1;
    if (d->conf->admin == NULL)
        return 0;
    struct sock_addr a;
    int rc = sock_addr_parse(d->conf->admin, &a);
    if (rc == 0 && a.family != AF_UNIX)
        rc = -EINVAL; /* never on a network */
    int inherited = rc == 0 ? upgrade_take_listener(d, d->conf->admin) : -1;
    if (rc == 0 && inherited >= 0 && (rc = serve_listen_fd(&d->admin, d->conf->admin, inherited)) < 0)
        close(inherited);
    else if (rc == 0 && inherited < 0)
        rc = serve_listen(&d->admin, d->conf->admin, d->conf->admin_mode, 16);
    if (rc == 0) {
        d->admin.tag.kind = EPK_ADMIN;
        rc = ep_add(d, d->admin.fd, EPOLLIN, &d->admin.tag);
    }
    pid_t owner;
    if (rc == -EADDRINUSE && sock_unix_owner(&a, &owner) > 0)
        snprintf(err, errlen, "admin socket %s is served by pid %d (another shmipcd?)", a.text,
                 (int)owner);
    else if (rc < 0)
        snprintf(err, errlen, "admin socket %s: %s", d->conf->admin, shmipc_strerror(rc));
    return rc < 0 ? rc : 0;
}

/* One daemon per configuration: a lock on the pid file (the admin
 * socket's directory, or pid_file), which names the holder when taken. */
static int lock_pid_file(struct daemon *d, char *err, size_t errlen)
{
    d->pid_fd = -1;
    const char *pf = d->conf->pid_file;
    char path[sizeof(d->pid_path)];
    if (pf == NULL) {
        struct sock_addr a;
        if (d->conf->admin == NULL || sock_addr_parse(d->conf->admin, &a) < 0 ||
            a.family != AF_UNIX)
            return 0;
        snprintf(path, sizeof(path), "%s", ((const struct sockaddr_un *)&a.ss)->sun_path);
        char *slash = strrchr(path, '/');
        if (slash == NULL)
            return 0;
        snprintf(slash + 1, sizeof(path) - (size_t)(slash + 1 - path), "shmipcd.pid");
        pf = path;
    }
    int fd = open(pf, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "pid file %s: %s", pf, strerror(errno));
        return -errno;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        char buf[32] = "";
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        buf[n > 0 ? n : 0] = '\0';
        close(fd);
        if (e == EWOULDBLOCK) {
            snprintf(err, errlen, "%s is held by pid %ld: another shmipcd serves this configuration",
                     pf, strtol(buf, NULL, 10));
            return -EADDRINUSE;
        }
        snprintf(err, errlen, "locking %s: %s", pf, strerror(e));
        return -e;
    }
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    struct stat st;
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n || fstat(fd, &st) < 0) {
        snprintf(err, errlen, "writing %s: %s", pf, strerror(errno));
        close(fd);
        return -EIO;
    }
    d->pid_fd = fd;
    d->pid_ino = st.st_ino;
    snprintf(d->pid_path, sizeof(d->pid_path), "%s", pf);
    return 0;
}

static void unlock_pid_file(struct daemon *d)
{
    if (d->pid_fd < 0)
        return;
    struct stat st;
    if (stat(d->pid_path, &st) == 0 && st.st_ino == d->pid_ino)
        unlink(d->pid_path); /* ours still: a successor made its own otherwise */
    close(d->pid_fd);
    d->pid_fd = -1;
}

/* An upgrade's successor: the old daemon closes the pid file as it says
 * GO; a moment later the lock is free. */
static int lock_pid_file_patient(struct daemon *d, char *err, size_t errlen)
{
    uint64_t dl = sock_deadline(5000);
    int rc;
    while ((rc = lock_pid_file(d, err, errlen)) == -EADDRINUSE && sock_now_ns() < dl) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return rc;
}

/* metrics_listen: GET /metrics for a Prometheus server. */
static int open_metrics(struct daemon *d, char *err, size_t errlen)
{
    if (d->conf->metrics_listen == NULL)
        return 0;
    int inherited = upgrade_take_listener(d, d->conf->metrics_listen), rc;
    if (inherited >= 0 && (rc = serve_listen_fd(&d->metrics, d->conf->metrics_listen, inherited)) < 0)
        close(inherited);
    else if (inherited < 0)
        rc = serve_listen(&d->metrics, d->conf->metrics_listen, 0600, 16);
    if (rc == 0) {
        d->metrics.tag.kind = EPK_METRICS;
        rc = ep_add(d, d->metrics.fd, EPOLLIN, &d->metrics.tag);
    }
    if (rc < 0) {
        snprintf(err, errlen, "metrics_listen %s: %s", d->conf->metrics_listen,
                 shmipc_strerror(rc));
        return rc;
    }
    log_info("metrics on %s (GET /metrics)", d->metrics.addr.text);
    return 0;
}

static void on_metrics(struct daemon *d)
{
    int fd;
    while ((fd = sock_accept(d->metrics.fd)) >= 0) {
        metrics_http(d, fd);
        close(fd);
    }
}

int daemon_start(struct daemon *d, const char *conf_path, char *err, size_t errlen)
{
    memset(d, 0, sizeof(*d));
    d->epfd = d->sigfd = d->admin.fd = d->pid_fd = d->metrics.fd = -1;
    upgrade_init(d); /* first: a start that fails says so to the old daemon */
    watch_init(&d->watch);
    uid_counts_init(&d->uids);
    d->started_ns = sock_now_ns();
    pool_registry_init(&d->reg);
    host_api_init(&d->host);
    int rc = daemon_load_conf(d, conf_path, err, errlen);
    if (rc < 0)
        return rc;
    /* Each memfd session holds about 3 fds: 1,000 sessions need more than
     * the usual soft limit of 1024. */
    unsigned long long nofile_before, nofile_after;
    if (sock_raise_nofile(&nofile_before, &nofile_after) == 0 && nofile_after != nofile_before)
        log_info("open files limit raised from %llu to %llu", nofile_before, nofile_after);
    d->pool.n = d->conf->workers;
    /* A successor locks it once the old daemon lets go (upgrade.h). */
    if (!upgrade_starting(d) && (rc = lock_pid_file(d, err, errlen)) < 0)
        return rc;
    snprintf(d->exe, sizeof(d->exe), "/proc/self/exe"); /* even if replaced on disk */
    ssize_t en = readlink("/proc/self/exe", d->exe_path, sizeof(d->exe_path) - 1);
    d->exe_path[en > 0 ? en : 0] = '\0';
    proc_remove_stale_dirs();
    snprintf(d->tmpdir, sizeof(d->tmpdir), "%s/shmipcd-%d-XXXXXX", proc_tmp_base(),
             (int)getpid());
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
    sigaddset(&set, SIGCHLD); /* worker processes */
    sigaddset(&set, SIGUSR2); /* upgrade */
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
    serve_accept_init(&d->acc, d->epfd, &d->reg, &accept_ops, d);
    if ((rc = start_services(d, err, errlen)) < 0 || (rc = open_admin(d, err, errlen)) < 0 ||
        (rc = open_metrics(d, err, errlen)) < 0)
        return rc;
    slowlog_init();
    if ((rc = pool_start(&d->pool, d, d->conf->workers, "shared")) < 0) {
        snprintf(err, errlen, "starting the workers: %s", shmipc_strerror(rc));
        return rc;
    }
    for (unsigned i = 0; i < d->nsvcs; i++) {
        struct service *svc = d->svcs[i];
        if ((rc = service_start_workers(d, svc)) < 0) {
            snprintf(err, errlen, "service '%s': starting its workers: %s", svc->name,
                     shmipc_strerror(rc));
            return rc;
        }
    }
    for (unsigned i = 0; i < d->nsvcs; i++) {
        char werr[256];
        if ((rc = workers_exec(d, WCMD_THREAD_INIT, d->svcs[i]->gen, d->svcs[i], werr,
                               sizeof(werr))) <
            0) {
            snprintf(err, errlen, "service '%s': %s", d->svcs[i]->name, werr);
            return rc;
        }
    }
    for (unsigned i = 0; i < d->nsvcs; i++)
        if (d->svcs[i]->isolation == ISOLATION_PROCESS &&
            (rc = proc_service_start(d, d->svcs[i], err, errlen)) < 0)
            return rc;
    if ((rc = watch_refresh(d)) < 0) {
        snprintf(err, errlen, "inotify: %s", shmipc_strerror(rc));
        return rc;
    }
    if (upgrade_starting(d)) {
        upgrade_started(d); /* READY to the old daemon; GO back */
        if ((rc = lock_pid_file_patient(d, err, errlen)) < 0)
            return rc;
    }
    log_info("shmipcd %d: %u services, %u workers", (int)getpid(), d->nsvcs, d->pool.n);
    sd_notify_text("READY=1\nMAINPID=%d\nSTATUS=%u services, %u workers", (int)getpid(), d->nsvcs,
                   d->pool.n);
    return 0;
}

/* ---- admission and sessions (the server core's callbacks) ---- */

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
    int have =
        svc->l.addr.family == AF_UNIX && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
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
    if (have && uid_acquire(&d->uids, cred.uid, d->conf->max_sessions_per_uid) < 0) {
        snprintf(why, whylen, "peer uid %u has %u sessions, the limit", cred.uid,
                 d->conf->max_sessions_per_uid);
        return -EUSERS;
    }
    if (have)
        *uid = cred.uid;
    return 0;
}

unsigned daemon_sessions(struct daemon *d)
{
    unsigned n = pool_sessions(&d->pool);
    for (unsigned i = 0; i < d->nsvcs; i++)
        n += pool_sessions(&d->svcs[i]->own);
    for (struct service *svc = d->removed; svc != NULL; svc = svc->next_removed)
        n += pool_sessions(&svc->own);
    return n + proc_sessions(d);
}

static int on_admit(void *owner, struct serve_listener *l, int fd, long long *uid, char *why,
                    size_t whylen)
{
    struct daemon *d = owner;
    struct service *svc = l->ctx;
    int rc;
    const char *no;
    if (daemon_sessions(d) + d->acc.nhs >= d->conf->max_sessions) {
        snprintf(why, whylen, "%u sessions is the limit", d->conf->max_sessions);
        rc = -EMFILE;
    } else if (svc->isolation == ISOLATION_PROCESS && (no = proc_refusal(svc)) != NULL) {
        snprintf(why, whylen, "%s", no);
        rc = -EAGAIN;
    } else {
        rc = admit(d, svc, fd, uid, why, whylen);
    }
    if (rc < 0) {
        log_warn("service %s: connection refused: %s", svc->name, why);
        __atomic_add_fetch(&svc->st->refused, 1, __ATOMIC_RELAXED);
        enum refusal r = rc == -EMFILE    ? REFUSED_MAX_SESSIONS
                         : rc == -EACCES  ? REFUSED_ALLOWLIST
                         : rc == -EUSERS  ? REFUSED_UID_LIMIT
                                          : REFUSED_UNAVAILABLE;
        __atomic_add_fetch(&svc->st->refused_by[r], 1, __ATOMIC_RELAXED);
    }
    return rc;
}

static void on_started(void *owner, struct serve_listener *l, long long uid, struct session *s)
{
    struct daemon *d = owner;
    struct service *svc = l->ctx;
    if (svc->isolation == ISOLATION_PROCESS) {
        uint64_t id = (uint64_t)(unsigned)s->index;
        __atomic_add_fetch(&svc->st->sessions_opened, 1, __ATOMIC_RELAXED);
        int rc = proc_hand_over(d, svc, uid, s, id);
        if (rc < 0) {
            log_warn("service %s: session %lu not handed over: %s", svc->name,
                     (unsigned long)id, shmipc_strerror(rc));
            __atomic_add_fetch(&svc->st->sessions_closed, 1, __ATOMIC_RELAXED);
            uid_release(&d->uids, uid);
        }
        return;
    }
    struct dsession *ds = calloc(1, sizeof(*ds));
    if (ds == NULL) {
        session_release_streams(s);
        session_put(s);
        uid_release(&d->uids, uid);
        return;
    }
    ds->conn.s = s;
    ds->uid = uid;
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    ds->pid = svc->l.addr.family == AF_UNIX &&
                      getsockopt(s->fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0
                  ? cred.pid
                  : -1;
    ds->started_ns = sock_now_ns();
    ds->svc = svc;
    ds->id = (uint64_t)(unsigned)s->index; /* the core numbers sessions; logs agree */
    __atomic_add_fetch(&svc->st->sessions_opened, 1, __ATOMIC_RELAXED);
    struct worker *w = pool_least_loaded(pool_of(d, svc));
    log_debug("service %s: session %lu (protocol v%u) to worker %u", svc->name,
              (unsigned long)ds->id, s->cfg.version, w->index);
    worker_hand_over(w, ds);
}

static void on_ended(void *owner, struct serve_listener *l, long long uid, int rc, const char *why)
{
    struct daemon *d = owner;
    struct service *svc = l->ctx;
    uid_release(&d->uids, uid); /* a session carries it on otherwise */
    if (rc == 0)
        return; /* dropped: the service or the daemon goes */
    log_warn("service %s: handshake refused: %s", svc->name, why);
    __atomic_add_fetch(&svc->st->handshakes_failed, 1, __ATOMIC_RELAXED);
}

static const struct serve_accept_ops accept_ops = {on_admit, on_started, on_ended};

/* ---- signals and admin ---- */

static void on_signal(struct daemon *d)
{
    struct signalfd_siginfo si;
    while (read(d->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            reload_and_log(d, "SIGHUP", NULL);
            continue;
        }
        if (si.ssi_signo == SIGCHLD) {
            upgrade_reap(d); /* an upgrade's new daemon that did not make it */
            proc_on_sigchld(d);
            continue;
        }
        if (si.ssi_signo == SIGUSR2) {
            upgrade_begin(d, NULL, -1);
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
    while ((fd = sock_accept(d->admin.fd)) >= 0) {
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
        if (strcmp(line, "upgrade") == 0 || strncmp(line, "upgrade --binary ", 17) == 0) {
            upgrade_begin(d, line[7] != '\0' ? line + 17 : NULL, fd); /* answers later */
            continue;
        }
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
        int timeout = serve_accept_expire(&d->acc);
        if (draining && timeout > 20)
            timeout = 20; /* old generations and removed services wait for us */
        int proc_due = proc_tick(d);
        if (proc_due >= 0 && proc_due < timeout)
            timeout = proc_due;
        int up_due =
            upgrade_tick(d, upgrade_handing_over(d) ? daemon_sessions(d) + d->acc.nhs : 0);
        if (up_due >= 0 && up_due < timeout)
            timeout = up_due;
        if (d->stopping)
            break;
        int slow_due = slowlog_check(d);
        if (slow_due >= 0 && slow_due < timeout)
            timeout = slow_due;
        int reload_due;
        int due = watch_due(&d->watch, &reload_due);
        if (reload_due)
            reload_and_log(d, "watch", NULL);
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
            struct serve_tag *t = evs[i].data.ptr;
            switch (t->kind) {
            case SERVE_LISTENER: {
                struct serve_listener *l = (struct serve_listener *)t;
                serve_accept_listener(&d->acc, l, service_settings(d, l->ctx));
                break;
            }
            case SERVE_HANDSHAKE:
                serve_accept_step(&d->acc, (struct serve_hs *)t);
                break;
            case EPK_SIGNAL:
                on_signal(d);
                break;
            case EPK_ADMIN:
                on_admin(d);
                break;
            case EPK_METRICS:
                on_metrics(d);
                break;
            case EPK_PROC:
                proc_on_event(d, (struct wproc *)t);
                break;
            case EPK_WATCH:
                watch_on_event(d);
                break;
            case EPK_UPGRADE:
                upgrade_on_event(d, daemon_sessions(d));
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

/* Workers left running a handler that never returned: what stays loaded
 * stays (their plugins' code), the private plugin copies are unlinked so
 * nothing is left in /tmp, and the process is to exit at once. */
static void abandon(struct daemon *d)
{
    for (unsigned i = 0; i < d->nsvcs; i++)
        if (d->svcs[i]->gen != NULL && d->svcs[i]->gen->private_path != NULL)
            unlink(d->svcs[i]->gen->private_path);
    for (struct retiring *r = d->retiring; r != NULL; r = r->next)
        if (r->g->private_path != NULL)
            unlink(r->g->private_path);
    serve_listener_close(&d->admin);
    unlock_pid_file(d);
    if (d->tmpdir[0] != '\0')
        rmdir(d->tmpdir);
}

int daemon_stop_and_free(struct daemon *d)
{
    if (!d->up.handing_over) /* else systemd follows the successor */
        sd_notify_text("STOPPING=1");
    /* Stop accepting first, then let the workers drain. */
    for (unsigned i = 0; i < d->nsvcs; i++) {
        struct service *svc = d->svcs[i];
        if (svc->l.fd >= 0) {
            epoll_ctl(d->epfd, EPOLL_CTL_DEL, svc->l.fd, NULL);
            serve_listener_close(&svc->l);
        }
    }
    serve_accept_drop(&d->acc, NULL);
    /* Every pool drains at once (a start that failed before the workers
     * existed leaves pool.w NULL). */
    uint64_t deadline = sock_deadline(d->conf != NULL ? d->conf->drain_timeout_ms : 0);
    pool_ask_stop(&d->pool, deadline);
    for (unsigned i = 0; i < d->nsvcs; i++) {
        pool_ask_stop(&d->svcs[i]->own, deadline);
        proc_service_stop(d, d->svcs[i], deadline);
    }
    for (struct service *svc = d->removed; svc != NULL; svc = svc->next_removed)
        pool_ask_stop(&svc->own, deadline);
    /* A handler that never returns must not hold the stop: past the
     * deadline (and a moment for the last answers) it is abandoned. */
    uint64_t join_by = deadline + 500u * 1000000u;
    int stuck = pool_join_until(&d->pool, join_by);
    for (unsigned i = 0; i < d->nsvcs; i++)
        stuck += pool_join_until(&d->svcs[i]->own, join_by);
    for (struct service *svc = d->removed; svc != NULL; svc = svc->next_removed)
        stuck += pool_join_until(&svc->own, join_by);
    proc_wait_all(d, join_by); /* worker processes drain on their own */
    if (stuck > 0) {
        abandon(d);
        return 1;
    }
    int open = 0;
    for (unsigned i = 0; i < d->nsvcs; i++)
        open |= d->svcs[i]->gen != NULL && __atomic_load_n(&d->svcs[i]->gen->refs,
                                                           __ATOMIC_ACQUIRE) > 1;
    for (struct retiring *r = d->retiring; r != NULL; r = r->next)
        open |= __atomic_load_n(&r->g->refs, __ATOMIC_ACQUIRE) > 0;
    if (open) {
        /* Deferred answers still held by plugins: their generations stay. */
        log_warn("stop: deferred answers were abandoned; their plugins stay loaded to the end");
        abandon(d);
        return 1;
    }
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
    serve_listener_close(&d->admin);
    serve_listener_close(&d->metrics);
    watch_close(&d->watch);
    if (d->tmpdir[0] != '\0')
        rmdir(d->tmpdir);
    if (d->epfd >= 0)
        close(d->epfd);
    if (d->sigfd >= 0)
        close(d->sigfd);
    uid_counts_free(&d->uids);
    unlock_pid_file(d);
    conf_ref_put(d->cref);
    return 0;
}
