/*
 * Hot reload through a running shmipcd: the real shmipcd and shmipcctl,
 * configurations in a mkdtemp directory, clients in this process
 * (libshmipc, memfd and file mode).
 *
 * The one rule: nothing here forks. Clients run threads in this process,
 * so shmipcd and shmipcctl are started with posix_spawn (no code of ours
 * runs in the child). A check that must stop a test (REQUIRE) jumps to
 * its `out:` label, where rd_end() closes the clients, stops shmipcd
 * (SIGTERM, SIGKILL after a deadline, exit 0 expected), fails the test on
 * a sanitizer report in shmipcd's log and removes everything of the run.
 * Every wait is bounded; no check is on time.
 *
 * Binaries and plugins: $SHMIPC_BIN, $SHMIPC_PLUGINS, $SHMIPC_TEST_PLUGINS,
 * else the layout next to this program ($TOP/tests/unit_tests).
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/daemon_util.h"
#include "shmipc/shmipc.h"
#include "testutil.h"

#define START_MS 15000 /* shmipcd to answer on its admin socket */
#define STOP_MS 15000  /* shmipcd to exit after SIGTERM */
#define CMD_MS 15000   /* one admin command or shmipcctl run */
#define POLL_MS 10000  /* a state that should be reached */
#define RECV_MS 10000  /* an answer that should come */

/* ---- checks ---- */

/* `text` holds `needle`; says what it saw when not. */
#define CHECK_HAS(text, needle) CU_ASSERT_TRUE(has_((text), (needle), __LINE__))
#define CHECK_HASNT(text, needle) CU_ASSERT_FALSE(hasnt_((text), (needle), __LINE__))

static int has_(const char *text, const char *needle, int line)
{
    if (text != NULL && strstr(text, needle) != NULL)
        return 1;
    fprintf(stderr, "\n  test_reload.c:%d: missing \"%s\" in:\n%s\n", line, needle,
            text ? text : "(null)");
    return 0;
}

static int hasnt_(const char *text, const char *needle, int line)
{
    if (text == NULL || strstr(text, needle) == NULL)
        return 0;
    fprintf(stderr, "\n  test_reload.c:%d: unexpected \"%s\" in:\n%s\n", line, needle, text);
    return 1;
}

/* Nothing here forks: shmipcd and shmipcctl start with posix_spawn. */
static const struct du_spawn_opts spawn_opts = {.no_fork = 1};

/* The /dev/shm name prefix of file-mode clients of this run. */
static const char *shm_name(void)
{
    static char b[64];
    if (b[0] == '\0')
        snprintf(b, sizeof(b), "shmipc-rldtest-%d-", (int)getpid());
    return b;
}

/* Files in shmipcd <pid>'s private plugin directories: its generations'
 * copies still loaded. */
static int plugin_copies(pid_t pid)
{
    char want[64];
    snprintf(want, sizeof(want), "shmipcd-%d-", (int)pid);
    DIR *d = opendir("/tmp");
    int n = 0;
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, want, strlen(want)) != 0)
            continue;
        char path[512];
        snprintf(path, sizeof(path), "/tmp/%s", e->d_name);
        DIR *sub = opendir(path);
        struct dirent *g;
        while (sub != NULL && (g = readdir(sub)) != NULL)
            n += g->d_name[0] != '.';
        if (sub != NULL)
            closedir(sub);
    }
    if (d != NULL)
        closedir(d);
    return n;
}

/* ---- the fixture ---- */

#define MAX_CLIENTS 8

struct rd {
    struct du_daemon d;
    shmipc_client *cl[MAX_CLIENTS];
    unsigned failures_before;
};

static int rd_begin(struct rd *f)
{
    memset(f, 0, sizeof(*f));
    f->failures_before = CU_get_number_of_failures();
    int rc = du_init(&f->d, "/tmp/shmipc-reload-test-XXXXXX");
    f->d.spawn = spawn_opts;
    return rc;
}

/* Copies src over <dir>/<name> the way a deployment does: a whole new
 * file renamed into place. */
static int install(const struct rd *f, const char *src, const char *name)
{
    int rc = du_copy_file(src, du_path(&f->d, name));
    if (rc < 0)
        fprintf(stderr, "\n  cannot install %s as %s: %s\n", src, name, strerror(-rc));
    return rc;
}

/* Writes the configuration: workers, log, admin, then the services
 * (NULL-terminated list of entries from du_service_entry). */
static int rd_conf(struct rd *f, const char *first, ...)
{
    struct du_conf c = {.n = 0};
    du_conf_head(&c, &f->d, NULL);
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s != NULL; s = va_arg(ap, const char *))
        du_conf_add(&c, "%s%s\n", s == first ? "" : ",", s);
    va_end(ap);
    return du_conf_write(&c, &f->d, "shmipcd.conf");
}

/* The configuration of the one service `name` (plugin path, config group
 * or NULL). */
static int rd_conf_one(struct rd *f, const char *name, const char *plugin, const char *conf)
{
    char svc[1024];
    du_service_entry(svc, sizeof(svc), &f->d, name, plugin, conf);
    return rd_conf(f, svc, NULL);
}

/* One admin command on the socket itself: the reply length, or < 0. */
static int admin(const struct rd *f, const char *cmd, char *out, size_t cap)
{
    return du_admin(f->d.admin, cmd, out, cap, CMD_MS);
}

/* shmipcctl -s <admin> cmd: its exit code, output in out. */
static int ctl(const struct rd *f, const char *cmd, char *out, size_t cap)
{
    const char *argv[] = {du_bin_path("shmipcctl"), "-s", f->d.admin, cmd, NULL};
    int rc = du_run_capture(argv, out, cap, CMD_MS, &spawn_opts);
    CU_ASSERT_PTR_NULL(du_sanitizer_report(out));
    return rc;
}

/* Starts shmipcd on its configuration: 0 once it answers on its admin
 * socket. */
static int rd_start(struct rd *f)
{
    int rc = du_start(&f->d, START_MS);
    if (rc > 0)
        fprintf(stderr, "\n  shmipcd exited at start (exit %d)\n", rc);
    return rc;
}

static int rd_stop(struct rd *f)
{
    return du_stop(&f->d, SIGTERM, STOP_MS);
}

