/*
 * greeter_server ADDR: shmipc's hello world, server side. Answers
 * "client say hello world!!!" with "server hello world!!!" on the same
 * stream, for as many clients and streams as come, until SIGTERM/SIGINT.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "shmipc/shmipc.h"

static const char request[] = "client say hello world!!!";
static const char answer[] = "server hello world!!!";
static shmipc_server *server;

static void on_signal(int sig)
{
    (void)sig;
    shmipc_server_stop(server);
}

static void on_message(shmipc_stream *st, shmipc_msg *m, void *arg)
{
    (void)arg;
    char buf[64];
    size_t n = shmipc_msg_copy(m, 0, buf, sizeof(buf) - 1);
    buf[n] = '\0';
    shmipc_msg_release(m);
    if (strcmp(buf, request) != 0)
        fprintf(stderr, "greeter_server: unexpected request on stream %u: %s\n",
                shmipc_stream_id(st), buf);
    int rc = shmipc_stream_write(st, answer, strlen(answer));
    if (rc == 0)
        rc = shmipc_stream_flush(st);
    if (rc < 0)
        fprintf(stderr, "greeter_server: answering stream %u: %s\n", shmipc_stream_id(st),
                shmipc_strerror(rc));
}

static void usage(FILE *f)
{
    fprintf(f, "usage: greeter_server ADDR   (unix:/path, /path or tcp:host:port)\n"
               "Answers \"client say hello world!!!\" with \"server hello world!!!\" on the same\n"
               "stream until SIGTERM or SIGINT.\n"
               "  -h, --help   this text;  --version  the version\n");
}

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("greeter_server (shmipc) %s\n", SHMIPC_VERSION);
        return 0;
    }
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return 2;
    }
    struct shmipc_server_config cfg;
    shmipc_server_config_init(&cfg);
    cfg.address = argv[1];
    struct shmipc_server_handlers h = {.on_message = on_message};
    int rc = shmipc_server_open(&cfg, &h, NULL, &server);
    if (rc < 0) {
        fprintf(stderr, "greeter_server: %s: %s\n", argv[1], shmipc_strerror(rc));
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    rc = shmipc_server_run(server);
    shmipc_server_close(server);
    return rc < 0 ? 1 : 0;
}
