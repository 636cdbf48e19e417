/*
 * Worker processes, master side (see proc.h). The one rule: the master
 * never waits on a worker process except where a reload or a start needs
 * its answer (bounded by PROC_READY_MS); everything else (reaping,
 * respawns, kills) runs from its event loop.
 */
#include "server/proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/log.h"
#include "proto/sock.h"
#include "server/strbuf.h"
#include "shmipc/errors.h"

extern char **environ;

#define PROC_READY_MS 10000   /* a new process to load its plugin and say so */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000
#define SERVED_OK_NS 500000000ull /* ready this long: no backoff */
#define CRASH_WINDOW_NS (60ull * 1000000000u)
#define RSS_CHECK_MS 1000

/* ---- messages ---- */

int proc_send_msg(int fd, const struct proc_msg *m, const int *fds, int nfds)
{
    struct iovec iov = {(void *)m, sizeof(*m)};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 3)];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n;
    do
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof(*m) ? 0 : n < 0 ? -errno : -EIO;
}

/* One message; fds received (up to max) go to fds[], *nfds says how many.
 * 0, SHMIPC_ECLOSED at the end, -EAGAIN, or a code (every fd closed). */
int proc_recv_msg(int fd, struct proc_msg *m, int *fds, int max, int *nfds)
{
    struct iovec iov = {m, sizeof(*m)};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 3)];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                        .msg_controllen = sizeof(u.buf)};
    *nfds = 0;
    ssize_t n;
    do
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int got[8];
        memcpy(got, CMSG_DATA(c), sizeof(int) * (size_t)(k < 8 ? k : 8));
        for (int i = 0; i < k && i < 8; i++) {
            if (*nfds < max)
                fds[(*nfds)++] = got[i];
            else
                close(got[i]);
        }
    }
    if (n == 0)
        return SHMIPC_ECLOSED;
    if (n != (ssize_t)sizeof(*m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        for (int i = 0; i < *nfds; i++)
            close(fds[i]);
        *nfds = 0;
        return SHMIPC_EPROTO;
    }
    m->text[sizeof(m->text) - 1] = '\0';
    return 0;
}

/* ---- processes ---- */

static void unlink_proc(struct daemon *d, struct wproc *w)
{
    for (struct wproc **pp = &d->procs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            return;
        }
    }
}

static void close_control(struct daemon *d, struct wproc *w)
{
    if (w->fd < 0)
        return;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    close(w->fd);
    w->fd = -1;
}

/* A fresh MAP_SHARED memfd of `size` bytes: its fd, mapping in *out. */
static int shared_map(const char *name, size_t size, void **out)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)size) == 0)
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int err = -errno;
        close(fd);
        return err;
    }
    *out = p;
    return fd;
}

static int shared_page(struct service *svc)
{
    if (svc->shared != NULL)
        return 0;
    void *p;
    int fd = shared_map("shmipcd-service", sizeof(struct proc_shared), &p);
    if (fd < 0)
        return fd;
    svc->shared = p;
    svc->shared_fd = fd;
    svc->shared->st = *svc->st; /* counters so far (a service turned process-mode) */
    svc->st = &svc->shared->st;
    return 0;
}

int proc_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
               char *const argv[], char *const envp[])
{
    /* The child starts with no signal blocked (the master blocks its
     * signals for its signalfd). */
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
    int rc = posix_spawn(pid, path, fa, &at, argv, envp);
    posix_spawnattr_destroy(&at);
    return rc;
}

/* Starts a process for svc's generation `gen`; it says PM_READY or
 * PM_FAIL on its control socket. */
