/* test_checkpoint.c - checkpoint/: bitwise round trip (the EMA's too), the
 * index's content, the choice of weights for readers, fallback past a
 * corrupt or incomplete checkpoint, retention, a failed save (disk full,
 * unwritable folder) and a save killed at random moments leaving the
 * previous checkpoint intact, and the stop-signal flag.
 *
 * With arguments it is the helper of test_checkpoint.sh (run under mpirun):
 *   test_checkpoint save DIR STEP SEED [FAIL_RANK]
 *                                        tiny model (configs/tiny.json) with
 *                                        weights of `seed`, Adam state and EMA
 *                                        value(i); FAIL_RANK's disk is "full"
 *   test_checkpoint load DIR SEED        resume auto; checks the weights, the
 *                                        whole EMA, this rank's part of the
 *                                        Adam state and an odd range, exit 0
 *                                        when exact
 *   test_checkpoint batch OUT SEED       a generated batch file */
#include "check.h"
#include "../checkpoint/ckpt.h"
#include "../checkpoint/folder.h"
#include "../nn/stop_signal.h"
#include "../common/crc32c.h"
#include "../common/json_file.h"
#include "../common/timing.h"
#include "../nn/dist.h"
#include "../trainer/model.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The Adam state every test writes: a hash of the flat index, so any
 * misplaced range shows. */
static float value(size_t i, unsigned salt) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ salt;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (float)(x >> 40) / 16777216.0f;
}

static void fill(float *a, size_t offset, size_t n, unsigned salt) {
    for (size_t i = 0; i < n; i++) a[i] = value(offset + i, salt);
}

static int same_values(const float *a, size_t offset, size_t n, unsigned salt) {
    for (size_t i = 0; i < n; i++)
        if (a[i] != value(offset + i, salt)) return 0;
    return 1;
}

static void tiny_model(model *m, unsigned long long seed) {
    model_config c;
    char err[ERR_LEN];
    if (config_load("configs/tiny.json", &c, err)) die("%s", err);
    model_create(m, &c);
    model_init_weights(m, seed);
}

/* Saves step `step` of m with this rank's even part of the Adam state, and
 * with `ema` the EMA of its shard (value(i, 4)). */
static int save(const char *dir, long step, const model *m, int keep, int keep_every, const ckpt_extra *extras,
                int n_extras, int ema, char *err) {
    size_t off, count, eoff, ecount;
    dist_part(m->ps.numel, dist_rank(), dist_size(), &off, &count);
    ckpt_shard_range(&m->ps, dist_rank(), dist_size(), &eoff, &ecount);
    float *mo = xmalloc(sizeof(float) * (count + 1)), *vo = xmalloc(sizeof(float) * (count + 1));
    float *avg = ema ? xmalloc(sizeof(float) * (ecount + 1)) : NULL;
    fill(mo, off, count, 1);
    fill(vo, off, count, 2);
    if (avg) fill(avg, eoff, ecount, 4);
    cJSON *state = cJSON_CreateObject();
    cJSON_AddNumberToObject(state, "positions_seen", step * 1000.0);
    cJSON_AddStringToObject(cJSON_AddObjectToObject(state, "loader"), "fingerprint", "abc123");
    cJSON *config = config_json(&m->cfg);
    ckpt_save_request r = {.ps = &m->ps,
                           .config = config,
                           .step = step,
                           .opt_offset = off,
                           .opt_count = count,
                           .m = mo,
                           .v = vo,
                           .ema = avg,
                           .state = state,
                           .extras = extras,
                           .n_extras = n_extras,
                           .keep = keep,
                           .keep_every = keep_every};
    int rc = ckpt_save(dir, &r, err);
    cJSON_Delete(state);
    cJSON_Delete(config);
    free(mo);
    free(vo);
    free(avg);
    return rc;
}

/* Writes past 4 KB fail with EFBIG (a full disk, even for root). */
static void limit_file_size(void) {
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &(struct rlimit){4096, 4096});
}

static char root[] = "/tmp/test_checkpoint.XXXXXX";

static const char *at(const char *fmt, const char *name) {
    static char path[8][4096];
    static int k;
    k = (k + 1) % 8;
    snprintf(path[k], sizeof path[k], fmt, root, name);
    return path[k];
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) die("cannot write %s", path);
}

