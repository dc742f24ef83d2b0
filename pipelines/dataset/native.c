/* Loops of the dataset builder over the bytes of many texts at once, loaded through ctypes by
 * pipelines/dataset/native.py; each gives the numbers of a numpy twin in Python.
 *
 * minhash_bins: the MinHash bins of UTF-8 texts in one pass over their bytes, as pipelines/dataset/dedup.py works
 * them out with numpy (_words and _numpy_bins):
 * - a word is a run of bytes with word_table[b] == 1, its hash the sum of b_k * P^k over its bytes (k from 0,
 *   modulo 2^64), worked out in two lanes (even and odd bytes) so that the multiplications do not wait on each other;
 * - a 5-gram of words w0..w4 is ((((w0 * Q + w1) * Q + w2) * Q + w3) * Q + w4), mixed with splitmix64's finaliser;
 * - its top 7 bits pick one of 128 bins, which keeps the smallest low 32 bits.
 * A text with fewer than min_words words has every bin left empty.
 *
 * line_stats: see below; pair_matches: how many of two signatures' values are equal, for many pairs; band_buckets:
 * the LSH buckets of signatures (dedup.band_buckets_many). */
#include <stdint.h>
#include <string.h>

#define BINS 128

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* texts: texts[t] .. texts[t] + sizes[t] for t < n; values (n * BINS, each 0xFFFFFFFF on entry), filled
 * (n * BINS, zero on entry) and words (n) are written. */
void minhash_bins(const uint8_t *const *texts, const int64_t *sizes, int64_t n, const uint8_t *word_table, uint64_t p,
                  uint64_t q, int64_t min_words, uint32_t *values, uint8_t *filled, int64_t *words) {
    const uint64_t p2 = p * p, q2 = q * q, q3 = q2 * q, q4 = q3 * q;
    for (int64_t t = 0; t < n; t++) {
        const uint8_t *at = texts[t], *end = texts[t] + sizes[t];
        uint32_t *value = values + t * BINS;
        uint8_t *fill = filled + t * BINS;
        uint64_t w0 = 0, w1 = 0, w2 = 0, w3 = 0;
        int64_t count = 0;
        for (;;) {
            while (at < end && !word_table[*at]) at++;
            if (at >= end) break;
            uint64_t even = 0, odd = 0, power = 1;
            while (at + 1 < end && word_table[at[0]] && word_table[at[1]]) {
                even += (uint64_t)at[0] * power;
                odd += (uint64_t)at[1] * power;
                power *= p2;
                at += 2;
            }
            uint64_t h = even + odd * p;
            if (at < end && word_table[*at]) h += (uint64_t)*at++ * power;
            if (++count >= 5) {
                uint64_t x = mix64(w0 * q4 + w1 * q3 + w2 * q2 + w3 * q + h);
                unsigned bin = (unsigned)(x >> 57);
                uint32_t low = (uint32_t)x;
                if (low < value[bin]) value[bin] = low;
                fill[bin] = 1;
            }
            w0 = w1, w1 = w2, w2 = w3, w3 = h;
        }
        words[t] = count;
        if (count < min_words) {
            memset(value, 0xFF, BINS * sizeof *value);
            memset(fill, 0, BINS);
        }
    }
}

/* Each byte of w that is not ASCII or is one of \v \f \r \x1c \x1d \x1e has its top bit set in the result (the others
 * clear): the bytes of the low 7 bits strictly between 0x0a and 0x0e, or 0x1b and 0x1f, found eight at a time. */
static inline uint64_t odd_bytes(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    const uint64_t x = w & ~high;
#define BETWEEN(m, n) ((ones * (127 + (n)) - x) & ~w & (x + ones * (127 - (m))) & high)
    return (w & high) | BETWEEN(0x0a, 0x0e) | BETWEEN(0x1b, 0x1f);
#undef BETWEEN
}

/* line_stats: line lengths as str.splitlines cuts an ASCII text that breaks lines only at \n: for each text, its
 * longest line and its number of lines (a final \n ends no extra line), and simple = 0 where it holds a byte that is
 * not ASCII or another line break of str.splitlines (\r \v \f \x1c \x1d \x1e), whose lines are then for Python to
 * measure. The odd bytes are looked for eight at a time, the newlines with memchr. */
void line_stats(const uint8_t *const *texts, const int64_t *sizes, int64_t n, int64_t *longest, int64_t *lines,
                uint8_t *simple) {
    static const uint8_t other[256] = {['\r'] = 1, ['\v'] = 1, ['\f'] = 1, [0x1c] = 1, [0x1d] = 1, [0x1e] = 1,
                                       [128 ... 255] = 1};
    for (int64_t t = 0; t < n; t++) {
        const uint8_t *begin = texts[t], *end = texts[t] + sizes[t], *at = begin;
        uint64_t odd = 0;
        for (; end - at >= 8; at += 8) {
            uint64_t w;
            memcpy(&w, at, 8);
            odd |= odd_bytes(w);
        }
        for (; at < end; at++) odd |= other[*at];
        int64_t top = 0, count = 0;
        const uint8_t *start = begin, *newline;
        while ((newline = memchr(start, '\n', (size_t)(end - start))) != NULL) {
            if (newline - start > top) top = newline - start;
            start = newline + 1;
            count++;
        }
        if (end - start > top) top = end - start;
        longest[t] = top;
        lines[t] = count + 1 - (end > begin && end[-1] == '\n');
        simple[t] = !odd;
    }
}

/* pair_matches: for each pair k of rows (pairs[2k], pairs[2k + 1]) of sigs (rows of BINS values), the number of
 * positions where the two rows hold the same value (dedup.pair_similarities without the 2 x 128 x 4 bytes a pair
 * that numpy gathers first). */
void pair_matches(const uint32_t *sigs, const int64_t *pairs, int64_t m, int64_t *same) {
    for (int64_t k = 0; k < m; k++) {
        const uint32_t *a = sigs + pairs[2 * k] * BINS, *b = sigs + pairs[2 * k + 1] * BINS;
        int64_t count = 0;
        for (int i = 0; i < BINS; i++) count += a[i] == b[i];
        same[k] = count;
    }
}

/* band_buckets: for each of n signatures (rows of BINS values) and each of its bands of `rows` values, the xor of
 * mix64(value * weights[r]) over the band's values r, as dedup.band_buckets_many works them out with numpy. */
void band_buckets(const uint32_t *sigs, int64_t n, const uint64_t *weights, int64_t rows, int64_t *out) {
    const int64_t bands = BINS / rows;
    for (int64_t t = 0; t < n; t++) {
        const uint32_t *sig = sigs + t * BINS;
        for (int64_t b = 0; b < bands; b++) {
            uint64_t x = 0;
            for (int64_t r = 0; r < rows; r++) x ^= mix64((uint64_t)sig[b * rows + r] * weights[r]);
            out[t * bands + b] = (int64_t)x;
        }
    }
}
