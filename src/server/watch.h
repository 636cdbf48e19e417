/*
 * Plugin file watch: services with `watch = true` are reloaded when their
 * .so is replaced (written and closed, or renamed into place). Events are
 * debounced so that one deployment gives one reload.
 */
#ifndef SHMIPC_SERVER_WATCH_H
#define SHMIPC_SERVER_WATCH_H

#include <stdint.h>

struct daemon;

#define WATCH_MAX 64
#define WATCH_DEBOUNCE_MS 200

struct watch {
    int fd;                  /* inotify, -1 when unused */
    int wd[WATCH_MAX];       /* directory watches */
    char name[WATCH_MAX][256]; /* file name watched in that directory */
    unsigned n;
    uint64_t reload_at_ns;   /* 0: nothing pending */
};

void watch_init(struct watch *w);
/* Re-reads which services want a watch (after start and every reload). */
int watch_refresh(struct daemon *d);
/* The inotify fd is readable: note matching events. */
void watch_on_event(struct daemon *d);
/* Milliseconds until a pending reload is due (-1 if none); *due = 1 when
 * it is due now (the caller reloads). */
int watch_due(struct watch *w, int *due);
void watch_close(struct watch *w);

#endif
