/*
 * Cross-process: a forked child maps (through its own fd and mapping) a
 * pool and a queue pair the parent created in memfds, and both sides work
 * on them at once. Every child has a deadline and reports through a pipe.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto/event.h"
#include "shm/pool.h"
#include "shm/queue.h"
#include "shm/region.h"
#include "shmipc/errors.h"
#include "testutil.h"

#define DEADLINE_MS 60000

/* ---- pool: both sides pop and push the same lists ---- */

/* Long enough for many thousands of collisions on the same lists; the
 * result never depends on how many operations fit in the time. */
#define POOL_RUN_NS 2000000000ull
#define POOL_MIN_OPS 100000u
#define HOLD_MAX 8

struct pool_report {
    int64_t outstanding; /* pops minus pushes in that process */
    uint64_t pops;
    uint64_t clobbered; /* a held slice's stamp changed: double allocation */
    int64_t err;
};

struct pool_job {
    int fd;      /* the memfd, to be mapped separately */
    int out;     /* pipe for the report */
    uint32_t id; /* stamp written into held slices */
};

static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Pops and pushes at random, stamping each held slice and checking the
 * stamp before freeing it: a slice handed to both sides would show. */
static void pool_work(struct pool *p, uint32_t id, struct pool_report *rep)
{
    uint32_t held[HOLD_MAX];
    unsigned nheld = 0;
    uint64_t seed = 0x9e3779b97f4a7c15ull ^ id;
    memset(rep, 0, sizeof(*rep));
    uint64_t t_end = tu_now_ns() + POOL_RUN_NS;
    for (uint32_t op = 0; op < POOL_MIN_OPS || (op % 1024 != 0 || tu_now_ns() < t_end); op++) {
        uint64_t r = rng(&seed);
        if (nheld < HOLD_MAX && (nheld == 0 || r % 2 == 0)) {
            uint32_t off;
            int rc = pool_pop(p, (unsigned)(r >> 8) % p->nlists, &off);
            if (rc == 0) {
                uint32_t stamp[2] = {id, op};
                memcpy(pool_slice_data(p, off), stamp, sizeof(stamp));
                held[nheld++] = off;
                rep->pops++;
            } else if (rc != SHMIPC_ENOBUFS) {
                rep->err = rc;
                break;
            }
        } else {
            unsigned k = (unsigned)(r >> 16) % nheld;
            uint32_t off = held[k], stamp[2];
            memcpy(stamp, pool_slice_data(p, off), sizeof(stamp));
            rep->clobbered += stamp[0] != id;
            int rc = pool_push(p, off);
            if (rc < 0) {
                rep->err = rc;
                break;
            }
            held[k] = held[--nheld];
        }
    }
    while (nheld > 0)
        pool_push(p, held[--nheld]);
    rep->outstanding = pool_outstanding(p);
}

static int pool_child(void *arg)
{
    struct pool_job *job = arg;
    struct region r;
    struct pool p;
    struct pool_report rep = {.err = 0};
    region_init(&r);
    int rc = region_map_fd(&r, dup(job->fd), 1, 1u << 30, 0);
    if (rc == 0)
        rc = pool_map(&p, r.base, r.size);
    if (rc == 0)
        pool_work(&p, job->id, &rep);
    else
        rep.err = rc;
    region_close(&r);
    return write(job->out, &rep, sizeof(rep)) == sizeof(rep) ? 0 : 1;
}

/* Walks a free list from head: every slice exactly once, ending at tail. */
static int free_list_intact(const struct pool *p, unsigned li)
{
    const struct pool_list *l = &p->lists[li];
    uint8_t *seen = calloc(l->nslices, 1);
    uint32_t rel = l->hdr->head, n = 0;
    int ok = l->hdr->free_count == (int32_t)l->nslices;
    for (;;) {
        if (rel % l->stride != 0 || rel / l->stride >= l->nslices || seen[rel / l->stride]) {
            ok = 0;
            break;
        }
        seen[rel / l->stride] = 1;
        n++;
        const struct shmipc_slice_header *s = (void *)(l->region + rel);
        ok &= !(s->flags & SHMIPC_SLICE_IN_USE);
        if (rel == l->hdr->tail || !(s->flags & SHMIPC_SLICE_HAS_NEXT))
            break;
        rel = s->next;
    }
    free(seen);
    if (!(ok && n == l->nslices && rel == l->hdr->tail))
        printf("\n    list %u: free_count %d of %u, walked %u, stopped at %u, tail %u, head %u ",
               li, l->hdr->free_count, l->nslices, n, rel, l->hdr->tail, l->hdr->head);
    return ok && n == l->nslices && rel == l->hdr->tail;
}

