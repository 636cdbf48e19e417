/*
 * shmipcd's configuration loader (see config.h): libconfig parses, then
 * every key is checked here before anything uses it, so a bad file never
 * half-applies. The one rule: every refusal names FILE:LINE and the full
 * key ("services.[0].listen"), and every string in the result is malloc'd
 * and freed by conf_free(); only plugin_conf points into cfg.
 *
 * libconfig 1.5 stores an integer literal outside 32 bits without an 'L'
 * suffix silently wrapped (4295032832 reads as 65536), so the files it read
 * are scanned for such literals before the values are trusted.
 */
#include "server/config.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <limits.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "proto/sock.h"

#define KEY_MAX 256

#define DEF_WORKERS 2u
#define DEF_ADMIN_MODE 0600
#define DEF_MAX_SESSIONS 1024u
#define DEF_MAX_POOL_BYTES (256ull << 20)
#define DEF_HANDSHAKE_MS 1000
#define DEF_MAX_EVENT_BYTES (32u << 20)
#define DEF_DRAIN_MS 5000
#define DEF_SVC_MODE 0660
#define DEF_ALLOWED_DIR "/dev/shm"

struct conf_parser {
    struct daemon_conf *c;
    const char *path; /* as the caller wrote it, for messages */
    char *err;
    size_t errlen;
    char conf_dir[PATH_MAX];    /* realpath of the file's directory */
    char plugin_base[PATH_MAX]; /* plugin_dir resolved, else conf_dir */
};

static const char *const top_keys[] = {"workers",         "spin_us",          "log",
                                       "admin",           "admin_mode",       "plugin_dir",
                                       "limits",          "services",         "slow_handler_ms",
                                       "slow_handler_trace", "pid_file", "metrics_listen",
                                       "adaptive_spin", NULL};
static const char *const log_keys[] = {"level", NULL};
static const char *const limit_keys[] = {"max_sessions",         "max_pool_bytes",
                                         "handshake_timeout_ms", "max_event_bytes",
                                         "drain_timeout_ms",     "max_sessions_per_uid",
                                         "max_streams",          "idle_timeout_ms",
                                         NULL};
static const char *const svc_keys[] = {"name",          "listen",          "mode",
                                       "owner",         "allowed_dir",     "plugin",
                                       "config",        "watch",           "allow_uids",
                                       "allow_gids",    "workers",         "handler_error",
                                       "slow_handler_ms", "slow_handler_trace", "isolation",
                                       "crash_limit",   "handler_kill_ms", "max_rss_bytes", NULL};

static const char *type_name(int type)
{
    switch (type) {
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a float";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    default:
        return "empty";
    }
}

/* Formats "FILE:LINE: key 'KEY': why" at setting s (line 1 for the root)
 * and returns code. */
