/* test_safetensors.c - unit tests of common/safetensors.c: write/read round
 * trips (F32, I32, BF16), atomic writing, and the rejection of malformed
 * files with a message that names the file and the tensor. */
#include "check.h"
#include "../common/safetensors.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/test_safetensors.XXXXXX";

static const char *in_dir(const char *name) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

static void write_bytes(const char *name, const void *bytes, size_t n) {
    FILE *fp = fopen(in_dir(name), "wb");
    if (!fp || fwrite(bytes, 1, n, fp) != n || fclose(fp) != 0) {
        perror(in_dir(name));
        exit(1);
    }
}

/* Writes a raw file: u64 header length, header, data. hlen < 0 means the
 * true length of header. */
static void write_raw(const char *name, long long hlen, const char *header, const void *data, size_t data_len) {
    size_t len = strlen(header);
    uint64_t n = hlen < 0 ? len : (uint64_t)hlen;
    uint8_t *buf = malloc(8 + len + data_len);
    memcpy(buf, &n, 8);
    memcpy(buf + 8, header, len);
    if (data_len) memcpy(buf + 8 + len, data, data_len);
    write_bytes(name, buf, 8 + len + data_len);
    free(buf);
}

static int contains(const char *s, const char *part) { return strstr(s, part) != NULL; }

/* Does st_open of file fail, with a message naming the file and `what`? */
static int open_fails(const char *name, const char *what, char *err) {
    st_file f;
    err[0] = '\0';
    if (st_open(in_dir(name), &f, err) == 0) {
        st_close(&f);
        return 0;
    }
    printf("# %s\n", err);
    return contains(err, name) && contains(err, what) && !contains(err, "\n");
}

static int count_temp_files(void) {
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) n += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

