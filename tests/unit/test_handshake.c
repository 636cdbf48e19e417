/*
 * Handshakes (PROTOCOL.md section 3): our client and our server state
 * machine against the golden bytes of events.hex (section B is a whole v3
 * memfd handshake recorded between the Go client and server), against each
 * other, and against peers that break the rules.
 *
 * Scripted peers run in this process on a non-blocking socketpair (the
 * server state machine never blocks); a blocking hs_client() runs in a
 * forked child with a deadline whenever the other end has to answer it.
 * Vector bytes are only ever read from the file, never written here.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/event.h"
#include "proto/handshake.h"
#include "proto/sock.h"
#include "shm/region.h"
#include "shmipc/errors.h"
#include "testutil.h"

#define DEADLINE_MS 20000
#define SHORT_MS 50

#define QPATH "/dev/shm/x_queue_0" /* the names section B was recorded with */
#define BPATH "/dev/shm/x_buffer"

/* ---- helpers ---- */

/* A 4 KiB memfd whose first bytes are `mark`. */
static int make_memfd(const char *mark)
{
    int fd = memfd_create(mark, MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, 4096) < 0 || pwrite(fd, mark, strlen(mark), 0) != (ssize_t)strlen(mark)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void load(struct vec_file *vf)
{
    CU_ASSERT_EQUAL_FATAL(vec_load("events.hex", vf), 0);
}

static const struct vec_record *rec(const struct vec_file *vf, const char *label)
{
    const struct vec_record *r = vec_find(vf, label);
    if (r == NULL)
        fprintf(stderr, "\n  vector %s missing from events.hex\n", label);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    return r;
}

static int put(int fd, const void *p, size_t n)
{
    return sock_write_all(fd, p, n, sock_deadline(DEADLINE_MS));
}

static int put_rec(int fd, const struct vec_file *vf, const char *label)
{
    const struct vec_record *r = rec(vf, label);
    return put(fd, r->bytes, r->len);
}

/* Reads n bytes that must already be there (or arrive soon) and compares
 * them with a vector record. */
static int got_rec(int fd, const struct vec_file *vf, const char *label)
{
    const struct vec_record *r = rec(vf, label);
    uint8_t buf[HS_MAX_EVENT];
    CU_ASSERT_FATAL(r->len <= sizeof(buf));
    if (sock_read_exact(fd, buf, r->len, sock_deadline(DEADLINE_MS)) != 0)
        return 0;
    return vec_check(vf, label, buf, r->len);
}

/* 1 if nothing at all is queued for reading on fd (non-blocking). */
static int nothing_queued(int fd)
{
    uint8_t b;
    return recv(fd, &b, 1, MSG_DONTWAIT | MSG_PEEK) < 0 && errno == EAGAIN;
}

/* Steps the server, waiting with poll() while it wants I/O, until it
 * stops asking or max_ms have passed (then the last want is returned). */
static int drive(struct hs_server *h, int max_ms)
{
    uint64_t stop = tu_now_ns() + (uint64_t)max_ms * 1000000u;
    for (;;) {
        int rc = hs_server_step(h);
        if ((rc != HS_WANT_READ && rc != HS_WANT_WRITE) || tu_now_ns() > stop)
            return rc;
        struct pollfd p = {h->fd, (short)(rc == HS_WANT_READ ? POLLIN : POLLOUT), 0};
        poll(&p, 1, 10);
    }
}

static int is_c2s(const struct vec_record *r)
{
    return strncmp(r->label, "hs", 2) == 0 && strstr(r->label, ".C>S.") != NULL;
}

static int is_s2c(const struct vec_record *r)
{
    return strncmp(r->label, "hs", 2) == 0 && strstr(r->label, ".S>C.") != NULL;
}

/* ---- golden bytes, client side ---- */

struct client_job {
    int fd;
    enum hs_mode mode;
    uint8_t version, expect_version;
    const char *queue_path, *buffer_path;
    int buffer_fd, queue_fd;
};

static int client_child(void *arg)
{
    const struct client_job *j = arg;
    uint8_t v = 0;
    int rc = hs_client(j->fd, j->mode, j->version, j->queue_path, j->buffer_path, j->buffer_fd,
                       j->queue_fd, sock_deadline(DEADLINE_MS), &v);
    if (rc != 0 || v != j->expect_version) {
        fprintf(stderr, "\n  hs_client: %s, version %u\n", shmipc_strerror(rc), v);
        return 1;
    }
    return 0;
}

/* Receives the client's fd message and checks it against section B: the
 * data record, the cmsghdr record, exactly two fds [buffer, queue]. */
static void check_client_fd_msg(int fd, const struct vec_file *vf, const struct vec_record *data,
                                int buffer_fd, int queue_fd)
{
    const struct vec_record *hdr = rec(vf, "hs06.C>S.fd-cmsghdr");
    struct pollfd p = {fd, POLLIN, 0};
    CU_ASSERT_FATAL(poll(&p, 1, DEADLINE_MS) == 1);
    uint8_t bytes[16];
    union {
        struct cmsghdr h;
        uint8_t buf[CMSG_SPACE(sizeof(int) * 8)];
    } ctl;
    struct iovec iov = {bytes, sizeof(bytes)};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = ctl.buf,
                         .msg_controllen = sizeof(ctl.buf)};
    ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    CU_ASSERT_EQUAL_FATAL(n, (ssize_t)data->len); /* one byte: nothing glued to it */
    CU_ASSERT_VEC(vf, data->label, bytes, (size_t)n);
    CU_ASSERT_EQUAL(msg.msg_flags & MSG_CTRUNC, 0);
    CU_ASSERT_EQUAL_FATAL(msg.msg_controllen, CMSG_SPACE(2 * sizeof(int)));
    CU_ASSERT_VEC(vf, hdr->label, ctl.buf, sizeof(struct cmsghdr));
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    CU_ASSERT_FATAL(c != NULL && c->cmsg_len == CMSG_LEN(2 * sizeof(int)));
    int got[2];
    memcpy(got, CMSG_DATA(c), sizeof(got));
    CU_ASSERT_EQUAL(tu_ino_of(got[0]), tu_ino_of(buffer_fd));
    CU_ASSERT_EQUAL(tu_ino_of(got[1]), tu_ino_of(queue_fd));
    close(got[0]);
    close(got[1]);
}

/* Our client against a scripted server that plays the S>C records of
 * section B and records the C>S stream, which must be the C>S records. */
