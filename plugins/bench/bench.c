/*
 * bench: the handler shmipc-bench drives through shmipcd. Byte 0 of a
 * request says what to do:
 *   'Z'  zero-touch: the response is one byte 'Z' and then len-1 bytes
 *        left as the pool slices hold them (one reserved slice up to the
 *        largest slice size, else host->advance); the request is not read
 *        beyond byte 0;
 *   'F'  (and anything else) full: an echo, the request's own slices
 *        sent back (host->forward: nothing copied or read).
 * It keeps no state; any number of workers may call it at once.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>

#include "shmipc/plugin.h"

static const struct shmipc_host_api *host;

/* The largest slice of the client's pool: shmipc's default, or the
 * config key max_slice (shmipc-bench --max-slice). Set once by init. */
static long long one_slice = 131052;

static void *bench_init(const struct shmipc_host_api *h, const struct shmipc_plugin_conf *conf,
                        char *errbuf, size_t errlen)
{
    if (h->advance == NULL || h->forward == NULL) {
        snprintf(errbuf, errlen, "the host API has no advance() or forward(): shmipcd too old");
        return NULL;
    }
    static const char *const known[] = {"max_slice", NULL};
    if (SHMIPC_HOST_HAS(h, conf_keys) && h->conf_keys(conf, known, errbuf, errlen) < 0)
        return NULL; /* a typo in the service's config group */
    if (h->conf_int(conf, "max_slice", &one_slice) == -EINVAL || one_slice < 1) {
        snprintf(errbuf, errlen, "max_slice must be a positive integer");
        return NULL;
    }
    host = h;
    return (void *)&host; /* no state of its own: any non-NULL pointer */
}

static int bench_handle(void *state, void *thread_state, const struct shmipc_request *req,
                        struct shmipc_response *resp)
{
    (void)state;
    (void)thread_state;
    if (req->len == 0)
        return 0;
    uint8_t op = 0;
    host->copy(req, 0, &op, 1);
    if (op == 'Z' && req->len <= (unsigned long long)one_slice) {
        void *p;
        int rc = host->reserve(resp, req->len, &p);
        if (rc == 0)
            *(uint8_t *)p = op;
        return rc;
    }
    if (op == 'Z') {
        int rc = host->write(resp, &op, 1);
        return rc < 0 ? rc : host->advance(resp, req->len - 1);
    }
    return host->forward(resp);
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("bench", "1.0.0"),
    .init = bench_init,
    .handle = bench_handle,
};
