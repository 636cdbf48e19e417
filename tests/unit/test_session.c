/*
 * End to end: the C client (this process) against the C server running in
 * a forked child, over a unix socket in a mkdtemp directory (or TCP
 * loopback for file mode over TCP), in both handshake modes. The server
 * child, the fixture (struct fx: sfx_begin .. sfx_end, which checks for
 * leftovers) and the client helpers are in tests/common/session_fixture.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/session_fixture.h"
#include "proto/handshake.h" /* a raw file-mode peer (section 8) */
#include "proto/sock.h"
#include "session/session.h" /* the queues' working flags, for the wake-up tests */
#include "shmipc/shmipc.h"
#include "testutil.h"

/* ==== 1. echo round trips ==== */

static const size_t echo_sizes[] = {0, 1, 64, 4096, 1u << 20, 4u << 20};

static void echo_sizes_on(int tcp, enum shmipc_mem_mode mode)
{
    struct fx f;
    REQUIRE_RC(sfx_begin(&f), 0);
    if (tcp) {
        /* A port found free may be taken before the child binds it: retry. */
        int rc = -1;
        for (int tries = 0; tries < 5 && rc != 0; tries++) {
            snprintf(f.addr, sizeof(f.addr), "tcp:127.0.0.1:%d", sfx_free_port());
            rc = sfx_srv_start(&f.srv, SRV_ECHO, f.addr);
        }
        REQUIRE_RC(rc, 0);
    } else {
        REQUIRE_RC(sfx_srv_start(&f.srv, SRV_ECHO, f.addr), 0);
    }
    REQUIRE_RC(sfx_connect(&f, mode, &f.st), 0);
    for (unsigned i = 0; i < sizeof(echo_sizes) / sizeof(echo_sizes[0]); i++) {
        size_t n = echo_sizes[i];
        unsigned niov = 0;
        REQUIRE_RC(sfx_echo_once(f.st, n, 1000 + i, &niov), 0);
        /* Past the largest slice a message is a chain of slices. */
        CU_ASSERT(n > MAX_SLICE ? niov > 1 : niov == 1);
    }
    struct shmipc_stats s;
    shmipc_client_stats(f.cli, &s);
    CU_ASSERT_EQUAL(s.messages_sent, 6);
    CU_ASSERT_EQUAL(s.messages_received, 6);
    CU_ASSERT_EQUAL(s.fallbacks_sent, 0);
    CU_ASSERT_EQUAL(s.fallbacks_received, 0);
    CU_ASSERT_EQUAL(s.sessions_opened, 1);
    /* File mode: a buffer and a queue file; memfd mode: nothing in /dev/shm. */
    CU_ASSERT_EQUAL(tu_count_shm(sfx_shm_name("")),
                    f.base.shm + (mode == SHMIPC_MODE_FILE ? 2 : 0));
out:
    sfx_end(&f);
}

static void test_echo_sizes_memfd(void)
{
    echo_sizes_on(0, SHMIPC_MODE_MEMFD);
}

static void test_echo_sizes_file(void)
{
    echo_sizes_on(0, SHMIPC_MODE_FILE);
}

static void test_echo_sizes_file_tcp(void)
{
    echo_sizes_on(1, SHMIPC_MODE_FILE);

    /* fds cannot travel over TCP: memfd mode is refused up front. */
    struct leaks l;
    sfx_leaks_begin(&l);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, "tcp:127.0.0.1:1", SHMIPC_MODE_MEMFD);
    shmipc_client *c = NULL;
    EXPECT_RC(shmipc_client_open(&cfg, &c), -EINVAL);
    CU_ASSERT_PTR_NULL(c);
    sfx_leaks_check(&l);
}

/* Random sizes (fixed seed): the echo's checksum must equal the request's. */
static void random_echo_on(enum shmipc_mem_mode mode)
{
    struct fx f;
    uint8_t *buf = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_ECHO, mode, &f.st), 0);
    REQUIRE((buf = malloc(1u << 20)) != NULL);
    uint64_t seed = 0x5eed0001u + (unsigned)mode;
    for (unsigned i = 0; i < 300; i++) {
        uint64_t r = sfx_rng(&seed);
        size_t n = r % 10 < 5 ? r >> 8 & 1023 : r % 10 < 9 ? r >> 8 & 65535 : r >> 8 & 0xfffff;
        for (size_t k = 0; k < n; k++)
            buf[k] = (uint8_t)(sfx_rng(&seed) >> 24);
        uint64_t want = sfx_fnv1a(FNV_INIT, buf, n);
        shmipc_msg m;
        REQUIRE_RC(shmipc_call(f.st, buf, n, &m, RECV_MS), 0);
        CU_ASSERT_EQUAL(m.len, n);
        CU_ASSERT_EQUAL(sfx_msg_hash(&m), want);
        int ok = m.len == n && sfx_msg_hash(&m) == want;
        shmipc_msg_release(&m);
        REQUIRE(ok);
    }
out:
    free(buf);
    sfx_end(&f);
}

/* A thread's share of echoes on one client: `rounds` fresh streams with
 * an echo of a random size below `max` each; rc is the first failure. */
struct worker {
    shmipc_client *c;
    uint64_t seed;
    unsigned rounds;
    size_t max;
    int rc;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint64_t s = w->seed;
    for (unsigned i = 0; i < w->rounds && w->rc == 0; i++)
        w->rc = sfx_echo_new(w->c, (size_t)(sfx_rng(&s) % w->max), w->seed + i);
    return NULL;
}

/* Low-latency mode on both sides: the same answers, from several threads
 * at once (spinning waiters harvest the queue themselves). */
static void test_spin_mode(void)
{
    struct fx f;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 300), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.spin_us = 300;
    cfg.sessions = 2;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    struct worker jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct worker){f.cli, 0x5917u + (uint64_t)i * 7919u, 400, 5000, 0};
        pthread_create(&th[i], NULL, worker_main, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        EXPECT_RC(jobs[i].rc, 0);
    }
out:
    sfx_end(&f);
}

/* The event-loop style: one thread, no I/O thread, 64 streams in flight,
 * completions from shmipc_client_poll(). */
static void event_loop_on(int spin_us)
{
    struct fx f;
    enum { NST = 64, ROUNDS = 20, SZ = 3000 };
    shmipc_stream *st[NST] = {0};
    unsigned done[NST] = {0};
    uint8_t *req = NULL;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, spin_us), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.no_io_thread = 1;
    cfg.spin_us = spin_us;
    cfg.sessions = 2;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    CU_ASSERT(shmipc_client_fd(f.cli) >= 0);
    req = sfx_pattern(SZ, 1);
    REQUIRE(req != NULL);
    for (int i = 0; i < NST; i++) {
        REQUIRE_RC(shmipc_client_get(f.cli, &st[i]), 0);
        shmipc_stream_set_user(st[i], &done[i]);
        REQUIRE_RC(sfx_send_one(st[i], req, SZ, (uint64_t)i << 32), 0);
    }
    unsigned total = 0, bad = 0;
    uint64_t deadline = sfx_deadline_ns(RECV_MS);
    while (total < NST * ROUNDS && tu_now_ns() < deadline) {
        shmipc_stream *ready[NST];
        int n = shmipc_client_poll(f.cli, ready, NST, 100);
        REQUIRE(n >= 0);
        for (int k = 0; k < n; k++) {
            shmipc_msg m;
            while (shmipc_stream_recv(ready[k], &m, 0) == 0) {
                unsigned *d = shmipc_stream_user(ready[k]);
                unsigned idx = (unsigned)(d - done);
                bad += !sfx_msg_is(&m, SZ, ((uint64_t)idx << 32) + *d);
                shmipc_msg_release(&m);
                (*d)++;
                total++;
                if (*d < ROUNDS)
                    bad += sfx_send_one(ready[k], req, SZ, ((uint64_t)idx << 32) + *d) != 0;
            }
        }
    }
    CU_ASSERT_EQUAL(total, NST * ROUNDS);
    CU_ASSERT_EQUAL(bad, 0);
    /* Nothing drives the sessions between polls: a blocking call has to
     * wait in vain, so a short recv times out. */
    shmipc_msg m;
    CU_ASSERT_EQUAL(shmipc_stream_recv(st[0], &m, 20), SHMIPC_ETIMEDOUT);
    if (spin_us > 0) {
        /* The spinning poll let go of the working flag when it returned: a
         * request now still wakes the client fd with a Polling. */
        REQUIRE_RC(sfx_send_one(st[0], req, SZ, 77), 0);
        /* As an outside event loop: wait for the fd, poll without
         * waiting, until the answer is in (the fd may also say that a
         * deferred Polling is to be sent). */
        struct pollfd pfd = {.fd = shmipc_client_fd(f.cli), .events = POLLIN};
        shmipc_stream *ready[1];
        int got = 0;
        for (int i = 0; i < 100 && got == 0; i++) {
            CU_ASSERT_EQUAL(poll(&pfd, 1, RECV_MS), 1);
            got = shmipc_client_poll(f.cli, ready, 1, 0);
        }
        CU_ASSERT_EQUAL(got, 1);
        CU_ASSERT_EQUAL(shmipc_stream_recv(st[0], &m, 0), 0);
        CU_ASSERT(sfx_msg_is(&m, SZ, 77));
        shmipc_msg_release(&m);
    }
out:
    sfx_close_streams(st, NST);
    free(req);
    sfx_end(&f);
}

static void test_event_loop_client(void)
{
    event_loop_on(0);
}

/* Low-latency mode on both sides, the client driven by its poll. */
static void test_event_loop_client_spin(void)
{
    event_loop_on(200);
}

/* Waits (bounded) until the server is idle: it cleared the working flag
 * of the queue we send on, so our next message has to wake it. */
static int peer_idle(shmipc_stream *st)
{
    uint64_t deadline = sfx_deadline_ns(RECV_MS);
    while (queue_working(&st->sess->qp.send) != 0) {
        if (tu_now_ns() >= deadline)
            return -ETIMEDOUT;
        usleep(500);
    }
    return 0;
}

static uint64_t polls_sent(shmipc_client *c)
{
    struct shmipc_stats s;
    shmipc_client_stats(c, &s);
    return s.wakeups_sent;
}

/* Before a step whose Pollings are counted: waits until the server is
 * idle (peer_idle on st) and notes the Pollings sent so far in *p0. */
static int idle_from(shmipc_client *c, shmipc_stream *st, uint64_t *p0)
{
    int rc = peer_idle(st);
    *p0 = polls_sent(c);
    return rc;
}

/* Polls until every stream in st[0..n) has its answer (one message of sz
 * bytes, seed base + index); 0, or the number of bad or missing ones. */
static int harvest(shmipc_client *c, shmipc_stream **st, unsigned n, size_t sz, uint64_t base)
{
    unsigned got = 0, bad = 0;
    uint64_t deadline = sfx_deadline_ns(RECV_MS);
    while (got < n && tu_now_ns() < deadline) {
        shmipc_stream *ready[64];
        int k = shmipc_client_poll(c, ready, 64, 100);
        if (k < 0)
            return (int)n;
        for (int i = 0; i < k; i++) {
            shmipc_msg m;
            while (shmipc_stream_recv(ready[i], &m, 0) == 0) {
                unsigned idx = 0;
                while (idx < n && st[idx] != ready[i])
                    idx++;
                bad += idx == n || !sfx_msg_is(&m, sz, base + idx);
                shmipc_msg_release(&m);
                got++;
            }
        }
    }
    return (int)(bad + (n - got));
}

struct flush_arg {
    shmipc_stream *st;
    uint8_t *buf;
    uint64_t seed;
    int rc;
};

static void *flush_thread(void *p)
{
    struct flush_arg *a = p;
    a->rc = sfx_send_one(a->st, a->buf, 500, a->seed);
    return NULL;
}

/* sfx_send_one of 500 bytes from a thread of its own, not the poll loop's:
 * its result, or -EAGAIN when no thread could be made. */
static int send_from_thread(shmipc_stream *st, uint8_t *buf, uint64_t seed)
{
    struct flush_arg a = {st, buf, seed, -1};
    pthread_t t;
    if (pthread_create(&t, NULL, flush_thread, &a) != 0)
        return -EAGAIN;
    pthread_join(t, NULL);
    return a.rc;
}

/* Event-loop client: requests flushed while handling a poll's results
 * share one Polling, sent by the next poll (or when 32 wait); flushes from
 * another thread, or with eager_wakeups, wake the server at once. */
