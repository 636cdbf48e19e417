/*
 * Process isolation (isolation = "process"): a service's plugin runs in a
 * worker process of its own, so that a crash takes down only that
 * service's sessions. The master keeps the listeners and the handshakes,
 * maps and checks the client's memory as for any service, then hands the
 * session over: the socket, pool and queue fds over a SOCK_SEQPACKET
 * socketpair with SCM_RIGHTS. The worker process (child.c: shmipcd
 * started again with a hidden --worker option) maps them itself and runs
 * the same workers and serving loop as thread mode.
 *
 * Supervision (master thread only): a worker process that dies is logged
 * (service, pid, signal and core dump, plugin, generation, sessions
 * closed) and respawned at once, then with a backoff (100 ms doubling to
 * 30 s) while it keeps dying within a second of becoming ready; crash_limit crashes within a minute mark
 * the service failed until a reload. handler_kill_ms kills a process whose
 * handler runs longer; max_rss_bytes replaces one that grew too big, after
 * its replacement is ready. Counters and what each of its workers runs
 * live in a page the master shares with the process, so they survive it.
 */
#ifndef SHMIPC_SERVER_PROC_H
#define SHMIPC_SERVER_PROC_H

#include <spawn.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "server/daemon.h"

#define PROC_CALLS CONF_MAX_WORKERS

/* The page shared by the master and one service's worker processes: its
 * counters, which both add to (atomics) and which outlive the processes,
 * so that a respawn never takes a counter back. */
struct proc_shared {
    struct svc_stats st;
    /* Worker slots in use: the most workers any of its processes had (a
     * process raises it before its workers start; the master reads it,
     * capped at PROC_CALLS). */
    uint32_t nworkers;
    uint32_t pad;
    /* Per worker index, summed over its processes (a replacement and the
     * process it replaces add to the same slots): their workers add, the
     * master reads. */
    struct worker_stats wst[PROC_CALLS];
};

/* The page of one worker process: what each of its workers runs (the
 * process writes, the master reads: slow log, handler_kill_ms), and what
 * each serves now (the process writes, the master reads: metrics; gone
 * with the process, as its sessions are). */
struct proc_calls {
    struct call_info calls[PROC_CALLS];
    struct worker_live live[PROC_CALLS];
};

_Static_assert(offsetof(struct proc_shared, wst) % 64 == 0, "worker slots on their own lines");
_Static_assert(offsetof(struct proc_calls, live) % 64 == 0, "worker gauges on their own lines");

