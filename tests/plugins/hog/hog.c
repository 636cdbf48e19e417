/*
 * Test plugin hog: for max_rss_bytes. A request "hog N" allocates N MiB,
 * writes every page and keeps it until fini, so the process serving it
 * grows by that much; "pid" is answered with the pid of that process (in
 * decimal); anything else is echoed. Requests may run on several workers
 * at once: the list of blocks has a lock.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmipc/plugin.h"

struct block {
    struct block *next;
};

struct hog_state {
    const struct shmipc_host_api *host;
    pthread_mutex_t mu;
    struct block *blocks; /* kept until fini */
};

static void *hog_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                      char *errbuf, size_t errlen)
{
    (void)conf;
    struct hog_state *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(errbuf, errlen, "hog: out of memory");
        return NULL;
    }
    s->host = host;
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

static void hog_fini(void *state)
{
    struct hog_state *s = state;
    while (s->blocks != NULL) {
        struct block *b = s->blocks;
        s->blocks = b->next;
        free(b);
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* N MiB, every byte written (so every page is resident), kept. */
static int hog(struct hog_state *s, unsigned long mib)
{
    size_t len = mib << 20;
    struct block *b = len >= sizeof(*b) ? malloc(len) : NULL;
    if (b == NULL)
        return -1;
    memset(b, 0xa5, len);
    pthread_mutex_lock(&s->mu);
    b->next = s->blocks;
    s->blocks = b;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int hog_handle(void *state, void *thread_state, const struct shmipc_request *req,
                      struct shmipc_response *resp)
{
    (void)thread_state;
    struct hog_state *s = state;
    char head[32] = "", out[32];
    size_t n =
        s->host->copy(req, 0, head, req->len < sizeof(head) - 1 ? req->len : sizeof(head) - 1);
    head[n] = '\0';
    unsigned long mib;
    if (n == req->len && sscanf(head, "hog %lu", &mib) == 1 && mib >= 1 && mib <= 4096) {
        if (hog(s, mib) < 0)
            return -1;
        int len = snprintf(out, sizeof(out), "hogged %lu", mib);
        return s->host->write(resp, out, (size_t)len);
    }
    if (n == req->len && strcmp(head, "pid") == 0) {
        int len = snprintf(out, sizeof(out), "%d", (int)getpid());
        return s->host->write(resp, out, (size_t)len);
    }
    return s->host->forward(resp);
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("hog", "1.0.0"),
    .init = hog_init,
    .fini = hog_fini,
    .handle = hog_handle,
};
