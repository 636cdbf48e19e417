/*
 * The loader suite's fixture (tests/unit/test_loader.c): the test host
 * API table, plugin paths, temporary directories, requests in pieces, and
 * the per-test scaffolding. What each offers, and who owns what, is in
 * loader_fixture.h.
 */
#include "loader_fixture.h"

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

#include "daemon_util.h"

/* ---- the test host ---- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
char lfx_log_buf[16384];
static size_t log_len;
static unsigned log_lines;

static void log_reset(void)
{
    pthread_mutex_lock(&log_mu);
    log_len = 0;
    log_lines = 0;
    lfx_log_buf[0] = '\0';
    pthread_mutex_unlock(&log_mu);
}

unsigned lfx_log_count(void)
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
    int n = snprintf(lfx_log_buf + log_len, sizeof(lfx_log_buf) - log_len, "%d %s\n", level, line);
    if (n > 0)
        log_len = (size_t)n < sizeof(lfx_log_buf) - log_len ? log_len + (size_t)n
                                                            : sizeof(lfx_log_buf) - 1;
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

const struct shmipc_host_api lfx_test_host = {
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

char *lfx_plugin(const char *name)
{
    return so_path("SHMIPC_PLUGINS", "../plugins", name);
}

char *lfx_test_plugin(const char *name)
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
int lfx_count_entries(const char *dir)
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

int lfx_is_mapped(const char *path)
{
    return in_maps(path, 0);
}

/* A private copy left open. */
int lfx_mapped_under(const char *dir)
{
    return in_maps(dir, 1);
}

int lfx_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int lfx_write_all(const char *path, const void *data, size_t len)
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

int lfx_copy_file(const char *from, const char *to)
{
    size_t len;
    uint8_t *b = (uint8_t *)du_read_file(from, &len);
    if (b == NULL)
        return -ENOENT;
    int rc = lfx_write_all(to, b, len);
    free(b);
    return rc;
}

/* Runs handle() on `data`, split into separately allocated pieces of at
 * most `piece` bytes (0: one piece). The response is left in *resp
 * (free resp->buf). No CUnit calls: the kv threads use it too. */
int lfx_call_ts(struct plugin_gen *g, void *ts, const void *data, size_t len, size_t piece,
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

int lfx_call(struct plugin_gen *g, const void *data, size_t len, size_t piece,
             struct shmipc_response *resp)
{
    return lfx_call_ts(g, g->nworkers > 0 ? g->thread_states[0] : NULL, data, len, piece, resp);
}

/* Whether the request `req` (a string) gets exactly `want`. */
int lfx_replies(struct plugin_gen *g, const char *req, size_t piece, const char *want)
{
    struct shmipc_response r;
    int rc = lfx_call(g, req, strlen(req), piece, &r);
    int ok = rc == 0 && r.len == strlen(want) && (r.len == 0 || memcmp(r.buf, want, r.len) == 0);
    if (!ok)
        fprintf(stderr, "\n  request \"%s\": rc %d, reply \"%.*s\", wanted \"%s\"\n", req, rc,
                (int)r.len, r.buf != NULL ? (const char *)r.buf : "", want);
    free(r.buf);
    return ok;
}

/* Same with binary request and reply. */
int lfx_replies_bin(struct plugin_gen *g, const void *req, size_t len, size_t piece,
                    const void *want, size_t wlen)
{
    struct shmipc_response r;
    int rc = lfx_call(g, req, len, piece, &r);
    int ok = rc == 0 && r.len == wlen && (wlen == 0 || memcmp(r.buf, want, wlen) == 0);
    if (!ok)
        fprintf(stderr, "\n  binary request of %zu bytes: rc %d, reply of %zu bytes, wanted %zu\n",
                len, rc, r.len, wlen);
    free(r.buf);
    return ok;
}

/* Takes `path` (from lfx_plugin() or lfx_test_plugin(); NULL when that has failed
 * the test already). 0 when the test cannot run; then nothing is left to
 * free. */
/* ---- fixture ---- */

int lfx_begin(struct fixture *f, char *path)
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
 * until the next call or lfx_end. */
const struct shmipc_plugin_conf *lfx_conf(struct fixture *f, const char *text)
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
const char *lfx_scratch(struct fixture *f)
{
    if (f->scratch == NULL)
        f->scratch = make_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(f->scratch);
    return f->scratch;
}

void lfx_end(struct fixture *f)
{
    remove_tmpdir(f->scratch);
    f->scratch = NULL;
    if (f->has_cfg)
        config_destroy(&f->cfg);
    f->has_cfg = 0;
    CU_ASSERT_EQUAL(lfx_count_entries(f->tmp), 0);
    CU_ASSERT_EQUAL(lfx_mapped_under(f->tmp), 0);
    CU_ASSERT_EQUAL(tu_count_fds(), f->fds);
    remove_tmpdir(f->tmp);
    f->tmp = NULL;
    free(f->path);
    f->path = NULL;
}

struct plugin_gen *lfx_load(const char *path, const char *tmp, unsigned number, unsigned nworkers,
                            const struct shmipc_plugin_conf *conf)
{
    char err[512];
    struct plugin_gen *g = NULL;
    int rc = gen_load(path, tmp, number, nworkers, &lfx_test_host, conf, &g, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  gen_load(%s): %d %s\n", path, rc, err);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(rc == 0, g != NULL);
    return g;
}

/* Runs `checks` on generation 1 of the plugin at `path` (taken), loaded
 * with no config for `nworkers` workers, then unloads it. */
void lfx_run_loaded(char *path, unsigned nworkers, void (*checks)(struct plugin_gen *g))
{
    struct fixture f;
    if (!lfx_begin(&f, path))
        return;
    struct plugin_gen *g = lfx_load(f.path, f.tmp, 1, nworkers, NULL);
    if (g != NULL) {
        checks(g);
        gen_unload(g);
    }
    lfx_end(&f);
}