static struct wproc *spawn(struct daemon *d, struct service *svc, unsigned gen, char *err,
                           size_t errlen)
{
    struct wproc *w = calloc(1, sizeof(*w));
    int sv[2] = {-1, -1};
    if (w == NULL || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(err, errlen, "socketpair: %s", strerror(errno));
        free(w);
        return NULL;
    }
    char fdarg[16], master[24], genarg[16];
    snprintf(fdarg, sizeof(fdarg), "%d", 3);
    snprintf(master, sizeof(master), "%d", (int)getpid());
    snprintf(genarg, sizeof(genarg), "%u", gen);
    char *argv[] = {"shmipcd",   "--worker", fdarg, d->conf_path, svc->name,
                    master,      genarg,     NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3); /* dup2 clears close-on-exec */
    pid_t pid;
    int rc = proc_spawn(&pid, d->exe, &fa, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(sv[1]);
    if (rc != 0) {
        snprintf(err, errlen, "starting a worker process (%s): %s", d->exe, strerror(rc));
        close(sv[0]);
        free(w);
        return NULL;
    }
    w->tag.kind = EPK_PROC;
    w->svc = svc;
    w->pid = pid;
    w->fd = sv[0];
    w->generation = gen;
    w->started_ns = sock_now_ns();
    void *calls = NULL;
    int cfd = shared_map("shmipcd-calls", sizeof(struct proc_calls), &calls);
    w->calls = cfd >= 0 ? calls : NULL;
    struct proc_msg m = {.type = PM_HELLO};
    int fds[2] = {svc->shared_fd, cfd};
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->tag};
    rc = cfd < 0 ? cfd : proc_send_msg(w->fd, &m, fds, 2);
    if (cfd >= 0)
        close(cfd);
    if (rc < 0 || epoll_ctl(d->epfd, EPOLL_CTL_ADD, w->fd, &ev) < 0) {
        snprintf(err, errlen, "talking to worker process %d: %s", (int)pid,
                 strerror(rc < 0 ? -rc : errno));
        kill(pid, SIGKILL);
        close(w->fd);
        w->fd = -1; /* reaped by proc_on_sigchld; forgotten here */
    }
    w->next = d->procs;
    d->procs = w;
    log_info("service %s: worker process %d started (generation %u)", svc->name, (int)pid, gen);
    return w;
}

static void remove_dirs_of(pid_t pid);
static void sessions_gone(struct daemon *d, struct wproc *w);

/* A process that failed to start: killed and reaped at once, so that
 * nothing refers to it (or to its service) afterwards. */
static void reap_now(struct daemon *d, struct wproc *w)
{
    kill(w->pid, SIGKILL);
    int status;
    while (waitpid(w->pid, &status, 0) < 0 && errno == EINTR)
        ;
    close_control(d, w);
    unlink_proc(d, w);
    sessions_gone(d, w);
    remove_dirs_of(w->pid);
    if (w->calls != NULL)
        munmap(w->calls, sizeof(*w->calls));
    free(w->sess);
    free(w);
}

/* Waits (bounded) for PM_READY; on failure the process is reaped. */
static int wait_ready(struct daemon *d, struct wproc *w, char *err, size_t errlen)
{
    uint64_t dl = sock_deadline(PROC_READY_MS);
    while (w->fd >= 0) {
        struct pollfd p = {w->fd, POLLIN, 0};
        int left = (int)((dl > sock_now_ns() ? dl - sock_now_ns() : 0) / 1000000u);
        if (poll(&p, 1, left) <= 0 && sock_now_ns() >= dl)
            break;
        struct proc_msg m;
        int fds[3], nfds;
        int rc = proc_recv_msg(w->fd, &m, fds, 3, &nfds);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (rc == -EAGAIN)
            continue;
        if (rc < 0) {
            snprintf(err, errlen, "worker process %d exited before it was ready (see the log)",
                     (int)w->pid);
            reap_now(d, w);
            return -ECHILD;
        }
        if (m.type == PM_READY) {
            w->ready = 1;
            w->ready_ns = sock_now_ns();
            snprintf(w->plugin, sizeof(w->plugin), "%.159s", m.text);
            return 0;
        }
        if (m.type == PM_FAIL) {
            snprintf(err, errlen, "%s", m.text);
            reap_now(d, w);
            return m.code < 0 ? m.code : -ECANCELED;
        }
    }
    snprintf(err, errlen, "worker process %d not ready within %d ms", (int)w->pid, PROC_READY_MS);
    reap_now(d, w);
    return -ETIMEDOUT;
}