static void rd_close_clients(struct rd *f)
{
    for (unsigned i = 0; i < MAX_CLIENTS; i++) {
        if (f->cl[i] != NULL)
            shmipc_client_close(f->cl[i]);
        f->cl[i] = NULL;
    }
}

static void rd_end(struct rd *f)
{
    rd_close_clients(f);
    if (f->d.pid > 0) {
        int rc = rd_stop(f);
        if (rc != 0)
            fprintf(stderr, "\n  shmipcd stopped with %d at the end of the test\n", rc);
        CU_ASSERT_EQUAL(rc, 0);
    }
    if (f->d.dir[0] == '\0')
        return;
    CU_ASSERT_PTR_NULL(du_log_check(&f->d, CU_get_number_of_failures() != f->failures_before));
    if (f->d.last_pid > 0)
        CHECK_EQ(du_daemon_tmpdirs(f->d.last_pid, 1), 0);
    CHECK_EQ(tu_count_shm(shm_name()), 0);
    du_remove_prefix("/dev/shm", shm_name());
    CU_ASSERT_EQUAL(du_remove_dir(f->d.dir), 0);
    f->d.dir[0] = '\0';
}

/* ---- status ---- */

struct status {
    unsigned long reloads, refused, finished;
    unsigned draining;
};

static int parse_status(const char *txt, struct status *s)
{
    memset(s, 0, sizeof(*s));
    const char *p = strstr(txt, "\nreloads ");
    return p != NULL && sscanf(p + 1,
                               "reloads %lu (refused %lu), generations finished %lu, still "
                               "draining %u",
                               &s->reloads, &s->refused, &s->finished, &s->draining) == 4
               ? 0
               : -1;
}

/* 1 when the reload counters are these; says what they were when not. */
static int counts_are(const struct status *s, unsigned long reloads, unsigned long refused,
                      unsigned long finished)
{
    if (s->reloads == reloads && s->refused == refused && s->finished == finished)
        return 1;
    fprintf(stderr, "\n  reloads %lu (refused %lu), finished %lu; expected %lu (%lu), %lu\n",
            s->reloads, s->refused, s->finished, reloads, refused, finished);
    return 0;
}

/* Polls status until it counts `reloads` reloads (a SIGHUP's reload is
 * not waited for by anyone); s and out hold the last reply. */
static void wait_reloads(const struct rd *f, struct status *s, unsigned long reloads, char *out,
                         size_t cap)
{
    uint64_t dl = du_deadline(POLL_MS);
    do {
        if (admin(f, "status", out, cap) > 0 && parse_status(out, s) == 0 && s->reloads >= reloads)
            return;
        du_sleep_ms(10);
    } while (!du_past(dl));
}

/* Polls status until no generation and no removed service drains; the
 * last reply stays in out. 0 when reached. */
static int wait_drained(const struct rd *f, struct status *s, char *out, size_t cap)
{
    uint64_t dl = du_deadline(POLL_MS);
    do {
        if (admin(f, "status", out, cap) > 0 && parse_status(out, s) == 0 && s->draining == 0 &&
            strstr(out, ", draining\n") == NULL)
            return 0;
        du_sleep_ms(10);
    } while (!du_past(dl));
    fprintf(stderr, "\n  still draining:\n%s\n", out);
    return -1;
}

/* The status line of service `name`, as status prints it. */
static const char *svc_line(const struct rd *f, const char *name, const char *plugin, unsigned gen,
                            unsigned draining)
{
    static char b[4][512];
    static unsigned k;
    char *p = b[k++ % 4];
    snprintf(p, sizeof(b[0]),
             "service %s: listen %s, plugin %s, generation %u, draining generations %u, ", name,
             du_addr(&f->d, name), plugin, gen, draining);
    return p;
}

/* ---- clients in this process ---- */

static shmipc_client *rd_client(struct rd *f, const char *svc, enum shmipc_mem_mode mode)
{
    unsigned i = 0;
    while (i < MAX_CLIENTS && f->cl[i] != NULL)
        i++;
    if (i == MAX_CLIENTS)
        return NULL;
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "/dev/shm/%s%u", shm_name(), i);
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = du_addr(&f->d, svc);
    cfg.mode = mode;
    cfg.path_prefix = prefix;
    cfg.pool_bytes = 4u << 20;
    cfg.connect_timeout_ms = 5000;
    int rc = shmipc_client_open(&cfg, &f->cl[i]);
    if (rc < 0) {
        fprintf(stderr, "\n  shmipc_client_open(%s): %s\n", cfg.address, shmipc_strerror(rc));
        f->cl[i] = NULL;
        return NULL;
    }
    return f->cl[i];
}

static void rd_client_close(struct rd *f, shmipc_client *c)
{
    for (unsigned i = 0; i < MAX_CLIENTS; i++) {
        if (f->cl[i] == c) {
            shmipc_client_close(c);
            f->cl[i] = NULL;
        }
    }
}

/* The start of most tests: shmipcd serving the one service `name`, and a
 * memfd client of it. NULL when any of that failed (said on stderr). */
static shmipc_client *rd_serve_one(struct rd *f, const char *name, const char *plugin,
                                   const char *conf)
{
    if (rd_conf_one(f, name, plugin, conf) != 0) {
        fprintf(stderr, "\n  cannot write the configuration of service %s\n", name);
        return NULL;
    }
    int rc = rd_start(f);
    if (rc != 0) {
        fprintf(stderr, "\n  shmipcd did not start: %d\n", rc);
        return NULL;
    }
    return rd_client(f, name, SHMIPC_MODE_MEMFD);
}

/* rd_serve_one on a copy of the test plugin, <dir>/plugin.so, that the
 * test may replace. */
static shmipc_client *rd_serve_copy(struct rd *f, const char *name, const char *test_plugin)
{
    if (install(f, du_test_plugin_path(test_plugin), "plugin.so") != 0)
        return NULL;
    return rd_serve_one(f, name, du_path(&f->d, "plugin.so"), NULL);
}

/* 1 when m is exactly prefix followed by body. */
static int msg_is(const shmipc_msg *m, const char *prefix, const char *body)
{
    size_t pl = strlen(prefix), bl = strlen(body);
    if (m->len != pl + bl)
        return 0;
    char *b = malloc(m->len + 1);
    int ok = b != NULL && shmipc_msg_copy(m, 0, b, m->len) == m->len &&
             memcmp(b, prefix, pl) == 0 && memcmp(b + pl, body, bl) == 0;
    free(b);
    return ok;
}

