/*
 * loadgen.c -- the C load generator of the netmodels benchmarks.
 *
 * Built on demand by benchmarks/common.py into benchmarks/bin/loadgen:
 *     gcc -O2 -Wall -o benchmarks/bin/loadgen benchmarks/loadgen.c
 *
 * A Python load generator is slower than the Python server it feeds, so the
 * benchmarks that measure a server (ingest, idle connections) drive it from
 * here. Two modes:
 *
 *   stream  Open CONNS connections to HOST:PORT, send the optional HELLO bytes
 *           on each, then write an endless stream of frames with epoll and
 *           non-blocking batched send()s (each send() offers up to ~64 KB of
 *           ready-made frames; partial sends resume mid-stream, so the byte
 *           stream is always whole frames). Whatever the server sends (its
 *           HELLO, keepalive PINGs) is read and discarded, so nothing can
 *           deadlock on a full receive buffer.
 *
 *   idle    Open CONNS connections, send the optional HELLO bytes, then send
 *           nothing. Frames from the server are parsed: a netmodels PING
 *           (type 0x03, 4-byte body) is answered with a PONG (type 0x04, same
 *           body), as a live netmodels peer would; everything else is
 *           discarded. Prints "CONNECTED n" once all connections are up.
 *
 *   read    As idle, and counts the whole frames the server sends (with -T TYPE
 *           only those of that netmodels message type, e.g. 0x02 DATA), for
 *           fan-out benchmarks; prints "RECEIVED frames=N bytes=N conns_lost=N
 *           elapsed=S cpu=S runq_wait=S" at the end.
 *
 * A frame is a 4-byte big-endian length then that many bytes. With -T TYPE the
 * first body byte is TYPE (a netmodels message type) and the remaining
 * BODY-1 bytes are filler; without it the whole BODY is filler (raw
 * Int32StringReceiver framing). Either way each frame is 4 + BODY bytes.
 *
 * With -Z the frames are ZeroMQ's instead (ZMTP 3.0, for the pyzmq peers of
 * the benchmarks): the HELLO given with -x is then the ZMTP greeting and
 * READY command, built by the harness. The generator then waits for the
 * server's greeting and READY before it sends anything else (libzmq 4.3
 * drops a connection whose first message arrives with the greeting), then
 * sends the optional -X bytes (a SUB's subscription). Stream mode sends
 * short message frames (flags 0x00, 1-byte size, BODY bytes: 2 + BODY bytes
 * each, so BODY <= 255); read mode counts the whole messages the server
 * sends, not its commands.
 *
 * With -P SECONDS the generator does not sleep for up to SECONDS after its
 * connections are up, until each has heard from the server: over loopback,
 * waking a sleeping receiver is work the sender's CPU does, so a server that
 * answers HELLOs while the generator sleeps would pay for the generator's
 * wake-ups (over a network the client's machine pays them), and which of two
 * servers pays depends only on timing.
 *
 * Runs for -t SECONDS after the connections are up, then closes everything and
 * prints "SENT frames=N bytes=N conns_lost=N elapsed=S cpu=S runq_wait=S": its
 * own CPU time, and the time it spent runnable but waiting for a CPU (from
 * /proc/thread-self/schedstat), so the harness can tell a disturbed run.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define STREAM_TARGET (64 * 1024)
#define MAX_EVENTS 256

struct conn {
    int fd;
    int alive;
    size_t offset;          /* stream mode: position in the frame buffer */
    /* idle mode: frame parser state */
    unsigned char header[9];
    int header_have;
    uint32_t body_left;
    unsigned char ping[4];
    int ping_have;
    int is_ping;
    int heard;              /* something arrived from the server */
    int counted;            /* read mode: the frame being read is one to count */
    uint64_t zbody_left;    /* -Z read mode: bytes of the current frame's body still to skip */
};

