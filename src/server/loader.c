/*
 * Plugin generations: private copy, dlopen, descriptor check, init.
 *
 * Every generation dlopen()s its own copy of the configured .so, so that
 * replacing the file on disk (an upgrade in place, a half-written copy)
 * never changes code that is already running, and dlopen's by-inode cache
 * never hands back an older generation's mapping. The copy lives beside
 * the generation and goes away with it.
 *
 * Nothing of a plugin runs before its descriptor has been checked: the
 * dynamic loader runs the object's constructors (that much is
 * unavoidable), but no hook is called until magic, ABI and size match.
 *
 * Return codes: -ENOENT etc. (negated errno) when the file cannot be read
 * or copied, -ENOEXEC when it is not a loadable object or has no
 * descriptor, -EPROTO for a descriptor mismatch, -ECANCELED when the
 * plugin's init, thread_init or a state hook refused, -ENOMEM.
 *
 * State across reloads (gen_carry_state): hooks of minor 1 are read only
 * from descriptors of minor >= 1, and only between plugins of one name.
 * The bytes of save/restore are this file's (grown by put, freed here).
 */
#include "server/loader.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The descriptor's size for each minor this host knows: a plugin of minor
 * m must declare exactly desc_size[m]. A new minor appends its size here
 * (the assertion below fails until it does). Minor 1 took its hooks out of
 * minor 0's spare slots, so both have one size; those slots of a minor-0
 * plugin are never read as hooks (gen_carry_state). */
static const uint32_t desc_size[] = {
    sizeof(struct shmipc_plugin), /* 0 */
    sizeof(struct shmipc_plugin), /* 1: handoff, save, restore */
};
_Static_assert(sizeof(struct shmipc_plugin) - offsetof(struct shmipc_plugin, handoff) ==
                   8 * sizeof(void *),
               "minor 1's hooks and spare[] must fill exactly minor 0's spare[8]");
_Static_assert(sizeof(desc_size) / sizeof(desc_size[0]) == SHMIPC_PLUGIN_ABI_MINOR + 1,
               "desc_size needs one entry per ABI minor");

/* The leading fields every ABI version shares: magic, major, minor, size. */
#define DESC_HEADER_BYTES (offsetof(struct shmipc_plugin, size) + sizeof(uint32_t))

static int fail(int code, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(int code, char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

int gen_check_descriptor(const struct shmipc_plugin *d, const char *file, char *err, size_t errlen)
{
    if (file == NULL)
        file = "(plugin)";
    if (d == NULL)
        return fail(-EPROTO, err, errlen, "%s: no descriptor", file);
    if (d->magic != SHMIPC_PLUGIN_MAGIC)
        return fail(-EPROTO, err, errlen, "%s: wrong magic 0x%08x, expected 0x%08x", file,
                    (unsigned)d->magic, (unsigned)SHMIPC_PLUGIN_MAGIC);
    if (d->abi_major != SHMIPC_PLUGIN_ABI_MAJOR)
        return fail(-EPROTO, err, errlen, "%s: ABI major %u, host has %u", file,
                    (unsigned)d->abi_major, (unsigned)SHMIPC_PLUGIN_ABI_MAJOR);
    if (d->abi_minor > SHMIPC_PLUGIN_ABI_MINOR)
        return fail(-EPROTO, err, errlen, "%s: ABI minor %u is newer than the host's %u", file,
                    (unsigned)d->abi_minor, (unsigned)SHMIPC_PLUGIN_ABI_MINOR);
    if (d->size != desc_size[d->abi_minor])
        return fail(-EPROTO, err, errlen, "%s: descriptor size %u, expected %u for ABI %u.%u", file,
                    (unsigned)d->size, (unsigned)desc_size[d->abi_minor], (unsigned)d->abi_major,
                    (unsigned)d->abi_minor);
    if (d->name == NULL)
        return fail(-EPROTO, err, errlen, "%s: descriptor has no name", file);
    if (d->version == NULL)
        return fail(-EPROTO, err, errlen, "%s: descriptor of '%s' has no version", file, d->name);
    if (d->handle == NULL)
        return fail(-EPROTO, err, errlen, "%s: descriptor of '%s' has no handle hook", file,
                    d->name);
    return 0;
}

/* Copies all of `in` to `out`. 0 or -errno. */
static int copy_fd(int in, int out)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return -errno;
            done += w;
        }
    }
}

/* Makes the private copy of `src` under `tmpdir`; returns its malloc'd
 * path in *out. 0 or a negative code with err set. */
