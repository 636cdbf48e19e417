/*
 * Tests of the event codec: the shmipc-go golden vectors (our encoder must
 * produce them byte for byte and our decoder must give back every field),
 * every validation error with its own code, and seeded round trips.
 * Vector bytes are read from tests/vectors/events.hex, never copied here;
 * events under test live in exactly-sized heap buffers so that ASan catches
 * a decoder reading past `len`.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proto/event.h"
#include "shmipc/errors.h"
#include "testutil.h"

/* Asserts a return code and names both codes when it differs. */
#define EXPECT_RC(expr, want)                                                                      \
    do {                                                                                           \
        int rc_ = (expr), want_ = (want);                                                          \
        if (rc_ != want_)                                                                          \
            fprintf(stderr, "\n  %s:%d: %s = %d (%s), expected %d (%s)\n", __FILE__, __LINE__,     \
                    #expr, rc_, shmipc_err_name(rc_), want_, shmipc_err_name(want_));              \
        CU_ASSERT_EQUAL(rc_, want_);                                                               \
    } while (0)

/* What the comments of events.hex say each record holds. */
#define Q_PATH "/dev/shm/x_queue_0"
#define B_PATH "/dev/shm/x_buffer"
#define GOLDEN_ID 7u
#define GOLDEN_PAYLOAD "hello"
#define GOLDEN_EPOCH 5u

struct golden {
    const char *label;
    uint8_t version;
    uint8_t type;
};

static const struct golden section_a[] = {
    {"Polling.v2", 2, SHMIPC_EV_POLLING},
    {"Polling.v3", 3, SHMIPC_EV_POLLING},
    {"StreamClose.v3.id7", 3, SHMIPC_EV_STREAM_CLOSE},
    {"FallbackData.v3.id7", 3, SHMIPC_EV_FALLBACK_DATA},
    {"ExchangeProtoVersion.v3.client", 3, SHMIPC_EV_EXCHANGE_VER},
    {"ExchangeProtoVersion.v3.server", 3, SHMIPC_EV_EXCHANGE_VER},
    {"ShareMemoryByFilePath.v2", 2, SHMIPC_EV_SHM_BY_PATH},
    {"ShareMemoryByFilePath.v3", 3, SHMIPC_EV_SHM_BY_PATH},
    {"ShareMemoryByMemfd.v3", 3, SHMIPC_EV_SHM_BY_MEMFD},
    {"AckReadyRecvFD.v3", 3, SHMIPC_EV_ACK_READY_RECV_FD},
    {"AckShareMemory.v3", 3, SHMIPC_EV_ACK_SHM},
    {"HotRestart.v2.epoch5", 2, SHMIPC_EV_HOT_RESTART},
    {"HotRestartAck.v2.epoch5", 2, SHMIPC_EV_HOT_RESTART_ACK},
    {"HotRestart.v3.epoch5", 3, SHMIPC_EV_HOT_RESTART},
    {"HotRestartAck.v3.epoch5", 3, SHMIPC_EV_HOT_RESTART_ACK},
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static uint8_t *dup_bytes(const void *p, size_t len)
{
    uint8_t *b = malloc(len ? len : 1);
    if (b != NULL && len)
        memcpy(b, p, len);
    return b;
}

static int load_events(struct vec_file *vf)
{
    int rc = vec_load("events.hex", vf);
    CU_ASSERT_EQUAL(rc, 0);
    return rc == 0;
}

/* Encodes the event a golden record describes; returns its length. */
static int encode_golden(const struct golden *g, uint8_t *buf, size_t cap)
{
    int n;
    size_t plen = strlen(GOLDEN_PAYLOAD);
    switch (g->type) {
    case SHMIPC_EV_SHM_BY_PATH:
    case SHMIPC_EV_SHM_BY_MEMFD:
        return ev_encode_shm_meta(buf, cap, g->version, g->type, Q_PATH, B_PATH);
    case SHMIPC_EV_STREAM_CLOSE:
        return ev_encode_stream_close(buf, cap, g->version, GOLDEN_ID);
    case SHMIPC_EV_FALLBACK_DATA:
        n = ev_encode_fallback_header(buf, cap, g->version, GOLDEN_ID, SHMIPC_STREAM_OPEN,
                                      (uint32_t)plen);
        CU_ASSERT_EQUAL(n, 16);
        if (n != 16 || cap < 16 + plen)
            return -1;
        memcpy(buf + n, GOLDEN_PAYLOAD, plen);
        return n + (int)plen;
    case SHMIPC_EV_HOT_RESTART:
    case SHMIPC_EV_HOT_RESTART_ACK:
        return ev_encode_hot_restart(buf, cap, g->version, g->type, GOLDEN_EPOCH);
    default:
        return ev_encode_simple(buf, cap, g->version, g->type);
    }
}

static void check_shm_paths(const uint8_t *ev, uint32_t len)
{
    struct ev_shm_meta m = {NULL, 0, NULL, 0};
    EXPECT_RC(ev_decode_shm_meta(ev, len, &m), 0);
    CU_ASSERT_EQUAL(m.queue_len, strlen(Q_PATH));
    CU_ASSERT_EQUAL(m.buffer_len, strlen(B_PATH));
    /* The pointers must point into the event, not at a copy. */
    CU_ASSERT_PTR_EQUAL(m.queue_path, (const char *)ev + 10);
    CU_ASSERT_PTR_EQUAL(m.buffer_path, (const char *)ev + 12 + strlen(Q_PATH));
    if (m.queue_len == strlen(Q_PATH) && m.buffer_len == strlen(B_PATH)) {
        CU_ASSERT_NSTRING_EQUAL(m.queue_path, Q_PATH, m.queue_len);
        CU_ASSERT_NSTRING_EQUAL(m.buffer_path, B_PATH, m.buffer_len);
    }
}

/* Decodes `bytes` as the event `g` describes and checks every field. */
static void check_golden_decode(const struct golden *g, const uint8_t *bytes, size_t n)
{
    uint8_t *ev = dup_bytes(bytes, n);
    uint32_t len = (uint32_t)n;
    struct ev_header h = {0, 0, 0};
    uint32_t id = 0;
    uint64_t epoch = 0;
    struct ev_fallback fb;

    CU_ASSERT_FATAL(ev != NULL);
    EXPECT_RC(ev_decode_header(ev, 0, &h), 0);
    CU_ASSERT_EQUAL(h.length, len);
    CU_ASSERT_EQUAL(h.version, g->version);
    CU_ASSERT_EQUAL(h.type, g->type);
    switch (g->type) {
    case SHMIPC_EV_SHM_BY_PATH:
    case SHMIPC_EV_SHM_BY_MEMFD:
        check_shm_paths(ev, len);
        break;
    case SHMIPC_EV_STREAM_CLOSE:
        EXPECT_RC(ev_decode_stream_close(ev, len, &id), 0);
        CU_ASSERT_EQUAL(id, GOLDEN_ID);
        break;
    case SHMIPC_EV_FALLBACK_DATA:
        memset(&fb, 0xff, sizeof(fb));
        EXPECT_RC(ev_decode_fallback(ev, len, &fb), 0);
        CU_ASSERT_EQUAL(fb.stream_id, GOLDEN_ID);
        CU_ASSERT_EQUAL(fb.status, SHMIPC_STREAM_OPEN);
        CU_ASSERT_EQUAL(fb.payload_len, strlen(GOLDEN_PAYLOAD));
        CU_ASSERT_PTR_EQUAL(fb.payload, ev + 16);
        if (fb.payload_len == strlen(GOLDEN_PAYLOAD))
            CU_ASSERT_EQUAL(memcmp(fb.payload, GOLDEN_PAYLOAD, fb.payload_len), 0);
        break;
    case SHMIPC_EV_HOT_RESTART:
    case SHMIPC_EV_HOT_RESTART_ACK:
        EXPECT_RC(ev_decode_hot_restart(ev, len, &epoch), 0);
        CU_ASSERT_EQUAL(epoch, GOLDEN_EPOCH);
        break;
    default:
        CU_ASSERT_EQUAL(len, SHMIPC_EV_HEADER_LEN);
        break;
    }
    free(ev);
}

static void test_golden_section_a(void)
{
    struct vec_file vf;
    if (!load_events(&vf))
        return;
    for (size_t i = 0; i < NELEM(section_a); i++) {
        const struct golden *g = &section_a[i];
        uint8_t buf[128];
        int n = encode_golden(g, buf, sizeof(buf));
        CU_ASSERT(n > 0);
        if (n > 0)
            CU_ASSERT_VEC(&vf, g->label, buf, (size_t)n);
        const struct vec_record *r = vec_find(&vf, g->label);
        CU_ASSERT_PTR_NOT_NULL(r);
        if (r == NULL)
            continue;
        CU_ASSERT_EQUAL(r->offset, 0);
        check_golden_decode(g, r->bytes, r->len);
    }
    vec_free(&vf);
}

/* A record added to events.hex without a test here fails this. */
static void test_golden_every_record_covered(void)
{
    struct vec_file vf;
    if (!load_events(&vf))
        return;
    size_t in_a = 0, fd = 0, hs = 0, other = 0;
    for (size_t i = 0; i < vf.n; i++) {
        const char *label = vf.recs[i].label;
        int known = 0;
        for (size_t j = 0; j < NELEM(section_a); j++)
            known |= strcmp(label, section_a[j].label) == 0;
        if (known)
            in_a++;
        else if (strncmp(label, "FdMessage.", 10) == 0)
            fd++;
        else if (strncmp(label, "hs", 2) == 0)
            hs++;
        else {
            fprintf(stderr, "\n  events.hex record %s has no test\n", label);
            other++;
        }
    }
    CU_ASSERT_EQUAL(in_a, NELEM(section_a));
    CU_ASSERT_EQUAL(fd, 2);
    CU_ASSERT_EQUAL(hs, 7);
    CU_ASSERT_EQUAL(other, 0);
    vec_free(&vf);
}

/* The control block a real sendmsg() of two fds carries. */
static void check_cmsghdr(const struct vec_file *vf, const char *label)
{
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg;
    memset(&u, 0, sizeof(u));
    memset(&msg, 0, sizeof(msg));
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof(u.buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    c->cmsg_len = CMSG_LEN(2 * sizeof(int));
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    CU_ASSERT_EQUAL(c->cmsg_len, 24);
    CU_ASSERT_EQUAL(sizeof(u.buf), 24);
    CU_ASSERT_EQUAL((const char *)CMSG_DATA(c) - (const char *)c, 16);
    CU_ASSERT_VEC(vf, label, c, 16);
}

static void test_golden_fd_message(void)
{
    struct vec_file vf;
    if (!load_events(&vf))
        return;
    const uint8_t dummy = 0x00;
    CU_ASSERT_VEC(&vf, "FdMessage.data", &dummy, 1);
    CU_ASSERT_VEC(&vf, "hs05.C>S.fd-data", &dummy, 1);
    check_cmsghdr(&vf, "FdMessage.cmsghdr");
    check_cmsghdr(&vf, "hs06.C>S.fd-cmsghdr");
    vec_free(&vf);
}

enum hs_kind { HS_EVENT, HS_FD_DATA, HS_FD_CMSG };

struct hs_step {
    const char *label;
    enum hs_kind kind;
    uint8_t type;
};

static const struct hs_step handshake[] = {
    {"hs01.C>S.ExchangeProtoVersion", HS_EVENT, SHMIPC_EV_EXCHANGE_VER},
    {"hs02.S>C.ExchangeProtoVersion", HS_EVENT, SHMIPC_EV_EXCHANGE_VER},
    {"hs03.C>S.ShareMemoryByMemfd", HS_EVENT, SHMIPC_EV_SHM_BY_MEMFD},
    {"hs04.S>C.AckReadyRecvFD", HS_EVENT, SHMIPC_EV_ACK_READY_RECV_FD},
    {"hs05.C>S.fd-data", HS_FD_DATA, 0},
    {"hs06.C>S.fd-cmsghdr", HS_FD_CMSG, 0},
    {"hs07.S>C.AckShareMemory", HS_EVENT, SHMIPC_EV_ACK_SHM},
};

/* Decodes one handshake event; returns its length (0 on failure). */
static uint32_t check_hs_event(const struct vec_file *vf, const struct vec_record *r,
                               const struct hs_step *step)
{
    uint8_t *ev = dup_bytes(r->bytes, r->len);
    struct ev_header h = {0, 0, 0};
    CU_ASSERT_FATAL(ev != NULL);
    EXPECT_RC(ev_decode_header(ev, 0, &h), 0);
    CU_ASSERT_EQUAL(h.length, r->len);
    CU_ASSERT_EQUAL(h.version, SHMIPC_PROTO_V3);
    CU_ASSERT_EQUAL(h.type, step->type);
    /* The label names the type: "hs03.C>S.ShareMemoryByMemfd". */
    CU_ASSERT_STRING_EQUAL(strrchr(r->label, '.') + 1, ev_type_name(h.type));
    const struct golden g = {r->label, SHMIPC_PROTO_V3, step->type};
    uint8_t buf[128];
    int n = encode_golden(&g, buf, sizeof(buf));
    CU_ASSERT(n > 0);
    if (n > 0)
        CU_ASSERT_VEC(vf, r->label, buf, (size_t)n);
    if (step->type == SHMIPC_EV_SHM_BY_MEMFD)
        check_shm_paths(ev, (uint32_t)r->len);
    free(ev);
    return h.length;
}

/* Section B in file order: types, version, and the stream offsets. */
static void test_golden_handshake(void)
{
    struct vec_file vf;
    if (!load_events(&vf))
        return;
    uint64_t pos[2] = {0, 0}; /* next offset: [0] C>S, [1] S>C */
    uint64_t last_data = UINT64_MAX;
    size_t k = 0;
    for (size_t i = 0; i < vf.n; i++) {
        const struct vec_record *r = &vf.recs[i];
        if (strncmp(r->label, "hs", 2) != 0)
            continue;
        CU_ASSERT_FATAL(k < NELEM(handshake));
        const struct hs_step *step = &handshake[k++];
        CU_ASSERT_STRING_EQUAL(r->label, step->label);
        int dir = strncmp(r->label + 5, "S>C", 3) == 0;
        if (step->kind == HS_FD_CMSG) {
            /* Ancillary data rides on the dummy byte, at its offset. */
            CU_ASSERT_EQUAL(r->offset, last_data);
            continue;
        }
        CU_ASSERT_EQUAL(r->offset, pos[dir]);
        if (step->kind == HS_FD_DATA) {
            CU_ASSERT_EQUAL(r->len, 1);
            CU_ASSERT_EQUAL(r->bytes[0], 0x00);
            last_data = r->offset;
            pos[dir] += r->len;
            continue;
        }
        pos[dir] += check_hs_event(&vf, r, step);
    }
    CU_ASSERT_EQUAL(k, NELEM(handshake));
    /* C>S: 8 + 47 + 1 bytes; S>C: 8 + 8 + 8. */
    CU_ASSERT_EQUAL(pos[0], 56);
    CU_ASSERT_EQUAL(pos[1], 24);
    vec_free(&vf);
}

/* ---- the header: tables, then every validation error ---- */

static void test_type_tables(void)
{
    static const struct {
        const char *name;
        uint32_t min;
        int fixed;
    } want[] = {
        {"ShareMemoryByFilePath", 12, 0},
        {"Polling", 8, 1},
        {"StreamClose", 12, 1},
        {"FallbackData", 16, 0},
        {"ExchangeProtoVersion", 8, 1},
        {"ShareMemoryByMemfd", 12, 0},
        {"AckShareMemory", 8, 1},
        {"AckReadyRecvFD", 8, 1},
        {"HotRestart", 16, 1},
        {"HotRestartAck", 16, 1},
    };
    for (uint8_t t = 0; t < NELEM(want); t++) {
        CU_ASSERT_STRING_EQUAL(ev_type_name(t), want[t].name);
        CU_ASSERT_EQUAL(ev_min_len(t), want[t].min);
        CU_ASSERT_EQUAL(ev_is_fixed_len(t), want[t].fixed);
    }
    const uint8_t unknown[] = {10, 11, 127, 255};
    for (size_t i = 0; i < NELEM(unknown); i++) {
        CU_ASSERT_STRING_EQUAL(ev_type_name(unknown[i]), "unknown");
        CU_ASSERT_EQUAL(ev_min_len(unknown[i]), 0);
        CU_ASSERT_EQUAL(ev_is_fixed_len(unknown[i]), 0);
    }
}

/* Builds a raw header and decodes it with max_len. */
static int decode_raw(uint32_t length, uint8_t version, uint8_t type, uint32_t max_len,
                      struct ev_header *h)
{
    uint8_t *b = malloc(SHMIPC_EV_HEADER_LEN);
    CU_ASSERT_FATAL(b != NULL);
    CU_ASSERT_EQUAL(ev_encode_header(b, SHMIPC_EV_HEADER_LEN, length, version, type), 8);
    int rc = ev_decode_header(b, max_len, h);
    free(b);
    return rc;
}

static void test_header_accepts(void)
{
    struct ev_header h;
    const uint8_t versions[] = {1, 2, 3, 4, 255};
    for (size_t i = 0; i < NELEM(versions); i++) {
        memset(&h, 0, sizeof(h));
        EXPECT_RC(decode_raw(8, versions[i], SHMIPC_EV_POLLING, 0, &h), 0);
        CU_ASSERT_EQUAL(h.version, versions[i]);
        CU_ASSERT_EQUAL(h.type, SHMIPC_EV_POLLING);
        CU_ASSERT_EQUAL(h.length, 8);
    }
    /* Every type at its minimum; length bytes in big-endian order. */
    for (uint8_t t = 0; t <= SHMIPC_EV_TYPE_MAX; t++) {
        memset(&h, 0, sizeof(h));
        EXPECT_RC(decode_raw(ev_min_len(t), 3, t, 0, &h), 0);
        CU_ASSERT_EQUAL(h.type, t);
        CU_ASSERT_EQUAL(h.length, ev_min_len(t));
    }
    memset(&h, 0, sizeof(h));
    EXPECT_RC(decode_raw(0x00123456, 2, SHMIPC_EV_FALLBACK_DATA, 0, &h), 0);
    CU_ASSERT_EQUAL(h.length, 0x00123456);
}

static void test_header_bad_magic(void)
{
    uint8_t b[SHMIPC_EV_HEADER_LEN];
    struct ev_header h;
    ev_encode_header(b, sizeof(b), 8, 3, SHMIPC_EV_POLLING);
    EXPECT_RC(ev_decode_header(b, 0, &h), 0);
    b[4] = 0x58; /* byte-swapped: a little-endian reader would accept it */
    b[5] = 0x77;
    EXPECT_RC(ev_decode_header(b, 0, &h), SHMIPC_EBADMAGIC);
    b[4] = 0x77;
    b[5] = 0x59;
    EXPECT_RC(ev_decode_header(b, 0, &h), SHMIPC_EBADMAGIC);
    /* Magic is checked before everything else. */
    memset(b, 0, sizeof(b));
    EXPECT_RC(ev_decode_header(b, 0, &h), SHMIPC_EBADMAGIC);
    memset(b, 0xff, sizeof(b));
    EXPECT_RC(ev_decode_header(b, 0, &h), SHMIPC_EBADMAGIC);
}

static void test_header_bad_version(void)
{
    struct ev_header h;
    EXPECT_RC(decode_raw(8, 0, SHMIPC_EV_POLLING, 0, &h), SHMIPC_EBADVERSION);
    EXPECT_RC(decode_raw(47, 0, SHMIPC_EV_SHM_BY_PATH, 0, &h), SHMIPC_EBADVERSION);
    /* Before the type and length checks. */
    EXPECT_RC(decode_raw(8, 0, 10, 0, &h), SHMIPC_EBADVERSION);
    EXPECT_RC(decode_raw(0, 0, SHMIPC_EV_POLLING, 0, &h), SHMIPC_EBADVERSION);
}

static void test_header_bad_type(void)
{
    struct ev_header h;
    EXPECT_RC(decode_raw(8, 3, 10, 0, &h), SHMIPC_EBADTYPE);
    EXPECT_RC(decode_raw(8, 3, 255, 0, &h), SHMIPC_EBADTYPE);
    EXPECT_RC(decode_raw(100, 2, 10, 0, &h), SHMIPC_EBADTYPE);
    /* Before the length checks. */
    EXPECT_RC(decode_raw(0, 3, 255, 0, &h), SHMIPC_EBADTYPE);
    EXPECT_RC(decode_raw(UINT32_MAX, 3, 10, 0, &h), SHMIPC_EBADTYPE);
}

static void test_header_fixed_lengths(void)
{
    static const struct {
        uint8_t type;
        uint32_t len;
    } fixed[] = {
        {SHMIPC_EV_POLLING, 8},           {SHMIPC_EV_EXCHANGE_VER, 8},  {SHMIPC_EV_ACK_SHM, 8},
        {SHMIPC_EV_ACK_READY_RECV_FD, 8}, {SHMIPC_EV_STREAM_CLOSE, 12}, {SHMIPC_EV_HOT_RESTART, 16},
        {SHMIPC_EV_HOT_RESTART_ACK, 16},
    };
    struct ev_header h;
    for (size_t i = 0; i < NELEM(fixed); i++) {
        uint8_t t = fixed[i].type;
        uint32_t n = fixed[i].len;
        EXPECT_RC(decode_raw(n, 3, t, 0, &h), 0);
        EXPECT_RC(decode_raw(n - 1, 3, t, 0, &h), SHMIPC_ESHORTEVENT);
        EXPECT_RC(decode_raw(n + 1, 3, t, 0, &h), SHMIPC_ESHORTEVENT);
        EXPECT_RC(decode_raw(0, 3, t, 0, &h), SHMIPC_ESHORTEVENT);
        EXPECT_RC(decode_raw(1000, 3, t, 0, &h), SHMIPC_ESHORTEVENT);
        /* A wrong fixed length is ESHORTEVENT even when above max_len. */
        EXPECT_RC(decode_raw(n + 1, 3, t, n, &h), SHMIPC_ESHORTEVENT);
    }
}

static void test_header_variable_minimum(void)
{
    struct ev_header h;
    const uint8_t shm[] = {SHMIPC_EV_SHM_BY_PATH, SHMIPC_EV_SHM_BY_MEMFD};
    for (size_t i = 0; i < NELEM(shm); i++) {
        EXPECT_RC(decode_raw(11, 3, shm[i], 0, &h), SHMIPC_ESHORTEVENT);
        EXPECT_RC(decode_raw(8, 3, shm[i], 0, &h), SHMIPC_ESHORTEVENT);
        EXPECT_RC(decode_raw(0, 3, shm[i], 0, &h), SHMIPC_ESHORTEVENT);
        EXPECT_RC(decode_raw(12, 3, shm[i], 0, &h), 0);
        EXPECT_RC(decode_raw(13, 3, shm[i], 0, &h), 0);
        EXPECT_RC(decode_raw(12 + 2 * 65535, 3, shm[i], 0, &h), 0);
    }
    EXPECT_RC(decode_raw(15, 3, SHMIPC_EV_FALLBACK_DATA, 0, &h), SHMIPC_ESHORTEVENT);
    EXPECT_RC(decode_raw(12, 3, SHMIPC_EV_FALLBACK_DATA, 0, &h), SHMIPC_ESHORTEVENT);
    EXPECT_RC(decode_raw(8, 3, SHMIPC_EV_FALLBACK_DATA, 0, &h), SHMIPC_ESHORTEVENT);
    EXPECT_RC(decode_raw(16, 3, SHMIPC_EV_FALLBACK_DATA, 0, &h), 0);
    EXPECT_RC(decode_raw(17, 3, SHMIPC_EV_FALLBACK_DATA, 0, &h), 0);
}

static void test_header_max_len(void)
{
    struct ev_header h;
    EXPECT_RC(decode_raw(100, 3, SHMIPC_EV_FALLBACK_DATA, 100, &h), 0);
    CU_ASSERT_EQUAL(h.length, 100);
    EXPECT_RC(decode_raw(101, 3, SHMIPC_EV_FALLBACK_DATA, 100, &h), SHMIPC_EBIGEVENT);
    EXPECT_RC(decode_raw(100, 3, SHMIPC_EV_SHM_BY_MEMFD, 100, &h), 0);
    EXPECT_RC(decode_raw(101, 3, SHMIPC_EV_SHM_BY_MEMFD, 100, &h), SHMIPC_EBIGEVENT);
    /* max_len 0 is the default, 32 MiB. */
    EXPECT_RC(decode_raw(SHMIPC_EV_DEFAULT_MAX, 3, SHMIPC_EV_FALLBACK_DATA, 0, &h), 0);
    CU_ASSERT_EQUAL(h.length, 32u << 20);
    EXPECT_RC(decode_raw(SHMIPC_EV_DEFAULT_MAX + 1, 3, SHMIPC_EV_FALLBACK_DATA, 0, &h),
              SHMIPC_EBIGEVENT);
    EXPECT_RC(decode_raw(UINT32_MAX, 3, SHMIPC_EV_FALLBACK_DATA, 0, &h), SHMIPC_EBIGEVENT);
    EXPECT_RC(decode_raw(UINT32_MAX, 3, SHMIPC_EV_FALLBACK_DATA, UINT32_MAX, &h), 0);
    /* A fixed-size event is bounded by its own size, not by max_len... */
    EXPECT_RC(decode_raw(16, 3, SHMIPC_EV_HOT_RESTART, 16, &h), 0);
    EXPECT_RC(decode_raw(16, 3, SHMIPC_EV_HOT_RESTART, 15, &h), SHMIPC_EBIGEVENT);
    /* ...and a short event is short before it is big. */
    EXPECT_RC(decode_raw(15, 3, SHMIPC_EV_FALLBACK_DATA, 10, &h), SHMIPC_ESHORTEVENT);
}

/* ---- body decoders ---- */

/* A ShareMemoryBy* event in an exact-size heap buffer, plus `extra` bytes
 * of trailing garbage counted in the header length. */
static uint8_t *make_meta(uint8_t type, const char *q, const char *b, size_t extra, uint32_t *len)
{
    size_t n = 12 + strlen(q) + strlen(b);
    uint8_t *ev = malloc(n + extra);
    CU_ASSERT_FATAL(ev != NULL);
    int rc = ev_encode_shm_meta(ev, n + extra, 3, type, q, b);
    CU_ASSERT_EQUAL(rc, (int)n);
    memset(ev + n, 'x', extra);
    ev_put_be32(ev, (uint32_t)(n + extra));
    *len = (uint32_t)(n + extra);
    return ev;
}

static void expect_meta_rc(const uint8_t *ev, uint32_t len, int want)
{
    struct ev_header h;
    struct ev_shm_meta m, before;
    /* Bodies are the decoder's job: the header itself is fine. */
    EXPECT_RC(ev_decode_header(ev, 0, &h), 0);
    memset(&m, 0x5a, sizeof(m));
    memcpy(&before, &m, sizeof(m)); /* with the padding, unlike `=` */
    EXPECT_RC(ev_decode_shm_meta(ev, len, &m), want);
    if (want < 0)
        CU_ASSERT_EQUAL(memcmp(&m, &before, sizeof(m)), 0);
}

static void test_shm_meta_valid(void)
{
    uint32_t len;
    struct ev_shm_meta m;
    uint8_t *ev = make_meta(SHMIPC_EV_SHM_BY_PATH, "", "", 0, &len);
    CU_ASSERT_EQUAL(len, 12);
    EXPECT_RC(ev_decode_shm_meta(ev, len, &m), 0);
    CU_ASSERT_EQUAL(m.queue_len, 0);
    CU_ASSERT_EQUAL(m.buffer_len, 0);
    free(ev);
    ev = make_meta(SHMIPC_EV_SHM_BY_MEMFD, "q", "buf", 0, &len);
    memset(&m, 0, sizeof(m));
    EXPECT_RC(ev_decode_shm_meta(ev, len, &m), 0);
    CU_ASSERT_EQUAL(m.queue_len, 1);
    CU_ASSERT_EQUAL(m.buffer_len, 3);
    CU_ASSERT_PTR_EQUAL(m.queue_path, (const char *)ev + 10);
    CU_ASSERT_PTR_EQUAL(m.buffer_path, (const char *)ev + 13);
    if (m.queue_len == 1 && m.buffer_len == 3) {
        CU_ASSERT_NSTRING_EQUAL(m.queue_path, "q", 1);
        CU_ASSERT_NSTRING_EQUAL(m.buffer_path, "buf", 3);
    }
    free(ev);
}

static void test_shm_meta_n1_overflow(void)
{
    uint32_t len;
    uint8_t *ev = make_meta(SHMIPC_EV_SHM_BY_PATH, Q_PATH, B_PATH, 0, &len);
    uint16_t n1 = (uint16_t)strlen(Q_PATH), n2 = (uint16_t)strlen(B_PATH);
    expect_meta_rc(ev, len, 0);
    /* Queue path runs past the end. */
    ev_put_be16(ev + 8, (uint16_t)(n1 + n2 + 3));
    expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
    ev_put_be16(ev + 8, 0xffff);
    expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
    /* Queue path (NUL-free) ends one byte before the end: no room left
     * for the u16 n2. */
    ev_put_be16(ev + 8, (uint16_t)(n1 + n2 + 1));
    ev[10 + n1] = 'z';
    ev[11 + n1] = 'z';
    expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
    free(ev);
    /* Same with empty paths: n1 = 1 leaves one byte for the u16 n2. */
    ev = make_meta(SHMIPC_EV_SHM_BY_MEMFD, "", "", 0, &len);
    ev_put_be16(ev + 8, 1);
    ev[10] = 'a';
    expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
    free(ev);
}

static void test_shm_meta_n2_overflow(void)
{
    uint32_t len;
    uint8_t *ev = make_meta(SHMIPC_EV_SHM_BY_PATH, Q_PATH, B_PATH, 0, &len);
    size_t n2_at = 10 + strlen(Q_PATH);
    ev_put_be16(ev + n2_at, (uint16_t)(strlen(B_PATH) + 1));
    expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
    ev_put_be16(ev + n2_at, 0xffff);
    expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
    free(ev);
    /* n1 one short: n2 is read from the wrong bytes and overflows. */
    ev = make_meta(SHMIPC_EV_SHM_BY_PATH, Q_PATH, B_PATH, 0, &len);
    ev_put_be16(ev + 8, (uint16_t)(strlen(Q_PATH) - 1));
    expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
    free(ev);
}

static void test_shm_meta_trailing(void)
{
    uint32_t len;
    const size_t extras[] = {1, 2, 3, 100};
    for (size_t i = 0; i < NELEM(extras); i++) {
        uint8_t *ev = make_meta(SHMIPC_EV_SHM_BY_MEMFD, Q_PATH, B_PATH, extras[i], &len);
        expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
        free(ev);
    }
    /* n2 one short leaves one byte over. */
    uint8_t *ev = make_meta(SHMIPC_EV_SHM_BY_MEMFD, Q_PATH, B_PATH, 0, &len);
    ev_put_be16(ev + 10 + strlen(Q_PATH), (uint16_t)(strlen(B_PATH) - 1));
    expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
    free(ev);
}

static void test_shm_meta_nul(void)
{
    uint32_t len;
    const size_t qn = strlen(Q_PATH), bn = strlen(B_PATH);
    const size_t at[] = {10, 10 + 3, 10 + qn - 1, 12 + qn, 12 + qn + 5, 12 + qn + bn - 1};
    for (size_t i = 0; i < NELEM(at); i++) {
        uint8_t *ev = make_meta(SHMIPC_EV_SHM_BY_PATH, Q_PATH, B_PATH, 0, &len);
        ev[at[i]] = '\0';
        expect_meta_rc(ev, len, SHMIPC_EBADEVENT);
        free(ev);
    }
}

/* The caller's len disagrees with the header, or is below a header. */
static void test_body_len_mismatch(void)
{
    uint32_t len;
    struct ev_shm_meta m;
    struct ev_fallback fb;
    uint8_t *full = make_meta(SHMIPC_EV_SHM_BY_PATH, Q_PATH, B_PATH, 0, &len);
    uint8_t *cut = dup_bytes(full, len - 1);
    EXPECT_RC(ev_decode_shm_meta(cut, len - 1, &m), SHMIPC_EBADEVENT);
    free(cut);
    cut = dup_bytes(full, 4);
    EXPECT_RC(ev_decode_shm_meta(cut, 4, &m), SHMIPC_ESHORTEVENT);
    free(cut);
    free(full);

    /* Truncated FallbackData: header says 21, 20 bytes arrived. */
    full = malloc(21);
    CU_ASSERT_FATAL(full != NULL);
    ev_encode_fallback_header(full, 21, 3, 7, 0, 5);
    memcpy(full + 16, "hello", 5);
    cut = dup_bytes(full, 20);
    EXPECT_RC(ev_decode_fallback(cut, 20, &fb), SHMIPC_EBADEVENT);
    free(cut);
    EXPECT_RC(ev_decode_fallback(full, 21, &fb), 0);
    CU_ASSERT_EQUAL(fb.payload_len, 5);
    free(full);
}

static void test_fallback_truncated(void)
{
    struct ev_header h;
    struct ev_fallback fb;
    for (uint32_t n = 8; n < 16; n++) {
        uint8_t *ev = malloc(n);
        CU_ASSERT_FATAL(ev != NULL);
        ev_encode_header(ev, n, n, 3, SHMIPC_EV_FALLBACK_DATA);
        memset(ev + 8, 0, n - 8);
        EXPECT_RC(ev_decode_header(ev, 0, &h), SHMIPC_ESHORTEVENT);
        EXPECT_RC(ev_decode_fallback(ev, n, &fb), SHMIPC_ESHORTEVENT);
        free(ev);
    }
    uint8_t *ev = malloc(16);
    CU_ASSERT_FATAL(ev != NULL);
    CU_ASSERT_EQUAL(ev_encode_fallback_header(ev, 16, 3, 9, 1, 0), 16);
    EXPECT_RC(ev_decode_fallback(ev, 16, &fb), 0);
    CU_ASSERT_EQUAL(fb.stream_id, 9);
    CU_ASSERT_EQUAL(fb.status, SHMIPC_STREAM_CLOSED);
    CU_ASSERT_EQUAL(fb.payload_len, 0);
    free(ev);
}

/* One valid event of each type at its minimum length. */
static uint8_t *make_min_event(uint8_t type, uint32_t *len)
{
    uint8_t *ev = malloc(ev_min_len(type));
    CU_ASSERT_FATAL(ev != NULL);
    int rc;
    switch (type) {
    case SHMIPC_EV_SHM_BY_PATH:
    case SHMIPC_EV_SHM_BY_MEMFD:
        rc = ev_encode_shm_meta(ev, 12, 3, type, "", "");
        break;
    case SHMIPC_EV_STREAM_CLOSE:
        rc = ev_encode_stream_close(ev, 12, 3, 1);
        break;
    case SHMIPC_EV_FALLBACK_DATA:
        rc = ev_encode_fallback_header(ev, 16, 3, 1, 0, 0);
        break;
    case SHMIPC_EV_HOT_RESTART:
    case SHMIPC_EV_HOT_RESTART_ACK:
        rc = ev_encode_hot_restart(ev, 16, 3, type, 1);
        break;
    default:
        rc = ev_encode_simple(ev, 8, 3, type);
        break;
    }
    CU_ASSERT_EQUAL(rc, (int)ev_min_len(type));
    *len = ev_min_len(type);
    return ev;
}

/* Each body decoder takes its own types and refuses all others. */
static void test_body_wrong_type(void)
{
    for (uint8_t t = 0; t <= SHMIPC_EV_TYPE_MAX; t++) {
        uint32_t len;
        uint8_t *ev = make_min_event(t, &len);
        struct ev_shm_meta m;
        struct ev_fallback fb;
        uint32_t id = 0xdeadbeef;
        uint64_t epoch = 0xdeadbeef;
        int meta = t == SHMIPC_EV_SHM_BY_PATH || t == SHMIPC_EV_SHM_BY_MEMFD;
        int hr = t == SHMIPC_EV_HOT_RESTART || t == SHMIPC_EV_HOT_RESTART_ACK;
        EXPECT_RC(ev_decode_shm_meta(ev, len, &m), meta ? 0 : SHMIPC_EBADEVENT);
        EXPECT_RC(ev_decode_stream_close(ev, len, &id),
                  t == SHMIPC_EV_STREAM_CLOSE ? 0 : SHMIPC_EBADEVENT);
        CU_ASSERT_EQUAL(id, t == SHMIPC_EV_STREAM_CLOSE ? 1 : 0xdeadbeef);
        EXPECT_RC(ev_decode_fallback(ev, len, &fb),
                  t == SHMIPC_EV_FALLBACK_DATA ? 0 : SHMIPC_EBADEVENT);
        EXPECT_RC(ev_decode_hot_restart(ev, len, &epoch), hr ? 0 : SHMIPC_EBADEVENT);
        CU_ASSERT_EQUAL(epoch, hr ? 1 : 0xdeadbeef);
        free(ev);
    }
}

/* Body decoders re-check the header and pass its error through. */
static void test_body_bad_header(void)
{
    uint32_t len, id = 0;
    uint8_t *ev = make_min_event(SHMIPC_EV_STREAM_CLOSE, &len);
    ev[5] ^= 1;
    EXPECT_RC(ev_decode_stream_close(ev, len, &id), SHMIPC_EBADMAGIC);
    ev[5] ^= 1;
    ev[6] = 0;
    EXPECT_RC(ev_decode_stream_close(ev, len, &id), SHMIPC_EBADVERSION);
    free(ev);
}

/* ---- encoders ---- */

#define GUARD 0xa5

static int untouched(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] != GUARD)
            return 0;
    return 1;
}

/* cap one short must fail without writing; cap exact must succeed. */
#define EXPECT_CAP(call_with_cap, need)                                                            \
    do {                                                                                           \
        uint8_t b_[256];                                                                           \
        for (size_t cap_ = 0; cap_ < (need); cap_ += (need)-1) {                                   \
            memset(b_, GUARD, sizeof(b_));                                                         \
            uint8_t *buf = b_;                                                                     \
            size_t cap = cap_;                                                                     \
            EXPECT_RC(call_with_cap, -ENOBUFS);                                                    \
            CU_ASSERT_TRUE(untouched(b_, sizeof(b_)));                                             \
        }                                                                                          \
        uint8_t *buf = b_;                                                                         \
        size_t cap = (need);                                                                       \
        memset(b_, GUARD, sizeof(b_));                                                             \
        EXPECT_RC(call_with_cap, (int)(need));                                                     \
        CU_ASSERT_TRUE(untouched(b_ + (need), sizeof(b_) - (need)));                               \
    } while (0)

static void test_encode_small_cap(void)
{
    EXPECT_CAP(ev_encode_header(buf, cap, 8, 3, SHMIPC_EV_POLLING), 8);
    EXPECT_CAP(ev_encode_simple(buf, cap, 3, SHMIPC_EV_ACK_SHM), 8);
    EXPECT_CAP(ev_encode_stream_close(buf, cap, 3, 7), 12);
    EXPECT_CAP(ev_encode_fallback_header(buf, cap, 3, 7, 0, 5), 16);
    EXPECT_CAP(ev_encode_shm_meta(buf, cap, 3, SHMIPC_EV_SHM_BY_MEMFD, Q_PATH, B_PATH), 47);
    EXPECT_CAP(ev_encode_hot_restart(buf, cap, 3, SHMIPC_EV_HOT_RESTART, 5), 16);
}

static void test_encode_wrong_type(void)
{
    uint8_t buf[64];
    for (unsigned t = 0; t <= 255; t++) {
        int simple = t == SHMIPC_EV_POLLING || t == SHMIPC_EV_EXCHANGE_VER ||
                     t == SHMIPC_EV_ACK_SHM || t == SHMIPC_EV_ACK_READY_RECV_FD;
        int meta = t == SHMIPC_EV_SHM_BY_PATH || t == SHMIPC_EV_SHM_BY_MEMFD;
        int hr = t == SHMIPC_EV_HOT_RESTART || t == SHMIPC_EV_HOT_RESTART_ACK;
        EXPECT_RC(ev_encode_simple(buf, sizeof(buf), 3, (uint8_t)t), simple ? 8 : -EINVAL);
        EXPECT_RC(ev_encode_shm_meta(buf, sizeof(buf), 3, (uint8_t)t, "a", "b"),
                  meta ? 14 : -EINVAL);
        EXPECT_RC(ev_encode_hot_restart(buf, sizeof(buf), 3, (uint8_t)t, 1), hr ? 16 : -EINVAL);
    }
    EXPECT_RC(ev_encode_shm_meta(buf, sizeof(buf), 3, SHMIPC_EV_SHM_BY_PATH, NULL, "b"), -EINVAL);
    EXPECT_RC(ev_encode_shm_meta(buf, sizeof(buf), 3, SHMIPC_EV_SHM_BY_PATH, "a", NULL), -EINVAL);
}

static void test_encode_long_path(void)
{
    const size_t max = 65535, cap = 12 + 2 * (max + 1);
    char *p = malloc(max + 2);
    uint8_t *buf = malloc(cap);
    CU_ASSERT_FATAL(p != NULL && buf != NULL);
    memset(p, 'p', max + 1);
    p[max + 1] = '\0';
    EXPECT_RC(ev_encode_shm_meta(buf, cap, 3, SHMIPC_EV_SHM_BY_PATH, p, "b"), SHMIPC_EBADEVENT);
    EXPECT_RC(ev_encode_shm_meta(buf, cap, 3, SHMIPC_EV_SHM_BY_PATH, "q", p), SHMIPC_EBADEVENT);
    p[max] = '\0';
    EXPECT_RC(ev_encode_shm_meta(buf, cap, 3, SHMIPC_EV_SHM_BY_MEMFD, p, p), (int)(12 + 2 * max));
    /* The longest legal paths decode back. */
    struct ev_header h;
    struct ev_shm_meta m;
    EXPECT_RC(ev_decode_header(buf, 0, &h), 0);
    CU_ASSERT_EQUAL(h.length, 12 + 2 * max);
    EXPECT_RC(ev_decode_shm_meta(buf, h.length, &m), 0);
    CU_ASSERT_EQUAL(m.queue_len, max);
    CU_ASSERT_EQUAL(m.buffer_len, max);
    CU_ASSERT_PTR_EQUAL(m.buffer_path, (const char *)buf + 12 + max);
    free(p);
    free(buf);
}

static void test_encode_fallback_limit(void)
{
    uint8_t buf[16];
    struct ev_header h;
    EXPECT_RC(ev_encode_fallback_header(buf, sizeof(buf), 3, 1, 0, UINT32_MAX - 16), 16);
    EXPECT_RC(ev_decode_header(buf, UINT32_MAX, &h), 0);
    CU_ASSERT_EQUAL(h.length, UINT32_MAX);
    EXPECT_RC(ev_encode_fallback_header(buf, sizeof(buf), 3, 1, 0, UINT32_MAX - 15),
              SHMIPC_EBIGEVENT);
    EXPECT_RC(ev_encode_fallback_header(buf, sizeof(buf), 3, 1, 0, UINT32_MAX), SHMIPC_EBIGEVENT);
}

/* ---- round trips ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: deterministic, so a failure reproduces. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static void roundtrip_fallback(uint32_t id, uint32_t status, uint32_t n, uint8_t version)
{
    uint8_t *ev = malloc(16 + n);
    CU_ASSERT_FATAL(ev != NULL);
    for (uint32_t i = 0; i < n; i++)
        ev[16 + i] = (uint8_t)rnd();
    EXPECT_RC(ev_encode_fallback_header(ev, 16, version, id, status, n), 16);
    /* Big-endian on the wire, which a symmetric round trip cannot show. */
    CU_ASSERT_EQUAL(ev[8], (uint8_t)(id >> 24));
    CU_ASSERT_EQUAL(ev[11], (uint8_t)id);
    CU_ASSERT_EQUAL(ev[12], (uint8_t)(status >> 24));
    CU_ASSERT_EQUAL(ev[15], (uint8_t)status);
    struct ev_header h;
    struct ev_fallback fb;
    EXPECT_RC(ev_decode_header(ev, 0, &h), 0);
    CU_ASSERT_EQUAL(h.length, 16 + n);
    CU_ASSERT_EQUAL(h.version, version);
    EXPECT_RC(ev_decode_fallback(ev, 16 + n, &fb), 0);
    CU_ASSERT_EQUAL(fb.stream_id, id);
    CU_ASSERT_EQUAL(fb.status, status);
    CU_ASSERT_EQUAL(fb.payload_len, n);
    CU_ASSERT_PTR_EQUAL(fb.payload, ev + 16);
    free(ev);
}

