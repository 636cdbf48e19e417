/*
 * Upgrading shmipcd in place (see upgrade.h). The one rule: the old
 * daemon serves until the new one says READY, so a refused upgrade costs
 * nothing; after that the new one accepts, and the old one only finishes.
 */
#include "server/upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "proto/sock.h"
#include "server/daemon.h"
#include "server/notify.h"
#include "server/proc.h"
#include "server/service.h"
#include "server/worker.h"

extern char **environ;

#define ENV_FDS "SHMIPCD_LISTEN_FDS"
#define ENV_UPGRADE "SHMIPCD_UPGRADE_FD"
#define ENV_EPOCH "SHMIPCD_EPOCH"
#define READY_MS 30000 /* the new daemon to load its configuration and plugins */
#define GO_MS 10000    /* the old one to let go of the pid file */
#define MSG_MAX 1024

/* ---- the new side ---- */

void upgrade_init(struct daemon *d)
{
    struct upgrade *u = &d->up;
    u->fd = u->parent_fd = u->admin_fd = -1;
    u->tag.kind = EPK_UPGRADE;
    const char *fd = getenv(ENV_UPGRADE), *epoch = getenv(ENV_EPOCH), *fds = getenv(ENV_FDS);
    if (fd != NULL && fcntl(atoi(fd), F_GETFD) >= 0) {
        u->parent_fd = atoi(fd);
        fcntl(u->parent_fd, F_SETFD, FD_CLOEXEC);
    }
    if (epoch != NULL)
        u->epoch = strtoull(epoch, NULL, 10);
    /* "fd=address" lines: the listening sockets to take instead of binding. */
    for (const char *p = fds; p != NULL && *p != '\0' && u->ninherit < 40;) {
        const char *nl = strchr(p, '\n'), *end = nl != NULL ? nl : p + strlen(p);
        char *eq;
        long v = strtol(p, &eq, 10);
        size_t alen = eq < end && *eq == '=' ? (size_t)(end - eq - 1) : 0;
        if (alen > 0 && alen < sizeof(u->inherit[0].addr) && v > 2 && fcntl((int)v, F_GETFD) >= 0) {
            struct inherited *in = &u->inherit[u->ninherit++];
            in->fd = (int)v;
            memcpy(in->addr, eq + 1, alen);
            in->addr[alen] = '\0';
            fcntl(in->fd, F_SETFD, FD_CLOEXEC);
        }
        p = nl != NULL ? nl + 1 : end;
    }
    /* Worker processes and later upgrades must not see them. */
    unsetenv(ENV_FDS);
    unsetenv(ENV_UPGRADE);
    unsetenv(ENV_EPOCH);
}

int upgrade_starting(struct daemon *d)
{
    return d->up.parent_fd >= 0;
}

int upgrade_take_listener(struct daemon *d, const char *address)
{
    struct sock_addr a;
    if (address == NULL || sock_addr_parse(address, &a) < 0)
        return -1;
    struct upgrade *u = &d->up;
    for (unsigned i = 0; i < u->ninherit; i++) {
        if (strcmp(u->inherit[i].addr, a.text) == 0) {
            int fd = u->inherit[i].fd;
            u->inherit[i] = u->inherit[--u->ninherit];
            return fd;
        }
    }
    return -1;
}

