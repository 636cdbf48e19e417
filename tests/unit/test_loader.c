/*
 * Tests of src/server/loader.c and the plugins shipped with shmipcd, loaded
 * from the built .so files with a test host API table. The host table, the
 * plugin paths and the per-test scaffolding (struct fixture: lfx_begin ..
 * lfx_end, which checks for leftovers) are in tests/common/loader_fixture.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libconfig.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/config.h"
#include "server/loader.h"
#include "shmipc/errors.h"
#include "shmipc/plugin.h"
#include "../common/daemon_util.h"
#include "../common/loader_fixture.h"
#include "testutil.h"

/* ---- descriptor checks, in memory ---- */

static int dummy_handle(void *state, void *ts, const struct shmipc_request *req,
                        struct shmipc_response *resp)
{
    (void)state, (void)ts, (void)req, (void)resp;
    return 0;
}

/* In-memory state hooks for gen_carry_state: a state is a number; each
 * hook notes its call in the state's trace and does what the state says. */
struct mem_state {
    long value;
    int handoff_rc; /* what handoff returns (its message: "mem: no hand-off") */
    int save_fail;
    int restore_fail; /* 1: with a message, 2: without */
    int empty_save;   /* save writes nothing */
    char trace[64];
};

static void mem_note(struct mem_state *m, const char *what)
{
    size_t n = strlen(m->trace);
    snprintf(m->trace + n, sizeof(m->trace) - n, "%s%s", n > 0 ? "," : "", what);
}

static int mem_handoff(void *state, void *old_state, char *errbuf, size_t errlen)
{
    struct mem_state *m = state, *old = old_state;
    mem_note(m, "handoff");
    if (m->handoff_rc < 0)
        snprintf(errbuf, errlen, "mem: no hand-off");
    else if (m->handoff_rc == 0)
        m->value = old->value;
    return m->handoff_rc;
}