/* One request on a pooled stream: 1 when answered with prefix + req. */
static int call_is(shmipc_client *c, const char *req, const char *prefix)
{
    shmipc_stream *s = NULL;
    shmipc_msg m = {0};
    int rc = c != NULL ? shmipc_client_get(c, &s) : SHMIPC_ENOSESSION;
    if (rc == 0)
        rc = shmipc_call(s, req, strlen(req), &m, RECV_MS);
    int ok = rc == 0 && msg_is(&m, prefix, req);
    if (!ok) {
        char got[128] = "";
        if (rc == 0)
            got[shmipc_msg_copy(&m, 0, got, sizeof(got) - 1)] = '\0';
        fprintf(stderr, "\n  request \"%s\": %s \"%s\", expected \"%s%s\"\n", req,
                rc ? shmipc_strerror(rc) : "answered", got, prefix, req);
    }
    shmipc_msg_release(&m);
    if (s != NULL) {
        if (rc == 0)
            shmipc_client_put(c, s);
        else
            shmipc_stream_close(s);
    }
    return ok;
}

/* One request on a pooled stream: 1 when the answer is exactly `want`. */
static int reply_is(shmipc_client *c, const char *req, const char *want)
{
    shmipc_stream *s = NULL;
    shmipc_msg m = {0};
    int rc = c != NULL ? shmipc_client_get(c, &s) : SHMIPC_ENOSESSION;
    if (rc == 0)
        rc = shmipc_call(s, req, strlen(req), &m, RECV_MS);
    int ok = rc == 0 && msg_is(&m, "", want);
    if (!ok) {
        char got[128] = "";
        if (rc == 0)
            got[shmipc_msg_copy(&m, 0, got, sizeof(got) - 1)] = '\0';
        fprintf(stderr, "\n  request \"%s\": %s \"%s\", expected \"%s\"\n", req,
                rc ? shmipc_strerror(rc) : "answered", got, want);
    }
    shmipc_msg_release(&m);
    if (s != NULL) {
        if (rc == 0)
            shmipc_client_put(c, s);
        else
            shmipc_stream_close(s);
    }
    return ok;
}

/* ---- tests ---- */

/* A reload of a file that did not change: "unchanged", nothing else. */
static void test_unchanged(void)
{
    struct rd f;
    char out[8192];
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *c = rd_serve_one(&f, "v", du_test_plugin_path("versioned"), NULL);
    REQUIRE(c != NULL);
    CU_ASSERT_TRUE(call_is(c, "before", "v1 "));

    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CU_ASSERT_EQUAL(strcmp(out, "reload: done\nservice v: unchanged (generation 1)\n"), 0);
    CHECK_HAS(out, "service v: unchanged (generation 1)\n");
    CU_ASSERT_TRUE(call_is(c, "after", "v1 "));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CU_ASSERT_TRUE(counts_are(&s, 1, 0, 0));
    CHECK_HAS(out, svc_line(&f, "v", "versioned 1.0.0", 1, 0));
out:
    rd_end(&f);
}

/* The plugin file replaced: a new generation; answers switch from v1 to
 * v2 on the sessions already open (both modes); the old generation is
 * finished. */
static void test_plugin_replaced(void)
{
    struct rd f;
    char out[8192];
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *cm = rd_serve_copy(&f, "v", "versioned");
    REQUIRE(cm != NULL);
    shmipc_client *cf = rd_client(&f, "v", SHMIPC_MODE_FILE);
    REQUIRE(cf != NULL);
    CU_ASSERT_TRUE(call_is(cm, "memfd before", "v1 "));
    CU_ASSERT_TRUE(call_is(cf, "file before", "v1 "));
    REQUIRE(admin(&f, "status", out, sizeof(out)) > 0);
    CHECK_HAS(out, svc_line(&f, "v", "versioned 1.0.0", 1, 0));

    REQUIRE(install(&f, du_test_plugin_path("versioned2"), "plugin.so") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CU_ASSERT_EQUAL(strncmp(out, "reload: done\n", 13), 0);
    CHECK_HAS(out, "service v: generation 2 (plugin versioned 2.0.0), generation 1 draining\n");
    /* The same sessions, the new code. */
    CU_ASSERT_TRUE(call_is(cm, "memfd after", "v2 "));
    CU_ASSERT_TRUE(call_is(cf, "file after", "v2 "));
    CHECK_EQ(shmipc_client_live_sessions(cm), 1);
    CHECK_EQ(shmipc_client_live_sessions(cf), 1);

    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CU_ASSERT_TRUE(counts_are(&s, 1, 0, 1));
    CHECK_HAS(out, svc_line(&f, "v", "versioned 2.0.0", 2, 0));
    char *log = du_read_file(f.d.log, NULL);
    CHECK_HAS(log, "service v: generation 1 finished");
    free(log);
    /* Only the serving generation's private copy is left. */
    CHECK_EQ(plugin_copies(f.d.pid), 1);
out:
    rd_end(&f);
}

/* The plugin's config group changed, the file did not: new generation. */
static void test_config_changed(void)
{
    struct rd f;
    char out[8192];
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *c = rd_serve_one(&f, "v", du_test_plugin_path("versioned"), "n = 1;");
    REQUIRE(c != NULL);
    CU_ASSERT_TRUE(call_is(c, "one", "v1 "));

    REQUIRE(rd_conf_one(&f, "v", du_test_plugin_path("versioned"), "n = 2;") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "reload: done\n");
    CHECK_HAS(out, "service v: generation 2 (plugin versioned 1.0.0), generation 1 draining\n");
    CU_ASSERT_TRUE(call_is(c, "two", "v1 "));
    /* Formatting only (same settings, other spacing): unchanged. */
    REQUIRE(rd_conf_one(&f, "v", du_test_plugin_path("versioned"), "n   =   2 ;") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "service v: unchanged (generation 2)\n");
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CHECK_EQ(s.finished, 1);
    CHECK_EQ(s.reloads, 2);
    CHECK_HAS(out, svc_line(&f, "v", "versioned 1.0.0", 2, 0));
out:
    rd_end(&f);
}

/* Broken plugins put in place: each reload refused with its cause, the
 * old generation keeps serving; a good file afterwards applies. */
static void test_broken_plugins(void)
{
    static const struct {
        const char *plugin, *cause;
    } bad[] = {
        {"badabi", "ABI major 2, host has 1"},
        {"failinit", "init failed: refusing to start: test"},
        {"failthread", "thread_init failed for worker"},
    };
    struct rd f;
    char out[8192];
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *c = rd_serve_copy(&f, "v", "versioned");
    REQUIRE(c != NULL);
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        REQUIRE(install(&f, du_test_plugin_path(bad[i].plugin), "plugin.so") == 0);
        int rc = ctl(&f, "reload", out, sizeof(out));
        CU_ASSERT(rc == 1);
        CU_ASSERT_EQUAL(strncmp(out, "error: reload: 1 service(s) refused", 35), 0);
        CHECK_HAS(out, "service v: refused: ");
        CHECK_HAS(out, bad[i].cause);
        CHECK_HAS(out, "; generation 1 keeps serving\n");
        CU_ASSERT_TRUE(call_is(c, bad[i].plugin, "v1 "));
        struct status s;
        REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
        CU_ASSERT_TRUE(counts_are(&s, i + 1, i + 1, 0));
        CHECK_HAS(out, svc_line(&f, "v", "versioned 1.0.0", 1, 0));
    }
    /* Nothing of the refused plugins stays loaded: one private copy. */
    CHECK_EQ(plugin_copies(f.d.pid), 1);
    REQUIRE(install(&f, du_test_plugin_path("versioned2"), "plugin.so") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "reload: done\n");
    CHECK_HAS(out, "(plugin versioned 2.0.0), generation 1 draining\n");
    CU_ASSERT_TRUE(call_is(c, "fixed", "v2 "));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CU_ASSERT_TRUE(counts_are(&s, 4, 3, 1));
out:
    rd_end(&f);
}