static void test_client_golden_memfd(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    int bfd = make_memfd("buffer"), qfd = make_memfd("queue");
    CU_ASSERT_FATAL(bfd >= 0 && qfd >= 0);
    CU_ASSERT_NOT_EQUAL(tu_ino_of(bfd), tu_ino_of(qfd));

    struct client_job job = {sv[1], HS_MEMFD, SHMIPC_PROTO_V3, SHMIPC_PROTO_V3, QPATH, BPATH,
                             bfd,   qfd};
    pid_t pid = tu_fork(client_child, &job);
    CU_ASSERT_FATAL(pid > 0);
    close(sv[1]);

    uint64_t c2s = 0;
    int records = 0;
    for (size_t i = 0; i < vf.n; i++) {
        const struct vec_record *r = &vf.recs[i];
        if (is_s2c(r)) {
            CU_ASSERT_EQUAL(put(sv[0], r->bytes, r->len), 0);
            records++;
        } else if (is_c2s(r)) {
            if (strstr(r->label, "fd-cmsghdr") != NULL)
                continue; /* checked with the data byte it came with */
            CU_ASSERT_EQUAL(r->offset, c2s);
            if (strstr(r->label, "fd-data") != NULL)
                check_client_fd_msg(sv[0], &vf, r, bfd, qfd);
            else
                CU_ASSERT(got_rec(sv[0], &vf, r->label));
            c2s += r->len;
            records++;
        }
    }
    CU_ASSERT_EQUAL(records, 6); /* hs01..hs07 without the cmsghdr record */
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0);
    /* The client sent nothing more than those records. */
    uint8_t b;
    CU_ASSERT_EQUAL(sock_read_exact(sv[0], &b, 1, sock_deadline(DEADLINE_MS)), SHMIPC_ECLOSED);
    close(sv[0]);
    close(bfd);
    close(qfd);
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_client_golden_file_v2(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    /* No reply exists in v2, so the client cannot wait for one: run it
     * here. */
    uint8_t v = 0;
    CU_ASSERT_EQUAL(hs_client(sv[1], HS_FILE, SHMIPC_PROTO_V2, QPATH, BPATH, -1, -1,
                              sock_deadline(DEADLINE_MS), &v),
                    0);
    CU_ASSERT_EQUAL(v, SHMIPC_PROTO_V2);
    CU_ASSERT(got_rec(sv[0], &vf, "ShareMemoryByFilePath.v2"));
    CU_ASSERT(nothing_queued(sv[0]));
    tu_close_pair(sv);
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_client_golden_file_v3(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    struct client_job job = {sv[1], HS_FILE, SHMIPC_PROTO_V3, SHMIPC_PROTO_V3, QPATH, BPATH,
                             -1,    -1};
    pid_t pid = tu_fork(client_child, &job);
    CU_ASSERT_FATAL(pid > 0);
    close(sv[1]);
    CU_ASSERT(got_rec(sv[0], &vf, "ExchangeProtoVersion.v3.client"));
    CU_ASSERT_EQUAL(put_rec(sv[0], &vf, "ExchangeProtoVersion.v3.server"), 0);
    CU_ASSERT(got_rec(sv[0], &vf, "ShareMemoryByFilePath.v3"));
    CU_ASSERT_EQUAL(put_rec(sv[0], &vf, "AckShareMemory.v3"), 0);
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0);
    uint8_t b;
    CU_ASSERT_EQUAL(sock_read_exact(sv[0], &b, 1, sock_deadline(DEADLINE_MS)), SHMIPC_ECLOSED);
    close(sv[0]);
    vec_free(&vf);
    FD_LEAK_END();
}

/* The client refuses servers that answer wrongly. The replies are queued
 * before the client runs, so it runs in this process. */
static void client_refusal(const char *what, const uint8_t *reply, size_t n, int shut, int ms,
                           int want)
{
    int fds0 = tu_count_fds();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    int bfd = make_memfd("buffer"), qfd = make_memfd("queue");
    CU_ASSERT_FATAL(bfd >= 0 && qfd >= 0);
    if (n > 0)
        CU_ASSERT_EQUAL(put(sv[0], reply, n), 0);
    if (shut)
        shutdown(sv[0], SHUT_WR);
    uint8_t v = 0xee;
    int rc =
        hs_client(sv[1], HS_MEMFD, SHMIPC_PROTO_V3, QPATH, BPATH, bfd, qfd, sock_deadline(ms), &v);
    if (rc != want)
        fprintf(stderr, "\n  client vs %s: %s, expected %s\n", what, shmipc_err_name(rc),
                shmipc_err_name(want));
    CU_ASSERT_EQUAL(rc, want);
    CU_ASSERT_EQUAL(v, 0xee); /* untouched on failure */
    close(bfd);
    close(qfd);
    tu_close_pair(sv);
    CU_ASSERT_EQUAL(tu_count_fds(), fds0);
}

static void test_client_refusals(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    uint8_t buf[64];
    const struct vec_record *ex = rec(&vf, "hs02.S>C.ExchangeProtoVersion");
    const struct vec_record *ready = rec(&vf, "hs04.S>C.AckReadyRecvFD");
    const struct vec_record *ack = rec(&vf, "hs07.S>C.AckShareMemory");

    /* The server offers only version 2. */
    ev_encode_simple(buf, sizeof(buf), SHMIPC_PROTO_V2, SHMIPC_EV_EXCHANGE_VER);
    client_refusal("ExchangeProtoVersion v2", buf, 8, 0, DEADLINE_MS, SHMIPC_EPROTO);
    /* The wrong event first. */
    client_refusal("AckShareMemory first", ack->bytes, ack->len, 0, DEADLINE_MS, SHMIPC_EPROTO);
    /* Skips AckReadyRecvFD. */
    memcpy(buf, ex->bytes, ex->len);
    memcpy(buf + ex->len, ack->bytes, ack->len);
    client_refusal("no AckReadyRecvFD", buf, ex->len + ack->len, 0, DEADLINE_MS, SHMIPC_EPROTO);
    /* Garbage. */
    memcpy(buf, ex->bytes, ex->len);
    buf[4] ^= 0xff;
    client_refusal("bad magic", buf, ex->len, 0, DEADLINE_MS, SHMIPC_EBADMAGIC);
    /* Goes away after the exchange. */
    client_refusal("EOF after exchange", ex->bytes, ex->len, 1, DEADLINE_MS, SHMIPC_ECLOSED);
    /* Never answers the fd message. */
    memcpy(buf, ex->bytes, ex->len);
    memcpy(buf + ex->len, ready->bytes, ready->len);
    client_refusal("no AckShareMemory", buf, ex->len + ready->len, 0, SHORT_MS, SHMIPC_ETIMEDOUT);
    client_refusal("silence", NULL, 0, 0, SHORT_MS, SHMIPC_ETIMEDOUT);
    vec_free(&vf);
    FD_LEAK_END();
}

