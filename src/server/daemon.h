/*
 * shmipcd: the master thread owns listeners, handshakes, the pool registry,
 * signals and the admin socket; worker threads own sessions (one epoll set
 * each, exactly one consumer per receive queue) and call the plugins.
 *
 * Listeners, handshakes and the serving loop are the library's server
 * core (session/listener.h, session/accept.h, session/loop.h), the same
 * the library's own server runs on; what is here is what a daemon adds:
 * configuration, plugins and their generations, limits, admin, workers.
 *
 * Hand-over: the master's handshakes (serve_accept) end in a session that
 * goes to the least-loaded worker's inbox (under that worker's mutex), and
 * the worker's eventfd is poked. From then on only that worker drives the
 * session, in its serve_loop; the loop's mutex guards the session list so
 * the master can read counters for the admin socket.
 *
 * Lock order: a worker's mutex or its loop's mutex (never both), then a
 * session's mutex.
 */
#ifndef SHMIPC_SERVER_DAEMON_H
#define SHMIPC_SERVER_DAEMON_H

#include <pthread.h>
#include <stdint.h>

#include "proto/handshake.h"
#include "proto/sock.h"
#include "server/config.h"
#include "server/loader.h"
#include "server/uids.h"
#include "server/upgrade.h"
#include "server/watch.h"
#include "session/accept.h"
#include "session/listener.h"
#include "session/loop.h"
#include "session/session.h"

/* The daemon's own epoll entries, after the server core's (serve_tag.h). */
enum ep_kind {
    EPK_SIGNAL = SERVE_OWNER,
    EPK_ADMIN,
    EPK_WAKE,
    EPK_WATCH,
    EPK_PROC,
    EPK_METRICS,
    EPK_UPGRADE,
};

struct proc_shared;
struct wproc;
struct strbuf;

struct svc_stats {
    uint64_t requests, bytes_in, bytes_out, handler_errors;
    uint64_t sessions_opened, sessions_closed, handshakes_failed;
    uint64_t refused;      /* connections refused by a limit or the allowlist */
    uint64_t idle_closed;  /* sessions closed by the idle timeout */
    uint64_t protocol_errors; /* sessions closed for the peer's bad input */
    uint64_t client_gone;  /* answers that found their client (or session) gone */
    uint64_t deferred;     /* answers deferred by the plugin */
    uint64_t slow_handlers; /* handler calls logged as slow */
    uint64_t refused_by[4]; /* enum refusal */
    /* Handler call times (handle() returning; a deferred answer's wait
     * is not in it): counts per bucket of LAT_BOUNDS_US, sum, count. */
    uint64_t lat_buckets[16];
    uint64_t lat_sum_ns, lat_count;
    /* Of sessions already closed (live ones are summed at a scrape). */
    uint64_t wakeups_sent, wakeups_received, fallbacks_sent, fallbacks_received;
    uint64_t streams_opened;
};

/* One worker's figures for one service (metrics): counters that only
 * grow, and the latency histogram with the same buckets as svc_stats.
 * Written by that worker with relaxed atomic adds once per dispatch pass
 * (a deferred answer completed on another thread adds its response bytes
 * and errors too); read by the master. Three whole cache lines, so that
 * two workers never write the same line: allocations of it are 64-aligned. */
struct worker_stats {
    uint64_t requests, bytes_in, bytes_out, handler_errors;
    uint64_t lat_buckets[16]; /* as svc_stats.lat_buckets */
    uint64_t lat_sum_ns;
    uint64_t pad[3];
} __attribute__((aligned(64)));

/* What one worker serves of one service now (metrics gauges): written by
 * that worker only (relaxed atomics), read by the master. */
struct worker_live {
    uint64_t sessions; /* adopted and not yet closed */
    uint64_t streams;  /* seen open by the worker and not yet closed */
    uint64_t pad[6];
} __attribute__((aligned(64)));

_Static_assert(sizeof(struct worker_stats) == 192, "worker_stats: three cache lines");
_Static_assert(sizeof(struct worker_live) == 64, "worker_live: one cache line");

/* Why a connection was refused (metrics). */
enum refusal { REFUSED_MAX_SESSIONS, REFUSED_ALLOWLIST, REFUSED_UID_LIMIT, REFUSED_UNAVAILABLE };

/* Upper bounds of the handler latency buckets, in microseconds; the last
 * bucket is everything above. */
#define LAT_BOUNDS_US                                                                              \
    {10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 250000, 1000000, 2500000,   \
     10000000}
#define LAT_NBOUNDS 15
_Static_assert(LAT_NBOUNDS + 1 == sizeof(((struct svc_stats *)0)->lat_buckets) / sizeof(uint64_t),
               "a latency bucket per bound, and one above");

