/*
 * Buffer pool: creation rules, the never-the-last-slice pop, double frees,
 * the allocation policy, the writer, and every way a peer-written mapping
 * or chain can lie (each refused with a code, never a crash).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shm/pool.h"
#include "shmipc/errors.h"
#include "testutil.h"

#define SMALL_SIZE (1u << 20)
static const struct pool_class small_classes[2] = {{4096, 70}, {16384, 30}};

static uint8_t *mem_new(size_t size)
{
    uint8_t *m = aligned_alloc(4096, (size + 4095) / 4096 * 4096);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    memset(m, 0, size);
    return m;
}

static uint8_t *small_pool(struct pool *p)
{
    uint8_t *m = mem_new(SMALL_SIZE);
    CU_ASSERT_FATAL(pool_create(p, m, SMALL_SIZE, small_classes, 2) == 0);
    return m;
}

static void test_create_rejects(void)
{
    struct pool p;
    uint8_t *m = mem_new(SMALL_SIZE);
    const struct pool_class zero_cap[1] = {{0, 50}};
    const struct pool_class zero_pct[1] = {{4096, 0}};
    const struct pool_class over[2] = {{4096, 60}, {8192, 41}};
    const struct pool_class huge_cap[1] = {{0xfffffff0u, 100}};
    struct pool_class many[POOL_MAX_LISTS + 1];
    for (unsigned i = 0; i < POOL_MAX_LISTS + 1; i++)
        many[i] = (struct pool_class){64, 1};
    CU_ASSERT_EQUAL(pool_create(&p, m, SMALL_SIZE, zero_cap, 1), -EINVAL);
    CU_ASSERT_EQUAL(pool_create(&p, m, SMALL_SIZE, zero_pct, 1), -EINVAL);
    CU_ASSERT_EQUAL(pool_create(&p, m, SMALL_SIZE, over, 2), -EINVAL);
    CU_ASSERT_EQUAL(pool_create(&p, m, SMALL_SIZE, huge_cap, 1), -EINVAL);
    CU_ASSERT_EQUAL(pool_create(&p, m, SMALL_SIZE, many, POOL_MAX_LISTS + 1), -EINVAL);
    CU_ASSERT_EQUAL(pool_create(&p, m, SMALL_SIZE, small_classes, 0), -EINVAL);
    /* Too small for even one slice of the big class. */
    CU_ASSERT_EQUAL(pool_create(&p, m, 20000, small_classes, 2), -EINVAL);
    CU_ASSERT_EQUAL(pool_create(&p, m, (size_t)POOL_MAX_SIZE + 1, small_classes, 2), -EINVAL);
    CU_ASSERT_EQUAL(pool_create(&p, m, SMALL_SIZE, small_classes, 2), 0);
    free(m);
}

static void test_never_last_slice(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    uint32_t n = p.lists[1].nslices, off;
    CU_ASSERT_EQUAL_FATAL(n, 19);
    for (uint32_t i = 0; i + 1 < n; i++)
        CU_ASSERT_EQUAL_FATAL(pool_pop(&p, 1, &off), 0);
    CU_ASSERT_EQUAL(pool_pop(&p, 1, &off), SHMIPC_ENOBUFS);
    CU_ASSERT_EQUAL(pool_free_count(&p, 1), 1);
    CU_ASSERT_EQUAL(pool_outstanding(&p), (int64_t)n - 1);
    CU_ASSERT_EQUAL(pool_pop(&p, 2, &off), -EINVAL);
    free(m);
}

