/*
 * The buffer pool: classes of fixed-size slices in one shared mapping,
 * laid out exactly as shmipc's (PROTOCOL.md section 4).
 *
 * The client creates the pool (pool_create) and both sides pop and push
 * slices on the same lists with the cross-process algorithm. The server
 * maps it (pool_map) and trusts nothing in it: every header field is
 * validated against the mapping once, and every offset the peer can write
 * (list head/tail, a slice's next, a chain the peer hands over) is checked
 * again each time it is used.
 *
 * A struct pool does not own the memory it views; the caller keeps the
 * mapping alive for as long as the pool is used.
 */
#ifndef SHMIPC_SHM_POOL_H
#define SHMIPC_SHM_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "shmipc/wire.h"

#define POOL_MAX_LISTS 16u
#define POOL_MAX_SIZE 0xffffffffu /* offsets on the wire are u32 */

struct pool_class {
    uint32_t slice_cap; /* data bytes per slice, a multiple of 4 (alignment) */
    uint32_t percent;   /* share of the region, 1..100 */
};

/* shmipc's defaults: 8172/50, 32748/30, 131052/20 (each + 20 a power of 2). */
extern const struct pool_class pool_default_classes[3];
#define POOL_DEFAULT_SIZE (32u << 20)

#define POOL_CACHE_MAX 64

struct pool_list {
    struct shmipc_list_header *hdr;
    uint8_t *region;     /* first slice header */
    uint32_t region_off; /* absolute offset of the first slice header */
    uint32_t nslices;    /* validated snapshot */
    uint32_t slice_cap;  /* validated snapshot */
    uint32_t stride;     /* slice_cap + SHMIPC_SLICE_HEADER_LEN */
    uint8_t shift;       /* log2(stride) when a power of two, else 0 */
    uint32_t first;      /* number of this list's first slice in the pool */
    uint64_t pops;       /* process-local accounting, atomic */
    uint64_t pushes;
    uint32_t lock_seen;  /* pop lock value last found held too long, atomic */
    uint64_t lock_seen_ns;
    uint64_t lock_busy;  /* pops refused because the lock stayed held, atomic */
    uint64_t lock_stolen;
    uint64_t link_busy;  /* pops refused: a push stayed between tail and link */
    uint32_t lock_timeouts; /* waits that ran out, atomic */
    /* Slices freed here and kept for our next allocation (pool_give). */
    uint32_t cache_cap;  /* 0: off */
    uint32_t cache_n;
    int cache_lock;      /* try-lock, atomic */
    uint32_t cache[POOL_CACHE_MAX];
};

struct pool {
    uint8_t *base;
    size_t size;
    int creator; /* 1 if created here: selects the header counter (+20/+24) */
    unsigned nlists;
    uint32_t total_slices;
    uint32_t max_slice_cap;
    uint32_t end;                         /* 8 + used: no slice lies beyond */
    struct pool_list lists[POOL_MAX_LISTS]; /* in mapping order */
    uint8_t by_cap[POOL_MAX_LISTS];       /* list indexes, ascending slice_cap */
};

/* Slice counts a pool of `size` bytes would get for these classes;
 * nslices[] has n entries. 0 or -EINVAL (bad classes, too small). */
int pool_layout(size_t size, const struct pool_class *classes, unsigned n, uint32_t *nslices);

/* Lays out a fresh pool in [base, base+size) (client role). */
int pool_create(struct pool *p, void *base, size_t size, const struct pool_class *classes,
                unsigned n);

/* Views a peer-created pool (server role), validating every header.
 * SHMIPC_EBADPOOL when anything does not fit the mapping. */
int pool_map(struct pool *p, void *base, size_t size);

/* Pops one slice from list `li`; *off = absolute offset of its header.
 * SHMIPC_ENOBUFS (the last free slice is never handed out, or another
 * process stayed in the way for the whole bounded wait: holding the pop
 * lock, or between moving the tail and linking it), SHMIPC_ECONTENDED
 * (bounded retries exhausted), SHMIPC_ECORRUPT. */
int pool_pop(struct pool *p, unsigned li, uint32_t *off);
/* The slice cache (off after create and map): pool_give frees a slice
 * into a small per-list stack of this process when there is room, else
 * as pool_push; allocations (pool_alloc, the writer) take from it before
 * the shared lists. pool_cache_flush pushes everything cached back and
 * must run before the pool is let go; pool_cached counts what is held. */
void pool_cache_enable(struct pool *p);
int pool_give(struct pool *p, uint32_t off);
void pool_cache_flush(struct pool *p);
uint32_t pool_cached(const struct pool *p);
/* Up to `want` slices of list `li` at once (one CAS on the head): how
 * many (>= 1), or an error as pool_pop's. */
int pool_pop_many(struct pool *p, unsigned li, uint32_t *offs, unsigned want);
/* pool_give for n slices of any lists; what the cache cannot keep goes
 * back in one push per list and batch. 0, or the last error met (the other
 * slices are freed all the same). */
int pool_give_many(struct pool *p, const uint32_t *offs, unsigned n);
/* The slice at `off` numbered 0 .. total_slices-1 across all lists, or
 * SHMIPC_EBADOFFSET. */
