/*
 * shmipc-bench, the shmipc side: the event-loop client that drives all C
 * streams of a row from one thread (cfg.no_io_thread), and the library
 * server (a forked child running shmipc_server with the bench handler).
 *
 * The one rule: a request is built in place in the shared pool (reserve and
 * fill in full mode; in zero-touch mode one reserved slice with byte 0 set,
 * or for larger sizes one written byte and advance), and a
 * response is checked in place through its views and released before the
 * stream's next request goes out; nothing is copied on the client side.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "bench_shm.h"
#include "shmipc/shmipc.h"

/* shmipc's default slice classes; only the shares and the pool size are
 * fitted to the row, so that every request and response in flight fits in
 * shared memory (a pool that runs dry falls back to the socket, which is
 * another benchmark). */
static uint32_t class_cap[3] = {8172, 32748, 131052};
#define SLICE_HDR 20u
#define POOL_MIN (32u << 20)
#define POOL_MAX 0xffffffffull

struct shm_slot {
    shmipc_stream *st;
    unsigned idx;
    int busy;    /* a request in flight */
    int warmed;  /* completed at least one round trip this row */
    uint64_t t0; /* request started */
    uint64_t seed;
    uint64_t seq;
};

struct shm_client {
    shmipc_client *c;
    size_t chunk; /* full mode: bytes per shmipc_stream_reserve() */
    size_t size;
    unsigned conc;
    unsigned sessions;
    struct shm_slot *slots;
    shmipc_stream **ready;
};

/* Slices one message may take, per class, at worst (a first small slice
 * for the zero-touch byte, a medium or small one for a remainder, the rest
 * in large slices); messages: a request and a response per stream plus a
 * few in transit. */
static void pool_plan(size_t size, unsigned conc, struct shmipc_client_config *cfg)
{
    uint64_t msgs = 2ull * conc + 8;
    uint64_t per[3] = {2, 1, (size + class_cap[2] - 1) / class_cap[2] + 1};
    uint64_t bytes[3], sum = 0;
    for (int i = 0; i < 3; i++) {
        bytes[i] = msgs * per[i] * (class_cap[i] + SLICE_HDR);
        sum += bytes[i];
    }
    uint32_t pct[3], total = 0;
    for (int i = 0; i < 3; i++) {
        pct[i] = (uint32_t)(bytes[i] * 100 / sum);
        if (pct[i] == 0)
            pct[i] = 1;
        total += pct[i];
    }
    while (total > 100) { /* rounding up the small ones may overshoot */
        int big = pct[0] >= pct[1] && pct[0] >= pct[2] ? 0 : pct[1] >= pct[2] ? 1 : 2;
        pct[big]--;
        total--;
    }
    uint64_t pool = 0;
    for (int i = 0; i < 3; i++) {
        uint64_t need = bytes[i] * 100 / pct[i];
        if (need > pool)
            pool = need;
    }
    pool = pool + pool / 8 + (1u << 20); /* headroom and the headers */
    if (pool < POOL_MIN)
        pool = POOL_MIN;
    if (pool > POOL_MAX) {
        fprintf(stderr,
                "shmipc-bench: a %zu-byte x %u-stream row needs a %llu-byte pool; using the "
                "4 GiB maximum (expect fallbacks)\n",
                size, conc, (unsigned long long)pool);
        pool = POOL_MAX;
    }
    cfg->pool_bytes = (size_t)pool;
    cfg->nclasses = 3;
    for (int i = 0; i < 3; i++)
        cfg->classes[i] = (struct shmipc_slice_class){class_cap[i], pct[i]};
}

void shm_set_max_slice(uint32_t bytes)
{
    if (bytes > class_cap[1])
        class_cap[2] = bytes;
}

uint32_t shm_max_slice(void)
{
    return class_cap[2];
}

void shm_client_close(struct shm_client *c)
{
    if (c == NULL)
        return;
    for (unsigned i = 0; c->slots != NULL && i < c->conc; i++)
        if (c->slots[i].st != NULL)
            shmipc_stream_close(c->slots[i].st);
    shmipc_client_close(c->c);
    free(c->slots);
    free(c->ready);
    free(c);
}