/* Writes "v=<value>" one byte per put(): the host joins the pieces. */
static int mem_save(void *state, int (*put)(void *sink, const void *data, size_t n), void *sink,
                    char *errbuf, size_t errlen)
{
    struct mem_state *m = state;
    mem_note(m, "save");
    if (m->save_fail) {
        snprintf(errbuf, errlen, "mem: cannot save");
        return -EIO;
    }
    char buf[32];
    int n = m->empty_save ? 0 : snprintf(buf, sizeof(buf), "v=%ld", m->value);
    for (int i = 0; i < n; i++) {
        int rc = put(sink, buf + i, 1);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int mem_restore(void *state, const void *data, size_t len, char *errbuf, size_t errlen)
{
    struct mem_state *m = state;
    mem_note(m, "restore");
    char buf[32];
    if (m->restore_fail == 2)
        return -EINVAL; /* and no message: the host says "no reason given" */
    if (m->restore_fail || data == NULL || len >= sizeof(buf)) {
        snprintf(errbuf, errlen, "mem: cannot restore");
        return -EINVAL;
    }
    memcpy(buf, data, len);
    buf[len] = '\0';
    if (len > 0 && sscanf(buf, "v=%ld", &m->value) != 1) {
        snprintf(errbuf, errlen, "mem: not mine");
        return -EINVAL;
    }
    return 0;
}

static int check_msg(const struct shmipc_plugin *d, const char *want)
{
    char err[256] = "untouched";
    int rc = gen_check_descriptor(d, "/x/p.so", err, sizeof(err));
    if (rc == -EPROTO && strcmp(err, want) == 0)
        return 1;
    fprintf(stderr, "\n  check: rc %d, \"%s\", wanted \"%s\"\n", rc, err, want);
    return 0;
}

static void test_check_descriptor(void)
{
    const struct shmipc_plugin good = {SHMIPC_PLUGIN_HEADER("p", "1.0.0"), .handle = dummy_handle};
    char err[256] = "untouched";
    CU_ASSERT_EQUAL(gen_check_descriptor(&good, "/x/p.so", err, sizeof(err)), 0);

    struct shmipc_plugin d = good;
    d.magic = 0xdeadbeefu;
    CU_ASSERT_TRUE(check_msg(&d, "/x/p.so: wrong magic 0xdeadbeef, expected 0x53484d50"));
    d = good;
    char want[256];
    d.abi_major = SHMIPC_PLUGIN_ABI_MAJOR + 1;
    snprintf(want, sizeof(want), "/x/p.so: ABI major %u, host has %u", SHMIPC_PLUGIN_ABI_MAJOR + 1,
             SHMIPC_PLUGIN_ABI_MAJOR);
    CU_ASSERT_TRUE(check_msg(&d, want));
    d.abi_major = SHMIPC_PLUGIN_ABI_MAJOR - 1;
    snprintf(want, sizeof(want), "/x/p.so: ABI major %u, host has %u", SHMIPC_PLUGIN_ABI_MAJOR - 1,
             SHMIPC_PLUGIN_ABI_MAJOR);
    CU_ASSERT_TRUE(check_msg(&d, want));
    d = good;
    d.abi_minor = SHMIPC_PLUGIN_ABI_MINOR + 5;
    snprintf(want, sizeof(want), "/x/p.so: ABI minor %u is newer than the host's %u",
             SHMIPC_PLUGIN_ABI_MINOR + 5, SHMIPC_PLUGIN_ABI_MINOR);
    CU_ASSERT_TRUE(check_msg(&d, want));

    d = good;
    d.size = (uint32_t)sizeof(struct shmipc_plugin) - 8;
    snprintf(want, sizeof(want), "/x/p.so: descriptor size %zu, expected %zu for ABI %u.%u",
             sizeof(struct shmipc_plugin) - 8, sizeof(struct shmipc_plugin),
             SHMIPC_PLUGIN_ABI_MAJOR, SHMIPC_PLUGIN_ABI_MINOR);
    CU_ASSERT_TRUE(check_msg(&d, want));
    d.size = (uint32_t)sizeof(struct shmipc_plugin) + 8;
    snprintf(want, sizeof(want), "/x/p.so: descriptor size %zu, expected %zu for ABI %u.%u",
             sizeof(struct shmipc_plugin) + 8, sizeof(struct shmipc_plugin),
             SHMIPC_PLUGIN_ABI_MAJOR, SHMIPC_PLUGIN_ABI_MINOR);
    CU_ASSERT_TRUE(check_msg(&d, want));

    d = good;
    d.name = NULL;
    CU_ASSERT_TRUE(check_msg(&d, "/x/p.so: descriptor has no name"));
    d = good;
    d.version = NULL;
    CU_ASSERT_TRUE(check_msg(&d, "/x/p.so: descriptor of 'p' has no version"));
    d = good;
    d.handle = NULL;
    CU_ASSERT_TRUE(check_msg(&d, "/x/p.so: descriptor of 'p' has no handle hook"));
    CU_ASSERT_TRUE(check_msg(NULL, "/x/p.so: no descriptor"));

    /* Optional hooks really are optional. */
    d = good;
    d.init = NULL;
    d.fini = NULL;
    CU_ASSERT_EQUAL(gen_check_descriptor(&d, "/x/p.so", err, sizeof(err)), 0);

    /* Minor 0 (before the state hooks) has the same size and still loads;
     * a wrong size is refused naming minor 0's. Minor 1 with its hooks. */
    d = good;
    d.abi_minor = 0;
    CU_ASSERT_EQUAL(gen_check_descriptor(&d, "/x/p.so", err, sizeof(err)), 0);
    d.size = (uint32_t)sizeof(struct shmipc_plugin) - 8;
    snprintf(want, sizeof(want), "/x/p.so: descriptor size %zu, expected %zu for ABI %u.0",
             sizeof(struct shmipc_plugin) - 8, sizeof(struct shmipc_plugin),
             SHMIPC_PLUGIN_ABI_MAJOR);
    CU_ASSERT_TRUE(check_msg(&d, want));
    d = good;
    d.abi_minor = 1;
    d.handoff = mem_handoff;
    d.save = mem_save;
    d.restore = mem_restore;
    CU_ASSERT_EQUAL(gen_check_descriptor(&d, "/x/p.so", err, sizeof(err)), 0);
    /* The hooks took minor 0's spare slots: the size did not change. */
    CU_ASSERT_EQUAL(sizeof(struct shmipc_plugin) - offsetof(struct shmipc_plugin, handoff),
                    8 * sizeof(void *));
}

/* ---- shipped plugins ---- */

static void check_desc(const struct plugin_gen *g, const char *name)
{
    CU_ASSERT_EQUAL(g->desc->magic, SHMIPC_PLUGIN_MAGIC);
    CU_ASSERT_EQUAL(g->desc->abi_major, SHMIPC_PLUGIN_ABI_MAJOR);
    CU_ASSERT_EQUAL(g->desc->abi_minor, SHMIPC_PLUGIN_ABI_MINOR);
    CU_ASSERT_EQUAL(g->desc->size, sizeof(struct shmipc_plugin));
    CU_ASSERT_EQUAL(g->desc->flags, 0);
    CU_ASSERT_STRING_EQUAL(g->desc->name, name);
    CU_ASSERT_STRING_EQUAL(g->desc->version, "1.0.0");
    CU_ASSERT_PTR_NOT_NULL(g->desc->handle);
    for (size_t i = 0; i < sizeof(g->desc->spare) / sizeof(g->desc->spare[0]); i++)
        CU_ASSERT_PTR_NULL(g->desc->spare[i]);
}

static void test_echo(void)
{
    struct fixture f;
    if (!lfx_begin(&f, lfx_plugin("echo")))
        return;
    struct plugin_gen *g = lfx_load(f.path, f.tmp, 3, 2, NULL);
    if (g != NULL) {
        check_desc(g, "echo");
        CU_ASSERT_PTR_NOT_NULL(g->desc->init);
        CU_ASSERT_PTR_NOT_NULL(g->state);
        CU_ASSERT_EQUAL(g->refs, 1);
        CU_ASSERT_EQUAL(g->number, 3);
        CU_ASSERT_EQUAL(g->nworkers, 2);
        CU_ASSERT_STRING_EQUAL(g->source, f.path);
        CU_ASSERT_PTR_NULL(g->thread_states[0]);
        CU_ASSERT_PTR_NULL(g->thread_states[1]);

        /* The private copy: in tmpdir, named for the generation, mode
         * 0700, the same bytes, and what is actually mapped. */
        CU_ASSERT_EQUAL(strncmp(g->private_path, f.tmp, strlen(f.tmp)), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(g->private_path + strlen(f.tmp), "gen3"));
        CU_ASSERT_EQUAL(lfx_count_entries(f.tmp), 1);
        struct stat st;
        CU_ASSERT_EQUAL(stat(g->private_path, &st), 0);
        CU_ASSERT_EQUAL(st.st_mode & 07777, 0700);
        size_t a_len, b_len;
        uint8_t *a = (uint8_t *)du_read_file(f.path, &a_len);
        uint8_t *b = (uint8_t *)du_read_file(g->private_path, &b_len);
        CU_ASSERT_TRUE(a != NULL && b != NULL && a_len == b_len && a_len > 0 &&
                       memcmp(a, b, a_len) == 0);
        free(a);
        free(b);
        CU_ASSERT_EQUAL(lfx_is_mapped(g->private_path), 1);
        CU_ASSERT_EQUAL(lfx_is_mapped(f.path), 0);

        char err[256];
        CU_ASSERT_EQUAL(gen_thread_init(g, 0, err, sizeof(err)), 0); /* no hook: fine */
        CU_ASSERT_PTR_NULL(g->thread_states[0]);

        CU_ASSERT_REPLY(g, "hello", 0, "hello");
        const char *text = "hello, plugin world, in many small pieces";
        for (size_t piece = 1; piece <= 8; piece++)
            CU_ASSERT_REPLY(g, text, piece, text);
        CU_ASSERT_REPLY(g, "", 0, "");

        size_t big = 200 * 1024 + 17;
        uint8_t *data = malloc(big);
        CU_ASSERT_PTR_NOT_NULL_FATAL(data);
        for (size_t i = 0; i < big; i++)
            data[i] = (uint8_t)(i * 131 + (i >> 9));
        CU_ASSERT_TRUE(lfx_replies_bin(g, data, big, 4096, data, big));
        CU_ASSERT_TRUE(lfx_replies_bin(g, data, big, 0, data, big));
        free(data);

        /* A failing write is the plugin's failure. */
        struct shmipc_response r = {NULL, 0, 0, 1};
        const struct shmipc_plugin_iov iov = {(const uint8_t *)"x", 1};
        const struct shmipc_request req = {1, 1, 1, 1, &iov};
        CU_ASSERT(g->desc->handle(g->state, NULL, &req, &r) < 0);
        free(r.buf);

        gen_thread_fini(g, 0);
        char *priv = strdup(g->private_path);
        gen_unload(g);
        CU_ASSERT_FALSE(lfx_file_exists(priv));
        CU_ASSERT_EQUAL(lfx_is_mapped(priv), 0);
        free(priv);
    }
    lfx_end(&f);
}

static void greeter_checks(struct plugin_gen *g)
{
    check_desc(g, "greeter");
    char err[256];
    CU_ASSERT_EQUAL(gen_thread_init(g, 0, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(gen_thread_init(g, 1, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL(g->thread_states[0]);
    CU_ASSERT_PTR_NOT_NULL(g->thread_states[1]);
    CU_ASSERT_NOT_EQUAL(g->thread_states[0], g->thread_states[1]);
    CU_ASSERT_EQUAL(gen_thread_init(g, 2, err, sizeof(err)), -EINVAL);

    const char *hello = "client say hello world!!!", *answer = "server hello world!!!";
    CU_ASSERT_REPLY(g, hello, 0, answer);
    CU_ASSERT_REPLY(g, hello, 3, answer);
    CU_ASSERT_EQUAL(lfx_log_count(), 0);

    /* Unexpected input: answered anyway, one warning per thread. */
    struct shmipc_response r;
    CU_ASSERT_EQUAL(lfx_call_ts(g, g->thread_states[0], "hi", 2, 0, &r), 0);
    CU_ASSERT_TRUE(r.len == strlen(answer) && memcmp(r.buf, answer, r.len) == 0);
    free(r.buf);
    CU_ASSERT_EQUAL(lfx_log_count(), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(lfx_log_buf, "greeter"));
    CU_ASSERT_EQUAL(lfx_log_buf[0], '0' + SHMIPC_LOG_WARN);
    CU_ASSERT_EQUAL(lfx_call_ts(g, g->thread_states[0], "client say hello world!!", 24, 0, &r), 0);
    free(r.buf);
    CU_ASSERT_EQUAL(lfx_call_ts(g, g->thread_states[0], "client say hello world!!!!", 26, 0, &r),
                    0);
    free(r.buf);
    CU_ASSERT_EQUAL(lfx_log_count(), 1);
    CU_ASSERT_EQUAL(lfx_call_ts(g, g->thread_states[1], "", 0, 0, &r), 0);
    CU_ASSERT_TRUE(r.len == strlen(answer) && memcmp(r.buf, answer, r.len) == 0);
    free(r.buf);
    CU_ASSERT_EQUAL(lfx_log_count(), 2);

    gen_thread_fini(g, 0);
    gen_thread_fini(g, 1);
    CU_ASSERT_PTR_NULL(g->thread_states[0]);
    CU_ASSERT_PTR_NULL(g->thread_states[1]);
}

static void test_greeter(void)
{
    lfx_run_loaded(lfx_plugin("greeter"), 2, greeter_checks);
}

static void kv_commands_checks(struct plugin_gen *g)
{
    check_desc(g, "kv");
    CU_ASSERT_REPLY(g, "COUNT", 0, "0");
    CU_ASSERT_REPLY(g, "GET a", 0, "NOT_FOUND");
    CU_ASSERT_REPLY(g, "SET a 1", 0, "OK");
    CU_ASSERT_REPLY(g, "GET a", 0, "VALUE 1");
    CU_ASSERT_REPLY(g, "SET a 22", 0, "OK");
    CU_ASSERT_REPLY(g, "COUNT", 0, "1");
    CU_ASSERT_REPLY(g, "GET a", 0, "VALUE 22");
    CU_ASSERT_REPLY(g, "SET b hello  world ", 0, "OK");
    CU_ASSERT_REPLY(g, "GET b", 0, "VALUE hello  world ");
    CU_ASSERT_REPLY(g, "SET e ", 0, "OK"); /* an empty value */
    CU_ASSERT_REPLY(g, "GET e", 0, "VALUE ");
    CU_ASSERT_REPLY(g, "COUNT", 0, "3");
    CU_ASSERT_REPLY(g, "GET aa", 0, "NOT_FOUND");
    CU_ASSERT_REPLY(g, "DEL a", 0, "DELETED");
    CU_ASSERT_REPLY(g, "DEL a", 0, "NOT_FOUND");
    CU_ASSERT_REPLY(g, "GET a", 0, "NOT_FOUND");
    CU_ASSERT_REPLY(g, "COUNT", 0, "2");

    /* Spanning pieces, down to one byte each. */
    CU_ASSERT_REPLY(g, "SET key-in-pieces value in pieces", 1, "OK");
    CU_ASSERT_REPLY(g, "GET key-in-pieces", 2, "VALUE value in pieces");
    CU_ASSERT_REPLY(g, "DEL key-in-pieces", 3, "DELETED");

    const char *bad[] = {"",       "FOO",   "SET",     "SET ",   "SET a", "SET  x",
                         "GET",    "GET ",  "GET a b", "DEL",    "DEL  ", "COUNT x",
                         "COUNT ", "get b", "Set a 1", " GET b", "COUN",  "DELETE b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_REPLY(g, bad[i], 0, "ERR bad command");
    CU_ASSERT_REPLY(g, "COUNT", 0, "2");

    /* A failing write fails the request and leaves the lock free. */
    struct shmipc_response r = {NULL, 0, 0, 1};
    const struct shmipc_plugin_iov iov = {(const uint8_t *)"GET b", 5};
    const struct shmipc_request req = {1, 1, 5, 1, &iov};
    CU_ASSERT(g->desc->handle(g->state, NULL, &req, &r) < 0);
    free(r.buf);
    CU_ASSERT_REPLY(g, "SET b again", 0, "OK");
    CU_ASSERT_REPLY(g, "GET b", 0, "VALUE again");
}

static void test_kv_commands(void)
{
    lfx_run_loaded(lfx_plugin("kv"), 1, kv_commands_checks);
}

static void kv_binary_checks(struct plugin_gen *g)
{
    /* Every byte value, NUL and spaces included, twice over. */
    uint8_t req[8 + 512], want[6 + 512];
    memcpy(req, "SET bin ", 8);
    memcpy(want, "VALUE ", 6);
    for (int i = 0; i < 512; i++)
        req[8 + i] = want[6 + i] = (uint8_t)(255 - i % 256);
    CU_ASSERT_TRUE(lfx_replies_bin(g, req, sizeof(req), 7, "OK", 2));
    CU_ASSERT_TRUE(lfx_replies_bin(g, "GET bin", 7, 0, want, sizeof(want)));
    CU_ASSERT_TRUE(lfx_replies_bin(g, "GET bin", 7, 1, want, sizeof(want)));

    /* Binary keys: anything but a space. */
    const uint8_t set_k[] = {'S', 'E', 'T', ' ', 0, 0xff, '\n', ' ', 'v', 0};
    const uint8_t get_k[] = {'G', 'E', 'T', ' ', 0, 0xff, '\n'};
    const uint8_t get_k2[] = {'G', 'E', 'T', ' ', 0, 0xff};
    const uint8_t val[] = {'V', 'A', 'L', 'U', 'E', ' ', 'v', 0};
    CU_ASSERT_TRUE(lfx_replies_bin(g, set_k, sizeof(set_k), 3, "OK", 2));
    CU_ASSERT_TRUE(lfx_replies_bin(g, get_k, sizeof(get_k), 0, val, sizeof(val)));
    CU_ASSERT_TRUE(lfx_replies_bin(g, get_k2, sizeof(get_k2), 0, "NOT_FOUND", 9));
    CU_ASSERT_REPLY(g, "COUNT", 0, "2");
}

static void test_kv_binary(void)
{
    lfx_run_loaded(lfx_plugin("kv"), 1, kv_binary_checks);
}

static void test_kv_limits(void)
{
    struct fixture f;
    if (!lfx_begin(&f, lfx_plugin("kv")))
        return;
    if (conf_plugin_int == NULL)
        printf(
            "\nNOTE: config.c is not linked: the test host reads plugin config with libconfig\n");
    const struct shmipc_plugin_conf *conf =
        lfx_conf(&f, "config = { max_keys = 3; max_value_bytes = 16; };");
    CU_ASSERT_PTR_NOT_NULL(conf);
    struct plugin_gen *g = conf != NULL ? lfx_load(f.path, f.tmp, 1, 1, conf) : NULL;
    if (g != NULL) {
        CU_ASSERT_REPLY(g, "SET k1 a", 0, "OK");
        CU_ASSERT_REPLY(g, "SET k2 b", 0, "OK");
        CU_ASSERT_REPLY(g, "SET k3 c", 0, "OK");
        CU_ASSERT_REPLY(g, "SET k4 d", 0, "ERR full");
        CU_ASSERT_REPLY(g, "GET k4", 0, "NOT_FOUND");
        CU_ASSERT_REPLY(g, "SET k3 replaced", 0, "OK"); /* replacing is not growing */
        CU_ASSERT_REPLY(g, "GET k3", 0, "VALUE replaced");
        CU_ASSERT_REPLY(g, "COUNT", 0, "3");
        CU_ASSERT_REPLY(g, "DEL k1", 0, "DELETED");
        CU_ASSERT_REPLY(g, "SET k4 d", 0, "OK");
        CU_ASSERT_REPLY(g, "COUNT", 0, "3");

        CU_ASSERT_REPLY(g, "SET k2 0123456789abcdef", 0, "OK"); /* exactly 16 */
        CU_ASSERT_REPLY(g, "SET k2 0123456789abcdefg", 0, "ERR too big");
        CU_ASSERT_REPLY(g, "GET k2", 0, "VALUE 0123456789abcdef");

        /* A value far over the limit is refused without being copied. */
        size_t big = 1 << 20;
        uint8_t *req = malloc(big);
        CU_ASSERT_PTR_NOT_NULL_FATAL(req);
        memcpy(req, "SET k2 ", 7);
        memset(req + 7, 'x', big - 7);
        CU_ASSERT_TRUE(lfx_replies_bin(g, req, big, 65536, "ERR too big", 11));
        free(req);

        /* Keys: 250 bytes at most, whatever the command. */
        char key[252], cmd[300];
        memset(key, 'k', 250);
        key[250] = '\0';
        CU_ASSERT_REPLY(g, "DEL k4", 0, "DELETED");
        snprintf(cmd, sizeof(cmd), "SET %s v", key);
        CU_ASSERT_REPLY(g, cmd, 0, "OK");
        snprintf(cmd, sizeof(cmd), "GET %s", key);
        CU_ASSERT_REPLY(g, cmd, 0, "VALUE v");
        key[250] = 'k';
        key[251] = '\0';
        snprintf(cmd, sizeof(cmd), "SET %s v", key);
        CU_ASSERT_REPLY(g, cmd, 0, "ERR too big");
        snprintf(cmd, sizeof(cmd), "GET %s", key);
        CU_ASSERT_REPLY(g, cmd, 0, "ERR too big");
        snprintf(cmd, sizeof(cmd), "DEL %s", key);
        CU_ASSERT_REPLY(g, cmd, 0, "ERR too big");
        gen_unload(g);
    }
    lfx_end(&f);
}

static void kv_many_keys_checks(struct plugin_gen *g)
{
    /* Enough keys to grow the table several times; then every one is
     * still found with its own value. */
    enum { N = 5000 };
    char cmd[64], want[64];
    int ok = 1;
    for (int i = 0; i < N; i++) {
        snprintf(cmd, sizeof(cmd), "SET key%d value%d", i, i * 7);
        ok &= lfx_replies(g, cmd, 0, "OK");
    }
    CU_ASSERT_TRUE(ok);
    snprintf(want, sizeof(want), "%d", N);
    CU_ASSERT_REPLY(g, "COUNT", 0, want);
    for (int i = 0; i < N; i++) {
        snprintf(cmd, sizeof(cmd), "GET key%d", i);
        snprintf(want, sizeof(want), "VALUE value%d", i * 7);
        ok &= lfx_replies(g, cmd, 0, want);
    }
    CU_ASSERT_TRUE(ok);
    for (int i = 0; i < N; i += 2) {
        snprintf(cmd, sizeof(cmd), "DEL key%d", i);
        ok &= lfx_replies(g, cmd, 0, "DELETED");
    }
    CU_ASSERT_TRUE(ok);
    snprintf(want, sizeof(want), "%d", N / 2);
    CU_ASSERT_REPLY(g, "COUNT", 0, want);
    CU_ASSERT_REPLY(g, "GET key0", 0, "NOT_FOUND");
    CU_ASSERT_REPLY(g, "GET key1", 0, "VALUE value7");
    /* fini frees what is left: ASan's leak check holds it to that. */
}

static void test_kv_many_keys(void)
{
    lfx_run_loaded(lfx_plugin("kv"), 1, kv_many_keys_checks);
}

struct kv_thread_arg {
    struct plugin_gen *g;
    int id;
    int ok;
};

static void *kv_thread(void *p)
{
    struct kv_thread_arg *a = p;
    char cmd[64], want[64];
    a->ok = 1;
    for (int i = 0; i < 300; i++) {
        snprintf(cmd, sizeof(cmd), "SET t%d-%d %d", a->id, i, i);
        a->ok &= lfx_replies(a->g, cmd, 1 + i % 5, "OK");
        snprintf(cmd, sizeof(cmd), "SET shared %d", i);
        a->ok &= lfx_replies(a->g, cmd, 0, "OK");
        snprintf(cmd, sizeof(cmd), "GET t%d-%d", a->id, i);
        snprintf(want, sizeof(want), "VALUE %d", i);
        a->ok &= lfx_replies(a->g, cmd, 0, want);
        struct shmipc_response r;
        a->ok &= lfx_call(a->g, "GET shared", 10, 0, &r) == 0 && r.len > 6 &&
                 memcmp(r.buf, "VALUE ", 6) == 0;
        free(r.buf);
        if (i % 3 == 0) {
            snprintf(cmd, sizeof(cmd), "DEL t%d-%d", a->id, i);
            a->ok &= lfx_replies(a->g, cmd, 0, "DELETED");
        }
    }
    return NULL;
}

static void kv_threads_checks(struct plugin_gen *g)
{
    pthread_t th[4];
    struct kv_thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct kv_thread_arg){g, i, 0};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, kv_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_TRUE(args[i].ok);
    }
    /* 4 x 200 kept keys, plus "shared". */
    CU_ASSERT_REPLY(g, "COUNT", 0, "801");
}

static void test_kv_threads(void)
{
    lfx_run_loaded(lfx_plugin("kv"), 4, kv_threads_checks);
}

/* A refused load: negative, no generation, err names the file and `want`. */
static void expect_refusal(const char *path, const char *tmp, const struct shmipc_plugin_conf *conf,
                           int code, const char *want)
{
    char err[512] = "untouched";
    struct plugin_gen dummy, *g = &dummy; /* gen_load must reset it */
    int rc = gen_load(path, tmp, 9, 2, &lfx_test_host, conf, &g, err, sizeof(err));
    CU_ASSERT(rc < 0);
    if (code != 0)
        CU_ASSERT_EQUAL(rc, code);
    CU_ASSERT_PTR_NULL(g);
    int named = strncmp(err, path, strlen(path)) == 0;
    int says = strstr(err, want) != NULL;
    CU_ASSERT_TRUE(named);
    CU_ASSERT_TRUE(says);
    CU_ASSERT_PTR_NULL(strstr(err, "must not be called"));
    if (!named || !says)
        fprintf(stderr, "\n  %s: rc %d \"%s\", wanted \"%s\"\n", path, rc, err, want);
    CU_ASSERT_EQUAL(lfx_count_entries(tmp), 0);
    CU_ASSERT_EQUAL(lfx_mapped_under(tmp), 0); /* dlclose()d */
}

static void test_refusals(void)
{
    struct fixture f;
    if (!lfx_begin(&f, lfx_test_plugin("badabi"))) /* only as a probe for the directory */
        return;
    char want_abi[64], want_minor[64], want_size[64];
    snprintf(want_abi, sizeof(want_abi), "ABI major %u, host has %u", SHMIPC_PLUGIN_ABI_MAJOR + 1,
             SHMIPC_PLUGIN_ABI_MAJOR);
    snprintf(want_minor, sizeof(want_minor), "ABI minor %u is newer than the host's %u",
             SHMIPC_PLUGIN_ABI_MINOR + 1, SHMIPC_PLUGIN_ABI_MINOR);
    snprintf(want_size, sizeof(want_size), "descriptor size %zu, expected %zu",
             sizeof(struct shmipc_plugin) - 8, sizeof(struct shmipc_plugin));
    const struct {
        const char *name;
        int code;
        const char *want;
    } cases[] = {
        {"badabi", -EPROTO, want_abi},
        {"badmagic", -EPROTO, "wrong magic 0xdeadbeef, expected 0x53484d50"},
        {"newminor", -EPROTO, want_minor},
        {"badsize", -EPROTO, want_size},
        {"nosym", 0, "no descriptor symbol 'shmipc_plugin'"},
        {"failinit", 0, "refusing to start: test"},
    };
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            char *p = lfx_test_plugin(cases[i].name);
            CU_ASSERT_PTR_NOT_NULL_FATAL(p);
            expect_refusal(p, f.tmp, NULL, cases[i].code, cases[i].want);
            CU_ASSERT_EQUAL(tu_count_fds(), f.fds);
            free(p);
        }
    }

    /* Not plugins at all: missing, a directory, not ELF, empty. Kept
     * outside f.tmp so that its count stays about private copies. */
    const char *other = lfx_scratch(&f);
    char p[4096];
    snprintf(p, sizeof(p), "%s/missing.so", other);
    expect_refusal(p, f.tmp, NULL, -ENOENT, "No such file or directory");
    expect_refusal(other, f.tmp, NULL, 0, "not a regular file");
    snprintf(p, sizeof(p), "%s/text.so", other);
    const char *text = "this is not a shared object, only text pretending to be one\n";
    CU_ASSERT_EQUAL(lfx_write_all(p, text, strlen(text)), 0);
    expect_refusal(p, f.tmp, NULL, 0, "dlopen failed");
    snprintf(p, sizeof(p), "%s/empty.so", other);
    CU_ASSERT_EQUAL(lfx_write_all(p, "", 0), 0);
    expect_refusal(p, f.tmp, NULL, 0, "dlopen failed");

    /* A tmpdir that does not exist: refused, naming file and directory. */
    char *echo = lfx_plugin("echo");
    if (echo != NULL) {
        snprintf(p, sizeof(p), "%s/no-such-dir", other);
        char err[512] = "untouched";
        struct plugin_gen *g = NULL;
        CU_ASSERT_EQUAL(gen_load(echo, p, 1, 1, &lfx_test_host, NULL, &g, err, sizeof(err)),
                        -ENOENT);
        CU_ASSERT_PTR_NULL(g);
        CU_ASSERT_EQUAL(strncmp(err, echo, strlen(echo)), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, p));
        CU_ASSERT_EQUAL(lfx_count_entries(other), 2); /* text.so, empty.so */
        free(echo);
    }
    lfx_end(&f);
}

static void test_kv_config_refused(void)
{
    struct fixture f;
    if (!lfx_begin(&f, lfx_plugin("kv")))
        return;
    const struct {
        const char *conf;
        const char *want;
    } cases[] = {
        {"config = { max_keys = 0; };", "'max_keys' is 0, must be within 1..10000000"},
        {"config = { max_keys = -5; };", "'max_keys' is -5, must be within 1..10000000"},
        {"config = { max_keys = 10000001; };", "'max_keys' is 10000001"},
        {"config = { max_keys = \"many\"; };", "'max_keys' must be an integer"},
        {"config = { max_value_bytes = -1; };", "'max_value_bytes' is -1"},
        {"config = { max_value_bytes = 2.5; };", "'max_value_bytes' must be an integer"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct shmipc_plugin_conf *conf = lfx_conf(&f, cases[i].conf);
        CU_ASSERT_PTR_NOT_NULL(conf);
        if (conf != NULL)
            expect_refusal(f.path, f.tmp, conf, -ECANCELED, cases[i].want);
        CU_ASSERT_EQUAL(tu_count_fds(), f.fds);
    }
    /* The limits themselves are accepted. */
    const struct shmipc_plugin_conf *conf =
        lfx_conf(&f, "config = { max_keys = 10000000; max_value_bytes = 0; };");
    struct plugin_gen *g = conf != NULL ? lfx_load(f.path, f.tmp, 1, 1, conf) : NULL;
    if (g != NULL) {
        CU_ASSERT_REPLY(g, "SET a ", 0, "OK");
        CU_ASSERT_REPLY(g, "SET a b", 0, "ERR too big");
        gen_unload(g);
    }
    conf = lfx_conf(&f, "config = { max_keys = 1; };");
    g = conf != NULL ? lfx_load(f.path, f.tmp, 2, 1, conf) : NULL;
    if (g != NULL) {
        CU_ASSERT_REPLY(g, "SET a 1", 0, "OK");
        CU_ASSERT_REPLY(g, "SET b 1", 0, "ERR full");
        gen_unload(g);
    }
    lfx_end(&f);
}

static void test_failthread(void)
{
    struct fixture f;
    if (!lfx_begin(&f, lfx_test_plugin("failthread")))
        return;
    struct plugin_gen *g = lfx_load(f.path, f.tmp, 1, 2, NULL);
    if (g != NULL) {
        char err[256] = "untouched";
        int rc = gen_thread_init(g, 1, err, sizeof(err));
        CU_ASSERT(rc < 0);
        CU_ASSERT_EQUAL(strncmp(err, f.path, strlen(f.path)), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "thread_init failed for worker 1"));
        CU_ASSERT_PTR_NULL(g->thread_states[1]);
        strcpy(err, "untouched");
        CU_ASSERT_EQUAL(gen_thread_init(g, 2, err, sizeof(err)), -EINVAL);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "worker 2 out of range"));
        char *priv = strdup(g->private_path);
        CU_ASSERT_TRUE(lfx_file_exists(priv));
        gen_unload(g);
        CU_ASSERT_FALSE(lfx_file_exists(priv));
        free(priv);
    }
    lfx_end(&f);
}

