/*
 * The read-slice reuse pattern of the Go and Rust libraries, played by a
 * raw peer (see reuse_peer.h). One session at a time, one message in
 * flight per session: the point is the slices' life, not speed.
 */
#include "reuse_peer.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/event.h"
#include "proto/handshake.h"
#include "proto/sock.h"
#include "shm/queue.h"
#include "shm/region.h"
#include "shmipc/errors.h"

#define RP_NONE UINT32_MAX
#define RP_QCAP 64u
#define RP_MAX_STREAMS 64u
#define RP_POOL_MAP_MAX ((size_t)1 << 31)

/* One session of the raw peer, either side. */
struct rp_sess {
    int fd;
    uint8_t version;
    struct region pr, qr;
    struct pool pool;
    struct queue_pair qp;
    uint8_t *buf; /* a message's bytes */
    size_t buf_cap;
    struct rp_report *r;
};

static int fail(struct rp_report *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct rp_report *r, int rc, const char *fmt, ...)
{
    if (r->why[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->why, sizeof(r->why), fmt, ap);
        va_end(ap);
    }
    return rc < 0 ? rc : -EPROTO;
}

uint8_t rp_byte(uint32_t id, uint64_t round, uint32_t i)
{
    return (uint8_t)(id * 31u + round * 7u + i * 13u + (i >> 8));
}

static void sess_init(struct rp_sess *s, struct rp_report *r)
{
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    region_init(&s->pr);
    region_init(&s->qr);
    s->r = r;
}

static void sess_close(struct rp_sess *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    region_close(&s->qr);
    region_close(&s->pr);
    free(s->buf);
    s->buf = NULL;
}

static int buf_reserve(struct rp_sess *s, size_t n)
{
    if (n <= s->buf_cap)
        return 0;
    uint8_t *b = realloc(s->buf, n);
    if (b == NULL)
        return fail(s->r, -ENOMEM, "out of memory for a %zu-byte message", n);
    s->buf = b;
    s->buf_cap = n;
    return 0;
}

/* ---- the free lists ---- */

static int list_all_free(const struct pool *p, unsigned li, uint8_t *seen, char *why, size_t whylen)
{
    const struct pool_list *l = &p->lists[li];
    int32_t nfree = __atomic_load_n(&l->hdr->free_count, __ATOMIC_ACQUIRE);
    if (nfree != (int32_t)l->nslices) {
        snprintf(why, whylen, "list %u (%u-byte slices): %d of %u slices free", li, l->slice_cap,
                 nfree, l->nslices);
        return 0;
    }
    memset(seen, 0, l->nslices);
    uint32_t rel = l->hdr->head;
    for (uint32_t n = 1;; n++) {
        if (rel % l->stride != 0 || rel / l->stride >= l->nslices) {
            snprintf(why, whylen, "list %u: free list link %u is not a slice", li, rel);
            return 0;
        }
        uint32_t k = rel / l->stride;
        if (seen[k]++) {
            snprintf(why, whylen, "list %u: slice %u is on the free list twice", li, k);
            return 0;
        }
        const struct shmipc_slice_header *h = (const void *)(l->region + rel);
        if (!(h->flags & SHMIPC_SLICE_HAS_NEXT)) {
            if (n != l->nslices || rel != l->hdr->tail) {
                snprintf(why, whylen, "list %u: the free list ends after %u of %u slices", li, n,
                         l->nslices);
                return 0;
            }
            return 1;
        }
        rel = h->next;
    }
}

int rp_pool_all_free(const struct pool *p, uint32_t *nfree, char *why, size_t whylen)
{
    uint32_t most = 0, total = 0;
    for (unsigned i = 0; i < p->nlists; i++) {
        most = p->lists[i].nslices > most ? p->lists[i].nslices : most;
        int32_t f = __atomic_load_n(&p->lists[i].hdr->free_count, __ATOMIC_RELAXED);
        total += f > 0 ? (uint32_t)f : 0;
    }
    *nfree = total;
    uint8_t *seen = malloc(most ? most : 1);
    if (seen == NULL) {
        snprintf(why, whylen, "out of memory");
        return 0;
    }
    int ok = 1;
    for (unsigned i = 0; ok && i < p->nlists; i++)
        ok = list_all_free(p, i, seen, why, whylen);
    free(seen);
    return ok;
}

