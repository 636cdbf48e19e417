/*
 * Sessions per peer uid (see uids.h): a small array under a mutex, as a
 * host serves a handful of uids.
 */
#include "server/uids.h"

#include <errno.h>
#include <stdlib.h>

void uid_counts_init(struct uid_counts *u)
{
    pthread_mutex_init(&u->mu, NULL);
    u->v = NULL;
    u->n = u->cap = 0;
}

void uid_counts_free(struct uid_counts *u)
{
    free(u->v);
    u->v = NULL;
    u->n = u->cap = 0;
    pthread_mutex_destroy(&u->mu);
}

int uid_acquire(struct uid_counts *u, long long uid, unsigned max)
{
    if (uid < 0 || max == 0)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&u->mu);
    unsigned i = 0;
    while (i < u->n && u->v[i].uid != uid)
        i++;
    if (i == u->n) {
        if (u->n == u->cap) {
            unsigned cap = u->cap ? u->cap * 2 : 16;
            struct uid_count *v = realloc(u->v, cap * sizeof(*v));
            if (v == NULL) {
                pthread_mutex_unlock(&u->mu);
                return -ENOMEM;
            }
            u->v = v;
            u->cap = cap;
        }
        u->v[u->n++] = (struct uid_count){uid, 0};
    }
    if (u->v[i].n >= max)
        rc = -EUSERS;
    else
        u->v[i].n++;
    pthread_mutex_unlock(&u->mu);
    return rc;
}

void uid_release(struct uid_counts *u, long long uid)
{
    if (uid < 0)
        return;
    pthread_mutex_lock(&u->mu);
    for (unsigned i = 0; i < u->n; i++) {
        if (u->v[i].uid == uid) {
            if (--u->v[i].n == 0)
                u->v[i] = u->v[--u->n];
            break;
        }
    }
    pthread_mutex_unlock(&u->mu);
}
