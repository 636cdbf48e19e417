/*
 * Helpers shared by the libFuzzer targets in tests/fuzz: a reader that
 * takes integers off the front of the fuzz input (running dry yields
 * zeros, so every input is a valid script), and an invariant check that
 * aborts with a message, which libFuzzer reports as a crash.
 *
 * The one rule for every target: deterministic and bounded. No sleeps, no
 * threads, no state carried from one input to the next except what is
 * reset at the start of each run.
 */
#ifndef SHMIPC_FUZZ_COMMON_H
#define SHMIPC_FUZZ_COMMON_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fz {
    const uint8_t *p;
    size_t n;
};

static inline size_t fz_left(const struct fz *f)
{
    return f->n;
}

static inline uint8_t fz_u8(struct fz *f)
{
    if (f->n == 0)
        return 0;
    f->n--;
    return *f->p++;
}

static inline uint16_t fz_u16(struct fz *f)
{
    uint16_t v = fz_u8(f);
    return (uint16_t)(v | fz_u8(f) << 8);
}

static inline uint32_t fz_u32(struct fz *f)
{
    uint32_t v = fz_u16(f);
    return v | (uint32_t)fz_u16(f) << 16;
}

/* Up to n bytes off the front; *got says how many there were. */
static inline const uint8_t *fz_bytes(struct fz *f, size_t n, size_t *got)
{
    const uint8_t *p = f->p;
    *got = n < f->n ? n : f->n;
    f->p += *got;
    f->n -= *got;
    return p;
}

#define FZ_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Open fds of this process (the directory's own fd not counted). */
static inline int fz_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;
}

#endif
