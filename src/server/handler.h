/*
 * The plugin call (see handler.c): what a worker's serving loop runs for
 * a session of a service.
 */
#ifndef SHMIPC_SERVER_HANDLER_H
#define SHMIPC_SERVER_HANDLER_H

#include "server/daemon.h"

/* The host API table handed to plugins. */
void host_api_init(struct shmipc_host_api *h);
/* One request of stream st on worker `worker`: handle() and the answer;
 * counted in *p (released by plugin_pass_end). */
void plugin_request(unsigned worker, struct dsession *ds, shmipc_stream *st, shmipc_msg *m,
                    struct pass *p);
/* The end of a dispatch pass: the generation goes back, the counters are
 * added to the session's and the service's. */
void plugin_pass_end(struct dsession *ds, struct pass *p);
/* A stream opened (open=1) or closed: the plugin's hook, if it has one. */
void plugin_stream_hook(unsigned worker, struct dsession *ds, shmipc_stream *st, int open);

#endif
