/*
 * Socket helpers: address parsing, listen/connect/accept on unix and TCP
 * loopback, exact reads and whole writes against their deadlines, and the
 * fd message. Every test counts this process's fds before and after, and
 * every forked peer has a deadline.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proto/sock.h"
#include "shmipc/errors.h"
#include "testutil.h"

#define DEADLINE_MS 20000
#define SHORT_MS 50 /* a deadline that must expire; never measured */

/* ---- helpers ---- */

static int has_fl(int fd, int flag)
{
    int fl = fcntl(fd, F_GETFL);
    return fl >= 0 && (fl & flag) != 0;
}

static int has_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    return fl >= 0 && (fl & FD_CLOEXEC) != 0;
}

static int make_memfd(const char *name)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd >= 0 && ftruncate(fd, 4096) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A fresh directory for socket files; removed by rm_dir(). */
static void mk_dir(char *dir, size_t cap)
{
    snprintf(dir, cap, "/tmp/shmipc_sock_XXXXXX");
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
}

static void rm_dir(const char *dir)
{
    CU_ASSERT_EQUAL(rmdir(dir), 0); /* fails if a test left a file behind */
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits (bounded) until fd is readable; 1 if it is. */
static int readable(int fd, int ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1;
}

/* Sends one data byte with nfds fds (up to TU_SEND_FDS_MAX), bypassing
 * sock_send_fds. */
static int send_raw_fds(int fd, uint8_t byte, const int *fds, int nfds)
{
    return tu_send_fds(fd, &byte, 1, NULL, 0, fds, nfds);
}

/* ---- sock_addr_parse ---- */

static void test_parse_accepts(void)
{
    FD_LEAK_BEGIN();
    struct sock_addr a;
    const struct sockaddr_un *un = (const struct sockaddr_un *)&a.ss;
    const struct sockaddr_in *in = (const struct sockaddr_in *)&a.ss;

    CU_ASSERT_EQUAL_FATAL(sock_addr_parse("unix:/tmp/x.sock", &a), 0);
    CU_ASSERT_EQUAL(a.family, AF_UNIX);
    CU_ASSERT_EQUAL(un->sun_family, AF_UNIX);
    CU_ASSERT_STRING_EQUAL(un->sun_path, "/tmp/x.sock");
    CU_ASSERT_EQUAL(a.len, offsetof(struct sockaddr_un, sun_path) + strlen("/tmp/x.sock") + 1);
    CU_ASSERT_STRING_EQUAL(a.text, "unix:/tmp/x.sock");

    CU_ASSERT_EQUAL_FATAL(sock_addr_parse("/run/y.sock", &a), 0);
    CU_ASSERT_EQUAL(a.family, AF_UNIX);
    CU_ASSERT_STRING_EQUAL(un->sun_path, "/run/y.sock");
    CU_ASSERT_STRING_EQUAL(a.text, "unix:/run/y.sock");

    /* The longest unix path that fits sun_path with its NUL: 107 bytes. */
    char path[200];
    memset(path, 'p', sizeof(path));
    path[0] = '/';
    path[107] = '\0';
    CU_ASSERT_EQUAL_FATAL(sock_addr_parse(path, &a), 0);
    CU_ASSERT_EQUAL(strlen(un->sun_path), 107);
    CU_ASSERT_EQUAL(a.len, sizeof(struct sockaddr_un));

    CU_ASSERT_EQUAL_FATAL(sock_addr_parse("tcp:127.0.0.1:8080", &a), 0);
    CU_ASSERT_EQUAL(a.family, AF_INET);
    CU_ASSERT_EQUAL(in->sin_family, AF_INET);
    CU_ASSERT_EQUAL(ntohs(in->sin_port), 8080);
    CU_ASSERT_EQUAL(ntohl(in->sin_addr.s_addr), INADDR_LOOPBACK);
    CU_ASSERT_EQUAL(a.len, sizeof(struct sockaddr_in));
    CU_ASSERT_STRING_EQUAL(a.text, "tcp:127.0.0.1:8080");

    CU_ASSERT_EQUAL_FATAL(sock_addr_parse("tcp:localhost:65535", &a), 0);
    CU_ASSERT_EQUAL(a.family, AF_INET);
    CU_ASSERT_EQUAL(ntohs(in->sin_port), 65535);
    CU_ASSERT_EQUAL(ntohl(in->sin_addr.s_addr), INADDR_LOOPBACK);

    CU_ASSERT_EQUAL_FATAL(sock_addr_parse("tcp:10.1.2.3:1", &a), 0);
    CU_ASSERT_EQUAL(ntohs(in->sin_port), 1);
    CU_ASSERT_EQUAL(ntohl(in->sin_addr.s_addr), 0x0a010203u);
    FD_LEAK_END();
}

static void test_parse_refuses(void)
{
    FD_LEAK_BEGIN();
    char too_long[200], too_long_unix[210], long_host[120];
    memset(too_long, 'p', sizeof(too_long));
    too_long[0] = '/';
    too_long[108] = '\0'; /* 108 bytes: no room for the NUL in sun_path */
    snprintf(too_long_unix, sizeof(too_long_unix), "unix:%s", too_long);
    memset(long_host, '1', sizeof(long_host));
    memcpy(long_host, "tcp:", 4);
    strcpy(long_host + 90, ":80");

    const char *bad[] = {
        "",
        "unix:",
        "unix:relative/path",
        "relative/path",
        "./x.sock",
        too_long,
        too_long_unix,
        "tcp:127.0.0.1",
        "tcp:localhost",
        "tcp:127.0.0.1:",
        "tcp:127.0.0.1:0",
        "tcp:127.0.0.1:65536",
        "tcp:127.0.0.1:99999999999999999999",
        "tcp:127.0.0.1:-1",
        "tcp:127.0.0.1:+80",
        "tcp:127.0.0.1: 80",
        "tcp:127.0.0.1:80 ",
        "tcp:127.0.0.1:http",
        "tcp:127.0.0.1:80x",
        "tcp::80",
        "tcp:",
        "tcp:256.0.0.1:80",
        "tcp:127.0.0:80",
        "tcp:no-such-host.invalid:80",
        "tcp:[::1]:80",
        long_host,
        "udp:127.0.0.1:80",
        "UNIX:/tmp/x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sock_addr a;
        int rc = sock_addr_parse(bad[i], &a);
        if (rc != -EINVAL)
            fprintf(stderr, "\n  sock_addr_parse(\"%s\") = %d, expected -EINVAL\n", bad[i], rc);
        CU_ASSERT_EQUAL(rc, -EINVAL);
    }
    struct sock_addr a;
    CU_ASSERT_EQUAL(sock_addr_parse(NULL, &a), -EINVAL);
    FD_LEAK_END();
}

/* ---- listen, connect, accept ---- */

/* Round trip of a few bytes each way between two connected sockets. */
static void exchange(int a, int b)
{
    uint64_t dl = sock_deadline(DEADLINE_MS);
    char buf[6] = {0};
    CU_ASSERT_EQUAL(sock_write_all(a, "ping!", 5, dl), 0);
    CU_ASSERT_EQUAL(sock_read_exact(b, buf, 5, dl), 0);
    CU_ASSERT_STRING_EQUAL(buf, "ping!");
    CU_ASSERT_EQUAL(sock_write_all(b, "pong?", 5, dl), 0);
    CU_ASSERT_EQUAL(sock_read_exact(a, buf, 5, dl), 0);
    CU_ASSERT_STRING_EQUAL(buf, "pong?");
}

static void test_unix_listen_connect_accept(void)
{
    FD_LEAK_BEGIN();
    char dir[64], path[128];
    mk_dir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "unix:%s/s.sock", dir);
    struct sock_addr a;
    CU_ASSERT_EQUAL_FATAL(sock_addr_parse(path, &a), 0);
    const char *fs_path = path + 5;

    int l = sock_listen(&a, 0600, 16);
    CU_ASSERT_FATAL(l >= 0);
    CU_ASSERT(has_fl(l, O_NONBLOCK));
    CU_ASSERT(has_cloexec(l));
    struct stat st;
    CU_ASSERT_EQUAL_FATAL(lstat(fs_path, &st), 0);
    CU_ASSERT(S_ISSOCK(st.st_mode));
    CU_ASSERT_EQUAL(st.st_mode & 07777, 0600);

    CU_ASSERT_EQUAL(sock_accept(l), -EAGAIN); /* nobody yet */

    int c = sock_connect(&a, sock_deadline(DEADLINE_MS));
    CU_ASSERT_FATAL(c >= 0);
    CU_ASSERT(has_fl(c, O_NONBLOCK));
    CU_ASSERT(has_cloexec(c));
    CU_ASSERT(readable(l, DEADLINE_MS));
    int s = sock_accept(l);
    CU_ASSERT_FATAL(s >= 0);
    CU_ASSERT(has_fl(s, O_NONBLOCK));
    CU_ASSERT(has_cloexec(s));
    exchange(c, s);
    close(c);
    close(s);
    close(l);

    /* The socket file outlives its listener: a second listen must replace
     * the stale file (bind() alone would fail with EADDRINUSE) and apply
     * the new mode. */
    CU_ASSERT_EQUAL(lstat(fs_path, &st), 0);
    l = sock_listen(&a, 0660, 16);
    CU_ASSERT_FATAL(l >= 0);
    CU_ASSERT_EQUAL_FATAL(lstat(fs_path, &st), 0);
    CU_ASSERT(S_ISSOCK(st.st_mode));
    CU_ASSERT_EQUAL(st.st_mode & 07777, 0660);
    c = sock_connect(&a, sock_deadline(DEADLINE_MS));
    CU_ASSERT_FATAL(c >= 0);
    CU_ASSERT(readable(l, DEADLINE_MS));
    s = sock_accept(l);
    CU_ASSERT_FATAL(s >= 0);
    exchange(s, c);
    close(c);
    close(s);
    close(l);

    CU_ASSERT_EQUAL(unlink(fs_path), 0);
    rm_dir(dir);
    FD_LEAK_END();
}

