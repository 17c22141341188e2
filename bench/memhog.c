/*
 * memhog: the workload of bench/tuning.py (and of the real-runsc tuning test).
 *
 *     memhog GIB PATTERN DIR        PATTERN: random | zero
 *
 * Maps GIB GiB of anonymous memory and writes every page: random bytes
 * (xorshift64, incompressible) or zeros (a touched page that holds nothing).
 * Then writes DIR/ready ("<fill seconds>") and loops: each time DIR/trigger
 * holds a number G larger than the last one seen, it writes DIR/running.G at
 * once (the container runs again), reads one word of every page (which makes
 * every page come back from a checkpoint image) and checks their sum against
 * the one taken after filling, then writes DIR/done.G ("<seconds> <1 if the
 * memory is intact>").  Static: gcc -O2 -static -o memhog memhog.c
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void put(const char *dir, const char *name, long gen, const char *text) {
    char path[1024], tmp[1024];
    if (gen >= 0)
        snprintf(path, sizeof path, "%s/%s.%ld", dir, name, gen);
    else
        snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        perror(tmp);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

static long trigger(const char *dir) {
    char path[1024], buf[32] = {0};
    snprintf(path, sizeof path, "%s/trigger", dir);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? atol(buf) : 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: memhog GIB random|zero DIR\n");
        return 2;
    }
    size_t bytes = (size_t)(atof(argv[1]) * (double)(1ull << 30));
    int random_pages = strcmp(argv[2], "random") == 0;
    const char *dir = argv[3];
    size_t words = bytes / 8, stride = 4096 / 8;
    uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    double start = now();
    uint64_t x = 88172645463325252ull, sum = 0;
    if (random_pages) {
        for (size_t i = 0; i < words; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            mem[i] = x;
        }
    } else {
        for (size_t i = 0; i < words; i += stride)
            mem[i] = 0;
    }
    for (size_t i = 0; i < words; i += stride)
        sum += mem[i];
    char text[128];
    snprintf(text, sizeof text, "%.6f\n", now() - start);
    put(dir, "ready", -1, text);
    long seen = 0;
    for (;;) {
        long gen = trigger(dir);
        if (gen > seen) {
            seen = gen;
            put(dir, "running", gen, "\n");
            double t0 = now();
            uint64_t s = 0;
            for (size_t i = 0; i < words; i += stride)
                s += ((volatile uint64_t *)mem)[i];
            snprintf(text, sizeof text, "%.6f %d\n", now() - t0, s == sum);
            put(dir, "done", gen, text);
        }
        struct timespec pause = {0, 2 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}
