/*
 * Socket helpers (see sock.h). The one rule: nothing here blocks past its
 * deadline; every wait is a poll() bounded by the time left.
 */
#include "proto/sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shmipc/errors.h"

uint64_t sock_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t sock_deadline(int ms)
{
    if (ms < 0)
        return UINT64_MAX;
    return sock_now_ns() + (uint64_t)ms * 1000000u;
}

static int parse_unix(const char *path, struct sock_addr *out)
{
    struct sockaddr_un *un = (struct sockaddr_un *)&out->ss;
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(un->sun_path) || path[0] != '/')
        return -EINVAL;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n + 1);
    out->family = AF_UNIX;
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    snprintf(out->text, sizeof(out->text), "unix:%s", path);
    return 0;
}

static int parse_tcp(const char *hp, struct sock_addr *out)
{
    const char *colon = strrchr(hp, ':');
    if (colon == NULL || colon == hp || colon - hp >= 64)
        return -EINVAL;
    char host[64];
    memcpy(host, hp, (size_t)(colon - hp));
    host[colon - hp] = '\0';
    /* Digits only: strtol alone would also take " 80", "+80" and "-0". */
    const char *digits = colon + 1;
    if (*digits < '0' || *digits > '9')
        return -EINVAL;
    char *end;
    long port = strtol(digits, &end, 10);
    if (*end != '\0' || port <= 0 || port > 65535)
        return -EINVAL;
    struct sockaddr_in *in = (struct sockaddr_in *)&out->ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
        return -EINVAL;
    out->family = AF_INET;
    out->len = sizeof(*in);
    snprintf(out->text, sizeof(out->text), "tcp:%s:%ld", host, port);
    return 0;
}

int sock_addr_parse(const char *text, struct sock_addr *out)
{
    memset(out, 0, sizeof(*out));
    if (text == NULL)
        return -EINVAL;
    if (strncmp(text, "unix:", 5) == 0)
        return parse_unix(text + 5, out);
    if (strncmp(text, "tcp:", 4) == 0)
        return parse_tcp(text + 4, out);
    if (text[0] == '/')
        return parse_unix(text, out);
    return -EINVAL;
}

static int new_socket(int family)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (family == AF_INET) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

int sock_unix_owner(const struct sock_addr *a, pid_t *pid)
{
    *pid = 0;
    if (a->family != AF_UNIX)
        return 0;
    const char *path = ((const struct sockaddr_un *)&a->ss)->sun_path;
    struct stat st;
    if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
        return 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int live = connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0 || errno == EAGAIN ||
               errno == EINPROGRESS;
    if (live) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
            *pid = cred.pid;
    }
    close(fd);
    return live;
}

int sock_listen(const struct sock_addr *a, int mode, int backlog)
{
    const char *path = NULL;
    if (a->family == AF_UNIX) {
        struct stat st;
        path = ((const struct sockaddr_un *)&a->ss)->sun_path;
        /* Someone serves it: never take it over. A stale socket (nobody
         * listens) is replaced; a file of another kind never is. */
        pid_t owner;
        if (sock_unix_owner(a, &owner) > 0)
            return -EADDRINUSE;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(path);
    }
    int fd = new_socket(a->family);
    if (fd < 0)
        return fd;
    int one = 1;
    if (a->family == AF_INET)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (listen(fd, backlog) < 0) {
        int err = -errno;
        close(fd);
        if (path != NULL)
            unlink(path); /* the socket file bind() just made */
        return err;
    }
    if (path != NULL && mode >= 0 && chmod(path, (mode_t)mode) < 0) {
        int err = -errno;
        close(fd);
        unlink(path);
        return err;
    }
    return fd;
}

