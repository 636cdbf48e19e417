/*
 * A session's stream table (see table.h): streams by id in a hash table
 * that doubles as they grow. The one rule: a stream is in the table
 * exactly while ST_IN_TABLE is set, and that flag stands for the table's
 * reference on it.
 */
#include "session/table.h"

#include <errno.h>
#include <stdlib.h>

#include "session/pool_ref.h"
#include "shmipc/errors.h"

static unsigned bucket(const struct session *s, uint32_t id)
{
    return (id * 2654435761u) >> 8 & (s->nbuckets - 1);
}

shmipc_stream *lookup_locked(struct session *s, uint32_t id)
{
    shmipc_stream *st = s->table[bucket(s, id)];
    while (st != NULL && st->id != id)
        st = st->hnext;
    return st;
}

static void grow_table_locked(struct session *s)
{
    unsigned n = s->nbuckets * 2;
    shmipc_stream **t = calloc(n, sizeof(*t));
    if (t == NULL)
        return; /* longer chains, still correct */
    shmipc_stream **old = s->table;
    unsigned oldn = s->nbuckets;
    s->table = t;
    s->nbuckets = n;
    for (unsigned b = 0; b < oldn; b++) {
        shmipc_stream *st = old[b];
        while (st != NULL) {
            shmipc_stream *next = st->hnext;
            unsigned k = bucket(s, st->id);
            st->hnext = t[k];
            t[k] = st;
            st = next;
        }
    }
    free(old);
}

static shmipc_stream *stream_new_locked(struct session *s, uint32_t id)
{
    shmipc_stream *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    st->sess = s;
    st->id = id;
    st->refs = 1; /* the table's */
    st->flags = ST_IN_TABLE;
    pthread_cond_init(&st->cv, NULL);
    pool_writer_init(&st->w, &s->pool->pool);
    session_get(s);
    if (s->nstreams >= s->nbuckets)
        grow_table_locked(s);
    unsigned k = bucket(s, id);
    st->hnext = s->table[k];
    s->table[k] = st;
    s->nstreams++;
    s->stats.streams_opened++;
    return st;
}

void stream_unlink_locked(struct session *s, shmipc_stream *st)
{
    if (!(st->flags & ST_IN_TABLE))
        return;
    shmipc_stream **pp = &s->table[bucket(s, st->id)];
    while (*pp != st)
        pp = &(*pp)->hnext;
    *pp = st->hnext;
    st->hnext = NULL;
    st->flags &= ~ST_IN_TABLE;
    s->nstreams--;
}

int session_open_stream(struct session *s, shmipc_stream **out)
{
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->dead)
        rc = s->err ? s->err : SHMIPC_ECLOSED;
    else if (s->hot != HOT_NONE && s->cfg.role == ROLE_CLIENT)
        rc = SHMIPC_ERETIRED;
    else if (session_unhealthy(s))
        rc = SHMIPC_EUNHEALTHY;
    else if (s->cfg.max_streams && s->nstreams >= s->cfg.max_streams)
        rc = -EMFILE;
    if (rc == 0) {
        uint32_t id;
        do
            id = ++s->next_id;
        while (id < 2 || lookup_locked(s, id) != NULL);
        shmipc_stream *st = stream_new_locked(s, id);
        if (st == NULL) {
            rc = -ENOMEM;
        } else {
            __atomic_add_fetch(&st->refs, 1, __ATOMIC_RELAXED); /* the caller's */
            *out = st;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Finds the stream an incoming message or close belongs to; a server
 * opens it implicitly on its first open-status message. */
shmipc_stream *stream_for_locked(struct session *s, uint32_t id, int opening)
{
    shmipc_stream *st = lookup_locked(s, id);
    if (st != NULL || !opening || s->cfg.role != ROLE_SERVER)
        return st;
    if (s->cfg.max_streams && s->nstreams >= s->cfg.max_streams) {
        protocol_error(s, -EMFILE, "peer opened more streams than allowed");
        return NULL;
    }
    return stream_new_locked(s, id);
}