static char *read_text(const char *path)
{
    size_t n;
    uint8_t *b = (uint8_t *)du_read_file(path, &n);
    if (b == NULL)
        return NULL;
    char *s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, b, n);
        s[n] = '\0';
    }
    free(b);
    return s;
}

static void test_counter_lifecycle(void)
{
    struct fixture f;
    if (!lfx_begin(&f, lfx_test_plugin("counter")))
        return;
    const char *tdir = lfx_scratch(&f);
    char trace[4096], text[4200];
    snprintf(trace, sizeof(trace), "%s/trace", tdir);
    snprintf(text, sizeof(text), "config = { trace = \"%s\"; };", trace);
    const struct shmipc_plugin_conf *conf = lfx_conf(&f, text);
    CU_ASSERT_PTR_NOT_NULL(conf);
    enum { N = 3 };
    struct plugin_gen *g = conf != NULL ? lfx_load(f.path, f.tmp, 1, N, conf) : NULL;
    if (g != NULL) {
        char *t = read_text(trace);
        CU_ASSERT_TRUE(t != NULL && strcmp(t, "init\n") == 0);
        free(t);
        char err[256];
        for (unsigned w = 0; w < N; w++)
            CU_ASSERT_EQUAL(gen_thread_init(g, w, err, sizeof(err)), 0);
        CU_ASSERT_REPLY(g, "ping", 0, "ping");
        for (unsigned w = 0; w < N; w++)
            gen_thread_fini(g, w);
        t = read_text(trace);
        CU_ASSERT_TRUE(t != NULL &&
                       strcmp(t, "init\nthread_init 0\nthread_init 1\nthread_init 2\n"
                                 "thread_fini 0\nthread_fini 1\nthread_fini 2\n") == 0);
        free(t);
        gen_unload(g);
        t = read_text(trace);
        CU_ASSERT_TRUE(t != NULL && strcmp(t, "init\nthread_init 0\nthread_init 1\nthread_init 2\n"
                                              "thread_fini 0\nthread_fini 1\nthread_fini 2\n"
                                              "fini\n") == 0);
        if (t != NULL && strstr(t, "fini\n") == NULL)
            fprintf(stderr, "\n  trace: %s\n", t);
        free(t);
    }
    lfx_end(&f);
}