int shm_client_open(const struct shm_client_opts *o, size_t size, unsigned conc,
                    struct shm_client **out)
{
    struct shm_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->size = size;
    c->conc = conc;
    c->chunk = o->reserve_chunk ? o->reserve_chunk : class_cap[2];
    if (c->chunk > class_cap[2])
        c->chunk = class_cap[2];
    c->sessions = o->sessions < conc ? o->sessions : conc;
    if (c->sessions == 0)
        c->sessions = 1;
    c->slots = calloc(conc, sizeof(*c->slots));
    c->ready = calloc(conc, sizeof(*c->ready));
    if (c->slots == NULL || c->ready == NULL) {
        shm_client_close(c);
        return -ENOMEM;
    }
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = o->address;
    cfg.mode = o->file_mode ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD;
    cfg.sessions = c->sessions;
    cfg.no_io_thread = 1;
    cfg.spin_us = o->spin_us;
    cfg.prefault = 1; /* first touches of fresh pages stay out of the rows */
    cfg.connect_timeout_ms = 5000;
    cfg.max_event_bytes = 64u << 20;
    pool_plan(size, conc, &cfg);
    int rc = shmipc_client_open(&cfg, &c->c);
    for (unsigned i = 0; rc == 0 && i < conc; i++) {
        struct shm_slot *s = &c->slots[i];
        s->idx = i;
        rc = shmipc_client_get(c->c, &s->st);
        if (rc == 0)
            shmipc_stream_set_user(s->st, s);
    }
    if (rc < 0) {
        fprintf(stderr, "shmipc-bench: shmipc client to %s: %s\n", o->address, shmipc_strerror(rc));
        shm_client_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* Builds and flushes the slot's next request. */
static int shm_send(struct shm_client *c, struct shm_slot *s, enum bench_mode mode, uint64_t t)
{
    int rc;
    s->t0 = t;
    if (mode == MODE_FULL) {
        s->seed = pattern_seed(s->idx, ++s->seq);
        size_t off = 0;
        while (off < c->size) {
            size_t k = c->size - off < c->chunk ? c->size - off : c->chunk;
            void *p;
            if ((rc = shmipc_stream_reserve(s->st, k, &p)) < 0)
                return rc;
            pattern_fill(p, off, k, s->seed);
            off += k;
        }
    } else if (c->size <= class_cap[2]) { /* one slice: reserved, byte 0 set */
        void *p;
        if ((rc = shmipc_stream_reserve(s->st, c->size, &p)) < 0)
            return rc;
        *(uint8_t *)p = REQ_ZERO;
    } else {
        static const uint8_t z = REQ_ZERO;
        if ((rc = shmipc_stream_write(s->st, &z, 1)) < 0 ||
            (rc = shmipc_stream_advance(s->st, c->size - 1)) < 0)
            return rc;
    }
    if ((rc = shmipc_stream_flush(s->st)) < 0)
        return rc;
    s->busy = 1;
    return 0;
}

static int shm_check(const struct shm_client *c, const struct shm_slot *s, const shmipc_msg *m,
                     enum bench_mode mode)
{
    if (m->len != c->size)
        return 0;
    if (mode == MODE_ZERO)
        return 1;
    size_t off = 0;
    for (unsigned i = 0; i < m->niov; i++) {
        if (!pattern_check(m->iov[i].base, off, m->iov[i].len, s->seed))
            return 0;
        off += m->iov[i].len;
    }
    return 1;
}

static uint64_t shm_wakeups(void *arg)
{
    struct shm_client *c = arg;
    struct shmipc_stats st;
    shmipc_client_stats(c->c, &st);
    return st.wakeups_sent + st.wakeups_received;
}

/* Takes the responses waiting on one ready stream and sends each slot's
 * next request. */
static void shm_serve_ready(struct shm_client *c, struct row_run *w, struct shm_slot *s)
{
    shmipc_msg m;
    int rc;
    while ((rc = shmipc_stream_recv(s->st, &m, 0)) == 0) {
        int ok = s->busy && shm_check(c, s, &m, w->p->mode);
        shmipc_msg_release(&m);
        uint64_t t = now_ns();
        if (!ok)
            row_bad_response(w, s->idx, c->size);
        if (!s->busy)
            continue;
        s->busy = 0;
        if (!row_complete(w, &s->warmed, s->t0, t))
            continue;
        if ((rc = shm_send(c, s, w->p->mode, t)) < 0) {
            fprintf(stderr, "shmipc-bench: send on stream %u: %s\n", s->idx, shmipc_strerror(rc));
            w->r->errors++;
            row_stop(w, 0);
            continue;
        }
        w->inflight++;
    }
    if (rc != SHMIPC_ETIMEDOUT) {
        fprintf(stderr, "shmipc-bench: stream %u: %s\n", s->idx, shmipc_strerror(rc));
        w->r->errors++;
        if (s->busy) {
            s->busy = 0;
            w->inflight--;
        }
        row_stop(w, 0);
    }
}

int shm_row(struct shm_client *c, const struct row_params *p, struct row_result *r)
{
    struct row_run w;
    if (row_begin(&w, p, r, c->sessions, "stream", shm_wakeups, c) < 0)
        return -ENOMEM;
    struct shmipc_stats st0, st1;
    shmipc_client_stats(c->c, &st0);
    for (unsigned i = 0; i < c->conc; i++) {
        struct shm_slot *s = &c->slots[i];
        s->busy = s->warmed = 0;
        int rc = shm_send(c, s, p->mode, now_ns());
        if (rc < 0) {
            fprintf(stderr, "shmipc-bench: send on stream %u: %s\n", i, shmipc_strerror(rc));
            r->errors++;
            row_stop(&w, w.row0);
            break;
        }
        w.inflight++;
    }
    while (w.ph != PH_DRAIN || w.inflight > 0) {
        if (row_tick(&w) == 0)
            break;
        int n = shmipc_client_poll(c->c, c->ready, (int)c->conc, 50);
        if (n < 0) {
            fprintf(stderr, "shmipc-bench: shmipc_client_poll: %s\n", shmipc_strerror(n));
            r->errors++;
            break;
        }
        for (int i = 0; i < n; i++)
            shm_serve_ready(c, &w, shmipc_stream_user(c->ready[i]));
    }
    /* Over the whole row: a stream that fell back in the warm-up stays so. */
    shmipc_client_stats(c->c, &st1);
    r->fallbacks =
        st1.fallbacks_sent + st1.fallbacks_received - st0.fallbacks_sent - st0.fallbacks_received;
    return row_end(&w);
}

/* ---- probe: one request of each mode through a blocking-style client ---- */

int shm_probe(const char *address, int file_mode, int timeout_ms, char *err, size_t errlen)
{
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = address;
    cfg.mode = file_mode ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD;
    cfg.pool_bytes = 4u << 20;
    cfg.connect_timeout_ms = 1000;
    shmipc_client *c = NULL;
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
    enum log_level saved = log_get_level();
    log_set_level(LOG_ERROR); /* refused connections while the server starts */
    int rc;
    while ((rc = shmipc_client_open(&cfg, &c)) < 0 && now_ns() < deadline && !bench_stop) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    log_set_level(saved);
    if (rc < 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", address, shmipc_strerror(rc));
        return rc;
    }
    shmipc_stream *st = NULL;
    enum { N = 1000 };
    uint8_t req[N];
    shmipc_msg m = {0};
    rc = shmipc_client_get(c, &st);
    if (rc == 0) {
        uint64_t seed = pattern_seed(0, 1);
        pattern_fill(req, 0, N, seed);
        rc = shmipc_call(st, req, N, &m, 5000);
        if (rc == 0 &&
            (m.len != N || m.niov == 0 || !pattern_check(m.iov[0].base, 0, m.iov[0].len, seed)))
            rc = -EBADMSG;
        shmipc_msg_release(&m);
    }
    if (rc == 0) {
        req[0] = REQ_ZERO;
        rc = shmipc_stream_write(st, req, 1);
        if (rc == 0)
            rc = shmipc_stream_advance(st, N - 1);
        if (rc == 0)
            rc = shmipc_stream_flush(st);
        if (rc == 0)
            rc = shmipc_stream_recv(st, &m, 5000);
        if (rc == 0 && m.len != N)
            rc = -EBADMSG;
        shmipc_msg_release(&m);
    }
    if (rc < 0)
        snprintf(err, errlen, "%s did not answer a test request correctly: %s", address,
                 shmipc_strerror(rc));
    if (st != NULL)
        shmipc_client_put(c, st);
    shmipc_client_close(c);
    return rc;
}

/* ---- the library server (forked child) ---- */

static shmipc_server *lib_srv;

static void lib_stop(int sig)
{
    (void)sig;
    shmipc_server_stop(lib_srv);
}

/* 'Z': one byte and the rest left as the slices hold it, the request not
 * touched beyond byte 0; 'F' (or anything else): an echo, the request's
 * own slices sent back (shmipc_stream_forward: nothing copied or read). */
static void lib_message(shmipc_stream *st, shmipc_msg *m, void *arg)
{
    (void)arg;
    int rc;
    if (m->len > 0 && m->iov[0].len > 0 && m->iov[0].base[0] == REQ_ZERO) {
        static const uint8_t z = REQ_ZERO;
        void *p;
        if (m->len <= class_cap[2]) { /* one slice: reserved, byte 0 set */
            if ((rc = shmipc_stream_reserve(st, m->len, &p)) == 0)
                *(uint8_t *)p = z;
        } else if ((rc = shmipc_stream_write(st, &z, 1)) == 0) {
            rc = shmipc_stream_advance(st, m->len - 1);
        }
        shmipc_msg_release(m);
        if (rc == 0)
            rc = shmipc_stream_flush(st);
    } else {
        rc = shmipc_stream_forward(st, m);
    }
    if (rc < 0 && rc != SHMIPC_EQFULL) /* a full queue is retried by the server */
        shmipc_stream_discard(st);
}

static int lib_serve(const char *address, int spin_us, int ready_fd)
{
    struct shmipc_server_config cfg;
    shmipc_server_config_init(&cfg);
    cfg.address = address;
    cfg.spin_us = spin_us;
    cfg.socket_mode = 0600;
    cfg.max_pool_bytes = POOL_MAX;
    cfg.max_event_bytes = 64u << 20;
    struct shmipc_server_handlers h = {.on_message = lib_message};
    int rc = shmipc_server_open(&cfg, &h, NULL, &lib_srv);
    uint8_t status = rc == 0 ? 0 : 1;
    if (write(ready_fd, &status, 1) != 1 || rc < 0)
        return 1;
    close(ready_fd);
    struct sigaction sa = {.sa_handler = lib_stop};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    rc = shmipc_server_run(lib_srv);
    shmipc_server_close(lib_srv);
    return rc < 0;
}

int shm_lib_server_start(const char *address, int spin_us, pid_t *pid)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    pid_t parent = getpid();
    pid_t c = fork();
    if (c < 0) {
        int e = -errno;
        close(fds[0]);
        close(fds[1]);
        return e;
    }
    if (c == 0) {
        child_die_with_parent(parent);
        close(fds[0]);
        _exit(lib_serve(address, spin_us, fds[1]));
    }
    child_track(c);
    close(fds[1]);
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    uint8_t status = 1;
    int rc = poll(&pfd, 1, 10000) == 1 && read(fds[0], &status, 1) == 1 && status == 0 ? 0 : -EIO;
    close(fds[0]);
    if (rc < 0) {
        fprintf(stderr, "shmipc-bench: the library server did not start on %s\n", address);
        child_stop(c, 1000);
        return rc;
    }
    *pid = c;
    return 0;
}