static int fail_code(struct conf_parser *ld, int code, const config_setting_t *s, const char *key,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int fail_code(struct conf_parser *ld, int code, const config_setting_t *s, const char *key,
                     const char *fmt, ...)
{
    if (ld->err == NULL || ld->errlen == 0)
        return code;
    const char *file = s != NULL && config_setting_source_file(s) != NULL
                           ? config_setting_source_file(s)
                           : ld->path;
    unsigned line = s != NULL ? config_setting_source_line(s) : 0;
    int n = snprintf(ld->err, ld->errlen, "%s:%u: key '%s': ", file, line ? line : 1, key);
    if (n >= 0 && (size_t)n < ld->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return code;
}

#define fail(ld, s, key, ...) fail_code((ld), -EINVAL, (s), (key), __VA_ARGS__)

static void key_join(char *buf, const char *prefix, const char *name)
{
    if (prefix == NULL || *prefix == '\0')
        snprintf(buf, KEY_MAX, "%s", name);
    else
        snprintf(buf, KEY_MAX, "%s.%s", prefix, name);
}

static int in_list(const char *name, const char *const *list)
{
    for (; *list != NULL; list++)
        if (strcmp(name, *list) == 0)
            return 1;
    return 0;
}

/* Refuses members of `group` whose names are not in `allowed`. */
static int check_keys(struct conf_parser *ld, const config_setting_t *group, const char *prefix,
                      const char *const *allowed)
{
    for (int i = 0; i < config_setting_length(group); i++) {
        const config_setting_t *m = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(m);
        if (name != NULL && in_list(name, allowed))
            continue;
        char key[KEY_MAX], expect[256] = "";
        key_join(key, prefix, name != NULL ? name : "?");
        for (const char *const *a = allowed; *a != NULL; a++) {
            size_t used = strlen(expect);
            snprintf(expect + used, sizeof(expect) - used, "%s%s", used ? ", " : "", *a);
        }
        return fail(ld, m, key, "unknown key (expected one of: %s)", expect);
    }
    return 0;
}

/* ---- typed getters: 1 when present and valid, 0 when absent, <0 refused ---- */

/* A member of a group being read: the setting (NULL when absent) and its
 * full key for messages. */
struct member {
    const config_setting_t *s;
    char key[KEY_MAX];
};

#define TYPE_BIT(t) (1u << (unsigned)(t))
#define ANY_TYPE (~0u)

/* Looks up member `name` of parent into m; 1 when its type is one of
 * `types` (TYPE_BIT()s), 0 when absent, <0 refused as "must be <what>, not
 * <its type>". */
static int get_member(struct conf_parser *ld, const config_setting_t *parent, const char *prefix,
                      const char *name, unsigned types, const char *what, struct member *m)
{
    m->s = config_setting_get_member(parent, name);
    key_join(m->key, prefix, name);
    if (m->s == NULL)
        return 0;
    int type = config_setting_type(m->s);
    if ((TYPE_BIT(type) & types) == 0)
        return fail(ld, m->s, m->key, "must be %s, not %s", what, type_name(type));
    return 1;
}

static int get_group(struct conf_parser *ld, const config_setting_t *parent, const char *prefix,
                     const char *name, const config_setting_t **out)
{
    struct member m;
    int rc =
        get_member(ld, parent, prefix, name, TYPE_BIT(CONFIG_TYPE_GROUP), "a group ({ ... })", &m);
    *out = rc > 0 ? m.s : NULL;
    return rc;
}

static int get_int(struct conf_parser *ld, const config_setting_t *parent, const char *prefix,
                   const char *name, long long min, long long max, long long *out)
{
    struct member m;
    int rc = get_member(ld, parent, prefix, name,
                        TYPE_BIT(CONFIG_TYPE_INT) | TYPE_BIT(CONFIG_TYPE_INT64), "an integer", &m);
    if (rc <= 0)
        return rc;
    long long v = config_setting_type(m.s) == CONFIG_TYPE_INT ? config_setting_get_int(m.s)
                                                              : config_setting_get_int64(m.s);
    if (v < min || v > max)
        return fail(ld, m.s, m.key, "%lld is out of range (%lld..%lld)", v, min, max);
    *out = v;
    return 1;
}

static int get_bool(struct conf_parser *ld, const config_setting_t *parent, const char *prefix,
                    const char *name, int *out)
{
    struct member m;
    int rc = get_member(ld, parent, prefix, name, TYPE_BIT(CONFIG_TYPE_BOOL), "true or false", &m);
    if (rc > 0)
        *out = config_setting_get_bool(m.s);
    return rc;
}

/* The member is left in m, also when absent (its key names it). */
static int get_string(struct conf_parser *ld, const config_setting_t *parent, const char *prefix,
                      const char *name, struct member *m, const char **out)
{
    int rc = get_member(ld, parent, prefix, name, TYPE_BIT(CONFIG_TYPE_STRING), "a string", m);
    if (rc <= 0)
        return rc;
    *out = config_setting_get_string(m->s);
    if (**out == '\0')
        return fail(ld, m->s, m->key, "must not be empty");
    return 1;
}

/* get_string for a key every service needs: absence is refused at the
 * service as "missing (<why>)". */
static int get_needed(struct conf_parser *ld, const config_setting_t *e, const char *prefix,
                      const char *name, const char *why, struct member *m, const char **out)
{
    int rc = get_string(ld, e, prefix, name, m, out);
    if (rc == 0)
        return fail(ld, e, m->key, "missing (%s)", why);
    return rc;
}

/* An octal file mode written as a string ("0660"): a bare 0660 would be
 * read by libconfig as the decimal 660. */
static int get_mode(struct conf_parser *ld, const config_setting_t *parent, const char *prefix,
                    const char *name, int *out)
{
    struct member m;
    int rc = get_member(ld, parent, prefix, name, TYPE_BIT(CONFIG_TYPE_STRING),
                        "an octal mode in a string like \"0660\"", &m);
    if (rc <= 0)
        return rc;
    const char *t = config_setting_get_string(m.s);
    int v = 0;
    for (const char *p = t; *p != '\0'; p++) {
        if (*p < '0' || *p > '7')
            return fail(ld, m.s, m.key, "\"%s\" is not an octal mode (digits 0-7, like \"0660\")",
                        t);
        v = v * 8 + (*p - '0');
        if (v > 07777)
            return fail(ld, m.s, m.key, "\"%s\" is larger than 07777", t);
    }
    if (*t == '\0')
        return fail(ld, m.s, m.key, "must not be empty (an octal mode like \"0660\")");
    *out = v;
    return 1;
}

static int dup_str(struct conf_parser *ld, const config_setting_t *s, const char *key, const char *v,
                   char **out)
{
    *out = strdup(v);
    if (*out == NULL)
        return fail_code(ld, -ENOMEM, s, key, "out of memory");
    return 0;
}

/* ---- 32-bit overflow of integer literals (libconfig 1.5) ---- */

struct wrapped {
    unsigned line;
    int has_value; /* 0 when even strtoll overflowed */
    int value;     /* what libconfig stored */
    char lit[48];
};

static int is_name_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '_' || ch == '-' || ch == '*' || ch == '@';
}

/* Reads one number token at p[*i]; returns 1 and fills w when it is an
 * integer without 'L' that libconfig would store wrapped. */
static int scan_number(const char *p, size_t n, size_t *i, struct wrapped *w)
{
    size_t start = *i, j = *i;
    int hex = 0;
    if (p[j] == '-' || p[j] == '+')
        j++;
    if (j + 1 < n && p[j] == '0' && (p[j + 1] == 'x' || p[j + 1] == 'X')) {
        hex = 1;
        j += 2;
        while (j < n && isxdigit((unsigned char)p[j]))
            j++;
    } else {
        while (j < n && isdigit((unsigned char)p[j]))
            j++;
        if (j < n && (p[j] == '.' || p[j] == 'e' || p[j] == 'E')) { /* a float */
            while (j < n &&
                   (isdigit((unsigned char)p[j]) || p[j] == '.' || p[j] == 'e' || p[j] == 'E' ||
                    ((p[j] == '-' || p[j] == '+') && (p[j - 1] == 'e' || p[j - 1] == 'E'))))
                j++;
            *i = j;
            return 0;
        }
    }
    *i = j;
    if (j < n && p[j] == 'L') { /* 64-bit literal: stored exactly */
        while (*i < n && p[*i] == 'L')
            (*i)++;
        return 0;
    }
    char lit[48];
    size_t len = j - start;
    if (len >= sizeof(lit)) { /* far beyond 64 bits as well */
        len = sizeof(w->lit) - 1;
        memcpy(w->lit, p + start, len);
        w->lit[len] = '\0';
        w->has_value = 0;
        return 1;
    }
    memcpy(lit, p + start, len);
    lit[len] = '\0';
    errno = 0;
    long long v;
    if (hex) {
        unsigned long long u = strtoull(lit + (lit[0] == '-' || lit[0] == '+') + 2, NULL, 16);
        v = errno == ERANGE || u > LLONG_MAX ? LLONG_MAX : (long long)u;
        if (lit[0] == '-')
            v = -v;
    } else {
        v = strtoll(lit, NULL, 10);
    }
    if (errno != ERANGE && v >= INT_MIN && v <= INT_MAX)
        return 0;
    memcpy(w->lit, lit, len + 1);
    w->has_value = errno != ERANGE;
    w->value = (int)(uint32_t)(unsigned long long)v;
    return 1;
}

/* Finds the first wrapped integer literal in a well-formed libconfig text. */
static int scan_text(const char *p, size_t n, struct wrapped *w)
{
    unsigned line = 1;
    size_t i = 0;
    while (i < n) {
        char ch = p[i];
        if (ch == '\n') {
            line++;
            i++;
        } else if (ch == '#' || (ch == '/' && i + 1 < n && p[i + 1] == '/')) {
            while (i < n && p[i] != '\n')
                i++;
        } else if (ch == '/' && i + 1 < n && p[i + 1] == '*') {
            for (i += 2; i < n && !(p[i] == '*' && i + 1 < n && p[i + 1] == '/'); i++)
                line += p[i] == '\n';
            i += 2;
        } else if (ch == '"') {
            for (i++; i < n && p[i] != '"'; i++) {
                if (p[i] == '\\' && i + 1 < n)
                    i++;
                line += p[i] == '\n';
            }
            i++;
        } else if (isalpha((unsigned char)ch) || ch == '*' || ch == '@') {
            while (i < n && is_name_char(p[i]))
                i++;
        } else if (isdigit((unsigned char)ch) ||
                   ((ch == '-' || ch == '+' || ch == '.') && i + 1 < n &&
                    (isdigit((unsigned char)p[i + 1]) || p[i + 1] == '.'))) {
            if (scan_number(p, n, &i, w)) {
                w->line = line;
                return 1;
            }
        } else {
            i++;
        }
    }
    return 0;
}

/* The integer setting that holds the wrapped literal: same file and value,
 * named on the literal's line or the nearest line above it (a value may sit
 * on a line after its name). Its key goes to best_key. */
struct int_hit {
    const config_setting_t *s;
    char key[KEY_MAX];
};

static void find_int(const config_setting_t *s, const char *file, const struct wrapped *w,
                     char *key, struct int_hit *best)
{
    size_t base = strlen(key);
    for (int i = 0; i < config_setting_length(s); i++) {
        const config_setting_t *m = config_setting_get_elem(s, (unsigned)i);
        const char *name = config_setting_name(m);
        if (name != NULL)
            snprintf(key + base, KEY_MAX - base, "%s%s", base ? "." : "", name);
        else
            snprintf(key + base, KEY_MAX - base, "%s[%d]", base ? "." : "", i);
        const char *mf = config_setting_source_file(m);
        unsigned line = config_setting_source_line(m);
        if (config_setting_is_aggregate(m)) {
            find_int(m, file, w, key, best);
        } else if (config_setting_type(m) == CONFIG_TYPE_INT &&
                   config_setting_get_int(m) == w->value && mf != NULL && strcmp(mf, file) == 0 &&
                   line <= w->line &&
                   (best->s == NULL || line > config_setting_source_line(best->s))) {
            best->s = m;
            snprintf(best->key, KEY_MAX, "%s", key);
        }
        key[base] = '\0';
    }
}

static char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap)
            break;
        char *nb = realloc(buf, cap * 2);
        if (nb == NULL)
            free(buf);
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    *n = len;
    return buf;
}