static void test_roundtrip_fallback(void)
{
    rng_state = 0x5eed5eed12345678ull;
    roundtrip_fallback(0, 0, 0, 2);
    roundtrip_fallback(UINT32_MAX, UINT32_MAX, 1, 3);
    for (int i = 0; i < 300; i++)
        roundtrip_fallback((uint32_t)rnd(), (uint32_t)rnd(), (uint32_t)(rnd() % 2048),
                           (uint8_t)(2 + rnd() % 2));
}

static void test_roundtrip_ids(void)
{
    rng_state = 0xfeedfacecafebeefull;
    for (int i = 0; i < 300; i++) {
        uint32_t id = i == 0 ? 0 : i == 1 ? UINT32_MAX : (uint32_t)rnd();
        uint64_t epoch = i == 0 ? 0 : i == 1 ? UINT64_MAX : rnd();
        uint8_t sc[12], hr[16];
        uint32_t id_out = ~id;
        uint64_t epoch_out = ~epoch;
        EXPECT_RC(ev_encode_stream_close(sc, sizeof(sc), 3, id), 12);
        CU_ASSERT_EQUAL(sc[8], (uint8_t)(id >> 24));
        EXPECT_RC(ev_decode_stream_close(sc, sizeof(sc), &id_out), 0);
        CU_ASSERT_EQUAL(id_out, id);
        uint8_t t = i % 2 ? SHMIPC_EV_HOT_RESTART : SHMIPC_EV_HOT_RESTART_ACK;
        EXPECT_RC(ev_encode_hot_restart(hr, sizeof(hr), 2, t, epoch), 16);
        CU_ASSERT_EQUAL(hr[8], (uint8_t)(epoch >> 56));
        CU_ASSERT_EQUAL(hr[15], (uint8_t)epoch);
        EXPECT_RC(ev_decode_hot_restart(hr, sizeof(hr), &epoch_out), 0);
        CU_ASSERT_EQUAL(epoch_out, epoch);
    }
}