/* ckpt_resolve's answer and what it printed on stderr. */
static int resolve(const char *dir, const char *spec, char *path, char *err, char *said, size_t said_len) {
    fflush(stderr);
    int saved = dup(2);
    FILE *cap = tmpfile();
    dup2(fileno(cap), 2);
    int rc = ckpt_resolve(dir, spec, path, 4096, err);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(cap);
    size_t n = fread(said, 1, said_len - 1, cap);
    said[n] = '\0';
    fclose(cap);
    return rc;
}

static int is_link_to(const char *link, const char *target) {
    char buf[256];
    ssize_t n = readlink(link, buf, sizeof buf - 1);
    if (n < 0) return 0;
    buf[n] = '\0';
    return strcmp(buf, target) == 0;
}

static void test_round_trip(void) {
    model m, back;
    char err[ERR_LEN], path[4096];
    tiny_model(&m, 5);
    write_text(at("%s/%s", "tokenizer.model"), "sentencepiece bytes");
    ckpt_extra extra = {"tokenizer.model", at("%s/%s", "tokenizer.model")};
    int rc = save(at("%s/%s", "rt"), 10, &m, 0, 0, &extra, 1, 1, err);
    CHECK(rc == 0, "save writes a checkpoint (%s)", rc ? err : "");
    CHECK(is_link_to(at("%s/%s", "rt/latest"), "step_00000010"), "latest points at step_00000010");
    char said[1024];
    rc = resolve(at("%s/%s", "rt"), "auto", path, err, said, sizeof said);
    CHECK(rc == 0 && strstr(path, "rt/step_00000010"), "resume auto finds it");
    ckpt_reader r;
    rc = ckpt_open(&r, path, err);
    CHECK(rc == 0, "the checkpoint opens (%s)", rc ? err : "");
    if (rc) return;
    tiny_model(&back, 6);
    rc = ckpt_load_weights(&r, &back.ps, err);
    CHECK(rc == 0 && memcmp(back.ps.w, m.ps.w, sizeof(float) * m.ps.numel) == 0, "weights round-trip bitwise");
    size_t n = m.ps.numel;
    float *mo = xmalloc(sizeof(float) * n), *vo = xmalloc(sizeof(float) * n);
    rc = ckpt_load_optim(&r, 0, n, mo, vo, NULL, err);
    CHECK(rc == 0 && same_values(mo, 0, n, 1) && same_values(vo, 0, n, 2), "Adam moments round-trip bitwise");
    CHECK(ckpt_load_optim(&r, 0, n, mo, vo, mo, err) != 0 && strstr(err, "no master"),
          "asking for master weights that were not saved is an error");
    CHECK(ckpt_load_optim(&r, n - 1, 2, mo, vo, NULL, err) != 0 && strstr(err, "outside"),
          "a range past the end is an error");
    rc = ckpt_load_ema(&r, &back.ps, mo, err);
    CHECK(r.has_ema && ckpt_has_ema(path) && rc == 0 && same_values(mo, 0, n, 4),
          "the EMA round-trips bitwise, under the weights' tensor names");
    ckpt_weights used;
    rc = ckpt_load_chosen(&r, &back.ps, CKPT_AUTO, &used, err);
    CHECK(rc == 0 && used == CKPT_EMA && same_values(back.ps.w, 0, n, 4), "readers get the EMA by default");
    rc = ckpt_load_chosen(&r, &back.ps, CKPT_RAW, &used, err);
    CHECK(rc == 0 && used == CKPT_RAW && memcmp(back.ps.w, m.ps.w, sizeof(float) * n) == 0,
          "... and the weights when they ask for raw");
    const cJSON *st = r.state;
    CHECK(r.step == 10 && r.world_size == 1 && r.numel == n, "step, world size and size are recorded");
    CHECK(cJSON_GetObjectItem(st, "step")->valuedouble == 10 &&
              cJSON_GetObjectItem(st, "positions_seen")->valuedouble == 10000 &&
              strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(st, "loader"), "fingerprint")->valuestring, "abc123") == 0,
          "trainer_state.json keeps the caller's fields plus step");
    model_config saved;
    CHECK(config_load(at("%s/%s", "rt/step_00000010/config.json"), &saved, err) == 0 &&
              saved.vocab_size == m.cfg.vocab_size && saved.boi_token_id == m.cfg.boi_token_id &&
              saved.eoi_token_id == m.cfg.eoi_token_id && cJSON_IsObject(r.config),
          "config.json records the model and its special tokens");
    uint32_t a, b;
    CHECK(crc32c_file(at("%s/%s", "tokenizer.model"), &a, err) == 0 &&
              crc32c_file(at("%s/%s", "rt/step_00000010/tokenizer.model"), &b, err) == 0 && a == b,
          "the extra file is copied in");
    free(mo);
    free(vo);
    ckpt_close(&r);
    model_free(&back);
    model_free(&m);
}

