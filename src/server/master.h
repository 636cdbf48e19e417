/*
 * shmipcd's master thread (see master.c): main.c's three phases.
 */
#ifndef SHMIPC_SERVER_MASTER_H
#define SHMIPC_SERVER_MASTER_H

#include <stddef.h>

#include "server/daemon.h"

/* Loads the configuration, opens every listener and the admin socket,
 * starts the workers. 0, or a code with err filled. */
int daemon_start(struct daemon *d, const char *conf_path, char *err, size_t errlen);
/* Sessions of every pool and worker process, with those handed over and
 * not yet adopted. */
unsigned daemon_sessions(struct daemon *d);
/* Serves until a stop (signal or admin). */
int daemon_run(struct daemon *d);
/* Stops accepting, drains the workers until drain_timeout_ms, frees
 * everything (also after a failed start). 1 when something was abandoned
 * (a handler that did not return, deferred answers not completed): the
 * process should exit 1 at once, with what they use still in place. */
int daemon_stop_and_free(struct daemon *d);

#endif
