/*
 * Fuzz target: the event decoder (src/proto/event.c).
 *
 * Input: one byte choosing the maximum event size, then the bytes a peer
 * wrote on the socket. The header is decoded with that maximum; an accepted
 * event (when the input holds all of it) goes to its body decoder in a heap
 * copy of exactly its length, so ASan sees any read past the event. Every
 * accepted event must satisfy the codec's promises and re-encode to the
 * same bytes. Every body decoder is also handed the whole rest of the input
 * with the type it does not own or a length that disagrees with the header,
 * which must be refused without reading past the buffer.
 */
#include <errno.h>

#include "common.h"
#include "proto/event.h"
#include "shmipc/errors.h"

static const uint32_t max_choices[8] = {0, 8, 12, 16, 47, 64, 526, UINT32_MAX};

/* Calls every body decoder on ev[0..len); returns how many accepted it. */
static int decode_all(const uint8_t *ev, uint32_t len)
{
    struct ev_shm_meta m;
    struct ev_fallback fb;
    uint32_t id;
    uint64_t epoch;
    int ok = 0;
    ok += ev_decode_shm_meta(ev, len, &m) == 0;
    ok += ev_decode_stream_close(ev, len, &id) == 0;
    ok += ev_decode_fallback(ev, len, &fb) == 0;
    ok += ev_decode_hot_restart(ev, len, &epoch) == 0;
    return ok;
}

/* Heap copy of exactly n bytes (at least 1 so malloc never returns NULL). */
static uint8_t *copy_of(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    FZ_CHECK(c != NULL);
    if (n)
        memcpy(c, p, n);
    return c;
}

static void check_shm_meta(const uint8_t *ev, uint32_t len, const struct ev_header *h)
{
    struct ev_shm_meta m;
    if (ev_decode_shm_meta(ev, len, &m) != 0)
        return;
    const char *lo = (const char *)ev + SHMIPC_EV_HEADER_LEN, *hi = (const char *)ev + len;
    /* The paths lie inside the event, in order, and account for every byte. */
    FZ_CHECK(m.queue_path == lo + 2);
    FZ_CHECK(m.queue_path + m.queue_len <= hi);
    FZ_CHECK(m.buffer_path == m.queue_path + m.queue_len + 2);
    FZ_CHECK(m.buffer_path + m.buffer_len == hi);
    FZ_CHECK(memchr(m.queue_path, 0, m.queue_len) == NULL);
    FZ_CHECK(memchr(m.buffer_path, 0, m.buffer_len) == NULL);

    char *q = malloc((size_t)m.queue_len + 1), *b = malloc((size_t)m.buffer_len + 1);
    uint8_t *out = malloc(len);
    FZ_CHECK(q != NULL && b != NULL && out != NULL);
    memcpy(q, m.queue_path, m.queue_len);
    q[m.queue_len] = '\0';
    memcpy(b, m.buffer_path, m.buffer_len);
    b[m.buffer_len] = '\0';
    FZ_CHECK(ev_encode_shm_meta(out, len, h->version, h->type, q, b) == (int)len);
    FZ_CHECK(memcmp(out, ev, len) == 0);
    /* One byte short: refused, buffer untouched. */
    memset(out, 0xa5, len);
    FZ_CHECK(ev_encode_shm_meta(out, len - 1, h->version, h->type, q, b) == -ENOBUFS);
    for (uint32_t i = 0; i < len; i++)
        FZ_CHECK(out[i] == 0xa5);
    free(out);
    free(q);
    free(b);
}

