/*
 * Fuzz target: the server side of both handshakes (src/proto/handshake.c,
 * sock_recv_fds in src/proto/sock.c).
 *
 * The input is a hostile client: four control bytes, then the byte stream
 * it writes. Control bytes:
 *   [0] bit0 allow memfd mode; bit1 the caller's mapping succeeds; bit2 the
 *       caller takes the fds at HS_MAP (else cleanup closes them); bit3 the
 *       client shuts down its write side when its bytes are out; bit4 the
 *       deadline has already passed; bit5 call hs_server_mapped() once more
 *       at the end, outside the map step; bit6 the client closes its socket
 *       right after its last bytes (the server's replies then fail)
 *   [1] fd message: bit2 send one; bits0-1 how many fds (0-3); bits3-5 per
 *       fd a memfd (0) or a pipe end (1); bit6 data byte 0x01 instead of
 *       0x00; bit7 send it when the server waits for fds, else at the
 *       stream offset 4 * [2]
 *   [3] chunking: 0 writes the stream at once, else chunk sizes from a
 *       small generator seeded with it
 * Both socket ends are non-blocking and the loop steps the state machine
 * until it is done, failed, or waits for bytes the client no longer has.
 * Every reply must be a valid header-only event, and no fd may leak: the
 * count of open fds must be the same after every input.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "proto/event.h"
#include "proto/handshake.h"
#include "proto/sock.h"
#include "shmipc/errors.h"

#define MAX_STEPS 100000

struct client {
    int fd;
    uint8_t replies[64]; /* bytes read back from the server */
    size_t nreplies;     /* bytes in replies[] not yet checked */
    int nevents;
    int saw_exchange, saw_ready, saw_ack;
};

/* One fd to pass: a memfd, or the read end of a pipe. */
static int make_fd(int pipe_end)
{
    if (!pipe_end) {
        int fd = memfd_create("shmipc-fuzz", MFD_CLOEXEC);
        FZ_CHECK(fd >= 0);
        return fd;
    }
    int p[2];
    FZ_CHECK(pipe2(p, O_CLOEXEC) == 0);
    close(p[1]);
    return p[0];
}

static void send_fd_message(int sock, uint8_t ctl)
{
    int nfds = ctl & 3, fds[3];
    uint8_t byte = (ctl & 0x40) ? 1 : 0;
    for (int i = 0; i < nfds; i++)
        fds[i] = make_fd((ctl >> (3 + i)) & 1);
    union {
        struct cmsghdr h;
        uint8_t buf[CMSG_SPACE(sizeof(int) * 3)];
    } u;
    memset(&u, 0, sizeof(u));
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        msg.msg_control = u.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t w = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    FZ_CHECK(w == 1 || (w < 0 && (errno == EAGAIN || errno == EPIPE)));
    for (int i = 0; i < nfds; i++)
        close(fds[i]); /* the copies in flight belong to the socket now */
}

/* Reads what the server wrote and checks each whole event. */
static void drain_replies(struct client *c)
{
    while (c->fd >= 0) {
        ssize_t r =
            recv(c->fd, c->replies + c->nreplies, sizeof(c->replies) - c->nreplies, MSG_DONTWAIT);
        if (r <= 0)
            break;
        c->nreplies += (size_t)r;
        while (c->nreplies >= SHMIPC_EV_HEADER_LEN) {
            struct ev_header eh;
            FZ_CHECK(ev_decode_header(c->replies, SHMIPC_EV_HEADER_LEN, &eh) == 0);
            FZ_CHECK(eh.length == SHMIPC_EV_HEADER_LEN);
            switch (eh.type) {
            case SHMIPC_EV_EXCHANGE_VER:
                FZ_CHECK(c->nevents == 0 && eh.version == SHMIPC_PROTO_MAX);
                c->saw_exchange = 1;
                break;
            case SHMIPC_EV_ACK_READY_RECV_FD:
                FZ_CHECK(c->saw_exchange && !c->saw_ready && eh.version == SHMIPC_PROTO_V3);
                c->saw_ready = 1;
                break;
            case SHMIPC_EV_ACK_SHM:
                FZ_CHECK(c->saw_exchange && !c->saw_ack && eh.version == SHMIPC_PROTO_V3);
                c->saw_ack = 1;
                break;
            default:
                FZ_CHECK(!"the server sent an unexpected event type");
            }
            c->nevents++;
            c->nreplies -= SHMIPC_EV_HEADER_LEN;
            memmove(c->replies, c->replies + SHMIPC_EV_HEADER_LEN, c->nreplies);
        }
    }
}

static void check_map_step(const struct hs_server *h)
{
    FZ_CHECK(h->version == SHMIPC_PROTO_V2 || h->version == SHMIPC_PROTO_V3);
    FZ_CHECK(strnlen(h->queue_path, sizeof(h->queue_path)) < sizeof(h->queue_path));
    FZ_CHECK(strnlen(h->buffer_path, sizeof(h->buffer_path)) < sizeof(h->buffer_path));
    FZ_CHECK(h->queue_path[0] != '\0' && h->buffer_path[0] != '\0');
    if (h->mode == HS_MEMFD) {
        FZ_CHECK(h->allow_memfd && h->version == SHMIPC_PROTO_V3);
        for (int i = 0; i < 2; i++) {
            int fl = fcntl(h->fds[i], F_GETFD);
            FZ_CHECK(fl >= 0 && (fl & FD_CLOEXEC));
        }
    } else {
        FZ_CHECK(h->mode == HS_FILE && h->fds[0] == -1 && h->fds[1] == -1);
    }
}

