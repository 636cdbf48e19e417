/*
 * kv: a small in-memory key-value store, shared by every worker thread,
 * that keeps its keys across reloads.
 *
 * Config (all optional):  config = { max_keys = 10000; max_value_bytes = 65536; };
 *   max_keys         1..10000000, default 10000
 *   max_value_bytes  0..1073741824, default 65536
 *
 * One request is one command; the reply is one response:
 *   "SET <key> <value>"  -> "OK" | "ERR full" | "ERR too big"
 *   "GET <key>"          -> "VALUE <value>" | "NOT_FOUND"
 *   "DEL <key>"          -> "DELETED" | "NOT_FOUND"
 *   "COUNT"              -> the number of keys, in decimal
 *   anything else        -> "ERR bad command"
 * A key is 1..250 bytes without a space (a longer one is "ERR too big");
 * a value is every byte after "SET <key> ", binary included, possibly
 * none. Nothing is trimmed: "GET a\n" looks up the key "a\n".
 *
 * The table is a chained hash under one rwlock: GET and COUNT share it,
 * SET and DEL take it exclusively. A SET copies the value out of the
 * request before taking the lock.
 *
 * Reloads (ABI minor 1 hooks): the table is a separate, reference-counted
 * object, and a generation's state only points at it with its own limits.
 * handoff makes the new generation share the old one's table, so the two
 * serve the same keys while the old one drains and no write is lost; the
 * last generation to let go frees it. It declines a table of another
 * layout (KV_LAYOUT), and then save/restore copies the keys as bytes
 * (KV_SAVE_MAGIC, little-endian). Either refuses a table holding more keys
 * than the new max_keys; a lower max_value_bytes applies to SETs from then
 * on, and values already stored stay.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shmipc/plugin.h"

#define KV_MAX_KEY 250
#define KV_DEFAULT_MAX_KEYS 10000
#define KV_LIMIT_MAX_KEYS 10000000
#define KV_DEFAULT_MAX_VALUE 65536
#define KV_LIMIT_MAX_VALUE 1073741824
#define KV_INITIAL_BUCKETS 64

struct kv_entry {
    struct kv_entry *next;
    uint64_t hash;
    size_t klen, vlen;
    uint8_t data[]; /* key, then value */
};

/* The layout of struct kv_state, kv_table and kv_entry: a build that
 * changes any of them changes this number, so that handoff declines a
 * table it would misread. */
#define KV_LAYOUT 1u

/* The keys; shared by the generations that handed it over. Only memory
 * from malloc and a libc lock: nothing of one .so copy's code or data. */
struct kv_table {
    uint32_t layout; /* KV_LAYOUT */
    int refs;        /* atomic: the generations' states pointing here */
    pthread_rwlock_t lock;
    struct kv_entry **buckets; /* nbuckets, a power of two */
    size_t nbuckets;
    size_t count;
};

/* One generation's: its limits and the table. */
struct kv_state {
    uint32_t layout; /* KV_LAYOUT, first in every layout */
    const struct shmipc_host_api *host;
    size_t max_keys;
    size_t max_value;
    struct kv_table *t;
};

/* "kvS1", then the count (8 bytes) and per key klen (4), vlen (8), key,
 * value; little-endian. */
static const uint8_t KV_SAVE_MAGIC[4] = {'k', 'v', 'S', '1'};