/* An event the header decoder accepted and the input holds whole. */
static void check_event(const uint8_t *ev, uint32_t len, const struct ev_header *h)
{
    uint8_t out[32];
    uint32_t id;
    uint64_t epoch;
    struct ev_fallback fb;

    FZ_CHECK(h->length == len);
    FZ_CHECK(ev_encode_header(out, sizeof(out), h->length, h->version, h->type) ==
             (int)SHMIPC_EV_HEADER_LEN);
    FZ_CHECK(memcmp(out, ev, SHMIPC_EV_HEADER_LEN) == 0);

    int accepted = decode_all(ev, len);
    switch (h->type) {
    case SHMIPC_EV_SHM_BY_PATH:
    case SHMIPC_EV_SHM_BY_MEMFD:
        check_shm_meta(ev, len, h);
        FZ_CHECK(accepted <= 1);
        break;
    case SHMIPC_EV_POLLING:
    case SHMIPC_EV_EXCHANGE_VER:
    case SHMIPC_EV_ACK_SHM:
    case SHMIPC_EV_ACK_READY_RECV_FD:
        FZ_CHECK(len == SHMIPC_EV_HEADER_LEN);
        FZ_CHECK(accepted == 0); /* no body decoder owns a header-only type */
        FZ_CHECK(ev_encode_simple(out, sizeof(out), h->version, h->type) == (int)len);
        FZ_CHECK(memcmp(out, ev, len) == 0);
        break;
    case SHMIPC_EV_STREAM_CLOSE:
        FZ_CHECK(accepted == 1);
        FZ_CHECK(ev_decode_stream_close(ev, len, &id) == 0);
        FZ_CHECK(ev_encode_stream_close(out, sizeof(out), h->version, id) == (int)len);
        FZ_CHECK(memcmp(out, ev, len) == 0);
        break;
    case SHMIPC_EV_FALLBACK_DATA:
        FZ_CHECK(accepted == 1);
        FZ_CHECK(ev_decode_fallback(ev, len, &fb) == 0);
        FZ_CHECK(fb.payload == ev + SHMIPC_EV_FALLBACK_MIN_LEN);
        FZ_CHECK(fb.payload_len == len - SHMIPC_EV_FALLBACK_MIN_LEN);
        FZ_CHECK(ev_encode_fallback_header(out, sizeof(out), h->version, fb.stream_id, fb.status,
                                           fb.payload_len) == (int)SHMIPC_EV_FALLBACK_MIN_LEN);
        FZ_CHECK(memcmp(out, ev, SHMIPC_EV_FALLBACK_MIN_LEN) == 0);
        break;
    case SHMIPC_EV_HOT_RESTART:
    case SHMIPC_EV_HOT_RESTART_ACK:
        FZ_CHECK(accepted == 1);
        FZ_CHECK(ev_decode_hot_restart(ev, len, &epoch) == 0);
        FZ_CHECK(ev_encode_hot_restart(out, sizeof(out), h->version, h->type, epoch) == (int)len);
        FZ_CHECK(memcmp(out, ev, len) == 0);
        break;
    default:
        FZ_CHECK(!"ev_decode_header accepted an unknown type");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t max = max_choices[data[0] & 7];
    const uint8_t *stream = data + 1;
    size_t n = size - 1;

    /* The body decoders on the whole rest, whatever its header says: they
     * re-check it, so at most one accepts, and only if lengths agree. */
    if (n <= UINT32_MAX) {
        uint8_t *all = copy_of(stream, n);
        int accepted = decode_all(all, (uint32_t)n);
        FZ_CHECK(accepted <= 1);
        if (accepted)
            FZ_CHECK(n >= SHMIPC_EV_HEADER_LEN && ev_get_be32(all) == n);
        free(all);
    }

    if (n < SHMIPC_EV_HEADER_LEN)
        return 0;
    struct ev_header h;
    int rc = ev_decode_header(stream, max, &h);
    if (rc < 0) {
        FZ_CHECK(rc == SHMIPC_EBADMAGIC || rc == SHMIPC_EBADVERSION || rc == SHMIPC_EBADTYPE ||
                 rc == SHMIPC_ESHORTEVENT || rc == SHMIPC_EBIGEVENT);
        return 0;
    }
    FZ_CHECK(h.type <= SHMIPC_EV_TYPE_MAX && h.version != 0);
    FZ_CHECK(h.length >= ev_min_len(h.type) && h.length >= SHMIPC_EV_HEADER_LEN);
    FZ_CHECK(!ev_is_fixed_len(h.type) || h.length == ev_min_len(h.type));
    FZ_CHECK(h.length <= (max ? max : SHMIPC_EV_DEFAULT_MAX));
    if (h.length > n)
        return 0; /* the rest of the event has not arrived */
    uint8_t *ev = copy_of(stream, h.length);
    check_event(ev, h.length, &h);
    free(ev);
    return 0;
}