/* ---- golden bytes, server side ---- */

static void check_map_memfd(struct hs_server *h)
{
    CU_ASSERT_EQUAL(h->mode, HS_MEMFD);
    CU_ASSERT_EQUAL(h->version, SHMIPC_PROTO_V3);
    CU_ASSERT_STRING_EQUAL(h->queue_path, QPATH);
    CU_ASSERT_STRING_EQUAL(h->buffer_path, BPATH);
}

/* Replays section B's C>S records into the server, `chunk` bytes at a time
 * (0: each record whole), and checks its replies against the S>C records. */
static void server_golden_memfd(size_t chunk)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    const struct vec_record *hdr = rec(&vf, "hs06.C>S.fd-cmsghdr");
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    int mem[2] = {make_memfd("buffer"), make_memfd("queue")}; /* the order sent */
    CU_ASSERT_FATAL(mem[0] >= 0 && mem[1] >= 0);
    struct hs_server h;
    hs_server_init(&h, sv[0], 1, sock_deadline(DEADLINE_MS));
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_WANT_READ);

    uint64_t c2s = 0, s2c = 0;
    int rc = HS_WANT_READ, mapped = 0;
    for (size_t i = 0; i < vf.n; i++) {
        const struct vec_record *r = &vf.recs[i];
        if (is_c2s(r)) {
            if (strstr(r->label, "fd-cmsghdr") != NULL)
                continue;
            CU_ASSERT_EQUAL(r->offset, c2s);
            c2s += r->len;
            if (strstr(r->label, "fd-data") != NULL) {
                CU_ASSERT_EQUAL(rc, HS_WANT_READ);
                CU_ASSERT_EQUAL(tu_send_fds(sv[1], r->bytes, r->len, hdr->bytes, hdr->len, mem, 2),
                                0);
                rc = hs_server_step(&h);
                continue;
            }
            size_t step = chunk ? chunk : r->len;
            for (size_t off = 0; off < r->len; off += step) {
                size_t n = r->len - off < step ? r->len - off : step;
                CU_ASSERT_EQUAL(put(sv[1], r->bytes + off, n), 0);
                rc = hs_server_step(&h);
                if (off + n < r->len)
                    CU_ASSERT_EQUAL(rc, HS_WANT_READ); /* an incomplete event */
            }
        } else if (is_s2c(r)) {
            if (rc == HS_MAP) {
                check_map_memfd(&h);
                CU_ASSERT_EQUAL(hs_server_mapped(&h, 1, 0), 0);
                mapped = 1;
                rc = hs_server_step(&h);
                CU_ASSERT_EQUAL(rc, HS_DONE);
            }
            CU_ASSERT_EQUAL(r->offset, s2c);
            CU_ASSERT(got_rec(sv[1], &vf, r->label));
            s2c += r->len;
        }
    }
    CU_ASSERT(mapped);
    CU_ASSERT_EQUAL(rc, HS_DONE);
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_DONE);
    CU_ASSERT(nothing_queued(sv[1])); /* no byte beyond the S>C records */
    CU_ASSERT(nothing_queued(sv[0])); /* every C>S byte consumed */

    int bfd = -2, qfd = -2;
    hs_server_take_fds(&h, &bfd, &qfd);
    CU_ASSERT_FATAL(bfd >= 0 && qfd >= 0);
    CU_ASSERT_EQUAL(tu_ino_of(bfd), tu_ino_of(mem[0]));
    CU_ASSERT_EQUAL(tu_ino_of(qfd), tu_ino_of(mem[1]));
    int fl = fcntl(bfd, F_GETFD);
    CU_ASSERT(fl >= 0 && (fl & FD_CLOEXEC));
    int b2 = -2, q2 = -2;
    hs_server_take_fds(&h, &b2, &q2); /* taken once only */
    CU_ASSERT(b2 == -1 && q2 == -1);
    close(bfd);
    close(qfd);
    hs_server_cleanup(&h);
    close(mem[0]);
    close(mem[1]);
    tu_close_pair(sv);
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_server_golden_memfd(void)
{
    server_golden_memfd(0);
}

static void test_server_golden_memfd_bytewise(void)
{
    server_golden_memfd(1);
}

static void server_golden_file(uint8_t version, size_t chunk)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    struct hs_server h;
    hs_server_init(&h, sv[0], 1, sock_deadline(DEADLINE_MS));
    int rc;
    if (version == SHMIPC_PROTO_V3) {
        CU_ASSERT_EQUAL(put_rec(sv[1], &vf, "ExchangeProtoVersion.v3.client"), 0);
        CU_ASSERT_EQUAL(hs_server_step(&h), HS_WANT_READ);
        CU_ASSERT(got_rec(sv[1], &vf, "ExchangeProtoVersion.v3.server"));
    }
    const struct vec_record *r = rec(&vf, version == SHMIPC_PROTO_V2 ? "ShareMemoryByFilePath.v2"
                                                                     : "ShareMemoryByFilePath.v3");
    rc = HS_WANT_READ;
    for (size_t off = 0; off < r->len; off += chunk) {
        size_t n = r->len - off < chunk ? r->len - off : chunk;
        CU_ASSERT_EQUAL(put(sv[1], r->bytes + off, n), 0);
        rc = hs_server_step(&h);
        if (off + n < r->len)
            CU_ASSERT_EQUAL(rc, HS_WANT_READ);
    }
    CU_ASSERT_EQUAL_FATAL(rc, HS_MAP);
    CU_ASSERT_EQUAL(h.mode, HS_FILE);
    CU_ASSERT_EQUAL(h.version, version);
    CU_ASSERT_STRING_EQUAL(h.queue_path, QPATH);
    CU_ASSERT_STRING_EQUAL(h.buffer_path, BPATH);
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_MAP); /* waits for the caller */
    int bfd = -2, qfd = -2;
    hs_server_take_fds(&h, &bfd, &qfd);
    CU_ASSERT(bfd == -1 && qfd == -1);
    CU_ASSERT(nothing_queued(sv[1])); /* nothing answered before mapping */
    CU_ASSERT_EQUAL(hs_server_mapped(&h, 1, 0), 0);
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_DONE);
    if (version == SHMIPC_PROTO_V3)
        CU_ASSERT(got_rec(sv[1], &vf, "AckShareMemory.v3"));
    CU_ASSERT(nothing_queued(sv[1])); /* v2: nothing written back at all */
    hs_server_cleanup(&h);
    tu_close_pair(sv);
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_server_golden_file_v2(void)
{
    server_golden_file(SHMIPC_PROTO_V2, 1000);
    server_golden_file(SHMIPC_PROTO_V2, 1);
}

