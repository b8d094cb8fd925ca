/*
 * udpgen.c -- the UDP sender of the netmodels datagram benchmark (udp.py).
 *
 * Built on demand by benchmarks/udp.py into benchmarks/bin/udpgen:
 *     gcc -O2 -Wall -o benchmarks/bin/udpgen benchmarks/udpgen.c
 *
 * Sends small datagrams to HOST:PORT as fast as it can (sendmmsg, BATCH
 * datagrams per call), or at -r RATE datagrams/s, for -t SECONDS, so that
 * the receiver's cost is what is measured. Two modes:
 *
 *   raw  Datagrams of 13 + 5 + BODY bytes of filler: the same size on the
 *        wire as a netmodels DATA datagram carrying a BODY-byte message.
 *
 *   nm   A netmodels datagram session first: INIT -> COOKIE -> OPEN ->
 *        ACCEPT (netmodels/datagram.py), then our HELLO (-x HEX, a whole
 *        frame) as reliable SEGMENT 0, resent until acknowledged; the
 *        server's SEGMENTs are acknowledged. Then DATA datagrams:
 *        0xD0, u64 session, u32 sequence (one more per datagram: the
 *        receiver drops duplicates), then one frame: u32 length (1 + BODY),
 *        type 0x02 (DATA), BODY bytes of filler.
 *
 * Prints "READY" once it is sending, then at the end "SENT datagrams=N
 * bytes=N elapsed=S cpu=S runq_wait=S": its own CPU time, and the time it
 * spent runnable but waiting for a CPU (/proc/thread-self/schedstat).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

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

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (unsigned char)v; v >>= 8; }
}
static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}
static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}
static uint32_t get32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void usage(void) {
    fprintf(stderr, "usage: udpgen -p PORT [-h HOST] [-m raw|nm] [-s BODY] [-t SECONDS] [-r RATE]\n"
                    "              [-b BATCH] [-x HELLO_HEX]\n");
    exit(2);
}

/* nm mode: acknowledge the server's reliable segments (its HELLO), note ACKs of ours. */
static uint64_t session_id = 0;
static uint32_t server_expected = 0; /* next server segment we expect */
static int hello_acked = 0;

static void drain(int fd) {
    unsigned char in[2048];
    for (;;) {
        ssize_t n = recv(fd, in, sizeof in, MSG_DONTWAIT);
        if (n <= 0) return;
        if (n >= 14 && in[0] == 0xD1 && get64(in + 1) == session_id) {
            uint32_t seq = get32(in + 9);
            if (seq == server_expected) server_expected++;
            unsigned char ack[21];
            ack[0] = 0xD2;
            put64(ack + 1, session_id);
            put32(ack + 9, server_expected);
            put64(ack + 13, 0);
            send(fd, ack, sizeof ack, 0);
        } else if (n == 21 && in[0] == 0xD2 && get64(in + 1) == session_id) {
            if (get32(in + 9) >= 1) hello_acked = 1;
        }
    }
}

/* Send `out` until a datagram of `kind` and `size` arrives; returns its length or -1. */
static ssize_t exchange(int fd, const unsigned char *out, size_t out_len, int kind, size_t size,
                        unsigned char *in, size_t in_cap) {
    for (int attempt = 0; attempt < 40; attempt++) {
        send(fd, out, out_len, 0);
        double until = now() + 0.25;
        while (now() < until) {
            struct pollfd p = {fd, POLLIN, 0};
            if (poll(&p, 1, 50) <= 0) continue;
            ssize_t n = recv(fd, in, in_cap, MSG_DONTWAIT);
            if (n == (ssize_t)size && in[0] == kind) return n;
        }
    }
    return -1;
}