static void test_push_checks(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    uint32_t a, b;
    CU_ASSERT_FATAL(pool_pop(&p, 0, &a) == 0);
    CU_ASSERT_FATAL(pool_pop(&p, 0, &b) == 0);
    CU_ASSERT_EQUAL(pool_push(&p, a), 0);
    CU_ASSERT_EQUAL(pool_push(&p, a), SHMIPC_EBADSLICE); /* double free */
    CU_ASSERT_EQUAL(pool_push(&p, b + 1), SHMIPC_EBADOFFSET);
    CU_ASSERT_EQUAL(pool_push(&p, 0), SHMIPC_EBADOFFSET);
    CU_ASSERT_EQUAL(pool_push(&p, 8), SHMIPC_EBADOFFSET); /* a list header */
    CU_ASSERT_EQUAL(pool_push(&p, p.end), SHMIPC_EBADOFFSET);
    CU_ASSERT_EQUAL(pool_push(&p, 0xfffffff0u), SHMIPC_EBADOFFSET);
    CU_ASSERT_EQUAL(pool_push(&p, b), 0);
    /* FIFO: the freed slices went to the tail, the head moved on. */
    CU_ASSERT_EQUAL(p.lists[0].hdr->tail, b - p.lists[0].region_off);
    CU_ASSERT_EQUAL(pool_free_count(&p, 0), (int32_t)p.lists[0].nslices);
    CU_ASSERT_EQUAL(pool_outstanding(&p), 0);
    free(m);
}

static void test_alloc_policy(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    struct pool_chain c;
    /* Smallest class that fits. */
    CU_ASSERT_FATAL(pool_alloc(&p, 100, &c) == 0);
    CU_ASSERT(c.nslices == 1 && pool_list_of(&p, c.head) == 0 && c.cap == 4096);
    CU_ASSERT_FATAL(pool_alloc(&p, 4097, &c) == 0);
    CU_ASSERT(c.nslices == 1 && pool_list_of(&p, c.head) == 1);
    /* Larger than any slice: a chain from the largest class down. */
    CU_ASSERT_FATAL(pool_alloc(&p, 40000, &c) == 0);
    CU_ASSERT_EQUAL(c.nslices, 3);
    CU_ASSERT_EQUAL(c.cap, 3 * 16384);
    uint64_t bytes;
    uint32_t ns;
    CU_ASSERT_EQUAL(pool_chain_check(&p, c.head, &bytes, &ns), 0);
    CU_ASSERT_EQUAL(ns, 3);
    CU_ASSERT_EQUAL(pool_free_chain(&p, c.head), 3);
    /* Exhaust the small class: a small request moves to the next class. */
    uint32_t off;
    while (pool_pop(&p, 0, &off) == 0)
        ;
    CU_ASSERT_FATAL(pool_alloc(&p, 10, &c) == 0);
    CU_ASSERT_EQUAL(pool_list_of(&p, c.head), 1);
    /* Exhaust the big class too: a big request chains what is left. */
    int32_t big_free = pool_free_count(&p, 1);
    CU_ASSERT_EQUAL(pool_alloc(&p, 0x7fffffff, &c), SHMIPC_ENOBUFS);
    CU_ASSERT_EQUAL(pool_free_count(&p, 1), big_free); /* all or nothing */
    free(m);
}

static void test_alloc_chain_crosses_classes(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    uint32_t off;
    while (pool_pop(&p, 1, &off) == 0)
        ;
    struct pool_chain c;
    CU_ASSERT_FATAL(pool_alloc(&p, 20000, &c) == 0);
    CU_ASSERT_EQUAL(c.nslices, 5); /* 5 x 4096 from the small class */
    CU_ASSERT_EQUAL(pool_chain_check(&p, c.head, NULL, NULL), 0);
    int64_t before = pool_outstanding(&p);
    CU_ASSERT_EQUAL(pool_free_chain(&p, c.head), 5);
    CU_ASSERT_EQUAL(pool_outstanding(&p), before - 5);
    free(m);
}

