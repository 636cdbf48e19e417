/*
 * Queue pair: creation and mapping rules, order across wrap-around, full
 * and empty, the working-flag protocol, halves swapped for the server, and
 * counters a peer corrupted.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shm/queue.h"
#include "shmipc/errors.h"
#include "testutil.h"

static uint8_t *qmem(uint32_t cap, size_t *size)
{
    *size = queue_pair_size(cap);
    uint8_t *m = aligned_alloc(4096, (*size + 4095) / 4096 * 4096);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    memset(m, 0, *size);
    return m;
}

static void test_create_rejects(void)
{
    size_t size;
    uint8_t *m = qmem(64, &size);
    struct queue_pair qp;
    CU_ASSERT_EQUAL(queue_pair_create(&qp, m, size, 0), -EINVAL);
    CU_ASSERT_EQUAL(queue_pair_create(&qp, m, size - 1, 64), -EINVAL);
    CU_ASSERT_EQUAL(queue_pair_create(&qp, m, size, QUEUE_MAX_CAP + 16), -EINVAL);
    CU_ASSERT_EQUAL(queue_pair_create(&qp, m, size, 64), 0);
    CU_ASSERT_EQUAL(size, 2 * (24 + 12 * 64));
    free(m);
}

static void test_order_full_empty_wrap(void)
{
    size_t size;
    uint8_t *m = qmem(16, &size);
    struct queue_pair c, s;
    CU_ASSERT_FATAL(queue_pair_create(&c, m, size, 16) == 0);
    CU_ASSERT_FATAL(queue_pair_map(&s, m, size, 1) == 0);
    struct shmipc_queue_elem e = {0, 0, 0}, got;
    CU_ASSERT_EQUAL(queue_pop(&s.recv, &got), SHMIPC_EQEMPTY);
    uint32_t next_put = 0, next_get = 0;
    int in_order = 1;
    for (int round = 0; round < 50; round++) {
        /* Fill to the brim, then drain a varying amount: wraps many times. */
        while (queue_put(&c.send, &e) == 0) {
            e.stream_id = ++next_put;
            e.offset = next_put * 3;
        }
        CU_ASSERT_EQUAL(queue_len(&c.send), 16);
        CU_ASSERT_EQUAL(queue_put(&c.send, &e), SHMIPC_EQFULL);
        for (int k = 0; k < 1 + round % 16; k++) {
            CU_ASSERT_FATAL(queue_pop(&s.recv, &got) == 0);
            in_order &= got.stream_id == next_get && got.offset == next_get * 3;
            next_get++;
        }
    }
    while (queue_pop(&s.recv, &got) == 0) {
        in_order &= got.stream_id == next_get;
        next_get++;
    }
    CU_ASSERT(in_order);
    CU_ASSERT_EQUAL(next_get, next_put);
    CU_ASSERT(next_put > 16 * 10);
    free(m);
}

static void test_halves_swapped(void)
{
    size_t size;
    uint8_t *m = qmem(32, &size);
    struct queue_pair c, s;
    CU_ASSERT_FATAL(queue_pair_create(&c, m, size, 32) == 0);
    CU_ASSERT_FATAL(queue_pair_map(&s, m, size, 1) == 0);
    struct shmipc_queue_elem up = {2, 100, 0}, down = {2, 200, 1}, got;
    CU_ASSERT_FATAL(queue_put(&c.send, &up) == 0);
    CU_ASSERT_FATAL(queue_put(&s.send, &down) == 0);
    CU_ASSERT(c.send.hdr == m && s.send.hdr == m + size / 2);
    CU_ASSERT_FATAL(queue_pop(&s.recv, &got) == 0);
    CU_ASSERT(got.offset == 100 && got.status == 0);
    CU_ASSERT_FATAL(queue_pop(&c.recv, &got) == 0);
    CU_ASSERT(got.offset == 200 && got.status == 1);
    /* Native layout: counters are little-endian i64 at the wire offsets. */
    int64_t tail;
    memcpy(&tail, m + SHMIPC_QUEUE_OFF_TAIL, 8);
    CU_ASSERT_EQUAL(tail, 1);
    free(m);
}

