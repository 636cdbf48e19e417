/*
 * The queue pair: two single-producer single-consumer rings of 12-byte
 * elements in one mapping (PROTOCOL.md section 5). The first half carries
 * client->server, the second server->client; the server maps the halves
 * swapped, so each side's `send` is the queue it produces into.
 *
 * Concurrency: one consumer per queue; producers of one queue must be
 * serialized by the caller (a session lock). Each side keeps its own
 * counter (tail for the producer, head for the consumer) in process memory
 * and only publishes it; the peer's counter is read and validated on each
 * use. A struct queue_pair does not own the mapping.
 */
#ifndef SHMIPC_SHM_QUEUE_H
#define SHMIPC_SHM_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "shmipc/wire.h"

#define QUEUE_MAX_CAP (1u << 24)

struct queue {
    uint8_t *hdr;   /* queue header in the mapping */
    uint8_t *elems; /* element 0 */
    uint32_t cap;   /* validated snapshot */
    int64_t own;    /* producer: our tail; consumer: our head */
    int64_t seen;   /* the peer's counter as last read and validated: the
                       producer re-reads head only when the queue looks full,
                       the consumer re-reads tail only when it looks empty,
                       so the shared line is touched once per batch */
    int torn_read;  /* the peer's counter may straddle a cache line */
};

struct queue_pair {
    struct queue send; /* we produce */
    struct queue recv; /* we consume */
};

/* Bytes of a queue pair mapping for `cap` elements per queue. */
size_t queue_pair_size(uint32_t cap);

/* Lays out a fresh pair in [base, base+size) (client role). cap must be in
 * [1, QUEUE_MAX_CAP] and size queue_pair_size(cap). Use multiples of 16 in
 * production: then no counter straddles a cache line, and peers that read
 * counters with one plain load never see a torn value. */
int queue_pair_create(struct queue_pair *qp, void *base, size_t size, uint32_t cap);

/* Views a pair created by the peer (server_role=1) or by this process in
 * another mapping (server_role=0). Validates cap against the mapping size
 * and both halves' counters; SHMIPC_EBADQUEUE otherwise. */
int queue_pair_map(struct queue_pair *qp, void *base, size_t size, int server_role);

/* Publishes one element. SHMIPC_EQFULL when tail - head == cap;
 * SHMIPC_ECORRUPT when the peer's head is impossible. */
int queue_put(struct queue *q, const struct shmipc_queue_elem *e);

/* Takes the oldest element. SHMIPC_EQEMPTY or SHMIPC_ECORRUPT. */
int queue_pop(struct queue *q, struct shmipc_queue_elem *e);
/* Up to max elements at once, the head published once: how many (0 when
 * empty), or SHMIPC_ECORRUPT. */
int queue_pop_many(struct queue *q, struct shmipc_queue_elem *e, unsigned max);

/* Elements waiting, as far as this side can tell (0 on a corrupt counter). */
uint32_t queue_len(const struct queue *q);
/* The consumer's counter as it is now (the peer's, when we produce): only
 * to tell whether it moved since an earlier look. */
int64_t queue_head(const struct queue *q);

/* Producer, after a put: CAS working 0 -> 1. Returns 1 when this call won,
 * i.e. the caller must wake the consumer with one Polling event. */
int queue_mark_working(struct queue *q);

/* Consumer, after popping everything: clears the flag, then re-checks.
 * Returns 1 when the queue stayed empty (sleep until the next Polling), 0
 * when elements arrived meanwhile (the flag is set again: keep popping). */
int queue_mark_not_working(struct queue *q);

/* The raw flag (tests and stats). */
uint32_t queue_working(const struct queue *q);

#endif
