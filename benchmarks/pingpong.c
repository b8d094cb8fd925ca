/*
 * pingpong.c -- the C ceiling of the request/response benchmark (rr.py).
 *
 * Built on demand by benchmarks/common.py into benchmarks/bin/pingpong:
 *     gcc -O2 -Wall -o benchmarks/bin/pingpong benchmarks/pingpong.c
 *
 * The same workload as the Python ends of rr.py, with nothing but blocking
 * system calls: one TCP connection (TCP_NODELAY), frames of a 4-byte
 * big-endian length and a BODY-byte payload, one request in flight.
 *
 *   server  Listen on 127.0.0.1 (port chosen by the kernel), print
 *           "READY <port>", accept one connection and echo every frame. The
 *           warm-up starts at the first frame; after it the echo count, CPU
 *           time and run-queue wait are sampled, and again SECONDS later; it
 *           then prints "RESULT {json}" (the fields of common.Window) and
 *           keeps echoing until the client closes (if the client closes
 *           first, the window still closes on time, as a reactor timer would).
 *   client  Connect to PORT and ping-pong; the same window, plus the latency
 *           of every round trip in it (p50, p99), then "RESULT {json}".
 *
 *     pingpong -m server [-w WARMUP] [-t SECONDS] [-s BODY]
 *     pingpong -m client -p PORT [-w WARMUP] [-t SECONDS] [-s BODY]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static double runq_wait(void) {
    unsigned long long run = 0, wait = 0;
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    if (!f) return 0;
    if (fscanf(f, "%llu %llu", &run, &wait) != 2) wait = 0;
    fclose(f);
    return wait / 1e9;
}

static int send_all(int fd, const unsigned char *data, size_t len) {
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

/*
 * One frame in, whole: returns its body length, or -1 when the peer is gone.
 * One request is in flight, so a recv() never holds more than this frame:
 * read as much as comes (usually the whole frame in one system call).
 */
static long recv_frame(int fd, unsigned char *frame, size_t capacity) {
    size_t have = 0;
    for (;;) {
        if (have >= 4) {
            uint32_t length =
                ((uint32_t)frame[0] << 24) | ((uint32_t)frame[1] << 16) | ((uint32_t)frame[2] << 8) | frame[3];
            if (length + 4 > capacity) return -1;
            if (have == length + 4) return (long)length;
            if (have > length + 4) return -1; /* more than one frame in flight: not this workload */
        }
        ssize_t n = recv(fd, frame + have, capacity - have, 0);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            return -1;
        }
        have += (size_t)n;
    }
}

struct window {
    double warmup, seconds;
    double opened, cpu0, wait0;
    unsigned long long count0;
    int state; /* 0 warm-up not started, 1 warming up, 2 measuring, 3 done */
    double next;
};

