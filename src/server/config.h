/*
 * shmipcd's configuration: a libconfig file, validated whole before use.
 *
 *   workers = 2;                         # worker threads (1..64)
 *   spin_us = 0;                         # low-latency mode: poll queues this long (0..100000)
 *   adaptive_spin = true;                # poll briefly while clients come back fast
 *   log = { level = "info"; };           # error | warn | info | debug
 *   admin = "unix:/run/shmipcd/admin.sock";   # optional
 *   admin_mode = "0600";                 # optional, octal string
 *   plugin_dir = "/usr/lib/shmipcd";     # optional: base of relative plugin paths
 *   limits = { max_sessions = 1024; max_pool_bytes = 268435456;
 *              handshake_timeout_ms = 1000; max_event_bytes = 33554432;
 *              drain_timeout_ms = 5000; max_sessions_per_uid = 0;
 *              max_streams = 65536; idle_timeout_ms = 0; };   # every key optional
 *   services = (
 *     { name = "echo"; listen = "unix:/run/shmipcd/echo.sock";
 *       mode = "0660";                   # optional (unix sockets)
 *       owner = "user:group";            # optional (unix sockets)
 *       allowed_dir = "/dev/shm";        # optional (file-path mode)
 *       plugin = "echo.so"; config = { ... };     # config optional
 *       watch = false;                   # optional: reload when the .so changes
 *       allow_uids = [0, 1000]; allow_gids = [100]; }   # optional peer allowlist
 *   );
 *
 * Unknown keys, wrong types and out-of-range values are errors. Relative
 * plugin paths resolve against plugin_dir, else the config file's
 * directory. Messages read "FILE:LINE: key 'services.[0].listen': why".
 */
#ifndef SHMIPC_SERVER_CONFIG_H
#define SHMIPC_SERVER_CONFIG_H

#include <libconfig.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/log.h"

#define CONF_MAX_WORKERS 64
#define CONF_MAX_SERVICES 64
#define CONF_MAX_IDS 32
#define CONF_MAX_NAME 63 /* longest service name (struct service.name[64]) */
#define CONF_MAX_DIR 255 /* longest allowed_dir (struct service.allowed_dir[256]) */

/* Where a service's plugin runs: in shmipcd's worker threads, or in a
 * worker process of its own that the master supervises. */
enum isolation {
    ISOLATION_THREAD = 0,
    ISOLATION_PROCESS = 1,
};

/* What a failed handler (or a failed deferred answer) does to its stream. */
enum handler_error {
    HANDLER_ERROR_CLOSE_STREAM = 0, /* StreamClose: the client sees it at once */
    HANDLER_ERROR_DROP = 1,         /* nothing is sent: the client times out */
};

struct svc_conf {
    char *name;
    char *listen;           /* address as written */
    int mode;               /* socket file mode, default 0660 */
    uid_t uid;              /* socket owner ("owner" key), -1: unchanged */
    gid_t gid;
    char *allowed_dir;      /* default "/dev/shm" */
    char *plugin;           /* resolved absolute path */
    config_setting_t *plugin_conf; /* the service's "config" group or NULL */
    int watch;              /* reload when the plugin file is replaced */
    unsigned workers;       /* threads of its own; 0: the shared workers */
    int handler_error;      /* enum handler_error: what a failed handler does */
    int slow_handler_ms;    /* warn past this; -1: the global slow_handler_ms */
    int slow_handler_trace; /* 0/1; -1: the global slow_handler_trace */
    int isolation;          /* enum isolation */
    unsigned crash_limit;   /* process: crashes in a minute that fail the service */
    int handler_kill_ms;    /* process: a handler running longer kills its process; 0: off */
    uint64_t max_rss_bytes; /* process: replaced (after draining) above this; 0: off */
    unsigned allow_uids[CONF_MAX_IDS]; /* peers allowed by SO_PEERCRED; none: any */
    unsigned nallow_uids;
    unsigned allow_gids[CONF_MAX_IDS];
    unsigned nallow_gids;
    int line;               /* where the service starts, for messages */
};

struct daemon_conf {
    config_t cfg;           /* owns the settings (plugin_conf); the strings are malloc'd */
    char *path;             /* the file read, made absolute (a reload after chdir finds it) */
    unsigned workers;       /* default 2: the shared worker threads */
    int slow_handler_ms;    /* a handler running longer is logged; 0: off; default 1000 */
    int slow_handler_trace; /* with it, the worker's stack too; default 0 */
    int spin_us;            /* low-latency mode, 0..100000, default 0 (off) */
    int adaptive_spin;      /* a worker with few sessions spins while their clients
                               come back sooner than a wake-up; default 1 */
    enum log_level log_level; /* default info */
    char *admin;            /* NULL when absent */
    char *metrics_listen;   /* NULL: none; an address for GET /metrics */
    char *pid_file;         /* NULL: <admin socket's directory>/shmipcd.pid, or none
                               without a unix admin socket */
    int admin_mode;         /* default 0600 */
    unsigned max_sessions;  /* default 1024 */
    uint64_t max_pool_bytes; /* default 256 MiB */
    int handshake_timeout_ms; /* default 1000 */
    uint32_t max_event_bytes; /* default 32 MiB */
    int drain_timeout_ms;   /* default 5000 */
    unsigned max_sessions_per_uid; /* 0: no limit (default) */
    unsigned max_streams;   /* per session, default 65536 */
    int idle_timeout_ms;    /* close sessions idle this long; 0: never (default) */
    struct svc_conf *services;
    unsigned nservices;
};

/* Reads and validates `path`. On failure returns a negative code and
 * writes "FILE:LINE: key 'K': reason" (or libconfig's parse error with
 * file and line) into err: -ENOENT/-EACCES/... when the file cannot be
 * opened, -EINVAL for a parse or validation error, -ENOENT for a plugin
 * file not found, -EIO for a read error. On failure `out` is left zeroed.
 * Integer literals beyond 32 bits need libconfig's L suffix (1.5 wraps
 * them silently); such a literal anywhere in the file is refused. */
int conf_load(const char *path, struct daemon_conf *out, char *err, size_t errlen);
void conf_free(struct daemon_conf *c);

/* Accessors for plugins (the host API's conf_* functions): path relative
 * to the plugin's config group; group may be NULL (then -ENOENT). Types
 * are strict: int takes int and int64 settings, float only floats. */
int conf_plugin_int(const config_setting_t *group, const char *path, long long *out);
int conf_plugin_bool(const config_setting_t *group, const char *path, int *out);
int conf_plugin_float(const config_setting_t *group, const char *path, double *out);
int conf_plugin_string(const config_setting_t *group, const char *path, const char **out);
/* Every member of a plugin's group is one of `known` (NULL-terminated):
 * 0, or -EINVAL with err naming the file, line, key and the known keys. */
int conf_plugin_keys(const config_setting_t *group, const char *const *known, char *err,
                     size_t errlen);

/* shmipcd -t: the directory of a unix socket address exists (at start,
 * bind says so itself). 0, or a code with err filled. */
int conf_check_socket_dir(const char *address, char *err, size_t errlen);

#endif
