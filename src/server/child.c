/*
 * A worker process (isolation = "process"): shmipcd started again by the
 * master as `shmipcd --worker FD CONF SERVICE MASTER_PID GENERATION`. It
 * loads the service's plugin itself (init and thread_init run here, not in
 * the master), runs the same workers and serving loop as thread mode, and
 * takes its sessions from the master over the control socket FD (the
 * socket, pool and queue fds, which it maps itself). It dies with the
 * master (PR_SET_PDEATHSIG) and logs its own fatal signals with a
 * backtrace before dying of them.
 *
 * The one rule: nothing from the master is trusted more than a peer's
 * word: the fds are mapped with the same checks as in the master.
 */
#include "server/child.h"

#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "proto/sock.h"
#include "server/handler.h"
#include "server/proc.h"
#include "server/service.h"
#include "server/worker.h"
#include "shmipc/errors.h"

#define QUEUE_MAP_MAX (2 * (SHMIPC_QUEUE_HEADER_LEN + (size_t)QUEUE_MAX_CAP * SHMIPC_QUEUE_ELEM_LEN))
#define POOL_MAP_MIN (SHMIPC_POOL_HEADER_LEN + SHMIPC_LIST_HEADER_LEN + SHMIPC_SLICE_HEADER_LEN)
#define HELLO_MS 10000

static struct daemon child;
static int control_fd = -1;
static char svc_name[64];

/* ---- fatal signals ---- */

static void put(const char *s)
{
    ssize_t n = write(STDERR_FILENO, s, strlen(s));
    (void)n;
}

static void put_num(unsigned long v, int base)
{
    char buf[32];
    int i = (int)sizeof(buf);
    buf[--i] = '\0';
    do {
        buf[--i] = "0123456789abcdef"[v % (unsigned long)base];
        v /= (unsigned long)base;
    } while (v != 0 && i > 0);
    put(buf + i);
}

/* Async-signal-safe: write(2) and backtrace_symbols_fd only (backtrace
 * was warmed up at start). Then the signal does what it would have. */
static void on_fatal(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    put("shmipcd worker process ");
    put_num((unsigned long)getpid(), 10);
    put(" (service ");
    put(svc_name);
    put("): fatal signal ");
    put_num((unsigned long)sig, 10);
    put(" at address 0x");
    put_num((unsigned long)si->si_addr, 16);
    put("; backtrace:\n");
    void *frames[64];
    int n = backtrace(frames, 64);
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void fatal_handlers(void)
{
    static char altstack[64 * 1024];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
    sigaltstack(&ss, NULL);
    void *warm[2];
    backtrace(warm, 2);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaction(sigs[i], &sa, NULL);
}

/* ---- talking to the master ---- */

static void say(uint32_t type, int code, unsigned generation, const char *text)
{
    struct proc_msg m = {.type = type, .code = code, .generation = generation};
    snprintf(m.text, sizeof(m.text), "%s", text != NULL ? text : "");
    if (proc_send_msg(control_fd, &m, NULL, 0) < 0)
        _exit(1); /* the master is gone */
}

static void on_session_closed(struct daemon *d, struct dsession *ds)
{
    (void)d;
    struct proc_msg m = {.type = PM_CLOSED, .id = ds->id};
    proc_send_msg(control_fd, &m, NULL, 0); /* a gone master ends us anyway */
}

static void *map_page(int fd, size_t size)
{
    struct stat st;
    void *page = MAP_FAILED;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size >= size)
        page = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return page == MAP_FAILED ? NULL : page;
}

/* The first message: the service's shared page and this process's calls
 * page. 0 or -1. */
static int hello(struct proc_shared **shared, struct proc_calls **calls)
{
    struct pollfd p = {control_fd, POLLIN, 0};
    if (poll(&p, 1, HELLO_MS) != 1)
        return -1;
    struct proc_msg m;
    int fds[3], nfds;
    if (proc_recv_msg(control_fd, &m, fds, 3, &nfds) < 0 || m.type != PM_HELLO || nfds != 2) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        return -1;
    }
    *shared = map_page(fds[0], sizeof(**shared));
    *calls = map_page(fds[1], sizeof(**calls));
    return *shared != NULL && *calls != NULL ? 0 : -1;
}

