/*
 * Pool references and the pool registry: a mapped pool shared by the
 * sessions that use it, freed with its last reference, and the held bits
 * that catch a peer publishing a slice we still read. The one rule: a
 * registered pool's count drops to zero only under the registry lock, so
 * a lookup never revives a pool that is being freed.
 */
#ifndef SHMIPC_SESSION_POOL_REF_H
#define SHMIPC_SESSION_POOL_REF_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "shm/pool.h"
#include "shm/region.h"

/* A mapped pool, shared by the sessions of one client. */
struct pool_ref {
    struct region region;
    struct pool pool;
    uint64_t *held; /* one bit per slice: in a received message not yet
                       released (a peer that publishes it again is caught) */
    int refs; /* atomic */
    struct pool_registry *reg; /* NULL when not in a registry */
    struct pool_ref *next;     /* registry chain */
};

/* A server's pools, keyed by file identity (st_dev, st_ino). */
struct pool_registry {
    pthread_mutex_t mu;
    struct pool_ref *head;
    unsigned count;
};

void pool_registry_init(struct pool_registry *r);
/* A registered pool with that identity, with a new reference, or NULL. */
struct pool_ref *pool_registry_find(struct pool_registry *r, dev_t dev, ino_t ino);
/* Wraps a mapped region (taken over) in a pool_ref; registers it if reg. */
int pool_ref_new(struct region *rg, int creator, const struct pool_class *classes, unsigned n,
                 struct pool_registry *reg, struct pool_ref **out);
void pool_ref_get(struct pool_ref *p);
void pool_ref_put(struct pool_ref *p);

/* Marks a received slice held; SHMIPC_ESLICEHELD if it already was (the
 * peer published again what a message of ours still holds). */
int slice_hold(struct pool_ref *p, uint32_t off);
void slice_unhold(struct pool_ref *p, uint32_t off);

#endif
