/*
 * Process isolation against the real shmipcd: a service with isolation =
 * "process" runs its plugin in a worker process of its own. A plugin that
 * crashes takes down only that process: the crash is logged with the
 * plugin's name and the signal, the master and the other services never
 * notice, the service serves again once its process is respawned, and the
 * master's fds come back to where they were. crash_limit marks it failed;
 * handler_kill_ms kills a process whose handler never returns;
 * max_rss_bytes replaces one that grew too big; a reload starts a new
 * process; stale private directories of dead daemons go at start. The
 * crash and hog test plugins crash, hang or grow on request: no timing.
 */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/daemon_fixture.h"
#include "../common/load_fixture.h"

static int start_isolated(struct fx *f, const char *keys)
{
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f->d, NULL);
    du_conf_add(&t,
                "  { name = \"victim\"; listen = \"%s\"; plugin = \"%s\"; isolation = \"process\"; "
                "%s },\n",
                du_addr(&f->d, "victim"), du_test_plugin_path("crash"), keys ? keys : "");
    du_conf_service(&t, &f->d, 1, "echo", du_plugin_path("echo"), NULL);
    int rc = du_conf_write(&t, &f->d, "iso.conf");
    return rc < 0 ? rc : du_start(&f->d, START_MS);
}

static int open_client(const struct fx *f, const char *svc, shmipc_client **out)
{
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = du_addr(&f->d, svc);
    cfg.reconnect_min_ms = 10;
    cfg.reconnect_max_ms = 50;
    return shmipc_client_open(&cfg, out);
}

/* One request on a fresh stream of c; 0 when it came back equal. */
static int call_text(shmipc_client *c, const char *text)
{
    shmipc_stream *st;
    int rc = shmipc_client_get(c, &st);
    if (rc < 0)
        return rc;
    shmipc_msg m;
    rc = shmipc_call(st, text, strlen(text), &m, RECV_MS);
    if (rc == 0) {
        char buf[128] = "";
        size_t n = shmipc_msg_copy(&m, 0, buf, sizeof(buf) - 1);
        rc = n == strlen(text) && memcmp(buf, text, n) == 0 ? 0 : -1;
        shmipc_msg_release(&m);
        shmipc_client_put(c, st);
    } else {
        shmipc_stream_close(st);
    }
    return rc;
}

/* Retries (bounded) until the service answers again. */
static int call_until_ok(shmipc_client *c, const char *text)
{
    uint64_t dl = du_deadline(POLL_MS);
    int rc;
    while ((rc = call_text(c, text)) != 0 && !du_past(dl))
        du_sleep_ms(10);
    return rc;
}

static int wait_log(const struct fx *f, const char *needle, int n)
{
    uint64_t dl = du_deadline(POLL_MS);
    while (dfx_log_count(&f->d, needle) < n && !du_past(dl))
        du_sleep_ms(20);
    return dfx_log_count(&f->d, needle);
}

/* The pid of service svc's serving process, from `shmipcctl status`. */
static long serving_pid(const struct fx *f, const char *svc)
{
    char out[8192], key[64];
    if (dfx_ctl(&f->d, out, sizeof(out), "status", NULL) != 0)
        return -1;
    int klen = snprintf(key, sizeof(key), "service %s process ", svc);
    const char *p = strstr(out, key);
    long pid = -1;
    for (; p != NULL; p = strstr(p + 1, key)) {
        long v;
        char state[32];
        if (sscanf(p + klen, "%ld: %31[a-z]", &v, state) == 2 && strcmp(state, "serving") == 0)
            pid = v;
    }
    return pid;
}

static long victim_pid(const struct fx *f)
{
    return serving_pid(f, "victim");
}

