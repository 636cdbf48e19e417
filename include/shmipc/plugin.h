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
 *   handoff / save / restore     master, on a reload: carry the state to
 *                                the new generation (minor 1, optional)
 *
 * Ownership: the request's bytes are views into shared memory valid only
 * during handle() (or until a deferred response is completed); copy what
 * must outlive it. The response is written through the host API into the
 * client's pool and sent when handle() returns 0; a negative return sends
 * nothing and, with the service's default handler_error = "close_stream",
 * closes that stream so the client sees it at once; either way it is
 * counted. Strings passed in (names, config values) belong to the host and
 * live as long as the generation.
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
#define SHMIPC_PLUGIN_ABI_MINOR 1u
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

    /* ---- ABI minor 1: deferred responses (NULL in older hosts) ---- */
    /* From handle() only: the response (and the request, which stays
     * readable) now belongs to the plugin, which answers later from any
     * thread: write/reserve/advance/forward on the returned handle, then
     * complete() to send it, or fail() to close the stream instead
     * (handler_error). handle() must then return 0 and not touch resp
     * again. The stream's next request waits until this one is completed
     * or failed, so answers keep their order. Exactly one of complete or
     * fail must be called, once; after it the handle is gone. If the
     * session died meanwhile, complete() returns SHMIPC_ECLOSED and frees
     * everything all the same. NULL when out of memory (answer now). */
    struct shmipc_response *(*defer)(struct shmipc_response *resp);
    int (*complete)(struct shmipc_response *deferred);
    void (*fail)(struct shmipc_response *deferred, int code);
    /* From init: the keys the plugin's config group may have (NULL-
     * terminated). 0, or -EINVAL with errbuf naming the file, line and the
     * unknown key, and the known ones: return NULL from init with it, and
     * a typo in the config refuses the load instead of being ignored. */
    int (*conf_keys)(const struct shmipc_plugin_conf *c, const char *const *known, char *errbuf,
                     size_t errlen);
    void *reserved[2];
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

    /* ---- ABI minor 1: state across reloads (all optional) ----
     * A reload that replaces a generation (a new .so, a changed config)
     * may carry the plugin's state over to the new one, when both
     * generations' plugins have the same name. The host calls these on
     * the master after the new generation's init and every worker's
     * thread_init succeeded, just before the swap; the old generation
     * serves on meanwhile, and after the swap until its requests are done.
     * It picks, in this order:
     *   1. handoff, when both descriptors have it (in-process);
     *   2. else, or when handoff returned SHMIPC_STATE_DECLINED: save on
     *      the old generation and restore on the new one, when the old
     *      has save and the new has restore (bytes: this also carries
     *      state to another process);
     *   3. else nothing: the new state is what init made (as with plugins
     *      of minor 0, whose slots here are NULL, or another name).
     * A hook that fails (negative, message in errbuf) refuses the reload
     * of that service, like a failing init: the new generation is
     * finished (thread_fini, fini) and the old one keeps serving.
     *
     * handoff  runs the NEW generation's code: `state` is its own (from
     *   init), `old_state` the serving generation's, possibly made by an
     *   older build: tag your state with a layout number and return
     *   SHMIPC_STATE_DECLINED for one you do not know. Taking over what
     *   the old state holds means sharing it: the old generation keeps
     *   handling requests until the swap and finishes those in flight
     *   after it, and its fini runs later, so what is shared needs the
     *   plugin's own locking and a reference count. Keep no pointer into
     *   the old .so's code or static data (functions, string literals,
     *   static variables): that copy is unloaded once the old generation
     *   is finished. Nothing is lost: writes after the hand-off go to
     *   what both share. 0, SHMIPC_STATE_DECLINED, or negative.
     * save  runs the OLD generation's code on its state, which is being
     *   served meanwhile (lock as handle() does): writes it as bytes with
     *   put(sink, data, n), as often as needed. The host owns the bytes
     *   and grows its buffer; put returns 0, or a negative code (out of
     *   memory) that save should return. The bytes may cross a process:
     *   no pointers; start them with a format tag of your own. A write
     *   the old generation serves after save (before the swap, or a
     *   request already running at it) is not in the bytes: prefer
     *   handoff where state must be exact. 0 or negative.
     * restore  runs the NEW generation's code on its state, with the
     *   bytes save wrote (the host's, valid during the call only; the
     *   format tag tells an older save's). 0 or negative. */
    int (*handoff)(void *state, void *old_state, char *errbuf, size_t errlen);
    int (*save)(void *state, int (*put)(void *sink, const void *data, size_t n), void *sink,
                char *errbuf, size_t errlen);
    int (*restore)(void *state, const void *data, size_t len, char *errbuf, size_t errlen);

    void *spare[5]; /* NULL: room for hooks of later minors */
};

/* handoff's answer for an old state it cannot take over (another layout):
 * the host tries save/restore instead. */
#define SHMIPC_STATE_DECLINED 1

#define SHMIPC_PLUGIN_HEADER(name_, version_)                                                      \
    .magic = SHMIPC_PLUGIN_MAGIC, .abi_major = SHMIPC_PLUGIN_ABI_MAJOR,                            \
    .abi_minor = SHMIPC_PLUGIN_ABI_MINOR, .size = sizeof(struct shmipc_plugin), .name = (name_),   \
    .version = (version_)

/* Whether the host's API table has `field` (a host older than the plugin
 * has a shorter table): SHMIPC_HOST_HAS(host, conf_keys). */
#define SHMIPC_HOST_HAS(host, field)                                                               \
    ((host)->size >= offsetof(struct shmipc_host_api, field) + sizeof((host)->field) &&            \
     (host)->field != NULL)

#define SHMIPC_PLUGIN_EXPORT                                                                       \
    __attribute__((visibility("default"))) const struct shmipc_plugin shmipc_plugin

#ifdef __cplusplus
}
#endif
#endif
