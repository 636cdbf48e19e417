/*
 * Hot restart of the library's server, through echo_server (a program
 * built on the public API alone): SIGUSR2 starts its successor on the
 * same listening socket, then shmipc_server_hot_restart() tells every
 * session HotRestart; our client, threaded and event-loop, in both
 * handshake modes, moves to the successor and acks, and the old server
 * exits once every session moved. Not one call fails. A client that keeps
 * a stream and so never acks is closed at the drain deadline; its next
 * stream works.
 *
 * Every server generation logs to one file in the test's directory; the
 * first is our child, its successors are not (they are found by the pids
 * in the log, and killed at the end if still there). Every wait is
 * bounded; what proves the acks is that the old server exits long before
 * its drain deadline.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/daemon_util.h"
#include "../common/load_fixture.h"
#include "testutil.h"

#define WAIT_MS 10000

struct hr {
    char dir[64], addr[128], log[128], shm[64];
    pid_t first;    /* our child */
    pid_t pids[16]; /* every generation seen */
    unsigned npids;
};

static int log_count(const struct hr *h, const char *needle)
{
    char *text = du_read_file(h->log, NULL);
    int n = text != NULL ? du_count_str(text, needle) : 0;
    free(text);
    return n;
}

static int wait_log(const struct hr *h, const char *needle, int n, int ms)
{
    uint64_t dl = du_deadline(ms);
    while (log_count(h, needle) < n && !du_past(dl))
        du_sleep_ms(10);
    return log_count(h, needle);
}

/* The successor `pid` handed over to, from the log; -1 when none yet. */
static pid_t successor_of(const struct hr *h, pid_t pid)
{
    char needle[64];
    snprintf(needle, sizeof(needle), "echo_server %d: hot restart to ", (int)pid);
    char *text = du_read_file(h->log, NULL);
    const char *p = text != NULL ? strstr(text, needle) : NULL;
    pid_t next = p != NULL ? (pid_t)strtol(p + strlen(needle), NULL, 10) : -1;
    free(text);
    return next;
}