/* Read mode: frames and bytes received. */
static unsigned long long frames_in = 0, bytes_in = 0;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Seconds spent runnable but waiting for a CPU (0 if schedstat is missing). */
static double runq_wait(void) {
    unsigned long long run = 0, wait = 0;
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    if (!f) return 0;
    if (fscanf(f, "%llu %llu", &run, &wait) != 2) wait = 0;
    fclose(f);
    return wait / 1e9;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void usage(void);

static unsigned char *unhex(const char *text, size_t *len) {
    size_t n = strlen(text);
    if (n % 2) usage();
    unsigned char *out = malloc(n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(text[2 * i]), lo = hexval(text[2 * i + 1]);
        if (hi < 0 || lo < 0) usage();
        out[i] = (unsigned char)(hi * 16 + lo);
    }
    *len = n / 2;
    return out;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen -p PORT [-h HOST] [-m stream|idle|read] [-c CONNS] [-t SECONDS]\n"
            "               [-s BODY] [-T TYPE] [-x HELLO_HEX] [-d CONNECT_DELAY_US]\n"
            "               [-Z [-X AFTER_HANDSHAKE_HEX]] [-P POLL_SECONDS]\n");
    exit(2);
}

static int send_all_blocking(int fd, const unsigned char *data, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Idle mode: parse what the server sent, answer PINGs. Returns -1 on error. */
static int idle_consume(struct conn *c, const unsigned char *data, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (c->header_have < 5) {
            c->header[c->header_have++] = data[i++];
            if (c->header_have == 5) {
                uint32_t length = ((uint32_t)c->header[0] << 24) | ((uint32_t)c->header[1] << 16) |
                                  ((uint32_t)c->header[2] << 8) | c->header[3];
                if (length == 0) return -1;
                c->body_left = length - 1;
                c->is_ping = (c->header[4] == 0x03 && c->body_left == 4);
                c->ping_have = 0;
                if (c->body_left == 0) c->header_have = 0;
            }
            continue;
        }
        size_t take = len - i;
        if (take > c->body_left) take = c->body_left;
        if (c->is_ping) {
            memcpy(c->ping + c->ping_have, data + i, take);
            c->ping_have += (int)take;
        }
        i += take;
        c->body_left -= (uint32_t)take;
        if (c->body_left == 0) {
            if (c->is_ping) {
                unsigned char pong[9] = {0, 0, 0, 5, 0x04};
                memcpy(pong + 5, c->ping, 4);
                if (send(c->fd, pong, sizeof pong, MSG_NOSIGNAL | MSG_DONTWAIT) != sizeof pong)
                    return -1;
            }
            c->header_have = 0;
        }
    }
    return 0;
}

/*
 * Read mode: parse what the server sent, count whole frames (of TYPE if
 * TYPE >= 0, else every frame of a 4-byte-length stream), answer PINGs.
 * Returns -1 on error.
 */
static int read_consume(struct conn *c, const unsigned char *data, size_t len, int type) {
    int header_len = type >= 0 ? 5 : 4;
    size_t i = 0;
    bytes_in += len;
    while (i < len) {
        if (c->header_have < header_len) {
            c->header[c->header_have++] = data[i++];
            if (c->header_have == header_len) {
                uint32_t length = ((uint32_t)c->header[0] << 24) | ((uint32_t)c->header[1] << 16) |
                                  ((uint32_t)c->header[2] << 8) | c->header[3];
                if (type >= 0) {
                    if (length == 0) return -1;
                    c->body_left = length - 1;
                    c->is_ping = (c->header[4] == 0x03 && c->body_left == 4);
                    c->counted = (c->header[4] == type);
                } else {
                    c->body_left = length;
                    c->is_ping = 0;
                    c->counted = 1;
                }
                c->ping_have = 0;
                if (c->body_left == 0) {
                    frames_in += (unsigned long long)c->counted;
                    c->header_have = 0;
                }
            }
            continue;
        }
        size_t take = len - i;
        if (take > c->body_left) take = c->body_left;
        if (c->is_ping) {
            memcpy(c->ping + c->ping_have, data + i, take);
            c->ping_have += (int)take;
        }
        i += take;
        c->body_left -= (uint32_t)take;
        if (c->body_left == 0) {
            if (c->is_ping) {
                unsigned char pong[9] = {0, 0, 0, 5, 0x04};
                memcpy(pong + 5, c->ping, 4);
                if (send(c->fd, pong, sizeof pong, MSG_NOSIGNAL | MSG_DONTWAIT) != sizeof pong)
                    return -1;
            }
            frames_in += (unsigned long long)c->counted;
            c->header_have = 0;
        }
    }
    return 0;
}