static int say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int say(int fd, const char *fmt, ...)
{
    char msg[MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    size_t len = (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1;
    return send(fd, msg, len, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -errno;
}

void upgrade_started(struct daemon *d)
{
    struct upgrade *u = &d->up;
    for (unsigned i = 0; i < u->ninherit; i++) {
        log_info("upgrade: inherited %s is not in the configuration any more: closed",
                 u->inherit[i].addr);
        close(u->inherit[i].fd);
    }
    u->ninherit = 0;
    if (u->parent_fd < 0)
        return;
    char msg[64] = "";
    if (say(u->parent_fd, "READY %d", (int)getpid()) == 0) {
        struct pollfd p = {u->parent_fd, POLLIN, 0};
        if (poll(&p, 1, GO_MS) == 1 && recv(u->parent_fd, msg, sizeof(msg) - 1, 0) > 0 &&
            strncmp(msg, "GO", 2) == 0)
            log_info("upgrade: the old daemon (pid %d) hands over: epoch %llu",
                     (int)getppid(), (unsigned long long)u->epoch);
        else
            log_warn("upgrade: no word from the old daemon (pid %d): serving anyway",
                     (int)getppid());
    }
    close(u->parent_fd);
    u->parent_fd = -1;
    u->since_s = (uint64_t)time(NULL);
    /* The socket files are ours now: removed when we stop. */
    for (unsigned i = 0; i < d->nsvcs; i++)
        serve_listener_claim(&d->svcs[i]->l);
    serve_listener_claim(&d->admin);
    serve_listener_claim(&d->metrics);
}

void upgrade_failed(struct daemon *d, const char *why)
{
    struct upgrade *u = &d->up;
    if (u->parent_fd < 0)
        return;
    say(u->parent_fd, "FAIL %s", why);
    close(u->parent_fd);
    u->parent_fd = -1;
}

/* ---- the old side ---- */

static void reply(struct upgrade *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct upgrade *u, const char *fmt, ...)
{
    if (u->admin_fd < 0)
        return;
    char msg[MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sock_write_all(u->admin_fd, msg, strlen(msg), sock_deadline(1000));
    close(u->admin_fd);
    u->admin_fd = -1;
}

static void close_channel(struct daemon *d)
{
    struct upgrade *u = &d->up;
    if (u->fd < 0)
        return;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, u->fd, NULL);
    close(u->fd);
    u->fd = -1;
}

/* The successor will not serve: we do, as before. */
static void refused(struct daemon *d, const char *why)
{
    struct upgrade *u = &d->up;
    log_error("upgrade refused: %s; pid %d serves on", why, (int)getpid());
    reply(u, "error: upgrade refused: %s; pid %d serves on\n", why, (int)getpid());
    close_channel(d);
    if (u->pid > 0) {
        /* Gone before the next command can ask for another upgrade (it
         * said FAIL and exits, or is killed now: a moment either way). */
        kill(u->pid, SIGKILL);
        int status;
        while (waitpid(u->pid, &status, 0) < 0 && errno == EINTR)
            ;
        u->pid = 0;
    }
    u->ready_by_ns = 0;
}

/* Every listening socket, for the successor: fds named with addresses. */
static int listeners(struct daemon *d, int *fds, char *env, size_t cap)
{
    struct serve_listener *ls[CONF_MAX_SERVICES + 2];
    int n = 0;
    for (unsigned i = 0; i < d->nsvcs; i++)
        ls[n++] = &d->svcs[i]->l;
    ls[n++] = &d->admin;
    ls[n++] = &d->metrics;
    int k = 0;
    size_t at = (size_t)snprintf(env, cap, "%s=", ENV_FDS);
    for (int i = 0; i < n; i++) {
        if (ls[i]->fd < 0)
            continue;
        fds[k++] = ls[i]->fd;
        int w = snprintf(env + at, cap - at, "%d=%s\n", ls[i]->fd, ls[i]->addr.text);
        if (w < 0 || (size_t)w >= cap - at)
            return -ENAMETOOLONG;
        at += (size_t)w;
    }
    return k;
}

/* The successor's environment: ours without SHMIPCD_*, and the three. */
static char **successor_env(char *fds_env, char *fd_env, char *epoch_env)
{
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **env = calloc(n + 4, sizeof(*env));
    if (env == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "SHMIPCD_", 8) != 0)
            env[k++] = environ[i];
    env[k++] = fds_env;
    env[k++] = fd_env;
    env[k++] = epoch_env;
    env[k] = NULL;
    return env;
}

void upgrade_begin(struct daemon *d, const char *binary, int admin_fd)
{
    struct upgrade *u = &d->up;
    if (u->pid > 0 || u->handing_over) {
        const char *why = u->handing_over ? "this daemon is handing over already"
                                          : "an upgrade is in progress";
        log_warn("upgrade: %s", why);
        if (admin_fd >= 0) {
            char msg[128];
            int n = snprintf(msg, sizeof(msg), "error: %s\n", why);
            sock_write_all(admin_fd, msg, (size_t)n, sock_deadline(1000));
            close(admin_fd);
        }
        return;
    }
    u->admin_fd = admin_fd;
    snprintf(u->binary, sizeof(u->binary), "%s", binary != NULL ? binary : d->exe_path);
    if (access(u->binary, X_OK) < 0) {
        char why[4200];
        snprintf(why, sizeof(why), "%s: %s", u->binary, strerror(errno));
        refused(d, why);
        return;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        refused(d, strerror(errno));
        return;
    }
    int fds[CONF_MAX_SERVICES + 2];
    static char fds_env[CONF_MAX_SERVICES * 160 + 512];
    char fd_env[64], epoch_env[64];
    int n = listeners(d, fds, fds_env, sizeof(fds_env));
    snprintf(fd_env, sizeof(fd_env), "%s=%d", ENV_UPGRADE, sv[1]);
    snprintf(epoch_env, sizeof(epoch_env), "%s=%llu", ENV_EPOCH,
             (unsigned long long)(u->epoch + 1));
    char **env = n < 0 ? NULL : successor_env(fds_env, fd_env, epoch_env);
    if (env == NULL) {
        close(sv[0]);
        close(sv[1]);
        refused(d, n < 0 ? "listener addresses too long" : "out of memory");
        return;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    /* dup2 of an fd onto itself clears its close-on-exec flag. */
    for (int i = 0; i < n; i++)
        posix_spawn_file_actions_adddup2(&fa, fds[i], fds[i]);
    posix_spawn_file_actions_adddup2(&fa, sv[1], sv[1]);
    char *argv[] = {u->binary, "-c", d->conf_path, NULL};
    pid_t pid;
    int rc = proc_spawn(&pid, u->binary, &fa, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    close(sv[1]);
    if (rc != 0) {
        close(sv[0]);
        char why[4200];
        snprintf(why, sizeof(why), "starting %s: %s", u->binary, strerror(rc));
        refused(d, why);
        return;
    }
    u->pid = pid;
    u->fd = sv[0];
    u->ready_by_ns = sock_deadline(READY_MS);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &u->tag};
    if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, u->fd, &ev) < 0) {
        refused(d, strerror(errno));
        return;
    }
    log_info("upgrade: started %s as pid %d (epoch %llu)", u->binary, (int)pid,
             (unsigned long long)(u->epoch + 1));
}

/* Stops accepting without removing the socket files: they are the
 * successor's now. */
static void let_go(struct daemon *d, struct serve_listener *l)
{
    if (l->fd < 0)
        return;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, l->fd, NULL);
    l->ino = 0;
    serve_listener_close(l);
}

