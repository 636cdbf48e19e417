/*
 * The plugin call (see handler.c): what a worker's serving loop runs for
 * a session of a service.
 */
#ifndef SHMIPC_SERVER_HANDLER_H
#define SHMIPC_SERVER_HANDLER_H

#include "server/daemon.h"

/* The host API table handed to plugins. */
void host_api_init(struct shmipc_host_api *h);
/* Names the service whose plugin code runs next on this thread (init,
 * thread_init, ...), so that its log lines carry it; NULL when done.
 * Handler calls set it themselves. */
void handler_log_service(const char *service);
/* One request of stream st on worker w: handle() and the answer; counted
 * in *p (released by plugin_pass_end). Returns 1 when the plugin deferred
 * the answer: the stream is paused until it completes (the worker's
 * resume() is called then), else 0. */
int plugin_request(struct worker *w, struct dsession *ds, shmipc_stream *st, shmipc_msg *m,
                   struct pass *p);
/* The end of a dispatch pass: the generation goes back, the counters are
 * added to the session's and the service's. */
void plugin_pass_end(struct dsession *ds, struct pass *p);
/* A stream opened (open=1) or closed: the plugin's hook, if it has one. */
void plugin_stream_hook(struct worker *w, struct dsession *ds, shmipc_stream *st, int open);

#endif