static void test_index(void) {
    char err[ERR_LEN];
    cJSON *idx = json_read_object(at("%s/%s", "rt/step_00000010/model.safetensors.index.json"), err);
    CHECK(idx != NULL, "the index is JSON (%s)", idx ? "" : err);
    if (!idx) return;
    model m;
    tiny_model(&m, 5);
    const cJSON *meta = cJSON_GetObjectItem(idx, "metadata"), *wmap = cJSON_GetObjectItem(idx, "weight_map");
    CHECK(cJSON_GetObjectItem(meta, "total_size")->valuedouble == 4.0 * m.ps.numel,
          "metadata.total_size is the weight bytes");
    int all = cJSON_GetArraySize(wmap) == m.ps.n;
    for (int i = 0; all && i < m.ps.n; i++) {
        const cJSON *f = cJSON_GetObjectItem(wmap, m.ps.info[i].name);
        all = cJSON_IsString(f) && strcmp(f->valuestring, "model-00001-of-00001.safetensors") == 0;
    }
    CHECK(all, "weight_map maps every tensor to its shard");
    const cJSON *emap = cJSON_GetObjectItem(idx, "ema_map");
    all = cJSON_GetArraySize(emap) == m.ps.n;
    for (int i = 0; all && i < m.ps.n; i++) {
        const cJSON *f = cJSON_GetObjectItem(emap, m.ps.info[i].name);
        all = cJSON_IsString(f) && strcmp(f->valuestring, "ema-00001-of-00001.safetensors") == 0;
    }
    CHECK(all, "ema_map maps every tensor to its EMA shard");
    const cJSON *files = cJSON_GetObjectItem(idx, "files"), *e;
    int good = cJSON_GetArraySize(files) == 6; /* config, state, extra, shard, EMA shard, optimizer */
    cJSON_ArrayForEach(e, files) {
        uint32_t crc;
        char hex[9], path[4096];
        snprintf(path, sizeof path, "%s/rt/step_00000010/%s", root, e->string);
        good = good && crc32c_file(path, &crc, err) == 0;
        snprintf(hex, sizeof hex, "%08x", crc);
        good = good && strcmp(cJSON_GetObjectItem(e, "crc32c")->valuestring, hex) == 0;
    }
    CHECK(good, "files holds the CRC32C of all 6 files");
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(idx, "optimizer_parts"), 0);
    CHECK(cJSON_GetObjectItem(p, "offset")->valuedouble == 0 &&
              cJSON_GetObjectItem(p, "count")->valuedouble == m.ps.numel,
          "optimizer_parts records the flat range");
    cJSON_Delete(idx);
    model_free(&m);
}

static void flip_byte(const char *path, long at_byte) {
    FILE *f = fopen(path, "r+b");
    if (!f) die("cannot open %s", path);
    fseek(f, at_byte, SEEK_SET);
    int c = fgetc(f);
    fseek(f, at_byte, SEEK_SET);
    fputc(c ^ 1, f);
    fclose(f);
}