static void test_server_golden_file_v3(void)
{
    server_golden_file(SHMIPC_PROTO_V3, 1000);
    server_golden_file(SHMIPC_PROTO_V3, 5);
}

/* The largest event the server takes: two paths of HS_MAX_PATH bytes. */
static void test_server_longest_paths(void)
{
    FD_LEAK_BEGIN();
    char q[HS_MAX_PATH + 1], b[HS_MAX_PATH + 1];
    memset(q, 'q', HS_MAX_PATH);
    memset(b, 'b', HS_MAX_PATH);
    q[0] = b[0] = '/';
    q[HS_MAX_PATH] = b[HS_MAX_PATH] = '\0';
    uint8_t ev[HS_MAX_EVENT + 16];
    int n = ev_encode_shm_meta(ev, sizeof(ev), SHMIPC_PROTO_V2, SHMIPC_EV_SHM_BY_PATH, q, b);
    CU_ASSERT_EQUAL_FATAL(n, HS_MAX_EVENT);
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    CU_ASSERT_EQUAL(put(sv[1], ev, (size_t)n), 0);
    struct hs_server h;
    hs_server_init(&h, sv[0], 0, sock_deadline(DEADLINE_MS));
    CU_ASSERT_EQUAL_FATAL(hs_server_step(&h), HS_MAP);
    CU_ASSERT_STRING_EQUAL(h.queue_path, q);
    CU_ASSERT_STRING_EQUAL(h.buffer_path, b);
    hs_server_cleanup(&h);
    tu_close_pair(sv);
    FD_LEAK_END();
}

/* ---- a whole handshake through real code on both ends ---- */

static void full_run(enum hs_mode mode, uint8_t version)
{
    FD_LEAK_BEGIN();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    int bfd = -1, qfd = -1;
    if (mode == HS_MEMFD) {
        bfd = make_memfd("full-buffer");
        qfd = make_memfd("full-queue");
        CU_ASSERT_FATAL(bfd >= 0 && qfd >= 0);
    }
    const char *qp = "/dev/shm/full_queue_3", *bp = "/dev/shm/full_buffer";
    struct client_job job = {sv[1], mode, version, mode == HS_MEMFD ? SHMIPC_PROTO_V3 : version,
                             qp,    bp,   bfd,     qfd};
    pid_t pid = tu_fork(client_child, &job);
    CU_ASSERT_FATAL(pid > 0);
    close(sv[1]);

    struct hs_server h;
    hs_server_init(&h, sv[0], 1, sock_deadline(DEADLINE_MS));
    int rc = drive(&h, DEADLINE_MS);
    CU_ASSERT_EQUAL(rc, HS_MAP);
    if (rc == HS_MAP) {
        CU_ASSERT_EQUAL(h.mode, mode);
        CU_ASSERT_EQUAL(h.version, job.expect_version);
        CU_ASSERT_STRING_EQUAL(h.queue_path, qp);
        CU_ASSERT_STRING_EQUAL(h.buffer_path, bp);
        int rb = -2, rq = -2;
        hs_server_take_fds(&h, &rb, &rq);
        if (mode == HS_MEMFD) {
            CU_ASSERT_FATAL(rb >= 0 && rq >= 0);
            CU_ASSERT_EQUAL(tu_ino_of(rb), tu_ino_of(bfd));
            CU_ASSERT_EQUAL(tu_ino_of(rq), tu_ino_of(qfd));
            /* Map them as a server would and see the client's bytes. */
            struct region r;
            region_init(&r);
            CU_ASSERT_EQUAL(region_map_fd(&r, rb, 1, 1 << 20, 0), 0);
            CU_ASSERT(r.base != NULL && memcmp(r.base, "full-buffer", 11) == 0);
            region_close(&r);
            CU_ASSERT_EQUAL(region_map_fd(&r, rq, 1, 1 << 20, 0), 0);
            CU_ASSERT(r.base != NULL && memcmp(r.base, "full-queue", 10) == 0);
            region_close(&r);
        } else {
            CU_ASSERT(rb == -1 && rq == -1);
        }
        CU_ASSERT_EQUAL(hs_server_mapped(&h, 1, 0), 0);
        CU_ASSERT_EQUAL(drive(&h, DEADLINE_MS), HS_DONE);
    }
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0);
    hs_server_cleanup(&h);
    close(sv[0]);
    if (bfd >= 0)
        close(bfd);
    if (qfd >= 0)
        close(qfd);
    FD_LEAK_END();
}

static void test_full_memfd(void)
{
    full_run(HS_MEMFD, SHMIPC_PROTO_V3);
}

static void test_full_file(void)
{
    full_run(HS_FILE, SHMIPC_PROTO_V2);
    full_run(HS_FILE, SHMIPC_PROTO_V3);
}

/* ---- refusals ---- */

struct script {
    uint8_t bytes[1024];
    size_t n;
    int allow_memfd;
    int nfds;        /* -1: no fd message; else one data byte with nfds fds */
    uint8_t fd_byte; /* that data byte */
    int shut;        /* 1: shut the client's write side; 2: close it */
};

static void add(struct script *s, const void *p, size_t n)
{
    CU_ASSERT_FATAL(s->n + n <= sizeof(s->bytes));
    memcpy(s->bytes + s->n, p, n);
    s->n += n;
}

static void add_rec(struct script *s, const struct vec_file *vf, const char *label)
{
    const struct vec_record *r = rec(vf, label);
    add(s, r->bytes, r->len);
}

static void script_init(struct script *s)
{
    memset(s, 0, sizeof(*s));
    s->allow_memfd = 1;
    s->nfds = -1;
}

/* Everything the script sends is queued before the server steps once:
 * the refusal must come from that one step. want 0 means "any negative
 * code". */