/* epoch non-zero: a replacement takes its sessions over (another
 * process, or a new daemon): each is told HotRestart(epoch), and the
 * clients move before the old one closes them. 0 (a stop): they close
 * once what is queued is answered. */
static void drain_proc(struct wproc *w, unsigned drain_ms, uint64_t epoch)
{
    if (w->fd < 0 || w->draining)
        return;
    w->draining = 1;
    struct proc_msg m = {.type = PM_DRAIN, .drain_ms = drain_ms, .code = epoch != 0, .id = epoch};
    if (proc_send_msg(w->fd, &m, NULL, 0) < 0)
        kill(w->pid, SIGKILL);
}

int proc_service_start(struct daemon *d, struct service *svc, char *err, size_t errlen)
{
    int rc = shared_page(svc);
    if (rc < 0) {
        snprintf(err, errlen, "service '%s': its shared page: %s", svc->name, strerror(-rc));
        return rc;
    }
    struct wproc *w = spawn(d, svc, svc->gen->number, err, errlen);
    if (w == NULL)
        return -ECHILD;
    if ((rc = wait_ready(d, w, err, errlen)) < 0)
        return rc;
    svc->proc = w;
    log_info("service %s: worker process %d serves (plugin %s, generation %u)", svc->name,
             (int)w->pid, w->plugin, w->generation);
    return 0;
}

static void session_done(struct daemon *d, struct wproc *w, uint64_t id);

/* Waits (bounded) for a message of `type` from w; a session's end it
 * reports meanwhile is taken as proc_on_event() would. 0 with *m and
 * *fd (-1 when none came), or a code with err filled. */
static int wait_msg(struct daemon *d, struct wproc *w, uint32_t type, struct proc_msg *m, int *fd,
                    char *err, size_t errlen)
{
    uint64_t dl = sock_deadline(PROC_READY_MS);
    *fd = -1;
    while (w->fd >= 0) {
        struct pollfd p = {w->fd, POLLIN, 0};
        uint64_t now = sock_now_ns();
        if (now >= dl)
            break;
        poll(&p, 1, (int)((dl - now) / 1000000u) + 1);
        int fds[3], nfds;
        int rc = proc_recv_msg(w->fd, m, fds, 3, &nfds);
        if (rc == -EAGAIN)
            continue;
        for (int i = rc == 0 && m->type == type ? 1 : 0; i < nfds; i++)
            close(fds[i]);
        if (rc < 0) {
            snprintf(err, errlen, "worker process %d: %s", (int)w->pid,
                     rc == SHMIPC_ECLOSED ? "exited (see the log)" : shmipc_strerror(rc));
            return rc;
        }
        if (m->type == type) {
            *fd = nfds > 0 ? fds[0] : -1;
            return 0;
        }
        if (m->type == PM_CLOSED)
            session_done(d, w, m->id);
    }
    snprintf(err, errlen, "worker process %d did not answer within %d ms", (int)w->pid,
             PROC_READY_MS);
    return -ETIMEDOUT;
}

/* save in the old process, restore in the new one (which serves nobody
 * yet): the bytes travel in a memfd through the master. 0, or a code
 * with err filled. */
