/*
 * What shmipcd tells monitoring: the Prometheus text exposition format
 * (`shmipcctl metrics`, and GET /metrics on metrics_listen), the status as
 * JSON, and the list of sessions. Master thread; reads worker-owned state
 * under the workers' loop mutexes, counters with relaxed atomics.
 */
#ifndef SHMIPC_SERVER_METRICS_H
#define SHMIPC_SERVER_METRICS_H

#include "server/daemon.h"
#include "server/strbuf.h"

void metrics_text(struct daemon *d, struct strbuf *b);
void status_json(struct daemon *d, struct strbuf *b);
/* One line per session: service, worker, peer pid and uid, age, streams,
 * pool bytes in use, idle time. */
void sessions_text(struct daemon *d, struct strbuf *b);

/* metrics_listen: a connection to answer (HTTP/1.1, one request, bounded
 * size and time; GET /metrics only). */
void metrics_http(struct daemon *d, int fd);

#endif