static void expect_refused(const char *what, const struct script *s, int want)
{
    int fds0 = tu_count_fds();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    if (s->n > 0)
        CU_ASSERT_EQUAL(put(sv[1], s->bytes, s->n), 0);
    if (s->nfds >= 0) {
        int mem[4];
        for (int i = 0; i < s->nfds; i++)
            CU_ASSERT_FATAL((mem[i] = make_memfd("refused")) >= 0);
        CU_ASSERT_EQUAL(tu_send_fds(sv[1], &s->fd_byte, 1, NULL, 0, mem, s->nfds), 0);
        for (int i = 0; i < s->nfds; i++)
            close(mem[i]);
    }
    if (s->shut == 1)
        shutdown(sv[1], SHUT_WR);
    if (s->shut == 2) {
        close(sv[1]);
        sv[1] = -1;
    }
    int open_now = tu_count_fds();

    struct hs_server h;
    hs_server_init(&h, sv[0], s->allow_memfd, sock_deadline(DEADLINE_MS));
    int rc = hs_server_step(&h);
    if ((want != 0 && rc != want) || rc >= 0)
        fprintf(stderr, "\n  %s: step returned %d (%s), expected %s\n", what, rc,
                rc < 0 ? shmipc_err_name(rc) : "a want", want ? shmipc_err_name(want) : "< 0");
    if (want != 0)
        CU_ASSERT_EQUAL(rc, want);
    CU_ASSERT(rc < 0);
    CU_ASSERT(h.why[0] != '\0');
    CU_ASSERT_EQUAL(hs_server_step(&h), rc);   /* failed for good */
    CU_ASSERT_EQUAL(tu_count_fds(), open_now); /* received fds closed already */
    hs_server_cleanup(&h);
    close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    CU_ASSERT_EQUAL(tu_count_fds(), fds0);
}

