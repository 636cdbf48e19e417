/*
 * The event codec: encode, decode and validate the ten shmipc socket events
 * (PROTOCOL.md section 2). All socket integers are big-endian.
 *
 * Decoding never trusts the peer: ev_decode_header() checks magic,
 * version, type, and the length against the type's size rules and the
 * caller's maximum before anything reads a body; the body decoders check
 * every inner length against the event length. Distinct error codes:
 * SHMIPC_EBADMAGIC, SHMIPC_EBADVERSION, SHMIPC_EBADTYPE, SHMIPC_ESHORTEVENT
 * (length below the type's minimum, or a fixed-size type with any other
 * length), SHMIPC_EBIGEVENT (above max_len), SHMIPC_EBADEVENT (body).
 */
#ifndef SHMIPC_PROTO_EVENT_H
#define SHMIPC_PROTO_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "shmipc/wire.h"

struct ev_header {
    uint32_t length; /* whole event, header included */
    uint8_t version;
    uint8_t type;
};

/* Paths of ShareMemoryByFilePath / ShareMemoryByMemfd. The pointers point
 * into the decoded buffer and are NOT NUL-terminated. */
struct ev_shm_meta {
    const char *queue_path;
    uint16_t queue_len;
    const char *buffer_path;
    uint16_t buffer_len;
};

struct ev_fallback {
    uint32_t stream_id;
    uint32_t status; /* as sent; only the low byte is meaningful */
    const uint8_t *payload;
    uint32_t payload_len;
};

/* Minimum length of an event of `type` (fixed-size types: their exact
 * length). 0 for an unknown type. */
uint32_t ev_min_len(uint8_t type);
/* 1 if the type has exactly one legal length. */
int ev_is_fixed_len(uint8_t type);
const char *ev_type_name(uint8_t type);

/* Decodes and validates the 8-byte header at `buf`. max_len bounds the
 * event length (0 means SHMIPC_EV_DEFAULT_MAX). */
#define SHMIPC_EV_DEFAULT_MAX (32u << 20)
int ev_decode_header(const uint8_t buf[SHMIPC_EV_HEADER_LEN], uint32_t max_len,
                     struct ev_header *out);

/* Body decoders: `ev` is the whole event (header included), `len` its
 * length as validated by ev_decode_header(). They re-check the header:
 * a header length other than `len` or a type the decoder does not handle
 * is SHMIPC_EBADEVENT. `out` is written only on success. */
int ev_decode_shm_meta(const uint8_t *ev, uint32_t len, struct ev_shm_meta *out);
int ev_decode_stream_close(const uint8_t *ev, uint32_t len, uint32_t *stream_id);
int ev_decode_fallback(const uint8_t *ev, uint32_t len, struct ev_fallback *out);
int ev_decode_hot_restart(const uint8_t *ev, uint32_t len, uint64_t *epoch);

/* Encoders write into `buf` of `cap` bytes and return the number of bytes
 * written (the event length, except for ev_encode_header() and
 * ev_encode_fallback_header(), which write only a header), or
 * -ENOBUFS (the errno, not SHMIPC_ENOBUFS) if it does not fit, leaving buf
 * untouched; SHMIPC_EBADEVENT for paths over 65535 bytes, -EINVAL for a
 * type the encoder does not make. */
/* Writes the 8-byte header exactly as given, valid or not; returns 8. */
int ev_encode_header(uint8_t *buf, size_t cap, uint32_t length, uint8_t version, uint8_t type);
/* Header-only events: Polling, ExchangeProtoVersion, AckShareMemory, AckReadyRecvFD. */
int ev_encode_simple(uint8_t *buf, size_t cap, uint8_t version, uint8_t type);
int ev_encode_stream_close(uint8_t *buf, size_t cap, uint8_t version, uint32_t stream_id);
/* Writes only the 16-byte FallbackData header for a payload of
 * payload_len bytes (sent separately, e.g. with writev); returns 16, or
 * SHMIPC_EBIGEVENT if 16 + payload_len does not fit the u32 length. */
int ev_encode_fallback_header(uint8_t *buf, size_t cap, uint8_t version, uint32_t stream_id,
                              uint32_t status, uint32_t payload_len);
/* type is SHMIPC_EV_SHM_BY_PATH or SHMIPC_EV_SHM_BY_MEMFD. */
int ev_encode_shm_meta(uint8_t *buf, size_t cap, uint8_t version, uint8_t type,
                       const char *queue_path, const char *buffer_path);
/* type is SHMIPC_EV_HOT_RESTART or SHMIPC_EV_HOT_RESTART_ACK. */
int ev_encode_hot_restart(uint8_t *buf, size_t cap, uint8_t version, uint8_t type, uint64_t epoch);

/* Big-endian helpers shared by the protocol code. */
static inline uint16_t ev_get_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t ev_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t ev_get_be64(const uint8_t *p)
{
    return (uint64_t)ev_get_be32(p) << 32 | ev_get_be32(p + 4);
}
static inline void ev_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void ev_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void ev_put_be64(uint8_t *p, uint64_t v)
{
    ev_put_be32(p, (uint32_t)(v >> 32));
    ev_put_be32(p + 4, (uint32_t)v);
}

#endif