static int carry_state(struct daemon *d, struct wproc *old, struct wproc *neu, unsigned from,
                       struct plugin_gen *to, char *err, size_t errlen)
{
    struct proc_msg m = {.type = PM_SAVE};
    int fd = -1;
    int rc = proc_send_msg(old->fd, &m, NULL, 0);
    if (rc == 0)
        rc = wait_msg(d, old, PM_SAVED, &m, &fd, err, errlen);
    else
        snprintf(err, errlen, "asking worker process %d to save: %s", (int)old->pid,
                 strerror(-rc));
    if (rc == 0 && m.code < 0) {
        snprintf(err, errlen, "%s", m.text);
        rc = m.code;
    } else if (rc == 0 && fd < 0) {
        snprintf(err, errlen, "worker process %d saved no bytes", (int)old->pid);
        rc = -EPROTO;
    }
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    uint64_t len = m.id;
    m = (struct proc_msg){.type = PM_RESTORE, .id = len, .generation = from};
    rc = proc_send_msg(neu->fd, &m, &fd, 1);
    close(fd);
    if (rc < 0) {
        snprintf(err, errlen, "handing the state to worker process %d: %s", (int)neu->pid,
                 strerror(-rc));
        return rc;
    }
    if ((rc = wait_msg(d, neu, PM_RESTORED, &m, &fd, err, errlen)) < 0)
        return rc;
    if (fd >= 0)
        close(fd);
    if (m.code < 0) {
        snprintf(err, errlen, "%s", m.text);
        return m.code;
    }
    to->carry.how = GEN_CARRY_RESTORE;
    to->carry.from = from;
    to->carry.bytes = (size_t)len;
    return 0;
}

int proc_service_replace(struct daemon *d, struct service *svc, unsigned gen,
                         const struct plugin_gen *from, struct plugin_gen *to, char *err,
                         size_t errlen)
{
    struct wproc *w = spawn(d, svc, gen, err, errlen);
    if (w == NULL)
        return -ECHILD;
    int rc = wait_ready(d, w, err, errlen);
    if (rc < 0)
        return rc;
    struct wproc *prev = svc->proc;
    if (from != NULL && to != NULL && gen_carry_across(from, to) && prev != NULL &&
        prev->fd >= 0 && prev->ready && !prev->draining &&
        (rc = carry_state(d, prev, w, from->number, to, err, errlen)) < 0) {
        reap_now(d, w);
        return rc;
    }
    struct wproc *old = svc->proc;
    svc->proc = w;
    svc->failed[0] = '\0';
    svc->ncrash = 0;
    svc->respawn_at_ns = 0;
    if (old != NULL)
        drain_proc(old, (unsigned)d->conf->drain_timeout_ms, (uint64_t)w->pid);
    return 0;
}

void proc_hot_restart(struct daemon *d, uint64_t epoch, unsigned drain_ms)
{
    for (struct wproc *w = d->procs; w != NULL; w = w->next)
        drain_proc(w, drain_ms, epoch);
}

const char *proc_refusal(struct service *svc)
{
    if (svc->failed[0] != '\0')
        return svc->failed;
    if (svc->proc == NULL || !svc->proc->ready || svc->proc->fd < 0)
        return "its worker process is restarting";
    return NULL;
}

int proc_hand_over(struct daemon *d, struct service *svc, long long uid, struct session *s,
                   uint64_t id)
{
    (void)d;
    struct wproc *w = svc->proc;
    struct proc_msg m = {.type = PM_SESSION, .version = s->cfg.version, .id = id};
    struct region *pr = &s->pool->region, *qr = &s->qregion;
    /* The peer's files (file mode): its queue is the session's own, removed
     * by the process when it unmaps it. Its pool may serve sessions in
     * several processes (the old and the new one of a reload): we keep a
     * reference on it for each session until the process says it closed,
     * so the registry here removes the file after the last of them. */
    int rc = w != NULL && w->fd >= 0 ? 0 : -ECHILD;
    if (rc == 0 && w->nsess == w->capsess) {
        unsigned cap = w->capsess ? w->capsess * 2 : 16;
        struct psess *p = realloc(w->sess, cap * sizeof(*p));
        if (p == NULL)
            rc = -ENOMEM;
        else {
            w->sess = p;
            w->capsess = cap;
        }
    }
    if (rc == 0 && (qr->flags & REGION_UNLINK_PEER)) {
        snprintf(m.queue_path, sizeof(m.queue_path), "%s", qr->peer_path);
        m.queue_dir_len = (uint32_t)qr->peer_dir_len;
        qr->flags &= ~(unsigned)REGION_UNLINK_PEER;
    }
    int fds[3] = {s->fd, pr->fd, qr->fd};
    if (rc == 0)
        rc = proc_send_msg(w->fd, &m, fds, 3);
    if (rc == 0) {
        pool_ref_get(s->pool);
        w->sess[w->nsess++] = (struct psess){id, uid, s->pool};
    }
    /* Our copies go; the process has its own fds now. No shutdown: that
     * would end the connection for both. */
    session_release_streams(s);
    session_put(s);
    return rc;
}