static void test_event_loop_deferred_wakeups(void)
{
    struct fx f;
    enum { NST = 40, SZ = 500 };
    shmipc_stream *st[NST] = {0};
    uint8_t buf[SZ];
    uint64_t p0 = 0;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, -1), 0); /* it counts Pollings (peer_idle) */
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.no_io_thread = 1;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    for (int i = 0; i < NST; i++)
        REQUIRE_RC(shmipc_client_get(f.cli, &st[i]), 0);
    /* Not inside a poll's results yet: the first flush wakes at once. */
    REQUIRE_RC(idle_from(f.cli, st[0], &p0), 0);
    for (unsigned i = 0; i < 8; i++)
        REQUIRE_RC(sfx_send_one(st[i], buf, SZ, 100 + i), 0);
    CU_ASSERT(polls_sent(f.cli) > p0);
    CU_ASSERT_EQUAL(harvest(f.cli, st, 8, SZ, 100), 0);
    for (unsigned round = 0; round < 5; round++) {
        /* Inside the results of the poll that just returned. */
        REQUIRE_RC(idle_from(f.cli, st[0], &p0), 0);
        for (unsigned i = 0; i < 8; i++)
            REQUIRE_RC(sfx_send_one(st[i], buf, SZ, 200 + round * 8 + i), 0);
        CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 0);
        CU_ASSERT_EQUAL(harvest(f.cli, st, 8, SZ, 200 + round * 8), 0);
        CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 1);
    }
    /* 40 in one go: the 32nd does not wait for the poll. */
    REQUIRE_RC(idle_from(f.cli, st[0], &p0), 0);
    for (unsigned i = 0; i < NST; i++)
        REQUIRE_RC(sfx_send_one(st[i], buf, SZ, 500 + i), 0);
    CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 1);
    CU_ASSERT_EQUAL(harvest(f.cli, st, NST, SZ, 500), 0);
    /* Another thread queues on a session whose Polling we owe: it does
     * not wait for us, it sends it. */
    REQUIRE_RC(idle_from(f.cli, st[0], &p0), 0);
    REQUIRE_RC(sfx_send_one(st[0], buf, SZ, 700), 0);
    CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 0);
    EXPECT_RC(send_from_thread(st[1], buf, 701), 0);
    CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 1);
    CU_ASSERT_EQUAL(harvest(f.cli, st, 2, SZ, 700), 0);
    /* A caller that takes the fd after the flush, and waits on it rather
     * than in the poll: the owed Polling makes it readable (nothing else
     * can: the server has not been woken). Then once more, fd taken. */
    for (unsigned i = 0; i < 2; i++) {
        REQUIRE_RC(idle_from(f.cli, st[0], &p0), 0);
        REQUIRE_RC(sfx_send_one(st[0], buf, SZ, 600 + i), 0);
        CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 0);
        struct pollfd pfd = {.fd = shmipc_client_fd(f.cli), .events = POLLIN};
        CU_ASSERT_EQUAL(poll(&pfd, 1, RECV_MS), 1);
        CU_ASSERT_EQUAL(harvest(f.cli, st, 1, SZ, 600 + i), 0);
        CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 1);
    }
    /* Turning to another client's poll sends what this thread owes the
     * first one. */
    shmipc_client *c2 = NULL;
    REQUIRE_RC(shmipc_client_open(&cfg, &c2), 0);
    REQUIRE_RC(idle_from(f.cli, st[0], &p0), 0);
    REQUIRE_RC(sfx_send_one(st[0], buf, SZ, 800), 0);
    CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 0);
    shmipc_stream *none[1];
    CU_ASSERT_EQUAL(shmipc_client_poll(c2, none, 1, 0), 0);
    CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 1);
    shmipc_client_close(c2);
    CU_ASSERT_EQUAL(harvest(f.cli, st, 1, SZ, 800), 0);
    /* Another thread's flush is not the poll loop's: at once. */
    REQUIRE_RC(idle_from(f.cli, st[0], &p0), 0);
    EXPECT_RC(send_from_thread(st[0], buf, 9000), 0);
    CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 1);
    CU_ASSERT_EQUAL(harvest(f.cli, st, 1, 500, 9000), 0);
    sfx_close_streams(st, NST);
    shmipc_client_close(f.cli);
    f.cli = NULL;
    /* eager_wakeups: every flush may wake, as with an I/O thread. */
    cfg.eager_wakeups = 1;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    shmipc_stream *e = NULL;
    REQUIRE_RC(shmipc_client_get(f.cli, &e), 0);
    REQUIRE_RC(sfx_send_one(e, buf, SZ, 42), 0);
    CU_ASSERT_EQUAL(harvest(f.cli, &e, 1, SZ, 42), 0);
    REQUIRE_RC(idle_from(f.cli, e, &p0), 0);
    REQUIRE_RC(sfx_send_one(e, buf, SZ, 43), 0);
    CU_ASSERT_EQUAL(polls_sent(f.cli) - p0, 1);
    CU_ASSERT_EQUAL(harvest(f.cli, &e, 1, SZ, 43), 0);
    shmipc_stream_close(e);
out:
    sfx_close_streams(st, NST);
    sfx_end(&f);
}

/* An event-loop client whose messages go by fallback (the pool is too
 * small) with more queued than the socket takes: nothing else drives the
 * session, so the flush has to write (and read) in place, not wait for a
 * drain that only its own poll would do. */
static void test_event_loop_client_fallback(void)
{
    struct fx f;
    enum { NST = 4 };
    const size_t sz = 6u << 20;
    shmipc_stream *st[NST] = {0};
    uint8_t *req = NULL;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.no_io_thread = 1;
    sfx_one_class_pool(&cfg, 64u << 10, 1024);
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE((req = malloc(sz)) != NULL);
    /* All streams first: a session that fell back refuses new ones a while. */
    for (int i = 0; i < NST; i++)
        REQUIRE_RC(shmipc_client_get(f.cli, &st[i]), 0);
    for (int i = 0; i < NST; i++)
        REQUIRE_RC(sfx_send_one(st[i], req, sz, 700 + (uint64_t)i), 0);
    /* Every answer right, within the deadline. */
    CU_ASSERT_EQUAL(harvest(f.cli, st, NST, sz, 700), 0);
    struct shmipc_stats s;
    shmipc_client_stats(f.cli, &s);
    CU_ASSERT_EQUAL(s.fallbacks_sent, NST);
out:
    sfx_close_streams(st, NST);
    free(req);
    sfx_end(&f);
}

/* While the server's handlers run, it keeps the request queue's working
 * flag: requests queued meanwhile need no Polling and are taken in the
 * same turn. The gate holds the server inside a handler while the client
 * queues more. */
static void test_no_polling_while_handling(void)
{
    struct fx f;
    enum { NST = 8 };
    shmipc_stream *gate = NULL, *st[NST] = {0};
    char entered[160] = "", release[160] = "";
    int efd = -1, rfd = -1;
    /* The server opens the FIFOs only when the gate message comes. */
    REQUIRE_RC(sfx_start(&f, SRV_ECHO, SHMIPC_MODE_MEMFD, &gate), 0);
    snprintf(entered, sizeof(entered), "%s/entered", f.dir);
    snprintf(release, sizeof(release), "%s/release", f.dir);
    REQUIRE(mkfifo(entered, 0600) == 0 && mkfifo(release, 0600) == 0);
    for (int i = 0; i < NST; i++)
        REQUIRE_RC(shmipc_client_get(f.cli, &st[i]), 0);
    REQUIRE_RC(sfx_send_msg(gate, sfx_ctl_gate, CTL_LEN), 0);
    char c;
    REQUIRE((efd = open(entered, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) >= 0);
    struct pollfd pfd = {.fd = efd, .events = POLLIN};
    REQUIRE(poll(&pfd, 1, RECV_MS) == 1 && read(efd, &c, 1) == 1); /* inside the handler */
    struct shmipc_stats before, after;
    shmipc_client_stats(f.cli, &before);
    uint8_t *req = sfx_pattern(100, 60);
    REQUIRE(req != NULL);
    for (int i = 0; i < NST; i++)
        CU_ASSERT_EQUAL(sfx_send_one(st[i], req, 100, 60 + (uint64_t)i), 0);
    free(req);
    shmipc_client_stats(f.cli, &after);
    CU_ASSERT_EQUAL(after.wakeups_sent - before.wakeups_sent, 0);
    CU_ASSERT_EQUAL(after.messages_sent - before.messages_sent, NST);
    /* The handler opens its end right after saying it entered. */
    uint64_t deadline = sfx_deadline_ns(RECV_MS);
    while ((rfd = open(release, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) < 0 && errno == ENXIO &&
           tu_now_ns() < deadline)
        usleep(1000);
    REQUIRE(rfd >= 0 && write(rfd, "R", 1) == 1);
    shmipc_msg m;
    REQUIRE_RC(shmipc_stream_recv(gate, &m, RECV_MS), 0);
    CU_ASSERT_EQUAL(m.len, CTL_LEN);
    shmipc_msg_release(&m);
    for (int i = 0; i < NST; i++) {
        REQUIRE_RC(shmipc_stream_recv(st[i], &m, RECV_MS), 0);
        CU_ASSERT(sfx_msg_is(&m, 100, 60 + (uint64_t)i));
        shmipc_msg_release(&m);
    }
out:
    if (efd >= 0)
        close(efd);
    if (rfd >= 0)
        close(rfd);
    sfx_close_streams(st, NST);
    if (gate != NULL)
        shmipc_stream_close(gate);
    unlink(entered);
    unlink(release);
    sfx_end(&f);
}

static void test_random_echo_memfd(void)
{
    random_echo_on(SHMIPC_MODE_MEMFD);
}

static void test_random_echo_file(void)
{
    random_echo_on(SHMIPC_MODE_FILE);
}

/* The server computes the checksum: what it read must be what we wrote. */
static void test_random_server_checksum(void)
{
    struct fx f;
    uint8_t *buf = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_HASH, SHMIPC_MODE_MEMFD, &f.st), 0);
    REQUIRE((buf = malloc(2u << 20)) != NULL);
    uint64_t seed = 0xc0ffee;
    for (unsigned i = 0; i < 200; i++) {
        uint64_t r = sfx_rng(&seed);
        size_t n = r % 8 == 0 ? r >> 8 & 0x1fffff : r >> 8 & 0x3ffff;
        for (size_t k = 0; k < n; k++)
            buf[k] = (uint8_t)(sfx_rng(&seed) >> 24);
        shmipc_msg m;
        REQUIRE_RC(shmipc_call(f.st, buf, n, &m, RECV_MS), 0);
        uint8_t ans[12];
        size_t got = shmipc_msg_copy(&m, 0, ans, sizeof(ans));
        shmipc_msg_release(&m);
        uint32_t len;
        uint64_t h;
        memcpy(&len, ans, 4);
        memcpy(&h, ans + 4, 8);
        REQUIRE(got == sizeof(ans));
        CU_ASSERT_EQUAL(len, n);
        CU_ASSERT_EQUAL(h, sfx_fnv1a(FNV_INIT, buf, n));
        REQUIRE(len == n && h == sfx_fnv1a(FNV_INIT, buf, n));
    }
out:
    free(buf);
    sfx_end(&f);
}

/* Byte-level reads cut across message boundaries in both directions. */
static void test_stream_read_across_messages(void)
{
    static const size_t sizes[] = {1, 7, 100, 5000, 20000, 3, 150000, 0, 42};
    struct fx f;
    uint8_t *all = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_ECHO, SHMIPC_MODE_MEMFD, &f.st), 0);
    size_t total = 0;
    for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        total += sizes[i];
    REQUIRE((all = malloc(total)) != NULL);
    size_t at = 0;
    for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        REQUIRE_RC(sfx_send_one(f.st, all + at, sizes[i], 77 + i), 0);
        at += sizes[i];
    }
    REQUIRE_RC(sfx_read_expect(f.st, all, total), 0);
    /* Everything was read: nothing more is there. */
    uint8_t b;
    EXPECT_RC(shmipc_stream_read(f.st, &b, 1, 50), SHMIPC_ETIMEDOUT);
    /* A message split by reads still leaves the next whole for recv. */
    REQUIRE_RC(sfx_echo_once(f.st, 300, 5, NULL), 0);
out:
    free(all);
    sfx_end(&f);
}

/* Zero-copy writes: reserved space is part of the message, in order with
 * copied bytes; an oversized reserve fails and leaves the message alone. */
