/* conv_onednn.h - convolutions through oneDNN's direct kernels on NHWC maps
 * (see conv_onednn.c); private to the CPU backend. */
#ifndef NN_CPU_CONV_ONEDNN_H
#define NN_CPU_CONV_ONEDNN_H

#include "../kernels.h"

/* y = conv(x, w) + b (b may be NULL). */
void conv_onednn_forward(float *y, const float *x, const float *w, const float *b, const conv_shape *s);
/* For output gradient dy: dx = the input gradient (overwritten; skipped when
 * dx is NULL), dw += the weight gradient. */
void conv_onednn_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, const conv_shape *s);

#endif