/* A configuration with a syntax error: refused as a whole, with file and
 * line; nothing changes, not even the parts that were fine. */
static void test_syntax_error(void)
{
    struct rd f;
    char out[8192], text[4096];
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *c = rd_serve_one(&f, "v", du_test_plugin_path("versioned"), NULL);
    REQUIRE(c != NULL);
    /* v switched to versioned2 and w added, but line 5 is broken. */
    snprintf(text, sizeof(text),
             "workers = 2;\nadmin = \"%s\";\nservices = (\n"
             "  { name = \"v\"; listen = \"%s\"; plugin = \"%s\"; },\n"
             "  { name = \"w\"; listen = \"%s\"; plugin = ; }\n);\n",
             f.d.admin, du_addr(&f.d, "v"), du_test_plugin_path("versioned2"), du_addr(&f.d, "w"));
    REQUIRE(du_write_file(f.d.conf, text) == 0);
    int rc = ctl(&f, "reload", out, sizeof(out));
    CU_ASSERT(rc == 1);
    CU_ASSERT_EQUAL(strncmp(out, "error: reload refused: ", 23), 0);
    char where[256];
    snprintf(where, sizeof(where), "%s:5", f.d.conf);
    CHECK_HAS(out, where);
    CHECK_HAS(out, "nothing changed\n");
    CU_ASSERT_TRUE(call_is(c, "still", "v1 "));
    CU_ASSERT_FALSE(du_exists(du_path(&f.d, "w.sock")));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CU_ASSERT_TRUE(counts_are(&s, 1, 1, 0));
    CHECK_HAS(out, svc_line(&f, "v", "versioned 1.0.0", 1, 0));
    CHECK_HASNT(out, "service w:");
    /* The admin socket's own reply: the same first line. */
    REQUIRE(admin(&f, "reload", out, sizeof(out)) > 0);
    CU_ASSERT_EQUAL(strncmp(out, "error: reload refused: ", 23), 0);
out:
    rd_end(&f);
}

/* A service added: its socket appears and serves; the others are
 * unchanged. */
static void test_service_added(void)
{
    struct rd f;
    char out[8192], a[1024], b[1024];
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *ca = rd_serve_one(&f, "a", du_test_plugin_path("versioned"), NULL);
    REQUIRE(ca != NULL);
    CU_ASSERT_FALSE(du_exists(du_path(&f.d, "b.sock")));

    du_service_entry(a, sizeof(a), &f.d, "a", du_test_plugin_path("versioned"), NULL);
    du_service_entry(b, sizeof(b), &f.d, "b", du_test_plugin_path("versioned2"), NULL);
    REQUIRE(rd_conf(&f, a, b, NULL) == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "reload: done\n");
    CHECK_HAS(out, "service a: unchanged (generation 1)\n");
    char want[512];
    snprintf(want, sizeof(want),
             "service b: added (generation 1, plugin versioned 2.0.0, listening on %s)\n",
             du_addr(&f.d, "b"));
    CHECK_HAS(out, want);
    CU_ASSERT_TRUE(du_exists(du_path(&f.d, "b.sock")));
    shmipc_client *cb = rd_client(&f, "b", SHMIPC_MODE_FILE);
    REQUIRE(cb != NULL);
    CU_ASSERT_TRUE(call_is(cb, "to b", "v2 "));
    CU_ASSERT_TRUE(call_is(ca, "to a", "v1 "));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CHECK_HAS(out, svc_line(&f, "a", "versioned 1.0.0", 1, 0));
    CHECK_HAS(out, svc_line(&f, "b", "versioned 2.0.0", 1, 0));
    CHECK_EQ(s.finished, 0);
out:
    rd_end(&f);
}

/* A service removed: its socket goes, its open sessions are closed (a
 * stream that was in use ends with an error, no new stream is had), its
 * generation finishes; the other service keeps serving. */
