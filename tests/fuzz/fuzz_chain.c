/*
 * Fuzz target: slice chains in a pool the peer can write, and the queue
 * whose elements point at them (src/shm/pool.c walk/check/free, src/shm/
 * queue.c map/pop/put).
 *
 * Each input starts from the same valid small pool (pool_create, three
 * classes, 32 KiB in a heap buffer of exactly that size). The input is a
 * script of 8-byte operations (u8 op, u8 a, u16 b, u32 v): write messages
 * into chains as a sender does, overwrite slice and list header fields as
 * a hostile peer would (raw values, or offsets of real slices to build
 * loops and cross links), walk, check and free chains from held or raw
 * offsets, and map a queue pair shaped by the input (raw bytes, or sane
 * counters with elements pointing at held chains) and pop and put on it.
 * While nothing was corrupted the results must be exact (bytes, slice
 * counts, no leaked slice); after corruption only memory safety and
 * termination are checked.
 */
#include "common.h"
#include "pool_impatient.h"
#include "shm/pool.h"
#include "shm/queue.h"
#include "shmipc/errors.h"

#define POOL_BYTES 32768u
#define MAX_OPS 96
#define MAX_HELD 16
#define MAX_QCAP 32u

static const struct pool_class classes[3] = {{108, 50}, {492, 30}, {2028, 20}};

struct held {
    uint32_t head;
    uint32_t len;
    uint32_t nslices;
};

struct state {
    struct pool p;
    uint8_t *base;
    struct held held[MAX_HELD];
    unsigned nheld;
    int corrupted; /* a peer wrote something: only safety is checked */
};

struct op {
    uint8_t code, a;
    uint16_t b;
    uint32_t v;
};

/* Absolute offset of the idx-th slice of the pool, counted over all lists. */
static uint32_t slice_off(const struct pool *p, uint32_t idx)
{
    idx %= p->total_slices;
    for (unsigned i = 0; i < p->nlists; i++) {
        if (idx < p->lists[i].nslices)
            return p->lists[i].region_off + idx * p->lists[i].stride;
        idx -= p->lists[i].nslices;
    }
    return 0;
}

static uint8_t pattern(uint32_t i)
{
    return (uint8_t)(i * 7 + 1);
}

/* Walks a chain, reading every data byte; returns the bytes or a code. */
static int64_t walk(const struct state *s, uint32_t first, int expect_pattern)
{
    struct pool_walk w;
    struct pool_seg seg;
    int rc;
    uint64_t total = 0;
    pool_walk_init(&w, &s->p, first);
    while ((rc = pool_walk_next(&w, &seg)) > 0) {
        int li = pool_list_of(&s->p, seg.off);
        FZ_CHECK(li >= 0);
        const uint8_t *lo = s->base + seg.off + SHMIPC_SLICE_HEADER_LEN;
        FZ_CHECK(seg.data >= lo && seg.data + seg.len <= lo + s->p.lists[li].slice_cap);
        for (uint32_t i = 0; i < seg.len; i++)
            if (expect_pattern)
                FZ_CHECK(seg.data[i] == pattern((uint32_t)(total + i)));
            else
                __asm__ __volatile__("" ::"r"(seg.data[i]));
        total += seg.len;
        FZ_CHECK(w.count <= s->p.total_slices);
    }
    return rc < 0 ? rc : (int64_t)total;
}

static void forget(struct state *s, unsigned k)
{
    s->held[k] = s->held[--s->nheld];
}

