/*
 * A server's listening socket: opened on an address, and closed again
 * without removing a socket file that a successor bound meanwhile (the
 * file is unlinked only while it is still the one we created).
 */
#ifndef SHMIPC_SESSION_LISTENER_H
#define SHMIPC_SESSION_LISTENER_H

#include <sys/types.h>

#include "proto/sock.h"
#include "session/serve_tag.h"

struct serve_listener {
    struct serve_tag tag; /* SERVE_LISTENER: the epoll data of fd */
    int fd;               /* -1 when closed */
    struct sock_addr addr;
    ino_t ino; /* of the unix socket file we bound, 0 otherwise */
    void *ctx; /* the owner's (a service) */
};

/* Parses address and listens (mode as sock_listen()). 0, or a negative
 * code (l->fd stays -1). */
int serve_listen(struct serve_listener *l, const char *address, int mode, int backlog);
/* The inode of a unix address's socket file, 0 when none. */
ino_t serve_sock_inode(const struct sock_addr *a);
/* Removes a unix socket file if it is still the one with inode ino. */
void serve_unlink_own(const struct sock_addr *a, ino_t ino);
/* Takes over fd, a listening socket of address's family (inherited from
 * a server this one replaces). The socket file at address (unix) is not
 * ours to remove until serve_listener_claim(): a successor that fails to
 * start must leave it to the server that still serves. 0, or a negative
 * code (fd not taken). */
int serve_listen_fd(struct serve_listener *l, const char *address, int fd);
/* The predecessor let go: the socket file at l's address, if it is a
 * socket, is ours to remove at close. */
void serve_listener_claim(struct serve_listener *l);
/* Closes the fd and removes our socket file. Idempotent. */
void serve_listener_close(struct serve_listener *l);

#endif
