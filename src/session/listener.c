/*
 * Listening sockets of servers (see listener.h).
 */
#include "session/listener.h"

#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

ino_t serve_sock_inode(const struct sock_addr *a)
{
    struct stat st;
    if (a->family != AF_UNIX || stat(((const struct sockaddr_un *)&a->ss)->sun_path, &st) < 0)
        return 0;
    return st.st_ino;
}

void serve_unlink_own(const struct sock_addr *a, ino_t ino)
{
    if (a->family != AF_UNIX || ino == 0)
        return;
    const char *path = ((const struct sockaddr_un *)&a->ss)->sun_path;
    struct stat st;
    if (stat(path, &st) == 0 && st.st_ino == ino)
        unlink(path);
}

int serve_listen(struct serve_listener *l, const char *address, int mode, int backlog)
{
    l->tag.kind = SERVE_LISTENER;
    l->fd = -1;
    l->ino = 0;
    int rc = sock_addr_parse(address, &l->addr);
    if (rc < 0)
        return rc;
    if ((rc = sock_listen(&l->addr, mode, backlog)) < 0)
        return rc;
    l->fd = rc;
    l->ino = serve_sock_inode(&l->addr);
    return 0;
}

void serve_listener_close(struct serve_listener *l)
{
    if (l->fd < 0)
        return;
    close(l->fd);
    l->fd = -1;
    serve_unlink_own(&l->addr, l->ino);
    l->ino = 0;
}
