/*
 * Tests of src/server/loader.c and the plugins shipped with shmipcd.
 *
 * The plugins are the built .so files under $SHMIPC_PLUGINS and
 * $SHMIPC_TEST_PLUGINS. Each test loads into its own mkdtemp directory and
 * checks at the end that the directory is empty again, that no fd is left
 * open and that no private copy is still mapped. The host API table is the
 * test's own: responses go to a malloc'd buffer (struct shmipc_response is
 * opaque to plugins, so the test defines it), log lines to a buffer, and
 * requests are split into separately allocated pieces so that a plugin
 * reading past a piece would be caught (by a wrong answer or by ASan).
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
#include "testutil.h"

/* config.c provides the accessors the daemon's host table uses. Weak, so
 * that this suite still links while config.o is not part of the program;
 * then the test host reads the group with libconfig directly. */
#pragma weak conf_plugin_int
#pragma weak conf_plugin_bool
#pragma weak conf_plugin_float
#pragma weak conf_plugin_string

/* ---- the test host ---- */

struct shmipc_response {
    uint8_t *buf;
    size_t len, cap;
    int fail; /* write/reserve return SHMIPC_ENOBUFS */
};

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[16384];
static size_t log_len;
static unsigned log_lines;

static void log_reset(void)
{
    pthread_mutex_lock(&log_mu);
    log_len = 0;
    log_lines = 0;
    log_buf[0] = '\0';
    pthread_mutex_unlock(&log_mu);
}

static unsigned log_count(void)
{
    pthread_mutex_lock(&log_mu);
    unsigned n = log_lines;
    pthread_mutex_unlock(&log_mu);
    return n;
}

__attribute__((format(printf, 2, 3))) static void th_log(int level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_mu);
    int n = snprintf(log_buf + log_len, sizeof(log_buf) - log_len, "%d %s\n", level, line);
    if (n > 0)
        log_len = (size_t)n < sizeof(log_buf) - log_len ? log_len + (size_t)n : sizeof(log_buf) - 1;
    log_lines++;
    pthread_mutex_unlock(&log_mu);
}

static int th_reserve(struct shmipc_response *r, size_t n, void **ptr)
{
    if (r->fail)
        return SHMIPC_ENOBUFS;
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 64;
        while (cap < r->len + n)
            cap *= 2;
        uint8_t *b = realloc(r->buf, cap);
        if (b == NULL)
            return -ENOMEM;
        r->buf = b;
        r->cap = cap;
    }
    *ptr = r->buf + r->len;
    r->len += n;
    return 0;
}

static int th_write(struct shmipc_response *r, const void *data, size_t n)
{
    void *p;
    int rc = th_reserve(r, n, &p);
    if (rc == 0 && n > 0)
        memcpy(p, data, n);
    return rc;
}

static size_t th_copy(const struct shmipc_request *req, size_t off, void *dst, size_t n)
{
    size_t done = 0;
    for (unsigned i = 0; i < req->niov && done < n; i++) {
        size_t len = req->iov[i].len;
        if (off >= len) {
            off -= len;
            continue;
        }
        size_t k = len - off < n - done ? len - off : n - done;
        memcpy((uint8_t *)dst + done, req->iov[i].base + off, k);
        done += k;
        off = 0;
    }
    return done;
}

static const config_setting_t *as_setting(const struct shmipc_plugin_conf *c)
{
    return (const config_setting_t *)c;
}

static config_setting_t *lookup(const struct shmipc_plugin_conf *c, const char *path)
{
    return c == NULL ? NULL : config_setting_lookup((config_setting_t *)as_setting(c), path);
}

/* The setting at `path` if its type is t1 or t2: 0, -ENOENT or -EINVAL, as
 * config.c's accessors answer. */
static int lookup_typed(const struct shmipc_plugin_conf *c, const char *path, int t1, int t2,
                        config_setting_t **out)
{
    config_setting_t *s = lookup(c, path);
    if (s == NULL)
        return -ENOENT;
    int t = config_setting_type(s);
    if (t != t1 && t != t2)
        return -EINVAL;
    *out = s;
    return 0;
}