/* An integer key read straight into the field of struct daemon_conf that
 * has its name, by offset and size as nginx's conf slots do; the fields are
 * 32 or 64 bits wide and every range fits the field. */
struct int_key {
    long long min, max;
    const char *name;
    size_t off, size;
};

#define FIELD_SIZE(field) sizeof(((struct daemon_conf *)0)->field)
#define INT_KEY(field, min, max)                                                                   \
    {                                                                                              \
        (min), (max), #field, offsetof(struct daemon_conf, field), FIELD_SIZE(field)               \
    }

static const struct int_key top_ints[] = {
    INT_KEY(workers, 1, CONF_MAX_WORKERS),
    INT_KEY(spin_us, 0, 100000),
    INT_KEY(slow_handler_ms, 0, 3600000),
};

static const struct int_key limit_ints[] = {
    INT_KEY(max_sessions, 1, 1000000),         INT_KEY(max_pool_bytes, 64 << 10, (4ll << 30) - 1),
    INT_KEY(handshake_timeout_ms, 10, 600000), INT_KEY(max_event_bytes, 64 << 10, 1ll << 30),
    INT_KEY(drain_timeout_ms, 0, 600000),      INT_KEY(max_sessions_per_uid, 0, 1000000),
    INT_KEY(max_streams, 1, 1000000),          INT_KEY(idle_timeout_ms, 0, 86400000),
};

/* The range of a known integer key ("limits.max_pool_bytes", "workers"):
 * 1 and *min, *max set, or 0 for a key of no table (a plugin's). */
static int key_range(const char *key, long long *min, long long *max)
{
    const char *name = strrchr(key, '.');
    name = name != NULL ? name + 1 : key;
    int in_limits = strncmp(key, "limits.", 7) == 0;
    const struct int_key *t = in_limits ? limit_ints : top_ints;
    size_t n = in_limits ? sizeof(limit_ints) / sizeof(limit_ints[0])
                         : sizeof(top_ints) / sizeof(top_ints[0]);
    if (!in_limits && strchr(key, '.') != NULL)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(t[i].name, name) == 0) {
            *min = t[i].min;
            *max = t[i].max;
            return 1;
        }
    }
    return 0;
}

static int check_wrapped(struct conf_parser *ld)
{
    const config_t *cfg = &ld->c->cfg;
    for (unsigned f = 0; f < cfg->num_filenames; f++) {
        const char *name = cfg->filenames[f];
        char full[PATH_MAX + 256];
        if (name[0] == '/' || f == 0)
            snprintf(full, sizeof(full), "%s", name);
        else /* includes are recorded relative to include_dir */
            snprintf(full, sizeof(full), "%s/%s", ld->conf_dir, name);
        size_t n;
        char *text = read_all(full, &n);
        if (text == NULL)
            continue; /* libconfig has read it; nothing better to check against */
        struct wrapped w;
        int found = scan_text(text, n, &w);
        free(text);
        if (!found)
            continue;
        char key[KEY_MAX] = "";
        struct int_hit hit = {NULL, ""};
        if (w.has_value)
            find_int(config_root_setting(cfg), name, &w, key, &hit);
        long long kmin, kmax;
        unsigned long long lit = strtoull(w.lit, NULL, 0);
        if (hit.s != NULL && key_range(hit.key, &kmin, &kmax) && lit > (unsigned long long)kmax)
            return fail(ld, hit.s, hit.key, "%s is out of range (%lld..%lld)", w.lit, kmin,
                        kmax); /* an L suffix would not help */
        if (hit.s != NULL)
            return fail(ld, hit.s, hit.key,
                        "%s does not fit in 32 bits (libconfig 1.5 reads it as %d); "
                        "write %sL",
                        w.lit, w.value, w.lit);
        if (ld->err != NULL && ld->errlen > 0)
            snprintf(ld->err, ld->errlen,
                     "%s:%u: integer %s does not fit in 32 bits (libconfig 1.5 reads it "
                     "wrapped); write %sL",
                     name, w.line, w.lit, w.lit);
        return -EINVAL;
    }
    return 0;
}

/* ---- @include targets (libconfig 1.5) ---- */