/* Waits until the peer has given back every slice (it may free them after
 * its session closed): 0, or a failure naming what is missing. */
static int wait_all_free(struct rp_sess *s, int ms)
{
    uint64_t dl = sock_deadline(ms);
    char why[160] = "";
    uint32_t nfree = 0;
    for (;;) {
        if (rp_pool_all_free(&s->pool, &nfree, why, sizeof(why))) {
            s->r->free_slices = nfree;
            s->r->total_slices = s->pool.total_slices;
            return 0;
        }
        if (sock_now_ns() >= dl)
            break;
        usleep(2000);
    }
    s->r->free_slices = nfree;
    s->r->total_slices = s->pool.total_slices;
    return fail(s->r, -ETIMEDOUT, "slices not all back on the free lists after %d ms: %s", ms, why);
}

/* ---- events ---- */

static int send_simple(struct rp_sess *s, uint8_t type)
{
    uint8_t ev[SHMIPC_EV_HEADER_LEN];
    ev_encode_simple(ev, sizeof(ev), s->version, type);
    int rc = sock_write_all(s->fd, ev, sizeof(ev), sock_deadline(5000));
    return rc < 0 ? fail(s->r, rc, "sending event %u: %s", type, shmipc_strerror(rc)) : 0;
}

/* Waits for the next event and reads it. 1 for a Polling, 0 for anything
 * harmless, SHMIPC_ECLOSED at the peer's end, or a failure. */
static int read_event(struct rp_sess *s, uint64_t dl)
{
    struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
    int left = (int)((dl > sock_now_ns() ? dl - sock_now_ns() : 0) / 1000000u);
    int n = poll(&pfd, 1, left);
    if (n == 0)
        return fail(s->r, SHMIPC_ETIMEDOUT, "no event from the peer within the deadline");
    if (n < 0)
        return errno == EINTR ? 0 : fail(s->r, -errno, "poll: %s", strerror(errno));
    uint8_t hdr[SHMIPC_EV_HEADER_LEN];
    int rc = sock_read_exact(s->fd, hdr, sizeof(hdr), dl);
    if (rc == SHMIPC_ECLOSED)
        return rc;
    if (rc < 0)
        return fail(s->r, rc, "reading an event: %s", shmipc_strerror(rc));
    struct ev_header h;
    if ((rc = ev_decode_header(hdr, 1u << 16, &h)) < 0)
        return fail(s->r, rc, "bad event from the peer: %s", shmipc_strerror(rc));
    uint8_t body[64];
    if (h.length > SHMIPC_EV_HEADER_LEN + sizeof(body))
        return fail(s->r, -EPROTO, "unexpected %u-byte event of type %u (fallback?)", h.length,
                    h.type);
    if ((rc = sock_read_exact(s->fd, body, h.length - SHMIPC_EV_HEADER_LEN, dl)) < 0)
        return fail(s->r, rc, "reading an event body: %s", shmipc_strerror(rc));
    if (h.type == SHMIPC_EV_POLLING)
        return 1;
    if (h.type == SHMIPC_EV_STREAM_CLOSE)
        return 0;
    return fail(s->r, -EPROTO, "unexpected event type %u", h.type);
}

/* ---- messages with the reuse pattern ---- */

/* Frees a slice of a received message (the peer may have published it
 * with IN_USE clear, as we do). */
static int free_slice(struct rp_sess *s, const struct pool_seg *seg)
{
    if (seg->reused)
        pool_adopt(&s->pool, seg->off);
    int rc = pool_push(&s->pool, seg->off);
    return rc < 0 ? fail(s->r, rc, "freeing slice %u: %s", seg->off, shmipc_strerror(rc)) : 0;
}

/* Reads the message at `first` into s->buf (*len bytes), frees every slice
 * but the last and keeps that one, its header zeroed, in *kept. */