/* ---- sessions handed over ---- */

/* A peer file the master asked us to remove when we unmap it. */
static void arm_unlink(struct region *r, const char *path, uint32_t dir_len)
{
    size_t n = strnlen(path, sizeof(r->peer_path));
    if (n == 0 || n >= sizeof(r->peer_path) || path[0] != '/' || dir_len >= n)
        return;
    memcpy(r->peer_path, path, n + 1);
    r->peer_dir_len = dir_len;
    r->flags |= REGION_UNLINK_PEER;
}

static int map_pool(struct daemon *d, int fd, struct pool_ref **out)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if ((*out = pool_registry_find(&d->reg, st.st_dev, st.st_ino)) != NULL) {
        close(fd);
    } else {
        struct region r;
        region_init(&r);
        int rc = region_map_fd(&r, fd, POOL_MAP_MIN, d->conf->max_pool_bytes, REGION_GUARD);
        if (rc == 0)
            rc = pool_ref_new(&r, 0, NULL, 0, &d->reg, out);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void take_session(struct daemon *d, struct service *svc, const struct proc_msg *m,
                         int *fds, int nfds)
{
    if (nfds != 3) {
        log_error("service %s: a session came with %d fds, not 3: dropped", svc->name, nfds);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        return;
    }
    struct pool_ref *pool;
    struct region q;
    region_init(&q);
    int rc = map_pool(d, fds[1], &pool);
    if (rc < 0) {
        close(fds[0]);
        close(fds[2]);
    } else if ((rc = region_map_fd(&q, fds[2], 2 * SHMIPC_QUEUE_HEADER_LEN, QUEUE_MAP_MAX,
                                   REGION_GUARD)) < 0) {
        close(fds[0]);
        pool_ref_put(pool);
    }
    if (rc < 0) {
        log_warn("service %s: session %lu: mapping its memory: %s", svc->name,
                 (unsigned long)m->id, shmipc_strerror(rc));
        on_session_closed(d, &(struct dsession){.id = m->id});
        return;
    }
    if (m->queue_path[0] != '\0')
        arm_unlink(&q, m->queue_path, m->queue_dir_len);
    struct session_cfg cfg =
        serve_session_cfg(service_settings(d, svc), (uint8_t)m->version, d, (int)m->id);
    struct session *s;
    struct dsession *ds = calloc(1, sizeof(*ds));
    if (ds == NULL || (rc = session_new(&cfg, fds[0], pool, &q, &s)) < 0) {
        if (ds == NULL) {
            close(fds[0]);
            pool_ref_put(pool);
            region_close(&q);
        }
        free(ds);
        log_warn("service %s: session %lu could not start here", svc->name, (unsigned long)m->id);
        on_session_closed(d, &(struct dsession){.id = m->id});
        return;
    }
    ds->conn.s = s;
    ds->svc = svc;
    ds->id = m->id;
    ds->uid = -1; /* counted by the master */
    worker_hand_over(pool_least_loaded(pool_of(d, svc)), ds);
}

/* ---- state across a reload ---- */

/* PM_SAVE: the plugin's save hook; the bytes go back in a memfd. */
static void save_state(struct service *svc)
{
    char err[512] = "";
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = gen_save(svc->gen, &data, &len, err, sizeof(err));
    int fd = rc == 0 ? memfd_create("shmipcd-state", MFD_CLOEXEC) : -1;
    if (rc == 0 && fd < 0) {
        rc = -errno;
        snprintf(err, sizeof(err), "memfd_create: %s", strerror(errno));
    }
    for (size_t at = 0; rc == 0 && at < len;) {
        ssize_t n = write(fd, data + at, len - at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : -EIO;
            snprintf(err, sizeof(err), "writing the saved state: %s", strerror(-rc));
            break;
        }
        at += (size_t)n;
    }
    free(data);
    struct proc_msg m = {.type = PM_SAVED, .code = rc, .id = len};
    snprintf(m.text, sizeof(m.text), "%s", err);
    if (proc_send_msg(control_fd, &m, rc == 0 ? &fd : NULL, rc == 0 ? 1 : 0) < 0)
        log_warn("service %s: sending the saved state failed", svc->name);
    if (fd >= 0)
        close(fd);
}

/* PM_RESTORE: the bytes another process saved, for this generation's
 * restore hook, before any session comes. */
static void restore_state(struct service *svc, const struct proc_msg *m, int *fds, int nfds)
{
    char err[512] = "";
    int rc = 0;
    void *data = NULL;
    struct stat st;
    size_t len = (size_t)m->id;
    if (nfds != 1) {
        rc = -EPROTO;
        snprintf(err, sizeof(err), "the saved state came with %d fds, not 1", nfds);
    } else if (fstat(fds[0], &st) < 0 || st.st_size < 0 || (uint64_t)st.st_size < m->id) {
        rc = -EPROTO;
        snprintf(err, sizeof(err), "the saved state is shorter than the %llu bytes announced",
                 (unsigned long long)m->id);
    } else if (len > 0 &&
               (data = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fds[0], 0)) == MAP_FAILED) {
        rc = -errno;
        data = NULL;
        snprintf(err, sizeof(err), "mapping the saved state: %s", strerror(errno));
    }
    if (rc == 0)
        rc = gen_restore(svc->gen, m->generation, data, len, err, sizeof(err));
    if (data != NULL)
        munmap(data, len);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    if (rc == 0)
        log_info("service %s: state of generation %u restored (%zu bytes)", svc->name,
                 m->generation, len);
    say(PM_RESTORED, rc, svc->gen->number, err);
}