static int wait_fd(int fd, short events, uint64_t deadline_ns)
{
    for (;;) {
        uint64_t now = sock_now_ns();
        if (now >= deadline_ns)
            return SHMIPC_ETIMEDOUT;
        uint64_t left_ms = (deadline_ns - now + 999999) / 1000000;
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, left_ms > 60000 ? 60000 : (int)left_ms);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

/* Sleeps a little (at most until the deadline) before a connect retry. */
static int backoff(uint64_t deadline_ns, int *ms)
{
    uint64_t now = sock_now_ns();
    if (now >= deadline_ns)
        return SHMIPC_ETIMEDOUT;
    uint64_t left_ms = (deadline_ns - now + 999999) / 1000000;
    poll(NULL, 0, left_ms < (uint64_t)*ms ? (int)left_ms : *ms);
    if (*ms < 16)
        *ms *= 2;
    return 0;
}

int sock_connect(const struct sock_addr *a, uint64_t deadline_ns)
{
    int fd = new_socket(a->family);
    if (fd < 0)
        return fd;
    int rc, ms = 1;
    for (;;) {
        if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0)
            return fd;
        rc = -errno;
        /* EAGAIN (a unix listener's backlog is full, or no local TCP port
         * is free) leaves the socket unconnected, not in progress: poll()
         * would call it writable at once and we would hand out a socket
         * that is not connected. Try again until the deadline. */
        if (rc == -EAGAIN && (rc = backoff(deadline_ns, &ms)) == 0)
            continue;
        break;
    }
    if (rc == -EINPROGRESS) {
        rc = wait_fd(fd, POLLOUT, deadline_ns);
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            rc = -errno;
        else if (rc == 0 && soerr != 0)
            rc = -soerr;
    }
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

int sock_accept(int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* fails harmlessly on unix */
    return fd;
}

int sock_read_exact(int fd, void *buf, size_t n, uint64_t deadline_ns)
{
    uint8_t *p = buf;
    while (n > 0) {
        /* MSG_DONTWAIT: on a blocking socket a plain read() would wait
         * past the deadline. */
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0)
            return SHMIPC_ECLOSED;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        int rc = wait_fd(fd, POLLIN, deadline_ns);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int sock_write_all(int fd, const void *buf, size_t n, uint64_t deadline_ns)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN)
            return -errno;
        int rc = wait_fd(fd, POLLOUT, deadline_ns);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int sock_send_fds(int fd, const int *fds, int nfds, uint64_t deadline_ns)
{
    if (nfds <= 0 || nfds > 8)
        return -EINVAL;
    uint8_t byte = 0;
    struct iovec iov = {&byte, 1};
    union {
        struct cmsghdr h;
        uint8_t buf[CMSG_SPACE(sizeof(int) * 8)];
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    for (;;) {
        ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w == 1)
            return 0;
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN)
            return -errno;
        int rc = wait_fd(fd, POLLOUT, deadline_ns);
        if (rc < 0)
            return rc;
    }
}

static void close_rights(struct msghdr *msg)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *p = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < n; i++) {
            int f;
            memcpy(&f, p + i, sizeof(f));
            close(f);
        }
    }
}

int sock_recv_fds(int fd, uint8_t *byte, int *fds, int max, int *nfds)
{
    struct iovec iov = {byte, 1};
    /* Room for more fds than allowed, so a peer sending too many is seen
     * (and every fd it sent closed) instead of silently truncated. */
    union {
        struct cmsghdr h;
        uint8_t buf[CMSG_SPACE(sizeof(int) * 16)];
    } ctl;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                         .msg_controllen = sizeof(ctl.buf)};
    ssize_t r;
    do
        r = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    if (r == 0)
        return SHMIPC_ECLOSED;
    int got = 0, bad = (msg.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL && !bad; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            bad = 1;
            break;
        }
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (got + (int)n > max) {
            bad = 1;
            break;
        }
        memcpy(fds + got, CMSG_DATA(c), n * sizeof(int));
        got += (int)n;
    }
    if (bad) {
        close_rights(&msg);
        return SHMIPC_EPROTO;
    }
    *nfds = got;
    return 0;
}

int sock_raise_nofile(unsigned long long *before, unsigned long long *after)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    *before = *after = (unsigned long long)rl.rlim_cur;
    if (rl.rlim_cur == rl.rlim_max)
        return 0;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    *after = (unsigned long long)rl.rlim_cur;
    return 0;
}

int sock_backlog_for(unsigned max_sessions)
{
    unsigned cap = 4096;
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "re");
    if (f != NULL) {
        if (fscanf(f, "%u", &cap) != 1 || cap == 0)
            cap = 4096;
        fclose(f);
    }
    unsigned n = max_sessions < 128 ? 128 : max_sessions;
    if (n > cap)
        n = cap;
    return n > 65535 ? 65535 : (int)n;
}