static void test_writer(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    struct pool_writer w;
    uint8_t data[10000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7);
    pool_writer_init(&w, &p);
    uint32_t first;
    CU_ASSERT_EQUAL(pool_writer_finish(&w, &first), SHMIPC_EBADSLICE); /* empty */
    void *r;
    CU_ASSERT_EQUAL(pool_writer_reserve(&w, 16385, &r), -EMSGSIZE);
    CU_ASSERT_EQUAL(pool_writer_reserve(&w, 0, &r), -EMSGSIZE);
    CU_ASSERT_FATAL(pool_writer_reserve(&w, 100, &r) == 0);
    memset(r, 0xab, 100);
    CU_ASSERT_FATAL(pool_writer_write(&w, data, sizeof(data)) == 0);
    CU_ASSERT_FATAL(pool_writer_reserve(&w, 4000, &r) == 0); /* needs a fresh slice */
    memset(r, 0xcd, 4000);
    CU_ASSERT_FATAL(pool_writer_finish(&w, &first) == 0);
    struct pool_walk wk;
    struct pool_seg seg;
    uint8_t out[14100];
    size_t pos = 0;
    int rc;
    pool_walk_init(&wk, &p, first);
    while ((rc = pool_walk_next(&wk, &seg)) > 0) {
        CU_ASSERT_FATAL(pos + seg.len <= sizeof(out));
        memcpy(out + pos, seg.data, seg.len);
        pos += seg.len;
    }
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(pos, sizeof(out));
    CU_ASSERT(out[0] == 0xab && out[99] == 0xab);
    CU_ASSERT(memcmp(out + 100, data, sizeof(data)) == 0);
    CU_ASSERT(out[10100] == 0xcd && out[14099] == 0xcd);
    CU_ASSERT(pool_free_chain(&p, first) > 0);
    CU_ASSERT_EQUAL(pool_outstanding(&p), 0);

    pool_writer_init(&w, &p);
    CU_ASSERT_FATAL(pool_writer_write(&w, data, sizeof(data)) == 0);
    pool_writer_abort(&w);
    CU_ASSERT_EQUAL(pool_outstanding(&p), 0);
    free(m);
}

/* ---- hostile mappings ---- */

static void expect_map_refused(uint8_t *m, size_t size, const char *what)
{
    struct pool p;
    int rc = pool_map(&p, m, size);
    if (rc != SHMIPC_EBADPOOL)
        fprintf(stderr, "\n  %s: pool_map returned %d\n", what, rc);
    CU_ASSERT_EQUAL(rc, SHMIPC_EBADPOOL);
}

static void test_map_rejects_lying_headers(void)
{
    struct pool good;
    uint8_t *m = small_pool(&good);
    struct shmipc_pool_header *ph = (void *)m;
    struct shmipc_list_header *l0 = good.lists[0].hdr, *l1 = good.lists[1].hdr;
    struct pool p;
    CU_ASSERT_EQUAL_FATAL(pool_map(&p, m, SMALL_SIZE), 0);
    CU_ASSERT_EQUAL(p.total_slices, 178 + 19);

    ph->nlists = 0;
    expect_map_refused(m, SMALL_SIZE, "nlists 0");
    ph->nlists = POOL_MAX_LISTS + 1;
    expect_map_refused(m, SMALL_SIZE, "nlists 17");
    ph->nlists = 3; /* a third list header would lie beyond `used` */
    expect_map_refused(m, SMALL_SIZE, "nlists 3");
    ph->nlists = 2;
    uint32_t used = ph->used;
    ph->used = SMALL_SIZE; /* beyond the mapping */
    expect_map_refused(m, SMALL_SIZE, "used > size");
    ph->used = used - 1; /* lists no longer add up */
    expect_map_refused(m, SMALL_SIZE, "used short");
    ph->used = used;
    l0->nslices = 0;
    expect_map_refused(m, SMALL_SIZE, "0 slices");
    l0->nslices = 0xffffffffu; /* count * stride overflows 32 bits */
    expect_map_refused(m, SMALL_SIZE, "count overflow");
    l0->nslices = 178;
    l1->slice_cap = 0;
    expect_map_refused(m, SMALL_SIZE, "slice cap 0");
    l1->slice_cap = 0xfffffff0u;
    expect_map_refused(m, SMALL_SIZE, "slice cap huge");
    l1->slice_cap = 16384;
    expect_map_refused(m, 4, "mapping smaller than a header");
    expect_map_refused(m, SMALL_SIZE / 2, "mapping shorter than used");
    CU_ASSERT_EQUAL(pool_map(&p, m, SMALL_SIZE), 0);
    free(m);
}

