/*
 * systemd notifications (see notify.h).
 */
#include "server/notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/log.h"

int sd_notify_text(const char *fmt, ...)
{
    const char *where = getenv("NOTIFY_SOCKET");
    if (where == NULL || where[0] == '\0')
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(where);
    if ((where[0] != '/' && where[0] != '@') || n >= sizeof(sa.sun_path)) {
        log_debug("NOTIFY_SOCKET %s: not a unix socket path", where);
        return -EINVAL;
    }
    memcpy(sa.sun_path, where, n);
    if (where[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract */
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof(text))
        return -EINVAL;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    ssize_t sent = sendto(fd, text, (size_t)len, MSG_NOSIGNAL, (const struct sockaddr *)&sa,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    int rc = sent == len ? 0 : -errno;
    close(fd);
    if (rc < 0)
        log_debug("notifying %s: %s", where, strerror(-rc));
    return rc;
}
