/*
 * shmipcd's worker threads (see worker.c).
 */
#ifndef SHMIPC_SERVER_WORKER_H
#define SHMIPC_SERVER_WORKER_H

#include "server/daemon.h"

int worker_start(struct worker *w, struct daemon *d, unsigned index);
/* Gives the worker a new session (from the master's thread). */
void worker_hand_over(struct worker *w, struct dsession *ds);
/* Asks it to drain until the deadline and exit; worker_join waits. */
void worker_stop(struct worker *w, uint64_t drain_deadline_ns);
void worker_join(struct worker *w);
/* Runs a job on every worker's thread and waits for all. Returns the
 * first failure (err filled) or 0. */
int workers_exec(struct daemon *d, enum wcmd_kind kind, struct plugin_gen *g, struct service *svc,
                 char *err, size_t errlen);

#endif