static void test_fallback(void) {
    model m;
    char err[ERR_LEN], path[4096], said[1024];
    tiny_model(&m, 5);
    const char *dir = at("%s/%s", "fb");
    int rc = save(dir, 10, &m, 0, 0, NULL, 0, 0, err) || save(dir, 20, &m, 0, 0, NULL, 0, 0, err);
    CHECK(rc == 0, "two checkpoints saved");
    flip_byte(at("%s/%s", "fb/step_00000020/model-00001-of-00001.safetensors"), 4000);
    rc = resolve(dir, "auto", path, err, said, sizeof said);
    CHECK(rc == 0 && strstr(path, "step_00000010"), "auto skips a checkpoint with a bad CRC for the one before");
    int len = (int)strlen(said);
    CHECK(strstr(said, "step_00000020/model-00001-of-00001.safetensors: CRC32C") &&
              strchr(said, '\n') == said + len - 1,
          "... reporting one line naming the file (%.*s)", len - 1, said);
    rc = resolve(dir, at("%s/%s", "fb/step_00000020"), path, err, said, sizeof said);
    CHECK(rc == -1 && strstr(err, "model-00001-of-00001.safetensors: CRC32C"), "resume PATH refuses it (%s)", err);
    flip_byte(at("%s/%s", "fb/step_00000020/model-00001-of-00001.safetensors"), 4000);
    unlink(at("%s/%s", "fb/step_00000020/trainer_state.json"));
    rc = resolve(dir, "auto", path, err, said, sizeof said);
    CHECK(rc == 0 && strstr(path, "step_00000010") && strstr(said, "trainer_state.json: missing"),
          "auto skips a checkpoint that lacks a file");
    rc = resolve(dir, at("%s/%s", "fb/step_00000020"), path, err, said, sizeof said);
    CHECK(rc == -1 && strstr(err, "trainer_state.json: missing"), "resume PATH names the missing file (%s)", err);
    unlink(at("%s/%s", "fb/step_00000010/model.safetensors.index.json"));
    rc = resolve(dir, "auto", path, err, said, sizeof said);
    CHECK(rc == -1 && strstr(err, "none of its 2"), "auto with no intact checkpoint is an error (%s)", err);
    rc = resolve(at("%s/%s", "empty"), "auto", path, err, said, sizeof said);
    CHECK(rc == 1, "auto in a folder without checkpoints means a fresh start");
    model_free(&m);
}

/* A checkpoint without an EMA, one with a damaged EMA file, and the
 * --weights flag of the readers. */
static void test_ema_choice(void) {
    model m, back;
    char err[ERR_LEN], path[4096], said[1024];
    ckpt_reader r;
    ckpt_weights w, used = CKPT_EMA;
    tiny_model(&m, 5);
    tiny_model(&back, 6);
    const char *dir = at("%s/%s", "ema");
    int rc = save(dir, 10, &m, 0, 0, NULL, 0, 0, err) || save(dir, 20, &m, 0, 0, NULL, 0, 1, err) ||
        ckpt_open(&r, at("%s/%s", "ema/step_00000010"), err);
    CHECK(rc == 0, "checkpoints without and with an EMA saved (%s)", rc ? err : "");
    if (rc) return;
    CHECK(!r.has_ema && !ckpt_has_ema(r.dir) && ckpt_load_ema(&r, &back.ps, back.ps.w, err) != 0 &&
              strstr(err, "no EMA"),
          "without --ema there is no EMA, and asking for it is an error (%s)", err);
    rc = ckpt_load_chosen(&r, &back.ps, CKPT_AUTO, &used, err);
    CHECK(rc == 0 && used == CKPT_RAW && memcmp(back.ps.w, m.ps.w, sizeof(float) * m.ps.numel) == 0,
          "... readers then get the weights by default");
    CHECK(ckpt_load_chosen(&r, &back.ps, CKPT_EMA, &used, err) != 0, "... and an error when they ask for the EMA");
    ckpt_close(&r);
    CHECK(ckpt_weights_parse(NULL, &w, err) == 0 && w == CKPT_AUTO && ckpt_weights_parse("ema", &w, err) == 0 &&
              w == CKPT_EMA && ckpt_weights_parse("raw", &w, err) == 0 && w == CKPT_RAW &&
              ckpt_weights_parse("EMA", &w, err) != 0 && strstr(err, "--weights EMA: expected ema or raw"),
          "--weights takes ema or raw");
    flip_byte(at("%s/%s", "ema/step_00000020/ema-00001-of-00001.safetensors"), 3000);
    rc = resolve(dir, "auto", path, err, said, sizeof said);
    CHECK(rc == 0 && strstr(path, "step_00000010") &&
              strstr(said, "step_00000020/ema-00001-of-00001.safetensors: CRC32C"),
          "a flipped byte in an EMA file fails the checkpoint's verification, naming the file");
    unlink(at("%s/%s", "ema/step_00000020/ema-00001-of-00001.safetensors"));
    CHECK(ckpt_verify(at("%s/%s", "ema/step_00000020"), err) != 0 &&
              strstr(err, "ema-00001-of-00001.safetensors: missing"),
          "... and so does a missing one (%s)", err);
    model_free(&m);
    model_free(&back);
}

