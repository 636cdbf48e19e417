/*
 * Upgrading shmipcd in place (`shmipcctl upgrade`, SIGUSR2): the new
 * daemon takes the listening sockets, the old one tells every session
 * HotRestart and exits once they all moved. Under load from threaded and
 * event-loop clients in both handshake modes, on a thread-mode and a
 * process-mode service, not one call fails, and the old daemon exits long
 * before its drain deadline (only the acks can end it so soon). A new
 * daemon that cannot start (a broken configuration, a plugin whose init
 * fails) is refused: the command says why and exits 1, and the old one
 * serves on. A client that keeps a stream never acks: its session is
 * closed at the drain deadline, and its next stream works.
 *
 * After an upgrade shmipcd is no child of ours: f.d.pid follows the new
 * pid (du_stop waits for it to be gone).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/daemon_fixture.h"
#include "../common/load_fixture.h"

static int write_conf(struct fx *f, const char *limits, const char *iso_plugin)
{
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f->d, limits);
    du_conf_service(&t, &f->d, 1, "echo", du_plugin_path("echo"), NULL);
    du_conf_add(&t,
                ",  { name = \"iso\"; listen = \"%s\"; plugin = \"%s\"; isolation = \"process\"; }\n",
                du_addr(&f->d, "iso"), iso_plugin != NULL ? iso_plugin : du_plugin_path("echo"));
    return du_conf_write(&t, &f->d, "up.conf");
}

/* The pid in `shmipcctl status`, or -1. */
static pid_t daemon_pid(const struct fx *f, char *out, size_t cap)
{
    if (dfx_ctl(&f->d, out, cap, "status", NULL) != 0)
        return -1;
    long pid;
    return sscanf(out, "shmipcd pid %ld", &pid) == 1 ? (pid_t)pid : -1;
}

/* shmipcctl upgrade [--binary bin]: its exit code, output in out. */
static int ctl_upgrade(const struct fx *f, const char *bin, char *out, size_t cap)
{
    const char *argv[] = {du_bin_path("shmipcctl"), "-s", f->d.admin, "upgrade",
                          bin ? "--binary" : NULL, bin, NULL};
    return dfx_run_capture(argv, out, cap);
}

/* After a successful upgrade from old: the new pid (followed by f.d.pid),
 * once old is gone; -1 when either did not happen in time. */
static pid_t follow(struct fx *f, pid_t old, const char *reply)
{
    long next;
    const char *p = strstr(reply, "upgrade: pid ");
    if (p == NULL || sscanf(p, "upgrade: pid %ld", &next) != 1 || next <= 0)
        return -1;
    int was_child = f->d.pid_is_child;
    /* The new one is the daemon to stop at the end, whatever comes next. */
    f->d.pid = (pid_t)next;
    f->d.pid_is_child = 0;
    f->d.last_pid = (pid_t)next;
    if (was_child ? du_reap(old, POLL_MS) != 0 : du_wait_gone(old, POLL_MS) < 0)
        return -1;
    return (pid_t)next;
}

