/*
 * The attacks. Each case opens its own sessions (own connection, pool and
 * queue), does one kind of harm, and declares what the server must do:
 * refuse the handshake, close the session (with the reason it must log),
 * or, for the few cases where that is correct, keep it open. The runner in
 * hostile.c then checks that the server is alive, that the counters and
 * log lines appeared, and that the good client saw nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hostile.h"
#include "proto/event.h"
#include "proto/handshake.h"
#include "proto/sock.h"
#include "shm/atomics.h"
#include "shmipc/errors.h"

#define NEVER_READS_STREAMS 200
#define NEVER_READS_REQ (16u << 10)
#define NEVER_READS_BYTES (256ull << 20)
#define NEVER_READS_MS 30000
#define RSS_BOUND_KIB (64 * 1024)

void case_fail(struct case_ctx *c, const char *fmt, ...)
{
    if (c->fail[0] != '\0')
        return; /* the first failure says most */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->fail, sizeof(c->fail), fmt, ap);
    va_end(ap);
}

void case_expect_reason(struct case_ctx *c, int min, const char *fmt, ...)
{
    char text[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    for (int i = 0; i < c->nreasons; i++) {
        if (strcmp(c->reasons[i].text, text) == 0) {
            c->reasons[i].min += min;
            return;
        }
    }
    if (c->nreasons == CASE_MAX_REASONS) {
        case_fail(c, "internal: more than %d distinct reasons", CASE_MAX_REASONS);
        return;
    }
    snprintf(c->reasons[c->nreasons].text, sizeof(c->reasons[0].text), "%s", text);
    c->reasons[c->nreasons++].min = min;
}

/* ---- reasons as the servers word them ---- */

static const char *why2(const char *what, int code)
{
    static char b[4][200];
    static unsigned k;
    char *s = b[k++ % 4];
    snprintf(s, sizeof(b[0]), "%s: %s", what, shmipc_strerror(code));
    return s;
}

static const char *bad_chain(int code)
{
    return why2("bad slice chain in a queue element", code);
}

static const char *bad_event(int code)
{
    return why2("bad event from the peer", code);
}

static const char *map_failed(int code)
{
    return why2("mapping the shared memory failed", code);
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---- expectations ---- */

/* The server must end a bad session for `why` within ms: close it, or
 * (refused) turn its handshake down, which closes the socket too. */
static void expect_end(struct case_ctx *c, struct evil *e, const char *label, int refused,
                       const char *why, int ms)
{
    const char *how = refused ? "refused" : "closed";
    if (refused)
        c->hs_refused++;
    else
        c->closed++;
    case_expect_reason(c, 1, "%s: %s", how, why);
    snprintf(c->outcome, sizeof(c->outcome), "%s", how);
    if (!evil_wait_closed(e, ms))
        case_fail(c, "%s: the %s is still open %d ms later", label,
                  refused ? "connection" : "session", ms);
    evil_close(e);
}

static void expect_close(struct case_ctx *c, struct evil *e, const char *label, const char *why)
{
    expect_end(c, e, label, 0, why, H_CLOSE_MS);
}

static void expect_refuse(struct case_ctx *c, struct evil *e, const char *label, const char *why)
{
    expect_end(c, e, label, 1, why, H_CLOSE_MS);
}

/* The server may have closed the socket already (what the case expects),
 * so only other errors of a send fail the case. -1 when they did. */
static int check_sent(struct case_ctx *c, const char *label, const char *what, int rc)
{
    if (rc < 0 && rc != -EPIPE && rc != -ECONNRESET) {
        case_fail(c, "%s: %s: %s", label, what, shmipc_strerror(rc));
        return -1;
    }
    return 0;
}

/* ---- a bad session's own setup ---- */

/* Our memory: a pool of `bytes` in `classes` (NULL: the default ones) and
 * queues of qcap elements. */
struct mem {
    size_t bytes;
    const struct pool_class *classes;
    unsigned nclasses;
    uint32_t qcap;
};

static const struct mem mem_default = {EVIL_POOL_DEFAULT, NULL, 0, EVIL_QCAP_DEFAULT};

/* How far the setup goes before the attack starts. */
enum upto { UPTO_CONNECT, UPTO_FD_MSG, UPTO_SESSION };

/* Memory in memfds as m says, a connection to addr and the memfd
 * handshake up to `upto`; on failure the case fails and e is closed. */
static int setup(struct case_ctx *c, struct evil *e, const char *label, const char *addr,
                 const struct mem *m, enum upto upto)
{
    evil_init(e);
    int rc = m->classes != NULL
                 ? evil_mem_memfd_classes(e, m->bytes, m->classes, m->nclasses, m->qcap)
                 : evil_mem_memfd(e, m->bytes, m->qcap);
    if (rc == 0)
        rc = evil_connect(e, addr);
    if (rc == 0 && upto == UPTO_FD_MSG)
        rc = evil_hs_until_fds(e);
    if (rc == 0 && upto == UPTO_SESSION)
        rc = evil_hs_memfd(e);
    if (rc < 0) {
        case_fail(c, "%s: setting up: %s", label, shmipc_strerror(rc));
        evil_close(e);
    }
    return rc;
}

/* A session with the default memory on the unix service. */
static int open_session(struct case_ctx *c, struct evil *e, const char *label)
{
    return setup(c, e, label, c->t->unix_addr, &mem_default, UPTO_SESSION);
}

/* A valid request and its echo on stream id: the controls before and
 * after an attack. On failure the case fails. */
static int roundtrip(struct case_ctx *c, struct evil *e, const char *label, uint32_t id,
                     const char *text)
{
    char why[200];
    int rc = evil_roundtrip(e, id, text, strlen(text), H_IO_MS, why, sizeof(why));
    if (rc < 0)
        case_fail(c, "%s: %s", label, why);
    return rc;
}

/* A session that first answers one valid request (the attack needs a
 * working one); on failure the case fails and e is closed. */
static int open_working_session(struct case_ctx *c, struct evil *e, const char *label, uint32_t id,
                                const char *text)
{
    if (open_session(c, e, label) < 0)
        return -1;
    if (roundtrip(c, e, label, id, text) < 0) {
        evil_close(e);
        return -1;
    }
    return 0;
}

/* A proper session, one round trip, closed again: the server still
 * serves. On failure the case fails. */
static void check_valid_session(struct case_ctx *c, const char *label, const char *text)
{
    struct evil e;
    if (open_session(c, &e, label) < 0)
        return;
    roundtrip(c, &e, label, 2, text);
    evil_close(&e);
}

/* ---- queue elements and the slices they name ---- */

static struct shmipc_slice_header *slice(struct evil *e, uint32_t off)
{
    return pool_slice(&e->pool, off);
}

/* Absolute offset of slice k of list li. */
static uint32_t slice_at(struct evil *e, unsigned li, uint32_t k)
{
    return e->pool.lists[li].region_off + k * e->pool.lists[li].stride;
}

/* A popped slice with `size` bytes of data, IN_USE, no next. */
static int filled_slice(struct case_ctx *c, struct evil *e, unsigned li, uint32_t size,
                        uint32_t *off)
{
    int rc = evil_pop(e, li, off);
    if (rc < 0) {
        case_fail(c, "popping a slice of our own pool: %s", shmipc_strerror(rc));
        return rc;
    }
    memset(pool_slice_data(&e->pool, *off), 'x', size);
    struct shmipc_slice_header *s = slice(e, *off);
    s->size = size;
    s->start = 0;
    s->next = 0;
    s->flags = SHMIPC_SLICE_IN_USE;
    return 0;
}

/* Shapes the slices s[] (filled as the attack asked) and leaves in s[0]
 * the offset the element names. NULL, or why our own pool does not fit
 * the attack. */
typedef const char *(*prep_fn)(struct evil *e, uint32_t *s);

/* The element attacks, grouped by the case that runs them. */
enum elem_group {
    G_OFFSET_RANGE, /* elem_offset_out_of_range */
    G_OFFSET_ALIGN, /* elem_offset_misaligned */
    G_SIZE,         /* slice_size_over_cap */
    G_START,        /* slice_start_plus_size_over_cap */
    G_CAP,          /* slice_cap_lies */
    G_LOOP,         /* chain_loop */
    G_SELF_LOOP,    /* chain_self_loop */
    G_INTO_FREE,    /* chain_into_free_slice */
    G_OTHER_LIST,   /* chain_into_other_list */
};

/* One session publishes an element naming what `prep` left in s[0]; the
 * server must close it for bad_chain(code). */
struct elem_attack {
    enum elem_group group;
    const char *label;
    const char *lists; /* a slice filled with `fill` bytes from each list named, in order */
    uint32_t fill;
    prep_fn prep;
    int code;
};

static void bad_element(struct case_ctx *c, const struct elem_attack *a)
{
    struct evil e;
    if (open_session(c, &e, a->label) < 0)
        return;
    uint32_t s[4] = {0};
    int rc = 0;
    for (unsigned i = 0; rc == 0 && a->lists[i] != '\0'; i++)
        rc = filled_slice(c, &e, (unsigned)(a->lists[i] - '0'), a->fill, &s[i]);
    const char *unfit = rc == 0 ? a->prep(&e, s) : NULL;
    if (unfit != NULL)
        case_fail(c, "%s: %s", a->label, unfit);
    if (rc < 0 || unfit != NULL) {
        evil_close(&e);
        return;
    }
    rc = evil_put(&e, 2, s[0], SHMIPC_STREAM_OPEN);
    check_sent(c, a->label, "publishing the element", rc);
    expect_close(c, &e, a->label, bad_chain(a->code));
}

/* Runs the element attacks of group g (the table is below the preps). */
static void elem_case(struct case_ctx *c, enum elem_group g);

static const char *prep_far(struct evil *e, uint32_t *s)
{
    (void)e;
    s[0] = 0xfffffff0u;
    return NULL;
}

static const char *prep_pool_end(struct evil *e, uint32_t *s)
{
    s[0] = (uint32_t)e->pr.size; /* one past the mapping */
    return NULL;
}

static const char *prep_pool_header(struct evil *e, uint32_t *s)
{
    (void)e;
    s[0] = 0; /* the pool header itself */
    return NULL;
}

static void case_elem_offset_out_of_range(struct case_ctx *c)
{
    elem_case(c, G_OFFSET_RANGE);
}

static const char *prep_inside_slice(struct evil *e, uint32_t *s)
{
    (void)e;
    s[0] += SHMIPC_SLICE_HEADER_LEN + 4; /* into its data */
    return NULL;
}

static const char *prep_list_header(struct evil *e, uint32_t *s)
{
    s[0] = e->pool.lists[1].region_off - SHMIPC_LIST_HEADER_LEN; /* list 1's header */
    return NULL;
}

static void case_elem_offset_misaligned(struct case_ctx *c)
{
    elem_case(c, G_OFFSET_ALIGN);
}

/* ---- slice headers ---- */

static const char *prep_size_over_cap(struct evil *e, uint32_t *s)
{
    slice(e, s[0])->size = e->pool.lists[0].slice_cap + 1;
    return NULL;
}

static const char *prep_size_huge(struct evil *e, uint32_t *s)
{
    slice(e, s[0])->size = 0xffffffffu;
    return NULL;
}

static void case_slice_size_over_cap(struct case_ctx *c)
{
    elem_case(c, G_SIZE);
}

static const char *prep_start_plus_size(struct evil *e, uint32_t *s)
{
    slice(e, s[0])->start = 16;
    slice(e, s[0])->size = e->pool.lists[0].slice_cap - 8;
    return NULL;
}

static const char *prep_start_wraps(struct evil *e, uint32_t *s)
{
    /* start + size wraps around 2^32 to a small number */
    slice(e, s[0])->start = 0xfffffff0u;
    slice(e, s[0])->size = 0x20;
    return NULL;
}

static void case_slice_start_plus_size_over_cap(struct case_ctx *c)
{
    elem_case(c, G_START);
}

static const char *prep_cap_lies(struct evil *e, uint32_t *s)
{
    /* claims the capacity of the largest class, and data to match */
    slice(e, s[0])->cap = e->pool.lists[2].slice_cap;
    slice(e, s[0])->size = e->pool.lists[0].slice_cap + 4096;
    return NULL;
}

static const char *prep_cap_smaller(struct evil *e, uint32_t *s)
{
    slice(e, s[0])->cap = 16;
    return NULL;
}

static void case_slice_cap_lies(struct case_ctx *c)
{
    elem_case(c, G_CAP);
}

/* ---- chains ---- */

static void link_to(struct evil *e, uint32_t from, uint32_t to)
{
    slice(e, from)->next = to;
    slice(e, from)->flags = SHMIPC_SLICE_IN_USE | SHMIPC_SLICE_HAS_NEXT;
}

static const char *prep_loop(struct evil *e, uint32_t *s)
{
    link_to(e, s[0], s[1]);
    link_to(e, s[1], s[0]);
    return NULL;
}

static const char *prep_long_loop(struct evil *e, uint32_t *s)
{
    /* A -> B -> C -> D -> B: the loop starts after the head. */
    for (int i = 0; i < 3; i++)
        link_to(e, s[i], s[i + 1]);
    link_to(e, s[3], s[1]);
    return NULL;
}

static void case_chain_loop(struct case_ctx *c)
{
    elem_case(c, G_LOOP);
}

static const char *prep_self_loop(struct evil *e, uint32_t *s)
{
    link_to(e, s[0], s[0]);
    return NULL;
}

static void case_chain_self_loop(struct case_ctx *c)
{
    elem_case(c, G_SELF_LOOP);
}

static const char *prep_into_free(struct evil *e, uint32_t *s)
{
    /* Slice 5 of the same list was never popped: it is free. */
    uint32_t free_slice = slice_at(e, 0, 5);
    if (slice(e, free_slice)->flags & SHMIPC_SLICE_IN_USE)
        return "our slice 5 is unexpectedly in use";
    link_to(e, s[0], free_slice);
    return NULL;
}

static void case_chain_into_free_slice(struct case_ctx *c)
{
    elem_case(c, G_INTO_FREE);
}

static const char *prep_into_other_list(struct evil *e, uint32_t *s)
{
    /* A free slice of the next size class, with a plausible size. */
    uint32_t other = slice_at(e, 1, 3);
    slice(e, other)->size = 16;
    link_to(e, s[0], other);
    return NULL;
}

static const char *prep_into_list_tail(struct evil *e, uint32_t *s)
{
    /* Into the last slice of the largest list: the free list's tail. */
    link_to(e, s[0], slice_at(e, 2, e->pool.lists[2].nslices - 1));
    return NULL;
}

static void case_chain_into_other_list(struct case_ctx *c)
{
    elem_case(c, G_OTHER_LIST);
}

/* ---- every element attack ---- */

static const struct elem_attack elem_attacks[] = {
    {G_OFFSET_RANGE, "offset 0xfffffff0", "", 0, prep_far, SHMIPC_EBADOFFSET},
    {G_OFFSET_RANGE, "offset = pool size", "", 0, prep_pool_end, SHMIPC_EBADOFFSET},
    {G_OFFSET_RANGE, "offset 0", "", 0, prep_pool_header, SHMIPC_EBADOFFSET},
    {G_OFFSET_ALIGN, "offset inside a slice", "0", 64, prep_inside_slice, SHMIPC_EBADOFFSET},
    {G_OFFSET_ALIGN, "offset of a list header", "", 0, prep_list_header, SHMIPC_EBADOFFSET},
    {G_SIZE, "size = cap + 1", "0", 64, prep_size_over_cap, SHMIPC_EBADSLICE},
    {G_SIZE, "size = 0xffffffff", "0", 64, prep_size_huge, SHMIPC_EBADSLICE},
    {G_START, "start 16 + size cap-8", "0", 64, prep_start_plus_size, SHMIPC_EBADSLICE},
    {G_START, "start + size wrapping", "0", 64, prep_start_wraps, SHMIPC_EBADSLICE},
    {G_CAP, "cap larger than its class", "0", 64, prep_cap_lies, SHMIPC_EBADSLICE},
    {G_CAP, "cap smaller than its class", "1", 64, prep_cap_smaller, SHMIPC_EBADSLICE},
    {G_LOOP, "A->B->A", "00", 32, prep_loop, SHMIPC_ECHAINLOOP},
    {G_LOOP, "A->B->C->D->B", "0011", 32, prep_long_loop, SHMIPC_ECHAINLOOP},
    {G_SELF_LOOP, "A->A", "0", 32, prep_self_loop, SHMIPC_ECHAINLOOP},
    /* IN_USE is advisory (the peers publish reused read slices with it
     * clear): a free slice inside a free list is refused by its link, a
     * region-relative offset that is no slice header; a list's tail by
     * being the tail. */
    {G_INTO_FREE, "A->free slice", "0", 32, prep_into_free, SHMIPC_EBADOFFSET},
    {G_OTHER_LIST, "list 0 -> free slice of list 1", "0", 32, prep_into_other_list,
     SHMIPC_EBADOFFSET},
    {G_OTHER_LIST, "list 1 -> free tail of list 2", "1", 32, prep_into_list_tail, SHMIPC_EBADSLICE},
};

static void elem_case(struct case_ctx *c, enum elem_group g)
{
    for (size_t i = 0; i < NELEM(elem_attacks); i++)
        if (elem_attacks[i].group == g)
            bad_element(c, &elem_attacks[i]);
}

/* ---- lying headers at the handshake ---- */

/* A memfd handshake on addr with memory that `corrupt` (if any) made
 * inconsistent: the server must refuse it for `why`. */
static void bad_handshake_mem(struct case_ctx *c, const char *addr, const char *label,
                              void (*corrupt)(struct evil *e, uint32_t v), uint32_t v,
                              const char *why)
{
    struct evil e;
    if (setup(c, &e, label, addr, &mem_default, UPTO_CONNECT) < 0)
        return;
    if (corrupt != NULL)
        corrupt(&e, v);
    if (evil_hs_memfd(&e) == 0) {
        case_fail(c, "%s: the server accepted the handshake", label);
        evil_close(&e);
        return;
    }
    expect_refuse(c, &e, label, why);
}

/* A lie told in our memory before the handshake: tell(e, v). */
struct mem_lie {
    const char *label;
    void (*tell)(struct evil *e, uint32_t v);
    uint32_t v;
};

static void bad_handshakes_mem(struct case_ctx *c, const struct mem_lie *l, size_t n,
                               const char *why)
{
    for (size_t i = 0; i < n; i++)
        bad_handshake_mem(c, c->t->unix_addr, l[i].label, l[i].tell, l[i].v, why);
}

static struct shmipc_pool_header *pool_hdr(struct evil *e)
{
    return (struct shmipc_pool_header *)e->pr.base;
}

static struct shmipc_list_header *list_hdr(struct evil *e, unsigned li)
{
    return e->pool.lists[li].hdr;
}

static void lie_nlists(struct evil *e, uint32_t v)
{
    pool_hdr(e)->nlists = (uint16_t)v;
}

static void lie_used(struct evil *e, uint32_t v)
{
    (void)v;
    pool_hdr(e)->used = (uint32_t)e->pr.size; /* 8 + used is past the end */
}

static void lie_nslices_more(struct evil *e, uint32_t v)
{
    list_hdr(e, 1)->nslices += v;
}

static void lie_nslices_less(struct evil *e, uint32_t v)
{
    list_hdr(e, 0)->nslices -= v;
}

static void lie_nslices_overflow(struct evil *e, uint32_t v)
{
    (void)v;
    /* nslices * (cap + 20) = 2^33: 0 in 32-bit arithmetic */
    list_hdr(e, 2)->nslices = 0x80000000u / (list_hdr(e, 2)->slice_cap + 20) * 2 + 0x8000;
}

static void lie_slice_cap(struct evil *e, uint32_t v)
{
    list_hdr(e, 0)->slice_cap = v;
}

static void case_pool_counts_lie(struct case_ctx *c)
{
    static const struct mem_lie l[] = {
        {"nlists 5 of 3", lie_nlists, 5},
        {"nlists 0", lie_nlists, 0},
        {"nlists 65535", lie_nlists, 0xffff},
        {"used = pool size", lie_used, 0},
        {"list 1 nslices + 1000", lie_nslices_more, 1000},
        {"list 0 nslices - 1", lie_nslices_less, 1},
        {"list 2 nslices overflowing", lie_nslices_overflow, 0},
        {"list 0 slice_cap 0", lie_slice_cap, 0},
    };
    bad_handshakes_mem(c, l, NELEM(l), map_failed(SHMIPC_EBADPOOL));
}

static void put_cap(uint8_t *hdr, uint32_t cap)
{
    memcpy(hdr + SHMIPC_QUEUE_OFF_CAP, &cap, sizeof(cap));
}

static void lie_qcap_second(struct evil *e, uint32_t v)
{
    put_cap(e->qp.recv.hdr, v);
}

static void lie_qcaps(struct evil *e, uint32_t v)
{
    put_cap(e->qp.send.hdr, v);
    put_cap(e->qp.recv.hdr, v);
}

static void lie_qcounters(struct evil *e, uint32_t v)
{
    (void)v;
    int64_t head = 5, tail = 2; /* tail behind head */
    memcpy(e->qp.send.hdr + SHMIPC_QUEUE_OFF_HEAD, &head, sizeof(head));
    memcpy(e->qp.send.hdr + SHMIPC_QUEUE_OFF_TAIL, &tail, sizeof(tail));
}

static void case_queue_cap_lie(struct case_ctx *c)
{
    static const struct mem_lie l[] = {
        {"second half cap doubled", lie_qcap_second, EVIL_QCAP_DEFAULT * 2},
        {"both caps doubled", lie_qcaps, EVIL_QCAP_DEFAULT * 2},
        {"caps 0", lie_qcaps, 0},
        {"tail behind head", lie_qcounters, 0},
    };
    bad_handshakes_mem(c, l, NELEM(l), map_failed(SHMIPC_EBADQUEUE));
}

/* ---- queue counters after the handshake ---- */

static void store_counter(uint8_t *hdr, unsigned off, int64_t v)
{
    st64a4_rel(hdr + off, v);
}

static void tail_jump(struct case_ctx *c, const char *label, int64_t delta)
{
    struct evil e;
    if (open_working_session(c, &e, label, 2, "before") < 0)
        return;
    store_counter(e.qp.send.hdr, SHMIPC_QUEUE_OFF_TAIL, e.qp.send.own + delta);
    evil_polling(&e);
    expect_close(c, &e, label, "receive queue tail out of range");
}

static void case_queue_tail_jump(struct case_ctx *c)
{
    tail_jump(c, "tail + cap + 1", (int64_t)EVIL_QCAP_DEFAULT + 1);
    tail_jump(c, "tail + 2^40", (int64_t)1 << 40);
    tail_jump(c, "tail negative", -(int64_t)0x1000);
}

static void case_queue_head_jump(struct case_ctx *c)
{
    const char *label = "head + cap + 7";
    struct evil e;
    if (open_working_session(c, &e, label, 3, "before") < 0)
        return;
    /* We consume the server's queue: a head beyond its tail is impossible.
     * The server reads our head when its queue looks full (it keeps the
     * last valid one until then, so nothing is overwritten): we stop
     * taking answers and ask for more than the queue holds. */
    store_counter(e.qp.recv.hdr, SHMIPC_QUEUE_OFF_HEAD, e.qp.recv.own + EVIL_QCAP_DEFAULT + 7);
    int rc = 0;
    for (unsigned i = 0; i < EVIL_QCAP_DEFAULT + 2 && rc == 0; i++)
        rc = evil_request(&e, 2, "answer me", 9, NULL);
    check_sent(c, label, "sending the requests", rc);
    expect_close(c, &e, label, "send queue head out of range");
}

/* Right after AckShareMemory, before the server may have built the
 * session: it checks the queue again when it does, so either the setup
 * fails (counted as a failed handshake) or the session closes. */
static void case_queue_corrupt_after_ack(struct case_ctx *c)
{
    for (int which = 0; which < 2; which++) {
        struct evil e;
        const char *label = which ? "their head jumps" : "our tail jumps";
        if (open_session(c, &e, label) < 0)
            return;
        if (which)
            store_counter(e.qp.recv.hdr, SHMIPC_QUEUE_OFF_HEAD, EVIL_QCAP_DEFAULT + 7);
        else
            store_counter(e.qp.send.hdr, SHMIPC_QUEUE_OFF_TAIL, EVIL_QCAP_DEFAULT + 1);
        evil_polling(&e);
        evil_fallback(&e, 2, SHMIPC_STREAM_OPEN, "answer me", 9);
        c->either++;
        if (!evil_wait_closed(&e, H_CLOSE_MS))
            case_fail(c, "%s: the session is still open %d ms later", label, H_CLOSE_MS);
        evil_close(&e);
    }
    const char *whys[] = {"session setup failed: shared queue layout is invalid",
                          "closed: receive queue tail out of range",
                          "closed: send queue head out of range"};
    for (int i = 0; i < 3; i++)
        snprintf(c->any_reason[i], sizeof(c->any_reason[0]), "%s", whys[i]);
    c->nany = 3;
    snprintf(c->outcome, sizeof(c->outcome), "refused or closed");
}

/* ---- events ---- */

/* One session that sends `raw` (n bytes) after the handshake. */
static void bad_bytes(struct case_ctx *c, const char *label, const void *raw, size_t n,
                      const char *why)
{
    struct evil e;
    if (open_session(c, &e, label) < 0)
        return;
    check_sent(c, label, "sending", evil_write(&e, raw, n));
    expect_close(c, &e, label, why);
}

/* An event header that lies, then zeros, n bytes in all: the server
 * must close the session for bad_event(code). */
struct bad_header {
    const char *label;
    uint32_t length;
    uint16_t magic;
    uint8_t version, type;
    size_t n;
    int code;
};

static void bad_headers(struct case_ctx *c, const struct bad_header *h, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        uint8_t b[16] = {0};
        ev_put_be32(b, h[i].length);
        ev_put_be16(b + 4, h[i].magic);
        b[6] = h[i].version;
        b[7] = h[i].type;
        bad_bytes(c, h[i].label, b, h[i].n, bad_event(h[i].code));
    }
}

static void case_event_huge_length(struct case_ctx *c)
{
    const struct bad_header h[] = {
        {"FallbackData of max + 1", c->t->max_event + 1, SHMIPC_EV_MAGIC, 3,
         SHMIPC_EV_FALLBACK_DATA, 16, SHMIPC_EBIGEVENT},
        {"FallbackData of 4 GiB", 0xffffffffu, SHMIPC_EV_MAGIC, 3, SHMIPC_EV_FALLBACK_DATA, 16,
         SHMIPC_EBIGEVENT},
        {"Polling of 4 GiB", 0xffffffffu, SHMIPC_EV_MAGIC, 3, SHMIPC_EV_POLLING, 8,
         SHMIPC_ESHORTEVENT},
    };
    bad_headers(c, h, NELEM(h));
}

static void case_event_tiny_length(struct case_ctx *c)
{
    static const struct bad_header h[] = {
        {"Polling of length 3", 3, SHMIPC_EV_MAGIC, 3, SHMIPC_EV_POLLING, 8, SHMIPC_ESHORTEVENT},
        {"FallbackData of length 0", 0, SHMIPC_EV_MAGIC, 3, SHMIPC_EV_FALLBACK_DATA, 8,
         SHMIPC_ESHORTEVENT},
        {"StreamClose of length 11", 11, SHMIPC_EV_MAGIC, 3, SHMIPC_EV_STREAM_CLOSE, 11,
         SHMIPC_ESHORTEVENT},
    };
    bad_headers(c, h, NELEM(h));
}

static void case_event_bad_magic(struct case_ctx *c)
{
    static const struct bad_header h[] = {
        {"magic 0x5877", 8, 0x5877, 3, SHMIPC_EV_POLLING, 8, SHMIPC_EBADMAGIC},
        {"all zero", 8, 0, 0, 0, 8, SHMIPC_EBADMAGIC},
        {"version 0", 8, SHMIPC_EV_MAGIC, 0, SHMIPC_EV_POLLING, 8, SHMIPC_EBADVERSION},
    };
    bad_headers(c, h, NELEM(h));
}

static void case_event_unknown_type(struct case_ctx *c)
{
    static const struct bad_header h[] = {
        {"type 10", 8, SHMIPC_EV_MAGIC, 3, 10, 8, SHMIPC_EBADTYPE},
        {"type 200", 8, SHMIPC_EV_MAGIC, 3, 200, 8, SHMIPC_EBADTYPE},
    };
    bad_headers(c, h, NELEM(h));
}

/* A header-only event of `version` and `type` that the session must not
 * carry. */
static void bad_after_handshake(struct case_ctx *c, const char *label, uint8_t version,
                                uint8_t type, const char *why)
{
    uint8_t b[8];
    ev_encode_simple(b, sizeof(b), version, type);
    bad_bytes(c, label, b, sizeof(b), why);
}

static void case_event_after_handshake_not_allowed(struct case_ctx *c)
{
    const char *why = why2("event type not allowed after the handshake", SHMIPC_EPROTO);
    uint8_t b[64];
    int n = ev_encode_shm_meta(b, sizeof(b), 3, SHMIPC_EV_SHM_BY_MEMFD, "q", "b");
    bad_bytes(c, "ShareMemoryByMemfd again", b, (size_t)n, why);
    n = ev_encode_shm_meta(b, sizeof(b), 3, SHMIPC_EV_SHM_BY_PATH, "/dev/shm/q", "/dev/shm/b");
    bad_bytes(c, "ShareMemoryByFilePath again", b, (size_t)n, why);
    bad_after_handshake(c, "ExchangeProtoVersion again", 3, SHMIPC_EV_EXCHANGE_VER, why);
    bad_after_handshake(c, "AckShareMemory", 3, SHMIPC_EV_ACK_SHM, why);
    bad_after_handshake(c, "AckReadyRecvFD", 3, SHMIPC_EV_ACK_READY_RECV_FD, why);
    ev_encode_hot_restart(b, sizeof(b), 3, SHMIPC_EV_HOT_RESTART_ACK, 7);
    bad_bytes(c, "HotRestartAck unasked", b, 16,
              why2("HotRestartAck, but no HotRestart was sent", SHMIPC_EPROTO));
    ev_encode_hot_restart(b, sizeof(b), 3, SHMIPC_EV_HOT_RESTART, 7);
    bad_bytes(c, "HotRestart from a client", b, 16,
              why2("a client sent HotRestart", SHMIPC_EPROTO));
    bad_after_handshake(c, "Polling with version 2 on a v3 session", 2, SHMIPC_EV_POLLING,
                        why2("event version differs from the session's", SHMIPC_EBADVERSION));
}

static void case_fallback_len_8_to_15(struct case_ctx *c)
{
    for (uint32_t len = 8; len <= 15; len++) {
        char label[64];
        snprintf(label, sizeof(label), "FallbackData of length %u", len);
        const struct bad_header h = {
            label, len, SHMIPC_EV_MAGIC, 3, SHMIPC_EV_FALLBACK_DATA, len, SHMIPC_ESHORTEVENT};
        bad_headers(c, &h, 1);
    }
}

/* ---- handshakes ---- */

static int connect_only(struct case_ctx *c, struct evil *e, const char *addr, const char *label)
{
    evil_init(e);
    int rc = evil_connect(e, addr);
    if (rc < 0)
        case_fail(c, "%s: connect: %s", label, shmipc_strerror(rc));
    return rc;
}

static void case_handshake_stop_halfway(struct case_ctx *c)
{
    /* All four stall at once: the server must time each out on its own. */
    struct evil e[4];
    const char *labels[4] = {"half a header", "after the version exchange",
                             "half of ShareMemoryByMemfd", "fd message never sent"};
    int ok[4] = {0};
    uint8_t b[HS_MAX_EVENT];
    for (int i = 0; i < 4; i++) {
        if (connect_only(c, &e[i], c->t->unix_addr, labels[i]) < 0)
            continue;
        int rc = 0;
        ev_encode_simple(b, sizeof(b), 3, SHMIPC_EV_EXCHANGE_VER);
        if (i == 0) {
            rc = evil_write(&e[i], b, 4);
        } else if (i == 1 || i == 2) {
            uint8_t r[8];
            rc = evil_write(&e[i], b, 8);
            if (rc == 0)
                rc = sock_read_exact(e[i].fd, r, 8, sock_deadline(H_IO_MS));
            if (rc == 0 && i == 2) {
                int n = ev_encode_shm_meta(b, sizeof(b), 3, SHMIPC_EV_SHM_BY_MEMFD, "hostile_queue",
                                           "hostile_buffer");
                rc = evil_write(&e[i], b, (size_t)n / 2);
            }
        } else {
            rc = evil_hs_until_fds(&e[i]);
        }
        if (rc < 0)
            case_fail(c, "%s: setting up: %s", labels[i], shmipc_strerror(rc));
        else
            ok[i] = 1;
    }
    for (int i = 0; i < 4; i++) {
        if (!ok[i]) {
            evil_close(&e[i]);
            continue;
        }
        expect_end(c, &e[i], labels[i], 1, "handshake not finished before its deadline",
                   c->t->hs_timeout_ms + H_CLOSE_MS);
    }
}

/* What a bad fd message carries. */
enum fd_kind {
    FD_MEMFDS, /* our memfds, repeated as needed */
    FD_PIPE,   /* a pipe as both */
    FD_SOCKET, /* the pool, then a socket as the queue */
};

/* memfd handshake up to the fd message, then a bad one. */
static void bad_fd_message(struct case_ctx *c, const char *label, uint8_t byte, int nfds,
                           enum fd_kind kind, const char *why)
{
    struct evil e;
    if (setup(c, &e, label, c->t->unix_addr, &mem_default, UPTO_FD_MSG) < 0)
        return;
    int fds[8], extra[2] = {-1, -1}, rc = 0;
    if (kind == FD_PIPE)
        rc = pipe2(extra, O_CLOEXEC);
    else if (kind == FD_SOCKET)
        rc = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, extra);
    if (rc < 0) {
        case_fail(c, "%s: %s", kind == FD_PIPE ? "pipe" : "socketpair", strerror(errno));
        evil_close(&e);
        return;
    }
    for (int i = 0; i < nfds; i++)
        fds[i] = i % 2 == 0 ? e.pr.fd : e.qr.fd;
    if (kind == FD_PIPE) {
        fds[0] = extra[0];
        fds[1] = extra[1];
    } else if (kind == FD_SOCKET) {
        fds[1] = extra[0];
    }
    rc = evil_send_fd_msg(&e, byte, fds, nfds);
    for (int i = 0; i < 2; i++)
        if (extra[i] >= 0)
            close(extra[i]);
    if (check_sent(c, label, "sending the fd message", rc) < 0) {
        evil_close(&e);
        return;
    }
    expect_refuse(c, &e, label, why);
}