/* A worker process about to start n workers: the slots they use. */
static inline void proc_shared_note_workers(struct proc_shared *sh, unsigned n)
{
    uint32_t seen = __atomic_load_n(&sh->nworkers, __ATOMIC_RELAXED);
    while (seen < n && !__atomic_compare_exchange_n(&sh->nworkers, &seen, (uint32_t)n, 0,
                                                    __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* Control messages, both ways; fds ride along with PM_HELLO (the shared
 * page) and PM_SESSION (socket, pool, queue). */
enum proc_msg_type {
    PM_HELLO = 1, /* master -> process: the shared page and its calls page */
    PM_READY,     /* process -> master: serving; text = "plugin version" */
    PM_FAIL,      /* process -> master: could not start; text = why */
    PM_SESSION,   /* master -> process: a session to run */
    PM_CLOSED,    /* process -> master: session id closed */
    PM_DRAIN,     /* master -> process: take no more, finish, exit by the deadline
                     (code 1: a replacement serves: its clients move over
                     after HotRestart with epoch `id`, until then) */
    PM_SAVE,      /* master -> old process: run the plugin's save hook */
    PM_SAVED,     /* old process -> master: the bytes (a memfd, `id` bytes), or
                     code < 0 and text = why */
    PM_RESTORE,   /* master -> new process: restore those (memfd, `id` bytes,
                     saved by generation `generation`) before it serves */
    PM_RESTORED,  /* new process -> master: code 0, or < 0 and text = why */
};

struct proc_msg {
    uint32_t type;
    uint32_t version;     /* PM_SESSION: the session's protocol version */
    uint64_t id;          /* PM_SESSION, PM_CLOSED: the session; PM_DRAIN: the
                             epoch; PM_SAVED, PM_RESTORE: the bytes */
    uint32_t generation;  /* PM_READY: the generation it loaded; PM_RESTORE:
                             the one that saved */
    int32_t code;         /* PM_FAIL, PM_SAVED, PM_RESTORED */
    uint32_t drain_ms;    /* PM_DRAIN */
    uint32_t queue_dir_len; /* PM_SESSION, file mode: where the allowed dir
                               ends in queue_path */
    char queue_path[256]; /* PM_SESSION, file mode: the queue file to remove
                             (the master removes the pool's: proc.c) */
    char text[512];       /* PM_READY, PM_FAIL, PM_SAVED, PM_RESTORED */
};

/* A worker process, as the master sees it. */
struct wproc {
    struct serve_tag tag; /* EPK_PROC: its control socket */
    struct service *svc;
    pid_t pid;
    int fd;               /* control socket, -1 once it is gone */
    int ready;
    int draining;
    unsigned generation;
    char plugin[160];     /* "name version", from PM_READY */
    uint64_t started_ns;
    uint64_t ready_ns;    /* when it said PM_READY, 0 before */
    struct proc_calls *calls; /* its calls page, mapped */
    struct psess {
        uint64_t id;
        long long uid;
        struct pool_ref *pool; /* the master's reference: the pool registry
                                  removes a peer's file once the last
                                  session in any process has closed */
    } *sess;              /* its open sessions, as handed over */
    unsigned nsess, capsess;
    struct wproc *next;   /* in d->procs */
};

/* posix_spawn with no signal blocked in the child (the master blocks its
 * own for its signalfd): a worker process, or an upgrade's new daemon. */
int proc_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
               char *const argv[], char *const envp[]);

/* One control message each way; fds ride with it (SCM_RIGHTS, at most 3).
 * proc_recv_msg: 0, SHMIPC_ECLOSED at the end, -EAGAIN (non-blocking), or
 * a code (every fd received closed). */
int proc_send_msg(int fd, const struct proc_msg *m, const int *fds, int nfds);
int proc_recv_msg(int fd, struct proc_msg *m, int *fds, int max, int *nfds);

/* Process mode of a service: its shared page (made once; counters go on
 * across its processes) and its first worker process, waited for until
 * it is ready. 0, or a code with err filled. */
int proc_service_start(struct daemon *d, struct service *svc, char *err, size_t errlen);
/* A reload made a new generation: a new process runs it, waited for
 * until ready; the plugin's state goes from the old process to it when
 * from (the serving generation) and to (the new one; the master's checked
 * copies) have save and restore (gen_carry_across; to->carry says what
 * happened); then the old one drains. from and to are NULL for a restart
 * of the same generation. 0, or a code with err filled (the old process
 * serves on). */
int proc_service_replace(struct daemon *d, struct service *svc, unsigned gen,
                         const struct plugin_gen *from, struct plugin_gen *to, char *err,
                         size_t errlen);
/* The service's process (if serving) takes the session; the master's copy
 * goes. 0, or a code (the session is closed). */
int proc_hand_over(struct daemon *d, struct service *svc, long long uid, struct session *s,
                   uint64_t id);
/* An upgrade (upgrade.h): every worker process tells its sessions
 * HotRestart(epoch), then exits once they moved or at drain_ms. */
void proc_hot_restart(struct daemon *d, uint64_t epoch, unsigned drain_ms);
/* Why the service cannot take a session now, or NULL. */
const char *proc_refusal(struct service *svc);
/* Its control socket is readable. */
void proc_on_event(struct daemon *d, struct wproc *w);
/* SIGCHLD: reaps and supervises. */
void proc_on_sigchld(struct daemon *d);
/* Respawns, handler_kill_ms, max_rss_bytes: ms until it wants to run
 * again, -1 when nothing is pending. */
int proc_tick(struct daemon *d);
/* Sessions the master counts in worker processes. */
unsigned proc_sessions(struct daemon *d);
/* The service goes (removed by a reload, or the daemon stops): its
 * processes drain until the deadline. */
void proc_service_stop(struct daemon *d, struct service *svc, uint64_t deadline_ns);
/* Stop: waits until every worker process exited or the deadline passed
 * (then kills what is left). */
void proc_wait_all(struct daemon *d, uint64_t deadline_ns);
/* `shmipcctl status` lines of a service's processes. */
void proc_status(struct daemon *d, struct service *svc, struct strbuf *b);
/* Where the private plugin directories go: $TMPDIR when it names a
 * directory (absolute), else /tmp. */
const char *proc_tmp_base(void);
/* At start: removes private plugin directories of shmipcd processes that
 * are gone (<tmp>/shmipcd-<pid>-*, only when <pid> is not a running
 * shmipcd). */
void proc_remove_stale_dirs(void);

#endif