static void test_reserve_zero_copy(void)
{
    struct fx f;
    uint8_t *want = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_ECHO, SHMIPC_MODE_MEMFD, &f.st), 0);
    static const size_t parts[] = {100, 8000, 50, MAX_SLICE, 1};
    size_t total = 0;
    for (unsigned i = 0; i < 5; i++)
        total += parts[i];
    REQUIRE((want = sfx_pattern(total, 99)) != NULL);
    size_t at = 0;
    for (unsigned i = 0; i < 5; i++) {
        if (i == 2) { /* a copied piece between reserved ones */
            REQUIRE_RC(shmipc_stream_write(f.st, want + at, parts[i]), 0);
        } else {
            void *p = NULL;
            REQUIRE_RC(shmipc_stream_reserve(f.st, parts[i], &p), 0);
            REQUIRE(p != NULL);
            memcpy(p, want + at, parts[i]);
        }
        at += parts[i];
    }
    void *p = NULL;
    CU_ASSERT(shmipc_stream_reserve(f.st, MAX_SLICE + 1, &p) < 0);
    REQUIRE_RC(shmipc_stream_flush(f.st), 0);
    shmipc_msg m;
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    CU_ASSERT_EQUAL(m.len, total);
    uint8_t *got = malloc(total);
    if (got != NULL) {
        CU_ASSERT_EQUAL(shmipc_msg_copy(&m, 0, got, total), total);
        CU_ASSERT(memcmp(got, want, total) == 0);
        free(got);
    }
    shmipc_msg_release(&m);
    /* Reserve alone, filled, as one small message. */
    REQUIRE_RC(shmipc_stream_reserve(f.st, 16, &p), 0);
    memcpy(p, "zero-copy-16byte", 16);
    REQUIRE_RC(shmipc_stream_flush(f.st), 0);
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    char small[17] = "";
    CU_ASSERT_EQUAL(shmipc_msg_copy(&m, 0, small, 16), 16);
    CU_ASSERT_STRING_EQUAL(small, "zero-copy-16byte");
    shmipc_msg_release(&m);
out:
    free(want);
    sfx_end(&f);
}

/* A forwarded message goes back in its own slices: the answer's first
 * piece is the very memory the request was reserved in. The same slices
 * come round again and again (the server's held marks must be cleared
 * when it lets them go, or a reuse would look like a replay); a prefix
 * written first makes the server copy instead. */
static void test_forward_zero_copy(void)
{
    struct fx f;
    uint8_t *want = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_FORWARD, SHMIPC_MODE_MEMFD, &f.st), 0);
    const size_t big = 3 * MAX_SLICE + 777;
    REQUIRE((want = sfx_pattern(big, 7)) != NULL);
    unsigned same = 0, rounds = 300;
    for (unsigned i = 0; i < rounds; i++) {
        size_t n = i % 3 == 0 ? 1 + i * 97 % 8000 : i % 3 == 1 ? 20000 + i : big;
        void *p = NULL;
        size_t first = n < MAX_SLICE ? n : MAX_SLICE;
        REQUIRE_RC(shmipc_stream_reserve(f.st, first, &p), 0);
        memcpy(p, want, first);
        ((uint8_t *)p)[0] = 'F';
        if (n > first)
            REQUIRE_RC(shmipc_stream_write(f.st, want + first, n - first), 0);
        REQUIRE_RC(shmipc_stream_flush(f.st), 0);
        shmipc_msg m;
        REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
        CU_ASSERT_EQUAL(m.len, n);
        same += m.niov > 0 && m.iov[0].base == p;
        uint8_t *got = malloc(n);
        if (got != NULL) {
            CU_ASSERT_EQUAL(shmipc_msg_copy(&m, 0, got, n), n);
            CU_ASSERT_EQUAL(got[0], 'F');
            CU_ASSERT(n == 1 || memcmp(got + 1, want + 1, n - 1) == 0);
            free(got);
        }
        shmipc_msg_release(&m);
    }
    CU_ASSERT_EQUAL(same, rounds);
    /* Bytes written before the forward: one message, copied. */
    uint8_t *req = malloc(big);
    REQUIRE(req != NULL);
    memcpy(req, want, big);
    memcpy(req, "pfx?", 4);
    shmipc_msg m;
    int rc = shmipc_call(f.st, req, big, &m, RECV_MS);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc == 0) {
        CU_ASSERT_EQUAL(m.len, big + 3);
        uint8_t *got = malloc(big + 3);
        if (got != NULL && m.len == big + 3) {
            shmipc_msg_copy(&m, 0, got, big + 3);
            CU_ASSERT(memcmp(got, "pfx", 3) == 0);
            CU_ASSERT(memcmp(got + 3, req, big) == 0);
        }
        free(got);
        shmipc_msg_release(&m);
    }
    free(req);
    /* The client forwards what it received: whole, the same slices go
     * round again; after a partial read, only the rest (copied). */
    REQUIRE_RC(sfx_send_msg(f.st, "AHELLOWORLD", 11), 0);
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    const uint8_t *where = m.iov[0].base;
    REQUIRE_RC(shmipc_stream_forward(f.st, &m), 0);
    CU_ASSERT_PTR_NULL(m.priv_);
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    char txt[16] = "";
    CU_ASSERT(m.len == 11 && shmipc_msg_copy(&m, 0, txt, 11) == 11 &&
              memcmp(txt, "AHELLOWORLD", 11) == 0);
    CU_ASSERT(m.iov[0].base == where);
    shmipc_msg_release(&m);
    REQUIRE_RC(sfx_send_msg(f.st, "AHELLOWORLD", 11), 0);
    CU_ASSERT_EQUAL(shmipc_stream_read(f.st, txt, 3, RECV_MS), 3);
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    CU_ASSERT_EQUAL(m.len, 8);
    REQUIRE_RC(shmipc_stream_forward(f.st, &m), 0);
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    memset(txt, 0, sizeof(txt));
    CU_ASSERT(m.len == 8 && shmipc_msg_copy(&m, 0, txt, 8) == 8 && memcmp(txt, "LLOWORLD", 8) == 0);
    shmipc_msg_release(&m);
    struct shmipc_stats ss;
    REQUIRE_RC(sfx_srv_stats(f.cli, &ss), 0);
    CU_ASSERT_EQUAL(ss.protocol_errors, 0);
    CU_ASSERT_EQUAL(ss.messages_received, rounds + 6);
    CU_ASSERT_EQUAL(ss.fallbacks_sent, 0);
out:
    free(want);
    sfx_end(&f);
}

/* Forwarded answers that meet a full queue (an event-loop client that
 * does not poll while it sends, with 8-element queues) wait on the
 * server's blocked list and go out, in order and intact, once the client
 * takes what it has. */
static void test_forward_queue_full(void)
{
    struct fx f;
    enum { NST = 24, SZ = 2000 };
    shmipc_stream *st[NST] = {0};
    uint8_t buf[SZ];
    REQUIRE_RC(sfx_serve(&f, SRV_FORWARD, 0), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.no_io_thread = 1;
    cfg.queue_cap = 8;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    for (unsigned round = 0; round < 3; round++) {
        for (unsigned i = 0; i < NST; i++) {
            if (st[i] == NULL)
                REQUIRE_RC(shmipc_client_get(f.cli, &st[i]), 0);
            REQUIRE_RC(sfx_send_one(st[i], buf, SZ, 1000 * round + i), 0);
        }
        CU_ASSERT_EQUAL(harvest(f.cli, st, NST, SZ, 1000 * round), 0);
    }
    sfx_close_streams(st, NST);
    shmipc_client_close(f.cli);
    f.cli = NULL;
    REQUIRE_RC(sfx_connect(&f, SHMIPC_MODE_MEMFD, NULL), 0);
    struct shmipc_stats ss;
    REQUIRE_RC(sfx_srv_stats(f.cli, &ss), 0);
    CU_ASSERT(ss.queue_full > 0); /* the answers did meet a full queue */
    CU_ASSERT_EQUAL(ss.protocol_errors, 0);
out:
    sfx_close_streams(st, NST);
    sfx_end(&f);
}

/* ==== 2. many streams, pooled reuse ==== */

#define NSTREAMS 1000

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return x < y ? -1 : x > y;
}

static void test_1000_streams_4_sessions(void)
{
    struct fx f;
    shmipc_stream **st = calloc(NSTREAMS, sizeof(*st));
    void **first = calloc(NSTREAMS, sizeof(*first));
    void **second = calloc(NSTREAMS, sizeof(*second));
    uint8_t buf[1200];
    unsigned n = 0;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    REQUIRE(st != NULL && first != NULL && second != NULL);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.sessions = 4;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    CU_ASSERT_EQUAL(shmipc_client_live_sessions(f.cli), 4);
    for (int round = 0; round < 2; round++) {
        for (n = 0; n < NSTREAMS; n++) {
            REQUIRE_RC(shmipc_client_get(f.cli, &st[n]), 0);
            REQUIRE_RC(sfx_send_one(st[n], buf, 64 + n, (uint64_t)round << 32 | n), 0);
        }
        /* Every request is out before any answer is read. */
        uint32_t max_id = 0;
        for (unsigned i = 0; i < NSTREAMS; i++) {
            shmipc_msg m;
            REQUIRE_RC(shmipc_stream_recv(st[i], &m, RECV_MS), 0);
            int ok = sfx_msg_is(&m, 64 + i, (uint64_t)round << 32 | i);
            shmipc_msg_release(&m);
            REQUIRE(ok);
            uint32_t id = shmipc_stream_id(st[i]);
            max_id = id > max_id ? id : max_id;
            (round == 0 ? first : second)[i] = st[i];
        }
        /* Spread over the sessions: ids are per session, so a session
         * holding them all would have numbered up to 1001. */
        CU_ASSERT(max_id <= NSTREAMS / 4 + 2);
        for (; n > 0; n--)
            shmipc_client_put(f.cli, st[n - 1]);
    }
    /* The second round got the very streams of the first, from the pool. */
    qsort(first, NSTREAMS, sizeof(void *), cmp_ptr);
    qsort(second, NSTREAMS, sizeof(void *), cmp_ptr);
    CU_ASSERT(memcmp(first, second, NSTREAMS * sizeof(void *)) == 0);
    struct shmipc_stats s;
    shmipc_client_stats(f.cli, &s);
    CU_ASSERT_EQUAL(s.streams_opened, NSTREAMS);
    CU_ASSERT_EQUAL(s.sessions_opened, 4);
    CU_ASSERT_EQUAL(s.messages_received, 2 * NSTREAMS);
    CU_ASSERT_EQUAL(s.fallbacks_sent, 0);
    struct shmipc_stats ss;
    REQUIRE_RC(sfx_srv_stats(f.cli, &ss), 0);
    CU_ASSERT_EQUAL(ss.sessions_opened, 4);
    CU_ASSERT_EQUAL(ss.messages_received, 2 * NSTREAMS + 1); /* + the query */
    CU_ASSERT_EQUAL(ss.streams_opened, NSTREAMS);            /* the query took a pooled stream */
out:
    while (n > 0)
        shmipc_stream_close(st[--n]);
    free(st);
    free(first);
    free(second);
    sfx_end(&f);
}

static void test_pooled_stream_reuse(void)
{
    struct fx f;
    shmipc_stream *again = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_ECHO, SHMIPC_MODE_FILE, &f.st), 0);
    uint32_t id = shmipc_stream_id(f.st);
    CU_ASSERT(id >= 2);
    REQUIRE_RC(sfx_echo_once(f.st, 1000, 1, NULL), 0);
    struct shmipc_stats s0, s1;
    shmipc_client_stats(f.cli, &s0);
    for (int i = 0; i < 20; i++) {
        shmipc_client_put(f.cli, f.st);
        f.st = NULL;
        REQUIRE_RC(shmipc_client_get(f.cli, &f.st), 0);
        CU_ASSERT_EQUAL(shmipc_stream_id(f.st), id);
        REQUIRE_RC(sfx_echo_once(f.st, 100 + (size_t)i, 2 + (uint64_t)i, NULL), 0);
    }
    shmipc_client_stats(f.cli, &s1);
    CU_ASSERT_EQUAL(s1.streams_opened, s0.streams_opened);
    CU_ASSERT_EQUAL(s1.messages_sent, s0.messages_sent + 20);
    /* Held, a stream is not handed out twice: a second get is a new one. */
    REQUIRE_RC(shmipc_client_get(f.cli, &again), 0);
    CU_ASSERT_NOT_EQUAL(shmipc_stream_id(again), id);
    REQUIRE_RC(sfx_echo_once(again, 10, 3, NULL), 0);
    /* A stream with an unread answer is not pooled: put closes it. The
     * echo on `again` (same session, answered in order) makes sure the
     * answer to "x" has arrived. */
    uint32_t again_id = shmipc_stream_id(again);
    REQUIRE_RC(sfx_send_msg(f.st, "x", 1), 0);
    REQUIRE_RC(sfx_echo_once(again, 20, 4, NULL), 0);
    shmipc_client_put(f.cli, f.st);
    f.st = NULL;
    shmipc_client_put(f.cli, again);
    again = NULL;
    /* Had both been pooled, the second get would return `id`. */
    REQUIRE_RC(shmipc_client_get(f.cli, &f.st), 0);
    CU_ASSERT_EQUAL(shmipc_stream_id(f.st), again_id);
    REQUIRE_RC(shmipc_client_get(f.cli, &again), 0);
    CU_ASSERT(shmipc_stream_id(again) != id && shmipc_stream_id(again) != again_id);
    REQUIRE_RC(sfx_echo_once(again, 30, 5, NULL), 0);
    shmipc_client_stats(f.cli, &s1);
    CU_ASSERT_EQUAL(s1.streams_opened, s0.streams_opened + 2);