static void case_handshake_one_fd(struct case_ctx *c)
{
    bad_fd_message(c, "one fd", 0, 1, FD_MEMFDS, "fd message carried 1 fds");
    bad_fd_message(c, "no fd at all", 0, 0, FD_MEMFDS, "fd message carried 0 fds");
}

static void case_handshake_three_fds(struct case_ctx *c)
{
    const char *why = why2("receiving the memfds failed", SHMIPC_EPROTO);
    bad_fd_message(c, "three fds", 0, 3, FD_MEMFDS, why);
    bad_fd_message(c, "eight fds", 0, 8, FD_MEMFDS, why);
}

static void case_handshake_pipe_fd(struct case_ctx *c)
{
    const char *why = map_failed(SHMIPC_EPATH);
    bad_fd_message(c, "a pipe as both", 0, 2, FD_PIPE, why);
    bad_fd_message(c, "a socket as the queue", 0, 2, FD_SOCKET, why);
}

static void case_handshake_zero_byte_missing(struct case_ctx *c)
{
    bad_fd_message(c, "data byte 0x01", 1, 2, FD_MEMFDS, "fd message carried 2 fds and byte 0x01");
    bad_fd_message(c, "data byte 0xff", 0xff, 2, FD_MEMFDS,
                   "fd message carried 2 fds and byte 0xff");
}