static int take_msg(struct rp_sess *s, uint32_t first, uint32_t *len, uint32_t *kept)
{
    struct pool_walk w;
    struct pool_seg seg, prev;
    int rc, have_prev = 0;
    size_t total = 0;
    pool_walk_init(&w, &s->pool, first);
    while ((rc = pool_walk_next(&w, &seg)) > 0) {
        /* The walk copied the next link: the previous slice may go. */
        if (have_prev && (rc = free_slice(s, &prev)) < 0)
            return rc;
        if ((rc = buf_reserve(s, total + seg.len)) < 0)
            return rc;
        memcpy(s->buf + total, seg.data, seg.len);
        total += seg.len;
        prev = seg;
        have_prev = 1;
    }
    if (rc < 0)
        return fail(s->r, rc, "bad chain at %u: %s", first, shmipc_strerror(rc));
    if (!have_prev)
        return fail(s->r, -EPROTO, "empty chain");
    /* Release-and-reuse: the header goes to zero, IN_USE included. */
    struct shmipc_slice_header *h = pool_slice(&s->pool, prev.off);
    h->size = 0;
    h->start = 0;
    __atomic_store_n(&h->flags, 0, __ATOMIC_RELEASE);
    *kept = prev.off;
    *len = (uint32_t)total;
    return 0;
}

/* Writes n bytes of s->buf as a message: into *kept first when there is
 * one (left with IN_USE clear), then into new slices linked after it. */
static int put_msg(struct rp_sess *s, uint32_t id, uint32_t n, uint32_t *kept)
{
    uint32_t head = RP_NONE, done = 0;
    int rc;
    if (*kept != RP_NONE) {
        head = *kept;
        *kept = RP_NONE;
        struct shmipc_slice_header *h = pool_slice(&s->pool, head);
        uint32_t cap = s->pool.lists[pool_list_of(&s->pool, head)].slice_cap;
        done = n < cap ? n : cap;
        memcpy(pool_slice_data(&s->pool, head), s->buf, done);
        h->size = done;
        h->start = 0;
        h->flags = 0;
        s->r->reused++;
    }
    if (head == RP_NONE || done < n) {
        struct pool_writer w;
        uint32_t rest;
        pool_writer_init(&w, &s->pool);
        rc = pool_writer_write(&w, s->buf + done, n - done);
        if (rc == 0)
            rc = pool_writer_touch(&w);
        if (rc == 0)
            rc = pool_writer_finish(&w, &rest);
        if (rc < 0) {
            pool_writer_abort(&w);
            if (head != RP_NONE) {
                pool_adopt(&s->pool, head);
                pool_push(&s->pool, head);
            }
            return fail(s->r, rc, "writing %u bytes: %s", n - done, shmipc_strerror(rc));
        }
        if (head == RP_NONE) {
            head = rest;
        } else {
            struct shmipc_slice_header *h = pool_slice(&s->pool, head);
            h->next = rest;
            h->flags = SHMIPC_SLICE_HAS_NEXT; /* linked, IN_USE still clear */
        }
    }
    struct shmipc_queue_elem e = {.stream_id = id, .offset = head, .status = SHMIPC_STREAM_OPEN};
    uint64_t dl = sock_deadline(5000);
    while ((rc = queue_put(&s->qp.send, &e)) == SHMIPC_EQFULL && sock_now_ns() < dl)
        usleep(1000);
    if (rc < 0)
        return fail(s->r, rc, "queue_put: %s", shmipc_strerror(rc));
    return queue_mark_working(&s->qp.send) ? send_simple(s, SHMIPC_EV_POLLING) : 0;
}

/* ---- client ---- */

static int client_mem(struct rp_sess *s, const struct rp_client_opts *o, char *bpath, char *qpath,
                      size_t plen)
{
    size_t pool_bytes = o->pool_bytes ? o->pool_bytes : POOL_DEFAULT_SIZE;
    int rc;
    if (o->file_mode) {
        snprintf(bpath, plen, "%s_buffer", o->shm_prefix);
        snprintf(qpath, plen, "%s_queue_0", o->shm_prefix);
        rc = region_create_file(&s->pr, bpath, pool_bytes, REGION_UNLINK_ON_CLOSE);
        if (rc == 0)
            rc =
                region_create_file(&s->qr, qpath, queue_pair_size(RP_QCAP), REGION_UNLINK_ON_CLOSE);
    } else {
        snprintf(bpath, plen, "reuse_buffer");
        snprintf(qpath, plen, "reuse_queue_0");
        rc = region_create_memfd(&s->pr, bpath, pool_bytes, 0);
        if (rc == 0)
            rc = region_create_memfd(&s->qr, qpath, queue_pair_size(RP_QCAP), 0);
    }
    if (rc == 0)
        rc = pool_create(&s->pool, s->pr.base, s->pr.size, pool_default_classes, 3);
    if (rc == 0)
        rc = queue_pair_create(&s->qp, s->qr.base, s->qr.size, RP_QCAP);
    return rc < 0 ? fail(s->r, rc, "setting up the pool and queue: %s", shmipc_strerror(rc)) : 0;
}