static void test_unix_listen_keeps_regular_file(void)
{
    FD_LEAK_BEGIN();
    char dir[64], path[128];
    mk_dir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/not-a-socket", dir);
    int f = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    CU_ASSERT_FATAL(f >= 0);
    CU_ASSERT_EQUAL(write(f, "keep", 4), 4);
    close(f);
    struct stat before, after;
    CU_ASSERT_EQUAL_FATAL(stat(path, &before), 0);

    struct sock_addr a;
    CU_ASSERT_EQUAL_FATAL(sock_addr_parse(path, &a), 0);
    int l = sock_listen(&a, 0600, 16);
    CU_ASSERT(l < 0);
    CU_ASSERT_EQUAL(l, -EADDRINUSE);
    if (l >= 0)
        close(l);

    CU_ASSERT_EQUAL_FATAL(lstat(path, &after), 0);
    CU_ASSERT(S_ISREG(after.st_mode));
    CU_ASSERT_EQUAL(after.st_ino, before.st_ino);
    CU_ASSERT_EQUAL(after.st_size, 4);
    CU_ASSERT_EQUAL(after.st_mode & 07777, 0644); /* no chmod either */

    /* A directory in the way is not removed either. */
    char sub[160];
    snprintf(sub, sizeof(sub), "%s/d", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(sub, 0700), 0);
    CU_ASSERT_EQUAL_FATAL(sock_addr_parse(sub, &a), 0);
    l = sock_listen(&a, -1, 16);
    CU_ASSERT(l < 0);
    if (l >= 0)
        close(l);
    CU_ASSERT_EQUAL(rmdir(sub), 0);

    CU_ASSERT_EQUAL(unlink(path), 0);
    rm_dir(dir);
    FD_LEAK_END();
}