static int recv_exact(int fd, unsigned char *data, size_t len) {
    while (len > 0) {
        ssize_t n = recv(fd, data, len, 0);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* -Z: read the server's 64-byte ZMTP greeting and its READY command (blocking). */
static int zmtp_handshake(int fd) {
    unsigned char greeting[64], header[9], body[256];
    if (recv_exact(fd, greeting, sizeof greeting) < 0 || recv_exact(fd, header, 2) < 0) return -1;
    if (!(header[0] & 0x04) || (header[0] & 0x02)) return -1; /* a short command expected */
    return recv_exact(fd, body, header[1]);
}

/*
 * -Z read mode: count the last frame of
 * every message (not commands). Returns -1 on error.
 */
static int zmtp_consume(struct conn *c, const unsigned char *data, size_t len) {
    size_t i = 0;
    bytes_in += len;
    while (i < len) {
        if (c->zbody_left > 0) {
            size_t take = len - i;
            if (take > c->zbody_left) take = (size_t)c->zbody_left;
            c->zbody_left -= take;
            i += take;
            continue;
        }
        c->header[c->header_have++] = data[i++];
        int need = 1 + ((c->header[0] & 0x02) ? 8 : 1);
        if (c->header_have < need) continue;
        uint64_t size = 0;
        for (int k = 1; k < need; k++) size = (size << 8) | c->header[k];
        if (!(c->header[0] & 0x04) && !(c->header[0] & 0x01)) frames_in++;
        c->zbody_left = size;
        c->header_have = 0;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, conns = 100, body = 64, type = -1, idle = 0, reader = 0, connect_delay_us = 0;
    int zmtp = 0;
    double seconds = 5.0, poll_seconds = 0.0;
    unsigned char *hello = NULL, *after = NULL;
    size_t hello_len = 0, after_len = 0;
    int opt;

    while ((opt = getopt(argc, argv, "h:p:m:c:t:s:T:x:X:d:ZP:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'm':
            if (strcmp(optarg, "idle") == 0) idle = 1;
            else if (strcmp(optarg, "read") == 0) idle = reader = 1;
            else if (strcmp(optarg, "stream") == 0) idle = 0;
            else usage();
            break;
        case 'c': conns = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 's': body = atoi(optarg); break;
        case 'T': type = (int)strtol(optarg, NULL, 0); break;
        case 'd': connect_delay_us = atoi(optarg); break;
        case 'Z': zmtp = 1; break;
        case 'P': poll_seconds = atof(optarg); break;
        case 'x':
            hello = unhex(optarg, &hello_len);
            break;
        case 'X':
            after = unhex(optarg, &after_len);
            break;
        default: usage();
        }
    }
    if (port <= 0 || conns <= 0 || body <= 0 || (type >= 0 && body < 1)) usage();
    if (zmtp && (body > 255 || type >= 0)) usage();
    signal(SIGPIPE, SIG_IGN);

    /* The frame buffer: whole frames, about STREAM_TARGET bytes. */
    size_t frame_len = (zmtp ? 2 : 4) + (size_t)body;
    size_t frames_per_buffer = STREAM_TARGET / frame_len;
    if (frames_per_buffer < 1) frames_per_buffer = 1;
    size_t buffer_len = frames_per_buffer * frame_len;
    unsigned char *buffer = malloc(buffer_len);
    for (size_t f = 0; f < frames_per_buffer; f++) {
        unsigned char *p = buffer + f * frame_len;
        if (zmtp) {
            p[0] = 0x00; /* a whole message in one short frame */
            p[1] = (unsigned char)body;
            memset(p + 2, 'x', (size_t)body);
            continue;
        }
        p[0] = (unsigned char)(body >> 24);
        p[1] = (unsigned char)(body >> 16);
        p[2] = (unsigned char)(body >> 8);
        p[3] = (unsigned char)body;
        memset(p + 4, 'x', (size_t)body);
        if (type >= 0) p[4] = (unsigned char)type;
    }

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad IPv4 address %s\n", host);
        return 2;
    }

    int ep = epoll_create1(0);
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    int one = 1;
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            perror("loadgen: socket");
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            fprintf(stderr, "loadgen: connect %d: %s\n", i, strerror(errno));
            return 1;
        }
        if (hello_len && send_all_blocking(fd, hello, hello_len) < 0) {
            fprintf(stderr, "loadgen: hello %d: %s\n", i, strerror(errno));
            return 1;
        }
        if (zmtp && (zmtp_handshake(fd) < 0 || (after_len && send_all_blocking(fd, after, after_len) < 0))) {
            fprintf(stderr, "loadgen: ZMTP handshake %d failed\n", i);
            return 1;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        cs[i].fd = fd;
        cs[i].alive = 1;
        struct epoll_event ev;
        ev.events = idle ? EPOLLIN : (EPOLLIN | EPOLLOUT);
        ev.data.u32 = (uint32_t)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (connect_delay_us > 0) usleep((useconds_t)connect_delay_us);
    }
    printf("CONNECTED %d\n", conns);
    fflush(stdout);

    unsigned long long bytes = 0;
    int lost = 0, alive = conns;
    double started = now(), wait0 = runq_wait();
    double deadline = started + seconds;
    double poll_deadline = started + poll_seconds;
    int heard = 0;
    struct epoll_event events[MAX_EVENTS];
    unsigned char scratch[65536];

    while (alive > 0) {
        double left = deadline - now();
        if (left <= 0) break;
        int timeout = (int)(left * 1000) + 1;
        if (timeout > 200) timeout = 200;
        if (heard < conns && poll_deadline > now()) timeout = 0;
        int n = epoll_wait(ep, events, MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("loadgen: epoll_wait");
            break;
        }
        for (int e = 0; e < n; e++) {
            struct conn *c = &cs[events[e].data.u32];
            if (!c->alive) continue;
            int dead = 0;
            if (events[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                for (;;) {
                    ssize_t r = recv(c->fd, scratch, sizeof scratch, MSG_DONTWAIT);
                    if (r > 0) {
                        if (!c->heard) {
                            c->heard = 1;
                            heard++;
                        }
                        if (idle && (zmtp ? (reader ? zmtp_consume(c, scratch, (size_t)r) : 0)
                                     : reader ? read_consume(c, scratch, (size_t)r, type)
                                              : idle_consume(c, scratch, (size_t)r)) < 0) {
                            dead = 1;
                            break;
                        }
                        if ((size_t)r < sizeof scratch) break;
                        continue;
                    }
                    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                        dead = 1;
                    break;
                }
            }
            if (!dead && !idle && (events[e].events & EPOLLOUT)) {
                /* A few batched sends per wake-up, so every connection gets its turn. */
                for (int k = 0; k < 4; k++) {
                    ssize_t w = send(c->fd, buffer + c->offset, buffer_len - c->offset,
                                     MSG_NOSIGNAL | MSG_DONTWAIT);
                    if (w < 0) {
                        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) dead = 1;
                        break;
                    }
                    bytes += (unsigned long long)w;
                    c->offset += (size_t)w;
                    if (c->offset == buffer_len) c->offset = 0;
                    else break; /* partial: the socket buffer is full */
                }
            }
            if (dead) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->alive = 0;
                alive--;
                lost++;
            }
        }
    }
    for (int i = 0; i < conns; i++)
        if (cs[i].alive) close(cs[i].fd);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("SENT frames=%llu bytes=%llu conns_lost=%d elapsed=%.3f cpu=%.3f runq_wait=%.3f\n",
           bytes / frame_len, bytes, lost, now() - started, cpu, runq_wait() - wait0);
    if (reader)
        printf("RECEIVED frames=%llu bytes=%llu conns_lost=%d elapsed=%.3f cpu=%.3f runq_wait=%.3f\n",
               frames_in, bytes_in, lost, now() - started, cpu, runq_wait() - wait0);
    fflush(stdout);
    return 0;
}