static void remove_dir(const char *dir);

const char *proc_tmp_base(void)
{
    const char *t = getenv("TMPDIR");
    struct stat st;
    if (t != NULL && t[0] == '/' && strlen(t) < 200 && stat(t, &st) == 0 && S_ISDIR(st.st_mode))
        return t;
    return "/tmp";
}

/* <tmp>/shmipcd-<pid>-*: the private directories of process pid. */
static void remove_dirs_of(pid_t pid)
{
    const char *base = proc_tmp_base();
    DIR *dp = opendir(base);
    if (dp == NULL)
        return;
    char prefix[40];
    int n = snprintf(prefix, sizeof(prefix), "shmipcd-%d-", (int)pid);
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        if (strncmp(e->d_name, prefix, (size_t)n) != 0 || strlen(e->d_name) != (size_t)n + 6)
            continue;
        char dir[512];
        snprintf(dir, sizeof(dir), "%s/%s", base, e->d_name);
        remove_dir(dir);
    }
    closedir(dp);
}

static void session_done(struct daemon *d, struct wproc *w, uint64_t id)
{
    for (unsigned i = 0; i < w->nsess; i++) {
        if (w->sess[i].id == id) {
            uid_release(&d->uids, w->sess[i].uid);
            pool_ref_put(w->sess[i].pool);
            w->sess[i] = w->sess[--w->nsess];
            return;
        }
    }
}

/* Every session of a process that is gone. */
static void sessions_gone(struct daemon *d, struct wproc *w)
{
    while (w->nsess > 0)
        session_done(d, w, w->sess[w->nsess - 1].id);
}

void proc_on_event(struct daemon *d, struct wproc *w)
{
    for (;;) {
        struct proc_msg m;
        int fds[3], nfds;
        int rc = proc_recv_msg(w->fd, &m, fds, 3, &nfds);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (rc == -EAGAIN)
            return;
        if (rc < 0) {
            close_control(d, w); /* it exited: SIGCHLD says how */
            return;
        }
        if (m.type == PM_CLOSED) {
            session_done(d, w, m.id);
        } else if (m.type == PM_READY) {
            w->ready = 1;
            w->ready_ns = sock_now_ns();
            snprintf(w->plugin, sizeof(w->plugin), "%.159s", m.text);
            struct service *svc = w->svc;
            if (svc->next_proc == w) { /* a replacement (max_rss_bytes) */
                struct wproc *old = svc->proc;
                svc->proc = w;
                svc->next_proc = NULL;
                if (old != NULL)
                    drain_proc(old, (unsigned)d->conf->drain_timeout_ms, (uint64_t)w->pid);
            } else if (svc->proc == NULL && !svc->removed) {
                svc->proc = w;
            }
            log_info("service %s: worker process %d serves (plugin %s, generation %u)",
                     svc->name, (int)w->pid, w->plugin, w->generation);
        } else if (m.type == PM_FAIL) {
            log_error("service %s: worker process %d could not start: %s", w->svc->name,
                      (int)w->pid, m.text);
        }
    }
}

