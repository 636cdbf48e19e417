/*
 * Fuzz target: mapping a pool a peer laid out (pool_map in src/shm/pool.c)
 * and using it.
 *
 * Input: u16 mapping size L (0: the rest of the input), then the mapping's
 * bytes (zero-padded up to L), then a script of 5-byte operations
 * (u8 op, u32 arg). The mapping is a heap buffer of exactly L bytes, so
 * ASan reports any access past it. When pool_map accepts it, the script
 * walks, checks and frees chains from input offsets, pops, pushes,
 * allocates and writes messages, and pokes words into the mapping between
 * operations as a peer would. Nothing may touch memory outside the buffer,
 * every operation must end, and what the pool hands out must lie in it.
 */
#include "common.h"
#include "pool_impatient.h"
#include "shm/pool.h"
#include "shmipc/errors.h"

#define MAX_OPS 64
#define MAX_HELD 16

struct state {
    struct pool p;
    uint8_t *base;
    size_t size;
    uint32_t held[MAX_HELD]; /* offsets this side popped */
    unsigned nheld;
};

/* Reads every byte of a segment, so ASan checks the whole range. */
static void touch(const uint8_t *p, uint32_t n)
{
    volatile uint8_t sink = 0;
    for (uint32_t i = 0; i < n; i++)
        sink ^= p[i];
    (void)sink;
}

static void check_seg(const struct state *s, const struct pool_seg *seg)
{
    int li = pool_list_of(&s->p, seg->off);
    FZ_CHECK(li >= 0);
    const uint8_t *lo = s->base + seg->off + SHMIPC_SLICE_HEADER_LEN;
    FZ_CHECK(seg->data >= lo);
    FZ_CHECK(seg->data + seg->len <= lo + s->p.lists[li].slice_cap);
    FZ_CHECK(seg->data + seg->len <= s->base + s->size);
    touch(seg->data, seg->len);
}

static void walk(const struct state *s, uint32_t first)
{
    struct pool_walk w;
    struct pool_seg seg;
    int rc;
    uint32_t n = 0;
    pool_walk_init(&w, &s->p, first);
    while ((rc = pool_walk_next(&w, &seg)) > 0) {
        check_seg(s, &seg);
        FZ_CHECK(++n <= s->p.total_slices);
    }
    FZ_CHECK(rc == 0 || rc == SHMIPC_EBADOFFSET || rc == SHMIPC_EBADSLICE ||
             rc == SHMIPC_ECHAINLOOP);
}

static void check_layout(const struct state *s)
{
    const struct pool *p = &s->p;
    FZ_CHECK(p->nlists >= 1 && p->nlists <= POOL_MAX_LISTS);
    FZ_CHECK(p->end <= s->size);
    uint64_t total = 0;
    for (unsigned i = 0; i < p->nlists; i++) {
        const struct pool_list *l = &p->lists[i];
        FZ_CHECK((uint8_t *)l->hdr >= s->base + SHMIPC_POOL_HEADER_LEN);
        FZ_CHECK(l->region == (uint8_t *)l->hdr + SHMIPC_LIST_HEADER_LEN);
        FZ_CHECK(l->region_off + (uint64_t)l->nslices * l->stride <= p->end);
        FZ_CHECK(l->stride == l->slice_cap + SHMIPC_SLICE_HEADER_LEN);
        total += l->nslices;
    }
    FZ_CHECK(total == p->total_slices);
    for (unsigned k = 1; k < p->nlists; k++)
        FZ_CHECK(p->lists[p->by_cap[k - 1]].slice_cap <= p->lists[p->by_cap[k]].slice_cap);
}

static void hold(struct state *s, uint32_t off)
{
    if (s->nheld < MAX_HELD)
        s->held[s->nheld++] = off;
    else
        pool_push(&s->p, off);
}

static void op_pop(struct state *s, uint32_t arg)
{
    unsigned li = arg % (s->p.nlists + 1); /* one past the end: refused */
    uint32_t off;
    int rc = pool_pop(&s->p, li, &off);
    if (rc < 0)
        return;
    FZ_CHECK(li < s->p.nlists && pool_list_of(&s->p, off) == (int)li);
    hold(s, off);
}

static void op_push(struct state *s, uint32_t arg)
{
    if ((arg & 0x80000000u) || s->nheld == 0) {
        pool_push(&s->p, arg & 0x7fffffffu);
        return;
    }
    unsigned k = arg % s->nheld;
    pool_push(&s->p, s->held[k]);
    s->held[k] = s->held[--s->nheld];
}

