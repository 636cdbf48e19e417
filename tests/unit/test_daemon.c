/*
 * shmipcd end to end: the real shmipcd and shmipcctl binaries, started
 * with configuration files written into a mkdtemp directory, driven by
 * forked client processes that use libshmipc in both handshake modes. The
 * fixture (struct fx: dfx_begin .. dfx_end), the client children and the
 * stats parsing are in tests/common/daemon_fixture.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/daemon_fixture.h"
#include "../common/daemon_util.h"
#include "shmipc/shmipc.h"
#include "testutil.h"

/* ---- tests ---- */

/* 4 echo clients x 16 streams x 50 requests (sizes up to 1 MiB) and 2
 * greeter clients x 8 streams x 50, memfd and file mode, two with two
 * sessions; every byte checked; then the counters add up. */
static void test_many_clients(void)
{
    struct fx f;
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_service(&t, &f.d, 1, "echo", du_plugin_path("echo"), NULL);
    du_conf_service(&t, &f.d, 0, "greeter", du_plugin_path("greeter"), NULL);
    REQUIRE(du_conf_write(&t, &f.d, "many.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);

    static const struct {
        const char *svc;
        enum shmipc_mem_mode mode;
        unsigned sessions, streams;
    } plan[] = {
        {"echo", SHMIPC_MODE_MEMFD, 1, 16},   {"echo", SHMIPC_MODE_MEMFD, 2, 16},
        {"echo", SHMIPC_MODE_FILE, 1, 16},    {"echo", SHMIPC_MODE_FILE, 2, 16},
        {"greeter", SHMIPC_MODE_MEMFD, 1, 8}, {"greeter", SHMIPC_MODE_FILE, 1, 8},
    };
    const unsigned nplan = sizeof(plan) / sizeof(plan[0]), rounds = 50;
    unsigned long echo_reqs = 0, greet_reqs = 0, echo_bytes = 0, echo_sessions = 0,
                  greet_sessions = 0;
    for (unsigned i = 0; i < nplan; i++) {
        struct cl_args a;
        dfx_cl_defaults(&a, &f.d, plan[i].svc, plan[i].mode, (char)('a' + i));
        a.greeter = strcmp(plan[i].svc, "greeter") == 0;
        a.sessions = plan[i].sessions;
        a.streams = plan[i].streams;
        a.rounds = rounds;
        a.max_size = 1u << 20;
        REQUIRE(dfx_kid_start(&f, &a, 0, 0) >= 0);
        if (a.greeter) {
            greet_reqs += a.streams * rounds;
            greet_sessions += a.sessions;
            continue;
        }
        echo_reqs += a.streams * rounds;
        echo_sessions += a.sessions;
        for (unsigned s = 0; s < a.streams; s++)
            for (unsigned r = 0; r < rounds; r++)
                echo_bytes += dfx_req_size(s, r, a.max_size);
    }
    for (int i = 0; i < f.nkids; i++)
        dfx_kid_expect_all_ok(&f.kids[i]);

    char out[65536];
    REQUIRE(dfx_wait_settled(&f.d, "echo", echo_sessions, 0, out, sizeof(out)) == 0);
    REQUIRE(dfx_wait_settled(&f.d, "greeter", greet_sessions, 0, out, sizeof(out)) == 0);
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "stats", "--json"), 0);
    unsigned long v = 0;
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "{\"services\":["));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"sessions\":[]"));
    CU_ASSERT(dfx_json_svc(out, "echo", "requests", &v) == 0 && v == echo_reqs);
    CU_ASSERT(dfx_json_svc(out, "echo", "bytes_in", &v) == 0 && v == echo_bytes);
    CU_ASSERT(dfx_json_svc(out, "echo", "bytes_out", &v) == 0 && v == echo_bytes);
    CU_ASSERT(dfx_json_svc(out, "echo", "handler_errors", &v) == 0 && v == 0);
    CU_ASSERT(dfx_json_svc(out, "echo", "sessions_opened", &v) == 0 && v == echo_sessions);
    CU_ASSERT(dfx_json_svc(out, "echo", "sessions_closed", &v) == 0 && v == echo_sessions);
    CU_ASSERT(dfx_json_svc(out, "echo", "handshakes_failed", &v) == 0 && v == 0);
    CU_ASSERT(dfx_json_svc(out, "greeter", "requests", &v) == 0 && v == greet_reqs);
    CU_ASSERT(dfx_json_svc(out, "greeter", "bytes_in", &v) == 0 &&
              v == greet_reqs * (sizeof(GREETER_REQ) - 1));
    CU_ASSERT(dfx_json_svc(out, "greeter", "bytes_out", &v) == 0 &&
              v == greet_reqs * (sizeof(GREETER_RESP) - 1));
    CU_ASSERT(dfx_json_svc(out, "greeter", "sessions_closed", &v) == 0 && v == greet_sessions);
    CU_ASSERT(dfx_json_top(out, "pools_mapped", &v) == 0 && v == 0);
    /* The greeter only warns about unexpected requests: none came. */
    CHECK_EQ(dfx_log_count(&f.d, "unexpected request"), 0);
    CHECK_EQ(tu_count_shm(dfx_shm_name()), 0);
    CHECK_EQ(du_stop(&f.d, SIGTERM, STOP_MS), 0);
out:
    dfx_end(&f);
}

/* 1 once the child has exited (left unreaped for dfx_kid_finish). */
static int kid_exited(const struct kid *k)
{
    siginfo_t si = {0};
    return k->pid <= 0 ||
           (waitid(P_PID, (id_t)k->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid != 0);
}

#define MAX_STALLED 48

/* Opens stalled connection number i: on echo or greeter, sending nothing
 * or half an event header. fd or -errno. */
static int open_stalled(const struct du_daemon *d, int i)
{
    static const uint8_t half[4] = {0x00, 0x00, 0x00, 0x08};
    int fd = du_connect(du_addr(d, i % 3 == 2 ? "greeter" : "echo"));
    if (fd >= 0 && i % 3 == 1 && write(fd, half, sizeof(half)) != (ssize_t)sizeof(half)) {
        close(fd);
        return -EIO;
    }
    return fd;
}

/* Connections that never finish their handshake (nothing sent; half a
 * header) do not hold up other clients, and are dropped at the deadline
 * with the reason in the log. New stalled connections keep coming for as
 * long as the clients run, so one is always pending whatever the speed of
 * the machine; the checks count outcomes only. */
static void test_slow_handshake(void)
{
    struct fx f;
    int raw[MAX_STALLED], nraw = 0;
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, "handshake_timeout_ms = 300;");
    du_conf_service(&t, &f.d, 1, "echo", du_plugin_path("echo"), NULL);
    du_conf_service(&t, &f.d, 0, "greeter", du_plugin_path("greeter"), NULL);
    REQUIRE(du_conf_write(&t, &f.d, "hs.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);

    for (; nraw < 3; nraw++)
        REQUIRE((raw[nraw] = open_stalled(&f.d, nraw)) >= 0);
    struct cl_args a;
    dfx_cl_defaults(&a, &f.d, "echo", SHMIPC_MODE_MEMFD, 'h');
    a.rounds = 200;
    REQUIRE(dfx_kid_start(&f, &a, 0, 0) >= 0);
    dfx_cl_defaults(&a, &f.d, "echo", SHMIPC_MODE_FILE, 'i');
    a.rounds = 200;
    REQUIRE(dfx_kid_start(&f, &a, 0, 0) >= 0);
    dfx_cl_defaults(&a, &f.d, "greeter", SHMIPC_MODE_MEMFD, 'j');
    a.greeter = 1;
    a.rounds = 200;
    REQUIRE(dfx_kid_start(&f, &a, 0, 0) >= 0);
    uint64_t dl = du_deadline(CHILD_MS);
    for (int running = 1; running && !du_past(dl);) {
        running = 0;
        for (int i = 0; i < f.nkids; i++)
            running |= !kid_exited(&f.kids[i]);
        if (running && nraw < MAX_STALLED) {
            REQUIRE((raw[nraw] = open_stalled(&f.d, nraw)) >= 0);
            nraw++;
        }
        du_sleep_ms(20);
    }
    for (int i = 0; i < f.nkids; i++)
        dfx_kid_expect_all_ok(&f.kids[i]);

    /* Every stalled one: shmipcd closes it (EOF or a reset), says why. */
    int echo_stalled = 0;
    for (int i = 0; i < nraw; i++) {
        struct pollfd pfd = {raw[i], POLLIN, 0};
        char b[64];
        int dropped = poll(&pfd, 1, POLL_MS) == 1 && read(raw[i], b, sizeof(b)) <= 0;
        if (!dropped)
            fprintf(stderr, "\n  stalled connection %d was not dropped\n", i);
        CU_ASSERT(dropped);
        echo_stalled += i % 3 != 2;
    }
    CHECK_EQ(dfx_log_count(&f.d, "handshake not finished before its deadline"), nraw);
    char out[16384];
    struct svc_stats_txt s = {0};
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "stats", NULL), 0);
    CU_ASSERT(dfx_stats_svc(out, "echo", &s) == 0 && s.requests == 2 * 4 * 200);
    CHECK_EQ(s.hs_failed, echo_stalled);
    CHECK_EQ(s.opened, 2);
    CU_ASSERT(dfx_stats_svc(out, "greeter", &s) == 0 && s.requests == 4 * 200);
    CHECK_EQ(s.hs_failed, nraw - echo_stalled);
    CHECK_EQ(s.opened, 1);
    CHECK_EQ(tu_count_shm(dfx_shm_name()), 0);
    CHECK_EQ(du_stop(&f.d, SIGTERM, STOP_MS), 0);
out:
    for (int i = 0; i < nraw; i++)
        if (raw[i] >= 0)
            close(raw[i]);
    dfx_end(&f);
}

