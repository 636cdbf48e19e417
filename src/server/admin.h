/*
 * shmipcd's admin commands (see admin.c). Master thread.
 */
#ifndef SHMIPC_SERVER_ADMIN_H
#define SHMIPC_SERVER_ADMIN_H

#include "server/daemon.h"

/* Runs one admin command, writes the reply into a malloc'd buffer. Sets
 * *stop when the command asks the daemon to stop. */
char *admin_command(struct daemon *d, const char *line, int *stop);

#endif