out:
    if (again != NULL)
        shmipc_stream_close(again);
    sfx_end(&f);
}

/* ==== 3. fallback under a tiny pool ==== */

static void fallback_on(enum shmipc_mem_mode mode)
{
    struct fx f;
    shmipc_stream *keep = NULL, *st = NULL, *later = NULL;
    uint8_t *want = NULL;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, mode);
    /* 62 slices of 1 KiB: a 64 KiB message can never be in the pool. */
    sfx_one_class_pool(&cfg, 64u << 10, 1024);
    cfg.unhealthy_ms = 1000; /* the refusal is checked right after the fallback */
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &keep), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &st), 0);
    REQUIRE_RC(sfx_echo_once(keep, 3000, 10, NULL), 0); /* in the pool */
    struct shmipc_stats s;
    shmipc_client_stats(f.cli, &s);
    REQUIRE(s.fallbacks_sent == 0);

    /* A message in the pool; then one whose first 3000 bytes fit in slices
     * before 64 KiB cannot (those bytes must move to the socket with the
     * rest); then small ones, which stay on the socket: nothing reorders. */
    static const struct {
        size_t len;
        int flush;
    } parts[] = {{500, 1}, {3000, 0}, {64u << 10, 0}, {100, 1}, {300, 1}, {2000, 1}};
    enum { NPARTS = sizeof(parts) / sizeof(parts[0]) };
    size_t total = 0;
    for (unsigned i = 0; i < NPARTS; i++)
        total += parts[i].len;
    REQUIRE((want = sfx_pattern(total, 11)) != NULL);
    size_t at = 0;
    for (unsigned i = 0; i < NPARTS; i++) {
        REQUIRE_RC(shmipc_stream_write(st, want + at, parts[i].len), 0);
        at += parts[i].len;
        if (!parts[i].flush)
            continue;
        REQUIRE_RC(shmipc_stream_flush(st), 0);
        if (i == 3) {
            /* Refused right away (well within unhealthy_ms). */
            EXPECT_RC(shmipc_client_get(f.cli, &later), SHMIPC_EUNHEALTHY);
            CU_ASSERT_PTR_NULL(later);
            later = NULL;
        }
    }
    shmipc_client_stats(f.cli, &s);
    CU_ASSERT_EQUAL(s.fallbacks_sent, 3);
    /* Existing streams keep working, in the pool. */
    REQUIRE_RC(sfx_echo_once(keep, 200, 12, NULL), 0);
    REQUIRE_RC(sfx_read_expect(st, want, total), 0);
    /* The fallen-back stream stays usable, on the socket. */
    REQUIRE_RC(sfx_echo_once(st, 5000, 13, NULL), 0);
    shmipc_client_stats(f.cli, &s);
    /* 64 KiB cannot fit the server's answer either. */
    CU_ASSERT(s.fallbacks_received >= 1);
    CU_ASSERT_EQUAL(s.fallbacks_sent, 4);

    /* After the window new streams are allowed again (bounded poll). */
    uint64_t end = sfx_deadline_ns(POLL_MS);
    int rc;
    while ((rc = shmipc_client_get(f.cli, &later)) == SHMIPC_EUNHEALTHY && tu_now_ns() < end)
        sfx_sleep_ms(20);
    REQUIRE_RC(rc, 0);
    REQUIRE_RC(sfx_echo_once(later, 700, 14, NULL), 0);
    struct shmipc_stats s2;
    shmipc_client_stats(f.cli, &s2);
    CU_ASSERT_EQUAL(s2.fallbacks_sent, s.fallbacks_sent); /* a new stream is in the pool */
out:
    free(want);
    if (keep != NULL)
        shmipc_stream_close(keep);
    if (st != NULL)
        shmipc_client_put(f.cli, st); /* in fallback: not pooled, closed */
    if (later != NULL)
        shmipc_stream_close(later);
    sfx_end(&f);
}

static void test_fallback_memfd(void)
{
    fallback_on(SHMIPC_MODE_MEMFD);
}

static void test_fallback_file(void)
{
    fallback_on(SHMIPC_MODE_FILE);
}

/* ==== 4. queue full, close, half-close, deadlines ==== */

/* Waits (bounded) until the child is stopped by SIGSTOP. */
static int wait_stopped(pid_t pid)
{
    uint64_t end = sfx_deadline_ns(POLL_MS);
    int status;
    while (tu_now_ns() < end) {
        pid_t r = waitpid(pid, &status, WUNTRACED | WNOHANG);
        if (r == pid && WIFSTOPPED(status))
            return 0;
        if (r != 0)
            return -1;
        sfx_sleep_ms(1);
    }
    return -1;
}

#define QMSG 100 /* bytes per message in the queue-full test */

static void test_queue_full(void)
{
    struct fx f;
    shmipc_stream *hog = NULL;
    uint8_t *want = NULL, *big = NULL;
    int stopped = 0;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.queue_cap = 8;
    /* A small pool of 63 slices, so that one stream can take every free
     * slice: a slice wrongly freed after EQFULL would be overwritten. */
    sfx_one_class_pool(&cfg, 256u << 10, 4076);
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &f.st), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &hog), 0);
    REQUIRE_RC(sfx_echo_once(f.st, 10, 1, NULL), 0); /* the server has drained the queue */
    enum { NMSG = 30 };
    REQUIRE((want = sfx_pattern(NMSG * QMSG, 21)) != NULL);

    REQUIRE(kill(f.srv.pid, SIGSTOP) == 0);
    stopped = 1;
    REQUIRE_RC(wait_stopped(f.srv.pid), 0);
    unsigned sent = 0;
    int rc = 0;
    for (; sent < NMSG; sent++) {
        REQUIRE_RC(shmipc_stream_write(f.st, want + sent * QMSG, QMSG), 0);
        if ((rc = shmipc_stream_flush(f.st)) != 0)
            break;
    }
    EXPECT_RC(rc, SHMIPC_EQFULL);
    CU_ASSERT_EQUAL(sent, cfg.queue_cap); /* nothing drains a stopped server */
    struct shmipc_stats s;
    shmipc_client_stats(f.cli, &s);
    CU_ASSERT(s.queue_full > 0);
    /* Message `sent` is pending. The hog takes every free slice, then
     * falls back: had the pending message's slice been freed, it would
     * have been handed to the hog and filled with 0xEE. */
    size_t hog_bytes = 64 * 4076;
    REQUIRE((big = malloc(hog_bytes)) != NULL);
    memset(big, 0xEE, hog_bytes);
    REQUIRE_RC(shmipc_stream_write(hog, big, hog_bytes), 0);
    shmipc_stream_discard(hog);
    shmipc_stream_close(hog); /* the close meets the full queue: it goes as an event */
    hog = NULL;
    /* Written after EQFULL: goes after the pending message. */
    sent++;
    REQUIRE_RC(shmipc_stream_write(f.st, want + sent * QMSG, QMSG), 0);
    sent++;

    REQUIRE(kill(f.srv.pid, SIGCONT) == 0);
    stopped = 0;
    uint64_t end = sfx_deadline_ns(POLL_MS);
    while ((rc = shmipc_stream_flush(f.st)) == SHMIPC_EQFULL && tu_now_ns() < end)
        ;
    REQUIRE_RC(rc, 0);
    for (; sent < NMSG; sent++) {
        REQUIRE_RC(shmipc_stream_write(f.st, want + sent * QMSG, QMSG), 0);
        while ((rc = shmipc_stream_flush(f.st)) == SHMIPC_EQFULL && tu_now_ns() < end)
            ;
        REQUIRE_RC(rc, 0);
    }
    /* Every byte back, in order (the echo may merge messages). */
    REQUIRE_RC(sfx_read_expect(f.st, want, NMSG * QMSG), 0);
    REQUIRE_RC(sfx_echo_once(f.st, 50, 22, NULL), 0);
out:
    if (stopped)
        kill(f.srv.pid, SIGCONT);
    free(want);
    free(big);
    if (hog != NULL)
        shmipc_stream_close(hog);
    sfx_end(&f);
}

/* Client half-close: the server gets every message, then on_close. */
static void test_client_shutdown(void)
{
    struct fx f;
    uint8_t *buf = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_SWALLOW, SHMIPC_MODE_MEMFD, &f.st), 0);
    static const size_t parts[] = {10, 100000, 1};
    REQUIRE((buf = sfx_pattern(100000, 3)) != NULL);
    for (unsigned i = 0; i < 3; i++)
        REQUIRE_RC(sfx_send_msg(f.st, buf, parts[i]), 0);
    uint32_t id = shmipc_stream_id(f.st);
    REQUIRE_RC(shmipc_stream_shutdown(f.st), 0);
    EXPECT_RC(shmipc_stream_write(f.st, "x", 1), SHMIPC_ECLOSED);
    EXPECT_RC(shmipc_stream_flush(f.st), SHMIPC_ECLOSED);
    struct closed_rec r;
    REQUIRE_RC(sfx_srv_wait_closed(f.cli, id, &r), 1);
    CU_ASSERT_EQUAL(r.msgs, 3);
    CU_ASSERT_EQUAL(r.bytes, 100011);
out:
    free(buf);
    sfx_end(&f);
}

/* One echo on a fresh stream (its id in *id) that the server ends after
 * answering: the answer, then SHMIPC_ECLOSED. The stream stays in *st. */
static int echo_then_closed(shmipc_client *c, shmipc_stream **st, uint32_t *id, size_t n,
                            uint64_t seed)
{
    int rc = shmipc_client_get(c, st);
    if (rc < 0)
        return rc;
    *id = shmipc_stream_id(*st);
    rc = sfx_echo_once(*st, n, seed, NULL);
    if (rc != 0)
        return rc;
    shmipc_msg m;
    return EXPECT_RC(shmipc_stream_recv(*st, &m, RECV_MS), SHMIPC_ECLOSED) ? 0 : 1;
}

/* Server half-close after answering: the client reads the answer, then
 * end of stream; when the client closes too, the server lets it go. */
static void test_server_shutdown(void)
{
    struct fx f;
    REQUIRE_RC(sfx_start(&f, SRV_ECHO_SHUTDOWN, SHMIPC_MODE_FILE, NULL), 0);
    for (int i = 0; i < 3; i++) {
        uint32_t id = 0;
        REQUIRE_RC(echo_then_closed(f.cli, &f.st, &id, 2000, 30 + (uint64_t)i), 0);
        uint8_t b;
        EXPECT_RC(shmipc_stream_read(f.st, &b, 1, RECV_MS), 0); /* end of stream */
        shmipc_client_put(f.cli, f.st);                         /* closed by the peer: not pooled */
        f.st = NULL;
        /* Both sides closed: the server's stream ends (on_close). */
        struct closed_rec r;
        REQUIRE_RC(sfx_srv_wait_closed(f.cli, id, &r), 1);
        CU_ASSERT_EQUAL(r.msgs, 1);
        CU_ASSERT_EQUAL(r.bytes, 2000);
    }
    struct shmipc_stats s;
    shmipc_client_stats(f.cli, &s);
    CU_ASSERT_EQUAL(s.streams_opened, 3 + 3); /* + the three queries */
out:
    sfx_end(&f);
}

/* A handler that answers and closes its stream: the client gets the
 * answer and then end of stream; the server lives on (under ASan its
 * child would report a use after free) and never calls on_close for it. */
