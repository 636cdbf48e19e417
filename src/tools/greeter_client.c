/*
 * greeter_client ADDR [--memfd|--file]: shmipc's hello world, client side.
 * Sends "client say hello world!!!" and prints the server's answer.
 */
#include <stdio.h>
#include <string.h>

#include "shmipc/shmipc.h"

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 ||
        (argc == 3 && strcmp(argv[2], "--memfd") != 0 && strcmp(argv[2], "--file") != 0)) {
        fprintf(stderr, "usage: greeter_client ADDR [--memfd|--file]\n");
        return 2;
    }
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = argv[1];
    cfg.mode = argc == 3 && strcmp(argv[2], "--file") == 0 ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD;
    if (strncmp(argv[1], "tcp:", 4) == 0)
        cfg.mode = SHMIPC_MODE_FILE; /* fds cannot cross TCP */
    shmipc_client *c;
    int rc = shmipc_client_open(&cfg, &c);
    if (rc < 0) {
        fprintf(stderr, "greeter_client: %s: %s\n", argv[1], shmipc_strerror(rc));
        return 1;
    }
    shmipc_stream *st;
    shmipc_msg m;
    const char req[] = "client say hello world!!!";
    if ((rc = shmipc_client_get(c, &st)) == 0) {
        rc = shmipc_call(st, req, strlen(req), &m, 5000);
        if (rc == 0) {
            char buf[256];
            size_t n = shmipc_msg_copy(&m, 0, buf, sizeof(buf) - 1);
            buf[n] = '\0';
            printf("%s\n", buf);
            shmipc_msg_release(&m);
        }
        shmipc_stream_close(st);
    }
    shmipc_client_close(c);
    if (rc < 0) {
        fprintf(stderr, "greeter_client: %s\n", shmipc_strerror(rc));
        return 1;
    }
    return 0;
}