static int make_private_copy(const char *src, const char *tmpdir, unsigned number, char **out,
                             char *err, size_t errlen)
{
    *out = NULL;
    int in = open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (in < 0)
        return fail(-errno, err, errlen, "%s: cannot open: %s", src, strerror(errno));
    struct stat st;
    if (fstat(in, &st) < 0) {
        int e = errno;
        close(in);
        return fail(-e, err, errlen, "%s: cannot stat: %s", src, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(in);
        return fail(-ENOEXEC, err, errlen, "%s: not a regular file", src);
    }

    const char *base = strrchr(src, '/');
    base = base != NULL ? base + 1 : src;
    size_t blen = strcspn(base, ".");
    if (blen > 64)
        blen = 64;
    char *path = NULL;
    if (asprintf(&path, "%s/shmipc-%.*s.gen%u.XXXXXX", tmpdir, (int)blen, base, number) < 0) {
        close(in);
        return fail(-ENOMEM, err, errlen, "%s: out of memory", src);
    }
    int outfd = mkostemp(path, O_CLOEXEC);
    if (outfd < 0) {
        int e = errno;
        close(in);
        fail(-e, err, errlen, "%s: cannot create a private copy in %s: %s", src, tmpdir,
             strerror(e));
        free(path);
        return -e;
    }
    int rc = fchmod(outfd, 0700) < 0 ? -errno : 0;
    if (rc == 0)
        rc = copy_fd(in, outfd);
    close(in);
    if (close(outfd) < 0 && rc == 0)
        rc = -errno;
    if (rc < 0) {
        fail(rc, err, errlen, "%s: cannot copy to %s: %s", src, path, strerror(-rc));
        unlink(path);
        free(path);
        return rc;
    }
    *out = path;
    return 0;
}

/* The descriptor of `dl`, checked. NULL with err set on failure. */
static const struct shmipc_plugin *find_descriptor(void *dl, const char *src, int *code, char *err,
                                                   size_t errlen)
{
    dlerror();
    const struct shmipc_plugin *d = dlsym(dl, SHMIPC_PLUGIN_SYMBOL);
    if (d == NULL) {
        const char *why = dlerror();
        *code = fail(-ENOEXEC, err, errlen, "%s: no descriptor symbol '%s'%s%s", src,
                     SHMIPC_PLUGIN_SYMBOL, why != NULL ? ": " : "", why != NULL ? why : "");
        return NULL;
    }
    /* Read no further than the object the plugin actually exports: a
     * truncated or mistyped symbol must not make us read past it. */
    Dl_info info;
    const ElfW(Sym) *sym = NULL;
    if (dladdr1(d, &info, (void **)&sym, RTLD_DL_SYMENT) != 0 && sym != NULL) {
        if (ELF64_ST_TYPE(sym->st_info) != STT_OBJECT) { /* same for ELF32 */
            *code = fail(-ENOEXEC, err, errlen, "%s: '%s' is not a data object", src,
                         SHMIPC_PLUGIN_SYMBOL);
            return NULL;
        }
        if (sym->st_size < DESC_HEADER_BYTES) {
            *code = fail(-EPROTO, err, errlen, "%s: descriptor object is %zu bytes, too small", src,
                         (size_t)sym->st_size);
            return NULL;
        }
    }
    int rc = gen_check_descriptor(d, src, err, errlen);
    if (rc < 0) {
        *code = rc;
        return NULL;
    }
    if (sym != NULL && sym->st_size < d->size) {
        *code = fail(-EPROTO, err, errlen, "%s: descriptor object is %zu bytes, it declares %u",
                     src, (size_t)sym->st_size, (unsigned)d->size);
        return NULL;
    }
    return d;
}

int gen_load(const char *so_path, const char *tmpdir, unsigned number, unsigned nworkers,
             const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
             struct plugin_gen **out, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (out == NULL || so_path == NULL || tmpdir == NULL)
        return fail(-EINVAL, err, errlen, "%s: invalid arguments to gen_load",
                    so_path != NULL ? so_path : "(null)");
    *out = NULL;

    char *priv = NULL;
    int rc = make_private_copy(so_path, tmpdir, number, &priv, err, errlen);
    if (rc < 0)
        return rc;

    struct plugin_gen *g = NULL;
    void *dl = dlopen(priv, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        const char *why = dlerror();
        rc = fail(-ENOEXEC, err, errlen, "%s: dlopen failed: %s", so_path,
                  why != NULL ? why : "unknown error");
        goto out_unlink;
    }
    const struct shmipc_plugin *d = find_descriptor(dl, so_path, &rc, err, errlen);
    if (d == NULL)
        goto out_close;

    g = calloc(1, sizeof(*g));
    if (g != NULL) {
        g->thread_states = calloc(nworkers > 0 ? nworkers : 1, sizeof(void *));
        g->source = strdup(so_path);
    }
    if (g == NULL || g->thread_states == NULL || g->source == NULL) {
        rc = fail(-ENOMEM, err, errlen, "%s: out of memory", so_path);
        goto out_close;
    }
    g->dl = dl;
    g->desc = d;
    g->nworkers = nworkers;
    g->number = number;
    g->private_path = priv;

    g->checked_only = host == NULL;
    if (d->init != NULL && host != NULL) {
        char perr[512];
        perr[0] = '\0';
        g->state = d->init(host, conf, perr, sizeof(perr));
        if (g->state == NULL) {
            perr[sizeof(perr) - 1] = '\0';
            rc = fail(-ECANCELED, err, errlen, "%s: plugin '%s' %s: init failed: %s", so_path,
                      d->name, d->version, perr[0] != '\0' ? perr : "no reason given");
            goto out_close;
        }
    }
    __atomic_store_n(&g->refs, 1, __ATOMIC_RELEASE);
    *out = g;
    return 0;

out_close:
    dlclose(dl);
out_unlink:
    unlink(priv);
    free(priv);
    if (g != NULL) {
        free(g->thread_states);
        free(g->source);
        free(g);
    }
    return rc;
}

/* ---- state across reloads ---- */

/* The bytes a plugin's save() writes; put() grows them. */
struct saved {
    uint8_t *p;
    size_t len, cap;
};

static int saved_put(void *sink, const void *data, size_t n)
{
    struct saved *b = sink;
    if (n == 0)
        return 0;
    if (data == NULL || n > SIZE_MAX / 2 - b->len)
        return -EINVAL;
    if (b->len + n > b->cap) {
        size_t cap = b->cap > 0 ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (p == NULL)
            return -ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

/* Whether the minor-1 hooks of `d` may be read: a minor-0 plugin's
 * slots there are its spare[], NULL by its contract but not ours to use. */
static int has_minor1(const struct shmipc_plugin *d)
{
    return d->abi_minor >= 1;
}

/* -ECANCELED with err naming g's file, plugin, the hook and its message. */
static int hook_failed(const struct plugin_gen *g, const char *hook, char *perr, size_t plen,
                       int rc, char *err, size_t errlen)
{
    perr[plen - 1] = '\0';
    if (perr[0] == '\0')
        snprintf(perr, plen, "%s", rc == -ENOMEM ? "out of memory" : "no reason given");
    return fail(-ECANCELED, err, errlen, "%s: plugin '%s' %s: %s failed: %s", g->source,
                g->desc->name, g->desc->version, hook, perr);
}

int gen_save(struct plugin_gen *g, uint8_t **data, size_t *len, char *err, size_t errlen)
{
    struct saved b = {NULL, 0, 0};
    char perr[512] = "";
    *data = NULL;
    *len = 0;
    if (!has_minor1(g->desc) || g->desc->save == NULL)
        return fail(-ENOSYS, err, errlen, "%s: plugin '%s' %s has no save hook", g->source,
                    g->desc->name, g->desc->version);
    int rc = g->desc->save(g->state, saved_put, &b, perr, sizeof(perr));
    if (rc < 0) {
        free(b.p);
        return hook_failed(g, "save", perr, sizeof(perr), rc, err, errlen);
    }
    *data = b.p;
    *len = b.len;
    return 0;
}

int gen_restore(struct plugin_gen *g, unsigned from, const void *data, size_t len, char *err,
                size_t errlen)
{
    char perr[512] = "";
    if (!has_minor1(g->desc) || g->desc->restore == NULL)
        return fail(-ENOSYS, err, errlen, "%s: plugin '%s' %s has no restore hook", g->source,
                    g->desc->name, g->desc->version);
    int rc = g->desc->restore(g->state, data != NULL ? data : (const void *)"", len, perr,
                              sizeof(perr));
    if (rc < 0)
        return hook_failed(g, "restore", perr, sizeof(perr), rc, err, errlen);
    g->carry.how = GEN_CARRY_RESTORE;
    g->carry.from = from;
    g->carry.bytes = len;
    return 0;
}

/* save on old, restore on neu. 0 or negative with err set. */
static int save_restore(struct plugin_gen *old, struct plugin_gen *neu, char *err, size_t errlen)
{
    uint8_t *data;
    size_t len;
    int rc = gen_save(old, &data, &len, err, errlen);
    if (rc == 0)
        rc = gen_restore(neu, old->number, data, len, err, errlen);
    free(data);
    return rc;
}

/* Why a plugin that has state hooks starts empty (neu->carry.why). */
static void carry_why(const struct plugin_gen *old, struct plugin_gen *neu, int declined)
{
    const struct shmipc_plugin *o = old->desc;
    if (declined)
        snprintf(neu->carry.why, sizeof(neu->carry.why),
                 "the plugin declined the hand-off, and there is no save/restore pair");
    else if (!has_minor1(o) || (o->handoff == NULL && o->save == NULL))
        snprintf(neu->carry.why, sizeof(neu->carry.why),
                 "generation %u (%s %s) has no hook to pass it on", old->number, o->name,
                 o->version);
    else
        snprintf(neu->carry.why, sizeof(neu->carry.why),
                 "no handoff or save/restore pair between generation %u (%s %s) and this one",
                 old->number, o->name, o->version);
}

/* Why nothing can be carried for another plugin's name, or 0 when the
 * names match. */
static int other_plugin(const struct plugin_gen *old, struct plugin_gen *neu, int wants)
{
    if (strcmp(old->desc->name, neu->desc->name) == 0)
        return 0;
    if (wants)
        snprintf(neu->carry.why, sizeof(neu->carry.why),
                 "generation %u ran another plugin ('%s')", old->number, old->desc->name);
    return 1;
}

/* What both ways of carrying state ask first: neu->carry reset; 1 when
 * old's state may go to neu (same plugin), *wants whether neu could take
 * it (why not is said only then). */
static int carry_begin(const struct plugin_gen *old, struct plugin_gen *neu, int *wants)
{
    memset(&neu->carry, 0, sizeof(neu->carry));
    if (old == NULL)
        return 0;
    neu->carry.from = old->number;
    const struct shmipc_plugin *n = neu->desc;
    *wants = has_minor1(n) && (n->handoff != NULL || n->restore != NULL);
    return !other_plugin(old, neu, *wants);
}

int gen_carry_across(const struct plugin_gen *old, struct plugin_gen *neu)
{
    int wants = 0;
    if (!carry_begin(old, neu, &wants))
        return 0;
    const struct shmipc_plugin *o = old->desc, *n = neu->desc;
    if (has_minor1(o) && has_minor1(n) && o->save != NULL && n->restore != NULL)
        return 1;
    if (!wants)
        return 0;
    if (has_minor1(o) && o->handoff != NULL && o->save == NULL)
        snprintf(neu->carry.why, sizeof(neu->carry.why),
                 "generation %u (%s %s) passes its state on by handoff only, which cannot "
                 "cross into another process",
                 old->number, o->name, o->version);
    else
        carry_why(old, neu, 0);
    return 0;
}

int gen_carry_state(struct plugin_gen *old, struct plugin_gen *neu, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    /* Why nothing was carried matters only to a plugin that could take it. */
    int wants = 0;
    if (!carry_begin(old, neu, &wants))
        return 0;
    const struct shmipc_plugin *o = old->desc, *n = neu->desc;
    int both = has_minor1(o) && has_minor1(n), declined = 0;
    if (both && o->handoff != NULL && n->handoff != NULL) {
        char perr[512] = "";
        int rc = n->handoff(neu->state, old->state, perr, sizeof(perr));
        if (rc < 0)
            return hook_failed(neu, "handoff", perr, sizeof(perr), rc, err, errlen);
        if (rc == 0) {
            neu->carry.how = GEN_CARRY_HANDOFF;
            return 0;
        }
        declined = 1; /* SHMIPC_STATE_DECLINED, or any other positive answer */
    }
    if (both && o->save != NULL && n->restore != NULL)
        return save_restore(old, neu, err, errlen);
    if (wants)
        carry_why(old, neu, declined);
    return 0;
}

int gen_thread_init(struct plugin_gen *g, unsigned w, char *err, size_t errlen)
{
    if (g == NULL || w >= g->nworkers)
        return fail(-EINVAL, err, errlen, "%s: worker %u out of range (%u workers)",
                    g != NULL ? g->source : "(null)", w, g != NULL ? g->nworkers : 0);
    if (g->desc->thread_init == NULL) {
        g->thread_states[w] = NULL;
        return 0;
    }
    void *ts = g->desc->thread_init(g->state, w);
    if (ts == NULL)
        return fail(-ECANCELED, err, errlen, "%s: plugin '%s' %s: thread_init failed for worker %u",
                    g->source, g->desc->name, g->desc->version, w);
    g->thread_states[w] = ts;
    return 0;
}

void gen_thread_fini(struct plugin_gen *g, unsigned w)
{
    if (g == NULL || w >= g->nworkers)
        return;
    /* A worker whose thread_init never ran, or failed, has nothing to
     * finish: the plugin never saw this thread. */
    if (g->desc->thread_init != NULL && g->thread_states[w] == NULL)
        return;
    if (g->desc->thread_fini != NULL)
        g->desc->thread_fini(g->state, g->thread_states[w]);
    g->thread_states[w] = NULL;
}

void gen_unload(struct plugin_gen *g)
{
    if (g == NULL)
        return;
    if (g->desc->fini != NULL && !g->checked_only)
        g->desc->fini(g->state);
    dlclose(g->dl);
    if (g->private_path != NULL)
        unlink(g->private_path);
    free(g->private_path);
    free(g->thread_states);
    free(g->source);
    free(g);
}
