/*
 * The buffer pool (see pool.h). The one rule: a value read from the
 * mapping is validated right before it is used as an offset, and only the
 * validated copy is used; nothing read from shared memory is re-read and
 * trusted again.
 *
 * Free lists follow shmipc's algorithm so that a Go or Rust peer popping
 * and pushing on the same lists stays consistent with us: pop decrements
 * the free count first and never takes the last free slice, so pop (which
 * moves head) and push (which moves tail and then links the old tail)
 * never touch the same slice. Free-list links are relative to the list's
 * slice region; message-chain links are absolute offsets in the pool.
 *
 * That algorithm has an ABA hazard: a pop that stalls between reading the
 * head slice's link and its CAS, while the other side pops the whole list
 * round, installs a stale head. Our pops therefore also take a lock word
 * in the list header's spare bytes (the peers leave them zero), so two of
 * our processes never pop the same list at once; the peers pop without it
 * and keep the hazard among themselves and against us.
 */
#include "shm/pool.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

#define POP_RETRIES 200
#define PUSH_RETRIES 65536
/* Waiting for the pop lock: spins, then yields (the holder may be waiting
 * for our core), then short sleeps (it may have been preempted). A lock
 * still held after that costs this allocation the list (the caller tries
 * another, or sends by fallback); one that keeps one value for a second
 * belongs to a holder that died or is hostile, and is taken over. Only the
 * first LOCK_SLEEP_BUDGET timeouts of a list sleep: a peer that holds the
 * lock on purpose costs a server thread at most that many waits. */
#define LOCK_SPINS 128
#define LOCK_YIELDS 16
#define LOCK_SLEEPS 50
#define LOCK_SLEEP_NS 20000
#define LOCK_SLEEP_BUDGET 64
#define LOCK_STALE_NS 1000000000ull

const struct pool_class pool_default_classes[3] = {
    {8172, 50},
    {32748, 30},
    {131052, 20},
};

static int classes_valid(const struct pool_class *classes, unsigned n)
{
    if (n == 0 || n > POOL_MAX_LISTS)
        return 0;
    uint32_t sum = 0;
    for (unsigned i = 0; i < n; i++) {
        if (classes[i].slice_cap == 0 || classes[i].slice_cap % 4 != 0 || classes[i].percent == 0 ||
            classes[i].percent > 100 ||
            classes[i].slice_cap > POOL_MAX_SIZE - SHMIPC_SLICE_HEADER_LEN)
            return 0;
        sum += classes[i].percent;
    }
    return sum <= 100;
}

int pool_layout(size_t size, const struct pool_class *classes, unsigned n, uint32_t *nslices)
{
    if (!classes_valid(classes, n) || size > POOL_MAX_SIZE)
        return -EINVAL;
    uint64_t meta = SHMIPC_POOL_HEADER_LEN + (uint64_t)SHMIPC_LIST_HEADER_LEN * n;
    if (size <= meta)
        return -EINVAL;
    uint64_t region = size - meta;
    for (unsigned i = 0; i < n; i++) {
        uint64_t share = region * classes[i].percent / 100;
        nslices[i] = (uint32_t)(share / (classes[i].slice_cap + (uint64_t)SHMIPC_SLICE_HEADER_LEN));
        if (nslices[i] == 0)
            return -EINVAL;
    }
    return 0;
}

/* Orders list indexes by slice capacity (insertion sort: at most 16). */
static void sort_by_cap(struct pool *p)
{
    for (unsigned i = 0; i < p->nlists; i++)
        p->by_cap[i] = (uint8_t)i;
    for (unsigned i = 1; i < p->nlists; i++) {
        uint8_t v = p->by_cap[i];
        unsigned j = i;
        while (j > 0 && p->lists[p->by_cap[j - 1]].slice_cap > p->lists[v].slice_cap) {
            p->by_cap[j] = p->by_cap[j - 1];
            j--;
        }
        p->by_cap[j] = v;
    }
}

static void list_view(struct pool *p, unsigned i, uint32_t off, uint32_t nslices, uint32_t cap)
{
    struct pool_list *l = &p->lists[i];
    memset(l, 0, sizeof(*l));
    l->hdr = (struct shmipc_list_header *)(p->base + off);
    l->region_off = off + SHMIPC_LIST_HEADER_LEN;
    l->region = p->base + l->region_off;
    l->nslices = nslices;
    l->slice_cap = cap;
    l->stride = cap + SHMIPC_SLICE_HEADER_LEN;
    l->shift = (l->stride & (l->stride - 1)) == 0 ? (uint8_t)__builtin_ctz(l->stride) : 0;
    l->first = p->total_slices;
    p->total_slices += nslices;
    if (cap > p->max_slice_cap)
        p->max_slice_cap = cap;
}

static void init_list(struct pool_list *l)
{
    struct shmipc_list_header *h = l->hdr;
    memset(h, 0, sizeof(*h));
    h->free_count = (int32_t)l->nslices;
    h->nslices = l->nslices;
    h->head = 0;
    h->tail = (l->nslices - 1) * l->stride;
    h->slice_cap = l->slice_cap;
    for (uint32_t k = 0; k < l->nslices; k++) {
        struct shmipc_slice_header *s = (void *)(l->region + (size_t)k * l->stride);
        memset(s, 0, sizeof(*s));
        s->cap = l->slice_cap;
        if (k + 1 < l->nslices) {
            s->next = (k + 1) * l->stride;
            s->flags = SHMIPC_SLICE_HAS_NEXT;
        }
    }
}

