/*
 * shmipc-bench's shmipc rows (bench_shm.c): the shmipc client rows and the
 * library server.
 */
#ifndef SHMIPC_BENCH_SHM_H
#define SHMIPC_BENCH_SHM_H

#include "bench_util.h"

struct shm_client;
struct shm_client_opts {
    const char *address;
    unsigned sessions;    /* per client, capped at the row's concurrency */
    int file_mode;        /* 1: /dev/shm files (version 2; needed for tcp:) */
    size_t reserve_chunk; /* full mode: bytes per reserve; 0: the largest slice */
    int spin_us;          /* low-latency mode (cfg.spin_us) */
};
/* The largest slice class (default shmipc's 131052 bytes); set before
 * any client or server starts. */
void shm_set_max_slice(uint32_t bytes);
uint32_t shm_max_slice(void);
/* A client sized for rows of this size and concurrency (pool fits every
 * request and response in flight, pre-faulted). */
int shm_client_open(const struct shm_client_opts *o, size_t size, unsigned conc,
                    struct shm_client **out);
void shm_client_close(struct shm_client *c);
/* One row on an open client; fills *r. Returns 0 or a negative code. */
int shm_row(struct shm_client *c, const struct row_params *p, struct row_result *r);
/* A request of each mode through a fresh blocking-style client; 0 when
 * the server answers them correctly. Retries the connection until
 * timeout_ms. */
int shm_probe(const char *address, int file_mode, int timeout_ms, char *err, size_t errlen);
/* Forks the library-server child listening on address; 0 and *pid once it
 * listens. */
int shm_lib_server_start(const char *address, int spin_us, pid_t *pid);

#endif