/* A loaded configuration, shared by the generations created from it (a
 * plugin may keep pointers into its config group for its whole life). */
struct conf_ref {
    struct daemon_conf c;
    int refs;
};

/* What a generation was made from: a change means a new generation. */
struct gen_source {
    char path[4096];
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns;
    char *conf_sig; /* the plugin's config group, serialized */
};

/* Worker threads serving the same services: the shared pool, or the
 * threads of a service with `workers` of its own. A generation keeps one
 * thread state per worker of its service's pool (by w->index). */
struct worker_pool {
    struct worker *w; /* calloc'd, n of them */
    unsigned n;
    const char *name; /* "shared" or the service's name, for logs */
};

struct service {
    struct serve_listener l; /* l.ctx is the service */
    struct serve_settings set; /* what its sessions get */
    unsigned index;
    char name[64];
    char listen[256];
    int mode;
    uid_t uid; /* socket owner, -1: unchanged */
    gid_t gid;
    char allowed_dir[256];
    char plugin_path[4096];
    struct plugin_gen *gen;  /* current generation; swapped atomically */
    struct gen_source src;   /* what gen was made from */
    unsigned next_gen;
    int removed;             /* no longer configured: draining */
    int watch;               /* reload when the plugin file changes */
    unsigned allow_uids[CONF_MAX_IDS], nallow_uids; /* SO_PEERCRED allowlist */
    unsigned allow_gids[CONF_MAX_IDS], nallow_gids;
    struct service *next_removed;
    struct svc_stats *st;    /* atomic adds: st_own, or the page shared with its
                                worker process (process mode) */
    struct svc_stats st_own;
    /* Per worker of its pool (metrics), nwst of each: thread mode, an
     * allocation of its own (wmem, freed with it); in a worker process,
     * its counters are in the shared page and its gauges in the calls
     * page; NULL in the master for a process-mode service (it reads the
     * pages). */
    struct worker_stats *wst;
    struct worker_live *wlive;
    unsigned nwst;
    void *wmem;
    struct worker_pool own;  /* threads of its own (own.n 0: the shared pool) */
    /* Process mode (proc.c), master side. */
    int isolation;           /* enum isolation */
    struct proc_shared *shared; /* the page shared with its processes */
    int shared_fd;
    struct wproc *proc;      /* the process taking its sessions, NULL when none */
    struct wproc *next_proc; /* a replacement starting (max_rss_bytes) */
    unsigned restarts;
    uint64_t crash_ns[64];   /* crash times, a ring */
    unsigned ncrash;
    uint64_t respawn_at_ns;  /* 0: none pending */
    unsigned backoff_ms;
    char failed[160];        /* "" or why it takes no sessions until a reload */
    char last_exit[160];
    unsigned crash_limit;
    int handler_kill_ms;
    uint64_t max_rss_bytes;
    uint64_t rss_check_ns;
    int handler_error;       /* enum handler_error */
    int slow_ms;             /* slow-handler log threshold, 0: off */
    int slow_trace;          /* with the worker's stack */
    struct daemon *d;
};

struct dsession {
    struct serve_conn conn; /* in its worker's loop */
    struct service *svc;
    uint64_t id;
    struct worker *w;
    long long uid;             /* peer's uid (SO_PEERCRED), -1 when unknown (or
                                  counted by the master: a worker process) */
    long long pid;             /* peer's pid (SO_PEERCRED), -1 when unknown */
    uint64_t started_ns;
    uint64_t requests, handler_errors; /* written by the worker only */
    unsigned open_streams;     /* counted in its worker's worker_live (worker only) */
    struct dsession *next_in; /* in the worker's inbox */
};

enum wcmd_kind { WCMD_THREAD_INIT, WCMD_THREAD_FINI, WCMD_CLOSE_SERVICE };

/* A job the master runs on a worker's own thread and waits for. */
struct wcmd {
    enum wcmd_kind kind;
    struct plugin_gen *g;
    struct service *svc;
    int rc;
    int done;
    char err[256];
    struct wcmd *next;
};

/* One dispatch pass: the plugin generation is taken once for all the
 * requests it answers, and the shared counters (the service's and the
 * worker's, handler times included) are added once at its end. */
struct pass {
    struct plugin_gen *g;
    uint64_t requests, bytes_in, bytes_out, errors, gone, deferred;
    uint64_t lat_buckets[LAT_NBOUNDS + 1], lat_sum_ns;
};

/* How a deferred answer finds its worker again: shared by the worker and
 * its deferred answers, so that one completed after the worker exited
 * (an abandoned answer, at stop) touches nothing freed. */
