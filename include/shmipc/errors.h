/*
 * Error codes of libshmipc.
 *
 * Every function returns 0 (or a count) on success and a negative code on
 * failure. Codes above SHMIPC_ERR_BASE are negated errno values passed
 * through from the system; codes at or below it are the library's own and
 * are listed once, in SHMIPC_ERRNO_MAP. shmipc_strerror() names both kinds.
 */
#ifndef SHMIPC_ERRORS_H
#define SHMIPC_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

#define SHMIPC_API __attribute__((visibility("default")))

#define SHMIPC_ERR_BASE (-1000)

/* X(name, offset below SHMIPC_ERR_BASE, message) */
#define SHMIPC_ERRNO_MAP(X)                                                     \
    X(EBADMAGIC, 0, "event has a bad magic number")                             \
    X(EBADVERSION, 1, "event has an unsupported protocol version")              \
    X(EBADTYPE, 2, "event has an unknown type")                                 \
    X(ESHORTEVENT, 3, "event is shorter than its type requires")                \
    X(EBIGEVENT, 4, "event is longer than the maximum event size")              \
    X(EBADEVENT, 5, "event body is malformed")                                  \
    X(EBADPOOL, 6, "shared buffer pool layout is invalid")                      \
    X(EBADQUEUE, 7, "shared queue layout is invalid")                           \
    X(EBADOFFSET, 8, "offset from the peer is out of range")                    \
    X(EBADSLICE, 9, "slice header from the peer is invalid")                    \
    X(ECHAINLOOP, 10, "slice chain loops or is longer than the pool")           \
    X(ENOBUFS, 11, "shared buffer pool is exhausted")                           \
    X(EQFULL, 12, "queue full")                                                 \
    X(EQEMPTY, 13, "queue empty")                                               \
    X(ECORRUPT, 14, "shared state was corrupted by the peer")                   \
    X(EPATH, 15, "path is outside the allowed directory or not a regular file") \
    X(ECONTENDED, 16, "too much contention on a shared list")                   \
    X(ENOSPACE, 17, "not enough space for the shared memory backing store")     \
    X(EPROTO, 18, "peer violated the protocol")                                 \
    X(ECLOSED, 19, "session or stream is closed")                               \
    X(ETIMEDOUT, 20, "deadline expired")                                        \
    X(EUNHEALTHY, 21, "session refuses new streams after falling back")         \
    X(ENOSESSION, 22, "no session to the server is available")                  \
    X(ESLICEHELD, 23, "slice from the peer is in a message not yet released")  \
    X(ERETIRED, 24, "session is being replaced after the server's hot restart")

enum shmipc_errno {
#define SHMIPC_ERR_ENUM_(name, off, msg) SHMIPC_##name = SHMIPC_ERR_BASE - (off),
    SHMIPC_ERRNO_MAP(SHMIPC_ERR_ENUM_)
#undef SHMIPC_ERR_ENUM_
    SHMIPC_ERR_LAST_ = SHMIPC_ERR_BASE - 25
};

/* A static string naming `code` (0, a negated errno, or a SHMIPC_E* code).
 * Never NULL; unknown codes get a generic text. */
SHMIPC_API const char *shmipc_strerror(int code);

/* The symbolic name of `code`, e.g. "SHMIPC_EQFULL" or "ENOENT". */
SHMIPC_API const char *shmipc_err_name(int code);

#ifdef __cplusplus
}
#endif
#endif