static void test_generations_side_by_side(void)
{
    struct fixture f;
    if (!lfx_begin(&f, lfx_plugin("echo")))
        return;
    struct plugin_gen *g1 = lfx_load(f.path, f.tmp, 1, 1, NULL);
    struct plugin_gen *g2 = lfx_load(f.path, f.tmp, 2, 1, NULL);
    if (g1 != NULL && g2 != NULL) {
        CU_ASSERT_STRING_NOT_EQUAL(g1->private_path, g2->private_path);
        CU_ASSERT_PTR_NOT_NULL(strstr(g1->private_path + strlen(f.tmp), "gen1"));
        CU_ASSERT_PTR_NOT_NULL(strstr(g2->private_path + strlen(f.tmp), "gen2"));
        /* Two copies, two handles, two states: not dlopen's cached one. */
        CU_ASSERT_NOT_EQUAL(g1->dl, g2->dl);
        CU_ASSERT_NOT_EQUAL((const void *)g1->desc, (const void *)g2->desc);
        CU_ASSERT_EQUAL(lfx_count_entries(f.tmp), 2);
        CU_ASSERT_EQUAL(lfx_is_mapped(g1->private_path), 1);
        CU_ASSERT_EQUAL(lfx_is_mapped(g2->private_path), 1);
        char *p1 = strdup(g1->private_path);
        gen_unload(g1);
        g1 = NULL;
        CU_ASSERT_FALSE(lfx_file_exists(p1));
        CU_ASSERT_EQUAL(lfx_is_mapped(p1), 0);
        CU_ASSERT_TRUE(lfx_file_exists(g2->private_path));
        CU_ASSERT_EQUAL(lfx_count_entries(f.tmp), 1);
        CU_ASSERT_REPLY(g2, "still here", 2, "still here");
        free(p1);
    }
    gen_unload(g1);
    gen_unload(g2);
    lfx_end(&f);
}

