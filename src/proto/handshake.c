/*
 * Handshakes (see handshake.h). The one rule: before the handshake is done
 * the server never reads a byte beyond the event it is reading, because
 * the fd message that follows is a single data byte whose control data
 * must be received with recvmsg().
 */
#include "proto/handshake.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "proto/event.h"
#include "proto/sock.h"
#include "shmipc/errors.h"

void hs_server_init(struct hs_server *h, int fd, int allow_memfd, uint64_t deadline_ns)
{
    memset(h, 0, sizeof(*h));
    h->fd = fd;
    h->allow_memfd = allow_memfd;
    h->st = HS_ST_HEADER;
    h->need = SHMIPC_EV_HEADER_LEN;
    h->fds[0] = h->fds[1] = -1;
    h->deadline_ns = deadline_ns;
}

static int fail(struct hs_server *h, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct hs_server *h, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->why, sizeof(h->why), fmt, ap);
    va_end(ap);
    /* hs_server_step() returns h->err once failed: a 0 here (say,
     * hs_server_mapped(h, 0, 0)) would read as "call me again". */
    if (err >= 0)
        err = -EINVAL;
    h->err = err;
    h->st = HS_ST_FAILED;
    return err;
}

static void reply(struct hs_server *h, uint8_t version, uint8_t type, enum hs_state next)
{
    ev_encode_simple(h->out, sizeof(h->out), version, type);
    h->out_len = SHMIPC_EV_HEADER_LEN;
    h->out_sent = 0;
    h->st = HS_ST_WRITE;
    h->after_write = next;
}

static void expect_header(struct hs_server *h)
{
    h->st = HS_ST_HEADER;
    h->have = 0;
    h->need = SHMIPC_EV_HEADER_LEN;
}

static int copy_path(char *dst, const char *src, uint16_t len)
{
    if (len == 0 || len > HS_MAX_PATH)
        return SHMIPC_EBADEVENT;
    memcpy(dst, src, len);
    dst[len] = '\0';
    return 0;
}

static int take_paths(struct hs_server *h)
{
    struct ev_shm_meta m;
    int rc = ev_decode_shm_meta(h->in, h->need, &m);
    if (rc == 0)
        rc = copy_path(h->queue_path, m.queue_path, m.queue_len);
    if (rc == 0)
        rc = copy_path(h->buffer_path, m.buffer_path, m.buffer_len);
    if (rc < 0)
        return fail(h, rc, "malformed shared-memory metadata: %s", shmipc_strerror(rc));
    return 0;
}

/* Checks that a header is the one expected at this point. */
static int check_sequence(struct hs_server *h, const struct ev_header *eh)
{
    if (h->stage == 0) {
        if (eh->type == SHMIPC_EV_SHM_BY_PATH && eh->version == SHMIPC_PROTO_V2)
            return 0;
        if (eh->type == SHMIPC_EV_EXCHANGE_VER && eh->version >= SHMIPC_PROTO_V3)
            return 0;
        return fail(h, SHMIPC_EPROTO, "first event %s version %u: expected "
                    "ShareMemoryByFilePath v2 or ExchangeProtoVersion v3",
                    ev_type_name(eh->type), eh->version);
    }
    if (eh->version != h->version)
        return fail(h, SHMIPC_EPROTO, "event version %u after agreeing on %u", eh->version,
                    h->version);
    if (eh->type == SHMIPC_EV_SHM_BY_PATH)
        return 0;
    if (eh->type == SHMIPC_EV_SHM_BY_MEMFD)
        return h->allow_memfd ? 0 : fail(h, SHMIPC_EPROTO, "memfd mode needs a unix socket");
    return fail(h, SHMIPC_EPROTO, "unexpected %s during the handshake", ev_type_name(eh->type));
}