/* ---- file-path handshakes ---- */

static unsigned file_seq;

/* A valid pool and queue in files at <dir>/<prefix>-<tag><n>_{buffer,queue}. */
static int make_files(struct case_ctx *c, struct evil *e, const char *dir, const char *tag,
                      char *bpath, char *qpath, size_t cap)
{
    unsigned n = file_seq++;
    snprintf(bpath, cap, "%s/%s-%s%u_buffer", dir, h_shm_prefix(), tag, n);
    snprintf(qpath, cap, "%s/%s-%s%u_queue", dir, h_shm_prefix(), tag, n);
    evil_init(e);
    int rc = evil_mem_files(e, bpath, qpath, EVIL_POOL_DEFAULT, EVIL_QCAP_DEFAULT);
    if (rc < 0) {
        case_fail(c, "creating %s: %s", bpath, shmipc_strerror(rc));
        evil_close(e);
    }
    return rc;
}

/* A version-2 file-path handshake over unix or tcp naming qpath/bpath,
 * which are not files the server may map: refused. */
static void bad_paths(struct case_ctx *c, struct evil *e, int tcp, const char *what,
                      const char *qpath, const char *bpath)
{
    char label[160];
    snprintf(label, sizeof(label), "%s (%s)", what, tcp ? "tcp" : "unix");
    int rc = evil_connect(e, tcp ? c->t->tcp_addr : c->t->unix_addr);
    if (rc == 0)
        rc = evil_hs_file(e, SHMIPC_PROTO_V2, qpath, bpath);
    if (rc < 0) {
        case_fail(c, "%s: connect/handshake: %s", label, shmipc_strerror(rc));
        evil_close(e);
        return;
    }
    expect_refuse(c, e, label, map_failed(SHMIPC_EPATH));
}