static void test_refuse_wrong_first_event(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    struct script s;
    const char *firsts[] = {"Polling.v2",
                            "Polling.v3",
                            "ShareMemoryByMemfd.v3",
                            "ShareMemoryByFilePath.v3",
                            "AckShareMemory.v3",
                            "AckReadyRecvFD.v3",
                            "StreamClose.v3.id7",
                            "FallbackData.v3.id7",
                            "HotRestart.v2.epoch5",
                            "HotRestartAck.v3.epoch5"};
    for (size_t i = 0; i < sizeof(firsts) / sizeof(firsts[0]); i++) {
        script_init(&s);
        add_rec(&s, &vf, firsts[i]);
        expect_refused(firsts[i], &s, SHMIPC_EPROTO);
    }
    uint8_t ev[8];
    script_init(&s);
    ev_encode_simple(ev, sizeof(ev), SHMIPC_PROTO_V2, SHMIPC_EV_EXCHANGE_VER);
    add(&s, ev, 8);
    expect_refused("ExchangeProtoVersion v2", &s, SHMIPC_EPROTO);
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_refuse_bad_header(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    const struct vec_record *ex = rec(&vf, "hs01.C>S.ExchangeProtoVersion");
    struct script s;
    uint8_t ev[8];

    script_init(&s);
    add(&s, ex->bytes, ex->len);
    s.bytes[5] ^= 0x01;
    expect_refused("bad magic", &s, SHMIPC_EBADMAGIC);

    /* Bad magic in the second event. */
    script_init(&s);
    add(&s, ex->bytes, ex->len);
    add_rec(&s, &vf, "hs03.C>S.ShareMemoryByMemfd");
    s.bytes[ex->len + 4] = 0;
    expect_refused("bad magic, second event", &s, SHMIPC_EBADMAGIC);

    script_init(&s);
    ev_encode_header(ev, sizeof(ev), 8, 0, SHMIPC_EV_EXCHANGE_VER);
    add(&s, ev, 8);
    expect_refused("version 0", &s, SHMIPC_EBADVERSION);

    script_init(&s);
    ev_encode_header(ev, sizeof(ev), 8, 3, SHMIPC_EV_TYPE_MAX + 1);
    add(&s, ev, 8);
    expect_refused("type 10", &s, SHMIPC_EBADTYPE);

    /* Longer than HS_MAX_EVENT: refused on its header, before any body. */
    script_init(&s);
    ev_encode_header(ev, sizeof(ev), HS_MAX_EVENT + 1, SHMIPC_PROTO_V2, SHMIPC_EV_SHM_BY_PATH);
    add(&s, ev, 8);
    expect_refused("event longer than HS_MAX_EVENT", &s, SHMIPC_EBIGEVENT);

    script_init(&s);
    ev_encode_header(ev, sizeof(ev), 0xffffffffu, SHMIPC_PROTO_V2, SHMIPC_EV_SHM_BY_PATH);
    add(&s, ev, 8);
    expect_refused("event length 4 GiB", &s, SHMIPC_EBIGEVENT);

    script_init(&s);
    ev_encode_header(ev, sizeof(ev), 11, SHMIPC_PROTO_V2, SHMIPC_EV_SHM_BY_PATH);
    add(&s, ev, 8);
    expect_refused("metadata event shorter than its minimum", &s, SHMIPC_ESHORTEVENT);

    script_init(&s);
    ev_encode_header(ev, sizeof(ev), 9, SHMIPC_PROTO_V3, SHMIPC_EV_EXCHANGE_VER);
    add(&s, ev, 8);
    expect_refused("ExchangeProtoVersion with a body", &s, SHMIPC_ESHORTEVENT);
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_refuse_bad_metadata(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    const struct vec_record *v2 = rec(&vf, "ShareMemoryByFilePath.v2");
    struct script s;
    uint8_t ev[600];

    /* One byte more than the two paths fill. */
    script_init(&s);
    add(&s, v2->bytes, v2->len);
    ev_put_be32(s.bytes, (uint32_t)v2->len + 1);
    add(&s, "x", 1);
    expect_refused("trailing byte after the paths", &s, SHMIPC_EBADEVENT);

    /* The queue path's length overruns into the buffer path's. */
    script_init(&s);
    add(&s, v2->bytes, v2->len);
    ev_put_be16(s.bytes + 8, ev_get_be16(s.bytes + 8) + 1);
    expect_refused("queue length overruns", &s, SHMIPC_EBADEVENT);

    script_init(&s);
    add(&s, v2->bytes, v2->len);
    ev_put_be16(s.bytes + 8, 0xffff);
    expect_refused("queue length 65535", &s, SHMIPC_EBADEVENT);

    /* Lengths that stop short of the end. */
    script_init(&s);
    add(&s, v2->bytes, v2->len);
    size_t boff = 8 + 2 + ev_get_be16(v2->bytes + 8);
    ev_put_be16(s.bytes + boff, ev_get_be16(s.bytes + boff) - 1);
    expect_refused("buffer length too short", &s, SHMIPC_EBADEVENT);

    char p256[257];
    memset(p256, 'p', 256);
    p256[0] = '/';
    p256[256] = '\0';
    char p255[256];
    memcpy(p255, p256, 255);
    p255[255] = '\0';
    const struct {
        const char *what, *q, *b;
    } paths[] = {
        {"empty queue path", "", BPATH},
        {"empty buffer path", QPATH, ""},
        {"256-byte queue path", p256, BPATH},
        {"256-byte buffer path", QPATH, p256},
        {"255-byte queue path, empty buffer path", p255, ""},
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        script_init(&s);
        int n = ev_encode_shm_meta(ev, sizeof(ev), SHMIPC_PROTO_V2, SHMIPC_EV_SHM_BY_PATH,
                                   paths[i].q, paths[i].b);
        CU_ASSERT_FATAL(n > 0);
        add(&s, ev, (size_t)n);
        expect_refused(paths[i].what, &s, SHMIPC_EBADEVENT);
    }

    /* A NUL inside a path would shorten it silently. */
    script_init(&s);
    add(&s, v2->bytes, v2->len);
    s.bytes[8 + 2 + 5] = '\0';
    expect_refused("NUL in the queue path", &s, SHMIPC_EBADEVENT);

    /* The same rules after a version exchange, in memfd mode. */
    script_init(&s);
    add_rec(&s, &vf, "hs01.C>S.ExchangeProtoVersion");
    int n = ev_encode_shm_meta(ev, sizeof(ev), SHMIPC_PROTO_V3, SHMIPC_EV_SHM_BY_MEMFD, "", BPATH);
    CU_ASSERT_FATAL(n > 0);
    add(&s, ev, (size_t)n);
    expect_refused("empty name, memfd mode", &s, SHMIPC_EBADEVENT);
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_refuse_sequence(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    const struct vec_record *hs03 = rec(&vf, "hs03.C>S.ShareMemoryByMemfd");
    struct script s;

    script_init(&s);
    s.allow_memfd = 0;
    add_rec(&s, &vf, "hs01.C>S.ExchangeProtoVersion");
    add_rec(&s, &vf, "hs03.C>S.ShareMemoryByMemfd");
    expect_refused("memfd mode when allow_memfd=0", &s, SHMIPC_EPROTO);

    const uint8_t versions[] = {SHMIPC_PROTO_V2, 4};
    for (size_t i = 0; i < sizeof(versions); i++) {
        script_init(&s);
        add_rec(&s, &vf, "hs01.C>S.ExchangeProtoVersion");
        size_t at = s.n;
        add(&s, hs03->bytes, hs03->len);
        s.bytes[at + 6] = versions[i];
        expect_refused("version mismatch in the second event", &s, SHMIPC_EPROTO);
    }
    script_init(&s);
    add_rec(&s, &vf, "hs01.C>S.ExchangeProtoVersion");
    add_rec(&s, &vf, "ShareMemoryByFilePath.v2");
    expect_refused("file path v2 after a v3 exchange", &s, SHMIPC_EPROTO);

    const char *seconds[] = {"hs01.C>S.ExchangeProtoVersion", "Polling.v3", "AckShareMemory.v3",
                             "HotRestartAck.v3.epoch5"};
    for (size_t i = 0; i < sizeof(seconds) / sizeof(seconds[0]); i++) {
        script_init(&s);
        add_rec(&s, &vf, "hs01.C>S.ExchangeProtoVersion");
        add_rec(&s, &vf, seconds[i]);
        expect_refused(seconds[i], &s, SHMIPC_EPROTO);
    }
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_refuse_fd_message(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    struct script s;
    const struct {
        const char *what;
        int nfds;
        uint8_t byte;
    } cases[] = {
        {"fd message with 1 fd", 1, 0},      {"fd message with 3 fds", 3, 0},
        {"fd message with byte 0x01", 2, 1}, {"fd message with byte 0xff", 2, 0xff},
        {"fd message without fds", 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        script_init(&s);
        add_rec(&s, &vf, "hs01.C>S.ExchangeProtoVersion");
        add_rec(&s, &vf, "hs03.C>S.ShareMemoryByMemfd");
        s.nfds = cases[i].nfds;
        s.fd_byte = cases[i].byte;
        expect_refused(cases[i].what, &s, SHMIPC_EPROTO);
    }
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_refuse_peer_closes(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    const struct vec_record *hs01 = rec(&vf, "hs01.C>S.ExchangeProtoVersion");
    const struct vec_record *hs03 = rec(&vf, "hs03.C>S.ShareMemoryByMemfd");
    struct script s;

    script_init(&s);
    s.shut = 1;
    expect_refused("EOF before anything", &s, SHMIPC_ECLOSED);

    script_init(&s);
    add(&s, hs01->bytes, 4);
    s.shut = 1;
    expect_refused("EOF in the first header", &s, SHMIPC_ECLOSED);

    script_init(&s);
    add(&s, hs01->bytes, hs01->len);
    add(&s, hs03->bytes, 20);
    s.shut = 1;
    expect_refused("EOF in the metadata body", &s, SHMIPC_ECLOSED);

    script_init(&s);
    add(&s, hs01->bytes, hs01->len);
    add(&s, hs03->bytes, hs03->len);
    s.shut = 1;
    expect_refused("EOF instead of the fd message", &s, SHMIPC_ECLOSED);

    script_init(&s);
    add_rec(&s, &vf, "ShareMemoryByFilePath.v2");
    s.n -= 1; /* the last byte of the buffer path never comes */
    s.shut = 1;
    expect_refused("EOF one byte short", &s, SHMIPC_ECLOSED);

    /* Gone entirely: the reply to the exchange cannot be written. */
    script_init(&s);
    add(&s, hs01->bytes, hs01->len);
    s.shut = 2;
    expect_refused("peer closed after the exchange", &s, 0);
    vec_free(&vf);
    FD_LEAK_END();
}

static void test_refuse_deadline(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    const struct vec_record *hs01 = rec(&vf, "hs01.C>S.ExchangeProtoVersion");
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    CU_ASSERT_EQUAL(put(sv[1], hs01->bytes, 4), 0); /* half a header, then silence */
    struct hs_server h;
    hs_server_init(&h, sv[0], 1, sock_deadline(100));
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_WANT_READ);
    int rc = drive(&h, DEADLINE_MS);
    CU_ASSERT_EQUAL(rc, SHMIPC_ETIMEDOUT);
    CU_ASSERT(h.why[0] != '\0');
    CU_ASSERT_EQUAL(hs_server_step(&h), SHMIPC_ETIMEDOUT);
    hs_server_cleanup(&h);
    tu_close_pair(sv);

    /* Stalled in the middle: names sent, fds never. */
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    CU_ASSERT_EQUAL(put_rec(sv[1], &vf, "hs01.C>S.ExchangeProtoVersion"), 0);
    CU_ASSERT_EQUAL(put_rec(sv[1], &vf, "hs03.C>S.ShareMemoryByMemfd"), 0);
    hs_server_init(&h, sv[0], 1, sock_deadline(100));
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_WANT_READ);
    CU_ASSERT_EQUAL(drive(&h, DEADLINE_MS), SHMIPC_ETIMEDOUT);
    CU_ASSERT(h.why[0] != '\0');
    hs_server_cleanup(&h);
    tu_close_pair(sv);

    /* A deadline already gone fails at the first step, data or not. */
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    CU_ASSERT_EQUAL(put_rec(sv[1], &vf, "ShareMemoryByFilePath.v2"), 0);
    hs_server_init(&h, sv[0], 1, sock_now_ns() - 1);
    CU_ASSERT_EQUAL(hs_server_step(&h), SHMIPC_ETIMEDOUT);
    hs_server_cleanup(&h);
    tu_close_pair(sv);
    vec_free(&vf);
    FD_LEAK_END();
}

/* Brings a server to HS_MAP in memfd mode with memfds [buffer, queue]. */
static void to_map(struct hs_server *h, int sv[2], const struct vec_file *vf, int mem[2])
{
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    mem[0] = make_memfd("buffer");
    mem[1] = make_memfd("queue");
    CU_ASSERT_FATAL(mem[0] >= 0 && mem[1] >= 0);
    CU_ASSERT_EQUAL(put_rec(sv[1], vf, "hs01.C>S.ExchangeProtoVersion"), 0);
    CU_ASSERT_EQUAL(put_rec(sv[1], vf, "hs03.C>S.ShareMemoryByMemfd"), 0);
    uint8_t zero = 0;
    CU_ASSERT_EQUAL(tu_send_fds(sv[1], &zero, 1, NULL, 0, mem, 2), 0);
    hs_server_init(h, sv[0], 1, sock_deadline(DEADLINE_MS));
    CU_ASSERT_EQUAL_FATAL(hs_server_step(h), HS_MAP);
}

static void test_refuse_mapping(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    struct hs_server h;
    int sv[2], mem[2];

    to_map(&h, sv, &vf, mem);
    CU_ASSERT_EQUAL(hs_server_mapped(&h, 0, SHMIPC_EBADPOOL), SHMIPC_EBADPOOL);
    CU_ASSERT_EQUAL(hs_server_step(&h), SHMIPC_EBADPOOL);
    CU_ASSERT(h.why[0] != '\0');
    /* No AckShareMemory: only the two replies before it were sent. */
    CU_ASSERT(got_rec(sv[1], &vf, "hs02.S>C.ExchangeProtoVersion"));
    CU_ASSERT(got_rec(sv[1], &vf, "hs04.S>C.AckReadyRecvFD"));
    CU_ASSERT(nothing_queued(sv[1]));
    hs_server_cleanup(&h); /* closes the fds nobody took */
    tu_close_pair(sv);
    close(mem[0]);
    close(mem[1]);

    /* A refusal without a code still fails, with a negative code. */
    to_map(&h, sv, &vf, mem);
    int rc = hs_server_mapped(&h, 0, 0);
    CU_ASSERT(rc < 0);
    CU_ASSERT(hs_server_step(&h) < 0);
    CU_ASSERT(h.why[0] != '\0');
    hs_server_cleanup(&h);
    tu_close_pair(sv);
    close(mem[0]);
    close(mem[1]);

    /* mapped() before the map step is a misuse, and fails the handshake. */
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    hs_server_init(&h, sv[0], 1, sock_deadline(DEADLINE_MS));
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_WANT_READ);
    CU_ASSERT(hs_server_mapped(&h, 1, 0) < 0);
    CU_ASSERT(hs_server_step(&h) < 0);
    hs_server_cleanup(&h);
    tu_close_pair(sv);
    vec_free(&vf);
    FD_LEAK_END();
}

/* ---- the server reads exactly one event at a time ---- */

static void test_no_read_ahead(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    const struct vec_record *hs03 = rec(&vf, "hs03.C>S.ShareMemoryByMemfd");
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    int mem[2] = {make_memfd("buffer"), make_memfd("queue")};
    CU_ASSERT_FATAL(mem[0] >= 0 && mem[1] >= 0);
    struct hs_server h;
    hs_server_init(&h, sv[0], 1, sock_deadline(DEADLINE_MS));
    CU_ASSERT_EQUAL(put_rec(sv[1], &vf, "hs01.C>S.ExchangeProtoVersion"), 0);
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_WANT_READ);
    CU_ASSERT(got_rec(sv[1], &vf, "hs02.S>C.ExchangeProtoVersion"));

    /* Fill the server-to-client direction so the AckReadyRecvFD cannot go
     * out: the state machine then stops right after the metadata event. */
    uint8_t junk[4096];
    memset(junk, 0xa5, sizeof(junk));
    size_t filled = 0;
    for (size_t chunk = sizeof(junk); chunk > 0; chunk /= 2) {
        ssize_t w;
        while ((w = send(sv[0], junk, chunk, MSG_DONTWAIT | MSG_NOSIGNAL)) > 0)
            filled += (size_t)w;
    }
    CU_ASSERT_FATAL(filled > 0);

    /* The metadata event and the fd message, queued together. */
    CU_ASSERT_EQUAL(put(sv[1], hs03->bytes, hs03->len), 0);
    uint8_t zero = 0;
    CU_ASSERT_EQUAL(tu_send_fds(sv[1], &zero, 1, NULL, 0, mem, 2), 0);
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_WANT_WRITE);
    int queued = -1;
    CU_ASSERT_EQUAL(ioctl(sv[0], FIONREAD, &queued), 0);
    CU_ASSERT_EQUAL(queued, 1); /* the fd message's byte, not yet read */
    CU_ASSERT_STRING_EQUAL(h.queue_path, QPATH);

    /* Let the ack out; the fds are then received intact. */
    uint8_t *drain = malloc(filled);
    CU_ASSERT_PTR_NOT_NULL_FATAL(drain);
    CU_ASSERT_EQUAL(sock_read_exact(sv[1], drain, filled, sock_deadline(DEADLINE_MS)), 0);
    free(drain);
    CU_ASSERT_EQUAL_FATAL(hs_server_step(&h), HS_MAP);
    CU_ASSERT(got_rec(sv[1], &vf, "hs04.S>C.AckReadyRecvFD"));
    CU_ASSERT_EQUAL(tu_ino_of(h.fds[0]), tu_ino_of(mem[0]));
    CU_ASSERT_EQUAL(tu_ino_of(h.fds[1]), tu_ino_of(mem[1]));
    hs_server_cleanup(&h);
    tu_close_pair(sv);

    /* A client that sends everything at once: still one event at a time,
     * so the fd message is received by recvmsg() with its fds. */
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    CU_ASSERT_EQUAL(put_rec(sv[1], &vf, "hs01.C>S.ExchangeProtoVersion"), 0);
    CU_ASSERT_EQUAL(put(sv[1], hs03->bytes, hs03->len), 0);
    CU_ASSERT_EQUAL(tu_send_fds(sv[1], &zero, 1, NULL, 0, mem, 2), 0);
    CU_ASSERT_EQUAL(put(sv[1], "after", 5), 0); /* early session bytes stay queued */
    hs_server_init(&h, sv[0], 1, sock_deadline(DEADLINE_MS));
    CU_ASSERT_EQUAL_FATAL(hs_server_step(&h), HS_MAP);
    check_map_memfd(&h);
    CU_ASSERT_EQUAL(tu_ino_of(h.fds[0]), tu_ino_of(mem[0]));
    CU_ASSERT_EQUAL(tu_ino_of(h.fds[1]), tu_ino_of(mem[1]));
    queued = -1;
    CU_ASSERT_EQUAL(ioctl(sv[0], FIONREAD, &queued), 0);
    CU_ASSERT_EQUAL(queued, 5);
    CU_ASSERT_EQUAL(hs_server_mapped(&h, 1, 0), 0);
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_DONE);
    queued = -1;
    CU_ASSERT_EQUAL(ioctl(sv[0], FIONREAD, &queued), 0);
    CU_ASSERT_EQUAL(queued, 5);
    hs_server_cleanup(&h);
    tu_close_pair(sv);

    /* Metadata alone: the server waits for the fd message, reading nothing. */
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    CU_ASSERT_EQUAL(put_rec(sv[1], &vf, "hs01.C>S.ExchangeProtoVersion"), 0);
    CU_ASSERT_EQUAL(put(sv[1], hs03->bytes, hs03->len), 0);
    hs_server_init(&h, sv[0], 1, sock_deadline(DEADLINE_MS));
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_WANT_READ);
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_WANT_READ);
    CU_ASSERT_EQUAL(tu_send_fds(sv[1], &zero, 1, NULL, 0, mem, 2), 0);
    CU_ASSERT_EQUAL(hs_server_step(&h), HS_MAP);
    CU_ASSERT_EQUAL(tu_ino_of(h.fds[1]), tu_ino_of(mem[1]));
    hs_server_cleanup(&h);
    tu_close_pair(sv);

    close(mem[0]);
    close(mem[1]);
    vec_free(&vf);
    FD_LEAK_END();
}

