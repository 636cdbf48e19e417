/*
 * Listening sockets of servers (see listener.h).
 */
#include "session/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
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

/* A closed listener of address; 0 or the parse error. */
static int listener_init(struct serve_listener *l, const char *address)
{
    l->tag.kind = SERVE_LISTENER;
    l->fd = -1;
    l->ino = 0;
    return sock_addr_parse(address, &l->addr);
}

int serve_listen(struct serve_listener *l, const char *address, int mode, int backlog)
{
    int rc = listener_init(l, address);
    if (rc < 0)
        return rc;
    if ((rc = sock_listen(&l->addr, mode, backlog)) < 0)
        return rc;
    l->fd = rc;
    l->ino = serve_sock_inode(&l->addr);
    return 0;
}

int serve_listen_fd(struct serve_listener *l, const char *address, int fd)
{
    int rc = listener_init(l, address);
    if (rc < 0)
        return rc;
    int listening = 0, type = 0;
    socklen_t n = sizeof(listening), tn = sizeof(type);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tn) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return -errno;
    if (!listening || type != SOCK_STREAM || ss.ss_family != l->addr.family)
        return -ENOTSOCK;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -errno;
    l->fd = fd;
    return 0;
}

void serve_listener_claim(struct serve_listener *l)
{
    if (l->fd >= 0 && l->ino == 0)
        l->ino = serve_sock_inode(&l->addr);
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