static void case_filepath_outside_dir(struct case_ctx *c)
{
    char under[96];
    snprintf(under, sizeof(under), "valid files under %s", c->t->dir);
    for (int tcp = 0; tcp < 2; tcp++) {
        struct evil e;
        char b[256], q[256];
        if (make_files(c, &e, c->t->dir, "out", b, q, sizeof(b)) < 0)
            return;
        bad_paths(c, &e, tcp, under, q, b);
        evil_init(&e);
        bad_paths(c, &e, tcp, "/dev/shm-evil prefix trick", "/dev/shm-evil/q", "/dev/shm-evil/b");
        evil_init(&e);
        bad_paths(c, &e, tcp, "relative path", "dev/shm/q", "dev/shm/b");
    }
}

static void case_filepath_dotdot(struct case_ctx *c)
{
    for (int tcp = 0; tcp < 2; tcp++) {
        struct evil e;
        char b[256], q[256], dd[300];
        if (make_files(c, &e, "/dev/shm", "dd", b, q, sizeof(b)) < 0)
            return;
        bad_paths(c, &e, tcp, "buffer /dev/shm/../etc/passwd", q, "/dev/shm/../etc/passwd");
        /* A valid pool, then a queue path with "..": the mapped pool must be
         * let go again. */
        if (make_files(c, &e, "/dev/shm", "dd", b, q, sizeof(b)) < 0)
            return;
        snprintf(dd, sizeof(dd), "/dev/shm/../shm/%s", q + strlen("/dev/shm/"));
        bad_paths(c, &e, tcp, "queue via /dev/shm/../shm", dd, b);
        if (make_files(c, &e, "/dev/shm", "dd", b, q, sizeof(b)) < 0)
            return;
        snprintf(dd, sizeof(dd), "/dev/shm/./%s", b + strlen("/dev/shm/"));
        bad_paths(c, &e, tcp, "buffer via /dev/shm/./", q, dd);
    }
}