static void test_tcp_loopback(void)
{
    FD_LEAK_BEGIN();
    struct sock_addr a;
    CU_ASSERT_EQUAL_FATAL(sock_addr_parse("tcp:127.0.0.1:1", &a), 0);
    /* The parser refuses port 0; ask the kernel for a free port anyway. */
    ((struct sockaddr_in *)&a.ss)->sin_port = 0;
    int l = sock_listen(&a, -1, 16);
    CU_ASSERT_FATAL(l >= 0);
    CU_ASSERT(has_fl(l, O_NONBLOCK));
    CU_ASSERT(has_cloexec(l));
    struct sockaddr_in bound;
    socklen_t bl = sizeof(bound);
    CU_ASSERT_EQUAL_FATAL(getsockname(l, (struct sockaddr *)&bound, &bl), 0);
    unsigned port = ntohs(bound.sin_port);
    CU_ASSERT_FATAL(port != 0);

    char text[64];
    snprintf(text, sizeof(text), "tcp:localhost:%u", port);
    struct sock_addr ca;
    CU_ASSERT_EQUAL_FATAL(sock_addr_parse(text, &ca), 0);
    CU_ASSERT_EQUAL(sock_accept(l), -EAGAIN);
    int c = sock_connect(&ca, sock_deadline(DEADLINE_MS));
    CU_ASSERT_FATAL(c >= 0);
    CU_ASSERT(has_fl(c, O_NONBLOCK));
    CU_ASSERT(has_cloexec(c));
    CU_ASSERT(readable(l, DEADLINE_MS));
    int s = sock_accept(l);
    CU_ASSERT_FATAL(s >= 0);
    CU_ASSERT(has_fl(s, O_NONBLOCK));
    CU_ASSERT(has_cloexec(s));
    int nd = 0;
    socklen_t nl = sizeof(nd);
    CU_ASSERT_EQUAL(getsockopt(c, IPPROTO_TCP, TCP_NODELAY, &nd, &nl), 0);
    CU_ASSERT(nd != 0);
    nd = 0;
    CU_ASSERT_EQUAL(getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &nd, &nl), 0);
    CU_ASSERT(nd != 0);
    exchange(c, s);
    close(c);
    close(s);
    close(l);
    FD_LEAK_END();
}