static void test_pop_push_on_corrupt_lists(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    struct shmipc_list_header *l0 = p.lists[0].hdr;
    uint32_t off;
    uint32_t head = l0->head;
    l0->head = 5; /* not a slice start */
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), SHMIPC_ECORRUPT);
    CU_ASSERT_EQUAL(pool_free_count(&p, 0), 178); /* the count was restored */
    l0->head = 178 * 4116; /* one past the region */
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), SHMIPC_ECORRUPT);
    l0->head = head;
    struct shmipc_slice_header *s0 = (void *)p.lists[0].region;
    s0->next = 0xffff0000u; /* the head's free-list link */
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), SHMIPC_ECORRUPT);
    s0->next = 4116;
    CU_ASSERT_EQUAL_FATAL(pool_pop(&p, 0, &off), 0);
    uint32_t tail = l0->tail;
    l0->tail = 3;
    CU_ASSERT_EQUAL(pool_push(&p, off), SHMIPC_ECORRUPT);
    l0->tail = tail;
    /* A slice whose IN_USE flag the peer cleared is not pushed. */
    CU_ASSERT_FATAL(pool_pop(&p, 0, &off) == 0);
    pool_slice(&p, off)->flags = 0;
    CU_ASSERT_EQUAL(pool_push(&p, off), SHMIPC_EBADSLICE);
    free(m);
}

/* Builds a 3-slice chain for the hostile-chain cases. */
static uint32_t make_chain(struct pool *p, uint32_t offs[3])
{
    struct pool_chain c;
    CU_ASSERT_FATAL(pool_alloc(p, 40000, &c) == 0);
    CU_ASSERT_EQUAL_FATAL(c.nslices, 3);
    uint32_t o = c.head;
    for (int i = 0; i < 3; i++) {
        offs[i] = o;
        pool_slice(p, o)->size = 100;
        o = pool_slice(p, o)->next;
    }
    pool_slice(p, offs[2])->flags = SHMIPC_SLICE_IN_USE;
    return c.head;
}

static void test_chain_rejects(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    uint32_t o[3];
    uint32_t first = make_chain(&p, o);
    uint64_t bytes;
    CU_ASSERT_EQUAL_FATAL(pool_chain_check(&p, first, &bytes, NULL), 0);
    CU_ASSERT_EQUAL(bytes, 300);
    struct shmipc_slice_header *s1 = pool_slice(&p, o[1]);

    CU_ASSERT_EQUAL(pool_chain_check(&p, 0xfffffff0u, NULL, NULL), SHMIPC_EBADOFFSET);
    CU_ASSERT_EQUAL(pool_chain_check(&p, first + 4, NULL, NULL), SHMIPC_EBADOFFSET);
    CU_ASSERT_EQUAL(pool_chain_check(&p, 0, NULL, NULL), SHMIPC_EBADOFFSET);

    s1->size = 16385; /* size beyond capacity */
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), SHMIPC_EBADSLICE);
    s1->size = 100;
    s1->start = 16300; /* start + size beyond capacity */
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), SHMIPC_EBADSLICE);
    s1->start = 0xffffffffu; /* start + size wraps */
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), SHMIPC_EBADSLICE);
    s1->start = 0;
    s1->cap = 1u << 30; /* the header lies about its capacity */
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), SHMIPC_EBADSLICE);
    s1->cap = 16384;
    /* IN_USE clear: a reused read slice (its header zeroed, then written
     * again) is accepted, and the walk says so. */
    s1->flags = SHMIPC_SLICE_HAS_NEXT;
    struct pool_walk w;
    struct pool_seg seg;
    pool_walk_init(&w, &p, first);
    CU_ASSERT_EQUAL(pool_walk_next(&w, &seg), 1);
    CU_ASSERT_EQUAL(seg.reused, 0);
    CU_ASSERT_EQUAL(pool_walk_next(&w, &seg), 1);
    CU_ASSERT_EQUAL(seg.off, o[1]);
    CU_ASSERT_EQUAL(seg.reused, 1);
    CU_ASSERT_EQUAL(seg.len, 100);
    CU_ASSERT_EQUAL(pool_walk_next(&w, &seg), 1);
    CU_ASSERT_EQUAL(pool_walk_next(&w, &seg), 0);
    s1->flags = SHMIPC_SLICE_HAS_NEXT | SHMIPC_SLICE_IN_USE;
    /* A free list's tail is free for certain: refused without IN_USE. */
    struct pool_list *l2 = &p.lists[pool_list_of(&p, o[2])];
    uint32_t tail = l2->hdr->tail;
    l2->hdr->tail = o[2] - l2->region_off;
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), 0);
    pool_slice(&p, o[2])->flags = 0;
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), SHMIPC_EBADSLICE);
    l2->hdr->tail = tail;
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), 0);
    pool_slice(&p, o[2])->flags = SHMIPC_SLICE_IN_USE;
    s1->next = p.end + 20; /* out of range */
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), SHMIPC_EBADOFFSET);
    s1->next = first; /* a loop back to the first slice */
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), SHMIPC_ECHAINLOOP);
    s1->next = o[1]; /* a self loop */
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, NULL, NULL), SHMIPC_ECHAINLOOP);
    s1->next = o[2];
    CU_ASSERT_EQUAL(pool_chain_check(&p, first, &bytes, NULL), 0);

    /* Freeing a chain with a bad link frees what comes before it. */
    s1->next = 12345;
    int64_t before = pool_outstanding(&p);
    CU_ASSERT_EQUAL(pool_free_chain(&p, first), SHMIPC_EBADOFFSET);
    CU_ASSERT_EQUAL(pool_outstanding(&p), before - 2);
    free(m);
}

