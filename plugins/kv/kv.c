/*
 * kv: a small in-memory key-value store, shared by every worker thread.
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

struct kv_state {
    const struct shmipc_host_api *host;
    size_t max_keys;
    size_t max_value;
    pthread_rwlock_t lock;
    struct kv_entry **buckets; /* nbuckets, a power of two */
    size_t nbuckets;
    size_t count;
};

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

static void *kv_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                     char *errbuf, size_t errlen)
{
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
    s->host = host;
    s->max_keys = (size_t)max_keys;
    s->max_value = (size_t)max_value;
    s->nbuckets = KV_INITIAL_BUCKETS;
    s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
    int rc = s->buckets == NULL ? ENOMEM : pthread_rwlock_init(&s->lock, NULL);
    if (rc != 0) {
        snprintf(errbuf, errlen, "kv: cannot set up the table: %s", strerror(rc));
        free(s->buckets);
        free(s);
        return NULL;
    }
    return s;
}

static void kv_fini(void *state)
{
    struct kv_state *s = state;
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (struct kv_entry *e = s->buckets[i], *n; e != NULL; e = n) {
            n = e->next;
            free(e);
        }
    }
    free(s->buckets);
    pthread_rwlock_destroy(&s->lock);
    free(s);
}

/* The link pointing at `key`'s entry, or at the NULL ending its chain.
 * Call with the lock held. */
static struct kv_entry **kv_find(struct kv_state *s, const uint8_t *key, size_t klen, uint64_t h)
{
    struct kv_entry **pp = &s->buckets[h & (s->nbuckets - 1)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        const struct kv_entry *e = *pp;
        if (e->hash == h && e->klen == klen && memcmp(e->data, key, klen) == 0)
            break;
    }
    return pp;
}

/* Doubles the table; on allocation failure the chains just get longer.
 * Call with the lock held exclusively. */
static void kv_grow(struct kv_state *s)
{
    size_t n = s->nbuckets * 2;
    struct kv_entry **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (struct kv_entry *e = s->buckets[i], *next; e != NULL; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
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

    pthread_rwlock_wrlock(&s->lock);
    struct kv_entry **pp = kv_find(s, e->data, klen, e->hash);
    if (*pp != NULL) {
        struct kv_entry *old = *pp;
        e->next = old->next;
        *pp = e;
        free(old);
    } else if (s->count >= s->max_keys) {
        pthread_rwlock_unlock(&s->lock);
        free(e);
        return kv_reply(s, resp, "ERR full");
    } else {
        e->next = NULL;
        *pp = e;
        if (++s->count > s->nbuckets)
            kv_grow(s);
    }
    pthread_rwlock_unlock(&s->lock);
    return kv_reply(s, resp, "OK");
}

static int kv_get(struct kv_state *s, const uint8_t *key, size_t klen, struct shmipc_response *resp)
{
    uint64_t h = kv_hash(key, klen);
    pthread_rwlock_rdlock(&s->lock);
    const struct kv_entry *e = *kv_find(s, key, klen, h);
    int rc;
    if (e == NULL) {
        rc = kv_reply(s, resp, "NOT_FOUND");
    } else {
        rc = s->host->write(resp, "VALUE ", 6);
        if (rc >= 0 && e->vlen > 0)
            rc = s->host->write(resp, e->data + e->klen, e->vlen);
        rc = rc < 0 ? rc : 0;
    }
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

static int kv_del(struct kv_state *s, const uint8_t *key, size_t klen, struct shmipc_response *resp)
{
    uint64_t h = kv_hash(key, klen);
    pthread_rwlock_wrlock(&s->lock);
    struct kv_entry **pp = kv_find(s, key, klen, h);
    struct kv_entry *e = *pp;
    if (e != NULL) {
        *pp = e->next;
        s->count--;
    }
    pthread_rwlock_unlock(&s->lock);
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
        pthread_rwlock_rdlock(&s->lock);
        size_t n = s->count;
        pthread_rwlock_unlock(&s->lock);
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

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("kv", "1.0.0"),
    .init = kv_init,
    .fini = kv_fini,
    .handle = kv_handle,
};