/* th_conf_<kind>: config.c's accessor when it is linked, else the same
 * answer read with libconfig. One macro, so the four cannot drift apart. */
#define TH_CONF(kind, type, t1, t2, get)                                                           \
    static int th_conf_##kind(const struct shmipc_plugin_conf *c, const char *path, type *out)     \
    {                                                                                              \
        if (conf_plugin_##kind != NULL)                                                            \
            return conf_plugin_##kind(as_setting(c), path, out);                                   \
        config_setting_t *s;                                                                       \
        int rc = lookup_typed(c, path, t1, t2, &s);                                                \
        if (rc == 0)                                                                               \
            *out = get(s);                                                                         \
        return rc;                                                                                 \
    }
TH_CONF(int, long long, CONFIG_TYPE_INT, CONFIG_TYPE_INT64, config_setting_get_int64)
TH_CONF(bool, int, CONFIG_TYPE_BOOL, CONFIG_TYPE_BOOL, config_setting_get_bool)
TH_CONF(float, double, CONFIG_TYPE_FLOAT, CONFIG_TYPE_FLOAT, config_setting_get_float)
TH_CONF(string, const char *, CONFIG_TYPE_STRING, CONFIG_TYPE_STRING, config_setting_get_string)

static const struct shmipc_host_api test_host = {
    .size = sizeof(struct shmipc_host_api),
    .abi_minor = SHMIPC_PLUGIN_ABI_MINOR,
    .log = th_log,
    .write = th_write,
    .reserve = th_reserve,
    .copy = th_copy,
    .strerror = shmipc_strerror,
    .conf_int = th_conf_int,
    .conf_bool = th_conf_bool,
    .conf_float = th_conf_float,
    .conf_string = th_conf_string,
};

/* ---- helpers ---- */

/* $env/name.so, or NULL (and a failed assertion) when the directory is missing.
 * Without $env: `dflt` relative to this program's directory (build/tests
 * or build/<variant>/tests), so that each variant loads its own plugins. */
static char *so_path(const char *env, const char *dflt, const char *name)
{
    const char *dir = getenv(env);
    char exe[4096], def[4200];
    if (dir == NULL || *dir == '\0') {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        exe[n > 0 ? n : 0] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL)
            *slash = '\0';
        snprintf(def, sizeof(def), "%s/%s", slash != NULL ? exe : ".", dflt);
        dir = def;
    }
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        /* The build makes the tests depend on the plugins: a missing
         * directory is a broken setup, not something to skip. */
        printf("\n  %s (%s) is missing\n", env, dir);
        CU_FAIL("plugin directory missing");
        return NULL;
    }
    char *p = NULL;
    if (asprintf(&p, "%s/%s.so", dir, name) < 0)
        return NULL;
    return p;
}

static char *plugin(const char *name)
{
    return so_path("SHMIPC_PLUGINS", "../plugins", name);
}

static char *test_plugin(const char *name)
{
    return so_path("SHMIPC_TEST_PLUGINS", "plugins", name);
}

static char *make_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char *p = NULL;
    if (asprintf(&p, "%s/shmipc-loader-XXXXXX", base != NULL && *base ? base : "/tmp") < 0)
        return NULL;
    if (mkdtemp(p) == NULL) {
        free(p);
        return NULL;
    }
    return p;
}

/* Entries in dir, "." and ".." aside. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* Removes everything in dir, then dir; frees the path. */
static void remove_tmpdir(char *dir)
{
    if (dir == NULL)
        return;
    DIR *d = opendir(dir);
    if (d != NULL) {
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char p[4096];
            snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
    free(dir);
}

/* Whether this process's memory map names `path` itself (under == 0) or
 * something below the directory `path` (under == 1); -1 if unreadable. */
static int in_maps(const char *path, int under)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        return -1;
    char line[4096 + 256];
    int hit = 0;
    size_t n = strlen(path);
    while (!hit && fgets(line, sizeof(line), f) != NULL) {
        char *p = strstr(line, path);
        if (p != NULL)
            hit = under ? p[n] == '/' : (p[n] == '\n' || p[n] == '\0' || p[n] == ' ');
    }
    fclose(f);
    return hit;
}

static int is_mapped(const char *path)
{
    return in_maps(path, 0);
}