static void test_service_removed(void)
{
    struct rd f;
    char out[8192], a[1024], b[1024];
    shmipc_stream *held = NULL;
    REQUIRE(rd_begin(&f) == 0);
    du_service_entry(a, sizeof(a), &f.d, "a", du_test_plugin_path("versioned"), NULL);
    du_service_entry(b, sizeof(b), &f.d, "b", du_test_plugin_path("versioned2"), NULL);
    REQUIRE(rd_conf(&f, a, b, NULL) == 0);
    REQUIRE(rd_start(&f) == 0);
    shmipc_client *ca = rd_client(&f, "a", SHMIPC_MODE_MEMFD);
    shmipc_client *cb = rd_client(&f, "b", SHMIPC_MODE_MEMFD);
    shmipc_client *cb2 = rd_client(&f, "b", SHMIPC_MODE_FILE);
    REQUIRE(ca != NULL && cb != NULL && cb2 != NULL);
    CU_ASSERT_TRUE(call_is(cb, "b before", "v2 "));
    CU_ASSERT_TRUE(call_is(cb2, "b2 before", "v2 "));
    REQUIRE(shmipc_client_get(cb, &held) == 0);
    shmipc_msg m = {0};
    REQUIRE(shmipc_call(held, "held", 4, &m, RECV_MS) == 0);
    CU_ASSERT_TRUE(msg_is(&m, "v2 ", "held"));
    shmipc_msg_release(&m);
    REQUIRE(admin(&f, "status", out, sizeof(out)) > 0);
    char line[640];
    snprintf(line, sizeof(line), "%ssessions 2\n", svc_line(&f, "b", "versioned 2.0.0", 1, 0));
    CHECK_HAS(out, line);

    REQUIRE(rd_conf(&f, a, NULL) == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "reload: done\n");
    CHECK_HAS(out, "service b: removed (listener closed, sessions closed)\n");
    CHECK_HAS(out, "service a: unchanged (generation 1)\n");
    CU_ASSERT_FALSE(du_exists(du_path(&f.d, "b.sock")));
    /* The held stream sees its session end: no answer, an error. */
    int rc = shmipc_stream_recv(held, &m, RECV_MS);
    if (rc == 0)
        shmipc_msg_release(&m);
    CU_ASSERT(rc < 0 && rc != SHMIPC_ETIMEDOUT);
    shmipc_stream_close(held);
    held = NULL;
    uint64_t dl = du_deadline(POLL_MS);
    while ((shmipc_client_live_sessions(cb) || shmipc_client_live_sessions(cb2)) && !du_past(dl))
        du_sleep_ms(5);
    CHECK_EQ(shmipc_client_live_sessions(cb), 0);
    CHECK_EQ(shmipc_client_live_sessions(cb2), 0);
    /* Nothing listens at b any more: no new stream, no connection. */
    shmipc_stream *s2 = NULL;
    rc = shmipc_client_get(cb2, &s2);
    CU_ASSERT(rc < 0);
    if (rc == 0)
        shmipc_stream_close(s2);
    CU_ASSERT(du_connect(du_path(&f.d, "b.sock")) < 0);
    rd_client_close(&f, cb);
    rd_client_close(&f, cb2);
    CU_ASSERT_TRUE(call_is(ca, "a after", "v1 "));

    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CHECK_HASNT(out, "service b");
    CHECK_HAS(out, svc_line(&f, "a", "versioned 1.0.0", 1, 0));
    CHECK_EQ(s.finished, 1); /* b's generation */
    char *log = du_read_file(f.d.log, NULL);
    CHECK_HAS(log, "service b: removed\n");
    free(log);
    /* b may come back. */
    REQUIRE(rd_conf(&f, a, b, NULL) == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "service b: added (generation 1");
    cb = rd_client(&f, "b", SHMIPC_MODE_MEMFD);
    CU_ASSERT_TRUE(call_is(cb, "b again", "v2 "));
out:
    if (held != NULL)
        shmipc_stream_close(held);
    rd_end(&f);
}

/* SIGHUP runs the same reload as the admin command; its report goes to
 * the log. */
static void test_sighup(void)
{
    struct rd f;
    char out[8192];
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *c = rd_serve_copy(&f, "v", "versioned");
    REQUIRE(c != NULL);
    CU_ASSERT_TRUE(call_is(c, "before", "v1 "));

    REQUIRE(install(&f, du_test_plugin_path("versioned2"), "plugin.so") == 0);
    REQUIRE(kill(f.d.pid, SIGHUP) == 0);
    struct status s = {0};
    wait_reloads(&f, &s, 1, out, sizeof(out));
    CHECK_EQ(s.reloads, 1);
    CHECK_EQ(s.refused, 0);
    CU_ASSERT_TRUE(call_is(c, "after", "v2 "));
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CHECK_EQ(s.finished, 1);
    CHECK_HAS(out, svc_line(&f, "v", "versioned 2.0.0", 2, 0));
    char *log = du_read_file(f.d.log, NULL);
    char want[4200];
    snprintf(want, sizeof(want), "SIGHUP: reloading %s\n", f.d.conf);
    CHECK_HAS(log, want);
    CHECK_HAS(log, "reload: done\n");
    CHECK_HAS(log, "service v: generation 2 (plugin versioned 2.0.0), generation 1 draining\n");
    free(log);

    /* A broken file on SIGHUP: refused, said in the log, v2 serves on. */
    REQUIRE(du_write_file(f.d.conf, "services = (\n") == 0);
    REQUIRE(kill(f.d.pid, SIGHUP) == 0);
    wait_reloads(&f, &s, 2, out, sizeof(out));
    CHECK_EQ(s.reloads, 2);
    CHECK_EQ(s.refused, 1);
    log = du_read_file(f.d.log, NULL);
    CHECK_HAS(log, "error: reload refused: ");
    free(log);
    CU_ASSERT_TRUE(call_is(c, "still", "v2 "));
out:
    rd_end(&f);
}

/* Requests in flight on the slow plugin while the service is switched to
 * echo: each answered right, exactly once (the next answer on each
 * stream is the next request's), none lost; then echo serves. */
