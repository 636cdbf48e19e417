/*
 * Raw sessions for the hostile cases: our own pool and queue (the
 * library's internal modules), the handshake, and direct writes of
 * elements, slice headers and events, valid or not. The one rule: after a
 * case corrupts or truncates its memory, only the socket is touched again
 * (a truncated mapping would raise SIGBUS here too).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hostile.h"
#include "proto/event.h"
#include "proto/handshake.h"
#include "proto/sock.h"
#include "shmipc/errors.h"

void evil_init(struct evil *e)
{
    memset(e, 0, sizeof(*e));
    e->fd = -1;
    region_init(&e->pr);
    region_init(&e->qr);
    e->version = SHMIPC_PROTO_V3;
}

static int lay_out(struct evil *e, const struct pool_class *classes, unsigned n, uint32_t qcap)
{
    int rc = pool_create(&e->pool, e->pr.base, e->pr.size, classes, n);
    if (rc == 0)
        rc = queue_pair_create(&e->qp, e->qr.base, e->qr.size, qcap);
    if (rc == 0)
        e->mem = 1;
    return rc;
}

int evil_mem_memfd_classes(struct evil *e, size_t pool_bytes, const struct pool_class *classes,
                           unsigned n, uint32_t qcap)
{
    /* Not sealed: the truncation case shrinks them. */
    int rc = region_create_memfd(&e->pr, "hostile_buffer", pool_bytes, 0);
    if (rc == 0)
        rc = region_create_memfd(&e->qr, "hostile_queue", queue_pair_size(qcap), 0);
    return rc < 0 ? rc : lay_out(e, classes, n, qcap);
}

int evil_mem_memfd(struct evil *e, size_t pool_bytes, uint32_t qcap)
{
    return evil_mem_memfd_classes(e, pool_bytes, pool_default_classes, 3, qcap);
}

int evil_mem_files(struct evil *e, const char *bpath, const char *qpath, size_t pool_bytes,
                   uint32_t qcap)
{
    int rc = region_create_file(&e->pr, bpath, pool_bytes, REGION_UNLINK_ON_CLOSE);
    if (rc == 0)
        rc = region_create_file(&e->qr, qpath, queue_pair_size(qcap), REGION_UNLINK_ON_CLOSE);
    return rc < 0 ? rc : lay_out(e, pool_default_classes, 3, qcap);
}

int evil_connect(struct evil *e, const char *addr)
{
    struct sock_addr a;
    int rc = sock_addr_parse(addr, &a);
    if (rc < 0)
        return rc;
    rc = sock_connect(&a, sock_deadline(H_IO_MS));
    if (rc < 0)
        return rc;
    e->fd = rc;
    return 0;
}

int evil_hs_memfd(struct evil *e)
{
    return hs_client(e->fd, HS_MEMFD, SHMIPC_PROTO_V3, "hostile_queue", "hostile_buffer", e->pr.fd,
                     e->qr.fd, sock_deadline(H_IO_MS), &e->version);
}

int evil_hs_file(struct evil *e, uint8_t version, const char *qpath, const char *bpath)
{
    return hs_client(e->fd, HS_FILE, version, qpath, bpath, -1, -1, sock_deadline(H_IO_MS),
                     &e->version);
}

static int read_reply(struct evil *e, uint8_t type)
{
    uint8_t ev[SHMIPC_EV_HEADER_LEN];
    int rc = sock_read_exact(e->fd, ev, sizeof(ev), sock_deadline(H_IO_MS));
    if (rc < 0)
        return rc;
    struct ev_header h;
    if ((rc = ev_decode_header(ev, 0, &h)) < 0)
        return rc;
    return h.type == type ? 0 : SHMIPC_EPROTO;
}

int evil_hs_until_fds(struct evil *e)
{
    uint8_t ev[HS_MAX_EVENT];
    ev_encode_simple(ev, sizeof(ev), SHMIPC_PROTO_V3, SHMIPC_EV_EXCHANGE_VER);
    int rc = evil_write(e, ev, SHMIPC_EV_HEADER_LEN);
    if (rc == 0)
        rc = read_reply(e, SHMIPC_EV_EXCHANGE_VER);
    if (rc < 0)
        return rc;
    int n = ev_encode_shm_meta(ev, sizeof(ev), SHMIPC_PROTO_V3, SHMIPC_EV_SHM_BY_MEMFD,
                               "hostile_queue", "hostile_buffer");
    if (n < 0)
        return n;
    if ((rc = evil_write(e, ev, (size_t)n)) < 0)
        return rc;
    return read_reply(e, SHMIPC_EV_ACK_READY_RECV_FD);
}