/* A whole event is in h->in: act on it. */
static int on_event(struct hs_server *h)
{
    uint8_t type = h->in[7];
    if (h->stage == 0 && type == SHMIPC_EV_EXCHANGE_VER) {
        h->version = SHMIPC_PROTO_MAX; /* min(offer >= 3, ours) */
        h->stage = 1;
        /* Go's server always answers with its maximum, 3. */
        reply(h, SHMIPC_PROTO_MAX, SHMIPC_EV_EXCHANGE_VER, HS_ST_HEADER);
        return 0;
    }
    int rc = take_paths(h);
    if (rc < 0)
        return rc;
    if (type == SHMIPC_EV_SHM_BY_MEMFD) {
        h->mode = HS_MEMFD;
        reply(h, h->version, SHMIPC_EV_ACK_READY_RECV_FD, HS_ST_FDS);
        return 0;
    }
    if (h->stage == 0)
        h->version = SHMIPC_PROTO_V2;
    h->mode = HS_FILE;
    h->st = HS_ST_MAP;
    return 0;
}

static int step_read(struct hs_server *h)
{
    ssize_t n = read(h->fd, h->in + h->have, h->need - h->have);
    if (n == 0)
        return fail(h, SHMIPC_ECLOSED, "peer closed the connection during the handshake");
    if (n < 0) {
        if (errno == EINTR)
            return 0;
        if (errno == EAGAIN)
            return HS_WANT_READ;
        return fail(h, -errno, "read failed during the handshake: %s", strerror(errno));
    }
    h->have += (uint32_t)n;
    if (h->have < h->need)
        return 0;
    if (h->st == HS_ST_HEADER) {
        struct ev_header eh;
        int rc = ev_decode_header(h->in, HS_MAX_EVENT, &eh);
        if (rc < 0)
            return fail(h, rc, "bad handshake event: %s", shmipc_strerror(rc));
        if ((rc = check_sequence(h, &eh)) < 0)
            return rc;
        if (eh.length > SHMIPC_EV_HEADER_LEN) {
            h->need = eh.length;
            h->st = HS_ST_BODY;
            return 0;
        }
    }
    return on_event(h);
}

static int step_fds(struct hs_server *h)
{
    uint8_t byte = 0xff;
    int fds[2], n = 0;
    int rc = sock_recv_fds(h->fd, &byte, fds, 2, &n);
    if (rc == -EAGAIN)
        return HS_WANT_READ;
    if (rc < 0)
        return fail(h, rc, "receiving the memfds failed: %s", shmipc_strerror(rc));
    if (n != 2 || byte != 0) {
        for (int i = 0; i < n; i++)
            close(fds[i]);
        return fail(h, SHMIPC_EPROTO, "fd message carried %d fds and byte 0x%02x; expected 2 "
                    "fds and 0x00", n, byte);
    }
    h->fds[0] = fds[SHMIPC_FD_MSG_BUFFER];
    h->fds[1] = fds[SHMIPC_FD_MSG_QUEUE];
    h->st = HS_ST_MAP;
    return 0;
}

static int step_write(struct hs_server *h)
{
    ssize_t n = send(h->fd, h->out + h->out_sent, h->out_len - h->out_sent, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno == EINTR)
            return 0;
        if (errno == EAGAIN)
            return HS_WANT_WRITE;
        return fail(h, -errno, "write failed during the handshake: %s", strerror(errno));
    }
    h->out_sent += (uint32_t)n;
    if (h->out_sent == h->out_len) {
        if (h->after_write == HS_ST_HEADER)
            expect_header(h);
        else
            h->st = h->after_write;
    }
    return 0;
}

int hs_server_step(struct hs_server *h)
{
    for (;;) {
        if (h->st == HS_ST_FAILED)
            return h->err;
        if (h->st == HS_ST_DONE)
            return HS_DONE;
        if (h->st == HS_ST_MAP)
            return HS_MAP;
        if (sock_now_ns() >= h->deadline_ns)
            return fail(h, SHMIPC_ETIMEDOUT, "handshake not finished before its deadline");
        int rc;
        switch (h->st) {
        case HS_ST_HEADER:
        case HS_ST_BODY:
            rc = step_read(h);
            break;
        case HS_ST_FDS:
            rc = step_fds(h);
            break;
        case HS_ST_WRITE:
            rc = step_write(h);
            break;
        default:
            rc = fail(h, SHMIPC_EPROTO, "handshake in an impossible state");
        }
        if (rc != 0)
            return rc;
    }
}

