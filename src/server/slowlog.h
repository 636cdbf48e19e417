/*
 * The slow-handler log, as php-fpm's slowlog: a handler call running
 * longer than its service's slow_handler_ms gets one warning naming
 * service, plugin, version, generation, worker, session, stream and the
 * time so far, and is counted; with slow_handler_trace the worker's stack
 * follows in the log. Runs on the master thread, between its events.
 */
#ifndef SHMIPC_SERVER_SLOWLOG_H
#define SHMIPC_SERVER_SLOWLOG_H

#include "server/daemon.h"

/* Installs the worker's stack dump (a signal handler; call before the
 * workers start). */
void slowlog_init(void);
/* Looks at every worker once; returns the ms until a running call may
 * turn slow (the master's epoll timeout), or -1 when none runs. */
int slowlog_check(struct daemon *d);

#endif