static void case_filepath_symlink(struct case_ctx *c)
{
    for (int tcp = 0; tcp < 2; tcp++) {
        for (int inside = 0; inside < 2; inside++) {
            struct evil e;
            char b[256], q[256], lb[256], lq[256];
            /* The real files outside the allowed directory, or inside it. */
            if (make_files(c, &e, inside ? "/dev/shm" : c->t->dir, "real", b, q, sizeof(b)) < 0)
                return;
            unsigned n = file_seq++;
            snprintf(lb, sizeof(lb), "/dev/shm/%s-lnk%u_buffer", h_shm_prefix(), n);
            snprintf(lq, sizeof(lq), "/dev/shm/%s-lnk%u_queue", h_shm_prefix(), n);
            if (symlink(b, lb) < 0 || symlink(q, lq) < 0) {
                case_fail(c, "symlink %s: %s", lb, strerror(errno));
                unlink(lb);
                evil_close(&e);
                return;
            }
            bad_paths(c, &e, tcp,
                      inside ? "symlinks in /dev/shm to files in /dev/shm"
                             : "symlinks in /dev/shm to files in /tmp",
                      lq, lb);
            unlink(lb);
            unlink(lq);
        }
    }
}

static void case_filepath_over_tcp_memfd(struct case_ctx *c)
{
    bad_handshake_mem(c, c->t->tcp_addr, "memfd handshake over TCP", NULL, 0,
                      "memfd mode needs a unix socket");
}

/* ---- resource attacks ---- */

