/*
 * An application outside this tree, as README's Install section builds it:
 *     cc -o client client.c $(pkg-config --cflags --libs shmipc)
 * client ADDR REQUEST: sends REQUEST to the shmipc service at ADDR and
 * prints the answer on a line; exits 1 when no answer came.
 */
#include <stdio.h>
#include <string.h>

#include <shmipc/shmipc.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: client ADDR REQUEST\n");
        return 2;
    }
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = argv[1];
    shmipc_client *c;
    int rc = shmipc_client_open(&cfg, &c);
    if (rc < 0) {
        fprintf(stderr, "client: %s: %s\n", argv[1], shmipc_strerror(rc));
        return 1;
    }
    shmipc_stream *st;
    shmipc_msg m;
    if ((rc = shmipc_client_get(c, &st)) == 0) {
        rc = shmipc_call(st, argv[2], strlen(argv[2]), &m, 5000);
        if (rc == 0) {
            char buf[256];
            size_t n = shmipc_msg_copy(&m, 0, buf, sizeof(buf) - 1);
            buf[n] = '\0';
            printf("%s\n", buf);
            shmipc_msg_release(&m);
        }
        shmipc_client_put(c, st);
    }
    shmipc_client_close(c);
    if (rc < 0) {
        fprintf(stderr, "client: %s\n", shmipc_strerror(rc));
        return 1;
    }
    return 0;
}
