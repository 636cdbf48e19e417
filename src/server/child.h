/*
 * The worker process of a process-mode service (see child.c and proc.h).
 */
#ifndef SHMIPC_SERVER_CHILD_H
#define SHMIPC_SERVER_CHILD_H

/* main() of `shmipcd --worker ...`: never returns on success (exits when
 * the master says drain, or dies with it); 1 or 2 on a failed start. */
int child_main(int argc, char **argv);

#endif
