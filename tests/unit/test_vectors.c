/*
 * Golden vectors: our pool, queue and chain code must leave exactly the
 * bytes the Go shmipc library leaves after the same operations. Every
 * record of a step is compared at its absolute offset, so a vector file
 * with more records tests more without changes here.
 */
#include <stdlib.h>
#include <string.h>

#include "proto/event.h"
#include "shm/pool.h"
#include "shm/queue.h"
#include "shmipc/errors.h"
#include "testutil.h"

/* Compares every record whose label starts with `prefix` against `mem`
 * (records whose label contains `skip` are left to the caller). */
static int check_step(const struct vec_file *vf, const char *prefix, const char *skip,
                      const uint8_t *mem, size_t size)
{
    int checked = 0;
    for (size_t i = 0; i < vf->n; i++) {
        const struct vec_record *r = &vf->recs[i];
        if (strncmp(r->label, prefix, strlen(prefix)) != 0)
            continue;
        if (skip != NULL && strstr(r->label, skip) != NULL)
            continue;
        CU_ASSERT_FATAL(r->offset + r->len <= size);
        CU_ASSERT_VEC(vf, r->label, mem + r->offset, r->len);
        checked++;
    }
    return checked;
}

static uint8_t *zalloc(size_t size)
{
    uint8_t *p = aligned_alloc(4096, (size + 4095) / 4096 * 4096);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memset(p, 0, size);
    return p;
}

/* The pool steps of pool_default.hex / pool_small.hex: (a) 3 pops from
 * list 0 and 1 from the last list, (b) push back the 2nd list-0 slice,
 * (c) a second, mapping view pushes the 1st list-0 slice. */
static void pool_steps(const char *file, size_t size, const struct pool_class *classes,
                       unsigned n, int min_s0_records)
{
    struct vec_file vf;
    CU_ASSERT_FATAL(vec_load(file, &vf) == 0);
    uint8_t *mem = zalloc(size);
    struct pool p, peer;
    CU_ASSERT_FATAL(pool_create(&p, mem, size, classes, n) == 0);
    CU_ASSERT(check_step(&vf, "s0.", NULL, mem, size) >= min_s0_records);

    uint32_t off[3], big;
    for (int i = 0; i < 3; i++)
        CU_ASSERT_FATAL(pool_pop(&p, 0, &off[i]) == 0);
    CU_ASSERT_FATAL(pool_pop(&p, n - 1, &big) == 0);
    /* The popped offsets are the absolute header offsets the vectors name. */
    const struct vec_record *r0 = vec_find(&vf, "a.list0.slice0");
    const struct vec_record *r1 = vec_find(&vf, "a.list0.slice1");
    CU_ASSERT_FATAL(r0 != NULL && r1 != NULL);
    CU_ASSERT_EQUAL(off[0], r0->offset);
    CU_ASSERT_EQUAL(off[1], r1->offset);
    CU_ASSERT(check_step(&vf, "a.", NULL, mem, size) >= 5);

    CU_ASSERT_FATAL(pool_push(&p, off[1]) == 0);
    CU_ASSERT(check_step(&vf, "b.", NULL, mem, size) >= 4);

    CU_ASSERT_FATAL(pool_map(&peer, mem, size) == 0);
    CU_ASSERT_FATAL(pool_push(&peer, off[0]) == 0);
    CU_ASSERT(check_step(&vf, "c.", NULL, mem, size) >= 4);

    /* The local accounting of both views: 4 popped, 1 + 1 pushed. */
    CU_ASSERT_EQUAL(pool_outstanding(&p) + pool_outstanding(&peer), 2);
    free(mem);
    vec_free(&vf);
}

static void test_pool_default(void)
{
    pool_steps("pool_default.hex", POOL_DEFAULT_SIZE, pool_default_classes, 3, 10);
}

static void test_pool_small(void)
{
    const struct pool_class small[2] = {{4096, 70}, {16384, 30}};
    /* pool_small.hex lists every one of the 197 slice headers. */
    pool_steps("pool_small.hex", 1u << 20, small, 2, 1 + 2 + 197);
}

static void test_pool_layout_counts(void)
{
    uint32_t counts[3];
    CU_ASSERT_FATAL(pool_layout(POOL_DEFAULT_SIZE, pool_default_classes, 3, counts) == 0);
    CU_ASSERT_EQUAL(counts[0], 2047);
    CU_ASSERT_EQUAL(counts[1], 307);
    CU_ASSERT_EQUAL(counts[2], 51);
}

static void test_queue(void)
{
    struct vec_file vf;
    CU_ASSERT_FATAL(vec_load("queue_8192.hex", &vf) == 0);
    size_t size = queue_pair_size(8192);
    CU_ASSERT_EQUAL_FATAL(size, 196656);
    uint8_t *mem = zalloc(size);
    struct queue_pair client, server;
    CU_ASSERT_FATAL(queue_pair_create(&client, mem, size, 8192) == 0);
    CU_ASSERT(check_step(&vf, "s0.", NULL, mem, size) == 2);

    const struct shmipc_queue_elem puts[3] = {{2, 1234, 0}, {3, 5678, 0}, {2, 0, 1}};
    for (int i = 0; i < 3; i++)
        CU_ASSERT_FATAL(queue_put(&client.send, &puts[i]) == 0);
    CU_ASSERT_EQUAL(queue_mark_working(&client.send), 1);
    CU_ASSERT_EQUAL(queue_mark_working(&client.send), 0);
    CU_ASSERT(check_step(&vf, "a.", NULL, mem, size) == 5);

    CU_ASSERT_FATAL(queue_pair_map(&server, mem, size, 1) == 0);
    struct shmipc_queue_elem e;
    CU_ASSERT_FATAL(queue_pop(&server.recv, &e) == 0);
    CU_ASSERT(e.stream_id == 2 && e.offset == 1234 && e.status == 0);
    CU_ASSERT(check_step(&vf, "b.", NULL, mem, size) == 2);

    CU_ASSERT_FATAL(queue_pop(&server.recv, &e) == 0);
    CU_ASSERT(e.stream_id == 3 && e.offset == 5678 && e.status == 0);
    CU_ASSERT_FATAL(queue_pop(&server.recv, &e) == 0);
    CU_ASSERT(e.stream_id == 2 && e.offset == 0 && e.status == 1);
    CU_ASSERT_EQUAL(queue_pop(&server.recv, &e), SHMIPC_EQEMPTY);
    CU_ASSERT_EQUAL(queue_mark_not_working(&server.recv), 1);
    CU_ASSERT(check_step(&vf, "c.", NULL, mem, size) >= 1);
    free(mem);
    vec_free(&vf);
}

