/*
 * The received message: one flush of the peer, as slices of its pool or
 * as a heap copy of FallbackData. Only this file allocates and frees one
 * (through a per-thread cache); see rx_msg.c.
 */
#ifndef SHMIPC_SESSION_RX_MSG_H
#define SHMIPC_SESSION_RX_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "session/pool_ref.h"
#include "shmipc/shmipc.h"

/* A received message (one flush of the peer). */
#define RX_INLINE_SEGS 4
struct rx_msg {
    struct rx_msg *next;
    struct pool_ref *pool;  /* NULL for a heap (fallback) message */
    uint32_t nseg;
    uint32_t len;
    struct shmipc_iov *iov;
    uint32_t *offs;         /* slice offsets to free */
    uint8_t *heap;          /* fallback payload */
    int trimmed;            /* its start was read by shmipc_stream_read */
    struct shmipc_iov iov_inline[RX_INLINE_SEGS];
    uint32_t offs_inline[RX_INLINE_SEGS];
};

/* A zeroed message from this thread's cache (or the heap), or NULL. The
 * caller points iov/offs at the inline arrays before filling them. */
struct rx_msg *rx_msg_new(void);
/* Gives the slices back to the pool (their held marks first) and drops
 * the pool reference, then the message. */
void rx_msg_free(struct rx_msg *m);
/* A message whose slices go on elsewhere (forwarded): clears their held
 * marks / frees the bookkeeping only, neither the slices nor the pool
 * reference. */
void rx_msg_unhold(struct rx_msg *m);
void rx_msg_drop(struct rx_msg *m);
/* Heap bytes a received message costs while it waits in a stream. */
size_t rx_msg_heap_cost(const struct rx_msg *m);

#endif
