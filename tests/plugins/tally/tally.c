/*
 * Test plugins tally and tallyhooks: a count of requests. Each request,
 * whatever it says, adds one and is answered with the new count in
 * decimal ("1", "2", ...), so a client sees whether a reload kept it.
 *
 *   tally       a plugin of ABI minor 0, built before the state hooks: it
 *               has none, so after a reload the count starts again at 0.
 *   tallyhooks  this file built with TALLY_HOOKS (tests/plugins/tallyhooks),
 *               of the current minor, with handoff, save and restore,
 *               steered by its config:
 *                 handoff = "share" (default) | "decline" | "fail";
 *                 fail_save = "why";     save fails saying "tallyhooks: why"
 *                 fail_restore = "why";  restore fails the same way
 *               "share" shares the count (reference counted) with the old
 *               generation; "decline" makes the host fall back to
 *               save/restore, whose bytes are "tally <count>".
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shmipc/plugin.h"

#ifdef TALLY_HOOKS
#define TALLY_NAME "tallyhooks"
#else
#define TALLY_NAME "tally"
#endif

/* The count; shared by generations after a hand-off. */
struct tally_count {
    int refs;   /* atomic */
    uint64_t n; /* atomic */
};

struct tally_state {
    const struct shmipc_host_api *host;
    struct tally_count *c;
    char handoff[16];
    char fail_save[128], fail_restore[128];
};

/* Copies the string setting `key` into out (cap bytes); "" when absent. */
static int tally_conf_str(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                          const char *key, char *out, size_t cap, char *errbuf, size_t errlen)
{
    const char *v = "";
    int rc = host->conf_string(conf, key, &v);
    if (rc < 0 && rc != -ENOENT) {
        snprintf(errbuf, errlen, TALLY_NAME ": config key '%s' must be a string", key);
        return -1;
    }
    snprintf(out, cap, "%s", rc == 0 ? v : "");
    return 0;
}

static void *tally_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                        char *errbuf, size_t errlen)
{
    struct tally_state *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->c = calloc(1, sizeof(*s->c))) == NULL) {
        free(s);
        snprintf(errbuf, errlen, TALLY_NAME ": out of memory");
        return NULL;
    }
    s->host = host;
    s->c->refs = 1;
    if (tally_conf_str(host, conf, "handoff", s->handoff, sizeof(s->handoff), errbuf, errlen) < 0 ||
        tally_conf_str(host, conf, "fail_save", s->fail_save, sizeof(s->fail_save), errbuf,
                       errlen) < 0 ||
        tally_conf_str(host, conf, "fail_restore", s->fail_restore, sizeof(s->fail_restore), errbuf,
                       errlen) < 0) {
        free(s->c);
        free(s);
        return NULL;
    }
    return s;
}

static void tally_count_put(struct tally_count *c)
{
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(c);
}

static void tally_fini(void *state)
{
    struct tally_state *s = state;
    tally_count_put(s->c);
    free(s);
}

static int tally_handle(void *state, void *thread_state, const struct shmipc_request *req,
                        struct shmipc_response *resp)
{
    (void)thread_state;
    (void)req;
    const struct tally_state *s = state;
    char buf[32];
    int n =
        snprintf(buf, sizeof(buf), "%" PRIu64, __atomic_add_fetch(&s->c->n, 1, __ATOMIC_RELAXED));
    int rc = s->host->write(resp, buf, (size_t)n);
    return rc < 0 ? rc : 0;
}

#ifdef TALLY_HOOKS
static int tally_handoff(void *state, void *old_state, char *errbuf, size_t errlen)
{
    struct tally_state *s = state;
    const struct tally_state *old = old_state;
    if (strcmp(s->handoff, "decline") == 0)
        return SHMIPC_STATE_DECLINED;
    if (strcmp(s->handoff, "fail") == 0) {
        snprintf(errbuf, errlen, TALLY_NAME ": handoff refused by its config");
        return -EPERM;
    }
    __atomic_add_fetch(&old->c->refs, 1, __ATOMIC_ACQ_REL);
    tally_count_put(s->c);
    s->c = old->c;
    return 0;
}

static int tally_save(void *state, int (*put)(void *sink, const void *data, size_t n), void *sink,
                      char *errbuf, size_t errlen)
{
    const struct tally_state *s = state;
    if (s->fail_save[0] != '\0') {
        snprintf(errbuf, errlen, TALLY_NAME ": %s", s->fail_save);
        return -EIO;
    }
    char buf[40];
    int n =
        snprintf(buf, sizeof(buf), "tally %" PRIu64, __atomic_load_n(&s->c->n, __ATOMIC_RELAXED));
    /* In two pieces: the host must join what put() is given. */
    int rc = put(sink, buf, 6);
    return rc < 0 ? rc : put(sink, buf + 6, (size_t)n - 6);
}

static int tally_restore(void *state, const void *data, size_t len, char *errbuf, size_t errlen)
{
    struct tally_state *s = state;
    if (s->fail_restore[0] != '\0') {
        snprintf(errbuf, errlen, TALLY_NAME ": %s", s->fail_restore);
        return -EIO;
    }
    char buf[40], end;
    uint64_t n = 0;
    if (len < sizeof(buf)) {
        memcpy(buf, data, len);
        buf[len] = '\0';
    }
    if (len >= sizeof(buf) || sscanf(buf, "tally %" SCNu64 "%c", &n, &end) != 1) {
        snprintf(errbuf, errlen, TALLY_NAME ": not a saved tally (%zu bytes)", len);
        return -EINVAL;
    }
    __atomic_store_n(&s->c->n, n, __ATOMIC_RELAXED);
    return 0;
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER(TALLY_NAME, "1.0.0"),
    .init = tally_init,
    .fini = tally_fini,
    .handle = tally_handle,
    .handoff = tally_handoff,
    .save = tally_save,
    .restore = tally_restore,
};
#else
/* Written out as a plugin of minor 0 declares itself: same size, its
 * spare slots (where minor 1 has its state hooks) NULL. */
SHMIPC_PLUGIN_EXPORT = {
    .magic = SHMIPC_PLUGIN_MAGIC,
    .abi_major = SHMIPC_PLUGIN_ABI_MAJOR,
    .abi_minor = 0,
    .size = sizeof(struct shmipc_plugin),
    .name = TALLY_NAME,
    .version = "1.0.0",
    .init = tally_init,
    .fini = tally_fini,
    .handle = tally_handle,
};
#endif