static void test_inflight_slow(void)
{
    enum { N = 6 };
    struct rd f;
    char out[8192];
    shmipc_stream *st[N] = {NULL};
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *c = rd_serve_one(&f, "s", du_test_plugin_path("slow"), "delay_ms = 150;");
    REQUIRE(c != NULL);
    char req[N][64];
    for (int i = 0; i < N; i++) {
        REQUIRE(shmipc_client_get(c, &st[i]) == 0);
        snprintf(req[i], sizeof(req[i]), "in flight %d", i);
        REQUIRE(shmipc_stream_write(st[i], req[i], strlen(req[i])) == 0);
        REQUIRE(shmipc_stream_flush(st[i]) == 0);
    }
    /* Every request is out; the slow plugin takes a while on each. */
    REQUIRE(rd_conf_one(&f, "s", du_plugin_path("echo"), NULL) == 0);
    REQUIRE(admin(&f, "reload", out, sizeof(out)) > 0);
    CHECK_HAS(out, "reload: done\n");
    CHECK_HAS(out, "service s: generation 2 (plugin echo 1.0.0), generation 1 draining\n");
    for (int i = 0; i < N; i++) {
        shmipc_msg m = {0};
        int rc = shmipc_stream_recv(st[i], &m, RECV_MS);
        CHECK_EQ(rc, 0);
        CU_ASSERT_TRUE(rc == 0 && msg_is(&m, "", req[i]));
        shmipc_msg_release(&m);
    }
    /* Once: the next message on each stream answers the next request. */
    for (int i = 0; i < N; i++) {
        char next[64];
        snprintf(next, sizeof(next), "next %d", i);
        shmipc_msg m = {0};
        int rc = shmipc_call(st[i], next, strlen(next), &m, RECV_MS);
        CHECK_EQ(rc, 0);
        CU_ASSERT_TRUE(rc == 0 && msg_is(&m, "", next));
        shmipc_msg_release(&m);
        shmipc_client_put(c, st[i]);
        st[i] = NULL;
    }
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CHECK_EQ(s.finished, 1);
    CHECK_HAS(out, svc_line(&f, "s", "echo 1.0.0", 2, 0));
    /* A request is counted just after its answer went out. */
    uint64_t dl = du_deadline(POLL_MS);
    while ((admin(&f, "stats", out, sizeof(out)) <= 0 ||
            strstr(out, "service s: requests 12, ") == NULL) &&
           !du_past(dl))
        du_sleep_ms(5);
    CHECK_HAS(out, "service s: requests 12, ");
    CHECK_HAS(out, "handler errors 0,");
out:
    for (int i = 0; i < N; i++)
        if (st[i] != NULL)
            shmipc_stream_close(st[i]);
    rd_end(&f);
}

/* Lines of text, split (the copy is modified). */
static int lines_of(char *text, char **line, int max)
{
    int n = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l != NULL && n < max;
         l = strtok_r(NULL, "\n", &save))
        line[n++] = l;
    return n;
}

/* A trace of one generation: init first; a thread_init per worker before
 * any thread_fini; with `finished`, a thread_fini per worker and fini
 * last, else neither. */
static int trace_ok(const char *path, int finished)
{
    char *t = du_read_file(path, NULL), *line[32];
    int n = t != NULL ? lines_of(t, line, 32) : 0, ok = n == (finished ? 6 : 3);
    int inits = 0, finis = 0, order = 1;
    for (int i = 0; ok && i < n; i++) {
        if (strncmp(line[i], "thread_init ", 12) == 0) {
            inits++;
            order &= finis == 0;
        }
        finis += strncmp(line[i], "thread_fini ", 12) == 0;
    }
    ok = ok && strcmp(line[0], "init") == 0 && inits == 2 && finis == (finished ? 2 : 0) && order &&
         (!finished || strcmp(line[n - 1], "fini") == 0);
    if (!ok) {
        char *again = du_read_file(path, NULL);
        fprintf(stderr, "\n  trace %s (%s):\n%s\n", path, finished ? "finished" : "serving",
                again ? again : "(none)");
        free(again);
    }
    free(t);
    return ok;
}

/* The counter plugin's trace: the old generation's thread_fini on each
 * worker and its fini, after it drained; the new one's at the stop. */
static void test_counter_trace(void)
{
    struct rd f;
    char out[8192], conf[512];
    REQUIRE(rd_begin(&f) == 0);
    snprintf(conf, sizeof(conf), "trace = \"%s\";", du_path(&f.d, "t1"));
    shmipc_client *c = rd_serve_one(&f, "c", du_test_plugin_path("counter"), conf);
    REQUIRE(c != NULL);
    CU_ASSERT_TRUE(call_is(c, "gen 1", ""));
    CU_ASSERT_TRUE(trace_ok(du_path(&f.d, "t1"), 0));

    snprintf(conf, sizeof(conf), "trace = \"%s\";", du_path(&f.d, "t2"));
    REQUIRE(rd_conf_one(&f, "c", du_test_plugin_path("counter"), conf) == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "service c: generation 2 (plugin counter 1.0.0), generation 1 draining\n");
    CU_ASSERT_TRUE(call_is(c, "gen 2", ""));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CHECK_EQ(s.finished, 1);
    CU_ASSERT_TRUE(trace_ok(du_path(&f.d, "t1"), 1));
    CU_ASSERT_TRUE(trace_ok(du_path(&f.d, "t2"), 0));
    rd_close_clients(&f);
    CHECK_EQ(rd_stop(&f), 0);
    CU_ASSERT_TRUE(trace_ok(du_path(&f.d, "t2"), 1));
out:
    rd_end(&f);
}

/* A service added whose listener cannot be opened: refused, and the
 * generation made for it is finished whole (thread_fini on every worker,
 * then fini); the other service is untouched. */
static void test_added_cannot_listen(void)
{
    struct rd f;
    char out[8192], a[1024], b[1024], conf[512];
    REQUIRE(rd_begin(&f) == 0);
    du_service_entry(a, sizeof(a), &f.d, "a", du_test_plugin_path("versioned"), NULL);
    REQUIRE(rd_conf(&f, a, NULL) == 0);
    REQUIRE(rd_start(&f) == 0);
    snprintf(conf, sizeof(conf), "trace = \"%s\";", du_path(&f.d, "t"));
    snprintf(b, sizeof(b),
             "  { name = \"b\"; listen = \"unix:%s/no-such-dir/b.sock\"; plugin = \"%s\"; "
             "config = { %s }; }",
             f.d.dir, du_test_plugin_path("counter"), conf);
    REQUIRE(rd_conf(&f, a, b, NULL) == 0);
    int rc = ctl(&f, "reload", out, sizeof(out));
    CU_ASSERT(rc == 1);
    CU_ASSERT_EQUAL(strncmp(out, "error: reload: 1 service(s) refused", 35), 0);
    CHECK_HAS(out, "service b: refused: ");
    CHECK_HAS(out, "no-such-dir/b.sock");
    CHECK_HAS(out, "service a: unchanged (generation 1)\n");
    CU_ASSERT_TRUE(trace_ok(du_path(&f.d, "t"), 1));
    shmipc_client *c = rd_client(&f, "a", SHMIPC_MODE_MEMFD);
    CU_ASSERT_TRUE(call_is(c, "a", "v1 "));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CHECK_HASNT(out, "service b");
    CHECK_EQ(s.reloads, 1);
    CHECK_EQ(s.refused, 1);
    CHECK_EQ(plugin_copies(f.d.pid), 1);
out:
    rd_end(&f);
}