/* libconfig 1.5 opens an @include target with fopen() and its scanner calls
 * exit() when a read fails, as it does on a directory (a FIFO would block
 * it instead): shmipcd would die on a reload naming one. So before libconfig
 * reads anything, the target of every line that may be an include directive
 * (flex's ^[ \t]*@include[ \t]+"; a comment that looks like one is checked
 * too) must be a regular file, or missing (libconfig reports that itself).
 * Targets resolve against conf_dir as libconfig's include_dir does, and
 * nested includes are followed as deep as libconfig goes. */
#define INCLUDE_MAX_DEPTH 10 /* libconfig 1.5's MAX_INCLUDE_DEPTH */

static int check_includes(struct conf_parser *ld, const char *file, int depth);

static int include_fail(struct conf_parser *ld, const char *file, unsigned line, const char *name,
                        size_t len, const char *why)
{
    if (ld->err != NULL && ld->errlen > 0)
        snprintf(ld->err, ld->errlen, "%s:%u: @include \"%.*s\": %s", file, line,
                 (int)(len > 200 ? 200 : len), name, why);
    return -EINVAL;
}

/* p[0..n) follows the opening quote of an include on `line` of `file`. */
static int check_include_target(struct conf_parser *ld, const char *file, unsigned line, const char *p,
                                size_t n, int depth)
{
    const char *q = memchr(p, '"', n);
    if (q == NULL)
        return 0; /* unterminated: libconfig opens nothing */
    size_t len = (size_t)(q - p);
    /* Escapes and NULs change the name libconfig opens; nobody needs them. */
    if (memchr(p, '\\', len) != NULL || memchr(p, '\0', len) != NULL)
        return include_fail(ld, file, line, p, len, "a backslash or NUL in the name");
    if (depth + 1 > INCLUDE_MAX_DEPTH)
        return include_fail(ld, file, line, p, len, "includes nested too deep");
    char path[PATH_MAX];
    struct stat st;
    int n_path = snprintf(path, sizeof(path), "%s/%.*s", ld->conf_dir, (int)len, p);
    if (n_path < 0 || (size_t)n_path >= sizeof(path))
        return include_fail(ld, file, line, p, len, "path too long");
    if (stat(path, &st) < 0)
        return 0; /* libconfig cannot open it either, and says so */
    if (!S_ISREG(st.st_mode))
        return include_fail(ld, file, line, p, len, "not a regular file");
    return check_includes(ld, path, depth + 1);
}

static int check_includes(struct conf_parser *ld, const char *file, int depth)
{
    size_t n;
    char *text = read_all(file, &n);
    if (text == NULL)
        return 0; /* libconfig reports what it cannot read */
    int rc = 0;
    unsigned line = 1;
    for (size_t i = 0; i < n && rc == 0; line++) {
        size_t j = i;
        while (j < n && (text[j] == ' ' || text[j] == '\t'))
            j++;
        if (n - j > 8 && memcmp(text + j, "@include", 8) == 0) {
            for (j += 8; j < n && (text[j] == ' ' || text[j] == '\t');)
                j++;
            if (j < n && text[j] == '"')
                rc = check_include_target(ld, file, line, text + j + 1, n - j - 1, depth);
        }
        const char *eol = memchr(text + i, '\n', n - i);
        i = eol == NULL ? n : (size_t)(eol - text) + 1;
    }
    free(text);
    return rc;
}

/* ---- sections ---- */

/* Reads keys[0..n) of group into ld->c, in order; absent keys keep their
 * defaults. 0, or the first refusal. */
static int get_ints(struct conf_parser *ld, const config_setting_t *group, const char *prefix,
                    const struct int_key *keys, size_t n)
{
    _Static_assert(sizeof(int) == sizeof(uint32_t), "32-bit fields are int or unsigned");
    for (size_t i = 0; i < n; i++) {
        long long v;
        int rc = get_int(ld, group, prefix, keys[i].name, keys[i].min, keys[i].max, &v);
        if (rc < 0)
            return rc;
        if (rc == 0)
            continue;
        char *field = (char *)ld->c + keys[i].off;
        if (keys[i].size == sizeof(uint64_t)) {
            uint64_t u = (uint64_t)v;
            memcpy(field, &u, sizeof(u));
        } else {
            uint32_t u = (uint32_t)v;
            memcpy(field, &u, sizeof(u));
        }
    }
    return 0;
}

/* A unix socket address that cannot work: a path longer than sun_path.
 * 0, or the refusal. */
static int check_unix_path(struct conf_parser *ld, const config_setting_t *s, const char *key,
                           const char *text)
{
    const char *path = strncmp(text, "unix:", 5) == 0 ? text + 5 : text[0] == '/' ? text : NULL;
    if (path == NULL)
        return 0;
    size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
    if (strlen(path) > max)
        return fail(ld, s, key, "%s is too long: %zu bytes, at most %zu", path, strlen(path),
                    max);
    return 0;
}

int conf_check_socket_dir(const char *address, char *err, size_t errlen)
{
    const char *path = strncmp(address, "unix:", 5) == 0 ? address + 5
                       : address[0] == '/'               ? address
                                                         : NULL;
    if (path == NULL)
        return 0;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return 0;
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    struct stat st;
    if (stat(dir, &st) < 0) {
        snprintf(err, errlen, "the directory %s of %s does not exist", dir, path);
        return -ENOENT;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s (for %s) is not a directory", dir, path);
        return -ENOTDIR;
    }
    return 0;
}