/* A pop lock another process keeps (it died, or lies): each pop waits a
 * bounded time and refuses, counted; the same value held for a second is
 * taken over, and the lock is free again after our pop. */
/* The peers' read-slice reuse: the receiver's slice, header zeroed and
 * written again, comes back as the head of the next message. The walk
 * takes it, and freeing the chain puts every slice back exactly once. */
static void test_reused_slice_freed(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    int32_t free0 = pool_free_count(&p, 0), free1 = pool_free_count(&p, 1);
    uint32_t o[3];
    uint32_t first = make_chain(&p, o);
    for (int round = 0; round < 1000; round++) {
        struct shmipc_slice_header *h = pool_slice(&p, first);
        uint32_t next = h->next;
        memset(h, 0, SHMIPC_SLICE_HEADER_LEN); /* the peer's reset */
        h->cap = p.lists[pool_list_of(&p, first)].slice_cap;
        h->size = 64;
        h->next = next;
        h->flags = SHMIPC_SLICE_HAS_NEXT; /* linked, never IN_USE again */
        uint64_t bytes;
        uint32_t n;
        CU_ASSERT_EQUAL_FATAL(pool_chain_check(&p, first, &bytes, &n), 0);
        CU_ASSERT_EQUAL(bytes, 264);
        CU_ASSERT_EQUAL(n, 3);
    }
    CU_ASSERT_EQUAL(pool_free_chain(&p, first), 3);
    CU_ASSERT_EQUAL(pool_outstanding(&p), 0);
    CU_ASSERT_EQUAL(pool_free_count(&p, 0), free0);
    CU_ASSERT_EQUAL(pool_free_count(&p, 1), free1);
    /* Pushed again, as a second free would: IN_USE is ours now and clear. */
    CU_ASSERT_EQUAL(pool_push(&p, first), SHMIPC_EBADSLICE);
    CU_ASSERT_EQUAL(pool_free_count(&p, 1), free1);
    free(m);
}