static void test_crash_is_contained(void)
{
    struct fx f;
    shmipc_client *vc = NULL, *ec = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(start_isolated(&f, NULL) == 0);
    REQUIRE(open_client(&f, "victim", &vc) == 0 && open_client(&f, "echo", &ec) == 0);
    CHECK_EQ(call_text(vc, "before"), 0);
    CHECK_EQ(call_text(ec, "before"), 0);
    long pid0 = victim_pid(&f);
    REQUIRE(pid0 > 0);
    int fds0 = du_count_fds(f.d.pid), maps0 = du_count_shared_maps(f.d.pid);
    for (int round = 1; round <= 3; round++) {
        CU_ASSERT(call_text(vc, "crash now") < 0); /* its process dies under it */
        CHECK_EQ(wait_log(&f, "killed by signal 11", round), round);
        CHECK_EQ(call_text(ec, "the others never notice"), 0);
        CHECK_EQ(call_until_ok(vc, "served again"), 0);
    }
    CU_ASSERT(victim_pid(&f) != pid0);
    /* One line says what died, with the plugin, and how many sessions. */
    CU_ASSERT(dfx_log_count(&f.d, "(plugin crash 1.0.0, generation 1); 1 sessions closed") >= 1);
    /* The process said where it died. */
    CU_ASSERT(dfx_log_count(&f.d, "(service victim): fatal signal 11 at address 0x") >= 1);
    char out[8192];
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "status", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "service victim processes: restarts 3"));
    /* The master holds what it held (the sessions and pools went with
     * the process). */
    CHECK_EQ(du_count_fds(f.d.pid), fds0);
    CHECK_EQ(du_count_shared_maps(f.d.pid), maps0);
out:
    if (vc != NULL)
        shmipc_client_close(vc);
    if (ec != NULL)
        shmipc_client_close(ec);
    dfx_end(&f);
}

/* One request on a fresh stream of c; its answer as text in buf. */
static int call_answer(shmipc_client *c, const char *text, char *buf, size_t cap)
{
    shmipc_stream *st;
    int rc = shmipc_client_get(c, &st);
    if (rc < 0)
        return rc;
    shmipc_msg m;
    rc = shmipc_call(st, text, strlen(text), &m, RECV_MS);
    if (rc < 0) {
        shmipc_stream_close(st);
        return rc;
    }
    size_t n = shmipc_msg_copy(&m, 0, buf, cap - 1);
    buf[n] = '\0';
    shmipc_msg_release(&m);
    shmipc_client_put(c, st);
    return 0;
}

/* The pid of the process serving c's session, as the hog plugin says. */
static long served_by(shmipc_client *c)
{
    char buf[32];
    return call_answer(c, "pid", buf, sizeof(buf)) == 0 ? strtol(buf, NULL, 10) : -1;
}

/* A process that grows past max_rss_bytes is replaced once its successor
 * is ready: new sessions go to the new one, and the old one's sessions
 * move over after a HotRestart before it exits. */