static void remove_dir(void) {
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        const char *p = in_dir(e->d_name);
        if (rmdir(p) != 0) unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

static void test_round_trip(void) {
    float a[6] = {1.0f, -2.5f, 3.25f, 1e-30f, -0.0f, 65504.0f};
    int32_t b[4] = {0, -1, 2147483647, -2147483647 - 1};
    /* bf16 bit patterns: 1.0, -2.0, 1.5, the smallest subnormal, +inf */
    uint16_t c[5] = {0x3F80, 0xC000, 0x3FC0, 0x0001, 0x7F80};
    float scalar = 42.0f;
    st_entry entries[] = {
        {"a", ST_F32, 2, {2, 3}, a},         {"b", ST_I32, 1, {4}, b},           {"c", ST_BF16, 1, {5}, c},
        {"scalar", ST_F32, 0, {0}, &scalar}, {"empty", ST_F32, 2, {0, 5}, NULL},
    };
    char err[ERR_LEN] = "";
    int rc = st_write(in_dir("rt.safetensors"), entries, 5, err);
    CHECK(rc == 0, "round_trip_write %s", err);

    st_file f;
    rc = st_open(in_dir("rt.safetensors"), &f, err);
    CHECK(rc == 0, "round_trip_open %s", err);
    if (rc != 0) return;
    CHECK(f.n == 5, "round_trip_count");
    CHECK((f.data_start - 8) % 8 == 0 && f.data_start % 8 == 0, "header_padded_to_8");
    int contiguous = f.n == 5 && f.tensors[0].begin == 0;
    for (int i = 1; i < f.n; i++) contiguous = contiguous && f.tensors[i].begin == f.tensors[i - 1].end;
    CHECK(contiguous && f.data_start + f.tensors[4].end == f.size, "offsets_in_entry_order");

    float ra[6];
    rc = st_read_f32(&f, "a", 2, (int64_t[]){2, 3}, ra, err);
    CHECK(rc == 0 && memcmp(ra, a, sizeof a) == 0, "round_trip_f32 %s", err);

    int32_t rb[4];
    rc = st_read_i32(&f, "b", 1, (int64_t[]){4}, rb, err);
    CHECK(rc == 0 && memcmp(rb, b, sizeof b) == 0, "round_trip_i32 %s", err);

    float rc5[5];
    uint32_t want_bits[5] = {0x3F800000, 0xC0000000, 0x3FC00000, 0x00010000, 0x7F800000};
    rc = st_read_f32(&f, "c", 1, (int64_t[]){5}, rc5, err);
    CHECK(rc == 0 && memcmp(rc5, want_bits, sizeof want_bits) == 0, "round_trip_bf16_widened %s", err);
    CHECK(f.tensors[2].dtype == ST_BF16, "round_trip_bf16_dtype");

    float rs = 0;
    rc = st_read_f32(&f, "scalar", 0, NULL, &rs, err);
    CHECK(rc == 0 && rs == 42.0f, "round_trip_scalar %s", err);

    float none[1];
    rc = st_read_f32(&f, "empty", 2, (int64_t[]){0, 5}, none, err);
    CHECK(rc == 0, "round_trip_empty_tensor %s", err);
    st_close(&f);
}

static void test_atomic_write(void) {
    char err[ERR_LEN] = "";
    int32_t v1[2] = {1, 2}, v2[3] = {7, 8, 9};
    st_entry e1 = {"v", ST_I32, 1, {2}, v1};
    st_entry e2 = {"v", ST_I32, 1, {3}, v2};
    const char *path = in_dir("atomic.safetensors");
    int ok = st_write(path, &e1, 1, err) == 0 && st_write(path, &e2, 1, err) == 0;
    CHECK(ok, "atomic_overwrite %s", err);
    CHECK(count_temp_files() == 0, "atomic_no_temp_file_left");

    st_file f;
    int32_t r[3] = {0};
    ok = st_open(path, &f, err) == 0;
    ok = ok && st_read_i32(&f, "v", 1, (int64_t[]){3}, r, err) == 0 && r[2] == 9;
    st_close(&f);
    CHECK(ok, "atomic_overwrite_reads_new %s", err);

    /* The rename fails (the target is a directory): the temp must go. */
    mkdir(in_dir("a_directory"), 0755);
    err[0] = '\0';
    int rc = st_write(in_dir("a_directory"), &e1, 1, err);
    CHECK(rc != 0 && contains(err, "a_directory"), "write_failure_reported %s", err);
    CHECK(count_temp_files() == 0, "write_failure_removes_temp");

    rc = st_write(in_dir("no/such/dir.safetensors"), &e1, 1, err);
    CHECK(rc != 0 && contains(err, "dir.safetensors"), "write_into_missing_dir %s", err);

    st_entry dup[2] = {e1, e1};
    rc = st_write(in_dir("dup_write.safetensors"), dup, 2, err);
    CHECK(rc != 0 && contains(err, "'v'"), "write_rejects_duplicate %s", err);
    st_entry neg = {"n", ST_F32, 1, {-1}, v1};
    rc = st_write(in_dir("neg_write.safetensors"), &neg, 1, err);
    CHECK(rc != 0 && contains(err, "'n'"), "write_rejects_negative_dim %s", err);
}

static void test_malformed(void) {
    char err[ERR_LEN];
    uint8_t data[64] = {0};

    write_bytes("empty.safetensors", "", 0);
    CHECK(open_fails("empty.safetensors", "truncated", err), "zero_length_file");

    write_bytes("short.safetensors", "\x10\0\0\0\0", 5);
    CHECK(open_fails("short.safetensors", "truncated", err), "truncated_file");

    /* A valid file cut inside the data of its last tensor. */
    const char *two = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}";
    write_raw("cut.safetensors", -1, two, data, 20);
    CHECK(open_fails("cut.safetensors", "'w'", err), "truncated_in_data_names_tensor");

    write_raw("hlen.safetensors", 1000, two, data, 24);
    CHECK(open_fails("hlen.safetensors", "header length 1000", err), "header_length_beyond_file");

    write_raw("outside.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}", data,
              24);
    CHECK(open_fails("outside.safetensors", "'w'", err) && contains(err, "outside the data"), "offsets_outside_data");

    write_raw("json.safetensors", -1, "{\"w\":{\"dtype\":", data, 0);
    CHECK(open_fails("json.safetensors", "not valid JSON", err), "bad_json");

    write_raw("garbage.safetensors", -1, "{}xx", data, 0);
    CHECK(open_fails("garbage.safetensors", "garbage", err), "garbage_after_json");

    write_raw("array.safetensors", -1, "[1,2]", data, 0);
    CHECK(open_fails("array.safetensors", "not a JSON object", err), "header_not_object");

    write_raw("entry.safetensors", -1, "{\"w\":5}", data, 0);
    CHECK(open_fails("entry.safetensors", "'w'", err), "entry_not_object");

    write_raw("dtype.safetensors", -1, "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", data, 8);
    CHECK(open_fails("dtype.safetensors", "'w'", err) && contains(err, "F64"), "unknown_dtype");

    write_raw("negdim.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", data, 4);
    CHECK(open_fails("negdim.safetensors", "'w'", err) && contains(err, "negative"), "negative_dim");

    write_raw("fracdim.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", data, 4);
    CHECK(open_fails("fracdim.safetensors", "'w'", err) && contains(err, "not an integer"), "non_integer_dim");

    write_raw("strdim.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", data,
              4);
    CHECK(open_fails("strdim.safetensors", "'w'", err), "string_dim");

    write_raw("ndim.safetensors", -1, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
              data, 1);
    CHECK(open_fails("ndim.safetensors", "'w'", err) && contains(err, "9 dims"), "too_many_dims");

    write_raw("noshape.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", data, 4);
    CHECK(open_fails("noshape.safetensors", "'w'", err), "missing_shape");

    write_raw("nooff.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", data, 4);
    CHECK(open_fails("nooff.safetensors", "'w'", err) && contains(err, "data_offsets"), "missing_offsets");

    write_raw("off3.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", data, 8);
    CHECK(open_fails("off3.safetensors", "'w'", err) && contains(err, "data_offsets"), "offsets_not_two");

    write_raw("offneg.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", data, 8);
    CHECK(open_fails("offneg.safetensors", "'w'", err), "offsets_negative");

    write_raw("backward.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", data, 8);
    CHECK(open_fails("backward.safetensors", "'w'", err) && contains(err, "begin after end"),
          "offsets_begin_after_end");

    write_raw("length.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data, 8);
    CHECK(open_fails("length.safetensors", "'w'", err) && contains(err, "needs 12"), "offsets_length_mismatch");

    write_raw("overflow.safetensors", -1,
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
              "\"data_offsets\":[0,0]}}",
              data, 0);
    CHECK(open_fails("overflow.safetensors", "'w'", err) && contains(err, "overflow"), "shape_overflow");

    write_raw("twice.safetensors", -1,
              "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
              "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
              data, 2);
    CHECK(open_fails("twice.safetensors", "'w'", err), "duplicate_tensor");

    /* Control characters of a name must not split the message. */
    write_raw("newline.safetensors", -1, "{\"a\\nb\":5}", data, 0);
    CHECK(open_fails("newline.safetensors", "'a?b'", err), "message_stays_one_line");

    st_file f;
    err[0] = '\0';
    int rc = st_open(in_dir("does_not_exist.safetensors"), &f, err);
    CHECK(rc != 0 && contains(err, "does_not_exist.safetensors"), "missing_file %s", err);
}

static void test_readers(void) {
    char err[ERR_LEN] = "";
    uint8_t data[256];
    for (int i = 0; i < 256; i++) data[i] = (uint8_t)i;
    /* Odd begin offsets: the data of "w" is not 4-byte aligned. */
    write_raw("model.safetensors", -1,
              "{\"__metadata__\":{\"format\":\"pt\"},"
              "\"lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[10,4],\"data_offsets\":[1,161]},"
              "\"ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[161,169]},"
              "\"h\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[169,173]}}",
              data, 173);
    st_file f;
    int rc = st_open(in_dir("model.safetensors"), &f, err);
    CHECK(rc == 0 && f.n == 3, "metadata_skipped %s", err);
    if (rc != 0) return;
    CHECK(st_find(&f, "__metadata__") == NULL, "metadata_not_a_tensor");

    float w[40];
    rc = st_read_f32(&f, "lm_head.weight", 2, (int64_t[]){10, 4}, w, err);
    CHECK(rc == 0 && memcmp(w, data + 1, 160) == 0, "unaligned_read %s", err);

    int32_t ids[2];
    rc = st_read_i32(&f, "ids", 1, (int64_t[]){2}, ids, err);
    CHECK(rc == 0 && memcmp(ids, data + 161, 8) == 0, "unaligned_read_i32 %s", err);

    err[0] = '\0';
    rc = st_read_f32(&f, "lm_head.weight", 2, (int64_t[]){12, 4}, w, err);
    CHECK(rc != 0 &&
              contains(err,
                       "model.safetensors: tensor 'lm_head.weight': "
                       "shape [10,4], expected [12,4]"),
          "wrong_shape %s", err);

    err[0] = '\0';
    rc = st_read_f32(&f, "lm_head.weight", 1, (int64_t[]){40}, w, err);
    CHECK(rc != 0 && contains(err, "shape [10,4], expected [40]"), "wrong_rank %s", err);

    err[0] = '\0';
    rc = st_read_f32(&f, "ids", 1, (int64_t[]){2}, w, err);
    CHECK(rc != 0 && contains(err, "model.safetensors") && contains(err, "'ids'") && contains(err, "dtype I32"),
          "wrong_dtype_f32 %s", err);

    err[0] = '\0';
    rc = st_read_i32(&f, "h", 1, (int64_t[]){2}, ids, err);
    CHECK(rc != 0 && contains(err, "model.safetensors") && contains(err, "'h'") && contains(err, "dtype BF16"),
          "wrong_dtype_i32 %s", err);

    err[0] = '\0';
    rc = st_read_f32(&f, "model.norm.weight", 1, (int64_t[]){4}, w, err);
    CHECK(rc != 0 && contains(err, "model.safetensors") && contains(err, "'model.norm.weight'") &&
              contains(err, "not found"),
          "missing_tensor %s", err);
    st_close(&f);
}

/* float32 -> bfloat16 rounds to nearest even, and a flat slice reads back. */
static void test_bf16_and_slice(void) {
    float in[6];
    uint32_t bits[6] = {
        0x3f808000u, /* 1 + 2^-8: a tie, rounds down to the even 1.0 */
        0x3f818000u, /* 1 + 3*2^-8: a tie, rounds up to the even 1 + 2^-6 */
        0x3f808001u, /* just above the tie: rounds up */
        0x7f7fffffu, /* largest float: rounds to infinity */
        0xffc00001u, /* a negative NaN stays a negative NaN */
        0x7f800001u, /* a signalling NaN whose payload would round away */
    };
    uint16_t out[6], want[6] = {0x3f80, 0x3f82, 0x3f81, 0x7f80, 0xffc0, 0x7fc0};
    memcpy(in, bits, sizeof in);
    st_f32_to_bf16(in, out, 6);
    int same = 1;
    for (int i = 0; i < 6; i++) same &= out[i] == want[i];
    CHECK(same, "st_f32_to_bf16 rounds to nearest even and keeps NaN a NaN");

    float x[10], got[4] = {0};
    for (int i = 0; i < 10; i++) x[i] = (float)i;
    st_entry e = {.name = "x", .dtype = ST_F32, .ndim = 2, .shape = {2, 5}, .data = x};
    st_file f;
    char err[ERR_LEN];
    int rc = st_write(in_dir("slice.safetensors"), &e, 1, err) || st_open(in_dir("slice.safetensors"), &f, err);
    CHECK(rc == 0, "a 2x5 tensor is written");
    if (rc) return;
    rc = st_read_f32_slice(&f, "x", 3, 4, got, err);
    CHECK(rc == 0 && got[0] == 3 && got[3] == 6, "st_read_f32_slice reads flat elements 3..6 across rows");
    CHECK(st_read_f32_slice(&f, "x", 7, 4, got, err) != 0 && strstr(err, "outside"),
          "a slice past the end is refused (%s)", err);
    st_close(&f);
}

int main(void) {
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_atomic_write();
    test_malformed();
    test_readers();
    test_bf16_and_slice();
    remove_dir();
    return CHECK_DONE();
}