/* ---- ownership of received fds ---- */

static void test_cleanup_closes_untaken(void)
{
    FD_LEAK_BEGIN();
    struct vec_file vf;
    load(&vf);
    struct hs_server h;
    int sv[2], mem[2];

    to_map(&h, sv, &vf, mem);
    int held = tu_count_fds();
    CU_ASSERT(h.fds[0] >= 0 && h.fds[1] >= 0);
    hs_server_cleanup(&h);
    CU_ASSERT_EQUAL(tu_count_fds(), held - 2);
    CU_ASSERT(h.fds[0] == -1 && h.fds[1] == -1);
    hs_server_cleanup(&h); /* idempotent */
    CU_ASSERT_EQUAL(tu_count_fds(), held - 2);
    tu_close_pair(sv);
    close(mem[0]);
    close(mem[1]);

    /* Taken fds are the caller's: cleanup leaves them open. */
    to_map(&h, sv, &vf, mem);
    int bfd = -1, qfd = -1;
    hs_server_take_fds(&h, &bfd, &qfd);
    held = tu_count_fds();
    hs_server_cleanup(&h);
    CU_ASSERT_EQUAL(tu_count_fds(), held);
    CU_ASSERT(fcntl(bfd, F_GETFD) >= 0);
    CU_ASSERT(fcntl(qfd, F_GETFD) >= 0);
    CU_ASSERT_EQUAL(tu_ino_of(bfd), tu_ino_of(mem[0]));
    close(bfd);
    close(qfd);
    tu_close_pair(sv);
    close(mem[0]);
    close(mem[1]);

    /* Before any fd arrived: nothing to take, nothing to close. */
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    hs_server_init(&h, sv[0], 1, sock_deadline(DEADLINE_MS));
    bfd = qfd = -2;
    hs_server_take_fds(&h, &bfd, &qfd);
    CU_ASSERT(bfd == -1 && qfd == -1);
    held = tu_count_fds();
    hs_server_cleanup(&h);
    CU_ASSERT_EQUAL(tu_count_fds(), held);
    tu_close_pair(sv);
    vec_free(&vf);
    FD_LEAK_END();
}