static void op_alloc(struct state *s, uint32_t arg)
{
    struct pool_chain c;
    uint32_t size = (uint32_t)(arg % (2 * (uint64_t)s->p.max_slice_cap + 2));
    if (pool_alloc(&s->p, size, &c) < 0)
        return;
    FZ_CHECK(c.nslices >= 1 && c.cap >= size);
    FZ_CHECK(pool_list_of(&s->p, c.head) >= 0 && pool_list_of(&s->p, c.tail) >= 0);
    walk(s, c.head);
    if (arg & 0x80000000u)
        pool_free_chain(&s->p, c.head);
}

static void op_write(struct state *s, uint32_t arg)
{
    struct pool_writer w;
    uint8_t chunk[256];
    memset(chunk, (int)(arg & 0xff), sizeof(chunk));
    uint32_t n = (uint32_t)((arg >> 8) % (3 * (uint64_t)s->p.max_slice_cap + 1));
    pool_writer_init(&w, &s->p);
    int rc = 0;
    for (uint32_t done = 0; done < n && rc == 0;) {
        uint32_t k = n - done < sizeof(chunk) ? n - done : (uint32_t)sizeof(chunk);
        rc = pool_writer_write(&w, chunk, k);
        done += k;
    }
    if (rc == 0)
        rc = pool_writer_touch(&w);
    uint32_t first;
    if (rc < 0 || (arg & 0x80000000u)) {
        pool_writer_abort(&w);
        return;
    }
    FZ_CHECK(pool_writer_finish(&w, &first) == 0);
    walk(s, first);
    pool_free_chain(&s->p, first);
}

static void op_list_of(const struct state *s, uint32_t arg)
{
    int li = pool_list_of(&s->p, arg);
    if (li < 0) {
        FZ_CHECK(li == SHMIPC_EBADOFFSET);
        return;
    }
    const struct pool_list *l = &s->p.lists[li];
    FZ_CHECK(arg >= l->region_off && (arg - l->region_off) % l->stride == 0);
    FZ_CHECK((arg - l->region_off) / l->stride < l->nslices);
    FZ_CHECK((uint64_t)arg + l->stride <= s->size);
}

/* A peer's store into the shared mapping: a u32 at a 4-aligned offset. */
static void op_poke(struct state *s, uint32_t arg)
{
    size_t words = s->size / 4;
    if (words == 0)
        return;
    size_t at = ((arg & 0xffff) % words) * 4;
    uint32_t v = arg >> 16;
    if (v & 0x8000u) /* a small value or an offset-like value */
        v = (v & 0x7fffu) * 4;
    memcpy(s->base + at, &v, sizeof(v));
}

static void run(struct state *s, struct fz *in)
{
    check_layout(s);
    /* The first slice of every list, and one pop and push per list. */
    for (unsigned i = 0; i < s->p.nlists; i++) {
        walk(s, s->p.lists[i].region_off);
        op_pop(s, i);
    }
    while (s->nheld > 0)
        op_push(s, 0);
    for (int i = 0; i < MAX_OPS && fz_left(in) > 0; i++) {
        uint8_t op = fz_u8(in);
        uint32_t arg = fz_u32(in);
        uint64_t bytes;
        uint32_t nslices;
        switch (op % 10) {
        case 0:
            walk(s, arg);
            break;
        case 1:
            if (pool_chain_check(&s->p, arg, &bytes, &nslices) == 0)
                FZ_CHECK(nslices >= 1 && nslices <= s->p.total_slices &&
                         bytes <= (uint64_t)nslices * s->p.max_slice_cap);
            break;
        case 2: {
            int rc = pool_free_chain(&s->p, arg);
            FZ_CHECK(rc < 0 || (uint32_t)rc <= s->p.total_slices);
            break;
        }
        case 3:
            op_pop(s, arg);
            break;
        case 4:
            op_push(s, arg);
            break;
        case 5:
            op_alloc(s, arg);
            break;
        case 6:
            op_write(s, arg);
            break;
        case 7:
            op_list_of(s, arg);
            break;
        case 8:
            op_poke(s, arg);
            break;
        default:
            if (s->nheld > 0)
                walk(s, s->held[arg % s->nheld]);
            break;
        }
    }
    while (s->nheld > 0)
        op_push(s, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz in = {data, size};
    size_t len = fz_u16(&in), got;
    if (len == 0)
        len = fz_left(&in);
    if (len == 0)
        return 0;
    struct state s;
    memset(&s, 0, sizeof(s));
    s.size = len;
    s.base = calloc(1, len);
    FZ_CHECK(s.base != NULL);
    const uint8_t *bytes = fz_bytes(&in, len, &got);
    memcpy(s.base, bytes, got);
    int rc = pool_map(&s.p, s.base, s.size);
    if (rc == 0)
        run(&s, &in);
    else
        FZ_CHECK(rc == SHMIPC_EBADPOOL);
    free(s.base);
    return 0;
}
