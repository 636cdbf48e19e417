/*
 * shmipc-bench --clients (bench_scale.c): many client processes against
 * one shmipcd.
 */
#ifndef SHMIPC_BENCH_SCALE_H
#define SHMIPC_BENCH_SCALE_H

#include <stddef.h>
#include <sys/types.h>

struct scale_opts {
    const char *address; /* shmipcd's service (the bench plugin) */
    const char *uds_path; /* instead: the unix-socket baseline, this echo server */
    pid_t server_pid;    /* shmipcd, for its memory and CPU */
    unsigned clients;    /* client processes, at least 11 */
    size_t pool_bytes;   /* each client's pool */
    size_t size;         /* request = response bytes */
    int ms;              /* each measured window */
    unsigned trials;     /* connects timed with clients - 1 sessions open */
};
struct scale_summary {
    const char *name; /* "scale", or "scale-uds" for the baseline */
    unsigned clients;
    double req_per_s, req_per_s_at_10;
    double rss_per_session_kib, connect_p99_ms;
    unsigned failed;
};
/* The scale run (--clients): prints its lines and fills *sum. 0, or -EIO
 * when anything failed. */
int scale_run(const struct scale_opts *o, struct scale_summary *sum);
/* The summary line, "scale: clients=N req_per_s=X ... failed=F": the
 * caller prints it last, once shmipcd has stopped (and said what it had
 * to say on stderr). */
void scale_print_summary(const struct scale_summary *sum);

#endif