static void test_working_flag(void)
{
    size_t size;
    uint8_t *m = qmem(16, &size);
    struct queue_pair c, s;
    CU_ASSERT_FATAL(queue_pair_create(&c, m, size, 16) == 0);
    CU_ASSERT_FATAL(queue_pair_map(&s, m, size, 1) == 0);
    struct shmipc_queue_elem e = {2, 0, 0}, got;
    CU_ASSERT_FATAL(queue_put(&c.send, &e) == 0);
    CU_ASSERT_EQUAL(queue_mark_working(&c.send), 1); /* wake the consumer */
    CU_ASSERT_FATAL(queue_put(&c.send, &e) == 0);
    CU_ASSERT_EQUAL(queue_mark_working(&c.send), 0); /* already awake */
    CU_ASSERT_FATAL(queue_pop(&s.recv, &got) == 0);
    /* Not drained: clearing must notice and keep the flag set. */
    CU_ASSERT_EQUAL(queue_mark_not_working(&s.recv), 0);
    CU_ASSERT_EQUAL(queue_working(&s.recv), 1);
    CU_ASSERT_FATAL(queue_pop(&s.recv, &got) == 0);
    CU_ASSERT_EQUAL(queue_mark_not_working(&s.recv), 1);
    CU_ASSERT_EQUAL(queue_working(&s.recv), 0);
    CU_ASSERT_FATAL(queue_put(&c.send, &e) == 0);
    CU_ASSERT_EQUAL(queue_mark_working(&c.send), 1);
    free(m);
}

static void test_map_rejects(void)
{
    size_t size;
    uint8_t *m = qmem(16, &size);
    struct queue_pair c, s;
    CU_ASSERT_FATAL(queue_pair_create(&c, m, size, 16) == 0);
    uint32_t *cap0 = (uint32_t *)(m + SHMIPC_QUEUE_OFF_CAP);
    uint32_t *cap1 = (uint32_t *)(m + size / 2 + SHMIPC_QUEUE_OFF_CAP);
    CU_ASSERT_EQUAL(queue_pair_map(&s, m, size - 12, 1), SHMIPC_EBADQUEUE);
    CU_ASSERT_EQUAL(queue_pair_map(&s, m, 10, 1), SHMIPC_EBADQUEUE);
    *cap0 = 0;
    CU_ASSERT_EQUAL(queue_pair_map(&s, m, size, 1), SHMIPC_EBADQUEUE);
    *cap0 = 0xffffffffu;
    CU_ASSERT_EQUAL(queue_pair_map(&s, m, size, 1), SHMIPC_EBADQUEUE);
    *cap0 = 16;
    *cap1 = 17;
    CU_ASSERT_EQUAL(queue_pair_map(&s, m, size, 1), SHMIPC_EBADQUEUE);
    *cap1 = 16;
    int64_t v = 5; /* head 5 > tail 0 */
    memcpy(m + SHMIPC_QUEUE_OFF_HEAD, &v, 8);
    CU_ASSERT_EQUAL(queue_pair_map(&s, m, size, 1), SHMIPC_EBADQUEUE);
    v = 0;
    memcpy(m + SHMIPC_QUEUE_OFF_HEAD, &v, 8);
    v = 17; /* tail - head > cap */
    memcpy(m + size / 2 + SHMIPC_QUEUE_OFF_TAIL, &v, 8);
    CU_ASSERT_EQUAL(queue_pair_map(&s, m, size, 1), SHMIPC_EBADQUEUE);
    v = -1;
    memcpy(m + size / 2 + SHMIPC_QUEUE_OFF_TAIL, &v, 8);
    CU_ASSERT_EQUAL(queue_pair_map(&s, m, size, 1), SHMIPC_EBADQUEUE);
    v = 0;
    memcpy(m + size / 2 + SHMIPC_QUEUE_OFF_TAIL, &v, 8);
    CU_ASSERT_EQUAL(queue_pair_map(&s, m, size, 1), 0);
    free(m);
}