static void test_replaced_source(void)
{
    struct fixture f;
    char *greeter = lfx_plugin("greeter");
    if (greeter == NULL || !lfx_begin(&f, lfx_plugin("echo"))) {
        free(greeter);
        return;
    }
    const char *echo = f.path;
    const char *src_dir = lfx_scratch(&f);
    char src[4096];
    snprintf(src, sizeof(src), "%s/service.so", src_dir);
    CU_ASSERT_EQUAL(lfx_copy_file(echo, src), 0);
    struct plugin_gen *old = lfx_load(src, f.tmp, 1, 1, NULL);
    if (old != NULL) {
        CU_ASSERT_STRING_EQUAL(old->desc->name, "echo");
        /* Overwrite the configured file in place with another plugin. */
        CU_ASSERT_EQUAL(lfx_copy_file(greeter, src), 0);
        CU_ASSERT_REPLY(old, "after the upgrade", 4, "after the upgrade");
        CU_ASSERT_STRING_EQUAL(old->desc->name, "echo");

        struct plugin_gen *neu = lfx_load(src, f.tmp, 2, 1, NULL);
        if (neu != NULL) {
            CU_ASSERT_STRING_EQUAL(neu->desc->name, "greeter");
            CU_ASSERT_REPLY(neu, "client say hello world!!!", 0, "server hello world!!!");
            CU_ASSERT_REPLY(old, "old one", 0, "old one");
            CU_ASSERT_EQUAL(lfx_count_entries(f.tmp), 2);
            gen_unload(neu);
        }
        CU_ASSERT_REPLY(old, "and after", 0, "and after");
        gen_unload(old);
    }
    lfx_end(&f);
    free(greeter);
}