static int start_loads(struct fx *f, struct load *ls, unsigned n, char (*prefix)[96])
{
    for (unsigned i = 0; i < n; i++) {
        snprintf(prefix[i], sizeof(prefix[i]), "/dev/shm/%su%u", dfx_shm_name(), i);
        ls[i].address = du_addr(&f->d, i % 2 ? "iso" : "echo");
        ls[i].path_prefix = prefix[i];
        ls[i].index = i;
        ls[i].timeout_ms = RECV_MS;
        int rc = load_start(&ls[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void test_upgrade_under_load(void)
{
    struct fx f;
    char prefix[4][96], out[8192], other[256];
    struct load ls[4] = {
        {.mode = SHMIPC_MODE_MEMFD, .threads = 2},
        {.mode = SHMIPC_MODE_FILE, .threads = 2},
        {.mode = SHMIPC_MODE_FILE, .event_loop = 1, .threads = 1, .inflight = 4},
        {.mode = SHMIPC_MODE_MEMFD, .event_loop = 1, .threads = 1, .inflight = 3},
    };
    unsigned n = 4;
    int loads = 0;
    unsigned long since[4] = {0};
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(write_conf(&f, "drain_timeout_ms = 60000;", NULL) == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    /* A second binary to alternate with, as a package upgrade would. */
    snprintf(other, sizeof(other), "%s/shmipcd-b", f.d.dir);
    REQUIRE(du_copy_file(du_bin_path("shmipcd"), other) == 0 && chmod(other, 0755) == 0);
    loads = 1;
    REQUIRE(start_loads(&f, ls, n, prefix) == 0);
    CHECK_EQ(load_progress(ls, n, since, 50, POLL_MS), 0);
    for (int k = 1; k <= 3; k++) {
        pid_t old = daemon_pid(&f, out, sizeof(out));
        REQUIRE(old > 0);
        CHECK_EQ(ctl_upgrade(&f, k % 2 ? other : du_bin_path("shmipcd"), out, sizeof(out)), 0);
        pid_t next = follow(&f, old, out);
        REQUIRE(next > 0 && next != old);
        CHECK_EQ(daemon_pid(&f, out, sizeof(out)), next);
        char epoch[32];
        snprintf(epoch, sizeof(epoch), "epoch %d (upgraded at ", k);
        CU_ASSERT_PTR_NOT_NULL(strstr(out, epoch));
        char *pidfile = du_read_file(du_path(&f.d, "shmipcd.pid"), NULL);
        CU_ASSERT(pidfile != NULL && strtol(pidfile, NULL, 10) == next);
        free(pidfile);
        unsigned long v = 0;
        CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "status", "--json"), 0);
        CU_ASSERT(dfx_json_top(out, "epoch", &v) == 0 && v == (unsigned long)k);
        CU_ASSERT(dfx_json_top(out, "upgraded_at_s", &v) == 0 && v > 0);
        load_counts(ls, n, since);
        CHECK_EQ(load_progress(ls, n, since, 50, POLL_MS), 0);
    }
    CHECK_EQ(dfx_log_count(&f.d, "every session moved to pid"), 3);
    CHECK_EQ(dfx_log_count(&f.d, "did not move"), 0);
out:
    if (loads)
        CHECK_EQ(load_stop_all(ls, n), 0);
    dfx_end(&f);
}

/* A new daemon that cannot start leaves the old one serving; SIGUSR2
 * upgrades as the command does. */
static void test_upgrade_refused(void)
{
    struct fx f;
    char out[8192];
    shmipc_client *c = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(write_conf(&f, NULL, NULL) == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    pid_t pid = daemon_pid(&f, out, sizeof(out));
    REQUIRE(pid > 0);
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = du_addr(&f.d, "echo");
    REQUIRE(shmipc_client_open(&cfg, &c) == 0);
    /* A configuration with a syntax error. */
    REQUIRE(du_write_file(f.d.conf, "services = ( { name = \"x\" ;\n") == 0);
    CHECK_EQ(ctl_upgrade(&f, NULL, out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "error: upgrade refused: "));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "up.conf"));
    /* A plugin whose init fails. */
    REQUIRE(write_conf(&f, NULL, du_test_plugin_path("failinit")) == 0);
    CHECK_EQ(ctl_upgrade(&f, NULL, out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "error: upgrade refused: "));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "failinit"));
    /* A binary that is not there. */
    CHECK_EQ(ctl_upgrade(&f, "/nonexistent/shmipcd", out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "/nonexistent/shmipcd: No such file"));
    /* The old one serves on, and still owns its pid file. */
    pid_t now = daemon_pid(&f, out, sizeof(out));
    if (now != pid)
        fprintf(stderr, "\n  status: %s\n", out);
    CHECK_EQ(now, pid);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "epoch 0"));
    shmipc_stream *st;
    shmipc_msg m;
    REQUIRE(shmipc_client_get(c, &st) == 0);
    CHECK_EQ(shmipc_call(st, "still", 5, &m, RECV_MS), 0);
    shmipc_msg_release(&m);
    shmipc_client_put(c, st);
    char *pidfile = du_read_file(du_path(&f.d, "shmipcd.pid"), NULL);
    CU_ASSERT(pidfile != NULL && strtol(pidfile, NULL, 10) == pid);
    free(pidfile);
    /* A good configuration again: SIGUSR2 upgrades. */
    REQUIRE(write_conf(&f, NULL, NULL) == 0);
    kill(pid, SIGUSR2);
    char line[64];
    uint64_t dl = du_deadline(POLL_MS);
    pid_t next = -1;
    while ((next = daemon_pid(&f, out, sizeof(out))) == pid || next < 0)
        if (du_past(dl))
            break;
        else
            du_sleep_ms(10);
    CU_ASSERT(next > 0 && next != pid);
    CHECK_EQ(du_reap(pid, POLL_MS), 0);
    if (next > 0 && next != pid) {
        f.d.pid = next;
        f.d.pid_is_child = 0;
        f.d.last_pid = next;
    }
    snprintf(line, sizeof(line), "upgrade: pid %d (", (int)next);
    CHECK_EQ(dfx_log_count(&f.d, line), 1);
    int grc = shmipc_client_get(c, &st);
    if (grc != 0)
        fprintf(stderr, "\n  get after the upgrade: %s\n", shmipc_strerror(grc));
    REQUIRE(grc == 0);
    CHECK_EQ(shmipc_call(st, "moved", 5, &m, RECV_MS), 0);
    shmipc_msg_release(&m);
    shmipc_client_put(c, st);