static void test_pool_concurrent(void)
{
    int fds0 = tu_count_fds(), maps0 = tu_count_maps();
    struct region r;
    struct pool p;
    region_init(&r);
    /* Small lists so both sides keep meeting on the same slices. */
    const struct pool_class classes[2] = {{256, 50}, {1024, 50}};
    CU_ASSERT_FATAL(region_create_memfd(&r, "shmipc-test-pool", 256 << 10, 0) == 0);
    CU_ASSERT_FATAL(pool_create(&p, r.base, r.size, classes, 2) == 0);
    int pfd[2];
    CU_ASSERT_FATAL(pipe(pfd) == 0);
    struct pool_job job = {r.fd, pfd[1], 2};
    pid_t pid = tu_fork(pool_child, &job);
    CU_ASSERT_FATAL(pid > 0);
    struct pool_report mine, theirs;
    pool_work(&p, 1, &mine);
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0);
    close(pfd[1]);
    CU_ASSERT_EQUAL_FATAL(read(pfd[0], &theirs, sizeof(theirs)), (ssize_t)sizeof(theirs));
    close(pfd[0]);

    printf("\n    pool: parent %lu pops, child %lu pops ", (unsigned long)mine.pops,
           (unsigned long)theirs.pops);
    CU_ASSERT_EQUAL(mine.err, 0);
    CU_ASSERT_EQUAL(theirs.err, 0);
    CU_ASSERT(mine.pops > POOL_MIN_OPS / 4 && theirs.pops > POOL_MIN_OPS / 4);
    CU_ASSERT_EQUAL(mine.clobbered + theirs.clobbered, 0);
    CU_ASSERT_EQUAL(mine.outstanding + theirs.outstanding, 0);
    for (unsigned i = 0; i < p.nlists; i++)
        CU_ASSERT(free_list_intact(&p, i));
    region_close(&r);
    CU_ASSERT_EQUAL(tu_count_fds(), fds0);
    CU_ASSERT_EQUAL(tu_count_maps(), maps0);
}

/* ---- pool: a list that is never short must never report ENOBUFS ----
 * Both sides pop a few slices and push them back on one large list. The
 * list always holds hundreds of free slices, so a pop may lose a race to
 * the peer (and retry from the new head) but must not fail, unless the
 * peer stopped for the whole wait (preempted on a busy machine) holding
 * the pop lock or between moving tail and linking it: those refusals are
 * counted by the pool and must account for all. */

#define CHURN_ROUNDS 200000u
#define CHURN_HOLD 4

struct churn_report {
    uint64_t pops;
    uint64_t enobufs;
    uint64_t lock_busy; /* ENOBUFS explained by a preempted peer (holding the
                           pop lock, or between moving tail and linking) */
    int64_t err;
};

static void churn_work(struct pool *p, struct churn_report *rep)
{
    memset(rep, 0, sizeof(*rep));
    for (uint32_t round = 0; round < CHURN_ROUNDS && rep->err == 0; round++) {
        uint32_t held[CHURN_HOLD];
        unsigned n = 0;
        if (round % 2) {
            /* Every other round in batches: one head swing, one tail swing. */
            int got = pool_pop_many(p, 0, held, CHURN_HOLD);
            if (got > 0) {
                rep->pops += (unsigned)got;
                rep->err = pool_give_many(p, held, (unsigned)got);
            } else if (got == SHMIPC_ENOBUFS) {
                rep->enobufs++;
            } else if (got != SHMIPC_ECONTENDED) {
                rep->err = got;
            }
            continue;
        }
        while (n < CHURN_HOLD) {
            int rc = pool_pop(p, 0, &held[n]);
            if (rc == 0) {
                n++;
                rep->pops++;
            } else if (rc == SHMIPC_ENOBUFS) {
                rep->enobufs++;
                break;
            } else if (rc != SHMIPC_ECONTENDED) {
                rep->err = rc;
                break;
            }
        }
        while (n > 0) {
            int rc = pool_push(p, held[--n]);
            if (rc < 0)
                rep->err = rc;
        }
    }
    rep->lock_busy = p->lists[0].lock_busy + p->lists[0].link_busy;
}

