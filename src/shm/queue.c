/*
 * The queue pair (see queue.h). Ordering: the producer writes the element,
 * then store-releases tail; the consumer load-acquires tail, then reads the
 * element; symmetrically for head, so a slot is never reused while it is
 * being read. The working flag uses sequentially consistent operations on
 * both sides: the producer's CAS comes after its tail store and the
 * consumer's flag store comes before its tail load, so at least one of them
 * sees the other and no wake-up is lost.
 */
#include "shm/queue.h"

#include <errno.h>
#include <string.h>

#include "shm/atomics.h"
#include "shmipc/errors.h"

#define CACHE_LINE 64u
#define TORN_READ_TRIES 64

static size_t half_size(uint32_t cap)
{
    return SHMIPC_QUEUE_HEADER_LEN + (size_t)cap * SHMIPC_QUEUE_ELEM_LEN;
}

size_t queue_pair_size(uint32_t cap)
{
    return 2 * half_size(cap);
}

static int straddles(const uint8_t *p)
{
    return ((uintptr_t)p % CACHE_LINE) + 8 > CACHE_LINE;
}

static void view(struct queue *q, uint8_t *hdr, uint32_t cap)
{
    q->hdr = hdr;
    q->elems = hdr + SHMIPC_QUEUE_HEADER_LEN;
    q->cap = cap;
    q->own = 0;
    q->seen = 0;
    q->torn_read = straddles(hdr + SHMIPC_QUEUE_OFF_HEAD) || straddles(hdr + SHMIPC_QUEUE_OFF_TAIL);
}

/* Reads the peer's counter; where it may straddle a cache line, until two
 * consecutive reads agree (bounded: validation catches a value that never
 * settles). */
static int64_t ld_counter(const struct queue *q, unsigned off)
{
    const uint8_t *p = q->hdr + off;
    int64_t v = ld64a4_acq(p);
    for (int i = 0; q->torn_read && i < TORN_READ_TRIES; i++) {
        int64_t again = ld64a4_acq(p);
        if (again == v)
            break;
        v = again;
    }
    return v;
}

static uint32_t *working(const struct queue *q)
{
    return (uint32_t *)(q->hdr + SHMIPC_QUEUE_OFF_WORKING);
}

static void init_half(uint8_t *hdr, uint32_t cap)
{
    memset(hdr, 0, half_size(cap));
    memcpy(hdr + SHMIPC_QUEUE_OFF_CAP, &cap, sizeof(cap));
}

int queue_pair_create(struct queue_pair *qp, void *base, size_t size, uint32_t cap)
{
    if (cap == 0 || cap > QUEUE_MAX_CAP || size != queue_pair_size(cap))
        return -EINVAL;
    uint8_t *b = base;
    init_half(b, cap);
    init_half(b + half_size(cap), cap);
    view(&qp->send, b, cap);
    view(&qp->recv, b + half_size(cap), cap);
    return 0;
}

static int counters_sane(int64_t head, int64_t tail, uint32_t cap)
{
    return head >= 0 && tail >= head && tail - head <= (int64_t)cap;
}

int queue_pair_map(struct queue_pair *qp, void *base, size_t size, int server_role)
{
    uint8_t *b = base;
    uint32_t cap0, cap1;
    if (size < 2 * SHMIPC_QUEUE_HEADER_LEN)
        return SHMIPC_EBADQUEUE;
    memcpy(&cap0, b + SHMIPC_QUEUE_OFF_CAP, sizeof(cap0));
    if (cap0 == 0 || cap0 > QUEUE_MAX_CAP || size != queue_pair_size(cap0))
        return SHMIPC_EBADQUEUE;
    memcpy(&cap1, b + half_size(cap0) + SHMIPC_QUEUE_OFF_CAP, sizeof(cap1));
    if (cap1 != cap0)
        return SHMIPC_EBADQUEUE;
#if !defined(__x86_64__)
    if (half_size(cap0) % 8 != 0)
        return SHMIPC_EBADQUEUE; /* the second half's counters would be misaligned */
#endif
    uint8_t *first = b, *second = b + half_size(cap0);
    view(&qp->send, server_role ? second : first, cap0);
    view(&qp->recv, server_role ? first : second, cap0);
    struct queue *qs[2] = {&qp->send, &qp->recv};
    for (int i = 0; i < 2; i++) {
        int64_t head = ld_counter(qs[i], SHMIPC_QUEUE_OFF_HEAD);
        int64_t tail = ld_counter(qs[i], SHMIPC_QUEUE_OFF_TAIL);
        if (!counters_sane(head, tail, cap0))
            return SHMIPC_EBADQUEUE;
    }
    qp->send.own = ld_counter(&qp->send, SHMIPC_QUEUE_OFF_TAIL);
    qp->recv.own = ld_counter(&qp->recv, SHMIPC_QUEUE_OFF_HEAD);
    /* Re-read and checked against our own counters on first use. */
    qp->send.seen = qp->send.own - (int64_t)qp->send.cap;
    qp->recv.seen = qp->recv.own;
    return 0;
}

