/* Both ends of a TLS byte stream, for the bench's JDBC TLS rows: it moves
 * bytes as fast as OpenSSL can, so what is measured is the path between
 * the two ends. (`openssl s_client` and `s_server` stop after a few
 * hundred KiB from a pipe and copy in small pieces; socat is not
 * installed here.) Each connection writes or reads through a 256 KiB
 * buffer; TLS 1.3 unless the client says -2 (TLS 1.2).
 *
 *   tlspump server PORT CERT KEY         sink or source, by what the client asks
 *   tlspump handshakes PORT new|resume SECONDS [-2]
 *       TLS handshakes one after another for SECONDS, each on a new
 *       connection, closed after the handshake (close_notify, nothing
 *       read or written). resume offers the session of the connection
 *       before; under TLS 1.3 that is the newest ticket the server sent
 *       after the handshake (read for up to 100 ms), since a server may
 *       honour a ticket once only (rustls' stateful cache). The server's
 *       certificate is not verified (its signature over the handshake is):
 *       the client's side of a handshake stays as cheap as it can be.
 *       Prints JSON {"handshakes": N, "resumed": R, "failed": F, "seconds": S}
 *   tlspump client PORT CAFILE up|down SECONDS [-2]
 *       up: the client writes, the server reads; down: the reverse.
 *       Prints one line: JSON {"bytes": N, "seconds": S, "gbit_s": G, "cipher": "..."}
 *
 * The client's first byte says the direction ('u' or 'd'). Bytes are
 * counted where they are read, from the first one on, so what the
 * sockets buffer is not counted.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (256 * 1024)

static SSL_CTX *ctx;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "tlspump: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void *serve(void *arg) {
    int fd = (int)(long)arg;
    SSL *ssl = SSL_new(ctx);
    char *buf = malloc(BUF);
    memset(buf, 'x', BUF);
    SSL_set_fd(ssl, fd);
    char dir;
    if (SSL_accept(ssl) == 1 && SSL_read(ssl, &dir, 1) == 1) {
        if (dir == 'u')
            while (SSL_read(ssl, buf, BUF) > 0)
                ;
        else
            while (SSL_write(ssl, buf, BUF) > 0)
                ;
    }
    SSL_free(ssl);
    close(fd);
    free(buf);
    return NULL;
}

static int server(int port, const char *cert, const char *key) {
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die("cannot load the certificate or key");
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024))
        die("cannot listen");
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        int c = accept(l, NULL, NULL);
        pthread_t t;
        if (c >= 0 && pthread_create(&t, &attr, serve, (void *)(long)c))
            close(c);
    }
    return 0;
}

static int client(int port, const char *ca, int up, double seconds, int tls12) {
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        die("cannot load the CA file");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (tls12)
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a))
        die("cannot connect");
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    if (SSL_connect(ssl) != 1)
        die("handshake failed");
    char *buf = malloc(BUF);
    memset(buf, 'x', BUF);
    char dir = up ? 'u' : 'd';
    if (SSL_write(ssl, &dir, 1) != 1)
        die("write failed");
    long long bytes = 0;
    double start = now(), end = start + seconds, t;
    if (up) {
        while ((t = now()) < end) {
            int n = SSL_write(ssl, buf, BUF);
            if (n <= 0)
                die("write failed");
            bytes += n;
        }
    } else {
        /* the clock starts at the first byte read: the handshake and the
         * server's start are not counted */
        int n = SSL_read(ssl, buf, BUF);
        if (n <= 0)
            die("read failed");
        start = now();
        end = start + seconds;
        while ((t = now()) < end) {
            n = SSL_read(ssl, buf, BUF);
            if (n <= 0)
                die("read failed");
            bytes += n;
        }
    }
    t -= start;
    printf("JSON {\"bytes\": %lld, \"seconds\": %.3f, \"gbit_s\": %.3f, \"cipher\": \"%s %s\"}\n", bytes, t,
           bytes * 8 / t / 1e9, SSL_get_version(ssl), SSL_get_cipher(ssl));
    fflush(stdout);
    /* no close_notify: the peer just sees the connection end */
    close(fd);
    return 0;
}

static int handshakes(int port, int resume, double seconds, int tls12) {
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        die("no context");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (tls12)
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    SSL_SESSION *sess = NULL;
    long done = 0, reused = 0, failed = 0;
    char buf[4096];
    double start = now(), end = start + seconds, t;
    while ((t = now()) < end) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
            failed++;
            close(fd);
            continue;
        }
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        SSL_set_tlsext_host_name(ssl, "localhost");
        if (resume && sess)
            SSL_set_session(ssl, sess);
        if (SSL_connect(ssl) != 1) {
            failed++;
            ERR_clear_error();
        } else {
            done++;
            reused += SSL_session_reused(ssl);
            if (resume) {
                if (SSL_version(ssl) == TLS1_3_VERSION) {
                    /* the tickets follow the handshake: wait for the first,
                     * then take what else has come */
                    struct pollfd p = {.fd = fd, .events = POLLIN};
                    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
                    if (poll(&p, 1, 100) == 1)
                        while (SSL_read(ssl, buf, sizeof buf) > 0)
                            ;
                    ERR_clear_error();
                }
                SSL_SESSION *s = SSL_get1_session(ssl);
                if (s && SSL_SESSION_is_resumable(s)) {
                    if (sess)
                        SSL_SESSION_free(sess);
                    sess = s;
                } else if (s) {
                    SSL_SESSION_free(s);
                }
            }
            SSL_shutdown(ssl);
        }
        SSL_free(ssl);
        close(fd);
    }
    printf("JSON {\"handshakes\": %ld, \"resumed\": %ld, \"failed\": %ld, \"seconds\": %.3f}\n", done, reused,
           failed, t - start);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 5 && !strcmp(argv[1], "server"))
        return server(atoi(argv[2]), argv[3], argv[4]);
    if ((argc == 6 || argc == 7) && !strcmp(argv[1], "client"))
        return client(atoi(argv[2]), argv[3], !strcmp(argv[4], "up"), atof(argv[5]),
                      argc == 7 && !strcmp(argv[6], "-2"));
    if ((argc == 5 || argc == 6) && !strcmp(argv[1], "handshakes"))
        return handshakes(atoi(argv[2]), !strcmp(argv[3], "resume"), atof(argv[4]),
                          argc == 6 && !strcmp(argv[5], "-2"));
    fprintf(stderr, "usage: tlspump server PORT CERT KEY | tlspump client PORT CAFILE up|down SECONDS [-2] | "
                    "tlspump handshakes PORT new|resume SECONDS [-2]\n");
    return 2;
}
