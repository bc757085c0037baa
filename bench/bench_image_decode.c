/* bench_image_decode.c - images/s of the VAE service's input path on one
 * core: decode (WebP, PNG, JPEG) + alpha on white + center crop + resize
 * (vae/image_decode.c, image_decode), over files held in memory.
 *
 *   bench_image_decode --size S [--repeats R] FILE...
 * prints {"images_per_s":..., "files":N, "size":S}. bench/bench_vae.sh runs
 * it beside dwebp on the same files. */
#include "../vae/image_decode.h"
#include "../common/timing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    int size = 64, repeats = 5, first = 1;
    while (first + 1 < argc && strncmp(argv[first], "--", 2) == 0) {
        if (strcmp(argv[first], "--size") == 0)
            size = atoi(argv[first + 1]);
        else if (strcmp(argv[first], "--repeats") == 0)
            repeats = atoi(argv[first + 1]);
        else
            die_input("bench_image_decode: unknown flag %s", argv[first]);
        first += 2;
    }
    int n = argc - first;
    if (n < 1 || size < 1 || repeats < 1) die_input("usage: bench_image_decode --size S [--repeats R] FILE...");
    unsigned char **data = xcalloc(n, sizeof *data);
    size_t *len = xcalloc(n, sizeof *len);
    for (int i = 0; i < n; i++) {
        FILE *f = fopen(argv[first + i], "rb");
        if (!f) die_input("%s: cannot open", argv[first + i]);
        fseek(f, 0, SEEK_END);
        len[i] = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        data[i] = xmalloc(len[i] + 1);
        if (fread(data[i], 1, len[i], f) != len[i]) die_input("%s: cannot read", argv[first + i]);
        fclose(f);
    }
    float *rgb = xmalloc(sizeof(float) * 3 * size * size);
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        double t0 = now_s();
        for (int i = 0; i < n; i++) {
            skip_reason why;
            if (image_decode(data[i], len[i], size, rgb, &why))
                die_input("%s: %s", argv[first + i], skip_reason_name(why));
        }
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    printf("{\"images_per_s\":%.1f,\"files\":%d,\"size\":%d}\n", n / best, n, size);
    for (int i = 0; i < n; i++) free(data[i]);
    free(data);
    free(len);
    free(rgb);
    return 0;
}