/* One bad (or good) file: `shmipcd -t -c FILE` and a real start. */
static void check_conf(struct fx *f, const char *file, const char *text, int want_rc,
                       const char *want1, const char *want2)
{
    const char *path = du_path(&f->d, file);
    if (text != NULL && du_write_file(path, text) < 0) {
        CU_FAIL("cannot write the configuration");
        return;
    }
    char out[8192];
    const char *tv[] = {du_bin_path("shmipcd"), "-t", "-c", path, NULL};
    int rc = dfx_run_capture(tv, out, sizeof(out));
    int ok = rc == want_rc && strstr(out, want1) != NULL && (!want2 || strstr(out, want2));
    if (!ok)
        fprintf(stderr, "\n  shmipcd -t -c %s: exit %d (want %d), output:\n%s\n  wanted '%s'%s%s\n",
                file, rc, want_rc, out, want1, want2 ? " and " : "", want2 ? want2 : "");
    CU_ASSERT(ok);
    CU_ASSERT_PTR_NULL(du_sanitizer_report(out));
    /* -t starts nothing: no socket appears. */
    CU_ASSERT_FALSE(du_exists(du_path(&f->d, "s.sock")));
    CU_ASSERT_FALSE(du_exists(f->d.admin_path));
    if (want_rc == 0)
        return;
    /* The real start refuses the same file the same way, and leaves
     * nothing behind: no socket, no private plugin directory. */
    snprintf(f->d.conf, sizeof(f->d.conf), "%s", path);
    unlink(f->d.log); /* this start's log only */
    rc = du_start(&f->d, START_MS);
    char *log = dfx_log(&f->d);
    ok = rc == want_rc && strstr(log, want1) != NULL && (!want2 || strstr(log, want2));
    if (!ok)
        fprintf(stderr, "\n  shmipcd -c %s: exit %d (want %d), log:\n%s\n", file, rc, want_rc, log);
    CU_ASSERT(ok);
    CU_ASSERT_PTR_NULL(du_sanitizer_report(log));
    free(log);
    if (rc == 0)
        du_stop(&f->d, SIGTERM, STOP_MS);
    CU_ASSERT_FALSE(du_exists(du_path(&f->d, "s.sock")));
    CU_ASSERT_FALSE(du_exists(f->d.admin_path));
    int left = du_daemon_tmpdirs(f->d.last_pid, 1);
    if (left != 0)
        fprintf(stderr, "\n  shmipcd -c %s left its plugin directory in /tmp\n", file);
    CU_ASSERT_EQUAL(left, 0);
}

static void test_bad_configs(void)
{
    struct fx f;
    REQUIRE(dfx_begin(&f) == 0);
    char head[512], svc[1024], text[2048], want[256];
    snprintf(head, sizeof(head), "workers = 2;\nadmin = \"%s\";\n", f.d.admin);
#define SVC(plugin, extra)                                                                         \
    snprintf(svc, sizeof(svc),                                                                     \
             "services = (\n  { name = \"s\"; listen = \"%s\"; plugin = \"%s\";%s }\n);\n",        \
             du_addr(&f.d, "s"), (plugin), (extra))

    /* Syntax error on line 3: file and line in the message. */
    SVC(du_plugin_path("echo"), "");
    snprintf(text, sizeof(text), "%slimits = { max_sessions = ; };\n%s", head, svc);
    snprintf(want, sizeof(want), "%s:3", du_path(&f.d, "syntax.conf"));
    check_conf(&f, "syntax.conf", text, 1, want, NULL);

    /* Unknown key, top level (line 3) and in a service (line 5). */
    snprintf(text, sizeof(text), "%sbogus_key = 1;\n%s", head, svc);
    snprintf(want, sizeof(want), "%s:3: key 'bogus_key': unknown key",
             du_path(&f.d, "unknown.conf"));
    check_conf(&f, "unknown.conf", text, 1, want, NULL);
    SVC(du_plugin_path("echo"), " colour = \"red\";");
    snprintf(text, sizeof(text), "%s%s", head, svc);
    check_conf(&f, "unknown2.conf", text, 1, "key 'services.[0].colour': unknown key", NULL);

    /* Missing plugin file. */
    SVC(du_test_plugin_path("no-such-plugin"), "");
    snprintf(text, sizeof(text), "%s%s", head, svc);
    check_conf(&f, "missing.conf", text, 1, "plugin file not found", "no-such-plugin.so");

    /* Wrong ABI major: refused before any hook runs. */
    SVC(du_test_plugin_path("badabi"), "");
    snprintf(text, sizeof(text), "%s%s", head, svc);
    check_conf(&f, "badabi.conf", text, 1, "ABI major", "badabi.so");

    /* init fails: its own reason is shown. */
    SVC(du_test_plugin_path("failinit"), "");
    snprintf(text, sizeof(text), "%s%s", head, svc);
    check_conf(&f, "failinit.conf", text, 1, "init failed", "refusing to start: test");

    /* A bad service after a good one: the good one is unloaded again. */
    snprintf(svc, sizeof(svc),
             "services = (\n  { name = \"s\"; listen = \"%s\"; plugin = \"%s\"; },\n"
             "  { name = \"t\"; listen = \"%s\"; plugin = \"%s\"; }\n);\n",
             du_addr(&f.d, "s"), du_plugin_path("echo"), du_addr(&f.d, "t"),
             du_test_plugin_path("failinit"));
    snprintf(text, sizeof(text), "%s%s", head, svc);
    check_conf(&f, "second.conf", text, 1, "service 't'", "init failed");
    CU_ASSERT_FALSE(du_exists(du_path(&f.d, "t.sock")));

    /* A file that does not exist. */
    check_conf(&f, "absent-dir/x.conf", NULL, 1, "absent-dir/x.conf", NULL);

    /* A good file: -t says valid and exits 0 without starting anything. */
    SVC(du_test_plugin_path("slow"), " config = { delay_ms = 5; };");
    snprintf(text, sizeof(text), "%s%s", head, svc);
    check_conf(&f, "good.conf", text, 0, "valid", NULL);
#undef SVC
out:
    dfx_end(&f);
}

/* SIGTERM while clients keep requests in flight: every flushed request
 * gets its whole answer or a clean session error, shmipcd exits 0, and
 * leaves no socket, no private plugin copy, no /dev/shm file; the
 * plugins' fini ran. */