static int churn_child(void *arg)
{
    struct pool_job *job = arg;
    struct region r;
    struct pool p;
    struct churn_report rep = {.err = 0};
    region_init(&r);
    int rc = region_map_fd(&r, dup(job->fd), 1, 1u << 30, 0);
    if (rc == 0)
        rc = pool_map(&p, r.base, r.size);
    if (rc == 0)
        churn_work(&p, &rep);
    else
        rep.err = rc;
    region_close(&r);
    return write(job->out, &rep, sizeof(rep)) == sizeof(rep) ? 0 : 1;
}

static void test_pool_churn(void)
{
    struct region r;
    struct pool p;
    region_init(&r);
    const struct pool_class classes[1] = {{64, 100}}; /* 779 slices of 64 bytes */
    CU_ASSERT_FATAL(region_create_memfd(&r, "shmipc-test-churn", 64 << 10, 0) == 0);
    CU_ASSERT_FATAL(pool_create(&p, r.base, r.size, classes, 1) == 0);
    int pfd[2];
    CU_ASSERT_FATAL(pipe(pfd) == 0);
    struct pool_job job = {r.fd, pfd[1], 2};
    pid_t pid = tu_fork(churn_child, &job);
    CU_ASSERT_FATAL(pid > 0);
    struct churn_report mine, theirs;
    churn_work(&p, &mine);
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0);
    close(pfd[1]);
    CU_ASSERT_EQUAL_FATAL(read(pfd[0], &theirs, sizeof(theirs)), (ssize_t)sizeof(theirs));
    close(pfd[0]);
    printf("\n    churn: %lu + %lu pops, %lu + %lu ENOBUFS (peer preempted throughout: %lu + %lu) ",
           (unsigned long)mine.pops, (unsigned long)theirs.pops, (unsigned long)mine.enobufs,
           (unsigned long)theirs.enobufs, (unsigned long)mine.lock_busy,
           (unsigned long)theirs.lock_busy);
    CU_ASSERT_EQUAL(mine.err, 0);
    CU_ASSERT_EQUAL(theirs.err, 0);
    CU_ASSERT_EQUAL(mine.enobufs, mine.lock_busy);
    CU_ASSERT_EQUAL(theirs.enobufs, theirs.lock_busy);
    CU_ASSERT(mine.pops > 0 && theirs.pops > 0);
    CU_ASSERT(free_list_intact(&p, 0));
    region_close(&r);
}

/* ---- queue: 1,000,000 elements with the working-flag doorbell ---- */

#define QUEUE_MSGS 1000000u
#define QUEUE_CAP 64u

struct queue_report {
    uint64_t received;
    uint64_t out_of_order;
    uint64_t doorbells;  /* Polling events read */
    uint64_t bad_events; /* anything else on the socket */
    int64_t err;
};

struct queue_job {
    int fd;    /* queue memfd */
    int sock;  /* doorbell */
    int other; /* the parent's end: closed in the child so EOF arrives */
    int out;
};

static uint32_t payload_of(uint64_t seq)
{
    return (uint32_t)(seq * 2654435761u);
}

/* Reads Polling events; returns how many, 0 on EOF, <0 on error. */
static int read_doorbells(int sock, struct queue_report *rep)
{
    uint8_t buf[8 * 64];
    ssize_t n;
    do
        n = read(sock, buf, sizeof(buf));
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return (int)n;
    /* Events are 8 bytes and written whole; a stream socket may still
     * split them, which this test would report as a bad event. */
    for (ssize_t i = 0; i + 8 <= n; i += 8) {
        struct ev_header h;
        if (ev_decode_header(buf + i, 0, &h) == 0 && h.type == SHMIPC_EV_POLLING)
            rep->doorbells++;
        else
            rep->bad_events++;
    }
    rep->bad_events += (n % 8) != 0;
    return (int)(n / 8);
}

static void consume(struct queue_pair *qp, int sock, struct queue_report *rep)
{
    for (;;) {
        int rc = read_doorbells(sock, rep);
        if (rc <= 0) {
            rep->err = rc;
            return;
        }
        do {
            struct shmipc_queue_elem e;
            while ((rc = queue_pop(&qp->recv, &e)) == 0) {
                uint64_t seq = rep->received++;
                rep->out_of_order += e.stream_id != (uint32_t)seq || e.offset != payload_of(seq);
            }
            if (rc != SHMIPC_EQEMPTY) {
                rep->err = rc;
                return;
            }
        } while (!queue_mark_not_working(&qp->recv));
        if (rep->received == QUEUE_MSGS)
            break;
    }
    /* A Polling sent after the last harvest is harmless but still counted:
     * read to EOF so sent and received doorbells can be compared. */
    int rc;
    while ((rc = read_doorbells(sock, rep)) > 0)
        ;
    rep->err = rc;
}