static uint64_t kv_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Reads an integer setting within [lo, hi], `def` when absent. */
static int kv_conf_int(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                       const char *key, long long def, long long lo, long long hi, long long *out,
                       char *errbuf, size_t errlen)
{
    long long v = def;
    int rc = host->conf_int(conf, key, &v);
    if (rc == -ENOENT) {
        v = def;
    } else if (rc < 0) {
        snprintf(errbuf, errlen, "kv: config key '%s' must be an integer", key);
        return -1;
    }
    if (v < lo || v > hi) {
        snprintf(errbuf, errlen, "kv: config key '%s' is %lld, must be within %lld..%lld", key, v,
                 lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static struct kv_table *kv_table_new(char *errbuf, size_t errlen)
{
    struct kv_table *t = calloc(1, sizeof(*t));
    if (t != NULL) {
        t->layout = KV_LAYOUT;
        t->refs = 1;
        t->nbuckets = KV_INITIAL_BUCKETS;
        t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
    }
    int rc = t == NULL || t->buckets == NULL ? ENOMEM : pthread_rwlock_init(&t->lock, NULL);
    if (rc != 0) {
        snprintf(errbuf, errlen, "kv: cannot set up the table: %s", strerror(rc));
        if (t != NULL)
            free(t->buckets);
        free(t);
        return NULL;
    }
    return t;
}

/* Drops one generation's reference; the last frees the keys. */
static void kv_table_put(struct kv_table *t)
{
    if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct kv_entry *e = t->buckets[i], *n; e != NULL; e = n) {
            n = e->next;
            free(e);
        }
    }
    free(t->buckets);
    pthread_rwlock_destroy(&t->lock);
    free(t);
}

static void *kv_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                     char *errbuf, size_t errlen)
{
    static const char *const known[] = {"max_keys", "max_value_bytes", NULL};
    if (SHMIPC_HOST_HAS(host, conf_keys) && host->conf_keys(conf, known, errbuf, errlen) < 0)
        return NULL; /* a typo in the service's config group */
    long long max_keys, max_value;
    if (kv_conf_int(host, conf, "max_keys", KV_DEFAULT_MAX_KEYS, 1, KV_LIMIT_MAX_KEYS, &max_keys,
                    errbuf, errlen) < 0 ||
        kv_conf_int(host, conf, "max_value_bytes", KV_DEFAULT_MAX_VALUE, 0, KV_LIMIT_MAX_VALUE,
                    &max_value, errbuf, errlen) < 0)
        return NULL;
    struct kv_state *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(errbuf, errlen, "kv: out of memory");
        return NULL;
    }
    s->layout = KV_LAYOUT;
    s->host = host;
    s->max_keys = (size_t)max_keys;
    s->max_value = (size_t)max_value;
    s->t = kv_table_new(errbuf, errlen);
    if (s->t == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

static void kv_fini(void *state)
{
    struct kv_state *s = state;
    kv_table_put(s->t);
    free(s);
}

/* The link pointing at `key`'s entry, or at the NULL ending its chain.
 * Call with the lock held. */
static struct kv_entry **kv_find(struct kv_table *t, const uint8_t *key, size_t klen, uint64_t h)
{
    struct kv_entry **pp = &t->buckets[h & (t->nbuckets - 1)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        const struct kv_entry *e = *pp;
        if (e->hash == h && e->klen == klen && memcmp(e->data, key, klen) == 0)
            break;
    }
    return pp;
}

/* Doubles the table; on allocation failure the chains just get longer.
 * Call with the lock held exclusively. */
static void kv_grow(struct kv_table *t)
{
    size_t n = t->nbuckets * 2;
    struct kv_entry **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct kv_entry *e = t->buckets[i], *next; e != NULL; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = n;
}

static int kv_reply(const struct kv_state *s, struct shmipc_response *resp, const char *text)
{
    int rc = s->host->write(resp, text, strlen(text));
    return rc < 0 ? rc : 0;
}

/* head holds the first hn bytes of the request, which starts "SET ". */
static int kv_set(struct kv_state *s, const struct shmipc_request *req, const uint8_t *head,
                  size_t hn, struct shmipc_response *resp)
{
    const uint8_t *sp = memchr(head + 4, ' ', hn - 4);
    if (sp == NULL)
        return kv_reply(s, resp, req->len > 4 + KV_MAX_KEY ? "ERR too big" : "ERR bad command");
    size_t klen = (size_t)(sp - (head + 4));
    if (klen == 0)
        return kv_reply(s, resp, "ERR bad command");
    size_t off = 4 + klen + 1;
    size_t vlen = req->len - off;
    if (vlen > s->max_value)
        return kv_reply(s, resp, "ERR too big");

    struct kv_entry *e = malloc(sizeof(*e) + klen + vlen);
    if (e == NULL)
        return kv_reply(s, resp, "ERR out of memory");
    e->klen = klen;
    e->vlen = vlen;
    e->hash = kv_hash(head + 4, klen);
    memcpy(e->data, head + 4, klen);
    if (vlen > 0 && s->host->copy(req, off, e->data + klen, vlen) != vlen) {
        free(e);
        return -EIO;
    }

    pthread_rwlock_wrlock(&s->t->lock);
    struct kv_entry **pp = kv_find(s->t, e->data, klen, e->hash);
    if (*pp != NULL) {
        struct kv_entry *old = *pp;
        e->next = old->next;
        *pp = e;
        free(old);
    } else if (s->t->count >= s->max_keys) {
        pthread_rwlock_unlock(&s->t->lock);
        free(e);
        return kv_reply(s, resp, "ERR full");
    } else {
        e->next = NULL;
        *pp = e;
        if (++s->t->count > s->t->nbuckets)
            kv_grow(s->t);
    }
    pthread_rwlock_unlock(&s->t->lock);
    return kv_reply(s, resp, "OK");
}

static int kv_get(struct kv_state *s, const uint8_t *key, size_t klen, struct shmipc_response *resp)
{
    uint64_t h = kv_hash(key, klen);
    pthread_rwlock_rdlock(&s->t->lock);
    const struct kv_entry *e = *kv_find(s->t, key, klen, h);
    int rc;
    if (e == NULL) {
        rc = kv_reply(s, resp, "NOT_FOUND");
    } else {
        rc = s->host->write(resp, "VALUE ", 6);
        if (rc >= 0 && e->vlen > 0)
            rc = s->host->write(resp, e->data + e->klen, e->vlen);
        rc = rc < 0 ? rc : 0;
    }
    pthread_rwlock_unlock(&s->t->lock);
    return rc;
}

static int kv_del(struct kv_state *s, const uint8_t *key, size_t klen, struct shmipc_response *resp)
{
    uint64_t h = kv_hash(key, klen);
    pthread_rwlock_wrlock(&s->t->lock);
    struct kv_entry **pp = kv_find(s->t, key, klen, h);
    struct kv_entry *e = *pp;
    if (e != NULL) {
        *pp = e->next;
        s->t->count--;
    }
    pthread_rwlock_unlock(&s->t->lock);
    free(e);
    return kv_reply(s, resp, e != NULL ? "DELETED" : "NOT_FOUND");
}

static int kv_handle(void *state, void *thread_state, const struct shmipc_request *req,
                     struct shmipc_response *resp)
{
    (void)thread_state;
    struct kv_state *s = state;
    /* Enough for the command, the longest key and the space after it. */
    uint8_t head[4 + KV_MAX_KEY + 1];
    size_t hn = req->len < sizeof(head) ? req->len : sizeof(head);
    if (s->host->copy(req, 0, head, hn) != hn)
        return -EIO;

    if (hn == 5 && memcmp(head, "COUNT", 5) == 0) {
        pthread_rwlock_rdlock(&s->t->lock);
        size_t n = s->t->count;
        pthread_rwlock_unlock(&s->t->lock);
        char buf[32];
        snprintf(buf, sizeof(buf), "%zu", n);
        return kv_reply(s, resp, buf);
    }
    if (hn > 4 && memcmp(head, "SET ", 4) == 0)
        return kv_set(s, req, head, hn, resp);
    int get = hn > 4 && memcmp(head, "GET ", 4) == 0;
    int del = hn > 4 && memcmp(head, "DEL ", 4) == 0;
    if (!get && !del)
        return kv_reply(s, resp, "ERR bad command");
    if (req->len - 4 > KV_MAX_KEY)
        return kv_reply(s, resp, "ERR too big");
    size_t klen = hn - 4;
    if (memchr(head + 4, ' ', klen) != NULL)
        return kv_reply(s, resp, "ERR bad command");
    return get ? kv_get(s, head + 4, klen, resp) : kv_del(s, head + 4, klen, resp);
}

/* ---- state across reloads ---- */

static int kv_too_many(const struct kv_state *s, uint64_t n, const char *what, char *errbuf,
                       size_t errlen)
{
    if (n <= s->max_keys)
        return 0;
    snprintf(errbuf, errlen, "kv: %s %llu keys, more than max_keys %zu", what,
             (unsigned long long)n, s->max_keys);
    return -ENOSPC;
}

/* Shares the old generation's table (same layout only). */
static int kv_handoff(void *state, void *old_state, char *errbuf, size_t errlen)
{
    struct kv_state *s = state;
    const struct kv_state *old = old_state;
    if (old->layout != KV_LAYOUT || old->t->layout != KV_LAYOUT)
        return SHMIPC_STATE_DECLINED;
    struct kv_table *t = old->t;
    pthread_rwlock_rdlock(&t->lock);
    size_t n = t->count;
    pthread_rwlock_unlock(&t->lock);
    int rc = kv_too_many(s, n, "the table holds", errbuf, errlen);
    if (rc < 0)
        return rc;
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_ACQ_REL);
    kv_table_put(s->t); /* our own, empty and never served */
    s->t = t;
    return 0;
}