/* A private copy left open. */
static int mapped_under(const char *dir)
{
    return in_maps(dir, 1);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int write_all(const char *path, const void *data, size_t len)
{
    /* In place (O_TRUNC, same inode): what a careless upgrade does. */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    if (fd < 0)
        return -errno;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, (const uint8_t *)data + done, len - done);
        if (w < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        done += (size_t)w;
    }
    return close(fd) < 0 ? -errno : 0;
}

static int copy_file(const char *from, const char *to)
{
    size_t len;
    uint8_t *b = (uint8_t *)du_read_file(from, &len);
    if (b == NULL)
        return -ENOENT;
    int rc = write_all(to, b, len);
    free(b);
    return rc;
}

/* Runs handle() on `data`, split into separately allocated pieces of at
 * most `piece` bytes (0: one piece). The response is left in *resp
 * (free resp->buf). No CUnit calls: the kv threads use it too. */
static int call_ts(struct plugin_gen *g, void *ts, const void *data, size_t len, size_t piece,
                   struct shmipc_response *resp)
{
    memset(resp, 0, sizeof(*resp));
    if (piece == 0)
        piece = len > 0 ? len : 1;
    unsigned niov = (unsigned)((len + piece - 1) / piece);
    struct shmipc_plugin_iov *iov = calloc(niov > 0 ? niov : 1, sizeof(*iov));
    int rc = iov != NULL ? 0 : -ENOMEM;
    for (unsigned i = 0; rc == 0 && i < niov; i++) {
        size_t off = (size_t)i * piece;
        size_t n = len - off < piece ? len - off : piece;
        uint8_t *b = malloc(n);
        if (b == NULL) {
            rc = -ENOMEM;
            break;
        }
        memcpy(b, (const uint8_t *)data + off, n);
        iov[i].base = b;
        iov[i].len = n;
    }
    if (rc == 0) {
        struct shmipc_request req = {42, 7, len, niov, iov};
        rc = g->desc->handle(g->state, ts, &req, resp);
    }
    for (unsigned i = 0; iov != NULL && i < niov; i++)
        free((void *)iov[i].base);
    free(iov);
    return rc;
}

static int call(struct plugin_gen *g, const void *data, size_t len, size_t piece,
                struct shmipc_response *resp)
{
    return call_ts(g, g->nworkers > 0 ? g->thread_states[0] : NULL, data, len, piece, resp);
}

/* Whether the request `req` (a string) gets exactly `want`. */
static int replies(struct plugin_gen *g, const char *req, size_t piece, const char *want)
{
    struct shmipc_response r;
    int rc = call(g, req, strlen(req), piece, &r);
    int ok = rc == 0 && r.len == strlen(want) && (r.len == 0 || memcmp(r.buf, want, r.len) == 0);
    if (!ok)
        fprintf(stderr, "\n  request \"%s\": rc %d, reply \"%.*s\", wanted \"%s\"\n", req, rc,
                (int)r.len, r.buf != NULL ? (const char *)r.buf : "", want);
    free(r.buf);
    return ok;
}
#define CU_ASSERT_REPLY(g, req, piece, want) CU_ASSERT_TRUE(replies((g), (req), (piece), (want)))

/* Same with binary request and reply. */
static int replies_bin(struct plugin_gen *g, const void *req, size_t len, size_t piece,
                       const void *want, size_t wlen)
{
    struct shmipc_response r;
    int rc = call(g, req, len, piece, &r);
    int ok = rc == 0 && r.len == wlen && (wlen == 0 || memcmp(r.buf, want, wlen) == 0);
    if (!ok)
        fprintf(stderr, "\n  binary request of %zu bytes: rc %d, reply of %zu bytes, wanted %zu\n",
                len, rc, r.len, wlen);
    free(r.buf);
    return ok;
}

/* Per-test scaffolding: the plugin under test, a tmpdir, and the fd count
 * at the start. `scratch`, made on demand, holds the test's own files apart
 * from tmp, so that tmp's count stays about private copies. */
struct fixture {
    char *path;
    char *tmp;
    char *scratch;
    int fds;
    config_t cfg; /* the last fixture_conf(), while has_cfg */
    int has_cfg;
};