static void test_connect_nobody_fails(void)
{
    FD_LEAK_BEGIN();
    char dir[64], path[128];
    mk_dir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/none.sock", dir);
    struct sock_addr a;
    CU_ASSERT_EQUAL_FATAL(sock_addr_parse(path, &a), 0);
    /* No file: refused at once, not after the (long) deadline. */
    CU_ASSERT_EQUAL(sock_connect(&a, sock_deadline(DEADLINE_MS)), -ENOENT);

    /* A socket file whose listener is gone. */
    int l = sock_listen(&a, -1, 16);
    CU_ASSERT_FATAL(l >= 0);
    close(l);
    CU_ASSERT_EQUAL(sock_connect(&a, sock_deadline(DEADLINE_MS)), -ECONNREFUSED);
    CU_ASSERT_EQUAL(unlink(path), 0);
    rm_dir(dir);
    FD_LEAK_END();
}

static int accept_one_later(void *arg)
{
    int l = *(int *)arg;
    sleep_ms(100); /* let the parent find the backlog full first (not required) */
    if (!readable(l, 10000))
        return 2;
    int s = sock_accept(l);
    if (s < 0)
        return 3;
    close(s);
    return 0;
}

/* With the backlog full, connect() says EAGAIN and the socket is NOT
 * connecting: sock_connect must wait for room (or time out), never return
 * a socket that is not connected. */