static void window_tick(struct window *w, unsigned long long count, double t) {
    if (w->state == 0) {
        w->state = 1;
        w->next = t + w->warmup;
    } else if (w->state == 1 && t >= w->next) {
        w->state = 2;
        w->opened = t;
        w->cpu0 = cpu_seconds();
        w->wait0 = runq_wait();
        w->count0 = count;
        w->next = t + w->seconds;
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(struct window *w, unsigned long long count, double t, double *samples, size_t n) {
    double elapsed = t - w->opened, cpu = cpu_seconds() - w->cpu0, wait = runq_wait() - w->wait0;
    unsigned long long done = count - w->count0;
    printf("RESULT {\"elapsed\": %.6f, \"count\": %llu, \"rate\": %.3f, \"cpu\": %.6f, \"cpu_util\": %.6f, "
           "\"cpu_us_per_op\": %.6f, \"runq_wait\": %.6f",
           elapsed, done, done / elapsed, cpu, cpu / elapsed, done ? cpu / done * 1e6 : 0.0, wait / elapsed);
    if (samples != NULL) {
        qsort(samples, n, sizeof *samples, cmp_double);
        double p50 = n ? samples[(size_t)(0.50 * (n - 1) + 0.5)] : 0, p99 = n ? samples[(size_t)(0.99 * (n - 1) + 0.5)] : 0;
        printf(", \"p50_us\": %.3f, \"p99_us\": %.3f, \"samples\": %zu", p50 * 1e6, p99 * 1e6, n);
    }
    printf("}\n");
    fflush(stdout);
    w->state = 3;
}

int main(int argc, char **argv) {
    const char *mode = NULL;
    int port = 0, body = 32, opt;
    struct window w = {1.0, 3.0, 0, 0, 0, 0, 0, 0};
    while ((opt = getopt(argc, argv, "m:p:w:t:s:")) != -1) {
        switch (opt) {
        case 'm': mode = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'w': w.warmup = atof(optarg); break;
        case 't': w.seconds = atof(optarg); break;
        case 's': body = atoi(optarg); break;
        default: goto usage;
        }
    }
    if (mode == NULL || body <= 0 || body > 65536) goto usage;
    signal(SIGPIPE, SIG_IGN);
    int one = 1;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    size_t capacity = 4 + (size_t)body;
    unsigned char *frame = malloc(capacity);
    unsigned long long count = 0;

    if (strcmp(mode, "server") == 0) {
        int listener = socket(AF_INET, SOCK_STREAM, 0);
        socklen_t len = sizeof addr;
        if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 16) < 0 ||
            getsockname(listener, (struct sockaddr *)&addr, &len) < 0) {
            perror("pingpong: listen");
            return 1;
        }
        printf("READY %d\n", ntohs(addr.sin_port));
        fflush(stdout);
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            perror("pingpong: accept");
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        long n;
        while ((n = recv_frame(fd, frame, capacity)) >= 0) {
            count++;
            if (send_all(fd, frame, 4 + (size_t)n) < 0) break;
            if (w.state < 3) {
                double t = now();
                if (w.state == 2 && t >= w.next) report(&w, count, t, NULL, 0);
                else window_tick(&w, count, t);
            }
        }
        /* The client left before the window closed (its window started a round trip earlier):
         * close it on time, as a reactor timer would. */
        if (w.state == 2) {
            double left = w.next - now();
            if (left > 0) usleep((useconds_t)(left * 1e6));
            report(&w, count, now(), NULL, 0);
        }
        return 0;
    }
    if (strcmp(mode, "client") == 0 && port > 0) {
        addr.sin_port = htons((uint16_t)port);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            perror("pingpong: connect");
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        frame[0] = (unsigned char)(body >> 24);
        frame[1] = (unsigned char)(body >> 16);
        frame[2] = (unsigned char)(body >> 8);
        frame[3] = (unsigned char)body;
        memset(frame + 4, 'p', (size_t)body);
        size_t samples_cap = 1 << 20, n = 0;
        double *samples = malloc(samples_cap * sizeof *samples);
        unsigned char *reply = malloc(capacity);
        double sent_at = now();
        window_tick(&w, count, sent_at);
        while (w.state < 3) {
            if (send_all(fd, frame, capacity) < 0 || recv_frame(fd, reply, capacity) < 0) {
                fprintf(stderr, "pingpong: the server went away\n");
                return 1;
            }
            double t = now();
            count++;
            if (w.state == 2) {
                if (n == samples_cap) {
                    samples_cap *= 2;
                    samples = realloc(samples, samples_cap * sizeof *samples);
                }
                samples[n++] = t - sent_at;
                if (t >= w.next) report(&w, count, t, samples, n);
            } else {
                window_tick(&w, count, t);
            }
            sent_at = t;
        }
        close(fd);
        return 0;
    }
usage:
    fprintf(stderr, "usage: pingpong -m server|client [-p PORT] [-w WARMUP] [-t SECONDS] [-s BODY]\n");
    return 2;
}