/* Takes `path` (from plugin() or test_plugin(); NULL when that has failed
 * the test already). 0 when the test cannot run; then nothing is left to
 * free. */
static int fixture_begin(struct fixture *f, char *path)
{
    f->path = path;
    f->scratch = NULL;
    f->has_cfg = 0;
    if (path == NULL)
        return 0;
    f->tmp = make_tmpdir();
    CU_ASSERT_PTR_NOT_NULL(f->tmp);
    f->fds = tu_count_fds();
    log_reset();
    if (f->tmp == NULL) {
        free(path);
        f->path = NULL;
        return 0;
    }
    return 1;
}

/* The plugin config group from "config = { ... };" text, or NULL. It lives
 * until the next call or fixture_end. */
static const struct shmipc_plugin_conf *fixture_conf(struct fixture *f, const char *text)
{
    if (f->has_cfg)
        config_destroy(&f->cfg);
    config_init(&f->cfg);
    f->has_cfg = 1;
    if (config_read_string(&f->cfg, text) != CONFIG_TRUE) {
        fprintf(stderr, "config: line %d: %s\n", config_error_line(&f->cfg),
                config_error_text(&f->cfg));
        return NULL;
    }
    return (const struct shmipc_plugin_conf *)config_lookup(&f->cfg, "config");
}

/* The scratch directory, made on first use; ends the test (CUnit's FATAL)
 * when it cannot be made. */
static const char *fixture_scratch(struct fixture *f)
{
    if (f->scratch == NULL)
        f->scratch = make_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(f->scratch);
    return f->scratch;
}

static void fixture_end(struct fixture *f)
{
    remove_tmpdir(f->scratch);
    f->scratch = NULL;
    if (f->has_cfg)
        config_destroy(&f->cfg);
    f->has_cfg = 0;
    CU_ASSERT_EQUAL(count_entries(f->tmp), 0);
    CU_ASSERT_EQUAL(mapped_under(f->tmp), 0);
    CU_ASSERT_EQUAL(tu_count_fds(), f->fds);
    remove_tmpdir(f->tmp);
    f->tmp = NULL;
    free(f->path);
    f->path = NULL;
}

static struct plugin_gen *load(const char *path, const char *tmp, unsigned number,
                               unsigned nworkers, const struct shmipc_plugin_conf *conf)
{
    char err[512];
    struct plugin_gen *g = NULL;
    int rc = gen_load(path, tmp, number, nworkers, &test_host, conf, &g, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  gen_load(%s): %d %s\n", path, rc, err);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(rc == 0, g != NULL);
    return g;
}

/* Runs `checks` on generation 1 of the plugin at `path` (taken), loaded
 * with no config for `nworkers` workers, then unloads it. */
static void run_loaded(char *path, unsigned nworkers, void (*checks)(struct plugin_gen *g))
{
    struct fixture f;
    if (!fixture_begin(&f, path))
        return;
    struct plugin_gen *g = load(f.path, f.tmp, 1, nworkers, NULL);
    if (g != NULL) {
        checks(g);
        gen_unload(g);
    }
    fixture_end(&f);
}

/* ---- descriptor checks, in memory ---- */

static int dummy_handle(void *state, void *ts, const struct shmipc_request *req,
                        struct shmipc_response *resp)
{
    (void)state, (void)ts, (void)req, (void)resp;
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
    if (!fixture_begin(&f, plugin("echo")))
        return;
    struct plugin_gen *g = load(f.path, f.tmp, 3, 2, NULL);
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
        CU_ASSERT_EQUAL(count_entries(f.tmp), 1);
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
        CU_ASSERT_EQUAL(is_mapped(g->private_path), 1);
        CU_ASSERT_EQUAL(is_mapped(f.path), 0);

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
        CU_ASSERT_TRUE(replies_bin(g, data, big, 4096, data, big));
        CU_ASSERT_TRUE(replies_bin(g, data, big, 0, data, big));
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
        CU_ASSERT_FALSE(file_exists(priv));
        CU_ASSERT_EQUAL(is_mapped(priv), 0);
        free(priv);
    }
    fixture_end(&f);
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
    CU_ASSERT_EQUAL(log_count(), 0);

    /* Unexpected input: answered anyway, one warning per thread. */
    struct shmipc_response r;
    CU_ASSERT_EQUAL(call_ts(g, g->thread_states[0], "hi", 2, 0, &r), 0);
    CU_ASSERT_TRUE(r.len == strlen(answer) && memcmp(r.buf, answer, r.len) == 0);
    free(r.buf);
    CU_ASSERT_EQUAL(log_count(), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(log_buf, "greeter"));
    CU_ASSERT_EQUAL(log_buf[0], '0' + SHMIPC_LOG_WARN);
    CU_ASSERT_EQUAL(call_ts(g, g->thread_states[0], "client say hello world!!", 24, 0, &r), 0);
    free(r.buf);
    CU_ASSERT_EQUAL(call_ts(g, g->thread_states[0], "client say hello world!!!!", 26, 0, &r), 0);
    free(r.buf);
    CU_ASSERT_EQUAL(log_count(), 1);
    CU_ASSERT_EQUAL(call_ts(g, g->thread_states[1], "", 0, 0, &r), 0);
    CU_ASSERT_TRUE(r.len == strlen(answer) && memcmp(r.buf, answer, r.len) == 0);
    free(r.buf);
    CU_ASSERT_EQUAL(log_count(), 2);

    gen_thread_fini(g, 0);
    gen_thread_fini(g, 1);
    CU_ASSERT_PTR_NULL(g->thread_states[0]);
    CU_ASSERT_PTR_NULL(g->thread_states[1]);
}

