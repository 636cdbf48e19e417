/*
 * Test plugin slow: sleeps `delay_ms` (config, default 200) in every
 * request, then echoes it. For drain and reload tests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "shmipc/plugin.h"

struct slow_state {
    const struct shmipc_host_api *host;
    long long delay_ms;
};

static void *slow_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                       char *errbuf, size_t errlen)
{
    long long delay = 200;
    int rc = host->conf_int(conf, "delay_ms", &delay);
    if (rc < 0 && rc != -ENOENT) {
        snprintf(errbuf, errlen, "slow: config key 'delay_ms' must be an integer");
        return NULL;
    }
    if (rc == -ENOENT)
        delay = 200;
    if (delay < 0 || delay > 3600000) {
        snprintf(errbuf, errlen, "slow: delay_ms %lld out of range 0..3600000", delay);
        return NULL;
    }
    struct slow_state *s = malloc(sizeof(*s));
    if (s == NULL) {
        snprintf(errbuf, errlen, "slow: out of memory");
        return NULL;
    }
    s->host = host;
    s->delay_ms = delay;
    return s;
}

static void slow_fini(void *state)
{
    free(state);
}

static int slow_handle(void *state, void *thread_state, const struct shmipc_request *req,
                       struct shmipc_response *resp)
{
    (void)thread_state;
    const struct slow_state *s = state;
    struct timespec ts = {s->delay_ms / 1000, (s->delay_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
    for (unsigned i = 0; i < req->niov; i++) {
        if (req->iov[i].len == 0)
            continue;
        int rc = s->host->write(resp, req->iov[i].base, req->iov[i].len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("slow", "1.0.0"),
    .init = slow_init,
    .fini = slow_fini,
    .handle = slow_handle,
};
