/*
 * The shmipc wire protocol: socket events and shared-memory layouts.
 *
 * Socket integers are big-endian, so socket structs are byte arrays and are
 * read and written only through the event codec. Shared-memory integers are
 * native (little-endian on x86-64 and aarch64). Every size and field offset
 * that the wire fixes is pinned by a _Static_assert below; changing one
 * breaks compatibility with the Go and Rust shmipc peers.
 *
 * Who writes what in shared memory:
 *   pool header, list cap/slice_cap: the creator (client), once, before
 *     handing the pool over; the mapper only reads them (and validates).
 *   list free_count/head/tail, slice headers: both sides, with the
 *     cross-process pop/push algorithm of src/shm/pool.c.
 *   queue cap: the creator, once. head: the queue's consumer. tail: its
 *     producer. working flag: both (producer CAS 0->1, consumer clears).
 */
#ifndef SHMIPC_WIRE_H
#define SHMIPC_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* ---- socket events ---------------------------------------------------- */

#define SHMIPC_EV_MAGIC 0x7758u
#define SHMIPC_EV_HEADER_LEN 8u
#define SHMIPC_PROTO_V2 2u /* file-path handshake, no reply (Go default) */
#define SHMIPC_PROTO_V3 3u /* memfd handshake, version exchange (Rust default) */
#define SHMIPC_PROTO_MAX SHMIPC_PROTO_V3

enum shmipc_ev_type {
    SHMIPC_EV_SHM_BY_PATH = 0,     /* u16 n1, queue path, u16 n2, buffer path */
    SHMIPC_EV_POLLING = 1,         /* no body */
    SHMIPC_EV_STREAM_CLOSE = 2,    /* u32 stream id */
    SHMIPC_EV_FALLBACK_DATA = 3,   /* u32 stream id, u32 status, payload */
    SHMIPC_EV_EXCHANGE_VER = 4,    /* no body; the header's version is the offer */
    SHMIPC_EV_SHM_BY_MEMFD = 5,    /* as type 0; the fds follow separately */
    SHMIPC_EV_ACK_SHM = 6,         /* no body */
    SHMIPC_EV_ACK_READY_RECV_FD = 7, /* no body */
    SHMIPC_EV_HOT_RESTART = 8,     /* u64 epoch */
    SHMIPC_EV_HOT_RESTART_ACK = 9, /* u64 epoch */
    SHMIPC_EV_TYPE_MAX = 9
};

/* Event header: u32 length (whole event), u16 magic, u8 version, u8 type. */
struct shmipc_ev_header {
    uint8_t length[4];
    uint8_t magic[2];
    uint8_t version;
    uint8_t type;
};

struct shmipc_ev_stream_close {
    struct shmipc_ev_header hdr;
    uint8_t stream_id[4];
};

struct shmipc_ev_fallback {
    struct shmipc_ev_header hdr;
    uint8_t stream_id[4];
    uint8_t status[4]; /* only the low byte is meaningful: 0 open, 1 closed */
    /* payload follows */
};

struct shmipc_ev_hot_restart {
    struct shmipc_ev_header hdr;
    uint8_t epoch[8];
};

#define SHMIPC_EV_STREAM_CLOSE_LEN 12u
#define SHMIPC_EV_FALLBACK_MIN_LEN 16u
#define SHMIPC_EV_HOT_RESTART_LEN 16u
/* Minimum ShareMemoryBy* length: header + two u16 lengths, empty paths. */
#define SHMIPC_EV_SHM_META_MIN_LEN 12u

/* The memfd handshake's fd message: one 0x00 data byte, SCM_RIGHTS with two
 * fds in the order [buffer, queue]. */
#define SHMIPC_FD_MSG_NFDS 2
#define SHMIPC_FD_MSG_BUFFER 0
#define SHMIPC_FD_MSG_QUEUE 1

/* Stream status carried in queue elements and fallback events. */
#define SHMIPC_STREAM_OPEN 0u
#define SHMIPC_STREAM_CLOSED 1u

/* ---- buffer pool (client-created, both sides pop/push) ----------------- */

struct shmipc_pool_header {
    uint16_t nlists;   /* creator writes once */
    uint16_t reserved; /* 0 */
    uint32_t used;     /* bytes of all lists after this header */
};