static void test_connect_backlog_full(void)
{
    FD_LEAK_BEGIN();
    char dir[64], path[128];
    mk_dir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/full.sock", dir);
    struct sock_addr a;
    CU_ASSERT_EQUAL_FATAL(sock_addr_parse(path, &a), 0);
    int l = sock_listen(&a, -1, 0);
    CU_ASSERT_FATAL(l >= 0);
    int first = sock_connect(&a, sock_deadline(DEADLINE_MS));
    CU_ASSERT_FATAL(first >= 0);

    int c = sock_connect(&a, sock_deadline(SHORT_MS));
    CU_ASSERT_EQUAL(c, SHMIPC_ETIMEDOUT);
    if (c >= 0)
        close(c);

    /* Room appears when a forked peer accepts the first connection. */
    pid_t pid = tu_fork(accept_one_later, &l);
    CU_ASSERT_FATAL(pid > 0);
    c = sock_connect(&a, sock_deadline(DEADLINE_MS));
    CU_ASSERT(c >= 0);
    if (c >= 0) {
        struct sockaddr_un peer;
        socklen_t pl = sizeof(peer);
        CU_ASSERT_EQUAL(getpeername(c, (struct sockaddr *)&peer, &pl), 0);
        close(c);
    }
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0);
    close(first);
    close(l);
    CU_ASSERT_EQUAL(unlink(path), 0);
    rm_dir(dir);
    FD_LEAK_END();
}

/* ---- sock_read_exact ---- */

static void test_read_timeout(void)
{
    FD_LEAK_BEGIN();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    uint8_t buf[8];
    CU_ASSERT_EQUAL(sock_read_exact(sv[0], buf, 8, sock_deadline(SHORT_MS)), SHMIPC_ETIMEDOUT);
    /* Part of what is asked for is there: still a timeout, not a short read. */
    CU_ASSERT_EQUAL(write(sv[1], "abc", 3), 3);
    CU_ASSERT_EQUAL(sock_read_exact(sv[0], buf, 8, sock_deadline(SHORT_MS)), SHMIPC_ETIMEDOUT);
    /* n == 0 is done at once. */
    CU_ASSERT_EQUAL(sock_read_exact(sv[0], buf, 0, sock_deadline(SHORT_MS)), 0);
    tu_close_pair(sv);
    FD_LEAK_END();
}

static int read_blocking_child(void *arg)
{
    int fd = *(int *)arg;
    uint8_t buf[8];
    int rc = sock_read_exact(fd, buf, sizeof(buf), sock_deadline(SHORT_MS));
    return rc == SHMIPC_ETIMEDOUT ? 0 : 1;
}

static int write_blocking_child(void *arg)
{
    int fd = *(int *)arg;
    size_t n = 8u << 20;
    uint8_t *big = calloc(1, n);
    if (big == NULL)
        return 2;
    int rc = sock_write_all(fd, big, n, sock_deadline(SHORT_MS));
    free(big);
    return rc == SHMIPC_ETIMEDOUT ? 0 : 1;
}

/* A blocking socket must not make the helpers wait past the deadline (in a
 * child: a helper that blocks forever is killed at the child's deadline). */
static void test_deadline_on_blocking_socket(void)
{
    FD_LEAK_BEGIN();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    pid_t pid = tu_fork(read_blocking_child, &sv[0]);
    CU_ASSERT_FATAL(pid > 0);
    CU_ASSERT_EQUAL(tu_wait(pid, 5000), 0);
    pid = tu_fork(write_blocking_child, &sv[0]);
    CU_ASSERT_FATAL(pid > 0);
    CU_ASSERT_EQUAL(tu_wait(pid, 5000), 0);
    tu_close_pair(sv);
    FD_LEAK_END();
}

static void test_read_eof(void)
{
    FD_LEAK_BEGIN();
    int sv[2];
    uint8_t buf[8];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    CU_ASSERT_EQUAL(write(sv[1], "abc", 3), 3);
    close(sv[1]);
    CU_ASSERT_EQUAL(sock_read_exact(sv[0], buf, 8, sock_deadline(DEADLINE_MS)), SHMIPC_ECLOSED);
    close(sv[0]);

    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    close(sv[1]);
    CU_ASSERT_EQUAL(sock_read_exact(sv[0], buf, 1, sock_deadline(DEADLINE_MS)), SHMIPC_ECLOSED);
    close(sv[0]);
    FD_LEAK_END();
}

