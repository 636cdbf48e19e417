/*
 * Interop with the peers' everyday usage: the Go and Rust libraries reuse
 * the slice they have just read as the head of their next write, its
 * header zeroed (IN_USE clear). The raw peer of tests/common/reuse_peer.h
 * plays that pattern as a client against the library's echo_server and
 * against shmipcd (both handshake modes, single slices and 1 MiB chains),
 * and as the server of our client. Every answer is checked byte by byte,
 * and once the sessions close every slice of the pool must be on a free
 * list exactly once.
 *
 * Servers are real processes (echo_server, shmipcd) or a forked child,
 * each with a deadline; the directory, sockets and /dev/shm files of a
 * test are removed at its `out:` label whatever happened.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/daemon_util.h"
#include "../common/reuse_peer.h"
#include "shmipc/shmipc.h"
#include "testutil.h"

#define START_MS 15000
#define STOP_MS 15000
#define CHILD_MS 60000
#define RT_MS 10000 /* one round trip, or the pool to be all free again */

static const struct du_spawn_opts spawn_opts = {.die_with_parent = 1, .alarm_s = 120};

/* /dev/shm names of this run: the test program's pid, taken before any
 * fork, and a counter. */
static const char *shm_name(void)
{
    static char b[64];
    if (b[0] == '\0')
        snprintf(b, sizeof(b), "shmipc-interop-%d-", (int)getpid());
    return b;
}

static const char *shm_prefix(unsigned n)
{
    static char b[128];
    snprintf(b, sizeof(b), "/dev/shm/%s%u", shm_name(), n);
    return b;
}

/* One run of the reuse pattern as a client. */
struct plan {
    int file_mode;
    int version; /* file mode */
    uint32_t size;
    unsigned count;
};

static const struct plan plans[] = {
    {0, 0, 64, 3000},   {0, 0, 4096, 3000},    {0, 0, 1u << 20, 100}, {1, 2, 64, 3000},
    {1, 2, 4096, 3000}, {1, 2, 1u << 20, 100}, {1, 3, 64, 1000},      {1, 3, 1u << 20, 50},
};
#define NPLANS (sizeof(plans) / sizeof(plans[0]))
#define STREAMS 3u

/* Runs every plan against addr; the number of round trips done. */
static uint64_t run_plans(const char *addr)
{
    uint64_t done = 0;
    for (unsigned i = 0; i < NPLANS; i++) {
        const struct plan *p = &plans[i];
        struct rp_client_opts o = {
            .addr = addr,
            .file_mode = p->file_mode,
            .version = p->version,
            .shm_prefix = shm_prefix(i),
            .size = p->size,
            .count = p->count,
            .streams = STREAMS,
            .timeout_ms = RT_MS,
        };
        struct rp_report r;
        int rc = rp_client_run(&o, &r);
        if (rc != 0)
            fprintf(stderr, "\n  reuse client %s v%d %u B: %s\n", p->file_mode ? "file" : "memfd",
                    p->version, p->size, r.why);
        CHECK_EQ(rc, 0);
        CHECK_EQ(r.roundtrips, p->count);
        /* Every message but each stream's first went out in a reused slice. */
        CHECK_EQ(r.reused, p->count - STREAMS);
        CHECK_EQ(r.free_slices, r.total_slices);
        CU_ASSERT(r.total_slices > 0);
        done += r.roundtrips;
    }
    return done;
}

/* ---- against the library's echo_server ---- */