static void test_versioned_and_slow(void)
{
    struct fixture f;
    char *slow = lfx_test_plugin("slow");
    if (slow == NULL || !lfx_begin(&f, lfx_test_plugin("versioned"))) {
        free(slow);
        return;
    }
    const char *ver = f.path;
    struct plugin_gen *g = lfx_load(ver, f.tmp, 1, 1, NULL);
    if (g != NULL) {
        CU_ASSERT_STRING_EQUAL(g->desc->name, "versioned");
        CU_ASSERT_STRING_EQUAL(g->desc->version, "1.0.0");
        CU_ASSERT_REPLY(g, "hello", 2, "v1 hello");
        gen_unload(g);
    }

    /* Longer than the default, so only the configured value passes. */
    const struct shmipc_plugin_conf *conf = lfx_conf(&f, "config = { delay_ms = 350; };");
    g = conf != NULL ? lfx_load(slow, f.tmp, 1, 1, conf) : NULL;
    if (g != NULL) {
        uint64_t t0 = tu_now_ns();
        CU_ASSERT_REPLY(g, "slowly", 2, "slowly");
        CU_ASSERT((tu_now_ns() - t0) / 1000000 >= 350);
        gen_unload(g);
    }
    g = lfx_load(slow, f.tmp, 2, 1, NULL);
    if (g != NULL) {
        uint64_t t0 = tu_now_ns();
        CU_ASSERT_REPLY(g, "default", 0, "default");
        CU_ASSERT((tu_now_ns() - t0) / 1000000 >= 200);
        gen_unload(g);
    }
    conf = lfx_conf(&f, "config = { delay_ms = -1; };");
    if (conf != NULL)
        expect_refusal(slow, f.tmp, conf, 0, "delay_ms -1");
    lfx_end(&f);
    free(slow);
}

/* ---- state across reloads ---- */

/* Two generations in memory for gen_carry_state: old (number 1) and neu
 * (number 2), each with its descriptor and mem_state. */
struct carry_pair {
    struct shmipc_plugin od, nd;
    struct mem_state os, ns;
    char osrc[16], nsrc[16];
    struct plugin_gen old, neu;
};

static void carry_pair_init(struct carry_pair *c)
{
    memset(c, 0, sizeof(*c));
    const struct shmipc_plugin d = {SHMIPC_PLUGIN_HEADER("mem", "1.0.0"), .handle = dummy_handle,
                                    .handoff = mem_handoff, .save = mem_save,
                                    .restore = mem_restore};
    c->od = c->nd = d;
    c->os.value = 42;
    c->ns.value = 7;
    snprintf(c->osrc, sizeof(c->osrc), "/x/old.so");
    snprintf(c->nsrc, sizeof(c->nsrc), "/x/new.so");
    c->old = (struct plugin_gen){.desc = &c->od, .state = &c->os, .number = 1, .source = c->osrc};
    c->neu = (struct plugin_gen){.desc = &c->nd, .state = &c->ns, .number = 2, .source = c->nsrc};
}

/* gen_carry_state on the pair: its code, and err in err[256]. */
static int carry(struct carry_pair *c, char *err)
{
    strcpy(err, "untouched");
    return gen_carry_state(&c->old, &c->neu, err, 256);
}

static void test_carry_choice(void)
{
    struct carry_pair c;
    char err[256];

    /* Hand-off first, when both have it; save/restore then unused. */
    carry_pair_init(&c);
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_HANDOFF);
    CU_ASSERT_EQUAL(c.neu.carry.from, 1);
    CU_ASSERT_EQUAL(c.ns.value, 42);
    CU_ASSERT_STRING_EQUAL(c.ns.trace, "handoff");
    CU_ASSERT_STRING_EQUAL(c.os.trace, "");
    CU_ASSERT_STRING_EQUAL(c.neu.carry.why, "");

    /* Declined: save on the old, restore on the new, the pieces joined. */
    carry_pair_init(&c);
    c.ns.handoff_rc = SHMIPC_STATE_DECLINED;
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_RESTORE);
    CU_ASSERT_EQUAL(c.neu.carry.bytes, 4); /* "v=42" */
    CU_ASSERT_EQUAL(c.ns.value, 42);
    CU_ASSERT_STRING_EQUAL(c.ns.trace, "handoff,restore");
    CU_ASSERT_STRING_EQUAL(c.os.trace, "save");

    /* Only one side has handoff: save/restore. */
    carry_pair_init(&c);
    c.od.handoff = NULL;
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_RESTORE);
    CU_ASSERT_STRING_EQUAL(c.ns.trace, "restore");
    CU_ASSERT_EQUAL(c.ns.value, 42);

    /* Nothing saved: restore still gets a pointer, and 0 bytes. */
    carry_pair_init(&c);
    c.nd.handoff = NULL;
    c.os.empty_save = 1;
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_RESTORE);
    CU_ASSERT_EQUAL(c.neu.carry.bytes, 0);
    CU_ASSERT_STRING_EQUAL(c.ns.trace, "restore");
    CU_ASSERT_EQUAL(c.ns.value, 7);

    /* Declined and no save: the new state stays as init made it. */
    carry_pair_init(&c);
    c.ns.handoff_rc = SHMIPC_STATE_DECLINED;
    c.od.save = NULL;
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_NONE);
    CU_ASSERT_EQUAL(c.ns.value, 7);
    CU_ASSERT_STRING_EQUAL(c.neu.carry.why,
                           "the plugin declined the hand-off, and there is no save/restore pair");

    /* Pairs that do not match: old has only handoff, new only restore. */
    carry_pair_init(&c);
    c.od.save = NULL;
    c.nd.handoff = NULL;
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_NONE);
    CU_ASSERT_STRING_EQUAL(c.ns.trace, "");
    CU_ASSERT_STRING_EQUAL(c.neu.carry.why, "no handoff or save/restore pair between generation 1 "
                                            "(mem 1.0.0) and this one");

    /* Another plugin name: no hook is called at all. */
    carry_pair_init(&c);
    c.od.name = "other";
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_NONE);
    CU_ASSERT_STRING_EQUAL(c.ns.trace, "");
    CU_ASSERT_STRING_EQUAL(c.os.trace, "");
    CU_ASSERT_EQUAL(c.ns.value, 7);
    CU_ASSERT_STRING_EQUAL(c.neu.carry.why, "generation 1 ran another plugin ('other')");

    /* An old plugin of minor 0: its spare slots are not read as hooks. */
    carry_pair_init(&c);
    c.od.abi_minor = 0;
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_NONE);
    CU_ASSERT_STRING_EQUAL(c.os.trace, "");
    CU_ASSERT_STRING_EQUAL(c.ns.trace, "");
    CU_ASSERT_STRING_EQUAL(c.neu.carry.why, "generation 1 (mem 1.0.0) has no hook to pass it on");
    /* Nor those of a new one of minor 0; and it is told nothing. */
    carry_pair_init(&c);
    c.nd.abi_minor = 0;
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_NONE);
    CU_ASSERT_STRING_EQUAL(c.ns.trace, "");
    CU_ASSERT_STRING_EQUAL(c.neu.carry.why, "");

    /* A new plugin without hooks: nothing, and nothing to say. */
    carry_pair_init(&c);
    c.nd.handoff = NULL;
    c.nd.restore = NULL;
    CU_ASSERT_EQUAL(carry(&c, err), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_NONE);
    CU_ASSERT_STRING_EQUAL(c.neu.carry.why, "");
    CU_ASSERT_STRING_EQUAL(c.os.trace, "");

    /* No old generation (a service's first): nothing. */
    carry_pair_init(&c);
    CU_ASSERT_EQUAL(gen_carry_state(NULL, &c.neu, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.neu.carry.how, GEN_CARRY_NONE);
    CU_ASSERT_STRING_EQUAL(c.ns.trace, "");
}

