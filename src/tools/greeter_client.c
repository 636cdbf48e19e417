/*
 * greeter_client ADDR [--memfd|--file]: shmipc's hello world, client side.
 * Sends "client say hello world!!!" and prints the server's answer.
 */
#include <stdio.h>
#include <string.h>

#include "shmipc/shmipc.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: greeter_client ADDR [--memfd|--file]\n"
               "Sends \"client say hello world!!!\" to the greeter service at ADDR\n"
               "(unix:/path, /path or tcp:host:port) and prints the answer.\n"
               "  --memfd      shared memory passed as memfds (default)\n"
               "  --file       /dev/shm files (always over tcp:)\n"
               "  -h, --help   this text;  --version  the version\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("greeter_client (shmipc) %s\n", SHMIPC_VERSION);
            return 0;
        }
    }
    if (argc < 2 || argc > 3 || argv[1][0] == '-' ||
        (argc == 3 && strcmp(argv[2], "--memfd") != 0 && strcmp(argv[2], "--file") != 0)) {
        usage(stderr);
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