/* ---- the process ---- */

static int start(struct daemon *d, const char *conf, const char *name, unsigned gen,
                 struct proc_shared *shared, struct proc_calls *calls, struct service **out,
                 char *err, size_t errlen)
{
    memset(d, 0, sizeof(*d));
    d->epfd = d->sigfd = d->admin.fd = -1;
    pool_registry_init(&d->reg);
    host_api_init(&d->host);
    uid_counts_init(&d->uids);
    d->calls = calls->calls;
    d->ncalls = PROC_CALLS;
    d->session_closed = on_session_closed;
    d->worker_process = 1;
    d->started_ns = sock_now_ns();
    int rc = daemon_load_conf(d, conf, err, errlen);
    if (rc < 0)
        return rc;
    const struct svc_conf *sc = NULL;
    for (unsigned i = 0; i < d->conf->nservices; i++)
        if (strcmp(d->conf->services[i].name, name) == 0)
            sc = &d->conf->services[i];
    if (sc == NULL || sc->isolation != ISOLATION_PROCESS) {
        snprintf(err, errlen, "service '%s' is not a process-mode service of %s any more", name,
                 conf);
        return -ENOENT;
    }
    snprintf(d->tmpdir, sizeof(d->tmpdir), "%s/shmipcd-%d-XXXXXX", proc_tmp_base(),
             (int)getpid());
    if (mkdtemp(d->tmpdir) == NULL) {
        snprintf(err, errlen, "mkdtemp(%s): %s", d->tmpdir, strerror(errno));
        d->tmpdir[0] = '\0';
        return -errno;
    }
    /* Its threads: `workers` of the service, else the global count. */
    d->pool.n = sc->workers ? 0 : d->conf->workers;
    struct service *svc = service_create(d, sc, err, errlen);
    if (svc == NULL)
        return -EINVAL;
    svc->isolation = ISOLATION_THREAD; /* here, it runs in threads */
    svc->st = &shared->st;
    svc->wst = shared->wst; /* per-worker figures: counters that outlive us, gauges ours */
    svc->wlive = calls->live;
    svc->nwst = pool_of(d, svc)->n < PROC_CALLS ? pool_of(d, svc)->n : PROC_CALLS;
    proc_shared_note_workers(shared, svc->nwst);
    svc->gen->number = gen;
    d->svcs[d->nsvcs++] = svc;
    if (svc->own.n > 0)
        rc = service_start_workers(d, svc);
    else
        rc = pool_start(&d->pool, d, d->conf->workers, "process");
    if (rc == 0)
        rc = workers_exec(d, WCMD_THREAD_INIT, svc->gen, svc, err, errlen);
    else
        snprintf(err, errlen, "starting the workers: %s", shmipc_strerror(rc));
    *out = svc;
    return rc;
}

