/*
 * xfer: move a fixed number of bytes over TCP between two pods, with the insncount plugin's
 * marker instruction right before the first byte and right after the last one is acknowledged.
 *
 *   xfer recv <ip> <port>              accept one connection, read to EOF, answer one byte
 *   xfer send <ip> <port> <bytes>      connect, MARK, write <bytes>, shut down writing,
 *                                      read the answer, MARK; prints "<bytes> <seconds>"
 *
 * Why not iperf3: its start, its control connection and its JSON fall between any markers put
 * around it, about 25 million instructions per run in the guest, a quarter of a 100 MB
 * transfer's cost (measured). Here only the transfer itself is between the markers: one
 * write() or read() per MiB, nothing else.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static void mark(void)
{
    __asm__ volatile("xchg %%rcx, %%rcx" ::: "rcx", "memory");
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static struct sockaddr_in address(const char *ip, const char *port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(port));
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
        fprintf(stderr, "xfer: bad address %s\n", ip);
        exit(2);
    }
    return sa;
}

static int receive(const char *ip, const char *port)
{
    static char buf[CHUNK];
    struct sockaddr_in sa = address(ip, port);
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) die("socket");
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(listener, (struct sockaddr *)&sa, sizeof(sa)) < 0) die("bind");
    if (listen(listener, 1) < 0) die("listen");
    printf("listening\n");
    fflush(stdout);
    int conn = accept(listener, NULL, NULL);
    if (conn < 0) die("accept");
    long long total = 0;
    for (;;) {
        ssize_t n = read(conn, buf, sizeof(buf));
        if (n < 0) die("read");
        if (n == 0) break;
        total += n;
    }
    if (write(conn, "k", 1) != 1) die("write answer");
    close(conn);
    close(listener);
    printf("%lld\n", total);
    return 0;
}

static int send_bytes(const char *ip, const char *port, long long nbytes)
{
    static char buf[CHUNK];
    struct sockaddr_in sa = address(ip, port);
    struct timespec t0, t1;
    char answer;
    memset(buf, 'x', sizeof(buf));
    int conn = socket(AF_INET, SOCK_STREAM, 0);
    if (conn < 0) die("socket");
    if (connect(conn, (struct sockaddr *)&sa, sizeof(sa)) < 0) die("connect");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    mark();
    for (long long left = nbytes; left > 0;) {
        ssize_t n = write(conn, buf, left < CHUNK ? (size_t)left : CHUNK);
        if (n <= 0) die("write");
        left -= n;
    }
    if (shutdown(conn, SHUT_WR) < 0) die("shutdown");
    if (read(conn, &answer, 1) != 1) die("read answer");
    mark();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(conn);
    printf("%lld %.6f\n", nbytes, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "recv") == 0) return receive(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "send") == 0)
        return send_bytes(argv[2], argv[3], atoll(argv[4]));
    fprintf(stderr, "usage: xfer recv IP PORT | xfer send IP PORT BYTES\n");
    return 2;
}