static void test_server_handler_close(void)
{
    struct fx f;
    REQUIRE_RC(sfx_start(&f, SRV_ECHO_CLOSE, SHMIPC_MODE_MEMFD, NULL), 0);
    for (int i = 0; i < 5; i++) {
        uint32_t id = 0;
        REQUIRE_RC(echo_then_closed(f.cli, &f.st, &id, 1000 + (size_t)i, 70 + (uint64_t)i), 0);
        shmipc_client_put(f.cli, f.st);
        f.st = NULL;
        /* Our close (after theirs) comes before the query: an on_close it
         * wrongly caused would be in the log already. */
        struct closed_rec r;
        EXPECT_RC(sfx_srv_closed(f.cli, id, &r), 1);
        CU_ASSERT_EQUAL(r.msgs, 1);
        CU_ASSERT_EQUAL(r.bytes, 1000 + (uint64_t)i);
    }
    struct shmipc_stats ss;
    REQUIRE_RC(sfx_srv_stats(f.cli, &ss), 0);
    CU_ASSERT_EQUAL(ss.sessions_closed, 0);
    CU_ASSERT_EQUAL(ss.protocol_errors, 0);
out:
    sfx_end(&f);
}

static void test_read_deadline(void)
{
    struct fx f;
    shmipc_stream *quiet = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_SWALLOW, SHMIPC_MODE_MEMFD, &f.st), 0);
    REQUIRE_RC(sfx_send_msg(f.st, "never answered", 14), 0);
    shmipc_msg m;
    EXPECT_RC(shmipc_stream_recv(f.st, &m, 50), SHMIPC_ETIMEDOUT);
    CU_ASSERT_PTR_NULL(m.priv_);
    EXPECT_RC(shmipc_stream_recv(f.st, &m, 0), SHMIPC_ETIMEDOUT);
    uint8_t b[4];
    EXPECT_RC(shmipc_stream_read(f.st, b, sizeof(b), 50), SHMIPC_ETIMEDOUT);
    /* A stream that sent nothing times out the same way. */
    REQUIRE_RC(shmipc_client_get(f.cli, &quiet), 0);
    EXPECT_RC(shmipc_stream_recv(quiet, &m, 50), SHMIPC_ETIMEDOUT);
    /* The session is fine afterwards. */
    struct shmipc_stats ss;
    REQUIRE_RC(sfx_srv_stats(f.cli, &ss), 0);
    CU_ASSERT_EQUAL(ss.messages_received, 2);
out:
    if (quiet != NULL)
        shmipc_stream_close(quiet);
    sfx_end(&f);
}

/* ==== 5. a peer killed mid-stream ==== */

struct killer {
    pid_t pid;
    int after_ms;
};

static void *killer_main(void *arg)
{
    struct killer *k = arg;
    sfx_sleep_ms(k->after_ms);
    kill(k->pid, SIGKILL);
    return NULL;
}

static void server_killed_on(enum shmipc_mem_mode mode)
{
    struct fx f;
    struct srv_child next = {0};
    pthread_t th;
    int th_started = 0;
    REQUIRE_RC(sfx_serve(&f, SRV_SWALLOW, 0), 0);
    /* The successor is forked now, before the client has threads. */
    REQUIRE_RC(sfx_srv_fork(&next, SRV_ECHO, f.addr), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, mode);
    cfg.sessions = 2;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &f.st), 0);
    REQUIRE_RC(sfx_send_msg(f.st, "are you there?", 14), 0);
    REQUIRE_RC(shmipc_stream_write(f.st, "pending", 7), 0); /* not flushed */

    struct killer k = {f.srv.pid, 100};
    REQUIRE(pthread_create(&th, NULL, killer_main, &k) == 0);
    th_started = 1;
    shmipc_msg m;
    int rc = shmipc_stream_recv(f.st, &m, 30000);
    CU_ASSERT(rc < 0 && rc != SHMIPC_ETIMEDOUT);
    if (rc == 0)
        shmipc_msg_release(&m);
    pthread_join(th, NULL);
    th_started = 0;
    f.srv.pid = 0;
    CU_ASSERT_EQUAL(tu_wait(k.pid, CHILD_MS), 128 + SIGKILL);
    CU_ASSERT(shmipc_stream_flush(f.st) < 0);
    shmipc_stream_close(f.st);
    f.st = NULL;
    /* Both sessions notice (bounded). */
    uint64_t end = sfx_deadline_ns(POLL_MS);
    while (shmipc_client_live_sessions(f.cli) > 0 && tu_now_ns() < end)
        sfx_sleep_ms(5);
    CU_ASSERT_EQUAL(shmipc_client_live_sessions(f.cli), 0);
    /* Nobody listens: a get fails rather than hangs. */
    CU_ASSERT(shmipc_client_get(f.cli, &f.st) < 0);
    f.st = NULL;

    /* A new server on the same address: the client reconnects. */
    REQUIRE_RC(sfx_srv_go(&next), 0);
    f.srv = next;
    next.pid = 0;
    end = sfx_deadline_ns(POLL_MS);
    while ((rc = shmipc_client_get(f.cli, &f.st)) < 0 && tu_now_ns() < end)
        sfx_sleep_ms(10);
    REQUIRE_RC(rc, 0);
    REQUIRE_RC(sfx_echo_once(f.st, 5000, 40, NULL), 0);
    for (int i = 0; i < 10; i++)
        REQUIRE_RC(sfx_echo_new(f.cli, 100, 41 + (uint64_t)i), 0);
    struct shmipc_stats s;
    shmipc_client_stats(f.cli, &s);
    CU_ASSERT(s.reconnects >= 1);
    CU_ASSERT(s.sessions_closed >= 2);
    CU_ASSERT(s.sessions_opened >= 3);
out:
    if (th_started)
        pthread_join(th, NULL);
    EXPECT_RC(sfx_srv_stop(&next), 0);
    sfx_end(&f);
}

static void test_server_killed_memfd(void)
{
    server_killed_on(SHMIPC_MODE_MEMFD);
}

static void test_server_killed_file(void)
{
    server_killed_on(SHMIPC_MODE_FILE);
}

/* A server that stops cleanly removes the pool file of a file-mode client
 * (the last session using it closed): the client's reconnect to the next
 * server makes a new pool in a new file, and everything works on it. */
/* Entries of /dev/shm named <sfx_shm_name(sfx)>...<end>. */
static int shm_files_ending(const char *sfx, const char *end)
{
    const char *pre = sfx_shm_name(sfx);
    DIR *d = opendir("/dev/shm");
    int n = 0;
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name), el = strlen(end);
        n += strncmp(e->d_name, pre, strlen(pre)) == 0 && len >= el &&
             strcmp(e->d_name + len - el, end) == 0;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

static void test_server_stopped_file(void)
{
    struct fx f;
    struct srv_child next = {0};
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    REQUIRE_RC(sfx_srv_fork(&next, SRV_ECHO, f.addr), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_FILE);
    cfg.path_prefix = sfx_shm_prefix("stop");
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE_RC(sfx_echo_new(f.cli, 100, 1), 0);
    CHECK_EQ(shm_files_ending("stop", "_buffer"), 1);
    CHECK_EQ(sfx_srv_stop(&f.srv), 0);
    uint64_t end = sfx_deadline_ns(POLL_MS);
    while (shmipc_client_live_sessions(f.cli) > 0 && tu_now_ns() < end)
        sfx_sleep_ms(5);
    CU_ASSERT_EQUAL(shmipc_client_live_sessions(f.cli), 0);
    CHECK_EQ(shm_files_ending("stop", "_buffer"), 0); /* the server removed it */

    REQUIRE_RC(sfx_srv_go(&next), 0);
    f.srv = next;
    next.pid = 0;
    int rc;
    end = sfx_deadline_ns(POLL_MS);
    while ((rc = shmipc_client_get(f.cli, &f.st)) < 0 && tu_now_ns() < end)
        sfx_sleep_ms(10);
    REQUIRE_RC(rc, 0);
    REQUIRE_RC(sfx_echo_once(f.st, 5000, 40, NULL), 0);
    for (int i = 0; i < 10; i++)
        REQUIRE_RC(sfx_echo_new(f.cli, 100, 41 + (uint64_t)i), 0);
    CHECK_EQ(shm_files_ending("stop", "_buffer_r1"), 1); /* the new pool's file */
    struct shmipc_stats s;
    shmipc_client_stats(f.cli, &s);
    CU_ASSERT(s.reconnects >= 1);
    CHECK_EQ(s.protocol_errors, 0);
out:
    EXPECT_RC(sfx_srv_stop(&next), 0);
    sfx_end(&f);
}

struct cli_boot {
    char address[160];
    enum shmipc_mem_mode mode;
    int wfd;
};

/* A client that stops mid-stream (an answer unread, a write unflushed,
 * a stream held) and waits to be killed. */
static int cli_child_main(void *arg)
{
    struct cli_boot *b = arg;
    sfx_close_inherited(b->wfd, -1);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, b->address, b->mode);
    shmipc_client *c;
    shmipc_stream *st;
    if (shmipc_client_open(&cfg, &c) < 0 || shmipc_client_get(c, &st) < 0)
        return 1;
    uint8_t buf[3000];
    sfx_fill(buf, sizeof(buf), 50);
    if (sfx_echo_once(st, 3000, 50, NULL) != 0 || shmipc_stream_write(st, buf, sizeof(buf)) < 0 ||
        shmipc_stream_flush(st) < 0 || shmipc_stream_write(st, buf, 100) < 0)
        return 2;
    if (write(b->wfd, "R", 1) != 1)
        return 3;
    for (;;)
        pause(); /* tu_fork's alarm ends this if the parent never kills */
}

static void client_killed_on(enum shmipc_mem_mode mode)
{
    struct fx f;
    pid_t child = 0, dead = 0;
    int p[2] = {-1, -1};
    struct cli_boot b = {.mode = mode};
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    REQUIRE(pipe2(p, O_CLOEXEC) == 0);
    b.wfd = p[1];
    snprintf(b.address, sizeof(b.address), "%s", f.addr);
    child = tu_fork(cli_child_main, &b);
    close(p[1]);
    p[1] = -1;
    REQUIRE(child > 0);
    char c = 0;
    struct pollfd pfd = {p[0], POLLIN, 0};
    REQUIRE(poll(&pfd, 1, START_MS) == 1 && read(p[0], &c, 1) == 1 && c == 'R');
    kill(child, SIGKILL);
    CU_ASSERT_EQUAL(tu_wait(child, CHILD_MS), 128 + SIGKILL);
    dead = child;
    child = 0;

    /* The server goes on serving a second client... */
    REQUIRE_RC(sfx_connect(&f, mode, NULL), 0);
    for (int i = 0; i < 20; i++)
        REQUIRE_RC(sfx_echo_new(f.cli, 200 + (size_t)i * 100, 60 + (uint64_t)i), 0);
    /* ...and has closed the dead client's session (bounded poll). */
    struct shmipc_stats ss = {0};
    uint64_t end = sfx_deadline_ns(POLL_MS);
    for (;;) {
        REQUIRE_RC(sfx_srv_stats(f.cli, &ss), 0);
        if (ss.sessions_closed > 0 || tu_now_ns() >= end)
            break;
        sfx_sleep_ms(10);
    }
    CU_ASSERT_EQUAL(ss.sessions_opened, 2);
    CU_ASSERT_EQUAL(ss.sessions_closed, 1);
    CU_ASSERT_EQUAL(ss.protocol_errors, 0);
    /* A killed client cannot remove its files: in file mode the server
     * does, as Go clients expect, once it closed that session. */
    if (mode == SHMIPC_MODE_FILE) {
        char mine[96];
        snprintf(mine, sizeof(mine), "%s_%d_", sfx_shm_name(""), (int)dead);
        end = sfx_deadline_ns(POLL_MS);
        while (tu_count_shm(mine) > 0 && tu_now_ns() < end)
            sfx_sleep_ms(5);
        CU_ASSERT_EQUAL(tu_count_shm(mine), 0);
    }
out:
    if (child > 0) {
        kill(child, SIGKILL);
        tu_wait(child, CHILD_MS);
        dead = child;
    }
    if (p[0] >= 0)
        close(p[0]);
    if (p[1] >= 0)
        close(p[1]);
    if (dead > 0 && mode == SHMIPC_MODE_FILE)
        sfx_unlink_shm_of(dead); /* what the server failed to remove */
    sfx_end(&f);
}

static void test_client_killed_memfd(void)
{
    client_killed_on(SHMIPC_MODE_MEMFD);
}

static void test_client_killed_file(void)
{
    client_killed_on(SHMIPC_MODE_FILE);
}

/* ==== 7. two clients in one process, file mode, different prefixes ==== */

