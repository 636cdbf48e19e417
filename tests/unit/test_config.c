/*
 * Config loader: a full file read back field by field, defaults, plugin
 * path resolution, the plugin accessors, and one refusal per rule with the
 * exact "FILE:LINE: key 'K': " prefix. Every file is written into a fresh
 * mkdtemp directory that the test removes; a failed load must leave the
 * struct zeroed so that conf_free() after it is harmless (ASan checks the
 * leaks).
 */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/config.h"
#include "testutil.h"

/* ---- scratch directory ---- */

static char tmp[PATH_MAX]; /* realpath of the test's directory */

static void tmp_make(void)
{
    char templ[] = "/tmp/shmipc-config-XXXXXX";
    char *d = mkdtemp(templ);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(realpath(d, tmp));
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void tmp_remove(void)
{
    CU_ASSERT_EQUAL(nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS), 0);
}

/* Writes tmp/name (making parent directories); returns the path. */
static const char *put(const char *name, const char *text)
{
    static char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", tmp, name);
    for (char *p = path + strlen(tmp) + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        mkdir(path, 0700);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    CU_ASSERT_EQUAL(fclose(f), 0);
    return path;
}

static char *tpath(const char *name)
{
    static char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", tmp, name);
    return path;
}

/* 1-based line of the first occurrence of `marker` in text. */
static int line_of(const char *text, const char *marker)
{
    const char *at = strstr(text, marker);
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    int line = 1;
    for (const char *p = text; p < at; p++)
        line += *p == '\n';
    return line;
}

static int is_zeroed(const struct daemon_conf *c)
{
    static const struct daemon_conf zero;
    return memcmp(c, &zero, sizeof(zero)) == 0;
}

/* ---- reading back ---- */

static const char full_text[] =
    "# every key\n"
    "workers = 7;\n"
    "adaptive_spin = false;\n"
    "log = { level = \"debug\"; };\n"
    "admin = \"unix:/run/x/admin.sock\";\n"
    "admin_mode = \"0640\";\n"
    "plugin_dir = \"@DIR@/plugs\";\n"
    "limits = {\n"
    "  max_sessions = 5000;\n"
    "  max_pool_bytes = 4294967295L;\n"
    "  handshake_timeout_ms = 250;\n"
    "  max_event_bytes = 1073741824;\n"
    "  drain_timeout_ms = 0;\n"
    "};\n"
    "services = (\n"
    "  { name = \"svc.one-1_A\"; listen = \"unix:/run/x/one.sock\"; mode = \"0604\";\n"
    "    allowed_dir = \"/dev/shm/one\"; plugin = \"one.so\";\n"
    "    config = { limit = 3; }; },\n"
    "  { name = \"two\"; listen = \"tcp:127.0.0.1:7001\";\n"
    "    plugin = \"@DIR@/elsewhere/two.so\"; }\n"
    ");\n";

/* full_text with @DIR@ replaced by tmp. */
static const char *full_file(void)
{
    static char text[sizeof(full_text) + 2 * PATH_MAX];
    const char *src = full_text;
    char *dst = text;
    for (const char *at; (at = strstr(src, "@DIR@")) != NULL; src = at + 5) {
        memcpy(dst, src, (size_t)(at - src));
        dst += at - src;
        dst += sprintf(dst, "%s", tmp);
    }
    strcpy(dst, src);
    return text;
}

/* A service as test_full_file reads it back: `plugin` is relative to tmp,
 * `marker` stands on the line where the service starts. */
struct svc_want {
    const char *name, *listen;
    int mode;
    const char *allowed_dir, *plugin, *marker;
};

static void check_svc(const struct svc_conf *s, const struct svc_want *w, const char *text)
{
    CU_ASSERT_STRING_EQUAL(s->name, w->name);
    CU_ASSERT_STRING_EQUAL(s->listen, w->listen);
    CU_ASSERT_EQUAL(s->mode, w->mode);
    CU_ASSERT_STRING_EQUAL(s->allowed_dir, w->allowed_dir);
    CU_ASSERT_STRING_EQUAL(s->plugin, tpath(w->plugin));
    CU_ASSERT_EQUAL(s->line, line_of(text, w->marker));
}

static void test_full_file(void)
{
    tmp_make();
    put("plugs/one.so", "");
    put("elsewhere/two.so", "");
    const char *text = full_file();
    const char *path = put("full.conf", text);
    struct daemon_conf c;
    char err[512] = "";
    int rc = conf_load(path, &c, err, sizeof(err));
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(err, "");
    CU_ASSERT_STRING_EQUAL(c.path, tpath("full.conf"));
    CU_ASSERT_EQUAL(c.workers, 7);
    CU_ASSERT_EQUAL(c.adaptive_spin, 0);
    CU_ASSERT_EQUAL(c.log_level, LOG_DEBUG);
    CU_ASSERT_STRING_EQUAL(c.admin, "unix:/run/x/admin.sock");
    CU_ASSERT_EQUAL(c.admin_mode, 0640);
    CU_ASSERT_EQUAL(c.max_sessions, 5000);
    CU_ASSERT_EQUAL(c.max_pool_bytes, 4294967295ull);
    CU_ASSERT_EQUAL(c.handshake_timeout_ms, 250);
    CU_ASSERT_EQUAL(c.max_event_bytes, 1073741824u);
    CU_ASSERT_EQUAL(c.drain_timeout_ms, 0);
    CU_ASSERT_EQUAL_FATAL(c.nservices, 2);

    static const struct svc_want want[] = {
        {"svc.one-1_A", "unix:/run/x/one.sock", 0604, "/dev/shm/one", "plugs/one.so",
         "{ name = \"svc.one"},
        {"two", "tcp:127.0.0.1:7001", 0660, "/dev/shm", "elsewhere/two.so", "{ name = \"two\""},
    };
    const struct svc_conf *a = &c.services[0], *b = &c.services[1];
    check_svc(a, &want[0], text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a->plugin_conf);
    long long v = 0;
    CU_ASSERT_EQUAL(conf_plugin_int(a->plugin_conf, "limit", &v), 0);
    CU_ASSERT_EQUAL(v, 3);

    check_svc(b, &want[1], text);
    CU_ASSERT_PTR_NULL(b->plugin_conf);

    conf_free(&c);
    CU_ASSERT(is_zeroed(&c));
    conf_free(&c); /* twice is harmless */
    tmp_remove();
}

static void test_owner(void)
{
    tmp_make();
    put("p.so", "");
    const char *path = put("own.conf", "services = (\n"
                                       "  { name = \"a\"; listen = \"/tmp/a.sock\"; owner = \"root:0\";"
                                       " plugin = \"p.so\"; },\n"
                                       "  { name = \"b\"; listen = \"/tmp/b.sock\"; owner = \"1234\";"
                                       " plugin = \"p.so\"; },\n"
                                       "  { name = \"c\"; listen = \"/tmp/c.sock\"; owner = \":42\";"
                                       " plugin = \"p.so\"; }\n);\n");
    struct daemon_conf c;
    char err[512] = "";
    int rc = conf_load(path, &c, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT(c.services[0].uid == 0 && c.services[0].gid == 0);
    CU_ASSERT(c.services[1].uid == 1234 && c.services[1].gid == (gid_t)-1);
    CU_ASSERT(c.services[2].uid == (uid_t)-1 && c.services[2].gid == 42);
    CU_ASSERT_EQUAL(c.services[0].watch, 0);
    conf_free(&c);
    tmp_remove();
}

static void test_defaults(void)
{
    tmp_make();
    put("p.so", "");
    const char *path =
        put("min.conf",
            "services = ( { name = \"a\"; listen = \"/tmp/a.sock\"; plugin = \"p.so\"; } );\n");
    struct daemon_conf c;
    char err[512] = "";
    CU_ASSERT_EQUAL_FATAL(conf_load(path, &c, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.workers, 2);
    CU_ASSERT_EQUAL(c.spin_us, 0);
    CU_ASSERT_EQUAL(c.adaptive_spin, 1);
    CU_ASSERT_EQUAL(c.max_streams, 65536);
    CU_ASSERT_EQUAL(c.max_sessions_per_uid, 0);
    CU_ASSERT_EQUAL(c.idle_timeout_ms, 0);
    CU_ASSERT_EQUAL(c.services[0].nallow_uids, 0);
    CU_ASSERT_EQUAL(c.log_level, LOG_INFO);
    CU_ASSERT_PTR_NULL(c.admin);
    CU_ASSERT_EQUAL(c.admin_mode, 0600);
    CU_ASSERT_EQUAL(c.max_sessions, 1024);
    CU_ASSERT_EQUAL(c.max_pool_bytes, 256ull << 20);
    CU_ASSERT_EQUAL(c.handshake_timeout_ms, 1000);
    CU_ASSERT_EQUAL(c.max_event_bytes, 32u << 20);
    CU_ASSERT_EQUAL(c.drain_timeout_ms, 5000);
    CU_ASSERT_EQUAL_FATAL(c.nservices, 1);
    CU_ASSERT_STRING_EQUAL(c.services[0].listen, "/tmp/a.sock");
    CU_ASSERT_EQUAL(c.services[0].mode, 0660);
    CU_ASSERT_EQUAL(c.services[0].uid, (uid_t)-1);
    CU_ASSERT_EQUAL(c.services[0].gid, (gid_t)-1);
    CU_ASSERT_STRING_EQUAL(c.services[0].allowed_dir, "/dev/shm");
    CU_ASSERT_STRING_EQUAL(c.services[0].plugin, tpath("p.so"));
    CU_ASSERT_PTR_NULL(c.services[0].plugin_conf);
    CU_ASSERT_EQUAL(c.services[0].line, 1);
    conf_free(&c);

    /* Empty groups are fine too and leave the defaults. */
    path = put("empty.conf", "log = { };\nlimits = { };\n"
                             "services = ( { name = \"a\"; listen = \"/tmp/a.sock\";\n"
                             "  plugin = \"p.so\"; config = { }; } );\n");
    CU_ASSERT_EQUAL_FATAL(conf_load(path, &c, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.log_level, LOG_INFO);
    CU_ASSERT_EQUAL(c.max_sessions, 1024);
    CU_ASSERT_PTR_NOT_NULL(c.services[0].plugin_conf);
    conf_free(&c);

    /* Zeroed and NULL structs. */
    struct daemon_conf z;
    memset(&z, 0, sizeof(z));
    conf_free(&z);
    conf_free(NULL);
    CU_ASSERT(is_zeroed(&z));
    tmp_remove();
}

static const char svc_sub[] =
    "services = ( { name = \"a\"; listen = \"/tmp/a.sock\"; plugin = \"sub/p.so\"; } );\n";

/* Writes tmp/name and loads it: service 0's plugin must be tmp/plugin. */
static void check_plugin_at(const char *name, const char *text, const char *plugin)
{
    struct daemon_conf c;
    char err[512] = "";
    int rc = conf_load(put(name, text), &c, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  %s: %s\n", name, err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(c.services[0].plugin, tpath(plugin));
    conf_free(&c);
}

static void test_relative_plugins(void)
{
    tmp_make();
    struct daemon_conf c;
    char err[512] = "", want[PATH_MAX + 64];

    /* No plugin_dir: the config file's directory, whatever the cwd. */
    put("conf/sub/p.so", "");
    check_plugin_at("conf/a.conf", svc_sub, "conf/sub/p.so");

    /* A path without a slash, relative to the cwd; the directory is made
     * absolute, and so is c.path. */
    char cwd[PATH_MAX];
    CU_ASSERT_PTR_NOT_NULL_FATAL(getcwd(cwd, sizeof(cwd)));
    CU_ASSERT_EQUAL_FATAL(chdir(tpath("conf")), 0);
    int rc = conf_load("a.conf", &c, err, sizeof(err));
    CU_ASSERT_EQUAL_FATAL(chdir(cwd), 0);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(c.services[0].plugin, tpath("conf/sub/p.so"));
    CU_ASSERT_STRING_EQUAL(c.path, tpath("conf/a.conf"));
    conf_free(&c);

    /* Relative plugin_dir: against the file's directory; it wins over the
     * file's directory (which also holds a sub/p.so). */
    put("conf/lib/sub/p.so", "");
    check_plugin_at("conf/b.conf",
                    "plugin_dir = \"lib\";\n"
                    "services = ( { name = \"a\"; listen = "
                    "\"/tmp/a.sock\"; plugin = \"sub/p.so\"; } );\n",
                    "conf/lib/sub/p.so");

    /* "../x" in plugin_dir is resolved (realpath on the directory). */
    put("plugins/q.so", "");
    check_plugin_at("conf/c.conf",
                    "plugin_dir = \"../plugins\";\n"
                    "services = ( { name = \"a\"; listen = "
                    "\"/tmp/a.sock\"; plugin = \"q.so\"; } );\n",
                    "plugins/q.so");

    /* plugin_dir holds no q.so: not found, even though conf/ might. */
    put("conf/q.so", "");
    const char *d_text = "plugin_dir = \"lib\";\n"
                         "services = ( { name = \"a\"; listen = \"/tmp/a.sock\";\n"
                         "  plugin = \"q.so\"; } );\n";
    put("conf/d.conf", d_text);
    CU_ASSERT_EQUAL(conf_load(tpath("conf/d.conf"), &c, err, sizeof(err)), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "plugin file not found"));
    snprintf(want, sizeof(want), "%s/conf/lib/q.so", tmp);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
    CU_ASSERT(is_zeroed(&c));
    conf_free(&c);

    /* An absolute plugin path ignores plugin_dir. */
    char e_text[PATH_MAX + 256];
    snprintf(e_text, sizeof(e_text),
             "plugin_dir = \"lib\";\nservices = ( { name = \"a\"; listen = \"/tmp/a.sock\"; "
             "plugin = \"%s/conf/q.so\"; } );\n",
             tmp);
    check_plugin_at("conf/e.conf", e_text, "conf/q.so");

    /* @include resolves next to the file, and errors in it name it. */
    put("conf/inc/limits.conf", "limits = { max_sessions = 77; };\n");
    put("conf/f.conf", "@include \"inc/limits.conf\"\n"
                       "services = ( { name = \"a\"; listen = "
                       "\"/tmp/a.sock\"; plugin = \"q.so\"; } );\n");
    CU_ASSERT_EQUAL_FATAL(conf_load(tpath("conf/f.conf"), &c, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.max_sessions, 77);
    conf_free(&c);
    put("conf/inc/bad.conf", "\nworkers = 0;\n");
    put("conf/g.conf", "@include \"inc/bad.conf\"\n"
                       "services = ( { name = \"a\"; listen = "
                       "\"/tmp/a.sock\"; plugin = \"q.so\"; } );\n");
    CU_ASSERT_EQUAL(conf_load(tpath("conf/g.conf"), &c, err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "inc/bad.conf:2: key 'workers': 0 is out of range (1..64)");
    conf_free(&c);
    /* The 32-bit wrap check reads included files too. */
    put("conf/inc/big.conf", "limits = {\n max_pool_bytes = 4295032832; };\n");
    put("conf/h.conf", "@include \"inc/big.conf\"\n"
                       "services = ( { name = \"a\"; listen = "
                       "\"/tmp/a.sock\"; plugin = \"q.so\"; } );\n");
    CU_ASSERT_EQUAL(conf_load(tpath("conf/h.conf"), &c, err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(strncmp(err, "inc/big.conf:2: key 'limits.max_pool_bytes': 4295032832 ",
                            strlen("inc/big.conf:2: key 'limits.max_pool_bytes': 4295032832 ")),
                    0);
    conf_free(&c);
    tmp_remove();
}

/* ---- plugin accessors ---- */

/* Calls the plugin accessor for `kind` (i, b, f or s) with its out. */
static int accessor(char kind, const config_setting_t *g, const char *path, long long *i, int *b,
                    double *f, const char **s)
{
    switch (kind) {
    case 'i':
        return conf_plugin_int(g, path, i);
    case 'b':
        return conf_plugin_bool(g, path, b);
    case 'f':
        return conf_plugin_float(g, path, f);
    default:
        return conf_plugin_string(g, path, s);
    }
}

static void test_plugin_accessors(void)
{
    tmp_make();
    put("p.so", "");
    const char *path = put(
        "acc.conf", "services = ( { name = \"a\"; listen = \"/tmp/a.sock\"; plugin = \"p.so\";\n"
                    "  config = { i = -5; big = 5000000000L; b = true; f = 1.5; s = \"hi\";\n"
                    "             a = { b = 7; c = \"deep\"; }; arr = [1, 2]; }; } );\n");
    struct daemon_conf c;
    char err[512] = "";
    CU_ASSERT_EQUAL_FATAL(conf_load(path, &c, err, sizeof(err)), 0);
    const config_setting_t *g = c.services[0].plugin_conf;
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    long long i = 0;
    int b = 0;
    double f = 0;
    const char *s = NULL;

    CU_ASSERT_EQUAL(conf_plugin_int(g, "i", &i), 0);
    CU_ASSERT_EQUAL(i, -5);
    CU_ASSERT_EQUAL(conf_plugin_int(g, "big", &i), 0);
    CU_ASSERT_EQUAL(i, 5000000000ll);
    CU_ASSERT_EQUAL(conf_plugin_bool(g, "b", &b), 0);
    CU_ASSERT_EQUAL(b, 1);
    CU_ASSERT_EQUAL(conf_plugin_float(g, "f", &f), 0);
    CU_ASSERT_DOUBLE_EQUAL(f, 1.5, 1e-12);
    CU_ASSERT_EQUAL(conf_plugin_string(g, "s", &s), 0);
    CU_ASSERT_STRING_EQUAL(s, "hi");
    CU_ASSERT_EQUAL(conf_plugin_int(g, "a.b", &i), 0);
    CU_ASSERT_EQUAL(i, 7);
    CU_ASSERT_EQUAL(conf_plugin_string(g, "a.c", &s), 0);
    CU_ASSERT_STRING_EQUAL(s, "deep");

    /* Absent (also from no group at all): -ENOENT. Another type: -EINVAL
     * (no conversions, groups are not values). Either way the int out is
     * untouched. */
    static const struct {
        char kind; /* the accessor: i, b, f or s */
        int no_group;
        const char *path;
        int rc;
    } refused[] = {
        {'i', 0, "nope", -ENOENT}, {'i', 0, "a.nope", -ENOENT}, {'b', 0, "nope", -ENOENT},
        {'f', 0, "nope", -ENOENT}, {'s', 0, "nope", -ENOENT},   {'i', 1, "i", -ENOENT},
        {'b', 1, "b", -ENOENT},    {'f', 1, "f", -ENOENT},      {'s', 1, "s", -ENOENT},
        {'i', 0, "s", -EINVAL},    {'i', 0, "f", -EINVAL},      {'i', 0, "a", -EINVAL},
        {'i', 0, "arr", -EINVAL},  {'b', 0, "i", -EINVAL},      {'f', 0, "i", -EINVAL},
        {'s', 0, "b", -EINVAL},
    };
    i = 42;
    for (size_t k = 0; k < sizeof(refused) / sizeof(refused[0]); k++) {
        const config_setting_t *on = refused[k].no_group ? NULL : g;
        int rc = accessor(refused[k].kind, on, refused[k].path, &i, &b, &f, &s);
        if (rc != refused[k].rc)
            fprintf(stderr, "\n  %c accessor of \"%s\": %d, expected %d\n", refused[k].kind,
                    refused[k].path, rc, refused[k].rc);
        CU_ASSERT_EQUAL(rc, refused[k].rc);
        CU_ASSERT_EQUAL(i, 42);
    }
    conf_free(&c);
    tmp_remove();
}

/* ---- refusals ---- */

#define SVC "services = ( { name = \"a\"; listen = \"/tmp/a.sock\"; plugin = \"p.so\"; } );\n"
/* One service over several lines, so that the key under test has a line of
 * its own: the refusal must name that line. */
#define LIMITS(key) "limits = {\n " key " };\n" SVC
#define SVC_WITH(keys)                                                                             \
    "services = (\n  { name = \"a\"; listen = \"/tmp/a.sock\";\n    " keys " }\n);\n"
#define SVC_KEY(key) SVC_WITH(key " plugin = \"p.so\";")
#define SVC_THEN(key)                                                                              \
    "services = (\n  { name = \"a\"; listen = \"/tmp/a.sock\"; plugin = \"p.so\";\n    " key       \
    " }\n);\n"
#define SVC_NAMED(name)                                                                            \
    "services = (\n  { name = \"" name "\"; listen = \"/tmp/a.sock\"; plugin = \"p.so\"; }\n);\n"
#define SVC_LISTEN(addr)                                                                           \
    "services = (\n  { name = \"a\";\n    listen = \"" addr "\"; plugin = \"p.so\"; }\n);\n"

struct refusal {
    const char *what;
    const char *text;
    const char *key;
    const char *marker; /* text at the offending line; NULL: line 1 */
    int code;
    const char *why; /* a piece of the reason */
};

static const struct refusal refusals[] = {
    {"unknown top-level key", "workers = 2;\n\ncolour = \"red\";\n" SVC, "colour", "colour",
     -EINVAL, "unknown key (expected one of: workers, spin_us, log,"},
    {"unknown key in a service", SVC_WITH("plugin = \"p.so\";\n    port = 5;"), "services.[0].port",
     "port", -EINVAL, "unknown key"},
    {"unknown key in limits", "limits = {\n  max_sessions = 5;\n  max_conns = 9;\n};\n" SVC,
     "limits.max_conns", "max_conns", -EINVAL, "unknown key"},
    {"unknown key in log", "log = {\n  file = \"x\";\n};\n" SVC, "log.file", "file", -EINVAL,
     "unknown key"},
    {"workers 0", "\nworkers = 0;\n" SVC, "workers", "workers", -EINVAL,
     "0 is out of range (1..64)"},
    {"workers 65", "\n\nworkers = 65;\n" SVC, "workers", "workers", -EINVAL,
     "65 is out of range (1..64)"},
    {"workers a string", "workers = \"2\";\n" SVC, "workers", "workers", -EINVAL,
     "must be an integer, not a string"},
    {"workers a float", "workers = 2.0;\n" SVC, "workers", "workers", -EINVAL,
     "must be an integer, not a float"},
    {"max_sessions 0", LIMITS("max_sessions = 0;"), "limits.max_sessions", "max_sessions", -EINVAL,
     "out of range"},
    {"max_pool_bytes below 64 KiB", LIMITS("max_pool_bytes = 65535;"), "limits.max_pool_bytes",
     "max_pool", -EINVAL, "65535 is out of range"},
    {"max_pool_bytes 4 GiB", LIMITS("max_pool_bytes = 4294967296L;"), "limits.max_pool_bytes",
     "max_pool", -EINVAL, "4294967296 is out of range"},
    {"max_pool_bytes wrapped by libconfig, in range", "limits = {\n\n max_pool_bytes = 4000000000; };\n" SVC,
     "limits.max_pool_bytes", "max_pool", -EINVAL,
     "4000000000 does not fit in 32 bits (libconfig 1.5 reads it as -294967296); write 4000000000L"},
    {"max_pool_bytes beyond its range: the range, not an L suffix",
     "limits = {\n\n max_pool_bytes = 4295032832; };\n" SVC, "limits.max_pool_bytes", "max_pool",
     -EINVAL, "4295032832 is out of range (65536..4294967295)"},
    {"socket path longer than sun_path",
     "services = ( { name = \"a\";\n listen = \"unix:/tmp/"
     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.sock\";"
     " plugin = \"p.so\"; } );\n",
     "services.[0].listen", "listen", -EINVAL, "is too long: 115 bytes, at most 107"},
    {"wrapped value on the line after its name",
     "limits = {\n max_event_bytes =\n   3000000000; };\n" SVC, "limits.max_event_bytes",
     "max_event", -EINVAL, "3000000000 is out of range (65536..1073741824)"},
    {"wrapped value: the setting named above it, not an equal one below",
     "limits = {\n max_event_bytes =\n   3000000000; };\n"
     "services = ( { name = \"a\"; listen = \"/tmp/a.sock\"; plugin = \"p.so\";\n"
     "  config = { y = -1294967296; }; } );\n",
     "limits.max_event_bytes", "max_event", -EINVAL,
     "3000000000 is out of range (65536..1073741824)"},
    {"wrapped integer in a plugin's config",
     "services = ( { name = \"a\"; listen = \"/tmp/a.sock\"; plugin = \"p.so\";\n"
     "  config = { x = [ 1,\n 3000000000 ]; }; } );\n",
     "services.[0].config.x.[1]", "3000000000", -EINVAL, "does not fit in 32 bits"},
    {"max_event_bytes above 1 GiB", LIMITS("max_event_bytes = 1073741825;"),
     "limits.max_event_bytes", "max_event", -EINVAL, "out of range"},
    {"handshake_timeout_ms 9", LIMITS("handshake_timeout_ms = 9;"), "limits.handshake_timeout_ms",
     "handshake", -EINVAL, "out of range (10..600000)"},
    {"drain_timeout_ms -1", LIMITS("drain_timeout_ms = -1;"), "limits.drain_timeout_ms", "drain",
     -EINVAL, "out of range (0..600000)"},
    {"limits not a group", "limits = 5;\n" SVC, "limits", "limits", -EINVAL, "must be a group"},
    {"mode 0699", SVC_KEY("mode = \"0699\";"), "services.[0].mode", "mode", -EINVAL,
     "\"0699\" is not an octal mode"},
    {"mode abc", SVC_KEY("mode = \"abc\";"), "services.[0].mode", "mode", -EINVAL,
     "\"abc\" is not an octal mode"},
    {"mode above 07777", SVC_KEY("mode = \"17777\";"), "services.[0].mode", "mode", -EINVAL,
     "larger than 07777"},
    {"mode as a bare number", SVC_KEY("mode = 0660;"), "services.[0].mode", "mode", -EINVAL,
     "like \"0660\", not an integer"},
    {"spin_us out of range", "spin_us = 100001;\n" SVC, "spin_us", "spin_us", -EINVAL,
     "out of range"},
    {"adaptive_spin not a boolean", "adaptive_spin = 1;\n" SVC, "adaptive_spin", "adaptive_spin",
     -EINVAL, "true or false"},
    {"allow_uids not an array", SVC_KEY("allow_uids = 5;"), "services.[0].allow_uids", "allow_uids",
     -EINVAL, "must be an array of ids"},
    {"max_streams 0", "limits = {\n  max_streams = 0; };\n" SVC, "limits.max_streams",
     "max_streams", -EINVAL, "out of range"},
    {"watch not a bool", SVC_KEY("watch = \"yes\";"), "services.[0].watch", "watch", -EINVAL,
     "must be true or false"},
    {"owner unknown", SVC_KEY("owner = \"no-such-user-x1\";"), "services.[0].owner", "owner",
     -EINVAL, "is not \"user\" or \"user:group\""},
    {"owner group unknown", SVC_KEY("owner = \"root:no-such-grp\";"), "services.[0].owner", "owner",
     -EINVAL, "is not \"user\" or \"user:group\""},
    {"admin_mode empty", "admin_mode = \"\";\n" SVC, "admin_mode", "admin_mode", -EINVAL,
     "must not be empty"},
    {"log level verbose", "log = {\n\n  level = \"verbose\"; };\n" SVC, "log.level", "level",
     -EINVAL, "\"verbose\" is not one of error, warn, info, debug"},
    {"no services", "workers = 2;\n", "services", NULL, -EINVAL,
     "missing (at least one service is required)"},
    {"empty services list", "workers = 2;\nservices = ( );\n", "services", "services", -EINVAL,
     "empty (at least one service is required)"},
    {"services a group", "workers = 2;\nservices = { name = \"a\"; };\n", "services", "services",
     -EINVAL, "must be a list of groups"},
    /* libconfig 1.5 records a scalar list element at the line of the token
     * after it: keep the ")" on the element's line. */
    {"service not a group", "services = (\n  \"a\" );\n", "services.[0]", "\"a\"", -EINVAL,
     "must be a group"},
    {"duplicate service name",
     "services = (\n  { name = \"a\"; listen = \"/tmp/a.sock\"; plugin = \"p.so\"; },\n"
     "  { name = \"b\"; listen = \"/tmp/b.sock\"; plugin = \"p.so\"; },\n"
     "  { name = \"a\"; listen = \"/tmp/c.sock\"; plugin = \"p.so\"; }\n);\n",
     "services.[2].name", "{ name = \"a\"; listen = \"/tmp/c", -EINVAL,
     "duplicate service name \"a\" (first at line 2)"},
    {"duplicate listen address (two spellings)",
     "services = (\n  { name = \"a\"; listen = \"unix:/tmp/a.sock\"; plugin = \"p.so\"; },\n"
     "  { name = \"b\";\n    listen = \"/tmp/a.sock\"; plugin = \"p.so\"; }\n);\n",
     "services.[1].listen", "listen = \"/tmp/a", -EINVAL,
     "unix:/tmp/a.sock is already used by service \"a\" (line 2)"},
    {"admin on a service's address",
     "admin = \"tcp:localhost:7000\";\n"
     "services = ( { name = \"a\"; listen = \"tcp:127.0.0.1:7000\"; plugin = \"p.so\"; } );\n",
     "admin", "admin", -EINVAL, "already used by service \"a\""},
    {"bad listen address", SVC_LISTEN("tcp:localhost"), "services.[0].listen", "listen", -EINVAL,
     "\"tcp:localhost\" is not an address"},
    {"relative listen path", SVC_LISTEN("run/a.sock"), "services.[0].listen", "listen", -EINVAL,
     "is not an address"},
    {"bad admin address", "admin = \"admin.sock\";\n" SVC, "admin", "admin", -EINVAL,
     "is not an address"},
    {"missing plugin key",
     "workers = 2;\nservices = (\n  { name = \"a\";\n    listen = \"/tmp/a.sock\"; }\n);\n",
     "services.[0].plugin", "{ name", -EINVAL, "missing"},
    {"missing name", "services = (\n  { listen = \"/tmp/a.sock\"; plugin = \"p.so\"; }\n);\n",
     "services.[0].name", "{ listen", -EINVAL, "missing"},
    {"missing listen", "services = (\n  { name = \"a\";\n plugin = \"p.so\"; }\n);\n",
     "services.[0].listen", "{ name", -EINVAL, "missing"},
    {"empty name", SVC_NAMED(""), "services.[0].name", "name", -EINVAL, "must not be empty"},
    {"name with a space", SVC_NAMED("a b"), "services.[0].name", "name", -EINVAL,
     "may hold only letters"},
    {"name too long", SVC_NAMED("a123456789b123456789c123456789d123456789e123456789f123456789xyzw"),
     "services.[0].name", "name", -EINVAL, "longer than 63"},
    {"plugin file not found", SVC_WITH("plugin = \"nothere.so\";"), "services.[0].plugin", "plugin",
     -ENOENT, "plugin file not found: "},
    {"plugin a directory", SVC_WITH("plugin = \"dir\";"), "services.[0].plugin", "plugin", -EINVAL,
     "is not a regular file"},
    {"plugin_dir missing", "\nplugin_dir = \"nodir\";\n" SVC, "plugin_dir", "plugin_dir", -EINVAL,
     "No such file or directory"},
    {"config not a group", SVC_THEN("config = 5;"), "services.[0].config", "config", -EINVAL,
     "must be a group ({ ... }), not an integer"},
    {"allowed_dir relative", SVC_THEN("allowed_dir = \"shm\";"), "services.[0].allowed_dir",
     "allowed_dir", -EINVAL, "not an absolute path"},
    {NULL, NULL, NULL, NULL, 0, NULL},
};

static void test_refusals(void)
{
    tmp_make();
    put("p.so", "");
    put("dir/x", "");
    for (const struct refusal *r = refusals; r->what != NULL; r++) {
        const char *path = put("bad.conf", r->text);
        struct daemon_conf c;
        char err[512] = "", prefix[PATH_MAX + 300];
        int rc = conf_load(path, &c, err, sizeof(err));
        int line = r->marker != NULL ? line_of(r->text, r->marker) : 1;
        snprintf(prefix, sizeof(prefix), "%s:%d: key '%s': ", path, line, r->key);
        int ok = rc == r->code && strncmp(err, prefix, strlen(prefix)) == 0 &&
                 strstr(err + strlen(prefix), r->why) != NULL;
        if (!ok)
            fprintf(stderr, "\n  refusal '%s': rc %d (want %d)\n    got  %s\n    want %s...%s\n",
                    r->what, rc, r->code, err, prefix, r->why);
        CU_ASSERT(ok);
        CU_ASSERT(is_zeroed(&c));
        conf_free(&c);
    }
    tmp_remove();
}

static void test_syntax_error(void)
{
    tmp_make();
    const char *text =
        "workers = 2;\nlog = { level = \"info\"; };\nlimits = { max_sessions = ; };\n";
    const char *path = put("syntax.conf", text);
    struct daemon_conf c;
    char err[512] = "", prefix[PATH_MAX + 64];
    CU_ASSERT_EQUAL(conf_load(path, &c, err, sizeof(err)), -EINVAL);
    snprintf(prefix, sizeof(prefix), "%s:3: ", path);
    CU_ASSERT_EQUAL(strncmp(err, prefix, strlen(prefix)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "syntax error"));
    CU_ASSERT(is_zeroed(&c));
    conf_free(&c);

    /* libconfig's own refusal of a repeated key, with its line. */
    path = put("dup.conf", "workers = 2;\n\nworkers = 3;\n" SVC);
    CU_ASSERT_EQUAL(conf_load(path, &c, err, sizeof(err)), -EINVAL);
    snprintf(prefix, sizeof(prefix), "%s:3: ", path);
    CU_ASSERT_EQUAL(strncmp(err, prefix, strlen(prefix)), 0);
    conf_free(&c);
    tmp_remove();
}

static void test_missing_file(void)
{
    tmp_make();
    struct daemon_conf c;
    char err[512] = "";
    CU_ASSERT_EQUAL(conf_load(tpath("none.conf"), &c, err, sizeof(err)), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, tpath("none.conf")));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "No such file or directory"));
    CU_ASSERT(is_zeroed(&c));
    conf_free(&c);
    /* A directory is not a config file. */
    CU_ASSERT_EQUAL(conf_load(tmp, &c, err, sizeof(err)), -EISDIR);
    CU_ASSERT(is_zeroed(&c));
    /* No room for a message: still refused, nothing written. */
    CU_ASSERT_EQUAL(conf_load(tpath("none.conf"), &c, NULL, 0), -ENOENT);
    tmp_remove();
}

/* ---- the shipped example ---- */

/* etc/shmipcd.conf from the cwd (the source tree) or next to the vectors. */
static int example_path(char *out, size_t n)
{
    const char *vec = getenv("SHMIPC_VECTORS");
    snprintf(out, n, "etc/shmipcd.conf");
    if (access(out, R_OK) == 0)
        return 0;
    if (vec != NULL && *vec != '\0') {
        snprintf(out, n, "%s/../../etc/shmipcd.conf", vec);
        if (access(out, R_OK) == 0)
            return 0;
    }
    return -1;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    static char buf[64 << 10];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static void check_example(const struct daemon_conf *c, const char *plugdir)
{
    char want[PATH_MAX + 64];
    /* The example spells out every default: the loader must agree. */
    CU_ASSERT_EQUAL(c->workers, 2);
    CU_ASSERT_EQUAL(c->log_level, LOG_INFO);
    CU_ASSERT_STRING_EQUAL(c->admin, "unix:/run/shmipcd/admin.sock");
    CU_ASSERT_EQUAL(c->admin_mode, 0600);
    CU_ASSERT_EQUAL(c->max_sessions, 1024);
    CU_ASSERT_EQUAL(c->max_pool_bytes, 256ull << 20);
    CU_ASSERT_EQUAL(c->handshake_timeout_ms, 1000);
    CU_ASSERT_EQUAL(c->max_event_bytes, 32u << 20);
    CU_ASSERT_EQUAL(c->drain_timeout_ms, 5000);
    CU_ASSERT_EQUAL_FATAL(c->nservices, 3);
    CU_ASSERT_STRING_EQUAL(c->services[0].name, "echo");
    CU_ASSERT_STRING_EQUAL(c->services[0].listen, "unix:/run/shmipcd/echo.sock");
    CU_ASSERT_EQUAL(c->services[0].mode, 0660);
    snprintf(want, sizeof(want), "%s/echo.so", plugdir);
    CU_ASSERT_STRING_EQUAL(c->services[0].plugin, want);
    CU_ASSERT_STRING_EQUAL(c->services[1].name, "greeter");
    CU_ASSERT_STRING_EQUAL(c->services[1].listen, "unix:/run/shmipcd/greeter.sock");
    snprintf(want, sizeof(want), "%s/greeter.so", plugdir);
    CU_ASSERT_STRING_EQUAL(c->services[1].plugin, want);
    CU_ASSERT_STRING_EQUAL(c->services[2].name, "kv");
    snprintf(want, sizeof(want), "%s/kv.so", plugdir);
    CU_ASSERT_STRING_EQUAL(c->services[2].plugin, want);
    long long max_keys = 0;
    CU_ASSERT_EQUAL(conf_plugin_int(c->services[2].plugin_conf, "max_keys", &max_keys), 0);
    CU_ASSERT_EQUAL(max_keys, 100000);
}

static void test_example_file(void)
{
    char path[PATH_MAX];
    if (example_path(path, sizeof(path)) < 0) {
        CU_FAIL("etc/shmipcd.conf not found (run from the source tree)");
        return;
    }
    const char *text = slurp(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    tmp_make();
    struct daemon_conf c;
    char err[512] = "", plugdir[PATH_MAX + 64];

    /* A copy in tmp/etc with placeholder plugins in tmp/build/plugins:
     * loads whatever has been built. */
    put("build/plugins/echo.so", "");
    put("build/plugins/greeter.so", "");
    put("build/plugins/kv.so", "");
    put("etc/shmipcd.conf", text);
    int rc = conf_load(tpath("etc/shmipcd.conf"), &c, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  example copy: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    snprintf(plugdir, sizeof(plugdir), "%s/build/plugins", tmp);
    check_example(&c, plugdir);
    conf_free(&c);
    tmp_remove();

    /* In place: its plugin_dir is ../build/plugins next to etc/. */
    char dir[PATH_MAX + 32], real[PATH_MAX], so[PATH_MAX + 32];
    snprintf(dir, sizeof(dir), "%.*s/../build/plugins", (int)(strrchr(path, '/') - path), path);
    int built = 0;
    if (realpath(dir, real) != NULL) {
        snprintf(so, sizeof(so), "%s/echo.so", real);
        built = access(so, F_OK) == 0;
        snprintf(so, sizeof(so), "%s/greeter.so", real);
        built &= access(so, F_OK) == 0;
        snprintf(so, sizeof(so), "%s/kv.so", real);
        built &= access(so, F_OK) == 0;
    }
    rc = conf_load(path, &c, err, sizeof(err));
    if (built) {
        if (rc != 0)
            fprintf(stderr, "\n  example: %s\n", err);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
        check_example(&c, real);
        conf_free(&c);
    } else {
        printf("\n  NOTE: %s/{echo,greeter,kv}.so not built yet: only the refusal is checked\n", dir);
        CU_ASSERT_EQUAL(rc, -ENOENT);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "plugin file not found"));
    }
}

static const struct test_case cases[] = {
    {"full file read back", test_full_file},
    {"defaults when keys are absent", test_defaults},
    {"socket owner by name and number", test_owner},
    {"relative plugin paths and includes", test_relative_plugins},
    {"plugin config accessors", test_plugin_accessors},
    {"refusals name file, line and key", test_refusals},
    {"syntax errors name file and line", test_syntax_error},
    {"missing file", test_missing_file},
    {"etc/shmipcd.conf loads", test_example_file},
    {NULL, NULL},
};

const struct test_suite suite_config = {"config", cases};