static void test_max_rss_replaces(void)
{
    struct fx f;
    shmipc_client *old_c = NULL, *new_c = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, "drain_timeout_ms = 600000;");
    du_conf_add(&t,
                "  { name = \"hog\"; listen = \"%s\"; plugin = \"%s\"; isolation = \"process\"; "
                "max_rss_bytes = 67108864; }\n",
                du_addr(&f.d, "hog"), du_test_plugin_path("hog"));
    REQUIRE(du_conf_write(&t, &f.d, "rss.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    REQUIRE(open_client(&f, "hog", &old_c) == 0);
    long pid1 = served_by(old_c);
    REQUIRE(pid1 > 0);
    /* Below the limit nothing happens: the master looks once a second. */
    char buf[64];
    CHECK_EQ(call_answer(old_c, "hog 8", buf, sizeof(buf)), 0);
    du_sleep_ms(1500);
    CHECK_EQ(dfx_log_count(&f.d, "(max_rss_bytes 67108864): replacing it"), 0);
    CHECK_EQ(call_answer(old_c, "hog 80", buf, sizeof(buf)), 0);
    CU_ASSERT_STRING_EQUAL(buf, "hogged 80");
    char line[160];
    snprintf(line, sizeof(line), "service hog: worker process %ld uses ", pid1);
    CHECK_EQ(wait_log(&f, line, 1), 1);
    CHECK_EQ(wait_log(&f, "(max_rss_bytes 67108864): replacing it", 1), 1);
    /* The successor serves new sessions once it is ready. */
    uint64_t dl = du_deadline(POLL_MS);
    long pid2;
    while ((pid2 = serving_pid(&f, "hog")) == pid1 && !du_past(dl))
        du_sleep_ms(20);
    CU_ASSERT(pid2 > 0 && pid2 != pid1);
    REQUIRE(open_client(&f, "hog", &new_c) == 0);
    CHECK_EQ(served_by(new_c), pid2);
    /* The old one tells its session HotRestart: the client moves to the
     * successor and acks, and the old process exits (its drain deadline
     * is ten minutes away: only the ack can end it now). */
    snprintf(line, sizeof(line), "service hog: worker process %ld exited with status 0", pid1);
    CHECK_EQ(wait_log(&f, line, 1), 1);
    long now = -1;
    dl = du_deadline(POLL_MS);
    while ((now = served_by(old_c)) != pid2 && !du_past(dl))
        du_sleep_ms(10);
    CHECK_EQ(now, pid2);
    CHECK_EQ(call_text(new_c, "after"), 0);
    /* Replaced once: the new process is small. */
    CHECK_EQ(dfx_log_count(&f.d, "(max_rss_bytes 67108864): replacing it"), 1);
out:
    if (old_c != NULL)
        shmipc_client_close(old_c);
    if (new_c != NULL)
        shmipc_client_close(new_c);
    dfx_end(&f);
}

static void test_crash_limit(void)
{
    struct fx f;
    shmipc_client *vc = NULL, *ec = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(start_isolated(&f, "crash_limit = 2;") == 0);
    REQUIRE(open_client(&f, "victim", &vc) == 0 && open_client(&f, "echo", &ec) == 0);
    CU_ASSERT(call_text(vc, "crash") < 0);
    CHECK_EQ(call_until_ok(vc, "once more"), 0);
    CU_ASSERT(call_text(vc, "crash") < 0);
    CHECK_EQ(wait_log(&f, "crashed 2 times within a minute (crash_limit 2)", 1), 1);
    char out[8192];
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "status", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "failed: its worker process crashed 2 times"));
    /* It refuses, saying why; the others serve. */
    CU_ASSERT(call_text(vc, "refused") < 0);
    CHECK_EQ(wait_log(&f, "service victim: connection refused: failed:", 1), 1);
    CHECK_EQ(call_text(ec, "fine"), 0);
    /* A reload starts it again. */
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "reload", NULL), 0);
    CHECK_EQ(call_until_ok(vc, "back"), 0);
out:
    if (vc != NULL)
        shmipc_client_close(vc);
    if (ec != NULL)
        shmipc_client_close(ec);
    dfx_end(&f);
}

static void test_handler_kill(void)
{
    struct fx f;
    shmipc_client *vc = NULL;
    shmipc_stream *st = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(start_isolated(&f, "handler_kill_ms = 200;") == 0);
    REQUIRE(open_client(&f, "victim", &vc) == 0 && shmipc_client_get(vc, &st) == 0);
    REQUIRE(shmipc_stream_write(st, "hang", 4) == 0 && shmipc_stream_flush(st) == 0);
    shmipc_msg m;
    CU_ASSERT(shmipc_stream_recv(st, &m, RECV_MS) < 0); /* killed, not answered */
    shmipc_stream_close(st);
    st = NULL;
    CHECK_EQ(wait_log(&f, "(handler_kill_ms 200): killing worker process", 1), 1);
    CHECK_EQ(call_until_ok(vc, "after the kill"), 0);
out:
    if (st != NULL)
        shmipc_stream_close(st);
    if (vc != NULL)
        shmipc_client_close(vc);
    dfx_end(&f);
}

/* ---- reload under load ---- */