#define PIECES_LEN 4000

static uint8_t pattern_byte(size_t i)
{
    return (uint8_t)(i * 7 + (i >> 8) * 13 + 1);
}

static int write_pieces_child(void *arg)
{
    int fd = *(int *)arg;
    uint8_t buf[PIECES_LEN];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = pattern_byte(i);
    size_t off = 0, piece = 1;
    uint64_t dl = sock_deadline(DEADLINE_MS);
    while (off < sizeof(buf)) {
        size_t n = piece < sizeof(buf) - off ? piece : sizeof(buf) - off;
        if (sock_write_all(fd, buf + off, n, dl) < 0)
            return 1;
        off += n;
        piece = piece * 3 + 1; /* 1, 4, 13, 40, ... */
        sleep_ms(2);
    }
    return 0;
}

static void test_read_reassembles(void)
{
    FD_LEAK_BEGIN();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    pid_t pid = tu_fork(write_pieces_child, &sv[1]);
    CU_ASSERT_FATAL(pid > 0);
    close(sv[1]);
    uint8_t buf[PIECES_LEN + 1];
    CU_ASSERT_EQUAL(sock_read_exact(sv[0], buf, PIECES_LEN, sock_deadline(DEADLINE_MS)), 0);
    int same = 1;
    for (size_t i = 0; i < PIECES_LEN; i++)
        same &= buf[i] == pattern_byte(i);
    CU_ASSERT(same);
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0);
    /* Exactly PIECES_LEN bytes were taken: nothing is left but EOF. */
    CU_ASSERT_EQUAL(sock_read_exact(sv[0], buf, 1, sock_deadline(DEADLINE_MS)), SHMIPC_ECLOSED);
    close(sv[0]);
    FD_LEAK_END();
}

/* ---- sock_write_all ---- */

#define BIG_LEN (8u << 20)

static int read_big_child(void *arg)
{
    int fd = *(int *)arg;
    uint8_t *buf = malloc(BIG_LEN);
    if (buf == NULL)
        return 2;
    int rc = sock_read_exact(fd, buf, BIG_LEN, sock_deadline(DEADLINE_MS));
    int ok = rc == 0;
    for (size_t i = 0; ok && i < BIG_LEN; i++)
        ok = buf[i] == pattern_byte(i);
    free(buf);
    return ok ? 0 : 1;
}

static void test_write_all_large(void)
{
    FD_LEAK_BEGIN();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    uint8_t *big = malloc(BIG_LEN);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    for (size_t i = 0; i < BIG_LEN; i++)
        big[i] = pattern_byte(i);
    pid_t pid = tu_fork(read_big_child, &sv[1]);
    CU_ASSERT_FATAL(pid > 0);
    close(sv[1]);
    CU_ASSERT_EQUAL(sock_write_all(sv[0], big, BIG_LEN, sock_deadline(DEADLINE_MS)), 0);
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0);
    free(big);
    close(sv[0]);
    FD_LEAK_END();
}

static void test_write_all_timeout_and_epipe(void)
{
    FD_LEAK_BEGIN();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    uint8_t *big = calloc(1, BIG_LEN);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    /* Nobody reads: the socket buffer fills and the deadline passes. */
    CU_ASSERT_EQUAL(sock_write_all(sv[0], big, BIG_LEN, sock_deadline(SHORT_MS)), SHMIPC_ETIMEDOUT);
    close(sv[1]);
    /* The reader is gone: an error, not SIGPIPE and not a timeout. */
    CU_ASSERT_EQUAL(sock_write_all(sv[0], big, 16, sock_deadline(DEADLINE_MS)), -EPIPE);
    free(big);
    close(sv[0]);
    FD_LEAK_END();
}

/* ---- the fd message ---- */

