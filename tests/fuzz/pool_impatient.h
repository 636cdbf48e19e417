/*
 * For the fuzz targets that pop from a pool a peer laid out: waits for
 * another process (a held pop lock, a push not yet linked) end in spins
 * and yields here, not sleeps, or a lying pool would have the run spend
 * most of its time asleep. The pool suite tests the sleeping waits.
 * Include once, in the target's source.
 */
#ifndef SHMIPC_FUZZ_POOL_IMPATIENT_H
#define SHMIPC_FUZZ_POOL_IMPATIENT_H

#include "shm/pool.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    pool_set_patient(0);
    return 0;
}

#endif