struct shmipc_list_header {
    int32_t free_count;    /* both sides, atomic */
    uint32_t nslices;      /* creator writes once */
    uint32_t head;         /* both, CAS; relative to the slice region */
    uint32_t tail;         /* both, CAS; relative to the slice region */
    uint32_t slice_cap;    /* creator writes once: data bytes per slice */
    int32_t creator_count; /* creator's pop/push counter (never trusted) */
    int32_t mapper_count;  /* mapper's pop/push counter (never trusted) */
    uint32_t pop_lock;     /* ours only (0 in the peers): serialises our pops */
    uint8_t unused[4];
};

/* Slice flags */
#define SHMIPC_SLICE_HAS_NEXT 0x1u
#define SHMIPC_SLICE_IN_USE 0x2u

struct shmipc_slice_header {
    uint32_t cap;   /* creator writes once */
    uint32_t size;  /* sender: valid bytes, written before publishing */
    uint32_t start; /* sender: data start inside the slice (0 in practice) */
    uint32_t next;  /* free list: region-relative; chain: absolute in pool */
    uint8_t flags;  /* SHMIPC_SLICE_* */
    uint8_t pad[3];
};

#define SHMIPC_POOL_HEADER_LEN 8u
#define SHMIPC_LIST_HEADER_LEN 36u
#define SHMIPC_SLICE_HEADER_LEN 20u

/* ---- queue pair (client-created; first half client->server) ------------ */

/* x86-64: head and tail are 8-byte counters at 4-byte-aligned offsets. */
struct shmipc_queue_header_x86_64 {
    uint32_t cap;     /* creator writes once */
    uint32_t head[2]; /* i64, consumer writes */
    uint32_t tail[2]; /* i64, producer writes */
    uint32_t working; /* producer CAS 0->1, consumer stores 0 / 1 */
};

struct shmipc_queue_header_aarch64 {
    uint32_t cap;
    uint32_t working;
    int64_t head;
    int64_t tail;
};

struct shmipc_queue_elem {
    uint32_t stream_id;
    uint32_t offset; /* absolute offset of the first slice header in the pool */
    uint32_t status; /* SHMIPC_STREAM_OPEN or SHMIPC_STREAM_CLOSED */
};

#define SHMIPC_QUEUE_HEADER_LEN 24u
#define SHMIPC_QUEUE_ELEM_LEN 12u

/* Byte offsets of the queue header fields for the build's architecture. */
#if defined(__x86_64__)
#define SHMIPC_QUEUE_OFF_CAP 0u
#define SHMIPC_QUEUE_OFF_HEAD 4u
#define SHMIPC_QUEUE_OFF_TAIL 12u
#define SHMIPC_QUEUE_OFF_WORKING 20u
#elif defined(__aarch64__)
#define SHMIPC_QUEUE_OFF_CAP 0u
#define SHMIPC_QUEUE_OFF_HEAD 8u
#define SHMIPC_QUEUE_OFF_TAIL 16u
#define SHMIPC_QUEUE_OFF_WORKING 4u
#else
#error "shmipc's queue layout is defined for x86-64 and aarch64 only"
#endif

/* ---- layout pins ------------------------------------------------------- */

#define SHMIPC_PIN_(type, field, off) _Static_assert(offsetof(type, field) == (off), #type "." #field)

_Static_assert(sizeof(struct shmipc_ev_header) == SHMIPC_EV_HEADER_LEN, "event header");
SHMIPC_PIN_(struct shmipc_ev_header, length, 0);
SHMIPC_PIN_(struct shmipc_ev_header, magic, 4);
SHMIPC_PIN_(struct shmipc_ev_header, version, 6);
SHMIPC_PIN_(struct shmipc_ev_header, type, 7);
_Static_assert(sizeof(struct shmipc_ev_stream_close) == SHMIPC_EV_STREAM_CLOSE_LEN, "stream close");
SHMIPC_PIN_(struct shmipc_ev_stream_close, stream_id, 8);
_Static_assert(sizeof(struct shmipc_ev_fallback) == SHMIPC_EV_FALLBACK_MIN_LEN, "fallback");
SHMIPC_PIN_(struct shmipc_ev_fallback, stream_id, 8);
SHMIPC_PIN_(struct shmipc_ev_fallback, status, 12);
_Static_assert(sizeof(struct shmipc_ev_hot_restart) == SHMIPC_EV_HOT_RESTART_LEN, "hot restart");
SHMIPC_PIN_(struct shmipc_ev_hot_restart, epoch, 8);