static void test_reuse_client_echo_server(void)
{
    char dir[] = "/tmp/shmipc-interop-XXXXXX", addr[128], sock[96], log[96], text[64];
    char *out = NULL;
    pid_t pid = -1;
    int lfd = -1;
    REQUIRE(mkdtemp(dir) != NULL);
    snprintf(sock, sizeof(sock), "%s/echo.sock", dir);
    snprintf(addr, sizeof(addr), "unix:%s", sock);
    snprintf(log, sizeof(log), "%s/echo.log", dir);
    lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(lfd >= 0);
    const char *argv[] = {du_bin_path("echo_server"), addr, NULL};
    pid = du_spawn(argv, lfd, &spawn_opts);
    REQUIRE(pid > 0);
    uint64_t dl = du_deadline(START_MS);
    while (!du_exists(sock) && !du_past(dl))
        du_sleep_ms(5);
    REQUIRE(du_exists(sock));

    uint64_t n = run_plans(addr);

    kill(pid, SIGTERM);
    CHECK_EQ(du_reap(pid, STOP_MS), 0);
    pid = -1;
    out = du_read_file(log, NULL);
    REQUIRE(out != NULL);
    /* echo_server's counters at exit: every message answered, no session
     * closed for bad input. */
    snprintf(text, sizeof(text), "messages in %llu out %llu,", (unsigned long long)n,
             (unsigned long long)n);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, text));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "protocol errors 0,"));
    CU_ASSERT_PTR_NULL(du_sanitizer_report(out));
    if (strstr(out, "protocol errors 0,") == NULL || strstr(out, text) == NULL)
        fprintf(stderr, "\n  echo_server said:\n%s\n", out);
    CHECK_EQ(tu_count_shm(shm_name()), 0);
out:
    if (pid > 0) {
        kill(pid, SIGKILL);
        du_reap(pid, STOP_MS);
    }
    if (lfd >= 0)
        close(lfd);
    free(out);
    du_remove_prefix("/dev/shm", shm_name());
    du_remove_dir(dir);
}

/* ---- against shmipcd ---- */

static void test_reuse_client_shmipcd(void)
{
    struct du_daemon d;
    char out[8192], want[96];
    REQUIRE(du_init(&d, "/tmp/shmipc-interop-XXXXXX") == 0);
    d.spawn = spawn_opts;
    struct du_conf c = {.n = 0};
    du_conf_head(&c, &d, NULL);
    du_conf_service(&c, &d, 1, "echo", du_plugin_path("echo"), NULL);
    REQUIRE(du_conf_write(&c, &d, "interop.conf") == 0);
    REQUIRE(du_start(&d, START_MS) == 0);

    uint64_t n = run_plans(du_addr(&d, "echo"));

    const char *argv[] = {du_bin_path("shmipcctl"), "-s", d.admin, "stats", NULL};
    CHECK_EQ(du_run_capture(argv, out, sizeof(out), START_MS, &spawn_opts), 0);
    snprintf(want, sizeof(want), "service echo: requests %llu,", (unsigned long long)n);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "protocol errors 0,"));
    if (strstr(out, want) == NULL || strstr(out, "protocol errors 0,") == NULL)
        fprintf(stderr, "\n  shmipcctl stats:\n%s\n", out);
    CHECK_EQ(du_stop(&d, SIGTERM, STOP_MS), 0);
    CU_ASSERT_PTR_NULL(du_log_check(&d, 0));
    CHECK_EQ(tu_count_shm(shm_name()), 0);
out:
    du_stop(&d, SIGKILL, STOP_MS);
    du_remove_prefix("/dev/shm", shm_name());
    if (d.dir[0] != '\0')
        du_remove_dir(d.dir);
}

/* ---- our client against a server that reuses ---- */

struct srv_args {
    char addr[128];
    int ready; /* write end */
};

static int srv_child(void *arg)
{
    struct srv_args *a = arg;
    struct rp_server_opts o = {
        .addr = a->addr, .sessions = 1, .timeout_ms = RT_MS, .ready_fd = a->ready};
    struct rp_report r;
    int rc = rp_server_run(&o, &r);
    if (rc != 0)
        fprintf(stderr, "\n  reuse server: %s\n", r.why);
    else if (r.reused != r.roundtrips || r.roundtrips == 0)
        fprintf(stderr, "\n  reuse server: %llu answers, %llu in reused slices\n",
                (unsigned long long)r.roundtrips, (unsigned long long)r.reused);
    return rc != 0 ? 1 : r.reused != r.roundtrips || r.roundtrips == 0 ? 2 : 0;
}

/* n round trips on each of `streams` streams with requests of `size`
 * bytes; every answer checked. 0 or -1. */