static void describe_exit(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
}

/* The service's process died unasked after serving for served_ns (0: it
 * never became ready): count it, and respawn now, later (backoff), or
 * never (crash_limit). */
static void crashed(struct daemon *d, struct service *svc, uint64_t served_ns)
{
    uint64_t now = sock_now_ns();
    svc->crash_ns[svc->ncrash++ % 64] = now;
    unsigned recent = 0;
    for (unsigned i = 0; i < (svc->ncrash < 64 ? svc->ncrash : 64); i++)
        recent += now - svc->crash_ns[i] < CRASH_WINDOW_NS;
    if (recent >= svc->crash_limit) {
        snprintf(svc->failed, sizeof(svc->failed),
                 "failed: its worker process crashed %u times within a minute (crash_limit %u); "
                 "a reload starts it again",
                 recent, svc->crash_limit);
        log_error("service %s: %s", svc->name, svc->failed);
        return;
    }
    /* At once after a quiet minute or when it had served a while (one bad
     * request, not a broken plugin); otherwise 100 ms doubling to 30 s. */
    if (recent <= 1 || served_ns >= SERVED_OK_NS) {
        svc->backoff_ms = 0;
    } else {
        svc->backoff_ms = svc->backoff_ms == 0 ? BACKOFF_MIN_MS : svc->backoff_ms * 2;
        if (svc->backoff_ms > BACKOFF_MAX_MS)
            svc->backoff_ms = BACKOFF_MAX_MS;
    }
    svc->respawn_at_ns = now + (uint64_t)svc->backoff_ms * 1000000u;
    (void)d;
}

/* A worker process that exited, reaped (its status in *status), or NULL.
 * Only ours: the master has other children (an upgrade's new daemon). */
static struct wproc *reap_one(struct daemon *d, int *status)
{
    for (struct wproc *w = d->procs; w != NULL; w = w->next) {
        pid_t r;
        while ((r = waitpid(w->pid, status, WNOHANG)) < 0 && errno == EINTR)
            ;
        if (r == w->pid)
            return w;
    }
    return NULL;
}

void proc_on_sigchld(struct daemon *d)
{
    int status;
    struct wproc *w;
    while ((w = reap_one(d, &status)) != NULL) {
        pid_t pid = w->pid;
        struct service *svc = w->svc;
        char how[128];
        describe_exit(status, how, sizeof(how));
        unsigned lost = w->nsess;
        sessions_gone(d, w);
        /* Sessions it could not close itself are closed now (their
         * sockets went with it). */
        __atomic_add_fetch(&svc->st->sessions_closed, lost, __ATOMIC_RELAXED);
        int unasked = !w->draining && (WIFSIGNALED(status) || WEXITSTATUS(status) != 0);
        if (unasked || lost > 0)
            log_warn("service %s: worker process %d %s (plugin %s, generation %u); %u sessions "
                     "closed",
                     svc->name, (int)pid, how, w->plugin[0] ? w->plugin : svc->gen->desc->name,
                     w->generation, lost);
        else
            log_info("service %s: worker process %d %s (generation %u)", svc->name, (int)pid, how,
                     w->generation);
        snprintf(svc->last_exit, sizeof(svc->last_exit), "pid %d %s", (int)pid, how);
        close_control(d, w);
        unlink_proc(d, w);
        remove_dirs_of(pid); /* its private plugin copy, if it could not */
        if (svc->proc == w) {
            svc->proc = NULL;
            if (!svc->removed && !d->stopping && !d->up.handing_over) {
                svc->restarts++;
                crashed(d, svc, w->ready_ns ? sock_now_ns() - w->ready_ns : 0);
            }
        }
        if (svc->next_proc == w)
            svc->next_proc = NULL;
        if (w->calls != NULL)
            munmap(w->calls, sizeof(*w->calls));
        free(w->sess);
        free(w);
    }
}

