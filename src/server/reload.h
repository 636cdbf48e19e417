/*
 * Hot reload (see reload.c). Master thread.
 */
#ifndef SHMIPC_SERVER_RELOAD_H
#define SHMIPC_SERVER_RELOAD_H

#include "server/daemon.h"

/* Re-reads the configuration and applies it; the report (malloc'd) says
 * what changed and why anything failed. Returns 0 if everything applied. */
int daemon_reload(struct daemon *d, char **report);
/* daemon_reload for a trigger ("SIGHUP", "watch", "admin"): systemd is
 * told (RELOADING=1, then READY=1 and a STATUS), the report goes to the
 * log a line each (errors when anything was refused), and to *report when
 * report is not NULL (malloc'd). Returns daemon_reload's result. */
int reload_and_log(struct daemon *d, const char *trigger, char **report);
/* Finishes retired generations whose last request completed, and removed
 * services that drained; returns how many are still draining. */
unsigned daemon_retire(struct daemon *d);

#endif