static void test_two_clients_file_prefixes(void)
{
    struct fx f;
    shmipc_client *other = NULL;
    pthread_t th[2];
    int nth = 0;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    struct shmipc_client_config a, b;
    sfx_cfg_init(&a, f.addr, SHMIPC_MODE_FILE);
    sfx_cfg_init(&b, f.addr, SHMIPC_MODE_FILE);
    a.path_prefix = sfx_shm_prefix("a");
    b.path_prefix = sfx_shm_prefix("b");
    a.sessions = 2;
    REQUIRE_RC(shmipc_client_open(&a, &f.cli), 0);
    REQUIRE_RC(shmipc_client_open(&b, &other), 0);
    CU_ASSERT_EQUAL(tu_count_shm(sfx_shm_name("a_")), 3); /* buffer + 2 queues */
    CU_ASSERT_EQUAL(tu_count_shm(sfx_shm_name("b_")), 2);
    struct worker w[2] = {{f.cli, 1000, 200, 20000, 0}, {other, 2000, 200, 20000, 0}};
    for (; nth < 2; nth++)
        REQUIRE(pthread_create(&th[nth], NULL, worker_main, &w[nth]) == 0);
    while (nth > 0)
        pthread_join(th[--nth], NULL);
    EXPECT_RC(w[0].rc, 0);
    EXPECT_RC(w[1].rc, 0);
    struct shmipc_stats sa, sb, ss;
    shmipc_client_stats(f.cli, &sa);
    shmipc_client_stats(other, &sb);
    CU_ASSERT_EQUAL(sa.messages_received, 200);
    CU_ASSERT_EQUAL(sb.messages_received, 200);
    REQUIRE_RC(sfx_srv_stats(other, &ss), 0);
    CU_ASSERT_EQUAL(ss.sessions_opened, 3);
    CU_ASSERT_EQUAL(ss.messages_received, 401);
out:
    while (nth > 0)
        pthread_join(th[--nth], NULL);
    shmipc_client_close(other);
    CU_ASSERT_EQUAL(tu_count_shm(sfx_shm_name("b_")), 0);
    sfx_end(&f);
}

/* ==== 8. who removes the files (file mode) ==== */

static int path_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Waits (bounded) until `path` is gone: 0, or -1 at the deadline. */
static int wait_gone(const char *path)
{
    uint64_t end = sfx_deadline_ns(POLL_MS);
    while (path_exists(path)) {
        if (tu_now_ns() >= end)
            return -1;
        sfx_sleep_ms(2);
    }
    return 0;
}

/* Our own client, file mode: after shmipc_client_close() nothing of it is
 * left in /dev/shm. The server is stopped meanwhile, so what went, the
 * client removed. */
static void test_client_close_removes_files(void)
{
    struct fx f;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_FILE);
    cfg.path_prefix = sfx_shm_prefix("c");
    cfg.sessions = 2;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE_RC(sfx_echo_new(f.cli, 1000, 70), 0);
    CU_ASSERT_EQUAL(tu_count_shm(sfx_shm_name("c_")), 3); /* buffer + 2 queues */
    REQUIRE(kill(f.srv.pid, SIGSTOP) == 0);
    REQUIRE_RC(wait_stopped(f.srv.pid), 0);
    shmipc_client_close(f.cli);
    f.cli = NULL;
    CU_ASSERT_EQUAL(tu_count_shm(sfx_shm_name("c")), 0);
out:
    sfx_end(&f); /* continues the server before stopping it */
}

#define RAW_POOL_BYTES (256u << 10)
#define RAW_QUEUE_CAP 64u

/* A pool file as a Go client makes it, left for the server to remove
 * (no REGION_UNLINK_ON_CLOSE). */
static int raw_pool(const char *path)
{
    static const struct pool_class one = {4096, 100};
    struct region r;
    struct pool_ref *p;
    int rc = region_create_file(&r, path, RAW_POOL_BYTES, 0);
    if (rc == 0)
        rc = pool_ref_new(&r, 1, &one, 1, NULL, &p); /* closes r on failure */
    if (rc == 0)
        pool_ref_put(p);
    return rc;
}

/* A file-mode session of a peer that leaves its files behind, as a Go
 * client that exits without closing does: a queue file it does not
 * remove, then the handshake. Version 2 sends the paths and goes on;
 * version 3 waits for the ack, so the server has mapped both files when it
 * returns. The peer keeps only the socket (*fd). */
static int raw_session(const struct fx *f, uint8_t version, const char *bpath, const char *qpath,
                       int *fd)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/sock", f->dir);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    int rc = connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -errno;
    struct region q;
    region_init(&q);
    int make = access(qpath, F_OK) != 0; /* a queue file the test made stays as it is */
    if (rc == 0 && make)
        rc = region_create_file(&q, qpath, queue_pair_size(RAW_QUEUE_CAP), 0);
    struct queue_pair qp;
    if (rc == 0 && make)
        rc = queue_pair_create(&qp, q.base, q.size, RAW_QUEUE_CAP);
    uint8_t v = 0;
    if (rc == 0)
        rc = hs_client(s, HS_FILE, version, qpath, bpath, -1, -1, sock_deadline(RECV_MS), &v);
    region_close(&q);
    if (rc < 0) {
        close(s);
        return rc;
    }
    *fd = s;
    return 0;
}

/* Against such a peer the server removes each queue file when its session
 * closes, and the pool file when the last session using it does. */
static void test_server_removes_peer_files(void)
{
    struct fx f;
    const char *name = sfx_shm_name("r");
    char bpath[128], q[4][128];
    int fd[4] = {-1, -1, -1, -1};
    snprintf(bpath, sizeof(bpath), "/dev/shm/%s_buffer", name);
    for (int i = 0; i < 4; i++)
        snprintf(q[i], sizeof(q[i]), "/dev/shm/%s_queue_%d", name, i);
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    REQUIRE_RC(raw_pool(bpath), 0);
    REQUIRE_RC(raw_session(&f, SHMIPC_PROTO_V2, bpath, q[0], &fd[0]), 0);
    REQUIRE_RC(raw_session(&f, SHMIPC_PROTO_V3, bpath, q[1], &fd[1]), 0);
    CU_ASSERT_EQUAL(tu_count_shm(name), 3);

    /* Session 0 ends: its queue goes, the pool stays for session 1. */
    close(fd[0]);
    fd[0] = -1;
    CU_ASSERT_EQUAL(wait_gone(q[0]), 0);
    CU_ASSERT_TRUE(path_exists(q[1]));
    /* The server still finds the pool by its path (and drops its second
     * mapping of it, found in the registry, without removing the file). */
    REQUIRE_RC(raw_session(&f, SHMIPC_PROTO_V3, bpath, q[2], &fd[2]), 0);
    CU_ASSERT_TRUE(path_exists(bpath));

    /* Session 1 ends: the same, and session 2 still holds the pool. The
     * server handles one thing at a time, so the next handshake comes
     * after session 1 was freed. */
    close(fd[1]);
    fd[1] = -1;
    CU_ASSERT_EQUAL(wait_gone(q[1]), 0);
    REQUIRE_RC(raw_session(&f, SHMIPC_PROTO_V3, bpath, q[3], &fd[3]), 0);
    CU_ASSERT_TRUE(path_exists(bpath));
    CU_ASSERT_EQUAL(tu_count_shm(name), 3); /* pool, queues 2 and 3 */

    /* The last two end: everything goes. */
    close(fd[2]);
    fd[2] = -1;
    CU_ASSERT_EQUAL(wait_gone(q[2]), 0);
    CU_ASSERT_TRUE(path_exists(bpath));
    close(fd[3]);
    fd[3] = -1;
    CU_ASSERT_EQUAL(wait_gone(q[3]), 0);
    CU_ASSERT_EQUAL(wait_gone(bpath), 0);
    CU_ASSERT_EQUAL(tu_count_shm(name), 0);
out:
    for (int i = 0; i < 4; i++) {
        if (fd[i] >= 0)
            close(fd[i]);
        unlink(q[i]); /* what the server failed to remove */
    }
    unlink(bpath);
    sfx_end(&f);
}

/* A file of `size` bytes of 0xa5: neither a pool nor a queue. */
static int junk_file(const char *path, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    uint8_t b[4096];
    memset(b, 0xa5, sizeof(b));
    int rc = 0;
    for (size_t done = 0; rc == 0 && done < size; done += sizeof(b))
        rc = write(fd, b, sizeof(b)) == (ssize_t)sizeof(b) ? 0 : -EIO;
    close(fd);
    return rc;
}

/* Files a peer names that are not what it says they are (a pool or a
 * queue that does not validate) are refused and never removed: a peer
 * cannot have the server delete any file it can name. */
static void test_server_keeps_invalid_peer_files(void)
{
    struct fx f;
    const char *name = sfx_shm_name("j");
    char junk[128], bpath[128], q[128], junkq[128];
    int fd = -1;
    snprintf(junk, sizeof(junk), "/dev/shm/%s_junk", name);
    snprintf(bpath, sizeof(bpath), "/dev/shm/%s_buffer", name);
    snprintf(q, sizeof(q), "/dev/shm/%s_queue", name);
    snprintf(junkq, sizeof(junkq), "/dev/shm/%s_junkq", name);
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    REQUIRE_RC(junk_file(junk, RAW_POOL_BYTES), 0);
    REQUIRE_RC(junk_file(junkq, 8192), 0);
    REQUIRE_RC(raw_pool(bpath), 0);
    /* Junk as the pool (the queue is never opened), then junk as the queue
     * of a good pool. */
    CU_ASSERT(raw_session(&f, SHMIPC_PROTO_V3, junk, q, &fd) < 0);
    CU_ASSERT(raw_session(&f, SHMIPC_PROTO_V3, bpath, junkq, &fd) < 0);
    CU_ASSERT_TRUE(path_exists(junk));
    CU_ASSERT_TRUE(path_exists(junkq));
out:
    if (fd >= 0)
        close(fd);
    unlink(junk);
    unlink(junkq);
    unlink(bpath);
    unlink(q);
    sfx_end(&f);
}

/* ==== threaded callers drive their session (leader and followers) ==== */

/* A session's reader state, read under its lock. */
struct rd_state {
    int reader;         /* a caller reads the session */
    unsigned followers; /* callers waiting for the reader */
    unsigned awake;     /* callers counted awake (wake-up batching) */
    int parked;         /* the I/O thread's watch of input is off */
    int owed;           /* a Polling waits for the awake callers */
    unsigned turns;     /* readers so far */
    uint64_t last_tx_ns;
};

static struct rd_state rd_state(shmipc_stream *st)
{
    struct session *s = st->sess;
    pthread_mutex_lock(&s->mu);
    struct rd_state r = {s->reader != NULL, s->followers, s->awake, s->io_parked,
                         s->wake_owed, s->reader_turns, s->last_tx_ns};
    pthread_mutex_unlock(&s->mu);
    return r;
}

/* Waits (bounded) until ok() holds for the session's reader state. */
static int wait_rd(shmipc_stream *st, int (*ok)(const struct rd_state *))
{
    uint64_t end = sfx_deadline_ns(POLL_MS);
    for (;;) {
        struct rd_state r = rd_state(st);
        if (ok(&r))
            return 1;
        if (tu_now_ns() >= end)
            return 0;
        sfx_sleep_ms(1);
    }
}

static int rd_reading(const struct rd_state *r)
{
    return r->reader && r->followers == 0;
}

static int rd_one_follower(const struct rd_state *r)
{
    return r->reader && r->followers == 1;
}

static int rd_io_reads(const struct rd_state *r)
{
    return !r->reader && !r->parked;
}

/* Nobody inside a call: nothing counted, nothing owed. */
static int rd_quiet(const struct rd_state *r)
{
    return !r->reader && r->followers == 0 && r->awake == 0 && !r->owed;
}

/* Threads of one session's callers: `rounds` calls each on its own
 * stream, sizes random below `max`, every answer checked. */
struct call_worker {
    shmipc_client *c;
    uint64_t seed;
    unsigned rounds;
    size_t max;
    int rc;
};

static void *call_worker_main(void *arg)
{
    struct call_worker *w = arg;
    shmipc_stream *st = NULL;
    uint8_t *buf = malloc(w->max + 1);
    w->rc = buf == NULL ? -ENOMEM : shmipc_client_get(w->c, &st);
    uint64_t s = w->seed;
    for (unsigned i = 0; i < w->rounds && w->rc == 0; i++) {
        size_t n = (size_t)(sfx_rng(&s) % w->max);
        sfx_fill(buf, n, w->seed + i);
        shmipc_msg m;
        w->rc = shmipc_call(st, buf, n, &m, RECV_MS);
        if (w->rc == 0) {
            w->rc = sfx_msg_is(&m, n, w->seed + i) ? 0 : 1;
            shmipc_msg_release(&m);
        }
    }
    if (st != NULL)
        shmipc_client_put(w->c, st);
    free(buf);
    return NULL;
}

