/*
 * Pool references, the pool registry beside them, and the held bits of
 * received slices (see pool_ref.h). The one rule: a registered pool's
 * count reaches zero only under the registry lock, so pool_registry_find
 * never revives a pool that is being freed.
 */
#include "session/pool_ref.h"

#include <errno.h>
#include <stdlib.h>

#include "shmipc/errors.h"

void pool_registry_init(struct pool_registry *r)
{
    pthread_mutex_init(&r->mu, NULL);
    r->head = NULL;
    r->count = 0;
}

struct pool_ref *pool_registry_find(struct pool_registry *r, dev_t dev, ino_t ino)
{
    pthread_mutex_lock(&r->mu);
    struct pool_ref *p = r->head;
    while (p != NULL && !(p->region.dev == dev && p->region.ino == ino))
        p = p->next;
    if (p != NULL)
        __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&r->mu);
    return p;
}

int pool_ref_new(struct region *rg, int creator, const struct pool_class *classes, unsigned n,
                 struct pool_registry *reg, struct pool_ref **out)
{
    struct pool_ref *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        region_close(rg);
        return -ENOMEM;
    }
    p->region = *rg;
    region_init(rg);
    int rc = creator ? pool_create(&p->pool, p->region.base, p->region.size, classes, n)
                     : pool_map(&p->pool, p->region.base, p->region.size);
    if (rc == 0 && (p->held = calloc((p->pool.total_slices + 63) / 64, sizeof(uint64_t))) == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        pool_cache_enable(&p->pool);
    if (rc < 0) {
        region_close(&p->region);
        free(p);
        return rc;
    }
    p->refs = 1;
    if (reg != NULL) {
        p->reg = reg;
        pthread_mutex_lock(&reg->mu);
        p->next = reg->head;
        reg->head = p;
        reg->count++;
        pthread_mutex_unlock(&reg->mu);
    }
    *out = p;
    return 0;
}

void pool_ref_get(struct pool_ref *p)
{
    __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
}

void pool_ref_put(struct pool_ref *p)
{
    struct pool_registry *reg = p->reg;
    if (reg != NULL) {
        /* Under the registry lock so a lookup never revives a dying pool. */
        pthread_mutex_lock(&reg->mu);
        if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) != 0) {
            pthread_mutex_unlock(&reg->mu);
            return;
        }
        struct pool_ref **pp = &reg->head;
        while (*pp != p)
            pp = &(*pp)->next;
        *pp = p->next;
        reg->count--;
        pthread_mutex_unlock(&reg->mu);
    } else if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    pool_cache_flush(&p->pool);
    region_close(&p->region);
    free(p->held);
    free(p);
}

/* Marks a received slice held; SHMIPC_ESLICEHELD if it already was. */
int slice_hold(struct pool_ref *p, uint32_t off)
{
    int i = pool_slice_index(&p->pool, off);
    if (i < 0)
        return i;
    uint64_t bit = 1ull << (i % 64);
    uint64_t old = __atomic_fetch_or(&p->held[i / 64], bit, __ATOMIC_RELAXED);
    return old & bit ? SHMIPC_ESLICEHELD : 0;
}

void slice_unhold(struct pool_ref *p, uint32_t off)
{
    int i = pool_slice_index(&p->pool, off);
    if (i >= 0)
        __atomic_fetch_and(&p->held[i / 64], ~(1ull << (i % 64)), __ATOMIC_RELAXED);
}
