/*
 * Slow, failing and deferring handlers against the real shmipcd: a
 * service with workers of its own never delays another; a deferred
 * answer keeps its stream's order and frees the worker at once, also when
 * its session died first; a failed handler closes its stream (or, with
 * handler_error = "drop", sends nothing); slow calls are logged once,
 * with the worker's stack on request; a stop gives up on a handler that
 * never returns after drain_timeout_ms. The gate test plugin holds a
 * handler or an answer until the test creates <dir>/open: nothing here
 * depends on timing.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/daemon_fixture.h"

#define GATE_CLOSED_MS 300 /* how long a test looks for an answer that must not come */

static const char *gate_dir(const struct fx *f)
{
    return f->d.dir;
}

static int open_gate(const struct fx *f)
{
    return du_write_file(du_path(&f->d, "open"), "open\n");
}

/* A config of a gate service named `name` (service keys in `keys`) and an
 * echo service on the shared workers. */
static int start_gate(struct fx *f, const char *limits, const char *keys)
{
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f->d, limits);
    du_conf_add(&t,
                "  { name = \"gate\"; listen = \"%s\"; plugin = \"%s\"; %s config = { gate_dir = "
                "\"%s\"; }; },\n",
                du_addr(&f->d, "gate"), du_test_plugin_path("gate"), keys ? keys : "",
                gate_dir(f));
    du_conf_service(&t, &f->d, 1, "echo", du_plugin_path("echo"), NULL);
    int rc = du_conf_write(&t, &f->d, "gate.conf");
    return rc < 0 ? rc : du_start(&f->d, START_MS);
}

static int open_client(const struct fx *f, const char *svc, shmipc_client **out)
{
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = du_addr(&f->d, svc);
    cfg.reconnect_min_ms = 10000; /* no quiet reconnects during a test */
    return shmipc_client_open(&cfg, out);
}

static int send_text(shmipc_stream *st, const char *text)
{
    int rc = shmipc_stream_write(st, text, strlen(text));
    return rc < 0 ? rc : shmipc_stream_flush(st);
}

/* The next answer on st is exactly `text`. 0, or the code / -1. */
static int expect_answer(shmipc_stream *st, const char *text, int ms)
{
    shmipc_msg m;
    int rc = shmipc_stream_recv(st, &m, ms);
    if (rc < 0)
        return rc;
    char buf[256] = "";
    size_t n = shmipc_msg_copy(&m, 0, buf, sizeof(buf) - 1);
    size_t len = m.len;
    shmipc_msg_release(&m);
    if (len != strlen(text) || n != len || memcmp(buf, text, len) != 0) {
        fprintf(stderr, "\n  answer \"%s\" (%zu bytes), expected \"%s\"\n", buf, len, text);
        return -1;
    }
    return 0;
}

/* `shmipcctl stats` value "<key> N" on service svc's line, or -1. */
static long stat_of(const struct fx *f, const char *svc, const char *key)
{
    char out[16384], pat[80];
    if (dfx_ctl(&f->d, out, sizeof(out), "stats", NULL) != 0)
        return -1;
    snprintf(pat, sizeof(pat), "service %s: ", svc);
    const char *line = strstr(out, pat);
    const char *end = line != NULL ? strchr(line, '\n') : NULL;
    snprintf(pat, sizeof(pat), "%s ", key);
    const char *p = line != NULL ? strstr(line, pat) : NULL;
    long v = -1;
    if (p == NULL || (end != NULL && p > end) || sscanf(p + strlen(pat), "%ld", &v) != 1)
        return -1;
    return v;
}

/* Polls until stat_of(...) >= want. */
static long wait_stat(const struct fx *f, const char *svc, const char *key, long want)
{
    uint64_t dl = du_deadline(POLL_MS);
    long v;
    while ((v = stat_of(f, svc, key)) < want && !du_past(dl))
        du_sleep_ms(20);
    return v;
}

