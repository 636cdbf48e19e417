/*
 * Plugin file watch (see watch.h). The one rule: an event only schedules a
 * reload; the reload itself is the same one SIGHUP and shmipcctl run, so a
 * broken file that appears is refused like any other.
 */
#include "server/watch.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "base/log.h"
#include "server/daemon.h"

void watch_init(struct watch *w)
{
    memset(w, 0, sizeof(*w));
    w->fd = -1;
}

static void clear(struct watch *w)
{
    for (unsigned i = 0; i < w->n; i++)
        inotify_rm_watch(w->fd, w->wd[i]);
    w->n = 0;
}

int watch_refresh(struct daemon *d)
{
    struct watch *w = &d->watch;
    int wanted = 0;
    for (unsigned i = 0; i < d->nsvcs; i++)
        wanted |= d->svcs[i]->watch;
    if (!wanted && w->fd < 0)
        return 0;
    if (w->fd < 0) {
        w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (w->fd < 0)
            return -errno;
        d->watch_tag.kind = EPK_WATCH;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &d->watch_tag};
        if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, w->fd, &ev) < 0)
            return -errno;
    }
    clear(w);
    for (unsigned i = 0; i < d->nsvcs && w->n < WATCH_MAX; i++) {
        struct service *svc = d->svcs[i];
        if (!svc->watch)
            continue;
        char dir[4096], base[4096];
        snprintf(dir, sizeof(dir), "%s", svc->plugin_path);
        snprintf(base, sizeof(base), "%s", svc->plugin_path);
        /* The directory, not the file: a deployment renames a new file in. */
        int wd = inotify_add_watch(w->fd, dirname(dir), IN_CLOSE_WRITE | IN_MOVED_TO);
        if (wd < 0) {
            log_warn("service %s: cannot watch %s: %s", svc->name, svc->plugin_path,
                     strerror(errno));
            continue;
        }
        w->wd[w->n] = wd;
        snprintf(w->name[w->n], sizeof(w->name[0]), "%s", basename(base));
        w->n++;
    }
    return 0;
}

void watch_on_event(struct daemon *d)
{
    struct watch *w = &d->watch;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    while ((n = read(w->fd, buf, sizeof(buf))) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            for (unsigned i = 0; i < w->n; i++) {
                if (ev->wd == w->wd[i] && ev->len > 0 && strcmp(ev->name, w->name[i]) == 0) {
                    w->reload_at_ns = sock_deadline(WATCH_DEBOUNCE_MS);
                    log_info("plugin file %s changed: reload in %d ms", ev->name,
                             WATCH_DEBOUNCE_MS);
                }
            }
            p += sizeof(*ev) + ev->len;
        }
    }
}

int watch_due(struct watch *w, int *due)
{
    *due = 0;
    if (w->reload_at_ns == 0)
        return -1;
    uint64_t now = sock_now_ns();
    if (now < w->reload_at_ns)
        return (int)((w->reload_at_ns - now) / 1000000 + 1);
    w->reload_at_ns = 0;
    *due = 1;
    return -1;
}

void watch_close(struct watch *w)
{
    if (w->fd >= 0) {
        clear(w);
        close(w->fd);
    }
    w->fd = -1;
}