static void test_sigterm_under_load(void)
{
    struct fx f;
    REQUIRE(dfx_begin(&f) == 0);
    char limits[64], trace_conf[256];
    snprintf(limits, sizeof(limits), "drain_timeout_ms = %d;", DRAIN_MS);
    snprintf(trace_conf, sizeof(trace_conf), "trace = \"%s\";", du_path(&f.d, "trace"));
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, limits);
    du_conf_service(&t, &f.d, 1, "slow", du_test_plugin_path("slow"), "delay_ms = 20;");
    du_conf_service(&t, &f.d, 0, "counter", du_test_plugin_path("counter"), trace_conf);
    REQUIRE(du_conf_write(&t, &f.d, "term.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    pid_t dpid = f.d.pid;

    const char *svcs[2] = {"slow", "counter"};
    for (unsigned i = 0; i < 4; i++) {
        struct cl_args a;
        dfx_cl_defaults(&a, &f.d, svcs[i / 2], i % 2 ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD,
                        (char)('p' + i));
        a.streams = 8;
        a.rounds = 1000000; /* until shmipcd goes away (or the child's alarm) */
        a.max_size = 40000;
        a.mark_round = i < 2 ? 2 : 20; /* slow: 8 x 20 ms a round */
        REQUIRE(dfx_kid_start(&f, &a, 1, 0) >= 0);
    }
    /* SIGTERM once every client has a round flushed and not yet read: at
     * least those requests are in flight. */
    for (int i = 0; i < f.nkids; i++)
        REQUIRE(dfx_kid_ready(&f.kids[i]) == 0);
    CHECK_EQ(du_stop(&f.d, SIGTERM, DRAIN_MS + STOP_MS), 0);

    uint64_t total_ok = 0;
    for (int i = 0; i < f.nkids; i++) {
        struct cl_result r;
        CHECK_EQ(dfx_kid_finish(&f.kids[i], &r, CHILD_MS), 0);
        CHECK_EQ(r.open_rc, 0);
        CHECK_EQ(r.bad, 0);
        CHECK_EQ(r.timeouts, 0);
        /* Every flushed request: answered right, or its stream ended
         * with the session's error. */
        CHECK_EQ(r.ok + r.errors, r.flushed);
        /* The round in flight at SIGTERM was drained: all answered. */
        CHECK_EQ(r.marked, f.kids[i].args.streams);
        CHECK_EQ(r.marked_ok, r.marked);
        CU_ASSERT(r.ok >= (uint64_t)f.kids[i].args.streams * (f.kids[i].args.mark_round + 1));
        CU_ASSERT(r.errors + r.flush_errors > 0); /* it ended because shmipcd left */
        total_ok += r.ok;
    }
    CU_ASSERT(total_ok > 0);
    CU_ASSERT_FALSE(du_exists(du_path(&f.d, "slow.sock")));
    CU_ASSERT_FALSE(du_exists(du_path(&f.d, "counter.sock")));
    CU_ASSERT_FALSE(du_exists(f.d.admin_path));
    CHECK_EQ(du_daemon_tmpdirs(dpid, 0), 0);
    CHECK_EQ(tu_count_shm(dfx_shm_name()), 0);
    CHECK_EQ(dfx_log_count(&f.d, "signal 15: stopping"), 1);
    CHECK_EQ(dfx_log_count(&f.d, "shmipcd: stopped"), 1);

    char *trace = du_read_file(du_path(&f.d, "trace"), NULL);
    REQUIRE(trace != NULL);
    CHECK_EQ(du_count_lines(trace, "init"), 1);
    CHECK_EQ(du_count_lines(trace, "fini"), 1);
    CHECK_EQ(du_count_str(trace, "thread_init"), du_count_str(trace, "thread_fini"));
    CU_ASSERT(du_count_str(trace, "thread_init") >= 1);
    size_t tl = strlen(trace);
    CU_ASSERT(tl >= 5 && strcmp(trace + tl - 5, "fini\n") == 0 &&
              (tl == 5 || trace[tl - 6] == '\n')); /* fini came last */
    free(trace);
out:
    dfx_end(&f);
}

/* A client SIGKILLed mid-stream: its session is closed, its pool
 * unmapped, shmipcd's fds back to what they were, other clients served. */
static void test_client_sigkill(void)
{
    struct fx f;
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_service(&t, &f.d, 1, "echo", du_plugin_path("echo"), NULL);
    REQUIRE(du_conf_write(&t, &f.d, "kill.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);

    /* Warm up (one client in each mode), then take the baseline. */
    struct cl_args a;
    dfx_cl_defaults(&a, &f.d, "echo", SHMIPC_MODE_MEMFD, 'k');
    REQUIRE(dfx_kid_start(&f, &a, 0, 0) >= 0);
    dfx_kid_expect_all_ok(&f.kids[f.nkids - 1]);
    dfx_cl_defaults(&a, &f.d, "echo", SHMIPC_MODE_FILE, 'l');
    REQUIRE(dfx_kid_start(&f, &a, 0, 0) >= 0);
    dfx_kid_expect_all_ok(&f.kids[f.nkids - 1]);
    char out[65536];
    REQUIRE(dfx_wait_settled(&f.d, "echo", 2, 0, out, sizeof(out)) == 0);
    int base_fds = du_count_fds(f.d.pid);
    REQUIRE(base_fds > 0);

    /* One victim per mode, killed while its streams have requests out. */
    for (int mode = 0; mode < 2; mode++) {
        dfx_cl_defaults(&a, &f.d, "echo", mode ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD,
                        (char)('m' + mode));
        a.streams = 16;
        a.rounds = 1000000;
        a.max_size = 1u << 20;
        int k = dfx_kid_start(&f, &a, 1, 0);
        REQUIRE(k >= 0);
        REQUIRE(dfx_kid_ready(&f.kids[k]) == 0);
        CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "stats", NULL), 0);
        unsigned long pools = 0;
        CU_ASSERT(dfx_stats_pools(out, &pools) == 0 && pools == 1);
        CU_ASSERT_PTR_NOT_NULL(strstr(out, "(echo, worker "));
        kill(f.kids[k].pid, SIGKILL);
        struct cl_result r;
        CHECK_EQ(dfx_kid_finish(&f.kids[k], &r, CHILD_MS), 128 + SIGKILL);
        /* Its session closed, its pool unmapped... */
        REQUIRE(dfx_wait_settled(&f.d, "echo", 3 + (unsigned long)mode, 0, out, sizeof(out)) == 0);
        /* ...and every fd of it closed. */
        uint64_t dl = du_deadline(POLL_MS);
        int fds;
        while ((fds = du_count_fds(f.d.pid)) != base_fds && !du_past(dl))
            du_sleep_ms(10);
        CHECK_EQ(fds, base_fds);
        /* A file-mode victim's files are its own to remove; it cannot. */
        du_remove_prefix("/dev/shm", dfx_shm_name());
    }
    /* Others are still served, in both modes. */
    dfx_cl_defaults(&a, &f.d, "echo", SHMIPC_MODE_MEMFD, 'n');
    a.streams = 8;
    a.rounds = 20;
    a.max_size = 1u << 20;
    REQUIRE(dfx_kid_start(&f, &a, 0, 0) >= 0);
    dfx_kid_expect_all_ok(&f.kids[f.nkids - 1]);
    dfx_cl_defaults(&a, &f.d, "echo", SHMIPC_MODE_FILE, 'o');
    REQUIRE(dfx_kid_start(&f, &a, 0, 0) >= 0);
    dfx_kid_expect_all_ok(&f.kids[f.nkids - 1]);
    REQUIRE(dfx_wait_settled(&f.d, "echo", 6, 0, out, sizeof(out)) == 0);
    CHECK_EQ(du_count_fds(f.d.pid), base_fds);
    CHECK_EQ(tu_count_shm(dfx_shm_name()), 0);
    CHECK_EQ(du_stop(&f.d, SIGTERM, STOP_MS), 0);
out:
    dfx_end(&f);
}

/* shmipcctl status / stats / stats --json / an unknown command / stop. */
static void test_shmipcctl(void)
{
    struct fx f;
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_service(&t, &f.d, 1, "echo", du_plugin_path("echo"), NULL);
    du_conf_service(&t, &f.d, 0, "greeter", du_plugin_path("greeter"), NULL);
    REQUIRE(du_conf_write(&t, &f.d, "ctl.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    pid_t dpid = f.d.pid;

    /* A client that keeps its session open until released. */
    struct cl_args a;
    dfx_cl_defaults(&a, &f.d, "echo", SHMIPC_MODE_MEMFD, 'q');
    a.streams = 2;
    a.rounds = 3;
    int k = dfx_kid_start(&f, &a, 1, 1);
    REQUIRE(k >= 0);
    REQUIRE(dfx_kid_ready(&f.kids[k]) == 0);
    /* Its last rounds may still be running: wait for all 6 requests. */
    char out[65536], line[512];
    struct svc_stats_txt s = {0};
    uint64_t dl = du_deadline(POLL_MS);
    while ((dfx_ctl(&f.d, out, sizeof(out), "stats", NULL) != 0 ||
            dfx_stats_svc(out, "echo", &s) != 0 || s.requests != 6) &&
           !du_past(dl))
        du_sleep_ms(10);
    CHECK_EQ(s.requests, 6);

    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "status", NULL), 0);
    char pidline[64];
    snprintf(pidline, sizeof(pidline), "shmipcd pid %d, up ", (int)dpid);
    CU_ASSERT(strncmp(out, pidline, strlen(pidline)) == 0);
    snprintf(line, sizeof(line),
             "service echo: listen %s, plugin echo 1.0.0, generation 1, draining generations 0, "
             "sessions 1\n",
             du_addr(&f.d, "echo"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
    snprintf(line, sizeof(line),
             "service greeter: listen %s, plugin greeter 1.0.0, generation 1, draining "
             "generations 0, sessions 0\n",
             du_addr(&f.d, "greeter"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
    unsigned w0 = 9, w1 = 9;
    const char *p0 = strstr(out, "worker 0: sessions "), *p1 = strstr(out, "worker 1: sessions ");
    CU_ASSERT(p0 != NULL && sscanf(p0, "worker 0: sessions %u", &w0) == 1);
    CU_ASSERT(p1 != NULL && sscanf(p1, "worker 1: sessions %u", &w1) == 1);
    CHECK_EQ(w0 + w1, 1);
    if (strstr(out, line) == NULL)
        fprintf(stderr, "\n  status:\n%s\n", out);

    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "stats", NULL), 0);
    unsigned long pools = 9;
    CU_ASSERT(dfx_stats_pools(out, &pools) == 0 && pools == 1);
    CU_ASSERT(dfx_stats_svc(out, "echo", &s) == 0 && s.opened == 1 && s.closed == 0 &&
              s.requests == 6);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "(echo, worker "));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "requests 6, errors 0"));

    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "stats", "--json"), 0);
    unsigned long v = 9;
    CU_ASSERT(out[0] == '{');
    CU_ASSERT(dfx_json_svc(out, "echo", "requests", &v) == 0 && v == 6);
    CU_ASSERT(dfx_json_svc(out, "greeter", "requests", &v) == 0 && v == 0);
    CU_ASSERT(dfx_json_top(out, "pools_mapped", &v) == 0 && v == 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"sessions\":[{\"id\":"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"service\":\"echo\""));

    /* Unknown commands: a non-zero exit and "error:". */
    int rc = dfx_ctl(&f.d, out, sizeof(out), "bogus", NULL);
    CU_ASSERT(rc != 0 && strstr(out, "error:") != NULL);
    rc = dfx_ctl(&f.d, out, sizeof(out), "stats", "--yaml");
    CU_ASSERT(rc != 0 && strstr(out, "error:") != NULL);
    /* No command: usage, exit 2. */
    const char *noarg[] = {du_bin_path("shmipcctl"), NULL};
    rc = dfx_run_capture(noarg, out, sizeof(out));
    CU_ASSERT(rc == 2 && strstr(out, "usage:") != NULL);

    /* The client leaves; its session closes. */
    dfx_kid_expect_all_ok(&f.kids[k]);
    REQUIRE(dfx_wait_settled(&f.d, "echo", 1, 0, out, sizeof(out)) == 0);

    /* stop: shmipcd drains and exits 0, its sockets removed. */
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "stop", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "stopping"));
    CHECK_EQ(du_wait_exit(&f.d, STOP_MS), 0);
    CU_ASSERT_FALSE(du_exists(du_path(&f.d, "echo.sock")));
    CU_ASSERT_FALSE(du_exists(du_path(&f.d, "greeter.sock")));
    CU_ASSERT_FALSE(du_exists(f.d.admin_path));
    CHECK_EQ(du_daemon_tmpdirs(dpid, 0), 0);
    CHECK_EQ(dfx_log_count(&f.d, "admin: stop requested"), 1);
    /* Nobody listens any more: shmipcctl says so and fails. */
    rc = dfx_ctl(&f.d, out, sizeof(out), "status", NULL);
    CU_ASSERT(rc == 1 && strstr(out, "shmipcctl: ") != NULL);