static void op_write(struct state *s, const struct op *o)
{
    if (s->nheld == MAX_HELD)
        return;
    uint32_t n = o->b % (3 * 2028u);
    /* a bit 0: contiguous pieces from reserve() (at most one slice each),
     * else copies through write() in 512-byte calls. */
    int reserve = o->a & 1;
    uint32_t piece = reserve ? 1 + (o->a >> 1) * 16u : 512;
    if (piece > s->p.max_slice_cap)
        piece = s->p.max_slice_cap;
    uint8_t buf[512];
    struct pool_writer w;
    pool_writer_init(&w, &s->p);
    int rc = 0;
    for (uint32_t done = 0; done < n && rc == 0;) {
        uint32_t k = n - done < piece ? n - done : piece;
        uint8_t *dst = buf;
        if (reserve)
            rc = pool_writer_reserve(&w, k, (void **)&dst);
        for (uint32_t i = 0; rc == 0 && i < k; i++)
            dst[i] = pattern(done + i);
        if (!reserve)
            rc = pool_writer_write(&w, buf, k);
        done += k;
    }
    if (rc == 0)
        rc = pool_writer_touch(&w);
    uint32_t first;
    if (rc < 0) {
        FZ_CHECK(s->corrupted || rc == SHMIPC_ENOBUFS);
        pool_writer_abort(&w);
        return;
    }
    uint32_t nslices = w.chain.nslices;
    FZ_CHECK(pool_writer_finish(&w, &first) == 0);
    uint64_t bytes;
    uint32_t count;
    if (!s->corrupted) {
        FZ_CHECK(pool_chain_check(&s->p, first, &bytes, &count) == 0);
        FZ_CHECK(bytes == n && count == nslices);
        FZ_CHECK(walk(s, first, 1) == (int64_t)n);
    }
    s->held[s->nheld++] = (struct held){first, n, nslices};
}

/* A hostile peer's store into a slice header. */
static void op_slice(struct state *s, const struct op *o)
{
    uint32_t off = slice_off(&s->p, o->b);
    struct shmipc_slice_header *h = pool_slice(&s->p, off);
    int li = pool_list_of(&s->p, off);
    FZ_CHECK(li >= 0);
    const struct pool_list *l = &s->p.lists[li];
    s->corrupted = 1;
    switch (o->a % 8) {
    case 0:
        h->cap = o->v;
        break;
    case 1:
        h->size = o->v;
        break;
    case 2:
        h->start = o->v;
        break;
    case 3:
        h->next = o->v;
        break;
    case 4: /* a chain link to a real slice (loops, cross links) */
        h->next = slice_off(&s->p, o->v);
        h->flags |= SHMIPC_SLICE_HAS_NEXT;
        break;
    case 5: /* a free-list link inside its own list */
        h->next = (o->v % l->nslices) * l->stride;
        break;
    case 6:
        h->flags = (uint8_t)o->v;
        break;
    default:
        h->flags ^= (uint8_t)(o->v & 3);
        break;
    }
}

/* A hostile peer's store into a list header (free count, head, tail ...). */
static void op_list(struct state *s, const struct op *o)
{
    const struct pool_list *l = &s->p.lists[o->b % s->p.nlists];
    unsigned field = o->a % 9;
    uint32_t v = o->v;
    if ((field == 2 || field == 3) && (v & 0x80000000u))
        v = (v % l->nslices) * l->stride; /* a valid slice: head/tail races */
    memcpy((uint8_t *)l->hdr + 4 * field, &v, sizeof(v));
    s->corrupted = 1;
}

static uint32_t pick_offset(const struct state *s, const struct op *o)
{
    if ((o->a & 0x80) || s->nheld == 0)
        return (o->a & 0x40) ? slice_off(&s->p, o->v) : o->v;
    return s->held[o->v % s->nheld].head;
}

static void op_free(struct state *s, const struct op *o)
{
    uint32_t first = pick_offset(s, o);
    int64_t before = pool_outstanding(&s->p);
    int rc = pool_free_chain(&s->p, first);
    for (unsigned k = 0; k < s->nheld; k++) {
        if (s->held[k].head != first)
            continue;
        if (!s->corrupted)
            FZ_CHECK(rc == (int)s->held[k].nslices);
        forget(s, k);
        return;
    }
    /* Slices freed from the middle of a held chain (an error can come
     * after some were freed, so count them rather than trust rc). */
    if (pool_outstanding(&s->p) != before)
        s->corrupted = 1;
}