static void hand_over(struct daemon *d, pid_t next, unsigned n)
{
    struct upgrade *u = &d->up;
    for (unsigned i = 0; i < d->nsvcs; i++)
        let_go(d, &d->svcs[i]->l);
    let_go(d, &d->admin);
    let_go(d, &d->metrics);
    if (d->pid_fd >= 0) { /* the successor locks it once we say GO */
        close(d->pid_fd);
        d->pid_fd = -1;
    }
    sd_notify_text("MAINPID=%d\nSTATUS=pid %d hands over to pid %d", (int)next, (int)getpid(),
                   (int)next);
    say(u->fd, "GO");
    close_channel(d);
    u->handing_over = 1;
    u->successor = next;
    u->ready_by_ns = 0;
    u->drain_by_ns = sock_deadline(d->conf->drain_timeout_ms);
    uint64_t epoch = u->epoch + 1;
    pool_hot_restart(&d->pool, epoch);
    for (unsigned i = 0; i < d->nsvcs; i++)
        pool_hot_restart(&d->svcs[i]->own, epoch);
    for (struct service *svc = d->removed; svc != NULL; svc = svc->next_removed)
        pool_hot_restart(&svc->own, epoch);
    proc_hot_restart(d, epoch, (unsigned)d->conf->drain_timeout_ms);
    log_info("upgrade: pid %d (%s) serves; %u sessions move over (epoch %llu)", (int)next,
             u->binary, n, (unsigned long long)epoch);
    reply(u, "upgrade: pid %d (%s) serves; %u sessions move over (epoch %llu)\n", (int)next,
          u->binary, n, (unsigned long long)epoch);
}

void upgrade_on_event(struct daemon *d, unsigned sessions)
{
    struct upgrade *u = &d->up;
    if (u->fd < 0)
        return; /* settled already (an event of the same turn) */
    char msg[MSG_MAX];
    ssize_t n = recv(u->fd, msg, sizeof(msg) - 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    msg[n > 0 ? n : 0] = '\0';
    if (n > 6 && strncmp(msg, "READY ", 6) == 0 && strtol(msg + 6, NULL, 10) == u->pid)
        hand_over(d, u->pid, sessions);
    else if (n > 5 && strncmp(msg, "FAIL ", 5) == 0)
        refused(d, msg + 5);
    else
        refused(d, n <= 0 ? "the new daemon exited before it was ready (see the log)"
                          : "the new daemon said something else than READY or FAIL");
}

void upgrade_reap(struct daemon *d)
{
    struct upgrade *u = &d->up;
    int status;
    if (u->pid <= 0 || waitpid(u->pid, &status, WNOHANG) != u->pid)
        return;
    u->pid = 0;
    if (u->fd >= 0)
        upgrade_on_event(d, 0); /* what it said before it exited: FAIL and why */
    if (u->fd >= 0) { /* it never said READY nor FAIL */
        char why[96];
        snprintf(why, sizeof(why), "the new daemon exited with status %d before it was ready",
                 WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        refused(d, why);
    }
}

int upgrade_handing_over(const struct daemon *d)
{
    return d->up.handing_over;
}

int upgrade_tick(struct daemon *d, unsigned sessions)
{
    struct upgrade *u = &d->up;
    uint64_t now = sock_now_ns();
    if (u->fd >= 0 && u->ready_by_ns != 0) {
        if (now >= u->ready_by_ns) {
            refused(d, "the new daemon was not ready within 30 s");
            return -1;
        }
        return (int)((u->ready_by_ns - now) / 1000000u) + 1;
    }
    if (!u->handing_over || d->stopping)
        return -1;
    unsigned left = sessions;
    if (left == 0) {
        log_info("upgrade: every session moved to pid %d; exiting", (int)u->successor);
        d->stopping = 1;
        return -1;
    }
    if (now >= u->drain_by_ns) {
        log_warn("upgrade: %u sessions did not move within drain_timeout_ms (%d ms): closing them",
                 left, d->conf->drain_timeout_ms);
        d->stopping = 1;
        return -1;
    }
    return 20;
}