static long rss_bytes(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "r");
    long size, rss = -1;
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &size, &rss) != 2)
            rss = -1;
        fclose(f);
    }
    return rss < 0 ? -1 : rss * sysconf(_SC_PAGESIZE);
}

/* handler_kill_ms: a worker of the process running one call longer. */
static void check_kill(struct service *svc, struct wproc *w, uint64_t now, int *due)
{
    if (svc->handler_kill_ms <= 0 || w == NULL || w->fd < 0 || w->calls == NULL)
        return;
    uint64_t limit = (uint64_t)svc->handler_kill_ms * 1000000u;
    for (unsigned i = 0; i < PROC_CALLS; i++) {
        struct call_info *c = &w->calls->calls[i];
        uint64_t seq = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
        uint64_t start = __atomic_load_n(&c->start_ns, __ATOMIC_RELAXED);
        uint64_t sid = __atomic_load_n(&c->session_id, __ATOMIC_RELAXED);
        uint32_t stid = __atomic_load_n(&c->stream_id, __ATOMIC_RELAXED);
        if (seq % 2 == 0 || __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE) != seq)
            continue;
        uint64_t ran = now > start ? now - start : 0;
        if (ran < limit) {
            int ms = (int)((limit - ran) / 1000000u) + 1;
            if (*due < 0 || ms < *due)
                *due = ms;
            continue;
        }
        log_warn("service %s: handler of session %lu stream %u ran %lu ms (handler_kill_ms %d): "
                 "killing worker process %d",
                 svc->name, (unsigned long)sid, stid, (unsigned long)(ran / 1000000u),
                 svc->handler_kill_ms, (int)w->pid);
        kill(w->pid, SIGKILL);
        return;
    }
}

static void min_due(int *due, int ms)
{
    if (ms < 0)
        ms = 0;
    if (*due < 0 || ms < *due)
        *due = ms;
}

int proc_tick(struct daemon *d)
{
    int due = -1;
    uint64_t now = sock_now_ns();
    for (unsigned i = 0; i < d->nsvcs; i++) {
        struct service *svc = d->svcs[i];
        if (svc->isolation != ISOLATION_PROCESS)
            continue;
        if (svc->respawn_at_ns != 0 && svc->failed[0] == '\0' && !d->stopping) {
            if (now >= svc->respawn_at_ns) {
                char err[256];
                svc->respawn_at_ns = 0;
                if (spawn(d, svc, svc->gen->number, err, sizeof(err)) == NULL) {
                    log_error("service %s: %s", svc->name, err);
                    crashed(d, svc, 0);
                }
            } else {
                min_due(&due, (int)((svc->respawn_at_ns - now) / 1000000u) + 1);
            }
        }
        for (struct wproc *w = d->procs; w != NULL; w = w->next)
            if (w->svc == svc)
                check_kill(svc, w, now, &due);
        if (svc->max_rss_bytes != 0 && svc->proc != NULL && svc->next_proc == NULL &&
            now >= svc->rss_check_ns) {
            svc->rss_check_ns = now + (uint64_t)RSS_CHECK_MS * 1000000u;
            long rss = rss_bytes(svc->proc->pid);
            if (rss > 0 && (uint64_t)rss > svc->max_rss_bytes) {
                char err[256];
                log_warn("service %s: worker process %d uses %ld bytes (max_rss_bytes %llu): "
                         "replacing it",
                         svc->name, (int)svc->proc->pid, rss,
                         (unsigned long long)svc->max_rss_bytes);
                if ((svc->next_proc = spawn(d, svc, svc->gen->number, err, sizeof(err))) == NULL)
                    log_error("service %s: %s", svc->name, err);
            }
        }
        if (svc->max_rss_bytes != 0)
            min_due(&due, (int)((svc->rss_check_ns > now ? svc->rss_check_ns - now : 0) /
                                1000000u) +
                              1);
    }
    return due;
}