int hs_server_mapped(struct hs_server *h, int ok, int err)
{
    if (h->st != HS_ST_MAP)
        return fail(h, -EINVAL, "mapped() called outside the map step");
    if (!ok)
        return fail(h, err, "mapping the shared memory failed: %s", shmipc_strerror(err));
    if (h->version == SHMIPC_PROTO_V2) {
        h->st = HS_ST_DONE; /* version 2 has no acknowledgement */
        return 0;
    }
    reply(h, h->version, SHMIPC_EV_ACK_SHM, HS_ST_DONE);
    return 0;
}

void hs_server_take_fds(struct hs_server *h, int *buffer_fd, int *queue_fd)
{
    *buffer_fd = h->fds[0];
    *queue_fd = h->fds[1];
    h->fds[0] = h->fds[1] = -1;
}

void hs_server_cleanup(struct hs_server *h)
{
    for (int i = 0; i < 2; i++) {
        if (h->fds[i] >= 0)
            close(h->fds[i]);
        h->fds[i] = -1;
    }
}

/* ---- client ---- */

static int send_simple(int fd, uint8_t version, uint8_t type, uint64_t deadline)
{
    uint8_t ev[SHMIPC_EV_HEADER_LEN];
    ev_encode_simple(ev, sizeof(ev), version, type);
    return sock_write_all(fd, ev, sizeof(ev), deadline);
}

static int send_meta(int fd, uint8_t version, uint8_t type, const char *qpath, const char *bpath,
                     uint64_t deadline)
{
    uint8_t ev[HS_MAX_EVENT];
    if (strlen(qpath) > HS_MAX_PATH || strlen(bpath) > HS_MAX_PATH)
        return -ENAMETOOLONG;
    int n = ev_encode_shm_meta(ev, sizeof(ev), version, type, qpath, bpath);
    if (n < 0)
        return n;
    return sock_write_all(fd, ev, (size_t)n, deadline);
}

/* Reads one header-only reply and checks its type. */
static int expect_reply(int fd, uint8_t type, uint64_t deadline, struct ev_header *eh)
{
    uint8_t ev[SHMIPC_EV_HEADER_LEN];
    int rc = sock_read_exact(fd, ev, sizeof(ev), deadline);
    if (rc < 0)
        return rc;
    if ((rc = ev_decode_header(ev, HS_MAX_EVENT, eh)) < 0)
        return rc;
    return eh->type == type && eh->length == SHMIPC_EV_HEADER_LEN ? 0 : SHMIPC_EPROTO;
}

int hs_client(int fd, enum hs_mode mode, uint8_t version, const char *queue_path,
              const char *buffer_path, int buffer_fd, int queue_fd, uint64_t deadline_ns,
              uint8_t *version_out)
{
    struct ev_header eh;
    int rc;
    if (mode == HS_FILE && version == SHMIPC_PROTO_V2) {
        *version_out = SHMIPC_PROTO_V2;
        return send_meta(fd, SHMIPC_PROTO_V2, SHMIPC_EV_SHM_BY_PATH, queue_path, buffer_path,
                         deadline_ns);
    }
    if ((rc = send_simple(fd, SHMIPC_PROTO_V3, SHMIPC_EV_EXCHANGE_VER, deadline_ns)) < 0 ||
        (rc = expect_reply(fd, SHMIPC_EV_EXCHANGE_VER, deadline_ns, &eh)) < 0)
        return rc;
    uint8_t v = eh.version < SHMIPC_PROTO_V3 ? eh.version : SHMIPC_PROTO_V3;
    if (v < SHMIPC_PROTO_V3)
        return SHMIPC_EPROTO;
    if (mode == HS_MEMFD) {
        int fds[2] = {buffer_fd, queue_fd};
        if ((rc = send_meta(fd, v, SHMIPC_EV_SHM_BY_MEMFD, queue_path, buffer_path,
                            deadline_ns)) < 0 ||
            (rc = expect_reply(fd, SHMIPC_EV_ACK_READY_RECV_FD, deadline_ns, &eh)) < 0 ||
            (rc = sock_send_fds(fd, fds, 2, deadline_ns)) < 0)
            return rc;
    } else if ((rc = send_meta(fd, v, SHMIPC_EV_SHM_BY_PATH, queue_path, buffer_path,
                               deadline_ns)) < 0) {
        return rc;
    }
    if ((rc = expect_reply(fd, SHMIPC_EV_ACK_SHM, deadline_ns, &eh)) < 0)
        return rc;
    *version_out = v;
    return 0;
}