struct flood {
    const char *path;
    int stop;           /* atomic */
    unsigned long sent; /* atomic */
};

/* Keeps connections to a service half-way through their handshake, one
 * byte at a time, reconnecting when they are dropped: there is always a
 * handshake in progress with an event pending. */
static void *flood_main(void *arg)
{
    struct flood *fl = arg;
    int fds[32];
    unsigned n = 0;
    while (!__atomic_load_n(&fl->stop, __ATOMIC_RELAXED)) {
        if (n < 32) {
            int fd = du_connect(fl->path);
            if (fd >= 0)
                fds[n++] = fd;
        }
        for (unsigned i = 0; i < n;) {
            if (send(fds[i], "", 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1) {
                __atomic_add_fetch(&fl->sent, 1, __ATOMIC_RELAXED);
                i++;
                continue;
            }
            if (errno == EAGAIN) {
                i++;
                continue;
            }
            close(fds[i]);
            fds[i] = fds[--n];
        }
        du_sleep_ms(1);
    }
    while (n > 0)
        close(fds[--n]);
    return NULL;
}

/* SIGHUPs in a row, each removing or adding back a service that has
 * handshakes in progress. A reload used to free those handshakes while
 * the master still had their events to handle (use after free, seen by
 * ASan). shmipcd must stay up, serve, and stop cleanly. */
static void test_reload_storm_handshakes(void)
{
    enum { ROUNDS = 150 };
    struct rd f;
    char out[8192], a[1024], b[1024];
    struct flood fl = {0};
    pthread_t th[2];
    int nth = 0;
    REQUIRE(rd_begin(&f) == 0);
    du_service_entry(a, sizeof(a), &f.d, "a", du_test_plugin_path("versioned"), NULL);
    du_service_entry(b, sizeof(b), &f.d, "b", du_test_plugin_path("versioned2"), NULL);
    REQUIRE(rd_conf(&f, a, b, NULL) == 0);
    REQUIRE(rd_start(&f) == 0);
    fl.path = du_path(&f.d, "b.sock");
    for (; nth < 2; nth++)
        REQUIRE(pthread_create(&th[nth], NULL, flood_main, &fl) == 0);
    uint64_t dl = du_deadline(POLL_MS);
    while (__atomic_load_n(&fl.sent, __ATOMIC_RELAXED) == 0 && !du_past(dl))
        du_sleep_ms(1);
    for (int i = 0; i < ROUNDS && f.d.pid > 0; i++) {
        REQUIRE(rd_conf(&f, a, i % 2 ? b : NULL, NULL) == 0);
        REQUIRE(kill(f.d.pid, SIGHUP) == 0);
        du_sleep_ms(1); /* not for correctness: lets signals and handshakes mix */
    }
    /* The last configuration has both services: applied by now or by
     * this reload, whichever came last. */
    REQUIRE(admin(&f, "reload", out, sizeof(out)) > 0);
    CU_ASSERT_EQUAL(strncmp(out, "reload: done\n", 13), 0);
    CHECK_EQ(waitpid(f.d.pid, NULL, WNOHANG), 0); /* still running */
    __atomic_store_n(&fl.stop, 1, __ATOMIC_RELAXED);
    while (nth > 0)
        pthread_join(th[--nth], NULL);
    shmipc_client *ca = rd_client(&f, "a", SHMIPC_MODE_MEMFD);
    shmipc_client *cb = rd_client(&f, "b", SHMIPC_MODE_MEMFD);
    CU_ASSERT_TRUE(call_is(ca, "a", "v1 "));
    CU_ASSERT_TRUE(call_is(cb, "b", "v2 "));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CU_ASSERT(s.reloads >= 2);
    CHECK_EQ(s.refused, 0);
out:
    __atomic_store_n(&fl.stop, 1, __ATOMIC_RELAXED);
    while (nth > 0)
        pthread_join(th[--nth], NULL);
    rd_end(&f);
}

/* kv keeps its keys across a reload that changes its config and one
 * that replaces its .so (hand-off: the new generation shares the table);
 * a config with room for fewer keys than it holds is refused by the
 * hook, and the generation serving keeps its keys. */
static void test_state_kv(void)
{
    struct rd f;
    char out[8192], want[4400];
    REQUIRE(rd_begin(&f) == 0);
    REQUIRE(install(&f, du_plugin_path("kv"), "plugin.so") == 0);
    const char *so = du_path(&f.d, "plugin.so");
    shmipc_client *c = rd_serve_one(&f, "kv", so, "max_keys = 100;");
    REQUIRE(c != NULL);
    CU_ASSERT_TRUE(reply_is(c, "SET a 1", "OK"));
    CU_ASSERT_TRUE(reply_is(c, "SET b two words", "OK"));
    CU_ASSERT_TRUE(reply_is(c, "COUNT", "2"));

    /* The config changed. */
    REQUIRE(rd_conf_one(&f, "kv", so, "max_keys = 50;") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "reload: done\n");
    CHECK_HAS(out, "service kv: generation 2 (plugin kv 1.0.0), generation 1 draining\n"
                   "service kv: state of generation 1 handed over\n");
    CU_ASSERT_TRUE(reply_is(c, "COUNT", "2"));
    CU_ASSERT_TRUE(reply_is(c, "GET a", "VALUE 1"));
    CU_ASSERT_TRUE(reply_is(c, "GET b", "VALUE two words"));
    CU_ASSERT_TRUE(reply_is(c, "SET c 3", "OK"));

    /* The .so replaced (the same plugin, a new file). */
    REQUIRE(install(&f, du_plugin_path("kv"), "plugin.so") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "service kv: generation 3 (plugin kv 1.0.0), generation 2 draining\n"
                   "service kv: state of generation 2 handed over\n");
    CU_ASSERT_TRUE(reply_is(c, "COUNT", "3"));
    CU_ASSERT_TRUE(reply_is(c, "GET c", "VALUE 3"));
    CU_ASSERT_TRUE(reply_is(c, "GET b", "VALUE two words"));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CU_ASSERT_TRUE(counts_are(&s, 2, 0, 2));
    /* The generations that had the table are gone; the keys are not. */
    CU_ASSERT_TRUE(reply_is(c, "GET a", "VALUE 1"));

    /* Too few keys allowed: the hand-off refuses, generation 3 serves. */
    REQUIRE(rd_conf_one(&f, "kv", so, "max_keys = 2;") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 1);
    snprintf(want, sizeof(want),
             "service kv: refused: %s: plugin 'kv' 1.0.0: handoff failed: kv: the table holds 3 "
             "keys, more than max_keys 2; generation 3 keeps serving\n",
             so);
    CHECK_HAS(out, want);
    CU_ASSERT_TRUE(reply_is(c, "COUNT", "3"));
    CU_ASSERT_TRUE(reply_is(c, "SET d 4", "OK")); /* generation 3's max_keys, 50 */
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CU_ASSERT_TRUE(counts_are(&s, 3, 1, 2));
    CHECK_HAS(out, svc_line(&f, "kv", "kv 1.0.0", 3, 0));
    CHECK_EQ(plugin_copies(f.d.pid), 1);
out:
    rd_end(&f);
}

/* tallyhooks through shmipcd: save/restore when its hand-off declines,
 * a failing restore or hand-off refuses the reload (the count goes on in
 * the generation serving), and a change to another plugin starts empty. */
static void test_state_hooks(void)
{
    struct rd f;
    char out[8192], want[4400];
    const char *hooks = du_test_plugin_path("tallyhooks");
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *c = rd_serve_one(&f, "t", hooks, NULL);
    REQUIRE(c != NULL);
    CU_ASSERT_TRUE(reply_is(c, "a", "1"));
    CU_ASSERT_TRUE(reply_is(c, "b", "2"));
    CU_ASSERT_TRUE(reply_is(c, "c", "3"));

    REQUIRE(rd_conf_one(&f, "t", hooks, "handoff = \"decline\";") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "service t: generation 2 (plugin tallyhooks 1.0.0), generation 1 draining\n"
                   "service t: state of generation 1 restored (7 bytes)\n");
    CU_ASSERT_TRUE(reply_is(c, "d", "4"));

    REQUIRE(rd_conf_one(&f, "t", hooks, "handoff = \"decline\"; fail_restore = \"no room\";") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 1);
    snprintf(want, sizeof(want),
             "service t: refused: %s: plugin 'tallyhooks' 1.0.0: restore failed: tallyhooks: no "
             "room; generation 2 keeps serving\n",
             hooks);
    CHECK_HAS(out, want);
    CU_ASSERT_TRUE(reply_is(c, "e", "5"));

    REQUIRE(rd_conf_one(&f, "t", hooks, "handoff = \"fail\";") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 1);
    snprintf(want, sizeof(want),
             "service t: refused: %s: plugin 'tallyhooks' 1.0.0: handoff failed: tallyhooks: "
             "handoff refused by its config; generation 2 keeps serving\n",
             hooks);
    CHECK_HAS(out, want);
    CU_ASSERT_TRUE(reply_is(c, "f", "6"));

    /* Another plugin: nothing carried, and the report says why. (The
     * refused generations 3 and 4 had their numbers.) */
    REQUIRE(rd_conf_one(&f, "t", du_plugin_path("kv"), NULL) == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "service t: generation 5 (plugin kv 1.0.0), generation 2 draining\n"
                   "service t: state starts empty: generation 2 ran another plugin "
                   "('tallyhooks')\n");
    CU_ASSERT_TRUE(reply_is(c, "COUNT", "0"));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CU_ASSERT_TRUE(counts_are(&s, 4, 2, 2));
out:
    rd_end(&f);
}

/* A plugin without state hooks (tally, built for ABI minor 0) still
 * loads, and after a reload its state starts empty, as it always did:
 * the report says nothing about state. */
static void test_state_absent(void)
{
    struct rd f;
    char out[8192];
    REQUIRE(rd_begin(&f) == 0);
    shmipc_client *c = rd_serve_one(&f, "t", du_test_plugin_path("tally"), "n = 1;");
    REQUIRE(c != NULL);
    CU_ASSERT_TRUE(reply_is(c, "a", "1"));
    CU_ASSERT_TRUE(reply_is(c, "b", "2"));
    REQUIRE(rd_conf_one(&f, "t", du_test_plugin_path("tally"), "n = 2;") == 0);
    CHECK_EQ(ctl(&f, "reload", out, sizeof(out)), 0);
    CHECK_HAS(out, "service t: generation 2 (plugin tally 1.0.0), generation 1 draining\n");
    CHECK_HASNT(out, "state");
    CU_ASSERT_TRUE(reply_is(c, "c", "1"));
    struct status s;
    REQUIRE(wait_drained(&f, &s, out, sizeof(out)) == 0);
    CU_ASSERT_TRUE(counts_are(&s, 1, 0, 1));
out:
    rd_end(&f);
}

static const struct test_case cases[] = {
    {"unchanged configuration: unchanged", test_unchanged},
    {"plugin file replaced: v1 -> v2, old generation finished", test_plugin_replaced},
    {"plugin config changed: new generation", test_config_changed},
    {"broken plugins refused with the cause, old generation serves", test_broken_plugins},
    {"syntax error: refused, nothing changes", test_syntax_error},
    {"service added: socket appears and serves", test_service_added},
    {"service removed: socket and sessions closed, others serve", test_service_removed},
    {"SIGHUP reloads like the admin command", test_sighup},
    {"requests in flight on slow during a reload: answered once", test_inflight_slow},
    {"counter trace: old generation's thread_fini and fini", test_counter_trace},
    {"added service that cannot listen: refused, generation finished", test_added_cannot_listen},
    {"SIGHUP storm removing a service with handshakes in progress", test_reload_storm_handshakes},
    {"kv keeps its keys across config and .so reloads (hand-off)", test_state_kv},
    {"state hooks: save/restore, failing hooks refuse, another plugin", test_state_hooks},
    {"no state hooks (ABI minor 0): state starts empty", test_state_absent},
    {NULL, NULL},
};

const struct test_suite suite_reload = {"reload", cases};