static int queue_child(void *arg)
{
    struct queue_job *job = arg;
    struct region r;
    struct queue_pair qp;
    struct queue_report rep = {.err = 0};
    close(job->other);
    region_init(&r);
    int rc = region_map_fd(&r, dup(job->fd), 1, 1u << 20, 0);
    if (rc == 0)
        rc = queue_pair_map(&qp, r.base, r.size, 1);
    if (rc == 0)
        consume(&qp, job->sock, &rep);
    else
        rep.err = rc;
    region_close(&r);
    return write(job->out, &rep, sizeof(rep)) == sizeof(rep) ? 0 : 1;
}

static void test_queue_doorbell(void)
{
    int fds0 = tu_count_fds(), maps0 = tu_count_maps();
    struct region r;
    struct queue_pair qp;
    region_init(&r);
    CU_ASSERT_FATAL(region_create_memfd(&r, "shmipc-test-queue", queue_pair_size(QUEUE_CAP), 0) ==
                    0);
    CU_ASSERT_FATAL(queue_pair_create(&qp, r.base, r.size, QUEUE_CAP) == 0);
    int sv[2], pfd[2];
    CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CU_ASSERT_FATAL(pipe(pfd) == 0);
    struct queue_job job = {r.fd, sv[1], sv[0], pfd[1]};
    pid_t pid = tu_fork(queue_child, &job);
    CU_ASSERT_FATAL(pid > 0);
    close(sv[1]);
    close(pfd[1]);

    uint8_t polling[8];
    CU_ASSERT_FATAL(ev_encode_simple(polling, sizeof(polling), 3, SHMIPC_EV_POLLING) == 8);
    uint64_t sent = 0, full_waits = 0, t0 = tu_now_ns();
    int ok = 1;
    for (uint64_t seq = 0; seq < QUEUE_MSGS && ok; seq++) {
        struct shmipc_queue_elem e = {(uint32_t)seq, payload_of(seq), 0};
        int rc;
        /* Full: let the consumer run. Bounded by the overall deadline. */
        while ((rc = queue_put(&qp.send, &e)) == SHMIPC_EQFULL) {
            full_waits++;
            sched_yield();
            if (tu_now_ns() - t0 > (uint64_t)DEADLINE_MS * 1000000u) {
                ok = 0;
                break;
            }
        }
        if (rc != 0) {
            ok = 0;
            break;
        }
        if (queue_mark_working(&qp.send)) {
            ok &= write(sv[0], polling, sizeof(polling)) == (ssize_t)sizeof(polling);
            sent++;
        }
    }
    CU_ASSERT(ok);
    close(sv[0]);
    CU_ASSERT_EQUAL(tu_wait(pid, DEADLINE_MS), 0);
    struct queue_report rep;
    CU_ASSERT_EQUAL_FATAL(read(pfd[0], &rep, sizeof(rep)), (ssize_t)sizeof(rep));
    close(pfd[0]);
    double secs = (double)(tu_now_ns() - t0) / 1e9;
    printf("\n    queue: %lu messages, %lu doorbell events (%.5f per message), %lu full waits, "
           "%.2f s ",
           (unsigned long)rep.received, (unsigned long)rep.doorbells,
           (double)rep.doorbells / (double)QUEUE_MSGS, (unsigned long)full_waits, secs);
    CU_ASSERT_EQUAL(rep.err, 0);
    CU_ASSERT_EQUAL(rep.received, QUEUE_MSGS);
    CU_ASSERT_EQUAL(rep.out_of_order, 0);
    CU_ASSERT_EQUAL(rep.bad_events, 0);
    CU_ASSERT_EQUAL(rep.doorbells, sent);
    CU_ASSERT(rep.doorbells >= 1 && rep.doorbells < QUEUE_MSGS);
    region_close(&r);
    CU_ASSERT_EQUAL(tu_count_fds(), fds0);
    CU_ASSERT_EQUAL(tu_count_maps(), maps0);
}

static const struct test_case cases[] = {
    {"pool_concurrent_pop_push", test_pool_concurrent},
    {"pool_churn_no_spurious_enobufs", test_pool_churn},
    {"queue_1M_with_doorbell", test_queue_doorbell},
    {NULL, NULL},
};

const struct test_suite suite_xproc = {"xproc", cases};
