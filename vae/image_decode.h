/* image_decode.h - an image file in memory (WebP, PNG or JPEG) to a square
 * [3, size, size] tensor in [-1, 1], with the checks that let a bad file be
 * skipped rather than stop a run. */
#ifndef VAE_IMAGE_DECODE_H
#define VAE_IMAGE_DECODE_H

#include "image_source.h"

#include <stddef.h>

#define IMAGE_MAX_SIDE 16384 /* pixels a side an image may claim */

/* Decodes an image file in memory (WebP via libwebp, PNG and JPEG via
 * stb_image), composites alpha on white, center-crops to a square and resizes
 * to size x size with an antialiasing filter; rgb gets [3, size, size] in
 * [-1, 1]. Returns 0, or -1 with *why set and detail (dlen bytes) saying
 * what was wrong, for the skip line. */
int image_decode_detail(const unsigned char *data, size_t len, int size, float *rgb, skip_reason *why, char *detail,
                        size_t dlen);

/* image_decode_detail without the detail, for the service's encode requests,
 * `trainer caption`, the tests and the bench. */
int image_decode(const unsigned char *data, size_t len, int size, float *rgb, skip_reason *why);

#endif
