/*
 * shmipc-bench, the socket baseline: an epoll echo server (forked child,
 * `threads` threads, level-triggered) and an epoll client (one thread, C
 * non-blocking connections), over a unix socket or TCP loopback, with
 * 4-byte length framing: [u32 length][payload]; the response has the same
 * framing and length as the request.
 *
 * Written to be a fair opponent: buffers are allocated once per connection
 * (grown only when a larger frame arrives), reads ask for exactly what the
 * frame still needs and a short read goes back to epoll instead of
 * spending a syscall on EAGAIN, EPOLLOUT is armed only while a write is
 * stuck, TCP_NODELAY on TCP, SO_SNDBUF/SO_RCVBUF as a tuned application
 * would set them. Zero-touch: the client sends its buffer without filling
 * it and the server echoes what it read without looking at it; the kernel
 * still copies every byte twice per direction (user -> socket -> user),
 * which is inherent to sockets.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench_sock.h"

#define MAX_FRAME ((64u << 20) + 4)
#define SRV_BUF_START (64u << 10)

static void set_bufs(int fd, int tcp, int sockbuf)
{
    int one = 1;
    if (sockbuf > 0) {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sockbuf, sizeof(sockbuf));
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sockbuf, sizeof(sockbuf));
    }
    if (tcp)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ---- server ---- */

struct sconn {
    int fd;
    int writing; /* EPOLLOUT armed: the response did not fit the socket */
    uint8_t *buf;
    size_t cap, have, need, wrote;
};

struct sworker {
    pthread_t th;
    int ep;
};

static volatile sig_atomic_t srv_stop;
static int srv_tcp, srv_sockbuf;

static void on_srv_term(int sig)
{
    (void)sig;
    srv_stop = 1;
}

static void sconn_close(int ep, struct sconn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    free(c);
}