int queue_put(struct queue *q, const struct shmipc_queue_elem *e)
{
    if (q->own - q->seen >= (int64_t)q->cap) {
        int64_t head = ld_counter(q, SHMIPC_QUEUE_OFF_HEAD);
        if (!counters_sane(head, q->own, q->cap))
            return SHMIPC_ECORRUPT;
        q->seen = head;
        if (q->own - head == (int64_t)q->cap)
            return SHMIPC_EQFULL;
    }
    memcpy(q->elems + (uint64_t)q->own % q->cap * SHMIPC_QUEUE_ELEM_LEN, e, sizeof(*e));
    q->own++;
    st64a4_rel(q->hdr + SHMIPC_QUEUE_OFF_TAIL, q->own);
    return 0;
}

/* Elements known to be there, re-reading the tail when none are. */
static int64_t available(struct queue *q)
{
    if (q->seen == q->own) {
        int64_t tail = ld_counter(q, SHMIPC_QUEUE_OFF_TAIL);
        if (!counters_sane(q->own, tail, q->cap))
            return SHMIPC_ECORRUPT;
        q->seen = tail;
    }
    return q->seen - q->own;
}

int queue_pop(struct queue *q, struct shmipc_queue_elem *e)
{
    int rc = queue_pop_many(q, e, 1);
    return rc < 0 ? rc : rc == 0 ? SHMIPC_EQEMPTY : 0;
}

int queue_pop_many(struct queue *q, struct shmipc_queue_elem *e, unsigned max)
{
    int64_t n = available(q);
    if (n <= 0)
        return (int)n;
    if (n > (int64_t)max)
        n = max;
    for (int64_t i = 0; i < n; i++) {
        memcpy(&e[i], q->elems + (uint64_t)q->own % q->cap * SHMIPC_QUEUE_ELEM_LEN, sizeof(*e));
        q->own++;
    }
    st64a4_rel(q->hdr + SHMIPC_QUEUE_OFF_HEAD, q->own);
    return (int)n;
}

uint32_t queue_len(const struct queue *q)
{
    int64_t head = ld_counter(q, SHMIPC_QUEUE_OFF_HEAD);
    int64_t tail = ld_counter(q, SHMIPC_QUEUE_OFF_TAIL);
    return counters_sane(head, tail, q->cap) ? (uint32_t)(tail - head) : 0;
}

int64_t queue_head(const struct queue *q)
{
    return ld_counter(q, SHMIPC_QUEUE_OFF_HEAD);
}

int queue_mark_working(struct queue *q)
{
    return cas32(working(q), 0, 1);
}

int queue_mark_not_working(struct queue *q)
{
    __atomic_store_n(working(q), 0, __ATOMIC_SEQ_CST);
    int64_t tail = ld_counter(q, SHMIPC_QUEUE_OFF_TAIL);
    if (tail == q->own)
        return 1;
    __atomic_store_n(working(q), 1, __ATOMIC_SEQ_CST);
    return 0;
}

uint32_t queue_working(const struct queue *q)
{
    return __atomic_load_n(working(q), __ATOMIC_ACQUIRE);
}