/* Drains and exits. With a replacement (epoch non-zero) every session is
 * told HotRestart: its client opens a new session (the replacement serves
 * it), lets its streams here finish and acks, and the session closes;
 * until every one did or the deadline passed. Then what is queued is
 * answered and the rest closed. Exits 0, or 1 when a handler never
 * returned (its thread is left, so _exit). */
static void finish(struct daemon *d, struct service *svc, unsigned drain_ms, uint64_t epoch)
{
    uint64_t deadline = sock_deadline((int)drain_ms);
    struct worker_pool *p = pool_of(d, svc);
    if (epoch != 0)
        pool_hot_restart(p, epoch);
    while (epoch != 0 && pool_sessions(p) > 0 && sock_now_ns() < deadline) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    pool_ask_stop(p, deadline);
    if (pool_join_until(p, deadline + 500u * 1000000u) != 0)
        _exit(1);
    if (svc->gen != NULL) {
        service_unload_gen(svc->gen);
        svc->gen = NULL;
    }
    if (d->tmpdir[0] != '\0')
        rmdir(d->tmpdir);
    _exit(0);
}

int child_main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "shmipcd --worker: started by shmipcd itself, not by hand\n");
        return 2;
    }
    control_fd = atoi(argv[2]);
    const char *conf = argv[3], *name = argv[4];
    pid_t master = (pid_t)atoi(argv[5]);
    unsigned gen = (unsigned)strtoul(argv[6], NULL, 10);
    snprintf(svc_name, sizeof(svc_name), "%s", name);
    /* Tied to the master's thread that spawned us: the master thread
     * lives as long as the master. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != master)
        return 1;
    prctl(PR_SET_NAME, "shmipcd-worker");
    fcntl(control_fd, F_SETFD, FD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, SIG_IGN); /* the master stops us: PM_DRAIN */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    fatal_handlers();
    struct proc_shared *shared = NULL;
    struct proc_calls *calls = NULL;
    if (hello(&shared, &calls) < 0) {
        fprintf(stderr, "shmipcd worker process %d: no word from the master\n", (int)getpid());
        return 1;
    }
    char err[1024] = "";
    struct service *svc = NULL;
    struct daemon *d = &child;
    int rc = start(d, conf, name, gen, shared, calls, &svc, err, sizeof(err));
    if (rc < 0) {
        say(PM_FAIL, rc, gen, err[0] ? err : shmipc_strerror(rc));
        if (d->tmpdir[0] != '\0')
            rmdir(d->tmpdir);
        return 1;
    }
    char what[160];
    snprintf(what, sizeof(what), "%s %s", svc->gen->desc->name, svc->gen->desc->version);
    say(PM_READY, 0, gen, what);
    for (;;) {
        struct pollfd p = {control_fd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0 && errno != EINTR)
            finish(d, svc, 0, 0);
        struct proc_msg m;
        int fds[3], nfds;
        rc = proc_recv_msg(control_fd, &m, fds, 3, &nfds);
        if (rc == -EAGAIN)
            continue;
        if (rc < 0) /* the master is gone */
            finish(d, svc, 0, 0);
        if (m.type == PM_SESSION) {
            take_session(d, svc, &m, fds, nfds);
            continue;
        }
        if (m.type == PM_RESTORE) {
            restore_state(svc, &m, fds, nfds);
            continue;
        }
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (m.type == PM_SAVE)
            save_state(svc);
        else if (m.type == PM_DRAIN)
            finish(d, svc, m.drain_ms, m.code == 1 ? (m.id != 0 ? m.id : 1) : 0);
    }
}
