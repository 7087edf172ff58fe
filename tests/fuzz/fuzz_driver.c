/*
 * fuzz_driver.c - runs a libFuzzer target without libFuzzer (gcc builds):
 * every file of a seed corpus, then a fixed number of mutations of them
 * (bit flips, byte changes, insertions, deletions, splices) from a fixed
 * seed, so a run is repeatable. Not coverage-guided: a clang build with
 * -fsanitize=fuzzer (ORDERS_FUZZ=ON) runs the same target under libFuzzer.
 *
 * Usage: fuzz_driver CORPUS_DIR [ITERATIONS]
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_INPUT 4096
#define MAX_SEEDS 256

typedef struct {
    uint8_t *data;
    size_t len;
} input;

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rng(void)
{
    /* xorshift64*: small, fast, reproducible */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

static int load(const char *dir, input *seeds)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL && n < MAX_SEEDS) {
        char path[1024];
        FILE *f;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        f = fopen(path, "rb");
        if (!f)
            continue;
        seeds[n].data = malloc(FUZZ_MAX_INPUT);
        seeds[n].len = fread(seeds[n].data, 1, FUZZ_MAX_INPUT, f);
        fclose(f);
        n++;
    }
    closedir(d);
    return n;
}

static size_t mutate(uint8_t *buf, size_t len, const input *other)
{
    int rounds = 1 + (int)(rng() % 4);
    for (int r = 0; r < rounds; r++) {
        size_t pos = len ? rng() % len : 0;
        switch (rng() % 6) {
        case 0: /* flip a bit */
            if (len)
                buf[pos] ^= (uint8_t)(1u << (rng() % 8));
            break;
        case 1: /* an interesting byte */
            if (len) {
                static const uint8_t bytes[] = {'"', '{', '}', '[', ']', ',',  ':',  '\\',
                                                '0', '-', 'e', '.', 0,   0xff, 0xc3, ' '};
                buf[pos] = bytes[rng() % sizeof(bytes)];
            }
            break;
        case 2: /* insert */
            if (len < FUZZ_MAX_INPUT) {
                memmove(buf + pos + 1, buf + pos, len - pos);
                buf[pos] = (uint8_t)rng();
                len++;
            }
            break;
        case 3: /* delete */
            if (len) {
                memmove(buf + pos, buf + pos + 1, len - pos - 1);
                len--;
            }
            break;
        case 4: /* splice in a slice of another seed */
            if (other->len) {
                size_t from = rng() % other->len, n = 1 + rng() % (other->len - from);
                if (pos + n > FUZZ_MAX_INPUT)
                    n = FUZZ_MAX_INPUT - pos;
                memcpy(buf + pos, other->data + from, n);
                if (pos + n > len)
                    len = pos + n;
            }
            break;
        default: /* truncate */
            len = pos;
        }
    }
    return len;
}

int main(int argc, char **argv)
{
    static input seeds[MAX_SEEDS];
    static uint8_t buf[FUZZ_MAX_INPUT];
    long iterations = argc > 2 ? strtol(argv[2], NULL, 10) : 20000;
    int n;

    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR [ITERATIONS]\n", argv[0]);
        return 2;
    }
    n = load(argv[1], seeds);
    if (n <= 0) {
        fprintf(stderr, "fuzz_driver: no seeds in %s\n", argv[1]);
        return 2;
    }
    for (int i = 0; i < n; i++)
        LLVMFuzzerTestOneInput(seeds[i].data, seeds[i].len);
    for (long i = 0; i < iterations; i++) {
        const input *s = &seeds[rng() % (uint64_t)n];
        memcpy(buf, s->data, s->len);
        size_t len = mutate(buf, s->len, &seeds[rng() % (uint64_t)n]);
        LLVMFuzzerTestOneInput(buf, len);
    }
    printf("fuzz_driver: %d seeds, %ld mutations, no crash\n", n, iterations);
    for (int i = 0; i < n; i++)
        free(seeds[i].data);
    return 0;
}