static void kv_put_le(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t kv_get_le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int kv_save(void *state, int (*put)(void *sink, const void *data, size_t n), void *sink,
                   char *errbuf, size_t errlen)
{
    struct kv_table *t = ((struct kv_state *)state)->t;
    uint8_t head[12];
    pthread_rwlock_rdlock(&t->lock);
    size_t count = t->count;
    memcpy(head, KV_SAVE_MAGIC, 4);
    kv_put_le(head + 4, count, 8);
    int rc = put(sink, head, sizeof(head));
    for (size_t i = 0; rc == 0 && i < t->nbuckets; i++) {
        for (const struct kv_entry *e = t->buckets[i]; rc == 0 && e != NULL; e = e->next) {
            kv_put_le(head, e->klen, 4);
            kv_put_le(head + 4, e->vlen, 8);
            rc = put(sink, head, sizeof(head));
            if (rc == 0)
                rc = put(sink, e->data, e->klen + e->vlen);
        }
    }
    pthread_rwlock_unlock(&t->lock);
    if (rc < 0)
        snprintf(errbuf, errlen, "kv: cannot save %zu keys: %s", count, strerror(-rc));
    return rc < 0 ? rc : 0;
}

/* Adds one saved key to a table nobody else uses yet. */
static int kv_restore_one(struct kv_table *t, const uint8_t *key, size_t klen, size_t vlen)
{
    struct kv_entry *e = malloc(sizeof(*e) + klen + vlen);
    if (e == NULL)
        return -ENOMEM;
    e->klen = klen;
    e->vlen = vlen;
    e->hash = kv_hash(key, klen);
    memcpy(e->data, key, klen + vlen); /* the value follows the key there too */
    struct kv_entry **pp = kv_find(t, key, klen, e->hash);
    if (*pp != NULL) {
        free(e);
        return -EINVAL;
    }
    e->next = NULL;
    *pp = e;
    if (++t->count > t->nbuckets)
        kv_grow(t);
    return 0;
}

static int kv_restore(void *state, const void *data, size_t len, char *errbuf, size_t errlen)
{
    struct kv_state *s = state;
    const uint8_t *p = data, *end = p + len;
    if (len < 12 || memcmp(p, KV_SAVE_MAGIC, 4) != 0) {
        snprintf(errbuf, errlen, "kv: not a saved kv state (%zu bytes)", len);
        return -EINVAL;
    }
    uint64_t n = kv_get_le(p + 4, 8);
    int rc = kv_too_many(s, n, "the saved state has", errbuf, errlen);
    p += 12;
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        size_t left = (size_t)(end - p);
        uint64_t klen = left >= 12 ? kv_get_le(p, 4) : 0;
        uint64_t vlen = left >= 12 ? kv_get_le(p + 4, 8) : 0;
        if (klen == 0 || klen > KV_MAX_KEY || klen > left - 12 || vlen > left - 12 - klen) {
            snprintf(errbuf, errlen, "kv: the saved state is cut or damaged at key %llu of %llu",
                     (unsigned long long)i + 1, (unsigned long long)n);
            return -EINVAL;
        }
        rc = kv_restore_one(s->t, p + 12, (size_t)klen, (size_t)vlen);
        if (rc < 0)
            snprintf(errbuf, errlen, "kv: %s at saved key %llu",
                     rc == -ENOMEM ? "out of memory" : "a key saved twice",
                     (unsigned long long)i + 1);
        p += 12 + klen + vlen;
    }
    if (rc == 0 && p != end) {
        snprintf(errbuf, errlen, "kv: %zu bytes after the saved state's last key",
                 (size_t)(end - p));
        rc = -EINVAL;
    }
    return rc;
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("kv", "1.0.0"),
    .init = kv_init,
    .fini = kv_fini,
    .handle = kv_handle,
    .handoff = kv_handoff,
    .save = kv_save,
    .restore = kv_restore,
};
