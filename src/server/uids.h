/*
 * Sessions per peer uid (limits.max_sessions_per_uid): counted when a
 * connection is admitted, released when its handshake fails or its
 * session closes. Thread-safe: the master admits, workers release.
 */
#ifndef SHMIPC_SERVER_UIDS_H
#define SHMIPC_SERVER_UIDS_H

#include <pthread.h>

struct uid_counts {
    pthread_mutex_t mu;
    struct uid_count {
        long long uid;
        unsigned n;
    } * v;
    unsigned n, cap;
};

void uid_counts_init(struct uid_counts *u);
void uid_counts_free(struct uid_counts *u);
/* Counts one more session of uid: 0, or -EUSERS when it has `max`
 * already (max 0: no limit; uid < 0: unknown, never counted). */
int uid_acquire(struct uid_counts *u, long long uid, unsigned max);
/* Gives one back (uid < 0: nothing was counted). */
void uid_release(struct uid_counts *u, long long uid);

#endif
