/*
 * Clients under load for tests that change the server under them (a
 * reload, a hot restart): each load is one client, threaded (every thread
 * makes one blocking call at a time) or event-loop (`inflight` requests
 * flushed, then polled until each is answered), in either handshake mode,
 * against a server that echoes. Every answer is checked against what was
 * sent; a call that fails or comes back wrong is counted with the first
 * reason kept.
 *
 * Who owns what: a struct load belongs to its test; load_start() makes
 * its client and threads, load_stop() joins and closes them (idempotent,
 * also after a failed start).
 */
#ifndef SHMIPC_TESTS_LOAD_FIXTURE_H
#define SHMIPC_TESTS_LOAD_FIXTURE_H

#include <pthread.h>

#include "shmipc/shmipc.h"

#define LOAD_MAX_THREADS 4
#define LOAD_MAX_INFLIGHT 8

struct load {
    /* set by the test */
    const char *address;
    const char *path_prefix; /* the client's, e.g. "/dev/shm/<test name>l0" */
    enum shmipc_mem_mode mode;
    int event_loop;
    unsigned threads;  /* 1..LOAD_MAX_THREADS (event loop: 1) */
    unsigned inflight; /* event loop: 1..LOAD_MAX_INFLIGHT */
    unsigned index;    /* tells apart the loads' payloads */
    int timeout_ms;    /* for each answer; default 10000 */
    /* kept by the load */
    shmipc_client *c;
    int stop;             /* atomic */
    unsigned long ok;     /* atomic: answers that came back right */
    unsigned long failed; /* atomic: every failure, of which: */
    unsigned long lost;   /* atomic: an answer that never came (timeout) */
    unsigned long refused; /* atomic: no session (connect refused or failed) */
    char why[160];        /* the first failure */
    pthread_t th[LOAD_MAX_THREADS];
    unsigned started;     /* atomic: threads that numbered themselves */
};

/* The four kinds, in ls[0..3]: threaded in memfd mode (3 threads) and in
 * file mode (2), event-loop in memfd mode (4 in flight) and in file mode
 * (3); the rest of each struct zero. */
void load_mix(struct load *ls);
/* Opens the client (2 sessions) and starts the threads. 0 or a code. */
int load_start(struct load *l);
/* Stops the threads, closes the client. */
void load_stop(struct load *l);
/* Stops the n loads; each that failed, or was never answered, is said on
 * stderr. The failures plus the loads never answered: 0 when all went
 * well. */
unsigned long load_stop_all(struct load *ls, unsigned n);
/* since[i] = the ok count of each load now. */
void load_counts(struct load *ls, unsigned n, unsigned long *since);
/* Waits until each of the n loads has answered `more` requests beyond
 * since[i], up to ms. 0 or -1. */
int load_progress(struct load *ls, unsigned n, const unsigned long *since, unsigned long more,
                  int ms);

#endif