static int load_top(struct conf_parser *ld, const config_setting_t *root)
{
    struct daemon_conf *c = ld->c;
    int rc;
    if ((rc = check_keys(ld, root, NULL, top_keys)) < 0 ||
        (rc = get_ints(ld, root, NULL, top_ints, sizeof(top_ints) / sizeof(top_ints[0]))) < 0)
        return rc;

    const config_setting_t *log;
    if ((rc = get_group(ld, root, NULL, "log", &log)) < 0)
        return rc;
    if (log != NULL) {
        const char *lv;
        struct member m;
        if ((rc = check_keys(ld, log, "log", log_keys)) < 0)
            return rc;
        if ((rc = get_string(ld, log, "log", "level", &m, &lv)) < 0)
            return rc;
        if (rc > 0 && log_level_parse(lv, &c->log_level) < 0)
            return fail(ld, m.s, m.key, "\"%s\" is not one of error, warn, info, debug", lv);
    }

    const char *admin;
    struct member m;
    if ((rc = get_string(ld, root, NULL, "admin", &m, &admin)) < 0)
        return rc;
    if (rc > 0) {
        struct sock_addr a;
        if ((rc = check_unix_path(ld, m.s, m.key, admin)) < 0)
            return rc;
        if (sock_addr_parse(admin, &a) < 0)
            return fail(ld, m.s, m.key,
                        "\"%s\" is not an address (unix:/abs/path, /abs/path or tcp:host:port)",
                        admin);
        if ((rc = dup_str(ld, m.s, m.key, admin, &c->admin)) < 0)
            return rc;
    }
    if ((rc = get_mode(ld, root, NULL, "admin_mode", &c->admin_mode)) < 0)
        return rc;
    if ((rc = get_bool(ld, root, NULL, "slow_handler_trace", &c->slow_handler_trace)) < 0)
        return rc;
    if ((rc = get_bool(ld, root, NULL, "adaptive_spin", &c->adaptive_spin)) < 0)
        return rc;
    const char *ml;
    if ((rc = get_string(ld, root, NULL, "metrics_listen", &m, &ml)) < 0)
        return rc;
    if (rc > 0) {
        struct sock_addr a;
        if ((rc = check_unix_path(ld, m.s, m.key, ml)) < 0)
            return rc;
        if (sock_addr_parse(ml, &a) < 0)
            return fail(ld, m.s, m.key,
                        "\"%s\" is not an address (unix:/abs/path, /abs/path or tcp:host:port)",
                        ml);
        if ((rc = dup_str(ld, m.s, m.key, ml, &c->metrics_listen)) < 0)
            return rc;
    }
    const char *pf;
    if ((rc = get_string(ld, root, NULL, "pid_file", &m, &pf)) < 0)
        return rc;
    if (rc > 0) {
        if (pf[0] != '/')
            return fail(ld, m.s, m.key, "\"%s\" is not an absolute path", pf);
        if ((rc = dup_str(ld, m.s, m.key, pf, &c->pid_file)) < 0)
            return rc;
    }
    return 0;
}

static int load_limits(struct conf_parser *ld, const config_setting_t *root)
{
    const config_setting_t *lim;
    int rc;
    if ((rc = get_group(ld, root, NULL, "limits", &lim)) <= 0)
        return rc;
    if ((rc = check_keys(ld, lim, "limits", limit_keys)) < 0)
        return rc;
    return get_ints(ld, lim, "limits", limit_ints, sizeof(limit_ints) / sizeof(limit_ints[0]));
}

/* Resolves plugin_dir (relative to the file's directory) into plugin_base. */
static int load_plugin_dir(struct conf_parser *ld, const config_setting_t *root)
{
    const char *dir;
    struct member m;
    int rc = get_string(ld, root, NULL, "plugin_dir", &m, &dir);
    if (rc <= 0) {
        if (rc == 0)
            memcpy(ld->plugin_base, ld->conf_dir, sizeof(ld->plugin_base));
        return rc;
    }
    char joined[2 * PATH_MAX];
    if (dir[0] == '/')
        snprintf(joined, sizeof(joined), "%s", dir);
    else
        snprintf(joined, sizeof(joined), "%s/%s", ld->conf_dir, dir);
    struct stat st;
    if (realpath(joined, ld->plugin_base) == NULL)
        return fail(ld, m.s, m.key, "%s: %s", joined, strerror(errno));
    if (stat(ld->plugin_base, &st) < 0 || !S_ISDIR(st.st_mode))
        return fail(ld, m.s, m.key, "%s is not a directory", ld->plugin_base);
    return 0;
}