/* Eight threads calling on one session (and variants): every answer
 * reaches its caller whoever read it, and once they are done the session
 * holds no reader, no follower, no awake caller and no owed Polling. */
static void many_callers_on(int io_thread_reads, int spin_us, int adaptive)
{
    struct fx f;
    enum { NTH = 8 };
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, spin_us ? spin_us : adaptive ? 200 : 0), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.io_thread_reads = io_thread_reads;
    cfg.spin_us = spin_us;
    cfg.adaptive_spin = adaptive;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &f.st), 0);
    struct call_worker w[NTH];
    pthread_t th[NTH];
    for (int i = 0; i < NTH; i++) {
        w[i] = (struct call_worker){f.cli, 0xca11u + (uint64_t)i * 104729u, 300,
                                    i % 4 == 3 ? 200000 : 3000, 0};
        pthread_create(&th[i], NULL, call_worker_main, &w[i]);
    }
    for (int i = 0; i < NTH; i++) {
        pthread_join(th[i], NULL);
        EXPECT_RC(w[i].rc, 0);
    }
    struct shmipc_stats s;
    shmipc_client_stats(f.cli, &s);
    CU_ASSERT_EQUAL(s.messages_received, NTH * 300);
    CU_ASSERT(s.wakeups_sent <= s.messages_sent);
    struct rd_state r = rd_state(f.st);
    CU_ASSERT(rd_quiet(&r));
    /* With io_thread_reads nobody but the I/O thread read. */
    CU_ASSERT(io_thread_reads ? r.turns == 0 : r.turns > 0);
    /* And the session goes on working from this thread. */
    REQUIRE_RC(sfx_echo_once(f.st, 5000, 99, NULL), 0);
out:
    sfx_end(&f);
}

static void test_callers_share_a_session(void)
{
    many_callers_on(0, 0, 0);
}

static void test_callers_io_thread_reads(void)
{
    many_callers_on(1, 0, 0);
}

static void test_callers_spin(void)
{
    many_callers_on(0, 200, 0);
}

static void test_callers_adaptive_spin(void)
{
    many_callers_on(0, 0, 1);
}

/* A follower's answer read by the reader (or the I/O thread), never by
 * itself: A waits on a gated request and reads the session; B's request
 * queues behind the gate at the server, B follows; one release answers
 * both. */
static void test_answer_taken_by_reader(void)
{
    struct fx f;
    struct gate g;
    struct caller a = {0}, b = {0};
    shmipc_stream *sb = NULL;
    uint8_t *req = sfx_pattern(700, 31);
    REQUIRE(req != NULL);
    REQUIRE_RC(sfx_start(&f, SRV_ECHO, SHMIPC_MODE_MEMFD, &f.st), 0);
    REQUIRE_RC(sfx_gate_init(&f, &g), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &sb), 0);
    unsigned turns0 = rd_state(f.st).turns;
    REQUIRE_RC(sfx_caller_start(&a, f.st, sfx_ctl_gate, CTL_LEN, RECV_MS), 0);
    REQUIRE_RC(sfx_gate_entered(&g), 0);
    REQUIRE(wait_rd(f.st, rd_reading));
    REQUIRE_RC(sfx_caller_start(&b, sb, req, 700, RECV_MS), 0);
    REQUIRE(wait_rd(f.st, rd_one_follower));
    REQUIRE_RC(sfx_gate_release(&g), 0);
    EXPECT_RC(sfx_caller_join(&a), 0);
    EXPECT_RC(sfx_caller_join(&b), 0);
    CU_ASSERT_EQUAL(a.m.len, CTL_LEN);
    CU_ASSERT(sfx_msg_is(&b.m, 700, 31));
    /* A was the only reader: B never read, its answer was handed to it. */
    CU_ASSERT_EQUAL(rd_state(f.st).turns, turns0 + 1);
    CU_ASSERT(wait_rd(f.st, rd_quiet));
out:
    shmipc_msg_release(&a.m);
    shmipc_msg_release(&b.m);
    sfx_caller_join(&a);
    sfx_caller_join(&b);
    if (sb != NULL)
        shmipc_stream_close(sb);
    free(req);
    sfx_end(&f);
}

/* The reader leaves with its answer while another caller still waits:
 * the I/O thread reads for it. Two gates: A's is released, B's holds the
 * server until A is gone. */
static void test_reader_leaves_while_others_wait(void)
{
    struct fx f;
    struct gate g;
    struct caller a = {0}, b = {0};
    shmipc_stream *sb = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_ECHO, SHMIPC_MODE_MEMFD, &f.st), 0);
    REQUIRE_RC(sfx_gate_init(&f, &g), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &sb), 0);
    REQUIRE_RC(sfx_caller_start(&a, f.st, sfx_ctl_gate, CTL_LEN, RECV_MS), 0);
    REQUIRE_RC(sfx_gate_entered(&g), 0);
    REQUIRE_RC(sfx_caller_start(&b, sb, sfx_ctl_gate, CTL_LEN, RECV_MS), 0);
    REQUIRE(wait_rd(f.st, rd_one_follower));
    REQUIRE_RC(sfx_gate_release(&g), 0); /* A's answer; the server enters B's gate */
    EXPECT_RC(sfx_caller_join(&a), 0);
    REQUIRE_RC(sfx_gate_entered(&g), 0);
    /* A left: nobody reads but the I/O thread, and B still waits. */
    struct rd_state r = rd_state(f.st);
    CU_ASSERT(!r.reader && !r.parked && r.followers == 1);
    REQUIRE_RC(sfx_gate_release(&g), 0);
    EXPECT_RC(sfx_caller_join(&b), 0);
    CU_ASSERT_EQUAL(b.m.len, CTL_LEN);
    CU_ASSERT(wait_rd(f.st, rd_quiet));
    /* Both streams go on working. */
    REQUIRE_RC(sfx_echo_once(f.st, 100, 1, NULL), 0);
    REQUIRE_RC(sfx_echo_once(sb, 100, 2, NULL), 0);
out:
    shmipc_msg_release(&a.m);
    shmipc_msg_release(&b.m);
    sfx_caller_join(&a);
    sfx_caller_join(&b);
    if (sb != NULL)
        shmipc_stream_close(sb);
    sfx_end(&f);
}

/* The server dies while a caller reads the session and another follows:
 * both return the session's error at once (not their timeout), and the
 * session is gone. */
static void test_dead_peer_while_caller_leads(void)
{
    struct fx f;
    struct caller a = {0}, b = {0};
    shmipc_stream *sb = NULL;
    uint8_t req[64] = {1};
    REQUIRE_RC(sfx_start(&f, SRV_SWALLOW, SHMIPC_MODE_MEMFD, &f.st), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &sb), 0);
    REQUIRE_RC(sfx_caller_start(&a, f.st, req, sizeof(req), 60000), 0);
    REQUIRE_RC(sfx_caller_start(&b, sb, req, sizeof(req), 60000), 0);
    REQUIRE(wait_rd(f.st, rd_one_follower));
    pid_t pid = f.srv.pid;
    REQUIRE(kill(pid, SIGKILL) == 0);
    f.srv.pid = 0;
    CU_ASSERT_EQUAL(tu_wait(pid, CHILD_MS), 128 + SIGKILL);
    int ra = sfx_caller_join(&a), rb = sfx_caller_join(&b);
    CU_ASSERT(ra < 0 && ra != SHMIPC_ETIMEDOUT);
    CU_ASSERT(rb < 0 && rb != SHMIPC_ETIMEDOUT);
    uint64_t end = sfx_deadline_ns(POLL_MS);
    while (shmipc_client_live_sessions(f.cli) > 0 && tu_now_ns() < end)
        sfx_sleep_ms(5);
    CU_ASSERT_EQUAL(shmipc_client_live_sessions(f.cli), 0);
    struct rd_state r = rd_state(f.st);
    CU_ASSERT(!r.reader && r.followers == 0 && r.awake == 0);
out:
    sfx_caller_join(&a);
    sfx_caller_join(&b);
    if (sb != NULL)
        shmipc_stream_close(sb);
    sfx_end(&f);
}

static int rd_parked(const struct rd_state *r)
{
    return r->parked;
}

/* Nobody waits: the I/O thread sends the keepalives, gets its watch of
 * the socket back a tick after the last reader left (lazily), and reads
 * what comes then: a late answer reaches its stream with no call. A look
 * without waiting (timeout 0) reads a session nobody watches yet. */
static void test_io_thread_when_nobody_waits(void)
{
    struct fx f;
    struct gate g;
    shmipc_msg m = {0};
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 0), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.keepalive_ms = 20;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &f.st), 0);
    REQUIRE_RC(sfx_gate_init(&f, &g), 0);

    /* A late answer, looked for without waiting while the watch is off. */
    REQUIRE_RC(sfx_echo_once(f.st, 100, 1, NULL), 0);
    CU_ASSERT(rd_state(f.st).parked); /* the reader left it off */
    REQUIRE_RC(shmipc_stream_write(f.st, sfx_ctl_gate, CTL_LEN), 0);
    REQUIRE_RC(shmipc_stream_flush(f.st), 0);
    REQUIRE_RC(sfx_gate_entered(&g), 0);
    CU_ASSERT_EQUAL(shmipc_stream_recv(f.st, &m, 1), SHMIPC_ETIMEDOUT);
    REQUIRE_RC(sfx_gate_release(&g), 0);
    int rc;
    uint64_t end = sfx_deadline_ns(RECV_MS);
    while ((rc = shmipc_stream_recv(f.st, &m, 0)) == SHMIPC_ETIMEDOUT && tu_now_ns() < end)
        sfx_sleep_ms(1);
    REQUIRE_RC(rc, 0);
    CU_ASSERT_EQUAL(m.len, CTL_LEN);
    shmipc_msg_release(&m);

    /* Keepalives go out while nobody calls, and the watch comes back. */
    uint64_t tx = rd_state(f.st).last_tx_ns;
    end = sfx_deadline_ns(POLL_MS);
    while (rd_state(f.st).last_tx_ns == tx && tu_now_ns() < end)
        sfx_sleep_ms(5);
    CU_ASSERT(rd_state(f.st).last_tx_ns != tx);
    CU_ASSERT(wait_rd(f.st, rd_io_reads));

    /* A late answer read by the I/O thread: it is there before any look. */
    REQUIRE_RC(shmipc_stream_write(f.st, sfx_ctl_gate, CTL_LEN), 0);
    REQUIRE_RC(shmipc_stream_flush(f.st), 0);
    REQUIRE_RC(sfx_gate_entered(&g), 0);
    REQUIRE_RC(sfx_gate_release(&g), 0);
    end = sfx_deadline_ns(RECV_MS);
    int have = 0;
    while (!have && tu_now_ns() < end) {
        pthread_mutex_lock(&f.st->sess->mu);
        have = f.st->rx_head != NULL;
        pthread_mutex_unlock(&f.st->sess->mu);
        if (!have)
            sfx_sleep_ms(1);
    }
    CU_ASSERT(have);
    CU_ASSERT(!rd_state(f.st).parked);
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, 0), 0);
    CU_ASSERT_EQUAL(m.len, CTL_LEN);
    shmipc_msg_release(&m);
    /* The next call parks it again. */
    REQUIRE_RC(sfx_echo_once(f.st, 100, 2, NULL), 0);
    CU_ASSERT(wait_rd(f.st, rd_parked));
out:
    sfx_end(&f);
}

static int rd_server_idle(shmipc_stream *st)
{
    uint64_t end = sfx_deadline_ns(POLL_MS);
    while (queue_working(&st->sess->qp.send) && tu_now_ns() < end)
        sfx_sleep_ms(1);
    return !queue_working(&st->sess->qp.send);
}

/* Wake-up batching: flushes made while other callers of the session are
 * awake owe their Polling to the last of them, and share one. */