static void test_greeter(void)
{
    run_loaded(plugin("greeter"), 2, greeter_checks);
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
    run_loaded(plugin("kv"), 1, kv_commands_checks);
}

static void kv_binary_checks(struct plugin_gen *g)
{
    /* Every byte value, NUL and spaces included, twice over. */
    uint8_t req[8 + 512], want[6 + 512];
    memcpy(req, "SET bin ", 8);
    memcpy(want, "VALUE ", 6);
    for (int i = 0; i < 512; i++)
        req[8 + i] = want[6 + i] = (uint8_t)(255 - i % 256);
    CU_ASSERT_TRUE(replies_bin(g, req, sizeof(req), 7, "OK", 2));
    CU_ASSERT_TRUE(replies_bin(g, "GET bin", 7, 0, want, sizeof(want)));
    CU_ASSERT_TRUE(replies_bin(g, "GET bin", 7, 1, want, sizeof(want)));

    /* Binary keys: anything but a space. */
    const uint8_t set_k[] = {'S', 'E', 'T', ' ', 0, 0xff, '\n', ' ', 'v', 0};
    const uint8_t get_k[] = {'G', 'E', 'T', ' ', 0, 0xff, '\n'};
    const uint8_t get_k2[] = {'G', 'E', 'T', ' ', 0, 0xff};
    const uint8_t val[] = {'V', 'A', 'L', 'U', 'E', ' ', 'v', 0};
    CU_ASSERT_TRUE(replies_bin(g, set_k, sizeof(set_k), 3, "OK", 2));
    CU_ASSERT_TRUE(replies_bin(g, get_k, sizeof(get_k), 0, val, sizeof(val)));
    CU_ASSERT_TRUE(replies_bin(g, get_k2, sizeof(get_k2), 0, "NOT_FOUND", 9));
    CU_ASSERT_REPLY(g, "COUNT", 0, "2");
}

static void test_kv_binary(void)
{
    run_loaded(plugin("kv"), 1, kv_binary_checks);
}