static void op_pop_push(struct state *s, const struct op *o)
{
    if (o->a & 0x80) {
        if (pool_push(&s->p, pick_offset(s, o)) == 0)
            s->corrupted = 1;
        return;
    }
    uint32_t off;
    unsigned li = o->b % s->p.nlists;
    if (pool_pop(&s->p, li, &off) != 0)
        return;
    FZ_CHECK(pool_list_of(&s->p, off) == (int)li);
    FZ_CHECK(pool_push(&s->p, off) == 0 || s->corrupted);
}

/* Maps a queue pair shaped by the input and consumes it as the server. */
static void op_queue(struct state *s, const struct op *o, struct fz *in)
{
    uint32_t cap = 1 + o->b % MAX_QCAP;
    int raw = o->a & 1, server_role = (o->a >> 1) & 1;
    size_t size = queue_pair_size(cap);
    if (raw) {
        int delta = (int)((o->a >> 2) & 7) - 4;
        size = (size_t)((int)size + delta);
    }
    uint8_t *q = calloc(1, size);
    FZ_CHECK(q != NULL);
    size_t got;
    const uint8_t *bytes = fz_bytes(in, size, &got);
    memcpy(q, bytes, got);
    size_t half = size / 2;
    if (!raw) {
        /* Sane counters, elements pointing at held chains or real slices. */
        for (int i = 0; i < 2; i++) {
            uint8_t *h = q + i * half;
            int64_t head = (int64_t)((o->v >> (16 * i)) & 0xff);
            int64_t tail = head + (int64_t)(((o->v >> (16 * i + 8)) & 0xff) % (cap + 1));
            memcpy(h + SHMIPC_QUEUE_OFF_CAP, &cap, 4);
            memcpy(h + SHMIPC_QUEUE_OFF_HEAD, &head, 8);
            memcpy(h + SHMIPC_QUEUE_OFF_TAIL, &tail, 8);
            for (uint32_t k = 0; k < cap; k++) {
                struct shmipc_queue_elem e;
                uint8_t *at = h + SHMIPC_QUEUE_HEADER_LEN + k * SHMIPC_QUEUE_ELEM_LEN;
                memcpy(&e, at, sizeof(e));
                if (!(e.offset & 1) && s->nheld > 0)
                    e.offset = s->held[e.offset / 2 % s->nheld].head;
                else if (!(e.offset & 2))
                    e.offset = slice_off(&s->p, e.offset);
                e.status &= 1;
                memcpy(at, &e, sizeof(e));
            }
        }
    }
    struct queue_pair qp;
    int rc = queue_pair_map(&qp, q, size, server_role);
    if (rc < 0) {
        FZ_CHECK(rc == SHMIPC_EBADQUEUE && raw);
        free(q);
        return;
    }
    /* The peer moves its counters after the map: u8 which (bit0 the
     * producer's tail of our receive queue, bit1 the consumer's head of
     * our send queue, bit2 set them to the raw value, else advance them by
     * it mod cap + 2), then the u32 value. */
    uint8_t which = fz_u8(in);
    uint32_t val = fz_u32(in);
    int64_t peer_tail = 0;
    for (int i = 0; i < 2; i++) {
        if (!(which & (1 << i)))
            continue;
        uint8_t *at =
            i == 0 ? qp.recv.hdr + SHMIPC_QUEUE_OFF_TAIL : qp.send.hdr + SHMIPC_QUEUE_OFF_HEAD;
        int64_t c;
        memcpy(&c, at, sizeof(c));
        c = (which & 4) ? (int64_t)(int32_t)val : c + (int64_t)(val % (cap + 2));
        memcpy(at, &c, sizeof(c));
    }
    memcpy(&peer_tail, qp.recv.hdr + SHMIPC_QUEUE_OFF_TAIL, sizeof(peer_tail));
    struct shmipc_queue_elem e;
    uint32_t pops = 0;
    while ((rc = queue_pop(&qp.recv, &e)) == 0) {
        FZ_CHECK(++pops <= cap && qp.recv.own <= peer_tail);
        if (e.status != SHMIPC_STREAM_OPEN)
            continue;
        uint64_t bytes_in;
        if (pool_chain_check(&s->p, e.offset, &bytes_in, NULL) == 0)
            walk(s, e.offset, 0);
        if (e.stream_id & 1) { /* the receiver is done with it */
            struct op f = {0, 0x80, 0, e.offset};
            op_free(s, &f);
        }
    }
    FZ_CHECK(rc == SHMIPC_EQEMPTY || rc == SHMIPC_ECORRUPT);
    int pop_rc = rc;
    FZ_CHECK(queue_len(&qp.recv) <= cap);
    uint32_t puts = 0;
    for (uint32_t k = 0; k < (o->v >> 24) % (cap + 2); k++) {
        struct shmipc_queue_elem out = {k + 2, slice_off(&s->p, k), 0};
        rc = queue_put(&qp.send, &out);
        if (rc != 0) {
            FZ_CHECK(rc == SHMIPC_EQFULL || rc == SHMIPC_ECORRUPT);
            break;
        }
        FZ_CHECK(++puts <= cap);
        if (queue_mark_working(&qp.send))
            FZ_CHECK(queue_working(&qp.send) == 1);
    }
    /* The consumer goes to sleep, or keeps going if the peer's tail moved. */
    if (which & 8) {
        int64_t c = qp.recv.own + 1;
        memcpy(qp.recv.hdr + SHMIPC_QUEUE_OFF_TAIL, &c, sizeof(c));
        FZ_CHECK(queue_mark_not_working(&qp.recv) == 0 && queue_working(&qp.recv) == 1);
    } else if (pop_rc == SHMIPC_EQEMPTY) {
        FZ_CHECK(queue_mark_not_working(&qp.recv) == 1 && queue_working(&qp.recv) == 0);
    }
    free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct state s;
    memset(&s, 0, sizeof(s));
    s.base = malloc(POOL_BYTES);
    FZ_CHECK(s.base != NULL);
    FZ_CHECK(pool_create(&s.p, s.base, POOL_BYTES, classes, 3) == 0);

    struct fz in = {data, size};
    for (int i = 0; i < MAX_OPS && fz_left(&in) > 0; i++) {
        struct op o;
        o.code = fz_u8(&in);
        o.a = fz_u8(&in);
        o.b = fz_u16(&in);
        o.v = fz_u32(&in);
        switch (o.code % 8) {
        case 0:
            op_write(&s, &o);
            break;
        case 1:
            op_slice(&s, &o);
            break;
        case 2:
            op_list(&s, &o);
            break;
        case 3:
            walk(&s, pick_offset(&s, &o), 0);
            break;
        case 4: {
            uint64_t bytes;
            uint32_t n;
            int rc = pool_chain_check(&s.p, pick_offset(&s, &o), &bytes, &n);
            if (rc == 0)
                FZ_CHECK(n >= 1 && n <= s.p.total_slices);
            break;
        }
        case 5:
            op_free(&s, &o);
            break;
        case 6:
            op_pop_push(&s, &o);
            break;
        default:
            op_queue(&s, &o, &in);
            break;
        }
    }
    while (s.nheld > 0) {
        struct op f = {0, 0, 0, 0};
        op_free(&s, &f);
    }
    if (!s.corrupted) {
        FZ_CHECK(pool_outstanding(&s.p) == 0);
        for (unsigned i = 0; i < s.p.nlists; i++)
            FZ_CHECK(pool_free_count(&s.p, i) == (int32_t)s.p.lists[i].nslices);
    }
    free(s.base);
    return 0;
}
