/*
 * Upgrading shmipcd in place (`shmipcctl upgrade [--binary PATH]`,
 * SIGUSR2), as nginx does, with the shmipc protocol's hot restart.
 *
 * The running daemon (the old one) starts the new binary with its
 * listening sockets (inherited fds, named with their addresses in
 * SHMIPCD_LISTEN_FDS) and one end of a socketpair (SHMIPCD_UPGRADE_FD).
 * The new one loads its configuration and plugins and takes the inherited
 * sockets instead of binding; if anything fails it says FAIL and exits,
 * and the old one serves on (the command prints why and exits 1). Once
 * it says READY, the old one stops accepting, lets go of the pid file and
 * names the new pid to systemd (MAINPID), says GO, and tells every
 * session HotRestart: clients open new sessions (served by the new
 * daemon), finish their streams here and ack; each acked session closes
 * once nothing is in flight. When none is left, or at drain_timeout_ms
 * (what is left is closed then), the old daemon exits 0. The new one
 * takes the pid file after GO and tells systemd READY=1.
 *
 * Threads: the master thread only.
 */
#ifndef SHMIPC_SERVER_UPGRADE_H
#define SHMIPC_SERVER_UPGRADE_H

#include <stdint.h>
#include <sys/types.h>

#include "session/serve_tag.h"

struct daemon;

struct upgrade {
    /* the old side */
    pid_t pid;             /* the successor starting, 0 when none */
    int fd;                /* its end of the socketpair, -1 */
    struct serve_tag tag;  /* EPK_UPGRADE */
    int admin_fd;          /* the shmipcctl waiting for the outcome, -1 */
    uint64_t ready_by_ns;  /* the successor's deadline to say READY */
    int handing_over;      /* the successor serves: we hand over and exit */
    uint64_t drain_by_ns;
    pid_t successor;       /* who took over */
    char binary[4096];
    /* the new side */
    int parent_fd;         /* to the old daemon while starting, else -1 */
    uint64_t epoch;        /* upgrades behind this process (0: started anew) */
    uint64_t since_s;      /* when it took over (wall clock), 0 */
    unsigned ninherit;
    struct inherited {
        int fd;
        char addr[128];    /* canonical text (struct sock_addr.text) */
    } inherit[40];
};

/* At start: what the old daemon passed (environment), if anything. */
void upgrade_init(struct daemon *d);
/* 1 while this process is an upgrade's successor that has not taken over
 * yet (it must not lock the pid file before GO). */
int upgrade_starting(struct daemon *d);
/* The inherited listening socket for address text (taken: the caller
 * owns it now), or -1. */
int upgrade_take_listener(struct daemon *d, const char *address);
/* End of a successful start: inherited fds nobody took are closed, READY
 * goes to the old daemon and GO is awaited (bounded). */
void upgrade_started(struct daemon *d);
/* A start that failed: FAIL and why to the old daemon. */
void upgrade_failed(struct daemon *d, const char *why);

/* Old side: starts binary (NULL: the one this daemon was started from)
 * for `shmipcctl upgrade` (admin_fd gets the outcome, and is closed) or
 * SIGUSR2 (admin_fd -1). */
void upgrade_begin(struct daemon *d, const char *binary, int admin_fd);
/* Its socket is readable; sessions: how many this daemon serves (for the
 * hand-over's report). */
void upgrade_on_event(struct daemon *d, unsigned sessions);
/* SIGCHLD: reaps the successor if it exited (a refused upgrade). */
void upgrade_reap(struct daemon *d);
/* Each turn of the master loop, with the sessions (and handshakes) this
 * daemon still has: deadlines, and the end of a hand-over (d->stopping
 * set). ms until it wants to run again, -1 when idle. */
int upgrade_tick(struct daemon *d, unsigned sessions);
/* 1 while this daemon hands its sessions over (then upgrade_tick wants
 * their count). */
int upgrade_handing_over(const struct daemon *d);

#endif
