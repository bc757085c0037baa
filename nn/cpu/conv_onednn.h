/* conv_onednn.h - convolutions through oneDNN's direct kernels (see
 * conv_onednn.c); private to the CPU backend. */
#ifndef NN_CPU_CONV_ONEDNN_H
#define NN_CPU_CONV_ONEDNN_H

#include "../kernels.h"

/* y = conv(x, w) + b on [C, n, H, W] maps. Returns 0 (and does nothing)
 * when oneDNN has no fast implementation for the shape. */
int conv_onednn_forward(float *y, const float *x, const float *w, const float *b, const conv_shape *s);
/* dw += the weight gradient of that convolution for output gradient dy;
 * returns 0 (and does nothing) as above. */
int conv_onednn_backward_weights(float *dw, const float *dy, const float *x, const conv_shape *s);

#endif
