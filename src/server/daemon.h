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
#include "session/session.h"

enum ep_kind { EPK_LISTEN, EPK_SIGNAL, EPK_ADMIN, EPK_HANDSHAKE, EPK_SESSION, EPK_WAKE };

struct ep_tag {
    enum ep_kind kind;
};

struct svc_stats {
    uint64_t requests, bytes_in, bytes_out, handler_errors;
    uint64_t sessions_opened, sessions_closed, handshakes_failed;
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
    unsigned next_gen;
    struct svc_stats st;     /* atomic adds */
    struct daemon *d;
};

struct dsession {
    struct ep_tag tag;
    struct session *s;
    struct service *svc;
    uint64_t id;
    struct worker *w;
    uint64_t requests, handler_errors; /* written by the worker only */
    struct dsession *next;
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
    int stop;                  /* atomic: 1 drain then exit */
    uint64_t drain_deadline_ns;
    struct daemon *d;
};

struct hs_pending {
    struct ep_tag tag;
    struct hs_server hs;
    struct service *svc;
    struct pool_ref *pool;
    struct region qregion;
    struct hs_pending *next;
};

struct daemon {
    struct daemon_conf conf;
    struct service *svcs;
    unsigned nsvcs;
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

/* admin.c: runs one admin command, writes the reply into a malloc'd
 * buffer. Sets *stop when the command asks the daemon to stop. */
char *admin_command(struct daemon *d, const char *line, int *stop);

#endif
