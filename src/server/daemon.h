/*
 * shmipcd: the master thread owns listeners, handshakes, the pool registry,
 * signals and the admin socket; worker threads own sessions (one epoll set
 * each, exactly one consumer per receive queue) and call the plugins.
 *
 * Hand-over: the master finishes a handshake, builds the session and puts
 * it in the least-loaded worker's inbox (under that worker's mutex), then
 * pokes the worker's eventfd. From then on only that worker drives the
 * session. A worker's mutex also guards its session list so the master can
 * read counters for the admin socket.
 *
 * Lock order: worker mutex, then a session's mutex.
 */
#ifndef SHMIPC_SERVER_DAEMON_H
#define SHMIPC_SERVER_DAEMON_H

#include <pthread.h>
#include <stdint.h>

#include "proto/handshake.h"
#include "proto/sock.h"
#include "server/config.h"
#include "server/loader.h"
#include "server/watch.h"
#include "session/session.h"

enum ep_kind { EPK_LISTEN, EPK_SIGNAL, EPK_ADMIN, EPK_HANDSHAKE, EPK_SESSION, EPK_WAKE, EPK_WATCH };

struct ep_tag {
    enum ep_kind kind;
};

struct svc_stats {
    uint64_t requests, bytes_in, bytes_out, handler_errors;
    uint64_t sessions_opened, sessions_closed, handshakes_failed;
    uint64_t refused;      /* connections refused by a limit or the allowlist */
    uint64_t idle_closed;  /* sessions closed by the idle timeout */
    uint64_t protocol_errors; /* sessions closed for the peer's bad input */
};

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

struct service {
    struct ep_tag tag;
    unsigned index;
    char name[64];
    char listen[256];
    int mode;
    uid_t uid; /* socket owner, -1: unchanged */
    gid_t gid;
    char allowed_dir[256];
    char plugin_path[4096];
    struct sock_addr addr;
    int lfd;
    ino_t sock_ino;
    struct plugin_gen *gen;  /* current generation; swapped atomically */
    struct gen_source src;   /* what gen was made from */
    unsigned next_gen;
    int removed;             /* no longer configured: draining */
    int watch;               /* reload when the plugin file changes */
    unsigned allow_uids[CONF_MAX_IDS], nallow_uids; /* SO_PEERCRED allowlist */
    unsigned allow_gids[CONF_MAX_IDS], nallow_gids;
    struct service *next_removed;
    struct svc_stats st;     /* atomic adds */
    struct daemon *d;
};

struct dsession {
    struct ep_tag tag;
    struct session *s;
    struct service *svc;
    uint64_t id;
    struct worker *w;
    long long uid;             /* peer's uid (SO_PEERCRED), -1 when unknown */
    uint64_t requests, handler_errors; /* written by the worker only */
    struct dsession *next;
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

struct worker {
    struct ep_tag wake_tag;
    unsigned index;
    pthread_t th;
    int epfd, evfd;
    pthread_mutex_t mu;        /* sessions, inbox, nsessions */
    struct dsession *sessions;
    struct dsession *inbox;
    unsigned nsessions;        /* including the inbox */
    struct wcmd *cmds;         /* pending jobs from the master */
    pthread_cond_t cmd_done;
    int stop;                  /* atomic: 1 drain then exit */
    uint64_t drain_deadline_ns;
    struct daemon *d;
};

struct hs_pending {
    struct ep_tag tag;
    struct hs_server hs;
    struct service *svc;
    long long uid;
    struct pool_ref *pool;
    struct region qregion;
    struct hs_pending *next;
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
    struct worker *workers;
    unsigned nworkers;
    struct pool_registry reg;
    int epfd, sigfd, adminfd;
    struct ep_tag sig_tag, admin_tag;
    struct sock_addr admin_addr;
    ino_t admin_ino;
    struct hs_pending *hs;
    unsigned nhs;
    uint64_t next_session_id;
    char tmpdir[256];          /* private plugin copies */
    struct shmipc_host_api host;
    uint64_t started_ns;
    pthread_mutex_t uid_mu;    /* sessions per peer uid */
    struct uid_count {
        long long uid;
        unsigned n;
    } *uids;
    unsigned nuids, capuids;
    int spin_us;               /* low-latency mode of the workers (config) */
    int idle_timeout_ms;       /* copies workers read: d->conf changes on reload */
    char conf_path[4096];
    struct watch watch;
    struct ep_tag watch_tag;
    int stopping;
};

/* The host API table handed to plugins. */
void host_api_init(struct shmipc_host_api *h);

/* main.c's phases */
int daemon_start(struct daemon *d, const char *conf_path, char *err, size_t errlen);
int daemon_run(struct daemon *d);
void daemon_stop_and_free(struct daemon *d);

/* worker.c */
int worker_start(struct worker *w, struct daemon *d, unsigned index);
void worker_hand_over(struct worker *w, struct dsession *ds);
void worker_stop(struct worker *w, uint64_t drain_deadline_ns);
void worker_join(struct worker *w);

/* worker.c: runs a job on every worker's thread and waits for all. Returns
 * the first failure (err filled) or 0. */
int workers_exec(struct daemon *d, enum wcmd_kind kind, struct plugin_gen *g, struct service *svc,
                 char *err, size_t errlen);

/* master.c: counts of sessions per peer uid (max_sessions_per_uid). */
void uid_release(struct daemon *d, long long uid);

/* master.c: drops the handshakes in progress for a service going away. */
void master_drop_handshakes(struct daemon *d, struct service *svc);

/* reload.c */
void conf_ref_get(struct conf_ref *r);
void conf_ref_put(struct conf_ref *r);
/* Loads a service's plugin as a new generation and runs thread_init on
 * every worker; on success svc->gen is NOT yet changed: *out is ready. */
int service_new_gen(struct daemon *d, struct service *svc, const struct svc_conf *sc,
                    struct conf_ref *cref, struct plugin_gen **out, char *err, size_t errlen);
int gen_source_read(struct gen_source *src, const char *path, const config_setting_t *conf);
void gen_source_free(struct gen_source *src);
/* Re-reads the configuration and applies it; the report (malloc'd) says
 * what changed and why anything failed. Returns 0 if everything applied. */
int daemon_reload(struct daemon *d, char **report);
/* Finishes retired generations whose last request completed; returns how
 * many are still draining. */
unsigned daemon_retire(struct daemon *d);
struct service *service_create(struct daemon *d, const struct svc_conf *sc, char *err,
                               size_t errlen);
int service_listen(struct daemon *d, struct service *svc, char *err, size_t errlen);
void service_free(struct daemon *d, struct service *svc);

/* admin.c: runs one admin command, writes the reply into a malloc'd
 * buffer. Sets *stop when the command asks the daemon to stop. */
char *admin_command(struct daemon *d, const char *line, int *stop);

#endif