static void test_roundtrip_shm_meta(void)
{
    rng_state = 0x0123456789abcdefull;
    for (int i = 0; i < 100; i++) {
        char q[301], b[301];
        size_t qn = rnd() % 300, bn = rnd() % 300;
        for (size_t j = 0; j < qn; j++)
            q[j] = (char)(1 + rnd() % 255); /* any byte but NUL */
        for (size_t j = 0; j < bn; j++)
            b[j] = (char)(1 + rnd() % 255);
        q[qn] = b[bn] = '\0';
        uint8_t type = i % 2 ? SHMIPC_EV_SHM_BY_PATH : SHMIPC_EV_SHM_BY_MEMFD;
        uint32_t len;
        uint8_t *ev = make_meta(type, q, b, 0, &len);
        struct ev_header h;
        struct ev_shm_meta m = {NULL, 0, NULL, 0};
        EXPECT_RC(ev_decode_header(ev, 0, &h), 0);
        CU_ASSERT_EQUAL(h.type, type);
        CU_ASSERT_EQUAL(h.length, 12 + qn + bn);
        EXPECT_RC(ev_decode_shm_meta(ev, len, &m), 0);
        CU_ASSERT_EQUAL(m.queue_len, qn);
        CU_ASSERT_EQUAL(m.buffer_len, bn);
        if (m.queue_path != NULL && m.queue_len == qn && m.buffer_len == bn) {
            CU_ASSERT_EQUAL(memcmp(m.queue_path, q, qn), 0);
            CU_ASSERT_EQUAL(memcmp(m.buffer_path, b, bn), 0);
        }
        free(ev);
    }
}