static int client_calls(shmipc_client *cl, uint32_t size, unsigned n, unsigned streams)
{
    shmipc_stream *st[STREAMS] = {NULL};
    uint8_t *req = malloc(size ? size : 1), *got = malloc(size ? size : 1);
    int rc = req != NULL && got != NULL ? 0 : -1;
    for (unsigned i = 0; rc == 0 && i < streams; i++)
        rc = shmipc_client_get(cl, &st[i]);
    for (unsigned k = 0; rc == 0 && k < n * streams; k++) {
        shmipc_stream *s = st[k % streams];
        uint32_t id = shmipc_stream_id(s);
        for (uint32_t i = 0; i < size; i++)
            req[i] = rp_byte(id, k, i);
        shmipc_msg m;
        rc = shmipc_call(s, req, size, &m, RT_MS);
        if (rc != 0) {
            fprintf(stderr, "\n  call %u (%u B): %s\n", k, size, shmipc_strerror(rc));
            break;
        }
        size_t len = m.len, copied = shmipc_msg_copy(&m, 0, got, size);
        shmipc_msg_release(&m);
        if (len != size || copied != size || memcmp(req, got, size) != 0) {
            fprintf(stderr, "\n  call %u: answer of %zu bytes differs from the %u sent\n", k, len,
                    size);
            rc = -1;
        }
    }
    for (unsigned i = 0; i < streams; i++)
        if (st[i] != NULL)
            shmipc_client_put(cl, st[i]);
    free(req);
    free(got);
    return rc;
}

static void our_client_against_reuse(enum shmipc_mem_mode mode, unsigned tag)
{
    char dir[] = "/tmp/shmipc-interop-XXXXXX";
    struct srv_args a;
    int pipefd[2] = {-1, -1};
    pid_t pid = -1;
    shmipc_client *cl = NULL;
    REQUIRE(mkdtemp(dir) != NULL);
    snprintf(a.addr, sizeof(a.addr), "unix:%s/reuse.sock", dir);
    REQUIRE(pipe(pipefd) == 0);
    a.ready = pipefd[1];
    pid = tu_fork(srv_child, &a);
    REQUIRE(pid > 0);
    close(pipefd[1]);
    pipefd[1] = -1;
    struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
    char byte;
    REQUIRE(poll(&pfd, 1, START_MS) == 1 && read(pipefd[0], &byte, 1) == 1);

    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = a.addr;
    cfg.mode = mode;
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "%s", shm_prefix(100 + tag));
    cfg.path_prefix = prefix;
    REQUIRE(shmipc_client_open(&cfg, &cl) == 0);
    CHECK_EQ(client_calls(cl, 64, 1000, STREAMS), 0);
    CHECK_EQ(client_calls(cl, 4096, 1000, STREAMS), 0);
    CHECK_EQ(client_calls(cl, 1u << 20, 30, STREAMS), 0);
    struct shmipc_stats s;
    shmipc_client_stats(cl, &s);
    CHECK_EQ(s.protocol_errors, 0);
    CHECK_EQ(s.session_errors, 0);
    CHECK_EQ(s.reconnects, 0);
    CHECK_EQ(s.messages_received, (2000 + 30) * STREAMS);
    shmipc_client_close(cl);
    cl = NULL;
    /* The child exits 0 once every slice of our pool was free again. */
    CHECK_EQ(tu_wait(pid, CHILD_MS), 0);
    pid = -1;
    CHECK_EQ(tu_count_shm(shm_name()), 0);
out:
    if (cl != NULL)
        shmipc_client_close(cl);
    if (pid > 0) {
        kill(pid, SIGKILL);
        tu_wait(pid, CHILD_MS);
    }
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    du_remove_prefix("/dev/shm", shm_name());
    du_remove_dir(dir);
}

static void test_our_client_reuse_server_memfd(void)
{
    FD_LEAK_BEGIN();
    our_client_against_reuse(SHMIPC_MODE_MEMFD, 0);
    FD_LEAK_END();
}

static void test_our_client_reuse_server_file(void)
{
    FD_LEAK_BEGIN();
    our_client_against_reuse(SHMIPC_MODE_FILE, 1);
    FD_LEAK_END();
}

static const struct test_case cases[] = {
    {"reuse_client_echo_server", test_reuse_client_echo_server},
    {"reuse_client_shmipcd", test_reuse_client_shmipcd},
    {"our_client_reuse_server_memfd", test_our_client_reuse_server_memfd},
    {"our_client_reuse_server_file", test_our_client_reuse_server_file},
    {NULL, NULL},
};

const struct test_suite suite_interop = {"interop", cases};