struct resume_target {
    pthread_mutex_t mu;
    int refs;           /* under mu */
    struct worker *w;   /* NULL once the worker exited */
};

/* A session to dispatch again: a deferred answer resumed one of its
 * streams (holds a session reference). */
struct resume {
    struct session *s;
    struct resume *next;
};

/* What a worker is running, for the slow-handler log and the stop (any
 * thread reads it; seq changes with every call). */
struct call_info {
    uint64_t seq;       /* odd while a handler runs */
    uint64_t start_ns;
    struct service *svc;
    struct plugin_gen *g;
    uint64_t session_id;
    uint32_t stream_id;
    uint64_t reported;  /* seq of the call last logged as slow */
};

struct worker {
    struct serve_tag wake_tag;
    unsigned index;            /* in its pool */
    struct worker_pool *pool;
    pthread_t th;
    int epfd, evfd;
    struct serve_loop loop;    /* its sessions (loop.mu for other threads) */
    int loop_ready;
    struct pass pass;          /* the dispatch pass in progress */
    struct call_info *call;    /* the handler call in progress: call_own, or a slot
                                  of the page a worker process shares */
    struct call_info call_own;
    struct resume_target *rt;  /* for deferred answers */
    int deferred_open;         /* atomic: deferred answers not yet completed */
    int joined, stuck;         /* stop: its thread was joined / was left running */
    struct resume *resumes;    /* sessions with a stream resumed (under mu) */
    /* Called from any thread by a completed deferred answer (rt->mu held). */
    void (*resume)(struct worker *w, struct session *s);
    pthread_mutex_t mu;        /* inbox, nsessions, cmds */
    struct dsession *inbox;
    unsigned nsessions;        /* including the inbox */
    struct wcmd *cmds;         /* pending jobs from the master */
    pthread_cond_t cmd_done;
    uint64_t hot_epoch;        /* atomic: non-zero: tell every session HotRestart
                                  with it, close each once acked and quiet */
    int stop;                  /* atomic: 1 drain then exit */
    uint64_t drain_deadline_ns;
    struct daemon *d;
};

struct retiring {
    struct plugin_gen *g;
    struct service *svc;
    struct retiring *next;
};

struct daemon {
    struct conf_ref *cref;     /* the current configuration */
    struct daemon_conf *conf;  /* == &cref->c */
    struct service *svcs[CONF_MAX_SERVICES];
    unsigned nsvcs;
    struct service *removed;   /* services draining after a reload */
    struct retiring *retiring; /* generations waiting for their last request */
    uint64_t gens_retired;
    uint64_t reloads, reloads_failed;
    int reload_requested;
    struct worker_pool pool;   /* the shared workers */
    struct pool_registry reg;
    int epfd, sigfd;
    struct serve_tag sig_tag;
    struct serve_listener admin; /* tag EPK_ADMIN; fd -1 when none */
    struct serve_listener metrics; /* tag EPK_METRICS; fd -1 when none */
    struct serve_accept acc;     /* handshakes in progress */
    char tmpdir[256];          /* private plugin copies */
    struct shmipc_host_api host;
    uint64_t started_ns;
    struct uid_counts uids;    /* sessions per peer uid */
    /* In a worker process: where its workers publish their calls (the
     * page it shares with the master), else NULL. */
    struct call_info *calls;
    unsigned ncalls;
    int worker_process;        /* this is a process-mode service's worker process */
    /* In a worker process: tells the master a session closed. */
    void (*session_closed)(struct daemon *d, struct dsession *ds);
    int spin_us;               /* low-latency mode of the workers (config) */
    int idle_timeout_ms;       /* copies workers read: d->conf changes on reload */
    char conf_path[4096];
    struct watch watch;
    struct serve_tag watch_tag;
    int stopping;
    struct wproc *procs;       /* every worker process alive (proc.c) */
    int pid_fd;                /* the pid file, locked; -1 when none */
    char pid_path[4096];
    ino_t pid_ino;
    char exe[4096];            /* this binary, for worker processes */
    char exe_path[4096];       /* the file it was started from: an upgrade's default */
    struct upgrade up;         /* upgrade.h */
};

/* Worker i's figures for svc, or NULL when it keeps none for that index. */
static inline struct worker_stats *svc_worker_stats(struct service *svc, unsigned i)
{
    return svc->wst != NULL && i < svc->nwst ? &svc->wst[i] : NULL;
}

static inline struct worker_live *svc_worker_live(struct service *svc, unsigned i)
{
    return svc->wlive != NULL && i < svc->nwst ? &svc->wlive[i] : NULL;
}

#endif