_Static_assert(sizeof(struct shmipc_pool_header) == SHMIPC_POOL_HEADER_LEN, "pool header");
SHMIPC_PIN_(struct shmipc_pool_header, nlists, 0);
SHMIPC_PIN_(struct shmipc_pool_header, reserved, 2);
SHMIPC_PIN_(struct shmipc_pool_header, used, 4);

_Static_assert(sizeof(struct shmipc_list_header) == SHMIPC_LIST_HEADER_LEN, "list header");
SHMIPC_PIN_(struct shmipc_list_header, free_count, 0);
SHMIPC_PIN_(struct shmipc_list_header, nslices, 4);
SHMIPC_PIN_(struct shmipc_list_header, head, 8);
SHMIPC_PIN_(struct shmipc_list_header, tail, 12);
SHMIPC_PIN_(struct shmipc_list_header, slice_cap, 16);
SHMIPC_PIN_(struct shmipc_list_header, creator_count, 20);
SHMIPC_PIN_(struct shmipc_list_header, mapper_count, 24);
SHMIPC_PIN_(struct shmipc_list_header, pop_lock, 28);
SHMIPC_PIN_(struct shmipc_list_header, unused, 32);

_Static_assert(sizeof(struct shmipc_slice_header) == SHMIPC_SLICE_HEADER_LEN, "slice header");
SHMIPC_PIN_(struct shmipc_slice_header, cap, 0);
SHMIPC_PIN_(struct shmipc_slice_header, size, 4);
SHMIPC_PIN_(struct shmipc_slice_header, start, 8);
SHMIPC_PIN_(struct shmipc_slice_header, next, 12);
SHMIPC_PIN_(struct shmipc_slice_header, flags, 16);
SHMIPC_PIN_(struct shmipc_slice_header, pad, 17);

_Static_assert(sizeof(struct shmipc_queue_header_x86_64) == SHMIPC_QUEUE_HEADER_LEN, "queue x86-64");
SHMIPC_PIN_(struct shmipc_queue_header_x86_64, cap, 0);
SHMIPC_PIN_(struct shmipc_queue_header_x86_64, head, 4);
SHMIPC_PIN_(struct shmipc_queue_header_x86_64, tail, 12);
SHMIPC_PIN_(struct shmipc_queue_header_x86_64, working, 20);
_Static_assert(sizeof(struct shmipc_queue_header_aarch64) == SHMIPC_QUEUE_HEADER_LEN, "queue aarch64");
SHMIPC_PIN_(struct shmipc_queue_header_aarch64, cap, 0);
SHMIPC_PIN_(struct shmipc_queue_header_aarch64, working, 4);
SHMIPC_PIN_(struct shmipc_queue_header_aarch64, head, 8);
SHMIPC_PIN_(struct shmipc_queue_header_aarch64, tail, 16);

_Static_assert(sizeof(struct shmipc_queue_elem) == SHMIPC_QUEUE_ELEM_LEN, "queue element");
SHMIPC_PIN_(struct shmipc_queue_elem, stream_id, 0);
SHMIPC_PIN_(struct shmipc_queue_elem, offset, 4);
SHMIPC_PIN_(struct shmipc_queue_elem, status, 8);

#if defined(__x86_64__)
SHMIPC_PIN_(struct shmipc_queue_header_x86_64, head, SHMIPC_QUEUE_OFF_HEAD);
SHMIPC_PIN_(struct shmipc_queue_header_x86_64, tail, SHMIPC_QUEUE_OFF_TAIL);
SHMIPC_PIN_(struct shmipc_queue_header_x86_64, working, SHMIPC_QUEUE_OFF_WORKING);
#elif defined(__aarch64__)
SHMIPC_PIN_(struct shmipc_queue_header_aarch64, head, SHMIPC_QUEUE_OFF_HEAD);
SHMIPC_PIN_(struct shmipc_queue_header_aarch64, tail, SHMIPC_QUEUE_OFF_TAIL);
SHMIPC_PIN_(struct shmipc_queue_header_aarch64, working, SHMIPC_QUEUE_OFF_WORKING);
#endif

#undef SHMIPC_PIN_

#endif
