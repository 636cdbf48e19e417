/*
 * The memory-ordering helpers for shared memory, in one place.
 *
 * Pairing: a producer's store_release of a queue tail (or a free count
 * increment) pairs with the consumer's load_acquire of it, so element and
 * slice bytes written before the store are visible after the load. The
 * working flag uses sequentially consistent operations on both sides
 * (the producer's CAS after publishing, the consumer's store of 0 before
 * re-checking), which is what keeps a wake-up from being lost.
 *
 * x86-64's queue header has 8-byte counters at 4-byte-aligned offsets
 * (fixed by the wire). A plain 8-byte mov there is atomic as long as it
 * does not cross a cache line, and x86's ordering makes a compiler barrier
 * enough for acquire/release; ld64a4()/st64a4() do exactly that. Under TSan
 * they use __atomic builtins instead so the tool sees the accesses.
 */
#ifndef SHMIPC_SHM_ATOMICS_H
#define SHMIPC_SHM_ATOMICS_H

#include <stdint.h>

#if defined(__SANITIZE_THREAD__)
#define SHMIPC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SHMIPC_TSAN 1
#endif
#endif

typedef int64_t shm_i64a4 __attribute__((aligned(4)));

/* A slice travels: written by one thread, published, freed by the peer
 * process into its own cache, written again there and sent back, read by
 * another thread of ours. The order between our two threads runs through
 * the other process, where TSan cannot see it; publishing and harvesting
 * tell it with a release and an acquire on the pool. */
#ifdef SHMIPC_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define shm_tsan_acquire(p) __tsan_acquire((void *)(p))
#define shm_tsan_release(p) __tsan_release((void *)(p))
#else
#define shm_tsan_acquire(p) ((void)(p))
#define shm_tsan_release(p) ((void)(p))
#endif

static inline uint32_t ld32_acq(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline uint32_t ld32_relaxed(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void st32_rel(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline int cas32(uint32_t *p, uint32_t expect, uint32_t desired)
{
    return __atomic_compare_exchange_n(p, &expect, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}

/* Load-acquire / store-release of an i64 that is only 4-byte aligned. */
static inline int64_t ld64a4_acq(const void *p)
{
#if defined(SHMIPC_TSAN) || !defined(__x86_64__)
    return __atomic_load_n((const int64_t *)p, __ATOMIC_ACQUIRE);
#else
    int64_t v = *(const volatile shm_i64a4 *)p;
    __atomic_signal_fence(__ATOMIC_ACQUIRE);
    return v;
#endif
}

static inline void st64a4_rel(void *p, int64_t v)
{
#if defined(SHMIPC_TSAN) || !defined(__x86_64__)
    __atomic_store_n((int64_t *)p, v, __ATOMIC_RELEASE);
#else
    __atomic_signal_fence(__ATOMIC_RELEASE);
    *(volatile shm_i64a4 *)p = v;
#endif
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
