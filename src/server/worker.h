/*
 * shmipcd's worker threads (see worker.c).
 */
#ifndef SHMIPC_SERVER_WORKER_H
#define SHMIPC_SERVER_WORKER_H

#include "server/daemon.h"

/* The pool that serves svc: its own threads, or the shared ones (also
 * for svc NULL). */
struct worker_pool *pool_of(struct daemon *d, struct service *svc);
/* Starts n workers named `name` (kept by pointer) into p. 0, or a code
 * (p->n then counts the ones started; pool_stop them). */
int pool_start(struct worker_pool *p, struct daemon *d, unsigned n, const char *name);
/* Every worker drains until the deadline and exits; waits for them and
 * frees the pool's threads (ask first, join after: pools drain at once). */
void pool_ask_stop(struct worker_pool *p, uint64_t drain_deadline_ns);
void pool_join(struct worker_pool *p);
/* pool_join with a deadline: a worker whose handler never returns is
 * left running, and what it runs is logged. 0, or how many were left
 * (the pool is then not freed: the process should exit). */
int pool_join_until(struct worker_pool *p, uint64_t deadline_ns);
void pool_stop(struct worker_pool *p, uint64_t drain_deadline_ns);
/* Hot restart: every worker tells each of its sessions (and those it gets
 * later) HotRestart(epoch), and closes each once its client acked and
 * nothing is in flight; pool_sessions() then counts down. */
void pool_hot_restart(struct worker_pool *p, uint64_t epoch);
/* Sessions of the pool's workers, their inboxes included. */
unsigned pool_sessions(struct worker_pool *p);
struct worker *pool_least_loaded(struct worker_pool *p);
/* Gives the worker a new session (from the master's thread). */
void worker_hand_over(struct worker *w, struct dsession *ds);
/* Runs a job on the thread of every worker of svc's pool and waits for
 * all. Returns the first failure (err filled) or 0. */
int workers_exec(struct daemon *d, enum wcmd_kind kind, struct plugin_gen *g, struct service *svc,
                 char *err, size_t errlen);

#endif
