/*
 * The session object (see core.h): its creation, references, death and
 * protocol errors, its ready list and counters. The one rule: a session
 * dies once (session_die_locked() under s->mu, idempotent), and every
 * waiter wakes to that; what it holds is freed with its last reference.
 */
#include "session/core.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/log.h"
#include "proto/sock.h"
#include "session/pool_ref.h"
#include "shmipc/errors.h"

#define IN_START (64u << 10)

int session_new(const struct session_cfg *cfg, int fd, struct pool_ref *pool,
                struct region *qregion, struct session **out)
{
    struct session *s = calloc(1, sizeof(*s));
    int rc = -ENOMEM;
    if (s == NULL)
        goto fail;
    s->cfg = *cfg;
    s->nbuckets = 256;
    s->table = calloc(s->nbuckets, sizeof(*s->table));
    s->in_cap = IN_START;
    s->in = malloc(s->in_cap);
    if (s->table == NULL || s->in == NULL)
        goto fail;
    rc = queue_pair_map(&s->qp, qregion->base, qregion->size, cfg->role == ROLE_SERVER);
    if (rc < 0)
        goto fail;
    /* Held briefly by many threads of a threaded client: spin a little
     * before sleeping on it. */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&s->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_cond_init(&s->out_cv, NULL);
    s->refs = 1;
    s->fd = fd;
    s->flag_head = INT64_MIN;
    s->ep_fd = -1;
    /* What the owner says of itself comes with the config. */
    s->owner = cfg->owner;
    s->index = cfg->index;
    s->kick_fd = cfg->kick_need != NULL ? cfg->kick_fd : -1;
    s->kick_need = cfg->kick_need;
    s->pool = pool;
    s->qregion = *qregion;
    region_init(qregion);
    s->next_id = 1;
    s->last_rx_ns = s->last_tx_ns = sock_now_ns();
    *out = s;
    return 0;
fail:
    if (s != NULL) {
        free(s->table);
        free(s->in);
        free(s);
    }
    close(fd);
    region_close(qregion);
    pool_ref_put(pool);
    return rc;
}

void session_get(struct session *s)
{
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
}

static void session_free(struct session *s)
{
    /* Streams hold references, so none is left in the table here. */
    free(s->table);
    free(s->in);
    free(s->out);
    close(s->fd);
    region_close(&s->qregion);
    pool_ref_put(s->pool);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->out_cv);
    free(s);
}

void session_put(struct session *s)
{
    if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0)
        session_free(s);
}

int session_alive(struct session *s)
{
    return !__atomic_load_n(&s->dead, __ATOMIC_ACQUIRE);
}

int session_unhealthy(struct session *s)
{
    uint64_t until = __atomic_load_n(&s->unhealthy_until_ns, __ATOMIC_RELAXED);
    return until != 0 && sock_now_ns() < until;
}

void session_futex_wake(struct session *s, uint32_t bits)
{
    syscall(SYS_futex, &s->fseq, FUTEX_WAKE_BITSET_PRIVATE, INT_MAX, NULL, NULL, bits);
}

void session_wake_followers(struct session *s)
{
    uint32_t bits = __atomic_exchange_n(&s->wake_bits, 0, __ATOMIC_ACQ_REL);
    if (bits != 0)
        session_futex_wake(s, bits);
}

static void wake_all_locked(struct session *s)
{
    for (unsigned b = 0; b < s->nbuckets; b++)
        for (shmipc_stream *st = s->table[b]; st != NULL; st = st->hnext)
            pthread_cond_broadcast(&st->cv);
    pthread_cond_broadcast(&s->out_cv);
    __atomic_add_fetch(&s->fseq, 1, __ATOMIC_RELEASE);
    session_futex_wake(s, FOLLOWERS_ALL);
}

void session_die_locked(struct session *s, int err, const char *why)
{
    if (s->dead)
        return;
    /* err and why first: whoever sees dead (acquire) may read them unlocked. */
    s->err = err;
    snprintf(s->why, sizeof(s->why), "%s", why);
    __atomic_store_n(&s->dead, 1, __ATOMIC_RELEASE);
    shutdown(s->fd, SHUT_RDWR); /* the driver sees a hang-up and lets go */
    wake_all_locked(s);
    if (s->cfg.notify_ready)
        for (unsigned b = 0; b < s->nbuckets; b++)
            for (shmipc_stream *st = s->table[b]; st != NULL; st = st->hnext)
                mark_ready_locked(s, st);
}

void session_die(struct session *s, int err, const char *why)
{
    pthread_mutex_lock(&s->mu);
    session_die_locked(s, err, why);
    pthread_mutex_unlock(&s->mu);
}

int protocol_error(struct session *s, int err, const char *what)
{
    /* Once the peer shrank its memory under us, whatever looked wrong
     * (zeros where counters were) follows from that: say so. */
    if (region_tripped(&s->pool->region) || region_tripped(&s->qregion)) {
        err = SHMIPC_ECORRUPT;
        what = "peer truncated its shared memory";
    }
    char why[160];
    snprintf(why, sizeof(why), "%s: %s", what, shmipc_strerror(err));
    s->stats.protocol_errors++;
    log_warn("session %d (fd %d): closing: %s", s->index, s->fd, why);
    session_die_locked(s, err, why);
    return err;
}

void mark_ready_locked(struct session *s, shmipc_stream *st)
{
    if (!s->cfg.notify_ready || (st->flags & ST_READY))
        return;
    st->flags |= ST_READY;
    __atomic_add_fetch(&st->refs, 1, __ATOMIC_RELAXED); /* the ready list's */
    st->rnext = NULL;
    if (s->ready_tail != NULL)
        s->ready_tail->rnext = st;
    else
        s->ready_head = st;
    s->ready_tail = st;
}

shmipc_stream *session_next_ready(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    shmipc_stream *st = s->ready_head;
    if (st != NULL) {
        s->ready_head = st->rnext;
        if (s->ready_head == NULL)
            s->ready_tail = NULL;
        st->rnext = NULL;
        st->flags &= ~ST_READY;
    }
    pthread_mutex_unlock(&s->mu);
    return st; /* carries the ready list's reference */
}

void session_add_stats(struct session *s, struct shmipc_stats *st)
{
    pthread_mutex_lock(&s->mu);
    const struct session_stats *a = &s->stats;
    st->streams_opened += a->streams_opened;
    st->messages_sent += a->messages_sent;
    st->messages_received += a->messages_received;
    st->bytes_sent += a->bytes_sent;
    st->bytes_received += a->bytes_received;
    st->wakeups_sent += a->wakeups_sent;
    st->wakeups_received += a->wakeups_received;
    st->fallbacks_sent += a->fallbacks_sent;
    st->fallbacks_received += a->fallbacks_received;
    st->queue_full += a->queue_full;
    st->protocol_errors += a->protocol_errors;
    pthread_mutex_unlock(&s->mu);
}