int pool_create(struct pool *p, void *base, size_t size, const struct pool_class *classes,
                unsigned n)
{
    uint32_t counts[POOL_MAX_LISTS];
    int rc = pool_layout(size, classes, n, counts);
    if (rc < 0)
        return rc;
    memset(p, 0, sizeof(*p));
    p->base = base;
    p->size = size;
    p->creator = 1;
    p->nlists = n;
    uint64_t off = SHMIPC_POOL_HEADER_LEN;
    for (unsigned i = 0; i < n; i++) {
        list_view(p, i, (uint32_t)off, counts[i], classes[i].slice_cap);
        off += SHMIPC_LIST_HEADER_LEN + (uint64_t)counts[i] * p->lists[i].stride;
    }
    p->end = (uint32_t)off;
    struct shmipc_pool_header *ph = base;
    ph->nlists = (uint16_t)n;
    ph->reserved = 0;
    ph->used = (uint32_t)(off - SHMIPC_POOL_HEADER_LEN);
    for (unsigned i = 0; i < n; i++)
        init_list(&p->lists[i]);
    sort_by_cap(p);
    return 0;
}

int pool_map(struct pool *p, void *base, size_t size)
{
    if (size < SHMIPC_POOL_HEADER_LEN + SHMIPC_LIST_HEADER_LEN || size > POOL_MAX_SIZE)
        return SHMIPC_EBADPOOL;
    memset(p, 0, sizeof(*p));
    p->base = base;
    p->size = size;
    const volatile struct shmipc_pool_header *ph = base;
    uint32_t nlists = ph->nlists;
    uint64_t end = SHMIPC_POOL_HEADER_LEN + (uint64_t)ph->used;
    if (nlists == 0 || nlists > POOL_MAX_LISTS || end > size)
        return SHMIPC_EBADPOOL;
    uint64_t off = SHMIPC_POOL_HEADER_LEN;
    for (unsigned i = 0; i < nlists; i++) {
        if (off + SHMIPC_LIST_HEADER_LEN > end)
            return SHMIPC_EBADPOOL;
        const volatile struct shmipc_list_header *lh = (void *)(p->base + off);
        uint32_t nslices = lh->nslices, cap = lh->slice_cap;
        /* A capacity that is not a multiple of 4 misaligns the slice and
         * list headers after it, and the atomics on their fields (undefined
         * in C; a bus error on aarch64, split locks on x86). */
        if (nslices == 0 || cap == 0 || cap % 4 != 0 ||
            cap > POOL_MAX_SIZE - SHMIPC_SLICE_HEADER_LEN)
            return SHMIPC_EBADPOOL;
        uint64_t bytes = SHMIPC_LIST_HEADER_LEN +
                         (uint64_t)nslices * (cap + (uint64_t)SHMIPC_SLICE_HEADER_LEN);
        if (bytes > end - off)
            return SHMIPC_EBADPOOL;
        list_view(p, i, (uint32_t)off, nslices, cap);
        off += bytes;
    }
    if (off != end)
        return SHMIPC_EBADPOOL;
    p->nlists = nlists;
    p->end = (uint32_t)end;
    sort_by_cap(p);
    return 0;
}

/* A free-list link (region-relative) is valid if it is a slice start. */
/* rel / stride and rel % stride, by shift and mask when the stride is a
 * power of two (the default classes are): a division per slice shows. */
static inline uint32_t slice_no(const struct pool_list *l, uint32_t rel)
{
    return l->shift ? rel >> l->shift : rel / l->stride;
}

static inline uint32_t slice_rem(const struct pool_list *l, uint32_t rel)
{
    return l->shift ? rel & (l->stride - 1) : rel % l->stride;
}

static int rel_valid(const struct pool_list *l, uint32_t rel)
{
    return slice_no(l, rel) < l->nslices && slice_rem(l, rel) == 0;
}

static struct shmipc_slice_header *rel_slice(const struct pool_list *l, uint32_t rel)
{
    return (struct shmipc_slice_header *)(l->region + rel);
}