static int client_connect(struct rp_sess *s, const struct rp_client_opts *o)
{
    char bpath[200], qpath[200];
    int rc = client_mem(s, o, bpath, qpath, sizeof(bpath));
    if (rc < 0)
        return rc;
    struct sock_addr a;
    if ((rc = sock_addr_parse(o->addr, &a)) < 0)
        return fail(s->r, rc, "bad address %s", o->addr);
    if ((rc = sock_connect(&a, sock_deadline(5000))) < 0)
        return fail(s->r, rc, "connect(%s): %s", o->addr, shmipc_strerror(rc));
    s->fd = rc;
    if (o->file_mode)
        rc = hs_client(s->fd, HS_FILE,
                       (uint8_t)(o->version ? (unsigned)o->version : SHMIPC_PROTO_V2), qpath, bpath,
                       -1, -1, sock_deadline(5000), &s->version);
    else
        rc = hs_client(s->fd, HS_MEMFD, SHMIPC_PROTO_V3, qpath, bpath, s->pr.fd, s->qr.fd,
                       sock_deadline(5000), &s->version);
    return rc < 0 ? fail(s->r, rc, "handshake: %s", shmipc_strerror(rc)) : 0;
}

/* Waits for the answer on stream `id`; other elements are errors here. */
static int client_wait(struct rp_sess *s, uint32_t id, uint32_t *first, uint64_t dl)
{
    for (;;) {
        struct shmipc_queue_elem e;
        int rc;
        while ((rc = queue_pop(&s->qp.recv, &e)) == 0) {
            if (e.stream_id != id || (e.status & 0xff) != SHMIPC_STREAM_OPEN)
                return fail(s->r, -EPROTO,
                            "unexpected element: stream %u status %u (waiting on %u)", e.stream_id,
                            e.status, id);
            *first = e.offset;
            return 0;
        }
        if (rc != SHMIPC_EQEMPTY)
            return fail(s->r, rc, "queue_pop: %s", shmipc_strerror(rc));
        if (!queue_mark_not_working(&s->qp.recv))
            continue;
        rc = read_event(s, dl);
        if (rc == SHMIPC_ECLOSED)
            return fail(s->r, rc, "the server closed the session");
        if (rc < 0)
            return rc;
    }
}

static int client_roundtrip(struct rp_sess *s, uint32_t id, uint64_t round, uint32_t size,
                            uint32_t *kept, int ms)
{
    int rc = buf_reserve(s, size ? size : 1);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < size; i++)
        s->buf[i] = rp_byte(id, round, i);
    if ((rc = put_msg(s, id, size, kept)) < 0)
        return rc;
    uint32_t first = 0, len = 0;
    if ((rc = client_wait(s, id, &first, sock_deadline(ms))) < 0)
        return rc;
    if ((rc = take_msg(s, first, &len, kept)) < 0)
        return rc;
    if (len != size)
        return fail(s->r, -EPROTO, "stream %u round %llu: answer of %u bytes, sent %u", id,
                    (unsigned long long)round, len, size);
    for (uint32_t i = 0; i < size; i++)
        if (s->buf[i] != rp_byte(id, round, i))
            return fail(s->r, -EPROTO, "stream %u round %llu: byte %u differs", id,
                        (unsigned long long)round, i);
    return 0;
}

/* Closes our streams as the peers do: the kept slices go back to the
 * pool (IN_USE clear: adopted first), then a close element each. */
