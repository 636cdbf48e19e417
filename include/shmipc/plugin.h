/*
 * The shmipcd handler-plugin ABI: the only header a plugin includes.
 *
 * A plugin is a shared object exporting one descriptor,
 *
 *     SHMIPC_PLUGIN_EXPORT = { SHMIPC_PLUGIN_HEADER("echo", "1.0.0"), .handle = ... };
 *
 * which the loader checks (magic, ABI major equal, minor not newer than the
 * host's, size) before calling anything. Hooks and where they run:
 *   init         master thread, once per generation: parse the plugin's own
 *                config, return the plugin state (NULL + errbuf on failure)
 *   thread_init  each worker thread, after init: per-thread state
 *   handle       a worker thread, per request; requests on one stream come
 *                in order, one at a time
 *   stream_open / stream_close   a worker, optional
 *   thread_fini, fini            when the generation is retired
 *
 * Ownership: the request's bytes are views into shared memory valid only
 * during handle(); copy what must outlive it. The response is written
 * through the host API into the client's pool and sent when handle()
 * returns 0; a negative return sends nothing on that stream for this
 * request and is counted. Strings passed in (names, config values) belong
 * to the host and live as long as the generation.
 *
 * Compatibility: fields are only ever appended; a plugin built against an
 * older minor works with a newer host. The host API table grows the same
 * way; check host->size before using a field newer than your minor.
 */
#ifndef SHMIPC_PLUGIN_H
#define SHMIPC_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHMIPC_PLUGIN_MAGIC 0x53484d50u /* "SHMP" */
#define SHMIPC_PLUGIN_ABI_MAJOR 1u
#define SHMIPC_PLUGIN_ABI_MINOR 0u
#define SHMIPC_PLUGIN_SYMBOL "shmipc_plugin"

/* Log levels for host->log (match shmipcd's). */
#define SHMIPC_LOG_ERROR 0
#define SHMIPC_LOG_WARN 1
#define SHMIPC_LOG_INFO 2
#define SHMIPC_LOG_DEBUG 3

struct shmipc_plugin_iov {
    const uint8_t *base;
    size_t len;
};

/* One request: what the client flushed once. */
struct shmipc_request {
    uint64_t session_id;
    uint32_t stream_id;
    size_t len;                          /* total bytes */
    unsigned niov;                       /* pieces in order (pool slices) */
    const struct shmipc_plugin_iov *iov;
};

/* Opaque: the response being built, and the plugin's config setting. */
struct shmipc_response;
struct shmipc_plugin_conf;

struct shmipc_host_api {
    uint32_t size; /* sizeof(struct shmipc_host_api) of the host */
    uint32_t abi_minor;
    void (*log)(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
    /* Response: copy bytes in, or get n contiguous bytes to fill. */
    int (*write)(struct shmipc_response *resp, const void *data, size_t n);
    int (*reserve)(struct shmipc_response *resp, size_t n, void **ptr);
    /* Copies request bytes [off, off+n) into dst, spanning pieces. */
    size_t (*copy)(const struct shmipc_request *req, size_t off, void *dst, size_t n);
    const char *(*strerror)(int code);
    /* The plugin's config group ("config = { ... }" of its service).
     * path is a libconfig path relative to it ("limit", "a.b"). 0 when
     * found, -ENOENT when absent, -EINVAL when of another type. */
    int (*conf_int)(const struct shmipc_plugin_conf *c, const char *path, long long *out);
    int (*conf_bool)(const struct shmipc_plugin_conf *c, const char *path, int *out);
    int (*conf_float)(const struct shmipc_plugin_conf *c, const char *path, double *out);
    int (*conf_string)(const struct shmipc_plugin_conf *c, const char *path, const char **out);
    /* Response: n more bytes left as the pool slices hold them (zero-touch
     * benchmarks; data placed by other means). */
    int (*advance)(struct shmipc_response *resp, size_t n);
    /* Response: the request's bytes, after whatever was written so far.
     * When they are the whole response, the request's own slices answer:
     * nothing is copied, and the request stays readable until handle()
     * returns. NULL in hosts older than it: check before use. */
    int (*forward)(struct shmipc_response *resp);
    void *reserved[6];
};

struct shmipc_plugin {
    uint32_t magic;     /* SHMIPC_PLUGIN_MAGIC */
    uint16_t abi_major; /* SHMIPC_PLUGIN_ABI_MAJOR */
    uint16_t abi_minor; /* SHMIPC_PLUGIN_ABI_MINOR */
    uint32_t size;      /* sizeof(struct shmipc_plugin) when built */
    uint32_t flags;     /* 0 */
    const char *name;
    const char *version;

    void *(*init)(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                  char *errbuf, size_t errlen);
    void (*fini)(void *state);
    void *(*thread_init)(void *state, unsigned worker);
    void (*thread_fini)(void *state, void *thread_state);
    int (*handle)(void *state, void *thread_state, const struct shmipc_request *req,
                  struct shmipc_response *resp);
    void (*stream_open)(void *state, void *thread_state, uint64_t session_id, uint32_t stream_id);
    void (*stream_close)(void *state, void *thread_state, uint64_t session_id, uint32_t stream_id);

    void *spare[8]; /* NULL: room for hooks of later minors */
};

#define SHMIPC_PLUGIN_HEADER(name_, version_)                                                      \
    .magic = SHMIPC_PLUGIN_MAGIC, .abi_major = SHMIPC_PLUGIN_ABI_MAJOR,                            \
    .abi_minor = SHMIPC_PLUGIN_ABI_MINOR, .size = sizeof(struct shmipc_plugin), .name = (name_),   \
    .version = (version_)

#define SHMIPC_PLUGIN_EXPORT                                                                       \
    __attribute__((visibility("default"))) const struct shmipc_plugin shmipc_plugin

#ifdef __cplusplus
}
#endif
#endif