int evil_send_fd_msg(struct evil *e, uint8_t byte, const int *fds, int nfds)
{
    struct iovec iov = {&byte, 1};
    union {
        struct cmsghdr h;
        uint8_t buf[CMSG_SPACE(sizeof(int) * 8)];
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        if (nfds > 8)
            return -EINVAL;
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    uint64_t dl = sock_deadline(H_IO_MS);
    for (;;) {
        ssize_t w = sendmsg(e->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w == 1)
            return 0;
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN)
            return -errno;
        if (sock_now_ns() >= dl)
            return SHMIPC_ETIMEDOUT;
        struct pollfd p = {e->fd, POLLOUT, 0};
        poll(&p, 1, 10);
    }
}

int evil_open(struct evil *e, const char *addr, size_t pool_bytes, uint32_t qcap)
{
    evil_init(e);
    int rc = evil_mem_memfd(e, pool_bytes, qcap);
    if (rc == 0)
        rc = evil_connect(e, addr);
    if (rc == 0)
        rc = evil_hs_memfd(e);
    return rc;
}

void evil_close(struct evil *e)
{
    if (e->fd >= 0)
        close(e->fd);
    e->fd = -1;
    region_close(&e->pr);
    region_close(&e->qr);
    free(e->in);
    e->in = NULL;
    e->in_len = e->in_cap = 0;
    e->mem = 0;
}

int evil_write(struct evil *e, const void *buf, size_t n)
{
    return sock_write_all(e->fd, buf, n, sock_deadline(H_IO_MS));
}

int evil_event(struct evil *e, uint32_t length, uint8_t type, const void *body, size_t blen)
{
    uint8_t hdr[SHMIPC_EV_HEADER_LEN];
    ev_encode_header(hdr, sizeof(hdr), length, e->version, type);
    int rc = evil_write(e, hdr, sizeof(hdr));
    if (rc == 0 && blen > 0)
        rc = evil_write(e, body, blen);
    return rc;
}

int evil_polling(struct evil *e)
{
    return evil_event(e, SHMIPC_EV_HEADER_LEN, SHMIPC_EV_POLLING, NULL, 0);
}

int evil_fallback(struct evil *e, uint32_t id, uint32_t status, const void *p, size_t n)
{
    uint8_t hdr[SHMIPC_EV_FALLBACK_MIN_LEN];
    ev_encode_fallback_header(hdr, sizeof(hdr), e->version, id, status, (uint32_t)n);
    int rc = evil_write(e, hdr, sizeof(hdr));
    if (rc == 0 && n > 0)
        rc = evil_write(e, p, n);
    return rc;
}

int evil_put(struct evil *e, uint32_t id, uint32_t off, uint32_t status)
{
    struct shmipc_queue_elem el = {id, off, status};
    uint64_t dl = sock_deadline(H_IO_MS);
    int rc;
    while ((rc = queue_put(&e->qp.send, &el)) == SHMIPC_EQFULL) {
        /* The server drains it unless it stopped: wake it and wait a bit. */
        evil_polling(e);
        if (sock_now_ns() >= dl)
            return rc;
        du_sleep_ms(1);
    }
    if (rc < 0)
        return rc;
    return evil_polling(e); /* a spurious Polling is harmless */
}

int evil_request(struct evil *e, uint32_t id, const void *p, size_t n, uint32_t *first)
{
    struct pool_writer w;
    pool_writer_init(&w, &e->pool);
    int rc = n > 0 ? pool_writer_write(&w, p, n) : pool_writer_touch(&w);
    uint32_t f;
    if (rc == 0)
        rc = pool_writer_finish(&w, &f);
    if (rc < 0) {
        pool_writer_abort(&w);
        return rc;
    }
    if (first != NULL)
        *first = f;
    return evil_put(e, id, f, SHMIPC_STREAM_OPEN);
}

int evil_pop(struct evil *e, unsigned li, uint32_t *off)
{
    return pool_pop(&e->pool, li, off);
}