static int32_t *side_counter(const struct pool *p, struct pool_list *l)
{
    return p->creator ? &l->hdr->creator_count : &l->hdr->mapper_count;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Every acquisition writes a new value, so a value that stays is a holder
 * that does not progress. */
static uint32_t lock_tag(void)
{
    static uint32_t seq;
    uint32_t t = __atomic_load_n(&seq, __ATOMIC_RELAXED);
    if (t == 0) {
        uint32_t seed = ((uint32_t)getpid() << 16) ^ (uint32_t)mono_ns();
        __atomic_compare_exchange_n(&seq, &t, seed | 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    }
    t = __atomic_add_fetch(&seq, 0x9e3779b9u, __ATOMIC_RELAXED);
    return t ? t : 1;
}

/* A bounded wait for another process to make progress: spins, yields,
 * then (within the list's budget) short sleeps. */
struct backoff {
    int i, tries;
};

static int wait_sleeps = 1; /* see pool_set_patient */

void pool_set_patient(int sleeps)
{
    __atomic_store_n(&wait_sleeps, sleeps != 0, __ATOMIC_RELAXED);
}

static void backoff_init(const struct pool_list *l, struct backoff *b)
{
    b->i = 0;
    b->tries = LOCK_SPINS + LOCK_YIELDS;
    if (__atomic_load_n(&wait_sleeps, __ATOMIC_RELAXED) &&
        __atomic_load_n(&l->lock_timeouts, __ATOMIC_RELAXED) < LOCK_SLEEP_BUDGET)
        b->tries += LOCK_SLEEPS;
}

/* Returns 0 once the wait is used up (and charges the list's budget). */
static int backoff_pause(struct pool_list *l, struct backoff *b)
{
    int i = b->i++;
    if (i >= b->tries) {
        __atomic_add_fetch(&l->lock_timeouts, 1, __ATOMIC_RELAXED);
        return 0;
    }
    if (i < LOCK_SPINS) {
        cpu_relax();
    } else if (i < LOCK_SPINS + LOCK_YIELDS) {
        sched_yield();
    } else {
        struct timespec ts = {0, LOCK_SLEEP_NS};
        nanosleep(&ts, NULL);
    }
    return 1;
}

static int pop_lock(struct pool_list *l, uint32_t *tag)
{
    uint32_t *w = &l->hdr->pop_lock;
    uint32_t t = lock_tag(), v;
    struct backoff b;
    backoff_init(l, &b);
    do {
        v = ld32_relaxed(w);
        if (v == 0 && cas32(w, 0, t)) {
            *tag = t;
            return 0;
        }
    } while (backoff_pause(l, &b));
    uint64_t now = mono_ns();
    if (__atomic_load_n(&l->lock_seen, __ATOMIC_RELAXED) != v) {
        __atomic_store_n(&l->lock_seen, v, __ATOMIC_RELAXED);
        __atomic_store_n(&l->lock_seen_ns, now, __ATOMIC_RELAXED);
    } else if (now - __atomic_load_n(&l->lock_seen_ns, __ATOMIC_RELAXED) >= LOCK_STALE_NS &&
               cas32(w, v, t)) {
        __atomic_add_fetch(&l->lock_stolen, 1, __ATOMIC_RELAXED);
        log_warn("pool list of %u-byte slices: pop lock held by another process for over a "
                 "second; taken over", l->slice_cap);
        *tag = t;
        return 0;
    }
    __atomic_add_fetch(&l->lock_busy, 1, __ATOMIC_RELAXED);
    return SHMIPC_ENOBUFS;
}

static void pop_unlock(struct pool_list *l, uint32_t tag)
{
    /* Only if still ours: a holder overruled after a stall must not free
     * the lock of the process that took it over. */
    cas32(&l->hdr->pop_lock, tag, 0);
}

static int pop_locked(struct pool_list *l, uint32_t *rel);

int pool_pop(struct pool *p, unsigned li, uint32_t *off)
{
    if (li >= p->nlists)
        return -EINVAL;
    struct pool_list *l = &p->lists[li];
    uint32_t tag, rel;
    int rc = pop_lock(l, &tag);
    if (rc < 0)
        return rc;
    rc = pop_locked(l, &rel);
    pop_unlock(l, tag);
    if (rc < 0)
        return rc;
    __atomic_add_fetch(side_counter(p, l), 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&l->pops, 1, __ATOMIC_RELAXED);
    *off = l->region_off + rel;
    return 0;
}

/* Up to `want` slices from the head in one swing of the head: the free
 * count is reserved for all at once, the links are followed under the pop
 * lock (no pop of ours can move them), and one CAS takes them all. Stops
 * before a slice without a link (the tail, or a push in progress). The
 * number taken, 0 when the head has no link now (the caller falls back to
 * a single pop, which knows how to wait for one). */
static unsigned pop_many_locked(struct pool_list *l, uint32_t *rels, unsigned want)
{
    struct shmipc_list_header *h = l->hdr;
    int32_t left = __atomic_sub_fetch(&h->free_count, (int32_t)want, __ATOMIC_ACQ_REL);
    if (left < 1) {
        /* The last free slice stays: give back what is not there (the
         * count is the peer's to write: any value may be there). */
        int64_t over = 1 - (int64_t)left;
        if (over > (int64_t)want)
            over = want;
        __atomic_add_fetch(&h->free_count, (int32_t)over, __ATOMIC_ACQ_REL);
        want -= (unsigned)over;
    }
    unsigned got = 0;
    for (int i = 0; i < POP_RETRIES && want > 0; i++) {
        uint32_t head = ld32_acq(&h->head), x = head;
        got = 0;
        while (got < want && rel_valid(l, x)) {
            struct shmipc_slice_header *s = rel_slice(l, x);
            if (!(__atomic_load_n(&s->flags, __ATOMIC_ACQUIRE) & SHMIPC_SLICE_HAS_NEXT))
                break;
            uint32_t next = ld32_relaxed(&s->next);
            if (!rel_valid(l, next))
                break;
            rels[got++] = x;
            x = next;
        }
        if (got == 0)
            break;
        if (cas32(&h->head, head, x)) {
            for (unsigned k = 0; k < got; k++)
                __atomic_store_n(&rel_slice(l, rels[k])->flags, SHMIPC_SLICE_IN_USE,
                                 __ATOMIC_RELEASE);
            break;
        }
        got = 0;
        cpu_relax();
    }
    if (want > got)
        __atomic_add_fetch(&h->free_count, (int32_t)(want - got), __ATOMIC_ACQ_REL);
    return got;
}

int pool_pop_many(struct pool *p, unsigned li, uint32_t *offs, unsigned want)
{
    if (li >= p->nlists)
        return -EINVAL;
    struct pool_list *l = &p->lists[li];
    if (want == 0)
        return 0;
    uint32_t tag;
    int rc = pop_lock(l, &tag);
    if (rc < 0)
        return rc;
    unsigned got = pop_many_locked(l, offs, want);
    if (got == 0) {
        uint32_t rel;
        rc = pop_locked(l, &rel);
        if (rc == 0) {
            offs[0] = rel;
            got = 1;
        }
    }
    pop_unlock(l, tag);
    if (got == 0)
        return rc;
    for (unsigned k = 0; k < got; k++)
        offs[k] += l->region_off;
    __atomic_add_fetch(side_counter(p, l), (int32_t)got, __ATOMIC_RELAXED);
    __atomic_add_fetch(&l->pops, got, __ATOMIC_RELAXED);
    return (int)got;
}

static int pop_locked(struct pool_list *l, uint32_t *rel)
{
    struct shmipc_list_header *h = l->hdr;
    uint32_t head = ld32_acq(&h->head);
    if (__atomic_sub_fetch(&h->free_count, 1, __ATOMIC_ACQ_REL) <= 0) {
        __atomic_add_fetch(&h->free_count, 1, __ATOMIC_ACQ_REL);
        return SHMIPC_ENOBUFS;
    }
    /* From here another free slice is counted besides ours, so a head
     * without a link is a push in progress: worth waiting for. */
    struct backoff link_wait;
    backoff_init(l, &link_wait);
    int rc = SHMIPC_ECONTENDED;
    for (int i = 0; i < POP_RETRIES; i++) {
        if (!rel_valid(l, head)) {
            rc = SHMIPC_ECORRUPT;
            break;
        }
        struct shmipc_slice_header *s = rel_slice(l, head);
        if (!(__atomic_load_n(&s->flags, __ATOMIC_ACQUIRE) & SHMIPC_SLICE_HAS_NEXT)) {
            /* A peer that ignores our lock popped this slice after we read
             * head (head has moved: try again from the new head), or head
             * is the tail while the free count says more slices are free:
             * a push moved tail past it and has not linked it yet. */
            uint32_t now = ld32_acq(&h->head);
            if (now != head) {
                head = now;
                continue;
            }
            if (!backoff_pause(l, &link_wait)) {
                __atomic_add_fetch(&l->link_busy, 1, __ATOMIC_RELAXED);
                rc = SHMIPC_ENOBUFS;
                break;
            }
            i--; /* waiting for the link is not a lost race */
            continue;
        }
        uint32_t next = ld32_relaxed(&s->next);
        if (!rel_valid(l, next)) {
            rc = SHMIPC_ECORRUPT;
            break;
        }
        if (cas32(&h->head, head, next)) {
            __atomic_store_n(&s->flags, SHMIPC_SLICE_IN_USE, __ATOMIC_RELEASE);
            *rel = head;
            return 0;
        }
        head = ld32_acq(&h->head);
        cpu_relax();
    }
    __atomic_add_fetch(&h->free_count, 1, __ATOMIC_ACQ_REL);
    return rc;
}

int pool_list_of(const struct pool *p, uint32_t off)
{
    if (off < SHMIPC_POOL_HEADER_LEN || off >= p->end)
        return SHMIPC_EBADOFFSET;
    for (unsigned i = 0; i < p->nlists; i++) {
        const struct pool_list *l = &p->lists[i];
        if (off < l->region_off)
            continue;
        uint64_t rel = off - l->region_off;
        if (rel >= (uint64_t)l->nslices * l->stride)
            continue;
        return slice_rem(l, (uint32_t)rel) == 0 ? (int)i : SHMIPC_EBADOFFSET;
    }
    return SHMIPC_EBADOFFSET;
}

int pool_slice_index(const struct pool *p, uint32_t off)
{
    int li = pool_list_of(p, off);
    if (li < 0)
        return li;
    const struct pool_list *l = &p->lists[li];
    return (int)(l->first + slice_no(l, off - l->region_off));
}

/* Takes a freed slice's IN_USE flag and resets its header: the list it
 * belongs to, or an error (a double free fails here instead of looping a
 * free list). */
static int release_slice(struct pool *p, uint32_t off)
{
    int li = pool_list_of(p, off);
    if (li < 0)
        return li;
    struct shmipc_slice_header *s = pool_slice(p, off);
    uint8_t old = __atomic_fetch_and(&s->flags, (uint8_t)~SHMIPC_SLICE_IN_USE, __ATOMIC_ACQ_REL);
    if (!(old & SHMIPC_SLICE_IN_USE))
        return SHMIPC_EBADSLICE;
    s->size = 0;
    s->start = 0;
    __atomic_store_n(&s->flags, 0, __ATOMIC_RELEASE);
    return li;
}

void pool_adopt(struct pool *p, uint32_t off)
{
    __atomic_fetch_or(&pool_slice(p, off)->flags, (uint8_t)SHMIPC_SLICE_IN_USE, __ATOMIC_RELAXED);
}

static int link_free(struct pool *p, struct pool_list *l, uint32_t off);
static int link_free_many(struct pool *p, struct pool_list *l, const uint32_t *offs, unsigned n);

int pool_push(struct pool *p, uint32_t off)
{
    int li = release_slice(p, off);
    return li < 0 ? li : link_free(p, &p->lists[li], off);
}

/* Appends released slices of one list to its tail with one CAS: linked
 * among themselves first, the list sees them as it would see that many
 * single pushes. */
static int link_free_many(struct pool *p, struct pool_list *l, const uint32_t *offs, unsigned n)
{
    if (n == 1)
        return link_free(p, l, offs[0]);
    struct shmipc_list_header *h = l->hdr;
    for (unsigned i = 0; i + 1 < n; i++) {
        struct shmipc_slice_header *s = pool_slice(p, offs[i]);
        __atomic_store_n(&s->next, offs[i + 1] - l->region_off, __ATOMIC_RELAXED);
        __atomic_store_n(&s->flags, SHMIPC_SLICE_HAS_NEXT, __ATOMIC_RELEASE);
    }
    uint32_t first = offs[0] - l->region_off, last = offs[n - 1] - l->region_off;
    for (int i = 0; i < PUSH_RETRIES; i++) {
        uint32_t tail = ld32_acq(&h->tail);
        if (!rel_valid(l, tail))
            return SHMIPC_ECORRUPT;
        if (!cas32(&h->tail, tail, last)) {
            cpu_relax();
            continue;
        }
        struct shmipc_slice_header *t = rel_slice(l, tail);
        __atomic_store_n(&t->next, first, __ATOMIC_RELAXED);
        __atomic_fetch_or(&t->flags, SHMIPC_SLICE_HAS_NEXT, __ATOMIC_RELEASE);
        __atomic_add_fetch(&h->free_count, (int32_t)n, __ATOMIC_ACQ_REL);
        __atomic_sub_fetch(side_counter(p, l), (int32_t)n, __ATOMIC_RELAXED);
        __atomic_add_fetch(&l->pushes, n, __ATOMIC_RELAXED);
        return 0;
    }
    return SHMIPC_ECONTENDED;
}

/* Appends a released slice to its list's tail. */
static int link_free(struct pool *p, struct pool_list *l, uint32_t off)
{
    struct shmipc_list_header *h = l->hdr;
    uint32_t rel = off - l->region_off;
    for (int i = 0; i < PUSH_RETRIES; i++) {
        uint32_t tail = ld32_acq(&h->tail);
        if (!rel_valid(l, tail))
            return SHMIPC_ECORRUPT;
        if (!cas32(&h->tail, tail, rel)) {
            cpu_relax();
            continue;
        }
        struct shmipc_slice_header *t = rel_slice(l, tail);
        __atomic_store_n(&t->next, rel, __ATOMIC_RELAXED);
        __atomic_fetch_or(&t->flags, SHMIPC_SLICE_HAS_NEXT, __ATOMIC_RELEASE);
        __atomic_add_fetch(&h->free_count, 1, __ATOMIC_ACQ_REL);
        __atomic_sub_fetch(side_counter(p, l), 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&l->pushes, 1, __ATOMIC_RELAXED);
        return 0;
    }
    return SHMIPC_ECONTENDED;
}

#define GIVE_BATCH 64
#define GIVE_AHEAD 6

static inline void prefetch_header(const struct pool *p, uint32_t off)
{
    if ((size_t)off < p->size)
        __builtin_prefetch(p->base + off, 1);
}

/* ---- the slice cache ----
 * Free lists are FIFO: a pushed slice comes back only after every other
 * free slice of its list, long gone from the CPU caches, and every pop
 * and push bounces the list header's cache line between the processes.
 * With the cache on, a slice we free goes to a small per-list LIFO of
 * this process and our next allocation takes it back while it is still
 * warm (a server answers in the slices of the request it just read). The
 * cache keeps at most an eighth of a list (and POOL_CACHE_MAX), so the
 * peer always finds the rest; it is emptied into the lists when the pool
 * is let go. A cache busy in another thread is skipped, never waited for. */

void pool_cache_enable(struct pool *p)
{
    for (unsigned i = 0; i < p->nlists; i++) {
        uint32_t cap = p->lists[i].nslices / 8;
        p->lists[i].cache_cap = cap < POOL_CACHE_MAX ? cap : POOL_CACHE_MAX;
    }
}

static int cache_trylock(struct pool_list *l)
{
    return __atomic_exchange_n(&l->cache_lock, 1, __ATOMIC_ACQUIRE) == 0;
}

static void cache_unlock(struct pool_list *l)
{
    __atomic_store_n(&l->cache_lock, 0, __ATOMIC_RELEASE);
}

/* A slice from this list's cache, marked in use; 0 or ENOBUFS. */
static int cache_take(struct pool *p, struct pool_list *l, uint32_t *off)
{
    if (l->cache_cap == 0 || !cache_trylock(l))
        return SHMIPC_ENOBUFS;
    int rc = SHMIPC_ENOBUFS;
    uint32_t n = __atomic_load_n(&l->cache_n, __ATOMIC_RELAXED);
    if (n > 0) {
        *off = l->cache[n - 1];
        __atomic_store_n(&l->cache_n, n - 1, __ATOMIC_RELAXED);
        rc = 0;
    }
    cache_unlock(l);
    if (rc == 0) {
        __atomic_store_n(&pool_slice(p, *off)->flags, SHMIPC_SLICE_IN_USE, __ATOMIC_RELEASE);
        __atomic_add_fetch(&l->pops, 1, __ATOMIC_RELAXED);
    }
    return rc;
}

int pool_give(struct pool *p, uint32_t off)
{
    int li = release_slice(p, off);
    if (li < 0)
        return li;
    struct pool_list *l = &p->lists[li];
    if (l->cache_cap > 0 && cache_trylock(l)) {
        uint32_t n = __atomic_load_n(&l->cache_n, __ATOMIC_RELAXED);
        int kept = n < l->cache_cap;
        if (kept) {
            l->cache[n] = off;
            __atomic_store_n(&l->cache_n, n + 1, __ATOMIC_RELAXED);
        }
        cache_unlock(l);
        if (kept) {
            __atomic_add_fetch(&l->pushes, 1, __ATOMIC_RELAXED);
            return 0;
        }
    }
    return link_free(p, l, off);
}


int pool_give_many(struct pool *p, const uint32_t *offs, unsigned n)
{
    /* Slices the cache has no room for, per list, pushed in batches. */
    uint32_t pend[POOL_MAX_LISTS][GIVE_BATCH];
    unsigned npend[POOL_MAX_LISTS] = {0};
    int err = 0;
    /* The headers of a long chain sit a page or more apart, each a cache
     * and TLB miss: ask for the next ones while this one is written. */
    for (unsigned i = 0; i < n && i < GIVE_AHEAD; i++)
        prefetch_header(p, offs[i]);
    for (unsigned i = 0; i < n; i++) {
        if (i + GIVE_AHEAD < n)
            prefetch_header(p, offs[i + GIVE_AHEAD]);
        int li = release_slice(p, offs[i]);
        if (li < 0) {
            err = li;
            continue;
        }
        struct pool_list *l = &p->lists[li];
        if (l->cache_cap > 0 && __atomic_load_n(&l->cache_n, __ATOMIC_RELAXED) < l->cache_cap &&
            cache_trylock(l)) {
            uint32_t k = __atomic_load_n(&l->cache_n, __ATOMIC_RELAXED);
            int kept = k < l->cache_cap;
            if (kept) {
                l->cache[k] = offs[i];
                __atomic_store_n(&l->cache_n, k + 1, __ATOMIC_RELAXED);
            }
            cache_unlock(l);
            if (kept) {
                __atomic_add_fetch(&l->pushes, 1, __ATOMIC_RELAXED);
                continue;
            }
        }
        pend[li][npend[li]++] = offs[i];
        if (npend[li] == GIVE_BATCH) {
            int rc = link_free_many(p, l, pend[li], GIVE_BATCH);
            err = rc < 0 ? rc : err;
            npend[li] = 0;
        }
    }
    for (unsigned li = 0; li < p->nlists; li++) {
        if (npend[li] == 0)
            continue;
        int rc = link_free_many(p, &p->lists[li], pend[li], npend[li]);
        err = rc < 0 ? rc : err;
    }
    return err;
}

void pool_cache_flush(struct pool *p)
{
    for (unsigned i = 0; i < p->nlists; i++) {
        struct pool_list *l = &p->lists[i];
        if (l->cache_cap == 0)
            continue;
        uint32_t off;
        /* Taken out as a pop, handed back as a push: the counters agree. */
        while (cache_take(p, l, &off) == 0)
            if (pool_push(p, off) < 0)
                break; /* the peer scribbled on it: leave it */
    }
}

uint32_t pool_cached(const struct pool *p)
{
    uint32_t n = 0;
    for (unsigned i = 0; i < p->nlists; i++)
        n += __atomic_load_n(&p->lists[i].cache_n, __ATOMIC_RELAXED);
    return n;
}

/* Our cache first, then the shared list. */
static int take(struct pool *p, unsigned li, uint32_t *off)
{
    if (cache_take(p, &p->lists[li], off) == 0)
        return 0;
    return pool_pop(p, li, off);
}

/* Links `off` after `prev` as a chain member (absolute next). */
static void chain_link(struct pool *p, uint32_t prev, uint32_t off)
{
    struct shmipc_slice_header *s = pool_slice(p, prev);
    s->next = off;
    __atomic_store_n(&s->flags, SHMIPC_SLICE_IN_USE | SHMIPC_SLICE_HAS_NEXT, __ATOMIC_RELAXED);
}

static void chain_add(struct pool *p, struct pool_chain *c, uint32_t off)
{
    if (c->nslices == 0)
        c->head = off;
    else
        chain_link(p, c->tail, off);
    c->tail = off;
    c->nslices++;
    c->cap += p->lists[pool_list_of(p, off)].slice_cap;
}

/* Frees slices popped into a chain that never left this process: their
 * links were written here and the chain is walked by count, not by flags. */
static void chain_release(struct pool *p, uint32_t head, uint32_t n)
{
    uint32_t off = head;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t next = pool_slice(p, off)->next;
        pool_give(p, off);
        if (i + 1 < n && pool_list_of(p, next) < 0)
            return; /* the peer rewrote a link of ours; leak rather than trust it */
        off = next;
    }
}

static int alloc_single(struct pool *p, uint32_t size, uint32_t *off)
{
    for (unsigned k = 0; k < p->nlists; k++) {
        unsigned li = p->by_cap[k];
        if (p->lists[li].slice_cap >= size && take(p, li, off) == 0)
            return 0;
    }
    return SHMIPC_ENOBUFS;
}

static int alloc_chain(struct pool *p, uint32_t size, struct pool_chain *c)
{
    uint64_t got = 0;
    for (unsigned k = p->nlists; k-- > 0 && got < size;) {
        unsigned li = p->by_cap[k];
        uint32_t cap = p->lists[li].slice_cap, off, offs[GIVE_BATCH];
        while (got < size && cache_take(p, &p->lists[li], &off) == 0) {
            chain_add(p, c, off);
            got += cap;
        }
        while (got < size) {
            uint64_t need = (size - got + cap - 1) / cap;
            int n = pool_pop_many(p, li, offs, need < GIVE_BATCH ? (unsigned)need : GIVE_BATCH);
            if (n <= 0)
                break;
            for (int i = 0; i < n; i++)
                chain_add(p, c, offs[i]);
            got += (uint64_t)n * cap;
        }
    }
    return got >= size ? 0 : SHMIPC_ENOBUFS;
}

static int alloc_into(struct pool *p, uint32_t size, struct pool_chain *c)
{
    if (size == 0)
        size = 1;
    uint32_t off;
    if (size <= p->max_slice_cap && alloc_single(p, size, &off) == 0) {
        chain_add(p, c, off);
        return 0;
    }
    return alloc_chain(p, size, c);
}

int pool_alloc(struct pool *p, uint32_t size, struct pool_chain *out)
{
    memset(out, 0, sizeof(*out));
    int rc = alloc_into(p, size, out);
    if (rc < 0) {
        chain_release(p, out->head, out->nslices);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}

int pool_chain_extend(struct pool *p, struct pool_chain *c, uint32_t size)
{
    struct pool_chain more;
    int rc = pool_alloc(p, size, &more);
    if (rc < 0)
        return rc;
    if (c->nslices == 0) {
        *c = more;
        return 0;
    }
    chain_link(p, c->tail, more.head);
    c->tail = more.tail;
    c->nslices += more.nslices;
    c->cap += more.cap;
    return 0;
}

void pool_walk_init(struct pool_walk *w, const struct pool *p, uint32_t first)
{
    w->p = p;
    w->next = first;
    w->more = 1;
    w->count = 0;
}

int pool_walk_next(struct pool_walk *w, struct pool_seg *seg)
{
    if (!w->more)
        return 0;
    const struct pool *p = w->p;
    uint32_t off = w->next;
    int li = pool_list_of(p, off);
    if (li < 0)
        return li;
    if (++w->count > p->total_slices)
        return SHMIPC_ECHAINLOOP;
    const volatile struct shmipc_slice_header *s = (void *)(p->base + off);
    uint32_t cap = s->cap, size = s->size, start = s->start, next = s->next;
    uint8_t flags = s->flags;
    const struct pool_list *l = &p->lists[li];
    uint32_t lcap = l->slice_cap;
    if (cap != lcap || start > lcap || size > lcap - start)
        return SHMIPC_EBADSLICE;
    /* IN_USE is advisory on the wire: a peer that reuses the slice it has
     * just read clears it and publishes the slice again. A free list's
     * tail is free for certain, though: that one is refused. */
    int reused = !(flags & SHMIPC_SLICE_IN_USE);
    if (reused && ld32_acq(&l->hdr->tail) == off - l->region_off)
        return SHMIPC_EBADSLICE;
    seg->off = off;
    seg->data = p->base + off + SHMIPC_SLICE_HEADER_LEN + start;
    seg->len = size;
    seg->reused = reused;
    w->more = (flags & SHMIPC_SLICE_HAS_NEXT) != 0;
    w->next = next;
    return 1;
}

int pool_chain_check(const struct pool *p, uint32_t first, uint64_t *bytes, uint32_t *nslices)
{
    struct pool_walk w;
    struct pool_seg seg;
    uint64_t total = 0;
    int rc;
    pool_walk_init(&w, p, first);
    while ((rc = pool_walk_next(&w, &seg)) > 0)
        total += seg.len;
    if (rc < 0)
        return rc;
    if (bytes != NULL)
        *bytes = total;
    if (nslices != NULL)
        *nslices = w.count;
    return 0;
}

int pool_free_chain(struct pool *p, uint32_t first)
{
    struct pool_walk w;
    struct pool_seg seg;
    int rc, freed = 0;
    pool_walk_init(&w, p, first);
    while ((rc = pool_walk_next(&w, &seg)) > 0) {
        if (seg.reused)
            pool_adopt(p, seg.off);
        /* The walk already copied this slice's next: pushing it is safe. */
        int prc = pool_push(p, seg.off);
        if (prc < 0)
            return prc;
        freed++;
    }
    return rc < 0 ? rc : freed;
}

int64_t pool_outstanding(const struct pool *p)
{
    int64_t n = 0;
    for (unsigned i = 0; i < p->nlists; i++)
        n += (int64_t)(__atomic_load_n(&p->lists[i].pops, __ATOMIC_RELAXED) -
                       __atomic_load_n(&p->lists[i].pushes, __ATOMIC_RELAXED));
    return n;
}

int32_t pool_free_count(const struct pool *p, unsigned li)
{
    if (li >= p->nlists)
        return -EINVAL;
    return __atomic_load_n(&p->lists[li].hdr->free_count, __ATOMIC_RELAXED);
}

uint64_t pool_bytes_in_use(const struct pool *p)
{
    uint64_t used = 0;
    for (unsigned i = 0; i < p->nlists; i++) {
        int32_t f = pool_free_count(p, i);
        uint32_t free_slices = f < 0 ? 0 : (uint32_t)f;
        if (free_slices > p->lists[i].nslices)
            free_slices = p->lists[i].nslices;
        used += (uint64_t)(p->lists[i].nslices - free_slices) * p->lists[i].slice_cap;
    }
    return used;
}

/* ---- writer ---- */

void pool_writer_init(struct pool_writer *w, struct pool *p)
{
    memset(w, 0, sizeof(*w));
    w->p = p;
}

static uint32_t cur_room(const struct pool_writer *w)
{
    if (w->chain.nslices == 0)
        return 0;
    return w->p->lists[pool_list_of(w->p, w->cur)].slice_cap - w->cur_len;
}

/* Moves to the slice after `cur`, allocating for `need` bytes if `cur` is
 * the chain's last. Links inside our own chain are validated before use:
 * the peer can write them. */
static int advance(struct pool_writer *w, uint32_t need)
{
    struct pool *p = w->p;
    if (w->chain.nslices == 0 || w->cur == w->chain.tail) {
        uint32_t old_tail = w->chain.tail;
        int had = w->chain.nslices != 0;
        int rc = pool_chain_extend(p, &w->chain, need);
        if (rc < 0)
            return rc;
        w->cur = had ? pool_slice(p, old_tail)->next : w->chain.head;
    } else {
        uint32_t next = pool_slice(p, w->cur)->next;
        if (pool_list_of(p, next) < 0)
            return SHMIPC_ECORRUPT;
        w->cur = next;
    }
    if (pool_list_of(p, w->cur) < 0)
        return SHMIPC_ECORRUPT;
    w->cur_len = 0;
    pool_slice(p, w->cur)->size = 0;
    pool_slice(p, w->cur)->start = 0;
    return 0;
}

int pool_writer_write(struct pool_writer *w, const void *data, size_t n)
{
    const uint8_t *src = data;
    if (n > UINT32_MAX || w->total + n > UINT32_MAX)
        return -EMSGSIZE;
    while (n > 0) {
        uint32_t room = cur_room(w);
        if (room == 0) {
            int rc = advance(w, (uint32_t)n);
            if (rc < 0)
                return rc;
            room = cur_room(w);
        }
        uint32_t k = n < room ? (uint32_t)n : room;
        if (src != NULL)
            memcpy(pool_slice_data(w->p, w->cur) + w->cur_len, src, k);
        w->cur_len += k;
        pool_slice(w->p, w->cur)->size = w->cur_len;
        w->total += k;
        if (src != NULL)
            src += k;
        n -= k;
    }
    return 0;
}

int pool_writer_reserve(struct pool_writer *w, size_t n, void **ptr)
{
    if (n == 0 || n > w->p->max_slice_cap || w->total + n > UINT32_MAX)
        return -EMSGSIZE;
    if (cur_room(w) < n) {
        /* Contiguous: a fresh single slice, never a chain. */
        int rc;
        uint32_t off;
        if ((rc = alloc_single(w->p, (uint32_t)n, &off)) < 0)
            return rc;
        chain_add(w->p, &w->chain, off);
        w->cur = off;
        w->cur_len = 0;
        pool_slice(w->p, off)->size = 0;
        pool_slice(w->p, off)->start = 0;
    }
    *ptr = pool_slice_data(w->p, w->cur) + w->cur_len;
    w->cur_len += (uint32_t)n;
    pool_slice(w->p, w->cur)->size = w->cur_len;
    w->total += n;
    return 0;
}

int pool_writer_touch(struct pool_writer *w)
{
    if (w->chain.nslices != 0)
        return 0;
    int rc = advance(w, 1);
    if (rc == 0)
        pool_slice(w->p, w->cur)->size = 0;
    return rc;
}

int pool_writer_finish(struct pool_writer *w, uint32_t *first)
{
    if (w->chain.nslices == 0)
        return SHMIPC_EBADSLICE;
    /* Every allocation covers exactly the rest of one write, so the last
     * slice is the one being filled, and its flags are IN_USE since its
     * pop: nothing is written here, which matters because the chain may
     * be published (and freed by the peer) right after. */
    *first = w->chain.head;
    pool_writer_init(w, w->p);
    return 0;
}

void pool_writer_abort(struct pool_writer *w)
{
    if (w->chain.nslices != 0)
        chain_release(w->p, w->chain.head, w->chain.nslices);
    pool_writer_init(w, w->p);
}
