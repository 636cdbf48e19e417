/*
 * What a server thread finds in its epoll events: every object it
 * registers starts with a struct serve_tag saying what it is. The core
 * uses the kinds below; an owner numbers its own from SERVE_OWNER on.
 */
#ifndef SHMIPC_SESSION_SERVE_TAG_H
#define SHMIPC_SESSION_SERVE_TAG_H

enum serve_kind {
    SERVE_LISTENER = 1, /* struct serve_listener */
    SERVE_HANDSHAKE,    /* struct serve_hs */
    SERVE_SESSION,      /* struct serve_conn */
    SERVE_OWNER,        /* first kind of the owner's own */
};

struct serve_tag {
    int kind;
};

#endif