static long max_l(long a, long b)
{
    return a > b ? a : b;
}

/* The bound on a target's private memory growth under one session's
 * attack: 64 MiB beyond what the server lets one session buffer by design
 * (its output limit, 2 * max_event + 1 MiB). Under ASan once more: its
 * realloc never grows a block in place, so doubling the output buffer
 * holds the old and the new copy at once. Under TSan four times that. */
static long rss_bound_kib(const struct target *t)
{
    long b = RSS_BOUND_KIB + (long)(t->out_limit >> 10) * (t->asan ? 2 : 1);
    return t->tsan ? 4 * b : b; /* TSan shadows every byte the server touches */
}

struct nr_run {
    uint64_t sent, by_fallback;
    unsigned nstreams;
    int closed;
    const char *stop_why;
    long rss0, peak;
};

/* One never-reading session. parked: first leave one unread answer on
 * every stream (our receive queue full), so that every later answer is a
 * flush the server cannot complete: nothing reaches the socket, and only a
 * bound on what the server holds for us can stop the growth. */
static void never_reads_run(struct case_ctx *c, int parked, struct nr_run *r)
{
    struct target *t = c->t;
    memset(r, 0, sizeof(*r));
    r->stop_why = "all sent";
    r->rss0 = r->peak = target_rss_anon_kib(t, 0);
    struct evil e;
    const struct mem m = {4u << 20, NULL, 0, 16};
    if (setup(c, &e, "never reads", t->unix_addr, &m, UPTO_SESSION) < 0)
        return;
    uint8_t *req = malloc(NEVER_READS_REQ);
    if (req == NULL) {
        evil_close(&e);
        return;
    }
    memset(req, 'r', NEVER_READS_REQ);
    unsigned qcap = 16;
    r->nstreams = t->max_streams > NEVER_READS_STREAMS + qcap + 8 ? NEVER_READS_STREAMS
                                                                  : t->max_streams - qcap - 8;
    uint32_t first_id = 2;
    int stopped = 0;
    if (parked) {
        /* qcap tiny answers fill our receive queue; then one more per
         * attacked stream stays with the server as an unsent flush. */
        for (uint32_t id = 2; id < 2 + qcap + r->nstreams && !stopped; id++)
            stopped = evil_request(&e, id, "p", 1, NULL) < 0;
        first_id = 2 + qcap;
        du_sleep_ms(100);
    }
    uint64_t dl = du_deadline(NEVER_READS_MS);
    while (r->sent < NEVER_READS_BYTES && !stopped) {
        for (uint32_t id = first_id; id < first_id + r->nstreams && !stopped; id++) {
            int rc = evil_request(&e, id, req, NEVER_READS_REQ, NULL);
            if (rc == SHMIPC_ENOBUFS || rc == SHMIPC_ECONTENDED || rc == SHMIPC_EQFULL) {
                /* Our pool is full of answers we do not read: as a real
                 * peer would, send the request on the socket. */
                rc = evil_fallback(&e, id, SHMIPC_STREAM_OPEN, req, NEVER_READS_REQ);
                r->by_fallback += NEVER_READS_REQ;
            }
            if (rc < 0) {
                stopped = 1;
                r->stop_why = rc == SHMIPC_ETIMEDOUT ? "the server stopped reading our socket"
                                                     : "the server closed the session";
                break;
            }
            r->sent += NEVER_READS_REQ;
            if (du_now_ns() >= dl) {
                stopped = 1;
                r->stop_why = "time limit";
            }
        }
        r->peak = max_l(r->peak, target_rss_anon_kib(t, 0));
    }
    free(req);
    /* Let the server work through what it has, still without reading. */
    for (int i = 0; i < 20; i++) {
        du_sleep_ms(50);
        r->peak = max_l(r->peak, target_rss_anon_kib(t, 0));
    }
    r->closed = evil_wait_closed(&e, 500);
    evil_close(&e);
}

static void case_never_reads(struct case_ctx *c)
{
    c->open_ok = 1;
    long bound = rss_bound_kib(c->t);
    struct nr_run r[2];
    int closed = 1;
    size_t n = 0;
    /* One baseline for both sessions: memory the first left with the
     * allocator is not held against the second. */
    long rss0 = target_rss_anon_kib(c->t, 0);
    for (int parked = 0; parked < 2; parked++) {
        never_reads_run(c, parked, &r[parked]);
        r[parked].rss0 = rss0;
        long growth = r[parked].peak - r[parked].rss0;
        closed &= r[parked].closed;
        n += (size_t)snprintf(c->note + n, sizeof(c->note) - n,
                              "%s%s: sent %llu MiB on %u streams, %s, %s, RssAnon +%ld KiB",
                              parked ? "; " : "", parked ? "parked streams" : "fresh streams",
                              (unsigned long long)(r[parked].sent >> 20), r[parked].nstreams,
                              r[parked].stop_why, r[parked].closed ? "closed" : "open", growth);
        if (n >= sizeof(c->note))
            n = sizeof(c->note) - 1;
        if (r[parked].rss0 < 0 || r[parked].peak < 0)
            case_fail(c, "cannot read the target's RssAnon");
        else if (growth > bound)
            case_fail(c, "%s: the target's private memory grew by %ld KiB (bound %ld KiB)",
                      parked ? "parked streams" : "fresh streams", growth, bound);
    }
    /* Closing is not required (the server may also keep refusing our
     * bytes), but a close must say why. */
    int nclosed = r[0].closed + r[1].closed;
    if (nclosed > 0) {
        c->closed += nclosed;
        case_expect_reason(c, nclosed, "closed: peer stopped reading: output limit reached");
    }
    snprintf(c->outcome, sizeof(c->outcome), "%s", closed ? "closed" : "open");
    if (c->fail[0] != '\0') {
        size_t k = strlen(c->fail);
        snprintf(c->fail + k, sizeof(c->fail) - k, " [%s]", c->note);
    }
}

/* Well-formed FallbackData requests as fast as the socket takes them, with
 * every answer read: the server must not buffer without bound what it
 * has not handled yet, nor serve this session alone meanwhile. */
static void case_fallback_flood(struct case_ctx *c)
{
    struct target *t = c->t;
    c->open_ok = 1;
    long rss0 = target_rss_anon_kib(t, 0), peak = rss0;
    struct evil e;
    const struct mem m = {8u << 20, NULL, 0, 256};
    if (setup(c, &e, "flood", t->unix_addr, &m, UPTO_SESSION) < 0)
        return;
    size_t len = 64u << 10;
    uint8_t *req = malloc(len);
    if (req == NULL) {
        evil_close(&e);
        return;
    }
    memset(req, 'f', len);
    uint64_t g0 = __atomic_load_n(&c->good->requests, __ATOMIC_RELAXED);
    uint64_t sent = 0, t0 = du_now_ns(), dl = du_deadline(2000);
    int closed = 0;
    while (du_now_ns() < dl && !closed) {
        for (int i = 0; i < 64 && !closed; i++) {
            closed = evil_fallback(&e, 2 + (uint32_t)(i % 8), SHMIPC_STREAM_OPEN, req, len) < 0;
            sent += len;
        }
        closed |= evil_pump(&e) < 0;
        peak = max_l(peak, target_rss_anon_kib(t, 0));
    }
    double secs = (double)(du_now_ns() - t0) / 1e9;
    uint64_t during = __atomic_load_n(&c->good->requests, __ATOMIC_RELAXED) - g0;
    free(req);
    closed |= evil_wait_closed(&e, 300);
    evil_close(&e);
    long growth = peak - rss0;
    if (closed) {
        /* Allowed (we pipeline harder than we read), but only for this. */
        c->closed++;
        case_expect_reason(c, 1, "closed: peer stopped reading: output limit reached");
    }
    snprintf(c->outcome, sizeof(c->outcome), "%s", closed ? "closed" : "open");
    snprintf(c->note, sizeof(c->note),
             "%llu MiB in %.1f s; good client answered %llu meanwhile; RssAnon +%ld KiB",
             (unsigned long long)(sent >> 20), secs, (unsigned long long)during, growth);
    if (growth > rss_bound_kib(t))
        case_fail(c, "the target's private memory grew by %ld KiB (bound %ld KiB): %s", growth,
                  rss_bound_kib(t), c->note);
    else if (during == 0)
        case_fail(c, "the good client got no answer during the flood: %s", c->note);
}