static int resolve_plugin(struct conf_parser *ld, const config_setting_t *s, const char *key,
                          const char *plugin, char **out)
{
    char full[2 * PATH_MAX];
    int n = plugin[0] == '/' ? snprintf(full, sizeof(full), "%s", plugin)
                             : snprintf(full, sizeof(full), "%s/%s", ld->plugin_base, plugin);
    if (n < 0 || n >= PATH_MAX)
        return fail(ld, s, key, "resolved path is longer than %d bytes", PATH_MAX - 1);
    struct stat st;
    if (stat(full, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return fail_code(ld, -ENOENT, s, key, "plugin file not found: %s", full);
        return fail(ld, s, key, "cannot access %s: %s", full, strerror(errno));
    }
    if (!S_ISREG(st.st_mode))
        return fail(ld, s, key, "%s is not a regular file", full);
    return dup_str(ld, s, key, full, out);
}

static int valid_name(const char *name)
{
    for (const char *p = name; *p != '\0'; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && *p != '-')
            return 0;
    return 1;
}

/* One element of `services`; addrs[0..i) hold the earlier services'
 * addresses (normalized text) for the uniqueness check. */
/* An array of uids or gids ("allow_uids = [0, 1000];"). */
static int get_ids(struct conf_parser *ld, const config_setting_t *parent, const char *prefix,
                   const char *name, unsigned *ids, unsigned *n)
{
    struct member m;
    *n = 0;
    int rc = get_member(ld, parent, prefix, name, ANY_TYPE, NULL, &m);
    if (rc <= 0)
        return rc;
    const config_setting_t *s = m.s;
    const char *key = m.key;
    int type = config_setting_type(s);
    if (type != CONFIG_TYPE_ARRAY && type != CONFIG_TYPE_LIST)
        return fail(ld, s, key, "must be an array of ids, like [0, 1000]");
    int len = config_setting_length(s);
    if (len > CONF_MAX_IDS)
        return fail(ld, s, key, "%d ids; at most %d", len, CONF_MAX_IDS);
    for (int i = 0; i < len; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        int t = config_setting_type(e);
        long long v = t == CONFIG_TYPE_INT     ? config_setting_get_int(e)
                      : t == CONFIG_TYPE_INT64 ? config_setting_get_int64(e)
                                               : -1;
        if (v < 0 || v > 0xfffffffell)
            return fail(ld, s, key, "element %d is not a uid/gid number", i);
        ids[(*n)++] = (unsigned)v;
    }
    return 1;
}

/* A user (or, with is_group, a group) name or number to its id. */
static int parse_id(const char *v, int is_group, unsigned *id)
{
    char buf[4096], *end;
    unsigned long n = strtoul(v, &end, 10);
    if (*end == '\0') {
        *id = (unsigned)n;
        return 0;
    }
    if (is_group) {
        struct group gr, *grp = NULL;
        if (getgrnam_r(v, &gr, buf, sizeof(buf), &grp) != 0 || grp == NULL)
            return -EINVAL;
        *id = grp->gr_gid;
    } else {
        struct passwd pw, *pr = NULL;
        if (getpwnam_r(v, &pw, buf, sizeof(buf), &pr) != 0 || pr == NULL)
            return -EINVAL;
        *id = pr->pw_uid;
    }
    return 0;
}

/* "user" or "user:group" (names or numbers) to ids; -1 keeps one as is. */
static int parse_owner(const char *v, uid_t *uid, gid_t *gid)
{
    char user[128], *group;
    if (strlen(v) >= sizeof(user) || v[0] == '\0')
        return -EINVAL;
    strcpy(user, v);
    group = strchr(user, ':');
    if (group != NULL)
        *group++ = '\0';
    unsigned id;
    if (user[0] != '\0') {
        if (parse_id(user, 0, &id) < 0)
            return -EINVAL;
        *uid = (uid_t)id;
    }
    if (group != NULL && group[0] != '\0') {
        if (parse_id(group, 1, &id) < 0)
            return -EINVAL;
        *gid = (gid_t)id;
    }
    return 0;
}

/* isolation and what only a process-mode service has: crash_limit,
 * handler_kill_ms, max_rss_bytes. */
static int load_service_isolation(struct conf_parser *ld, const config_setting_t *e,
                                  const char *prefix, struct svc_conf *sv)
{
    struct member m;
    const char *s;
    long long v;
    sv->isolation = ISOLATION_THREAD;
    int rc = get_string(ld, e, prefix, "isolation", &m, &s);
    if (rc < 0)
        return rc;
    if (rc > 0) {
        if (strcmp(s, "thread") == 0)
            sv->isolation = ISOLATION_THREAD;
        else if (strcmp(s, "process") == 0)
            sv->isolation = ISOLATION_PROCESS;
        else
            return fail(ld, m.s, m.key, "\"%s\" is not \"thread\" or \"process\"", s);
    }
    static const char *const process_only[] = {"crash_limit", "handler_kill_ms", "max_rss_bytes"};
    for (size_t i = 0; i < sizeof(process_only) / sizeof(process_only[0]); i++) {
        const config_setting_t *k = config_setting_get_member(e, process_only[i]);
        char key[KEY_MAX];
        key_join(key, prefix, process_only[i]);
        if (k != NULL && sv->isolation != ISOLATION_PROCESS)
            return fail(ld, k, key, "needs isolation = \"process\" in this service");
    }
    sv->crash_limit = 5;
    if ((rc = get_int(ld, e, prefix, "crash_limit", 1, 64, &v)) < 0)
        return rc;
    if (rc > 0)
        sv->crash_limit = (unsigned)v;
    if ((rc = get_int(ld, e, prefix, "handler_kill_ms", 0, 3600000, &v)) < 0)
        return rc;
    sv->handler_kill_ms = rc > 0 ? (int)v : 0;
    if ((rc = get_int(ld, e, prefix, "max_rss_bytes", 0, 1ll << 40, &v)) < 0)
        return rc;
    sv->max_rss_bytes = rc > 0 ? (uint64_t)v : 0;
    if (sv->max_rss_bytes != 0 && sv->max_rss_bytes < (1u << 20))
    {
        char key[KEY_MAX];
        key_join(key, prefix, "max_rss_bytes");
        return fail(ld, config_setting_get_member(e, "max_rss_bytes"), key,
                    "%llu is out of range (0, or 1048576..1099511627776)",
                    (unsigned long long)sv->max_rss_bytes);
    }
    return 0;
}

/* How a service runs its handlers: workers of its own, what a failed
 * handler does, the slow-handler log. */
static int load_service_runtime(struct conf_parser *ld, const config_setting_t *e,
                                const char *prefix, struct svc_conf *sv)
{
    long long v;
    int rc = get_int(ld, e, prefix, "workers", 0, CONF_MAX_WORKERS, &v);
    if (rc < 0)
        return rc;
    sv->workers = rc > 0 ? (unsigned)v : 0;
    sv->slow_handler_ms = -1;
    if ((rc = get_int(ld, e, prefix, "slow_handler_ms", 0, 3600000, &v)) < 0)
        return rc;
    if (rc > 0)
        sv->slow_handler_ms = (int)v;
    sv->slow_handler_trace = -1;
    if ((rc = get_bool(ld, e, prefix, "slow_handler_trace", &sv->slow_handler_trace)) < 0)
        return rc;
    struct member m;
    const char *s;
    if ((rc = load_service_isolation(ld, e, prefix, sv)) < 0)
        return rc;
    sv->handler_error = HANDLER_ERROR_CLOSE_STREAM;
    if ((rc = get_string(ld, e, prefix, "handler_error", &m, &s)) < 0)
        return rc;
    if (rc > 0) {
        if (strcmp(s, "close_stream") == 0)
            sv->handler_error = HANDLER_ERROR_CLOSE_STREAM;
        else if (strcmp(s, "drop") == 0)
            sv->handler_error = HANDLER_ERROR_DROP;
        else
            return fail(ld, m.s, m.key, "\"%s\" is not \"close_stream\" or \"drop\"", s);
    }
    return 0;
}

static int load_service(struct conf_parser *ld, const config_setting_t *e, unsigned i,
                        struct sock_addr *addrs)
{
    struct svc_conf *sv = &ld->c->services[i];
    char prefix[32];
    struct member m;
    const char *v;
    int rc;
    snprintf(prefix, sizeof(prefix), "services.[%u]", i);
    if (config_setting_type(e) != CONFIG_TYPE_GROUP)
        return fail(ld, e, prefix, "must be a group ({ name = ...; ... }), not %s",
                    type_name(config_setting_type(e)));
    sv->line = config_setting_source_line(e);
    sv->mode = DEF_SVC_MODE;
    if ((rc = check_keys(ld, e, prefix, svc_keys)) < 0)
        return rc;

    if ((rc = get_needed(ld, e, prefix, "name", "every service needs a name", &m, &v)) < 0)
        return rc;
    if (!valid_name(v))
        return fail(ld, m.s, m.key, "\"%s\" may hold only letters, digits, '_', '.' and '-'", v);
    if (strlen(v) > CONF_MAX_NAME)
        return fail(ld, m.s, m.key, "longer than %d characters", CONF_MAX_NAME);
    for (unsigned j = 0; j < i; j++)
        if (strcmp(ld->c->services[j].name, v) == 0)
            return fail(ld, m.s, m.key, "duplicate service name \"%s\" (first at line %d)", v,
                        ld->c->services[j].line);
    if ((rc = dup_str(ld, m.s, m.key, v, &sv->name)) < 0)
        return rc;

    if ((rc = get_needed(ld, e, prefix, "listen", "an address to listen on", &m, &v)) < 0)
        return rc;
    if ((rc = check_unix_path(ld, m.s, m.key, v)) < 0)
        return rc;
    if (sock_addr_parse(v, &addrs[i]) < 0)
        return fail(ld, m.s, m.key,
                    "\"%s\" is not an address (unix:/abs/path, /abs/path or tcp:host:port)", v);
    for (unsigned j = 0; j < i; j++)
        if (strcmp(addrs[j].text, addrs[i].text) == 0)
            return fail(ld, m.s, m.key, "%s is already used by service \"%s\" (line %d)",
                        addrs[i].text, ld->c->services[j].name, ld->c->services[j].line);
    if ((rc = dup_str(ld, m.s, m.key, v, &sv->listen)) < 0)
        return rc;

    if ((rc = get_mode(ld, e, prefix, "mode", &sv->mode)) < 0)
        return rc;

    sv->uid = (uid_t)-1;
    sv->gid = (gid_t)-1;
    if ((rc = get_string(ld, e, prefix, "owner", &m, &v)) < 0)
        return rc;
    if (rc > 0 && (rc = parse_owner(v, &sv->uid, &sv->gid)) < 0)
        return fail(ld, m.s, m.key, "\"%s\" is not \"user\" or \"user:group\" known to this system",
                    v);

    if ((rc = get_string(ld, e, prefix, "allowed_dir", &m, &v)) < 0)
        return rc;
    if (rc == 0)
        v = DEF_ALLOWED_DIR;
    if (v[0] != '/')
        return fail(ld, m.s, m.key, "\"%s\" is not an absolute path", v);
    if (strlen(v) > CONF_MAX_DIR)
        return fail(ld, m.s, m.key, "longer than %d characters", CONF_MAX_DIR);
    if ((rc = dup_str(ld, m.s != NULL ? m.s : e, m.key, v, &sv->allowed_dir)) < 0)
        return rc;

    if ((rc = get_needed(ld, e, prefix, "plugin", "the plugin .so this service runs", &m, &v)) < 0)
        return rc;
    if ((rc = resolve_plugin(ld, m.s, m.key, v, &sv->plugin)) < 0)
        return rc;

    if ((rc = get_bool(ld, e, prefix, "watch", &sv->watch)) < 0)
        return rc;
    if ((rc = load_service_runtime(ld, e, prefix, sv)) < 0)
        return rc;
    if ((rc = get_ids(ld, e, prefix, "allow_uids", sv->allow_uids, &sv->nallow_uids)) < 0 ||
        (rc = get_ids(ld, e, prefix, "allow_gids", sv->allow_gids, &sv->nallow_gids)) < 0)
        return rc;

    const config_setting_t *pc;
    if ((rc = get_group(ld, e, prefix, "config", &pc)) < 0)
        return rc;
    sv->plugin_conf = (config_setting_t *)pc;
    return 0;
}

static int load_services(struct conf_parser *ld, const config_setting_t *root)
{
    struct daemon_conf *c = ld->c;
    const config_setting_t *svcs = config_setting_get_member(root, "services");
    if (svcs == NULL)
        return fail(ld, root, "services", "missing (at least one service is required)");
    int type = config_setting_type(svcs);
    int n = config_setting_length(svcs);
    if ((type == CONFIG_TYPE_LIST || type == CONFIG_TYPE_ARRAY) && n == 0)
        return fail(ld, svcs, "services", "empty (at least one service is required)");
    if (type != CONFIG_TYPE_LIST)
        return fail(ld, svcs, "services", "must be a list of groups: services = ( { ... } );");
    if (n > CONF_MAX_SERVICES)
        return fail(ld, svcs, "services", "%d services; at most %d", n, CONF_MAX_SERVICES);

    c->services = calloc((size_t)n, sizeof(*c->services));
    struct sock_addr *addrs = calloc((size_t)n + 1, sizeof(*addrs));
    if (c->services == NULL || addrs == NULL) {
        free(addrs);
        return fail_code(ld, -ENOMEM, svcs, "services", "out of memory");
    }
    c->nservices = (unsigned)n; /* zeroed entries: conf_free copes */
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        rc = load_service(ld, config_setting_get_elem(svcs, (unsigned)i), (unsigned)i, addrs);
    if (rc == 0 && c->admin != NULL) {
        /* The admin socket must not collide with a service's. */
        sock_addr_parse(c->admin, &addrs[n]);
        for (int i = 0; i < n; i++)
            if (strcmp(addrs[i].text, addrs[n].text) == 0) {
                rc = fail(ld, config_setting_get_member(root, "admin"), "admin",
                          "%s is already used by service \"%s\" (line %d)", addrs[n].text,
                          c->services[i].name, c->services[i].line);
                break;
            }
    }
    free(addrs);
    return rc;
}

/* ---- entry points ---- */

static void set_defaults(struct daemon_conf *c)
{
    c->workers = DEF_WORKERS;
    c->log_level = LOG_INFO;
    c->admin_mode = DEF_ADMIN_MODE;
    c->max_sessions = DEF_MAX_SESSIONS;
    c->max_pool_bytes = DEF_MAX_POOL_BYTES;
    c->handshake_timeout_ms = DEF_HANDSHAKE_MS;
    c->max_event_bytes = DEF_MAX_EVENT_BYTES;
    c->drain_timeout_ms = DEF_DRAIN_MS;
    c->max_streams = 65536;
    c->slow_handler_ms = 1000;
    c->adaptive_spin = 1;
}

/* Checks the file can be opened and fills conf_dir and c->path. */
static int locate(struct conf_parser *ld)
{
    const char *path = ld->path;
    struct stat st;
    FILE *f = fopen(path, "r");
    if (f == NULL || fstat(fileno(f), &st) < 0 || S_ISDIR(st.st_mode)) {
        int code = f == NULL ? -errno : S_ISDIR(st.st_mode) ? -EISDIR : -errno;
        if (f != NULL)
            fclose(f);
        if (ld->err != NULL && ld->errlen > 0)
            snprintf(ld->err, ld->errlen, "%s: cannot read: %s", path, strerror(-code));
        return code;
    }
    fclose(f);
    char *copy = strdup(path);
    if (copy == NULL)
        return -ENOMEM;
    char *slash = strrchr(copy, '/');
    const char *dir = slash == NULL ? "." : slash == copy ? "/" : copy;
    if (slash != NULL && slash != copy)
        *slash = '\0';
    const char *base = slash == NULL ? path : path + (slash - copy) + 1;
    char *real = realpath(dir, ld->conf_dir);
    int err = errno;
    free(copy);
    if (real == NULL) {
        if (ld->err != NULL && ld->errlen > 0)
            snprintf(ld->err, ld->errlen, "%s: cannot resolve its directory: %s", path,
                     strerror(err));
        return -err;
    }
    size_t need = strlen(ld->conf_dir) + strlen(base) + 2;
    ld->c->path = malloc(need);
    if (ld->c->path == NULL)
        return -ENOMEM;
    snprintf(ld->c->path, need, "%s%s%s", ld->conf_dir, strcmp(ld->conf_dir, "/") ? "/" : "", base);
    return 0;
}

static int load(struct conf_parser *ld)
{
    struct daemon_conf *c = ld->c;
    int rc = locate(ld);
    if (rc < 0)
        return rc;
    if ((rc = check_includes(ld, ld->path, 0)) < 0)
        return rc;
    config_init(&c->cfg);
    /* @include "x" is resolved next to the file, not in the cwd. */
    config_set_include_dir(&c->cfg, ld->conf_dir);
    if (config_read_file(&c->cfg, ld->path) != CONFIG_TRUE) {
        const char *file = config_error_file(&c->cfg);
        int line = config_error_line(&c->cfg);
        const char *text = config_error_text(&c->cfg);
        if (ld->err != NULL && ld->errlen > 0) {
            if (line > 0)
                snprintf(ld->err, ld->errlen, "%s:%d: %s", file ? file : ld->path, line,
                         text ? text : "parse error");
            else
                snprintf(ld->err, ld->errlen, "%s: %s", file ? file : ld->path,
                         text ? text : "cannot read");
        }
        return config_error_type(&c->cfg) == CONFIG_ERR_FILE_IO ? -EIO : -EINVAL;
    }
    const config_setting_t *root = config_root_setting(&c->cfg);
    if ((rc = check_wrapped(ld)) < 0 || (rc = load_top(ld, root)) < 0 ||
        (rc = load_limits(ld, root)) < 0 || (rc = load_plugin_dir(ld, root)) < 0 ||
        (rc = load_services(ld, root)) < 0)
        return rc;
    return 0;
}

int conf_load(const char *path, struct daemon_conf *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (path == NULL)
        return -EINVAL;
    struct conf_parser *ld = calloc(1, sizeof(*ld)); /* two PATH_MAX buffers: not on the stack */
    if (ld == NULL)
        return -ENOMEM;
    ld->c = out;
    ld->path = path;
    ld->err = err;
    ld->errlen = errlen;
    set_defaults(out);
    int rc = load(ld);
    if (rc < 0) {
        if (err != NULL && errlen > 0 && err[0] == '\0')
            snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        conf_free(out);
    }
    free(ld);
    return rc;
}

void conf_free(struct daemon_conf *c)
{
    if (c == NULL)
        return;
    for (unsigned i = 0; c->services != NULL && i < c->nservices; i++) {
        free(c->services[i].name);
        free(c->services[i].listen);
        free(c->services[i].allowed_dir);
        free(c->services[i].plugin);
    }
    free(c->services);
    free(c->admin);
    free(c->pid_file);
    free(c->metrics_listen);
    free(c->path);
    if (c->cfg.root != NULL)
        config_destroy(&c->cfg);
    memset(c, 0, sizeof(*c));
}

/* ---- plugin accessors ---- */

/* The accessors' one body: `type` says what out points to (CONFIG_TYPE_INT64
 * for a long long, which an INT setting fills too). No conversions. */
static int plugin_get(const config_setting_t *group, const char *path, int type, void *out)
{
    if (group == NULL || path == NULL)
        return -ENOENT;
    /* libconfig 1.5 takes a non-const setting but does not modify it. */
    const config_setting_t *s = config_setting_lookup((config_setting_t *)group, path);
    if (s == NULL)
        return -ENOENT;
    int t = config_setting_type(s);
    if (t != type && !(type == CONFIG_TYPE_INT64 && t == CONFIG_TYPE_INT))
        return -EINVAL;
    switch (type) {
    case CONFIG_TYPE_INT64:
        *(long long *)out =
            t == CONFIG_TYPE_INT ? config_setting_get_int(s) : config_setting_get_int64(s);
        break;
    case CONFIG_TYPE_BOOL:
        *(int *)out = config_setting_get_bool(s);
        break;
    case CONFIG_TYPE_FLOAT:
        *(double *)out = config_setting_get_float(s);
        break;
    default:
        *(const char **)out = config_setting_get_string(s);
        break;
    }
    return 0;
}

int conf_plugin_int(const config_setting_t *group, const char *path, long long *out)
{
    return plugin_get(group, path, CONFIG_TYPE_INT64, out);
}

int conf_plugin_bool(const config_setting_t *group, const char *path, int *out)
{
    return plugin_get(group, path, CONFIG_TYPE_BOOL, out);
}

int conf_plugin_float(const config_setting_t *group, const char *path, double *out)
{
    return plugin_get(group, path, CONFIG_TYPE_FLOAT, out);
}

int conf_plugin_string(const config_setting_t *group, const char *path, const char **out)
{
    return plugin_get(group, path, CONFIG_TYPE_STRING, out);
}

int conf_plugin_keys(const config_setting_t *group, const char *const *known, char *err,
                     size_t errlen)
{
    if (group == NULL)
        return 0;
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(m);
        if (name == NULL)
            continue;
        int ok = 0;
        for (const char *const *k = known; k != NULL && *k != NULL && !ok; k++)
            ok = strcmp(*k, name) == 0;
        if (ok)
            continue;
        char list[256] = "";
        size_t used = 0;
        for (const char *const *k = known; k != NULL && *k != NULL; k++) {
            int w = snprintf(list + used, sizeof(list) - used, "%s%s", used ? ", " : "", *k);
            if (w < 0 || (size_t)w >= sizeof(list) - used)
                break;
            used += (size_t)w;
        }
        const char *file = config_setting_source_file(m);
        snprintf(err, errlen, "%s:%u: unknown key '%s' in the plugin's config (known: %s)",
                 file != NULL ? file : "?", config_setting_source_line(m), name,
                 used ? list : "none");
        return -EINVAL;
    }
    return 0;
}