static int handshake(int fd, const unsigned char *hello, size_t hello_len) {
    unsigned char init[64] = {0}, in[2048], open_[30];
    uint64_t nonce = ((uint64_t)getpid() << 32) ^ (uint64_t)(now() * 1e6);
    init[0] = 0xC1;
    init[1] = 1;
    put64(init + 2, nonce);
    /* COOKIE: 0xC2, u64 nonce, u32 issued, 16-byte MAC (29 bytes). */
    if (exchange(fd, init, sizeof init, 0xC2, 29, in, sizeof in) < 0) return -1;
    open_[0] = 0xC3;
    open_[1] = 1;
    memcpy(open_ + 2, in + 1, 8 + 4 + 16);
    /* ACCEPT: 0xC4, u64 nonce, u64 session (17 bytes). */
    if (exchange(fd, open_, sizeof open_, 0xC4, 17, in, sizeof in) < 0) return -1;
    session_id = get64(in + 9);
    /* Our HELLO as reliable SEGMENT 0: 0xD1, u64 session, u32 sequence, u8 flags. */
    unsigned char *segment = malloc(14 + hello_len);
    segment[0] = 0xD1;
    put64(segment + 1, session_id);
    put32(segment + 9, 0);
    segment[13] = 0;
    memcpy(segment + 14, hello, hello_len);
    for (int attempt = 0; attempt < 40 && !(hello_acked && server_expected >= 1); attempt++) {
        send(fd, segment, 14 + hello_len, 0);
        double until = now() + 0.25;
        while (now() < until && !(hello_acked && server_expected >= 1)) {
            struct pollfd p = {fd, POLLIN, 0};
            if (poll(&p, 1, 20) > 0) drain(fd);
        }
    }
    free(segment);
    return hello_acked && server_expected >= 1 ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, body = 64, nm = 0, batch = 64;
    double seconds = 5.0, rate = 0;
    unsigned char *hello = NULL;
    size_t hello_len = 0;
    int opt;
    while ((opt = getopt(argc, argv, "h:p:m:s:t:r:b:x:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'm':
            if (strcmp(optarg, "nm") == 0) nm = 1;
            else if (strcmp(optarg, "raw") == 0) nm = 0;
            else usage();
            break;
        case 's': body = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'b': batch = atoi(optarg); break;
        case 'x': {
            size_t n = strlen(optarg);
            if (n % 2) usage();
            hello_len = n / 2;
            hello = malloc(hello_len);
            for (size_t i = 0; i < hello_len; i++) {
                int hi = hexval(optarg[2 * i]), lo = hexval(optarg[2 * i + 1]);
                if (hi < 0 || lo < 0) usage();
                hello[i] = (unsigned char)(hi * 16 + lo);
            }
            break;
        }
        default: usage();
        }
    }
    if (port <= 0 || body < 1 || batch < 1 || batch > MAX_BATCH || (nm && !hello)) usage();

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "udpgen: bad IPv4 address %s\n", host);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udpgen: socket/connect");
        return 1;
    }
    if (nm && handshake(fd, hello, hello_len) < 0) {
        fprintf(stderr, "udpgen: netmodels handshake failed\n");
        return 1;
    }

    size_t size = 13 + 5 + (size_t)body;
    unsigned char *buffers = calloc(MAX_BATCH, size);
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < batch; i++) {
        unsigned char *p = buffers + (size_t)i * size;
        memset(p, 'x', size);
        if (nm) {
            p[0] = 0xD0;
            put64(p + 1, session_id);
            put32(p + 13, (uint32_t)(1 + body));
            p[17] = 0x02;
        }
        iov[i].iov_base = p;
        iov[i].iov_len = size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    printf("READY session=%llu\n", (unsigned long long)session_id);
    fflush(stdout);
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double wait0 = runq_wait();
    double start = now(), end = start + seconds, t = start;
    unsigned long long sent = 0, errors = 0;
    uint32_t sequence = 0;
    unsigned loops = 0;
    while (t < end) {
        if (nm) {
            for (int i = 0; i < batch; i++) put32(buffers + (size_t)i * size + 9, sequence++);
        }
        int n = sendmmsg(fd, msgs, (unsigned)batch, 0);
        if (n < 0) {
            errors++;
            if (nm) sequence -= (uint32_t)batch;
        } else {
            sent += (unsigned long long)n;
            if (nm) sequence -= (uint32_t)(batch - n);
        }
        if ((++loops & 63) == 0 && nm) drain(fd);
        t = now();
        if (rate > 0) {
            double due = start + sent / rate;
            while (t < due && t < end) {
                struct timespec ts = {0, 50000};
                nanosleep(&ts, NULL);
                t = now();
            }
        }
    }
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    printf("SENT datagrams=%llu bytes=%llu errors=%llu elapsed=%.3f cpu=%.3f runq_wait=%.3f\n", sent,
           sent * size, errors, now() - start, cpu, runq_wait() - wait0);
    fflush(stdout);
    close(fd);
    return 0;
}
