/*
 * A session's output (see output.h): straight to the socket when nothing
 * is buffered, else into the output buffer, with EPOLLOUT armed exactly
 * while it holds bytes. The one rule: bytes never overtake the buffer (a
 * write goes to the socket only when the buffer is empty), and a failed
 * write kills the session.
 */
#include "session/output.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proto/sock.h"
#include "shmipc/errors.h"

static int ep_update_locked(struct session *s, int want_out)
{
    if (s->ep_fd < 0 || s->ep_out == want_out)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (want_out ? EPOLLOUT : 0),
                             .data = s->ep_data};
    if (epoll_ctl(s->ep_fd, EPOLL_CTL_MOD, s->fd, &ev) < 0)
        return -errno;
    s->ep_out = want_out;
    return 0;
}

int session_watch(struct session *s, int epfd, epoll_data_t data)
{
    pthread_mutex_lock(&s->mu);
    int want_out = s->out_len > 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (want_out ? EPOLLOUT : 0),
                             .data = data};
    int rc = epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0 ? -errno : 0;
    if (rc == 0) {
        s->ep_fd = epfd;
        s->ep_data = data;
        s->ep_out = want_out;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void session_unwatch(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    if (s->ep_fd >= 0)
        epoll_ctl(s->ep_fd, EPOLL_CTL_DEL, s->fd, NULL);
    s->ep_fd = -1;
    pthread_mutex_unlock(&s->mu);
}

static int out_append(struct session *s, const uint8_t *p, size_t n)
{
    if (s->out_len + n > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 4096;
        while (cap < s->out_len + n)
            cap *= 2;
        uint8_t *b = realloc(s->out, cap);
        if (b == NULL)
            return -ENOMEM;
        s->out = b;
        s->out_cap = cap;
    }
    memcpy(s->out + s->out_len, p, n);
    s->out_len += n;
    int rc = ep_update_locked(s, 1);
    if (rc < 0)
        session_die_locked(s, rc, "watching the socket for writing failed");
    return rc;
}

/* Writes as much of the output buffer as the socket takes. */
int flush_out_locked(struct session *s)
{
    size_t done = 0;
    while (done < s->out_len) {
        ssize_t w = send(s->fd, s->out + done, s->out_len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        int err = w < 0 ? -errno : SHMIPC_ECLOSED;
        session_die_locked(s, err, "write to the peer failed");
        return err;
    }
    memmove(s->out, s->out + done, s->out_len - done);
    s->out_len -= done;
    if (s->out_len == 0) {
        pthread_cond_broadcast(&s->out_cv);
        ep_update_locked(s, 0); /* failing leaves a harmless extra event */
    }
    return 0;
}

int session_send_locked(struct session *s, const void *ev, size_t evlen, const void *payload,
                        size_t plen)
{
    if (s->dead)
        return s->err ? s->err : SHMIPC_ECLOSED;
    __atomic_store_n(&s->last_tx_ns, sock_now_ns(), __ATOMIC_RELAXED);
    if (s->out_len == 0) {
        /* The common case: straight to the socket, nothing buffered. */
        struct iovec iov[2] = {{(void *)ev, evlen}, {(void *)payload, plen}};
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = plen ? 2 : 1};
        ssize_t w;
        do
            w = sendmsg(s->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (w < 0 && errno == EINTR);
        if (w < 0 && errno != EAGAIN) {
            int err = -errno;
            session_die_locked(s, err, "write to the peer failed");
            return err;
        }
        size_t sent = w < 0 ? 0 : (size_t)w;
        if (sent >= evlen + plen)
            return 0;
        if (sent < evlen) {
            if (out_append(s, (const uint8_t *)ev + sent, evlen - sent) < 0)
                return -ENOMEM;
            sent = 0;
        } else {
            sent -= evlen;
        }
        if (plen > sent && out_append(s, (const uint8_t *)payload + sent, plen - sent) < 0)
            return -ENOMEM;
    } else if (out_append(s, ev, evlen) < 0 || (plen && out_append(s, payload, plen) < 0)) {
        return -ENOMEM;
    }
    if (session_over_limit_locked(s, 0))
        return SHMIPC_EPROTO;
    return 0;
}

int session_over_limit_locked(struct session *s, size_t more)
{
    size_t held = s->out_len + __atomic_load_n(&s->fb_pending, __ATOMIC_RELAXED) + more;
    if (!s->cfg.out_limit || held <= s->cfg.out_limit)
        return 0;
    s->stats.protocol_errors++;
    session_die_locked(s, SHMIPC_EPROTO, "peer stopped reading: output limit reached");
    return 1;
}