/* A client that reads everything, but makes the server answer one large
 * message by FallbackData on each of many streams (its pool is too small
 * for them): what the server keeps per stream afterwards must not add up. */
static void case_fallback_retention(struct case_ctx *c)
{
    struct target *t = c->t;
    c->open_ok = 1;
    long rss0 = target_rss_anon_kib(t, 0);
    struct evil e;
    static const struct pool_class tiny[1] = {{4096, 100}};
    static const struct mem m = {64u << 10, tiny, 1, 64};
    if (setup(c, &e, "tiny pool", t->unix_addr, &m, UPTO_SESSION) < 0)
        return;
    size_t len = 512u << 10;
    if (len > t->max_event / 2)
        len = t->max_event / 2;
    uint8_t *req = malloc(len);
    if (req == NULL) {
        evil_close(&e);
        return;
    }
    unsigned nstreams =
        t->max_streams > NEVER_READS_STREAMS + 8 ? NEVER_READS_STREAMS : t->max_streams - 8;
    char why[200];
    unsigned done = 0;
    for (uint32_t i = 0; i < nstreams; i++) {
        memset(req, (int)('a' + i % 26), len);
        int rc = evil_fallback(&e, 2 + i, SHMIPC_STREAM_OPEN, req, len);
        if (rc == 0)
            rc = evil_wait_echo(&e, 2 + i, req, len, H_IO_MS, why, sizeof(why));
        else
            snprintf(why, sizeof(why), "sending: %s", shmipc_strerror(rc));
        if (rc < 0) {
            case_fail(c, "stream %u: %s", 2 + i, why);
            break;
        }
        done++;
    }
    free(req);
    du_sleep_ms(100);
    long rss1 = target_rss_anon_kib(t, 0), growth = rss1 - rss0;
    snprintf(c->outcome, sizeof(c->outcome), "open (as required)");
    snprintf(c->note, sizeof(c->note),
             "%u streams each answered %zu KiB by FallbackData; RssAnon %ld -> %ld KiB (+%ld) "
             "with the session still open",
             done, len >> 10, rss0, rss1, growth);
    if (rss0 < 0 || rss1 < 0)
        case_fail(c, "cannot read the target's RssAnon");
    else if (growth > (c->t->tsan ? 4 : 1) * RSS_BOUND_KIB)
        case_fail(c,
                  "the target keeps %ld KiB more for a session that read everything (bound "
                  "%d KiB): %s",
                  growth, RSS_BOUND_KIB, c->note);
    evil_close(&e);
}

static void case_stream_flood(struct case_ctx *c)
{
    struct target *t = c->t;
    struct evil e;
    const struct mem m = {8u << 20, NULL, 0, 1024};
    if (setup(c, &e, "stream flood", t->unix_addr, &m, UPTO_SESSION) < 0)
        return;
    /* Each FallbackData with status open opens one stream; we read the
     * answers so that only the stream limit can close the session. */
    uint32_t n = t->max_streams + 8;
    int closed = 0;
    for (uint32_t i = 0; i < n && !closed; i++) {
        if (evil_fallback(&e, 2 + i, SHMIPC_STREAM_OPEN, NULL, 0) < 0) {
            closed = 1;
            break;
        }
        if (i % 64 == 63 && evil_pump(&e) < 0)
            closed = 1;
    }
    snprintf(c->note, sizeof(c->note), "%u streams opened by FallbackData (limit %u)", n,
             t->max_streams);
    expect_close(c, &e, "more streams than max_streams",
                 why2("peer opened more streams than allowed", -EMFILE));
}

static void case_truncate_memfd(struct case_ctx *c)
{
    struct evil e;
    if (open_session(c, &e, "truncate") < 0)
        return;
    for (uint32_t id = 2; id < 6; id++) {
        if (roundtrip(c, &e, "traffic before the truncation", id, "some traffic first") < 0) {
            evil_close(&e);
            return;
        }
    }
    /* From here our own mappings are off limits too. */
    if (ftruncate(e.pr.fd, 0) < 0 || ftruncate(e.qr.fd, 0) < 0) {
        case_fail(c, "ftruncate: %s", strerror(errno));
        evil_close(&e);
        return;
    }
    if (c->t->kind == T_SHMIPCD) {
        /* The admin thread reads every session's pool for its stats. */
        struct svc_counters sc;
        if (target_stats(c->t, &sc) < 0)
            case_fail(c, "shmipcctl stats failed after the truncation");
    }
    evil_polling(&e);
    evil_fallback(&e, 7, SHMIPC_STREAM_OPEN, "a request", 9);
    du_sleep_ms(100);
    evil_polling(&e);
    expect_close(c, &e, "truncated pool and queue",
                 why2("peer truncated its shared memory", SHMIPC_ECORRUPT));
}

static void case_double_free(struct case_ctx *c)
{
    struct evil e;
    if (open_session(c, &e, "double free") < 0)
        return;
    /* The chain goes out, is answered and freed by the server; then the
     * same chain is published again. */
    char why[200];
    uint32_t first;
    int rc = evil_request(&e, 2, "first use of this chain", 23, &first);
    if (rc < 0) {
        case_fail(c, "the first request: %s", shmipc_strerror(rc));
        evil_close(&e);
        return;
    }
    if ((rc = evil_wait_echo(&e, 2, "first use of this chain", 23, H_IO_MS, why, sizeof(why))) <
        0) {
        case_fail(c, "the first request's answer: %s", why);
        evil_close(&e);
        return;
    }
    check_sent(c, "double free", "replaying the chain", evil_put(&e, 2, first, SHMIPC_STREAM_OPEN));
    expect_close(c, &e, "the same chain twice", bad_chain(SHMIPC_EBADSLICE));
}

static void case_double_free_batched(struct case_ctx *c)
{
    /* Both elements arrive in one harvest, before the server freed
     * anything: the second names slices the first message still holds. */
    struct evil e;
    if (open_session(c, &e, "double free batched") < 0)
        return;
    struct pool_writer w;
    pool_writer_init(&w, &e.pool);
    uint32_t first;
    int rc = pool_writer_write(&w, "twice in one batch", 18);
    if (rc == 0)
        rc = pool_writer_finish(&w, &first);
    struct shmipc_queue_elem el = {2, first, SHMIPC_STREAM_OPEN};
    if (rc == 0)
        rc = queue_put(&e.qp.send, &el);
    el.stream_id = 3;
    if (rc == 0)
        rc = queue_put(&e.qp.send, &el);
    if (rc == 0)
        rc = evil_polling(&e);
    if (rc < 0) {
        case_fail(c, "publishing: %s", shmipc_strerror(rc));
        evil_close(&e);
        return;
    }
    expect_close(c, &e, "one chain in two messages of a batch", bad_chain(SHMIPC_ESLICEHELD));
}

static void case_close_unknown_stream(struct case_ctx *c)
{
    c->open_ok = 1;
    struct evil e;
    if (open_session(c, &e, "close unknown") < 0)
        return;
    long log0 = target_log_size(c->t);
    int rc = evil_put(&e, 999, 0, SHMIPC_STREAM_CLOSED);
    uint8_t b[16];
    ev_encode_stream_close(b, sizeof(b), 3, 12345);
    if (rc == 0)
        rc = evil_write(&e, b, SHMIPC_EV_STREAM_CLOSE_LEN);
    if (rc == 0)
        rc = evil_fallback(&e, 777, SHMIPC_STREAM_CLOSED, NULL, 0);
    if (rc == 0) /* a status with junk in the high bytes: only the low byte counts */
        rc = evil_put(&e, 888, 0, 0xabcdef00u | SHMIPC_STREAM_CLOSED);
    if (rc < 0) {
        case_fail(c, "sending the closes: %s", shmipc_strerror(rc));
        evil_close(&e);
        return;
    }
    roundtrip(c, &e, "the session must stay open, but a request after the closes", 2,
              "still open?");
    char *log = target_log_since(c->t, log0);
    if (strstr(log, "closing:") != NULL)
        case_fail(c, "the server logged a close for this session");
    free(log);
    snprintf(c->outcome, sizeof(c->outcome), "open (as required)");
    evil_close(&e);
}