static void test_kv_limits(void)
{
    struct fixture f;
    if (!fixture_begin(&f, plugin("kv")))
        return;
    if (conf_plugin_int == NULL)
        printf(
            "\nNOTE: config.c is not linked: the test host reads plugin config with libconfig\n");
    const struct shmipc_plugin_conf *conf =
        fixture_conf(&f, "config = { max_keys = 3; max_value_bytes = 16; };");
    CU_ASSERT_PTR_NOT_NULL(conf);
    struct plugin_gen *g = conf != NULL ? load(f.path, f.tmp, 1, 1, conf) : NULL;
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
        CU_ASSERT_TRUE(replies_bin(g, req, big, 65536, "ERR too big", 11));
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
    fixture_end(&f);
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
        ok &= replies(g, cmd, 0, "OK");
    }
    CU_ASSERT_TRUE(ok);
    snprintf(want, sizeof(want), "%d", N);
    CU_ASSERT_REPLY(g, "COUNT", 0, want);
    for (int i = 0; i < N; i++) {
        snprintf(cmd, sizeof(cmd), "GET key%d", i);
        snprintf(want, sizeof(want), "VALUE value%d", i * 7);
        ok &= replies(g, cmd, 0, want);
    }
    CU_ASSERT_TRUE(ok);
    for (int i = 0; i < N; i += 2) {
        snprintf(cmd, sizeof(cmd), "DEL key%d", i);
        ok &= replies(g, cmd, 0, "DELETED");
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
    run_loaded(plugin("kv"), 1, kv_many_keys_checks);
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
        a->ok &= replies(a->g, cmd, 1 + i % 5, "OK");
        snprintf(cmd, sizeof(cmd), "SET shared %d", i);
        a->ok &= replies(a->g, cmd, 0, "OK");
        snprintf(cmd, sizeof(cmd), "GET t%d-%d", a->id, i);
        snprintf(want, sizeof(want), "VALUE %d", i);
        a->ok &= replies(a->g, cmd, 0, want);
        struct shmipc_response r;
        a->ok &= call(a->g, "GET shared", 10, 0, &r) == 0 && r.len > 6 &&
                 memcmp(r.buf, "VALUE ", 6) == 0;
        free(r.buf);
        if (i % 3 == 0) {
            snprintf(cmd, sizeof(cmd), "DEL t%d-%d", a->id, i);
            a->ok &= replies(a->g, cmd, 0, "DELETED");
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
    run_loaded(plugin("kv"), 4, kv_threads_checks);
}

/* A refused load: negative, no generation, err names the file and `want`. */
static void expect_refusal(const char *path, const char *tmp, const struct shmipc_plugin_conf *conf,
                           int code, const char *want)
{
    char err[512] = "untouched";
    struct plugin_gen dummy, *g = &dummy; /* gen_load must reset it */
    int rc = gen_load(path, tmp, 9, 2, &test_host, conf, &g, err, sizeof(err));
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
    CU_ASSERT_EQUAL(count_entries(tmp), 0);
    CU_ASSERT_EQUAL(mapped_under(tmp), 0); /* dlclose()d */
}

static void test_refusals(void)
{
    struct fixture f;
    if (!fixture_begin(&f, test_plugin("badabi"))) /* only as a probe for the directory */
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
            char *p = test_plugin(cases[i].name);
            CU_ASSERT_PTR_NOT_NULL_FATAL(p);
            expect_refusal(p, f.tmp, NULL, cases[i].code, cases[i].want);
            CU_ASSERT_EQUAL(tu_count_fds(), f.fds);
            free(p);
        }
    }

    /* Not plugins at all: missing, a directory, not ELF, empty. Kept
     * outside f.tmp so that its count stays about private copies. */
    const char *other = fixture_scratch(&f);
    char p[4096];
    snprintf(p, sizeof(p), "%s/missing.so", other);
    expect_refusal(p, f.tmp, NULL, -ENOENT, "No such file or directory");
    expect_refusal(other, f.tmp, NULL, 0, "not a regular file");
    snprintf(p, sizeof(p), "%s/text.so", other);
    const char *text = "this is not a shared object, only text pretending to be one\n";
    CU_ASSERT_EQUAL(write_all(p, text, strlen(text)), 0);
    expect_refusal(p, f.tmp, NULL, 0, "dlopen failed");
    snprintf(p, sizeof(p), "%s/empty.so", other);
    CU_ASSERT_EQUAL(write_all(p, "", 0), 0);
    expect_refusal(p, f.tmp, NULL, 0, "dlopen failed");

    /* A tmpdir that does not exist: refused, naming file and directory. */
    char *echo = plugin("echo");
    if (echo != NULL) {
        snprintf(p, sizeof(p), "%s/no-such-dir", other);
        char err[512] = "untouched";
        struct plugin_gen *g = NULL;
        CU_ASSERT_EQUAL(gen_load(echo, p, 1, 1, &test_host, NULL, &g, err, sizeof(err)), -ENOENT);
        CU_ASSERT_PTR_NULL(g);
        CU_ASSERT_EQUAL(strncmp(err, echo, strlen(echo)), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, p));
        CU_ASSERT_EQUAL(count_entries(other), 2); /* text.so, empty.so */
        free(echo);
    }
    fixture_end(&f);
}