/* Reads what the socket has (non-blocking) into e->in. -1 on EOF. */
static int fill(struct evil *e)
{
    for (;;) {
        if (e->in_cap - e->in_len < 65536) {
            size_t cap = e->in_cap ? e->in_cap * 2 : 1u << 17;
            uint8_t *b = realloc(e->in, cap);
            if (b == NULL)
                return -1;
            e->in = b;
            e->in_cap = cap;
        }
        ssize_t r = recv(e->fd, e->in + e->in_len, e->in_cap - e->in_len, MSG_DONTWAIT);
        if (r > 0) {
            e->in_len += (size_t)r;
            if (e->in_len > (64u << 20))
                return 0; /* enough for one look */
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        e->eof = 1;
        return -1;
    }
}

struct collect {
    uint32_t id;
    uint8_t *buf;
    size_t cap, len;
    int bad;
};

static void collect_bytes(struct collect *c, const uint8_t *p, size_t n)
{
    if (c->len + n > c->cap) {
        c->bad = 1;
        return;
    }
    memcpy(c->buf + c->len, p, n);
    c->len += n;
}

/* Harvests our receive queue: elements of c->id are collected, every
 * chain is freed back into our pool. */
static void harvest(struct evil *e, struct collect *c)
{
    struct shmipc_queue_elem el;
    while (queue_pop(&e->qp.recv, &el) == 0) {
        if ((el.status & 0xff) != SHMIPC_STREAM_OPEN)
            continue;
        if (c != NULL && el.stream_id == c->id) {
            struct pool_walk w;
            struct pool_seg seg;
            pool_walk_init(&w, &e->pool, el.offset);
            while (pool_walk_next(&w, &seg) > 0)
                collect_bytes(c, seg.data, seg.len);
        }
        pool_free_chain(&e->pool, el.offset);
    }
    queue_mark_not_working(&e->qp.recv);
}

/* Parses whole events in e->in; FallbackData of c->id is collected. */
static void parse_events(struct evil *e, struct collect *c)
{
    size_t at = 0;
    while (e->in_len - at >= SHMIPC_EV_HEADER_LEN) {
        struct ev_header h;
        if (ev_decode_header(e->in + at, UINT32_MAX, &h) < 0) {
            at = e->in_len; /* garbage from the server: drop it */
            if (c != NULL)
                c->bad = 1;
            break;
        }
        if (e->in_len - at < h.length)
            break;
        struct ev_fallback fb;
        if (h.type == SHMIPC_EV_FALLBACK_DATA && c != NULL &&
            ev_decode_fallback(e->in + at, h.length, &fb) == 0 && fb.stream_id == c->id)
            collect_bytes(c, fb.payload, fb.payload_len);
        at += h.length;
    }
    memmove(e->in, e->in + at, e->in_len - at);
    e->in_len -= at;
}

int evil_wait_echo(struct evil *e, uint32_t id, const void *p, size_t n, int ms, char *why,
                   size_t whylen)
{
    struct collect c = {id, malloc(n + 1), n + 1, 0, 0};
    if (c.buf == NULL)
        return -ENOMEM;
    uint64_t dl = sock_deadline(ms);
    int rc = 0;
    while (c.len < n && !c.bad) {
        int closed = fill(e) < 0;
        parse_events(e, &c);
        harvest(e, &c);
        if (c.len >= n || c.bad)
            break;
        if (closed) {
            snprintf(why, whylen, "the server closed the session (%zu of %zu bytes back)", c.len,
                     n);
            rc = SHMIPC_ECLOSED;
            break;
        }
        if (sock_now_ns() >= dl) {
            snprintf(why, whylen, "no answer within %d ms (%zu of %zu bytes back)", ms, c.len, n);
            rc = SHMIPC_ETIMEDOUT;
            break;
        }
        struct pollfd pfd = {e->fd, POLLIN, 0};
        poll(&pfd, 1, 1);
    }
    if (rc == 0 && (c.bad || c.len != n || memcmp(c.buf, p, n) != 0)) {
        snprintf(why, whylen, "wrong answer (%zu bytes, expected %zu)", c.len, n);
        rc = SHMIPC_EPROTO;
    }
    free(c.buf);
    return rc;
}

int evil_roundtrip(struct evil *e, uint32_t id, const void *p, size_t n, int ms, char *why,
                   size_t whylen)
{
    int rc = evil_request(e, id, p, n, NULL);
    if (rc < 0) {
        snprintf(why, whylen, "sending the request failed: %s", shmipc_strerror(rc));
        return rc;
    }
    return evil_wait_echo(e, id, p, n, ms, why, whylen);
}

int evil_pump(struct evil *e)
{
    int closed = fill(e) < 0;
    parse_events(e, NULL);
    if (e->mem)
        harvest(e, NULL);
    return closed ? -1 : 0;
}

int evil_wait_closed(struct evil *e, int ms)
{
    if (e->fd < 0)
        return 1;
    uint64_t dl = sock_deadline(ms);
    char sink[65536];
    for (;;) {
        ssize_t r = recv(e->fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            e->eof = 1;
            return 1; /* EOF or ECONNRESET: the server let go */
        }
        if (r > 0)
            continue;
        uint64_t now = sock_now_ns();
        if (now >= dl)
            return 0;
        struct pollfd pfd = {e->fd, POLLIN, 0};
        uint64_t left = (dl - now) / 1000000u + 1;
        poll(&pfd, 1, left > 100 ? 100 : (int)left);
    }
}