static int hr_begin(struct hr *h, int drain_ms)
{
    memset(h, 0, sizeof(*h));
    h->first = -1;
    snprintf(h->dir, sizeof(h->dir), "/tmp/shmipc-hr-XXXXXX");
    if (mkdtemp(h->dir) == NULL) {
        h->dir[0] = '\0';
        return -errno;
    }
    snprintf(h->addr, sizeof(h->addr), "unix:%s/echo.sock", h->dir);
    snprintf(h->log, sizeof(h->log), "%s/echo.log", h->dir);
    snprintf(h->shm, sizeof(h->shm), "shmipc-hrtest-%d-", (int)getpid());
    int fd = open(h->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    char drain[16];
    snprintf(drain, sizeof(drain), "%d", drain_ms);
    const char *argv[] = {du_bin_path("echo_server"), "--drain-ms", drain, h->addr, NULL};
    struct du_spawn_opts opts = {.no_fork = 1};
    h->first = du_spawn(argv, fd, &opts);
    close(fd);
    if (h->first < 0)
        return -ECHILD;
    h->pids[h->npids++] = h->first;
    return wait_log(h, "serving", 1, WAIT_MS) == 1 ? 0 : -ETIMEDOUT;
}

/* Every generation still there is killed; the files go. */
static void hr_end(struct hr *h)
{
    for (unsigned i = 0; i < h->npids; i++)
        if (h->pids[i] > 0)
            kill(h->pids[i], SIGKILL);
    if (h->first > 0)
        du_reap(h->first, WAIT_MS);
    char *text = du_read_file(h->log, NULL);
    if (text != NULL && du_sanitizer_report(text) != NULL) {
        fprintf(stderr, "\n  echo_server log:\n%s\n", text);
        CU_FAIL("a sanitizer report in echo_server's log");
    }
    free(text);
    if (h->dir[0] != '\0')
        du_remove_dir(h->dir);
    CHECK_EQ(du_remove_prefix("/dev/shm", h->shm), 0);
}

/* Upgrades generation `cur`: its successor, once `cur` has exited (its
 * exit line is the `exits`-th); -1 when that did not happen in time. */
static pid_t upgrade(struct hr *h, pid_t cur, int exits, int ms)
{
    if (kill(cur, SIGUSR2) < 0)
        return -1;
    uint64_t dl = du_deadline(WAIT_MS);
    pid_t next;
    while ((next = successor_of(h, cur)) < 0 && !du_past(dl))
        du_sleep_ms(10);
    if (next < 0)
        return -1;
    if (h->npids < sizeof(h->pids) / sizeof(h->pids[0]))
        h->pids[h->npids++] = next;
    if (wait_log(h, "echo_server: sessions ", exits, ms) < exits)
        return -1;
    if (cur == h->first)
        du_reap(h->first, WAIT_MS);
    return next;
}

static void load_init(struct load *l, const struct hr *h, unsigned i, char *prefix, size_t cap)
{
    snprintf(prefix, cap, "/dev/shm/%sl%u", h->shm, i);
    l->address = h->addr;
    l->path_prefix = prefix;
    l->index = i;
    l->timeout_ms = WAIT_MS;
}

/* Three upgrades under load: every old server exits once its sessions
 * moved (its drain deadline is a minute away), and nothing fails. */
static void test_upgrade_under_load(void)
{
    struct hr h;
    char prefix[4][96];
    struct load ls[4];
    load_mix(ls);
    unsigned n = 4, started = 0;
    unsigned long since[4] = {0};
    pid_t cur = -1;
    REQUIRE(hr_begin(&h, 60000) == 0);
    for (; started < n; started++) {
        load_init(&ls[started], &h, started, prefix[started], sizeof(prefix[started]));
        REQUIRE(load_start(&ls[started]) == 0);
    }
    CHECK_EQ(load_progress(ls, n, since, 50, WAIT_MS), 0);
    cur = h.first;
    for (int k = 1; k <= 3; k++) {
        pid_t next = upgrade(&h, cur, k, WAIT_MS);
        CU_ASSERT(next > 0);
        if (next < 0)
            break;
        CHECK_EQ(wait_log(&h, "every session handed over", k, WAIT_MS), k);
        cur = next;
        load_counts(ls, n, since);
        CHECK_EQ(load_progress(ls, n, since, 50, WAIT_MS), 0);
    }
    CHECK_EQ(log_count(&h, "did not ack"), 0);
out:
    CHECK_EQ(load_stop_all(ls, started), 0);
    if (started == n && cur > 0) {
        kill(cur, SIGTERM);
        CHECK_EQ(wait_log(&h, "echo_server: sessions ", 4, WAIT_MS), 4);
    }
    hr_end(&h);
}

/* A client that keeps a stream never acks: at the drain deadline the old
 * server closes that session; a call on the stream then fails, and the
 * client's next stream is served by the successor. The other clients
 * moved and never noticed. */
static void test_client_never_acks(void)
{
    struct hr h;
    char prefix[96], hprefix[96];
    struct load l = {.mode = SHMIPC_MODE_MEMFD, .threads = 2};
    shmipc_client *c = NULL;
    shmipc_stream *held = NULL;
    unsigned long since = 0;
    int started = 0;
    REQUIRE(hr_begin(&h, 500) == 0);
    load_init(&l, &h, 0, prefix, sizeof(prefix));
    REQUIRE(load_start(&l) == 0);
    started = 1;
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    snprintf(hprefix, sizeof(hprefix), "/dev/shm/%sh", h.shm);
    cfg.address = h.addr;
    cfg.path_prefix = hprefix;
    cfg.pool_bytes = 4u << 20;
    REQUIRE(shmipc_client_open(&cfg, &c) == 0);
    REQUIRE(shmipc_client_get(c, &held) == 0);
    shmipc_msg m;
    REQUIRE(shmipc_call(held, "mine", 4, &m, WAIT_MS) == 0);
    shmipc_msg_release(&m);
    CHECK_EQ(load_progress(&l, 1, &since, 50, WAIT_MS), 0);
    pid_t next = upgrade(&h, h.first, 1, WAIT_MS);
    REQUIRE(next > 0);
    CHECK_EQ(log_count(&h, "1 sessions did not ack within 500 ms: closed"), 1);
    /* The held stream's session is gone. */
    CU_ASSERT(shmipc_call(held, "late", 4, &m, WAIT_MS) < 0);
    shmipc_stream_close(held);
    held = NULL;
    shmipc_stream *st = NULL;
    REQUIRE(shmipc_client_get(c, &st) == 0);
    CHECK_EQ(shmipc_call(st, "again", 5, &m, WAIT_MS), 0);
    shmipc_msg_release(&m);
    shmipc_client_put(c, st);
    load_counts(&l, 1, &since);
    CHECK_EQ(load_progress(&l, 1, &since, 50, WAIT_MS), 0);
    CHECK_EQ(load_stop_all(&l, 1), 0);
    started = 0;
    shmipc_client_close(c);
    c = NULL;
    kill(next, SIGTERM);
    CHECK_EQ(wait_log(&h, "echo_server: sessions ", 2, WAIT_MS), 2);
out:
    if (held != NULL)
        shmipc_stream_close(held);
    if (c != NULL)
        shmipc_client_close(c);
    if (started)
        CHECK_EQ(load_stop_all(&l, 1), 0);
    hr_end(&h);
}

/* The API's own answers. */
static void test_api(void)
{
    struct hr h;
    REQUIRE(hr_begin(&h, 1000) == 0);
    /* (echo_server in-process is not ours to call: the library alone) */
    struct shmipc_server_config cfg;
    shmipc_server_config_init(&cfg);
    CHECK_EQ(cfg.listen_fd, -1);
    char addr[160];
    snprintf(addr, sizeof(addr), "unix:%s/api.sock", h.dir);
    cfg.address = addr;
    struct shmipc_server_handlers hd = {0};
    shmipc_server *s = NULL;
    REQUIRE(shmipc_server_open(&cfg, &hd, NULL, &s) == 0);
    int lfd = shmipc_server_listen_fd(s);
    CU_ASSERT(lfd >= 0);
    CHECK_EQ(shmipc_server_hot_restart(s, 0, 100), -EINVAL);
    CHECK_EQ(shmipc_server_hot_restart(s, 7, 100), 0);
    CHECK_EQ(shmipc_server_hot_restart(s, 8, 100), -EALREADY);
    /* No session: run returns at once, and leaves the socket file. */
    CHECK_EQ(shmipc_server_run(s), 0);
    CHECK_EQ(shmipc_server_listen_fd(s), -EBADF);
    char path[160];
    snprintf(path, sizeof(path), "%s/api.sock", h.dir);
    CU_ASSERT(du_exists(path));
    shmipc_server_close(s);
    CU_ASSERT(du_exists(path));
    /* An fd that is not a listening socket is refused. */
    cfg.listen_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    s = NULL;
    CU_ASSERT(shmipc_server_open(&cfg, &hd, NULL, &s) < 0);
    close(cfg.listen_fd);
out:
    hr_end(&h);
}

/* A client calling without a pause keeps the server's adaptive spin going
 * (and its own): the server must still look at its listener, so a second
 * client is served, and at its event fd, so a hot restart still starts. */
static void test_busy_spin_still_serves(void)
{
    struct hr h;
    char prefix[96], bprefix[96];
    struct load l = {.mode = SHMIPC_MODE_MEMFD, .threads = 2};
    shmipc_client *b = NULL;
    unsigned long since = 0;
    int started = 0;
    REQUIRE(hr_begin(&h, 60000) == 0);
    load_init(&l, &h, 0, prefix, sizeof(prefix));
    REQUIRE(load_start(&l) == 0);
    started = 1;
    CHECK_EQ(load_progress(&l, 1, &since, 2000, WAIT_MS), 0);
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    snprintf(bprefix, sizeof(bprefix), "/dev/shm/%sb", h.shm);
    cfg.address = h.addr;
    cfg.path_prefix = bprefix;
    cfg.pool_bytes = 1u << 20;
    cfg.connect_timeout_ms = WAIT_MS;
    REQUIRE(shmipc_client_open(&cfg, &b) == 0);
    shmipc_stream *st;
    shmipc_msg m;
    REQUIRE(shmipc_client_get(b, &st) == 0);
    CHECK_EQ(shmipc_call(st, "second", 6, &m, WAIT_MS), 0);
    shmipc_msg_release(&m);
    shmipc_client_put(b, st);
    shmipc_client_close(b);
    b = NULL;
    pid_t next = upgrade(&h, h.first, 1, WAIT_MS);
    CU_ASSERT(next > 0);
    load_counts(&l, 1, &since);
    CHECK_EQ(load_progress(&l, 1, &since, 50, WAIT_MS), 0);
    CHECK_EQ(load_stop_all(&l, 1), 0);
    started = 0;
    if (next > 0) {
        kill(next, SIGTERM);
        CHECK_EQ(wait_log(&h, "echo_server: sessions ", 2, WAIT_MS), 2);
    }
out:
    if (b != NULL)
        shmipc_client_close(b);
    if (started)
        CHECK_EQ(load_stop_all(&l, 1), 0);
    hr_end(&h);
}

static const struct test_case cases[] = {
    {"a busy spinning server still takes new sessions and a hot restart",
     test_busy_spin_still_serves},
    {"upgrades under load: every client moves, none fails", test_upgrade_under_load},
    {"a client that never acks is closed at the drain deadline", test_client_never_acks},
    {"hot restart API", test_api},
    {NULL, NULL},
};

const struct test_suite suite_hotrestart = {"hotrestart", cases};