/* chain.hex: one message per case, written through pool_writer, flushed
 * as one queue element, then read back through the validating walk. */
static void chain_case(const struct vec_file *vf, const char *prefix, uint32_t stream_id,
                       const size_t *writes, unsigned nwrites, unsigned want_slices)
{
    uint8_t *pmem = zalloc(POOL_DEFAULT_SIZE);
    size_t qsize = queue_pair_size(8192);
    uint8_t *qmem = zalloc(qsize);
    struct pool p;
    struct queue_pair qp;
    CU_ASSERT_FATAL(pool_create(&p, pmem, POOL_DEFAULT_SIZE, pool_default_classes, 3) == 0);
    CU_ASSERT_FATAL(queue_pair_create(&qp, qmem, qsize, 8192) == 0);

    size_t total = 0;
    for (unsigned i = 0; i < nwrites; i++)
        total += writes[i];
    uint8_t *msg = malloc(total);
    CU_ASSERT_PTR_NOT_NULL_FATAL(msg);
    for (size_t i = 0; i < total; i++)
        msg[i] = (uint8_t)(i % 251);

    struct pool_writer w;
    pool_writer_init(&w, &p);
    size_t at = 0;
    for (unsigned i = 0; i < nwrites; i++) {
        CU_ASSERT_FATAL(pool_writer_write(&w, msg + at, writes[i]) == 0);
        at += writes[i];
    }
    uint32_t first;
    CU_ASSERT_FATAL(pool_writer_finish(&w, &first) == 0);
    struct shmipc_queue_elem e = {stream_id, first, SHMIPC_STREAM_OPEN};
    CU_ASSERT_FATAL(queue_put(&qp.send, &e) == 0);
    CU_ASSERT_EQUAL(queue_mark_working(&qp.send), 1);

    char pre[16];
    snprintf(pre, sizeof(pre), "%s.queue.", prefix);
    CU_ASSERT(check_step(vf, pre, NULL, qmem, qsize) == 2);
    snprintf(pre, sizeof(pre), "%s.chain", prefix);
    CU_ASSERT(check_step(vf, pre, NULL, pmem, POOL_DEFAULT_SIZE) == 2 * (int)want_slices);
    snprintf(pre, sizeof(pre), "%s.list", prefix);
    CU_ASSERT(check_step(vf, pre, NULL, pmem, POOL_DEFAULT_SIZE) == 1);
    uint8_t ev[8];
    CU_ASSERT_FATAL(ev_encode_simple(ev, sizeof(ev), 3, SHMIPC_EV_POLLING) == 8);
    snprintf(pre, sizeof(pre), "%s.event.Polling", prefix);
    CU_ASSERT_VEC(vf, pre, ev, sizeof(ev));

    /* The receiving side sees the same bytes through the checked walk. */
    struct pool peer;
    CU_ASSERT_FATAL(pool_map(&peer, pmem, POOL_DEFAULT_SIZE) == 0);
    uint64_t bytes;
    uint32_t nslices;
    CU_ASSERT_FATAL(pool_chain_check(&peer, first, &bytes, &nslices) == 0);
    CU_ASSERT_EQUAL(bytes, total);
    CU_ASSERT_EQUAL(nslices, want_slices);
    struct pool_walk walk;
    struct pool_seg seg;
    size_t pos = 0;
    int same = 1;
    pool_walk_init(&walk, &peer, first);
    while (pool_walk_next(&walk, &seg) > 0) {
        same &= pos + seg.len <= total && memcmp(seg.data, msg + pos, seg.len) == 0;
        pos += seg.len;
    }
    CU_ASSERT(same && pos == total);
    CU_ASSERT_EQUAL(pool_free_chain(&peer, first), (int)want_slices);
    CU_ASSERT_EQUAL(pool_outstanding(&p) + pool_outstanding(&peer), 0);
    for (unsigned i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(pool_free_count(&p, i), (int32_t)p.lists[i].nslices);
    free(msg);
    free(pmem);
    free(qmem);
}

static void test_chains(void)
{
    struct vec_file vf;
    CU_ASSERT_FATAL(vec_load("chain.hex", &vf) == 0);
    const size_t a[] = {20000};
    const size_t b[] = {4000, 4000, 4000, 4000, 4000};
    const size_t c[] = {200000};
    chain_case(&vf, "A", 2, a, 1, 1);
    chain_case(&vf, "B", 3, b, 5, 3);
    chain_case(&vf, "C", 4, c, 1, 2);
    vec_free(&vf);
}

static const struct test_case cases[] = {
    {"pool_layout_counts", test_pool_layout_counts},
    {"pool_default_steps", test_pool_default},
    {"pool_small_steps", test_pool_small},
    {"queue_8192_steps", test_queue},
    {"chains_A_B_C", test_chains},
    {NULL, NULL},
};

const struct test_suite suite_vectors = {"vectors", cases};