out:
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* A client that keeps its stream never acks: closed at the drain
 * deadline; the others moved without noticing. */
static void test_upgrade_never_acks(void)
{
    struct fx f;
    char out[8192], prefix[1][96];
    struct load l[1] = {{.mode = SHMIPC_MODE_MEMFD, .threads = 2}};
    shmipc_client *c = NULL;
    shmipc_stream *held = NULL;
    int loads = 0;
    unsigned long since = 0;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(write_conf(&f, "drain_timeout_ms = 500;", NULL) == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    loads = 1;
    REQUIRE(start_loads(&f, l, 1, prefix) == 0);
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = du_addr(&f.d, "echo");
    REQUIRE(shmipc_client_open(&cfg, &c) == 0);
    shmipc_msg m;
    REQUIRE(shmipc_client_get(c, &held) == 0);
    REQUIRE(shmipc_call(held, "mine", 4, &m, RECV_MS) == 0);
    shmipc_msg_release(&m);
    CHECK_EQ(load_progress(l, 1, &since, 50, POLL_MS), 0);
    pid_t old = daemon_pid(&f, out, sizeof(out));
    CHECK_EQ(ctl_upgrade(&f, NULL, out, sizeof(out)), 0);
    REQUIRE(follow(&f, old, out) > 0);
    CHECK_EQ(dfx_log_count(&f.d, "1 sessions did not move within drain_timeout_ms"), 1);
    CU_ASSERT(shmipc_call(held, "late", 4, &m, RECV_MS) < 0);
    shmipc_stream_close(held);
    held = NULL;
    shmipc_stream *st;
    REQUIRE(shmipc_client_get(c, &st) == 0);
    CHECK_EQ(shmipc_call(st, "again", 5, &m, RECV_MS), 0);
    shmipc_msg_release(&m);
    shmipc_client_put(c, st);
    load_counts(l, 1, &since);
    CHECK_EQ(load_progress(l, 1, &since, 50, POLL_MS), 0);
out:
    if (held != NULL)
        shmipc_stream_close(held);
    if (c != NULL)
        shmipc_client_close(c);
    if (loads)
        CHECK_EQ(load_stop_all(l, 1), 0);
    dfx_end(&f);
}

static const struct test_case cases[] = {
    {"upgrades under load: every client moves, none fails", test_upgrade_under_load},
    {"a refused upgrade leaves the old daemon serving; SIGUSR2 upgrades", test_upgrade_refused},
    {"a client that never acks is closed at the drain deadline", test_upgrade_never_acks},
    {NULL, NULL},
};

const struct test_suite suite_upgrade = {"upgrade", cases};