static const struct test_case cases[] = {
    {"golden section A encode+decode", test_golden_section_a},
    {"golden every record covered", test_golden_every_record_covered},
    {"golden fd message", test_golden_fd_message},
    {"golden v3 handshake", test_golden_handshake},
    {"type tables", test_type_tables},
    {"header accepts", test_header_accepts},
    {"header bad magic", test_header_bad_magic},
    {"header bad version", test_header_bad_version},
    {"header bad type", test_header_bad_type},
    {"header fixed lengths", test_header_fixed_lengths},
    {"header variable minimum", test_header_variable_minimum},
    {"header max len", test_header_max_len},
    {"shm meta valid", test_shm_meta_valid},
    {"shm meta n1 overflow", test_shm_meta_n1_overflow},
    {"shm meta n2 overflow", test_shm_meta_n2_overflow},
    {"shm meta trailing bytes", test_shm_meta_trailing},
    {"shm meta NUL in path", test_shm_meta_nul},
    {"body len mismatch", test_body_len_mismatch},
    {"fallback truncated", test_fallback_truncated},
    {"body decoder wrong type", test_body_wrong_type},
    {"body decoder bad header", test_body_bad_header},
    {"encode small cap", test_encode_small_cap},
    {"encode wrong type", test_encode_wrong_type},
    {"encode long path", test_encode_long_path},
    {"encode fallback limit", test_encode_fallback_limit},
    {"roundtrip fallback", test_roundtrip_fallback},
    {"roundtrip stream ids and epochs", test_roundtrip_ids},
    {"roundtrip shm meta", test_roundtrip_shm_meta},
    {NULL, NULL},
};

const struct test_suite suite_event = {"event", cases};