static void test_pop_lock_held(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    struct pool_list *l = &p.lists[0];
    uint32_t off;
    l->hdr->pop_lock = 0xdead;
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), SHMIPC_ENOBUFS);
    CU_ASSERT_EQUAL(l->lock_busy, 1);
    CU_ASSERT_EQUAL(l->hdr->pop_lock, 0xdead);
    CU_ASSERT_EQUAL(pool_outstanding(&p), 0);
    /* Other lists are not affected. */
    CU_ASSERT_EQUAL(pool_pop(&p, 1, &off), 0);
    CU_ASSERT_EQUAL(pool_push(&p, off), 0);
    /* Still the same value, but not for a second yet: refused again. */
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), SHMIPC_ENOBUFS);
    CU_ASSERT_EQUAL(l->lock_stolen, 0);
    /* A second later (moved back rather than waited for). */
    l->lock_seen_ns -= 2000000000ull;
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), 0);
    CU_ASSERT_EQUAL(l->lock_stolen, 1);
    CU_ASSERT_EQUAL(l->hdr->pop_lock, 0);
    CU_ASSERT_EQUAL(pool_push(&p, off), 0);
    /* A holder that changes the value is never taken over. */
    l->hdr->pop_lock = 0xbeef;
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), SHMIPC_ENOBUFS);
    l->lock_seen_ns -= 2000000000ull;
    l->hdr->pop_lock = 0xbee0;
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), SHMIPC_ENOBUFS);
    CU_ASSERT_EQUAL(l->lock_stolen, 1);
    l->hdr->pop_lock = 0;
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), 0);
    CU_ASSERT_EQUAL(pool_push(&p, off), 0);
    free(m);
}

/* Head without a link while the count says more are free: a push that
 * moved the tail and has not linked it yet. The pop waits (bounded) for
 * the link, refuses if it does not come, and takes the slice once it has. */
static void test_pop_waits_for_link(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    struct pool_list *l = &p.lists[0];
    struct shmipc_slice_header *head = (void *)(l->region + l->hdr->head);
    uint32_t off, head_off = l->region_off + l->hdr->head;
    head->flags &= (uint8_t)~SHMIPC_SLICE_HAS_NEXT;
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), SHMIPC_ENOBUFS);
    CU_ASSERT_EQUAL(l->link_busy, 1);
    CU_ASSERT_EQUAL(l->hdr->free_count, (int32_t)l->nslices);
    head->flags |= SHMIPC_SLICE_HAS_NEXT;
    CU_ASSERT_EQUAL(pool_pop(&p, 0, &off), 0);
    CU_ASSERT_EQUAL(off, head_off);
    CU_ASSERT_EQUAL(pool_push(&p, off), 0);
    free(m);
}

/* The slice cache: a freed slice comes back first (LIFO, still warm),
 * never more than an eighth of a list is kept, a double give is refused,
 * and a flush leaves every list whole again. */
static void test_cache(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    pool_cache_enable(&p);
    struct pool_list *l = &p.lists[0];
    uint32_t cap = l->nslices / 8 < POOL_CACHE_MAX ? l->nslices / 8 : POOL_CACHE_MAX;
    CU_ASSERT_EQUAL(l->cache_cap, cap);
    CU_ASSERT_FATAL(cap >= 2);
    struct pool_chain c[POOL_CACHE_MAX + 4];
    unsigned n = cap + 4;
    for (unsigned i = 0; i < n; i++)
        CU_ASSERT_FATAL(pool_alloc(&p, 100, &c[i]) == 0);
    int32_t free_before = l->hdr->free_count;
    for (unsigned i = 0; i < n; i++)
        CU_ASSERT_EQUAL(pool_give(&p, c[i].head), 0);
    CU_ASSERT_EQUAL(pool_cached(&p), cap);
    /* What did not fit went back to the shared list. */
    CU_ASSERT_EQUAL(l->hdr->free_count, free_before + (int32_t)(n - cap));
    CU_ASSERT_EQUAL(pool_give(&p, c[n - 1].head), SHMIPC_EBADSLICE);
    /* Last kept, first taken. */
    struct pool_chain again;
    CU_ASSERT_FATAL(pool_alloc(&p, 100, &again) == 0);
    CU_ASSERT_EQUAL(again.head, c[cap - 1].head);
    CU_ASSERT_EQUAL(pool_slice(&p, again.head)->flags, SHMIPC_SLICE_IN_USE);
    CU_ASSERT_EQUAL(pool_cached(&p), cap - 1);
    CU_ASSERT_EQUAL(pool_outstanding(&p), 1);
    CU_ASSERT_EQUAL(pool_give(&p, again.head), 0);
    pool_cache_flush(&p);
    CU_ASSERT_EQUAL(pool_cached(&p), 0);
    CU_ASSERT_EQUAL(pool_outstanding(&p), 0);
    for (unsigned i = 0; i < p.nlists; i++)
        CU_ASSERT_EQUAL(p.lists[i].hdr->free_count, (int32_t)p.lists[i].nslices);
    free(m);
}