static void test_kv_config_refused(void)
{
    struct fixture f;
    if (!fixture_begin(&f, plugin("kv")))
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
        const struct shmipc_plugin_conf *conf = fixture_conf(&f, cases[i].conf);
        CU_ASSERT_PTR_NOT_NULL(conf);
        if (conf != NULL)
            expect_refusal(f.path, f.tmp, conf, -ECANCELED, cases[i].want);
        CU_ASSERT_EQUAL(tu_count_fds(), f.fds);
    }
    /* The limits themselves are accepted. */
    const struct shmipc_plugin_conf *conf =
        fixture_conf(&f, "config = { max_keys = 10000000; max_value_bytes = 0; };");
    struct plugin_gen *g = conf != NULL ? load(f.path, f.tmp, 1, 1, conf) : NULL;
    if (g != NULL) {
        CU_ASSERT_REPLY(g, "SET a ", 0, "OK");
        CU_ASSERT_REPLY(g, "SET a b", 0, "ERR too big");
        gen_unload(g);
    }
    conf = fixture_conf(&f, "config = { max_keys = 1; };");
    g = conf != NULL ? load(f.path, f.tmp, 2, 1, conf) : NULL;
    if (g != NULL) {
        CU_ASSERT_REPLY(g, "SET a 1", 0, "OK");
        CU_ASSERT_REPLY(g, "SET b 1", 0, "ERR full");
        gen_unload(g);
    }
    fixture_end(&f);
}

static void test_failthread(void)
{
    struct fixture f;
    if (!fixture_begin(&f, test_plugin("failthread")))
        return;
    struct plugin_gen *g = load(f.path, f.tmp, 1, 2, NULL);
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
        CU_ASSERT_TRUE(file_exists(priv));
        gen_unload(g);
        CU_ASSERT_FALSE(file_exists(priv));
        free(priv);
    }
    fixture_end(&f);
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
    if (!fixture_begin(&f, test_plugin("counter")))
        return;
    const char *tdir = fixture_scratch(&f);
    char trace[4096], text[4200];
    snprintf(trace, sizeof(trace), "%s/trace", tdir);
    snprintf(text, sizeof(text), "config = { trace = \"%s\"; };", trace);
    const struct shmipc_plugin_conf *conf = fixture_conf(&f, text);
    CU_ASSERT_PTR_NOT_NULL(conf);
    enum { N = 3 };
    struct plugin_gen *g = conf != NULL ? load(f.path, f.tmp, 1, N, conf) : NULL;
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
    fixture_end(&f);
}

static void test_generations_side_by_side(void)
{
    struct fixture f;
    if (!fixture_begin(&f, plugin("echo")))
        return;
    struct plugin_gen *g1 = load(f.path, f.tmp, 1, 1, NULL);
    struct plugin_gen *g2 = load(f.path, f.tmp, 2, 1, NULL);
    if (g1 != NULL && g2 != NULL) {
        CU_ASSERT_STRING_NOT_EQUAL(g1->private_path, g2->private_path);
        CU_ASSERT_PTR_NOT_NULL(strstr(g1->private_path + strlen(f.tmp), "gen1"));
        CU_ASSERT_PTR_NOT_NULL(strstr(g2->private_path + strlen(f.tmp), "gen2"));
        /* Two copies, two handles, two states: not dlopen's cached one. */
        CU_ASSERT_NOT_EQUAL(g1->dl, g2->dl);
        CU_ASSERT_NOT_EQUAL((const void *)g1->desc, (const void *)g2->desc);
        CU_ASSERT_EQUAL(count_entries(f.tmp), 2);
        CU_ASSERT_EQUAL(is_mapped(g1->private_path), 1);
        CU_ASSERT_EQUAL(is_mapped(g2->private_path), 1);
        char *p1 = strdup(g1->private_path);
        gen_unload(g1);
        g1 = NULL;
        CU_ASSERT_FALSE(file_exists(p1));
        CU_ASSERT_EQUAL(is_mapped(p1), 0);
        CU_ASSERT_TRUE(file_exists(g2->private_path));
        CU_ASSERT_EQUAL(count_entries(f.tmp), 1);
        CU_ASSERT_REPLY(g2, "still here", 2, "still here");
        free(p1);
    }
    gen_unload(g1);
    gen_unload(g2);
    fixture_end(&f);
}