static int steps_are(const char *dir, const long *want, int n) {
    char name[64];
    struct stat sb;
    int count = 0;
    for (long s = 0; s <= 100; s++) {
        snprintf(name, sizeof name, "%s/step_%08ld", dir, s);
        count += stat(name, &sb) == 0;
    }
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s/step_%08ld", dir, want[i]);
        if (stat(name, &sb) != 0) return 0;
    }
    return count == n;
}

static void test_retention(void) {
    model m;
    char err[ERR_LEN];
    tiny_model(&m, 5);
    const char *dir = at("%s/%s", "keep");
    int rc = 0;
    for (long s = 10; s <= 70; s += 10) rc |= save(dir, s, &m, 2, 30, NULL, 0, 0, err);
    CHECK(rc == 0, "seven saves with --keep 2 --keep-every 30");
    CHECK(steps_are(dir, (long[]){30, 60, 70}, 3), "the newest two and every 30th remain (30, 60, 70)");
    rc = save(dir, 80, &m, 0, 0, NULL, 0, 0, err);
    CHECK(rc == 0 && steps_are(dir, (long[]){30, 60, 70, 80}, 4), "--keep 0 deletes nothing");
    model_free(&m);
}

/* The invariant a crash must keep: latest points at a checkpoint that
 * verifies, and every folder named step_* verifies. */
static int dir_consistent(const char *dir) {
    char latest[4096], err[ERR_LEN], path[4096];
    snprintf(latest, sizeof latest, "%s/latest", dir);
    if (ckpt_verify(latest, err)) return 0;
    for (long s = 0; s <= 200; s++) {
        snprintf(path, sizeof path, "%s/step_%08ld", dir, s);
        if (access(path, F_OK) == 0 && ckpt_verify(path, err)) return 0;
    }
    return 1;
}

/* A param set of 4M floats, so that a save takes long enough to be killed
 * in the middle. */
static void big_params(model *m) {
    tiny_model(m, 5);
    params_free(&m->ps);
    for (int i = 0; i < 8; i++) {
        char name[32];
        snprintf(name, sizeof name, "big.%d.weight", i);
        params_add(&m->ps, name, 2, (int64_t[]){512, 1024}, 1);
    }
    params_alloc(&m->ps);
    fill(m->ps.w, 0, m->ps.numel, 3);
}

