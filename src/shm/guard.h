/*
 * Guard against a peer that shrinks a file it shared with us: touching a
 * page past the new end of file raises SIGBUS, which would kill the whole
 * server. A guarded range gets a SIGBUS handler that maps a zero page over
 * the faulting page (so the access completes, reading zeros) and marks the
 * range tripped; the owner of the mapping sees that and closes the
 * session. Faults outside guarded ranges go to the previous handler.
 */
#ifndef SHMIPC_SHM_GUARD_H
#define SHMIPC_SHM_GUARD_H

#include <stddef.h>

#define GUARD_SLOTS 4096

/* Installs the handler once per process (idempotent, thread-safe). */
int guard_install(void);
/* Registers [base, base+size); a slot number, or -ENOSPC. */
int guard_add(void *base, size_t size);
void guard_remove(int slot);
/* 1 once a SIGBUS hit the slot's range. */
int guard_tripped(int slot);

#endif