static void test_replaced_source(void)
{
    struct fixture f;
    char *greeter = plugin("greeter");
    if (greeter == NULL || !fixture_begin(&f, plugin("echo"))) {
        free(greeter);
        return;
    }
    const char *echo = f.path;
    const char *src_dir = fixture_scratch(&f);
    char src[4096];
    snprintf(src, sizeof(src), "%s/service.so", src_dir);
    CU_ASSERT_EQUAL(copy_file(echo, src), 0);
    struct plugin_gen *old = load(src, f.tmp, 1, 1, NULL);
    if (old != NULL) {
        CU_ASSERT_STRING_EQUAL(old->desc->name, "echo");
        /* Overwrite the configured file in place with another plugin. */
        CU_ASSERT_EQUAL(copy_file(greeter, src), 0);
        CU_ASSERT_REPLY(old, "after the upgrade", 4, "after the upgrade");
        CU_ASSERT_STRING_EQUAL(old->desc->name, "echo");

        struct plugin_gen *neu = load(src, f.tmp, 2, 1, NULL);
        if (neu != NULL) {
            CU_ASSERT_STRING_EQUAL(neu->desc->name, "greeter");
            CU_ASSERT_REPLY(neu, "client say hello world!!!", 0, "server hello world!!!");
            CU_ASSERT_REPLY(old, "old one", 0, "old one");
            CU_ASSERT_EQUAL(count_entries(f.tmp), 2);
            gen_unload(neu);
        }
        CU_ASSERT_REPLY(old, "and after", 0, "and after");
        gen_unload(old);
    }
    fixture_end(&f);
    free(greeter);
}

static void test_versioned_and_slow(void)
{
    struct fixture f;
    char *slow = test_plugin("slow");
    if (slow == NULL || !fixture_begin(&f, test_plugin("versioned"))) {
        free(slow);
        return;
    }
    const char *ver = f.path;
    struct plugin_gen *g = load(ver, f.tmp, 1, 1, NULL);
    if (g != NULL) {
        CU_ASSERT_STRING_EQUAL(g->desc->name, "versioned");
        CU_ASSERT_STRING_EQUAL(g->desc->version, "1.0.0");
        CU_ASSERT_REPLY(g, "hello", 2, "v1 hello");
        gen_unload(g);
    }

    /* Longer than the default, so only the configured value passes. */
    const struct shmipc_plugin_conf *conf = fixture_conf(&f, "config = { delay_ms = 350; };");
    g = conf != NULL ? load(slow, f.tmp, 1, 1, conf) : NULL;
    if (g != NULL) {
        uint64_t t0 = tu_now_ns();
        CU_ASSERT_REPLY(g, "slowly", 2, "slowly");
        CU_ASSERT((tu_now_ns() - t0) / 1000000 >= 350);
        gen_unload(g);
    }
    g = load(slow, f.tmp, 2, 1, NULL);
    if (g != NULL) {
        uint64_t t0 = tu_now_ns();
        CU_ASSERT_REPLY(g, "default", 0, "default");
        CU_ASSERT((tu_now_ns() - t0) / 1000000 >= 200);
        gen_unload(g);
    }
    conf = fixture_conf(&f, "config = { delay_ms = -1; };");
    if (conf != NULL)
        expect_refusal(slow, f.tmp, conf, 0, "delay_ms -1");
    fixture_end(&f);
    free(slow);
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
    {NULL, NULL},
};

const struct test_suite suite_loader = {"loader", cases};