static void sconn_arm(int ep, struct sconn *c, int out)
{
    struct epoll_event ev = {.events = out ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->writing = out;
}

/* Writes what is left of the response; 0, or -1 when the connection broke. */
static int sconn_write(int ep, struct sconn *c)
{
    while (c->wrote < c->need) {
        ssize_t w = write(c->fd, c->buf + c->wrote, c->need - c->wrote);
        if (w > 0) {
            c->wrote += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN) {
            if (!c->writing)
                sconn_arm(ep, c, 1);
            return 0;
        } else {
            return -1;
        }
    }
    c->have = c->need = c->wrote = 0;
    if (c->writing)
        sconn_arm(ep, c, 0);
    return 0;
}

/* Reads toward the end of the frame; once it is whole, echoes it. */
static int sconn_read(int ep, struct sconn *c)
{
    for (;;) {
        size_t want = c->need ? c->need - c->have : c->cap - c->have;
        ssize_t n = read(c->fd, c->buf + c->have, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return -1;
        c->have += (size_t)n;
        if (c->need == 0 && c->have >= 4) {
            uint32_t len;
            memcpy(&len, c->buf, 4);
            c->need = 4 + (size_t)len;
            if (c->need > MAX_FRAME || c->have > c->need)
                return -1; /* too big, or a client that pipelines: not ours */
            if (c->need > c->cap) {
                uint8_t *b = realloc(c->buf, c->need);
                if (b == NULL)
                    return -1;
                c->buf = b;
                c->cap = c->need;
            }
        }
        if (c->need != 0 && c->have == c->need) {
            c->wrote = 0;
            return sconn_write(ep, c);
        }
        if ((size_t)n < want)
            return 0; /* drained for now: epoll tells us when more comes */
    }
}

static void *sworker_main(void *arg)
{
    struct sworker *w = arg;
    struct epoll_event evs[256];
    while (!srv_stop) {
        int n = epoll_wait(w->ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            struct sconn *c = evs[i].data.ptr;
            int rc;
            if (c->writing)
                rc = (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ? sconn_write(w->ep, c) : 0;
            else
                rc = sconn_read(w->ep, c);
            if (rc < 0)
                sconn_close(w->ep, c);
        }
    }
    return NULL;
}

static void accept_all(int lfd, struct sworker *ws, unsigned nw, unsigned *rr)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        set_bufs(fd, srv_tcp, srv_sockbuf);
        struct sconn *c = calloc(1, sizeof(*c));
        uint8_t *buf = malloc(SRV_BUF_START);
        if (c == NULL || buf == NULL) {
            free(c);
            free(buf);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->buf = buf;
        c->cap = SRV_BUF_START;
        struct sworker *w = &ws[(*rr)++ % nw];
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(buf);
            free(c);
        }
    }
}

/* The child: thread 0 accepts and hands connections round robin to the
 * workers' epoll sets (its own included); each worker serves its
 * connections alone. */
static int sock_serve(int lfd, unsigned threads)
{
    struct sigaction sa = {.sa_handler = on_srv_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct sworker *ws = calloc(threads, sizeof(*ws));
    if (ws == NULL)
        return 1;
    for (unsigned i = 0; i < threads; i++)
        if ((ws[i].ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
            return 1;
    for (unsigned i = 1; i < threads; i++)
        if (pthread_create(&ws[i].th, NULL, sworker_main, &ws[i]) != 0)
            return 1;
    /* Thread 0: the listener sits in its epoll set with a NULL tag. */
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ws[0].ep, EPOLL_CTL_ADD, lfd, &lev);
    unsigned rr = 0;
    struct epoll_event evs[256];
    while (!srv_stop) {
        int n = epoll_wait(ws[0].ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            struct sconn *c = evs[i].data.ptr;
            if (c == NULL) {
                accept_all(lfd, ws, threads, &rr);
                continue;
            }
            int rc;
            if (c->writing)
                rc = (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ? sconn_write(ws[0].ep, c)
                                                                        : 0;
            else
                rc = sconn_read(ws[0].ep, c);
            if (rc < 0)
                sconn_close(ws[0].ep, c);
        }
    }
    for (unsigned i = 1; i < threads; i++)
        pthread_join(ws[i].th, NULL);
    return 0;
}

int sock_server_start(const struct sock_opts *o, struct sock_server *srv)
{
    memset(srv, 0, sizeof(*srv));
    srv->tcp = o->tcp;
    srv->sockbuf = o->sockbuf;
    int lfd = socket(o->tcp ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return -errno;
    int rc = 0;
    if (o->tcp) {
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        set_bufs(lfd, 1, o->sockbuf); /* accepted TCP sockets inherit them */
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof(a);
        if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
            getsockname(lfd, (struct sockaddr *)&a, &al) < 0)
            rc = -errno;
        srv->port = ntohs(a.sin_port);
    } else {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(o->path) >= sizeof(a.sun_path)) {
            close(lfd);
            return -ENAMETOOLONG;
        }
        strcpy(a.sun_path, o->path);
        strcpy(srv->path, o->path);
        unlink(o->path);
        if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0)
            rc = -errno;
    }
    if (rc == 0 && listen(lfd, 1024) < 0)
        rc = -errno;
    if (rc < 0) {
        close(lfd);
        return rc;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        rc = -errno;
        close(lfd);
        return rc;
    }
    if (pid == 0) {
        child_die_with_parent(parent);
        srv_tcp = o->tcp;
        srv_sockbuf = o->sockbuf;
        _exit(sock_serve(lfd, o->threads ? o->threads : 1));
    }
    child_track(pid);
    close(lfd); /* the child listens; connections queue until it accepts */
    srv->pid = pid;
    return 0;
}

/* ---- client ---- */

enum cstate { C_SEND, C_RECV };

struct cconn {
    int fd;
    unsigned idx;
    enum cstate state;
    int out_armed;
    int warmed;
    int busy;
    uint8_t *buf; /* [u32 length][payload]: the request, then the response */
    size_t off;
    uint64_t t0, seed, seq;
};

struct sock_client {
    int ep;
    int tcp;
    size_t size;
    unsigned conc;
    struct cconn *conns;
    struct epoll_event *evs;
    uint64_t wakeups; /* epoll_wait calls that returned events, this row */
};

void sock_client_close(struct sock_client *c)
{
    if (c == NULL)
        return;
    for (unsigned i = 0; c->conns != NULL && i < c->conc; i++) {
        if (c->conns[i].fd >= 0)
            close(c->conns[i].fd);
        free(c->conns[i].buf);
    }
    if (c->ep >= 0)
        close(c->ep);
    free(c->conns);
    free(c->evs);
    free(c);
}

static int connect_one(const struct sock_server *srv)
{
    int fd = socket(srv->tcp ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    set_bufs(fd, srv->tcp, srv->sockbuf); /* before connect: TCP's window scale */
    int rc;
    if (srv->tcp) {
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons(srv->port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
    } else {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strcpy(a.sun_path, srv->path);
        rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
    }
    if (rc < 0 || fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

int sock_client_open(const struct sock_server *srv, size_t size, unsigned conc,
                     struct sock_client **out)
{
    struct sock_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->ep = -1;
    c->tcp = srv->tcp;
    c->size = size;
    c->conc = conc;
    c->conns = calloc(conc, sizeof(*c->conns));
    c->evs = calloc(conc, sizeof(*c->evs));
    int rc = c->conns == NULL || c->evs == NULL ? -ENOMEM : 0;
    for (unsigned i = 0; c->conns != NULL && i < conc; i++)
        c->conns[i].fd = -1;
    if (rc == 0 && (c->ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        rc = -errno;
    for (unsigned i = 0; rc == 0 && i < conc; i++) {
        struct cconn *k = &c->conns[i];
        k->idx = i;
        k->buf = malloc(4 + size);
        if (k->buf == NULL) {
            rc = -ENOMEM;
            break;
        }
        memset(k->buf, 0, 4 + size); /* first touches stay out of the rows */
        if ((k->fd = connect_one(srv)) < 0) {
            rc = k->fd;
            break;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = k};
        if (epoll_ctl(c->ep, EPOLL_CTL_ADD, k->fd, &ev) < 0)
            rc = -errno;
    }
    if (rc < 0) {
        fprintf(stderr, "shmipc-bench: %s client: %s\n", srv->tcp ? "tcp" : "uds", strerror(-rc));
        sock_client_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

static void arm_out(struct sock_client *c, struct cconn *k, int on)
{
    struct epoll_event ev = {.events = on ? EPOLLIN | EPOLLOUT : EPOLLIN, .data.ptr = k};
    epoll_ctl(c->ep, EPOLL_CTL_MOD, k->fd, &ev);
    k->out_armed = on;
}

/* Writes what is left of the request; 0 or -errno. */
static int pump_send(struct sock_client *c, struct cconn *k)
{
    size_t total = 4 + c->size;
    while (k->off < total) {
        ssize_t w = write(k->fd, k->buf + k->off, total - k->off);
        if (w > 0) {
            k->off += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN) {
            if (!k->out_armed)
                arm_out(c, k, 1);
            return 0;
        } else {
            return w < 0 ? -errno : -EIO;
        }
    }
    k->state = C_RECV;
    k->off = 0;
    if (k->out_armed)
        arm_out(c, k, 0);
    return 0;
}

static int sock_send(struct sock_client *c, struct cconn *k, enum bench_mode mode, uint64_t t)
{
    uint32_t len = (uint32_t)c->size;
    k->t0 = t;
    memcpy(k->buf, &len, 4);
    if (mode == MODE_FULL) {
        k->seed = pattern_seed(k->idx, ++k->seq);
        pattern_fill(k->buf + 4, 0, c->size, k->seed);
    } else {
        k->buf[4] = REQ_ZERO; /* the rest is sent as the buffer holds it */
    }
    k->state = C_SEND;
    k->off = 0;
    k->busy = 1;
    return pump_send(c, k);
}

/* Reads toward the end of the response: 1 when it is whole, 0 for more
 * later, -errno. */
static int pump_recv(struct sock_client *c, struct cconn *k)
{
    size_t total = 4 + c->size;
    for (;;) {
        size_t want = total - k->off;
        ssize_t n = read(k->fd, k->buf + k->off, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return n < 0 ? -errno : -ECONNRESET;
        k->off += (size_t)n;
        if (k->off == total)
            return 1;
        if ((size_t)n < want)
            return 0;
    }
}

static int sock_check(const struct sock_client *c, const struct cconn *k, enum bench_mode mode)
{
    uint32_t len;
    memcpy(&len, k->buf, 4);
    if (len != c->size)
        return 0;
    return mode == MODE_ZERO || pattern_check(k->buf + 4, 0, c->size, k->seed);
}

static uint64_t sock_wakeups(void *arg)
{
    const struct sock_client *c = arg;
    return c->wakeups;
}

/* One epoll event on a connection: moves its request out or its response
 * in, and once the response is whole sends the next request. *t is the
 * latest time the loop took: a completion moves it on, and an error on a
 * later event of the same batch ends the window there. */
static void sock_serve_event(struct sock_client *c, struct row_run *w, struct cconn *k,
                             uint32_t events, uint64_t *t)
{
    int rc = 0;
    if (k->state == C_SEND) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            rc = pump_send(c, k);
        if (rc == 0 && (k->state != C_RECV || !(events & EPOLLIN)))
            return;
    }
    if (rc == 0 && (rc = pump_recv(c, k)) == 1) {
        int ok = k->busy && sock_check(c, k, w->p->mode);
        *t = now_ns();
        if (!ok)
            row_bad_response(w, k->idx, c->size);
        k->busy = 0;
        if (!row_complete(w, &k->warmed, k->t0, *t))
            return;
        rc = sock_send(c, k, w->p->mode, *t);
        w->inflight++;
    }
    if (rc < 0) {
        fprintf(stderr, "shmipc-bench: connection %u: %s\n", k->idx, strerror(-rc));
        w->r->errors++;
        if (k->busy) {
            k->busy = 0;
            w->inflight--;
        }
        epoll_ctl(c->ep, EPOLL_CTL_DEL, k->fd, NULL);
        row_stop(w, *t);
    }
}

int sock_row(struct sock_client *c, const struct row_params *p, struct row_result *r)
{
    struct row_run w;
    if (row_begin(&w, p, r, c->conc, "connection", sock_wakeups, c) < 0)
        return -ENOMEM;
    c->wakeups = 0;
    for (unsigned i = 0; i < c->conc; i++) {
        struct cconn *k = &c->conns[i];
        k->warmed = k->busy = 0;
        int rc = sock_send(c, k, p->mode, now_ns());
        w.inflight++;
        if (rc < 0) {
            fprintf(stderr, "shmipc-bench: send on connection %u: %s\n", i, strerror(-rc));
            r->errors++;
            k->busy = 0;
            w.inflight--;
            row_stop(&w, w.row0);
            break;
        }
    }
    uint64_t t;
    while (w.ph != PH_DRAIN || w.inflight > 0) {
        if ((t = row_tick(&w)) == 0)
            break;
        int n = epoll_wait(c->ep, c->evs, (int)c->conc, 50);
        if (n < 0 && errno != EINTR) {
            r->errors++;
            break;
        }
        if (n > 0)
            c->wakeups++;
        for (int i = 0; i < n; i++)
            sock_serve_event(c, &w, c->evs[i].data.ptr, c->evs[i].events, &t);
    }
    return row_end(&w);
}