static void test_awake_callers_share_a_polling(void)
{
    struct fx f;
    shmipc_stream *sb = NULL;
    shmipc_msg m;
    struct session *s = NULL;
    REQUIRE_RC(sfx_start(&f, SRV_ECHO, SHMIPC_MODE_MEMFD, &f.st), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &sb), 0);
    REQUIRE_RC(sfx_echo_once(f.st, 10, 1, NULL), 0);
    s = f.st->sess;
    REQUIRE(sb->sess == s);
    REQUIRE(rd_server_idle(f.st));
    struct shmipc_stats a, b;
    shmipc_client_stats(f.cli, &a);
    /* Two callers awake in the session (as the followers a reader just
     * woke would be) ... */
    pthread_mutex_lock(&s->mu);
    session_caller_enter_locked(s);
    session_caller_enter_locked(s);
    pthread_mutex_unlock(&s->mu);
    REQUIRE_RC(sfx_send_msg(f.st, "one", 3), 0);
    REQUIRE_RC(sfx_send_msg(sb, "two", 3), 0);
    shmipc_client_stats(f.cli, &b);
    CU_ASSERT_EQUAL(b.wakeups_sent, a.wakeups_sent); /* owed, not sent */
    CU_ASSERT_EQUAL(queue_working(&s->qp.send), 1);
    CU_ASSERT(rd_state(f.st).owed);
    /* ... the first to go leaves it to the other, the last sends it. */
    pthread_mutex_lock(&s->mu);
    session_caller_leave_locked(s);
    pthread_mutex_unlock(&s->mu);
    shmipc_client_stats(f.cli, &b);
    CU_ASSERT_EQUAL(b.wakeups_sent, a.wakeups_sent);
    pthread_mutex_lock(&s->mu);
    session_caller_leave_locked(s);
    pthread_mutex_unlock(&s->mu);
    shmipc_client_stats(f.cli, &b);
    CU_ASSERT_EQUAL(b.wakeups_sent, a.wakeups_sent + 1);
    CU_ASSERT(!rd_state(f.st).owed);
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    CU_ASSERT(m.len == 3 && memcmp(m.iov[0].base, "one", 3) == 0);
    shmipc_msg_release(&m);
    REQUIRE_RC(shmipc_stream_recv(sb, &m, RECV_MS), 0);
    CU_ASSERT(m.len == 3 && memcmp(m.iov[0].base, "two", 3) == 0);
    shmipc_msg_release(&m);
    /* A flush with nobody else awake sends its Polling at once. */
    REQUIRE(rd_server_idle(f.st));
    shmipc_client_stats(f.cli, &a);
    REQUIRE_RC(sfx_send_msg(f.st, "three", 5), 0);
    shmipc_client_stats(f.cli, &b);
    CU_ASSERT_EQUAL(b.wakeups_sent, a.wakeups_sent + 1);
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    CU_ASSERT_EQUAL(m.len, 5);
    shmipc_msg_release(&m);
    CU_ASSERT(wait_rd(f.st, rd_quiet));
out:
    if (sb != NULL)
        shmipc_stream_close(sb);
    sfx_end(&f);
}

/* The server's working flag on our requests: set while it harvests them
 * (or spins holding it). */
static int server_flag_set(shmipc_stream *st)
{
    struct session *s = st->sess;
    return __atomic_load_n((uint32_t *)(s->qp.send.hdr + SHMIPC_QUEUE_OFF_WORKING),
                           __ATOMIC_ACQUIRE) != 0;
}

/* A lone caller whose flush finds the server harvesting (its working
 * flag set) spins for its answer, even with no answer time known yet;
 * one that finds it slow all the same stops doing so for a while. The
 * server spins (spin_us), so a gated request that arrives while it spins
 * is handled with the flag held: a call on a second stream then finds the
 * server awake, spins, gets nothing (the server is stuck in the gate) and
 * backs off. Were the server not spinning when the gated request came, the
 * flag would be clear: the gate is let go and the attempt made again. */
static void test_caller_spins_on_awake_server(void)
{
    struct fx f = {0};
    struct gate g;
    shmipc_stream *sb = NULL;
    uint8_t req[64] = {7};
    int held = 0, tries = 0;
    if (!session_spin_allowed()) {
        printf("\n      (one CPU: no adaptive spin to test) ");
        return;
    }
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, 1500), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    cfg.adaptive_spin = 1;
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &f.st), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &sb), 0);
    REQUIRE_RC(sfx_gate_init(&f, &g), 0);
    struct session *s = f.st->sess;
    while (!held && tries++ < 50) {
        /* An echo wakes the server into its spin; the gate follows at once. */
        REQUIRE_RC(sfx_echo_once(f.st, 100, (uint64_t)tries, NULL), 0);
        REQUIRE_RC(shmipc_stream_write(f.st, sfx_ctl_gate, CTL_LEN), 0);
        REQUIRE_RC(shmipc_stream_flush(f.st), 0);
        REQUIRE_RC(sfx_gate_entered(&g), 0);
        held = server_flag_set(f.st);
        if (!held) {
            shmipc_msg m;
            REQUIRE_RC(sfx_gate_release(&g), 0);
            REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
            shmipc_msg_release(&m);
        }
    }
    REQUIRE(held);
    /* From a clean slate: the echoes may have met a slow answer already,
     * or measured a fast one (the spin would then follow the answer time,
     * not the awake server). The spin's window is made longer than the
     * call's timeout, so that however slow this machine is the spin runs
     * until the timeout; were the timeout passed before the spin could
     * begin (a machine stalled for 200 ms), the call is made again. */
    shmipc_msg m;
    int calls = 0, awake = 0;
    unsigned backoff = 0;
    while (backoff == 0 && calls < 5) {
        pthread_mutex_lock(&s->mu);
        s->awake_backoff = 0;
        s->rtt_ns = 0;
        s->spin_probe = 0;
        s->spin_wake_ns = 60ull * 1000000000u;
        pthread_mutex_unlock(&s->mu);
        calls++;
        EXPECT_RC(shmipc_call(sb, req, sizeof(req), &m, 200), SHMIPC_ETIMEDOUT);
        pthread_mutex_lock(&s->mu);
        awake = s->peer_awake;
        backoff = s->awake_backoff;
        s->spin_wake_ns = 0;
        pthread_mutex_unlock(&s->mu);
    }
    CU_ASSERT(awake);
    CU_ASSERT(backoff > 0);
    /* Every answer comes once the gate opens. */
    REQUIRE_RC(sfx_gate_release(&g), 0);
    held = 0;
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    CU_ASSERT_EQUAL(m.len, CTL_LEN);
    shmipc_msg_release(&m);
    for (int i = 0; i < calls; i++) {
        REQUIRE_RC(shmipc_stream_recv(sb, &m, RECV_MS), 0);
        CU_ASSERT_EQUAL(m.len, sizeof(req));
        shmipc_msg_release(&m);
    }
out:
    if (held)
        sfx_gate_release(&g);
    if (sb != NULL)
        shmipc_stream_close(sb);
    sfx_end(&f);
}

/* A flag we set ourselves is not a server awake: with the server stopped
 * (SIGSTOP), the first flush sets its working flag and sends a Polling;
 * a second one finds the flag set, but the server has taken nothing since,
 * so the caller must not count it awake (nor spin for it). */
static void test_own_flag_is_not_an_awake_server(void)
{
    struct fx f = {0};
    shmipc_stream *sb = NULL;
    uint8_t req[64] = {9};
    int stopped = 0;
    REQUIRE_RC(sfx_serve(&f, SRV_ECHO, -1), 0);
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f.addr, SHMIPC_MODE_MEMFD);
    REQUIRE_RC(shmipc_client_open(&cfg, &f.cli), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &f.st), 0);
    REQUIRE_RC(shmipc_client_get(f.cli, &sb), 0);
    REQUIRE_RC(sfx_echo_once(f.st, 100, 1, NULL), 0); /* the session is up */
    REQUIRE(peer_idle(f.st) == 0);
    REQUIRE(kill(f.srv.pid, SIGSTOP) == 0);
    stopped = 1;
    struct session *s = f.st->sess;
    REQUIRE_RC(shmipc_stream_write(f.st, req, sizeof(req)), 0);
    REQUIRE_RC(shmipc_stream_flush(f.st), 0);
    pthread_mutex_lock(&s->mu);
    int first = s->peer_awake;
    pthread_mutex_unlock(&s->mu);
    REQUIRE_RC(shmipc_stream_write(sb, req, sizeof(req)), 0);
    REQUIRE_RC(shmipc_stream_flush(sb), 0);
    pthread_mutex_lock(&s->mu);
    int second = s->peer_awake;
    pthread_mutex_unlock(&s->mu);
    CU_ASSERT(queue_working(&s->qp.send) != 0);
    CU_ASSERT_EQUAL(first, 0);
    CU_ASSERT_EQUAL(second, 0);
    REQUIRE(kill(f.srv.pid, SIGCONT) == 0);
    stopped = 0;
    shmipc_msg m;
    REQUIRE_RC(shmipc_stream_recv(f.st, &m, RECV_MS), 0);
    shmipc_msg_release(&m);
    REQUIRE_RC(shmipc_stream_recv(sb, &m, RECV_MS), 0);
    shmipc_msg_release(&m);
out:
    if (stopped)
        kill(f.srv.pid, SIGCONT);
    if (sb != NULL)
        shmipc_stream_close(sb);
    sfx_end(&f);
}

/* Adaptive spin is never on where only one CPU may run us: a child bound
 * to one CPU says so, and a client it opens keeps the spin off. */
static void test_no_spin_on_one_cpu(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        if (sched_setaffinity(0, sizeof(set), &set) < 0)
            _exit(2);
        _exit(session_spin_allowed() ? 1 : 0);
    }
    REQUIRE(pid > 0);
    CU_ASSERT_EQUAL(tu_wait(pid, CHILD_MS), 0);
    if (sysconf(_SC_NPROCESSORS_ONLN) > 1) {
        cpu_set_t set;
        CU_ASSERT(sched_getaffinity(0, sizeof(set), &set) != 0 || CPU_COUNT(&set) < 2 ||
                  session_spin_allowed());
    }
out:;
}

static const struct test_case cases[] = {
    {"spin_mode_both_sides", test_spin_mode},
    {"caller_spins_on_awake_server", test_caller_spins_on_awake_server},
    {"own_flag_is_not_an_awake_server", test_own_flag_is_not_an_awake_server},
    {"event_loop_client", test_event_loop_client},
    {"event_loop_client_spin", test_event_loop_client_spin},
    {"event_loop_client_fallback", test_event_loop_client_fallback},
    {"event_loop_deferred_wakeups", test_event_loop_deferred_wakeups},
    {"no_polling_while_handling", test_no_polling_while_handling},
    {"echo_sizes_memfd", test_echo_sizes_memfd},
    {"echo_sizes_file", test_echo_sizes_file},
    {"echo_sizes_file_tcp", test_echo_sizes_file_tcp},
    {"random_echo_memfd", test_random_echo_memfd},
    {"random_echo_file", test_random_echo_file},
    {"random_server_checksum", test_random_server_checksum},
    {"stream_read_across_messages", test_stream_read_across_messages},
    {"reserve_zero_copy", test_reserve_zero_copy},
    {"forward_zero_copy", test_forward_zero_copy},
    {"forward_queue_full", test_forward_queue_full},
    {"1000_streams_4_sessions", test_1000_streams_4_sessions},
    {"pooled_stream_reuse", test_pooled_stream_reuse},
    {"fallback_memfd", test_fallback_memfd},
    {"fallback_file", test_fallback_file},
    {"queue_full", test_queue_full},
    {"client_shutdown", test_client_shutdown},
    {"server_shutdown", test_server_shutdown},
    {"server_handler_close", test_server_handler_close},
    {"read_deadline", test_read_deadline},
    {"server_killed_memfd", test_server_killed_memfd},
    {"server_killed_file", test_server_killed_file},
    {"server_stopped_file", test_server_stopped_file},
    {"client_killed_memfd", test_client_killed_memfd},
    {"client_killed_file", test_client_killed_file},
    {"two_clients_file_prefixes", test_two_clients_file_prefixes},
    {"client_close_removes_files", test_client_close_removes_files},
    {"server_removes_peer_files", test_server_removes_peer_files},
    {"server_keeps_invalid_peer_files", test_server_keeps_invalid_peer_files},
    {"callers_share_a_session", test_callers_share_a_session},
    {"callers_io_thread_reads", test_callers_io_thread_reads},
    {"callers_spin", test_callers_spin},
    {"callers_adaptive_spin", test_callers_adaptive_spin},
    {"answer_taken_by_reader", test_answer_taken_by_reader},
    {"reader_leaves_while_others_wait", test_reader_leaves_while_others_wait},
    {"dead_peer_while_caller_leads", test_dead_peer_while_caller_leads},
    {"io_thread_when_nobody_waits", test_io_thread_when_nobody_waits},
    {"awake_callers_share_a_polling", test_awake_callers_share_a_polling},
    {"no_spin_on_one_cpu", test_no_spin_on_one_cpu},
    {NULL, NULL},
};

const struct test_suite suite_session = {"session", cases};