static const struct test_case cases[] = {
    {"client memfd bytes equal section B (C>S)", test_client_golden_memfd},
    {"client file v2 sends ShareMemoryByFilePath.v2 only", test_client_golden_file_v2},
    {"client file v3 bytes equal the vectors", test_client_golden_file_v3},
    {"client refuses bad servers", test_client_refusals},
    {"server replies equal section B (S>C)", test_server_golden_memfd},
    {"server section B fed one byte at a time", test_server_golden_memfd_bytewise},
    {"server file v2: map, no reply", test_server_golden_file_v2},
    {"server file v3: exchange, map, ack", test_server_golden_file_v3},
    {"server takes the longest paths", test_server_longest_paths},
    {"full run, memfd mode", test_full_memfd},
    {"full run, file mode v2 and v3", test_full_file},
    {"refuses a wrong first event", test_refuse_wrong_first_event},
    {"refuses bad headers and oversize events", test_refuse_bad_header},
    {"refuses bad metadata and paths", test_refuse_bad_metadata},
    {"refuses events out of sequence", test_refuse_sequence},
    {"refuses bad fd messages without leaking", test_refuse_fd_message},
    {"refuses a peer that closes halfway", test_refuse_peer_closes},
    {"fails at the deadline", test_refuse_deadline},
    {"fails when mapping is refused", test_refuse_mapping},
    {"never reads beyond the current event", test_no_read_ahead},
    {"cleanup closes only fds not taken", test_cleanup_closes_untaken},
    {NULL, NULL},
};

const struct test_suite suite_handshake = {"handshake", cases};
