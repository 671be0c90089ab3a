/* The floor of the mesh hop: a TCP relay that does nothing but move bytes.
 *
 * benches/load/compare --together (TOGETHER="relay nginx") runs two of these as a "mesh"
 * (client -> relay -> relay -> upstream, no TLS, no HTTP): per request and direction each one
 * makes the fewest system calls an event-driven proxy can (one epoll_wait, one read, one
 * write), and next to nothing in user space. What it costs per request is what the kernel
 * charges any proxy for the same sockets, wake-ups and segments; a proxy cannot cost less
 * than this without fewer system calls, segments or wake-ups per request.
 *
 * Usage: relay LISTEN_PORT TARGET_PORT (both on 127.0.0.1). One thread, level-triggered
 * epoll; each accepted connection gets its own connection to the target. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536
static int peer[MAX_FD];
static char buf[65536];

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int watch(int ep, int fd) {
    struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

static void drop_pair(int fd) {
    int p = peer[fd];
    close(fd);
    if (p >= 0) close(p);
    peer[fd] = -1;
    if (p >= 0) peer[p] = -1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: relay LISTEN_PORT TARGET_PORT\n");
        return 2;
    }
    int lport = atoi(argv[1]), tport = atoi(argv[2]), one = 1;
    if (lport <= 0 || lport > 65535 || tport <= 0 || tport > 65535) {
        fprintf(stderr, "relay: ports must be 1-65535\n");
        return 2;
    }
    for (int i = 0; i < MAX_FD; i++) peer[i] = -1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in la = loopback(lport), ta = loopback(tport);
    if (l < 0 || bind(l, (struct sockaddr *)&la, sizeof la) || listen(l, 512)) {
        perror("relay: listen");
        return 1;
    }
    int ep = epoll_create1(0);
    if (ep < 0 || watch(ep, l)) {
        perror("relay: epoll");
        return 1;
    }
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        if (n < 0 && errno != EINTR) {
            perror("relay: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c = accept(l, NULL, NULL);
                if (c < 0) continue;
                int u = socket(AF_INET, SOCK_STREAM, 0);
                if (u < 0 || c >= MAX_FD || u >= MAX_FD || connect(u, (struct sockaddr *)&ta, sizeof ta)) {
                    close(c);
                    if (u >= 0) close(u);
                    continue;
                }
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                peer[c] = u;
                peer[u] = c;
                if (watch(ep, c) || watch(ep, u)) drop_pair(c);
                continue;
            }
            if (peer[fd] < 0) continue; /* closed earlier in this batch */
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (r <= 0) {
                drop_pair(fd);
                continue;
            }
            for (ssize_t off = 0; off < r;) {
                ssize_t w = write(peer[fd], buf + off, (size_t)(r - off));
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) {
                    drop_pair(fd);
                    break;
                }
                off += w;
            }
        }
    }
}