/* Polls until the gate plugin says a handler is blocked in it. */
static int wait_blocked(const struct fx *f)
{
    uint64_t dl = du_deadline(POLL_MS);
    while (!du_exists(du_path(&f->d, "blocked")) && !du_past(dl))
        du_sleep_ms(10);
    return du_exists(du_path(&f->d, "blocked")) ? 0 : -1;
}

/* Polls shmipcd's log until `needle` shows up. */
static int wait_log(const struct fx *f, const char *needle)
{
    uint64_t dl = du_deadline(POLL_MS);
    while (dfx_log_count(&f->d, needle) == 0 && !du_past(dl))
        du_sleep_ms(20);
    return dfx_log_count(&f->d, needle);
}

/* ---- per-service workers ---- */

/* One shared worker for echo; gate has one of its own, blocked: echo
 * answers all the same. (On the shared worker, echo would wait for the
 * gate: that is what workers of its own are for.) */
static void test_own_workers(void)
{
    struct fx f;
    shmipc_client *gc = NULL, *ec = NULL;
    shmipc_stream *gs = NULL, *es = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_add(&t, "workers = 1;\nlog = { level = \"info\"; };\nadmin = \"%s\";\nservices = (\n",
                f.d.admin);
    du_conf_add(&t,
                "  { name = \"gate\"; listen = \"%s\"; plugin = \"%s\"; workers = 1; config = { "
                "gate_dir = \"%s\"; }; },\n",
                du_addr(&f.d, "gate"), du_test_plugin_path("gate"), gate_dir(&f));
    du_conf_service(&t, &f.d, 1, "echo", du_plugin_path("echo"), NULL);
    REQUIRE(du_conf_write(&t, &f.d, "own.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    char out[8192];
    CHECK_EQ(dfx_ctl(&f.d, out, sizeof(out), "status", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "service gate worker 0: sessions"));

    REQUIRE(open_client(&f, "gate", &gc) == 0 && shmipc_client_get(gc, &gs) == 0);
    REQUIRE(send_text(gs, "block: held until the gate opens") == 0);
    REQUIRE(wait_blocked(&f) == 0); /* its handler runs, and holds its worker */
    REQUIRE(open_client(&f, "echo", &ec) == 0 && shmipc_client_get(ec, &es) == 0);
    for (int i = 0; i < 50; i++) {
        char text[32];
        snprintf(text, sizeof(text), "echo %d", i);
        REQUIRE(send_text(es, text) == 0);
        CHECK_EQ(expect_answer(es, text, RECV_MS), 0);
    }
    REQUIRE(open_gate(&f) == 0);
    CHECK_EQ(expect_answer(gs, "block: held until the gate opens", RECV_MS), 0);
out:
    if (gs != NULL)
        shmipc_stream_close(gs);
    if (es != NULL)
        shmipc_stream_close(es);
    if (gc != NULL)
        shmipc_client_close(gc);
    if (ec != NULL)
        shmipc_client_close(ec);
    dfx_end(&f);
}

/* ---- deferred answers ---- */

/* Three requests pipelined on one stream, the first and the last
 * deferred: nothing comes while the gate is shut (the second waits for
 * the first), another stream of the same session is answered meanwhile,
 * and once it opens the three come in order. */
static void test_deferred_order(void)
{
    struct fx f;
    shmipc_client *c = NULL;
    shmipc_stream *a = NULL, *b = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(start_gate(&f, NULL, NULL) == 0);
    REQUIRE(open_client(&f, "gate", &c) == 0);
    REQUIRE(shmipc_client_get(c, &a) == 0 && shmipc_client_get(c, &b) == 0);
    REQUIRE(send_text(a, "defer 1") == 0);
    REQUIRE(send_text(a, "now 2") == 0);
    REQUIRE(send_text(a, "defer 3") == 0);
    REQUIRE(send_text(b, "other stream") == 0);
    CHECK_EQ(expect_answer(b, "other stream", RECV_MS), 0);
    shmipc_msg m;
    CHECK_EQ(shmipc_stream_recv(a, &m, GATE_CLOSED_MS), SHMIPC_ETIMEDOUT);
    REQUIRE(open_gate(&f) == 0);
    CHECK_EQ(expect_answer(a, "defer 1", RECV_MS), 0);
    CHECK_EQ(expect_answer(a, "now 2", RECV_MS), 0);
    CHECK_EQ(expect_answer(a, "defer 3", RECV_MS), 0);
    /* The stream goes on as any other. */
    REQUIRE(send_text(a, "after") == 0);
    CHECK_EQ(expect_answer(a, "after", RECV_MS), 0);
    CHECK_EQ(stat_of(&f, "gate", "deferred"), 2);
    CHECK_EQ(stat_of(&f, "gate", "handler errors"), 0);
out:
    if (a != NULL)
        shmipc_stream_close(a);
    if (b != NULL)
        shmipc_stream_close(b);
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* The client goes away while its answer is deferred: completing it later
 * is safe, counted as an answer whose client had gone, and the daemon
 * serves the next client. */
static void test_deferred_client_gone(void)
{
    struct fx f;
    shmipc_client *c = NULL;
    shmipc_stream *st = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(start_gate(&f, NULL, NULL) == 0);
    REQUIRE(open_client(&f, "gate", &c) == 0 && shmipc_client_get(c, &st) == 0);
    REQUIRE(send_text(st, "defer: nobody will read this") == 0);
    REQUIRE(wait_stat(&f, "gate", "deferred", 1) == 1);
    shmipc_stream_close(st);
    st = NULL;
    shmipc_client_close(c);
    c = NULL;
    /* The session closes; its pool stays mapped for the answer held. */
    char out[8192];
    REQUIRE(dfx_wait_settled(&f.d, "gate", 1, 1, out, sizeof(out)) == 0);
    REQUIRE(open_gate(&f) == 0);
    CHECK_EQ(wait_stat(&f, "gate", "client gone", 1), 1);
    REQUIRE(dfx_wait_settled(&f.d, "gate", 1, 0, out, sizeof(out)) == 0);
    CHECK_EQ(stat_of(&f, "gate", "handler errors"), 0);
    REQUIRE(open_client(&f, "gate", &c) == 0 && shmipc_client_get(c, &st) == 0);
    REQUIRE(send_text(st, "next client") == 0);
    CHECK_EQ(expect_answer(st, "next client", RECV_MS), 0);
out:
    if (st != NULL)
        shmipc_stream_close(st);
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* The delay plugin (plugins/delay): every answer from its timer thread,
 * on several streams at once, each stream in order. */
static void test_delay_plugin(void)
{
    struct fx f;
    shmipc_client *c = NULL;
    shmipc_stream *st[4] = {NULL};
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_service(&t, &f.d, 1, "delay", du_plugin_path("delay"), "delay_ms = 20;");
    REQUIRE(du_conf_write(&t, &f.d, "delay.conf") == 0);
    REQUIRE(du_start(&f.d, START_MS) == 0);
    REQUIRE(open_client(&f, "delay", &c) == 0);
    for (int i = 0; i < 4; i++)
        REQUIRE(shmipc_client_get(c, &st[i]) == 0);
    char text[32];
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 4; i++) {
            snprintf(text, sizeof(text), "s%d r%d a", i, round);
            REQUIRE(send_text(st[i], text) == 0);
            snprintf(text, sizeof(text), "s%d r%d b", i, round);
            REQUIRE(send_text(st[i], text) == 0);
        }
        for (int i = 0; i < 4; i++) {
            snprintf(text, sizeof(text), "s%d r%d a", i, round);
            CHECK_EQ(expect_answer(st[i], text, RECV_MS), 0);
            snprintf(text, sizeof(text), "s%d r%d b", i, round);
            CHECK_EQ(expect_answer(st[i], text, RECV_MS), 0);
        }
    }
    CHECK_EQ(stat_of(&f, "delay", "deferred"), 40);
    CHECK_EQ(stat_of(&f, "delay", "requests"), 40);
out:
    for (int i = 0; i < 4; i++)
        if (st[i] != NULL)
            shmipc_stream_close(st[i]);
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* ---- failing handlers ---- */

/* A failed handler, and a deferred answer that the plugin fails: each
 * closes its stream, and the client hears it at once (not a timeout). */
static void test_failed_handler_closes_stream(void)
{
    struct fx f;
    shmipc_client *c = NULL;
    shmipc_stream *st = NULL;
    shmipc_msg m;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(start_gate(&f, NULL, NULL) == 0);
    REQUIRE(open_gate(&f) == 0);
    REQUIRE(open_client(&f, "gate", &c) == 0 && shmipc_client_get(c, &st) == 0);
    REQUIRE(send_text(st, "fail") == 0);
    CHECK_EQ(shmipc_stream_recv(st, &m, RECV_MS), SHMIPC_ECLOSED);
    shmipc_stream_close(st);
    st = NULL;
    REQUIRE(shmipc_client_get(c, &st) == 0);
    REQUIRE(send_text(st, "dfail") == 0);
    CHECK_EQ(shmipc_stream_recv(st, &m, RECV_MS), SHMIPC_ECLOSED);
    shmipc_stream_close(st);
    st = NULL;
    REQUIRE(shmipc_client_get(c, &st) == 0);
    REQUIRE(send_text(st, "fine") == 0);
    CHECK_EQ(expect_answer(st, "fine", RECV_MS), 0);
    CHECK_EQ(stat_of(&f, "gate", "handler errors"), 2);
    CHECK_EQ(stat_of(&f, "gate", "client gone"), 0);
out:
    if (st != NULL)
        shmipc_stream_close(st);
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* handler_error = "drop": nothing is sent for a failed request, and the
 * stream goes on (its next answer is the next request's). */
static void test_failed_handler_drop(void)
{
    struct fx f;
    shmipc_client *c = NULL;
    shmipc_stream *st = NULL;
    shmipc_msg m;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(start_gate(&f, NULL, "handler_error = \"drop\";") == 0);
    REQUIRE(open_client(&f, "gate", &c) == 0 && shmipc_client_get(c, &st) == 0);
    REQUIRE(send_text(st, "fail") == 0);
    CHECK_EQ(shmipc_stream_recv(st, &m, GATE_CLOSED_MS), SHMIPC_ETIMEDOUT);
    REQUIRE(send_text(st, "next") == 0);
    CHECK_EQ(expect_answer(st, "next", RECV_MS), 0);
    CHECK_EQ(stat_of(&f, "gate", "handler errors"), 1);
out:
    if (st != NULL)
        shmipc_stream_close(st);
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* A typo in handler_error is refused with the file and line. */
static void test_handler_error_typo(void)
{
    struct fx f;
    char out[4096];
    REQUIRE(dfx_begin(&f) == 0);
    struct du_conf t = {.n = 0};
    du_conf_head(&t, &f.d, NULL);
    du_conf_add(&t, "  { name = \"e\"; listen = \"%s\"; plugin = \"%s\"; handler_error = \"close\"; }\n",
                du_addr(&f.d, "e"), du_plugin_path("echo"));
    REQUIRE(du_conf_write(&t, &f.d, "typo.conf") == 0);
    const char *argv[] = {f.d.shmipcd, "-t", "-c", f.d.conf, NULL};
    CHECK_EQ(dfx_run_capture(argv, out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "typo.conf:"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"close\" is not \"close_stream\" or \"drop\""));
out:
    dfx_end(&f);
}

/* ---- slow handlers ---- */

/* A handler held past slow_handler_ms: one warning naming everything,
 * the worker's stack (slow_handler_trace), counted once. */
static void test_slow_handler_logged(void)
{
    struct fx f;
    shmipc_client *c = NULL;
    shmipc_stream *st = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(start_gate(&f, NULL, "slow_handler_ms = 50; slow_handler_trace = true;") == 0);
    REQUIRE(open_client(&f, "gate", &c) == 0 && shmipc_client_get(c, &st) == 0);
    REQUIRE(send_text(st, "block") == 0);
    CHECK_EQ(wait_log(&f, "service gate: slow handler: plugin gate 1.0.0 (generation 1) on "
                          "shared worker"),
             1);
    CHECK_EQ(wait_log(&f, "stack of the slow handler's worker"), 1);
    char *log = dfx_log(&f.d);
    CU_ASSERT(log != NULL && strstr(log, ", stream ") != NULL && strstr(log, "session ") != NULL);
    free(log);
    REQUIRE(open_gate(&f) == 0);
    CHECK_EQ(expect_answer(st, "block", RECV_MS), 0);
    CHECK_EQ(stat_of(&f, "gate", "slow handlers"), 1);
    CHECK_EQ(dfx_log_count(&f.d, "slow handler:"), 1);
out:
    if (st != NULL)
        shmipc_stream_close(st);
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

/* ---- stop ---- */

/* SIGTERM with a handler that never returns, and with a deferred answer
 * never completed: shmipcd gives up after drain_timeout_ms, says what it
 * abandoned, leaves no private plugin directory, and exits 1. */
static void stop_abandons(const char *request, const char *said)
{
    struct fx f;
    shmipc_client *c = NULL;
    shmipc_stream *st = NULL;
    REQUIRE(dfx_begin(&f) == 0);
    REQUIRE(start_gate(&f, "drain_timeout_ms = 300;", NULL) == 0);
    REQUIRE(open_client(&f, "gate", &c) == 0 && shmipc_client_get(c, &st) == 0);
    REQUIRE(send_text(st, request) == 0);
    if (strncmp(request, "block", 5) == 0)
        REQUIRE(wait_blocked(&f) == 0);
    else
        REQUIRE(wait_stat(&f, "gate", "deferred", 1) == 1);
    pid_t pid = f.d.pid;
    CHECK_EQ(du_stop(&f.d, SIGTERM, STOP_MS), 1);
    CU_ASSERT(dfx_log_count(&f.d, said) >= 1);
    CHECK_EQ(du_daemon_tmpdirs(pid, 1), 0);
    shmipc_msg m;
    CU_ASSERT(shmipc_stream_recv(st, &m, RECV_MS) < 0); /* closed, not answered */
out:
    if (st != NULL)
        shmipc_stream_close(st);
    if (c != NULL)
        shmipc_client_close(c);
    dfx_end(&f);
}

static void test_stop_abandons_blocked_handler(void)
{
    stop_abandons("block: forever", "still runs on shared worker");
}

static void test_stop_abandons_deferred(void)
{
    stop_abandons("defer: forever", "deferred answers not completed by the drain deadline");
}

static const struct test_case cases[] = {
    {"a service with workers of its own never delays another", test_own_workers},
    {"deferred answers keep their stream's order", test_deferred_order},
    {"a deferred answer whose client went away", test_deferred_client_gone},
    {"the delay plugin answers from its own thread", test_delay_plugin},
    {"a failed handler closes its stream", test_failed_handler_closes_stream},
    {"handler_error = drop sends nothing", test_failed_handler_drop},
    {"a typo in handler_error is refused", test_handler_error_typo},
    {"a slow handler is logged once with its stack", test_slow_handler_logged},
    {"stop abandons a handler that never returns", test_stop_abandons_blocked_handler},
    {"stop abandons a deferred answer never completed", test_stop_abandons_deferred},
    {NULL, NULL},
};

const struct test_suite suite_handlers = {"handlers", cases};
