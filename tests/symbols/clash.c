/*
 * A program that links libshmipc.a and has functions of its own named like
 * the library's internal ones. It links only because the archive keeps
 * those names local (tests/symbols/check.sh checks the names themselves),
 * and the library must go on calling its own functions, never these.
 */
#include <stdio.h>

#include "shmipc/shmipc.h"

static int calls; /* calls of the functions below */

/* Names of functions inside libshmipc, with signatures of our own. */
int log_msg(void);
int log_set_level(void);
int pool_create(void);
int queue_put(void);
int region_close(void);
int session_new(void);
int sock_connect(void);
int hs_client(void);

int log_msg(void)
{
    return ++calls;
}
int log_set_level(void)
{
    return ++calls;
}
int pool_create(void)
{
    return ++calls;
}
int queue_put(void)
{
    return ++calls;
}
int region_close(void)
{
    return ++calls;
}
int session_new(void)
{
    return ++calls;
}
int sock_connect(void)
{
    return ++calls;
}
int hs_client(void)
{
    return ++calls;
}

int main(void)
{
    /* The library connects (sock_connect), fails and says why (log_msg). */
    struct shmipc_client_config c;
    shmipc_client_config_init(&c);
    c.address = "unix:/nonexistent/shmipc-symbol-clash.sock";
    c.connect_timeout_ms = 200;
    shmipc_client *client = NULL;
    int rc = shmipc_client_open(&c, &client);
    if (rc >= 0) {
        fprintf(stderr, "clash: shmipc_client_open(%s) = %d, expected an error\n", c.address, rc);
        shmipc_client_close(client);
        return 1;
    }
    if (calls != 0) {
        fprintf(stderr, "clash: libshmipc called %d of the program's functions\n", calls);
        return 1;
    }
    if (log_msg() != 1) {
        fprintf(stderr, "clash: the program's log_msg is not its own\n");
        return 1;
    }
    /* The library's warnings before this line came from its own log_msg. */
    printf("clash: libshmipc.a linked beside the program's own log_msg, pool_create, "
           "session_new, ...; the library called none of them; shmipc_client_open: %s\n",
           shmipc_strerror(rc));
    return 0;
}
