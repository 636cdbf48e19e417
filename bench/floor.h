/*
 * What the machine itself allows, measured without shmipc: the floor the
 * benchmarks' shmipc rows are read against.
 *
 * floor_ring(): N processes pass tokens round a ring of futex words in
 * shared memory (wait on its own word, wake the next): the cost of waking
 * one process from another when N exist, which a client process making
 * one blocking call at a time pays on every call whatever the transport.
 *
 * floor_echo(): the blocking echo reduced to its bones: C threads each
 * write a request into shared memory, wake a server process by futex if
 * it sleeps and sleep on a futex word of their own; the server process
 * polls the C slots (spinning a little after work, as shmipc's servers
 * do), answers each with its own bytes (nothing copied, nothing read, as
 * a zero-copy echo does) and wakes its thread directly. No sockets, no
 * locks, no queue: a lower bound for any blocking call between two
 * processes on this machine.
 *
 * Both fork their processes (which die with the caller), bound every wait
 * and return a negative errno when something did not start or stop.
 */
#ifndef SHMIPC_BENCH_FLOOR_H
#define SHMIPC_BENCH_FLOOR_H

#include <stddef.h>
#include <stdint.h>

struct floor_result {
    uint64_t ops;        /* hops (ring) or round trips (echo) in the window */
    double ns_per_op;    /* wall time / ops */
    double cpu_cli_us;   /* echo: the calling process's CPU per round trip */
    double cpu_srv_us;   /* echo: the server process's CPU per round trip */
    uint32_t p50_us, p99_us; /* echo: round-trip latency */
    uint64_t errors;     /* echo: answers that did not check */
};

/* nprocs processes (2 or more), tokens in flight (1 .. nprocs / 2), a
 * window of ms after a warm-up. */
int floor_ring(unsigned nprocs, unsigned tokens, int ms, struct floor_result *out);

/* nthreads callers (1 .. 64) of size-byte requests, every byte written and
 * the answer (the request's own bytes, where the caller wrote them) read
 * as shmipc-pingpong reads its own (every 61st byte and the last), for
 * ms; the read stands for the caller's use of its answer: the server
 * touches no byte, so it finds no error. */
int floor_echo(size_t size, unsigned nthreads, int ms, struct floor_result *out);

#endif