static void test_runtime_corruption(void)
{
    size_t size;
    uint8_t *m = qmem(16, &size);
    struct queue_pair c, s;
    CU_ASSERT_FATAL(queue_pair_create(&c, m, size, 16) == 0);
    CU_ASSERT_FATAL(queue_pair_map(&s, m, size, 1) == 0);
    struct shmipc_queue_elem e = {2, 0, 0}, got;
    CU_ASSERT_FATAL(queue_put(&c.send, &e) == 0);
    int64_t v = 1000; /* the consumer claims to be ahead of the producer */
    memcpy(m + SHMIPC_QUEUE_OFF_HEAD, &v, 8);
    /* The producer reads the head again when the queue looks full: the
     * lie is caught there, before anything is overwritten. */
    int rc = 0;
    for (int i = 0; i < 17 && rc == 0; i++)
        rc = queue_put(&c.send, &e);
    CU_ASSERT_EQUAL(rc, SHMIPC_ECORRUPT);
    CU_ASSERT_EQUAL(queue_len(&c.send), 0);
    /* The producer's tail jumps by more than the capacity. */
    v = 1 + 100;
    memcpy(m + SHMIPC_QUEUE_OFF_TAIL, &v, 8);
    CU_ASSERT_EQUAL(queue_pop(&s.recv, &got), SHMIPC_ECORRUPT);
    v = -7; /* and backwards */
    memcpy(m + SHMIPC_QUEUE_OFF_TAIL, &v, 8);
    CU_ASSERT_EQUAL(queue_pop(&s.recv, &got), SHMIPC_ECORRUPT);
    free(m);
}

/* A peer may create caps that are not multiples of 16; cap 8 puts the
 * second queue's head across a cache line. Reads still come out right. */
static void test_peer_cap_8_straddles(void)
{
    size_t size = queue_pair_size(8);
    uint8_t *m = aligned_alloc(4096, 4096);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    memset(m, 0, 4096);
    uint32_t cap = 8;
    memcpy(m + SHMIPC_QUEUE_OFF_CAP, &cap, 4);
    memcpy(m + size / 2 + SHMIPC_QUEUE_OFF_CAP, &cap, 4);
    struct queue_pair c, s;
    CU_ASSERT_FATAL(queue_pair_map(&c, m, size, 0) == 0);
    CU_ASSERT_FATAL(queue_pair_map(&s, m, size, 1) == 0);
#if defined(__x86_64__)
    CU_ASSERT_EQUAL(c.recv.torn_read, 1); /* head at bytes 60-67 of a line */
    CU_ASSERT_EQUAL(c.send.torn_read, 0);
#endif
    struct shmipc_queue_elem e = {9, 1, 0}, got;
    for (int i = 0; i < 20; i++) {
        CU_ASSERT_FATAL(queue_put(&s.send, &e) == 0);
        CU_ASSERT_FATAL(queue_pop(&c.recv, &got) == 0);
        CU_ASSERT_EQUAL(got.stream_id, 9);
    }
    free(m);
}

static const struct test_case cases[] = {
    {"create_rejects", test_create_rejects},
    {"order_full_empty_wrap", test_order_full_empty_wrap},
    {"halves_swapped", test_halves_swapped},
    {"working_flag", test_working_flag},
    {"map_rejects", test_map_rejects},
    {"runtime_corruption", test_runtime_corruption},
    {"peer_cap_8_straddles", test_peer_cap_8_straddles},
    {NULL, NULL},
};

const struct test_suite suite_queue = {"queue", cases};
