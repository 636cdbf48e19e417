/*
 * shmipc-core-demo: the shared-memory core at work without a server. The
 * parent creates a pool and a queue pair in memfds, a forked peer maps them
 * through its own mappings, and the parent streams messages of several
 * sizes through pool slices, waking the peer with Polling events only when
 * the queue's working flag says so. The peer checks every byte, frees every
 * chain, and reports its count and checksum.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/event.h"
#include "shm/pool.h"
#include "shm/queue.h"
#include "shm/region.h"
#include "shmipc/errors.h"

#define QUEUE_CAP 256u
#define MESSAGES 3000u

static const uint32_t sizes[] = {64, 512, 4096, 20000, 65536, 150000};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

struct tally {
    uint64_t messages, bytes, doorbells, bad;
    uint64_t checksum;
    int64_t outstanding;
};

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static uint8_t byte_at(uint32_t msg, uint32_t i)
{
    return (uint8_t)(msg * 31 + i % 251);
}

/* The peer: harvest on each Polling, verify, free, until EOF. */
static int peer(int bfd, int qfd, int sock, int out)
{
    struct region rb, rq;
    struct pool p;
    struct queue_pair qp;
    struct tally t = {.checksum = 0xcbf29ce484222325ull};
    region_init(&rb);
    region_init(&rq);
    int rc = region_map_fd(&rb, bfd, 1, POOL_MAX_SIZE, 0);
    if (rc == 0)
        rc = region_map_fd(&rq, qfd, 1, 1u << 24, 0);
    if (rc == 0)
        rc = pool_map(&p, rb.base, rb.size);
    if (rc == 0)
        rc = queue_pair_map(&qp, rq.base, rq.size, 1);
    uint8_t ev[64];
    while (rc == 0 && read(sock, ev, sizeof(ev)) > 0) {
        t.doorbells++;
        do {
            struct shmipc_queue_elem e;
            while (queue_pop(&qp.recv, &e) == 0) {
                struct pool_walk w;
                struct pool_seg seg;
                uint32_t pos = 0;
                int r;
                pool_walk_init(&w, &p, e.offset);
                while ((r = pool_walk_next(&w, &seg)) > 0) {
                    for (uint32_t i = 0; i < seg.len; i++)
                        t.bad += seg.data[i] != byte_at(e.stream_id, pos + i);
                    t.checksum = fnv(t.checksum, seg.data, seg.len);
                    pos += seg.len;
                }
                t.bad += r < 0 || pos != sizes[e.stream_id % NSIZES];
                t.bytes += pos;
                t.messages++;
                pool_free_chain(&p, e.offset);
            }
        } while (!queue_mark_not_working(&qp.recv));
    }
    t.outstanding = pool_outstanding(&p);
    region_close(&rb);
    region_close(&rq);
    if (rc != 0)
        fprintf(stderr, "peer: %s\n", shmipc_strerror(rc));
    return write(out, &t, sizeof(t)) == sizeof(t) && rc == 0 ? 0 : 1;
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "shmipc-core-demo: %s: %s\n", what, shmipc_strerror(rc));
    return 1;
}

int main(void)
{
    struct region rb, rq;
    struct pool p;
    struct queue_pair qp;
    region_init(&rb);
    region_init(&rq);
    int rc = region_create_memfd(&rb, "shmipc-demo-buffer", POOL_DEFAULT_SIZE, REGION_PREFAULT);
    if (rc < 0)
        return fail("buffer memfd", rc);
    if ((rc = region_create_memfd(&rq, "shmipc-demo-queue", queue_pair_size(QUEUE_CAP), 0)) < 0)
        return fail("queue memfd", rc);
    if ((rc = pool_create(&p, rb.base, rb.size, pool_default_classes, 3)) < 0)
        return fail("pool", rc);
    if ((rc = queue_pair_create(&qp, rq.base, rq.size, QUEUE_CAP)) < 0)
        return fail("queue", rc);
    int sv[2], pfd[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe(pfd) < 0)
        return fail("socketpair", -errno);
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        alarm(60);
        _exit(peer(dup(rb.fd), dup(rq.fd), sv[1], pfd[1]));
    }
    close(sv[1]);
    close(pfd[1]);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint8_t polling[8];
    ev_encode_simple(polling, sizeof(polling), SHMIPC_PROTO_V3, SHMIPC_EV_POLLING);
    uint8_t *buf = malloc(sizes[NSIZES - 1]);
    uint64_t sent_bytes = 0, doorbells = 0, retries = 0;
    uint64_t checksum = 0xcbf29ce484222325ull;
    for (uint32_t m = 0; m < MESSAGES; m++) {
        uint32_t n = sizes[m % NSIZES];
        for (uint32_t i = 0; i < n; i++)
            buf[i] = byte_at(m, i);
        checksum = fnv(checksum, buf, n);
        struct pool_writer w;
        uint32_t first;
        pool_writer_init(&w, &p);
        /* Pool or queue full: the peer is behind; give it the CPU. */
        while ((rc = pool_writer_write(&w, buf, n)) == SHMIPC_ENOBUFS) {
            pool_writer_abort(&w);
            retries++;
            sched_yield();
        }
        if (rc < 0 || (rc = pool_writer_finish(&w, &first)) < 0)
            return fail("write", rc);
        struct shmipc_queue_elem e = {m, first, SHMIPC_STREAM_OPEN};
        while ((rc = queue_put(&qp.send, &e)) == SHMIPC_EQFULL) {
            retries++;
            sched_yield();
        }
        if (rc < 0)
            return fail("put", rc);
        sent_bytes += n;
        if (queue_mark_working(&qp.send)) {
            doorbells++;
            if (write(sv[0], polling, sizeof(polling)) != sizeof(polling))
                return fail("doorbell", -errno);
        }
    }
    close(sv[0]);
    struct tally t;
    int status;
    ssize_t got = read(pfd[0], &t, sizeof(t));
    waitpid(pid, &status, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    free(buf);
    int ok = got == sizeof(t) && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
             t.messages == MESSAGES && t.bytes == sent_bytes && t.bad == 0 &&
             t.checksum == checksum && t.outstanding + pool_outstanding(&p) == 0;
    printf("shmipc core demo: pool %zu bytes (%u/%u/%u slices), queue cap %u\n", rb.size,
           p.lists[0].nslices, p.lists[1].nslices, p.lists[2].nslices, QUEUE_CAP);
    printf("  sent      %u messages, %lu bytes, %lu Polling events (%.3f per message), "
           "%lu full-retries\n",
           MESSAGES, (unsigned long)sent_bytes, (unsigned long)doorbells,
           (double)doorbells / MESSAGES, (unsigned long)retries);
    printf("  received  %lu messages, %lu bytes, %lu bad bytes, %lu wake-ups\n",
           (unsigned long)t.messages, (unsigned long)t.bytes, (unsigned long)t.bad,
           (unsigned long)t.doorbells);
    printf("  checksum  sent %016lx received %016lx\n", (unsigned long)checksum,
           (unsigned long)t.checksum);
    printf("  slices    outstanding after both sides freed: %ld\n",
           (long)(t.outstanding + pool_outstanding(&p)));
    printf("  %.1f ms, %s\n", secs * 1e3, ok ? "OK" : "FAILED");
    region_close(&rb);
    region_close(&rq);
    return ok ? 0 : 1;
}
