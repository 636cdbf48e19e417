/*
 * Test plugin crash: for process isolation. A request starting with
 * "crash" dies of SIGSEGV (raised: no undefined behaviour for the
 * sanitizers to report first), "hang" never returns, anything else is
 * echoed.
 */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "shmipc/plugin.h"

static const struct shmipc_host_api *host;

static void *crash_init(const struct shmipc_host_api *h, const struct shmipc_plugin_conf *conf,
                        char *errbuf, size_t errlen)
{
    (void)conf;
    (void)errbuf;
    (void)errlen;
    host = h;
    return (void *)&host;
}

static int starts(const struct shmipc_request *req, const char *word)
{
    char head[8];
    size_t n = strlen(word);
    return req->len >= n && host->copy(req, 0, head, n) == n && memcmp(head, word, n) == 0;
}

static int crash_handle(void *state, void *thread_state, const struct shmipc_request *req,
                        struct shmipc_response *resp)
{
    (void)state;
    (void)thread_state;
    if (starts(req, "crash"))
        raise(SIGSEGV);
    if (starts(req, "hang"))
        for (;;)
            pause();
    return host->forward(resp);
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("crash", "1.0.0"),
    .init = crash_init,
    .handle = crash_handle,
};