out:
    dfx_end(&f);
}

/* One request on a fresh stream; the first 3 bytes of the answer. */
static int ask_version(shmipc_client *c, char ver[4])
{
    shmipc_stream *st;
    shmipc_msg m;
    int rc = shmipc_client_get(c, &st);
    if (rc < 0)
        return rc;
    rc = shmipc_call(st, "x", 1, &m, RECV_MS);
    if (rc == 0) {
        memset(ver, 0, 4);
        shmipc_msg_copy(&m, 0, ver, 3);
        shmipc_msg_release(&m);
    }
    shmipc_client_put(c, st);
    return rc;
}

/* watch = true: replacing the plugin file reloads the service by itself;
 * a broken replacement is refused and the running generation stays. */
static void test_watch(void)
{
    struct fx f;
    shmipc_client *c = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    const char *so = du_path(&f.d, "plugin.so");
    REQUIRE(du_copy_file(du_test_plugin_path("versioned"), so) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_add(&t, "  { name = \"ver\"; listen = \"%s\"; plugin = \"%s\"; watch = true; }\n",
                du_addr(&f.d, "ver"), so);
    REQUIRE(du_conf_write(&t, &f.d, "watch.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = du_addr(&f.d, "ver");
    REQUIRE(shmipc_client_open(&cfg, &c) == 0);
    char ver[4];
    CHECK_EQ(ask_version(c, ver), 0);
    CU_ASSERT_STRING_EQUAL(ver, "v1 ");

    REQUIRE(du_copy_file(du_test_plugin_path("versioned2"), so) == 0);
    uint64_t dl = du_deadline(POLL_MS);
    while (ask_version(c, ver) == 0 && strcmp(ver, "v2 ") != 0 && !du_past(dl))
        du_sleep_ms(20);
    CU_ASSERT_STRING_EQUAL(ver, "v2 ");
    CU_ASSERT(dfx_log_count(&f.d, "plugin file plugin.so changed") >= 1);

    REQUIRE(du_copy_file(du_test_plugin_path("badabi"), so) == 0);
    dl = du_deadline(POLL_MS);
    while (dfx_log_count(&f.d, "ABI major") == 0 && !du_past(dl))
        du_sleep_ms(20);
    CU_ASSERT(dfx_log_count(&f.d, "ABI major") >= 1);
    CHECK_EQ(ask_version(c, ver), 0);
    CU_ASSERT_STRING_EQUAL(ver, "v2 ");
    shmipc_client_close(c);
    c = NULL;
    CHECK_EQ(du_stop(&f.d, SIGTERM, STOP_MS), 0);
out:
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* Opens a client on svc with `sessions` sessions; 0 or its error. */
static int open_client(const struct du_daemon *d, const char *svc, unsigned sessions,
                       int keepalive_ms, shmipc_client **out)
{
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = du_addr(d, svc);
    cfg.sessions = sessions;
    cfg.keepalive_ms = keepalive_ms;
    cfg.reconnect_min_ms = 10000; /* no quiet reconnects during the test */
    return shmipc_client_open(&cfg, out);
}

/* Allowlist, sessions per uid, streams per session, idle timeout with
 * and without keepalives: each refusal logged and counted. */
static void test_limits(void)
{
    struct fx f;
    shmipc_client *c1 = NULL, *c2 = NULL, *c3 = NULL, *idle = NULL, *alive = NULL;
    shmipc_stream *st[5] = {0};
    REQUIRE(dfx_begin(&f) == 0);
    unsigned me = (unsigned)getuid();
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, "max_sessions_per_uid = 3; max_streams = 4; idle_timeout_ms = 1500;");
    du_conf_add(&t, "  { name = \"open\"; listen = \"%s\"; plugin = \"%s\"; allow_uids = [%u]; }\n",
                du_addr(&f.d, "open"), du_plugin_path("echo"), me);
    du_conf_add(&t,
                ", { name = \"shut\"; listen = \"%s\"; plugin = \"%s\"; allow_uids = [%u]; "
                "allow_gids = [%u]; }\n",
                du_addr(&f.d, "shut"), du_plugin_path("echo"), me + 4242,
                (unsigned)getgid() + 4242);
    REQUIRE(du_conf_write(&t, &f.d, "limits.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    char out[65536];

    /* Allowlist: our uid is not on "shut". */
    CU_ASSERT(open_client(&f.d, "shut", 1, 0, &c1) < 0);
    CU_ASSERT(dfx_log_count(&f.d, "is not allowed") >= 1);

    /* Three sessions for our uid, no more. */
    REQUIRE(open_client(&f.d, "open", 2, 0, &c1) == 0);
    REQUIRE(open_client(&f.d, "open", 1, 0, &c2) == 0);
    CU_ASSERT(open_client(&f.d, "open", 1, 0, &c3) < 0);
    CU_ASSERT(dfx_log_count(&f.d, "sessions, the limit") >= 1);
    shmipc_client_close(c2);
    c2 = NULL;
    uint64_t dl = du_deadline(POLL_MS);
    while (open_client(&f.d, "open", 1, 0, &c3) < 0 && !du_past(dl))
        du_sleep_ms(20);
    CU_ASSERT_PTR_NOT_NULL(c3);

    /* Four streams per session: the fifth closes the session. */
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        shmipc_msg m;
        REQUIRE(shmipc_client_get(c3, &st[i]) == 0);
        ok += shmipc_call(st[i], "ab", 2, &m, RECV_MS) == 0;
        shmipc_msg_release(&m);
    }
    CHECK_EQ(ok, 4);
    shmipc_msg m5;
    REQUIRE(shmipc_client_get(c3, &st[4]) == 0);
    CU_ASSERT(shmipc_call(st[4], "ab", 2, &m5, RECV_MS) < 0);
    CU_ASSERT(dfx_log_count(&f.d, "more streams than allowed") >= 1);
    for (int i = 0; i < 5; i++) {
        shmipc_stream_close(st[i]);
        st[i] = NULL;
    }
    shmipc_client_close(c3);
    c3 = NULL;
    shmipc_client_close(c1);
    c1 = NULL;

    /* Idle timeout: a silent client is closed; one sending keepalives
     * (every 100 ms against a 1500 ms limit) stays. */
    dl = du_deadline(POLL_MS);
    while (open_client(&f.d, "open", 1, 0, &idle) < 0 && !du_past(dl))
        du_sleep_ms(20);
    REQUIRE(idle != NULL);
    REQUIRE(open_client(&f.d, "open", 1, 100, &alive) == 0);
    dl = du_deadline(POLL_MS);
    while (shmipc_client_live_sessions(idle) != 0 && !du_past(dl))
        du_sleep_ms(20);
    CHECK_EQ(shmipc_client_live_sessions(idle), 0);
    CHECK_EQ(shmipc_client_live_sessions(alive), 1);
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "stats", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "idle closed 1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "service shut:"));
    const char *shut = strstr(out, "service shut:");
    CU_ASSERT(shut != NULL && strstr(shut, "refused 1") != NULL);
    CHECK_EQ(du_stop(&f.d, SIGTERM, STOP_MS), 0);
out:
    for (int i = 0; i < 5; i++)
        if (st[i] != NULL)
            shmipc_stream_close(st[i]);
    shmipc_client *all[] = {c1, c2, c3, idle, alive};
    for (unsigned i = 0; i < 5; i++)
        if (all[i] != NULL)
            shmipc_client_close(all[i]);
    dfx_end(&f);
}

/* One request whose byte 0 is op and whose rest is want[1..n); the answer
 * must be pre + that request + post. With zc, the answer must come in
 * the request's own memory (forwarded, not copied). 0, or 1 on a
 * mismatch, or a code. */
static int fwd_round(shmipc_stream *st, char op, const uint8_t *want, size_t n, const char *pre,
                     const char *post, int zc)
{
    size_t first = n < 131052 ? n : 131052;
    void *p = NULL;
    int rc = shmipc_stream_reserve(st, first, &p);
    if (rc < 0)
        return rc;
    memcpy(p, want, first);
    ((uint8_t *)p)[0] = (uint8_t)op;
    if (n > first && (rc = shmipc_stream_write(st, want + first, n - first)) < 0)
        return rc;
    if ((rc = shmipc_stream_flush(st)) < 0)
        return rc;
    shmipc_msg m;
    if ((rc = shmipc_stream_recv(st, &m, RECV_MS)) < 0)
        return rc;
    size_t a = strlen(pre), b = strlen(post), total = a + n + b;
    uint8_t *got = malloc(total + 1);
    rc = 1;
    if (got != NULL && m.len == total && shmipc_msg_copy(&m, 0, got, total) == total &&
        memcmp(got, pre, a) == 0 && got[a] == (uint8_t)op &&
        memcmp(got + a + 1, want + 1, n - 1) == 0 && memcmp(got + a + n, post, b) == 0)
        rc = zc && (m.niov == 0 || m.iov[0].base != p) ? 1 : 0;
    free(got);
    shmipc_msg_release(&m);
    return rc;
}

/* host->forward(): alone it sends the request's own slices back; with
 * bytes written before or after, or twice, the answer is copied and
 * still right; a handler that fails after forwarding sends nothing. */
static void test_forward(void)
{
    struct fx f;
    shmipc_client *c = NULL;
    shmipc_stream *st = NULL;
    uint8_t *want = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_add(&t, "  { name = \"fwd\"; listen = \"%s\"; plugin = \"%s\"; }\n",
                du_addr(&f.d, "fwd"), du_test_plugin_path("fwd"));
    REQUIRE(du_conf_write(&t, &f.d, "fwd.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    REQUIRE(open_client(&f.d, "fwd", 1, 0, &c) == 0);
    REQUIRE(shmipc_client_get(c, &st) == 0);
    const size_t sizes[] = {1, 100, 131052, 131053, 400000};
    REQUIRE((want = malloc(400000)) != NULL);
    for (size_t i = 0; i < 400000; i++)
        want[i] = (uint8_t)(i * 131 + 7);
    for (unsigned round = 0; round < 20; round++) {
        for (unsigned i = 0; i < 5; i++) {
            size_t n = sizes[i];
            CHECK_EQ(fwd_round(st, 'A', want, n, "", "", 1), 0);
            CHECK_EQ(fwd_round(st, 'B', want, n, "pfx", "", 0), 0);
            CHECK_EQ(fwd_round(st, 'C', want, n, "", "sfx", 0), 0);
            CHECK_EQ(fwd_round(st, 'E', want, n, "", "rsv!", 0), 0);
        }
    }
    /* Twice: the request, then the request again. */
    size_t n = 200000;
    uint8_t *twice = malloc(2 * n);
    REQUIRE(twice != NULL);
    memcpy(twice, want, n);
    twice[0] = 'D';
    memcpy(twice + n, twice, n);
    shmipc_msg m;
    int rc = shmipc_call(st, twice, n, &m, RECV_MS);
    CHECK_EQ(rc, 0);
    uint8_t *got = malloc(2 * n);
    CU_ASSERT(got != NULL && m.len == 2 * n && shmipc_msg_copy(&m, 0, got, 2 * n) == 2 * n &&
              memcmp(got, twice, 2 * n) == 0);
    free(got);
    free(twice);
    shmipc_msg_release(&m);
    /* Fails after forwarding: no answer, counted, and (handler_error's
     * default, close_stream) the stream is closed: the client hears it at
     * once instead of waiting out its timeout. A new stream works. */
    REQUIRE(shmipc_stream_write(st, "F", 1) == 0 && shmipc_stream_flush(st) == 0);
    CHECK_EQ(shmipc_stream_recv(st, &m, RECV_MS), SHMIPC_ECLOSED); /* not ETIMEDOUT */
    shmipc_stream_close(st);
    REQUIRE(shmipc_client_get(c, &st) == 0);
    CHECK_EQ(fwd_round(st, 'A', want, 5000, "", "", 1), 0);
    char out[65536];
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "stats", NULL), 0);
    const char *svc = strstr(out, "service fwd:");
    CU_ASSERT(svc != NULL && strstr(svc, "handler errors 1,") != NULL);
    CU_ASSERT(svc != NULL && strstr(svc, "sessions opened 1 closed 0,") != NULL);
    shmipc_stream_close(st);
    st = NULL;
    shmipc_client_close(c);
    c = NULL;
    CHECK_EQ(du_stop(&f.d, SIGTERM, STOP_MS), 0);
out:
    free(want);
    if (st != NULL)
        shmipc_stream_close(st);
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* A second shmipcd on the same configuration is refused (the pid file
 * names the first), and one on another configuration with a socket the
 * first serves is refused too (naming its pid); the first never notices
 * and keeps its sockets. */
static void test_one_daemon_per_socket(void)
{
    struct fx f;
    char out[8192];
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_service(&t, &f.d, 1, "echo", du_plugin_path("echo"), NULL);
    REQUIRE(du_conf_write(&t, &f.d, "one.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    char pidtext[32];
    snprintf(pidtext, sizeof(pidtext), "is held by pid %d", (int)f.d.pid);
    const char *argv[] = {f.d.shmipcd, "-c", f.d.conf, NULL};
    CHECK_EQ(dfx_run_capture(argv, out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, pidtext));
    /* Another admin socket and pid file, the same service socket. */
    t.n = 0;
    du_conf_add(&t, "admin = \"unix:%s\";\npid_file = \"%s\";\nservices = (\n",
                du_path(&f.d, "admin2.sock"), du_path(&f.d, "two.pid"));
    du_conf_service(&t, &f.d, 1, "echo", du_plugin_path("echo"), NULL);
    char conf2[160];
    snprintf(conf2, sizeof(conf2), "%s", f.d.conf);
    struct du_daemon other = f.d;
    REQUIRE(du_conf_write(&t, &other, "two.conf") == 0);
    const char *argv2[] = {f.d.shmipcd, "-c", other.conf, NULL};
    CHECK_EQ(dfx_run_capture(argv2, out, sizeof(out)), 1);
    snprintf(pidtext, sizeof(pidtext), "echo.sock is served by pid %d", (int)f.d.pid);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, pidtext));
    /* The first still answers, on its sockets. */
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "status", NULL), 0);
    CU_ASSERT(du_exists(du_path(&f.d, "echo.sock")) && du_exists(du_path(&f.d, "shmipcd.pid")));
    shmipc_client *c = NULL;
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = du_addr(&f.d, "echo");
    REQUIRE(shmipc_client_open(&cfg, &c) == 0);
    shmipc_stream *st;
    REQUIRE(shmipc_client_get(c, &st) == 0);
    shmipc_msg m;
    CHECK_EQ(shmipc_call(st, "still here", 10, &m, RECV_MS), 0);
    shmipc_msg_release(&m);
    shmipc_client_put(c, st);
    shmipc_client_close(c);
    CHECK_EQ(du_stop(&f.d, SIGTERM, STOP_MS), 0);
    CU_ASSERT(!du_exists(du_path(&f.d, "shmipcd.pid")));
    (void)conf2;
out:
    dfx_end(&f);
}

/* NOTIFY_SOCKET: READY=1 once serving, RELOADING=1 then READY=1 around a
 * reload, MAINPID= of the new daemon and its READY=1 at an upgrade,
 * STOPPING=1 at the stop. */
static int notify_next(int fd, char *buf, size_t cap)
{
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, POLL_MS) != 1)
        return -1;
    ssize_t n = recv(fd, buf, cap - 1, 0);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return 0;
}

static void test_systemd_notify(void)
{
    struct fx f;
    int fd = -1;
    char buf[512];
    REQUIRE(dfx_begin(&f) == 0);
    const char *path = du_path(&f.d, "notify.sock");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_service(&t, &f.d, 1, "echo", du_plugin_path("echo"), NULL);
    REQUIRE(du_conf_write(&t, &f.d, "notify.conf") == 0);
    setenv("NOTIFY_SOCKET", sa.sun_path, 1);
    int rc = du_start(&f.d, START_MS);
    unsetenv("NOTIFY_SOCKET");
    REQUIRE(rc == 0);
    REQUIRE(notify_next(fd, buf, sizeof(buf)) == 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "READY=1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "STATUS=1 services"));
    kill(f.d.pid, SIGHUP);
    REQUIRE(notify_next(fd, buf, sizeof(buf)) == 0);
    CU_ASSERT_STRING_EQUAL(buf, "RELOADING=1");
    REQUIRE(notify_next(fd, buf, sizeof(buf)) == 0);
    CU_ASSERT(strncmp(buf, "READY=1", 7) == 0);
    /* An upgrade: the old daemon names the new main pid, the new one says
     * READY=1; the old one exits without STOPPING=1. */
    pid_t old = f.d.pid;
    kill(old, SIGUSR2);
    REQUIRE(notify_next(fd, buf, sizeof(buf)) == 0);
    long next = -1;
    CU_ASSERT(sscanf(buf, "MAINPID=%ld", &next) == 1 && next > 0 && next != old);
    REQUIRE(notify_next(fd, buf, sizeof(buf)) == 0);
    char want[64];
    snprintf(want, sizeof(want), "READY=1\nMAINPID=%ld\n", next);
    CU_ASSERT(strncmp(buf, want, strlen(want)) == 0);
    CHECK_EQ(du_reap(old, STOP_MS), 0);
    f.d.pid = (pid_t)next;
    f.d.pid_is_child = 0;
    f.d.last_pid = (pid_t)next;
    CHECK_EQ(du_stop(&f.d, SIGTERM, STOP_MS), 0);
    REQUIRE(notify_next(fd, buf, sizeof(buf)) == 0);
    CU_ASSERT_STRING_EQUAL(buf, "STOPPING=1");
out:
    if (fd >= 0)
        close(fd);
    dfx_end(&f);
}

/* The metrics text through the reference parser (tests/metrics/parse.py):
 * its samples, one per line, in out. The parser's exit code. */
static int parse_metrics(const struct fx *f, const char *text, char *out, size_t cap)
{
    const char *file = du_path(&f->d, "metrics.txt");
    if (du_write_file(file, text) < 0)
        return -1;
    /* The source tree's tests/metrics/parse.py, found upward from this
     * program (build/tests, build/asan/tests, ...). */
    char script[4096] = "";
    for (int up = 1; up <= 4 && script[0] == '\0'; up++) {
        char path[4096];
        int n = snprintf(path, sizeof(path), "%s", du_exe_dir());
        for (int i = 0; i < up && n > 0 && (size_t)n < sizeof(path) - 4; i++)
            n += snprintf(path + n, sizeof(path) - (size_t)n, "/..");
        snprintf(path + n, sizeof(path) - (size_t)n, "/tests/metrics/parse.py");
        if (du_exists(path))
            snprintf(script, sizeof(script), "%s", path);
    }
    if (script[0] == '\0')
        return -1;
    const char *argv[] = {"/usr/bin/python3", script, file, NULL};
    return dfx_run_capture(argv, out, cap);
}

/* The sum of the parsed samples named `name` (parse.py's lines) whose
 * labels hold l1 and l2 (each `key="value"`, or NULL); *n says how many. */
static double msum(const char *parsed, const char *name, const char *l1, const char *l2, int *n)
{
    double sum = 0;
    int count = 0;
    size_t nl = strlen(name);
    for (const char *p = parsed; p != NULL && *p != '\0';) {
        const char *e = strchr(p, '\n');
        size_t len = e != NULL ? (size_t)(e - p) : strlen(p);
        char line[512];
        if (len < sizeof(line) && strncmp(p, name, nl) == 0 && p[nl] == '{') {
            memcpy(line, p, len);
            line[len] = '\0';
            const char *sp = strrchr(line, ' ');
            if (sp != NULL && (l1 == NULL || strstr(line, l1) != NULL) &&
                (l2 == NULL || strstr(line, l2) != NULL)) {
                sum += strtod(sp + 1, NULL);
                count++;
            }
        }
        p = e != NULL ? e + 1 : NULL;
    }
    if (n != NULL)
        *n = count;
    return sum;
}

/* The one sample of name with l1 and l2, or -1 when there is not exactly one. */
static double mone(const char *parsed, const char *name, const char *l1, const char *l2)
{
    int n;
    double v = msum(parsed, name, l1, l2, &n);
    return n == 1 ? v : -1;
}

/* Service svc's per-worker samples (nworkers of them) add up to its
 * per-service ones: requests, bytes, handler errors, the handler-time
 * histogram (whose count is the requests, per worker too), sessions and
 * streams. Its requests are `requests`. */
static void check_worker_sums(const char *parsed, const char *svc, int nworkers, double requests)
{
    char sl[96];
    snprintf(sl, sizeof(sl), "service=\"%s\"", svc);
    static const char *const pairs[][2] = {
        {"shmipcd_requests_total", "shmipcd_worker_requests_total"},
        {"shmipcd_request_bytes_total", "shmipcd_worker_request_bytes_total"},
        {"shmipcd_response_bytes_total", "shmipcd_worker_response_bytes_total"},
        {"shmipcd_handler_errors_total", "shmipcd_worker_handler_errors_total"},
        {"shmipcd_handler_seconds_count", "shmipcd_worker_handler_seconds_count"},
        {"shmipcd_sessions", "shmipcd_worker_sessions"},
        {"shmipcd_streams", "shmipcd_worker_streams"},
    };
    for (size_t k = 0; k < sizeof(pairs) / sizeof(pairs[0]); k++) {
        int n = 0;
        double per_worker = msum(parsed, pairs[k][1], sl, NULL, &n);
        CHECK_EQ(n, nworkers);
        CU_ASSERT(per_worker == mone(parsed, pairs[k][0], sl, NULL));
    }
    CU_ASSERT(mone(parsed, "shmipcd_requests_total", sl, NULL) == requests);
    CU_ASSERT(mone(parsed, "shmipcd_handler_seconds_count", sl, NULL) == requests);
    for (int i = 0; i < nworkers; i++) {
        char wl[32];
        snprintf(wl, sizeof(wl), "worker=\"%d\"", i);
        double req = mone(parsed, "shmipcd_worker_requests_total", sl, wl);
        CU_ASSERT(req >= 0);
        CU_ASSERT(mone(parsed, "shmipcd_worker_handler_seconds_count", sl, wl) == req);
        int nb = 0;
        msum(parsed, "shmipcd_worker_handler_seconds_bucket", sl, wl, &nb);
        CHECK_EQ(nb, 16); /* the service's buckets, +Inf included */
        char both[160];
        snprintf(both, sizeof(both), "%s,worker=\"%d\"", sl, i); /* parse.py sorts labels */
        CU_ASSERT(mone(parsed, "shmipcd_worker_handler_seconds_bucket", "le=\"+Inf\"", both) ==
                  req);
    }
}

/* One request on st, answered with the same bytes. 0 or a code. */
static int echo_call(shmipc_stream *st, const char *text)
{
    shmipc_msg m;
    int rc = shmipc_call(st, text, strlen(text), &m, RECV_MS);
    if (rc < 0)
        return rc;
    char buf[64] = "";
    size_t n = shmipc_msg_copy(&m, 0, buf, sizeof(buf) - 1);
    shmipc_msg_release(&m);
    return n == strlen(text) && memcmp(buf, text, n) == 0 ? 0 : -1;
}

/* One request on a fresh stream of c (given back to c after). */
static int echo_call_new(shmipc_client *c, const char *text)
{
    shmipc_stream *st;
    int rc = shmipc_client_get(c, &st);
    if (rc < 0)
        return rc;
    rc = echo_call(st, text);
    if (rc == 0)
        shmipc_client_put(c, st);
    else
        shmipc_stream_close(st);
    return rc;
}

/* Scrapes into parsed until service svc's workers' sessions add up to
 * its own count `sessions` (a respawned process adopts its sessions on
 * its own time). 0 when they did. */
static int scrape_settled(struct fx *f, const char *svc, double sessions, char *out, size_t cap,
                          char *parsed, size_t pcap)
{
    char sl[96];
    snprintf(sl, sizeof(sl), "service=\"%s\"", svc);
    uint64_t dl = du_deadline(POLL_MS);
    do {
        if (dfx_ctl(&f->d, out, cap, "metrics", NULL) != 0 ||
            parse_metrics(f, out, parsed, pcap) != 0)
            return -1;
        if (mone(parsed, "shmipcd_sessions", sl, NULL) == sessions &&
            msum(parsed, "shmipcd_worker_sessions", sl, NULL, NULL) == sessions)
            return 0;
        du_sleep_ms(20);
    } while (!du_past(dl));
    return -1;
}

/* shmipcctl metrics and GET /metrics: both parse with the reference
 * parser and count what was done, per service and per worker, for a
 * thread-mode service (the shared workers) and a process-mode one (the
 * workers of its process), whose per-worker counters go on across a
 * crash of its process; status --json and sessions too. Two sessions per
 * service go to its two workers (the least loaded takes each). */
static void test_metrics(void)
{
    struct fx f;
    static char out[262144], parsed[262144];
    enum { NCL = 4 };
    static const char *const svc_of[NCL] = {"echo", "echo", "victim", "victim"};
    static const int calls[NCL] = {7, 5, 7, 5};
    shmipc_client *c[NCL] = {NULL, NULL, NULL, NULL};
    shmipc_stream *st[NCL] = {NULL, NULL, NULL, NULL};
    int port = 0, fd = -1;
    struct rlimit core;
    int core_saved = getrlimit(RLIMIT_CORE, &core) == 0;
    REQUIRE(dfx_begin(&f) == 0);
    if (core_saved) { /* shmipcd inherits it: the victim's crash leaves no core file */
        struct rlimit none = {0, core.rlim_max};
        setrlimit(RLIMIT_CORE, &none);
    }
    for (int tries = 0; tries < 20 && port == 0; tries++) {
        int p = 20000 + (int)((du_now_ns() / 1000 + (uint64_t)tries * 7919) % 30000);
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (s >= 0 && bind(s, (struct sockaddr *)&in, sizeof(in)) == 0)
            port = p;
        if (s >= 0)
            close(s);
    }
    REQUIRE(port != 0);
    struct du_conf t = {.n = 0};
    du_conf_add(&t, "metrics_listen = \"tcp:127.0.0.1:%d\";\n", port);
    du_conf_head(&t, &f.d, NULL); /* workers = 2 */
    du_conf_service(&t, &f.d, 1, "echo", du_plugin_path("echo"), NULL);
    du_conf_add(&t, ",  { name = \"victim\"; listen = \"%s\"; plugin = \"%s\"; "
                    "isolation = \"process\"; }\n",
                du_addr(&f.d, "victim"), du_test_plugin_path("crash"));
    REQUIRE(du_conf_write(&t, &f.d, "metrics.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    for (int k = 0; k < NCL; k++) {
        struct shmipc_client_config cfg;
        shmipc_client_config_init(&cfg);
        cfg.address = du_addr(&f.d, svc_of[k]);
        cfg.reconnect_min_ms = 10;
        cfg.reconnect_max_ms = 50;
        REQUIRE(shmipc_client_open(&cfg, &c[k]) == 0);
        REQUIRE(shmipc_client_get(c[k], &st[k]) == 0);
        for (int i = 0; i < calls[k]; i++)
            REQUIRE(echo_call(st[k], "count me") == 0);
    }
    /* Each client holds its session and one stream open meanwhile. */
    REQUIRE(scrape_settled(&f, "victim", 2, out, sizeof(out), parsed, sizeof(parsed)) == 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(parsed, "shmipcd_requests_total{service=\"echo\"} 12\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(parsed, "shmipcd_sessions{service=\"echo\"} 2\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(parsed, "shmipcd_handler_seconds_count{service=\"echo\"} 12\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(parsed, "shmipcd_refused_total{reason=\"allowlist\",service=\"echo\"} 0\n"));
    static const char *const svcs[2] = {"echo", "victim"}, *const pools[2] = {"shared", "process"};
    double before[2][2] = {{0}};
    for (int k = 0; k < 2; k++) {
        char sl[64], pl[64];
        snprintf(sl, sizeof(sl), "service=\"%s\"", svcs[k]);
        snprintf(pl, sizeof(pl), "pool=\"%s\"", pools[k]);
        check_worker_sums(parsed, svcs[k], 2, 12);
        for (int i = 0; i < 2; i++) {
            char wl[32];
            snprintf(wl, sizeof(wl), "worker=\"%d\"", i);
            before[k][i] = mone(parsed, "shmipcd_worker_requests_total", sl, wl);
            /* One session each, holding one stream; its bytes are its requests'. */
            CU_ASSERT(mone(parsed, "shmipcd_worker_sessions", sl, wl) == 1);
            CU_ASSERT(mone(parsed, "shmipcd_worker_streams", sl, wl) == 1);
            CU_ASSERT(mone(parsed, "shmipcd_worker_request_bytes_total", sl, wl) ==
                      8 * before[k][i]);
            CU_ASSERT(mone(parsed, "shmipcd_worker_response_bytes_total", sl, wl) ==
                      8 * before[k][i]);
            CU_ASSERT(mone(parsed, "shmipcd_worker_requests_total", pl, wl) >= 0);
        }
        /* The sessions of 7 and 5 calls, one per worker. */
        CU_ASSERT((before[k][0] == 7 && before[k][1] == 5) ||
                  (before[k][0] == 5 && before[k][1] == 7));
    }
    CU_ASSERT(mone(parsed, "shmipcd_worker_process_sessions", "service=\"victim\"", NULL) == 2);
    CU_ASSERT(mone(parsed, "shmipcd_streams", "service=\"victim\"", NULL) == 2);
    /* Over HTTP, as a Prometheus server scrapes it. */
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0 && connect(fd, (struct sockaddr *)&in, sizeof(in)) == 0);
    static const char get[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    REQUIRE(write(fd, get, sizeof(get) - 1) == (ssize_t)(sizeof(get) - 1));
    size_t n = 0;
    ssize_t r;
    while (n < sizeof(out) - 1 && (r = read(fd, out + n, sizeof(out) - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    CU_ASSERT(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
    const char *body = strstr(out, "\r\n\r\n");
    REQUIRE(body != NULL);
    CHECK_EQ(parse_metrics(&f, body + 4, parsed, sizeof(parsed)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(parsed, "shmipcd_requests_total{service=\"echo\"} 12\n"));
    CU_ASSERT(mone(parsed, "shmipcd_worker_requests_total", "service=\"victim\"", "worker=\"0\"") ==
              before[1][0]);
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "status", "--json"), 0);
    CU_ASSERT(strncmp(out, "{\"pid\":", 7) == 0 &&
              strstr(out, "\"name\":\"echo\"") != NULL && strstr(out, "\"sessions\":2") != NULL);
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "sessions", NULL), 0);
    char want[96];
    snprintf(want, sizeof(want), "service echo, worker shared ");
    CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
    snprintf(want, sizeof(want), "peer pid %d uid %d", (int)getpid(), (int)getuid());
    CU_ASSERT_PTR_NOT_NULL(strstr(out, want));

    /* The victim's process dies (both its sessions with it) and is
     * respawned: its per-worker counters go on from where they were. */
    const char *pid_label = strstr(parsed, "shmipcd_worker_process_sessions{");
    char old_pid[64] = "";
    if (pid_label != NULL && (pid_label = strstr(pid_label, "pid=\"")) != NULL)
        snprintf(old_pid, sizeof(old_pid), "%.*s",
                 (int)(strchr(pid_label + 5, '"') - pid_label + 1), pid_label);
    CU_ASSERT(old_pid[0] != '\0');
    for (int k = 2; k < NCL; k++) {
        shmipc_stream_close(st[k]);
        st[k] = NULL;
    }
    CU_ASSERT(echo_call_new(c[2], "crash now") < 0);
    int after_calls = 0;
    for (int k = 2; k < NCL; k++) {
        uint64_t dl = du_deadline(POLL_MS);
        while (echo_call_new(c[k], "again") != 0 && !du_past(dl))
            du_sleep_ms(10);
        REQUIRE(!du_past(dl));
        after_calls++;
    }
    for (int i = 0; i < 3; i++, after_calls++)
        REQUIRE(echo_call_new(c[2], "and again") == 0);
    REQUIRE(scrape_settled(&f, "victim", 2, out, sizeof(out), parsed, sizeof(parsed)) == 0);
    check_worker_sums(parsed, "victim", 2, 12 + after_calls);
    for (int i = 0; i < 2; i++) {
        char wl[32];
        snprintf(wl, sizeof(wl), "worker=\"%d\"", i);
        CU_ASSERT(mone(parsed, "shmipcd_worker_requests_total", "service=\"victim\"", wl) >=
                  before[1][i]);
    }
    CU_ASSERT(mone(parsed, "shmipcd_worker_process_restarts_total", "service=\"victim\"", NULL) ==
              1);
    /* One process now, a new one, with both sessions. */
    CU_ASSERT(mone(parsed, "shmipcd_worker_process_sessions", "service=\"victim\"", NULL) == 2);
    int nold = -1;
    msum(parsed, "shmipcd_worker_process_sessions", old_pid, NULL, &nold);
    CU_ASSERT(old_pid[0] != '\0' && nold == 0);
    /* A client of echo goes: its worker's gauges go down with it. */
    shmipc_client_put(c[1], st[1]);
    st[1] = NULL;
    shmipc_client_close(c[1]);
    c[1] = NULL;
    REQUIRE(scrape_settled(&f, "echo", 1, out, sizeof(out), parsed, sizeof(parsed)) == 0);
    check_worker_sums(parsed, "echo", 2, 12);
    CU_ASSERT(msum(parsed, "shmipcd_worker_streams", "service=\"echo\"", NULL, NULL) == 1);
out:
    if (fd >= 0)
        close(fd);
    for (int k = 0; k < NCL; k++) {
        if (st[k] != NULL)
            shmipc_client_put(c[k], st[k]);
        if (c[k] != NULL)
            shmipc_client_close(c[k]);
    }
    dfx_end(&f);
    if (core_saved)
        setrlimit(RLIMIT_CORE, &core);
}

/* shmipcd -t: a socket in a directory that is not there is refused (the
 * daemon would fail at start), naming the directory. */
static void test_check_socket_dirs(void)
{
    struct fx f;
    char out[4096];
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_add(&t, "services = (\n  { name = \"e\"; listen = \"unix:%s/nowhere/e.sock\"; "
                    "plugin = \"%s\"; }\n",
                f.d.dir, du_plugin_path("echo"));
    REQUIRE(du_conf_write(&t, &f.d, "dirs.conf") == 0);
    const char *argv[] = {f.d.shmipcd, "-t", "-c", f.d.conf, NULL};
    CHECK_EQ(dfx_run_capture(argv, out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "/nowhere of "));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "does not exist"));
out:
    dfx_end(&f);
}

static const struct test_case cases[] = {
    {"many clients x streams, echo and greeter, both modes", test_many_clients},
    {"a slow handshake does not delay others", test_slow_handshake},
    {"bad configurations are refused (-t and start)", test_bad_configs},
    {"SIGTERM under load: answered or clean error, clean exit", test_sigterm_under_load},
    {"a SIGKILLed client's session and pool are freed", test_client_sigkill},
    {"shmipcctl status, stats, stats --json, stop", test_shmipcctl},
    {"watch: a replaced plugin file reloads the service", test_watch},
    {"limits: allowlist, per-uid sessions, streams, idle timeout", test_limits},
    {"forward: the request's slices answer, copied when mixed", test_forward},
    {"one daemon per socket and pid file", test_one_daemon_per_socket},
    {"systemd notifications", test_systemd_notify},
    {"metrics, status --json and sessions", test_metrics},
    {"shmipcd -t checks socket directories", test_check_socket_dirs},
    {NULL, NULL},
};

const struct test_suite suite_daemon = {"daemon", cases};