static int client_close_streams(struct rp_sess *s, uint32_t *kept, unsigned n)
{
    int rc = 0;
    for (unsigned i = 0; i < n; i++) {
        if (kept[i] != RP_NONE) {
            pool_adopt(&s->pool, kept[i]);
            int prc = pool_push(&s->pool, kept[i]);
            if (prc < 0 && rc == 0)
                rc = fail(s->r, prc, "freeing the kept slice: %s", shmipc_strerror(prc));
            kept[i] = RP_NONE;
        }
        struct shmipc_queue_elem e = {
            .stream_id = 2 + i, .offset = 0, .status = SHMIPC_STREAM_CLOSED};
        int qrc = queue_put(&s->qp.send, &e);
        if (qrc == 0 && queue_mark_working(&s->qp.send))
            qrc = send_simple(s, SHMIPC_EV_POLLING);
        if (qrc < 0 && rc == 0)
            rc = fail(s->r, qrc, "closing stream %u: %s", 2 + i, shmipc_strerror(qrc));
    }
    return rc;
}

int rp_client_run(const struct rp_client_opts *o, struct rp_report *r)
{
    memset(r, 0, sizeof(*r));
    int ms = o->timeout_ms > 0 ? o->timeout_ms : 5000;
    unsigned nst = o->streams ? o->streams : 1;
    if (nst > RP_MAX_STREAMS || (o->file_mode && o->shm_prefix == NULL))
        return fail(r, -EINVAL, "bad options");
    uint32_t kept[RP_MAX_STREAMS];
    for (unsigned i = 0; i < nst; i++)
        kept[i] = RP_NONE;
    struct rp_sess s;
    sess_init(&s, r);
    int rc = client_connect(&s, o);
    uint64_t t0 = sock_now_ns();
    for (uint64_t k = 0; rc == 0 && k < o->count; k++) {
        unsigned i = (unsigned)(k % nst);
        rc = client_roundtrip(&s, 2 + i, k / nst, o->size, &kept[i], ms);
        if (rc == 0)
            r->roundtrips++;
    }
    r->ns = sock_now_ns() - t0;
    if (rc == 0)
        rc = client_close_streams(&s, kept, nst);
    if (s.fd >= 0) {
        close(s.fd); /* the server sees the end of the session */
        s.fd = -1;
    }
    /* Everything we hold went back above; the server frees the rest when
     * its session closes. */
    if (rc == 0 && s.pool.base != NULL)
        rc = wait_all_free(&s, ms);
    if (o->leave_files) {
        s.pr.flags &= ~(unsigned)REGION_UNLINK_ON_CLOSE;
        s.qr.flags &= ~(unsigned)REGION_UNLINK_ON_CLOSE;
    }
    sess_close(&s);
    return rc;
}

/* ---- server ---- */