/* Next chunk size from a tiny generator (1..64 bytes); 0 seed: all at once. */
static size_t next_chunk(uint32_t *state, size_t left)
{
    if (*state == 0)
        return left;
    *state = *state * 1103515245u + 12345u;
    size_t k = 1 + ((*state >> 16) & 63);
    return k < left ? k : left;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int baseline_fds = -1;
    if (baseline_fds < 0)
        baseline_fds = fz_count_fds();

    struct fz in = {data, size};
    uint8_t flags = fz_u8(&in), fdctl = fz_u8(&in), fdpos = fz_u8(&in);
    uint32_t chunk_state = fz_u8(&in);
    const uint8_t *stream = in.p;
    size_t n = fz_left(&in);
    size_t fd_at = (size_t)fdpos * 4 < n ? (size_t)fdpos * 4 : n;
    int want_fdmsg = (fdctl & 4) != 0, fd_when_asked = (fdctl & 0x80) != 0;

    int sv[2];
    FZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    struct client c = {.fd = sv[1]};
    struct hs_server h;
    hs_server_init(&h, sv[0], flags & 1, (flags & 0x10) ? 0 : sock_deadline(1000));

    size_t pos = 0;
    int fds_sent = 0, eof_sent = 0, mapped = 0, rc;
    for (int steps = 0;; steps++) {
        FZ_CHECK(steps < MAX_STEPS);
        rc = hs_server_step(&h);
        drain_replies(&c);
        if (rc < 0) {
            FZ_CHECK(h.why[0] != '\0' && strnlen(h.why, sizeof(h.why)) < sizeof(h.why));
            FZ_CHECK(hs_server_step(&h) == rc); /* failed for good */
            break;
        }
        if (rc == HS_DONE) {
            FZ_CHECK(mapped);
            break;
        }
        if (rc == HS_MAP) {
            FZ_CHECK(!mapped);
            mapped = 1;
            check_map_step(&h);
            if (flags & 4) {
                int bfd, qfd;
                hs_server_take_fds(&h, &bfd, &qfd);
                FZ_CHECK((bfd >= 0) == (h.mode == HS_MEMFD) && (qfd >= 0) == (h.mode == HS_MEMFD));
                if (bfd >= 0)
                    close(bfd);
                if (qfd >= 0)
                    close(qfd);
            }
            int ok = (flags & 2) != 0;
            int mrc = hs_server_mapped(&h, ok, ok ? 0 : (fdctl & 1) ? SHMIPC_EBADPOOL : 0);
            FZ_CHECK(ok ? mrc == 0 : mrc < 0);
            continue;
        }
        if (rc == HS_WANT_WRITE)
            continue; /* the client end is drained after every step */
        FZ_CHECK(rc == HS_WANT_READ);
        if (want_fdmsg && !fds_sent && (fd_when_asked ? h.st == HS_ST_FDS : pos >= fd_at)) {
            send_fd_message(c.fd, fdctl);
            fds_sent = 1;
            continue;
        }
        if (pos < n && c.fd >= 0) {
            size_t k = next_chunk(&chunk_state, n - pos);
            if (!fd_when_asked && want_fdmsg && !fds_sent && pos + k > fd_at)
                k = fd_at - pos;
            ssize_t w = send(c.fd, stream + pos, k, MSG_NOSIGNAL | MSG_DONTWAIT);
            FZ_CHECK(w > 0 || (w < 0 && (errno == EAGAIN || errno == EPIPE)));
            if (w < 0 && errno == EPIPE)
                pos = n;
            else if (w > 0)
                pos += (size_t)w;
            if (pos == n && (flags & 0x40) && !(want_fdmsg && !fds_sent)) {
                close(c.fd); /* before the server has read the last bytes */
                c.fd = -1;
            }
            continue;
        }
        if ((flags & 8) && !eof_sent && c.fd >= 0) {
            shutdown(c.fd, SHUT_WR);
            eof_sent = 1;
            continue;
        }
        break; /* waits for bytes this client will never send */
    }
    FZ_CHECK(c.nevents <= 3);
    if (rc == HS_DONE)
        FZ_CHECK(h.version == SHMIPC_PROTO_V2 ? c.nevents == 0 : c.saw_ack);
    if (flags & 0x20) /* never in the map step here: the loop answered it */
        FZ_CHECK(hs_server_mapped(&h, 1, 0) < 0);

    hs_server_cleanup(&h);
    FZ_CHECK(h.fds[0] == -1 && h.fds[1] == -1);
    close(sv[0]);
    if (c.fd >= 0)
        close(c.fd);
    int now = fz_count_fds();
    if (now != baseline_fds) {
        fprintf(stderr, "fd leak: %d open after the input, %d before\n", now, baseline_fds);
        abort();
    }
    return 0;
}