static void test_fds_round_trip(void)
{
    FD_LEAK_BEGIN();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    int mine[2] = {make_memfd("sock_buffer"), make_memfd("sock_queue")};
    CU_ASSERT_FATAL(mine[0] >= 0 && mine[1] >= 0);
    CU_ASSERT_EQUAL(sock_send_fds(sv[0], mine, 2, sock_deadline(DEADLINE_MS)), 0);

    uint8_t byte = 0xee;
    int got[2] = {-1, -1}, n = -1;
    CU_ASSERT_EQUAL_FATAL(sock_recv_fds(sv[1], &byte, got, 2, &n), 0);
    CU_ASSERT_EQUAL(byte, 0x00);
    CU_ASSERT_EQUAL_FATAL(n, 2);
    /* New descriptors of the same files, in the order sent. */
    CU_ASSERT(got[0] != mine[0] && got[0] != mine[1]);
    CU_ASSERT(got[1] != mine[0] && got[1] != mine[1]);
    CU_ASSERT_EQUAL(tu_ino_of(got[0]), tu_ino_of(mine[0]));
    CU_ASSERT_EQUAL(tu_ino_of(got[1]), tu_ino_of(mine[1]));
    CU_ASSERT_NOT_EQUAL(tu_ino_of(mine[0]), tu_ino_of(mine[1]));
    CU_ASSERT(has_cloexec(got[0]));
    CU_ASSERT(has_cloexec(got[1]));
    /* Exactly one byte was consumed: nothing else is queued. */
    CU_ASSERT_EQUAL(recv(sv[1], &byte, 1, MSG_DONTWAIT), -1);
    for (int i = 0; i < 2; i++) {
        close(got[i]);
        close(mine[i]);
    }
    tu_close_pair(sv);
    FD_LEAK_END();
}

static void test_fds_too_many(void)
{
    FD_LEAK_BEGIN();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    int mine[20];
    for (int i = 0; i < 20; i++)
        CU_ASSERT_FATAL((mine[i] = make_memfd("sock_many")) >= 0);

    /* 3 fds where 2 are allowed. */
    CU_ASSERT_EQUAL(sock_send_fds(sv[0], mine, 3, sock_deadline(DEADLINE_MS)), 0);
    int before = tu_count_fds();
    uint8_t byte;
    int got[2] = {-1, -1}, n = -1;
    CU_ASSERT_EQUAL(sock_recv_fds(sv[1], &byte, got, 2, &n), SHMIPC_EPROTO);
    CU_ASSERT_EQUAL(tu_count_fds(), before);

    /* More than the receive buffer holds (MSG_CTRUNC): the ones that did
     * arrive are closed too. */
    CU_ASSERT_EQUAL(send_raw_fds(sv[0], 0, mine, 20), 0);
    CU_ASSERT_EQUAL(sock_recv_fds(sv[1], &byte, got, 2, &n), SHMIPC_EPROTO);
    CU_ASSERT_EQUAL(tu_count_fds(), before);
    /* Truncated even where the fds that fit are within max: the kernel
     * dropped the rest, so this is not a whole message either. */
    int many[16];
    CU_ASSERT_EQUAL(send_raw_fds(sv[0], 0, mine, 20), 0);
    n = -1;
    int rc = sock_recv_fds(sv[1], &byte, many, 16, &n);
    CU_ASSERT_EQUAL(rc, SHMIPC_EPROTO);
    if (rc == 0)
        for (int i = 0; i < n; i++)
            close(many[i]);
    CU_ASSERT_EQUAL(tu_count_fds(), before);

    /* sock_send_fds refuses counts it cannot send. */
    CU_ASSERT_EQUAL(sock_send_fds(sv[0], mine, 0, sock_deadline(DEADLINE_MS)), -EINVAL);
    CU_ASSERT_EQUAL(sock_send_fds(sv[0], mine, 9, sock_deadline(DEADLINE_MS)), -EINVAL);
    CU_ASSERT_EQUAL(sock_recv_fds(sv[1], &byte, got, 2, &n), -EAGAIN);

    for (int i = 0; i < 20; i++)
        close(mine[i]);
    tu_close_pair(sv);
    FD_LEAK_END();
}