static void case_control_valid_sessions(struct case_ctx *c)
{
    /* The harness itself: proper sessions of every kind must work, or the
     * closes seen in the other cases would mean nothing. */
    c->open_ok = 1;
    snprintf(c->outcome, sizeof(c->outcome), "open (as required)");
    check_valid_session(c, "memfd session", "memfd control");
    char why[200];
    struct evil e;
    const char *addrs[2] = {c->t->unix_addr, c->t->tcp_addr};
    for (int i = 0; i < 4; i++) {
        char b[256], q[256];
        uint8_t version = i < 2 ? SHMIPC_PROTO_V2 : SHMIPC_PROTO_V3;
        if (make_files(c, &e, "/dev/shm", "ctl", b, q, sizeof(b)) < 0)
            return;
        int rc = evil_connect(&e, addrs[i % 2]);
        if (rc == 0)
            rc = evil_hs_file(&e, version, q, b);
        if (rc == 0 && evil_roundtrip(&e, 2, "file control", 12, H_IO_MS, why, sizeof(why)) < 0)
            rc = -1;
        else if (rc < 0)
            snprintf(why, sizeof(why), "handshake: %s", shmipc_strerror(rc));
        if (rc < 0)
            case_fail(c, "file-path v%u session over %s: %s", version, i % 2 ? "tcp" : "unix", why);
        evil_close(&e);
    }
}

static void case_pool_freelist_lies(struct case_ctx *c)
{
    /* After the handshake the header counts change (the server must keep
     * its validated snapshot), then every free list points at nonsense:
     * the server must neither crash nor loop, and answer by fallback or
     * close the session. */
    c->open_ok = 1;
    struct evil e;
    if (open_session(c, &e, "free lists") < 0)
        return;
    pool_hdr(&e)->nlists = 16;
    pool_hdr(&e)->used = 0xfffffff0u;
    for (unsigned i = 0; i < e.pool.nlists; i++)
        list_hdr(&e, i)->nslices = 0x7fffffff;
    roundtrip(c, &e, "after the header counts changed", 2, "counts changed");
    for (unsigned i = 0; i < e.pool.nlists; i++) {
        struct shmipc_list_header *l = list_hdr(&e, i);
        l->free_count = 0x7fffffff;
        l->head = 3;           /* misaligned */
        l->tail = 0xfffffff0u; /* out of range */
    }
    char why[200];
    int rc = evil_fallback(&e, 3, SHMIPC_STREAM_OPEN, "nonsense lists", 14);
    if (rc == 0)
        rc = evil_wait_echo(&e, 3, "nonsense lists", 14, H_IO_MS, why, sizeof(why));
    if (rc == SHMIPC_ECLOSED) {
        snprintf(c->outcome, sizeof(c->outcome), "closed");
        snprintf(c->note, sizeof(c->note), "with nonsense free lists the session was closed");
    } else if (rc == 0) {
        snprintf(c->outcome, sizeof(c->outcome), "open");
        snprintf(c->note, sizeof(c->note), "with nonsense free lists it still answers (fallback)");
    } else {
        case_fail(c, "with nonsense free lists the server neither answered nor closed: %s", why);
    }
    evil_close(&e);
}

/* Many connections that never start their handshake. shmipcd (max 64
 * sessions) must refuse those beyond its limit and time out the rest; the
 * library server must keep completing other handshakes meanwhile. */
static void case_handshake_flood(struct case_ctx *c)
{
    struct target *t = c->t;
    int n = t->kind == T_SHMIPCD ? (int)t->max_sessions + 36 : 200;
    struct evil *e = calloc((size_t)n, sizeof(*e));
    if (e == NULL)
        return;
    int opened = 0;
    for (int i = 0; i < n; i++) {
        evil_init(&e[i]);
        if (evil_connect(&e[i], t->unix_addr) < 0)
            break;
        opened++;
    }
    if (opened < n)
        case_fail(c, "only %d of %d connections", opened, n);
    if (t->kind == T_ECHO) /* the flood is still pending: a proper client must get through */
        check_valid_session(c, "a valid session during the flood", "through the flood");
    int still = 0;
    for (int i = 0; i < opened; i++) {
        still += !evil_wait_closed(&e[i], t->hs_timeout_ms + H_CLOSE_MS);
        evil_close(&e[i]);
    }
    free(e);
    if (still > 0)
        case_fail(c, "%d stalled connections still open after the handshake deadline", still);
    /* Lower bounds: the good client holds 3 sessions. */
    int refused = t->kind == T_SHMIPCD ? opened - (int)t->max_sessions + 3 : 0;
    int timed_out = opened - (refused > 0 ? refused : 0) - 3;
    if (refused > 0) {
        c->refused += refused - 2;
        case_expect_reason(c, refused - 2, "connection refused: %u sessions is the limit",
                           t->max_sessions);
    }
    c->hs_refused += timed_out - 2;
    case_expect_reason(c, timed_out - 2, "refused: handshake not finished before its deadline");
    snprintf(c->outcome, sizeof(c->outcome), "%s",
             refused > 0 ? "refused and timed out" : "timed out");
    snprintf(c->note, sizeof(c->note), "%d stalled connections", opened);
    /* And afterwards the server takes sessions again. */
    check_valid_session(c, "a valid session after the flood", "after the flood");
}

/* A session that goes quiet after one request: shmipcd (idle timeout
 * configured) must close it and count it; the library server has no idle
 * timeout and must keep it. */
static void case_idle_session(struct case_ctx *c)
{
    struct target *t = c->t;
    struct evil e;
    if (open_working_session(c, &e, "idle session", 2, "then silence") < 0)
        return;
    if (t->idle_timeout_ms > 0) {
        c->idle_closed++;
        expect_end(c, &e, "idle session", 0, "idle timeout", t->idle_timeout_ms * 2 + H_CLOSE_MS);
        return;
    }
    c->open_ok = 1;
    du_sleep_ms(2500);
    roundtrip(c, &e, "a quiet session was dropped", 3, "still here");
    snprintf(c->outcome, sizeof(c->outcome), "open (as required: no idle timeout)");
    evil_close(&e);
}

const struct hcase h_cases[] = {
    {"control_valid_sessions", case_control_valid_sessions},
    {"elem_offset_out_of_range", case_elem_offset_out_of_range},
    {"elem_offset_misaligned", case_elem_offset_misaligned},
    {"slice_size_over_cap", case_slice_size_over_cap},
    {"slice_start_plus_size_over_cap", case_slice_start_plus_size_over_cap},
    {"slice_cap_lies", case_slice_cap_lies},
    {"chain_loop", case_chain_loop},
    {"chain_self_loop", case_chain_self_loop},
    {"chain_into_free_slice", case_chain_into_free_slice},
    {"chain_into_other_list", case_chain_into_other_list},
    {"pool_counts_lie", case_pool_counts_lie},
    {"pool_freelist_lies", case_pool_freelist_lies},
    {"queue_cap_lie", case_queue_cap_lie},
    {"queue_tail_jump", case_queue_tail_jump},
    {"queue_head_jump", case_queue_head_jump},
    {"queue_corrupt_after_ack", case_queue_corrupt_after_ack},
    {"event_huge_length", case_event_huge_length},
    {"event_tiny_length", case_event_tiny_length},
    {"event_bad_magic", case_event_bad_magic},
    {"event_unknown_type", case_event_unknown_type},
    {"event_after_handshake_not_allowed", case_event_after_handshake_not_allowed},
    {"fallback_len_8_to_15", case_fallback_len_8_to_15},
    {"handshake_stop_halfway", case_handshake_stop_halfway},
    {"handshake_one_fd", case_handshake_one_fd},
    {"handshake_three_fds", case_handshake_three_fds},
    {"handshake_pipe_fd", case_handshake_pipe_fd},
    {"handshake_zero_byte_missing", case_handshake_zero_byte_missing},
    {"filepath_outside_dir", case_filepath_outside_dir},
    {"filepath_dotdot", case_filepath_dotdot},
    {"filepath_symlink", case_filepath_symlink},
    {"filepath_over_tcp_memfd", case_filepath_over_tcp_memfd},
    {"never_reads", case_never_reads},
    {"stream_flood", case_stream_flood},
    {"handshake_flood", case_handshake_flood},
    {"idle_session", case_idle_session},
    {"fallback_retention", case_fallback_retention},
    {"fallback_flood", case_fallback_flood},
    {"truncate_memfd", case_truncate_memfd},
    {"double_free", case_double_free},
    {"double_free_batched", case_double_free_batched},
    {"close_unknown_stream", case_close_unknown_stream},
};

const unsigned h_ncases = sizeof(h_cases) / sizeof(h_cases[0]);
