/*
 * Services and their plugin generations (see service.c). Master thread.
 */
#ifndef SHMIPC_SERVER_SERVICE_H
#define SHMIPC_SERVER_SERVICE_H

#include "server/daemon.h"

/* A loaded configuration is shared by the generations made from it. */
void conf_ref_get(struct conf_ref *r);
void conf_ref_put(struct conf_ref *r);

/* What a generation is made from (file identity, the plugin's config
 * group as canonical text): equal sources mean no new generation. */
int gen_source_read(struct gen_source *src, const char *path, const config_setting_t *conf);
void gen_source_free(struct gen_source *src);
int gen_source_same(const struct gen_source *a, const struct gen_source *b);

/* A service with its first generation loaded (not listening yet); NULL
 * with err filled. */
struct service *service_create(struct daemon *d, const struct svc_conf *sc, char *err,
                               size_t errlen);
int service_listen(struct daemon *d, struct service *svc, char *err, size_t errlen);
/* The daemon's configuration, read from path (the master's and a worker
 * process's start): d->cref and d->conf, the path, the log level and the
 * values workers read. 0, or a code with err filled. */
int daemon_load_conf(struct daemon *d, const char *path, char *err, size_t errlen);
/* Closes its listener and removes its socket file (a removed service). */
void service_unlisten(struct daemon *d, struct service *svc);
/* Stops listening (its socket file removed), unloads its generation,
 * frees it. */
void service_free(struct daemon *d, struct service *svc);
/* Loads a service's plugin as a new generation and runs thread_init on
 * every worker; on success svc->gen is NOT yet changed: *out is ready. */
int service_new_gen(struct daemon *d, struct service *svc, const struct svc_conf *sc,
                    struct conf_ref *cref, struct plugin_gen **out, char *err, size_t errlen);
/* fini, dlclose and the private copy of a finished generation. */
void service_unload_gen(struct plugin_gen *g);
/* Starts the service's own workers (`workers` in its config), if any. */
int service_start_workers(struct daemon *d, struct service *svc);
/* What a reload may change in how the service runs its handlers:
 * handler_error, the slow-handler log, watch (its own workers stay). */
void service_configure(struct daemon *d, struct service *svc, const struct svc_conf *sc);
/* The settings a service's new sessions get (refreshed from the
 * configuration in force). */
const struct serve_settings *service_settings(struct daemon *d, struct service *svc);

#endif
