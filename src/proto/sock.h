/*
 * Sockets for sessions: addresses ("unix:/path", "tcp:host:port", or a bare
 * absolute path), listening and connecting, exact reads and whole writes
 * with a deadline, and the memfd handshake's fd message.
 *
 * Every fd this module creates is close-on-exec and non-blocking; the
 * deadline helpers wait with poll(), so they work on either kind.
 */
#ifndef SHMIPC_PROTO_SOCK_H
#define SHMIPC_PROTO_SOCK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct sock_addr {
    int family; /* AF_UNIX or AF_INET */
    struct sockaddr_storage ss;
    socklen_t len;
    char text[128]; /* for logs */
};

/* Parses an address. -EINVAL for anything malformed or too long. */
int sock_addr_parse(const char *text, struct sock_addr *out);

/* Listens on `a` (`mode` >= 0 chmods a unix socket). A unix path that a
 * live process serves is -EADDRINUSE (sock_unix_owner names it); a stale
 * socket there is replaced; any other file is left (bind fails).
 * Returns the fd or a negative code. */
int sock_listen(const struct sock_addr *a, int mode, int backlog);
/* 1 when a process accepts connections on unix address a (*pid: its
 * pid, from SO_PEERCRED, 0 if unknown), 0 when nobody does (or not a
 * unix socket file), or a negative code. */
int sock_unix_owner(const struct sock_addr *a, pid_t *pid);

/* Connects with a deadline (CLOCK_MONOTONIC ns). Returns the fd. */
int sock_connect(const struct sock_addr *a, uint64_t deadline_ns);

/* Accepts one connection (non-blocking, close-on-exec): fd, -EAGAIN, or a
 * negative code. */
int sock_accept(int lfd);

/* Reads exactly n bytes or fails: SHMIPC_ETIMEDOUT at the deadline,
 * SHMIPC_ECLOSED on EOF, a negated errno otherwise. */
int sock_read_exact(int fd, void *buf, size_t n, uint64_t deadline_ns);
/* Writes all n bytes before the deadline. */
int sock_write_all(int fd, const void *buf, size_t n, uint64_t deadline_ns);

/* The fd message: one 0x00 byte with SCM_RIGHTS carrying nfds fds. */
int sock_send_fds(int fd, const int *fds, int nfds, uint64_t deadline_ns);

/* Receives exactly one data byte and its fds (close-on-exec). *nfds gets
 * how many arrived (up to max); fds beyond `max` or a truncated control
 * message make the call fail with SHMIPC_EPROTO after closing every fd
 * received. -EAGAIN if nothing is there yet (non-blocking socket). */
int sock_recv_fds(int fd, uint8_t *byte, int *fds, int max, int *nfds);

uint64_t sock_now_ns(void);
/* now + ms, saturating; ms < 0 means no deadline. */
uint64_t sock_deadline(int ms);

/* For a server that holds many sessions (a socket, a pool and a queue fd
 * each in memfd mode: 1,000 sessions need about 3,000 fds, past the usual
 * soft limit of 1024): raises RLIMIT_NOFILE's soft limit to its hard
 * limit. *before and *after get the soft limit around the call (equal when
 * it was already there). 0 or a negated errno; the caller logs it. */
int sock_raise_nofile(unsigned long long *before, unsigned long long *after);
/* The listen backlog for a server of up to max_sessions sessions: that
 * many (all of them may reconnect at once, e.g. after a restart), at
 * least 128, at most what the kernel allows (net.core.somaxconn; it caps
 * larger values itself, so reading it is only for the log). */
int sock_backlog_for(unsigned max_sessions);

#endif