static int write_victim_conf(struct fx *f, const char *plugin, int version)
{
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f->d, "drain_timeout_ms = 600000;");
    du_conf_add(&t,
                "  { name = \"victim\"; listen = \"%s\"; plugin = \"%s\"; isolation = \"process\"; "
                "workers = 2; config = { version = %d; }; },\n",
                du_addr(&f->d, "victim"), plugin, version);
    du_conf_service(&t, &f->d, 1, "echo", du_plugin_path("echo"), NULL);
    return du_conf_write(&t, &f->d, "iso.conf");
}

/* Reloads of a process-mode service under load, from threaded and
 * event-loop clients in both handshake modes: each reload starts a new
 * process; the old one tells its sessions HotRestart, the clients move to
 * the new process and ack, and the old process exits long before its
 * drain deadline (ten minutes here: only the acks can end it so soon).
 * Not one request fails. */
static void test_reload_under_load(void)
{
    struct fx f;
    char prefix[4][128];
    struct load ls[4];
    load_mix(ls);
    unsigned n = 4, started = 0;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(write_victim_conf(&f, du_test_plugin_path("crash"), 1) == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    for (; started < n; started++) {
        snprintf(prefix[started], sizeof(prefix[started]), "/dev/shm/%sl%u", dfx_shm_name(),
                 started);
        ls[started].address = du_addr(&f.d, "victim");
        ls[started].path_prefix = prefix[started];
        ls[started].index = started;
        ls[started].timeout_ms = RECV_MS;
        REQUIRE(load_start(&ls[started]) == 0);
    }
    unsigned long since[4] = {0};
    CHECK_EQ(load_progress(ls, n, since, 50, POLL_MS), 0);
    long pid = victim_pid(&f);
    for (int gen = 2; gen <= 4; gen++) {
        REQUIRE(write_victim_conf(&f, du_test_plugin_path("crash"), gen) == 0);
        char out[8192], line[96];
        CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "reload", NULL), 0);
        snprintf(line, sizeof(line), "service victim: generation %d", gen);
        CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
        snprintf(line, sizeof(line), "worker process %ld exited with status 0 (generation %d)",
                 pid, gen - 1);
        CHECK_EQ(wait_log(&f, line, 1), 1);
        long now = victim_pid(&f);
        CU_ASSERT(now > 0 && now != pid);
        pid = now;
        load_counts(ls, n, since);
        CHECK_EQ(load_progress(ls, n, since, 50, POLL_MS), 0);
    }
out:
    CHECK_EQ(load_stop_all(ls, started), 0);
    dfx_end(&f);
}

/* State across a reload in process mode: the old process saves (the
 * plugin's save hook), the master carries the bytes, the new process
 * restores them before it serves. tallyhooks counts requests. */
static void test_reload_carries_state(void)
{
    struct fx f;
    shmipc_client *c = NULL;
    char buf[32];
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(write_victim_conf(&f, du_test_plugin_path("tallyhooks"), 1) == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    REQUIRE(open_client(&f, "victim", &c) == 0);
    for (int i = 1; i <= 5; i++)
        CHECK_EQ(call_answer(c, "x", buf, sizeof(buf)), 0);
    CU_ASSERT_STRING_EQUAL(buf, "5");
    long pid1 = victim_pid(&f);
    REQUIRE(write_victim_conf(&f, du_test_plugin_path("tallyhooks"), 2) == 0);
    char out[8192];
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "reload", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "state of generation 1 restored"));
    CU_ASSERT(victim_pid(&f) != pid1);
    CHECK_EQ(call_answer(c, "x", buf, sizeof(buf)), 0);
    CU_ASSERT_STRING_EQUAL(buf, "6");
out:
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* A private plugin directory of a shmipcd that is gone is removed at
 * start. Under a TMPDIR of this test's own, so that no other shmipcd on
 * the machine looks there; the pid is that of a child already reaped. */
extern char **environ;

static int cmdline_names(pid_t pid, const char *name)
{
    char path[64], buf[256] = "";
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    return strcmp(buf, name) == 0;
}