static void test_carry_failures(void)
{
    struct carry_pair c;
    char err[256];

    carry_pair_init(&c);
    c.ns.handoff_rc = -EPERM;
    CU_ASSERT_EQUAL(carry(&c, err), -ECANCELED);
    CU_ASSERT_STRING_EQUAL(err, "/x/new.so: plugin 'mem' 1.0.0: handoff failed: mem: no hand-off");
    CU_ASSERT_STRING_EQUAL(c.os.trace, ""); /* no fallback after a failure */
    CU_ASSERT_EQUAL(c.ns.value, 7);

    carry_pair_init(&c);
    c.nd.handoff = NULL;
    c.os.save_fail = 1;
    CU_ASSERT_EQUAL(carry(&c, err), -ECANCELED);
    CU_ASSERT_STRING_EQUAL(err, "/x/old.so: plugin 'mem' 1.0.0: save failed: mem: cannot save");
    CU_ASSERT_STRING_EQUAL(c.ns.trace, ""); /* restore is not tried */

    carry_pair_init(&c);
    c.nd.handoff = NULL;
    c.ns.restore_fail = 1;
    CU_ASSERT_EQUAL(carry(&c, err), -ECANCELED);
    CU_ASSERT_STRING_EQUAL(err,
                           "/x/new.so: plugin 'mem' 1.0.0: restore failed: mem: cannot restore");

    /* A failure without a message still says which hook. */
    carry_pair_init(&c);
    c.nd.handoff = NULL;
    c.ns.restore_fail = 2;
    CU_ASSERT_EQUAL(carry(&c, err), -ECANCELED);
    CU_ASSERT_STRING_EQUAL(err, "/x/new.so: plugin 'mem' 1.0.0: restore failed: no reason given");
}

/* tally is a plugin of minor 0: it loads, has no state hooks, and a
 * second generation starts from nothing. tallyhooks (minor 1) carries its
 * count: shared by hand-off, or as bytes when it declines. */