static int wait_fd(int fd, short events, uint64_t dl)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    for (;;) {
        uint64_t now = sock_now_ns();
        if (now >= dl)
            return SHMIPC_ETIMEDOUT;
        int n = poll(&pfd, 1, (int)((dl - now) / 1000000u) + 1);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

static int server_map(struct rp_sess *s, struct hs_server *h, const char *dir)
{
    int rc;
    const size_t qmin = 2 * SHMIPC_QUEUE_HEADER_LEN;
    if (h->mode == HS_MEMFD) {
        int bfd, qfd;
        hs_server_take_fds(h, &bfd, &qfd);
        rc = region_map_fd(&s->pr, bfd, 64, RP_POOL_MAP_MAX, 0);
        if (rc == 0)
            rc = region_map_fd(&s->qr, qfd, qmin, RP_POOL_MAP_MAX, 0);
        else
            close(qfd);
    } else {
        rc = region_open_file(&s->pr, dir, h->buffer_path, 64, RP_POOL_MAP_MAX, 0);
        if (rc == 0)
            rc = region_open_file(&s->qr, dir, h->queue_path, qmin, RP_POOL_MAP_MAX, 0);
    }
    if (rc == 0)
        rc = pool_map(&s->pool, s->pr.base, s->pr.size);
    if (rc == 0)
        rc = queue_pair_map(&s->qp, s->qr.base, s->qr.size, 1);
    return rc < 0 ? fail(s->r, rc, "mapping the client's memory: %s", shmipc_strerror(rc)) : 0;
}

static int server_handshake(struct rp_sess *s, const char *dir, int ms)
{
    struct hs_server h;
    uint64_t dl = sock_deadline(ms);
    hs_server_init(&h, s->fd, 1, dl);
    int rc;
    while ((rc = hs_server_step(&h)) != HS_DONE) {
        if (rc == HS_WANT_READ || rc == HS_WANT_WRITE) {
            rc = wait_fd(s->fd, rc == HS_WANT_READ ? POLLIN : POLLOUT, dl);
            if (rc == SHMIPC_ETIMEDOUT)
                continue; /* the step fails at the deadline */
        } else if (rc == HS_MAP) {
            rc = server_map(s, &h, dir);
            hs_server_mapped(&h, rc == 0, rc);
        }
        if (rc < 0)
            break;
    }
    s->version = h.version;
    if (rc < 0)
        fail(s->r, rc, "server handshake: %s (%s)", shmipc_strerror(rc), h.why);
    hs_server_cleanup(&h);
    return rc < 0 ? rc : 0;
}

/* Echoes everything queued, each answer written into the request's last
 * slice. 0 or a failure. */
static int server_drain(struct rp_sess *s)
{
    for (;;) {
        struct shmipc_queue_elem e;
        int rc;
        while ((rc = queue_pop(&s->qp.recv, &e)) == 0) {
            if ((e.status & 0xff) != SHMIPC_STREAM_OPEN)
                continue; /* a stream closed: nothing to answer */
            uint32_t len, kept = RP_NONE;
            if ((rc = take_msg(s, e.offset, &len, &kept)) < 0)
                return rc;
            if ((rc = put_msg(s, e.stream_id, len, &kept)) < 0)
                return rc;
            s->r->roundtrips++;
        }
        if (rc != SHMIPC_EQEMPTY)
            return fail(s->r, rc, "queue_pop: %s", shmipc_strerror(rc));
        if (queue_mark_not_working(&s->qp.recv))
            return 0;
    }
}

static int server_session(struct rp_sess *s, const char *dir, int ms)
{
    int rc = server_handshake(s, dir, ms);
    while (rc == 0) {
        rc = read_event(s, sock_deadline(ms));
        if (rc == SHMIPC_ECLOSED) {
            rc = 0;
            break;
        }
        if (rc >= 0)
            rc = server_drain(s);
    }
    if (rc == 0)
        rc = server_drain(s); /* what came with the last wake-up */
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    /* The client frees its cached slices when it closes the session. */
    if (rc == 0)
        rc = wait_all_free(s, ms);
    return rc;
}

int rp_server_run(const struct rp_server_opts *o, struct rp_report *r)
{
    memset(r, 0, sizeof(*r));
    int ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
    const char *dir = o->allowed_dir ? o->allowed_dir : "/dev/shm";
    struct sock_addr a;
    int rc = sock_addr_parse(o->addr, &a);
    if (rc < 0)
        return fail(r, rc, "bad address %s", o->addr);
    int lfd = sock_listen(&a, -1, 16);
    if (lfd < 0)
        return fail(r, lfd, "listen(%s): %s", o->addr, shmipc_strerror(lfd));
    if (o->ready_fd >= 0 && write(o->ready_fd, "r", 1) != 1)
        rc = fail(r, -errno, "ready pipe: %s", strerror(errno));
    for (unsigned k = 0; rc == 0 && k < o->sessions; k++) {
        if ((rc = wait_fd(lfd, POLLIN, sock_deadline(ms))) < 0) {
            rc = fail(r, rc, "no client within %d ms", ms);
            break;
        }
        int fd = sock_accept(lfd);
        if (fd == -EAGAIN) {
            k--;
            continue;
        }
        if (fd < 0) {
            rc = fail(r, fd, "accept: %s", shmipc_strerror(fd));
            break;
        }
        struct rp_sess s;
        sess_init(&s, r);
        s.fd = fd;
        rc = server_session(&s, dir, ms);
        sess_close(&s);
    }
    close(lfd);
    if (a.family == AF_UNIX)
        unlink(o->addr + (strncmp(o->addr, "unix:", 5) == 0 ? 5 : 0));
    return rc;
}