static void test_stale_dirs_removed(void)
{
    struct fx f;
    char stale[160], file[200], line[220], kept[160] = "";
    int tmpdir_set = 0;
    pid_t alive = -1;
    REQUIRE(dfx_begin(&f) == 0);
    pid_t gone = fork();
    REQUIRE(gone >= 0);
    if (gone == 0)
        _exit(0);
    REQUIRE(waitpid(gone, NULL, 0) == gone);
    snprintf(stale, sizeof(stale), "%s/shmipcd-%d-abcdef", f.d.dir, (int)gone);
    snprintf(file, sizeof(file), "%s/echo.so.gen1", stale);
    REQUIRE(mkdir(stale, 0700) == 0);
    REQUIRE(du_write_file(file, "x") == 0);
    /* A live process whose command line names a shmipcd binary (as under
     * valgrind, where the process name is the tool's) keeps its own. */
    char *argv[] = {"shmipcd-under-a-tool", "30", NULL};
    REQUIRE(posix_spawn(&alive, "/bin/sleep", NULL, NULL, argv, environ) == 0);
    snprintf(kept, sizeof(kept), "%s/shmipcd-%d-ghijkl", f.d.dir, (int)alive);
    REQUIRE(mkdir(kept, 0700) == 0);
    uint64_t dl = du_deadline(POLL_MS); /* until the exec happened */
    while (!cmdline_names(alive, "shmipcd-under-a-tool") && !du_past(dl))
        du_sleep_ms(5);
    REQUIRE(setenv("TMPDIR", f.d.dir, 1) == 0);
    tmpdir_set = 1;
    REQUIRE(start_isolated(&f, NULL) == 0);
    unsetenv("TMPDIR");
    tmpdir_set = 0;
    CU_ASSERT(!du_exists(stale));
    CU_ASSERT(du_exists(kept));
    snprintf(line, sizeof(line), "removing %s: its shmipcd (pid %d) is gone", stale, (int)gone);
    CHECK_EQ(dfx_log_count(&f.d, line), 1);
    CHECK_EQ(dfx_log_count(&f.d, "removing"), 1);
out:
    if (tmpdir_set)
        unsetenv("TMPDIR");
    if (alive > 0) {
        kill(alive, SIGKILL);
        du_reap(alive, POLL_MS);
    }
    if (kept[0] != '\0')
        rmdir(kept);
    unlink(file);
    rmdir(stale);
    dfx_end(&f);
}

static void test_isolation_keys_checked(void)
{
    struct fx f;
    char out[4096];
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_add(&t, "  { name = \"e\"; listen = \"%s\"; plugin = \"%s\"; crash_limit = 3; }\n",
                du_addr(&f.d, "e"), du_plugin_path("echo"));
    REQUIRE(du_conf_write(&t, &f.d, "k.conf") == 0);
    const char *argv[] = {f.d.shmipcd, "-t", "-c", f.d.conf, NULL};
    CHECK_EQ(dfx_run_capture(argv, out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "crash_limit"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "needs isolation = \"process\""));
    t.n = 0;
    du_conf_head(&t, &f.d, NULL);
    du_conf_add(&t, "  { name = \"e\"; listen = \"%s\"; plugin = \"%s\"; isolation = \"proc\"; }\n",
                du_addr(&f.d, "e"), du_plugin_path("echo"));
    REQUIRE(du_conf_write(&t, &f.d, "k.conf") == 0);
    CHECK_EQ(dfx_run_capture(argv, out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"proc\" is not \"thread\" or \"process\""));
out:
    dfx_end(&f);
}

static const struct test_case cases[] = {
    {"a crash takes down only its own process, which is respawned", test_crash_is_contained},
    {"crash_limit marks the service failed until a reload", test_crash_limit},
    {"handler_kill_ms kills a process whose handler hangs", test_handler_kill},
    {"max_rss_bytes replaces a process that grew too big", test_max_rss_replaces},
    {"reloads under load move every client to the new process, none fails",
     test_reload_under_load},
    {"a reload carries the plugin's state to the new process", test_reload_carries_state},
    {"stale private directories are removed at start", test_stale_dirs_removed},
    {"isolation keys are checked", test_isolation_keys_checked},
    {NULL, NULL},
};

const struct test_suite suite_isolation = {"isolation", cases};