static void test_tally_generations(void)
{
    struct fixture f;
    char *hooks = lfx_test_plugin("tallyhooks");
    if (hooks == NULL || !lfx_begin(&f, lfx_test_plugin("tally"))) {
        free(hooks);
        return;
    }
    char err[256];
    struct plugin_gen *g1 = lfx_load(f.path, f.tmp, 1, 1, NULL);
    struct plugin_gen *g2 = lfx_load(f.path, f.tmp, 2, 1, NULL);
    if (g1 != NULL && g2 != NULL) {
        CU_ASSERT_EQUAL(g1->desc->abi_minor, 0);
        CU_ASSERT_EQUAL(g1->desc->size, sizeof(struct shmipc_plugin));
        CU_ASSERT_PTR_NULL(g1->desc->handoff);
        CU_ASSERT_PTR_NULL(g1->desc->save);
        CU_ASSERT_PTR_NULL(g1->desc->restore);
        CU_ASSERT_REPLY(g1, "a", 0, "1");
        CU_ASSERT_REPLY(g1, "b", 0, "2");
        CU_ASSERT_EQUAL(gen_carry_state(g1, g2, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(g2->carry.how, GEN_CARRY_NONE);
        CU_ASSERT_STRING_EQUAL(g2->carry.why, "");
        CU_ASSERT_REPLY(g2, "c", 0, "1");
        CU_ASSERT_REPLY(g1, "d", 0, "3");
    }
    gen_unload(g2);
    g2 = NULL;

    /* tally -> tallyhooks: another name, so nothing, and it is said. */
    struct plugin_gen *h1 = lfx_load(hooks, f.tmp, 2, 1, NULL);
    if (g1 != NULL && h1 != NULL) {
        CU_ASSERT_EQUAL(h1->desc->abi_minor, SHMIPC_PLUGIN_ABI_MINOR);
        CU_ASSERT_EQUAL(gen_carry_state(g1, h1, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(h1->carry.how, GEN_CARRY_NONE);
        CU_ASSERT_STRING_EQUAL(h1->carry.why, "generation 1 ran another plugin ('tally')");
        CU_ASSERT_REPLY(h1, "a", 0, "1");
        CU_ASSERT_REPLY(h1, "b", 0, "2");
    }
    gen_unload(g1);

    /* Hand-off: the two generations count together, and the count
     * outlives the generation it came from. */
    struct plugin_gen *h2 = lfx_load(hooks, f.tmp, 3, 1, NULL);
    if (h1 != NULL && h2 != NULL) {
        CU_ASSERT_EQUAL(gen_carry_state(h1, h2, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(h2->carry.how, GEN_CARRY_HANDOFF);
        CU_ASSERT_EQUAL(h2->carry.from, 2);
        CU_ASSERT_REPLY(h1, "old", 0, "3");
        CU_ASSERT_REPLY(h2, "new", 0, "4");
        gen_unload(h1);
        h1 = NULL;
        CU_ASSERT_REPLY(h2, "new", 0, "5");
    }
    gen_unload(h1);

    /* Declined: the count goes as "tally 5", and is copied, not shared. */
    const struct shmipc_plugin_conf *conf = lfx_conf(&f, "config = { handoff = \"decline\"; };");
    struct plugin_gen *h3 = conf != NULL ? lfx_load(hooks, f.tmp, 4, 1, conf) : NULL;
    if (h2 != NULL && h3 != NULL) {
        CU_ASSERT_EQUAL(gen_carry_state(h2, h3, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(h3->carry.how, GEN_CARRY_RESTORE);
        CU_ASSERT_EQUAL(h3->carry.bytes, strlen("tally 5"));
        CU_ASSERT_REPLY(h3, "x", 0, "6");
        CU_ASSERT_REPLY(h2, "y", 0, "6");
    }
    gen_unload(h3);
    gen_unload(h2);
    lfx_end(&f);
    free(hooks);
}

/* The bytes kv's save writes. */
struct kv_bytes {
    uint8_t *p;
    size_t len;
};

static int kv_bytes_put(void *sink, const void *data, size_t n)
{
    struct kv_bytes *b = sink;
    uint8_t *p = realloc(b->p, b->len + n + 1);
    if (p == NULL)
        return -ENOMEM;
    memcpy(p + b->len, data, n);
    b->p = p;
    b->len += n;
    return 0;
}

/* Loads kv generation `number` with config text (NULL: none). */
static struct plugin_gen *kv_gen(struct fixture *f, unsigned number, const char *text)
{
    const struct shmipc_plugin_conf *conf = text != NULL ? lfx_conf(f, text) : NULL;
    if (text != NULL && conf == NULL)
        return NULL;
    return lfx_load(f->path, f->tmp, number, 1, conf);
}

/* restore of `len` bytes into a fresh kv generation: its code, message in
 * err[256]. */
static int kv_restore_into_new(struct fixture *f, const void *data, size_t len, char *err)
{
    struct plugin_gen *g = kv_gen(f, 9, NULL);
    if (g == NULL)
        return 1;
    strcpy(err, "untouched");
    int rc = g->desc->restore(g->state, data, len, err, 256);
    gen_unload(g);
    return rc;
}

static void test_kv_state(void)
{
    struct fixture f;
    if (!lfx_begin(&f, lfx_plugin("kv")))
        return;
    char err[256];
    struct kv_bytes b = {NULL, 0};
    struct plugin_gen *g1 = kv_gen(&f, 1, NULL), *g2 = NULL, *g3 = NULL;
    if (g1 == NULL)
        goto out;
    CU_ASSERT_PTR_NOT_NULL(g1->desc->handoff);
    CU_ASSERT_PTR_NOT_NULL(g1->desc->save);
    CU_ASSERT_PTR_NOT_NULL(g1->desc->restore);
    CU_ASSERT_REPLY(g1, "SET a 1", 0, "OK");
    CU_ASSERT_REPLY(g1, "SET b two words", 0, "OK");
    CU_ASSERT_REPLY(g1, "SET e ", 0, "OK");
    const uint8_t set_bin[] = {'S', 'E', 'T', ' ', 'k', 0xff, ' ', 0, 'v', '\n'};
    const uint8_t get_bin[] = {'G', 'E', 'T', ' ', 'k', 0xff};
    const uint8_t val_bin[] = {'V', 'A', 'L', 'U', 'E', ' ', 0, 'v', '\n'};
    CU_ASSERT_TRUE(lfx_replies_bin(g1, set_bin, sizeof(set_bin), 0, "OK", 2));

    /* Fewer keys allowed than the table holds: refused, nothing shared. */
    g2 = kv_gen(&f, 2, "config = { max_keys = 3; };");
    if (g2 != NULL) {
        CU_ASSERT_EQUAL(gen_carry_state(g1, g2, err, sizeof(err)), -ECANCELED);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "plugin 'kv' 1.0.0: handoff failed: kv: the table "
                                           "holds 4 keys, more than max_keys 3"));
        CU_ASSERT_REPLY(g2, "COUNT", 0, "0");
        gen_unload(g2);
    }
    /* A state of another layout: declined, for save/restore to carry. */
    g2 = kv_gen(&f, 2, NULL);
    if (g2 != NULL) {
        uint32_t other_layout[8] = {99};
        CU_ASSERT_EQUAL(g2->desc->handoff(g2->state, other_layout, err, sizeof(err)),
                        SHMIPC_STATE_DECLINED);
        CU_ASSERT_REPLY(g2, "COUNT", 0, "0");
        /* Hand-off: one table for both; writes on either are seen by the
         * other, and the keys outlive the old generation. */
        CU_ASSERT_EQUAL(gen_carry_state(g1, g2, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(g2->carry.how, GEN_CARRY_HANDOFF);
        CU_ASSERT_REPLY(g2, "COUNT", 0, "4");
        CU_ASSERT_REPLY(g2, "GET b", 0, "VALUE two words");
        CU_ASSERT_REPLY(g1, "SET late 1", 0, "OK");
        CU_ASSERT_REPLY(g2, "GET late", 0, "VALUE 1");
        CU_ASSERT_REPLY(g2, "DEL a", 0, "DELETED");
        CU_ASSERT_REPLY(g1, "GET a", 0, "NOT_FOUND");
        gen_unload(g1);
        g1 = NULL;
        CU_ASSERT_REPLY(g2, "SET a 11", 0, "OK");
        CU_ASSERT_REPLY(g2, "COUNT", 0, "5");
        CU_ASSERT_TRUE(lfx_replies_bin(g2, get_bin, sizeof(get_bin), 0, val_bin, sizeof(val_bin)));
    }
    if (g2 == NULL)
        goto out;

    /* save/restore: every key and value, binary included, in a new table;
     * a lower max_value_bytes keeps the values already there. */
    CU_ASSERT_EQUAL(g2->desc->save(g2->state, kv_bytes_put, &b, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(b.len > 12 && memcmp(b.p, "kvS1", 4) == 0);
    g3 = kv_gen(&f, 3, "config = { max_value_bytes = 1; max_keys = 5; };");
    if (g3 != NULL) {
        CU_ASSERT_EQUAL(g3->desc->restore(g3->state, b.p, b.len, err, sizeof(err)), 0);
        CU_ASSERT_REPLY(g3, "COUNT", 0, "5");
        CU_ASSERT_REPLY(g3, "GET a", 0, "VALUE 11");
        CU_ASSERT_REPLY(g3, "GET b", 0, "VALUE two words");
        CU_ASSERT_REPLY(g3, "GET e", 0, "VALUE ");
        CU_ASSERT_REPLY(g3, "GET late", 0, "VALUE 1");
        CU_ASSERT_TRUE(lfx_replies_bin(g3, get_bin, sizeof(get_bin), 0, val_bin, sizeof(val_bin)));
        /* A copy: the old table no longer sees the new one's writes. */
        CU_ASSERT_REPLY(g3, "DEL b", 0, "DELETED");
        CU_ASSERT_REPLY(g2, "GET b", 0, "VALUE two words");
        CU_ASSERT_REPLY(g3, "SET b xy", 0, "ERR too big");
        gen_unload(g3);
    }
    g3 = kv_gen(&f, 3, "config = { max_keys = 4; };");
    if (g3 != NULL) {
        CU_ASSERT_EQUAL(g3->desc->restore(g3->state, b.p, b.len, err, sizeof(err)), -ENOSPC);
        CU_ASSERT_STRING_EQUAL(err, "kv: the saved state has 5 keys, more than max_keys 4");
        gen_unload(g3);
    }

    /* Bytes that are not a whole saved state: refused, nothing leaks. */
    CU_ASSERT_EQUAL(kv_restore_into_new(&f, "", 0, err), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "kv: not a saved kv state (0 bytes)");
    CU_ASSERT_EQUAL(kv_restore_into_new(&f, "kvS2xxxxxxxxxxxx", 16, err), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "kv: not a saved kv state (16 bytes)");
    const size_t cuts[] = {12, 13, 23, 24, b.len - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        CU_ASSERT_EQUAL(kv_restore_into_new(&f, b.p, cuts[i], err), -EINVAL);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "kv: the saved state is cut or damaged at key "));
    }
    uint8_t *more = malloc(b.len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(more);
    memcpy(more, b.p, b.len);
    more[b.len] = 'x';
    CU_ASSERT_EQUAL(kv_restore_into_new(&f, more, b.len + 1, err), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "kv: 1 bytes after the saved state's last key");
    /* A key saved twice (the first one repeated as the second). */
    size_t first = 12 + 12 + (size_t)more[12] + (size_t)more[16];
    uint8_t *twice = malloc(12 + 2 * (first - 12));
    CU_ASSERT_PTR_NOT_NULL_FATAL(twice);
    memcpy(twice, more, first);
    memcpy(twice + first, more + 12, first - 12);
    twice[4] = 2;
    memset(twice + 5, 0, 7);
    CU_ASSERT_EQUAL(kv_restore_into_new(&f, twice, 12 + 2 * (first - 12), err), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "kv: a key saved twice at saved key 2");
    free(twice);
    free(more);
    gen_unload(g2);
out:
    free(b.p);
    lfx_end(&f);
}

static const struct test_case cases[] = {
    {"check_descriptor", test_check_descriptor},
    {"echo", test_echo},
    {"greeter", test_greeter},
    {"kv_commands", test_kv_commands},
    {"kv_binary", test_kv_binary},
    {"kv_limits", test_kv_limits},
    {"kv_many_keys", test_kv_many_keys},
    {"kv_threads", test_kv_threads},
    {"kv_config_refused", test_kv_config_refused},
    {"refusals", test_refusals},
    {"failthread", test_failthread},
    {"counter_lifecycle", test_counter_lifecycle},
    {"generations_side_by_side", test_generations_side_by_side},
    {"replaced_source", test_replaced_source},
    {"versioned_and_slow", test_versioned_and_slow},
    {"carry_choice", test_carry_choice},
    {"carry_failures", test_carry_failures},
    {"tally_generations", test_tally_generations},
    {"kv_state", test_kv_state},
    {NULL, NULL},
};

const struct test_suite suite_loader = {"loader", cases};