static void test_fds_plain_byte_and_empty(void)
{
    FD_LEAK_BEGIN();
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(tu_pair(sv), 0);
    uint8_t byte = 0;
    int got[2] = {-1, -1}, n = -1;
    /* Nothing queued on a non-blocking socket. */
    CU_ASSERT_EQUAL(sock_recv_fds(sv[1], &byte, got, 2, &n), -EAGAIN);

    /* A byte with no fds: received, nfds 0. Only one byte is taken. */
    CU_ASSERT_EQUAL(write(sv[0], "\x5a\x5b", 2), 2);
    n = -1;
    CU_ASSERT_EQUAL(sock_recv_fds(sv[1], &byte, got, 2, &n), 0);
    CU_ASSERT_EQUAL(byte, 0x5a);
    CU_ASSERT_EQUAL(n, 0);
    n = -1;
    CU_ASSERT_EQUAL(sock_recv_fds(sv[1], &byte, got, 2, &n), 0);
    CU_ASSERT_EQUAL(byte, 0x5b);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(sock_recv_fds(sv[1], &byte, got, 2, &n), -EAGAIN);

    /* A single fd with max 2 is fine for this layer. */
    int one = make_memfd("sock_one");
    CU_ASSERT_FATAL(one >= 0);
    CU_ASSERT_EQUAL(sock_send_fds(sv[0], &one, 1, sock_deadline(DEADLINE_MS)), 0);
    n = -1;
    CU_ASSERT_EQUAL_FATAL(sock_recv_fds(sv[1], &byte, got, 2, &n), 0);
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_EQUAL(tu_ino_of(got[0]), tu_ino_of(one));
    close(got[0]);
    close(one);

    /* The peer is gone. */
    close(sv[0]);
    CU_ASSERT_EQUAL(sock_recv_fds(sv[1], &byte, got, 2, &n), SHMIPC_ECLOSED);
    close(sv[1]);
    FD_LEAK_END();
}

static void test_deadline_helpers(void)
{
    FD_LEAK_BEGIN();
    uint64_t now = sock_now_ns();
    CU_ASSERT_EQUAL(sock_deadline(-1), UINT64_MAX);
    uint64_t d = sock_deadline(1000);
    CU_ASSERT(d >= now + 1000000000ull);
    CU_ASSERT(d != UINT64_MAX);
    CU_ASSERT(sock_deadline(0) >= now);
    FD_LEAK_END();
}

static const struct test_case cases[] = {
    {"addr_parse accepts unix, bare and tcp forms", test_parse_accepts},
    {"addr_parse refuses malformed addresses", test_parse_refuses},
    {"unix listen/connect/accept, mode, stale socket replaced", test_unix_listen_connect_accept},
    {"unix listen keeps a regular file or dir in place", test_unix_listen_keeps_regular_file},
    {"tcp loopback listen/connect/accept", test_tcp_loopback},
    {"connect to nobody fails at once", test_connect_nobody_fails},
    {"connect with a full backlog waits or times out", test_connect_backlog_full},
    {"read_exact times out", test_read_timeout},
    {"deadlines hold on a blocking socket", test_deadline_on_blocking_socket},
    {"read_exact reports EOF mid-read", test_read_eof},
    {"read_exact reassembles pieces from a forked writer", test_read_reassembles},
    {"write_all of 8 MiB to a forked reader", test_write_all_large},
    {"write_all times out and reports EPIPE", test_write_all_timeout_and_epipe},
    {"two memfds arrive close-on-exec, same files, same order", test_fds_round_trip},
    {"too many fds: EPROTO and nothing leaked", test_fds_too_many},
    {"plain byte gives nfds 0; empty gives EAGAIN", test_fds_plain_byte_and_empty},
    {"deadline helpers", test_deadline_helpers},
    {NULL, NULL},
};

const struct test_suite suite_sock = {"sock", cases};