static void test_crash(void) {
    model m;
    char err[ERR_LEN], tmp[4096];
    big_params(&m);
    const char *dir = at("%s/%s", "crash");
    double t0 = now_s();
    int rc = save(dir, 1, &m, 0, 0, NULL, 0, 0, err);
    double took = now_s() - t0;
    CHECK(rc == 0, "a 16 MB checkpoint saves (%.3f s)", took);
    int interrupted = 0, consistent = 1, tries = 12;
    for (int k = 0; k < tries; k++) {
        pid_t pid = fork();
        if (pid == 0) _exit(save(dir, 2 + k, &m, 0, 0, NULL, 0, 0, err) ? 1 : 0);
        struct timespec d = {0, (long)(1e9 * took * (k + 0.5) / tries)};
        nanosleep(&d, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        snprintf(tmp, sizeof tmp, "%s/.tmp-step_%08d", dir, 2 + k);
        interrupted += WIFSIGNALED(status) && access(tmp, F_OK) == 0;
        consistent &= dir_consistent(dir);
    }
    CHECK(interrupted > 0, "kill -9 interrupted %d of %d saves midway", interrupted, tries);
    CHECK(consistent, "after each kill, latest and every step_* folder verify");
    rc = save(dir, 100, &m, 0, 0, NULL, 0, 0, err);
    int leftovers = 0;
    for (int k = 0; k < tries; k++) {
        snprintf(tmp, sizeof tmp, "%s/.tmp-step_%08d", dir, 2 + k);
        leftovers += access(tmp, F_OK) == 0;
    }
    CHECK(rc == 0 && is_link_to(at("%s/%s", "crash/latest"), "step_00000100") && leftovers == 0,
          "the next save succeeds and clears the killed saves' temp folders");
    model_free(&m);
}

static void test_failed_save(void) {
    model m;
    char err[ERR_LEN];
    tiny_model(&m, 5);
    const char *dir = at("%s/%s", "full");
    int rc = save(dir, 10, &m, 0, 0, NULL, 0, 0, err);
    /* Disk full, simulated with a file size limit (root ignores permissions). */
    int fds[2];
    if (pipe(fds)) die("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        limit_file_size();
        int r = save(dir, 20, &m, 0, 0, NULL, 0, 0, err);
        if (write(fds[1], err, strlen(err) + 1) < 0) _exit(3);
        _exit(r ? 1 : 0);
    }
    close(fds[1]);
    char msg[ERR_LEN] = "";
    ssize_t got = read(fds[0], msg, sizeof msg - 1);
    msg[got > 0 ? got : 0] = '\0';
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    CHECK(rc == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 1, "a save on a full disk fails");
    CHECK(strstr(msg, ".tmp-step_00000020/model-00001-of-00001.safetensors") && strstr(msg, "File too large"),
          "... naming the file and the cause (%s)", msg);
    CHECK(access(at("%s/%s", "full/.tmp-step_00000020"), F_OK) != 0 &&
              access(at("%s/%s", "full/step_00000020"), F_OK) != 0,
          "... removing the temp folder, never creating step_00000020");
    CHECK(is_link_to(at("%s/%s", "full/latest"), "step_00000010") &&
              ckpt_verify(at("%s/%s", "full/step_00000010"), err) == 0,
          "... leaving latest and the previous checkpoint intact");
    cJSON *config = config_json(&m.cfg);
    ckpt_save_request part = {
        .ps = &m.ps, .config = config, .step = 30, .opt_offset = 0, .opt_count = 10, .m = m.ps.w, .v = m.ps.w};
    rc = ckpt_save(dir, &part, err);
    cJSON_Delete(config);
    CHECK(rc != 0 && strstr(err, "do not tile") && access(at("%s/%s", "full/step_00000030"), F_OK) != 0 &&
              is_link_to(at("%s/%s", "full/latest"), "step_00000010"),
          "optimizer ranges that do not cover the parameters are refused (%s)", err);
    write_text(at("%s/%s", "afile"), "x");
    rc = save(at("%s/%s", "afile/ckpt"), 10, &m, 0, 0, NULL, 0, 0, err);
    CHECK(rc != 0 && strstr(err, "afile/ckpt: cannot create folder: Not a directory"),
          "an unusable checkpoint folder is a clear error (%s)", err);
    model_free(&m);
}

static void test_signal(void) {
    /* Another process's SIGTERM: the "training loop" finishes its step and
     * exits cleanly, reporting which signal stopped it. */
    int ready[2];
    char c = 0;
    if (pipe(ready)) die("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        stop_signal_install();
        if (write(ready[1], "r", 1) != 1) _exit(2);
        for (int step = 0; step < 100000 && !stop_signal_pending(); step++) usleep(1000);
        _exit(stop_signal_pending() == SIGTERM ? 0 : 1);
    }
    if (read(ready[0], &c, 1) != 1) die("the child did not start");
    close(ready[0]);
    close(ready[1]);
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a SIGTERM from outside stops the loop at a step boundary, exit 0");

    stop_signal_install();
    CHECK(stop_signal_pending() == 0 && !stop_signal_any_rank(), "no stop before a signal");
    /* Process-directed, as kill(1) and mpirun send them: the watcher thread
     * takes them (this thread blocks them), so wait for it a moment. */
    kill(getpid(), SIGUSR1);
    for (int i = 0; i < 1000 && !stop_signal_pending(); i++) usleep(1000);
    kill(getpid(), SIGTERM);
    usleep(20000);
    CHECK(stop_signal_pending() == SIGUSR1, "SIGUSR1 sets the stop flag, and the first signal is kept");
    CHECK(stop_signal_any_rank(), "... which every rank sees");
}

static void test_part(void) {
    size_t off, count, end = 0;
    int tiles = 1;
    for (int r = 0; r < 3; r++) {
        dist_part(10, r, 3, &off, &count);
        tiles &= off == end;
        end = off + count;
    }
    CHECK(tiles && end == 10, "ckpt_part tiles the flat array");
}

/* The checksum every file is held to: the standard check value, and the
 * bitwise definition at every length and alignment (the SSE4.2 path works
 * on 8-byte words plus a tail). */
static void test_crc32c(void) {
    CHECK(crc32c(0, "123456789", 9) == 0xE3069283u, "CRC32C of '123456789' is e3069283");
    uint8_t buf[80];
    int same = 1;
    for (int i = 0; i < 80; i++) buf[i] = (uint8_t)(i * 37 + 11);
    for (int off = 0; off < 8; off++)
        for (int len = 0; off + len <= 80; len++) {
            uint32_t c = ~0u;
            for (int k = 0; k < len; k++) {
                c ^= buf[off + k];
                for (int b = 0; b < 8; b++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            }
            same &= crc32c(0, buf + off, len) == ~c;
            same &= crc32c(crc32c(0, buf + off, len / 2), buf + off + len / 2, len - len / 2) == ~c;
        }
    CHECK(same, "CRC32C matches the bitwise definition at every length and offset, also in two pieces");
}

/* ---------------------------------------------- helpers for the shell test */

static int helper_save(const char *dir, long step, unsigned long long seed, int fail_rank) {
    model m;
    char err[ERR_LEN];
    tiny_model(&m, seed);
    if (dist_rank() == fail_rank) limit_file_size();
    int rc = save(dir, step, &m, 0, 0, NULL, 0, 1, err);
    if (rc) fprintf(stderr, "rank %d: %s\n", dist_rank(), err);
    model_free(&m);
    return rc ? 1 : 0;
}

static int helper_load(const char *dir, unsigned long long seed) {
    model m, back;
    char err[ERR_LEN], path[4096];
    ckpt_reader r;
    tiny_model(&m, seed);
    tiny_model(&back, seed + 1);
    if (ckpt_resolve(dir, "auto", path, sizeof path, err) || ckpt_open(&r, path, err) ||
        ckpt_load_weights(&r, &back.ps, err)) {
        fprintf(stderr, "rank %d: %s\n", dist_rank(), err);
        return 1;
    }
    size_t n = m.ps.numel, off, count;
    dist_part(n, dist_rank(), dist_size(), &off, &count);
    float *mo = xmalloc(sizeof(float) * n), *vo = xmalloc(sizeof(float) * n);
    int bad = memcmp(back.ps.w, m.ps.w, sizeof(float) * n) != 0;
    bad |= ckpt_load_ema(&r, &back.ps, mo, err) || !same_values(mo, 0, n, 4); /* every rank's shard */
    bad |= ckpt_load_optim(&r, off, count, mo, vo, NULL, err) || !same_values(mo, off, count, 1) ||
        !same_values(vo, off, count, 2);
    /* A range that straddles the writers' parts. */
    bad |= ckpt_load_optim(&r, n / 3, n / 2, mo, vo, NULL, err) || !same_values(mo, n / 3, n / 2, 1) ||
        !same_values(vo, n / 3, n / 2, 2);
    if (bad) fprintf(stderr, "rank %d of %d: state differs from what was saved\n", dist_rank(), dist_size());
    free(mo);
    free(vo);
    ckpt_close(&r);
    model_free(&m);
    model_free(&back);
    return bad;
}

static int helper_batch(const char *out, unsigned long long seed) {
    model_config c;
    char err[ERR_LEN];
    batch b;
    rng r;
    if (config_load("configs/tiny.json", &c, err)) die("%s", err);
    rng_seed(&r, seed);
    batch_generate(&b, &c, 2, 48, &r);
    int rc = batch_save(out, &c, &b, err);
    if (rc) fprintf(stderr, "%s\n", err);
    batch_free(&b);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    int rc;
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "save") == 0)
        rc = helper_save(argv[2], atol(argv[3]), strtoull(argv[4], NULL, 10), argc == 6 ? atoi(argv[5]) : -1);
    else if (argc == 4 && strcmp(argv[1], "load") == 0)
        rc = helper_load(argv[2], strtoull(argv[3], NULL, 10));
    else if (argc == 4 && strcmp(argv[1], "batch") == 0)
        rc = helper_batch(argv[2], strtoull(argv[3], NULL, 10));
    else if (argc == 1) {
        if (!mkdtemp(root)) die("mkdtemp");
        test_crc32c();
        test_part();
        test_round_trip();
        test_index();
        test_fallback();
        test_ema_choice();
        test_retention();
        test_failed_save();
        test_crash();
        test_signal();
        char err[ERR_LEN];
        ckpt_remove_tree(root, err);
        rc = CHECK_DONE();
    } else {
        fprintf(stderr, "usage: see the top of tests/test_checkpoint.c\n");
        rc = 2;
    }
    dist_finalize();
    return rc;
}
