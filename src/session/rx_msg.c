/*
 * The received message (see rx_msg.h): its allocation, the per-thread
 * cache that recycles it, its free, and the public shmipc_msg calls on it.
 * The one rule: a pool message holds held marks on its slices and a
 * reference on the pool until rx_msg_free() (or rx_msg_unhold() plus
 * rx_msg_drop() when its slices go on elsewhere); nothing else frees one.
 */
#include "session/rx_msg.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Received messages come and go at the message rate: each thread keeps
 * the ones it freed (up to RX_CACHE_MAX) for the next ones it receives,
 * which also spares the allocator a burst of frees after a batch. The
 * cache is freed when its thread ends. */
#define RX_CACHE_MAX 256

struct rx_cache {
    struct rx_msg *head;
    unsigned n;
};

static __thread struct rx_cache rx_cache;
static pthread_key_t rx_cache_key;
static pthread_once_t rx_cache_once = PTHREAD_ONCE_INIT;

static void rx_cache_drop(void *arg)
{
    struct rx_cache *c = arg;
    while (c->head != NULL) {
        struct rx_msg *m = c->head;
        c->head = m->next;
        free(m);
    }
    c->n = 0;
}

static void rx_cache_key_init(void)
{
    pthread_key_create(&rx_cache_key, rx_cache_drop);
}

struct rx_msg *rx_msg_new(void)
{
    struct rx_msg *m = rx_cache.head;
    if (m == NULL)
        return calloc(1, sizeof(*m));
    rx_cache.head = m->next;
    rx_cache.n--;
    memset(m, 0, sizeof(*m));
    return m;
}

static void rx_msg_recycle(struct rx_msg *m)
{
    if (rx_cache.n >= RX_CACHE_MAX) {
        free(m);
        return;
    }
    if (rx_cache.n == 0 && rx_cache.head == NULL) {
        /* First use in this thread: have the cache freed at its end. */
        pthread_once(&rx_cache_once, rx_cache_key_init);
        pthread_setspecific(rx_cache_key, &rx_cache);
    }
    m->next = rx_cache.head;
    rx_cache.head = m;
    rx_cache.n++;
}

void rx_msg_unhold(struct rx_msg *m)
{
    for (uint32_t i = 0; m->pool != NULL && i < m->nseg; i++)
        slice_unhold(m->pool, m->offs[i]);
}

void rx_msg_free(struct rx_msg *m)
{
    if (m->pool != NULL) {
        rx_msg_unhold(m);
        pool_give_many(&m->pool->pool, m->offs, m->nseg);
        pool_ref_put(m->pool);
    }
    rx_msg_drop(m);
}

void rx_msg_drop(struct rx_msg *m)
{
    if (m->iov != m->iov_inline)
        free(m->iov);
    if (m->offs != m->offs_inline)
        free(m->offs);
    free(m->heap);
    rx_msg_recycle(m);
}

size_t rx_msg_heap_cost(const struct rx_msg *m)
{
    /* Pool messages cost the peer's pool, which bounds them; a fallback
     * message is a heap copy. */
    return m->pool == NULL ? sizeof(*m) + m->len : 0;
}

size_t shmipc_msg_copy(const shmipc_msg *m, size_t off, void *dst, size_t n)
{
    uint8_t *d = dst;
    size_t done = 0;
    for (unsigned i = 0; i < m->niov && done < n; i++) {
        size_t len = m->iov[i].len;
        if (off >= len) {
            off -= len;
            continue;
        }
        size_t k = len - off < n - done ? len - off : n - done;
        memcpy(d + done, m->iov[i].base + off, k);
        done += k;
        off = 0;
    }
    return done;
}

void shmipc_msg_release(shmipc_msg *m)
{
    if (m == NULL || m->priv_ == NULL)
        return;
    rx_msg_free(m->priv_);
    memset(m, 0, sizeof(*m));
}