unsigned proc_sessions(struct daemon *d)
{
    unsigned n = 0;
    for (struct wproc *w = d->procs; w != NULL; w = w->next)
        n += w->nsess;
    return n;
}

void proc_service_stop(struct daemon *d, struct service *svc, uint64_t deadline_ns)
{
    uint64_t now = sock_now_ns();
    unsigned ms = deadline_ns > now ? (unsigned)((deadline_ns - now) / 1000000u) : 0;
    for (struct wproc *w = d->procs; w != NULL; w = w->next)
        if (w->svc == svc)
            drain_proc(w, ms, 0);
    svc->proc = NULL;
    svc->next_proc = NULL;
    svc->respawn_at_ns = 0;
}

void proc_wait_all(struct daemon *d, uint64_t deadline_ns)
{
    while (d->procs != NULL) {
        proc_on_sigchld(d);
        if (d->procs == NULL)
            break;
        if (sock_now_ns() >= deadline_ns) {
            for (struct wproc *w = d->procs; w != NULL; w = w->next) {
                log_warn("service %s: worker process %d still runs at the drain deadline: "
                         "killed",
                         w->svc->name, (int)w->pid);
                kill(w->pid, SIGKILL);
            }
            deadline_ns = UINT64_MAX; /* reaped on the next turns */
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

void proc_status(struct daemon *d, struct service *svc, struct strbuf *b)
{
    for (struct wproc *w = d->procs; w != NULL; w = w->next) {
        if (w->svc != svc)
            continue;
        strbuf_add(b, "service %s process %d: %s, generation %u, plugin %s, sessions %u\n",
                   svc->name, (int)w->pid,
                   w->draining ? "draining" : w->ready ? "serving" : "starting", w->generation,
                   w->plugin[0] ? w->plugin : "?", w->nsess);
    }
    strbuf_add(b, "service %s processes: restarts %u%s%s%s%s\n", svc->name, svc->restarts,
               svc->last_exit[0] ? ", last exit: " : "", svc->last_exit,
               svc->failed[0] ? "; " : "", svc->failed);
}

/* Whether pid runs a shmipcd (its name in /proc). */
/* 1 when pid runs shmipcd: its name says so, or its command line names a
 * shmipcd binary (under valgrind the name is the tool's). */
static int is_shmipcd(long pid)
{
    char path[64], buf[4096] = "";
    snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    int ok = fgets(buf, sizeof(buf), f) != NULL && strncmp(buf, "shmipcd", 7) == 0;
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
    if (!ok && (f = fopen(path, "r")) != NULL) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* NUL-separated arguments: any whose file name starts with shmipcd */
        for (size_t at = 0; at < n && !ok; at += strlen(buf + at) + 1) {
            const char *slash = strrchr(buf + at, '/');
            ok = strncmp(slash != NULL ? slash + 1 : buf + at, "shmipcd", 7) == 0;
        }
    }
    return ok;
}

static void remove_dir(const char *dir)
{
    DIR *dp = opendir(dir);
    if (dp == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[4200];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(dp);
    rmdir(dir);
}

void proc_remove_stale_dirs(void)
{
    const char *base = proc_tmp_base();
    DIR *dp = opendir(base);
    if (dp == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        long pid;
        char rest[64];
        /* Our pattern only: shmipcd-<pid>-<6 mkdtemp characters>. */
        if (sscanf(e->d_name, "shmipcd-%ld-%63s", &pid, rest) != 2 || strlen(rest) != 6 ||
            pid <= 0 || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) == 0 && is_shmipcd(pid))
            continue; /* a live shmipcd's */
        char dir[512];
        snprintf(dir, sizeof(dir), "%s/%s", base, e->d_name);
        log_info("removing %s: its shmipcd (pid %ld) is gone", dir, pid);
        remove_dir(dir);
    }
    closedir(dp);
}
