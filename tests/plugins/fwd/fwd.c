/*
 * Test plugin fwd: host->forward() combined with the other response calls.
 * Byte 0 of the request picks the answer:
 *   'A'  the request (forward alone: its own slices go back)
 *   'B'  "pfx" + the request (written before the forward)
 *   'C'  the request + "sfx" (written after it)
 *   'D'  the request twice
 *   'E'  the request + "rsv!" (reserved after it)
 *   'F'  forward, then fail: nothing is sent on the stream
 * Anything else: "?".
 */
#include <string.h>

#include "shmipc/plugin.h"

static const struct shmipc_host_api *host;

static void *fwd_init(const struct shmipc_host_api *h, const struct shmipc_plugin_conf *conf,
                      char *errbuf, size_t errlen)
{
    (void)conf;
    (void)errbuf;
    (void)errlen;
    host = h;
    return (void *)&host;
}

static int fwd_handle(void *state, void *thread_state, const struct shmipc_request *req,
                      struct shmipc_response *resp)
{
    (void)state;
    (void)thread_state;
    uint8_t op = 0;
    host->copy(req, 0, &op, 1);
    int rc;
    void *p;
    switch (op) {
    case 'A':
        return host->forward(resp);
    case 'B':
        rc = host->write(resp, "pfx", 3);
        return rc < 0 ? rc : host->forward(resp);
    case 'C':
        rc = host->forward(resp);
        return rc < 0 ? rc : host->write(resp, "sfx", 3);
    case 'D':
        rc = host->forward(resp);
        return rc < 0 ? rc : host->forward(resp);
    case 'E':
        rc = host->forward(resp);
        if (rc == 0 && (rc = host->reserve(resp, 4, &p)) == 0)
            memcpy(p, "rsv!", 4);
        return rc;
    case 'F':
        rc = host->forward(resp);
        return rc < 0 ? rc : -1;
    default:
        return host->write(resp, "?", 1);
    }
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("fwd", "1.0.0"),
    .init = fwd_init,
    .handle = fwd_handle,
};