int pool_slice_index(const struct pool *p, uint32_t off);
/* Whether those waits may end in short sleeps (the default) or only spin
 * and yield; process-wide. The fuzz targets turn the sleeps off. */
void pool_set_patient(int sleeps);

/* Takes over a received slice published with IN_USE clear (seg.reused):
 * sets the flag, so that freeing it later works as for any other slice.
 * Only for a slice the caller has just walked and now owns. */
void pool_adopt(struct pool *p, uint32_t off);

/* Frees the slice at `off` into its list. The slice must be IN_USE;
 * SHMIPC_EBADOFFSET / SHMIPC_EBADSLICE otherwise (nothing is pushed). */
int pool_push(struct pool *p, uint32_t off);

/* Index of the list holding the slice header at `off`, or SHMIPC_EBADOFFSET
 * if `off` is not exactly the start of a slice header. */
int pool_list_of(const struct pool *p, uint32_t off);

static inline struct shmipc_slice_header *pool_slice(const struct pool *p, uint32_t off)
{
    return (struct shmipc_slice_header *)(p->base + off);
}

static inline uint8_t *pool_slice_data(const struct pool *p, uint32_t off)
{
    return p->base + off + SHMIPC_SLICE_HEADER_LEN;
}

/* A chain of slices linked by absolute next offsets (HAS_NEXT|IN_USE on
 * all but the last, IN_USE on the last). */
struct pool_chain {
    uint32_t head; /* first slice header */
    uint32_t tail; /* last slice header */
    uint32_t nslices;
    uint64_t cap; /* sum of slice capacities */
};

/* Allocates slices for `size` bytes: one slice from the smallest class that
 * fits and has a free slice; else a chain popped from the largest class
 * down. All or nothing: SHMIPC_ENOBUFS leaves the pool as it was. */
int pool_alloc(struct pool *p, uint32_t size, struct pool_chain *out);

/* Allocates for `size` more bytes and links the new slices after c->tail. */
int pool_chain_extend(struct pool *p, struct pool_chain *c, uint32_t size);

/* One validated piece of a chain. */
struct pool_seg {
    uint32_t off;   /* slice header */
    uint8_t *data;  /* base + off + 20 + start */
    uint32_t len;   /* size */
    int reused;     /* IN_USE was clear: a peer's reused read slice */
};

/* Walks a chain whose links the peer may have written. Every slice is
 * checked before use: header offset, cap == its list's, start + size <=
 * cap, next in range; a chain longer than the pool's slice count is a
 * loop. IN_USE may be clear (the peers reuse a read slice for their next
 * write after zeroing its header: seg.reused tells), unless the slice is
 * its free list's tail. Values are read once into the segment. */
struct pool_walk {
    const struct pool *p;
    uint32_t next;
    int more;
    uint32_t count;
};

void pool_walk_init(struct pool_walk *w, const struct pool *p, uint32_t first);
/* 1 and *seg filled, 0 at the end, or a negative code. */
int pool_walk_next(struct pool_walk *w, struct pool_seg *seg);

/* Validates a whole chain; *bytes and *nslices get its totals. */
int pool_chain_check(const struct pool *p, uint32_t first, uint64_t *bytes, uint32_t *nslices);

/* Pushes every slice of a chain back (reused ones adopted first). Stops at
 * the first invalid link (the slices before it are freed); returns the
 * number freed or a code. */
int pool_free_chain(struct pool *p, uint32_t first);

/* Process-local accounting: slices popped here minus slices pushed here.
 * Over both peers of a pool the sum is 0 when nothing leaked. */
int64_t pool_outstanding(const struct pool *p);

/* Free slices of list `li` as the shared counter says (for stats). */
int32_t pool_free_count(const struct pool *p, unsigned li);

/* Bytes of the pool currently taken (both sides), as the shared free
 * counts say; clamped per list, since a peer can write them. */
uint64_t pool_bytes_in_use(const struct pool *p);

/* Builds a message in pool slices without extra copies: write() copies
 * bytes, reserve() hands out contiguous space. When the current slice is
 * full, the next allocation covers the rest of the current write, as
 * shmipc's writers do. finish() returns the chain's first offset. */
struct pool_writer {
    struct pool *p;
    struct pool_chain chain; /* nslices == 0 while empty */
    uint32_t cur;            /* slice being filled */
    uint32_t cur_len;        /* bytes used in it */
    uint64_t total;
};

void pool_writer_init(struct pool_writer *w, struct pool *p);
/* data NULL: the bytes are counted but not written (zero-touch). */
int pool_writer_write(struct pool_writer *w, const void *data, size_t n);
/* Contiguous space for n bytes (n <= max slice cap), counted as written. */
int pool_writer_reserve(struct pool_writer *w, size_t n, void **ptr);
/* Makes sure the message has a slice (an empty message still needs one). */
int pool_writer_touch(struct pool_writer *w);
/* Ends the message; *first gets its first slice. SHMIPC_EBADSLICE if empty. */
int pool_writer_finish(struct pool_writer *w, uint32_t *first);
/* Frees whatever the writer holds. */
void pool_writer_abort(struct pool_writer *w);

#endif
