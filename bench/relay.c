/* A minimal TCP relay, the reference for the bench's JDBC rows: what a
 * relay costs on this machine with nothing but read(2) and write(2).
 * Two blocking threads per connection, one per direction, each copying
 * through its own 256 KiB buffer; an end of stream is passed on as a
 * half-close. No event loop, no limits, no logging.
 *
 *   relay LISTEN_PORT UPSTREAM_PORT      (both on 127.0.0.1)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (256 * 1024)

struct pair {
    int from, to;
    struct conn *conn;
};

struct conn {
    int client, server;
    int done; /* directions finished, under lock */
    pthread_mutex_t lock;
    struct pair up, down;
};

static struct sockaddr_in upstream;

static void finish(struct conn *c) {
    pthread_mutex_lock(&c->lock);
    int last = ++c->done == 2;
    pthread_mutex_unlock(&c->lock);
    if (last) {
        close(c->client);
        close(c->server);
        pthread_mutex_destroy(&c->lock);
        free(c);
    }
}

static void *copy(void *arg) {
    struct pair *p = arg;
    char *buf = malloc(BUF);
    for (;;) {
        ssize_t n = buf ? read(p->from, buf, BUF) : -1;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(p->to, buf + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                goto out;
            off += w;
        }
    }
out:
    shutdown(p->to, SHUT_WR);
    free(buf);
    finish(p->conn);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: relay LISTEN_PORT UPSTREAM_PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    upstream = addr;
    upstream.sin_port = htons(atoi(argv[2]));
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&addr, sizeof addr) || listen(l, 4096)) {
        perror("relay: listen");
        return 1;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0)
            continue;
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&upstream, sizeof upstream)) {
            close(c);
            close(s);
            continue;
        }
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *k = calloc(1, sizeof *k);
        k->client = c;
        k->server = s;
        pthread_mutex_init(&k->lock, NULL);
        k->up = (struct pair){c, s, k};
        k->down = (struct pair){s, c, k};
        pthread_t t;
        if (pthread_create(&t, &attr, copy, &k->up)) {
            close(c);
            close(s);
            free(k);
            continue;
        }
        if (pthread_create(&t, &attr, copy, &k->down)) {
            /* the up thread will finish alone: make it see an end */
            shutdown(c, SHUT_RDWR);
            finish(k);
        }
    }
}
