/*
 * The event codec (PROTOCOL.md section 2): the only code that turns socket
 * bytes into numbers and back. The one rule: every byte comes from the peer,
 * so nothing is read past the length that ev_decode_header() validated, and
 * the body decoders re-check the header before trusting the body.
 */
#include "proto/event.h"

#include <errno.h>
#include <string.h>

#include "shmipc/errors.h"

struct type_info {
    const char *name;
    uint32_t min_len;
    int fixed;
};

static const struct type_info types[SHMIPC_EV_TYPE_MAX + 1] = {
    [SHMIPC_EV_SHM_BY_PATH] = {"ShareMemoryByFilePath", SHMIPC_EV_SHM_META_MIN_LEN, 0},
    [SHMIPC_EV_POLLING] = {"Polling", SHMIPC_EV_HEADER_LEN, 1},
    [SHMIPC_EV_STREAM_CLOSE] = {"StreamClose", SHMIPC_EV_STREAM_CLOSE_LEN, 1},
    [SHMIPC_EV_FALLBACK_DATA] = {"FallbackData", SHMIPC_EV_FALLBACK_MIN_LEN, 0},
    [SHMIPC_EV_EXCHANGE_VER] = {"ExchangeProtoVersion", SHMIPC_EV_HEADER_LEN, 1},
    [SHMIPC_EV_SHM_BY_MEMFD] = {"ShareMemoryByMemfd", SHMIPC_EV_SHM_META_MIN_LEN, 0},
    [SHMIPC_EV_ACK_SHM] = {"AckShareMemory", SHMIPC_EV_HEADER_LEN, 1},
    [SHMIPC_EV_ACK_READY_RECV_FD] = {"AckReadyRecvFD", SHMIPC_EV_HEADER_LEN, 1},
    [SHMIPC_EV_HOT_RESTART] = {"HotRestart", SHMIPC_EV_HOT_RESTART_LEN, 1},
    [SHMIPC_EV_HOT_RESTART_ACK] = {"HotRestartAck", SHMIPC_EV_HOT_RESTART_LEN, 1},
};

uint32_t ev_min_len(uint8_t type)
{
    return type <= SHMIPC_EV_TYPE_MAX ? types[type].min_len : 0;
}

int ev_is_fixed_len(uint8_t type)
{
    return type <= SHMIPC_EV_TYPE_MAX && types[type].fixed;
}

const char *ev_type_name(uint8_t type)
{
    return type <= SHMIPC_EV_TYPE_MAX ? types[type].name : "unknown";
}

int ev_decode_header(const uint8_t buf[SHMIPC_EV_HEADER_LEN], uint32_t max_len,
                     struct ev_header *out)
{
    uint32_t length = ev_get_be32(buf);
    uint8_t version = buf[6], type = buf[7];

    /* The order is part of the contract: each check names the first thing
     * wrong, so a garbage stream reports a bad magic, not a bad length. */
    if (ev_get_be16(buf + 4) != SHMIPC_EV_MAGIC)
        return SHMIPC_EBADMAGIC;
    if (version == 0)
        return SHMIPC_EBADVERSION;
    if (type > SHMIPC_EV_TYPE_MAX)
        return SHMIPC_EBADTYPE;
    if (length < types[type].min_len || (types[type].fixed && length != types[type].min_len))
        return SHMIPC_ESHORTEVENT;
    if (length > (max_len != 0 ? max_len : SHMIPC_EV_DEFAULT_MAX))
        return SHMIPC_EBIGEVENT;
    out->length = length;
    out->version = version;
    out->type = type;
    return 0;
}

/* Re-validates the header of a whole event before a body decoder reads it:
 * the caller's len must be the header's length and the type one of the two
 * the decoder understands (pass the same type twice for one). */
static int check_event(const uint8_t *ev, uint32_t len, uint8_t type_a, uint8_t type_b)
{
    struct ev_header h;
    if (len < SHMIPC_EV_HEADER_LEN)
        return SHMIPC_ESHORTEVENT;
    /* No size limit here: the caller already applied its own. */
    int rc = ev_decode_header(ev, UINT32_MAX, &h);
    if (rc < 0)
        return rc;
    if (h.length != len || (h.type != type_a && h.type != type_b))
        return SHMIPC_EBADEVENT;
    return 0;
}

/* Reads one u16-length-prefixed path at ev[*pos], which must end by len. */
static int take_path(const uint8_t *ev, uint32_t len, uint32_t *pos, const char **path,
                     uint16_t *plen)
{
    if (len - *pos < 2)
        return SHMIPC_EBADEVENT;
    uint16_t n = ev_get_be16(ev + *pos);
    *pos += 2;
    if (len - *pos < n)
        return SHMIPC_EBADEVENT;
    /* A NUL would silently shorten the path when it is used as a C string. */
    if (memchr(ev + *pos, '\0', n) != NULL)
        return SHMIPC_EBADEVENT;
    *path = (const char *)(ev + *pos);
    *plen = n;
    *pos += n;
    return 0;
}

int ev_decode_shm_meta(const uint8_t *ev, uint32_t len, struct ev_shm_meta *out)
{
    int rc = check_event(ev, len, SHMIPC_EV_SHM_BY_PATH, SHMIPC_EV_SHM_BY_MEMFD);
    if (rc < 0)
        return rc;
    struct ev_shm_meta m;
    uint32_t pos = SHMIPC_EV_HEADER_LEN;
    rc = take_path(ev, len, &pos, &m.queue_path, &m.queue_len);
    if (rc == 0)
        rc = take_path(ev, len, &pos, &m.buffer_path, &m.buffer_len);
    if (rc < 0)
        return rc;
    if (pos != len)
        return SHMIPC_EBADEVENT; /* trailing bytes: the lengths lie */
    *out = m;
    return 0;
}

