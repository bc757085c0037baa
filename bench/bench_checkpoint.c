/* bench_checkpoint.c - seconds to save and to load a checkpoint (checkpoint/)
 * of a synthetic model: weights plus Adam m and v, so 3x the weight bytes.
 *
 *   bench_checkpoint --dir DIR --mb WEIGHT_MB [--repeats R]   (from the repository root)
 * prints {"bytes":..., "save_s":..., "load_s":...} (medians); load is resolve
 * (every file's CRC32C) + weights + optimizer state, from the page cache
 * right after the save. bench/bench_checkpoint.sh puts it beside dd. */
#include "../checkpoint/ckpt.h"
#include "../common/json_file.h"
#include "../common/timing.h"
#include "../nn/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *dir = NULL;
    int mb = 64, repeats = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--dir") == 0)
            dir = argv[i + 1];
        else if (strcmp(argv[i], "--mb") == 0)
            mb = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--repeats") == 0)
            repeats = atoi(argv[i + 1]);
        else
            die_input("bench_checkpoint: unknown flag %s", argv[i]);
    }
    if (!dir || mb < 1 || repeats < 1) die_input("usage: bench_checkpoint --dir DIR --mb WEIGHT_MB [--repeats R]");
    dist_init(&argc, &argv);
    param_set ps = {0};
    for (int i = 0; i < mb; i++) { /* 1 MB tensors */
        char name[32];
        snprintf(name, sizeof name, "layer.%d.weight", i);
        params_add(&ps, name, 2, (int64_t[]){256, 1024}, 1);
    }
    params_alloc(&ps);
    size_t off, count;
    dist_part(ps.numel, dist_rank(), dist_size(), &off, &count);
    float *m = xmalloc(sizeof(float) * count), *v = xmalloc(sizeof(float) * count);
    for (size_t i = 0; i < ps.numel; i++) ps.w[i] = (float)i;
    for (size_t i = 0; i < count; i++) m[i] = v[i] = (float)(off + i);
    char err[ERR_LEN], path[4096];
    cJSON *config = json_read_object("configs/tiny.json", err); /* only written as config.json */
    if (!config) die_input("%s", err);
    double *save_t = xmalloc(sizeof(double) * repeats), *load_t = xmalloc(sizeof(double) * repeats);
    for (int k = 0; k < repeats; k++) {
        ckpt_save_request r = {.ps = &ps,
                               .config = config,
                               .step = k + 1,
                               .opt_offset = off,
                               .opt_count = count,
                               .m = m,
                               .v = v,
                               .keep = 1};
        double t0 = now_s();
        if (ckpt_save(dir, &r, err)) die("%s", err);
        save_t[k] = now_s() - t0;
        t0 = now_s();
        ckpt_reader rd;
        if (ckpt_resolve(dir, "auto", path, sizeof path, err) || ckpt_open(&rd, path, err) ||
            ckpt_load_weights(&rd, &ps, err) || ckpt_load_optim(&rd, off, count, m, v, NULL, err))
            die("%s", err);
        ckpt_close(&rd);
        load_t[k] = now_s() - t0;
    }
    if (dist_rank() == 0)
        printf("{\"bytes\":%zu,\"ranks\":%d,\"save_s\":%.4f,\"load_s\":%.4f}\n", 3 * ps.numel * sizeof(float),
               dist_size(), median_sorted(save_t, repeats), median_sorted(load_t, repeats));
    cJSON_Delete(config);
    free(save_t);
    free(load_t);
    free(m);
    free(v);
    params_free(&ps);
    dist_finalize();
    return 0;
}