/* Slices reachable from head, each once, ending at tail. */
static uint32_t list_walk_len(const struct pool *p, unsigned li)
{
    const struct pool_list *l = &p->lists[li];
    uint32_t rel = l->hdr->head, n = 1;
    while (rel != l->hdr->tail && n <= l->nslices) {
        const struct shmipc_slice_header *s = (const void *)(l->region + rel);
        if (!(s->flags & SHMIPC_SLICE_HAS_NEXT))
            return 0;
        rel = s->next;
        n++;
    }
    return n;
}

/* Many at once: never the last free slice, one CAS for the lot, and a
 * batch freed back leaves the list whole and in order of the frees. */
static void test_pop_many_give_many(void)
{
    struct pool p;
    uint8_t *m = small_pool(&p);
    struct pool_list *l = &p.lists[1];
    uint32_t n = l->nslices;
    uint32_t *offs = calloc(n + 1, sizeof(*offs));
    CU_ASSERT_FATAL(offs != NULL);
    CU_ASSERT_EQUAL(pool_pop_many(&p, 1, offs, 3), 3);
    CU_ASSERT_EQUAL(l->hdr->free_count, (int32_t)n - 3);
    int more = pool_pop_many(&p, 1, offs + 3, n); /* asks for more than there is */
    CU_ASSERT_EQUAL(more, (int)n - 4);
    CU_ASSERT_EQUAL(l->hdr->free_count, 1);
    CU_ASSERT_EQUAL(pool_pop_many(&p, 1, offs + n, 1), SHMIPC_ENOBUFS);
    CU_ASSERT_EQUAL(pool_outstanding(&p), (int64_t)n - 1);
    for (uint32_t i = 0; i + 1 < n; i++) {
        CU_ASSERT_EQUAL(pool_list_of(&p, offs[i]), 1);
        CU_ASSERT_EQUAL(pool_slice(&p, offs[i])->flags, SHMIPC_SLICE_IN_USE);
        for (uint32_t k = 0; k < i; k++)
            CU_ASSERT_NOT_EQUAL(offs[i], offs[k]);
    }
    /* Back in one batch (no cache: every one goes to the list). */
    CU_ASSERT_EQUAL(pool_give_many(&p, offs, n - 1), 0);
    CU_ASSERT_EQUAL(l->hdr->free_count, (int32_t)n);
    CU_ASSERT_EQUAL(list_walk_len(&p, 1), n);
    CU_ASSERT_EQUAL(pool_outstanding(&p), 0);
    /* A slice given twice in a batch: refused once, the rest freed. */
    CU_ASSERT_EQUAL(pool_pop_many(&p, 1, offs, 2), 2);
    offs[2] = offs[0];
    CU_ASSERT_EQUAL(pool_give_many(&p, offs, 3), SHMIPC_EBADSLICE);
    CU_ASSERT_EQUAL(l->hdr->free_count, (int32_t)n);
    CU_ASSERT_EQUAL(list_walk_len(&p, 1), n);
    free(offs);
    free(m);
}

static const struct test_case cases[] = {
    {"create_rejects", test_create_rejects},
    {"never_last_slice", test_never_last_slice},
    {"push_checks", test_push_checks},
    {"alloc_policy", test_alloc_policy},
    {"alloc_chain_crosses_classes", test_alloc_chain_crosses_classes},
    {"writer", test_writer},
    {"map_rejects_lying_headers", test_map_rejects_lying_headers},
    {"pop_push_on_corrupt_lists", test_pop_push_on_corrupt_lists},
    {"chain_rejects", test_chain_rejects},
    {"reused_slice_freed", test_reused_slice_freed},
    {"pop_lock_held", test_pop_lock_held},
    {"pop_waits_for_link", test_pop_waits_for_link},
    {"cache", test_cache},
    {"pop_many_give_many", test_pop_many_give_many},
    {NULL, NULL},
};

const struct test_suite suite_pool = {"pool", cases};