int ev_decode_stream_close(const uint8_t *ev, uint32_t len, uint32_t *stream_id)
{
    int rc = check_event(ev, len, SHMIPC_EV_STREAM_CLOSE, SHMIPC_EV_STREAM_CLOSE);
    if (rc < 0)
        return rc;
    *stream_id = ev_get_be32(ev + SHMIPC_EV_HEADER_LEN);
    return 0;
}

int ev_decode_fallback(const uint8_t *ev, uint32_t len, struct ev_fallback *out)
{
    int rc = check_event(ev, len, SHMIPC_EV_FALLBACK_DATA, SHMIPC_EV_FALLBACK_DATA);
    if (rc < 0)
        return rc;
    out->stream_id = ev_get_be32(ev + offsetof(struct shmipc_ev_fallback, stream_id));
    out->status = ev_get_be32(ev + offsetof(struct shmipc_ev_fallback, status));
    out->payload = ev + SHMIPC_EV_FALLBACK_MIN_LEN;
    out->payload_len = len - SHMIPC_EV_FALLBACK_MIN_LEN;
    return 0;
}

int ev_decode_hot_restart(const uint8_t *ev, uint32_t len, uint64_t *epoch)
{
    int rc = check_event(ev, len, SHMIPC_EV_HOT_RESTART, SHMIPC_EV_HOT_RESTART_ACK);
    if (rc < 0)
        return rc;
    *epoch = ev_get_be64(ev + SHMIPC_EV_HEADER_LEN);
    return 0;
}

/* Writes whatever it is given, valid or not: the typed encoders below and
 * the tests (which need malformed headers) build on it. */
int ev_encode_header(uint8_t *buf, size_t cap, uint32_t length, uint8_t version, uint8_t type)
{
    if (cap < SHMIPC_EV_HEADER_LEN)
        return -ENOBUFS;
    ev_put_be32(buf, length);
    ev_put_be16(buf + 4, SHMIPC_EV_MAGIC);
    buf[6] = version;
    buf[7] = type;
    return SHMIPC_EV_HEADER_LEN;
}

int ev_encode_simple(uint8_t *buf, size_t cap, uint8_t version, uint8_t type)
{
    if (!ev_is_fixed_len(type) || ev_min_len(type) != SHMIPC_EV_HEADER_LEN)
        return -EINVAL;
    return ev_encode_header(buf, cap, SHMIPC_EV_HEADER_LEN, version, type);
}

int ev_encode_stream_close(uint8_t *buf, size_t cap, uint8_t version, uint32_t stream_id)
{
    if (cap < SHMIPC_EV_STREAM_CLOSE_LEN)
        return -ENOBUFS;
    ev_encode_header(buf, cap, SHMIPC_EV_STREAM_CLOSE_LEN, version, SHMIPC_EV_STREAM_CLOSE);
    ev_put_be32(buf + SHMIPC_EV_HEADER_LEN, stream_id);
    return SHMIPC_EV_STREAM_CLOSE_LEN;
}

int ev_encode_fallback_header(uint8_t *buf, size_t cap, uint8_t version, uint32_t stream_id,
                              uint32_t status, uint32_t payload_len)
{
    /* The u32 length field must hold header + payload. */
    if (payload_len > UINT32_MAX - SHMIPC_EV_FALLBACK_MIN_LEN)
        return SHMIPC_EBIGEVENT;
    if (cap < SHMIPC_EV_FALLBACK_MIN_LEN)
        return -ENOBUFS;
    ev_encode_header(buf, cap, SHMIPC_EV_FALLBACK_MIN_LEN + payload_len, version,
                     SHMIPC_EV_FALLBACK_DATA);
    ev_put_be32(buf + offsetof(struct shmipc_ev_fallback, stream_id), stream_id);
    ev_put_be32(buf + offsetof(struct shmipc_ev_fallback, status), status);
    return SHMIPC_EV_FALLBACK_MIN_LEN;
}

int ev_encode_shm_meta(uint8_t *buf, size_t cap, uint8_t version, uint8_t type,
                       const char *queue_path, const char *buffer_path)
{
    if ((type != SHMIPC_EV_SHM_BY_PATH && type != SHMIPC_EV_SHM_BY_MEMFD) || queue_path == NULL ||
        buffer_path == NULL)
        return -EINVAL;
    size_t n1 = strlen(queue_path), n2 = strlen(buffer_path);
    if (n1 > UINT16_MAX || n2 > UINT16_MAX)
        return SHMIPC_EBADEVENT;
    size_t total = SHMIPC_EV_SHM_META_MIN_LEN + n1 + n2;
    if (cap < total)
        return -ENOBUFS;
    ev_encode_header(buf, cap, (uint32_t)total, version, type);
    uint8_t *p = buf + SHMIPC_EV_HEADER_LEN;
    ev_put_be16(p, (uint16_t)n1);
    memcpy(p + 2, queue_path, n1);
    p += 2 + n1;
    ev_put_be16(p, (uint16_t)n2);
    memcpy(p + 2, buffer_path, n2);
    return (int)total;
}

int ev_encode_hot_restart(uint8_t *buf, size_t cap, uint8_t version, uint8_t type, uint64_t epoch)
{
    if (type != SHMIPC_EV_HOT_RESTART && type != SHMIPC_EV_HOT_RESTART_ACK)
        return -EINVAL;
    if (cap < SHMIPC_EV_HOT_RESTART_LEN)
        return -ENOBUFS;
    ev_encode_header(buf, cap, SHMIPC_EV_HOT_RESTART_LEN, version, type);
    ev_put_be64(buf + SHMIPC_EV_HEADER_LEN, epoch);
    return SHMIPC_EV_HOT_RESTART_LEN;
}
